//! `wardgate receive`: the upstream side (DESIGN §5). Subscribes to batches (optionally through a
//! shared subscription so several receivers split the load), verifies each COSE_Sign1 against the
//! configured gateway certificates, dedups on `(gateway, seq)` and `(gateway, batch)`, writes
//! durably (SQLite with `synchronous=FULL`, or JSON lines with `fsync`), and only then publishes
//! the ack on `wardgate/v1/{site}/{ward}/{gateway}/ack` and PUBACKs the message.
//!
//! Messages that fail verification are counted, logged, never stored and never acknowledged
//! upstream (the MQTT PUBACK is still sent so the broker does not redeliver them forever).

use crate::batch::{Ack, BatchPayload, PAYLOAD_VERSION};
use crate::config::ReceiverConfig;
use crate::mqtt;
use crate::signing::Verifier;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Counters of a running receiver (shared with the demo and tests).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReceiverStats {
    /// Messages whose signature verified.
    pub verified_messages: u64,
    /// Messages refused (not COSE, unknown kid, bad signature, bad payload, topic mismatch).
    pub rejected_messages: u64,
    /// Messages that repeated a batch already stored (re-sends).
    pub duplicate_batches: u64,
    /// New observations written, per device.
    pub delivered: BTreeMap<String, u64>,
    /// New device events written.
    pub events: u64,
    /// Raw messages written to `raw_dir`.
    pub raw_messages: u64,
}

/// What [`Output::write`] wrote for one batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// New observations per device.
    pub per_device: BTreeMap<String, u64>,
    /// New device events.
    pub events: u64,
    /// Whether this batch (gateway, number) had been stored before (a re-send).
    pub duplicate: bool,
}

/// Where verified data goes.
pub enum Output {
    /// SQLite file with `observations`, `events` and `batches` tables.
    Sqlite(rusqlite::Connection),
    /// JSON lines, one observation or event per line, fsynced per batch.
    Jsonl {
        /// The open file (append).
        file: std::fs::File,
        /// `(gateway, seq)` already written (loaded from the file at start).
        seen: HashSet<(String, u64)>,
        /// `(gateway, batch)` already written.
        batches: HashSet<(String, u64)>,
    },
}

impl Output {
    /// Opens `sqlite:PATH` or `jsonl:PATH`.
    pub fn open(spec: &str) -> anyhow::Result<Output> {
        let (kind, path) = spec
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("output `{spec}` must be sqlite:PATH or jsonl:PATH"))?;
        let path = PathBuf::from(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        match kind {
            "sqlite" => {
                let c = rusqlite::Connection::open(&path)?;
                c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
                c.execute_batch(
                    "PRAGMA synchronous=FULL;
                     CREATE TABLE IF NOT EXISTS batches(gateway TEXT NOT NULL, batch INTEGER NOT NULL, site TEXT, ward TEXT,
                        received_ms INTEGER NOT NULL, PRIMARY KEY(gateway, batch));
                     CREATE TABLE IF NOT EXISTS observations(gateway TEXT NOT NULL, seq INTEGER NOT NULL, batch INTEGER NOT NULL,
                        device TEXT NOT NULL, code INTEGER NOT NULL, value REAL NOT NULL, unit INTEGER NOT NULL, ucum TEXT,
                        gateway_time INTEGER NOT NULL, time_quality TEXT, device_time TEXT, status TEXT,
                        PRIMARY KEY(gateway, seq));
                     CREATE TABLE IF NOT EXISTS events(gateway TEXT NOT NULL, seq INTEGER NOT NULL, batch INTEGER NOT NULL,
                        device TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT, gateway_time INTEGER NOT NULL,
                        PRIMARY KEY(gateway, seq));",
                )?;
                Ok(Output::Sqlite(c))
            }
            "jsonl" => {
                let mut seen = HashSet::new();
                let mut batches = HashSet::new();
                if let Ok(text) = std::fs::read_to_string(&path) {
                    for line in text.lines() {
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                            let gw = v["gateway"].as_str().unwrap_or_default().to_owned();
                            if let Some(seq) = v["seq"].as_u64() {
                                seen.insert((gw.clone(), seq));
                            }
                            if let Some(b) = v["batch"].as_u64() {
                                batches.insert((gw, b));
                            }
                        }
                    }
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?;
                Ok(Output::Jsonl {
                    file,
                    seen,
                    batches,
                })
            }
            other => anyhow::bail!("output kind `{other}` must be sqlite or jsonl"),
        }
    }

    /// Writes a verified batch durably (committed or fsynced when this returns). Rows already
    /// present (same gateway and seq) are skipped.
    pub fn write(&mut self, p: &BatchPayload) -> anyhow::Result<Written> {
        let now = wardgate_adapters::observation::now_ms();
        let mut per = BTreeMap::new();
        let mut events = 0;
        match self {
            Output::Sqlite(c) => {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let fresh = tx.execute(
                    "INSERT OR IGNORE INTO batches(gateway, batch, site, ward, received_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                    rusqlite::params![p.gateway, p.batch as i64, p.site, p.ward, now],
                )? == 1;
                {
                    let mut ins = tx.prepare_cached(
                        "INSERT OR IGNORE INTO observations(gateway, seq, batch, device, code, value, unit, ucum, gateway_time, time_quality, device_time, status)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    )?;
                    for o in &p.observations {
                        let status = (!o.status.is_empty()).then(|| o.status.join(","));
                        let n = ins.execute(rusqlite::params![
                            p.gateway,
                            o.seq as i64,
                            p.batch as i64,
                            o.device,
                            o.code,
                            o.value,
                            o.unit,
                            o.ucum,
                            o.gateway_time,
                            o.time_quality,
                            o.device_time,
                            status
                        ])?;
                        if n == 1 {
                            *per.entry(o.device.clone()).or_insert(0) += 1;
                        }
                    }
                    let mut ev = tx.prepare_cached(
                        "INSERT OR IGNORE INTO events(gateway, seq, batch, device, kind, detail, gateway_time) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?;
                    for e in &p.events {
                        events += ev.execute(rusqlite::params![
                            p.gateway,
                            e.seq as i64,
                            p.batch as i64,
                            e.device,
                            e.kind,
                            e.detail,
                            e.gateway_time
                        ])? as u64;
                    }
                }
                tx.commit()?;
                Ok(Written {
                    per_device: per,
                    events,
                    duplicate: !fresh,
                })
            }
            Output::Jsonl {
                file,
                seen,
                batches,
            } => {
                let fresh = batches.insert((p.gateway.clone(), p.batch));
                let mut out = Vec::new();
                for o in &p.observations {
                    if seen.insert((p.gateway.clone(), o.seq)) {
                        let mut v = serde_json::to_value(o)?;
                        v["gateway"] = p.gateway.clone().into();
                        v["batch"] = p.batch.into();
                        v["type"] = "observation".into();
                        serde_json::to_writer(&mut out, &v)?;
                        out.push(b'\n');
                        *per.entry(o.device.clone()).or_insert(0) += 1;
                    }
                }
                for e in &p.events {
                    if seen.insert((p.gateway.clone(), e.seq)) {
                        let mut v = serde_json::to_value(e)?;
                        v["gateway"] = p.gateway.clone().into();
                        v["batch"] = p.batch.into();
                        v["type"] = "event".into();
                        serde_json::to_writer(&mut out, &v)?;
                        out.push(b'\n');
                        events += 1;
                    }
                }
                file.write_all(&out)?;
                file.sync_data()?;
                Ok(Written {
                    per_device: per,
                    events,
                    duplicate: !fresh,
                })
            }
        }
    }
}

/// Verifies and decodes one message received on `topic`. Errors say why it is refused.
pub fn check_message(
    verifier: &Verifier,
    topic: &str,
    message: &[u8],
) -> Result<BatchPayload, String> {
    let payload = verifier.verify(message).map_err(|e| e.to_string())?;
    let p = BatchPayload::from_cbor(&payload)?;
    if p.v != PAYLOAD_VERSION {
        return Err(format!("payload version {} is not {PAYLOAD_VERSION}", p.v));
    }
    match mqtt::parse_batch(topic) {
        Some((site, ward, gw)) if site == p.site && ward == p.ward && gw == p.gateway => Ok(p),
        _ => Err(format!(
            "topic {topic} does not match the signed payload ({}/{}/{})",
            p.site, p.ward, p.gateway
        )),
    }
}

/// A running receiver's handle for tests and the demo.
pub struct ReceiverHandle {
    /// Live counters.
    pub stats: Arc<Mutex<ReceiverStats>>,
    /// Set to `true` to stop.
    pub shutdown: watch::Sender<bool>,
    /// The task; resolves when the receiver stopped.
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts a receiver from a validated config.
pub fn start(cfg: ReceiverConfig) -> anyhow::Result<ReceiverHandle> {
    let mut verifier = Verifier::default();
    for p in &cfg.receiver.gateway_certs {
        verifier.add_file(p.get_ref())?;
    }
    let tls = crate::tls::client_config(
        cfg.mqtt.ca.get_ref(),
        cfg.mqtt.cert.get_ref(),
        cfg.mqtt.key.get_ref(),
    )?;
    let output = Output::open(cfg.receiver.output.get_ref())?;
    if let Some(d) = &cfg.receiver.raw_dir {
        std::fs::create_dir_all(d)?;
    }
    let stats = Arc::new(Mutex::new(ReceiverStats::default()));
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(run(cfg, verifier, tls, output, stats.clone(), rx));
    Ok(ReceiverHandle {
        stats,
        shutdown: tx,
        task,
    })
}

async fn run(
    cfg: ReceiverConfig,
    verifier: Verifier,
    tls: Arc<rustls::ClientConfig>,
    output: Output,
    stats: Arc<Mutex<ReceiverStats>>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut o = MqttOptions::new(
        cfg.mqtt.client_id.clone(),
        cfg.mqtt.host.get_ref().clone(),
        *cfg.mqtt.port.get_ref(),
    );
    o.set_keep_alive(Duration::from_secs(cfg.mqtt.keepalive_s))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(16 << 20, 16 << 20)
        .set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    let filter = match &cfg.receiver.share_group {
        Some(g) => format!("$share/{g}/{}", cfg.receiver.topic),
        None => cfg.receiver.topic.clone(),
    };
    let (client, mut el) = AsyncClient::new(o, 256);
    el.set_network_options(mqtt::network_options());
    let output = Arc::new(Mutex::new(output));
    let verifier = Arc::new(verifier);
    let mut last_error: Option<String> = None;
    let mut raw_n: u64 = 0;
    loop {
        let ev = tokio::select! {
            ev = el.poll() => ev,
            _ = shutdown.changed() => {
                // Send DISCONNECT so the broker knows this was a clean stop.
                let _ = client.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Ok(ev) = el.poll().await {
                        if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                            break;
                        }
                    }
                })
                .await;
                return Ok(());
            }
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                log::info!("receiver connected; subscribing to {filter}");
                last_error = None;
                client.subscribe(filter.clone(), QoS::AtLeastOnce).await?;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Some(dir) = &cfg.receiver.raw_dir {
                    raw_n += 1;
                    let gw = mqtt::parse_batch(&p.topic)
                        .map(|(_, _, gw)| gw)
                        .unwrap_or("unknown");
                    write_raw(dir, gw, raw_n, &p.payload)?;
                    stats.lock().unwrap_or_else(|e| e.into_inner()).raw_messages += 1;
                }
                let topic = p.topic.clone();
                let payload = p.payload.clone();
                let v = verifier.clone();
                let out = output.clone();
                let result = tokio::task::spawn_blocking(
                    move || -> Result<(BatchPayload, Written), String> {
                        let batch = check_message(&v, &topic, &payload)?;
                        let written = out
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .write(&batch)
                            .map_err(|e| format!("output: {e}"))?;
                        Ok((batch, written))
                    },
                )
                .await?;
                match result {
                    Ok((
                        batch,
                        Written {
                            per_device: per,
                            events,
                            duplicate: dup,
                        },
                    )) => {
                        {
                            let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                            s.verified_messages += 1;
                            s.events += events;
                            if dup {
                                s.duplicate_batches += 1;
                            }
                            for (d, n) in per {
                                *s.delivered.entry(d).or_insert(0) += n;
                            }
                        }
                        let origin = crate::batch::Origin {
                            gateway: batch.gateway.clone(),
                            site: batch.site.clone(),
                            ward: batch.ward.clone(),
                        };
                        let ack = Ack {
                            v: 1,
                            gateway: batch.gateway.clone(),
                            batches: vec![batch.batch],
                        };
                        client
                            .publish(mqtt::ack(&origin), QoS::AtLeastOnce, false, ack.to_cbor())
                            .await?;
                    }
                    Err(reason) if reason.starts_with("output:") => {
                        // Not stored: do not PUBACK, so the broker redelivers after we restart.
                        anyhow::bail!("cannot store batch from {}: {reason}", p.topic);
                    }
                    Err(reason) => {
                        stats
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .rejected_messages += 1;
                        log::warn!("rejected message on {}: {reason}", p.topic);
                    }
                }
                client.ack(&p).await?;
            }
            Ok(_) => {}
            Err(e) => {
                let reason = crate::tls::explain(&e);
                if last_error.as_deref() != Some(reason.as_str()) {
                    log::warn!("receiver connection: {reason}; retrying");
                    last_error = Some(reason);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
    }
}

/// Writes one raw message as `<gateway>-<receiver start ms>-<n>.cose`, never overwriting a file
/// from an earlier run (`create_new`), and fsyncs it.
fn write_raw(dir: &Path, gateway: &str, n: u64, bytes: &[u8]) -> std::io::Result<()> {
    static START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(wardgate_adapters::observation::now_ms);
    let mut attempt = 0u32;
    loop {
        let suffix = if attempt == 0 {
            String::new()
        } else {
            format!("-{attempt}")
        };
        let path = dir.join(format!("{gateway}-{start}-{n:06}{suffix}.cose"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(bytes)?;
                return f.sync_data();
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 1000 => {
                attempt += 1
            }
            Err(e) => return Err(e),
        }
    }
}
