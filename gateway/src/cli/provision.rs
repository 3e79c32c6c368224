//! `wardgate provision`: the gateway's key and certificate request, and installing the signed
//! certificate (DESIGN §6, §9). An installer's command; the daemon never writes keys.
//!
//! Two steps, both driven by the gateway config (`[gateway]` id/site/ward, `[uplink]`
//! key/cert/ca):
//!
//! 1. `wardgate provision --config F [--csr PATH] [--force]` generates a **P-256** key (rcgen
//!    with ring) as PKCS#8 PEM at `uplink.key`, owner-only (0600) from the moment it exists and
//!    put in place atomically (temporary file in the same directory, fsync, rename, fsync of the
//!    directory). An existing key is kept unless `--force`; with `--force` the new key is staged
//!    as `<key>.new` and the pair in use stays until `--install-cert` of the new certificate
//!    moves both into place (the old key kept as `<key>.old`). It then writes a PKCS#10 certificate signing request (RFC 2986), PEM
//!    `CERTIFICATE REQUEST`, signed with the new key, at `--csr` or `uplink.cert` with the
//!    extension `.csr` (`gateway.pem` → `gateway.csr`). Subject (RFC 5280 §4.1.2.6):
//!    `CN` = gateway id (= the MQTT client id, so a broker's `use_identity_as_username` or ACLs
//!    by CN see the same name), `O` = site, `OU` = ward. One subjectAltName (RFC 5280
//!    §4.2.1.6), a URI `urn:wardgate:{site}:{ward}:{id}`, for CAs that require a SAN; the
//!    request also asks for keyUsage digitalSignature and extendedKeyUsage clientAuth.
//!    It prints the key's fingerprint, SHA-256 of its SubjectPublicKeyInfo DER: the `kid` of
//!    every batch this gateway will sign (see [`crate::signing`]), so upstream can match it.
//! 2. `wardgate provision --install-cert SIGNED.pem --config F [--ca CA.pem]` checks the
//!    certificate the CA returned — its public key is the key on disk (else refused: a
//!    certificate for another key), it is valid now by this clock (a clear "not yet valid by this
//!    clock" for a Raspberry Pi without RTC that has no time yet), its chain verifies against
//!    `--ca` or `uplink.ca` (when that file exists) for clientAuth (RFC 5280 §6) — and installs
//!    it (chain included, as given) atomically at `uplink.cert`, mode 0644.
//!
//! A running daemon picks up the new pair at its next certificate check and reconnects (see
//! [`crate::uplink::credentials`]).
//!
//! Errors: [`ProvisionError::Usage`] (exit 2: an existing key without `--force`, unusable
//! arguments), everything else exit 1.

use crate::config::Config;
use crate::signing::{kid_of, read_certs, read_key, require_v3, validity, Signer};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Errors of `wardgate provision`.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The command was used in a way it cannot honour (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Anything else: I/O, a refused certificate (exit 1).
    #[error("{0}")]
    Failed(String),
}

fn failed(msg: impl Into<String>) -> ProvisionError {
    ProvisionError::Failed(msg.into())
}

/// Where the CSR goes by default: `uplink.cert` with the extension `csr`.
pub fn default_csr_path(cert: &Path) -> PathBuf {
    cert.with_extension("csr")
}

/// What `provision` made.
#[derive(Debug)]
pub struct Provisioned {
    /// The new key file.
    pub key: PathBuf,
    /// With `--force`: the key still in use (the new one is staged as `<key>.new` until
    /// `--install-cert`).
    pub old_key: Option<PathBuf>,
    /// The CSR file.
    pub csr: PathBuf,
    /// SHA-256 of the key's SubjectPublicKeyInfo DER (the COSE `kid`), lowercase hex.
    pub kid: String,
    /// The subject written into the CSR, e.g. `CN=gw-1, O=site, OU=ward-7`.
    pub subject: String,
    /// The subjectAltName URI.
    pub san: String,
}

/// Step 1: a new P-256 key at `uplink.key` (0600, atomic) and a CSR for it.
pub fn provision(
    cfg: &Config,
    csr: Option<&Path>,
    force: bool,
) -> Result<Provisioned, ProvisionError> {
    let key_path = cfg.uplink.key.get_ref().clone();
    let csr_path = csr
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_csr_path(cfg.uplink.cert.get_ref()));
    let (id, site, ward) = (
        cfg.gateway.id.get_ref(),
        cfg.gateway.site.get_ref(),
        cfg.gateway.ward.get_ref(),
    );
    let existing = std::fs::symlink_metadata(&key_path).ok();
    if existing.is_some() && !force {
        return Err(ProvisionError::Usage(format!(
            "{} exists already; refusing to replace the gateway's key. To renew the certificate \
             with a new key run again with --force (the new key is staged as {} and replaces the \
             current one only when --install-cert installs its certificate)",
            key_path.display(),
            new_path(&key_path).display()
        )));
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| failed(format!("cannot generate a P-256 key: {e}")))?;
    let kid = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &key.public_key_der(),
    ));

    let san = format!("urn:wardgate:{site}:{ward}:{id}");
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| failed(format!("CSR parameters: {e}")))?;
    params
        .distinguished_name
        .push(DnType::CommonName, id.as_str());
    params
        .distinguished_name
        .push(DnType::OrganizationName, site.as_str());
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, ward.as_str());
    params.subject_alt_names = vec![SanType::URI(
        san.as_str()
            .try_into()
            .map_err(|e| failed(format!("subjectAltName {san}: {e}")))?,
    )];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| failed(format!("cannot make the certificate signing request: {e}")))?;

    // The CSR first: if it cannot be written, nothing has changed yet.
    write_atomic(&csr_path, csr_pem.as_bytes(), 0o644, None)
        .map_err(|e| failed(format!("cannot write {}: {e}", csr_path.display())))?;
    let owner = existing.as_ref().map(|m| (m.uid(), m.gid()));
    // With --force the new key is **staged** beside the one in use (`<key>.new`): the running
    // gateway, and any restart before the new certificate arrives, keep working with the
    // current pair; `--install-cert` swaps key and certificate together.
    let target = if existing.is_some() {
        new_path(&key_path)
    } else {
        key_path.clone()
    };
    write_atomic(&target, key.serialize_pem().as_bytes(), 0o600, owner)
        .map_err(|e| failed(format!("cannot write the key {}: {e}", target.display())))?;
    let old_key = existing.is_some().then(|| key_path.clone());
    let key_path = target;
    Ok(Provisioned {
        key: key_path,
        old_key,
        csr: csr_path,
        kid,
        subject: format!("CN={id}, O={site}, OU={ward}"),
        san,
    })
}

/// `<key>.new`: a key made by `provision --force`, waiting for its certificate.
pub fn new_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".new");
    s.into()
}

/// `<key>.old`.
pub fn old_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".old");
    s.into()
}

/// What `--install-cert` installed.
#[derive(Debug)]
pub struct Installed {
    /// Where.
    pub cert: PathBuf,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo (the COSE `kid`), lowercase hex.
    pub kid: String,
    /// notBefore and notAfter, RFC 3339 (UTC).
    pub valid: (String, String),
    /// The CA file the chain was verified against; `None` when there was none to check with.
    pub chain_verified_by: Option<PathBuf>,
}

/// Step 2: checks `signed` against the key on disk, the clock and the CA, then installs it at
/// `uplink.cert` (0644, atomic). `ca` overrides `uplink.ca` for the chain check (a hospital
/// whose client CA is not the broker's CA).
pub fn install_cert(
    cfg: &Config,
    signed: &Path,
    ca: Option<&Path>,
) -> Result<Installed, ProvisionError> {
    let key_path = cfg.uplink.key.get_ref();
    let cert_path = cfg.uplink.cert.get_ref();
    let pem = std::fs::read(signed)
        .map_err(|e| failed(format!("cannot read {}: {e}", signed.display())))?;
    let chain = read_certs(signed).map_err(|e| failed(e.to_string()))?;
    let leaf = &chain[0];
    require_v3(leaf).map_err(|e| failed(format!("{}: {e}", signed.display())))?;
    // A key staged by `provision --force` whose certificate this is: swap both now.
    let staged = new_path(key_path);
    if staged.exists() {
        if let Ok(k) = read_key(&staged) {
            if Signer::new(leaf, &k).is_ok() {
                return install_with_staged_key(cfg, signed, ca, &pem, &chain, &staged);
            }
        }
    }
    let key = read_key(key_path).map_err(|e| {
        failed(format!(
            "{e} (run `wardgate provision` first: the certificate must be for the key it made)"
        ))
    })?;
    let cert_kid = kid_of(leaf).map_err(|e| failed(format!("{}: {e}", signed.display())))?;
    if let Err(e) = Signer::new(leaf, &key) {
        let key_kid = std::fs::read_to_string(key_path)
            .ok()
            .and_then(|p| KeyPair::from_pem(&p).ok())
            .map(|k| {
                hex::encode(ring::digest::digest(
                    &ring::digest::SHA256,
                    &k.public_key_der(),
                ))
            })
            .unwrap_or_else(|| "unknown".into());
        return Err(failed(format!(
            "{} is not a certificate for this gateway's key {} ({e}): the certificate's key \
             fingerprint is {}, the key's is {key_kid}. Was it issued for an older CSR? Send {} \
             to the CA again",
            signed.display(),
            key_path.display(),
            hex::encode(cert_kid),
            default_csr_path(cert_path).display()
        )));
    }
    let (valid, chain_verified_by) = check_validity_and_chain(cfg, signed, ca, &chain)?;
    write_atomic(cert_path, &pem, 0o644, None)
        .map_err(|e| failed(format!("cannot install {}: {e}", cert_path.display())))?;
    Ok(Installed {
        cert: cert_path.clone(),
        kid: hex::encode(cert_kid),
        valid,
        chain_verified_by,
    })
}

/// The certificate is for the key `provision --force` staged: checks it, then installs it and
/// moves the staged key into place (the previous key is kept as `<key>.old`). The key moves
/// first and the certificate right after; the running gateway waits for files to settle
/// before it reads a changed pair.
fn install_with_staged_key(
    cfg: &Config,
    signed: &Path,
    ca: Option<&Path>,
    pem: &[u8],
    chain: &[CertificateDer<'static>],
    staged: &Path,
) -> Result<Installed, ProvisionError> {
    let key_path = cfg.uplink.key.get_ref();
    let cert_path = cfg.uplink.cert.get_ref();
    let (valid, chain_verified_by) = check_validity_and_chain(cfg, signed, ca, chain)?;
    let cert_kid = kid_of(&chain[0]).map_err(|e| failed(format!("{}: {e}", signed.display())))?;
    let old = old_path(key_path);
    let _ = std::fs::remove_file(&old);
    if key_path.exists() {
        std::fs::hard_link(key_path, &old)
            .or_else(|_| std::fs::copy(key_path, &old).map(|_| ()))
            .map_err(|e| {
                failed(format!(
                    "cannot keep the old key as {}: {e}; nothing replaced",
                    old.display()
                ))
            })?;
    }
    std::fs::rename(staged, key_path).map_err(|e| {
        failed(format!(
            "cannot move {} to {}: {e}",
            staged.display(),
            key_path.display()
        ))
    })?;
    write_atomic(cert_path, pem, 0o644, None)
        .map_err(|e| failed(format!("cannot install {}: {e}", cert_path.display())))?;
    Ok(Installed {
        cert: cert_path.clone(),
        kid: hex::encode(cert_kid),
        valid,
        chain_verified_by,
    })
}

/// Checks the leaf's validity period against this clock and its chain against `ca` (or
/// `uplink.ca` when it exists). Returns (notBefore, notAfter) in RFC 3339 and the CA used.
#[allow(clippy::type_complexity)]
fn check_validity_and_chain(
    cfg: &Config,
    signed: &Path,
    ca: Option<&Path>,
    chain: &[CertificateDer<'static>],
) -> Result<((String, String), Option<PathBuf>), ProvisionError> {
    let leaf = &chain[0];
    let (not_before, not_after) =
        validity(leaf).map_err(|e| failed(format!("{}: {e}", signed.display())))?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    if now < not_before {
        return Err(failed(format!(
            "{} is not yet valid by this clock: valid from {} but this gateway's clock says {}. \
             If the clock is wrong (no RTC, no time sync yet), set it (timedatectl, NTP) and run \
             this again",
            signed.display(),
            rfc3339(not_before),
            rfc3339(now)
        )));
    }
    if now > not_after {
        return Err(failed(format!(
            "{} expired on {} (this clock says {}); ask the CA for a new certificate",
            signed.display(),
            rfc3339(not_after),
            rfc3339(now)
        )));
    }
    let ca_path = ca
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cfg.uplink.ca.get_ref().clone());
    let chain_verified_by = if ca.is_some() || ca_path.exists() {
        verify_chain(chain, &ca_path)?;
        Some(ca_path)
    } else {
        None
    };
    Ok(((rfc3339(not_before), rfc3339(not_after)), chain_verified_by))
}

/// Verifies `chain[0]` for clientAuth up to a CA certificate in `ca` (intermediates from the rest
/// of `chain`), at the current time.
fn verify_chain(chain: &[CertificateDer<'static>], ca: &Path) -> Result<(), ProvisionError> {
    let roots = read_certs(ca).map_err(|e| failed(format!("--ca / uplink.ca: {e}")))?;
    let anchors = roots
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(format!("{}: unusable CA certificate: {e}", ca.display())))?;
    let ee = webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|e| failed(format!("the certificate does not parse: {e}")))?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain[1..],
        rustls_pki_types::UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| {
        failed(format!(
            "the certificate's chain does not verify against {} for client authentication ({e}). \
             If the hospital's client-certificate CA is not the broker's CA, name it with --ca; \
             the certificate needs extendedKeyUsage clientAuth (or none)",
            ca.display()
        ))
    })
}

/// `2026-01-27T10:00:00Z`.
pub fn rfc3339(d: Duration) -> String {
    spki::der::DateTime::from_unix_duration(Duration::from_secs(d.as_secs()))
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{} s after 1970", d.as_secs()))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory created with
/// `mode` (set explicitly too, whatever the umask), optionally chowned to `owner`, fsynced,
/// renamed over `path`, and the directory fsynced. A crash leaves the old file or the new one,
/// never a partial one; a key is never readable by others, not even for a moment.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file path"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The text `wardgate provision` prints.
pub fn render_provisioned(p: &Provisioned, cfg: &Config, config_path: &Path) -> String {
    let mut s = format!(
        "new P-256 key for gateway {} (site {}, ward {})\n",
        cfg.gateway.id.get_ref(),
        cfg.gateway.site.get_ref(),
        cfg.gateway.ward.get_ref()
    );
    s += &format!("key:      {} (mode 0600)\n", p.key.display());
    if let Some(old) = &p.old_key {
        s += &format!("in use:   {} (unchanged: the running gateway, and any restart, keep using it and its certificate until --install-cert installs the certificate for the new key; then it is kept as {})\n", old.display(), old_path(old).display());
    }
    s += &format!(
        "kid:      {} (SHA-256 of the key's SubjectPublicKeyInfo: the COSE kid of every batch this gateway signs)\n",
        p.kid
    );
    s += &format!("CSR:      {} (PKCS#10, PEM)\n", p.csr.display());
    s += &format!("subject:  {}\n", p.subject);
    s += &format!("SAN:      URI:{}\n", p.san);
    s += "\nnext:\n";
    s += &format!(
        "  1. send {} to the hospital CA for a client certificate (extendedKeyUsage clientAuth);\n",
        p.csr.display()
    );
    s += "  2. give upstream the signed certificate (receiver `gateway_certs`) so it accepts this kid;\n";
    s += &format!(
        "  3. install it: wardgate provision --install-cert SIGNED.pem --config {}\n",
        config_path.display()
    );
    if std::fs::metadata(&p.key).is_ok_and(|m| m.uid() == 0) {
        s += &format!(
            "note: {} is owned by root; the systemd unit runs wardgate as user wardgate: \
             `chown wardgate:wardgate {}`\n",
            p.key.display(),
            p.key.display()
        );
    }
    s
}

/// The text `wardgate provision --install-cert` prints.
pub fn render_installed(i: &Installed) -> String {
    let mut s = format!("installed {} (mode 0644)\n", i.cert.display());
    s += &format!("kid:      {}\n", i.kid);
    s += &format!("valid:    {} to {}\n", i.valid.0, i.valid.1);
    match &i.chain_verified_by {
        Some(ca) => s += &format!("chain:    verified against {}\n", ca.display()),
        None => {
            s += "chain:    NOT CHECKED (uplink.ca does not exist yet; pass --ca to check it)\n"
        }
    }
    s += "a running wardgate switches to it at its next certificate check (uplink.cert_check_s) \
          and reconnects; a stopped one uses it when started\n";
    s
}

/// `wardgate provision` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Gateway config file (`[gateway]` id/site/ward, `[uplink]` key/cert/ca).
    #[arg(long, short, default_value = "/etc/wardgate/wardgate.toml")]
    config: PathBuf,
    /// Where to write the CSR (default: uplink.cert with extension `.csr`).
    #[arg(long, conflicts_with = "install_cert")]
    csr: Option<PathBuf>,
    /// Make a new key although one exists: staged as `<key>.new` (the pair in use stays)
    /// until --install-cert installs its certificate; the old key is then kept as
    /// `<key>.old`.
    #[arg(long, conflicts_with = "install_cert")]
    force: bool,
    /// Install this signed certificate (PEM; a chain is installed as given) at uplink.cert.
    #[arg(long, value_name = "SIGNED.pem")]
    install_cert: Option<PathBuf>,
    /// With --install-cert: the CA certificate(s) to verify its chain against (default
    /// uplink.ca).
    #[arg(long, requires = "install_cert")]
    ca: Option<PathBuf>,
}

/// `wardgate provision`: exit 2 for bad config or usage, 1 when the certificate is refused.
pub fn main(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let cfg = crate::config::load_gateway(&args.config, crate::config::Checks::NoFiles)?;
    let usage = |e: ProvisionError| -> anyhow::Error {
        match e {
            ProvisionError::Usage(m) => crate::error::UsageError(m).into(),
            e => e.into(),
        }
    };
    match args.install_cert {
        Some(signed) => {
            let i = install_cert(&cfg, &signed, args.ca.as_deref()).map_err(usage)?;
            print!("{}", render_installed(&i));
        }
        None => {
            let p = provision(&cfg, args.csr.as_deref(), args.force).map_err(usage)?;
            print!("{}", render_provisioned(&p, &cfg, &args.config));
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_reads_utc_and_generalized_times() {
        let (nb, na) = validity(&leaf_der()).unwrap();
        // rcgen's defaults: 1975-01-01 to 4096-01-01 (GeneralizedTime beyond 2049).
        assert_eq!(rfc3339(nb), "1975-01-01T00:00:00Z");
        assert_eq!(rfc3339(na), "4096-01-01T00:00:00Z");
    }

    /// A test leaf as rcgen makes it (X.509 v3).
    fn leaf_der() -> CertificateDer<'static> {
        let ca = wardgate_sim::pki::Ca::new("t").unwrap();
        let (pem, _) = ca.leaf("x", &[], false).unwrap();
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    /// The same leaf re-encoded as an X.509 v1 certificate (no extensions; the signature no
    /// longer matches, which parsing does not look at).
    fn as_v1(der: &CertificateDer<'_>) -> CertificateDer<'static> {
        use x509_cert::der::{Decode, Encode};
        let mut c = x509_cert::Certificate::from_der(der.as_ref()).unwrap();
        c.tbs_certificate.version = x509_cert::certificate::Version::V1;
        c.tbs_certificate.extensions = None;
        CertificateDer::from(c.to_der().unwrap())
    }

    #[test]
    fn a_v3_certificate_passes_the_version_check() {
        assert_eq!(require_v3(&leaf_der()), Ok(()));
    }

    #[test]
    fn a_v1_certificate_is_refused_in_words_an_installer_can_act_on() {
        let v1 = as_v1(&leaf_der());
        let e = require_v3(&v1).unwrap_err();
        assert!(e.contains("X.509 v1 certificate"), "{e}");
        assert!(e.contains("as a v3 certificate"), "{e}");
        // Its validity still reads: the refusal is about the version, not the parse.
        let (nb, na) = validity(&v1).unwrap();
        assert_eq!(rfc3339(nb), "1975-01-01T00:00:00Z");
        assert_eq!(rfc3339(na), "4096-01-01T00:00:00Z");
        // And webpki, which would otherwise be the first to see it, only names the variant.
        let webpki_says = match webpki::EndEntityCert::try_from(&v1) {
            Err(e) => format!("{e:?}"),
            Ok(_) => "accepted".into(),
        };
        assert!(
            webpki_says.contains("UnsupportedCertVersion"),
            "{webpki_says}"
        );
    }

    #[test]
    fn bytes_that_are_not_a_certificate_say_so() {
        for bad in [
            &b"not DER at all"[..],
            &[0x30, 0x03, 0x02, 0x01, 0x01][..],
            &[][..],
        ] {
            let der = CertificateDer::from(bad.to_vec());
            let e = validity(&der).unwrap_err();
            assert!(e.contains("not an X.509 certificate"), "{e}");
            assert!(require_v3(&der).is_err());
        }
        // A truncated real certificate too.
        let leaf = leaf_der();
        let cut = CertificateDer::from(leaf.as_ref()[..leaf.as_ref().len() - 10].to_vec());
        assert!(validity(&cut)
            .unwrap_err()
            .contains("not an X.509 certificate"));
    }

    #[test]
    fn utc_times_before_2050_are_read_too() {
        use x509_cert::der::asn1::UtcTime;
        use x509_cert::der::{Decode, Encode};
        use x509_cert::time::Time;
        let leaf = leaf_der();
        let mut c = x509_cert::Certificate::from_der(leaf.as_ref()).unwrap();
        let t =
            |s: u64| Time::UtcTime(UtcTime::from_unix_duration(Duration::from_secs(s)).unwrap());
        // 2026-01-27T10:00:00Z and 2027-01-27T10:00:00Z.
        c.tbs_certificate.validity.not_before = t(1_769_508_000);
        c.tbs_certificate.validity.not_after = t(1_801_044_000);
        let der = CertificateDer::from(c.to_der().unwrap());
        let (nb, na) = validity(&der).unwrap();
        assert_eq!(rfc3339(nb), "2026-01-27T10:00:00Z");
        assert_eq!(rfc3339(na), "2027-01-27T10:00:00Z");
    }

    #[test]
    fn write_atomic_sets_the_mode_whatever_the_umask_and_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        write_atomic(&p, b"one", 0o600, None).unwrap();
        write_atomic(&p, b"two", 0o644, None).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp left"
        );
    }

    use rustls_pki_types::pem::PemObject;
}
