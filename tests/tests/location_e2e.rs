//! A device's `location` travels with its rows (issue 11 item 7), end to end with real
//! mosquitto, a pty device and the receiver's SQLite output. What a user checks: rows buffered
//! while the upstream was away keep the location configured when they were read, even after the
//! device was moved in the configuration and the gateway restarted; rows read after the restart
//! carry the new location; `wardgate status` shows the new one.

use std::time::Duration;
use wardgate_e2e::env::{ReceiverOptions, TestEnv};
use wardgate_e2e::pty::{Device, Replayer};
use wardgate_e2e::wait_for;

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");
const BEFORE: &str = "ward-7/bed-12";
const AFTER: &str = "ward-8/bed-3";

#[test]
fn rows_buffered_across_a_move_arrive_with_the_location_they_were_read_at() {
    let env = TestEnv::new("location", BIN).unwrap();
    let cms = Device::cms50e("bed1-spo2");
    let mut opts = env.gateway_options();
    opts.devices = vec![cms.clone()];
    opts.locations.insert(cms.name.clone(), BEFORE.into());
    let cfg = env.write_gateway_config(&opts).unwrap();
    let mut replays = Replayer::for_devices(&env.dev_dir(), &[&cms]).unwrap();

    // The upstream is away (no receiver): everything read stays in the store, in batches sent
    // and never acknowledged.
    let mut gateway = env.spawn_gateway(&cfg).unwrap();
    replays[0].play(&cms.recording, cms.pace, 10.0);
    replays[0].wait_done(Duration::from_secs(30)).unwrap();
    wait_for(
        "every reading of the first replay in the store",
        Duration::from_secs(20),
        || {
            let s = env.store()?;
            let n = s
                .queue
                .iter()
                .filter(|r| r.device == cms.id() && r.kind.is_none())
                .count() as u64;
            Ok(n >= cms.expected() && s.unacked_batches > 0)
        },
    )
    .unwrap();
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "gateway exit {st}");
    let before = env.store().unwrap();
    assert!(
        before.unacked_batches > 0,
        "batches were numbered and sent while the upstream was away"
    );
    let last_before = before.max_seq;

    // The device moves; the gateway restarts with the new configuration, the upstream is back.
    opts.locations.insert(cms.name.clone(), AFTER.into());
    let cfg = env.write_gateway_config(&opts).unwrap();
    let mut receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut gateway = env.spawn_gateway(&cfg).unwrap();
    replays[0].play(&cms.recording, cms.pace, 10.0);
    replays[0].wait_done(Duration::from_secs(30)).unwrap();
    let up = env.upstream();
    env.wait_delivered(&[(cms.id(), 2 * cms.expected())], Duration::from_secs(40))
        .unwrap();
    env.wait_settled(Duration::from_secs(1), Duration::from_secs(30))
        .unwrap();

    // The status an installer reads names the new location.
    let cfg_arg = cfg.clone();
    wait_for(
        "wardgate status to show the new location",
        Duration::from_secs(10),
        || {
            let out = std::process::Command::new(BIN)
                .args(["status", "--config"])
                .arg(&cfg_arg)
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(text.contains(&format!("{} at {AFTER}", cms.id())))
        },
    )
    .unwrap();
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "gateway exit {st}");
    receiver.terminate(Duration::from_secs(10)).unwrap();

    // Every row of the device, as the receiver stored it: the location it was read at.
    let rows = up.locations(&cms.id()).unwrap();
    let (old, new): (Vec<_>, Vec<_>) = rows.iter().partition(|(seq, _)| *seq <= last_before);
    assert!(
        old.len() as u64 >= cms.expected() && new.len() as u64 >= cms.expected(),
        "{} rows read before the move, {} after",
        old.len(),
        new.len()
    );
    for (seq, location) in &old {
        assert_eq!(
            location.as_deref(),
            Some(BEFORE),
            "row {seq}, read before the move"
        );
    }
    for (seq, location) in &new {
        assert_eq!(
            location.as_deref(),
            Some(AFTER),
            "row {seq}, read after the move"
        );
    }
    // The gateway's own rows have no location.
    let gw_rows = up.locations("gateway").unwrap();
    assert!(gw_rows.iter().all(|(_, l)| l.is_none()), "{gw_rows:?}");
}
