//! The three line syntaxes of the `lines` protocol, parsed far enough to look fields up:
//! JSON objects (RFC 8259, `serde_json`), CSV (RFC 4180 quoting: `"a ""b"", c"`), and
//! `key=value` pairs. Every value comes out as text, so the mapping treats `97`, `"97"` and
//! `spo2=97` alike. A key that appears twice in a line (`{"spo2":97,"spo2":12}`,
//! `SPO2=098% SPO2=050%`, at any depth of a JSON object) makes the line an error in both
//! syntaxes that have keys: which value the device meant is ambiguous (RFC 8259 §4: names
//! "SHOULD be unique", and receivers differ in which one they keep), and it is what two lines
//! run together look like. Pure, never panics.

use super::map::{CompiledMap, Source, Syntax};
use std::borrow::Cow;

/// A line parsed by its syntax.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A JSON object.
    Json(serde_json::Map<String, serde_json::Value>),
    /// CSV columns.
    Csv(Vec<Cow<'a, str>>),
    /// `key=value` pairs in line order, each key once.
    Kv(Vec<(&'a str, &'a str)>),
}

/// What a field's [`Source`] finds in a line.
#[derive(Debug, PartialEq)]
pub enum Found<'a> {
    /// The line does not have it.
    Missing,
    /// JSON `null`: present, no value.
    Null,
    /// A scalar, as text (a JSON number as written, a JSON string unquoted, `true`/`false`).
    Text(Cow<'a, str>),
    /// A JSON array or object where a scalar was expected.
    NotScalar(&'static str),
}

/// Parses `line` (trimmed, checksum removed) by the map's syntax. Errors in words.
pub fn parse<'a>(map: &CompiledMap, line: &'a str) -> Result<Parsed<'a>, String> {
    match map.syntax {
        Syntax::Json => match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(o)) => {
                // serde_json keeps the last of a duplicated key: look for one in a second pass.
                match serde_json::from_str::<UniqueKeys>(line) {
                    Ok(UniqueKeys) => Ok(Parsed::Json(o)),
                    Err(e) => {
                        let e = e.to_string();
                        Err(e
                            .rsplit_once(" at line ")
                            .map_or(e.as_str(), |(m, _)| m)
                            .to_string())
                    }
                }
            }
            Ok(other) => Err(format!(
                "not a JSON object but {}",
                match other {
                    serde_json::Value::Array(_) => "an array",
                    serde_json::Value::String(_) => "a string",
                    serde_json::Value::Number(_) => "a number",
                    serde_json::Value::Bool(_) => "a boolean",
                    _ => "null",
                }
            )),
            Err(e) => Err(format!("not JSON: {e}")),
        },
        Syntax::Csv => csv(line, map.csv_separator).map(Parsed::Csv),
        Syntax::Kv => {
            let pairs = kv(line, map.kv_separator.as_deref(), &map.assign);
            for (i, (k, _)) in pairs.iter().enumerate() {
                if pairs[..i].iter().any(|(seen, _)| seen == k) {
                    return Err(twice(k));
                }
            }
            Ok(Parsed::Kv(pairs))
        }
    }
}

/// The error of a key that appears twice in a line.
fn twice(key: &str) -> String {
    format!(
        "key {:?} appears twice in the line: which value is meant is ambiguous",
        key.chars().take(24).collect::<String>()
    )
}

/// Deserializes any JSON value, failing on an object with a key twice (at any depth); keeps
/// nothing.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if seen.contains(&k) {
                return Err(serde::de::Error::custom(twice(&k)));
            }
            map.next_value::<UniqueKeys>()?;
            seen.insert(k);
        }
        Ok(UniqueKeys)
    }
}

/// RFC 4180 fields: separated by `sep`; a field that starts with `"` runs to the closing `"`
/// (`""` inside is one `"`). Spaces around unquoted fields are trimmed.
fn csv(line: &str, sep: char) -> Result<Vec<Cow<'_, str>>, String> {
    let mut out = Vec::new();
    let mut rest = line;
    loop {
        let trimmed = rest.trim_start_matches([' ', '\t']);
        if let Some(q) = trimmed.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let after = loop {
                match chars.next() {
                    Some((i, '"')) => {
                        if q[i + 1..].starts_with('"') {
                            value.push('"');
                            chars.next();
                        } else {
                            break &q[i + 1..];
                        }
                    }
                    Some((_, c)) => value.push(c),
                    None => return Err("a quoted CSV field has no closing quote".into()),
                }
            };
            out.push(Cow::Owned(value));
            let after = after.trim_start_matches([' ', '\t']);
            if after.is_empty() {
                return Ok(out);
            }
            match after.strip_prefix(sep) {
                Some(r) => rest = r,
                None => return Err("text after a quoted CSV field's closing quote".into()),
            }
        } else {
            match rest.find(sep) {
                Some(i) => {
                    out.push(Cow::Borrowed(rest[..i].trim_matches([' ', '\t'])));
                    rest = &rest[i + sep.len_utf8()..];
                }
                None => {
                    out.push(Cow::Borrowed(rest.trim_matches([' ', '\t'])));
                    return Ok(out);
                }
            }
        }
    }
}

/// `key=value` pairs split by `sep` (or runs of spaces and tabs); words without `assign` are
/// skipped.
fn kv<'a>(line: &'a str, sep: Option<&str>, assign: &str) -> Vec<(&'a str, &'a str)> {
    let pair = |w: &'a str| {
        w.split_once(assign)
            .map(|(k, v)| (k.trim_matches([' ', '\t']), v.trim_matches([' ', '\t'])))
    };
    match sep {
        Some(s) => line.split(s).filter_map(pair).collect(),
        None => line
            .split([' ', '\t'])
            .filter(|w| !w.is_empty())
            .filter_map(pair)
            .collect(),
    }
}

impl Parsed<'_> {
    /// The value at `source`.
    pub fn get(&self, source: &Source) -> Found<'_> {
        match (self, source) {
            (Parsed::Json(o), Source::Key(path)) => {
                let mut v = None;
                let mut obj = Some(o);
                for k in path {
                    v = obj.and_then(|o| o.get(k.as_str()));
                    obj = match v {
                        Some(serde_json::Value::Object(inner)) => Some(inner),
                        _ => None,
                    };
                }
                match v {
                    None => Found::Missing,
                    Some(serde_json::Value::Null) => Found::Null,
                    Some(serde_json::Value::String(s)) => Found::Text(Cow::Borrowed(s)),
                    Some(serde_json::Value::Number(n)) => Found::Text(Cow::Owned(n.to_string())),
                    Some(serde_json::Value::Bool(b)) => {
                        Found::Text(Cow::Borrowed(if *b { "true" } else { "false" }))
                    }
                    Some(serde_json::Value::Array(_)) => Found::NotScalar("an array"),
                    Some(serde_json::Value::Object(_)) => Found::NotScalar("an object"),
                }
            }
            (Parsed::Csv(cols), Source::Column(c)) => match cols.get(*c) {
                Some(v) => Found::Text(Cow::Borrowed(v.as_ref())),
                None => Found::Missing,
            },
            (Parsed::Kv(pairs), Source::Key(k)) => {
                let key = k.first().map(String::as_str).unwrap_or_default();
                match pairs.iter().find(|(pk, _)| *pk == key) {
                    Some((_, v)) => Found::Text(Cow::Borrowed(v)),
                    None => Found::Missing,
                }
            }
            _ => Found::Missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_follow_rfc_4180_quoting() {
        let f = csv(r#"97, "72", "a ""quoted"", b",,x"#, ',').unwrap();
        assert_eq!(f, ["97", "72", "a \"quoted\", b", "", "x"]);
        assert!(csv(r#"1,"open"#, ',').is_err());
        assert!(csv(r#"1,"a"b,2"#, ',').is_err());
        assert_eq!(csv("a;b", ';').unwrap(), ["a", "b"]);
        assert_eq!(csv("", ',').unwrap(), [""]);
    }

    fn kv_map() -> CompiledMap {
        CompiledMap {
            syntax: Syntax::Kv,
            ..CompiledMap::unmapped()
        }
    }

    #[test]
    fn a_key_twice_is_refused_in_json_and_kv() {
        let json = CompiledMap {
            syntax: Syntax::Json,
            ..CompiledMap::unmapped()
        };
        let e = parse(&json, r#"{"spo2":97,"spo2":12,"pulse":72}"#).unwrap_err();
        assert_eq!(
            e,
            r#"key "spo2" appears twice in the line: which value is meant is ambiguous"#
        );
        let e = parse(&json, r#"{"a":{"b":1,"b":2}}"#).unwrap_err();
        assert!(e.starts_with(r#"key "b" appears twice"#), "{e}");
        assert!(parse(&json, r#"{"a":{"b":1},"c":{"b":2},"d":[{"b":1},{"b":2}]}"#).is_ok());
        let e = parse(&kv_map(), "SN=1 SPO2=098% SPO2=050% BPM=97").unwrap_err();
        assert_eq!(
            e,
            r#"key "SPO2" appears twice in the line: which value is meant is ambiguous"#
        );
        assert!(parse(&kv_map(), "SN=1 SPO2=098% BPM=97 spo2=1").is_ok());
    }

    #[test]
    fn kv_pairs_skip_bare_words() {
        assert_eq!(
            kv("12/01/05 11:56:29 SN=01 SPO2=098% BPM=240", None, "="),
            [("SN", "01"), ("SPO2", "098%"), ("BPM", "240")]
        );
        assert_eq!(
            kv("hr: 72; rr: 14", Some(";"), ":"),
            [("hr", "72"), ("rr", "14")]
        );
    }
}
