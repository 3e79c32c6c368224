//! The `[[lines_map]]` schema: how the lines of a line-oriented device become readings, and
//! its checks ([`LinesMap::compile`]). See the parent module for the whole picture and
//! `config/profiles/lines-example.toml` for a commented example.
//!
//! ```toml
//! [[lines_map]]
//! name = "esp32-oximeter"            # what [[serial]] map = "…" names
//! syntax = "json"                    # json | csv | kv
//! terminator = "\n"                  # default "\n" (a CR before it is dropped); 1–8 bytes
//! max_line = 1024                    # bytes; longer lines are errors (16–65536, default 1024)
//! # separator = ","                  # csv: one character (default ","); kv: between pairs (default: spaces)
//! # assign = "="                     # kv: between key and value (default "=")
//! # line_prefix = "$VIT"             # decode only lines that start with this (others skipped)
//! # skip_prefix = ["#", "Time,"]     # skip banners, comments, CSV headers
//!
//! # [lines_map.checksum]             # optional; see checksum.rs
//! # algorithm = "xor8"               # xor8 | sum8 | crc16-xmodem | crc16-modbus | crc32
//! # separator = "*"                  # the hex checksum follows the last separator
//! # start_after = "$"                # covered bytes start after this prefix
//!
//! [[lines_map.field]]
//! name = "spo2"
//! key = "spo2"                       # json (dotted for nested objects) and kv; csv: column = N (1 = first)
//! kind = "measurement"               # measurement | event | id | time | record | status
//! mdc = "MDC_PULS_OXIM_SAT_O2"       # a number or a name of observation::mdc::NAMES
//! unit = "%"                         # UCUM or alias (vendor::parse_unit)
//! scale = 1.0                        # value = raw × scale + add
//! add = 0.0
//! range = [1, 100]                   # what the device can send (after scale and add); outside: the line is an error
//! absent = ["---", "-1"]             # texts meaning "no value now" (no reading, no error); "" always is
//! suffix = "%"                       # stripped from the value if present ("098%")
//! optional = false                   # may the field be missing from a line?
//! ```
//!
//! Kinds beyond `measurement`: `event` (as a measurement, status `event:<name>`; unit default
//! `1`), `id` (the device's own id or serial number, checked against `[[serial]]
//! serial_number` by the serial adapter's identity gate; a line without it, when it is
//! `optional`, is judged by the last id of the connection, as with the Masimo decoder), `time` (`format = "unix_s" | "unix_ms" | "unix_us" |
//! "iso8601" | "%d.%m.%Y %H:%M:%S"`, see [`super::time`]), `record` (the device's own sequence
//! or record number, a whole number, kept on every reading as status `record=N`, as glucose RACP
//! records are), `status` (flags on every reading of the line: `values = { "A" = "alarm", "0" =
//! "" }` maps whole values, `bits = { 0 = "alarm", 3 = "probe-off" }` with `radix = 16` maps the
//! bits of a number; anything unmapped becomes `<name>=<value>` or `<name>-bit<N>`).
//!
//! Room to grow: a later `kind = "waveform"` (an array of samples) and per-device settings such
//! as a location belong to the field list and to `[[serial]]` respectively; nothing here
//! assumes a line holds numerics only.

use super::checksum::Algorithm;
use super::time::TimeFormat;
use crate::ble::decode::vendor::{parse_unit, MdcCode};
use crate::observation::Unit;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Default longest line, bytes.
pub const DEFAULT_MAX_LINE: usize = 1024;
/// Bounds of `max_line`.
pub const MAX_LINE_RANGE: std::ops::RangeInclusive<usize> = 16..=65_536;
/// Longest id or status value kept from a line, characters.
pub const MAX_TEXT: usize = 64;

/// One `[[lines_map]]` table (see the module documentation).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinesMap {
    /// Unique name; `[[serial]] map` refers to it.
    pub name: String,
    /// Free text for installers (device, firmware, where the format came from).
    #[serde(default)]
    pub description: Option<String>,
    /// How a line is written.
    pub syntax: Syntax,
    /// End of a line; default `"\n"` (a `\r` before it is dropped with the spaces around the
    /// line).
    #[serde(default = "default_terminator")]
    pub terminator: String,
    /// Longest line, bytes ([`MAX_LINE_RANGE`]); default [`DEFAULT_MAX_LINE`].
    #[serde(default = "default_max_line")]
    pub max_line: usize,
    /// `csv`: the one character between columns (default `,`); `kv`: between pairs (default:
    /// any run of spaces or tabs).
    #[serde(default)]
    pub separator: Option<String>,
    /// `kv`: between key and value; default `=`.
    #[serde(default)]
    pub assign: Option<String>,
    /// Only lines that start with this are decoded; others are skipped (not errors).
    #[serde(default)]
    pub line_prefix: Option<String>,
    /// Lines that start with any of these are skipped (banners, comments, CSV headers).
    #[serde(default)]
    pub skip_prefix: Vec<String>,
    /// An optional checksum at the end of each line.
    #[serde(default)]
    pub checksum: Option<ChecksumSpec>,
    /// The fields (`[[lines_map.field]]`).
    #[serde(rename = "field", default)]
    pub fields: Vec<LineField>,
}

fn default_terminator() -> String {
    "\n".into()
}
fn default_max_line() -> usize {
    DEFAULT_MAX_LINE
}
fn one() -> f64 {
    1.0
}

/// How a line is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Syntax {
    /// One JSON object per line (RFC 8259), e.g. `{"spo2":97,"pulse":72}`.
    Json,
    /// Comma- (or other-) separated values (RFC 4180 quoting), e.g. `97,72,1718000000`.
    Csv,
    /// `key=value` pairs, e.g. `SPO2=97 PR=72`; words without the assign sign are ignored.
    Kv,
}

impl Syntax {
    /// The configuration spelling.
    pub fn name(self) -> &'static str {
        match self {
            Syntax::Json => "json",
            Syntax::Csv => "csv",
            Syntax::Kv => "kv",
        }
    }
}

/// `[lines_map.checksum]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksumSpec {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// What precedes the hex checksum (its last occurrence in the line); default `*`.
    #[serde(default = "default_checksum_separator")]
    pub separator: String,
    /// A prefix every line starts with that the checksum does not cover (NMEA's `$`).
    #[serde(default)]
    pub start_after: Option<String>,
}

fn default_checksum_separator() -> String {
    "*".into()
}

/// What a field is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    /// A measured level → one reading.
    #[default]
    Measurement,
    /// Something that happened → a reading with status `event:<name>`.
    Event,
    /// The device's own id or serial number.
    Id,
    /// The device's time stamp of the line.
    Time,
    /// The device's own sequence or record number → status `record=N` on every reading.
    Record,
    /// Status flags on every reading of the line.
    Status,
}

impl FieldKind {
    /// The configuration spelling.
    pub fn name(self) -> &'static str {
        match self {
            FieldKind::Measurement => "measurement",
            FieldKind::Event => "event",
            FieldKind::Id => "id",
            FieldKind::Time => "time",
            FieldKind::Record => "record",
            FieldKind::Status => "status",
        }
    }
}

/// One `[[lines_map.field]]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineField {
    /// Field name (unique in its map); used in messages, in `event:<name>` and in unmapped
    /// status values.
    pub name: String,
    /// `json` and `kv`: the key (`json`: `a.b` for `{"a":{"b":…}}`).
    #[serde(default)]
    pub key: Option<String>,
    /// `csv`: the column, 1 for the first.
    #[serde(default)]
    pub column: Option<usize>,
    /// What the field is; default `measurement`.
    #[serde(default)]
    pub kind: FieldKind,
    /// Measurements and events: the MDC code, a number or a name.
    #[serde(default)]
    pub mdc: Option<MdcCode>,
    /// Measurements (required) and events (default `1`): the unit.
    #[serde(default)]
    pub unit: Option<String>,
    /// value = raw × scale + add (default 1).
    #[serde(default = "one")]
    pub scale: f64,
    /// Added after scaling (default 0).
    #[serde(default)]
    pub add: f64,
    /// `[min, max]` the device can send, after scale and add; outside it the line is an error.
    #[serde(default)]
    pub range: Option<[f64; 2]>,
    /// Texts that mean "no value now": no reading and no error. The empty value always does.
    #[serde(default)]
    pub absent: Vec<String>,
    /// Stripped from the end of the value when present (`098%` with `suffix = "%"`).
    #[serde(default)]
    pub suffix: Option<String>,
    /// The field may be missing from a line (then it gives nothing).
    #[serde(default)]
    pub optional: bool,
    /// `time` fields: the format (see [`super::time`]).
    #[serde(default)]
    pub format: Option<String>,
    /// `status` fields: whole value → flag (`""`: normal, no flag).
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    /// `status` fields: bit number (0 = least significant) → flag of a numeric value (`""`: a bit
    /// that means normal operation, no flag).
    #[serde(default)]
    pub bits: BTreeMap<String, String>,
    /// `status` fields with `bits`: 10 (default) or 16 (a `0x` prefix is accepted).
    #[serde(default)]
    pub radix: Option<u32>,
}

/// A problem in a map: the key path inside the `[[lines_map]]` table (`field[2].mdc`) and what
/// is wrong.
pub type MapProblem = (String, String);

/// A checked map, ready to decode (see [`LinesMap::compile`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledMap {
    /// The map's name.
    pub name: String,
    /// Line syntax.
    pub syntax: Syntax,
    /// Line terminator bytes.
    pub terminator: Vec<u8>,
    /// Longest line, bytes.
    pub max_line: usize,
    /// `csv` column separator.
    pub csv_separator: char,
    /// `kv` pair separator (`None`: runs of spaces and tabs).
    pub kv_separator: Option<String>,
    /// `kv` assign sign.
    pub assign: String,
    /// See [`LinesMap::line_prefix`].
    pub line_prefix: Option<String>,
    /// See [`LinesMap::skip_prefix`].
    pub skip_prefix: Vec<String>,
    /// The checksum, if any.
    pub checksum: Option<ChecksumSpec>,
    /// The fields.
    pub fields: Vec<Field>,
    /// Set for the placeholder of a `lines` device without a map: every line is an error.
    pub unmapped: bool,
}

/// Where a field's value is in a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `json`: a key path (one element per nesting level); `kv`: one key.
    Key(Vec<String>),
    /// `csv`: a 0-based column.
    Column(usize),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Key(k) => write!(f, "key {}", k.join(".")),
            Source::Column(c) => write!(f, "column {}", c + 1),
        }
    }
}

/// A checked field.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// Its name.
    pub name: String,
    /// Where it is.
    pub source: Source,
    /// May be missing.
    pub optional: bool,
    /// Texts meaning "no value" (besides the empty text).
    pub absent: Vec<String>,
    /// Suffix stripped from the value.
    pub suffix: Option<String>,
    /// What it becomes.
    pub what: What,
}

/// What a checked field becomes.
#[derive(Clone, Debug, PartialEq)]
pub enum What {
    /// A reading (an event's carries status `event:<name>`).
    Reading {
        /// MDC code.
        code: u32,
        /// Unit.
        unit: Unit,
        /// Multiplier.
        scale: f64,
        /// Offset.
        add: f64,
        /// Valid values (inclusive), after scale and add.
        range: Option<(f64, f64)>,
        /// An event field.
        event: bool,
    },
    /// The device's id.
    Id,
    /// The line's time stamp.
    Time(TimeFormat),
    /// The device's record number.
    Record,
    /// Status flags.
    Status {
        /// Whole values → flag (`""`: none).
        values: BTreeMap<String, String>,
        /// Bit → flag.
        bits: Vec<(u32, String)>,
        /// Radix of a bit field (0: the field maps values, not bits).
        radix: u32,
    },
}

/// Whether `s` may be a status flag or part of one: printable ASCII without spaces, at most
/// [`MAX_TEXT`] characters.
pub fn is_status_text(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_TEXT && s.bytes().all(|b| b.is_ascii_graphic())
}

impl CompiledMap {
    /// Whether lines carry the device's id (a `kind = "id"` field).
    pub fn has_id(&self) -> bool {
        self.fields.iter().any(|f| f.what == What::Id)
    }

    /// The placeholder map of a `lines` device whose map is missing: decodes nothing, every
    /// line is an error saying so.
    pub fn unmapped() -> CompiledMap {
        CompiledMap {
            name: String::new(),
            syntax: Syntax::Kv,
            terminator: b"\n".to_vec(),
            max_line: DEFAULT_MAX_LINE,
            csv_separator: ',',
            kv_separator: None,
            assign: "=".into(),
            line_prefix: None,
            skip_prefix: Vec::new(),
            checksum: None,
            fields: Vec::new(),
            unmapped: true,
        }
    }
}

impl LinesMap {
    /// Every problem of the map (empty: none), each with its key path inside the table
    /// (`field[2].mdc`, `terminator`).
    pub fn problems(&self) -> Vec<MapProblem> {
        match self.compile() {
            Ok(_) => Vec::new(),
            Err(p) => p,
        }
    }

    /// The checked map, or every problem found. Checks: name; terminator 1–8 bytes;
    /// `max_line` in range; `separator`/`assign` only where the syntax takes them (a csv
    /// separator is one character, neither `"` nor part of the terminator); prefixes non-empty;
    /// the checksum separator non-empty; at least one field; field names unique; each field
    /// located as its syntax wants (`key` for json/kv, `column` ≥ 1 for csv); each kind with
    /// only its own settings (see [`FieldKind`]); codes, units, time formats and flags valid;
    /// at most one id, time and record field; no two fields at one column or key; a range with
    /// min < max.
    pub fn compile(&self) -> Result<CompiledMap, Vec<MapProblem>> {
        let mut errs: Vec<MapProblem> = Vec::new();
        let mut err = |k: &str, m: String| errs.push((k.to_string(), m));
        if self.name.trim().is_empty() {
            err("name", "name is empty".into());
        }
        let terminator = self.terminator.as_bytes().to_vec();
        if terminator.is_empty() || terminator.len() > crate::framing::MAX_TERMINATOR {
            err(
                "terminator",
                format!(
                    "terminator must be 1 to {} bytes, e.g. \"\\n\", \"\\r\\n\", \"\\u0003\"",
                    crate::framing::MAX_TERMINATOR
                ),
            );
        }
        if !MAX_LINE_RANGE.contains(&self.max_line) {
            err(
                "max_line",
                format!(
                    "max_line {} must be between {} and {} bytes",
                    self.max_line,
                    MAX_LINE_RANGE.start(),
                    MAX_LINE_RANGE.end()
                ),
            );
        }
        let mut csv_separator = ',';
        match (self.syntax, &self.separator) {
            (Syntax::Json, Some(_)) => err(
                "separator",
                "syntax json takes no separator (it is for csv and kv)".into(),
            ),
            (Syntax::Csv, Some(s)) => {
                let mut cs = s.chars();
                match (cs.next(), cs.next()) {
                    (Some(c), None) if c != '"' && !self.terminator.contains(c) => {
                        csv_separator = c
                    }
                    _ => err(
                        "separator",
                        format!(
                            "csv separator {s:?} must be one character, not `\"` and not part of the terminator"
                        ),
                    ),
                }
            }
            (Syntax::Kv, Some(s)) if s.is_empty() || s.len() > 4 => err(
                "separator",
                "kv separator must be 1 to 4 characters (absent: spaces)".into(),
            ),
            _ => {}
        }
        let assign = match (self.syntax, &self.assign) {
            (Syntax::Kv, Some(a)) if a.is_empty() || a.len() > 4 => {
                err("assign", "assign must be 1 to 4 characters".into());
                "=".to_string()
            }
            (Syntax::Kv, Some(a)) => a.clone(),
            (_, Some(_)) => {
                err("assign", "only syntax kv takes assign".into());
                "=".to_string()
            }
            (_, None) => "=".to_string(),
        };
        if self.line_prefix.as_deref() == Some("") {
            err("line_prefix", "line_prefix is empty; remove it".into());
        }
        for (i, p) in self.skip_prefix.iter().enumerate() {
            if p.is_empty() {
                err(
                    &format!("skip_prefix[{i}]"),
                    "an empty prefix would skip every line".into(),
                );
            }
        }
        if let Some(c) = &self.checksum {
            if c.separator.is_empty() || c.separator.len() > 4 {
                err(
                    "checksum.separator",
                    "the checksum separator must be 1 to 4 characters".into(),
                );
            }
            if c.start_after.as_deref() == Some("") {
                err(
                    "checksum.start_after",
                    "start_after is empty; remove it".into(),
                );
            }
        }
        if self.fields.is_empty() {
            err(
                "field",
                "no field: add at least one [[lines_map.field]]".into(),
            );
        }
        let mut fields = Vec::new();
        // Where each field reads its value, to refuse two fields reading one.
        let mut sources: Vec<(Source, &str)> = Vec::new();
        for (i, f) in self.fields.iter().enumerate() {
            let at = |k: &str| {
                if k.is_empty() {
                    format!("field[{i}]")
                } else {
                    format!("field[{i}].{k}")
                }
            };
            if f.name.trim().is_empty() {
                err(&at("name"), "name is empty".into());
            } else if !is_status_text(&f.name) {
                err(
                    &at("name"),
                    format!(
                        "field name {:?} must be printable, without spaces, at most {MAX_TEXT} characters",
                        f.name
                    ),
                );
            }
            if self.fields[..i].iter().any(|g| g.name == f.name) {
                err(
                    &at("name"),
                    format!("field name {:?} is used twice", f.name),
                );
            }
            let once = [FieldKind::Id, FieldKind::Time, FieldKind::Record];
            if once.contains(&f.kind) && self.fields[..i].iter().any(|g| g.kind == f.kind) {
                err(
                    &at("kind"),
                    format!("a line has at most one {} field", f.kind.name()),
                );
            }
            let source = match (self.syntax, &f.key, f.column) {
                (Syntax::Csv, None, Some(c)) if c >= 1 => Some(Source::Column(c - 1)),
                (Syntax::Csv, None, Some(_)) => {
                    err(&at("column"), "columns count from 1".into());
                    None
                }
                (Syntax::Csv, Some(_), _) => {
                    err(
                        &at("key"),
                        "syntax csv locates fields by column = N (1 = first), not key".into(),
                    );
                    None
                }
                (Syntax::Csv, None, None) => {
                    err(&at(""), "give the field's column = N (1 = first)".into());
                    None
                }
                (_, _, Some(_)) => {
                    err(
                        &at("column"),
                        format!(
                            "syntax {} locates fields by key, not column",
                            self.syntax.name()
                        ),
                    );
                    None
                }
                (_, Some(k), None) => {
                    let parts: Vec<String> = if self.syntax == Syntax::Json {
                        k.split('.').map(str::to_string).collect()
                    } else {
                        vec![k.clone()]
                    };
                    if k.is_empty() || parts.iter().any(String::is_empty) {
                        err(
                            &at("key"),
                            format!("key {k:?} is empty or has an empty part"),
                        );
                        None
                    } else {
                        Some(Source::Key(parts))
                    }
                }
                (_, None, None) => {
                    err(&at(""), "give the field's key".into());
                    None
                }
            };
            if let Some(src) = &source {
                if let Some((_, other)) = sources.iter().find(|(s, _)| s == src) {
                    let k = if matches!(src, Source::Column(_)) {
                        "column"
                    } else {
                        "key"
                    };
                    err(
                        &at(k),
                        format!("{src} is also field {other:?}'s: one value cannot be two fields"),
                    );
                } else {
                    sources.push((src.clone(), &f.name));
                }
            }
            match self.what(f) {
                Ok(what) => {
                    if let Some(source) = source {
                        fields.push(Field {
                            name: f.name.clone(),
                            source,
                            optional: f.optional,
                            absent: f.absent.clone(),
                            suffix: f.suffix.clone().filter(|s| !s.is_empty()),
                            what,
                        });
                    }
                }
                Err((k, m)) => err(&at(k), m),
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(CompiledMap {
            name: self.name.clone(),
            syntax: self.syntax,
            terminator,
            max_line: self.max_line,
            csv_separator,
            kv_separator: if self.syntax == Syntax::Kv {
                self.separator.clone()
            } else {
                None
            },
            assign,
            line_prefix: self.line_prefix.clone(),
            skip_prefix: self.skip_prefix.clone(),
            checksum: self.checksum.clone(),
            fields,
            unmapped: false,
        })
    }

    /// What field `f` becomes, or the first problem with its settings (key, message).
    fn what(&self, f: &LineField) -> Result<What, (&'static str, String)> {
        let kind = f.kind.name();
        let reading_only = [
            ("mdc", f.mdc.is_some()),
            ("unit", f.unit.is_some()),
            ("scale", f.scale != 1.0),
            ("add", f.add != 0.0),
            ("range", f.range.is_some()),
            ("suffix", f.suffix.is_some()),
        ];
        let status_only = [
            ("values", !f.values.is_empty()),
            ("bits", !f.bits.is_empty()),
            ("radix", f.radix.is_some()),
        ];
        let not_for = |pairs: &[(&'static str, bool)]| -> Result<(), (&'static str, String)> {
            match pairs.iter().find(|(_, set)| *set) {
                Some((k, _)) => Err((*k, format!("a {kind} field takes no {k}"))),
                None => Ok(()),
            }
        };
        if f.kind != FieldKind::Time && f.format.is_some() {
            return Err(("format", format!("a {kind} field takes no format")));
        }
        match f.kind {
            FieldKind::Measurement | FieldKind::Event => {
                not_for(&status_only)?;
                if !f.scale.is_finite() || f.scale == 0.0 {
                    return Err((
                        "scale",
                        format!("scale {} must be a finite, non-zero number", f.scale),
                    ));
                }
                if !f.add.is_finite() {
                    return Err(("add", format!("add {} must be a finite number", f.add)));
                }
                let code = f
                    .mdc
                    .as_ref()
                    .ok_or(("mdc", format!("a {kind} needs an mdc code")))?
                    .resolve()
                    .map_err(|m| ("mdc", m))?;
                let unit = match (&f.unit, f.kind) {
                    (Some(u), _) => parse_unit(u).map_err(|m| ("unit", m))?,
                    (None, FieldKind::Event) => Unit::DIMLESS,
                    (None, _) => {
                        return Err((
                            "unit",
                            "a measurement needs a unit (e.g. \"%\", \"{beat}/min\")".into(),
                        ))
                    }
                };
                let range = match f.range {
                    Some([lo, hi]) if lo.is_finite() && hi.is_finite() && lo < hi => Some((lo, hi)),
                    Some(_) => {
                        return Err((
                            "range",
                            "range must be [min, max], finite, min below max".into(),
                        ))
                    }
                    None => None,
                };
                Ok(What::Reading {
                    code,
                    unit,
                    scale: f.scale,
                    add: f.add,
                    range,
                    event: f.kind == FieldKind::Event,
                })
            }
            FieldKind::Id => {
                not_for(&reading_only)?;
                not_for(&status_only)?;
                if !f.absent.is_empty() {
                    return Err(("absent", "the id field takes no absent values".into()));
                }
                Ok(What::Id)
            }
            FieldKind::Time => {
                not_for(&reading_only)?;
                not_for(&status_only)?;
                let spec = f.format.as_deref().ok_or((
                    "format",
                    "a time field needs a format: unix_s, unix_ms, unix_us, iso8601 or a pattern"
                        .into(),
                ))?;
                TimeFormat::parse(spec)
                    .map(What::Time)
                    .map_err(|m| ("format", m))
            }
            FieldKind::Record => {
                not_for(&reading_only)?;
                not_for(&status_only)?;
                Ok(What::Record)
            }
            FieldKind::Status => {
                not_for(&reading_only)?;
                if !f.values.is_empty() && !f.bits.is_empty() {
                    return Err((
                        "bits",
                        "a status field maps values or bits, not both".into(),
                    ));
                }
                for (v, flag) in &f.values {
                    if !flag.is_empty() && !is_status_text(flag) {
                        return Err((
                            "values",
                            format!("flag {flag:?} (for {v:?}) must be printable, without spaces, at most {MAX_TEXT} characters"),
                        ));
                    }
                }
                let mut bits = Vec::new();
                for (b, flag) in &f.bits {
                    let n: u32 = b
                        .parse()
                        .ok()
                        .filter(|n| *n < 64)
                        .ok_or(("bits", format!("bit {b:?} is not a number from 0 to 63")))?;
                    if !flag.is_empty() && !is_status_text(flag) {
                        return Err((
                            "bits",
                            format!("flag {flag:?} (bit {n}) must be printable, without spaces, at most {MAX_TEXT} characters"),
                        ));
                    }
                    bits.push((n, flag.clone()));
                }
                bits.sort();
                let radix = match (f.radix, f.bits.is_empty()) {
                    (Some(_), true) => {
                        return Err(("radix", "radix goes with bits".into()));
                    }
                    (Some(r @ (10 | 16)), false) => r,
                    (Some(r), false) => {
                        return Err(("radix", format!("radix {r} is not 10 or 16")));
                    }
                    (None, false) => 10,
                    (None, true) => 0,
                };
                Ok(What::Status {
                    values: f.values.clone(),
                    bits,
                    radix,
                })
            }
        }
    }
}
