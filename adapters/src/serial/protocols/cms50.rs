//! Contec CMS50D+ / CMS50E pulse oximeters, newer `7D 81` command set ("V7.0"), 115200 8N1.
//!
//! # Sources
//! - Contec Medical Systems, "Communication protocol of pulse oximeter V7.0" (2010-07-08), §3.2
//!   package format: byte 0 is the *package type* with bit 7 clear; byte 1 is the *high byte*
//!   with bit 7 set, whose bits 0..6 are bit 7 of the following data bytes; every data byte is sent
//!   with bit 7 set (the synchronisation bit). Known from the copies on scribd/tranzoa.net as quoted
//!   in third-party drivers; the vendor does not publish it.
//! - gagistech/bedsidemon `src/bedsidemon/spo2/contec_cms50d_plus.cpp` (commit 8cca8de4):
//!   restores the high bits exactly that way and names the 7 data bytes of the live package
//!   (type `0x01`): d0 signal strength (bits 0..3), searching too long (bit 4), pulse beep
//!   (bit 6), finger out (bit 7); d1 waveform point (bits 0..6), searching pulse (bit 7); d2 bit 4
//!   set = PI invalid; d3 pulse rate, `0xFF` = invalid; d4 SpO2 in %, > 100 = invalid; d5/d6 PI
//!   (16-bit little-endian).
//! - celiponcio/oximeter-CMS50Dplus-v4.6-LIVE-data-display-store-alarm `BreatheIn.py`: the same
//!   reading of the high byte's bits 0 and 1 (finger out, searching) from a real CMS50D+ v4.6.
//! - headrotor/art-sensors `spO2/stream_data.py` (commit 0893e6a2): the captured handshake,
//!   start-live command `7D 81 A1 80 80 80 80 80 80` and keep-alive `7D 81 AF 80 80 80 80 80 80`
//!   sent periodically; the recording `data/real/serial/cms50dplus_handshake_and_live.csv`
//!   is transcribed from it.
//! - titinho11/CMS50E-raw-ppg-data: the CMS50E recording `cms50e_live_capture.bin` (60 frames/s).
//! - timegrid/CMS50Dplus7 `cms50dplus7.py` (commit 070343e8), written against the V7.0 protocol:
//!   a package is the type byte, the high byte and 1..=7 data bytes (3..=9 bytes, "too long" above
//!   9); live data d0 bits 0..3 signal strength, bit 4 searching too long, bit 5 low SpO2, bit 6
//!   pulse beep, bit 7 probe error; d2 bits 0..3 bar graph, bit 4 PI flag, **bits 5..7
//!   reserved**; d3 pulse rate `0xFF` = invalid; d4 SpO2 `0x7F` = invalid; d5/d6 PI `0xFFFF` =
//!   invalid.
//! - Contec CMS50D+ / CMS50E user manuals, specifications: SpO2 measuring range 0–100 %, pulse
//!   rate measuring range 30–250 bpm (we accept 25–250: some CMS50 variants state 25).
//!
//! # Frame layout as decoded here (9 bytes on the wire)
//! `01 HI D0 D1 D2 D3 D4 D5 D6`, data byte `di` = `(Di & 0x7F) | (bit i of HI) << 7`.
//!
//! The byte that earlier reverse-engineering notes call "status" (`E0` valid, `E1`, `E2`) is the
//! high byte: `E0` = no data byte has bit 7 set except d5/d6 (PI = `0xFFFF`, invalid); `E1` sets
//! bit 7 of d0 = **finger out**; `E2` sets bit 7 of d1 = **searching pulse**. A pulse rate of
//! 128 bpm or more also sets bit 3 of the high byte; decoders that compute `byte5 & 0x7F` report
//! such a pulse 128 bpm too low — this decoder does not.
//!
//! # What a live frame carries
//! - Finger out (probe off): no numeric, no pleth sample; it ends the stretch (below).
//! - Searching pulse: a pleth sample taken while searching (status `pulse-search`); no SpO2, no
//!   pulse rate.
//! - Otherwise: SpO2 ([`mdc::SPO2`], %) when `1..=100`; pulse rate ([`mdc::PULSE_RATE_OXIM`],
//!   /min) when `25..=250` (`0xFF` is the device's "invalid", 0 is never a measured rate); a pleth
//!   sample (device scale `0..=127` = d1 bits 0..6). The numerics carry status `search-too-long`
//!   when d0 bit 4 is set. Note: the expected CSV next to the CMS50E recording lists the raw wire
//!   byte (`d1 | 0x80`, 128..255) in its `pleth` column; the sample is that byte minus the
//!   synchronisation bit.
//! - PI (d5/d6) is not emitted: its scale is not documented in any source we could read, and both
//!   recordings carry `0xFFFF` (invalid).
//!
//! # What is emitted: the pleth as waveforms, the numerics once a second
//! Frames come at [`FRAMES_PER_SEC`] (60) a second (the CMS50E recording's source README). The
//! decoder counts the device's seconds in frames, from the first trusted frame of a stretch:
//! - **Pleth**: one [`Decoded::Waveform`] per second, code [`mdc::PLETH`] (`MDC_PULS_OXIM_PLETH`,
//!   IEEE 11073-10101 partition 2 (SCADA) term 19380: 2·65536 + 19380 = 150452; the term as in
//!   the MD PnP OpenICE nomenclature (`rosetta` IDL: `MDC_PULS_OXIM_PLETH = 19380`, next to
//!   `MDC_PULS_OXIM_SAT_O2 = 19384`, whose 150456 the PHD IG confirms; `docs/PROTOCOLS.md`
//!   §E), unit `1` (dimensionless),
//!   period [`PLETH_PERIOD_US`] (1 s / 60, rounded to the µs), scale 1, offset 0, samples exactly
//!   as the frames carry them (`0..=127`), oldest first: 60 samples, fewer when the stretch
//!   ends or the status changes within the second. An array is homogeneous: its samples were all
//!   taken while searching (status `pulse-search`) or none was, so a change of that flag ends
//!   the array and the next sample starts a new one within the same second.
//! - **Numerics**: with `numerics_every_s` = N ≥ 1 (`[[serial]]`, default
//!   [`DEFAULT_NUMERICS_EVERY_S`]), SpO2 and pulse rate once every N seconds: the **last** value
//!   the device sent in the window (with that frame's status), not an average. The CMS50 already
//!   averages over several beats before it displays a value; a second average would flatten the
//!   onset of a desaturation and delay the number that crosses an alarm limit, while the last
//!   value is one the device really showed. A window in which no frame carried a valid SpO2
//!   (pulse rate) gives none. With N = 0 every frame's numerics are emitted as they come (60 a
//!   second), the decoder's behaviour before issue 11.
//!
//! At the end of each second the window's numerics (if it is complete) come first, then the
//! pleth array.
//!
//! ## The end of a stretch: nothing joined across a gap
//! A stretch of samples ends, and what it holds is emitted at once (the partial pleth array and
//! the numerics of the unfinished window, the last values before the end), when:
//! - a frame says **finger out** (no sample: the next sample starts a new array and a new second);
//! - the stream breaks (any [`Decoded::Error`] while locked: a cut or garbled frame lost samples);
//! - the line goes **quiet** for [`GAP`](super::GAP), the port is lost, or the file ends: the
//!   serial adapter (and `wardgate decode`) call [`Protocol::flush`]. On a disconnect the held
//!   samples are therefore not lost: they leave as a shorter array before the `disconnected`
//!   event. On shutdown they are dropped (at most one second and one window).
//!
//! A reply package between live frames is no gap (the device keeps its pace). The time stamp is
//! the adapter's: it stamps numerics and arrays at the arrival of the bytes that completed
//! them (a flush: at the last bytes that arrived), and an array at its **first sample**,
//! (n − 1) periods before that ([`Waveform::first_sample_ms`]), as the `exec` plug-ins' waveforms.
//!
//! # Nothing invented: field checks and lock
//! A noisy line or a wrong baud rate delivers bytes that sometimes look like a live package
//! (`01` then 8 bytes with bit 7 set: about one in 65,536 random positions). So:
//! - **Field checks** (a live package that fails one is an error, not a reading): d2 bits 5..7
//!   (reserved, V7.0) are 0; SpO2 is `0..=100` or the invalid marker `0x7F`; the pulse rate is 0,
//!   `25..=250` (the device's measuring range) or the invalid marker `0xFF`. A value the device
//!   cannot send is a sign of a broken stream, never a reading.
//! - **Lock**: nothing is emitted until [`LOCK_FRAMES`] live packages in a row, back to back
//!   (nothing between them), passed the checks. The readings of those packages are held back and
//!   emitted together when the last of them arrives, so a real stream loses nothing (the
//!   recordings decode to exactly what they did without the lock). Any error drops the lock
//!   and discards what was held back; a well-formed non-live package (a reply to a command) does
//!   not drop it, but does break a run that is still being counted. Random bytes give 0
//!   readings per MB (`adapters/tests/decoder_noise.rs`, also for recordings misread at every
//!   other standard baud rate).
//!
//! # Framing
//! Any byte with bit 7 clear starts a package. A live package (`0x01`) must be followed by
//! exactly 8 bytes with bit 7 set. Other packages (responses to the host's queries, e.g. `0C 80`
//! or `04 80 F5 F3 E5 F2 A0 A0 A0`) are skipped without error up to the next type byte. Bytes
//! before the first type byte of the stream (the port opened mid-frame) are skipped silently.
//! Errors ([`Decoded::Error`], offset = absolute stream offset): a live frame cut short by a new
//! type byte, bytes with bit 7 set outside any package, a package with no body, a non-live package
//! longer than 9 bytes (V7.0: type, high byte, at most 7 data bytes), a live package whose fields
//! fail the checks above. One error is reported per stretch of bad input; the stretch ends at the
//! next well-formed package.

use super::{Decoded, Protocol};
use crate::observation::{mdc, Reading, Unit, Waveform};
use crate::serial::config::DEFAULT_NUMERICS_EVERY_S;
use std::time::Duration;

/// Host → device command that starts the live stream (package type `0x7D`, command `0xA1`).
/// Source: headrotor/art-sensors `spO2/stream_data.py` (`cmd1`); the CMS50D+ capture.
pub const START_LIVE: [u8; 9] = [0x7D, 0x81, 0xA1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80];

/// Host → device "host is connected" keep-alive (command `0xAF`; V7.0 protocol: "inform device
/// being connected", every 5 s). Source: headrotor/art-sensors `spO2/stream_data.py` (`cmd2`,
/// sent periodically by the vendor software).
pub const KEEPALIVE: [u8; 9] = [0x7D, 0x81, 0xAF, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80];

/// How often [`KEEPALIVE`] (followed by [`START_LIVE`] again) is sent: 5 s. The start command is
/// repeated because the CMS50D+ stops live data about 30 s after it was requested
/// (gagistech/bedsidemon re-requests every ~15 s); repeating it is harmless while streaming.
pub const KEEPALIVE_PERIOD: Duration = Duration::from_secs(5);

/// Live frames a second: the CMS50E's rate (titinho11/CMS50E-raw-ppg-data README, see
/// `data/real/serial/PROVENANCE.md`); the decoder's second is this many frames.
pub const FRAMES_PER_SEC: u32 = 60;

/// Sample period of the pleth, µs: 1 s / [`FRAMES_PER_SEC`] = 16,666.7 µs, rounded to 16,667
/// (the period is whole µs; the error, 20 µs a second, is far below the ms of the time stamps).
pub const PLETH_PERIOD_US: u32 = 16_667;

/// Package type of a live (real-time) data package.
const LIVE_TYPE: u8 = 0x01;
/// Length of a live package on the wire: type, high byte, 7 data bytes.
const LIVE_LEN: usize = 9;
/// Longest body (high byte + data bytes) of any package: V7.0 packages are at most 9 bytes.
const MAX_OTHER_BODY: usize = LIVE_LEN - 1;
/// Live packages in a row, back to back and passing the field checks, before readings are
/// trusted (see the module documentation). The CMS50D+ recording has 5 live packages.
pub const LOCK_FRAMES: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing recognised yet: the port may have opened mid-frame, skip silently.
    Unsynced,
    /// Between packages: only a type byte may come.
    Idle,
    /// Collecting a live package that started at `start`; `len` bytes are in `frame`.
    Live { start: u64, len: usize },
    /// Skipping the body of a non-live package of type `ty` that started at `start`.
    Other { start: u64, ty: u8, len: usize },
    /// After an error: skipping until the next type byte.
    Garbage,
}

/// Decoder for the CMS50D+/CMS50E live stream (see the module documentation).
#[derive(Debug)]
pub struct Cms50 {
    /// Framing state.
    state: State,
    /// The live package being collected.
    frame: [u8; LIVE_LEN],
    /// Absolute offset of the next byte fed.
    offset: u64,
    /// An error was reported and no well-formed package has followed yet: stay quiet.
    in_bad_stretch: bool,
    /// Live packages whose readings were emitted (locked, or the run that made the lock); a
    /// run discarded before the lock is not counted, so a stream that never locks shows none.
    frames_ok: u64,
    /// Readings are trusted: [`LOCK_FRAMES`] good live packages came in a row, no error since.
    locked: bool,
    /// Good live packages in the current run while not locked.
    run: usize,
    /// Data bytes of the current run's packages, held back until the lock.
    held: Vec<[u8; 7]>,
    /// Seconds per numerics window; 0 = numerics of every frame.
    numerics_every_s: u32,
    /// The pleth array being filled (trusted frames only).
    wave: Vec<i32>,
    /// The samples of `wave` were taken while searching pulse.
    wave_searching: bool,
    /// Trusted frames of the current second, `0..FRAMES_PER_SEC`.
    second_frames: u32,
    /// Whole seconds of the current numerics window.
    window_secs: u32,
    /// Last valid SpO2 of the window and whether its frame said "searching too long".
    last_spo2: Option<(u8, bool)>,
    /// Last valid pulse rate of the window, likewise.
    last_pulse: Option<(u8, bool)>,
}

impl Default for Cms50 {
    fn default() -> Self {
        Self::new()
    }
}

impl Cms50 {
    /// A decoder at stream offset 0, numerics once every [`DEFAULT_NUMERICS_EVERY_S`] s.
    pub fn new() -> Self {
        Self::with_numerics_every(DEFAULT_NUMERICS_EVERY_S)
    }

    /// A decoder at stream offset 0 that emits SpO2 and pulse rate once every
    /// `numerics_every_s` seconds (the last values of the window), or with every frame when 0.
    pub fn with_numerics_every(numerics_every_s: u32) -> Self {
        Cms50 {
            state: State::Unsynced,
            frame: [0; LIVE_LEN],
            offset: 0,
            in_bad_stretch: false,
            frames_ok: 0,
            locked: false,
            run: 0,
            held: Vec::new(),
            numerics_every_s,
            wave: Vec::with_capacity(FRAMES_PER_SEC as usize),
            wave_searching: false,
            second_frames: 0,
            window_secs: 0,
            last_spo2: None,
            last_pulse: None,
        }
    }

    /// Whether readings are currently trusted (see the module documentation).
    pub fn locked(&self) -> bool {
        self.locked
    }

    fn error(&mut self, offset: u64, message: String, out: &mut Vec<Decoded>) {
        // Samples were lost: what the stretch holds leaves now, the next sample starts anew.
        self.end_stretch(out);
        if !self.in_bad_stretch {
            out.push(Decoded::Error { offset, message });
        }
        self.in_bad_stretch = true;
        self.unlock();
    }

    fn unlock(&mut self) {
        self.locked = false;
        self.run = 0;
        self.held.clear();
    }

    /// A complete live package that started at `start`.
    fn live_frame(&mut self, start: u64, out: &mut Vec<Decoded>) {
        let d = restore_high_bits(&self.frame);
        if let Err(why) = check_live(&d) {
            self.error(
                start,
                format!("malformed live frame ({why}), resyncing"),
                out,
            );
            return;
        }
        self.in_bad_stretch = false;
        if self.locked {
            self.frames_ok += 1;
            self.take(&d, out);
            return;
        }
        self.held.push(d);
        self.run += 1;
        if self.run >= LOCK_FRAMES {
            self.locked = true;
            self.frames_ok += self.run as u64;
            self.run = 0;
            for d in std::mem::take(&mut self.held) {
                self.take(&d, out);
            }
        }
    }

    /// One trusted live frame (data bytes with bit 7 restored): its sample joins the array, its
    /// numerics the window; the end of a second emits them (see the module documentation).
    fn take(&mut self, d: &[u8; 7], out: &mut Vec<Decoded>) {
        let finger_out = d[0] & 0x80 != 0;
        if finger_out {
            self.end_stretch(out);
            return;
        }
        let search_too_long = d[0] & 0x10 != 0;
        let searching = d[1] & 0x80 != 0;
        if searching != self.wave_searching {
            self.flush_wave(out);
            self.wave_searching = searching;
        }
        self.wave.push(i32::from(d[1] & 0x7F));
        if !searching {
            let (pulse, spo2) = (d[3], d[4]);
            let spo2 = (1..=100).contains(&spo2).then_some((spo2, search_too_long));
            let pulse = PULSE_RANGE
                .contains(&pulse)
                .then_some((pulse, search_too_long));
            if self.numerics_every_s == 0 {
                numerics(spo2, pulse, out);
            } else {
                self.last_spo2 = spo2.or(self.last_spo2);
                self.last_pulse = pulse.or(self.last_pulse);
            }
        }
        self.second_frames += 1;
        if self.second_frames >= FRAMES_PER_SEC {
            self.second_frames = 0;
            self.window_secs += 1;
            if self.window_secs >= self.numerics_every_s {
                self.flush_numerics(out);
            }
            self.flush_wave(out);
        }
    }

    /// The window's last SpO2 and pulse rate, if any; a new window begins.
    fn flush_numerics(&mut self, out: &mut Vec<Decoded>) {
        numerics(self.last_spo2.take(), self.last_pulse.take(), out);
        self.window_secs = 0;
    }

    /// The pleth array so far, if any; a new one begins.
    fn flush_wave(&mut self, out: &mut Vec<Decoded>) {
        if self.wave.is_empty() {
            return;
        }
        let samples =
            std::mem::replace(&mut self.wave, Vec::with_capacity(FRAMES_PER_SEC as usize));
        let waveform = Waveform {
            period_us: PLETH_PERIOD_US,
            scale: 1.0,
            offset: 0.0,
            samples,
        };
        let status = if self.wave_searching {
            vec!["pulse-search".into()]
        } else {
            Vec::new()
        };
        let reading = Reading {
            code: mdc::PLETH,
            value: waveform.physical(waveform.samples[0]),
            unit: Unit::DIMLESS,
            device_time: None,
            status,
        };
        out.push(Decoded::Waveform { reading, waveform });
    }

    /// The stretch ends (finger out, an error, a pause): the numerics of the unfinished window
    /// and the partial array leave now; a run not yet locked is dropped (it is no longer back to
    /// back); the next trusted frame starts a new second.
    fn end_stretch(&mut self, out: &mut Vec<Decoded>) {
        self.flush_numerics(out);
        self.flush_wave(out);
        self.second_frames = 0;
        if !self.locked {
            self.run = 0;
            self.held.clear();
        }
    }

    fn begin(&mut self, ty: u8, at: u64) {
        if ty == LIVE_TYPE {
            self.frame[0] = ty;
            self.state = State::Live { start: at, len: 1 };
        } else {
            self.state = State::Other {
                start: at,
                ty,
                len: 0,
            };
        }
    }

    fn push(&mut self, b: u8, out: &mut Vec<Decoded>) {
        let at = self.offset;
        self.offset += 1;
        let is_type = b & 0x80 == 0;
        match self.state {
            State::Unsynced | State::Garbage => {
                if is_type {
                    self.begin(b, at);
                }
            }
            State::Idle => {
                if is_type {
                    self.begin(b, at);
                } else {
                    self.error(
                        at,
                        format!("unexpected byte 0x{b:02X} outside a package, resyncing"),
                        out,
                    );
                    self.state = State::Garbage;
                }
            }
            State::Live { start, len } => {
                if is_type {
                    self.error(
                        start,
                        format!("truncated live frame ({len} of {LIVE_LEN} bytes), resyncing"),
                        out,
                    );
                    self.begin(b, at);
                } else {
                    self.frame[len] = b;
                    if len + 1 == LIVE_LEN {
                        self.state = State::Idle;
                        self.live_frame(start, out);
                    } else {
                        self.state = State::Live {
                            start,
                            len: len + 1,
                        };
                    }
                }
            }
            State::Other { start, ty, len } => {
                if is_type {
                    if len == 0 {
                        self.error(
                            start,
                            format!("empty package of type 0x{ty:02X}, resyncing"),
                            out,
                        );
                    } else {
                        self.in_bad_stretch = false;
                        // A reply between live packages: the lock holds, a run being counted
                        // starts again.
                        if !self.locked {
                            self.run = 0;
                            self.held.clear();
                        }
                    }
                    self.begin(b, at);
                } else if len + 1 > MAX_OTHER_BODY {
                    self.error(
                        start,
                        format!("package of type 0x{ty:02X} longer than {MAX_OTHER_BODY} bytes, resyncing"),
                        out,
                    );
                    self.state = State::Garbage;
                } else {
                    self.state = State::Other {
                        start,
                        ty,
                        len: len + 1,
                    };
                }
            }
        }
    }
}

/// The seven data bytes of a package with their bit 7 restored from the high byte.
fn restore_high_bits(frame: &[u8; LIVE_LEN]) -> [u8; 7] {
    let hi = frame[1];
    let mut d = [0u8; 7];
    for (i, v) in d.iter_mut().enumerate() {
        *v = (frame[2 + i] & 0x7F) | (((hi >> i) & 1) << 7);
    }
    d
}

fn reading(code: u32, value: f64, unit: Unit, status: Vec<String>) -> Decoded {
    Decoded::Reading(Reading {
        code,
        value,
        unit,
        device_time: None,
        status,
    })
}

/// Device range of the pulse rate (CMS50 specifications: 30–250 bpm; 25 in some variants).
const PULSE_RANGE: std::ops::RangeInclusive<u8> = 25..=250;
/// The device's "pulse rate invalid" marker.
const PULSE_INVALID: u8 = 0xFF;
/// The device's "SpO2 invalid" marker (V7.0, timegrid/CMS50Dplus7).
const SPO2_INVALID: u8 = 0x7F;

/// The field checks of a live package (data bytes with bit 7 restored). The error text names
/// the field, never its value.
fn check_live(d: &[u8; 7]) -> Result<(), &'static str> {
    if d[2] & 0xE0 != 0 {
        return Err("reserved bits of byte 4 set");
    }
    let spo2 = d[4];
    if spo2 > 100 && spo2 != SPO2_INVALID {
        return Err("SpO2 outside 0-100 and not the invalid marker");
    }
    let pulse = d[3];
    if pulse != 0 && pulse != PULSE_INVALID && !PULSE_RANGE.contains(&pulse) {
        return Err("pulse rate outside the device's range and not the invalid marker");
    }
    Ok(())
}

/// SpO2 and pulse rate readings (value, "searching too long"), each when present.
fn numerics(spo2: Option<(u8, bool)>, pulse: Option<(u8, bool)>, out: &mut Vec<Decoded>) {
    let status = |too_long: bool| -> Vec<String> {
        if too_long {
            vec!["search-too-long".into()]
        } else {
            Vec::new()
        }
    };
    if let Some((v, too_long)) = spo2 {
        out.push(reading(
            mdc::SPO2,
            f64::from(v),
            Unit::PERCENT,
            status(too_long),
        ));
    }
    if let Some((v, too_long)) = pulse {
        out.push(reading(
            mdc::PULSE_RATE_OXIM,
            f64::from(v),
            Unit::BEAT_PER_MIN,
            status(too_long),
        ));
    }
}

impl Protocol for Cms50 {
    fn name(&self) -> &'static str {
        "cms50"
    }

    /// The start-live command [`START_LIVE`]. The vendor software's query handshake
    /// (`A7 A2 A0 B0 AC B3 A8 AA A9`, see the CMS50D+ capture) is not needed for live data.
    fn on_open(&mut self) -> Vec<u8> {
        START_LIVE.to_vec()
    }

    /// [`KEEPALIVE`] then [`START_LIVE`], every [`KEEPALIVE_PERIOD`].
    fn keepalive(&self) -> Option<(Duration, Vec<u8>)> {
        let mut bytes = KEEPALIVE.to_vec();
        bytes.extend_from_slice(&START_LIVE);
        Some((KEEPALIVE_PERIOD, bytes))
    }

    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Decoded>) {
        for &b in bytes {
            self.push(b, out);
        }
    }

    fn frames_ok(&self) -> u64 {
        self.frames_ok
    }

    /// Ends the stretch: the partial pleth array and the unfinished window's numerics (see the
    /// module documentation).
    fn flush(&mut self, out: &mut Vec<Decoded>) {
        self.end_stretch(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/real/serial/");

    fn real(name: &str) -> Vec<u8> {
        std::fs::read(format!("{REAL}{name}")).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    /// Decodes `chunks` with numerics every `every` s; the stream ends with a flush.
    fn decode_with(every: u32, chunks: &[&[u8]]) -> Vec<Decoded> {
        let mut p = Cms50::with_numerics_every(every);
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out);
        }
        p.flush(&mut out);
        out
    }

    /// [`decode_with`] at the default, numerics once a second.
    fn decode_all(chunks: &[&[u8]]) -> Vec<Decoded> {
        decode_with(DEFAULT_NUMERICS_EVERY_S, chunks)
    }

    fn values(out: &[Decoded], code: u32) -> Vec<f64> {
        out.iter()
            .filter_map(|d| match d {
                Decoded::Reading(r) if r.code == code => Some(r.value),
                _ => None,
            })
            .collect()
    }

    /// The pleth arrays: (samples, status).
    fn waves(out: &[Decoded]) -> Vec<(Vec<i32>, Vec<String>)> {
        out.iter()
            .filter_map(|d| match d {
                Decoded::Waveform { reading, waveform } => {
                    assert_eq!(reading.code, mdc::PLETH);
                    assert_eq!(reading.unit, Unit::DIMLESS);
                    assert_eq!(reading.value, f64::from(waveform.samples[0]));
                    assert_eq!(
                        (waveform.period_us, waveform.scale, waveform.offset),
                        (16_667, 1.0, 0.0)
                    );
                    assert_eq!(waveform.problem(), None);
                    Some((waveform.samples.clone(), reading.status.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn lengths(out: &[Decoded]) -> Vec<usize> {
        waves(out).iter().map(|w| w.0.len()).collect()
    }

    fn samples(out: &[Decoded]) -> Vec<i32> {
        waves(out).into_iter().flat_map(|w| w.0).collect()
    }

    /// A live package carrying data bytes `d` (bit 7 of each in the high byte).
    fn live(d: [u8; 7]) -> [u8; 9] {
        let mut f = [0x01, 0x80, 0, 0, 0, 0, 0, 0, 0];
        for (i, v) in d.iter().enumerate() {
            f[1] |= (v >> 7) << i;
            f[2 + i] = 0x80 | (v & 0x7F);
        }
        f
    }

    /// A plain live package: pleth sample, pulse rate, SpO2 (PI invalid).
    fn frame(pleth: u8, pulse: u8, spo2: u8) -> [u8; 9] {
        live([0x04, pleth, 0x12, pulse, spo2, 0xFF, 0xFF])
    }

    /// (pleth, pulse, spo2) per row of `cms50e_live_capture.expected.csv`.
    fn expected_rows() -> Vec<(u8, u8, u8)> {
        let text = String::from_utf8(real("cms50e_live_capture.expected.csv")).unwrap();
        text.lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (
                    f[4].parse().unwrap(),
                    f[6].parse().unwrap(),
                    f[7].parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn cms50e_recording_gives_one_pleth_array_a_second_and_the_numerics_of_each_second() {
        let bin = real("cms50e_live_capture.bin");
        let mut p = Cms50::new();
        let mut out = Vec::new();
        p.feed(&bin, &mut out);
        assert_eq!(p.frames_ok(), 102);
        // The first second (60 frames) is out; the other 42 frames are held until the flush.
        assert_eq!(lengths(&out), vec![60]);
        p.flush(&mut out);
        assert!(
            out.iter().all(|d| !matches!(d, Decoded::Error { .. })),
            "no errors: {out:?}"
        );
        let rows = expected_rows();
        assert_eq!(rows.len(), 102);
        // Sample-exact: the arrays, concatenated, are the frames' pleth bytes (sync bit off).
        assert_eq!(lengths(&out), vec![60, 42]);
        let want: Vec<i32> = rows.iter().map(|r| i32::from(r.0 & 0x7F)).collect();
        assert_eq!(samples(&out), want);
        // The numerics of each second are the values of its last frame (59, then 101).
        assert_eq!(
            values(&out, mdc::SPO2),
            vec![f64::from(rows[59].2), f64::from(rows[101].2)]
        );
        assert_eq!(
            values(&out, mdc::PULSE_RATE_OXIM),
            vec![f64::from(rows[59].1), f64::from(rows[101].1)]
        );
        // In order: second 1's SpO2, pulse, array; then the flushed rest the same way.
        let codes: Vec<u32> = out
            .iter()
            .map(|d| match d {
                Decoded::Reading(r) => r.code,
                Decoded::Waveform { reading, .. } => reading.code,
                other => panic!("{other:?}"),
            })
            .collect();
        let second = [mdc::SPO2, mdc::PULSE_RATE_OXIM, mdc::PLETH];
        assert_eq!(codes, [second, second].concat());
        for d in &out {
            if let Decoded::Reading(r) = d {
                assert!(r.device_time.is_none() && r.status.is_empty());
                let unit = match r.code {
                    mdc::SPO2 => Unit::PERCENT,
                    _ => Unit::BEAT_PER_MIN,
                };
                assert_eq!(r.unit, unit);
            }
        }
    }

    #[test]
    fn numerics_every_0_gives_every_frames_numerics_and_the_same_arrays() {
        let bin = real("cms50e_live_capture.bin");
        let out = decode_with(0, &[&bin]);
        let rows = expected_rows();
        let spo2: Vec<f64> = rows.iter().map(|r| f64::from(r.2)).collect();
        let pulse: Vec<f64> = rows.iter().map(|r| f64::from(r.1)).collect();
        assert_eq!(values(&out, mdc::SPO2), spo2);
        assert_eq!(values(&out, mdc::PULSE_RATE_OXIM), pulse);
        assert_eq!(lengths(&out), vec![60, 42]);
        assert_eq!(samples(&out), samples(&decode_all(&[&bin])));
    }

    /// `examples/plugins/oximeter_demo.csv` (the example plug-in's replay, 204 readings) is the
    /// SpO2 and pulse of every live frame of the CMS50E capture: this decoder's output with
    /// `numerics_every_s = 0`, row for row.
    #[test]
    fn the_example_plugins_csv_is_every_frames_numerics_of_the_recording() {
        let out = decode_with(0, &[&real("cms50e_live_capture.bin")]);
        let want: Vec<String> = values(&out, mdc::SPO2)
            .iter()
            .zip(values(&out, mdc::PULSE_RATE_OXIM))
            .map(|(s, p)| format!("{s},{p}"))
            .collect();
        let csv = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/plugins/oximeter_demo.csv"
        ))
        .unwrap();
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some("spo2,pulse"));
        assert_eq!(lines.collect::<Vec<_>>(), want);
        assert_eq!(want.len() * 2, 204);
    }

    #[test]
    fn a_long_stream_loses_and_repeats_no_sample_across_array_boundaries() {
        // The recording five times back to back: 510 frames, 8.5 s.
        let bin = real("cms50e_live_capture.bin");
        let stream: Vec<u8> = bin.repeat(5);
        let want: Vec<i32> = expected_rows()
            .iter()
            .map(|r| i32::from(r.0 & 0x7F))
            .collect::<Vec<_>>()
            .repeat(5);
        for every in [0, 1, 2, 60] {
            let mut rng = fastrand::Rng::with_seed(u64::from(every));
            let mut chunks = Vec::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len().min(100));
                chunks.push(&rest[..n]);
                rest = &rest[n..];
            }
            let out = decode_with(every, &chunks);
            assert_eq!(
                lengths(&out),
                [vec![60; 8], vec![30]].concat(),
                "every {every}"
            );
            assert_eq!(samples(&out), want, "every {every}");
            let numerics = match every {
                0 => 510,
                1 => 9, // 8 whole seconds and the flushed half
                2 => 5, // seconds 2, 4, 6, 8 and the flushed half
                _ => 1, // only the flush
            };
            assert_eq!(values(&out, mdc::SPO2).len(), numerics, "every {every}");
            assert_eq!(values(&out, mdc::PULSE_RATE_OXIM).len(), numerics);
        }
    }

    #[test]
    fn a_numeric_is_the_last_value_of_its_second_not_an_average() {
        // A desaturation within one second: 30 frames at 97 %, 30 at 88 % (mean 92.5).
        let mut bytes = Vec::new();
        for i in 0..60u8 {
            let (spo2, pulse) = if i < 30 { (97, 70) } else { (88, 92) };
            bytes.extend(frame(40 + i, pulse, spo2));
        }
        // The next second: valid numerics, then the device's "invalid" markers at its end.
        for i in 0..60u8 {
            let (spo2, pulse) = if i < 50 { (86, 95) } else { (0x7F, 0xFF) };
            bytes.extend(frame(i, pulse, spo2));
        }
        let out = decode_all(&[&bytes]);
        assert_eq!(values(&out, mdc::SPO2), vec![88.0, 86.0]);
        assert_eq!(values(&out, mdc::PULSE_RATE_OXIM), vec![92.0, 95.0]);
        assert_eq!(lengths(&out), vec![60, 60]);
    }

    #[test]
    fn finger_out_ends_the_stretch_and_searching_gets_its_own_array() {
        let mut bytes = Vec::new();
        for i in 0..20 {
            bytes.extend(frame(i, 61, 98));
        }
        // Searching pulse (d1 bit 7): samples, no numerics; then "search too long" numerics.
        for i in 0..10 {
            bytes.extend(live([0x04, 0x80 | (50 + i), 0x12, 0xFF, 0x7F, 0xFF, 0xFF]));
        }
        for i in 0..5 {
            bytes.extend(live([0x14, 60 + i, 0x12, 64, 95, 0xFF, 0xFF]));
        }
        // Finger out (d0 bit 7): nothing, and the stretch ends.
        for _ in 0..5 {
            bytes.extend(live([0x84, 0, 0x12, 0xFF, 0x7F, 0xFF, 0xFF]));
        }
        for i in 0..20 {
            bytes.extend(frame(100 + i, 62, 97));
        }
        let out = decode_all(&[&bytes]);
        let w = waves(&out);
        let search = vec!["pulse-search".to_string()];
        assert_eq!(
            w.iter()
                .map(|(s, st)| (s.len(), st.clone()))
                .collect::<Vec<_>>(),
            vec![
                (20, vec![]),
                (10, search.clone()),
                (5, vec![]),
                (20, vec![])
            ]
        );
        assert_eq!(w[1].0, (50..60).collect::<Vec<i32>>());
        assert_eq!(w[3].0, (100..120).collect::<Vec<i32>>());
        // At the finger-out: the last numerics before it (with their status); at the end: 97/62.
        assert_eq!(values(&out, mdc::SPO2), vec![95.0, 97.0]);
        assert_eq!(values(&out, mdc::PULSE_RATE_OXIM), vec![64.0, 62.0]);
        let statuses: Vec<&Vec<String>> = out
            .iter()
            .filter_map(|d| match d {
                Decoded::Reading(r) => Some(&r.status),
                _ => None,
            })
            .collect();
        let too_long = vec!["search-too-long".to_string()];
        assert_eq!(statuses, vec![&too_long, &too_long, &vec![], &vec![]]);
        // In order: the arrays ended by the status changes, then at the finger-out the
        // numerics and the array it ended, then the second stretch at the flush.
        let codes: Vec<u32> = out
            .iter()
            .map(|d| match d {
                Decoded::Reading(r) => r.code,
                Decoded::Waveform { reading, .. } => reading.code,
                other => panic!("{other:?}"),
            })
            .collect();
        let (n1, n2, w) = (mdc::SPO2, mdc::PULSE_RATE_OXIM, mdc::PLETH);
        assert_eq!(codes, vec![w, w, n1, n2, w, n1, n2, w]);
    }

    #[test]
    fn cms50dplus_handshake_responses_are_skipped_and_live_frames_give_65_bpm_97_percent() {
        let bytes = dplus_device_bytes();
        let mut p = Cms50::new();
        let mut out = Vec::new();
        p.feed(&bytes, &mut out);
        assert!(out.is_empty(), "less than a second: held {out:?}");
        p.flush(&mut out);
        assert_eq!(p.frames_ok(), 5);
        assert_eq!(values(&out, mdc::PULSE_RATE_OXIM), vec![65.0]);
        assert_eq!(values(&out, mdc::SPO2), vec![97.0]);
        assert_eq!(samples(&out), vec![51, 48, 46, 44, 43]);
        let out = decode_with(0, &[&bytes]);
        assert_eq!(values(&out, mdc::PULSE_RATE_OXIM), vec![65.0; 5]);
        assert_eq!(values(&out, mdc::SPO2), vec![97.0; 5]);
    }

    /// Device → host bytes of `cms50dplus_handshake_and_live.csv`, in order.
    fn dplus_device_bytes() -> Vec<u8> {
        let text = String::from_utf8(real("cms50dplus_handshake_and_live.csv")).unwrap();
        let mut bytes = Vec::new();
        for l in text.lines().skip(1) {
            let f: Vec<&str> = l.split(',').collect();
            if f[1] == "dev->host" {
                bytes.extend(hex::decode(f[2]).unwrap());
            }
        }
        bytes
    }

    #[test]
    fn byte_at_a_time_and_random_splits_give_identical_results() {
        let mut bytes = dplus_device_bytes();
        bytes.extend(real("cms50e_live_capture.bin"));
        bytes.extend([0x92, 0x93, 0x01, 0xE0, 0x85]); // garbage and a cut frame, to split too
        bytes.extend(&real("cms50e_live_capture.bin")[..90]);
        let whole = decode_all(&[&bytes]);
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_all(&singles), whole);
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..50 {
            let mut chunks = Vec::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len().min(40));
                chunks.push(&rest[..n]);
                rest = &rest[n..];
            }
            assert_eq!(decode_all(&chunks), whole);
        }
    }

    #[test]
    fn garbage_and_cut_frames_are_reported_once_at_their_absolute_offsets() {
        let bin = real("cms50e_live_capture.bin");
        let run = &bin[..27]; // three frames: enough to lock
        let mut s = Vec::new();
        s.extend(run); // 0..27 ok
        s.extend([0xA0, 0xA1, 0xA2]); // 27..30 stray bytes: one error at 27
        s.extend(run); // 30..57 ok
        s.extend(&run[..5]); // 57..62 cut frame: error at 57
        s.extend(run); // 62..89 ok
        s.extend([0x0C, 0x0D]); // 89: empty package of type 0x0C: error at 89
        s.extend([0x0C, 0x80]); // 91..93 a well-formed response package, no error
        s.extend(run); // 93..120 ok
        let out = decode_all(&[&s]);
        let errors: Vec<(u64, &str)> = out
            .iter()
            .filter_map(|d| match d {
                Decoded::Error { offset, message } => Some((*offset, message.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            errors.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![27, 57, 89],
            "{errors:?}"
        );
        assert!(errors[0].1.contains("0xA0"));
        assert!(errors[1].1.contains("truncated live frame (5 of 9"));
        assert!(errors[2].1.contains("empty package of type 0x0C"));
        // Every error ends the stretch: four arrays of three samples, never joined, each
        // followed by its error; the numerics of each stretch come with it.
        assert_eq!(lengths(&out), vec![3; 4]);
        assert_eq!(values(&out, mdc::SPO2).len(), 4);
        let kinds: Vec<char> = out
            .iter()
            .map(|d| match d {
                Decoded::Reading(_) => 'n',
                Decoded::Waveform { .. } => 'w',
                Decoded::Error { .. } => 'E',
                Decoded::Identity(_) => 'I',
            })
            .collect();
        assert_eq!(kinds.iter().collect::<String>(), "nnwEnnwEnnwEnnw");
    }

    #[test]
    fn nothing_is_emitted_before_three_good_frames_in_a_row_and_an_error_drops_the_lock() {
        let bin = real("cms50e_live_capture.bin");
        let frame = &bin[..9];
        let mut p = Cms50::with_numerics_every(0);
        let mut out = Vec::new();
        // Two good frames, then a cut one: nothing, the two are discarded.
        p.feed(frame, &mut out);
        p.feed(frame, &mut out);
        assert!(out.is_empty() && !p.locked());
        p.feed(&frame[..4], &mut out);
        p.feed(frame, &mut out);
        p.feed(frame, &mut out);
        assert_eq!(values(&out, mdc::SPO2).len(), 0);
        // The third in a row locks and releases the run's readings.
        p.feed(frame, &mut out);
        assert!(p.locked());
        assert_eq!(values(&out, mdc::SPO2), vec![99.0; 3]);
        // Locked: a reply package between live frames keeps the lock; every frame is emitted.
        p.feed(&[0x0C, 0x80], &mut out);
        p.feed(frame, &mut out);
        assert!(p.locked());
        assert_eq!(values(&out, mdc::SPO2).len(), 4);
        // A frame that fails a check drops the lock; the four samples leave as one array.
        let bad_spo2 = [0x01, 0xE0, 0x84, 0x93, 0x92, 0xBC, 0xE5, 0xFF, 0xFF]; // SpO2 101
        p.feed(&bad_spo2, &mut out);
        assert!(!p.locked());
        assert_eq!(lengths(&out), vec![4]);
        p.feed(frame, &mut out);
        assert_eq!(values(&out, mdc::SPO2).len(), 4);
        // While not locked, a reply package breaks the run being counted.
        p.feed(frame, &mut out);
        p.feed(&[0x0C, 0x80], &mut out);
        p.feed(frame, &mut out);
        p.feed(frame, &mut out);
        assert!(!p.locked());
        // A pause (flush) before the lock also drops the run: nothing held is released.
        p.flush(&mut out);
        p.feed(frame, &mut out);
        assert!(!p.locked());
        assert_eq!(values(&out, mdc::SPO2).len(), 4);
        assert_eq!(lengths(&out), vec![4]);
    }

    #[test]
    fn fields_the_device_cannot_send_are_errors_not_readings() {
        let good = [0x01, 0xE0, 0x84, 0x93, 0x92, 0xBC, 0xE3, 0xFF, 0xFF];
        let cases: [(&str, [u8; 9]); 5] = [
            // d2 = 0x32: reserved bit 5 set.
            (
                "reserved bits",
                [0x01, 0xE0, 0x84, 0x93, 0xB2, 0xBC, 0xE3, 0xFF, 0xFF],
            ),
            // SpO2 byte 0xE5 = 101.
            (
                "SpO2",
                [0x01, 0xE0, 0x84, 0x93, 0x92, 0xBC, 0xE5, 0xFF, 0xFF],
            ),
            // SpO2 200: high bit from bit 4 of the high byte.
            (
                "SpO2",
                [0x01, 0xF0, 0x84, 0x93, 0x92, 0xBC, 0xC8, 0xFF, 0xFF],
            ),
            // Pulse 10 bpm: below the device's range.
            (
                "pulse rate",
                [0x01, 0xE0, 0x84, 0x93, 0x92, 0x8A, 0xE3, 0xFF, 0xFF],
            ),
            // Pulse 0xFB = 251 bpm: above it, and not the invalid marker.
            (
                "pulse rate",
                [0x01, 0xE8, 0x84, 0x93, 0x92, 0xFB, 0xE3, 0xFF, 0xFF],
            ),
        ];
        for (field, bad) in cases {
            let out = decode_all(&[&good, &good, &bad, &good, &good]);
            assert!(
                out.iter().all(|d| matches!(d, Decoded::Error { .. })),
                "{field}: {out:?}"
            );
            match &out[..] {
                [Decoded::Error {
                    offset: 18,
                    message,
                }] => {
                    assert!(message.contains(field), "{message}")
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn leading_partial_frame_is_skipped_silently() {
        let bin = real("cms50e_live_capture.bin");
        let out = decode_with(0, &[&bin[4..]]);
        assert!(out.iter().all(|d| !matches!(d, Decoded::Error { .. })));
        assert_eq!(values(&out, mdc::SPO2).len(), 101);
        assert_eq!(lengths(&out), vec![60, 41]);
    }

    #[test]
    fn finger_out_emits_nothing_and_searching_emits_only_pleth() {
        // E1: bit 7 of d0 = finger out; E2: bit 7 of d1 = searching (celiponcio, bedsidemon).
        let finger_out = [0x01, 0xE1, 0x84, 0x93, 0x92, 0xBC, 0xE3, 0xFF, 0xFF];
        let searching = [0x01, 0xE2, 0x84, 0x93, 0x92, 0xFF, 0xFF, 0xFF, 0xFF];
        let out = decode_all(&[&finger_out, &finger_out, &searching]);
        assert_eq!(out.len(), 1);
        assert_eq!(waves(&out), vec![(vec![19], vec!["pulse-search".into()])]);
    }

    #[test]
    fn pulse_above_127_uses_the_high_byte_and_invalid_markers_give_no_value() {
        // Pulse 150 = 0x96: bit 7 travels in bit 3 of the high byte (0xE8), byte 5 = 0x80 | 0x16.
        let fast = [0x01, 0xE8, 0x84, 0x93, 0x92, 0x96, 0xE3, 0xFF, 0xFF];
        let out = decode_with(0, &[&fast, &fast, &fast]);
        assert_eq!(values(&out, mdc::PULSE_RATE_OXIM), vec![150.0; 3]);
        assert_eq!(
            values(&decode_all(&[&fast, &fast, &fast]), mdc::PULSE_RATE_OXIM),
            vec![150.0]
        );
        // Pulse 0xFF (bit 3 of the high byte set, byte 5 = 0xFF) and SpO2 127 (> 100) are invalid.
        let invalid = [0x01, 0xE8, 0x84, 0x93, 0x92, 0xFF, 0xFF, 0xFF, 0xFF];
        for every in [0, 1] {
            let out = decode_with(every, &[&invalid, &invalid, &invalid]);
            assert!(values(&out, mdc::PULSE_RATE_OXIM).is_empty());
            assert!(values(&out, mdc::SPO2).is_empty());
            assert_eq!(samples(&out), vec![19; 3]);
        }
        // A plain 127 bpm (high bit clear) is a real pulse rate.
        let p127 = [0x01, 0xE0, 0x84, 0x93, 0x92, 0xFF, 0xE3, 0xFF, 0xFF];
        assert_eq!(
            values(
                &decode_with(0, &[&p127, &p127, &p127]),
                mdc::PULSE_RATE_OXIM
            ),
            vec![127.0; 3]
        );
    }

    #[test]
    fn commands_are_the_documented_ones() {
        let mut p = Cms50::new();
        assert_eq!(p.on_open(), hex::decode("7d81a1808080808080").unwrap());
        let (period, bytes) = p.keepalive().unwrap();
        assert_eq!(period, Duration::from_secs(5));
        assert_eq!(
            bytes,
            hex::decode("7d81af8080808080807d81a1808080808080").unwrap()
        );
        assert!(!p.reports_identity());
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(0xC5_50);
        for _ in 0..2000 {
            let len = rng.usize(0..200);
            let buf: Vec<u8> = (0..len)
                .map(|_| match rng.u8(0..4) {
                    0 => 0x01,
                    1 => rng.u8(0x80..=0xFF),
                    _ => rng.u8(..),
                })
                .collect();
            let mut p = Cms50::with_numerics_every(rng.u32(0..3));
            let mut out = Vec::new();
            for c in buf.chunks(rng.usize(1..=16)) {
                p.feed(c, &mut out);
                if rng.u8(0..8) == 0 {
                    p.flush(&mut out);
                }
            }
            for d in out {
                match d {
                    Decoded::Error { offset, .. } => assert!(offset < len as u64),
                    Decoded::Waveform { waveform, .. } => assert_eq!(waveform.problem(), None),
                    _ => {}
                }
            }
        }
    }
}
