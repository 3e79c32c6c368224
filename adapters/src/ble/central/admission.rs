//! Admission (DESIGN §6): which devices the adapter serves, which feed presence, which are
//! refused — the bookkeeping, bounded whatever the number of rotating addresses on the ward.

use super::MAX_TAGS_PER_RULE;
use super::MAX_TRACKED;
use crate::ble::config::{Address, TagRule};
use crate::ble::decode::advertisement::{self, bthome_crypto};
use crate::ble::decode::presence::PresenceAggregator;
use crate::ble::decode::uuid::Uuid;
use crate::observation::Reading;
use crate::retry::RateLimit;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// Refused-device bookkeeping with bounded memory.
pub(super) struct RejectTracker {
    pub(super) last: HashMap<Address, Instant>,
    pub(super) order: VecDeque<Address>,
    pub(super) repeat: Duration,
    /// `rejected_per_minute` reports a minute; the rest are counted for one summary.
    limit: RateLimit,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum RejectDecision {
    /// Send a `rejected` event.
    Report,
    /// Over the per-minute limit: counted for the summary.
    Suppress,
    /// Reported recently.
    Recent,
}

impl RejectTracker {
    pub(super) fn new(repeat: Duration, per_minute: u32) -> Self {
        RejectTracker {
            last: HashMap::new(),
            order: VecDeque::new(),
            repeat,
            limit: RateLimit::new(per_minute, Duration::from_secs(60)),
        }
    }

    pub(super) fn decide(&mut self, a: Address, now: Instant) -> RejectDecision {
        if let Some(t) = self.last.get(&a) {
            if now.duration_since(*t) < self.repeat {
                return RejectDecision::Recent;
            }
        }
        if !self.last.contains_key(&a) {
            while self.last.len() >= MAX_TRACKED {
                match self.order.pop_front() {
                    Some(old) => {
                        self.last.remove(&old);
                    }
                    None => break,
                }
            }
            self.order.push_back(a);
        }
        self.last.insert(a, now);
        if self.limit.allow(now.into_std()) {
            RejectDecision::Report
        } else {
            RejectDecision::Suppress
        }
    }

    /// The number of reports held back, once the minute they belong to is over.
    pub(super) fn take_summary(&mut self, now: Instant) -> Option<u64> {
        self.limit.take_suppressed(now.into_std())
    }
}

/// One tag rule at run time.
pub(super) struct TagState {
    pub(super) rule: TagRule,
    pub(super) service_data: Option<Uuid>,
    pub(super) ibeacon: Option<Uuid>,
    pub(super) addresses: Vec<Address>,
    pub(super) keys: HashMap<Address, [u8; 16]>,
    pub(super) presence: PresenceAggregator,
    /// Latest beacon readings per tag, one per measurement code, sent with the tag's next
    /// presence summary (so at most one observation per tag and quantity per window).
    pub(super) latest: HashMap<String, Vec<Reading>>,
    /// The last accepted encrypted-BTHome frame counter per keyed tag (replay protection,
    /// bthome.io/encryption): a frame whose counter does not increase is not used.
    pub(super) counters: HashMap<Address, u32>,
}

impl TagState {
    pub(super) fn new(rule: &TagRule) -> Self {
        TagState {
            service_data: rule.service_data_uuid(),
            ibeacon: rule.ibeacon(),
            addresses: rule
                .addresses
                .iter()
                .filter_map(|a| Address::parse(a).ok())
                .collect(),
            keys: rule
                .bthome_keys
                .iter()
                .filter_map(|(a, k)| {
                    let a = Address::parse(a).ok()?;
                    let k = bthome_crypto::parse_bindkey(k).ok()?;
                    Some((a, k))
                })
                .collect(),
            presence: PresenceAggregator::new(
                Duration::from_secs(rule.window_s.max(1)),
                MAX_TAGS_PER_RULE,
            ),
            latest: HashMap::new(),
            counters: HashMap::new(),
            rule: rule.clone(),
        }
    }

    /// Whether a decoded BTHome frame of tag `a` with frame counter `counter` may be used:
    /// always for a plain frame (`None`); for an encrypted one only when its counter is above
    /// the last accepted one (then remembered). A replayed or repeated frame is refused. The
    /// memory holds the keyed tags only (at most the rule's `bthome_keys`).
    pub(super) fn accept_counter(&mut self, a: Address, counter: Option<u32>) -> bool {
        let Some(c) = counter else { return true };
        match self.counters.get(&a) {
            Some(&last) if c <= last => false,
            _ => {
                if self.keys.contains_key(&a) {
                    self.counters.insert(a, c);
                }
                true
            }
        }
    }

    /// Keeps `readings` of tag `a` for its next presence summary: each replaces the kept
    /// reading of the same code (the latest value of each quantity wins; quantities a tag sends
    /// in different advertisements are all kept). At most [`MAX_TAGS_PER_RULE`] tags.
    pub(super) fn keep_latest(&mut self, a: Address, readings: Vec<Reading>) {
        let key = a.to_string();
        if readings.is_empty()
            || (self.latest.len() >= MAX_TAGS_PER_RULE && !self.latest.contains_key(&key))
        {
            return;
        }
        let kept = self.latest.entry(key).or_default();
        for r in readings {
            match kept.iter_mut().find(|k| k.code == r.code) {
                Some(k) => *k = r,
                None => kept.push(r),
            }
        }
    }

    pub(super) fn matches(&self, a: Address, props: &Sighting) -> bool {
        self.addresses.contains(&a)
            || self
                .service_data
                .is_some_and(|u| props.service_data.contains_key(&u))
            || self.ibeacon.is_some_and(|want| {
                props
                    .manufacturer_data
                    .get(&advertisement::COMPANY_APPLE)
                    .and_then(|d| {
                        advertisement::ibeacon_from_manufacturer(advertisement::COMPANY_APPLE, d)
                    })
                    .is_some_and(|b| b.uuid == want)
            })
            || self
                .rule
                .name_prefix
                .as_deref()
                .is_some_and(|p| props.name.as_deref().is_some_and(|n| n.starts_with(p)))
    }
}

/// What one advertisement report told us.
#[derive(Default)]
pub(super) struct Sighting {
    pub(super) rssi: Option<i16>,
    pub(super) name: Option<String>,
    pub(super) address_type: Option<String>,
    pub(super) manufacturer_data: HashMap<u16, Vec<u8>>,
    pub(super) service_data: HashMap<Uuid, Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::{mdc, Unit};

    fn keyed_rule(a: &str) -> TagRule {
        TagRule {
            name: "fridges".into(),
            service_data: Some("fcd2".into()),
            ibeacon_uuid: None,
            name_prefix: None,
            addresses: vec![],
            window_s: 10,
            bthome_keys: [(
                a.to_string(),
                "231d39c1d7cc1ab1aee224cd096db932".to_string(),
            )]
            .into_iter()
            .collect(),
            location: None,
        }
    }

    #[test]
    fn encrypted_frames_are_used_only_with_a_rising_counter() {
        let a = Address::parse("54:48:E6:8F:80:A5").unwrap();
        let mut t = TagState::new(&keyed_rule("54:48:E6:8F:80:A5"));
        assert!(t.accept_counter(a, None), "plain frame");
        assert!(t.accept_counter(a, Some(0x3322_1100)));
        assert!(
            !t.accept_counter(a, Some(0x3322_1100)),
            "the same frame again"
        );
        assert!(!t.accept_counter(a, Some(5)), "an older frame replayed");
        assert!(t.accept_counter(a, Some(0x3322_1101)));
        // A tag without a key keeps no memory.
        let b = Address::parse("54:48:E6:8F:80:A6").unwrap();
        assert!(t.accept_counter(b, Some(1)));
        assert!(!t.counters.contains_key(&b));
    }

    #[test]
    fn the_latest_value_of_each_quantity_is_kept_per_tag() {
        let a = Address::parse("54:48:E6:8F:80:A5").unwrap();
        let mut t = TagState::new(&keyed_rule("54:48:E6:8F:80:A5"));
        let r = |code, value| {
            crate::ble::decode::profiles::reading(code, value, Unit::PERCENT, None, &[])
        };
        t.keep_latest(
            a,
            vec![r(mdc::PVT_HUMIDITY_REL, 40.0), r(mdc::TEMP_ROOM, 5.0)],
        );
        t.keep_latest(a, vec![r(mdc::BATTERY_CHARGE, 90.0)]);
        t.keep_latest(a, vec![r(mdc::PVT_HUMIDITY_REL, 41.5)]);
        let kept: Vec<(u32, f64)> = t.latest[&a.to_string()]
            .iter()
            .map(|r| (r.code, r.value))
            .collect();
        assert_eq!(
            kept,
            [
                (mdc::PVT_HUMIDITY_REL, 41.5),
                (mdc::TEMP_ROOM, 5.0),
                (mdc::BATTERY_CHARGE, 90.0)
            ]
        );
    }

    #[test]
    fn reject_tracker_is_bounded_and_rate_limited() {
        let t0 = Instant::now();
        let mut r = RejectTracker::new(Duration::from_secs(600), 30);
        let mut reports = 0;
        for i in 0..(MAX_TRACKED as u32 + 1000) {
            let b = i.to_be_bytes();
            let a = Address([0x40, 0, b[0], b[1], b[2], b[3]]);
            if r.decide(a, t0) == RejectDecision::Report {
                reports += 1;
            }
        }
        assert_eq!(reports, 30);
        assert!(r.last.len() <= MAX_TRACKED && r.order.len() <= MAX_TRACKED);
        assert_eq!(r.take_summary(t0), None, "the minute is not over yet");
        assert_eq!(
            r.take_summary(t0 + Duration::from_secs(61)),
            Some(MAX_TRACKED as u64 + 1000 - 30)
        );
        // A recently reported address is not reported again.
        let a = Address([0xC0, 0, 0, 0, 0, 1]);
        assert_eq!(
            r.decide(a, t0 + Duration::from_secs(61)),
            RejectDecision::Report
        );
        assert_eq!(
            r.decide(a, t0 + Duration::from_secs(62)),
            RejectDecision::Recent
        );
        assert_eq!(
            r.decide(a, t0 + Duration::from_secs(61 + 600)),
            RejectDecision::Report
        );
    }
}
