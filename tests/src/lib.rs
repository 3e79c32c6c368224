//! Test support for the wardgate end-to-end suite (`tests/tests/*.rs`).
//!
//! Everything here drives the real thing: a real mosquitto with mutual TLS on a random loopback
//! port ([`broker`]), the real `wardgate` command line as child processes ([`process`], spawned
//! from the package's own `wardgate-e2e-bin`), real pseudo-terminals replaying recordings of
//! real devices ([`pty`], on top of [`wardgate_sim::devsim`]), the real SQLite files of the
//! gateway's store and the receiver's output ([`db`]), and a real nginx serving firmware images
//! with client certificates required ([`nginx`]). [`env::TestEnv`] ties them together, one
//! per test, in its own temporary directory.
//!
//! Rules the helpers follow: loopback only, random ports, every wait bounded by a deadline
//! ([`wait_until`]), only processes we started are signalled (by PID), and every child is killed
//! when its handle drops, so a failing test leaves nothing running.
//!
//! Set `WARDGATE_E2E_KEEP=1` to keep the temporary directories of the tests for inspection.

pub mod bench;
pub mod ble;
pub mod broker;
pub mod db;
pub mod env;
pub mod fault_proxy;
pub mod mqtt;
pub mod netns;
pub mod nginx;
pub mod process;
pub mod pty;
pub mod python;
pub mod smp_device;

use std::path::Path;
use std::time::{Duration, Instant};

pub use anyhow::{anyhow, bail, Context, Result};

/// The workspace root (`/work/main` in development, the CI clone's root in CI).
pub fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A file under `data/real/serial/` of the workspace.
pub fn real_recording(name: &str) -> std::path::PathBuf {
    workspace_root().join("data/real/serial").join(name)
}

/// Bytes of a hex string (test vectors). Panics on bad hex: test data is fixed.
pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex test data"))
        .collect()
}

/// A fresh temporary directory named after the test; kept when `WARDGATE_E2E_KEEP` is set.
pub fn temp_dir(name: &str) -> Result<tempfile::TempDir> {
    let mut t = tempfile::Builder::new()
        .prefix(&format!("wardgate-e2e-{name}-"))
        .tempdir()?;
    if std::env::var_os("WARDGATE_E2E_KEEP").is_some() {
        eprintln!("[e2e] keeping {}", t.path().display());
        t.disable_cleanup(true);
    }
    Ok(t)
}

/// Polls `f` every `every` until it returns `Ok(Some(_))`, or fails once `timeout` has passed
/// (the error names `what` and the last `Err` or state `f` reported). `f` is called at least
/// once, and once more after the deadline so a slow last step is not missed.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err: Option<anyhow::Error> = None;
    loop {
        let past = Instant::now() >= deadline;
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if past {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        std::thread::sleep(every);
    }
}

/// [`wait_until`] for a condition, polled every 50 ms.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    wait_until(what, timeout, Duration::from_millis(50), || {
        Ok(f()?.then_some(()))
    })
}

/// Whether the suite runs in CI: `CI` is set to anything but empty, `0` or `false` (`.ci/run`
/// sets `CI=true`; so do the common CI services).
pub fn in_ci() -> bool {
    ci_value_means_ci(std::env::var("CI").ok().as_deref())
}

fn ci_value_means_ci(v: Option<&str>) -> bool {
    match v {
        None => false,
        Some(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no"
        ),
    }
}

/// The one way a test in this workspace gives up because the machine lacks a tool or a
/// privilege: under CI ([`in_ci`]) it panics with `reason` — CI installs everything the suite
/// needs (`scripts/test`), so a missing tool there is a broken CI, not a pass. Elsewhere it
/// prints `SKIPPED: <test>: <reason>` straight to the terminal (not through the test harness's
/// output capture, which would hide it for a passing test), and the caller returns.
///
/// ```ignore
/// if !is_root() {
///     return wardgate_e2e::skip_or_fail("dpkg --root needs root");
/// }
/// ```
#[track_caller]
pub fn skip_or_fail(reason: &str) {
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map(str::to_string)
        .unwrap_or_else(|| std::panic::Location::caller().to_string());
    match skip_outcome(in_ci(), &test, reason) {
        Err(fail) => panic!("{fail}"),
        Ok(line) => {
            use std::io::Write;
            // `std::io::stderr()` directly: libtest captures only the print macros.
            let _ = writeln!(std::io::stderr(), "\n{line}");
        }
    }
}

/// What [`skip_or_fail`] does: `Ok(the SKIPPED line)` or, under CI, `Err(the failure)`.
fn skip_outcome(ci: bool, test: &str, reason: &str) -> std::result::Result<String, String> {
    if ci {
        Err(format!(
            "{test}: {reason}. CI runs every test (CI is set): install what it needs \
             (scripts/test does) instead of skipping"
        ))
    } else {
        Ok(format!("SKIPPED: {test}: {reason}"))
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub fn port_accepts(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Counts the lines of `text` containing `needle`.
pub fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// Every copy of one batch number seen in the raw messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchCopies {
    /// How many messages carried this batch number (re-sends included).
    pub copies: usize,
    /// The seqs (observations and events) it carries, in order.
    pub seqs: Vec<u64>,
}

/// Groups verified batch payloads (JSON, as printed by `wardgate verify`) by batch number and
/// checks the at-least-once contract of DESIGN §4: every copy of a batch number carries exactly
/// the same seqs, and no seq travels under two different batch numbers.
pub fn batches_by_number(
    payloads: &[serde_json::Value],
) -> Result<std::collections::BTreeMap<u64, BatchCopies>> {
    use std::collections::{BTreeMap, HashMap};
    let mut by: BTreeMap<u64, BatchCopies> = BTreeMap::new();
    let mut owner: HashMap<u64, u64> = HashMap::new();
    for p in payloads {
        let n = p["batch"]
            .as_u64()
            .context("payload without batch number")?;
        let mut seqs: Vec<u64> = Vec::new();
        for key in ["observations", "events"] {
            for item in p[key]
                .as_array()
                .with_context(|| format!("payload without {key}"))?
            {
                seqs.push(item["seq"].as_u64().context("item without seq")?);
            }
        }
        seqs.sort_unstable();
        match by.get_mut(&n) {
            Some(b) => {
                if b.seqs != seqs {
                    bail!(
                        "batch {n} was sent with different rows: {:?} and then {:?}",
                        b.seqs,
                        seqs
                    );
                }
                b.copies += 1;
            }
            None => {
                for s in &seqs {
                    if let Some(other) = owner.insert(*s, n) {
                        bail!("seq {s} travelled under two batch numbers: {other} and {n}");
                    }
                }
                by.insert(n, BatchCopies { copies: 1, seqs });
            }
        }
    }
    Ok(by)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_is_on_for_the_usual_values_and_off_when_unset_or_false() {
        for v in ["true", "1", "yes", "TRUE", "woodpecker"] {
            assert!(ci_value_means_ci(Some(v)), "{v}");
        }
        for v in [
            None,
            Some(""),
            Some("0"),
            Some("false"),
            Some("False"),
            Some("no"),
        ] {
            assert!(!ci_value_means_ci(v), "{v:?}");
        }
    }

    #[test]
    fn a_skip_is_a_failure_under_ci_and_a_loud_line_elsewhere() {
        assert_eq!(
            skip_outcome(false, "pkg::t", "needs root"),
            Ok("SKIPPED: pkg::t: needs root".to_string())
        );
        let e = skip_outcome(true, "pkg::t", "needs root").unwrap_err();
        assert!(
            e.starts_with("pkg::t: needs root. CI runs every test"),
            "{e}"
        );
    }
}
