//! `wardgate check-config FILE`: exit 0 (`FILE: ok`, warnings on stderr) when the gateway or
//! receiver config is usable, otherwise exit 2 with one `FILE:line:col: message` line per
//! problem, warnings first (see [`crate::config`]).

use std::path::PathBuf;
use std::process::ExitCode;

/// `wardgate check-config` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file.
    file: PathBuf,
}

/// Checks the file; warnings go to stderr in both cases.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = crate::config::load_any(&args.file)?;
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    println!("{}: ok", args.file.display());
    Ok(ExitCode::SUCCESS)
}
