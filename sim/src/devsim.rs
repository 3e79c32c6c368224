//! Device simulators on real pseudo-terminals: replay a recording of a real serial device into the
//! master side of a pty at the device's own pace, while the gateway's serial adapter opens the
//! slave side exactly as it would open `/dev/ttyUSB0`. Used by `wardgate demo` and the tests.
//!
//! The slave is reached through a symlink (like `/dev/serial/by-id/...`), so a test can "unplug"
//! the device (drop the master: the adapter reads EIO) and "plug it back" on a new pty behind the
//! same stable path.

use nix::pty::openpty;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How fast the device sends.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// Fixed-size frames at a rate, e.g. CMS50 live frames: 9 bytes, 60 per second.
    Frames {
        /// Bytes per frame.
        size: usize,
        /// Frames per second.
        per_sec: f64,
    },
    /// A byte stream at a line rate in bit/s (10 bits per byte for 8N1), sent in 100 ms chunks.
    Baud(u32),
}

/// Opens a pty with both ends in raw mode and points `link` at its slave (atomically replacing
/// an older link): (master, slave). Keep the slave open so the pty does not hang up between a
/// client's reopen attempts.
pub fn open_pty(link: &Path) -> std::io::Result<(File, OwnedFd)> {
    let pty = openpty(None, None).map_err(std::io::Error::from)?;
    for fd in [&pty.master, &pty.slave] {
        // Close-on-exec: a child the same process starts (an `[[exec]]` plug-in of the demo)
        // must not hold the device's pty open (a resetting device would never hang up).
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(std::io::Error::from)?;
        let mut t = tcgetattr(fd).map_err(std::io::Error::from)?;
        cfmakeraw(&mut t);
        tcsetattr(fd, SetArg::TCSANOW, &t).map_err(std::io::Error::from)?;
    }
    let slave_path = nix::unistd::ttyname(&pty.slave).map_err(std::io::Error::from)?;
    let tmp = link.with_extension("tmp-link");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&slave_path, &tmp)?;
    std::fs::rename(&tmp, link)?;
    Ok((File::from(pty.master), pty.slave))
}

/// A simulated serial device: a pty whose slave is reachable at a stable symlink.
pub struct SimulatedPort {
    /// The stable path the gateway opens (a symlink to the pty slave).
    pub link: PathBuf,
    master: File,
    /// Kept open so the pty does not hang up between the adapter's reopen attempts.
    _slave: OwnedFd,
    /// Bytes the host (gateway) wrote to the device.
    pub host_bytes: Arc<AtomicU64>,
    /// Set once the host sent the `start` sequence (or immediately when none is required).
    pub started: Arc<AtomicBool>,
    /// Tells the reader thread to close its copy of the master.
    stop: Arc<AtomicBool>,
}

impl Drop for SimulatedPort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl SimulatedPort {
    /// Opens a pty in raw mode and points `link` at its slave (replacing an older link).
    ///
    /// `start`: bytes the host must send before the device streams (e.g. the CMS50 start-live
    /// command `7D 81 A1 …`); `None` for devices that stream unprompted.
    pub fn open(link: &Path, start: Option<Vec<u8>>) -> std::io::Result<SimulatedPort> {
        let (master, slave) = open_pty(link)?;
        let host_bytes = Arc::new(AtomicU64::new(0));
        let started = Arc::new(AtomicBool::new(start.is_none()));
        // Drain what the host writes (handshake, keep-alives) so its writes never block, and
        // notice the start command.
        let mut reader = master.try_clone()?;
        let (hb, st) = (host_bytes.clone(), started.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let stop_reader = stop.clone();
        std::thread::spawn(move || {
            use std::os::fd::AsFd;
            let mut seen = Vec::new();
            let mut buf = [0u8; 256];
            loop {
                if stop_reader.load(Ordering::Relaxed) {
                    break; // drops our copy of the master: the pty really hangs up
                }
                let mut fds = [nix::poll::PollFd::new(
                    reader.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)) {
                    Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                    Ok(_) => {}
                    Err(_) => break,
                }
                let n = match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                hb.fetch_add(n as u64, Ordering::Relaxed);
                if let Some(start) = &start {
                    if !st.load(Ordering::Relaxed) {
                        seen.extend_from_slice(&buf[..n]);
                        if seen.windows(start.len()).any(|w| w == start.as_slice()) {
                            st.store(true, Ordering::Relaxed);
                        }
                        if seen.len() > 4096 {
                            seen.drain(..seen.len() - start.len());
                        }
                    }
                }
            }
        });
        Ok(SimulatedPort {
            link: link.to_path_buf(),
            master,
            _slave: slave,
            host_bytes,
            started,
            stop,
        })
    }

    /// Writes `data` at `pace`, `speed` times faster than real time, after the host started the
    /// device. Blocking: run it on a thread. Returns the bytes written; an error when the
    /// gateway never started the device within `start_timeout`.
    pub fn replay(
        &mut self,
        data: &[u8],
        pace: Pace,
        speed: f64,
        start_timeout: Duration,
    ) -> std::io::Result<usize> {
        let deadline = std::time::Instant::now() + start_timeout;
        while !self.started.load(Ordering::Relaxed) {
            if std::time::Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the host never sent the start command",
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let speed = if speed > 0.0 { speed } else { 1.0 };
        let (chunk, period) = match pace {
            Pace::Frames { size, per_sec } => {
                (size.max(1), Duration::from_secs_f64(1.0 / per_sec / speed))
            }
            Pace::Baud(baud) => {
                let bytes_per_100ms = ((baud as f64 / 10.0) / 10.0).max(1.0) as usize;
                (bytes_per_100ms, Duration::from_secs_f64(0.1 / speed))
            }
        };
        let start = std::time::Instant::now();
        let mut written = 0;
        for (i, c) in data.chunks(chunk).enumerate() {
            let due = start + period.mul_f64(i as f64);
            let now = std::time::Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            self.master.write_all(c)?;
            written += c.len();
        }
        self.master.flush()?;
        Ok(written)
    }

    /// "Unplugs" the device: closes the master (and the slave we held) so the adapter reads
    /// EIO/EOF within about 100 ms.
    pub fn unplug(self) {
        drop(self);
    }
}
