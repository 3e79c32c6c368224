//! Child processes under test (`wardgate run`, `wardgate receive`, mosquitto): stdout and stderr
//! go to files for assertions, signals go by PID to this child only, and a handle that drops
//! kills its child (SIGKILL) and reaps it.

use crate::{bail, wait_until, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// Makes the child die (SIGKILL) when the thread that spawned it ends — also when the test
/// process itself is killed (kill -9, OOM) and no `Drop` runs, so nothing is left behind.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) is a single async-signal-safe system call; nothing is
    // allocated or locked between fork and exec.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// A running (or exited) child process whose output is captured in files.
pub struct Proc {
    /// Short name for messages, e.g. `gateway`.
    pub name: String,
    child: Child,
    exited: Option<ExitStatus>,
    /// Where its standard error goes (appended across restarts of the same name).
    pub stderr_path: PathBuf,
    /// Where its standard output goes.
    pub stdout_path: PathBuf,
}

impl Proc {
    /// Spawns `program args…` in `cwd`, appending stdout/stderr to `log_dir/NAME.stdout|stderr`.
    pub fn spawn<I, S>(
        name: &str,
        program: &Path,
        args: I,
        cwd: &Path,
        log_dir: &Path,
        envs: &[(&str, &str)],
    ) -> Result<Proc>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let stdout_path = log_dir.join(format!("{name}.stdout"));
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("open {}", p.display()))
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(open(&stdout_path)?)
            .stderr(open(&stderr_path)?);
        // The gateway logs to journald when it believes it runs under systemd; never here.
        cmd.env_remove("JOURNAL_STREAM");
        die_with_parent(&mut cmd);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name} ({})", program.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            exited: None,
            stderr_path,
            stdout_path,
        })
    }

    /// The child's PID.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Lines of stderr containing `needle`.
    pub fn stderr_count(&self, needle: &str) -> usize {
        crate::count_lines(&self.stderr(), needle)
    }

    /// Waits until stderr holds at least `n` lines containing `needle`.
    pub fn wait_stderr(&mut self, needle: &str, n: usize, timeout: Duration) -> Result<()> {
        wait_until(
            &format!("{n}× `{needle}` in {}'s stderr", self.name),
            timeout,
            Duration::from_millis(50),
            || {
                if self.stderr_count(needle) >= n {
                    return Ok(Some(()));
                }
                if let Some(st) = self.try_exit()? {
                    bail!(
                        "{} exited ({st}) before logging `{needle}`:\n{}",
                        self.name,
                        self.stderr()
                    );
                }
                Ok(None)
            },
        )
    }

    /// The exit status if it has exited (reaping it), `None` while it runs.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        Ok(self.exited)
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_exit(), Ok(None))
    }

    /// Waits for it to exit on its own, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let name = self.name.clone();
        wait_until(
            &format!("{name} to exit"),
            timeout,
            Duration::from_millis(20),
            || self.try_exit(),
        )
    }

    /// Sends `sig` to this child (only if it has not exited and been reaped: its PID is ours).
    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        if self.try_exit()?.is_none() {
            kill(self.pid(), sig)
                .with_context(|| format!("kill -{sig} {} ({})", self.pid(), self.name))?;
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit (SIGKILL after that, and an error).
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        match self.wait_exit(timeout) {
            Ok(st) => Ok(st),
            Err(e) => {
                let _ = self.kill9();
                Err(e.context(format!("{} ignored SIGTERM; killed it", self.name)))
            }
        }
    }

    /// `kill -9`: SIGKILL and reap.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        self.wait_exit(Duration::from_secs(10))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.try_exit(), Ok(None)) {
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// What a finished command printed.
#[derive(Clone, Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs `cmd` to completion with `stdin` as standard input, killing it after `timeout`.
pub fn run(mut cmd: Command, stdin: &[u8], timeout: Duration) -> Result<Output> {
    use std::io::{Read, Write};
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("JOURNAL_STREAM");
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let mut input = child.stdin.take().context("stdin")?;
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = match wait_until(
        &format!("{cmd:?} to finish"),
        timeout,
        Duration::from_millis(10),
        || Ok(child.try_wait()?),
    ) {
        Ok(st) => st,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}
