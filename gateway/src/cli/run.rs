//! `wardgate run`: the daemon ([`crate::daemon`]) until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

/// `wardgate run` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Gateway config file.
    #[arg(long, short, default_value = "/etc/wardgate/wardgate.toml")]
    config: PathBuf,
}

/// Loads the config (exit 2 when it is bad) and runs the daemon.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = crate::config::load(&args.config)?;
    super::runtime()?.block_on(crate::daemon::run(cfg))?;
    Ok(ExitCode::SUCCESS)
}
