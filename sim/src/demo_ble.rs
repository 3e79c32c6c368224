//! The BLE half of `wardgate demo`: a simulated BlueZ ([`crate::blesim`]) on a private
//! dbus-daemon, with devices that replay the real captures of `data/real/ble/`; the gateway's
//! real BLE adapter (btleplug) reaches it through `DBUS_SYSTEM_BUS_ADDRESS`.
//!
//! Runs only where `dbus-daemon` exists (no root needed); otherwise the demo says why and runs
//! the serial devices alone.

use crate::blesim::{self, Advert, Bus, DeviceInformation, SimBluez};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use wardgate_adapters::ble::decode::advertisement::decode_advertisement;
use wardgate_adapters::ble::Profile;

/// The `[ble]` section appended to the demo config.
pub const DEMO_BLE_CONFIG: &str = include_str!("../../config/demo-ble.toml");
const GATT_CAPTURES: &str = include_str!("../../data/real/ble/gatt_notifications.csv");
const ADVERT_CAPTURES: &str = include_str!("../../data/real/ble/advertisements.csv");

/// Polar H7 strap (test address: Polar's OUI; the capture carries none).
pub const STRAP: &str = "00:22:D0:90:4C:14";
/// A&D UC-352BLE scale (test address).
pub const SCALE: &str = "5C:31:3E:01:16:6D";
/// A device nobody allowlisted (its data must never be stored).
pub const STRANGER: &str = "C4:7C:8D:6A:11:22";

/// Starts the private bus, or says why BLE is left out of the demo. Must run before any
/// D-Bus connection in this process (libdbus reads `DBUS_SYSTEM_BUS_ADDRESS` once), i.e.
/// before the tokio runtime starts: it sets that variable for this process.
pub fn start_bus() -> Result<Bus, String> {
    let bus = Bus::start().map_err(|e| e.to_string())?;
    std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", bus.address());
    Ok(bus)
}

/// The captured values of `device` (a prefix of the `device` column of
/// `data/real/ble/gatt_notifications.csv`, e.g. `Polar H7`, `A&D UC-352BLE`), in file order.
pub fn gatt_capture(device: &str) -> Vec<Vec<u8>> {
    GATT_CAPTURES
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() > 3 && f[1].starts_with(device))
                .then(|| hex::decode(f[3]).ok())
                .flatten()
        })
        .collect()
}

/// A whole advertising payload of `data/real/ble/advertisements.csv` (rows `ble-adv-06` and
/// `ble-adv-07` carry whole AD payloads) as BlueZ would expose it, heard at `rssi`.
pub fn captured_advert(id: &str, rssi: i16) -> Advert {
    let row = ADVERT_CAPTURES
        .lines()
        .find(|l| l.starts_with(&format!("{id},")))
        .unwrap_or_default();
    let payload = row
        .split(',')
        .nth(4)
        .and_then(|h| hex::decode(h).ok())
        .unwrap_or_default();
    let adv = decode_advertisement(&payload).unwrap_or_default();
    Advert {
        rssi,
        name: adv.local_name,
        manufacturer_data: adv.manufacturer_data,
        service_data: adv
            .service_data16
            .iter()
            .map(|(u, d)| (blesim::uuid16(*u), d.clone()))
            .collect(),
        service_uuids: adv
            .service_uuids16
            .iter()
            .map(|u| blesim::uuid16(*u))
            .collect(),
        tx_power: adv.tx_power.map(i16::from),
    }
}

/// The simulated devices of the demo.
pub struct DemoBle {
    sim: SimBluez,
    _bus: Bus,
}

impl DemoBle {
    /// Starts the simulated BlueZ with the strap (in range, unknown until it advertises) and
    /// the scale (bonded earlier). With `scale_firmware`, the scale also offers the SMP service
    /// backed by that device model (and reports its running version as firmware revision).
    pub fn start(
        bus: Bus,
        scale_firmware: Option<crate::smp_device::SharedModel>,
    ) -> anyhow::Result<DemoBle> {
        let sim = SimBluez::start(bus.address())?;
        let mut strap = blesim::heart_rate_strap(
            STRAP,
            &DeviceInformation::new("Polar Electro Oy", "Polar H7", "D7904C14", "1.4.0"),
        );
        strap.address_type = blesim::AddressType::Public;
        sim.place_device(strap);
        let version = scale_firmware
            .as_ref()
            .map(|m| crate::smp_device::lock(m).running_version().to_owned())
            .unwrap_or_else(|| "2.0".into());
        let mut scale = blesim::weight_scale(
            SCALE,
            &DeviceInformation::new("A&D Medical", "UC-352BLE", "5130116", &version),
        );
        scale.paired = true;
        scale.bonded = true;
        if scale_firmware.is_some() {
            scale.services.push(blesim::smp_service());
        }
        sim.add_device(scale);
        if let Some(model) = scale_firmware {
            sim.attach_smp(SCALE, model);
        }
        Ok(DemoBle { sim, _bus: bus })
    }

    /// Observations the decoders find in each device's captures (the demo's expected counts).
    pub fn expected() -> BTreeMap<String, u64> {
        let count = |p: Profile, dev: &str| -> u64 {
            gatt_capture(dev)
                .iter()
                .map(|v| p.decode(v).map(|r| r.len() as u64).unwrap_or(0))
                .sum()
        };
        BTreeMap::from([
            (
                format!("ble:{STRAP}"),
                count(Profile::HeartRate, "Polar H7"),
            ),
            (
                format!("ble:{SCALE}"),
                count(Profile::Weight, "A&D UC-352BLE"),
            ),
        ])
    }

    /// Plays the devices (blocking): the strap and a stranger advertise, the gateway connects,
    /// the scale indicates its two stored records back to back, the strap notifies its three
    /// measurements about a second apart (÷ `speed`).
    pub fn play(&self, speed: f64) -> anyhow::Result<()> {
        let sim = &self.sim;
        let wait = |what: &str, f: &dyn Fn() -> bool| -> anyhow::Result<()> {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !f() {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "BLE demo: timed out waiting for {what}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        };
        wait("the gateway to scan", &|| sim.is_discovering())?;
        sim.advertise(STRAP, &captured_advert("ble-adv-06", -58));
        sim.advertise(
            STRANGER,
            &Advert {
                rssi: -71,
                name: Some("Unknown Tracker".into()),
                ..Default::default()
            },
        );
        let hr = blesim::uuid16(0x2A37);
        let weight = blesim::uuid16(0x2A9D);
        wait("the strap's subscription", &|| sim.is_notifying(STRAP, &hr))?;
        wait("the scale's subscription", &|| {
            sim.is_notifying(SCALE, &weight)
        })?;
        println!(
            "BLE: Polar H7 and A&D UC-352BLE connected and subscribed through the simulated BlueZ"
        );
        for v in gatt_capture("A&D UC-352BLE") {
            sim.notify(SCALE, &weight, &v);
        }
        for v in gatt_capture("Polar H7") {
            sim.notify(STRAP, &hr, &v);
            std::thread::sleep(Duration::from_secs_f64(1.0 / speed.max(0.01)));
        }
        Ok(())
    }
}
