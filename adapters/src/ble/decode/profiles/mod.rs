//! GATT health characteristics: one module per service, each a pure
//! `decode(bytes) -> Result<Vec<Reading>, DecodeError>` plus a typed `parse` that keeps every
//! field (user ids, sequence numbers, special values, raw status words).
//!
//! Layouts are those of the Bluetooth SIG GATT Specification Supplement (GSS) and the
//! service/profile specifications cited in each module; PROTOCOLS.md §C.2 lists them with the
//! open-source decoders they were checked against.
//!
//! Common rules, applied by every module:
//! - Multi-byte fields are little-endian; flags bit 0 is the LSB of the first byte.
//! - A payload shorter than its flags require is a [`DecodeError`] whose offset is where the
//!   missing field should start. Bytes after the last field the flags announce are ignored
//!   (later specification versions append fields behind new flag bits), except where noted
//!   (Heart Rate RR-intervals fill the rest; Battery Level is exactly one byte).
//! - A special SFLOAT/FLOAT value yields no [`Reading`] (see [`crate::ble::decode::sfloat`]).
//! - A time stamp becomes [`Reading::device_time`] only when complete (year, month and day
//!   known); the typed structs keep the raw [`crate::ble::decode::DateTime`].
//! - Status words become `status` strings, the same for every reading of the measurement.

pub mod battery;
pub mod blood_pressure;
pub mod glucose;
pub mod heart_rate;
pub mod plx;
pub mod thermometer;
pub mod weight;

use super::sfloat::MedFloat;
use super::uuid::Uuid;
use super::DecodeError;
use crate::observation::Reading;
use crate::observation::Unit;

/// A GATT characteristic this crate decodes, by its CLI name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Heart Rate Measurement 0x2A37 ([`heart_rate`]).
    HeartRate,
    /// Blood Pressure Measurement 0x2A35 ([`blood_pressure`]).
    BloodPressure,
    /// Intermediate Cuff Pressure 0x2A36 ([`blood_pressure`]).
    CuffPressure,
    /// Temperature Measurement 0x2A1C ([`thermometer`]).
    Thermometer,
    /// PLX Spot-Check Measurement 0x2A5E ([`plx`]).
    PlxSpotCheck,
    /// PLX Continuous Measurement 0x2A5F ([`plx`]).
    PlxContinuous,
    /// Weight Measurement 0x2A9D ([`weight`]), default resolution.
    Weight,
    /// Glucose Measurement 0x2A18 ([`glucose`]).
    Glucose,
    /// Battery Level 0x2A19 ([`battery`]).
    Battery,
}

impl Profile {
    /// Every profile, in CLI order.
    pub const ALL: [Profile; 9] = [
        Profile::HeartRate,
        Profile::BloodPressure,
        Profile::CuffPressure,
        Profile::Thermometer,
        Profile::PlxSpotCheck,
        Profile::PlxContinuous,
        Profile::Weight,
        Profile::Glucose,
        Profile::Battery,
    ];

    /// The CLI name: `heart-rate`, `blood-pressure`, `cuff-pressure`, `thermometer`,
    /// `plx-spot`, `plx-continuous`, `weight`, `glucose`, `battery`.
    pub fn name(self) -> &'static str {
        match self {
            Profile::HeartRate => "heart-rate",
            Profile::BloodPressure => "blood-pressure",
            Profile::CuffPressure => "cuff-pressure",
            Profile::Thermometer => "thermometer",
            Profile::PlxSpotCheck => "plx-spot",
            Profile::PlxContinuous => "plx-continuous",
            Profile::Weight => "weight",
            Profile::Glucose => "glucose",
            Profile::Battery => "battery",
        }
    }

    /// The profile with CLI name `name`.
    pub fn from_name(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The characteristic UUID (a SIG 16-bit one: `0000xxxx-0000-1000-8000-00805F9B34FB`).
    pub fn uuid(self) -> Uuid {
        match self {
            Profile::HeartRate => heart_rate::UUID,
            Profile::BloodPressure => blood_pressure::UUID_MEASUREMENT,
            Profile::CuffPressure => blood_pressure::UUID_INTERMEDIATE_CUFF,
            Profile::Thermometer => thermometer::UUID,
            Profile::PlxSpotCheck => plx::UUID_SPOT_CHECK,
            Profile::PlxContinuous => plx::UUID_CONTINUOUS,
            Profile::Weight => weight::UUID,
            Profile::Glucose => glucose::UUID,
            Profile::Battery => battery::UUID,
        }
    }

    /// The profile for a characteristic UUID.
    pub fn from_uuid(uuid: Uuid) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.uuid() == uuid)
    }

    /// Decodes one notification/indication value of this characteristic. Never panics.
    pub fn decode(self, bytes: &[u8]) -> Result<Vec<Reading>, DecodeError> {
        match self {
            Profile::HeartRate => heart_rate::decode(bytes),
            Profile::BloodPressure => blood_pressure::decode(bytes),
            Profile::CuffPressure => blood_pressure::decode_intermediate_cuff(bytes),
            Profile::Thermometer => thermometer::decode(bytes),
            Profile::PlxSpotCheck => plx::decode_spot_check(bytes),
            Profile::PlxContinuous => plx::decode_continuous(bytes),
            Profile::Weight => weight::decode(bytes),
            Profile::Glucose => glucose::decode(bytes),
            Profile::Battery => battery::decode(bytes),
        }
    }
}

/// A reading with the given fields.
pub(crate) fn reading(
    code: u32,
    value: f64,
    unit: Unit,
    device_time: Option<String>,
    status: &[String],
) -> Reading {
    Reading {
        code,
        value,
        unit,
        device_time,
        status: status.to_vec(),
    }
}

/// Pushes a reading for `v` (scaled by 10^`pow10`) unless it is a special value.
pub(crate) fn push_med(
    out: &mut Vec<Reading>,
    code: u32,
    v: MedFloat,
    pow10: i32,
    unit: Unit,
    device_time: &Option<String>,
    status: &[String],
) {
    if let Some(value) = v.scaled(pow10) {
        out.push(reading(code, value, unit, device_time.clone(), status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_uuids_round_trip() {
        for p in Profile::ALL {
            assert_eq!(Profile::from_name(p.name()), Some(p));
            assert_eq!(Profile::from_uuid(p.uuid()), Some(p));
        }
        assert_eq!(Profile::from_name("cms50"), None);
    }

    #[test]
    fn every_profile_never_panics() {
        for p in Profile::ALL {
            crate::ble::decode::test_util::never_panics(
                crate::ble::decode::test_util::seed(p.uuid()),
                &[],
                |b| p.decode(b),
            );
        }
    }
}
