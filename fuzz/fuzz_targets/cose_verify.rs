//! COSE_Sign1 verification (`wardgate::signing::Verifier::verify_signed`) by a Verifier that
//! trusts only the fixed CA, so every signer goes through the `x5chain` path (RFC 9360). The
//! first byte picks: 0 an arbitrary message; 1 the rest is an arbitrary certificate (DER) put in
//! a message's `x5chain` (with the CA after it) under the `kid` computed from it, so the chain
//! reaches certificate parsing and path validation (webpki) and the identity reader; the
//! signature is garbage, so it must be refused; 2 the rest is a payload signed by the fixed
//! gateway (chain to the CA): it must verify and return the payload unchanged.
#![no_main]
use coset::{iana, CborSerializable, CoseSign1Builder, HeaderBuilder};
use libfuzzer_sys::fuzz_target;
use wardgate::signing::{kid_of, X5CHAIN};
use wardgate_fuzz::{ca_verifier, fixture};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, v)) = data.split_first() else { return };
    let verifier = ca_verifier();
    match sel % 3 {
        0 => {
            let _ = verifier.verify_signed(v);
        }
        1 => {
            let leaf = rustls_pki_types::CertificateDer::from(v.to_vec());
            let Ok(kid) = kid_of(&leaf) else { return };
            let chain = ciborium::Value::Array(vec![
                ciborium::Value::Bytes(v.to_vec()),
                ciborium::Value::Bytes(fixture().ca_der.clone()),
            ]);
            let protected = HeaderBuilder::new()
                .algorithm(iana::Algorithm::EdDSA)
                .key_id(kid.to_vec())
                .value(X5CHAIN, chain)
                .build();
            let message = CoseSign1Builder::new()
                .protected(protected)
                .payload(b"payload".to_vec())
                .signature(vec![0u8; 64])
                .build()
                .to_vec()
                .unwrap();
            assert!(verifier.verify_signed(&message).is_err(), "a garbage signature verified");
        }
        _ => {
            let message = fixture().gateway.sign(v.to_vec());
            let verified = verifier.verify_signed(&message).expect("the fixed gateway verifies");
            assert_eq!(verified.payload, v);
            assert!(!verified.listed);
        }
    }
});
