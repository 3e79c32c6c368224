//! Placeholder until the presence aggregator lands (branch ble-pure).
#![allow(missing_docs)]
use std::time::{Duration, Instant};

pub struct PresenceSummary {
    pub key: String,
    pub count: u64,
    pub rssi_min: i16,
    pub rssi_median: i16,
    pub rssi_max: i16,
}

pub struct PresenceAggregator;

impl PresenceAggregator {
    pub fn new(_window: Duration, _max: usize) -> Self {
        PresenceAggregator
    }
    pub fn record(&mut self, _key: &str, _rssi: i16, _now: Instant) {}
    pub fn drain_due(&mut self, _now: Instant) -> Vec<PresenceSummary> {
        Vec::new()
    }
    pub fn flush_all(&mut self) -> Vec<PresenceSummary> {
        Vec::new()
    }
}
