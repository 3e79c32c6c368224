//! The plug-in line protocol, version 1 (`docs/plugins.md` is the reference for plug-in
//! authors): what a plug-in writes on its stdout, parsed ([`parse_line`]), and what wardgate
//! writes on its stdin ([`encode_command`]). Pure: no I/O, never panics (fuzzed:
//! `fuzz/fuzz_targets/exec_plugin_line.rs`).
//!
//! One JSON object (RFC 8259) per line, UTF-8, ending in `\n`:
//!
//! ```text
//! {"v":1,"type":"observation","code":"MDC_PULS_OXIM_SAT_O2","value":97,"unit":"%"}
//! {"v":1,"type":"observation","device":"pump-1","code":150456,"value":97.0,"unit":262688,
//!  "device_time":"2024-06-10T06:13:20","status":["alarm"],"record":17}
//! {"v":1,"type":"waveform","code":"MDC_ECG_ELEC_POTL_II","unit":"mV","period_us":2778,
//!  "scale":0.005,"offset":-5.12,"samples":[975,981,987,989,990]}
//! {"v":1,"type":"event","kind":"connected","detail":"pump X200 sn 4711 on /dev/ttyUSB0"}
//! {"v":1,"type":"event","kind":"error","detail":"pump answered NAK to a rate query"}
//! ```
//!
//! - `v` (required, first to be checked): the schema version, `1`. A line of another version is
//!   refused with that reason (a newer plug-in on an older wardgate).
//! - `type`: `observation`, `waveform` or `event`.
//! - `device`: one of the `[[exec]] devices` names; absent when the plug-in has none. Required
//!   on observations and waveforms when it has some (a reading without it is refused); an event
//!   without it is the plug-in's own (`exec:<name>`).
//! - observation: `code` (an MDC code: a number, or a name of `observation::mdc::NAMES`),
//!   `value` (a finite JSON number), `unit` (UCUM or alias as in vendor profiles, or the MDC unit
//!   code), optional `device_time` (`YYYY-MM-DDThh:mm:ss`, the device's local time), `status`
//!   (at most 16 flags, printable ASCII without spaces, ≤ 64 characters each), `record` (the
//!   device's own sequence or record number, a whole number: kept as status `record=N`, as
//!   glucose RACP records are, so upstream sees gaps at the device).
//! - waveform (added to version 1; an older wardgate refuses the line as an unknown type): the
//!   sample array of one period, IEEE 11073 RT-SA ([`Waveform`]): `code`, `unit`, `device_time`,
//!   `status`, `record` as for an observation, no `value`; `period_us` (time between two
//!   samples, µs, > 0), `scale` and `offset` (physical = offset + scale × sample, in `unit`;
//!   default 1 and 0), `samples` (1 to [`crate::observation::MAX_WAVEFORM_SAMPLES`] whole
//!   numbers, i32, oldest first). The plug-in writes the line when the period's last sample
//!   is taken: wardgate stamps the first sample at arrival − (n − 1) × period.
//! - event: `kind` `connected`, `disconnected` or `error`; optional `detail` (text for
//!   installers, at most 200 characters; never patient values).
//! - Any other key is an error (a misspelt optional key would otherwise be lost silently).
//!
//! wardgate → plug-in (stdin), one line per command:
//! `{"v":1,"type":"send_bytes","data":"<base64>"}` ([`DeviceCommand::SendBytes`]). A plug-in
//! ignores types it does not know.

use crate::ble::decode::vendor::{parse_unit, MdcCode};
use crate::observation::{EventKind, Reading, Unit, Waveform};
use crate::serial::protocols::lines::map::is_status_text;
use crate::serial::protocols::lines::time::parse_device_time;
use crate::DeviceCommand;
use serde::Deserialize;

/// The schema version this wardgate reads and writes.
pub const SCHEMA_VERSION: u64 = 1;
/// Most status flags on one observation.
pub const MAX_STATUS: usize = 16;
/// Longest event detail kept, characters.
pub const MAX_DETAIL: usize = 200;

/// A line a plug-in wrote, understood.
#[derive(Clone, Debug, PartialEq)]
pub enum PluginMessage {
    /// A reading.
    Observation {
        /// Index into `[[exec]] devices`, or `None` for the plug-in itself.
        device: Option<usize>,
        /// The reading (status includes `record=N`).
        reading: Reading,
    },
    /// The sample array of one period (`"type":"waveform"`).
    Waveform {
        /// Index into `[[exec]] devices`, or `None` for the plug-in itself.
        device: Option<usize>,
        /// Code, unit, device time and status; `value` is the physical value of sample 0.
        reading: Reading,
        /// The array (checked: [`Waveform::problem`] is `None`).
        waveform: Waveform,
    },
    /// A device event.
    Event {
        /// Index into `[[exec]] devices`, or `None` for the plug-in itself.
        device: Option<usize>,
        /// `connected`, `disconnected` or `error`.
        kind: EventKind,
        /// Text for installers (cut to [`MAX_DETAIL`] characters, control characters replaced).
        detail: String,
    },
}

/// A unit as a plug-in writes it.
#[derive(Deserialize)]
#[serde(untagged)]
enum UnitSpec {
    Code(u32),
    Name(String),
}

/// The wire form of every line (all keys of every type; which belong where is checked after).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    v: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind_of: Option<String>,
    device: Option<String>,
    code: Option<MdcCode>,
    value: Option<f64>,
    unit: Option<UnitSpec>,
    device_time: Option<String>,
    status: Option<Vec<String>>,
    record: Option<u64>,
    period_us: Option<u32>,
    scale: Option<f64>,
    offset: Option<f64>,
    samples: Option<Vec<i32>>,
    kind: Option<String>,
    detail: Option<String>,
}

/// Only `v`, for the error path.
#[derive(Deserialize)]
struct VersionOnly {
    v: Option<serde_json::Value>,
}

fn version_problem(v: Option<&serde_json::Value>) -> Option<String> {
    match v {
        None => Some("no \"v\": every line is an object starting {\"v\":1,".into()),
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(SCHEMA_VERSION) => None,
        Some(other) => Some(format!(
            "schema version {} is not {SCHEMA_VERSION}, the one this wardgate reads",
            other.to_string().chars().take(20).collect::<String>()
        )),
    }
}

/// Parses one stdout line of a plug-in (`\n` removed; a trailing `\r` and spaces are
/// tolerated). `devices` is `[[exec]] devices`. Errors in words, for the installer.
pub fn parse_line(line: &[u8], devices: &[String]) -> Result<PluginMessage, String> {
    if !line.trim_ascii_start().starts_with(b"{") {
        // serde would take a JSON array for a struct, field by field: not our format.
        return Err(match serde_json::from_slice::<serde_json::Value>(line) {
            Err(e) => format!("not a JSON object: {e}"),
            Ok(_) => "not a JSON object (each line is one {…})".into(),
        });
    }
    let w: Wire = match serde_json::from_slice(line) {
        Ok(w) => w,
        Err(e) => {
            // A line of another schema version says so, whatever else is wrong with it.
            if let Ok(v) = serde_json::from_slice::<VersionOnly>(line) {
                if let Some(p) = version_problem(v.v.as_ref()) {
                    return Err(p);
                }
            }
            return Err(if e.is_syntax() || e.is_eof() {
                format!("not a JSON object: {e}")
            } else {
                data_error(&e)
            });
        }
    };
    if let Some(p) = version_problem(w.v.as_ref()) {
        return Err(p);
    }
    let device = match (&w.device, devices.is_empty()) {
        // A reading must say whose it is; an event without one is the plug-in's own.
        (None, false) if w.kind_of.as_deref() != Some("event") => {
            return Err(format!(
                "no \"device\": this plug-in has [[exec]] devices ({}); each reading names one",
                devices.join(", ")
            ))
        }
        (None, _) => None,
        (Some(d), true) => {
            return Err(format!(
                "\"device\": {:?}, but this plug-in has no devices (set [[exec]] devices, or leave \"device\" out)",
                short(d)
            ))
        }
        (Some(d), false) => Some(devices.iter().position(|x| x == d).ok_or_else(|| {
            format!(
                "\"device\": {:?} is not one of [[exec]] devices ({})",
                short(d),
                devices.join(", ")
            )
        })?),
    };
    let not_here = |what: &str, keys: &[(&str, bool)]| -> Result<(), String> {
        match keys.iter().find(|(_, set)| *set) {
            Some((k, _)) => Err(format!("\"{k}\" is not part of {what}")),
            None => Ok(()),
        }
    };
    match w.kind_of.as_deref() {
        Some("observation") => {
            not_here(
                "an observation",
                &[
                    ("kind", w.kind.is_some()),
                    ("detail", w.detail.is_some()),
                    ("period_us", w.period_us.is_some()),
                    ("scale", w.scale.is_some()),
                    ("offset", w.offset.is_some()),
                    ("samples", w.samples.is_some()),
                ],
            )?;
            let value = w.value.ok_or("an observation needs \"value\" (a number)")?;
            if !value.is_finite() {
                return Err("\"value\" is not a finite number".into());
            }
            let reading = reading(
                value,
                w.code.as_ref(),
                w.unit,
                w.device_time,
                w.status,
                w.record,
            )?;
            Ok(PluginMessage::Observation { device, reading })
        }
        Some("event") => {
            not_here(
                "an event",
                &[
                    ("code", w.code.is_some()),
                    ("value", w.value.is_some()),
                    ("unit", w.unit.is_some()),
                    ("device_time", w.device_time.is_some()),
                    ("status", w.status.is_some()),
                    ("record", w.record.is_some()),
                    ("period_us", w.period_us.is_some()),
                    ("scale", w.scale.is_some()),
                    ("offset", w.offset.is_some()),
                    ("samples", w.samples.is_some()),
                ],
            )?;
            let kind = match w.kind.as_deref() {
                Some("connected") => EventKind::Connected,
                Some("disconnected") => EventKind::Disconnected,
                Some("error") => EventKind::Error,
                Some(other) => {
                    return Err(format!(
                        "event \"kind\": {:?} is not connected, disconnected or error",
                        short(other)
                    ))
                }
                None => return Err("an event needs \"kind\"".into()),
            };
            let detail = w
                .detail
                .unwrap_or_default()
                .chars()
                .take(MAX_DETAIL)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            Ok(PluginMessage::Event {
                device,
                kind,
                detail,
            })
        }
        Some("waveform") => {
            not_here(
                "a waveform",
                &[
                    ("kind", w.kind.is_some()),
                    ("detail", w.detail.is_some()),
                    ("value", w.value.is_some()),
                ],
            )?;
            let waveform = Waveform {
                period_us: w
                    .period_us
                    .ok_or("a waveform needs \"period_us\" (µs, > 0)")?,
                scale: w.scale.unwrap_or(1.0),
                offset: w.offset.unwrap_or(0.0),
                samples: w
                    .samples
                    .ok_or("a waveform needs \"samples\" (whole numbers)")?,
            };
            if let Some(p) = waveform.problem() {
                return Err(p);
            }
            let value = waveform.physical(waveform.samples[0]);
            if !value.is_finite() {
                return Err("the first sample's physical value is not a finite number".into());
            }
            let reading = reading(
                value,
                w.code.as_ref(),
                w.unit,
                w.device_time,
                w.status,
                w.record,
            )?;
            Ok(PluginMessage::Waveform {
                device,
                reading,
                waveform,
            })
        }
        Some(other) => Err(format!(
            "\"type\": {:?} is not observation, waveform or event",
            short(other)
        )),
        None => Err("no \"type\" (observation, waveform or event)".into()),
    }
}

/// The time of a waveform line's first sample, ms since the Unix epoch: the line arrived at
/// `arrival_ms`, right after its last sample was taken, so sample 0 is (n − 1) periods earlier
/// (rounded down to the ms).
pub fn first_sample_ms(arrival_ms: i64, waveform: &Waveform) -> i64 {
    waveform.first_sample_ms(arrival_ms)
}

/// The reading of an observation or a waveform (`value`: the observation's, or the waveform's
/// first sample in physical units): code, unit, device time, status with `record=N` checked.
fn reading(
    value: f64,
    code: Option<&MdcCode>,
    unit: Option<UnitSpec>,
    device_time: Option<String>,
    status: Option<Vec<String>>,
    record: Option<u64>,
) -> Result<Reading, String> {
    let code = code
        .ok_or("needs \"code\"")?
        .resolve()
        .map_err(|e| format!("\"code\": {e}"))?;
    let unit = match unit.ok_or("needs \"unit\"")? {
        UnitSpec::Code(c) => {
            Unit::from_mdc(c).ok_or_else(|| format!("\"unit\": no unit has MDC code {c}"))?
        }
        UnitSpec::Name(n) => parse_unit(&n).map_err(|e| format!("\"unit\": {e}"))?,
    };
    let device_time = device_time.as_deref().map(parse_device_time).transpose()?;
    let mut status = status.unwrap_or_default();
    if status.len() > MAX_STATUS {
        return Err(format!("more than {MAX_STATUS} status flags"));
    }
    if let Some(s) = status.iter().find(|s| !is_status_text(s)) {
        return Err(format!(
            "status flag {:?} is not printable ASCII without spaces, at most 64 characters",
            short(s)
        ));
    }
    if let Some(r) = record {
        status.push(format!("record={r}"));
    }
    Ok(Reading {
        code,
        value,
        unit,
        device_time,
        status,
    })
}

/// A serde_json data error in words without the value it is about (a plug-in's values are
/// patient values; install.md §6 promises none in logs at the default level): the kind of
/// problem, the column and what was expected, e.g. `a value of the wrong type at column 23
/// (expected a number)`. Messages that name only a field (`missing field`, `unknown field`,
/// `duplicate field`) are kept as serde_json words them.
fn data_error(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let msg = full
        .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
        .unwrap_or(&full);
    let at = format!("at column {}", e.column());
    if ["missing field", "unknown field", "duplicate field"]
        .iter()
        .any(|p| msg.starts_with(p))
    {
        return format!("{msg} {at}");
    }
    let what = if msg.starts_with("invalid type") {
        "a value of the wrong type"
    } else if msg.starts_with("invalid value") {
        "a value out of range"
    } else if msg.starts_with("invalid length") {
        "an array of the wrong length"
    } else if msg.starts_with("number out of range") {
        "a number out of range"
    } else if msg.starts_with("data did not match any variant") {
        "a value of the wrong type"
    } else {
        "a value that cannot be read"
    };
    match msg.rsplit_once(", expected ") {
        Some((_, expected)) => format!("{what} {at} (expected {})", expected_in_words(expected)),
        None => format!("{what} {at}"),
    }
}

/// serde's name of what it expected, for installers: `f64` → `a number`.
fn expected_in_words(expected: &str) -> &str {
    match expected {
        "f64" | "f32" => "a number",
        "i32" => "a whole number from -2147483648 to 2147483647",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" => "a whole number from 0 to 18446744073709551615",
        "a sequence" => "an array",
        other => other,
    }
}

/// At most 40 characters of a plug-in's text, for messages.
fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

/// The stdin line for a command (with its `\n`), or `None` for a command a plug-in cannot take
/// ([`DeviceCommand::OpenSmp`]: firmware updates go through serial adapters only).
pub fn encode_command(cmd: &DeviceCommand) -> Option<Vec<u8>> {
    use base64::Engine;
    match cmd {
        DeviceCommand::SendBytes(bytes) => {
            let line = serde_json::json!({
                "v": SCHEMA_VERSION,
                "type": "send_bytes",
                "data": base64::engine::general_purpose::STANDARD.encode(bytes),
            });
            let mut out = line.to_string().into_bytes();
            out.push(b'\n');
            Some(out)
        }
        DeviceCommand::OpenSmp(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::{mdc, MAX_WAVEFORM_SAMPLES};

    /// Parsed as a plug-in with devices `pump-1`, `pump-2` when the line names a device, else
    /// as one without devices.
    fn ok(line: &str) -> PluginMessage {
        let devices: Vec<String> = if line.contains("\"device\"") {
            vec!["pump-1".into(), "pump-2".into()]
        } else {
            vec![]
        };
        parse_line(line.as_bytes(), &devices).unwrap_or_else(|e| panic!("{line}: {e}"))
    }
    /// Refused, as a plug-in with the device `pump-1` when the line names a device, else as
    /// one without devices.
    fn err(line: &str) -> String {
        let devices: Vec<String> = if line.contains("\"device\"") {
            vec!["pump-1".into()]
        } else {
            vec![]
        };
        parse_line(line.as_bytes(), &devices).unwrap_err()
    }

    #[test]
    fn observations_in_every_allowed_form() {
        assert_eq!(
            ok(
                r#"{"v":1,"type":"observation","code":"MDC_PULS_OXIM_SAT_O2","value":97,"unit":"%"}"#
            ),
            PluginMessage::Observation {
                device: None,
                reading: Reading {
                    code: mdc::SPO2,
                    value: 97.0,
                    unit: Unit::PERCENT,
                    device_time: None,
                    status: vec![]
                }
            }
        );
        assert_eq!(
            ok(
                r#"{"v":1,"type":"observation","device":"pump-2","code":150456,"value":96.5,"unit":262688,"device_time":"2024-06-10T06:13:20","status":["alarm"],"record":17}  "#
            ),
            PluginMessage::Observation {
                device: Some(1),
                reading: Reading {
                    code: mdc::SPO2,
                    value: 96.5,
                    unit: Unit::PERCENT,
                    device_time: Some("2024-06-10T06:13:20".into()),
                    status: vec!["alarm".into(), "record=17".into()]
                }
            }
        );
    }

    #[test]
    fn a_waveform_is_one_period_of_samples() {
        assert_eq!(
            ok(
                r#"{"v":1,"type":"waveform","device":"pump-1","code":"MDC_ECG_ELEC_POTL_II","unit":"mV","period_us":2778,"scale":0.005,"offset":-5.12,"samples":[975,981,987],"record":4}"#
            ),
            PluginMessage::Waveform {
                device: Some(0),
                reading: Reading {
                    code: mdc::ECG_ELEC_POTL_II,
                    // PROVENANCE of MIT-BIH 208: the first sample is −0.245 mV.
                    value: -5.12 + 0.005 * 975.0,
                    unit: Unit::MILLI_VOLT,
                    device_time: None,
                    status: vec!["record=4".into()]
                },
                waveform: Waveform {
                    period_us: 2778,
                    scale: 0.005,
                    offset: -5.12,
                    samples: vec![975, 981, 987]
                }
            }
        );
        // Scale and offset default to the raw samples themselves.
        let PluginMessage::Waveform {
            reading, waveform, ..
        } = ok(
            r#"{"v":1,"type":"waveform","code":150452,"unit":"1","period_us":16667,"samples":[-3]}"#,
        )
        else {
            panic!("not a waveform")
        };
        assert_eq!(
            (reading.value, waveform.scale, waveform.offset),
            (-3.0, 1.0, 0.0)
        );
        let full = vec!["1"; MAX_WAVEFORM_SAMPLES].join(",");
        assert!(matches!(
            ok(&format!(
                r#"{{"v":1,"type":"waveform","code":1,"unit":"1","period_us":1,"samples":[{full}]}}"#
            )),
            PluginMessage::Waveform { .. }
        ));
        for (line, why) in [
            (
                r#"{"v":1,"type":"waveform","code":1,"unit":"mV","samples":[1]}"#.to_string(),
                "needs \"period_us\"",
            ),
            (
                r#"{"v":1,"type":"waveform","code":1,"unit":"mV","period_us":1}"#.into(),
                "needs \"samples\"",
            ),
            (
                r#"{"v":1,"type":"waveform","code":1,"unit":"mV","period_us":1,"samples":[]}"#
                    .into(),
                "waveform without samples",
            ),
            (
                r#"{"v":1,"type":"waveform","code":1,"unit":"mV","period_us":0,"samples":[1]}"#
                    .into(),
                "sample period 0",
            ),
            (
                r#"{"v":1,"type":"waveform","code":1,"unit":"mV","period_us":1,"samples":[1.5]}"#
                    .into(),
                "a value of the wrong type at column 74 (expected a whole number from -2147483648 to 2147483647)",
            ),
            (
                r#"{"v":1,"type":"waveform","code":1,"unit":"mV","period_us":1,"samples":[2147483648]}"#
                    .into(),
                "a value out of range at column 81 (expected a whole number from -2147483648 to 2147483647)",
            ),
            (
                r#"{"v":1,"type":"waveform","code":1,"unit":"mV","period_us":1,"scale":1e308,"samples":[10]}"#
                    .into(),
                "physical value is not a finite number",
            ),
            (
                r#"{"v":1,"type":"waveform","code":1,"unit":"mV","period_us":1,"samples":[1],"value":1}"#
                    .into(),
                "\"value\" is not part of a waveform",
            ),
            (
                r#"{"v":1,"type":"waveform","unit":"mV","period_us":1,"samples":[1]}"#.into(),
                "needs \"code\"",
            ),
            (
                r#"{"v":1,"type":"observation","code":1,"value":1,"unit":"%","samples":[1]}"#
                    .into(),
                "\"samples\" is not part of an observation",
            ),
            (
                r#"{"v":1,"type":"event","kind":"error","period_us":1}"#.into(),
                "\"period_us\" is not part of an event",
            ),
            (
                format!(
                    r#"{{"v":1,"type":"waveform","code":1,"unit":"1","period_us":1,"samples":[{full},1]}}"#
                ),
                "waveform of 4097 samples (at most 4096)",
            ),
        ] {
            let e = err(&line);
            assert!(e.contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn a_waveform_is_stamped_at_its_first_sample() {
        let w = |n: usize, period_us: u32| Waveform {
            period_us,
            scale: 1.0,
            offset: 0.0,
            samples: vec![0; n],
        };
        // 360 samples at 360 Hz span 359 × 2,778 µs = 997.302 ms.
        assert_eq!(first_sample_ms(10_000, &w(360, 2778)), 10_000 - 998);
        assert_eq!(first_sample_ms(10_000, &w(61, 1000)), 10_000 - 60);
        assert_eq!(first_sample_ms(10_000, &w(1, 2778)), 10_000);
    }

    #[test]
    fn events() {
        assert_eq!(
            ok("{\"v\":1,\"type\":\"event\",\"kind\":\"error\",\"detail\":\"NAK\\nagain\"}\r"),
            PluginMessage::Event {
                device: None,
                kind: EventKind::Error,
                detail: "NAK again".into()
            }
        );
        assert_eq!(
            ok(r#"{"v":1,"type":"event","kind":"connected","device":"pump-1"}"#),
            PluginMessage::Event {
                device: Some(0),
                kind: EventKind::Connected,
                detail: String::new()
            }
        );
    }

    #[test]
    fn bad_lines_say_why() {
        for (line, why) in [
            ("", "not a JSON object: EOF"),
            ("hello", "not a JSON object: expected value"),
            (
                r#"{"v":2,"type":"observation","new_thing":1}"#,
                "schema version 2 is not 1",
            ),
            (
                r#"{"v":"1","type":"event","kind":"error"}"#,
                "schema version \"1\" is not 1",
            ),
            (r#"{"type":"event","kind":"error"}"#, "no \"v\""),
            (
                r#"{"v":1,"type":"observation","code":1,"valeu":2,"unit":"%"}"#,
                "unknown field `valeu`",
            ),
            (
                r#"{"v":1,"type":"observation","code":1,"unit":"%"}"#,
                "needs \"value\"",
            ),
            (
                r#"{"v":1,"type":"observation","code":1,"value":"97","unit":"%"}"#,
                "a value of the wrong type at column 49 (expected a number)",
            ),
            (
                r#"{"v":1,"type":"observation","code":1,"value":1e999,"unit":"%"}"#,
                "number out of range",
            ),
            (
                r#"{"v":1,"type":"observation","code":"SPO2","value":1,"unit":"%"}"#,
                "\"code\": unknown mdc name",
            ),
            (
                r#"{"v":1,"type":"observation","code":1,"value":1,"unit":"furlong"}"#,
                "\"unit\": unknown unit",
            ),
            (
                r#"{"v":1,"type":"observation","code":1,"value":1,"unit":12}"#,
                "no unit has MDC code 12",
            ),
            (
                r#"{"v":1,"type":"observation","code":1,"value":1,"unit":"%","device_time":"today"}"#,
                "device_time \"today\"",
            ),
            (
                r#"{"v":1,"type":"observation","code":1,"value":1,"unit":"%","status":["a b"]}"#,
                "status flag \"a b\"",
            ),
            (
                r#"{"v":1,"type":"observation","code":1,"value":1,"unit":"%","record":-1}"#,
                "a value out of range at column 69 (expected a whole number from 0 to 18446744073709551615)",
            ),
            (
                r#"{"v":1,"type":"observation","code":1,"value":1,"unit":"%","kind":"x"}"#,
                "\"kind\" is not part of an observation",
            ),
            (
                r#"{"v":1,"type":"event","kind":"connected","value":3}"#,
                "\"value\" is not part of an event",
            ),
            (
                r#"{"v":1,"type":"event","kind":"rejected"}"#,
                "is not connected, disconnected or error",
            ),
            (r#"{"v":1,"type":"event"}"#, "needs \"kind\""),
            (
                r#"{"v":1,"type":"hello"}"#,
                "\"type\": \"hello\" is not observation, waveform or event",
            ),
            (r#"{"v":1,"kind":"error"}"#, "no \"type\""),
            (
                r#"{"v":1,"type":"event","kind":"error","device":"pump-9"}"#,
                "not one of [[exec]] devices (pump-1)",
            ),
            (r#"[1]"#, "not a JSON object (each line"),
        ] {
            let e = err(line);
            assert!(e.contains(why), "{line}: {e}");
        }
        let e = parse_line(
            br#"{"v":1,"type":"event","kind":"error","device":"x"}"#,
            &[],
        )
        .unwrap_err();
        assert!(e.contains("has no devices"), "{e}");
        // A plug-in with devices names one on every reading; its own events need none.
        for line in [
            r#"{"v":1,"type":"observation","code":1,"value":1,"unit":"%"}"#,
            r#"{"v":1,"type":"waveform","code":1,"unit":"mV","period_us":1,"samples":[1]}"#,
        ] {
            let e = parse_line(line.as_bytes(), &["pump-1".into()]).unwrap_err();
            assert!(
                e.contains("no \"device\": this plug-in has [[exec]] devices (pump-1)"),
                "{e}"
            );
        }
        assert!(matches!(
            parse_line(
                br#"{"v":1,"type":"event","kind":"error","detail":"SDK"}"#,
                &["pump-1".into()]
            ),
            Ok(PluginMessage::Event { device: None, .. })
        ));
        let many: Vec<String> = (0..17).map(|i| format!("\"f{i}\"")).collect();
        let e = err(&format!(
            r#"{{"v":1,"type":"observation","code":1,"value":1,"unit":"%","status":[{}]}}"#,
            many.join(",")
        ));
        assert!(e.contains("more than 16"), "{e}");
    }

    #[test]
    fn bad_values_are_not_repeated() {
        for (line, value) in [
            (
                r#"{"v":1,"type":"observation","code":1,"value":"97","unit":"%"}"#,
                "97",
            ),
            (
                r#"{"v":1,"type":"waveform","code":1,"unit":"mV","period_us":1,"samples":[1,3000000000]}"#,
                "3000000000",
            ),
            (
                r#"{"v":1,"type":"waveform","code":1,"unit":"mV","period_us":1,"samples":[1,1.5]}"#,
                "1.5",
            ),
            (
                r#"{"v":1,"type":"observation","code":1,"value":[96],"unit":"%"}"#,
                "96",
            ),
            (
                r#"{"v":1,"type":"observation","code":1,"value":95,"unit":"%","record":-7}"#,
                "-7",
            ),
            (
                r#"{"v":1,"type":"observation","code":1,"value":94,"unit":"%","status":[93]}"#,
                "93",
            ),
            (
                r#"{"v":1,"type":"observation","code":{"x":92},"value":1,"unit":"%"}"#,
                "92",
            ),
            (
                r#"{"v":1,"type":"observation","code":1,"value":1,"unit":-91}"#,
                "91",
            ),
        ] {
            let e = err(line);
            assert!(!e.contains(value), "{line}: {e}");
            assert!(e.contains("at column"), "{line}: {e}");
        }
        // What names only a field is kept.
        let e = err(r#"{"v":1,"type":"event","kind":"error","kind":"error"}"#);
        assert!(e.starts_with("duplicate field `kind` at column"), "{e}");
    }

    #[test]
    fn commands_are_one_json_line() {
        let line = encode_command(&DeviceCommand::SendBytes(vec![0x7d, 0x81, 0xa1])).unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"data\":\"fYGh\",\"type\":\"send_bytes\",\"v\":1}\n"
        );
    }
}
