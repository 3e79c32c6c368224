//! The SMP device emulator (`tests/python/smp_device.py`, on PyPI `smp`: independent of our
//! codec) on a real pty behind a symlink, and signed MCUboot test images made with PyPI `imgtool`.

use crate::process::{run, Proc};
use crate::{bail, python, wait_for, Context, Result};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The emulator script.
pub fn script() -> PathBuf {
    crate::workspace_root().join("tests/python/smp_device.py")
}

/// A running emulated device.
pub struct SmpDevice {
    proc: Proc,
    /// The stable path of its pty (what `--port` gets).
    pub link: PathBuf,
    /// Its event log (`session new`, `erase delay=…`, `drop`, `reset`, `boot …`).
    pub log: PathBuf,
}

impl SmpDevice {
    /// Starts the emulator in `dir` with fault `flags` and waits for its pty.
    pub fn start(target_tmp: &Path, dir: &Path, name: &str, flags: &[&str]) -> Result<SmpDevice> {
        let py = python::smp_venv_python(target_tmp)?;
        let link = dir.join(format!("{name}.tty"));
        let log = dir.join(format!("{name}.log"));
        let mut args: Vec<String> = vec![
            script().display().to_string(),
            "--link".into(),
            link.display().to_string(),
            "--log".into(),
            log.display().to_string(),
        ];
        args.extend(flags.iter().map(|s| s.to_string()));
        let proc = Proc::spawn(name, &py, &args, dir, dir, &[])?;
        let d = SmpDevice { proc, link, log };
        wait_for("the emulator's pty", Duration::from_secs(30), || {
            Ok(d.link.exists())
        })
        .with_context(|| d.proc.stderr())?;
        Ok(d)
    }

    /// The event log so far.
    pub fn events(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the event log containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        crate::count_lines(&self.events(), needle)
    }

    /// Power-cycles the device (SIGUSR1): MCUboot runs as at a reset.
    pub fn power_cycle(&mut self) -> Result<()> {
        let resets = self.count("boot");
        self.proc.signal(Signal::SIGUSR1)?;
        wait_for("the power cycle", Duration::from_secs(30), || {
            Ok(self.count("boot") > resets && self.link.exists())
        })
    }

    /// What the emulator wrote to stderr (Python tracebacks).
    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }
}

impl Drop for SmpDevice {
    fn drop(&mut self) {
        let _ = self.proc.kill9();
    }
}

/// A signed MCUboot image of `body_len` random bytes and `version` (imgtool `sign`, ECDSA P-256
/// key made once in `dir`), at `dir/app-<version>.bin`, for a 1 MiB slot.
pub fn make_image(
    target_tmp: &Path,
    dir: &Path,
    version: &str,
    body_len: usize,
) -> Result<PathBuf> {
    make_image_for_slot(target_tmp, dir, version, body_len, 0x100000)
}

/// [`make_image`] for a slot of `slot_size` bytes (imgtool checks that the image and MCUboot's
/// trailer fit it).
pub fn make_image_for_slot(
    target_tmp: &Path,
    dir: &Path,
    version: &str,
    body_len: usize,
    slot_size: usize,
) -> Result<PathBuf> {
    let py = python::smp_venv_python(target_tmp)?;
    let imgtool = |args: &[&str]| -> Result<()> {
        let mut c = std::process::Command::new(&py);
        c.args(["-m", "imgtool.main"]).args(args).current_dir(dir);
        let o = run(c, b"", Duration::from_secs(120))?;
        if !o.status.success() {
            bail!("imgtool {args:?} failed: {}{}", o.stdout, o.stderr);
        }
        Ok(())
    };
    if !dir.join("key.pem").exists() {
        imgtool(&["keygen", "-k", "key.pem", "-t", "ecdsa-p256"])?;
    }
    let raw = dir.join(format!("raw-{version}.bin"));
    let body: Vec<u8> = (0..body_len).map(|_| fastrand_byte()).collect();
    std::fs::write(&raw, body)?;
    let out = dir.join(format!("app-{version}.bin"));
    imgtool(&[
        "sign",
        "--key",
        "key.pem",
        "--header-size",
        "0x200",
        "--align",
        "4",
        "--version",
        version,
        "--slot-size",
        &format!("{slot_size:#x}"),
        "--pad-header",
        raw.to_str().context("path")?,
        out.to_str().context("path")?,
    ])?;
    Ok(out)
}

fn fastrand_byte() -> u8 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    // xorshift: random-looking image bytes without another dependency.
    let mut x = STATE.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    (x >> 24) as u8
}
