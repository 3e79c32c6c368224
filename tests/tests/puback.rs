//! Acknowledgements delayed or withheld. What a user checks: the gateway re-sends what was not
//! acknowledged, a re-sent batch keeps its number and exactly its rows (never the same rows
//! under a new number), upstream stores each observation once, and nothing is lost.
//!
//! - `upstream` ack mode, receiver away and never connected before: the broker drops the first
//!   copies (no subscriber), so only the gateway's re-sends — with the in-flight window full —
//!   can deliver once a receiver appears.
//! - `upstream` ack mode, receiver away with a persistent session: mosquitto queues the first copy
//!   and every re-send of each batch; the receiver comes back, gets them all, stores each once.
//! - `broker` ack mode with the broker frozen (SIGSTOP) past `ack_timeout_s` and the keepalive:
//!   TCP still takes the bytes but no PUBACK, PINGRESP or CONNACK comes; then it thaws and
//!   answers everything late.
//!
//! Mosquitto cannot be told to withhold PUBACKs (`fault_proxy.rs` does it with a TLS-terminating proxy),
//! so freezing the broker is how PUBACKs are delayed here. `wardgate_sim::broker::EmbeddedBroker` has
//! no hook to delay or drop PUBACKs either, so there is no embedded-broker variant.

use std::time::Duration;
use wardgate_e2e::env::{ReceiverOptions, TestEnv};
use wardgate_e2e::pty::{Device, Replayer};
use wardgate_e2e::{batches_by_number, BatchCopies};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");

fn devices() -> (Device, Device) {
    (Device::cms50e("bed1-spo2"), Device::ivy450c("bed2-monitor"))
}

/// The checks both variants share; returns the batches seen on the wire.
fn assert_complete_and_unique(
    env: &TestEnv,
    cms: &Device,
    ivy: &Device,
) -> std::collections::BTreeMap<u64, BatchCopies> {
    let up = env.upstream();
    let counts = up.count_by_device().unwrap();
    assert_eq!(
        counts.get(&cms.id()).copied(),
        Some(cms.expected()),
        "{counts:?}"
    );
    assert_eq!(
        counts.get(&ivy.id()).copied(),
        Some(ivy.expected()),
        "{counts:?}"
    );
    let (rows, distinct) = up.row_and_distinct_counts().unwrap();
    assert_eq!(rows, distinct);
    // Every raw message verifies; every copy of a batch number carries the same rows; no row
    // travelled under two numbers.
    let payloads = env.verify_raw_messages().unwrap();
    let batches = batches_by_number(&payloads).unwrap_or_else(|e| panic!("{e}"));
    // The receiver recorded each batch number once and filed each row under the number it came in.
    assert_eq!(
        up.batches().unwrap(),
        batches.keys().copied().collect::<Vec<_>>(),
        "batch numbers upstream vs on the wire"
    );
    for o in up.observations().unwrap() {
        assert!(
            batches[&o.batch].seqs.contains(&o.seq),
            "seq {} filed under batch {} that did not carry it",
            o.seq,
            o.batch
        );
    }
    batches
}

/// Runs the recordings through a gateway in `upstream` ack mode (ack_timeout 2 s) while no
/// receiver is connected, until the first batch has been sent again twice; returns the gateway.
fn stream_while_receiver_away(
    env: &TestEnv,
    cms: &Device,
    ivy: &Device,
) -> wardgate_e2e::process::Proc {
    let mut opts = env.gateway_options();
    opts.ack = "upstream";
    opts.ack_timeout_s = 2;
    opts.devices = vec![cms.clone(), ivy.clone()];
    let gw_cfg = env.write_gateway_config(&opts).unwrap();
    let mut rs: Vec<Replayer> = Replayer::for_devices(&env.dev_dir(), &[cms, ivy]).unwrap();
    let mut gateway = env.spawn_gateway(&gw_cfg).unwrap();
    // At 10× the recordings last 1.6 s: with 50 ms batches that is more batches than the
    // in-flight window (16), so the window is full of unacknowledged batches.
    rs[0].play(&cms.recording, cms.pace, 10.0);
    rs[1].play(&ivy.recording, ivy.pace, 10.0);
    for r in &mut rs {
        r.wait_done(Duration::from_secs(30)).unwrap();
    }
    // Nobody acknowledges: the first batch goes out again every ack_timeout, and the store keeps
    // every row.
    let first = env.seed().batch;
    gateway
        .wait_stderr(
            &format!("batch {first} not acknowledged"),
            2,
            Duration::from_secs(15),
        )
        .unwrap();
    let store = env.store().unwrap();
    let accepted = store.max_seq - env.seed().seq;
    assert!(
        accepted >= cms.expected() + ivy.expected(),
        "everything accepted: {accepted} rows"
    );
    assert_eq!(
        store.queue.len() as u64,
        accepted,
        "no row may leave the store before the upstream ack"
    );
    assert!(
        store.unacked_batches >= 16,
        "the in-flight window is full: {} batches",
        store.unacked_batches
    );
    assert_eq!(env.upstream().count_by_device().unwrap().len(), 0);
    gateway
}

#[test]
fn upstream_acks_missing_gateway_resends_same_numbers_until_a_receiver_stores_them() {
    // The receiver has never connected: the broker drops the first copies (no subscriber), so
    // only the gateway's re-sends can deliver.
    let env = TestEnv::new("puback-nosession", BIN).unwrap();
    let (cms, ivy) = devices();
    let mut gateway = stream_while_receiver_away(&env, &cms, &ivy);
    let mut receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    env.wait_settled(Duration::from_millis(500), Duration::from_secs(30))
        .unwrap();
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    receiver.terminate(Duration::from_secs(10)).unwrap();
    assert_complete_and_unique(&env, &cms, &ivy);
}

#[test]
fn upstream_acks_withheld_queued_copies_and_resends_arrive_once() {
    // The receiver's persistent session (clean_session = false) exists while it is away:
    // mosquitto queues the first copy and every re-send of each batch for it.
    let env = TestEnv::new("puback-queued", BIN).unwrap();
    let (cms, ivy) = devices();
    let ropts = ReceiverOptions {
        client_id: "e2e-receiver-persistent".into(),
        share_group: None,
        keepalive_s: 2,
    };
    let mut receiver = env.start_receiver(&ropts).unwrap();
    receiver.terminate(Duration::from_secs(10)).unwrap();
    let mut gateway = stream_while_receiver_away(&env, &cms, &ivy);
    let mut receiver = env.start_receiver(&ropts).unwrap();
    env.wait_settled(Duration::from_millis(500), Duration::from_secs(30))
        .unwrap();
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    receiver.terminate(Duration::from_secs(10)).unwrap();
    let batches = assert_complete_and_unique(&env, &cms, &ivy);
    assert!(
        batches[&env.seed().batch].copies >= 3,
        "the first batch reached the receiver as first copy plus two re-sends: {:?}",
        batches[&env.seed().batch]
    );
}

#[test]
fn broker_pubacks_delayed_past_ack_timeout_and_keepalive_no_loss_no_renumbering() {
    let mut env = TestEnv::new("puback-broker", BIN).unwrap();
    let (cms, ivy) = devices();
    // A receiver whose keepalive outlasts the freeze, so its session survives it.
    let ropts = ReceiverOptions {
        keepalive_s: 30,
        ..ReceiverOptions::default()
    };
    let mut receiver = env.start_receiver(&ropts).unwrap();
    let mut opts = env.gateway_options();
    opts.ack = "broker";
    opts.ack_timeout_s = 2;
    opts.devices = vec![cms.clone(), ivy.clone()];
    let gw_cfg = env.write_gateway_config(&opts).unwrap();
    let mut rs: Vec<Replayer> = Replayer::for_devices(&env.dev_dir(), &[&cms, &ivy]).unwrap();
    let mut gateway = env.spawn_gateway(&gw_cfg).unwrap();
    // ~8 s of data: the CMS50E at 1/4 of its pace (6.8 s), the Ivy at twice its baud rate.
    rs[0].play(&cms.recording, cms.pace, 0.25);
    rs[1].play(&ivy.recording, ivy.pace, 2.0);
    let up = env.upstream();
    wardgate_e2e::wait_for(
        "first observations upstream",
        Duration::from_secs(15),
        || Ok(up.count_by_device()?.values().sum::<u64>() >= 20),
    )
    .unwrap();

    env.broker.pause().unwrap();
    // Frozen for longer than ack_timeout_s (2 s) and the keepalive (2 s): the gateway re-sends
    // on the dead session and then gives the session up.
    gateway
        .wait_stderr("not acknowledged within", 1, Duration::from_secs(10))
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    env.broker.resume().unwrap();

    for r in &mut rs {
        r.wait_done(Duration::from_secs(30)).unwrap();
    }
    env.wait_delivered(
        &[(cms.id(), cms.expected()), (ivy.id(), ivy.expected())],
        Duration::from_secs(40),
    )
    .unwrap();
    env.wait_settled(Duration::from_millis(500), Duration::from_secs(30))
        .unwrap();
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    receiver.terminate(Duration::from_secs(10)).unwrap();

    let batches = assert_complete_and_unique(&env, &cms, &ivy);
    // The batches the gateway re-sent arrived under their own numbers (and with the rows of that
    // number only, checked above).
    let log = gateway.stderr();
    let resent: Vec<u64> = log
        .lines()
        .filter_map(|l| {
            l.split("batch ")
                .nth(1)?
                .split(" not acknowledged")
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(!resent.is_empty(), "{log}");
    for n in &resent {
        assert!(
            batches.contains_key(n),
            "re-sent batch {n} missing upstream"
        );
    }
    eprintln!(
        "re-sent batches {resent:?}; batches that reached upstream more than once: {:?}",
        batches
            .iter()
            .filter(|(_, b)| b.copies > 1)
            .map(|(n, b)| (*n, b.copies))
            .collect::<Vec<_>>()
    );
}
