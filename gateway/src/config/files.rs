//! Checks that look at the filesystem, on a config whose relative paths are resolved: the
//! certificate and key files (present, readable, a certificate where one is expected, key
//! owner-only), the store's path, serial ports that do not exist, serial devices that lead to
//! the same port, plug-in programs (present, executable, not writable by every user) and their
//! working directories.
//!
//! A file that does not exist (yet) is a warning: configs are often checked before the
//! certificates are provisioned, and `wardgate run` fails later naming the file.

use super::positions::KeyPath;
use super::schema::{Config, ReceiverConfig};
use super::validate::Problem;
use std::collections::HashMap;
use std::path::Path;

/// The filesystem problems of a gateway config (paths already resolved).
pub fn gateway(c: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let up = KeyPath::of("uplink");
    tls_files(
        &mut out,
        &up,
        [&c.uplink.ca, &c.uplink.cert, &c.uplink.key].map(|p| p.get_ref().as_path()),
    );
    trust_files(
        &mut out,
        &up,
        ("receiver_certs", &c.uplink.receiver_certs),
        ("receiver_ca", c.uplink.receiver_ca.as_ref()),
        ("receiver_crl", &c.uplink.receiver_crl),
    );
    // Encryption (on by default with receiver_certs): every listed certificate must be a P-256
    // key, at most 8 of them. Missing files are already reported above.
    if c.uplink.encrypt.as_ref().map(|e| *e.get_ref()) != Some(false)
        && !c.uplink.receiver_certs.is_empty()
        && c.uplink.receiver_certs.iter().all(|p| p.get_ref().exists())
    {
        let paths: Vec<_> = c
            .uplink
            .receiver_certs
            .iter()
            .map(|p| p.get_ref())
            .collect();
        if let Err(e) = crate::encryption::Encryptor::from_files(&paths) {
            out.push(Problem::error(
                up.clone().key("receiver_certs"),
                e.to_string(),
            ));
        }
    }
    store(&mut out, &c.store.path);
    if let Some(f) = &c.firmware {
        let fw = KeyPath::of("firmware");
        trust_files(
            &mut out,
            &fw,
            ("signer_certs", &f.signer_certs),
            ("signer_ca", f.signer_ca.as_ref()),
            ("signer_crl", &f.signer_crl),
        );
        cache_dir(&mut out, &fw, f, &c.store);
        // What `run` reads: a zone it cannot load stops the daemon, so it is an error here
        // too (a syntax error is reported by the pure checks already).
        if let Some(tz) = &f.timezone {
            let name = tz.get_ref();
            if crate::config::schema::check_tz(name).is_ok() {
                if let Err(e) = super::zone::Zone::parse(name) {
                    out.push(Problem::error(
                        fw.key("timezone"),
                        format!("{e} (install tzdata, or check the spelling)"),
                    ));
                }
            }
        }
    }
    for (i, e) in c.exec.iter().enumerate() {
        plugin(&mut out, KeyPath::of("exec").index(i), e);
    }
    // Compare where the paths lead (by-id symlink vs /dev/ttyUSB0 is the realistic mix-up).
    let mut ports = HashMap::new();
    for (i, s) in c.serial.iter().enumerate() {
        if s.path.as_os_str().is_empty() {
            continue; // reported by validate
        }
        let at = || KeyPath::of("serial").index(i).key("path");
        serial_port(&mut out, at(), &s.name, &s.path);
        let real = std::fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone());
        if let Some(other) = ports.insert(real, &s.name) {
            out.push(Problem::error(
                at(),
                format!(
                    "serial `{}` uses the same port {} as `{other}`",
                    s.name,
                    s.path.display()
                ),
            ));
        }
    }
    out
}

/// The filesystem problems of a receiver config (paths already resolved).
pub fn receiver(c: &ReceiverConfig) -> Vec<Problem> {
    let mut out = Vec::new();
    let mqtt = KeyPath::of("mqtt");
    tls_files(
        &mut out,
        &mqtt,
        [&c.mqtt.ca, &c.mqtt.cert, &c.mqtt.key].map(|p| p.get_ref().as_path()),
    );
    trust_files(
        &mut out,
        &KeyPath::of("receiver"),
        ("gateway_certs", &c.receiver.gateway_certs),
        ("gateway_ca", c.receiver.gateway_ca.as_ref()),
        ("gateway_crl", &c.receiver.gateway_crl),
    );
    out
}

/// A serial port that is not there is a warning, not an error: the device may simply be
/// unplugged while the config is checked (the adapter waits for it and reopens the path), but a
/// typo in a `/dev/serial/by-id/…` name looks exactly the same, and would leave a bed without
/// readings with nothing but `disconnected` in the log. A dangling symlink counts as missing.
fn serial_port(out: &mut Vec<Problem>, at: KeyPath, name: &str, path: &Path) {
    match std::fs::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push(Problem::warning(
            at,
            format!(
                "serial `{name}`: port {} does not exist (yet)",
                path.display()
            ),
        )),
        Err(e) => out.push(Problem::warning(
            at,
            format!("serial `{name}`: cannot see port {}: {e}", path.display()),
        )),
    }
}

/// A plug-in's executable and working directory. Not installed yet is a warning (the daemon
/// starts, reports it and retries, while the other devices run); a program that every user
/// may rewrite is an error: anyone could run code as the gateway.
fn plugin(out: &mut Vec<Problem>, at: KeyPath, e: &wardgate_adapters::exec::ExecConfig) {
    use std::os::unix::fs::PermissionsExt;
    let name = &e.name;
    let cmd = &e.command;
    match std::fs::metadata(cmd) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => out.push(Problem::warning(
            at.clone().key("command"),
            format!("plug-in `{name}`: {} does not exist (yet)", cmd.display()),
        )),
        Err(err) => out.push(Problem::warning(
            at.clone().key("command"),
            format!("plug-in `{name}`: cannot see {}: {err}", cmd.display()),
        )),
        Ok(m) if !m.is_file() => out.push(Problem::error(
            at.clone().key("command"),
            format!("plug-in `{name}`: {} is not a file", cmd.display()),
        )),
        Ok(m) => {
            let mode = m.permissions().mode();
            if mode & 0o111 == 0 {
                out.push(Problem::warning(
                    at.clone().key("command"),
                    format!(
                        "plug-in `{name}`: {} is not executable (chmod 755 it)",
                        cmd.display()
                    ),
                ));
            }
            if mode & 0o002 != 0 {
                out.push(Problem::error(
                    at.clone().key("command"),
                    format!(
                        "plug-in `{name}`: every user may write {}: anyone could run code as the gateway (chmod o-w)",
                        cmd.display()
                    ),
                ));
            }
        }
    }
    if let Some(dir) = &e.working_dir {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            out.push(Problem::warning(
                at.key("working_dir"),
                format!(
                    "plug-in `{name}`: working directory {} does not exist (yet)",
                    dir.display()
                ),
            ));
        }
    }
}

/// The MQTT/TLS files of `table` (`[uplink]` or `[mqtt]`): `ca`, `cert`, `key`, and that the
/// key belongs to the certificate.
fn tls_files(out: &mut Vec<Problem>, table: &KeyPath, [ca, cert, key]: [&Path; 3]) {
    certificate(out, table.clone().key("ca"), ca);
    certificate(out, table.clone().key("cert"), cert);
    private_key(out, table.clone().key("key"), key);
    pair(out, table.clone().key("key"), cert, key);
}

type Spanned = toml::Spanned<std::path::PathBuf>;

/// The trust files of `table`: listed certificates, a CA, revocation lists (each with its key
/// name).
fn trust_files(
    out: &mut Vec<Problem>,
    table: &KeyPath,
    (certs_key, certs): (&str, &[Spanned]),
    (ca_key, ca): (&str, Option<&Spanned>),
    (crl_key, crls): (&str, &[Spanned]),
) {
    for (i, p) in certs.iter().enumerate() {
        certificate(out, table.clone().key(certs_key).index(i), p.get_ref());
    }
    if let Some(p) = ca {
        let before = out.len();
        certificate(out, table.clone().key(ca_key), p.get_ref());
        if out.len() == before {
            ca_certificates(out, table.clone().key(ca_key), p.get_ref(), certs_key);
        }
    }
    for (i, p) in crls.iter().enumerate() {
        exists(out, table.clone().key(crl_key).index(i), p.get_ref());
    }
}

/// A trust anchor file (`signer_ca`, `receiver_ca`): a certificate in it that is neither a CA
/// (basicConstraints cA, RFC 5280 §4.2.1.9) nor self-signed can anchor nothing — whatever it
/// would be trusted for is signed by its issuer, not by it — so every message would be refused
/// later with an unknown issuer. The usual mix-up: the signer's own certificate given as the CA.
fn ca_certificates(out: &mut Vec<Problem>, at: KeyPath, path: &Path, certs_key: &str) {
    use x509_cert::ext::pkix::BasicConstraints;
    let Ok(certs) = crate::signing::read_certs(path) else {
        return; // reported by `certificate`
    };
    for c in &certs {
        let Ok(x) = crate::signing::parse_x509(c) else {
            continue;
        };
        let tbs = &x.tbs_certificate;
        let is_ca = matches!(tbs.get::<BasicConstraints>(), Ok(Some((_, bc))) if bc.ca);
        if !is_ca && tbs.issuer != tbs.subject {
            out.push(Problem::error(
                at.clone(),
                format!(
                    "{} holds a certificate that is not a CA ({}, issued by {}, has no \
                     basicConstraints cA=TRUE): give the CA's certificate here, or list this \
                     one in {certs_key} to trust it alone",
                    path.display(),
                    tbs.subject,
                    tbs.issuer
                ),
            ));
        }
    }
}

/// A file that must exist and be readable (a revocation list): a warning when missing, an error
/// when unreadable.
fn exists(out: &mut Vec<Problem>, at: KeyPath, path: &Path) {
    // A FIFO would block the open; only a regular file is a revocation list.
    match crate::signing::regular_file(path).and_then(|_| std::fs::File::open(path)) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push(Problem::warning(
            at,
            format!("{} does not exist (yet)", path.display()),
        )),
        Err(e) => out.push(Problem::error(
            at,
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

/// The labels of the PEM blocks in `text` (`CERTIFICATE`, `PRIVATE KEY`, …), in order.
pub fn pem_labels(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .collect()
}

/// A PEM file that should hold certificates: present (else a warning), readable, and not a
/// private key given by mistake.
fn certificate(out: &mut Vec<Problem>, at: KeyPath, path: &Path) {
    match crate::signing::read_regular_file(path, crate::signing::MAX_FILE_BYTES) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push(Problem::warning(
            at,
            format!("{} does not exist (yet)", path.display()),
        )),
        Err(e) => out.push(Problem::error(
            at,
            format!("cannot read {}: {e}", path.display()),
        )),
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let labels = pem_labels(&text);
            if !labels.contains(&"CERTIFICATE") {
                if let Some(key) = labels.iter().find(|l| l.ends_with("PRIVATE KEY")) {
                    out.push(Problem::error(
                        at,
                        format!(
                            "{} holds a private key (PEM `{key}`), not a certificate",
                            path.display()
                        ),
                    ));
                    return;
                }
            }
            // What `run` will do with it: every certificate must parse, as X.509 v3.
            let problem = crate::signing::read_certs(path)
                .map_err(|e| e.to_string())
                .and_then(|certs| {
                    certs.iter().try_for_each(|c| {
                        crate::signing::require_v3(c)
                            .map_err(|e| format!("{}: {e}", path.display()))
                    })
                });
            if let Err(e) = problem {
                out.push(Problem::error(at, e));
            }
        }
    }
}

fn private_key(out: &mut Vec<Problem>, at: KeyPath, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push(Problem::warning(
            at,
            format!("private key {} does not exist (yet)", path.display()),
        )),
        Err(e) => out.push(Problem::error(
            at,
            format!("cannot read private key {}: {e}", path.display()),
        )),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => out.push(Problem::error(
            at,
            format!(
                "private key {} is readable by others (mode {:o}); run `chmod 600 {}`",
                path.display(),
                m.permissions().mode() & 0o777,
                path.display()
            ),
        )),
        Ok(m) => {
            if let Err(e) = crate::signing::read_key(path) {
                out.push(Problem::error(at, e.to_string()));
            } else if let Some(w) = service_user_cannot_read(&m, path) {
                out.push(Problem::warning(at, w));
            }
        }
    }
}

/// The service user of the packaged unit (`User=wardgate`).
const SERVICE_USER: &str = "wardgate";

/// When the service user exists and the (owner-only) key belongs to someone else: the daemon,
/// which runs as that user, could not read it (`wardgate provision` run with sudo makes keys
/// owned by root).
fn service_user_cannot_read(m: &std::fs::Metadata, path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let user = nix::unistd::User::from_name(SERVICE_USER).ok().flatten()?;
    if m.uid() == user.uid.as_raw() || nix::unistd::getuid() == user.uid {
        return None;
    }
    Some(format!(
        "private key {} belongs to uid {}, not to the service user {SERVICE_USER}: the daemon \
         (User={SERVICE_USER}) cannot read it; run `chown {SERVICE_USER}: {}`",
        path.display(),
        m.uid(),
        path.display()
    ))
}

/// The certificate and key `run` will pair: when both are readable, the key must belong to the
/// certificate (an error at the key otherwise).
fn pair(out: &mut Vec<Problem>, at: KeyPath, cert: &Path, key: &Path) {
    let (Ok(certs), Ok(k)) = (
        crate::signing::read_certs(cert),
        crate::signing::read_key(key),
    ) else {
        return; // missing or unreadable: reported at the file itself
    };
    if crate::signing::require_v3(&certs[0]).is_err() {
        return; // reported at the certificate
    }
    if let Err(e) = crate::signing::Signer::new(&certs[0], &k) {
        out.push(Problem::error(
            at,
            format!("{} / {}: {e}", cert.display(), key.display()),
        ));
    }
}

/// `[firmware] cache_dir` (default `firmware/` beside the store): where the relay downloads
/// images. Something there that is not a directory (a regular file, a broken link) would only
/// fail at the first job's download; it is an error now. A directory that does not exist yet
/// is created by the relay.
fn cache_dir(
    out: &mut Vec<Problem>,
    fw: &KeyPath,
    f: &crate::config::schema::FirmwareSection,
    store: &crate::config::schema::StoreSection,
) {
    let dir = f.cache_dir(store);
    // Absent from the file: the problem is the default beside the store; point at [firmware].
    let at = if f.cache_dir.is_some() {
        fw.clone().key("cache_dir")
    } else {
        fw.clone()
    };
    let named = if f.cache_dir.is_some() {
        format!("cache_dir {}", dir.display())
    } else {
        format!(
            "the image cache {} (the default, beside the store; set cache_dir)",
            dir.display()
        )
    };
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(m) if m.file_type().is_symlink() => {
            if !dir.is_dir() {
                out.push(Problem::error(
                    at,
                    format!("{named} is a link to no directory; the relay keeps downloaded images in a directory"),
                ));
            }
        }
        Ok(_) => out.push(Problem::error(
            at,
            format!("{named} is a file, not a directory; the relay keeps downloaded images in a directory: remove the file or name another path"),
        )),
        Err(_) => {
            // Does not exist yet: created at the first download, below an existing directory.
            if let Some(p) = dir.ancestors().skip(1).find(|p| p.exists()) {
                if !p.is_dir() {
                    out.push(Problem::error(
                        at,
                        format!("{named} cannot be created: {} is a file", p.display()),
                    ));
                }
            }
        }
    }
}

fn store(out: &mut Vec<Problem>, path: &Path) {
    let at = KeyPath::of("store").key("path");
    if path.as_os_str().is_empty() {
        // reported by validate
    } else if path.is_dir() {
        out.push(Problem::error(
            at,
            format!(
                "store path {} is a directory; give a file name, e.g. {}/store.db",
                path.display(),
                path.display()
            ),
        ));
    } else if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
    {
        out.push(Problem::warning(
            at,
            format!("the store's directory {} does not exist (yet); under systemd StateDirectory=wardgate creates /var/lib/wardgate", dir.display()),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::diagnostic::Severity;

    #[test]
    fn a_serial_port_that_does_not_exist_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let there = dir.path().join("tty");
        std::fs::write(&there, "").unwrap();
        let dangling = dir.path().join("by-id-link");
        std::os::unix::fs::symlink(dir.path().join("gone"), &dangling).unwrap();
        let mut out = Vec::new();
        serial_port(&mut out, KeyPath::of("p"), "bed1", &there);
        assert!(out.is_empty(), "{out:?}");
        serial_port(&mut out, KeyPath::of("p"), "bed1", &dangling);
        serial_port(
            &mut out,
            KeyPath::of("p"),
            "bed1",
            &dir.path().join("absent"),
        );
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|p| p.severity == Severity::Warning));
        assert_eq!(
            out[0].message,
            format!(
                "serial `bed1`: port {} does not exist (yet)",
                dangling.display()
            )
        );
    }

    #[test]
    fn pem_labels_are_read_from_begin_lines() {
        let t = "junk\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n -----BEGIN CERTIFICATE-----\n";
        assert_eq!(pem_labels(t), ["PRIVATE KEY", "CERTIFICATE"]);
    }

    #[test]
    fn a_private_key_given_as_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let mut out = Vec::new();
        certificate(&mut out, KeyPath::of("ca"), &key);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].severity, Severity::Error);
        assert!(out[0]
            .message
            .ends_with("holds a private key (PEM `PRIVATE KEY`), not a certificate"));

        let cert = dir.path().join("c.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let mut out = Vec::new();
        certificate(&mut out, KeyPath::of("ca"), &cert);
        certificate(&mut out, KeyPath::of("ca"), &dir.path().join("absent.pem"));
        // A CERTIFICATE block that is no certificate is what `run` would refuse: an error; a
        // file not there yet is a warning.
        let got: Vec<Severity> = out.iter().map(|p| p.severity).collect();
        assert_eq!(got, [Severity::Error, Severity::Warning], "{:?}", out);
        assert!(
            out[0].message.contains("not an X.509 certificate"),
            "{}",
            out[0].message
        );
    }

    #[test]
    fn a_trust_anchor_file_must_hold_a_ca_and_special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let ca = wardgate_sim::pki::Ca::new("firmware CA").unwrap();
        let (leaf, _) = ca.leaf("signer-1", &[], false).unwrap();
        let write = |name: &str, pem: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).unwrap();
            Spanned::new(0..0, p)
        };
        let (ca_pem, leaf_pem) = (write("ca.pem", &ca.cert_pem), write("leaf.pem", &leaf));
        let check = |ca: &Spanned| {
            let mut out = Vec::new();
            trust_files(
                &mut out,
                &KeyPath::of("firmware"),
                ("signer_certs", &[]),
                ("signer_ca", Some(ca)),
                ("signer_crl", &[]),
            );
            out
        };
        assert!(check(&ca_pem).is_empty(), "{:?}", check(&ca_pem));
        // The signer's own certificate given as the CA: nothing would ever verify.
        let out = check(&leaf_pem);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].severity, Severity::Error);
        assert!(
            out[0].message.contains("is not a CA")
                && out[0].message.contains("CN=signer-1")
                && out[0].message.contains("signer_certs"),
            "{}",
            out[0].message
        );
        // A FIFO (and a device such as /dev/zero) is refused at once, never opened and read.
        let fifo = dir.path().join("fifo.pem");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        for p in [fifo.as_path(), Path::new("/dev/zero")] {
            let out = check(&Spanned::new(0..0, p.to_path_buf()));
            assert_eq!(out.len(), 1, "{out:?}");
            assert!(
                out[0].message.contains("not a regular file"),
                "{}",
                out[0].message
            );
            let mut crl = Vec::new();
            exists(&mut crl, KeyPath::of("signer_crl"), p);
            assert!(crl[0].message.contains("not a regular file"), "{crl:?}");
        }
    }

    #[test]
    fn keys_must_parse_and_belong_to_their_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pair = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            let cert = p.self_signed(&key).unwrap();
            let (c, k) = (
                dir.path().join(format!("{name}.pem")),
                dir.path().join(format!("{name}.key")),
            );
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            (c, k)
        };
        let (c1, k1) = pair("a");
        let (_, k2) = pair("b");
        let mut out = Vec::new();
        super::pair(&mut out, KeyPath::of("key"), &c1, &k1);
        assert!(out.is_empty(), "{out:?}");
        super::pair(&mut out, KeyPath::of("key"), &c1, &k2);
        assert_eq!(out.len(), 1);
        assert!(
            out[0].message.contains("does not belong"),
            "{}",
            out[0].message
        );
        // A key file that holds no key.
        let junk = dir.path().join("junk.key");
        std::fs::write(&junk, "junk").unwrap();
        std::fs::set_permissions(&junk, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let mut out = Vec::new();
        private_key(&mut out, KeyPath::of("key"), &junk);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].severity, Severity::Error);
    }
}
