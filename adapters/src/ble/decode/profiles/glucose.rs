//! Glucose Measurement 0x2A18 (notify) and Glucose Measurement Context 0x2A34 (notify),
//! Glucose service 0x1808.
//!
//! Specification: Bluetooth SIG Glucose Service (GLS) v1.0 §3.1 "Glucose Measurement" and
//! §3.2 "Glucose Measurement Context"; GATT Specification Supplement (GSS) field definitions;
//! PROTOCOLS.md §C.2 (Nordic `GlucoseMeasurementDataCallback`,
//! `GlucoseMeasurementContextDataCallback`).
//!
//! ```text
//! Measurement: flags u8 | sequence number u16 | base time (Date Time 7 B)
//!              | [time offset s16, minutes] | [concentration SFLOAT, type:4 | location:4]
//!              | [sensor status annunciation u16]
//!   flags: bit0 time offset; bit1 concentration + type/location; bit2 unit (0 kg/L, 1 mol/L);
//!          bit3 sensor status; bit4 context information follows (a 0x2A34 with the same
//!          sequence number)
//!   type (low nibble): 1 capillary whole blood, 2 capillary plasma, 3 venous whole blood,
//!          4 venous plasma, 5 arterial whole blood, 6 arterial plasma, 7 undetermined whole
//!          blood, 8 undetermined plasma, 9 interstitial fluid, 10 control solution
//!   location (high nibble): 1 finger, 2 alternate site test, 3 earlobe, 4 control solution,
//!          15 not available
//!   sensor status: bit0 device battery low; 1 sensor malfunction; 2 sample size
//!          insufficient; 3 strip insertion error; 4 strip type incorrect; 5 result higher
//!          than the device can process; 6 result lower than the device can process;
//!          7 temperature too high; 8 temperature too low; 9 read interrupted (strip pulled
//!          too soon); 10 general device fault; 11 time fault
//! Context:     flags u8 | sequence number u16 | [extended flags u8] | [carbohydrate id u8,
//!              carbohydrate SFLOAT kg] | [meal u8] | [tester:4 | health:4] | [exercise
//!              duration u16 s, intensity u8 %] | [medication id u8, medication SFLOAT kg or L]
//!              | [HbA1c SFLOAT %]
//!   flags: bit0 carbohydrate; bit1 meal; bit2 tester-health; bit3 exercise; bit4 medication;
//!          bit5 medication unit (0 kg, 1 L); bit6 HbA1c; bit7 extended flags
//! ```
//!
//! ⚠ Sensor status bits 5/6: GLS and most decoders (Wireshark `btatt`, Nordic nRF5 SDK style
//! C decoders) name bit 5 "higher" and bit 6 "lower"; Nordic's Android `GlucoseStatus` swaps
//! them. This module follows the specification.
//!
//! Readings: one concentration reading coded by sample type ([`mdc::GLU_CAPILLARY_WHOLEBLOOD`]
//! …, [`mdc::GLU_GEN`] for a reserved type), converted to **mg/dL** (kg/L × 10⁵) or
//! **mmol/L** (mol/L × 10³) by powers of ten on the decimal, so no rounding is added.
//! device_time = base time + time offset. Status: sensor-status strings (`device-battery-low`,
//! `sensor-malfunction`, `sample-size-insufficient`, `strip-insertion-error`,
//! `strip-type-incorrect`, `result-too-high`, `result-too-low`, `temperature-too-high`,
//! `temperature-too-low`, `read-interrupted`, `general-device-fault`, `time-fault`), the
//! sample location `site-finger` / `site-alternate` / `site-earlobe` / `site-control-solution`,
//! and `control-solution` when the sample type is 10 (not a patient value).
//!
//! The **sequence number** is the device's record number: [`GlucoseMeasurement::sequence`],
//! for deduplicating records re-sent through the Record Access Control Point.

use super::push_med;
use crate::ble::decode::sfloat::MedFloat;
use crate::ble::decode::uuid::{sig16, Uuid};
use crate::ble::decode::{bit_names, DateTime, DecodeError, Reader};
use crate::observation::Reading;
use crate::observation::{mdc, Unit};

/// Glucose Measurement characteristic UUID.
pub const UUID: Uuid = sig16(0x2A18);
/// Glucose Measurement Context characteristic UUID.
pub const UUID_CONTEXT: Uuid = sig16(0x2A34);

/// Concentration unit, flags bit 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConcentrationUnit {
    /// kg/L on the wire; readings in mg/dL.
    KgPerL,
    /// mol/L on the wire; readings in mmol/L.
    MolPerL,
}

/// Concentration with its sample type and location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Concentration {
    /// The value in `unit` (kg/L or mol/L, as sent).
    pub value: MedFloat,
    /// Wire unit.
    pub unit: ConcentrationUnit,
    /// Sample type code (low nibble).
    pub sample_type: u8,
    /// Sample location code (high nibble).
    pub sample_location: u8,
}

/// One decoded Glucose Measurement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlucoseMeasurement {
    /// Sequence number: the record's number in the meter's database (for dedup).
    pub sequence: u16,
    /// Base time.
    pub base_time: DateTime,
    /// Time offset from the base time, minutes.
    pub time_offset_min: Option<i16>,
    /// Concentration, when present.
    pub concentration: Option<Concentration>,
    /// Sensor status annunciation word.
    pub sensor_status: Option<u16>,
    /// A Glucose Measurement Context with the same sequence number follows.
    pub context_follows: bool,
}

impl GlucoseMeasurement {
    /// Base time plus time offset, as `YYYY-MM-DDThh:mm:ss` (None when the base time is
    /// incomplete).
    pub fn device_time(&self) -> Option<String> {
        let t = match self.time_offset_min {
            Some(o) => self.base_time.add_minutes(o as i32)?,
            None => self.base_time,
        };
        t.to_iso()
    }
}

/// The MDC code for a sample type (GLS "Type" field).
pub fn code_for_sample_type(t: u8) -> u32 {
    match t {
        1 => mdc::GLU_CAPILLARY_WHOLEBLOOD,
        2 => mdc::GLU_CAPILLARY_PLASMA,
        3 => mdc::GLU_VENOUS_WHOLEBLOOD,
        4 => mdc::GLU_VENOUS_PLASMA,
        5 => mdc::GLU_ARTERIAL_WHOLEBLOOD,
        6 => mdc::GLU_ARTERIAL_PLASMA,
        7 => mdc::GLU_UNDETERMINED_WHOLEBLOOD,
        8 => mdc::GLU_UNDETERMINED_PLASMA,
        9 => mdc::GLU_ISF,
        10 => mdc::GLU_CONTROL,
        _ => mdc::GLU_GEN,
    }
}

const SENSOR_STATUS: [Option<&str>; 12] = [
    Some("device-battery-low"),
    Some("sensor-malfunction"),
    Some("sample-size-insufficient"),
    Some("strip-insertion-error"),
    Some("strip-type-incorrect"),
    Some("result-too-high"),
    Some("result-too-low"),
    Some("temperature-too-high"),
    Some("temperature-too-low"),
    Some("read-interrupted"),
    Some("general-device-fault"),
    Some("time-fault"),
];

/// Parses a Glucose Measurement.
pub fn parse(bytes: &[u8]) -> Result<GlucoseMeasurement, DecodeError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8("flags")?;
    let sequence = r.u16("sequence number")?;
    let base_time = r.date_time("base time")?;
    let time_offset_min = if flags & 0x01 != 0 {
        Some(r.i16("time offset")?)
    } else {
        None
    };
    let concentration = if flags & 0x02 != 0 {
        let value = r.sfloat("glucose concentration")?;
        let tl = r.u8("type and sample location")?;
        Some(Concentration {
            value,
            unit: if flags & 0x04 != 0 {
                ConcentrationUnit::MolPerL
            } else {
                ConcentrationUnit::KgPerL
            },
            sample_type: tl & 0x0F,
            sample_location: tl >> 4,
        })
    } else {
        None
    };
    let sensor_status = if flags & 0x08 != 0 {
        Some(r.u16("sensor status annunciation")?)
    } else {
        None
    };
    Ok(GlucoseMeasurement {
        sequence,
        base_time,
        time_offset_min,
        concentration,
        sensor_status,
        context_follows: flags & 0x10 != 0,
    })
}

/// Readings for a parsed measurement (none when it carries no concentration or a special
/// value).
pub fn readings(m: &GlucoseMeasurement) -> Vec<Reading> {
    let mut status = m
        .sensor_status
        .map(|s| bit_names(s as u32, &SENSOR_STATUS))
        .unwrap_or_default();
    let mut out = Vec::new();
    if let Some(c) = m.concentration {
        match c.sample_location {
            1 => status.push("site-finger".into()),
            2 => status.push("site-alternate".into()),
            3 => status.push("site-earlobe".into()),
            4 => status.push("site-control-solution".into()),
            _ => {}
        }
        if c.sample_type == 10 {
            status.push("control-solution".into());
        }
        let (pow10, unit) = match c.unit {
            ConcentrationUnit::KgPerL => (5, Unit::MILLI_G_PER_DL),
            ConcentrationUnit::MolPerL => (3, Unit::MILLI_MOLE_PER_L),
        };
        push_med(
            &mut out,
            code_for_sample_type(c.sample_type),
            c.value,
            pow10,
            unit,
            &m.device_time(),
            &status,
        );
    }
    out
}

/// Decodes a Glucose Measurement into its concentration reading. Use [`parse`] for the
/// sequence number.
pub fn decode(bytes: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    Ok(readings(&parse(bytes)?))
}

/// Medication amount unit of a context record (flags bit 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MedicationUnit {
    /// Kilograms (GSS); Nordic's decoder calls it milligrams.
    Kilogram,
    /// Litres (GSS); Nordic's decoder calls it millilitres.
    Litre,
}

/// One decoded Glucose Measurement Context. Raw ids are kept; see the module table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlucoseContext {
    /// Sequence number of the measurement this context belongs to.
    pub sequence: u16,
    /// Extended flags (reserved for future use).
    pub extended_flags: Option<u8>,
    /// Carbohydrate id (1 breakfast, 2 lunch, 3 dinner, 4 snack, 5 drink, 6 supper,
    /// 7 brunch) and amount (kilograms per GSS).
    pub carbohydrate: Option<(u8, MedFloat)>,
    /// Meal (1 preprandial, 2 postprandial, 3 fasting, 4 casual, 5 bedtime).
    pub meal: Option<u8>,
    /// Tester (1 self, 2 health care professional, 3 lab test, 15 not available) — low nibble.
    pub tester: Option<u8>,
    /// Health (1 minor issues, 2 major issues, 3 during menses, 4 under stress, 5 no issues,
    /// 15 not available) — high nibble.
    pub health: Option<u8>,
    /// Exercise duration (s, 65535 = overrun) and intensity (%).
    pub exercise: Option<(u16, u8)>,
    /// Medication id (1 rapid-acting insulin, 2 short-acting, 3 intermediate-acting,
    /// 4 long-acting, 5 pre-mixed), amount and unit.
    pub medication: Option<(u8, MedFloat, MedicationUnit)>,
    /// HbA1c, %.
    pub hba1c: Option<MedFloat>,
}

/// Parses a Glucose Measurement Context (0x2A34). It carries no reading of its own: join it
/// to the measurement with the same [`GlucoseContext::sequence`].
pub fn parse_context(bytes: &[u8]) -> Result<GlucoseContext, DecodeError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8("flags")?;
    let sequence = r.u16("sequence number")?;
    let extended_flags = if flags & 0x80 != 0 {
        Some(r.u8("extended flags")?)
    } else {
        None
    };
    let carbohydrate = if flags & 0x01 != 0 {
        Some((r.u8("carbohydrate id")?, r.sfloat("carbohydrate")?))
    } else {
        None
    };
    let meal = if flags & 0x02 != 0 {
        Some(r.u8("meal")?)
    } else {
        None
    };
    let (tester, health) = if flags & 0x04 != 0 {
        let b = r.u8("tester and health")?;
        (Some(b & 0x0F), Some(b >> 4))
    } else {
        (None, None)
    };
    let exercise = if flags & 0x08 != 0 {
        Some((r.u16("exercise duration")?, r.u8("exercise intensity")?))
    } else {
        None
    };
    let medication = if flags & 0x10 != 0 {
        let id = r.u8("medication id")?;
        let v = r.sfloat("medication")?;
        let unit = if flags & 0x20 != 0 {
            MedicationUnit::Litre
        } else {
            MedicationUnit::Kilogram
        };
        Some((id, v, unit))
    } else {
        None
    };
    let hba1c = if flags & 0x40 != 0 {
        Some(r.sfloat("HbA1c")?)
    } else {
        None
    };
    Ok(GlucoseContext {
        sequence,
        extended_flags,
        carbohydrate,
        meal,
        tester,
        health,
        exercise,
        medication,
        hba1c,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::decode::test_util::*;

    /// C-16. PROTOCOLS.md says "time offset missing"; with flags 0x1B the 15 bytes hold the
    /// offset, concentration and type, and it is the sensor-status word that is cut off.
    #[test]
    fn c16_truncated() {
        let e = parse(&hex("1b0000e207041a0b091e1e00120501")).unwrap_err();
        assert_eq!(e.offset, 15);
        assert!(e.message.contains("sensor status"), "{e}");
    }

    #[test]
    fn full_measurement_kg_per_l() {
        // seq 7, 2018-04-26 11:09:30, offset +30 min, 0xB05A = 90 × 10⁻⁵ kg/L = 90 mg/dL,
        // capillary whole blood at the finger, status 0x0001 (battery low), context follows.
        let b = hex("1b0700e207041a0b091e1e005ab0110100");
        let m = parse(&b).unwrap();
        assert_eq!(m.sequence, 7);
        assert!(m.context_follows);
        assert_eq!(m.device_time().as_deref(), Some("2018-04-26T11:39:30"));
        let r = readings(&m);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].code, r[0].value, r[0].unit),
            (160_184, 90.0, Unit::MILLI_G_PER_DL)
        );
        assert_eq!(r[0].status, ["device-battery-low", "site-finger"]);
    }

    #[test]
    fn mol_per_l_control_solution_and_negative_offset() {
        // flags 0x07: offset −90 min, 56 × 10⁻⁴ mol/L (0xC038) = 5.6 mmol/L, control solution
        // (type 10) from the control-solution location (4).
        let b = hex("070100e207041a0b091ea6ff38c04a");
        let m = parse(&b).unwrap();
        assert_eq!(m.time_offset_min, Some(-90));
        let r = readings(&m);
        assert_eq!((r[0].value, r[0].unit), (5.6, Unit::MILLI_MOLE_PER_L));
        assert_eq!(r[0].code, 160_208);
        assert_eq!(r[0].status, ["site-control-solution", "control-solution"]);
        assert_eq!(r[0].device_time.as_deref(), Some("2018-04-26T09:39:30"));
    }

    #[test]
    fn spec_bit_order_for_high_low() {
        let b = hex("0a0200e207041a0b091e5ab0112000");
        assert_eq!(
            decode(&b).unwrap()[0].status,
            ["result-too-high", "site-finger"]
        );
    }

    #[test]
    fn context() {
        // flags 0xFF: extended flags 0, carbohydrate 1 (breakfast) 5 × 10⁻² kg, meal 1,
        // tester self / health no issues (0x51), exercise 1800 s at 50 %, medication 1
        // (rapid-acting insulin) 5 × 10⁻¹ in litres (bit 5), HbA1c 6.5 %.
        let b = hex("ff0700000105e001510807320105f041f0");
        let c = parse_context(&b).unwrap();
        assert_eq!(c.sequence, 7);
        assert_eq!(c.extended_flags, Some(0));
        assert_eq!(
            c.carbohydrate.map(|(i, v)| (i, v.value())),
            Some((1, Some(0.05)))
        );
        assert_eq!(c.meal, Some(1));
        assert_eq!((c.tester, c.health), (Some(1), Some(5)));
        assert_eq!(c.exercise, Some((1800, 50)));
        let (id, v, u) = c.medication.unwrap();
        assert_eq!((id, v.value(), u), (1, Some(0.5), MedicationUnit::Litre));
        assert_eq!(c.hba1c.and_then(|v| v.value()), Some(6.5));
        assert!(parse_context(&b[..b.len() - 1]).is_err());
        assert!(parse_context(&hex("0007")).is_err());
    }

    #[test]
    fn property_no_panic() {
        never_panics(seed(UUID), &["1b0700e207041a0b091e1e005ab0110100"], |b| {
            parse(b).map(|m| (readings(&m), m.device_time()))
        });
        never_panics(
            seed(UUID_CONTEXT),
            &["ff0700000105e001510807320105f041f0"],
            parse_context,
        );
    }
}

/// Record Access Control Point (0x2A52) request "Report stored records" (op code 0x01):
/// all records (operator 0x01) when `from` is `None`, else records whose sequence number is
/// greater than or equal to `from` (operator 0x03, filter type 0x01 = sequence number, u16 LE).
/// Source: Glucose Profile / GSS §3.186 (Record Access Control Point), PROTOCOLS.md §C.2.
pub fn racp_request(from: Option<u16>) -> Vec<u8> {
    match from {
        None => vec![0x01, 0x01],
        Some(s) => {
            let [lo, hi] = s.to_le_bytes();
            vec![0x01, 0x03, 0x01, lo, hi]
        }
    }
}

#[cfg(test)]
mod racp_tests {
    #[test]
    fn racp_requests() {
        assert_eq!(super::racp_request(None), [0x01, 0x01]);
        assert_eq!(
            super::racp_request(Some(0x0102)),
            [0x01, 0x03, 0x01, 0x02, 0x01]
        );
    }
}
