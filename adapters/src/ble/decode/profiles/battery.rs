//! Battery Level 0x2A19 (read/notify), Battery service 0x180F.
//!
//! Specification: Bluetooth SIG Battery Service (BAS) v1.0 §3.1 "Battery Level"; GATT
//! Specification Supplement (GSS) "Battery Level": one u8, 0–100 %. PROTOCOLS.md §C.2 and
//! vectors C-28/C-29 (Nordic `BatteryLevelDataCallbackTest`: 101 and a 2-byte value are
//! invalid).
//!
//! Reading: [`mdc::BATTERY_CHARGE`] (MDC_ATTR_VAL_BATT_CHARGE, 67996) in %.

use super::reading;
use crate::ble::decode::uuid::{sig16, Uuid};
use crate::ble::decode::DecodeError;
use crate::observation::Reading;
use crate::observation::{mdc, Unit};

/// Characteristic UUID.
pub const UUID: Uuid = sig16(0x2A19);

/// Parses a Battery Level: exactly one byte, at most 100.
pub fn parse(bytes: &[u8]) -> Result<u8, DecodeError> {
    match bytes {
        [] => Err(DecodeError::new(0, "battery level: needs 1 byte, 0 left")),
        [v] if *v <= 100 => Ok(*v),
        [v] => Err(DecodeError::new(
            0,
            format!("battery level {v} % is out of range 0–100"),
        )),
        _ => Err(DecodeError::new(
            1,
            format!("battery level is 1 byte, got {}", bytes.len()),
        )),
    }
}

/// Decodes a Battery Level into one reading in %.
pub fn decode(bytes: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    let v = parse(bytes)?;
    Ok(vec![reading(
        mdc::BATTERY_CHARGE,
        v as f64,
        Unit::PERCENT,
        None,
        &[],
    )])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::decode::test_util::*;

    #[test]
    fn c28_c29() {
        let r = decode(&hex("64")).unwrap();
        assert_eq!(
            (r[0].code, r[0].value, r[0].unit),
            (67_996, 100.0, Unit::PERCENT)
        );
        assert_eq!(decode(&hex("0f")).unwrap()[0].value, 15.0);
        assert!(decode(&hex("65")).is_err());
        assert_eq!(decode(&hex("6400")).unwrap_err().offset, 1);
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn property_no_panic() {
        never_panics(seed(UUID), &["64"], decode);
    }
}
