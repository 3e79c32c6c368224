//! BLE test support: a private dbus-daemon with the simulated BlueZ ([`wardgate_sim::blesim`]) that
//! the gateway under test reaches through `DBUS_SYSTEM_BUS_ADDRESS`, and the real captures of
//! `data/real/ble/` turned into what the simulated devices send.

use crate::env::{GatewayOptions, TestEnv};
use crate::Result;
use std::path::PathBuf;
use wardgate_sim::blesim::{Bus, SimBluez};

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

/// The real captures of `data/real/ble/`, as the demo replays them: `gatt_capture(device)`
/// (notification values in file order) and `captured_advert(id, rssi)` (a whole advertisement).
pub use wardgate_sim::demo_ble::{captured_advert, gatt_capture};

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
