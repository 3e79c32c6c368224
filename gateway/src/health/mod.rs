//! Health: what the gateway tells about its devices and itself (DESIGN §8).
//!
//! - [`liveness`]: per-device online → stale → offline, pure (monotonic time in, transitions out).
//! - [`retained`]: the signed retained payloads (device status, gateway heartbeat) and their
//!   CDDL-described CBOR.
//! - [`snapshot`]: `status.json` beside the store, the daemon's state for `wardgate status`.
//! - [`status_loop`]: the daemon's 2-second loop that feeds all three from the writer's counts,
//!   the uplink's state and the adapters' counters, and follows the clock.
//!
//! Health reads the daemon's parts (writer, store, uplink, supervisor); none of them reads
//! health: the uplink publishes the [`crate::uplink::RetainedSet`] that health fills.

pub mod liveness;
pub mod retained;
pub mod snapshot;
pub mod status_loop;
