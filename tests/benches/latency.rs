//! Device-to-upstream latency and saturated throughput through the real daemon (issue 11,
//! item 5): devices on ptys → `wardgate run` (store `synchronous=FULL`) →
//! mosquitto (mutual TLS) → `wardgate receive` (upstream ack mode, durable SQLite output).
//!
//! `scripts/bench-latency [--baseline REV]` (or `cargo bench -p wardgate-e2e --bench latency`).
//! Reports medians over `BENCH_RUNS` runs of:
//! - latency: one CMS50E on a pty written at `BENCH_RATE` readings (frames) a second for
//!   `BENCH_SECS` s, each frame's write time taken right after its `write(2)`; a reading's
//!   latency is the receiver's `received_ms` of the batch that carried the last of its
//!   observations minus that write time (ms resolution); p50 and p99 (target p99 ≤ 25 ms at 50/s);
//! - saturated throughput: 4 CMS50E ptys written as fast as the gateway reads them
//!   (`BENCH_SAT_FRAMES` frames each, the recording repeated), observations/s from the first
//!   write until the receiver stored the last one.
//!
//! With `BENCH_BASELINE_BIN` (another build of `wardgate`, e.g. `main` before send-at-once;
//! `scripts/bench-latency --baseline REV` builds it) the same runs are made with it, and the ratio
//! this build / baseline is printed. The readings are CMS50 frames; the issue's own harness (JSON
//! lines on 4 ptys) is measured by `throughput.rs` (`scripts/bench`).
//!
//! Environment: `BENCH_BIN` (default: this package's `wardgate-e2e-bin`, the same entry point
//! as `wardgate`), `BENCH_BASELINE_BIN`, `BENCH_RUNS` (3), `BENCH_RATE` (50), `BENCH_SECS` (20),
//! `BENCH_SAT_FRAMES` (25000).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wardgate_e2e::env::{ReceiverOptions, TestEnv};
use wardgate_e2e::pty::Device;
use wardgate_sim::devsim::Pace;

const E2E_BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");
const FRAME: usize = 9;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn unix_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// `frames` CMS50E frames: the recording (whole frames) repeated.
fn frames(dev: &Device, frames: usize) -> Vec<u8> {
    let rec = &dev.recording[..dev.recording.len() / FRAME * FRAME];
    rec.iter().copied().cycle().take(frames * FRAME).collect()
}

/// Starts a receiver and a gateway (`upstream` ack mode, production batching defaults) with
/// `devices` on ptys; returns the ports (opened before the gateway, which opens their links).
fn start(
    env: &TestEnv,
    devices: &[Device],
) -> (
    wardgate_e2e::process::Proc,
    wardgate_e2e::process::Proc,
    Vec<wardgate_sim::devsim::SimulatedPort>,
) {
    let receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut opts = env.gateway_options();
    opts.ack = "upstream";
    opts.batch_interval_ms = 200;
    opts.keepalive_s = 30;
    opts.ack_timeout_s = 30;
    opts.devices = devices.to_vec();
    let cfg = env.write_gateway_config(&opts).unwrap();
    let ports = devices
        .iter()
        .map(|d| d.open_port(&env.dev_dir()).unwrap())
        .collect();
    let mut gateway = env.spawn_gateway(&cfg).unwrap();
    gateway
        .wait_stderr("uplink connected", 1, Duration::from_secs(30))
        .unwrap();
    (gateway, receiver, ports)
}

fn stop(mut gateway: wardgate_e2e::process::Proc, mut receiver: wardgate_e2e::process::Proc) {
    let _ = gateway.terminate(Duration::from_secs(20));
    let _ = receiver.terminate(Duration::from_secs(20));
}

/// One latency run: (p50, p99) in ms over the readings.
fn latency_run(bin: &str, rate: u64, secs: u64) -> (f64, f64) {
    let env = TestEnv::new("bench-latency", bin).unwrap();
    // Every frame's numerics (numerics_every_s = 0): a reading per frame, as before issue 11
    // item 3 (by default SpO2 and pulse leave once a second, with the second's pleth array).
    let dev = Device::cms50e("ox-001").with_numerics_every(0);
    let (gateway, receiver, mut ports) = start(&env, std::slice::from_ref(&dev));
    let n = (rate * secs) as usize;
    let data = frames(&dev, n);
    // Observations per frame, in stream order (prefix differences: the decoder's own count).
    let mut per_frame = Vec::with_capacity(n);
    let mut before = 0;
    for k in 1..=n {
        let c = dev.expected_in(&data[..k * FRAME]);
        per_frame.push(c - before);
        before = c;
    }
    let pace = Pace::Frames {
        size: FRAME,
        per_sec: 1.0,
    };
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut written = Vec::with_capacity(n);
    let port = &mut ports[0];
    // The first write waits for the gateway's start-live command.
    port.replay(&data[..FRAME], pace, 1.0, Duration::from_secs(30))
        .unwrap();
    written.push(unix_ms_f64());
    let t0 = Instant::now();
    for k in 1..n {
        let due = t0 + period * k as u32;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        port.replay(
            &data[k * FRAME..(k + 1) * FRAME],
            pace,
            1.0,
            Duration::from_secs(1),
        )
        .unwrap();
        written.push(unix_ms_f64());
    }
    let total: u64 = per_frame.iter().sum();
    env.wait_delivered(&[(dev.id(), total)], Duration::from_secs(60))
        .unwrap();
    // Receipt time of each observation, in seq order.
    let db = rusqlite::Connection::open(env.upstream().path).unwrap();
    let mut q = db
        .prepare(
            "SELECT b.received_ms FROM observations o JOIN batches b
               ON b.gateway = o.gateway AND b.batch = o.batch
             WHERE o.device = ?1 ORDER BY o.seq",
        )
        .unwrap();
    let received: Vec<i64> = q
        .query_map([dev.id()], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut at = received.into_iter();
    let mut lat = Vec::with_capacity(n);
    for (k, c) in per_frame.iter().enumerate() {
        // A reading has arrived when the last of its observations has.
        let last = (0..*c).filter_map(|_| at.next()).max();
        if let Some(r) = last {
            lat.push(r as f64 - written[k]);
        }
    }
    drop(q);
    stop(gateway, receiver);
    lat.sort_by(f64::total_cmp);
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

/// One saturated run: observations/s delivered.
fn throughput_run(bin: &str, per_pty: usize) -> f64 {
    let env = TestEnv::new("bench-saturated", bin).unwrap();
    let devs: Vec<Device> = (1..=4)
        .map(|i| Device::cms50e(&format!("ox-{i:03}")).with_numerics_every(0))
        .collect();
    let (gateway, receiver, ports) = start(&env, &devs);
    let data = frames(&devs[0], per_pty);
    let per_dev = devs[0].expected_in(&data);
    let want: Vec<(String, u64)> = devs.iter().map(|d| (d.id(), per_dev)).collect();
    let t0 = Instant::now();
    let writers: Vec<_> = ports
        .into_iter()
        .map(|mut p| {
            let data = data.clone();
            std::thread::spawn(move || {
                // As fast as the gateway reads: each write blocks while the pty buffer is full.
                p.replay(
                    &data,
                    Pace::Frames {
                        size: 4096,
                        per_sec: 1e9,
                    },
                    1.0,
                    Duration::from_secs(30),
                )
                .unwrap();
                p
            })
        })
        .collect();
    let ports: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    env.wait_delivered(&want, Duration::from_secs(300)).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    drop(ports);
    stop(gateway, receiver);
    (per_dev * 4) as f64 / secs
}

struct Figures {
    p50: f64,
    p99: f64,
    rate: f64,
}

fn measure(label: &str, bin: &str, runs: usize, rate: u64, secs: u64, per_pty: usize) -> Figures {
    let (mut p50s, mut p99s, mut rates) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let (p50, p99) = latency_run(bin, rate, secs);
        println!("  {label} latency run {run}: p50 {p50:.1} ms, p99 {p99:.1} ms");
        p50s.push(p50);
        p99s.push(p99);
    }
    for run in 1..=runs {
        let r = throughput_run(bin, per_pty);
        println!("  {label} saturated run {run}: {r:.0} observations/s");
        rates.push(r);
    }
    let f = Figures {
        p50: median(p50s),
        p99: median(p99s),
        rate: median(rates),
    };
    println!(
        "{label}: latency at {rate} readings/s for {secs} s: p50 {:.1} ms, p99 {:.1} ms (target p99 ≤ 25 ms); saturated: {:.0} observations/s (medians of {runs})",
        f.p50, f.p99, f.rate
    );
    f
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probing
    }
    let bin = std::env::var("BENCH_BIN").unwrap_or_else(|_| E2E_BIN.into());
    let runs = env_u64("BENCH_RUNS", 3).max(1) as usize;
    let rate = env_u64("BENCH_RATE", 50).max(1);
    let secs = env_u64("BENCH_SECS", 20).max(1);
    let per_pty = env_u64("BENCH_SAT_FRAMES", 25_000).max(1) as usize;
    println!(
        "wardgate latency bench: CMS50E ptys → wardgate run (synchronous=FULL) → mosquitto (mutual TLS) → wardgate receive (upstream acks)"
    );
    let this = measure("this build", &bin, runs, rate, secs, per_pty);
    if let Ok(base) = std::env::var("BENCH_BASELINE_BIN") {
        let before = measure("baseline", &base, runs, rate, secs, per_pty);
        println!(
            "ratio this build / baseline: p50 {:.3}, p99 {:.3}, saturated throughput {:.3}",
            this.p50 / before.p50,
            this.p99 / before.p99,
            this.rate / before.rate
        );
    }
}
