//! The independent Python verifier (`tests/python/verify_cose.py`, `cbor2` + `cryptography`),
//! its decryptor for encrypted messages (`tests/python/decrypt_cose.py`, `--key`), and the
//! virtualenvs they run in (also the firmware tests', the SMP device emulator's and the SMP
//! peers', pinned).
//!
//! The venv is made once under the cargo target directory (`python3 -m venv`, then
//! `pip install cbor2 cryptography`) and reused by later runs; creating it is serialised by a
//! file lock so parallel tests and test binaries do not race. When PyPI cannot be reached this
//! **fails** (CI has PyPI access): an unverified wire format must not pass silently.

use crate::process::{run, Output};
use crate::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Packages the verifier imports.
pub const PACKAGES: &[&str] = &["cbor2", "cryptography"];

/// The verifier script.
pub fn script() -> PathBuf {
    crate::workspace_root().join("tests/python/verify_cose.py")
}

fn python3() -> PathBuf {
    std::env::var_os("PYTHON3")
        .map(PathBuf::from)
        .unwrap_or_else(|| "python3".into())
}

/// The firmware tests' tools, pinned with their dependencies (a locked set): `imgtool` makes and
/// verifies signed MCUboot images (FIRMWARE.md §4.2), `cbor2` + `cryptography` check a job's
/// COSE_Sign1 independently (`tests/python/verify_job.py`).
pub const FIRMWARE_PACKAGES: &[&str] = &[
    "imgtool==2.5.0",
    "cbor2==6.3.0",
    "cryptography==51.0.1",
    "click==8.5.1",
    "intelhex==2.3.0",
    "PyYAML==6.0.4",
    "cffi==2.1.1",
    "pycparser==3.12",
];

/// Packages of the SMP device emulator (`crate::smp_device`) and its test images (pinned:
/// FIRMWARE.md §4.1, F11).
pub const SMP_PACKAGES: &[&str] = &["smp==4.2.0", "imgtool==2.5.0"];

/// The independent SMP clients that check the Rust device model (`tests/python/smp_peers.py`):
/// PyPI `smpclient` with its serial (pyserial) and BLE (bleak → dbus-fast → BlueZ D-Bus)
/// transports, and PyPI `mcumgr-toolkit` (pyo3 binding of the Rust crate), the versions
/// FIRMWARE.md §4.1 tried, pinned with their dependencies (a locked set).
pub const PEER_PACKAGES: &[&str] = &[
    "smpclient[serial,ble]==7.3.0",
    "mcumgr-toolkit==0.20.0",
    "smp==4.2.0",
    "pyserial==3.5",
    "bleak==3.1.0",
    "dbus-fast==5.2.0",
    "pydantic==2.14.4",
    "pydantic_core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",
    "cbor2==6.3.0",
    "crcmod==1.7",
    "intelhex==2.3.0",
];

/// Returns the venv's python (creating the venv in `target_tmp/e2e-venv` when needed).
/// `target_tmp` is the test's `env!("CARGO_TARGET_TMPDIR")`.
pub fn venv_python(target_tmp: &Path) -> Result<PathBuf> {
    venv_with(
        target_tmp,
        "e2e-venv",
        PACKAGES,
        "import cbor2, cryptography",
    )
}

/// The firmware tests' venv (`target_tmp/fw-venv`, [`FIRMWARE_PACKAGES`]); its `bin/imgtool`
/// is beside the returned python.
pub fn firmware_venv_python(target_tmp: &Path) -> Result<PathBuf> {
    venv_with(
        target_tmp,
        "fw-venv",
        FIRMWARE_PACKAGES,
        "import imgtool, cbor2, cryptography",
    )
}

/// The SMP emulator's venv (`target_tmp/smp-venv`, [`SMP_PACKAGES`]).
pub fn smp_venv_python(target_tmp: &Path) -> Result<PathBuf> {
    venv_with(
        target_tmp,
        "smp-venv",
        SMP_PACKAGES,
        "import smp, imgtool, cbor2",
    )
}

/// The SMP peers' venv (`target_tmp/peers-venv`, [`PEER_PACKAGES`]).
pub fn peers_venv_python(target_tmp: &Path) -> Result<PathBuf> {
    venv_with(
        target_tmp,
        "peers-venv",
        PEER_PACKAGES,
        "import smpclient, smpclient.transport.serial, smpclient.transport.ble, mcumgr_toolkit",
    )
}

/// A venv `target_tmp/NAME` with `packages` installed, made once and reused while `imports`
/// runs in it; creation is serialised by a file lock.
fn venv_with(target_tmp: &Path, name: &str, packages: &[&str], imports: &str) -> Result<PathBuf> {
    use nix::fcntl::{Flock, FlockArg};
    std::fs::create_dir_all(target_tmp)?;
    let venv = target_tmp.join(name);
    let py = venv.join("bin/python");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(target_tmp.join(format!("{name}.lock")))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| crate::anyhow!("lock the venv: {e}"))?;
    if py.exists() {
        let mut c = std::process::Command::new(&py);
        c.args(["-c", imports]);
        if run(c, b"", Duration::from_secs(60))?.status.success() {
            return Ok(py);
        }
    }
    let mut c = std::process::Command::new(python3());
    c.arg("-m").arg("venv").arg("--clear").arg(&venv);
    let o = run(c, b"", Duration::from_secs(120)).context("python3 -m venv")?;
    if !o.status.success() {
        bail!(
            "python3 -m venv {} failed ({}):\n{}{}",
            venv.display(),
            o.status,
            o.stdout,
            o.stderr
        );
    }
    let mut c = std::process::Command::new(&py);
    c.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "-q",
    ])
    .args(packages);
    let o = run(c, b"", Duration::from_secs(300)).context("pip install")?;
    if !o.status.success() {
        bail!(
            "pip install {} into {} failed ({}); the independent verifier needs PyPI:\n{}{}",
            packages.join(" "),
            venv.display(),
            o.status,
            o.stdout,
            o.stderr
        );
    }
    Ok(py)
}

/// The verifier's totals line.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The raw run.
    pub output: Output,
    /// The parsed JSON totals (`messages`, `verified`, `failed`, `batches`, `observations`,
    /// `unique_observations`, `events`, `unique_events`, `per_device`, `per_location`).
    pub totals: serde_json::Value,
}

/// Runs `verify_cose.py --cert CERT PATHS…`.
pub fn verify(target_tmp: &Path, cert: &Path, paths: &[PathBuf]) -> Result<Summary> {
    verify_with(target_tmp, cert, None, paths)
}

/// Runs `verify_cose.py --cert CERT [--key RECEIVER_KEY] PATHS…`: with a key, every message is
/// decrypted first by the independent decryptor (`tests/python/decrypt_cose.py`).
pub fn verify_with(
    target_tmp: &Path,
    cert: &Path,
    key: Option<&Path>,
    paths: &[PathBuf],
) -> Result<Summary> {
    let py = venv_python(target_tmp)?;
    let mut c = std::process::Command::new(py);
    c.arg(script()).arg("--cert").arg(cert);
    if let Some(k) = key {
        c.arg("--key").arg(k);
    }
    c.args(paths);
    let output = run(c, b"", Duration::from_secs(120))?;
    let line = output.stdout.lines().last().unwrap_or_default();
    let totals = serde_json::from_str(line)
        .with_context(|| format!("verifier output is not JSON: {output:?}"))?;
    Ok(Summary { output, totals })
}
