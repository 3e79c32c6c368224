//! wardgate: edge gateway daemon for hospital wards.
//!
//! Devices → adapters → store (SQLite) → uplink (COSE_Sign1 batches over MQTT with mutual TLS)
//! → upstream receiver. See `ARCHITECTURE.md` for the map and the invariants.
//!
//! # Layout
//! - [`config`]: TOML schema, validation, `FILE:line:col: message` diagnostics.
//! - [`store`]: the durable buffer (DESIGN §4): group commit, batches, acks, retention, recovery.
//! - [`batch`]: batch rows and their CBOR payload (DESIGN §5).
//! - [`signing`]: COSE_Sign1 signing and verification (`kid` = SHA-256 of the certificate SPKI).
//! - [`tls`]: rustls client configs (mutual TLS, ring provider).
//! - [`uplink`]: store → sign → publish → delete on acknowledgement; reconnect with backoff;
//!   certificate rotation without a restart ([`uplink::credentials`]).
//! - [`liveness`]: per-device online → stale → offline (DESIGN §8), pure; the daemon feeds it.
//! - [`pipeline`]: drains adapter events into the store with group commit.
//! - [`supervisor`]: runs adapters, restarts them with capped backoff and jitter.
//! - [`daemon`]: `wardgate run`.
//! - [`provision`]: `wardgate provision`: the gateway's key and CSR, installing the signed certificate.
//! - [`sd_notify`]: systemd `READY`/`STATUS`/`STOPPING` and a watchdog tied to real progress.
//! - [`receive`]: `wardgate receive`, the upstream side (verify, dedup, store durably, ack).
//! - [`broker`]: a small embedded MQTT broker for `wardgate demo`.
//! - [`blesim`]: a simulated BlueZ (org.bluez on a private dbus-daemon) for btleplug-level tests.
//! - [`demo`]: `wardgate demo`, the whole chain on loopback with recorded real devices.

pub mod batch;
pub mod blesim;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod demo;
pub mod demo_ble;
pub mod devsim;
pub mod health;
pub mod liveness;
pub mod pair;
pub mod pipeline;
pub mod pki;
pub mod provision;
pub mod receive;
pub mod sd_notify;
pub mod signing;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod uplink;

pub use batch::Batch;
pub use store::Store;
pub use wardgate_adapters::observation::{DeviceEvent, DeviceId, Observation};
