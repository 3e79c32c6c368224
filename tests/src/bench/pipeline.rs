//! The in-process pipeline as `wardgate run` wires it, without devices or processes: the
//! writer task (group commit into a `synchronous=FULL` store) → the uplink (batches, COSE_Sign1
//! ES256) → a real mosquitto (mutual TLS) → an MQTT subscriber in this process that decodes
//! every batch and counts its observations. Shared by `tests/benches/pipeline.rs` (throughput,
//! backlog drain, latency) and `tests/benches/throughput.rs` ("Measure" (b): the pipeline's
//! share of the raw SQLite ceiling).
//!
//! Async functions run on a multi-threaded tokio runtime the caller owns.

use crate::broker::{Mosquitto, MosquittoOptions, Pki};
use crate::env::{GATEWAY_ID, SITE, WARD};
use crate::Result;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};
use wardgate::batch::{BatchPayload, Origin};
use wardgate::config::AckMode;
use wardgate::pipeline::{run_writer, WriterOptions, WriterStats};
use wardgate::signing::Signer;
use wardgate::store::{Store, StoreOptions};
use wardgate::uplink::{Uplink, UplinkSettings};
use wardgate_adapters::observation::{mdc, now_ms, DeviceId, Observation, TimeQuality, Unit};
use wardgate_adapters::AdapterEvent;

/// A temporary directory with a PKI and a mosquitto that queues without limits (a slow
/// subscriber must not lose messages in a bench).
pub struct BenchBroker {
    /// The certificates (`gateway.pem` signs and connects; `receiver.pem` subscribes).
    pub pki: Pki,
    /// The broker.
    pub broker: Mosquitto,
    dir: tempfile::TempDir,
}

impl BenchBroker {
    /// Creates the directory, the PKI and starts the broker.
    pub fn start(name: &str) -> Result<BenchBroker> {
        let dir = crate::temp_dir(name)?;
        let pki = Pki::create(
            &dir.path().join("pki"),
            &format!("wardgate bench CA ({name})"),
        )?;
        let mut opts = MosquittoOptions::from_pki(&pki);
        opts.extra = "max_inflight_messages 0\nmax_queued_messages 1000000\n".into();
        let broker = Mosquitto::start(&dir.path().join("broker"), &opts)?;
        Ok(BenchBroker { pki, broker, dir })
    }

    /// The temporary directory (stores go here).
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// The origin of the bench's batches (the test PKI's gateway certificate is issued to it).
pub fn origin() -> Origin {
    Origin {
        gateway: GATEWAY_ID.into(),
        site: SITE.into(),
        ward: WARD.into(),
    }
}

/// Observation number `i` of 50 simulated serial devices: an SpO2 with gateway time `t` (ms).
pub fn observation(i: u64, t: i64) -> AdapterEvent {
    AdapterEvent::Observation(Observation {
        device: DeviceId(format!("serial:bed{}", i % 50)),
        code: mdc::SPO2,
        value: 90.0 + (i % 10) as f64,
        unit: Unit::PERCENT,
        device_time: None,
        gateway_time: t,
        time_quality: TimeQuality::Synced,
        status: vec![],
        waveform: None,
    })
}

/// Subscribes to every gateway's batches; adds each batch's observation count to `count` and,
/// while `latencies` has spare capacity, pushes receive time − gateway time (ms) of each
/// observation. Returns once the subscription is acknowledged.
pub async fn subscriber(
    b: &BenchBroker,
    count: Arc<AtomicU64>,
    latencies: Arc<Mutex<Vec<i64>>>,
) -> Result<AsyncClient> {
    let tls =
        wardgate::tls::client_config(&b.pki.ca_pem, &b.pki.receiver_cert, &b.pki.receiver_key)?;
    let mut o = MqttOptions::new(
        format!("bench-sub-{}", fastrand::u32(..)),
        "127.0.0.1",
        b.broker.port,
    );
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(16 << 20, 16 << 20)
        .set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    let (client, mut el) = AsyncClient::new(o, 1024);
    el.set_network_options(wardgate::mqtt::network_options());
    let (ready_tx, mut ready_rx) = mpsc::channel(1);
    let c2 = client.clone();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = c2
                        .subscribe("wardgate/v1/+/+/+/batch", QoS::AtLeastOnce)
                        .await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(()).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = now_ms();
                    let Ok(msg) =
                        <coset::CoseSign1 as coset::TaggedCborSerializable>::from_tagged_slice(
                            &p.payload,
                        )
                    else {
                        continue; // not a signed batch: not counted
                    };
                    let Some(Ok(b)) = msg.payload.as_deref().map(BatchPayload::from_cbor) else {
                        continue;
                    };
                    count.fetch_add(b.observations.len() as u64, Ordering::Relaxed);
                    let mut l = latencies.lock().unwrap_or_else(|e| e.into_inner());
                    if l.capacity() > l.len() {
                        for o in &b.observations {
                            l.push(now - o.gateway_time);
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => break, // disconnected at the end of a run
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
        .await
        .map_err(|_| crate::anyhow!("the bench subscriber was not subscribed within 30 s"))?;
    Ok(client)
}

/// The writer and uplink tasks of one in-process gateway.
pub struct Gateway {
    /// Its store.
    pub store: Arc<Store>,
    shutdown: watch::Sender<bool>,
    /// The adapters' channel into the writer (dropped by [`Gateway::stop`]).
    pub tx: Option<mpsc::Sender<AdapterEvent>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Opens (creates) a store `name` in the bench directory: `synchronous=FULL`, 8 GiB cap.
pub fn open_store(b: &BenchBroker, name: &str) -> Result<Arc<Store>> {
    Ok(Arc::new(
        Store::open(
            &b.path().join(name),
            StoreOptions {
                max_bytes: 8 << 30,
                ..Default::default()
            },
        )?
        .0,
    ))
}

/// Starts the writer (the daemon's commit settings) and the uplink (broker ack mode, batches of
/// up to 2,000, `batch_interval` between re-sends) on `store`.
pub fn start_gateway(
    b: &BenchBroker,
    store: Arc<Store>,
    batch_interval: Duration,
) -> Result<Gateway> {
    let signer = Arc::new(Signer::from_files(&b.pki.gateway_cert, &b.pki.gateway_key)?);
    let tls = wardgate::tls::client_config(&b.pki.ca_pem, &b.pki.gateway_cert, &b.pki.gateway_key)?;
    let (shutdown, srx) = watch::channel(false);
    let (tx, rx) = mpsc::channel(wardgate::daemon::CHANNEL_CAPACITY);
    let wake = Arc::new(Notify::new());
    let writer = tokio::spawn(run_writer(
        store.clone(),
        rx,
        WriterOptions {
            commit_interval: Duration::from_millis(20),
            commit_max_rows: 5000,
            retention_every: Duration::from_secs(3600),
            buffer_max_rows: 10_000,
        },
        wake.clone(),
        Arc::new(WriterStats::default()),
    ));
    let settings = UplinkSettings {
        host: "127.0.0.1".into(),
        port: b.broker.port,
        tls,
        client_id: format!("gw-bench-{}", fastrand::u32(..)),
        keepalive: Duration::from_secs(30),
        ack: AckMode::Broker,
        batch_max: 2000,
        batch_interval,
        max_inflight: 16,
        ack_timeout: Duration::from_secs(60),
        backoff_max: Duration::from_secs(2),
        origin: origin(),
        // Broker ack mode: no upstream acks to verify, so nobody is trusted to send them.
        acks: wardgate::uplink::acks::AckPolicy {
            gateway: origin().gateway,
            receivers: Arc::new(wardgate::signing::Verifier::default()),
        },
        encrypt: None,
    };
    let (uplink, _status) = Uplink::new(store.clone(), signer, settings, wake);
    let up = tokio::spawn(uplink.run(srx));
    Ok(Gateway {
        store,
        shutdown,
        tx: Some(tx),
        tasks: vec![writer, up],
    })
}

impl Gateway {
    /// Closes the channel, tells the uplink to stop and waits for both tasks.
    pub async fn stop(mut self) {
        self.tx.take();
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Waits until `count` reaches `n`: the time it took, `None` after `limit`.
pub async fn wait_count(count: &AtomicU64, n: u64, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while count.load(Ordering::Relaxed) < n {
        if t0.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Some(t0.elapsed())
}

/// One throughput run: `n` observations sent into the writer as fast as it takes them;
/// observations/s from the first send until the subscriber has counted the last one. The store
/// is `name` in the bench directory. Errors: the subscriber did not count them all within
/// `limit` (observations lost or the pipeline stuck).
pub async fn throughput(b: &BenchBroker, name: &str, n: u64, limit: Duration) -> Result<f64> {
    let count = Arc::new(AtomicU64::new(0));
    let sub = subscriber(b, count.clone(), Arc::new(Mutex::new(Vec::new()))).await?;
    let gw = start_gateway(b, open_store(b, name)?, Duration::from_millis(50))?;
    let tx = gw.tx.clone().expect("a fresh gateway has its channel");
    let t0 = Instant::now();
    let feeder = tokio::spawn(async move {
        let t = now_ms();
        for i in 0..n {
            if tx.send(observation(i, t)).await.is_err() {
                break;
            }
        }
    });
    let done = wait_count(&count, n, limit).await;
    let secs = t0.elapsed().as_secs_f64();
    let _ = feeder.await;
    gw.stop().await;
    let _ = sub.disconnect().await;
    match done {
        Some(_) => Ok(n as f64 / secs),
        None => Err(crate::anyhow!(
            "in-process pipeline: {} of {n} observations counted after {limit:?}",
            count.load(Ordering::Relaxed)
        )),
    }
}
