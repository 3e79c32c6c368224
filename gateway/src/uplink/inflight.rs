//! `InflightTracker`: which batches are on the wire and what acknowledges them. Pure: no I/O, no
//! clock reads (times are passed in), unit-tested transition by transition.
//!
//! Design: rumqttc's `publish()` returning means *queued*. The tracker learns the packet id a
//! batch got from the `Outgoing::Publish(pkid)` event (emitted in request order), and
//! acknowledges the batch on the broker's PUBACK for that pkid (`broker` mode) or on the upstream
//! ack message naming its number (`upstream` mode). After a reconnect the whole tracker is
//! dropped: the store, not this struct, says what is unacknowledged.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::AckMode;

/// State of one in-flight batch.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Flight {
    /// When it was (last) handed to the MQTT client.
    sent_at: Instant,
    /// Whether the broker's PUBACK arrived (upstream mode still waits for the upstream ack).
    puback: bool,
}

/// Tracks in-flight batches for one MQTT session.
#[derive(Debug)]
pub struct InflightTracker {
    mode: AckMode,
    flights: BTreeMap<u64, Flight>,
    awaiting_pkid: VecDeque<u64>,
    by_pkid: HashMap<u16, u64>,
}

impl InflightTracker {
    /// An empty tracker for `mode`.
    pub fn new(mode: AckMode) -> Self {
        InflightTracker {
            mode,
            flights: BTreeMap::new(),
            awaiting_pkid: VecDeque::new(),
            by_pkid: HashMap::new(),
        }
    }

    /// Number of batches in flight.
    pub fn len(&self) -> usize {
        self.flights.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.flights.is_empty()
    }

    /// Whether batch `number` is in flight.
    pub fn contains(&self, number: u64) -> bool {
        self.flights.contains_key(&number)
    }

    /// Batch `number` was handed to the MQTT client at `now` (first send or re-send).
    pub fn sent(&mut self, number: u64, now: Instant) {
        self.flights.insert(
            number,
            Flight {
                sent_at: now,
                puback: false,
            },
        );
        self.awaiting_pkid.push_back(number);
    }

    /// The MQTT client wrote the next queued publish with packet id `pkid`.
    pub fn outgoing_publish(&mut self, pkid: u16) {
        if let Some(number) = self.awaiting_pkid.pop_front() {
            self.by_pkid.insert(pkid, number);
        }
    }

    /// The broker acknowledged `pkid`. Returns the batch that is now delivered (broker mode), or
    /// `None` (upstream mode keeps waiting for the upstream ack; unknown pkids are ignored).
    pub fn puback(&mut self, pkid: u16) -> Option<u64> {
        let number = self.by_pkid.remove(&pkid)?;
        match self.mode {
            AckMode::Broker => self.flights.remove(&number).map(|_| number),
            AckMode::Upstream => {
                if let Some(f) = self.flights.get_mut(&number) {
                    f.puback = true;
                }
                None
            }
        }
    }

    /// The upstream receiver acknowledged `number`. Returns `true` when it was in flight. In
    /// broker mode upstream acks are ignored.
    pub fn upstream_ack(&mut self, number: u64) -> bool {
        self.mode == AckMode::Upstream && self.flights.remove(&number).is_some()
    }

    /// Batches sent longer than `timeout` before `now` without their acknowledgement: to be
    /// re-sent with the same number.
    pub fn overdue(&self, now: Instant, timeout: Duration) -> Vec<u64> {
        self.flights
            .iter()
            .filter(|(_, f)| now.saturating_duration_since(f.sent_at) >= timeout)
            .map(|(n, _)| *n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_mode_batch_is_delivered_on_its_own_puback() {
        let mut t = InflightTracker::new(AckMode::Broker);
        let now = Instant::now();
        t.sent(7, now);
        t.sent(8, now);
        t.outgoing_publish(1);
        t.outgoing_publish(2);
        assert_eq!(t.puback(2), Some(8));
        assert_eq!(t.puback(1), Some(7));
        assert!(t.is_empty());
    }

    #[test]
    fn upstream_mode_puback_alone_does_not_deliver() {
        let mut t = InflightTracker::new(AckMode::Upstream);
        t.sent(3, Instant::now());
        t.outgoing_publish(10);
        assert_eq!(t.puback(10), None);
        assert!(t.contains(3));
        assert!(t.upstream_ack(3));
        assert!(!t.contains(3));
    }

    #[test]
    fn unknown_pkid_and_stray_acks_are_ignored() {
        let mut t = InflightTracker::new(AckMode::Broker);
        assert_eq!(t.puback(99), None);
        assert!(!t.upstream_ack(1));
        let mut u = InflightTracker::new(AckMode::Upstream);
        assert!(!u.upstream_ack(42));
    }

    #[test]
    fn overdue_batches_are_listed_for_resend_with_their_number() {
        let mut t = InflightTracker::new(AckMode::Upstream);
        let t0 = Instant::now();
        t.sent(1, t0);
        t.sent(2, t0 + Duration::from_secs(20));
        assert_eq!(
            t.overdue(t0 + Duration::from_secs(30), Duration::from_secs(30)),
            vec![1]
        );
        t.sent(1, t0 + Duration::from_secs(30));
        assert!(t
            .overdue(t0 + Duration::from_secs(31), Duration::from_secs(30))
            .is_empty());
    }

    #[test]
    fn resend_maps_the_new_pkid_to_the_same_batch() {
        let mut t = InflightTracker::new(AckMode::Broker);
        let now = Instant::now();
        t.sent(5, now);
        t.outgoing_publish(1);
        t.sent(5, now);
        t.outgoing_publish(2);
        assert_eq!(t.puback(2), Some(5));
        assert_eq!(
            t.puback(1),
            None,
            "the first copy's PUBACK after delivery changes nothing"
        );
    }
}
