//! The async SMP client (PROTOCOLS §A.1–A.3, FIRMWARE.md §2 F1–F3, F6, F9, F14): requests and
//! their responses over a [`Transport`], and the upload state machine.
//!
//! - A response is matched to its request by sequence number (and group, command and a response
//!   op); anything else that arrives (a late reply to a request already answered or given up, F2)
//!   is dropped and counted.
//! - A request that gets no answer within its timeout is re-sent with the **same** sequence
//!   number, at most [`ClientSettings::retries`] times, then fails with [`SmpError::Timeout`].
//! - [`SmpClient::upload`] sends only what the device asks for: each request starts at the `off`
//!   of the device's last response (B24, F3), the first carries `len`, `sha` (SHA-256 of the whole
//!   file: the session id that lets an interrupted upload resume, from this gateway or another,
//!   F14), `image` and `upgrade`, and so does every request at offset 0. A request at offset 0
//!   waits [`ClientSettings::first_chunk_timeout`] (≥ 40 s by default: the device erases the slot
//!   before it answers, B25/F1); every other request the short [`ClientSettings::timeout`].
//! - Chunk size: the largest `data` that keeps the whole request within the device's `buf_size`
//!   (MCUmgr parameters; ENOTSUP → [`ClientSettings::default_params`], F6) and the transport's
//!   own limit ([`Transport::frame_limit`]).
//! - Pipelining within the device's buffer count: once the device has answered the request at
//!   offset 0 (erase or resume), up to `buf_count − 1` upload requests are in flight (at least
//!   1, at most [`MAX_IN_FLIGHT`]; 1 when the parameters are ENOTSUP), each at the offset the one
//!   before would leave. An answer whose `off` is that request's end settles it and every
//!   earlier one (the device's offset is cumulative); any other `off` drops the pipeline and the
//!   upload goes on from the device's offset (the answers to requests still in flight are then
//!   dropped by sequence number). When the oldest request times out, the pipeline shrinks to
//!   it and it is re-sent with its sequence number.
//! - The image is read in chunks from an [`ImageSource`] (a verified file held open), never
//!   held whole; its SHA-256 comes with it.
//!
//! Every failure is an [`SmpError`] with a machine-readable [`SmpError::reason`].

use super::error::{device_error, DeviceError};
use super::header::{Frame, FrameError, Header, Op, Version};
use super::image::{self, SlotState, UploadRequest, UploadResponse, UploadStart};
use super::os::{self, Params};
pub use super::source::ImageSource;
use super::source::SourceError;
use ciborium::Value;
use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

/// Why a transport could not send or receive.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The port or link failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The other side went away (EOF, link lost).
    #[error("the device closed the link")]
    Closed,
    /// The adapter that holds the device's connection refused the session or ended it for a
    /// stated reason ([`super::channel::SmpLink::refuse`]).
    #[error("SMP session refused: {0}")]
    Refused(LinkRefusal),
}

/// Why an adapter refused (or ended) an SMP session on a device's connection; the relay
/// reports [`LinkRefusal::as_str`] as the `failed`/`waiting` reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkRefusal {
    /// The device is not connected now (`device_offline`; may pass).
    Offline,
    /// The device is not bonded with this gateway (`not_bonded`): SMP goes to bonded devices
    /// only (an unencrypted link would let anyone in radio range write firmware; Zephyr's
    /// `smp_bt` requires encryption too). Needs `wardgate pair`.
    NotBonded,
    /// The device offers no SMP characteristic (`no_smp_service`): service
    /// `8D53DC1D-1DB7-4CD3-868B-8A527460AA84`, characteristic
    /// `DA2E7828-FBCE-4E01-AE9E-261174997C48` with write-without-response and notify
    /// (PROTOCOLS §A.4).
    NoSmpService,
}

impl LinkRefusal {
    /// The stable reason string: `device_offline`, `not_bonded`, `no_smp_service`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkRefusal::Offline => "device_offline",
            LinkRefusal::NotBonded => "not_bonded",
            LinkRefusal::NoSmpService => "no_smp_service",
        }
    }

    /// Whether waiting may cure it (the device reconnects); the others need a person.
    pub fn is_transient(self) -> bool {
        self == LinkRefusal::Offline
    }
}

impl std::fmt::Display for LinkRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkRefusal::Offline => "the device is not connected",
            LinkRefusal::NotBonded => {
                "the device is not bonded with this gateway; SMP is for bonded devices only: \
                 pair it with `wardgate pair ADDRESS`"
            }
            LinkRefusal::NoSmpService => {
                "the device offers no SMP characteristic (service \
                 8D53DC1D-1DB7-4CD3-868B-8A527460AA84, characteristic \
                 DA2E7828-FBCE-4E01-AE9E-261174997C48)"
            }
        })
    }
}

/// A link that carries whole SMP frames (header + CBOR). The transport adds and removes its
/// medium's framing (console lines on serial, ATT writes and notifications on BLE) and drops
/// what does not decode; the client applies all timeouts.
pub trait Transport: Send {
    /// Sends one frame.
    fn send(&mut self, frame: &[u8]) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// The next frame received. Must be cancel-safe: the client drops it at a timeout, and no
    /// received byte may be lost by that.
    fn recv(&mut self) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;
    /// The largest frame (header + CBOR) to send to a device whose SMP buffer holds `buf_size`
    /// bytes.
    fn frame_limit(&self, buf_size: usize) -> usize;
}

/// Timeouts, retries and fallbacks of a client.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Per-attempt timeout of every request but those at upload offset 0.
    pub timeout: Duration,
    /// Per-attempt timeout of an upload request at offset 0 (the device may erase the slot
    /// first): ≥ 40 s by default (FIRMWARE.md F1).
    pub first_chunk_timeout: Duration,
    /// Re-sends (same sequence number) after a timeout, per request.
    pub retries: u32,
    /// Header version to send.
    pub version: Version,
    /// Buffer sizes when the device does not support MCUmgr parameters (F6).
    pub default_params: Params,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            timeout: Duration::from_millis(2500),
            first_chunk_timeout: Duration::from_secs(40),
            retries: 3,
            version: Version::V2,
            default_params: Params {
                buf_size: 256,
                buf_count: 1,
            },
        }
    }
}

/// Why a request or an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum SmpError {
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// No matching answer after all attempts.
    #[error("the device did not answer SMP (group {group} command {cmd}, {attempts} attempts): check the port, the baud rate, and that its firmware runs MCUmgr on this line")]
    Timeout {
        /// Group of the request.
        group: u16,
        /// Command of the request.
        cmd: u8,
        /// Attempts made (1 + retries).
        attempts: u32,
    },
    /// The device answered with an error.
    #[error("group {group} command {cmd}: {error}")]
    Device {
        /// Group of the request.
        group: u16,
        /// Command of the request.
        cmd: u8,
        /// What the device said.
        error: DeviceError,
    },
    /// The answer does not have the shape the command needs.
    #[error("group {group} command {cmd}: bad response: {source}")]
    BadResponse {
        /// Group of the request.
        group: u16,
        /// Command of the request.
        cmd: u8,
        /// What is wrong.
        source: FrameError,
    },
    /// The request does not fit the device's buffer.
    #[error("a request does not fit the device's {limit}-byte buffer")]
    BufferTooSmall {
        /// The frame limit.
        limit: usize,
    },
    /// The device reported an offset past the image's end.
    #[error("the device reported offset {off} past the image length {len}")]
    OffsetBeyond {
        /// Reported offset.
        off: u64,
        /// Image length.
        len: u64,
    },
    /// The device's offsets stopped moving forward.
    #[error("the upload made no progress at offset {off} ({times} answers in a row)")]
    NoProgress {
        /// The offset it stays at.
        off: u64,
        /// Answers without progress.
        times: u32,
    },
    /// The device reported `match: false` for the complete image.
    #[error("the device says the uploaded data does not match the image's SHA-256")]
    Mismatch,
    /// The image could not be read, or changed since it was verified.
    #[error("{0}")]
    Source(#[from] SourceError),
    /// The image is larger than the device's slot (slot info, checked before anything is
    /// erased or sent).
    #[error(
        "the image is {len} bytes, larger than the device's slot for image {image} ({limit} bytes)"
    )]
    ImageTooLarge {
        /// Image length.
        len: u64,
        /// The largest image the device accepts.
        limit: u64,
        /// Image number.
        image: u32,
    },
    /// After the upload, slot 1's hash is not the image's MCUboot hash (even after a fresh
    /// upload from offset 0).
    #[error("slot 1 holds hash {got} after the upload, not the image's {expected}")]
    HashMismatch {
        /// The image's MCUboot hash, hex.
        expected: String,
        /// What the device lists for slot 1 (hex, `none` when absent).
        got: String,
    },
}

impl SmpError {
    /// A machine-readable reason: `timeout`, `transport`, `bad_state`, `image_too_large` (the
    /// pre-check, or the device's INVALID_IMAGE_TOO_LARGE), `device:<NAME>` (e.g.
    /// `device:ENOMEM`), `bad_response`, `buffer_too_small`, `offset_beyond`, `no_progress`,
    /// `mismatch`, `hash_mismatch`, `image_changed`, `image_unreadable`; a refused session gives
    /// the refusal's ([`LinkRefusal::as_str`]).
    pub fn reason(&self) -> String {
        match self {
            SmpError::Transport(TransportError::Refused(r)) => r.as_str().into(),
            SmpError::Transport(_) => "transport".into(),
            SmpError::Timeout { .. } => "timeout".into(),
            SmpError::Device { error, .. } if error.is_bad_state() => "bad_state".into(),
            SmpError::Device { error, .. } if error.is_too_large() => "image_too_large".into(),
            SmpError::Source(e) => e.reason().into(),
            SmpError::ImageTooLarge { .. } => "image_too_large".into(),
            SmpError::Device { error, .. } => format!("device:{}", error.name()),
            SmpError::BadResponse { .. } => "bad_response".into(),
            SmpError::BufferTooSmall { .. } => "buffer_too_small".into(),
            SmpError::OffsetBeyond { .. } => "offset_beyond".into(),
            SmpError::NoProgress { .. } => "no_progress".into(),
            SmpError::Mismatch => "mismatch".into(),
            SmpError::HashMismatch { .. } => "hash_mismatch".into(),
        }
    }

    /// The device's error, when the device answered with one.
    pub fn device_error(&self) -> Option<&DeviceError> {
        match self {
            SmpError::Device { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Counters of a client's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests sent (first attempts).
    pub requests: u64,
    /// Re-sends after a timeout (same sequence number).
    pub retransmits: u64,
    /// Frames dropped: late, stale or not matching the request waited for.
    pub dropped: u64,
    /// The most upload requests that were in flight at once.
    pub in_flight_max: u64,
    /// Times an upload's pipeline was dropped because the device answered another offset than
    /// the one its requests would leave.
    pub pipeline_drops: u64,
}

/// Upload progress: `off` of `len` bytes acknowledged by the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The device's offset.
    pub off: u64,
    /// Image length.
    pub len: u64,
}

/// What an upload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadReport {
    /// Image length.
    pub len: u64,
    /// The offset the device answered the first request with (> 0: resumed).
    pub resumed_from: u64,
    /// Data bytes sent (chunks, re-sends included).
    pub bytes_sent: u64,
    /// Upload requests sent.
    pub chunks: u64,
    /// Times the device went back to offset 0 mid-upload.
    pub restarts: u32,
    /// The device's `match`, when it sent one.
    pub matched: Option<bool>,
    /// Wall time of the upload.
    pub elapsed: Duration,
}

/// Options of an upload.
#[derive(Clone, Copy, Debug, Default)]
pub struct UploadOptions {
    /// Image number (0 for single-image devices).
    pub image: u32,
    /// Ask the device to refuse an image that is not newer.
    pub upgrade: bool,
    /// Leave out `sha`: the device must start a new session at offset 0 (no resume). Used
    /// once after a resumed upload did not verify (B24: a stale offset after an erase).
    pub fresh: bool,
}

/// Times the device may go back to offset 0 during one upload before it fails.
const MAX_RESTARTS: u32 = 3;
/// Most upload requests in flight at once, whatever buffer count a device reports (each holds
/// one encoded request, at most the device's `buf_size`, for a re-send).
pub const MAX_IN_FLIGHT: usize = 8;

/// An upload request sent and not yet settled.
struct InFlight {
    seq: u8,
    /// Where its data ends: the `off` the device answers when it took it.
    end: u64,
    /// The encoded frame, for a re-send with the same sequence number.
    frame: Vec<u8>,
    timeout: Duration,
    deadline: tokio::time::Instant,
    attempts: u32,
}
/// Answers in a row without a new offset before an upload fails.
const MAX_STALLS: u32 = 5;

/// An SMP client on one transport.
pub struct SmpClient<T: Transport> {
    transport: T,
    settings: ClientSettings,
    seq: u8,
    params: Option<Params>,
    /// Upload requests allowed in flight (from the parameters; 1 until they are read).
    window: usize,
    stats: ClientStats,
}

impl<T: Transport> SmpClient<T> {
    /// A client with a random first sequence number (a reply to a previous client's request is
    /// unlikely to match).
    pub fn new(transport: T, settings: ClientSettings) -> SmpClient<T> {
        SmpClient {
            transport,
            settings,
            seq: fastrand::u8(..),
            params: None,
            window: 1,
            stats: ClientStats::default(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// The transport back (e.g. to close it).
    pub fn into_transport(self) -> T {
        self.transport
    }

    /// Swaps in a fresh transport to the same device (after a reset: the port reopened, a new
    /// link) and returns the old one. The counters and the sequence number carry on; the MCUmgr
    /// parameters are read again (the device may run another image now).
    pub fn replace_transport(&mut self, transport: T) -> T {
        self.params = None;
        std::mem::replace(&mut self.transport, transport)
    }

    fn next_seq(&mut self) -> u8 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        seq
    }

    fn encode(
        &self,
        op: Op,
        group: u16,
        cmd: u8,
        seq: u8,
        body: &Value,
    ) -> Result<Vec<u8>, SmpError> {
        Ok(Frame::new(self.settings.version, op, group, cmd, seq, body)
            .map_err(|source| SmpError::BadResponse { group, cmd, source })?
            .encode())
    }

    /// Sends one request and waits for its response body; the device's error is
    /// [`SmpError::Device`]. `timeout` is per attempt.
    pub async fn request(
        &mut self,
        op: Op,
        group: u16,
        cmd: u8,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, SmpError> {
        let seq = self.next_seq();
        let frame = self.encode(op, group, cmd, seq, body)?;
        let attempts = 1 + self.settings.retries;
        self.stats.requests += 1;
        for attempt in 0..attempts {
            if attempt > 0 {
                self.stats.retransmits += 1;
                log::debug!("smp: no answer to seq {seq} (group {group} cmd {cmd}); re-sending");
            }
            self.transport.send(&frame).await?;
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let got = match tokio::time::timeout_at(deadline, self.transport.recv()).await {
                    Err(_) => break,
                    Ok(r) => r?,
                };
                let Ok(header) = Header::decode(&got) else {
                    self.stats.dropped += 1;
                    continue;
                };
                if !is_answer(&header, op, group, cmd, seq) {
                    self.stats.dropped += 1;
                    log::debug!(
                        "smp: dropped a frame (seq {}, group {}, cmd {}) while waiting for seq {seq}",
                        header.seq,
                        header.group,
                        header.cmd
                    );
                    continue;
                }
                return answer_body(&got, group, cmd);
            }
        }
        Err(SmpError::Timeout {
            group,
            cmd,
            attempts,
        })
    }

    /// Echo: the device answers the text back.
    pub async fn echo(&mut self, text: &str) -> Result<String, SmpError> {
        let t = self.settings.timeout;
        let body = self
            .request(
                Op::Write,
                os::GROUP,
                os::CMD_ECHO,
                &os::echo_request(text),
                t,
            )
            .await?;
        os::echo_response(&body).map_err(|e| bad(os::GROUP, os::CMD_ECHO, e))
    }

    /// The device's SMP buffers (read once and kept); ENOTSUP (or no such command) gives the
    /// configured defaults (F6).
    pub async fn params(&mut self) -> Result<Params, SmpError> {
        if let Some(p) = self.params {
            return Ok(p);
        }
        let t = self.settings.timeout;
        let (p, window) = match self
            .request(Op::Read, os::GROUP, os::CMD_PARAMS, &Value::Map(vec![]), t)
            .await
        {
            Ok(body) => {
                let p = Params::from_body(&body).map_err(|e| bad(os::GROUP, os::CMD_PARAMS, e))?;
                let window = (p.buf_count as usize)
                    .saturating_sub(1)
                    .clamp(1, MAX_IN_FLIGHT);
                (p, window)
            }
            Err(SmpError::Device { error, .. }) if error.is_not_supported() => {
                log::info!(
                    "smp: the device does not report its buffer size ({}); using {} bytes, one request in flight",
                    error.name(),
                    self.settings.default_params.buf_size
                );
                (self.settings.default_params, 1)
            }
            Err(e) => return Err(e),
        };
        self.params = Some(p);
        self.window = window;
        Ok(p)
    }

    /// Upload requests the client keeps in flight for this device: `buf_count − 1` of its
    /// MCUmgr parameters, at least 1, at most [`MAX_IN_FLIGHT`]; 1 when the device does not
    /// report them (read them first with [`Self::params`]).
    pub fn window(&self) -> usize {
        self.window
    }

    /// Slot info (image group command 6): the slots and the largest image per image number;
    /// `None` when the device does not support the command (ENOTSUP).
    pub async fn slot_info(&mut self) -> Result<Option<Vec<image::ImageSlots>>, SmpError> {
        let t = self.settings.timeout;
        match self
            .request(
                Op::Read,
                image::GROUP,
                image::CMD_SLOT_INFO,
                &Value::Map(vec![]),
                t,
            )
            .await
        {
            Ok(body) => image::parse_slot_info(&body)
                .map(Some)
                .map_err(|e| bad(image::GROUP, image::CMD_SLOT_INFO, e)),
            Err(SmpError::Device { error, .. }) if error.is_not_supported() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The slot-size pre-check (FIRMWARE.md F10), before anything is erased or sent: an image of
    /// `len` bytes for image number `image` must fit the largest image the device's slot info
    /// gives ([`image::ImageSlots::upload_limit`]). Returns that limit, or `None` when the
    /// device does not tell (no slot info, or no entry for the image): then only the device's
    /// own refusal (INVALID_IMAGE_TOO_LARGE at the first chunk) stops an image too large.
    /// Errors: [`SmpError::ImageTooLarge`].
    pub async fn check_fits(&mut self, len: u64, image: u32) -> Result<Option<u64>, SmpError> {
        let Some(images) = self.slot_info().await? else {
            log::info!("smp: the device does not report its slot sizes (slot info not supported); no size pre-check");
            return Ok(None);
        };
        let Some(limit) = images
            .iter()
            .find(|i| i.image == image)
            .and_then(|i| i.upload_limit())
        else {
            return Ok(None);
        };
        if len > limit {
            return Err(SmpError::ImageTooLarge { len, limit, image });
        }
        Ok(Some(limit))
    }

    /// The image slots (state read).
    pub async fn image_list(&mut self) -> Result<Vec<SlotState>, SmpError> {
        let t = self.settings.timeout;
        let body = self
            .request(
                Op::Read,
                image::GROUP,
                image::CMD_STATE,
                &Value::Map(vec![]),
                t,
            )
            .await?;
        image::parse_state(&body).map_err(|e| bad(image::GROUP, image::CMD_STATE, e))
    }

    /// Marks the image with `hash` for test (one trial boot, reverted unless confirmed).
    pub async fn test(&mut self, hash: &[u8]) -> Result<Vec<SlotState>, SmpError> {
        self.state_write(Some(hash), false).await
    }

    /// Confirms the image with `hash`, or the running image when `None`.
    pub async fn confirm(&mut self, hash: Option<&[u8]>) -> Result<Vec<SlotState>, SmpError> {
        self.state_write(hash, true).await
    }

    async fn state_write(
        &mut self,
        hash: Option<&[u8]>,
        confirm: bool,
    ) -> Result<Vec<SlotState>, SmpError> {
        let t = self.settings.timeout;
        let body = self
            .request(
                Op::Write,
                image::GROUP,
                image::CMD_STATE,
                &image::state_write(hash, confirm),
                t,
            )
            .await?;
        // Some devices answer a state write with `{}`.
        if cbor_has(&body, "images") {
            image::parse_state(&body).map_err(|e| bad(image::GROUP, image::CMD_STATE, e))
        } else {
            Ok(Vec::new())
        }
    }

    /// Resets the device (it answers before it resets).
    pub async fn reset(&mut self, force: bool) -> Result<(), SmpError> {
        let t = self.settings.timeout;
        self.request(
            Op::Write,
            os::GROUP,
            os::CMD_RESET,
            &os::reset_request(force),
            t,
        )
        .await
        .map(|_| ())
    }

    /// Erases a slot (default slot 1). EBADSTATE: the slot is pending and cannot be erased.
    pub async fn erase(&mut self, slot: Option<u32>) -> Result<(), SmpError> {
        let t = self.settings.first_chunk_timeout;
        self.request(
            Op::Write,
            image::GROUP,
            image::CMD_ERASE,
            &image::erase_request(slot),
            t,
        )
        .await
        .map(|_| ())
    }

    /// Uploads `image` into the secondary slot, following the device's offsets and pipelining
    /// within its buffer count (see the module documentation); `progress` is called after every
    /// answer acted on. Re-running with the same image resumes at the device's offset.
    pub async fn upload<S: ImageSource + ?Sized>(
        &mut self,
        image: &S,
        options: UploadOptions,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<UploadReport, SmpError> {
        let started = Instant::now();
        let len = image.len();
        let params = self.params().await?;
        let window = self.window;
        let limit = self
            .transport
            .frame_limit(params.buf_size as usize)
            .min(params.buf_size as usize);
        let start = UploadStart {
            len,
            sha: (!options.fresh).then(|| image.sha256().to_vec()),
            image: Some(options.image),
            upgrade: Some(options.upgrade),
        };
        let mut report = UploadReport {
            len,
            resumed_from: 0,
            bytes_sent: 0,
            chunks: 0,
            restarts: 0,
            matched: None,
            elapsed: Duration::ZERO,
        };
        let (g, c) = (image::GROUP, image::CMD_UPLOAD);
        // The device's offset: what its last answer acted on said (0 before any answer).
        let mut off: u64 = 0;
        // Where the next new request starts.
        let mut next: u64 = 0;
        let mut answered = false;
        let mut stalls = 0;
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        loop {
            // The request at offset 0 goes alone (the device erases the slot, or answers the
            // offset to resume from); the pipeline fills once it has answered.
            let depth = if answered && off != 0 { window } else { 1 };
            while inflight.len() < depth && next < len {
                let first = next == 0;
                let st = first.then_some(&start);
                let n = image::max_chunk(limit, next, st);
                if n == 0 {
                    return Err(SmpError::BufferTooSmall { limit });
                }
                let end = (next + n as u64).min(len);
                let mut data = vec![0u8; (end - next) as usize];
                image.read_at(next, &mut data)?;
                let req = UploadRequest {
                    off: next,
                    data,
                    start: st.cloned(),
                };
                let seq = self.next_seq();
                let frame = self.encode(Op::Write, g, c, seq, &req.to_body())?;
                let timeout = if first {
                    self.settings.first_chunk_timeout
                } else {
                    self.settings.timeout
                };
                self.stats.requests += 1;
                report.chunks += 1;
                report.bytes_sent += end - next;
                self.transport.send(&frame).await?;
                inflight.push_back(InFlight {
                    seq,
                    end,
                    frame,
                    timeout,
                    deadline: tokio::time::Instant::now() + timeout,
                    attempts: 1,
                });
                self.stats.in_flight_max = self.stats.in_flight_max.max(inflight.len() as u64);
                next = end;
                if first {
                    break;
                }
            }
            let Some(oldest) = inflight.front() else {
                // Nothing left to send and nothing in flight: the device's offset is short of
                // the end although every byte was sent (cannot happen: a mismatch resets
                // `next`); refuse rather than spin.
                return Err(SmpError::NoProgress { off, times: stalls });
            };
            let got = match tokio::time::timeout_at(oldest.deadline, self.transport.recv()).await {
                Ok(r) => r?,
                Err(_) => {
                    // No answer to the oldest in time: the pipeline shrinks to it (answers to
                    // the others are dropped by sequence number) and it is re-sent as it was.
                    let mut f = inflight.pop_front().expect("checked above");
                    if f.attempts > self.settings.retries {
                        return Err(SmpError::Timeout {
                            group: g,
                            cmd: c,
                            attempts: f.attempts,
                        });
                    }
                    log::debug!(
                        "smp: no answer to upload seq {} ({} requests in flight); re-sending it alone",
                        f.seq,
                        inflight.len() + 1
                    );
                    inflight.clear();
                    f.attempts += 1;
                    self.stats.retransmits += 1;
                    self.transport.send(&f.frame).await?;
                    f.deadline = tokio::time::Instant::now() + f.timeout;
                    next = f.end;
                    inflight.push_back(f);
                    continue;
                }
            };
            let Ok(header) = Header::decode(&got) else {
                self.stats.dropped += 1;
                continue;
            };
            let Some(idx) = inflight
                .iter()
                .position(|f| is_answer(&header, Op::Write, g, c, f.seq))
            else {
                self.stats.dropped += 1;
                log::debug!(
                    "smp: dropped a frame (seq {}, group {}, cmd {}) during the upload",
                    header.seq,
                    header.group,
                    header.cmd
                );
                continue;
            };
            let body = answer_body(&got, g, c)?;
            let rsp = UploadResponse::from_body(&body).map_err(|e| bad(g, c, e))?;
            let Some(dev_off) = rsp.off else {
                return Err(SmpError::BadResponse {
                    group: g,
                    cmd: c,
                    source: FrameError::Payload(super::cbor::CborError::Missing("off")),
                });
            };
            if dev_off > len {
                return Err(SmpError::OffsetBeyond { off: dev_off, len });
            }
            // The device's offset is cumulative: this answer settles its request and every
            // earlier one.
            let req_end = inflight[idx].end;
            inflight.drain(..=idx);
            if !answered {
                answered = true;
                // A fresh session answers the end of the first chunk; a resumed one its offset.
                report.resumed_from = if dev_off == req_end { 0 } else { dev_off };
            } else if dev_off == 0 && off != 0 {
                report.restarts += 1;
                log::info!("smp: the device restarted the upload at offset 0 (was at {off})");
                if report.restarts > MAX_RESTARTS {
                    return Err(SmpError::NoProgress {
                        off: 0,
                        times: report.restarts,
                    });
                }
            }
            if dev_off <= off && dev_off != 0 {
                stalls += 1;
                if stalls >= MAX_STALLS {
                    return Err(SmpError::NoProgress { off, times: stalls });
                }
            } else {
                stalls = 0;
            }
            if dev_off != req_end {
                // The device is elsewhere than the pipeline assumed: follow it.
                if !inflight.is_empty() {
                    self.stats.pipeline_drops += 1;
                    log::debug!(
                        "smp: the device is at offset {dev_off}, not {req_end}; dropping {} request(s) in flight",
                        inflight.len()
                    );
                }
                inflight.clear();
            }
            off = dev_off;
            if inflight.is_empty() {
                next = off;
            }
            progress(Progress { off, len });
            if off == len {
                report.matched = rsp.matched;
                if rsp.matched == Some(false) {
                    return Err(SmpError::Mismatch);
                }
                report.elapsed = started.elapsed();
                return Ok(report);
            }
        }
    }

    /// [`Self::upload`], then the image list: slot 1 must hold `mcuboot_hash` (the image's SHA256
    /// TLV). When the device said `match: false` or lists another hash (a resume from a stale
    /// offset, B24), the upload is done once more without `sha`, from offset 0, and checked
    /// again; still wrong → [`SmpError::HashMismatch`]. Returns the report of the last upload
    /// (`restarts` counts the fresh one).
    pub async fn upload_verified<S: ImageSource + ?Sized>(
        &mut self,
        file: &S,
        mcuboot_hash: &[u8],
        options: UploadOptions,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<UploadReport, SmpError> {
        let mut fresh = options.fresh;
        loop {
            let opts = UploadOptions { fresh, ..options };
            let got = match self.upload(file, opts, progress).await {
                Ok(report) => {
                    let slots = self.image_list().await?;
                    let slot1 = slots
                        .iter()
                        .find(|s| s.slot == 1 && s.image.unwrap_or(0) == options.image);
                    match slot1.and_then(|s| s.hash.as_deref()) {
                        Some(h) if h == mcuboot_hash => return Ok(report),
                        Some(h) => hex(h),
                        None => "none".to_string(),
                    }
                }
                Err(SmpError::Mismatch) => "a mismatch reported by the device".to_string(),
                Err(e) => return Err(e),
            };
            if fresh {
                return Err(SmpError::HashMismatch {
                    expected: hex(mcuboot_hash),
                    got,
                });
            }
            log::warn!(
                "smp: the uploaded image does not verify ({got}); uploading again from offset 0"
            );
            fresh = true;
        }
    }
}

/// A response to the request: same sequence number, group and command, and a response op. The
/// op is not required to mirror the request's (a read response to a write is accepted: PyPI smp
/// 4.2.0 answers a state write with READ_RSP, its `ImageStatesWriteResponse` derives from the
/// read response).
fn is_answer(h: &Header, _op: Op, group: u16, cmd: u8, seq: u8) -> bool {
    h.seq == seq && h.group == group && h.cmd == cmd && h.op.is_response()
}

/// The body of an answer already matched to its request, or the device's error in it.
fn answer_body(got: &[u8], group: u16, cmd: u8) -> Result<Value, SmpError> {
    let body = Frame::decode(got)
        .and_then(|f| f.body())
        .map_err(|source| SmpError::BadResponse { group, cmd, source })?;
    match device_error(&body) {
        Ok(None) => Ok(body),
        Ok(Some(error)) => Err(SmpError::Device { group, cmd, error }),
        Err(e) => Err(SmpError::BadResponse {
            group,
            cmd,
            source: e.into(),
        }),
    }
}

fn bad(group: u16, cmd: u8, e: super::cbor::CborError) -> SmpError {
    SmpError::BadResponse {
        group,
        cmd,
        source: e.into(),
    }
}

/// SHA-256 of a whole image file: the upload's `sha`, its session id (PROTOCOLS §A.2).
pub fn file_sha256(file: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, file).as_ref());
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn cbor_has(body: &Value, key: &str) -> bool {
    super::cbor::get(body, key).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smp::cbor;
    use std::collections::VecDeque;
    use tokio::time::Instant as TInstant;

    /// A scripted device: `handle` answers each frame sent with replies and their delays.
    struct Mock<F> {
        handle: F,
        queue: VecDeque<(TInstant, Vec<u8>)>,
        sent: Vec<Frame>,
        limit: usize,
    }

    impl<F: FnMut(&Frame) -> Vec<(u64, Frame)> + Send> Transport for Mock<F> {
        async fn send(&mut self, frame: &[u8]) -> Result<(), TransportError> {
            let f = Frame::decode(frame).unwrap();
            for (delay_ms, r) in (self.handle)(&f) {
                self.queue.push_back((
                    TInstant::now() + Duration::from_millis(delay_ms),
                    r.encode(),
                ));
            }
            self.queue.make_contiguous().sort_by_key(|(t, _)| *t);
            self.sent.push(f);
            Ok(())
        }
        async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
            let Some(&(at, _)) = self.queue.front() else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(at).await;
            Ok(self.queue.pop_front().unwrap().1)
        }
        fn frame_limit(&self, buf_size: usize) -> usize {
            buf_size.min(self.limit)
        }
    }

    fn reply(req: &Frame, body: Value) -> Frame {
        let h = req.header;
        Frame::new(h.version, h.op.response(), h.group, h.cmd, h.seq, &body).unwrap()
    }

    fn mock<F: FnMut(&Frame) -> Vec<(u64, Frame)> + Send>(handle: F) -> SmpClient<Mock<F>> {
        let t = Mock {
            handle,
            queue: VecDeque::new(),
            sent: Vec::new(),
            limit: usize::MAX,
        };
        SmpClient::new(t, ClientSettings::default())
    }

    /// A device model: params (or ENOTSUP), and upload following `off`, with knobs.
    struct Dev {
        off: u64,
        len: u64,
        sha: Option<Vec<u8>>,
        /// What the device holds (checked against the image after an upload).
        data: Vec<u8>,
        buf_count: u32,
        /// The nth upload request never reaches the device (no state change, no answer).
        lose_nth: Option<u32>,
        /// Slot info: the largest image (`None`: ENOTSUP).
        max_image: Option<u64>,
        /// Every answer from the nth upload request on comes after 3 s.
        slow_from: Option<u32>,
        enotsup: bool,
        drop_nth: Option<u32>,
        erase_ms: u64,
        erases: u32,
        reset_nth: Option<u32>,
        late_nth: Option<u32>,
        uploads: u32,
    }

    impl Dev {
        fn new() -> Dev {
            Dev {
                off: 0,
                len: 0,
                sha: None,
                data: Vec::new(),
                buf_count: 2,
                lose_nth: None,
                max_image: None,
                slow_from: None,
                enotsup: false,
                drop_nth: None,
                erase_ms: 0,
                erases: 0,
                reset_nth: None,
                late_nth: None,
                uploads: 0,
            }
        }
        fn handle(&mut self, f: &Frame) -> Vec<(u64, Frame)> {
            let body = f.body().unwrap();
            match (f.header.group, f.header.cmd) {
                (0, 6) if self.enotsup => vec![(1, reply(f, cbor::map([("rc", Value::from(8))])))],
                (0, 0) => vec![(
                    1000,
                    reply(
                        f,
                        cbor::map([("r", cbor::get(&body, "d").unwrap().clone())]),
                    ),
                )],
                (0, 6) => vec![(
                    1,
                    reply(
                        f,
                        Params {
                            buf_size: 256,
                            buf_count: self.buf_count,
                        }
                        .to_body(),
                    ),
                )],
                (1, 6) => match self.max_image {
                    None => vec![(1, reply(f, cbor::map([("rc", Value::from(8))])))],
                    Some(m) => vec![(
                        1,
                        reply(
                            f,
                            image::slot_info_body(&[image::ImageSlots {
                                image: 0,
                                slots: vec![
                                    image::SlotSize {
                                        slot: 0,
                                        size: m + 4096,
                                        upload_image_id: None,
                                    },
                                    image::SlotSize {
                                        slot: 1,
                                        size: m + 4096,
                                        upload_image_id: Some(0),
                                    },
                                ],
                                max_image_size: Some(m),
                            }]),
                        ),
                    )],
                },
                (1, 1) => {
                    let r = UploadRequest::from_body(&body).unwrap();
                    self.uploads += 1;
                    if self.lose_nth == Some(self.uploads) {
                        return vec![];
                    }
                    let mut delay = 1;
                    if let Some(s) = &r.start {
                        if r.off == 0 && (self.sha != s.sha || self.off == 0) {
                            self.sha = s.sha.clone();
                            self.len = s.len;
                            self.off = 0;
                            self.data = vec![0xff; s.len as usize];
                            self.erases += 1;
                            delay = self.erase_ms;
                        }
                        if r.off == 0 && self.off > 0 {
                            return vec![(
                                1,
                                reply(
                                    f,
                                    UploadResponse {
                                        off: Some(self.off),
                                        matched: None,
                                    }
                                    .to_body(),
                                ),
                            )];
                        }
                    }
                    if r.off == self.off {
                        let at = r.off as usize;
                        if let Some(d) = self.data.get_mut(at..at + r.data.len()) {
                            d.copy_from_slice(&r.data);
                        }
                        self.off += r.data.len() as u64;
                    }
                    if self.drop_nth == Some(self.uploads) {
                        return vec![];
                    }
                    if self.reset_nth == Some(self.uploads) {
                        self.off = 0;
                        self.sha = None;
                    }
                    if self.late_nth == Some(self.uploads)
                        || self.slow_from.is_some_and(|n| self.uploads >= n)
                    {
                        delay = 3000;
                    }
                    let done = self.off == self.len;
                    vec![(
                        delay,
                        reply(
                            f,
                            UploadResponse {
                                off: Some(self.off),
                                matched: done.then_some(true),
                            }
                            .to_body(),
                        ),
                    )]
                }
                _ => vec![(1, reply(f, cbor::map([("rc", Value::from(8))])))],
            }
        }
    }

    /// What a mock device does with a request: `(delay ms, reply)` pairs.
    trait Handler: FnMut(&Frame) -> Vec<(u64, Frame)> + Send {}
    impl<F: FnMut(&Frame) -> Vec<(u64, Frame)> + Send> Handler for F {}

    /// A device with a 256-byte buffer that answers every upload request with `off` and
    /// `matched`, whatever it was sent.
    fn answers_uploads(off: u64, matched: Option<bool>) -> SmpClient<Mock<impl Handler>> {
        mock(move |f| {
            let body = match f.header.cmd {
                6 => Params {
                    buf_size: 256,
                    buf_count: 1,
                }
                .to_body(),
                _ => UploadResponse {
                    off: Some(off),
                    matched,
                }
                .to_body(),
            };
            vec![(1, reply(f, body))]
        })
    }

    fn image(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn upload_follows_the_device_and_fills_the_buffer() {
        let mut dev = Dev::new();
        let mut c = mock(move |f| dev.handle(f));
        let img = image(5000);
        let mut seen = Vec::new();
        let r = c
            .upload(&img, UploadOptions::default(), &mut |p| seen.push(p.off))
            .await
            .unwrap();
        assert_eq!(
            (r.len, r.resumed_from, r.bytes_sent, r.matched),
            (5000, 0, 5000, Some(true))
        );
        assert_eq!(*seen.last().unwrap(), 5000);
        let sent = &c.transport.sent;
        // Every upload request within the 256-byte buffer, the later ones filling it.
        for f in &sent[1..] {
            assert!(f.encode().len() <= 256);
        }
        assert!(sent[2].encode().len() >= 250, "{}", sent[2].encode().len());
    }

    #[tokio::test(start_paused = true)]
    async fn f1_b25_first_chunk_gets_the_long_timeout() {
        let mut dev = Dev::new();
        dev.erase_ms = 15_000;
        let mut c = mock(move |f| dev.handle(f));
        let t0 = TInstant::now();
        let r = c
            .upload(&image(1000), UploadOptions::default(), &mut |_| {})
            .await
            .unwrap();
        assert!(t0.elapsed() >= Duration::from_secs(15));
        assert_eq!(c.stats().retransmits, 0);
        assert_eq!(r.chunks, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn f2_dropped_reply_is_resent_with_the_same_seq_and_late_replies_dropped() {
        let mut dev = Dev::new();
        dev.drop_nth = Some(3);
        let mut c = mock(move |f| dev.handle(f));
        c.upload(&image(1000), UploadOptions::default(), &mut |_| {})
            .await
            .unwrap();
        let sent = &c.transport.sent;
        // Requests: params, upload 1, 2, 3 (no answer), 3 again with the same seq and offset.
        let (a, b) = (&sent[3], &sent[4]);
        assert_eq!(a.header.seq, b.header.seq);
        assert_eq!(a.payload, b.payload);
        assert_ne!(sent[2].header.seq, a.header.seq);
        assert_eq!(c.stats().retransmits, 1);

        // F2: the answer to the 3rd chunk comes after 3 s, past the 2.5 s timeout: the chunk is
        // re-sent (same seq) and answered; the late answer arrives while the client waits for
        // its echo (1 s) and is dropped: the echo still reads its own reply.
        let mut dev = Dev::new();
        dev.late_nth = Some(3);
        let mut c = mock(move |f| dev.handle(f));
        let r = c
            .upload(&image(2000), UploadOptions::default(), &mut |_| {})
            .await
            .unwrap();
        assert_eq!(r.matched, Some(true));
        assert_eq!(c.echo("after").await.unwrap(), "after");
        assert_eq!(c.stats().retransmits, 1);
        assert_eq!(c.stats().dropped, 1, "{:?}", c.stats());
        assert_eq!(c.image_list().await.unwrap_err().reason(), "device:ENOTSUP");
    }

    #[tokio::test(start_paused = true)]
    async fn f6_enotsup_params_uses_defaults_and_b24_offset_reset_restarts() {
        let mut dev = Dev::new();
        dev.enotsup = true;
        dev.reset_nth = Some(4);
        let mut c = SmpClient::new(
            Mock {
                handle: move |f: &Frame| dev.handle(f),
                queue: VecDeque::new(),
                sent: Vec::new(),
                limit: usize::MAX,
            },
            ClientSettings {
                default_params: Params {
                    buf_size: 128,
                    buf_count: 1,
                },
                ..ClientSettings::default()
            },
        );
        let r = c
            .upload(&image(1000), UploadOptions::default(), &mut |_| {})
            .await
            .unwrap();
        assert_eq!(r.restarts, 1);
        assert!(c.transport.sent[1..]
            .iter()
            .all(|f| f.encode().len() <= 128));
        // After the reset the first-chunk fields are sent again.
        let zeros = c
            .transport
            .sent
            .iter()
            .filter(|f| {
                f.header.cmd == 1
                    && UploadRequest::from_body(&f.body().unwrap())
                        .unwrap()
                        .start
                        .is_some()
            })
            .count();
        assert_eq!(zeros, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn f14_resume_and_typed_failures() {
        // A device already holding 600 bytes of this image answers its offset: resumed, no erase.
        let img = image(1000);
        let mut dev = Dev::new();
        dev.sha = Some(file_sha256(&img).to_vec());
        dev.len = 1000;
        dev.off = 600;
        let mut c = mock(move |f| dev.handle(f));
        let r = c
            .upload(&img, UploadOptions::default(), &mut |_| {})
            .await
            .unwrap();
        assert_eq!(r.resumed_from, 600);
        assert!(r.bytes_sent < 1000);

        // No answer at all: a timeout after 1 + retries attempts.
        let mut c = mock(|_| vec![]);
        let e = c.echo("hi").await.unwrap_err();
        assert!(matches!(e, SmpError::Timeout { attempts: 4, .. }), "{e}");
        assert_eq!(e.reason(), "timeout");
        // EBADSTATE is its own reason; an offset past the end is refused.
        let mut c = mock(|f| vec![(1, reply(f, cbor::map([("rc", Value::from(6))])))]);
        let e = c.erase(None).await.unwrap_err();
        assert_eq!(e.reason(), "bad_state");
        assert!(e.device_error().unwrap().is_bad_state());
        let mut c = answers_uploads(5000, None);
        assert_eq!(
            c.upload(&image(100), UploadOptions::default(), &mut |_| {})
                .await
                .unwrap_err()
                .reason(),
            "offset_beyond"
        );
        let mut c = answers_uploads(100, Some(false));
        assert_eq!(
            c.upload(&image(100), UploadOptions::default(), &mut |_| {})
                .await
                .unwrap_err()
                .reason(),
            "mismatch"
        );
    }

    /// The most requests in flight at once over the mock's sent frames: a request is in flight
    /// from its send until the device's answer to it (mock answers arrive 1 ms later).
    fn upload_chunks(c: &SmpClient<Mock<impl Handler>>) -> Vec<u64> {
        c.transport
            .sent
            .iter()
            .filter(|f| f.header.cmd == 1 && f.header.group == 1)
            .map(|f| UploadRequest::from_body(&f.body().unwrap()).unwrap().off)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn pipelines_within_the_buffer_count_and_the_data_arrives_whole() {
        let img = image(20_000);
        let mut dev = Dev::new();
        dev.buf_count = 4;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut c = mock(move |f| {
            let r = dev.handle(f);
            if f.header.cmd == 1 && dev.off == dev.len {
                let _ = tx.send(dev.data.clone());
            }
            r
        });
        let r = c
            .upload(&img, UploadOptions::default(), &mut |_| {})
            .await
            .unwrap();
        assert_eq!(r.matched, Some(true));
        assert_eq!(c.window(), 3);
        assert_eq!(c.stats().in_flight_max, 3, "{:?}", c.stats());
        assert_eq!(
            rx.try_iter().last().unwrap(),
            img,
            "the device holds the image"
        );
        // Each new request starts where the one before ends, and no byte is sent twice.
        assert_eq!(r.bytes_sent, 20_000);
        let offs = upload_chunks(&c);
        assert!(offs.windows(2).all(|w| w[0] < w[1]), "{offs:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_request_drops_the_pipeline_and_the_upload_follows_the_device() {
        let img = image(20_000);
        let mut dev = Dev::new();
        dev.buf_count = 4;
        // The 5th request never arrives: the device answers the next ones with its own offset.
        dev.lose_nth = Some(5);
        let (tx, rx) = std::sync::mpsc::channel();
        let mut c = mock(move |f| {
            let r = dev.handle(f);
            if f.header.cmd == 1 && dev.off == dev.len {
                let _ = tx.send(dev.data.clone());
            }
            r
        });
        let t0 = TInstant::now();
        let r = c
            .upload(&img, UploadOptions::default(), &mut |_| {})
            .await
            .unwrap();
        assert_eq!(r.matched, Some(true));
        assert_eq!(rx.try_iter().last().unwrap(), img);
        let st = c.stats();
        assert_eq!(st.pipeline_drops, 1, "{st:?}");
        // No timeout was needed: the device's offset told the story at once.
        assert_eq!(st.retransmits, 0, "{st:?}");
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        // The answers to the requests sent after the lost one (stale offsets) were dropped by
        // sequence number: at most the two still in flight.
        assert!(st.dropped <= 2, "{st:?}");
        // The lost request's offset was sent again.
        let offs = upload_chunks(&c);
        let lost = offs[4];
        assert_eq!(offs.iter().filter(|o| **o == lost).count(), 2, "{offs:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_answer_in_the_pipeline_is_settled_by_the_next_and_enotsup_means_one_in_flight()
    {
        let img = image(20_000);
        let mut dev = Dev::new();
        dev.buf_count = 4;
        dev.drop_nth = Some(5);
        let mut c = mock(move |f| dev.handle(f));
        let r = c
            .upload(&img, UploadOptions::default(), &mut |_| {})
            .await
            .unwrap();
        assert_eq!((r.matched, r.bytes_sent), (Some(true), 20_000));
        assert_eq!(c.stats().retransmits, 0, "{:?}", c.stats());
        assert_eq!(c.stats().pipeline_drops, 0, "{:?}", c.stats());

        let mut dev = Dev::new();
        dev.buf_count = 4;
        dev.enotsup = true;
        let mut c = mock(move |f| dev.handle(f));
        c.upload(&img, UploadOptions::default(), &mut |_| {})
            .await
            .unwrap();
        assert_eq!((c.window(), c.stats().in_flight_max), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_in_the_pipeline_resends_the_oldest_with_its_sequence_number() {
        let img = image(20_000);
        let mut dev = Dev::new();
        dev.buf_count = 4;
        // From the 80th request on every answer comes after 3 s (past the 2.5 s timeout): the
        // device got slow, it did not lose anything.
        dev.slow_from = Some(80);
        let mut c = mock(move |f| dev.handle(f));
        let r = c
            .upload(&img, UploadOptions::default(), &mut |_| {})
            .await
            .unwrap();
        assert_eq!(r.matched, Some(true));
        let st = c.stats();
        assert!(st.retransmits >= 1, "{st:?}");
        let sent: Vec<_> = c
            .transport
            .sent
            .iter()
            .filter(|f| f.header.cmd == 1)
            .collect();
        // The re-sent frame is the same frame (same sequence number and bytes).
        let dup = sent
            .iter()
            .enumerate()
            .find(|(i, f)| sent[..*i].iter().any(|g| g.header.seq == f.header.seq))
            .expect("a re-sent request");
        let orig = sent
            .iter()
            .find(|g| g.header.seq == dup.1.header.seq)
            .unwrap();
        assert_eq!(orig.payload, dup.1.payload);
    }

    #[tokio::test(start_paused = true)]
    async fn an_image_larger_than_the_slot_is_refused_before_anything_is_sent() {
        let mut dev = Dev::new();
        dev.max_image = Some(10_000);
        let mut c = mock(move |f| dev.handle(f));
        assert_eq!(c.check_fits(10_000, 0).await.unwrap(), Some(10_000));
        let e = c.check_fits(10_001, 0).await.unwrap_err();
        assert_eq!(e.reason(), "image_too_large");
        assert!(e.to_string().contains("10001 bytes"), "{e}");
        assert_eq!(upload_chunks(&c).len(), 0);
        // Another image number, or a device without slot info: nothing known, no refusal.
        assert_eq!(c.check_fits(10_001, 1).await.unwrap(), None);
        let mut c = mock(move |f| Dev::new().handle(f));
        assert_eq!(c.check_fits(u64::MAX, 0).await.unwrap(), None);
        // The device's own refusal (INVALID_IMAGE_TOO_LARGE at the first chunk) has the same
        // reason.
        let mut c = mock(|f| {
            let body = match f.header.cmd {
                6 => Params {
                    buf_size: 256,
                    buf_count: 1,
                }
                .to_body(),
                _ => cbor::map([(
                    "err",
                    cbor::map([("group", Value::from(1)), ("rc", Value::from(30))]),
                )]),
            };
            vec![(1, reply(f, body))]
        });
        let e = c
            .upload(&image(100), UploadOptions::default(), &mut |_| {})
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "image_too_large", "{e}");
    }
}
