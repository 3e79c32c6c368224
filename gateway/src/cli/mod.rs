//! The `wardgate` command line (DESIGN §9, a contract): the clap [`Cli`], a one-line dispatch per
//! subcommand, and the mapping of errors to exit codes ([`crate::error`]). `main.rs` only calls
//! [`main`]; the end-to-end tests build the same entry point into their own binary.
//!
//! One file per subcommand, each with its `Args` and a `main(Args) -> anyhow::Result<ExitCode>`:
//! [`run`] (the daemon), [`check_config`], [`status`], [`provision`], [`pair`] (installer
//! commands), [`decode`], [`verify`] (looking at data), [`receive`] (the upstream side) and,
//! with the `demo` cargo feature (on in a checkout, off in the package), [`demo`].

pub mod check_config;
pub mod decode;
#[cfg(feature = "demo")]
pub mod demo;
#[cfg(feature = "demo")]
pub mod demo_firmware;
pub mod firmware;
pub mod firmware_bench;
pub mod pair;
pub mod provision;
pub mod receive;
pub mod run;
pub mod status;
pub mod verify;

use crate::error::{UsageError, EXIT_FAILURE, EXIT_USAGE};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// The command line.
#[derive(Parser)]
#[command(
    name = "wardgate",
    version,
    about = "Edge gateway for hospital wards: devices → signed batches → MQTT/TLS upstream"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon.
    Run(run::Args),
    /// Check a gateway or receiver config: exit 0, or exit 2 printing `FILE:line:col: message`.
    CheckConfig(check_config::Args),
    /// Run the whole chain on loopback with recorded real devices and an embedded broker.
    #[cfg(feature = "demo")]
    Demo(demo::Args),
    /// Not in this build (see [`no_demo`]).
    #[cfg(not(feature = "demo"))]
    #[command(hide = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        _args: Vec<String>,
    },
    /// Decode a recording (`--protocol P FILE`, `--protocol lines --map MAPFILE FILE`) or one
    /// BLE payload (`--profile NAME HEX`) into JSON lines of observations.
    Decode(decode::Args),
    /// Verify COSE_Sign1 batch messages against a gateway certificate; print payloads as JSON lines.
    Verify(verify::Args),
    /// Firmware: inspect MCUboot images, make signed jobs, accept a job by hand.
    Firmware(firmware::Args),
    /// Show what the gateway is doing: daemon, uplink and its last error, queue depth and age.
    Status(status::Args),
    /// Pair and bond a BLE device (installer command; the daemon itself never pairs). Requires
    /// LE Secure Connections and a passkey or numeric comparison unless told otherwise.
    Pair(pair::Args),
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
    Provision(provision::Args),
    /// The upstream side: subscribe, verify, dedup, store durably, ack.
    Receive(receive::Args),
}

/// Parses `std::env::args`, runs the command, prints the cause chain of an error.
pub fn main() -> ExitCode {
    // A plug-in being started by the daemon (`exec` adapter): close what it must not inherit,
    // become the plug-in. Before anything else: no logging, no runtime, no file opened.
    {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        if args.get(1).and_then(|a| a.to_str()) == Some(wardgate_adapters::exec::launch::LAUNCH_ARG)
        {
            return ExitCode::from(wardgate_adapters::exec::launch::launch(&args[2..]));
        }
    }
    let cli = Cli::parse();
    crate::system::telemetry::init_logging();
    // Stores, receiver outputs and raw messages hold clinical data: owner-only, like keys.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let result = match cli.command {
        Command::Run(a) => run::main(a),
        Command::CheckConfig(a) => check_config::main(a),
        #[cfg(feature = "demo")]
        Command::Demo(a) => demo::main(a),
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => Err(no_demo()),
        Command::Decode(a) => decode::main(a),
        Command::Verify(a) => verify::main(a),
        Command::Firmware(a) => firmware::main(a),
        Command::Status(a) => status::main(a),
        Command::Pair(a) => pair::main(a),
        Command::Provision(a) => provision::main(a),
        Command::Receive(a) => receive::main(a),
    };
    result.unwrap_or_else(|e| exit_code(&e))
}

/// Prints `e` for a person and returns its exit status: 2 for a config diagnostic or a usage
/// error, 0 for a closed pipe (`wardgate decode … | head`), 1 otherwise.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    if let Some(d) = e.downcast_ref::<crate::config::Diagnostics>() {
        eprintln!("{d}");
        return ExitCode::from(EXIT_USAGE);
    }
    if let Some(u) = e.downcast_ref::<UsageError>() {
        eprintln!("wardgate: {}", u.0);
        return ExitCode::from(EXIT_USAGE);
    }
    if e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    {
        return ExitCode::SUCCESS;
    }
    eprintln!("wardgate: error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    ExitCode::from(EXIT_FAILURE)
}

/// `wardgate demo` in a build without the `demo` feature (the packaged product): a usage error
/// that says where the demo is, rather than clap's "did you mean decode".
#[cfg(not(feature = "demo"))]
fn no_demo() -> anyhow::Error {
    UsageError(
        "this build has no demo: the packaged wardgate leaves out the simulated devices, broker \
         and BlueZ the demo runs against. Run it from a source checkout \
         (`cargo run -p wardgate -- demo`); on the ward, check the real chain with \
         `wardgate check-config` and `wardgate status`"
            .into(),
    )
    .into()
}

/// The runtime every async subcommand runs on: two workers (a Raspberry Pi has four cores, the
/// gateway shares them).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Exit 0 when `ok`, else 1.
fn exit_if(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}
