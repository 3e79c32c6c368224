//! COSE_Encrypt of signed messages to the receivers' public keys (RFC 9052 §5.1; DESIGN §5
//! contract, `docs/wire-format.md` "Encryption").
//!
//! Sign, then encrypt: the plaintext is the whole tagged COSE_Sign1 a gateway would otherwise
//! publish ([`crate::signing`]), so a receiver decrypts with its own key and then verifies the
//! signature exactly as before. A client that may subscribe to the topic (any certificate holder
//! on a shared broker) learns the topic and the size, nothing else.
//!
//! - Content: **A256GCM** (alg 3, RFC 9053 §4.1) with a fresh random 256-bit content key (CEK)
//!   and 96-bit IV per message; AAD = `Enc_structure ["Encrypt", protected, h'']`.
//! - One recipient per receiver key: **ECDH-ES + A256KW** (alg -31, RFC 9053 §6.4): a fresh
//!   ephemeral P-256 key per recipient (header -1, a COSE_Key EC2 with `x` and `y`), the ECDH
//!   shared secret through HKDF-SHA-256 (no salt) with `info` = COSE_KDF_Context
//!   `[-5 (A256KW), [nil,nil,nil], [nil,nil,nil], [256, recipient protected]]` (RFC 9053 §5.2)
//!   gives the key-encryption key that wraps the CEK (AES key wrap, RFC 3394, 40 bytes).
//! - Recipient `kid` (header 4, unprotected) = SHA-256 of the receiver certificate's SPKI DER,
//!   the same rule as the signing `kid`, so a receiver finds its own recipient at once.
//! - Bounds: at most [`MAX_RECIPIENTS`] recipients, on both sides.
//!
//! Crypto: `ring` for the gateway's side (ephemeral ECDH, HKDF, AES-GCM, randomness); ring has
//! no static-key ECDH, so the receiver's side uses `p256` (RustCrypto) for the one agreement
//! with its stored key, and `aes-kw` (RustCrypto, on the `aes` crate the adapters already use)
//! for RFC 3394, which ring lacks.

use coset::{
    iana, AsCborValue, CborSerializable, CoseEncrypt, CoseEncryptBuilder, CoseKdfContextBuilder,
    CoseKey, CoseKeyBuilder, CoseRecipient, CoseRecipientBuilder, HeaderBuilder, Label,
    ProtectedHeader, SuppPubInfo, TaggedCborSerializable,
};
use ring::agreement;
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

/// Most recipients of one message (receivers a gateway encrypts to; what a receiver accepts).
pub const MAX_RECIPIENTS: usize = 8;
/// COSE header label of the ephemeral key (RFC 9053 §6.4.1).
pub const EPHEMERAL_KEY: i64 = -1;
const CEK_LEN: usize = 32;
const IV_LEN: usize = 12;
const WRAPPED_LEN: usize = CEK_LEN + 8;

/// Why a message could not be encrypted or decrypted, or a key not loaded.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    /// A certificate or key is unusable for encryption (type, file, mismatch).
    #[error("{0}")]
    Key(String),
    /// The message is not a COSE_Encrypt this receiver can open; the text says why.
    #[error("{0}")]
    Decrypt(String),
}

impl From<crate::signing::SigningError> for EncryptionError {
    fn from(e: crate::signing::SigningError) -> Self {
        EncryptionError::Key(e.to_string())
    }
}

/// Is this a tagged COSE_Encrypt (CBOR tag 96: `0xD8 0x60`)? A COSE_Sign1 starts with `0xD2`.
pub fn is_encrypted(message: &[u8]) -> bool {
    message.starts_with(&[0xD8, 0x60])
}

/// The COSE_KDF_Context of a recipient (RFC 9053 §5.2): HKDF `info`.
fn kdf_info(recipient_protected: &ProtectedHeader) -> Vec<u8> {
    CoseKdfContextBuilder::new()
        .algorithm(iana::Algorithm::A256KW)
        .supp_pub_info(SuppPubInfo {
            key_data_length: (CEK_LEN * 8) as u64,
            protected: recipient_protected.clone(),
            other: None,
        })
        .build()
        .to_vec()
        .expect("a KDF context always serialises")
}

/// HKDF-SHA-256 (RFC 5869), no salt, 32 bytes: the key-encryption key.
fn kek(shared: &[u8], info: &[u8]) -> [u8; 32] {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(shared);
    let mut out = [0u8; 32];
    prk.expand(&[info], ring::hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is a valid HKDF-SHA-256 length");
    out
}

fn recipient_protected() -> ProtectedHeader {
    ProtectedHeader {
        original_data: None,
        header: HeaderBuilder::new()
            .algorithm(iana::Algorithm::ECDH_ES_A256KW)
            .build(),
    }
}

/// One receiver a gateway encrypts to.
#[derive(Clone)]
struct Recipient {
    kid: [u8; 32],
    /// Uncompressed SEC1 P-256 point.
    point: Vec<u8>,
}

/// Encrypts signed messages to a fixed set of receivers (the gateway's `[uplink] receiver_certs`).
pub struct Encryptor {
    recipients: Vec<Recipient>,
    rng: SystemRandom,
}

impl Encryptor {
    /// Recipients from receiver certificates: each must hold a P-256 key; 1 to
    /// [`MAX_RECIPIENTS`] of them.
    pub fn new(certs: &[CertificateDer<'_>]) -> Result<Encryptor, EncryptionError> {
        if certs.is_empty() || certs.len() > MAX_RECIPIENTS {
            return Err(EncryptionError::Key(format!(
                "encryption needs 1 to {MAX_RECIPIENTS} receiver certificates, not {}",
                certs.len()
            )));
        }
        let mut recipients = Vec::new();
        for c in certs {
            let point = crate::signing::p256_point(c)?.ok_or_else(|| {
                EncryptionError::Key(
                    "the receiver certificate's key is not P-256: COSE_Encrypt with ECDH-ES needs \
                     a P-256 receiver key (or set [uplink] encrypt = false)"
                        .into(),
                )
            })?;
            let kid = crate::signing::kid_of(c)?;
            if !recipients.iter().any(|r: &Recipient| r.kid == kid) {
                recipients.push(Recipient { kid, point });
            }
        }
        Ok(Encryptor {
            recipients,
            rng: SystemRandom::new(),
        })
    }

    /// Recipients from PEM files: every certificate in each, as `receiver_certs` trusts every
    /// certificate it lists for acks. Errors name the files.
    pub fn from_files<P: AsRef<Path>>(paths: &[P]) -> Result<Encryptor, EncryptionError> {
        let mut certs = Vec::new();
        for p in paths {
            certs.extend(crate::signing::read_certs(p.as_ref())?);
        }
        Encryptor::new(&certs).map_err(|e| match e {
            EncryptionError::Key(m) => EncryptionError::Key(format!(
                "[uplink] receiver_certs ({}): {m}",
                paths
                    .iter()
                    .map(|p| p.as_ref().display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            e => e,
        })
    }

    /// How many receivers each message is encrypted to.
    pub fn recipients(&self) -> usize {
        self.recipients.len()
    }

    /// The recipients' `kid`s, in order.
    pub fn kids(&self) -> Vec<[u8; 32]> {
        self.recipients.iter().map(|r| r.kid).collect()
    }

    /// Encrypts `plaintext` (a tagged COSE_Sign1) into a tagged COSE_Encrypt.
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut cek = [0u8; CEK_LEN];
        let mut iv = [0u8; IV_LEN];
        self.rng.fill(&mut cek).expect("system randomness");
        self.rng.fill(&mut iv).expect("system randomness");
        let mut builder = CoseEncryptBuilder::new()
            .protected(
                HeaderBuilder::new()
                    .algorithm(iana::Algorithm::A256GCM)
                    .build(),
            )
            .unprotected(HeaderBuilder::new().iv(iv.to_vec()).build());
        let protected = recipient_protected();
        let info = kdf_info(&protected);
        for r in &self.recipients {
            let eph = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &self.rng)
                .expect("system randomness");
            let eph_pub = eph.compute_public_key().expect("P-256 public key");
            let kek = agreement::agree_ephemeral(
                eph,
                &agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, &r.point),
                |z| kek(z, &info),
            )
            .expect("the recipient point was checked when the certificate was loaded");
            let mut wrapped = [0u8; WRAPPED_LEN];
            aes_kw::KekAes256::from(kek)
                .wrap(&cek, &mut wrapped)
                .expect("a 32-byte key always wraps");
            let p = eph_pub.as_ref();
            let key = CoseKeyBuilder::new_ec2_pub_key(
                iana::EllipticCurve::P_256,
                p[1..33].to_vec(),
                p[33..65].to_vec(),
            )
            .build();
            let recipient = CoseRecipientBuilder::new()
                .protected(protected.header.clone())
                .unprotected(
                    HeaderBuilder::new()
                        .key_id(r.kid.to_vec())
                        .value(
                            EPHEMERAL_KEY,
                            key.to_cbor_value().expect("a COSE_Key always serialises"),
                        )
                        .build(),
                )
                .ciphertext(wrapped.to_vec())
                .build();
            builder = builder.add_recipient(recipient);
        }
        let gcm = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &cek).expect("32-byte key"),
        );
        builder
            .create_ciphertext(plaintext, &[], |pt, aad| {
                let mut buf = pt.to_vec();
                gcm.seal_in_place_append_tag(
                    ring::aead::Nonce::assume_unique_for_key(iv),
                    ring::aead::Aad::from(aad),
                    &mut buf,
                )
                .expect("AES-GCM seals any message this size");
                buf
            })
            .build()
            .to_tagged_vec()
            .expect("a COSE_Encrypt always serialises")
    }
}

/// A receiver's key: opens messages with a recipient for it.
pub struct Decryptor {
    kid: [u8; 32],
    secret: p256::SecretKey,
}

impl Decryptor {
    /// The receiver's certificate (its `kid`) and private key (PKCS#8 or SEC1, P-256); they must
    /// belong together.
    pub fn new(
        cert: &CertificateDer<'_>,
        key: &PrivateKeyDer<'_>,
    ) -> Result<Decryptor, EncryptionError> {
        let secret = secret_key(key).map_err(EncryptionError::Key)?;
        let point = crate::signing::p256_point(cert)?;
        let ours = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
            &secret.public_key(),
            false,
        );
        if point.as_deref() != Some(ours.as_bytes()) {
            return Err(EncryptionError::Key(
                "the private key does not belong to the certificate".into(),
            ));
        }
        Ok(Decryptor {
            kid: crate::signing::kid_of(cert)?,
            secret,
        })
    }

    /// From the private key alone (PEM file): the `kid` is the SHA-256 of the SubjectPublicKeyInfo
    /// DER of its public key, which is what a certificate for that key carries.
    pub fn from_key_file(key: &Path) -> Result<Decryptor, EncryptionError> {
        use p256::pkcs8::EncodePublicKey;
        let k = crate::signing::read_key(key)?;
        let secret =
            secret_key(&k).map_err(|m| EncryptionError::Key(format!("{}: {m}", key.display())))?;
        let spki = secret
            .public_key()
            .to_public_key_der()
            .map_err(|e| EncryptionError::Key(format!("{}: {e}", key.display())))?;
        let d = ring::digest::digest(&ring::digest::SHA256, spki.as_bytes());
        let mut kid = [0u8; 32];
        kid.copy_from_slice(d.as_ref());
        Ok(Decryptor { kid, secret })
    }

    /// From PEM files: the receiver's certificate (first in the file) and its key.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Decryptor, EncryptionError> {
        let certs = crate::signing::read_certs(cert)?;
        let k = crate::signing::read_key(key)?;
        Decryptor::new(&certs[0], &k).map_err(|e| match e {
            EncryptionError::Key(m) => {
                EncryptionError::Key(format!("{} / {}: {m}", cert.display(), key.display()))
            }
            e => e,
        })
    }

    /// This receiver's `kid`.
    pub fn kid(&self) -> [u8; 32] {
        self.kid
    }

    /// Opens a tagged COSE_Encrypt: the plaintext (the signed message inside), or why not.
    pub fn decrypt(&self, message: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let err = |m: &str| EncryptionError::Decrypt(m.to_owned());
        let enc = CoseEncrypt::from_tagged_slice(message)
            .map_err(|e| EncryptionError::Decrypt(format!("not a tagged COSE_Encrypt: {e}")))?;
        if enc.protected.header.alg
            != Some(coset::RegisteredLabelWithPrivate::Assigned(
                iana::Algorithm::A256GCM,
            ))
        {
            return Err(err("content algorithm is not A256GCM"));
        }
        if enc.recipients.len() > MAX_RECIPIENTS {
            return Err(EncryptionError::Decrypt(format!(
                "{} recipients (at most {MAX_RECIPIENTS})",
                enc.recipients.len()
            )));
        }
        let iv: [u8; IV_LEN] = enc
            .unprotected
            .iv
            .as_slice()
            .try_into()
            .map_err(|_| err("IV is not 12 bytes"))?;
        let r = enc
            .recipients
            .iter()
            .find(|r| r.unprotected.key_id == self.kid)
            .ok_or_else(|| {
                err("encrypted to other receivers: no recipient has this receiver's kid")
            })?;
        let cek = self.unwrap_cek(r)?;
        let gcm = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &cek).expect("32-byte key"),
        );
        enc.decrypt_ciphertext(
            &[],
            || err("no ciphertext"),
            |ct, aad| {
                let mut buf = ct.to_vec();
                let n = gcm
                    .open_in_place(
                        ring::aead::Nonce::assume_unique_for_key(iv),
                        ring::aead::Aad::from(aad),
                        &mut buf,
                    )
                    .map_err(|_| err("ciphertext or tag does not authenticate"))?
                    .len();
                buf.truncate(n);
                Ok(buf)
            },
        )
    }

    fn unwrap_cek(&self, r: &CoseRecipient) -> Result<[u8; CEK_LEN], EncryptionError> {
        let err = |m: &str| EncryptionError::Decrypt(m.to_owned());
        if r.protected.header.alg
            != Some(coset::RegisteredLabelWithPrivate::Assigned(
                iana::Algorithm::ECDH_ES_A256KW,
            ))
        {
            return Err(err("recipient algorithm is not ECDH-ES + A256KW"));
        }
        let eph = r
            .unprotected
            .rest
            .iter()
            .find(|(l, _)| *l == Label::Int(EPHEMERAL_KEY))
            .map(|(_, v)| v.clone())
            .ok_or_else(|| err("recipient has no ephemeral key"))?;
        let eph =
            CoseKey::from_cbor_value(eph).map_err(|_| err("ephemeral key is not a COSE_Key"))?;
        let param = |label: i64| {
            eph.params
                .iter()
                .find(|(l, _)| *l == Label::Int(label))
                .and_then(|(_, v)| v.as_bytes())
                .filter(|b| b.len() == 32)
                .cloned()
        };
        let crv_ok = eph
            .params
            .iter()
            .any(|(l, v)| *l == Label::Int(-1) && v.as_integer() == Some(1.into()));
        let (Some(x), Some(y), true) = (param(-2), param(-3), crv_ok) else {
            return Err(err("ephemeral key is not an uncompressed P-256 EC2 key"));
        };
        if eph.kty != coset::KeyType::Assigned(iana::KeyType::EC2) {
            return Err(err("ephemeral key is not EC2"));
        }
        let mut sec1 = vec![4u8];
        sec1.extend_from_slice(&x);
        sec1.extend_from_slice(&y);
        let public = p256::PublicKey::from_sec1_bytes(&sec1)
            .map_err(|_| err("ephemeral key is not a point on P-256"))?;
        let shared =
            p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), public.as_affine());
        let kek = kek(
            shared.raw_secret_bytes().as_slice(),
            &kdf_info(&recipient_protected_of(r)),
        );
        let wrapped: [u8; WRAPPED_LEN] = r
            .ciphertext
            .as_deref()
            .unwrap_or(&[])
            .try_into()
            .map_err(|_| err("wrapped key is not 40 bytes"))?;
        let mut cek = [0u8; CEK_LEN];
        aes_kw::KekAes256::from(kek)
            .unwrap(&wrapped, &mut cek)
            .map_err(|_| err("key unwrap failed: not encrypted to this receiver's key"))?;
        Ok(cek)
    }
}

/// A P-256 private key from PKCS#8 or SEC1 DER.
fn secret_key(key: &PrivateKeyDer<'_>) -> Result<p256::SecretKey, String> {
    use p256::pkcs8::DecodePrivateKey;
    match key {
        PrivateKeyDer::Pkcs8(k) => p256::SecretKey::from_pkcs8_der(k.secret_pkcs8_der())
            .map_err(|e| format!("not a P-256 PKCS#8 key ({e}); decryption needs P-256")),
        PrivateKeyDer::Sec1(k) => p256::SecretKey::from_sec1_der(k.secret_sec1_der())
            .map_err(|e| format!("not a P-256 SEC1 key ({e})")),
        _ => Err("an RSA key cannot decrypt (P-256 needed)".to_owned()),
    }
}

/// The recipient's protected header as received (its original bytes go into the KDF context).
fn recipient_protected_of(r: &CoseRecipient) -> ProtectedHeader {
    r.protected.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 receiver certificate and its decryptor.
    pub fn receiver() -> (CertificateDer<'static>, Decryptor) {
        let key = rcgen::KeyPair::generate().unwrap();
        let p = rcgen::CertificateParams::new(vec!["rx".into()]).unwrap();
        let cert = p.self_signed(&key).unwrap().der().clone();
        let d = Decryptor::new(&cert, &PrivateKeyDer::Pkcs8(key.serialize_der().into())).unwrap();
        (cert, d)
    }

    const SIGNED: &[u8] = b"\xd2\x84 pretend this is a COSE_Sign1 with values 97 % SpO2";

    #[test]
    fn round_trip() {
        let (cert, rx) = receiver();
        let e = Encryptor::new(std::slice::from_ref(&cert)).unwrap();
        let m = e.encrypt(SIGNED);
        assert!(is_encrypted(&m));
        assert!(!m.windows(10).any(|w| SIGNED.windows(10).any(|s| s == w)));
        assert_eq!(rx.decrypt(&m).unwrap(), SIGNED);
        // Fresh CEK, IV and ephemeral keys every time.
        assert_ne!(e.encrypt(SIGNED), m);
    }

    #[test]
    fn the_kid_from_the_key_alone_is_the_certificate_kid() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["rx".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("k.pem"), key.serialize_pem()).unwrap();
        let rx = Decryptor::from_key_file(&d.path().join("k.pem")).unwrap();
        assert_eq!(rx.kid(), crate::signing::kid_of(cert.der()).unwrap());
        let m = Encryptor::new(&[cert.der().clone()])
            .unwrap()
            .encrypt(SIGNED);
        assert_eq!(rx.decrypt(&m).unwrap(), SIGNED);
    }

    #[test]
    fn two_recipients_each_decrypt() {
        let (a, rx_a) = receiver();
        let (b, rx_b) = receiver();
        let m = Encryptor::new(&[a, b]).unwrap().encrypt(SIGNED);
        assert_eq!(rx_a.decrypt(&m).unwrap(), SIGNED);
        assert_eq!(rx_b.decrypt(&m).unwrap(), SIGNED);
    }

    #[test]
    fn a_non_recipient_is_refused_by_kid() {
        let (a, _) = receiver();
        let (_, stranger) = receiver();
        let m = Encryptor::new(&[a]).unwrap().encrypt(SIGNED);
        let e = stranger.decrypt(&m).unwrap_err().to_string();
        assert!(e.contains("no recipient has this receiver's kid"), "{e}");
    }

    #[test]
    fn a_stranger_claiming_the_kid_cannot_decrypt() {
        // Same kid as the real receiver, another private key: the unwrap fails.
        let (a, _) = receiver();
        let (_, mut stranger) = receiver();
        stranger.kid = crate::signing::kid_of(&a).unwrap();
        let m = Encryptor::new(&[a]).unwrap().encrypt(SIGNED);
        let e = stranger.decrypt(&m).unwrap_err().to_string();
        assert!(e.contains("key unwrap failed"), "{e}");
    }

    #[test]
    fn tampered_ciphertext_tag_or_header_fails() {
        let (a, rx) = receiver();
        let m = Encryptor::new(&[a]).unwrap().encrypt(SIGNED);
        let enc = CoseEncrypt::from_tagged_slice(&m).unwrap();
        let n = enc.ciphertext.as_ref().unwrap().len();
        for i in [0, n / 2, n - 1] {
            let mut t = enc.clone();
            t.ciphertext.as_mut().unwrap()[i] ^= 1;
            let e = rx.decrypt(&t.to_tagged_vec().unwrap()).unwrap_err();
            assert!(e.to_string().contains("does not authenticate"), "{e}");
        }
        // The wrapped key.
        let mut t = enc.clone();
        t.recipients[0].ciphertext.as_mut().unwrap()[3] ^= 1;
        assert!(rx.decrypt(&t.to_tagged_vec().unwrap()).is_err());
        // The IV.
        let mut t = enc.clone();
        t.unprotected.iv[0] ^= 1;
        assert!(rx.decrypt(&t.to_tagged_vec().unwrap()).is_err());
        // Truncated and junk.
        assert!(rx.decrypt(&m[..m.len() - 1]).is_err());
        assert!(rx.decrypt(b"junk").is_err());
        assert!(rx.decrypt(SIGNED).is_err());
    }

    #[test]
    fn bounds_and_key_types() {
        let (a, rx) = receiver();
        assert!(Encryptor::new(&[]).is_err());
        let many: Vec<_> = (0..=MAX_RECIPIENTS).map(|_| receiver().0).collect();
        assert!(Encryptor::new(&many).is_err());
        // A message with more recipients than allowed is refused unread.
        let e = Encryptor::new(&many[..MAX_RECIPIENTS]).unwrap();
        let mut enc = CoseEncrypt::from_tagged_slice(&e.encrypt(SIGNED)).unwrap();
        enc.recipients.push(enc.recipients[0].clone());
        let err = rx.decrypt(&enc.to_tagged_vec().unwrap()).unwrap_err();
        assert!(err.to_string().contains("at most 8"), "{err}");
        // An Ed25519 receiver certificate cannot be a recipient.
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ed_cert = rcgen::CertificateParams::new(vec!["ed".into()])
            .unwrap()
            .self_signed(&ed)
            .unwrap()
            .der()
            .clone();
        assert!(Encryptor::new(&[a.clone(), ed_cert]).is_err());
        // A key that does not belong to the certificate.
        let other = rcgen::KeyPair::generate().unwrap();
        assert!(Decryptor::new(&a, &PrivateKeyDer::Pkcs8(other.serialize_der().into())).is_err());
    }
}
