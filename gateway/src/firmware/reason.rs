//! Why a firmware job, a cancel or an image is refused: [`Reason`], a stable snake_case string
//! that goes upstream in `failed` progress messages (`docs/wire-format.md` "Firmware jobs").

/// Why a job or cancel is refused: a stable snake_case string ([`Reason::as_str`]) that goes
/// upstream in `failed` progress messages; never renamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Larger than the job size limit (64 KiB).
    TooLarge,
    /// Not a COSE_Sign1, unknown or untrusted signer, revoked or expired certificate, bad
    /// signature.
    SignatureRefused,
    /// A trusted signature, but the certificate names no firmware signer.
    NotAFirmwareSigner,
    /// `v` is not 1.
    UnsupportedVersion,
    /// The payload does not follow the CDDL.
    Malformed,
    /// A policy value out of bounds (`first_chunk_timeout_s` < 40, battery > 100, …).
    InvalidPolicy,
    /// `issued` is in the future.
    NotYetValid,
    /// `expires` has passed.
    Expired,
    /// `seq` is not greater than the last accepted for the class.
    SeqReplayed,
    /// This job (same id, class and seq) was already accepted: the retained job seen again.
    DuplicateJob,
    /// Another job (another class or seq) was accepted under this id before.
    JobIdReused,
    /// The class is not configured on this gateway (`[firmware.classes]`).
    UnknownClass,
    /// A listed device is not configured on this gateway.
    UnknownDevice,
    /// A listed device reference names several configured devices.
    AmbiguousDevice,
    /// A listed device is configured but not in the job's class.
    DeviceNotInClass,
    /// The target resolves to no device.
    NoDevices,
    /// A cancel names a job of another class.
    CancelMismatch,
    /// This gateway has no `[firmware]` section: it relays nothing.
    FirmwareOff,
}

impl Reason {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::SignatureRefused => "signature_refused",
            Reason::NotAFirmwareSigner => "not_a_firmware_signer",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::Malformed => "malformed",
            Reason::InvalidPolicy => "invalid_policy",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Expired => "expired",
            Reason::SeqReplayed => "seq_replayed",
            Reason::DuplicateJob => "duplicate_job",
            Reason::JobIdReused => "job_id_reused",
            Reason::UnknownClass => "unknown_class",
            Reason::UnknownDevice => "unknown_device",
            Reason::AmbiguousDevice => "ambiguous_device",
            Reason::DeviceNotInClass => "device_not_in_class",
            Reason::NoDevices => "no_devices",
            Reason::CancelMismatch => "cancel_mismatch",
            Reason::FirmwareOff => "firmware_off",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused job: the reason and a sentence for a person.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Refusal {
    /// Machine-readable.
    pub reason: Reason,
    /// What exactly.
    pub detail: String,
}

/// A refusal.
pub fn refuse(reason: Reason, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: detail.into(),
    }
}
