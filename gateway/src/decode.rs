//! `wardgate decode --protocol P FILE`: runs a recording through the same decoder the serial
//! adapter uses and prints one JSON line per observation (`code`, `value`, `unit`, `ucum`,
//! `device`, `status`, `device_time`). Decoder errors go to stderr as `FILE: byte offset N:
//! message`; the device's reported identity as `FILE: device reports serial number S`.

use serde_json::json;
use std::io::Write;
use std::path::Path;
use wardgate_adapters::serial::protocols::{self, Decoded};
use wardgate_adapters::serial::ProtocolName;

/// Parses a protocol name as in the config (`cms50`, `ansar-b`, `masimo`).
pub fn protocol_by_name(name: &str) -> Option<ProtocolName> {
    match name {
        "cms50" => Some(ProtocolName::Cms50),
        "ansar-b" => Some(ProtocolName::AnsarB),
        "masimo" => Some(ProtocolName::Masimo),
        _ => None,
    }
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

/// Decodes `bytes` (raw, or ASCII hex) with `protocol`; writes JSON lines to `out` and problems
/// to `err`. Returns the number of decoder errors. Errors: unknown protocol name.
pub fn decode_protocol(
    protocol: &str,
    file: &Path,
    bytes: &[u8],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<usize> {
    let name = protocol_by_name(protocol).ok_or_else(|| {
        crate::cli::UsageError(format!(
            "unknown protocol `{protocol}`: expected cms50, ansar-b or masimo"
        ))
    })?;
    let data = maybe_hex(bytes).unwrap_or_else(|| bytes.to_vec());
    let mut p = protocols::build(name);
    let mut decoded = Vec::new();
    p.feed(&data, &mut decoded);
    let device = format!(
        "file:{}",
        file.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    );
    let mut errors = 0;
    for d in decoded {
        match d {
            Decoded::Reading(r) => {
                let mut line = json!({
                    "device": device, "code": r.code, "value": r.value, "unit": r.unit.mdc, "ucum": r.unit.ucum, "status": r.status,
                });
                if let Some(t) = r.device_time {
                    line["device_time"] = t.into();
                }
                writeln!(out, "{line}")?;
            }
            Decoded::Identity(s) => {
                writeln!(err, "{}: device reports serial number {s}", file.display())?
            }
            Decoded::Error { offset, message } => {
                errors += 1;
                writeln!(err, "{}: byte offset {offset}: {message}", file.display())?;
            }
        }
    }
    Ok(errors)
}
