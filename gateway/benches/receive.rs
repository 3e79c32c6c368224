//! Receiver benchmark: pre-made signed batches through `wardgate receive`'s own per-message
//! path, without MQTT — verify (COSE_Sign1 against the gateway's certificate) → decode → raw
//! copy (when `BENCH_RAW=1`) → durable write (SQLite `synchronous=FULL` or fsynced JSON lines)
//! → signed ack built. This is [`wardgate::receive::worker::Processor::process`], what the
//! receiver's worker runs for every message; the MQTT read (TLS) and the PUBACK are not in it.
//!
//! `cargo bench -p wardgate --bench receive`
//!
//! The batches are made beforehand with the gateway's own code ([`BatchPayload::to_cbor`],
//! [`Signer::sign`]): numerics from four devices, each with a location (SpO2 and pulse rate, half of them with a device
//! time stamp, one in fifty with a status flag) and, with `BENCH_WAVE_EVERY=N`, every N-th row a
//! 75-sample waveform (the CMS50 pleth at 75 Hz is one such row a second).
//!
//! Prints, per phase, CPU time (user + system of this process) per observation in µs and
//! observations per second of wall time:
//! - `verify+decode`: [`check_message`] alone over every batch;
//! - `write`: [`Output::write`] alone (the durable write of batches decoded beforehand) into a
//!   fresh output file;
//! - `process`: the whole per-message path into a fresh output file;
//! - with `BENCH_RECEIVERS=N` (N > 1), `N receivers`: N threads, each a receiver's worker with
//!   its own output file (or, with `BENCH_SHARED=1`, all writing one SQLite file), the batches
//!   dealt out in turn as a shared subscription does; observations/s of all of them together.
//!
//! Environment: `BENCH_OBS` (total observations, default 400000), `BENCH_BATCH` (rows per
//! batch, default 5000), `BENCH_OUTPUT` (`sqlite` or `jsonl`, default `sqlite`), `BENCH_RAW`
//! (`1`: also write the raw copies), `BENCH_WAVE_EVERY` (default 0: no waveforms),
//! `BENCH_RUNS` (default 3; the best run is reported).

use std::path::Path;
use std::time::{Duration, Instant};
use wardgate::batch::{BatchPayload, WireEvent, WireObservation};
use wardgate::receive::ack::Acker;
use wardgate::receive::check_message;
use wardgate::receive::raw::RawWriter;
use wardgate::receive::worker::{Outcome, Processor};
use wardgate::receive::Output;
use wardgate::signing::{Signer, Verifier};
use wardgate_adapters::observation::Waveform;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time (user + system, all threads) of this process so far.
fn cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID).unwrap();
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// Rows like a ward's: four devices, SpO2 and pulse rate alternating.
fn observation(seq: u64, wave_every: usize) -> WireObservation {
    let devices = [
        "serial:bed12-spo2",
        "serial:bed14-spo2",
        "ble:a4:c1:38:0f:2e:91",
        "ble:a4:c1:38:0f:2e:92",
    ];
    let device = devices[(seq / 2) as usize % devices.len()];
    let (code, unit, ucum, value) = if seq % 2 == 0 {
        (150456, 262688, "%", 90.0 + (seq % 10) as f64)
    } else {
        (149530, 264864, "/min", 60.0 + (seq % 40) as f64)
    };
    let waveform = (wave_every > 0 && seq % wave_every as u64 == 0).then(|| Waveform {
        period_us: 13_333,
        scale: 1.0,
        offset: 0.0,
        samples: (0..75).map(|i| (i * 7 + seq as i32) % 100).collect(),
    });
    WireObservation {
        seq,
        device: device.into(),
        code,
        value,
        unit,
        ucum: ucum.into(),
        gateway_time: 1_796_000_000_000 + seq as i64 * 250,
        time_quality: "synced".into(),
        device_time: device
            .starts_with("serial:")
            .then(|| "2026-12-06T08:00:00".to_owned()),
        status: if seq % 50 == 0 {
            vec!["low-perfusion".into()]
        } else {
            vec![]
        },
        waveform,
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    verifier: Verifier,
    gateway_cert: std::path::PathBuf,
    acker_cert: std::path::PathBuf,
    acker_key: std::path::PathBuf,
    messages: Vec<Vec<u8>>,
    observations: usize,
}

const TOPIC: &str = "wardgate/v1/site1/ward3/gw-bench/batch";

fn setup(total: usize, per_batch: usize, wave_every: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = wardgate_sim::pki::Ca::new("bench CA").unwrap();
    for (name, cn) in [("gateway", "gw-bench"), ("receiver", "bench-rx")] {
        let (c, k) = ca.leaf(cn, &["127.0.0.1"], false).unwrap();
        wardgate_sim::pki::write_cert(&d.join(format!("{name}.pem")), &c).unwrap();
        wardgate_sim::pki::write_key(&d.join(format!("{name}.key")), &k).unwrap();
    }
    let signer = Signer::from_files(&d.join("gateway.pem"), &d.join("gateway.key")).unwrap();
    let gw = d.join("gateway.pem");
    let verifier = Verifier::from_files([gw.as_path()], [], []).unwrap();
    let mut messages = Vec::new();
    let mut seq = 1u64;
    let mut n = 0;
    while n < total {
        let rows = per_batch.min(total - n);
        let observations: Vec<_> = (0..rows)
            .map(|i| observation(seq + i as u64, wave_every))
            .collect();
        seq += rows as u64;
        let payload = BatchPayload {
            v: 1,
            gateway: "gw-bench".into(),
            site: "site1".into(),
            ward: "ward3".into(),
            batch: messages.len() as u64 + 1,
            observations,
            events: vec![WireEvent {
                seq,
                device: "serial:bed12-spo2".into(),
                kind: "connected".into(),
                detail: String::new(),
                gateway_time: 1_796_000_000_000,
            }],
            locations: Default::default(),
        };
        seq += 1;
        // Every device has a configured location (as the demo's do).
        let mut payload = payload;
        for o in &payload.observations {
            if !payload.locations.contains_key(&o.device) {
                let bed = payload.locations.len() + 1;
                payload
                    .locations
                    .insert(o.device.clone(), format!("ward-3/bed-{bed}"));
            }
        }
        messages.push(signer.sign(payload.to_cbor()));
        n += rows;
    }
    Setup {
        verifier,
        gateway_cert: gw,
        acker_cert: d.join("receiver.pem"),
        acker_key: d.join("receiver.key"),
        messages,
        observations: n,
        _dir: dir,
    }
}

/// A receiver's worker writing to `spec`, raw copies into `raw` when given.
fn processor(s: &Setup, spec: &str, raw: Option<std::path::PathBuf>) -> Processor {
    Processor {
        verifier: Verifier::from_files([s.gateway_cert.as_path()], [], []).unwrap(),
        decryptor: None,
        output: Output::open(spec).unwrap(),
        raw: raw.map(|r| RawWriter::new(&r)),
        acker: Acker {
            signer: Signer::from_files(&s.acker_cert, &s.acker_key).unwrap(),
            legacy_plain: false,
        },
        require_encryption: false,
    }
}

fn report(phase: &str, obs: usize, cpu: Duration, wall: Duration) {
    println!(
        "{phase:>14}: {:6.2} µs CPU/observation, {:9.0} observations/s (wall {:.2} s, CPU {:.2} s)",
        cpu.as_secs_f64() * 1e6 / obs as f64,
        obs as f64 / wall.as_secs_f64(),
        wall.as_secs_f64(),
        cpu.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let total = env("BENCH_OBS", 400_000);
    let per_batch = env("BENCH_BATCH", 5_000).max(1);
    let wave_every = env("BENCH_WAVE_EVERY", 0);
    let runs = env("BENCH_RUNS", 3).max(1);
    let raw = env("BENCH_RAW", 0) == 1;
    let kind = std::env::var("BENCH_OUTPUT").unwrap_or_else(|_| "sqlite".into());
    let s = setup(total, per_batch, wave_every);
    let bytes: usize = s.messages.iter().map(Vec::len).sum();
    println!(
        "receive bench: {} observations in {} signed batches of ≤ {per_batch} ({:.1} MB, {:.0} bytes/observation), output {kind}, raw copies {}, waveform every {}",
        s.observations,
        s.messages.len(),
        bytes as f64 / 1e6,
        bytes as f64 / s.observations as f64,
        if raw { "on" } else { "off" },
        if wave_every == 0 { "never".to_string() } else { format!("{wave_every} rows") }
    );
    let mut best_verify: Option<(Duration, Duration)> = None;
    let mut best_write: Option<(Duration, Duration)> = None;
    let mut best_process: Option<(Duration, Duration)> = None;
    for run in 0..runs {
        let (c0, t0) = (cpu(), Instant::now());
        for m in &s.messages {
            let b = check_message(&s.verifier, TOPIC, m).unwrap();
            std::hint::black_box(b);
        }
        let v = (cpu() - c0, t0.elapsed());
        if best_verify.is_none_or(|b| v.0 < b.0) {
            best_verify = Some(v);
        }
        let decoded: Vec<_> = s
            .messages
            .iter()
            .map(|m| check_message(&s.verifier, TOPIC, m).unwrap())
            .collect();
        let write_dir = tempfile::tempdir_in(s._dir.path()).unwrap();
        let spec = format!("{kind}:{}", write_dir.path().join("w.out").display());
        let mut out = Output::open(&spec).unwrap();
        let (c0, t0) = (cpu(), Instant::now());
        for b in &decoded {
            std::hint::black_box(out.write(b).unwrap());
        }
        let w = (cpu() - c0, t0.elapsed());
        if best_write.is_none_or(|b| w.0 < b.0) {
            best_write = Some(w);
        }
        drop((out, decoded, write_dir));
        let out_dir = tempfile::tempdir_in(s._dir.path()).unwrap();
        let spec = format!(
            "{kind}:{}",
            out_dir.path().join(format!("up-{run}.out")).display()
        );
        let mut p = processor(&s, &spec, raw.then(|| out_dir.path().join("raw")));
        let (c0, t0) = (cpu(), Instant::now());
        let mut stored = 0u64;
        for m in &s.messages {
            match p.process(TOPIC, m).unwrap() {
                Outcome::Stored { written, acks, .. } => {
                    stored += written.per_device.values().sum::<u64>();
                    std::hint::black_box(acks);
                }
                Outcome::Rejected { reason, .. } => panic!("rejected: {reason}"),
            }
        }
        let r = (cpu() - c0, t0.elapsed());
        assert_eq!(
            stored as usize, s.observations,
            "every observation stored once"
        );
        if best_process.is_none_or(|b| r.0 < b.0) {
            best_process = Some(r);
        }
        check_stored(&kind, out_dir.path(), run, s.observations);
    }
    let receivers = env("BENCH_RECEIVERS", 1);
    if receivers > 1 {
        let shared = env("BENCH_SHARED", 0) == 1;
        let out_dir = tempfile::tempdir_in(s._dir.path()).unwrap();
        let mut processors: Vec<_> = (0..receivers)
            .map(|i| {
                let file = if shared {
                    "shared.out".to_string()
                } else {
                    format!("rx{i}.out")
                };
                processor(
                    &s,
                    &format!("{kind}:{}", out_dir.path().join(file).display()),
                    None,
                )
            })
            .collect();
        let (c0, t0) = (cpu(), Instant::now());
        std::thread::scope(|scope| {
            for (i, p) in processors.iter_mut().enumerate() {
                let messages = &s.messages;
                scope.spawn(move || {
                    for m in messages.iter().skip(i).step_by(receivers) {
                        assert!(matches!(
                            p.process(TOPIC, m).unwrap(),
                            Outcome::Stored { .. }
                        ));
                    }
                });
            }
        });
        let r = (cpu() - c0, t0.elapsed());
        drop(processors);
        report(&format!("{receivers} receivers"), s.observations, r.0, r.1);
        println!(
            "                ({})",
            if shared {
                "one shared SQLite file"
            } else {
                "each its own output file"
            }
        );
    }
    let (c, w) = best_verify.unwrap();
    report("verify+decode", s.observations, c, w);
    let (c, w) = best_write.unwrap();
    report("write", s.observations, c, w);
    let (c, w) = best_process.unwrap();
    report("process", s.observations, c, w);
}

/// The output holds every observation (a bench that stores nothing would look fast).
fn check_stored(kind: &str, dir: &Path, run: usize, want: usize) {
    let path = dir.join(format!("up-{run}.out"));
    let n = if kind == "sqlite" {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.query_row("SELECT count(*) FROM observations", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap() as usize
    } else {
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"type\":\"observation\""))
            .count()
    };
    assert_eq!(n, want, "rows in {}", path.display());
}
