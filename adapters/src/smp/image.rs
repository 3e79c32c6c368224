//! Image group (group 1) payloads, PROTOCOLS §A.2: state read (cmd 0, read, `{}` →
//! `{"images": [...]}`), state write (cmd 0, write, `{"hash"?, "confirm"}`), upload (cmd 1,
//! write, `{"image"?, "len"?, "off", "sha"?, "data", "upgrade"?}` → `{"off"?, "match"?}`) and
//! erase (cmd 5, write, `{"slot"?}`) and slot info (cmd 6, read, `{}` → `{"images": [{"image",
//! "slots": [{"slot", "size", "upload_image_id"?}], "max_image_size"?}]}`, Zephyr
//! `smp_group_1.rst`; the sizes an image must fit before the slot is erased, FIRMWARE.md F10).
//!
//! Hashes: a slot's `hash` is the MCUboot image hash (the SHA256 TLV, PROTOCOLS §A.6); the
//! upload's `sha` is the SHA-256 of the whole file and names the upload session (resume).

use super::cbor::{self, CborError};
use super::header::HEADER_LEN;
use ciborium::Value;

/// Group id of the image group.
pub const GROUP: u16 = 1;
/// State read/write command.
pub const CMD_STATE: u8 = 0;
/// Upload command.
pub const CMD_UPLOAD: u8 = 1;
/// Erase command.
pub const CMD_ERASE: u8 = 5;
/// Slot info command (read).
pub const CMD_SLOT_INFO: u8 = 6;

/// One slot of the image state list. Flags absent on the wire are false.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SlotState {
    /// Image number (multi-image devices only).
    pub image: Option<u32>,
    /// 0 primary (running), 1 secondary (DFU).
    pub slot: u32,
    /// Version text (`1.2.3` or `1.2.3.4`).
    pub version: String,
    /// MCUboot image hash (SHA256 TLV), 32 bytes usually.
    #[serde(serialize_with = "hex_opt")]
    pub hash: Option<Vec<u8>>,
    /// Bootable.
    pub bootable: bool,
    /// Marked for the next boot (test or permanent).
    pub pending: bool,
    /// Confirmed (will not be reverted).
    pub confirmed: bool,
    /// Running now.
    pub active: bool,
    /// Pending permanently.
    pub permanent: bool,
}

fn hex_opt<S: serde::Serializer>(h: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match h {
        Some(h) => s.serialize_str(&h.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        None => s.serialize_none(),
    }
}

impl SlotState {
    fn from_value(v: &Value) -> Result<SlotState, CborError> {
        if !v.is_map() {
            return Err(CborError::Type("images"));
        }
        Ok(SlotState {
            image: cbor::uint(v, "image")?
                .map(|n| u32::try_from(n).map_err(|_| CborError::Type("image")))
                .transpose()?,
            slot: cbor::req_u32(v, "slot")?,
            version: cbor::text(v, "version")?.ok_or(CborError::Missing("version"))?,
            hash: cbor::bytes(v, "hash")?,
            bootable: cbor::flag(v, "bootable")?,
            pending: cbor::flag(v, "pending")?,
            confirmed: cbor::flag(v, "confirmed")?,
            active: cbor::flag(v, "active")?,
            permanent: cbor::flag(v, "permanent")?,
        })
    }

    fn to_value(&self) -> Value {
        let mut m = Vec::new();
        if let Some(i) = self.image {
            m.push(("image", Value::from(i)));
        }
        m.push(("slot", Value::from(self.slot)));
        m.push(("version", Value::Text(self.version.clone())));
        if let Some(h) = &self.hash {
            m.push(("hash", Value::Bytes(h.clone())));
        }
        for (k, b) in [
            ("bootable", self.bootable),
            ("pending", self.pending),
            ("confirmed", self.confirmed),
            ("active", self.active),
            ("permanent", self.permanent),
        ] {
            m.push((k, Value::Bool(b)));
        }
        cbor::map(m)
    }
}

/// The slots of a state read/write response `{"images": [...]}`.
pub fn parse_state(body: &Value) -> Result<Vec<SlotState>, CborError> {
    match cbor::get(body, "images") {
        Some(Value::Array(items)) => items.iter().map(SlotState::from_value).collect(),
        Some(_) => Err(CborError::Type("images")),
        None => Err(CborError::Missing("images")),
    }
}

/// A state response body from slots (device models, round trips).
pub fn state_body(slots: &[SlotState]) -> Value {
    cbor::map([(
        "images",
        Value::Array(slots.iter().map(SlotState::to_value).collect()),
    )])
}

/// State write body: `confirm: false` with a hash marks that image for test; `confirm: true`
/// makes it permanent (without a hash: the running image).
pub fn state_write(hash: Option<&[u8]>, confirm: bool) -> Value {
    let mut m = Vec::new();
    if let Some(h) = hash {
        m.push(("hash", Value::Bytes(h.to_vec())));
    }
    m.push(("confirm", Value::Bool(confirm)));
    cbor::map(m)
}

/// Erase body (`slot` absent = slot 1).
pub fn erase_request(slot: Option<u32>) -> Value {
    match slot {
        Some(s) => cbor::map([("slot", Value::from(s))]),
        None => cbor::map([]),
    }
}

/// One slot of a slot info response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotSize {
    /// Slot number within its image (0 primary, 1 secondary).
    pub slot: u32,
    /// Size of the slot's flash area, bytes.
    pub size: u64,
    /// The image number an upload to this slot takes, when the device says.
    pub upload_image_id: Option<u32>,
}

/// One image of a slot info response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSlots {
    /// Image number.
    pub image: u32,
    /// Its slots.
    pub slots: Vec<SlotSize>,
    /// The largest image the device accepts for it (slot size less MCUboot's trailer), bytes.
    pub max_image_size: Option<u64>,
}

impl ImageSlots {
    /// The largest upload for this image: `max_image_size` when given, else the size of its
    /// secondary slot (slot 1), else `None`.
    pub fn upload_limit(&self) -> Option<u64> {
        self.max_image_size
            .or_else(|| self.slots.iter().find(|s| s.slot == 1).map(|s| s.size))
    }
}

fn u32_field(v: &Value, key: &'static str) -> Result<Option<u32>, CborError> {
    cbor::uint(v, key)?
        .map(|n| u32::try_from(n).map_err(|_| CborError::Type(key)))
        .transpose()
}

/// The images of a slot info response `{"images": [...]}` (at most 16 images of 16 slots: more
/// is refused as malformed).
pub fn parse_slot_info(body: &Value) -> Result<Vec<ImageSlots>, CborError> {
    let Some(items) = cbor::get(body, "images") else {
        return Err(CborError::Missing("images"));
    };
    let Value::Array(items) = items else {
        return Err(CborError::Type("images"));
    };
    if items.len() > 16 {
        return Err(CborError::Type("images"));
    }
    items
        .iter()
        .map(|v| {
            if !v.is_map() {
                return Err(CborError::Type("images"));
            }
            let slots = match cbor::get(v, "slots") {
                Some(Value::Array(s)) if s.len() <= 16 => s
                    .iter()
                    .map(|s| {
                        if !s.is_map() {
                            return Err(CborError::Type("slots"));
                        }
                        Ok(SlotSize {
                            slot: cbor::req_u32(s, "slot")?,
                            size: cbor::uint(s, "size")?.ok_or(CborError::Missing("size"))?,
                            upload_image_id: u32_field(s, "upload_image_id")?,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                Some(_) => return Err(CborError::Type("slots")),
                None => return Err(CborError::Missing("slots")),
            };
            Ok(ImageSlots {
                image: cbor::req_u32(v, "image")?,
                slots,
                max_image_size: cbor::uint(v, "max_image_size")?,
            })
        })
        .collect()
}

/// A slot info response body (device models, round trips).
pub fn slot_info_body(images: &[ImageSlots]) -> Value {
    Value::Map(vec![(
        Value::Text("images".into()),
        Value::Array(
            images
                .iter()
                .map(|i| {
                    let slots = i
                        .slots
                        .iter()
                        .map(|s| {
                            let mut m =
                                vec![("slot", Value::from(s.slot)), ("size", Value::from(s.size))];
                            if let Some(u) = s.upload_image_id {
                                m.push(("upload_image_id", Value::from(u)));
                            }
                            cbor::map(m)
                        })
                        .collect();
                    let mut m = vec![
                        ("image", Value::from(i.image)),
                        ("slots", Value::Array(slots)),
                    ];
                    if let Some(x) = i.max_image_size {
                        m.push(("max_image_size", Value::from(x)));
                    }
                    cbor::map(m)
                })
                .collect(),
        ),
    )])
}

/// The fields that only the first chunk (`off == 0`) carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadStart {
    /// Whole image length in bytes.
    pub len: u64,
    /// SHA-256 of the whole file: the session id that lets an upload resume.
    pub sha: Option<Vec<u8>>,
    /// Image number (0 when absent).
    pub image: Option<u32>,
    /// Refuse images not newer than the installed one.
    pub upgrade: Option<bool>,
}

/// One upload request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadRequest {
    /// Offset of `data` in the image.
    pub off: u64,
    /// The chunk.
    pub data: Vec<u8>,
    /// Present when `off == 0` (PROTOCOLS §A.2).
    pub start: Option<UploadStart>,
}

impl UploadRequest {
    /// The body, fields in the order smp 4.2.0 writes them (len, off, sha, data, image, upgrade).
    pub fn to_body(&self) -> Value {
        let mut m = Vec::new();
        if let Some(s) = &self.start {
            m.push(("len", Value::from(s.len)));
        }
        m.push(("off", Value::from(self.off)));
        if let Some(sha) = self.start.as_ref().and_then(|s| s.sha.as_ref()) {
            m.push(("sha", Value::Bytes(sha.clone())));
        }
        m.push(("data", Value::Bytes(self.data.clone())));
        if let Some(s) = &self.start {
            if let Some(i) = s.image {
                m.push(("image", Value::from(i)));
            }
            if let Some(u) = s.upgrade {
                m.push(("upgrade", Value::Bool(u)));
            }
        }
        cbor::map(m)
    }

    /// Reads a request body (device side, fuzzing). `start` is present when `len` is.
    pub fn from_body(body: &Value) -> Result<UploadRequest, CborError> {
        let off = cbor::uint(body, "off")?.ok_or(CborError::Missing("off"))?;
        let data = cbor::bytes(body, "data")?.ok_or(CborError::Missing("data"))?;
        let start = match cbor::uint(body, "len")? {
            Some(len) => Some(UploadStart {
                len,
                sha: cbor::bytes(body, "sha")?,
                image: cbor::uint(body, "image")?
                    .map(|n| u32::try_from(n).map_err(|_| CborError::Type("image")))
                    .transpose()?,
                upgrade: cbor::opt_bool(body, "upgrade")?,
            }),
            None => None,
        };
        Ok(UploadRequest { off, data, start })
    }
}

/// An upload response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadResponse {
    /// The next offset the device expects (the only truth about the upload, B24).
    pub off: Option<u64>,
    /// In the last response when the device checks the image: data matched `sha`.
    pub matched: Option<bool>,
}

impl UploadResponse {
    /// Reads `{"off"?, "match"?}`.
    pub fn from_body(body: &Value) -> Result<UploadResponse, CborError> {
        Ok(UploadResponse {
            off: cbor::uint(body, "off")?,
            matched: cbor::opt_bool(body, "match")?,
        })
    }

    /// The body (device models, round trips).
    pub fn to_body(&self) -> Value {
        let mut m = Vec::new();
        if let Some(o) = self.off {
            m.push(("off", Value::from(o)));
        }
        if let Some(b) = self.matched {
            m.push(("match", Value::Bool(b)));
        }
        cbor::map(m)
    }
}

/// Bytes of a CBOR head for a byte string of `n` bytes.
fn bstr_head(n: usize) -> usize {
    match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// The largest `data` length such that the whole frame (8-byte header + CBOR of the request at
/// `off` with `start`) is at most `frame_limit` bytes; 0 when not even one byte fits.
pub fn max_chunk(frame_limit: usize, off: u64, start: Option<&UploadStart>) -> usize {
    let empty = UploadRequest {
        off,
        data: Vec::new(),
        start: start.cloned(),
    };
    // The encoded request minus the 1-byte head of the empty data string.
    let fixed = HEADER_LEN + cbor::encode(&empty.to_body()).len() - 1;
    let Some(room) = frame_limit.checked_sub(fixed) else {
        return 0;
    };
    let mut n = room.saturating_sub(9);
    while n + 1 + bstr_head(n + 1) <= room {
        n += 1;
    }
    while n > 0 && n + bstr_head(n) > room {
        n -= 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smp::header::{Frame, Op, Version};

    fn frame(h: &str) -> Frame {
        Frame::decode(&hex::decode(h).unwrap()).unwrap()
    }

    #[test]
    fn a07_state_response() {
        let f = frame("0900005900010000a166696d6167657382a464736c6f740066616374697665f46776657273696f6e65302e312e30697065726d616e656e74f4a464736c6f740066616374697665f46776657273696f6e65302e312e30697065726d616e656e74f4");
        assert_eq!(
            (
                f.header.op,
                f.header.len,
                f.header.group,
                f.header.seq,
                f.header.cmd
            ),
            (Op::ReadRsp, 89, 1, 0, 0)
        );
        let slots = parse_state(&f.body().unwrap()).unwrap();
        assert_eq!(slots.len(), 2);
        assert_eq!(slots[0].slot, 0);
        assert_eq!(slots[0].version, "0.1.0");
        assert!(!slots[0].active && !slots[0].permanent && !slots[0].confirmed);
        assert_eq!(slots[0].hash, None);
        assert_eq!(parse_state(&state_body(&slots)).unwrap(), slots);
    }

    #[test]
    fn a10_v1_upload_request() {
        let mut bytes =
            hex::decode("0200004c00010001a4636c656e1832636f66660064646174615832").unwrap();
        bytes.extend([0u8; 50]);
        bytes.extend(hex::decode("65696d61676501").unwrap());
        let f = Frame::decode(&bytes).unwrap();
        let r = UploadRequest::from_body(&f.body().unwrap()).unwrap();
        let start = UploadStart {
            len: 50,
            sha: None,
            image: Some(1),
            upgrade: None,
        };
        assert_eq!(
            r,
            UploadRequest {
                off: 0,
                data: vec![0; 50],
                start: Some(start)
            }
        );
        let built = Frame::new(Version::V1, Op::Write, GROUP, CMD_UPLOAD, 0, &r.to_body()).unwrap();
        assert_eq!(built.encode(), bytes);
    }

    #[test]
    fn a13_a14_upload_responses_a19_erase() {
        let r = UploadResponse::from_body(&frame("0b00000600011501a1636f666600").body().unwrap())
            .unwrap();
        assert_eq!((r.off, r.matched), (Some(0), None));
        let f = frame("0b00000600011601a1636f666601");
        assert_eq!(f.header.seq, 22);
        assert_eq!(
            UploadResponse::from_body(&f.body().unwrap()).unwrap().off,
            Some(1)
        );
        let e = Frame::new(
            Version::V2,
            Op::Write,
            GROUP,
            CMD_ERASE,
            15,
            &erase_request(Some(0)),
        )
        .unwrap();
        assert_eq!(hex::encode(e.encode()), "0a00000700010f05a164736c6f7400");
    }

    #[test]
    fn firmware_md_upload_vector() {
        // FIRMWARE.md §4.3: off 0, 64 bytes of a 4758-byte image, v2 seq 7 → 146 bytes.
        let sha = hex::decode("b7b655484edfc3e27ddae2c82fc33a15c11a4aecb7f1d33c632a905d920df5c6")
            .unwrap();
        let start = UploadStart {
            len: 4758,
            sha: Some(sha),
            image: Some(0),
            upgrade: Some(false),
        };
        let r = UploadRequest {
            off: 0,
            data: vec![0xff; 64],
            start: Some(start),
        };
        let f = Frame::new(Version::V2, Op::Write, GROUP, CMD_UPLOAD, 7, &r.to_body()).unwrap();
        let bytes = f.encode();
        assert_eq!(bytes.len(), 146);
        assert_eq!(hex::encode(&bytes[..8]), "0a00008a00010701");
        assert!(hex::encode(&bytes)
            .starts_with("0a00008a00010701a6636c656e191296636f666600637368615820b7b655"));
        let rsp = UploadResponse {
            off: Some(64),
            matched: None,
        };
        let f = Frame::new(
            Version::V2,
            Op::WriteRsp,
            GROUP,
            CMD_UPLOAD,
            7,
            &rsp.to_body(),
        )
        .unwrap();
        assert_eq!(hex::encode(f.encode()), "0b00000700010701a1636f66661840");
    }

    #[test]
    fn max_chunk_fills_the_buffer_exactly() {
        let start = UploadStart {
            len: 200_000,
            sha: Some(vec![7; 32]),
            image: Some(0),
            upgrade: Some(false),
        };
        for limit in [60, 100, 128, 255, 256, 300, 512, 2048, 4096] {
            for (off, st) in [(0, Some(&start)), (123_456, None)] {
                let n = max_chunk(limit, off, st);
                let enc = |n: usize| {
                    let r = UploadRequest {
                        off,
                        data: vec![0; n],
                        start: st.cloned(),
                    };
                    HEADER_LEN + cbor::encode(&r.to_body()).len()
                };
                assert!(n == 0 || enc(n) <= limit, "limit {limit} n {n}");
                assert!(enc(n + 1) > limit, "limit {limit}: {n} is not the largest");
            }
        }
        assert_eq!(max_chunk(10, 0, Some(&start)), 0);
    }

    #[test]
    fn slot_info_round_trip_and_limits() {
        // Zephyr smp_group_1.rst's example shape.
        let body = cbor::map([(
            "images",
            Value::Array(vec![cbor::map([
                ("image", Value::from(0)),
                (
                    "slots",
                    Value::Array(vec![
                        cbor::map([("slot", Value::from(0)), ("size", Value::from(0x6_0000))]),
                        cbor::map([
                            ("slot", Value::from(1)),
                            ("size", Value::from(0x6_0000)),
                            ("upload_image_id", Value::from(0)),
                        ]),
                    ]),
                ),
                ("max_image_size", Value::from(0x5_f000)),
            ])]),
        )]);
        let images = parse_slot_info(&body).unwrap();
        assert_eq!(images[0].upload_limit(), Some(0x5_f000));
        assert_eq!(images[0].slots[1].upload_image_id, Some(0));
        assert_eq!(parse_slot_info(&slot_info_body(&images)).unwrap(), images);
        let mut no_max = images[0].clone();
        no_max.max_image_size = None;
        assert_eq!(no_max.upload_limit(), Some(0x6_0000));
        no_max.slots.truncate(1);
        assert_eq!(no_max.upload_limit(), None);
        assert_eq!(
            parse_slot_info(&cbor::map([("images", Value::from(1))])),
            Err(CborError::Type("images"))
        );
        assert_eq!(
            parse_slot_info(&cbor::map([(
                "images",
                Value::Array(vec![cbor::map([("image", Value::from(0))])])
            )])),
            Err(CborError::Missing("slots"))
        );
    }
}
