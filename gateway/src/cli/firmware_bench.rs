//! `wardgate firmware list|upload` (issue 10, a contract; subcommands of `cli/firmware.rs`):
//! the SMP client of the relay (`wardgate_adapters::smp`) on a serial port, for a biomedical
//! technician on the bench.
//!
//! - `list --port PATH [--baud N]`: the device's image slots as JSON lines (`slot`, `version`,
//!   `hash` hex, `active`, `confirmed`, `pending`, `bootable`, `permanent`, `image`).
//! - `upload --port PATH [--baud N] IMAGE [--mode test-confirm|confirm-only|test-only]`: upload
//!   (resumes where the device is), check slot 1's hash against the image's MCUboot hash, then
//!   per mode: test-confirm = test → reset → wait for the device (`--swap-time`, default 60 s)
//!   → list → confirm → list; confirm-only = confirm (permanent) → reset → wait → list;
//!   test-only = test → reset → wait → list. Success only when the device runs the image, with
//!   its hash, and (but for test-only) confirmed. A `\r` progress line on a terminal; stdout
//!   ends with `uploaded N bytes in S s (K KB/s)`. A failure prints `reason=<reason>` (the
//!   client's `SmpError::reason`, or `reverted`, `not_running`, `not_confirmed`,
//!   `device_gone`, `not_mcuboot`, `image_hash_mismatch`) and exits 1.

use crate::firmware::image;
use anyhow::{anyhow, Context};
use clap::ValueEnum;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wardgate_adapters::smp::client::{
    ClientSettings, Progress, SmpClient, SmpError, UploadOptions,
};
use wardgate_adapters::smp::image::SlotState;
use wardgate_adapters::smp::serial::SerialTransport;

/// The serial link and the client's timeouts.
#[derive(Debug, clap::Args, Clone)]
pub struct LinkArgs {
    /// Serial port of the device's SMP console (a stable path such as /dev/serial/by-id/…).
    #[arg(long)]
    port: PathBuf,
    /// Baud rate.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// Per-request timeout in milliseconds (all requests but upload offset 0).
    #[arg(long, default_value_t = 2500)]
    timeout_ms: u64,
    /// Timeout of an upload request at offset 0 in seconds (the device erases the slot before
    /// answering; at least 40 s unless a device class is known to be faster).
    #[arg(long, default_value_t = 40.0)]
    first_timeout: f64,
    /// Re-sends of a request that got no answer (same sequence number).
    #[arg(long, default_value_t = 3)]
    retries: u32,
}

impl LinkArgs {
    fn settings(&self) -> ClientSettings {
        ClientSettings {
            timeout: Duration::from_millis(self.timeout_ms),
            first_chunk_timeout: Duration::from_secs_f64(self.first_timeout.max(0.0)),
            retries: self.retries,
            ..ClientSettings::default()
        }
    }

    fn open(&self) -> anyhow::Result<SmpClient<SerialTransport>> {
        let t = SerialTransport::open(&self.port, self.baud)?;
        Ok(SmpClient::new(t, self.settings()))
    }
}

/// `wardgate firmware list` arguments.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    link: LinkArgs,
}

/// What happens after the upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Test, reset, wait for the device, confirm once it runs the new image.
    TestConfirm,
    /// Confirm (permanent) before the reset: no trial boot.
    ConfirmOnly,
    /// Test and reset only: the device reverts at its next reset unless someone confirms.
    TestOnly,
}

/// `wardgate firmware upload` arguments.
#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    #[command(flatten)]
    link: LinkArgs,
    /// The signed MCUboot image.
    image: PathBuf,
    /// What to do after the upload.
    #[arg(long, value_enum, default_value_t = Mode::TestConfirm)]
    mode: Mode,
    /// Seconds to wait for the device to come back after the reset (MCUboot swaps the slots).
    #[arg(long, default_value_t = 60.0)]
    swap_time: f64,
}

/// Runs `wardgate firmware list`.
pub fn list_main(a: ListArgs) -> anyhow::Result<ExitCode> {
    super::runtime()?.block_on(list(a))
}

/// Runs `wardgate firmware upload`.
pub fn upload_main(a: UploadArgs) -> anyhow::Result<ExitCode> {
    super::runtime()?.block_on(upload(a))
}

/// A failure with its machine-readable reason.
#[derive(Debug, thiserror::Error)]
#[error("firmware {step} failed (reason={reason}): {message}")]
struct BenchError {
    step: &'static str,
    reason: String,
    message: String,
}

fn fail(step: &'static str, reason: &str, message: impl Into<String>) -> anyhow::Error {
    BenchError {
        step,
        reason: reason.to_string(),
        message: message.into(),
    }
    .into()
}

fn smp_fail(step: &'static str, e: SmpError) -> anyhow::Error {
    let message = match e.device_error() {
        Some(d) if d.is_bad_state() => format!(
            "{e}: slot 1 holds a pending image that cannot be erased; reset the device so \
             MCUboot boots it (or reverts), then try again"
        ),
        _ => e.to_string(),
    };
    fail(step, &e.reason(), message)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn slot_json(s: &SlotState) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

async fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let mut c = a.link.open()?;
    let slots = c.image_list().await.map_err(|e| smp_fail("list", e))?;
    let mut out = std::io::stdout().lock();
    for s in &slots {
        writeln!(out, "{}", slot_json(s))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn step(text: &str) {
    eprintln!("{text}");
}

async fn upload(a: UploadArgs) -> anyhow::Result<ExitCode> {
    let file = std::fs::read(&a.image).with_context(|| format!("read {}", a.image.display()))?;
    // Nothing reaches a device unverified: a malformed image, or one whose SHA256 TLV is not
    // the hash of its bytes, is refused before the port is opened.
    let info = image::parse(&file).map_err(|e| {
        fail(
            "upload",
            "not_mcuboot",
            format!("{}: {e}", a.image.display()),
        )
    })?;
    if !info.hash_matches() {
        return Err(fail(
            "upload",
            "image_hash_mismatch",
            format!(
                "{}: the SHA256 TLV does not match the image (corrupt or tampered)",
                a.image.display()
            ),
        ));
    }
    let want = info.computed_hash;
    let version = info.header.version.to_string();
    let mut c = a.link.open()?;
    let before = c.image_list().await.map_err(|e| smp_fail("list", e))?;
    if let Some(s0) = before.iter().find(|s| s.slot == 0 && s.active) {
        if s0.hash.as_deref() == Some(&want[..]) && (s0.confirmed || a.mode == Mode::TestOnly) {
            println!(
                "the device already runs {} (hash {}){}",
                s0.version,
                hex(&want),
                if s0.confirmed { ", confirmed" } else { "" }
            );
            println!("uploaded 0 bytes in 0.00 s (0.0 KB/s)");
            return Ok(ExitCode::SUCCESS);
        }
    }
    step(&format!(
        "uploading {} ({} bytes, version {}, image hash {})",
        a.image.display(),
        file.len(),
        version,
        hex(&want)
    ));
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut progress = move |p: Progress| {
        if tty {
            let pct = (p.off * 100).checked_div(p.len).unwrap_or(100);
            eprint!("\ruploading {}/{} bytes ({pct:3} %)", p.off, p.len);
            if p.off == p.len {
                eprintln!();
            }
        }
    };
    let report = c
        .upload_verified(&file, &want, UploadOptions::default(), &mut progress)
        .await
        .map_err(|e| smp_fail("upload", e))?;
    let secs = started.elapsed().as_secs_f64();
    let stats = c.stats();
    step(&format!(
        "{} requests, {} re-sent after a timeout, {} late or stray answers dropped",
        stats.requests, stats.retransmits, stats.dropped
    ));
    if report.resumed_from > 0 {
        step(&format!(
            "resumed at offset {} of {}",
            report.resumed_from, report.len
        ));
    }
    if report.restarts > 0 {
        step(&format!(
            "the device restarted the upload at offset 0 {} time(s)",
            report.restarts
        ));
    }
    let uploaded = format!(
        "uploaded {} bytes in {:.2} s ({:.1} KB/s)",
        report.bytes_sent,
        secs,
        report.bytes_sent as f64 / 1000.0 / secs.max(1e-3)
    );
    match a.mode {
        Mode::TestConfirm | Mode::TestOnly => {
            step("marking the image for test");
            c.test(&want).await.map_err(|e| smp_fail("test", e))?;
        }
        Mode::ConfirmOnly => {
            step("confirming the image (permanent)");
            c.confirm(Some(&want))
                .await
                .map_err(|e| smp_fail("confirm", e))?;
        }
    }
    step("resetting the device");
    c.reset(false).await.map_err(|e| smp_fail("reset", e))?;
    drop(c);
    let mut c = wait_back(&a.link, Duration::from_secs_f64(a.swap_time.max(0.0))).await?;
    step("the device is back");
    let slots = c.image_list().await.map_err(|e| smp_fail("list", e))?;
    let running = slots.iter().find(|s| s.slot == 0 && s.active).cloned();
    let Some(s0) = running.filter(|s| s.hash.as_deref() == Some(&want[..])) else {
        let old = slots
            .iter()
            .find(|s| s.slot == 0)
            .map_or("nothing".to_string(), |s| s.version.clone());
        return Err(fail(
            "boot",
            "reverted",
            format!(
                "the device came back running {old}, not the new image {}: MCUboot reverted \
                 it or did not swap",
                version
            ),
        ));
    };
    match a.mode {
        Mode::TestOnly => {
            step(&format!(
                "the device runs {} on test, not confirmed: it reverts at its next reset unless \
                 confirmed",
                s0.version
            ));
        }
        Mode::TestConfirm => {
            step(&format!("the device runs {}; confirming", s0.version));
            c.confirm(None).await.map_err(|e| smp_fail("confirm", e))?;
            let slots = c.image_list().await.map_err(|e| smp_fail("list", e))?;
            check_confirmed(&slots, &want)?;
        }
        Mode::ConfirmOnly => check_confirmed(&slots, &want)?,
    }
    println!("{uploaded}");
    Ok(ExitCode::SUCCESS)
}

fn check_confirmed(slots: &[SlotState], want: &[u8]) -> anyhow::Result<()> {
    match slots.iter().find(|s| s.slot == 0 && s.active) {
        Some(s) if s.hash.as_deref() == Some(want) && s.confirmed => {
            step(&format!("done: the device runs {}, confirmed", s.version));
            Ok(())
        }
        Some(s) if s.hash.as_deref() == Some(want) => Err(fail(
            "confirm",
            "not_confirmed",
            format!(
                "the device runs {} but does not list it confirmed",
                s.version
            ),
        )),
        _ => Err(fail(
            "confirm",
            "not_running",
            "the device does not run the new image after the confirm",
        )),
    }
}

/// Reopens the port and echoes until the device answers or `swap_time` has passed.
async fn wait_back(
    link: &LinkArgs,
    swap_time: Duration,
) -> anyhow::Result<SmpClient<SerialTransport>> {
    step(&format!(
        "waiting up to {:.0} s for the device to come back",
        swap_time.as_secs_f64()
    ));
    let deadline = Instant::now() + swap_time;
    // Let the device go down first: a port that is still the old one answers nothing useful.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut last = String::from("never opened");
    while Instant::now() < deadline {
        if Path::new(&link.port).exists() {
            match SerialTransport::open(&link.port, link.baud) {
                Ok(t) => {
                    let mut c = SmpClient::new(
                        t,
                        ClientSettings {
                            retries: 0,
                            timeout: Duration::from_millis(link.timeout_ms.min(1000)),
                            ..link.settings()
                        },
                    );
                    match c.echo("wardgate").await {
                        Ok(_) => return Ok(SmpClient::new(c.into_transport(), link.settings())),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
        } else {
            last = format!("{} does not exist", link.port.display());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(anyhow!(BenchError {
        step: "reconnect",
        reason: "device_gone".into(),
        message: format!(
            "the device did not answer within {:.0} s after the reset (last: {last})",
            swap_time.as_secs_f64()
        ),
    }))
}
