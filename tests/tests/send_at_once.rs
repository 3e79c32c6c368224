//! Send at once when idle, batches that fill up under load (issue 11, item 5). What a user sees,
//! through the real daemon, a CMS50E on a pty, mosquitto with mutual TLS and `wardgate receive`
//! in `upstream` ack mode, with a batching interval of 5 s:
//!
//! - on an idle gateway, a single reading written to the device reaches the receiver well before
//!   the interval (the bound, 2.5 s, is generous: it takes milliseconds; before this change it
//!   waited for the next tick, up to 5 s);
//! - a burst of about 2,000 readings with a one-batch window travels in batches of many rows
//!   each: while a batch awaits its ack the rows pile up, and the ack sends them together.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use wardgate_e2e::env::{ReceiverOptions, TestEnv};
use wardgate_e2e::pty::{Device, Replayer};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");

const INTERVAL_MS: u64 = 5000;

/// The shortest prefix of the recording that decodes to at least one observation: one reading.
fn one_reading(dev: &Device) -> Vec<u8> {
    (1..=dev.recording.len().min(64))
        .map(|n| &dev.recording[..n])
        .find(|p| dev.expected_in(p) >= 1)
        .expect("a reading in the first 64 bytes of the recording")
        .to_vec()
}

#[test]
fn a_reading_on_an_idle_gateway_leaves_at_once_and_a_burst_fills_batches() {
    let env = TestEnv::new("send-at-once", BIN).unwrap();
    // Every frame's SpO2 and pulse (numerics_every_s = 0): a reading as soon as the decoder has
    // locked, and a burst of about 2,000 of them.
    let cms = Device::cms50e("bed1-spo2").with_numerics_every(0);
    let mut receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut opts = env.gateway_options();
    opts.ack = "upstream";
    opts.batch_interval_ms = INTERVAL_MS;
    // One batch in flight at a time: under the burst, rows pile up behind each ack.
    opts.max_inflight = Some(1);
    opts.devices = vec![cms.clone()];
    let cfg = env.write_gateway_config(&opts).unwrap();
    let mut rs = Replayer::for_devices(&env.dev_dir(), &[&cms]).unwrap();
    let mut gateway = env.spawn_gateway(&cfg).unwrap();
    gateway
        .wait_stderr("uplink connected", 1, Duration::from_secs(30))
        .unwrap();
    // The session's first tick fires as it connects; the next one is 5 s later. Write the
    // reading a second in, so that waiting for the tick would take about 4 s.
    std::thread::sleep(Duration::from_secs(1));

    let reading = one_reading(&cms);
    let n1 = cms.expected_in(&reading);
    rs[0].play(&reading, cms.pace, 1.0);
    rs[0].wait_done(Duration::from_secs(30)).unwrap();
    let written = Instant::now();
    let up = env.upstream();
    wardgate_e2e::wait_for(
        "the single reading upstream",
        Duration::from_secs(30),
        || Ok(up.count(&cms.id())? >= n1),
    )
    .unwrap();
    let took = written.elapsed();
    assert!(
        took < Duration::from_millis(INTERVAL_MS / 2),
        "a reading on an idle gateway took {took:?} to reach the receiver (batch_interval_ms = {INTERVAL_MS})"
    );
    let first_batches = up.batches().unwrap();

    // The burst: the rest of the recording and nine more copies of it (about 1,000 frames),
    // written as fast as the gateway reads them.
    let mut rest = cms.recording[reading.len()..].to_vec();
    for _ in 0..9 {
        rest.extend_from_slice(&cms.recording);
    }
    // The gateway flushed the reading's stretch when the line went quiet: the burst is a new one.
    let n2 = cms.expected_in(&rest);
    rs[0].play(&rest, cms.pace, 1000.0);
    rs[0].wait_done(Duration::from_secs(60)).unwrap();
    env.wait_delivered(&[(cms.id(), n1 + n2)], Duration::from_secs(60))
        .unwrap();
    let mut rows_per_batch: BTreeMap<u64, u64> = BTreeMap::new();
    for o in up.observations().unwrap() {
        if !first_batches.contains(&o.batch) {
            *rows_per_batch.entry(o.batch).or_default() += 1;
        }
    }
    let batches = rows_per_batch.len() as u64;
    let rows: u64 = rows_per_batch.values().sum();
    let largest = rows_per_batch.values().copied().max().unwrap_or(0);
    assert!(
        rows >= n2 && batches > 0 && rows / batches >= 20 && largest >= 50,
        "the burst's {rows} rows came in {batches} batches (largest {largest}): batches should fill up under load"
    );
    eprintln!(
        "idle reading: {took:?}; burst: {rows} rows in {batches} batches (largest {largest})"
    );
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    receiver.terminate(Duration::from_secs(10)).unwrap();
}
