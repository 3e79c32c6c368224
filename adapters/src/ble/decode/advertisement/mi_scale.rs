//! Xiaomi Mi Scale V1 (XMTZC01HM) service data 0x181D (see the [parent module](super) for the specification sources).

use super::*;

/// Unit the Mi Scale V1 reports in (control byte bits 0 and 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MiScaleUnit {
    /// Kilograms (raw / 200).
    Kg,
    /// Pounds (raw / 100).
    Lb,
    /// Jin (市斤, 0.5 kg; raw / 100).
    Jin,
}

impl MiScaleUnit {
    /// `kg`, `lb` or `jin`.
    pub fn name(self) -> &'static str {
        match self {
            MiScaleUnit::Kg => "kg",
            MiScaleUnit::Lb => "lb",
            MiScaleUnit::Jin => "jin",
        }
    }
}

/// A Xiaomi Mi Smart Scale V1 broadcast: proprietary service data under the Weight Scale
/// UUID 0x181D, 10 bytes: `control u8 | weight u16 LE | Date Time (year u16 LE, month, day,
/// hour, minute, second)`. Control bits: 0 lb, 4 jin (else kg), 5 stabilised, 7 weight
/// removed. Sources: Bluetooth-Devices/xiaomi-ble `test_Xiaomi_Scale1` (86.55 kg for
/// `229e43…`), openScale's Mi Scale handlers as summarised by several public parsers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MiScaleV1 {
    /// Control byte.
    pub control: u8,
    /// Weight in `unit`.
    pub weight: f64,
    /// Reporting unit.
    pub unit: MiScaleUnit,
    /// The weight has settled.
    pub stabilised: bool,
    /// The person stepped off (the weight is the last one, repeated).
    pub removed: bool,
    /// Scale time.
    pub time: DateTime,
}

impl MiScaleV1 {
    /// The weight in kg (jin → kg ÷ 2; pounds are not converted: `None`).
    pub fn weight_kg(&self) -> Option<f64> {
        match self.unit {
            MiScaleUnit::Kg => Some(self.weight),
            MiScaleUnit::Jin => Some(self.weight / 2.0),
            MiScaleUnit::Lb => None,
        }
    }
    /// One [`mdc::BODY_WEIGHT`] reading (kg, or lb as sent) when the weight is stabilised and
    /// the person is still on the scale; none for the jittering or step-off broadcasts.
    pub fn readings(&self) -> Vec<Reading> {
        if !self.stabilised || self.removed {
            return Vec::new();
        }
        let (v, u) = match self.weight_kg() {
            Some(kg) => (kg, Unit::KILO_G),
            None => (self.weight, Unit::LB),
        };
        vec![reading(mdc::BODY_WEIGHT, v, u, self.time.to_iso(), &[])]
    }
}

/// Parses Mi Scale V1 service data (after the 0x181D UUID).
pub fn parse_mi_scale_v1(data: &[u8]) -> Result<MiScaleV1, DecodeError> {
    let mut r = Reader::new(data);
    let control = r.u8("control")?;
    let raw = r.u16("weight")?;
    let time = r.date_time("time")?;
    if r.remaining() > 0 {
        return Err(DecodeError::new(10, "Mi Scale V1 data is 10 bytes"));
    }
    let unit = if control & 0x01 != 0 {
        MiScaleUnit::Lb
    } else if control & 0x10 != 0 {
        MiScaleUnit::Jin
    } else {
        MiScaleUnit::Kg
    };
    let weight = match unit {
        MiScaleUnit::Kg => raw as f64 / 200.0,
        _ => raw as f64 / 100.0,
    };
    Ok(MiScaleV1 {
        control,
        weight,
        unit,
        stabilised: control & 0x20 != 0,
        removed: control & 0x80 != 0,
        time,
    })
}
