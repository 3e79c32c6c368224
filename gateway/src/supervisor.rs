//! Runs each adapter as a supervised task: restart with capped exponential backoff and jitter,
//! count and report failures, never let one adapter take the daemon down.
//!
//! The policy (first wait, cap, reset, equal jitter) and its constants are
//! `wardgate_adapters::retry`'s, shared with the uplink, serial and BLE reconnects.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use wardgate_adapters::observation::{now_ms, DeviceEvent, DeviceId, EventKind};
use wardgate_adapters::retry::{Backoff, RESTART_CAP, RESTART_INITIAL, RESTART_STABLE};
use wardgate_adapters::{Adapter, AdapterContext, AdapterError, AdapterEvent};

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
    let mut backoff = Backoff::new(RESTART_INITIAL, RESTART_CAP);
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
        if started.elapsed() > RESTART_STABLE {
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
            presence: None,
            firmware: None,
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
