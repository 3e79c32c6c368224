//! An MQTT watcher for the tests: subscribes (mutual TLS, the receiver's certificate) to a topic
//! filter on the test's mosquitto and returns what arrives — how the tests read the retained
//! device status and heartbeat the gateway publishes, verified with the gateway's certificate.

use crate::env::TestEnv;
use crate::Result;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use std::collections::BTreeMap;
use std::time::Duration;

/// One message: topic, payload (a COSE_Sign1 for wardgate's status topics), retained flag.
#[derive(Clone, Debug)]
pub struct Message {
    /// Topic.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Whether the broker delivered it as a retained message.
    pub retained: bool,
}

/// Subscribes to `filter` with a fresh client, collects messages for `listen`, and returns the
/// last one per topic (retained ones arrive first, then live ones).
pub fn latest(env: &TestEnv, filter: &str, listen: Duration) -> Result<BTreeMap<String, Message>> {
    Ok(collect(env, filter, listen)?
        .into_iter()
        .map(|m| (m.topic.clone(), m))
        .collect())
}

/// Subscribes to `filter` with a fresh client and returns every message that arrives within
/// `listen`, in order (retained ones first).
pub fn collect(env: &TestEnv, filter: &str, listen: Duration) -> Result<Vec<Message>> {
    collect_with(
        &env.pki.ca_pem,
        &env.pki.receiver_cert,
        &env.pki.receiver_key,
        env.broker.port,
        filter,
        listen,
    )
}

/// [`collect`] with explicit certificate files and port (usable from a thread).
pub fn collect_with(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    port: u16,
    filter: &str,
    listen: Duration,
) -> Result<Vec<Message>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let tls = wardgate::tls::client_config(ca, cert, key)?;
        let mut o = MqttOptions::new(format!("e2e-watch-{}", fastrand_id()), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(true)
            .set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        let (client, mut el) = AsyncClient::new(o, 64);
        client.subscribe(filter, QoS::AtLeastOnce).await?;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + listen;
        loop {
            match tokio::time::timeout_at(deadline, el.poll()).await {
                Err(_) => break,
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    out.push(Message {
                        topic: p.topic.to_string(),
                        payload: p.payload.to_vec(),
                        retained: p.retain,
                    });
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => anyhow::bail!("watcher connection: {e}"),
            }
        }
        let _ = client.disconnect().await;
        Ok(out)
    })
}

fn fastrand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id())
}

/// Verifies a status payload with the gateway's certificate and returns it as JSON. Device
/// status is encrypted to the receiver (`receiver_certs` lists it): it is decrypted with the
/// receiver's key first.
pub fn verified_json(env: &TestEnv, payload: &[u8]) -> Result<serde_json::Value> {
    let mut v = wardgate::signing::Verifier::default();
    v.add_file(&env.pki.gateway_cert)?;
    let rx =
        wardgate::encryption::Decryptor::from_files(&env.pki.receiver_cert, &env.pki.receiver_key)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let signed = wardgate::receive::verify::open_message(Some(&rx), payload)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let p = v.verify(&signed).map_err(|e| anyhow::anyhow!("{e}"))?;
    wardgate::health::retained::to_json(&p)
        .ok_or_else(|| anyhow::anyhow!("payload is not a CBOR map"))
}
