//! End-to-end benchmark of the in-process pipeline: store → sign → a real mosquitto (mutual
//! TLS) → subscriber (`wardgate_e2e::bench::pipeline`, which `throughput.rs` shares).
//!
//! `cargo bench -p wardgate-e2e --bench pipeline` (needs mosquitto; `scripts/test` installs it).
//! Reports medians over `RUNS` runs:
//! - throughput: observations/s from the first append to the last observation counted by an
//!   MQTT subscriber (durable commits, `synchronous=FULL`, broker ack mode);
//! - backlog drain: time to deliver a 1,000,000-observation backlog once the uplink starts;
//! - latency at 1,000 observations/s: subscriber receive time − gateway time, p50/p99 (rows are
//!   sent at their commit; `tests/benches/latency.rs` measures from the device's write);
//! - peak RSS (VmHWM) of this process (gateway pipeline + subscriber together: an upper bound);
//! - the real daemon's peak RSS and CPU with 50 serial devices.
//!
//! Environment: `BENCH_OBS` (default 200000), `BENCH_BACKLOG` (default 1000000), `BENCH_RUNS`
//! (default 3), `BENCH_INTERVAL_MS` (200), `BENCH_DEVICES` (50), `BENCH_RSS_SECS` (20).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wardgate_adapters::observation::now_ms;
use wardgate_e2e::bench::pipeline::{
    observation, open_store, start_gateway, subscriber, throughput, wait_count, BenchBroker,
};
use wardgate_e2e::bench::{clock_ticks, cpu_seconds, env_u64, median, peak_rss_kib};
use wardgate_e2e::process::Proc;

const E2E_BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probing
    }
    let n = env_u64("BENCH_OBS", 200_000);
    let backlog = env_u64("BENCH_BACKLOG", 1_000_000);
    let runs = env_u64("BENCH_RUNS", 3).max(1) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let env = BenchBroker::start("bench-pipeline").unwrap();
        println!("wardgate pipeline bench: store (synchronous=FULL) → COSE_Sign1 ES256 → mosquitto (mutual TLS) → subscriber");

        // 1. Throughput
        let mut rates = Vec::new();
        for run in 0..runs {
            let r = throughput(&env, &format!("tput{run}.db"), n, Duration::from_secs(120))
                .await
                .expect("throughput run");
            println!("  throughput run {}: {n} observations = {r:.0} obs/s", run + 1);
            rates.push(r);
        }
        println!("throughput: median {:.0} observations/s (target ≥ 200000)", median(&rates));

        // 2. Backlog drain
        let store = open_store(&env, "backlog.db").unwrap();
        let t = now_ms();
        let fill = Instant::now();
        let chunk: Vec<_> = (0..10_000).map(|i| observation(i, t)).collect();
        for _ in 0..backlog.div_ceil(10_000) {
            store.append(&chunk).unwrap();
        }
        let total = backlog.div_ceil(10_000) * 10_000;
        println!("  backlog: {total} observations appended in {:.1} s", fill.elapsed().as_secs_f64());
        let count = Arc::new(AtomicU64::new(0));
        let sub = subscriber(&env, count.clone(), Arc::new(Mutex::new(Vec::new()))).await.unwrap();
        let gw = start_gateway(&env, store, Duration::from_millis(50)).unwrap();
        let drained = wait_count(&count, total, Duration::from_secs(300)).await.expect("backlog drain timed out");
        println!("backlog drain: {total} observations delivered in {:.2} s (target ≤ 10 s)", drained.as_secs_f64());
        let left = gw.store.stats().unwrap();
        println!("  store after drain: {} rows queued, {} unacked batches", left.queued, left.unacked_batches);
        gw.stop().await;
        let _ = sub.disconnect().await;

        // 3. Latency at 1,000 observations/s
        let interval = Duration::from_millis(env_u64("BENCH_INTERVAL_MS", 200));
        let lat = Arc::new(Mutex::new(Vec::with_capacity(6000)));
        let count = Arc::new(AtomicU64::new(0));
        let sub = subscriber(&env, count.clone(), lat.clone()).await.unwrap();
        let gw = start_gateway(&env, open_store(&env, "latency.db").unwrap(), interval).unwrap();
        let tx = gw.tx.clone().unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for i in 0..500u64 {
            tick.tick().await;
            let t = now_ms();
            for j in 0..10 {
                tx.send(observation(i * 10 + j, t)).await.unwrap();
            }
        }
        wait_count(&count, 5000, Duration::from_secs(30)).await.expect("latency run timed out");
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
        println!(
            "peak RSS of the bench process (pipeline + subscriber): {} KiB",
            peak_rss_kib(std::process::id() as i32).unwrap_or(0)
        );

        // 4. Peak RSS of the real daemon with 50 serial devices.
        rss_with_devices(&env, env_u64("BENCH_DEVICES", 50) as usize, Duration::from_secs(env_u64("BENCH_RSS_SECS", 20)));
    });
}

/// Runs the real `wardgate run` (this package's `wardgate-e2e-bin`, built in the bench profile)
/// with `n` serial devices, each a pty replaying the Ivy 450C ANSAR-B recording at 9600 baud
/// (about 18 observations/s per device), delivering to mosquitto, and reports the daemon's peak
/// RSS (VmHWM) and CPU after `secs`.
fn rss_with_devices(env: &BenchBroker, n: usize, secs: Duration) {
    let d = env.path().join("rss");
    std::fs::create_dir_all(d.join("dev")).unwrap();
    let mut cfg = format!(
        "version = 1\n[gateway]\nid = \"gw-rss\"\nsite = \"bench\"\nward = \"w1\"\n[store]\npath = \"rss.db\"\n[uplink]\nhost = \"127.0.0.1\"\nport = {}\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nack = \"broker\"\n",
        env.broker.port,
        env.pki.ca_pem.display(),
        env.pki.gateway_cert.display(),
        env.pki.gateway_key.display(),
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
    let mut child = Proc::spawn(
        "gateway-rss",
        std::path::Path::new(E2E_BIN),
        [
            "run".as_ref(),
            "--config".as_ref(),
            d.join("rss.toml").as_os_str(),
        ],
        &d,
        &d,
        &[("WARDGATE_LOG", "warn")],
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
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
    let pid = child.pid().as_raw();
    let rss_now = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_else(|| "?".into());
    println!(
        "daemon with {n} serial devices (~{} observations/s) after {} s: peak RSS {} KiB, RSS now {rss_now} KiB, CPU {:.1} % of one core",
        n * 18,
        secs.as_secs(),
        peak_rss_kib(pid).unwrap_or(0),
        cpu_seconds(pid, clock_ticks()).unwrap_or(f64::NAN) / secs.as_secs_f64() * 100.0
    );
    let _ = child.terminate(Duration::from_secs(20));
    stop.store(true, Ordering::Relaxed);
    drop(feeders);
}
