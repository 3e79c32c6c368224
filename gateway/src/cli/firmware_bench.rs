//! `wardgate firmware list|upload` (issue 10, a contract; subcommands of `cli/firmware.rs`):
//! the SMP client of the relay (`wardgate_adapters::smp`) on a serial port or a BLE device, for
//! a biomedical technician on the bench.
//!
//! The link: `--port PATH [--baud N]` (the SMP console of a serial port, 8N1), or `--ble
//! ADDRESS [--adapter hci0]`: a device **bonded** with this machine's BlueZ (`wardgate pair`),
//! reached through btleplug: connected if it is not, services discovered afresh, the SMP
//! characteristic (PROTOCOLS §A.4) subscribed, requests written in pieces of ≤ ATT MTU − 3
//! (`wardgate_adapters::ble::central::smp`). An unbonded device is refused before anything is
//! written (`reason=not_bonded`), one without the SMP service too (`reason=no_smp_service`).
//! Stop `wardgate run` first if it serves the same device (both would talk to it at once).
//!
//! - `list (--port PATH [--baud N] | --ble ADDRESS)`: the device's image slots as JSON lines
//!   (`slot`, `version`, `hash` hex, `active`, `confirmed`, `pending`, `bootable`, `permanent`,
//!   `image`).
//! - `upload (--port PATH [--baud N] | --ble ADDRESS) IMAGE [--mode test-confirm|confirm-only|test-only]`: upload
//!   (resumes where the device is), check slot 1's hash against the image's MCUboot hash, then
//!   per mode: test-confirm = test → reset → wait for the device (`--swap-time`, default 60 s)
//!   → list → confirm → list; confirm-only = confirm (permanent) → reset → wait → list;
//!   test-only = test → reset → wait → list. Success only when the device runs the image, with
//!   its hash, and (but for test-only) confirmed. A `\r` progress line on a terminal; stdout
//!   ends with `uploaded N bytes in S s (K KB/s)`. A failure prints `reason=<reason>` (the
//!   client's `SmpError::reason`, or `reverted`, `not_running`, `not_confirmed`,
//!   `device_gone`, `not_mcuboot`, `image_hash_mismatch`) and exits 1.
//!
//! The sequence itself is `wardgate_adapters::smp::update::apply`, shared with the relay; this
//! file opens the port (or connects), prints the steps and reopens the port (reconnects, with a
//! fresh GATT discovery: B18) after the reset. The image is checked and uploaded through one
//! open descriptor, read in chunks (never whole in memory; a file changed during the upload
//! fails with `reason=image_changed`).
//!
//! Bounds (a value outside is a usage error naming the range): `--timeout-ms` 100–600000,
//! `--retries` 0–20, `--first-timeout` 1–600 s, `--swap-time` 1–3600 s.

use crate::firmware::image;
use anyhow::Context;
use clap::ValueEnum;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use wardgate_adapters::ble::central::smp::{BleSmpTransport, SmpOpener};
use wardgate_adapters::ble::config::Address;
use wardgate_adapters::serial::{LineSettings, Parity};
use wardgate_adapters::smp::client::{
    ClientSettings, SmpClient, SmpError, Transport, TransportError,
};
use wardgate_adapters::smp::image::SlotState;
use wardgate_adapters::smp::serial::SerialTransport;
use wardgate_adapters::smp::source::{FileImage, ImageSource, Verified};
use wardgate_adapters::smp::update::{self, UpdateMode, UpdateStep};

/// The link (a serial port or a bonded BLE device) and the client's timeouts.
#[derive(Debug, clap::Args, Clone)]
pub struct LinkArgs {
    /// Serial port of the device's SMP console (a stable path such as /dev/serial/by-id/…).
    #[arg(long, required_unless_present = "ble", conflicts_with = "ble")]
    port: Option<PathBuf>,
    /// Baud rate (with --port), 50 to 4,000,000.
    #[arg(long, default_value_t = 115_200, value_parser = clap::value_parser!(u32).range(50..=4_000_000))]
    baud: u32,
    /// A BLE device bonded with this machine (`wardgate pair`), by its identity address
    /// (AA:BB:CC:DD:EE:FF): SMP over its GATT SMP service.
    #[arg(long, value_name = "ADDRESS")]
    ble: Option<String>,
    /// The Bluetooth adapter (with --ble).
    #[arg(long, default_value = "hci0", requires = "ble")]
    adapter: String,
    /// Seconds to wait for a BLE device to connect (with --ble).
    #[arg(long, default_value_t = 30.0, requires = "ble")]
    connect_timeout: f64,
    /// Per-request timeout in milliseconds (all requests but upload offset 0), 100 to 600000.
    #[arg(long, default_value_t = 2500, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    timeout_ms: u64,
    /// Timeout of an upload request at offset 0 in seconds (the device erases the slot before
    /// answering; at least 40 s unless a device class is known to be faster), 1 to 600.
    #[arg(long, default_value_t = 40.0, value_parser = seconds_in(1.0, 600.0))]
    first_timeout: f64,
    /// Re-sends of a request that got no answer (same sequence number), 0 to 20.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=20))]
    retries: u32,
}

/// A clap parser of seconds (a decimal number) within `[min, max]`: anything else (negative,
/// `inf`, `NaN`, text) is refused with the range in the message.
fn seconds_in(min: f64, max: f64) -> impl Fn(&str) -> Result<f64, String> + Clone {
    move |s: &str| {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a number of seconds ({min} to {max})"))?;
        if !(min..=max).contains(&v) {
            return Err(format!("{s} s is outside {min} to {max} s"));
        }
        Ok(v)
    }
}

impl LinkArgs {
    fn settings(&self) -> ClientSettings {
        ClientSettings {
            timeout: Duration::from_millis(self.timeout_ms),
            first_chunk_timeout: Duration::from_secs_f64(self.first_timeout),
            retries: self.retries,
            ..ClientSettings::default()
        }
    }

    /// The port at `baud` 8N1, no flow control, exclusive.
    fn transport(&self) -> Result<SerialTransport, TransportError> {
        let port = self.port.clone().unwrap_or_default();
        let settings = LineSettings {
            baud: self.baud,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
        };
        // A regular file or a directory is no port (the OS says only "Not a typewriter").
        if let Ok(m) = std::fs::metadata(&port) {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_char_device() {
                return Err(TransportError::Io(std::io::Error::other(format!(
                    "{}: not a serial port (a character device such as /dev/ttyUSB0 or /dev/serial/by-id/…)",
                    port.display()
                ))));
            }
        }
        let opened = settings.open(&port).map_err(|e| {
            TransportError::Io(std::io::Error::other(format!("{}: {e}", port.display())))
        })?;
        Ok(SerialTransport::new(opened))
    }

    fn open(&self) -> anyhow::Result<SmpClient<SerialTransport>> {
        Ok(SmpClient::new(self.transport()?, self.settings()))
    }

    /// The BLE device's address, when the link is `--ble`. Error (usage): not an address.
    fn ble_address(&self) -> anyhow::Result<Option<Address>> {
        self.ble
            .as_deref()
            .map(|a| {
                Address::parse(a)
                    .map_err(|e| crate::error::UsageError(format!("--ble: {e}")).into())
            })
            .transpose()
    }

    /// Reaches BlueZ and opens an SMP session on the bonded device `address`.
    async fn open_ble(
        &self,
        address: Address,
    ) -> anyhow::Result<(SmpOpener, SmpClient<BleSmpTransport>)> {
        let opener = SmpOpener::new(&self.adapter, address)
            .await
            .map_err(|e| fail("connect", e.reason(), e.to_string()))?;
        let t = opener
            .open(Duration::from_secs_f64(self.connect_timeout.max(0.0)), true)
            .await
            .map_err(|e| fail("connect", e.reason(), e.to_string()))?;
        step(&format!(
            "connected to {address} (ATT MTU {}: writes of ≤ {} bytes)",
            t.mtu(),
            t.mtu() - 3
        ));
        Ok((opener, SmpClient::new(t, self.settings())))
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
    /// Seconds to wait for the device to come back after the reset (MCUboot swaps the slots),
    /// 1 to 3600.
    #[arg(long, default_value_t = 60.0, value_parser = seconds_in(1.0, 3600.0))]
    swap_time: f64,
}

/// Runs `wardgate firmware list`.
pub fn list_main(a: ListArgs) -> anyhow::Result<ExitCode> {
    super::runtime()?.block_on(list(a))
}

impl From<Mode> for UpdateMode {
    fn from(m: Mode) -> UpdateMode {
        match m {
            Mode::TestConfirm => UpdateMode::TestConfirm,
            Mode::ConfirmOnly => UpdateMode::ConfirmOnly,
            Mode::TestOnly => UpdateMode::TestOnly,
        }
    }
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
    match a.link.ble_address()? {
        Some(address) => list_on(a.link.open_ble(address).await?.1).await,
        None => list_on(a.link.open()?).await,
    }
}

async fn list_on<T: Transport>(mut c: SmpClient<T>) -> anyhow::Result<ExitCode> {
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
    // Nothing reaches a device unverified: a malformed image, or one whose SHA256 TLV is not
    // the hash of its bytes, is refused before the port is opened. The upload then reads the
    // very descriptor that was checked, in chunks.
    if let Ok(m) = std::fs::metadata(&a.image) {
        if !m.is_file() {
            anyhow::bail!(
                "{}: not a regular file (an image is a file)",
                a.image.display()
            );
        }
    }
    let mut parsed = None;
    let file = FileImage::open_verified(&a.image, |f| {
        let info = image::parse_reader(f).map_err(|e| {
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
        let sha = info.file_sha256;
        parsed = Some(info);
        Ok(sha)
    })
    .map_err(|e| match e {
        Verified::Io(e) => anyhow::anyhow!("read {}: {e}", a.image.display()),
        Verified::Changed(m) => fail("upload", "image_changed", m),
        Verified::Refused(e) => e,
    })?;
    let info = parsed.context("the image was not parsed")?;
    let want = info.computed_hash;
    let version = info.header.version.to_string();
    step(&format!(
        "image {} ({} bytes, version {}, image hash {})",
        a.image.display(),
        file.len(),
        version,
        hex(&want)
    ));
    match a.link.ble_address()? {
        Some(address) => {
            let (opener, c) = a.link.open_ble(address).await?;
            // After the reset: a new connection, services discovered afresh (B18).
            let reconnect = move || {
                let opener = opener.clone();
                async move {
                    opener
                        .open(Duration::from_secs(5), false)
                        .await
                        .map_err(TransportError::from)
                }
            };
            upload_on(&a, c, &file, &want, reconnect).await
        }
        None => {
            let c = a.link.open()?;
            let link = a.link.clone();
            let reconnect = move || {
                let link = link.clone();
                async move {
                    let port = link.port.clone().unwrap_or_default();
                    if !Path::new(&port).exists() {
                        return Err(TransportError::Io(std::io::Error::other(format!(
                            "{} does not exist",
                            port.display()
                        ))));
                    }
                    link.transport()
                }
            };
            upload_on(&a, c, &file, &want, reconnect).await
        }
    }
}

/// The update on an open client; `reconnect` gives a fresh transport after the reset.
async fn upload_on<T, F, Fut>(
    a: &UploadArgs,
    mut c: SmpClient<T>,
    file: &FileImage,
    want: &[u8],
    reconnect: F,
) -> anyhow::Result<ExitCode>
where
    T: Transport,
    F: FnMut() -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, TransportError>> + Send,
{
    let tty = std::io::stderr().is_terminal();
    let swap_time = Duration::from_secs_f64(a.swap_time.max(0.0));
    let mut uploading = false;
    let mut progress = |s: UpdateStep| match s {
        UpdateStep::Uploading { off, len } => {
            if !uploading {
                uploading = true;
                step("uploading");
            }
            if tty {
                let pct = (off * 100).checked_div(len).unwrap_or(100);
                eprint!("\ruploading {off}/{len} bytes ({pct:3} %)");
                if off == len {
                    eprintln!();
                }
            }
        }
        UpdateStep::Testing => step("marking the image for test"),
        UpdateStep::Confirming if a.mode == Mode::ConfirmOnly => {
            step("confirming the image (permanent)")
        }
        UpdateStep::Confirming => step("the device runs the new image; confirming"),
        UpdateStep::Rebooting => step(&format!(
            "resetting the device; waiting up to {:.0} s for it to come back",
            swap_time.as_secs_f64()
        )),
    };
    let result = update::apply(
        &mut c,
        file,
        want,
        a.mode.into(),
        swap_time,
        reconnect,
        &mut progress,
    )
    .await;
    let stats = c.stats();
    step(&format!(
        "{} requests, {} re-sent after a timeout, {} late or stray answers dropped, at most {} in flight, pipeline dropped {} times",
        stats.requests, stats.retransmits, stats.dropped, stats.in_flight_max, stats.pipeline_drops
    ));
    let report = result?;
    let up = &report.upload;
    if up.chunks == 0 {
        println!(
            "the device already runs {} (hash {}){}",
            report.version,
            hex(want),
            if report.confirmed { ", confirmed" } else { "" }
        );
        println!("uploaded 0 bytes in 0.00 s (0.0 KB/s)");
        return Ok(ExitCode::SUCCESS);
    }
    if up.resumed_from > 0 {
        step(&format!(
            "resumed at offset {} of {}",
            up.resumed_from, up.len
        ));
    }
    if up.restarts > 0 {
        step(&format!(
            "the device restarted the upload at offset 0 {} time(s)",
            up.restarts
        ));
    }
    if report.confirmed {
        step(&format!(
            "done: the device runs {}, confirmed",
            report.version
        ));
    } else {
        step(&format!(
            "the device runs {} on test, not confirmed: it reverts at its next reset unless \
             confirmed",
            report.version
        ));
    }
    let secs = up.elapsed.as_secs_f64();
    println!(
        "uploaded {} bytes in {:.2} s ({:.1} KB/s)",
        up.bytes_sent,
        secs,
        up.bytes_sent as f64 / 1000.0 / secs.max(1e-3)
    );
    Ok(ExitCode::SUCCESS)
}
