//! Time without an RTC (DESIGN §11): is the system clock synchronised, and by how much did it
//! move when it became so?
//!
//! A Raspberry Pi boots with the time it last saved (fake-hwclock) or 1970, and NTP corrects it
//! some time later — possibly hours later on a ward network. Until then `gateway_time` is only
//! as good as the unsynchronised clock: observations are stamped `time_quality = "unsynced"`
//! (adapters read [`crate::system::clock`]'s watch through `AdapterContext::clock_synced`).
//!
//! Sources ([`ClockSource`], `[gateway] clock` in the config):
//! - `kernel` (default): the kernel's NTP state from `adjtimex(2)` with no modes set (read-only):
//!   synchronised unless the call returns `TIME_ERROR` or the status has `STA_UNSYNC` — the same
//!   test systemd's `timedatectl` (NTPSynchronized) makes. systemd-timesyncd, chrony and ntpd all
//!   clear `STA_UNSYNC` once they discipline the clock. Under the shipped unit
//!   (`ProtectClock=yes`, whose seccomp filter refuses adjtimex even for reading) it falls back to
//!   systemd-timesyncd's flag file [`TIMESYNCD_FLAG`]; with chrony or ntpd there, set
//!   `clock = "synced"` or a `file:` their hooks maintain.
//! - `synced`: assume it is (a box with a real RTC and no NTP).
//! - `file:PATH`: synchronised while PATH exists (e.g. `/run/systemd/timesync/synchronized`,
//!   which systemd-timesyncd touches on sync; also how the tests drive it).
//!
//! When the clock becomes synchronised, [`ClockWatch`] reports the **step**: the difference
//! between the wall clock now and what the last unsynchronised reading plus the monotonic time
//! elapsed since predicts. The daemon adds it to the `gateway_time` of rows stamped while
//! unsynchronised that are still in the store and not yet in a batch ([`crate::store::Store::correct_unsynced`]).

use std::time::Instant;

use crate::config::ClockSource;

impl ClockSource {
    /// Whether the clock is synchronised now.
    pub fn synced(&self) -> bool {
        match self {
            ClockSource::Kernel => kernel_synced().unwrap_or_else(|| {
                // The unit's ProtectClock=yes filters adjtimex(2) even for reading (EPERM):
                // then systemd-timesyncd's flag file says it.
                static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    log::info!("clock: adjtimex(2) is not permitted here (systemd ProtectClock=); using {TIMESYNCD_FLAG} instead");
                }
                std::path::Path::new(TIMESYNCD_FLAG).exists()
            }),
            ClockSource::Synced => true,
            ClockSource::File(p) => p.exists(),
        }
    }
}

/// The file systemd-timesyncd creates once it has synchronised the clock.
pub const TIMESYNCD_FLAG: &str = "/run/systemd/timesync/synchronized";

/// `adjtimex(2)` with `modes = 0` (query only): `Some(false)` when the kernel reports
/// `TIME_ERROR` or `STA_UNSYNC`; `None` when the call is refused (a seccomp filter such as
/// systemd's `ProtectClock=` returns EPERM even for reading).
#[allow(unsafe_code)]
fn kernel_synced() -> Option<bool> {
    // SAFETY: `timex` is plain old data, zero-initialised; with `modes = 0` adjtimex only
    // writes the current state into it and changes nothing (no privilege needed).
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::adjtimex(&mut t) };
    if r < 0 {
        return None;
    }
    Some(r != libc::TIME_ERROR && t.status & libc::STA_UNSYNC == 0)
}

/// Wall-clock milliseconds since the Unix epoch (0 before 1970).
fn wall_ms() -> i64 {
    wardgate_adapters::observation::now_ms()
}

/// A change of the synchronisation state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockChange {
    /// The clock became synchronised; `step_ms` = how far the wall clock moved beyond the
    /// monotonic time that passed (positive: it jumped forward).
    Synced {
        /// The step, milliseconds.
        step_ms: i64,
    },
    /// The clock is no longer known to be synchronised.
    Unsynced,
}

/// Follows the clock: call [`ClockWatch::poll`] every few seconds.
#[derive(Debug)]
pub struct ClockWatch {
    source: ClockSource,
    synced: bool,
    /// The last (wall, monotonic) reading taken while unsynchronised.
    last_unsynced: Option<(i64, Instant)>,
}

impl ClockWatch {
    /// Starts following `source`; [`Self::synced`] is its state now.
    pub fn new(source: ClockSource) -> ClockWatch {
        let synced = source.synced();
        ClockWatch {
            last_unsynced: (!synced).then(|| (wall_ms(), Instant::now())),
            source,
            synced,
        }
    }

    /// Whether the clock was synchronised at the last poll.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Reads the state; returns a change, if any.
    pub fn poll(&mut self) -> Option<ClockChange> {
        self.observe(self.source.synced(), wall_ms(), Instant::now())
    }

    /// [`Self::poll`] with the readings given (pure; unit-tested).
    pub fn observe(&mut self, synced: bool, wall: i64, mono: Instant) -> Option<ClockChange> {
        match (self.synced, synced) {
            (false, true) => {
                self.synced = true;
                let step_ms = self
                    .last_unsynced
                    .take()
                    .map(|(w, m)| wall - (w + mono.saturating_duration_since(m).as_millis() as i64))
                    .unwrap_or(0);
                Some(ClockChange::Synced { step_ms })
            }
            (true, false) => {
                self.synced = false;
                self.last_unsynced = Some((wall, mono));
                Some(ClockChange::Unsynced)
            }
            (false, false) => {
                self.last_unsynced = Some((wall, mono));
                None
            }
            (true, true) => None,
        }
    }
}

/// The clock as the daemon shares it: the adapters read [`SharedClock::subscribe`]; the status
/// loop and the uplink call [`SharedClock::poll`] (the uplink right before it cuts a new batch,
/// so rows stamped before a synchronisation are corrected before they can leave in a batch, even
/// when the uplink reconnects the moment the clock is set).
pub struct SharedClock {
    inner: std::sync::Mutex<Inner>,
    /// The source again, read without `inner`'s lock by [`Self::settled`].
    source: ClockSource,
    tx: tokio::sync::watch::Sender<bool>,
}

struct Inner {
    watch: ClockWatch,
    /// Rows with a larger `seq` were stamped while unsynchronised.
    unsynced_after_seq: Option<u64>,
    /// The last `seq` seen at a poll that still found the clock unsynchronised: rows up to it
    /// carry the old clock's time for sure; later ones may already carry the new one.
    unsynced_upto_seq: u64,
}

impl SharedClock {
    /// Starts following `source`. Blocking: reads the store's last `seq` when the clock is
    /// unsynchronised now.
    pub fn new(source: ClockSource, store: &crate::store::Store) -> std::sync::Arc<SharedClock> {
        let watch = ClockWatch::new(source.clone());
        let synced = watch.synced();
        let unsynced_after_seq = if synced { None } else { store.max_seq().ok() };
        std::sync::Arc::new(SharedClock {
            source,
            inner: std::sync::Mutex::new(Inner {
                watch,
                unsynced_upto_seq: unsynced_after_seq.unwrap_or(0),
                unsynced_after_seq,
            }),
            tx: tokio::sync::watch::channel(synced).0,
        })
    }

    /// Whether the clock is synchronised (as of the last poll).
    pub fn synced(&self) -> bool {
        *self.tx.borrow()
    }

    /// Whether the source says what the last poll saw (no synchronisation, or loss of it, waits
    /// for the next [`Self::poll`]): rows may then be cut into a batch without that poll, as the
    /// writer's commit does ([`crate::store::Store::offer_cut`]). Reads the source (one
    /// `adjtimex(2)` or `stat(2)`), never `inner`'s lock: the store calls it with its connection
    /// locked, and `poll` locks the connection with `inner` held.
    pub fn settled(&self) -> bool {
        self.source.synced() == self.synced()
    }

    /// A receiver that follows [`Self::synced`] (for `AdapterContext::clock_synced`).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Polls the source. When the clock became synchronised, corrects the rows stamped before
    /// ([`crate::store::Store::correct_unsynced`], by the measured step) before anyone else sees
    /// it synchronised. Blocking (SQLite): call from a blocking thread.
    pub fn poll(&self, store: &crate::store::Store) -> Option<ClockChange> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let change = inner.watch.poll();
        if change.is_none() {
            if !inner.watch.synced() {
                if let Ok(n) = store.max_seq() {
                    inner.unsynced_upto_seq = n;
                }
            }
            return None;
        }
        let change = change?;
        match change {
            ClockChange::Synced { step_ms } => {
                let upto = inner.unsynced_upto_seq;
                let corrected = match inner.unsynced_after_seq.take() {
                    Some(after) => store.correct_unsynced(after, upto, step_ms, wall_ms()),
                    None => Ok(0),
                };
                match corrected {
                    Ok(n) => log::info!(
                        "clock synchronised (stepped {:+.3} s); gateway_time of {n} buffered rows corrected",
                        step_ms as f64 / 1000.0
                    ),
                    Err(e) => {
                        log::warn!("clock synchronised, but correcting buffered rows failed: {e}")
                    }
                }
                self.tx.send_replace(true);
            }
            ClockChange::Unsynced => {
                inner.unsynced_after_seq = store.max_seq().ok();
                inner.unsynced_upto_seq = inner.unsynced_after_seq.unwrap_or(0);
                self.tx.send_replace(false);
                log::warn!("the system clock is no longer synchronised; observations are stamped `unsynced`");
            }
        }
        Some(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parse_sources() {
        assert_eq!(ClockSource::parse("kernel"), Ok(ClockSource::Kernel));
        assert_eq!(
            ClockSource::parse("file:/run/x"),
            Ok(ClockSource::File("/run/x".into()))
        );
        assert!(ClockSource::parse("file:").is_err());
        assert!(ClockSource::parse("ntp").is_err());
    }

    #[test]
    fn the_step_is_measured_against_monotonic_time() {
        let t0 = Instant::now();
        let mut w = ClockWatch {
            source: ClockSource::Synced,
            synced: false,
            last_unsynced: Some((1_000_000, t0)),
        };
        // 10 s later (monotonic) the clock still unsynced reads 10 s later: no step yet.
        assert_eq!(
            w.observe(false, 1_010_000, t0 + Duration::from_secs(10)),
            None
        );
        // 5 s later NTP stepped the clock 3 hours forward.
        let step = 3 * 3_600_000;
        assert_eq!(
            w.observe(true, 1_015_000 + step, t0 + Duration::from_secs(15)),
            Some(ClockChange::Synced { step_ms: step })
        );
        assert_eq!(w.observe(true, 0, t0 + Duration::from_secs(16)), None);
        assert_eq!(
            w.observe(false, 5, t0 + Duration::from_secs(17)),
            Some(ClockChange::Unsynced)
        );
    }

    #[test]
    fn the_kernel_query_answers() {
        // Whatever this machine's state, the query itself works without privileges here.
        assert!(kernel_synced().is_some());
    }

    /// The writer's commit cuts an offered batch only while the source says what the last poll
    /// saw (`settled`); a synchronisation waits for the uplink's poll, which corrects rows first.
    #[test]
    fn settled_until_the_source_changes_and_again_after_the_poll() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = crate::store::Store::open(
            &dir.path().join("store.db"),
            crate::store::StoreOptions::default(),
        )
        .unwrap();
        let flag = dir.path().join("synced");
        let clock = SharedClock::new(ClockSource::File(flag.clone()), &store);
        assert!(!clock.synced() && clock.settled());
        std::fs::write(&flag, b"").unwrap();
        assert!(!clock.settled(), "synchronised since the last poll");
        assert!(matches!(
            clock.poll(&store),
            Some(ClockChange::Synced { .. })
        ));
        assert!(clock.synced() && clock.settled());
        std::fs::remove_file(&flag).unwrap();
        assert!(!clock.settled());
        clock.poll(&store);
        assert!(clock.settled());
    }
}
