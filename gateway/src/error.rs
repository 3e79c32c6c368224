//! Errors that decide the process's exit status (DESIGN §9, a contract): 0 ok, 1 failure,
//! 2 bad configuration or usage.
//!
//! Library modules return their own `thiserror` enums; `anyhow` is used only at the binary edge
//! (the command line, `cli/`), which maps a [`UsageError`] or a [`crate::config::Diagnostics`] to exit 2
//! and everything else to exit 1.

/// A command used wrongly (missing or unknown argument value): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Exit status 2: bad configuration or usage.
pub const EXIT_USAGE: u8 = 2;
/// Exit status 1: the command failed.
pub const EXIT_FAILURE: u8 = 1;
