//! The CBOR helpers the SMP payloads share: one item in, one item out, typed field access with
//! errors that name the field (PROTOCOLS §A.2, §A.3). Maps are keyed by text, as SMP's are.

use ciborium::Value;

/// Why a payload is not the map a command needs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    /// Not well-formed CBOR (or nested too deep).
    #[error("not CBOR: {0}")]
    Malformed(String),
    /// Bytes after the one item.
    #[error("{0} bytes after the CBOR item")]
    Trailing(usize),
    /// The item is not a map.
    #[error("the payload is not a map")]
    NotAMap,
    /// A required field is absent.
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    /// A field has another type or an out-of-range value.
    #[error("field `{0}` has the wrong type or range")]
    Type(&'static str),
}

/// One CBOR item as bytes.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail, and a `Value` always serialises.
    let _ = ciborium::into_writer(v, &mut out);
    out
}

/// Exactly one CBOR item that is a map.
pub fn decode_map(bytes: &[u8]) -> Result<Value, CborError> {
    let mut rest = bytes;
    let v: Value = ciborium::de::from_reader_with_recursion_limit(&mut rest, 32)
        .map_err(|e| CborError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CborError::Trailing(rest.len()));
    }
    if !v.is_map() {
        return Err(CborError::NotAMap);
    }
    Ok(v)
}

/// A map from `(key, value)` pairs (keys as text).
pub fn map(entries: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::Text(k.to_string()), v))
            .collect(),
    )
}

/// The value under text key `key` of a map (None when absent or `v` is not a map).
pub fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

/// An unsigned integer field that fits `u64`.
pub fn uint(v: &Value, key: &'static str) -> Result<Option<u64>, CborError> {
    match get(v, key) {
        None => Ok(None),
        Some(Value::Integer(i)) => u64::try_from(*i)
            .map(Some)
            .map_err(|_| CborError::Type(key)),
        Some(_) => Err(CborError::Type(key)),
    }
}

/// A signed integer field that fits `i64`.
pub fn int(v: &Value, key: &'static str) -> Result<Option<i64>, CborError> {
    match get(v, key) {
        None => Ok(None),
        Some(Value::Integer(i)) => i64::try_from(*i)
            .map(Some)
            .map_err(|_| CborError::Type(key)),
        Some(_) => Err(CborError::Type(key)),
    }
}

/// A boolean field; absent means `false` (the SMP rule for flags).
pub fn flag(v: &Value, key: &'static str) -> Result<bool, CborError> {
    match get(v, key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(CborError::Type(key)),
    }
}

/// An optional boolean field.
pub fn opt_bool(v: &Value, key: &'static str) -> Result<Option<bool>, CborError> {
    match get(v, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(CborError::Type(key)),
    }
}

/// A text field.
pub fn text(v: &Value, key: &'static str) -> Result<Option<String>, CborError> {
    match get(v, key) {
        None => Ok(None),
        Some(Value::Text(t)) => Ok(Some(t.clone())),
        Some(_) => Err(CborError::Type(key)),
    }
}

/// A byte-string field.
pub fn bytes(v: &Value, key: &'static str) -> Result<Option<Vec<u8>>, CborError> {
    match get(v, key) {
        None => Ok(None),
        Some(Value::Bytes(b)) => Ok(Some(b.clone())),
        Some(_) => Err(CborError::Type(key)),
    }
}

/// A `u32` field that must be present.
pub fn req_u32(v: &Value, key: &'static str) -> Result<u32, CborError> {
    let n = uint(v, key)?.ok_or(CborError::Missing(key))?;
    u32::try_from(n).map_err(|_| CborError::Type(key))
}
