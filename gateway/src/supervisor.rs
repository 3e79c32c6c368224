//! Runs each adapter as a supervised task: restart with capped exponential backoff and jitter,
//! count and report failures, never let one adapter take the daemon down.
//!
//! Decision (EXAMPLES §9): delays double from 0.5 s to a cap (adapters 30 s, uplink
//! `backoff_max_s`), each drawn uniformly from [d/2, d] ("equal jitter") so a ward of gateways
//! restarted together does not reconnect in lockstep; a run that lasted 60 s resets the delay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use wardgate_adapters::observation::{now_ms, DeviceEvent, DeviceId, EventKind};
use wardgate_adapters::{Adapter, AdapterContext, AdapterError, AdapterEvent};

/// Capped exponential backoff with equal jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays start at `base` and never exceed `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }
    /// The next delay: `min(cap, base·2^n)` scaled by a random factor in [0.5, 1].
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        self.attempt = self.attempt.saturating_add(1);
        exp.min(self.cap).mul_f64(0.5 + fastrand::f64() * 0.5)
    }
    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Failure counters of one supervised adapter.
#[derive(Debug, Default)]
pub struct AdapterHealth {
    /// Times the adapter's run returned an error or panicked.
    pub failures: AtomicU64,
    /// Times it was restarted.
    pub restarts: AtomicU64,
}

/// Supervises `adapter` until `shutdown`: runs it, and on error or panic reports an `error` event
/// for `gateway` and restarts it after a backoff.
pub async fn supervise(
    adapter: Arc<dyn Adapter>,
    out: mpsc::Sender<AdapterEvent>,
    mut shutdown: watch::Receiver<bool>,
    clock_synced: watch::Receiver<bool>,
    health: Arc<AdapterHealth>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let started = Instant::now();
        let a = adapter.clone();
        let mut ctx = AdapterContext {
            id: a.name().to_owned(),
            out: out.clone(),
            shutdown: shutdown.clone(),
            clock_synced: clock_synced.clone(),
        };
        let result = tokio::spawn(async move { a.run(&mut ctx).await }).await;
        if *shutdown.borrow() {
            return;
        }
        let reason = match result {
            Ok(Ok(())) => "returned".to_owned(),
            Ok(Err(AdapterError::ChannelClosed)) => return,
            Ok(Err(e)) => e.to_string(),
            Err(join) => format!("panicked: {join}"),
        };
        health.failures.fetch_add(1, Ordering::Relaxed);
        if started.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        let wait = backoff.next_delay();
        log::warn!(
            "adapter {} {reason}; restarting in {:.1}s",
            adapter.name(),
            wait.as_secs_f64()
        );
        let ev = AdapterEvent::Event(DeviceEvent {
            device: DeviceId(format!("adapter:{}", adapter.name())),
            kind: EventKind::Error,
            detail: format!("adapter {reason}; restarting"),
            gateway_time: now_ms(),
        });
        if out.send(ev).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        health.restarts.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stays_under_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[2] >= Duration::from_millis(200) && d[2] <= Duration::from_millis(400));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(1)));
        assert!(d[7] >= Duration::from_millis(500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
