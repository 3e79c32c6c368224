//! The signed firmware job (FIRMWARE.md §5; the CDDL is `docs/wire-format.md` "Firmware jobs").
//!
//! A job is a COSE_Sign1 (tag 18, PROTOCOLS §B.3; made by [`crate::signing::Signer`]) over a
//! CBOR map with text keys: `v` = 1, the job id, `seq` (anti-rollback, per target class),
//! `issued`/`expires` (Unix seconds), `target`, `image`, `policy`. A **cancel** is the same
//! envelope over `{v, cancel: <job id>, seq, issued, expires, target: {class}}`; it takes a `seq`
//! in the same space as jobs, so a replayed old job cannot come back after its cancel.
//!
//! Checks, in order ([`verify`]); each refusal has a stable machine-readable [`Reason`]:
//! 1. at most [`MAX_JOB_BYTES`] (`too_large`);
//! 2. the signature, against the **firmware trust** (its own listed certificates or CA + CRLs,
//!    apart from the TLS CA; `signature_refused`), by a certificate naming a firmware signer
//!    (`urn:wardgate-firmware:{name}`, [`crate::identity`]; `not_a_firmware_signer`);
//! 3. the payload: CBOR nested at most [`MAX_DEPTH`] deep, `v` first (`unsupported_version`),
//!    then every field, no unknown key, bounded lists and texts (`malformed`), policy bounds
//!    (`invalid_policy`);
//! 4. the clock: `issued` at most [`CLOCK_SKEW_S`] ahead (`not_yet_valid`), `expires` not passed
//!    (`expired`).
//!
//! Then, with the gateway's state ([`accept`]): targets resolved to configured devices
//! (`unknown_class`, `unknown_device`, `ambiguous_device`, `device_not_in_class`, `no_devices`;
//! [`super::target`]) and `seq` greater than the last accepted for the class, checked and
//! recorded in one store transaction (`seq_replayed`, `duplicate_job`), with one execution row
//! per device (state `queued`).

use super::image::{Expected, ImageVersion};
pub use super::reason::{refuse, Reason, Refusal};
use super::target::Fleet;
pub use crate::config::schema::{check_tz, TimeOfDay};
use crate::identity::Identity;
use crate::signing::Verifier;
use crate::store::firmware::{JobRow, SeqConflict};
use crate::store::Store;
use ciborium::Value;
use serde_json::json;

/// The job format version.
pub const JOB_VERSION: u64 = 1;
/// Largest job message accepted, bytes (the COSE_Sign1 with its certificate chain).
pub const MAX_JOB_BYTES: usize = 64 * 1024;
/// Deepest CBOR nesting accepted in the payload.
pub const MAX_DEPTH: usize = 8;
/// Most entries in `target.devices`.
pub const MAX_DEVICES: usize = 64;
/// Most entries in `target.from_versions`.
pub const MAX_VERSIONS: usize = 16;
/// Most entries in `image.uri`.
pub const MAX_URIS: usize = 4;
/// Longest id, class, device reference, tz or reason text, bytes.
pub const MAX_TEXT: usize = 256;
/// Longest URI, bytes.
pub const MAX_URI: usize = 2048;
/// A job may say it was issued this far in the future (clock skew between upstream and the
/// gateway), seconds.
pub const CLOCK_SKEW_S: u64 = 300;
/// Least `first_chunk_timeout_s`: the first upload chunk waits for the slot erase (B25, F1).
pub const MIN_FIRST_CHUNK_TIMEOUT_S: u64 = 40;

/// What the job's policy says the relay must do (absent optional values: the gateway's
/// `[firmware]` settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Upload, mark for test, reset, confirm once the device runs it (default).
    #[default]
    TestConfirm,
    /// Upload, mark confirmed at once (permanent), reset.
    ConfirmOnly,
    /// Upload, mark for test, reset; never confirm (the device reverts at its next reset).
    TestOnly,
}

impl Mode {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::TestConfirm => "test-confirm",
            Mode::ConfirmOnly => "confirm-only",
            Mode::TestOnly => "test-only",
        }
    }

    /// Parses the wire string.
    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::TestConfirm, Mode::ConfirmOnly, Mode::TestOnly]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// The job's `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Device class (firmware line), as configured in `[firmware.classes]`; the `seq` space.
    pub class: String,
    /// Device references (id, name or BLE address; see `config/devices.rs`); `None`: every
    /// device of the class.
    pub devices: Option<Vec<String>>,
    /// The update applies only to devices running one of these versions (checked by the relay
    /// against the device's image list); `None`: any.
    pub from_versions: Option<Vec<ImageVersion>>,
}

/// The job's `image` (FIRMWARE.md §5 item 5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobImage {
    /// MCUboot version the image carries (header `ih_ver`) and the device must run afterwards.
    pub version: ImageVersion,
    /// File size, bytes.
    pub size: u64,
    /// SHA-256 of the whole file (the SMP upload `sha`).
    pub sha256: [u8; 32],
    /// The image's SHA256 TLV (the slot hash the device reports after upload).
    pub mcuboot_hash: [u8; 32],
    /// The KEYHASH TLV the image must carry (the device's MCUboot key), if the job names one.
    pub keyhash: Option<[u8; 32]>,
    /// MCUboot image number (the SMP upload `image` field); 0 for single-image devices.
    pub index: u32,
    /// Where to download it: 1 to [`MAX_URIS`] `https://` URLs, tried in order.
    pub uri: Vec<String>,
}

impl JobImage {
    /// What the downloaded file must be, for [`super::image::ImageInfo::check_against`].
    pub fn expected(&self) -> Expected {
        Expected {
            version: self.version,
            size: self.size,
            sha256: self.sha256,
            mcuboot_hash: self.mcuboot_hash,
            keyhash: self.keyhash,
        }
    }
}

/// The job's `policy` (FIRMWARE.md §5 item 6). `None`: the gateway's `[firmware]` setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Maintenance window `[start, end]`, local time of `tz`; `end < start` crosses midnight.
    pub window: Option<(TimeOfDay, TimeOfDay)>,
    /// Time zone of the window (IANA name, `UTC` or `±HH:MM`).
    pub tz: Option<String>,
    /// Wait until the device is not in clinical use (default true).
    pub not_in_use: bool,
    /// Why the job may update a device in use: required when `not_in_use` is false.
    pub override_reason: Option<String>,
    /// Least battery level, percent.
    pub min_battery: Option<u8>,
    /// Test/confirm mode.
    pub mode: Mode,
    /// How long the device may take to swap images and come back, seconds (default 120).
    pub swap_time_s: u64,
    /// Timeout of the first upload chunk (the slot erase), seconds, ≥ 40 (default 60).
    pub first_chunk_timeout_s: u64,
    /// Timeout of every other chunk, seconds (default 10).
    pub chunk_timeout_s: u64,
    /// Attempts per device before `failed` (default 3, at most 100).
    pub max_attempts: u32,
    /// No new attempt after this time, Unix seconds.
    pub deadline: Option<u64>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            window: None,
            tz: None,
            not_in_use: true,
            override_reason: None,
            min_battery: None,
            mode: Mode::TestConfirm,
            swap_time_s: 120,
            first_chunk_timeout_s: 60,
            chunk_timeout_s: 10,
            max_attempts: 3,
            deadline: None,
        }
    }
}

/// A firmware job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// Job id (an MQTT topic level: `…/firmware/{job}/progress`).
    pub id: String,
    /// Anti-rollback sequence number in the class's space (< 2⁶³).
    pub seq: u64,
    /// Unix seconds.
    pub issued: u64,
    /// Unix seconds; the gateway refuses the job after it.
    pub expires: u64,
    /// Which devices.
    pub target: Target,
    /// Which image.
    pub image: JobImage,
    /// When and how.
    pub policy: Policy,
}

/// A cancel of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cancel {
    /// The job to cancel.
    pub job: String,
    /// Sequence number in the class's space.
    pub seq: u64,
    /// Unix seconds.
    pub issued: u64,
    /// Unix seconds.
    pub expires: u64,
    /// The class (the job's).
    pub class: String,
    /// Why, for the log.
    pub reason: Option<String>,
}

/// A job or a cancel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A job (boxed: a cancel is small).
    Job(Box<Job>),
    /// A cancel.
    Cancel(Cancel),
}

impl Message {
    /// Its `seq`.
    pub fn seq(&self) -> u64 {
        match self {
            Message::Job(j) => j.seq,
            Message::Cancel(c) => c.seq,
        }
    }
    /// Its class.
    pub fn class(&self) -> &str {
        match self {
            Message::Job(j) => &j.target.class,
            Message::Cancel(c) => &c.class,
        }
    }
    /// (issued, expires).
    pub fn validity(&self) -> (u64, u64) {
        match self {
            Message::Job(j) => (j.issued, j.expires),
            Message::Cancel(c) => (c.issued, c.expires),
        }
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn entry(k: &str, v: Value) -> (Value, Value) {
    (text(k), v)
}

impl Message {
    /// The CBOR payload (deterministic key order as in the CDDL; optional values left out).
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut m = vec![entry("v", Value::from(JOB_VERSION))];
        match self {
            Message::Job(j) => {
                m.push(entry("job", text(&j.id)));
                m.push(entry("seq", Value::from(j.seq)));
                m.push(entry("issued", Value::from(j.issued)));
                m.push(entry("expires", Value::from(j.expires)));
                let mut t = vec![entry("class", text(&j.target.class))];
                if let Some(d) = &j.target.devices {
                    t.push(entry(
                        "devices",
                        Value::Array(d.iter().map(|s| text(s)).collect()),
                    ));
                }
                if let Some(v) = &j.target.from_versions {
                    t.push(entry(
                        "from_versions",
                        Value::Array(v.iter().map(|v| text(&v.to_string())).collect()),
                    ));
                }
                m.push(entry("target", Value::Map(t)));
                let i = &j.image;
                let mut im = vec![
                    entry("version", text(&i.version.to_string())),
                    entry("size", Value::from(i.size)),
                    entry("sha256", Value::Bytes(i.sha256.to_vec())),
                    entry("mcuboot_hash", Value::Bytes(i.mcuboot_hash.to_vec())),
                ];
                if let Some(k) = i.keyhash {
                    im.push(entry("keyhash", Value::Bytes(k.to_vec())));
                }
                im.push(entry("index", Value::from(i.index)));
                im.push(entry(
                    "uri",
                    Value::Array(i.uri.iter().map(|s| text(s)).collect()),
                ));
                m.push(entry("image", Value::Map(im)));
                let p = &j.policy;
                let mut pm = Vec::new();
                if let Some((a, b)) = p.window {
                    pm.push(entry(
                        "window",
                        Value::Array(vec![text(&a.to_string()), text(&b.to_string())]),
                    ));
                }
                if let Some(tz) = &p.tz {
                    pm.push(entry("tz", text(tz)));
                }
                pm.push(entry("not_in_use", Value::Bool(p.not_in_use)));
                if let Some(r) = &p.override_reason {
                    pm.push(entry("override", text(r)));
                }
                if let Some(b) = p.min_battery {
                    pm.push(entry("min_battery", Value::from(b)));
                }
                pm.push(entry("mode", text(p.mode.as_str())));
                pm.push(entry("swap_time_s", Value::from(p.swap_time_s)));
                pm.push(entry(
                    "first_chunk_timeout_s",
                    Value::from(p.first_chunk_timeout_s),
                ));
                pm.push(entry("chunk_timeout_s", Value::from(p.chunk_timeout_s)));
                pm.push(entry("max_attempts", Value::from(p.max_attempts)));
                if let Some(d) = p.deadline {
                    pm.push(entry("deadline", Value::from(d)));
                }
                m.push(entry("policy", Value::Map(pm)));
            }
            Message::Cancel(c) => {
                m.push(entry("cancel", text(&c.job)));
                m.push(entry("seq", Value::from(c.seq)));
                m.push(entry("issued", Value::from(c.issued)));
                m.push(entry("expires", Value::from(c.expires)));
                m.push(entry(
                    "target",
                    Value::Map(vec![entry("class", text(&c.class))]),
                ));
                if let Some(r) = &c.reason {
                    m.push(entry("reason", text(r)));
                }
            }
        }
        let mut out = Vec::new();
        ciborium::ser::into_writer(&Value::Map(m), &mut out)
            .expect("writing CBOR to a Vec cannot fail");
        out
    }

    /// Decodes a payload (after the signature check): bounded depth, `v` first, every field
    /// checked (module doc, step 3). Errors: `unsupported_version`, `malformed`,
    /// `invalid_policy`.
    pub fn from_cbor(payload: &[u8]) -> Result<Message, Refusal> {
        let value: Value = ciborium::de::from_reader_with_recursion_limit(payload, MAX_DEPTH)
            .map_err(|e| {
                refuse(
                    Reason::Malformed,
                    format!("not CBOR within {MAX_DEPTH} levels: {e}"),
                )
            })?;
        let Value::Map(entries) = value else {
            return Err(refuse(Reason::Malformed, "the payload is not a CBOR map"));
        };
        let mut top = Fields::new(&entries, "")?;
        match top.take("v") {
            Some(Value::Integer(i)) if u64::try_from(*i).ok() == Some(JOB_VERSION) => {}
            Some(v) => {
                return Err(refuse(
                    Reason::UnsupportedVersion,
                    format!("v = {v:?}; this gateway reads firmware job version {JOB_VERSION}"),
                ))
            }
            None => return Err(refuse(Reason::UnsupportedVersion, "no `v`")),
        }
        if top.has("cancel") {
            let job = top.id("cancel")?;
            let (seq, issued, expires) = top.times()?;
            let mut t = top.map("target")?;
            let class = t.id("class")?;
            t.done()?;
            let reason = top.opt_text("reason", MAX_TEXT)?;
            top.done()?;
            return Ok(Message::Cancel(Cancel {
                job,
                seq,
                issued,
                expires,
                class,
                reason,
            }));
        }
        let id = top.id("job")?;
        let (seq, issued, expires) = top.times()?;
        let mut t = top.map("target")?;
        let target = Target {
            class: t.id("class")?,
            devices: t
                .opt_list("devices", MAX_DEVICES)?
                .map(|l| {
                    l.iter()
                        .map(|v| as_text(v, "target.devices[]", MAX_TEXT))
                        .collect()
                })
                .transpose()?,
            from_versions: t
                .opt_list("from_versions", MAX_VERSIONS)?
                .map(|l| {
                    l.iter()
                        .map(|v| {
                            let s = as_text(v, "target.from_versions[]", MAX_TEXT)?;
                            ImageVersion::parse(&s).map_err(|e| refuse(Reason::Malformed, e))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?,
        };
        t.done()?;
        let mut i = top.map("image")?;
        let version = ImageVersion::parse(&i.text("version", MAX_TEXT)?)
            .map_err(|e| refuse(Reason::Malformed, format!("image.version: {e}")))?;
        let image = JobImage {
            version,
            size: i.uint("size")?,
            sha256: i.hash("sha256")?,
            mcuboot_hash: i.hash("mcuboot_hash")?,
            keyhash: if i.has("keyhash") {
                Some(i.hash("keyhash")?)
            } else {
                None
            },
            index: match i.opt_uint("index")? {
                Some(n) => u32::try_from(n)
                    .map_err(|_| refuse(Reason::Malformed, "image.index is too large"))?,
                None => 0,
            },
            uri: {
                let l = i
                    .opt_list("uri", MAX_URIS)?
                    .ok_or_else(|| refuse(Reason::Malformed, "image.uri is missing"))?;
                let uris = l
                    .iter()
                    .map(|v| as_text(v, "image.uri[]", MAX_URI))
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(u) = uris
                    .iter()
                    .find(|u| !u.starts_with("https://") || u.len() <= 8)
                {
                    return Err(refuse(
                        Reason::Malformed,
                        format!("image.uri `{u}` is not an https:// URL"),
                    ));
                }
                uris
            },
        };
        i.done()?;
        if image.size == 0 {
            return Err(refuse(Reason::Malformed, "image.size is 0"));
        }
        let policy = policy(top.map("policy")?)?;
        top.done()?;
        if policy.deadline.is_some_and(|d| d <= issued) {
            return Err(refuse(
                Reason::InvalidPolicy,
                "policy.deadline is not after issued",
            ));
        }
        Ok(Message::Job(Box::new(Job {
            id,
            seq,
            issued,
            expires,
            target,
            image,
            policy,
        })))
    }

    /// The message as JSON, for `wardgate verify` and `wardgate firmware accept` (hashes in
    /// lower-case hex).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Message::Job(j) => {
                let p = &j.policy;
                json!({
                    "kind": "firmware_job",
                    "v": JOB_VERSION,
                    "job": j.id,
                    "seq": j.seq,
                    "issued": j.issued,
                    "expires": j.expires,
                    "target": {
                        "class": j.target.class,
                        "devices": j.target.devices,
                        "from_versions": j.target.from_versions.as_ref()
                            .map(|v| v.iter().map(|v| v.to_string()).collect::<Vec<_>>()),
                    },
                    "image": {
                        "version": j.image.version.to_string(),
                        "size": j.image.size,
                        "sha256": hex::encode(j.image.sha256),
                        "mcuboot_hash": hex::encode(j.image.mcuboot_hash),
                        "keyhash": j.image.keyhash.map(hex::encode),
                        "index": j.image.index,
                        "uri": j.image.uri,
                    },
                    "policy": {
                        "window": p.window.map(|(a, b)| [a.to_string(), b.to_string()]),
                        "tz": p.tz,
                        "not_in_use": p.not_in_use,
                        "override": p.override_reason,
                        "min_battery": p.min_battery,
                        "mode": p.mode.as_str(),
                        "swap_time_s": p.swap_time_s,
                        "first_chunk_timeout_s": p.first_chunk_timeout_s,
                        "chunk_timeout_s": p.chunk_timeout_s,
                        "max_attempts": p.max_attempts,
                        "deadline": p.deadline,
                    },
                })
            }
            Message::Cancel(c) => json!({
                "kind": "firmware_cancel",
                "v": JOB_VERSION,
                "cancel": c.job,
                "seq": c.seq,
                "issued": c.issued,
                "expires": c.expires,
                "target": {"class": c.class},
                "reason": c.reason,
            }),
        }
    }
}

fn policy(mut p: Fields<'_>) -> Result<Policy, Refusal> {
    let d = Policy::default();
    let bad = |m: String| refuse(Reason::InvalidPolicy, m);
    let window = match p.opt_list("window", 2)? {
        None => None,
        Some(l) if l.len() == 2 => {
            let t = |v: &Value| -> Result<TimeOfDay, Refusal> {
                let s = as_text(v, "policy.window[]", 5)?;
                TimeOfDay::parse(&s).ok_or_else(|| bad(format!("policy.window `{s}` is not HH:MM")))
            };
            let (a, b) = (t(&l[0])?, t(&l[1])?);
            if a == b {
                return Err(bad("policy.window starts where it ends".into()));
            }
            Some((a, b))
        }
        Some(_) => return Err(bad("policy.window must be [start, end]".into())),
    };
    let tz = p.opt_text("tz", MAX_TEXT)?;
    if let Some(tz) = &tz {
        check_tz(tz).map_err(bad)?;
    }
    let not_in_use = p.opt_bool("not_in_use")?.unwrap_or(d.not_in_use);
    let override_reason = p.opt_text("override", MAX_TEXT)?;
    if !not_in_use
        && override_reason
            .as_deref()
            .is_none_or(|r| r.trim().is_empty())
    {
        return Err(bad(
            "policy.not_in_use = false (update devices in clinical use) needs a stated `override` reason".into(),
        ));
    }
    let min_battery = match p.opt_uint("min_battery")? {
        Some(b) if b <= 100 => Some(b as u8),
        Some(b) => return Err(bad(format!("policy.min_battery {b} is not a percentage"))),
        None => None,
    };
    let mode = match p.opt_text("mode", MAX_TEXT)? {
        None => d.mode,
        Some(m) => Mode::parse(&m).ok_or_else(|| {
            bad(format!(
                "policy.mode `{m}` is not test-confirm, confirm-only or test-only"
            ))
        })?,
    };
    let secs = |p: &mut Fields<'_>, k: &str, def: u64, min: u64| -> Result<u64, Refusal> {
        let v = p.opt_uint(k)?.unwrap_or(def);
        if v < min || v > 86_400 {
            return Err(bad(format!(
                "policy.{k} = {v}: must be {min} to 86400 seconds"
            )));
        }
        Ok(v)
    };
    let swap_time_s = secs(&mut p, "swap_time_s", d.swap_time_s, 1)?;
    let first_chunk_timeout_s = secs(
        &mut p,
        "first_chunk_timeout_s",
        d.first_chunk_timeout_s,
        MIN_FIRST_CHUNK_TIMEOUT_S,
    )?;
    let chunk_timeout_s = secs(&mut p, "chunk_timeout_s", d.chunk_timeout_s, 1)?;
    let max_attempts = match p.opt_uint("max_attempts")? {
        None => d.max_attempts,
        Some(n @ 1..=100) => n as u32,
        Some(n) => return Err(bad(format!("policy.max_attempts {n}: must be 1 to 100"))),
    };
    let deadline = p.opt_uint("deadline")?;
    p.done()?;
    Ok(Policy {
        window,
        tz,
        not_in_use,
        override_reason,
        min_battery,
        mode,
        swap_time_s,
        first_chunk_timeout_s,
        chunk_timeout_s,
        max_attempts,
        deadline,
    })
}

fn as_text(v: &Value, what: &str, max: usize) -> Result<String, Refusal> {
    match v {
        Value::Text(s) if !s.is_empty() && s.len() <= max => Ok(s.clone()),
        Value::Text(s) => Err(refuse(
            Reason::Malformed,
            format!("{what}: text of {} bytes (1 to {max})", s.len()),
        )),
        _ => Err(refuse(
            Reason::Malformed,
            format!("{what} is not a text string"),
        )),
    }
}

/// A map's entries, taken one by one so that what is left at the end is unknown.
struct Fields<'a> {
    path: String,
    entries: Vec<(&'a str, &'a Value)>,
}

impl<'a> Fields<'a> {
    fn new(entries: &'a [(Value, Value)], path: &str) -> Result<Fields<'a>, Refusal> {
        let mut out: Vec<(&str, &Value)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let Value::Text(k) = k else {
                return Err(refuse(
                    Reason::Malformed,
                    format!("{path}: a key that is not text"),
                ));
            };
            if out.iter().any(|(o, _)| o == k) {
                return Err(refuse(
                    Reason::Malformed,
                    format!("{path}{k} appears twice"),
                ));
            }
            out.push((k.as_str(), v));
        }
        Ok(Fields {
            path: path.to_owned(),
            entries: out,
        })
    }

    fn name(&self, k: &str) -> String {
        format!("{}{k}", self.path)
    }

    fn has(&self, k: &str) -> bool {
        self.entries.iter().any(|(o, _)| *o == k)
    }

    fn take(&mut self, k: &str) -> Option<&'a Value> {
        let i = self.entries.iter().position(|(o, _)| *o == k)?;
        Some(self.entries.remove(i).1)
    }

    fn need(&mut self, k: &str) -> Result<&'a Value, Refusal> {
        let n = self.name(k);
        self.take(k)
            .ok_or_else(|| refuse(Reason::Malformed, format!("{n} is missing")))
    }

    fn done(self) -> Result<(), Refusal> {
        match self.entries.first() {
            None => Ok(()),
            Some((k, _)) => Err(refuse(
                Reason::Malformed,
                format!("unknown key {}{k} (firmware job v{JOB_VERSION})", self.path),
            )),
        }
    }

    fn text(&mut self, k: &str, max: usize) -> Result<String, Refusal> {
        let n = self.name(k);
        as_text(self.need(k)?, &n, max)
    }

    fn opt_text(&mut self, k: &str, max: usize) -> Result<Option<String>, Refusal> {
        let n = self.name(k);
        self.take(k).map(|v| as_text(v, &n, max)).transpose()
    }

    /// A job id or class: text usable as one MQTT topic level.
    fn id(&mut self, k: &str) -> Result<String, Refusal> {
        let n = self.name(k);
        let s = self.text(k, 64)?;
        if !crate::config::is_topic_safe(&s) {
            return Err(refuse(
                Reason::Malformed,
                format!("{n} `{s}` must contain no `/`, `+`, `#` or spaces (it is a topic level)"),
            ));
        }
        Ok(s)
    }

    fn uint_of(&self, k: &str, v: &Value) -> Result<u64, Refusal> {
        match v {
            Value::Integer(i) => u64::try_from(*i)
                .ok()
                .filter(|n| *n <= i64::MAX as u64)
                .ok_or_else(|| {
                    refuse(
                        Reason::Malformed,
                        format!("{} is out of range", self.name(k)),
                    )
                }),
            _ => Err(refuse(
                Reason::Malformed,
                format!("{} is not an unsigned integer", self.name(k)),
            )),
        }
    }

    fn uint(&mut self, k: &str) -> Result<u64, Refusal> {
        let v = self.need(k)?;
        self.uint_of(k, v)
    }

    fn opt_uint(&mut self, k: &str) -> Result<Option<u64>, Refusal> {
        match self.take(k) {
            None => Ok(None),
            Some(v) => self.uint_of(k, v).map(Some),
        }
    }

    fn opt_bool(&mut self, k: &str) -> Result<Option<bool>, Refusal> {
        match self.take(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(refuse(
                Reason::Malformed,
                format!("{} is not a bool", self.name(k)),
            )),
        }
    }

    fn hash(&mut self, k: &str) -> Result<[u8; 32], Refusal> {
        let n = self.name(k);
        match self.need(k)? {
            Value::Bytes(b) => <[u8; 32]>::try_from(b.as_slice()).map_err(|_| {
                refuse(
                    Reason::Malformed,
                    format!("{n} has {} bytes, not 32", b.len()),
                )
            }),
            _ => Err(refuse(
                Reason::Malformed,
                format!("{n} is not a byte string"),
            )),
        }
    }

    fn map(&mut self, k: &str) -> Result<Fields<'a>, Refusal> {
        let path = format!("{}{k}.", self.path);
        match self.need(k)? {
            Value::Map(m) => Fields::new(m, &path),
            _ => Err(refuse(
                Reason::Malformed,
                format!("{}{k} is not a map", self.path),
            )),
        }
    }

    fn opt_list(&mut self, k: &str, max: usize) -> Result<Option<&'a [Value]>, Refusal> {
        let n = self.name(k);
        match self.take(k) {
            None => Ok(None),
            Some(Value::Array(a)) if !a.is_empty() && a.len() <= max => Ok(Some(a)),
            Some(Value::Array(a)) => Err(refuse(
                Reason::Malformed,
                format!("{n} has {} entries (1 to {max})", a.len()),
            )),
            Some(_) => Err(refuse(Reason::Malformed, format!("{n} is not an array"))),
        }
    }

    /// `seq`, `issued`, `expires`, with `issued < expires`.
    fn times(&mut self) -> Result<(u64, u64, u64), Refusal> {
        let seq = self.uint("seq")?;
        let issued = self.uint("issued")?;
        let expires = self.uint("expires")?;
        if expires <= issued {
            return Err(refuse(Reason::Malformed, "expires is not after issued"));
        }
        Ok((seq, issued, expires))
    }
}

/// A message whose signature and contents verified.
#[derive(Clone, Debug)]
pub struct VerifiedMessage {
    /// The job or cancel.
    pub message: Message,
    /// The firmware signer's name (`urn:wardgate-firmware:{name}`).
    pub signer: String,
    /// The COSE_Sign1 as received (kept in the store).
    pub raw: Vec<u8>,
}

/// Checks 1–4 of the module doc: size, signature by a firmware signer trusted by `trust`, the
/// payload, the clock (`now_s`, Unix seconds).
pub fn verify(message: &[u8], trust: &Verifier, now_s: u64) -> Result<VerifiedMessage, Refusal> {
    if message.len() > MAX_JOB_BYTES {
        return Err(refuse(
            Reason::TooLarge,
            format!("{} bytes (at most {MAX_JOB_BYTES})", message.len()),
        ));
    }
    let v = trust
        .verify_signed(message)
        .map_err(|e| refuse(Reason::SignatureRefused, e.to_string()))?;
    let Identity::FirmwareSigner { name } = &v.signer else {
        return Err(refuse(
            Reason::NotAFirmwareSigner,
            format!(
                "signed by a trusted certificate of {}, which is no firmware signer \
                 (subjectAltName URI {}{{name}})",
                v.signer,
                crate::identity::FIRMWARE_URN
            ),
        ));
    };
    let m = Message::from_cbor(&v.payload)?;
    let (issued, expires) = m.validity();
    if issued > now_s.saturating_add(CLOCK_SKEW_S) {
        return Err(refuse(
            Reason::NotYetValid,
            format!(
                "issued {issued}, {} s after this clock ({now_s})",
                issued - now_s
            ),
        ));
    }
    if expires <= now_s {
        return Err(refuse(
            Reason::Expired,
            format!("expired at {expires}, this clock says {now_s}"),
        ));
    }
    Ok(VerifiedMessage {
        message: m,
        signer: name.clone(),
        raw: message.to_vec(),
    })
}

/// What an accepted message did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// A job, recorded with one `queued` execution per device (ids).
    Job {
        /// Device ids.
        devices: Vec<String>,
    },
    /// A cancel: this many unfinished executions were cancelled (0 when the job was unknown
    /// here or already finished; the `seq` is recorded anyway).
    Cancel {
        /// Executions cancelled.
        cancelled: u64,
    },
}

/// The gateway's half: targets resolved against `fleet`, then `seq` checked and the message
/// recorded in `store` in one transaction (see the module doc). `now_ms`: Unix milliseconds.
///
/// Errors: the refusal, or the store failed (nothing recorded).
pub fn accept(
    store: &Store,
    fleet: &Fleet,
    v: &VerifiedMessage,
    now_ms: i64,
) -> Result<Accepted, AcceptError> {
    match &v.message {
        Message::Job(j) => {
            let devices = fleet.resolve(&j.target.class, j.target.devices.as_deref())?;
            let row = JobRow {
                id: j.id.clone(),
                class: j.target.class.clone(),
                seq: j.seq,
                issued: j.issued,
                expires: j.expires,
                accepted_ms: now_ms,
                cancelled_ms: None,
                message: v.raw.clone(),
            };
            match store.firmware_accept_job(&row, &devices)? {
                Ok(()) => Ok(Accepted::Job { devices }),
                Err(c) => Err(conflict(c, v.message.seq(), j.target.class.as_str()).into()),
            }
        }
        Message::Cancel(c) => {
            if !fleet.has_class(&c.class) {
                return Err(refuse(
                    Reason::UnknownClass,
                    format!(
                        "class `{}` is not configured here ([firmware.classes])",
                        c.class
                    ),
                )
                .into());
            }
            match store.firmware_accept_cancel(&c.class, c.seq, &c.job, now_ms)? {
                Ok(n) => Ok(Accepted::Cancel { cancelled: n }),
                Err(k) => Err(conflict(k, c.seq, &c.class).into()),
            }
        }
    }
}

fn conflict(c: SeqConflict, seq: u64, class: &str) -> Refusal {
    match c {
        SeqConflict::Replayed { last } => refuse(
            Reason::SeqReplayed,
            format!("seq {seq} is not greater than {last}, the last accepted for class `{class}`"),
        ),
        SeqConflict::DuplicateJob => refuse(
            Reason::DuplicateJob,
            "a job with this id was already accepted",
        ),
        SeqConflict::IdReused => refuse(
            Reason::JobIdReused,
            format!(
                "another job with this id (another class or seq) was already accepted; seq {seq} \
                 of class `{class}` needs a new job id"
            ),
        ),
        SeqConflict::ClassMismatch { job_class } => refuse(
            Reason::CancelMismatch,
            format!("the cancel is for class `{class}`, the job is of class `{job_class}`"),
        ),
    }
}

/// Why [`accept`] did not accept: a refusal (goes upstream) or a store failure (retry later).
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Refused.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store failed; nothing was recorded.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_job(seq: u64, now: u64) -> Job {
        Job {
            id: format!("job-{seq}"),
            seq,
            issued: now,
            expires: now + 86_400,
            target: Target {
                class: "acme-spo2".into(),
                devices: Some(vec!["bed12".into()]),
                from_versions: Some(vec![ImageVersion::parse("1.2.2").unwrap()]),
            },
            image: JobImage {
                version: ImageVersion::parse("1.2.3+4").unwrap(),
                size: 4770,
                sha256: [1; 32],
                mcuboot_hash: [2; 32],
                keyhash: Some([3; 32]),
                index: 0,
                uri: vec!["https://fw.example/acme/1.2.3.bin".into()],
            },
            policy: Policy {
                window: Some((TimeOfDay(22 * 60), TimeOfDay(5 * 60))),
                tz: Some("Europe/Berlin".into()),
                min_battery: Some(40),
                deadline: Some(now + 3600),
                ..Policy::default()
            },
        }
    }

    fn cbor(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(v, &mut out).unwrap();
        out
    }

    fn edit(job: &Job, f: impl FnOnce(&mut Vec<(Value, Value)>)) -> Vec<u8> {
        let mut v: Value =
            ciborium::de::from_reader(&Message::Job(Box::new(job.clone())).to_cbor()[..]).unwrap();
        let Value::Map(m) = &mut v else {
            unreachable!()
        };
        f(m);
        cbor(&v)
    }

    fn reason(payload: &[u8]) -> Reason {
        Message::from_cbor(payload).unwrap_err().reason
    }

    /// A CA (as a PEM file in `dir`) and a clientAuth leaf with SAN URI `uri`, as a signer.
    fn signer(
        dir: &std::path::Path,
        uri: &str,
    ) -> (
        std::path::PathBuf,
        rustls_pki_types::CertificateDer<'static>,
        crate::signing::Signer,
    ) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        let pem = dir.join(format!("ca-{}.pem", uri.len()));
        std::fs::write(&pem, ca.pem()).unwrap();
        let s = crate::signing::Signer::new(
            cert.der(),
            &rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap()
        .with_chain(vec![cert.der().clone(), ca.der().clone()]);
        (pem, cert.der().clone(), s)
    }

    #[test]
    fn verify_checks_signer_role_size_and_clock() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _, fw) = signer(dir.path(), "urn:wardgate-firmware:release");
        let (_, gw_leaf, gw) = signer(dir.path(), "urn:wardgate:s:w:gw-1");
        let trust = Verifier::from_files([], [ca.as_path()], []).unwrap();
        let now = 1_800_000_000;
        let job = Message::Job(Box::new(sample_job(5, now)));
        let signed = fw.sign(job.to_cbor());
        let v = verify(&signed, &trust, now).unwrap();
        assert_eq!(v.message, job);
        assert_eq!(v.signer, "release");
        let why = |m: &[u8], at: u64| verify(m, &trust, at).unwrap_err().reason;
        assert_eq!(why(&signed, now + 86_400), Reason::Expired);
        assert_eq!(why(&signed, now - CLOCK_SKEW_S - 1), Reason::NotYetValid);
        assert!(
            verify(&signed, &trust, now - CLOCK_SKEW_S).is_ok(),
            "within the skew"
        );
        assert_eq!(why(&vec![0u8; MAX_JOB_BYTES + 1], now), Reason::TooLarge);
        assert_eq!(
            why(&signed[..signed.len() - 1], now),
            Reason::SignatureRefused
        );
        let mut flipped = signed.clone();
        let n = flipped.len();
        flipped[n - 1] ^= 1;
        assert_eq!(why(&flipped, now), Reason::SignatureRefused);
        // Trusted by another CA: refused. A gateway certificate listed as trusted: its signature
        // verifies, but it is no firmware signer.
        let (other_ca, _, _) = signer(dir.path(), "urn:wardgate-firmware:x");
        let other = Verifier::from_files([], [other_ca.as_path()], []).unwrap();
        assert_eq!(
            verify(&signed, &other, now).unwrap_err().reason,
            Reason::SignatureRefused
        );
        let mut listed = Verifier::default();
        let gw_signed = gw.sign(job.to_cbor());
        listed.add(&gw_leaf, "gw").unwrap();
        assert_eq!(
            verify(&gw_signed, &listed, now).unwrap_err().reason,
            Reason::NotAFirmwareSigner
        );
    }

    #[test]
    fn a_job_and_a_cancel_round_trip() {
        let j = sample_job(7, 1_800_000_000);
        let m = Message::Job(Box::new(j));
        assert_eq!(Message::from_cbor(&m.to_cbor()).unwrap(), m);
        let c = Message::Cancel(Cancel {
            job: "job-7".into(),
            seq: 8,
            issued: 1,
            expires: 2,
            class: "acme-spo2".into(),
            reason: Some("bad build".into()),
        });
        assert_eq!(Message::from_cbor(&c.to_cbor()).unwrap(), c);
        assert_eq!(m.to_json()["image"]["version"], "1.2.3+4");
        assert_eq!(m.to_json()["policy"]["window"][0], "22:00");
    }

    #[test]
    fn v_is_checked_before_anything_else() {
        let j = sample_job(1, 100);
        let p = edit(&j, |m| {
            m[0].1 = Value::from(2);
            m.push((text("junk"), Value::Null));
        });
        assert_eq!(reason(&p), Reason::UnsupportedVersion);
        let p = edit(&j, |m| {
            m.remove(0);
        });
        assert_eq!(reason(&p), Reason::UnsupportedVersion);
    }

    #[test]
    fn unknown_keys_bad_types_and_bounds_are_malformed() {
        let j = sample_job(1, 100);
        assert_eq!(
            reason(&edit(&j, |m| m.push((text("extra"), Value::from(1))))),
            Reason::Malformed
        );
        assert_eq!(
            reason(&edit(&j, |m| m[1].1 = text("a/b"))),
            Reason::Malformed,
            "job id is a topic level"
        );
        assert_eq!(
            reason(&edit(&j, |m| m[2].1 = Value::from(-1))),
            Reason::Malformed
        );
        assert_eq!(
            reason(&edit(&j, |m| m[4].1 = Value::from(100))),
            Reason::Malformed,
            "expires = issued"
        );
        let mut many = j.clone();
        many.target.devices = Some(vec!["d".into(); MAX_DEVICES + 1]);
        assert_eq!(
            reason(&Message::Job(Box::new(many)).to_cbor()),
            Reason::Malformed
        );
        let mut http = j.clone();
        http.image.uri = vec!["http://fw.example/x.bin".into()];
        assert_eq!(
            reason(&Message::Job(Box::new(http)).to_cbor()),
            Reason::Malformed
        );
        assert_eq!(reason(&[0xff, 0x00]), Reason::Malformed);
        assert_eq!(reason(&cbor(&Value::Array(vec![]))), Reason::Malformed);
        // Nested deeper than MAX_DEPTH.
        let mut deep = Value::from(1);
        for _ in 0..(MAX_DEPTH + 2) {
            deep = Value::Array(vec![deep]);
        }
        let p = edit(&j, |m| m.push((text("deep"), deep)));
        assert_eq!(reason(&p), Reason::Malformed);
        // A duplicate key.
        assert_eq!(
            reason(&edit(&j, |m| m.push((text("seq"), Value::from(9))))),
            Reason::Malformed
        );
    }

    #[test]
    fn policy_bounds_are_invalid_policy() {
        let j = sample_job(1, 100);
        let with = |f: &dyn Fn(&mut Policy)| {
            let mut j = j.clone();
            f(&mut j.policy);
            reason(&Message::Job(Box::new(j)).to_cbor())
        };
        assert_eq!(
            with(&|p| p.first_chunk_timeout_s = 39),
            Reason::InvalidPolicy
        );
        assert_eq!(with(&|p| p.min_battery = Some(101)), Reason::InvalidPolicy);
        assert_eq!(
            with(&|p| p.not_in_use = false),
            Reason::InvalidPolicy,
            "override needs a reason"
        );
        assert_eq!(with(&|p| p.max_attempts = 0), Reason::InvalidPolicy);
        assert_eq!(
            with(&|p| p.tz = Some("../etc/passwd".into())),
            Reason::InvalidPolicy
        );
        assert_eq!(
            with(&|p| p.window = Some((TimeOfDay(60), TimeOfDay(60)))),
            Reason::InvalidPolicy
        );
        assert_eq!(with(&|p| p.deadline = Some(50)), Reason::InvalidPolicy);
        let mut ok = j.clone();
        ok.policy.not_in_use = false;
        ok.policy.override_reason = Some("exploit CVE-2026-1 in the field".into());
        assert!(Message::from_cbor(&Message::Job(Box::new(ok)).to_cbor()).is_ok());
    }

    #[test]
    fn time_zones_and_times_of_day() {
        for ok in [
            "UTC",
            "+01:00",
            "-05:30",
            "Europe/Berlin",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+1",
        ] {
            assert!(check_tz(ok).is_ok(), "{ok}");
        }
        for bad in ["", "+25:00", "/etc/passwd", "Europe/../x", "Europe Berlin"] {
            assert!(check_tz(bad).is_err(), "{bad}");
        }
        assert_eq!(TimeOfDay::parse("23:59"), Some(TimeOfDay(1439)));
        for bad in ["24:00", "1:00", "12:60", "aa:bb", "12-00"] {
            assert_eq!(TimeOfDay::parse(bad), None, "{bad}");
        }
        assert_eq!(Reason::SeqReplayed.as_str(), "seq_replayed");
    }
}
