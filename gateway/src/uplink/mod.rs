//! `Uplink`: store → sign → publish → delete on acknowledgement (DESIGN §4, §5).
//!
//! One MQTT session at a time over mutual TLS (rumqttc + rustls/ring). Each session starts from
//! the store: batches handed out earlier and not acknowledged are re-sent first, with their
//! numbers; then new batches are cut from pending rows, at most `max_inflight` unacknowledged at
//! once. When a session fails (TLS refused, broker gone, keepalive missed), the MQTT client and
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

pub mod credentials;
pub mod error;
pub mod inflight;

use crate::batch::{Ack, Origin};
use crate::config::{AckMode, Config};
use crate::mqtt;
use crate::signing::Signer;
use crate::store::Store;
use credentials::{Check, Credentials};
use error::SessionError;
use inflight::InflightTracker;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport};
use std::collections::VecDeque;
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
    /// Longest wait for a batch to fill.
    pub batch_interval: Duration,
    /// Most unacknowledged batches on the wire.
    pub max_inflight: usize,
    /// Re-send a batch not acknowledged within this time.
    pub ack_timeout: Duration,
    /// Reconnect backoff cap.
    pub backoff_max: Duration,
    /// Gateway, site, ward.
    pub origin: Origin,
}

impl UplinkSettings {
    /// Settings from a validated config and a TLS client config.
    pub fn from_config(c: &Config, tls: Arc<rustls::ClientConfig>) -> Self {
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
        }
    }
}

/// How often the uplink loop beats while it waits (connecting, backoff, idle session).
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// Proof that the uplink loop is turning, for the systemd watchdog ([`crate::system::sd_notify`]).
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
/// marks a change. Produced by `crate::health` (the status loop).
pub type RetainedSet = std::collections::BTreeMap<String, Arc<Vec<u8>>>;

/// What the uplink is doing, for status and heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UplinkStatus {
    /// Whether an MQTT session is up.
    pub connected: bool,
    /// The last connection error, in an installer's words (`None` while connected).
    pub last_error: Option<String>,
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
}

/// How a session ended without an error.
enum SessionEnd {
    /// Shutdown was requested.
    Shutdown,
    /// A new certificate and key are pending: reconnect now to present them.
    Rotate,
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
    /// Retained status messages to publish (device status, heartbeat; [`crate::health`]).
    retained: Option<watch::Receiver<RetainedSet>>,
    /// Polled before each new batch is cut (rows stamped before a clock sync are corrected first).
    clock: Option<Arc<crate::system::clock::SharedClock>>,
    /// The certificate and key files, watched for replacement (`None`: `signer` and
    /// `settings.tls` for the life of the uplink).
    credentials: Option<Credentials>,
}

impl Uplink {
    /// A new uplink. `wake` is notified by the writer when enough rows are pending.
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
                clock: None,
                credentials: None,
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

    /// Publishes the retained messages of `set` ([`crate::health`]): all of them at every new
    /// session, then each one that changed, signed like the batches.
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

    /// Signs and publishes (retained, QoS 1) every entry of the set that differs from what this
    /// session published already.
    fn publish_retained(
        &self,
        client: &AsyncClient,
        signer: &Signer,
        published: &mut std::collections::HashMap<String, Arc<Vec<u8>>>,
    ) -> Result<(), SessionError> {
        let Some(rx) = &self.retained else {
            return Ok(());
        };
        let set = rx.borrow().clone();
        let prefix = mqtt::prefix(&self.settings.origin);
        for (suffix, payload) in set {
            if published
                .get(&suffix)
                .is_some_and(|p| Arc::ptr_eq(p, &payload))
            {
                continue;
            }
            let signed = signer.sign(payload.as_ref().clone());
            if client
                .try_publish(format!("{prefix}/{suffix}"), QoS::AtLeastOnce, true, signed)
                .is_err()
            {
                break; // request queue full: the rest goes on the next change or tick
            }
            published.insert(suffix, payload);
        }
        Ok(())
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
            .set_max_packet_size(16 << 20, 16 << 20)
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

    /// One MQTT session with one certificate/key pair. `Ok` on shutdown or to rotate,
    /// `Err(reason)` when the session failed.
    async fn session(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        tls: Arc<rustls::ClientConfig>,
        signer: Arc<Signer>,
        mut creds: Option<&mut Credentials>,
    ) -> Result<SessionEnd, SessionError> {
        let s = &self.settings;
        let (client, mut el) = AsyncClient::new(self.mqtt_options(tls), 256);
        el.set_network_options(mqtt::network_options());
        let connect = async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(SessionError::connection(&e)),
                }
            }
        };
        let connect_timeout = s.keepalive.max(Duration::from_secs(5)) * 2;
        let connected = self
            .beating(async {
                tokio::select! {
                    r = tokio::time::timeout(connect_timeout, connect) => Some(r),
                    _ = shutdown.changed() => None,
                }
            })
            .await;
        match connected {
            Some(Ok(r)) => r?,
            Some(Err(_)) => return Err(SessionError::ConnackTimeout),
            None => return Ok(SessionEnd::Shutdown),
        }
        log::info!(
            "uplink connected to {}:{} ({} ack mode, kid {})",
            s.host,
            s.port,
            match s.ack {
                AckMode::Upstream => "upstream",
                AckMode::Broker => "broker",
            },
            hex::encode(signer.kid())
        );
        self.status.send_modify(|st| {
            st.connected = true;
            st.last_error = None;
        });
        let ack_topic = mqtt::ack(&s.origin);
        if s.ack == AckMode::Upstream {
            client.try_subscribe(ack_topic.clone(), QoS::AtLeastOnce)?;
        }
        client.try_publish(mqtt::status(&s.origin), QoS::AtLeastOnce, true, "online")?;

        let mut published = std::collections::HashMap::new();
        self.publish_retained(&client, &signer, &mut published)?;
        let mut retained_rx = self.retained.clone();
        let mut tracker = InflightTracker::new(s.ack);
        let store = self.store.clone();
        let mut resend: VecDeque<u64> = blocking(move || store.unacked_batches()).await?.into();
        let batch_topic = mqtt::batch(&s.origin);
        let mut tick = tokio::time::interval(s.batch_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat_tick = tokio::time::interval(BEAT_EVERY);
        beat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let check_every = creds
            .as_ref()
            .and_then(|c| c.check_every)
            .unwrap_or(Duration::from_secs(3600));
        let mut cert_tick =
            tokio::time::interval_at(tokio::time::Instant::now() + check_every, check_every);
        cert_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set when a new pair is pending: no new batches; reconnect once the window is empty.
        let mut draining: Option<Instant> = None;
        loop {
            self.beat.beat();
            if let Some(since) = draining {
                if tracker.is_empty() || since.elapsed() > s.ack_timeout {
                    log::info!("uplink reconnecting to present the new certificate");
                    let _ = client.try_disconnect();
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Ok(ev) = el.poll().await {
                            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                                break;
                            }
                        }
                    })
                    .await;
                    return Ok(SessionEnd::Rotate);
                }
            }
            tokio::select! {
                _ = cert_tick.tick(), if draining.is_none() && creds.as_ref().is_some_and(|c| c.check_every.is_some()) => {
                    if let Some(c) = creds.as_deref_mut() {
                        self.check_credentials(c).await;
                        if c.has_pending() {
                            log::info!("uplink: new certificate pending; reconnecting once the {} batches in flight are acknowledged", tracker.len());
                            draining = Some(Instant::now());
                        }
                    }
                }
                _ = beat_tick.tick() => {}
                ev = el.poll() => {
                    let ev = ev.map_err(|e| SessionError::connection(&e))?;
                    self.handle_event(ev, &mut tracker, &ack_topic).await?;
                }
                _ = tick.tick() => {
                    for n in tracker.overdue(Instant::now(), s.ack_timeout) {
                        if !resend.contains(&n) {
                            log::info!("batch {n} not acknowledged within {:?}; sending it again", s.ack_timeout);
                            resend.push_back(n);
                        }
                    }
                    if draining.is_none() {
                        self.fill(&client, &signer, &mut tracker, &mut resend, &batch_topic).await?;
                    }
                    self.publish_retained(&client, &signer, &mut published)?;
                }
                _ = self.wake.notified(), if draining.is_none() => self.fill(&client, &signer, &mut tracker, &mut resend, &batch_topic).await?,
                r = async {
                    match retained_rx.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if r.is_ok() {
                        self.publish_retained(&client, &signer, &mut published)?;
                    } else {
                        retained_rx = None;
                    }
                }
                _ = shutdown.changed() => {
                    let _ = client.try_publish(mqtt::status(&s.origin), QoS::AtLeastOnce, true, "offline");
                    let _ = client.try_disconnect();
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Ok(ev) = el.poll().await {
                            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) { break; }
                        }
                    }).await;
                    return Ok(SessionEnd::Shutdown);
                }
            }
        }
    }

    async fn handle_event(
        &self,
        ev: Event,
        tracker: &mut InflightTracker,
        ack_topic: &str,
    ) -> Result<(), SessionError> {
        match on_event(&ev, tracker, ack_topic, &self.settings.origin.gateway) {
            EventOutcome::Nothing => {}
            EventOutcome::Acknowledge(numbers) => self.acknowledge(numbers).await?,
            EventOutcome::Ignore(why) => log::warn!("{why}"),
        }
        Ok(())
    }

    /// Deletes acknowledged batches from the store (stray or repeated numbers are harmless).
    async fn acknowledge(&self, numbers: Vec<u64>) -> Result<(), SessionError> {
        let store = self.store.clone();
        let acked = blocking(move || {
            let mut acked = 0;
            for n in numbers {
                if store.ack(n)? {
                    acked += 1;
                }
            }
            Ok(acked)
        })
        .await?;
        self.status.send_modify(|s| s.batches_acked += acked);
        Ok(())
    }

    /// Puts batches on the wire until `max_inflight`: re-sends first, then new batches.
    async fn fill(
        &self,
        client: &AsyncClient,
        signer: &Arc<Signer>,
        tracker: &mut InflightTracker,
        resend: &mut VecDeque<u64>,
        topic: &str,
    ) -> Result<(), SessionError> {
        // Re-sending a batch that is already in flight does not widen the window.
        while tracker.len() < self.settings.max_inflight
            || resend.front().is_some_and(|n| tracker.contains(*n))
        {
            let store = self.store.clone();
            let signer = signer.clone();
            let origin = self.settings.origin.clone();
            let max = self.settings.batch_max;
            let again = resend.pop_front();
            let clock = self.clock.clone();
            let signed = blocking(move || {
                let batch = match again {
                    Some(n) => store.load_batch(n)?,
                    None => {
                        if let Some(c) = &clock {
                            c.poll(&store);
                        }
                        store.next_batch(max)?
                    }
                };
                Ok(batch.map(|b| (b.number, signer.sign(b.encode_payload(&origin)))))
            })
            .await?;
            let Some((number, bytes)) = signed else {
                if again.is_some() {
                    continue; // acknowledged meanwhile
                }
                break;
            };
            if client
                .try_publish(topic, QoS::AtLeastOnce, false, bytes)
                .is_err()
            {
                // The client's request queue is full: try again on the next tick, same number.
                resend.push_front(number);
                break;
            }
            tracker.sent(number, Instant::now());
            self.status.send_modify(|s| {
                s.batches_sent += 1;
                if again.is_some() {
                    s.batches_resent += 1;
                }
            });
        }
        Ok(())
    }
}

/// What the session does about one MQTT event, decided by [`on_event`].
#[derive(Debug, PartialEq, Eq)]
enum EventOutcome {
    /// Nothing (bookkeeping only, or an event the session does not act on).
    Nothing,
    /// Delete these batches from the store: they are acknowledged.
    Acknowledge(Vec<u64>),
    /// A message on the ack topic that is not for us or does not parse: log it, carry on.
    Ignore(String),
}

/// The session's event handling without I/O: updates the in-flight window for `ev` and says
/// what to do. `gateway` is this gateway's id (acks name the gateway they are for).
fn on_event(
    ev: &Event,
    tracker: &mut InflightTracker,
    ack_topic: &str,
    gateway: &str,
) -> EventOutcome {
    match ev {
        Event::Outgoing(Outgoing::Publish(pkid)) if *pkid != 0 => {
            tracker.outgoing_publish(*pkid);
            EventOutcome::Nothing
        }
        Event::Incoming(Packet::PubAck(ack)) => match tracker.puback(ack.pkid) {
            Some(n) => EventOutcome::Acknowledge(vec![n]),
            None => EventOutcome::Nothing,
        },
        Event::Incoming(Packet::Publish(p)) if p.topic == ack_topic => {
            match Ack::from_cbor(&p.payload) {
                Ok(ack) if ack.gateway == gateway => {
                    for n in &ack.batches {
                        tracker.upstream_ack(*n);
                    }
                    EventOutcome::Acknowledge(ack.batches)
                }
                Ok(ack) => EventOutcome::Ignore(format!(
                    "ignoring an ack for gateway {} on our ack topic",
                    ack.gateway
                )),
                Err(e) => EventOutcome::Ignore(format!("ignoring a malformed ack message: {e}")),
            }
        }
        _ => EventOutcome::Nothing,
    }
}

/// TCP options for MQTT connections: no Nagle delay (a batch or an ack must not wait 40 ms for
/// a delayed ACK on the peer).
pub fn network_options() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n.set_connection_timeout(10);
    n
}

/// Runs a store operation on the blocking pool (SQLite may fsync).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, SessionError> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SessionError::StoreTask(e.to_string()))??)
}

#[cfg(test)]
mod event_tests {
    use super::*;
    use rumqttc::{PubAck, Publish};

    const ACKS: &str = "wardgate/v1/s/w/gw-1/ack";

    fn sent(t: &mut InflightTracker, number: u64, pkid: u16) {
        t.sent(number, Instant::now());
        let out = on_event(&Event::Outgoing(Outgoing::Publish(pkid)), t, ACKS, "gw-1");
        assert_eq!(out, EventOutcome::Nothing);
    }

    fn puback(t: &mut InflightTracker, pkid: u16) -> EventOutcome {
        on_event(
            &Event::Incoming(Packet::PubAck(PubAck::new(pkid))),
            t,
            ACKS,
            "gw-1",
        )
    }

    fn ack_message(t: &mut InflightTracker, topic: &str, payload: Vec<u8>) -> EventOutcome {
        let p = Publish::new(topic, QoS::AtLeastOnce, payload);
        on_event(&Event::Incoming(Packet::Publish(p)), t, ACKS, "gw-1")
    }

    fn ack(gateway: &str, batches: &[u64]) -> Vec<u8> {
        Ack {
            v: 1,
            gateway: gateway.into(),
            batches: batches.to_vec(),
        }
        .to_cbor()
    }

    #[test]
    fn broker_mode_acknowledges_a_batch_on_its_puback() {
        let mut t = InflightTracker::new(AckMode::Broker);
        sent(&mut t, 41, 7);
        sent(&mut t, 42, 8);
        assert_eq!(puback(&mut t, 8), EventOutcome::Acknowledge(vec![42]));
        assert!(t.contains(41) && !t.contains(42));
        // A repeated or unknown PUBACK acknowledges nothing.
        assert_eq!(puback(&mut t, 8), EventOutcome::Nothing);
        assert_eq!(puback(&mut t, 99), EventOutcome::Nothing);
        assert_eq!(puback(&mut t, 7), EventOutcome::Acknowledge(vec![41]));
        assert!(t.is_empty());
    }

    #[test]
    fn a_qos0_publish_takes_no_batch_number() {
        let mut t = InflightTracker::new(AckMode::Broker);
        t.sent(5, Instant::now());
        // pkid 0 is a QoS 0 publish: it must not take the waiting batch's place in line.
        let out = on_event(&Event::Outgoing(Outgoing::Publish(0)), &mut t, ACKS, "gw-1");
        assert_eq!(out, EventOutcome::Nothing);
        let out = on_event(&Event::Outgoing(Outgoing::Publish(3)), &mut t, ACKS, "gw-1");
        assert_eq!(out, EventOutcome::Nothing);
        assert_eq!(puback(&mut t, 3), EventOutcome::Acknowledge(vec![5]));
    }

    #[test]
    fn upstream_mode_waits_for_the_upstream_ack_not_the_puback() {
        let mut t = InflightTracker::new(AckMode::Upstream);
        sent(&mut t, 10, 1);
        sent(&mut t, 11, 2);
        assert_eq!(puback(&mut t, 1), EventOutcome::Nothing);
        assert!(t.contains(10), "a PUBACK is not delivery upstream");
        assert_eq!(
            ack_message(&mut t, ACKS, ack("gw-1", &[10, 11, 3])),
            EventOutcome::Acknowledge(vec![10, 11, 3]),
            "every number is deleted, also one from an earlier session (3)"
        );
        assert!(t.is_empty());
    }

    #[test]
    fn acks_for_another_gateway_or_malformed_ones_are_ignored_with_a_reason() {
        let mut t = InflightTracker::new(AckMode::Upstream);
        sent(&mut t, 10, 1);
        match ack_message(&mut t, ACKS, ack("gw-2", &[10])) {
            EventOutcome::Ignore(why) => assert!(why.contains("gw-2"), "{why}"),
            other => panic!("{other:?}"),
        }
        match ack_message(&mut t, ACKS, b"not cbor".to_vec()) {
            EventOutcome::Ignore(why) => assert!(why.contains("malformed"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(t.contains(10), "nothing acknowledged");
    }

    #[test]
    fn messages_on_other_topics_and_other_events_change_nothing() {
        let mut t = InflightTracker::new(AckMode::Upstream);
        sent(&mut t, 10, 1);
        assert_eq!(
            ack_message(&mut t, "wardgate/v1/s/w/gw-2/ack", ack("gw-1", &[10])),
            EventOutcome::Nothing
        );
        for ev in [
            Event::Incoming(Packet::PingResp),
            Event::Outgoing(Outgoing::PingReq),
            Event::Outgoing(Outgoing::Subscribe(4)),
        ] {
            assert_eq!(on_event(&ev, &mut t, ACKS, "gw-1"), EventOutcome::Nothing);
        }
        assert!(t.contains(10));
    }
}
