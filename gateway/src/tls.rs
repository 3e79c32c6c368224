//! rustls client configuration for mutual TLS (DESIGN §6), always with the `ring` provider.

use crate::signing::{read_certs, read_key, SigningError};
use std::path::Path;
use std::sync::Arc;

/// Builds a TLS 1.3/1.2 client config that trusts only the CAs in `ca` and presents the client
/// certificate chain in `cert` with the key in `key`.
///
/// Errors name the file and the problem (unreadable, no certificate, key not matching).
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ClientConfig>, SigningError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca)? {
        roots.add(c).map_err(|e| SigningError::File {
            path: ca.display().to_string(),
            message: format!("unusable CA certificate: {e}"),
        })?;
    }
    let chain = read_certs(cert)?;
    let key = read_key(key)?;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| SigningError::Key(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(|e| {
        SigningError::Key(format!(
            "{} does not fit the private key: {e}",
            cert.display()
        ))
    })?;
    Ok(Arc::new(cfg))
}

/// Why a connection to the broker failed, in the categories an installer acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectProblem {
    /// The broker refused our client certificate (a fatal TLS alert in the handshake).
    ClientCertRefused,
    /// The broker's certificate is not valid yet by our clock: the clock is not set (no RTC,
    /// no NTP yet). `valid_from`: the certificate's start, Unix seconds, when rustls names it.
    WaitingForTime {
        /// Start of the broker certificate's validity, Unix seconds.
        valid_from: Option<i64>,
    },
    /// The broker's certificate has expired (or our clock is far ahead).
    BrokerCertExpired,
    /// The broker's certificate does not chain to `uplink.ca`.
    UnknownIssuer,
    /// The broker's certificate does not name the configured host.
    WrongHostName,
    /// TCP connection refused: the broker is down or the port is wrong.
    Refused,
    /// Anything else (reset, timeout, protocol error): the text says what.
    Other,
}

/// Turns a connection error into the sentence an installer needs, e.g. distinguishing an
/// unknown broker CA, a certificate not yet valid (clock not set: waiting for time), a refused
/// client certificate, and a broker that is down.
pub fn explain(err: &rumqttc::ConnectionError) -> String {
    classify(err).1
}

/// [`explain`] with the category: callers that act on the kind (log once per kind, report
/// "waiting for time") match on [`ConnectProblem`], never on the text.
pub fn classify(err: &rumqttc::ConnectionError) -> (ConnectProblem, String) {
    let text = err.to_string();
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
