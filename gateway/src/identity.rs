//! Who a certificate names (issue 9: trust by CA, identity by certificate).
//!
//! A signer trusted through a CA (not listed certificate by certificate) is only as good as the
//! rule that says *what* it may sign. The rule is the certificate's subjectAltName URI
//! (RFC 5280 §4.2.1.6), which the hospital CA issues per role:
//!
//! | role | SAN URI | written by |
//! |---|---|---|
//! | gateway | `urn:wardgate:{site}:{ward}:{id}` | `wardgate provision` (also CN = id) |
//! | receiver (signs acks) | `urn:wardgate-receiver:{name}` | the hospital PKI team, for each upstream receiver |
//! | firmware signer (signs firmware jobs) | `urn:wardgate-firmware:{name}` | the PKI team, under the firmware trust anchor (`[firmware] signer_ca`), apart from the TLS CA |
//!
//! A gateway certificate can therefore never sign an ack, and a receiver certificate never a
//! batch, even when one CA issues both. A gateway certificate without the URI (older CAs that
//! copy only the subject) is identified by its CN alone: it may sign only for the gateway of that
//! id, whatever the site and ward. A receiver must carry its URI.

use rustls_pki_types::CertificateDer;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

/// The URI scheme prefix of a gateway identity.
pub const GATEWAY_URN: &str = "urn:wardgate:";
/// The URI scheme prefix of a receiver identity.
pub const RECEIVER_URN: &str = "urn:wardgate-receiver:";
/// The URI scheme prefix of a firmware signer identity.
pub const FIRMWARE_URN: &str = "urn:wardgate-firmware:";

/// What a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A ward gateway. `site` and `ward` are `None` when only the CN named it.
    Gateway {
        /// Gateway id (`[gateway] id`, the MQTT client id).
        id: String,
        /// Site, from the SAN URI.
        site: Option<String>,
        /// Ward, from the SAN URI.
        ward: Option<String>,
    },
    /// An upstream receiver, which signs acks.
    Receiver {
        /// Its name in the SAN URI.
        name: String,
    },
    /// An upstream firmware signer, which signs firmware jobs (`firmware/job.rs`).
    FirmwareSigner {
        /// Its name in the SAN URI.
        name: String,
    },
    /// Neither (no wardgate URI, no CN): trusted only when listed by certificate.
    Unknown,
}

impl Identity {
    /// The identity of `cert`: a wardgate SAN URI if it has one (a receiver URI wins over a
    /// gateway URI, so a certificate cannot be both), else the CN as a gateway id.
    ///
    /// Errors: the certificate or its subjectAltName extension does not parse.
    pub fn of(cert: &CertificateDer<'_>) -> Result<Identity, String> {
        let c = x509_cert::Certificate::from_der(cert.as_ref())
            .map_err(|e| format!("certificate does not parse: {e}"))?;
        let tbs = &c.tbs_certificate;
        let mut gateway = None;
        let mut receiver = None;
        let sans = tbs
            .get::<SubjectAltName>()
            .map_err(|e| format!("subjectAltName does not parse: {e}"))?;
        for name in sans.map(|(_, s)| s.0).unwrap_or_default() {
            let GeneralName::UniformResourceIdentifier(uri) = name else {
                continue;
            };
            let uri = uri.as_str();
            if let Some(name) = uri.strip_prefix(FIRMWARE_URN) {
                if !name.is_empty() {
                    return Ok(Identity::FirmwareSigner {
                        name: name.to_owned(),
                    });
                }
            } else if let Some(name) = uri.strip_prefix(RECEIVER_URN) {
                if !name.is_empty() {
                    receiver = Some(Identity::Receiver {
                        name: name.to_owned(),
                    });
                }
            } else if let Some(rest) = uri.strip_prefix(GATEWAY_URN) {
                let parts: Vec<&str> = rest.split(':').collect();
                if let [site, ward, id] = parts[..] {
                    if ![site, ward, id].iter().any(|p| p.is_empty()) {
                        gateway = Some(Identity::Gateway {
                            id: id.to_owned(),
                            site: Some(site.to_owned()),
                            ward: Some(ward.to_owned()),
                        });
                    }
                }
            }
        }
        if let Some(r) = receiver.or(gateway) {
            return Ok(r);
        }
        Ok(common_name(&tbs.subject)
            .map(|id| Identity::Gateway {
                id,
                site: None,
                ward: None,
            })
            .unwrap_or(Identity::Unknown))
    }

    /// Whether this identity may sign for gateway `id` of `site`/`ward` (a CN-only identity
    /// matches on the id alone).
    pub fn is_gateway(&self, id: &str, site: &str, ward: &str) -> bool {
        match self {
            Identity::Gateway {
                id: i,
                site: s,
                ward: w,
            } => {
                i == id
                    && s.as_deref().is_none_or(|s| s == site)
                    && w.as_deref().is_none_or(|w| w == ward)
            }
            _ => false,
        }
    }

    /// Whether this is a receiver identity.
    pub fn is_receiver(&self) -> bool {
        matches!(self, Identity::Receiver { .. })
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Gateway {
                id,
                site: Some(s),
                ward: Some(w),
            } => write!(f, "gateway {id} ({s}/{w})"),
            Identity::Gateway { id, .. } => write!(f, "gateway {id} (by CN)"),
            Identity::Receiver { name } => write!(f, "receiver {name}"),
            Identity::FirmwareSigner { name } => write!(f, "firmware signer {name}"),
            Identity::Unknown => f.write_str("no wardgate identity"),
        }
    }
}

/// The first CN of a distinguished name, if it is a UTF-8, printable or IA5 string.
fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
    const CN: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid == CN)
        .find_map(|atv| {
            atv.value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
                .or_else(|_| {
                    atv.value
                        .decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                })
                .or_else(|_| {
                    atv.value
                        .decode_as::<Ia5StringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                })
                .ok()
        })
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, uris: &[&str]) -> CertificateDer<'static> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        p.distinguished_name = dn;
        p.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_provisioned_gateway_is_named_by_its_urn() {
        let c = cert(Some("gw-1"), &["urn:wardgate:st-mary:ward-7:gw-1"]);
        let id = Identity::of(&c).unwrap();
        assert!(id.is_gateway("gw-1", "st-mary", "ward-7"));
        assert!(!id.is_gateway("gw-1", "st-mary", "ward-8"), "another ward");
        assert!(
            !id.is_gateway("gw-2", "st-mary", "ward-7"),
            "another gateway"
        );
        assert!(!id.is_receiver());
        assert_eq!(id.to_string(), "gateway gw-1 (st-mary/ward-7)");
    }

    #[test]
    fn the_urn_wins_over_the_cn_and_a_cn_alone_names_only_the_id() {
        let c = cert(Some("gw-9"), &["urn:wardgate:s:w:gw-1"]);
        assert!(Identity::of(&c).unwrap().is_gateway("gw-1", "s", "w"));
        let c = cert(Some("gw-1"), &[]);
        let id = Identity::of(&c).unwrap();
        assert!(id.is_gateway("gw-1", "any-site", "any-ward"));
        assert!(!id.is_gateway("gw-2", "s", "w"));
    }

    #[test]
    fn receivers_are_named_by_their_own_urn_and_are_never_gateways() {
        let c = cert(
            Some("gw-1"),
            &["urn:wardgate:s:w:gw-1", "urn:wardgate-receiver:upstream-a"],
        );
        let id = Identity::of(&c).unwrap();
        assert!(id.is_receiver());
        assert!(!id.is_gateway("gw-1", "s", "w"));
        assert_eq!(id.to_string(), "receiver upstream-a");
    }

    #[test]
    fn firmware_signers_are_named_by_their_urn_and_are_nothing_else() {
        let c = cert(
            Some("gw-1"),
            &[
                "urn:wardgate:s:w:gw-1",
                "urn:wardgate-receiver:a",
                "urn:wardgate-firmware:release-team",
            ],
        );
        let id = Identity::of(&c).unwrap();
        assert_eq!(
            id,
            Identity::FirmwareSigner {
                name: "release-team".into()
            }
        );
        assert!(!id.is_receiver() && !id.is_gateway("gw-1", "s", "w"));
        assert_eq!(id.to_string(), "firmware signer release-team");
        let c = cert(None, &["urn:wardgate-firmware:"]);
        assert_eq!(Identity::of(&c).unwrap(), Identity::Unknown);
    }

    #[test]
    fn malformed_urns_and_nameless_certificates_name_nobody() {
        let c = cert(
            None,
            &[
                "urn:wardgate:s:gw-1",
                "urn:wardgate-receiver:",
                "urn:other:x",
            ],
        );
        assert_eq!(Identity::of(&c).unwrap(), Identity::Unknown);
        let c = cert(None, &["urn:wardgate:s::gw-1"]);
        assert_eq!(Identity::of(&c).unwrap(), Identity::Unknown);
        assert!(Identity::of(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
    }
}
