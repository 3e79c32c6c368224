//! BTHome v2 (see the [parent module](super) for the specification sources).

use super::*;

/// A BTHome object value.
#[derive(Clone, Debug, PartialEq)]
pub enum BtHomeData {
    /// A scaled number (binary sensors and events: the raw integer).
    Number(f64),
    /// Text object (0x53), lossy UTF-8.
    Text(String),
    /// Raw object (0x54).
    Raw(Vec<u8>),
}

/// One BTHome object.
#[derive(Clone, Debug, PartialEq)]
pub struct BtHomeValue {
    /// Object id.
    pub object_id: u8,
    /// What it measures, e.g. `temperature`, `humidity`, `door` (binary), `button` (event).
    pub name: &'static str,
    /// The value, factor applied.
    pub data: BtHomeData,
    /// UCUM unit (`1` for counts, booleans and events).
    pub ucum: &'static str,
}

/// A decoded BTHome v2 payload.
#[derive(Clone, Debug, PartialEq)]
pub struct BtHome {
    /// Device-information byte (bit0 encryption, bit1 MAC included, bit2 trigger-based,
    /// bits 5–7 version = 2).
    pub device_info: u8,
    /// Trigger-based device (sends on events, not periodically).
    pub trigger_based: bool,
    /// MAC address as on air (little-endian) when the device includes it.
    pub mac: Option<[u8; 6]>,
    /// Packet id (object 0x00), for dedup of repeated advertisements.
    pub packet_id: Option<u8>,
    /// Encryption counter of an encrypted frame decoded with its key (`None` for plain
    /// frames). Replay protection: reject a frame whose counter does not increase.
    pub counter: Option<u32>,
    /// The objects in payload order (the packet id excluded).
    pub values: Vec<BtHomeValue>,
}

impl BtHome {
    /// Readings of the sensor quantities a ward needs (issue 11 item 6), in the object's own
    /// unit (bthome-ble `const.py` factors already applied):
    ///
    /// | object ids | quantity | code | unit |
    /// |---|---|---|---|
    /// | 0x02, 0x45, 0x57, 0x58 | temperature | [`mdc::TEMP_ROOM`] | °C |
    /// | 0x01 | battery | [`mdc::BATTERY_CHARGE`] | % |
    /// | 0x03, 0x2E | humidity | [`mdc::PVT_HUMIDITY_REL`] (private) | % |
    /// | 0x04 | pressure | [`mdc::PVT_PRESSURE_AMBIENT`] (private) | hPa |
    /// | 0x05 | illuminance | [`mdc::PVT_ILLUMINANCE`] (private) | lx |
    /// | 0x0C, 0x4A | voltage | [`mdc::PVT_BATTERY_VOLTAGE`] (private) | V |
    /// | 0x08 | dew point | [`mdc::PVT_DEW_POINT`] (private) | °C |
    ///
    /// Other objects (counts, energy, CO2, particulates, binary sensors, text, …) stay in the
    /// presence map only.
    pub fn readings(&self) -> Vec<Reading> {
        self.values
            .iter()
            .filter_map(|v| {
                let BtHomeData::Number(n) = v.data else {
                    return None;
                };
                let (code, unit) = match v.object_id {
                    0x02 | 0x45 | 0x57 | 0x58 => (mdc::TEMP_ROOM, Unit::DEGC),
                    0x01 => (mdc::BATTERY_CHARGE, Unit::PERCENT),
                    0x03 | 0x2E => (mdc::PVT_HUMIDITY_REL, Unit::PERCENT),
                    0x04 => (mdc::PVT_PRESSURE_AMBIENT, Unit::HECTO_PASCAL),
                    0x05 => (mdc::PVT_ILLUMINANCE, Unit::PVT_LUX),
                    0x0C | 0x4A => (mdc::PVT_BATTERY_VOLTAGE, Unit::VOLT),
                    0x08 => (mdc::PVT_DEW_POINT, Unit::DEGC),
                    _ => return None,
                };
                Some(reading(code, n, unit, None, &[]))
            })
            .collect()
    }
}

/// Object format: (name, size in bytes, signed, factor numerator, factor denominator, UCUM).
/// Size 0 = length-prefixed (text, raw). Source: bthome-ble `const.py` MEAS_TYPES.
type ObjectFormat = (&'static str, usize, bool, f64, f64, &'static str);

/// Names of the binary-sensor objects 0x15–0x2D (one byte, 0/1).
const BINARY_SENSORS: [&str; 25] = [
    "battery_low",
    "battery_charging",
    "carbon_monoxide",
    "cold",
    "connectivity",
    "door",
    "garage_door",
    "gas",
    "heat",
    "light",
    "lock",
    "moisture_detected",
    "motion",
    "moving",
    "occupancy",
    "plug",
    "presence",
    "problem",
    "running",
    "safety",
    "smoke",
    "sound",
    "tamper",
    "vibration",
    "window",
];

fn bthome_object(id: u8) -> Option<ObjectFormat> {
    Some(match id {
        0x00 => ("packet_id", 1, false, 1.0, 1.0, "1"),
        0x01 => ("battery", 1, false, 1.0, 1.0, "%"),
        0x02 => ("temperature", 2, true, 1.0, 100.0, "Cel"),
        0x03 => ("humidity", 2, false, 1.0, 100.0, "%"),
        0x04 => ("pressure", 3, false, 1.0, 100.0, "hPa"),
        0x05 => ("illuminance", 3, false, 1.0, 100.0, "lx"),
        0x06 => ("mass", 2, false, 1.0, 100.0, "kg"),
        0x07 => ("mass", 2, false, 1.0, 100.0, "[lb_av]"),
        0x08 => ("dew_point", 2, true, 1.0, 100.0, "Cel"),
        0x09 => ("count", 1, false, 1.0, 1.0, "1"),
        0x0A => ("energy", 3, false, 1.0, 1000.0, "kW.h"),
        0x0B => ("power", 3, false, 1.0, 100.0, "W"),
        0x0C => ("voltage", 2, false, 1.0, 1000.0, "V"),
        0x0D => ("pm2_5", 2, false, 1.0, 1.0, "ug/m3"),
        0x0E => ("pm10", 2, false, 1.0, 1.0, "ug/m3"),
        0x0F => ("generic", 1, false, 1.0, 1.0, "1"),
        0x10 => ("power_on", 1, false, 1.0, 1.0, "1"),
        0x11 => ("opening", 1, false, 1.0, 1.0, "1"),
        0x12 => ("co2", 2, false, 1.0, 1.0, "[ppm]"),
        0x13 => ("tvoc", 2, false, 1.0, 1.0, "ug/m3"),
        0x14 => ("moisture", 2, false, 1.0, 100.0, "%"),
        0x15..=0x2D => (
            BINARY_SENSORS[(id - 0x15) as usize],
            1,
            false,
            1.0,
            1.0,
            "1",
        ),
        0x2E => ("humidity", 1, false, 1.0, 1.0, "%"),
        0x2F => ("moisture", 1, false, 1.0, 1.0, "%"),
        0x3A => ("button", 1, false, 1.0, 1.0, "1"),
        0x3C => ("dimmer", 2, false, 1.0, 1.0, "1"),
        0x3D => ("count", 2, false, 1.0, 1.0, "1"),
        0x3E => ("count", 4, false, 1.0, 1.0, "1"),
        0x3F => ("rotation", 2, true, 1.0, 10.0, "deg"),
        0x40 => ("distance", 2, false, 1.0, 1.0, "mm"),
        0x41 => ("distance", 2, false, 1.0, 10.0, "m"),
        0x42 => ("duration", 3, false, 1.0, 1000.0, "s"),
        0x43 => ("current", 2, false, 1.0, 1000.0, "A"),
        0x44 => ("speed", 2, false, 1.0, 100.0, "m/s"),
        0x45 => ("temperature", 2, true, 1.0, 10.0, "Cel"),
        0x46 => ("uv_index", 1, false, 1.0, 10.0, "1"),
        0x47 => ("volume", 2, false, 1.0, 10.0, "L"),
        0x48 => ("volume", 2, false, 1.0, 1.0, "mL"),
        0x49 => ("volume_flow_rate", 2, false, 1.0, 1000.0, "m3/h"),
        0x4A => ("voltage", 2, false, 1.0, 10.0, "V"),
        0x4B => ("gas", 3, false, 1.0, 1000.0, "m3"),
        0x4C => ("gas", 4, false, 1.0, 1000.0, "m3"),
        0x4D => ("energy", 4, false, 1.0, 1000.0, "kW.h"),
        0x4E => ("volume", 4, false, 1.0, 1000.0, "L"),
        0x4F => ("water", 4, false, 1.0, 1000.0, "L"),
        0x50 => ("timestamp", 4, false, 1.0, 1.0, "s"),
        0x51 => ("acceleration", 2, false, 1.0, 1000.0, "m/s2"),
        0x52 => ("gyroscope", 2, false, 1.0, 1000.0, "deg/s"),
        0x53 => ("text", 0, false, 1.0, 1.0, "1"),
        0x54 => ("raw", 0, false, 1.0, 1.0, "1"),
        0x55 => ("volume_storage", 4, false, 1.0, 1000.0, "L"),
        0x56 => ("conductivity", 2, false, 1.0, 1.0, "uS/cm"),
        0x57 => ("temperature", 1, true, 1.0, 1.0, "Cel"),
        0x58 => ("temperature", 1, true, 35.0, 100.0, "Cel"),
        0x59 => ("count", 1, true, 1.0, 1.0, "1"),
        0x5A => ("count", 2, true, 1.0, 1.0, "1"),
        0x5B => ("count", 4, true, 1.0, 1.0, "1"),
        0x5C => ("power", 4, true, 1.0, 100.0, "W"),
        0x5D => ("current", 2, true, 1.0, 1000.0, "A"),
        0x5E => ("direction", 2, false, 1.0, 100.0, "deg"),
        0x5F => ("precipitation", 2, false, 1.0, 10.0, "mm"),
        0x60 => ("channel", 1, false, 1.0, 1.0, "1"),
        0x61 => ("rotational_speed", 2, false, 1.0, 1.0, "/min"),
        0x62 => ("speed", 4, true, 1.0, 1_000_000.0, "m/s"),
        0x63 => ("acceleration", 4, true, 1.0, 1_000_000.0, "m/s2"),
        0x64 => ("light_level", 1, false, 1.0, 1.0, "1"),
        _ => return None,
    })
}

/// Parses unencrypted BTHome v2 service data (after the 0xFCD2 UUID).
///
/// Errors: encrypted payloads (device-info bit 0: they need the device's key, see
/// [`parse_bthome_with_key`]), a version other than 2, an unknown object id (its size is
/// unknown, so the rest cannot be parsed), or an object cut off.
pub fn parse_bthome(data: &[u8]) -> Result<BtHome, DecodeError> {
    let mut r = Reader::new(data);
    let info = r.u8("BTHome device information")?;
    let version = info >> 5;
    if version != 2 {
        return Err(DecodeError::new(
            0,
            format!("BTHome version {version}, only version 2 is supported"),
        ));
    }
    if info & 0x01 != 0 {
        return Err(DecodeError::new(
            0,
            "encrypted BTHome payload (AES-CCM): needs the device's 16-byte key (bindkey)",
        ));
    }
    let mac = if info & 0x02 != 0 {
        let m = r.take(6, "MAC address")?;
        let mut a = [0u8; 6];
        a.copy_from_slice(m);
        Some(a)
    } else {
        None
    };
    let at = r.pos();
    parse_bthome_objects(info, mac, None, r.rest(), at)
}

/// Parses BTHome v2 service data (after the 0xFCD2 UUID) from a device that has a key:
/// decrypts and authenticates it ([`bthome_crypto::decrypt_bthome`]) and decodes the objects,
/// so an encrypted frame yields the same [`BtHome`] values and readings as the unencrypted
/// frame with the same objects, plus [`BtHome::counter`].
///
/// `mac` is the advertiser's address, most significant byte first (written order; btleplug's
/// `BDAddr` order); a MAC carried in the frame takes precedence.
///
/// An **unencrypted** frame is refused: once a device has a key, a plain frame claiming to be
/// it is a downgrade (the reference parser ignores such frames too). Offsets of errors in the
/// decrypted objects are those of the matching ciphertext bytes in `data`.
///
/// [`bthome_crypto::decrypt_bthome`]: crate::ble::decode::advertisement::bthome_crypto::decrypt_bthome
pub fn parse_bthome_with_key(
    data: &[u8],
    mac: [u8; 6],
    key: &[u8; 16],
) -> Result<BtHome, DecodeError> {
    if let Some(&info) = data.first() {
        if info & 0x01 == 0 && info >> 5 == 2 {
            return Err(DecodeError::new(
                0,
                "unencrypted BTHome payload from a device configured with a key: refused \
                 (possible downgrade)",
            ));
        }
    }
    let c = crate::ble::decode::advertisement::bthome_crypto::decrypt_bthome(mac, data, key)?;
    parse_bthome_objects(
        c.device_info,
        c.mac,
        Some(c.counter),
        &c.plaintext,
        c.header_len,
    )
}

/// Decodes the object sequence of a BTHome v2 frame; `base` is added to error offsets.
fn parse_bthome_objects(
    info: u8,
    mac: Option<[u8; 6]>,
    counter: Option<u32>,
    objects: &[u8],
    base: usize,
) -> Result<BtHome, DecodeError> {
    let shift = |e: DecodeError| DecodeError::new(base + e.offset, e.message);
    let mut r = Reader::new(objects);
    let mut packet_id = None;
    let mut values = Vec::new();
    while r.remaining() > 0 {
        let at = r.pos();
        let id = r.u8("object id").map_err(shift)?;
        let (name, size, signed, num, den, ucum) = bthome_object(id).ok_or_else(|| {
            DecodeError::new(base + at, format!("BTHome object id 0x{id:02x} unknown"))
        })?;
        if size == 0 {
            let len = r.u8(name).map_err(shift)? as usize;
            let b = r.take(len, name).map_err(shift)?;
            let data = if id == 0x53 {
                BtHomeData::Text(String::from_utf8_lossy(b).into_owned())
            } else {
                BtHomeData::Raw(b.to_vec())
            };
            values.push(BtHomeValue {
                object_id: id,
                name,
                data,
                ucum,
            });
            continue;
        }
        let b = r.take(size, name).map_err(shift)?;
        let mut le = [0u8; 8];
        le[..size].copy_from_slice(b);
        let unsigned = u64::from_le_bytes(le);
        let raw = if signed {
            let shift = 64 - 8 * size as u32;
            ((unsigned << shift) as i64 >> shift) as f64
        } else {
            unsigned as f64
        };
        if id == 0x00 {
            packet_id = Some(b[0]);
            continue;
        }
        values.push(BtHomeValue {
            object_id: id,
            name,
            data: BtHomeData::Number(raw * num / den),
            ucum,
        });
    }
    Ok(BtHome {
        device_info: info,
        trigger_based: info & 0x04 != 0,
        mac,
        packet_id,
        counter,
        values,
    })
}
