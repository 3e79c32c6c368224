//! A simulated MCUmgr/SMP device with MCUboot-like two-slot state: the device side of the
//! firmware relay for the demo and the tests, in Rust (no Python), transport-independent.
//!
//! [`SmpDeviceModel::handle`] takes one whole SMP request frame (8-byte header + CBOR,
//! PROTOCOLS §A.1) and gives a [`Reply`]: the response frame (or none), how long the device
//! works before answering (a slot erase), and whether it resets after answering. The transports
//! ([`serial`]: console framing on a pty; `blesim`'s SMP GATT service: writes and notifications)
//! do the waiting and the reset: the device is gone for [`SmpDeviceOptions::swap_time`], then
//! they call [`SmpDeviceModel::boot`]. The model itself never sleeps and never panics on any
//! input.
//!
//! What it answers, after Zephyr's `os_mgmt` / `img_mgmt` (smp_group_0.rst, smp_group_1.rst,
//! `img_mgmt_state.c`, `img_mgmt.c`):
//! - OS echo (cmd 0; READ or WRITE: the response op mirrors the request's, as mcumgr-toolkit
//!   sends echo as a READ), reset (cmd 5: `{}` then the reset), MCUmgr parameters (cmd 6:
//!   `buf_size`, `buf_count`; v1 `rc` ENOTSUP with [`SmpDeviceOptions::params_not_supported`]).
//! - Image state read (group 1 cmd 0 READ): slot 0 (running) and slot 1 when it holds a valid
//!   image, each with `version`, `hash` (the image's SHA256 TLV), `bootable`, `pending`,
//!   `confirmed`, `active`, `permanent`, and `splitStatus: 0`, with Zephyr's flags: the running
//!   image is `confirmed` unless it runs on test (then slot 1, the image it would revert to, is
//!   `confirmed`); slot 1 marked for test is `pending`, marked permanent `pending` + `permanent`.
//! - Image state write (cmd 0 WRITE): `confirm: false` + `hash` of slot 1 marks it for test;
//!   `confirm: true` + that hash makes it permanent; `confirm: true` without a hash (or with
//!   the running image's) confirms the running image. Errors: `INVALID_HASH` (test without a
//!   hash, a hash not 32 bytes), `HASH_NOT_FOUND`, `IMAGE_SETTING_TEST_TO_ACTIVE_DENIED`,
//!   `IMAGE_ALREADY_PENDING` (changing a pending test, or testing while the running image is
//!   unconfirmed). The response is the state list, op WRITE_RSP.
//! - Upload (cmd 1): the first chunk (`off` 0) must carry `len` (else `INVALID_LENGTH`), at most
//!   the slot size (else `INVALID_IMAGE_TOO_LARGE`), and start with the MCUboot magic (else
//!   `INVALID_IMAGE_HEADER_MAGIC`); with the `sha` of the upload in progress (same `len`) it is a
//!   resume: the answer is the device's offset, no erase; otherwise a new session erases slot 1
//!   ([`SmpDeviceOptions::erase_delay`]) — refused with `NO_FREE_SLOT` while slot 1 is pending or
//!   is the image a test boot would revert to. A chunk at another offset than the device's is
//!   not written: the answer is the device's `off`. When `off == len` the image is checked
//!   against `sha` (`match`, [`SmpDeviceOptions::image_check`]) and read as MCUboot (version,
//!   SHA256 TLV): slot 1 then lists it.
//! - Erase (cmd 5, `{slot?}`, slot 1 by default): `NO_FREE_SLOT` while the slot is pending or
//!   running (with [`SmpDeviceOptions::pending_not_erasable`], Zephyr's default); takes the
//!   erase delay; ends the upload session (unless [`SmpDeviceOptions::stale_offset_after_erase`]).
//! - Anything else: v1 `rc` ENOTSUP. A frame that is not SMP, or longer than `buf_size`, gets no
//!   answer (Zephyr drops it).
//! - Errors: under v2 a group error is `{"err": {"group", "rc"}}`; under v1 (a v1 request, or
//!   [`SmpDeviceOptions::v1_errors`]) it is `{"rc"}` translated as Zephyr's
//!   `img_mgmt_translate_error_code` does (`NO_FREE_SLOT`/`IMAGE_ALREADY_PENDING` → EBADSTATE,
//!   invalid arguments → EINVAL, the rest → EUNKNOWN). Note: a v2 device refuses an upload into
//!   a pending slot with `NO_FREE_SLOT` (group 1 rc 9), not with `IMAGE_ALREADY_PENDING`.
//!
//! At boot ([`SmpDeviceModel::boot`], MCUboot swap mode): a running image that was never
//! confirmed is reverted ([`SmpDeviceOptions::revert_unconfirmed`]); else a pending slot 1 is
//! swapped in (on test: unconfirmed; permanent: confirmed) when its SHA256 TLV matches its
//! content (a tampered image is refused and slot 1 erased); the upload session (RAM) is lost.
//!
//! Every state change is an [`SmpEvent`] (bounded log) and counted in [`SmpCounters`]; the slots
//! and the session can be read at any time ([`SmpDeviceModel::slots`],
//! [`SmpDeviceModel::session_offset`]).

pub mod mcuboot;
pub mod serial;

use ciborium::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use wardgate_adapters::smp::cbor;
use wardgate_adapters::smp::header::{Frame, Op, Version};
use wardgate_adapters::smp::image::{self, SlotState, UploadRequest, UploadResponse};
use wardgate_adapters::smp::os::{self, Params};

/// The most events [`SmpDeviceModel::events`] keeps (the oldest are dropped; counters are not).
pub const MAX_EVENTS: usize = 4096;

/// `MGMT_ERR` values (PROTOCOLS §A.1).
const EUNKNOWN: i64 = 1;
const EINVAL: i64 = 3;
const EBADSTATE: i64 = 6;
const ENOTSUP: i64 = 8;

/// `IMG_MGMT_ERR` values used by the model (PROTOCOLS §A.1).
mod img_err {
    pub const HASH_NOT_FOUND: u64 = 8;
    pub const NO_FREE_SLOT: u64 = 9;
    pub const INVALID_SLOT: u64 = 14;
    pub const INVALID_LENGTH: u64 = 21;
    pub const INVALID_IMAGE_HEADER: u64 = 22;
    pub const INVALID_IMAGE_HEADER_MAGIC: u64 = 23;
    pub const INVALID_HASH: u64 = 24;
    pub const IMAGE_ALREADY_PENDING: u64 = 28;
    pub const INVALID_IMAGE_TOO_LARGE: u64 = 30;
    pub const INVALID_IMAGE_DATA_OVERRUN: u64 = 31;
    pub const IMAGE_SETTING_TEST_TO_ACTIVE_DENIED: u64 = 33;
}

/// Zephyr's `img_mgmt_translate_error_code`: the v1 `rc` of an image-group error.
fn v1_of_image_error(rc: u64) -> i64 {
    match rc {
        3 | 4 => 5, // NO_IMAGE, NO_TLVS → ENOENT
        img_err::NO_FREE_SLOT | 27 | img_err::IMAGE_ALREADY_PENDING => EBADSTATE,
        15 => 2, // NO_FREE_MEMORY → ENOMEM
        img_err::INVALID_SLOT
        | 19
        | 20
        | img_err::INVALID_LENGTH
        | img_err::INVALID_IMAGE_HEADER
        | img_err::INVALID_HASH
        | 25 => EINVAL,
        _ => EUNKNOWN,
    }
}

/// The device's configuration and its fault switches (FIRMWARE.md §2, FAILURES.md B23–B25).
/// `Default` is a well-behaved Zephyr + MCUboot device running `1.0.0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmpDeviceOptions {
    /// Version the device runs at start (slot 0, confirmed); its hash is SHA-256 of
    /// `"factory " + version` (no image bytes behind it).
    pub running_version: String,
    /// MCUmgr parameters `buf_size`: the longest request frame (header + CBOR) the device
    /// takes; a longer one gets no answer. Default 512.
    pub buf_size: u32,
    /// MCUmgr parameters `buf_count`. Default 4.
    pub buf_count: u32,
    /// Bytes slot 1 holds (default 1 MiB); a longer upload is refused with
    /// `INVALID_IMAGE_TOO_LARGE` and nothing beyond it is ever allocated.
    pub slot_size: usize,
    /// Time the first chunk of a new upload (and the erase command) takes: the slot erase
    /// (B25). Default 0.
    pub erase_delay: Duration,
    /// Time the device is gone at a reset before it boots (MCUboot's swap). Default 500 ms.
    pub swap_time: Duration,
    /// No reply to the first upload request at or past this offset, once: the chunk is written,
    /// its answer lost (F2: the client's retry then gets the device's new offset).
    pub drop_reply_at: Option<u64>,
    /// zephyr#51798 (B24): the erase command erases the slot but keeps the upload session, so a
    /// resume with the same `sha` continues at the old offset over erased flash.
    pub stale_offset_after_erase: bool,
    /// Once, at the first upload request at or past this offset: the device forgets the session
    /// and answers `off: 0` (a server "may answer off 0 at any time", smp_group_1.rst).
    pub reset_offset_at: Option<u64>,
    /// MCUmgr parameters not built in: v1 `rc` ENOTSUP (F6).
    pub params_not_supported: bool,
    /// Group errors as v1 `{"rc"}` also to v2 requests (`CONFIG_MCUMGR_SMP_LEGACY_RC_BEHAVIOUR`).
    pub v1_errors: bool,
    /// MCUboot reverts a test image that was not confirmed before the next reset (default
    /// true; false: the test image stays, as with a bootloader without revert).
    pub revert_unconfirmed: bool,
    /// A pending or revert slot cannot be erased or uploaded into: `NO_FREE_SLOT` / EBADSTATE
    /// (default true, Zephyr without `CONFIG_MCUMGR_GRP_IMG_ALLOW_ERASE_PENDING`).
    pub pending_not_erasable: bool,
    /// The device starts with a pending test image (9.9.9) in slot 1 that its bootloader never
    /// swaps ("not enough free space to swap", zephyr#58103, F10).
    pub stuck_pending: bool,
    /// A test image never boots: MCUboot falls back to the old image at once (its watchdog).
    pub test_boot_fails: bool,
    /// The last upload response carries `match` (`CONFIG_IMG_ENABLE_IMAGE_CHECK`; default true).
    pub image_check: bool,
}

impl Default for SmpDeviceOptions {
    fn default() -> Self {
        SmpDeviceOptions {
            running_version: "1.0.0".into(),
            buf_size: 512,
            buf_count: 4,
            slot_size: 1 << 20,
            erase_delay: Duration::ZERO,
            swap_time: Duration::from_millis(500),
            drop_reply_at: None,
            stale_offset_after_erase: false,
            reset_offset_at: None,
            params_not_supported: false,
            v1_errors: false,
            revert_unconfirmed: true,
            pending_not_erasable: true,
            stuck_pending: false,
            test_boot_fails: false,
            image_check: true,
        }
    }
}

/// What the device does with one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// The response frame (header + CBOR); `None`: no answer (a dropped reply, a frame that is
    /// not SMP, a request longer than `buf_size`).
    pub response: Option<Vec<u8>>,
    /// How long the device works before the answer (the slot erase).
    pub delay: Duration,
    /// After answering, the device resets: gone for `swap_time`, then [`SmpDeviceModel::boot`].
    pub reset: bool,
}

/// How a boot ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootOutcome {
    /// Nothing to swap: the same image runs.
    Same,
    /// Slot 1 was swapped in (`confirmed`: permanent, else on test).
    Swapped {
        /// Whether the new image is confirmed (a permanent swap).
        confirmed: bool,
    },
    /// An unconfirmed test image was reverted to the previous one.
    Reverted,
    /// The pending image failed MCUboot's hash check: not swapped, slot 1 erased.
    Rejected,
}

/// One state change of the device (the log tests read; `Display` is a short line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmpEvent {
    /// A new upload session: slot 1 erased.
    SessionNew {
        /// Image length announced.
        len: u64,
        /// Whether the client sent `sha` (resume needs it).
        sha: bool,
    },
    /// A first chunk with the session's `sha`: answered with the device's offset.
    SessionResumed {
        /// The offset answered.
        off: u64,
    },
    /// Slot 1 erased (by a new session or the erase command).
    Erased {
        /// `true` for the erase command.
        command: bool,
    },
    /// A chunk at an offset other than the device's: not written, the device's offset answered.
    OffsetMismatch {
        /// The request's offset.
        got: u64,
        /// The device's offset.
        expected: u64,
    },
    /// The reply to the chunk at this offset was dropped (fault switch).
    ReplyDropped {
        /// The request's offset.
        off: u64,
    },
    /// The device forgot the session and answered `off: 0` (fault switch).
    OffsetReset {
        /// The request's offset.
        off: u64,
    },
    /// The whole image arrived.
    UploadComplete {
        /// Data SHA-256 equals the session's `sha` (true when no `sha` was sent).
        matched: bool,
        /// The MCUboot version read from it (`None`: not an MCUboot image).
        version: Option<String>,
    },
    /// Slot 1 marked for test.
    Test {
        /// Its version.
        version: String,
    },
    /// Slot 1 marked permanent.
    Permanent {
        /// Its version.
        version: String,
    },
    /// The running image confirmed.
    Confirmed {
        /// Its version.
        version: String,
    },
    /// A request refused with an error.
    Refused {
        /// `group/cmd`.
        command: (u16, u8),
        /// The error's name (`NO_FREE_SLOT`, `EBADSTATE`, `ENOTSUP`, …).
        error: String,
    },
    /// A frame dropped without an answer (not SMP, or longer than `buf_size`).
    Dropped {
        /// Its length in bytes.
        len: usize,
        /// Why.
        reason: &'static str,
    },
    /// A reset was requested (answered, then the device goes away).
    Reset,
    /// The device booted.
    Boot {
        /// The version it runs.
        version: String,
        /// What MCUboot did.
        outcome: BootOutcome,
    },
}

impl std::fmt::Display for SmpEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SmpEvent::SessionNew { len, sha } => write!(f, "session new len={len} sha={sha}"),
            SmpEvent::SessionResumed { off } => write!(f, "session resume off={off}"),
            SmpEvent::Erased { command } => {
                write!(f, "erase ({})", if *command { "command" } else { "upload" })
            }
            SmpEvent::OffsetMismatch { got, expected } => {
                write!(f, "offset mismatch got={got} expected={expected}")
            }
            SmpEvent::ReplyDropped { off } => write!(f, "reply dropped off={off}"),
            SmpEvent::OffsetReset { off } => write!(f, "offset reset to 0 at off={off}"),
            SmpEvent::UploadComplete { matched, version } => write!(
                f,
                "upload complete match={matched} version={}",
                version.as_deref().unwrap_or("-")
            ),
            SmpEvent::Test { version } => write!(f, "test {version}"),
            SmpEvent::Permanent { version } => write!(f, "permanent {version}"),
            SmpEvent::Confirmed { version } => write!(f, "confirm {version}"),
            SmpEvent::Refused { command, error } => {
                write!(f, "refused {}/{} {error}", command.0, command.1)
            }
            SmpEvent::Dropped { len, reason } => write!(f, "dropped {len} bytes: {reason}"),
            SmpEvent::Reset => write!(f, "reset"),
            SmpEvent::Boot { version, outcome } => write!(f, "boot {version} {outcome:?}"),
        }
    }
}

/// Running totals (never dropped, unlike the event log).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmpCounters {
    /// Request frames handled (answered or not).
    pub requests: u64,
    /// Upload requests (chunks) received.
    pub upload_requests: u64,
    /// Image bytes written to slot 1.
    pub bytes_written: u64,
    /// Slot erases (new sessions and erase commands).
    pub erases: u64,
    /// New upload sessions.
    pub sessions_new: u64,
    /// First chunks answered with a resume offset.
    pub sessions_resumed: u64,
    /// Chunks at another offset than the device's.
    pub offset_mismatches: u64,
    /// Replies dropped by the fault switch.
    pub replies_dropped: u64,
    /// Completed uploads.
    pub uploads_complete: u64,
    /// Resets requested over SMP.
    pub resets: u64,
    /// Boots (after a reset or a power cycle).
    pub boots: u64,
    /// Boots that swapped slot 1 in.
    pub swaps: u64,
    /// Boots that reverted a test image.
    pub reverts: u64,
    /// Requests refused with an error.
    pub errors: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Img {
    version: String,
    hash: Vec<u8>,
    valid: bool,
}

#[derive(Clone, Debug)]
struct Secondary {
    img: Img,
    pending: bool,
    permanent: bool,
}

#[derive(Debug)]
struct Session {
    sha: Option<Vec<u8>>,
    len: u64,
    off: u64,
    data: Vec<u8>,
}

/// The simulated device. See the module docs for what it answers; share it between a transport
/// and a test with [`SmpDeviceModel::shared`].
#[derive(Debug)]
pub struct SmpDeviceModel {
    opts: SmpDeviceOptions,
    primary: Img,
    primary_confirmed: bool,
    secondary: Option<Secondary>,
    session: Option<Session>,
    drop_done: bool,
    reset_offset_done: bool,
    events: VecDeque<SmpEvent>,
    counters: SmpCounters,
}

/// A model shared between its transport and the test or demo that reads it.
pub type SharedModel = Arc<Mutex<SmpDeviceModel>>;

/// Locks a shared model (a poisoned lock is taken as is: the model has no invariant a panic in
/// another thread could break half-way that matters to a simulation).
pub fn lock(model: &SharedModel) -> MutexGuard<'_, SmpDeviceModel> {
    model.lock().unwrap_or_else(|p| p.into_inner())
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// A request the model refuses: v2 group error (or v1 translation), or a plain v1 `rc`.
enum Refusal {
    Image(u64),
    Mgmt(i64),
}

impl SmpDeviceModel {
    /// A device running `opts.running_version` (confirmed), slot 1 empty (or holding the stuck
    /// pending image with [`SmpDeviceOptions::stuck_pending`]).
    pub fn new(opts: SmpDeviceOptions) -> SmpDeviceModel {
        let primary = Img {
            version: opts.running_version.clone(),
            hash: sha256(format!("factory {}", opts.running_version).as_bytes()),
            valid: true,
        };
        let secondary = opts.stuck_pending.then(|| Secondary {
            img: Img {
                version: "9.9.9".into(),
                hash: vec![0x99; 32],
                valid: true,
            },
            pending: true,
            permanent: false,
        });
        SmpDeviceModel {
            opts,
            primary,
            primary_confirmed: true,
            secondary,
            session: None,
            drop_done: false,
            reset_offset_done: false,
            events: VecDeque::new(),
            counters: SmpCounters::default(),
        }
    }

    /// The model behind a mutex, for a transport thread and a test to share.
    pub fn shared(self) -> SharedModel {
        Arc::new(Mutex::new(self))
    }

    /// The options it was made with.
    pub fn options(&self) -> &SmpDeviceOptions {
        &self.opts
    }

    /// The image state list as the device would answer it (slot 0, then slot 1 if valid).
    pub fn slots(&self) -> Vec<SlotState> {
        let reverting = !self.primary_confirmed;
        let mut out = vec![SlotState {
            image: None,
            slot: 0,
            version: self.primary.version.clone(),
            hash: Some(self.primary.hash.clone()),
            bootable: true,
            pending: false,
            confirmed: self.primary_confirmed,
            active: true,
            permanent: false,
        }];
        if let Some(s) = &self.secondary {
            out.push(SlotState {
                image: None,
                slot: 1,
                version: s.img.version.clone(),
                hash: Some(s.img.hash.clone()),
                bootable: true,
                pending: s.pending,
                confirmed: reverting,
                active: false,
                permanent: s.pending && s.permanent,
            });
        }
        out
    }

    /// The version running now.
    pub fn running_version(&self) -> &str {
        &self.primary.version
    }

    /// Whether the running image is confirmed.
    pub fn running_confirmed(&self) -> bool {
        self.primary_confirmed
    }

    /// The offset of the upload in progress (`None`: no session).
    pub fn session_offset(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.off)
    }

    /// The event log, oldest first (at most [`MAX_EVENTS`]).
    pub fn events(&self) -> Vec<SmpEvent> {
        self.events.iter().cloned().collect()
    }

    /// The running totals.
    pub fn counters(&self) -> SmpCounters {
        self.counters
    }

    fn log(&mut self, e: SmpEvent) {
        log::debug!("smp device: {e}");
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Handles one whole request frame. Never panics; see the module docs for the answers.
    pub fn handle(&mut self, frame: &[u8]) -> Reply {
        self.counters.requests += 1;
        if frame.len() > self.opts.buf_size as usize {
            self.log(SmpEvent::Dropped {
                len: frame.len(),
                reason: "longer than buf_size",
            });
            return Reply::default();
        }
        let req = match Frame::decode(frame) {
            Ok(f) if !f.header.op.is_response() => f,
            _ => {
                self.log(SmpEvent::Dropped {
                    len: frame.len(),
                    reason: "not an SMP request",
                });
                return Reply::default();
            }
        };
        let h = req.header;
        let mut reply = Reply::default();
        let body = match req.body() {
            Ok(b) => Ok(b),
            Err(_) => Err(Refusal::Mgmt(EINVAL)),
        };
        let result: Result<Option<Value>, Refusal> =
            body.and_then(|body| match (h.group, h.cmd, h.op) {
                (os::GROUP, os::CMD_ECHO, _) => self.echo(&body).map(Some),
                (os::GROUP, os::CMD_RESET, Op::Write) => {
                    self.counters.resets += 1;
                    self.log(SmpEvent::Reset);
                    reply.reset = true;
                    Ok(Some(cbor::map([])))
                }
                (os::GROUP, os::CMD_PARAMS, Op::Read) if !self.opts.params_not_supported => {
                    Ok(Some(
                        Params {
                            buf_size: self.opts.buf_size,
                            buf_count: self.opts.buf_count,
                        }
                        .to_body(),
                    ))
                }
                (image::GROUP, image::CMD_STATE, Op::Read) => Ok(Some(self.state_body())),
                (image::GROUP, image::CMD_STATE, Op::Write) => self.state_write(&body).map(Some),
                (image::GROUP, image::CMD_UPLOAD, Op::Write) => {
                    self.upload(&body, &mut reply.delay)
                }
                (image::GROUP, image::CMD_ERASE, Op::Write) => {
                    self.erase(&body, &mut reply.delay).map(Some)
                }
                _ => Err(Refusal::Mgmt(ENOTSUP)),
            });
        let body = match result {
            Ok(Some(b)) => b,
            Ok(None) => return reply, // the reply is dropped (fault switch)
            Err(r) => self.error_body(h.version, (h.group, h.cmd), r),
        };
        reply.response = Frame::new(h.version, h.op.response(), h.group, h.cmd, h.seq, &body)
            .ok()
            .map(|f| f.encode());
        reply
    }

    fn error_body(&mut self, version: Version, command: (u16, u8), r: Refusal) -> Value {
        self.counters.errors += 1;
        let v1 = version == Version::V1 || self.opts.v1_errors;
        let (body, name) = match r {
            Refusal::Mgmt(rc) => (
                cbor::map([("rc", Value::from(rc))]),
                wardgate_adapters::smp::error::mgmt_name(rc),
            ),
            Refusal::Image(rc) if v1 => {
                let v1rc = v1_of_image_error(rc);
                (
                    cbor::map([("rc", Value::from(v1rc))]),
                    wardgate_adapters::smp::error::mgmt_name(v1rc),
                )
            }
            Refusal::Image(rc) => (
                cbor::map([(
                    "err",
                    cbor::map([
                        ("group", Value::from(image::GROUP)),
                        ("rc", Value::from(rc)),
                    ]),
                )]),
                wardgate_adapters::smp::error::group_name(u64::from(image::GROUP), rc),
            ),
        };
        self.log(SmpEvent::Refused {
            command,
            error: name,
        });
        body
    }

    fn echo(&mut self, body: &Value) -> Result<Value, Refusal> {
        match cbor::text(body, "d") {
            Ok(Some(d)) => Ok(cbor::map([("r", Value::Text(d))])),
            _ => Err(Refusal::Mgmt(EINVAL)),
        }
    }

    fn state_body(&self) -> Value {
        let mut body = image::state_body(&self.slots());
        if let Value::Map(m) = &mut body {
            m.push((Value::Text("splitStatus".into()), Value::from(0)));
        }
        body
    }

    fn state_write(&mut self, body: &Value) -> Result<Value, Refusal> {
        let hash = cbor::bytes(body, "hash").map_err(|_| Refusal::Mgmt(EINVAL))?;
        let confirm = cbor::flag(body, "confirm").map_err(|_| Refusal::Mgmt(EINVAL))?;
        enum Target {
            Running,
            Secondary,
        }
        let target = match &hash {
            None if confirm => Target::Running,
            None => return Err(Refusal::Image(img_err::INVALID_HASH)),
            Some(h) if h.len() != 32 => return Err(Refusal::Image(img_err::INVALID_HASH)),
            Some(h) if *h == self.primary.hash => Target::Running,
            Some(h) if self.secondary.as_ref().is_some_and(|s| s.img.hash == *h) => {
                Target::Secondary
            }
            Some(_) => return Err(Refusal::Image(img_err::HASH_NOT_FOUND)),
        };
        let test_pending = self
            .secondary
            .as_ref()
            .is_some_and(|s| s.pending && !s.permanent);
        match target {
            Target::Running if !confirm => {
                return Err(Refusal::Image(img_err::IMAGE_SETTING_TEST_TO_ACTIVE_DENIED))
            }
            Target::Running => {
                if test_pending {
                    return Err(Refusal::Image(img_err::IMAGE_ALREADY_PENDING));
                }
                if !self.primary_confirmed {
                    self.primary_confirmed = true;
                    let version = self.primary.version.clone();
                    self.log(SmpEvent::Confirmed { version });
                }
            }
            Target::Secondary => {
                let reverting = !self.primary_confirmed;
                let Some(s) = self.secondary.as_mut() else {
                    return Err(Refusal::Image(img_err::HASH_NOT_FOUND));
                };
                if reverting && !confirm {
                    // Zephyr: NEXT_BOOT_TYPE_REVERT, a test of any slot is refused.
                    return Err(Refusal::Image(img_err::IMAGE_ALREADY_PENDING));
                }
                if s.pending && !s.permanent && !confirm {
                    // Already set for test: nothing to do.
                } else if s.pending && s.permanent && !confirm {
                    return Err(Refusal::Image(img_err::IMAGE_ALREADY_PENDING));
                } else {
                    s.pending = true;
                    s.permanent = confirm;
                    let version = s.img.version.clone();
                    self.log(if confirm {
                        SmpEvent::Permanent { version }
                    } else {
                        SmpEvent::Test { version }
                    });
                }
            }
        }
        Ok(self.state_body())
    }

    /// Slot 1 is "in use" (Zephyr `img_mgmt_slot_in_use`): pending, or the image a test boot
    /// reverts to.
    fn secondary_in_use(&self) -> bool {
        let pending = self.secondary.as_ref().is_some_and(|s| s.pending);
        let revert_target = self.secondary.is_some() && !self.primary_confirmed;
        (self.opts.pending_not_erasable && pending) || revert_target
    }

    fn erase_secondary(&mut self, command: bool, delay: &mut Duration) {
        self.secondary = None;
        self.counters.erases += 1;
        *delay += self.opts.erase_delay;
        self.log(SmpEvent::Erased { command });
    }

    fn erase(&mut self, body: &Value, delay: &mut Duration) -> Result<Value, Refusal> {
        let slot = cbor::uint(body, "slot")
            .map_err(|_| Refusal::Mgmt(EINVAL))?
            .unwrap_or(1);
        if slot == 0 {
            return Err(Refusal::Image(img_err::NO_FREE_SLOT));
        }
        if slot != 1 {
            return Err(Refusal::Image(img_err::INVALID_SLOT));
        }
        if self.secondary_in_use() {
            return Err(Refusal::Image(img_err::NO_FREE_SLOT));
        }
        self.erase_secondary(true, delay);
        match self.session.as_mut() {
            Some(s) if self.opts.stale_offset_after_erase => s.data.fill(0xff),
            _ => self.session = None,
        }
        Ok(cbor::map([]))
    }

    fn upload(&mut self, body: &Value, delay: &mut Duration) -> Result<Option<Value>, Refusal> {
        self.counters.upload_requests += 1;
        let req = UploadRequest::from_body(body).map_err(|_| Refusal::Mgmt(EINVAL))?;
        if req.start.as_ref().and_then(|s| s.image).unwrap_or(0) != 0 {
            return Err(Refusal::Image(img_err::INVALID_SLOT));
        }
        if req.off == 0 {
            let Some(start) = &req.start else {
                return Err(Refusal::Image(img_err::INVALID_LENGTH));
            };
            if start.len > self.opts.slot_size as u64 {
                return Err(Refusal::Image(img_err::INVALID_IMAGE_TOO_LARGE));
            }
            if let Some(s) = &self.session {
                if start.sha.is_some() && s.sha == start.sha && s.len == start.len && s.off > 0 {
                    let off = s.off;
                    self.counters.sessions_resumed += 1;
                    self.log(SmpEvent::SessionResumed { off });
                    return Ok(Some(self.off_body(off, None)));
                }
            }
            if req.data.len() < mcuboot::HEADER_SIZE && start.len >= mcuboot::HEADER_SIZE as u64 {
                return Err(Refusal::Image(img_err::INVALID_IMAGE_HEADER));
            }
            if !mcuboot::has_magic(&req.data) {
                return Err(Refusal::Image(img_err::INVALID_IMAGE_HEADER_MAGIC));
            }
            if self.secondary_in_use() {
                return Err(Refusal::Image(img_err::NO_FREE_SLOT));
            }
            self.erase_secondary(false, delay);
            self.counters.sessions_new += 1;
            self.log(SmpEvent::SessionNew {
                len: start.len,
                sha: start.sha.is_some(),
            });
            let len = start.len;
            self.session = Some(Session {
                sha: start.sha.clone(),
                len,
                off: 0,
                // Bounded: len ≤ slot_size was checked above.
                data: vec![0xff; usize::try_from(len).unwrap_or(0)],
            });
        }
        let Some(s) = self.session.as_mut() else {
            // No upload in progress: ask the client to start over.
            return Ok(Some(self.off_body(0, None)));
        };
        if req.off != s.off {
            let (got, expected) = (req.off, s.off);
            self.counters.offset_mismatches += 1;
            self.log(SmpEvent::OffsetMismatch { got, expected });
            return Ok(Some(self.off_body(expected, None)));
        }
        let end = s.off + req.data.len() as u64;
        if end > s.len {
            return Err(Refusal::Image(img_err::INVALID_IMAGE_DATA_OVERRUN));
        }
        let (from, to) = (s.off as usize, end as usize);
        s.data[from..to].copy_from_slice(&req.data);
        s.off = end;
        self.counters.bytes_written += req.data.len() as u64;
        if let Some(at) = self.opts.reset_offset_at {
            if !self.reset_offset_done && req.off >= at {
                self.reset_offset_done = true;
                self.session = None;
                self.log(SmpEvent::OffsetReset { off: req.off });
                return Ok(Some(self.off_body(0, None)));
            }
        }
        let mut matched = None;
        if end == s.len {
            let s = self.session.take().unwrap_or_else(|| Session {
                sha: None,
                len: 0,
                off: 0,
                data: Vec::new(),
            });
            let ok = s.sha.as_ref().is_none_or(|sha| *sha == sha256(&s.data));
            let info = mcuboot::read(&s.data);
            self.counters.uploads_complete += 1;
            self.log(SmpEvent::UploadComplete {
                matched: ok,
                version: info.as_ref().map(|i| i.version.clone()),
            });
            if let Some(i) = info {
                let valid = i.valid();
                self.secondary = Some(Secondary {
                    img: Img {
                        version: i.version,
                        hash: i.hash,
                        valid,
                    },
                    pending: false,
                    permanent: false,
                });
            }
            if !ok {
                // Zephyr keeps its upload state: a client may resume and fail again.
                self.session = Some(s);
            }
            matched = self.opts.image_check.then_some(ok);
        }
        if let Some(at) = self.opts.drop_reply_at {
            if !self.drop_done && req.off >= at {
                self.drop_done = true;
                self.counters.replies_dropped += 1;
                self.log(SmpEvent::ReplyDropped { off: req.off });
                return Ok(None);
            }
        }
        Ok(Some(self.off_body(end, matched)))
    }

    fn off_body(&self, off: u64, matched: Option<bool>) -> Value {
        UploadResponse {
            off: Some(off),
            matched,
        }
        .to_body()
    }

    /// MCUboot at reset or power-up: revert an unconfirmed test image, or swap in a pending
    /// slot 1 (refused when its hash does not verify), or boot the same image. The upload
    /// session is lost. Returns what happened (also logged).
    pub fn boot(&mut self) -> BootOutcome {
        self.session = None;
        self.counters.boots += 1;
        let outcome = if !self.primary_confirmed && self.opts.revert_unconfirmed {
            self.swap();
            self.primary_confirmed = true;
            self.counters.reverts += 1;
            BootOutcome::Reverted
        } else if self
            .secondary
            .as_ref()
            .is_some_and(|s| s.pending && !self.opts.stuck_pending)
        {
            let s = self.secondary.as_ref().map(|s| (s.permanent, s.img.valid));
            match s {
                Some((_, false)) => {
                    self.secondary = None;
                    BootOutcome::Rejected
                }
                Some((permanent, true)) => {
                    self.swap();
                    self.counters.swaps += 1;
                    self.primary_confirmed = permanent;
                    if !permanent && self.opts.test_boot_fails && self.opts.revert_unconfirmed {
                        // The test image crashed before confirming: MCUboot reverts at once.
                        self.log(SmpEvent::Boot {
                            version: self.primary.version.clone(),
                            outcome: BootOutcome::Swapped { confirmed: false },
                        });
                        self.swap();
                        self.primary_confirmed = true;
                        self.counters.reverts += 1;
                        BootOutcome::Reverted
                    } else {
                        BootOutcome::Swapped {
                            confirmed: permanent,
                        }
                    }
                }
                None => BootOutcome::Same,
            }
        } else {
            if !self.primary_confirmed {
                // No revert: the test image stays and counts as confirmed from now on.
                self.primary_confirmed = true;
            }
            BootOutcome::Same
        };
        self.log(SmpEvent::Boot {
            version: self.primary.version.clone(),
            outcome: outcome.clone(),
        });
        outcome
    }

    /// Exchanges the slots (slot 1 keeps the previous image, no longer pending).
    fn swap(&mut self) {
        if let Some(s) = self.secondary.take() {
            let old = std::mem::replace(&mut self.primary, s.img);
            self.secondary = Some(Secondary {
                img: old,
                pending: false,
                permanent: false,
            });
        }
    }
}

#[cfg(test)]
mod tests;
