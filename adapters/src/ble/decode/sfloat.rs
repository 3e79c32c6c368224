//! IEEE 11073-20601 medical floats as used by Bluetooth health characteristics.
//!
//! Specification: IEEE 11073-20601 Annex F.8 (FLOAT-Type, SFLOAT-Type); Bluetooth GATT
//! Specification Supplement §2.2 (`medfloat16`, `medfloat32`). Facts as collected in
//! PROTOCOLS.md §C.1 (HL7 PHD `FLOATS.md`, Nordic `Data.java`).
//!
//! - **SFLOAT**, 16 bits little-endian on air: high nibble = exponent (4-bit two's complement),
//!   low 12 bits = mantissa (12-bit two's complement). Value = mantissa × 10^exponent.
//! - **FLOAT**, 32 bits little-endian on air: high byte = exponent (8-bit two's complement),
//!   low 24 bits = mantissa (24-bit two's complement).
//! - Special values (exponent 0 and these mantissas): NaN `0x7FF`/`0x7FFFFF`, NRes
//!   `0x800`/`0x800000`, +INF `0x7FE`/`0x7FFFFE`, −INF `0x802`/`0x800002`, reserved
//!   `0x801`/`0x800001`. They are reported as a status (FHIR `dataAbsentReason`), never as a
//!   number: [`MedFloat::value`] returns `None` for them.
//!
//! The exponent carries precision (2, 2.0 and 2.00 are distinct encodings);
//! [`MedFloat::Value`] keeps mantissa and exponent so a consumer can keep it too.

/// A decoded SFLOAT or FLOAT: a finite decimal value, or one of the special values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MedFloat {
    /// A finite value, `mantissa × 10^exponent`.
    Value {
        /// Signed mantissa (12-bit range for SFLOAT, 24-bit for FLOAT).
        mantissa: i32,
        /// Signed decimal exponent (−8..=7 for SFLOAT, −128..=127 for FLOAT).
        exponent: i8,
    },
    /// Not a Number (SFLOAT `0x07FF`, FLOAT `0x007FFFFF`); FHIR dataAbsentReason `not-a-number`.
    NaN,
    /// Not at this Resolution (SFLOAT `0x0800`, FLOAT `0x00800000`): the value cannot be
    /// represented; FHIR dataAbsentReason `error`.
    NRes,
    /// +INFINITY (SFLOAT `0x07FE`, FLOAT `0x007FFFFE`); FHIR `positive-infinity`.
    PositiveInfinity,
    /// −INFINITY (SFLOAT `0x0802`, FLOAT `0x00800002`); FHIR `negative-infinity`.
    NegativeInfinity,
    /// Reserved for future use (SFLOAT `0x0801`, FLOAT `0x00800001`); FHIR `error`.
    Reserved,
}

impl MedFloat {
    /// Decodes a 16-bit SFLOAT (already assembled from its little-endian bytes).
    pub fn from_sfloat(raw: u16) -> MedFloat {
        match raw {
            0x07FF => return MedFloat::NaN,
            0x0800 => return MedFloat::NRes,
            0x07FE => return MedFloat::PositiveInfinity,
            0x0802 => return MedFloat::NegativeInfinity,
            0x0801 => return MedFloat::Reserved,
            _ => {}
        }
        // Sign-extend the 4-bit exponent and the 12-bit mantissa.
        let exponent = ((raw as i16) >> 12) as i8;
        let mantissa = (((raw << 4) as i16) >> 4) as i32;
        MedFloat::Value { mantissa, exponent }
    }

    /// Decodes a 32-bit FLOAT (already assembled from its little-endian bytes).
    pub fn from_float(raw: u32) -> MedFloat {
        match raw {
            0x007F_FFFF => return MedFloat::NaN,
            0x0080_0000 => return MedFloat::NRes,
            0x007F_FFFE => return MedFloat::PositiveInfinity,
            0x0080_0002 => return MedFloat::NegativeInfinity,
            0x0080_0001 => return MedFloat::Reserved,
            _ => {}
        }
        let exponent = (raw >> 24) as u8 as i8;
        let mantissa = ((raw << 8) as i32) >> 8;
        MedFloat::Value { mantissa, exponent }
    }

    /// The value as `f64`, or `None` for a special value. Computed as mantissa ÷ 10^−e (or
    /// × 10^e), so a value such as 18.9 (189 × 10⁻¹) is the `f64` nearest to 18.9.
    pub fn value(&self) -> Option<f64> {
        self.scaled(0)
    }

    /// The value × 10^`pow10` (a unit conversion by a power of ten, e.g. kg/L → mg/dL is
    /// `pow10 = 5`), computed from the decimal so no rounding error is added; `None` for a
    /// special value.
    pub fn scaled(&self, pow10: i32) -> Option<f64> {
        match *self {
            MedFloat::Value { mantissa, exponent } => {
                let e = exponent as i32 + pow10;
                let m = mantissa as f64;
                let v = if e >= 0 {
                    m * 10f64.powi(e)
                } else {
                    m / 10f64.powi(-e)
                };
                v.is_finite().then_some(v)
            }
            _ => None,
        }
    }

    /// Number of decimal places the encoding carries (0 for a non-negative exponent), e.g. 2 for
    /// 37.60 (3760 × 10⁻²). `None` for a special value.
    pub fn decimals(&self) -> Option<u32> {
        match *self {
            MedFloat::Value { exponent, .. } => Some(if exponent < 0 {
                exponent.unsigned_abs() as u32
            } else {
                0
            }),
            _ => None,
        }
    }

    /// Whether this is one of the special values.
    pub fn is_special(&self) -> bool {
        !matches!(self, MedFloat::Value { .. })
    }

    /// For a special value, its name as a status: `nan`, `nres`, `+inf`, `-inf`, `reserved`.
    pub fn special_name(&self) -> Option<&'static str> {
        match self {
            MedFloat::Value { .. } => None,
            MedFloat::NaN => Some("nan"),
            MedFloat::NRes => Some("nres"),
            MedFloat::PositiveInfinity => Some("+inf"),
            MedFloat::NegativeInfinity => Some("-inf"),
            MedFloat::Reserved => Some("reserved"),
        }
    }

    /// The FHIR `Observation.dataAbsentReason` code for a special value (HL7 PHD FLOATS.md):
    /// `not-a-number`, `positive-infinity`, `negative-infinity`, or `error` (NRes, reserved).
    pub fn data_absent_reason(&self) -> Option<&'static str> {
        match self {
            MedFloat::Value { .. } => None,
            MedFloat::NaN => Some("not-a-number"),
            MedFloat::PositiveInfinity => Some("positive-infinity"),
            MedFloat::NegativeInfinity => Some("negative-infinity"),
            MedFloat::NRes | MedFloat::Reserved => Some("error"),
        }
    }
}

/// Decodes an SFLOAT from its two on-air bytes (little-endian).
pub fn sfloat_le(bytes: [u8; 2]) -> MedFloat {
    MedFloat::from_sfloat(u16::from_le_bytes(bytes))
}

/// Decodes a FLOAT from its four on-air bytes (little-endian).
pub fn float_le(bytes: [u8; 4]) -> MedFloat {
    MedFloat::from_float(u32::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::decode::test_util::hex;

    fn s(h: &str) -> MedFloat {
        let b = hex(h);
        sfloat_le([b[0], b[1]])
    }
    fn f(h: &str) -> MedFloat {
        let b = hex(h);
        float_le([b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn c34_c36_values() {
        assert_eq!(s("65f0").value(), Some(10.1)); // C-34
        assert_eq!(f("01000000").value(), Some(1.0)); // C-36
    }

    #[test]
    fn c37_precision_is_kept() {
        let two = s("14f0");
        assert_eq!(
            two,
            MedFloat::Value {
                mantissa: 20,
                exponent: -1
            }
        );
        assert_eq!((two.value(), two.decimals()), (Some(2.0), Some(1)));
        let two00 = s("c8e0");
        assert_eq!((two00.value(), two00.decimals()), (Some(2.0), Some(2)));
        assert_eq!(s("0210").value(), Some(20.0));
        assert_eq!(s("0220").value(), Some(200.0));
        assert_eq!(s("2e0b").value(), Some(-1234.0));
        // The FLOATS.md FLOAT example for 20: 0x01000002 (see the ⚠ note in PROTOCOLS.md).
        assert_eq!(MedFloat::from_float(0x0100_0002).value(), Some(20.0));
    }

    #[test]
    fn c38_sfloat_specials() {
        assert_eq!(s("ff07"), MedFloat::NaN);
        assert_eq!(s("fe07"), MedFloat::PositiveInfinity);
        assert_eq!(s("0208"), MedFloat::NegativeInfinity);
        assert_eq!(s("0008"), MedFloat::NRes);
        assert_eq!(s("0108"), MedFloat::Reserved);
        for h in ["ff07", "fe07", "0208", "0008", "0108"] {
            assert_eq!(s(h).value(), None, "{h}");
            assert!(s(h).is_special());
        }
        // E-08: NRes → dataAbsentReason `error`.
        assert_eq!(s("0008").data_absent_reason(), Some("error"));
        assert_eq!(s("ff07").data_absent_reason(), Some("not-a-number"));
    }

    #[test]
    fn c39_float_specials() {
        assert_eq!(f("ffff7f00"), MedFloat::NaN);
        assert_eq!(f("feff7f00"), MedFloat::PositiveInfinity);
        assert_eq!(f("02008000"), MedFloat::NegativeInfinity);
        assert_eq!(f("00008000"), MedFloat::NRes);
        assert_eq!(f("01008000"), MedFloat::Reserved);
    }

    #[test]
    fn two_complement_not_bias() {
        // PROTOCOLS.md ⚠: 0x700A is 10 × 10^7 under two's complement, not 1.0.
        assert_eq!(s("0a70").value(), Some(100_000_000.0));
        assert_eq!(s("ff8f").value(), Some(-1e-8)); // m = -1, e = -8
        assert_eq!(f("b00e00fe").value(), Some(37.6));
        assert_eq!(f("b00e00fe").decimals(), Some(2));
    }

    #[test]
    fn scaled_conversion() {
        // 0.000105 kg/L (105 × 10⁻⁶) → 10.5 mg/dL.
        let v = MedFloat::Value {
            mantissa: 105,
            exponent: -6,
        };
        assert_eq!(v.scaled(5), Some(10.5));
        assert_eq!(MedFloat::NaN.scaled(5), None);
    }

    #[test]
    fn never_panics_on_any_raw_value() {
        for raw in 0..=u16::MAX {
            let v = MedFloat::from_sfloat(raw);
            let _ = (v.value(), v.decimals(), v.scaled(5));
        }
        let mut rng = fastrand::Rng::with_seed(20601);
        for _ in 0..5000 {
            let v = MedFloat::from_float(rng.u32(..));
            let _ = (v.value(), v.scaled(-300), v.scaled(300));
        }
    }
}
