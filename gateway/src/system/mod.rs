//! The gateway's place in the operating system.
//!
//! - [`clock`]: is the wall clock synchronised (adjtimex, timesyncd, a file), and the correction
//!   of buffered rows stamped before it was.
//! - [`sd_notify`]: systemd `READY`/`STATUS`/`STOPPING` and a watchdog tied to real progress.
//! - [`telemetry`]: logging to journald or stderr.

pub mod clock;
pub mod sd_notify;
pub mod telemetry;
