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
        waveform: None,
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
            retention_every: Duration::from_secs(3600),
            buffer_max_rows: 10_000,
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

fn pleth(value: f64) -> AdapterEvent {
    let AdapterEvent::Observation(mut o) = spo2(value) else {
        unreachable!()
    };
    o.code = mdc::PLETH;
    AdapterEvent::Observation(o)
}

/// A full store (`max_pages` here; SQLITE_FULL as on a full disk): nothing accepted is deleted,
/// the writer holds at most `buffer_max_rows` rows and refuses the newest waveform samples first,
/// keeps counting as progress, and once pages are free again (an acknowledged batch deleted)
/// commits what it held and records one `dropped` event with the refused counts per device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_new_rows_counted_and_reports_them_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let probe = Store::open(&path, StoreOptions::default()).unwrap().0;
    drop(probe);
    let pages: u64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    let opts = StoreOptions {
        max_pages: Some(pages + 6),
        ..Default::default()
    };
    let (store, _) = Store::open(&path, opts).unwrap();
    let store = Arc::new(store);
    let (tx, rx) = mpsc::channel(64);
    let stats = Arc::new(WriterStats::default());
    let writer = tokio::spawn(run_writer(
        store.clone(),
        rx,
        WriterOptions {
            commit_interval: Duration::from_millis(5),
            commit_max_rows: 20,
            retention_every: Duration::from_secs(3600),
            buffer_max_rows: 30,
        },
        Arc::new(Notify::new()),
        stats.clone(),
    ));
    // Fill until the store refuses a commit.
    let mut sent = 0u64;
    while stats.failed_commits.load(Ordering::Relaxed) == 0 {
        tx.send(pleth(sent as f64)).await.unwrap();
        sent += 1;
        assert!(sent < 100_000, "the store never filled");
        if sent % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let accepted_at_full = store.queued();
    assert!(accepted_at_full > 0);
    // While full: more waveform, then numerics and an event; the writer keeps draining.
    let before = mono_ms();
    for i in 0..100 {
        tx.send(pleth(1e6 + i as f64)).await.unwrap();
    }
    for i in 0..10 {
        tx.send(spo2(90.0 + i as f64)).await.unwrap();
    }
    wait_for("refusals counted", Duration::from_secs(10), || {
        stats.store.lock().unwrap().refused_since_start >= 100
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    {
        let st = stats.store.lock().unwrap().clone();
        assert!(st.full && st.failing_since_ms.is_some(), "{st:?}");
        assert!(st.buffered <= 30, "bounded: {st:?}");
        let r = &st.refused_unreported["serial:bed1"];
        assert_eq!(
            r.numeric, 0,
            "numerics take the place of waveform samples: {st:?}"
        );
        assert!(r.waveform >= 100, "{st:?}");
        assert!(r.first_ms <= r.last_ms && r.first_ms > 0);
    }
    assert!(
        stats.last_progress_ms.load(Ordering::Relaxed) >= before,
        "retries while full are progress for the watchdog"
    );
    assert_eq!(
        store.queued(),
        accepted_at_full,
        "nothing accepted was deleted"
    );

    // Space returns: the oldest rows are acknowledged upstream and deleted.
    let batch = store
        .next_batch(accepted_at_full as usize)
        .unwrap()
        .unwrap();
    assert!(store.ack(batch.number).unwrap());
    wait_for("the report committed", Duration::from_secs(10), || {
        stats.store.lock().unwrap().refused_unreported.is_empty()
            && stats.store.lock().unwrap().failing_since_ms.is_none()
    })
    .await;
    let st = stats.store.lock().unwrap().clone();
    let refused = st.refused_since_start;
    let rest = store.next_batch(100_000).unwrap().unwrap();
    let mut values = Vec::new();
    let mut dropped = Vec::new();
    for i in &rest.items {
        match i {
            wardgate::batch::Item::Observation(o) => values.push(o.observation.value),
            wardgate::batch::Item::Event(e) => dropped.push(e.event.detail.clone()),
        }
    }
    assert_eq!(dropped.len(), 1, "one report: {dropped:?}");
    assert!(
        dropped[0].starts_with(&format!(
            "reason=store_full waveform={refused} numeric=0 events=0 total={refused}"
        )),
        "{dropped:?}"
    );
    assert!(
        dropped[0].contains("| serial:bed1 waveform="),
        "{dropped:?}"
    );
    // Every numeric kept, and every row sent is accepted exactly once or refused.
    assert_eq!(
        values.iter().filter(|v| (90.0..100.0).contains(*v)).count(),
        10
    );
    let accepted = accepted_at_full + values.len() as u64;
    assert_eq!(
        accepted + refused,
        sent + 110,
        "accepted {accepted} + refused {refused}"
    );
    drop(tx);
    writer.await.unwrap();
}
