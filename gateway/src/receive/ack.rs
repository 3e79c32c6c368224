//! What the receiver says back once a batch is stored durably: the ack on
//! `wardgate/v1/{site}/{ward}/{gateway}/ack` (docs/wire-format.md, "Ack").
//!
//! Since issue 9 an ack is a COSE_Sign1, signed with the receiver's own key (its MQTT client
//! certificate and key, `[mqtt] cert`/`key`; its certificate travels in `x5chain`), over the
//! CBOR [`Ack`] of version [`ACK_VERSION`]. A gateway deletes rows only for an ack that verifies
//! against the receivers it trusts (`crate::uplink::acks`). During a migration,
//! `[receiver] legacy_plain_acks = true` also sends the plain v1 ack that gateways from before
//! issue 9 understand (and new gateways refuse); switch it off once every gateway is upgraded.

use crate::batch::{Ack, BatchPayload, Origin};
use crate::mqtt;
use crate::signing::Signer;
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
        };
        let mut out = vec![(topic.clone(), self.signer.sign(ack(ACK_VERSION).to_cbor()))];
        if self.legacy_plain {
            out.push((topic, ack(1).to_cbor()));
        }
        out
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
}
