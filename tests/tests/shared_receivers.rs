//! Several `wardgate receive` processes in one `[receiver] share_group`, one gateway in `upstream`
//! ack mode with a backlog of 40,000 observations, a real mosquitto. What an operator checks:
//! every observation is stored exactly once across the receivers' outputs, each receiver took
//! a share of the batches, and the gateway's store drains (every batch's signed ack arrived,
//! whichever receiver stored it).
//!
//! - three receivers, each with its own SQLite file (the gateway's ack timeout is long, so no
//!   batch is re-sent: a re-sent batch may land on another receiver and then sits in two files,
//!   see `docs/install.md`);
//! - three receivers sharing one SQLite file (they take turns, `SHARED_FILE_WAIT`): exactly
//!   once even when the gateway re-sends.

use std::collections::BTreeSet;
use std::time::Duration;
use wardgate_adapters::observation::{mdc, DeviceId, Observation, TimeQuality, Unit};
use wardgate_adapters::AdapterEvent;
use wardgate_e2e::db::Upstream;
use wardgate_e2e::env::{ReceiverOptions, TestEnv};
use wardgate_e2e::process::Proc;

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");
const BACKLOG: u64 = 40_000;
const RECEIVERS: usize = 3;

/// Fills the gateway's store with [`BACKLOG`] observations from 8 devices, as its writer would.
fn fill_store(env: &TestEnv) {
    env.init_store().unwrap();
    let (store, _) =
        wardgate::store::Store::open(&env.store_path(), wardgate::store::StoreOptions::default())
            .unwrap();
    let t = wardgate_adapters::observation::now_ms();
    let rows: Vec<_> = (0..BACKLOG)
        .map(|i| {
            AdapterEvent::Observation(Observation {
                device: DeviceId(format!("serial:bed{}", i % 8)),
                code: mdc::SPO2,
                value: 90.0 + (i % 10) as f64,
                unit: Unit::PERCENT,
                device_time: None,
                gateway_time: t + i as i64,
                time_quality: TimeQuality::Synced,
                status: vec![],
                waveform: None,
            })
        })
        .collect();
    for chunk in rows.chunks(10_000) {
        store.append(chunk).unwrap();
    }
}

/// Starts [`RECEIVERS`] receivers in one share group, `output(i)` each one's output.
fn start_receivers(env: &TestEnv, output: impl Fn(usize) -> String) -> Vec<Proc> {
    (0..RECEIVERS)
        .map(|i| {
            let opts = ReceiverOptions {
                client_id: format!("e2e-shared-rx{i}"),
                share_group: Some("ward-receivers".into()),
                keepalive_s: 5,
            };
            env.start_named_receiver(&format!("rx{i}"), &opts, &output(i))
                .unwrap()
        })
        .collect()
}

/// Runs the gateway until its store drained, stops everything, and checks that every
/// receiver stored (raw copies) a share of the batches.
fn deliver(env: &TestEnv, ack_timeout_s: u64, mut receivers: Vec<Proc>) -> BTreeSet<u64> {
    let mut opts = env.gateway_options();
    opts.ack = "upstream";
    opts.ack_timeout_s = ack_timeout_s;
    let cfg = env.write_gateway_config(&opts).unwrap();
    let mut gateway = env.spawn_gateway(&cfg).unwrap();
    let store = env.wait_store_drained(Duration::from_secs(180)).unwrap();
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    for r in &mut receivers {
        assert!(r.terminate(Duration::from_secs(10)).unwrap().success());
    }
    for i in 0..RECEIVERS {
        let raw = std::fs::read_dir(env.rx_dir.join(format!("rx{i}/messages")))
            .map(|d| d.count())
            .unwrap_or(0);
        assert!(
            raw > 0,
            "receiver rx{i} stored no batch: the load was not shared"
        );
    }
    let accepted = env.accepted_seqs(store.max_seq);
    assert_eq!(accepted.len() as u64, BACKLOG);
    accepted
}

#[test]
fn three_receivers_with_their_own_files_store_every_row_exactly_once_between_them() {
    let env = TestEnv::new("shared-rx-files", BIN).unwrap();
    fill_store(&env);
    let receivers = start_receivers(&env, |_| "sqlite:upstream.db".into());
    let accepted = deliver(&env, 120, receivers);
    let mut all = BTreeSet::new();
    let mut rows = 0;
    for i in 0..RECEIVERS {
        let up = Upstream::new(&env.rx_dir.join(format!("rx{i}/upstream.db")));
        let seqs = up.all_seqs().unwrap();
        assert!(!seqs.is_empty(), "rx{i} stored nothing");
        rows += seqs.len();
        all.extend(seqs);
    }
    assert_eq!(rows, all.len(), "a row was stored by two receivers");
    assert_eq!(all, accepted, "every accepted row upstream");
}

#[test]
fn three_receivers_sharing_one_file_store_every_row_exactly_once() {
    let env = TestEnv::new("shared-rx-onefile", BIN).unwrap();
    fill_store(&env);
    let shared = env.rx_dir.join("shared.db");
    let receivers = start_receivers(&env, |_| format!("sqlite:{}", shared.display()));
    // The usual short ack timeout: a batch re-sent to another receiver is stored once anyway.
    let accepted = deliver(&env, 3, receivers);
    let up = Upstream::new(&shared);
    let (rows, distinct) = up.row_and_distinct_counts().unwrap();
    assert_eq!(rows, distinct);
    assert_eq!(
        up.all_seqs().unwrap(),
        accepted,
        "every accepted row upstream"
    );
}
