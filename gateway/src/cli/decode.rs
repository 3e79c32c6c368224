//! `wardgate decode --protocol P FILE`: runs a recording through the same decoder the serial
//! adapter uses and prints one JSON line per observation (`code`, `value`, `unit`, `ucum`,
//! `device`, `status`, `device_time`). A waveform (the CMS50's pleth, one array a second) is one
//! line too, its samples in one array: `value` is the first sample's, plus `period_us`, `scale`,
//! `offset` and `samples` (raw, oldest first). At the end of the file the decoder is flushed,
//! as the serial adapter does when the line goes quiet (the last partial array and numerics).
//! Decoder errors go to stderr as `FILE: byte offset N:
//! message`; the device's reported identity as `FILE: device reports serial number S`.
//!
//! `wardgate decode --protocol lines --map MAPFILE [--map-name NAME] FILE`: the same for a
//! line-oriented device, with the `[[lines_map]]` of MAPFILE (a snippet such as
//! `config/profiles/lines-example.toml`, or the gateway's own `wardgate.toml`); a map with
//! problems is refused as `check-config` would, each at `MAPFILE:line:col` (exit 2).
//!
//! `wardgate decode --profile NAME HEX`: decodes one BLE payload (a GATT notification value or
//! an advertisement field) with the pure decoders of `wardgate_adapters::ble` and prints the
//! same observation lines with `device` = `hex`; beacon formats first print one
//! `{"device":"hex","presence":{…}}` line. Errors: `hex: byte offset N: message` on stderr.

use crate::error::UsageError;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wardgate_adapters::ble::decode::advertisement::{self as adv, Beacon};
use wardgate_adapters::ble::decode::profiles::glucose;
use wardgate_adapters::ble::{DecodeError, Profile};
use wardgate_adapters::observation::Reading;
use wardgate_adapters::serial::protocols::lines::map::CompiledMap;
use wardgate_adapters::serial::protocols::lines::LinesMap;
use wardgate_adapters::serial::protocols::{self, Decoded};
use wardgate_adapters::serial::ProtocolName;

/// Parses a protocol name as in the config (`cms50`, `ansar-b`, `masimo`, `lines`).
pub fn protocol_by_name(name: &str) -> Option<ProtocolName> {
    ProtocolName::ALL.into_iter().find(|p| p.as_str() == name)
}

/// Largest map file read (as for a config file).
const MAX_MAP_FILE: u64 = crate::config::MAX_CONFIG_BYTES;

/// The `[[lines_map]]` named `name` in `file` (or its only one), compiled. Errors: the file
/// cannot be read or parsed, has no such map (or several and no name), or the map has
/// problems — as [`crate::config::Diagnostics`] at `file:line:col`, like `check-config`.
pub fn load_lines_map(
    file: &Path,
    name: Option<&str>,
) -> anyhow::Result<std::sync::Arc<CompiledMap>> {
    use crate::config::{positions, Diagnostic, Diagnostics, KeyPath};
    #[derive(serde::Deserialize)]
    struct MapFile {
        #[serde(default)]
        lines_map: Vec<LinesMap>,
    }
    let fail = |text: &str, span: Option<std::ops::Range<usize>>, m: String| {
        anyhow::Error::from(Diagnostics(vec![Diagnostic::at(file, text, span, m)]))
    };
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(
            std::fs::File::open(file).map_err(|e| fail("", None, format!("cannot read: {e}")))?,
            MAX_MAP_FILE,
        ),
        &mut text,
    )
    .map_err(|e| fail("", None, format!("cannot read: {e}")))?;
    let maps = toml::from_str::<MapFile>(&text)
        .map_err(|e| fail(&text, e.span(), e.message().trim().replace('\n', "; ")))?
        .lines_map;
    let names = || {
        maps.iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let index = match name {
        Some(n) => maps.iter().position(|m| m.name == n).ok_or_else(|| {
            fail(
                &text,
                None,
                format!("no [[lines_map]] named `{n}` here (there are: {})", names()),
            )
        })?,
        None if maps.len() == 1 => 0,
        None if maps.is_empty() => {
            return Err(fail(&text, None, "no [[lines_map]] in this file".into()))
        }
        None => {
            return Err(fail(
                &text,
                None,
                format!(
                    "{} maps here ({}): choose one with --map-name",
                    maps.len(),
                    names()
                ),
            ))
        }
    };
    let map = &maps[index];
    map.compile().map(std::sync::Arc::new).map_err(|problems| {
        let pos = positions::Positions::parse(&text);
        let at = KeyPath::of("lines_map").index(index);
        anyhow::Error::from(Diagnostics(
            problems
                .into_iter()
                .map(|(key, message)| {
                    let mut p = at.clone();
                    p.0.extend(KeyPath::parse(&key).0);
                    Diagnostic::at(
                        file,
                        &text,
                        pos.span(&p),
                        format!("lines_map `{}`: {message}", map.name),
                    )
                })
                .collect(),
        ))
    })
}

/// If `bytes` is ASCII hex (digits and whitespace only, even count), its decoded bytes.
pub fn maybe_hex(bytes: &[u8]) -> Option<Vec<u8>> {
    let digits: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    // A cut-off last byte (odd count) is dropped, like a cut-off frame.
    let even = &digits[..digits.len() & !1];
    hex::decode(even).ok()
}

/// What [`decode_protocol`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeSummary {
    /// Observations printed.
    pub observations: u64,
    /// Decoder errors (bad frames, checksums), each with its byte offset; only the first
    /// [`MAX_ERROR_LINES`] are printed.
    pub errors: u64,
}

/// Most decoder-error lines printed; the rest are counted in a summary line.
pub const MAX_ERROR_LINES: u64 = 20;

/// Decodes `input` (raw bytes, or ASCII hex) with `protocol`, in 64 KiB pieces so memory stays
/// bounded whatever the file size; writes JSON lines to `out` and problems to `err`.
///
/// Errors: unknown protocol name (a [`crate::error::UsageError`]), read or write failures.
/// `map`: the compiled map of protocol `lines` (required there, see [`load_lines_map`]).
pub fn decode_protocol(
    protocol: &str,
    map: Option<&std::sync::Arc<CompiledMap>>,
    file: &Path,
    input: &mut dyn std::io::Read,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<DecodeSummary> {
    let name = protocol_by_name(protocol).ok_or_else(|| {
        crate::error::UsageError(format!(
            "unknown protocol `{protocol}`: expected cms50, ansar-b, masimo or lines"
        ))
    })?;
    if name == ProtocolName::Lines && map.is_none() {
        return Err(crate::error::UsageError(
            "--protocol lines needs --map FILE (a file with [[lines_map]] tables)".into(),
        )
        .into());
    }
    let mut p = protocols::build_with(name, map);
    let device = format!(
        "file:{}",
        file.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    );
    let mut summary = DecodeSummary::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut decoded = Vec::new();
    let mut hex_mode: Option<bool> = None;
    let mut carry: Option<u8> = None;
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        // The first piece decides: ASCII hex (digits and whitespace only), or raw bytes.
        let is_hex = *hex_mode.get_or_insert_with(|| maybe_hex(chunk).is_some());
        if is_hex {
            let mut digits: Vec<u8> = carry
                .take()
                .into_iter()
                .chain(chunk.iter().copied().filter(|b| !b.is_ascii_whitespace()))
                .collect();
            if digits.len() % 2 == 1 {
                carry = digits.pop();
            }
            match hex::decode(&digits) {
                Ok(bytes) => p.feed(&bytes, &mut decoded),
                Err(e) => anyhow::bail!("{}: not ASCII hex after all: {e}", file.display()),
            }
        } else {
            p.feed(chunk, &mut decoded);
        }
        print_decoded(&mut decoded, &device, file, &mut summary, out, err)?;
    }
    p.flush(&mut decoded);
    print_decoded(&mut decoded, &device, file, &mut summary, out, err)?;
    if summary.errors > MAX_ERROR_LINES {
        writeln!(
            err,
            "{}: {} more decoder errors not shown ({} in all)",
            file.display(),
            summary.errors - MAX_ERROR_LINES,
            summary.errors
        )?;
    }
    Ok(summary)
}

/// Prints (and drains) decoder output: one JSON line per observation or waveform on `out`,
/// identities and errors (the first [`MAX_ERROR_LINES`]) on `err`.
fn print_decoded(
    decoded: &mut Vec<Decoded>,
    device: &str,
    file: &Path,
    summary: &mut DecodeSummary,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<()> {
    for d in decoded.drain(..) {
        match d {
            Decoded::Reading(r) => {
                summary.observations += 1;
                let mut line = json!({
                    "device": device, "code": r.code, "value": r.value, "unit": r.unit.mdc, "ucum": r.unit.ucum, "status": wardgate_adapters::plausibility::status_of(&r),
                });
                if let Some(t) = r.device_time {
                    line["device_time"] = t.into();
                }
                writeln!(out, "{line}")?;
            }
            Decoded::Waveform { reading, waveform } => {
                summary.observations += 1;
                let line = json!({
                    "device": device, "code": reading.code, "value": reading.value, "unit": reading.unit.mdc, "ucum": reading.unit.ucum, "status": wardgate_adapters::plausibility::status_of(&reading),
                    "period_us": waveform.period_us, "scale": waveform.scale, "offset": waveform.offset, "samples": waveform.samples,
                });
                writeln!(out, "{line}")?;
            }
            Decoded::Identity(s) => {
                if summary.observations == 0 {
                    writeln!(err, "{}: device reports serial number {s}", file.display())?;
                }
            }
            Decoded::Error { offset, message } => {
                summary.errors += 1;
                if summary.errors <= MAX_ERROR_LINES {
                    writeln!(err, "{}: byte offset {offset}: {message}", file.display())?;
                }
            }
        }
    }
    Ok(())
}

/// Beacon and advertisement formats `--profile` accepts besides the GATT [`Profile`]s.
pub const ADVERTISEMENT_PROFILES: [&str; 4] = ["ibeacon", "eddystone", "bthome", "advertisement"];

/// Every `--profile` name, comma-separated (for usage messages).
pub fn profile_names() -> String {
    Profile::ALL
        .iter()
        .map(|p| p.name())
        .chain(ADVERTISEMENT_PROFILES)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses the HEX argument: hex digits, optionally prefixed `0x`, optionally separated by
/// spaces, `:` or `-` (as BLE tools print them). The error's offset is the payload byte where
/// the bad digit sits.
pub fn parse_hex_arg(arg: &str) -> Result<Vec<u8>, DecodeError> {
    let trimmed = arg.trim();
    let body = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed);
    let mut digits = Vec::with_capacity(body.len());
    for c in body.chars() {
        if c.is_ascii_whitespace() || c == ':' || c == '-' {
            continue;
        }
        let Some(d) = c.to_digit(16) else {
            return Err(DecodeError::new(
                digits.len() / 2,
                format!("`{c}` is not a hex digit"),
            ));
        };
        digits.push(d as u8);
    }
    if digits.len() % 2 == 1 {
        return Err(DecodeError::new(
            digits.len() / 2,
            "odd number of hex digits (last byte cut off)",
        ));
    }
    Ok(digits.chunks_exact(2).map(|p| p[0] << 4 | p[1]).collect())
}

fn observation_line(r: &Reading) -> serde_json::Value {
    let mut line = json!({
        "device": "hex", "code": r.code, "value": r.value, "unit": r.unit.mdc, "ucum": r.unit.ucum, "status": wardgate_adapters::plausibility::status_of(r),
    });
    if let Some(t) = &r.device_time {
        line["device_time"] = t.clone().into();
    }
    line
}

/// The payload after an optional 2-byte little-endian identifier (company id or service UUID)
/// equal to `id`, and the offset where it starts.
fn strip_id(bytes: &[u8], id: u16) -> (&[u8], usize) {
    match bytes {
        [a, b, rest @ ..] if u16::from_le_bytes([*a, *b]) == id => (rest, 2),
        _ => (bytes, 0),
    }
}

/// What [`decode_profile`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProfileSummary {
    /// Observation lines printed.
    pub observations: u64,
    /// Presence lines printed (beacon formats).
    pub presence: u64,
    /// Decode errors printed (0 or, for `advertisement`, one per bad frame).
    pub errors: u64,
}

/// Decodes one BLE payload given as hex with the decoder named `profile` (see
/// [`profile_names`]), writing JSON lines to `out` and `hex: byte offset N: message` lines to
/// `err`.
///
/// - GATT profiles (`heart-rate` … `battery`): the characteristic value.
/// - `ibeacon`: Apple manufacturer data after the company id (`02 15 …`), with or without
///   the `4c 00` company id in front.
/// - `eddystone` / `bthome`: the service data, with or without the 16-bit UUID (`aa fe` /
///   `d2 fc`) in front.
/// - `advertisement`: a whole advertising payload (AD structures); prints an
///   `{"device":"hex","advertisement":{…}}` line, then every recognised beacon.
///
/// Errors: an unknown profile name ([`crate::error::UsageError`]); write failures.
pub fn decode_profile(
    profile: &str,
    hex_arg: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ProfileSummary> {
    decode_profile_with_key(profile, hex_arg, None, out, err)
}

/// [`decode_profile`] with a BTHome v2 encryption key (16 bytes) and the device's address
/// (`AA:BB:…` as written, the nonce's MAC) for encrypted `bthome` frames (AES-CCM, see
/// `wardgate_adapters::ble::decode::advertisement::bthome_crypto`).
pub fn decode_profile_with_key(
    profile: &str,
    hex_arg: &str,
    bthome_key: Option<([u8; 16], [u8; 6])>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ProfileSummary> {
    let gatt = Profile::from_name(profile);
    if gatt.is_none() && !ADVERTISEMENT_PROFILES.contains(&profile) {
        return Err(crate::error::UsageError(format!(
            "unknown profile `{profile}`: expected one of {}",
            profile_names()
        ))
        .into());
    }
    let mut summary = ProfileSummary::default();
    let bytes = match parse_hex_arg(hex_arg) {
        Ok(b) => b,
        Err(e) => {
            writeln!(err, "hex: {e}")?;
            summary.errors += 1;
            return Ok(summary);
        }
    };
    let mut beacons: Vec<Beacon> = Vec::new();
    let mut problems: Vec<DecodeError> = Vec::new();
    let mut readings: Vec<Reading> = Vec::new();
    let mut extra: Option<(&str, serde_json::Value)> = None;
    let shifted = |e: DecodeError, by: usize| DecodeError::new(e.offset + by, e.message);
    match (gatt, profile) {
        (Some(Profile::Glucose), _) => match glucose::parse(&bytes) {
            Ok(m) => {
                for r in glucose::readings(&m) {
                    let mut line = observation_line(&r);
                    line["sequence"] = m.sequence.into();
                    writeln!(out, "{line}")?;
                    summary.observations += 1;
                }
            }
            Err(e) => problems.push(e),
        },
        (Some(p), _) => match p.decode(&bytes) {
            Ok(r) if r.is_empty() => writeln!(
                err,
                "hex: no observations: only special values (NaN, NRes, ±INF) or an unsuccessful measurement"
            )?,
            Ok(r) => readings = r,
            Err(e) => problems.push(e),
        },
        (None, "ibeacon") => {
            let (payload, at) = strip_id(&bytes, adv::COMPANY_APPLE);
            match adv::parse_ibeacon(payload) {
                Ok(b) => beacons.push(Beacon::IBeacon(b)),
                Err(e) => problems.push(shifted(e, at)),
            }
        }
        (None, "eddystone") => {
            let (payload, at) = strip_id(&bytes, adv::UUID_EDDYSTONE);
            match adv::parse_eddystone(payload) {
                Ok(b) => beacons.push(Beacon::Eddystone(b)),
                Err(e) => problems.push(shifted(e, at)),
            }
        }
        (None, "bthome") => {
            let (payload, at) = strip_id(&bytes, adv::UUID_BTHOME);
            let parsed = match &bthome_key {
                Some((key, mac)) => adv::parse_bthome_with_key(payload, *mac, key),
                None => adv::parse_bthome(payload),
            };
            match parsed {
                Ok(b) => beacons.push(Beacon::BtHome(b)),
                Err(e) => problems.push(shifted(e, at)),
            }
        }
        _ => {
            match adv::decode_advertisement(&bytes) {
                Ok(a) => {
                    let u16s = |v: &[(u16, Vec<u8>)], key: &str| -> Vec<serde_json::Value> {
                        v.iter()
                        .map(|(id, d)| json!({ key: format!("0x{id:04x}"), "data": hex::encode(d) }))
                        .collect()
                    };
                    extra = Some((
                        "advertisement",
                        json!({
                            "flags": a.flags,
                            "service_uuids16": a.service_uuids16.iter().map(|u| format!("0x{u:04x}")).collect::<Vec<_>>(),
                            "local_name": a.local_name,
                            "tx_power_dbm": a.tx_power,
                            "manufacturer_data": u16s(&a.manufacturer_data, "company"),
                            "service_data": u16s(&a.service_data16, "uuid"),
                        }),
                    ));
                    beacons = a.beacons;
                    problems = a.problems;
                }
                Err(e) => problems.push(e),
            }
        }
    }
    if let Some((key, v)) = extra {
        let mut line = json!({ "device": "hex" });
        line[key] = v;
        writeln!(out, "{line}")?;
    }
    for b in &beacons {
        writeln!(
            out,
            "{}",
            json!({ "device": "hex", "presence": b.presence() })
        )?;
        summary.presence += 1;
        readings.extend(b.readings());
    }
    for r in &readings {
        writeln!(out, "{}", observation_line(r))?;
        summary.observations += 1;
    }
    for e in &problems {
        writeln!(err, "hex: {e}")?;
        summary.errors += 1;
    }
    Ok(summary)
}

/// `wardgate decode` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serial protocol: cms50, ansar-b, masimo or lines (with --map).
    #[arg(long, conflicts_with = "profile")]
    protocol: Option<String>,
    /// `--protocol lines`: a TOML file with `[[lines_map]]` tables (a snippet, or wardgate.toml).
    #[arg(long, value_name = "MAPFILE", conflicts_with = "profile")]
    map: Option<PathBuf>,
    /// Which `[[lines_map]]` of MAPFILE (needed when it has several).
    #[arg(long, value_name = "NAME", requires = "map")]
    map_name: Option<String>,
    /// BLE decoder: heart-rate, blood-pressure, cuff-pressure, thermometer, plx-spot,
    /// plx-continuous, weight, glucose, battery, ibeacon, eddystone, bthome, advertisement.
    #[arg(long)]
    profile: Option<String>,
    /// The recording (raw bytes, or ASCII hex); with --profile, the payload in hex (HEX).
    #[arg(value_name = "FILE|HEX")]
    file: PathBuf,
    /// `--profile bthome`: the device's 16-byte encryption key (bindkey), in hex.
    #[arg(long, requires = "mac")]
    key: Option<String>,
    /// `--profile bthome` with `--key`: the device's address, AA:BB:CC:DD:EE:FF.
    #[arg(long, requires = "key")]
    mac: Option<String>,
}

/// `wardgate decode`: exit 1 when a BLE payload had errors or a recording gave no observation.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if let Some(profile) = args.profile {
        if args.key.is_some() && profile != "bthome" {
            return Err(UsageError(format!(
                "--key and --mac decrypt BTHome v2 frames; profile `{profile}` takes neither"
            ))
            .into());
        }
        let bthome_key = match (args.key, args.mac) {
            (Some(k), Some(m)) => {
                let key: [u8; 16] = hex::decode(k.trim())
                    .ok()
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| {
                        UsageError("--key must be 16 bytes in hex (32 digits)".into())
                    })?;
                let mac = wardgate_adapters::ble::config::Address::parse(&m).map_err(UsageError)?;
                Some((key, mac.0))
            }
            _ => None,
        };
        let hex = args
            .file
            .to_str()
            .ok_or_else(|| UsageError(format!("HEX `{}` is not text", args.file.display())))?;
        let summary =
            decode_profile_with_key(&profile, hex, bthome_key, &mut out, &mut std::io::stderr())?;
        out.flush()?;
        return Ok(super::exit_if(summary.errors == 0));
    }
    let Some(protocol) = args.protocol else {
        return Err(UsageError(
            "decode needs --protocol cms50|ansar-b|masimo FILE, --protocol lines --map MAPFILE FILE, or --profile NAME HEX".into(),
        )
        .into());
    };
    let map = match (&args.map, protocol.as_str()) {
        (Some(m), "lines") => Some(load_lines_map(m, args.map_name.as_deref())?),
        (Some(_), _) => {
            return Err(UsageError(format!("--map is for --protocol lines, not {protocol}")).into())
        }
        (None, _) => None,
    };
    let file = args.file;
    let mut input =
        std::fs::File::open(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let summary = decode_protocol(
        &protocol,
        map.as_ref(),
        &file,
        &mut input,
        &mut out,
        &mut std::io::stderr(),
    )?;
    out.flush()?;
    if summary.observations == 0 {
        eprintln!("{}: no observations decoded as {protocol}", file.display());
        return Ok(ExitCode::from(crate::error::EXIT_FAILURE));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(profile: &str, hex: &str) -> (String, String, ProfileSummary) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let s = decode_profile(profile, hex, &mut out, &mut err).unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
            s,
        )
    }

    #[test]
    fn hex_argument_forms() {
        assert_eq!(
            parse_hex_arg("0x10-4E:D2 02").unwrap(),
            [0x10, 0x4e, 0xd2, 0x02]
        );
        assert_eq!(parse_hex_arg("").unwrap(), Vec::<u8>::new());
        let e = parse_hex_arg("10 4g").unwrap_err();
        assert_eq!(
            (e.offset, e.message.as_str()),
            (1, "`g` is not a hex digit")
        );
        assert_eq!(parse_hex_arg("104").unwrap_err().offset, 1);
    }

    #[test]
    fn gatt_profile_lines() {
        let (out, err, s) = run("heart-rate", "104ed202c802");
        assert_eq!(s.observations, 3);
        assert!(err.is_empty());
        let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(
            first,
            json!({"device":"hex","code":147842,"value":78.0,"unit":264864,"ucum":"/min","status":[]})
        );
        let (_, err, s) = run("blood-pressure", "03020304050607");
        assert_eq!(s.errors, 1);
        assert_eq!(
            err,
            "hex: byte offset 7: time stamp: needs 7 bytes, 0 left\n"
        );
    }

    #[test]
    fn glucose_carries_sequence() {
        let (out, _, s) = run("glucose", "1b0700e207041a0b091e1e005ab0110100");
        assert_eq!(s.observations, 1);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["sequence"], 7);
        assert_eq!(v["device_time"], "2018-04-26T11:39:30");
    }

    #[test]
    fn beacon_profiles() {
        let (out, _, s) = run(
            "ibeacon",
            "4c000215a495bb70c5b14b44b5121370f02d74de005806c8c5",
        );
        assert_eq!((s.presence, s.observations), (1, 0));
        assert!(out.contains("\"major\":88"));
        let (_, err, _) = run("ibeacon", "4c001015a495");
        assert_eq!(
            err,
            "hex: byte offset 2: not an iBeacon: type/length 10 15, expected 02 15\n"
        );
        let (out, _, s) = run("eddystone", "aafe20000b1813000000146700002ac4");
        // Temperature and battery voltage (issue 11 item 6).
        assert_eq!((s.presence, s.observations), (1, 2));
        assert!(out.contains("\"battery_mv\":2840"));
        let (out, _, s) = run("bthome", "4002ca0903bf13");
        // Temperature and humidity.
        assert_eq!(s.observations, 2);
        assert!(out.contains("\"humidity\""));
        let (out, _, s) = run(
            "advertisement",
            "02010603020d1807ff6b003b1b5452020a001209506f6c6172204837204437393034433134",
        );
        assert_eq!((s.presence, s.errors), (0, 0));
        assert!(out.contains("Polar H7 D7904C14"), "{out}");
    }

    #[test]
    fn encrypted_bthome_with_its_key() {
        // PROTOCOLS.md D-14 (bthome-ble test_bindkey_correct).
        let key: [u8; 16] = hex::decode("231d39c1d7cc1ab1aee224cd096db932")
            .unwrap()
            .try_into()
            .unwrap();
        let mac = [0x54, 0x48, 0xE6, 0x8F, 0x80, 0xA5];
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let s = decode_profile_with_key(
            "bthome",
            "d2fc41a47266c95f730011223378237214",
            Some((key, mac)),
            &mut out,
            &mut err,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!((s.observations, s.errors), (2, 0), "{out}");
        assert!(
            out.contains("\"counter\":857870592") && out.contains("25.06") && out.contains("50.55"),
            "{out}"
        );
        let mut wrong = key;
        wrong[0] ^= 1;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let s = decode_profile_with_key(
            "bthome",
            "41a47266c95f730011223378237214",
            Some((wrong, mac)),
            &mut out,
            &mut err,
        )
        .unwrap();
        assert_eq!(s.errors, 1);
        assert!(String::from_utf8(err).unwrap().contains("MIC mismatch"));
        let (_, err, s) = run("bthome", "41a47266c95f730011223378237214");
        assert_eq!(s.errors, 1);
        assert!(err.contains("key"), "{err}");
    }

    #[test]
    fn unknown_profile_is_a_usage_error() {
        let e = decode_profile("nope", "00", &mut Vec::new(), &mut Vec::new()).unwrap_err();
        assert!(e.downcast_ref::<crate::error::UsageError>().is_some());
    }
}
