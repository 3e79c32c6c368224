//! An [`SmpDeviceModel`](super::SmpDeviceModel) served on a real pseudo-terminal with the SMP
//! serial console framing (PROTOCOLS §A.5: base64 + CRC-16/XMODEM, lines ≤ 127 bytes starting
//! `06 09` / `04 14`; the codec is `wardgate_adapters::smp::console`), optionally on the same line
//! as the device's data protocol: a recording ([`crate::devsim`] style) streamed at device pace,
//! as a bedside device that logs or measures on the UART it also takes firmware on.
//!
//! ```no_run
//! use wardgate_sim::smp_device::{serial::{SerialOptions, SerialSmpDevice}, SmpDeviceModel, SmpDeviceOptions};
//! let model = SmpDeviceModel::new(SmpDeviceOptions::default()).shared();
//! let dev = SerialSmpDevice::start(std::path::Path::new("/tmp/dev.tty"), model.clone(), SerialOptions::default())?;
//! // the gateway (or an SMP client) opens /tmp/dev.tty …
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! One thread owns the pty master: it reads the host's bytes into a `ConsoleDecoder` (console
//! text and the data protocol's host bytes are skipped; the recording's start command is watched
//! for), hands each SMP frame to the model, waits the model's delay (the slot erase), and writes
//! the response lines in one piece (after a console log line with
//! [`SerialOptions::noise`]); between requests it writes the recording's chunks when due. A
//! response always starts on a new line: if the recording left a line open, a `\n` is written
//! first (the gateway's serial adapter pauses its data decoder during an SMP session, so the
//! extra byte reaches no decoder). At a reset the device answers, then its pty disappears for
//! the model's `swap_time` (the link is removed and the pty closed: a client reads EIO, as from
//! a USB CDC device re-enumerating or the Python emulator's reset) and comes back, a new pty
//! behind the same link, after MCUboot booted the model. With [`SerialOptions::silent_reset`]
//! the pty stays instead and the device is only silent (no answer, no recording, what the host
//! writes is lost), as a UART behind a USB-serial bridge; a client that holds the port keeps
//! it, but one that set `TIOCEXCL` (tokio-serial, the gateway's bench CLI) cannot reopen it
//! while this simulator holds the slave. [`SerialSmpDevice::power_cycle`] resets it without a
//! command. Recording bytes nobody reads are dropped (non-blocking writes, as a UART with no
//! listener); responses wait up to 5 s for room.

use super::{lock, SharedModel};
use crate::devsim::{open_pty, Pace};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wardgate_adapters::smp::console::{self, ConsoleDecoder, ConsoleEvent};

/// The data protocol a device streams on the same line.
#[derive(Clone, Debug)]
pub struct Recording {
    /// The bytes, replayed in order.
    pub data: Vec<u8>,
    /// Device pace ([`Pace`]).
    pub pace: Pace,
    /// Bytes the host must send before the device streams (`None`: streams at once); asked
    /// again after every boot.
    pub start: Option<Vec<u8>>,
    /// Start over at the end (else stop).
    pub repeat: bool,
}

/// How the device behaves on the line.
#[derive(Clone, Debug, Default)]
pub struct SerialOptions {
    /// A data protocol streamed on the same line (`None`: an SMP-only device).
    pub recording: Option<Recording>,
    /// A console log line (`[00:00:12.345,678] <inf> app: …`) before every SMP response (F8).
    pub noise: bool,
    /// Pace reads and writes to this line rate (10 bits a byte); a pty has none.
    pub pace_baud: Option<u32>,
    /// At a reset the pty stays and the device is only silent for the swap time (a UART
    /// behind a USB-serial bridge) instead of disappearing (see the module docs for `TIOCEXCL`).
    pub silent_reset: bool,
}

/// Counts of what happened on the line.
#[derive(Debug, Default)]
struct Counts {
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    recording_bytes: AtomicU64,
    resets: AtomicU64,
}

/// A running serial SMP device; stops (and removes nothing but its pty) when dropped.
pub struct SerialSmpDevice {
    /// The stable path of its pty (what a client opens).
    pub link: PathBuf,
    model: SharedModel,
    stop: Arc<AtomicBool>,
    power_cycle: Arc<AtomicBool>,
    up: Arc<AtomicBool>,
    counts: Arc<Counts>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SerialSmpDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialSmpDevice")
            .field("link", &self.link)
            .finish()
    }
}

impl SerialSmpDevice {
    /// Opens the pty behind `link` and starts serving `model` on it.
    pub fn start(
        link: &Path,
        model: SharedModel,
        opts: SerialOptions,
    ) -> std::io::Result<SerialSmpDevice> {
        let (master, slave) = open_pty(link)?;
        set_nonblocking(&master)?;
        let stop = Arc::new(AtomicBool::new(false));
        let power_cycle = Arc::new(AtomicBool::new(false));
        let up = Arc::new(AtomicBool::new(true));
        let counts = Arc::new(Counts::default());
        let mut line = Line {
            link: link.to_path_buf(),
            master: Some(master),
            _slave: Some(slave),
            model: model.clone(),
            opts,
            stop: stop.clone(),
            power_cycle: power_cycle.clone(),
            up: up.clone(),
            counts: counts.clone(),
            decoder: ConsoleDecoder::new(),
            started: false,
            seen: Vec::new(),
            rec_pos: 0,
            rec_next: Instant::now(),
            line_open: false,
            noise_n: 0,
        };
        line.started = line
            .opts
            .recording
            .as_ref()
            .is_none_or(|r| r.start.is_none());
        let thread = std::thread::Builder::new()
            .name("smp-serial-device".into())
            .spawn(move || line.run())?;
        Ok(SerialSmpDevice {
            link: link.to_path_buf(),
            model,
            stop,
            power_cycle,
            up,
            counts,
            thread: Some(thread),
        })
    }

    /// The model it serves.
    pub fn model(&self) -> &SharedModel {
        &self.model
    }

    /// Resets the device as a power cycle would (MCUboot runs at the boot); returns at once.
    pub fn power_cycle(&self) {
        self.power_cycle.store(true, Ordering::SeqCst);
    }

    /// Whether the device is running (false during the swap after a reset).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// SMP frames received / responses sent / recording bytes written / resets so far.
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        let c = &self.counts;
        (
            c.frames_in.load(Ordering::Relaxed),
            c.frames_out.load(Ordering::Relaxed),
            c.recording_bytes.load(Ordering::Relaxed),
            c.resets.load(Ordering::Relaxed),
        )
    }
}

impl Drop for SerialSmpDevice {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn set_nonblocking(f: &File) -> std::io::Result<()> {
    let flags = fcntl(f, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(f, FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}

struct Line {
    link: PathBuf,
    master: Option<File>,
    _slave: Option<OwnedFd>,
    model: SharedModel,
    opts: SerialOptions,
    stop: Arc<AtomicBool>,
    power_cycle: Arc<AtomicBool>,
    up: Arc<AtomicBool>,
    counts: Arc<Counts>,
    decoder: ConsoleDecoder,
    started: bool,
    seen: Vec<u8>,
    rec_pos: usize,
    rec_next: Instant,
    line_open: bool,
    noise_n: u64,
}

impl Line {
    fn run(&mut self) {
        let mut buf = [0u8; 4096];
        let mut events = Vec::new();
        while !self.stop.load(Ordering::SeqCst) {
            if self.power_cycle.swap(false, Ordering::SeqCst) {
                self.reset();
                continue;
            }
            let Some(master) = self.master.as_ref() else {
                return;
            };
            let wait = self
                .rec_next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(20));
            let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
            let ready = poll(
                &mut fds,
                PollTimeout::try_from(wait.as_millis() as u64).unwrap_or(PollTimeout::ZERO),
            );
            if matches!(ready, Ok(n) if n > 0) {
                let n = match self.master.as_ref().map(|mut m| m.read(&mut buf)) {
                    Some(Ok(n)) => n,
                    Some(Err(e)) if e.kind() == ErrorKind::WouldBlock => 0,
                    // EIO: nobody holds the slave open right now (we do, so rare): retry.
                    Some(Err(_)) => {
                        std::thread::sleep(Duration::from_millis(20));
                        0
                    }
                    None => return,
                };
                if n > 0 {
                    self.pace(n);
                    self.watch_start(&buf[..n]);
                    self.decoder.feed(&buf[..n], &mut events);
                    let frames: Vec<Vec<u8>> = events
                        .drain(..)
                        .filter_map(|e| match e {
                            ConsoleEvent::Frame(f) => Some(f),
                            _ => None,
                        })
                        .collect();
                    for f in frames {
                        if self.serve(&f) {
                            self.reset();
                            break;
                        }
                    }
                }
            }
            self.stream();
        }
    }

    /// Answers one frame; `true` when the device resets now.
    fn serve(&mut self, frame: &[u8]) -> bool {
        self.counts.frames_in.fetch_add(1, Ordering::Relaxed);
        let reply = lock(&self.model).handle(frame);
        if !reply.delay.is_zero() {
            std::thread::sleep(reply.delay);
        }
        if let Some(rsp) = reply.response {
            let mut out = Vec::new();
            if self.line_open {
                out.push(b'\n');
                self.line_open = false;
            }
            if self.opts.noise {
                self.noise_n += 1;
                out.extend_from_slice(
                    format!(
                        "[00:00:{:02}.{:03},456] <inf> app: sensor tick\r\n",
                        self.noise_n % 60,
                        self.noise_n % 1000
                    )
                    .as_bytes(),
                );
            }
            out.extend(console::encode(&rsp, console::MAX_LINE));
            self.pace(out.len());
            if self.write_all(&out) {
                self.counts.frames_out.fetch_add(1, Ordering::Relaxed);
            }
        }
        reply.reset
    }

    /// The reset: silent (or unplugged) for the swap time, then MCUboot boots the model.
    fn reset(&mut self) {
        self.counts.resets.fetch_add(1, Ordering::Relaxed);
        self.up.store(false, Ordering::SeqCst);
        let swap = lock(&self.model).options().swap_time;
        // The response leaves the UART before the device resets.
        std::thread::sleep(Duration::from_millis(20));
        if !self.opts.silent_reset {
            let _ = std::fs::remove_file(&self.link);
            self.master = None;
            self._slave = None;
            std::thread::sleep(swap);
        } else {
            let until = Instant::now() + swap;
            let mut buf = [0u8; 4096];
            while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
                // What the host writes meanwhile is lost: nobody runs to read it.
                if let Some(mut m) = self.master.as_ref() {
                    let _ = m.read(&mut buf);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        lock(&self.model).boot();
        self.decoder = ConsoleDecoder::new();
        self.line_open = false;
        self.started = self
            .opts
            .recording
            .as_ref()
            .is_none_or(|r| r.start.is_none());
        self.seen.clear();
        if self.master.is_none() {
            match open_pty(&self.link).and_then(|(m, s)| {
                set_nonblocking(&m)?;
                Ok((m, s))
            }) {
                Ok((m, s)) => {
                    self.master = Some(m);
                    self._slave = Some(s);
                }
                Err(e) => {
                    log::warn!("smp serial device: the pty did not come back: {e}");
                    return;
                }
            }
        }
        self.up.store(true, Ordering::SeqCst);
    }

    fn watch_start(&mut self, bytes: &[u8]) {
        let Some(start) = self.opts.recording.as_ref().and_then(|r| r.start.as_ref()) else {
            return;
        };
        if self.started {
            return;
        }
        self.seen.extend_from_slice(bytes);
        if self
            .seen
            .windows(start.len())
            .any(|w| w == start.as_slice())
        {
            self.started = true;
            self.rec_next = Instant::now();
        }
        if self.seen.len() > 4096 {
            let keep = start.len();
            self.seen.drain(..self.seen.len() - keep);
        }
    }

    /// Writes the recording's chunks that are due.
    fn stream(&mut self) {
        if !self.started {
            return;
        }
        let Some(rec) = self.opts.recording.as_ref() else {
            return;
        };
        if rec.data.is_empty() {
            return;
        }
        let (chunk, period) = match rec.pace {
            Pace::Frames { size, per_sec } => (
                size.max(1),
                Duration::from_secs_f64(1.0 / per_sec.max(0.001)),
            ),
            Pace::Baud(baud) => (
                ((f64::from(baud) / 10.0) / 10.0).max(1.0) as usize,
                Duration::from_millis(100),
            ),
        };
        while Instant::now() >= self.rec_next {
            if self.rec_pos >= rec.data.len() {
                if !rec.repeat {
                    return;
                }
                self.rec_pos = 0;
            }
            let end = (self.rec_pos + chunk).min(rec.data.len());
            let piece = rec.data[self.rec_pos..end].to_vec();
            self.rec_pos = end;
            self.rec_next += period;
            if let Some(mut m) = self.master.as_ref() {
                // A UART with no listener loses bytes: never block on the recording.
                if let Ok(n) = m.write(&piece) {
                    self.counts
                        .recording_bytes
                        .fetch_add(n as u64, Ordering::Relaxed);
                    if n > 0 {
                        self.line_open = piece[n - 1] != b'\n';
                    }
                }
            }
        }
    }

    fn pace(&self, n: usize) {
        if let Some(baud) = self.opts.pace_baud.filter(|b| *b > 0) {
            std::thread::sleep(Duration::from_secs_f64(n as f64 * 10.0 / f64::from(baud)));
        }
    }

    /// Writes all of `bytes`, waiting up to 5 s for room; `false` when it could not.
    fn write_all(&mut self, mut bytes: &[u8]) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let Some(master) = self.master.as_ref() else {
            return false;
        };
        while !bytes.is_empty() {
            match (&*master).write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return false;
                    }
                    let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::from(20u8));
                }
                Err(_) => return false,
            }
        }
        let _ = (&*master).flush();
        true
    }
}
