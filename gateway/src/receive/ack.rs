//! What the receiver says back once a batch is stored durably: the ack on
//! `wardgate/v1/{site}/{ward}/{gateway}/ack` (docs/wire-format.md, "Ack").
//!
//! Since issue 9 an ack is a COSE_Sign1, signed with the receiver's own key (its MQTT client
//! certificate and key, `[mqtt] cert`/`key`; its certificate travels in `x5chain`), over the
//! CBOR [`Ack`] of version [`ACK_VERSION`]. A gateway deletes rows only for an ack that verifies
//! against the receivers it trusts (`crate::uplink::acks`). During a migration,
//! `[receiver] legacy_plain_acks = true` also sends the plain v1 ack that gateways from before
//! issue 9 understand (and new gateways refuse); switch it off once every gateway is upgraded.

use crate::batch::{Ack, BatchPayload, Origin, MAX_REFUSAL_CHARS};
use crate::mqtt;
use crate::signing::{proven_signer, Signer};
use crate::uplink::acks::ACK_VERSION;

/// Builds the acks of stored batches.
pub struct Acker {
    /// The receiver's signer.
    pub signer: Signer,
    /// Also send the plain v1 ack (migration only).
    pub legacy_plain: bool,
}

impl Acker {
    /// The ack message(s) for one stored batch: `(topic, payload)`, the signed one first.
    pub fn messages(&self, batch: &BatchPayload) -> Vec<(String, Vec<u8>)> {
        let origin = Origin {
            gateway: batch.gateway.clone(),
            site: batch.site.clone(),
            ward: batch.ward.clone(),
        };
        let topic = mqtt::ack(&origin);
        let ack = |v| Ack {
            v,
            gateway: batch.gateway.clone(),
            batches: vec![batch.batch],
            refused: None,
        };
        let mut out = vec![(topic.clone(), self.signer.sign(ack(ACK_VERSION).to_cbor()))];
        if self.legacy_plain {
            out.push((topic, ack(1).to_cbor()));
        }
        out
    }

    /// The signed refusal notice for a batch refused with `reason` on `topic`, when the
    /// message proves that the gateway the topic names signed it (its own `x5chain` leaf names
    /// that gateway and verifies the signature, [`proven_signer`]) although this receiver does
    /// not trust that certificate (revoked, expired, another CA): `(ack topic, COSE_Sign1 of
    /// an [`Ack`] with `refused`)`. `None` for anyone else: a junk or forged message gets no
    /// answer (an attacker cannot make the receiver speak to a gateway on its behalf).
    pub fn refusal(&self, topic: &str, signed: &[u8], reason: &str) -> Option<(String, Vec<u8>)> {
        let (site, ward, gateway) = mqtt::parse_batch(topic)?;
        if !proven_signer(signed)?.is_gateway(gateway, site, ward) {
            return None;
        }
        let origin = Origin {
            gateway: gateway.into(),
            site: site.into(),
            ward: ward.into(),
        };
        let notice = Ack {
            v: ACK_VERSION,
            gateway: gateway.into(),
            batches: vec![],
            refused: Some(reason.chars().take(MAX_REFUSAL_CHARS).collect()),
        };
        Some((mqtt::ack(&origin), self.signer.sign(notice.to_cbor())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::acks::test_support::{policy, receiver};
    use crate::uplink::acks::{check_ack, AckVerdict};

    #[test]
    fn the_signed_ack_names_the_gateway_and_batch_on_its_own_topic_and_verifies() {
        let b = BatchPayload {
            v: 1,
            gateway: "gw1".into(),
            site: "s".into(),
            ward: "w".into(),
            batch: 42,
            observations: vec![],
            events: vec![],
            locations: Default::default(),
        };
        let (cert, signer) = receiver("up-a");
        let acker = Acker {
            signer,
            legacy_plain: false,
        };
        let msgs = acker.messages(&b);
        assert_eq!(msgs.len(), 1);
        let (topic, bytes) = &msgs[0];
        assert_eq!(topic, "wardgate/v1/s/w/gw1/ack");
        assert_eq!(
            check_ack(&policy("gw1", &cert), bytes),
            AckVerdict::Accept(vec![42])
        );
        let legacy = Acker {
            legacy_plain: true,
            ..acker
        }
        .messages(&b);
        let plain = Ack::from_cbor(&legacy[1].1).unwrap();
        assert_eq!((plain.v, plain.batches), (1, vec![42]));
    }

    /// A gateway certificate naming `urn:wardgate:s:w:{id}` and its signer (x5chain = leaf).
    fn gateway(id: &str) -> Signer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.subject_alt_names = vec![rcgen::SanType::URI(
            format!("urn:wardgate:s:w:{id}").try_into().unwrap(),
        )];
        let cert = p.self_signed(&key).unwrap().der().clone();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Signer::new(&cert, &key).unwrap()
    }

    #[test]
    fn a_refusal_notice_goes_only_to_the_gateway_that_provably_signed() {
        let (cert, rx) = receiver("up-a");
        let acker = Acker {
            signer: rx,
            legacy_plain: false,
        };
        let topic = "wardgate/v1/s/w/gw1/batch";
        let by_gw1 = gateway("gw1").sign(b"batch".to_vec());
        let (ack_topic, notice) = acker
            .refusal(topic, &by_gw1, "signer certificate refused: CertRevoked")
            .expect("gw1 signed it with the key of a certificate naming gw1");
        assert_eq!(ack_topic, "wardgate/v1/s/w/gw1/ack");
        match check_ack(&policy("gw1", &cert), &notice) {
            AckVerdict::ReceiverRefuses { reason, .. } => {
                assert_eq!(reason, "signer certificate refused: CertRevoked")
            }
            other => panic!("{other:?}"),
        }
        // Signed by another gateway's key, junk, a message whose signature was tampered
        // with, or on a topic that is no batch topic: no answer.
        let by_gw2 = gateway("gw2").sign(b"batch".to_vec());
        assert!(acker.refusal(topic, &by_gw2, "x").is_none());
        assert!(acker.refusal(topic, b"junk", "x").is_none());
        let mut tampered = by_gw1.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(acker.refusal(topic, &tampered, "x").is_none());
        assert!(acker.refusal("other/topic", &by_gw1, "x").is_none());
        // The reason is bounded.
        let long = "r".repeat(10_000);
        let (_, notice) = acker.refusal(topic, &by_gw1, &long).unwrap();
        match check_ack(&policy("gw1", &cert), &notice) {
            AckVerdict::ReceiverRefuses { reason, .. } => {
                assert_eq!(reason.len(), MAX_REFUSAL_CHARS)
            }
            other => panic!("{other:?}"),
        }
    }
}
