//! Masimo Radical-7 / Rad-series pulse (CO-)oximeters, "ASCII 1" serial output, 9600 8N1.
//!
//! One text line per second, e.g. (Radical-7 example from the source below)
//! `12/01/05 11:56:29 SN=0123456789 SPO2=098% BPM=240 PI=20.00% SPCO=01.0% SPMET=00.5% DESAT=01
//! PIDELTA=-02 PVI=027 ALARM=0000 EXC=000820` followed by CR LF.
//!
//! # Sources
//! - mdpnp/mdpnp `other/pox_rad/src/poxrad_discrete.h` (commit 76ce3a4f, "Manage data obtained
//!   from Masimo Radical 5, 7 POX serial port", citing the Radical operator's manual): the field
//!   list (date, time, `SN`, `SPO2`, `BPM`, `PI`, `SPCO`, `SPMET`, `DESAT`, `PIDELTA`, `PVI`,
//!   `ALARM`, `EXC`), "unavailable values are filled with `-`", 1 Hz, the example lines used in the
//!   tests, and the `ALARM` and `EXC` bit tables.
//! - mdpnp/mdpnp `devices/masimo/src/main/resources/org/mdpnp/devices/masimo/radical/masimo-radical-7.spec`
//!   and `interop-lab/.../masimo/radical/DemoRadical7.java`: the OpenICE regex for the same line,
//!   date format `MM/dd/yy HH:mm:ss`, 9600 8N1, `SN` used as the device's serial number.
//! - Masimo Rad-8 operator's manual §4 (trend format; same exception bits 0x001–0x800, "800 =
//!   Masimo SET ... the algorithm is running in full SET mode", and placeholder `SpO2=000 PR=000
//!   PI=00.00` while the sensor is off the patient); Rad-87 operator's manual §7 (9600 8N1,
//!   "ASCII 1" is the default serial mode).
//! - yahnatan/pulseox `README.md`: real Rad-8 "ASCII 1" output, e.g. `02/22/16 22:47:45
//!   SN=0000056661 SPO2=098% BPM=097 PI=03.60% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+--
//!   ALARM=0000 EXC=000800` (no `PVI` field on that model).
//!
//! There is no recording of a Masimo device in `data/real`: the tests use the example lines
//! published in the sources above, labelled as such.
//!
//! # Decoding
//! - Lines end at CR or LF; empty lines are skipped. Fields are `KEY=VALUE` tokens separated by
//!   spaces, in any order; unknown keys are ignored, so Radical-5 (no `SN`), Rad-8 (no `PVI`) and
//!   Radical-7 lines all decode.
//! - Date and time (`MM/DD/YY hh:mm:ss`) become `device_time` `20YY-MM-DDThh:mm:ss` (device local
//!   time; two-digit years are taken as 2000–2099).
//! - `SN=` → [`Decoded::Identity`], before the line's readings.
//! - `SPO2` → [`mdc::SPO2`] (%), `BPM` → [`mdc::PULSE_RATE_OXIM`] (/min), `PI` →
//!   [`mdc::PERFUSION_INDEX`] (%). A value made of dashes (`---`, `--.-`, `+--`) is absent. A value
//!   of zero is absent too: the Rad-8 manual shows `000` as the placeholder while the sensor is off
//!   the patient, and no oximeter measures a saturation, rate or PI of zero. A value outside the
//!   device's range (SpO2 1–100 %, pulse rate 25–240 bpm, PI 0.02–20 %: Masimo SET
//!   specifications) is an error, never a reading: the line is not what the device sent.
//! - `SPCO`, `SPMET`, `DESAT`, `PIDELTA`, `PVI` are not emitted (no MDC code in this crate yet).
//! - `EXC` (hex) and `ALARM` (hex) bits become status strings on every reading of the line (see
//!   [`EXCEPTIONS`], [`ALARMS`]); the `0x000800` "Masimo SET" bit is normal operation, not a
//!   status. Unknown or reserved bits become `exception-0x…` / `alarm-0x…`.
//!
//! # Errors
//! [`Decoded::Error`] at the line's absolute offset: a non-text byte, a line longer than 256
//! bytes, a bad date or time, a non-numeric or out-of-range value, a bad hex bit field. The first
//! line of the stream is decoded when it is whole and skipped silently when not (the port opened
//! mid-line).

use super::{Decoded, Protocol};
use crate::observation::{mdc, Reading, Unit};

/// SpO2 the device can report, %.
const SPO2_RANGE: std::ops::RangeInclusive<f64> = 1.0..=100.0;
/// Pulse rate range of Masimo SET devices (Radical-7 / Rad-8 operator's manual specifications:
/// 25–240 bpm; the Radical-7 example line of the source shows `BPM=240`).
const PULSE_RANGE: std::ops::RangeInclusive<f64> = 25.0..=240.0;
/// Perfusion index range of Masimo SET devices (same specifications: 0.02–20 %; the example
/// line shows `PI=20.00%`).
const PI_RANGE: std::ops::RangeInclusive<f64> = 0.02..=20.0;

/// Longest line accepted (the Radical-7 example is 130 bytes).
const MAX_LINE: usize = 256;

/// `EXC=` bits and their status strings. Source: mdpnp/mdpnp `poxrad_discrete.h`
/// `exceptionmessage()`; the Rad-8 manual's trend table agrees for 0x001–0x800. `0x000800`
/// ("Masimo SET", normal operation) is deliberately absent.
pub const EXCEPTIONS: [(u32, &str); 21] = [
    (0x00_0001, "no-sensor"),
    (0x00_0002, "defective-sensor"),
    (0x00_0004, "low-perfusion"),
    (0x00_0008, "pulse-search"),
    (0x00_0010, "interference"),
    (0x00_0020, "sensor-off"),
    (0x00_0040, "ambient-light"),
    (0x00_0080, "unrecognized-sensor"),
    (0x00_0100, "incompatible-sensor"),
    (0x00_0400, "low-signal-iq"),
    (0x00_1000, "no-cable"),
    (0x00_2000, "cable-life-expired"),
    (0x00_4000, "incompatible-cable"),
    (0x00_8000, "unrecognized-cable"),
    (0x01_0000, "defective-cable"),
    (0x02_0000, "sensor-calibrating"),
    (0x04_0000, "sensor-life-expired"),
    (0x08_0000, "emitter-temp-out-of-range"),
    (0x10_0000, "sensor-current-limit"),
    (0x20_0000, "spco-low-confidence"),
    (0x40_0000, "spmet-low-confidence"),
];

/// The `EXC=` bit meaning "Masimo SET algorithm running": normal, not a status.
const EXC_SET: u32 = 0x00_0800;

/// `ALARM=` bits and their status strings. Source: mdpnp/mdpnp `poxrad_discrete.h`
/// `alarmmessage()`.
pub const ALARMS: [(u32, &str); 13] = [
    (0x0001, "alarm-spo2-high"),
    (0x0002, "alarm-spo2-low"),
    (0x0004, "alarm-pulse-high"),
    (0x0008, "alarm-pulse-low"),
    (0x0010, "alarm-active"),
    (0x0020, "alarm-silenced"),
    (0x0040, "low-battery"),
    (0x0100, "alarm-spco-high"),
    (0x0200, "alarm-spco-low"),
    (0x0400, "alarm-spmet-high"),
    (0x0800, "alarm-spmet-low"),
    (0x1000, "alarm-desat-index"),
    (0x2000, "alarm-pi-delta"),
];

/// Decoder for Masimo "ASCII 1" lines (see the module documentation).
#[derive(Debug)]
pub struct Masimo {
    /// The line being collected.
    line: Vec<u8>,
    /// Absolute offset of the line's first byte.
    line_start: u64,
    /// Absolute offset of the next byte fed.
    offset: u64,
    /// No line terminator seen yet: the first line may be a fragment.
    first_line: bool,
    /// The current line overflowed [`MAX_LINE`] (already reported).
    overlong: bool,
    /// Lines decoded without error.
    lines_ok: u64,
}

impl Default for Masimo {
    fn default() -> Self {
        Self::new()
    }
}

impl Masimo {
    /// A decoder at stream offset 0.
    pub fn new() -> Self {
        Masimo {
            line: Vec::new(),
            line_start: 0,
            offset: 0,
            first_line: true,
            overlong: false,
            lines_ok: 0,
        }
    }

    fn push(&mut self, b: u8, out: &mut Vec<Decoded>) {
        let at = self.offset;
        self.offset += 1;
        if b == b'\r' || b == b'\n' {
            let first = std::mem::replace(&mut self.first_line, false);
            if !self.line.is_empty() && !self.overlong {
                let mut decoded = Vec::new();
                let ok = parse_line(&self.line, self.line_start, &mut decoded);
                if ok {
                    self.lines_ok += 1;
                }
                if ok || !first {
                    out.append(&mut decoded);
                }
            }
            self.line.clear();
            self.overlong = false;
            return;
        }
        if self.line.is_empty() {
            self.line_start = at;
        }
        if self.overlong {
            return;
        }
        if self.line.len() >= MAX_LINE {
            self.overlong = true;
            if !self.first_line {
                out.push(Decoded::Error {
                    offset: self.line_start,
                    message: format!("line longer than {MAX_LINE} bytes"),
                });
            }
            return;
        }
        self.line.push(b);
    }
}

/// Parses `MM/DD/YY` and `hh:mm:ss` into `20YY-MM-DDThh:mm:ss`.
fn device_time(date: &str, time: &str) -> Option<String> {
    fn parts<const N: usize>(s: &str, sep: char) -> Option<[u32; N]> {
        let mut out = [0u32; N];
        let mut it = s.split(sep);
        for v in out.iter_mut() {
            let p = it.next()?;
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            *v = p.parse().ok()?;
        }
        it.next().is_none().then_some(out)
    }
    let [mo, d, y] = parts::<3>(date, '/')?;
    let [h, mi, s] = parts::<3>(time, ':')?;
    let valid = (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && s < 60;
    valid.then(|| format!("20{y:02}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}"))
}

/// A numeric field: `Ok(None)` when absent (dashes or the zero placeholder); a value outside
/// `range` (what the device can display) is an error, never a reading.
fn number(
    key: &str,
    raw: &str,
    range: std::ops::RangeInclusive<f64>,
) -> Result<Option<f64>, String> {
    let body = raw.trim_end_matches('%');
    if body.is_empty() || body.contains('-') {
        return Ok(None);
    }
    let digits_ok = body.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && body.bytes().any(|b| b.is_ascii_digit());
    let Some(v) = digits_ok.then(|| body.parse::<f64>().ok()).flatten() else {
        return Err(format!("{key} value is not a number"));
    };
    if v == 0.0 {
        Ok(None)
    } else if !range.contains(&v) {
        Err(format!("{key} value is out of range"))
    } else {
        Ok(Some(v))
    }
}

/// A hex bit field such as `EXC=000820`.
fn bits(key: &str, raw: &str) -> Result<u32, String> {
    if raw.is_empty() || raw.len() > 8 {
        return Err(format!("{key}={raw} is not a hex bit field"));
    }
    u32::from_str_radix(raw, 16).map_err(|_| format!("{key}={raw} is not a hex bit field"))
}

fn flag_names(value: u32, table: &[(u32, &str)], ignore: u32, prefix: &str, out: &mut Vec<String>) {
    let mut rest = value & !ignore;
    for (bit, name) in table {
        if rest & bit != 0 {
            out.push((*name).to_string());
            rest &= !bit;
        }
    }
    for i in 0..32 {
        let bit = 1u32 << i;
        if rest & bit != 0 {
            out.push(format!("{prefix}-0x{bit:06X}"));
        }
    }
}

/// Parses one line; appends its identity and readings, or one error. Returns whether it decoded.
fn parse_line(line: &[u8], offset: u64, out: &mut Vec<Decoded>) -> bool {
    let fail = |out: &mut Vec<Decoded>, message: String| {
        out.push(Decoded::Error { offset, message });
        false
    };
    if let Some(b) = line
        .iter()
        .find(|b| !(0x20..=0x7E).contains(*b) && **b != b'\t')
    {
        return fail(out, format!("non-text byte 0x{b:02X} in line"));
    }
    // Checked above: printable ASCII only.
    let text = String::from_utf8_lossy(line);
    let mut tokens = text.split_ascii_whitespace();
    let (Some(date), Some(time)) = (tokens.next(), tokens.next()) else {
        return fail(out, "line without date and time".into());
    };
    let Some(device_time) = device_time(date, time) else {
        return fail(out, "bad date or time".into());
    };
    let (mut sn, mut spo2, mut bpm, mut pi) = (None, None, None, None);
    let mut status = Vec::new();
    for tok in tokens {
        let Some((key, raw)) = tok.split_once('=') else {
            log::debug!("masimo: ignoring token without '='");
            continue;
        };
        let parsed = match key {
            "SN" => {
                if !raw.is_empty() && !raw.contains('-') {
                    sn = Some(raw.to_string());
                }
                Ok(())
            }
            "SPO2" => number(key, raw, SPO2_RANGE).map(|v| spo2 = v),
            "BPM" => number(key, raw, PULSE_RANGE).map(|v| bpm = v),
            "PI" => number(key, raw, PI_RANGE).map(|v| pi = v),
            "EXC" => bits(key, raw)
                .map(|v| flag_names(v, &EXCEPTIONS, EXC_SET, "exception", &mut status)),
            "ALARM" => bits(key, raw).map(|v| flag_names(v, &ALARMS, 0, "alarm", &mut status)),
            _ => Ok(()),
        };
        if let Err(e) = parsed {
            return fail(out, e);
        }
    }
    if let Some(sn) = sn {
        out.push(Decoded::Identity(sn));
    }
    for (code, value, unit) in [
        (mdc::SPO2, spo2, Unit::PERCENT),
        (mdc::PULSE_RATE_OXIM, bpm, Unit::BEAT_PER_MIN),
        (mdc::PERFUSION_INDEX, pi, Unit::PERCENT),
    ] {
        if let Some(value) = value {
            out.push(Decoded::Reading(Reading {
                code,
                value,
                unit,
                device_time: Some(device_time.clone()),
                status: status.clone(),
            }));
        }
    }
    true
}

impl Protocol for Masimo {
    fn name(&self) -> &'static str {
        "masimo"
    }

    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Decoded>) {
        for &b in bytes {
            self.push(b, out);
        }
    }

    fn reports_identity(&self) -> bool {
        true
    }

    fn frames_ok(&self) -> u64 {
        self.lines_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published example, Radical-7: mdpnp/mdpnp `other/pox_rad/src/poxrad_discrete.h`
    /// (`_radical7_examplestring`). Documentation, not a recording.
    const DOC_RADICAL7: &str = "12/01/05 11:56:29 SN=0123456789 SPO2=098% BPM=240 PI=20.00% SPCO=01.0% SPMET=00.5% DESAT=01 PIDELTA=-02 PVI=027 ALARM=0000 EXC=000820\r\n";
    /// Published example, Radical-5: same file (`_radical5_examplestring`).
    const DOC_RADICAL5: &str = "09/15/10 15:10:29 SPO2=097% BPM=064 PI=11.82% ALARM=20 EXC=800\r\n";
    /// Published Rad-8 "ASCII 1" output: yahnatan/pulseox `README.md` (two of its lines).
    const DOC_RAD8: &str = "02/22/16 22:47:45 SN=0000056661 SPO2=098% BPM=097 PI=03.60% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800\r\n\r\n02/22/16 22:47:46 SN=0000056661 SPO2=098% BPM=096 PI=03.95% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800\r\n";

    fn decode_all(chunks: &[&[u8]]) -> Vec<Decoded> {
        let mut p = Masimo::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out);
        }
        out
    }

    fn reading(code: u32, value: f64, unit: Unit, time: &str, status: &[&str]) -> Decoded {
        Decoded::Reading(Reading {
            code,
            value,
            unit,
            device_time: Some(time.into()),
            status: status.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn values_outside_the_device_range_are_errors_not_readings() {
        for bad in ["SPO2=101%", "BPM=024", "BPM=241", "PI=20.01%", "PI=00.01%"] {
            let line =
                format!("\n12/01/05 11:56:29 SPO2=098% BPM=070 PI=02.00% {bad} EXC=000800\r\n");
            let out = decode_all(&[line.as_bytes()]);
            match &out[..] {
                [Decoded::Error { offset: 1, message }] => {
                    assert!(
                        message.ends_with("value is out of range"),
                        "{bad}: {message}"
                    )
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let edges = "\n12/01/05 11:56:29 SPO2=001% BPM=025 PI=00.02% EXC=000800\r\n";
        let out = decode_all(&[edges.as_bytes()]);
        assert_eq!(out.len(), 3, "{out:?}");
    }

    #[test]
    fn radical7_documentation_example() {
        let out = decode_all(&[DOC_RADICAL7.as_bytes()]);
        let t = "2005-12-01T11:56:29";
        // EXC=000820: sensor off (0x20) + Masimo SET (0x800, normal, no status).
        let st = ["sensor-off"];
        assert_eq!(
            out,
            vec![
                Decoded::Identity("0123456789".into()),
                reading(mdc::SPO2, 98.0, Unit::PERCENT, t, &st),
                reading(mdc::PULSE_RATE_OXIM, 240.0, Unit::BEAT_PER_MIN, t, &st),
                reading(mdc::PERFUSION_INDEX, 20.0, Unit::PERCENT, t, &st),
            ]
        );
    }

    #[test]
    fn radical5_documentation_example_has_no_serial_number() {
        let out = decode_all(&[DOC_RADICAL5.as_bytes()]);
        let t = "2010-09-15T15:10:29";
        let st = ["alarm-silenced"];
        assert_eq!(
            out,
            vec![
                reading(mdc::SPO2, 97.0, Unit::PERCENT, t, &st),
                reading(mdc::PULSE_RATE_OXIM, 64.0, Unit::BEAT_PER_MIN, t, &st),
                reading(mdc::PERFUSION_INDEX, 11.82, Unit::PERCENT, t, &st),
            ]
        );
    }

    #[test]
    fn rad8_published_output_dashes_are_absent() {
        let out = decode_all(&[DOC_RAD8.as_bytes()]);
        assert_eq!(
            out,
            vec![
                Decoded::Identity("0000056661".into()),
                reading(mdc::SPO2, 98.0, Unit::PERCENT, "2016-02-22T22:47:45", &[]),
                reading(
                    mdc::PULSE_RATE_OXIM,
                    97.0,
                    Unit::BEAT_PER_MIN,
                    "2016-02-22T22:47:45",
                    &[]
                ),
                reading(
                    mdc::PERFUSION_INDEX,
                    3.6,
                    Unit::PERCENT,
                    "2016-02-22T22:47:45",
                    &[]
                ),
                Decoded::Identity("0000056661".into()),
                reading(mdc::SPO2, 98.0, Unit::PERCENT, "2016-02-22T22:47:46", &[]),
                reading(
                    mdc::PULSE_RATE_OXIM,
                    96.0,
                    Unit::BEAT_PER_MIN,
                    "2016-02-22T22:47:46",
                    &[]
                ),
                reading(
                    mdc::PERFUSION_INDEX,
                    3.95,
                    Unit::PERCENT,
                    "2016-02-22T22:47:46",
                    &[]
                ),
            ]
        );
    }

    #[test]
    fn no_value_fields_and_exception_bits() {
        // The brief's form of the line with the values blanked as the device does while searching.
        let line =
            "03/15/11 14:22:05 SN=0000092845 SPO2=---% BPM=--- PI=--.--% ALARM=0030 EXC=00000C\r\n";
        let out = decode_all(&[line.as_bytes()]);
        assert_eq!(out, vec![Decoded::Identity("0000092845".into())]);
        let line = "03/15/11 14:22:06 SPO2=000% BPM=000 PI=00.00% ALARM=0000 EXC=000828\r\n";
        assert!(
            decode_all(&[line.as_bytes()]).is_empty(),
            "zero placeholders are absent"
        );
        let line = "03/15/11 14:22:07 SPO2=090% BPM=--- PI=--.--% ALARM=0012 EXC=800604\r\n";
        let out = decode_all(&[line.as_bytes()]);
        // Statuses follow the line's field order: ALARM (0x02, 0x10) then EXC (0x004, 0x400 and
        // the reserved 0x200 and 0x800000 bits).
        let st = [
            "alarm-spo2-low",
            "alarm-active",
            "low-perfusion",
            "low-signal-iq",
            "exception-0x000200",
            "exception-0x800000",
        ];
        assert_eq!(
            out,
            vec![reading(
                mdc::SPO2,
                90.0,
                Unit::PERCENT,
                "2011-03-15T14:22:07",
                &st
            )]
        );
    }

    #[test]
    fn bad_lines_are_errors_at_their_offsets_and_a_leading_fragment_is_silent() {
        let good = DOC_RADICAL5;
        let mut s = String::new();
        s.push_str("SPO2=097% BPM=064 ALARM=20 EXC=800\r\n"); // fragment: skipped silently
        s.push_str(good);
        let bad_date = s.len() as u64;
        s.push_str("13/45/10 15:10:29 SPO2=097%\r\n");
        let bad_value = s.len() as u64;
        s.push_str("09/15/10 15:10:30 SPO2=1x7% BPM=064\r\n");
        let bad_range = s.len() as u64;
        s.push_str("09/15/10 15:10:31 SPO2=107% BPM=064\r\n");
        let bad_hex = s.len() as u64;
        s.push_str("09/15/10 15:10:32 SPO2=097% EXC=80G\r\n");
        let mut bytes = s.into_bytes();
        let bad_byte = bytes.len() as u64;
        bytes.extend(b"09/15/10 15:10:33 SPO2=09\x017%\r\n");
        let long = bytes.len() as u64;
        bytes.extend(vec![b'A'; 300]);
        bytes.extend(b"\r\n");
        bytes.extend(good.as_bytes());
        let out = decode_all(&[&bytes]);
        let errs: Vec<u64> = out
            .iter()
            .filter_map(|d| match d {
                Decoded::Error { offset, .. } => Some(*offset),
                _ => None,
            })
            .collect();
        assert_eq!(
            errs,
            vec![bad_date, bad_value, bad_range, bad_hex, bad_byte, long],
            "{out:?}"
        );
        let spo2 = out
            .iter()
            .filter(|d| matches!(d, Decoded::Reading(r) if r.code == mdc::SPO2))
            .count();
        assert_eq!(spo2, 2);
    }

    #[test]
    fn byte_at_a_time_and_random_splits_give_identical_results() {
        let mut bytes = Vec::new();
        bytes.extend(&DOC_RADICAL7.as_bytes()[20..]);
        bytes.extend(DOC_RAD8.as_bytes());
        bytes.extend(b"junk\x00\xff\r\n");
        bytes.extend(DOC_RADICAL7.as_bytes());
        bytes.extend(DOC_RADICAL5.as_bytes());
        let whole = decode_all(&[&bytes]);
        assert_eq!(
            whole
                .iter()
                .filter(|d| matches!(d, Decoded::Error { .. }))
                .count(),
            1
        );
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_all(&singles), whole);
        let mut rng = fastrand::Rng::with_seed(87);
        for _ in 0..50 {
            let mut chunks = Vec::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len().min(50));
                chunks.push(&rest[..n]);
                rest = &rest[n..];
            }
            assert_eq!(decode_all(&chunks), whole);
        }
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(0x3A51);
        let pieces: [&[u8]; 8] = [
            b"12/01/05 ",
            b"11:56:29 ",
            b"SPO2=",
            b"%",
            b"EXC=",
            b"---",
            b"\r\n",
            b"99/99/99 99:99:99 ",
        ];
        for _ in 0..2000 {
            let mut buf = Vec::new();
            for _ in 0..rng.usize(0..30) {
                if rng.bool() {
                    buf.extend(pieces[rng.usize(0..pieces.len())]);
                } else {
                    buf.push(rng.u8(..));
                }
            }
            let mut p = Masimo::new();
            let mut out = Vec::new();
            for c in buf.chunks(rng.usize(1..=16)) {
                p.feed(c, &mut out);
            }
        }
    }
}
