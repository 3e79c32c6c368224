//! The writer's promise when commits keep failing (stated once, in `system/sd_notify.rs`): the
//! rows stay in memory and are retried every second, each retry counts as progress for the
//! systemd watchdog, and nothing accepted by the channel is lost once the store takes writes
//! again. Commits fail for real here: another SQLite connection holds the store's write lock
//! (`BEGIN EXCLUSIVE`), so the writer's transaction ends with SQLITE_BUSY after the store's busy
//! timeout, as it would behind a wedged second writer or a failing disk.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use wardgate::pipeline::{run_writer, WriterOptions, WriterStats};
use wardgate::store::{Store, StoreOptions};
use wardgate_adapters::observation::{mdc, mono_ms, now_ms, DeviceId, TimeQuality, Unit};
use wardgate_adapters::{AdapterEvent, Observation};

fn spo2(value: f64) -> AdapterEvent {
    AdapterEvent::Observation(Observation {
        device: DeviceId("serial:bed1".into()),
        code: mdc::SPO2,
        value,
        unit: Unit::PERCENT,
        device_time: None,
        gateway_time: now_ms(),
        time_quality: TimeQuality::Synced,
        status: vec![],
    })
}

/// Waits until `cond` holds, up to `deadline`.
async fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_commits_keep_the_rows_and_count_as_progress() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let (store, _) = Store::open(&path, StoreOptions::default()).unwrap();
    let store = Arc::new(store);

    // Another writer takes the write lock and keeps it.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let (tx, rx) = mpsc::channel(64);
    let stats = Arc::new(WriterStats::default());
    let writer = tokio::spawn(run_writer(
        store.clone(),
        rx,
        WriterOptions {
            commit_interval: Duration::from_millis(20),
            commit_max_rows: 100,
            batch_max: 100,
            retention_every: Duration::from_secs(3600),
        },
        Arc::new(Notify::new()),
        stats.clone(),
    ));
    tx.send(spo2(97.0)).await.unwrap();
    tx.send(spo2(98.0)).await.unwrap();

    // The first commit fails after the busy timeout (10 s): counted, and progress stamped.
    let before = mono_ms();
    wait_for("a failed commit", Duration::from_secs(60), || {
        stats.failed_commits.load(Ordering::Relaxed) >= 1
    })
    .await;
    let progress = stats.last_progress_ms.load(Ordering::Relaxed);
    assert!(
        progress >= before,
        "a failed commit must count as progress for the watchdog (last progress {progress}, \
         test started {before})"
    );
    assert_eq!(
        store.queued(),
        0,
        "nothing committed while the lock is held"
    );
    assert_eq!(stats.rows.load(Ordering::Relaxed), 0);

    // The store takes writes again: the rows kept in memory are committed, none lost, none
    // doubled, and what arrives meanwhile follows them.
    blocker.execute_batch("ROLLBACK").unwrap();
    tx.send(spo2(99.0)).await.unwrap();
    wait_for("the kept rows committed", Duration::from_secs(60), || {
        store.queued() == 3
    })
    .await;
    let per = stats.per_device.lock().unwrap().clone();
    assert_eq!(per["serial:bed1"].observations, 3);
    let batch = store
        .next_batch(10)
        .unwrap()
        .expect("a batch of the kept rows");
    let values: Vec<f64> = batch
        .items
        .iter()
        .filter_map(|i| match i {
            wardgate::batch::Item::Observation(o) => Some(o.observation.value),
            _ => None,
        })
        .collect();
    assert_eq!(values, [97.0, 98.0, 99.0], "in order, once each");

    drop(tx);
    writer.await.unwrap();
}
