//! Weight Measurement 0x2A9D (indicate) and Weight Scale Feature 0x2A9E (read), Weight Scale
//! service 0x181D.
//!
//! Specification: Bluetooth SIG Weight Scale Service (WSS) v1.0 §3.1 "Weight Scale Feature"
//! and §3.2 "Weight Measurement"; GATT Specification Supplement (GSS) field definitions;
//! PROTOCOLS.md §C.2 (SpeziBluetooth `WeightMeasurement.swift`, RonanB96
//! `test_weight_measurement.py`; resolution codes as in RonanB96 `weight_scale_feature.py` and
//! SpeziBluetooth's `WeightMeasurementResolution`).
//!
//! ```text
//! flags u8 | weight u16 | [Date Time 7 B] | [user id u8, 0xFF unknown] | [BMI u16, height u16]
//! flags: bit0 units (0 SI: kg and m, 1 imperial: lb and in); bit1 time stamp; bit2 user id;
//!        bit3 BMI and height
//! weight 0xFFFF = measurement unsuccessful. BMI is always 0.1 kg/m².
//! Default resolution: weight 0.005 kg / 0.01 lb, height 0.001 m / 0.1 in.
//! Feature (u32): bit0 time stamp; bit1 multiple users; bit2 BMI; bits3–6 weight resolution
//!   (1: 0.5 kg/1 lb, 2: 0.2/0.5, 3: 0.1/0.2, 4: 0.05/0.1, 5: 0.02/0.05, 6: 0.01/0.02,
//!    7: 0.005/0.01, 0 = not specified); bits7–9 height resolution (1: 0.01 m/1 in,
//!   2: 0.005 m/0.5 in, 3: 0.001 m/0.1 in, 0 = not specified)
//! ```
//!
//! Readings: [`mdc::BODY_WEIGHT`] (188736) in kg or lb, [`mdc::BMI`] (188752) in kg/m²,
//! [`mdc::BODY_HEIGHT`] (188740) in **cm** (SI) or in. An unsuccessful measurement gives no
//! weight reading and adds `measurement-unsuccessful` to the others. The user id stays in the
//! typed struct.

use super::reading;
use crate::ble::decode::uuid::{sig16, Uuid};
use crate::ble::decode::{DateTime, DecodeError, Reader};
use crate::observation::Reading;
use crate::observation::{mdc, Unit};

/// Weight Measurement characteristic UUID.
pub const UUID: Uuid = sig16(0x2A9D);
/// Weight Scale Feature characteristic UUID.
pub const UUID_FEATURE: Uuid = sig16(0x2A9E);

/// Weight Scale Feature (0x2A9E): what the scale supports and its resolutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WeightScaleFeature {
    /// The raw 32-bit feature word.
    pub raw: u32,
}

impl WeightScaleFeature {
    /// Parses the 4-byte feature value.
    pub fn parse(bytes: &[u8]) -> Result<WeightScaleFeature, DecodeError> {
        Ok(WeightScaleFeature {
            raw: Reader::new(bytes).u32("Weight Scale Feature")?,
        })
    }
    /// Weight resolution code, bits 3–6 (0 = not specified).
    pub fn weight_resolution(&self) -> u8 {
        ((self.raw >> 3) & 0x0F) as u8
    }
    /// Height resolution code, bits 7–9 (0 = not specified).
    pub fn height_resolution(&self) -> u8 {
        ((self.raw >> 7) & 0x07) as u8
    }
    /// One weight step as (numerator, denominator) in kg (SI) or lb (imperial).
    fn weight_step(&self, imperial: bool) -> (f64, f64) {
        match (self.weight_resolution(), imperial) {
            (1, false) => (5.0, 10.0),
            (2, false) => (2.0, 10.0),
            (3, false) => (1.0, 10.0),
            (4, false) => (5.0, 100.0),
            (5, false) => (2.0, 100.0),
            (6, false) => (1.0, 100.0),
            (1, true) => (1.0, 1.0),
            (2, true) => (5.0, 10.0),
            (3, true) => (2.0, 10.0),
            (4, true) => (1.0, 10.0),
            (5, true) => (5.0, 100.0),
            (6, true) => (2.0, 100.0),
            (_, false) => (5.0, 1000.0),
            (_, true) => (1.0, 100.0),
        }
    }
    /// One height step as (numerator, denominator) in **cm** (SI) or in (imperial).
    fn height_step(&self, imperial: bool) -> (f64, f64) {
        match (self.height_resolution(), imperial) {
            (1, false) => (1.0, 1.0),
            (2, false) => (5.0, 10.0),
            (1, true) => (1.0, 1.0),
            (2, true) => (5.0, 10.0),
            (_, _) => (1.0, 10.0),
        }
    }
}

/// One decoded Weight Measurement, values already scaled.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightMeasurement {
    /// `true`: lb and in; `false`: kg and cm.
    pub imperial: bool,
    /// Weight in kg or lb; `None` when the scale reports 0xFFFF (measurement unsuccessful).
    pub weight: Option<f64>,
    /// The raw weight field.
    pub weight_raw: u16,
    /// Device time stamp.
    pub time: Option<DateTime>,
    /// User id (0xFF = unknown user).
    pub user_id: Option<u8>,
    /// BMI, kg/m².
    pub bmi: Option<f64>,
    /// Height in cm (SI) or in (imperial).
    pub height: Option<f64>,
}

fn step(raw: u16, (num, den): (f64, f64)) -> f64 {
    raw as f64 * num / den
}

/// Parses a Weight Measurement with the default resolutions.
pub fn parse(bytes: &[u8]) -> Result<WeightMeasurement, DecodeError> {
    parse_with_feature(bytes, WeightScaleFeature::default())
}

/// Parses a Weight Measurement with the resolutions of the scale's Weight Scale Feature.
pub fn parse_with_feature(
    bytes: &[u8],
    feature: WeightScaleFeature,
) -> Result<WeightMeasurement, DecodeError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8("flags")?;
    let imperial = flags & 0x01 != 0;
    let weight_raw = r.u16("weight")?;
    let time = if flags & 0x02 != 0 {
        Some(r.date_time("time stamp")?)
    } else {
        None
    };
    let user_id = if flags & 0x04 != 0 {
        Some(r.u8("user id")?)
    } else {
        None
    };
    let (bmi, height) = if flags & 0x08 != 0 {
        let b = r.u16("BMI")?;
        let h = r.u16("height")?;
        (
            Some(b as f64 / 10.0),
            Some(step(h, feature.height_step(imperial))),
        )
    } else {
        (None, None)
    };
    Ok(WeightMeasurement {
        imperial,
        weight: (weight_raw != 0xFFFF).then(|| step(weight_raw, feature.weight_step(imperial))),
        weight_raw,
        time,
        user_id,
        bmi,
        height,
    })
}

/// Readings for a parsed measurement.
pub fn readings(m: &WeightMeasurement) -> Vec<Reading> {
    let t = m.time.and_then(|t| t.to_iso());
    let status: Vec<String> = if m.weight.is_none() {
        vec!["measurement-unsuccessful".into()]
    } else {
        Vec::new()
    };
    let (wu, hu) = if m.imperial {
        (Unit::LB, Unit::INCH)
    } else {
        (Unit::KILO_G, Unit::CENTI_M)
    };
    let mut out = Vec::new();
    if let Some(w) = m.weight {
        out.push(reading(mdc::BODY_WEIGHT, w, wu, t.clone(), &status));
    }
    if let Some(b) = m.bmi {
        out.push(reading(mdc::BMI, b, Unit::KG_PER_M_SQ, t.clone(), &status));
    }
    if let Some(h) = m.height {
        out.push(reading(mdc::BODY_HEIGHT, h, hu, t.clone(), &status));
    }
    out
}

/// Decodes a Weight Measurement (default resolutions) into weight, BMI and height readings.
pub fn decode(bytes: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    Ok(readings(&parse(bytes)?))
}

/// Decodes a Weight Measurement with the resolutions of `feature`.
pub fn decode_with_feature(
    bytes: &[u8],
    feature: WeightScaleFeature,
) -> Result<Vec<Reading>, DecodeError> {
    Ok(readings(&parse_with_feature(bytes, feature)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::decode::test_util::*;

    #[test]
    fn c23_c24_c25() {
        let r = decode(&hex("00b036")).unwrap();
        assert_eq!(
            (r[0].code, r[0].value, r[0].unit),
            (188_736, 70.0, Unit::KILO_G)
        );
        let r = decode(&hex("01543d")).unwrap();
        assert_eq!((r[0].value, r[0].unit), (157.0, Unit::LB));
        let r = decode(&hex("02b036e7070c190e1e2d")).unwrap();
        assert_eq!(r[0].value, 70.0);
        assert_eq!(r[0].device_time.as_deref(), Some("2023-12-25T14:30:45"));
    }

    /// `data/real/ble/gatt_notifications.csv`, A&D UC-352BLE rows (ble-gatt-01, -02).
    #[test]
    fn and_uc352_captures() {
        let rows = csv_rows("gatt_notifications.csv");
        for (id, kg, raw, time) in [
            ("ble-gatt-01", 65.70, 13140, "2026-08-22T08:42:36"),
            ("ble-gatt-02", 65.60, 13120, "2026-08-22T08:43:11"),
        ] {
            let row = rows.iter().find(|r| r["id"] == id).unwrap();
            assert!(row["characteristic"].starts_with("0x2A9D"));
            let b = hex(&row["hex_payload"]);
            let m = parse(&b).unwrap();
            assert_eq!(m.weight_raw, raw, "{id}");
            assert!(!m.imperial);
            let r = decode(&b).unwrap();
            assert_eq!(r.len(), 1, "{id}");
            assert_eq!(
                (r[0].code, r[0].value, r[0].unit),
                (188_736, kg, Unit::KILO_G)
            );
            assert_eq!(r[0].device_time.as_deref(), Some(time), "{id}");
        }
    }

    #[test]
    fn user_bmi_height_and_feature_resolution() {
        // SI, user 3, BMI 22.5, height 1750 × 0.001 m = 175.0 cm, weight 14000 raw.
        let b = hex("0cb03603e100d606");
        let m = parse(&b).unwrap();
        assert_eq!(m.user_id, Some(3));
        let r = decode(&b).unwrap();
        let v: Vec<(u32, f64, Unit)> = r.iter().map(|r| (r.code, r.value, r.unit)).collect();
        assert_eq!(
            v,
            [
                (188_736, 70.0, Unit::KILO_G),
                (188_752, 22.5, Unit::KG_PER_M_SQ),
                (188_740, 175.0, Unit::CENTI_M)
            ]
        );
        // Feature: weight resolution 3 (0.1 kg), height resolution 1 (0.01 m).
        let f = WeightScaleFeature::parse(&hex("98000000")).unwrap();
        assert_eq!((f.weight_resolution(), f.height_resolution()), (3, 1));
        let r = decode_with_feature(&hex("08bc02e100af00"), f).unwrap();
        // 700 × 0.1 kg = 70.0 kg; 175 × 1 cm.
        assert_eq!((r[0].value, r[2].value), (70.0, 175.0));
    }

    #[test]
    fn unsuccessful_measurement() {
        let r = decode(&hex("08ffffe100d606")).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].code, 188_752);
        assert_eq!(r[0].status, ["measurement-unsuccessful"]);
        assert!(decode(&hex("02b036e7070c190e1e")).is_err());
    }

    #[test]
    fn property_no_panic() {
        never_panics(seed(UUID), &["0eb036e7070c190e1e2d03e100d606"], decode);
        never_panics(seed(UUID_FEATURE), &[], |b| {
            WeightScaleFeature::parse(b).map(|f| decode_with_feature(b, f))
        });
    }
}
