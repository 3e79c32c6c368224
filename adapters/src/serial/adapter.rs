//! [`SerialAdapter`]: one serial bedside device, supervised end to end.
//!
//! # What it does
//! 1. Opens the configured **stable path** (e.g. `/dev/serial/by-id/…`, a symlink that udev
//!    re-points at whatever `ttyUSBn` the device got) with the configured baud rate, data bits,
//!    parity and stop bits, no flow control, exclusive access (`TIOCEXCL` + `flock`).
//! 2. **Reads the settings back** from the port (`SerialPort::baud_rate()`, `data_bits()`,
//!    `parity()`, `stop_bits()`) and refuses to run when the port did not take them: an `error`
//!    event, then [`AdapterError::Config`] (a USB-serial bridge that silently ignores parity
//!    would otherwise deliver garbage that may still frame). The baud rate may differ by up to
//!    [`BAUD_TOLERANCE_PERCENT`](super::line::BAUD_TOLERANCE_PERCENT) % (a UART's own tolerance; drivers report the rate they achieved).
//! 3. Emits `connected`, writes the protocol's [`Protocol::on_open`] bytes, sends its
//!    [`Protocol::keepalive`] periodically, and feeds every byte read to a fresh decoder
//!    ([`protocols::build`]).
//! 4. Stamps each [`Reading`] into an [`Observation`] with device id `serial:<name>`,
//!    `gateway_time` = [`now_ms`](crate::observation::now_ms) when the bytes that completed it
//!    arrived, and `time_quality` = `device` when the device sent its own time,
//!    else `synced`/`unsynced` from [`AdapterContext::clock_synced`]. A
//!    [`Decoded::Waveform`] becomes an observation carrying its sample array, stamped at its
//!    first sample ([`Waveform::first_sample_ms`](crate::observation::Waveform::first_sample_ms)).
//!    When no byte has come for [`GAP`] since the last ones were handled and none waits in the
//!    port (a busy host or a full event channel is no pause), before an SMP session pauses the
//!    data protocol, and when the port is lost, the decoder is flushed ([`Protocol::flush`]): what it held back (a
//!    partial waveform array, unfinished numerics) is sent, stamped at the arrival of the last
//!    bytes, so no array spans a pause and a disconnect loses no held sample.
//! 5. On end of file, `EIO`, `ENODEV` or any other read/write error (unplug; a pty whose master
//!    closed gives `EIO`): emits `disconnected`, **closes the port** (drops the fd), and reopens the
//!    stable path with capped exponential backoff and jitter (first wait 125–250 ms, doubling, at
//!    most `max_backoff_s`; "equal jitter": half fixed, half random, so a ward of adapters does not
//!    retry in lock step). The backoff restarts after a connection that lasted 10 s. There is no
//!    busy loop: every retry waits. Returns `Ok(())` promptly when `shutdown` fires.
//!
//! # Identity (DESIGN §11: ports renumbered after reboot)
//! When `serial_number` is configured, the protocol must report one ([`Protocol::reports_identity`],
//! `masimo`, and `lines` when its map has an `id` field; otherwise the adapter refuses to start with [`AdapterError::Config`], as the
//! check could never pass). After every (re)open the adapter **holds back readings until the
//! device has reported a matching serial number**: readings decoded before the first
//! [`Decoded::Identity`] of the connection are dropped (counted in
//! [`SerialStats::readings_dropped`]), not buffered — a Masimo reports `SN=` on every line, so at
//! most the first line's readings are lost, and never attributed to the wrong bed. On a mismatch
//! the adapter emits one `error` event (`device <name>: reports serial number X, configured Y;
//! readings dropped until it matches`) and drops every reading until an identity that matches is
//! seen again. The gate is reset on every reconnect: a different device on the same cable must
//! prove itself again. Without a configured `serial_number`, identities are only logged.
//!
//! # Errors and counters
//! A [`Decoded::Error`] becomes an `error` event `device <name>: <message> at byte offset N` (N
//! counted from the first byte read on this connection) and increments
//! [`SerialStats::frame_errors`]. At most [`MAX_ERROR_EVENTS_PER_SEC`](crate::retry::MAX_ERROR_EVENTS_PER_SEC) such events are sent per
//! second; the rest are counted and summarised in one event, so a noisy line cannot flood the
//! store. Counters are atomics readable at any time through [`SerialAdapter::stats`]. Logs never
//! carry clinical values above `debug`.
//!
//! # A wrong baud rate (or a bad cable) is reported as such
//! The bytes of a connection are judged in windows of [`NO_FRAME_WINDOW`] bytes: a window with
//! no well-formed frame ([`Protocol::frames_ok`] did not move), or with more malformed frames
//! than good ones, gives one `error` event `device <name>: 4096 bytes and no valid frame: check
//! the baud rate (configured 19200) and the cable` (or `…, 3 valid frames and 41 malformed: …`),
//! counted in [`SerialStats::line_suspect_reports`]. It is not repeated while the line stays
//! bad; a good window re-arms it, and so does a reconnect. The decoders, not this check, make
//! sure no reading comes out of such a stream (`adapters/tests/decoder_noise.rs`): the event
//! only says why the device seems silent.
//!
//! # The way back
//! [`SerialAdapter::command_sender`] returns the device's command channel (DESIGN §1):
//! [`DeviceCommand::SendBytes`] are written to the port while it is connected and wait (at most
//! 16 taken from the channel, then the channel's 16) while it is not.
//!
//! # Firmware updates: an SMP session on the connection
//! [`DeviceCommand::OpenSmp`] hands the adapter the device end of an SMP session
//! ([`crate::smp::channel`]) so the firmware relay uses the connection the adapter already holds.
//! While it is open, frames from the relay are written as SMP console lines
//! ([`crate::smp::console::encode`]) and every byte read goes to a
//! [`ConsoleDecoder`]: SMP frames go to the relay, console text is skipped. The device's data
//! protocol is **paused** meanwhile: no keep-alive, nothing fed to the decoder, no observations,
//! no wrong-baud check. The device is being updated, and the relay's policy updates only devices
//! that are not in clinical use. When the relay drops its end, the session goes back to the data
//! protocol as after a fresh open (new decoder, identity gate and line check; the on-open bytes
//! are written again). When the port is lost the SMP link is dropped with the connection (the
//! relay sees `Closed` and opens a new session once the adapter has reconnected); an `OpenSmp`
//! while the port is not open is refused at once (`device_offline`); a second `OpenSmp` replaces the first (whose
//! relay sees `Closed`). Frames each way are counted in [`SerialStats`]; a frame the relay is not
//! ready for (its channel full) is dropped and counted (the client's timeout re-sends).

use super::config::SerialConfig;
use super::identity::{IdentityGate, IdentityVerdict};
use super::line::{check_line_settings, LineSettings};
use super::protocols::lines::map::CompiledMap as LinesMapCompiled;
use super::protocols::{self, Decoded, Protocol, GAP};
use crate::observation::{now_ms, DeviceEvent, DeviceId, EventKind, Observation, Reading};
use crate::retry::{Backoff, RateLimit, DEVICE_STABLE};
use crate::smp::channel::SmpLink;
use crate::smp::console::{self, ConsoleDecoder, ConsoleEvent};
use crate::{Adapter, AdapterContext, AdapterError, AdapterEvent, DeviceCommand, RunFuture};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;
use tokio_serial::SerialStream;

/// Longest wait for a write (on-open bytes, keep-alive, commands) before the port counts as lost.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer size: a tenth of a second at 115200 baud.
const READ_BUF: usize = 1024;
/// Capacity of the per-device command channel.
const COMMAND_CAPACITY: usize = 16;
/// Bytes per window of the wrong-baud check (see the module documentation): at least 7 Masimo
/// lines, 7 ANSAR-B messages or 450 CMS50 frames.
pub const NO_FRAME_WINDOW: u64 = 4096;

/// A snapshot of a [`SerialAdapter`]'s counters (cumulative over the adapter's life).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SerialStats {
    /// Well-formed frames (packages, messages, lines) decoded, see [`Protocol::frames_ok`].
    pub frames_ok: u64,
    /// [`Decoded::Error`]s: malformed or cut frames, garbage.
    pub frame_errors: u64,
    /// Observations sent.
    pub readings: u64,
    /// Readings dropped by the identity check (before a matching serial number, or after a
    /// mismatching one).
    pub readings_dropped: u64,
    /// Times the device reported a serial number other than the configured one.
    pub identity_mismatches: u64,
    /// Successful opens of the port (the first one included).
    pub connects: u64,
    /// Successful opens after a lost connection (`connects` minus the first).
    pub reconnects: u64,
    /// Connections lost (EOF, EIO, ENODEV, write failure).
    pub disconnects: u64,
    /// Failed attempts to open the port.
    pub open_failures: u64,
    /// Bytes read from the port.
    pub bytes_read: u64,
    /// `error` events saying the bytes read do not frame (wrong baud rate or cable).
    pub line_suspect_reports: u64,
    /// SMP sessions opened on a connection (firmware relay).
    pub smp_sessions: u64,
    /// SMP frames read from the device and passed to the relay.
    pub smp_frames_in: u64,
    /// SMP frames from the relay written to the device.
    pub smp_frames_out: u64,
    /// SMP frames from the device dropped because the relay's channel was full.
    pub smp_frames_dropped: u64,
}

/// The atomics behind [`SerialStats`].
#[derive(Debug, Default)]
struct Counters {
    frames_ok: AtomicU64,
    frame_errors: AtomicU64,
    readings: AtomicU64,
    readings_dropped: AtomicU64,
    identity_mismatches: AtomicU64,
    connects: AtomicU64,
    reconnects: AtomicU64,
    disconnects: AtomicU64,
    open_failures: AtomicU64,
    bytes_read: AtomicU64,
    line_suspect_reports: AtomicU64,
    smp_sessions: AtomicU64,
    smp_frames_in: AtomicU64,
    smp_frames_out: AtomicU64,
    smp_frames_dropped: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Why a connection ended.
enum SessionEnd {
    /// `shutdown` fired.
    Shutdown,
    /// The port went away or failed; the reason is for the `disconnected` event.
    Lost(String),
    /// The event channel closed.
    ChannelClosed,
}

/// A serial bedside device adapter (see the module documentation).
pub struct SerialAdapter {
    /// The device's configuration (path, protocol, line settings, serial number, backoff cap).
    cfg: SerialConfig,
    /// `serial:<name>`, stamped on every observation and event.
    device: DeviceId,
    /// Counters, shared with whoever asks for [`SerialAdapter::stats`].
    counters: Arc<Counters>,
    /// Sender half of the command channel, handed out by [`SerialAdapter::command_sender`].
    cmd_tx: mpsc::Sender<DeviceCommand>,
    /// Receiver half, owned by the running `run` (a second concurrent `run` is refused).
    cmd_rx: Mutex<mpsc::Receiver<DeviceCommand>>,
    /// `protocol = "lines"`: the compiled `[[lines_map]]` its lines are decoded by.
    lines_map: Option<Arc<LinesMapCompiled>>,
}

impl SerialAdapter {
    /// An adapter for one configured serial device. Nothing is opened until [`Adapter::run`].
    pub fn new(cfg: SerialConfig) -> Self {
        let device = DeviceId::serial(&cfg.name);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CAPACITY);
        SerialAdapter {
            cfg,
            device,
            counters: Arc::default(),
            cmd_tx,
            cmd_rx: Mutex::new(cmd_rx),
            lines_map: None,
        }
    }

    /// The map a `lines` device decodes by (`[[lines_map]]` named by `map`, compiled with
    /// [`LinesMap::compile`](super::protocols::lines::LinesMap::compile)). Without one a `lines`
    /// device refuses to run.
    pub fn with_lines_map(mut self, map: Arc<LinesMapCompiled>) -> Self {
        self.lines_map = Some(map);
        self
    }

    /// A fresh decoder for this device's protocol (and map).
    fn decoder(&self) -> Box<dyn Protocol> {
        protocols::build_for(&self.cfg, self.lines_map.as_ref())
    }

    /// The device id its observations carry: `serial:<name>`.
    pub fn device_id(&self) -> &DeviceId {
        &self.device
    }

    /// The device's command channel: bytes sent here are written to the port (the way back).
    pub fn command_sender(&self) -> mpsc::Sender<DeviceCommand> {
        self.cmd_tx.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SerialStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SerialStats {
            frames_ok: get(&c.frames_ok),
            frame_errors: get(&c.frame_errors),
            readings: get(&c.readings),
            readings_dropped: get(&c.readings_dropped),
            identity_mismatches: get(&c.identity_mismatches),
            connects: get(&c.connects),
            reconnects: get(&c.reconnects),
            disconnects: get(&c.disconnects),
            open_failures: get(&c.open_failures),
            bytes_read: get(&c.bytes_read),
            line_suspect_reports: get(&c.line_suspect_reports),
            smp_sessions: get(&c.smp_sessions),
            smp_frames_in: get(&c.smp_frames_in),
            smp_frames_out: get(&c.smp_frames_out),
            smp_frames_dropped: get(&c.smp_frames_dropped),
        }
    }

    fn event(&self, kind: EventKind, detail: String) -> AdapterEvent {
        AdapterEvent::Event(DeviceEvent::new(self.device.clone(), kind, detail))
    }

    async fn send(&self, ctx: &AdapterContext, ev: AdapterEvent) -> Result<(), AdapterError> {
        ctx.out
            .send(ev)
            .await
            .map_err(|_| AdapterError::ChannelClosed)
    }

    /// Reports a configuration the adapter cannot work with and returns the error to give up with.
    async fn refuse(&self, ctx: &AdapterContext, why: String) -> AdapterError {
        log::error!("serial {}: {why}", self.cfg.name);
        let detail = format!("device {}: {why}", self.cfg.name);
        match self.send(ctx, self.event(EventKind::Error, detail)).await {
            Ok(()) => AdapterError::Config(why),
            Err(e) => e,
        }
    }

    /// Checks the parts of the config that no port can fix.
    fn static_check(&self, protocol: &dyn Protocol) -> Result<(), String> {
        let cfg = &self.cfg;
        if !(5..=8).contains(&cfg.data_bits) {
            return Err(format!("data_bits {} is not 5, 6, 7 or 8", cfg.data_bits));
        }
        if !(1..=2).contains(&cfg.stop_bits) {
            return Err(format!("stop_bits {} is not 1 or 2", cfg.stop_bits));
        }
        if cfg.baud() == 0 {
            return Err("baud 0".into());
        }
        if cfg.protocol == super::config::ProtocolName::Lines && self.lines_map.is_none() {
            return Err(format!(
                "protocol lines needs its map: no [[lines_map]] named {:?} was given to the adapter",
                cfg.map.as_deref().unwrap_or_default()
            ));
        }
        if cfg.serial_number.is_some() && !protocol.reports_identity() {
            return Err(format!(
                "serial_number is configured but protocol {} never reports one, so it cannot be checked",
                protocol.name()
            ));
        }
        Ok(())
    }

    async fn run_inner(&self, ctx: &mut AdapterContext) -> Result<(), AdapterError> {
        let name = &self.cfg.name;
        let Ok(mut cmd_rx) = self.cmd_rx.try_lock() else {
            return Err(self.refuse(ctx, "adapter is already running".into()).await);
        };
        if let Err(why) = self.static_check(self.decoder().as_ref()) {
            return Err(self.refuse(ctx, why).await);
        }
        let want = LineSettings::from_config(&self.cfg);
        let max_backoff = Duration::from_secs(self.cfg.max_backoff_s.max(1));
        let mut backoff = Backoff::device(max_backoff);
        let mut open_failure_reported = false;
        // Commands taken from the channel while the port was not open (SendBytes only).
        let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
        loop {
            if *ctx.shutdown.borrow() {
                return Ok(());
            }
            match want.open(&self.cfg.path) {
                Ok(mut port) => {
                    open_failure_reported = false;
                    let actual = LineSettings::read_back(&port);
                    if let Err(why) = actual.and_then(|a| check_line_settings(&want, &a)) {
                        drop(port);
                        return Err(self.refuse(ctx, why.to_string()).await);
                    }
                    let previous = self.counters.connects.fetch_add(1, Ordering::Relaxed);
                    if previous > 0 {
                        bump(&self.counters.reconnects, 1);
                    }
                    log::info!(
                        "serial {name}: connected to {} at {}",
                        self.cfg.path.display(),
                        want.describe()
                    );
                    let detail = format!(
                        "device {name}: opened {} at {} ({}{})",
                        self.cfg.path.display(),
                        want.describe(),
                        self.cfg.protocol.as_str(),
                        match &self.lines_map {
                            Some(m) => format!(", map {}", m.name),
                            None => String::new(),
                        }
                    );
                    self.send(ctx, self.event(EventKind::Connected, detail))
                        .await?;
                    let began = Instant::now();
                    let mut data = None;
                    let end = self
                        .session(&mut port, ctx, &mut cmd_rx, &mut pending, &mut data)
                        .await;
                    drop(port); // close the fd before any wait, so the device node can go away
                    match end {
                        SessionEnd::Shutdown => return Ok(()),
                        SessionEnd::ChannelClosed => return Err(AdapterError::ChannelClosed),
                        SessionEnd::Lost(reason) => {
                            // What the decoder held back leaves before `disconnected`.
                            if let Some(d) = data.as_mut() {
                                self.flush(d, ctx).await?;
                            }
                            bump(&self.counters.disconnects, 1);
                            log::warn!("serial {name}: connection lost: {reason}");
                            let detail = format!("device {name}: {reason}");
                            self.send(ctx, self.event(EventKind::Disconnected, detail))
                                .await?;
                        }
                    }
                    if began.elapsed() >= DEVICE_STABLE {
                        backoff.reset();
                    }
                }
                Err(e) => {
                    bump(&self.counters.open_failures, 1);
                    if open_failure_reported {
                        log::debug!(
                            "serial {name}: still cannot open {}: {e}",
                            self.cfg.path.display()
                        );
                    } else {
                        open_failure_reported = true;
                        log::warn!(
                            "serial {name}: cannot open {}: {e}",
                            self.cfg.path.display()
                        );
                        let detail = format!(
                            "device {name}: cannot open {}: {e}",
                            self.cfg.path.display()
                        );
                        self.send(ctx, self.event(EventKind::Error, detail)).await?;
                    }
                }
            }
            let wait = backoff.next_delay();
            log::debug!("serial {name}: reopening in {wait:?}");
            let until = Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    changed = ctx.shutdown.changed() => {
                        if changed.is_err() || *ctx.shutdown.borrow() {
                            return Ok(());
                        }
                    }
                    cmd = cmd_rx.recv(), if pending.len() < COMMAND_CAPACITY => match cmd {
                        Some(DeviceCommand::SendBytes(bytes)) => pending.push_back(bytes),
                        Some(DeviceCommand::OpenSmp(link)) => {
                            log::info!("serial {name}: SMP session refused: the port is not open");
                            link.refuse(crate::smp::client::LinkRefusal::Offline);
                        }
                        // Unreachable while `self` holds a sender.
                        None => std::future::pending::<()>().await,
                    },
                }
            }
        }
    }

    /// Starts (or restarts, after an SMP session) the data protocol on an open port: a fresh
    /// decoder and per-connection state, the on-open bytes written, the keep-alive armed.
    async fn start_data(&self, port: &mut SerialStream) -> Result<DataState, String> {
        let mut protocol = self.decoder();
        let on_open = protocol.on_open();
        if !on_open.is_empty() {
            write(port, &on_open).await?;
        }
        let (period, keepalive) = match protocol.keepalive() {
            Some((p, bytes)) if !p.is_zero() => (p, bytes),
            _ => (Duration::from_secs(3600), Vec::new()),
        };
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(DataState {
            protocol,
            keepalive,
            ticker,
            state: SessionState {
                gate: IdentityGate::new(self.cfg.serial_number.as_deref()),
                last_logged: None,
                limiter: RateLimit::error_events(),
                frames_seen: 0,
                judge: LineJudge::default(),
                last_bytes_ms: now_ms(),
                idle_from: Instant::now(),
                flushed: true,
            },
        })
    }

    /// Flushes the decoder ([`Protocol::flush`]) and delivers what it held, stamped at the last
    /// bytes' arrival; nothing when it was flushed since.
    async fn flush(&self, data: &mut DataState, ctx: &AdapterContext) -> Result<(), AdapterError> {
        if data.state.flushed {
            return Ok(());
        }
        data.state.flushed = true;
        let mut decoded = Vec::new();
        data.protocol.flush(&mut decoded);
        self.deliver(&mut decoded, &mut data.state, ctx).await
    }

    /// Passes bytes read during an SMP session to the relay; `false` when the relay has gone.
    fn smp_incoming(&self, smp: &mut SmpSession, bytes: &[u8]) -> bool {
        let name = &self.cfg.name;
        smp.decoder.feed(bytes, &mut smp.events);
        for ev in smp.events.drain(..) {
            match ev {
                ConsoleEvent::Frame(f) => match smp.link.from_device.try_send(f) {
                    Ok(()) => bump(&self.counters.smp_frames_in, 1),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        bump(&self.counters.smp_frames_dropped, 1);
                        log::debug!("serial {name}: SMP frame dropped: the relay is not reading");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                },
                ConsoleEvent::Skipped(_) => {}
                ConsoleEvent::Error(e) => {
                    log::debug!("serial {name}: SMP console packet dropped: {e}");
                }
            }
        }
        true
    }

    /// Runs one connection until it is lost, shutdown fires or the channel closes. `slot`
    /// holds the data protocol's state, so the caller can flush the decoder when the port is
    /// lost.
    async fn session(
        &self,
        port: &mut SerialStream,
        ctx: &mut AdapterContext,
        cmd_rx: &mut mpsc::Receiver<DeviceCommand>,
        pending: &mut VecDeque<Vec<u8>>,
        slot: &mut Option<DataState>,
    ) -> SessionEnd {
        let name = &self.cfg.name;
        let data = match self.start_data(port).await {
            Ok(d) => slot.insert(d),
            Err(reason) => return SessionEnd::Lost(reason),
        };
        while let Some(bytes) = pending.pop_front() {
            if let Err(reason) = write(port, &bytes).await {
                return SessionEnd::Lost(reason);
            }
        }
        // The SMP session on this connection, if one is open; dropped with the connection.
        let mut smp: Option<SmpSession> = None;
        let mut buf = vec![0u8; READ_BUF];
        let mut decoded = Vec::new();
        loop {
            let mut smp_ended = false;
            // What the port gave, read by its branch or by the quiet-line check.
            let mut got: Option<std::io::Result<usize>> = None;
            tokio::select! {
                changed = ctx.shutdown.changed() => {
                    if changed.is_err() || *ctx.shutdown.borrow() {
                        return SessionEnd::Shutdown;
                    }
                }
                read = port.read(&mut buf) => got = Some(read),
                // No byte for GAP since the last ones were handled: unless bytes are waiting
                // (a busy host or a full event channel, not a quiet device), the stream paused.
                _ = tokio::time::sleep_until(data.state.idle_from + GAP), if !data.state.flushed && smp.is_none() => {
                    // A plain read(2) on the non-blocking fd: it sees bytes the reactor may not
                    // have reported yet.
                    match port.try_read(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            if self.flush(data, ctx).await.is_err() {
                                return SessionEnd::ChannelClosed;
                            }
                        }
                        read => got = Some(read),
                    }
                }
                _ = data.ticker.tick(), if !data.keepalive.is_empty() && smp.is_none() => {
                    if let Err(reason) = write(port, &data.keepalive).await {
                        return SessionEnd::Lost(reason);
                    }
                }
                cmd = cmd_rx.recv() => match cmd {
                    Some(DeviceCommand::SendBytes(bytes)) => {
                        if let Err(reason) = write(port, &bytes).await {
                            return SessionEnd::Lost(reason);
                        }
                    }
                    Some(DeviceCommand::OpenSmp(link)) => {
                        if smp.is_some() {
                            log::info!("serial {name}: a new SMP session replaces the open one");
                        }
                        log::info!(
                            "serial {name}: SMP session opened (firmware relay); data protocol paused"
                        );
                        bump(&self.counters.smp_sessions, 1);
                        // The data protocol pauses: what its decoder held leaves now.
                        if self.flush(data, ctx).await.is_err() {
                            return SessionEnd::ChannelClosed;
                        }
                        // End whatever partial line the data protocol left on the device's
                        // console (start or keep-alive bytes have no newline), so the first SMP
                        // line starts a line; an empty line is skipped.
                        if let Err(reason) = write(port, b"\n").await {
                            return SessionEnd::Lost(reason);
                        }
                        smp = Some(SmpSession {
                            link,
                            decoder: ConsoleDecoder::new(),
                            events: Vec::new(),
                        });
                    }
                    // Unreachable while `self` holds a sender; wait for the other branches.
                    None => std::future::pending::<()>().await,
                },
                frame = next_smp_frame(&mut smp) => match frame {
                    Some(frame) => {
                        if let Err(reason) = write(port, &console::encode(&frame, console::MAX_LINE)).await {
                            return SessionEnd::Lost(reason);
                        }
                        bump(&self.counters.smp_frames_out, 1);
                    }
                    None => smp_ended = true,
                },
            }
            match got {
                None => {}
                Some(Ok(0)) => {
                    return SessionEnd::Lost("end of file on the port (unplugged?)".into())
                }
                Some(Ok(n)) => {
                    bump(&self.counters.bytes_read, n as u64);
                    if let Some(session) = smp.as_mut() {
                        smp_ended = !self.smp_incoming(session, &buf[..n]);
                    } else {
                        data.state.last_bytes_ms = now_ms();
                        data.state.flushed = false;
                        let (protocol, state) = (&mut data.protocol, &mut data.state);
                        protocol.feed(&buf[..n], &mut decoded);
                        let frames = protocol.frames_ok();
                        let new_frames = frames - state.frames_seen;
                        bump(&self.counters.frames_ok, new_frames);
                        state.frames_seen = frames;
                        let errors = decoded
                            .iter()
                            .filter(|d| matches!(d, Decoded::Error { .. }))
                            .count() as u64;
                        if let Some(what) = state.judge.observe(n as u64, new_frames, errors) {
                            if self.report_line_suspect(ctx, &what).await.is_err() {
                                return SessionEnd::ChannelClosed;
                            }
                        }
                        if self.deliver(&mut decoded, state, ctx).await.is_err() {
                            return SessionEnd::ChannelClosed;
                        }
                        // The quiet-line timer counts from here: time spent delivering (a full
                        // event channel) is no pause of the device.
                        state.idle_from = Instant::now();
                    }
                }
                Some(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Some(Err(e)) => return SessionEnd::Lost(describe_io_error(&e)),
            }
            if smp_ended {
                smp = None;
                log::info!("serial {name}: SMP session closed; data protocol resumed");
                *data = match self.start_data(port).await {
                    Ok(d) => d,
                    Err(reason) => return SessionEnd::Lost(reason),
                };
            }
        }
    }

    /// The one `error` event of a stretch of bytes that do not frame (see the module docs).
    async fn report_line_suspect(
        &self,
        ctx: &AdapterContext,
        what: &str,
    ) -> Result<(), AdapterError> {
        bump(&self.counters.line_suspect_reports, 1);
        let name = &self.cfg.name;
        let why = format!(
            "{what}: check the baud rate (configured {}) and the cable",
            self.cfg.baud()
        );
        log::warn!("serial {name}: {why}");
        let detail = format!("device {name}: {why}");
        self.send(ctx, self.event(EventKind::Error, detail)).await
    }

    /// Turns decoder output into events on the channel (identity gate, error limiter, counters).
    async fn deliver(
        &self,
        decoded: &mut Vec<Decoded>,
        st: &mut SessionState,
        ctx: &AdapterContext,
    ) -> Result<(), AdapterError> {
        let name = &self.cfg.name;
        let now = Instant::now().into_std();
        if let Some(suppressed) = st.limiter.take_suppressed(now) {
            let detail =
                format!("device {name}: {suppressed} further frame errors not reported one by one");
            self.send(ctx, self.event(EventKind::Error, detail)).await?;
        }
        for d in decoded.drain(..) {
            match d {
                Decoded::Reading(r) => {
                    if st.gate.admits() {
                        let mut obs = self.observation(r, *ctx.clock_synced.borrow());
                        obs.gateway_time = st.last_bytes_ms;
                        log::debug!(
                            "serial {name}: code {} value {} {}",
                            obs.code,
                            obs.value,
                            obs.unit.ucum
                        );
                        self.send(ctx, AdapterEvent::Observation(obs)).await?;
                        bump(&self.counters.readings, 1);
                    } else {
                        bump(&self.counters.readings_dropped, 1);
                    }
                }
                Decoded::Waveform { reading, waveform } => {
                    if st.gate.admits() {
                        let mut obs = self.observation(reading, *ctx.clock_synced.borrow());
                        obs.gateway_time = waveform.first_sample_ms(st.last_bytes_ms);
                        log::debug!(
                            "serial {name}: code {} waveform of {} samples",
                            obs.code,
                            waveform.samples.len()
                        );
                        obs.waveform = Some(waveform);
                        self.send(ctx, AdapterEvent::Observation(obs)).await?;
                        bump(&self.counters.readings, 1);
                    } else {
                        bump(&self.counters.readings_dropped, 1);
                    }
                }
                Decoded::Identity(id) => match st.gate.observe(&id) {
                    IdentityVerdict::Unchecked => {
                        if st.last_logged.as_deref() != Some(id.as_str()) {
                            log::info!("serial {name}: device reports serial number {id}");
                            st.last_logged = Some(id);
                        }
                    }
                    IdentityVerdict::Confirmed => {
                        log::info!("serial {name}: serial number {id} confirmed");
                    }
                    IdentityVerdict::StillConfirmed | IdentityVerdict::StillMismatch => {}
                    IdentityVerdict::Mismatch => {
                        bump(&self.counters.identity_mismatches, 1);
                        let expected = self.cfg.serial_number.as_deref().unwrap_or_default();
                        let why = format!(
                            "reports serial number {id}, configured {expected}; readings dropped until it matches"
                        );
                        log::error!("serial {name}: {why}");
                        let detail = format!("device {name}: {why}");
                        self.send(ctx, self.event(EventKind::Error, detail)).await?;
                    }
                },
                Decoded::Error { offset, message } => {
                    bump(&self.counters.frame_errors, 1);
                    if st.limiter.allow(now) {
                        log::warn!("serial {name}: {message} at byte offset {offset}");
                        let detail = format!("device {name}: {message} at byte offset {offset}");
                        self.send(ctx, self.event(EventKind::Error, detail)).await?;
                    }
                }
            }
        }
        Ok(())
    }

    fn observation(&self, r: Reading, clock_synced: bool) -> Observation {
        Observation::from_reading(self.device.clone(), r, clock_synced)
    }
}

/// An SMP session open on a connection (see the module documentation).
struct SmpSession {
    /// The adapter's end of the relay's channels.
    link: SmpLink,
    /// Console framing of what the device sends.
    decoder: ConsoleDecoder,
    /// Reused buffer of decoder output.
    events: Vec<ConsoleEvent>,
}

/// The next frame the relay sends on the open SMP session (`None`: the relay is done); pending
/// while no session is open. Cancel-safe.
async fn next_smp_frame(smp: &mut Option<SmpSession>) -> Option<Vec<u8>> {
    match smp {
        Some(s) => s.link.to_device.recv().await,
        None => std::future::pending().await,
    }
}

/// The data protocol's state on one connection, rebuilt after an SMP session.
struct DataState {
    /// The decoder.
    protocol: Box<dyn Protocol>,
    /// Keep-alive bytes (empty: none).
    keepalive: Vec<u8>,
    /// Keep-alive timer.
    ticker: tokio::time::Interval,
    /// Identity gate, error limiter, counters, line check.
    state: SessionState,
}

/// Per-connection state of [`SerialAdapter::session`].
struct SessionState {
    /// The identity gate of this connection.
    gate: IdentityGate,
    /// The last serial number logged when none is configured (log once per change).
    last_logged: Option<String>,
    /// Rate limit for error events.
    limiter: RateLimit,
    /// `frames_ok` of this connection's decoder already added to the counters.
    frames_seen: u64,
    /// The wrong-baud check of this connection.
    judge: LineJudge,
    /// Wall-clock time (ms since the epoch) the last bytes arrived: the stamp of what they
    /// completed, and of what a flush releases.
    last_bytes_ms: i64,
    /// When the last bytes read were handled: the quiet-line timer ([`GAP`]) counts from here.
    idle_from: Instant,
    /// The decoder was flushed and no byte has been fed since.
    flushed: bool,
}

/// The wrong-baud check of one connection, by windows of [`NO_FRAME_WINDOW`] bytes (pure; see
/// the module documentation).
#[derive(Debug, Default)]
struct LineJudge {
    /// Bytes, good frames and malformed frames in the current window.
    bytes: u64,
    frames: u64,
    errors: u64,
    /// The current bad stretch has been reported.
    reported: bool,
}

impl LineJudge {
    /// Accounts what one read gave; returns what to report when a bad window closes the first
    /// time in a stretch.
    fn observe(&mut self, bytes: u64, frames: u64, errors: u64) -> Option<String> {
        self.bytes += bytes;
        self.frames += frames;
        self.errors += errors;
        if self.bytes < NO_FRAME_WINDOW {
            return None;
        }
        let (b, f, e) = (self.bytes, self.frames, self.errors);
        (self.bytes, self.frames, self.errors) = (0, 0, 0);
        if f > 0 && e <= f {
            self.reported = false;
            return None;
        }
        if std::mem::replace(&mut self.reported, true) {
            return None;
        }
        Some(if f == 0 {
            format!("{b} bytes and no valid frame")
        } else {
            format!("{b} bytes, {f} valid frames and {e} malformed")
        })
    }
}

/// Writes all of `bytes`, failing after [`WRITE_TIMEOUT`].
async fn write(port: &mut SerialStream, bytes: &[u8]) -> Result<(), String> {
    match tokio::time::timeout(WRITE_TIMEOUT, port.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {}", describe_io_error(&e))),
        Err(_) => Err(format!("write did not complete within {WRITE_TIMEOUT:?}")),
    }
}

fn describe_io_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(5) => format!("I/O error (EIO, device unplugged?): {e}"),
        Some(19) => format!("no such device (ENODEV, unplugged): {e}"),
        _ => format!("read failed: {e}"),
    }
}

impl Adapter for SerialAdapter {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn run<'a>(&'a self, ctx: &'a mut AdapterContext) -> RunFuture<'a> {
        Box::pin(self.run_inner(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_without_a_frame_is_reported_once_per_bad_stretch() {
        let mut j = LineJudge::default();
        for _ in 0..3 {
            assert_eq!(j.observe(1024, 0, 0), None);
        }
        assert_eq!(
            j.observe(1024, 0, 0).as_deref(),
            Some("4096 bytes and no valid frame")
        );
        // Still bad: quiet, however long it lasts.
        for _ in 0..100 {
            assert_eq!(j.observe(1024, 0, 3), None);
        }
        // A good window re-arms it.
        for _ in 0..4 {
            assert_eq!(j.observe(1024, 100, 1), None);
        }
        for _ in 0..3 {
            assert_eq!(j.observe(1000, 2, 10), None);
        }
        assert_eq!(
            j.observe(1100, 0, 11).as_deref(),
            Some("4100 bytes, 6 valid frames and 41 malformed")
        );
    }

    #[test]
    fn a_good_stream_is_never_reported() {
        let mut j = LineJudge::default();
        // CMS50: 9 bytes a frame, a cut frame now and then.
        for i in 0..10_000u64 {
            assert_eq!(j.observe(90, 10, u64::from(i % 7 == 0)), None);
        }
    }
}
