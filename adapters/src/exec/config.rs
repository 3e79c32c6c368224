//! `[[exec]]`: one out-of-process plug-in (see [`crate::exec`]).
//!
//! ```toml
//! [[exec]]
//! name = "pump-bridge"                         # device id exec:pump-bridge
//! command = "/usr/local/lib/wardgate/plugins/pump_bridge.py"
//! args = ["--port", "/dev/serial/by-id/usb-Acme_Pump-if00"]
//! working_dir = "/var/lib/wardgate/plugins/pump-bridge"   # default "/"
//! env = { PUMP_MODEL = "X200" }                # the whole environment besides the defaults below
//! devices = ["pump-1", "pump-2"]               # optional: sub-devices → exec:pump-bridge:pump-1
//! max_line = 65536                             # bytes per stdout line (256 B – 1 MiB)
//! stop_grace_s = 5                             # SIGTERM, then SIGKILL after this (1–15 s)
//! max_backoff_s = 30                           # longest wait before a restart
//! max_lines_per_s = 2000                       # stdout lines read a second (1 s burst)
//! ```
//!
//! The environment is explicit: the plug-in gets `PATH=/usr/local/bin:/usr/bin:/bin`,
//! `LANG=C.UTF-8` (both may be overridden in `env`), `WARDGATE_PLUGIN=<name>`,
//! `WARDGATE_PLUGIN_SCHEMA=1`, `WARDGATE_DEVICE=exec:<name>`, and what `env` lists — nothing of
//! the daemon's own environment.

use crate::observation::DeviceId;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Default [`ExecConfig::max_line`].
pub const DEFAULT_MAX_LINE: usize = 65_536;
/// Bounds of [`ExecConfig::max_line`].
pub const MAX_LINE_RANGE: std::ops::RangeInclusive<usize> = 256..=(1 << 20);
/// Bounds of [`ExecConfig::stop_grace_s`]: the packaged unit gives the whole daemon
/// `TimeoutStopSec=20s` to stop.
pub const STOP_GRACE_RANGE: std::ops::RangeInclusive<u64> = 1..=15;
/// Default [`ExecConfig::max_lines_per_s`]: a plug-in bridging a whole ward (20 beds × a
/// dozen readings a second, and an ECG or pleth array a second each) writes a few hundred
/// lines a second; a flooding one writes tens of thousands.
pub const DEFAULT_MAX_LINES_PER_S: u32 = 2000;
/// Bounds of [`ExecConfig::max_lines_per_s`].
pub const MAX_LINES_PER_S_RANGE: std::ops::RangeInclusive<u32> = 1..=100_000;
/// The `PATH` a plug-in gets unless `env` sets one.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// One plug-in (see the module documentation).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// The installer's name; the device id is `exec:<name>`.
    pub name: String,
    /// Where the device is, e.g. `ward-7/bed-12` (issue 11 item 7): up to 64 characters,
    /// `/`-separated non-empty parts of `A-Z a-z 0-9 . _ -` (checked by `check-config`);
    /// it applies to the plug-in and every one of its sub-devices.
    /// Shown in the device's retained status, `status.json` and `wardgate status`.
    #[serde(default)]
    pub location: Option<String>,
    /// The executable (absolute, or relative to the config file's directory).
    pub command: PathBuf,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Its working directory; default `/`.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// Environment variables besides the defaults (see the module documentation).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Sub-devices the plug-in may report for (`"device"` in its lines): device ids
    /// `exec:<name>:<device>`. Empty: the plug-in is one device and its lines name none.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Longest line on the plug-in's stdout, bytes; default 65536.
    #[serde(default = "default_max_line")]
    pub max_line: usize,
    /// Seconds between SIGTERM and SIGKILL when the plug-in is stopped; default 5.
    #[serde(default = "default_grace")]
    pub stop_grace_s: u64,
    /// Longest wait before a restart, seconds; default 30.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_s: u64,
    /// Most stdout lines read a second (a burst of one second's worth is allowed); default
    /// [`DEFAULT_MAX_LINES_PER_S`], bounds [`MAX_LINES_PER_S_RANGE`]. Beyond it the adapter
    /// stops reading the pipe until the budget refills: the plug-in blocks in its `write`.
    #[serde(default = "default_max_lines_per_s")]
    pub max_lines_per_s: u32,
    /// Liveness: silence after which its devices are `stale`; default 10 s (as serial devices).
    #[serde(default)]
    pub stale_after_s: Option<u64>,
    /// Liveness: silence after which its devices are `offline`; default 60 s.
    #[serde(default)]
    pub offline_after_s: Option<u64>,
}

fn default_max_line() -> usize {
    DEFAULT_MAX_LINE
}
fn default_grace() -> u64 {
    5
}
fn default_max_backoff() -> u64 {
    30
}
fn default_max_lines_per_s() -> u32 {
    DEFAULT_MAX_LINES_PER_S
}

/// Whether `s` can be a name in a device id and an MQTT topic level: non-empty, at most 64
/// characters, no `/`, `+`, `#`, `:`, whitespace or control characters.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#' | ':') || c.is_whitespace() || c.is_control())
}

impl ExecConfig {
    /// `exec:<name>`: the plug-in's own device id (its `connected`/`disconnected`/`error`
    /// events, and its observations when it has no `devices`).
    pub fn device_id(&self) -> DeviceId {
        DeviceId(format!("exec:{}", self.name))
    }

    /// `exec:<name>:<device>`: the id of one of its `devices`.
    pub fn sub_device_id(&self, device: &str) -> DeviceId {
        DeviceId(format!("exec:{}:{device}", self.name))
    }

    /// Every device id its observations may carry: the sub-devices, or `exec:<name>`.
    pub fn device_ids(&self) -> Vec<DeviceId> {
        if self.devices.is_empty() {
            vec![self.device_id()]
        } else {
            self.devices.iter().map(|d| self.sub_device_id(d)).collect()
        }
    }

    /// The working directory (default `/`).
    pub fn working_dir(&self) -> PathBuf {
        self.working_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/"))
    }

    /// The plug-in's whole environment: the defaults, then `env`.
    pub fn environment(&self) -> BTreeMap<String, String> {
        let mut e = BTreeMap::new();
        e.insert("PATH".to_string(), DEFAULT_PATH.to_string());
        e.insert("LANG".to_string(), "C.UTF-8".to_string());
        e.extend(self.env.clone());
        e.insert("WARDGATE_PLUGIN".to_string(), self.name.clone());
        e.insert(
            "WARDGATE_PLUGIN_SCHEMA".to_string(),
            super::message::SCHEMA_VERSION.to_string(),
        );
        e.insert("WARDGATE_DEVICE".to_string(), self.device_id().0);
        e
    }

    /// Problems a configuration check reports (pure: no filesystem), as (key inside the
    /// `[[exec]]` table, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut p = |k: &str, m: String| out.push((k.to_string(), m));
        let name = &self.name;
        if !is_name(name) {
            p(
                "name",
                format!("plug-in name `{name}` must be 1 to 64 characters without `/`, `+`, `#`, `:` or spaces (it is part of device ids and MQTT topics)"),
            );
        }
        if self.command.as_os_str().is_empty() {
            p("command", format!("plug-in `{name}`: command is empty"));
        }
        if self
            .working_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            p(
                "working_dir",
                format!("plug-in `{name}`: working_dir is empty; remove it for /"),
            );
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) {
                p(
                    "env",
                    format!(
                        "plug-in `{name}`: environment variable name `{k}` is empty or has `=`"
                    ),
                );
            } else if k.starts_with("WARDGATE_") {
                p(
                    "env",
                    format!("plug-in `{name}`: {k} is set by wardgate itself"),
                );
            }
            if v.contains('\0') {
                p(
                    "env",
                    format!("plug-in `{name}`: the value of {k} has a NUL character"),
                );
            }
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            p(
                "args",
                format!("plug-in `{name}`: an argument has a NUL character"),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.devices {
            if !is_name(d) {
                p(
                    "devices",
                    format!("plug-in `{name}`: device `{d}` must be 1 to 64 characters without `/`, `+`, `#`, `:` or spaces"),
                );
            }
            if !seen.insert(d) {
                p(
                    "devices",
                    format!("plug-in `{name}`: device `{d}` is listed twice"),
                );
            }
        }
        if !MAX_LINE_RANGE.contains(&self.max_line) {
            p(
                "max_line",
                format!(
                    "max_line {} must be between {} and {} bytes",
                    self.max_line,
                    MAX_LINE_RANGE.start(),
                    MAX_LINE_RANGE.end()
                ),
            );
        }
        if !STOP_GRACE_RANGE.contains(&self.stop_grace_s) {
            p(
                "stop_grace_s",
                format!(
                    "stop_grace_s must be between {} and {} s (the service itself has 20 s to stop)",
                    STOP_GRACE_RANGE.start(),
                    STOP_GRACE_RANGE.end()
                ),
            );
        }
        if !MAX_LINES_PER_S_RANGE.contains(&self.max_lines_per_s) {
            p(
                "max_lines_per_s",
                format!(
                    "max_lines_per_s {} must be between {} and {}",
                    self.max_lines_per_s,
                    MAX_LINES_PER_S_RANGE.start(),
                    MAX_LINES_PER_S_RANGE.end()
                ),
            );
        }
        if self.max_backoff_s == 0 {
            p(
                "max_backoff_s",
                "max_backoff_s must be greater than 0".into(),
            );
        }
        match (self.stale_after_s, self.offline_after_s) {
            (Some(0), _) => p(
                "stale_after_s",
                "liveness thresholds must be greater than 0".into(),
            ),
            (_, Some(0)) => p(
                "offline_after_s",
                "liveness thresholds must be greater than 0".into(),
            ),
            (Some(s), Some(o)) if s > o => p(
                "offline_after_s",
                format!("offline_after_s ({o}) is shorter than stale_after_s ({s})"),
            ),
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> ExecConfig {
        toml::from_str(&format!("name = \"p\"\ncommand = \"/bin/true\"\n{extra}")).unwrap()
    }

    #[test]
    fn defaults_and_ids() {
        let c = cfg("");
        assert_eq!(c.problems(), Vec::<(String, String)>::new());
        assert_eq!(c.max_lines_per_s, DEFAULT_MAX_LINES_PER_S);
        assert_eq!(c.device_ids(), [DeviceId("exec:p".into())]);
        assert_eq!(c.working_dir(), PathBuf::from("/"));
        let env = c.environment();
        assert_eq!(env["PATH"], DEFAULT_PATH);
        assert_eq!(env["WARDGATE_PLUGIN"], "p");
        assert_eq!(env["WARDGATE_PLUGIN_SCHEMA"], "1");
        assert_eq!(env["WARDGATE_DEVICE"], "exec:p");
        assert_eq!(env.len(), 5, "nothing else: {env:?}");
        let c = cfg("devices = [\"a\", \"b\"]\nenv = { PATH = \"/opt/x/bin\", K = \"v\" }");
        assert_eq!(
            c.device_ids(),
            [DeviceId("exec:p:a".into()), DeviceId("exec:p:b".into())]
        );
        assert_eq!(c.environment()["PATH"], "/opt/x/bin");
        assert_eq!(c.environment()["K"], "v");
    }

    #[test]
    fn problems_name_their_key() {
        for (extra, key, why) in [
            ("devices = [\"a b\"]", "devices", "without"),
            ("devices = [\"a\", \"a\"]", "devices", "twice"),
            (
                "env = { WARDGATE_PLUGIN = \"x\" }",
                "env",
                "set by wardgate",
            ),
            ("env = { \"A=B\" = \"x\" }", "env", "has `=`"),
            ("max_line = 10", "max_line", "between 256"),
            ("stop_grace_s = 60", "stop_grace_s", "between 1 and 15"),
            ("max_backoff_s = 0", "max_backoff_s", "greater than 0"),
            (
                "max_lines_per_s = 0",
                "max_lines_per_s",
                "between 1 and 100000",
            ),
            (
                "max_lines_per_s = 100001",
                "max_lines_per_s",
                "between 1 and 100000",
            ),
            (
                "stale_after_s = 30\noffline_after_s = 10",
                "offline_after_s",
                "shorter",
            ),
            ("working_dir = \"\"", "working_dir", "empty"),
        ] {
            let p = cfg(extra).problems();
            assert!(
                p.iter().any(|(k, m)| k == key && m.contains(why)),
                "{extra}: {p:?}"
            );
        }
        let mut c = cfg("");
        c.name = "a/b".into();
        assert_eq!(c.problems()[0].0, "name");
    }
}
