//! Temperature Measurement 0x2A1C (indicate), Health Thermometer service 0x1809; the same
//! layout serves Intermediate Temperature 0x2A1E.
//!
//! Specification: Bluetooth SIG Health Thermometer Service (HTS) v1.0 §3.1 "Temperature
//! Measurement" (and §3.3 Intermediate Temperature); GATT Specification Supplement (GSS)
//! "Temperature Measurement" and "Temperature Type" (0x2A1D); PROTOCOLS.md §C.2 (Nordic
//! `TemperatureMeasurementDataCallback`, SpeziBluetooth `HealthThermometerTests.swift`).
//!
//! ```text
//! flags u8 | temperature FLOAT (32-bit) | [Date Time 7 B] | [temperature type u8]
//! flags: bit0 unit (0 °C, 1 °F); bit1 time stamp; bit2 temperature type
//! type: 1 armpit, 2 body (general), 3 ear, 4 finger, 5 gastro-intestinal tract, 6 mouth,
//!       7 rectum, 8 toe, 9 tympanum (ear drum); 0 and 10–255 reserved
//! ```
//!
//! Reading: [`mdc::TEMP_BODY`] (150364) in °C ([`Unit::DEGC`]) or °F ([`Unit::FAHR`]) as sent,
//! whatever the site (HL7 PHD maps a finger temperature to 150364 too, PROTOCOLS.md E-06);
//! the site becomes a status string `site-<name>` (e.g. `site-finger`), a reserved type
//! `site-reserved`.

use super::push_med;
use crate::ble::decode::sfloat::MedFloat;
use crate::ble::decode::uuid::{sig16, Uuid};
use crate::ble::decode::{DateTime, DecodeError, Reader};
use crate::observation::Reading;
use crate::observation::{mdc, Unit};

/// Temperature Measurement characteristic UUID.
pub const UUID: Uuid = sig16(0x2A1C);
/// Intermediate Temperature characteristic UUID (same layout).
pub const UUID_INTERMEDIATE: Uuid = sig16(0x2A1E);

/// One decoded Temperature Measurement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemperatureMeasurement {
    /// `true` for °F, `false` for °C.
    pub fahrenheit: bool,
    /// The temperature (FLOAT).
    pub temperature: MedFloat,
    /// Device time stamp.
    pub time: Option<DateTime>,
    /// Temperature type (site) code, see [`site_name`].
    pub temperature_type: Option<u8>,
}

/// The measurement site for a Temperature Type code (GSS "Temperature Type"), `None` when
/// reserved: `armpit`, `body`, `ear`, `finger`, `gi-tract`, `mouth`, `rectum`, `toe`,
/// `tympanum`.
pub fn site_name(code: u8) -> Option<&'static str> {
    Some(match code {
        1 => "armpit",
        2 => "body",
        3 => "ear",
        4 => "finger",
        5 => "gi-tract",
        6 => "mouth",
        7 => "rectum",
        8 => "toe",
        9 => "tympanum",
        _ => return None,
    })
}

/// Parses a Temperature Measurement (or Intermediate Temperature) value.
pub fn parse(bytes: &[u8]) -> Result<TemperatureMeasurement, DecodeError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8("flags")?;
    let temperature = r.float("temperature")?;
    let time = if flags & 0x02 != 0 {
        Some(r.date_time("time stamp")?)
    } else {
        None
    };
    let temperature_type = if flags & 0x04 != 0 {
        Some(r.u8("temperature type")?)
    } else {
        None
    };
    Ok(TemperatureMeasurement {
        fahrenheit: flags & 0x01 != 0,
        temperature,
        time,
        temperature_type,
    })
}

/// Decodes a Temperature Measurement into one body-temperature reading (none for a special
/// FLOAT value).
pub fn decode(bytes: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    let m = parse(bytes)?;
    let unit = if m.fahrenheit { Unit::FAHR } else { Unit::DEGC };
    let status: Vec<String> = m
        .temperature_type
        .map(|c| format!("site-{}", site_name(c).unwrap_or("reserved")))
        .into_iter()
        .collect();
    let t = m.time.and_then(|t| t.to_iso());
    let mut out = Vec::new();
    push_med(
        &mut out,
        mdc::TEMP_BODY,
        m.temperature,
        0,
        unit,
        &t,
        &status,
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::decode::test_util::*;

    #[test]
    fn c14_type_flag_without_type_byte() {
        let e = parse(&hex("06b00e00fedc070c050b321b")).unwrap_err();
        assert_eq!(e.offset, 12);
        assert!(e.message.contains("temperature type"));
    }

    /// C-13 is named by E-06 (37.60 °C, finger) but missing from the C.3 table; this is C-14
    /// with the type byte (4 = finger) it lacks.
    #[test]
    fn e06_finger_temperature() {
        let r = decode(&hex("06b00e00fedc070c050b321b04")).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].code, r[0].value, r[0].unit),
            (150_364, 37.6, Unit::DEGC)
        );
        assert_eq!(r[0].device_time.as_deref(), Some("2012-12-05T11:50:27"));
        assert_eq!(r[0].status, ["site-finger"]);
        let m = parse(&hex("06b00e00fedc070c050b321b04")).unwrap();
        assert_eq!(m.temperature.decimals(), Some(2)); // 37.60
    }

    #[test]
    fn fahrenheit_and_specials() {
        // 98.6 °F (986 × 10⁻¹), no time, type 0 (reserved).
        let r = decode(&hex("05da0300ff00")).unwrap();
        assert_eq!((r[0].value, r[0].unit), (98.6, Unit::FAHR));
        assert_eq!(r[0].status, ["site-reserved"]);
        // FLOAT NaN → no reading.
        assert!(decode(&hex("00ffff7f00")).unwrap().is_empty());
        assert!(parse(&hex("00ffff7f")).is_err());
    }

    #[test]
    fn property_no_panic() {
        never_panics(seed(UUID), &["06b00e00fedc070c050b321b04"], decode);
    }
}
