//! A real mosquitto (2.x) on a random loopback port with a TLS listener that requires client
//! certificates, and the throw-away PKI it and the clients use ([`wardgate_sim::pki::Ca`]).
//!
//! The broker can be stopped and restarted on the **same port** (the outage test), killed, or
//! frozen with SIGSTOP (PUBACKs withheld while TCP still accepts bytes). Dropping the handle
//! kills it.

use crate::process::Proc;
use crate::{bail, free_port, port_accepts, wait_until, Context, Result};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wardgate_sim::pki::{write_cert, write_key, Ca};

/// The mosquitto executable: `$MOSQUITTO`, else `/usr/sbin/mosquitto`, else `mosquitto` on PATH.
pub fn mosquitto_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MOSQUITTO") {
        return p.into();
    }
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    "mosquitto".into()
}

/// A CA and the certificates of one test: the broker's (for 127.0.0.1), the gateway's and the
/// receiver's client certificates. Keys are written owner-only (0600).
pub struct Pki {
    /// The CA (can sign more leaves).
    pub ca: Ca,
    /// Directory holding the files.
    pub dir: PathBuf,
    /// `ca.pem`.
    pub ca_pem: PathBuf,
    /// `broker.pem` (serverAuth, SAN 127.0.0.1 and localhost).
    pub broker_cert: PathBuf,
    /// `broker.key`.
    pub broker_key: PathBuf,
    /// `gateway.pem` (clientAuth).
    pub gateway_cert: PathBuf,
    /// `gateway.key`.
    pub gateway_key: PathBuf,
    /// `receiver.pem` (clientAuth).
    pub receiver_cert: PathBuf,
    /// `receiver.key`.
    pub receiver_key: PathBuf,
}

impl Pki {
    /// A new CA named `name` and its leaves, written to `dir` (created).
    pub fn create(dir: &Path, name: &str) -> Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let ca = Ca::new(name)?;
        let ca_pem = dir.join("ca.pem");
        write_cert(&ca_pem, &ca.cert_pem)?;
        let mut pki = Pki {
            ca,
            dir: dir.to_path_buf(),
            ca_pem,
            broker_cert: PathBuf::new(),
            broker_key: PathBuf::new(),
            gateway_cert: PathBuf::new(),
            gateway_key: PathBuf::new(),
            receiver_cert: PathBuf::new(),
            receiver_key: PathBuf::new(),
        };
        (pki.broker_cert, pki.broker_key) =
            pki.leaf("broker", "e2e broker", &["127.0.0.1", "localhost"], true)?;
        (pki.gateway_cert, pki.gateway_key) = pki.leaf("gateway", "gw-e2e-01", &[], false)?;
        (pki.receiver_cert, pki.receiver_key) = pki.leaf("receiver", "e2e-receiver", &[], false)?;
        Ok(pki)
    }

    /// Signs a new leaf and writes `STEM.pem` and `STEM.key` (0600): `(cert, key)` paths.
    pub fn leaf(
        &self,
        stem: &str,
        common_name: &str,
        names: &[&str],
        server: bool,
    ) -> Result<(PathBuf, PathBuf)> {
        let (cert, key) = self.ca.leaf(common_name, names, server)?;
        let (c, k) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        );
        write_cert(&c, &cert)?;
        write_key(&k, &key)?;
        Ok((c, k))
    }
}

/// How to configure the listener.
#[derive(Clone, Debug)]
pub struct MosquittoOptions {
    /// CA file for verifying client certificates (`cafile`).
    pub cafile: PathBuf,
    /// The broker's certificate (`certfile`).
    pub certfile: PathBuf,
    /// The broker's key (`keyfile`).
    pub keyfile: PathBuf,
    /// `require_certificate` (true: clients without a certificate from `cafile` are refused).
    pub require_certificate: bool,
    /// Extra lines appended to the config.
    pub extra: String,
}

impl MosquittoOptions {
    /// The usual listener of a test: everything from `pki`, client certificates required.
    pub fn from_pki(pki: &Pki) -> MosquittoOptions {
        MosquittoOptions {
            cafile: pki.ca_pem.clone(),
            certfile: pki.broker_cert.clone(),
            keyfile: pki.broker_key.clone(),
            require_certificate: true,
            extra: String::new(),
        }
    }
}

/// A running mosquitto.
pub struct Mosquitto {
    /// The TLS port on 127.0.0.1 (kept across restarts).
    pub port: u16,
    /// Its directory (config and log).
    pub dir: PathBuf,
    conf: PathBuf,
    proc: Option<Proc>,
}

const START_TIMEOUT: Duration = Duration::from_secs(10);

impl Mosquitto {
    /// Writes a config into `dir` and starts mosquitto on a free random loopback port; returns
    /// once the port accepts connections. Retries with another port if the one picked was
    /// taken meanwhile.
    pub fn start(dir: &Path, opts: &MosquittoOptions) -> Result<Mosquitto> {
        std::fs::create_dir_all(dir)?;
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let conf = dir.join("mosquitto.conf");
            std::fs::write(&conf, config_text(port, opts))?;
            let mut m = Mosquitto {
                port,
                dir: dir.to_path_buf(),
                conf,
                proc: None,
            };
            match m.spawn() {
                Ok(()) => return Ok(m),
                Err(e) if m.log().contains("Address already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| crate::anyhow!("mosquitto did not start")))
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = mosquitto_bin();
        let mut p = Proc::spawn(
            "mosquitto",
            &bin,
            [std::ffi::OsStr::new("-c"), self.conf.as_os_str()],
            &self.dir,
            &self.dir,
            &[],
        )
        .with_context(|| {
            format!(
                "start mosquitto ({}); install it with `apt-get install mosquitto`",
                bin.display()
            )
        })?;
        let port = self.port;
        let r = wait_until(
            &format!("mosquitto to accept on 127.0.0.1:{port}"),
            START_TIMEOUT,
            Duration::from_millis(25),
            || {
                if port_accepts(port) {
                    return Ok(Some(()));
                }
                if let Some(st) = p.try_exit()? {
                    bail!("mosquitto exited ({st}):\n{}", p.stderr());
                }
                Ok(None)
            },
        );
        self.proc = Some(p);
        r
    }

    /// The broker's log so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.stderr")).unwrap_or_default()
    }

    /// Whether it is running.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    /// Stops it cleanly (SIGTERM, wait); the port stops accepting.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Kills it (SIGKILL): nothing is flushed or answered.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.kill9()?;
        }
        Ok(())
    }

    /// Starts it again on the same port with the same config (after [`Self::stop`] or
    /// [`Self::kill`]).
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("mosquitto is still running");
        }
        self.spawn()
    }

    /// Freezes it (SIGSTOP): connections stay open and the kernel still accepts bytes and
    /// connections, but nothing is answered — no CONNACK, no PUBACK, no PINGRESP.
    pub fn pause(&mut self) -> Result<()> {
        self.proc
            .as_mut()
            .context("mosquitto is not running")?
            .signal(Signal::SIGSTOP)
    }

    /// Thaws it (SIGCONT) after [`Self::pause`].
    pub fn resume(&mut self) -> Result<()> {
        self.proc
            .as_mut()
            .context("mosquitto is not running")?
            .signal(Signal::SIGCONT)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            // A stopped process would not die until continued.
            let _ = p.signal(Signal::SIGCONT);
        }
        // Proc's own Drop kills and reaps it.
    }
}

fn config_text(port: u16, o: &MosquittoOptions) -> String {
    format!(
        "# written by the wardgate e2e tests\n\
         per_listener_settings false\n\
         allow_anonymous true\n\
         persistence false\n\
         set_tcp_nodelay true\n\
         user root\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type information\n\
         log_type subscribe\n\
         connection_messages true\n\
         log_timestamp_format %H:%M:%S\n\
         max_queued_messages 10000\n\
         listener {port} 127.0.0.1\n\
         cafile {}\n\
         certfile {}\n\
         keyfile {}\n\
         require_certificate {}\n\
         {}\n",
        o.cafile.display(),
        o.certfile.display(),
        o.keyfile.display(),
        o.require_certificate,
        o.extra
    )
}
