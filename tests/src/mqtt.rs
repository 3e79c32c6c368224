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

/// Publishes `payload` on `topic`, **retained**, QoS 1, with the receiver's certificate (what an
/// upstream does with a firmware job), and waits for the broker's PUBACK.
pub fn publish_retained(env: &TestEnv, topic: &str, payload: &[u8]) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let tls = wardgate::tls::client_config(
            &env.pki.ca_pem,
            &env.pki.receiver_cert,
            &env.pki.receiver_key,
        )?;
        let mut o = MqttOptions::new(
            format!("e2e-pub-{}", fastrand_id()),
            "127.0.0.1",
            env.broker.port,
        );
        o.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(true)
            .set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        let (client, mut el) = AsyncClient::new(o, 8);
        client
            .publish(topic, QoS::AtLeastOnce, true, payload.to_vec())
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, el.poll()).await {
                Err(_) => anyhow::bail!("no PUBACK for the retained publish on {topic}"),
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => anyhow::bail!("publisher connection: {e}"),
            }
        }
        let _ = client.disconnect().await;
        Ok(())
    })
}

/// A subscriber running on its own thread until dropped: everything that arrives on its filter,
/// in order (how a test sees intermediate states that a later retained message replaces).
pub struct Watcher {
    seen: std::sync::Arc<std::sync::Mutex<Vec<Message>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// Subscribes to `filter` (receiver's certificate) and returns once the broker granted it.
    pub fn start(env: &TestEnv, filter: &str) -> Result<Watcher> {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (ca, cert, key, port) = (
            env.pki.ca_pem.clone(),
            env.pki.receiver_cert.clone(),
            env.pki.receiver_key.clone(),
            env.broker.port,
        );
        let (s, st, filter) = (seen.clone(), stop.clone(), filter.to_owned());
        let thread = std::thread::spawn(move || {
            let run = || -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let tls = wardgate::tls::client_config(&ca, &cert, &key)?;
                    let mut o = MqttOptions::new(
                        format!("e2e-watcher-{}", fastrand_id()),
                        "127.0.0.1",
                        port,
                    );
                    o.set_keep_alive(Duration::from_secs(5))
                        .set_clean_session(true)
                        .set_transport(Transport::tls_with_config(
                            rumqttc::TlsConfiguration::Rustls(tls),
                        ));
                    let (client, mut el) = AsyncClient::new(o, 256);
                    client.subscribe(&filter, QoS::AtLeastOnce).await?;
                    let mut ready = Some(ready_tx.clone());
                    while !st.load(std::sync::atomic::Ordering::Relaxed) {
                        match tokio::time::timeout(Duration::from_millis(200), el.poll()).await {
                            Err(_) => {}
                            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                                if let Some(r) = ready.take() {
                                    let _ = r.send(Ok(()));
                                }
                            }
                            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                                s.lock().unwrap().push(Message {
                                    topic: p.topic.to_string(),
                                    payload: p.payload.to_vec(),
                                    retained: p.retain,
                                })
                            }
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => anyhow::bail!("watcher connection: {e}"),
                        }
                    }
                    let _ = client.disconnect().await;
                    Ok(())
                })
            };
            if let Err(e) = run() {
                let _ = ready_tx.send(Err(e));
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(15))
            .map_err(|_| anyhow::anyhow!("the watcher did not subscribe"))??;
        Ok(Watcher {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// Every message so far.
    pub fn messages(&self) -> Vec<Message> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
