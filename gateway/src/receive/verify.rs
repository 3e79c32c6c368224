//! Is this message a batch we accept? Pure: no I/O, nothing written before it says yes.
//!
//! The checks, in order, each with the reason a refused message is logged with: the COSE_Sign1
//! signature against the trusted gateways ([`Verifier`]: a listed certificate, or one that
//! chains to `gateway_ca` through the message's `x5chain`, not revoked); the payload is a CBOR
//! map whose `v` is [`PAYLOAD_VERSION`] (read first, so a future version is refused as such
//! rather than as a schema error); the v1 schema, and every waveform within its bounds (at most
//! `MAX_WAVEFORM_SAMPLES` samples, a period > 0, a finite scale and offset); the topic names the site, ward and gateway the
//! signed payload names; and the **signer's certificate names that same gateway**
//! ([`crate::identity`]: SAN `urn:wardgate:{site}:{ward}:{id}`, or CN = id), so one gateway's key
//! cannot sign another gateway's data.

use crate::batch::{BatchPayload, PAYLOAD_VERSION};
use crate::encryption::{is_encrypted, Decryptor};
use crate::mqtt;
use crate::signing::Verifier;
use std::borrow::Cow;

/// The signed message (COSE_Sign1) in a received one: a COSE_Encrypt is decrypted with this
/// receiver's key ([`crate::encryption`]); anything else is passed on as it is (a plain
/// COSE_Sign1 from a gateway not encrypting yet, or junk for [`check_message`] to refuse).
pub fn open_message<'a>(
    decryptor: Option<&Decryptor>,
    message: &'a [u8],
) -> Result<Cow<'a, [u8]>, String> {
    if !is_encrypted(message) {
        return Ok(Cow::Borrowed(message));
    }
    let d = decryptor.ok_or_else(|| {
        "encrypted, and this receiver's key (not P-256) cannot decrypt".to_owned()
    })?;
    d.decrypt(message)
        .map(Cow::Owned)
        .map_err(|e| format!("cannot decrypt: {e}"))
}

/// Verifies and decodes one message received on `topic`. Errors say why it is refused.
pub fn check_message(
    verifier: &Verifier,
    topic: &str,
    message: &[u8],
) -> Result<BatchPayload, String> {
    let verified = verifier.verify_signed(message).map_err(|e| e.to_string())?;
    let p = decode_batch(&verified.payload)?;
    match mqtt::parse_batch(topic) {
        Some((site, ward, gw)) if site == p.site && ward == p.ward && gw == p.gateway => {}
        _ => {
            return Err(format!(
                "topic {topic} does not match the signed payload ({}/{}/{})",
                p.site, p.ward, p.gateway
            ))
        }
    }
    if !verified.signer.is_gateway(&p.gateway, &p.site, &p.ward) {
        return Err(format!(
            "signed by {}, not by gateway {} of {}/{}: one gateway's key cannot sign another's data",
            verified.signer, p.gateway, p.site, p.ward
        ));
    }
    Ok(p)
}

/// Decodes a batch payload, checking its `v` before its schema, then the bounds of every
/// waveform ([`wardgate_adapters::observation::Waveform::problem`], naming the row's `seq`),
/// then every entry of `locations`: a valid location
/// ([`crate::config::validate::check_location`]) of a device that has rows in the batch.
///
/// The common case, a well-formed v1 batch, is decoded straight into [`BatchPayload`] (one pass,
/// no intermediate `ciborium::Value` tree: most of the receiver's CPU per observation went
/// there). Anything that does not decode that way is decoded again through the generic value,
/// whose errors name what is wrong (version before schema), so the reasons are unchanged.
pub fn decode_batch(payload: &[u8]) -> Result<BatchPayload, String> {
    let p = match ciborium::from_reader::<BatchPayload, _>(payload) {
        Ok(p) if p.v == PAYLOAD_VERSION => p,
        Ok(p) => return Err(format!("payload version {} is not {PAYLOAD_VERSION}", p.v)),
        Err(_) => decode_slowly(payload)?,
    };
    for o in &p.observations {
        if let Some(problem) = o.waveform.as_ref().and_then(|w| w.problem()) {
            return Err(format!("observation seq {}: {problem}", o.seq));
        }
    }
    for (device, location) in &p.locations {
        crate::config::validate::check_location(location)
            .map_err(|e| format!("locations[{device}]: {e}"))?;
        let has_rows = p.observations.iter().any(|o| &o.device == device)
            || p.events.iter().any(|e| &e.device == device);
        if !has_rows {
            return Err(format!(
                "locations names device {device}, which has no row in the batch"
            ));
        }
    }
    Ok(p)
}

/// [`decode_batch`] through the generic CBOR value: the version is read before the schema.
fn decode_slowly(payload: &[u8]) -> Result<BatchPayload, String> {
    let value: ciborium::Value =
        ciborium::from_reader(payload).map_err(|e| format!("batch payload is not CBOR: {e}"))?;
    match version_of(&value)? {
        v if v == u64::from(PAYLOAD_VERSION) => {}
        v => return Err(format!("payload version {v} is not {PAYLOAD_VERSION}")),
    }
    value
        .deserialized()
        .map_err(|e| format!("batch payload is not a v1 batch: {e}"))
}

/// The `v` of a CBOR map payload: a map is required, `v` must be present and an unsigned
/// integer.
pub fn version_of(value: &ciborium::Value) -> Result<u64, String> {
    let map = value
        .as_map()
        .ok_or_else(|| "payload is not a CBOR map".to_owned())?;
    let v = map
        .iter()
        .find(|(k, _)| k.as_text() == Some("v"))
        .map(|(_, v)| v)
        .ok_or_else(|| "payload has no version `v`".to_owned())?;
    v.as_integer()
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| "payload version `v` is not an unsigned integer".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::WireObservation;

    fn payload(v: u32) -> BatchPayload {
        BatchPayload {
            v,
            gateway: "gw1".into(),
            site: "s".into(),
            ward: "w".into(),
            batch: 7,
            observations: vec![WireObservation::spo2_for_tests(1, 97.0)],
            events: vec![],
            locations: Default::default(),
        }
    }

    #[test]
    fn locations_must_be_valid_and_name_a_device_of_the_batch() {
        let mut p = payload(1);
        p.locations
            .insert("serial:a".into(), "ward-7/bed-12".into());
        assert_eq!(decode_batch(&p.to_cbor()).unwrap(), p);
        let mut bad = p.clone();
        bad.locations.insert("serial:a".into(), "ward 7".into());
        assert!(decode_batch(&bad.to_cbor())
            .unwrap_err()
            .starts_with("locations[serial:a]: location `ward 7` contains ' '"));
        let mut stray = p.clone();
        stray.locations.insert("serial:b".into(), "ward-7".into());
        assert_eq!(
            decode_batch(&stray.to_cbor()).unwrap_err(),
            "locations names device serial:b, which has no row in the batch"
        );
    }

    fn cbor(v: &impl serde::Serialize) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    #[test]
    fn a_v1_batch_decodes() {
        assert_eq!(decode_batch(&payload(1).to_cbor()).unwrap(), payload(1));
    }

    #[test]
    fn a_waveform_is_accepted_within_its_bounds_and_refused_beyond_them() {
        use wardgate_adapters::observation::{Waveform, MAX_WAVEFORM_SAMPLES};
        let with = |w: Waveform| {
            let mut p = payload(1);
            p.observations[0].seq = 9;
            p.observations[0].waveform = Some(w);
            p
        };
        let ok = Waveform {
            period_us: 2778,
            scale: 0.005,
            offset: -5.12,
            samples: (0..MAX_WAVEFORM_SAMPLES as i32).collect(),
        };
        assert_eq!(
            decode_batch(&with(ok.clone()).to_cbor()).unwrap(),
            with(ok.clone())
        );
        let mut big = ok.clone();
        big.samples.push(0);
        assert_eq!(
            decode_batch(&with(big).to_cbor()).unwrap_err(),
            format!(
                "observation seq 9: waveform of {} samples (at most {MAX_WAVEFORM_SAMPLES})",
                MAX_WAVEFORM_SAMPLES + 1
            )
        );
        let zero = Waveform {
            period_us: 0,
            ..ok.clone()
        };
        assert!(decode_batch(&with(zero).to_cbor())
            .unwrap_err()
            .contains("period 0"));
        let empty = Waveform {
            samples: vec![],
            ..ok
        };
        assert!(decode_batch(&with(empty).to_cbor())
            .unwrap_err()
            .contains("without samples"));
    }

    #[test]
    fn the_version_is_checked_before_the_schema() {
        assert_eq!(
            decode_batch(&payload(2).to_cbor()).unwrap_err(),
            "payload version 2 is not 1"
        );
        // A future version with another shape is refused for its version, not its shape.
        let mut m = std::collections::BTreeMap::new();
        m.insert("v", 3u32);
        m.insert("rows", 5);
        assert_eq!(
            decode_batch(&cbor(&m)).unwrap_err(),
            "payload version 3 is not 1"
        );
        let mut m = std::collections::BTreeMap::new();
        m.insert("gateway", "gw1");
        assert_eq!(
            decode_batch(&cbor(&m)).unwrap_err(),
            "payload has no version `v`"
        );
        let mut m = std::collections::BTreeMap::new();
        m.insert("v", "1");
        assert_eq!(
            decode_batch(&cbor(&m)).unwrap_err(),
            "payload version `v` is not an unsigned integer"
        );
        assert_eq!(
            decode_batch(&cbor(&[1u8, 2])).unwrap_err(),
            "payload is not a CBOR map"
        );
        assert!(decode_batch(b"\xff\x00junk")
            .unwrap_err()
            .starts_with("batch payload is not CBOR"));
    }

    #[test]
    fn junk_and_unsigned_messages_are_refused_before_anything_else() {
        let v = Verifier::default();
        let topic = "wardgate/v1/s/w/gw1/batch";
        assert!(check_message(&v, topic, b"junk").is_err());
        assert!(check_message(&v, topic, &payload(1).to_cbor()).is_err());
    }
}
