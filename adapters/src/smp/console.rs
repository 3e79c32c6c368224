//! SMP over a serial console (PROTOCOLS §A.5): a packet is `len` (u16 BE, body + 2) + body (the
//! SMP frame) + CRC-16/XMODEM of the body (u16 BE), base64-encoded (standard alphabet, padded)
//! and cut into lines: the first starts `06 09`, continuations `04 14`, each ends with `0A` and is
//! at most 127 bytes including marker and newline.
//!
//! [`encode`] writes the lines; [`ConsoleDecoder`] reassembles them from a byte stream, skips
//! console text lines (any line without a marker, F8), and turns a packet without its CRC, with a
//! bad CRC or with bad base64 into a [`ConsoleError`]: never a wait for bytes that will not come
//! (an unfinished packet is dropped when the next one starts).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Marker of a packet's first line.
pub const START: [u8; 2] = [0x06, 0x09];
/// Marker of a continuation line.
pub const CONTINUE: [u8; 2] = [0x04, 0x14];
/// The longest line, marker and newline included (PROTOCOLS §A.5).
pub const MAX_LINE: usize = 127;
/// Bytes of framing a packet adds to an SMP frame before base64: the length and the CRC.
pub const PACKET_OVERHEAD: usize = 4;
/// Longest line the decoder keeps while looking for its end; longer console text is skipped.
const MAX_TEXT_LINE: usize = 4096;

/// CRC-16/XMODEM: polynomial 0x1021, initial value 0, no reflection, no final xor
/// (`123456789` → 0x31C3, PROTOCOLS A-24).
pub fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Base64 characters per line for a line limit of `line_len` bytes: `((line_len − 4) / 4) × 4`,
/// as smp 4.2.0 `packet.py` (120 at 127; 4 at 8).
pub fn chars_per_line(line_len: usize) -> usize {
    (line_len.saturating_sub(4) / 4).max(1) * 4
}

/// The console lines for one SMP frame `body` (at most 65533 bytes), each ≤ `line_len` bytes
/// (use [`MAX_LINE`]), concatenated.
pub fn encode(body: &[u8], line_len: usize) -> Vec<u8> {
    let total = u16::try_from(body.len() + 2).unwrap_or(u16::MAX);
    let mut packet = Vec::with_capacity(body.len() + PACKET_OVERHEAD);
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(body);
    packet.extend_from_slice(&crc16_xmodem(body).to_be_bytes());
    let text = STANDARD.encode(&packet);
    let mut out = Vec::with_capacity(text.len() + text.len() / 30 + 8);
    for (i, chunk) in text.as_bytes().chunks(chars_per_line(line_len)).enumerate() {
        out.extend_from_slice(if i == 0 { &START } else { &CONTINUE });
        out.extend_from_slice(chunk);
        out.push(b'\n');
    }
    out
}

/// Bytes on the line for an SMP frame of `frame_len` bytes at the default line length.
pub fn encoded_len(frame_len: usize) -> usize {
    let chars = (frame_len + PACKET_OVERHEAD).div_ceil(3) * 4;
    chars + chars.div_ceil(chars_per_line(MAX_LINE)) * 3
}

/// Why a console packet was dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleError {
    /// A line's text is not base64.
    #[error("bad base64 in a frame line")]
    Base64,
    /// The length field leaves no room for the CRC.
    #[error("packet length {0} leaves no room for the CRC")]
    NoCrc(u16),
    /// The CRC does not match the body.
    #[error("CRC mismatch: packet says {got:#06x}, body gives {computed:#06x}")]
    Crc {
        /// CRC in the packet.
        got: u16,
        /// CRC computed from the body.
        computed: u16,
    },
    /// More bytes than the length field says.
    #[error("packet longer than its length field ({have} > {expected})")]
    Long {
        /// 2 + the length field.
        expected: usize,
        /// Decoded bytes.
        have: usize,
    },
    /// A new packet started before the previous one was complete (it is dropped).
    #[error("packet incomplete when the next one started ({have} of {expected} bytes)")]
    Truncated {
        /// 2 + the length field (0 when unknown).
        expected: usize,
        /// Decoded bytes.
        have: usize,
    },
    /// A continuation line with no packet started.
    #[error("continuation line without a start")]
    Orphan,
}

impl ConsoleError {
    /// A machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ConsoleError::Base64 => "base64",
            ConsoleError::NoCrc(_) => "no_crc",
            ConsoleError::Crc { .. } => "crc",
            ConsoleError::Long { .. } => "long",
            ConsoleError::Truncated { .. } => "truncated",
            ConsoleError::Orphan => "orphan",
        }
    }
}

/// What the decoder found in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// A complete packet's body (one SMP frame, not yet parsed), CRC checked.
    Frame(Vec<u8>),
    /// A console text line was skipped (its length; the text is not kept).
    Skipped(usize),
    /// A packet was dropped.
    Error(ConsoleError),
}

/// Reassembles console packets from serial bytes. Bounded: a line is kept up to 4096 bytes, a
/// packet up to what a u16 length announces.
#[derive(Debug, Default)]
pub struct ConsoleDecoder {
    line: Vec<u8>,
    overlong: bool,
    packet: Option<Partial>,
}

#[derive(Debug, Default)]
struct Partial {
    text: Vec<u8>,
    decoded_chars: usize,
    bytes: Vec<u8>,
}

impl ConsoleDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> ConsoleDecoder {
        ConsoleDecoder::default()
    }

    /// Feeds bytes read from the port; events are appended to `out` in stream order.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<ConsoleEvent>) {
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                if self.overlong {
                    self.overlong = false;
                    out.push(ConsoleEvent::Skipped(line.len()));
                } else {
                    self.line_done(&line, out);
                }
            } else if self.line.len() < MAX_TEXT_LINE {
                self.line.push(b);
            } else {
                self.overlong = true;
            }
        }
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<ConsoleEvent>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(&START) {
            if let Some(p) = self.packet.take() {
                out.push(ConsoleEvent::Error(ConsoleError::Truncated {
                    expected: expected(&p.bytes),
                    have: p.bytes.len(),
                }));
            }
            self.packet = Some(Partial::default());
            self.chunk(rest, out);
        } else if let Some(rest) = line.strip_prefix(&CONTINUE) {
            if self.packet.is_none() {
                out.push(ConsoleEvent::Error(ConsoleError::Orphan));
                return;
            }
            self.chunk(rest, out);
        } else {
            out.push(ConsoleEvent::Skipped(line.len()));
        }
    }

    fn chunk(&mut self, text: &[u8], out: &mut Vec<ConsoleEvent>) {
        let Some(p) = self.packet.as_mut() else {
            return;
        };
        p.text.extend_from_slice(text);
        let upto = p.text.len() / 4 * 4;
        if upto > p.decoded_chars {
            match STANDARD.decode(&p.text[p.decoded_chars..upto]) {
                Ok(b) => p.bytes.extend_from_slice(&b),
                Err(_) => {
                    self.packet = None;
                    out.push(ConsoleEvent::Error(ConsoleError::Base64));
                    return;
                }
            }
            p.decoded_chars = upto;
        }
        if p.bytes.len() < 2 {
            return;
        }
        let len = u16::from_be_bytes([p.bytes[0], p.bytes[1]]);
        let need = 2 + usize::from(len);
        if p.bytes.len() < need {
            if len < 2 {
                self.packet = None;
                out.push(ConsoleEvent::Error(ConsoleError::NoCrc(len)));
            }
            return;
        }
        let Some(p) = self.packet.take() else {
            return;
        };
        if p.bytes.len() > need || p.decoded_chars < p.text.len() {
            out.push(ConsoleEvent::Error(ConsoleError::Long {
                expected: need,
                have: p.bytes.len(),
            }));
            return;
        }
        if len < 2 {
            out.push(ConsoleEvent::Error(ConsoleError::NoCrc(len)));
            return;
        }
        let body = &p.bytes[2..need - 2];
        let got = u16::from_be_bytes([p.bytes[need - 2], p.bytes[need - 1]]);
        let computed = crc16_xmodem(body);
        if got != computed {
            out.push(ConsoleEvent::Error(ConsoleError::Crc { got, computed }));
            return;
        }
        out.push(ConsoleEvent::Frame(body.to_vec()));
    }
}

fn expected(bytes: &[u8]) -> usize {
    match bytes {
        [a, b, ..] => 2 + usize::from(u16::from_be_bytes([*a, *b])),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<ConsoleEvent> {
        let mut d = ConsoleDecoder::new();
        let mut out = Vec::new();
        d.feed(bytes, &mut out);
        out
    }

    #[test]
    fn a24_crc_check_value() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(crc16_xmodem(b"Hello, world!"), 0x7ADE);
    }

    #[test]
    fn a21_single_line() {
        let line = hex::decode("0609414139495a5778736279776764323979624751686574343d0a").unwrap();
        assert_eq!(encode(b"Hello, world!", MAX_LINE), line);
        assert_eq!(
            decode_all(&line),
            vec![ConsoleEvent::Frame(b"Hello, world!".to_vec())]
        );
    }

    #[test]
    fn a22_eight_byte_lines() {
        let lines: Vec<u8> = [
            "0609414139490a",
            "04145a5778730a",
            "0414627977670a",
            "0414643239790a",
            "0414624751680a",
            "04146574343d0a",
        ]
        .iter()
        .flat_map(|h| hex::decode(h).unwrap())
        .collect();
        assert_eq!(encode(b"Hello, world!", 8), lines);
        assert_eq!(
            decode_all(&lines),
            vec![ConsoleEvent::Frame(b"Hello, world!".to_vec())]
        );
    }

    #[test]
    fn a25_upload_packet_in_15_lines() {
        let mut body = hex::decode("0a00007400019a01a6636c656e0d636f6666182a637368614c7472757374206d652062726f64646174615840").unwrap();
        body.extend(0u8..=0x3f);
        body.extend(hex::decode("65696d616765006775706772616465f4").unwrap());
        assert_eq!(body.len(), 124);
        assert_eq!(crc16_xmodem(&body), 0xAB88);
        let lines = encode(&body, 16);
        let split: Vec<&[u8]> = lines.split_inclusive(|&b| b == b'\n').collect();
        assert_eq!(split.len(), 15);
        assert_eq!(hex::encode(split[0]), "06094148344b41414230414147610a");
        assert_eq!(hex::encode(split[14]), "04147134673d0a");
        assert_eq!(decode_all(&lines), vec![ConsoleEvent::Frame(body)]);
    }

    /// B23: every fragment boundary, both directions; a line never exceeds 127 bytes.
    #[test]
    fn b23_fragment_boundaries() {
        // Frame sizes 0..=400 include packets (frame + 4) of 89, 90, 91, 92, 93, 182, 183 bytes
        // and the frames of those sizes themselves.
        for n in 0..=400usize {
            let body: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
            let lines = encode(&body, MAX_LINE);
            assert_eq!(lines.len(), encoded_len(n), "n={n}");
            for (i, l) in lines.split_inclusive(|&b| b == b'\n').enumerate() {
                assert!(l.len() <= MAX_LINE, "n={n}: line of {}", l.len());
                assert_eq!(&l[..2], if i == 0 { &START } else { &CONTINUE });
            }
            // Decoded whole, and byte by byte.
            assert_eq!(
                decode_all(&lines),
                vec![ConsoleEvent::Frame(body.clone())],
                "n={n}"
            );
            let mut d = ConsoleDecoder::new();
            let mut out = Vec::new();
            for b in &lines {
                d.feed(std::slice::from_ref(b), &mut out);
            }
            assert_eq!(out, vec![ConsoleEvent::Frame(body)], "n={n}");
        }
        // FIRMWARE.md §4.3: a 146-byte upload frame goes as 2 lines of 123 and 83 bytes.
        let lines = encode(&[0; 146], MAX_LINE);
        let lens: Vec<usize> = lines
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::len)
            .collect();
        assert_eq!(lens, vec![123, 83]);
        for packet in [89usize, 90, 91, 92, 93, 182, 183] {
            let lines = encode(&vec![0x5a; packet - PACKET_OVERHEAD], MAX_LINE);
            let count = lines.iter().filter(|&&b| b == b'\n').count();
            assert_eq!(count, packet.div_ceil(90), "packet {packet}");
        }
    }

    #[test]
    fn b23_packet_without_crc_or_bad_crc_is_an_error() {
        // The zephyr#37893 bug: 91 binary bytes framed without the CRC (length still counts it).
        let body = vec![0x11; 87];
        let mut packet = ((body.len() + 2) as u16).to_be_bytes().to_vec();
        packet.extend(&body);
        let text = STANDARD.encode(&packet);
        let mut lines = Vec::new();
        for (i, c) in text.as_bytes().chunks(120).enumerate() {
            lines.extend(if i == 0 { START } else { CONTINUE });
            lines.extend(c);
            lines.push(b'\n');
        }
        let mut d = ConsoleDecoder::new();
        let mut out = Vec::new();
        d.feed(&lines, &mut out);
        assert_eq!(out, vec![]); // waiting for 2 more bytes…
                                 // …until the next packet starts: the short one is an error, the next one decodes.
        d.feed(&encode(b"next", MAX_LINE), &mut out);
        assert_eq!(
            out,
            vec![
                ConsoleEvent::Error(ConsoleError::Truncated {
                    expected: 91,
                    have: 89
                }),
                ConsoleEvent::Frame(b"next".to_vec())
            ]
        );
        // Length field without room for a CRC.
        let mut l = START.to_vec();
        l.extend(STANDARD.encode([0u8, 1, 0x41]).as_bytes());
        l.push(b'\n');
        assert_eq!(
            decode_all(&l),
            vec![ConsoleEvent::Error(ConsoleError::NoCrc(1))]
        );
        // A flipped CRC bit.
        let mut good = encode(b"Hello, world!", MAX_LINE);
        let end = good.len() - 1;
        good[2..end].copy_from_slice(
            STANDARD
                .encode(hex::decode("000f48656c6c6f2c20776f726c64217adf").unwrap())
                .as_bytes(),
        );
        assert_eq!(
            decode_all(&good),
            vec![ConsoleEvent::Error(ConsoleError::Crc {
                got: 0x7adf,
                computed: 0x7ade
            })]
        );
    }

    #[test]
    fn f8_console_text_between_and_around_frames() {
        let mut s = b"[00:00:01.000] <inf> main: booting\r\n".to_vec();
        s.extend(encode(&[1; 200], MAX_LINE));
        s.extend(b"uart:~$ \n\n");
        s.extend(encode(b"two", MAX_LINE));
        s.extend(vec![b'x'; 5000]);
        s.push(b'\n');
        let out = decode_all(&s);
        assert_eq!(
            out,
            vec![
                ConsoleEvent::Skipped(34), // the \r is not counted
                ConsoleEvent::Frame(vec![1; 200]),
                ConsoleEvent::Skipped(8),
                ConsoleEvent::Skipped(0),
                ConsoleEvent::Frame(b"two".to_vec()),
                ConsoleEvent::Skipped(4096),
            ]
        );
        assert_eq!(
            decode_all(b"\x04\x14AAAA\n"),
            vec![ConsoleEvent::Error(ConsoleError::Orphan)]
        );
        assert_eq!(
            decode_all(b"\x06\x09A!AA\n"),
            vec![ConsoleEvent::Error(ConsoleError::Base64)]
        );
    }
}
