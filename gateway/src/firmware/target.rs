//! Job targets → configured device ids (pure).
//!
//! A gateway relays firmware only to devices it is configured for, in the classes its
//! `[firmware.classes]` table names (`class = ["bed12-spo2", "ble:A0:9E:…"]`). A job's target is
//! a class and optionally some devices; [`Fleet::resolve`] turns it into device ids or refuses
//! with a [`Reason`]: a class not configured here (`unknown_class`), a device not configured
//! (`unknown_device`), a name that is both a serial and a BLE device (`ambiguous_device`), a
//! device of another class (`device_not_in_class`), nothing at all (`no_devices`). The job's
//! `from_versions` is not checked here: only the device knows what it runs (the relay asks).

use super::reason::{refuse, Reason, Refusal};
use crate::config::devices::{self, ConfiguredDevice, LookupError};
use std::collections::BTreeMap;

/// The devices and firmware classes of one gateway config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fleet {
    devices: Vec<ConfiguredDevice>,
    /// Class → device ids (references that do not resolve are left out; check-config refuses
    /// such a config anyway).
    classes: BTreeMap<String, Vec<String>>,
}

impl Fleet {
    /// The fleet of a config (`[[serial]]`, `[[ble.device]]`, `[firmware.classes]`).
    pub fn from_config(c: &crate::config::Config) -> Fleet {
        let classes = c
            .firmware
            .as_ref()
            .map(|f| {
                f.classes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Fleet::new(devices::configured(c), classes)
    }

    /// A fleet from devices and classes of device references.
    pub fn new(devices: Vec<ConfiguredDevice>, classes: BTreeMap<String, Vec<String>>) -> Fleet {
        let classes = classes
            .into_iter()
            .map(|(class, refs)| {
                let mut ids: Vec<String> = refs
                    .iter()
                    .filter_map(|r| devices::lookup(&devices, r).ok().map(|d| d.id.clone()))
                    .collect();
                ids.dedup();
                (class, ids)
            })
            .collect();
        Fleet { devices, classes }
    }

    /// Whether `class` is configured.
    pub fn has_class(&self, class: &str) -> bool {
        self.classes.contains_key(class)
    }

    /// The device ids a job's target (`class`, and `devices` when it lists some) names, in the
    /// order given (or the class's order), without duplicates.
    pub fn resolve(&self, class: &str, devices: Option<&[String]>) -> Result<Vec<String>, Refusal> {
        let Some(members) = self.classes.get(class) else {
            return Err(refuse(
                Reason::UnknownClass,
                format!(
                    "class `{}` is not configured on this gateway ([firmware.classes] has {})",
                    class,
                    if self.classes.is_empty() {
                        "none".to_owned()
                    } else {
                        self.classes.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            ));
        };
        let mut out: Vec<String> = Vec::new();
        match devices {
            None => out.extend(members.iter().cloned()),
            Some(refs) => {
                for r in refs {
                    let d = devices::lookup(&self.devices, r).map_err(|e| match e {
                        LookupError::Unknown => refuse(
                            Reason::UnknownDevice,
                            format!("device `{r}` is not configured on this gateway"),
                        ),
                        LookupError::Ambiguous(ids) => refuse(
                            Reason::AmbiguousDevice,
                            format!(
                                "device `{r}` could be any of {}: name it by id",
                                ids.join(", ")
                            ),
                        ),
                    })?;
                    if !members.contains(&d.id) {
                        return Err(refuse(
                            Reason::DeviceNotInClass,
                            format!("device `{r}` ({}) is not in class `{class}`", d.id),
                        ));
                    }
                    if !out.contains(&d.id) {
                        out.push(d.id.clone());
                    }
                }
            }
        }
        if out.is_empty() {
            return Err(refuse(
                Reason::NoDevices,
                format!("class `{class}` has no device on this gateway"),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Fleet {
        let d = |id: &str, name: &str| ConfiguredDevice {
            id: id.into(),
            name: name.into(),
        };
        Fleet::new(
            vec![
                d("serial:bed12", "bed12"),
                d("ble:A0:9E:1A:12:34:56", "bed12"),
                d("serial:bed14", "bed14"),
                d("serial:bed16", "bed16"),
            ],
            BTreeMap::from([
                (
                    "acme-spo2".into(),
                    vec!["serial:bed12".into(), "bed14".into()],
                ),
                ("polar-hr".into(), vec!["a0:9e:1a:12:34:56".into()]),
                ("empty".into(), vec![]),
            ]),
        )
    }

    type Target = (String, Option<Vec<String>>);

    fn target(class: &str, devices: Option<&[&str]>) -> Target {
        (
            class.into(),
            devices.map(|d| d.iter().map(|s| s.to_string()).collect()),
        )
    }

    fn resolve(f: &Fleet, t: &Target) -> Result<Vec<String>, Refusal> {
        f.resolve(&t.0, t.1.as_deref())
    }

    fn reason(t: Target) -> Reason {
        resolve(&fleet(), &t).unwrap_err().reason
    }

    #[test]
    fn a_class_resolves_to_its_devices_and_a_list_to_those_named() {
        let f = fleet();
        assert_eq!(
            resolve(&f, &target("acme-spo2", None)).unwrap(),
            ["serial:bed12", "serial:bed14"]
        );
        assert_eq!(
            resolve(&f, &target("acme-spo2", Some(&["bed14", "serial:bed14"]))).unwrap(),
            ["serial:bed14"]
        );
        assert_eq!(
            resolve(&f, &target("polar-hr", Some(&["ble:A0:9E:1A:12:34:56"]))).unwrap(),
            ["ble:A0:9E:1A:12:34:56"]
        );
    }

    #[test]
    fn unknown_ambiguous_and_foreign_targets_are_refused_with_their_reason() {
        assert_eq!(reason(target("nope", None)), Reason::UnknownClass);
        assert_eq!(
            reason(target("acme-spo2", Some(&["bed99"]))),
            Reason::UnknownDevice
        );
        assert_eq!(
            reason(target("acme-spo2", Some(&["bed12"]))),
            Reason::AmbiguousDevice
        );
        assert_eq!(
            reason(target("acme-spo2", Some(&["bed16"]))),
            Reason::DeviceNotInClass
        );
        assert_eq!(reason(target("empty", None)), Reason::NoDevices);
    }
}
