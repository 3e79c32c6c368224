//! SMP over BLE framing (PROTOCOLS §A.4): no framing of its own. A frame longer than one ATT
//! payload goes as consecutive writes of at most ATT_MTU − 3 bytes ([`split`]); notifications are
//! reassembled by reading the 8-byte header and collecting `8 + len` bytes ([`Reassembler`]).

use super::header::{FrameError, Header, HEADER_LEN};

/// The smallest ATT MTU (BLE 4.0 default): 20-byte writes.
pub const MIN_ATT_MTU: u16 = 23;

/// The pieces of one frame, each at most `att_mtu − 3` bytes (an MTU below 23 counts as 23).
pub fn split(frame: &[u8], att_mtu: u16) -> impl Iterator<Item = &[u8]> {
    let size = usize::from(att_mtu.max(MIN_ATT_MTU)) - 3;
    frame.chunks(size)
}

/// Why notifications were dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BleError {
    /// The first 8 bytes are not an SMP header.
    #[error("not an SMP header: {0}")]
    Header(FrameError),
    /// A notification carried more bytes than the header's length (smpclient raises here too).
    #[error("notification overran the frame: {have} bytes for a frame of {expected}")]
    Overrun {
        /// 8 + the header's length.
        expected: usize,
        /// Bytes collected.
        have: usize,
    },
}

/// Collects notifications into whole SMP frames. Holds at most one frame (≤ 8 + 65535 bytes).
#[derive(Debug, Default)]
pub struct Reassembler {
    buf: Vec<u8>,
}

impl Reassembler {
    /// Empty.
    pub fn new() -> Reassembler {
        Reassembler::default()
    }

    /// Bytes of an unfinished frame held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Drops an unfinished frame (after link loss or a timeout).
    pub fn reset(&mut self) {
        self.buf.clear();
    }

    /// Adds one notification: a whole frame when it completes one, `None` while more is needed;
    /// on an error the held bytes are dropped and the next notification starts a new frame.
    pub fn push(&mut self, notification: &[u8]) -> Result<Option<Vec<u8>>, BleError> {
        self.buf.extend_from_slice(notification);
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = match Header::decode(&self.buf) {
            Ok(h) => h,
            Err(e) => {
                self.buf.clear();
                return Err(BleError::Header(e));
            }
        };
        let expected = header.frame_len();
        match self.buf.len() {
            n if n < expected => Ok(None),
            n if n == expected => Ok(Some(std::mem::take(&mut self.buf))),
            have => {
                self.buf.clear();
                Err(BleError::Overrun { expected, have })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smp::header::{Frame, Op, Version};

    fn frame_of(total: usize) -> Vec<u8> {
        // A frame of exactly `total` bytes (the payload need not be CBOR here).
        let payload: Vec<u8> = (0..total - HEADER_LEN).map(|i| i as u8).collect();
        let header = Header {
            version: Version::V2,
            op: Op::WriteRsp,
            flags: 0,
            len: payload.len() as u16,
            group: 1,
            seq: 9,
            cmd: 1,
        };
        Frame { header, payload }.encode()
    }

    /// B23's boundaries, and the ATT payload sizes of MTU 23, 185 and 247 on both sides.
    #[test]
    fn split_and_reassemble_every_boundary() {
        for total in [
            9usize, 20, 21, 89, 90, 91, 92, 93, 182, 183, 244, 245, 490, 1000,
        ] {
            let frame = frame_of(total);
            for mtu in [23u16, 92, 93, 94, 185, 247, 498] {
                let pieces: Vec<&[u8]> = split(&frame, mtu).collect();
                assert!(pieces.iter().all(|p| p.len() <= usize::from(mtu) - 3));
                assert_eq!(pieces.len(), total.div_ceil(usize::from(mtu) - 3));
                let mut r = Reassembler::new();
                let mut got = None;
                for (i, p) in pieces.iter().enumerate() {
                    let out = r.push(p).unwrap();
                    if i + 1 < pieces.len() {
                        assert_eq!(out, None, "total {total} mtu {mtu} piece {i}");
                    } else {
                        got = out;
                    }
                }
                assert_eq!(got.as_deref(), Some(&frame[..]), "total {total} mtu {mtu}");
                assert_eq!(r.pending(), 0);
            }
        }
    }

    #[test]
    fn overrun_and_bad_header_drop_and_recover() {
        let frame = frame_of(30);
        let mut r = Reassembler::new();
        let mut long = frame.clone();
        long.push(0);
        assert_eq!(
            r.push(&long),
            Err(BleError::Overrun {
                expected: 30,
                have: 31
            })
        );
        assert_eq!(
            r.push(&[0xff; 8]),
            Err(BleError::Header(FrameError::BadByte0(0xff)))
        );
        assert_eq!(r.push(&frame[..3]), Ok(None));
        assert_eq!(r.push(&frame[3..]), Ok(Some(frame.clone())));
        // The A-07 state response (97 bytes) in 20-byte notifications.
        let a07 = hex::decode("0900005900010000a166696d6167657382a464736c6f740066616374697665f46776657273696f6e65302e312e30697065726d616e656e74f4a464736c6f740066616374697665f46776657273696f6e65302e312e30697065726d616e656e74f4").unwrap();
        let mut last = None;
        for p in split(&a07, 23) {
            last = r.push(p).unwrap();
        }
        assert_eq!(last, Some(a07));
    }
}
