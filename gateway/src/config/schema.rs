//! The configuration schema: the serde types of both kinds of file, as written in TOML.
//!
//! Values that diagnostics or callers locate keep their byte span ([`Spanned`]); every other
//! position comes from `positions.rs`. Types here hold data only: checking them is
//! `validate.rs` (pure) and `files.rs` (filesystem).

use serde::Deserialize;
use std::path::PathBuf;
use toml::Spanned;
use wardgate_adapters::ble::config::BleConfig;
use wardgate_adapters::exec::ExecConfig;
use wardgate_adapters::serial::protocols::lines::LinesMap;
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
    /// How line-oriented serial devices' lines are read (`[[lines_map]]`, named by a
    /// `[[serial]]` with `protocol = "lines"` and `map = NAME`).
    #[serde(default)]
    pub lines_map: Vec<LinesMap>,
    /// Out-of-process plug-ins (`[[exec]]`): child processes writing JSON lines.
    #[serde(default)]
    pub exec: Vec<ExecConfig>,
    /// BLE devices, tags and vendor profiles (`[ble]`, `[[ble.device]]`, `[[ble.tag]]`,
    /// `[[ble.vendor_profile]]`); absent: no BLE adapter runs.
    pub ble: Option<BleConfig>,
    /// Firmware relay (`[firmware]`, issue 10); absent: the gateway relays no firmware.
    pub firmware: Option<FirmwareSection>,
}

/// `[firmware]`: the firmware relay. Jobs are verified against a firmware trust anchor of its
/// own (`signer_certs` and/or `signer_ca`), never the TLS CA (`uplink.ca`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareSection {
    /// PEM certificates of firmware signers, trusted one by one (by `kid`)…
    #[serde(default)]
    pub signer_certs: Vec<Spanned<PathBuf>>,
    /// …or the firmware CA: a job is trusted when its `x5chain` chains to it. Each signer
    /// certificate must name a firmware signer (SAN URI `urn:wardgate-firmware:{name}`) and
    /// carry extendedKeyUsage clientAuth (what `signing::Verifier` checks chains for).
    pub signer_ca: Option<Spanned<PathBuf>>,
    /// Revocation lists (PEM or DER) honoured for signers trusted through `signer_ca`.
    #[serde(default)]
    pub signer_crl: Vec<Spanned<PathBuf>>,
    /// Where downloaded images are kept; default `firmware/` beside the store.
    pub cache_dir: Option<PathBuf>,
    /// Most bytes the image cache may hold; default 64 MiB.
    #[serde(default = "default_cache_max")]
    pub cache_max_bytes: u64,
    /// Maintenance window `["HH:MM", "HH:MM"]` (or the text `"HH:MM-HH:MM"`), local time of
    /// `timezone` (an end before the start crosses midnight). A job's own window wins. Absent:
    /// any time.
    pub window: Option<Spanned<Window>>,
    /// Time zone of the window: an IANA name from the system's tz database (e.g.
    /// `Europe/Berlin`, follows daylight saving), `UTC` (default) or a fixed offset `+01:00`.
    pub timezone: Option<Spanned<String>>,
    /// A device that produced an observation within this many minutes is in clinical use and is
    /// not updated (unless the job overrides, with a reason). Default 10.
    #[serde(default = "default_in_use_minutes")]
    pub in_use_minutes: u64,
    /// Least battery level (percent) for an update; a job's own value wins. Default 30.
    #[serde(default = "default_min_battery")]
    pub min_battery: u8,
    /// Most transfers at once on this gateway; default 1 (one BLE adapter).
    #[serde(default = "default_max_parallel")]
    pub max_parallel: usize,
    /// Seconds before the first retry of a device after a transient failure (timeout, link
    /// lost, download interrupted); doubled at each further attempt, at most 15 min. Default
    /// 30; at least 1.
    #[serde(default = "default_retry_initial_s")]
    pub retry_initial_s: u64,
    /// Firmware classes: class name → the configured devices of that class (device ids
    /// `serial:NAME` / `ble:ADDRESS`, installer names or BLE addresses). A job targets one class;
    /// its `seq` is counted per class. Each device belongs to at most one class.
    #[serde(default)]
    pub classes: std::collections::BTreeMap<String, Vec<String>>,
}

/// `[firmware] window` as written: its times, in order (checked by `validate`: two valid times
/// of day). Deserialized from an array of texts or from one text `"HH:MM-HH:MM"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window(pub Vec<String>);

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Window, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Window;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("[\"HH:MM\", \"HH:MM\"] or \"HH:MM-HH:MM\" (start, end)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Window, E> {
                match v.split_once('-') {
                    Some((a, b)) => Ok(Window(vec![a.trim().to_owned(), b.trim().to_owned()])),
                    None => Ok(Window(vec![v.to_owned()])),
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Window, A::Error> {
                let mut out = Vec::new();
                while let Some(t) = a.next_element::<String>()? {
                    out.push(t);
                }
                Ok(Window(out))
            }
        }
        d.deserialize_any(V)
    }
}

fn default_cache_max() -> u64 {
    64 << 20
}
fn default_in_use_minutes() -> u64 {
    10
}
fn default_min_battery() -> u8 {
    30
}
fn default_max_parallel() -> usize {
    1
}
fn default_retry_initial_s() -> u64 {
    30
}

impl FirmwareSection {
    /// The image cache directory: `cache_dir`, else `firmware/` beside the store file.
    pub fn cache_dir(&self, store: &StoreSection) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| store.path.with_file_name("firmware"))
    }
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
    /// Where "the clock is synchronised" comes from ([`ClockSource`]): `kernel` (default,
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
    /// Hard limit of the store file in SQLite pages (`PRAGMA max_page_count`, 4 KiB each): the
    /// store behaves as on a full disk beyond it. Absent (default): no limit but the disk's.
    pub max_pages: Option<u64>,
    /// Most new rows held in memory while the store cannot accept them (full disk); beyond it
    /// new rows are refused (newest first, waveform before numerics before events), counted per
    /// device and reported upstream as a `dropped` event when the store accepts rows again.
    /// Default 10000 (a few MB).
    pub buffer_max_rows: usize,
    /// Where the daemon writes its status snapshot for `wardgate status`. Default:
    /// `/run/wardgate/status.json` when the directory `/run/wardgate` exists (systemd's
    /// `RuntimeDirectory=wardgate`: a tmpfs a full store cannot block), else `status.json`
    /// beside the store. See [`StoreSection::status_path`].
    pub status_path: Option<PathBuf>,
}

/// The runtime directory the packaged unit creates (`RuntimeDirectory=wardgate`).
pub const RUNTIME_DIR: &str = "/run/wardgate";

impl StoreSection {
    /// Where the status snapshot lives: `status_path` when given, else
    /// [`RUNTIME_DIR`]`/status.json` when that directory exists, else `status.json` beside the
    /// store. The daemon and `wardgate status` resolve it the same way from the same config.
    pub fn status_path(&self) -> PathBuf {
        if let Some(p) = &self.status_path {
            return p.clone();
        }
        let run = std::path::Path::new(RUNTIME_DIR);
        if run.is_dir() {
            run.join("status.json")
        } else {
            self.path.with_file_name("status.json")
        }
    }
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
            max_pages: None,
            buffer_max_rows: 10_000,
            status_path: None,
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
    /// Upstream acks are COSE_Sign1 messages; rows are deleted only for an ack signed by a
    /// trusted receiver: one whose certificate is listed here (PEM files)…
    #[serde(default)]
    pub receiver_certs: Vec<Spanned<PathBuf>>,
    /// …or whose certificate (sent in the ack's `x5chain`) chains to this CA and names a receiver
    /// (`urn:wardgate-receiver:{name}` subjectAltName URI; see `identity.rs`).
    pub receiver_ca: Option<Spanned<PathBuf>>,
    /// Certificate revocation lists (PEM or DER) honoured for receivers trusted by `receiver_ca`.
    #[serde(default)]
    pub receiver_crl: Vec<Spanned<PathBuf>>,
    /// Encrypt batches and device status to every certificate in `receiver_certs` (COSE_Encrypt,
    /// ECDH-ES + A256KW, A256GCM; `docs/wire-format.md` "Encryption"). Unset: on when
    /// `receiver_certs` lists any (at most 8, P-256 keys). `false` turns it off, e.g. while a
    /// receiver not yet able to decrypt is still in service, or when receivers are trusted only
    /// through `receiver_ca` (there is no key to encrypt to).
    pub encrypt: Option<Spanned<bool>>,
    /// MQTT keepalive in seconds; a dead link is noticed within two periods. Default 30.
    #[serde(default = "default_keepalive")]
    pub keepalive_s: u64,
    /// Most observations and events in one batch; default 2000.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// How often, in ms, the uplink re-sends overdue batches, retries a full store and refreshes
    /// retained payloads; default 200. Observations do not wait for it: each commit is sent at
    /// once while the in-flight window has room (`uplink/session.rs`, `fills_on`).
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
    /// PEM certificates of the gateways whose batches are accepted (each identifies a `kid`)…
    #[serde(default)]
    pub gateway_certs: Vec<Spanned<PathBuf>>,
    /// …or a CA: a batch is accepted when its signer's certificate (the message's `x5chain`)
    /// chains to it and names the gateway, site and ward of the topic and payload (SAN URI
    /// `urn:wardgate:{site}:{ward}:{id}`, or CN = id). A renewed gateway certificate then needs
    /// no receiver change.
    pub gateway_ca: Option<Spanned<PathBuf>>,
    /// Certificate revocation lists (PEM or DER) honoured for gateways trusted by `gateway_ca`.
    #[serde(default)]
    pub gateway_crl: Vec<Spanned<PathBuf>>,
    /// Migration from gateways older than signed acks: also send the plain v1 ack they read
    /// (new gateways refuse it). Default false; switch off once every gateway is upgraded.
    #[serde(default)]
    pub legacy_plain_acks: bool,
    /// Refuse batches that are not encrypted to this receiver (COSE_Encrypt): the last step of
    /// the migration to encryption, once every gateway lists this receiver's certificate in
    /// `[uplink] receiver_certs`. A refused gateway is told why (signed refusal notice).
    /// Default false (plain COSE_Sign1 batches accepted).
    #[serde(default)]
    pub require_encryption: bool,
    /// `sqlite:PATH` or `jsonl:PATH`: where verified observations are written durably (fsynced).
    pub output: Spanned<String>,
    /// If set, every message on the batch topic whose signature verified is also written here
    /// as raw bytes (`<gateway>-<receiver start ms>-<n>.cose`), for independent verification.
    /// Unverifiable messages are never written; a failed write (disk full) is logged and
    /// counted, and the receiver carries on.
    pub raw_dir: Option<PathBuf>,
    /// Largest batch message (MQTT payload bytes) the receiver processes; default 16 MiB (the
    /// gateway's own outgoing limit). A larger message is read, PUBACKed and dropped: counted,
    /// logged once per sender, never stored or acknowledged upstream. See `receive` for the
    /// memory this costs.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

/// Default `[receiver] max_message_bytes`: 16 MiB, what a gateway's uplink may send.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;

fn default_max_message_bytes() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
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

impl Config {
    /// The clock source of `[gateway] clock` (validated; `kernel` when absent).
    pub fn clock_source(&self) -> ClockSource {
        self.gateway
            .clock
            .as_ref()
            .and_then(|c| ClockSource::parse(c.get_ref()).ok())
            .unwrap_or(ClockSource::Kernel)
    }
}

/// Where "the clock is synchronised" comes from (`[gateway] clock`); the daemon's clock module
/// reads it (`ClockSource::synced`, defined there because it touches the system).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClockSource {
    /// `adjtimex(2)`: the kernel's NTP state.
    Kernel,
    /// Always synchronised.
    Synced,
    /// Synchronised while this file exists.
    File(PathBuf),
}

impl ClockSource {
    /// Parses the config value: `kernel`, `synced`, or `file:PATH`.
    pub fn parse(s: &str) -> Result<ClockSource, String> {
        match s {
            "kernel" => Ok(ClockSource::Kernel),
            "synced" => Ok(ClockSource::Synced),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(ClockSource::File(PathBuf::from(p))),
                _ => Err(format!(
                    "clock `{s}` must be `kernel`, `synced` or `file:PATH`"
                )),
            },
        }
    }
}

/// A local time of day, minutes after midnight (0..1440), written `"HH:MM"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay(pub u16);

impl TimeOfDay {
    /// Parses `HH:MM` (00:00–23:59).
    pub fn parse(s: &str) -> Option<TimeOfDay> {
        let (h, m) = s.split_once(':')?;
        if h.len() != 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(TimeOfDay(h * 60 + m))
    }
}

impl std::fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

/// Checks the syntax of a time zone: `UTC`, a fixed offset `±HH:MM`, or an IANA name
/// (`Area/Location`, letters, digits, `_`, `-`, `+`, `/`). Whether an IANA name exists is the
/// system's tz database's business (`config/files.rs` checks `/usr/share/zoneinfo`).
pub fn check_tz(tz: &str) -> Result<(), String> {
    if tz == "UTC" {
        return Ok(());
    }
    if let Some(off) = tz.strip_prefix('+').or_else(|| tz.strip_prefix('-')) {
        return match TimeOfDay::parse(off) {
            Some(t) if t.0 <= 14 * 60 => Ok(()),
            _ => Err(format!(
                "time zone `{tz}`: an offset is ±HH:MM, at most ±14:00"
            )),
        };
    }
    let ok = !tz.is_empty()
        && tz.len() <= 64
        && !tz.starts_with('/')
        && !tz.contains("..")
        && tz
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "time zone `{tz}` is not `UTC`, an offset like +01:00 or an IANA name like Europe/Berlin"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_source_parses_its_three_forms() {
        assert_eq!(ClockSource::parse("kernel"), Ok(ClockSource::Kernel));
        assert_eq!(ClockSource::parse("synced"), Ok(ClockSource::Synced));
        assert_eq!(
            ClockSource::parse("file:/run/x"),
            Ok(ClockSource::File("/run/x".into()))
        );
        assert!(ClockSource::parse("file:").is_err());
        assert!(ClockSource::parse("ntp").is_err());
    }
}
