//! Firmware image download (issue 10 item 4): HTTPS with the gateway's mutual-TLS identity, HTTP
//! Range requests to resume, into a bounded cache directory, verified by size and SHA-256 before
//! anything else may read it.
//!
//! [`fetch`] is the whole API. For one image (the job's `image.uri` list, `size` and `sha256`,
//! FIRMWARE.md §5) it returns the path of a **complete, verified** file `<sha256 hex>.img` in the
//! cache directory. While downloading, the bytes go to `<sha256 hex>.img.part`; only when its size
//! and SHA-256 equal the job's is it renamed (and the directory synced). So a file named `.img`
//! in the cache has always been verified; a `.part` never is.
//!
//! - **Resume**: a `.part` left by a cut connection, a timeout, a cancelled task or a restart is
//!   kept; the next call hashes what it holds and asks for the rest with `Range: bytes=N-`. A
//!   `206` must carry a `Content-Range` for exactly those bytes of an image of the job's size; a
//!   `200` (the server ignored the range) starts again from 0; a `416` discards the `.part`.
//! - **Bounds**: the image is never held in memory (64 KiB buffers, [`CHUNK`]); a server that
//!   announces or sends more than the job's size is stopped and the `.part` deleted; at most
//!   [`Settings::max_redirects`] redirects, `https://` only; every connect and every read has a
//!   timeout.
//! - **Cache**: at most [`Settings::cache_max_bytes`] of images (`.img` and `.img.part`). An image
//!   larger than that is refused; to make room the least recently used complete images are
//!   deleted first (a hit refreshes the file's mtime), then `.part` files untouched for
//!   [`STALE_PART`]. Other files in the directory are neither counted nor touched.
//! - **Errors**: every failure is a [`DownloadError`] whose [`DownloadError::reason`] is a stable
//!   snake_case string for the `failed` progress message upstream, and whose text is the sentence
//!   for the log.
//!
//! TLS is the uplink's: the same rustls `ClientConfig` (ring provider, the CA from the config,
//! the gateway's client certificate and key; [`crate::tls::client_config`]), so the image server
//! sees the same identity as the broker. HTTP/1.1 is hyper's client connection over our own
//! tokio-rustls stream (see ARCHITECTURE.md "Decisions: firmware download over hyper").
//!
//! Calls for the same image must not run concurrently (the relay downloads an image once, for
//! all its target devices); calls for different images may.
//!
//! ```ignore
//! let settings = Settings::from_files(&up.ca, &up.cert, &up.key, state_dir.join("firmware"), 64 << 20)?;
//! let image = Image { uris: job.image.uri.clone(), size: job.image.size, sha256: job.image.sha256 };
//! match fetch(&settings, &image, &mut |p| report_downloading(p.bytes, p.total)).await {
//!     Ok(path) => { /* MCUboot checks on `path`, then relay */ }
//!     Err(e) if e.is_transient() => { /* retry with backoff: a .part resumes */ }
//!     Err(e) => report_failed("download", e.reason()),
//! }
//! ```

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Size of the file buffers and of the reads that hash a partial file, in bytes.
pub const CHUNK: usize = 64 * 1024;

/// A `.part` file whose mtime is older than this may be evicted to make room (an active download
/// writes to its `.part` at least every read timeout).
pub const STALE_PART: Duration = Duration::from_secs(3600);

/// At most this many bytes of an error response's body are read (for the message).
const ERROR_BODY_MAX: usize = 1024;

/// How [`fetch`] connects and where it keeps images.
#[derive(Clone)]
pub struct Settings {
    /// The mutual-TLS client config (CA, client certificate and key): the uplink's,
    /// [`crate::tls::client_config`].
    pub tls: Arc<rustls::ClientConfig>,
    /// How errors name the gateway's client certificate (its path and subject).
    pub client_cert: String,
    /// The cache directory (created when missing, mode 0700), e.g. `/var/lib/wardgate/firmware`.
    pub cache_dir: PathBuf,
    /// The most bytes the cache may hold (complete and partial images together).
    pub cache_max_bytes: u64,
    /// TCP connect plus TLS handshake, per attempt.
    pub connect_timeout: Duration,
    /// The longest wait for the response head and for each piece of the body.
    pub read_timeout: Duration,
    /// Redirects followed per URI (each to `https://` only).
    pub max_redirects: u32,
}

impl Settings {
    /// Default connect timeout (TCP + TLS handshake).
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
    /// Default read timeout (response head, and between pieces of the body).
    pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default redirect bound.
    pub const MAX_REDIRECTS: u32 = 5;

    /// Settings with the default timeouts and redirect bound, from an existing client config.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        client_cert: impl Into<String>,
        cache_dir: impl Into<PathBuf>,
        cache_max_bytes: u64,
    ) -> Settings {
        Settings {
            tls,
            client_cert: client_cert.into(),
            cache_dir: cache_dir.into(),
            cache_max_bytes,
            connect_timeout: Self::CONNECT_TIMEOUT,
            read_timeout: Self::READ_TIMEOUT,
            max_redirects: Self::MAX_REDIRECTS,
        }
    }

    /// [`Settings::new`] with the client config built from the CA, certificate and key files,
    /// as the uplink builds its own (`uplink.ca`, `uplink.cert`, `uplink.key`).
    pub fn from_files(
        ca: &Path,
        cert: &Path,
        key: &Path,
        cache_dir: impl Into<PathBuf>,
        cache_max_bytes: u64,
    ) -> Result<Settings, crate::signing::SigningError> {
        let tls = crate::tls::client_config(ca, cert, key)?;
        let subject = crate::signing::read_certs(cert)?
            .first()
            .and_then(|c| crate::signing::parse_x509(c).ok())
            .map(|x| x.tbs_certificate.subject.to_string())
            .unwrap_or_default();
        let label = if subject.is_empty() {
            cert.display().to_string()
        } else {
            format!("{} ({subject})", cert.display())
        };
        Ok(Settings::new(tls, label, cache_dir, cache_max_bytes))
    }
}

/// The image a job names (FIRMWARE.md §5 `image`): where to get it and what it must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// `https://` URIs, tried in order until one gives the image.
    pub uris: Vec<String>,
    /// The exact size in bytes.
    pub size: u64,
    /// SHA-256 of the whole file (the SMP upload `sha`).
    pub sha256: [u8; 32],
}

impl Image {
    /// The cache file name of the complete image: `<sha256 hex>.img`.
    pub fn file_name(&self) -> String {
        format!("{}.img", hex::encode(self.sha256))
    }
}

/// How far a download is, given to the progress callback: after the resume point is known, after
/// every write (at most [`CHUNK`] bytes apart) and at the end. The caller throttles what it sends
/// upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the image in the cache so far (a resumed download starts above 0).
    pub bytes: u64,
    /// The image's size (the job's `size`).
    pub total: u64,
}

/// Why a download failed. [`DownloadError::reason`] is the machine-readable reason for the
/// `failed` progress message; the `Display` text is the sentence for the log.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The job names no URI.
    #[error("the job names no image URI")]
    NoUri,
    /// A URI (or a redirect's Location) that does not parse or has no host.
    #[error("image URI {uri:?} is not usable: {why}")]
    BadUri {
        /// The URI.
        uri: String,
        /// What is wrong.
        why: String,
    },
    /// A URI or redirect that is not `https://`.
    #[error("refusing {uri}: firmware images are downloaded over https:// only")]
    NotHttps {
        /// The URI.
        uri: String,
    },
    /// The image is larger than the whole cache.
    #[error("the image ({size} bytes) is larger than the firmware cache may hold ({max} bytes, cache_max_bytes)")]
    LargerThanCache {
        /// The job's size.
        size: u64,
        /// `cache_max_bytes`.
        max: u64,
    },
    /// No room even after evicting every complete image and stale partial one.
    #[error("the firmware cache {dir} cannot make room for {need} bytes: {busy} bytes are held by downloads in progress (limit {max} bytes, cache_max_bytes)")]
    CacheFull {
        /// The cache directory.
        dir: String,
        /// The bytes wanted.
        need: u64,
        /// Bytes of partial images that may not be evicted.
        busy: u64,
        /// `cache_max_bytes`.
        max: u64,
    },
    /// The cache directory or a file in it could not be read or written.
    #[error("firmware cache {path}: {source}")]
    Cache {
        /// The file or directory.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TCP connection failed.
    #[error("cannot connect to the image server {host}: {source}")]
    Connect {
        /// `host:port`.
        host: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TCP connect plus TLS handshake did not finish in time.
    #[error("no TLS connection to the image server {host} within {secs} s (connect timeout)")]
    ConnectTimeout {
        /// `host:port`.
        host: String,
        /// The timeout.
        secs: u64,
    },
    /// The server refused the gateway's client certificate (a TLS alert, or nginx's `400` page).
    #[error("the image server {host} refused this gateway's client certificate {cert}: {detail}")]
    ClientCertRefused {
        /// `host:port`.
        host: String,
        /// [`Settings::client_cert`].
        cert: String,
        /// What the server said.
        detail: String,
    },
    /// The server's certificate is not trusted (the uplink's verifier: CA from the config,
    /// validity, host name, key strength).
    #[error("the image server {host} presents a certificate this gateway refuses: {detail}")]
    ServerCertRefused {
        /// `host:port`.
        host: String,
        /// The verifier's sentence.
        detail: String,
    },
    /// Another TLS failure.
    #[error("TLS with the image server {host} failed: {detail}")]
    Tls {
        /// `host:port`.
        host: String,
        /// The rustls error.
        detail: String,
    },
    /// The server answered with an HTTP status that is not the image.
    #[error("{uri} answered HTTP {status}{}", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Status {
        /// The URI.
        uri: String,
        /// The status code.
        status: u16,
        /// The start of the body, as text, whitespace collapsed.
        body: String,
    },
    /// Too many redirects.
    #[error("{uri}: more than {max} redirects")]
    TooManyRedirects {
        /// The URI first asked for.
        uri: String,
        /// [`Settings::max_redirects`].
        max: u32,
    },
    /// A `206` whose `Content-Range` is missing or is not the range asked for.
    #[error("{uri} answered 206 with Content-Range {got:?}, but bytes {from}- of a {size}-byte image were asked")]
    BadContentRange {
        /// The URI.
        uri: String,
        /// The header as received (empty when missing).
        got: String,
        /// The first byte asked for.
        from: u64,
        /// The job's size.
        size: u64,
    },
    /// `416 Range Not Satisfiable`: the server's file is shorter than the bytes we hold.
    #[error("{uri} does not have bytes {from}- (416 Range Not Satisfiable{}): the partial download was deleted", .complete.map(|c| format!(", it serves {c} bytes")).unwrap_or_default())]
    RangeNotSatisfiable {
        /// The URI.
        uri: String,
        /// The first byte asked for.
        from: u64,
        /// The length the server gave in `Content-Range: bytes */N`, if any.
        complete: Option<u64>,
    },
    /// The server announced (Content-Length or Content-Range) a size other than the job's.
    #[error("{uri} serves {announced} bytes, the job says {expected}: refused")]
    SizeMismatch {
        /// The URI.
        uri: String,
        /// The size the server announced.
        announced: u64,
        /// The job's size.
        expected: u64,
    },
    /// The server sent more bytes than the job's size: stopped, the partial file deleted.
    #[error("{uri} sent more than the {expected} bytes the job says: stopped, the partial download was deleted")]
    LongerThanExpected {
        /// The URI.
        uri: String,
        /// The job's size.
        expected: u64,
    },
    /// Nothing arrived for a read timeout.
    #[error(
        "no data from {uri} for {secs} s (read timeout) at byte {at}; the partial download is kept"
    )]
    ReadTimeout {
        /// The URI.
        uri: String,
        /// The timeout.
        secs: u64,
        /// Bytes in the `.part` file.
        at: u64,
    },
    /// The connection ended before the image was complete: the `.part` stays for a resume.
    #[error("the download from {uri} broke off at byte {at} of {size} ({detail}); the partial download is kept and the next attempt resumes there")]
    Interrupted {
        /// The URI.
        uri: String,
        /// Bytes in the `.part` file.
        at: u64,
        /// The job's size.
        size: u64,
        /// hyper's or the socket's error.
        detail: String,
    },
    /// The complete file's SHA-256 is not the job's: deleted.
    #[error("the SHA-256 of the downloaded image is {got}, the job says {expected}: the file was deleted")]
    HashMismatch {
        /// The job's hash, hex.
        expected: String,
        /// The file's hash, hex.
        got: String,
    },
}

impl DownloadError {
    /// The machine-readable reason (snake_case, stable): what the `failed` progress message
    /// carries upstream.
    pub fn reason(&self) -> &'static str {
        use DownloadError as E;
        match self {
            E::NoUri => "no_uri",
            E::BadUri { .. } => "bad_uri",
            E::NotHttps { .. } => "not_https",
            E::LargerThanCache { .. } => "larger_than_cache",
            E::CacheFull { .. } => "cache_full",
            E::Cache { .. } => "cache_io",
            E::Connect { .. } => "connect_failed",
            E::ConnectTimeout { .. } => "connect_timeout",
            E::ClientCertRefused { .. } => "client_certificate_refused",
            E::ServerCertRefused { .. } => "server_certificate_refused",
            E::Tls { .. } => "tls_failed",
            E::Status { status: 404, .. } => "not_found",
            E::Status { .. } => "http_status",
            E::TooManyRedirects { .. } => "too_many_redirects",
            E::BadContentRange { .. } => "bad_content_range",
            E::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            E::SizeMismatch {
                announced,
                expected,
                ..
            } if announced > expected => "larger_than_expected",
            E::SizeMismatch { .. } => "smaller_than_expected",
            E::LongerThanExpected { .. } => "larger_than_expected",
            E::ReadTimeout { .. } => "read_timeout",
            E::Interrupted { .. } => "interrupted",
            E::HashMismatch { .. } => "hash_mismatch",
        }
    }

    /// Whether a later call may succeed without anything changing but time (network, server
    /// availability): the relay retries these with backoff. The others need a new job, a fixed
    /// server or a changed config.
    pub fn is_transient(&self) -> bool {
        use DownloadError as E;
        // A full disk under the cache (ENOSPC) frees up when the store's retention or an
        // installer makes room: retried, not final. Other cache I/O errors (permissions, a
        // read-only file system) need a person.
        if let E::Cache { source, .. } = self {
            return source.raw_os_error() == Some(libc::ENOSPC);
        }
        matches!(
            self,
            E::Connect { .. }
                | E::ConnectTimeout { .. }
                | E::ReadTimeout { .. }
                | E::Interrupted { .. }
                | E::Tls { .. }
                | E::CacheFull { .. }
                | E::Status {
                    status: 429 | 500..=599,
                    ..
                }
        )
    }
}

/// A `Content-Range` header value (RFC 9110 §14.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes FIRST-LAST/COMPLETE` (`COMPLETE` is `None` for `*`), with FIRST ≤ LAST and
    /// LAST < COMPLETE.
    Bytes {
        /// First byte position, inclusive.
        first: u64,
        /// Last byte position, inclusive.
        last: u64,
        /// The representation's length, when known.
        complete: Option<u64>,
    },
    /// `bytes */COMPLETE` (with a 416).
    Unsatisfied {
        /// The representation's length.
        complete: u64,
    },
}

/// Parses a `Content-Range` value; `None` for anything that is not a well-formed byte range.
/// Pure and total (fuzzed: `fuzz/fuzz_targets/http_content_range.rs`).
pub fn parse_content_range(value: &[u8]) -> Option<ContentRange> {
    fn num(s: &str) -> Option<u64> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
    let s = std::str::from_utf8(value).ok()?.trim_matches([' ', '\t']);
    let (unit, rest) = s.split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (range, complete) = rest.split_once('/')?;
    if range == "*" {
        return Some(ContentRange::Unsatisfied {
            complete: num(complete)?,
        });
    }
    let (first, last) = range.split_once('-')?;
    let (first, last) = (num(first)?, num(last)?);
    let complete = if complete == "*" {
        None
    } else {
        Some(num(complete)?)
    };
    if first > last || complete.is_some_and(|c| last >= c) {
        return None;
    }
    Some(ContentRange::Bytes {
        first,
        last,
        complete,
    })
}

/// One file of the cache, for [`plan_room`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Last use (mtime: written, or returned by a hit).
    pub used: SystemTime,
    /// A verified `.img` (else a `.part`).
    pub complete: bool,
}

/// Which files to delete so that `need` more bytes fit under `max`, given the cache's `entries`
/// (the image being fetched already left out): complete images least recently used first, then
/// `.part` files not touched since `now - STALE_PART`, oldest first. `Err(busy)`: it cannot fit;
/// `busy` is the bytes of partial files that were not evictable.
pub(crate) fn plan_room(
    entries: &[Entry],
    need: u64,
    max: u64,
    now: SystemTime,
) -> Result<Vec<String>, u64> {
    let mut used: u64 = entries.iter().map(|e| e.bytes).sum();
    let mut evict = Vec::new();
    if used.saturating_add(need) <= max {
        return Ok(evict);
    }
    let stale = |e: &Entry| {
        now.duration_since(e.used)
            .is_ok_and(|age| age >= STALE_PART)
    };
    let mut order: Vec<&Entry> = entries.iter().filter(|e| e.complete || stale(e)).collect();
    order.sort_by_key(|e| (!e.complete, e.used));
    for e in order {
        if used.saturating_add(need) <= max {
            break;
        }
        used -= e.bytes;
        evict.push(e.name.clone());
    }
    if used.saturating_add(need) <= max {
        Ok(evict)
    } else {
        Err(entries
            .iter()
            .filter(|e| !e.complete && !stale(e))
            .map(|e| e.bytes)
            .sum())
    }
}

/// Whether `name` is an image file of the cache: `<64 hex>.img` or `<64 hex>.img.part`; `Some`
/// says whether it is complete.
fn cache_file_kind(name: &str) -> Option<bool> {
    let (stem, complete) = match name.strip_suffix(".img.part") {
        Some(stem) => (stem, false),
        None => (name.strip_suffix(".img")?, true),
    };
    (stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit())).then_some(complete)
}

fn cache_err(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Cache {
        path: path.display().to_string(),
        source,
    }
}

/// Downloads `image` into the cache (or finds it there) and returns the path of the verified
/// file `<sha256 hex>.img`.
///
/// Each URI of `image.uris` is tried in order; the error of the last one is returned when none
/// gives the image. An error leaves a `.part` only when it is worth resuming
/// ([`DownloadError::Interrupted`], [`DownloadError::ReadTimeout`], connection failures): the
/// next call continues from its end. `progress` is called as described at [`Progress`].
///
/// Cancel-safe: dropping the future leaves at worst a `.part` holding a prefix of what the
/// server sent, which the next call hashes again and resumes.
pub async fn fetch(
    settings: &Settings,
    image: &Image,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<PathBuf, DownloadError> {
    if image.size > settings.cache_max_bytes {
        return Err(DownloadError::LargerThanCache {
            size: image.size,
            max: settings.cache_max_bytes,
        });
    }
    if image.uris.is_empty() {
        return Err(DownloadError::NoUri);
    }
    let dir = &settings.cache_dir;
    create_cache_dir(dir)?;
    let done = dir.join(image.file_name());
    let part = dir.join(format!("{}.part", image.file_name()));

    // A hit: verified when it was renamed, checked again (cheap next to a transfer, and a flash
    // card can rot), and marked as used for the LRU.
    if let Ok(m) = tokio::fs::metadata(&done).await {
        if m.len() == image.size && hash_file(&done).await? == image.sha256 {
            touch(&done).map_err(cache_err(&done))?;
            progress(Progress {
                bytes: image.size,
                total: image.size,
            });
            return Ok(done);
        }
        remove(&done)?;
    }
    make_room(settings, image)?;

    let mut last = DownloadError::NoUri;
    for uri in &image.uris {
        match fetch_from(settings, image, uri, &part, progress).await {
            Ok(()) => {
                tokio::fs::rename(&part, &done)
                    .await
                    .map_err(cache_err(&done))?;
                sync_dir(dir)?;
                return Ok(done);
            }
            Err(e) => {
                log::warn!("firmware download: {e}");
                last = e;
            }
        }
    }
    Err(last)
}

fn create_cache_dir(dir: &Path) -> Result<(), DownloadError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(cache_err(dir))
}

fn remove(path: &Path) -> Result<(), DownloadError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(cache_err(path)(e)),
        _ => Ok(()),
    }
}

fn touch(path: &Path) -> std::io::Result<()> {
    std::fs::File::options()
        .write(true)
        .open(path)?
        .set_modified(SystemTime::now())
}

fn sync_dir(dir: &Path) -> Result<(), DownloadError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(cache_err(dir))
}

/// Deletes what [`plan_room`] says so that `image` fits.
fn make_room(settings: &Settings, image: &Image) -> Result<(), DownloadError> {
    let dir = &settings.cache_dir;
    let own = image.file_name();
    let own_part = format!("{own}.part");
    let mut entries = Vec::new();
    for de in std::fs::read_dir(dir).map_err(cache_err(dir))? {
        let de = de.map_err(cache_err(dir))?;
        let name = de.file_name().to_string_lossy().into_owned();
        let Some(complete) = cache_file_kind(&name) else {
            continue;
        };
        if name == own || name == own_part {
            continue;
        }
        let Ok(m) = de.metadata() else { continue };
        entries.push(Entry {
            name,
            bytes: m.len(),
            used: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            complete,
        });
    }
    let plan = plan_room(
        &entries,
        image.size,
        settings.cache_max_bytes,
        SystemTime::now(),
    )
    .map_err(|busy| DownloadError::CacheFull {
        dir: dir.display().to_string(),
        need: image.size,
        busy,
        max: settings.cache_max_bytes,
    })?;
    for name in plan {
        log::info!("firmware cache: evicting {name} to make room");
        remove(&dir.join(name))?;
    }
    Ok(())
}

/// SHA-256 of a file, read in [`CHUNK`]s.
async fn hash_file(path: &Path) -> Result<[u8; 32], DownloadError> {
    let mut f = tokio::fs::File::open(path).await.map_err(cache_err(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).await.map_err(cache_err(path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(digest_bytes(ctx))
}

fn digest_bytes(ctx: ring::digest::Context) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The `.part` as found: how many bytes it holds and the hash context over them.
async fn resume_point(
    part: &Path,
    size: u64,
) -> Result<(u64, ring::digest::Context), DownloadError> {
    let fresh = || (0, ring::digest::Context::new(&ring::digest::SHA256));
    let Ok(m) = tokio::fs::metadata(part).await else {
        return Ok(fresh());
    };
    if m.len() > size {
        remove(part)?;
        return Ok(fresh());
    }
    let mut f = tokio::fs::File::open(part).await.map_err(cache_err(part))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut have = 0u64;
    loop {
        let n = f.read(&mut buf).await.map_err(cache_err(part))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        have += n as u64;
    }
    Ok((have, ctx))
}

/// One URI, following redirects: leaves a complete, verified `.part` or fails.
async fn fetch_from(
    settings: &Settings,
    image: &Image,
    first_uri: &str,
    part: &Path,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(), DownloadError> {
    let (mut have, mut ctx) = resume_point(part, image.size).await?;
    let size = image.size;
    progress(Progress {
        bytes: have,
        total: size,
    });
    if have == size {
        return finish(part, image, ctx);
    }
    let mut uri = parse_https(first_uri)?;
    let mut redirects = 0;
    let (resp, uri_text, _conn) = loop {
        let uri_text = uri.to_string();
        let (resp, conn) = request(settings, &uri, have, size).await?;
        let status = resp.status();
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            redirects += 1;
            if redirects > settings.max_redirects {
                return Err(DownloadError::TooManyRedirects {
                    uri: first_uri.to_string(),
                    max: settings.max_redirects,
                });
            }
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| DownloadError::BadUri {
                    uri: uri_text.clone(),
                    why: format!("redirect ({status}) without a Location"),
                })?;
            uri = resolve(&uri, location)?;
            continue;
        }
        break (resp, uri_text, conn);
    };
    let status = resp.status();
    let announced_len = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match status {
        StatusCode::PARTIAL_CONTENT => {
            let raw = resp.headers().get(header::CONTENT_RANGE);
            let parsed = raw.and_then(|v| parse_content_range(v.as_bytes()));
            let bad = || DownloadError::BadContentRange {
                uri: uri_text.clone(),
                got: raw
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .unwrap_or_default(),
                from: have,
                size,
            };
            match parsed {
                Some(ContentRange::Bytes {
                    first,
                    last,
                    complete,
                }) if first == have => {
                    if let Some(c) = complete.filter(|c| *c != size) {
                        return Err(DownloadError::SizeMismatch {
                            uri: uri_text,
                            announced: c,
                            expected: size,
                        });
                    }
                    if last != size - 1 {
                        return Err(bad());
                    }
                }
                _ => return Err(bad()),
            }
        }
        StatusCode::OK => {
            if let Some(len) = announced_len.filter(|l| *l != size) {
                return Err(DownloadError::SizeMismatch {
                    uri: uri_text,
                    announced: len,
                    expected: size,
                });
            }
            if have > 0 {
                log::info!(
                    "firmware download: {uri_text} ignored the range request; starting again from 0"
                );
                tokio::fs::File::create(part)
                    .await
                    .map_err(cache_err(part))?;
                (have, ctx) = (0, ring::digest::Context::new(&ring::digest::SHA256));
                progress(Progress {
                    bytes: 0,
                    total: size,
                });
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            remove(part)?;
            let complete = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| parse_content_range(v.as_bytes()))
                .and_then(|c| match c {
                    ContentRange::Unsatisfied { complete } => Some(complete),
                    ContentRange::Bytes { complete, .. } => complete,
                });
            return Err(DownloadError::RangeNotSatisfiable {
                uri: uri_text,
                from: have,
                complete,
            });
        }
        _ => return Err(status_error(settings, &uri, uri_text, resp).await),
    }

    // The body, appended to the .part in CHUNK-sized writes.
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .await
        .map_err(cache_err(part))?;
    let mut out = tokio::io::BufWriter::with_capacity(CHUNK, file);
    let mut body = resp.into_body();
    let mut unflushed = 0usize;
    let read_timeout = settings.read_timeout;
    let cut = |have: u64, detail: String| DownloadError::Interrupted {
        uri: uri_text.clone(),
        at: have,
        size,
        detail,
    };
    loop {
        let frame = match tokio::time::timeout(read_timeout, body.frame()).await {
            Err(_) => {
                out.flush().await.map_err(cache_err(part))?;
                return Err(DownloadError::ReadTimeout {
                    uri: uri_text.clone(),
                    secs: read_timeout.as_secs(),
                    at: have,
                });
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                out.flush().await.map_err(cache_err(part))?;
                return Err(cut(have, e.to_string()));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if have + data.len() as u64 > size {
            drop(out);
            remove(part)?;
            return Err(DownloadError::LongerThanExpected {
                uri: uri_text.clone(),
                expected: size,
            });
        }
        out.write_all(&data).await.map_err(cache_err(part))?;
        ctx.update(&data);
        have += data.len() as u64;
        unflushed += data.len();
        if unflushed >= CHUNK {
            out.flush().await.map_err(cache_err(part))?;
            unflushed = 0;
            progress(Progress {
                bytes: have,
                total: size,
            });
        }
    }
    out.flush().await.map_err(cache_err(part))?;
    if unflushed > 0 {
        progress(Progress {
            bytes: have,
            total: size,
        });
    }
    if have < size {
        return Err(cut(have, "the server ended the response early".into()));
    }
    out.get_ref().sync_all().await.map_err(cache_err(part))?;
    finish(part, image, ctx)
}

/// The `.part` holds `size` bytes hashed into `ctx`: keep it if the hash is the job's, else
/// delete it.
fn finish(part: &Path, image: &Image, ctx: ring::digest::Context) -> Result<(), DownloadError> {
    let got = digest_bytes(ctx);
    if got != image.sha256 {
        remove(part)?;
        return Err(DownloadError::HashMismatch {
            expected: hex::encode(image.sha256),
            got: hex::encode(got),
        });
    }
    Ok(())
}

/// The error for a status that is not the image, with the start of the body.
async fn status_error(
    settings: &Settings,
    uri: &Uri,
    uri_text: String,
    resp: hyper::Response<hyper::body::Incoming>,
) -> DownloadError {
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while text.len() < ERROR_BODY_MAX {
        match tokio::time::timeout(settings.read_timeout, body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    text.extend_from_slice(&d);
                }
            }
            _ => break,
        }
    }
    text.truncate(ERROR_BODY_MAX);
    let body = summarize_html(&String::from_utf8_lossy(&text));
    // nginx with `ssl_verify_client on` answers a certificate it does not accept (or none) with
    // 400 and this page after the handshake (TLS 1.3 sends the client certificate after the
    // server's Finished, so no alert reaches us).
    if status == 400 && body.to_ascii_lowercase().contains("certificate") {
        return DownloadError::ClientCertRefused {
            host: authority(uri),
            cert: settings.client_cert.clone(),
            detail: format!("HTTP 400: {body}"),
        };
    }
    DownloadError::Status {
        uri: uri_text,
        status,
        body,
    }
}

/// The text of an error page: tags dropped, whitespace collapsed, at most 200 characters.
fn summarize_html(s: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let words: Vec<&str> = out.split_whitespace().collect();
    let mut t = words.join(" ");
    if t.len() > 200 {
        let mut cut = 200;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
        t.push('…');
    }
    t
}

fn authority(uri: &Uri) -> String {
    uri.authority().map(|a| a.to_string()).unwrap_or_default()
}

/// An absolute `https://host[:port]/path` URI.
fn parse_https(s: &str) -> Result<Uri, DownloadError> {
    let uri: Uri = s.parse().map_err(|e| DownloadError::BadUri {
        uri: s.to_string(),
        why: format!("{e}"),
    })?;
    match uri.scheme_str() {
        Some(sch) if sch.eq_ignore_ascii_case("https") => {}
        Some(_) => return Err(DownloadError::NotHttps { uri: s.to_string() }),
        None => {
            return Err(DownloadError::BadUri {
                uri: s.to_string(),
                why: "not an absolute URI".into(),
            })
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(DownloadError::BadUri {
            uri: s.to_string(),
            why: "no host".into(),
        });
    }
    Ok(uri)
}

/// A redirect's `Location` (absolute, or relative to `base`) as an absolute `https://` URI.
fn resolve(base: &Uri, location: &str) -> Result<Uri, DownloadError> {
    if location.contains("://") {
        return parse_https(location);
    }
    let scheme = base.scheme_str().unwrap_or("https");
    let auth = authority(base);
    if location.starts_with("//") {
        return parse_https(&format!("{scheme}:{location}"));
    }
    let path = if location.starts_with('/') {
        location.to_string()
    } else {
        let base_path = base.path();
        let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
        format!("{dir}{location}")
    };
    parse_https(&format!("{scheme}://{auth}{path}"))
}

/// Aborts the connection task when the download is done with it.
struct ConnTask(tokio::task::JoinHandle<()>);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects (TCP + TLS within the connect timeout) and sends one GET, asking for bytes `from`-
/// when `from > 0`; returns the response head within the read timeout.
async fn request(
    settings: &Settings,
    uri: &Uri,
    from: u64,
    size: u64,
) -> Result<(hyper::Response<hyper::body::Incoming>, ConnTask), DownloadError> {
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(443);
    let host_port = authority(uri);
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let server_name = rustls::pki_types::ServerName::try_from(bare.clone()).map_err(|e| {
        DownloadError::BadUri {
            uri: uri.to_string(),
            why: format!("host {host:?}: {e}"),
        }
    })?;
    let connector = tokio_rustls::TlsConnector::from(settings.tls.clone());
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
            .await
            .map_err(|source| DownloadError::Connect {
                host: host_port.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| tls_error(settings, &host_port, e))
    };
    let tls = tokio::time::timeout(settings.connect_timeout, connect)
        .await
        .map_err(|_| DownloadError::ConnectTimeout {
            host: host_port.clone(),
            secs: settings.connect_timeout.as_secs(),
        })??;
    // hyper's read buffer grows with the transfer (to ~400 KiB by default): bounded to CHUNK,
    // so body pieces are at most that.
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(CHUNK)
        .handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| DownloadError::Tls {
            host: host_port.clone(),
            detail: e.to_string(),
        })?;
    let task = ConnTask(tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::debug!("firmware download connection: {e}");
        }
    }));
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::get(path)
        .header(header::HOST, host_port.as_str())
        .header(
            header::USER_AGENT,
            concat!("wardgate/", env!("CARGO_PKG_VERSION")),
        )
        .header(header::ACCEPT_ENCODING, "identity");
    if from > 0 {
        req = req.header(
            header::RANGE,
            HeaderValue::from_str(&format!("bytes={from}-")).expect("digits are a valid header"),
        );
    }
    let req = req.body(Empty::new()).map_err(|e| DownloadError::BadUri {
        uri: uri.to_string(),
        why: e.to_string(),
    })?;
    let resp = match tokio::time::timeout(settings.read_timeout, sender.send_request(req)).await {
        Err(_) => {
            return Err(DownloadError::ReadTimeout {
                uri: uri.to_string(),
                secs: settings.read_timeout.as_secs(),
                at: from,
            })
        }
        Ok(Err(e)) => {
            return Err(DownloadError::Interrupted {
                uri: uri.to_string(),
                at: from,
                size,
                detail: e.to_string(),
            })
        }
        Ok(Ok(r)) => r,
    };
    Ok((resp, task))
}

/// A TLS handshake error as the installer needs it: our verifier's refusal of the server's
/// certificate, an alert about our client certificate, or else the rustls text.
fn tls_error(settings: &Settings, host: &str, e: std::io::Error) -> DownloadError {
    use rustls::{AlertDescription as A, CertificateError};
    let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return DownloadError::Tls {
            host: host.to_string(),
            detail: e.to_string(),
        };
    };
    match r {
        rustls::Error::InvalidCertificate(CertificateError::Other(o)) => {
            let detail =
                o.0.downcast_ref::<crate::tls::Refusal>()
                    .map(|r| r.message.clone())
                    .unwrap_or_else(|| r.to_string());
            DownloadError::ServerCertRefused {
                host: host.to_string(),
                detail,
            }
        }
        rustls::Error::InvalidCertificate(_) => DownloadError::ServerCertRefused {
            host: host.to_string(),
            detail: r.to_string(),
        },
        rustls::Error::AlertReceived(
            a @ (A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateUnknown
            | A::CertificateRequired
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::UnknownCA
            | A::AccessDenied),
        ) => DownloadError::ClientCertRefused {
            host: host.to_string(),
            cert: settings.client_cert.clone(),
            detail: format!("TLS alert {a:?}"),
        },
        _ => DownloadError::Tls {
            host: host.to_string(),
            detail: r.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn br(first: u64, last: u64, complete: Option<u64>) -> Option<ContentRange> {
        Some(ContentRange::Bytes {
            first,
            last,
            complete,
        })
    }

    #[test]
    fn content_range_forms_of_rfc_9110() {
        assert_eq!(
            parse_content_range(b"bytes 0-499/1234"),
            br(0, 499, Some(1234))
        );
        assert_eq!(
            parse_content_range(b"bytes 734-1233/1234"),
            br(734, 1233, Some(1234))
        );
        assert_eq!(parse_content_range(b"bytes 42-1233/*"), br(42, 1233, None));
        assert_eq!(
            parse_content_range(b"bytes */1234"),
            Some(ContentRange::Unsatisfied { complete: 1234 })
        );
        assert_eq!(parse_content_range(b" Bytes 0-0/1 "), br(0, 0, Some(1)));
    }

    #[test]
    fn content_range_refuses_what_is_not_a_byte_range() {
        for bad in [
            &b""[..],
            b"bytes",
            b"bytes 0-499",
            b"items 0-1/2",
            b"bytes 5-4/10",
            b"bytes 0-10/10",
            b"bytes -1-4/10",
            b"bytes +1-4/10",
            b"bytes 1 -4/10",
            b"bytes 0-18446744073709551616/*",
            b"bytes */*",
            b"bytes 0x1-2/3",
            b"bytes 0-1/2/3",
            b"bytes\xff 0-1/2",
        ] {
            assert_eq!(
                parse_content_range(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // The largest positions still parse.
        assert_eq!(
            parse_content_range(b"bytes 0-18446744073709551614/18446744073709551615"),
            br(0, u64::MAX - 1, Some(u64::MAX))
        );
    }

    fn entry(name: &str, bytes: u64, age_s: u64, complete: bool) -> Entry {
        Entry {
            name: name.into(),
            bytes,
            used: SystemTime::UNIX_EPOCH + Duration::from_secs(100_000 - age_s),
            complete,
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(100_000)
    }

    #[test]
    fn room_is_made_from_the_least_recently_used_complete_images() {
        let e = [
            entry("new", 30, 10, true),
            entry("old", 30, 500, true),
            entry("mid", 30, 100, true),
        ];
        // 90 used + 20 ≤ 110: nothing goes.
        assert_eq!(plan_room(&e, 20, 110, now()), Ok(vec![]));
        // 90 + 40 > 110: the oldest goes, then it fits.
        assert_eq!(plan_room(&e, 40, 110, now()), Ok(vec!["old".to_string()]));
        // 90 + 80 > 110: two go, oldest first.
        assert_eq!(
            plan_room(&e, 80, 110, now()),
            Ok(vec!["old".to_string(), "mid".to_string()])
        );
        // Everything goes for an image the size of the cache.
        assert_eq!(plan_room(&e, 110, 110, now()).map(|v| v.len()), Ok(3));
    }

    #[test]
    fn a_download_in_progress_is_never_evicted_but_a_stale_one_is() {
        let fresh_part = entry("busy.part", 50, 5, false);
        let stale_part = entry("abandoned.part", 40, STALE_PART.as_secs() + 1, false);
        let img = entry("img", 10, 60, true);
        // 100 bytes held: completes go first even when a stale part is older.
        assert_eq!(
            plan_room(
                &[fresh_part.clone(), stale_part.clone(), img.clone()],
                20,
                110,
                now()
            ),
            Ok(vec!["img".to_string()])
        );
        assert_eq!(
            plan_room(
                &[fresh_part.clone(), stale_part.clone(), img.clone()],
                60,
                110,
                now()
            ),
            Ok(vec!["img".to_string(), "abandoned.part".to_string()])
        );
        // The fresh part cannot go: no room, and the error says how much is busy.
        assert_eq!(
            plan_room(&[fresh_part, stale_part, img], 70, 110, now()),
            Err(50)
        );
    }

    #[test]
    fn only_image_files_belong_to_the_cache() {
        let h = "ab".repeat(32);
        assert_eq!(cache_file_kind(&format!("{h}.img")), Some(true));
        assert_eq!(cache_file_kind(&format!("{h}.img.part")), Some(false));
        assert_eq!(cache_file_kind("notes.txt"), None);
        assert_eq!(cache_file_kind("abc.img"), None);
        assert_eq!(cache_file_kind(&format!("{h}.bin")), None);
    }

    #[test]
    fn redirects_resolve_to_https_only() {
        let base: Uri = "https://img.example:8443/fw/a/b.img".parse().unwrap();
        let r = |l: &str| resolve(&base, l).map(|u| u.to_string());
        assert_eq!(r("/x.img").unwrap(), "https://img.example:8443/x.img");
        assert_eq!(r("c.img").unwrap(), "https://img.example:8443/fw/a/c.img");
        assert_eq!(r("https://other/x").unwrap(), "https://other/x");
        assert_eq!(r("//cdn.example/x").unwrap(), "https://cdn.example/x");
        assert_eq!(
            resolve(&base, "http://img.example/x").unwrap_err().reason(),
            "not_https"
        );
        assert_eq!(parse_https("ftp://a/b").unwrap_err().reason(), "not_https");
        assert_eq!(parse_https("/relative").unwrap_err().reason(), "bad_uri");
    }

    #[test]
    fn error_pages_are_reduced_to_their_words() {
        let nginx = "<html>\r\n<head><title>400 The SSL certificate error</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The SSL certificate error</center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n";
        assert_eq!(
            summarize_html(nginx),
            "400 The SSL certificate error 400 Bad Request The SSL certificate error nginx/1.22.1"
        );
        assert!(summarize_html(&"é".repeat(300)).ends_with('…'));
    }

    #[test]
    fn reasons_are_snake_case_and_sizes_say_which_way() {
        let e = DownloadError::SizeMismatch {
            uri: "u".into(),
            announced: 11,
            expected: 10,
        };
        assert_eq!(e.reason(), "larger_than_expected");
        let e = DownloadError::SizeMismatch {
            uri: "u".into(),
            announced: 9,
            expected: 10,
        };
        assert_eq!(e.reason(), "smaller_than_expected");
        let e = DownloadError::Status {
            uri: "u".into(),
            status: 404,
            body: String::new(),
        };
        assert_eq!((e.reason(), e.is_transient()), ("not_found", false));
        // A full disk under the cache is retried; a cache that cannot be written is not.
        let cache = |errno| DownloadError::Cache {
            path: "/var/lib/wardgate/firmware/x.part".into(),
            source: std::io::Error::from_raw_os_error(errno),
        };
        let full = cache(libc::ENOSPC);
        assert_eq!((full.reason(), full.is_transient()), ("cache_io", true));
        let denied = cache(libc::EACCES);
        assert_eq!(
            (denied.reason(), denied.is_transient()),
            ("cache_io", false)
        );
        assert!(full.to_string().contains("x.part"), "{full}");
    }
}
