//! `wardgate receive --config F`: the upstream receiver ([`crate::receive`]) until SIGTERM or
//! SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

/// `wardgate receive` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Receiver config file.
    #[arg(long, short)]
    config: PathBuf,
}

/// Loads the receiver config (exit 2 when it is bad) and runs the receiver.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = crate::config::load_receiver(&args.config)?;
    super::runtime()?.block_on(async {
        let h = crate::receive::start(cfg)?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
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
