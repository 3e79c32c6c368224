//! Blood Pressure Measurement 0x2A35 (indicate) and Intermediate Cuff Pressure 0x2A36
//! (notify), Blood Pressure service 0x1810.
//!
//! Specification: Bluetooth SIG Blood Pressure Service (BLS) v1.1 §3.1 "Blood Pressure
//! Measurement" and §3.2 "Intermediate Cuff Pressure"; field definitions in the GATT
//! Specification Supplement (GSS) "Blood Pressure Measurement"; PROTOCOLS.md §C.2 (checked
//! against Nordic `BloodPressureMeasurementDataCallback`).
//!
//! ```text
//! flags u8 | systolic SFLOAT | diastolic SFLOAT | MAP SFLOAT | [Date Time 7 B]
//!          | [pulse rate SFLOAT, /min] | [user id u8, 0xFF unknown] | [measurement status u16]
//! flags: bit0 unit (0 mmHg, 1 kPa); bit1 time stamp; bit2 pulse rate; bit3 user id;
//!        bit4 measurement status
//! status: bit0 body movement; bit1 cuff too loose; bit2 irregular pulse; bits3–4 pulse-rate
//!         range (00 in range, 01 above upper limit, 10 below lower limit, 11 reserved);
//!         bit5 improper measurement position
//! ```
//!
//! Intermediate Cuff Pressure has the same layout; the first SFLOAT is the current cuff
//! pressure and the next two are unused (the spec sets them to NaN; Nordic's vectors use 0):
//! they are skipped.
//!
//! Readings (BP): [`mdc::NIBP_SYS`], [`mdc::NIBP_DIA`], [`mdc::NIBP_MEAN`] in mmHg or kPa as
//! sent, [`mdc::PULSE_RATE_NIBP`] in /min. Cuff: [`mdc::CUFF_PRESSURE`] and the pulse rate.
//! Status strings: `body-movement`, `cuff-too-loose`, `irregular-pulse`,
//! `pulse-rate-above-range`, `pulse-rate-below-range`, `pulse-rate-range-reserved`,
//! `improper-position`. The user id is kept in the typed struct only.

use super::push_med;
use crate::ble::decode::sfloat::MedFloat;
use crate::ble::decode::uuid::{sig16, Uuid};
use crate::ble::decode::{bit_names, DateTime, DecodeError, Reader};
use crate::observation::Reading;
use crate::observation::{mdc, Unit};

/// Blood Pressure Measurement characteristic UUID.
pub const UUID_MEASUREMENT: Uuid = sig16(0x2A35);
/// Intermediate Cuff Pressure characteristic UUID.
pub const UUID_INTERMEDIATE_CUFF: Uuid = sig16(0x2A36);

/// Pressure unit, flags bit 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PressureUnit {
    /// mmHg ([`Unit::MMHG`]).
    MmHg,
    /// kPa ([`Unit::KILO_PASCAL`]).
    KPa,
}

impl PressureUnit {
    /// The observation unit.
    pub fn unit(self) -> Unit {
        match self {
            PressureUnit::MmHg => Unit::MMHG,
            PressureUnit::KPa => Unit::KILO_PASCAL,
        }
    }
}

/// One decoded Blood Pressure Measurement (or, for 0x2A36, `systolic` is the cuff pressure
/// and `diastolic`/`mean` are the unused fields as sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BloodPressureMeasurement {
    /// Unit of the three pressures.
    pub unit: PressureUnit,
    /// Systolic pressure (0x2A36: current cuff pressure).
    pub systolic: MedFloat,
    /// Diastolic pressure (0x2A36: unused).
    pub diastolic: MedFloat,
    /// Mean arterial pressure (0x2A36: unused).
    pub mean: MedFloat,
    /// Device time stamp.
    pub time: Option<DateTime>,
    /// Pulse rate, /min.
    pub pulse_rate: Option<MedFloat>,
    /// User id (0xFF = unknown user).
    pub user_id: Option<u8>,
    /// Measurement status word.
    pub status: Option<u16>,
}

impl BloodPressureMeasurement {
    /// Status strings for the measurement status word (empty when absent or all clear).
    pub fn status_strings(&self) -> Vec<String> {
        let Some(s) = self.status else {
            return Vec::new();
        };
        let mut out = bit_names(
            s as u32,
            &[
                Some("body-movement"),
                Some("cuff-too-loose"),
                Some("irregular-pulse"),
            ],
        );
        match (s >> 3) & 0x03 {
            1 => out.push("pulse-rate-above-range".into()),
            2 => out.push("pulse-rate-below-range".into()),
            3 => out.push("pulse-rate-range-reserved".into()),
            _ => {}
        }
        if s & 0x20 != 0 {
            out.push("improper-position".into());
        }
        out
    }
}

/// Parses the shared 0x2A35/0x2A36 layout.
pub fn parse(bytes: &[u8]) -> Result<BloodPressureMeasurement, DecodeError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8("flags")?;
    let unit = if flags & 0x01 != 0 {
        PressureUnit::KPa
    } else {
        PressureUnit::MmHg
    };
    let systolic = r.sfloat("systolic")?;
    let diastolic = r.sfloat("diastolic")?;
    let mean = r.sfloat("mean arterial pressure")?;
    let time = if flags & 0x02 != 0 {
        Some(r.date_time("time stamp")?)
    } else {
        None
    };
    let pulse_rate = if flags & 0x04 != 0 {
        Some(r.sfloat("pulse rate")?)
    } else {
        None
    };
    let user_id = if flags & 0x08 != 0 {
        Some(r.u8("user id")?)
    } else {
        None
    };
    let status = if flags & 0x10 != 0 {
        Some(r.u16("measurement status")?)
    } else {
        None
    };
    Ok(BloodPressureMeasurement {
        unit,
        systolic,
        diastolic,
        mean,
        time,
        pulse_rate,
        user_id,
        status,
    })
}

fn time_and_status(m: &BloodPressureMeasurement) -> (Option<String>, Vec<String>) {
    (m.time.and_then(|t| t.to_iso()), m.status_strings())
}

/// Decodes a Blood Pressure Measurement (0x2A35): systolic, diastolic, mean (mmHg or kPa) and
/// the pulse rate when present.
pub fn decode(bytes: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    let m = parse(bytes)?;
    let (t, st) = time_and_status(&m);
    let u = m.unit.unit();
    let mut out = Vec::new();
    push_med(&mut out, mdc::NIBP_SYS, m.systolic, 0, u, &t, &st);
    push_med(&mut out, mdc::NIBP_DIA, m.diastolic, 0, u, &t, &st);
    push_med(&mut out, mdc::NIBP_MEAN, m.mean, 0, u, &t, &st);
    push_pulse(&mut out, &m, &t, &st);
    Ok(out)
}

/// The pulse rate (MDC_PULS_RATE_NON_INV, /min) of a measurement, when the flags say it is present.
fn push_pulse(
    out: &mut Vec<Reading>,
    m: &BloodPressureMeasurement,
    t: &Option<String>,
    st: &[String],
) {
    if let Some(p) = m.pulse_rate {
        push_med(out, mdc::PULSE_RATE_NIBP, p, 0, Unit::BEAT_PER_MIN, t, st);
    }
}

/// Decodes an Intermediate Cuff Pressure (0x2A36): the current cuff pressure
/// ([`mdc::CUFF_PRESSURE`]) and the pulse rate when present.
pub fn decode_intermediate_cuff(bytes: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    let m = parse(bytes)?;
    let (t, st) = time_and_status(&m);
    let mut out = Vec::new();
    push_med(
        &mut out,
        mdc::CUFF_PRESSURE,
        m.systolic,
        0,
        m.unit.unit(),
        &t,
        &st,
    );
    push_pulse(&mut out, &m, &t, &st);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::decode::test_util::*;

    #[test]
    fn c08_mmhg_no_optional_fields() {
        let r = decode(&hex("00bdf00b009ff0")).unwrap();
        let v: Vec<(u32, f64)> = r.iter().map(|r| (r.code, r.value)).collect();
        assert_eq!(v, [(150_021, 18.9), (150_022, 11.0), (150_023, 15.9)]);
        assert!(r
            .iter()
            .all(|r| r.unit == Unit::MMHG && r.device_time.is_none()));
        assert!(r.iter().all(|r| r.status.is_empty()));
    }

    #[test]
    fn c09_too_short() {
        assert_eq!(parse(&hex("010203040506")).unwrap_err().offset, 5);
        let e = parse(&hex("03020304050607")).unwrap_err();
        assert_eq!(e.offset, 7);
        assert!(e.message.contains("time stamp"), "{e}");
    }

    #[test]
    fn c10_cuff_with_everything() {
        let b = hex("1e0400000000000000041114293b3c00012700");
        let m = parse(&b).unwrap();
        assert_eq!(m.unit, PressureUnit::MmHg);
        let t = m.time.unwrap();
        assert_eq!(
            (t.year, t.month, t.day, t.hours, t.minutes, t.seconds),
            (0, 4, 17, 20, 41, 59)
        );
        assert_eq!(m.user_id, Some(1));
        assert_eq!(m.status, Some(0x27));
        let r = decode_intermediate_cuff(&b).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].code, r[0].value, r[0].unit),
            (150_300, 4.0, Unit::MMHG)
        );
        assert_eq!((r[1].code, r[1].value), (149_546, 60.0));
        // Year unknown: no device time.
        assert_eq!(r[0].device_time, None);
        assert_eq!(
            r[0].status,
            [
                "body-movement",
                "cuff-too-loose",
                "irregular-pulse",
                "improper-position"
            ]
        );
    }

    #[test]
    fn c11_cuff_kpa() {
        let r = decode_intermediate_cuff(&hex("156ff0000000003c001200")).unwrap();
        assert_eq!((r[0].value, r[0].unit), (11.1, Unit::KILO_PASCAL));
        assert_eq!(r[1].value, 60.0);
        assert_eq!(r[0].status, ["cuff-too-loose", "pulse-rate-below-range"]);
    }

    #[test]
    fn c12_cuff_plain() {
        let r = decode_intermediate_cuff(&hex("00d7f000000000")).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].code, r[0].value, r[0].unit),
            (150_300, 21.5, Unit::MMHG)
        );
    }

    #[test]
    fn special_values_are_not_numbers() {
        // Systolic NaN, diastolic NRes, mean 90, with a full time stamp and pulse +INF.
        let r = decode(&hex("06ff0700085a00e9070c1f173b3bfe07")).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].code, r[0].value), (150_023, 90.0));
        assert_eq!(r[0].device_time.as_deref(), Some("2025-12-31T23:59:59"));
        let m = parse(&hex("06ff0700085a00e9070c1f173b3bfe07")).unwrap();
        assert_eq!(m.systolic, MedFloat::NaN);
        assert_eq!(m.pulse_rate, Some(MedFloat::PositiveInfinity));
    }

    #[test]
    fn property_no_panic() {
        never_panics(
            seed(UUID_MEASUREMENT),
            &["1e0400000000000000041114293b3c00012700"],
            decode,
        );
        never_panics(
            seed(UUID_INTERMEDIATE_CUFF),
            &["156ff0000000003c001200"],
            decode_intermediate_cuff,
        );
    }
}
