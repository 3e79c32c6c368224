//! `wardgate receive`: the upstream side (DESIGN §5). Subscribes to batches (optionally through a
//! shared subscription so several receivers split the load), verifies each COSE_Sign1 against the
//! configured gateway certificates, dedups on `(gateway, seq)` and `(gateway, batch)`, writes
//! durably (SQLite with `synchronous=FULL`, or JSON lines with `fsync`), and only then publishes
//! the ack on `wardgate/v1/{site}/{ward}/{gateway}/ack` and PUBACKs the message.
//!
//! The roles, one file each:
//! - `mod.rs` (here): [`start`] and the **polling task**, which owns the rumqttc event loop. It
//!   never awaits the MQTT client or anything the worker does: it polls, hands each message to
//!   the worker through a channel it never waits on, subscribes with `try_subscribe`, and that
//!   is all. (Awaiting `publish`/`ack` here wedged the receiver for good once the client's
//!   request channel filled during a backlog: nothing drained it, FAILURES.md B03.)
//! - [`worker`]: one message at a time, in order: verify → raw copy → durable write → ack
//!   queued → PUBACK queued. A message is PUBACKed only after its batch is stored and its ack
//!   queued ahead of the PUBACK.
//! - [`verify`] (pure): signature, payload `v`, schema, topic against payload.
//! - [`output`]: the SQLite / JSON-lines writers; values that are not numbers.
//! - [`raw`]: `raw_dir`, written only for verified messages; failures counted, survived.
//! - [`ack`]: the ack message (where the signed ack goes).
//! - [`report`]: counters, the totals log line, one log line per sender.
//!
//! **Messages that fail verification** are counted, logged once per sender, never stored,
//! never written to `raw_dir` and never acknowledged upstream (the MQTT PUBACK is still sent so
//! the broker does not redeliver them forever).
//!
//! **Message size.** rumqttc (MQTT 3.1.1) refuses an incoming packet larger than its limit with
//! a *connection* error, before reading it; with a persistent session the broker then
//! redelivers the same message at every reconnect, for ever. So the client's incoming limit is
//! MQTT's own maximum ([`MQTT_MAX_PAYLOAD`], 256 MiB): every legal packet is read, and a payload
//! above `[receiver] max_message_bytes` (default 16 MiB, what a gateway may send) is dropped
//! right after reading: its bytes are released at once, it is PUBACKed (also a retained one,
//! which comes back at each new subscription and is dropped again), counted (`oversize`),
//! logged once per sender, never verified, stored or acknowledged upstream. The cost is memory:
//! a message is held whole while it is read, and messages not yet PUBACKed wait in the worker's
//! queue, so the peak is about the broker's in-flight window for this client (mosquitto
//! `max_inflight_messages`, default 20) times the largest message the broker accepts. Set the
//! broker's own limit (mosquitto `message_size_limit`) to bound it; the receiver survives
//! without it. The queue is unbounded in count on purpose: the broker's window bounds it, and a
//! bound here would make the polling task wait on the worker, which waits on the client, which
//! needs the polling task — the wedge this design removes. `queued_max` in the totals shows the
//! high-water mark.
//!
//! **Values that are not numbers** (NaN, ±infinity) are stored as absent with the status flag
//! `invalid-value=…` and counted; see [`output`] for why this rather than rejecting the batch.
//!
//! **Cost.** `cargo bench -p wardgate --bench receive` runs pre-made signed batches through the
//! worker's [`worker::Processor::process`] (verify → decode → durable write → ack) and prints
//! the CPU per observation of each step; the hot spots were the CBOR decode (now straight into
//! [`crate::batch::BatchPayload`], [`verify::decode_batch`]) and one SQLite statement per row
//! (now 64 rows per statement for a batch of new rows, [`output`]).
//!
//! Reporting: the counters ([`ReceiverStats`]) are logged as one `receiver totals:` line every
//! minute when they changed and once when the receiver stops.

pub mod ack;
pub mod output;
pub mod raw;
pub mod report;
pub mod verify;
pub mod worker;

pub use crate::config::validate::MQTT_MAX_PAYLOAD;
pub use output::{Output, Written};
pub use report::ReceiverStats;
pub use verify::check_message;

use crate::config::ReceiverConfig;
use crate::mqtt;
use crate::signing::Verifier;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use worker::{lock, Job, Processor};

/// How long a stopping receiver lets the worker finish the message in hand and send its ack.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the totals are logged when they changed.
const TOTALS_EVERY: Duration = Duration::from_secs(60);

/// A running receiver's handle for tests and the demo.
pub struct ReceiverHandle {
    /// Live counters.
    pub stats: Arc<Mutex<ReceiverStats>>,
    /// Set to `true` to stop.
    pub shutdown: watch::Sender<bool>,
    /// The task; resolves when the receiver stopped.
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts a receiver from a validated config.
pub fn start(cfg: ReceiverConfig) -> anyhow::Result<ReceiverHandle> {
    let r = &cfg.receiver;
    let verifier = Verifier::from_files(
        r.gateway_certs.iter().map(|p| p.get_ref().as_path()),
        r.gateway_ca.iter().map(|p| p.get_ref().as_path()),
        r.gateway_crl.iter().map(|p| p.get_ref().as_path()),
    )?;
    // Acks are signed with the receiver's own MQTT client certificate and key.
    let acker = ack::Acker {
        signer: crate::signing::Signer::from_files(
            cfg.mqtt.cert.get_ref(),
            cfg.mqtt.key.get_ref(),
        )?,
        legacy_plain: cfg.receiver.legacy_plain_acks,
    };
    let tls = crate::tls::client_config(
        cfg.mqtt.ca.get_ref(),
        cfg.mqtt.cert.get_ref(),
        cfg.mqtt.key.get_ref(),
    )?;
    // Batches encrypted to this receiver are opened with the same key (P-256 only: with an
    // Ed25519 key, encrypted batches are refused with that reason).
    let decryptor = match crate::encryption::Decryptor::from_files(
        cfg.mqtt.cert.get_ref(),
        cfg.mqtt.key.get_ref(),
    ) {
        Ok(d) => Some(d),
        Err(e) => {
            log::warn!("encrypted batches cannot be opened by this receiver: {e}");
            None
        }
    };
    let processor = Processor {
        require_encryption: cfg.receiver.require_encryption,
        verifier,
        decryptor,
        output: Output::open(cfg.receiver.output.get_ref())?,
        raw: cfg.receiver.raw_dir.as_deref().map(raw::RawWriter::new),
        acker,
    };
    let stats = Arc::new(Mutex::new(ReceiverStats::default()));
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(run(cfg, processor, tls, stats.clone(), rx));
    Ok(ReceiverHandle {
        stats,
        shutdown: tx,
        task,
    })
}

/// What the polling task does with one received message: the job for the worker. A payload
/// over `max` bytes is let go here (only the packet id and topic are kept for the PUBACK).
pub fn job_for(mut p: rumqttc::Publish, max: usize) -> Job {
    let size = p.payload.len();
    if size > max {
        p.payload = Default::default();
        Job::Oversize { publish: p, size }
    } else {
        Job::Message(p)
    }
}

/// The polling task (see the module documentation).
async fn run(
    cfg: ReceiverConfig,
    processor: Processor,
    tls: Arc<rustls::ClientConfig>,
    stats: Arc<Mutex<ReceiverStats>>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut o = MqttOptions::new(
        cfg.mqtt.client_id.clone(),
        cfg.mqtt.host.get_ref().clone(),
        *cfg.mqtt.port.get_ref(),
    );
    o.set_keep_alive(Duration::from_secs(cfg.mqtt.keepalive_s))
        .set_clean_session(false)
        .set_manual_acks(true)
        // Incoming: every packet MQTT allows, so no message can cause a reconnect loop.
        .set_max_packet_size(MQTT_MAX_PAYLOAD, 1 << 20)
        .set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    let filter = match &cfg.receiver.share_group {
        Some(g) => format!("$share/{g}/{}", cfg.receiver.topic),
        None => cfg.receiver.topic.clone(),
    };
    let max = cfg.receiver.max_message_bytes;
    let (client, mut el) = AsyncClient::new(o, 256);
    el.set_network_options(mqtt::network_options());
    let (jobs, jobs_rx) = mpsc::unbounded_channel();
    let mut worker = tokio::spawn(worker::run(
        processor,
        jobs_rx,
        client.clone(),
        stats.clone(),
        shutdown.clone(),
    ));
    let mut last_error: Option<String> = None;
    let mut subscribe = false;
    let mut totals = Totals::new();
    // The worker's end when it saw the shutdown before this loop did (a clean stop, not a
    // failure: both wake on the same signal and `select!` picks either).
    let mut stopped_first = false;
    let stopping = shutdown.clone();
    loop {
        let ev = tokio::select! {
            ev = el.poll() => ev,
            _ = shutdown.wait_for(|s| *s) => break,
            r = &mut worker => {
                if matches!(r, Ok(Ok(()))) && *stopping.borrow() {
                    stopped_first = true;
                    break;
                }
                log::info!("{}", lock(&stats).totals());
                return match r {
                    Ok(Ok(())) => Err(anyhow::anyhow!("the receiver's worker stopped")),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(anyhow::anyhow!("the receiver's worker failed: {e}")),
                };
            }
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                log::info!("receiver connected; subscribing to {filter}");
                last_error = None;
                subscribe = true;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                {
                    let mut s = lock(&stats);
                    s.queued += 1;
                    s.queued_max = s.queued_max.max(s.queued);
                }
                // Fails only when the worker has ended; its result is read next time round.
                let _ = jobs.send(job_for(p, max));
            }
            Ok(_) => {}
            Err(e) => {
                let reason = crate::tls::explain(&e);
                if last_error.as_deref() != Some(reason.as_str()) {
                    log::warn!("receiver connection: {reason}; retrying");
                    last_error = Some(reason);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
        }
        // Never `subscribe().await` here: a full request channel would stop this very loop.
        if subscribe
            && client
                .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                .is_ok()
        {
            subscribe = false;
        }
        totals.maybe_log(&stats);
    }
    // Stopping: the worker finishes the message in hand; keep polling so its ack and PUBACK
    // leave, then DISCONNECT so the broker knows this was a clean stop. Messages not PUBACKed
    // are redelivered to the next session.
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    let mut result = Ok(());
    // (Skipped when the worker already ended: nothing is in hand.)
    if !stopped_first {
        loop {
            tokio::select! {
                r = &mut worker => {
                    if let Ok(Err(e)) = r {
                        result = Err(e);
                    }
                    break;
                }
                ev = el.poll() => if ev.is_err() {
                    worker.abort();
                    break;
                },
                _ = tokio::time::sleep_until(deadline) => {
                    log::warn!("receiver: the message in hand did not finish within {STOP_GRACE:?}; it will be redelivered");
                    worker.abort();
                    break;
                }
            }
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(ev) = el.poll().await {
            if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    log::info!("{}", lock(&stats).totals());
    result
}

/// Logs the totals every [`TOTALS_EVERY`] when they changed.
struct Totals {
    last: Instant,
    logged: ReceiverStats,
}

impl Totals {
    fn new() -> Totals {
        Totals {
            last: Instant::now(),
            logged: ReceiverStats::default(),
        }
    }

    fn maybe_log(&mut self, stats: &Mutex<ReceiverStats>) {
        if self.last.elapsed() < TOTALS_EVERY {
            return;
        }
        self.last = Instant::now();
        let now = lock(stats).clone();
        if now != self.logged {
            log::info!("{}", now.totals());
            self.logged = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversize_payload_is_let_go_before_the_worker_sees_it() {
        let p = rumqttc::Publish::new(
            "wardgate/v1/s/w/gw/batch",
            QoS::AtLeastOnce,
            vec![7u8; 2048],
        );
        match job_for(p.clone(), 2048) {
            Job::Message(m) => assert_eq!(m.payload.len(), 2048),
            j => panic!("{j:?}"),
        }
        match job_for(p, 2047) {
            Job::Oversize { publish, size } => {
                assert_eq!((publish.payload.len(), size), (0, 2048));
                assert_eq!(publish.topic, "wardgate/v1/s/w/gw/batch");
            }
            j => panic!("{j:?}"),
        }
    }
}
