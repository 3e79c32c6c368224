//! [`ExecAdapter`]: one plug-in process, started, read, restarted and stopped by wardgate.
//!
//! # What it does
//! 1. Starts `command` with `args` in its own process group, with an explicit environment
//!    ([`ExecConfig::environment`], nothing inherited) and working directory
//!    ([`ExecConfig::working_dir`]), stdin/stdout/stderr as pipes and, through the launcher
//!    ([`ExecAdapter::with_launcher`], [`super::launch`]), no other descriptor. Logs the start
//!    (with the pid) but sends no event: a start is no sign of the device's life; what the
//!    plug-in sends is.
//! 2. Reads stdout as lines of at most `max_line` bytes ([`crate::framing::LineFramer`]) and
//!    parses each ([`super::message::parse_line`]): observations and events go to the gateway's
//!    channel with `send().await`. **Backpressure:** while that channel is full the adapter
//!    does not read the pipe, so a plug-in that writes faster than the store takes blocks in
//!    its own `write` (the pipe holds 64 KiB on Linux). What the adapter holds is at most one
//!    read (8 KiB) plus `max_line` bytes of a partial line ([`ExecStats::stdout_buffer_max`]).
//!    **Rate:** at most `max_lines_per_s` lines a second (a one-second burst): beyond it the
//!    adapter stops reading until the budget refills, logs `exceeds max_lines_per_s=N; reading
//!    slowed` once per episode at WARN and counts it ([`ExecStats::slowed`]), so a flooding
//!    plug-in cannot crowd the store and the uplink for every other device.
//! 3. A line that does not parse, or is longer than `max_line`, is counted
//!    ([`ExecStats::bad_lines`], [`ExecStats::lines_too_long`]) and reported as an `error` event
//!    `plug-in <name>: line N (byte offset M): <why>` (at most
//!    [`MAX_ERROR_EVENTS_PER_SEC`](crate::retry::MAX_ERROR_EVENTS_PER_SEC) a second, the rest
//!    counted and summarised within [`SUMMARY_EVERY`] of the window's end, or at the end of the
//!    run); nothing of it is stored, nothing stops. The reason never quotes the plug-in's value.
//! 4. Logs each stderr line as `plugin <name>: <line>` (the journal under systemd), at most
//!    [`STDERR_LINES_PER_SEC`] a second (the rest counted and summarised), each cut to
//!    [`STDERR_MAX_LINE`] bytes: a plug-in's diagnostics, so plug-ins must not print patient
//!    values there.
//! 5. Writes [`DeviceCommand`]s from [`ExecAdapter::command_sender`] to stdin as JSON lines
//!    ([`super::message::encode_command`]) through a queue of [`STDIN_QUEUE`]: a plug-in that
//!    does not read its stdin costs a dropped command ([`ExecStats::commands_dropped`]), never
//!    a stalled adapter.
//! 6. When the plug-in exits (or closes its stdout, which ends its usefulness: it is then
//!    stopped), the rest of its stdout is still read, the process is reaped (no zombie), what
//!    is left of its process group is killed, `disconnected` is emitted with the exit status,
//!    how long it ran and when it restarts, and it is started again after the common backoff
//!    ([`crate::retry`]: first wait 250–500 ms, doubling to `max_backoff_s`, reset after a run
//!    of [`RESTART_STABLE`]). A start that fails (missing file, not executable) is an `error`
//!    event, once per distinct reason, and retried on the same schedule.
//! 7. On shutdown: SIGTERM to the plug-in's process group and its stdin closed; after
//!    `stop_grace_s` without an exit, SIGKILL to the group; the process is always reaped.
//!
//! Counters are atomics readable at any time ([`ExecAdapter::stats`]).

use super::config::ExecConfig;
use super::message::{self, PluginMessage};
use crate::framing::{Framed, LineFramer};
use crate::observation::{DeviceEvent, DeviceId, EventKind, Observation};
use crate::retry::{Backoff, RateLimit, RESTART_INITIAL, RESTART_STABLE};
use crate::{Adapter, AdapterContext, AdapterError, AdapterEvent, DeviceCommand, RunFuture};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;

/// Bytes read from stdout at a time.
pub const READ_BUF: usize = 8192;
/// Longest stderr line logged, bytes (longer ones are cut).
pub const STDERR_MAX_LINE: usize = 1024;
/// Most stderr lines logged a second; the rest are counted and summarised.
pub const STDERR_LINES_PER_SEC: u32 = 20;
/// Commands waiting for the plug-in's stdin.
pub const STDIN_QUEUE: usize = 16;
/// Capacity of the adapter's command channel.
const COMMAND_CAPACITY: usize = 16;
/// How often the counts of bad lines and stderr lines held back by the rate limits are
/// summarised when no further line comes to carry them (they are also summarised at the end
/// of each run).
const SUMMARY_EVERY: Duration = Duration::from_secs(1);
/// After the plug-in exited, how long the rest of its stdout may take (a grandchild holding the
/// pipe open must not hold the adapter); after it closed its stdout, how long its exit may take
/// before it is stopped.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// A snapshot of an [`ExecAdapter`]'s counters (cumulative over the adapter's life).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExecStats {
    /// Times the plug-in was started.
    pub starts: u64,
    /// Starts after an exit (`starts` minus the first).
    pub restarts: u64,
    /// Times it exited or was stopped.
    pub exits: u64,
    /// Starts that failed (missing file, not executable, …).
    pub start_failures: u64,
    /// Lines understood (observations and events).
    pub lines_ok: u64,
    /// Lines refused (not JSON, wrong schema, bad value, unknown device).
    pub bad_lines: u64,
    /// Lines longer than `max_line` (also counted in `bad_lines`).
    pub lines_too_long: u64,
    /// Observations sent to the gateway.
    pub observations: u64,
    /// Events the plug-in reported.
    pub events: u64,
    /// Bytes read from stdout.
    pub stdout_bytes: u64,
    /// The most stdout bytes held at once (partial line + one read): the bound of what a
    /// flooding plug-in can make the adapter buffer.
    pub stdout_buffer_max: u64,
    /// stderr lines logged.
    pub stderr_lines: u64,
    /// stderr lines not logged (over the rate limit).
    pub stderr_suppressed: u64,
    /// Commands written to stdin.
    pub commands_written: u64,
    /// Commands dropped (the plug-in does not read its stdin, it is not running, or it cannot
    /// take them).
    pub commands_dropped: u64,
    /// Stops that needed SIGKILL (no exit within `stop_grace_s` of SIGTERM).
    pub forced_kills: u64,
    /// The pid of the running plug-in (0: none).
    pub pid: u64,
    /// Runs in a row that ended within [`RESTART_STABLE`] of their start (0 after a longer
    /// run): a plug-in that keeps failing at once (`wardgate status` lists it as a problem).
    pub quick_exits: u64,
    /// Times reading was slowed because the plug-in wrote more than `max_lines_per_s`
    /// (episodes: one per stretch over the limit).
    pub slowed: u64,
    /// Milliseconds the adapter held off reading stdout for `max_lines_per_s`.
    pub slowed_ms: u64,
}

#[derive(Debug, Default)]
struct Counters {
    starts: AtomicU64,
    restarts: AtomicU64,
    exits: AtomicU64,
    start_failures: AtomicU64,
    lines_ok: AtomicU64,
    bad_lines: AtomicU64,
    lines_too_long: AtomicU64,
    observations: AtomicU64,
    events: AtomicU64,
    stdout_bytes: AtomicU64,
    stdout_buffer_max: AtomicU64,
    stderr_lines: AtomicU64,
    stderr_suppressed: AtomicU64,
    commands_written: AtomicU64,
    commands_dropped: AtomicU64,
    forced_kills: AtomicU64,
    pid: AtomicU64,
    quick_exits: AtomicU64,
    slowed: AtomicU64,
    slowed_ms: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Why a run of the plug-in ended.
enum RunEnd {
    /// `shutdown` fired (the plug-in was stopped).
    Shutdown,
    /// The gateway's channel closed (the plug-in was stopped).
    ChannelClosed,
    /// It exited or was stopped for misbehaving: the description for `disconnected`.
    Exited(String),
}

/// One plug-in (see the module documentation).
pub struct ExecAdapter {
    cfg: ExecConfig,
    device: DeviceId,
    counters: Arc<Counters>,
    cmd_tx: mpsc::Sender<DeviceCommand>,
    cmd_rx: Mutex<mpsc::Receiver<DeviceCommand>>,
    /// A program that starts the plug-in with only descriptors 0–2 open
    /// ([`super::launch`]); `None`: the plug-in is started directly.
    launcher: Option<PathBuf>,
}

impl ExecAdapter {
    /// An adapter for one configured plug-in. Nothing is started until [`Adapter::run`].
    pub fn new(cfg: ExecConfig) -> Self {
        let device = cfg.device_id();
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CAPACITY);
        ExecAdapter {
            cfg,
            device,
            counters: Arc::default(),
            cmd_tx,
            cmd_rx: Mutex::new(cmd_rx),
            launcher: None,
        }
    }

    /// Starts the plug-in through `launcher` (the `wardgate` binary itself, e.g.
    /// `/proc/self/exe`, which runs [`super::launch::launch`] for
    /// [`super::launch::LAUNCH_ARG`]): the plug-in then inherits no descriptor but 0–2, whatever
    /// the daemon's process holds open.
    pub fn with_launcher(mut self, launcher: PathBuf) -> Self {
        self.launcher = Some(launcher);
        self
    }

    /// `exec:<name>`.
    pub fn device_id(&self) -> &DeviceId {
        &self.device
    }

    /// The plug-in's command channel: commands sent here are written to its stdin.
    pub fn command_sender(&self) -> mpsc::Sender<DeviceCommand> {
        self.cmd_tx.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ExecStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ExecStats {
            starts: g(&c.starts),
            restarts: g(&c.restarts),
            exits: g(&c.exits),
            start_failures: g(&c.start_failures),
            lines_ok: g(&c.lines_ok),
            bad_lines: g(&c.bad_lines),
            lines_too_long: g(&c.lines_too_long),
            observations: g(&c.observations),
            events: g(&c.events),
            stdout_bytes: g(&c.stdout_bytes),
            stdout_buffer_max: g(&c.stdout_buffer_max),
            stderr_lines: g(&c.stderr_lines),
            stderr_suppressed: g(&c.stderr_suppressed),
            commands_written: g(&c.commands_written),
            commands_dropped: g(&c.commands_dropped),
            forced_kills: g(&c.forced_kills),
            pid: g(&c.pid),
            quick_exits: g(&c.quick_exits),
            slowed: g(&c.slowed),
            slowed_ms: g(&c.slowed_ms),
        }
    }

    fn event(&self, device: DeviceId, kind: EventKind, detail: String) -> AdapterEvent {
        AdapterEvent::Event(DeviceEvent::new(device, kind, detail))
    }

    /// Sends to the gateway, giving up when shutdown fires first (`Ok(false)`).
    async fn send(&self, ctx: &mut AdapterContext, ev: AdapterEvent) -> Result<bool, AdapterError> {
        if *ctx.shutdown.borrow() {
            return Ok(false);
        }
        tokio::select! {
            r = ctx.out.send(ev) => r.map(|_| true).map_err(|_| AdapterError::ChannelClosed),
            _ = wait_shutdown(&mut ctx.shutdown) => Ok(false),
        }
    }

    async fn run_inner(&self, ctx: &mut AdapterContext) -> Result<(), AdapterError> {
        let name = &self.cfg.name;
        let Ok(mut cmd_rx) = self.cmd_rx.try_lock() else {
            return Err(AdapterError::Config("adapter is already running".into()));
        };
        let cap = Duration::from_secs(self.cfg.max_backoff_s.max(1));
        let mut backoff = Backoff::new(RESTART_INITIAL, cap);
        let mut start_failure: Option<String> = None;
        loop {
            if *ctx.shutdown.borrow() {
                return Ok(());
            }
            match self.spawn() {
                Ok(child) => {
                    start_failure = None;
                    let pid = child.id().unwrap_or(0);
                    if self.counters.starts.fetch_add(1, Ordering::Relaxed) > 0 {
                        bump(&self.counters.restarts, 1);
                    }
                    self.counters.pid.store(pid as u64, Ordering::Relaxed);
                    // Only in the journal: a start is no sign of the device's life (what the
                    // plug-in sends is), so it is no `connected` event.
                    log::info!(
                        "plugin {name}: started {} (pid {pid})",
                        self.cfg.command.display()
                    );
                    if *ctx.shutdown.borrow() {
                        let mut child = child;
                        self.stop(&mut child, pid).await;
                        self.counters.pid.store(0, Ordering::Relaxed);
                        return Ok(());
                    }
                    let began = Instant::now();
                    let end = self.run_child(child, pid, ctx, &mut cmd_rx).await;
                    self.counters.pid.store(0, Ordering::Relaxed);
                    bump(&self.counters.exits, 1);
                    match end {
                        RunEnd::Shutdown => return Ok(()),
                        RunEnd::ChannelClosed => return Err(AdapterError::ChannelClosed),
                        RunEnd::Exited(how) => {
                            let ran = began.elapsed();
                            if ran >= RESTART_STABLE {
                                backoff.reset();
                                self.counters.quick_exits.store(0, Ordering::Relaxed);
                            } else {
                                bump(&self.counters.quick_exits, 1);
                            }
                            let wait = backoff.next_delay();
                            let why = format!(
                                "{how} after {:.1} s; restarting in {:.1} s",
                                ran.as_secs_f64(),
                                wait.as_secs_f64()
                            );
                            log::warn!("plugin {name}: {why}");
                            let detail = format!("plug-in {name}: {why}");
                            self.send(
                                ctx,
                                self.event(self.device.clone(), EventKind::Disconnected, detail),
                            )
                            .await?;
                            if !self.wait(ctx, &mut cmd_rx, wait).await {
                                return Ok(());
                            }
                        }
                    }
                }
                Err(e) => {
                    bump(&self.counters.start_failures, 1);
                    let wait = backoff.next_delay();
                    let why = format!("cannot start {}: {e}", self.cfg.command.display());
                    if start_failure.as_deref() != Some(why.as_str()) {
                        log::error!("plugin {name}: {why}; retrying");
                        let detail = format!("plug-in {name}: {why}");
                        self.send(
                            ctx,
                            self.event(self.device.clone(), EventKind::Error, detail),
                        )
                        .await?;
                        start_failure = Some(why);
                    } else {
                        log::debug!("plugin {name}: {why}");
                    }
                    if !self.wait(ctx, &mut cmd_rx, wait).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Waits `wait` before a restart; commands meanwhile are dropped. `false`: shutdown.
    async fn wait(
        &self,
        ctx: &mut AdapterContext,
        cmd_rx: &mut mpsc::Receiver<DeviceCommand>,
        wait: Duration,
    ) -> bool {
        let until = Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                _ = wait_shutdown(&mut ctx.shutdown) => return false,
                cmd = cmd_rx.recv() => {
                    if cmd.is_some() {
                        bump(&self.counters.commands_dropped, 1);
                        log::debug!("plugin {}: command dropped: not running", self.cfg.name);
                    }
                }
            }
        }
    }

    /// Starts the plug-in (see the module documentation).
    fn spawn(&self) -> std::io::Result<Child> {
        let mut cmd = match &self.launcher {
            Some(launcher) => {
                // The launcher's exec would fail in the child, seen only as an exit status:
                // say here what a direct start would say.
                let m = std::fs::metadata(&self.cfg.command)?;
                if !m.is_file()
                    || std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 == 0
                {
                    return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
                }
                let mut c = Command::new(launcher);
                c.arg(super::launch::LAUNCH_ARG).arg(&self.cfg.command);
                c
            }
            None => Command::new(&self.cfg.command),
        };
        cmd.args(&self.cfg.args)
            .env_clear()
            .envs(self.cfg.environment())
            .current_dir(self.cfg.working_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        cmd.spawn()
    }

    /// SIGTERM to the group and stdin closed (the caller dropped it), SIGKILL after the grace
    /// period; reaps the process. Returns its exit status, if it could be had.
    async fn stop(&self, child: &mut Child, pid: u32) -> Option<ExitStatus> {
        let name = &self.cfg.name;
        signal_group(pid, nix::sys::signal::Signal::SIGTERM);
        let grace = Duration::from_secs(self.cfg.stop_grace_s.max(1));
        let status = match tokio::time::timeout(grace, child.wait()).await {
            Ok(s) => s.ok(),
            Err(_) => {
                bump(&self.counters.forced_kills, 1);
                log::warn!(
                    "plugin {name}: still running {} s after SIGTERM: SIGKILL",
                    grace.as_secs()
                );
                signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.start_kill();
                child.wait().await.ok()
            }
        };
        // What is left of its process group (children it started) goes with it.
        signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        status
    }

    /// Runs one started plug-in until it exits, is stopped, or shutdown fires.
    async fn run_child(
        &self,
        mut child: Child,
        pid: u32,
        ctx: &mut AdapterContext,
        cmd_rx: &mut mpsc::Receiver<DeviceCommand>,
    ) -> RunEnd {
        let name = &self.cfg.name;
        let (Some(mut stdout), Some(mut stderr), Some(stdin)) =
            (child.stdout.take(), child.stderr.take(), child.stdin.take())
        else {
            self.stop(&mut child, pid).await;
            return RunEnd::Exited("started without its pipes".into());
        };
        let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(STDIN_QUEUE);
        let writer = tokio::spawn(write_stdin(stdin, stdin_rx, self.counters.clone()));
        let mut stdin_tx = Some(stdin_tx);
        let mut framer = LineFramer::new(b"\n", self.cfg.max_line);
        let mut err_framer = LineFramer::new(b"\n", STDERR_MAX_LINE);
        let mut buf = vec![0u8; READ_BUF];
        let mut ebuf = vec![0u8; 4096];
        let mut st = ReadState {
            line: 0,
            budget: LineBudget::new(self.cfg.max_lines_per_s, Instant::now().into_std()),
            limiter: RateLimit::error_events(),
            stderr_limiter: RateLimit::new(STDERR_LINES_PER_SEC, Duration::from_secs(1)),
        };
        let (mut stdout_open, mut stderr_open) = (true, true);
        let mut exited: Option<(ExitStatus, Instant)> = None;
        // When stdout reached its end while the process still ran.
        let mut stdout_closed: Option<Instant> = None;
        let mut smp_refused = false;
        let mut summaries = tokio::time::interval_at(Instant::now() + SUMMARY_EVERY, SUMMARY_EVERY);
        summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            if let Some((status, _)) = exited {
                if !stdout_open && !stderr_open {
                    break RunEnd::Exited(describe_exit(status));
                }
            }
            if !stdout_open && exited.is_none() && stdout_closed.is_none() {
                stdout_closed = Some(Instant::now());
            }
            // After an exit, the rest of the output; after stdout closed, the exit.
            let deadline = match (exited, stdout_closed) {
                (Some((_, at)), _) => Some(at + DRAIN_AFTER_EXIT),
                (None, Some(at)) => Some(at + DRAIN_AFTER_EXIT),
                (None, None) => None,
            };
            tokio::select! {
                _ = wait_shutdown(&mut ctx.shutdown) => {
                    drop(stdin_tx.take());
                    self.summarise(&mut st, ctx, true).await;
                    let status = self.stop(&mut child, pid).await;
                    log::info!(
                        "plugin {name}: stopped ({})",
                        status.map_or("no status".into(), describe_exit)
                    );
                    writer.abort();
                    return RunEnd::Shutdown;
                }
                r = stdout.read(&mut buf), if stdout_open => match r {
                    Ok(0) | Err(_) => stdout_open = false,
                    Ok(n) => {
                        bump(&self.counters.stdout_bytes, n as u64);
                        framer.push(&buf[..n]);
                        self.counters
                            .stdout_buffer_max
                            .fetch_max(framer.high_water() as u64, Ordering::Relaxed);
                        match self.take_lines(&mut framer, &mut st, ctx).await {
                            Ok(true) => {}
                            Ok(false) => {
                                drop(stdin_tx.take());
                                self.summarise(&mut st, ctx, true).await;
                                let status = self.stop(&mut child, pid).await;
                                log::info!(
                                    "plugin {name}: stopped ({})",
                                    status.map_or("no status".into(), describe_exit)
                                );
                                writer.abort();
                                return RunEnd::Shutdown;
                            }
                            Err(_) => {
                                drop(stdin_tx.take());
                                self.stop(&mut child, pid).await;
                                writer.abort();
                                return RunEnd::ChannelClosed;
                            }
                        }
                    }
                },
                r = stderr.read(&mut ebuf), if stderr_open => match r {
                    Ok(0) | Err(_) => {
                        stderr_open = false;
                        if let Some((_, bytes)) = err_framer.remainder() {
                            self.log_stderr(bytes, &mut st);
                        }
                    }
                    Ok(n) => {
                        err_framer.push(&ebuf[..n]);
                        while let Some(l) = err_framer.next_line() {
                            match l {
                                Framed::Line { bytes, .. } => self.log_stderr(bytes, &mut st),
                                Framed::TooLong { .. } => {
                                    self.log_stderr(b"(a stderr line longer than 1024 bytes, dropped)", &mut st)
                                }
                            }
                        }
                    }
                },
                status = child.wait(), if exited.is_none() => {
                    let status = status.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(0));
                    exited = Some((status, Instant::now()));
                    // Children it left behind in its group go with it.
                    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                }
                _ = sleep_until_opt(deadline) => {
                    if let Some((status, _)) = exited {
                        break RunEnd::Exited(describe_exit(status));
                    }
                    // Alive without a stdout: of no use; stopped and restarted.
                    drop(stdin_tx.take());
                    let status = self.stop(&mut child, pid).await;
                    exited = status.map(|s| (s, Instant::now()));
                    break RunEnd::Exited(format!(
                        "closed its standard output and was stopped ({})",
                        status.map_or("no status".into(), describe_exit)
                    ));
                }
                _ = summaries.tick() => self.summarise(&mut st, ctx, false).await,
                cmd = cmd_rx.recv() => match cmd {
                    Some(c) => match message::encode_command(&c) {
                        Some(line) => {
                            let sent = stdin_tx.as_ref().map(|tx| tx.try_send(line));
                            if !matches!(sent, Some(Ok(()))) {
                                bump(&self.counters.commands_dropped, 1);
                                log::debug!("plugin {name}: command dropped: the plug-in is not reading its stdin");
                            }
                        }
                        None => {
                            bump(&self.counters.commands_dropped, 1);
                            if !std::mem::replace(&mut smp_refused, true) {
                                log::info!("plugin {name}: SMP (firmware) sessions go through serial devices only; refused");
                            }
                        }
                    },
                    // Unreachable while `self` holds a sender.
                    None => std::future::pending::<()>().await,
                },
            }
        };
        drop(stdin_tx);
        writer.abort();
        self.summarise(&mut st, ctx, true).await;
        if let Some((offset, _)) = framer.remainder() {
            // A last line without its newline: refused like any bad line.
            bump(&self.counters.bad_lines, 1);
            log::warn!(
                "plugin {name}: its last output line (byte offset {offset}) had no newline; dropped"
            );
        }
        if exited.is_none() {
            self.stop(&mut child, pid).await;
        }
        end
    }

    /// Handles every complete stdout line in `framer`. `Ok(false)`: shutdown fired while the
    /// gateway's channel was full.
    async fn take_lines(
        &self,
        framer: &mut LineFramer,
        st: &mut ReadState,
        ctx: &mut AdapterContext,
    ) -> Result<bool, AdapterError> {
        let name = &self.cfg.name;
        loop {
            let (offset, parsed) = match framer.next_line() {
                None => return Ok(true),
                Some(Framed::Line { offset, bytes }) => {
                    if bytes.iter().all(u8::is_ascii_whitespace) {
                        continue; // blank lines are allowed, and mean nothing
                    }
                    (offset, message::parse_line(bytes, &self.cfg.devices))
                }
                Some(Framed::TooLong { offset, max_line }) => {
                    bump(&self.counters.lines_too_long, 1);
                    (
                        offset,
                        Err(format!(
                            "longer than max_line ({max_line} bytes); dropped up to its newline"
                        )),
                    )
                }
            };
            st.line += 1;
            if !self.take_budget(st, ctx).await {
                return Ok(false);
            }
            let now = Instant::now().into_std();
            if let Some(n) = st.limiter.take_suppressed(now) {
                let detail =
                    format!("plug-in {name}: {n} further bad lines not reported one by one");
                if !self
                    .send(
                        ctx,
                        self.event(self.device.clone(), EventKind::Error, detail),
                    )
                    .await?
                {
                    return Ok(false);
                }
            }
            let ev = match parsed {
                Ok(PluginMessage::Observation { device, reading }) => {
                    bump(&self.counters.lines_ok, 1);
                    bump(&self.counters.observations, 1);
                    AdapterEvent::Observation(Observation::from_reading(
                        self.device_of(device),
                        reading,
                        *ctx.clock_synced.borrow(),
                    ))
                }
                Ok(PluginMessage::Waveform {
                    device,
                    reading,
                    waveform,
                }) => {
                    bump(&self.counters.lines_ok, 1);
                    bump(&self.counters.observations, 1);
                    let mut o = Observation::from_reading(
                        self.device_of(device),
                        reading,
                        *ctx.clock_synced.borrow(),
                    );
                    // Observation::waveform's time is its first sample's.
                    o.gateway_time = message::first_sample_ms(o.gateway_time, &waveform);
                    o.waveform = Some(waveform);
                    AdapterEvent::Observation(o)
                }
                Ok(PluginMessage::Event {
                    device,
                    kind,
                    detail,
                }) => {
                    bump(&self.counters.lines_ok, 1);
                    bump(&self.counters.events, 1);
                    self.event(self.device_of(device), kind, detail)
                }
                Err(why) => {
                    bump(&self.counters.bad_lines, 1);
                    if !st.limiter.allow(now) {
                        continue;
                    }
                    let what = format!("line {} (byte offset {offset}): {why}", st.line);
                    log::warn!("plugin {name}: {what}");
                    self.event(
                        self.device.clone(),
                        EventKind::Error,
                        format!("plug-in {name}: {what}"),
                    )
                }
            };
            if !self.send(ctx, ev).await? {
                return Ok(false);
            }
        }
    }

    /// Takes one line of the `max_lines_per_s` budget; when it is spent, waits (not reading
    /// the pipe: the plug-in blocks in its `write`) until it refills. The first wait of an
    /// episode is logged and counted. `false`: shutdown fired while waiting.
    async fn take_budget(&self, st: &mut ReadState, ctx: &mut AdapterContext) -> bool {
        loop {
            let now = Instant::now();
            match st.budget.take(now.into_std()) {
                Budget::Ok => return true,
                Budget::Wait { wait, new_episode } => {
                    if new_episode {
                        bump(&self.counters.slowed, 1);
                        log::warn!(
                            "plugin {}: exceeds max_lines_per_s={}; reading slowed",
                            self.cfg.name,
                            self.cfg.max_lines_per_s
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = wait_shutdown(&mut ctx.shutdown) => return false,
                    }
                    bump(
                        &self.counters.slowed_ms,
                        now.elapsed().as_millis().try_into().unwrap_or(u64::MAX),
                    );
                }
            }
        }
    }

    fn device_of(&self, device: Option<usize>) -> DeviceId {
        match device.and_then(|i| self.cfg.devices.get(i)) {
            Some(d) => self.cfg.sub_device_id(d),
            None => self.device.clone(),
        }
    }

    /// Says how many bad lines (an `error` event, and the journal) and stderr lines (the
    /// journal) the rate limits held back: those of a window that is over, or all of them when
    /// `all` (the run ends). An event the gateway cannot take (shutdown) is only logged.
    async fn summarise(&self, st: &mut ReadState, ctx: &mut AdapterContext, all: bool) {
        let name = &self.cfg.name;
        let now = Instant::now().into_std();
        let (bad, stderr) = if all {
            (
                st.limiter.take_all_suppressed(),
                st.stderr_limiter.take_all_suppressed(),
            )
        } else {
            (
                st.limiter.take_suppressed(now),
                st.stderr_limiter.take_suppressed(now),
            )
        };
        if let Some(n) = stderr {
            log::info!(
                "plugin {name}: ({n} stderr lines not logged: more than {STDERR_LINES_PER_SEC} a second)"
            );
        }
        if let Some(n) = bad {
            let what = format!("{n} further bad lines not reported one by one");
            log::warn!("plugin {name}: {what}");
            let detail = format!("plug-in {name}: {what}");
            let _ = self
                .send(
                    ctx,
                    self.event(self.device.clone(), EventKind::Error, detail),
                )
                .await;
        }
    }

    fn log_stderr(&self, bytes: &[u8], st: &mut ReadState) {
        let now = Instant::now().into_std();
        if let Some(n) = st.stderr_limiter.take_suppressed(now) {
            log::info!(
                "plugin {}: ({n} stderr lines not logged: more than {STDERR_LINES_PER_SEC} a second)",
                self.cfg.name
            );
        }
        if !st.stderr_limiter.allow(now) {
            bump(&self.counters.stderr_suppressed, 1);
            return;
        }
        bump(&self.counters.stderr_lines, 1);
        let text: String = String::from_utf8_lossy(bytes)
            .trim_end()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        log::info!("plugin {}: {text}", self.cfg.name);
    }
}

/// Per-run reading state.
struct ReadState {
    /// `max_lines_per_s`.
    budget: LineBudget,
    /// stdout lines seen (numbered from 1 in reports).
    line: u64,
    /// Bad-line `error` events.
    limiter: RateLimit,
    /// stderr lines logged.
    stderr_limiter: RateLimit,
}

/// What [`LineBudget::take`] allows.
#[derive(Debug, PartialEq)]
enum Budget {
    /// The line may be read.
    Ok,
    /// Wait this long, then ask again; `new_episode`: the first wait since the budget was last
    /// full (logged once).
    Wait { wait: Duration, new_episode: bool },
}

/// A token bucket of stdout lines (pure: the time is passed in): `rate` a second, at most one
/// second's worth banked. When it is empty the caller waits for a twentieth of a second's
/// worth (at least one line), so a plug-in over the limit is read in short bursts, not line by
/// line. An episode of slowing ends when the bucket is full again (the plug-in stayed under
/// the limit for a while).
#[derive(Debug)]
struct LineBudget {
    rate: f64,
    tokens: f64,
    at: std::time::Instant,
    slowed: bool,
}

impl LineBudget {
    fn new(rate: u32, now: std::time::Instant) -> Self {
        let rate = f64::from(rate.max(1));
        LineBudget {
            rate,
            tokens: rate,
            at: now,
            slowed: false,
        }
    }

    fn take(&mut self, now: std::time::Instant) -> Budget {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        if self.tokens >= self.rate {
            self.slowed = false;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Budget::Ok;
        }
        let want = (self.rate / 20.0).max(1.0);
        let wait = Duration::from_secs_f64((want - self.tokens) / self.rate);
        Budget::Wait {
            wait,
            new_episode: !std::mem::replace(&mut self.slowed, true),
        }
    }
}

/// Writes queued command lines to the plug-in's stdin until the queue closes or a write fails.
async fn write_stdin(
    mut stdin: ChildStdin,
    mut rx: mpsc::Receiver<Vec<u8>>,
    counters: Arc<Counters>,
) {
    while let Some(line) = rx.recv().await {
        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
            bump(&counters.commands_dropped, 1 + rx.len() as u64);
            return;
        }
        bump(&counters.commands_written, 1);
    }
}

/// Resolves when `shutdown` turns true (or its sender is gone). Cancel-safe.
async fn wait_shutdown(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends `sig` to the process group led by `pid` (the plug-in, started with `process_group(0)`);
/// a group that is gone already is fine.
fn signal_group(pid: u32, sig: nix::sys::signal::Signal) {
    if pid == 0 {
        return;
    }
    let Ok(pid) = i32::try_from(pid) else { return };
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
}

/// `exited with status 3`, `killed by signal 9 (SIGKILL)`.
fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => match nix::sys::signal::Signal::try_from(s) {
            Ok(sig) => format!("killed by signal {s} ({sig})"),
            Err(_) => format!("killed by signal {s}"),
        },
        _ => "ended".into(),
    }
}

impl Adapter for ExecAdapter {
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
    fn the_line_budget_allows_its_rate_and_a_one_second_burst() {
        let t0 = std::time::Instant::now();
        let mut b = LineBudget::new(100, t0);
        // A burst of one second's worth, then a wait of a twentieth of a second's worth.
        for _ in 0..100 {
            assert_eq!(b.take(t0), Budget::Ok);
        }
        let Budget::Wait { wait, new_episode } = b.take(t0) else {
            panic!("over the burst")
        };
        assert!(new_episode);
        assert!((wait.as_secs_f64() - 0.05).abs() < 1e-9, "{wait:?}");
        // Still over: the same episode.
        assert!(matches!(
            b.take(t0 + Duration::from_millis(5)),
            Budget::Wait {
                new_episode: false,
                ..
            }
        ));
        // After the wait, five lines (50 ms at 100/s), then a wait again.
        let t1 = t0 + Duration::from_millis(55);
        for _ in 0..5 {
            assert_eq!(b.take(t1), Budget::Ok);
        }
        assert!(matches!(
            b.take(t1),
            Budget::Wait {
                new_episode: false,
                ..
            }
        ));
        // Over a long run the accepted rate is the limit: 10 s → about 1,000 lines.
        let mut n = 0u32;
        let mut now = t1;
        while now < t1 + Duration::from_secs(10) {
            match b.take(now) {
                Budget::Ok => n += 1,
                Budget::Wait { wait, .. } => now += wait,
            }
        }
        assert!((995..=1_006).contains(&n), "{n}");
        // A full bucket (a second under the limit) ends the episode: the next is logged again.
        let t2 = now + Duration::from_secs(2);
        for _ in 0..100 {
            assert_eq!(b.take(t2), Budget::Ok);
        }
        assert!(matches!(
            b.take(t2),
            Budget::Wait {
                new_episode: true,
                ..
            }
        ));
        // One line a second at a limit of 1: a wait of one second.
        let mut one = LineBudget::new(1, t0);
        assert_eq!(one.take(t0), Budget::Ok);
        let Budget::Wait { wait, .. } = one.take(t0) else {
            panic!()
        };
        assert_eq!(wait, Duration::from_secs(1));
    }
}
