//! [`super::client::Transport`] on a serial port with SMP console framing
//! ([`super::console`], PROTOCOLS §A.5): frames go out as base64 lines, lines come in through
//! the [`ConsoleDecoder`], console text is skipped and counted, a packet with a bad or missing CRC
//! is dropped and counted (the client's timeout re-sends the request, B23/F7).
//!
//! The caller opens the port (the bench CLI with `serial::LineSettings`, 8N1, exclusive): this
//! module imports nothing outside `smp/`, so the serial adapter can use the SMP codec without an
//! import cycle (`tests/layout.rs`).

use super::client::{Transport, TransportError};
use super::console::{self, ConsoleDecoder, ConsoleEvent};
use std::collections::VecDeque;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialStream;

/// Counters of what the console carried besides SMP frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleStats {
    /// Frames received.
    pub frames: u64,
    /// Console text lines skipped.
    pub text_lines: u64,
    /// Packets dropped (bad CRC, no CRC, bad base64, truncated).
    pub bad_packets: u64,
}

/// An SMP console on a serial port.
pub struct SerialTransport {
    port: SerialStream,
    decoder: ConsoleDecoder,
    ready: VecDeque<Vec<u8>>,
    events: Vec<ConsoleEvent>,
    stats: ConsoleStats,
}

impl SerialTransport {
    /// An SMP console on an opened port (8N1, no flow control).
    pub fn new(port: SerialStream) -> SerialTransport {
        SerialTransport {
            port,
            decoder: ConsoleDecoder::new(),
            ready: VecDeque::new(),
            events: Vec::new(),
            stats: ConsoleStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> ConsoleStats {
        self.stats
    }
}

impl Transport for SerialTransport {
    async fn send(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        let lines = console::encode(frame, console::MAX_LINE);
        self.port.write_all(&lines).await?;
        self.port.flush().await?;
        Ok(())
    }

    async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        let mut buf = [0u8; 1024];
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Ok(f);
            }
            // `read` is cancel-safe: bytes are only taken when it completes.
            let n = match self.port.read(&mut buf).await {
                Ok(0) => return Err(TransportError::Closed),
                Ok(n) => n,
                // A pty whose other side closed reads EIO.
                Err(e) if e.raw_os_error() == Some(5) => return Err(TransportError::Closed),
                Err(e) => return Err(e.into()),
            };
            self.decoder.feed(&buf[..n], &mut self.events);
            for ev in self.events.drain(..) {
                match ev {
                    ConsoleEvent::Frame(f) => {
                        self.stats.frames += 1;
                        self.ready.push_back(f);
                    }
                    ConsoleEvent::Skipped(_) => self.stats.text_lines += 1,
                    ConsoleEvent::Error(e) => {
                        self.stats.bad_packets += 1;
                        log::debug!("smp console: dropped a packet: {e}");
                    }
                }
            }
        }
    }

    /// The device's buffer holds the packet with its length and CRC (PROTOCOLS §A.5), so the
    /// frame gets 4 bytes less.
    fn frame_limit(&self, buf_size: usize) -> usize {
        buf_size.saturating_sub(console::PACKET_OVERHEAD)
    }
}
