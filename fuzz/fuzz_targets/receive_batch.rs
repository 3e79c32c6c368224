//! The receiver's batch path. The first byte picks: 0 `check_message` on an arbitrary message
//! (COSE_Sign1 parsing, kid, x5chain, signature) from a Verifier that lists the fixed gateway
//! certificate and trusts the fixed CA; 1 `decode_batch` on arbitrary bytes; 2 the rest is a
//! payload signed by the trusted gateway, so `check_message` reaches the CBOR batch schema, the
//! version and the topic/identity checks: it accepts exactly what `decode_batch` accepts for
//! this gateway; 3 like 2 with an arbitrary topic (length-prefixed).
#![no_main]
use libfuzzer_sys::fuzz_target;
use wardgate::receive::verify::{check_message, decode_batch};
use wardgate_fuzz::{fixture, receiver_verifier, GATEWAY, SITE, TOPIC, WARD};

fn signed(topic: &str, payload: &[u8]) {
    let message = fixture().gateway.sign(payload.to_vec());
    let checked = check_message(receiver_verifier(), topic, &message);
    let decoded = decode_batch(payload);
    match (&checked, &decoded) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Ok(a), Err(e)) => panic!("check_message accepted {a:?}, decode_batch refused: {e}"),
        (Err(_), Ok(b)) if topic == TOPIC && (b.site.as_str(), b.ward.as_str(), b.gateway.as_str()) == (SITE, WARD, GATEWAY) => {
            panic!("a batch of the signer's own gateway on its own topic was refused: {checked:?}")
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, v)) = data.split_first() else { return };
    match sel % 4 {
        0 => {
            let _ = check_message(receiver_verifier(), TOPIC, v);
        }
        1 => {
            let _ = decode_batch(v);
        }
        2 => signed(TOPIC, v),
        _ => {
            let Some((&n, rest)) = v.split_first() else { return };
            let n = usize::from(n).min(rest.len());
            signed(&String::from_utf8_lossy(&rest[..n]), &rest[n..]);
        }
    }
});
