//! The gateway's ack path (`wardgate::uplink::acks::check_ack`) with a fixed policy: gateway
//! `gw-1`, the fixed receiver certificate listed, the fixed CA trusted. The first byte picks:
//! 0 an arbitrary message; 1 the rest is a payload signed by the trusted receiver: an ack is
//! accepted exactly when the payload is a v2 `Ack` naming `gw-1` with at most
//! `MAX_ACK_BATCHES` batches, and the batches accepted are the ones it names; 2 the rest
//! signed by the gateway's own certificate (same CA, not a receiver): always refused.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wardgate::batch::Ack;
use wardgate::uplink::acks::{check_ack, AckVerdict, ACK_VERSION, MAX_ACK_BATCHES};
use wardgate_fuzz::{ack_policy, fixture, GATEWAY};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, v)) = data.split_first() else { return };
    match sel % 3 {
        0 => {
            let _ = check_ack(ack_policy(), v);
        }
        1 => {
            let verdict = check_ack(ack_policy(), &fixture().receiver.sign(v.to_vec()));
            let want = Ack::from_cbor(v).ok().filter(|a| {
                a.v == ACK_VERSION && a.gateway == GATEWAY && a.batches.len() <= MAX_ACK_BATCHES
            });
            match (verdict, want) {
                (AckVerdict::Accept(b), Some(a)) => assert_eq!(b, a.batches),
                (AckVerdict::Refuse { .. }, None) => {}
                (v, w) => panic!("verdict {v:?} for payload {w:?}"),
            }
        }
        _ => {
            let verdict = check_ack(ack_policy(), &fixture().gateway.sign(v.to_vec()));
            assert!(
                matches!(verdict, AckVerdict::Refuse { .. }),
                "a gateway certificate acked: {verdict:?}"
            );
        }
    }
});
