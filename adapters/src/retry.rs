//! The one retry policy: [`Backoff`] (capped exponential with equal jitter) for every reconnect
//! and restart, and [`RateLimit`] for every "at most N events per window, count the rest"
//! limiter. Pure: no I/O, no clock of its own (the caller passes `now`), randomness injectable.
//!
//! Who uses what (all constants are here):
//!
//! | user | first wait | cap | reset after |
//! |---|---|---|---|
//! | serial port reopen (the serial adapter) | [`DEVICE_INITIAL`] | `max_backoff_s` | [`DEVICE_STABLE`] connected |
//! | BLE device reconnect (the BLE adapter) | [`DEVICE_INITIAL`] | `max_backoff_s` | [`DEVICE_STABLE`] connected |
//! | adapter restart (gateway supervisor) | [`RESTART_INITIAL`] | [`RESTART_CAP`] | [`RESTART_STABLE`] running |
//! | uplink reconnect (gateway uplink) | [`RESTART_INITIAL`] | `backoff_max_s` | [`UPLINK_STABLE`] connected |
//!
//! Decision (EXAMPLES §9): delays double from the first wait to the cap, each drawn uniformly
//! from `[d/2, d]` ("equal jitter": half fixed, half random) so a ward of adapters or gateways
//! restarted together does not retry in lock step; every retry waits (no busy loop).
//! Decoder `error` events are limited to [`MAX_ERROR_EVENTS_PER_SEC`] per device and second;
//! refused BLE devices to `rejected_per_minute` a minute.

use std::time::{Duration, Instant};

/// First wait before reopening a device link (serial port, BLE connection), before jitter.
pub const DEVICE_INITIAL: Duration = Duration::from_millis(250);
/// A device connection that lasted this long resets its backoff.
pub const DEVICE_STABLE: Duration = Duration::from_secs(10);
/// First wait before restarting a failed adapter or reconnecting the uplink, before jitter.
pub const RESTART_INITIAL: Duration = Duration::from_millis(500);
/// Longest wait before restarting a failed adapter.
pub const RESTART_CAP: Duration = Duration::from_secs(30);
/// An adapter run that lasted longer than this resets the restart backoff.
pub const RESTART_STABLE: Duration = Duration::from_secs(60);
/// An uplink session that lasted longer than this resets the reconnect backoff.
pub const UPLINK_STABLE: Duration = Duration::from_secs(30);
/// Most decoder `error` events per device per second; the rest are counted (and summarised).
pub const MAX_ERROR_EVENTS_PER_SEC: u32 = 5;
/// Largest doubling exponent: `first · 2^20` exceeds any cap in use.
const MAX_EXPONENT: u32 = 20;

/// Capped exponential backoff with equal jitter: the `n`-th wait (0-based, since the last
/// [`reset`](Backoff::reset)) is `d = min(cap, first · 2^n)` scaled into `[d/2, d]` uniformly.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Waits start at `first` and never exceed `cap` (a cap below `first` counts as `first`).
    /// Randomness from a fresh seed; see [`Backoff::with_rng`].
    pub fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            first,
            cap: cap.max(first),
            attempt: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// The backoff of a device link (serial port, BLE device): first wait [`DEVICE_INITIAL`],
    /// capped at `cap`.
    pub fn device(cap: Duration) -> Self {
        Backoff::new(DEVICE_INITIAL, cap)
    }

    /// Uses `rng` for the jitter (a seeded one makes the delays reproducible in tests).
    pub fn with_rng(mut self, rng: fastrand::Rng) -> Self {
        self.rng = rng;
        self
    }

    /// The next wait; counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.attempt.min(MAX_EXPONENT);
        self.attempt = self.attempt.saturating_add(1);
        let d = self.first.saturating_mul(factor).min(self.cap);
        let half = d / 2;
        let span = (d - half).as_nanos().min(u64::MAX as u128) as u64;
        half + Duration::from_nanos(self.rng.u64(0..=span))
    }

    /// Back to the first wait (after a connection or run that lasted).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Waits handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// At most `limit` events per `window`; the rest are counted so one summary can say how many
/// were held back. The window starts at the first event and restarts at the first event (or
/// summary) after it is over.
#[derive(Debug, Clone)]
pub struct RateLimit {
    limit: u32,
    window: Duration,
    start: Option<Instant>,
    sent: u32,
    suppressed: u64,
}

impl RateLimit {
    /// At most `limit` events per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimit {
            limit,
            window,
            start: None,
            sent: 0,
            suppressed: 0,
        }
    }

    /// The decoder error-event limit: [`MAX_ERROR_EVENTS_PER_SEC`] per second.
    pub fn error_events() -> Self {
        RateLimit::new(MAX_ERROR_EVENTS_PER_SEC, Duration::from_secs(1))
    }

    fn over(&self, now: Instant) -> bool {
        self.start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window)
    }

    fn restart(&mut self, now: Instant) {
        self.start = Some(now);
        self.sent = 0;
    }

    /// Whether one more event may go out at `now`; a refused one is counted as suppressed.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.over(now) {
            self.restart(now);
        }
        if self.sent < self.limit {
            self.sent += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// How many events were held back, whether their window is over or not (at the end of a
    /// stream, so that the last of them are summarised too); `None` when none were.
    pub fn take_all_suppressed(&mut self) -> Option<u64> {
        (self.suppressed > 0).then(|| std::mem::take(&mut self.suppressed))
    }

    /// How many events were held back, once the window they belong to is over (then the count
    /// starts again from zero); `None` while the window runs or when nothing was held back.
    pub fn take_suppressed(&mut self, now: Instant) -> Option<u64> {
        if self.suppressed > 0 && self.over(now) {
            self.restart(now);
            return Some(std::mem::take(&mut self.suppressed));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(first: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff::new(first, cap).with_rng(fastrand::Rng::with_seed(seed))
    }

    #[test]
    fn backoff_doubles_with_equal_jitter_and_is_capped() {
        let ms = Duration::from_millis;
        for seed in 0..200 {
            let mut b = seeded(DEVICE_INITIAL, Duration::from_secs(30), seed);
            let d: Vec<_> = (0..40).map(|_| b.next_delay()).collect();
            // Attempt n waits in [d/2, d] with d = 250 ms · 2^n.
            for (n, lo, hi) in [(0, 125, 250), (1, 250, 500), (3, 1000, 2000)] {
                assert!(d[n] >= ms(lo) && d[n] <= ms(hi), "attempt {n}: {:?}", d[n]);
            }
            // Capped: never above the cap, never below half of it once it is reached.
            for x in &d[7..] {
                assert!(*x >= Duration::from_secs(15) && *x <= Duration::from_secs(30));
            }
            assert_eq!(b.attempts(), 40);
            b.reset();
            assert!(b.next_delay() <= ms(250));
        }
        // Huge attempt counts neither overflow nor panic.
        let mut b = seeded(RESTART_INITIAL, RESTART_CAP, 7);
        for _ in 0..100 {
            assert!(b.next_delay() <= RESTART_CAP);
        }
        // A cap below the first wait counts as the first wait.
        let mut b = seeded(ms(500), ms(100), 1);
        assert!(b.next_delay() <= ms(500));
        // A small cap is honoured.
        let mut b = Backoff::device(Duration::from_secs(1));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
    }

    #[test]
    fn backoff_jitter_is_reproducible_and_spread() {
        let cap = Duration::from_secs(30);
        let a: Vec<_> = {
            let mut b = seeded(DEVICE_INITIAL, cap, 42);
            (0..10).map(|_| b.next_delay()).collect()
        };
        let b: Vec<_> = {
            let mut b = seeded(DEVICE_INITIAL, cap, 42);
            (0..10).map(|_| b.next_delay()).collect()
        };
        assert_eq!(a, b, "same seed, same delays");
        // Jitter spreads a ward's retries: 100 first waits are not all equal and cover the range.
        let firsts: Vec<_> = (0..100)
            .map(|s| seeded(DEVICE_INITIAL, cap, s).next_delay())
            .collect();
        let min = firsts.iter().min().unwrap();
        let max = firsts.iter().max().unwrap();
        assert!(*min < Duration::from_millis(150) && *max > Duration::from_millis(225));
    }

    #[test]
    fn rate_limit_allows_a_few_per_window_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut l = RateLimit::error_events();
        let allowed = (0..20).filter(|_| l.allow(t0)).count();
        assert_eq!(allowed, MAX_ERROR_EVENTS_PER_SEC as usize);
        assert_eq!(l.take_suppressed(t0 + Duration::from_millis(500)), None);
        assert_eq!(l.take_suppressed(t0 + Duration::from_secs(1)), Some(15));
        assert_eq!(l.take_suppressed(t0 + Duration::from_secs(3)), None);
        assert!(l.allow(t0 + Duration::from_secs(1)));
        // A new window after the old one is over, without a summary in between.
        let mut l = RateLimit::new(2, Duration::from_secs(60));
        assert!(l.allow(t0) && l.allow(t0));
        assert!(!l.allow(t0 + Duration::from_secs(59)));
        assert!(l.allow(t0 + Duration::from_secs(60)));
        assert_eq!(l.take_suppressed(t0 + Duration::from_secs(60)), None);
        assert_eq!(l.take_suppressed(t0 + Duration::from_secs(120)), Some(1));
    }
}
