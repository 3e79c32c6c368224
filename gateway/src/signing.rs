//! COSE_Sign1 signing and verification of batches (RFC 9052 §4.2, §4.4; DESIGN §5 contract).
//!
//! - Algorithm: ES256 (ECDSA P-256 with SHA-256, signature raw `r‖s`, 64 bytes; RFC 9053 §2.1)
//!   or EdDSA (Ed25519; RFC 9053 §2.2), with the gateway's TLS client key.
//! - Protected header: `alg` (1) and `kid` (4) = SHA-256 of the gateway certificate's
//!   SubjectPublicKeyInfo DER (RFC 5280 §4.1.2.7), 32 bytes.
//! - The message is tagged (CBOR tag 18); external AAD is empty.
//!
//! One crypto provider: `ring` (also rustls's provider here).

use coset::{
    iana, CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable,
};
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::path::Path;

/// Errors loading keys or certificates, or verifying messages.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A PEM file could not be read or holds no usable item.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The key does not belong to the certificate, or is of an unsupported type.
    #[error("{0}")]
    Key(String),
    /// A message failed verification; the text says why (not COSE, unknown kid, bad signature).
    #[error("{0}")]
    Verify(String),
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo DER: the `kid` of its holder's messages.
pub fn kid_of(cert: &CertificateDer<'_>) -> Result<[u8; 32], SigningError> {
    let spki = spki_der(cert)?;
    let d = ring::digest::digest(&ring::digest::SHA256, &spki);
    let mut kid = [0u8; 32];
    kid.copy_from_slice(d.as_ref());
    Ok(kid)
}

fn spki_der(cert: &CertificateDer<'_>) -> Result<Vec<u8>, SigningError> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| SigningError::Key(format!("certificate does not parse: {e}")))?;
    Ok(ee.subject_public_key_info().as_ref().to_vec())
}

/// Algorithm of a public key, from its SPKI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyAlg {
    Es256,
    EdDsa,
}

const OID_EC_PUBLIC_KEY: spki::ObjectIdentifier =
    spki::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_ED25519: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.3.101.112");

/// (algorithm, raw public key: uncompressed P-256 point or 32-byte Ed25519 key) from SPKI DER.
fn public_key(spki_der: &[u8]) -> Result<(KeyAlg, Vec<u8>), SigningError> {
    use spki::der::Decode;
    let info = spki::SubjectPublicKeyInfoRef::from_der(spki_der)
        .map_err(|e| SigningError::Key(format!("SubjectPublicKeyInfo does not parse: {e}")))?;
    let raw = info.subject_public_key.raw_bytes().to_vec();
    let oid = info.algorithm.oid;
    if oid == OID_ED25519 {
        return Ok((KeyAlg::EdDsa, raw));
    }
    if oid == OID_EC_PUBLIC_KEY {
        let curve = info
            .algorithm
            .parameters
            .and_then(|p| p.decode_as::<spki::ObjectIdentifier>().ok());
        if curve == Some(OID_P256) {
            return Ok((KeyAlg::Es256, raw));
        }
    }
    Err(SigningError::Key(format!(
        "unsupported public key algorithm {oid} (wardgate signs with P-256 or Ed25519)"
    )))
}

/// Reads every certificate from a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SigningError> {
    let file_err = |m: String| SigningError::File {
        path: path.display().to_string(),
        message: m,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_err("no CERTIFICATE in PEM file".into()));
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, SEC1 or PKCS#1 PEM).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, SigningError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| SigningError::File {
        path: path.display().to_string(),
        message: format!("cannot read private key: {e}"),
    })
}

enum SigningKey {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// Signs batch payloads as COSE_Sign1 with the gateway key.
pub struct Signer {
    key: SigningKey,
    kid: [u8; 32],
    rng: ring::rand::SystemRandom,
}

impl Signer {
    /// Loads the gateway certificate (first in `cert_path`) and its PKCS#8 key, and checks that
    /// they belong together. Errors name the file and the problem.
    pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<Signer, SigningError> {
        let certs = read_certs(cert_path)?;
        let key = read_key(key_path)?;
        Signer::new(&certs[0], &key).map_err(|e| match e {
            SigningError::Key(m) => SigningError::Key(format!(
                "{} / {}: {m}",
                cert_path.display(),
                key_path.display()
            )),
            e => e,
        })
    }

    /// A signer from DER: the certificate and its private key (must be PKCS#8).
    pub fn new(cert: &CertificateDer<'_>, key: &PrivateKeyDer<'_>) -> Result<Signer, SigningError> {
        let PrivateKeyDer::Pkcs8(pkcs8) = key else {
            return Err(SigningError::Key(
                "the private key must be PKCS#8 (`-----BEGIN PRIVATE KEY-----`); convert with `openssl pkcs8 -topk8 -nocrypt`".into(),
            ));
        };
        let spki = spki_der(cert)?;
        let (alg, public) = public_key(&spki)?;
        let rng = ring::rand::SystemRandom::new();
        let key = match alg {
            KeyAlg::Es256 => SigningKey::Es256(
                EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8.secret_pkcs8_der(),
                    &rng,
                )
                .map_err(|e| SigningError::Key(format!("not a P-256 PKCS#8 key: {e}")))?,
            ),
            KeyAlg::EdDsa => SigningKey::EdDsa(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8.secret_pkcs8_der())
                    .map_err(|e| SigningError::Key(format!("not an Ed25519 PKCS#8 key: {e}")))?,
            ),
        };
        let key_public = match &key {
            SigningKey::Es256(k) => k.public_key().as_ref().to_vec(),
            SigningKey::EdDsa(k) => k.public_key().as_ref().to_vec(),
        };
        if key_public != public {
            return Err(SigningError::Key(
                "the private key does not belong to the certificate".into(),
            ));
        }
        let kid = kid_of(cert)?;
        Ok(Signer { key, kid, rng })
    }

    /// The `kid` this signer puts in the protected header.
    pub fn kid(&self) -> [u8; 32] {
        self.kid
    }

    /// A tagged COSE_Sign1 (CBOR tag 18) over `payload`.
    pub fn sign(&self, payload: Vec<u8>) -> Vec<u8> {
        let alg = match self.key {
            SigningKey::Es256(_) => iana::Algorithm::ES256,
            SigningKey::EdDsa(_) => iana::Algorithm::EdDSA,
        };
        let protected = HeaderBuilder::new()
            .algorithm(alg)
            .key_id(self.kid.to_vec())
            .build();
        let sign1 = CoseSign1Builder::new()
            .protected(protected)
            .payload(payload)
            .create_signature(b"", |tbs| match &self.key {
                SigningKey::Es256(k) => k
                    .sign(&self.rng, tbs)
                    .expect("ECDSA signing with a valid key")
                    .as_ref()
                    .to_vec(),
                SigningKey::EdDsa(k) => k.sign(tbs).as_ref().to_vec(),
            })
            .build();
        sign1
            .to_tagged_vec()
            .expect("encoding a COSE_Sign1 to a Vec cannot fail")
    }
}

/// Verifies COSE_Sign1 messages against a set of trusted gateway certificates, by `kid`.
#[derive(Default)]
pub struct Verifier {
    keys: HashMap<[u8; 32], (KeyAlg, Vec<u8>, String)>,
}

impl Verifier {
    /// Trusts `cert` under `name` (shown in errors and logs).
    pub fn add(&mut self, cert: &CertificateDer<'_>, name: &str) -> Result<(), SigningError> {
        let (alg, key) = public_key(&spki_der(cert)?)?;
        self.keys.insert(kid_of(cert)?, (alg, key, name.to_owned()));
        Ok(())
    }

    /// Trusts every certificate in a PEM file.
    pub fn add_file(&mut self, path: &Path) -> Result<(), SigningError> {
        for c in read_certs(path)? {
            self.add(&c, &path.display().to_string())?;
        }
        Ok(())
    }

    /// Number of trusted keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies a COSE_Sign1 (tagged or untagged) and returns its payload.
    ///
    /// Errors: not a COSE_Sign1; no or unknown `kid`; `alg` missing or not matching the key;
    /// detached payload; bad signature.
    pub fn verify(&self, message: &[u8]) -> Result<Vec<u8>, SigningError> {
        let sign1 = CoseSign1::from_tagged_slice(message)
            .or_else(|_| CoseSign1::from_slice(message))
            .map_err(|e| SigningError::Verify(format!("not a COSE_Sign1 message: {e}")))?;
        let kid = &sign1.protected.header.key_id;
        let kid: [u8; 32] = kid.as_slice().try_into().map_err(|_| {
            SigningError::Verify(format!(
                "protected kid has {} bytes, expected 32",
                kid.len()
            ))
        })?;
        let Some((alg, key, _name)) = self.keys.get(&kid) else {
            return Err(SigningError::Verify(format!(
                "unknown kid {}: no trusted gateway certificate has it",
                hex::encode(kid)
            )));
        };
        let want = match alg {
            KeyAlg::Es256 => iana::Algorithm::ES256,
            KeyAlg::EdDsa => iana::Algorithm::EdDSA,
        };
        if sign1.protected.header.alg != Some(coset::RegisteredLabelWithPrivate::Assigned(want)) {
            return Err(SigningError::Verify(format!(
                "protected alg {:?} does not match the key ({want:?})",
                sign1.protected.header.alg
            )));
        }
        let Some(payload) = sign1.payload.clone() else {
            return Err(SigningError::Verify(
                "detached payloads are not accepted".into(),
            ));
        };
        sign1
            .verify_signature(b"", |sig, tbs| {
                let algo: &dyn signature::VerificationAlgorithm = match alg {
                    KeyAlg::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
                    KeyAlg::EdDsa => &signature::ED25519,
                };
                signature::UnparsedPublicKey::new(algo, key).verify(tbs, sig)
            })
            .map_err(|_| SigningError::Verify("bad signature".into()))?;
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway_pair(
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gw-test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }

    #[test]
    fn es256_message_verifies_and_tampering_is_detected() {
        let (cert, key) = gateway_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let signer = Signer::new(&cert, &key).unwrap();
        let msg = signer.sign(b"hello".to_vec());
        assert_eq!(msg[0], 0xd2, "tagged COSE_Sign1 starts with tag 18");
        let mut v = Verifier::default();
        v.add(&cert, "gw").unwrap();
        assert_eq!(v.verify(&msg).unwrap(), b"hello");
        let mut bad = msg.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(v
            .verify(&bad)
            .unwrap_err()
            .to_string()
            .contains("bad signature"));
    }

    #[test]
    fn ed25519_message_verifies() {
        let (cert, key) = gateway_pair(&rcgen::PKCS_ED25519);
        let signer = Signer::new(&cert, &key).unwrap();
        let mut v = Verifier::default();
        v.add(&cert, "gw").unwrap();
        assert_eq!(
            v.verify(&signer.sign(vec![1, 2, 3])).unwrap(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn kid_is_sha256_of_spki_and_unknown_kid_is_refused() {
        let (cert, key) = gateway_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let signer = Signer::new(&cert, &key).unwrap();
        let spki = spki_der(&cert).unwrap();
        assert_eq!(spki[0], 0x30, "SPKI DER is a SEQUENCE");
        assert_eq!(
            signer.kid().as_slice(),
            ring::digest::digest(&ring::digest::SHA256, &spki).as_ref()
        );
        let (other, _) = gateway_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let mut v = Verifier::default();
        v.add(&other, "other").unwrap();
        assert!(v
            .verify(&signer.sign(vec![]))
            .unwrap_err()
            .to_string()
            .contains("unknown kid"));
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let (cert, _) = gateway_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, key) = gateway_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert!(Signer::new(&cert, &key)
            .err()
            .unwrap()
            .to_string()
            .contains("does not belong"));
    }
}
