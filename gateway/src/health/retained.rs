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
//!
//! Both carry the firmware each device last reported (issue 10): the device status its own
//! (`firmware`, `firmware_source`: `smp` = the running MCUboot image over SMP, `dis` = BLE Device
//! Information 0x2A26), the heartbeat a map device → version. Both keys are optional, so
//! messages of older gateways still decode. [`decode`] is the upstream's typed reader (bounded,
//! fuzzed: `fuzz/fuzz_targets/retained_status.rs`); `wardgate verify` checks a status with it.

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
    /// The firmware version the device last reported, if any.
    pub firmware: Option<String>,
    /// Where that version came from: `smp` (the running image's MCUboot version, image list)
    /// or `dis` (BLE Device Information, Firmware Revision String 0x2A26).
    pub firmware_source: Option<String>,
    /// Where the device is, as configured (`location`, e.g. `ward-7/bed-12`; issue 11 item 7).
    pub location: Option<String>,
}

/// The topic suffix of a device's status: `device/{device}/status` (`/`, `+`, `#` → `_`).
pub fn device_topic(device: &str) -> String {
    format!("device/{}/status", device.replace(['/', '+', '#'], "_"))
}

/// CBOR payload of a device status:
/// `{ "v": 1, "kind": "device-status", "gateway", "device", "state", "since", "last_seen",
/// ? "battery", ? "rssi", "errors", ? "last_error", ? "firmware", ? "firmware_source",
/// ? "location" }` (times in Unix ms).
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
    if let Some(f) = &s.firmware {
        e.push(("firmware", text(f)));
    }
    if let Some(f) = &s.firmware_source {
        e.push(("firmware_source", text(f)));
    }
    if let Some(l) = &s.location {
        e.push(("location", text(l)));
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
    /// The firmware version each device last reported: device id → version (devices that
    /// never said are absent).
    pub firmware: Vec<(String, String)>,
}

/// CBOR payload of the heartbeat:
/// `{ "v": 1, "kind": "heartbeat", "gateway", "site", "ward", "time", "uptime_s",
/// "queue_depth", "oldest_unsent_age_s": uint / null, "store_bytes", "store_full", "rows_refused",
/// "clock_synced",
/// "uplink": { "connected", "batches_acked", "acks_refused" }, "adapters": [* { "name", "failures",
/// "restarts" }], "devices": { "online", "stale", "offline" }, ? "firmware": { * device =>
/// version } }` (`firmware` left out when no device reported one).
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
    let mut entries = vec![
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
    ];
    if !h.firmware.is_empty() {
        entries.push((
            "firmware",
            Value::Map(h.firmware.iter().map(|(d, v)| (text(d), text(v))).collect()),
        ));
    }
    encode(&map(entries))
}

/// Most bytes a retained status payload may have for [`decode`] (a heartbeat of a gateway with
/// hundreds of devices stays far below).
pub const MAX_RETAINED_BYTES: usize = 256 * 1024;
/// Deepest CBOR nesting [`decode`] reads (the payloads nest 3 deep).
const MAX_DEPTH: usize = 8;

/// A retained payload as the upstream reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum Retained {
    /// A device status, with the gateway that sent it.
    DeviceStatus {
        /// The sending gateway.
        gateway: String,
        /// What it says.
        status: DeviceStatus,
    },
    /// A heartbeat.
    Heartbeat(Heartbeat),
}

/// Why a retained payload does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RetainedError {
    /// Larger than [`MAX_RETAINED_BYTES`].
    #[error("{0} bytes: larger than a retained status may be")]
    TooLarge(usize),
    /// Not CBOR, or nested deeper than the payloads do.
    #[error("not CBOR: {0}")]
    Cbor(String),
    /// Not a map with text keys, or `v` is not 1.
    #[error("not a version-1 status map")]
    NotStatus,
    /// `kind` is neither `device-status` nor `heartbeat`.
    #[error("unknown kind `{0}`")]
    Kind(String),
    /// A field is missing or of the wrong type.
    #[error("field `{0}` missing or of the wrong type")]
    Field(&'static str),
}

struct Fields<'a>(&'a [(Value, Value)]);

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0
            .iter()
            .find(|(k, _)| k.as_text() == Some(key))
            .map(|(_, v)| v)
    }
    fn text(&self, key: &'static str) -> Result<String, RetainedError> {
        self.opt_text(key)?.ok_or(RetainedError::Field(key))
    }
    fn opt_text(&self, key: &'static str) -> Result<Option<String>, RetainedError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Text(t)) => Ok(Some(t.clone())),
            Some(_) => Err(RetainedError::Field(key)),
        }
    }
    fn int(&self, key: &'static str) -> Result<i64, RetainedError> {
        self.opt_int(key)?.ok_or(RetainedError::Field(key))
    }
    fn opt_int(&self, key: &'static str) -> Result<Option<i64>, RetainedError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Integer(i)) => i64::try_from(*i)
                .map(Some)
                .map_err(|_| RetainedError::Field(key)),
            Some(_) => Err(RetainedError::Field(key)),
        }
    }
    fn uint(&self, key: &'static str) -> Result<u64, RetainedError> {
        u64::try_from(self.int(key)?).map_err(|_| RetainedError::Field(key))
    }
    fn opt_uint(&self, key: &'static str) -> Result<Option<u64>, RetainedError> {
        self.opt_int(key)?
            .map(|i| u64::try_from(i).map_err(|_| RetainedError::Field(key)))
            .transpose()
    }
    fn bool(&self, key: &'static str) -> Result<bool, RetainedError> {
        match self.get(key) {
            Some(Value::Bool(b)) => Ok(*b),
            _ => Err(RetainedError::Field(key)),
        }
    }
    fn map(&self, key: &'static str) -> Result<Fields<'a>, RetainedError> {
        match self.get(key) {
            Some(Value::Map(m)) => Ok(Fields(m)),
            _ => Err(RetainedError::Field(key)),
        }
    }
}

/// Reads a retained device status or heartbeat payload (the CBOR inside the COSE_Sign1; see
/// [`device_status`], [`heartbeat`] and docs/wire-format.md). Pure, bounded (size, depth),
/// never panics. Optional fields absent in older gateways' messages (`battery`, `rssi`,
/// `last_error`, `firmware`, `firmware_source`, `location`, the heartbeat's `firmware`) decode as absent;
/// unknown extra keys are ignored (a newer gateway may add some).
pub fn decode(cbor: &[u8]) -> Result<Retained, RetainedError> {
    if cbor.len() > MAX_RETAINED_BYTES {
        return Err(RetainedError::TooLarge(cbor.len()));
    }
    let v: Value = ciborium::de::from_reader_with_recursion_limit(cbor, MAX_DEPTH)
        .map_err(|e| RetainedError::Cbor(e.to_string()))?;
    let Value::Map(m) = &v else {
        return Err(RetainedError::NotStatus);
    };
    let f = Fields(m);
    if f.opt_int("v").ok().flatten() != Some(1) {
        return Err(RetainedError::NotStatus);
    }
    match f.text("kind")?.as_str() {
        "device-status" => {
            let battery_pct = match f.get("battery") {
                None | Some(Value::Null) => None,
                Some(Value::Float(x)) => Some(*x),
                Some(Value::Integer(i)) => Some(i128::from(*i) as f64),
                Some(_) => return Err(RetainedError::Field("battery")),
            };
            Ok(Retained::DeviceStatus {
                gateway: f.text("gateway")?,
                status: DeviceStatus {
                    device: f.text("device")?,
                    state: f.text("state")?,
                    since_ms: f.int("since")?,
                    last_seen_ms: f.int("last_seen")?,
                    battery_pct,
                    rssi_dbm: f.opt_int("rssi")?,
                    errors: f.uint("errors")?,
                    last_error: f.opt_text("last_error")?,
                    firmware: f.opt_text("firmware")?,
                    firmware_source: f.opt_text("firmware_source")?,
                    location: f.opt_text("location")?,
                },
            })
        }
        "heartbeat" => {
            let uplink = f.map("uplink")?;
            let devices = f.map("devices")?;
            let adapters = match f.get("adapters") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|a| match a {
                        Value::Map(m) => {
                            let a = Fields(m);
                            Ok((a.text("name")?, a.uint("failures")?, a.uint("restarts")?))
                        }
                        _ => Err(RetainedError::Field("adapters")),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err(RetainedError::Field("adapters")),
            };
            let firmware = match f.get("firmware") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Map(m)) => m
                    .iter()
                    .map(|(k, v)| match (k, v) {
                        (Value::Text(d), Value::Text(v)) => Ok((d.clone(), v.clone())),
                        _ => Err(RetainedError::Field("firmware")),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                Some(_) => return Err(RetainedError::Field("firmware")),
            };
            Ok(Retained::Heartbeat(Heartbeat {
                gateway: f.text("gateway")?,
                site: f.text("site")?,
                ward: f.text("ward")?,
                time_ms: f.int("time")?,
                uptime_s: f.uint("uptime_s")?,
                queue_depth: f.uint("queue_depth")?,
                oldest_unsent_age_s: f.opt_uint("oldest_unsent_age_s")?,
                store_bytes: f.uint("store_bytes")?,
                store_full: (f.bool("store_full")?, f.uint("rows_refused")?),
                clock_synced: f.bool("clock_synced")?,
                uplink_connected: uplink.bool("connected")?,
                batches_acked: uplink.uint("batches_acked")?,
                acks_refused: uplink.uint("acks_refused")?,
                adapters,
                devices_online: devices.uint("online")?,
                devices_stale: devices.uint("stale")?,
                devices_offline: devices.uint("offline")?,
                firmware,
            }))
        }
        other => Err(RetainedError::Kind(other.chars().take(64).collect())),
    }
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
            firmware: None,
            firmware_source: None,
            location: None,
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
    fn the_location_travels_in_the_device_status_and_is_absent_when_not_configured() {
        let s = DeviceStatus {
            device: "serial:bed12".into(),
            state: "online".into(),
            location: Some("ward-7/bed-12".into()),
            ..Default::default()
        };
        let cbor = device_status("gw1", &s);
        assert_eq!(to_json(&cbor).unwrap()["location"], "ward-7/bed-12");
        assert_eq!(
            decode(&cbor).unwrap(),
            Retained::DeviceStatus {
                gateway: "gw1".into(),
                status: s.clone()
            }
        );
        let without = DeviceStatus {
            location: None,
            ..s
        };
        let cbor = device_status("gw1", &without);
        assert!(to_json(&cbor).unwrap().get("location").is_none());
        let Retained::DeviceStatus { status, .. } = decode(&cbor).unwrap() else {
            panic!("not a device status")
        };
        assert_eq!(status.location, None);
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
        assert!(j.get("firmware").is_none(), "no device reported a version");
    }

    #[test]
    fn firmware_versions_round_trip_and_older_messages_without_them_still_decode() {
        let s = DeviceStatus {
            device: "serial:bed1".into(),
            state: "online".into(),
            since_ms: 1,
            last_seen_ms: 2,
            errors: 0,
            firmware: Some("1.4.0".into()),
            firmware_source: Some("smp".into()),
            ..Default::default()
        };
        assert_eq!(
            decode(&device_status("gw1", &s)).unwrap(),
            Retained::DeviceStatus {
                gateway: "gw1".into(),
                status: s.clone()
            }
        );
        let h = Heartbeat {
            gateway: "gw1".into(),
            site: "s".into(),
            ward: "w".into(),
            oldest_unsent_age_s: Some(3),
            adapters: vec![("serial".into(), 0, 1)],
            firmware: vec![
                ("ble:00:22:D0:90:4C:14".into(), "v2.1 (build 7)".into()),
                ("serial:bed1".into(), "1.4.0".into()),
            ],
            ..Default::default()
        };
        assert_eq!(decode(&heartbeat(&h)).unwrap(), Retained::Heartbeat(h));
        // A device status and a heartbeat as gateways before issue 10 wrote them (no firmware
        // keys): the bytes of wire-format.md's examples, built by hand.
        let old_status = encode(&map(vec![
            ("v", int(1)),
            ("kind", text("device-status")),
            ("gateway", text("gw1")),
            ("device", text("serial:bed1")),
            ("state", text("offline")),
            ("since", int(5)),
            ("last_seen", int(0)),
            ("errors", int(0)),
        ]));
        let Retained::DeviceStatus { status, .. } = decode(&old_status).unwrap() else {
            panic!("not a device status")
        };
        assert_eq!((status.firmware, status.firmware_source), (None, None));
        let old_heartbeat = heartbeat(&Heartbeat {
            gateway: "gw1".into(),
            ..Default::default()
        });
        let Retained::Heartbeat(h) = decode(&old_heartbeat).unwrap() else {
            panic!("not a heartbeat")
        };
        assert!(h.firmware.is_empty());
        // What is not a status is refused with a reason, not a panic.
        assert!(matches!(decode(b"\xff"), Err(RetainedError::Cbor(_))));
        assert_eq!(
            decode(&encode(&map(vec![("v", int(1)), ("kind", text("batch"))]))),
            Err(RetainedError::Kind("batch".into()))
        );
        let mut bad = heartbeat(&Heartbeat::default());
        bad.truncate(bad.len() - 1);
        assert!(decode(&bad).is_err());
        let wrong = encode(&map(vec![
            ("v", int(1)),
            ("kind", text("device-status")),
            ("gateway", text("gw1")),
            ("device", int(7)),
        ]));
        assert_eq!(decode(&wrong), Err(RetainedError::Field("device")));
        assert_eq!(
            decode(&vec![0; MAX_RETAINED_BYTES + 1]),
            Err(RetainedError::TooLarge(MAX_RETAINED_BYTES + 1))
        );
    }
}
