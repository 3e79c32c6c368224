//! What the receiver tells its operator: the counters ([`ReceiverStats`]), the totals line it
//! logs every minute when they changed and once when it stops, and [`OncePerSender`], which
//! keeps a flood from one sender (oversize or unverifiable messages) to one log line.

use std::collections::{BTreeMap, HashSet};

/// Counters of a running receiver (shared with the demo and tests).
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct ReceiverStats {
    /// Messages whose signature verified.
    pub verified_messages: u64,
    /// Messages refused (not COSE, unknown kid, bad signature, bad version or payload, topic
    /// mismatch): PUBACKed, never stored, never acknowledged upstream.
    pub rejected_messages: u64,
    /// Messages larger than `max_message_bytes`: PUBACKed and dropped unread.
    pub oversize_messages: u64,
    /// Messages that repeated a batch already stored (re-sends).
    pub duplicate_batches: u64,
    /// New observations written, per device.
    pub delivered: BTreeMap<String, u64>,
    /// New observations stored with an absent value (their value was not a finite number).
    pub invalid_values: u64,
    /// New device events written.
    pub events: u64,
    /// Raw messages written to `raw_dir`.
    pub raw_messages: u64,
    /// Raw copies that could not be written (disk full, …).
    pub raw_failures: u64,
    /// Messages received and not yet finished (verified, stored, acknowledged).
    pub queued: u64,
    /// The most messages ever waiting at once.
    pub queued_max: u64,
}

impl ReceiverStats {
    /// The totals line.
    pub fn totals(&self) -> String {
        format!(
            "receiver totals: verified={} stored_observations={} events={} duplicates={} rejected={} oversize={} invalid_values={} raw_written={} raw_failures={} queued={} queued_max={}",
            self.verified_messages,
            self.delivered.values().sum::<u64>(),
            self.events,
            self.duplicate_batches,
            self.rejected_messages,
            self.oversize_messages,
            self.invalid_values,
            self.raw_messages,
            self.raw_failures,
            self.queued,
            self.queued_max,
        )
    }
}

/// Remembers which senders were logged already, up to a bound.
#[derive(Debug)]
pub struct OncePerSender {
    seen: HashSet<String>,
    cap: usize,
    full_noted: bool,
}

/// What [`OncePerSender::note`] says to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Noted {
    /// First from this sender: log it.
    First,
    /// Logged before: count only.
    Again,
    /// Too many senders remembered: log once that further ones are only counted.
    Full,
}

impl OncePerSender {
    /// Remembers at most `cap` senders.
    pub fn new(cap: usize) -> Self {
        OncePerSender {
            seen: HashSet::new(),
            cap,
            full_noted: false,
        }
    }

    /// Notes one message from `sender`.
    pub fn note(&mut self, sender: &str) -> Noted {
        if self.seen.contains(sender) {
            Noted::Again
        } else if self.seen.len() < self.cap {
            self.seen.insert(sender.to_owned());
            Noted::First
        } else if !self.full_noted {
            self.full_noted = true;
            Noted::Full
        } else {
            Noted::Again
        }
    }
}

/// The sender a topic claims (its gateway level), or the whole topic; for logs only, never
/// trusted.
pub fn claimed_sender(topic: &str) -> String {
    match crate::mqtt::parse_batch(topic) {
        Some((site, ward, gw)) => format!("{site}/{ward}/{gw}"),
        None => topic.chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_sender_is_bounded() {
        let mut o = OncePerSender::new(2);
        assert_eq!(o.note("a"), Noted::First);
        assert_eq!(o.note("a"), Noted::Again);
        assert_eq!(o.note("b"), Noted::First);
        assert_eq!(o.note("c"), Noted::Full);
        assert_eq!(o.note("d"), Noted::Again);
        assert_eq!(o.note("b"), Noted::Again);
    }

    #[test]
    fn claimed_senders() {
        assert_eq!(claimed_sender("wardgate/v1/s/w/gw1/batch"), "s/w/gw1");
        assert_eq!(claimed_sender("other/topic"), "other/topic");
    }

    #[test]
    fn totals_name_every_counter() {
        let mut s = ReceiverStats::default();
        s.delivered.insert("a".into(), 3);
        s.delivered.insert("b".into(), 4);
        s.oversize_messages = 1;
        let t = s.totals();
        assert!(t.contains("stored_observations=7"), "{t}");
        assert!(t.contains("oversize=1"), "{t}");
    }
}
