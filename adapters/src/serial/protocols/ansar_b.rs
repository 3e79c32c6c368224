//! Ivy Biomedical 450C bedside monitor, "ANSAR-B" serial output, 9600 8N1, one message a second.
//!
//! # Sources
//! - mdpnp/mdpnp `interop-lab/demo-devices/src/main/java/org/mdpnp/devices/cpc/ansarB/AnsarB.java`
//!   (the OpenICE parser; framing constants, waveform offsets, `receiveLine` field layout), its
//!   users `.../ivy/_450c/DemoIvy450C.java` (9600 8N1, which field is which physiological value)
//!   and `.../ivy/_450c/Ivy450C.java`, and the unit test
//!   `interop-lab/demo-devices/src/test/java/org/mdpnp/devices/ivy/_450c/DemoIvy450CTest.java`,
//!   which requires 27 messages from the recording `Ivy450C.1.data` (our
//!   `data/real/serial/ivy450c_ansarb_capture.bin`, byte for byte).
//!
//! # Message layout
//! `0xFF`, `"ANSAR-B "` (8 ASCII bytes), a 400-byte binary waveform block (ECG 200 samples, then
//! resp, pleth, P1, P2 at 50 samples each, one byte per sample), then CR-terminated ASCII lines,
//! then `0xFE`. The waveform block may contain any byte value, including `0xFE`/`0xFF`, so it is
//! skipped by count. Waveforms are not emitted.
//!
//! # Numeric lines: `NAME=n;v1;…;vn;label;alarm`
//! The number after `=` is the count `n` of value fields that follow (HR, RR, SPO2, T1, T2,
//! ETCO2: 1; P1, P2: 3 — systolic, diastolic, mean; NIBP: 4 — systolic, diastolic, mean, pulse
//! rate). After the values come two text fields: a *label* and an *alarm message*. So
//! `HR=1;80;ECG-II-DIAG;` is HR 80 with label `ECG-II-DIAG` (lead and filter) and no alarm;
//! `P2=3;;;;NO TRANSDUCER;` has no values and the label `NO TRANSDUCER`. This matches
//! `AnsarB.receiveLine` (value fields, then `label`, then `alarm`) and every line of the
//! recording; a line whose field count is not `n + 3` is reported as an error.
//!
//! | line | emitted | code | unit |
//! |---|---|---|---|
//! | `HR` | value 1 | [`mdc::HEART_RATE_ECG`] | /min |
//! | `RR` | value 1 | [`mdc::RESP_RATE`] | breaths/min |
//! | `SPO2` | value 1; the label `PR=nn` is the oximeter pulse rate | [`mdc::SPO2`], [`mdc::PULSE_RATE_OXIM`] | %, /min |
//! | `NIBP` | values 1–4 | [`mdc::NIBP_SYS`], [`mdc::NIBP_DIA`], [`mdc::NIBP_MEAN`], [`mdc::PULSE_RATE_NIBP`] | mmHg, /min |
//! | `P1`, `P2` | values 1–3, status `channel=P1`/`P2` (+ `label=<label>` when present) | [`mdc::IBP_SYS`], [`mdc::IBP_DIA`], [`mdc::IBP_MEAN`] | mmHg |
//! | `T1`, `T2` | value 1, status `channel=T1`/`T2` | [`mdc::TEMP_BODY`] | °C |
//! | `ETCO2` | not emitted | — | — |
//!
//! Decisions (not settled by the source):
//! - **Empty value fields are absent**: no observation, never zero.
//! - **Alarm field**: when non-empty it is an active alarm message of that parameter and is put
//!   in the status of that line's readings as `alarm=<text>`. The **label** field is a setting or
//!   description (ECG lead/filter `ECG-II-DIAG`, apnea delay `APNEA: 20 SEC`, `NO TRANSDUCER`)
//!   and is not a status, except for P1/P2 where it names the pressure site (two channels share
//!   the IBP codes).
//! - **Temperature unit**: OpenICE parses T1/T2 as a float and sends no unit; the recording has no
//!   temperature. Values are taken as °C; a value above 50 (a °F setting, 90–110 °F) is refused
//!   with an error instead of being stored as °C.
//! - **ETCO2** is not emitted: its unit (mmHg, kPa or %) depends on a monitor setting the serial
//!   output does not carry, and the recording has no value to check against.
//! - HR is taken as ECG heart rate (its label names the ECG lead); OpenICE's `DemoIvy450C` does
//!   the same (`MDC_ECG_HEART_RATE`).
//!
//! # Framing and errors
//! Bytes before the first `0xFF` + tag are skipped silently (the port opened mid-message; the
//! recording starts that way). After that, errors ([`Decoded::Error`], absolute stream offset):
//! bytes between messages, a wrong tag, a new `0xFF` before the `0xFE` (truncated message), a
//! non-text byte or more than 1024 bytes in the numeric block, and malformed lines (at the
//! line's offset). One error is reported per stretch of garbage between messages. The waveform
//! block is skipped by count, as OpenICE does, never by looking for `0xFF`: the recording has no
//! `0xFE`/`0xFF` inside its 27 waveform blocks, but nothing documents that a saturated sample
//! cannot be `0xFF`. The price: a message cut inside its waveform block is noticed only in what
//! follows, and the next message is then usually lost as well.

use super::{Decoded, Protocol};
use crate::observation::{mdc, Reading, Unit};

/// First byte of a message.
const START: u8 = 0xFF;
/// Last byte of a message.
const END: u8 = 0xFE;
/// The tag after [`START`] (`AnsarB.ANSAR_B_STR`).
const TAG: &[u8; 8] = b"ANSAR-B ";
/// Length of the binary waveform block (`AnsarB.WAVEFORM_LENGTH`): ECG 200 + 4 × 50 samples.
const WAVE_LEN: usize = 400;
/// Longest numeric block accepted (the recording's is 152 bytes).
const MAX_TEXT: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Looking for [`START`]; other bytes are garbage (reported once per gap after sync).
    Hunt,
    /// `got` bytes of [`TAG`] matched.
    Tag { got: usize },
    /// `got` waveform bytes skipped.
    Wave { got: usize },
    /// Collecting the numeric block until [`END`].
    Text,
}

/// Decoder for the ANSAR-B stream (see the module documentation).
#[derive(Debug)]
pub struct AnsarB {
    /// Framing state.
    state: State,
    /// Absolute offset of the next byte fed.
    offset: u64,
    /// Offset of the current message's [`START`].
    msg_start: u64,
    /// Offset of the first numeric-block byte of the current message.
    text_start: u64,
    /// The numeric block collected so far.
    text: Vec<u8>,
    /// A complete tag has been seen: from now on garbage is reported.
    synced: bool,
    /// The current gap between messages has already been reported.
    gap_reported: bool,
    /// Complete messages decoded.
    messages: u64,
}

impl Default for AnsarB {
    fn default() -> Self {
        Self::new()
    }
}

impl AnsarB {
    /// A decoder at stream offset 0.
    pub fn new() -> Self {
        AnsarB {
            state: State::Hunt,
            offset: 0,
            msg_start: 0,
            text_start: 0,
            text: Vec::new(),
            synced: false,
            gap_reported: false,
            messages: 0,
        }
    }

    /// Complete messages (`0xFF` … `0xFE`) decoded so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    fn start_message(&mut self, at: u64) {
        self.msg_start = at;
        self.state = State::Tag { got: 0 };
    }

    /// Reports an error and goes hunting; the rest of this gap stays quiet.
    fn fail(&mut self, offset: u64, message: String, out: &mut Vec<Decoded>) {
        out.push(Decoded::Error { offset, message });
        self.state = State::Hunt;
        self.gap_reported = true;
    }

    fn push(&mut self, b: u8, out: &mut Vec<Decoded>) {
        let at = self.offset;
        self.offset += 1;
        match self.state {
            State::Hunt => {
                if b == START {
                    self.start_message(at);
                } else if self.synced && !self.gap_reported {
                    out.push(Decoded::Error {
                        offset: at,
                        message: format!("unexpected byte 0x{b:02X} between messages, resyncing"),
                    });
                    self.gap_reported = true;
                }
            }
            State::Tag { got } => {
                if b == TAG[got] {
                    if got + 1 == TAG.len() {
                        self.synced = true;
                        self.state = State::Wave { got: 0 };
                    } else {
                        self.state = State::Tag { got: got + 1 };
                    }
                } else {
                    if self.synced {
                        let start = self.msg_start;
                        self.fail(
                            start,
                            "message start without the ANSAR-B tag, resyncing".into(),
                            out,
                        );
                    } else {
                        self.state = State::Hunt;
                    }
                    if b == START {
                        self.start_message(at);
                    }
                }
            }
            State::Wave { got } => {
                if got + 1 == WAVE_LEN {
                    self.text.clear();
                    self.text_start = at + 1;
                    self.state = State::Text;
                } else {
                    self.state = State::Wave { got: got + 1 };
                }
            }
            State::Text => match b {
                END => {
                    self.messages += 1;
                    self.state = State::Hunt;
                    self.gap_reported = false;
                    let text = std::mem::take(&mut self.text);
                    parse_block(&text, self.text_start, out);
                    self.text = text;
                }
                START => {
                    let start = self.msg_start;
                    self.fail(
                        start,
                        "truncated message (no end byte before the next start), resyncing".into(),
                        out,
                    );
                    self.start_message(at);
                }
                b'\r' | b'\n' | 0x20..=0x7E => {
                    if self.text.len() >= MAX_TEXT {
                        let start = self.msg_start;
                        self.fail(
                            start,
                            format!("numeric block longer than {MAX_TEXT} bytes, resyncing"),
                            out,
                        );
                    } else {
                        self.text.push(b);
                    }
                }
                _ => self.fail(
                    at,
                    format!("unexpected byte 0x{b:02X} in the numeric block, resyncing"),
                    out,
                ),
            },
        }
    }
}

/// Splits the numeric block into CR-terminated lines and parses each.
fn parse_block(text: &[u8], text_start: u64, out: &mut Vec<Decoded>) {
    let mut line_start = 0usize;
    for (i, &b) in text.iter().enumerate() {
        if b == b'\r' {
            parse_line(&text[line_start..i], text_start + line_start as u64, out);
            line_start = i + 1;
        }
    }
    let rest = &text[line_start..];
    if rest.iter().any(|&b| b != b'\n') {
        out.push(Decoded::Error {
            offset: text_start + line_start as u64,
            message: "numeric line without its CR terminator".into(),
        });
    }
}

fn reading(code: u32, value: f64, unit: Unit, status: &[String]) -> Decoded {
    Decoded::Reading(Reading {
        code,
        value,
        unit,
        device_time: None,
        status: status.to_vec(),
    })
}

/// Parses a value field: `Ok(None)` when empty (absent), an error text when not a number.
fn value(name: &str, field: &str) -> Result<Option<f64>, String> {
    let field = field.trim();
    if field.is_empty() {
        return Ok(None);
    }
    match field.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(Some(v)),
        _ => Err(format!("field {name}: a value is not a number")),
    }
}

/// Parses one `NAME=n;v1;…;vn;label;alarm` line that starts at absolute offset `offset`.
fn parse_line(line: &[u8], offset: u64, out: &mut Vec<Decoded>) {
    // The numeric block only ever holds printable ASCII, CR and LF (checked while collecting).
    let line = String::from_utf8_lossy(line);
    let line = line.trim_matches('\n');
    if line.is_empty() {
        return;
    }
    let err = |message: String| Decoded::Error { offset, message };
    let Some((name, rest)) = line.split_once('=') else {
        out.push(err("numeric line without '='".into()));
        return;
    };
    // Error texts never carry clinical values: a field name that is not a plain tag is not echoed.
    let name = name.trim();
    let name = if name.len() <= 8 && name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        name
    } else {
        "?"
    };
    let fields: Vec<&str> = rest.split(';').collect();
    let Ok(n) = fields[0].trim().parse::<usize>() else {
        out.push(err(format!(
            "field {name}: the value count is not a number"
        )));
        return;
    };
    // `n` comes off the wire: `n + 3` must not overflow (a count of 2⁶⁴ − 1 is refused too).
    if n.checked_add(3) != Some(fields.len()) {
        out.push(err(format!(
            "field {name}: {} ';'-separated parts after the count, expected {n} values, a label and an alarm",
            fields.len() - 1
        )));
        return;
    }
    let expected = match name {
        "HR" | "RR" | "SPO2" | "T1" | "T2" | "ETCO2" => 1,
        "P1" | "P2" => 3,
        "NIBP" => 4,
        _ => {
            log::debug!("ansar-b: ignoring unknown field {name}");
            return;
        }
    };
    if n != expected {
        out.push(err(format!(
            "field {name}: {n} values, expected {expected}"
        )));
        return;
    }
    let label = fields[n + 1].trim();
    let alarm = fields[n + 2].trim();
    let mut values = Vec::with_capacity(n);
    for f in &fields[1..=n] {
        match value(name, f) {
            Ok(v) => values.push(v),
            Err(e) => {
                out.push(err(e));
                return;
            }
        }
    }
    let mut status = Vec::new();
    if !alarm.is_empty() {
        status.push(format!("alarm={alarm}"));
    }
    let emit =
        |code: u32, v: Option<f64>, unit: Unit, status: &[String], out: &mut Vec<Decoded>| {
            if let Some(v) = v {
                if unit != Unit::MMHG && v < 0.0 {
                    out.push(err(format!("field {name}: negative value")));
                } else {
                    out.push(reading(code, v, unit, status));
                }
            }
        };
    match name {
        "HR" => emit(
            mdc::HEART_RATE_ECG,
            values[0],
            Unit::BEAT_PER_MIN,
            &status,
            out,
        ),
        "RR" => emit(mdc::RESP_RATE, values[0], Unit::RESP_PER_MIN, &status, out),
        "SPO2" => {
            match values[0] {
                Some(v) if v > 100.0 => out.push(err(format!("field {name}: SpO2 above 100 %"))),
                v => emit(mdc::SPO2, v, Unit::PERCENT, &status, out),
            }
            // The label carries the oximeter pulse rate as `PR=nn` (AnsarB.receiveLine).
            if let Some(pr) = label.strip_prefix("PR=") {
                match value("SPO2 PR", pr) {
                    Ok(v) => emit(mdc::PULSE_RATE_OXIM, v, Unit::BEAT_PER_MIN, &status, out),
                    Err(e) => out.push(err(e)),
                }
            }
        }
        "NIBP" => {
            emit(mdc::NIBP_SYS, values[0], Unit::MMHG, &status, out);
            emit(mdc::NIBP_DIA, values[1], Unit::MMHG, &status, out);
            emit(mdc::NIBP_MEAN, values[2], Unit::MMHG, &status, out);
            emit(
                mdc::PULSE_RATE_NIBP,
                values[3],
                Unit::BEAT_PER_MIN,
                &status,
                out,
            );
        }
        "P1" | "P2" => {
            status.insert(0, format!("channel={name}"));
            if !label.is_empty() {
                status.insert(1, format!("label={label}"));
            }
            emit(mdc::IBP_SYS, values[0], Unit::MMHG, &status, out);
            emit(mdc::IBP_DIA, values[1], Unit::MMHG, &status, out);
            emit(mdc::IBP_MEAN, values[2], Unit::MMHG, &status, out);
        }
        "T1" | "T2" => {
            status.insert(0, format!("channel={name}"));
            match values[0] {
                Some(v) if v > 50.0 => out.push(err(format!(
                    "field {name}: temperature above 50, the monitor may be set to Fahrenheit; not emitted"
                ))),
                v => emit(mdc::TEMP_BODY, v, Unit::DEGC, &status, out),
            }
        }
        // ETCO2: unit unknown on the wire, see the module documentation.
        _ => {}
    }
}

impl Protocol for AnsarB {
    fn name(&self) -> &'static str {
        "ansar-b"
    }

    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Decoded>) {
        for &b in bytes {
            self.push(b, out);
        }
    }

    fn frames_ok(&self) -> u64 {
        self.messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/real/serial/ivy450c_ansarb_capture.bin"
    );

    fn capture() -> Vec<u8> {
        std::fs::read(CAPTURE).expect("read the Ivy 450C recording")
    }

    fn decode_all(chunks: &[&[u8]]) -> (Vec<Decoded>, u64) {
        let mut p = AnsarB::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out);
        }
        (out, p.messages())
    }

    fn readings(out: &[Decoded], code: u32) -> Vec<&Reading> {
        out.iter()
            .filter_map(|d| match d {
                Decoded::Reading(r) if r.code == code => Some(r),
                _ => None,
            })
            .collect()
    }

    fn values(out: &[Decoded], code: u32) -> Vec<f64> {
        readings(out, code).iter().map(|r| r.value).collect()
    }

    #[test]
    fn ivy_recording_gives_27_messages_with_the_documented_values() {
        let (out, messages) = decode_all(&[&capture()]);
        assert_eq!(messages, 27, "DemoIvy450CTest requires 27 messages");
        assert!(
            out.iter().all(|d| matches!(d, Decoded::Reading(_))),
            "no errors: {out:?}"
        );
        assert_eq!(values(&out, mdc::HEART_RATE_ECG), vec![80.0; 27]);
        assert_eq!(values(&out, mdc::RESP_RATE), vec![35.0; 27]);
        assert_eq!(values(&out, mdc::SPO2), vec![100.0; 27]);
        assert_eq!(values(&out, mdc::PULSE_RATE_OXIM), vec![80.0; 27]);
        assert_eq!(values(&out, mdc::NIBP_SYS), vec![121.0; 27]);
        assert_eq!(values(&out, mdc::NIBP_DIA), vec![75.0; 27]);
        assert_eq!(values(&out, mdc::NIBP_MEAN), vec![92.0; 27]);
        assert_eq!(values(&out, mdc::PULSE_RATE_NIBP), vec![80.0; 27]);
        // P1 is 111/73/88, in some messages 110/73/88; P2 has no transducer: absent, not zero.
        let sys = readings(&out, mdc::IBP_SYS);
        assert_eq!(sys.len(), 27);
        assert!(sys.iter().all(|r| r.value == 111.0 || r.value == 110.0));
        assert!(sys.iter().any(|r| r.value == 110.0));
        assert!(sys
            .iter()
            .all(|r| r.status == vec!["channel=P1".to_string()]));
        assert_eq!(values(&out, mdc::IBP_DIA), vec![73.0; 27]);
        assert_eq!(values(&out, mdc::IBP_MEAN), vec![88.0; 27]);
        assert!(
            values(&out, mdc::TEMP_BODY).is_empty(),
            "T1=1;;; and T2=1;;; are empty"
        );
        // HR, RR, SPO2, PR, NIBP ×4, P1 ×3 per message.
        assert_eq!(out.len(), 27 * 11);
        for d in &out {
            if let Decoded::Reading(r) = d {
                assert!(r.device_time.is_none());
                if r.code != mdc::IBP_SYS && r.code != mdc::IBP_DIA && r.code != mdc::IBP_MEAN {
                    assert!(r.status.is_empty(), "labels are not statuses: {r:?}");
                }
            }
        }
        let units: Vec<Unit> = readings(&out, mdc::NIBP_SYS)
            .iter()
            .map(|r| r.unit)
            .collect();
        assert!(units.iter().all(|u| *u == Unit::MMHG));
        assert!(readings(&out, mdc::RESP_RATE)
            .iter()
            .all(|r| r.unit == Unit::RESP_PER_MIN));
    }

    #[test]
    fn byte_at_a_time_and_random_splits_give_identical_results() {
        let bytes = capture();
        let whole = decode_all(&[&bytes]);
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_all(&singles), whole);
        let mut rng = fastrand::Rng::with_seed(450);
        for _ in 0..20 {
            let mut chunks = Vec::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len().min(700));
                chunks.push(&rest[..n]);
                rest = &rest[n..];
            }
            assert_eq!(decode_all(&chunks), whole);
        }
    }

    /// The first whole message of the recording (0xFF at 252 … 0xFE at 813).
    fn one_message() -> Vec<u8> {
        capture()[252..814].to_vec()
    }

    fn errors(out: &[Decoded]) -> Vec<(u64, String)> {
        out.iter()
            .filter_map(|d| match d {
                Decoded::Error { offset, message } => Some((*offset, message.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn garbage_truncation_and_bad_tags_are_reported_at_absolute_offsets() {
        let m = one_message();
        assert_eq!(m.len(), 562);
        let mut s = Vec::new();
        s.extend(&m); // ok
        let garbage_at = s.len() as u64;
        s.extend(b"xyz"); // garbage: one error at its first byte
        let cut_at = s.len() as u64;
        s.extend(&m[..450]); // cut inside the numeric block, then the next start: error at its start
        s.extend(&m); // ok
        let bad_tag_at = s.len() as u64;
        s.extend([0xFF]); // a start without the tag: error at the start
        s.extend(b"ANSAR-C");
        s.extend(&m); // ok
        let (out, messages) = decode_all(&[&s]);
        assert_eq!(messages, 3);
        let e = errors(&out);
        assert_eq!(
            e.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![garbage_at, cut_at, bad_tag_at],
            "{e:?}"
        );
        assert!(e[0].1.contains("0x78"));
        assert!(e[1].1.contains("truncated message"));
        assert!(e[2].1.contains("tag"));
        assert_eq!(values(&out, mdc::SPO2).len(), 3);
    }

    /// Builds a message with the recording's waveform block and the given numeric lines.
    fn message_with(lines: &str) -> Vec<u8> {
        let m = one_message();
        let mut s = m[..409].to_vec();
        s.extend(lines.as_bytes());
        s.push(END);
        s
    }

    #[test]
    fn alarm_fields_become_status_and_labels_do_not() {
        let s = message_with("HR=1;80;ECG-II-DIAG;HR HIGH\rP2=3;30;10;;CVP;\rT1=1;37.2;;\r");
        let (out, _) = decode_all(&[&s]);
        assert!(errors(&out).is_empty(), "{out:?}");
        let hr = readings(&out, mdc::HEART_RATE_ECG);
        assert_eq!(hr[0].status, vec!["alarm=HR HIGH".to_string()]);
        let sys = readings(&out, mdc::IBP_SYS);
        assert_eq!(
            (sys[0].value, sys[0].status.clone()),
            (30.0, vec!["channel=P2".into(), "label=CVP".into()])
        );
        assert!(
            readings(&out, mdc::IBP_MEAN).is_empty(),
            "empty mean is absent"
        );
        let t = readings(&out, mdc::TEMP_BODY);
        assert_eq!(
            (t[0].value, t[0].unit, t[0].status.clone()),
            (37.2, Unit::DEGC, vec!["channel=T1".into()])
        );
    }

    #[test]
    fn malformed_lines_are_errors_at_the_line_offset() {
        let lines =
            "HR=1;80;ECG-II-DIAG;\rNIBP=4;121;75;;\rRR=1;3x;;\rT2=1;98.6;;\rSPO2=1;97;PR=61 ;\r";
        let s = message_with(lines);
        let (out, messages) = decode_all(&[&s]);
        assert_eq!(messages, 1);
        let e = errors(&out);
        let nibp_at = 409 + lines.find("NIBP").unwrap() as u64;
        let rr_at = 409 + lines.find("RR=").unwrap() as u64;
        let t2_at = 409 + lines.find("T2=").unwrap() as u64;
        assert_eq!(
            e.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![nibp_at, rr_at, t2_at],
            "{e:?}"
        );
        assert!(e[2].1.contains("Fahrenheit"));
        assert_eq!(values(&out, mdc::HEART_RATE_ECG), vec![80.0]);
        assert_eq!(values(&out, mdc::SPO2), vec![97.0]);
        assert_eq!(values(&out, mdc::PULSE_RATE_OXIM), vec![61.0]);
        assert!(values(&out, mdc::TEMP_BODY).is_empty());
    }

    #[test]
    fn a_value_count_at_the_integer_limit_is_an_error_not_an_overflow() {
        // Found by `scripts/fuzz 600` (serial_ansar_b): `n + 3` overflowed.
        let s = message_with(&format!("HR={};80;;\r", usize::MAX));
        let (out, _) = decode_all(&[&s]);
        assert_eq!(errors(&out).len(), 1, "{out:?}");
        assert!(values(&out, mdc::HEART_RATE_ECG).is_empty());
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let m = one_message();
        let mut rng = fastrand::Rng::with_seed(0x450C);
        for _ in 0..500 {
            let len = rng.usize(0..1500);
            let mut buf: Vec<u8> = Vec::with_capacity(len);
            while buf.len() < len {
                match rng.u8(0..6) {
                    0 => buf.extend(&m[..rng.usize(0..m.len())]),
                    1 => buf.push(START),
                    2 => buf.push(END),
                    3 => buf.extend(b"P1=3;1;;;x;y\r"),
                    _ => buf.push(rng.u8(..)),
                }
            }
            // Flip a few bytes of an otherwise good message too.
            let mut bent = m.clone();
            for _ in 0..rng.usize(1..5) {
                let i = rng.usize(0..bent.len());
                bent[i] = rng.u8(..);
            }
            buf.extend(bent);
            let mut p = AnsarB::new();
            let mut out = Vec::new();
            for c in buf.chunks(rng.usize(1..=64)) {
                p.feed(c, &mut out);
            }
            for d in out {
                if let Decoded::Error { offset, .. } = d {
                    assert!(offset < buf.len() as u64);
                }
            }
        }
    }
}
