//! The `wardgate` command line (DESIGN §9, a contract): clap `Cli`, dispatch, and the mapping of
//! errors to exit codes (0 ok, 1 failure, 2 bad configuration or usage). `main.rs` only calls
//! [`main`]; the end-to-end tests build the same entry point into their own binary.

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "wardgate",
    version,
    about = "Edge gateway for hospital wards: devices → signed batches → MQTT/TLS upstream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon.
    Run {
        /// Gateway config file.
        #[arg(long, short, default_value = "/etc/wardgate/wardgate.toml")]
        config: PathBuf,
    },
    /// Check a gateway or receiver config: exit 0, or exit 2 printing `FILE:line:col: message`.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Run the whole chain on loopback with recorded real devices and an embedded broker.
    Demo {
        /// Replay speed-up factor (1 = the devices' own pace).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Also write DIR/gateway.pem and DIR/messages/*.cose (every message on the batch topic).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Decode a recording (`--protocol P FILE`) or one BLE payload (`--profile NAME HEX`) into
    /// JSON lines of observations.
    Decode {
        /// Serial protocol: cms50, ansar-b or masimo.
        #[arg(long, conflicts_with = "profile")]
        protocol: Option<String>,
        /// BLE decoder: heart-rate, blood-pressure, cuff-pressure, thermometer, plx-spot,
        /// plx-continuous, weight, glucose, battery, ibeacon, eddystone, bthome, advertisement.
        #[arg(long)]
        profile: Option<String>,
        /// The recording (raw bytes, or ASCII hex); with --profile, the payload in hex (HEX).
        #[arg(value_name = "FILE|HEX")]
        file: PathBuf,
        /// `--profile bthome`: the device's 16-byte encryption key (bindkey), in hex.
        #[arg(long, requires = "mac")]
        key: Option<String>,
        /// `--profile bthome` with `--key`: the device's address, AA:BB:CC:DD:EE:FF.
        #[arg(long, requires = "key")]
        mac: Option<String>,
    },
    /// Verify COSE_Sign1 batch messages against a gateway certificate; print payloads as JSON lines.
    Verify {
        /// PEM certificate(s) of the gateway(s).
        #[arg(long)]
        cert: Vec<PathBuf>,
        /// Message files, or `-` for one message on standard input.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show what the gateway is doing: daemon, uplink and its last error, queue depth and age.
    Status {
        /// Gateway config file.
        #[arg(long, short, default_value = "/etc/wardgate/wardgate.toml")]
        config: PathBuf,
        /// Machine-readable JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Pair and bond a BLE device (installer command; the daemon itself never pairs). Requires
    /// LE Secure Connections and a passkey or numeric comparison unless told otherwise.
    Pair {
        /// The device's Bluetooth address as it advertises now (AA:BB:CC:DD:EE:FF).
        address: String,
        /// BlueZ adapter.
        #[arg(long, default_value = "hci0")]
        adapter: String,
        /// Accept Just Works pairing (devices with neither display nor keyboard; no MITM protection).
        #[arg(long)]
        allow_just_works: bool,
        /// Accept a BlueZ that allows LE legacy pairing (SecureConnections is not `only`).
        #[arg(long)]
        allow_legacy_pairing: bool,
        /// BlueZ's main.conf, checked for `SecureConnections = only`.
        #[arg(long, default_value = "/etc/bluetooth/main.conf", hide = true)]
        bluez_main_conf: PathBuf,
        /// Seconds to look for the device and to wait for the pairing.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Installer command: make this gateway's key and certificate request, or install the
    /// certificate the hospital CA signed.
    ///
    /// `wardgate provision --config F [--csr PATH] [--force]`: a new P-256 key at `uplink.key`
    /// (0600, written atomically; an existing key is kept unless --force, which stages the new
    /// key as `<key>.new` until --install-cert installs its certificate) and a PKCS#10 CSR (RFC 2986; CN = gateway id, O = site, OU = ward, SAN
    /// `URI:urn:wardgate:{site}:{ward}:{id}`) at `--csr` or `uplink.cert` with extension `.csr`.
    /// Prints the key's fingerprint (the COSE kid) and the next steps.
    ///
    /// `wardgate provision --install-cert SIGNED.pem --config F [--ca CA.pem]`: checks that the
    /// certificate is for the key on disk, valid by this clock and issued under `--ca` (default
    /// `uplink.ca`, when it exists) for clientAuth, then installs it atomically at `uplink.cert`
    /// (0644). A running daemon switches to it at its next certificate check.
    ///
    /// Exit 0 done, 1 failed (certificate refused, I/O), 2 bad config or usage (an existing key
    /// without --force).
    Provision {
        /// Gateway config file (`[gateway]` id/site/ward, `[uplink]` key/cert/ca).
        #[arg(long, short, default_value = "/etc/wardgate/wardgate.toml")]
        config: PathBuf,
        /// Where to write the CSR (default: uplink.cert with extension `.csr`).
        #[arg(long, conflicts_with = "install_cert")]
        csr: Option<PathBuf>,
        /// Make a new key although one exists: staged as `<key>.new` (the pair in use stays)
        /// until --install-cert installs its certificate; the old key is then kept as
        /// `<key>.old`.
        #[arg(long, conflicts_with = "install_cert")]
        force: bool,
        /// Install this signed certificate (PEM; a chain is installed as given) at uplink.cert.
        #[arg(long, value_name = "SIGNED.pem")]
        install_cert: Option<PathBuf>,
        /// With --install-cert: the CA certificate(s) to verify its chain against (default
        /// uplink.ca).
        #[arg(long, requires = "install_cert")]
        ca: Option<PathBuf>,
    },
    /// The upstream side: subscribe, verify, dedup, store durably, ack.
    Receive {
        /// Receiver config file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Parses `std::env::args`, runs the command, prints the cause chain of an error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init_logging();
    // Stores, receiver outputs and raw messages hold clinical data: owner-only, like keys.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            if let Some(d) = e.downcast_ref::<crate::config::Diagnostics>() {
                eprintln!("{d}");
                return ExitCode::from(2);
            }
            if let Some(u) = e.downcast_ref::<UsageError>() {
                eprintln!("wardgate: {}", u.0);
                return ExitCode::from(2);
            }
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS; // e.g. `wardgate decode … | head`
            }
            eprintln!("wardgate: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(1)
        }
    }
}

/// A command used wrongly (missing or unknown argument value): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Run { config } => {
            let cfg = crate::config::load(&config)?;
            runtime()?.block_on(crate::daemon::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let loaded = crate::config::load_any(&file)?;
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { speed, out } => {
            // Before the runtime: the bus address must be in the environment before any thread
            // or D-Bus connection exists.
            let ble = crate::demo_ble::start_bus();
            let ok = runtime()?.block_on(crate::demo::run(crate::demo::DemoOptions {
                speed,
                out,
                ble,
            }))?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Decode {
            protocol,
            profile,
            file,
            key,
            mac,
        } => {
            if let Some(profile) = profile {
                let bthome_key = match (key, mac) {
                    (Some(k), Some(m)) => {
                        let key: [u8; 16] = hex::decode(k.trim())
                            .ok()
                            .and_then(|v| v.try_into().ok())
                            .ok_or_else(|| {
                                UsageError("--key must be 16 bytes in hex (32 digits)".into())
                            })?;
                        let mac = wardgate_adapters::ble::config::Address::parse(&m)
                            .map_err(UsageError)?;
                        Some((key, mac.0))
                    }
                    _ => None,
                };
                let hex = file
                    .to_str()
                    .ok_or_else(|| UsageError(format!("HEX `{}` is not text", file.display())))?;
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                let summary = crate::decode::decode_profile_with_key(
                    &profile,
                    hex,
                    bthome_key,
                    &mut out,
                    &mut std::io::stderr(),
                )?;
                out.flush()?;
                return Ok(if summary.errors > 0 {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                });
            }
            let Some(protocol) = protocol else {
                return Err(UsageError(
                    "decode needs --protocol cms50|ansar-b|masimo FILE, or --profile NAME HEX"
                        .into(),
                )
                .into());
            };
            let mut input = std::fs::File::open(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let summary = crate::decode::decode_protocol(
                &protocol,
                &file,
                &mut input,
                &mut out,
                &mut std::io::stderr(),
            )?;
            out.flush()?;
            if summary.observations == 0 {
                eprintln!("{}: no observations decoded as {protocol}", file.display());
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { cert, files } => {
            if cert.is_empty() {
                return Err(
                    UsageError("verify needs --cert PEM (the gateway certificate)".into()).into(),
                );
            }
            let mut v = crate::signing::Verifier::default();
            for c in &cert {
                v.add_file(c)
                    .map_err(|e| UsageError(format!("--cert {}: {e}", c.display())))?;
            }
            let (mut ok, mut failed) = (0u64, 0u64);
            for f in &files {
                let bytes = if f.as_os_str() == "-" {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).map(|_| b)
                } else {
                    std::fs::read(f)
                };
                let result = bytes
                    .map_err(|e| format!("cannot read: {e}"))
                    .and_then(|b| v.verify(&b).map_err(|e| e.to_string()))
                    .and_then(|p| match crate::batch::BatchPayload::from_cbor(&p) {
                        Ok(b) => serde_json::to_value(&b).map_err(|e| e.to_string()),
                        // Retained device status and heartbeat (crate::health) are signed too.
                        Err(e) => crate::health::to_json(&p)
                            .filter(|j| j.get("kind").is_some())
                            .ok_or(e),
                    });
                match result {
                    Ok(p) => {
                        println!("{}", serde_json::to_string(&p)?);
                        ok += 1;
                    }
                    Err(e) => {
                        eprintln!("{}: {e}", f.display());
                        failed += 1;
                    }
                }
            }
            eprintln!("{ok} verified, {failed} failed");
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Status { config, json } => {
            let cfg = crate::config::load(&config)?;
            let report = crate::status::report(&cfg.store.path);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!(
                    "{}",
                    crate::status::render(&report, cfg.gateway.id.get_ref())
                );
            }
            // Something could not be read: say so in the exit status too.
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Pair {
            address,
            adapter,
            allow_just_works,
            allow_legacy_pairing,
            bluez_main_conf,
            timeout,
        } => {
            let address =
                wardgate_adapters::ble::config::Address::parse(&address).map_err(UsageError)?;
            if !wardgate_adapters::ble::config::valid_adapter_name(&adapter) {
                return Err(UsageError(format!(
                    "--adapter `{adapter}` is not a BlueZ adapter name (like hci0)"
                ))
                .into());
            }
            runtime()?.block_on(crate::pair::pair(crate::pair::PairOptions {
                address,
                adapter,
                allow_just_works,
                allow_legacy: allow_legacy_pairing,
                bluez_main_conf,
                timeout: std::time::Duration::from_secs(timeout.max(1)),
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Provision {
            config,
            csr,
            force,
            install_cert,
            ca,
        } => {
            let cfg = crate::config::load(&config)?;
            let usage = |e: crate::provision::ProvisionError| -> anyhow::Error {
                match e {
                    crate::provision::ProvisionError::Usage(m) => UsageError(m).into(),
                    e => e.into(),
                }
            };
            match install_cert {
                Some(signed) => {
                    let i = crate::provision::install_cert(&cfg, &signed, ca.as_deref())
                        .map_err(usage)?;
                    print!("{}", crate::provision::render_installed(&i));
                }
                None => {
                    let p =
                        crate::provision::provision(&cfg, csr.as_deref(), force).map_err(usage)?;
                    print!(
                        "{}",
                        crate::provision::render_provisioned(&p, &cfg, &config)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Receive { config } => {
            let cfg = crate::config::load_receiver(&config)?;
            runtime()?.block_on(async {
                let h = crate::receive::start(cfg)?;
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                let mut task = h.task;
                tokio::select! {
                    r = &mut task => return r?,
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                let _ = h.shutdown.send(true);
                task.await?
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
