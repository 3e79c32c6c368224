//! The configured devices by id and installer name, and the one lookup of a device reference
//! (pure). Firmware classes in `[firmware.classes]` and the `devices` of a firmware job name
//! devices this way; `firmware/target.rs` resolves jobs with it, `validate.rs` checks the config
//! with it, so both refuse the same references.
//!
//! A reference is a device id (`serial:<name>`, `ble:<ADDRESS>`, the ids upstream sees), a bare
//! installer name (`bed12-spo2`), or a bare BLE address (`AA:BB:CC:DD:EE:FF`, any case). A bare
//! name can be **ambiguous**: serial and BLE names are separate namespaces, so `bed12` may be
//! both a `[[serial]]` and a `[[ble.device]]`.

use super::schema::Config;
use wardgate_adapters::ble::config::Address;

/// One configured device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfiguredDevice {
    /// Its id upstream: `serial:<name>` or `ble:<ADDRESS>` (upper-case hex).
    pub id: String,
    /// The installer's name (`[[serial]] name`, `[[ble.device]] name`).
    pub name: String,
}

/// Why a reference names no single device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupError {
    /// No configured device has this id, name or address.
    Unknown,
    /// Several configured devices answer to it (the ids, sorted).
    Ambiguous(Vec<String>),
}

/// Every device of the config: `[[serial]]` then `[[ble.device]]`, in file order.
pub fn configured(c: &Config) -> Vec<ConfiguredDevice> {
    let serial = c.serial.iter().map(|s| ConfiguredDevice {
        id: format!("serial:{}", s.name),
        name: s.name.clone(),
    });
    let ble = c
        .ble
        .iter()
        .flat_map(|b| b.devices.iter())
        .map(|d| ConfiguredDevice {
            id: match Address::parse(&d.address) {
                Ok(a) => format!("ble:{a}"),
                Err(_) => format!("ble:{}", d.address),
            },
            name: d.name.clone(),
        });
    serial.chain(ble).collect()
}

/// The one device `reference` names (see the module doc for the forms).
pub fn lookup<'a>(
    devices: &'a [ConfiguredDevice],
    reference: &str,
) -> Result<&'a ConfiguredDevice, LookupError> {
    let canonical = match reference.strip_prefix("ble:") {
        Some(a) => Address::parse(a).map(|a| format!("ble:{a}")).ok(),
        None => Address::parse(reference).map(|a| format!("ble:{a}")).ok(),
    };
    let mut hits: Vec<&ConfiguredDevice> = devices
        .iter()
        .filter(|d| d.id == reference || d.name == reference || canonical.as_deref() == Some(&d.id))
        .collect();
    hits.dedup_by(|a, b| a.id == b.id);
    match hits.len() {
        0 => Err(LookupError::Unknown),
        1 => Ok(hits[0]),
        _ => {
            let mut ids: Vec<String> = hits.iter().map(|d| d.id.clone()).collect();
            ids.sort();
            ids.dedup();
            if ids.len() == 1 {
                return Ok(hits[0]);
            }
            Err(LookupError::Ambiguous(ids))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: &str, name: &str) -> ConfiguredDevice {
        ConfiguredDevice {
            id: id.into(),
            name: name.into(),
        }
    }

    #[test]
    fn ids_names_and_addresses_resolve_and_shared_names_are_ambiguous() {
        let devs = [
            d("serial:bed12", "bed12"),
            d("ble:A0:9E:1A:12:34:56", "bed12"),
            d("serial:bed14", "bed14"),
        ];
        assert_eq!(lookup(&devs, "serial:bed12").unwrap().id, "serial:bed12");
        assert_eq!(lookup(&devs, "bed14").unwrap().id, "serial:bed14");
        assert_eq!(
            lookup(&devs, "a0:9e:1a:12:34:56").unwrap().id,
            "ble:A0:9E:1A:12:34:56"
        );
        assert_eq!(
            lookup(&devs, "ble:a0:9e:1a:12:34:56").unwrap().id,
            "ble:A0:9E:1A:12:34:56"
        );
        assert_eq!(
            lookup(&devs, "bed12"),
            Err(LookupError::Ambiguous(vec![
                "ble:A0:9E:1A:12:34:56".into(),
                "serial:bed12".into()
            ]))
        );
        assert_eq!(lookup(&devs, "bed99"), Err(LookupError::Unknown));
        assert_eq!(lookup(&devs, "serial:bed99"), Err(LookupError::Unknown));
    }
}
