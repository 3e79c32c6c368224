//! `Batch`: the unit of upload, and its CBOR payload (DESIGN §5, a contract; CDDL in
//! `docs/wire-format.md`).
//!
//! A batch is signed as a COSE_Sign1 ([`crate::signing`]) whose payload is the CBOR encoding of
//! [`BatchPayload`]: a map with text keys `v` (1), `gateway`, `site`, `ward`, `batch`,
//! `observations`, `events`, and (since issue 11, optional) `locations`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wardgate_adapters::observation::{DeviceEvent, Observation, Waveform};

/// Payload format version (`v`).
pub const PAYLOAD_VERSION: u32 = 1;

/// An observation with the seq the store gave it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredObservation {
    /// Strictly increasing per gateway; the observation's identity upstream.
    pub seq: u64,
    /// The reading.
    pub observation: Observation,
}

/// A device event with the seq the store gave it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// Strictly increasing per gateway, shared with observations.
    pub seq: u64,
    /// The event.
    pub event: DeviceEvent,
}

/// One row of a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// An observation.
    Observation(StoredObservation),
    /// A device event.
    Event(StoredEvent),
}

impl Item {
    /// The row's seq.
    pub fn seq(&self) -> u64 {
        match self {
            Item::Observation(o) => o.seq,
            Item::Event(e) => e.seq,
        }
    }
}

/// A batch as handed out by the store: its number (kept across re-sends) and its rows in seq
/// order.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Batch number, strictly increasing per gateway; a re-send keeps it.
    pub number: u64,
    /// Rows in seq order.
    pub items: Vec<Item>,
    /// Device id → the location configured when its rows were committed, for the devices of
    /// `items` that had one (one per device: the store cuts a batch where a location changes).
    pub locations: BTreeMap<String, String>,
}

/// The CBOR payload of a batch message (the COSE_Sign1 payload).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchPayload {
    /// Payload version, 1.
    pub v: u32,
    /// Gateway id (`[gateway] id`).
    pub gateway: String,
    /// Site id.
    pub site: String,
    /// Ward id.
    pub ward: String,
    /// Batch number.
    pub batch: u64,
    /// Observations, in seq order.
    pub observations: Vec<WireObservation>,
    /// Device events, in seq order.
    pub events: Vec<WireEvent>,
    /// Device id → where the device was (its configured `location`, e.g. `ward-7/bed-12`) when
    /// its rows in this batch were read; only devices with rows here and a location. Absent
    /// when empty, and in every payload of a gateway older than issue 11 item 7, which
    /// therefore still decodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub locations: BTreeMap<String, String>,
}

/// An observation on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireObservation {
    /// Store sequence number (identity; upstream dedups on `(gateway, seq)`).
    pub seq: u64,
    /// Device id, e.g. `serial:bed12-spo2`.
    pub device: String,
    /// IEEE 11073-10101 measurement code, e.g. 150456 (SpO2).
    pub code: u32,
    /// Value in `unit`.
    pub value: f64,
    /// IEEE 11073-10101 unit code, e.g. 262688 (%).
    pub unit: u32,
    /// UCUM spelling of `unit`, e.g. `%`.
    pub ucum: String,
    /// Gateway time of arrival, ms since the Unix epoch (UTC).
    pub gateway_time: i64,
    /// `synced`, `unsynced` or `device`.
    pub time_quality: String,
    /// The device's own time stamp (`YYYY-MM-DDThh:mm:ss`, device local time), when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_time: Option<String>,
    /// Measurement-status flags; absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
    /// A waveform observation's sample array (IEEE 11073 real-time sample array: period,
    /// scale, offset, raw samples; see [`Waveform`]); absent for a numeric, and in every payload
    /// of a gateway older than issue 11, which therefore still decodes. `value` is then the
    /// physical value of sample 0 and `gateway_time` its time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waveform: Option<Waveform>,
}

#[cfg(test)]
impl WireObservation {
    /// An SpO2 reading (MDC 150456, %) of device `serial:a`, for unit tests.
    pub(crate) fn spo2_for_tests(seq: u64, value: f64) -> WireObservation {
        WireObservation {
            seq,
            device: "serial:a".into(),
            code: 150456,
            value,
            unit: 262688,
            ucum: "%".into(),
            gateway_time: 1,
            time_quality: "synced".into(),
            device_time: None,
            status: vec![],
            waveform: None,
        }
    }
}

/// A device event on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireEvent {
    /// Store sequence number.
    pub seq: u64,
    /// Device id (or `gateway` for the gateway's own events).
    pub device: String,
    /// `connected`, `disconnected`, `battery`, `rssi`, `rejected`, `error`, `dropped`.
    pub kind: String,
    /// Detail for an installer; never clinical values.
    pub detail: String,
    /// Gateway time, ms since the Unix epoch (UTC).
    pub gateway_time: i64,
}

/// Identity of the gateway that sends the batch.
#[derive(Clone, Debug)]
pub struct Origin {
    /// Gateway id.
    pub gateway: String,
    /// Site id.
    pub site: String,
    /// Ward id.
    pub ward: String,
}

impl Batch {
    /// The batch as its wire payload.
    pub fn to_payload(&self, origin: &Origin) -> BatchPayload {
        let mut observations = Vec::new();
        let mut events = Vec::new();
        for item in &self.items {
            match item {
                Item::Observation(o) => {
                    let ob = &o.observation;
                    observations.push(WireObservation {
                        seq: o.seq,
                        device: ob.device.0.clone(),
                        code: ob.code,
                        value: ob.value,
                        unit: ob.unit.mdc,
                        ucum: ob.unit.ucum.to_owned(),
                        gateway_time: ob.gateway_time,
                        time_quality: ob.time_quality.as_str().to_owned(),
                        device_time: ob.device_time.clone(),
                        status: ob.status.clone(),
                        waveform: ob.waveform.clone(),
                    })
                }
                Item::Event(e) => events.push(WireEvent {
                    seq: e.seq,
                    device: e.event.device.0.clone(),
                    kind: e.event.kind.as_str().to_owned(),
                    detail: e.event.detail.clone(),
                    gateway_time: e.event.gateway_time,
                }),
            }
        }
        BatchPayload {
            v: PAYLOAD_VERSION,
            gateway: origin.gateway.clone(),
            site: origin.site.clone(),
            ward: origin.ward.clone(),
            batch: self.number,
            observations,
            events,
            locations: self.locations.clone(),
        }
    }
}

/// Borrowing twin of [`WireObservation`] for encoding without copying strings (same keys, same
/// order, so the same bytes).
#[derive(Serialize)]
struct WireObservationRef<'a> {
    seq: u64,
    device: &'a str,
    code: u32,
    value: f64,
    unit: u32,
    ucum: &'a str,
    gateway_time: i64,
    time_quality: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_time: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    status: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    waveform: Option<&'a Waveform>,
}

/// Borrowing twin of [`WireEvent`].
#[derive(Serialize)]
struct WireEventRef<'a> {
    seq: u64,
    device: &'a str,
    kind: &'a str,
    detail: &'a str,
    gateway_time: i64,
}

/// Borrowing twin of [`BatchPayload`].
#[derive(Serialize)]
struct BatchPayloadRef<'a> {
    v: u32,
    gateway: &'a str,
    site: &'a str,
    ward: &'a str,
    batch: u64,
    observations: Vec<WireObservationRef<'a>>,
    events: Vec<WireEventRef<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    locations: &'a BTreeMap<String, String>,
}

impl Batch {
    /// The CBOR payload, byte for byte `self.to_payload(origin).to_cbor()`, without copying the
    /// rows' strings (the uplink's hot path).
    pub fn encode_payload(&self, origin: &Origin) -> Vec<u8> {
        let mut observations = Vec::with_capacity(self.items.len());
        let mut events = Vec::new();
        for item in &self.items {
            match item {
                Item::Observation(o) => {
                    let ob = &o.observation;
                    observations.push(WireObservationRef {
                        seq: o.seq,
                        device: &ob.device.0,
                        code: ob.code,
                        value: ob.value,
                        unit: ob.unit.mdc,
                        ucum: ob.unit.ucum,
                        gateway_time: ob.gateway_time,
                        time_quality: ob.time_quality.as_str(),
                        device_time: ob.device_time.as_deref(),
                        status: &ob.status,
                        waveform: ob.waveform.as_ref(),
                    })
                }
                Item::Event(e) => events.push(WireEventRef {
                    seq: e.seq,
                    device: &e.event.device.0,
                    kind: e.event.kind.as_str(),
                    detail: &e.event.detail,
                    gateway_time: e.event.gateway_time,
                }),
            }
        }
        let p = BatchPayloadRef {
            v: PAYLOAD_VERSION,
            gateway: &origin.gateway,
            site: &origin.site,
            ward: &origin.ward,
            batch: self.number,
            observations,
            events,
            locations: &self.locations,
        };
        let mut out = Vec::with_capacity(64 + self.items.len() * 100);
        ciborium::into_writer(&p, &mut out).expect("serialising to a Vec cannot fail");
        out
    }
}

impl BatchPayload {
    /// CBOR encoding (text keys, definite lengths).
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.observations.len() * 120);
        ciborium::into_writer(self, &mut out).expect("serialising to a Vec cannot fail");
        out
    }
    /// Decodes a payload. Errors: not CBOR, or not the batch schema.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, String> {
        ciborium::from_reader(bytes).map_err(|e| format!("batch payload is not a v1 batch: {e}"))
    }
}

/// The upstream acknowledgement on `wardgate/v1/{site}/{ward}/{gateway}/ack` (ack mode
/// `upstream`): CBOR map `{ "v": 2, "gateway": tstr, "batches": [* uint], ? "refused": tstr }`,
/// naming batches the receiver has stored durably; since v2 it travels inside a COSE_Sign1
/// (docs/wire-format.md, "Ack"). `refused` makes it a refusal notice: the receiver refuses
/// this gateway's batches and says why (`batches` is then empty).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// Version, 1.
    pub v: u32,
    /// The gateway whose batches are acknowledged.
    pub gateway: String,
    /// Batch numbers stored durably.
    pub batches: Vec<u64>,
    /// A refusal notice: why the receiver refuses batches signed by this gateway (its
    /// certificate revoked, expired, not from the gateway CA, not naming it), at most
    /// [`MAX_REFUSAL_CHARS`] characters. Absent in an ordinary ack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Longest refusal reason a receiver sends and a gateway shows, in characters.
pub const MAX_REFUSAL_CHARS: usize = 400;

impl Ack {
    /// CBOR encoding.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).expect("serialising to a Vec cannot fail");
        out
    }
    /// Decodes an ack. Errors: not CBOR or not the ack schema.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, String> {
        ciborium::from_reader(bytes).map_err(|e| format!("not an ack message: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardgate_adapters::observation::{DeviceId, EventKind, TimeQuality, Unit};

    #[test]
    fn borrowed_encoding_is_byte_for_byte_the_payload_encoding() {
        let obs = |seq, status: Vec<String>, device_time: Option<String>| {
            Item::Observation(StoredObservation {
                seq,
                observation: Observation {
                    device: DeviceId("serial:bed1".into()),
                    code: 150456,
                    value: 97.5,
                    unit: Unit::PERCENT,
                    device_time,
                    gateway_time: 1_700_000_000_000,
                    time_quality: TimeQuality::Device,
                    status,
                    waveform: None,
                },
            })
        };
        let b = Batch {
            number: 42,
            items: vec![
                obs(1, vec![], None),
                obs(
                    2,
                    vec!["alarm=APNEA".into()],
                    Some("2011-03-15T14:22:05".into()),
                ),
                Item::Observation(StoredObservation {
                    seq: 4,
                    observation: Observation {
                        device: DeviceId("serial:ecg".into()),
                        code: 131_329,
                        value: -0.145,
                        unit: Unit::DIMLESS,
                        device_time: None,
                        gateway_time: 1_700_000_000_000,
                        time_quality: TimeQuality::Synced,
                        status: vec![],
                        waveform: Some(Waveform {
                            period_us: 2778,
                            scale: 0.005,
                            offset: -5.12,
                            samples: vec![995, 995, 1000, -3, 0, i32::MAX],
                        }),
                    },
                }),
                Item::Event(StoredEvent {
                    seq: 3,
                    event: DeviceEvent {
                        device: DeviceId("gateway".into()),
                        kind: EventKind::Dropped,
                        detail: "x".into(),
                        gateway_time: 5,
                        presence: None,
                        firmware: None,
                    },
                }),
            ],
            locations: [("serial:bed1".to_owned(), "ward-7/bed-1".to_owned())].into(),
        };
        let o = Origin {
            gateway: "gw".into(),
            site: "s".into(),
            ward: "w".into(),
        };
        let bytes = b.encode_payload(&o);
        assert_eq!(bytes, b.to_payload(&o).to_cbor());
        assert_eq!(BatchPayload::from_cbor(&bytes).unwrap(), b.to_payload(&o));
        let p = BatchPayload::from_cbor(&bytes).unwrap();
        assert_eq!(
            p.observations[2].waveform.as_ref().unwrap().samples,
            vec![995, 995, 1000, -3, 0, i32::MAX]
        );
        assert_eq!(p.observations[0].waveform, None);
        assert_eq!(p.locations["serial:bed1"], "ward-7/bed-1");
    }

    #[test]
    fn a_payload_without_waveforms_keeps_its_pre_issue_11_bytes_and_decodes() {
        // The v1 payload of a numeric, as a gateway before issue 11 encoded it (no `waveform`
        // key): today's encoder writes the same bytes, and today's decoder reads them.
        let old = WireObservation::spo2_for_tests(1, 97.0);
        let p = BatchPayload {
            v: 1,
            gateway: "gw".into(),
            site: "s".into(),
            ward: "w".into(),
            batch: 1,
            observations: vec![old],
            events: vec![],
            locations: BTreeMap::new(),
        };
        let bytes = p.to_cbor();
        for needle in [&b"waveform"[..], b"locations"] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
        assert_eq!(BatchPayload::from_cbor(&bytes).unwrap(), p);
    }

    #[test]
    fn locations_travel_as_a_map_after_the_rows() {
        let mut p = BatchPayload {
            v: 1,
            gateway: "gw".into(),
            site: "s".into(),
            ward: "w".into(),
            batch: 1,
            observations: vec![WireObservation::spo2_for_tests(1, 97.0)],
            events: vec![],
            locations: [("serial:a".to_owned(), "ward-7/bed-12".to_owned())].into(),
        };
        let bytes = p.to_cbor();
        let v: ciborium::Value = ciborium::from_reader(&bytes[..]).unwrap();
        let map = v.as_map().unwrap();
        let (k, locs) = map.last().unwrap();
        assert_eq!(k.as_text(), Some("locations"));
        assert_eq!(
            locs.as_map().unwrap()[0],
            (
                ciborium::Value::Text("serial:a".into()),
                ciborium::Value::Text("ward-7/bed-12".into())
            )
        );
        assert_eq!(BatchPayload::from_cbor(&bytes).unwrap(), p);
        p.locations.clear();
        assert!(!p.to_cbor().windows(9).any(|w| w == b"locations"));
    }
}
