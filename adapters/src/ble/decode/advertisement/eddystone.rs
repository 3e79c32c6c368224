//! Eddystone (see the [parent module](super) for the specification sources).

use super::*;

/// Eddystone TLM, unencrypted (version 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tlm {
    /// Battery voltage, mV (`None` when the beacon reports 0 = not supported).
    pub battery_mv: Option<u16>,
    /// Beacon temperature, °C, from signed 8.8 fixed point (`None` for 0x8000 = not supported).
    pub temperature_c: Option<f64>,
    /// Advertising PDUs sent since power-on or reboot.
    pub adv_count: u32,
    /// Time since power-on or reboot, in 0.1 s units (raw SEC_CNT).
    pub sec_count: u32,
}

impl Tlm {
    /// Uptime in seconds (SEC_CNT × 0.1 s).
    pub fn uptime_s(&self) -> f64 {
        self.sec_count as f64 / 10.0
    }
}

/// An Eddystone frame (service data of UUID 0xFEAA).
#[derive(Clone, Debug, PartialEq)]
pub enum Eddystone {
    /// UID frame (0x00): 10-byte namespace, 6-byte instance.
    Uid {
        /// Calibrated Tx power at 0 m, dBm.
        tx_power_0m: i8,
        /// Namespace id.
        namespace: [u8; 10],
        /// Instance id.
        instance: [u8; 6],
    },
    /// URL frame (0x10).
    Url {
        /// Calibrated Tx power at 0 m, dBm.
        tx_power_0m: i8,
        /// The expanded URL.
        url: String,
    },
    /// Unencrypted TLM frame (0x20, version 0).
    Tlm(Tlm),
    /// Encrypted TLM (0x20, version 1): kept opaque.
    EncryptedTlm {
        /// Encrypted TLM data (12 bytes).
        data: [u8; 12],
        /// Salt.
        salt: u16,
        /// Message integrity check.
        mic: u16,
    },
    /// EID frame (0x30): 8-byte ephemeral id.
    Eid {
        /// Calibrated Tx power at 0 m, dBm.
        tx_power_0m: i8,
        /// Ephemeral identifier.
        eid: [u8; 8],
    },
}

const URL_SCHEMES: [&str; 4] = ["http://www.", "https://www.", "http://", "https://"];
const URL_EXPANSIONS: [&str; 14] = [
    ".com/", ".org/", ".edu/", ".net/", ".info/", ".biz/", ".gov/", ".com", ".org", ".edu", ".net",
    ".info", ".biz", ".gov",
];

/// Parses Eddystone service data (after the 0xFEAA UUID).
pub fn parse_eddystone(data: &[u8]) -> Result<Eddystone, DecodeError> {
    let mut r = Reader::new(data);
    let frame = r.u8("Eddystone frame type")?;
    match frame {
        0x00 => {
            let tx = r.u8("Tx power")? as i8;
            let ns = r.take(10, "namespace")?;
            let inst = r.take(6, "instance")?;
            // The two RFU bytes are optional (PROTOCOLS.md §D.2).
            let mut namespace = [0u8; 10];
            namespace.copy_from_slice(ns);
            let mut instance = [0u8; 6];
            instance.copy_from_slice(inst);
            Ok(Eddystone::Uid {
                tx_power_0m: tx,
                namespace,
                instance,
            })
        }
        0x10 => {
            let tx = r.u8("Tx power")? as i8;
            let scheme = r.u8("URL scheme")?;
            let mut url = URL_SCHEMES
                .get(scheme as usize)
                .ok_or_else(|| DecodeError::new(2, format!("URL scheme 0x{scheme:02x} reserved")))?
                .to_string();
            let enc = r.rest();
            if enc.is_empty() || enc.len() > 17 {
                return Err(DecodeError::new(
                    3,
                    format!("encoded URL is {} bytes, expected 1–17", enc.len()),
                ));
            }
            for (i, &b) in enc.iter().enumerate() {
                match b {
                    0x00..=0x0d => url.push_str(URL_EXPANSIONS[b as usize]),
                    0x21..=0x7e => url.push(b as char),
                    _ => {
                        return Err(DecodeError::new(
                            3 + i,
                            format!("URL byte 0x{b:02x} is reserved"),
                        ))
                    }
                }
            }
            Ok(Eddystone::Url {
                tx_power_0m: tx,
                url,
            })
        }
        0x20 => match r.u8("TLM version")? {
            0x00 => {
                let v = r.take(2, "VBATT")?;
                let t = r.take(2, "TEMP")?;
                let a = r.take(4, "ADV_CNT")?;
                let s = r.take(4, "SEC_CNT")?;
                let mv = u16::from_be_bytes([v[0], v[1]]);
                let temp = i16::from_be_bytes([t[0], t[1]]);
                Ok(Eddystone::Tlm(Tlm {
                    battery_mv: (mv != 0).then_some(mv),
                    temperature_c: (temp != i16::MIN).then(|| temp as f64 / 256.0),
                    adv_count: u32::from_be_bytes([a[0], a[1], a[2], a[3]]),
                    sec_count: u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
                }))
            }
            0x01 => {
                let d = r.take(12, "encrypted TLM")?;
                let salt = r.take(2, "salt")?;
                let mic = r.take(2, "MIC")?;
                let mut data = [0u8; 12];
                data.copy_from_slice(d);
                Ok(Eddystone::EncryptedTlm {
                    data,
                    salt: u16::from_be_bytes([salt[0], salt[1]]),
                    mic: u16::from_be_bytes([mic[0], mic[1]]),
                })
            }
            v => Err(DecodeError::new(
                1,
                format!("TLM version 0x{v:02x} unknown"),
            )),
        },
        0x30 => {
            let tx = r.u8("Tx power")? as i8;
            let e = r.take(8, "EID")?;
            let mut eid = [0u8; 8];
            eid.copy_from_slice(e);
            Ok(Eddystone::Eid {
                tx_power_0m: tx,
                eid,
            })
        }
        f => Err(DecodeError::new(
            0,
            format!("Eddystone frame type 0x{f:02x} unknown or reserved"),
        )),
    }
}
