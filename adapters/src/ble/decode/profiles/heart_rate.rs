//! Heart Rate Measurement, characteristic 0x2A37 (notify), Heart Rate service 0x180D.
//!
//! Specification: Bluetooth SIG Heart Rate Service (HRS) v1.0 §3.1 "Heart Rate Measurement",
//! field definitions in the GATT Specification Supplement (GSS) "Heart Rate Measurement";
//! PROTOCOLS.md §C.2 (checked against Nordic `HeartRateMeasurementDataCallback`).
//!
//! ```text
//! flags u8 | HR u8 or u16 | [Energy Expended u16, kJ] | [RR-Interval u16, 1/1024 s]…
//! flags: bit0 HR format (0 = u8, 1 = u16); bits1–2 sensor contact (0/1 not supported,
//!        2 supported but not detected, 3 detected); bit3 Energy Expended present;
//!        bit4 RR-Intervals present (they fill the rest of the value)
//! ```
//!
//! Readings: heart rate → [`mdc::HEART_RATE_ECG`] (147842) in /min (a chest strap measures the
//! ECG R-wave), status `no-sensor-contact` when the sensor says it has none; each RR-interval →
//! [`mdc::RR_INTERVAL`] (MDC_ECG_TIME_PD_RR_GL, 147240) in **ms** (raw × 1000/1024, exact in
//! binary floating point). Energy expended has no MDC code here: typed field only.

use super::reading;
use crate::ble::decode::uuid::{sig16, Uuid};
use crate::ble::decode::{DecodeError, Reader};
use crate::observation::Reading;
use crate::observation::{mdc, Unit};

/// Characteristic UUID.
pub const UUID: Uuid = sig16(0x2A37);

/// Sensor contact status, flags bits 1–2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SensorContact {
    /// The sensor does not report contact (values 0 and 1).
    NotSupported,
    /// Supported, and the sensor reports **no** skin contact (value 2).
    NotDetected,
    /// Supported and detected (value 3).
    Detected,
}

/// One decoded Heart Rate Measurement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartRateMeasurement {
    /// Heart rate, beats per minute.
    pub heart_rate: u16,
    /// Sensor contact status.
    pub sensor_contact: SensorContact,
    /// Energy expended since the last reset, kJ (65535 = at least that much).
    pub energy_expended_kj: Option<u16>,
    /// RR-intervals in units of 1/1024 s, oldest first.
    pub rr_intervals: Vec<u16>,
}

impl HeartRateMeasurement {
    /// The RR-intervals in milliseconds (raw × 1000 / 1024).
    pub fn rr_ms(&self) -> Vec<f64> {
        self.rr_intervals.iter().map(|&r| rr_to_ms(r)).collect()
    }
}

/// An RR-interval in 1/1024 s converted to milliseconds.
pub fn rr_to_ms(raw: u16) -> f64 {
    raw as f64 * 1000.0 / 1024.0
}

/// Parses a Heart Rate Measurement value.
///
/// Errors: empty value, HR or energy field cut off, RR flag set with no RR-interval (vector
/// C-05) or with an odd trailing byte.
pub fn parse(bytes: &[u8]) -> Result<HeartRateMeasurement, DecodeError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8("flags")?;
    let heart_rate = if flags & 0x01 != 0 {
        r.u16("heart rate (u16)")?
    } else {
        r.u8("heart rate (u8)")? as u16
    };
    let sensor_contact = match (flags >> 1) & 0x03 {
        2 => SensorContact::NotDetected,
        3 => SensorContact::Detected,
        _ => SensorContact::NotSupported,
    };
    let energy_expended_kj = if flags & 0x08 != 0 {
        Some(r.u16("energy expended")?)
    } else {
        None
    };
    let mut rr_intervals = Vec::new();
    if flags & 0x10 != 0 {
        if r.remaining() == 0 {
            return Err(DecodeError::new(
                r.pos(),
                "RR-interval: flag set but no RR-interval present",
            ));
        }
        while r.remaining() > 0 {
            rr_intervals.push(r.u16("RR-interval")?);
        }
    }
    Ok(HeartRateMeasurement {
        heart_rate,
        sensor_contact,
        energy_expended_kj,
        rr_intervals,
    })
}

/// Decodes a Heart Rate Measurement into readings: heart rate (/min), then one RR-interval
/// (ms) per interval. The strap sends no time stamp.
pub fn decode(bytes: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    let m = parse(bytes)?;
    let status: Vec<String> = if m.sensor_contact == SensorContact::NotDetected {
        vec!["no-sensor-contact".into()]
    } else {
        Vec::new()
    };
    let mut out = vec![reading(
        mdc::HEART_RATE_ECG,
        m.heart_rate as f64,
        Unit::BEAT_PER_MIN,
        None,
        &status,
    )];
    for ms in m.rr_ms() {
        out.push(reading(
            mdc::RR_INTERVAL,
            ms,
            Unit::MILLI_SEC,
            None,
            &status,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::decode::test_util::*;

    #[test]
    fn c01_u8_no_contact_support() {
        let m = parse(&hex("0055")).unwrap();
        assert_eq!(m.heart_rate, 85);
        assert_eq!(m.sensor_contact, SensorContact::NotSupported);
        assert_eq!(m.energy_expended_kj, None);
        assert!(m.rr_intervals.is_empty());
        let r = decode(&hex("0055")).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].code, r[0].value, r[0].unit),
            (147_842, 85.0, Unit::BEAT_PER_MIN)
        );
        assert!(r[0].status.is_empty());
    }

    #[test]
    fn c02_contact_not_detected() {
        let m = parse(&hex("04ff")).unwrap();
        assert_eq!(m.heart_rate, 255);
        assert_eq!(m.sensor_contact, SensorContact::NotDetected);
        assert_eq!(
            decode(&hex("04ff")).unwrap()[0].status,
            ["no-sensor-contact"]
        );
    }

    #[test]
    fn c05_rr_flag_without_rr_is_rejected() {
        let e = parse(&hex("170101")).unwrap_err();
        assert_eq!(e.offset, 3);
        // An odd trailing byte after a full RR-interval is rejected too.
        let e = parse(&hex("10500001ff")).unwrap_err();
        assert_eq!(e.offset, 4);
    }

    #[test]
    fn u16_energy_and_rr() {
        // flags 0x19: u16 HR, energy, RR; HR 300, 1000 kJ, RR 1024 (= 1000 ms).
        let m = parse(&hex("192c01e8030004")).unwrap();
        assert_eq!(m.heart_rate, 300);
        assert_eq!(m.energy_expended_kj, Some(1000));
        assert_eq!(m.rr_ms(), [1000.0]);
        assert!(parse(&hex("0800e8")).is_err());
        assert!(parse(&hex("")).is_err());
        assert!(parse(&hex("01ff")).is_err());
    }

    /// `data/real/ble/gatt_notifications.csv`, Polar H7 rows (ble-gatt-03..05).
    #[test]
    fn polar_h7_captures() {
        let rows = csv_rows("gatt_notifications.csv");
        let expect: [(&str, u16, &[f64]); 3] = [
            ("ble-gatt-03", 78, &[705.078, 695.313]),
            ("ble-gatt-04", 79, &[678.711]),
            ("ble-gatt-05", 80, &[687.500]),
        ];
        for (id, hr, rr) in expect {
            let row = rows.iter().find(|r| r["id"] == id).unwrap();
            assert!(row["characteristic"].starts_with("0x2A37"));
            let m = parse(&hex(&row["hex_payload"])).unwrap();
            assert_eq!(m.heart_rate, hr, "{id}");
            assert_eq!(m.sensor_contact, SensorContact::NotSupported, "{id}");
            let readings = decode(&hex(&row["hex_payload"])).unwrap();
            assert_eq!(readings[0].value, hr as f64);
            let got: Vec<f64> = readings[1..].iter().map(|r| r.value).collect();
            assert_eq!(got.len(), rr.len(), "{id}");
            for (g, w) in got.iter().zip(rr) {
                assert!((g - w).abs() < 0.0005, "{id}: {g} vs {w}");
            }
            assert!(readings[1..]
                .iter()
                .all(|r| r.code == mdc::RR_INTERVAL && r.unit == Unit::MILLI_SEC));
        }
        // The raw 1/1024 s values the source printed.
        assert_eq!(
            parse(&hex("104ed202c802")).unwrap().rr_intervals,
            [722, 712]
        );
    }

    #[test]
    fn property_no_panic() {
        never_panics(seed(UUID), &["192c01e8030004", "104ed202c802"], decode);
    }
}
