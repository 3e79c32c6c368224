//! wardgate device adapters.
//!
//! An adapter turns a device-side transport (a serial port, a BLE link) into [`AdapterEvent`]s on a
//! bounded channel. Adapters never talk to MQTT or SQLite: the gateway's pipeline drains the
//! channel into the store, so a full channel slows the device side, never the heap.
//!
//! # Layout
//! - [`observation`]: the data model (DESIGN §3): [`Observation`], [`DeviceEvent`] (with the
//!   typed [`observation::PresenceReport`]), the decoders' [`observation::Reading`], MDC codes.
//! - [`retry`]: the one retry policy: [`retry::Backoff`] (capped exponential, equal jitter) and
//!   [`retry::RateLimit`], used by serial, BLE and the gateway's supervisor and uplink.
//! - [`serial`]: the serial port adapter (run loop, line settings, identity gate) and the
//!   bedside-monitor protocol decoders (`cms50`, `ansar-b`, `masimo`, and `lines`, decoded by a
//!   declarative map from the configuration), pure state machines.
//! - [`ble`]: `ble::decode` holds the pure BLE decoders (SIG health characteristics, declarative
//!   vendor profiles, beacons including encrypted BTHome, presence aggregation); `ble::central`
//!   the I/O: the BLE adapter on BlueZ through btleplug (and a few direct D-Bus calls).
//! - [`exec`]: out-of-process plug-ins: a child process writing JSON lines, supervised
//!   (restart with backoff, stop with SIGTERM then SIGKILL), read with backpressure.
//! - [`framing`]: bounded line framing shared by the `lines` protocol and `exec`.
//! - [`smp`]: SMP/MCUmgr for the firmware relay: the pure codec, the client, its transports
//!   (a serial port; [`smp::channel`], through the adapter that holds the device's connection,
//!   opened with [`DeviceCommand::OpenSmp`]) and [`smp::update::apply`], the whole update.
//!
//! Modules depend one way: `observation` and `retry` on nothing here; decoders
//! (`serial::protocols`, `ble::decode`) on `observation`; adapters (`serial::adapter`,
//! `ble::central`) on decoders, `retry` and the contract below.
//!
//! # Contract
//! - [`Adapter::run`] runs until the shutdown signal fires or an error it cannot recover from; the
//!   gateway's supervisor restarts it with capped backoff and jitter and counts the failure.
//! - Events are sent with `out.send(..).await`: backpressure reaches the device, never an
//!   unbounded queue.
//! - A decoder never panics on any input (property-tested).

#![warn(missing_docs)]

pub mod ble;
pub mod exec;
pub mod framing;
pub mod observation;
pub mod plausibility;
pub mod retry;
pub mod serial;
pub mod smp;

pub use observation::{DeviceEvent, DeviceId, EventKind, Observation, TimeQuality, Unit};

use std::future::Future;
use std::pin::Pin;
use tokio::sync::{mpsc, watch};

/// What an adapter emits: a reading or a device event.
#[derive(Clone, Debug, PartialEq)]
pub enum AdapterEvent {
    /// A decoded reading.
    Observation(Observation),
    /// A device event (connected, disconnected, error, rejected …).
    Event(DeviceEvent),
}

/// A command sent back to a device (the way back, DESIGN §1): firmware relay and settings.
/// Sent on `SerialAdapter::command_sender` or `BleAdapter::command_sender(address)`.
#[derive(Debug)]
pub enum DeviceCommand {
    /// Write raw bytes to the device's transport (serial: the port; BLE: dropped).
    SendBytes(Vec<u8>),
    /// Open an SMP session on the device's connection (the firmware relay,
    /// [`smp::channel::pair`]): the adapter frames and carries SMP frames until the relay drops
    /// its end (serial: the data protocol pauses meanwhile; BLE: the SMP characteristic, the
    /// readings keep flowing); refused at once when the device is not connected (BLE also when
    /// not bonded or without the SMP service: [`smp::channel::SmpLink::refuse`] tells the relay
    /// why), and dropped with the connection when it is lost.
    OpenSmp(smp::channel::SmpLink),
}

/// Everything an adapter gets from the gateway when it starts.
pub struct AdapterContext {
    /// The adapter's configured name (used in logs and as part of device ids).
    pub id: String,
    /// Where events go; bounded, so `send().await` applies backpressure.
    pub out: mpsc::Sender<AdapterEvent>,
    /// Flips to `true` when the gateway shuts down; adapters return promptly.
    pub shutdown: watch::Receiver<bool>,
    /// Whether the gateway clock is known to be synchronised; sets `time_quality`.
    pub clock_synced: watch::Receiver<bool>,
}

/// Errors an adapter returns to its supervisor, which acts on the kind: `ChannelClosed` stops
/// supervision, the others are reported and the adapter restarted after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The configuration cannot work (e.g. the port did not take the requested baud rate).
    /// The supervisor reports it and retries only after the maximum backoff.
    #[error("configuration refused by the device or port: {0}")]
    Config(String),
    /// A transport error that a restart may cure.
    #[error("transport error: {0}")]
    Transport(String),
    /// The event channel closed: the gateway is shutting down.
    #[error("event channel closed")]
    ChannelClosed,
}

/// A boxed future returned by [`Adapter::run`].
pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<(), AdapterError>> + Send + 'a>>;

/// Anything that turns a device-side transport into [`AdapterEvent`]s.
pub trait Adapter: Send + Sync {
    /// The adapter's configured name.
    fn name(&self) -> &str;
    /// Runs until `ctx.shutdown` fires (returns `Ok`) or a failure the supervisor should see.
    fn run<'a>(&'a self, ctx: &'a mut AdapterContext) -> RunFuture<'a>;
}
