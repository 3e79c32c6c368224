//! Asset-tag presence aggregation: many advertisements in, one summary per tag and window out.
//!
//! A tag advertising at 10 Hz must not become 10 observations a second. [`PresenceAggregator`]
//! collects the RSSI samples of each tag (keyed by a device key such as its MAC or beacon id)
//! over a window that opens with the tag's first sample, and [`PresenceAggregator::drain_due`]
//! returns one [`PresenceSummary`] per closed window: sample count and RSSI minimum, median and
//! maximum (dBm). A window without samples emits nothing; a tag silent for a whole window
//! simply has no open window.
//!
//! Pure and I/O-free: the caller passes `std::time::Instant`s (monotonic time only; wall-clock
//! steps cannot split or merge windows), so tests drive time by hand.
//!
//! Bounded memory:
//! - At most `max_tags` tags have an open window. A new tag beyond that evicts the **least
//!   recently heard** tag; its open window is discarded and counted
//!   ([`PresenceAggregator::evictions`]). Many evictions mean `max_tags` is too small for the
//!   ward (or someone is flooding advertisements).
//! - RSSI is kept as an exact histogram per window: BLE RSSI is a signed byte (HCI: −127..+20
//!   dBm, 127 = not available), so samples are clamped to −128..=127 and a window holds at most
//!   256 distinct values whatever its sample count. The median is exact, not a reservoir
//!   estimate. In practice a tag's RSSI spans a few tens of values.
//! - Summaries of windows closed by a new sample wait for the next drain; at most `max_tags` of
//!   them are kept (the oldest is dropped and counted in
//!   [`PresenceAggregator::dropped_summaries`]), so a caller that never drains still has a bound.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Shortest window [`PresenceAggregator::new`] accepts (shorter values are raised to it).
pub const MIN_WINDOW: Duration = Duration::from_millis(1);
/// Longest window [`PresenceAggregator::new`] accepts (longer values are lowered to it).
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// One tag's presence over one window.
#[derive(Clone, Debug, PartialEq)]
pub struct PresenceSummary {
    /// The device key given to [`PresenceAggregator::record`].
    pub key: String,
    /// When the window opened (the tag's first sample in it).
    pub window_start: Instant,
    /// When the window closes (`window_start + window`). For a window cut short by
    /// [`PresenceAggregator::flush_all`], still the nominal end: see `partial`.
    pub window_end: Instant,
    /// Number of samples (advertisements heard) in the window.
    pub count: u64,
    /// Weakest RSSI, dBm.
    pub rssi_min: i16,
    /// Median RSSI, dBm (mean of the two middle samples for an even count).
    pub rssi_median: f64,
    /// Strongest RSSI, dBm.
    pub rssi_max: i16,
    /// The last sample's time.
    pub last_heard: Instant,
    /// `true` when the window had not closed yet (shutdown flush).
    pub partial: bool,
}

/// An open window.
#[derive(Clone, Debug)]
struct Window {
    start: Instant,
    last_heard: Instant,
    count: u64,
    /// RSSI value (clamped to i8) → samples; at most 256 entries.
    histogram: BTreeMap<i8, u32>,
    /// Position in the recency index.
    touch: u64,
}

impl Window {
    fn new(now: Instant, touch: u64) -> Window {
        Window {
            start: now,
            last_heard: now,
            count: 0,
            histogram: BTreeMap::new(),
            touch,
        }
    }

    fn add(&mut self, rssi: i16, now: Instant) {
        let v = rssi.clamp(i8::MIN as i16, i8::MAX as i16) as i8;
        let c = self.histogram.entry(v).or_insert(0);
        *c = c.saturating_add(1);
        self.count = self.count.saturating_add(1);
        if now > self.last_heard {
            self.last_heard = now;
        }
    }

    /// The `k`-th smallest sample (0-based), from the histogram.
    fn nth(&self, k: u64) -> i16 {
        let mut seen = 0u64;
        for (&v, &c) in &self.histogram {
            seen += c as u64;
            if seen > k {
                return v as i16;
            }
        }
        self.histogram.keys().next_back().map_or(0, |&v| v as i16)
    }

    fn summary(&self, key: String, window: Duration, partial: bool) -> PresenceSummary {
        // Counts saturate at u32/u64 maxima only after years at 10 Hz; the histogram sum is
        // the authority for the median.
        let n: u64 = self.histogram.values().map(|&c| c as u64).sum();
        let rssi_median = if n == 0 {
            0.0
        } else if n % 2 == 1 {
            self.nth(n / 2) as f64
        } else {
            (self.nth(n / 2 - 1) as f64 + self.nth(n / 2) as f64) / 2.0
        };
        PresenceSummary {
            key,
            window_start: self.start,
            window_end: self.start.checked_add(window).unwrap_or(self.start),
            count: self.count,
            rssi_min: self.histogram.keys().next().map_or(0, |&v| v as i16),
            rssi_median,
            rssi_max: self.histogram.keys().next_back().map_or(0, |&v| v as i16),
            last_heard: self.last_heard,
            partial,
        }
    }
}

/// Aggregates RSSI samples per tag into one [`PresenceSummary`] per window (see the module
/// documentation for windows and memory bounds).
#[derive(Clone, Debug)]
pub struct PresenceAggregator {
    window: Duration,
    max_tags: usize,
    open: HashMap<String, Window>,
    /// Recency index: touch number → key; the first entry is the least recently heard.
    recency: BTreeMap<u64, String>,
    next_touch: u64,
    ready: Vec<PresenceSummary>,
    evictions: u64,
    dropped_summaries: u64,
}

impl PresenceAggregator {
    /// An aggregator with windows of `window` (clamped to [`MIN_WINDOW`]..=[`MAX_WINDOW`])
    /// tracking at most `max_tags` tags at once (at least 1).
    pub fn new(window: Duration, max_tags: usize) -> PresenceAggregator {
        PresenceAggregator {
            window: window.clamp(MIN_WINDOW, MAX_WINDOW),
            max_tags: max_tags.max(1),
            open: HashMap::new(),
            recency: BTreeMap::new(),
            next_touch: 0,
            ready: Vec::new(),
            evictions: 0,
            dropped_summaries: 0,
        }
    }

    /// The window length in use.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The tag limit in use.
    pub fn max_tags(&self) -> usize {
        self.max_tags
    }

    /// Tags with an open window (≤ [`PresenceAggregator::max_tags`]).
    pub fn tracked(&self) -> usize {
        self.open.len()
    }

    /// Open windows discarded to admit a new tag when `max_tags` were tracked.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Closed-window summaries dropped because more than `max_tags` waited for a drain.
    pub fn dropped_summaries(&self) -> u64 {
        self.dropped_summaries
    }

    /// Records one advertisement of tag `key` heard at `rssi` dBm at `now`.
    ///
    /// If the tag's window has ended by `now`, that window's summary is queued for the next
    /// [`drain_due`](PresenceAggregator::drain_due) and a new window opens at `now`. A `now`
    /// earlier than the window start (a caller mixing clocks) counts into the open window.
    pub fn record(&mut self, key: &str, rssi: i16, now: Instant) {
        let touch = self.next_touch;
        self.next_touch += 1;
        if let Some(w) = self.open.get_mut(key) {
            if is_due(w.start, self.window, now) {
                let done = w.summary(key.to_string(), self.window, false);
                self.recency.remove(&w.touch);
                *w = Window::new(now, touch);
                self.recency.insert(touch, key.to_string());
                w.add(rssi, now);
                self.push_ready(done);
            } else {
                self.recency.remove(&w.touch);
                w.touch = touch;
                self.recency.insert(touch, key.to_string());
                w.add(rssi, now);
            }
            return;
        }
        if self.open.len() >= self.max_tags {
            if let Some((_, oldest)) = self.recency.pop_first() {
                self.open.remove(&oldest);
                self.evictions += 1;
            }
        }
        let mut w = Window::new(now, touch);
        w.add(rssi, now);
        self.open.insert(key.to_string(), w);
        self.recency.insert(touch, key.to_string());
    }

    /// Summaries of every window closed at `now` (`window_start + window <= now`), oldest
    /// window first (then by key). Their tags stop being tracked until heard again.
    pub fn drain_due(&mut self, now: Instant) -> Vec<PresenceSummary> {
        let window = self.window;
        let due: Vec<String> = self
            .open
            .iter()
            .filter(|(_, w)| is_due(w.start, window, now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = std::mem::take(&mut self.ready);
        for key in due {
            if let Some(w) = self.open.remove(&key) {
                self.recency.remove(&w.touch);
                out.push(w.summary(key, window, false));
            }
        }
        sort(&mut out);
        out
    }

    /// Every queued summary and every open window (marked `partial`), for shutdown. Leaves
    /// the aggregator empty (the counters stay).
    pub fn flush_all(&mut self) -> Vec<PresenceSummary> {
        let window = self.window;
        let mut out = std::mem::take(&mut self.ready);
        for (key, w) in self.open.drain() {
            out.push(w.summary(key, window, true));
        }
        self.recency.clear();
        sort(&mut out);
        out
    }

    fn push_ready(&mut self, s: PresenceSummary) {
        if self.ready.len() >= self.max_tags {
            self.ready.remove(0);
            self.dropped_summaries += 1;
        }
        self.ready.push(s);
    }
}

fn is_due(start: Instant, window: Duration, now: Instant) -> bool {
    now.checked_duration_since(start)
        .is_some_and(|d| d >= window)
}

fn sort(v: &mut [PresenceSummary]) {
    v.sort_by(|a, b| {
        a.window_start
            .cmp(&b.window_start)
            .then_with(|| a.key.cmp(&b.key))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ten_hz_for_three_windows_gives_three_summaries() {
        let t0 = Instant::now();
        let mut a = PresenceAggregator::new(Duration::from_secs(10), 100);
        let mut out = Vec::new();
        // 10 Hz for 30 s; RSSI cycles −70, −60, −65, −80, −55 (median −65).
        let pattern = [-70, -60, -65, -80, -55];
        for i in 0..300u64 {
            let now = t0 + ms(i * 100);
            a.record("tag-1", pattern[(i % 5) as usize], now);
            out.extend(a.drain_due(now));
        }
        out.extend(a.drain_due(t0 + ms(30_000)));
        assert_eq!(out.len(), 3, "{out:?}");
        for (k, s) in out.iter().enumerate() {
            assert_eq!(s.key, "tag-1");
            assert_eq!(s.window_start, t0 + ms(k as u64 * 10_000));
            assert_eq!(s.window_end, t0 + ms((k as u64 + 1) * 10_000));
            assert_eq!(s.count, 100);
            assert_eq!((s.rssi_min, s.rssi_max), (-80, -55));
            assert_eq!(s.rssi_median, -65.0);
            assert!(!s.partial);
        }
        assert_eq!(a.tracked(), 0);
        assert!(a.drain_due(t0 + ms(60_000)).is_empty());
    }

    #[test]
    fn median_even_count_and_clamping() {
        let t0 = Instant::now();
        let mut a = PresenceAggregator::new(ms(1000), 4);
        for (i, r) in [-90, -40, -50, -60].into_iter().enumerate() {
            a.record("k", r, t0 + ms(i as u64));
        }
        a.record("loud", 300, t0);
        a.record("loud", -300, t0);
        let s = a.drain_due(t0 + ms(1000));
        assert_eq!(s.len(), 2);
        let k = s.iter().find(|s| s.key == "k").unwrap();
        assert_eq!(k.rssi_median, -55.0);
        assert_eq!(k.last_heard, t0 + ms(3));
        let l = s.iter().find(|s| s.key == "loud").unwrap();
        assert_eq!((l.rssi_min, l.rssi_max), (-128, 127));
    }

    #[test]
    fn a_window_without_samples_emits_nothing() {
        let t0 = Instant::now();
        let mut a = PresenceAggregator::new(ms(1000), 10);
        a.record("tag", -60, t0);
        // Silent for windows 2 and 3, heard again in window 4.
        assert_eq!(a.drain_due(t0 + ms(1500)).len(), 1);
        assert!(a.drain_due(t0 + ms(2500)).is_empty());
        a.record("tag", -61, t0 + ms(3200));
        assert!(a.drain_due(t0 + ms(3300)).is_empty());
        let s = a.drain_due(t0 + ms(4200));
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].window_start, s[0].count), (t0 + ms(3200), 1));
        // Nothing recorded at all: nothing out.
        let mut b = PresenceAggregator::new(ms(1000), 10);
        assert!(b.drain_due(t0 + ms(10_000)).is_empty());
        assert!(b.flush_all().is_empty());
    }

    #[test]
    fn sample_after_window_end_closes_it_without_a_drain() {
        let t0 = Instant::now();
        let mut a = PresenceAggregator::new(ms(1000), 10);
        a.record("tag", -60, t0);
        a.record("tag", -62, t0 + ms(999));
        a.record("tag", -70, t0 + ms(1000)); // opens window 2
        a.record("tag", -72, t0 + ms(5000)); // window 2 ended long ago: window 3 opens here
        let s = a.drain_due(t0 + ms(5001));
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].count, s[0].rssi_median), (2, -61.0));
        assert_eq!((s[1].window_start, s[1].count), (t0 + ms(1000), 1));
        let f = a.flush_all();
        assert_eq!(f.len(), 1);
        assert!(f[0].partial);
        assert_eq!(f[0].window_start, t0 + ms(5000));
        assert_eq!(a.tracked(), 0);
    }

    #[test]
    fn thousands_of_keys_stay_within_the_cap() {
        let t0 = Instant::now();
        let mut a = PresenceAggregator::new(Duration::from_secs(10), 500);
        for i in 0..20_000u64 {
            a.record(&format!("tag-{i}"), -((i % 90) as i16), t0 + ms(i / 10));
            assert!(a.tracked() <= 500);
        }
        assert_eq!(a.tracked(), 500);
        assert_eq!(a.evictions(), 19_500);
        // The survivors are the 500 most recently heard.
        let s = a.flush_all();
        assert_eq!(s.len(), 500);
        assert!(s
            .iter()
            .all(|s| s.key["tag-".len()..].parse::<u64>().unwrap() >= 19_500));
        // Queued summaries are bounded too, even if nobody drains.
        let mut b = PresenceAggregator::new(ms(1), 3);
        for i in 0..1000u64 {
            b.record(&format!("k{}", i % 3), -50, t0 + ms(i));
        }
        assert!(b.flush_all().len() <= 3 + 3);
        assert!(b.dropped_summaries() > 0);
    }

    #[test]
    fn recently_heard_tag_survives_eviction() {
        let t0 = Instant::now();
        let mut a = PresenceAggregator::new(Duration::from_secs(10), 2);
        a.record("a", -50, t0);
        a.record("b", -50, t0 + ms(1));
        a.record("a", -50, t0 + ms(2)); // a is now the most recent
        a.record("c", -50, t0 + ms(3)); // evicts b
        let keys: Vec<String> = a.flush_all().into_iter().map(|s| s.key).collect();
        assert_eq!(keys, ["a", "c"]);
        assert_eq!(a.evictions(), 1);
    }

    #[test]
    fn extreme_inputs_never_panic() {
        let t0 = Instant::now();
        let mut rng = fastrand::Rng::with_seed(0x7A6);
        for window in [Duration::ZERO, ms(1), Duration::MAX] {
            let mut a = PresenceAggregator::new(window, rng.usize(0..8));
            for _ in 0..5000 {
                let now = t0 + ms(rng.u64(0..100_000));
                let key = format!("{}", rng.u8(0..20));
                a.record(&key, rng.i16(..), now);
                if rng.u8(..) < 20 {
                    for s in a.drain_due(now) {
                        assert!(s.rssi_min as f64 <= s.rssi_median);
                        assert!(s.rssi_median <= s.rssi_max as f64);
                        assert!(s.count >= 1);
                    }
                }
            }
            let _ = a.flush_all();
        }
    }
}
