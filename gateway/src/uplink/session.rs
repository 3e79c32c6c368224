//! One MQTT session of the uplink, from CONNECT to its end: subscribe to acks, publish
//! `online` and the retained payloads, re-send unacknowledged batches, then the select loop
//! (events, batch ticks, wake-ups from the writer, certificate checks, shutdown). What each MQTT
//! event means is decided by the pure [`on_event`]; when to look for a batch to send, by the pure
//! [`fills_on`]; this file carries them out.
//!
//! Send at once when idle (adaptive batching, like group commit): every commit of the writer
//! wakes the session, which cuts a batch of whatever is committed while the in-flight window has
//! room, so a reading leaves without waiting for the batching tick. While the window is full,
//! committed rows accumulate in the store; the ack that opens the window cuts the next batch at
//! once, with everything pending up to `batch_max`. The tick (`batch_interval`) remains for
//! re-sends of overdue batches, a full store's retries and retained payloads.
//!
//! The reconnect loop around sessions (backoff, logging once per reason, certificate rotation)
//! is [`Uplink::run`](super::Uplink::run) in `mod.rs`.

use super::acks::{check_ack, AckPolicy, AckVerdict};
use super::error::SessionError;
use super::inflight::InflightTracker;
use super::{Uplink, BEAT_EVERY};
use crate::config::AckMode;
use crate::mqtt;
use crate::signing::Signer;
use crate::uplink::credentials::Credentials;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use wardgate_adapters::observation::now_ms;

/// Most distinct senders of refused acks logged individually (memory bound).
pub(super) const MAX_LOGGED_SENDERS: usize = 256;

/// Most acknowledged-but-undeleted batch numbers remembered while the store is full (memory
/// bound; one beyond it stays in the store and is re-sent, and acknowledged again, by the next
/// session).
const MAX_UNDELETED: usize = 4096;

/// Why the session looks at the store for a batch to send (see [`fills_on`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Trigger {
    /// The writer committed rows (its wake-up).
    Commit,
    /// Batches were acknowledged: the in-flight window has room again.
    Acked,
    /// The batching interval passed.
    Tick,
}

/// Why the last `fill` stopped putting batches on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FillEnd {
    /// The in-flight window was full: committed rows may be waiting for room.
    WindowFull,
    /// Nothing was pending (no re-send, no uncut row).
    Empty,
    /// The store is full or the MQTT client's request queue is: retried on the tick.
    Blocked,
}

/// Whether the session runs `fill` now, for `trigger`, given why the last fill stopped, whether
/// re-sends are queued and whether the session is draining for a certificate rotation (no new
/// batches then, only acks until the window is empty). Pure.
///
/// A commit or the tick always looks (the commit is what makes a reading leave at once when
/// idle). An ack looks only when the last fill stopped at a full window or re-sends wait: then
/// the ack's room is taken at once by the rows that piled up meanwhile; after an empty fill the
/// next commit wakes the session anyway, and a blocked one (full store, full request queue) is
/// retried on the tick, not on every ack.
pub(super) fn fills_on(
    trigger: Trigger,
    last: FillEnd,
    resend_waiting: bool,
    draining: bool,
) -> bool {
    if draining {
        return false;
    }
    match trigger {
        Trigger::Commit | Trigger::Tick => true,
        Trigger::Acked => last == FillEnd::WindowFull || resend_waiting,
    }
}

/// Withdraws the store's cut offer when the session ends, however it ends: a disconnected
/// uplink must not have commits cut batches (they would pile up as one-commit batches).
struct WithdrawCut<'a>(&'a crate::store::Store);

impl Drop for WithdrawCut<'_> {
    fn drop(&mut self) {
        self.0.withdraw_cut();
    }
}

/// How a session ended without an error.
pub(super) enum SessionEnd {
    /// Shutdown was requested.
    Shutdown,
    /// A new certificate and key are pending: reconnect now to present them.
    Rotate,
}

impl Uplink {
    /// One MQTT session with one certificate/key pair. `Ok` on shutdown or to rotate,
    /// `Err(reason)` when the session failed.
    pub(super) async fn session(
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
            st.down_since_ms = None;
        });
        let ack_topic = mqtt::ack(&s.origin);
        // One tracker per client: every QoS 1 publish of this session is recorded in it, in the
        // order it is queued, so that each batch is paired with its own packet id.
        let mut tracker = InflightTracker::new(s.ack);
        if s.ack == AckMode::Upstream {
            // Acks are never retained: clear whatever anyone left retained on our ack topic
            // (an empty retained publish deletes it at the broker) before subscribing, so a
            // junk or oversize retained message is not delivered at every connect. Where the
            // broker's ACL does not let us publish there, the broker drops this silently.
            client.try_publish(ack_topic.clone(), QoS::AtLeastOnce, true, Vec::new())?;
            tracker.other();
            client.try_subscribe(ack_topic.clone(), QoS::AtLeastOnce)?;
        }
        if self.firmware_jobs.is_some() {
            client.try_subscribe(mqtt::firmware_job(&s.origin), QoS::AtLeastOnce)?;
        }
        client.try_publish(mqtt::status(&s.origin), QoS::AtLeastOnce, true, "online")?;
        tracker.other();

        let mut published = std::collections::HashMap::new();
        self.publish_retained(&client, &signer, &mut tracker, &mut published)?;
        let mut retained_rx = self.retained.clone();
        let store = self.store.clone();
        // Every unacknowledged batch, those cut in a commit of an earlier session and never
        // handed out included; no commit cuts a batch until this session offers it.
        let mut resend: VecDeque<u64> = blocking(move || store.resume()).await?.into();
        let _withdraw = WithdrawCut(&self.store);
        // A session that starts with a backlog probes the link: its window opens at one batch
        // and widens by one per acknowledged batch, up to `max_inflight`. Bursting a whole
        // window of re-sends into a link that dies every few packets would lose every ack each
        // time and replay the same batches forever (FAILURES.md B04).
        let mut window = if resend.is_empty() { s.max_inflight } else { 1 };
        // Acknowledged batches a full store could not delete yet: retried every tick.
        let mut undeleted: Vec<u64> = Vec::new();
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
        // Why the last fill stopped: an ack fills again only after a full window (`fills_on`).
        let mut last_fill = FillEnd::Empty;
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
                            self.store.withdraw_cut();
                        }
                    }
                }
                _ = beat_tick.tick() => {}
                ev = el.poll() => {
                    let ev = ev.map_err(|e| SessionError::connection(&e))?;
                    let acked = self.handle_event(ev, &mut tracker, &ack_topic, &mut undeleted).await?;
                    window = (window + acked).min(s.max_inflight);
                    if acked > 0 && fills_on(Trigger::Acked, last_fill, !resend.is_empty(), draining.is_some()) {
                        last_fill = self.fill(&client, &signer, &mut tracker, &mut resend, &batch_topic, window).await?;
                    }
                }
                _ = tick.tick() => {
                    self.retry_undeleted(&mut undeleted).await?;
                    for n in tracker.overdue(Instant::now(), s.ack_timeout) {
                        if !resend.contains(&n) {
                            log::info!("batch {n} not acknowledged within {:?}; sending it again", s.ack_timeout);
                            resend.push_back(n);
                        }
                    }
                    if fills_on(Trigger::Tick, last_fill, !resend.is_empty(), draining.is_some()) {
                        last_fill = self.fill(&client, &signer, &mut tracker, &mut resend, &batch_topic, window).await?;
                    }
                    self.publish_retained(&client, &signer, &mut tracker, &mut published)?;
                }
                _ = self.wake.notified(), if fills_on(Trigger::Commit, last_fill, !resend.is_empty(), draining.is_some()) => {
                    last_fill = self.fill(&client, &signer, &mut tracker, &mut resend, &batch_topic, window).await?;
                }
                r = async {
                    match retained_rx.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if r.is_ok() {
                        self.publish_retained(&client, &signer, &mut tracker, &mut published)?;
                    } else {
                        retained_rx = None;
                    }
                }
                _ = shutdown.changed() => {
                    if client.try_publish(mqtt::status(&s.origin), QoS::AtLeastOnce, true, "offline").is_ok() {
                        tracker.other();
                    }
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
        undeleted: &mut Vec<u64>,
    ) -> Result<usize, SessionError> {
        if let (Event::Incoming(Packet::Publish(p)), Some(jobs)) = (&ev, &self.firmware_jobs) {
            if p.topic == mqtt::firmware_job(&self.settings.origin) {
                if !p.payload.is_empty() && jobs.try_send(p.payload.to_vec()).is_err() {
                    log::warn!("firmware job dropped: the relay is busy or stopped (a retained job comes again at the next connection)");
                }
                return Ok(0);
            }
        }
        match on_event(&ev, tracker, ack_topic, &self.settings.acks) {
            EventOutcome::Nothing => {}
            EventOutcome::Acknowledge(numbers) => {
                let n = numbers.len();
                for left in self.acknowledge(numbers).await? {
                    if undeleted.len() < MAX_UNDELETED && !undeleted.contains(&left) {
                        undeleted.push(left);
                    }
                }
                return Ok(n);
            }
            EventOutcome::Ignore(why) => log::warn!("{why}"),
            EventOutcome::Refused { sender, why } => self.refused_ack(sender, why),
            EventOutcome::ReceiverRefuses { receiver, reason } => {
                let text = format!("{receiver}: {reason}");
                let mut first = false;
                self.status.send_modify(|s| {
                    first = s.receiver_refusal.as_ref() != Some(&text);
                    s.receiver_refusal_since_ms.get_or_insert_with(now_ms);
                    s.receiver_refusal = Some(text.clone());
                });
                if first {
                    log::warn!(
                        "receiver {receiver} refuses this gateway's batches (they stay in the store and are re-sent): {reason}"
                    );
                }
            }
        }
        Ok(0)
    }

    /// Counts a refused ack; logs it the first time this sender is seen (at most
    /// [`MAX_LOGGED_SENDERS`] senders are remembered; later ones are counted only).
    fn refused_ack(&self, sender: String, why: String) {
        let first = {
            let mut seen = self
                .refused_senders
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            seen.len() < MAX_LOGGED_SENDERS && seen.insert(sender.clone())
        };
        if first {
            log::warn!(
                "refusing an ack from {sender} (deletes nothing; further ones from it are only \
                 counted): {why}"
            );
        }
        self.status.send_modify(|s| {
            s.acks_refused += 1;
            s.last_refused_ack = Some(format!("{sender}: {why}"));
        });
    }

    /// Deletes acknowledged batches from the store (stray or repeated numbers are harmless).
    /// Returns the numbers a full store could not delete yet (the delete needs room in the WAL):
    /// the caller retries them on the next tick. They are out of the in-flight window already,
    /// so nothing else would ever delete them in this session.
    async fn acknowledge(&self, numbers: Vec<u64>) -> Result<Vec<u64>, SessionError> {
        let store = self.store.clone();
        let (acked, left, full) = blocking(move || {
            let mut acked = 0;
            for (i, n) in numbers.iter().enumerate() {
                match store.ack(*n) {
                    Ok(true) => acked += 1,
                    Ok(false) => {}
                    Err(e) if e.is_full() => return Ok((acked, numbers[i..].to_vec(), Some(e))),
                    Err(e) => return Err(e),
                }
            }
            Ok((acked, Vec::new(), None))
        })
        .await?;
        if let Some(e) = full {
            self.store_full(&e);
        }
        self.status.send_modify(|s| {
            s.batches_acked += acked;
            if acked > 0 {
                s.receiver_refusal = None;
                s.receiver_refusal_since_ms = None;
            }
        });
        Ok(left)
    }

    /// Retries deleting acknowledged batches a full store refused (see [`Self::acknowledge`]).
    async fn retry_undeleted(&self, undeleted: &mut Vec<u64>) -> Result<(), SessionError> {
        if !undeleted.is_empty() {
            *undeleted = self.acknowledge(std::mem::take(undeleted)).await?;
        }
        Ok(())
    }

    /// Logs, once per spell, that the store is full for the uplink: no new batch can be cut and
    /// an acknowledged batch may not be deletable until space returns; the session goes on
    /// (re-sends and acks) instead of reconnecting. The writer reports what it refused.
    fn store_full(&self, e: &crate::store::StoreError) {
        if !self
            .store_full
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            log::error!(
                "uplink: {e}: no new batch is cut until space returns; batches already cut are \
                 still sent and acknowledged"
            );
        }
    }

    /// Puts batches on the wire until `window` (at most `max_inflight`) are in flight: re-sends
    /// first, then new batches of up to `batch_max` rows. Returns why it stopped.
    async fn fill(
        &self,
        client: &AsyncClient,
        signer: &Arc<Signer>,
        tracker: &mut InflightTracker,
        resend: &mut VecDeque<u64>,
        topic: &str,
        window: usize,
    ) -> Result<FillEnd, SessionError> {
        // A commit cuts a batch only while this session is idle with room (offered at `Empty`).
        self.store.withdraw_cut();
        self.fill_window(client, signer, tracker, resend, topic, window)
            .await
    }

    async fn fill_window(
        &self,
        client: &AsyncClient,
        signer: &Arc<Signer>,
        tracker: &mut InflightTracker,
        resend: &mut VecDeque<u64>,
        topic: &str,
        window: usize,
    ) -> Result<FillEnd, SessionError> {
        // Re-sending a batch that is already in flight does not widen the window.
        while tracker.len() < window || resend.front().is_some_and(|n| tracker.contains(*n)) {
            let store = self.store.clone();
            let signer = signer.clone();
            let origin = self.settings.origin.clone();
            let max = self.settings.batch_max;
            let encrypt = self.settings.encrypt.clone();
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
                Ok(batch.map(|b| {
                    (
                        b.number,
                        super::seal(encrypt.as_deref(), signer.sign(b.encode_payload(&origin))),
                    )
                }))
            })
            .await;
            let signed = match signed {
                // Cutting a batch writes to the store: on a full one, send what is cut already
                // and try again on the next tick, without ending the session.
                Err(SessionError::Store(e)) if e.is_full() => {
                    self.store_full(&e);
                    if let Some(n) = again {
                        resend.push_front(n);
                    }
                    return Ok(FillEnd::Blocked);
                }
                Ok(s) => {
                    if again.is_none() {
                        self.store_full
                            .store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                    s
                }
                Err(e) => return Err(e),
            };
            let Some((number, bytes)) = signed else {
                if again.is_some() {
                    continue; // acknowledged meanwhile
                }
                // Idle with room in the window: the writer's next commit cuts the batch in its
                // own transaction (one fsync before publish instead of two), unless the clock's
                // synchronisation changed since the poll above (its rows are corrected here,
                // right before a cut).
                let check = self
                    .clock
                    .clone()
                    .map(|c| -> crate::store::CutCheck { Arc::new(move || c.settled()) });
                self.store.offer_cut(self.settings.batch_max, check);
                return Ok(FillEnd::Empty);
            };
            if client
                .try_publish(topic, QoS::AtLeastOnce, false, bytes)
                .is_err()
            {
                // The client's request queue is full: try again on the next tick, same number.
                resend.push_front(number);
                return Ok(FillEnd::Blocked);
            }
            tracker.sent(number, Instant::now());
            self.status.send_modify(|s| {
                s.batches_sent += 1;
                if again.is_some() {
                    s.batches_resent += 1;
                }
            });
        }
        Ok(FillEnd::WindowFull)
    }

    /// Signs and publishes (retained, QoS 1) every entry of the set that differs from what this
    /// session published already; each queued publish takes its place in `tracker`'s line.
    fn publish_retained(
        &self,
        client: &AsyncClient,
        signer: &Signer,
        tracker: &mut InflightTracker,
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
            // Device status and firmware progress name devices: encrypted with the batches. The heartbeat carries
            // only counts, for monitoring that holds no receiver key: signed only.
            let signed = if suffix.starts_with("device/") || suffix.starts_with("firmware/") {
                self.settings.seal(signed)
            } else {
                signed
            };
            if client
                .try_publish(format!("{prefix}/{suffix}"), QoS::AtLeastOnce, true, signed)
                .is_err()
            {
                break; // request queue full: the rest goes on the next change or tick
            }
            tracker.other();
            published.insert(suffix, payload);
        }
        Ok(())
    }
}

/// What the session does about one MQTT event, decided by [`on_event`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum EventOutcome {
    /// Nothing (bookkeeping only, or an event the session does not act on).
    Nothing,
    /// Delete these batches from the store: they are acknowledged.
    Acknowledge(Vec<u64>),
    /// Something unexpected that acknowledges nothing (a packet id for an unrecorded publish):
    /// log it, carry on.
    Ignore(String),
    /// A message on the ack topic that is not an authenticated ack for us ([`check_ack`]):
    /// count it, log it once per sender, delete nothing.
    Refused {
        /// Who it claims to come from (`kid:…` or `unsigned`).
        sender: String,
        /// Why it is refused.
        why: String,
    },
    /// A trusted receiver refuses our batches (a signed refusal notice): show it in status,
    /// log it once per reason, delete nothing.
    ReceiverRefuses {
        /// The receiver.
        receiver: String,
        /// Its reason.
        reason: String,
    },
}

/// The session's event handling without I/O: updates the in-flight window for `ev` and says
/// what to do. `acks` says which acks are authentic ([`check_ack`]).
pub(super) fn on_event(
    ev: &Event,
    tracker: &mut InflightTracker,
    ack_topic: &str,
    acks: &AckPolicy,
) -> EventOutcome {
    match ev {
        Event::Outgoing(Outgoing::Publish(pkid)) if *pkid != 0 => {
            if tracker.outgoing_publish(*pkid) {
                EventOutcome::Nothing
            } else {
                EventOutcome::Ignore(format!(
                    "uplink: packet id {pkid} was written for a publish the session did not record; its PUBACK acknowledges nothing"
                ))
            }
        }
        Event::Incoming(Packet::PubAck(ack)) => match tracker.puback(ack.pkid) {
            Some(n) => EventOutcome::Acknowledge(vec![n]),
            None => EventOutcome::Nothing,
        },
        // An empty retained message is our own clearing of the topic (see `session`).
        Event::Incoming(Packet::Publish(p)) if p.topic == ack_topic && !p.payload.is_empty() => {
            match check_ack(acks, &p.payload) {
                AckVerdict::Accept(batches) => {
                    for n in &batches {
                        tracker.upstream_ack(*n);
                    }
                    EventOutcome::Acknowledge(batches)
                }
                AckVerdict::Refuse { sender, why } => EventOutcome::Refused { sender, why },
                AckVerdict::ReceiverRefuses { receiver, reason } => {
                    EventOutcome::ReceiverRefuses { receiver, reason }
                }
            }
        }
        _ => EventOutcome::Nothing,
    }
}

/// Runs a store operation on the blocking pool (SQLite may fsync).
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, SessionError> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SessionError::StoreTask(e.to_string()))??)
}

#[cfg(test)]
mod event_tests {
    use super::*;
    use crate::uplink::acks::test_support::{policy, receiver, signed_ack};
    use rumqttc::{PubAck, Publish};

    thread_local! {
        /// A receiver trusted by the policy of gateway `gw-1`, and that policy.
        static RX: (crate::signing::Signer, AckPolicy) = {
            let (cert, signer) = receiver("up-a");
            let p = policy("gw-1", &cert);
            (signer, p)
        };
    }

    fn on(ev: &Event, t: &mut InflightTracker) -> EventOutcome {
        RX.with(|(_, p)| on_event(ev, t, ACKS, p))
    }

    const ACKS: &str = "wardgate/v1/s/w/gw-1/ack";

    fn sent(t: &mut InflightTracker, number: u64, pkid: u16) {
        t.sent(number, Instant::now());
        let out = on(&Event::Outgoing(Outgoing::Publish(pkid)), t);
        assert_eq!(out, EventOutcome::Nothing);
    }

    fn puback(t: &mut InflightTracker, pkid: u16) -> EventOutcome {
        on(&Event::Incoming(Packet::PubAck(PubAck::new(pkid))), t)
    }

    fn ack_message(t: &mut InflightTracker, topic: &str, payload: Vec<u8>) -> EventOutcome {
        let p = Publish::new(topic, QoS::AtLeastOnce, payload);
        on(&Event::Incoming(Packet::Publish(p)), t)
    }

    fn ack(gateway: &str, batches: &[u64]) -> Vec<u8> {
        RX.with(|(signer, _)| signed_ack(signer, gateway, batches))
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

    /// Issue 9: the session's other QoS 1 publishes (`online`, retained statuses, heartbeat)
    /// are written between batches; in broker mode their PUBACKs must delete no batch.
    #[test]
    fn broker_mode_status_pubacks_between_batches_acknowledge_no_batch() {
        let mut t = InflightTracker::new(AckMode::Broker);
        let written = |t: &mut InflightTracker, pkid: u16| {
            let out = on(&Event::Outgoing(Outgoing::Publish(pkid)), t);
            assert_eq!(out, EventOutcome::Nothing);
        };
        t.other(); // online
        written(&mut t, 1);
        t.sent(20, Instant::now());
        t.other(); // device status, queued before batch 20 was written
        t.other(); // heartbeat
        written(&mut t, 2);
        written(&mut t, 3);
        written(&mut t, 4);
        sent(&mut t, 21, 5);
        for pkid in [1, 3, 4] {
            assert_eq!(puback(&mut t, pkid), EventOutcome::Nothing);
        }
        assert!(t.contains(20) && t.contains(21));
        assert_eq!(puback(&mut t, 5), EventOutcome::Acknowledge(vec![21]));
        assert_eq!(puback(&mut t, 2), EventOutcome::Acknowledge(vec![20]));
    }

    #[test]
    fn a_pkid_for_an_unrecorded_publish_is_reported() {
        let mut t = InflightTracker::new(AckMode::Broker);
        let out = on(&Event::Outgoing(Outgoing::Publish(1)), &mut t);
        assert!(
            matches!(out, EventOutcome::Ignore(ref why) if why.contains("packet id 1")),
            "{out:?}"
        );
        assert_eq!(puback(&mut t, 1), EventOutcome::Nothing);
    }

    #[test]
    fn a_qos0_publish_takes_no_batch_number() {
        let mut t = InflightTracker::new(AckMode::Broker);
        t.sent(5, Instant::now());
        // pkid 0 is a QoS 0 publish: it must not take the waiting batch's place in line.
        let out = on(&Event::Outgoing(Outgoing::Publish(0)), &mut t);
        assert_eq!(out, EventOutcome::Nothing);
        let out = on(&Event::Outgoing(Outgoing::Publish(3)), &mut t);
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
    fn unauthenticated_or_misaddressed_acks_are_refused_with_their_sender() {
        let mut t = InflightTracker::new(AckMode::Upstream);
        sent(&mut t, 10, 1);
        match ack_message(&mut t, ACKS, ack("gw-2", &[10])) {
            EventOutcome::Refused { sender, why } => {
                assert!(sender.starts_with("kid:"), "{sender}");
                assert!(why.contains("gw-2"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        match ack_message(&mut t, ACKS, b"not cbor".to_vec()) {
            EventOutcome::Refused { sender, .. } => assert_eq!(sender, "unsigned"),
            other => panic!("{other:?}"),
        }
        // The plain v1 ack anyone on the broker could publish (the forged-ack attack).
        let plain = crate::batch::Ack {
            v: 1,
            gateway: "gw-1".into(),
            batches: vec![10],
            refused: None,
        }
        .to_cbor();
        assert!(matches!(
            ack_message(&mut t, ACKS, plain),
            EventOutcome::Refused { .. }
        ));
        // Our own clearing of a retained message on the ack topic is no ack at all.
        assert_eq!(ack_message(&mut t, ACKS, vec![]), EventOutcome::Nothing);
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
            assert_eq!(on(&ev, &mut t), EventOutcome::Nothing);
        }
        assert!(t.contains(10));
    }
}
