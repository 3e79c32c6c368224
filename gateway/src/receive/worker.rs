//! The worker: the one task that handles received messages, one at a time in arrival order,
//! and the only one that calls the MQTT client after subscribing.
//!
//! For each message: verify ([`super::verify`]), copy to `raw_dir` ([`super::raw`]), store
//! durably ([`super::output`]), then queue the ack ([`super::ack`]) and only after it the PUBACK.
//! rumqttc sends requests in the order they are queued, so the broker never sees a PUBACK for a
//! batch before its ack, and neither leaves before the batch is committed. It may await the
//! client (a full request channel) because the polling task never waits for it: the event loop
//! keeps draining the channel, so this wait always ends.
//!
//! A message that cannot be *stored* (the output fails) is not PUBACKed: the worker stops with
//! the error, the receiver exits, and the broker redelivers the message to the next session.

use super::ack::Acker;
use super::output::{Output, Written};
use super::raw::{RawFailures, RawWriter};
use super::report::{claimed_sender, Noted, OncePerSender, ReceiverStats};
use super::verify::{check_message, open_message};
use crate::batch::BatchPayload;
use crate::signing::Verifier;
use rumqttc::{AsyncClient, Publish, QoS};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// One received message for the worker.
#[derive(Debug)]
pub enum Job {
    /// A message within `max_message_bytes`.
    Message(Publish),
    /// A message over the limit; its payload was already let go, `size` says how big it was.
    Oversize {
        /// The packet (empty payload): what the PUBACK needs.
        publish: Publish,
        /// Its payload size in bytes.
        size: usize,
    },
}

/// What became of one message within the limit.
#[derive(Debug)]
pub enum Outcome {
    /// Verified and stored durably (or already stored: `written.duplicate`).
    Stored {
        /// The batch (boxed: it is much larger than a rejection).
        batch: Box<BatchPayload>,
        /// What was new.
        written: Written,
        /// The raw copy, when `raw_dir` is set.
        raw: Option<std::io::Result<PathBuf>>,
        /// The signed ack(s) to publish: `(topic, payload)`.
        acks: Vec<(String, Vec<u8>)>,
    },
    /// Refused, with the reason; nothing written.
    Rejected {
        /// Why.
        reason: String,
        /// The signed refusal notice for the gateway that provably signed it, when there is
        /// one ([`Acker::refusal`]): `(topic, payload)`.
        notice: Option<(String, Vec<u8>)>,
    },
}

/// The synchronous part: verification and durable writes (run on a blocking thread).
pub struct Processor {
    /// Trusted gateway keys.
    pub verifier: Verifier,
    /// This receiver's key, for batches encrypted to it (`None`: its key cannot decrypt).
    pub decryptor: Option<crate::encryption::Decryptor>,
    /// Durable output.
    pub output: Output,
    /// `raw_dir`, when configured.
    pub raw: Option<RawWriter>,
    /// Signs the acks.
    pub acker: Acker,
    /// Refuse batches that are not encrypted (`[receiver] require_encryption`, after every
    /// gateway encrypts to this receiver).
    pub require_encryption: bool,
}

impl Processor {
    /// Handles one message. `Err` only when the verified batch could not be stored.
    pub fn process(&mut self, topic: &str, message: &[u8]) -> anyhow::Result<Outcome> {
        // Encrypted (COSE_Encrypt): decrypt first; plain COSE_Sign1 is accepted too (migration).
        if self.require_encryption && !crate::encryption::is_encrypted(message) {
            let reason = "not encrypted, and this receiver requires encryption ([receiver] require_encryption): the gateway must list this receiver's certificate in [uplink] receiver_certs".to_string();
            let notice = self.acker.refusal(topic, message, &reason);
            return Ok(Outcome::Rejected { reason, notice });
        }
        let signed = match open_message(self.decryptor.as_ref(), message) {
            Ok(s) => s,
            Err(reason) => {
                return Ok(Outcome::Rejected {
                    reason,
                    notice: None,
                })
            }
        };
        let batch = match check_message(&self.verifier, topic, &signed) {
            Ok(b) => b,
            Err(reason) => {
                let notice = self.acker.refusal(topic, &signed, &reason);
                return Ok(Outcome::Rejected { reason, notice });
            }
        };
        // The raw copy is the signed message inside: verifiable later with the gateway's
        // certificate alone (`wardgate verify`), no receiver key needed.
        let raw = self.raw.as_mut().map(|w| w.write(&batch.gateway, &signed));
        let written = self.output.write(&batch)?;
        let acks = self.acker.messages(&batch);
        Ok(Outcome::Stored {
            batch: Box::new(batch),
            written,
            raw,
            acks,
        })
    }
}

/// Logs at most one line per sender for each kind of trouble.
struct Logs {
    rejected: OncePerSender,
    oversize: OncePerSender,
    invalid: OncePerSender,
    raw: RawFailures,
}

fn once(log: &mut OncePerSender, sender: &str, line: impl FnOnce() -> String) {
    match log.note(sender) {
        Noted::First => log::warn!(
            "{} (further ones from this sender are only counted)",
            line()
        ),
        Noted::Full => log::warn!(
            "{} (too many senders to name: further ones are only counted)",
            line()
        ),
        Noted::Again => {}
    }
}

/// When a gateway whose batches are refused is told why again: at most once per
/// [`NoticeSchedule::EVERY`] per gateway, for at most [`NoticeSchedule::MAX_GATEWAYS`] gateways
/// (then the oldest entries make room): a gateway re-sending every few seconds gets one notice
/// a minute, not one per batch.
#[derive(Debug, Default)]
pub struct NoticeSchedule {
    last: std::collections::HashMap<String, std::time::Instant>,
}

impl NoticeSchedule {
    /// Least time between two notices to one gateway.
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(60);
    /// Most gateways remembered.
    pub const MAX_GATEWAYS: usize = 1024;

    /// Whether `gateway` is due a notice at `now` (and if so, records it).
    pub fn due(&mut self, gateway: &str, now: std::time::Instant) -> bool {
        if let Some(t) = self.last.get(gateway) {
            if now.duration_since(*t) < Self::EVERY {
                return false;
            }
        }
        if self.last.len() >= Self::MAX_GATEWAYS && !self.last.contains_key(gateway) {
            self.last
                .retain(|_, t| now.duration_since(*t) < Self::EVERY);
            if self.last.len() >= Self::MAX_GATEWAYS {
                return false;
            }
        }
        self.last.insert(gateway.to_string(), now);
        true
    }
}

/// The counters, even after a panic elsewhere poisoned the lock.
pub fn lock(s: &Mutex<ReceiverStats>) -> std::sync::MutexGuard<'_, ReceiverStats> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs until `jobs` closes, `stop` turns true (the message in hand is finished first), or a
/// batch cannot be stored (`Err`).
pub async fn run(
    mut processor: Processor,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    client: AsyncClient,
    stats: Arc<Mutex<ReceiverStats>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut notices = NoticeSchedule::default();
    let mut logs = Logs {
        rejected: OncePerSender::new(1024),
        oversize: OncePerSender::new(1024),
        invalid: OncePerSender::new(1024),
        raw: RawFailures::default(),
    };
    loop {
        let job = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return Ok(()),
            j = jobs.recv() => match j {
                Some(j) => j,
                None => return Ok(()),
            },
        };
        match job {
            Job::Oversize { publish, size } => {
                let sender = claimed_sender(&publish.topic);
                lock(&stats).oversize_messages += 1;
                once(&mut logs.oversize, &sender, || {
                    format!(
                        "dropped a {size}-byte message on {} (retained: {}): larger than max_message_bytes; acknowledged to the broker, not stored, no upstream ack",
                        publish.topic, publish.retain
                    )
                });
                client.ack(&publish).await?;
            }
            Job::Message(p) => {
                let (topic, payload) = (p.topic.clone(), p.payload.clone());
                let (back, result) = tokio::task::spawn_blocking(move || {
                    let r = processor.process(&topic, &payload);
                    (processor, r)
                })
                .await?;
                processor = back;
                match result {
                    Err(e) => {
                        // Not stored: no PUBACK, the broker redelivers after the restart.
                        anyhow::bail!("cannot store batch from {}: {e:#}", p.topic);
                    }
                    Ok(Outcome::Rejected { reason, notice }) => {
                        lock(&stats).rejected_messages += 1;
                        let sender = claimed_sender(&p.topic);
                        once(&mut logs.rejected, &sender, || {
                            format!("rejected message on {}: {reason}", p.topic)
                        });
                        if let Some((topic, notice)) = notice {
                            if notices.due(&sender, std::time::Instant::now()) {
                                log::info!("told {sender} why its batches are refused (signed refusal notice on {topic})");
                                client
                                    .publish(topic, QoS::AtLeastOnce, false, notice)
                                    .await?;
                            }
                        }
                        client.ack(&p).await?;
                    }
                    Ok(Outcome::Stored {
                        batch,
                        written,
                        raw,
                        acks,
                    }) => {
                        let raw_line = {
                            let mut s = lock(&stats);
                            s.verified_messages += 1;
                            s.events += written.events;
                            s.invalid_values += written.invalid_values;
                            if written.duplicate {
                                s.duplicate_batches += 1;
                            }
                            for (d, n) in &written.per_device {
                                *s.delivered.entry(d.clone()).or_insert(0) += n;
                            }
                            match &raw {
                                Some(Ok(_)) => s.raw_messages += 1,
                                Some(Err(_)) => s.raw_failures += 1,
                                None => {}
                            }
                            let failures = s.raw_failures;
                            raw.as_ref().and_then(|r| logs.raw.record(r, failures))
                        };
                        if let Some(line) = raw_line {
                            log::warn!("{line}");
                        }
                        if written.invalid_values > 0 {
                            once(&mut logs.invalid, &batch.gateway, || {
                                format!(
                                    "batch {} from {}: {} value(s) not a number, stored as absent with status invalid-value=… (counted in invalid_values)",
                                    batch.batch, batch.gateway, written.invalid_values
                                )
                            });
                        }
                        for (ack_topic, ack) in acks {
                            client
                                .publish(ack_topic, QoS::AtLeastOnce, false, ack)
                                .await?;
                        }
                        client.ack(&p).await?;
                    }
                }
            }
        }
        lock(&stats).queued -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::WireObservation;

    fn signed(value: f64) -> (Verifier, Vec<u8>) {
        let ca = self_signed();
        let signer = crate::signing::Signer::new(&ca.0, &ca.1).unwrap();
        let mut v = Verifier::default();
        v.add(&ca.0, "gw1").unwrap();
        let p = BatchPayload {
            v: 1,
            gateway: "gw1".into(),
            site: "s".into(),
            ward: "w".into(),
            batch: 3,
            observations: vec![WireObservation::spo2_for_tests(1, value)],
            events: vec![],
            locations: Default::default(),
        };
        (v, signer.sign(p.to_cbor()))
    }

    /// A self-signed P-256 certificate and its key (rcgen).
    #[test]
    fn a_gateway_is_told_at_most_once_a_minute_and_memory_is_bounded() {
        let mut n = NoticeSchedule::default();
        let t0 = std::time::Instant::now();
        assert!(n.due("gw1", t0));
        assert!(!n.due("gw1", t0 + std::time::Duration::from_secs(59)));
        assert!(n.due("gw2", t0));
        assert!(n.due("gw1", t0 + NoticeSchedule::EVERY));
        for i in 0..2 * NoticeSchedule::MAX_GATEWAYS {
            n.due(&format!("g{i}"), t0 + NoticeSchedule::EVERY);
        }
        assert!(n.last.len() <= NoticeSchedule::MAX_GATEWAYS);
    }

    fn self_signed() -> (
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["gw1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gw1");
        let cert = params.self_signed(&key).unwrap();
        (
            cert.der().clone(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }

    fn processor(dir: &std::path::Path, verifier: Verifier, raw: &std::path::Path) -> Processor {
        Processor {
            require_encryption: false,
            verifier,
            decryptor: None,
            output: Output::open(&format!("sqlite:{}", dir.join("up.db").display())).unwrap(),
            raw: Some(RawWriter::new(raw)),
            acker: Acker {
                signer: crate::uplink::acks::test_support::receiver("up-test").1,
                legacy_plain: false,
            },
        }
    }

    const TOPIC: &str = "wardgate/v1/s/w/gw1/batch";

    #[test]
    fn junk_is_rejected_and_leaves_no_raw_file() {
        let d = tempfile::tempdir().unwrap();
        let (v, _) = signed(1.0);
        let mut p = processor(d.path(), v, &d.path().join("raw"));
        for junk in [&b"junk"[..], &[0xd2, 0x84, 0x40][..], &[0u8; 4096][..]] {
            assert!(matches!(
                p.process(TOPIC, junk).unwrap(),
                Outcome::Rejected { .. }
            ));
        }
        assert_eq!(std::fs::read_dir(d.path().join("raw")).unwrap().count(), 0);
    }

    #[test]
    fn a_raw_write_failure_still_stores_the_batch() {
        let d = tempfile::tempdir().unwrap();
        let (v, msg) = signed(97.0);
        // A directory nothing can be created in, not even by root.
        let mut p = processor(d.path(), v, std::path::Path::new("/proc/self/fdinfo"));
        match p.process(TOPIC, &msg).unwrap() {
            Outcome::Stored { written, raw, .. } => {
                assert!(matches!(raw, Some(Err(_))), "{raw:?}");
                assert_eq!(written.per_device.get("serial:a"), Some(&1));
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn a_nan_from_a_trusted_key_is_stored_as_absent_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let (v, msg) = signed(f64::NAN);
        let mut p = processor(d.path(), v, &d.path().join("raw"));
        match p.process(TOPIC, &msg).unwrap() {
            Outcome::Stored { written, raw, .. } => {
                assert!(matches!(raw, Some(Ok(_))));
                assert_eq!(written.invalid_values, 1);
                assert_eq!(written.per_device.get("serial:a"), Some(&1));
            }
            o => panic!("{o:?}"),
        }
        // The wrong topic for the signed payload is refused.
        assert!(matches!(
            p.process("wardgate/v1/s/w/gw2/batch", &msg).unwrap(),
            Outcome::Rejected { .. }
        ));
    }

    #[test]
    fn an_encrypted_batch_is_decrypted_verified_and_stored_with_its_signed_copy() {
        let d = tempfile::tempdir().unwrap();
        let (v, msg) = signed(97.0);
        let rx_key = rcgen::KeyPair::generate().unwrap();
        let rx_cert = rcgen::CertificateParams::new(vec!["rx".into()])
            .unwrap()
            .self_signed(&rx_key)
            .unwrap()
            .der()
            .clone();
        let sealed = crate::encryption::Encryptor::new(std::slice::from_ref(&rx_cert))
            .unwrap()
            .encrypt(&msg);
        let raw = d.path().join("raw");
        // Without the key: refused, nothing written.
        let mut p = processor(d.path(), v, &raw);
        match p.process(TOPIC, &sealed).unwrap() {
            Outcome::Rejected { reason: r, .. } => assert!(r.contains("cannot decrypt"), "{r}"),
            o => panic!("{o:?}"),
        }
        // With it: stored, and the raw copy is the signed message inside.
        p.decryptor = Some(
            crate::encryption::Decryptor::new(
                &rx_cert,
                &rustls::pki_types::PrivateKeyDer::Pkcs8(rx_key.serialize_der().into()),
            )
            .unwrap(),
        );
        match p.process(TOPIC, &sealed).unwrap() {
            Outcome::Stored { written, raw, .. } => {
                assert_eq!(written.per_device.get("serial:a"), Some(&1));
                assert_eq!(std::fs::read(raw.unwrap().unwrap()).unwrap(), msg);
            }
            o => panic!("{o:?}"),
        }
        // A plain signed batch is still accepted (migration)…
        assert!(matches!(
            p.process(TOPIC, &msg).unwrap(),
            Outcome::Stored { .. }
        ));
        // …until the receiver requires encryption: then refused with the reason, and the
        // encrypted one still stored.
        p.require_encryption = true;
        match p.process(TOPIC, &msg).unwrap() {
            Outcome::Rejected { reason, .. } => {
                assert!(reason.contains("requires encryption"), "{reason}")
            }
            o => panic!("{o:?}"),
        }
        assert!(matches!(
            p.process(TOPIC, &sealed).unwrap(),
            Outcome::Stored { .. }
        ));
    }
}
