//! The 8-byte SMP frame header and a whole frame (header + CBOR payload), PROTOCOLS §A.1.
//!
//! Byte 0 is `(version << 3) | op` (bits 7..5 reserved, 0), byte 1 the flags (none defined),
//! bytes 2–3 the payload length (u16 **big-endian**, the CBOR only, not the 8 header bytes),
//! bytes 4–5 the group (u16 BE), byte 6 the sequence number, byte 7 the command.

use super::cbor::{self, CborError};
use ciborium::Value;

/// Length of the SMP header in bytes.
pub const HEADER_LEN: usize = 8;

/// The largest CBOR payload a header can announce (u16 length field).
pub const MAX_PAYLOAD: usize = u16::MAX as usize;

/// The operation in byte 0 bits 2..0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// 0: read request.
    Read,
    /// 1: read response.
    ReadRsp,
    /// 2: write request.
    Write,
    /// 3: write response.
    WriteRsp,
}

impl Op {
    /// The 3-bit wire value.
    pub fn bits(self) -> u8 {
        match self {
            Op::Read => 0,
            Op::ReadRsp => 1,
            Op::Write => 2,
            Op::WriteRsp => 3,
        }
    }

    /// The response op that answers this request op (`Read` → `ReadRsp`, `Write` → `WriteRsp`);
    /// a response op answers itself.
    pub fn response(self) -> Op {
        match self {
            Op::Read | Op::ReadRsp => Op::ReadRsp,
            Op::Write | Op::WriteRsp => Op::WriteRsp,
        }
    }

    /// Whether this is a response op.
    pub fn is_response(self) -> bool {
        matches!(self, Op::ReadRsp | Op::WriteRsp)
    }
}

/// The protocol version in byte 0 bits 4..3: v1 (legacy, errors as `rc`) or v2 (group errors as
/// `err {group, rc}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// `0b00`: legacy SMP.
    V1,
    /// `0b01`: SMP v2.
    V2,
}

/// Why bytes are not an SMP frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the header, or than the header's length announces.
    #[error("frame too short: need {need} bytes, have {got}")]
    Short {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        got: usize,
    },
    /// More bytes than the header's length announces.
    #[error("frame too long: header says {expected} bytes, have {got}")]
    Long {
        /// 8 + the header's length.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// Reserved bits of byte 0 set, or a reserved version (`0b10`, `0b11`), or an op ≥ 4.
    #[error("bad header byte 0: {0:#04x}")]
    BadByte0(u8),
    /// A payload longer than the u16 length field can say.
    #[error("payload of {0} bytes exceeds 65535")]
    TooLarge(usize),
    /// The payload is not the CBOR the command needs.
    #[error("payload: {0}")]
    Payload(#[from] CborError),
}

impl FrameError {
    /// A machine-readable reason (`short`, `long`, `bad_header`, `too_large`, `payload`).
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Short { .. } => "short",
            FrameError::Long { .. } => "long",
            FrameError::BadByte0(_) => "bad_header",
            FrameError::TooLarge(_) => "too_large",
            FrameError::Payload(_) => "payload",
        }
    }
}

/// The 8-byte header, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// v1 or v2.
    pub version: Version,
    /// The operation.
    pub op: Op,
    /// Byte 1 (no flags are defined; 0 when sending).
    pub flags: u8,
    /// Length of the CBOR payload in bytes.
    pub len: u16,
    /// Group id (0 OS, 1 image, …).
    pub group: u16,
    /// Sequence number; a response echoes its request's.
    pub seq: u8,
    /// Command id within the group.
    pub cmd: u8,
}

impl Header {
    /// The 8 wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let v = match self.version {
            Version::V1 => 0,
            Version::V2 => 1,
        };
        let [l0, l1] = self.len.to_be_bytes();
        let [g0, g1] = self.group.to_be_bytes();
        [
            (v << 3) | self.op.bits(),
            self.flags,
            l0,
            l1,
            g0,
            g1,
            self.seq,
            self.cmd,
        ]
    }

    /// Reads the first 8 bytes of `bytes` (the rest is not looked at).
    pub fn decode(bytes: &[u8]) -> Result<Header, FrameError> {
        let b: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(FrameError::Short {
                need: HEADER_LEN,
                got: bytes.len(),
            })?;
        let version = match (b[0] >> 3) & 0b11 {
            0 => Version::V1,
            1 => Version::V2,
            _ => return Err(FrameError::BadByte0(b[0])),
        };
        if b[0] & 0xE0 != 0 {
            return Err(FrameError::BadByte0(b[0]));
        }
        let op = match b[0] & 0b111 {
            0 => Op::Read,
            1 => Op::ReadRsp,
            2 => Op::Write,
            3 => Op::WriteRsp,
            _ => return Err(FrameError::BadByte0(b[0])),
        };
        Ok(Header {
            version,
            op,
            flags: b[1],
            len: u16::from_be_bytes([b[2], b[3]]),
            group: u16::from_be_bytes([b[4], b[5]]),
            seq: b[6],
            cmd: b[7],
        })
    }

    /// Total frame length: 8 + `len`.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }
}

/// One SMP message: header and CBOR payload (`payload.len() == header.len`).
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// The header (its `len` is the payload's length).
    pub header: Header,
    /// The CBOR payload bytes.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame carrying `body` (a CBOR map) with the header's length set from it.
    pub fn new(
        version: Version,
        op: Op,
        group: u16,
        cmd: u8,
        seq: u8,
        body: &Value,
    ) -> Result<Frame, FrameError> {
        let payload = cbor::encode(body);
        let len = u16::try_from(payload.len()).map_err(|_| FrameError::TooLarge(payload.len()))?;
        Ok(Frame {
            header: Header {
                version,
                op,
                flags: 0,
                len,
                group,
                seq,
                cmd,
            },
            payload,
        })
    }

    /// Exactly one frame: the header and the `len` payload bytes it announces, nothing more.
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        let header = Header::decode(bytes)?;
        let need = header.frame_len();
        if bytes.len() < need {
            return Err(FrameError::Short {
                need,
                got: bytes.len(),
            });
        }
        if bytes.len() > need {
            return Err(FrameError::Long {
                expected: need,
                got: bytes.len(),
            });
        }
        Ok(Frame {
            header,
            payload: bytes[HEADER_LEN..].to_vec(),
        })
    }

    /// Header + payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&self.header.encode());
        out.extend_from_slice(&self.payload);
        out
    }

    /// The payload decoded as one CBOR item (must be a map).
    pub fn body(&self) -> Result<Value, FrameError> {
        Ok(cbor::decode_map(&self.payload)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn a01_echo_request() {
        let f = Frame::decode(&h("0a00001000008b00a161646c48656c6c6f20776f726c6421")).unwrap();
        assert_eq!(
            f.header,
            Header {
                version: Version::V2,
                op: Op::Write,
                flags: 0,
                len: 16,
                group: 0,
                seq: 139,
                cmd: 0
            }
        );
        assert_eq!(
            f.encode(),
            h("0a00001000008b00a161646c48656c6c6f20776f726c6421")
        );
    }

    #[test]
    fn a06_a20_read_headers() {
        let f = Frame::decode(&h("0800000100010d00a0")).unwrap();
        assert_eq!(
            (f.header.op, f.header.group, f.header.seq, f.header.cmd),
            (Op::Read, 1, 13, 0)
        );
        let f = Frame::decode(&h("0800000100000806a0")).unwrap();
        assert_eq!(
            (f.header.op, f.header.group, f.header.seq, f.header.cmd),
            (Op::Read, 0, 8, 6)
        );
        // Built the other way round: the same bytes.
        let built = Frame::new(Version::V2, Op::Read, 0, 6, 8, &Value::Map(vec![])).unwrap();
        assert_eq!(built.encode(), h("0800000100000806a0"));
    }

    #[test]
    fn a10_v1_header() {
        let mut bytes = h("0200004c00010001a4636c656e1832636f66660064646174615832");
        bytes.extend([0u8; 50]);
        bytes.extend(h("65696d61676501"));
        let f = Frame::decode(&bytes).unwrap();
        assert_eq!(f.header.version, Version::V1);
        assert_eq!(
            (
                f.header.op,
                f.header.len,
                f.header.group,
                f.header.seq,
                f.header.cmd
            ),
            (Op::Write, 76, 1, 0, 1)
        );
    }

    #[test]
    fn refuses_what_is_not_a_frame() {
        assert_eq!(
            Header::decode(&[0x0a, 0, 0]),
            Err(FrameError::Short { need: 8, got: 3 })
        );
        // Reserved version 0b10, reserved bits, op 4.
        for b0 in [0x12, 0x2a, 0x0c] {
            assert_eq!(
                Header::decode(&[b0, 0, 0, 0, 0, 0, 0, 0]),
                Err(FrameError::BadByte0(b0))
            );
        }
        // Length says 2, one byte present / three present.
        assert!(matches!(
            Frame::decode(&h("0a0000020000000000")),
            Err(FrameError::Short { need: 10, got: 9 })
        ));
        assert!(matches!(
            Frame::decode(&h("0a00000100000000a0a0")),
            Err(FrameError::Long {
                expected: 9,
                got: 10
            })
        ));
    }
}
