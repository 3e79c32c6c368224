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
/// Errors: unknown protocol name (a [`crate::cli::UsageError`]), read or write failures.
pub fn decode_protocol(
    protocol: &str,
    file: &Path,
    input: &mut dyn std::io::Read,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<DecodeSummary> {
    let name = protocol_by_name(protocol).ok_or_else(|| {
        crate::cli::UsageError(format!(
            "unknown protocol `{protocol}`: expected cms50, ansar-b or masimo"
        ))
    })?;
    let mut p = protocols::build(name);
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
        let n = input.read(&mut buf)?;
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
        for d in decoded.drain(..) {
            match d {
                Decoded::Reading(r) => {
                    summary.observations += 1;
                    let mut line = json!({
                        "device": device, "code": r.code, "value": r.value, "unit": r.unit.mdc, "ucum": r.unit.ucum, "status": r.status,
                    });
                    if let Some(t) = r.device_time {
                        line["device_time"] = t.into();
                    }
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
    }
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
