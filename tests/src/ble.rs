//! BLE test support: a private dbus-daemon with the simulated BlueZ ([`wardgate::blesim`]) that
//! the gateway under test reaches through `DBUS_SYSTEM_BUS_ADDRESS`, and the real captures of
//! `data/real/ble/` turned into what the simulated devices send.

use crate::env::{GatewayOptions, TestEnv};
use crate::{hex, workspace_root, Result};
use std::path::PathBuf;
use wardgate::blesim::{Advert, Bus, SimBluez};
use wardgate_adapters::ble::advertisement::decode_advertisement;

/// The bus and the simulated BlueZ on it. Both stop when dropped.
pub struct BleWorld {
    /// The simulated BlueZ (declared first: it disconnects before the bus goes away).
    pub sim: SimBluez,
    /// The private dbus-daemon.
    pub bus: Bus,
}

impl BleWorld {
    /// Starts a private dbus-daemon and the simulated BlueZ on it. Fails (never skips) when
    /// `dbus-daemon` is missing: `scripts/test` installs it.
    pub fn start() -> Result<BleWorld> {
        let bus =
            Bus::start().map_err(|e| anyhow::anyhow!("{e} (scripts/test installs dbus-daemon)"))?;
        let sim = SimBluez::start(bus.address())?;
        Ok(BleWorld { sim, bus })
    }

    /// The environment a gateway process needs to reach this BlueZ.
    pub fn env(&self) -> [(&str, &str); 1] {
        [("DBUS_SYSTEM_BUS_ADDRESS", self.bus.address())]
    }
}

/// A file under `data/real/ble/`.
pub fn real_ble(name: &str) -> PathBuf {
    workspace_root().join("data/real/ble").join(name)
}

/// The `hex_payload` column of the rows of `gatt_notifications.csv` whose device starts with
/// `device` (e.g. `Polar H7`, `A&D UC-352BLE`), in file order.
pub fn gatt_capture(device: &str) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(real_ble("gatt_notifications.csv")).expect("capture");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() > 3 && f[1].starts_with(device)).then(|| hex(f[3]))
        })
        .collect()
}

/// A whole advertising payload from `advertisements.csv` (rows `ble-adv-06`, `ble-adv-07`
/// carry whole AD payloads) turned into what BlueZ would expose, with `rssi`.
pub fn captured_advert(id: &str, rssi: i16) -> Advert {
    let text = std::fs::read_to_string(real_ble("advertisements.csv")).expect("capture");
    let row = text
        .lines()
        .find(|l| l.starts_with(&format!("{id},")))
        .unwrap_or_else(|| panic!("{id} in advertisements.csv"));
    let f: Vec<&str> = row.split(',').collect();
    let adv = decode_advertisement(&hex(f[4])).expect("capture decodes");
    Advert {
        rssi,
        name: adv.local_name.clone(),
        manufacturer_data: adv.manufacturer_data.clone(),
        service_data: adv
            .service_data16
            .iter()
            .map(|(u, d)| (wardgate::blesim::uuid16(*u), d.clone()))
            .collect(),
        service_uuids: adv
            .service_uuids16
            .iter()
            .map(|u| wardgate::blesim::uuid16(*u))
            .collect(),
        tx_power: adv.tx_power.map(i16::from),
    }
}

/// Writes the usual gateway config plus `ble` (a `[ble]` section and its tables) and returns
/// its path.
pub fn write_config_with_ble(env: &TestEnv, opts: &GatewayOptions, ble: &str) -> Result<PathBuf> {
    let path = env.write_gateway_config(opts)?;
    let mut text = std::fs::read_to_string(&path)?;
    text.push('\n');
    text.push_str(ble);
    std::fs::write(&path, text)?;
    Ok(path)
}
