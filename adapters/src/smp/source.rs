//! Where an upload's bytes come from: [`ImageSource`], read in chunks at the offset the device
//! asks for, so an image is never held whole in memory (issue 10: gateway RSS grows by at most
//! 2 MB during a 1 MB upload).
//!
//! - [`FileImage`]: a file held **open** for the whole upload (the relay's cached, verified image;
//!   the bench CLI's file). Chunks are read with `pread` (no shared seek position). The file is
//!   checked against what was verified at every read: its size and modification time (`fstat`
//!   on the open descriptor) must not change, or the read fails with
//!   [`SourceError::Changed`]. A cache eviction that unlinks or replaces the path does not
//!   matter: the open descriptor keeps the verified inode. After the upload the device's slot
//!   hash is compared with the verified MCUboot hash anyway (the client's `upload_verified`).
//! - `[u8]` and `Vec<u8>`: an image in memory (unit tests, small tools).
//!
//! The whole-file SHA-256 (the upload's `sha`, its session id, PROTOCOLS §A.2) is not computed
//! here from the bytes sent: a [`FileImage`] is given it by the caller, who hashed the file in a
//! streaming pass while verifying it (`wardgate`'s `firmware::image::parse_reader`, or the
//! download's streamed hash) — the hash of the same open file.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// Why a chunk of the image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read.
    #[error("cannot read the image at byte offset {off}: {source}")]
    Io {
        /// Offset of the chunk.
        off: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not what was verified any more (size or modification time changed).
    #[error("the image file changed during the upload (at byte offset {off}: {what}); it is no longer the verified image")]
    Changed {
        /// Offset of the chunk being read.
        off: u64,
        /// What changed.
        what: String,
    },
    /// A chunk past the image's end was asked for.
    #[error("byte offset {off} + {n} is past the image's end ({len} bytes)")]
    Range {
        /// Offset.
        off: u64,
        /// Bytes asked for.
        n: usize,
        /// Image length.
        len: u64,
    },
}

impl SourceError {
    /// A machine-readable reason: `image_changed` or `image_unreadable`.
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::Changed { .. } => "image_changed",
            SourceError::Io { .. } | SourceError::Range { .. } => "image_unreadable",
        }
    }
}

/// An image to upload, read in pieces. `Sync`: the upload future holds a reference across
/// awaits.
pub trait ImageSource: Sync {
    /// Its length in bytes (the upload's `len`).
    fn len(&self) -> u64;
    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// SHA-256 of the whole image (the upload's `sha`).
    fn sha256(&self) -> [u8; 32];
    /// Fills `buf` with the bytes at `off`. A local file read of at most one chunk (≤ the
    /// device's SMP buffer, a few hundred bytes to a few KiB) from the page cache: done in place,
    /// not on a blocking thread.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), SourceError>;
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

impl ImageSource for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn sha256(&self) -> [u8; 32] {
        sha256(self)
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let range = || SourceError::Range {
            off,
            n: buf.len(),
            len: <[u8]>::len(self) as u64,
        };
        let start = usize::try_from(off).map_err(|_| range())?;
        let end = start.checked_add(buf.len()).ok_or_else(range)?;
        let src = self.get(start..end).ok_or_else(range)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ImageSource for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn sha256(&self) -> [u8; 32] {
        sha256(self)
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.as_slice().read_at(off, buf)
    }
}

/// Why [`FileImage::open_verified`] gives no image.
#[derive(Debug)]
pub enum Verified<E> {
    /// The file could not be opened or read.
    Io(std::io::Error),
    /// The file changed while it was being checked.
    Changed(String),
    /// The check refused it.
    Refused(E),
}

/// An image file held open for an upload (see the module documentation).
#[derive(Debug)]
pub struct FileImage {
    file: File,
    len: u64,
    mtime: (i64, i64),
    sha256: [u8; 32],
}

impl FileImage {
    /// Wraps the open `file` whose SHA-256 the caller computed from this same descriptor
    /// (`sha256`). Its size and modification time now are what every later read checks.
    pub fn new(file: File, sha256: [u8; 32]) -> std::io::Result<FileImage> {
        let m = file.metadata()?;
        if !m.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        Ok(FileImage {
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            file,
            sha256,
        })
    }

    /// Opens `path` and runs `check` on the open file (parse it, compare it with a job, ...),
    /// which returns the file's SHA-256 it computed while reading. The image then uploaded is
    /// exactly what was checked: the same descriptor, with the size and modification time it had
    /// before the check (a change during the check is [`Verified::Changed`]).
    pub fn open_verified<E>(
        path: &Path,
        check: impl FnOnce(&mut &File) -> Result<[u8; 32], E>,
    ) -> Result<FileImage, Verified<E>> {
        let file = File::open(path).map_err(Verified::Io)?;
        let before = file.metadata().map_err(Verified::Io)?;
        let sha = check(&mut &file).map_err(Verified::Refused)?;
        let image = FileImage::new(file, sha).map_err(Verified::Io)?;
        if image.len != before.len() || image.mtime != (before.mtime(), before.mtime_nsec()) {
            return Err(Verified::Changed(format!(
                "{} changed while it was being checked",
                path.display()
            )));
        }
        Ok(image)
    }

    /// Opens `path` and hashes it in 64 KiB pieces (for callers that have not hashed it yet).
    pub fn open_hashed(path: &Path) -> std::io::Result<FileImage> {
        let file = File::open(path)?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 << 10];
        let mut off = 0u64;
        loop {
            let n = file.read_at(&mut buf, off)?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
            off += n as u64;
        }
        let mut sha = [0u8; 32];
        sha.copy_from_slice(ctx.finish().as_ref());
        FileImage::new(file, sha)
    }

    /// The open file (e.g. to parse it before the upload).
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl ImageSource for FileImage {
    fn len(&self) -> u64 {
        self.len
    }
    fn sha256(&self) -> [u8; 32] {
        self.sha256
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let io = |source| SourceError::Io { off, source };
        let m = self.file.metadata().map_err(io)?;
        if m.len() != self.len {
            return Err(SourceError::Changed {
                off,
                what: format!("{} bytes, verified {}", m.len(), self.len),
            });
        }
        if (m.mtime(), m.mtime_nsec()) != self.mtime {
            return Err(SourceError::Changed {
                off,
                what: "modified since it was verified".into(),
            });
        }
        if off
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.len)
        {
            return Err(SourceError::Range {
                off,
                n: buf.len(),
                len: self.len,
            });
        }
        self.file.read_exact_at(buf, off).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_reads_at_offsets_and_refuses_to_change_under_the_upload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.bin");
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let img = FileImage::open_hashed(&path).unwrap();
        assert_eq!(img.len(), 5000);
        assert_eq!(img.sha256(), data.sha256());
        let mut buf = [0u8; 100];
        img.read_at(4900, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[4900..]);
        assert!(matches!(
            img.read_at(4901, &mut buf),
            Err(SourceError::Range { .. })
        ));
        // Replaced under its path (a cache eviction, a new download): the open file is still
        // the verified one.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"other").unwrap();
        img.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[..100]);
        // Rewritten in place: refused.
        let path2 = dir.path().join("img2.bin");
        std::fs::write(&path2, &data).unwrap();
        let img = FileImage::open_hashed(&path2).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path2)
            .unwrap();
        f.write_all(b"x").unwrap();
        let e = img.read_at(0, &mut buf).unwrap_err();
        assert_eq!(e.reason(), "image_changed", "{e}");
    }

    #[test]
    fn memory_images_read_in_range_only() {
        let v: Vec<u8> = vec![1, 2, 3];
        let mut b = [0u8; 2];
        v.read_at(1, &mut b).unwrap();
        assert_eq!(b, [2, 3]);
        assert_eq!(
            v.read_at(2, &mut b).unwrap_err().reason(),
            "image_unreadable"
        );
        assert_eq!(
            v.read_at(u64::MAX, &mut b).unwrap_err().reason(),
            "image_unreadable"
        );
    }
}
