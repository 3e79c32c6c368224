//! Bedside-monitor protocol decoders: pure state machines from bytes to readings, no I/O.
//!
//! Each protocol implements [`Protocol`]: the serial adapter writes [`Protocol::on_open`] bytes
//! after opening the port, sends [`Protocol::keepalive`] bytes periodically, and feeds every byte it
//! reads to [`Protocol::feed`]. `wardgate decode --protocol P FILE` uses the same decoders.
//!
//! | module | device | link | source of the layout |
//! |---|---|---|---|
//! | [`cms50`] | Contec CMS50D+/CMS50E, `7D 81` command set ("V7.0") | 115200 8N1 | Contec "Communication protocol of pulse oximeter V7.0"; gagistech/bedsidemon; recordings in `data/real/serial/` |
//! | [`ansar_b`] | Ivy Biomedical 450C "ANSAR-B" output | 9600 8N1 | mdpnp/mdpnp `AnsarB.java`; recording `ivy450c_ansarb_capture.bin` |
//! | [`masimo`] | Masimo Radical-7 / Rad-series "ASCII 1" output | 9600 8N1 | mdpnp/mdpnp `poxrad_discrete.h`, `masimo-radical-7.spec`; Masimo operator's manuals |
//! | [`lines`] | any device printing text lines (JSON, CSV, `key=value`), decoded by a `[[lines_map]]` from the config | set `baud` | the device's manual, written down as a map; RFC 8259, RFC 4180, NMEA 0183 checksums |
//!
//! Every decoder is a pure state machine: bytes may arrive split anywhere, a frame may be cut or
//! garbled, and feeding the same bytes in any chunking yields the same [`Decoded`] sequence.
//! Malformed input yields [`Decoded::Error`] with the absolute stream offset; no input panics.

pub mod ansar_b;
pub mod cms50;
pub mod lines;
pub mod masimo;

use crate::observation::{Reading, Waveform};
use crate::serial::config::{ProtocolName, SerialConfig};
use std::sync::Arc;
use std::time::Duration;

/// What a decoder produces from the byte stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// A reading.
    Reading(Reading),
    /// The sample array of one stretch of a waveform (at most one second for the CMS50 pleth):
    /// `reading` gives code, unit and status, its `value` is the physical value of the first
    /// sample; the adapter stamps the array at its first sample ([`Waveform::first_sample_ms`]).
    Waveform {
        /// Code, unit, status; `value` = `waveform.physical(waveform.samples[0])`.
        reading: Reading,
        /// The samples, oldest first ([`Waveform::problem`] is `None`).
        waveform: Waveform,
    },
    /// The device reported its own serial number or id (checked against the config).
    Identity(String),
    /// A frame was malformed; `offset` is the absolute byte offset in the stream (counted from the
    /// first byte fed since the decoder was created) where the bad frame started.
    Error {
        /// Absolute stream offset of the problem.
        offset: u64,
        /// What was wrong, e.g. `bad checksum`, `unexpected byte 0x41, resyncing`.
        message: String,
    },
}

/// A serial device protocol.
pub trait Protocol: Send {
    /// The protocol's CLI/config name, e.g. `cms50`.
    fn name(&self) -> &'static str;
    /// Bytes to write right after the port opens (handshake, start-live command).
    fn on_open(&mut self) -> Vec<u8> {
        Vec::new()
    }
    /// Period and bytes of the keep-alive the device needs to keep streaming, if any.
    fn keepalive(&self) -> Option<(Duration, Vec<u8>)> {
        None
    }
    /// Feeds bytes read from the port; appends what they complete to `out`. Never panics.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Decoded>);
    /// The stream paused or ended (the line went quiet for [`GAP`], the port was lost, the file
    /// ended): appends what the decoder holds back for the rest of a period (a partial waveform
    /// array, the numerics of an unfinished window), so nothing is joined across the pause and
    /// nothing held is lost. The next bytes start new arrays. Default: nothing is held.
    fn flush(&mut self, out: &mut Vec<Decoded>) {
        let _ = out;
    }
    /// Whether the protocol reports the device's own serial number ([`Decoded::Identity`]).
    /// The serial adapter refuses a configured `serial_number` for protocols that do not, since
    /// it could never be checked.
    fn reports_identity(&self) -> bool {
        false
    }
    /// Number of complete, well-formed frames (messages, lines) decoded so far, including frames
    /// that carried no valid value (e.g. probe off). Used for the adapter's `frames_ok` counter.
    fn frames_ok(&self) -> u64 {
        0
    }
}

/// No bytes for this long is a gap in a device's stream: the serial adapter calls
/// [`Protocol::flush`], so a waveform array never spans it. 500 ms is 30 CMS50 frame periods;
/// a streaming device's USB-serial bridge delivers bytes every few ms, so only a device that
/// stopped sending (or a stalled host) makes such a pause.
pub const GAP: Duration = Duration::from_millis(500);

/// A fresh decoder for the configured protocol (one per port opening: framing state never
/// survives a reconnect). `lines` needs its map: this gives the placeholder that refuses every
/// line ([`lines::Lines::unmapped`]); use [`build_with`].
pub fn build(name: ProtocolName) -> Box<dyn Protocol> {
    build_with(name, None)
}

/// The decoder of a configured `[[serial]]` device: [`build_with`] its map, and a cms50 emits
/// its numerics every [`SerialConfig::numerics_every_s`] seconds.
pub fn build_for(
    cfg: &SerialConfig,
    map: Option<&Arc<lines::map::CompiledMap>>,
) -> Box<dyn Protocol> {
    match cfg.protocol {
        ProtocolName::Cms50 => Box::new(cms50::Cms50::with_numerics_every(cfg.numerics_every_s())),
        other => build_with(other, map),
    }
}

/// [`build`], with the compiled map a `lines` device decodes by (ignored by the other
/// protocols).
pub fn build_with(
    name: ProtocolName,
    map: Option<&Arc<lines::map::CompiledMap>>,
) -> Box<dyn Protocol> {
    match name {
        ProtocolName::Cms50 => Box::new(cms50::Cms50::new()),
        ProtocolName::AnsarB => Box::new(ansar_b::AnsarB::new()),
        ProtocolName::Masimo => Box::new(masimo::Masimo::new()),
        ProtocolName::Lines => match map {
            Some(m) => Box::new(lines::Lines::new(m.clone())),
            None => Box::new(lines::Lines::unmapped()),
        },
    }
}
