//! Bluetooth Low Energy: pure decoders apart from the I/O that feeds them.
//!
//! | folder | role | may use |
//! |---|---|---|
//! | [`decode`] | everything pure: SFLOAT, the BLE [`Uuid`](decode::Uuid), GATT health profiles, advertisements (iBeacon, Eddystone, BTHome incl. AES-CCM, vendor frames), declarative vendor profiles, presence aggregation | the data model ([`crate::observation`]), serde, crypto; **no I/O** (no tokio, btleplug, D-Bus, nor [`central`]) |
//! | [`central`] | the I/O: [`BleAdapter`] (BlueZ through btleplug on its own thread), admission of devices and tags, the scan loop, one session per admitted device, BlueZ D-Bus calls btleplug lacks ([`central::bluez`]) | [`decode`], tokio, btleplug, dbus |
//! | [`config`] | the `[ble]` section ([`config::BleConfig`]): allowlisted devices, tag rules, vendor profiles; pure validation | [`decode`] |
//!
//! The root re-exports the names most callers need: [`DecodeError`], [`DateTime`], [`Profile`],
//! [`BleAdapter`], [`BleStats`].

pub mod central;
pub mod config;
pub mod decode;

pub use central::{BleAdapter, BleStats};
pub use decode::{DateTime, DecodeError, Profile};
