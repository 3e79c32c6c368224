//! Which acks may delete rows (issue 9, item 1): only an ack that proves who sent it.
//!
//! The broker is shared: any holder of a certificate from the hospital CA may publish on this
//! gateway's `…/ack` topic, retained or not. An ack deletes rows only when all hold:
//!
//! 1. it is a COSE_Sign1 (at most [`MAX_ACK_BYTES`]) that verifies against the receivers this
//!    gateway trusts: a certificate listed in `[uplink] receiver_certs`, or one that chains to
//!    `receiver_ca` (not revoked by `receiver_crl`) **and** names a receiver
//!    (`urn:wardgate-receiver:{name}`, see [`crate::identity`]) — a gateway's certificate from
//!    the same CA cannot sign acks;
//! 2. its payload is an [`Ack`] of version [`ACK_VERSION`] naming **this** gateway;
//! 3. it names at most [`MAX_ACK_BATCHES`] batches (the work per message is bounded); only
//!    batches this gateway cut are deleted ([`crate::store::Store::ack`] ignores others).
//!
//! Anything else is refused: counted ([`super::UplinkStatus::acks_refused`], heartbeat,
//! `wardgate status`), logged once per sender, and deletes nothing. A replayed genuine ack
//! (retained, or recorded and re-sent) names batches the receiver did store, so applying it
//! again is harmless.

use crate::batch::{Ack, MAX_REFUSAL_CHARS};
use crate::signing::Verifier;
use std::sync::Arc;

/// Version of the signed ack payload (v1 was plain CBOR, refused since issue 9).
pub const ACK_VERSION: u32 = 2;
/// Most batch numbers one ack may name.
pub const MAX_ACK_BATCHES: usize = 1024;
/// Largest ack message accepted, bytes: the payload plus a signature and an `x5chain` of up to
/// four certificates. Also the uplink's largest incoming MQTT packet.
pub const MAX_ACK_BYTES: usize = 96 * 1024;

/// Who may acknowledge this gateway's batches.
#[derive(Clone)]
pub struct AckPolicy {
    /// This gateway's id: an ack must name it.
    pub gateway: String,
    /// The trusted receivers (listed certificates and/or a CA with revocation lists).
    pub receivers: Arc<Verifier>,
}

/// What to do with a message on the ack topic.
#[derive(Debug, PartialEq, Eq)]
pub enum AckVerdict {
    /// A trusted receiver acknowledged these batches of ours.
    Accept(Vec<u64>),
    /// A trusted receiver refuses our batches and says why (a signed refusal notice: our
    /// certificate revoked, expired, not trusted by it). Deletes nothing; shown in status.
    ReceiverRefuses {
        /// The receiver (its certificate's identity).
        receiver: String,
        /// Its reason, at most [`MAX_REFUSAL_CHARS`] characters.
        reason: String,
    },
    /// Not an ack we act on. `sender` identifies who sent it for the once-per-sender log (the
    /// signer's `kid` prefix, or `unsigned`); `why` is the reason.
    Refuse {
        /// The claimed signer (`kid:…` prefix) or `unsigned`.
        sender: String,
        /// Why it is refused.
        why: String,
    },
}

/// Checks one message received on this gateway's ack topic. Pure apart from the clock the
/// certificate check reads.
pub fn check_ack(policy: &AckPolicy, message: &[u8]) -> AckVerdict {
    match acknowledged(policy, message) {
        Ok((
            receiver,
            Ack {
                refused: Some(reason),
                ..
            },
        )) => AckVerdict::ReceiverRefuses {
            receiver,
            reason: reason.chars().take(MAX_REFUSAL_CHARS).collect(),
        },
        Ok((_, ack)) => AckVerdict::Accept(ack.batches),
        // Only a refused message needs its claimed sender (a second parse of its header).
        Err(why) => AckVerdict::Refuse {
            sender: claimed_sender(message),
            why,
        },
    }
}

/// An authentic ack and who signed it, or why it is refused ([`check_ack`]).
fn acknowledged(policy: &AckPolicy, message: &[u8]) -> Result<(String, Ack), String> {
    if message.len() > MAX_ACK_BYTES {
        return Err(format!(
            "ack of {} bytes (at most {MAX_ACK_BYTES})",
            message.len()
        ));
    }
    let verified = policy
        .receivers
        .verify_signed(message)
        .map_err(|e| format!("ack not signed by a trusted receiver: {e}"))?;
    if !verified.listed && !verified.signer.is_receiver() {
        return Err(format!(
            "ack signed by {}, which is not a receiver (no urn:wardgate-receiver: name)",
            verified.signer
        ));
    }
    let ack = Ack::from_cbor(&verified.payload).map_err(|e| format!("signed ack payload: {e}"))?;
    if ack.v != ACK_VERSION {
        return Err(format!("ack version {} is not {ACK_VERSION}", ack.v));
    }
    if ack.gateway != policy.gateway {
        return Err(format!(
            "signed ack names gateway {}, not this one",
            ack.gateway
        ));
    }
    if ack.batches.len() > MAX_ACK_BATCHES {
        return Err(format!(
            "ack names {} batches (at most {MAX_ACK_BATCHES})",
            ack.batches.len()
        ));
    }
    let receiver = if verified.signer.is_receiver() {
        verified.signer.to_string()
    } else {
        format!("listed receiver kid:{}", hex::encode(&verified.kid[..8]))
    };
    Ok((receiver, ack))
}

/// Who a message on the ack topic claims to come from, for logs: `kid:` and the first 8 bytes
/// of its protected `kid` in hex, or `unsigned`.
fn claimed_sender(message: &[u8]) -> String {
    use coset::{CborSerializable, TaggedCborSerializable};
    let sign1 = coset::CoseSign1::from_tagged_slice(message)
        .or_else(|_| coset::CoseSign1::from_slice(message));
    match sign1 {
        Ok(s) if !s.protected.header.key_id.is_empty() => {
            let kid = &s.protected.header.key_id;
            format!("kid:{}", hex::encode(&kid[..kid.len().min(8)]))
        }
        _ => "unsigned".into(),
    }
}

/// A receiver and a gateway policy trusting it, for unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::signing::Signer;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    /// A self-signed receiver certificate named `urn:wardgate-receiver:{name}` and its signer.
    pub fn receiver(name: &str) -> (CertificateDer<'static>, Signer) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.subject_alt_names = vec![rcgen::SanType::URI(
            format!("urn:wardgate-receiver:{name}").try_into().unwrap(),
        )];
        let cert = p.self_signed(&key).unwrap().der().clone();
        let signer = Signer::new(&cert, &PrivateKeyDer::Pkcs8(key.serialize_der().into())).unwrap();
        (cert, signer)
    }

    /// A policy for gateway `gateway` trusting `cert` (listed).
    pub fn policy(gateway: &str, cert: &CertificateDer<'_>) -> AckPolicy {
        let mut v = Verifier::default();
        v.add(cert, "receiver").unwrap();
        AckPolicy {
            gateway: gateway.into(),
            receivers: Arc::new(v),
        }
    }

    /// A signed v2 ack.
    pub fn signed_ack(signer: &Signer, gateway: &str, batches: &[u64]) -> Vec<u8> {
        signer.sign(
            Ack {
                v: ACK_VERSION,
                gateway: gateway.into(),
                batches: batches.to_vec(),
                refused: None,
            }
            .to_cbor(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn a_signed_ack_from_a_trusted_receiver_for_this_gateway_is_accepted() {
        let (cert, rx) = receiver("up-a");
        let p = policy("gw-1", &cert);
        assert_eq!(
            check_ack(&p, &signed_ack(&rx, "gw-1", &[4, 5])),
            AckVerdict::Accept(vec![4, 5])
        );
    }

    #[test]
    fn forged_plain_foreign_and_misaddressed_acks_are_refused_with_their_sender() {
        let (cert, rx) = receiver("up-a");
        let p = policy("gw-1", &cert);
        let refused = |m: &[u8]| match check_ack(&p, m) {
            AckVerdict::Refuse { sender, why } => (sender, why),
            other => panic!("accepted: {other:?}"),
        };
        // The v1 plain ack anyone could publish.
        let plain = Ack {
            v: 1,
            gateway: "gw-1".into(),
            batches: vec![4],
            refused: None,
        }
        .to_cbor();
        let (sender, why) = refused(&plain);
        assert_eq!(sender, "unsigned");
        assert!(why.contains("not signed by a trusted receiver"), "{why}");
        // Signed, by a receiver nobody trusts (another holder of a CA certificate).
        let (_, rogue) = receiver("rogue");
        let (sender, why) = refused(&signed_ack(&rogue, "gw-1", &[4]));
        assert!(sender.starts_with("kid:"), "{sender}");
        assert!(why.contains("unknown kid"), "{why}");
        // Trusted, but for another gateway, or an old version, or too many batches.
        assert!(refused(&signed_ack(&rx, "gw-2", &[4])).1.contains("gw-2"));
        let v1 = rx.sign(
            Ack {
                v: 1,
                gateway: "gw-1".into(),
                batches: vec![4],
                refused: None,
            }
            .to_cbor(),
        );
        assert!(refused(&v1).1.contains("version 1"));
        let many: Vec<u64> = (0..=MAX_ACK_BATCHES as u64).collect();
        assert!(refused(&signed_ack(&rx, "gw-1", &many))
            .1
            .contains("batches"));
        // Junk and an oversize message.
        assert_eq!(refused(b"\xff\x00").0, "unsigned");
        assert!(refused(&vec![0u8; MAX_ACK_BYTES + 1]).1.contains("bytes"));
    }

    #[test]
    fn a_gateway_certificate_from_the_receivers_ca_cannot_sign_acks() {
        // Trust by CA: the signer's certificate must name a receiver.
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut cp = rcgen::CertificateParams::new(vec![]).unwrap();
        cp.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = cp.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let leaf = |uri: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            p.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
            let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
            crate::signing::Signer::new(
                cert.der(),
                &rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap()
        };
        let mut v = Verifier::default();
        v.add_ca_file(&dir.path().join("ca.pem")).unwrap();
        let p = AckPolicy {
            gateway: "gw-1".into(),
            receivers: Arc::new(v),
        };
        let receiver = leaf("urn:wardgate-receiver:up-a");
        assert_eq!(
            check_ack(&p, &signed_ack(&receiver, "gw-1", &[9])),
            AckVerdict::Accept(vec![9])
        );
        let other_gateway = leaf("urn:wardgate:s:w:gw-2");
        match check_ack(&p, &signed_ack(&other_gateway, "gw-1", &[9])) {
            AckVerdict::Refuse { why, .. } => assert!(why.contains("not a receiver"), "{why}"),
            other => panic!("a gateway signed an ack: {other:?}"),
        }
    }
}
