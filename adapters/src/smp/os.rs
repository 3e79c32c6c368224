//! OS group (group 0) payloads, PROTOCOLS §A.3: echo (cmd 0, write, `{"d"}` → `{"r"}`), reset
//! (cmd 5, write, `{}` or `{"force": 1}`), MCUmgr parameters (cmd 6, read →
//! `{"buf_size", "buf_count"}`, `buf_size` counting the 8-byte header and the CBOR).

use super::cbor::{self, CborError};
use ciborium::Value;

/// Group id of the OS group.
pub const GROUP: u16 = 0;
/// Echo command.
pub const CMD_ECHO: u8 = 0;
/// Reset command.
pub const CMD_RESET: u8 = 5;
/// MCUmgr parameters command.
pub const CMD_PARAMS: u8 = 6;

/// Echo request body `{"d": text}`.
pub fn echo_request(text: &str) -> Value {
    cbor::map([("d", Value::Text(text.to_string()))])
}

/// The text of an echo response `{"r": text}`.
pub fn echo_response(body: &Value) -> Result<String, CborError> {
    cbor::text(body, "r")?.ok_or(CborError::Missing("r"))
}

/// Reset request body: `{}`, or `{"force": 1}` after the device refused with EBUSY.
pub fn reset_request(force: bool) -> Value {
    if force {
        cbor::map([("force", Value::from(1))])
    } else {
        cbor::map([])
    }
}

/// The device's SMP buffers (MCUmgr parameters response).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Bytes in one SMP buffer: header + CBOR of one request must fit.
    pub buf_size: u32,
    /// Number of such buffers (pipelining depth is at most this − 1).
    pub buf_count: u32,
}

impl Params {
    /// Reads `{"buf_size", "buf_count"}`.
    pub fn from_body(body: &Value) -> Result<Params, CborError> {
        Ok(Params {
            buf_size: cbor::req_u32(body, "buf_size")?,
            buf_count: cbor::req_u32(body, "buf_count")?,
        })
    }

    /// The response body (for device models and round trips).
    pub fn to_body(&self) -> Value {
        cbor::map([
            ("buf_size", Value::from(self.buf_size)),
            ("buf_count", Value::from(self.buf_count)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smp::header::{Frame, Op, Version};

    #[test]
    fn a01_echo_a03_a04_reset() {
        let f = Frame::decode(
            &hex::decode("0a00001000008b00a161646c48656c6c6f20776f726c6421").unwrap(),
        )
        .unwrap();
        assert_eq!(
            cbor::text(&f.body().unwrap(), "d").unwrap().as_deref(),
            Some("Hello world!")
        );
        let built = Frame::new(
            Version::V2,
            Op::Write,
            GROUP,
            CMD_ECHO,
            139,
            &echo_request("Hello world!"),
        )
        .unwrap();
        assert_eq!(
            hex::encode(built.encode()),
            "0a00001000008b00a161646c48656c6c6f20776f726c6421"
        );
        let reset = Frame::new(
            Version::V2,
            Op::Write,
            GROUP,
            CMD_RESET,
            141,
            &reset_request(false),
        )
        .unwrap();
        assert_eq!(hex::encode(reset.encode()), "0a00000100008d05a0");
        let rsp = Frame::decode(&hex::decode("0b00000100008e05a0").unwrap()).unwrap();
        assert_eq!(
            crate::smp::error::device_error(&rsp.body().unwrap()).unwrap(),
            None
        );
    }

    #[test]
    fn params_round_trip_and_missing_field() {
        let p = Params {
            buf_size: 512,
            buf_count: 4,
        };
        assert_eq!(Params::from_body(&p.to_body()).unwrap(), p);
        assert_eq!(
            Params::from_body(&cbor::map([("buf_size", Value::from(512))])),
            Err(CborError::Missing("buf_count"))
        );
        assert_eq!(
            echo_response(&cbor::map([("r", Value::from("hi"))])).unwrap(),
            "hi"
        );
    }
}
