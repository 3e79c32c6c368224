//! The receiver's decryption (`wardgate::encryption::Decryptor::decrypt`) of COSE_Encrypt
//! messages, with a receiver key made once per run (P-256). The first byte picks:
//! 0 an arbitrary message: never a panic;
//! 1 the rest encrypted to the receiver: decrypts back to exactly the rest;
//! 2 the rest encrypted, then one byte of the message changed (position and value from the
//!   input): decryption fails or gives back exactly the plaintext — never other bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wardgate::encryption::{Decryptor, Encryptor};

fn keys() -> &'static (Encryptor, Decryptor) {
    static K: OnceLock<(Encryptor, Decryptor)> = OnceLock::new();
    K.get_or_init(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.subject_alt_names = vec![rcgen::SanType::URI(
            "urn:wardgate-receiver:fuzz".try_into().unwrap(),
        )];
        let cert = p.self_signed(&key).unwrap().der().clone();
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        (
            Encryptor::new(std::slice::from_ref(&cert)).unwrap(),
            Decryptor::new(&cert, &der).unwrap(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let (enc, dec) = keys();
    match sel % 3 {
        0 => {
            let _ = dec.decrypt(rest);
        }
        1 => {
            let m = enc.encrypt(rest);
            assert_eq!(dec.decrypt(&m).unwrap(), rest);
        }
        _ => {
            let Some((&[a, b, c], plain)) = rest.split_first_chunk::<3>() else { return };
            let mut m = enc.encrypt(plain);
            let at = (usize::from(a) << 8 | usize::from(b)) % m.len();
            m[at] ^= c.max(1);
            if let Ok(p) = dec.decrypt(&m) {
                assert_eq!(p, plain, "a changed message decrypted to other bytes");
            }
        }
    }
});
