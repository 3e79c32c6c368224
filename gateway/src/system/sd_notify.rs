//! systemd integration (DESIGN §8): `READY=1`, `STATUS=…`, `STOPPING=1` and a watchdog tied to
//! real progress, over the `sd_notify(3)` datagram protocol (no libsystemd, no extra crate).
//!
//! Everything is a no-op when `NOTIFY_SOCKET` is unset (not started by systemd, or
//! `Type=exec`). Sending is best effort: a failed notification is logged at debug and never stops
//! the gateway.
//!
//! # Watchdog
//!
//! `WATCHDOG=1` is not sent on a timer alone. Every `WATCHDOG_USEC / 2` the notifier asks
//! [`should_ping`]: the store writer (`WriterStats::last_progress_ms`: every commit, and an
//! idle tick the daemon keeps shorter than a quarter of the watchdog period) **and** the uplink
//! loop (the uplink's `LoopBeat`: every iteration of the session loop, and every second while
//! connecting or waiting out the reconnect backoff) must both have moved within the last
//! watchdog period. An unreachable broker keeps the uplink loop turning, so it does not stop the
//! watchdog; a hung runtime or a writer stuck in a commit that never returns does, and systemd
//! restarts the gateway.
//!
//! A store whose commits keep **failing** (full disk, I/O error) does **not** stop the watchdog:
//! the writer keeps the rows in memory (at most `[store] buffer_max_rows`; beyond it new rows are
//! refused, counted per device and reported upstream once the store accepts rows again) and
//! retries every second, and each retry counts as progress for the writer, because a
//! restart would not cure a full disk and would lose those uncommitted rows. The failure is
//! reported instead: one error log when it starts, a summary every minute, one line when it
//! ends, the writer's `failed_commits` counter and the store state in `wardgate status`. This is the one statement of that promise;
//! `ARCHITECTURE.md` and the writer (`pipeline.rs`) refer to it.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;
use tokio::sync::watch;
use wardgate_adapters::observation::mono_ms;

/// How often `STATUS=` is refreshed (the same pace as `status.json`).
pub const STATUS_EVERY: Duration = Duration::from_secs(2);

/// A connection to systemd's notification socket, or nothing (every send is then a no-op).
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). Disabled when it is
    /// unset, empty or unusable (the latter is logged).
    pub fn from_env() -> Notifier {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(s) if !s.is_empty() => match Self::connect(&s.to_string_lossy()) {
                Ok(n) => n,
                Err(e) => {
                    log::warn!("NOTIFY_SOCKET is set but unusable ({e}); not notifying systemd");
                    Notifier::default()
                }
            },
            _ => Notifier::default(),
        }
    }

    /// A notifier sending to `socket` (`/path` or `@abstract-name`).
    pub fn connect(socket: &str) -> io::Result<Notifier> {
        let addr = if let Some(name) = socket.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        } else if socket.starts_with('/') {
            SocketAddr::from_pathname(socket)?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an absolute path or @abstract name",
            ));
        };
        Ok(Notifier {
            target: Some((UnixDatagram::unbound()?, addr)),
        })
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one datagram of `KEY=value` lines (newline separated). `Ok` when disabled.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        match &self.target {
            Some((sock, addr)) => sock.send_to_addr(state.as_bytes(), addr).map(|_| ()),
            None => Ok(()),
        }
    }

    fn send(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            log::debug!("sd_notify {:?}: {e}", state.lines().next().unwrap_or(""));
        }
    }
}

/// The watchdog period systemd expects (`WATCHDOG_USEC`), from the environment. `None` when
/// unset, zero, malformed, or meant for another process (`WATCHDOG_PID`).
pub fn watchdog_from_env() -> Option<Duration> {
    watchdog_period(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// Pure part of [`watchdog_from_env`]: `usec` and `pid` as found in the environment.
pub fn watchdog_period(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(my_pid) {
            return None;
        }
    }
    match usec?.trim().parse::<u64>() {
        Ok(0) | Err(_) => None,
        Ok(us) => Some(Duration::from_micros(us)),
    }
}

/// The writer's idle tick for a watchdog period: at most 10 s, and at most a quarter of the
/// period so an idle writer shows progress well within it (never below 250 ms).
pub fn writer_tick(watchdog: Option<Duration>) -> Duration {
    let normal = Duration::from_secs(10);
    match watchdog {
        Some(w) => normal.min(w / 4).max(Duration::from_millis(250)),
        None => normal,
    }
}

/// The watchdog decision: send `WATCHDOG=1` only if both the writer's last progress and the
/// uplink loop's last turn (monotonic ms, so a wall-clock step neither starves nor fakes the
/// watchdog) are within `max_age` of `now_ms`. A timestamp slightly in
/// the future (clock stepped back) counts as recent; `0` (never) does not.
pub fn should_ping(now_ms: u64, writer_ms: u64, uplink_ms: u64, max_age: Duration) -> bool {
    let max = max_age.as_millis() as u64;
    let fresh = |t: u64| t != 0 && now_ms.saturating_sub(t) <= max;
    fresh(writer_ms) && fresh(uplink_ms)
}

/// The one-line `STATUS=` text, e.g. `uplink connected; 12 queued; 3 devices`.
///
/// `uplink_error` is the uplink's last error while disconnected (`None`: still connecting).
pub fn status_line(
    connected: bool,
    uplink_error: Option<&str>,
    queued: Option<u64>,
    devices: usize,
) -> String {
    let link = if connected {
        "uplink connected".to_owned()
    } else {
        match uplink_error {
            Some(e) => format!("uplink down: {e}"),
            None => "uplink connecting".to_owned(),
        }
    };
    let queued = queued.map_or_else(|| "queue unknown".to_owned(), |q| format!("{q} queued"));
    let line = format!(
        "{link}; {queued}; {devices} device{}",
        if devices == 1 { "" } else { "s" }
    );
    line.replace(['\n', '\r'], " ")
}

/// What the notifier watches, as readers the daemon wires in (this module knows nothing of the
/// writer, the uplink or the store).
pub struct Watched {
    /// Monotonic ms ([`mono_ms`]) of the store writer's last progress (every commit, and its
    /// idle tick); 0 = never.
    pub writer_progress: Box<dyn Fn() -> u64 + Send>,
    /// Monotonic ms of the uplink loop's last turn; 0 = never.
    pub uplink_progress: Box<dyn Fn() -> u64 + Send>,
    /// The `STATUS=` text (see [`status_line`]).
    pub status: Box<dyn Fn() -> String + Send>,
}

/// Sends `READY=1` (the caller has started everything), then `STATUS=` every
/// [`STATUS_EVERY`] and `WATCHDOG=1` every `watchdog / 2` while [`should_ping`] agrees, until
/// `shutdown` turns `true`; then `STOPPING=1`. Returns at once when `notifier` is disabled.
pub async fn run(
    notifier: Notifier,
    watchdog: Option<Duration>,
    w: Watched,
    mut shutdown: watch::Receiver<bool>,
) {
    if !notifier.is_enabled() {
        return;
    }
    notifier.send(&format!("READY=1\nSTATUS={}", (w.status)()));
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Without a watchdog this timer never matters; a long period keeps the select uniform.
    let period = watchdog.unwrap_or(Duration::from_secs(3600));
    let mut dog_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + period / 2, period / 2);
    dog_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut withheld = false;
    loop {
        tokio::select! {
            _ = status_tick.tick() => notifier.send(&format!("STATUS={}", (w.status)())),
            _ = dog_tick.tick(), if watchdog.is_some() => {
                let writer = (w.writer_progress)();
                let uplink = (w.uplink_progress)();
                let now = mono_ms();
                if should_ping(now, writer, uplink, period) {
                    if withheld {
                        log::info!("watchdog: progress again; resuming WATCHDOG=1");
                        withheld = false;
                    }
                    notifier.send("WATCHDOG=1");
                } else if !withheld {
                    withheld = true;
                    log::error!(
                        "watchdog: withholding WATCHDOG=1 (writer last progress {} ms ago, uplink \
                         loop {} ms ago); systemd will restart the gateway if this persists",
                        now.saturating_sub(writer),
                        now.saturating_sub(uplink)
                    );
                }
            }
            _ = shutdown.changed() => {
                notifier.send("STOPPING=1\nSTATUS=stopping");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_secs(30);

    #[test]
    fn pings_only_when_writer_and_uplink_both_moved_within_the_period() {
        let now = 1_000_000;
        assert!(should_ping(now, now - 1_000, now - 500, P));
        assert!(should_ping(now, now - 30_000, now - 30_000, P), "boundary");
        assert!(!should_ping(now, now - 30_001, now, P), "writer stuck");
        assert!(!should_ping(now, now, now - 45_000, P), "uplink loop hung");
        assert!(
            !should_ping(now, now - 60_000, now - 60_000, P),
            "both stuck"
        );
    }

    #[test]
    fn never_is_not_progress_and_the_future_is() {
        let now = 1_000_000;
        assert!(!should_ping(now, 0, now, P));
        assert!(!should_ping(now, now, 0, P));
        assert!(
            should_ping(now, now + 2_000, now + 1, P),
            "clock stepped back"
        );
    }

    #[test]
    fn watchdog_period_from_environment_values() {
        assert_eq!(
            watchdog_period(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_period(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_period(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_period(Some("30000000"), Some("x"), 7), None);
        assert_eq!(watchdog_period(Some("0"), None, 7), None);
        assert_eq!(watchdog_period(Some("soon"), None, 7), None);
        assert_eq!(watchdog_period(None, Some("7"), 7), None);
    }

    #[test]
    fn writer_tick_stays_well_inside_the_watchdog_period() {
        assert_eq!(writer_tick(None), Duration::from_secs(10));
        assert_eq!(
            writer_tick(Some(Duration::from_secs(30))),
            Duration::from_millis(7_500)
        );
        assert_eq!(
            writer_tick(Some(Duration::from_secs(120))),
            Duration::from_secs(10)
        );
        assert_eq!(
            writer_tick(Some(Duration::from_millis(100))),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn status_is_one_line() {
        assert_eq!(
            status_line(true, Some("old error"), Some(12), 3),
            "uplink connected; 12 queued; 3 devices"
        );
        assert_eq!(
            status_line(false, None, Some(0), 2),
            "uplink connecting; 0 queued; 2 devices"
        );
        assert_eq!(
            status_line(false, Some("broker down\n(refused)"), None, 1),
            "uplink down: broker down (refused); queue unknown; 1 device"
        );
    }

    #[test]
    fn notifier_without_socket_is_a_no_op_and_sends_to_a_path() {
        let n = Notifier::default();
        assert!(!n.is_enabled());
        n.notify("READY=1").unwrap();
        assert!(Notifier::connect("relative").is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.to_str().unwrap()).unwrap();
        n.notify("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }

    #[test]
    fn notifier_sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("wardgate-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        Notifier::connect(&format!("@{name}"))
            .unwrap()
            .notify("WATCHDOG=1")
            .unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }
}
