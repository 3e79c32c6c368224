//! The uplink's certificate and key, replaceable on disk without a restart (issue 4).
//!
//! [`Credentials`] holds the **active pair**: the rustls client config (CA + client certificate +
//! key) and the COSE [`Signer`] made from the same certificate and key, so a batch is always
//! signed with the key of the certificate the broker saw for the session that carries it. One
//! MQTT session uses one pair from its CONNECT to its end.
//!
//! [`Credentials::check`] looks at `uplink.ca`, `uplink.cert` and `uplink.key`: it stats them
//! (device, inode, size, mtime, ctime) and only when a stamp changed reads them and hashes their
//! contents (SHA-256). A change younger than [`SETTLE`] is left for the next check (an installer
//! copying the certificate and then the key is not caught half-way). New contents are loaded
//! exactly as at start (same parsers, same checks) plus the owner-only check of the key:
//!
//! - usable → the **pending pair**; [`Credentials::apply_pending`] makes it active, which the
//!   uplink does before its next connection attempt, never during a session;
//! - unusable (malformed PEM, a key of another certificate, a key readable by others, a missing
//!   file) → refused: the active pair stays in use and the problem is returned **once per
//!   distinct content** (a refused content is remembered by its hash), for the uplink to raise
//!   its alert; contents returning to the active pair's clear it ([`Check::Restored`]).

use crate::signing::Signer;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A change on disk younger than this is not acted on yet.
pub const SETTLE: Duration = Duration::from_millis(1000);

/// One usable certificate + key (+ CA) set.
#[derive(Clone)]
pub struct Pair {
    /// Mutual-TLS client config.
    pub tls: Arc<rustls::ClientConfig>,
    /// Signs batches with the same key.
    pub signer: Arc<Signer>,
}

impl Pair {
    /// The signer's `kid` in lowercase hex.
    pub fn kid(&self) -> String {
        hex::encode(self.signer.kid())
    }
}

/// What a [`Credentials::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Nothing new (or a change still settling, or one already reported).
    Unchanged,
    /// A usable new pair is pending; it carries this kid (hex).
    Pending {
        /// The new pair's kid.
        kid: String,
    },
    /// New contents that cannot be used; the active pair stays. The text names the file and the
    /// problem, in an installer's words.
    Refused {
        /// What is wrong.
        detail: String,
    },
    /// The files hold the active pair again (after a refused or pending replacement).
    Restored,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stamp(p: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(p).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
    })
}

/// The uplink's files and the pairs loaded from them.
pub struct Credentials {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// How often the uplink checks during a session (`None`: only before each connection).
    pub check_every: Option<Duration>,
    active: Pair,
    active_hash: [u8; 32],
    stamps: [Option<Stamp>; 3],
    pending: Option<(Pair, [u8; 32])>,
    refused: Option<[u8; 32]>,
}

impl Credentials {
    /// Loads the pair from `ca`, `cert` and `key` as `wardgate run` does at start. Errors name the
    /// file and the problem.
    pub fn load(
        ca: &Path,
        cert: &Path,
        key: &Path,
        check_every: Option<Duration>,
    ) -> anyhow::Result<Credentials> {
        use anyhow::Context;
        let paths = [ca.to_path_buf(), cert.to_path_buf(), key.to_path_buf()];
        let stamps = paths.each_ref().map(|p| stamp(p));
        let hash = contents_hash(&paths);
        let signer = Arc::new(
            Signer::from_files(cert, key)
                .context("gateway signing key (uplink.cert / uplink.key)")?,
        );
        let tls = crate::tls::client_config(ca, cert, key).context("uplink TLS configuration")?;
        Ok(Credentials {
            ca: paths[0].clone(),
            cert: paths[1].clone(),
            key: paths[2].clone(),
            check_every,
            active: Pair { tls, signer },
            active_hash: hash,
            stamps,
            pending: None,
            refused: None,
        })
    }

    /// The pair in use.
    pub fn active(&self) -> &Pair {
        &self.active
    }

    /// Whether a usable replacement waits for the next connection.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Makes the pending pair active; returns its kid (hex), or `None` when none was pending.
    pub fn apply_pending(&mut self) -> Option<String> {
        let (pair, hash) = self.pending.take()?;
        self.active = pair;
        self.active_hash = hash;
        Some(self.active.kid())
    }

    /// Looks at the files (see the module documentation). Cheap when nothing changed: three
    /// `stat` calls.
    pub fn check(&mut self) -> Check {
        let paths = [self.ca.clone(), self.cert.clone(), self.key.clone()];
        let stamps = paths.each_ref().map(|p| stamp(p));
        if stamps == self.stamps {
            return Check::Unchanged;
        }
        let now = SystemTime::now();
        let settling = paths.iter().any(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age < SETTLE)
        });
        if settling {
            return Check::Unchanged;
        }
        self.stamps = stamps;
        let hash = contents_hash(&paths);
        if hash == self.active_hash {
            let was_off = self.pending.take().is_some() | self.refused.take().is_some();
            return if was_off {
                Check::Restored
            } else {
                Check::Unchanged
            };
        }
        if self.pending.as_ref().is_some_and(|(_, h)| *h == hash) || self.refused == Some(hash) {
            return Check::Unchanged;
        }
        match self.build() {
            Ok(pair) => {
                let kid = pair.kid();
                self.pending = Some((pair, hash));
                self.refused = None;
                Check::Pending { kid }
            }
            Err(detail) => {
                self.pending = None;
                self.refused = Some(hash);
                Check::Refused { detail }
            }
        }
    }

    fn build(&self) -> Result<Pair, String> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&self.key)
            .map_err(|e| format!("{}: cannot read private key: {e}", self.key.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{}: private key is readable by others (mode {:o}); run `chmod 600 {}`",
                self.key.display(),
                mode & 0o777,
                self.key.display()
            ));
        }
        let signer = Signer::from_files(&self.cert, &self.key).map_err(|e| e.to_string())?;
        let tls = crate::tls::client_config(&self.ca, &self.cert, &self.key)
            .map_err(|e| e.to_string())?;
        Ok(Pair {
            tls,
            signer: Arc::new(signer),
        })
    }
}

/// SHA-256 over the three files' modes and contents (or, for a file that cannot be read, the
/// error), so a refused state is recognised when seen again.
fn contents_hash(paths: &[PathBuf; 3]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in paths {
        // The mode too: a key refused for being readable by others is usable after `chmod 600`.
        let mode = std::fs::metadata(p).map(|m| m.mode()).unwrap_or(0);
        ctx.update(&mode.to_be_bytes());
        match std::fs::read(p) {
            Ok(b) => {
                ctx.update(&(b.len() as u64).to_be_bytes());
                ctx.update(&b);
            }
            Err(e) => {
                ctx.update(&u64::MAX.to_be_bytes());
                ctx.update(e.to_string().as_bytes());
            }
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardgate_sim::pki::{write_cert, write_key, Ca};

    fn settle() {
        std::thread::sleep(SETTLE + Duration::from_millis(100));
    }

    /// A CA, a certificate and key signed by it on disk, and credentials loaded from them.
    struct Fixture {
        _dir: tempfile::TempDir,
        ca: Ca,
        cert_p: std::path::PathBuf,
        key_p: std::path::PathBuf,
        c1: String,
        cr: Credentials,
    }

    impl Fixture {
        fn new() -> Fixture {
            let d = tempfile::tempdir().unwrap();
            let ca = Ca::new("t").unwrap();
            let (ca_p, cert_p, key_p) =
                (d.path().join("ca"), d.path().join("c"), d.path().join("k"));
            write_cert(&ca_p, &ca.cert_pem).unwrap();
            let (c1, k1) = ca.leaf("gw", &[], false).unwrap();
            write_cert(&cert_p, &c1).unwrap();
            write_key(&key_p, &k1).unwrap();
            let cr = Credentials::load(&ca_p, &cert_p, &key_p, None).unwrap();
            Fixture {
                _dir: d,
                ca,
                cert_p,
                key_p,
                c1,
                cr,
            }
        }
    }

    #[test]
    fn a_valid_replacement_is_pending_a_bad_one_refused_once_and_the_active_pair_stays() {
        let Fixture {
            _dir,
            ca,
            cert_p,
            key_p,
            c1,
            mut cr,
        } = Fixture::new();
        let kid_a = cr.active().kid();
        assert_eq!(cr.check(), Check::Unchanged);

        // Truncated certificate: refused once, then quiet while the content stays the same.
        write_cert(&cert_p, &c1[..c1.len() / 2]).unwrap();
        settle();
        let Check::Refused { detail } = cr.check() else {
            panic!("truncated certificate not refused")
        };
        assert!(detail.contains(&cert_p.display().to_string()), "{detail}");
        std::fs::write(&cert_p, &c1[..c1.len() / 2]).unwrap(); // touched, same bytes
        settle();
        assert_eq!(cr.check(), Check::Unchanged);
        assert_eq!(cr.active().kid(), kid_a);

        // Back to the active pair: restored.
        write_cert(&cert_p, &c1).unwrap();
        settle();
        assert_eq!(cr.check(), Check::Restored);

        // A key of another certificate: refused, naming both files.
        let (_, k2) = ca.leaf("gw", &[], false).unwrap();
        write_key(&key_p, &k2).unwrap();
        settle();
        match cr.check() {
            Check::Refused { detail } => {
                assert!(detail.contains("does not belong"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        // A group-readable key: refused with the fix.
        let (c3, k3) = ca.leaf("gw", &[], false).unwrap();
        write_cert(&cert_p, &c3).unwrap();
        write_key(&key_p, &k3).unwrap();
        std::fs::set_permissions(&key_p, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        settle();
        match cr.check() {
            Check::Refused { detail } => assert!(detail.contains("chmod 600"), "{detail}"),
            other => panic!("{other:?}"),
        }
        // Fixed: pending, applied only on request.
        std::fs::set_permissions(&key_p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        settle();
        let Check::Pending { kid } = cr.check() else {
            panic!("valid replacement not pending")
        };
        assert_ne!(kid, kid_a);
        assert_eq!(cr.active().kid(), kid_a, "not applied before the reconnect");
        assert_eq!(cr.apply_pending(), Some(kid.clone()));
        assert_eq!(cr.active().kid(), kid);
        assert_eq!(cr.check(), Check::Unchanged);
    }

    #[test]
    fn a_change_still_settling_waits_for_the_next_check() {
        let Fixture {
            _dir,
            ca,
            cert_p,
            key_p,
            c1: _,
            mut cr,
        } = Fixture::new();
        let (c2, k2) = ca.leaf("gw", &[], false).unwrap();
        write_cert(&cert_p, &c2).unwrap();
        // The key is not replaced yet: an installer half-way through.
        assert_eq!(cr.check(), Check::Unchanged);
        write_key(&key_p, &k2).unwrap();
        settle();
        assert!(matches!(cr.check(), Check::Pending { .. }));
    }
}
