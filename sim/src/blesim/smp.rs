//! The SMP GATT service of the simulated BlueZ (PROTOCOLS §A.4, Zephyr `smp_bt`), backed by an
//! [`SmpDeviceModel`](crate::smp_device::SmpDeviceModel).
//!
//! ```no_run
//! use wardgate_sim::blesim::{self, Bus, SimBluez};
//! use wardgate_sim::smp_device::{SmpDeviceModel, SmpDeviceOptions};
//! let bus = Bus::start()?;
//! let sim = SimBluez::start(bus.address())?;
//! let info = blesim::DeviceInformation::new("Acme", "Vitals-1", "SN1", "1.0.0");
//! let model = SmpDeviceModel::new(SmpDeviceOptions::default()).shared();
//! sim.add_device(blesim::smp_vitals_device("C0:FF:EE:00:00:02", &info)); // bonded
//! sim.attach_smp("C0:FF:EE:00:00:02", model.clone());
//! sim.set_mtu("C0:FF:EE:00:00:02", 23);                  // default 247
//! # Ok::<(), blesim::Error>(())
//! ```
//!
//! The service `8D53DC1D-1DB7-4CD3-868B-8A527460AA84` has one characteristic
//! `DA2E7828-FBCE-4E01-AE9E-261174997C48`, flags `write-without-response` + `notify`
//! ([`smp_service`]). Once [`SimBluez::attach_smp`](super::SimBluez::attach_smp) gave the device
//! a model:
//! - Requests arrive as `WriteValue` (options `type: command`; a characteristic without `write`
//!   writes commands anyway, as BlueZ does) or through the socket of `AcquireWrite`; each write
//!   is at most ATT MTU − 3 bytes (a longer command write fails `org.bluez.Error.Failed`
//!   "Failed to initiate write", as BlueZ's `bt_att` refuses a PDU above the MTU). Writes are
//!   reassembled by the SMP header's length (`wardgate_adapters::smp::ble::Reassembler`); a
//!   link loss drops a half-received frame.
//! - Only a bonded device's link is encrypted: from an unbonded one, `WriteValue`,
//!   `AcquireWrite` and `StartNotify` on the characteristic fail `org.bluez.Error.NotPermitted`
//!   "Not paired" (BlueZ's answer to ATT Insufficient Authentication/Encryption; smp_bt requires
//!   an encrypted link).
//! - Each whole frame goes to a worker thread (one per device) that asks the model, waits the
//!   model's delay (the slot erase) **off** the D-Bus dispatch thread, and sends the response as
//!   notifications of at most MTU − 3 bytes each (`PropertiesChanged(Value)`, only while the
//!   characteristic is notifying, as BlueZ).
//! - A reset: after the response, the link drops (`Connected=false`) and the device is out of
//!   range (no connection, no advertisement) for the model's `swap_time`; it then boots
//!   ([`SmpDeviceModel::boot`](crate::smp_device::SmpDeviceModel::boot)) and is back in range
//!   with the same address, advertising again while someone discovers. When it booted another
//!   image, the GATT table is replaced ([`SimBluez::set_gatt`](super::SimBluez::set_gatt):
//!   `InterfacesRemoved`, re-exported at the next connection) with the Device Information
//!   firmware revision (0x2A26) set to the running version, so a client must rediscover (B18).
//!
//! Not served: `AcquireNotify` (BlueZ's notification socket; clients fall back to `StartNotify`,
//! which btleplug and bleak use by default) answers `org.bluez.Error.NotSupported`.

use super::profiles::{heart_rate_strap, DeviceInformation};
use super::{normalize_uuid, Inner, SimCharacteristic, SimDevice, SimService};
use crate::smp_device::{self, BootOutcome, SharedModel};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Weak;
use std::time::Duration;
use wardgate_adapters::smp::ble::Reassembler;

/// The SMP service UUID (PROTOCOLS §A.4), lowercase as BlueZ writes it.
pub const SMP_SERVICE_UUID: &str = "8d53dc1d-1db7-4cd3-868b-8a527460aa84";
/// The SMP characteristic UUID (PROTOCOLS §A.4).
pub const SMP_CHARACTERISTIC_UUID: &str = "da2e7828-fbce-4e01-ae9e-261174997c48";

/// The SMP service: one characteristic, `write-without-response` + `notify` (a CCCD is added).
pub fn smp_service() -> SimService {
    SimService {
        uuid: SMP_SERVICE_UUID.into(),
        characteristics: vec![SimCharacteristic {
            uuid: SMP_CHARACTERISTIC_UUID.into(),
            flags: vec!["write-without-response".into(), "notify".into()],
            value: Vec::new(),
        }],
    }
}

/// A bonded vital-signs device that takes firmware over SMP: the heart-rate strap's services
/// (Heart Rate, Battery, Device Information with `info.firmware` as 0x2A26) plus
/// [`smp_service`]. Paired and bonded (SMP needs an encrypted link). Give it a model with
/// [`SimBluez::attach_smp`](super::SimBluez::attach_smp) after adding it.
pub fn smp_vitals_device(address: &str, info: &DeviceInformation) -> SimDevice {
    let mut d = heart_rate_strap(address, info);
    d.services.push(smp_service());
    d.paired = true;
    d.bonded = true;
    d
}

/// The per-device SMP server state the simulator keeps: the reassembler of incoming writes and
/// the worker's queue.
pub(super) struct SmpServer {
    pub(super) reassembler: Reassembler,
    pub(super) tx: Sender<Vec<u8>>,
}

impl SmpServer {
    /// Starts the worker of `address` and returns its state.
    pub(super) fn start(inner: Weak<Inner>, address: String, model: SharedModel) -> SmpServer {
        let (tx, rx) = mpsc::channel();
        let name = format!("blesim-smp-{address}");
        let spawned = std::thread::Builder::new()
            .name(name)
            .spawn(move || worker(inner, address, model, rx));
        if let Err(e) = spawned {
            log::warn!("blesim: the SMP worker did not start: {e}");
        }
        SmpServer {
            reassembler: Reassembler::new(),
            tx,
        }
    }
}

/// Whether `uuid` is the SMP characteristic.
pub(super) fn is_smp_char(uuid: &str) -> bool {
    normalize_uuid(uuid) == SMP_CHARACTERISTIC_UUID
}

fn worker(inner: Weak<Inner>, address: String, model: SharedModel, rx: Receiver<Vec<u8>>) {
    while let Ok(frame) = rx.recv() {
        let reply = smp_device::lock(&model).handle(&frame);
        if !reply.delay.is_zero() {
            std::thread::sleep(reply.delay);
        }
        let Some(sim) = inner.upgrade() else { return };
        if let Some(rsp) = &reply.response {
            let mtu = super::mtu_of(&sim, &address);
            for piece in wardgate_adapters::smp::ble::split(rsp, mtu) {
                super::notify_inner(&sim, &address, SMP_CHARACTERISTIC_UUID, piece);
            }
        }
        if reply.reset {
            let swap_time = smp_device::lock(&model).options().swap_time;
            // The response leaves the radio before the device resets.
            std::thread::sleep(Duration::from_millis(50));
            super::set_in_range_inner(&sim, &address, false);
            drop(sim);
            std::thread::sleep(swap_time);
            // Requests written before the reset are lost with the device's RAM.
            while rx.try_recv().is_ok() {}
            let Some(sim) = inner.upgrade() else { return };
            let (outcome, version) = {
                let mut m = smp_device::lock(&model);
                let outcome = m.boot();
                (outcome, m.running_version().to_string())
            };
            if matches!(outcome, BootOutcome::Swapped { .. } | BootOutcome::Reverted) {
                super::firmware_changed(&sim, &address, &version);
            }
            super::set_in_range_inner(&sim, &address, true);
            super::readvertise(&sim, &address);
        }
    }
}

/// The services after a firmware change: the same table with the Device Information firmware
/// revision (0x2A26) set to `version`.
pub(super) fn with_firmware(services: Vec<SimService>, version: &str) -> Vec<SimService> {
    let fw = normalize_uuid("2a26");
    services
        .into_iter()
        .map(|mut s| {
            for c in &mut s.characteristics {
                if normalize_uuid(&c.uuid) == fw {
                    c.value = version.as_bytes().to_vec();
                }
            }
            s
        })
        .collect()
}
