//! The firmware relay (issue 10; FIRMWARE.md, PROTOCOLS.md §A.6, §B.3).
//!
//! Nothing reaches a device unverified: a job must verify against the firmware trust anchor
//! ([`job`]), resolve to configured devices ([`target`]) and pass the anti-rollback `seq` check
//! in the store before anything happens; its image must then match the job byte for byte and be
//! a well-formed MCUboot image whose hash and version are the job's ([`image`]).
//!
//! - [`download`]: the image from its HTTPS URL with the gateway's mutual-TLS identity, resumed
//!   with Range requests, into a bounded cache (size and SHA-256 checked before it is kept).
//! - [`image`]: the MCUboot image parser and the checks of an image against a job (pure).
//! - [`job`]: the signed job and cancel: format, verification, refusal reasons, acceptance.
//! - [`policy`]: when a device may be updated (window, clinical use, battery, parallel
//!   transfers, deadline, attempts), pure.
//! - [`progress`]: the per-device progress report (CBOR, published signed and retained).
//! - [`relay`]: the engine: jobs in, policy, download, checks, SMP through the adapter, progress.
//! - [`reason`]: the refusal reasons (stable strings, a wire contract).
//! - [`target`]: job targets → configured device ids (pure).

pub mod download;
pub mod image;
pub mod job;
pub mod policy;
pub mod progress;
pub mod reason;
pub mod relay;
pub mod target;
