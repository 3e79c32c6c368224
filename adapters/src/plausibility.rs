//! Plausibility: values outside what their MDC code can physically be are kept but flagged.
//!
//! A value that no living patient (or no sensor of that quantity) can produce — an SpO2 of
//! 127 %, a negative pulse rate, a body temperature of 90 °C — is a device fault, a decoding
//! error or a mis-mapped field (a `lines` map or an `exec` plug-in that puts the wrong column on
//! a code). Such an observation is **not** dropped: it is stored and sent upstream like any
//! other, with the status flag [`IMPLAUSIBLE`] appended to its `status`, so a clinician's
//! system can hide it and an engineer can still see what the device sent.
//!
//! The check runs in one place every observation passes: the gateway's store writer
//! (`gateway/src/pipeline.rs`, `PendingRows::push`), so every adapter — serial decoders, BLE
//! profiles, vendor profiles, advertisements, `lines`, `exec` — gets it without doing anything.
//! This module is pure (no I/O).
//!
//! The limits are *physical* (what has ever been recorded in a human, or what the quantity can
//! be by definition), never clinical alarm limits: a pulse of 250 /min is alarming but
//! plausible and is not flagged. Each limit in [`LIMITS`] names its source; docs/plausibility.md
//! has the same table for upstream readers. A code not in the table, or a unit the table does
//! not know for that code, is not checked (nothing to judge it by). A value that is not a finite
//! number is implausible for any code in the table.

use crate::observation::{mdc, Observation, Reading, Unit};

/// The status flag added to an implausible observation (wire: one of `status`'s strings).
pub const IMPLAUSIBLE: &str = "implausible";

/// The physical range of one MDC code, in the code's base unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// IEEE 11073-10101 measurement code.
    pub code: u32,
    /// The unit `min` and `max` are in; other units of the same quantity are converted
    /// ([`to_base`]).
    pub unit: Unit,
    /// Lowest plausible value, inclusive.
    pub min: f64,
    /// Highest plausible value, inclusive (`f64::INFINITY`: no upper bound).
    pub max: f64,
    /// Where the bounds come from (literature, device standard or definition).
    pub source: &'static str,
}

const SPO2_SRC: &str = "definition (SpO2 is the saturated fraction of haemoglobin, 0-100 %); \
    ISO 80601-2-61:2017 (pulse oximeters) declares SpO2 ranges within 0-100 %";
const RATE_SRC: &str = "0 = asystole; highest documented human ventricular rate 600 /min \
    (Chhabra L et al., Indian Pacing Electrophysiol J 2012;12(1):32-35)";
const RESP_SRC: &str = "0 = apnoea; 150 /min is more than twice the 99th centile at birth \
    (Fleming S et al., Lancet 2011;377:1011-1018), the highest age-specific rate";
const TEMP_SRC: &str = "lowest survived core temperature 13.7 C (Gilbert M et al., Lancet \
    2000;355:375-376), highest 46.5 C (Slovis CM et al., Ann Emerg Med 1982;11:269-271); \
    bounds 10-47 C";
const BP_SRC: &str = "highest recorded arterial pressure 480/350 mmHg, intra-arterial during \
    heavy lifting (MacDougall JD et al., J Appl Physiol 1985;58:785-790); bound 500 mmHg";
const IBP_SRC: &str = "as non-invasive, but the generic MDC_PRESS_BLD label also carries \
    venous channels (CVP), which can be a few mmHg below atmospheric: bound -50 mmHg";
const CUFF_SRC: &str = "IEC 80601-2-30 (automated NIBP) caps cuff pressure in normal use at \
    300 mmHg (adult); bound 500 mmHg as for blood pressure";
const PI_SRC: &str = "definition: pulsatile / non-pulsatile absorbance x 100, the pulsatile \
    part cannot exceed the whole";
const WEIGHT_SRC: &str = "heaviest recorded human about 635 kg (J. B. Minnoch, Guinness World \
    Records), smallest surviving newborns about 0.25 kg; bounds 0.1-700 kg";
const HEIGHT_SRC: &str = "tallest recorded human 272 cm (R. Wadlow, Guinness World Records), \
    extremely preterm newborns above 20 cm; bounds 15-300 cm";
const BMI_SRC: &str = "from the weight and height bounds' extremes (about 185 kg/m2 for the \
    heaviest recorded human); bounds 5-250 kg/m2";
const GLU_SRC: &str = "highest recorded blood glucose 2,656 mg/dL = 147.6 mmol/L (Guinness \
    World Records, 2008); bounds 0-3,000 mg/dL";
const BATT_SRC: &str = "definition; Bluetooth Battery Level (0x2A19) is 0-100 %, 101-255 \
    reserved";
const RR_SRC: &str = "100 ms = 600 /min, the highest documented rate (Chhabra 2012, as for \
    heart rate); 60 s = 1 /min";
const TEMP_ROOM_SRC: &str = "ambient sensor of a tag or beacon: ultra-low vaccine freezers \
    reach -86 C, common sensor ICs are rated to 125 C; bounds -100-150 C";
const COUNT_SRC: &str = "a count of doses or puffs: never negative";
const HUMID_SRC: &str = "definition: relative humidity is 0-100 % (sensors saturate at 100 %)";
const BARO_SRC: &str = "highest sea-level pressure recorded 1083.8 hPa (Agata, Siberia, 1968, \
    WMO Archive of Weather and Climate Extremes); the summit of Everest about 330 hPa; bounds \
    300-1100 hPa";
const LUX_SRC: &str = "direct sunlight is about 100,000-130,000 lx; bounds 0-200,000 lx";
const VOLT_SRC: &str = "a tag's battery: coin cells 3 V, packs well under 100 V; never negative";

macro_rules! lim {
    ($code:expr, $unit:expr, $min:expr, $max:expr, $src:expr) => {
        Limit {
            code: $code,
            unit: $unit,
            min: $min,
            max: $max,
            source: $src,
        }
    };
}

/// The table of physical limits per MDC code (docs/plausibility.md shows the same).
pub const LIMITS: &[Limit] = &[
    lim!(mdc::SPO2, Unit::PERCENT, 0.0, 100.0, SPO2_SRC),
    lim!(
        mdc::PULSE_RATE_OXIM,
        Unit::BEAT_PER_MIN,
        0.0,
        600.0,
        RATE_SRC
    ),
    lim!(
        mdc::HEART_RATE_ECG,
        Unit::BEAT_PER_MIN,
        0.0,
        600.0,
        RATE_SRC
    ),
    lim!(
        mdc::PULSE_RATE_NIBP,
        Unit::BEAT_PER_MIN,
        0.0,
        600.0,
        RATE_SRC
    ),
    lim!(mdc::PERFUSION_INDEX, Unit::PERCENT, 0.0, 100.0, PI_SRC),
    lim!(mdc::RESP_RATE, Unit::RESP_PER_MIN, 0.0, 150.0, RESP_SRC),
    lim!(mdc::TEMP_BODY, Unit::DEGC, 10.0, 47.0, TEMP_SRC),
    lim!(mdc::NIBP_SYS, Unit::MMHG, 0.0, 500.0, BP_SRC),
    lim!(mdc::NIBP_DIA, Unit::MMHG, 0.0, 500.0, BP_SRC),
    lim!(mdc::NIBP_MEAN, Unit::MMHG, 0.0, 500.0, BP_SRC),
    lim!(mdc::IBP_SYS, Unit::MMHG, -50.0, 500.0, IBP_SRC),
    lim!(mdc::IBP_DIA, Unit::MMHG, -50.0, 500.0, IBP_SRC),
    lim!(mdc::IBP_MEAN, Unit::MMHG, -50.0, 500.0, IBP_SRC),
    lim!(mdc::CUFF_PRESSURE, Unit::MMHG, 0.0, 500.0, CUFF_SRC),
    lim!(mdc::BODY_WEIGHT, Unit::KILO_G, 0.1, 700.0, WEIGHT_SRC),
    lim!(mdc::BODY_HEIGHT, Unit::CENTI_M, 15.0, 300.0, HEIGHT_SRC),
    lim!(mdc::BMI, Unit::KG_PER_M_SQ, 5.0, 250.0, BMI_SRC),
    lim!(mdc::GLU_GEN, Unit::MILLI_G_PER_DL, 0.0, 3000.0, GLU_SRC),
    lim!(
        mdc::GLU_CAPILLARY_WHOLEBLOOD,
        Unit::MILLI_G_PER_DL,
        0.0,
        3000.0,
        GLU_SRC
    ),
    lim!(
        mdc::GLU_CAPILLARY_PLASMA,
        Unit::MILLI_G_PER_DL,
        0.0,
        3000.0,
        GLU_SRC
    ),
    lim!(
        mdc::GLU_VENOUS_WHOLEBLOOD,
        Unit::MILLI_G_PER_DL,
        0.0,
        3000.0,
        GLU_SRC
    ),
    lim!(
        mdc::GLU_VENOUS_PLASMA,
        Unit::MILLI_G_PER_DL,
        0.0,
        3000.0,
        GLU_SRC
    ),
    lim!(
        mdc::GLU_ARTERIAL_WHOLEBLOOD,
        Unit::MILLI_G_PER_DL,
        0.0,
        3000.0,
        GLU_SRC
    ),
    lim!(
        mdc::GLU_ARTERIAL_PLASMA,
        Unit::MILLI_G_PER_DL,
        0.0,
        3000.0,
        GLU_SRC
    ),
    lim!(
        mdc::GLU_UNDETERMINED_WHOLEBLOOD,
        Unit::MILLI_G_PER_DL,
        0.0,
        3000.0,
        GLU_SRC
    ),
    lim!(
        mdc::GLU_UNDETERMINED_PLASMA,
        Unit::MILLI_G_PER_DL,
        0.0,
        3000.0,
        GLU_SRC
    ),
    lim!(mdc::GLU_CONTROL, Unit::MILLI_G_PER_DL, 0.0, 3000.0, GLU_SRC),
    lim!(mdc::GLU_ISF, Unit::MILLI_G_PER_DL, 0.0, 3000.0, GLU_SRC),
    lim!(mdc::BATTERY_CHARGE, Unit::PERCENT, 0.0, 100.0, BATT_SRC),
    lim!(mdc::RR_INTERVAL, Unit::MILLI_SEC, 100.0, 60_000.0, RR_SRC),
    lim!(mdc::TEMP_ROOM, Unit::DEGC, -100.0, 150.0, TEMP_ROOM_SRC),
    lim!(mdc::PVT_HUMIDITY_REL, Unit::PERCENT, 0.0, 100.0, HUMID_SRC),
    lim!(
        mdc::PVT_PRESSURE_AMBIENT,
        Unit::HECTO_PASCAL,
        300.0,
        1100.0,
        BARO_SRC
    ),
    lim!(mdc::PVT_ILLUMINANCE, Unit::PVT_LUX, 0.0, 200_000.0, LUX_SRC),
    lim!(mdc::PVT_BATTERY_VOLTAGE, Unit::VOLT, 0.0, 100.0, VOLT_SRC),
    lim!(mdc::PVT_DEW_POINT, Unit::DEGC, -100.0, 150.0, TEMP_ROOM_SRC),
    lim!(
        mdc::PVT_INHALER_ACTUATION,
        Unit::DIMLESS,
        0.0,
        f64::INFINITY,
        COUNT_SRC
    ),
    lim!(
        mdc::PVT_DOSES_REMAINING,
        Unit::DIMLESS,
        0.0,
        f64::INFINITY,
        COUNT_SRC
    ),
];

/// The limit of `code`, if the table has one.
pub fn limit(code: u32) -> Option<&'static Limit> {
    LIMITS.iter().find(|l| l.code == code)
}

/// `value` in `unit` converted to `base` (the unit of a [`Limit`]): identity when the units are
/// the same; °F → °C, kPa → mmHg, lb → kg, in → cm, mmol/L → mg/dL (glucose, 18.016 mg/dL per
/// mmol/L: molar mass 180.16 g/mol); `None` for any other pair (the value cannot be judged).
pub fn to_base(value: f64, unit: Unit, base: Unit) -> Option<f64> {
    if unit.mdc == base.mdc {
        return Some(value);
    }
    let (from, to) = (unit.mdc, base.mdc);
    match () {
        _ if from == Unit::FAHR.mdc && to == Unit::DEGC.mdc => Some((value - 32.0) * 5.0 / 9.0),
        _ if from == Unit::KILO_PASCAL.mdc && to == Unit::MMHG.mdc => Some(value / 0.133_322_4),
        _ if from == Unit::LB.mdc && to == Unit::KILO_G.mdc => Some(value * 0.453_592_37),
        _ if from == Unit::INCH.mdc && to == Unit::CENTI_M.mdc => Some(value * 2.54),
        _ if from == Unit::MILLI_MOLE_PER_L.mdc && to == Unit::MILLI_G_PER_DL.mdc => {
            Some(value * 18.016)
        }
        _ => None,
    }
}

/// Whether `value` of `code` in `unit` lies outside the code's physical range: `Some(true)`
/// implausible, `Some(false)` plausible, `None` not checked (no limit for the code, or a unit
/// the limit cannot be converted from).
pub fn implausible(code: u32, value: f64, unit: Unit) -> Option<bool> {
    let l = limit(code)?;
    if !value.is_finite() {
        return Some(true);
    }
    let v = to_base(value, unit, l.unit)?;
    // A tolerance of one part in a billion absorbs unit-conversion rounding at the bounds.
    let top = if l.max.is_finite() { l.max.abs() } else { 0.0 };
    let slack = 1e-9 * l.min.abs().max(top).max(1.0);
    Some(v < l.min - slack || v > l.max + slack)
}

/// Checks `o` and appends [`IMPLAUSIBLE`] to its `status` when its value is implausible (once:
/// a flag already there is not repeated). Returns whether it is implausible.
pub fn mark(o: &mut Observation) -> bool {
    if implausible(o.code, o.value, o.unit) != Some(true) {
        return false;
    }
    if !o.status.iter().any(|s| s == IMPLAUSIBLE) {
        o.status.push(IMPLAUSIBLE.to_owned());
    }
    true
}

/// The status flag of an observation whose device time cannot be when it was measured: more
/// than [`DEVICE_TIME_AHEAD_MS`] after the gateway's synchronised clock, or more than
/// [`DEVICE_TIME_BEHIND_MS`] before it (a device clock reset to 1970 or 2000, a year mis-set).
/// The row keeps `device_time` as the device sent it and `time_quality` `device`; its
/// `gateway_time` (arrival) is then the time to go by.
pub const DEVICE_TIME_IMPLAUSIBLE: &str = "device-time-implausible";
/// How far a device time may be ahead of the gateway clock: one day (a device keeps local time,
/// at most 14 h ahead of UTC, plus drift).
pub const DEVICE_TIME_AHEAD_MS: i64 = 24 * 3_600_000;
/// How far a device time may be behind the gateway clock: one year (a device may send readings
/// it stored, never ones from before its clock was last set right).
pub const DEVICE_TIME_BEHIND_MS: i64 = 366 * 24 * 3_600_000;

/// Whether `device_time` (the wire form `YYYY-MM-DDThh:mm:ss[.fff]`, device local time) is
/// implausible next to `gateway_ms` (ms since 1970, from a synchronised clock), see
/// [`DEVICE_TIME_IMPLAUSIBLE`]. A time that does not parse is not judged (`false`).
pub fn device_time_implausible(device_time: &str, gateway_ms: i64) -> bool {
    let Some(t) = wire_time_ms(device_time) else {
        return false;
    };
    t - gateway_ms > DEVICE_TIME_AHEAD_MS || gateway_ms - t > DEVICE_TIME_BEHIND_MS
}

/// `YYYY-MM-DDThh:mm:ss…` as ms since 1970 (taken as UTC; the fraction ignored).
fn wire_time_ms(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (H. Hinnant's algorithm), proleptic Gregorian.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000)
}

/// The status flags `r` would be stored with: its own, plus [`IMPLAUSIBLE`] when its value is
/// implausible (what `wardgate decode` prints, so an installer sees the flag before the
/// gateway runs).
pub fn status_of(r: &Reading) -> Vec<String> {
    let mut s = r.status.clone();
    if implausible(r.code, r.value, r.unit) == Some(true) && !s.iter().any(|f| f == IMPLAUSIBLE) {
        s.push(IMPLAUSIBLE.to_owned());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_times_far_from_the_clock_are_implausible() {
        assert_eq!(wire_time_ms("1970-01-01T00:00:00"), Some(0));
        assert_eq!(wire_time_ms("2000-03-01T00:00:01.5"), Some(951_868_801_000));
        assert_eq!(wire_time_ms("yesterday"), None);
        let now = wire_time_ms("2026-12-06T08:20:00").unwrap();
        for (t, bad) in [
            ("2026-12-06T08:20:00", false),
            ("2026-12-06T22:20:00", false), // UTC+14
            ("2026-12-07T08:20:01", true),
            ("2099-01-01T00:00:00", true),
            ("2025-12-06T08:20:00", false), // a stored reading, a year old
            ("2016-02-22T22:47:45", true),
            ("1970-01-01T00:00:00", true),
            ("0001-01-01T00:00:00", true),
            ("not a time", false),
        ] {
            assert_eq!(device_time_implausible(t, now), bad, "{t}");
        }
    }
    use crate::observation::DeviceId;

    fn check(code: u32, value: f64, unit: Unit) -> Option<bool> {
        implausible(code, value, unit)
    }

    #[test]
    fn every_code_has_one_limit_with_a_source_and_bounds_in_order() {
        for (i, l) in LIMITS.iter().enumerate() {
            assert!(l.min < l.max, "{l:?}");
            assert!(!l.source.is_empty(), "{l:?}");
            assert!(
                LIMITS[i + 1..].iter().all(|o| o.code != l.code),
                "{} twice",
                l.code
            );
            // Its bounds themselves are plausible, just outside is not.
            assert_eq!(check(l.code, l.min, l.unit), Some(false), "{l:?}");
            assert_eq!(check(l.code, l.min - 0.01, l.unit), Some(true), "{l:?}");
            if l.max.is_finite() {
                assert_eq!(check(l.code, l.max, l.unit), Some(false), "{l:?}");
                assert_eq!(check(l.code, l.max + 0.01, l.unit), Some(true), "{l:?}");
            }
            assert_eq!(check(l.code, f64::NAN, l.unit), Some(true), "{l:?}");
        }
    }

    #[test]
    fn the_documented_table_names_every_code() {
        let doc = include_str!("../../docs/plausibility.md");
        for l in LIMITS {
            assert!(
                doc.contains(&l.code.to_string()),
                "docs/plausibility.md does not list {}",
                l.code
            );
        }
    }

    #[test]
    fn spo2() {
        assert_eq!(check(mdc::SPO2, 97.0, Unit::PERCENT), Some(false));
        assert_eq!(check(mdc::SPO2, 100.0, Unit::PERCENT), Some(false));
        assert_eq!(check(mdc::SPO2, 101.0, Unit::PERCENT), Some(true));
        assert_eq!(check(mdc::SPO2, 127.0, Unit::PERCENT), Some(true));
        assert_eq!(check(mdc::SPO2, -1.0, Unit::PERCENT), Some(true));
    }

    #[test]
    fn pulse_and_heart_rates() {
        for code in [
            mdc::PULSE_RATE_OXIM,
            mdc::HEART_RATE_ECG,
            mdc::PULSE_RATE_NIBP,
        ] {
            assert_eq!(
                check(code, 0.0, Unit::BEAT_PER_MIN),
                Some(false),
                "asystole"
            );
            assert_eq!(check(code, 250.0, Unit::BEAT_PER_MIN), Some(false));
            assert_eq!(check(code, -5.0, Unit::BEAT_PER_MIN), Some(true));
            assert_eq!(check(code, 1000.0, Unit::BEAT_PER_MIN), Some(true));
        }
    }

    #[test]
    fn respiration_rate() {
        assert_eq!(check(mdc::RESP_RATE, 35.0, Unit::RESP_PER_MIN), Some(false));
        assert_eq!(check(mdc::RESP_RATE, 200.0, Unit::RESP_PER_MIN), Some(true));
        assert_eq!(check(mdc::RESP_RATE, -1.0, Unit::RESP_PER_MIN), Some(true));
    }

    #[test]
    fn body_temperature_in_celsius_and_fahrenheit() {
        assert_eq!(check(mdc::TEMP_BODY, 36.8, Unit::DEGC), Some(false));
        assert_eq!(check(mdc::TEMP_BODY, 90.0, Unit::DEGC), Some(true));
        assert_eq!(check(mdc::TEMP_BODY, 5.0, Unit::DEGC), Some(true));
        assert_eq!(check(mdc::TEMP_BODY, 98.6, Unit::FAHR), Some(false));
        assert_eq!(
            check(mdc::TEMP_BODY, 116.6, Unit::FAHR),
            Some(false),
            "47 C"
        );
        assert_eq!(check(mdc::TEMP_BODY, 120.0, Unit::FAHR), Some(true));
        // 36.8 read as °F is a unit mix-up: about 2.7 °C.
        assert_eq!(check(mdc::TEMP_BODY, 36.8, Unit::FAHR), Some(true));
    }

    #[test]
    fn blood_pressures_in_mmhg_and_kpa() {
        for code in [mdc::NIBP_SYS, mdc::NIBP_DIA, mdc::NIBP_MEAN] {
            assert_eq!(check(code, 121.0, Unit::MMHG), Some(false));
            assert_eq!(check(code, -3.0, Unit::MMHG), Some(true));
            assert_eq!(check(code, 600.0, Unit::MMHG), Some(true));
            assert_eq!(check(code, 16.1, Unit::KILO_PASCAL), Some(false));
            assert_eq!(check(code, 70.0, Unit::KILO_PASCAL), Some(true), "525 mmHg");
        }
        for code in [mdc::IBP_SYS, mdc::IBP_DIA, mdc::IBP_MEAN] {
            assert_eq!(check(code, -3.0, Unit::MMHG), Some(false), "CVP");
            assert_eq!(check(code, -60.0, Unit::MMHG), Some(true));
            assert_eq!(check(code, 600.0, Unit::MMHG), Some(true));
        }
        assert_eq!(check(mdc::CUFF_PRESSURE, 180.0, Unit::MMHG), Some(false));
        assert_eq!(check(mdc::CUFF_PRESSURE, -1.0, Unit::MMHG), Some(true));
    }

    #[test]
    fn perfusion_index_and_battery() {
        assert_eq!(check(mdc::PERFUSION_INDEX, 2.5, Unit::PERCENT), Some(false));
        assert_eq!(
            check(mdc::PERFUSION_INDEX, 120.0, Unit::PERCENT),
            Some(true)
        );
        assert_eq!(
            check(mdc::BATTERY_CHARGE, 100.0, Unit::PERCENT),
            Some(false)
        );
        assert_eq!(check(mdc::BATTERY_CHARGE, 255.0, Unit::PERCENT), Some(true));
    }

    #[test]
    fn body_weight_height_and_bmi() {
        assert_eq!(check(mdc::BODY_WEIGHT, 72.5, Unit::KILO_G), Some(false));
        assert_eq!(check(mdc::BODY_WEIGHT, 0.0, Unit::KILO_G), Some(true));
        assert_eq!(check(mdc::BODY_WEIGHT, 900.0, Unit::KILO_G), Some(true));
        assert_eq!(check(mdc::BODY_WEIGHT, 160.0, Unit::LB), Some(false));
        assert_eq!(
            check(mdc::BODY_WEIGHT, 2000.0, Unit::LB),
            Some(true),
            "907 kg"
        );
        assert_eq!(check(mdc::BODY_HEIGHT, 175.0, Unit::CENTI_M), Some(false));
        assert_eq!(check(mdc::BODY_HEIGHT, 400.0, Unit::CENTI_M), Some(true));
        assert_eq!(check(mdc::BODY_HEIGHT, 69.0, Unit::INCH), Some(false));
        assert_eq!(check(mdc::BODY_HEIGHT, 5.0, Unit::INCH), Some(true));
        assert_eq!(check(mdc::BMI, 23.0, Unit::KG_PER_M_SQ), Some(false));
        assert_eq!(check(mdc::BMI, 2.0, Unit::KG_PER_M_SQ), Some(true));
    }

    #[test]
    fn glucose_in_both_units_for_every_glucose_code() {
        for code in [
            mdc::GLU_GEN,
            mdc::GLU_CAPILLARY_WHOLEBLOOD,
            mdc::GLU_CAPILLARY_PLASMA,
            mdc::GLU_VENOUS_WHOLEBLOOD,
            mdc::GLU_VENOUS_PLASMA,
            mdc::GLU_ARTERIAL_WHOLEBLOOD,
            mdc::GLU_ARTERIAL_PLASMA,
            mdc::GLU_UNDETERMINED_WHOLEBLOOD,
            mdc::GLU_UNDETERMINED_PLASMA,
            mdc::GLU_CONTROL,
            mdc::GLU_ISF,
        ] {
            assert_eq!(check(code, 95.0, Unit::MILLI_G_PER_DL), Some(false));
            assert_eq!(check(code, -1.0, Unit::MILLI_G_PER_DL), Some(true));
            assert_eq!(check(code, 5000.0, Unit::MILLI_G_PER_DL), Some(true));
            assert_eq!(check(code, 5.3, Unit::MILLI_MOLE_PER_L), Some(false));
            assert_eq!(check(code, 200.0, Unit::MILLI_MOLE_PER_L), Some(true));
        }
    }

    #[test]
    fn rr_interval_room_temperature_and_counts() {
        assert_eq!(check(mdc::RR_INTERVAL, 850.0, Unit::MILLI_SEC), Some(false));
        assert_eq!(check(mdc::RR_INTERVAL, 20.0, Unit::MILLI_SEC), Some(true));
        assert_eq!(
            check(mdc::TEMP_ROOM, 4.5, Unit::DEGC),
            Some(false),
            "fridge"
        );
        assert_eq!(
            check(mdc::TEMP_ROOM, -80.0, Unit::DEGC),
            Some(false),
            "freezer"
        );
        assert_eq!(
            check(mdc::TEMP_ROOM, -300.0, Unit::DEGC),
            Some(true),
            "below 0 K"
        );
        assert_eq!(
            check(mdc::PVT_HUMIDITY_REL, 50.55, Unit::PERCENT),
            Some(false)
        );
        assert_eq!(
            check(mdc::PVT_HUMIDITY_REL, 120.0, Unit::PERCENT),
            Some(true)
        );
        assert_eq!(
            check(mdc::PVT_PRESSURE_AMBIENT, 1008.83, Unit::HECTO_PASCAL),
            Some(false)
        );
        assert_eq!(
            check(mdc::PVT_PRESSURE_AMBIENT, 0.0, Unit::HECTO_PASCAL),
            Some(true)
        );
        assert_eq!(
            check(mdc::PVT_ILLUMINANCE, 350.0, Unit::PVT_LUX),
            Some(false)
        );
        assert_eq!(check(mdc::PVT_ILLUMINANCE, -1.0, Unit::PVT_LUX), Some(true));
        assert_eq!(
            check(mdc::PVT_BATTERY_VOLTAGE, 2.84, Unit::VOLT),
            Some(false)
        );
        assert_eq!(
            check(mdc::PVT_BATTERY_VOLTAGE, -0.1, Unit::VOLT),
            Some(true)
        );
        assert_eq!(check(mdc::PVT_DEW_POINT, 9.0, Unit::DEGC), Some(false));
        for code in [mdc::PVT_INHALER_ACTUATION, mdc::PVT_DOSES_REMAINING] {
            assert_eq!(check(code, 120.0, Unit::DIMLESS), Some(false));
            assert_eq!(check(code, -1.0, Unit::DIMLESS), Some(true));
        }
    }

    #[test]
    fn codes_without_a_limit_and_unconvertible_units_are_not_checked() {
        assert_eq!(check(mdc::PLETH, -1e9, Unit::DIMLESS), None);
        assert_eq!(check(123_456, 1e12, Unit::PERCENT), None);
        assert_eq!(check(mdc::SPO2, 500.0, Unit::MMHG), None);
    }

    #[test]
    fn mark_appends_the_flag_once_and_keeps_the_value_and_other_flags() {
        let mut o = Observation::from_reading(
            DeviceId::serial("bed1"),
            Reading {
                code: mdc::SPO2,
                value: 127.0,
                unit: Unit::PERCENT,
                device_time: None,
                status: vec!["alarm".into()],
            },
            true,
        );
        let r = Reading {
            code: mdc::SPO2,
            value: 127.0,
            unit: Unit::PERCENT,
            device_time: None,
            status: vec!["alarm".into()],
        };
        assert_eq!(status_of(&r), ["alarm", IMPLAUSIBLE]);
        assert_eq!(
            status_of(&Reading {
                value: 97.0,
                ..r.clone()
            }),
            ["alarm"]
        );
        assert!(mark(&mut o));
        assert!(mark(&mut o));
        assert_eq!(o.status, vec!["alarm".to_string(), IMPLAUSIBLE.to_string()]);
        assert_eq!(o.value, 127.0);
        o.value = 98.0;
        o.status.clear();
        assert!(!mark(&mut o));
        assert!(o.status.is_empty());
    }
}
