//! Declarative vendor GATT profiles, for devices without a public Bluetooth SIG profile
//! (smart inhalers, vendor trackers): a TOML description of which characteristic carries which
//! field at which byte offset, decoded without writing Rust.
//!
//! The types derive `serde::Deserialize` with `deny_unknown_fields`, so the gateway can embed
//! them in its configuration:
//!
//! ```toml
//! [[ble.vendor_profile]]
//! name = "inhaler-example"
//! service = "5e1f0000-7c3a-4b8e-9d2f-1a2b3c4d5e6f"   # 128-bit, or a 16/32-bit short form "fe50"
//!
//! [[ble.vendor_profile.characteristic]]
//! name = "actuation"                                 # optional, used in messages
//! uuid = "5e1f0001-7c3a-4b8e-9d2f-1a2b3c4d5e6f"
//! mode = "notify"                                    # notify | indicate | read
//! min_len = 7                                        # optional; default: end of the last required field
//!
//! [[ble.vendor_profile.characteristic.field]]
//! name = "doses_remaining"
//! offset = 5                                         # bytes from the start of the value
//! type = "u16"                                       # see FieldType
//! endian = "little"                                  # little (default) | big
//! scale = 1.0                                        # value = raw × scale + add (defaults 1, 0)
//! add = 0.0
//! mdc = "WARDGATE_PVT_DOSES_REMAINING"               # a number, or a name from observation::mdc::NAMES
//! unit = "count"                                     # UCUM code or alias, see parse_unit
//! kind = "measurement"                               # measurement (default) | event | time
//! optional = false                                   # may the value end before this field?
//! ```
//!
//! The shipped example is `config/profiles/inhaler-example.toml`.
//!
//! # Field types
//! `u8`, `i8`, `u16`, `i16`, `u24`, `u32`, `i32` (two's complement), `f32` (IEEE 754 binary32),
//! `sfloat`/`float` (IEEE 11073-20601 SFLOAT/FLOAT, [`crate::ble::decode::sfloat`]), and two time
//! stamps: `unix_time` (u32 seconds since 1970-01-01T00:00:00Z, device clock in UTC) and
//! `date_time` (the 7-byte Bluetooth Date Time, GSS §3.70, [`crate::ble::decode::DateTime`], device
//! local time; little-endian by definition). `endian` applies to every multi-byte type except
//! `date_time`.
//!
//! # What a value decodes to
//! - A `measurement` field → one [`Reading`] (`code` = `mdc`, `value` = raw × scale + add,
//!   `unit`, no status).
//! - An `event` field → a [`Reading`] whose `status` is `["event:<field name>"]`
//!   ([`EVENT_STATUS_PREFIX`]): the gateway stores it like any observation (code, value, the
//!   device's time stamp) and the status marks it as something that *happened* (an inhaler
//!   actuation, value = puffs) rather than a level that was *measured*. [`event_name`] reads it
//!   back.
//! - A `time` field (type `unix_time` or `date_time`, at most one per characteristic) → the
//!   `device_time` of every reading of that value (`YYYY-MM-DDThh:mm:ss`).
//! - No reading, but an [`AbsentValue`] in [`VendorFrame::absent`], for an SFLOAT/FLOAT special
//!   value (NaN, NRes, ±INF, reserved), a non-finite `f32` or result, or an incomplete date.
//!
//! # MDC codes
//! Use a standard code where one exists (`MDC_ATTR_VAL_BATT_CHARGE` for a battery %). For
//! quantities with no standard term (an inhaler's actuation and doses remaining), wardgate
//! defines codes in the IEEE 11073-10101 private partition `MDC_PART_PVT` (1024), see
//! [`mdc::PVT_INHALER_ACTUATION`]; [`mdc::is_private`] tells them apart. Do not invent codes in
//! the standard partitions.
//!
//! # Errors
//! [`VendorProfile::validate`] lists every problem in a profile with its path
//! (`inhaler-example.characteristic[0].field[2] "doses_remaining": …`). Decoding never panics,
//! even on a profile that was not validated: a bad value or a profile problem met while
//! decoding is a [`DecodeError`] with the byte offset of the field.

use super::sfloat::MedFloat;
use super::uuid::{self, Uuid};
use super::{DateTime, DecodeError};
use crate::observation::Reading;
use crate::observation::{mdc, Unit};
use serde::Deserialize;
use std::fmt;

/// Prefix of the status string that marks an event reading: `event:<field name>`.
pub const EVENT_STATUS_PREFIX: &str = "event:";

/// A vendor GATT profile: a service and the characteristics to decode.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorProfile {
    /// Profile name, unique in the configuration (e.g. `inhaler-example`).
    pub name: String,
    /// Primary service UUID: 128-bit `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, or a 16/32-bit
    /// short form on the Bluetooth Base UUID (`fe50`, `0xfe50`, `0000fe50`).
    pub service: String,
    /// Free text for installers (model, firmware, where the layout came from).
    #[serde(default)]
    pub description: Option<String>,
    /// The characteristics (`[[…characteristic]]`).
    #[serde(rename = "characteristic", default)]
    pub characteristics: Vec<VendorCharacteristic>,
}

/// One characteristic of a [`VendorProfile`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorCharacteristic {
    /// Optional name for messages (e.g. `actuation`).
    #[serde(default)]
    pub name: Option<String>,
    /// Characteristic UUID (same forms as [`VendorProfile::service`]).
    pub uuid: String,
    /// How the gateway gets values: subscribe to notifications or indications, or read.
    pub mode: CharacteristicMode,
    /// Minimum value length in bytes; every non-optional field must end within it. Default:
    /// the end of the last non-optional field.
    #[serde(default)]
    pub min_len: Option<usize>,
    /// The fields (`[[…field]]`).
    #[serde(rename = "field", default)]
    pub fields: Vec<VendorField>,
}

/// How a characteristic's values reach the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CharacteristicMode {
    /// GATT notifications (unacknowledged).
    Notify,
    /// GATT indications (acknowledged).
    Indicate,
    /// Read on connect / on a schedule.
    Read,
}

/// One field inside a characteristic value.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorField {
    /// Field name (unique in its characteristic); an event's status is `event:<name>`.
    pub name: String,
    /// Byte offset from the start of the value.
    pub offset: usize,
    /// Encoding.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Byte order of multi-byte types (default little-endian, as in Bluetooth).
    #[serde(default)]
    pub endian: Endian,
    /// Multiplier: value = raw × `scale` + `add` (default 1).
    #[serde(default = "one")]
    pub scale: f64,
    /// Offset added after scaling (default 0).
    #[serde(default)]
    pub add: f64,
    /// MDC code: a number, or a name from [`mdc::NAMES`]. Required for measurements and
    /// events; not allowed on a time field.
    #[serde(default)]
    pub mdc: Option<MdcCode>,
    /// Unit (see [`parse_unit`]). Required for measurements; events default to `1`.
    #[serde(default)]
    pub unit: Option<String>,
    /// What the field is; default `measurement`, or `time` for the time types.
    #[serde(default)]
    pub kind: Option<FieldKind>,
    /// The field may be missing from a shorter value (then it yields nothing).
    #[serde(default)]
    pub optional: bool,
}

fn one() -> f64 {
    1.0
}

/// An MDC code in a profile: the 32-bit number or a name.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum MdcCode {
    /// The 32-bit code, partition × 65536 + term.
    Code(u32),
    /// A name from [`mdc::NAMES`], e.g. `MDC_ATTR_VAL_BATT_CHARGE`.
    Name(String),
}

impl MdcCode {
    /// The numeric code.
    pub fn resolve(&self) -> Result<u32, String> {
        match self {
            MdcCode::Code(0) => Err("mdc code 0 is not a measurement code".into()),
            MdcCode::Code(c) => Ok(*c),
            MdcCode::Name(n) => mdc::by_name(n).ok_or_else(|| {
                format!(
                    "unknown mdc name {n:?} (give the number, or one of observation::mdc::NAMES)"
                )
            }),
        }
    }
}

/// Field encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Unsigned 8-bit.
    U8,
    /// Signed 8-bit.
    I8,
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 24-bit.
    U24,
    /// Unsigned 32-bit.
    U32,
    /// Signed 32-bit.
    I32,
    /// IEEE 754 binary32.
    F32,
    /// IEEE 11073-20601 SFLOAT (16-bit medical float).
    Sfloat,
    /// IEEE 11073-20601 FLOAT (32-bit medical float).
    Float,
    /// u32 seconds since the Unix epoch (UTC): a time stamp.
    UnixTime,
    /// Bluetooth Date Time, 7 bytes (GSS §3.70): a time stamp.
    DateTime,
}

impl FieldType {
    /// Size in bytes.
    pub fn size(self) -> usize {
        match self {
            FieldType::U8 | FieldType::I8 => 1,
            FieldType::U16 | FieldType::I16 | FieldType::Sfloat => 2,
            FieldType::U24 => 3,
            FieldType::U32 | FieldType::I32 | FieldType::F32 | FieldType::Float => 4,
            FieldType::UnixTime => 4,
            FieldType::DateTime => DateTime::LEN,
        }
    }

    /// Whether the type is a time stamp.
    pub fn is_time(self) -> bool {
        matches!(self, FieldType::UnixTime | FieldType::DateTime)
    }

    /// The configuration spelling.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::U8 => "u8",
            FieldType::I8 => "i8",
            FieldType::U16 => "u16",
            FieldType::I16 => "i16",
            FieldType::U24 => "u24",
            FieldType::U32 => "u32",
            FieldType::I32 => "i32",
            FieldType::F32 => "f32",
            FieldType::Sfloat => "sfloat",
            FieldType::Float => "float",
            FieldType::UnixTime => "unix_time",
            FieldType::DateTime => "date_time",
        }
    }
}

/// Byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endian {
    /// Least significant byte first (Bluetooth's order).
    #[default]
    Little,
    /// Most significant byte first.
    Big,
}

/// What a field is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    /// A measured level → a plain [`Reading`].
    Measurement,
    /// Something that happened → a [`Reading`] with status `event:<name>`.
    Event,
    /// The time stamp of the value's readings (types `unix_time`, `date_time`).
    Time,
}

/// A problem found by [`VendorProfile::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileError {
    /// Where: `profile.characteristic[i].field[j] "name"`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A value that yielded no reading, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsentValue {
    /// The field's name.
    pub field: String,
    /// The field's byte offset.
    pub offset: usize,
    /// `nan`, `nres`, `+inf`, `-inf`, `reserved` (IEEE 11073 specials), `not-finite` (an `f32`
    /// NaN/infinity or a scaled result out of range), `time-incomplete` (a Date Time with an
    /// unknown or impossible field), `time-out-of-range`.
    pub reason: &'static str,
}

/// Everything one characteristic value decodes to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VendorFrame {
    /// Measurements and events (events carry the `event:<name>` status).
    pub readings: Vec<Reading>,
    /// The value's time stamp from its time field, if it has one and it is usable.
    pub device_time: Option<String>,
    /// Fields present but without a usable value.
    pub absent: Vec<AbsentValue>,
}

/// The event name of a reading produced by an `event` field (`None` for measurements).
pub fn event_name(r: &Reading) -> Option<&str> {
    r.status
        .iter()
        .find_map(|s| s.strip_prefix(EVENT_STATUS_PREFIX))
}

/// A field with its code, unit and kind resolved.
struct Resolved {
    kind: FieldKind,
    code: u32,
    unit: Unit,
}

impl VendorField {
    fn kind(&self) -> FieldKind {
        self.kind.unwrap_or(if self.field_type.is_time() {
            FieldKind::Time
        } else {
            FieldKind::Measurement
        })
    }

    fn end(&self) -> usize {
        self.offset.saturating_add(self.field_type.size())
    }

    /// Code, unit and kind, or what is wrong with them.
    fn resolve(&self) -> Result<Resolved, String> {
        let kind = self.kind();
        match (kind, self.field_type.is_time()) {
            (FieldKind::Time, false) => {
                return Err(format!(
                    "kind \"time\" needs type \"unix_time\" or \"date_time\", not {:?}",
                    self.field_type.name()
                ))
            }
            (FieldKind::Measurement | FieldKind::Event, true) => {
                return Err(format!(
                    "type {:?} is a time stamp: its kind is \"time\"",
                    self.field_type.name()
                ))
            }
            _ => {}
        }
        if kind == FieldKind::Time {
            if self.mdc.is_some() || self.unit.is_some() {
                return Err("a time field takes no mdc or unit".into());
            }
            if self.scale != 1.0 || self.add != 0.0 {
                return Err("a time field takes no scale or add".into());
            }
            return Ok(Resolved {
                kind,
                code: 0,
                unit: Unit::DIMLESS,
            });
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return Err(format!(
                "scale {} must be a finite, non-zero number",
                self.scale
            ));
        }
        if !self.add.is_finite() {
            return Err(format!("add {} must be a finite number", self.add));
        }
        let code = self
            .mdc
            .as_ref()
            .ok_or_else(|| format!("{} needs an mdc code", kind_name(kind)))?
            .resolve()?;
        let unit = match (&self.unit, kind) {
            (Some(u), _) => parse_unit(u)?,
            (None, FieldKind::Event) => Unit::DIMLESS,
            (None, _) => return Err("a measurement needs a unit (e.g. \"%\", \"count\")".into()),
        };
        Ok(Resolved { kind, code, unit })
    }
}

fn kind_name(k: FieldKind) -> &'static str {
    match k {
        FieldKind::Measurement => "a measurement",
        FieldKind::Event => "an event",
        FieldKind::Time => "a time field",
    }
}

impl VendorCharacteristic {
    /// The declared `min_len`, or the end of the last non-optional field.
    pub fn required_len(&self) -> usize {
        self.min_len.unwrap_or_else(|| {
            self.fields
                .iter()
                .filter(|f| !f.optional)
                .map(VendorField::end)
                .max()
                .unwrap_or(0)
        })
    }

    fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("characteristic {n:?} ({})", self.uuid),
            None => format!("characteristic {}", self.uuid),
        }
    }

    /// Decodes one value of this characteristic. Never panics.
    pub fn decode_frame(&self, bytes: &[u8]) -> Result<VendorFrame, DecodeError> {
        // A required field that does not fit: report the first one, at its offset.
        let mut required: Vec<&VendorField> = self.fields.iter().filter(|f| !f.optional).collect();
        required.sort_by_key(|f| f.offset);
        for f in required {
            if f.end() > bytes.len() {
                let left = bytes.len().saturating_sub(f.offset);
                return Err(DecodeError::new(
                    f.offset.min(bytes.len()),
                    format!(
                        "{}: field {:?} ({} at offset {}): needs {} bytes, {left} left",
                        self.label(),
                        f.name,
                        f.field_type.name(),
                        f.offset,
                        f.field_type.size()
                    ),
                ));
            }
        }
        let min = self.required_len();
        if bytes.len() < min {
            return Err(DecodeError::new(
                bytes.len(),
                format!(
                    "{}: value is {} bytes, min_len is {min}",
                    self.label(),
                    bytes.len()
                ),
            ));
        }
        let mut frame = VendorFrame::default();
        let mut pending: Vec<(Resolved, f64, &VendorField)> = Vec::new();
        for f in &self.fields {
            let Some(b) = bytes.get(f.offset..f.end()) else {
                continue; // an optional field beyond the end of this value
            };
            let r = f.resolve().map_err(|m| {
                DecodeError::new(
                    f.offset,
                    format!("{}: field {:?}: profile error: {m}", self.label(), f.name),
                )
            })?;
            let absent = |reason| AbsentValue {
                field: f.name.clone(),
                offset: f.offset,
                reason,
            };
            if r.kind == FieldKind::Time {
                match time_stamp(f.field_type, f.endian, b) {
                    Ok(t) => frame.device_time = Some(t),
                    Err(reason) => frame.absent.push(absent(reason)),
                }
                continue;
            }
            match raw_value(f.field_type, f.endian, b) {
                Ok(raw) => {
                    let v = raw * f.scale + f.add;
                    if v.is_finite() {
                        pending.push((r, v, f));
                    } else {
                        frame.absent.push(absent("not-finite"));
                    }
                }
                Err(reason) => frame.absent.push(absent(reason)),
            }
        }
        for (r, value, f) in pending {
            let status = match r.kind {
                FieldKind::Event => vec![format!("{EVENT_STATUS_PREFIX}{}", f.name)],
                _ => Vec::new(),
            };
            frame.readings.push(Reading {
                code: r.code,
                value,
                unit: r.unit,
                device_time: frame.device_time.clone(),
                status,
            });
        }
        Ok(frame)
    }
}

/// Assembles `b` (exactly the type's size) in the given byte order as little-endian bytes.
fn ordered<const N: usize>(b: &[u8], endian: Endian) -> [u8; N] {
    let mut a = [0u8; N];
    for (i, x) in a.iter_mut().enumerate() {
        let j = match endian {
            Endian::Little => i,
            Endian::Big => N - 1 - i,
        };
        *x = b.get(j).copied().unwrap_or(0);
    }
    a
}

/// The raw numeric value of a non-time field, or why there is none.
fn raw_value(t: FieldType, e: Endian, b: &[u8]) -> Result<f64, &'static str> {
    let med = |m: MedFloat| m.value().ok_or(m.special_name().unwrap_or("reserved"));
    Ok(match t {
        FieldType::U8 => b.first().copied().unwrap_or(0) as f64,
        FieldType::I8 => b.first().copied().unwrap_or(0) as i8 as f64,
        FieldType::U16 => u16::from_le_bytes(ordered(b, e)) as f64,
        FieldType::I16 => i16::from_le_bytes(ordered(b, e)) as f64,
        FieldType::U24 => {
            let [x, y, z] = ordered::<3>(b, e);
            u32::from_le_bytes([x, y, z, 0]) as f64
        }
        FieldType::U32 => u32::from_le_bytes(ordered(b, e)) as f64,
        FieldType::I32 => i32::from_le_bytes(ordered(b, e)) as f64,
        FieldType::F32 => {
            let v = f32::from_le_bytes(ordered(b, e));
            if !v.is_finite() {
                return Err("not-finite");
            }
            v as f64
        }
        FieldType::Sfloat => med(MedFloat::from_sfloat(u16::from_le_bytes(ordered(b, e))))?,
        FieldType::Float => med(MedFloat::from_float(u32::from_le_bytes(ordered(b, e))))?,
        FieldType::UnixTime | FieldType::DateTime => return Err("time-incomplete"),
    })
}

/// The ISO device time of a time field, or why there is none.
fn time_stamp(t: FieldType, e: Endian, b: &[u8]) -> Result<String, &'static str> {
    match t {
        FieldType::UnixTime => {
            let secs = u32::from_le_bytes(ordered(b, e));
            DateTime::from_unix_seconds(secs as i64)
                .and_then(|d| d.to_iso())
                .ok_or("time-out-of-range")
        }
        FieldType::DateTime => DateTime::from_bytes(b).to_iso().ok_or("time-incomplete"),
        _ => Err("time-incomplete"),
    }
}

impl VendorProfile {
    /// The service UUID.
    pub fn service_uuid(&self) -> Result<Uuid, DecodeError> {
        uuid::parse(&self.service)
    }

    /// The characteristic whose UUID is `uuid` (the first, if the profile has duplicates).
    pub fn characteristic(&self, uuid: Uuid) -> Option<&VendorCharacteristic> {
        self.characteristics
            .iter()
            .find(|c| uuid::parse(&c.uuid).ok() == Some(uuid))
    }

    /// Every problem in the profile (empty `Err` never happens: `Ok` when there is none).
    /// Checks: name and service; at least one characteristic; UUIDs parse and are not
    /// repeated; each characteristic has fields with unique names, at most one time field, no
    /// two fields sharing a byte, required fields within `min_len`; each field's kind fits its
    /// type, `scale` is finite and non-zero and `add` finite, measurements and events have a
    /// known MDC code, measurements a known unit, `date_time` is not big-endian.
    pub fn validate(&self) -> Result<(), Vec<ProfileError>> {
        let mut errs = Vec::new();
        let name = if self.name.trim().is_empty() {
            "vendor_profile".to_string()
        } else {
            self.name.clone()
        };
        let mut err = |path: String, message: String| errs.push(ProfileError { path, message });
        if self.name.trim().is_empty() {
            err(name.clone(), "name is empty".into());
        }
        if let Err(e) = uuid::parse(&self.service) {
            err(format!("{name}.service"), e.to_string());
        }
        if self.characteristics.is_empty() {
            err(
                name.clone(),
                "no characteristic: add at least one [[…characteristic]]".into(),
            );
        }
        let mut seen: Vec<(Uuid, usize)> = Vec::new();
        for (ci, c) in self.characteristics.iter().enumerate() {
            let cpath = format!("{name}.characteristic[{ci}]");
            match uuid::parse(&c.uuid) {
                Ok(u) => {
                    if let Some((_, first)) = seen.iter().find(|(x, _)| *x == u) {
                        err(
                            cpath.clone(),
                            format!(
                                "duplicate characteristic UUID {u} (also characteristic[{first}])"
                            ),
                        );
                    } else {
                        seen.push((u, ci));
                    }
                }
                Err(e) => err(format!("{cpath}.uuid"), e.to_string()),
            }
            if c.fields.is_empty() {
                err(
                    cpath.clone(),
                    "no field: add at least one [[…field]]".into(),
                );
            }
            let times = c
                .fields
                .iter()
                .filter(|f| f.kind() == FieldKind::Time)
                .count();
            if times > 1 {
                err(
                    cpath.clone(),
                    format!("{times} time fields; at most one time stamp per characteristic"),
                );
            }
            for (fi, f) in c.fields.iter().enumerate() {
                let fpath = format!("{cpath}.field[{fi}] {:?}", f.name);
                if f.name.trim().is_empty() {
                    err(fpath.clone(), "name is empty".into());
                }
                if c.fields[..fi].iter().any(|g| g.name == f.name) {
                    err(fpath.clone(), "duplicate field name".into());
                }
                if let Err(m) = f.resolve() {
                    err(fpath.clone(), m);
                }
                if f.field_type == FieldType::DateTime && f.endian == Endian::Big {
                    err(
                        fpath.clone(),
                        "date_time has a fixed little-endian layout; remove endian".into(),
                    );
                }
                if let Some(g) = c.fields[..fi]
                    .iter()
                    .find(|g| g.offset < f.end() && f.offset < g.end())
                {
                    err(
                        fpath.clone(),
                        format!(
                            "bytes {}..{} overlap field {:?} (bytes {}..{})",
                            f.offset,
                            f.end(),
                            g.name,
                            g.offset,
                            g.end()
                        ),
                    );
                }
                if let Some(min) = c.min_len {
                    if !f.optional && f.end() > min {
                        err(
                            fpath.clone(),
                            format!(
                                "ends at byte {} past min_len {min}: raise min_len or mark the \
                                 field optional = true",
                                f.end()
                            ),
                        );
                    }
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// Decodes one value of characteristic `uuid` into readings (see the module
    /// documentation). Errors: a characteristic not in the profile (offset 0), a value too
    /// short for a required field (that field's offset) or for `min_len`. Never panics.
    pub fn decode(&self, uuid: Uuid, bytes: &[u8]) -> Result<Vec<Reading>, DecodeError> {
        self.decode_frame(uuid, bytes).map(|f| f.readings)
    }

    /// [`VendorProfile::decode`] with the time stamp and the absent values.
    pub fn decode_frame(&self, uuid: Uuid, bytes: &[u8]) -> Result<VendorFrame, DecodeError> {
        self.characteristic(uuid)
            .ok_or_else(|| {
                DecodeError::new(
                    0,
                    format!(
                        "characteristic {uuid} is not in vendor profile {:?}",
                        self.name
                    ),
                )
            })?
            .decode_frame(bytes)
    }
}

/// A unit by UCUM code or alias: `%`/`percent`; `1`/`count`/`dimensionless`;
/// `{beat}/min`/`bpm`; `{breath}/min`; `mm[Hg]`/`mmHg`; `kPa`; `Cel`/`degC`; `[degF]`/`degF`;
/// `kg`; `[lb_av]`/`lb`; `mg/dL`; `mmol/L`; `cm`; `[in_i]`/`in`; `kg/m2`; `ms`. A bare `/min`
/// is refused as ambiguous (beats or breaths).
pub fn parse_unit(name: &str) -> Result<Unit, String> {
    Ok(match name {
        "%" | "percent" => Unit::PERCENT,
        "1" | "count" | "dimensionless" => Unit::DIMLESS,
        "{beat}/min" | "bpm" | "beats/min" => Unit::BEAT_PER_MIN,
        "{breath}/min" | "breaths/min" => Unit::RESP_PER_MIN,
        "mm[Hg]" | "mmHg" => Unit::MMHG,
        "kPa" => Unit::KILO_PASCAL,
        "Cel" | "degC" => Unit::DEGC,
        "[degF]" | "degF" => Unit::FAHR,
        "kg" => Unit::KILO_G,
        "[lb_av]" | "lb" => Unit::LB,
        "mg/dL" => Unit::MILLI_G_PER_DL,
        "mmol/L" => Unit::MILLI_MOLE_PER_L,
        "cm" => Unit::CENTI_M,
        "[in_i]" | "in" => Unit::INCH,
        "kg/m2" => Unit::KG_PER_M_SQ,
        "ms" => Unit::MILLI_SEC,
        "mV" => Unit::MILLI_VOLT,
        "/min" => {
            return Err(
                "unit \"/min\" is ambiguous: write \"{beat}/min\" or \"{breath}/min\"".into(),
            )
        }
        other => return Err(format!("unknown unit {other:?} (see vendor::parse_unit)")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::decode::test_util::*;

    /// The shipped example (`config/profiles/inhaler-example.toml`).
    const EXAMPLE: &str = include_str!("../../../../config/profiles/inhaler-example.toml");

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        ble: Ble,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ble {
        vendor_profile: Vec<VendorProfile>,
    }

    fn example() -> VendorProfile {
        let mut c: Config = toml::from_str(EXAMPLE).unwrap();
        c.ble.vendor_profile.remove(0)
    }

    /// One profile from a TOML snippet in the `[[ble.vendor_profile]]` shape.
    fn profile(toml_text: &str) -> VendorProfile {
        let mut c: Config = toml::from_str(toml_text).unwrap();
        c.ble.vendor_profile.remove(0)
    }

    fn uuid(s: &str) -> Uuid {
        uuid::parse(s).unwrap()
    }

    /// SYNTHETIC simulated inhaler: payloads built to the example profile's layout, not
    /// recorded from any device (no real inhaler recording exists in `data/real/`).
    mod sim_inhaler {
        /// Actuation notification: time u32 LE (Unix s) | puffs u8 | doses remaining u16 LE.
        pub fn actuation(unix_s: u32, puffs: u8, doses_remaining: u16) -> Vec<u8> {
            let mut v = unix_s.to_le_bytes().to_vec();
            v.push(puffs);
            v.extend(doses_remaining.to_le_bytes());
            v
        }
        /// Battery read: one byte, %.
        pub fn battery(percent: u8) -> Vec<u8> {
            vec![percent]
        }
    }

    const ACTUATION: &str = "5e1f0001-7c3a-4b8e-9d2f-1a2b3c4d5e6f";
    const BATTERY: &str = "5e1f0002-7c3a-4b8e-9d2f-1a2b3c4d5e6f";

    #[test]
    fn example_profile_is_valid_and_decodes_the_simulated_inhaler() {
        let p = example();
        p.validate().unwrap();
        assert_eq!(p.name, "inhaler-example");
        assert_eq!(
            p.service_uuid().unwrap(),
            uuid("5e1f0000-7c3a-4b8e-9d2f-1a2b3c4d5e6f")
        );
        // 2026-03-01T08:30:00Z = 1772353800, one puff, 117 doses left (SYNTHETIC).
        let f = p
            .decode_frame(
                uuid(ACTUATION),
                &sim_inhaler::actuation(1_772_353_800, 1, 117),
            )
            .unwrap();
        assert_eq!(f.device_time.as_deref(), Some("2026-03-01T08:30:00"));
        assert!(f.absent.is_empty());
        let [event, doses] = f.readings.as_slice() else {
            panic!("{:?}", f.readings)
        };
        assert_eq!(
            (event.code, event.value, event.unit),
            (mdc::PVT_INHALER_ACTUATION, 1.0, Unit::DIMLESS)
        );
        assert_eq!(event_name(event), Some("actuation"));
        assert_eq!(event.device_time.as_deref(), Some("2026-03-01T08:30:00"));
        assert!(mdc::is_private(event.code));
        assert_eq!((doses.code, doses.value), (mdc::PVT_DOSES_REMAINING, 117.0));
        assert_eq!(event_name(doses), None);
        assert!(doses.status.is_empty());
        let b = p.decode(uuid(BATTERY), &sim_inhaler::battery(83)).unwrap();
        assert_eq!(
            (b[0].code, b[0].value, b[0].unit, b[0].device_time.clone()),
            (mdc::BATTERY_CHARGE, 83.0, Unit::PERCENT, None)
        );
        // Truncated actuation: the error names the missing field at its offset.
        let e = p
            .decode(uuid(ACTUATION), &sim_inhaler::actuation(1, 1, 1)[..6])
            .unwrap_err();
        assert_eq!(e.offset, 5);
        assert!(e.message.contains("doses_remaining"), "{e}");
        // Unknown characteristic.
        let e = p.decode(uuid::sig16(0x2A37), &[0, 60]).unwrap_err();
        assert!(
            e.message.contains("00002a37-0000-1000-8000-00805f9b34fb"),
            "{e}"
        );
        // Modes as configured.
        assert_eq!(p.characteristics[0].mode, CharacteristicMode::Notify);
        assert_eq!(p.characteristics[1].mode, CharacteristicMode::Read);
    }

    #[test]
    fn all_types_scale_add_endian() {
        let p = profile(
            r#"
            [[ble.vendor_profile]]
            name = "types"
            service = "fe50"
            [[ble.vendor_profile.characteristic]]
            uuid = "0x2b00"
            mode = "indicate"
            [[ble.vendor_profile.characteristic.field]]
            name = "a"
            offset = 0
            type = "i8"
            mdc = 188508
            unit = "Cel"
            [[ble.vendor_profile.characteristic.field]]
            name = "b"
            offset = 1
            type = "u16"
            endian = "big"
            scale = 0.1
            add = -10.0
            mdc = "MDC_TEMP_BODY"
            unit = "degC"
            [[ble.vendor_profile.characteristic.field]]
            name = "c"
            offset = 3
            type = "i16"
            mdc = 1
            unit = "1"
            [[ble.vendor_profile.characteristic.field]]
            name = "d"
            offset = 5
            type = "u24"
            mdc = 2
            unit = "1"
            [[ble.vendor_profile.characteristic.field]]
            name = "e"
            offset = 8
            type = "u32"
            endian = "big"
            mdc = 3
            unit = "1"
            [[ble.vendor_profile.characteristic.field]]
            name = "f"
            offset = 12
            type = "i32"
            mdc = 4
            unit = "1"
            [[ble.vendor_profile.characteristic.field]]
            name = "g"
            offset = 16
            type = "f32"
            mdc = 5
            unit = "kg"
            [[ble.vendor_profile.characteristic.field]]
            name = "h"
            offset = 20
            type = "sfloat"
            mdc = "MDC_PULS_OXIM_SAT_O2"
            unit = "%"
            [[ble.vendor_profile.characteristic.field]]
            name = "i"
            offset = 22
            type = "float"
            mdc = "MDC_TEMP_BODY"
            unit = "Cel"
            [[ble.vendor_profile.characteristic.field]]
            name = "j"
            offset = 26
            type = "u8"
            optional = true
            mdc = 6
            unit = "count"
            "#,
        );
        p.validate().unwrap();
        let mut v = vec![0xF6]; // i8 −10
        v.extend([0x01, 0x77]); // u16 BE 375 → 37.5 − 10 = 27.5
        v.extend((-2i16).to_le_bytes());
        v.extend([0x01, 0x02, 0x03]); // u24 0x030201
        v.extend(0xDEAD_BEEFu32.to_be_bytes());
        v.extend((-5i32).to_le_bytes());
        v.extend(72.5f32.to_le_bytes());
        v.extend([0x62, 0x00]); // SFLOAT 98
        v.extend([0x72, 0x01, 0x00, 0xFF]); // FLOAT 370 × 10⁻¹ = 37.0
        let u = uuid::sig16(0x2B00);
        let r = p.decode(u, &v).unwrap();
        let values: Vec<f64> = r.iter().map(|r| r.value).collect();
        assert_eq!(
            values,
            [
                -10.0,
                27.5,
                -2.0,
                197_121.0,
                3_735_928_559.0,
                -5.0,
                72.5,
                98.0,
                37.0
            ]
        );
        assert_eq!(r[1].code, mdc::TEMP_BODY);
        assert_eq!(r[7].unit, Unit::PERCENT);
        // With the optional byte present.
        v.push(4);
        assert_eq!(p.decode(u, &v).unwrap().last().unwrap().value, 4.0);
        // Special values: no reading, an absent value each.
        let mut s = v.clone();
        s[20..22].copy_from_slice(&[0xFF, 0x07]); // SFLOAT NaN
        s[22..26].copy_from_slice(&[0x00, 0x00, 0x80, 0x00]); // FLOAT NRes
        s[16..20].copy_from_slice(&f32::INFINITY.to_le_bytes());
        let f = p.decode_frame(u, &s).unwrap();
        assert_eq!(f.readings.len(), 7);
        let reasons: Vec<(&str, &str)> = f
            .absent
            .iter()
            .map(|a| (a.field.as_str(), a.reason))
            .collect();
        assert_eq!(reasons, [("g", "not-finite"), ("h", "nan"), ("i", "nres")]);
    }

    #[test]
    fn date_time_field_and_incomplete_time() {
        let p = profile(
            r#"
            [[ble.vendor_profile]]
            name = "dt"
            service = "0000fe50"
            [[ble.vendor_profile.characteristic]]
            uuid = "2a99"
            mode = "notify"
            [[ble.vendor_profile.characteristic.field]]
            name = "when"
            offset = 0
            type = "date_time"
            [[ble.vendor_profile.characteristic.field]]
            name = "button"
            offset = 7
            type = "u8"
            kind = "event"
            mdc = 67108867
            "#,
        );
        p.validate().unwrap();
        let u = uuid::sig16(0x2A99);
        let mut v = hex("e20704110f3300"); // 2018-04-17T15:51:00 (C-30)
        v.push(1);
        let r = p.decode(u, &v).unwrap();
        assert_eq!(r[0].device_time.as_deref(), Some("2018-04-17T15:51:00"));
        assert_eq!(r[0].status, ["event:button"]);
        assert_eq!(r[0].unit, Unit::DIMLESS);
        let mut v = hex("00000000121a20"); // date unknown (C-31)
        v.push(1);
        let f = p.decode_frame(u, &v).unwrap();
        assert_eq!(f.device_time, None);
        assert_eq!(f.absent[0].reason, "time-incomplete");
        assert_eq!(f.readings.len(), 1);
    }

    #[test]
    fn validation_lists_every_problem() {
        let p = profile(
            r#"
            [[ble.vendor_profile]]
            name = "bad"
            service = "not-a-uuid"
            [[ble.vendor_profile.characteristic]]
            uuid = "2a00"
            mode = "notify"
            min_len = 2
            [[ble.vendor_profile.characteristic.field]]
            name = "x"
            offset = 1
            type = "u16"
            mdc = 1
            unit = "furlongs"
            [[ble.vendor_profile.characteristic.field]]
            name = "x"
            offset = 2
            type = "u8"
            scale = nan
            mdc = "MDC_NOT_A_THING"
            unit = "%"
            [[ble.vendor_profile.characteristic.field]]
            name = "t"
            offset = 3
            type = "unix_time"
            unit = "%"
            [[ble.vendor_profile.characteristic.field]]
            name = "t2"
            offset = 7
            type = "date_time"
            endian = "big"
            [[ble.vendor_profile.characteristic.field]]
            name = "m"
            offset = 20
            type = "u8"
            kind = "time"
            [[ble.vendor_profile.characteristic.field]]
            name = "nomdc"
            offset = 21
            type = "u8"
            optional = true
            kind = "event"
            [[ble.vendor_profile.characteristic.field]]
            name = "permin"
            offset = 22
            type = "u8"
            optional = true
            mdc = 5
            unit = "/min"
            [[ble.vendor_profile.characteristic]]
            uuid = "00002A00-0000-1000-8000-00805F9B34FB"
            mode = "read"
            "#,
        );
        let errs = p.validate().unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let has = |needle: &str| {
            assert!(
                text.iter().any(|t| t.contains(needle)),
                "missing {needle:?} in {text:#?}"
            )
        };
        has("bad.service: byte offset 0: UUID");
        has("unknown unit \"furlongs\"");
        has("ends at byte 3 past min_len 2");
        has("duplicate field name");
        has("scale NaN must be a finite, non-zero number");
        has("overlap field \"x\"");
        has("a time field takes no mdc or unit");
        has("date_time has a fixed little-endian layout");
        has("3 time fields");
        has("kind \"time\" needs type");
        has("an event needs an mdc code");
        has("\"/min\" is ambiguous");
        has("bad.characteristic[1]: duplicate characteristic UUID 00002a00-0000-1000-8000-00805f9b34fb (also characteristic[0])");
        has("bad.characteristic[1]: no field");
        // Unknown keys are refused by serde (deny_unknown_fields).
        let e = toml::from_str::<Config>(
            "[[ble.vendor_profile]]\nname = \"x\"\nservice = \"fe50\"\nservic = 1\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("servic"), "{e}");
        // Decoding with an invalid profile still never panics: a profile error at the field.
        let e = p.decode(uuid::sig16(0x2A00), &[0; 30]).unwrap_err();
        assert!(e.message.contains("profile error"), "{e}");
    }

    #[test]
    fn uuids() {
        // The parser itself is tested in `decode::uuid`; here: the forms a profile uses.
        assert_eq!(
            uuid("fe50").as_u128(),
            0x0000_FE50_0000_1000_8000_0080_5F9B_34FB
        );
        assert_eq!(uuid("0xFE50"), uuid("0000fe50-0000-1000-8000-00805f9b34fb"));
        assert_eq!(uuid(" 0000FE50 "), uuid::sig16(0xFE50));
        assert_eq!(
            uuid("12345678").as_u128(),
            0x1234_5678_0000_1000_8000_0080_5F9B_34FB
        );
    }

    #[test]
    fn decoders_never_panic() {
        let p = example();
        let (a, b) = (uuid(ACTUATION), uuid(BATTERY));
        never_panics(0x1A4, &["00000000017500"], |bytes| {
            (p.decode_frame(a, bytes), p.decode_frame(b, bytes))
        });
        never_panics(0x1A5, &["66653530"], |bytes| {
            uuid::parse(&String::from_utf8_lossy(bytes))
        });
        // Random profiles (any type, offset, endian, scale) on random values.
        let mut rng = fastrand::Rng::with_seed(0x7E4D);
        let types = [
            "u8",
            "i8",
            "u16",
            "i16",
            "u24",
            "u32",
            "i32",
            "f32",
            "sfloat",
            "float",
            "unix_time",
            "date_time",
        ];
        for _ in 0..300 {
            let mut t = String::from(
                "[[ble.vendor_profile]]\nname = \"r\"\nservice = \"fe50\"\n\
                 [[ble.vendor_profile.characteristic]]\nuuid = \"2a00\"\nmode = \"notify\"\n",
            );
            if rng.bool() {
                t += &format!("min_len = {}\n", rng.usize(0..40));
            }
            for i in 0..rng.usize(0..6) {
                let ty = types[rng.usize(..types.len())];
                let scale = [1.0, 0.0, -1e308, 1e-300, 2.5][rng.usize(0..5)];
                t += &format!(
                    "[[ble.vendor_profile.characteristic.field]]\nname = \"f{i}\"\n\
                     offset = {}\ntype = \"{ty}\"\nendian = \"{}\"\nscale = {scale:e}\n\
                     optional = {}\n",
                    rng.usize(0..40),
                    if rng.bool() { "big" } else { "little" },
                    rng.bool(),
                );
                if !ty.ends_with("time") {
                    t += "mdc = 1\nunit = \"1\"\n";
                    if rng.bool() {
                        t += "kind = \"event\"\n";
                    }
                }
            }
            let p = profile(&t);
            let _ = p.validate();
            for _ in 0..20 {
                let len = rng.usize(0..48);
                let buf: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                if let Ok(f) = p.decode_frame(uuid::sig16(0x2A00), &buf) {
                    assert!(f.readings.iter().all(|r| r.value.is_finite()));
                }
            }
        }
    }
}
