//! `Pipeline`: drains adapter events from the bounded channel into the store with group commit.
//!
//! The writer takes the first event, then everything else already waiting or arriving until
//! `commit_interval` after the previous commit (at most `commit_max_rows`), and commits them in
//! one transaction: commits are at least `commit_interval` apart, and a row arriving after a
//! quiet spell is committed at once. While a
//! commit (fsync) runs, new events wait in the bounded channel; when it is full, adapters wait in
//! `send().await`: backpressure reaches the device side, never the heap. A failed commit keeps
//! the rows in memory and retries (they are not accepted yet, and are not dropped).

use crate::store::Store;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use wardgate_adapters::observation::{mono_ms, now_ms};
use wardgate_adapters::AdapterEvent;
use wardgate_adapters::EventKind;

/// Writer parameters.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Longest a row waits for its group commit.
    pub commit_interval: Duration,
    /// Most rows per transaction.
    pub commit_max_rows: usize,
    /// Wake the uplink when this many rows are pending (a full batch).
    pub batch_max: usize,
    /// How often retention limits are checked.
    pub retention_every: Duration,
}

/// Per-device counts of what the writer accepted.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceCounts {
    /// Observations committed to the store.
    pub observations: u64,
    /// Device events committed to the store.
    pub events: u64,
    /// Wall-clock Unix ms of the last commit with a sign of life from this device (0: never).
    /// For display only: liveness runs on a monotonic clock (see [`crate::health::liveness`]).
    #[serde(default)]
    pub last_seen_ms: i64,
    /// Rows that show the device itself is there: observations and `connected`, `battery`,
    /// `rssi` events — not the gateway's own `error`/`disconnected`/`rejected` reports about
    /// it. Liveness follows this count.
    #[serde(default)]
    pub activity: u64,
    /// Last battery level the device reported, % (MDC_ATTR_VAL_BATT_CHARGE observations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_pct: Option<f64>,
    /// Last RSSI heard, dBm (median of the last presence window for tags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rssi_dbm: Option<i64>,
    /// `error` events of the device since the daemon started.
    #[serde(default)]
    pub errors: u64,
    /// The last of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What the writer has done, shared with status and the demo.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Rows committed.
    pub rows: AtomicU64,
    /// Commit attempts that failed (rows kept and retried).
    pub failed_commits: AtomicU64,
    /// Monotonic ms (`mono_ms`) of the last commit (or retried failed commit) or idle tick: progress for the
    /// watchdog.
    pub last_progress_ms: AtomicU64,
    /// Accepted counts per device id.
    pub per_device: Mutex<BTreeMap<String, DeviceCounts>>,
}

/// Runs the writer until every sender of `rx` is dropped and the channel is drained.
pub async fn run_writer(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<AdapterEvent>,
    opts: WriterOptions,
    wake: Arc<Notify>,
    stats: Arc<WriterStats>,
) {
    let mut pending_since_wake = 0usize;
    let mut last_retention = tokio::time::Instant::now();
    let mut last_commit = tokio::time::Instant::now() - opts.commit_interval;
    let mut buf: Vec<AdapterEvent> = Vec::with_capacity(opts.commit_max_rows.min(65_536));
    loop {
        if buf.is_empty() {
            let first = tokio::select! {
                ev = rx.recv() => ev,
                _ = tokio::time::sleep(opts.retention_every) => {
                    stats.last_progress_ms.store(mono_ms(), Ordering::Relaxed);
                    retention(&store, &mut last_retention, &opts).await;
                    continue;
                }
            };
            let Some(first) = first else { break };
            buf.push(first);
            // Commits are at least `commit_interval` apart (bounds the fsync rate, which wears an
            // SD card); a row arriving after a quiet spell is committed at once.
            let deadline = last_commit + opts.commit_interval;
            while buf.len() < opts.commit_max_rows {
                match rx.try_recv() {
                    Ok(ev) => buf.push(ev),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty)
                        if tokio::time::Instant::now() >= deadline =>
                    {
                        break
                    }
                    Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                        ev = rx.recv() => match ev { Some(ev) => buf.push(ev), None => break },
                        _ = tokio::time::sleep_until(deadline) => break,
                    },
                }
            }
        }
        let rows = std::mem::take(&mut buf);
        last_commit = tokio::time::Instant::now();
        let s = store.clone();
        let result = tokio::task::spawn_blocking(move || {
            let r = s.append(&rows);
            (rows, r)
        })
        .await;
        match result {
            Ok((rows, Ok(_))) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
                stats.last_progress_ms.store(mono_ms(), Ordering::Relaxed);
                {
                    let committed_ms = now_ms();
                    let mut per = stats.per_device.lock().unwrap_or_else(|p| p.into_inner());
                    for r in &rows {
                        let device = match r {
                            AdapterEvent::Observation(o) => &o.device.0,
                            AdapterEvent::Event(e) => &e.device.0,
                        };
                        // Look up before inserting: no String copy per row on the hot path.
                        let counts = match per.get_mut(device.as_str()) {
                            Some(c) => c,
                            None => per.entry(device.clone()).or_default(),
                        };
                        let alive = match r {
                            AdapterEvent::Observation(_) => true,
                            AdapterEvent::Event(e) => matches!(
                                e.kind,
                                EventKind::Connected | EventKind::Battery | EventKind::Rssi
                            ),
                        };
                        if alive {
                            counts.activity += 1;
                            counts.last_seen_ms = committed_ms;
                        }
                        match r {
                            AdapterEvent::Observation(o) => {
                                counts.observations += 1;
                                if o.code == wardgate_adapters::observation::mdc::BATTERY_CHARGE {
                                    counts.battery_pct = Some(o.value);
                                }
                            }
                            AdapterEvent::Event(e) => {
                                counts.events += 1;
                                match e.kind {
                                    EventKind::Error => {
                                        counts.errors += 1;
                                        counts.last_error =
                                            Some(e.detail.chars().take(200).collect());
                                    }
                                    EventKind::Rssi => {
                                        counts.rssi_dbm = e
                                            .presence
                                            .as_ref()
                                            .map(|p| p.rssi_median.round() as i64);
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                }
                pending_since_wake += rows.len();
                if pending_since_wake >= opts.batch_max {
                    pending_since_wake = 0;
                    wake.notify_one();
                }
                if last_retention.elapsed() >= opts.retention_every {
                    retention(&store, &mut last_retention, &opts).await;
                }
            }
            Ok((rows, Err(e))) => {
                stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                // The writer is alive and retrying: that is progress for the watchdog (a restart
                // would not cure a full disk and would lose these uncommitted rows).
                stats.last_progress_ms.store(mono_ms(), Ordering::Relaxed);
                log::error!(
                    "{e}; keeping {} rows in memory and retrying in 1 s",
                    rows.len()
                );
                buf = rows;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(join) => {
                stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                log::error!("store writer task failed: {join}");
            }
        }
    }
    wake.notify_one();
}

async fn retention(store: &Arc<Store>, last: &mut tokio::time::Instant, _opts: &WriterOptions) {
    *last = tokio::time::Instant::now();
    let s = store.clone();
    match tokio::task::spawn_blocking(move || {
        let r = s.enforce_retention(now_ms());
        let _ = s.checkpoint();
        r
    })
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => log::error!("retention: {e}"),
        Err(e) => log::error!("retention task failed: {e}"),
    }
}
