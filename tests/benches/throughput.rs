//! The one bench command of issue 11 "Measure" (`scripts/bench`, or `cargo bench -p
//! wardgate-e2e --bench throughput`): in one run, medians over `BENCH_RUNS` runs of
//!
//! - **(a) the real daemon path**: 4 devices on ptys speaking the `lines` protocol (one JSON
//!   line per reading, `{"dev":"ox-001","spo2":97,"pulse":72,"ts":<µs>,"seq":<n>}`, written with
//!   blocking writes as fast as the gateway takes them) → `wardgate run` (store
//!   `synchronous=FULL`) → mosquitto (mutual TLS) → `BENCH_RECEIVERS` `wardgate receive`
//!   processes sharing one `share_group`, each with its own SQLite output, upstream-ack mode.
//!   Delivered observations/s (first write → the receipt time of the last row stored), CPU
//!   seconds per 1,000 observations of the daemon and of the receivers together (utime + stime
//!   from `/proc/PID/stat`, at the end minus at the start), the daemon's peak RSS (`VmHWM`),
//!   and lost and duplicated readings counted from the receivers' outputs by (device, record
//!   number);
//! - **(b) the raw ceiling** of the same machine: rusqlite inserting the store's `queue` rows in
//!   1,000-row `synchronous=FULL` WAL transactions (`wardgate_e2e::bench::raw`), rows/s; the
//!   in-process pipeline (store → batch → sign → mosquitto → subscriber,
//!   `wardgate_e2e::bench::pipeline`), observations/s; and the ratios of (a) and of the pipeline
//!   to the ceiling;
//! - **(c) the issue's harness input** (the one the ThingsBoard IoT Gateway was measured with):
//!   the same 4 ptys, reading i to pty i mod 4 as device `ox-%03d` (i mod 4 + 1), `BENCH_C_COUNTS`
//!   readings (20,000 and 100,000): delivered readings/s, lost, duplicated, CPU s per 1,000
//!   readings, peak RSS; and `BENCH_RATE` readings/s for `BENCH_SECS` s: latency p50/p99 from the
//!   line's `ts` to its upstream receipt (the receiver's `received_ms` of the batch that carried
//!   the last of its two observations: millisecond resolution).
//!
//! Prints one table (figure, measured, target, met?) and, as the last line of stdout, the same
//! figures as one JSON object. Exits 1 when any run lost or duplicated a reading (or stored one
//! the bench did not write), 2 when a run could not be made at all.
//!
//! Environment: `BENCH_RUNS` (3), `BENCH_RECEIVERS` (2), `BENCH_A_READINGS` (200000: 400,000
//! observations), `BENCH_C_COUNTS` (`20000,100000`), `BENCH_RATE` (50), `BENCH_SECS` (20),
//! `BENCH_RAW_ROWS` (500000), `BENCH_RAW_TXN` (1000: rows per transaction of the ceiling, as the
//! issue defines it), `BENCH_PIPELINE_OBS` (200000), `BENCH_BIN` (default: this
//! package's `wardgate-e2e-bin`, the `wardgate` entry point built in the bench profile);
//! `BENCH_SMOKE=1`: one run of tiny counts (a check that the command works, not a measurement).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use wardgate_e2e::bench::harness::{
    device_name, line, tally, Row, LINES_MAP, OBS_PER_READING, PTYS,
};
use wardgate_e2e::bench::{
    clock_ticks, cpu_seconds, env_u64, load_average, median, peak_rss_kib, percentile, pipeline,
    raw, unix_us,
};
use wardgate_e2e::env::TestEnv;
use wardgate_e2e::process::Proc;
use wardgate_e2e::{anyhow, Context, Result};
use wardgate_sim::devsim::{Pace, SimulatedPort};

const E2E_BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");
struct Settings {
    bin: PathBuf,
    runs: usize,
    receivers: usize,
    a_readings: u64,
    c_counts: Vec<u64>,
    rate: u64,
    secs: u64,
    raw_rows: u64,
    raw_txn: u64,
    pipeline_obs: u64,
    ticks: f64,
}

impl Settings {
    fn from_env() -> Settings {
        let smoke = env_u64("BENCH_SMOKE", 0) != 0;
        let d = |full: u64, small: u64| if smoke { small } else { full };
        let c_counts = std::env::var("BENCH_C_COUNTS")
            .ok()
            .map(|v| {
                v.split(',')
                    .filter_map(|x| x.trim().parse().ok())
                    .filter(|&x| x > 0)
                    .collect::<Vec<u64>>()
            })
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| {
                if smoke {
                    vec![1_000]
                } else {
                    vec![20_000, 100_000]
                }
            });
        Settings {
            bin: std::env::var("BENCH_BIN")
                .unwrap_or_else(|_| E2E_BIN.into())
                .into(),
            runs: env_u64("BENCH_RUNS", d(3, 1)).max(1) as usize,
            receivers: env_u64("BENCH_RECEIVERS", 2).clamp(1, 16) as usize,
            a_readings: env_u64("BENCH_A_READINGS", d(200_000, 2_000)).max(PTYS),
            c_counts,
            rate: env_u64("BENCH_RATE", 50).clamp(1, 10_000),
            secs: env_u64("BENCH_SECS", d(20, 2)).max(1),
            raw_rows: env_u64("BENCH_RAW_ROWS", d(500_000, 20_000)).max(1_000),
            raw_txn: env_u64("BENCH_RAW_TXN", 1_000).max(1),
            pipeline_obs: env_u64("BENCH_PIPELINE_OBS", d(200_000, 20_000)).max(1),
            ticks: clock_ticks(),
        }
    }
}

/// How the harness writes.
#[derive(Clone, Copy)]
enum Feed {
    /// Blocking writes, one line each, as fast as the gateway reads (one thread per pty).
    Saturated,
    /// `rate` readings a second in all (one thread, reading i to pty i mod 4).
    Paced { rate: u64 },
}

/// What one run of the daemon path gave.
#[derive(Debug, Default)]
struct DaemonRun {
    readings: u64,
    /// Readings not stored (any of their observations missing in every output).
    lost: u64,
    /// Readings stored more than once (any of their observations, across the outputs).
    duplicated: u64,
    /// Rows in the outputs that are none of the bench's readings.
    unexpected: u64,
    /// First write → receipt time of the last row stored, s.
    secs: f64,
    gw_cpu: f64,
    rx_cpu: f64,
    gw_peak_kib: u64,
    /// Per delivered reading: receipt − `ts`, ms (sorted).
    latency_ms: Vec<f64>,
}

impl DaemonRun {
    /// Readings delivered whole (not lost) per second.
    fn readings_per_s(&self) -> f64 {
        (self.readings - self.lost) as f64 / self.secs
    }
}

/// One line, one blocking `write(2)` (the pty's buffer full: it waits for the gateway to read).
fn write_line(port: &mut SimulatedPort, text: &str) -> Result<()> {
    port.replay(
        text.as_bytes(),
        Pace::Frames {
            size: text.len(),
            per_sec: 1e9,
        },
        1.0,
        Duration::from_secs(30),
    )
    .context("write to the pty")?;
    Ok(())
}

/// `receiver-K/receiver.toml`: the test PKI, `share_group = "bench"`, SQLite output, no raw
/// message copies.
fn receiver_config(env: &TestEnv, k: usize) -> Result<(PathBuf, String)> {
    let dir = env.dir.join(format!("receiver-{k}"));
    std::fs::create_dir_all(&dir)?;
    let client_id = format!("bench-rx-{k}");
    let text = format!(
        "version = 1\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nclient_id = \"{client_id}\"\nkeepalive_s = 30\n\n[receiver]\nshare_group = \"bench\"\ngateway_certs = [\"{}\"]\noutput = \"sqlite:upstream.db\"\n",
        env.broker.port,
        env.pki.ca_pem.display(),
        env.pki.receiver_cert.display(),
        env.pki.receiver_key.display(),
        env.pki.gateway_cert.display(),
    );
    std::fs::write(dir.join("receiver.toml"), text)?;
    Ok((dir, client_id))
}

/// Observations in the receivers' outputs so far.
fn stored(outputs: &[PathBuf]) -> u64 {
    outputs
        .iter()
        .filter(|p| p.exists())
        .filter_map(|p| {
            let c = rusqlite::Connection::open_with_flags(
                p,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .ok()?;
            c.query_row("SELECT count(*) FROM observations", [], |r| {
                r.get::<_, i64>(0)
            })
            .ok()
        })
        .map(|n| n as u64)
        .sum()
}

/// One run of the daemon path with `readings` readings fed by `feed`.
fn daemon_run(s: &Settings, label: &str, readings: u64, feed: Feed) -> Result<DaemonRun> {
    let env = TestEnv::new(&format!("bench-{label}"), &s.bin.to_string_lossy())?;
    // Production batching and timeouts (the config's defaults), upstream acks.
    let mut opts = env.gateway_options();
    opts.ack = "upstream";
    opts.keepalive_s = 30;
    opts.batch_interval_ms = 200;
    opts.ack_timeout_s = 30;
    opts.backoff_max_s = 2;
    let cfg_path = env.write_gateway_config(&opts)?;
    let mut cfg = std::fs::read_to_string(&cfg_path)?;
    for k in 0..PTYS {
        let name = device_name(k);
        cfg.push_str(&format!(
            "\n[[serial]]\nname = \"{name}\"\npath = \"dev/{name}\"\nprotocol = \"lines\"\nmap = \"bench-oximeter\"\nbaud = 115200\nserial_number = \"{name}\"\nmax_backoff_s = 1\n"
        ));
    }
    cfg.push_str(LINES_MAP);
    std::fs::write(&cfg_path, cfg)?;

    let mut receivers = Vec::new();
    let mut outputs = Vec::new();
    for k in 1..=s.receivers {
        let (dir, client_id) = receiver_config(&env, k)?;
        let p = Proc::spawn(
            &format!("receiver-{k}"),
            &env.bin,
            [
                "receive".as_ref(),
                "--config".as_ref(),
                dir.join("receiver.toml").as_os_str(),
            ],
            &dir,
            &env.log_dir,
            &[],
        )?;
        env.wait_subscribed(&client_id, 1, Duration::from_secs(30))?;
        receivers.push(p);
        outputs.push(dir.join("upstream.db"));
    }
    std::fs::create_dir_all(env.dev_dir())?;
    let mut ports = (0..PTYS)
        .map(|k| SimulatedPort::open(&env.dev_dir().join(device_name(k)), None))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut gateway = env.spawn_gateway(&cfg_path)?;
    gateway.wait_stderr("uplink connected", 1, Duration::from_secs(30))?;
    // A pty keeps nothing for a reader still to come: every port is open before a byte is sent.
    for k in 0..PTYS {
        gateway.wait_stderr(
            &format!("serial {}: connected to", device_name(k)),
            1,
            Duration::from_secs(30),
        )?;
    }

    let gw_pid = gateway.pid().as_raw();
    let rx_pids: Vec<i32> = receivers.iter().map(|p| p.pid().as_raw()).collect();
    let rx_cpu =
        |pids: &[i32]| -> Result<f64> { pids.iter().map(|&p| cpu_seconds(p, s.ticks)).sum() };
    let (gw_cpu0, rx_cpu0) = (cpu_seconds(gw_pid, s.ticks)?, rx_cpu(&rx_pids)?);
    let first_write_us = unix_us();
    // ts of every reading, by reading number.
    let mut ts_us = vec![0u64; readings as usize];
    let writers_done = match feed {
        Feed::Saturated => {
            let handles: Vec<_> = ports
                .drain(..)
                .enumerate()
                .map(|(k, mut port)| {
                    std::thread::spawn(move || -> Result<(SimulatedPort, Vec<(u64, u64)>)> {
                        let mut sent = Vec::with_capacity((readings / PTYS + 1) as usize);
                        for i in (k as u64..readings).step_by(PTYS as usize) {
                            let ts = unix_us();
                            write_line(&mut port, &line(i, ts))?;
                            sent.push((i, ts));
                        }
                        Ok((port, sent))
                    })
                })
                .collect();
            for h in handles {
                let (port, sent) = h
                    .join()
                    .map_err(|_| anyhow!("a writer thread panicked"))??;
                ports.push(port);
                for (i, ts) in sent {
                    ts_us[i as usize] = ts;
                }
            }
            Instant::now()
        }
        Feed::Paced { rate } => {
            let period = Duration::from_secs_f64(1.0 / rate as f64);
            let t0 = Instant::now();
            for i in 0..readings {
                if let Some(d) = (t0 + period * i as u32).checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                let ts = unix_us();
                write_line(&mut ports[(i % PTYS) as usize], &line(i, ts))?;
                ts_us[i as usize] = ts;
            }
            Instant::now()
        }
    };

    // Until every observation is stored, or nothing new arrived for 20 s after the last write
    // (then some are lost: counted below), within a generous deadline.
    let want = readings * OBS_PER_READING;
    let deadline = Instant::now() + Duration::from_secs(120 + readings / 1_000);
    let (mut last_n, mut last_change) = (0u64, Instant::now());
    let complete = loop {
        let n = stored(&outputs);
        if n >= want {
            break true;
        }
        if n != last_n {
            (last_n, last_change) = (n, Instant::now());
        }
        let idle = last_change.max(writers_done).elapsed();
        if idle > Duration::from_secs(20) || Instant::now() > deadline {
            eprintln!("bench {label}: {n} of {want} observations stored; giving up waiting");
            break false;
        }
        // Not too often: counting competes with the measured processes for the CPU (the
        // rate is taken from the rows' receipt times, not from this poll).
        std::thread::sleep(Duration::from_millis(100));
    };
    let gw_cpu = cpu_seconds(gw_pid, s.ticks)? - gw_cpu0;
    let rx_cpu = rx_cpu(&rx_pids)? - rx_cpu0;
    let gw_peak_kib = peak_rss_kib(gw_pid)?;
    // Every batch acknowledged (late re-sends would show up as duplicates now, not after).
    if complete {
        if let Err(e) = env.wait_store_drained(Duration::from_secs(60)) {
            eprintln!("bench {label}: {e:#}");
        }
    }
    let _ = gateway.terminate(Duration::from_secs(20));
    for mut r in receivers {
        let _ = r.terminate(Duration::from_secs(20));
    }
    drop(ports);

    let mut rows = Vec::new();
    for out in &outputs {
        if !out.exists() {
            continue;
        }
        let c = rusqlite::Connection::open(out)?;
        let mut q = c.prepare(
            "SELECT o.device, o.code, o.status, b.received_ms FROM observations o
               JOIN batches b ON b.gateway = o.gateway AND b.batch = o.batch",
        )?;
        let found = q.query_map([], |r| {
            Ok(Row {
                device: r.get(0)?,
                code: r.get(1)?,
                status: r.get(2)?,
                received_ms: r.get(3)?,
            })
        })?;
        for r in found {
            rows.push(r?);
        }
    }
    let t = tally(readings, rows);
    let mut latency_ms: Vec<f64> = t
        .receipt_ms
        .iter()
        .zip(&ts_us)
        .filter_map(|(r, &ts)| r.map(|r| r as f64 - ts as f64 / 1000.0))
        .collect();
    latency_ms.sort_by(f64::total_cmp);
    let last_ms = t.last_ms.unwrap_or(i64::MAX);
    let secs = ((last_ms as f64 - first_write_us as f64 / 1000.0) / 1000.0).max(1e-3);
    let (lost, duplicated, unexpected) = (t.lost, t.duplicated, t.unexpected);
    Ok(DaemonRun {
        readings,
        lost,
        duplicated,
        unexpected,
        secs,
        gw_cpu,
        rx_cpu,
        gw_peak_kib,
        latency_ms,
    })
}

/// Every figure of every run, by name.
#[derive(Default)]
struct Collected {
    values: BTreeMap<String, Vec<f64>>,
    /// Lost, duplicated, unexpected readings over all runs, by part.
    faults: BTreeMap<String, (u64, u64, u64)>,
}

impl Collected {
    fn push(&mut self, key: &str, v: f64) {
        self.values.entry(key.into()).or_default().push(v);
    }
    fn median(&self, key: &str) -> f64 {
        self.values.get(key).map(|v| median(v)).unwrap_or(f64::NAN)
    }
    fn daemon(&mut self, part: &str, r: &DaemonRun, per: f64) {
        let units = r.readings as f64 * per;
        self.push(&format!("{part}.rate"), r.readings_per_s() * per);
        self.push(
            &format!("{part}.gw_cpu_per_1000"),
            r.gw_cpu / units * 1000.0,
        );
        self.push(
            &format!("{part}.rx_cpu_per_1000"),
            r.rx_cpu / units * 1000.0,
        );
        self.push(
            &format!("{part}.gw_peak_mib"),
            r.gw_peak_kib as f64 / 1024.0,
        );
        let f = self.faults.entry(part.into()).or_default();
        f.0 += r.lost;
        f.1 += r.duplicated;
        f.2 += r.unexpected;
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probing
    }
    let s = Settings::from_env();
    if let Err(e) = measure(&s) {
        eprintln!("BENCH FAILED: {e:#}");
        std::process::exit(2);
    }
}

fn measure(s: &Settings) -> Result<()> {
    let started = Instant::now();
    let load_before = load_average();
    println!(
        "wardgate bench (issue 11 \"Measure\"): {} run(s); (a) {} readings × 2 observations; (c) {:?} readings and {}/s for {} s; {} receiver(s) sharing one group; load average {load_before}",
        s.runs, s.a_readings, s.c_counts, s.rate, s.secs, s.receivers
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let broker = pipeline::BenchBroker::start("bench-pipeline")?;
    let mut c = Collected::default();
    for run in 1..=s.runs {
        // (b) the raw ceiling and the in-process pipeline.
        let dir = wardgate_e2e::temp_dir("bench-raw")?;
        let raw_rate = raw::insert_rate(dir.path(), s.raw_rows, s.raw_txn)?;
        drop(dir);
        c.push("b.raw", raw_rate);
        println!("  run {run}: (b) raw SQLite ceiling {raw_rate:.0} rows/s");
        let p = rt.block_on(pipeline::throughput(
            &broker,
            &format!("pipeline-{run}.db"),
            s.pipeline_obs,
            Duration::from_secs(120 + s.pipeline_obs / 1_000),
        ))?;
        c.push("b.pipeline", p);
        println!("  run {run}: (b) in-process pipeline {p:.0} observations/s");

        // (a) the daemon path, counted in observations.
        let r = daemon_run(s, "a", s.a_readings, Feed::Saturated)?;
        println!(
            "  run {run}: (a) {:.0} observations/s delivered; daemon {:.2} s CPU, receivers {:.2} s CPU, daemon peak RSS {} KiB; lost {}, duplicated {}, unexpected {}",
            r.readings_per_s() * OBS_PER_READING as f64,
            r.gw_cpu,
            r.rx_cpu,
            r.gw_peak_kib,
            r.lost,
            r.duplicated,
            r.unexpected
        );
        c.daemon("a", &r, OBS_PER_READING as f64);

        // (c) the harness input, counted in readings.
        for &n in &s.c_counts {
            let r = daemon_run(s, &format!("c{n}"), n, Feed::Saturated)?;
            println!(
                "  run {run}: (c) {n} readings: {:.0} readings/s delivered; daemon {:.2} s CPU, receivers {:.2} s CPU, daemon peak RSS {} KiB; lost {}, duplicated {}, unexpected {}",
                r.readings_per_s(),
                r.gw_cpu,
                r.rx_cpu,
                r.gw_peak_kib,
                r.lost,
                r.duplicated,
                r.unexpected
            );
            c.daemon(&format!("c{n}"), &r, 1.0);
        }
        let r = daemon_run(s, "latency", s.rate * s.secs, Feed::Paced { rate: s.rate })?;
        let (p50, p99) = (
            percentile(&r.latency_ms, 0.5),
            percentile(&r.latency_ms, 0.99),
        );
        println!(
            "  run {run}: (c) {}/s for {} s: latency p50 {p50:.1} ms, p99 {p99:.1} ms; lost {}, duplicated {}, unexpected {}",
            s.rate, s.secs, r.lost, r.duplicated, r.unexpected
        );
        c.push("c.latency.p50", p50);
        c.push("c.latency.p99", p99);
        let f = c.faults.entry("c.latency".into()).or_default();
        f.0 += r.lost;
        f.1 += r.duplicated;
        f.2 += r.unexpected;
    }
    drop(broker);
    report(s, &c, &load_before, started.elapsed());
    let bad: Vec<String> = c
        .faults
        .iter()
        .filter(|(_, f)| f.0 + f.1 + f.2 > 0)
        .map(|(k, f)| format!("{k}: {} lost, {} duplicated, {} unexpected", f.0, f.1, f.2))
        .collect();
    if !bad.is_empty() {
        eprintln!(
            "BENCH FAILED: readings lost or duplicated (over all runs): {}",
            bad.join("; ")
        );
        std::process::exit(1);
    }
    Ok(())
}

fn fmt_n(v: f64) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn met(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "NO"
    }
}

fn report(s: &Settings, c: &Collected, load_before: &str, took: Duration) {
    let raw = c.median("b.raw");
    let pipe = c.median("b.pipeline");
    let a = c.median("a.rate");
    let faults = |k: &str| c.faults.get(k).copied().unwrap_or_default();
    let mut rows: Vec<[String; 4]> = Vec::new();
    // A smoke run's tiny counts say nothing about rates, ratios or latency: their targets are
    // not judged (lost and duplicated still are).
    let smoke = env_u64("BENCH_SMOKE", 0) != 0;
    let mut row = |f: String, m: String, t: &str, ok: Option<bool>| {
        let verdict = match ok {
            Some(_) if smoke && (t.starts_with('≥') || t.starts_with('≤')) => "n/a (smoke)",
            Some(ok) => met(ok),
            None => "—",
        };
        rows.push([f, m, t.into(), verdict.into()])
    };
    let (al, ad, au) = faults("a");
    row(
        format!("(a) delivered observations/s ({} receivers)", s.receivers),
        fmt_n(a),
        "≥ 200,000",
        Some(a >= 200_000.0),
    );
    row(
        "(a) lost / duplicated readings (all runs)".into(),
        format!(
            "{al} / {ad}{}",
            if au > 0 {
                format!(" (+{au} unexpected)")
            } else {
                String::new()
            }
        ),
        "0 / 0",
        Some(al + ad + au == 0),
    );
    row(
        "(a) daemon CPU s per 1,000 observations".into(),
        format!("{:.4}", c.median("a.gw_cpu_per_1000")),
        "",
        None,
    );
    row(
        "(a) receivers' CPU s per 1,000 observations".into(),
        format!("{:.4}", c.median("a.rx_cpu_per_1000")),
        "",
        None,
    );
    row(
        "(a) daemon peak RSS (VmHWM)".into(),
        format!("{:.1} MiB", c.median("a.gw_peak_mib")),
        "",
        None,
    );
    row(
        format!(
            "(b) raw SQLite ceiling ({}-row transactions), rows/s",
            fmt_n(s.raw_txn as f64)
        ),
        fmt_n(raw),
        "",
        None,
    );
    row(
        "(b) in-process pipeline, observations/s".into(),
        fmt_n(pipe),
        "",
        None,
    );
    row(
        "(b) pipeline / raw ceiling".into(),
        format!("{:.0} %", pipe / raw * 100.0),
        "≥ 60 %",
        Some(pipe / raw >= 0.6),
    );
    row(
        "(b) (a) / raw ceiling".into(),
        format!("{:.0} %", a / raw * 100.0),
        "",
        None,
    );
    for &n in &s.c_counts {
        let k = format!("c{n}");
        let r = c.median(&format!("{k}.rate"));
        let (l, d, u) = faults(&k);
        row(
            format!("(c) {} readings: delivered readings/s", fmt_n(n as f64)),
            fmt_n(r),
            "≥ 160,000",
            Some(r >= 160_000.0),
        );
        row(
            format!(
                "(c) {} readings: lost / duplicated (all runs)",
                fmt_n(n as f64)
            ),
            format!(
                "{l} / {d}{}",
                if u > 0 {
                    format!(" (+{u} unexpected)")
                } else {
                    String::new()
                }
            ),
            "0 / 0",
            Some(l + d + u == 0),
        );
        row(
            format!(
                "(c) {} readings: CPU s per 1,000 readings, daemon / receivers",
                fmt_n(n as f64)
            ),
            format!(
                "{:.4} / {:.4}",
                c.median(&format!("{k}.gw_cpu_per_1000")),
                c.median(&format!("{k}.rx_cpu_per_1000"))
            ),
            "",
            None,
        );
        row(
            format!("(c) {} readings: daemon peak RSS", fmt_n(n as f64)),
            format!("{:.1} MiB", c.median(&format!("{k}.gw_peak_mib"))),
            "",
            None,
        );
    }
    let (p50, p99) = (c.median("c.latency.p50"), c.median("c.latency.p99"));
    let (ll, ld, lu) = faults("c.latency");
    row(
        format!(
            "(c) latency at {}/s for {} s, p50 (ms resolution)",
            s.rate, s.secs
        ),
        format!("{p50:.1} ms"),
        "",
        None,
    );
    row(
        format!(
            "(c) latency at {}/s for {} s, p99 (ms resolution)",
            s.rate, s.secs
        ),
        format!("{p99:.1} ms"),
        "≤ 25 ms",
        Some(p99 <= 25.0),
    );
    row(
        "(c) latency run: lost / duplicated (all runs)".into(),
        format!(
            "{ll} / {ld}{}",
            if lu > 0 {
                format!(" (+{lu} unexpected)")
            } else {
                String::new()
            }
        ),
        "0 / 0",
        Some(ll + ld + lu == 0),
    );
    let w0 = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
    let w1 = rows
        .iter()
        .map(|r| r[1].chars().count())
        .max()
        .unwrap_or(0)
        .max(8);
    let w2 = rows
        .iter()
        .map(|r| r[2].chars().count())
        .max()
        .unwrap_or(0)
        .max(6);
    let pad = |t: &str, w: usize| format!("{t}{}", " ".repeat(w.saturating_sub(t.chars().count())));
    println!();
    println!(
        "medians of {} run(s); load average {load_before} before, {} after; {:.0} s in all",
        s.runs,
        load_average(),
        took.as_secs_f64()
    );
    println!(
        "{}  {}  {}  met?",
        pad("figure", w0),
        pad("measured", w1),
        pad("target", w2)
    );
    println!("{}", "-".repeat(w0 + w1 + w2 + 12));
    for r in &rows {
        println!(
            "{}  {}  {}  {}",
            pad(&r[0], w0),
            pad(&r[1], w1),
            pad(&r[2], w2),
            r[3]
        );
    }
    let mut json = serde_json::json!({
        "bench": "wardgate-issue11-measure",
        "runs": s.runs,
        "receivers": s.receivers,
        "load_before": load_before,
        "load_after": load_average(),
        "seconds": took.as_secs_f64().round(),
        "a": {
            "readings": s.a_readings,
            "observations_per_s": a.round(),
            "daemon_cpu_s_per_1000_obs": c.median("a.gw_cpu_per_1000"),
            "receivers_cpu_s_per_1000_obs": c.median("a.rx_cpu_per_1000"),
            "daemon_peak_rss_kib": (c.median("a.gw_peak_mib") * 1024.0).round(),
            "lost": al, "duplicated": ad, "unexpected": au,
        },
        "b": {
            "raw_rows_per_s": raw.round(),
            "raw_rows_per_transaction": s.raw_txn,
            "pipeline_obs_per_s": pipe.round(),
            "pipeline_to_raw": pipe / raw,
            "a_to_raw": a / raw,
        },
        "c": {
            "latency": {
                "rate": s.rate, "secs": s.secs,
                "p50_ms": p50, "p99_ms": p99,
                "lost": ll, "duplicated": ld, "unexpected": lu,
            },
        },
    });
    for &n in &s.c_counts {
        let k = format!("c{n}");
        let (l, d, u) = faults(&k);
        json["c"][n.to_string()] = serde_json::json!({
            "readings_per_s": c.median(&format!("{k}.rate")).round(),
            "daemon_cpu_s_per_1000": c.median(&format!("{k}.gw_cpu_per_1000")),
            "receivers_cpu_s_per_1000": c.median(&format!("{k}.rx_cpu_per_1000")),
            "daemon_peak_rss_kib": (c.median(&format!("{k}.gw_peak_mib")) * 1024.0).round(),
            "lost": l, "duplicated": d, "unexpected": u,
        });
    }
    println!();
    println!("{json}");
}
