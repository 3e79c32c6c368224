//! Pure BLE decoders: bytes in, [`Reading`](crate::observation::Reading)s (or typed structs) out. Nothing here does I/O —
//! no tokio, btleplug or D-Bus, and nothing from the BLE I/O (`ble/central/`); time is passed in as
//! `Instant`s. `wardgate decode` and the simulators use the same functions as the adapter.
//!
//! | module | what | specification |
//! |---|---|---|
//! | [`sfloat`] | IEEE 11073-20601 SFLOAT (16-bit) and FLOAT (32-bit) | IEEE 11073-20601 §F.8; Bluetooth GATT Specification Supplement (GSS) §2.2 "medfloat16/medfloat32"; HL7 PHD FLOATS.md (PROTOCOLS.md §C.1) |
//! | [`uuid`] | the one BLE UUID type ([`Uuid`]), its parser (128-bit, 16/32-bit short forms) and the SIG 16-bit ↔ Base UUID conversion | Bluetooth Core Specification Vol 3 Part B §2.5.1 (Base UUID) |
//! | [`profiles`] | Heart Rate, Blood Pressure, Health Thermometer, Pulse Oximeter, Weight Scale, Glucose, Battery | GSS §3 characteristic definitions and the profile/service specifications cited per module (PROTOCOLS.md §C.2) |
//! | [`advertisement`] | AD structures, iBeacon, Eddystone, BTHome v2 (plain, or encrypted with a key: [`advertisement::bthome_crypto`]), vendor frames seen in `data/real/ble/` | Bluetooth Core Specification Supplement (CSS) Part A; PROTOCOLS.md §D; <https://bthome.io> |
//! | [`vendor`] | declarative vendor GATT profiles (TOML, serde): fields by offset/type/endian/scale, MDC code and unit, measurements, events (`event:<name>` status) and a device time stamp | GSS §2.2, §3.70 (medfloat, Date Time); IEEE 11073-10101 private partition (`MDC_PART_PVT`) for codes with no standard term |
//! | [`presence`] | asset-tag presence: one summary (count, RSSI min/median/max) per tag and window instead of every advertisement; bounded tags (LRU eviction) and samples (exact RSSI histogram) | BLE RSSI range: Core Specification Vol 4 Part E §7.7.65.2 (HCI LE Advertising Report, RSSI −127..+20 dBm, 127 = not available); PROTOCOLS.md §D.4 |
//!
//! This module itself holds the shared helpers: [`DecodeError`], the bounds-checked reader,
//! the GATT [`DateTime`] (0x2A08) and [`CurrentTime`] (0x2A2B) characteristics.
//!
//! Contract (the crate's): decoders never panic on any input (property-tested); a malformed
//! payload yields a [`DecodeError`] with the byte offset where it went wrong. An IEEE 11073
//! special value (NaN, NRes, ±INF, reserved) is never turned into a number: the typed structs
//! keep it as a [`sfloat::MedFloat`] status, and the `decode` functions emit no [`Reading`](crate::observation::Reading) for it.

pub mod advertisement;
pub mod presence;
pub mod profiles;
pub mod sfloat;
pub mod uuid;
pub mod vendor;

pub use self::uuid::Uuid;
pub use profiles::Profile;

use std::fmt;

/// A payload that does not decode: where (byte offset from the start of the payload) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("byte offset {offset}: {message}")]
pub struct DecodeError {
    /// Byte offset in the payload where the problem was found (for a truncated field, the
    /// offset where the field should have started).
    pub offset: usize,
    /// What was wrong, e.g. `RR-interval: needs 2 bytes, 1 left`.
    pub message: String,
}

impl DecodeError {
    /// An error at `offset`.
    pub fn new(offset: usize, message: impl Into<String>) -> Self {
        DecodeError {
            offset,
            message: message.into(),
        }
    }
}

/// A bounds-checked little-endian cursor over a payload. Every read returns a
/// [`DecodeError`] naming the field instead of panicking.
#[derive(Clone, Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }
    /// Current offset.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }
    pub(crate) fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], DecodeError> {
        let left = self.remaining();
        if left < n {
            return Err(DecodeError::new(
                self.pos,
                format!(
                    "{field}: needs {n} byte{}, {left} left",
                    if n == 1 { "" } else { "s" }
                ),
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub(crate) fn u8(&mut self, field: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }
    pub(crate) fn u16(&mut self, field: &str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub(crate) fn i16(&mut self, field: &str) -> Result<i16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(i16::from_le_bytes([b[0], b[1]]))
    }
    pub(crate) fn u24(&mut self, field: &str) -> Result<u32, DecodeError> {
        let b = self.take(3, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }
    pub(crate) fn u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn sfloat(&mut self, field: &str) -> Result<sfloat::MedFloat, DecodeError> {
        Ok(sfloat::MedFloat::from_sfloat(self.u16(field)?))
    }
    pub(crate) fn float(&mut self, field: &str) -> Result<sfloat::MedFloat, DecodeError> {
        Ok(sfloat::MedFloat::from_float(self.u32(field)?))
    }
    pub(crate) fn date_time(&mut self, field: &str) -> Result<DateTime, DecodeError> {
        let b = self.take(DateTime::LEN, field)?;
        Ok(DateTime::from_bytes(b))
    }
    /// The rest of the payload.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.bytes[self.pos.min(self.bytes.len())..];
        self.pos = self.bytes.len();
        s
    }
}

/// Bluetooth "Date Time" (characteristic 0x2A08, GSS §3.70), 7 bytes: year u16 LE
/// (1582–9999, 0 = unknown), month (1–12, 0 = unknown), day (1–31, 0 = unknown), hours (0–23),
/// minutes (0–59), seconds (0–59). Device local time, no offset. PROTOCOLS.md §C.2, vectors
/// C-30/C-31.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    /// Year, 0 = unknown.
    pub year: u16,
    /// Month 1–12, 0 = unknown.
    pub month: u8,
    /// Day of month 1–31, 0 = unknown.
    pub day: u8,
    /// Hours 0–23.
    pub hours: u8,
    /// Minutes 0–59.
    pub minutes: u8,
    /// Seconds 0–59.
    pub seconds: u8,
}

impl DateTime {
    /// Encoded size in bytes.
    pub const LEN: usize = 7;

    /// Decodes 7 bytes (the caller guarantees the length; shorter input reads as zeros).
    pub fn from_bytes(b: &[u8]) -> DateTime {
        let g = |i: usize| b.get(i).copied().unwrap_or(0);
        DateTime {
            year: u16::from_le_bytes([g(0), g(1)]),
            month: g(2),
            day: g(3),
            hours: g(4),
            minutes: g(5),
            seconds: g(6),
        }
    }

    /// Parses a 0x2A08 Date Time payload (exactly 7 bytes).
    pub fn parse(bytes: &[u8]) -> Result<DateTime, DecodeError> {
        let mut r = Reader::new(bytes);
        let t = r.date_time("Date Time")?;
        if r.remaining() > 0 {
            return Err(DecodeError::new(r.pos(), "Date Time: trailing bytes"));
        }
        Ok(t)
    }

    /// Whether every field is known and in range (year 1582–9999, a real calendar day).
    pub fn is_complete(&self) -> bool {
        (1582..=9999).contains(&self.year)
            && (1..=12).contains(&self.month)
            && self.day >= 1
            && self.day <= days_in_month(self.year, self.month)
            && self.hours <= 23
            && self.minutes <= 59
            && self.seconds <= 59
    }

    /// `YYYY-MM-DDThh:mm:ss` (the [`Reading::device_time`](crate::observation::Reading::device_time) format) when [`is_complete`]
    /// (a time stamp with an unknown year, month or day, or out-of-range fields, is not a
    /// usable device time: `None`).
    ///
    /// [`is_complete`]: DateTime::is_complete
    pub fn to_iso(&self) -> Option<String> {
        self.is_complete().then(|| {
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                self.year, self.month, self.day, self.hours, self.minutes, self.seconds
            )
        })
    }

    /// The UTC calendar time of `secs` seconds since the Unix epoch (1970-01-01T00:00:00Z);
    /// `None` outside years 1582–9999. A device clock counting Unix seconds gives UTC, so
    /// the result is UTC, not device local time.
    pub fn from_unix_seconds(secs: i64) -> Option<DateTime> {
        Self::from_day_and_second(secs.div_euclid(86_400), secs.rem_euclid(86_400))
    }

    /// The time `second` (0..86,400) into day `day` counted from 1970-01-01; `None` outside
    /// years 1582–9999.
    fn from_day_and_second(day: i64, second: i64) -> Option<DateTime> {
        let (y, m, d) = civil_from_days(day);
        let t = DateTime {
            year: u16::try_from(y).ok()?,
            month: m as u8,
            day: d as u8,
            hours: (second / 3600) as u8,
            minutes: (second % 3600 / 60) as u8,
            seconds: (second % 60) as u8,
        };
        t.is_complete().then_some(t)
    }

    /// This time shifted by `minutes` (may be negative), across day, month and year
    /// boundaries; `None` unless [`DateTime::is_complete`] and the result stays in 1582–9999.
    pub fn add_minutes(&self, minutes: i32) -> Option<DateTime> {
        if !self.is_complete() {
            return None;
        }
        let days = days_from_civil(self.year as i64, self.month as i64, self.day as i64);
        let total = days * 1440 + self.hours as i64 * 60 + self.minutes as i64 + minutes as i64;
        Self::from_day_and_second(
            total.div_euclid(1440),
            total.rem_euclid(1440) * 60 + self.seconds as i64,
        )
    }
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hours, self.minutes, self.seconds
        )
    }
}

/// Bluetooth "Current Time" (characteristic 0x2A2B, Current Time service 0x1805), 10 bytes:
/// Date Time (7) | day of week u8 (1 = Monday … 7 = Sunday, 0 = unknown) | Fractions256 u8
/// (1/256 s) | adjust reason u8 (bit0 manual, bit1 external reference, bit2 time-zone change,
/// bit3 DST change). PROTOCOLS.md §C.2, vector C-33. A gateway reads it to judge a device
/// clock before trusting its time stamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CurrentTime {
    /// Date and time.
    pub date_time: DateTime,
    /// Day of week, 1 = Monday … 7 = Sunday, 0 = unknown (not cross-checked with the date).
    pub day_of_week: u8,
    /// Fractions of a second, 1/256 s.
    pub fractions256: u8,
    /// Adjust-reason bits.
    pub adjust_reason: u8,
}

impl CurrentTime {
    /// Parses a Current Time value (10 bytes; longer values are cut to 10).
    pub fn parse(bytes: &[u8]) -> Result<CurrentTime, DecodeError> {
        let mut r = Reader::new(bytes);
        Ok(CurrentTime {
            date_time: r.date_time("date time")?,
            day_of_week: r.u8("day of week")?,
            fractions256: r.u8("fractions256")?,
            adjust_reason: r.u8("adjust reason")?,
        })
    }
    /// Names of the adjust-reason bits: `manual`, `external-reference`, `time-zone-change`,
    /// `dst-change`.
    pub fn adjust_reasons(&self) -> Vec<String> {
        bit_names(
            self.adjust_reason as u32,
            &[
                Some("manual"),
                Some("external-reference"),
                Some("time-zone-change"),
                Some("dst-change"),
            ],
        )
    }
}

fn is_leap(y: u16) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: u16, m: u8) -> u8 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (March-based era arithmetic).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

/// Status strings for the set bits of `value`: `names[i]` names bit `i`; `None` entries
/// (reserved bits) are skipped.
pub(crate) fn bit_names(value: u32, names: &[Option<&'static str>]) -> Vec<String> {
    names
        .iter()
        .enumerate()
        .filter(|(i, n)| n.is_some() && value & (1u32 << i) != 0)
        .filter_map(|(_, n)| n.map(str::to_string))
        .collect()
}

#[cfg(test)]
pub(crate) mod test_util {
    /// A property-test seed from a SIG UUID (its 16-bit number).
    pub fn seed(u: super::Uuid) -> u64 {
        super::uuid::to_sig16(u).unwrap_or(0) as u64
    }

    /// Hex to bytes for tests (panics on bad hex: test inputs only).
    pub fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Runs `f` on a few thousand random buffers of length 0..64 (and on every prefix of
    /// `seeds`); the property is simply that it returns.
    pub fn never_panics<T>(seed: u64, seeds: &[&str], f: impl Fn(&[u8]) -> T) {
        let mut rng = fastrand::Rng::with_seed(seed);
        for s in seeds {
            let b = hex(s);
            for n in 0..=b.len() {
                let _ = f(&b[..n]);
            }
        }
        for _ in 0..4000 {
            let len = rng.usize(0..64);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            // Bias the flags byte towards "everything present" half the time.
            if rng.bool() {
                if let Some(b) = buf.first_mut() {
                    *b |= rng.u8(..);
                }
            }
            let _ = f(&buf);
        }
    }

    /// The path of a file in the repository's `data/real/ble/`.
    pub fn real_ble(name: &str) -> String {
        format!("{}/../data/real/ble/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    /// Rows of a capture CSV as maps column → value (quoted fields with commas handled).
    pub fn csv_rows(name: &str) -> Vec<std::collections::HashMap<String, String>> {
        let text = std::fs::read_to_string(real_ble(name)).unwrap();
        let mut lines = text.lines();
        let header: Vec<String> = split_csv(lines.next().unwrap());
        lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| header.iter().cloned().zip(split_csv(l)).collect())
            .collect()
    }

    fn split_csv(line: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        for c in line.chars() {
            match c {
                '"' => quoted = !quoted,
                ',' if !quoted => out.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        out.push(cur);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn date_time_vectors_c30_c31() {
        // C-30
        let t = DateTime::parse(&hex("e20704110f3300")).unwrap();
        assert_eq!(t.to_iso().as_deref(), Some("2018-04-17T15:51:00"));
        // C-31: date unknown → no device time, but the clock fields are kept.
        let t = DateTime::parse(&hex("00000000121a20")).unwrap();
        assert_eq!((t.year, t.month, t.day), (0, 0, 0));
        assert_eq!((t.hours, t.minutes, t.seconds), (18, 26, 32));
        assert_eq!(t.to_iso(), None);
        assert!(DateTime::parse(&hex("e20704110f33")).is_err());
    }

    #[test]
    fn c33_current_time() {
        let c = CurrentTime::parse(&hex("e9070c1f173b3b07ff06")).unwrap();
        assert_eq!(c.date_time.to_iso().as_deref(), Some("2025-12-31T23:59:59"));
        assert_eq!((c.day_of_week, c.fractions256), (7, 255));
        assert_eq!(
            c.adjust_reasons(),
            ["external-reference", "time-zone-change"]
        );
        assert!(CurrentTime::parse(&hex("e9070c1f173b3b07ff")).is_err());
    }

    /// PROTOCOLS.md E-01..E-03: 32-bit code = partition × 65536 + term.
    #[test]
    fn e01_e03_mdc_arithmetic() {
        use crate::observation::{mdc, Unit};
        assert_eq!(mdc::SPO2, 2 * 65_536 + 19_384);
        assert_eq!(Unit::MMHG.mdc, 4 * 65_536 + 3_872);
        assert_eq!(Unit::MMHG.ucum, "mm[Hg]");
        assert_eq!(mdc::BODY_WEIGHT, 2 * 65_536 + 57_664);
        assert_eq!(Unit::KILO_G.mdc, 263_875);
        assert_eq!(mdc::RR_INTERVAL, 2 * 65_536 + 16_168);
        assert_eq!(Unit::MILLI_SEC.mdc, 4 * 65_536 + 2_194);
        assert_eq!(mdc::CUFF_PRESSURE, 2 * 65_536 + 19_228);
        assert_eq!(mdc::TEMP_ROOM, 2 * 65_536 + 57_436);
        assert_eq!(mdc::BATTERY_CHARGE, 65_536 + 2_460);
        assert_eq!(mdc::ECG_ELEC_POTL_II, 2 * 65_536 + 258);
        assert_eq!(Unit::MILLI_VOLT.mdc, 4 * 65_536 + 4_274);
        for u in Unit::ALL {
            assert_eq!(Unit::from_mdc(u.mdc), Some(u));
        }
    }

    #[test]
    fn date_time_arithmetic() {
        let t = DateTime::parse(&hex("e9070c1f173b3b")).unwrap(); // 2025-12-31 23:59:59
        assert_eq!(
            t.add_minutes(1).unwrap().to_iso().as_deref(),
            Some("2026-01-01T00:00:59")
        );
        assert_eq!(
            t.add_minutes(-60 * 24 * 365).unwrap().to_iso().as_deref(),
            Some("2024-12-31T23:59:59")
        );
        let leap = DateTime {
            year: 2024,
            month: 2,
            day: 28,
            hours: 23,
            minutes: 30,
            seconds: 0,
        };
        assert_eq!(
            leap.add_minutes(30).unwrap().to_iso().as_deref(),
            Some("2024-02-29T00:00:00")
        );
        assert!(!DateTime { day: 30, ..leap }.is_complete());
        assert_eq!(leap.add_minutes(i32::MIN), None);
    }

    #[test]
    fn date_time_never_panics() {
        never_panics(0x2A08, &["e20704110f3300"], |b| {
            let t = DateTime::from_bytes(b);
            (t.to_iso(), t.add_minutes(b.len() as i32 * 9999 - 30000))
        });
    }
}
