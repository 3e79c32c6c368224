//! Configuration: the TOML schema, loading and validation (`wardgate check-config`).
//!
//! Two kinds of file share the loader: the gateway's (`[gateway]`, `[store]`, `[uplink]`,
//! `[[serial]]`; see `config/wardgate.toml`) and the upstream receiver's (`[mqtt]`, `[receiver]`;
//! see `config/receiver.toml`). A file with a `[receiver]` table is a receiver config.
//!
//! Every problem is reported as `FILE:line:col: message` ([`Diagnostic`]): syntax errors and
//! unknown keys come from the TOML parser with their span; semantic checks (identifiers usable in
//! MQTT topics, files present, key files owner-only, duplicate device names) are collected all
//! at once, each pointing at the offending value. Relative paths are resolved against the
//! directory of the config file.

pub mod diagnostic;

pub use diagnostic::{Diagnostic, Diagnostics};

use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;
use wardgate_adapters::ble::config::BleConfig;
use wardgate_adapters::serial::SerialConfig;

/// The configuration format version this build understands.
pub const VERSION: u32 = 1;

/// A gateway configuration (`wardgate run`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version; must be 1.
    pub version: Spanned<u32>,
    /// Who this gateway is: its id, site and ward (used in topics and batches).
    pub gateway: GatewaySection,
    /// The durable buffer.
    #[serde(default)]
    pub store: StoreSection,
    /// The MQTT uplink.
    pub uplink: UplinkSection,
    /// Serial bedside devices.
    #[serde(default)]
    pub serial: Vec<SerialConfig>,
    /// BLE devices, tags and vendor profiles (`[ble]`, `[[ble.device]]`, `[[ble.tag]]`,
    /// `[[ble.vendor_profile]]`); absent: no BLE adapter runs.
    pub ble: Option<BleConfig>,
}

/// `[gateway]`: identity. Each value appears in MQTT topics, so `/`, `+`, `#` are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Gateway id, unique in the hospital, e.g. `gw-ward7-01`.
    pub id: Spanned<String>,
    /// Site (hospital) id, e.g. `st-mary`.
    pub site: Spanned<String>,
    /// Ward id, e.g. `ward-7`.
    pub ward: Spanned<String>,
    /// Where "the clock is synchronised" comes from (see [`crate::system::clock`]): `kernel` (default,
    /// adjtimex: NTP via systemd-timesyncd, chrony or ntpd), `synced` (assume so: an RTC and no
    /// NTP), or `file:PATH` (synchronised while PATH exists).
    pub clock: Option<Spanned<String>>,
}

/// SQLite `synchronous` setting for the store.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Every commit is fsynced before it counts as accepted (survives power loss). Default.
    #[default]
    Full,
    /// WAL commits are fsynced at checkpoints only: survives a process crash, not power loss.
    Normal,
}

/// `[store]`: the durable buffer (DESIGN §4).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// SQLite file; default `/var/lib/wardgate/store.db`.
    pub path: PathBuf,
    /// `full` (default) or `normal`.
    pub synchronous: Synchronous,
    /// Longest time an observation waits for its group commit, in milliseconds; default 20.
    pub commit_interval_ms: u64,
    /// Most observations in one transaction; default 5000.
    pub commit_max_rows: usize,
    /// Size limit of the live data in bytes; beyond it the oldest rows of the lowest priority
    /// class are dropped and the drop is reported upstream. Default 1 GiB.
    pub max_bytes: u64,
    /// Age limit in hours (by gateway time); older rows are dropped and reported. Default 168.
    pub max_age_hours: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            path: PathBuf::from("/var/lib/wardgate/store.db"),
            synchronous: Synchronous::Full,
            commit_interval_ms: 20,
            commit_max_rows: 5000,
            max_bytes: 1 << 30,
            max_age_hours: 168,
        }
    }
}

/// When a batch counts as delivered and its rows may leave the store (DESIGN §4).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// The upstream receiver's ack message on `.../ack` after it stored the batch durably. Default.
    #[default]
    Upstream,
    /// The broker's PUBACK (the broker may persist only periodically).
    Broker,
}

/// `[uplink]`: MQTT over mutual TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkSection {
    /// Broker host name (must match its certificate) or IP address.
    pub host: Spanned<String>,
    /// Broker TLS port; default 8883.
    #[serde(default = "default_mqtts_port")]
    pub port: Spanned<u16>,
    /// PEM file with the CA certificate(s) that signed the broker's certificate.
    pub ca: Spanned<PathBuf>,
    /// PEM file with the gateway's client certificate (also identifies the signing key: `kid`).
    pub cert: Spanned<PathBuf>,
    /// PEM file with the gateway's PKCS#8 private key (P-256 or Ed25519), mode 0600 or stricter.
    pub key: Spanned<PathBuf>,
    /// `upstream` (default) or `broker`.
    #[serde(default)]
    pub ack: AckMode,
    /// MQTT keepalive in seconds; a dead link is noticed within two periods. Default 30.
    #[serde(default = "default_keepalive")]
    pub keepalive_s: u64,
    /// Most observations and events in one batch; default 2000.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Longest time a pending observation waits for its batch to fill, in ms; default 200.
    #[serde(default = "default_batch_interval")]
    pub batch_interval_ms: u64,
    /// Most unacknowledged batches in flight; default 16.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// Re-send an unacknowledged batch (same number) after this many seconds; default 30.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_s: u64,
    /// Cap of the reconnect backoff in seconds (jittered); default 60.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_s: u64,
    /// Seconds between two gateway heartbeats (retained, `…/heartbeat`); default 60.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_s: u64,
    /// How often (s) `ca`, `cert` and `key` are checked for replacement on disk while connected;
    /// a usable new pair is presented at a clean reconnect once the batches in flight are
    /// acknowledged. They are also checked before every (re)connection. 0: only then. Default 60.
    #[serde(default = "default_cert_check")]
    pub cert_check_s: u64,
}

fn default_mqtts_port() -> Spanned<u16> {
    Spanned::new(0..0, 8883)
}
fn default_keepalive() -> u64 {
    30
}
fn default_batch_max() -> usize {
    2000
}
fn default_batch_interval() -> u64 {
    200
}
fn default_max_inflight() -> usize {
    16
}
fn default_ack_timeout() -> u64 {
    30
}
fn default_backoff_max() -> u64 {
    60
}
fn default_heartbeat() -> u64 {
    60
}
fn default_cert_check() -> u64 {
    60
}

/// An upstream receiver configuration (`wardgate receive`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Format version; must be 1.
    pub version: Spanned<u32>,
    /// Connection to the hospital's broker.
    pub mqtt: MqttSection,
    /// What to accept and where to store it.
    pub receiver: ReceiverSection,
}

/// `[mqtt]` of a receiver: broker connection with mutual TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// Broker host name or IP address.
    pub host: Spanned<String>,
    /// Broker TLS port; default 8883.
    #[serde(default = "default_mqtts_port")]
    pub port: Spanned<u16>,
    /// CA certificate(s) of the broker (PEM).
    pub ca: Spanned<PathBuf>,
    /// The receiver's client certificate (PEM).
    pub cert: Spanned<PathBuf>,
    /// The receiver's private key (PEM, PKCS#8), owner-only.
    pub key: Spanned<PathBuf>,
    /// MQTT client id; receivers sharing a subscription need distinct ids. Default `wardgate-receiver`.
    #[serde(default = "default_receiver_id")]
    pub client_id: String,
    /// Keepalive in seconds; default 30.
    #[serde(default = "default_keepalive")]
    pub keepalive_s: u64,
}

fn default_receiver_id() -> String {
    "wardgate-receiver".into()
}

/// `[receiver]`: verification, dedup, durable output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverSection {
    /// Topic filter for batches; default `wardgate/v1/+/+/+/batch`.
    #[serde(default = "default_batch_filter")]
    pub topic: String,
    /// Shared-subscription group (`$share/{group}/{topic}`) so several receivers split the load.
    pub share_group: Option<String>,
    /// PEM certificates of the gateways whose batches are accepted (each identifies a `kid`).
    pub gateway_certs: Vec<Spanned<PathBuf>>,
    /// `sqlite:PATH` or `jsonl:PATH`: where verified observations are written durably (fsynced).
    pub output: Spanned<String>,
    /// If set, every message received on the batch topic is also written here as raw bytes
    /// (`<gateway>-<receiver start ms>-<n>.cose`), for independent verification.
    pub raw_dir: Option<PathBuf>,
}

fn default_batch_filter() -> String {
    "wardgate/v1/+/+/+/batch".into()
}

/// A loaded file: either kind.
#[derive(Debug, Clone)]
pub enum AnyConfig {
    /// A gateway config.
    Gateway(Box<Config>),
    /// A receiver config.
    Receiver(Box<ReceiverConfig>),
}

/// Loads and validates a gateway config. Errors carry every problem as `FILE:line:col: message`.
pub fn load(path: &Path) -> Result<Config, Diagnostics> {
    match load_any(path)? {
        AnyConfig::Gateway(c) => Ok(*c),
        AnyConfig::Receiver(_) => Err(Diagnostics(vec![Diagnostic {
            file: path.into(),
            line: 1,
            col: 1,
            message: "this is a receiver config (it has [receiver]); `wardgate run` needs a gateway config".into(),
        }])),
    }
}

/// Loads and validates a receiver config.
pub fn load_receiver(path: &Path) -> Result<ReceiverConfig, Diagnostics> {
    match load_any(path)? {
        AnyConfig::Receiver(c) => Ok(*c),
        AnyConfig::Gateway(_) => Err(Diagnostics(vec![Diagnostic {
            file: path.into(),
            line: 1,
            col: 1,
            message: "this is a gateway config; `wardgate receive` needs a [receiver] table".into(),
        }])),
    }
}

/// Loads either kind of config file from `path` and validates it.
pub fn load_any(path: &Path) -> Result<AnyConfig, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            file: path.into(),
            line: 1,
            col: 1,
            message: format!("cannot read: {e}"),
        }])
    })?;
    parse_any(path, &text)
}

/// Parses and validates `text` as the contents of `path` (relative paths resolve against its
/// directory).
pub fn parse_any(path: &Path, text: &str) -> Result<AnyConfig, Diagnostics> {
    let syntax = |e: toml::de::Error| {
        Diagnostics(vec![Diagnostic::at(
            path,
            text,
            e.span(),
            e.message().trim().replace('\n', "; "),
        )])
    };
    let table: toml::Table = toml::from_str(text).map_err(syntax)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    take_warnings();
    let mut v = Validator {
        file: path,
        text,
        problems: Vec::new(),
    };
    if table.contains_key("receiver") {
        let mut c: ReceiverConfig = toml::from_str(text).map_err(syntax)?;
        v.version(&c.version);
        v.topic_safe(&c.mqtt.host, "host");
        for p in [&mut c.mqtt.ca, &mut c.mqtt.cert] {
            resolve(&base, p);
            v.readable(p);
        }
        resolve(&base, &mut c.mqtt.key);
        v.private_key(&c.mqtt.key);
        v.port(&c.mqtt.port);
        for p in c.receiver.gateway_certs.iter_mut() {
            resolve(&base, p);
            v.readable(p);
        }
        if c.receiver.gateway_certs.is_empty() {
            v.problems.push(Diagnostic::at(
                path,
                text,
                find_key(text, "gateway_certs"),
                "gateway_certs is empty: no batch could ever be verified",
            ));
        }
        let out = c.receiver.output.get_ref().clone();
        match out.split_once(':') {
            Some(("sqlite" | "jsonl", p)) if !p.is_empty() => {
                let resolved = base.join(p);
                *c.receiver.output.get_mut() = format!(
                    "{}:{}",
                    &out[..out.find(':').unwrap_or(0)],
                    resolved.display()
                );
            }
            _ => v.at(
                Some(c.receiver.output.span()),
                format!("output `{out}` must be `sqlite:PATH` or `jsonl:PATH`"),
            ),
        }
        if let Some(d) = c.receiver.raw_dir.as_mut() {
            *d = base.join(&*d);
        }
        v.finish(AnyConfig::Receiver(Box::new(c)))
    } else {
        let mut c: Config = toml::from_str(text).map_err(syntax)?;
        v.version(&c.version);
        for (s, what) in [
            (&c.gateway.id, "gateway id"),
            (&c.gateway.site, "site"),
            (&c.gateway.ward, "ward"),
        ] {
            v.topic_safe(s, what);
        }
        v.topic_safe(&c.uplink.host, "host");
        if let Some(clock) = &c.gateway.clock {
            if let Err(e) = crate::system::clock::ClockSource::parse(clock.get_ref()) {
                v.at(Some(clock.span()), e);
            }
        }
        v.port(&c.uplink.port);
        for p in [&mut c.uplink.ca, &mut c.uplink.cert] {
            resolve(&base, p);
            v.readable(p);
        }
        resolve(&base, &mut c.uplink.key);
        v.private_key(&c.uplink.key);
        let store_path_empty = c.store.path.as_os_str().is_empty();
        c.store.path = base.join(&c.store.path);
        let positive = [
            ("keepalive_s", c.uplink.keepalive_s as u128),
            ("batch_max", c.uplink.batch_max as u128),
            ("max_inflight", c.uplink.max_inflight as u128),
            ("ack_timeout_s", c.uplink.ack_timeout_s as u128),
            ("backoff_max_s", c.uplink.backoff_max_s as u128),
            ("heartbeat_s", c.uplink.heartbeat_s as u128),
            ("commit_max_rows", c.store.commit_max_rows as u128),
            ("commit_interval_ms", c.store.commit_interval_ms as u128),
            ("max_bytes", c.store.max_bytes as u128),
            ("max_age_hours", c.store.max_age_hours as u128),
        ];
        for (key, value) in positive {
            if value == 0 {
                v.problems.push(Diagnostic::at(
                    path,
                    text,
                    find_key(text, key),
                    format!("{key} must be greater than 0"),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut paths = std::collections::HashMap::new();
        let serial_tables = tables(text, "[[serial]]");
        for (i, s) in c.serial.iter_mut().enumerate() {
            let table = serial_tables.get(i).cloned().unwrap_or(0..text.len());
            let at = |key: &str| {
                find_key_in(text, table.clone(), key).or_else(|| Some(table.start..table.start + 1))
            };
            let name_span = at("name");
            if !is_topic_safe(&s.name) {
                v.at(name_span.clone(), format!("serial device name `{}` must be non-empty and contain no `/`, `+`, `#` or spaces (it is part of MQTT topics)", s.name));
            }
            if !names.insert(s.name.clone()) {
                v.at(
                    name_span.clone(),
                    format!("serial device name `{}` is used twice", s.name),
                );
            }
            if !(5..=8).contains(&s.data_bits) {
                v.at(
                    at("data_bits"),
                    format!("serial `{}`: data_bits must be 5, 6, 7 or 8", s.name),
                );
            }
            if !(1..=2).contains(&s.stop_bits) {
                v.at(
                    at("stop_bits"),
                    format!("serial `{}`: stop_bits must be 1 or 2", s.name),
                );
            }
            if s.baud == Some(0) {
                v.at(
                    at("baud"),
                    format!("serial `{}`: baud must be greater than 0", s.name),
                );
            }
            if s.serial_number
                .as_deref()
                .is_some_and(|n| n.trim().is_empty())
            {
                v.at(at("serial_number"), format!("serial `{}`: serial_number is empty; remove it or give the device's serial number", s.name));
            }
            if s.path.as_os_str().is_empty() {
                v.at(at("path"), format!("serial `{}`: path is empty", s.name));
            }
            if s.path.is_relative() {
                s.path = base.join(&s.path);
            }
            // Compare where the paths lead (by-id symlink vs /dev/ttyUSB0 is the realistic mix-up).
            let real = std::fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone());
            if let Some(other) = paths.insert(real, s.name.clone()) {
                v.at(
                    at("path"),
                    format!(
                        "serial `{}` uses the same port {} as `{other}`",
                        s.name,
                        s.path.display()
                    ),
                );
            }
            let p = s.path.to_string_lossy();
            if p.starts_with("/dev/ttyUSB") || p.starts_with("/dev/ttyACM") {
                let span = at("path").unwrap_or(0..0);
                v.warn(span, format!("serial `{}`: {p} can be renumbered at reboot; use its /dev/serial/by-id/ path so data cannot land on another bed's device", s.name));
            }
        }
        if let Some(ble) = &c.ble {
            for (key, message) in ble.problems() {
                v.at(ble_span(text, &key), message);
            }
        }
        if c.uplink.keepalive_s > 65_535 {
            v.problems.push(Diagnostic::at(
                path,
                text,
                find_key(text, "keepalive_s"),
                "keepalive_s must be at most 65535 (MQTT limit)",
            ));
        }
        let store_table = tables(text, "[store]").first().cloned().unwrap_or(0..0);
        let store_span = find_key_in(text, store_table.clone(), "path")
            .or(Some(store_table.start..store_table.start + 1));
        if store_path_empty {
            v.at(
                store_span,
                "store path is empty; give a file, e.g. /var/lib/wardgate/store.db".into(),
            );
        } else if c.store.path.is_dir() {
            v.at(
                store_span,
                format!(
                    "store path {} is a directory; give a file name, e.g. {}/store.db",
                    c.store.path.display(),
                    c.store.path.display()
                ),
            );
        } else if let Some(dir) = c
            .store
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
        {
            v.warn(
                store_span.unwrap_or(0..0),
                format!("the store's directory {} does not exist (yet); under systemd StateDirectory=wardgate creates /var/lib/wardgate", dir.display()),
            );
        }
        v.finish(AnyConfig::Gateway(Box::new(c)))
    }
}

impl Config {
    /// The clock source of `[gateway] clock` (validated; `kernel` when absent).
    pub fn clock_source(&self) -> crate::system::clock::ClockSource {
        self.gateway
            .clock
            .as_ref()
            .and_then(|c| crate::system::clock::ClockSource::parse(c.get_ref()).ok())
            .unwrap_or(crate::system::clock::ClockSource::Kernel)
    }
}

/// Where a [`BleConfig::problems`] key (`device[2].address`, `tag[0].window_s`, `adapter`)
/// points in the file: the key's value in the right `[[ble.…]]` entry, else the entry, else
/// the `[ble]` header.
fn ble_span(text: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let (entry, field) = key.split_once('.').unwrap_or((key, ""));
    let ble = tables(text, "[ble]").first().cloned();
    if let Some((kind, idx)) = entry.split_once('[') {
        let idx: usize = idx.trim_end_matches(']').parse().ok()?;
        let table = tables(text, &format!("[[ble.{kind}]]")).get(idx).cloned()?;
        return find_key_in(text, table.clone(), field).or(Some(table.start..table.start + 1));
    }
    let ble = ble.unwrap_or(0..1);
    find_key_in(text, ble.clone(), entry).or(Some(ble.start..ble.start + 1))
}

fn resolve(base: &Path, p: &mut Spanned<PathBuf>) {
    if p.get_ref().is_relative() {
        let joined = base.join(p.get_ref());
        *p.get_mut() = joined;
    }
}

/// Whether `s` can be one level of an MQTT topic: non-empty, no `/`, `+`, `#`, whitespace or NUL.
pub fn is_topic_safe(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#' | '\0') || c.is_whitespace())
}

fn find_key(text: &str, key: &str) -> Option<std::ops::Range<usize>> {
    text.lines()
        .scan(0usize, |off, line| {
            let start = *off;
            *off += line.len() + 1;
            Some((start, line))
        })
        .find(|(_, line)| {
            let t = line.trim_start();
            t.starts_with(key) && t[key.len()..].trim_start().starts_with('=')
        })
        .map(|(start, line)| {
            let s = start + (line.len() - line.trim_start().len());
            s..s + key.len()
        })
}

/// Byte ranges of each `[[name]]` array-of-tables entry, in order (to the next table header).
fn tables(text: &str, header: &str) -> Vec<std::ops::Range<usize>> {
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    let mut off = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with('[') {
            if !starts.is_empty() && ends.len() < starts.len() {
                ends.push(off);
            }
            if t.starts_with(header) {
                starts.push(off);
            }
        }
        off += line.len();
    }
    if ends.len() < starts.len() {
        ends.push(text.len());
    }
    starts.into_iter().zip(ends).map(|(s, e)| s..e).collect()
}

/// The span of the value of `key = …` inside `range`.
fn find_key_in(
    text: &str,
    range: std::ops::Range<usize>,
    key: &str,
) -> Option<std::ops::Range<usize>> {
    let mut off = range.start;
    for line in text[range.clone()].split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with(key) && t[key.len()..].trim_start().starts_with('=') {
            let eq = line.find('=')?;
            let value_start = eq + 1 + (line[eq + 1..].len() - line[eq + 1..].trim_start().len());
            return Some(off + value_start..off + line.trim_end().len());
        }
        off += line.len();
    }
    None
}

struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
    problems: Vec<Diagnostic>,
}

thread_local! {
    /// Warnings of the last [`parse_any`] on this thread (files not present yet).
    static WARNINGS: std::cell::RefCell<Vec<Diagnostic>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Warnings from the last load on this thread: referenced files that do not exist (yet). They
/// do not fail `check-config` (a config is often checked before the certificates are
/// provisioned), but `run` fails on them with the file named.
pub fn take_warnings() -> Vec<Diagnostic> {
    WARNINGS.with(|w| std::mem::take(&mut *w.borrow_mut()))
}

impl Validator<'_> {
    fn at(&mut self, span: Option<std::ops::Range<usize>>, message: String) {
        self.problems
            .push(Diagnostic::at(self.file, self.text, span, message));
    }
    fn version(&mut self, v: &Spanned<u32>) {
        if *v.get_ref() != VERSION {
            self.at(
                Some(v.span()),
                format!(
                    "unsupported config version {}; this wardgate reads version {VERSION}",
                    v.get_ref()
                ),
            );
        }
    }
    fn topic_safe(&mut self, s: &Spanned<String>, what: &str) {
        if !is_topic_safe(s.get_ref()) {
            self.at(
                Some(s.span()),
                format!(
                    "{what} `{}` must be non-empty and contain no `/`, `+`, `#` or spaces",
                    s.get_ref()
                ),
            );
        }
    }
    fn port(&mut self, p: &Spanned<u16>) {
        if *p.get_ref() == 0 {
            self.at(Some(p.span()), "port must be between 1 and 65535".into());
        }
    }
    fn warn(&mut self, span: std::ops::Range<usize>, message: String) {
        // (spans of default values are 0..0: the warning then points at 1:1)
        let d = Diagnostic::at(
            self.file,
            self.text,
            Some(span),
            format!("warning: {message}"),
        );
        WARNINGS.with(|w| w.borrow_mut().push(d));
    }
    fn readable(&mut self, p: &Spanned<PathBuf>) {
        match std::fs::File::open(p.get_ref()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.warn(
                p.span(),
                format!("{} does not exist (yet)", p.get_ref().display()),
            ),
            Err(e) => self.at(
                Some(p.span()),
                format!("cannot read {}: {e}", p.get_ref().display()),
            ),
            Ok(_) => {}
        }
    }
    fn private_key(&mut self, p: &Spanned<PathBuf>) {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(p.get_ref()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.warn(
                p.span(),
                format!("private key {} does not exist (yet)", p.get_ref().display()),
            ),
            Err(e) => self.at(
                Some(p.span()),
                format!("cannot read private key {}: {e}", p.get_ref().display()),
            ),
            Ok(m) if m.permissions().mode() & 0o077 != 0 => self.at(
                Some(p.span()),
                format!(
                    "private key {} is readable by others (mode {:o}); run `chmod 600 {}`",
                    p.get_ref().display(),
                    m.permissions().mode() & 0o777,
                    p.get_ref().display()
                ),
            ),
            Ok(_) => {}
        }
    }
    fn finish(self, c: AnyConfig) -> Result<AnyConfig, Diagnostics> {
        if self.problems.is_empty() {
            Ok(c)
        } else {
            let mut p = self.problems;
            p.sort_by_key(|d| (d.line, d.col));
            Err(Diagnostics(p))
        }
    }
}

impl Config {
    /// The gateway's topic prefix `wardgate/v1/{site}/{ward}/{gateway}`.
    pub fn topic_prefix(&self) -> String {
        format!(
            "wardgate/v1/{}/{}/{}",
            self.gateway.site.get_ref(),
            self.gateway.ward.get_ref(),
            self.gateway.id.get_ref()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "version = 1\n[gateway]\nid = \"gw1\"\nsite = \"s\"\nward = \"w\"\n[uplink]\nhost = \"h\"\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n";

    fn problems(extra: &str) -> Vec<String> {
        let text = format!("{BASE}{extra}");
        match parse_any(Path::new("/nonexistent/w.toml"), &text) {
            Ok(_) => vec![],
            Err(d) => d.0.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn a_minimal_config_is_accepted() {
        assert_eq!(problems(""), Vec::<String>::new());
    }

    #[test]
    fn serial_problems_point_at_their_own_key() {
        let p = problems("[[serial]]\nname = \"a\"\npath = \"/dev/x\"\nprotocol = \"cms50\"\n[[serial]]\nname = \"b\"\npath = \"/dev/x\"\nprotocol = \"cms50\"\nstop_bits = 3\n");
        assert!(
            p.contains(
                &"/nonexistent/w.toml:17:8: serial `b` uses the same port /dev/x as `a`"
                    .to_string()
            ),
            "{p:?}"
        );
        assert!(
            p.contains(
                &"/nonexistent/w.toml:19:13: serial `b`: stop_bits must be 1 or 2".to_string()
            ),
            "{p:?}"
        );
    }

    #[test]
    fn duplicate_names_and_topic_unsafe_ids_are_refused() {
        let p = problems("[[serial]]\nname = \"a\"\npath = \"/dev/x\"\nprotocol = \"cms50\"\n[[serial]]\nname = \"a\"\npath = \"/dev/y\"\nprotocol = \"masimo\"\nserial_number = \" \"\n");
        assert!(
            p.iter()
                .any(|l| l
                    .starts_with("/nonexistent/w.toml:16:8: serial device name `a` is used twice")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l
                    .starts_with("/nonexistent/w.toml:19:17: serial `a`: serial_number is empty")),
            "{p:?}"
        );
        let text = BASE.replace("id = \"gw1\"", "id = \"gw/1\"");
        let d = parse_any(Path::new("w.toml"), &text).unwrap_err();
        assert!(
            d.to_string().starts_with("w.toml:3:6: gateway id `gw/1`"),
            "{d}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_carry_line_and_column() {
        let d = parse_any(Path::new("w.toml"), &format!("{BASE}bogus = 1\n")).unwrap_err();
        assert!(
            d.to_string()
                .starts_with("w.toml:11:1: unknown field `bogus`"),
            "{d}"
        );
        let d = parse_any(
            Path::new("w.toml"),
            &BASE.replace("host = \"h\"", "host = \"h\"\nport = 0"),
        )
        .unwrap_err();
        assert_eq!(
            d.to_string(),
            "w.toml:8:8: port must be between 1 and 65535"
        );
        let d = parse_any(
            Path::new("w.toml"),
            &BASE.replace("host = \"h\"", "host = \"h\"\nkeepalive_s = 70000"),
        )
        .unwrap_err();
        assert!(
            d.to_string().contains("keepalive_s must be at most 65535"),
            "{d}"
        );
    }
}
