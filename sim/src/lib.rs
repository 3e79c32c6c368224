//! wardgate-sim: the simulated world that `wardgate demo` and the tests run the real gateway
//! against. Never part of the product: the `wardgate` binary links it only with the `demo`
//! cargo feature (on by default in a checkout, off in the `.deb` and the Raspberry Pi builds).
//!
//! - [`blesim`]: a simulated BlueZ (`org.bluez` on a private `dbus-daemon`: ObjectManager,
//!   Adapter1, Device1, GATT services/characteristics, pairing through the agent) that
//!   btleplug's real BlueZ code path talks to.
//! - [`broker`]: a small embedded MQTT 3.1.1 broker (rumqttc's codec + tokio-rustls, client
//!   certificates required) for the demo.
//! - [`devsim`]: serial devices replaying recordings on real pseudo-terminals at device pace.
//! - [`image_server`]: an HTTPS file server (client certificates, Range requests) for firmware
//!   images; [`mcuboot`]: signed MCUboot images made in Rust (ECDSA P-256), for the demo.
//! - [`smp_device`]: a simulated SMP/MCUmgr device with MCUboot-like slots
//!   ([`smp_device::SmpDeviceModel`]), served on a pty ([`smp_device::serial`]) or as the SMP
//!   GATT service of [`blesim`] ([`blesim::SimBluez::attach_smp`]).
//! - [`pki`]: a throw-away CA and certificates (rcgen), for the demo and the tests only.
//! - [`demo_ble`], [`demo_serial`]: the demo's devices (real captures replayed through [`blesim`]
//!   and [`devsim`]).
//!
//! Depends on `wardgate-adapters` only (for the decoders that check what a device replays), never
//! on the gateway: the simulated world cannot reach into the daemon it exercises.

pub mod blesim;
pub mod broker;
pub mod demo_ble;
pub mod demo_serial;
pub mod devsim;
pub mod image_server;
pub mod mcuboot;
pub mod pki;
pub mod smp_device;
