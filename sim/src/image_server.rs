//! An HTTPS file server for firmware images (the demo's stand-in for the hospital's image
//! server, which the tests play with a real nginx): HTTP/1.1 over tokio-rustls, client
//! certificates required (the gateway downloads with its mutual-TLS identity, issue 10 item 4),
//! `GET /NAME` of the files in one directory, `Range: bytes=N-` answered with `206` and a
//! `Content-Range` (RFC 9110 §14) so an interrupted download resumes.
//!
//! Only plain file names (`[A-Za-z0-9._-]`, no leading dot) are served: no paths, no listing.
//! Other methods get `405`, unknown names `404`, a range beyond the end `416`, any other range
//! form `200` with the whole file (a server may ignore ranges, RFC 9110 §14.2).
//!
//! ```no_run
//! # async fn f(tls: wardgate_sim::broker::BrokerTls) -> std::io::Result<()> {
//! let server = wardgate_sim::image_server::ImageServer::start("/tmp/images".into(), tls).await?;
//! println!("{}", server.url("app-1.1.0.bin")); // https://127.0.0.1:PORT/app-1.1.0.bin
//! # Ok(()) }
//! ```

use crate::broker::{server_config, BrokerTls};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Largest file served, bytes (the simulated world's images are far smaller).
pub const MAX_FILE: u64 = 16 << 20;

/// A running image server on a random loopback port; stopped on drop.
pub struct ImageServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    served: Arc<AtomicU64>,
}

impl ImageServer {
    /// Serves the files of `dir` on `127.0.0.1:0` with `tls` (client certificates required).
    ///
    /// Errors: the TLS material is unusable, or the port cannot be bound.
    pub async fn start(dir: PathBuf, tls: BrokerTls) -> io::Result<ImageServer> {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(tls)?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        let dir = Arc::new(dir);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    _ = stopped.changed() => return,
                };
                let acceptor = acceptor.clone();
                let dir = dir.clone();
                let counter = counter.clone();
                let mut stop_conn = stopped.clone();
                tokio::spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(tcp),
                    )
                    .await
                    else {
                        return; // no client certificate, or not TLS: nothing to serve
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let dir = dir.clone();
                        let counter = counter.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(answer(&dir, &req, &counter).await)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop_conn.changed() => {}
                    }
                });
            }
        });
        Ok(ImageServer { addr, stop, served })
    }

    /// The server's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of file `name` (`https://127.0.0.1:PORT/NAME`).
    pub fn url(&self, name: &str) -> String {
        format!("https://{}/{name}", self.addr)
    }

    /// Body bytes sent so far (all responses).
    pub fn bytes_served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

/// `bytes=N-` or `bytes=N-M` → the first byte N and the last M (inclusive, if given).
fn parse_range(v: &HeaderValue) -> Option<(u64, Option<u64>)> {
    let spec = v.to_str().ok()?.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let first = a.trim().parse().ok()?;
    let last = match b.trim() {
        "" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first, last))
}

async fn answer<B>(
    dir: &std::path::Path,
    req: &Request<B>,
    counter: &AtomicU64,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let name = req.uri().path().trim_start_matches('/');
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !plain {
        return status(StatusCode::NOT_FOUND);
    }
    let path = dir.join(name);
    match tokio::fs::metadata(&path).await {
        Ok(m) if m.is_file() && m.len() <= MAX_FILE => {}
        _ => return status(StatusCode::NOT_FOUND),
    }
    let Ok(data) = tokio::fs::read(&path).await else {
        return status(StatusCode::NOT_FOUND);
    };
    let len = data.len() as u64;
    let range = req.headers().get(header::RANGE).and_then(parse_range);
    let (code, first, last) = match range {
        Some((first, _)) if first >= len => {
            let mut r = status(StatusCode::RANGE_NOT_SATISFIABLE);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
        Some((first, last)) => (
            StatusCode::PARTIAL_CONTENT,
            first,
            last.map_or(len - 1, |l| l.min(len - 1)).max(first),
        ),
        None => (StatusCode::OK, 0, len.saturating_sub(1)),
    };
    let body = if len == 0 {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(&data[first as usize..=last as usize])
    };
    counter.fetch_add(body.len() as u64, Ordering::Relaxed);
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = code;
    if code == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_writes_them() {
        let v = |s: &'static str| parse_range(&HeaderValue::from_static(s));
        assert_eq!(v("bytes=100-"), Some((100, None)));
        assert_eq!(v("bytes=0-99"), Some((0, Some(99))));
        assert_eq!(v("bytes=-5"), None);
        assert_eq!(v("items=1-"), None);
        assert_eq!(v("bytes=x-"), None);
    }
}
