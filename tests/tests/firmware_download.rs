//! Firmware image download (issue 10 item 4) against a real nginx (Debian package) that requires
//! client certificates: the image arrives verified into the cache; a download cut in the middle
//! resumes with a Range request (nginx's access log shows `206` for `bytes=N-` and the bytes sent
//! add up to the image once, not twice); a cancelled download resumes too; a server that ignores
//! ranges restarts from 0; a client certificate of another CA and a server certificate of an
//! unknown CA are refused and named; a wrong SHA-256, a size other than the job's and an image
//! larger than the cache are refused, leaving nothing in the cache; the cache stays under its
//! bound by evicting the least recently used image; redirects are followed to https only.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;
use wardgate::firmware::download::{fetch, DownloadError, Image, Progress, Settings};
use wardgate_e2e::broker::Pki;
use wardgate_e2e::nginx::{self, CutProxy, Nginx, NginxOptions};

/// Pseudo-random bytes (xorshift): an image that does not compress and is the same every run.
/// The seed's lowest bit is forced to 1: seeds 2k and 2k+1 give the same bytes.
fn image_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

const IMAGE_LEN: usize = 2 * 1024 * 1024;

/// How long nginx may take to write its access log line.
const LOG_WAIT: Duration = Duration::from_secs(10);

struct World {
    dir: tempfile::TempDir,
    pki: Pki,
    nginx: Nginx,
    www: PathBuf,
    image: Vec<u8>,
}

impl World {
    /// nginx serving `image.bin` (2 MiB) with the test PKI, `extra` in its server block (`{www}`
    /// is the served directory, `{port}` its port); `None` when nginx is missing (the test was
    /// skipped).
    fn start(name: &str, extra: &str) -> Option<World> {
        if !nginx::available() {
            wardgate_e2e::skip_or_fail("nginx is not installed (apt-get install nginx)");
            return None;
        }
        let dir = wardgate_e2e::temp_dir(name).unwrap();
        let pki = Pki::create(&dir.path().join("pki"), "e2e firmware CA").unwrap();
        let www = dir.path().join("www");
        let extra = extra.replace("{www}", &www.display().to_string());
        std::fs::create_dir_all(&www).unwrap();
        let image = image_bytes(IMAGE_LEN, 7);
        std::fs::write(www.join("image.bin"), &image).unwrap();
        let nginx = Nginx::start(
            &dir.path().join("nginx"),
            &NginxOptions {
                client_ca: pki.ca_pem.clone(),
                cert: pki.broker_cert.clone(),
                key: pki.broker_key.clone(),
                root: www.clone(),
                slow_rate: "512k".into(),
                extra,
            },
        )
        .unwrap();
        Some(World {
            dir,
            pki,
            nginx,
            www,
            image,
        })
    }

    /// The access log once it has at least `n` lines (nginx writes a line when it finalises the
    /// request, which may be just after the client has the last byte).
    fn requests(&self, n: usize) -> Vec<nginx::Request> {
        wardgate_e2e::wait_until(
            &format!("{n} requests in nginx's access log"),
            LOG_WAIT,
            Duration::from_millis(20),
            || {
                let r = self.nginx.requests()?;
                Ok((r.len() >= n).then_some(r))
            },
        )
        .unwrap()
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The gateway's settings: the test CA, the gateway's certificate, a 16 MiB cache.
    fn settings(&self) -> Settings {
        let mut s = Settings::from_files(
            &self.pki.ca_pem,
            &self.pki.gateway_cert,
            &self.pki.gateway_key,
            self.cache(),
            16 * 1024 * 1024,
        )
        .unwrap();
        s.connect_timeout = Duration::from_secs(5);
        s.read_timeout = Duration::from_secs(5);
        s
    }

    fn image_at(&self, path: &str) -> Image {
        Image {
            uris: vec![self.nginx.url(path)],
            size: self.image.len() as u64,
            sha256: sha256(&self.image),
        }
    }

    fn cache_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.cache())
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs [`fetch`], recording every progress report.
fn fetch_now(
    settings: &Settings,
    image: &Image,
) -> (Result<PathBuf, DownloadError>, Vec<Progress>) {
    let mut seen = Vec::new();
    let r = rt().block_on(fetch(settings, image, &mut |p| seen.push(p)));
    (r, seen)
}

fn part_len(dir: &Path, image: &Image) -> u64 {
    std::fs::metadata(dir.join(format!("{}.part", image.file_name())))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[test]
fn an_image_is_downloaded_verified_and_then_served_from_the_cache() {
    let Some(w) = World::start("fw-full", "") else {
        return;
    };
    let img = w.image_at("image.bin");
    let (r, seen) = fetch_now(&w.settings(), &img);
    let path = r.unwrap();
    assert_eq!(path, w.cache().join(img.file_name()));
    assert_eq!(std::fs::read(&path).unwrap(), w.image, "the cached image");
    assert_eq!(w.cache_files(), vec![img.file_name()], "no .part left");
    let total = img.size;
    assert_eq!(seen.first(), Some(&Progress { bytes: 0, total }));
    assert_eq!(
        seen.last(),
        Some(&Progress {
            bytes: total,
            total
        })
    );
    assert!(
        seen.windows(2).all(|p| p[0].bytes <= p[1].bytes),
        "progress only grows: {seen:?}"
    );
    assert!(seen.len() > 10, "progress while downloading: {seen:?}");
    let reqs = w.requests(1);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        (reqs[0].status, reqs[0].range.as_deref()),
        (200, None),
        "{reqs:?}"
    );
    assert_eq!(
        reqs[0].client_verify, "SUCCESS",
        "nginx checked our certificate"
    );
    assert_eq!(reqs[0].body_bytes, total);

    // Again: from the cache, nothing asked of the server.
    let (r, _) = fetch_now(&w.settings(), &img);
    assert_eq!(r.unwrap(), path);
    assert_eq!(w.nginx.requests().unwrap().len(), 1);
}

#[test]
fn a_download_cut_in_the_middle_resumes_with_a_range_request() {
    let Some(w) = World::start("fw-cut", "") else {
        return;
    };
    // The network breaks after ~1 MiB of the server's bytes.
    let proxy = CutProxy::start(w.nginx.port, 1024 * 1024).unwrap();
    let mut img = w.image_at("image.bin");
    img.uris = vec![format!("https://localhost:{}/image.bin", proxy.port)];
    let (r, _) = fetch_now(&w.settings(), &img);
    let e = r.unwrap_err();
    assert_eq!(e.reason(), "interrupted", "{e}");
    let kept = part_len(&w.cache(), &img);
    assert!(
        kept > 256 * 1024 && kept < img.size,
        "the .part keeps what arrived: {kept} bytes"
    );
    assert!(e.is_transient());

    // The next attempt (straight to the server) asks for the rest only.
    let img = w.image_at("image.bin");
    let (r, seen) = fetch_now(&w.settings(), &img);
    let path = r.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), w.image);
    assert_eq!(
        seen.first(),
        Some(&Progress {
            bytes: kept,
            total: img.size
        }),
        "progress starts at the resume point"
    );
    // nginx logs the cut request when it notices the broken connection: maybe after the
    // second one, so the lines are told apart by their Range header, not their order.
    let reqs = w.requests(2);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let first = reqs.iter().find(|r| r.range.is_none()).expect("{reqs:?}");
    assert_eq!(first.status, 200, "{reqs:?}");
    let second = reqs.iter().find(|r| r.range.is_some()).expect("{reqs:?}");
    assert_eq!(second.status, 206, "{reqs:?}");
    assert_eq!(second.range.as_deref(), Some(&*format!("bytes={kept}-")));
    assert_eq!(
        kept + second.body_bytes,
        img.size,
        "the bytes received add up to the image once"
    );
}

#[test]
fn a_cancelled_download_resumes_where_it_stopped() {
    let Some(w) = World::start("fw-cancel", "") else {
        return;
    };
    // /slow/ sends 512 KiB/s: once 256 KiB are in, the task is dropped, as the relay does on
    // a cancel or at shutdown.
    let img = w.image_at("slow/image.bin");
    let s = w.settings();
    let got = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = got.clone();
    let finished = rt().block_on(async {
        let mut report = move |p: Progress| seen.store(p.bytes, Ordering::Relaxed);
        let download = fetch(&s, &img, &mut report);
        let enough = async {
            while got.load(Ordering::Relaxed) < 256 * 1024 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            r = download => Some(r),
            _ = tokio::time::timeout(Duration::from_secs(20), enough) => None,
        }
    });
    assert!(
        finished.is_none(),
        "the slow download was still running: {finished:?}"
    );
    let kept = part_len(&w.cache(), &img);
    assert!(kept >= 256 * 1024 && kept < img.size, "{kept}");

    let (r, _) = fetch_now(&s, &w.image_at("image.bin"));
    assert_eq!(std::fs::read(r.unwrap()).unwrap(), w.image);
    let reqs = w.requests(2);
    let last = reqs
        .iter()
        .find(|r| r.path == "/image.bin")
        .expect("the resume in the access log");
    assert_eq!(last.status, 206, "{reqs:?}");
    assert_eq!(last.range.as_deref(), Some(&*format!("bytes={kept}-")));
    assert_eq!(last.body_bytes, img.size - kept);
}

#[test]
fn a_server_that_ignores_ranges_starts_again_and_one_without_the_bytes_answers_416() {
    let extra = "        location /norange/ { alias {www}/; max_ranges 0; }\n";
    let Some(w) = World::start("fw-norange", extra) else {
        return;
    };
    let img = w.image_at("norange/image.bin");
    // A .part whose bytes are not the image's: a resume would keep them and fail the hash.
    std::fs::create_dir_all(w.cache()).unwrap();
    std::fs::write(
        w.cache().join(format!("{}.part", img.file_name())),
        vec![0xAA; 1000],
    )
    .unwrap();
    let (r, seen) = fetch_now(&w.settings(), &img);
    assert_eq!(std::fs::read(r.unwrap()).unwrap(), w.image);
    assert!(
        seen.iter().any(|p| p.bytes == 0),
        "progress went back to 0: {seen:?}"
    );
    let reqs = w.requests(1);
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        (reqs[0].status, reqs[0].range.as_deref()),
        (200, Some("bytes=1000-"))
    );

    // The server's file is shorter than what the .part holds: 416, the .part goes.
    let data = image_bytes(2000, 9);
    std::fs::write(w.www.join("short.bin"), &data[..500]).unwrap();
    let img = Image {
        uris: vec![w.nginx.url("short.bin")],
        size: data.len() as u64,
        sha256: sha256(&data),
    };
    std::fs::write(
        w.cache().join(format!("{}.part", img.file_name())),
        &data[..1000],
    )
    .unwrap();
    let (r, _) = fetch_now(&w.settings(), &img);
    let e = r.unwrap_err();
    assert_eq!(e.reason(), "range_not_satisfiable", "{e}");
    assert!(e.to_string().contains("it serves 500 bytes"), "{e}");
    assert_eq!(part_len(&w.cache(), &img), 0, "the .part was deleted");
}

#[test]
fn a_client_certificate_of_another_ca_is_refused_and_named() {
    let Some(w) = World::start("fw-clientca", "") else {
        return;
    };
    let other = Pki::create(&w.dir.path().join("other"), "another CA").unwrap();
    let s = Settings::from_files(
        &w.pki.ca_pem,
        &other.gateway_cert,
        &other.gateway_key,
        w.cache(),
        16 << 20,
    )
    .unwrap();
    let (r, _) = fetch_now(&s, &w.image_at("image.bin"));
    let e = r.unwrap_err();
    assert_eq!(e.reason(), "client_certificate_refused", "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&other.gateway_cert.display().to_string()) && text.contains("gw-e2e-01"),
        "names the certificate: {text}"
    );
    assert!(text.contains("SSL certificate error"), "says why: {text}");
    let reqs = w.requests(1);
    assert!(
        reqs.iter()
            .all(|r| r.status == 400 && r.client_verify.starts_with("FAILED")),
        "{reqs:?}"
    );
    assert!(w.cache_files().is_empty(), "{:?}", w.cache_files());
}

#[test]
fn a_server_certificate_of_an_unknown_ca_is_refused() {
    let Some(w) = World::start("fw-serverca", "") else {
        return;
    };
    let other = Pki::create(&w.dir.path().join("other"), "another CA").unwrap();
    let s = Settings::from_files(
        &other.ca_pem,
        &w.pki.gateway_cert,
        &w.pki.gateway_key,
        w.cache(),
        16 << 20,
    )
    .unwrap();
    let (r, _) = fetch_now(&s, &w.image_at("image.bin"));
    let e = r.unwrap_err();
    assert_eq!(e.reason(), "server_certificate_refused", "{e}");
    assert!(
        e.to_string().contains("not signed by the configured CA"),
        "{e}"
    );
    assert!(
        w.nginx.requests().unwrap().is_empty(),
        "no request was sent"
    );
    assert!(w.cache_files().is_empty(), "{:?}", w.cache_files());
}

#[test]
fn a_wrong_hash_or_size_is_refused_and_nothing_stays_in_the_cache() {
    let Some(w) = World::start("fw-verify", "") else {
        return;
    };
    let mut img = w.image_at("image.bin");
    img.sha256[0] ^= 1;
    let (r, _) = fetch_now(&w.settings(), &img);
    let e = r.unwrap_err();
    assert_eq!(e.reason(), "hash_mismatch", "{e}");
    assert!(e.to_string().contains(&hex(&img.sha256)), "{e}");
    assert!(w.cache_files().is_empty(), "{:?}", w.cache_files());

    // The server's file is larger than the job says: refused before a byte is stored.
    let mut img = w.image_at("image.bin");
    img.size -= 1000;
    let (r, _) = fetch_now(&w.settings(), &img);
    let e = r.unwrap_err();
    assert_eq!(e.reason(), "larger_than_expected", "{e}");
    assert!(w.cache_files().is_empty(), "{:?}", w.cache_files());

    // Smaller than the job says.
    let mut img = w.image_at("image.bin");
    img.size += 10;
    let (r, _) = fetch_now(&w.settings(), &img);
    assert_eq!(r.unwrap_err().reason(), "smaller_than_expected");
    assert!(w.cache_files().is_empty(), "{:?}", w.cache_files());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn the_cache_stays_under_its_bound_evicting_the_least_recently_used() {
    let Some(w) = World::start("fw-cache", "") else {
        return;
    };
    const LEN: usize = 600 * 1024;
    let mut images = Vec::new();
    for (i, name) in ["a.bin", "b.bin", "c.bin"].iter().enumerate() {
        let data = image_bytes(LEN, 100 + 2 * i as u64);
        std::fs::write(w.www.join(name), &data).unwrap();
        images.push(Image {
            uris: vec![w.nginx.url(name)],
            size: LEN as u64,
            sha256: sha256(&data),
        });
    }
    let mut s = w.settings();
    s.cache_max_bytes = (LEN * 5 / 2) as u64; // room for two
    let used = || -> u64 {
        std::fs::read_dir(w.cache())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let (a, b, c) = (&images[0], &images[1], &images[2]);
    fetch_now(&s, a).0.unwrap();
    fetch_now(&s, b).0.unwrap();
    // a is used again (a hit): b is now the least recently used.
    fetch_now(&s, a).0.unwrap();
    fetch_now(&s, c).0.unwrap();
    let mut want = vec![a.file_name(), c.file_name()];
    want.sort();
    assert_eq!(w.cache_files(), want, "b was evicted");
    let paths: Vec<String> = w.requests(3).into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/a.bin", "/b.bin", "/c.bin"],
        "the hit of a asked nothing"
    );
    assert!(used() <= s.cache_max_bytes, "{} bytes", used());

    // An image larger than the whole cache is refused before any transfer.
    let before = w.requests(3).len();
    let (r, _) = fetch_now(&s, &w.image_at("image.bin"));
    let e = r.unwrap_err();
    assert_eq!(e.reason(), "larger_than_cache", "{e}");
    assert!(e.to_string().contains("cache_max_bytes"), "{e}");
    assert_eq!(w.nginx.requests().unwrap().len(), before);
    assert_eq!(w.cache_files(), want, "nothing evicted for it");
}

#[test]
fn redirects_are_followed_to_https_only_and_a_silent_server_times_out() {
    let extra = "        location = /moved { return 302 https://localhost:{port}/image.bin; }\n        location = /plain { return 302 http://localhost:{port}/image.bin; }\n        location = /loop { return 302 /loop; }\n";
    let Some(w) = World::start("fw-redirect", extra) else {
        return;
    };
    let (r, _) = fetch_now(&w.settings(), &w.image_at("moved"));
    assert_eq!(std::fs::read(r.unwrap()).unwrap(), w.image);
    std::fs::remove_dir_all(w.cache()).unwrap();

    let (r, _) = fetch_now(&w.settings(), &w.image_at("plain"));
    assert_eq!(r.unwrap_err().reason(), "not_https");
    let (r, _) = fetch_now(&w.settings(), &w.image_at("loop"));
    let e = r.unwrap_err();
    assert_eq!(e.reason(), "too_many_redirects", "{e}");
    let loops = |w: &World| {
        let n = w.nginx.requests().unwrap();
        n.iter().filter(|r| r.path == "/loop").count() as u32
    };
    wardgate_e2e::wait_for("the redirects in the access log", LOG_WAIT, || {
        Ok(loops(&w) > Settings::MAX_REDIRECTS)
    })
    .unwrap();
    assert_eq!(
        loops(&w),
        Settings::MAX_REDIRECTS + 1,
        "followed at most the bound"
    );

    // A server that accepts the connection and never answers the TLS handshake.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut img = w.image_at("image.bin");
    img.uris = vec![format!(
        "https://localhost:{}/image.bin",
        silent.local_addr().unwrap().port()
    )];
    let mut s = w.settings();
    s.connect_timeout = Duration::from_millis(500);
    let t = std::time::Instant::now();
    let (r, _) = fetch_now(&s, &img);
    assert_eq!(r.unwrap_err().reason(), "connect_timeout");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}
