//! [`TestEnv`]: one test's world — a temporary directory, a PKI, a real mosquitto, and the
//! configs, processes and databases of a gateway (`wardgate run`) and an upstream receiver
//! (`wardgate receive`).
//!
//! Layout of the directory:
//! ```text
//! pki/       ca.pem broker.pem/.key gateway.pem/.key receiver.pem/.key
//! broker/    mosquitto.conf mosquitto.stderr
//! gateway/   wardgate.toml store.db dev/<device> (pty links)
//! receiver/  receiver.toml upstream.db messages/*.cose
//! logs/      gateway.stderr receiver.stderr …
//! ```
//! When a test panics while a `TestEnv` is alive, its drop prints the tails of every log.

use crate::broker::{Mosquitto, MosquittoOptions, Pki};
use crate::db::{read_store, StoreSnapshot, Upstream};
use crate::process::{Output, Proc};
use crate::pty::Device;
use crate::{wait_for, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a fresh store starts numbering. The store seeds `seq` and batch numbers from the clock
/// (so a replacement store never reuses numbers upstream has seen): the first row gets
/// `seq + 1`, the first batch `batch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreSeed {
    /// `sqlite_sequence` of the fresh store: rows get `seq + 1`, `seq + 2`, …
    pub seq: u64,
    /// The first batch number.
    pub batch: u64,
}

/// Gateway id used by the tests.
pub const GATEWAY_ID: &str = "gw-e2e-01";
/// Site id used by the tests.
pub const SITE: &str = "st-e2e";
/// Ward id used by the tests.
pub const WARD: &str = "ward-9";

/// What goes into the gateway's `wardgate.toml`.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// `[uplink] ack`: `upstream` or `broker`.
    pub ack: &'static str,
    /// `[uplink] keepalive_s`.
    pub keepalive_s: u64,
    /// `[uplink] batch_interval_ms`.
    pub batch_interval_ms: u64,
    /// `[uplink] ack_timeout_s`.
    pub ack_timeout_s: u64,
    /// `[uplink] backoff_max_s`.
    pub backoff_max_s: u64,
    /// `[uplink] batch_max`.
    pub batch_max: usize,
    /// `[uplink] ca`.
    pub ca: PathBuf,
    /// `[uplink] cert`.
    pub cert: PathBuf,
    /// `[uplink] key`.
    pub key: PathBuf,
    /// `[[serial]]` devices (their links live in `gateway/dev/`).
    pub devices: Vec<Device>,
    /// `[uplink] cert_check_s` (absent: the default).
    pub cert_check_s: Option<u64>,
    /// `[uplink] max_inflight` (absent: the default).
    pub max_inflight: Option<usize>,
    /// `[uplink] port` when it is not the broker's own (e.g. a
    /// [`FaultProxy`](crate::fault_proxy::FaultProxy) in between).
    pub uplink_port: Option<u16>,
    /// `location` of a `[[serial]]` device, by device name (absent: none).
    pub locations: std::collections::BTreeMap<String, String>,
}

/// What goes into the receiver's `receiver.toml`.
#[derive(Clone, Debug)]
pub struct ReceiverOptions {
    /// `[mqtt] client_id` (its persistent session at the broker).
    pub client_id: String,
    /// `[receiver] share_group`.
    pub share_group: Option<String>,
    /// `[mqtt] keepalive_s`.
    pub keepalive_s: u64,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        ReceiverOptions {
            client_id: "e2e-receiver".into(),
            share_group: Some("receivers".into()),
            keepalive_s: 2,
        }
    }
}

/// One test's world. See the module documentation.
pub struct TestEnv {
    /// The `wardgate` executable under test.
    pub bin: PathBuf,
    /// The test's directory.
    pub dir: PathBuf,
    /// Its certificates.
    pub pki: Pki,
    /// The broker.
    pub broker: Mosquitto,
    /// `gateway/`.
    pub gw_dir: PathBuf,
    /// `receiver/`.
    pub rx_dir: PathBuf,
    /// `logs/`.
    pub log_dir: PathBuf,
    seed: std::sync::OnceLock<StoreSeed>,
    _tmp: tempfile::TempDir,
}

impl TestEnv {
    /// A new world with the usual broker (client certificates from the test CA required).
    pub fn new(name: &str, bin: &str) -> Result<TestEnv> {
        TestEnv::with_broker(name, bin, MosquittoOptions::from_pki)
    }

    /// A new world whose broker listener is configured by `opts` (e.g. a broker certificate from
    /// another CA).
    pub fn with_broker(
        name: &str,
        bin: &str,
        opts: impl FnOnce(&Pki) -> MosquittoOptions,
    ) -> Result<TestEnv> {
        let tmp = crate::temp_dir(name)?;
        let dir = tmp.path().to_path_buf();
        let pki = Pki::create(&dir.join("pki"), &format!("wardgate e2e CA ({name})"))?;
        let broker = Mosquitto::start(&dir.join("broker"), &opts(&pki))?;
        let (gw_dir, rx_dir, log_dir) =
            (dir.join("gateway"), dir.join("receiver"), dir.join("logs"));
        for d in [&gw_dir, &rx_dir, &log_dir] {
            std::fs::create_dir_all(d)?;
        }
        Ok(TestEnv {
            bin: bin.into(),
            dir,
            pki,
            broker,
            gw_dir,
            rx_dir,
            log_dir,
            seed: Default::default(),
            _tmp: tmp,
        })
    }

    /// The usual gateway settings: short timeouts, the test PKI, no devices.
    pub fn gateway_options(&self) -> GatewayOptions {
        GatewayOptions {
            ack: "upstream",
            keepalive_s: 2,
            batch_interval_ms: 50,
            ack_timeout_s: 3,
            backoff_max_s: 2,
            batch_max: 2000,
            ca: self.pki.ca_pem.clone(),
            cert: self.pki.gateway_cert.clone(),
            key: self.pki.gateway_key.clone(),
            devices: Vec::new(),
            cert_check_s: None,
            max_inflight: None,
            uplink_port: None,
            locations: Default::default(),
        }
    }

    /// Where the devices' pty links live.
    pub fn dev_dir(&self) -> PathBuf {
        self.gw_dir.join("dev")
    }

    /// The gateway's store file.
    pub fn store_path(&self) -> PathBuf {
        self.gw_dir.join("store.db")
    }

    /// Creates the gateway's store with wardgate's own code (as `wardgate run` would on first
    /// start) and records where its numbering starts. Done by [`Self::spawn_gateway`].
    pub fn init_store(&self) -> Result<StoreSeed> {
        if let Some(s) = self.seed.get() {
            return Ok(*s);
        }
        anyhow::ensure!(
            !self.store_path().exists(),
            "the store exists already; its seed is unknown"
        );
        let (store, report) = wardgate::store::Store::open(
            &self.store_path(),
            wardgate::store::StoreOptions::default(),
        )?;
        anyhow::ensure!(
            report.quarantined.is_none(),
            "fresh store quarantined: {report:?}"
        );
        drop(store);
        let snap = self.store()?;
        anyhow::ensure!(snap.queue.is_empty(), "a fresh store holds rows");
        let seed = StoreSeed {
            seq: snap.max_seq,
            batch: snap.next_batch,
        };
        Ok(*self.seed.get_or_init(|| seed))
    }

    /// Where the store started numbering ([`Self::init_store`] must have run).
    pub fn seed(&self) -> StoreSeed {
        *self
            .seed
            .get()
            .expect("the store is created by spawn_gateway / init_store")
    }

    /// Every seq the store has assigned when its highest is `max_seq`: `seed + 1 ..= max_seq`.
    pub fn accepted_seqs(&self, max_seq: u64) -> std::collections::BTreeSet<u64> {
        let first = self.seed().seq + 1;
        assert!(
            max_seq + 1 >= first && max_seq - self.seed().seq < 10_000_000,
            "implausible max seq {max_seq} for a store seeded at {}",
            self.seed().seq
        );
        (first..=max_seq).collect()
    }

    /// Reads the gateway's store (live, read-only).
    pub fn store(&self) -> Result<StoreSnapshot> {
        read_store(&self.store_path())
    }

    /// The receiver's output database.
    pub fn upstream(&self) -> Upstream {
        Upstream::new(&self.rx_dir.join("upstream.db"))
    }

    /// The receiver's raw message directory.
    pub fn raw_dir(&self) -> PathBuf {
        self.rx_dir.join("messages")
    }

    /// Raw messages captured by the receiver, sorted by name.
    pub fn raw_messages(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.raw_dir())
            .map(|r| {
                r.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "cose"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Writes `gateway/wardgate.toml` (relative paths, as an installer would) and returns it.
    pub fn write_gateway_config(&self, o: &GatewayOptions) -> Result<PathBuf> {
        let mut t = format!(
            r#"# wardgate e2e gateway
version = 1

[gateway]
id = "{GATEWAY_ID}"
site = "{SITE}"
ward = "{WARD}"

[store]
path = "store.db"
status_path = "status.json"
commit_interval_ms = 20

[uplink]
host = "127.0.0.1"
port = {port}
ca = "{ca}"
cert = "{cert}"
key = "{key}"
ack = "{ack}"
receiver_certs = ["{rx}"]
keepalive_s = {keepalive}
batch_max = {batch_max}
batch_interval_ms = {interval}
ack_timeout_s = {ack_timeout}
backoff_max_s = {backoff}
"#,
            port = o.uplink_port.unwrap_or(self.broker.port),
            ca = o.ca.display(),
            cert = o.cert.display(),
            key = o.key.display(),
            ack = o.ack,
            rx = self.pki.receiver_cert.display(),
            keepalive = o.keepalive_s,
            batch_max = o.batch_max,
            interval = o.batch_interval_ms,
            ack_timeout = o.ack_timeout_s,
            backoff = o.backoff_max_s,
        );
        if let Some(c) = o.cert_check_s {
            t.push_str(&format!("cert_check_s = {c}\n"));
        }
        if let Some(n) = o.max_inflight {
            t.push_str(&format!("max_inflight = {n}\n"));
        }
        for d in &o.devices {
            t.push_str(&format!(
                "\n[[serial]]\nname = \"{}\"\npath = \"dev/{}\"\nprotocol = \"{}\"\nmax_backoff_s = 1\n",
                d.name,
                d.name,
                d.protocol_name()
            ));
            if let Some(n) = d.numerics_every_s {
                t.push_str(&format!("numerics_every_s = {n}\n"));
            }
            if let Some(l) = o.locations.get(&d.name) {
                t.push_str(&format!("location = \"{l}\"\n"));
            }
        }
        let path = self.gw_dir.join("wardgate.toml");
        std::fs::write(&path, t)?;
        Ok(path)
    }

    /// Writes `receiver/receiver.toml` (SQLite output, raw messages kept) and returns it.
    pub fn write_receiver_config(&self, o: &ReceiverOptions) -> Result<PathBuf> {
        self.write_receiver_config_with_certs(o, std::slice::from_ref(&self.pki.gateway_cert))
    }

    /// [`Self::write_receiver_config`] accepting batches signed by any of `gateway_certs`.
    pub fn write_receiver_config_with_certs(
        &self,
        o: &ReceiverOptions,
        gateway_certs: &[PathBuf],
    ) -> Result<PathBuf> {
        let t = self.receiver_config_text(o, gateway_certs, "sqlite:upstream.db");
        let path = self.rx_dir.join("receiver.toml");
        std::fs::write(&path, t)?;
        Ok(path)
    }

    /// The text of a receiver's `receiver.toml` writing to `output` (raw copies in `messages`
    /// next to the config).
    fn receiver_config_text(
        &self,
        o: &ReceiverOptions,
        gateway_certs: &[PathBuf],
        output: &str,
    ) -> String {
        let share = o
            .share_group
            .as_ref()
            .map(|g| format!("share_group = \"{g}\"\n"))
            .unwrap_or_default();
        format!(
            r#"# wardgate e2e receiver
version = 1

[mqtt]
host = "127.0.0.1"
port = {port}
ca = "{ca}"
cert = "{cert}"
key = "{key}"
client_id = "{client_id}"
keepalive_s = {keepalive}

[receiver]
{share}gateway_certs = [{gw}]
output = "{output}"
raw_dir = "messages"
"#,
            port = self.broker.port,
            ca = self.pki.ca_pem.display(),
            cert = self.pki.receiver_cert.display(),
            key = self.pki.receiver_key.display(),
            client_id = o.client_id,
            keepalive = o.keepalive_s,
            gw = gateway_certs
                .iter()
                .map(|c| format!("\"{}\"", c.display()))
                .collect::<Vec<_>>()
                .join(", "),
        )
    }

    /// Starts one of several receivers, `receiver/NAME/` its directory (config, raw copies
    /// in `messages/`), `output` its `[receiver] output` (e.g. `sqlite:upstream.db`, relative to
    /// that directory, or a file shared with other receivers), `logs/NAME.stderr` its log; waits
    /// until it is subscribed.
    pub fn start_named_receiver(
        &self,
        name: &str,
        opts: &ReceiverOptions,
        output: &str,
    ) -> Result<Proc> {
        let dir = self.rx_dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let cfg = dir.join("receiver.toml");
        let certs = std::slice::from_ref(&self.pki.gateway_cert);
        std::fs::write(&cfg, self.receiver_config_text(opts, certs, output))?;
        let before = self.subscriptions(&opts.client_id);
        let p = Proc::spawn(
            name,
            &self.bin,
            [
                std::ffi::OsStr::new("receive"),
                "--config".as_ref(),
                cfg.as_os_str(),
            ],
            &dir,
            &self.log_dir,
            &[],
        )?;
        self.wait_subscribed(&opts.client_id, before + 1, Duration::from_secs(15))?;
        Ok(p)
    }

    /// How many times the broker logged `client_id` subscribing to the batch topic.
    fn subscriptions(&self, client_id: &str) -> usize {
        self.broker
            .log()
            .lines()
            .filter(|l| l.contains(client_id) && l.contains("wardgate/v1/+/+/+/batch"))
            .count()
    }

    /// Starts `wardgate run --config CONFIG` (stderr in `logs/gateway.stderr`).
    pub fn spawn_gateway(&self, config: &Path) -> Result<Proc> {
        self.spawn_gateway_with_env(config, &[])
    }

    /// [`Self::spawn_gateway`] with extra environment variables (e.g. `WARDGATE_LOG=debug`).
    pub fn spawn_gateway_with_env(&self, config: &Path, env: &[(&str, &str)]) -> Result<Proc> {
        self.init_store()?;
        Proc::spawn(
            "gateway",
            &self.bin,
            [
                std::ffi::OsStr::new("run"),
                "--config".as_ref(),
                config.as_os_str(),
            ],
            &self.gw_dir,
            &self.log_dir,
            env,
        )
    }

    /// Starts `wardgate receive --config CONFIG` (stderr in `logs/receiver.stderr`).
    pub fn spawn_receiver(&self, config: &Path) -> Result<Proc> {
        self.spawn_receiver_with_env(config, &[])
    }

    /// [`Self::spawn_receiver`] with extra environment variables.
    pub fn spawn_receiver_with_env(&self, config: &Path, env: &[(&str, &str)]) -> Result<Proc> {
        Proc::spawn(
            "receiver",
            &self.bin,
            [
                std::ffi::OsStr::new("receive"),
                "--config".as_ref(),
                config.as_os_str(),
            ],
            &self.rx_dir,
            &self.log_dir,
            env,
        )
    }

    /// Waits until the broker has logged `n` subscriptions of `client_id` to the batch topic
    /// (the receiver is then really listening, not just connected).
    pub fn wait_subscribed(&self, client_id: &str, n: usize, timeout: Duration) -> Result<()> {
        wait_for(
            &format!("{client_id} to subscribe ({n}×) at the broker"),
            timeout,
            || {
                Ok(self
                    .broker
                    .log()
                    .lines()
                    .filter(|l| l.contains(client_id) && l.contains("wardgate/v1/+/+/+/batch"))
                    .count()
                    >= n)
            },
        )
    }

    /// Starts a receiver with `opts` and waits until it is subscribed.
    pub fn start_receiver(&self, opts: &ReceiverOptions) -> Result<Proc> {
        self.start_receiver_full(opts, std::slice::from_ref(&self.pki.gateway_cert), &[])
    }

    /// [`Self::start_receiver`] with extra environment variables (e.g. a faked clock).
    pub fn start_receiver_with_env(
        &self,
        opts: &ReceiverOptions,
        env: &[(&str, &str)],
    ) -> Result<Proc> {
        self.start_receiver_full(opts, std::slice::from_ref(&self.pki.gateway_cert), env)
    }

    /// [`Self::start_receiver`] accepting batches signed by any of `gateway_certs`.
    pub fn start_receiver_with_certs(
        &self,
        opts: &ReceiverOptions,
        gateway_certs: &[PathBuf],
    ) -> Result<Proc> {
        self.start_receiver_full(opts, gateway_certs, &[])
    }

    fn start_receiver_full(
        &self,
        opts: &ReceiverOptions,
        gateway_certs: &[PathBuf],
        env: &[(&str, &str)],
    ) -> Result<Proc> {
        let cfg = self.write_receiver_config_with_certs(opts, gateway_certs)?;
        let before = self
            .broker
            .log()
            .lines()
            .filter(|l| l.contains(&opts.client_id) && l.contains("wardgate/v1/+/+/+/batch"))
            .count();
        let p = self.spawn_receiver_with_env(&cfg, env)?;
        self.wait_subscribed(&opts.client_id, before + 1, Duration::from_secs(15))?;
        Ok(p)
    }

    /// Runs `wardgate ARGS…` to completion (at most `timeout`) in the test directory.
    pub fn cli(
        &self,
        args: &[&std::ffi::OsStr],
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<Output> {
        let mut c = std::process::Command::new(&self.bin);
        c.args(args).current_dir(&self.dir);
        crate::process::run(c, stdin, timeout)
    }

    /// Waits until the receiver holds at least `want[device]` observations for every device.
    pub fn wait_delivered(&self, want: &[(String, u64)], timeout: Duration) -> Result<()> {
        let up = self.upstream();
        crate::wait_until(
            "the expected observations upstream",
            timeout,
            Duration::from_millis(100),
            || {
                let have = up.count_by_device()?;
                if want
                    .iter()
                    .all(|(d, n)| have.get(d).copied().unwrap_or(0) >= *n)
                {
                    Ok(Some(()))
                } else {
                    Err(crate::anyhow!("delivered so far: {have:?}; want {want:?}"))
                }
            },
        )
    }

    /// Waits until the gateway's store holds nothing unacknowledged and its highest seq has not
    /// moved for a second.
    pub fn wait_store_drained(&self, timeout: Duration) -> Result<StoreSnapshot> {
        // Drained and quiet: with send-at-once the queue is empty between two commits while a
        // device's last bytes are still being decoded, so the highest seq must also have stood
        // still for a second.
        let mut last: Option<(u64, std::time::Instant)> = None;
        crate::wait_until(
            "the gateway's store to drain",
            timeout,
            Duration::from_millis(100),
            || {
                let s = self.store()?;
                let since = match last {
                    Some((m, t)) if m == s.max_seq => t,
                    _ => {
                        let now = std::time::Instant::now();
                        last = Some((s.max_seq, now));
                        now
                    }
                };
                if s.queue.is_empty()
                    && s.unacked_batches == 0
                    && since.elapsed() >= Duration::from_secs(1)
                {
                    Ok(Some(s))
                } else {
                    Err(crate::anyhow!(
                        "store still holds {} rows in {} unacknowledged batches",
                        s.queue.len(),
                        s.unacked_batches
                    ))
                }
            },
        )
    }

    /// Waits until the chain is settled: the gateway's store holds nothing unacknowledged,
    /// upstream holds exactly the seqs `seed + 1 ..= max_seq` the store ever assigned, `max_seq` has
    /// not moved for `quiet` (so the last bytes a device sent were decoded and delivered too).
    pub fn wait_settled(&self, quiet: Duration, timeout: Duration) -> Result<StoreSnapshot> {
        let up = self.upstream();
        let mut last: Option<(u64, std::time::Instant)> = None;
        crate::wait_until(
            "the chain to settle (store drained, every accepted seq upstream)",
            timeout,
            Duration::from_millis(100),
            || {
                let s = self.store()?;
                let seqs = up.all_seqs()?;
                let seed = self.seed().seq;
                let complete = s.queue.is_empty()
                    && s.unacked_batches == 0
                    && seqs.len() as u64 == s.max_seq - seed
                    && seqs.first().copied().unwrap_or(seed + 1) == seed + 1
                    && seqs.last().copied().unwrap_or(s.max_seq) == s.max_seq;
                let now = std::time::Instant::now();
                match last {
                    Some((m, since)) if m == s.max_seq => {
                        if complete && now.duration_since(since) >= quiet {
                            return Ok(Some(s));
                        }
                    }
                    _ => last = Some((s.max_seq, now)),
                }
                Err(crate::anyhow!(
                "store: {} queued, {} unacknowledged batches, max seq {}; upstream holds {} seqs",
                s.queue.len(),
                s.unacked_batches,
                s.max_seq,
                seqs.len()
            ))
            },
        )
    }

    /// Verifies every raw message the receiver captured with `wardgate verify --cert
    /// gateway.pem FILES…` (which must exit 0) and returns the payloads, one per message.
    pub fn verify_raw_messages(&self) -> Result<Vec<serde_json::Value>> {
        let raw = self.raw_messages();
        anyhow::ensure!(
            !raw.is_empty(),
            "no raw messages captured in {}",
            self.raw_dir().display()
        );
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "verify".as_ref(),
            "--cert".as_ref(),
            self.pki.gateway_cert.as_os_str(),
        ];
        args.extend(raw.iter().map(|p| p.as_os_str()));
        let out = self.cli(&args, b"", Duration::from_secs(60))?;
        anyhow::ensure!(
            out.code() == Some(0),
            "wardgate verify exited {}: {}",
            out.status,
            out.stderr
        );
        let v: Vec<serde_json::Value> = out
            .stdout
            .lines()
            .map(serde_json::from_str)
            .collect::<std::result::Result<_, _>>()?;
        anyhow::ensure!(
            v.len() == raw.len(),
            "{} payloads printed for {} messages",
            v.len(),
            raw.len()
        );
        Ok(v)
    }

    /// The tails of every log of this test, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = format!("==== test directory {}\n", self.dir.display());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.log_dir)
            .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.push(self.broker.dir.join("mosquitto.stderr"));
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            if text.is_empty() {
                continue;
            }
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            out.push_str(&format!(
                "==== {} (last {} of {} lines)\n{}\n",
                f.display(),
                tail.len(),
                lines.len(),
                tail.join("\n")
            ));
        }
        out
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
    }
}
