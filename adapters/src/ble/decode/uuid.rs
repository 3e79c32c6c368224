//! The one BLE UUID type and its text form.
//!
//! Every UUID in the BLE code is a [`Uuid`] (the `uuid` crate's, which btleplug uses too). A
//! 16- or 32-bit UUID from the SIG Assigned Numbers (`0x2A37` Heart Rate Measurement) stands for
//! `x × 2^96 + BASE` on the Bluetooth Base UUID `00000000-0000-1000-8000-00805F9B34FB`
//! (Bluetooth Core Specification Vol 3 Part B §2.5.1): [`sig16`] / [`sig32`] expand a short
//! form, [`to_sig16`] gives it back. [`parse`] reads every text form a config or a CLI argument
//! uses; the text form out is `Uuid`'s `Display` (lower-case `8-4-4-4-12`).
//!
//! 16-bit numbers stay `u16` only where the air format carries 16 bits (the 16-bit service UUID
//! of an AD structure, in `advertisement/`).

use crate::ble::decode::DecodeError;
pub use ::uuid::Uuid;

/// The Bluetooth Base UUID `00000000-0000-1000-8000-00805F9B34FB` as a big-endian number.
pub const BASE_U128: u128 = 0x0000_0000_0000_1000_8000_0080_5F9B_34FB;

/// The Bluetooth Base UUID (the UUID of short form `0x0000`).
pub const BASE: Uuid = Uuid::from_u128(BASE_U128);

/// The full UUID of a 16-bit SIG UUID: `0000xxxx-0000-1000-8000-00805f9b34fb`.
pub const fn sig16(short: u16) -> Uuid {
    sig32(short as u32)
}

/// The full UUID of a 32-bit SIG UUID: `xxxxxxxx-0000-1000-8000-00805f9b34fb`.
pub const fn sig32(short: u32) -> Uuid {
    Uuid::from_u128(((short as u128) << 96) | BASE_U128)
}

/// The 16-bit form of a UUID on the Bluetooth Base UUID, if it is one.
pub fn to_sig16(u: Uuid) -> Option<u16> {
    let v = u.as_u128();
    let short = (v >> 96) as u32;
    (short <= 0xFFFF && v & !(0xFFFF_FFFFu128 << 96) == BASE_U128).then_some(short as u16)
}

/// Parses a UUID: 128-bit `8-4-4-4-12` (or 32 hex digits without hyphens), or a 16-bit (4 hex
/// digits) or 32-bit (8 hex digits) short form, optionally `0x`-prefixed, expanded on the
/// Bluetooth Base UUID. Case-insensitive; surrounding spaces ignored. Errors carry the character
/// offset in `text`.
pub fn parse(text: &str) -> Result<Uuid, DecodeError> {
    let lead = text.len() - text.trim_start().len();
    let t = text.trim();
    let (body, skip) = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(rest) => (rest, lead + 2),
        None => (t, lead),
    };
    let hyphenated = body.len() == 36;
    let mut v: u128 = 0;
    let mut digits = 0usize;
    for (i, c) in body.char_indices() {
        if hyphenated && matches!(i, 8 | 13 | 18 | 23) {
            if c != '-' {
                return Err(DecodeError::new(
                    skip + i,
                    format!("UUID: expected '-' at position {i} of xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"),
                ));
            }
            continue;
        }
        let d = c
            .to_digit(16)
            .ok_or_else(|| DecodeError::new(skip + i, format!("UUID: {c:?} is not a hex digit")))?;
        if digits >= 32 {
            return Err(DecodeError::new(skip + i, "UUID: more than 32 hex digits"));
        }
        v = (v << 4) | d as u128;
        digits += 1;
    }
    match (digits, hyphenated, t.len() != body.len()) {
        (4 | 8, false, _) => Ok(sig32(v as u32)),
        (32, _, false) => Ok(Uuid::from_u128(v)),
        _ => Err(DecodeError::new(
            skip,
            format!(
                "UUID: {digits} hex digits; expected 4 (16-bit), 8 (32-bit) or a 128-bit \
                 xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
            ),
        )),
    }
}

/// Parses only the full 128-bit `8-4-4-4-12` form (e.g. an iBeacon proximity UUID, which has no
/// short form); case-insensitive.
pub fn parse_128(text: &str) -> Result<Uuid, DecodeError> {
    if text.len() != 36 {
        return Err(DecodeError::new(
            0,
            "UUID: expected the 128-bit form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
        ));
    }
    parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sig_short_forms() {
        assert_eq!(to_sig16(sig16(0x2a37)), Some(0x2a37));
        assert_eq!(
            sig16(0x180d).to_string(),
            "0000180d-0000-1000-8000-00805f9b34fb"
        );
        assert_eq!(to_sig16(Uuid::from_u128(0x1234)), None);
        assert_eq!(to_sig16(sig32(0x1_0000)), None);
        assert_eq!(sig16(0), BASE);
    }

    #[test]
    fn text_forms() {
        assert_eq!(parse("2A37").unwrap(), sig16(0x2a37));
        assert_eq!(parse(" 0x2a37 ").unwrap(), sig16(0x2a37));
        assert_eq!(parse(" 0000FE50 ").unwrap(), sig16(0xfe50));
        let full = "5e1f0001-7c3a-4b8e-9d2f-1a2b3c4d5e6f";
        assert_eq!(parse(&full.to_uppercase()).unwrap().to_string(), full);
        assert_eq!(
            parse("5e1f00017c3a4b8e9d2f1a2b3c4d5e6f")
                .unwrap()
                .to_string(),
            full
        );
        assert_eq!(parse("fe5g").unwrap_err().offset, 3);
        assert_eq!(parse("0xfe5g").unwrap_err().offset, 5);
        assert_eq!(
            parse("5e1f0001_7c3a-4b8e-9d2f-1a2b3c4d5e6f")
                .unwrap_err()
                .offset,
            8
        );
        assert!(parse("").is_err());
        assert!(parse("fe501").is_err());
        assert!(parse("0x5e1f00017c3a4b8e9d2f1a2b3c4d5e6f").is_err());
        assert!(parse_128(full).is_ok());
        assert!(parse_128("2a37").is_err());
        assert!(parse_128("426c75654368-6172-6d42-6561636f6e73").is_err());
        assert!(parse_128("zz6c7565-4368-6172-6d42-6561636f6e73").is_err());
    }
}
