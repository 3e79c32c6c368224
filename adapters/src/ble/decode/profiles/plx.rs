//! PLX Spot-Check Measurement 0x2A5E (indicate) and PLX Continuous Measurement 0x2A5F
//! (notify), Pulse Oximeter service 0x1822.
//!
//! Specification: Bluetooth SIG Pulse Oximeter Service (PLXS) v1.0 §3.1 "PLX Spot-check
//! Measurement" and §3.2 "PLX Continuous Measurement"; GATT Specification Supplement (GSS)
//! field definitions; PROTOCOLS.md §C.2 (SpeziBluetooth `PLXSpotCheckMeasurement.swift`,
//! `PLXContinuousMeasurement.swift`; the RonanB96 "SPO2PR_FAST" naming of spot-check bit 0 is
//! wrong, bit 0 is the time stamp).
//!
//! ```text
//! Spot-check:  flags u8 | SpO2 SFLOAT % | PR SFLOAT /min | [Date Time] | [meas. status u16]
//!              | [device & sensor status u24] | [pulse amplitude index SFLOAT %]
//!   flags: bit0 time stamp; bit1 measurement status; bit2 device & sensor status; bit3 PAI;
//!          bit4 device clock not set
//! Continuous:  flags u8 | SpO2 | PR | [SpO2 fast, PR fast] | [SpO2 slow, PR slow]
//!              | [meas. status u16] | [device & sensor status u24] | [PAI]
//!   flags: bit0 SpO2PR-Fast; bit1 SpO2PR-Slow; bit2 measurement status;
//!          bit3 device & sensor status; bit4 PAI
//! ```
//!
//! Readings: [`mdc::SPO2`] (150456) in %, [`mdc::PULSE_RATE_OXIM`] (149530) in /min,
//! PAI as [`mdc::PERFUSION_INDEX`] (150488, MDC_PULS_OXIM_PERF_REL) in %. The fast and slow
//! averages of the continuous measurement are extra SpO2/PR readings with status `fast` /
//! `slow`. Status strings: measurement status bits 5–15 (`measurement-ongoing`,
//! `early-estimate`, `validated`, `fully-qualified`, `from-storage`, `demo`, `testing`,
//! `calibration-ongoing`, `unavailable`, `questionable`, `invalid`) and device & sensor status
//! bits 0–15 (`extended-display-update`, `equipment-malfunction`,
//! `signal-processing-irregularity`, `inadequate-signal`, `poor-signal`, `low-perfusion`,
//! `erratic-signal`, `non-pulsatile`, `questionable-pulse`, `signal-analysis-ongoing`,
//! `sensor-interference`, `sensor-unconnected`, `unknown-sensor`, `sensor-displaced`,
//! `sensor-malfunction`, `sensor-disconnected`). When the spot-check says the device clock is
//! not set, its time stamp is not used as device time and `device-clock-not-set` is added.

use super::push_med;
use crate::ble::decode::sfloat::MedFloat;
use crate::ble::decode::uuid::{sig16, Uuid};
use crate::ble::decode::{bit_names, DateTime, DecodeError, Reader};
use crate::observation::Reading;
use crate::observation::{mdc, Unit};

/// PLX Spot-Check Measurement characteristic UUID.
pub const UUID_SPOT_CHECK: Uuid = sig16(0x2A5E);
/// PLX Continuous Measurement characteristic UUID.
pub const UUID_CONTINUOUS: Uuid = sig16(0x2A5F);
/// PLX Features characteristic UUID.
pub const UUID_FEATURES: Uuid = sig16(0x2A60);

/// PLX Features (0x2A60, PLXS §3.3): `supported features u16 | [measurement status support
/// u16] | [device & sensor status support u24]`. Feature bits: 0 measurement status support
/// present, 1 device & sensor status support present, 2 spot-check measurement storage,
/// 3 spot-check time stamp, 4 SpO2PR-Fast, 5 SpO2PR-Slow, 6 pulse amplitude index,
/// 7 multiple bonds. The support words use the bit layout of the status fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlxFeatures {
    /// Supported-features word.
    pub features: u16,
    /// Which measurement status bits the device can set.
    pub measurement_status_support: Option<u16>,
    /// Which device & sensor status bits the device can set.
    pub device_status_support: Option<u32>,
}

impl PlxFeatures {
    /// Names of the supported features: `measurement-status`, `device-status`,
    /// `spot-check-storage`, `spot-check-timestamp`, `spo2pr-fast`, `spo2pr-slow`,
    /// `pulse-amplitude-index`, `multiple-bonds`.
    pub fn feature_names(&self) -> Vec<String> {
        bit_names(
            self.features as u32,
            &[
                Some("measurement-status"),
                Some("device-status"),
                Some("spot-check-storage"),
                Some("spot-check-timestamp"),
                Some("spo2pr-fast"),
                Some("spo2pr-slow"),
                Some("pulse-amplitude-index"),
                Some("multiple-bonds"),
            ],
        )
    }
}

/// Parses PLX Features.
pub fn parse_features(bytes: &[u8]) -> Result<PlxFeatures, DecodeError> {
    let mut r = Reader::new(bytes);
    let features = r.u16("supported features")?;
    let measurement_status_support = if features & 0x01 != 0 {
        Some(r.u16("measurement status support")?)
    } else {
        None
    };
    let device_status_support = if features & 0x02 != 0 {
        Some(r.u24("device and sensor status support")?)
    } else {
        None
    };
    Ok(PlxFeatures {
        features,
        measurement_status_support,
        device_status_support,
    })
}

/// One decoded PLX Spot-Check Measurement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpotCheck {
    /// SpO2, %.
    pub spo2: MedFloat,
    /// Pulse rate, /min.
    pub pulse_rate: MedFloat,
    /// Device time stamp.
    pub time: Option<DateTime>,
    /// Measurement status word.
    pub measurement_status: Option<u16>,
    /// Device and sensor status (24 bits).
    pub device_status: Option<u32>,
    /// Pulse amplitude index, %.
    pub pulse_amplitude_index: Option<MedFloat>,
    /// Flags bit 4: the device clock is not set (its time stamp is meaningless).
    pub device_clock_not_set: bool,
}

/// One decoded PLX Continuous Measurement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Continuous {
    /// SpO2 (normal averaging), %.
    pub spo2: MedFloat,
    /// Pulse rate (normal averaging), /min.
    pub pulse_rate: MedFloat,
    /// SpO2 and PR with fast averaging.
    pub fast: Option<(MedFloat, MedFloat)>,
    /// SpO2 and PR with slow averaging.
    pub slow: Option<(MedFloat, MedFloat)>,
    /// Measurement status word.
    pub measurement_status: Option<u16>,
    /// Device and sensor status (24 bits).
    pub device_status: Option<u32>,
    /// Pulse amplitude index, %.
    pub pulse_amplitude_index: Option<MedFloat>,
}

const MEASUREMENT_STATUS: [Option<&str>; 16] = [
    None,
    None,
    None,
    None,
    None,
    Some("measurement-ongoing"),
    Some("early-estimate"),
    Some("validated"),
    Some("fully-qualified"),
    Some("from-storage"),
    Some("demo"),
    Some("testing"),
    Some("calibration-ongoing"),
    Some("unavailable"),
    Some("questionable"),
    Some("invalid"),
];

const DEVICE_STATUS: [Option<&str>; 16] = [
    Some("extended-display-update"),
    Some("equipment-malfunction"),
    Some("signal-processing-irregularity"),
    Some("inadequate-signal"),
    Some("poor-signal"),
    Some("low-perfusion"),
    Some("erratic-signal"),
    Some("non-pulsatile"),
    Some("questionable-pulse"),
    Some("signal-analysis-ongoing"),
    Some("sensor-interference"),
    Some("sensor-unconnected"),
    Some("unknown-sensor"),
    Some("sensor-displaced"),
    Some("sensor-malfunction"),
    Some("sensor-disconnected"),
];

/// Status strings for a measurement status word and a device & sensor status (bits 16–23 are
/// reserved and ignored).
pub fn status_strings(measurement: Option<u16>, device: Option<u32>) -> Vec<String> {
    let mut out = measurement
        .map(|m| bit_names(m as u32, &MEASUREMENT_STATUS))
        .unwrap_or_default();
    if let Some(d) = device {
        out.extend(bit_names(d, &DEVICE_STATUS));
    }
    out
}

/// Parses a PLX Spot-Check Measurement.
pub fn parse_spot_check(bytes: &[u8]) -> Result<SpotCheck, DecodeError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8("flags")?;
    let spo2 = r.sfloat("SpO2")?;
    let pulse_rate = r.sfloat("pulse rate")?;
    let time = if flags & 0x01 != 0 {
        Some(r.date_time("time stamp")?)
    } else {
        None
    };
    let measurement_status = if flags & 0x02 != 0 {
        Some(r.u16("measurement status")?)
    } else {
        None
    };
    let device_status = if flags & 0x04 != 0 {
        Some(r.u24("device and sensor status")?)
    } else {
        None
    };
    let pulse_amplitude_index = if flags & 0x08 != 0 {
        Some(r.sfloat("pulse amplitude index")?)
    } else {
        None
    };
    Ok(SpotCheck {
        spo2,
        pulse_rate,
        time,
        measurement_status,
        device_status,
        pulse_amplitude_index,
        device_clock_not_set: flags & 0x10 != 0,
    })
}

/// Parses a PLX Continuous Measurement.
pub fn parse_continuous(bytes: &[u8]) -> Result<Continuous, DecodeError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8("flags")?;
    let spo2 = r.sfloat("SpO2")?;
    let pulse_rate = r.sfloat("pulse rate")?;
    let fast = if flags & 0x01 != 0 {
        Some((r.sfloat("SpO2 fast")?, r.sfloat("pulse rate fast")?))
    } else {
        None
    };
    let slow = if flags & 0x02 != 0 {
        Some((r.sfloat("SpO2 slow")?, r.sfloat("pulse rate slow")?))
    } else {
        None
    };
    let measurement_status = if flags & 0x04 != 0 {
        Some(r.u16("measurement status")?)
    } else {
        None
    };
    let device_status = if flags & 0x08 != 0 {
        Some(r.u24("device and sensor status")?)
    } else {
        None
    };
    let pulse_amplitude_index = if flags & 0x10 != 0 {
        Some(r.sfloat("pulse amplitude index")?)
    } else {
        None
    };
    Ok(Continuous {
        spo2,
        pulse_rate,
        fast,
        slow,
        measurement_status,
        device_status,
        pulse_amplitude_index,
    })
}

fn push_pair(
    out: &mut Vec<Reading>,
    spo2: MedFloat,
    pr: MedFloat,
    t: &Option<String>,
    status: &[String],
) {
    push_med(out, mdc::SPO2, spo2, 0, Unit::PERCENT, t, status);
    push_med(
        out,
        mdc::PULSE_RATE_OXIM,
        pr,
        0,
        Unit::BEAT_PER_MIN,
        t,
        status,
    );
}

/// Decodes a PLX Spot-Check Measurement: SpO2, pulse rate, PAI when present.
pub fn decode_spot_check(bytes: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    let m = parse_spot_check(bytes)?;
    let mut status = status_strings(m.measurement_status, m.device_status);
    let t = if m.device_clock_not_set {
        status.push("device-clock-not-set".into());
        None
    } else {
        m.time.and_then(|t| t.to_iso())
    };
    let mut out = Vec::new();
    push_pair(&mut out, m.spo2, m.pulse_rate, &t, &status);
    if let Some(p) = m.pulse_amplitude_index {
        push_med(
            &mut out,
            mdc::PERFUSION_INDEX,
            p,
            0,
            Unit::PERCENT,
            &t,
            &status,
        );
    }
    Ok(out)
}

/// Decodes a PLX Continuous Measurement: SpO2 and pulse rate, the fast and slow averages
/// (status `fast`/`slow`), PAI when present. No time stamp in this characteristic.
pub fn decode_continuous(bytes: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    let m = parse_continuous(bytes)?;
    let status = status_strings(m.measurement_status, m.device_status);
    let mut out = Vec::new();
    push_pair(&mut out, m.spo2, m.pulse_rate, &None, &status);
    for (pair, tag) in [(m.fast, "fast"), (m.slow, "slow")] {
        if let Some((s, p)) = pair {
            let mut st = status.clone();
            st.push(tag.into());
            push_pair(&mut out, s, p, &None, &st);
        }
    }
    if let Some(p) = m.pulse_amplitude_index {
        push_med(
            &mut out,
            mdc::PERFUSION_INDEX,
            p,
            0,
            Unit::PERCENT,
            &None,
            &status,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::decode::test_util::*;

    #[test]
    fn c17_c18_continuous_e05() {
        let r = decode_continuous(&hex("00e8f384f3")).unwrap();
        assert_eq!(
            (r[0].code, r[0].value, r[0].unit),
            (150_456, 100.0, Unit::PERCENT)
        );
        assert_eq!(
            (r[1].code, r[1].value, r[1].unit),
            (149_530, 90.0, Unit::BEAT_PER_MIN)
        );
        // E-05: keep the precision of the exponent (100.0 has one decimal).
        let m = parse_continuous(&hex("00e8f384f3")).unwrap();
        assert_eq!(m.spo2.decimals(), Some(1));
        let r18 = decode_continuous(&hex("0064005a00")).unwrap();
        assert_eq!(
            r18.iter().map(|r| r.value).collect::<Vec<_>>(),
            r.iter().map(|r| r.value).collect::<Vec<_>>()
        );
        assert_eq!(
            parse_continuous(&hex("0064005a00"))
                .unwrap()
                .spo2
                .decimals(),
            Some(0)
        );
    }

    #[test]
    fn c22_features() {
        let f = parse_features(&hex("a3004010800100")).unwrap();
        assert_eq!(f.features, 0x00A3);
        assert_eq!(
            f.feature_names(),
            [
                "measurement-status",
                "device-status",
                "spo2pr-slow",
                "multiple-bonds"
            ]
        );
        assert_eq!(f.measurement_status_support, Some(0x1040));
        assert_eq!(
            status_strings(f.measurement_status_support, f.device_status_support),
            [
                "early-estimate",
                "calibration-ongoing",
                "non-pulsatile",
                "questionable-pulse"
            ]
        );
        assert_eq!(f.device_status_support, Some(0x000180));
        assert!(parse_features(&hex("a30040108001")).is_err());
    }

    #[test]
    fn continuous_all_fields() {
        // fast 97/61, slow 96/62, meas. status 0x0040 (early estimate),
        // device status 0x000020 (low perfusion), PAI 2.5 %.
        let b = hex("1f62003c0061003d0060003e00400020000019f0");
        // flags(1) spo2 pr (4) fast (4) slow (4) meas (2) dev (3) pai (2) = 20 bytes
        let m = parse_continuous(&b).unwrap();
        assert_eq!(m.measurement_status, Some(0x0040));
        assert_eq!(m.device_status, Some(0x20));
        let r = decode_continuous(&b).unwrap();
        assert_eq!(r.len(), 7);
        assert_eq!(r[0].status, ["early-estimate", "low-perfusion"]);
        assert_eq!(r[2].status, ["early-estimate", "low-perfusion", "fast"]);
        assert_eq!((r[4].value, r[5].value), (96.0, 62.0));
        assert_eq!((r[6].code, r[6].value), (150_488, 2.5));
        assert!(parse_continuous(&b[..19]).is_err());
    }

    #[test]
    fn spot_check_time_and_clock_not_set() {
        // time stamp + device status (sensor disconnected, bit 15), SpO2 98, PR 72.
        let b = hex("0562004800e9070c1f173b3b008000");
        let r = decode_spot_check(&b).unwrap();
        assert_eq!(r[0].device_time.as_deref(), Some("2025-12-31T23:59:59"));
        assert_eq!(r[0].status, ["sensor-disconnected"]);
        // The same with bit 4 (device clock not set).
        let mut b2 = b.clone();
        b2[0] |= 0x10;
        let r = decode_spot_check(&b2).unwrap();
        assert_eq!(r[0].device_time, None);
        assert_eq!(r[0].status, ["sensor-disconnected", "device-clock-not-set"]);
        // SpO2 NaN → only the pulse rate.
        let r = decode_spot_check(&hex("00ff074800")).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].code, 149_530);
    }

    #[test]
    fn property_no_panic() {
        never_panics(
            seed(UUID_SPOT_CHECK),
            &["0562004800e9070c1f173b3b008000"],
            decode_spot_check,
        );
        never_panics(
            seed(UUID_CONTINUOUS),
            &["1f62003c0061003d0060003e00400020000019f0"],
            decode_continuous,
        );
    }
}
