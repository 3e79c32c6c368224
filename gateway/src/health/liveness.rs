//! Device liveness (DESIGN §8): per device `online` → `stale` → `offline`, with thresholds per
//! device class.
//!
//! [`LivenessTracker`] is pure: no I/O and no clock reads. Every time is passed in as a
//! [`std::time::Instant`], which is monotonic, so a wall-clock step (NTP catching up after boot,
//! an installer setting the date) never makes a device look silent or back from the future.
//! The daemon feeds it from the writer's per-device counts and logs the transitions; it publishes
//! nothing itself.
//!
//! The class of a device is the part of its id before the first `:` (`serial:bed1` → `serial`).
//! Devices of a class without thresholds (`gateway`, `adapter:…` supervisor events) are not
//! tracked: they report only when something happens, so silence says nothing about them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Whether a device is currently delivering data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceState {
    /// Seen within its class's `stale` threshold.
    Online,
    /// Silent for at least `stale` but less than `offline`.
    Stale,
    /// Silent for at least `offline`, disconnected, or never seen.
    Offline,
}

impl DeviceState {
    /// Lower-case name, as shown by `wardgate status` and logged.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Online => "online",
            DeviceState::Stale => "stale",
            DeviceState::Offline => "offline",
        }
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a device of one class may be silent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Silence after which the device is [`DeviceState::Stale`].
    pub stale: Duration,
    /// Silence after which the device is [`DeviceState::Offline`] (at least `stale`).
    pub offline: Duration,
}

impl Thresholds {
    /// Serial bedside monitors. The ANSAR-B and Masimo monitors send a record about every
    /// second and the CMS50 oximeter 60 frames a second, so 10 s of silence is ten or more
    /// missed records (cable pulled, monitor in a menu, adapter restarting): worth a look, but
    /// not yet an alarm. After 60 s the device is treated as gone. Both are far above the
    /// daemon's 2 s status interval, which bounds how late a transition is noticed.
    pub const SERIAL: Thresholds = Thresholds {
        stale: Duration::from_secs(10),
        offline: Duration::from_secs(60),
    };

    fn state_after(&self, silence: Duration) -> DeviceState {
        if silence >= self.offline {
            DeviceState::Offline
        } else if silence >= self.stale {
            DeviceState::Stale
        } else {
            DeviceState::Online
        }
    }
}

/// One change of a device's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Device id (`serial:bed1`).
    pub device: String,
    /// State before.
    pub from: DeviceState,
    /// State after.
    pub to: DeviceState,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device {} {} → {}", self.device, self.from, self.to)
    }
}

#[derive(Clone, Debug)]
struct Entry {
    state: DeviceState,
    last_seen: Instant,
    thresholds: Thresholds,
    /// Offline by disconnect: stays offline until seen again, whatever the silence.
    disconnected: bool,
}

/// Per-device liveness state machine. See the module documentation.
#[derive(Clone, Debug)]
pub struct LivenessTracker {
    classes: BTreeMap<String, Thresholds>,
    devices: BTreeMap<String, Entry>,
}

impl Default for LivenessTracker {
    fn default() -> Self {
        Self::new()
    }
}

fn class_of(device: &str) -> &str {
    device.split_once(':').map_or(device, |(c, _)| c)
}

impl LivenessTracker {
    /// A tracker with the default thresholds: `serial` → [`Thresholds::SERIAL`].
    pub fn new() -> Self {
        let mut t = LivenessTracker {
            classes: BTreeMap::new(),
            devices: BTreeMap::new(),
        };
        t.set_class("serial", Thresholds::SERIAL);
        t
    }

    /// Sets the thresholds of a device class (for devices first seen from now on).
    pub fn set_class(&mut self, class: &str, thresholds: Thresholds) {
        let thresholds = Thresholds {
            offline: thresholds.offline.max(thresholds.stale),
            ..thresholds
        };
        self.classes.insert(class.to_owned(), thresholds);
    }

    /// Tracks `device` with its own thresholds from now on (it starts `offline` until seen:
    /// a configured device that never spoke is reported as such).
    pub fn track(&mut self, device: &str, thresholds: Thresholds, now: Instant) {
        self.devices.entry(device.to_owned()).or_insert(Entry {
            state: DeviceState::Offline,
            last_seen: now,
            thresholds,
            disconnected: true,
        });
    }

    /// `device` delivered data at `now`. Returns the transition to online if it was not
    /// (a device seen for the first time comes from offline). Ignored for untracked classes.
    pub fn seen(&mut self, device: &str, now: Instant) -> Option<Transition> {
        if let Some(e) = self.devices.get_mut(device) {
            e.last_seen = e.last_seen.max(now);
            e.disconnected = false;
            let from = std::mem::replace(&mut e.state, DeviceState::Online);
            return (from != DeviceState::Online).then(|| Transition {
                device: device.to_owned(),
                from,
                to: DeviceState::Online,
            });
        }
        let thresholds = *self.classes.get(class_of(device))?;
        self.devices.insert(
            device.to_owned(),
            Entry {
                state: DeviceState::Online,
                last_seen: now,
                thresholds,
                disconnected: false,
            },
        );
        Some(Transition {
            device: device.to_owned(),
            from: DeviceState::Offline,
            to: DeviceState::Online,
        })
    }

    /// `device` was disconnected (port closed, unplugged): offline at once, until seen again.
    /// Returns the transition if it was not offline already. Unknown devices are ignored.
    pub fn disconnected(&mut self, device: &str, _now: Instant) -> Option<Transition> {
        let e = self.devices.get_mut(device)?;
        e.disconnected = true;
        let from = std::mem::replace(&mut e.state, DeviceState::Offline);
        (from != DeviceState::Offline).then(|| Transition {
            device: device.to_owned(),
            from,
            to: DeviceState::Offline,
        })
    }

    /// Re-evaluates every device's silence at `now`; returns only the states that changed. The
    /// state depends only on `now` and the last sighting, never on how often this is called, and
    /// only moves towards offline (a sighting is what brings a device back).
    pub fn tick(&mut self, now: Instant) -> Vec<Transition> {
        let mut out = Vec::new();
        for (device, e) in &mut self.devices {
            if e.disconnected {
                continue;
            }
            let to = e
                .thresholds
                .state_after(now.saturating_duration_since(e.last_seen));
            // One step at a time: a device goes stale before it goes offline, even when a late
            // tick finds it past both thresholds (upstream sees every state).
            while to > e.state {
                let next = match e.state {
                    DeviceState::Online => DeviceState::Stale,
                    _ => DeviceState::Offline,
                };
                out.push(Transition {
                    device: device.clone(),
                    from: e.state,
                    to: next,
                });
                e.state = next;
            }
        }
        out
    }

    /// The state of `device` as of the last [`seen`](Self::seen), [`disconnected`](Self::disconnected)
    /// or [`tick`](Self::tick); `None` if it is not tracked.
    pub fn state(&self, device: &str) -> Option<DeviceState> {
        self.devices.get(device).map(|e| e.state)
    }

    /// Every tracked device and its state, by id.
    pub fn states(&self) -> impl Iterator<Item = (&str, DeviceState)> {
        self.devices.iter().map(|(d, e)| (d.as_str(), e.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BED1: &str = "serial:bed1";

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn tr(from: DeviceState, to: DeviceState) -> Transition {
        Transition {
            device: BED1.into(),
            from,
            to,
        }
    }

    #[test]
    fn a_device_seen_recently_is_online() {
        let t0 = Instant::now();
        let mut t = LivenessTracker::new();
        assert_eq!(
            t.seen(BED1, t0),
            Some(tr(DeviceState::Offline, DeviceState::Online))
        );
        assert_eq!(t.tick(t0 + secs(9)), vec![]);
        assert_eq!(t.state(BED1), Some(DeviceState::Online));
        assert_eq!(t.seen(BED1, t0 + secs(9)), None, "already online");
    }

    #[test]
    fn silence_past_stale_makes_it_stale_once() {
        let t0 = Instant::now();
        let mut t = LivenessTracker::new();
        t.seen(BED1, t0);
        assert_eq!(
            t.tick(t0 + secs(10)),
            vec![tr(DeviceState::Online, DeviceState::Stale)]
        );
        assert_eq!(t.tick(t0 + secs(12)), vec![]);
        assert_eq!(t.tick(t0 + secs(59)), vec![]);
        assert_eq!(t.state(BED1), Some(DeviceState::Stale));
    }

    #[test]
    fn silence_past_offline_makes_it_offline() {
        let t0 = Instant::now();
        let mut t = LivenessTracker::new();
        t.seen(BED1, t0);
        t.tick(t0 + secs(30));
        assert_eq!(
            t.tick(t0 + secs(60)),
            vec![tr(DeviceState::Stale, DeviceState::Offline)]
        );
        assert_eq!(t.tick(t0 + secs(600)), vec![]);
        assert_eq!(t.state(BED1), Some(DeviceState::Offline));
    }

    #[test]
    fn a_long_silence_between_ticks_passes_through_stale_to_offline() {
        let t0 = Instant::now();
        let mut t = LivenessTracker::new();
        t.seen(BED1, t0);
        assert_eq!(
            t.tick(t0 + secs(61)),
            vec![
                tr(DeviceState::Online, DeviceState::Stale),
                tr(DeviceState::Stale, DeviceState::Offline)
            ]
        );
    }

    #[test]
    fn being_seen_again_brings_it_back_online_with_a_transition() {
        let t0 = Instant::now();
        let mut t = LivenessTracker::new();
        t.seen(BED1, t0);
        t.tick(t0 + secs(15));
        assert_eq!(
            t.seen(BED1, t0 + secs(16)),
            Some(tr(DeviceState::Stale, DeviceState::Online))
        );
        t.tick(t0 + secs(100));
        assert_eq!(
            t.seen(BED1, t0 + secs(101)),
            Some(tr(DeviceState::Offline, DeviceState::Online))
        );
        // The silence is counted from the new sighting.
        assert_eq!(t.tick(t0 + secs(110)), vec![]);
        assert_eq!(t.state(BED1), Some(DeviceState::Online));
    }

    #[test]
    fn a_disconnect_is_offline_at_once() {
        let t0 = Instant::now();
        let mut t = LivenessTracker::new();
        t.seen(BED1, t0);
        assert_eq!(
            t.disconnected(BED1, t0 + secs(1)),
            Some(tr(DeviceState::Online, DeviceState::Offline))
        );
        assert_eq!(t.state(BED1), Some(DeviceState::Offline));
        assert_eq!(t.disconnected(BED1, t0 + secs(2)), None, "no repeat");
        assert_eq!(t.tick(t0 + secs(3)), vec![], "a tick does not revive it");
        assert_eq!(
            t.seen(BED1, t0 + secs(4)),
            Some(tr(DeviceState::Offline, DeviceState::Online))
        );
    }

    #[test]
    fn a_tracker_is_unaffected_by_how_many_ticks_happen() {
        let t0 = Instant::now();
        let mut once = LivenessTracker::new();
        let mut often = LivenessTracker::new();
        once.seen(BED1, t0);
        often.seen(BED1, t0);
        let mut all = Vec::new();
        for ms in (0..=70_000).step_by(100) {
            all.extend(often.tick(t0 + Duration::from_millis(ms)));
        }
        assert_eq!(
            all,
            vec![
                tr(DeviceState::Online, DeviceState::Stale),
                tr(DeviceState::Stale, DeviceState::Offline)
            ]
        );
        once.tick(t0 + secs(70));
        assert_eq!(once.state(BED1), often.state(BED1));
    }

    #[test]
    fn a_tick_earlier_than_the_last_sighting_keeps_it_online() {
        let t0 = Instant::now() + secs(5);
        let mut t = LivenessTracker::new();
        t.seen(BED1, t0);
        assert_eq!(t.tick(t0 - secs(5)), vec![]);
        assert_eq!(t.state(BED1), Some(DeviceState::Online));
    }

    #[test]
    fn devices_of_a_class_without_thresholds_are_not_tracked() {
        let t0 = Instant::now();
        let mut t = LivenessTracker::new();
        assert_eq!(t.seen("gateway", t0), None);
        assert_eq!(t.seen("adapter:bed1", t0), None);
        assert_eq!(t.tick(t0 + secs(3600)), vec![]);
        assert_eq!(t.state("gateway"), None);
    }

    #[test]
    fn thresholds_are_per_class() {
        let t0 = Instant::now();
        let mut t = LivenessTracker::new();
        t.set_class(
            "ble",
            Thresholds {
                stale: secs(30),
                offline: secs(120),
            },
        );
        t.seen(BED1, t0);
        t.seen("ble:ring1", t0);
        assert_eq!(
            t.tick(t0 + secs(20)),
            vec![tr(DeviceState::Online, DeviceState::Stale)]
        );
        assert_eq!(t.state("ble:ring1"), Some(DeviceState::Online));
    }

    #[test]
    fn a_transition_is_logged_without_values() {
        let s = tr(DeviceState::Online, DeviceState::Stale).to_string();
        assert_eq!(s, "device serial:bed1 online → stale");
    }
}
