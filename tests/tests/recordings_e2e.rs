//! The whole chain with real parts: recordings of real devices replayed on pseudo-terminals →
//! `wardgate run` (a child process) → real mosquitto with mutual TLS → `wardgate receive` (a
//! child process) → SQLite. What a user checks: every recorded observation arrived, once, with
//! the value the device sent, and every raw message verifies — with `wardgate verify` and with
//! an independent Python implementation.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use wardgate_e2e::env::{ReceiverOptions, TestEnv};
use wardgate_e2e::pty::{Device, Replayer};
use wardgate_e2e::{batches_by_number, python, real_recording};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");
const TARGET_TMP: &str = env!("CARGO_TARGET_TMPDIR");
/// Replay speed-up: the CMS50E capture (1.7 s) and the Ivy capture (16 s) in under a second.
const SPEED: f64 = 20.0;

const SPO2: u32 = 150456;
const PULSE_OXIM: u32 = 149530;
const PLETH: u32 = 150452;
const HEART_RATE: u32 = 147842;
const NIBP_SYS: u32 = 150021;
const NIBP_DIA: u32 = 150022;
const NIBP_MEAN: u32 = 150023;
const RESP_RATE: u32 = 151562;

/// `(pleth, pulse, spo2)` per frame from `cms50e_live_capture.expected.csv`.
fn cms50e_expected_frames() -> Vec<(u32, u32, u32)> {
    let text = std::fs::read_to_string(real_recording("cms50e_live_capture.expected.csv"))
        .expect("expected.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("column {name}"))
    };
    let (pl, pu, sp) = (col("pleth"), col("pulse_bpm"), col("spo2_pct"));
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[pl].parse().unwrap(),
                f[pu].parse().unwrap(),
                f[sp].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn recordings_arrive_complete_with_their_values_through_mosquitto_and_verify_independently() {
    let env = TestEnv::new("recordings", BIN).unwrap();
    let cms = Device::cms50e("bed1-spo2");
    let ivy = Device::ivy450c("bed2-monitor");
    let mut opts = env.gateway_options();
    opts.devices = vec![cms.clone(), ivy.clone()];
    let gw_cfg = env.write_gateway_config(&opts).unwrap();

    let mut receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut replays: Vec<Replayer> = Replayer::for_devices(&env.dev_dir(), &[&cms, &ivy]).unwrap();
    let mut gateway = env.spawn_gateway(&gw_cfg).unwrap();
    for (r, d) in replays.iter_mut().zip([&cms, &ivy]) {
        r.play(&d.recording, d.pace, SPEED);
    }
    for r in &mut replays {
        r.wait_done(Duration::from_secs(30)).unwrap();
    }
    let want = [(cms.id(), cms.expected()), (ivy.id(), ivy.expected())];
    assert_eq!(
        (want[0].1, want[1].1),
        (6, 297),
        "observations in the recordings (the CMS50E's 102 frames = 1.7 s: per second SpO2, pulse and one pleth array; 27 ANSAR-B messages × 11)"
    );
    env.wait_delivered(&want, Duration::from_secs(30)).unwrap();
    let store = env.wait_store_drained(Duration::from_secs(15)).unwrap();

    // A clean stop: SIGTERM, exit 0, and nothing left behind in the store.
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "wardgate run exited with {st} on SIGTERM");
    assert!(
        gateway.stderr().contains("uplink connected to 127.0.0.1"),
        "gateway log: {}",
        gateway.stderr()
    );

    let up = env.upstream();
    // Complete and never twice.
    let counts = up.count_by_device().unwrap();
    assert_eq!(
        counts,
        want.iter().cloned().collect::<BTreeMap<_, _>>(),
        "observations delivered per device"
    );
    let (rows, distinct) = up.row_and_distinct_counts().unwrap();
    assert_eq!(rows, distinct);
    // Every seq the gateway ever assigned (observations and events) arrived, no gaps.
    let seqs = up.all_seqs().unwrap();
    assert_eq!(
        seqs,
        env.accepted_seqs(store.max_seq),
        "delivered seqs vs seqs the gateway accepted"
    );
    let events = up.events().unwrap();
    for d in [&cms, &ivy] {
        assert!(
            events
                .iter()
                .any(|e| e.device == d.id() && e.kind == "connected"),
            "{} connected event upstream: {events:?}",
            d.id()
        );
    }

    // CMS50E: the recorded values, frame by frame.
    let frames = cms50e_expected_frames();
    assert_eq!(frames.len(), 102);
    let obs = up.observations().unwrap();
    let cms_obs: Vec<_> = obs.iter().filter(|o| o.device == cms.id()).collect();
    for o in &cms_obs {
        let (unit, ucum) = match o.code {
            SPO2 => (262688, "%"),
            PULSE_OXIM => (264864, "/min"),
            PLETH => (262656, "1"),
            c => panic!("unexpected code {c} from the CMS50E"),
        };
        assert_eq!(
            (o.unit, o.ucum.as_deref()),
            (unit, Some(ucum)),
            "unit of {o:?}"
        );
    }
    // The numerics once a second: the values of each second's last frame (59, 101).
    let spo2 = up.values(&cms.id(), SPO2).unwrap();
    let pulse = up.values(&cms.id(), PULSE_OXIM).unwrap();
    assert_eq!(
        spo2,
        [frames[59].2 as f64, frames[101].2 as f64],
        "SpO2 of each second (99 %)"
    );
    assert_eq!(
        pulse,
        [frames[59].1 as f64, frames[101].1 as f64],
        "pulse of each second (60 /min)"
    );
    // The pleth as waveforms, sample-exact: one array a second (60 samples, then the 42 of the
    // unfinished second, sent when the line went quiet), 60 Hz. The CSV's `pleth` column is the
    // raw wire byte (sync bit 7 set, 128..255); the samples are without the sync bit
    // (documented in adapters' cms50.rs).
    let arrays = up.waveforms(&cms.id(), PLETH).unwrap();
    assert_eq!(
        arrays
            .iter()
            .map(|(_, period, s)| (*period, s.len()))
            .collect::<Vec<_>>(),
        [(16_667, 60), (16_667, 42)],
        "pleth arrays (period µs, samples)"
    );
    assert_eq!(
        up.samples(&cms.id(), PLETH).unwrap(),
        frames
            .iter()
            .map(|f| (f.0 & 0x7F) as i32)
            .collect::<Vec<_>>(),
        "pleth samples in recording order (CSV pleth column minus the sync bit), none lost or repeated"
    );
    assert!(
        arrays[0].0 < arrays[1].0,
        "stamped at their first samples, in order"
    );
    // `value` of an array is its first sample.
    assert_eq!(
        up.values(&cms.id(), PLETH).unwrap(),
        arrays.iter().map(|a| f64::from(a.2[0])).collect::<Vec<_>>()
    );

    // Ivy 450C: the monitor's fixed values (PROVENANCE.md), in all 27 messages.
    for (code, value, what) in [
        (HEART_RATE, 80.0, "HR"),
        (SPO2, 100.0, "SpO2"),
        (NIBP_SYS, 121.0, "NIBP sys"),
        (NIBP_DIA, 75.0, "NIBP dia"),
        (NIBP_MEAN, 92.0, "NIBP mean"),
        (RESP_RATE, 35.0, "RR"),
    ] {
        let v = up.values(&ivy.id(), code).unwrap();
        assert_eq!(v.len(), 27, "{what} ({code}) once per message");
        assert!(
            v.iter().all(|x| *x == value),
            "{what} ({code}) values {v:?}, expected all {value}"
        );
    }

    // The raw messages, as the receiver captured them from the broker: each verifies with
    // `wardgate verify`, each batch number carries one set of rows, all rows are there.
    let raw = env.raw_messages();
    let payloads = env.verify_raw_messages().unwrap();
    for p in &payloads {
        assert_eq!(
            (
                p["gateway"].as_str(),
                p["site"].as_str(),
                p["ward"].as_str()
            ),
            (Some("gw-e2e-01"), Some("st-e2e"), Some("ward-9"))
        );
    }
    let batches = batches_by_number(&payloads).unwrap();
    let verified_obs: usize = payloads
        .iter()
        .map(|p| p["observations"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        verified_obs as u64,
        want[0].1 + want[1].1,
        "observations in the verified raw messages (no re-sends in a healthy run)"
    );
    assert_eq!(
        batches.values().map(|b| b.seqs.len() as u64).sum::<u64>(),
        store.max_seq - env.seed().seq,
        "every seq on the wire"
    );

    let summary =
        python::verify(TARGET_TMP.as_ref(), &env.pki.gateway_cert, &[env.raw_dir()]).unwrap();
    assert_eq!(
        summary.output.code(),
        Some(0),
        "verify_cose.py: {:?}",
        summary.output
    );
    let t = &summary.totals;
    assert_eq!(t["failed"], 0);
    assert_eq!(t["verified"].as_u64(), Some(raw.len() as u64));
    assert_eq!(
        t["unique_observations"].as_u64(),
        Some(want[0].1 + want[1].1),
        "{t}"
    );
    assert_eq!(t["per_device"][cms.id()].as_u64(), Some(want[0].1), "{t}");
    assert_eq!(t["per_device"][ivy.id()].as_u64(), Some(want[1].1), "{t}");

    let st = receiver.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "wardgate receive exited with {st} on SIGTERM");
}

/// The receiver restarted mid-stream (an upgrade upstream): nothing is lost — its durable output
/// and the gateway's re-sends cover the gap — and the raw messages it keeps for independent
/// verification still cover every observation, from before and after the restart.
#[test]
fn receiver_restart_mid_stream_loses_nothing() {
    let env = TestEnv::new("receiver-restart", BIN).unwrap();
    let cms = Device::cms50e("bed1-spo2");
    let mut opts = env.gateway_options();
    opts.devices = vec![cms.clone()];
    let gw_cfg = env.write_gateway_config(&opts).unwrap();
    let mut receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut replay = Replayer::new("cms", cms.open_port(&env.dev_dir()).unwrap());
    let mut gateway = env.spawn_gateway(&gw_cfg).unwrap();
    let half = 51 * 9;
    replay.play(&cms.recording[..half], cms.pace, SPEED);
    replay.wait_done(Duration::from_secs(30)).unwrap();
    let first = cms.expected_in(&cms.recording[..half]);
    env.wait_delivered(&[(cms.id(), first)], Duration::from_secs(20))
        .unwrap();
    env.wait_store_drained(Duration::from_secs(10)).unwrap();
    assert!(receiver
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    let raw_before = env.raw_messages().len();

    replay.play(&cms.recording[half..], cms.pace, SPEED);
    replay.wait_done(Duration::from_secs(30)).unwrap();
    let mut receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let store = env
        .wait_settled(Duration::from_millis(500), Duration::from_secs(30))
        .unwrap();
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    assert!(receiver
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    // Each half ended a stretch (the line went quiet after it): its own arrays and numerics.
    let second = cms.expected_in(&cms.recording[half..]);
    assert_eq!(env.upstream().count(&cms.id()).unwrap(), first + second);
    assert_eq!(
        env.upstream().samples(&cms.id(), PLETH).unwrap(),
        cms.samples_in(&cms.recording),
        "every pleth sample once, in order, across the receiver's restart"
    );
    let payloads = env.verify_raw_messages().unwrap();
    let seqs: BTreeSet<u64> = batches_by_number(&payloads)
        .unwrap()
        .values()
        .flat_map(|b| b.seqs.clone())
        .collect();
    assert_eq!(
        seqs,
        env.accepted_seqs(store.max_seq),
        "raw messages cover every seq, before and after the restart"
    );
    assert!(
        env.raw_messages().len() > raw_before,
        "the restarted receiver added raw messages"
    );
}

/// Plausibility (issue 11 item 4): the real Ivy 450C recording with the NIBP systolic of its last
/// message changed from `121` to `621` mmHg — what a monitor with a corrupted field would send
/// (same length, so the framing is untouched; the ANSAR-B decoder has no upper bound for a
/// pressure). The value is kept and arrives upstream with the status flag `implausible`, in the
/// receiver's database and in `wardgate verify`'s output; the recording's own values (NIBP
/// 121/75, HR 80) arrive unflagged.
#[test]
fn an_implausible_value_arrives_upstream_kept_and_flagged() {
    let env = TestEnv::new("implausible", BIN).unwrap();
    let mut ivy = Device::ivy450c("bed3-monitor");
    let field = b"NIBP=4;121;";
    let at = ivy
        .recording
        .windows(field.len())
        .rposition(|w| w == field)
        .expect("the recording's NIBP field");
    ivy.recording[at..at + field.len()].copy_from_slice(b"NIBP=4;621;");
    let mut opts = env.gateway_options();
    opts.devices = vec![ivy.clone()];
    let gw_cfg = env.write_gateway_config(&opts).unwrap();

    let mut receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut replays = Replayer::for_devices(&env.dev_dir(), &[&ivy]).unwrap();
    let mut gateway = env.spawn_gateway(&gw_cfg).unwrap();
    replays[0].play(&ivy.recording, ivy.pace, SPEED);
    replays[0].wait_done(Duration::from_secs(30)).unwrap();
    let want = [(ivy.id(), 297)];
    env.wait_delivered(&want, Duration::from_secs(30)).unwrap();
    env.wait_store_drained(Duration::from_secs(15)).unwrap();
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "wardgate run exited with {st} on SIGTERM");

    let obs = env.upstream().observations().unwrap();
    let flagged = |o: &&wardgate_e2e::db::UpObservation| {
        o.status
            .as_deref()
            .is_some_and(|s| s.split(',').any(|f| f == "implausible"))
    };
    let implausible: Vec<_> = obs.iter().filter(flagged).collect();
    assert_eq!(
        implausible
            .iter()
            .map(|o| (o.device.as_str(), o.code, o.value))
            .collect::<Vec<_>>(),
        vec![(ivy.id().as_str(), NIBP_SYS, Some(621.0))],
        "exactly the edited systolic is flagged, its value kept: {implausible:?}"
    );
    let sys = env.upstream().values(&ivy.id(), NIBP_SYS).unwrap();
    assert_eq!(sys.len(), 27);
    assert_eq!(sys.iter().filter(|v| **v == 121.0).count(), 26);
    assert!(obs
        .iter()
        .filter(|o| o.code == HEART_RATE)
        .all(|o| o.value == Some(80.0) && !flagged(&o)));

    // `wardgate verify` prints the flag with the row.
    let payloads = env.verify_raw_messages().unwrap();
    let on_wire: Vec<&serde_json::Value> = payloads
        .iter()
        .flat_map(|p| p["observations"].as_array().unwrap())
        .filter(|o| {
            o["status"]
                .as_array()
                .is_some_and(|s| s.iter().any(|f| f == "implausible"))
        })
        .collect();
    assert_eq!(on_wire.len(), 1, "{on_wire:?}");
    assert_eq!(on_wire[0]["code"], NIBP_SYS);
    assert_eq!(on_wire[0]["value"], 621.0);

    let st = receiver.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "wardgate receive exited with {st} on SIGTERM");
}
