//! wardgate: edge gateway daemon for hospital wards.
//!
//! Devices → adapters (`wardgate-adapters`) → [`pipeline`] → [`store`] (SQLite) → [`uplink`]
//! (COSE_Sign1 batches over MQTT with mutual TLS) → upstream [`receive`]r. See `ARCHITECTURE.md`
//! for the map, the dependency rules and the invariants.
//!
//! # Layout
//! The daemon (`wardgate run`), by concern:
//! - [`daemon`]: wiring only: start everything, stop it in order.
//! - [`supervisor`]: runs adapters, restarts them with capped backoff and jitter.
//! - [`pipeline`]: the writer: adapter events into the store with group commit.
//! - [`store`]: the durable buffer (DESIGN §4): group commit, batches, acks, retention, recovery.
//! - [`uplink`]: store → sign → publish → delete on acknowledgement; reconnect with backoff;
//!   certificate rotation without a restart ([`uplink::credentials`]).
//! - [`health`]: liveness, retained device status and heartbeat, the status snapshot.
//! - [`system`]: clock, systemd notifications and watchdog, logging.
//! - [`firmware`]: the firmware relay (image download into a bounded cache so far).
//!
//! The contract both sides share: [`batch`] (rows and their CBOR payload, DESIGN §5),
//! [`signing`] (COSE_Sign1, `kid` = SHA-256 of the certificate SPKI, `x5chain`; trust by listed
//! certificate or CA), [`identity`] (who a certificate names), [`mqtt`] (topics and TCP
//! options), [`tls`] (rustls client configs, ring provider), [`config`] (TOML schema, validation,
//! `FILE:line:col: message` diagnostics).
//!
//! The upstream side: [`receive`] (`wardgate receive`: verify, dedup, store durably, ack).
//!
//! The command line: [`cli`], one file per subcommand; [`error`] maps errors to exit codes.
//! `wardgate demo` exists only with the `demo` cargo feature, which links the simulated world
//! (`wardgate-sim`); the packaged binary is built without it.

#![warn(missing_docs)]

pub mod batch;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod encryption;
pub mod error;
pub mod firmware;
pub mod health;
pub mod identity;
pub mod mqtt;
pub mod pipeline;
pub mod receive;
pub mod signing;
pub mod store;
pub mod supervisor;
pub mod system;
pub mod tls;
pub mod uplink;

pub use batch::Batch;
pub use store::Store;
pub use wardgate_adapters::observation::{DeviceEvent, DeviceId, Observation};
