//! BLE advertisements: AD structures and the beacon formats a ward sees — iBeacon, Eddystone
//! (UID, URL, TLM, EID), BTHome v2 — plus the vendor frames present in `data/real/ble/`
//! (Xiaomi Mi Scale V1 service data, Omron `BLEsmart_` local names).
//!
//! Specifications:
//! - AD structures: Bluetooth Core Specification v5.x Vol 3 Part C §11 ("Advertising and scan
//!   response data format": `length u8 | AD type u8 | data`, a zero length ends the data) and
//!   the Core Specification Supplement (CSS) Part A §1.1 (service UUIDs), §1.2 (local name),
//!   §1.3 (flags), §1.4 (manufacturer specific data: company id u16 LE first), §1.5 (Tx power
//!   level), §1.11 (service data: 16-bit UUID LE first). AD type numbers from the SIG
//!   Assigned Numbers.
//! - iBeacon: Apple manufacturer data (company 0x004C), PROTOCOLS.md §D.1.
//! - Eddystone: google/eddystone `protocol-specification.md` and the per-frame READMEs,
//!   PROTOCOLS.md §D.2. All multi-byte Eddystone fields are **big-endian**.
//! - BTHome v2: <https://bthome.io> (format v2) and Bluetooth-Devices/bthome-ble `const.py`
//!   (object ids, sizes, factors), PROTOCOLS.md §D.3. Encrypted BTHome (AES-CCM, device-info
//!   bit 0) decodes with the device's key through [`parse_bthome_with_key`] /
//!   [`decode_advertisement_with_key`] (crypto in [`crate::ble::decode::advertisement::bthome_crypto`]); without a
//!   key such a payload is a [`DecodeError`] saying a key is needed.
//!
//! | file | section |
//! |---|---|
//! | `mod.rs` | AD structures, [`Advertisement`], [`Beacon`] dispatch |
//! | [`ibeacon`] | iBeacon (Apple manufacturer data) |
//! | [`eddystone`] | Eddystone UID, URL, TLM, EID |
//! | [`bthome`] | BTHome v2 objects, plain or encrypted |
//! | [`bthome_crypto`] | BTHome v2 AES-128-CCM: nonce, decrypt/authenticate (4-byte MIC), encrypt for simulators; <https://bthome.io/encryption> |
//! | [`mi_scale`] | Xiaomi Mi Scale V1 (XMTZC01HM) service data 0x181D |
//! | [`omron`] | Omron `BLEsmart_` local names |
//!
//! 16-bit service UUIDs stay `u16` here: that is what the AD structure carries on air
//! ([`crate::ble::decode::uuid::sig16`] gives the full [`Uuid`](crate::ble::decode::Uuid)).
//!
//! Presence fields (ids, Tx power, uptime, …) stay in the typed structs ([`Beacon::presence`]
//! gives them as JSON). Sensor quantities become [`Reading`]s, with their MDC code or a
//! wardgate-private one: beacon temperature → [`mdc::TEMP_ROOM`] (°C), Eddystone TLM battery
//! voltage → [`mdc::PVT_BATTERY_VOLTAGE`] (V), BTHome battery, humidity, pressure, illuminance,
//! voltage and dew point (see [`BtHome::readings`]), Mi Scale weight → [`mdc::BODY_WEIGHT`].

use crate::ble::decode::profiles::reading;
use crate::ble::decode::{DateTime, DecodeError, Reader};
use crate::observation::Reading;
use crate::observation::{mdc, Unit};
use serde_json::{json, Value};

/// AD type: Flags.
pub const AD_FLAGS: u8 = 0x01;
/// AD type: Incomplete List of 16-bit Service UUIDs.
pub const AD_UUID16_INCOMPLETE: u8 = 0x02;
/// AD type: Complete List of 16-bit Service UUIDs.
pub const AD_UUID16_COMPLETE: u8 = 0x03;
/// AD type: Shortened Local Name.
pub const AD_NAME_SHORT: u8 = 0x08;
/// AD type: Complete Local Name.
pub const AD_NAME_COMPLETE: u8 = 0x09;
/// AD type: Tx Power Level (s8, dBm).
pub const AD_TX_POWER: u8 = 0x0A;
/// AD type: Service Data – 16-bit UUID.
pub const AD_SERVICE_DATA16: u8 = 0x16;
/// AD type: Manufacturer Specific Data.
pub const AD_MANUFACTURER: u8 = 0xFF;

/// Apple's company identifier (iBeacon).
pub const COMPANY_APPLE: u16 = 0x004C;
/// Eddystone service UUID.
pub const UUID_EDDYSTONE: u16 = 0xFEAA;
/// BTHome service-data UUID.
pub const UUID_BTHOME: u16 = 0xFCD2;
/// Weight Scale service UUID, used by the Xiaomi Mi Scale V1 for its (proprietary) service data.
pub const UUID_WEIGHT_SCALE: u16 = 0x181D;

/// One AD structure inside an advertising or scan-response payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdStructure<'a> {
    /// Offset of the structure's length byte in the payload.
    pub offset: usize,
    /// AD type.
    pub ad_type: u8,
    /// AD data (without length and type).
    pub data: &'a [u8],
}

/// Splits an advertising payload into AD structures. A zero length byte ends the significant
/// part (the rest is padding). Error: a structure whose length runs past the end.
pub fn parse_ad_structures(bytes: &[u8]) -> Result<Vec<AdStructure<'_>>, DecodeError> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while i < bytes.len() {
        let len = bytes[i] as usize;
        if len == 0 {
            break;
        }
        if i + 1 + len > bytes.len() {
            return Err(DecodeError::new(
                i,
                format!(
                    "AD structure length {len} runs past the end ({} bytes left)",
                    bytes.len() - i - 1
                ),
            ));
        }
        out.push(AdStructure {
            offset: i,
            ad_type: bytes[i + 1],
            data: &bytes[i + 2..i + 1 + len],
        });
        i += 1 + len;
    }
    Ok(out)
}

/// A summary of a whole advertisement (one or more AD structures).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Advertisement {
    /// Flags (LE Limited/General Discoverable, BR/EDR not supported, …).
    pub flags: Option<u8>,
    /// 16-bit service UUIDs (complete and incomplete lists).
    pub service_uuids16: Vec<u16>,
    /// Local name (complete, or shortened), lossy UTF-8.
    pub local_name: Option<String>,
    /// Tx power level, dBm.
    pub tx_power: Option<i8>,
    /// Manufacturer specific data: company id and the data after it.
    pub manufacturer_data: Vec<(u16, Vec<u8>)>,
    /// 16-bit service data: UUID and the data after it.
    pub service_data16: Vec<(u16, Vec<u8>)>,
    /// The recognised beacon frames.
    pub beacons: Vec<Beacon>,
    /// Service-data frames of a known UUID that did not decode (offsets relative to the
    /// whole advertisement).
    pub problems: Vec<DecodeError>,
}

impl Advertisement {
    /// Readings of every recognised beacon.
    pub fn readings(&self) -> Vec<Reading> {
        self.beacons.iter().flat_map(Beacon::readings).collect()
    }
}

/// Decodes a whole advertising payload: AD structures, then every recognised beacon format
/// (iBeacon manufacturer data, Eddystone/BTHome/Mi Scale service data, Omron local names).
/// An encrypted BTHome frame is a problem saying a key is needed; see
/// [`decode_advertisement_with_key`].
pub fn decode_advertisement(bytes: &[u8]) -> Result<Advertisement, DecodeError> {
    decode_advertisement_with_key(bytes, [0; 6], None)
}

/// [`decode_advertisement`] for an advertiser with a BTHome key: its BTHome service data is
/// decoded with [`parse_bthome_with_key`] (`mac` most significant byte first, the
/// advertiser's address; a plain BTHome frame is then refused as a possible downgrade).
/// With `key = None` this is [`decode_advertisement`].
pub fn decode_advertisement_with_key(
    bytes: &[u8],
    mac: [u8; 6],
    key: Option<&[u8; 16]>,
) -> Result<Advertisement, DecodeError> {
    let mut adv = Advertisement::default();
    for s in parse_ad_structures(bytes)? {
        let d = s.data;
        match s.ad_type {
            AD_FLAGS => adv.flags = d.first().copied(),
            AD_UUID16_INCOMPLETE | AD_UUID16_COMPLETE => adv
                .service_uuids16
                .extend(d.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]))),
            AD_NAME_SHORT | AD_NAME_COMPLETE => {
                let name = String::from_utf8_lossy(d).into_owned();
                if let Some(o) = parse_omron_name(&name) {
                    adv.beacons.push(Beacon::OmronName(o));
                }
                if s.ad_type == AD_NAME_COMPLETE || adv.local_name.is_none() {
                    adv.local_name = Some(name);
                }
            }
            AD_TX_POWER => adv.tx_power = d.first().map(|&b| b as i8),
            AD_MANUFACTURER if d.len() >= 2 => {
                let company = u16::from_le_bytes([d[0], d[1]]);
                let payload = &d[2..];
                if let Some(b) = ibeacon_from_manufacturer(company, payload) {
                    adv.beacons.push(Beacon::IBeacon(b));
                }
                adv.manufacturer_data.push((company, payload.to_vec()));
            }
            AD_SERVICE_DATA16 if d.len() >= 2 => {
                let uuid = u16::from_le_bytes([d[0], d[1]]);
                let payload = &d[2..];
                let decoded = match uuid {
                    UUID_EDDYSTONE => Some(parse_eddystone(payload).map(Beacon::Eddystone)),
                    UUID_BTHOME => Some(
                        match key {
                            Some(k) => parse_bthome_with_key(payload, mac, k),
                            None => parse_bthome(payload),
                        }
                        .map(Beacon::BtHome),
                    ),
                    UUID_WEIGHT_SCALE => Some(parse_mi_scale_v1(payload).map(Beacon::MiScale)),
                    _ => None,
                };
                match decoded {
                    Some(Ok(b)) => adv.beacons.push(b),
                    // Offsets relative to the whole advertisement: length, type, UUID.
                    Some(Err(e)) => adv
                        .problems
                        .push(DecodeError::new(s.offset + 4 + e.offset, e.message)),
                    None => {}
                }
                adv.service_data16.push((uuid, payload.to_vec()));
            }
            _ => {}
        }
    }
    Ok(adv)
}

/// A recognised beacon or vendor frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Beacon {
    /// Apple iBeacon.
    IBeacon(IBeacon),
    /// Eddystone frame.
    Eddystone(Eddystone),
    /// BTHome v2 (unencrypted, or decrypted with the device's key).
    BtHome(BtHome),
    /// Xiaomi Mi Scale V1 weight broadcast.
    MiScale(MiScaleV1),
    /// Omron health device local name.
    OmronName(OmronName),
}

impl Beacon {
    /// A short kind name: `ibeacon`, `eddystone-uid`, `eddystone-url`, `eddystone-tlm`,
    /// `eddystone-tlm-encrypted`, `eddystone-eid`, `bthome`, `mi-scale-v1`, `omron-name`.
    pub fn kind(&self) -> &'static str {
        match self {
            Beacon::IBeacon(_) => "ibeacon",
            Beacon::Eddystone(Eddystone::Uid { .. }) => "eddystone-uid",
            Beacon::Eddystone(Eddystone::Url { .. }) => "eddystone-url",
            Beacon::Eddystone(Eddystone::Tlm(_)) => "eddystone-tlm",
            Beacon::Eddystone(Eddystone::EncryptedTlm { .. }) => "eddystone-tlm-encrypted",
            Beacon::Eddystone(Eddystone::Eid { .. }) => "eddystone-eid",
            Beacon::BtHome(_) => "bthome",
            Beacon::MiScale(_) => "mi-scale-v1",
            Beacon::OmronName(_) => "omron-name",
        }
    }

    /// The presence fields as a JSON object (`kind` plus the frame's fields; ids in hex,
    /// powers in dBm, voltages in mV, temperatures in °C, uptime in s).
    pub fn presence(&self) -> Value {
        let mut v = match self {
            Beacon::IBeacon(b) => json!({
                "uuid": b.uuid_string(), "major": b.major, "minor": b.minor,
                "measured_power_dbm": b.measured_power,
            }),
            Beacon::Eddystone(Eddystone::Uid {
                tx_power_0m,
                namespace,
                instance,
            }) => json!({
                "tx_power_0m_dbm": tx_power_0m, "namespace": to_hex(namespace), "instance": to_hex(instance),
            }),
            Beacon::Eddystone(Eddystone::Url { tx_power_0m, url }) => {
                json!({ "tx_power_0m_dbm": tx_power_0m, "url": url })
            }
            Beacon::Eddystone(Eddystone::Tlm(t)) => json!({
                "battery_mv": t.battery_mv, "temperature_c": t.temperature_c,
                "adv_count": t.adv_count, "uptime_s": t.uptime_s(),
            }),
            Beacon::Eddystone(Eddystone::EncryptedTlm { data, salt, mic }) => {
                json!({ "etlm": to_hex(data), "salt": salt, "mic": mic })
            }
            Beacon::Eddystone(Eddystone::Eid { tx_power_0m, eid }) => {
                json!({ "tx_power_0m_dbm": tx_power_0m, "eid": to_hex(eid) })
            }
            Beacon::BtHome(b) => {
                let values: Vec<Value> = b
                    .values
                    .iter()
                    .map(|o| {
                        let value = match &o.data {
                            BtHomeData::Number(n) => json!(n),
                            BtHomeData::Text(t) => json!(t),
                            BtHomeData::Raw(r) => json!(to_hex(r)),
                        };
                        json!({ "id": o.object_id, "name": o.name, "value": value, "ucum": o.ucum })
                    })
                    .collect();
                json!({
                    "trigger_based": b.trigger_based, "packet_id": b.packet_id,
                    "encrypted": b.device_info & 0x01 != 0, "counter": b.counter,
                    "mac": b.mac.map(|m| mac_string(&m)), "values": values,
                })
            }
            Beacon::MiScale(m) => json!({
                "weight": m.weight, "unit": m.unit.name(), "stabilised": m.stabilised,
                "removed": m.removed, "time": m.time.to_iso(),
            }),
            Beacon::OmronName(o) => json!({
                "model": o.model, "mac": o.mac, "pairing_mode": o.pairing_mode,
            }),
        };
        v["kind"] = self.kind().into();
        v
    }

    /// Readings with an MDC code (see the module documentation).
    pub fn readings(&self) -> Vec<Reading> {
        match self {
            Beacon::Eddystone(Eddystone::Tlm(t)) => t
                .temperature_c
                .map(|c| reading(mdc::TEMP_ROOM, c, Unit::DEGC, None, &[]))
                .into_iter()
                .chain(t.battery_mv.map(|mv| {
                    reading(
                        mdc::PVT_BATTERY_VOLTAGE,
                        f64::from(mv) / 1000.0,
                        Unit::VOLT,
                        None,
                        &[],
                    )
                }))
                .collect(),
            Beacon::BtHome(b) => b.readings(),
            Beacon::MiScale(m) => m.readings(),
            _ => Vec::new(),
        }
    }
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn mac_string(le: &[u8; 6]) -> String {
    le.iter()
        .rev()
        .map(|x| format!("{x:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub mod bthome;
pub mod bthome_crypto;
pub mod eddystone;
pub mod ibeacon;
pub mod mi_scale;
pub mod omron;

pub use bthome::*;
pub use eddystone::*;
pub use ibeacon::*;
pub use mi_scale::*;
pub use omron::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::decode::test_util::*;

    #[test]
    fn d02_full_ibeacon_advertisement() {
        let adv = decode_advertisement(&hex(
            "0201061aff4c0002154142434445464748494041424344454600010002f8",
        ))
        .unwrap();
        assert_eq!(adv.flags, Some(0x06));
        let [Beacon::IBeacon(b)] = adv.beacons.as_slice() else {
            panic!("{:?}", adv.beacons)
        };
        assert_eq!(b.uuid_string(), "41424344-4546-4748-4940-414243444546");
        assert_eq!((b.major, b.minor, b.measured_power), (1, 2, -8));
        assert!(adv.readings().is_empty());
    }

    #[test]
    fn d03_tilt() {
        let b = parse_ibeacon(&hex("0215a495bb70c5b14b44b5121370f02d74de005806c8c5")).unwrap();
        assert_eq!(b.uuid_string(), "a495bb70-c5b1-4b44-b512-1370f02d74de");
        assert_eq!((b.major, b.minor, b.measured_power), (88, 1736, -59));
    }

    #[test]
    fn d04_not_ibeacon() {
        let payload = hex("0215a495bb70c5b14b44b5121370f02d74de005806c8c5");
        assert_eq!(ibeacon_from_manufacturer(0x0015, &payload), None);
        let mut other = payload.clone();
        other[0] = 0x10;
        assert_eq!(ibeacon_from_manufacturer(COMPANY_APPLE, &other), None);
        assert!(parse_ibeacon(&other).is_err());
        assert!(parse_ibeacon(&payload[..22]).is_err());
    }

    #[test]
    fn d07_d08_tlm() {
        let Eddystone::Tlm(t) = parse_eddystone(&hex("20000b1813000000146700002ac4")).unwrap()
        else {
            panic!()
        };
        assert_eq!(t.battery_mv, Some(2840));
        assert_eq!(t.temperature_c, Some(19.0));
        assert_eq!(t.adv_count, 5223);
        assert_eq!(t.sec_count, 10948);
        assert_eq!(t.uptime_s(), 1094.8);
        let r = Beacon::Eddystone(Eddystone::Tlm(t)).readings();
        assert_eq!(
            r.iter()
                .map(|r| (r.code, r.value, r.unit))
                .collect::<Vec<_>>(),
            [
                (188_508, 19.0, Unit::DEGC),
                (mdc::PVT_BATTERY_VOLTAGE, 2.84, Unit::VOLT)
            ],
            "temperature and battery voltage (2840 mV)"
        );
        // D-08: temperature bytes 47 11.
        let Eddystone::Tlm(t) = parse_eddystone(&hex("20000b1847110000146700002ac4")).unwrap()
        else {
            panic!()
        };
        assert!((t.temperature_c.unwrap() - 71.066).abs() < 0.0005);
        assert_eq!(t.temperature_c, Some(0x4711 as f64 / 256.0));
        // Unsupported battery and temperature.
        let Eddystone::Tlm(t) = parse_eddystone(&hex("200000008000000000000000000a")).unwrap()
        else {
            panic!()
        };
        assert_eq!((t.battery_mv, t.temperature_c), (None, None));
        assert!(parse_eddystone(&hex("20000b181300000014670000")).is_err());
    }

    #[test]
    fn d10_eid_in_full_advertisement() {
        let adv = decode_advertisement(&hex("0201060303aafe0d16aafe30e34549445f74657374")).unwrap();
        assert_eq!(adv.service_uuids16, [0xFEAA]);
        let [Beacon::Eddystone(Eddystone::Eid { tx_power_0m, eid })] = adv.beacons.as_slice()
        else {
            panic!("{:?}", adv.beacons)
        };
        assert_eq!(*tx_power_0m, -29);
        assert_eq!(eid, b"EID_test");
    }

    #[test]
    fn eddystone_uid_and_url() {
        let uid = parse_eddystone(&hex("00e700010203040506070809aabbccddeeff0000")).unwrap();
        assert_eq!(
            uid,
            Eddystone::Uid {
                tx_power_0m: -25,
                namespace: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                instance: [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]
            }
        );
        // Without the RFU bytes.
        assert!(parse_eddystone(&hex("00e700010203040506070809aabbccddeeff")).is_ok());
        let url = parse_eddystone(&hex("10eb03676f6f676c6507")).unwrap();
        assert_eq!(
            url,
            Eddystone::Url {
                tx_power_0m: -21,
                url: "https://google.com".into()
            }
        );
        assert!(parse_eddystone(&hex("10eb0320")).is_err()); // reserved byte
        assert!(parse_eddystone(&hex("10eb04676f")).is_err()); // reserved scheme
        assert!(parse_eddystone(&hex("40")).is_err());
    }

    #[test]
    fn d11_d13_bthome() {
        let b = parse_bthome(&hex("4002ca0903bf13")).unwrap();
        let v: Vec<(&str, f64, &str)> = b
            .values
            .iter()
            .map(|v| match v.data {
                BtHomeData::Number(n) => (v.name, n, v.ucum),
                _ => panic!(),
            })
            .collect();
        assert_eq!(v, [("temperature", 25.06, "Cel"), ("humidity", 50.55, "%")]);
        // Temperature (MDC_TEMP_ROOM) and humidity (wardgate-private) both become readings.
        let r = b.readings();
        assert_eq!(
            r.iter()
                .map(|r| (r.code, r.value, r.unit))
                .collect::<Vec<_>>(),
            [
                (188_508, 25.06, Unit::DEGC),
                (mdc::PVT_HUMIDITY_REL, 50.55, Unit::PERCENT)
            ]
        );
        assert_eq!(mdc::PVT_HUMIDITY_REL, 1024 * 65536 + 3);
        let b = parse_bthome(&hex("4004138a01")).unwrap();
        assert_eq!(b.values[0].data, BtHomeData::Number(1008.83));
        assert_eq!(b.values[0].ucum, "hPa");
        let r = b.readings();
        assert_eq!(
            (r[0].code, r[0].value, r[0].unit),
            (mdc::PVT_PRESSURE_AMBIENT, 1008.83, Unit::HECTO_PASCAL)
        );
    }

    #[test]
    fn bthome_packet_id_battery_text_mac_and_errors() {
        // packet id 9, battery 97 %, temperature 0x45 −1.5 °C, text "hi".
        let b = parse_bthome(&hex("440009016145f1ff53026869")).unwrap();
        assert!(b.trigger_based);
        assert_eq!(b.packet_id, Some(9));
        assert_eq!(b.values[1].data, BtHomeData::Number(-1.5));
        assert_eq!(b.values[2].data, BtHomeData::Text("hi".into()));
        let r = b.readings();
        assert_eq!((r[0].code, r[0].value), (67_996, 97.0));
        assert_eq!((r[1].code, r[1].value), (188_508, -1.5));
        let b = parse_bthome(&hex("42dcb51b19fb500161")).unwrap();
        assert_eq!(mac_string(&b.mac.unwrap()), "50:FB:19:1B:B5:DC");
        let e = parse_bthome(&hex("41a1b2c3")).unwrap_err();
        assert!(e.message.contains("encrypted"), "{e}");
        assert!(parse_bthome(&hex("2002ca09")).is_err()); // version 1
        assert_eq!(parse_bthome(&hex("4002ca0930")).unwrap_err().offset, 4);
        assert_eq!(parse_bthome(&hex("4002ca")).unwrap_err().offset, 2);
    }

    /// An encrypted frame with the right key decodes to the same values and readings as the
    /// unencrypted frame with the same objects (bthome.io / bthome-ble test_v2_encryption
    /// vector: MAC 54:48:E6:8F:80:A5, key 231d…b932, counter bytes 00112233).
    #[test]
    fn encrypted_bthome_matches_plain() {
        use crate::ble::decode::advertisement::bthome_crypto::parse_bindkey;
        let key = parse_bindkey("231d39c1d7cc1ab1aee224cd096db932").unwrap();
        let mac = [0x54, 0x48, 0xE6, 0x8F, 0x80, 0xA5];
        let enc = hex("41a47266c95f730011223378237214");
        let plain = parse_bthome(&hex("4002ca0903bf13")).unwrap();
        let dec = parse_bthome_with_key(&enc, mac, &key).unwrap();
        assert_eq!(dec.values, plain.values);
        assert_eq!(dec.readings(), plain.readings());
        assert_eq!(dec.counter, Some(0x3322_1100));
        assert_eq!(plain.counter, None);
        // Without a key: a clear error; with a wrong one: MIC mismatch, never a panic.
        let e = parse_bthome(&enc).unwrap_err();
        assert!(e.message.contains("needs the device's 16-byte key"), "{e}");
        let e = parse_bthome_with_key(&enc, mac, &[7; 16]).unwrap_err();
        assert!(e.message.starts_with("MIC mismatch"), "{e}");
        // A plain frame from a keyed device is refused (downgrade).
        let e = parse_bthome_with_key(&hex("4002ca0903bf13"), mac, &key).unwrap_err();
        assert!(e.message.contains("downgrade"), "{e}");
        // Through a whole advertisement: flags, then service data d2 fc + frame.
        let mut ad = hex("020106");
        ad.extend([2 + 1 + enc.len() as u8, AD_SERVICE_DATA16, 0xd2, 0xfc]);
        ad.extend(&enc);
        let a = decode_advertisement(&ad).unwrap();
        assert!(a.beacons.is_empty());
        assert_eq!(a.problems[0].offset, 3 + 4);
        let a = decode_advertisement_with_key(&ad, mac, Some(&key)).unwrap();
        assert_eq!(a.readings(), plain.readings());
        assert_eq!(a.beacons[0].presence()["counter"], 0x3322_1100u32);
        assert_eq!(a.beacons[0].presence()["encrypted"], true);
    }

    /// Errors inside the decrypted objects point at the matching ciphertext byte.
    #[test]
    fn encrypted_bthome_object_error_offsets() {
        use crate::ble::decode::advertisement::bthome_crypto::encrypt_bthome;
        let key = [0x11; 16];
        let mac = [1, 2, 3, 4, 5, 6];
        // Objects: temperature (3 bytes), then unknown id 0x30 at plaintext offset 3.
        let sd = encrypt_bthome(mac, 0x40, &hex("02ca0930"), 1, &key).unwrap();
        assert_eq!(
            parse_bthome_with_key(&sd, mac, &key).unwrap_err().offset,
            1 + 3
        );
        let sd = encrypt_bthome(mac, 0x42, &hex("02ca0930"), 1, &key).unwrap();
        assert_eq!(
            parse_bthome_with_key(&sd, mac, &key).unwrap_err().offset,
            7 + 3
        );
        // Round trip with packet id, battery, MAC included.
        let objects = hex("000901614502ff");
        let sd = encrypt_bthome(mac, 0x46, &objects, 42, &key).unwrap();
        let mut plain = vec![0x46];
        plain.extend([6, 5, 4, 3, 2, 1]);
        plain.extend(&objects);
        let p = parse_bthome(&plain).unwrap();
        let d = parse_bthome_with_key(&sd, [0; 6], &key).unwrap();
        assert_eq!(
            (d.packet_id, d.mac, d.trigger_based),
            (p.packet_id, p.mac, true)
        );
        assert_eq!(d.values, p.values);
        assert_eq!(d.counter, Some(42));
    }

    /// `data/real/ble/advertisements.csv`: every row decodes as PROVENANCE.md states.
    #[test]
    fn real_advertisements() {
        let rows = csv_rows("advertisements.csv");
        let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();
        let payload = |id: &str| hex(&row(id)["hex_payload"]);

        // ble-adv-01: Blue Charm BC08 iBeacon.
        let b = ibeacon_from_manufacturer(COMPANY_APPLE, &payload("ble-adv-01")).unwrap();
        assert_eq!(b.uuid_string(), "426c7565-4368-6172-6d42-6561636f6e73");
        assert_eq!(b.uuid.as_bytes(), b"BlueCharmBeacons");
        assert_eq!((b.major, b.minor, b.measured_power), (3838, 4949, -59));
        // ble-adv-02: vendor service data 0x2080: no decode asserted, none attempted.
        let mut ad = vec![
            3 + payload("ble-adv-02").len() as u8,
            AD_SERVICE_DATA16,
            0x80,
            0x20,
        ];
        ad.extend(payload("ble-adv-02"));
        let adv = decode_advertisement(&ad).unwrap();
        assert!(adv.beacons.is_empty() && adv.problems.is_empty());
        assert_eq!(adv.service_data16, [(0x2080, payload("ble-adv-02"))]);
        // ble-adv-03: Tilt.
        let b = ibeacon_from_manufacturer(COMPANY_APPLE, &payload("ble-adv-03")).unwrap();
        assert_eq!(b.uuid_string(), "a495bb70-c5b1-4b44-b512-1370f02d74de");
        assert_eq!((b.major, b.minor, b.measured_power), (88, 1736, -59));
        // ble-adv-04: Tesla phone key.
        let b = ibeacon_from_manufacturer(COMPANY_APPLE, &payload("ble-adv-04")).unwrap();
        assert_eq!(b.uuid_string(), "74278bda-b644-4520-8f0c-720eaf059935");
        assert_eq!((b.major, b.minor, b.measured_power), (0, 23332, -59));
        // ble-adv-05: Mi Scale V1, 86.55 kg stabilised, 2021-04-11 16:19:01.
        let m = parse_mi_scale_v1(&payload("ble-adv-05")).unwrap();
        assert_eq!(
            (m.control, m.unit, m.stabilised, m.removed),
            (0x22, MiScaleUnit::Kg, true, false)
        );
        assert_eq!(m.weight, 86.55);
        assert_eq!(m.time.to_iso().as_deref(), Some("2021-04-11T16:19:01"));
        let r = m.readings();
        assert_eq!(
            (r[0].code, r[0].value, r[0].unit),
            (188_736, 86.55, Unit::KILO_G)
        );
        assert_eq!(r[0].device_time.as_deref(), Some("2021-04-11T16:19:01"));
        // ble-adv-06: Polar H7 whole advertisement.
        let adv = decode_advertisement(&payload("ble-adv-06")).unwrap();
        assert_eq!(adv.flags, Some(0x06));
        assert_eq!(adv.service_uuids16, [0x180D]);
        assert_eq!(adv.manufacturer_data, [(0x006B, hex("3b1b5452"))]);
        assert_eq!(adv.tx_power, Some(0));
        assert_eq!(adv.local_name.as_deref(), Some("Polar H7 D7904C14"));
        assert!(adv.beacons.is_empty());
        // ble-adv-07: Omron manufacturer data with its AD header.
        let adv = decode_advertisement(&payload("ble-adv-07")).unwrap();
        assert_eq!(adv.manufacturer_data, [(0x020E, hex("0101d00264110011"))]);
        assert!(adv.beacons.is_empty());
        // ble-adv-08..11: Omron local names.
        for (id, model, mac, pairing) in [
            ("ble-adv-08", "00000160", "005FBF0CD044", true),
            ("ble-adv-09", "0000011F", "005FBFBE315B", true),
            ("ble-adv-10", "0000021F", "005FBF88C25B", false),
            ("ble-adv-11", "00010112", "F974C431DBE2", false),
        ] {
            let name = String::from_utf8(payload(id)).unwrap();
            let o = parse_omron_name(&name).unwrap();
            assert_eq!(
                (o.model.as_str(), o.mac.as_str(), o.pairing_mode),
                (model, mac, pairing),
                "{id}"
            );
            // The same through a whole advertisement (Complete Local Name AD).
            let mut ad = vec![(name.len() + 1) as u8, AD_NAME_COMPLETE];
            ad.extend(name.as_bytes());
            let adv = decode_advertisement(&ad).unwrap();
            assert_eq!(adv.beacons, [Beacon::OmronName(o)]);
        }
        assert_eq!(rows.len(), 11, "a new capture row needs a test");
    }

    #[test]
    fn bad_frame_is_a_problem_with_absolute_offset() {
        // Flags, then BTHome service data whose object 0x30 is unknown (at payload byte 3).
        let adv = decode_advertisement(&hex("0201060816d2fc4002ca0930")).unwrap();
        assert!(adv.beacons.is_empty());
        assert_eq!(adv.problems.len(), 1);
        assert_eq!(adv.problems[0].offset, 3 + 4 + 4);
    }

    #[test]
    fn ad_structure_errors_and_padding() {
        assert_eq!(parse_ad_structures(&hex("0201")).unwrap_err().offset, 0);
        assert_eq!(parse_ad_structures(&hex("020106ff")).unwrap_err().offset, 3);
        assert_eq!(parse_ad_structures(&hex("0201060000")).unwrap().len(), 1);
    }

    #[test]
    fn presence_json() {
        let b = Beacon::IBeacon(
            parse_ibeacon(&hex("0215a495bb70c5b14b44b5121370f02d74de005806c8c5")).unwrap(),
        );
        let p = b.presence();
        assert_eq!(p["kind"], "ibeacon");
        assert_eq!(p["major"], 88);
        let t = Beacon::Eddystone(parse_eddystone(&hex("20000b1813000000146700002ac4")).unwrap());
        assert_eq!(t.presence()["battery_mv"], 2840);
        assert_eq!(t.presence()["uptime_s"], 1094.8);
    }

    #[test]
    fn property_no_panic() {
        never_panics(
            0xADAD,
            &["0201061aff4c0002154142434445464748494041424344454600010002f8"],
            |b| {
                decode_advertisement(b)
                    .map(|a| (a.readings(), a.beacons.iter().map(Beacon::presence).count()))
            },
        );
        never_panics(0x004C, &[], parse_ibeacon);
        never_panics(
            0xFEAA,
            &["20000b1813000000146700002ac4", "10eb03676f6f676c6507"],
            parse_eddystone,
        );
        never_panics(0xFCD2, &["440009016145f1ff53026869"], |b| {
            // Force a valid v2 header half the time so the object loop is exercised.
            let mut v = b.to_vec();
            if let Some(x) = v.first_mut() {
                if *x & 1 == 0 {
                    *x = 0x40 | (*x & 0x06);
                }
            }
            parse_bthome(&v).map(|h| h.readings())
        });
        let key = [0x5A; 16];
        never_panics(0xFCD3, &["41a47266c95f730011223378237214"], |b| {
            parse_bthome_with_key(b, [1, 2, 3, 4, 5, 6], &key).map(|h| h.readings())
        });
        // Valid ciphertexts of random plaintexts: the object parser behind the decryption.
        never_panics(0xFCD4, &[], |b| {
            let info = 0x40 | (b.first().copied().unwrap_or(0) & 0x06);
            let sd = crate::ble::decode::advertisement::bthome_crypto::encrypt_bthome(
                [9; 6], info, b, 1, &key,
            )?;
            parse_bthome_with_key(&sd, [9; 6], &key).map(|h| h.readings())
        });
        never_panics(0x181D, &["229e43e507040b101301"], |b| {
            parse_mi_scale_v1(b).map(|m| m.readings())
        });
        never_panics(0x0E02, &[], |b| {
            parse_omron_name(&String::from_utf8_lossy(b))
        });
    }
}
