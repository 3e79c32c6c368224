//! `InflightTracker`: which batches are on the wire and what acknowledges them. Pure: no I/O, no
//! clock reads (times are passed in), unit-tested transition by transition.
//!
//! Design: rumqttc's `publish()` returning means *queued*. The tracker learns the packet id a
//! batch got from the `Outgoing::Publish(pkid)` event, and acknowledges the batch on the broker's
//! PUBACK for that pkid (`broker` mode) or on the upstream ack message naming its number
//! (`upstream` mode). After a reconnect the whole tracker is dropped: the store, not this struct,
//! says what is unacknowledged.
//!
//! **Invariant:** a batch is deleted on a PUBACK only for the packet id rumqttc gave that
//! batch's PUBLISH.
//!
//! How the pairing stays exact (rumqttc 0.25, read in its `client.rs`, `eventloop.rs` and
//! `state.rs`): the client's request channel is FIFO and the event loop takes requests one at a
//! time, so the n-th QoS 1 publish the session *queued* is the n-th `Outgoing::Publish(pkid)`
//! with `pkid != 0` (QoS 0 publishes give pkid 0 and are skipped; a publish that collides with an
//! unacknowledged pkid is announced as `AwaitAck` and gets its `Outgoing::Publish` only after that
//! PUBACK, while the loop reads no further request, so the order holds). The same client also
//! publishes QoS 1 messages that are not batches (`online`, the retained device statuses and
//! heartbeat): each one must take its place in the line too, through [`InflightTracker::other`],
//! or its pkid would be paired with the next batch and that batch deleted on another message's
//! PUBACK. A `try_publish` that fails queued nothing and must record nothing. One tracker lives
//! for one `AsyncClient` (one session): a new session starts a new tracker and a new client.

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
    /// Every QoS 1 publish queued on the client and not yet written, in queue order: `Some(batch)`
    /// for a batch, `None` for any other message.
    awaiting_pkid: VecDeque<Option<u64>>,
    /// Packet id → the batch whose PUBLISH was written with it (until its PUBACK).
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

    /// Batch `number` was queued on the MQTT client at `now` (first send or re-send): call it
    /// right after `try_publish` succeeded, never after it failed.
    pub fn sent(&mut self, number: u64, now: Instant) {
        self.flights.insert(
            number,
            Flight {
                sent_at: now,
                puback: false,
            },
        );
        self.awaiting_pkid.push_back(Some(number));
    }

    /// A QoS 1 message that is not a batch (`online`, a retained status, the heartbeat) was
    /// queued on the MQTT client: its packet id, and so its PUBACK, belongs to no batch. Call it
    /// right after `try_publish` succeeded, never after it failed.
    pub fn other(&mut self) {
        self.awaiting_pkid.push_back(None);
    }

    /// The MQTT client wrote the next queued QoS 1 publish with packet id `pkid` (not 0).
    /// Returns `false` when no queued publish was recorded (a bug in the caller): that pkid then
    /// acknowledges nothing.
    pub fn outgoing_publish(&mut self, pkid: u16) -> bool {
        let next = self.awaiting_pkid.pop_front();
        match next {
            Some(Some(number)) => {
                self.by_pkid.insert(pkid, number);
            }
            Some(None) | None => {
                self.by_pkid.remove(&pkid);
            }
        }
        next.is_some()
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

    /// The bug of issue 9: `online`, retained statuses and the heartbeat are QoS 1 on the same
    /// client; their packet ids must not be paired with the batches queued after them.
    #[test]
    fn broker_mode_other_publishes_between_batches_acknowledge_no_batch() {
        let mut t = InflightTracker::new(AckMode::Broker);
        let now = Instant::now();
        t.other(); // online
        t.other(); // a retained device status
        t.sent(7, now);
        t.other(); // the heartbeat
        t.sent(8, now);
        t.other(); // another device status
        for pkid in 1..=6 {
            assert!(t.outgoing_publish(pkid));
        }
        // The non-batch messages' PUBACKs come first: they acknowledge nothing.
        for pkid in [1, 2, 4, 6] {
            assert_eq!(t.puback(pkid), None, "pkid {pkid} is not a batch's");
        }
        assert!(t.contains(7) && t.contains(8));
        assert_eq!(t.puback(5), Some(8));
        assert_eq!(t.puback(3), Some(7));
        assert!(t.is_empty());
    }

    #[test]
    fn broker_mode_a_pkid_reused_by_another_message_no_longer_names_the_batch() {
        // rumqttc reuses a pkid once its PUBACK came (max_inflight wraps); here a re-sent batch's
        // first copy is acknowledged after the pkid went to a status message.
        let mut t = InflightTracker::new(AckMode::Broker);
        let now = Instant::now();
        t.sent(5, now);
        assert!(t.outgoing_publish(1));
        assert_eq!(t.puback(1), Some(5));
        t.sent(6, now);
        t.other();
        assert!(t.outgoing_publish(2));
        assert!(t.outgoing_publish(1));
        assert_eq!(
            t.puback(1),
            None,
            "pkid 1 now belongs to the status message"
        );
        assert!(t.contains(6));
        assert_eq!(t.puback(2), Some(6));
    }

    #[test]
    fn an_unrecorded_publish_is_reported_and_acknowledges_nothing() {
        let mut t = InflightTracker::new(AckMode::Broker);
        assert!(!t.outgoing_publish(1));
        assert_eq!(t.puback(1), None);
        // A batch queued afterwards still gets its own packet id.
        t.sent(9, Instant::now());
        assert!(t.outgoing_publish(2));
        assert_eq!(t.puback(2), Some(9));
    }

    #[test]
    fn upstream_mode_other_publishes_change_nothing() {
        let mut t = InflightTracker::new(AckMode::Upstream);
        let now = Instant::now();
        t.other();
        t.sent(3, now);
        t.other();
        t.sent(4, now);
        for pkid in 1..=4 {
            assert!(t.outgoing_publish(pkid));
        }
        for pkid in 1..=4 {
            assert_eq!(t.puback(pkid), None, "a PUBACK is not delivery upstream");
        }
        assert!(t.contains(3) && t.contains(4));
        assert!(t.upstream_ack(4));
        assert!(t.upstream_ack(3));
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
