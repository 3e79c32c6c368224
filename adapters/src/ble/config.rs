//! The `[ble]` section of the gateway config: which BLE devices are admitted and how.
//!
//! ```toml
//! [ble]
//! adapter = "hci0"                 # BlueZ adapter (default hci0)
//!
//! [[ble.device]]                   # one admitted device (allowlist entry)
//! name = "bed12-hr"                # installer's name (logs, status)
//! address = "A0:9E:1A:12:34:56"    # identity address: public, static random, or the identity
//!                                  # BlueZ learnt when bonding (see `wardgate pair`)
//! require_bond = true              # default: admitted only while BlueZ holds a bond for it
//! profiles = ["heart-rate", "battery"]   # optional: characteristics to use (default: all known)
//!
//! [[ble.tag]]                      # asset tags: admitted by advertisement, explicitly
//! name = "pumps"
//! service_data = "feaa"            # and/or ibeacon_uuid = "…", name_prefix = "…", addresses = […]
//! window_s = 10                    # presence summary per tag per window
//! ```
//!
//! DESIGN §6: a raw MAC list is not enough for devices that use resolvable private addresses
//! (RPAs change every ~15 min; BlueZ resolves them to the identity address only with the IRK
//! exchanged at bonding). So an entry with `require_bond = false` must name an address that is
//! itself an identity (public, or random static: top two bits `11`); an RPA (top bits `01`) or a
//! non-resolvable private address (`00`) is a config error.

use super::decode::uuid::{self, Uuid};
use super::decode::vendor::VendorProfile;
use serde::Deserialize;

/// `[ble]`: the BLE adapter's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BleConfig {
    /// BlueZ adapter name, e.g. `hci0` (default).
    #[serde(default = "default_adapter")]
    pub adapter: String,
    /// Remove devices that were refused (and are neither connected nor paired) from BlueZ's
    /// device list after reporting them, so thousands of rotating addresses grow no memory in
    /// BlueZ either. Default `true`.
    #[serde(default = "yes")]
    pub prune_rejected: bool,
    /// Report one address as `rejected` at most once per this many seconds (default 600).
    #[serde(default = "default_rejected_repeat")]
    pub rejected_repeat_s: u64,
    /// At most this many `rejected` events per minute; the rest are counted and summarised in
    /// one event per minute (default 30).
    #[serde(default = "default_rejected_per_minute")]
    pub rejected_per_minute: u32,
    /// A scanning adapter that hears no advertisement for this many seconds while asset tags
    /// it heard before should be heard is treated as **blind**: an `error` event, then discovery
    /// is restarted, then the adapter power-cycled, then the BLE adapter restarted. Default 120;
    /// applies only with `[[ble.tag]]` rules.
    #[serde(default = "default_blind_after")]
    pub blind_after_s: u64,
    /// Admitted devices, by identity address.
    #[serde(default, rename = "device")]
    pub devices: Vec<BleDeviceConfig>,
    /// Asset-tag rules: devices admitted by what they advertise.
    #[serde(default, rename = "tag")]
    pub tags: Vec<TagRule>,
    /// Declarative GATT profiles for devices without a public standard (inhalers, trackers).
    #[serde(default, rename = "vendor_profile")]
    pub vendor_profiles: Vec<VendorProfile>,
}

/// `[[ble.device]]`: one admitted BLE device.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BleDeviceConfig {
    /// The installer's name, e.g. `bed12-hr` (logs and `wardgate status`).
    pub name: String,
    /// Where the device is, e.g. `ward-7/bed-12` (issue 11 item 7): up to 64 characters,
    /// `/`-separated non-empty parts of `A-Z a-z 0-9 . _ -` (checked by `check-config`).
    /// Shown in the device's retained status, `status.json` and `wardgate status`.
    #[serde(default)]
    pub location: Option<String>,
    /// Identity address `AA:BB:CC:DD:EE:FF`. The device id upstream is `ble:<address>`.
    pub address: String,
    /// `public` (default) or `random`: the device's address type as BlueZ reports it
    /// (`bluetoothctl info` → "random"/"public").
    #[serde(default)]
    pub address_type: AddressType,
    /// Admit the device only while BlueZ holds a bond with it (default `true`). Set `false`
    /// only for devices that cannot bond (many heart-rate straps) and use an identity address.
    #[serde(default = "yes")]
    pub require_bond: bool,
    /// Characteristics to subscribe to / read, by `wardgate decode --profile` name
    /// (`heart-rate`, `blood-pressure`, `cuff-pressure`, `thermometer`, `plx-spot`,
    /// `plx-continuous`, `weight`, `glucose`, `battery`). Default: every one the device has.
    pub profiles: Option<Vec<String>>,
    /// Name of a `[[ble.vendor_profile]]` to decode the device's vendor characteristics.
    pub vendor_profile: Option<String>,
    /// Serial number the device must report in Device Information 0x2A25; readings are dropped
    /// (and an `error` event raised) while it reports another.
    pub serial_number: Option<String>,
    /// Longest wait between reconnect attempts, seconds (default 30).
    #[serde(default = "default_max_backoff")]
    pub max_backoff_s: u64,
    /// Liveness: silence (no row from the device) after which it is `stale`, seconds. Default
    /// 15 for continuous devices (profiles `heart-rate`, `plx-continuous`), 26 h for episodic
    /// ones (scales, cuffs, meters, inhalers: used once or twice a day).
    pub stale_after_s: Option<u64>,
    /// Liveness: silence after which it is `offline`, seconds. Default 60 (continuous) or 72 h.
    pub offline_after_s: Option<u64>,
    /// A connected, subscribed device that sends no notification for this many seconds is
    /// reported (`error` event) and reconnected. Default 20 for continuous devices, off for
    /// episodic ones (0 turns it off).
    pub silent_after_s: Option<u64>,
}

impl BleDeviceConfig {
    /// Whether the device streams measurements (heart-rate or continuous PLX among its
    /// profiles) rather than sending one now and then.
    pub fn continuous(&self) -> bool {
        self.profiles
            .iter()
            .flatten()
            .any(|p| p == "heart-rate" || p == "plx-continuous")
    }

    /// Liveness thresholds (stale, offline) in seconds: configured, else by kind.
    pub fn liveness_s(&self) -> (u64, u64) {
        let (s, o) = if self.continuous() {
            (15, 60)
        } else {
            (26 * 3600, 72 * 3600)
        };
        let stale = self.stale_after_s.unwrap_or(s);
        (stale, self.offline_after_s.unwrap_or(o).max(stale))
    }

    /// Silence on a subscribed link that triggers a reconnect (`None`: never).
    pub fn silent_after(&self) -> Option<std::time::Duration> {
        let s = self
            .silent_after_s
            .unwrap_or(if self.continuous() { 20 } else { 0 });
        (s > 0).then(|| std::time::Duration::from_secs(s))
    }
}

/// `[[ble.tag]]`: devices admitted by their advertisements (asset tags, beacons). At least one
/// matcher must be set; a device matching any matcher of the rule is admitted.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagRule {
    /// Rule name, e.g. `infusion-pumps`.
    pub name: String,
    /// 16-bit service-data UUID in hex (`feaa` Eddystone, `fcd2` BTHome).
    pub service_data: Option<String>,
    /// iBeacon proximity UUID (8-4-4-4-12).
    pub ibeacon_uuid: Option<String>,
    /// Advertised local-name prefix.
    pub name_prefix: Option<String>,
    /// Explicit addresses.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Presence window, seconds (default 10): one summary (count, RSSI min/median/max) per tag
    /// per window, whatever the advertising rate.
    #[serde(default = "default_window")]
    pub window_s: u64,
    /// BTHome v2 encryption keys (16 bytes hex) by tag address.
    #[serde(default)]
    pub bthome_keys: std::collections::BTreeMap<String, String>,
    /// Where the tags this rule admits are, e.g. `pharmacy/fridge-1` (issue 11 item 7): every
    /// tag it admits gets it, in the same form as a device's `location` (checked by
    /// `check-config`); its rows travel upstream with it.
    #[serde(default)]
    pub location: Option<String>,
}

impl TagRule {
    /// The 16-bit service-data UUID to match (`service_data`, 4 hex digits), expanded on the
    /// Bluetooth Base UUID; `None` when absent or invalid ([`BleConfig::problems`] reports it).
    pub fn service_data_uuid(&self) -> Option<Uuid> {
        self.service_data
            .as_deref()
            .and_then(|s| u16::from_str_radix(s, 16).ok())
            .map(uuid::sig16)
    }

    /// The iBeacon proximity UUID to match (`ibeacon_uuid`, 128-bit form only).
    pub fn ibeacon(&self) -> Option<Uuid> {
        self.ibeacon_uuid
            .as_deref()
            .and_then(|s| uuid::parse_128(s).ok())
    }
}

fn yes() -> bool {
    true
}
fn default_adapter() -> String {
    "hci0".into()
}
fn default_rejected_repeat() -> u64 {
    600
}
fn default_rejected_per_minute() -> u32 {
    30
}
fn default_max_backoff() -> u64 {
    30
}
fn default_blind_after() -> u64 {
    120
}
fn default_window() -> u64 {
    10
}

/// A Bluetooth device address, 48 bits, as BlueZ writes it (`AA:BB:CC:DD:EE:FF`, MSB first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(pub [u8; 6]);

impl Address {
    /// Parses `AA:BB:CC:DD:EE:FF` (case-insensitive). Error: what is wrong with the text.
    pub fn parse(s: &str) -> Result<Address, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "`{s}` is not a Bluetooth address (six hex bytes like A0:9E:1A:12:34:56)"
            ));
        }
        let mut out = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(format!(
                    "`{s}`: byte {} (`{p}`) must be two hex digits",
                    i + 1
                ));
            }
            if !p.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("`{s}`: byte {} (`{p}`) is not hex", i + 1));
            }
            out[i] = u8::from_str_radix(p, 16)
                .map_err(|_| format!("`{s}`: byte {} (`{p}`) is not hex", i + 1))?;
        }
        Ok(Address(out))
    }

    /// For a *random* address: its sub-type from the two most significant bits (Core Spec
    /// Vol 6 Part B §1.3.2): `11` static, `01` resolvable private, `00` non-resolvable private.
    pub fn random_kind(&self) -> RandomKind {
        match self.0[0] >> 6 {
            0b11 => RandomKind::Static,
            0b01 => RandomKind::ResolvablePrivate,
            0b00 => RandomKind::NonResolvablePrivate,
            _ => RandomKind::Reserved,
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// The type of a device address (Core Spec Vol 6 Part B §1.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressType {
    /// Public (IEEE-assigned) address.
    #[default]
    Public,
    /// Random address (static or private).
    Random,
}

/// Sub-type of a random device address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RandomKind {
    /// Static random: an identity address (stable until power cycle / forever).
    Static,
    /// Resolvable private address: changes periodically; only the IRK resolves it.
    ResolvablePrivate,
    /// Non-resolvable private address: changes, cannot be resolved.
    NonResolvablePrivate,
    /// `10`: reserved.
    Reserved,
}

impl BleConfig {
    /// Semantic checks that need no file system: every problem as (key, message), where key
    /// names the table entry (`device[2].address`). Empty when the section is usable.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut names = std::collections::HashSet::new();
        let mut addrs = std::collections::HashSet::new();
        let profile_names: std::collections::HashSet<&str> = self
            .vendor_profiles
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        if !valid_adapter_name(&self.adapter) {
            out.push((
                "adapter".into(),
                format!(
                    "adapter `{}` must be a BlueZ adapter name like hci0",
                    self.adapter
                ),
            ));
        }
        if self.blind_after_s == 0 {
            out.push((
                "blind_after_s".into(),
                "blind_after_s must be greater than 0".into(),
            ));
        }
        if self.rejected_per_minute == 0 {
            out.push((
                "rejected_per_minute".into(),
                "rejected_per_minute must be greater than 0 (rejected devices must stay visible)"
                    .into(),
            ));
        }
        for (i, d) in self.devices.iter().enumerate() {
            let k = |f: &str| format!("device[{i}].{f}");
            if d.name.is_empty() || d.name.contains(['/', '+', '#', ' ']) {
                out.push((k("name"), format!("BLE device name `{}` must be non-empty and contain no `/`, `+`, `#` or spaces", d.name)));
            }
            if !names.insert(d.name.clone()) {
                out.push((
                    k("name"),
                    format!("BLE device name `{}` is used twice", d.name),
                ));
            }
            match Address::parse(&d.address) {
                Err(e) => out.push((k("address"), e)),
                Ok(a) => {
                    if !addrs.insert(a) {
                        out.push((k("address"), format!("address {a} is listed twice")));
                    }
                    if !d.require_bond && d.address_type == AddressType::Random {
                        match a.random_kind() {
                            RandomKind::Static => {}
                            kind => out.push((k("require_bond"), format!(
                                "device `{}`: {a} is a {} address (random, top bits {:02b}): it changes every few minutes, so without a bond it identifies nobody. Pair the device (`wardgate pair {a}`) and keep require_bond = true", d.name,
                                if kind == RandomKind::ResolvablePrivate { "resolvable private" } else { "non-resolvable private or reserved" }, a.0[0] >> 6))),
                        }
                    }
                }
            }
            for p in d.profiles.iter().flatten() {
                if super::Profile::from_name(p).is_none() {
                    out.push((
                        k("profiles"),
                        format!(
                            "device `{}`: unknown profile `{p}`; known: {}",
                            d.name,
                            super::Profile::ALL
                                .iter()
                                .map(|p| p.name())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
            if let Some(v) = &d.vendor_profile {
                if !profile_names.contains(v.as_str()) {
                    out.push((
                        k("vendor_profile"),
                        format!("device `{}`: no [[ble.vendor_profile]] named `{v}`", d.name),
                    ));
                }
            }
            if let (Some(st), Some(off)) = (d.stale_after_s, d.offline_after_s) {
                if st > off {
                    out.push((k("offline_after_s"), format!("device `{}`: offline_after_s ({off}) is shorter than stale_after_s ({st})", d.name)));
                }
            }
            if d.stale_after_s == Some(0) || d.offline_after_s == Some(0) {
                out.push((
                    k(if d.stale_after_s == Some(0) {
                        "stale_after_s"
                    } else {
                        "offline_after_s"
                    }),
                    format!(
                        "device `{}`: liveness thresholds must be greater than 0",
                        d.name
                    ),
                ));
            }
            if d.max_backoff_s == 0 {
                out.push((
                    k("max_backoff_s"),
                    "max_backoff_s must be greater than 0".into(),
                ));
            }
            if d.serial_number
                .as_deref()
                .is_some_and(|s| s.trim().is_empty())
            {
                out.push((
                    k("serial_number"),
                    format!("device `{}`: serial_number is empty", d.name),
                ));
            }
        }
        for (i, t) in self.tags.iter().enumerate() {
            let k = |f: &str| format!("tag[{i}].{f}");
            if t.service_data.is_none()
                && t.ibeacon_uuid.is_none()
                && t.name_prefix.is_none()
                && t.addresses.is_empty()
            {
                out.push((k("name"), format!("tag rule `{}` has no matcher (service_data, ibeacon_uuid, name_prefix or addresses): it would admit nothing", t.name)));
            }
            if let Some(u) = &t.service_data {
                if u.len() != 4 || !u.chars().all(|c| c.is_ascii_hexdigit()) {
                    out.push((k("service_data"), format!("tag rule `{}`: service_data `{u}` must be a 16-bit UUID in hex, e.g. feaa", t.name)));
                }
            }
            if let Some(u) = &t.ibeacon_uuid {
                if uuid::parse_128(u).is_err() {
                    out.push((
                        k("ibeacon_uuid"),
                        format!(
                            "tag rule `{}`: `{u}` is not a UUID (8-4-4-4-12 hex)",
                            t.name
                        ),
                    ));
                }
            }
            if t.name_prefix.as_deref() == Some("") {
                out.push((
                    k("name_prefix"),
                    format!(
                        "tag rule `{}`: an empty name_prefix would admit every named device",
                        t.name
                    ),
                ));
            }
            for a in &t.addresses {
                if let Err(e) = Address::parse(a) {
                    out.push((k("addresses"), e));
                }
            }
            for (a, key) in &t.bthome_keys {
                if let Err(e) = Address::parse(a) {
                    out.push((k("bthome_keys"), e));
                }
                if key.len() != 32 || key.chars().any(|c| !c.is_ascii_hexdigit()) {
                    out.push((k("bthome_keys"), format!("tag rule `{}`: the BTHome key for {a} must be 16 bytes in hex (32 digits)", t.name)));
                }
            }
            if t.window_s == 0 {
                out.push((k("window_s"), "window_s must be greater than 0".into()));
            }
        }
        let mut seen_profiles = std::collections::HashSet::new();
        for (i, p) in self.vendor_profiles.iter().enumerate() {
            if !seen_profiles.insert(p.name.as_str()) {
                out.push((format!("vendor_profile[{i}].name"), format!("vendor profile name `{}` is used twice: a device's vendor_profile would be ambiguous", p.name)));
            }
            if let Err(errors) = p.validate() {
                for e in errors {
                    out.push((
                        format!("vendor_profile[{i}]"),
                        format!("vendor profile: {e}"),
                    ));
                }
            }
        }
        out
    }
}

/// Whether `name` can be a BlueZ adapter name (`hci0`): ASCII letters, digits and `_` only
/// (it becomes a D-Bus object path element).
pub fn valid_adapter_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> BleConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn address_parse_and_kind() {
        let a = Address::parse("a0:9e:1a:12:34:56").unwrap();
        assert_eq!(a.to_string(), "A0:9E:1A:12:34:56");
        assert!(Address::parse("A0:9E:1A:12:34").is_err());
        assert!(Address::parse("A0:9E:1A:12:34:5G").is_err());
        assert_eq!(
            Address::parse("C0:00:00:00:00:01").unwrap().random_kind(),
            RandomKind::Static
        );
        assert_eq!(
            Address::parse("4A:00:00:00:00:01").unwrap().random_kind(),
            RandomKind::ResolvablePrivate
        );
    }

    #[test]
    fn rpa_without_bond_is_refused() {
        let c = cfg("[[device]]\nname='x'\naddress='4A:11:22:33:44:55'\naddress_type='random'\nrequire_bond=false\n");
        let p = c.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].1.contains("resolvable private address"), "{p:?}");
        let c = cfg("[[device]]\nname='x'\naddress='4A:11:22:33:44:55'\n");
        assert!(c.problems().is_empty());
        // A public address may have any top bits.
        let c = cfg("[[device]]\nname='x'\naddress='4A:11:22:33:44:55'\nrequire_bond=false\n");
        assert!(c.problems().is_empty());
    }

    #[test]
    fn duplicates_unknown_profiles_and_empty_tags_are_reported() {
        let c = cfg("[[device]]\nname='a'\naddress='C0:11:22:33:44:55'\nprofiles=['heart-rate','ecg']\n[[device]]\nname='a'\naddress='c0:11:22:33:44:55'\n[[tag]]\nname='t'\n");
        let p: Vec<String> = c
            .problems()
            .into_iter()
            .map(|(k, m)| format!("{k}: {m}"))
            .collect();
        assert!(
            p.iter()
                .any(|m| m.starts_with("device[0].profiles") && m.contains("`ecg`")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("device[1].name") && m.contains("twice")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("device[1].address") && m.contains("twice")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("tag[0].name") && m.contains("no matcher")),
            "{p:?}"
        );
    }

    #[test]
    fn uuid128() {}
}
