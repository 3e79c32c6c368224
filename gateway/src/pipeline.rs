//! `Pipeline`: drains adapter events from the bounded channel into the store with group commit.
//!
//! The writer takes the first event, then everything else already waiting or arriving until
//! its commit may start (at most `commit_max_rows`), and commits them in one transaction. Commits
//! are paced by a token bucket ([`commit_deadline`]): on average at most one per
//! `commit_interval`, at most [`COMMIT_BURST`] back to back; a row arriving after a quiet spell,
//! or at about one per `commit_interval` (a device at 50 readings/s), is committed at once. (A
//! strict minimum spacing made each reading at that rate wait for the timer, a little more at
//! every commit: 0 to 20 ms, issue 11.) While a
//! commit (fsync) runs, new events wait in the bounded channel; when it is full, adapters wait in
//! `send().await`: backpressure reaches the device side, never the heap.
//!
//! # When the store cannot accept rows (full disk)
//!
//! A failed commit (SQLITE_FULL from a full filesystem or `[store] max_pages`, or an I/O error)
//! keeps its rows in memory: they are not accepted yet, and nothing in the store is deleted to
//! make room (rows already accepted stay, see `crate::store`). The writer then
//! - retries every second, and each retry is progress for the watchdog (the promise is stated
//!   once, in `system/sd_notify.rs`);
//! - keeps draining the channel, so adapters are not stalled into losing data silently at the
//!   device, into a buffer bounded by `buffer_max_rows` (or the failed commit's size, if larger);
//! - when the buffer is full, **refuses** rows: the *newest* of the lowest class go first
//!   (waveform samples, then numerics, then device events: the retention order). An incoming
//!   row of a higher class than something held takes the place of the newest held row of the
//!   lowest class; otherwise the incoming row itself is refused. The oldest rows are kept
//!   because they continue what the store already holds: the gap upstream is one span at the
//!   end of the outage per device and class, not holes. Every refused row is counted per device
//!   and class with the time span it covers;
//! - logs the change of state once, a summary every [`SUMMARY_EVERY`] while it lasts, and the
//!   recovery once, never a line per retry;
//! - when a commit succeeds again, records one `dropped` event of device `gateway`
//!   (`reason=store_full`, or `store_error` for other failures) with the refused counts per
//!   device and their first/last gateway time ([`refused_detail`]), which travels upstream like
//!   any row.
//!
//! [`WriterStats::store`] shows the state (`wardgate status`). On shutdown while the store
//! still refuses, the rows held in memory are lost and logged with their counts.

use crate::store::{class_of, Class, Store};
use std::collections::{BTreeMap, VecDeque};
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
    /// How often retention limits are checked.
    pub retention_every: Duration,
    /// Most rows held in memory while commits fail; beyond it rows are refused (module doc).
    pub buffer_max_rows: usize,
}

/// Commits the writer may start back to back before the pacing of one per `commit_interval`
/// applies ([`commit_deadline`]).
pub const COMMIT_BURST: u32 = 3;

/// When the next commit may start, given the bucket's theoretical time `tat` (GCRA, the generic
/// cell rate algorithm: `tat` moves `interval` later with every commit, from `now` if it is
/// behind): `COMMIT_BURST - 1` intervals before `tat`. So in any span of time `t` at most
/// `COMMIT_BURST + t / interval` commits start, and a commit at about one per `interval` never
/// waits. Pure.
pub fn commit_deadline(tat: tokio::time::Instant, interval: Duration) -> tokio::time::Instant {
    let ahead = interval * (COMMIT_BURST - 1);
    tat.checked_sub(ahead).unwrap_or(tat)
}

/// The bucket's theoretical time after a commit that starts at `now` (see [`commit_deadline`]).
pub fn commit_taken(
    tat: tokio::time::Instant,
    now: tokio::time::Instant,
    interval: Duration,
) -> tokio::time::Instant {
    tat.max(now) + interval
}

/// How often the writer logs a summary while the store cannot accept rows.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// How long the writer waits between commit attempts while they fail.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Rows of one device the writer had to refuse (not accepted, never in the store).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refused {
    /// Waveform samples refused.
    pub waveform: u64,
    /// Numerics refused.
    pub numeric: u64,
    /// Device events refused.
    pub events: u64,
    /// Gateway time (Unix ms) of the oldest refused row.
    pub first_ms: i64,
    /// Gateway time (Unix ms) of the newest refused row.
    pub last_ms: i64,
}

impl Refused {
    /// Rows refused.
    pub fn total(&self) -> u64 {
        self.waveform + self.numeric + self.events
    }

    fn add(&mut self, class: Class, gateway_time: i64) {
        if self.total() == 0 {
            (self.first_ms, self.last_ms) = (gateway_time, gateway_time);
        }
        self.first_ms = self.first_ms.min(gateway_time);
        self.last_ms = self.last_ms.max(gateway_time);
        match class {
            Class::Waveform => self.waveform += 1,
            Class::Numeric => self.numeric += 1,
            Class::Event => self.events += 1,
        }
    }

    fn merge(&mut self, o: &Refused) {
        if o.total() == 0 {
            return;
        }
        if self.total() == 0 {
            *self = o.clone();
            return;
        }
        self.first_ms = self.first_ms.min(o.first_ms);
        self.last_ms = self.last_ms.max(o.last_ms);
        self.waveform += o.waveform;
        self.numeric += o.numeric;
        self.events += o.events;
    }
}

/// Whether the store accepts rows, for `wardgate status` ([`WriterStats::store`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreState {
    /// Set while commits fail: wall-clock Unix ms of the first failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since_ms: Option<i64>,
    /// The failure is a full store (filesystem or `max_pages`), not another error.
    #[serde(default)]
    pub full: bool,
    /// The last commit error, while failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Rows held in memory, not yet accepted.
    #[serde(default)]
    pub buffered: u64,
    /// Rows refused since the daemon started.
    #[serde(default)]
    pub refused_since_start: u64,
    /// Refused rows per device not yet reported upstream (recorded as a `dropped` event as soon
    /// as the store accepts rows again).
    #[serde(default)]
    pub refused_unreported: BTreeMap<String, Refused>,
}

/// The writer's rows not yet committed: bounded while commits fail (module doc).
#[derive(Debug, Default)]
pub struct PendingRows {
    rows: VecDeque<AdapterEvent>,
    by_class: [usize; 3],
}

impl PendingRows {
    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Adds a row with no bound (normal group commit: the bound is the commit size). Every row
    /// the writer accepts passes here (also through [`Self::admit`]): an observation outside its
    /// code's physical range gets the status flag `implausible`
    /// ([`wardgate_adapters::plausibility`]), whatever adapter produced it.
    pub fn push(&mut self, mut ev: AdapterEvent) {
        if let AdapterEvent::Observation(o) = &mut ev {
            wardgate_adapters::plausibility::mark(o);
        }
        self.by_class[class_of(&ev) as usize] += 1;
        self.rows.push_back(ev);
    }

    /// Adds a row while commits fail, holding at most `max`; returns the row refused to make it
    /// fit, if any: the newest row of the lowest class, the incoming one included (an incoming
    /// row of the lowest class held is itself refused; a higher-class one replaces the newest
    /// held row of the lowest class).
    pub fn admit(&mut self, ev: AdapterEvent, max: usize) -> Option<AdapterEvent> {
        if self.rows.len() < max {
            self.push(ev);
            return None;
        }
        let incoming = class_of(&ev) as usize;
        match (0..3).find(|c| self.by_class[*c] > 0) {
            Some(low) if low < incoming => {
                let at = self
                    .rows
                    .iter()
                    .rposition(|r| class_of(r) as usize == low)?;
                let out = self.rows.remove(at)?;
                self.by_class[low] -= 1;
                self.push(ev);
                Some(out)
            }
            _ => Some(ev),
        }
    }

    /// Takes up to `n` of the oldest rows.
    fn take_front(&mut self, n: usize) -> Vec<AdapterEvent> {
        let n = n.min(self.rows.len());
        let rows: Vec<AdapterEvent> = self.rows.drain(..n).collect();
        for r in &rows {
            self.by_class[class_of(r) as usize] -= 1;
        }
        rows
    }

    /// Puts rows taken by [`Self::take_front`] back in front, in their order.
    fn put_front(&mut self, rows: Vec<AdapterEvent>) {
        for r in rows.into_iter().rev() {
            self.by_class[class_of(&r) as usize] += 1;
            self.rows.push_front(r);
        }
    }

    /// Counts per device of what is held (for the log when it is lost at shutdown).
    fn counts(&self) -> BTreeMap<String, Refused> {
        let mut m: BTreeMap<String, Refused> = BTreeMap::new();
        for r in &self.rows {
            let (d, t) = device_and_time(r);
            m.entry(d.to_owned()).or_default().add(class_of(r), t);
        }
        m
    }
}

fn device_and_time(r: &AdapterEvent) -> (&str, i64) {
    match r {
        AdapterEvent::Observation(o) => (o.device.as_str(), o.gateway_time),
        AdapterEvent::Event(e) => (e.device.as_str(), e.gateway_time),
    }
}

/// The `dropped` event's detail for refused rows: totals and span first, then one
/// `| <device> …` part per device, e.g. `reason=store_full waveform=120 numeric=8 events=0
/// total=128 first_ms=… last_ms=… | serial:bed1 waveform=120 numeric=8 events=0 total=128
/// first_ms=… last_ms=…`.
pub fn refused_detail(reason: &str, per: &BTreeMap<String, Refused>) -> String {
    let mut all = Refused::default();
    for r in per.values() {
        all.merge(r);
    }
    let part = |r: &Refused| {
        format!(
            "waveform={} numeric={} events={} total={} first_ms={} last_ms={}",
            r.waveform,
            r.numeric,
            r.events,
            r.total(),
            r.first_ms,
            r.last_ms
        )
    };
    let mut s = format!("reason={reason} {}", part(&all));
    for (d, r) in per {
        s.push_str(&format!(" | {d} {}", part(r)));
    }
    s
}

/// `device: N, …` for log lines.
fn per_device_line(per: &BTreeMap<String, Refused>) -> String {
    per.iter()
        .map(|(d, r)| format!("{d}: {}", r.total()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A run of failing commits.
struct Episode {
    since: tokio::time::Instant,
    since_ms: i64,
    full: bool,
    last_error: String,
    last_summary: tokio::time::Instant,
    refusing: bool,
}

/// Per-device counts of what the writer accepted.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceCounts {
    /// Observations committed to the store.
    pub observations: u64,
    /// Device events committed to the store.
    pub events: u64,
    /// Wall-clock Unix ms of the last commit with a sign of life from this device (0: never).
    /// For display only: liveness runs on a monotonic clock (the status loop in `health/`).
    #[serde(default)]
    pub last_seen_ms: i64,
    /// Rows that show the device itself is there: observations and `connected`, `battery`,
    /// `rssi` events — not the gateway's own `error`/`disconnected`/`rejected` reports about
    /// it. Liveness follows this count.
    #[serde(default)]
    pub activity: u64,
    /// Wall-clock Unix ms of the last commit with a clinical observation of this device (any
    /// but a battery level: a BLE device's battery is read at every connection), 0: never.
    /// The firmware relay's "in clinical use" reads it.
    #[serde(default)]
    pub last_clinical_ms: i64,
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
    /// The firmware revision the device reported at its last `connected` (BLE Device
    /// Information 0x2A26), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// When that `connected` was committed, Unix ms (0: never).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub firmware_ms: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
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
    /// Whether the store accepts rows; what was refused.
    pub store: Mutex<StoreState>,
}

/// Runs the writer until every sender of `rx` is dropped and the channel is drained.
pub async fn run_writer(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<AdapterEvent>,
    opts: WriterOptions,
    wake: Arc<Notify>,
    stats: Arc<WriterStats>,
) {
    let mut last_retention = tokio::time::Instant::now();
    // The commit pacing's token bucket (`commit_deadline`): full at the start.
    let mut tat = tokio::time::Instant::now();
    let mut buf = PendingRows::default();
    let mut closed = false;
    // Set while commits fail.
    let mut episode: Option<Episode> = None;
    // Refused rows per device not yet recorded in the store as a `dropped` event.
    let mut unreported: BTreeMap<String, Refused> = BTreeMap::new();
    let mut unreported_full = false;
    loop {
        if let Some(ep) = episode.as_mut() {
            // The store refused the last commit: keep draining the channel into the bounded
            // buffer (refusing beyond it) until the next attempt.
            let retry_at = tokio::time::Instant::now() + RETRY_EVERY;
            let max = opts.buffer_max_rows;
            while !closed {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ev) => {
                            if let Some(out) = buf.admit(ev, max) {
                                let (d, t) = device_and_time(&out);
                                unreported.entry(d.to_owned()).or_default().add(class_of(&out), t);
                                unreported_full |= ep.full;
                                stats.store.lock().unwrap_or_else(|p| p.into_inner()).refused_since_start += 1;
                                if !ep.refusing {
                                    ep.refusing = true;
                                    log::error!(
                                        "store: {} rows held in memory, the most it holds (buffer_max_rows): refusing new rows from now on (newest first, waveform before numerics before events), counted per device and reported upstream when the store accepts rows again",
                                        buf.len()
                                    );
                                }
                            }
                        }
                        None => closed = true,
                    },
                    _ = tokio::time::sleep_until(retry_at) => break,
                }
            }
            stats.last_progress_ms.store(mono_ms(), Ordering::Relaxed);
            if ep.last_summary.elapsed() >= SUMMARY_EVERY {
                ep.last_summary = tokio::time::Instant::now();
                let refused: u64 = unreported.values().map(Refused::total).sum();
                log::warn!(
                    "store still not accepting rows after {} s ({}): {} rows held in memory, {refused} refused so far ({})",
                    ep.since.elapsed().as_secs(),
                    ep.last_error,
                    buf.len(),
                    per_device_line(&unreported)
                );
            }
            publish(&stats, episode.as_ref(), &buf, &unreported);
        } else if buf.is_empty() && unreported.is_empty() {
            if closed {
                break;
            }
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
            // Commits are paced to one per `commit_interval` on average (bounds the fsync rate,
            // which wears an SD card); a row arriving after a quiet spell, or at about that rate,
            // is committed at once.
            let deadline = commit_deadline(tat, opts.commit_interval);
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
        // Refused rows are reported in the first commit after the store accepted one again.
        let with_report = episode.is_none() && !unreported.is_empty();
        let mut rows = buf.take_front(opts.commit_max_rows);
        if with_report {
            let reason = if unreported_full {
                "store_full"
            } else {
                "store_error"
            };
            rows.push(AdapterEvent::Event(
                wardgate_adapters::observation::DeviceEvent::new(
                    wardgate_adapters::observation::DeviceId("gateway".into()),
                    EventKind::Dropped,
                    refused_detail(reason, &unreported),
                ),
            ));
        }
        tat = commit_taken(tat, tokio::time::Instant::now(), opts.commit_interval);
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
                if let Some(ep) = episode.take() {
                    let refused: u64 = unreported.values().map(Refused::total).sum();
                    log::warn!(
                        "store accepts rows again after {} s; {} rows held in memory are being committed; {refused} rows were refused{}",
                        ep.since.elapsed().as_secs(),
                        buf.len() + rows.len(),
                        if refused > 0 {
                            format!(" ({}), reported upstream as a `dropped` event", per_device_line(&unreported))
                        } else {
                            String::new()
                        }
                    );
                }
                if with_report {
                    log::info!(
                        "store: recorded the refused rows as a `dropped` event: {}",
                        per_device_line(&unreported)
                    );
                    unreported.clear();
                    unreported_full = false;
                }
                publish(&stats, None, &buf, &unreported);
                // Every commit wakes the uplink: with room in its in-flight window it cuts a
                // batch of whatever is committed at once (send at once when idle); without,
                // the rows wait for an ack and go out together (adaptive batching).
                wake.notify_one();
                if last_retention.elapsed() >= opts.retention_every {
                    retention(&store, &mut last_retention, &opts).await;
                }
            }
            Ok((mut rows, Err(e))) => {
                stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                // The writer is alive and retrying: that is progress for the watchdog (a restart
                // would not cure a full disk and would lose the rows held in memory).
                stats.last_progress_ms.store(mono_ms(), Ordering::Relaxed);
                if with_report {
                    rows.pop();
                }
                buf.put_front(rows);
                let full = e.is_full();
                match episode.as_mut() {
                    None => {
                        log::error!(
                            "{e}; {}: {} rows held in memory and retried every {} s; beyond {} rows new rows are refused, counted and reported upstream; nothing already accepted is deleted",
                            if full { "the store is full" } else { "the store cannot accept rows" },
                            buf.len(),
                            RETRY_EVERY.as_secs(),
                            opts.buffer_max_rows
                        );
                        let now = tokio::time::Instant::now();
                        episode = Some(Episode {
                            since: now,
                            since_ms: now_ms(),
                            full,
                            last_error: e.to_string(),
                            last_summary: now,
                            refusing: false,
                        });
                    }
                    Some(ep) => {
                        let msg = e.to_string();
                        if full != ep.full {
                            log::error!("{msg}; the store still cannot accept rows");
                        }
                        ep.full |= full;
                        ep.last_error = msg;
                    }
                }
                publish(&stats, episode.as_ref(), &buf, &unreported);
                if closed {
                    let lost = buf.counts();
                    let n: u64 = lost.values().map(Refused::total).sum();
                    let mut all = unreported.clone();
                    for (d, r) in &lost {
                        all.entry(d.clone()).or_default().merge(r);
                    }
                    log::error!(
                        "shutting down while the store refuses rows: {n} rows held in memory are lost ({}); refused and unreported before: {}",
                        per_device_line(&lost),
                        refused_detail(if unreported_full { "store_full" } else { "store_error" }, &unreported)
                    );
                    break;
                }
            }
            Err(join) => {
                stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                log::error!("store writer task failed: {join}");
            }
        }
    }
    wake.notify_one();
}

/// Publishes the store state for status.
fn publish(
    stats: &WriterStats,
    ep: Option<&Episode>,
    buf: &PendingRows,
    unreported: &BTreeMap<String, Refused>,
) {
    let mut st = stats.store.lock().unwrap_or_else(|p| p.into_inner());
    st.failing_since_ms = ep.map(|e| e.since_ms);
    st.full = ep.is_some_and(|e| e.full);
    st.last_error = ep.map(|e| e.last_error.clone());
    st.buffered = buf.len() as u64;
    st.refused_unreported.clone_from(unreported);
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
                } else {
                    self.last_clinical_ms = committed_ms;
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
                    EventKind::Connected if e.firmware.is_some() => {
                        self.firmware = e.firmware.clone();
                        self.firmware_ms = committed_ms;
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod pacing_tests {
    use super::*;
    use tokio::time::Instant;

    /// Simulates the writer's pacing for rows arriving at `arrivals` (ms from start), each
    /// committed alone when the bucket allows: returns each row's wait and the commit starts.
    fn paced(arrivals: &[u64], interval_ms: u64) -> (Vec<u64>, Vec<u64>) {
        let t0 = Instant::now();
        let interval = Duration::from_millis(interval_ms);
        let mut tat = t0;
        let (mut waits, mut starts) = (Vec::new(), Vec::new());
        for a in arrivals {
            let at = t0 + Duration::from_millis(*a);
            let start = at.max(commit_deadline(tat, interval));
            tat = commit_taken(tat, start, interval);
            waits.push((start - at).as_millis() as u64);
            starts.push((start - t0).as_millis() as u64);
        }
        (waits, starts)
    }

    #[test]
    fn rows_at_the_commit_rate_with_jitter_never_wait() {
        // 50 readings/s with the writer's timer slop: each reading 1 ms late, then one early.
        let mut arrivals: Vec<u64> = (0..500).map(|k| 20 * k + (k % 7)).collect();
        arrivals.sort();
        let (waits, _) = paced(&arrivals, 20);
        assert!(waits.iter().all(|w| *w == 0), "{waits:?}");
    }

    #[test]
    fn a_flood_is_paced_to_one_commit_per_interval_after_the_burst() {
        let arrivals: Vec<u64> = (0..100).map(|k| k / 10).collect(); // 100 commits' worth in 10 ms
        let (_, starts) = paced(&arrivals, 20);
        // The burst goes at once, then one per interval.
        assert_eq!(&starts[..COMMIT_BURST as usize], &[0, 0, 0]);
        assert_eq!(starts[COMMIT_BURST as usize], 20);
        // In any window of t ms at most COMMIT_BURST + t / 20 commits start.
        for (i, s) in starts.iter().enumerate() {
            let within = starts[i..].iter().filter(|x| **x < s + 200).count() as u64;
            assert!(within <= u64::from(COMMIT_BURST) + 10, "{within} at {s}");
        }
        assert!(*starts.last().unwrap() >= 20 * (100 - u64::from(COMMIT_BURST)));
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
            waveform: None,
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
    fn every_row_the_writer_accepts_is_checked_for_plausibility() {
        let status = |rows: &PendingRows| -> Vec<Vec<String>> {
            rows.rows
                .iter()
                .map(|r| match r {
                    AdapterEvent::Observation(o) => o.status.clone(),
                    AdapterEvent::Event(_) => vec!["event".into()],
                })
                .collect()
        };
        let mut rows = PendingRows::default();
        rows.push(obs("serial:bed1", mdc::SPO2, 97.0));
        rows.push(obs("serial:bed1", mdc::SPO2, 127.0));
        rows.push(ev("serial:bed1", EventKind::Connected, ""));
        // While commits fail, rows come in through `admit`: checked the same way.
        assert!(rows
            .admit(obs("serial:bed1", mdc::SPO2, 101.0), 10)
            .is_none());
        assert_eq!(
            status(&rows),
            vec![
                vec![],
                vec!["implausible".to_string()],
                vec!["event".to_string()],
                vec!["implausible".to_string()],
            ]
        );
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
    fn the_firmware_a_device_reports_on_connecting_is_kept_until_it_reports_another() {
        let mut per = BTreeMap::new();
        let connected = |fw: Option<&str>| {
            let AdapterEvent::Event(e) = ev("ble:b", EventKind::Connected, "") else {
                unreachable!()
            };
            AdapterEvent::Event(e.with_firmware(fw))
        };
        count_committed(&mut per, &[connected(Some(" 2.1.0 "))], 1_000);
        assert_eq!(
            (per["ble:b"].firmware.as_deref(), per["ble:b"].firmware_ms),
            (Some("2.1.0"), 1_000)
        );
        // A connection whose read failed (no revision) keeps the last one known.
        count_committed(&mut per, &[connected(None), connected(Some(""))], 2_000);
        assert_eq!(per["ble:b"].firmware.as_deref(), Some("2.1.0"));
        count_committed(&mut per, &[connected(Some("2.2.0"))], 3_000);
        assert_eq!(
            (per["ble:b"].firmware.as_deref(), per["ble:b"].firmware_ms),
            (Some("2.2.0"), 3_000)
        );
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
        // A battery level is no clinical data: it does not make a device "in use".
        let battery_only = counted(&[obs("b", mdc::BATTERY_CHARGE, 80.0)], 1);
        assert_eq!(battery_only["b"].last_clinical_ms, 0);
        assert!(battery_only["b"].last_seen_ms > 0);
        assert!(counted(&[obs("c", mdc::SPO2, 97.0)], 1)["c"].last_clinical_ms > 0);
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
