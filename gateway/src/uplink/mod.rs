//! `Uplink`: store → sign → publish → delete on acknowledgement (DESIGN §4, §5).
//!
//! One MQTT session at a time over mutual TLS (rumqttc + rustls/ring). Each session starts from
//! the store: batches handed out earlier and not acknowledged are re-sent first, with their
//! numbers; then new batches are cut from pending rows, at most `max_inflight` unacknowledged at
//! once (a session that starts with such a backlog opens that window at one batch and widens it
//! by one per acknowledged batch, so a link that dies every few packets still moves the replay
//! forward). When a session fails (TLS refused, broker gone, keepalive missed), the MQTT client and
//! its in-memory state are dropped and a new one is made after a capped, jittered backoff: nothing
//! depends on rumqttc's session surviving.
//!
//! Acknowledgement: `broker` mode deletes a batch's rows on the broker's PUBACK for that batch's
//! packet; `upstream` mode on the receiver's ack message on `.../ack` (see [`crate::batch::Ack`]).
//! An unacknowledged batch is re-sent after `ack_timeout`. Delivery is at-least-once; the
//! receiver dedups on `(gateway, batch)` and `(gateway, seq)`.
//!
//! Certificate rotation ([`credentials`]): with [`Uplink::with_credentials`], the uplink checks
//! `uplink.cert`/`uplink.key`/`uplink.ca` before every connection attempt and every
//! `cert_check_s` during a session. A usable replacement is switched to — TLS config and COSE
//! signer together — only between sessions: when one is noticed during a session, the uplink
//! stops cutting new batches, waits until the batches in flight are acknowledged (at most
//! `ack_timeout`), disconnects cleanly and reconnects at once with the new pair (batches not yet
//! acknowledged are re-sent, re-signed with the new key, from the store). A replacement that
//! cannot be used leaves the active pair in use and raises an alert once per distinct content: a
//! warning in the log, an `error` event of device `gateway` upstream, and
//! [`UplinkStatus::credentials_error`] (shown by `wardgate status`).
//!
//! Files: `mod.rs` (settings, status, the reconnect loop [`Uplink::run`]), `session.rs` (one
//! session's select loop and the pure `on_event`), [`error`] (why a session failed), [`inflight`]
//! (pure pkid ↔ batch bookkeeping), [`credentials`] (rotation).

pub mod acks;
pub mod credentials;
pub mod error;
pub mod inflight;
#[cfg(test)]
mod model_tests;
mod session;

use crate::batch::Origin;
use crate::config::{AckMode, Config};
use crate::mqtt;
use crate::signing::Signer;
use crate::store::Store;
use credentials::{Check, Credentials};
use error::SessionError;
use rumqttc::{LastWill, MqttOptions, QoS, Transport};
use session::{blocking, SessionEnd};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use wardgate_adapters::retry::{Backoff, RESTART_INITIAL, UPLINK_STABLE};

/// Everything the uplink needs besides the store and the signer.
#[derive(Clone)]
pub struct UplinkSettings {
    /// Broker host (name in its certificate, or IP).
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Mutual-TLS client config.
    pub tls: Arc<rustls::ClientConfig>,
    /// MQTT client id (the gateway id).
    pub client_id: String,
    /// MQTT keepalive.
    pub keepalive: Duration,
    /// What counts as delivered.
    pub ack: AckMode,
    /// Most rows per batch.
    pub batch_max: usize,
    /// The tick: re-sends of overdue batches, a full store's retries, retained payloads (rows do
    /// not wait for it: every commit wakes the session).
    pub batch_interval: Duration,
    /// Most unacknowledged batches on the wire.
    pub max_inflight: usize,
    /// Re-send a batch not acknowledged within this time.
    pub ack_timeout: Duration,
    /// Reconnect backoff cap.
    pub backoff_max: Duration,
    /// Gateway, site, ward.
    pub origin: Origin,
    /// Which acks are authentic (upstream mode): this gateway's id and the trusted receivers.
    pub acks: acks::AckPolicy,
    /// Encrypt batches and device status to these receivers (`None`: signed only).
    pub encrypt: Option<Arc<crate::encryption::Encryptor>>,
}

impl UplinkSettings {
    /// Settings from a validated config, a TLS client config and the trusted receivers
    /// ([`receivers_from_config`]).
    pub fn from_config(
        c: &Config,
        tls: Arc<rustls::ClientConfig>,
        receivers: Arc<crate::signing::Verifier>,
    ) -> Self {
        UplinkSettings {
            host: c.uplink.host.get_ref().clone(),
            port: *c.uplink.port.get_ref(),
            tls,
            client_id: c.gateway.id.get_ref().clone(),
            keepalive: Duration::from_secs(c.uplink.keepalive_s),
            ack: c.uplink.ack,
            batch_max: c.uplink.batch_max,
            batch_interval: Duration::from_millis(c.uplink.batch_interval_ms),
            max_inflight: c.uplink.max_inflight,
            ack_timeout: Duration::from_secs(c.uplink.ack_timeout_s),
            backoff_max: Duration::from_secs(c.uplink.backoff_max_s),
            origin: Origin {
                gateway: c.gateway.id.get_ref().clone(),
                site: c.gateway.site.get_ref().clone(),
                ward: c.gateway.ward.get_ref().clone(),
            },
            acks: acks::AckPolicy {
                gateway: c.gateway.id.get_ref().clone(),
                receivers,
            },
            encrypt: None,
        }
    }

    /// With encryption to these receivers ([`encryptor_from_config`]).
    pub fn with_encryption(mut self, e: Option<crate::encryption::Encryptor>) -> Self {
        self.encrypt = e.map(Arc::new);
        self
    }

    /// The message to publish for a signed one: encrypted when encryption is on.
    pub fn seal(&self, signed: Vec<u8>) -> Vec<u8> {
        seal(self.encrypt.as_deref(), signed)
    }
}

/// A signed message, encrypted when there is an encryptor.
pub fn seal(encrypt: Option<&crate::encryption::Encryptor>, signed: Vec<u8>) -> Vec<u8> {
    match encrypt {
        Some(e) => e.encrypt(&signed),
        None => signed,
    }
}

/// The receivers batches and device status are encrypted to: `[uplink] receiver_certs` unless
/// `encrypt = false` (`None` then, or when none are listed). Errors name the files.
pub fn encryptor_from_config(
    c: &Config,
) -> Result<Option<crate::encryption::Encryptor>, crate::encryption::EncryptionError> {
    let on = c.uplink.encrypt.as_ref().map(|e| *e.get_ref());
    if on == Some(false) || (on.is_none() && c.uplink.receiver_certs.is_empty()) {
        return Ok(None);
    }
    let paths: Vec<_> = c
        .uplink
        .receiver_certs
        .iter()
        .map(|p| p.get_ref())
        .collect();
    crate::encryption::Encryptor::from_files(&paths).map(Some)
}

/// The receivers whose signed acks this gateway trusts: `[uplink] receiver_certs` (listed),
/// `receiver_ca` and `receiver_crl`. Errors name the file.
pub fn receivers_from_config(
    c: &Config,
) -> Result<crate::signing::Verifier, crate::signing::SigningError> {
    let u = &c.uplink;
    crate::signing::Verifier::from_files(
        u.receiver_certs.iter().map(|p| p.get_ref().as_path()),
        u.receiver_ca.iter().map(|p| p.get_ref().as_path()),
        u.receiver_crl.iter().map(|p| p.get_ref().as_path()),
    )
}

/// How often the uplink loop beats while it waits (connecting, backoff, idle session).
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// Proof that the uplink loop is turning, for the systemd watchdog (`system/sd_notify.rs`).
///
/// The uplink stores the time (Unix ms) on every iteration of its session loop and at least every
/// [`BEAT_EVERY`] while connecting or waiting out the reconnect backoff, so an unreachable broker
/// keeps it fresh and a hung task or runtime lets it go stale.
#[derive(Debug, Default)]
pub struct LoopBeat {
    last_ms: AtomicU64,
}

impl LoopBeat {
    /// Records a turn of the loop now.
    pub fn beat(&self) {
        self.last_ms
            .store(wardgate_adapters::observation::mono_ms(), Ordering::Relaxed);
    }

    /// Monotonic ms ([`wardgate_adapters::observation::mono_ms`]) of the last turn; 0 before
    /// the first.
    pub fn last_ms(&self) -> u64 {
        self.last_ms.load(Ordering::Relaxed)
    }
}

/// Latest payload (CBOR, unsigned) per topic suffix below `wardgate/v1/{site}/{ward}/{gateway}/`
/// (e.g. `device/ble:00:22:D0:90:4C:14/status`, `heartbeat`), which the uplink signs and
/// publishes retained: what changed while connected, everything at each new session. A new `Arc`
/// marks a change. Produced by the status loop (`health/`).
pub type RetainedSet = std::collections::BTreeMap<String, Arc<Vec<u8>>>;

/// What the uplink is doing, for status and heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UplinkStatus {
    /// Whether an MQTT session is up.
    pub connected: bool,
    /// The last connection error, in an installer's words (`None` while connected).
    pub last_error: Option<String>,
    /// Since when the uplink has been down (Unix ms, this gateway's clock): set at the first
    /// failure after a session (or at the first failed attempt after start), `None` while
    /// connected.
    #[serde(default)]
    pub down_since_ms: Option<i64>,
    /// Batches published (first sends and re-sends).
    pub batches_sent: u64,
    /// Of those, re-sends of an already numbered batch.
    pub batches_resent: u64,
    /// Batches acknowledged and deleted from the store.
    pub batches_acked: u64,
    /// Sessions that ended in an error.
    pub connection_failures: u64,
    /// The `kid` (hex) of the certificate and key in use (absent in older snapshots).
    #[serde(default)]
    pub kid: Option<String>,
    /// A replacement certificate or key on disk that was refused (the previous pair stays in
    /// use): file and problem. Cleared when a usable pair or the active one is on disk again.
    #[serde(default)]
    pub credentials_error: Option<String>,
    /// Certificate rotations applied since start.
    #[serde(default)]
    pub rotations: u64,
    /// Messages on the ack topic refused as not authentic (unsigned, untrusted signer, another
    /// gateway's, oversize): they deleted nothing. See [`acks`].
    #[serde(default)]
    pub acks_refused: u64,
    /// The last refused ack: sender and reason.
    #[serde(default)]
    pub last_refused_ack: Option<String>,
    /// A trusted receiver's signed refusal notice (`receiver: reason`): it refuses this
    /// gateway's batches (e.g. its certificate revoked or expired there). Cleared when an ack
    /// deletes a batch again.
    #[serde(default)]
    pub receiver_refusal: Option<String>,
    /// Since when (Unix ms) [`Self::receiver_refusal`] has been reported.
    #[serde(default)]
    pub receiver_refusal_since_ms: Option<i64>,
}

/// The MQTT sink. Run it with [`Uplink::run`].
pub struct Uplink {
    /// Source of truth for what is unsent.
    store: Arc<Store>,
    /// Signs batch payloads.
    signer: Arc<Signer>,
    /// Connection and batching parameters.
    settings: UplinkSettings,
    /// Published state for status/heartbeat.
    status: watch::Sender<UplinkStatus>,
    /// Woken by the pipeline when a full batch is pending, so batches need not wait for the tick.
    wake: Arc<Notify>,
    /// Beaten by the loop; read by the watchdog.
    beat: Arc<LoopBeat>,
    /// Retained status messages to publish (device status, heartbeat; filled by `health/`).
    retained: Option<watch::Receiver<RetainedSet>>,
    /// Where messages on `…/firmware/job` go (the firmware relay), when it runs.
    firmware_jobs: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    /// Polled before each new batch is cut (rows stamped before a clock sync are corrected first).
    clock: Option<Arc<crate::system::clock::SharedClock>>,
    /// The certificate and key files, watched for replacement (`None`: `signer` and
    /// `settings.tls` for the life of the uplink).
    credentials: Option<Credentials>,
    /// Senders of refused acks already logged (bounded: [`session::MAX_LOGGED_SENDERS`]).
    refused_senders: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The store refused a write for being full (logged once per spell).
    store_full: std::sync::atomic::AtomicBool,
}

impl Uplink {
    /// A new uplink. `wake` is notified by the writer after every commit: with room in the
    /// in-flight window the session then cuts a batch at once (send at once when idle).
    pub fn new(
        store: Arc<Store>,
        signer: Arc<Signer>,
        settings: UplinkSettings,
        wake: Arc<Notify>,
    ) -> (Uplink, watch::Receiver<UplinkStatus>) {
        let (status, rx) = watch::channel(UplinkStatus {
            kid: Some(hex::encode(signer.kid())),
            ..Default::default()
        });
        (
            Uplink {
                store,
                signer,
                settings,
                status,
                wake,
                beat: Arc::default(),
                retained: None,
                firmware_jobs: None,
                clock: None,
                credentials: None,
                refused_senders: Default::default(),
                store_full: Default::default(),
            },
            rx,
        )
    }

    /// Shares `beat` with the watchdog: the uplink loop beats it (see [`LoopBeat`]). Without
    /// this call the uplink beats a private one nobody reads.
    pub fn with_beat(mut self, beat: Arc<LoopBeat>) -> Uplink {
        self.beat = beat;
        self
    }

    /// Publishes the retained messages of `set` (filled by `health/`): all of them at every new
    /// session, then each one that changed, signed like the batches.
    /// Subscribes to `…/firmware/job` and hands every message on it to the firmware relay
    /// (`try_send`: a full channel drops it with a warning; upstream keeps jobs retained, so it
    /// comes again at the next connection). Verification is the relay's.
    pub fn with_firmware_jobs(mut self, jobs: tokio::sync::mpsc::Sender<Vec<u8>>) -> Uplink {
        self.firmware_jobs = Some(jobs);
        self
    }

    /// Publishes the retained messages of `set` (filled by `health/`): all of them at every new
    pub fn with_retained(mut self, set: watch::Receiver<RetainedSet>) -> Uplink {
        self.retained = Some(set);
        self
    }

    /// Polls `clock` before each new batch: a batch never carries rows stamped before a clock
    /// synchronisation that were not corrected yet.
    pub fn with_clock(mut self, clock: Arc<crate::system::clock::SharedClock>) -> Uplink {
        self.clock = Some(clock);
        self
    }

    /// Watches the certificate and key files for replacement (see the module documentation).
    /// Its active pair replaces the `signer` and `tls` given to [`Uplink::new`].
    pub fn with_credentials(mut self, credentials: Credentials) -> Uplink {
        let kid = credentials.active().kid();
        self.status.send_modify(|s| s.kid = Some(kid));
        self.credentials = Some(credentials);
        self
    }

    /// Checks the files and reports what it found: log, status, and for a refused replacement
    /// an `error` event of device `gateway` in the store (it travels upstream like any event).
    async fn check_credentials(&self, creds: &mut Credentials) {
        let active = creds.active().kid();
        match creds.check() {
            Check::Unchanged => {}
            Check::Pending { kid } => {
                log::info!(
                    "uplink certificate and key replaced on disk (new kid {kid}); switching to them at the next connection"
                );
                self.status.send_modify(|s| s.credentials_error = None);
            }
            Check::Restored => {
                log::info!(
                    "uplink certificate and key on disk are the ones in use again (kid {active})"
                );
                self.status.send_modify(|s| s.credentials_error = None);
            }
            Check::Refused { detail } => {
                let text = format!(
                    "replacement uplink certificate/key refused, still using the previous pair (kid {active}): {detail}"
                );
                log::warn!("{text}");
                self.status
                    .send_modify(|s| s.credentials_error = Some(detail.clone()));
                let store = self.store.clone();
                let ev = wardgate_adapters::AdapterEvent::Event(
                    wardgate_adapters::observation::DeviceEvent {
                        device: wardgate_adapters::observation::DeviceId("gateway".into()),
                        kind: wardgate_adapters::observation::EventKind::Error,
                        detail: text,
                        gateway_time: wardgate_adapters::observation::now_ms(),
                        presence: None,
                        firmware: None,
                    },
                );
                if let Err(e) = blocking(move || store.append(&[ev]).map(|_| ())).await {
                    log::error!("cannot record the refused certificate event: {e}");
                }
            }
        }
    }

    /// The pair for the next session: checks the files, switches to a pending pair.
    async fn pair_for_session(&mut self) -> (Arc<rustls::ClientConfig>, Arc<Signer>) {
        let Some(mut creds) = self.credentials.take() else {
            return (self.settings.tls.clone(), self.signer.clone());
        };
        self.check_credentials(&mut creds).await;
        if let Some(kid) = creds.apply_pending() {
            log::info!("uplink certificate rotated: new kid {kid}");
            self.status.send_modify(|s| {
                s.kid = Some(kid);
                s.rotations += 1;
            });
        }
        let p = creds.active().clone();
        self.credentials = Some(creds);
        (p.tls, p.signer)
    }

    /// Awaits `fut`, beating every [`BEAT_EVERY`] meanwhile: a long wait is not a hang.
    async fn beating<F: Future>(&self, fut: F) -> F::Output {
        tokio::pin!(fut);
        let mut tick = tokio::time::interval(BEAT_EVERY);
        loop {
            tokio::select! {
                out = &mut fut => return out,
                _ = tick.tick() => self.beat.beat(),
            }
        }
    }

    fn mqtt_options(&self, tls: Arc<rustls::ClientConfig>) -> MqttOptions {
        let s = &self.settings;
        let mut o = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
        o.set_keep_alive(s.keepalive)
            .set_clean_session(true)
            // In: acks only, bounded (a larger packet ends the session before it is read; our
            // ack topic is cleared of retained junk at each connect). Out: batches.
            .set_max_packet_size(acks::MAX_ACK_BYTES + 1024, 16 << 20)
            .set_inflight(u16::try_from(s.max_inflight.max(1)).unwrap_or(u16::MAX))
            .set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ))
            .set_last_will(LastWill::new(
                mqtt::status(&s.origin),
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
        o
    }

    /// Runs until `shutdown` becomes `true`: connect, deliver, reconnect with capped backoff.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(RESTART_INITIAL, self.settings.backoff_max);
        let mut last_logged: Option<SessionError> = None;
        loop {
            self.beat.beat();
            if *shutdown.borrow() {
                return;
            }
            let started = Instant::now();
            let (tls, signer) = self.pair_for_session().await;
            let mut creds = self.credentials.take();
            let ended = self
                .session(&mut shutdown, tls, signer, creds.as_mut())
                .await;
            self.credentials = creds;
            match ended {
                Ok(SessionEnd::Shutdown) => return,
                Ok(SessionEnd::Rotate) => {
                    backoff.reset();
                    last_logged = None;
                }
                Err(reason) => {
                    if started.elapsed() > UPLINK_STABLE {
                        backoff.reset();
                    }
                    let text = reason.to_string();
                    if !last_logged.as_ref().is_some_and(|l| l.same_reason(&reason)) {
                        log::warn!(
                            "uplink to {}:{}: {text}; buffering in the store and retrying",
                            self.settings.host,
                            self.settings.port
                        );
                        last_logged = Some(reason);
                    } else {
                        log::debug!("uplink still failing: {text}");
                    }
                    self.status.send_modify(|s| {
                        s.connected = false;
                        s.last_error = Some(text);
                        s.down_since_ms
                            .get_or_insert_with(wardgate_adapters::observation::now_ms);
                        s.connection_failures += 1;
                    });
                    let wait = backoff.next_delay();
                    let stop = self
                        .beating(async {
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => false,
                                _ = shutdown.changed() => true,
                            }
                        })
                        .await;
                    if stop {
                        return;
                    }
                }
            }
        }
    }
}
