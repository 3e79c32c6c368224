//! The firmware half of `wardgate demo` (issue 10 item 9): the upstream side of a firmware
//! roll-out, played on loopback against the real relay.
//!
//! 1. [`Upstream::prepare`]: a firmware CA and signer (`urn:wardgate-firmware:demo-release`),
//!    apart from the TLS CA; one signed MCUboot image per device class, made in Rust
//!    ([`wardgate_sim::mcuboot`], ECDSA P-256; the tests check such images with `imgtool
//!    verify`); an HTTPS image server ([`wardgate_sim::image_server`]) that requires the
//!    gateway's client certificate; and the `[firmware]` section for the demo config.
//! 2. [`Upstream::publish`]: once the observations are delivered, one signed job per class
//!    (COSE_Sign1, `docs/wire-format.md` "Firmware jobs") published **retained** on
//!    `…/firmware/job` by an MQTT client with the receiver's certificate, as upstream does. The
//!    devices are attached to simulated patients' recordings, so each job states why it may
//!    update a device that produced observations a moment ago (the policy's in-use override).
//! 3. [`Upstream::wait`]: the relay downloads, verifies and relays each image over SMP; the demo
//!    watches the executions in the gateway's store until every one has ended, then reads the
//!    version each device runs back from the device itself.

use crate::firmware::image::{self, ImageVersion};
use crate::firmware::job::{Job, JobImage, Message, Mode, Policy, Target};
use crate::signing::Signer;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wardgate_sim::broker::BrokerTls;
use wardgate_sim::image_server::ImageServer;
use wardgate_sim::{mcuboot, pki};

/// One device the demo updates.
pub struct Planned {
    /// Device id (`serial:NAME`, `ble:ADDRESS`).
    pub device: String,
    /// Its firmware class (`[firmware.classes]`).
    pub class: String,
    /// The version it runs before.
    pub from: String,
    /// The version of the image the job carries.
    pub to: String,
    /// Application bytes in the image.
    pub body_len: usize,
    /// Reads the version the device runs now (from the simulated device itself).
    pub running: Box<dyn Fn() -> Option<String> + Send + Sync>,
}

/// A finished update, one row of the firmware table.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Device id.
    pub device: String,
    /// Version before.
    pub from: String,
    /// Version of the job's image.
    pub to: String,
    /// The execution's last state (`done`, `failed`, …) and reason.
    pub state: String,
    /// Image file size, bytes.
    pub bytes: u64,
    /// From the job's publication to the end of the execution.
    pub elapsed: Duration,
    /// The version the device reports afterwards.
    pub running: Option<String>,
}

impl Outcome {
    /// Whether the device runs the job's version and the execution says `done`.
    pub fn ok(&self) -> bool {
        self.state == "done" && self.running.as_deref() == Some(self.to.as_str())
    }
}

/// The upstream side: signer, images, image server.
pub struct Upstream {
    signer: Signer,
    server: ImageServer,
    plans: Vec<(Planned, PathBuf, String)>,
    published: Option<Instant>,
}

/// A firmware job topic's retained publication needs an MQTT client; this is the one.
const PUBLISHER_ID: &str = "demo-firmware-upstream";

impl Upstream {
    /// Makes the firmware PKI, the images and the image server in `dir`; returns the upstream
    /// and the `[firmware]` section to append to the demo config.
    ///
    /// Errors: files cannot be written, the image server cannot start.
    pub async fn prepare(
        dir: &Path,
        tls_ca: &pki::Ca,
        plans: Vec<Planned>,
    ) -> anyhow::Result<(Upstream, String)> {
        let fw_ca = pki::Ca::new("wardgate demo firmware CA")?;
        pki::write_cert(&dir.join("firmware-ca.pem"), &fw_ca.cert_pem)?;
        let (cert, key) = fw_ca.leaf(
            "demo-release",
            &["urn:wardgate-firmware:demo-release"],
            false,
        )?;
        pki::write_cert(&dir.join("firmware-signer.pem"), &cert)?;
        pki::write_key(&dir.join("firmware-signer.key"), &key)?;
        let signer = Signer::from_files(
            &dir.join("firmware-signer.pem"),
            &dir.join("firmware-signer.key"),
        )?;

        let www = dir.join("images");
        std::fs::create_dir_all(&www)?;
        let image_key = mcuboot::SigningKey::generate()?;
        let mut with_files = Vec::new();
        let mut classes = String::new();
        for (i, p) in plans.into_iter().enumerate() {
            let version = mcuboot::Version::parse(&p.to)
                .ok_or_else(|| anyhow::anyhow!("demo image version `{}`", p.to))?;
            let bytes = mcuboot::build(
                &mcuboot::demo_body(p.body_len, i as u8),
                version,
                &image_key,
            )?;
            let name = format!("{}-{}.bin", p.class, p.to);
            std::fs::write(www.join(&name), &bytes)?;
            classes.push_str(&format!("{} = [\"{}\"]\n", p.class, p.device));
            with_files.push((p, www.join(&name), name));
        }

        let (server_cert, server_key) = tls_ca.leaf("demo image server", &["127.0.0.1"], true)?;
        let server = ImageServer::start(
            www,
            BrokerTls {
                cert_chain: vec![pem_cert(&server_cert)?],
                key: rustls_pki_types::pem::PemObject::from_pem_slice(server_key.as_bytes())?,
                client_ca: vec![pem_cert(&tls_ca.cert_pem)?],
            },
        )
        .await?;
        let config = format!(
            "\n# Firmware relay: jobs are trusted through the firmware CA (not the TLS CA).\n\
             [firmware]\nsigner_ca = \"firmware-ca.pem\"\n\n[firmware.classes]\n{classes}"
        );
        Ok((
            Upstream {
                signer,
                server,
                plans: with_files,
                published: None,
            },
            config,
        ))
    }

    /// Signs one job per planned device and publishes each retained on the gateway's job topic
    /// (MQTT over TLS to `broker_port` with the receiver's certificate).
    ///
    /// Errors: a job cannot be made, or the broker refuses the publication.
    pub async fn publish(
        &mut self,
        origin: &crate::batch::Origin,
        broker_port: u16,
        dir: &Path,
    ) -> anyhow::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let mut jobs = Vec::new();
        for (seq, (p, path, name)) in self.plans.iter().enumerate() {
            let mut f = std::fs::File::open(path)?;
            let info = image::parse_reader(&mut f)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let keyhash = info
                .key_hash()
                .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok());
            let job = Job {
                id: format!("{}-{}", p.class, p.to.replace('.', "-")),
                seq: seq as u64 + 1,
                issued: now,
                expires: now + 3600,
                target: Target {
                    class: p.class.clone(),
                    devices: Some(vec![p.device.clone()]),
                    from_versions: Some(vec![ImageVersion::parse(&p.from)
                        .map_err(|e| anyhow::anyhow!("demo version: {e}"))?]),
                },
                image: JobImage {
                    version: info.header.version,
                    size: info.file_size,
                    sha256: info.file_sha256,
                    mcuboot_hash: info.computed_hash,
                    keyhash,
                    index: 0,
                    uri: vec![self.server.url(name)],
                },
                policy: Policy {
                    not_in_use: false,
                    override_reason: Some(
                        "demo: recorded data replayed, no patient attached".into(),
                    ),
                    mode: Mode::TestConfirm,
                    swap_time_s: 30,
                    first_chunk_timeout_s: 40,
                    chunk_timeout_s: 5,
                    ..Policy::default()
                },
            };
            jobs.push(self.signer.sign(Message::Job(Box::new(job)).to_cbor()));
        }
        publish_retained(origin, broker_port, dir, jobs).await?;
        self.published = Some(Instant::now());
        Ok(())
    }

    /// Waits until every execution has ended (`done`, `failed`, `cancelled`) or `deadline`
    /// passes, then reads each device's running version.
    pub async fn wait(
        &self,
        store: &crate::Store,
        deadline: Duration,
    ) -> anyhow::Result<Vec<Outcome>> {
        let start = self.published.unwrap_or_else(Instant::now);
        let mut ended: std::collections::BTreeMap<String, (String, Duration)> = Default::default();
        loop {
            for e in store.firmware_executions(None)? {
                let end = matches!(e.state.as_str(), "done" | "failed" | "cancelled");
                if end && !ended.contains_key(&e.device) {
                    let state = match &e.reason {
                        Some(r) if e.state != "done" => format!("{} ({r})", e.state),
                        _ => e.state.clone(),
                    };
                    ended.insert(e.device.clone(), (state, start.elapsed()));
                }
            }
            if ended.len() >= self.plans.len() || start.elapsed() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rows = store.firmware_executions(None)?;
        Ok(self
            .plans
            .iter()
            .map(|(p, path, _)| {
                let (state, elapsed) = ended.get(&p.device).cloned().unwrap_or_else(|| {
                    let now = rows
                        .iter()
                        .find(|e| e.device == p.device)
                        .map(|e| match &e.reason {
                            Some(r) => format!("{} ({r}) at deadline", e.state),
                            None => format!("{} at deadline", e.state),
                        })
                        .unwrap_or_else(|| "no job accepted".into());
                    (now, start.elapsed())
                });
                Outcome {
                    device: p.device.clone(),
                    from: p.from.clone(),
                    to: p.to.clone(),
                    state,
                    bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
                    elapsed,
                    running: (p.running)(),
                }
            })
            .collect())
    }

    /// Bytes the image server sent (the downloads).
    pub fn bytes_served(&self) -> u64 {
        self.server.bytes_served()
    }
}

/// Prints the firmware table; returns whether every row is [`Outcome::ok`].
pub fn print_table(rows: &[Outcome]) -> bool {
    println!(
        "{:<22} {:>8} {:>8} {:>9} {:>7} {:>8}  result",
        "firmware", "from", "to", "bytes", "s", "running"
    );
    let mut ok = true;
    for r in rows {
        ok &= r.ok();
        println!(
            "{:<22} {:>8} {:>8} {:>9} {:>7.1} {:>8}  {}",
            r.device,
            r.from,
            r.to,
            r.bytes,
            r.elapsed.as_secs_f64(),
            r.running.as_deref().unwrap_or("?"),
            if r.ok() {
                "ok (downloaded, verified, uploaded, tested, confirmed)".to_owned()
            } else {
                format!("FAILED: {}", r.state)
            }
        );
    }
    ok
}

/// Publishes each message retained (QoS 1) on the gateway's job topic, one after the other,
/// waiting for each PUBACK.
async fn publish_retained(
    origin: &crate::batch::Origin,
    port: u16,
    dir: &Path,
    messages: Vec<Vec<u8>>,
) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
    let tls = crate::tls::client_config(
        &dir.join("ca.pem"),
        &dir.join("receiver.pem"),
        &dir.join("receiver.key"),
    )?;
    let mut opts = MqttOptions::new(PUBLISHER_ID, "127.0.0.1", port);
    opts.set_transport(Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls),
    ));
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut el) = AsyncClient::new(opts, 16);
    let topic = crate::mqtt::firmware_job(origin);
    let n = messages.len();
    for m in messages {
        client.publish(&topic, QoS::AtLeastOnce, true, m).await?;
    }
    let mut acked = 0;
    let until = Instant::now() + Duration::from_secs(20);
    while acked < n {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("publishing the firmware jobs: {e}"),
            Err(_) => anyhow::bail!("publishing the firmware jobs: no PUBACK within 20 s"),
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), el.poll()).await;
    Ok(())
}

/// One PEM certificate as DER (the demo's TLS servers: broker, image server).
pub(super) fn pem_cert(pem: &str) -> anyhow::Result<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    Ok(rustls_pki_types::CertificateDer::from_pem_slice(
        pem.as_bytes(),
    )?)
}
