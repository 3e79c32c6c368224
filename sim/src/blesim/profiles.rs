//! GATT helpers and ready-made simulated medical devices (Bluetooth SIG assigned numbers).

use super::{AddressType, SimCharacteristic, SimDevice, SimService};
use wardgate_adapters::ble::decode::uuid;

/// Expands a 16-bit SIG-assigned UUID to its 128-bit lowercase string form
/// (`0000XXXX-0000-1000-8000-00805f9b34fb`), the form BlueZ uses on D-Bus.
pub fn uuid16(short: u16) -> String {
    uuid::sig16(short).to_string()
}

/// Normalises a UUID string to BlueZ's lowercase 128-bit form with the gateway's one UUID
/// parser (`wardgate_adapters::ble::decode::uuid::parse`: 16-, 32- and 128-bit forms); text
/// that is no UUID is only trimmed and lowercased (the simulator serves what a test gives it).
pub fn normalize_uuid(text: &str) -> String {
    uuid::parse(text)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| text.trim().to_ascii_lowercase())
}

/// Device Information Service strings (0x180A: 0x2A29 manufacturer, 0x2A24 model,
/// 0x2A25 serial, 0x2A26 firmware revision).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceInformation {
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    pub firmware: String,
}

impl DeviceInformation {
    pub fn new(manufacturer: &str, model: &str, serial: &str, firmware: &str) -> Self {
        DeviceInformation {
            manufacturer: manufacturer.into(),
            model: model.into(),
            serial: serial.into(),
            firmware: firmware.into(),
        }
    }
}

/// A characteristic with SIG UUID `short`, the given flags and initial value.
pub fn chr(short: u16, flags: &[&str], value: &[u8]) -> SimCharacteristic {
    SimCharacteristic {
        uuid: uuid16(short),
        flags: flags.iter().map(|f| f.to_string()).collect(),
        value: value.to_vec(),
    }
}

/// A primary service with SIG UUID `short`.
pub fn svc(short: u16, characteristics: Vec<SimCharacteristic>) -> SimService {
    SimService {
        uuid: uuid16(short),
        characteristics,
    }
}

/// Device Information service (0x180A) with read-only manufacturer, model, serial, firmware.
pub fn device_information_service(info: &DeviceInformation) -> SimService {
    svc(
        0x180A,
        vec![
            chr(0x2A29, &["read"], info.manufacturer.as_bytes()),
            chr(0x2A24, &["read"], info.model.as_bytes()),
            chr(0x2A25, &["read"], info.serial.as_bytes()),
            chr(0x2A26, &["read"], info.firmware.as_bytes()),
        ],
    )
}

/// Battery service (0x180F) with Battery Level (0x2A19, read + notify), initially 100 %.
pub fn battery_service() -> SimService {
    svc(0x180F, vec![chr(0x2A19, &["read", "notify"], &[100])])
}

fn device(
    address: &str,
    address_type: AddressType,
    name: &str,
    services: Vec<SimService>,
) -> SimDevice {
    SimDevice {
        address: address.to_ascii_uppercase(),
        address_type,
        name: Some(name.to_string()),
        paired: false,
        bonded: false,
        services,
        in_range: true,
    }
}

/// A heart-rate strap: Heart Rate (0x180D: 0x2A37 measurement notify, 0x2A38 body sensor
/// location read = 1 "chest"), Battery (0x180F/0x2A19 read+notify), Device Information.
/// Random static address type, name = `info.model`.
pub fn heart_rate_strap(address: &str, info: &DeviceInformation) -> SimDevice {
    device(
        address,
        AddressType::Random,
        &info.model,
        vec![
            svc(
                0x180D,
                vec![
                    chr(0x2A37, &["notify"], &[]),
                    chr(0x2A38, &["read"], &[0x01]),
                ],
            ),
            battery_service(),
            device_information_service(info),
        ],
    )
}

/// A weight scale: Weight Scale (0x181D: 0x2A9D measurement indicate, 0x2A9E feature read,
/// all zero = no optional features), Battery, Device Information. Public address.
pub fn weight_scale(address: &str, info: &DeviceInformation) -> SimDevice {
    device(
        address,
        AddressType::Public,
        &info.model,
        vec![
            svc(
                0x181D,
                vec![
                    chr(0x2A9D, &["indicate"], &[]),
                    chr(0x2A9E, &["read"], &[0, 0, 0, 0]),
                ],
            ),
            battery_service(),
            device_information_service(info),
        ],
    )
}

/// Glucose Measurement characteristic UUID (0x2A18).
pub const GLUCOSE_MEASUREMENT: u16 = 0x2A18;
/// Glucose Measurement Context characteristic UUID (0x2A34).
pub const GLUCOSE_MEASUREMENT_CONTEXT: u16 = 0x2A34;
/// Glucose Feature characteristic UUID (0x2A51).
pub const GLUCOSE_FEATURE: u16 = 0x2A51;
/// Record Access Control Point characteristic UUID (0x2A52).
pub const RACP: u16 = 0x2A52;

/// A glucose meter: Glucose (0x1808: 0x2A18 measurement notify, 0x2A34 context notify,
/// 0x2A51 feature read, 0x2A52 RACP write+indicate), Device Information. Public address.
/// Install the RACP behaviour with [`super::SimBluez::install_glucose_racp`] (or
/// [`glucose_racp`] + [`super::SimBluez::on_write`]).
pub fn glucose_meter(address: &str, info: &DeviceInformation) -> SimDevice {
    device(
        address,
        AddressType::Public,
        &info.model,
        vec![
            svc(
                0x1808,
                vec![
                    chr(GLUCOSE_MEASUREMENT, &["notify"], &[]),
                    chr(GLUCOSE_MEASUREMENT_CONTEXT, &["notify"], &[]),
                    chr(GLUCOSE_FEATURE, &["read"], &[0x00, 0x00]),
                    chr(RACP, &["write", "indicate"], &[]),
                ],
            ),
            device_information_service(info),
        ],
    )
}

/// RACP op codes and response codes (Glucose Profile / GSS, "Record Access Control Point").
pub mod racp {
    pub const REPORT_STORED_RECORDS: u8 = 0x01;
    pub const DELETE_STORED_RECORDS: u8 = 0x02;
    pub const ABORT_OPERATION: u8 = 0x03;
    pub const REPORT_NUMBER_OF_RECORDS: u8 = 0x04;
    pub const NUMBER_OF_RECORDS_RESPONSE: u8 = 0x05;
    pub const RESPONSE_CODE: u8 = 0x06;

    pub const OP_NULL: u8 = 0x00;
    pub const OP_ALL: u8 = 0x01;
    pub const OP_LESS_OR_EQUAL: u8 = 0x02;
    pub const OP_GREATER_OR_EQUAL: u8 = 0x03;
    pub const OP_WITHIN_RANGE: u8 = 0x04;
    pub const OP_FIRST: u8 = 0x05;
    pub const OP_LAST: u8 = 0x06;

    pub const FILTER_SEQUENCE_NUMBER: u8 = 0x01;

    pub const SUCCESS: u8 = 0x01;
    pub const OP_CODE_NOT_SUPPORTED: u8 = 0x02;
    pub const INVALID_OPERATOR: u8 = 0x03;
    pub const OPERATOR_NOT_SUPPORTED: u8 = 0x04;
    pub const INVALID_OPERAND: u8 = 0x05;
    pub const NO_RECORDS_FOUND: u8 = 0x06;
    pub const OPERAND_NOT_SUPPORTED: u8 = 0x09;

    /// `06 00 <request op code> <response code>`.
    pub fn response(request: u8, code: u8) -> Vec<u8> {
        vec![RESPONSE_CODE, OP_NULL, request, code]
    }
}

/// The RACP write handler of a glucose meter holding `records` (sequence number, raw
/// Glucose Measurement 0x2A18 payload). Supported requests:
///
/// - `01 01` report all stored records; `01 05` first; `01 06` last;
/// - `01 03 01 <u16 LE>` records with sequence number ≥ n; `01 02 01 <u16 LE>` ≤ n;
///   `01 04 01 <u16 LE> <u16 LE>` within the inclusive range;
/// - `04 <same operators>` number of records → indicated `05 00 <u16 LE>`.
///
/// Matching records are notified on 0x2A18 in sequence order, then the RACP response code is
/// indicated on 0x2A52: `06 00 01 01` success, `06 00 01 06` no records found, or the
/// appropriate error (op code / operator not supported, invalid operand). Abort (`03 00`) is
/// answered with success. Delete is answered "op code not supported".
pub fn glucose_racp(
    records: Vec<(u16, Vec<u8>)>,
) -> impl Fn(&[u8]) -> Vec<(String, Vec<u8>)> + Send + Sync + 'static {
    let mut records = records;
    records.sort_by_key(|(seq, _)| *seq);
    move |req: &[u8]| {
        let racp_uuid = uuid16(RACP);
        let gm_uuid = uuid16(GLUCOSE_MEASUREMENT);
        let Some(&op) = req.first() else {
            return vec![(racp_uuid, racp::response(0, racp::OP_CODE_NOT_SUPPORTED))];
        };
        match op {
            racp::REPORT_STORED_RECORDS | racp::REPORT_NUMBER_OF_RECORDS => {
                let selected = match select(&records, &req[1..]) {
                    Ok(s) => s,
                    Err(code) => return vec![(racp_uuid, racp::response(op, code))],
                };
                if op == racp::REPORT_NUMBER_OF_RECORDS {
                    let n = selected.len() as u16;
                    let mut v = vec![racp::NUMBER_OF_RECORDS_RESPONSE, racp::OP_NULL];
                    v.extend_from_slice(&n.to_le_bytes());
                    return vec![(racp_uuid, v)];
                }
                if selected.is_empty() {
                    return vec![(racp_uuid, racp::response(op, racp::NO_RECORDS_FOUND))];
                }
                let mut out: Vec<(String, Vec<u8>)> = selected
                    .into_iter()
                    .map(|(_, payload)| (gm_uuid.clone(), payload.clone()))
                    .collect();
                out.push((racp_uuid, racp::response(op, racp::SUCCESS)));
                out
            }
            racp::ABORT_OPERATION => vec![(racp_uuid, racp::response(op, racp::SUCCESS))],
            _ => vec![(racp_uuid, racp::response(op, racp::OP_CODE_NOT_SUPPORTED))],
        }
    }
}

/// Applies an RACP operator + operand to the sorted records; `Err(response code)`.
fn select<'a>(
    records: &'a [(u16, Vec<u8>)],
    operand: &[u8],
) -> Result<Vec<&'a (u16, Vec<u8>)>, u8> {
    let Some(&operator) = operand.first() else {
        return Err(racp::INVALID_OPERATOR);
    };
    let rest = &operand[1..];
    let seq_arg = |n: usize| -> Result<Vec<u16>, u8> {
        if rest.first() != Some(&racp::FILTER_SEQUENCE_NUMBER) {
            return Err(if rest.is_empty() {
                racp::INVALID_OPERAND
            } else {
                racp::OPERAND_NOT_SUPPORTED
            });
        }
        let b = &rest[1..];
        if b.len() != 2 * n {
            return Err(racp::INVALID_OPERAND);
        }
        Ok(b.chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    };
    let no_operand = |v: Vec<&'a (u16, Vec<u8>)>| {
        if rest.is_empty() {
            Ok(v)
        } else {
            Err(racp::INVALID_OPERAND)
        }
    };
    match operator {
        racp::OP_ALL => no_operand(records.iter().collect()),
        racp::OP_FIRST => no_operand(records.first().into_iter().collect()),
        racp::OP_LAST => no_operand(records.last().into_iter().collect()),
        racp::OP_GREATER_OR_EQUAL => {
            let a = seq_arg(1)?;
            Ok(records.iter().filter(|(s, _)| *s >= a[0]).collect())
        }
        racp::OP_LESS_OR_EQUAL => {
            let a = seq_arg(1)?;
            Ok(records.iter().filter(|(s, _)| *s <= a[0]).collect())
        }
        racp::OP_WITHIN_RANGE => {
            let a = seq_arg(2)?;
            if a[0] > a[1] {
                return Err(racp::INVALID_OPERAND);
            }
            Ok(records
                .iter()
                .filter(|(s, _)| *s >= a[0] && *s <= a[1])
                .collect())
        }
        racp::OP_NULL => Err(racp::INVALID_OPERATOR),
        _ => Err(racp::OPERATOR_NOT_SUPPORTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs() -> Vec<(u16, Vec<u8>)> {
        vec![(3, vec![0x03]), (1, vec![0x01]), (2, vec![0x02])]
    }

    #[test]
    fn uuid_expansion() {
        assert_eq!(uuid16(0x180d), "0000180d-0000-1000-8000-00805f9b34fb");
        assert_eq!(normalize_uuid("2A37"), uuid16(0x2a37));
        assert_eq!(
            normalize_uuid("0000180D-0000-1000-8000-00805F9B34FB"),
            uuid16(0x180d)
        );
    }

    #[test]
    fn racp_all_and_greater_or_equal() {
        let h = glucose_racp(recs());
        let gm = uuid16(GLUCOSE_MEASUREMENT);
        let rc = uuid16(RACP);
        assert_eq!(
            h(&[0x01, 0x01]),
            vec![
                (gm.clone(), vec![1]),
                (gm.clone(), vec![2]),
                (gm.clone(), vec![3]),
                (rc.clone(), vec![6, 0, 1, 1])
            ]
        );
        assert_eq!(
            h(&[0x01, 0x03, 0x01, 0x02, 0x00]),
            vec![
                (gm.clone(), vec![2]),
                (gm, vec![3]),
                (rc.clone(), vec![6, 0, 1, 1])
            ]
        );
        assert_eq!(
            h(&[0x01, 0x03, 0x01, 0x09, 0x00]),
            vec![(rc.clone(), vec![6, 0, 1, 6])]
        );
        assert_eq!(h(&[0x04, 0x01]), vec![(rc.clone(), vec![5, 0, 3, 0])]);
        assert_eq!(
            h(&[0x01, 0x03, 0x02, 0x09, 0x00]),
            vec![(rc.clone(), vec![6, 0, 1, racp::OPERAND_NOT_SUPPORTED])]
        );
        assert_eq!(
            h(&[0x01, 0x07]),
            vec![(rc.clone(), vec![6, 0, 1, racp::OPERATOR_NOT_SUPPORTED])]
        );
        assert_eq!(
            h(&[0x02, 0x01]),
            vec![(rc, vec![6, 0, 2, racp::OP_CODE_NOT_SUPPORTED])]
        );
        assert!(glucose_racp(vec![])(&[0x01, 0x01]).last().unwrap().1 == vec![6, 0, 1, 6]);
    }
}
