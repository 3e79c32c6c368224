//! The `lines` protocol: any device that prints ASCII lines — JSON objects, CSV, `key=value` —
//! decoded by a declarative mapping from the configuration (`[[lines_map]]`, [`map`]), the
//! way BLE vendor profiles describe GATT values (`ble::decode::vendor`).
//!
//! # Sources
//! There is no one standard: the syntaxes are RFC 8259 (JSON), RFC 4180 (CSV quoting) and the
//! `KEY=VALUE` style of bedside monitors' serial ports (the Masimo "ASCII 1" line of
//! [`super::masimo`] is one); NMEA 0183 §5.2.1 gives the `$…*hh` checksum convention
//! ([`checksum`]). What a device's lines mean comes from its manual, written down by the
//! installer as a map; `wardgate decode --protocol lines --map FILE CAPTURE` shows what a map
//! makes of a capture before it goes into service.
//!
//! # Decoding a line
//! 1. The stream is cut at the map's terminator ([`crate::framing::LineFramer`]); a line longer
//!    than `max_line` is an error and its bytes are dropped up to the next terminator.
//! 2. The line must be UTF-8; spaces (and a CR) around it are dropped; an empty line is skipped.
//! 3. Lines not starting with `line_prefix`, or starting with a `skip_prefix`, are skipped:
//!    well-formed, no readings, no error (banners, headers, other record types).
//! 4. The checksum, if configured, is checked and removed.
//! 5. The syntax is parsed ([`syntax`]; a key twice in a line refuses it) and every field
//!    looked up. A field that is missing (and not `optional`), not a number (or one a double
//!    cannot hold: `1e400` overflows, `1e-400` would become 0), outside its `range`, a bad time
//!    stamp, id, record number (or one above 2⁶⁴−1) or status value makes **the whole line** an
//!    error: no reading of it is kept, because a line that is not what the device sent (a cut, a
//!    shifted column) cannot be trusted in part. An `absent` value (or an empty one, or JSON
//!    `null`) is no reading and no error — except that an empty id, and an empty time or record
//!    field that is not `optional`, is an error: required means required.
//! 6. Out come, in order: [`Decoded::Identity`] of the `id` field (so the serial adapter's
//!    identity gate judges this very line), then one [`Decoded::Reading`] per measurement or
//!    event field that has a value, each with the line's device time and status flags (status
//!    fields, then `record=N` of the `record` field).
//!
//! Errors are [`Decoded::Error`] at the absolute offset of the line's first byte, saying which
//! field and why — never the value of a measurement (a patient value does not go into a log
//! line). The first line of a stream may be the tail of a line the device was sending when
//! the port opened: when it fails, it is skipped silently (as [`super::masimo`] does).
//!
//! Pure: no I/O, never panics (fuzzed: `fuzz/fuzz_targets/serial_lines.rs`); the same bytes in
//! any chunking give the same output.

pub mod checksum;
pub mod map;
pub mod syntax;
pub mod time;

use super::{Decoded, Protocol};
use crate::framing::{Framed, LineFramer};
use crate::observation::Reading;
use map::{CompiledMap, What};
use std::sync::Arc;
use syntax::Found;

pub use map::LinesMap;

/// The `lines` decoder for one connection (see the module documentation).
pub struct Lines {
    map: Arc<CompiledMap>,
    framer: LineFramer,
    /// Lines seen (decoded, skipped or refused), empty ones excluded.
    lines: u64,
    /// Lines decoded or skipped by prefix: well-formed.
    frames_ok: u64,
}

impl Lines {
    /// A decoder for `map` (compiled by [`LinesMap::compile`]).
    pub fn new(map: Arc<CompiledMap>) -> Lines {
        let framer = LineFramer::new(&map.terminator, map.max_line);
        Lines {
            map,
            framer,
            lines: 0,
            frames_ok: 0,
        }
    }

    /// The decoder of a `lines` device whose map is missing: every line is an error saying so.
    pub fn unmapped() -> Lines {
        Lines::new(Arc::new(CompiledMap::unmapped()))
    }

    /// The most bytes held at once (a partial line); at most `max_line` + the largest piece fed.
    pub fn buffered_high_water(&self) -> usize {
        self.framer.high_water()
    }
}

/// What became of one well-formed line.
#[derive(Debug, PartialEq, Eq)]
enum LineOutcome {
    /// Nothing in it (blank).
    Blank,
    /// Skipped by `line_prefix` / `skip_prefix`.
    Skipped,
    /// Decoded (it may have had no value present).
    Decoded,
}

impl Protocol for Lines {
    fn name(&self) -> &'static str {
        "lines"
    }

    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Decoded>) {
        self.framer.push(bytes);
        while let Some(framed) = self.framer.next_line() {
            match framed {
                Framed::Line { offset, bytes } => {
                    let first = self.lines == 0;
                    let mark = out.len();
                    match decode_line(&self.map, bytes, out) {
                        Ok(LineOutcome::Blank) => {}
                        Ok(_) => {
                            self.lines += 1;
                            self.frames_ok += 1;
                        }
                        Err(message) => {
                            self.lines += 1;
                            out.truncate(mark);
                            if !(first && offset == 0 && !self.map.unmapped) {
                                out.push(Decoded::Error { offset, message });
                            }
                        }
                    }
                }
                Framed::TooLong { offset, max_line } => {
                    self.lines += 1;
                    out.push(Decoded::Error {
                        offset,
                        message: format!("line longer than max_line ({max_line} bytes)"),
                    });
                }
            }
        }
    }

    fn reports_identity(&self) -> bool {
        self.map.has_id()
    }

    fn frames_ok(&self) -> u64 {
        self.frames_ok
    }

    fn bytes_discarded(&self) -> u64 {
        self.framer.discarded()
    }
}

/// Why a value's text is not a number [`number`] keeps.
#[derive(Debug, PartialEq, Eq)]
enum NotANumber {
    /// Not decimal text.
    Text,
    /// Too large for a double (`1e400`): it would become infinity.
    Overflow,
    /// Not zero, but too small for a double (`1e-400`): it would become 0.
    Underflow,
}

/// A measurement's number: decimal text (`-1.5`, `+72`, `3e2`) that a double holds: neither
/// infinite nor a non-zero number that would be stored as 0.
fn number(text: &str) -> Result<f64, NotANumber> {
    let ok = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    let v = ok
        .then(|| text.parse::<f64>().ok())
        .flatten()
        .ok_or(NotANumber::Text)?;
    if !v.is_finite() {
        return Err(NotANumber::Overflow);
    }
    if underflows(text, v) {
        return Err(NotANumber::Underflow);
    }
    Ok(v)
}

/// Whether decimal `text` that parsed as `v` names a non-zero number `v` lost (0).
fn underflows(text: &str, v: f64) -> bool {
    let mantissa = text.split(['e', 'E']).next().unwrap_or_default();
    v == 0.0 && mantissa.bytes().any(|b| (b'1'..=b'9').contains(&b))
}

/// The first JSON number in `line` (valid JSON) that is not zero but parses as 0 (`1e-400`):
/// serde_json would keep 0, which is not what the device printed.
fn json_underflow(line: &str) -> Option<&str> {
    let b = line.as_bytes();
    let (mut i, mut in_string) = (0, false);
    while i < b.len() {
        match b[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            c if !in_string && (c == b'-' || c.is_ascii_digit()) => {
                let start = i;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'.' | b'-' | b'+' | b'e' | b'E')
                {
                    i += 1;
                }
                let token = &line[start..i];
                if token.parse::<f64>().is_ok_and(|v| underflows(token, v)) {
                    return Some(token);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Decodes one line (terminator removed) into `out`; an error leaves partial output the caller
/// drops.
fn decode_line(
    map: &CompiledMap,
    raw: &[u8],
    out: &mut Vec<Decoded>,
) -> Result<LineOutcome, String> {
    let text = match std::str::from_utf8(raw) {
        Ok(t) => t,
        Err(e) => {
            let at = e.valid_up_to();
            return Err(format!(
                "byte 0x{:02X} at byte {} of the line is not UTF-8 text",
                raw.get(at).copied().unwrap_or(0),
                at
            ));
        }
    };
    let line = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if line.is_empty() {
        return Ok(LineOutcome::Blank);
    }
    if map.unmapped {
        return Err(
            "protocol lines has no map: set [[serial]] map to the name of a [[lines_map]]".into(),
        );
    }
    if map
        .line_prefix
        .as_deref()
        .is_some_and(|p| !line.starts_with(p))
        || map.skip_prefix.iter().any(|p| line.starts_with(p.as_str()))
    {
        return Ok(LineOutcome::Skipped);
    }
    let body = match &map.checksum {
        Some(c) => checksum::check(c.algorithm, &c.separator, c.start_after.as_deref(), line)?,
        None => line,
    };
    let parsed = syntax::parse(map, body)?;
    if map.syntax == map::Syntax::Json && json_underflow(body).is_some() {
        return Err(
            "a number in the line is too small to be told from 0 (underflow); it would be stored as 0"
                .into(),
        );
    }
    let mut id = None;
    let mut device_time = None;
    let mut record = None;
    let mut flags: Vec<String> = Vec::new();
    let mut readings: Vec<Reading> = Vec::new();
    for f in &map.fields {
        let value = match parsed.get(&f.source) {
            Found::Missing if f.optional => continue,
            Found::Missing => return Err(format!("field {:?} ({}) is missing", f.name, f.source)),
            Found::NotScalar(what) => {
                return Err(format!(
                    "field {:?} ({}) is {what}, not a value",
                    f.name, f.source
                ))
            }
            Found::Null => continue,
            Found::Text(t) => t,
        };
        let value = value.trim();
        let stripped = f
            .suffix
            .as_deref()
            .and_then(|s| value.strip_suffix(s))
            .unwrap_or(value)
            .trim();
        if stripped.is_empty()
            || f.absent
                .iter()
                .any(|a| a.as_str() == value || a.as_str() == stripped)
        {
            if f.what == What::Id {
                return Err(format!("field {:?} ({}) is empty", f.name, f.source));
            }
            // A required time or record field must have a value; its own `absent` markers
            // (and `optional = true`) say the device may leave it out.
            if stripped.is_empty() && !f.optional && matches!(f.what, What::Time(_) | What::Record)
            {
                return Err(format!(
                    "field {:?} ({}) is empty (set optional = true if the device may leave it empty)",
                    f.name, f.source
                ));
            }
            continue;
        }
        let field = |why: &str| format!("field {:?} ({}): {why}", f.name, f.source);
        match &f.what {
            What::Reading {
                code,
                unit,
                scale,
                add,
                range,
                event,
            } => {
                let unit_after_number = stripped
                    .starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
                    && stripped.ends_with(|c: char| !c.is_ascii_digit() && c != '.');
                let raw = number(stripped).map_err(|why| {
                    field(match why {
                        NotANumber::Overflow => "value is too large for a number (overflow)",
                        NotANumber::Underflow => {
                            "value is too small to be told from 0 (underflow); it would be stored as 0"
                        }
                        NotANumber::Text if f.suffix.is_none() && unit_after_number => {
                            "value is not a number (does the device add a unit? set suffix)"
                        }
                        NotANumber::Text => "value is not a number",
                    })
                })?;
                let v = raw * scale + add;
                if !v.is_finite() {
                    return Err(field("value is out of range once scaled"));
                }
                if let Some((lo, hi)) = range {
                    if v < *lo || v > *hi {
                        return Err(field(&format!(
                            "value is outside what the device can send ({lo} to {hi})"
                        )));
                    }
                }
                readings.push(Reading {
                    code: *code,
                    value: v,
                    unit: *unit,
                    device_time: None,
                    status: if *event {
                        vec![format!(
                            "{}{}",
                            crate::ble::decode::vendor::EVENT_STATUS_PREFIX,
                            f.name
                        )]
                    } else {
                        Vec::new()
                    },
                });
            }
            What::Id => {
                if !map::is_status_text(stripped) {
                    return Err(field(&format!(
                        "an id is printable text without spaces, at most {} characters",
                        map::MAX_TEXT
                    )));
                }
                id = Some(stripped.to_string());
            }
            What::Time(fmt) => device_time = Some(fmt.apply(stripped).map_err(|e| field(&e))?),
            What::Record => {
                // JSON gives an integer above 2^64 - 1 as a float (1.8446744073709552e19).
                let huge = stripped
                    .parse::<f64>()
                    .is_ok_and(|v| v >= 18_446_744_073_709_551_616.0 && v.fract() == 0.0);
                if !huge && !stripped.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(field("a record number is a whole number from 0"));
                }
                let n: u64 = stripped.parse().map_err(|_| {
                    field(&format!(
                        "the record number is too large (at most {})",
                        u64::MAX
                    ))
                })?;
                record = Some(n);
            }
            What::Status {
                values,
                bits,
                radix,
            } => {
                if *radix == 0 {
                    match values.get(stripped) {
                        Some(flag) if flag.is_empty() => {}
                        Some(flag) => flags.push(flag.clone()),
                        None => {
                            let flag = format!("{}={stripped}", f.name);
                            if !map::is_status_text(&flag) {
                                return Err(field(&format!(
                                    "a status value is printable text without spaces, at most {} characters with the field name",
                                    map::MAX_TEXT
                                )));
                            }
                            flags.push(flag);
                        }
                    }
                } else {
                    let digits = if *radix == 16 {
                        stripped
                            .strip_prefix("0x")
                            .or_else(|| stripped.strip_prefix("0X"))
                            .unwrap_or(stripped)
                    } else {
                        stripped
                    };
                    let n = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit()))
                        .then(|| u64::from_str_radix(digits, *radix).ok())
                        .flatten()
                        .ok_or_else(|| {
                            field(&format!(
                                "{:?} is not a base-{radix} bit field",
                                stripped.chars().take(24).collect::<String>()
                            ))
                        })?;
                    for bit in 0..64u32 {
                        if n >> bit & 1 == 1 {
                            match bits.iter().find(|(b, _)| *b == bit) {
                                Some((_, flag)) if flag.is_empty() => {}
                                Some((_, flag)) => flags.push(flag.clone()),
                                None => flags.push(format!("{}-bit{bit}", f.name)),
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(n) = record {
        flags.push(format!("record={n}"));
    }
    if let Some(id) = id {
        out.push(Decoded::Identity(id));
    }
    for mut r in readings {
        r.device_time.clone_from(&device_time);
        r.status.extend(flags.iter().cloned());
        out.push(Decoded::Reading(r));
    }
    Ok(LineOutcome::Decoded)
}

#[cfg(test)]
mod tests;
