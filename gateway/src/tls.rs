//! rustls client configuration for mutual TLS (DESIGN §6), always with the `ring` provider, and
//! the installer's explanation of every way a connection to the broker can fail.
//!
//! The broker's certificate is checked by webpki exactly as rustls would ([`BrokerCertVerifier`]
//! wraps rustls' `WebPkiServerVerifier`), and additionally refused when its key is weak (RSA
//! under 2048 bits). When the check fails, the verifier looks at the certificates the broker sent
//! and names what is wrong in an installer's words (self-signed, issued by a CA that is not in
//! `uplink.ca` or not sent, expired on which date, which names it holds, issued for clients), so
//! [`classify`] can say it without parsing error texts.

use crate::signing::{parse_x509, read_certs, read_key, SigningError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Builds a TLS 1.3/1.2 client config that trusts only the CAs in `ca` (checked by
/// [`BrokerCertVerifier`]) and presents the client certificate chain in `cert` with the key in
/// `key`.
///
/// Errors name the file and the problem (unreadable, no certificate, key not matching).
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ClientConfig>, SigningError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut root_subjects = Vec::new();
    for c in read_certs(ca)? {
        if let Ok(x) = parse_x509(&c) {
            root_subjects.push(x.tbs_certificate.subject.to_string());
        }
        roots.add(c).map_err(|e| SigningError::File {
            path: ca.display().to_string(),
            message: format!("unusable CA certificate: {e}"),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| SigningError::File {
        path: ca.display().to_string(),
        message: format!("unusable CA certificates: {e}"),
    })?;
    let verifier = Arc::new(BrokerCertVerifier {
        inner,
        root_subjects,
    });
    let chain = read_certs(cert)?;
    let key = read_key(key)?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SigningError::Key(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            SigningError::Key(format!(
                "{} does not fit the private key: {e}",
                cert.display()
            ))
        })?;
    Ok(Arc::new(cfg))
}

/// The smallest RSA modulus accepted for a broker key, in bits (NIST SP 800-131A: RSA under
/// 2048 bits is disallowed since 2014).
pub const MIN_RSA_BITS: usize = 2048;

/// Checks the broker's certificate as rustls' WebPKI verifier does (chain to `uplink.ca`,
/// validity, host name, serverAuth purpose), refuses an RSA key under [`MIN_RSA_BITS`], and
/// turns a refusal into a [`Refusal`]: the [`ConnectProblem`] and the installer's sentence,
/// carried inside the rustls error (`CertificateError::Other`).
#[derive(Debug)]
pub struct BrokerCertVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    /// The subjects (RFC 4514) of the certificates in `uplink.ca`.
    root_subjects: Vec<String>,
}

/// Why the broker's certificate was refused, carried through rustls and rumqttc to [`classify`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The kind of problem.
    pub problem: ConnectProblem,
    /// The installer's sentence.
    pub message: String,
}

impl Refusal {
    fn into_error(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
            self,
        ))))
    }
}

/// `2026-01-27T10:00:00Z` for a time in seconds since the Unix epoch.
fn date(secs: u64) -> String {
    x509_cert::der::DateTime::from_unix_duration(Duration::from_secs(secs))
        .map(|t| format!("{t}"))
        .unwrap_or_else(|_| format!("{secs} s after 1970"))
}

/// `mqtt.example.org` for rustls' `DnsName("mqtt.example.org")` (the names a certificate
/// presents, as rustls reports them); anything else unchanged.
fn bare_name(presented: &str) -> &str {
    presented
        .split_once("(\"")
        .and_then(|(_, rest)| rest.strip_suffix("\")"))
        .unwrap_or(presented)
}

/// The RSA modulus size in bits of a certificate's key, `None` for other key types (RFC 8017
/// §A.1.1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`).
fn rsa_bits(cert: &x509_cert::Certificate) -> Option<usize> {
    use x509_cert::der::{asn1::UintRef, Decode, Reader, SliceReader};
    const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
    let spki = &cert.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid.to_string() != RSA_ENCRYPTION {
        return None;
    }
    let mut r = SliceReader::new(spki.subject_public_key.raw_bytes()).ok()?;
    let modulus = r
        .sequence(|r| {
            let n = UintRef::decode(r)?;
            let _e = UintRef::decode(r)?;
            Ok(n.as_bytes().to_vec())
        })
        .ok()?;
    let first = *modulus.first()?;
    Some(modulus.len() * 8 - first.leading_zeros() as usize)
}

impl BrokerCertVerifier {
    /// The refusal for `err` from webpki, naming what the broker sent.
    fn explain(
        &self,
        err: &rustls::Error,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Option<Refusal> {
        let rustls::Error::InvalidCertificate(e) = err else {
            return None;
        };
        let leaf = parse_x509(end_entity).ok()?;
        let subject = leaf.tbs_certificate.subject.to_string();
        let issuer = leaf.tbs_certificate.issuer.to_string();
        let r = |problem, message| Some(Refusal { problem, message });
        match e {
            CertificateError::ExpiredContext { time, not_after } => r(
                ConnectProblem::BrokerCertExpired,
                format!(
                    "the broker's certificate ({subject}) expired on {} and this gateway's clock says {}: renew the broker's certificate (or, if the clock is wrong, set it)",
                    date(not_after.as_secs()),
                    date(time.as_secs())
                ),
            ),
            CertificateError::NotValidYetContext { time, not_before } => r(
                ConnectProblem::WaitingForTime {
                    valid_from: i64::try_from(not_before.as_secs()).ok(),
                },
                format!(
                    "waiting for time: the broker certificate ({subject}) is valid from {} but this gateway's clock says {}; buffering until the clock is set (NTP). If the clock is right, the broker's certificate was issued with a start date in the future",
                    date(not_before.as_secs()),
                    date(time.as_secs())
                ),
            ),
            CertificateError::NotValidForNameContext { expected, presented } => r(
                ConnectProblem::WrongHostName,
                format!(
                    "the broker's certificate does not name the configured host {} (uplink.host): it names {}; connect by a name the certificate holds, or have it reissued with this one",
                    expected.to_str(),
                    if presented.is_empty() {
                        "no host at all".to_string()
                    } else {
                        presented.iter().map(|p| bare_name(p)).collect::<Vec<_>>().join(", ")
                    }
                ),
            ),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => r(
                ConnectProblem::WrongKeyUsage,
                format!(
                    "the broker's certificate ({subject}) is not issued for a TLS server: its extended key usage lacks serverAuth (a client certificate installed on the broker?)"
                ),
            ),
            CertificateError::UnknownIssuer if subject == issuer => r(
                ConnectProblem::SelfSigned,
                format!(
                    "the broker presents a self-signed certificate ({subject}), not one signed by the configured CA (uplink.ca); install a certificate from the hospital CA on the broker"
                ),
            ),
            CertificateError::UnknownIssuer => {
                // Follow the chain the broker sent as far as it goes.
                let mut top = issuer.clone();
                let mut sent = Vec::new();
                for _ in 0..intermediates.len() {
                    let Some(next) = intermediates
                        .iter()
                        .filter_map(|c| parse_x509(c).ok())
                        .find(|c| c.tbs_certificate.subject.to_string() == top)
                    else {
                        break;
                    };
                    sent.push(top.clone());
                    let up = next.tbs_certificate.issuer.to_string();
                    if up == top {
                        break;
                    }
                    top = up;
                }
                let message = if self.root_subjects.contains(&top) {
                    format!("the broker's certificate ({subject}) chains to {top}, which is in uplink.ca, but a signature does not verify; it is not signed by the configured CA (a different CA of the same name?)")
                } else if sent.is_empty() {
                    format!(
                        "the broker's certificate ({subject}) is not signed by the configured CA (uplink.ca): its issuer {top} is not in uplink.ca and the broker did not send it. If {top} is an intermediate of your CA, the broker must send the full chain (mosquitto: certfile holds its certificate followed by the intermediate); otherwise uplink.ca is not the broker's CA"
                    )
                } else {
                    format!(
                        "the broker's certificate ({subject}) is not signed by the configured CA (uplink.ca): the chain it sent ends at {top}, which is not in uplink.ca"
                    )
                };
                r(ConnectProblem::UnknownIssuer, message)
            }
            CertificateError::BadSignature => r(
                ConnectProblem::UnknownIssuer,
                format!("the broker's certificate ({subject}) claims to be issued by {issuer} but its signature does not verify: it is not signed by the configured CA (uplink.ca)"),
            ),
            _ => None,
        }
    }
}

impl ServerCertVerifier for BrokerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => {
                if let Some(bits) = parse_x509(end_entity).ok().as_ref().and_then(rsa_bits) {
                    if bits < MIN_RSA_BITS {
                        return Err(Refusal {
                            problem: ConnectProblem::WeakKey,
                            message: format!("the broker's certificate has a weak key (RSA {bits} bits; at least {MIN_RSA_BITS} needed): refusing to connect; have the broker's key and certificate replaced"),
                        }
                        .into_error());
                    }
                }
                Ok(v)
            }
            Err(e) => Err(self
                .explain(&e, end_entity, intermediates)
                .map(Refusal::into_error)
                .unwrap_or(e)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// Why a connection to the broker failed, in the categories an installer acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectProblem {
    /// The broker refused our client certificate (a fatal TLS alert in the handshake) without
    /// saying it is revoked or expired: untrusted CA, bad certificate, none sent.
    ClientCertRefused,
    /// The broker refused our client certificate as revoked (TLS alert `certificate_revoked`).
    ClientCertRevoked,
    /// The broker refused our client certificate as expired (TLS alert `certificate_expired`).
    ClientCertExpired,
    /// The broker's certificate is not valid yet by our clock: the clock is not set (no RTC,
    /// no NTP yet). `valid_from`: the certificate's start, Unix seconds, when rustls names it.
    WaitingForTime {
        /// Start of the broker certificate's validity, Unix seconds.
        valid_from: Option<i64>,
    },
    /// The broker's certificate has expired (or our clock is far ahead).
    BrokerCertExpired,
    /// The broker's certificate does not chain to `uplink.ca` (unknown CA, intermediate not
    /// sent, signature not verifying).
    UnknownIssuer,
    /// The broker's certificate is self-signed and not in `uplink.ca`.
    SelfSigned,
    /// The broker's certificate does not name the configured host.
    WrongHostName,
    /// The broker's certificate is not for a TLS server (extended key usage lacks serverAuth).
    WrongKeyUsage,
    /// The broker's key is too weak (RSA under [`MIN_RSA_BITS`]).
    WeakKey,
    /// TCP connection refused: the broker is down or the port is wrong.
    Refused,
    /// The connection was up but the broker stopped answering (no PINGRESP within the
    /// keepalive): the network path is down (half-open link) or the broker hangs.
    NoResponse,
    /// Anything else (reset, timeout, protocol error): the text says what.
    Other,
}

/// Turns a connection error into the sentence an installer needs, e.g. distinguishing an
/// unknown broker CA, a certificate not yet valid (clock not set: waiting for time), a refused
/// client certificate, and a broker that is down.
pub fn explain(err: &rumqttc::ConnectionError) -> String {
    classify(err).1
}

/// The rustls error inside a rumqttc connection error: rumqttc nests it (e.g. `MqttState` →
/// `Deserialization` → `Io` → the TLS stream's `io::Error` holding the rustls error), so the
/// source chain is walked, looking inside every `io::Error` on the way.
fn rustls_error(err: &rumqttc::ConnectionError) -> Option<&rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    // Bounded: a chain is a handful of links.
    for _ in 0..16 {
        let e = cur?;
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// The problem and sentence for an alert the broker sent about our client certificate.
fn client_cert_alert(alert: &AlertDescription) -> Option<(ConnectProblem, String)> {
    use AlertDescription as A;
    Some(match alert {
        A::CertificateRevoked => (
            ConnectProblem::ClientCertRevoked,
            format!("the broker refused this gateway's client certificate as REVOKED (uplink.cert): have a new certificate issued (wardgate provision) (TLS alert {alert:?} from the broker)"),
        ),
        A::CertificateExpired => (
            ConnectProblem::ClientCertExpired,
            format!("the broker refused this gateway's client certificate as EXPIRED (uplink.cert; or the broker's clock is wrong): have a new certificate issued (wardgate provision) (TLS alert {alert:?} from the broker)"),
        ),
        A::UnknownCA => (
            ConnectProblem::ClientCertRefused,
            format!("the broker refused this gateway's client certificate: it does not trust the CA that issued uplink.cert (TLS alert {alert:?} from the broker)"),
        ),
        A::BadCertificate
        | A::UnsupportedCertificate
        | A::CertificateUnknown
        | A::CertificateRequired
        | A::AccessDenied => (
            ConnectProblem::ClientCertRefused,
            format!("the broker refused this gateway's client certificate (uplink.cert/uplink.key) (TLS alert {alert:?} from the broker)"),
        ),
        _ => return None,
    })
}

/// [`explain`] with the category: callers that act on the kind (log once per kind, report
/// "waiting for time") match on [`ConnectProblem`], never on the text.
pub fn classify(err: &rumqttc::ConnectionError) -> (ConnectProblem, String) {
    let text = err.to_string();
    match rustls_error(err) {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(o))) => {
            if let Some(r) = o.0.downcast_ref::<Refusal>() {
                return (r.problem.clone(), r.message.clone());
            }
        }
        Some(rustls::Error::AlertReceived(alert)) => {
            if let Some(found) = client_cert_alert(alert) {
                return found;
            }
        }
        _ => {}
    }
    if matches!(
        err,
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::AwaitPingResp)
    ) {
        return (ConnectProblem::NoResponse, "the broker stopped answering: no reply to the keepalive ping (PINGRESP) in time; the network path is down or the broker hangs".into());
    }
    let lower = text.to_lowercase();
    // A fatal alert from the broker during the handshake (rustls: "received fatal alert:
    // UnknownCA", "BadCertificate", "CertificateRequired") is the broker refusing our certificate.
    if lower.contains("received fatal alert")
        || (lower.contains("certificate")
            && (lower.contains("alert") || lower.contains("required")))
    {
        return (ConnectProblem::ClientCertRefused, format!("the broker refused this gateway's client certificate (uplink.cert/uplink.key) ({text})"));
    }
    if lower.contains("notvalidyet") || lower.contains("not valid yet") {
        // rustls names the verification time, which changes at every retry: keep only the
        // certificate's start, so the reason stays the same and is logged once.
        let from = text
            .split("not valid before ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<i64>().ok());
        return (ConnectProblem::WaitingForTime { valid_from: from }, match from {
            Some(t) => format!("waiting for time: the broker certificate is not valid yet by this gateway's clock (valid from Unix time {t}); buffering until the clock is set (NTP)"),
            None => "waiting for time: the broker certificate is not valid yet by this gateway's clock; buffering until the clock is set (NTP)".into(),
        });
    }
    if lower.contains("expired") {
        return (
            ConnectProblem::BrokerCertExpired,
            format!("the broker certificate has expired or this gateway's clock is wrong ({text})"),
        );
    }
    if lower.contains("unknownissuer") || lower.contains("badsignature") {
        return (ConnectProblem::UnknownIssuer, format!("the broker's certificate is not signed by the configured CA (uplink.ca); refusing to connect ({text})"));
    }
    if lower.contains("notvalidforname") {
        return (
            ConnectProblem::WrongHostName,
            format!("the broker's certificate does not name the configured host ({text})"),
        );
    }
    if lower.contains("connection refused") {
        return (
            ConnectProblem::Refused,
            format!("broker unreachable: connection refused ({text})"),
        );
    }
    (ConnectProblem::Other, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_rustls_reports_them_are_shown_bare() {
        assert_eq!(
            bare_name(r#"DnsName("mqtt.example.org")"#),
            "mqtt.example.org"
        );
        assert_eq!(bare_name("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn a_missing_pingresp_is_a_dead_link_in_an_installers_words() {
        let err = rumqttc::ConnectionError::MqttState(rumqttc::StateError::AwaitPingResp);
        let (p, text) = classify(&err);
        assert_eq!(p, ConnectProblem::NoResponse);
        assert!(text.contains("stopped answering"), "{text}");
    }

    #[test]
    fn an_alert_inside_nested_io_errors_is_found() {
        // As rumqttc reports a refusal that arrives while reading the CONNACK.
        let tls = rustls::Error::AlertReceived(AlertDescription::CertificateRevoked);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let err = rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::Io(io),
        ));
        assert_eq!(classify(&err).0, ConnectProblem::ClientCertRevoked);
    }
}
