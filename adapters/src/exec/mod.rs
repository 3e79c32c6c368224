//! Out-of-process adapters (DESIGN §2 `exec/`): a plug-in is any executable that writes
//! observations and events as JSON lines on its stdout and reads device commands as JSON lines
//! on its stdin. It brings in devices that only a vendor's SDK (or a script a hospital engineer
//! writes) can read, without Rust and without restarting wardgate for a new kind of device.
//!
//! | file | role | I/O? |
//! |---|---|---|
//! | [`config`] | `[[exec]]` tables ([`ExecConfig`]): command, arguments, environment, working directory, sub-devices, limits | no |
//! | [`message`] | the line protocol, schema version 1 (`docs/plugins.md`): [`message::parse_line`], [`message::encode_command`] | no (pure, fuzzed) |
//! | [`adapter`] | [`ExecAdapter`]: starts, reads, restarts and stops the plug-in process | yes |
//! | [`launch`] | the launcher the `wardgate` binary becomes for a plug-in: closes every descriptor above 2, then `execv` | yes (in the child) |
//!
//! A plug-in runs as the daemon's user (under the packaged unit: `wardgate`, with the unit's
//! sandbox), in its own process group, and is trusted as far as its configuration entry says:
//! it reports only for its own device ids (`exec:<name>`, or `exec:<name>:<device>` for the
//! `devices` listed), and what it writes is checked line by line like any device input.

pub mod adapter;
pub mod config;
pub mod launch;
pub mod message;

pub use adapter::{ExecAdapter, ExecStats};
pub use config::ExecConfig;
