//! `raw_dir`: a copy of every *verified* batch message, byte for byte, for independent
//! verification (`wardgate verify`, `tests/python/verify_cose.py`).
//!
//! Written only after the signature verified, so nobody without a trusted key can put bytes on
//! this disk. A failed write (disk full, directory gone) never stops the receiver: the batch is
//! still stored and acknowledged, the failure is counted, and the log says so when the kind of
//! failure changes and when writing works again ([`RawFailures`]).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes raw messages as `<gateway>-<receiver start ms>-<n>.cose`, never overwriting a file
/// from an earlier run (`create_new`), each fsynced.
pub struct RawWriter {
    dir: PathBuf,
    start_ms: i64,
    n: u64,
}

impl RawWriter {
    /// A writer into `dir` (created if missing; failing to create it is only logged: each
    /// write then fails and is counted).
    pub fn new(dir: &Path) -> RawWriter {
        if let Err(e) = std::fs::create_dir_all(dir) {
            log::warn!(
                "raw_dir {}: {e}; raw copies will not be written until it is usable",
                dir.display()
            );
        }
        RawWriter {
            dir: dir.to_path_buf(),
            start_ms: wardgate_adapters::observation::now_ms(),
            n: 0,
        }
    }

    /// Writes one verified message from `gateway` (a verified, topic-safe id) and returns its
    /// path.
    pub fn write(&mut self, gateway: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        self.n += 1;
        for attempt in 0..1000u32 {
            let suffix = if attempt == 0 {
                String::new()
            } else {
                format!("-{attempt}")
            };
            let path = self.dir.join(format!(
                "{gateway}-{}-{:06}{suffix}.cose",
                self.start_ms, self.n
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    let r = f.write_all(bytes).and_then(|()| f.sync_data());
                    if r.is_err() {
                        // A partial copy would fail verification later; leave none.
                        drop(f);
                        let _ = std::fs::remove_file(&path);
                    }
                    return r.map(|()| path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "1000 file names taken",
        ))
    }
}

/// What to log about raw-write outcomes: the first failure of each kind, and the recovery.
#[derive(Debug, Default)]
pub struct RawFailures {
    failing: Option<std::io::ErrorKind>,
}

impl RawFailures {
    /// Records an outcome; returns the line to log, if any.
    pub fn record(&mut self, r: &std::io::Result<PathBuf>, total_failures: u64) -> Option<String> {
        match r {
            Ok(_) => self.failing.take().map(|_| {
                format!("raw_dir writable again ({total_failures} raw copies could not be written)")
            }),
            Err(e) if self.failing != Some(e.kind()) => {
                self.failing = Some(e.kind());
                Some(format!(
                    "raw_dir: cannot write a raw copy: {e}; batches are still stored and acknowledged, failures are counted (raw_failures)"
                ))
            }
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_never_overwrite_and_hold_the_bytes() {
        let d = tempfile::tempdir().unwrap();
        let mut w = RawWriter::new(d.path());
        let a = w.write("gw1", b"one").unwrap();
        let b = w.write("gw1", b"two").unwrap();
        assert_ne!(a, b);
        // Another writer started in the same millisecond takes the next free name.
        let mut w2 = RawWriter::new(d.path());
        w2.start_ms = w.start_ms;
        let c = w2.write("gw1", b"three").unwrap();
        assert!(c.to_string_lossy().ends_with("000001-1.cose"), "{c:?}");
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        assert_eq!(std::fs::read(&c).unwrap(), b"three");
    }

    #[test]
    fn failures_are_logged_once_per_kind_and_recovery_is_logged() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("gone");
        let mut w = RawWriter::new(&dir);
        std::fs::remove_dir(&dir).unwrap();
        let mut f = RawFailures::default();
        let r = w.write("gw1", b"x");
        assert!(r.is_err());
        assert!(f
            .record(&r, 1)
            .unwrap()
            .starts_with("raw_dir: cannot write"));
        assert_eq!(f.record(&w.write("gw1", b"x"), 2), None);
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(
            f.record(&w.write("gw1", b"x"), 2).unwrap(),
            "raw_dir writable again (2 raw copies could not be written)"
        );
        assert_eq!(f.record(&w.write("gw1", b"x"), 2), None);
    }
}
