//! The few BlueZ D-Bus calls btleplug does not expose: a device's bond state (`Paired`,
//! `Bonded`), whether it is connected, and `Adapter1.RemoveDevice` (pruning refused devices).
//!
//! Source: BlueZ `doc/org.bluez.Device.rst` (properties `Paired`, `Bonded`, `Connected`) and
//! `doc/org.bluez.Adapter.rst` (`RemoveDevice(object device)`). Object paths are
//! `/org/bluez/<adapter>/dev_AA_BB_CC_DD_EE_FF`.

use crate::ble::config::Address;
use dbus::nonblock::stdintf::org_freedesktop_dbus::Properties;
use dbus::nonblock::{Proxy, SyncConnection};
use std::sync::Arc;
use std::time::Duration;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to the system bus (honours `DBUS_SYSTEM_BUS_ADDRESS`).
pub struct Bus {
    conn: Arc<SyncConnection>,
    task: tokio::task::JoinHandle<()>,
}

/// Bond and link state of a device as BlueZ holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BondState {
    /// `Paired`: a pairing completed (keys exchanged).
    pub paired: bool,
    /// `Bonded`: the keys are stored (survive a restart). Older BlueZ lacks it: then = `paired`.
    pub bonded: bool,
    /// `Connected`.
    pub connected: bool,
}

impl Bus {
    /// Connects to the system bus. Error: the bus is unreachable (text for an installer).
    pub fn connect() -> Result<Bus, String> {
        let (resource, conn) = dbus_tokio::connection::new_system_sync()
            .map_err(|e| format!("cannot reach the system D-Bus (is dbus running?): {e}"))?;
        let task = tokio::spawn(async move {
            let err = resource.await;
            log::warn!("system D-Bus connection lost: {err}");
        });
        Ok(Bus { conn, task })
    }

    /// The underlying connection (for callers that export objects, e.g. a pairing agent).
    pub fn connection(&self) -> Arc<SyncConnection> {
        self.conn.clone()
    }

    fn proxy(&self, path: String) -> Proxy<'static, Arc<SyncConnection>> {
        Proxy::new("org.bluez", path, CALL_TIMEOUT, self.conn.clone())
    }

    /// `Paired`, `Bonded`, `Connected` of `/org/bluez/<adapter>/dev_…`. Error: no such device
    /// object (BlueZ forgot it) or BlueZ is not answering.
    pub async fn bond_state(&self, adapter: &str, address: Address) -> Result<BondState, String> {
        let p = self.proxy(device_path(adapter, address));
        let all = p
            .get_all("org.bluez.Device1")
            .await
            .map_err(|e| e.message().unwrap_or("D-Bus error").to_owned())?;
        let flag = |k: &str| {
            all.get(k)
                .and_then(|v| dbus::arg::RefArg::as_u64(&v.0))
                .map(|x| x != 0)
        };
        let paired = flag("Paired").unwrap_or(false);
        Ok(BondState {
            paired,
            bonded: flag("Bonded").unwrap_or(paired),
            connected: flag("Connected").unwrap_or(false),
        })
    }

    /// `Adapter1.RemoveDevice`: BlueZ forgets the device (and its bond, if any: callers only
    /// remove devices that are not paired).
    pub async fn remove_device(&self, adapter: &str, address: Address) -> Result<(), String> {
        let p = self.proxy(format!("/org/bluez/{adapter}"));
        let dev = dbus::Path::new(device_path(adapter, address)).map_err(|e| e.to_string())?;
        p.method_call::<(), _, _, _>("org.bluez.Adapter1", "RemoveDevice", (dev,))
            .await
            .map_err(|e| e.message().unwrap_or("D-Bus error").to_owned())
    }
}

impl Bus {
    /// Sets `Adapter1.Pairable`: the daemon keeps it `false` so no device can pair while it
    /// runs; only `wardgate pair` opens it, for its own duration.
    pub async fn set_pairable(&self, adapter: &str, pairable: bool) -> Result<(), String> {
        let p = self.proxy(format!("/org/bluez/{adapter}"));
        p.set("org.bluez.Adapter1", "Pairable", pairable)
            .await
            .map_err(|e| e.message().unwrap_or("D-Bus error").to_owned())
    }
}

impl Bus {
    /// `Adapter1.Pairable` (true while `wardgate pair` runs).
    pub async fn pairable(&self, adapter: &str) -> Result<bool, String> {
        let p = self.proxy(format!("/org/bluez/{adapter}"));
        p.get("org.bluez.Adapter1", "Pairable")
            .await
            .map_err(|e| e.message().unwrap_or("D-Bus error").to_owned())
    }

    /// Sets `Adapter1.Powered` (used to power-cycle an adapter that went blind).
    pub async fn set_powered(&self, adapter: &str, powered: bool) -> Result<(), String> {
        let p = self.proxy(format!("/org/bluez/{adapter}"));
        p.set("org.bluez.Adapter1", "Powered", powered)
            .await
            .map_err(|e| e.message().unwrap_or("D-Bus error").to_owned())
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `/org/bluez/<adapter>/dev_AA_BB_CC_DD_EE_FF`.
pub fn device_path(adapter: &str, address: Address) -> String {
    format!(
        "/org/bluez/{adapter}/dev_{}",
        address.to_string().replace(':', "_")
    )
}

/// The address in a btleplug peripheral id (`hci0/dev_AA_BB_CC_DD_EE_FF`) or a device path.
pub fn address_from_id(id: &str) -> Option<Address> {
    let dev = id.rsplit('/').next()?.strip_prefix("dev_")?;
    Address::parse(&dev.replace('_', ":")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_ids() {
        let a = Address::parse("A0:9E:1A:12:34:56").unwrap();
        assert_eq!(
            device_path("hci0", a),
            "/org/bluez/hci0/dev_A0_9E_1A_12_34_56"
        );
        assert_eq!(address_from_id("hci0/dev_A0_9E_1A_12_34_56"), Some(a));
        assert_eq!(
            address_from_id("/org/bluez/hci0/dev_A0_9E_1A_12_34_56"),
            Some(a)
        );
        assert_eq!(address_from_id("hci0"), None);
        assert_eq!(address_from_id("hci0/dev_zz"), None);
    }
}
