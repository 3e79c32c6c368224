//! Liveness over MQTT (DESIGN §8): the retained per-device status and the gateway heartbeat.
//!
//! Both are CBOR maps (text keys) that the uplink signs as COSE_Sign1 like every batch (same key,
//! same `kid`; `wardgate verify` prints them) and publishes **retained**, QoS 1:
//!
//! | topic | when | payload |
//! |---|---|---|
//! | `…/device/{device}/status` | on every liveness transition (online → stale → offline → online) | [`device_status`] |
//! | `…/heartbeat` | every `[uplink] heartbeat_s` | [`heartbeat`] |
//!
//! The daemon's status loop produces them into a [`crate::uplink::RetainedSet`] (latest payload per topic
//! suffix); the uplink publishes what changed while connected and everything at each new
//! session, so a broker restarted without persistence is repopulated and an upstream that
//! subscribes late gets the current state. CDDL in `docs/wire-format.md`.

use ciborium::Value;

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (text(k), v)).collect())
}

fn int(n: i64) -> Value {
    Value::Integer(n.into())
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing CBOR into a Vec cannot fail.
    let _ = ciborium::into_writer(v, &mut out);
    out
}

/// What the retained status of one device says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceStatus {
    /// Device id (`serial:bed1`, `ble:00:22:D0:90:4C:14`).
    pub device: String,
    /// `online`, `stale` or `offline`.
    pub state: String,
    /// Wall-clock ms of the transition.
    pub since_ms: i64,
    /// Wall-clock ms of the last row accepted from the device (0: never).
    pub last_seen_ms: i64,
    /// Last battery level reported, % (MDC_ATTR_VAL_BATT_CHARGE).
    pub battery_pct: Option<f64>,
    /// Last RSSI heard, dBm (BLE).
    pub rssi_dbm: Option<i64>,
    /// `error` events from the device or its adapter since the daemon started.
    pub errors: u64,
    /// The last of them (installer text, never clinical values).
    pub last_error: Option<String>,
}

/// The topic suffix of a device's status: `device/{device}/status` (`/`, `+`, `#` → `_`).
pub fn device_topic(device: &str) -> String {
    format!("device/{}/status", device.replace(['/', '+', '#'], "_"))
}

/// CBOR payload of a device status:
/// `{ "v": 1, "kind": "device-status", "gateway", "device", "state", "since", "last_seen",
/// ? "battery", ? "rssi", "errors", ? "last_error" }` (times in Unix ms).
pub fn device_status(gateway: &str, s: &DeviceStatus) -> Vec<u8> {
    let mut e = vec![
        ("v", int(1)),
        ("kind", text("device-status")),
        ("gateway", text(gateway)),
        ("device", text(&s.device)),
        ("state", text(&s.state)),
        ("since", int(s.since_ms)),
        ("last_seen", int(s.last_seen_ms)),
    ];
    if let Some(b) = s.battery_pct {
        e.push(("battery", Value::Float(b)));
    }
    if let Some(r) = s.rssi_dbm {
        e.push(("rssi", int(r)));
    }
    e.push(("errors", int(s.errors as i64)));
    if let Some(l) = &s.last_error {
        e.push(("last_error", text(l)));
    }
    encode(&map(e))
}

/// What the heartbeat says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Heartbeat {
    /// Gateway, site, ward.
    pub gateway: String,
    /// Site id.
    pub site: String,
    /// Ward id.
    pub ward: String,
    /// Wall-clock ms when it was made.
    pub time_ms: i64,
    /// Seconds since the daemon started (monotonic).
    pub uptime_s: u64,
    /// Rows waiting for an acknowledgement.
    pub queue_depth: u64,
    /// Age of the oldest of them, seconds (`None`: queue empty).
    pub oldest_unsent_age_s: Option<u64>,
    /// Bytes of live data in the store.
    pub store_bytes: u64,
    /// Whether the store is full now, and rows refused for it since start.
    pub store_full: (bool, u64),
    /// Whether the system clock is known to be synchronised.
    pub clock_synced: bool,
    /// Uplink state: connected, last error, counters.
    pub uplink_connected: bool,
    /// Batches acknowledged since start.
    pub batches_acked: u64,
    /// Messages on the ack topic refused as not authentic since start (they deleted nothing).
    pub acks_refused: u64,
    /// Adapters: name, failures, restarts.
    pub adapters: Vec<(String, u64, u64)>,
    /// Devices per liveness state.
    pub devices_online: u64,
    /// Devices stale.
    pub devices_stale: u64,
    /// Devices offline.
    pub devices_offline: u64,
}

/// CBOR payload of the heartbeat:
/// `{ "v": 1, "kind": "heartbeat", "gateway", "site", "ward", "time", "uptime_s",
/// "queue_depth", "oldest_unsent_age_s": uint / null, "store_bytes", "store_full", "rows_refused",
/// "clock_synced",
/// "uplink": { "connected", "batches_acked", "acks_refused" }, "adapters": [* { "name", "failures",
/// "restarts" }], "devices": { "online", "stale", "offline" } }`.
pub fn heartbeat(h: &Heartbeat) -> Vec<u8> {
    let adapters = h
        .adapters
        .iter()
        .map(|(n, f, r)| {
            map(vec![
                ("name", text(n)),
                ("failures", int(*f as i64)),
                ("restarts", int(*r as i64)),
            ])
        })
        .collect();
    encode(&map(vec![
        ("v", int(1)),
        ("kind", text("heartbeat")),
        ("gateway", text(&h.gateway)),
        ("site", text(&h.site)),
        ("ward", text(&h.ward)),
        ("time", int(h.time_ms)),
        ("uptime_s", int(h.uptime_s as i64)),
        ("queue_depth", int(h.queue_depth as i64)),
        (
            "oldest_unsent_age_s",
            h.oldest_unsent_age_s.map_or(Value::Null, |a| int(a as i64)),
        ),
        ("store_bytes", int(h.store_bytes as i64)),
        ("store_full", Value::Bool(h.store_full.0)),
        ("rows_refused", int(h.store_full.1 as i64)),
        ("clock_synced", Value::Bool(h.clock_synced)),
        (
            "uplink",
            map(vec![
                ("connected", Value::Bool(h.uplink_connected)),
                ("batches_acked", int(h.batches_acked as i64)),
                ("acks_refused", int(h.acks_refused as i64)),
            ]),
        ),
        ("adapters", Value::Array(adapters)),
        (
            "devices",
            map(vec![
                ("online", int(h.devices_online as i64)),
                ("stale", int(h.devices_stale as i64)),
                ("offline", int(h.devices_offline as i64)),
            ]),
        ),
    ]))
}

/// A signed status payload as JSON (for `wardgate verify` and tests): CBOR map → JSON object.
pub fn to_json(cbor: &[u8]) -> Option<serde_json::Value> {
    let v: Value = ciborium::from_reader(cbor).ok()?;
    fn conv(v: Value) -> serde_json::Value {
        match v {
            Value::Integer(i) => serde_json::json!(i128::from(i) as i64),
            Value::Float(f) => serde_json::json!(f),
            Value::Text(t) => serde_json::Value::String(t),
            Value::Bool(b) => serde_json::Value::Bool(b),
            Value::Null => serde_json::Value::Null,
            Value::Array(a) => serde_json::Value::Array(a.into_iter().map(conv).collect()),
            Value::Map(m) => serde_json::Value::Object(
                m.into_iter()
                    .filter_map(|(k, v)| Some((k.into_text().ok()?, conv(v))))
                    .collect(),
            ),
            Value::Bytes(b) => serde_json::Value::String(hex::encode(b)),
            Value::Tag(_, v) => conv(*v),
            _ => serde_json::Value::Null,
        }
    }
    Some(conv(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_status_round_trips_through_json() {
        let s = DeviceStatus {
            device: "ble:00:22:D0:90:4C:14".into(),
            state: "stale".into(),
            since_ms: 1_795_939_200_000,
            last_seen_ms: 1_795_939_190_000,
            battery_pct: Some(87.0),
            rssi_dbm: None,
            errors: 2,
            last_error: Some("link lost".into()),
        };
        let j = to_json(&device_status("gw1", &s)).unwrap();
        assert_eq!(j["kind"], "device-status");
        assert_eq!(j["state"], "stale");
        assert_eq!(j["battery"], 87.0);
        assert!(j.get("rssi").is_none());
        assert_eq!(j["since"], 1_795_939_200_000i64);
        assert_eq!(device_topic("serial:a/b"), "device/serial:a_b/status");
    }

    #[test]
    fn heartbeat_fields() {
        let h = Heartbeat {
            gateway: "gw1".into(),
            queue_depth: 5,
            oldest_unsent_age_s: None,
            adapters: vec![("ble".into(), 1, 1)],
            devices_online: 2,
            ..Default::default()
        };
        let j = to_json(&heartbeat(&h)).unwrap();
        assert_eq!(j["queue_depth"], 5);
        assert!(j["oldest_unsent_age_s"].is_null());
        assert_eq!(j["adapters"][0]["name"], "ble");
        assert_eq!(j["devices"]["online"], 2);
    }
}
