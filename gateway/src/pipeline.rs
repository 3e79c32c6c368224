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
                    let mut per = stats.per_device.lock().unwrap_or_else(|p| p.into_inner());
                    count_committed(&mut per, &rows, now_ms());
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

/// Adds committed `rows` to the per-device counts (`committed_ms`: wall-clock Unix ms of the
/// commit, the `last_seen_ms` of devices that showed a sign of life).
pub(crate) fn count_committed(
    per: &mut BTreeMap<String, DeviceCounts>,
    rows: &[AdapterEvent],
    committed_ms: i64,
) {
    for r in rows {
        let device = match r {
            AdapterEvent::Observation(o) => &o.device.0,
            AdapterEvent::Event(e) => &e.device.0,
        };
        // Look up before inserting: no String copy per row on the hot path.
        let counts = match per.get_mut(device.as_str()) {
            Some(c) => c,
            None => per.entry(device.clone()).or_default(),
        };
        counts.count(r, committed_ms);
    }
}

impl DeviceCounts {
    /// Counts one committed row of this device.
    fn count(&mut self, r: &AdapterEvent, committed_ms: i64) {
        let alive = match r {
            AdapterEvent::Observation(_) => true,
            AdapterEvent::Event(e) => matches!(
                e.kind,
                EventKind::Connected | EventKind::Battery | EventKind::Rssi
            ),
        };
        if alive {
            self.activity += 1;
            self.last_seen_ms = committed_ms;
        }
        match r {
            AdapterEvent::Observation(o) => {
                self.observations += 1;
                if o.code == wardgate_adapters::observation::mdc::BATTERY_CHARGE {
                    self.battery_pct = Some(o.value);
                }
            }
            AdapterEvent::Event(e) => {
                self.events += 1;
                match e.kind {
                    EventKind::Error => {
                        self.errors += 1;
                        self.last_error = Some(e.detail.chars().take(200).collect());
                    }
                    EventKind::Rssi => {
                        // The typed presence report (a tag's window summary); an `rssi` event
                        // without one leaves the RSSI unknown, not stale.
                        self.rssi_dbm = e.presence.as_ref().map(|p| p.rssi_median.round() as i64);
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod counting_tests {
    use super::*;
    use wardgate_adapters::observation::{
        mdc, DeviceEvent, DeviceId, Observation, TimeQuality, Unit,
    };

    fn obs(device: &str, code: u32, value: f64) -> AdapterEvent {
        AdapterEvent::Observation(Observation {
            device: DeviceId(device.into()),
            code,
            value,
            unit: Unit::PERCENT,
            device_time: None,
            gateway_time: 1,
            time_quality: TimeQuality::Synced,
            status: vec![],
        })
    }

    fn ev(device: &str, kind: EventKind, detail: &str) -> AdapterEvent {
        AdapterEvent::Event(DeviceEvent::new(DeviceId(device.into()), kind, detail))
    }

    /// A tag's presence summary with median `median` dBm.
    fn presence(device: &str, median: f64) -> AdapterEvent {
        AdapterEvent::Event(DeviceEvent::presence(
            DeviceId(device.into()),
            wardgate_adapters::observation::PresenceReport {
                rule: "tags".into(),
                window_s: 10,
                count: 7,
                rssi_min: -80,
                rssi_median: median,
                rssi_max: -40,
            },
        ))
    }

    fn counted(rows: &[AdapterEvent], at: i64) -> BTreeMap<String, DeviceCounts> {
        let mut per = BTreeMap::new();
        count_committed(&mut per, rows, at);
        per
    }

    #[test]
    fn observations_and_events_are_counted_per_device() {
        let per = counted(
            &[
                obs("serial:a", mdc::SPO2, 97.0),
                obs("serial:a", mdc::SPO2, 98.0),
                ev("serial:a", EventKind::Connected, ""),
                obs("ble:b", mdc::HEART_RATE_ECG, 70.0),
            ],
            1_000,
        );
        assert_eq!(per.len(), 2);
        let a = &per["serial:a"];
        assert_eq!((a.observations, a.events, a.activity), (2, 1, 3));
        let b = &per["ble:b"];
        assert_eq!((b.observations, b.events, b.activity), (1, 0, 1));
        assert_eq!(b.last_seen_ms, 1_000);
    }

    #[test]
    fn counts_add_up_across_commits() {
        let mut per = BTreeMap::new();
        count_committed(&mut per, &[obs("d", mdc::SPO2, 97.0)], 1_000);
        count_committed(
            &mut per,
            &[obs("d", mdc::SPO2, 96.0), obs("d", mdc::SPO2, 95.0)],
            2_000,
        );
        assert_eq!(per["d"].observations, 3);
        assert_eq!(per["d"].activity, 3);
        assert_eq!(per["d"].last_seen_ms, 2_000);
    }

    #[test]
    fn only_signs_of_life_count_as_activity_and_move_last_seen() {
        let mut per = BTreeMap::new();
        count_committed(&mut per, &[ev("d", EventKind::Connected, "")], 1_000);
        // The gateway's own reports about the device are not the device being there.
        count_committed(
            &mut per,
            &[
                ev("d", EventKind::Disconnected, "link lost"),
                ev("d", EventKind::Rejected, "bad frame"),
                ev("d", EventKind::Error, "cannot open"),
                ev("d", EventKind::Dropped, "3 rows"),
            ],
            2_000,
        );
        let d = &per["d"];
        assert_eq!((d.events, d.activity, d.last_seen_ms), (5, 1, 1_000));
        count_committed(
            &mut per,
            &[
                ev("d", EventKind::Battery, "80 %"),
                ev("d", EventKind::Rssi, "rssi=-60"),
            ],
            3_000,
        );
        let d = &per["d"];
        assert_eq!((d.events, d.activity, d.last_seen_ms), (7, 3, 3_000));
        assert_eq!(d.observations, 0);
    }

    #[test]
    fn battery_is_the_last_battery_charge_observation() {
        let per = counted(
            &[
                obs("d", mdc::BATTERY_CHARGE, 81.0),
                obs("d", mdc::SPO2, 97.0),
                obs("d", mdc::BATTERY_CHARGE, 79.0),
            ],
            1,
        );
        assert_eq!(per["d"].battery_pct, Some(79.0));
        assert_eq!(
            counted(&[obs("d", mdc::SPO2, 97.0)], 1)["d"].battery_pct,
            None
        );
    }

    #[test]
    fn errors_are_counted_and_the_last_kept_at_most_200_characters() {
        let long = "é".repeat(300);
        let per = counted(
            &[
                ev("d", EventKind::Error, "first"),
                ev("d", EventKind::Error, &long),
            ],
            1,
        );
        let d = &per["d"];
        assert_eq!(d.errors, 2);
        let last = d.last_error.as_deref().unwrap();
        assert_eq!(last.chars().count(), 200);
        assert!(last.chars().all(|c| c == 'é'));
    }

    #[test]
    fn rssi_is_the_rounded_median_of_the_presence_report() {
        let rssi = |e: AdapterEvent| counted(&[e], 1)["tag"].rssi_dbm;
        assert_eq!(rssi(presence("tag", -61.5)), Some(-62));
        assert_eq!(rssi(presence("tag", -70.0)), Some(-70));
        // Text is never parsed back: a detail that reads like a report is not one.
        assert_eq!(rssi(ev("tag", EventKind::Rssi, "rssi_median=-60")), None);
        let mut per = BTreeMap::new();
        count_committed(&mut per, &[presence("tag", -50.0)], 1);
        assert_eq!(per["tag"].rssi_dbm, Some(-50));
        count_committed(&mut per, &[ev("tag", EventKind::Rssi, "gone")], 2);
        assert_eq!(per["tag"].rssi_dbm, None);
    }
}
