//! Broker outage: mosquitto is stopped for more than 10 s while devices keep streaming, then
//! restarted on the same port. What a user checks: the gateway kept accepting (its store grew
//! while the broker was away), said so once in its log rather than once per retry, reconnected
//! by itself, and afterwards every observation is upstream — none missing, none twice, in the
//! order the device sent them — and the gateway's store is empty.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use wardgate_e2e::env::{ReceiverOptions, TestEnv};
use wardgate_e2e::pty::{Device, Replayer};
use wardgate_e2e::{count_lines, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");
const OUTAGE: Duration = Duration::from_millis(10_500);
const PLETH: u32 = 150452;

#[test]
fn broker_down_for_10s_mid_stream_loses_nothing_and_duplicates_nothing() {
    let mut env = TestEnv::new("outage", BIN).unwrap();
    // Slowed replays so data flows before, during and after the outage: the CMS50E's 102
    // frames over ~17 s (6 frames/s), the Ivy's 27 messages at its own 9600 baud (~16 s).
    let cms = Device::cms50e("bed1-spo2");
    let ivy = Device::ivy450c("bed2-monitor");
    let mut opts = env.gateway_options();
    opts.devices = vec![cms.clone(), ivy.clone()];
    let gw_cfg = env.write_gateway_config(&opts).unwrap();
    let mut receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut replays: Vec<Replayer> = Replayer::for_devices(&env.dev_dir(), &[&cms, &ivy]).unwrap();
    let mut gateway = env.spawn_gateway(&gw_cfg).unwrap();
    replays[0].play(&cms.recording, cms.pace, 0.1);
    replays[1].play(&ivy.recording, ivy.pace, 1.0);
    let up = env.upstream();

    // Some data delivered before the outage.
    wait_for(
        "first observations upstream",
        Duration::from_secs(15),
        || Ok(up.count_by_device()?.values().sum::<u64>() >= 20),
    )
    .unwrap();
    let port = env.broker.port;
    env.broker.stop().unwrap();
    let outage_start = Instant::now();
    assert!(
        !wardgate_e2e::port_accepts(port),
        "broker still accepting after stop"
    );
    let queued_at_start = env.store().unwrap().queue.len();
    let delivered_at_start: u64 = up.count_by_device().unwrap().values().sum();
    gateway
        .wait_stderr(
            "buffering in the store and retrying",
            1,
            Duration::from_secs(10),
        )
        .unwrap();

    // The outage: the gateway keeps accepting into its store.
    let mut max_queued = queued_at_start;
    while outage_start.elapsed() < OUTAGE {
        std::thread::sleep(Duration::from_millis(250));
        max_queued = max_queued.max(env.store().unwrap().queue.len());
        assert!(gateway.is_running(), "gateway died during the outage");
    }
    let delivered_during: u64 = up.count_by_device().unwrap().values().sum();
    assert_eq!(
        delivered_during, delivered_at_start,
        "nothing can arrive while the broker is down"
    );
    assert!(
        max_queued >= queued_at_start + 50,
        "store should grow while the broker is down (queued {queued_at_start} at the start, at most {max_queued} during)"
    );
    let refused = count_lines(&gateway.stderr(), "connection refused");
    assert_eq!(
        refused,
        1,
        "the refused connection is logged once, not once per retry:\n{}",
        gateway.stderr()
    );

    env.broker.restart().unwrap();
    assert_eq!(env.broker.port, port);
    for r in &mut replays {
        r.wait_done(Duration::from_secs(40)).unwrap();
    }
    let want = [(cms.id(), cms.expected()), (ivy.id(), ivy.expected())];
    env.wait_delivered(&want, Duration::from_secs(30)).unwrap();
    let store = env.wait_store_drained(Duration::from_secs(15)).unwrap();
    assert!(
        gateway.stderr_count("uplink connected") >= 2,
        "reconnected after the outage:\n{}",
        gateway.stderr()
    );
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "gateway exit {st}");
    receiver.terminate(Duration::from_secs(10)).unwrap();

    assert_eq!(
        up.count_by_device().unwrap(),
        want.iter().cloned().collect::<BTreeMap<_, _>>(),
        "delivered per device"
    );
    let (rows, distinct) = up.row_and_distinct_counts().unwrap();
    assert_eq!(rows, distinct);
    assert_eq!(
        up.all_seqs().unwrap(),
        env.accepted_seqs(store.max_seq),
        "every accepted seq delivered, no gaps"
    );
    // Order survived the outage: seq order upstream is the device's own order, sample-exact.
    let samples = cms.samples_in(&cms.recording);
    assert_eq!(samples.len(), 102, "one pleth sample per frame");
    assert_eq!(
        up.samples(&cms.id(), PLETH).unwrap(),
        samples,
        "pleth samples upstream in recording order"
    );
}
