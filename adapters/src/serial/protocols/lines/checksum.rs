//! Line checksums of the `lines` protocol: a hex checksum after a separator at the end of the
//! line (NMEA 0183's `$…*hh` is `xor8` with `start_after = "$"`).
//!
//! | algorithm | width | definition (check value of `123456789`) |
//! |---|---|---|
//! | `xor8` | 2 hex digits | XOR of the bytes (NMEA 0183 §5.2.1; `0x31`) |
//! | `sum8` | 2 | sum of the bytes modulo 256 (`0xDD`) |
//! | `crc16-xmodem` | 4 | CRC-16, poly 0x1021, init 0, not reflected (`0x31C3`) |
//! | `crc16-modbus` | 4 | CRC-16, poly 0x8005 reflected (0xA001), init 0xFFFF (`0x4B37`) |
//! | `crc32` | 8 | CRC-32 (IEEE 802.3, zlib), reflected 0xEDB88320, init and xorout 0xFFFFFFFF (`0xCBF43926`) |
//!
//! Check values from the CRC RevEng catalogue (reveng.sourceforge.io, "CRC-16/XMODEM",
//! "CRC-16/MODBUS", "CRC-32/ISO-HDLC"). Pure, never panics.

use serde::Deserialize;

/// A checksum algorithm (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Algorithm {
    /// XOR of the bytes.
    #[serde(rename = "xor8")]
    Xor8,
    /// Sum of the bytes modulo 256.
    #[serde(rename = "sum8")]
    Sum8,
    /// CRC-16/XMODEM.
    #[serde(rename = "crc16-xmodem")]
    Crc16Xmodem,
    /// CRC-16/MODBUS.
    #[serde(rename = "crc16-modbus")]
    Crc16Modbus,
    /// CRC-32/ISO-HDLC (zlib's).
    #[serde(rename = "crc32")]
    Crc32,
}

impl Algorithm {
    /// The configuration spelling.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Xor8 => "xor8",
            Algorithm::Sum8 => "sum8",
            Algorithm::Crc16Xmodem => "crc16-xmodem",
            Algorithm::Crc16Modbus => "crc16-modbus",
            Algorithm::Crc32 => "crc32",
        }
    }

    /// Hex digits the checksum is written with.
    pub fn hex_digits(self) -> usize {
        match self {
            Algorithm::Xor8 | Algorithm::Sum8 => 2,
            Algorithm::Crc16Xmodem | Algorithm::Crc16Modbus => 4,
            Algorithm::Crc32 => 8,
        }
    }

    /// The checksum of `bytes`.
    pub fn compute(self, bytes: &[u8]) -> u32 {
        match self {
            Algorithm::Xor8 => bytes.iter().fold(0u8, |a, b| a ^ b) as u32,
            Algorithm::Sum8 => bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) as u32,
            Algorithm::Crc16Xmodem => {
                let mut crc: u16 = 0;
                for &b in bytes {
                    crc ^= (b as u16) << 8;
                    for _ in 0..8 {
                        crc = if crc & 0x8000 != 0 {
                            (crc << 1) ^ 0x1021
                        } else {
                            crc << 1
                        };
                    }
                }
                crc as u32
            }
            Algorithm::Crc16Modbus => {
                let mut crc: u16 = 0xFFFF;
                for &b in bytes {
                    crc ^= b as u16;
                    for _ in 0..8 {
                        crc = if crc & 1 != 0 {
                            (crc >> 1) ^ 0xA001
                        } else {
                            crc >> 1
                        };
                    }
                }
                crc as u32
            }
            Algorithm::Crc32 => {
                let mut crc: u32 = 0xFFFF_FFFF;
                for &b in bytes {
                    crc ^= b as u32;
                    for _ in 0..8 {
                        crc = if crc & 1 != 0 {
                            (crc >> 1) ^ 0xEDB8_8320
                        } else {
                            crc >> 1
                        };
                    }
                }
                !crc
            }
        }
    }
}

/// Splits `line` into the bytes the checksum covers and checks it: the checksum is the hex text
/// after the **last** `separator` (exactly [`Algorithm::hex_digits`] digits, either case); the
/// covered bytes run from after `start_after` (which must begin the line, when given) to the
/// separator. Returns the covered bytes (what the line's syntax then parses). Errors in words.
pub fn check<'a>(
    algorithm: Algorithm,
    separator: &str,
    start_after: Option<&str>,
    line: &'a str,
) -> Result<&'a str, String> {
    let Some(sep) = line.rfind(separator) else {
        return Err(format!(
            "no checksum: the line has no {separator:?} before a {} checksum",
            algorithm.name()
        ));
    };
    let (body, written) = (&line[..sep], line[sep + separator.len()..].trim());
    let body = match start_after {
        Some(p) => body
            .strip_prefix(p)
            .ok_or_else(|| format!("the line does not start with {p:?}"))?,
        None => body,
    };
    let digits = algorithm.hex_digits();
    if written.len() != digits || !written.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "checksum {:?} is not {digits} hex digits",
            written.chars().take(16).collect::<String>()
        ));
    }
    let written = u32::from_str_radix(written, 16).map_err(|e| e.to_string())?;
    let computed = algorithm.compute(body.as_bytes());
    if written != computed {
        return Err(format!(
            "bad checksum: the line says {written:0w$X}, its bytes give {computed:0w$X} ({})",
            algorithm.name(),
            w = digits
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values_of_the_catalogue() {
        let v = b"123456789";
        assert_eq!(Algorithm::Xor8.compute(v), 0x31);
        assert_eq!(Algorithm::Sum8.compute(v), 0xDD);
        assert_eq!(Algorithm::Crc16Xmodem.compute(v), 0x31C3);
        assert_eq!(Algorithm::Crc16Modbus.compute(v), 0x4B37);
        assert_eq!(Algorithm::Crc32.compute(v), 0xCBF4_3926);
    }

    #[test]
    fn nmea_sentences_check_out() {
        // NMEA 0183 example sentence (GPGGA), checksum 47, as published in the standard's
        // examples and every GPS manual.
        let s = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
        assert_eq!(
            check(Algorithm::Xor8, "*", Some("$"), s),
            Ok("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
        );
        let bad = s.replace("*47", "*46");
        assert_eq!(
            check(Algorithm::Xor8, "*", Some("$"), &bad).unwrap_err(),
            "bad checksum: the line says 46, its bytes give 47 (xor8)"
        );
        assert!(check(Algorithm::Xor8, "*", Some("$"), "GPGGA*47")
            .unwrap_err()
            .contains("does not start with"));
        assert!(check(Algorithm::Xor8, "*", None, "no star")
            .unwrap_err()
            .starts_with("no checksum"));
        assert!(check(Algorithm::Xor8, "*", None, "x*4")
            .unwrap_err()
            .contains("not 2 hex digits"));
        assert!(check(Algorithm::Crc32, "|", None, "x|zzzzzzzz")
            .unwrap_err()
            .contains("not 8 hex digits"));
    }

    #[test]
    fn the_last_separator_counts_and_case_does_not() {
        let body = "{\"a\":\"x*y\"}";
        let line = format!(
            "{body}*{:04x}",
            Algorithm::Crc16Xmodem.compute(body.as_bytes())
        );
        assert_eq!(check(Algorithm::Crc16Xmodem, "*", None, &line), Ok(body));
    }
}
