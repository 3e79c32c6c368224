//! COSE_Sign1 signing and verification of batches (RFC 9052 §4.2, §4.4; DESIGN §5 contract).
//!
//! - Algorithm: ES256 (ECDSA P-256 with SHA-256, signature raw `r‖s`, 64 bytes; RFC 9053 §2.1)
//!   or EdDSA (Ed25519; RFC 9053 §2.2), with the gateway's TLS client key.
//! - Protected header: `alg` (1), `kid` (4) = SHA-256 of the signer certificate's
//!   SubjectPublicKeyInfo DER (RFC 5280 §4.1.2.7), 32 bytes, and `x5chain` (33, RFC 9360 §2):
//!   the signer's certificate chain as in its PEM file (one certificate: a bstr; several: an
//!   array of bstr, leaf first), so a verifier that trusts a CA needs no copy of each
//!   certificate, and a renewed certificate needs no change upstream.
//! - The message is tagged (CBOR tag 18); external AAD is empty.
//!
//! [`Verifier`] trusts signers two ways: **listed** certificates (by `kid`, as before), and
//! certificates that **chain to a trusted CA** (`x5chain` verified with webpki for clientAuth at
//! the current time, honouring revocation lists). Either way it returns who signed
//! ([`crate::identity::Identity`]); what that identity may sign is the caller's rule (a batch
//! only from the gateway it names, an ack only from a receiver).
//!
//! One crypto provider: `ring` (also rustls's provider here).

use crate::identity::Identity;
use coset::{
    iana, CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable,
};
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// COSE header label of `x5chain` (RFC 9360 §2).
pub const X5CHAIN: i64 = 33;
/// Most certificates accepted in an `x5chain` (leaf + intermediates).
pub const MAX_CHAIN: usize = 4;
/// Largest certificate accepted in an `x5chain`, bytes.
pub const MAX_CERT_BYTES: usize = 16 * 1024;

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

/// The certificate's P-256 public key as an uncompressed SEC1 point (65 bytes, `04‖x‖y`), or
/// `None` when its key is of another type (Ed25519): what COSE_Encrypt recipients need.
pub fn p256_point(cert: &CertificateDer<'_>) -> Result<Option<Vec<u8>>, SigningError> {
    match public_key(&spki_der(cert)?) {
        Ok((KeyAlg::Es256, raw)) => Ok(Some(raw)),
        Ok((KeyAlg::EdDsa, _)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn spki_der(cert: &CertificateDer<'_>) -> Result<Vec<u8>, SigningError> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| {
        // webpki says only `UnsupportedCertVersion` for an X.509 v1/v2 certificate.
        SigningError::Key(
            require_v3(cert)
                .err()
                .unwrap_or_else(|| format!("certificate does not parse: {e}")),
        )
    })?;
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

/// Largest credential or signed file read whole (a PEM of certificates, a private key, a CRL, a
/// signed firmware job), bytes: 4 MiB, far above any real one.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// Reads a file named in the config or on the command line (certificates, keys, CRLs, signed
/// jobs) whole. Refuses, with an `InvalidInput` error that says why, what is not a regular file
/// (a FIFO would block the caller until someone writes to it, `/dev/zero` never ends) and a
/// file larger than `max` bytes, so a wrong path never hangs or exhausts the daemon or a CLI.
pub fn read_regular_file(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    regular_file(path)?;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(invalid(format!("larger than {max} bytes")));
    }
    Ok(bytes)
}

/// The metadata of `path` when it is a regular file; otherwise an `InvalidInput` error saying
/// what it is instead ("not a regular file (a FIFO)"), without opening it (a FIFO would block).
pub fn regular_file(path: &Path) -> std::io::Result<std::fs::Metadata> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(meta);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "not a regular file (a {}); give the path of the file itself",
            file_kind(&meta.file_type())
        ),
    ))
}

/// What a file that is not a regular file is, in words.
fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Reads every certificate from a PEM file (at most [`MAX_FILE_BYTES`], a regular file).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SigningError> {
    let file_err = |m: String| SigningError::File {
        path: path.display().to_string(),
        message: m,
    };
    let bytes = read_regular_file(path, MAX_FILE_BYTES)
        .map_err(|e| file_err(format!("cannot read certificates: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_err("no CERTIFICATE in PEM file".into()));
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, SEC1 or PKCS#1 PEM; a regular file of at most
/// [`MAX_FILE_BYTES`]).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, SigningError> {
    let file_err = |m: String| SigningError::File {
        path: path.display().to_string(),
        message: m,
    };
    let bytes = read_regular_file(path, MAX_FILE_BYTES)
        .map_err(|e| file_err(format!("cannot read private key: {e}")))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| file_err(format!("cannot read private key: {e}")))
}

/// The certificate parsed as X.509 (RFC 5280) by the `x509-cert` crate, with a message an
/// installer can act on when it does not parse.
pub fn parse_x509(cert: &CertificateDer<'_>) -> Result<x509_cert::Certificate, String> {
    use x509_cert::der::Decode;
    x509_cert::Certificate::from_der(cert.as_ref()).map_err(|e| {
        format!(
            "the file holds a PEM CERTIFICATE block that is not an X.509 certificate ({e}); \
             send the certificate the CA issued, PEM-encoded"
        )
    })
}

/// Refuses a certificate that is not X.509 v3: rustls/webpki (the TLS stack of the uplink and
/// of the chain check) accept only v3, and would say only `UnsupportedCertVersion`.
pub fn require_v3(cert: &CertificateDer<'_>) -> Result<(), String> {
    use x509_cert::certificate::Version;
    let name = match parse_x509(cert)?.tbs_certificate.version {
        Version::V3 => return Ok(()),
        Version::V2 => "v2",
        Version::V1 => "v1",
    };
    Err(format!(
        "this is an X.509 {name} certificate; wardgate (like most TLS stacks today) accepts only \
         X.509 v3 certificates. Ask the CA to sign the same CSR again as a v3 certificate (with \
         OpenSSL: pass extensions, e.g. `-extfile` with `extendedKeyUsage = clientAuth`)"
    ))
}

/// notBefore and notAfter of an X.509 certificate (RFC 5280 §4.1.2.5), as durations since the
/// Unix epoch (UTCTime or GeneralizedTime, as the certificate has them).
pub fn validity(cert: &CertificateDer<'_>) -> Result<(Duration, Duration), String> {
    let v = parse_x509(cert)?.tbs_certificate.validity;
    Ok((
        v.not_before.to_unix_duration(),
        v.not_after.to_unix_duration(),
    ))
}

enum SigningKey {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// Signs payloads as COSE_Sign1 with a key and its certificate chain (the gateway's for batches
/// and status, a receiver's for acks).
pub struct Signer {
    key: SigningKey,
    kid: [u8; 32],
    /// The certificate chain sent as `x5chain`, leaf first.
    chain: Vec<CertificateDer<'static>>,
    rng: ring::rand::SystemRandom,
}

impl Signer {
    /// Loads the gateway certificate (first in `cert_path`) and its PKCS#8 key, and checks that
    /// they belong together. Errors name the file and the problem.
    pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<Signer, SigningError> {
        let certs = read_certs(cert_path)?;
        let key = read_key(key_path)?;
        Signer::new(&certs[0], &key)
            .map(|s| s.with_chain(certs))
            .map_err(|e| match e {
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
        Ok(Signer {
            key,
            kid,
            chain: vec![cert.clone().into_owned()],
            rng,
        })
    }

    /// Test helper: sends `chain` as `x5chain` whatever it holds (to build hostile messages).
    #[cfg(test)]
    fn with_chain_unchecked(mut self, chain: Vec<CertificateDer<'static>>) -> Signer {
        self.chain = chain;
        self
    }

    /// Sends `chain` (leaf first; the leaf must be this signer's certificate) as `x5chain`
    /// instead of the leaf alone. At most [`MAX_CHAIN`] certificates are sent.
    pub fn with_chain(mut self, chain: Vec<CertificateDer<'static>>) -> Signer {
        if chain.first().and_then(|c| kid_of(c).ok()) == Some(self.kid) {
            self.chain = chain.into_iter().take(MAX_CHAIN).collect();
        }
        self
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
        let chain = match &self.chain[..] {
            [one] => ciborium::Value::Bytes(one.to_vec()),
            many => ciborium::Value::Array(
                many.iter()
                    .map(|c| ciborium::Value::Bytes(c.to_vec()))
                    .collect(),
            ),
        };
        let protected = HeaderBuilder::new()
            .algorithm(alg)
            .key_id(self.kid.to_vec())
            .value(X5CHAIN, chain)
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

/// A message that verified, and who signed it.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The payload.
    pub payload: Vec<u8>,
    /// The signer's certificate identity.
    pub signer: Identity,
    /// The signer's `kid`.
    pub kid: [u8; 32],
    /// Whether the signer was trusted as a listed certificate (else through a CA).
    pub listed: bool,
}

struct Listed {
    alg: KeyAlg,
    key: Vec<u8>,
    identity: Identity,
}

/// Verifies COSE_Sign1 messages against listed signer certificates (by `kid`) and trusted CAs
/// (by the message's `x5chain`), with optional revocation lists.
#[derive(Default)]
pub struct Verifier {
    listed: HashMap<[u8; 32], Listed>,
    anchors: Vec<rustls_pki_types::TrustAnchor<'static>>,
    crls: Vec<webpki::CertRevocationList<'static>>,
}

impl Verifier {
    /// Trusts `cert` (listed) under `name` (kept for compatibility; errors name the `kid`).
    pub fn add(&mut self, cert: &CertificateDer<'_>, _name: &str) -> Result<(), SigningError> {
        let (alg, key) = public_key(&spki_der(cert)?)?;
        let identity = Identity::of(cert).map_err(SigningError::Key)?;
        self.listed
            .insert(kid_of(cert)?, Listed { alg, key, identity });
        Ok(())
    }

    /// A verifier trusting the certificates in the PEM files `listed`, the CA certificates in
    /// `cas` and honouring the revocation lists in `crls` (the `*_certs`, `*_ca`, `*_crl`
    /// settings of either side). Errors name the file.
    pub fn from_files<'a>(
        listed: impl IntoIterator<Item = &'a Path>,
        cas: impl IntoIterator<Item = &'a Path>,
        crls: impl IntoIterator<Item = &'a Path>,
    ) -> Result<Verifier, SigningError> {
        let mut v = Verifier::default();
        for p in listed {
            v.add_file(p)?;
        }
        for p in cas {
            v.add_ca_file(p)?;
        }
        for p in crls {
            v.add_crl_file(p)?;
        }
        Ok(v)
    }

    /// Trusts every certificate in a PEM file (listed).
    pub fn add_file(&mut self, path: &Path) -> Result<(), SigningError> {
        for c in read_certs(path)? {
            self.add(&c, &path.display().to_string())?;
        }
        Ok(())
    }

    /// Trusts signers whose `x5chain` chains to a CA certificate in the PEM file `path`.
    pub fn add_ca_file(&mut self, path: &Path) -> Result<(), SigningError> {
        for c in read_certs(path)? {
            let a = webpki::anchor_from_trusted_cert(&c).map_err(|e| SigningError::File {
                path: path.display().to_string(),
                message: format!("unusable CA certificate: {e}"),
            })?;
            self.anchors.push(a.to_owned());
        }
        Ok(())
    }

    /// Honours the certificate revocation list(s) in `path` (PEM `X509 CRL`, or DER) for
    /// signers trusted through a CA.
    pub fn add_crl_file(&mut self, path: &Path) -> Result<(), SigningError> {
        let file_err = |m: String| SigningError::File {
            path: path.display().to_string(),
            message: m,
        };
        let bytes = read_regular_file(path, MAX_FILE_BYTES)
            .map_err(|e| file_err(format!("cannot read: {e}")))?;
        let ders: Vec<Vec<u8>> = if bytes.starts_with(b"-----") {
            use rustls_pki_types::CertificateRevocationListDer as Crl;
            Crl::pem_slice_iter(&bytes)
                .map(|c| c.map(|c| c.to_vec()))
                .collect::<Result<_, _>>()
                .map_err(|e| file_err(format!("bad PEM: {e}")))?
        } else {
            vec![bytes]
        };
        if ders.is_empty() {
            return Err(file_err("no X509 CRL in the file".into()));
        }
        for der in ders {
            let crl = webpki::OwnedCertRevocationList::from_der(&der)
                .map_err(|e| file_err(format!("not a usable CRL: {e}")))?;
            self.crls.push(crl.into());
        }
        Ok(())
    }

    /// Number of listed certificates plus trusted CAs.
    pub fn len(&self) -> usize {
        self.listed.len() + self.anchors.len()
    }

    /// Whether nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Verifies a COSE_Sign1 (tagged or untagged) and returns its payload, whoever signed it
    /// among the trusted. Callers that act on who signed use [`Verifier::verify_signed`].
    pub fn verify(&self, message: &[u8]) -> Result<Vec<u8>, SigningError> {
        self.verify_signed(message).map(|v| v.payload)
    }

    /// Verifies a COSE_Sign1 (tagged or untagged) at the current time and says who signed it.
    ///
    /// A listed `kid` is verified with its listed key. Otherwise the protected `x5chain` must
    /// hold at most [`MAX_CHAIN`] certificates of at most [`MAX_CERT_BYTES`], its leaf must have
    /// the message's `kid`, and the chain must verify to a trusted CA for clientAuth now, not
    /// revoked by a configured CRL.
    ///
    /// Errors: not a COSE_Sign1; no or malformed `kid`; unknown signer; chain refused (expired,
    /// revoked, unknown issuer, wrong key usage); `alg` missing or not the key's; detached
    /// payload; bad signature.
    pub fn verify_signed(&self, message: &[u8]) -> Result<Verified, SigningError> {
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
        let (alg, key, signer, listed) = match self.listed.get(&kid) {
            Some(l) => (l.alg, l.key.clone(), l.identity.clone(), true),
            None => {
                let (alg, key, identity) = self.chain_signer(&sign1, &kid)?;
                (alg, key, identity, false)
            }
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
        if !signature_verifies(&sign1, alg, &key) {
            return Err(SigningError::Verify("bad signature".into()));
        }
        Ok(Verified {
            payload,
            signer,
            kid,
            listed,
        })
    }

    /// The key and identity of a signer trusted through a CA: from the protected `x5chain`.
    fn chain_signer(
        &self,
        sign1: &CoseSign1,
        kid: &[u8; 32],
    ) -> Result<(KeyAlg, Vec<u8>, Identity), SigningError> {
        let unknown = || {
            SigningError::Verify(format!(
                "unknown kid {}: no listed certificate has it{}",
                hex::encode(kid),
                if self.anchors.is_empty() {
                    ""
                } else {
                    " and the message carries no certificate chain"
                }
            ))
        };
        if self.anchors.is_empty() {
            return Err(unknown());
        }
        let chain = x5chain(sign1)?.ok_or_else(unknown)?;
        let leaf = &chain[0];
        if kid_of(leaf)? != *kid {
            return Err(SigningError::Verify(
                "the kid is not the x5chain leaf's key".into(),
            ));
        }
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| SigningError::Verify(format!("x5chain leaf does not parse: {e}")))?;
        let crl_refs: Vec<&webpki::CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = (!crl_refs.is_empty())
            .then(|| webpki::RevocationOptionsBuilder::new(&crl_refs).ok())
            .flatten()
            .map(|b| {
                b.with_depth(webpki::RevocationCheckDepth::Chain)
                    .with_status_policy(webpki::UnknownStatusPolicy::Allow)
                    .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
                    .build()
            });
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &chain[1..],
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            revocation,
            None,
        )
        .map_err(|e| {
            SigningError::Verify(format!("signer certificate refused: {}", chain_refusal(&e)))
        })?;
        let (alg, key) = public_key(&spki_der(leaf)?)?;
        let identity = Identity::of(leaf).map_err(SigningError::Verify)?;
        Ok((alg, key, identity))
    }
}

/// Why webpki refused a signer's certificate chain, in words an operator acts on.
fn chain_refusal(e: &webpki::Error) -> String {
    let date = |t: &rustls_pki_types::UnixTime| {
        spki::der::DateTime::from_unix_duration(std::time::Duration::from_secs(t.as_secs()))
            .map(|d| d.to_string())
            .unwrap_or_else(|_| format!("{} s after 1970", t.as_secs()))
    };
    match e {
        webpki::Error::CertRevoked => {
            "it is revoked (listed in a configured revocation list)".into()
        }
        webpki::Error::CertExpired { time, not_after } => format!(
            "it expired on {} (this clock says {})",
            date(not_after),
            date(time)
        ),
        webpki::Error::CertNotValidYet { time, not_before } => format!(
            "it is not valid before {} (this clock says {})",
            date(not_before),
            date(time)
        ),
        webpki::Error::UnknownIssuer => "it is not issued by a configured CA".into(),
        #[allow(deprecated)]
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
            "it is not a client certificate (extended key usage lacks clientAuth)".into()
        }
        other => format!("{other:?}"),
    }
}

/// Whether the signature of `sign1` (no external AAD) verifies with `key` (SEC1 point or
/// Ed25519 key, per `alg`).
fn signature_verifies(sign1: &CoseSign1, alg: KeyAlg, key: &[u8]) -> bool {
    sign1
        .verify_signature(b"", |sig, tbs| {
            let algo: &dyn signature::VerificationAlgorithm = match alg {
                KeyAlg::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
                KeyAlg::EdDsa => &signature::ED25519,
            };
            signature::UnparsedPublicKey::new(algo, key).verify(tbs, sig)
        })
        .is_ok()
}

/// Who signed `message` according to the leaf of its own `x5chain`, **without any trust**: the
/// leaf must carry the message's `kid` and its key must verify the signature, which proves the
/// signer holds that certificate's key — not that anyone trusts the certificate. The receiver
/// uses it to tell a gateway whose batches it refuses (revoked, expired, untrusted CA) why,
/// and only when the certificate names that gateway. `None` for anything less.
pub fn proven_signer(message: &[u8]) -> Option<Identity> {
    let sign1 = CoseSign1::from_tagged_slice(message)
        .or_else(|_| CoseSign1::from_slice(message))
        .ok()?;
    let chain = x5chain(&sign1).ok()??;
    let leaf = chain.first()?;
    if kid_of(leaf).ok()?.as_slice() != sign1.protected.header.key_id.as_slice() {
        return None;
    }
    let (alg, key) = public_key(&spki_der(leaf).ok()?).ok()?;
    signature_verifies(&sign1, alg, &key).then_some(())?;
    Identity::of(leaf).ok()
}

/// The protected `x5chain` of a message, bounded ([`MAX_CHAIN`], [`MAX_CERT_BYTES`]); `None`
/// when absent.
fn x5chain(sign1: &CoseSign1) -> Result<Option<Vec<CertificateDer<'static>>>, SigningError> {
    let Some((_, v)) = sign1
        .protected
        .header
        .rest
        .iter()
        .find(|(l, _)| *l == coset::Label::Int(X5CHAIN))
    else {
        return Ok(None);
    };
    let bad = |m: &str| SigningError::Verify(format!("x5chain: {m}"));
    let items: Vec<&ciborium::Value> = match v {
        ciborium::Value::Bytes(_) => vec![v],
        ciborium::Value::Array(a) if !a.is_empty() && a.len() <= MAX_CHAIN => a.iter().collect(),
        ciborium::Value::Array(a) => {
            return Err(bad(&format!(
                "{} certificates; 1 to {MAX_CHAIN} accepted",
                a.len()
            )))
        }
        _ => return Err(bad("neither a bstr nor an array of bstr")),
    };
    items
        .into_iter()
        .map(|i| match i {
            ciborium::Value::Bytes(b) if b.len() <= MAX_CERT_BYTES => {
                Ok(CertificateDer::from(b.clone()))
            }
            ciborium::Value::Bytes(b) => Err(bad(&format!(
                "a certificate of {} bytes (at most {MAX_CERT_BYTES})",
                b.len()
            ))),
            _ => Err(bad("an item that is not a bstr")),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
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

    /// A CA (can sign certificates and CRLs) and a clientAuth leaf with the SAN URIs `uris`.
    struct Pki {
        ca: rcgen::Certificate,
        ca_key: rcgen::KeyPair,
    }

    impl Pki {
        fn new() -> Pki {
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "test CA");
            let ca = p.self_signed(&ca_key).unwrap();
            Pki { ca, ca_key }
        }

        fn leaf(&self, serial: u64, uris: &[&str]) -> (CertificateDer<'static>, Signer) {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
            p.serial_number = Some(serial.into());
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            p.subject_alt_names = uris
                .iter()
                .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
                .collect();
            let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
            let der = cert.der().clone();
            let signer =
                Signer::new(&der, &PrivateKeyDer::Pkcs8(key.serialize_der().into())).unwrap();
            (der, signer)
        }

        fn ca_file(&self, dir: &Path) -> std::path::PathBuf {
            let p = dir.join("ca.pem");
            std::fs::write(&p, self.ca.pem()).unwrap();
            p
        }

        fn crl_file(&self, dir: &Path, revoked: &[u64]) -> std::path::PathBuf {
            let now = rcgen::date_time_ymd(2026, 1, 1);
            let crl = rcgen::CertificateRevocationListParams {
                this_update: now,
                next_update: rcgen::date_time_ymd(2036, 1, 1),
                crl_number: 1u64.into(),
                issuing_distribution_point: None,
                revoked_certs: revoked
                    .iter()
                    .map(|s| rcgen::RevokedCertParams {
                        serial_number: (*s).into(),
                        revocation_time: now,
                        reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            }
            .signed_by(&self.ca, &self.ca_key)
            .unwrap();
            let p = dir.join("ca.crl");
            std::fs::write(&p, crl.pem().unwrap()).unwrap();
            p
        }
    }

    #[test]
    fn a_signer_trusted_by_its_ca_is_verified_from_its_x5chain_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let (_, signer) = pki.leaf(7, &["urn:wardgate:s:w:gw-1"]);
        let msg = signer.sign(b"batch".to_vec());
        let mut v = Verifier::default();
        assert!(v
            .verify(&msg)
            .unwrap_err()
            .to_string()
            .contains("unknown kid"));
        v.add_ca_file(&pki.ca_file(dir.path())).unwrap();
        let ok = v.verify_signed(&msg).unwrap();
        assert_eq!(ok.payload, b"batch");
        assert!(!ok.listed);
        assert!(ok.signer.is_gateway("gw-1", "s", "w"));
        assert_eq!(ok.kid, signer.kid());
    }

    #[test]
    fn another_ca_a_revoked_certificate_and_a_borrowed_kid_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let mut v = Verifier::default();
        v.add_ca_file(&pki.ca_file(dir.path())).unwrap();
        // A leaf of another CA.
        let (_, rogue) = Pki::new().leaf(7, &["urn:wardgate:s:w:gw-1"]);
        let e = v.verify(&rogue.sign(vec![])).unwrap_err().to_string();
        assert!(e.contains("signer certificate refused"), "{e}");
        // Revoked by the CA's CRL (serial 8), while serial 7 stays good.
        let (_, good) = pki.leaf(7, &["urn:wardgate:s:w:gw-1"]);
        let (_, revoked) = pki.leaf(8, &["urn:wardgate:s:w:gw-2"]);
        v.add_crl_file(&pki.crl_file(dir.path(), &[8])).unwrap();
        assert!(v.verify(&good.sign(vec![])).is_ok());
        let e = v.verify(&revoked.sign(vec![])).unwrap_err().to_string();
        assert!(
            e.contains("refused") && e.to_lowercase().contains("revoked"),
            "{e}"
        );
        // A signature by one key presenting another's certificate.
        let (good_cert, _) = pki.leaf(9, &["urn:wardgate:s:w:gw-3"]);
        let (_, thief) = pki.leaf(10, &["urn:wardgate:s:w:gw-4"]);
        let e = v
            .verify(&thief.with_chain_unchecked(vec![good_cert]).sign(vec![]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not the x5chain leaf"), "{e}");
    }

    #[test]
    fn x5chain_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let mut v = Verifier::default();
        v.add_ca_file(&pki.ca_file(dir.path())).unwrap();
        let (cert, signer) = pki.leaf(7, &["urn:wardgate:s:w:gw-1"]);
        let long = signer.with_chain_unchecked(vec![cert; MAX_CHAIN + 1]);
        let e = v.verify(&long.sign(vec![])).unwrap_err().to_string();
        assert!(e.contains("x5chain") && e.contains("certificates"), "{e}");
    }
}
