//! A real nginx (the Debian package) serving a directory over HTTPS on a random loopback port,
//! with client certificates required (`ssl_verify_client on`), for the firmware download tests;
//! and [`CutProxy`], a TCP relay that cuts the connection after a number of bytes from the
//! server, to break a download in the middle.
//!
//! nginx runs in the foreground as one process (`daemon off; master_process off;`), with its
//! config, pid, error log, access log and temp paths in the test's directory; dropping the
//! handle kills it. The access log has one line per request in a fixed format that
//! [`Nginx::requests`] parses: status, method, path, the Range header, body bytes sent, and
//! the client certificate check.

use crate::process::Proc;
use crate::{bail, free_port, port_accepts, wait_until, Context, Result};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The nginx executable: `$NGINX`, else `/usr/sbin/nginx`, else `nginx` on PATH.
pub fn nginx_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NGINX") {
        return p.into();
    }
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    "nginx".into()
}

/// Whether nginx can be run here (`nginx -v` works).
pub fn available() -> bool {
    std::process::Command::new(nginx_bin())
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// How to configure the server.
#[derive(Clone, Debug)]
pub struct NginxOptions {
    /// The CA that client certificates must chain to (`ssl_client_certificate`).
    pub client_ca: PathBuf,
    /// The server's certificate (`ssl_certificate`).
    pub cert: PathBuf,
    /// The server's key (`ssl_certificate_key`).
    pub key: PathBuf,
    /// The directory served at `/`; everything under `/slow/` is the same directory at
    /// `slow_rate`.
    pub root: PathBuf,
    /// `limit_rate` of `/slow/` (nginx syntax, e.g. `256k`).
    pub slow_rate: String,
    /// Extra directives inside the `server` block (`{port}` is replaced by the port).
    pub extra: String,
}

/// One line of the access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// HTTP status sent.
    pub status: u16,
    /// Method.
    pub method: String,
    /// Path (`$uri`).
    pub path: String,
    /// The Range header, `None` when the request had none.
    pub range: Option<String>,
    /// Body bytes sent (`$body_bytes_sent`).
    pub body_bytes: u64,
    /// `$ssl_client_verify`: `SUCCESS`, `FAILED:reason` or `NONE`.
    pub client_verify: String,
}

/// A running nginx.
pub struct Nginx {
    /// The HTTPS port on 127.0.0.1.
    pub port: u16,
    /// Its directory (config, logs, temp paths).
    pub dir: PathBuf,
    _proc: Proc,
}

const START_TIMEOUT: Duration = Duration::from_secs(10);

fn config_text(dir: &Path, port: u16, o: &NginxOptions) -> String {
    let d = dir.display();
    let extra = o.extra.replace("{port}", &port.to_string());
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    log_format wardgate '$status|$request_method|$uri|$http_range|$body_bytes_sent|$ssl_client_verify';
    access_log {d}/access.log wardgate;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_verify_depth 2;
        root {root};
        location /slow/ {{
            alias {root}/;
            limit_rate {rate};
        }}
{extra}
    }}
}}
"#,
        cert = o.cert.display(),
        key = o.key.display(),
        ca = o.client_ca.display(),
        root = o.root.display(),
        rate = o.slow_rate,
    )
}

impl Nginx {
    /// Writes a config into `dir` and starts nginx on a free random loopback port; returns once
    /// the port accepts connections. Retries with another port if the one picked was taken.
    pub fn start(dir: &Path, opts: &NginxOptions) -> Result<Nginx> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        let bin = nginx_bin();
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, config_text(dir, port, opts))?;
            let mut p = Proc::spawn(
                "nginx",
                &bin,
                [
                    "-p".as_ref(),
                    dir.as_os_str(),
                    "-e".as_ref(),
                    dir.join("error.log").as_os_str(),
                    "-c".as_ref(),
                    conf.as_os_str(),
                ],
                dir,
                dir,
                &[],
            )
            .with_context(|| {
                format!(
                    "start nginx ({}); install it with `apt-get install nginx`",
                    bin.display()
                )
            })?;
            let r = wait_until(
                &format!("nginx to accept on 127.0.0.1:{port}"),
                START_TIMEOUT,
                Duration::from_millis(25),
                || {
                    if port_accepts(port) {
                        return Ok(Some(()));
                    }
                    if let Some(st) = p.try_exit()? {
                        bail!(
                            "nginx exited ({st}):\n{}\n{}",
                            p.stderr(),
                            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                        );
                    }
                    Ok(None)
                },
            );
            match r {
                Ok(()) => {
                    return Ok(Nginx {
                        port,
                        dir: dir.to_path_buf(),
                        _proc: p,
                    })
                }
                Err(e) if format!("{e:#}").contains("Address already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| crate::anyhow!("nginx did not start")))
    }

    /// `https://localhost:PORT/PATH` (`path` without the leading slash).
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}/{path}", self.port)
    }

    /// The error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Every request logged so far, in order.
    pub fn requests(&self) -> Result<Vec<Request>> {
        let text = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                if f.len() != 6 {
                    bail!("access log line not in our format: {l:?}");
                }
                Ok(Request {
                    status: f[0].parse().with_context(|| format!("status in {l:?}"))?,
                    method: f[1].into(),
                    path: f[2].into(),
                    range: (f[3] != "-").then(|| f[3].to_string()),
                    body_bytes: f[4].parse().with_context(|| format!("bytes in {l:?}"))?,
                    client_verify: f[5].into(),
                })
            })
            .collect()
    }
}

/// A TCP relay on a random loopback port to `127.0.0.1:upstream` that, on every connection,
/// closes both sides once `cut_after` bytes came from the server (TLS records and all): a
/// network cut in the middle of a response. Stops accepting when dropped.
pub struct CutProxy {
    /// The port to connect to.
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl CutProxy {
    /// Starts the relay.
    pub fn start(upstream: u16, cut_after: u64) -> Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) {
                            relay(client, server, cut_after);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(CutProxy { port, stop })
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(client: TcpStream, server: TcpStream, cut_after: u64) {
    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (mut c, mut s) = (client, server);
    // client → server, unlimited.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut s2);
        let _ = s2.shutdown(Shutdown::Write);
    });
    // server → client, cut after `cut_after` bytes.
    std::thread::spawn(move || {
        let mut sent = 0u64;
        let mut buf = [0u8; 4096];
        while sent < cut_after {
            let want = buf.len().min((cut_after - sent) as usize);
            match s.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n as u64;
                }
            }
        }
        let _ = c.shutdown(Shutdown::Both);
        let _ = s.shutdown(Shutdown::Both);
    });
}
