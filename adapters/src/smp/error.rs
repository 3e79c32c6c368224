//! Errors a device reports in a response (PROTOCOLS §A.1): SMP v1 `{"rc": int, "rsn"?: str}` (also
//! used under v2 for errors outside a group) and SMP v2 `{"err": {"group": uint, "rc": uint}}`,
//! with the names of `MGMT_ERR` and of the image group's `IMG_MGMT_ERR`. A v2 client must accept
//! both shapes; `rc: 0` (old servers add it on success) is no error.

use super::cbor::{self, CborError};
use ciborium::Value;

/// `MGMT_ERR` names for v1 `rc` 0–13 (PROTOCOLS §A.1, smp `error.py`).
const MGMT_NAMES: [&str; 14] = [
    "EOK",
    "EUNKNOWN",
    "ENOMEM",
    "EINVAL",
    "ETIMEOUT",
    "ENOENT",
    "EBADSTATE",
    "EMSGSIZE",
    "ENOTSUP",
    "ECORRUPT",
    "EBUSY",
    "EACCESSDENIED",
    "UNSUPPORTED_TOO_OLD",
    "UNSUPPORTED_TOO_NEW",
];

/// `IMG_MGMT_ERR` names for v2 image-group `rc` 0–33 (PROTOCOLS §A.1 table).
const IMG_NAMES: [&str; 34] = [
    "OK",
    "UNKNOWN",
    "FLASH_CONFIG_QUERY_FAIL",
    "NO_IMAGE",
    "NO_TLVS",
    "INVALID_TLV",
    "TLV_MULTIPLE_HASHES_FOUND",
    "TLV_INVALID_SIZE",
    "HASH_NOT_FOUND",
    "NO_FREE_SLOT",
    "FLASH_OPEN_FAILED",
    "FLASH_READ_FAILED",
    "FLASH_WRITE_FAILED",
    "FLASH_ERASE_FAILED",
    "INVALID_SLOT",
    "NO_FREE_MEMORY",
    "FLASH_CONTEXT_ALREADY_SET",
    "FLASH_CONTEXT_NOT_SET",
    "FLASH_AREA_DEVICE_NULL",
    "INVALID_PAGE_OFFSET",
    "INVALID_OFFSET",
    "INVALID_LENGTH",
    "INVALID_IMAGE_HEADER",
    "INVALID_IMAGE_HEADER_MAGIC",
    "INVALID_HASH",
    "INVALID_FLASH_ADDRESS",
    "VERSION_GET_FAILED",
    "CURRENT_VERSION_IS_NEWER",
    "IMAGE_ALREADY_PENDING",
    "INVALID_IMAGE_VECTOR_TABLE",
    "INVALID_IMAGE_TOO_LARGE",
    "INVALID_IMAGE_DATA_OVERRUN",
    "IMAGE_CONFIRMATION_DENIED",
    "IMAGE_SETTING_TEST_TO_ACTIVE_DENIED",
];

/// `MGMT_ERR` EBADSTATE: e.g. the secondary slot is pending and cannot be erased.
pub const MGMT_EBADSTATE: i64 = 6;
/// `MGMT_ERR` ENOTSUP: the command is not supported (e.g. MCUmgr parameters, F6).
pub const MGMT_ENOTSUP: i64 = 8;

/// An error the device answered with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// `{"rc": N, "rsn"?: "…"}` with N ≠ 0.
    #[error("device error rc={rc} ({})", mgmt_name(*rc))]
    V1 {
        /// The `MGMT_ERR` value.
        rc: i64,
        /// The optional reason text.
        rsn: Option<String>,
    },
    /// `{"err": {"group": G, "rc": N}}` with N ≠ 0.
    #[error("device error group={group} rc={rc} ({})", group_name(*group, *rc))]
    V2 {
        /// The group that failed.
        group: u64,
        /// The group's error value.
        rc: u64,
    },
}

impl DeviceError {
    /// The error's name (`EBADSTATE`, `IMAGE_ALREADY_PENDING`, `group 3 rc 2`, …): the
    /// machine-readable reason callers report.
    pub fn name(&self) -> String {
        match self {
            DeviceError::V1 { rc, .. } => mgmt_name(*rc),
            DeviceError::V2 { group, rc } => group_name(*group, *rc),
        }
    }

    /// Whether this means "not supported" (v1 ENOTSUP).
    pub fn is_not_supported(&self) -> bool {
        matches!(
            self,
            DeviceError::V1 {
                rc: MGMT_ENOTSUP,
                ..
            }
        )
    }

    /// Whether this means "bad state" (v1 EBADSTATE, or the image group's
    /// IMAGE_ALREADY_PENDING or NO_FREE_SLOT): a pending slot that cannot be erased or written.
    /// A v2 Zephyr device refuses an upload or an erase into a slot that is pending (or that a
    /// test boot would revert to) with NO_FREE_SLOT (`img_mgmt_upload_inspect`,
    /// `img_mgmt_erase`); its v1 translation is EBADSTATE.
    pub fn is_bad_state(&self) -> bool {
        matches!(
            self,
            DeviceError::V1 {
                rc: MGMT_EBADSTATE,
                ..
            } | DeviceError::V2 {
                group: 1,
                rc: 9 | 28
            }
        )
    }

    /// Whether the device refused an image as larger than its slot (the image group's
    /// INVALID_IMAGE_TOO_LARGE, v2 group 1 rc 30).
    pub fn is_too_large(&self) -> bool {
        matches!(self, DeviceError::V2 { group: 1, rc: 30 })
    }
}

/// The `MGMT_ERR` name of `rc` (`rc 256+` are per-user: `USER_<rc>`).
pub fn mgmt_name(rc: i64) -> String {
    match usize::try_from(rc).ok().and_then(|i| MGMT_NAMES.get(i)) {
        Some(n) => (*n).to_string(),
        None if rc >= 256 => format!("USER_{rc}"),
        None => format!("rc {rc}"),
    }
}

/// The name of a v2 group error (the image group's table; other groups by number).
pub fn group_name(group: u64, rc: u64) -> String {
    match (
        group,
        usize::try_from(rc).ok().and_then(|i| IMG_NAMES.get(i)),
    ) {
        (1, Some(n)) => (*n).to_string(),
        _ => format!("group {group} rc {rc}"),
    }
}

/// The error in a response body, if any: `Ok(None)` for success (no `rc`/`err`, or `rc: 0`,
/// or `err.rc: 0`); `Err` when `rc`/`err` has the wrong type.
pub fn device_error(body: &Value) -> Result<Option<DeviceError>, CborError> {
    if let Some(err) = cbor::get(body, "err") {
        if !err.is_map() {
            return Err(CborError::Type("err"));
        }
        let group = cbor::uint(err, "group")?.ok_or(CborError::Missing("group"))?;
        let rc = cbor::uint(err, "rc")?.ok_or(CborError::Missing("rc"))?;
        if rc != 0 {
            return Ok(Some(DeviceError::V2 { group, rc }));
        }
    }
    if let Some(rc) = cbor::int(body, "rc")? {
        if rc != 0 {
            let rsn = cbor::text(body, "rsn").ok().flatten();
            return Ok(Some(DeviceError::V1 { rc, rsn }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smp::header::{Frame, Op, Version};

    #[test]
    fn a17_v1_ebadstate() {
        let f = Frame::decode(&hex::decode("0300000500010901a162726306").unwrap()).unwrap();
        assert_eq!(
            (
                f.header.version,
                f.header.op,
                f.header.group,
                f.header.seq,
                f.header.cmd
            ),
            (Version::V1, Op::WriteRsp, 1, 9, 1)
        );
        let e = device_error(&f.body().unwrap()).unwrap().unwrap();
        assert_eq!(e, DeviceError::V1 { rc: 6, rsn: None });
        assert_eq!(e.name(), "EBADSTATE");
        assert!(e.is_bad_state());
    }

    #[test]
    fn v2_group_error_and_success_shapes() {
        let body = cbor::map([(
            "err",
            cbor::map([("group", Value::from(1)), ("rc", Value::from(28))]),
        )]);
        let e = device_error(&body).unwrap().unwrap();
        assert_eq!(e.name(), "IMAGE_ALREADY_PENDING");
        assert!(e.is_bad_state());
        let e = DeviceError::V2 { group: 1, rc: 9 };
        assert_eq!(e.name(), "NO_FREE_SLOT");
        assert!(e.is_bad_state());
        assert!(!DeviceError::V2 { group: 1, rc: 8 }.is_bad_state());
        let e = device_error(&cbor::map([(
            "err",
            cbor::map([("group", Value::from(9)), ("rc", Value::from(2))]),
        )]))
        .unwrap()
        .unwrap();
        assert_eq!(e.name(), "group 9 rc 2");
        assert!(!e.is_too_large());
        let e = DeviceError::V2 { group: 1, rc: 30 };
        assert_eq!(e.name(), "INVALID_IMAGE_TOO_LARGE");
        assert!(e.is_too_large());
        // Legacy `rc: 0` on success, an empty map, and `err.rc: 0` are no error.
        assert_eq!(
            device_error(&cbor::map([
                ("rc", Value::from(0)),
                ("off", Value::from(5))
            ]))
            .unwrap(),
            None
        );
        assert_eq!(device_error(&cbor::map([])).unwrap(), None);
        let rsn = device_error(&cbor::map([
            ("rc", Value::from(8)),
            ("rsn", Value::from("no")),
        ]))
        .unwrap()
        .unwrap();
        assert!(rsn.is_not_supported());
        assert_eq!(mgmt_name(300), "USER_300");
        assert_eq!(
            device_error(&cbor::map([("err", Value::from(1))])),
            Err(CborError::Type("err"))
        );
    }
}
