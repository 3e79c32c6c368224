//! Throw-away PKI for the demo and tests (rcgen, ring): a CA, a broker certificate for loopback,
//! and client certificates, written as PEM files with owner-only keys.
//!
//! Not for production: a ward's gateway gets its key and certificate through provisioning.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A certificate authority that can sign leaf certificates.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

impl Ca {
    /// A new self-signed P-256 CA named `name`.
    pub fn new(name: &str) -> anyhow::Result<Ca> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = ca_params(name).self_signed(&key)?;
        let cert_pem = cert.pem();
        Ok(Ca {
            cert,
            key,
            cert_pem,
        })
    }

    /// The CA's private key, PKCS#8 PEM (for tests that sign with another tool, e.g. openssl).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A leaf certificate: `(cert PEM, PKCS#8 key PEM)`. `names` become SANs (IP addresses are
    /// recognised); `server` selects serverAuth, otherwise clientAuth.
    pub fn leaf(
        &self,
        common_name: &str,
        names: &[&str],
        server: bool,
    ) -> anyhow::Result<(String, String)> {
        self.leaf_valid_from(common_name, names, server, None)
    }

    /// [`Self::leaf`] valid from midnight UTC of `not_before` (year, month, day) instead of
    /// rcgen's default (1975): what a real CA issues, and what a gateway whose clock is behind
    /// sees as "not yet valid".
    pub fn leaf_valid_from(
        &self,
        common_name: &str,
        names: &[&str],
        server: bool,
        not_before: Option<(i32, u8, u8)>,
    ) -> anyhow::Result<(String, String)> {
        self.leaf_with(common_name, names, server, |p| {
            if let Some((y, m, d)) = not_before {
                p.not_before = rcgen::date_time_ymd(y, m, d);
            }
        })
    }

    /// [`Self::leaf`] with its parameters changed by `customize` before signing (validity,
    /// serial number, key usages: the TLS failure tests' broken certificates).
    pub fn leaf_with(
        &self,
        common_name: &str,
        names: &[&str],
        server: bool,
        customize: impl FnOnce(&mut CertificateParams),
    ) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut p = leaf_params(common_name, names, server)?;
        customize(&mut p);
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// An intermediate CA named `name`, signed by this CA.
    pub fn intermediate(&self, name: &str) -> anyhow::Result<Ca> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = ca_params(name).signed_by(&key, &self.cert, &self.key)?;
        let cert_pem = cert.pem();
        Ok(Ca {
            cert,
            key,
            cert_pem,
        })
    }

    /// A certificate revocation list (RFC 5280 §5, PEM) signed by this CA that revokes the
    /// certificates with the serial numbers `serials`; valid from 2020 to 2099.
    pub fn crl(&self, serials: &[u64]) -> anyhow::Result<String> {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: 1u64.into(),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: (*s).into(),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.cert, &self.key)?.pem()?)
    }
}

/// A self-signed leaf certificate (no CA): `(cert PEM, key PEM)`, as [`Ca::leaf`] makes them.
pub fn self_signed_leaf(
    common_name: &str,
    names: &[&str],
    server: bool,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = leaf_params(common_name, names, server)?.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A CA's parameters: P-256, may sign certificates and CRLs.
fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// A leaf's parameters: `names` become SANs — `urn:…` names URI SANs (wardgate identities),
/// the rest DNS names or IP addresses; serverAuth or clientAuth.
fn leaf_params(
    common_name: &str,
    names: &[&str],
    server: bool,
) -> anyhow::Result<CertificateParams> {
    let (uris, hosts): (Vec<&str>, Vec<&str>) = names.iter().partition(|n| n.starts_with("urn:"));
    let mut p = CertificateParams::new(hosts.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    for u in uris {
        p.subject_alt_names.push(rcgen::SanType::URI(u.try_into()?));
    }
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    Ok(p)
}

/// Writes a `(cert PEM, key PEM)` pair as `dir/STEM.pem` and `dir/STEM.key` ([`write_cert`],
/// [`write_key`]) and returns the two paths.
pub fn write_pair(
    dir: &Path,
    stem: &str,
    (cert, key): (String, String),
) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (c, k) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    write_cert(&c, &cert)?;
    write_key(&k, &key)?;
    Ok((c, k))
}

/// Writes `pem` to `path` (mode 0644).
pub fn write_cert(path: &Path, pem: &str) -> std::io::Result<()> {
    std::fs::write(path, pem)
}

/// Writes a private key to `path` with mode 0600 from the moment it exists.
pub fn write_key(path: &Path, pem: &str) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()
}
