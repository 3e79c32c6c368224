//! iBeacon (see the [parent module](super) for the specification sources).

use super::*;
use crate::ble::decode::uuid::Uuid;

/// An iBeacon frame (PROTOCOLS.md §D.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IBeacon {
    /// Proximity UUID (big-endian on air, as written).
    pub uuid: Uuid,
    /// Major (u16 big-endian on air).
    pub major: u16,
    /// Minor (u16 big-endian on air).
    pub minor: u16,
    /// Measured power: RSSI at 1 m, dBm.
    pub measured_power: i8,
}

impl IBeacon {
    /// The UUID in 8-4-4-4-12 form, lower case.
    pub fn uuid_string(&self) -> String {
        self.uuid.to_string()
    }
}

/// Parses an iBeacon payload: the manufacturer data **after** the company id,
/// `02 15 | UUID 16 B | major u16 BE | minor u16 BE | power s8` (23 bytes).
pub fn parse_ibeacon(payload: &[u8]) -> Result<IBeacon, DecodeError> {
    let mut r = Reader::new(payload);
    let head = r.take(2, "iBeacon type and length")?;
    if head != [0x02, 0x15] {
        return Err(DecodeError::new(
            0,
            format!(
                "not an iBeacon: type/length {:02x} {:02x}, expected 02 15",
                head[0], head[1]
            ),
        ));
    }
    let body = r.take(21, "iBeacon body")?;
    if r.remaining() > 0 {
        return Err(DecodeError::new(
            23,
            "iBeacon: trailing bytes after measured power",
        ));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&body[..16]);
    Ok(IBeacon {
        uuid: Uuid::from_bytes(uuid),
        major: u16::from_be_bytes([body[16], body[17]]),
        minor: u16::from_be_bytes([body[18], body[19]]),
        measured_power: body[20] as i8,
    })
}

/// The iBeacon in a manufacturer-data AD structure, if it is one: company 0x004C and a
/// payload starting `02 15` (vector D-04: other companies, or Apple's other `xx 15` types,
/// are not iBeacons).
pub fn ibeacon_from_manufacturer(company: u16, payload: &[u8]) -> Option<IBeacon> {
    (company == COMPANY_APPLE)
        .then(|| parse_ibeacon(payload).ok())
        .flatten()
}
