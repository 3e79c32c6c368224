//! What the receiver says back once a batch is stored durably: the ack on
//! `wardgate/v1/{site}/{ward}/{gateway}/ack` (docs/wire-format.md, "Ack").
//!
//! Today a plain CBOR [`Ack`]. This is the one place an ack is built, so the signed ack of
//! issue 9 (COSE_Sign1 with the receiver's key) replaces [`ack_message`]'s body and nothing else.

use crate::batch::{Ack, BatchPayload, Origin};
use crate::mqtt;

/// The ack for one stored batch: `(topic, payload)`.
pub fn ack_message(batch: &BatchPayload) -> (String, Vec<u8>) {
    let origin = Origin {
        gateway: batch.gateway.clone(),
        site: batch.site.clone(),
        ward: batch.ward.clone(),
    };
    let ack = Ack {
        v: 1,
        gateway: batch.gateway.clone(),
        batches: vec![batch.batch],
    };
    (mqtt::ack(&origin), ack.to_cbor())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_names_the_gateway_and_batch_on_its_own_topic() {
        let b = BatchPayload {
            v: 1,
            gateway: "gw1".into(),
            site: "s".into(),
            ward: "w".into(),
            batch: 42,
            observations: vec![],
            events: vec![],
        };
        let (topic, bytes) = ack_message(&b);
        assert_eq!(topic, "wardgate/v1/s/w/gw1/ack");
        let a = Ack::from_cbor(&bytes).unwrap();
        assert_eq!((a.v, a.gateway.as_str(), a.batches), (1, "gw1", vec![42]));
    }
}
