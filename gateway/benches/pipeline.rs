//! End-to-end benchmark: store → sign → a real mosquitto (mutual TLS) → subscriber.
//!
//! `cargo bench -p wardgate --bench pipeline` (needs mosquitto; `scripts/test` installs it).
//! Reports medians over `RUNS` runs:
//! - throughput: observations/s from the first append to the last observation counted by an
//!   MQTT subscriber (durable commits, `synchronous=FULL`, broker ack mode);
//! - backlog drain: time to deliver a 1,000,000-observation backlog once the uplink starts;
//! - latency at 1,000 observations/s: subscriber receive time − gateway time, p50/p99 (rows are
//!   sent at their commit; `tests/benches/latency.rs` measures from the device's write);
//! - peak RSS (VmHWM) of this process (gateway pipeline + subscriber together: an upper bound).
//!
//! Environment: `BENCH_OBS` (default 200000), `BENCH_BACKLOG` (default 1000000), `BENCH_RUNS`
//! (default 3).

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use std::process::{Child, Command, Stdio};
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

struct Env {
    dir: tempfile::TempDir,
    port: u16,
    mosquitto: Child,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.mosquitto.kill();
        let _ = self.mosquitto.wait();
    }
}

fn mosquitto_bin() -> String {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    "mosquitto".into()
}

fn setup() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = wardgate_sim::pki::Ca::new("bench CA").unwrap();
    wardgate_sim::pki::write_cert(&d.join("ca.pem"), &ca.cert_pem).unwrap();
    for (name, cn, server) in [
        ("broker", "127.0.0.1", true),
        ("gateway", "gw-bench", false),
        ("sub", "bench-sub", false),
    ] {
        let (c, k) = ca.leaf(cn, &["127.0.0.1"], server).unwrap();
        wardgate_sim::pki::write_cert(&d.join(format!("{name}.pem")), &c).unwrap();
        wardgate_sim::pki::write_key(&d.join(format!("{name}.key")), &k).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        d.join("mosquitto.conf"),
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\ncafile {0}/ca.pem\ncertfile {0}/broker.pem\nkeyfile {0}/broker.key\nrequire_certificate true\npersistence false\nset_tcp_nodelay true\nuser root\nmax_inflight_messages 0\nmax_queued_messages 100000\n",
            d.display()
        ),
    )
    .unwrap();
    let mosquitto = Command::new(mosquitto_bin())
        .arg("-c")
        .arg(d.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto (apt-get install mosquitto)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Env {
        dir,
        port,
        mosquitto,
    }
}

fn origin() -> Origin {
    Origin {
        gateway: "gw-bench".into(),
        site: "bench".into(),
        ward: "w1".into(),
    }
}

fn observation(i: u64, t: i64) -> AdapterEvent {
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

/// Subscriber: counts observations and records receive − gateway_time latencies.
async fn subscriber(
    env: &Env,
    count: Arc<AtomicU64>,
    latencies: Arc<Mutex<Vec<i64>>>,
) -> AsyncClient {
    let d = env.dir.path();
    let tls =
        wardgate::tls::client_config(&d.join("ca.pem"), &d.join("sub.pem"), &d.join("sub.key"))
            .unwrap();
    let mut o = MqttOptions::new(
        format!("bench-sub-{}", fastrand::u32(..)),
        "127.0.0.1",
        env.port,
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
                    c2.subscribe("wardgate/v1/+/+/+/batch", QoS::AtLeastOnce)
                        .await
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(()).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = now_ms();
                    // Skip the COSE envelope: the payload is the 3rd element; decode it fully.
                    let msg: coset::CoseSign1 =
                        coset::TaggedCborSerializable::from_tagged_slice(&p.payload).unwrap();
                    let b = BatchPayload::from_cbor(msg.payload.as_deref().unwrap()).unwrap();
                    count.fetch_add(b.observations.len() as u64, Ordering::Relaxed);
                    let mut l = latencies.lock().unwrap();
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
    ready_rx.recv().await;
    client
}

struct Gateway {
    store: Arc<Store>,
    shutdown: watch::Sender<bool>,
    tx: Option<mpsc::Sender<AdapterEvent>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn open_store(env: &Env, name: &str) -> Arc<Store> {
    Arc::new(
        Store::open(
            &env.dir.path().join(name),
            StoreOptions {
                max_bytes: 8 << 30,
                ..Default::default()
            },
        )
        .unwrap()
        .0,
    )
}

fn start_gateway(env: &Env, store: Arc<Store>, batch_interval: Duration) -> Gateway {
    let d = env.dir.path();
    let signer =
        Arc::new(Signer::from_files(&d.join("gateway.pem"), &d.join("gateway.key")).unwrap());
    let tls = wardgate::tls::client_config(
        &d.join("ca.pem"),
        &d.join("gateway.pem"),
        &d.join("gateway.key"),
    )
    .unwrap();
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
        port: env.port,
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
    Gateway {
        store,
        shutdown,
        tx: Some(tx),
        tasks: vec![writer, up],
    }
}

impl Gateway {
    async fn stop(mut self) {
        self.tx.take();
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn wait_for(count: &AtomicU64, n: u64, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while count.load(Ordering::Relaxed) < n {
        if t0.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Some(t0.elapsed())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probing
    }
    let n = env_u64("BENCH_OBS", 200_000);
    let backlog = env_u64("BENCH_BACKLOG", 1_000_000);
    let runs = env_u64("BENCH_RUNS", 3) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let env = setup();
        println!("wardgate pipeline bench: store (synchronous=FULL) → COSE_Sign1 ES256 → mosquitto (mutual TLS) → subscriber");

        // 1. Throughput
        let mut rates = Vec::new();
        for run in 0..runs {
            let count = Arc::new(AtomicU64::new(0));
            let sub = subscriber(&env, count.clone(), Arc::new(Mutex::new(Vec::new()))).await;
            let gw = start_gateway(&env, open_store(&env, &format!("tput{run}.db")), Duration::from_millis(50));
            let tx = gw.tx.clone().unwrap();
            let t0 = Instant::now();
            tokio::spawn(async move {
                let t = now_ms();
                for i in 0..n {
                    tx.send(observation(i, t)).await.unwrap();
                }
            });
            let done = wait_for(&count, n, Duration::from_secs(120)).await.expect("throughput run timed out");
            let _ = done;
            let secs = t0.elapsed().as_secs_f64();
            rates.push(n as f64 / secs);
            println!("  throughput run {}: {n} observations in {secs:.2} s = {:.0} obs/s", run + 1, n as f64 / secs);
            gw.stop().await;
            let _ = sub.disconnect().await;
        }
        println!("throughput: median {:.0} observations/s (target ≥ 200000)", median(rates));

        // 2. Backlog drain
        let store = open_store(&env, "backlog.db");
        let t = now_ms();
        let fill = Instant::now();
        let chunk: Vec<_> = (0..10_000).map(|i| observation(i, t)).collect();
        for _ in 0..backlog.div_ceil(10_000) {
            store.append(&chunk).unwrap();
        }
        let total = backlog.div_ceil(10_000) * 10_000;
        println!("  backlog: {total} observations appended in {:.1} s", fill.elapsed().as_secs_f64());
        let count = Arc::new(AtomicU64::new(0));
        let sub = subscriber(&env, count.clone(), Arc::new(Mutex::new(Vec::new()))).await;
        let gw = start_gateway(&env, store, Duration::from_millis(50));
        let drained = wait_for(&count, total, Duration::from_secs(300)).await.expect("backlog drain timed out");
        println!("backlog drain: {total} observations delivered in {:.2} s (target ≤ 10 s)", drained.as_secs_f64());
        let left = gw.store.stats().unwrap();
        println!("  store after drain: {} rows queued, {} unacked batches", left.queued, left.unacked_batches);
        gw.stop().await;
        let _ = sub.disconnect().await;

        // 3. Latency at 1,000 observations/s
        let interval = Duration::from_millis(env_u64("BENCH_INTERVAL_MS", 200));
        let lat = Arc::new(Mutex::new(Vec::with_capacity(6000)));
        let count = Arc::new(AtomicU64::new(0));
        let sub = subscriber(&env, count.clone(), lat.clone()).await;
        let gw = start_gateway(&env, open_store(&env, "latency.db"), interval);
        let tx = gw.tx.clone().unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for i in 0..500u64 {
            tick.tick().await;
            let t = now_ms();
            for j in 0..10 {
                tx.send(observation(i * 10 + j, t)).await.unwrap();
            }
        }
        wait_for(&count, 5000, Duration::from_secs(30)).await.expect("latency run timed out");
        let mut l = lat.lock().unwrap().clone();
        l.sort_unstable();
        let p = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)];
        println!(
            "latency at 1000 obs/s ({} samples): p50 {} ms, p99 {} ms (target p99 ≤ 25 ms: sent at once, the {} ms interval paces only re-sends)",
            l.len(),
            p(0.5),
            p(0.99),
            interval.as_millis()
        );
        drop(tx);
        gw.stop().await;
        let _ = sub.disconnect().await;
        println!("peak RSS of the bench process (pipeline + subscriber): {} KiB", vm_hwm_kib());

        // 4. Peak RSS of the real daemon with 50 serial devices.
        rss_with_devices(&env, env_u64("BENCH_DEVICES", 50) as usize, Duration::from_secs(env_u64("BENCH_RSS_SECS", 20)));
    });
}

/// Runs the real `wardgate run` (release build) with `n` serial devices, each a pty replaying the
/// Ivy 450C ANSAR-B recording at 9600 baud (about 18 observations/s per device), delivering to
/// mosquitto, and reports the daemon's peak RSS (VmHWM) after `secs`.
fn rss_with_devices(env: &Env, n: usize, secs: Duration) {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/wardgate");
    if !bin.exists() {
        println!(
            "rss: skipped ({} not built; run `cargo build --release -p wardgate` first)",
            bin.display()
        );
        return;
    }
    let d = env.dir.path();
    std::fs::create_dir_all(d.join("dev")).unwrap();
    let mut cfg = format!(
        "version = 1\n[gateway]\nid = \"gw-rss\"\nsite = \"bench\"\nward = \"w1\"\n[store]\npath = \"rss.db\"\n[uplink]\nhost = \"127.0.0.1\"\nport = {}\nca = \"ca.pem\"\ncert = \"gateway.pem\"\nkey = \"gateway.key\"\nack = \"broker\"\n",
        env.port
    );
    let mut ports = Vec::new();
    for i in 0..n {
        let link = d.join("dev").join(format!("bed{i}"));
        ports.push(wardgate_sim::devsim::SimulatedPort::open(&link, None).unwrap());
        cfg.push_str(&format!(
            "[[serial]]\nname = \"bed{i}\"\npath = \"dev/bed{i}\"\nprotocol = \"ansar-b\"\n"
        ));
    }
    std::fs::write(d.join("rss.toml"), cfg).unwrap();
    let mut child = Command::new(&bin)
        .arg("run")
        .arg("--config")
        .arg(d.join("rss.toml"))
        .env("WARDGATE_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut feeders = Vec::new();
    for mut p in ports {
        let stop = stop.clone();
        feeders.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if p.replay(
                    wardgate_sim::demo_serial::IVY450C_RECORDING,
                    wardgate_sim::devsim::Pace::Baud(9600),
                    1.0,
                    Duration::from_secs(5),
                )
                .is_err()
                {
                    break;
                }
            }
        }));
    }
    std::thread::sleep(secs);
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_owned()
    };
    let cpu = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
    let f: Vec<&str> = cpu
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    println!(
        "daemon with {n} serial devices (~{} observations/s) after {} s: peak RSS {} KiB, RSS now {} KiB, CPU {:.1} % of one core",
        n * 18,
        secs.as_secs(),
        field("VmHWM:"),
        field("VmRSS:"),
        ticks / 100.0 / secs.as_secs_f64() * 100.0
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    stop.store(true, Ordering::Relaxed);
    drop(feeders);
}
