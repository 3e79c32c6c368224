//! Encrypted BTHome v2: AES-128-CCM with a per-device 16-byte key ("bindkey").
//!
//! Specification: <https://bthome.io/encryption> and the reference implementation
//! Bluetooth-Devices/bthome-ble (`src/bthome_ble/bthome_v2_encryption.py`, `parser.py`
//! `_decrypt_bthome`, `tests/test_v2_encryption.py`), PROTOCOLS.md §D.3.
//!
//! Service data of UUID 0xFCD2 (the bytes after the UUID) with device-information bit 0 set:
//!
//! | bytes | content |
//! |---|---|
//! | 0 | device information (bit 0 = 1 encrypted, bit 1 MAC included, bit 2 trigger-based, bits 5–7 version 2) |
//! | 1–6 | MAC address, little-endian on air, **only** when bit 1 is set |
//! | … | ciphertext (same length as the BTHome objects it encrypts) |
//! | last 8 … last 5 | counter, u32 little-endian, sent in clear |
//! | last 4 | MIC (CCM authentication tag, 4 bytes) |
//!
//! Nonce (13 bytes) = MAC (6 bytes, most significant first, i.e. the order in which
//! `54:48:E6:8F:80:A5` is written) | UUID `d2 fc` (0xFCD2 little-endian) | device-information
//! byte | counter (the 4 bytes as sent). No associated data (BTHome v1 used `0x11`; v2 does not).
//! The tag length is 4 bytes (`mac_len=4` in the reference), so CCM's L = 15 − 13 = 2.
//!
//! CCM encrypts in counter mode: ciphertext byte *i* is plaintext byte *i*, so an error found
//! in the decrypted objects is reported at the offset of the corresponding ciphertext byte.
//!
//! **Replay protection** is the receiver's job (bthome.io: "has to be implemented on the
//! receiving side"). [`decrypt_bthome`] returns the counter; the gateway should keep the last
//! accepted counter per device and drop frames whose counter does not increase. The reference
//! parser allows a restart from a small value (< 100) after a battery change; wardgate's
//! policy belongs in the adapter, not here.

use crate::ble::decode::DecodeError;
use aes::Aes128;
use ccm::aead::generic_array::GenericArray;
use ccm::aead::{AeadInPlace, KeyInit};
use ccm::consts::{U13, U4};
use ccm::Ccm;

/// AES-128-CCM with a 4-byte tag and a 13-byte nonce, as BTHome v2 uses it.
type BtHomeCcm = Ccm<Aes128, U4, U13>;

/// Length of the MIC (CCM tag), bytes.
pub const MIC_LEN: usize = 4;
/// Length of the clear-text counter, bytes.
pub const COUNTER_LEN: usize = 4;
/// The smallest encrypted payload the reference parser accepts after the header: 2 bytes of
/// ciphertext (one object id and one value byte), counter, MIC.
pub const MIN_ENCRYPTED_BODY: usize = 2 + COUNTER_LEN + MIC_LEN;

/// A decrypted BTHome v2 frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtHomeCleartext {
    /// Device-information byte (encryption bit set).
    pub device_info: u8,
    /// The MAC address the frame carried (little-endian, as on air), if bit 1 was set.
    pub mac: Option<[u8; 6]>,
    /// Bytes before the ciphertext (1, or 7 with a MAC): add it to an offset in
    /// `plaintext` to get the offset in the service data.
    pub header_len: usize,
    /// The decrypted BTHome objects (the same bytes an unencrypted frame carries after its
    /// header).
    pub plaintext: Vec<u8>,
    /// The frame counter (u32 little-endian on air). Reject frames whose counter does not
    /// increase (replay protection; see the module documentation).
    pub counter: u32,
}

/// The 13-byte CCM nonce: `mac` (most significant byte first) | `d2 fc` | `device_info` |
/// `counter` (as sent, little-endian).
pub fn nonce(mac: [u8; 6], device_info: u8, counter: [u8; 4]) -> [u8; 13] {
    let mut n = [0u8; 13];
    n[..6].copy_from_slice(&mac);
    n[6..8].copy_from_slice(&super::UUID_BTHOME.to_le_bytes());
    n[8] = device_info;
    n[9..].copy_from_slice(&counter);
    n
}

/// Decrypts and authenticates BTHome v2 service data (the bytes after the 0xFCD2 UUID).
///
/// `mac` is the advertiser's address, most significant byte first (the written order, and
/// btleplug's `BDAddr` byte order). When the frame includes its MAC (device-information bit 1)
/// that one is used instead, as the reference parser does.
///
/// Errors (offsets in `service_data`): empty input; version other than 2; encryption bit not
/// set; a body shorter than [`MIN_ENCRYPTED_BODY`]; and — at the MIC's offset —
/// `MIC mismatch: wrong key or tampered frame`. Never panics.
pub fn decrypt_bthome(
    mac: [u8; 6],
    service_data: &[u8],
    key: &[u8; 16],
) -> Result<BtHomeCleartext, DecodeError> {
    let info = *service_data
        .first()
        .ok_or_else(|| DecodeError::new(0, "BTHome device information: needs 1 byte, 0 left"))?;
    check_version(info)?;
    if info & 0x01 == 0 {
        return Err(DecodeError::new(
            0,
            "BTHome payload is not encrypted (device-information bit 0 clear)",
        ));
    }
    let (frame_mac, header_len) = if info & 0x02 != 0 {
        let m = service_data.get(1..7).ok_or_else(|| {
            DecodeError::new(
                1,
                format!(
                    "MAC address: needs 6 bytes, {} left",
                    service_data.len().saturating_sub(1)
                ),
            )
        })?;
        let mut a = [0u8; 6];
        a.copy_from_slice(m);
        (Some(a), 7)
    } else {
        (None, 1)
    };
    let body = &service_data[header_len..];
    if body.len() < MIN_ENCRYPTED_BODY {
        return Err(DecodeError::new(
            header_len,
            format!(
                "encrypted BTHome body: needs at least {MIN_ENCRYPTED_BODY} bytes \
                 (ciphertext ≥ 2, counter 4, MIC 4), {} left",
                body.len()
            ),
        ));
    }
    let ct_len = body.len() - COUNTER_LEN - MIC_LEN;
    let mut counter = [0u8; 4];
    counter.copy_from_slice(&body[ct_len..ct_len + COUNTER_LEN]);
    let mic = &body[ct_len + COUNTER_LEN..];
    let nonce_mac = match frame_mac {
        Some(le) => reversed(le),
        None => mac,
    };
    let n = nonce(nonce_mac, info, counter);
    let mut plaintext = body[..ct_len].to_vec();
    BtHomeCcm::new(GenericArray::from_slice(key))
        .decrypt_in_place_detached(
            GenericArray::from_slice(&n),
            &[],
            &mut plaintext,
            GenericArray::from_slice(mic),
        )
        .map_err(|_| {
            DecodeError::new(
                header_len + ct_len + COUNTER_LEN,
                "MIC mismatch: wrong key or tampered frame",
            )
        })?;
    Ok(BtHomeCleartext {
        device_info: info,
        mac: frame_mac,
        header_len,
        plaintext,
        counter: u32::from_le_bytes(counter),
    })
}

/// Builds encrypted BTHome v2 service data (after the UUID) from plain BTHome `objects`:
/// for device simulators and tests. `device_info` gets bit 0 set; if it has bit 1 set the MAC
/// is included (little-endian). `mac` is most significant byte first. Errors only for
/// `objects` longer than CCM allows with a 13-byte nonce (65535 bytes) or a version ≠ 2.
pub fn encrypt_bthome(
    mac: [u8; 6],
    device_info: u8,
    objects: &[u8],
    counter: u32,
    key: &[u8; 16],
) -> Result<Vec<u8>, DecodeError> {
    check_version(device_info)?;
    let info = device_info | 0x01;
    let c = counter.to_le_bytes();
    let n = nonce(mac, info, c);
    let mut ct = objects.to_vec();
    let tag = BtHomeCcm::new(GenericArray::from_slice(key))
        .encrypt_in_place_detached(GenericArray::from_slice(&n), &[], &mut ct)
        .map_err(|_| DecodeError::new(0, "BTHome objects too long for AES-CCM"))?;
    let mut out = vec![info];
    if info & 0x02 != 0 {
        out.extend(reversed(mac));
    }
    out.extend(ct);
    out.extend(c);
    out.extend(tag.as_slice());
    Ok(out)
}

/// Parses a bindkey written as 32 hex digits (spaces, `:` and `-` ignored). The error's
/// offset is the character position of the problem; the message never repeats the key.
pub fn parse_bindkey(text: &str) -> Result<[u8; 16], DecodeError> {
    let mut key = [0u8; 16];
    let mut n = 0usize;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() || c == ':' || c == '-' {
            continue;
        }
        let d = c.to_digit(16).ok_or_else(|| {
            DecodeError::new(i, "bindkey: not a hex digit (expected 32 hex digits)")
        })? as u8;
        if n >= 32 {
            return Err(DecodeError::new(i, "bindkey: longer than 32 hex digits"));
        }
        key[n / 2] |= if n % 2 == 0 { d << 4 } else { d };
        n += 1;
    }
    if n != 32 {
        return Err(DecodeError::new(
            text.len(),
            format!("bindkey: {n} hex digits, expected 32 (16 bytes)"),
        ));
    }
    Ok(key)
}

fn check_version(info: u8) -> Result<(), DecodeError> {
    let version = info >> 5;
    if version != 2 {
        return Err(DecodeError::new(
            0,
            format!("BTHome version {version}, only version 2 is supported"),
        ));
    }
    Ok(())
}

fn reversed(mut a: [u8; 6]) -> [u8; 6] {
    a.reverse();
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::decode::test_util::*;

    const KEY: &str = "231d39c1d7cc1ab1aee224cd096db932";
    const MAC: [u8; 6] = [0x54, 0x48, 0xE6, 0x8F, 0x80, 0xA5];

    /// bthome.io/encryption example inputs (objects `02CA0903BF13` = 25.06 °C, 50.55 %;
    /// counter bytes `00112233`; MAC `5448E68F80A5`; key `231d…b932`; nonce
    /// `5448e68f80a5d2fc4100112233`) and the frame of bthome-ble `tests/test_parser_v2.py`
    /// `test_bindkey_correct`: service data after the UUID `41 a47266c95f73 00112233 78237214`
    /// (address 54:48:E6:8F:80:A5). Older revisions of bthome-ble's `test_v2_encryption.py`
    /// assert MIC `b7ced8e5` for the same input: those used associated data `0x11` (the v1
    /// header), which v2 dropped — the current parser decrypts with no associated data.
    #[test]
    fn published_vector() {
        let key = parse_bindkey(KEY).unwrap();
        let sd = hex("41a47266c95f730011223378237214");
        let c = decrypt_bthome(MAC, &sd, &key).unwrap();
        assert_eq!(c.plaintext, hex("02ca0903bf13"));
        assert_eq!(c.counter, 0x3322_1100);
        assert_eq!((c.device_info, c.header_len, c.mac), (0x41, 1, None));
        assert_eq!(
            nonce(MAC, 0x41, [0x00, 0x11, 0x22, 0x33]).to_vec(),
            hex("5448e68f80a5d2fc4100112233")
        );
        // And the encryption side reproduces the published bytes.
        let enc = encrypt_bthome(MAC, 0x40, &hex("02ca0903bf13"), 0x3322_1100, &key).unwrap();
        assert_eq!(enc, sd);
    }

    #[test]
    fn wrong_key_tamper_and_wrong_mac_are_mic_mismatch() {
        let key = parse_bindkey(KEY).unwrap();
        let sd = hex("41a47266c95f730011223378237214");
        let mut bad = key;
        bad[0] ^= 1;
        let e = decrypt_bthome(MAC, &sd, &bad).unwrap_err();
        assert_eq!(e.message, "MIC mismatch: wrong key or tampered frame");
        assert_eq!(e.offset, 11);
        for i in 1..sd.len() {
            let mut t = sd.clone();
            t[i] ^= 0x80;
            assert!(decrypt_bthome(MAC, &t, &key).is_err(), "byte {i}");
        }
        let mut other = MAC;
        other[5] ^= 1;
        assert!(decrypt_bthome(other, &sd, &key).is_err());
    }

    #[test]
    fn mac_included_round_trip_uses_the_frame_mac() {
        let key = parse_bindkey(KEY).unwrap();
        let sd = encrypt_bthome(MAC, 0x42, &hex("4002ca09"), 7, &key).unwrap();
        assert_eq!(sd[0], 0x43);
        assert_eq!(&sd[1..7], &[0xA5, 0x80, 0x8F, 0xE6, 0x48, 0x54]);
        // The caller's MAC is irrelevant when the frame carries one.
        let c = decrypt_bthome([0; 6], &sd, &key).unwrap();
        assert_eq!((c.counter, c.header_len), (7, 7));
        assert_eq!(c.plaintext, hex("4002ca09"));
    }

    #[test]
    fn short_and_unencrypted_frames() {
        let key = [0u8; 16];
        assert_eq!(decrypt_bthome(MAC, &[], &key).unwrap_err().offset, 0);
        // The v1-style frame (associated data 0x11) does not authenticate under v2 rules.
        let legacy = hex("41a47266c95f7300112233b7ced8e5");
        let k = parse_bindkey(KEY).unwrap();
        assert!(decrypt_bthome(MAC, &legacy, &k).is_err());
        assert!(decrypt_bthome(MAC, &hex("40"), &key)
            .unwrap_err()
            .message
            .contains("not encrypted"));
        assert!(decrypt_bthome(MAC, &hex("21"), &key)
            .unwrap_err()
            .message
            .contains("version 1"));
        let e = decrypt_bthome(MAC, &hex("41a40011223300112233"), &key).unwrap_err();
        assert_eq!(e.offset, 1);
        let e = decrypt_bthome(MAC, &hex("4300"), &key).unwrap_err();
        assert_eq!(e.offset, 1);
    }

    #[test]
    fn bindkey_parsing() {
        assert_eq!(
            parse_bindkey("23:1d:39:c1 d7cc1ab1-aee224cd096db932").unwrap(),
            parse_bindkey(KEY).unwrap()
        );
        assert_eq!(parse_bindkey("23x").unwrap_err().offset, 2);
        assert!(parse_bindkey("231d")
            .unwrap_err()
            .message
            .contains("4 hex digits"));
        assert!(parse_bindkey(&format!("{KEY}00")).is_err());
        let e = parse_bindkey(&format!("{KEY}z")).unwrap_err();
        assert!(!e.message.contains(KEY));
    }

    #[test]
    fn never_panics_on_random_frames() {
        let key = parse_bindkey(KEY).unwrap();
        never_panics(0xCC4D, &["41a47266c95f730011223378237214"], |b| {
            let mut v = b.to_vec();
            if let Some(x) = v.first_mut() {
                *x = 0x41 | (*x & 0x06);
            }
            decrypt_bthome(MAC, &v, &key)
        });
        never_panics(0xCC4E, &[], |b| {
            let info = b.first().copied().unwrap_or(0x40);
            encrypt_bthome(MAC, info, b, b.len() as u32, &key)
        });
        never_panics(0xCC4F, &[], |b| parse_bindkey(&String::from_utf8_lossy(b)));
    }
}
