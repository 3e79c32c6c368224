//! The upstream receiver under load and abuse (issue 9, items 5 and 6), against real mosquitto
//! with mutual TLS. Signed batches come from test publishers that sign exactly as a gateway
//! does (`wardgate::signing::Signer` with a gateway certificate and key), so thousands can be
//! queued quickly and several gateways can publish at once.
//!
//! - a backlog of thousands of messages from three gateways, queued while the receiver was
//!   stopped: the restarted receiver drains it, stores and acks every batch, stops promptly on
//!   SIGTERM mid-drain, and the next start finishes the rest;
//! - a 17 MB message on a batch topic, live and retained: read, PUBACKed, dropped, counted and
//!   logged once, while normal batches keep flowing, also after a restart (the retained one is
//!   delivered again and dropped again, no reconnect loop);
//! - junk and messages signed by an untrusted key: rejected, counted, no raw file;
//! - a NaN value from a trusted key: stored as absent with status `invalid-value=nan`, counted,
//!   the batch acked;
//! - waveforms (issue 11): the real MIT-BIH 208 ECG excerpt (5 min at 360 Hz) as 300 one-second
//!   waveform observations arrives in the receiver's output sample for sample, `wardgate verify`
//!   and the independent Python verifier print and accept them, and a batch with an array over
//!   the bound is refused whole (never acked, nothing of it stored).

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wardgate::batch::{Ack, BatchPayload, WireObservation};
use wardgate_e2e::env::{ReceiverOptions, TestEnv, SITE, WARD};
use wardgate_e2e::{wait_for, Result};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");
const TARGET_TMP: &str = env!("CARGO_TARGET_TMPDIR");

/// A gateway identity for a test publisher: id, certificate, key.
#[derive(Clone)]
struct Gw {
    id: String,
    cert: PathBuf,
    key: PathBuf,
}

fn gateways(env: &TestEnv, n: usize) -> Vec<Gw> {
    (0..n)
        .map(|i| {
            let id = format!("gw-load-{i:02}");
            let (cert, key) = env.pki.leaf(&id, &id, &[], false).unwrap();
            Gw { id, cert, key }
        })
        .collect()
}

fn batch_topic(gw: &str) -> String {
    format!("wardgate/v1/{SITE}/{WARD}/{gw}/batch")
}

/// A batch of `rows` observations with seqs `batch * 100 + 1 …`.
fn payload(gw: &str, batch: u64, rows: u64, value: f64) -> BatchPayload {
    BatchPayload {
        v: 1,
        gateway: gw.into(),
        site: SITE.into(),
        ward: WARD.into(),
        batch,
        observations: (1..=rows)
            .map(|i| WireObservation {
                seq: batch * 100 + i,
                device: format!("serial:{gw}"),
                code: 150456,
                value,
                unit: 262688,
                ucum: "%".into(),
                gateway_time: 1_700_000_000_000 + i as i64,
                time_quality: "synced".into(),
                device_time: None,
                status: vec![],
                waveform: None,
            })
            .collect(),
        events: vec![],
        locations: Default::default(),
    }
}

fn signed(gw: &Gw, p: &BatchPayload) -> Vec<u8> {
    wardgate::signing::Signer::from_files(&gw.cert, &gw.key)
        .unwrap()
        .sign(p.to_cbor())
}

/// Publishes `(topic, payload, retain)` messages at QoS 1 with a client using `gw`'s TLS
/// certificate, and returns once the broker PUBACKed every one.
fn publish_all(env: &TestEnv, gw: &Gw, msgs: Vec<(String, Vec<u8>, bool)>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (ca, port) = (env.pki.ca_pem.clone(), env.broker.port);
    rt.block_on(async {
        let tls = wardgate::tls::client_config(&ca, &gw.cert, &gw.key)?;
        let mut o = MqttOptions::new(format!("pub-{}", gw.id), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(true)
            .set_max_packet_size(64 << 20, 64 << 20)
            .set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        let (client, mut el) = AsyncClient::new(o, 64);
        let n = msgs.len();
        let feeder = tokio::spawn(async move {
            for (t, p, r) in msgs {
                client.publish(t, QoS::AtLeastOnce, r, p).await?;
            }
            anyhow::Ok(client)
        });
        let mut acked = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while acked < n {
            match tokio::time::timeout_at(deadline, el.poll()).await {
                Err(_) => anyhow::bail!("publisher {}: {acked}/{n} PUBACKed in 120 s", gw.id),
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => anyhow::bail!("publisher {}: {e}", gw.id),
            }
        }
        let client = feeder.await??;
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), el.poll()).await;
        Ok(())
    })
}

/// Collects every ack published on `wardgate/v1/+/+/+/ack` as `(gateway, batch)` until dropped;
/// each must be a signed v2 ack that verifies against the receiver's certificate.
struct AckWatcher {
    acks: Arc<Mutex<BTreeSet<(String, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl AckWatcher {
    fn start(env: &TestEnv) -> AckWatcher {
        let acks = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let subscribed = Arc::new(AtomicBool::new(false));
        let (a, s, sub) = (acks.clone(), stop.clone(), subscribed.clone());
        let (ca, cert, key, port) = (
            env.pki.ca_pem.clone(),
            env.pki.receiver_cert.clone(),
            env.pki.receiver_key.clone(),
            env.broker.port,
        );
        let thread = std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let tls = wardgate::tls::client_config(&ca, &cert, &key)?;
                let mut receiver = wardgate::signing::Verifier::default();
                receiver.add_file(&cert)?;
                let mut o = MqttOptions::new("e2e-ack-watcher", "127.0.0.1", port);
                o.set_keep_alive(Duration::from_secs(5))
                    .set_clean_session(true)
                    .set_transport(Transport::tls_with_config(
                        rumqttc::TlsConfiguration::Rustls(tls),
                    ));
                let (client, mut el) = AsyncClient::new(o, 64);
                client
                    .subscribe("wardgate/v1/+/+/+/ack", QoS::AtLeastOnce)
                    .await?;
                while !s.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(200), el.poll()).await {
                        Err(_) => {}
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            sub.store(true, Ordering::Relaxed)
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            let signed = receiver.verify(&p.payload)?;
                            let ack = Ack::from_cbor(&signed).map_err(anyhow::Error::msg)?;
                            anyhow::ensure!(ack.v == 2, "ack version {}", ack.v);
                            let mut set = a.lock().unwrap();
                            for b in ack.batches {
                                set.insert((ack.gateway.clone(), b));
                            }
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => anyhow::bail!("ack watcher: {e}"),
                    }
                }
                Ok(())
            })
        });
        wait_for(
            "the ack watcher to subscribe",
            Duration::from_secs(15),
            || Ok(subscribed.load(Ordering::Relaxed)),
        )
        .unwrap();
        AckWatcher {
            acks,
            stop,
            thread: Some(thread),
        }
    }

    fn acked(&self) -> BTreeSet<(String, u64)> {
        self.acks.lock().unwrap().clone()
    }

    fn finish(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for AckWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn stored_batches(db: &Path) -> Result<BTreeSet<(String, u64)>> {
    if !db.exists() {
        return Ok(BTreeSet::new());
    }
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut st = c.prepare("SELECT gateway, batch FROM batches")?;
    let rows = st.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

/// The last `receiver totals:` line of the receiver's log.
fn last_totals(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| l.contains("receiver totals:"))
        .unwrap_or_default()
        .to_owned()
}

fn counter(totals: &str, name: &str) -> u64 {
    totals
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in `{totals}`"))
}

#[test]
fn a_backlog_of_thousands_from_three_gateways_drains_and_sigterm_stops_it_promptly() {
    const GATEWAYS: usize = 3;
    const PER_GATEWAY: u64 = 1000;
    let env = TestEnv::new("rx-backlog", BIN).unwrap();
    let gws = gateways(&env, GATEWAYS);
    let certs: Vec<PathBuf> = gws.iter().map(|g| g.cert.clone()).collect();
    let opts = ReceiverOptions::default();
    // The receiver's persistent session exists, then it stops: the broker queues for it.
    let mut receiver = env.start_receiver_with_certs(&opts, &certs).unwrap();
    assert!(receiver
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    let acks = AckWatcher::start(&env);

    // The outage: three gateways publish at once.
    let t = Instant::now();
    std::thread::scope(|s| {
        for gw in &gws {
            let env = &env;
            s.spawn(move || {
                let msgs = (1..=PER_GATEWAY)
                    .map(|b| {
                        (
                            batch_topic(&gw.id),
                            signed(gw, &payload(&gw.id, b, 5, 97.0)),
                            false,
                        )
                    })
                    .collect();
                publish_all(env, gw, msgs).unwrap();
            });
        }
    });
    eprintln!(
        "queued {} batches in {:?}",
        GATEWAYS as u64 * PER_GATEWAY,
        t.elapsed()
    );
    let want: BTreeSet<(String, u64)> = gws
        .iter()
        .flat_map(|g| (1..=PER_GATEWAY).map(move |b| (g.id.clone(), b)))
        .collect();
    let db = env.rx_dir.join("upstream.db");

    // Restarted, it drains; SIGTERM mid-drain stops it promptly and cleanly.
    let t = Instant::now();
    let mut receiver = env.start_receiver_with_certs(&opts, &certs).unwrap();
    wait_for(
        "the receiver to store some of the backlog",
        Duration::from_secs(60),
        || Ok(stored_batches(&db)?.len() >= 200),
    )
    .unwrap();
    let stop = Instant::now();
    let st = receiver.terminate(Duration::from_secs(10)).unwrap();
    let stop_took = stop.elapsed();
    assert!(st.success(), "receiver exit {st}:\n{}", receiver.stderr());
    assert!(
        stop_took < Duration::from_secs(8),
        "SIGTERM mid-drain took {stop_took:?}"
    );
    let part = stored_batches(&db).unwrap().len();
    eprintln!("stored {part} batches before SIGTERM; it stopped in {stop_took:?}");

    // The next start finishes the rest: every batch stored and acknowledged.
    let mut receiver = env.start_receiver_with_certs(&opts, &certs).unwrap();
    wait_for(
        "every batch stored upstream",
        Duration::from_secs(180),
        || Ok(stored_batches(&db)? == want),
    )
    .unwrap_or_else(|e| panic!("{e}: stored {}", stored_batches(&db).unwrap().len()));
    wait_for("every batch acknowledged", Duration::from_secs(60), || {
        Ok(acks.acked() == want)
    })
    .unwrap_or_else(|e| panic!("{e}: acked {}", acks.acked().len()));
    eprintln!(
        "drained and acked {} batches in {:?}",
        want.len(),
        t.elapsed()
    );
    let (rows, distinct) = env.upstream().row_and_distinct_counts().unwrap();
    assert_eq!(
        (rows, distinct),
        (want.len() as u64 * 5, want.len() as u64 * 5)
    );

    let stop = Instant::now();
    assert!(receiver
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    assert!(
        stop.elapsed() < Duration::from_secs(8),
        "stop took {:?}",
        stop.elapsed()
    );
    let totals = last_totals(&receiver.stderr());
    assert_eq!(counter(&totals, "rejected"), 0, "{totals}");
    assert_eq!(counter(&totals, "queued"), 0, "{totals}");
    let log = receiver.stderr();
    assert!(
        !log.contains("connection:"),
        "no reconnects while draining:\n{log}"
    );
    acks.finish().unwrap();
}

#[test]
fn oversize_junk_and_nan_are_handled_while_batches_keep_flowing() {
    const OVERSIZE: usize = 17_000_000;
    let env = TestEnv::new("rx-abuse", BIN).unwrap();
    let gws = gateways(&env, 2);
    let (good, stranger) = (&gws[0], &gws[1]);
    // No shared subscription, so retained messages are delivered to the receiver.
    let opts = ReceiverOptions {
        share_group: None,
        ..ReceiverOptions::default()
    };
    // A retained 17 MB message waits on a batch topic before the receiver subscribes.
    publish_all(
        &env,
        stranger,
        vec![(batch_topic(&good.id), vec![0x5a; OVERSIZE], true)],
    )
    .unwrap();
    let acks = AckWatcher::start(&env);
    let mut receiver = env
        .start_receiver_with_certs(&opts, std::slice::from_ref(&good.cert))
        .unwrap();

    let mut msgs = Vec::new();
    let mut next = 1u64;
    let good_batch = |msgs: &mut Vec<(String, Vec<u8>, bool)>, next: &mut u64| {
        msgs.push((
            batch_topic(&good.id),
            signed(good, &payload(&good.id, *next, 3, 95.0)),
            false,
        ));
        *next += 1;
    };
    good_batch(&mut msgs, &mut next);
    // A live oversize message between normal batches.
    msgs.push((batch_topic(&good.id), vec![0xa5; OVERSIZE], false));
    good_batch(&mut msgs, &mut next);
    // Junk and a batch signed by a key the receiver does not trust: no raw file, no ack.
    msgs.push((batch_topic(&good.id), b"junk".to_vec(), false));
    msgs.push((
        batch_topic("gw-nobody"),
        vec![0xd2, 0x84, 0x40, 0xa0],
        false,
    ));
    msgs.push((
        batch_topic(&stranger.id),
        signed(stranger, &payload(&stranger.id, 1, 3, 95.0)),
        false,
    ));
    // A NaN from the trusted gateway: stored as absent, counted, acked.
    let nan_batch = 1000;
    let mut p = payload(&good.id, nan_batch, 3, 96.0);
    p.observations[1].value = f64::NAN;
    msgs.push((batch_topic(&good.id), signed(good, &p), false));
    for _ in 0..20 {
        good_batch(&mut msgs, &mut next);
    }
    publish_all(&env, good, msgs).unwrap();
    let mut want: BTreeSet<(String, u64)> = (1..next).map(|b| (good.id.clone(), b)).collect();
    want.insert((good.id.clone(), nan_batch));
    wait_for(
        "every good batch acknowledged",
        Duration::from_secs(60),
        || Ok(acks.acked() == want),
    )
    .unwrap_or_else(|e| panic!("{e}: acked {:?}", acks.acked()));

    let up = env.upstream();
    let nan_rows: Vec<_> = up
        .observations()
        .unwrap()
        .into_iter()
        .filter(|o| o.batch == nan_batch)
        .collect();
    assert_eq!(nan_rows.len(), 3, "every row of the NaN batch stored");
    assert_eq!(nan_rows[1].value, None);
    assert_eq!(nan_rows[1].status.as_deref(), Some("invalid-value=nan"));
    assert_eq!(nan_rows[0].value, Some(96.0));
    // Raw files only for verified messages.
    let raw = env.raw_messages();
    assert_eq!(raw.len(), want.len(), "{raw:?}");
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["verify".as_ref(), "--cert".as_ref(), good.cert.as_os_str()];
    args.extend(raw.iter().map(|p| p.as_os_str()));
    let out = env.cli(&args, b"", Duration::from_secs(60)).unwrap();
    assert_eq!(out.code(), Some(0), "wardgate verify: {}", out.stderr);
    assert_eq!(out.stdout.lines().count(), raw.len());

    let st = receiver.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success());
    let log = receiver.stderr();
    let totals = last_totals(&log);
    assert_eq!(counter(&totals, "oversize"), 2, "{totals}");
    assert_eq!(counter(&totals, "rejected"), 3, "{totals}");
    assert_eq!(counter(&totals, "invalid_values"), 1, "{totals}");
    assert_eq!(counter(&totals, "verified"), want.len() as u64, "{totals}");
    assert_eq!(
        wardgate_e2e::count_lines(&log, "byte message on"),
        1,
        "oversize logged once per sender:\n{log}"
    );
    assert!(!log.contains("connection:"), "no reconnect loop:\n{log}");

    // Restarted: the retained one comes again and is dropped again; batches still flow.
    let mut receiver = env
        .start_receiver_with_certs(&opts, std::slice::from_ref(&good.cert))
        .unwrap();
    let mut msgs = Vec::new();
    for _ in 0..5 {
        good_batch(&mut msgs, &mut next);
    }
    publish_all(&env, good, msgs).unwrap();
    let want: BTreeSet<(String, u64)> = want
        .into_iter()
        .chain((1..next).map(|b| (good.id.clone(), b)))
        .collect();
    wait_for(
        "the batches after the restart acknowledged",
        Duration::from_secs(60),
        || Ok(acks.acked() == want),
    )
    .unwrap();
    assert!(receiver
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    let totals = last_totals(&receiver.stderr());
    // The counters are per run (the log file holds both runs): the retained one again.
    assert_eq!(counter(&totals, "oversize"), 1, "{totals}");
    assert_eq!(counter(&totals, "verified"), 5, "{totals}");
    let log = receiver.stderr();
    assert!(!log.contains("connection:"), "no reconnect loop:\n{log}");
    acks.finish().unwrap();
}

/// The MIT-BIH 208 excerpt (`data/real/physio/`, PROVENANCE.md): 108,000 ADC samples of lead
/// MLII at 360 Hz, `mV = (adc − 1024) / 200`.
fn mitdb208() -> Vec<i32> {
    let path = wardgate_e2e::workspace_root()
        .join("data/real/physio/mitdb208_excerpt_360hz_adc_u16le.bin");
    let bytes = std::fs::read(&path).unwrap();
    let adc: Vec<i32> = bytes
        .chunks_exact(2)
        .map(|b| i32::from(u16::from_le_bytes([b[0], b[1]])))
        .collect();
    assert_eq!(adc.len(), 108_000);
    assert_eq!(
        &adc[..5],
        &[975, 981, 987, 989, 990],
        "PROVENANCE's self-check values"
    );
    adc
}

/// One-second waveform observations of `adc` (360 samples each) from seq `first_seq`.
fn ecg_rows(gw: &str, first_seq: u64, adc: &[i32]) -> Vec<WireObservation> {
    adc.chunks(360)
        .enumerate()
        .map(|(i, chunk)| {
            let w = wardgate_adapters::observation::Waveform {
                period_us: 2778,
                scale: 1.0 / 200.0,
                offset: -1024.0 / 200.0,
                samples: chunk.to_vec(),
            };
            WireObservation {
                seq: first_seq + i as u64,
                device: format!("serial:{gw}-ecg"),
                // MDC_ECG_ELEC_POTL_II, MDC_DIM_MILLI_VOLT: test data, not a decoder's claim.
                code: 131_330,
                value: w.physical(chunk[0]),
                unit: 266_418,
                ucum: "mV".into(),
                gateway_time: 1_700_000_000_000 + i as i64 * 1000,
                time_quality: "synced".into(),
                device_time: None,
                status: vec![],
                waveform: Some(w),
            }
        })
        .collect()
}

#[test]
fn the_mitdb_208_ecg_arrives_sample_for_sample_and_an_oversized_array_is_refused() {
    let env = TestEnv::new("rx-waveform", BIN).unwrap();
    let gw = gateways(&env, 1).remove(0);
    let acks = AckWatcher::start(&env);
    let mut receiver = env
        .start_receiver_with_certs(&ReceiverOptions::default(), std::slice::from_ref(&gw.cert))
        .unwrap();
    let adc = mitdb208();
    let rows = ecg_rows(&gw.id, 1, &adc);
    assert_eq!(rows.len(), 300);
    // 30 batches of 10 seconds each, then one with an array of 4,097 samples.
    let mut msgs = Vec::new();
    for (b, chunk) in rows.chunks(10).enumerate() {
        let mut p = payload(&gw.id, b as u64 + 1, 0, 0.0);
        p.observations = chunk.to_vec();
        msgs.push((batch_topic(&gw.id), signed(&gw, &p), false));
    }
    let too_big = 99;
    let mut p = payload(&gw.id, too_big, 0, 0.0);
    p.observations = ecg_rows(&gw.id, 10_000, &adc[..360]);
    p.observations[0].waveform.as_mut().unwrap().samples = adc[..4097].to_vec();
    msgs.push((batch_topic(&gw.id), signed(&gw, &p), false));
    publish_all(&env, &gw, msgs).unwrap();
    let want: BTreeSet<(String, u64)> = (1..=30).map(|b| (gw.id.clone(), b)).collect();
    wait_for(
        "the 30 ECG batches acknowledged",
        Duration::from_secs(60),
        || Ok(acks.acked() == want),
    )
    .unwrap_or_else(|e| panic!("{e}: acked {:?}", acks.acked()));

    // Upstream, every sample of the 5 minutes, in order, with the array's scale and period.
    let c = rusqlite::Connection::open_with_flags(
        &env.upstream().path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let stored: Vec<(u64, f64, String)> = c
        .prepare("SELECT seq, value, waveform FROM observations ORDER BY seq")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
        })
        .unwrap()
        .collect::<std::result::Result<_, _>>()
        .unwrap();
    assert_eq!(
        stored.len(),
        300,
        "one row per second, nothing of the oversized batch"
    );
    let mut upstream_samples = Vec::new();
    for (i, (seq, value, w)) in stored.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        let w: serde_json::Value = serde_json::from_str(w).unwrap();
        assert_eq!(w["period_us"], 2778);
        assert_eq!(w["scale"], 0.005);
        assert_eq!(w["offset"], -5.12);
        let samples: Vec<i32> = serde_json::from_value(w["samples"].clone()).unwrap();
        // `value` is sample 0 in mV: offset + scale × sample = (adc − 1024) / 200.
        assert!((*value - (f64::from(samples[0]) - 1024.0) / 200.0).abs() < 1e-9);
        upstream_samples.extend(samples);
    }
    assert_eq!(upstream_samples.len(), adc.len());
    for (i, (up, sent)) in upstream_samples.iter().zip(&adc).enumerate() {
        assert_eq!(up, sent, "sample {i}");
    }
    assert!(
        (stored[0].1 - -0.245).abs() < 1e-12,
        "PROVENANCE: first sample −0.245 mV"
    );

    // `wardgate verify` prints the arrays; the Python verifier accepts them.
    let raw = env.raw_messages();
    assert_eq!(raw.len(), 30, "raw copies only of what verified: {raw:?}");
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["verify".as_ref(), "--cert".as_ref(), gw.cert.as_os_str()];
    args.extend(raw.iter().map(|p| p.as_os_str()));
    let out = env.cli(&args, b"", Duration::from_secs(60)).unwrap();
    assert_eq!(out.code(), Some(0), "wardgate verify: {}", out.stderr);
    let mut printed = 0usize;
    for line in out.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for o in v["observations"].as_array().unwrap() {
            printed += o["waveform"]["samples"].as_array().unwrap().len();
        }
    }
    assert_eq!(printed, adc.len(), "verify prints every sample");
    let py = wardgate_e2e::python::verify(TARGET_TMP.as_ref(), &gw.cert, &raw).unwrap();
    assert_eq!(py.output.code(), Some(0), "verify_cose.py: {:?}", py.output);
    assert_eq!(py.totals["unique_observations"], 300, "{}", py.totals);

    let st = receiver.terminate(Duration::from_secs(10)).unwrap();
    let log = receiver.stderr();
    assert!(st.success(), "receiver exit {st:?}:\n{log}");
    let totals = last_totals(&log);
    assert_eq!(counter(&totals, "rejected"), 1, "{totals}");
    assert!(
        log.contains("waveform of 4097 samples (at most 4096)"),
        "the refusal says why:\n{log}"
    );
    acks.finish().unwrap();
}
