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
    /// Latest beacon readings per tag, sent with the tag's next presence summary.
    pub(super) latest: HashMap<String, Vec<Reading>>,
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
            rule: rule.clone(),
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
