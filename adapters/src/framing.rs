//! Bounded line framing: bytes in, whole lines out, for the `lines` serial protocol
//! (`serial::protocols::lines`) and the `exec` plug-in reader (`exec::adapter`); it depends on
//! neither.
//!
//! A [`LineFramer`] collects bytes until its terminator (one to eight bytes, e.g. `\n`, `\r\n`,
//! `\x03`) and hands out each complete line without the terminator, with the absolute stream
//! offset of its first byte. A line that grows past `max_line` bytes is never held: the framer
//! reports it once ([`Framed::TooLong`]) and drops its bytes up to the next terminator. So what
//! it buffers is at most `max_line` bytes plus the last piece fed to it, whatever the input —
//! the bound the `exec` adapter's backpressure relies on ([`LineFramer::buffered`]). It counts
//! the bytes it dropped that way ([`LineFramer::discarded`]), so the serial adapter's wrong-baud
//! check does not count them a second time.
//!
//! Pure: no I/O, never panics; feeding the same bytes in any chunking yields the same lines.

/// One result of [`LineFramer::next_line`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framed<'a> {
    /// A complete line, without its terminator.
    Line {
        /// Absolute stream offset of the line's first byte.
        offset: u64,
        /// The line's bytes (at most `max_line`).
        bytes: &'a [u8],
    },
    /// A line longer than `max_line`: reported once when it passes the limit; its bytes are
    /// dropped up to the next terminator.
    TooLong {
        /// Absolute stream offset of the line's first byte.
        offset: u64,
        /// The limit it passed.
        max_line: usize,
    },
}

/// Splits a byte stream into bounded lines (see the module documentation).
#[derive(Clone, Debug)]
pub struct LineFramer {
    terminator: Vec<u8>,
    max_line: usize,
    /// Bytes not yet handed out: `buf[start..]` is pending.
    buf: Vec<u8>,
    /// Start of the pending bytes in `buf`.
    start: usize,
    /// Where the terminator search resumes in `buf` (no terminator starts before it).
    scan: usize,
    /// Absolute stream offset of `buf[start]`.
    offset: u64,
    /// Inside a too-long line: drop bytes up to the next terminator.
    discarding: bool,
    /// Largest number of bytes ever held at once.
    high_water: usize,
    /// Bytes of too-long lines dropped so far (their terminators included).
    discarded: u64,
}

/// Longest terminator accepted.
pub const MAX_TERMINATOR: usize = 8;

impl LineFramer {
    /// A framer for lines ending in `terminator` (1 to [`MAX_TERMINATOR`] bytes; an empty one
    /// is taken as `\n`, a longer one is cut) of at most `max_line` bytes (at least 1).
    pub fn new(terminator: &[u8], max_line: usize) -> Self {
        let mut terminator = if terminator.is_empty() {
            b"\n".to_vec()
        } else {
            terminator.to_vec()
        };
        terminator.truncate(MAX_TERMINATOR);
        LineFramer {
            terminator,
            max_line: max_line.max(1),
            buf: Vec::new(),
            start: 0,
            scan: 0,
            offset: 0,
            discarding: false,
            high_water: 0,
            discarded: 0,
        }
    }

    /// The longest line this framer hands out, bytes.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Absolute offset of the next byte not yet handed out or dropped.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes held now (a partial line, or whole lines not yet taken).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The most bytes ever held at once: at most `max_line` + terminator + the largest piece
    /// passed to [`LineFramer::push`].
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// Bytes of too-long lines ([`Framed::TooLong`]) dropped so far, terminators included: the
    /// bytes this framer already reported as an error of its own.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Appends bytes read from the stream. Take the lines with [`LineFramer::next_line`] before
    /// the next push, or they stay buffered (and count against [`LineFramer::high_water`]).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scan -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        self.high_water = self.high_water.max(self.buf.len());
    }

    /// The next complete line (or too-long report), if the bytes pushed so far hold one.
    pub fn next_line(&mut self) -> Option<Framed<'_>> {
        loop {
            let pending = &self.buf[self.start..];
            let t = self.terminator.len();
            let from = self.scan.saturating_sub(self.start);
            let found = pending
                .get(from..)
                .and_then(|rest| {
                    rest.windows(t)
                        .position(|w| w == self.terminator.as_slice())
                })
                .map(|p| p + from);
            match found {
                Some(end) => {
                    let line_offset = self.offset;
                    let line_start = self.start;
                    self.start += end + t;
                    self.scan = self.start;
                    self.offset += (end + t) as u64;
                    if std::mem::replace(&mut self.discarding, false) {
                        self.discarded += (end + t) as u64;
                        continue; // the tail of a too-long line, already reported
                    }
                    if end > self.max_line {
                        self.discarded += (end + t) as u64;
                        return Some(Framed::TooLong {
                            offset: line_offset,
                            max_line: self.max_line,
                        });
                    }
                    return Some(Framed::Line {
                        offset: line_offset,
                        bytes: &self.buf[line_start..line_start + end],
                    });
                }
                None => {
                    // No terminator yet: the next search starts where one could still begin.
                    self.scan = self.start + pending.len().saturating_sub(t - 1);
                    if self.discarding {
                        // Drop what cannot hold the start of a terminator.
                        let keep = (t - 1).min(pending.len());
                        let drop = pending.len() - keep;
                        self.start += drop;
                        self.offset += drop as u64;
                        self.discarded += drop as u64;
                        self.scan = self.start;
                        return None;
                    }
                    if pending.len() > self.max_line + t - 1 {
                        // Longer than any line can be, even with a terminator cut in two.
                        let line_offset = self.offset;
                        self.discarding = true;
                        let keep = t - 1;
                        let drop = pending.len() - keep;
                        self.start += drop;
                        self.offset += drop as u64;
                        self.discarded += drop as u64;
                        self.scan = self.start;
                        return Some(Framed::TooLong {
                            offset: line_offset,
                            max_line: self.max_line,
                        });
                    }
                    return None;
                }
            }
        }
    }

    /// The bytes pushed after the last terminator (a line cut off by the end of the stream),
    /// with their offset; `None` when there are none or they belong to a too-long line.
    pub fn remainder(&self) -> Option<(u64, &[u8])> {
        let pending = &self.buf[self.start..];
        (!pending.is_empty() && !self.discarding).then_some((self.offset, pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line of `input` fed in pieces of `chunk` bytes, as (offset, text or "TOO LONG").
    fn lines(term: &[u8], max: usize, input: &[u8], chunk: usize) -> Vec<(u64, String)> {
        let mut f = LineFramer::new(term, max);
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            f.push(piece);
            while let Some(l) = f.next_line() {
                out.push(match l {
                    Framed::Line { offset, bytes } => {
                        (offset, String::from_utf8_lossy(bytes).into_owned())
                    }
                    Framed::TooLong { offset, .. } => (offset, "TOO LONG".into()),
                });
            }
            assert!(
                f.buffered() <= max + term.len() - 1 + chunk.max(1),
                "bounded"
            );
        }
        out
    }

    #[test]
    fn lines_come_out_with_their_offsets_in_any_chunking() {
        let input = b"a=1\nbb=2\n\nccc=3\npartial";
        let want: Vec<(u64, String)> = vec![
            (0, "a=1".into()),
            (4, "bb=2".into()),
            (9, "".into()),
            (10, "ccc=3".into()),
        ];
        for chunk in [1, 2, 3, 5, 100] {
            assert_eq!(lines(b"\n", 64, input, chunk), want, "chunk {chunk}");
        }
        let mut f = LineFramer::new(b"\n", 64);
        f.push(input);
        while f.next_line().is_some() {}
        assert_eq!(f.remainder(), Some((16, &b"partial"[..])));
    }

    #[test]
    fn multi_byte_terminators_split_across_pieces_are_found() {
        let input = b"one\r\ntwo\r\nthree\r\n";
        for chunk in 1..8 {
            assert_eq!(
                lines(b"\r\n", 64, input, chunk),
                vec![(0, "one".into()), (5, "two".into()), (10, "three".into())],
                "chunk {chunk}"
            );
        }
        // A lone \r or \n is part of the line.
        assert_eq!(
            lines(b"\r\n", 64, b"a\rb\nc\r\n", 1),
            vec![(0, "a\rb\nc".into())]
        );
    }

    #[test]
    fn a_too_long_line_is_reported_once_and_dropped_up_to_its_terminator() {
        let mut input = b"ok\n".to_vec();
        input.extend([b'x'; 10_000]);
        input.extend(b"\nafter\n");
        for chunk in [1, 7, 64, 4096, 20_000] {
            assert_eq!(
                lines(b"\n", 16, &input, chunk),
                vec![
                    (0, "ok".into()),
                    (3, "TOO LONG".into()),
                    (10_004, "after".into())
                ],
                "chunk {chunk}"
            );
        }
        // Exactly max_line bytes is a line; one more is not.
        assert_eq!(
            lines(b"\n", 4, b"abcd\nabcde\nz\n", 1),
            vec![(0, "abcd".into()), (5, "TOO LONG".into()), (11, "z".into())]
        );
        assert_eq!(
            lines(b"\n", 4, b"abcd\nabcde\nz\n", 100),
            vec![(0, "abcd".into()), (5, "TOO LONG".into()), (11, "z".into())]
        );
    }

    #[test]
    fn an_endless_line_holds_no_more_than_the_limit() {
        let mut f = LineFramer::new(b"\r\n", 1000);
        let piece = [b'y'; 4096];
        let mut reports = 0;
        for _ in 0..1000 {
            f.push(&piece);
            while let Some(l) = f.next_line() {
                assert!(matches!(l, Framed::TooLong { offset: 0, .. }));
                reports += 1;
            }
        }
        assert_eq!(reports, 1);
        assert!(f.high_water() <= 1000 + 1 + 4096, "{}", f.high_water());
        assert_eq!(f.offset(), 4096 * 1000 - 1);
        assert_eq!(f.discarded(), 4096 * 1000 - 1, "dropped, reported bytes");
        f.push(b"\r\nnext\r\n");
        assert_eq!(
            f.next_line(),
            Some(Framed::Line {
                offset: 4096 * 1000 + 2,
                bytes: b"next"
            })
        );
        // The too-long line's last byte and its terminator; the good line is not counted.
        assert_eq!(f.discarded(), 4096 * 1000 + 2);
        let mut g = LineFramer::new(b"\n", 4);
        g.push(b"abcdefgh\nok\n");
        while g.next_line().is_some() {}
        assert_eq!(g.discarded(), 9);
    }
}
