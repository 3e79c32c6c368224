//! Model-based test of the acknowledgement path (issue 9, item 4): the real [`InflightTracker`],
//! the real [`on_event`], the real [`Store`] on a SQLite file and rumqttc's own `MqttState`
//! (packet ids, their wrap at `max_inflight`, collisions, the events it emits), driven by proptest
//! through random interleavings of: rows accepted, a batch cut and queued (or re-sent), a
//! non-batch QoS 1 publish queued, the event loop writing the next request, a PUBACK of any
//! packet id the broker holds (in any order), the `ack_timeout` passing, upstream acks (correct,
//! forged for a batch never cut, for another gateway), a disconnect (new client, new tracker,
//! re-send from the store) and a restart (the store reopened from its file).
//!
//! What `session.rs` does around them is reproduced here step by step: a publish is recorded in
//! the tracker right after `try_publish` succeeded, never after it failed (the request channel
//! is small so that it fills); `fill`'s window and re-send rules; the session's start (`online`,
//! the retained payloads, `Store::resume`); since issue 11 also the cut offer (`fill` withdraws it
//! and offers a cut in the writer's next commit when it finds nothing to send), so a batch may be
//! cut by an `Append` step, and must then be handed out once, as cut, or re-sent by the next
//! session.
//!
//! Checked after every step: the rows in the file are exactly those accepted minus those of the
//! batches acknowledged *by an ack of their own*: a PUBACK for the packet id their own PUBLISH was
//! written with (`broker` mode), or an upstream ack for this gateway naming them (`upstream`
//! mode). So no row is deleted without its own ack, and none is lost. At the end, a few rounds
//! of normal service must empty the store: nothing is stuck.

use super::inflight::InflightTracker;
use super::session::{on_event, EventOutcome};
use crate::config::AckMode;
use crate::store::{Store, StoreOptions, Synchronous};
use crate::uplink::acks::test_support::{policy, receiver, signed_ack};
use crate::uplink::acks::AckPolicy;
use proptest::prelude::*;
use rumqttc::{Event, MqttState, Outgoing, Packet, PubAck, Publish, QoS, Request};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wardgate_adapters::observation::{mdc, DeviceId, Observation, TimeQuality, Unit};
use wardgate_adapters::AdapterEvent;

const GATEWAY: &str = "gw-1";
const ACKS: &str = "wardgate/v1/s/w/gw-1/ack";

thread_local! {
    /// The receiver gateway `gw-1` trusts (its signer, and the gateway's policy), and an
    /// impostor: another holder of a certificate, whom the gateway does not trust.
    static KEYS: (crate::signing::Signer, AckPolicy, crate::signing::Signer) = {
        let (cert, signer) = receiver("up-a");
        let p = policy(GATEWAY, &cert);
        (signer, p, receiver("impostor").1)
    };
}

/// Who signs an ack in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signed {
    /// The trusted receiver.
    Trusted,
    /// Another certificate holder on the shared broker.
    Impostor,
    /// Nobody: the plain v1 ack of before issue 9.
    Plain,
}
const BATCHES: &str = "wardgate/v1/s/w/gw-1/batch";
const STATUS: &str = "wardgate/v1/s/w/gw-1/status";
/// The uplink's `max_inflight`, also rumqttc's window and packet id range: small, so that packet
/// ids wrap and collide.
const MAX_INFLIGHT: u16 = 3;
/// The client's request channel: small, so that `try_publish` fails.
const REQUEST_CAP: usize = 4;
const BATCH_MAX: usize = 3;

#[derive(Clone, Debug)]
enum Step {
    /// The writer commits this many rows.
    Append(usize),
    /// One round of `fill`: the next re-send, or a newly cut batch, queued with `try_publish`.
    Fill,
    /// A retained status or the heartbeat queued (QoS 1, not a batch).
    Other,
    /// The event loop takes the next request off the channel and writes it.
    Write,
    /// The broker acknowledges one of the packet ids it holds (any of them).
    PubAck(usize),
    /// `ack_timeout` passed: every batch in flight is queued to be sent again.
    Overdue,
    /// The receiver acknowledges one of the batches that went out (upstream mode only: in broker
    /// mode the session does not subscribe to its ack topic).
    UpstreamAck(usize),
    /// An ack naming a batch number that was never cut.
    ForgedAck(u64),
    /// An ack for another gateway naming one of our batches.
    OtherGatewayAck(usize),
    /// An ack naming one of our batches that went out, signed by an impostor (`true`) or not
    /// signed at all (`false`): it must delete nothing.
    ImpostorAck(usize, bool),
    /// The link drops; the next session publishes `online` and this many retained payloads.
    Disconnect(usize),
    /// The process restarts: the store is reopened, then a new session as for `Disconnect`.
    Restart(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1usize..=4).prop_map(Step::Append),
        4 => Just(Step::Fill),
        3 => Just(Step::Other),
        6 => Just(Step::Write),
        5 => any::<usize>().prop_map(Step::PubAck),
        1 => Just(Step::Overdue),
        2 => any::<usize>().prop_map(Step::UpstreamAck),
        1 => (0u64..5).prop_map(Step::ForgedAck),
        1 => any::<usize>().prop_map(Step::OtherGatewayAck),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(i, s)| Step::ImpostorAck(i, s)),
        1 => (0usize..=3).prop_map(Step::Disconnect),
        1 => (0usize..=3).prop_map(Step::Restart),
    ]
}

/// What a PUBLISH on the wire carries (the ground truth the tracker must not need).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Msg {
    Batch(u64),
    Other,
}

fn msg_of(p: &Publish) -> Msg {
    if p.topic == BATCHES {
        Msg::Batch(u64::from_be_bytes(p.payload[..8].try_into().unwrap()))
    } else {
        Msg::Other
    }
}

/// One MQTT session: rumqttc's state machine behind a bounded FIFO request channel, as
/// `AsyncClient` + `EventLoop` (`try_publish` fails when the channel is full; the loop takes a
/// request only while the window has room and no collision is pending).
struct Session {
    state: MqttState,
    requests: VecDeque<Publish>,
    tracker: InflightTracker,
    resend: VecDeque<u64>,
}

impl Session {
    fn try_publish(&mut self, topic: &str, payload: Vec<u8>) -> Result<(), ()> {
        if self.requests.len() >= REQUEST_CAP {
            return Err(());
        }
        self.requests
            .push_back(Publish::new(topic, QoS::AtLeastOnce, payload));
        Ok(())
    }
}

struct Model {
    mode: AckMode,
    path: PathBuf,
    store: Store,
    session: Session,
    /// The packet ids the broker holds unacknowledged, with what each PUBLISH carried.
    at_broker: Vec<(u16, Msg)>,
    /// Every seq accepted.
    appended: BTreeSet<u64>,
    /// Every batch cut: its seqs.
    cut: BTreeMap<u64, Vec<u64>>,
    /// Batches whose PUBLISH was written at least once (the receiver may have them).
    written: Vec<u64>,
    /// Batches acknowledged by an ack of their own.
    own_acked: BTreeSet<u64>,
    /// Batches `next_batch` handed out (each at most once, ever).
    handed_out: BTreeSet<u64>,
}

fn open(path: &Path) -> Store {
    let opts = StoreOptions {
        // The test never loses power; `normal` keeps the many commits fast.
        synchronous: Synchronous::Normal,
        ..StoreOptions::default()
    };
    let (store, report) = Store::open(path, opts).unwrap();
    assert_eq!(report.quarantined, None);
    store
}

fn observation(value: f64) -> AdapterEvent {
    AdapterEvent::Observation(Observation {
        device: DeviceId("bed1-spo2".into()),
        code: mdc::SPO2,
        value,
        unit: Unit::PERCENT,
        device_time: None,
        gateway_time: 1_700_000_000_000,
        time_quality: TimeQuality::Synced,
        status: vec![],
        waveform: None,
    })
}

impl Model {
    fn new(mode: AckMode, path: PathBuf) -> Model {
        let store = open(&path);
        let mut m = Model {
            mode,
            path,
            store,
            session: Session {
                state: MqttState::new(MAX_INFLIGHT, false),
                requests: VecDeque::new(),
                tracker: InflightTracker::new(mode),
                resend: VecDeque::new(),
            },
            at_broker: Vec::new(),
            appended: BTreeSet::new(),
            cut: BTreeMap::new(),
            written: Vec::new(),
            own_acked: BTreeSet::new(),
            handed_out: BTreeSet::new(),
        };
        m.new_session(1);
        m
    }

    /// As `Uplink::session` after CONNACK: a new client and tracker, `online`, the retained
    /// payloads, then the store's unacknowledged batches queued for re-sending.
    fn new_session(&mut self, retained: usize) {
        self.at_broker.clear();
        self.session = Session {
            state: MqttState::new(MAX_INFLIGHT, false),
            requests: VecDeque::new(),
            tracker: InflightTracker::new(self.mode),
            resend: VecDeque::new(),
        };
        let s = &mut self.session;
        s.try_publish(STATUS, b"online".to_vec())
            .expect("an empty channel takes `online`");
        s.tracker.other();
        self.publish_others(retained);
        // The old session's end withdrew its cut offer; the new one re-sends every batch, those
        // cut in a commit and never handed out included.
        self.store.withdraw_cut();
        self.session.resend = self.store.resume().unwrap().into();
    }

    /// As `publish_retained`: each queued publish recorded, the rest left when the channel is full.
    fn publish_others(&mut self, n: usize) {
        for i in 0..n {
            let s = &mut self.session;
            if s.try_publish(&format!("wardgate/v1/s/w/gw-1/device/d{i}"), vec![0xa0])
                .is_err()
            {
                break;
            }
            s.tracker.other();
        }
    }

    /// One round of `fill`'s loop (it withdraws the cut offer first, and offers a cut in the
    /// writer's next commit when it finds nothing to send, as `session.rs` does).
    fn fill(&mut self) {
        self.store.withdraw_cut();
        let s = &mut self.session;
        if !(s.tracker.len() < usize::from(MAX_INFLIGHT)
            || s.resend.front().is_some_and(|n| s.tracker.contains(*n)))
        {
            return;
        }
        let again = s.resend.pop_front();
        let batch = match again {
            Some(n) => self.store.load_batch(n).unwrap(),
            None => self.store.next_batch(BATCH_MAX).unwrap(),
        };
        let Some(batch) = batch else {
            if again.is_none() {
                self.store.offer_cut(BATCH_MAX, None);
            }
            return; // nothing pending, or the re-send was acknowledged meanwhile
        };
        if again.is_none() {
            let seqs: Vec<u64> = batch.items.iter().map(|i| i.seq()).collect();
            assert!(
                self.handed_out.insert(batch.number),
                "next_batch handed out batch {} twice",
                batch.number
            );
            // A batch cut in a commit is handed out as it was cut.
            let was = self.cut.entry(batch.number).or_insert_with(|| seqs.clone());
            assert_eq!(*was, seqs, "batch {} changed after its cut", batch.number);
        }
        let s = &mut self.session;
        if s.try_publish(BATCHES, batch.number.to_be_bytes().to_vec())
            .is_err()
        {
            s.resend.push_front(batch.number);
            return;
        }
        s.tracker.sent(batch.number, Instant::now());
    }

    /// The session handles every event rumqttc emitted, in order, as `handle_event` does.
    fn drain_events(&mut self) {
        while let Some(ev) = self.session.state.events.pop_front() {
            let out = KEYS.with(|(_, p, _)| on_event(&ev, &mut self.session.tracker, ACKS, p));
            match out {
                EventOutcome::Nothing => {}
                EventOutcome::Refused { .. } | EventOutcome::ReceiverRefuses { .. } => {}
                EventOutcome::Acknowledge(numbers) => self.acknowledge(numbers),
                EventOutcome::Ignore(why) => {
                    assert!(
                        !matches!(ev, Event::Outgoing(Outgoing::Publish(_))),
                        "every publish is recorded: {why}"
                    );
                }
            }
        }
    }

    fn acknowledge(&mut self, numbers: Vec<u64>) {
        for n in numbers {
            self.store.ack(n).unwrap();
        }
    }

    /// The event loop writes the next request, if its window and collision state allow it.
    fn write(&mut self) {
        let st = &self.session.state;
        if st.inflight() >= MAX_INFLIGHT || st.collision.is_some() {
            return;
        }
        let Some(p) = self.session.requests.pop_front() else {
            return;
        };
        let out = self
            .session
            .state
            .handle_outgoing_packet(Request::Publish(p))
            .unwrap();
        self.on_wire(out);
        self.drain_events();
    }

    fn on_wire(&mut self, packet: Option<Packet>) {
        if let Some(Packet::Publish(p)) = packet {
            let msg = msg_of(&p);
            if let Msg::Batch(n) = msg {
                self.written.push(n);
            }
            assert!(
                !self.at_broker.iter().any(|(pkid, _)| *pkid == p.pkid),
                "rumqttc never reuses a packet id before its PUBACK"
            );
            self.at_broker.push((p.pkid, msg));
        }
    }

    fn puback(&mut self, pick: usize) {
        if self.at_broker.is_empty() {
            return;
        }
        let (pkid, msg) = self.at_broker.remove(pick % self.at_broker.len());
        if let (AckMode::Broker, Msg::Batch(n)) = (self.mode, msg) {
            self.own_acked.insert(n);
        }
        let out = self
            .session
            .state
            .handle_incoming_packet(Packet::PubAck(PubAck::new(pkid)))
            .unwrap();
        // A publish that collided on this packet id goes out now.
        self.on_wire(out);
        self.drain_events();
    }

    fn ack_message(&mut self, gateway: &str, batches: Vec<u64>, signed: Signed) {
        if self.mode != AckMode::Upstream {
            return; // not subscribed: the broker delivers nothing on the ack topic
        }
        if gateway == GATEWAY && signed == Signed::Trusted {
            for n in &batches {
                if self.cut.contains_key(n) {
                    self.own_acked.insert(*n);
                }
            }
        }
        let payload = KEYS.with(|(trusted, _, impostor)| match signed {
            Signed::Trusted => signed_ack(trusted, gateway, &batches),
            Signed::Impostor => signed_ack(impostor, gateway, &batches),
            Signed::Plain => crate::batch::Ack {
                v: 1,
                gateway: gateway.into(),
                batches,
                refused: None,
            }
            .to_cbor(),
        });
        let p = Publish::new(ACKS, QoS::AtLeastOnce, payload);
        self.session
            .state
            .events
            .push_back(Event::Incoming(Packet::Publish(p)));
        self.drain_events();
    }

    fn apply(&mut self, step: &Step) {
        match *step {
            Step::Append(n) => {
                let rows: Vec<_> = (0..n).map(|i| observation(90.0 + i as f64)).collect();
                let seqs = self.store.append(&rows).unwrap();
                self.appended.extend(seqs);
                // A commit may have cut a batch (the session offered it): record it now, it may
                // be acknowledged after a re-send without ever being handed out by next_batch.
                for n in self.store.unacked_batches().unwrap() {
                    if !self.cut.contains_key(&n) {
                        let b = self.store.load_batch(n).unwrap().unwrap();
                        self.cut
                            .insert(n, b.items.iter().map(|i| i.seq()).collect());
                    }
                }
            }
            Step::Fill => self.fill(),
            Step::Other => self.publish_others(1),
            Step::Write => self.write(),
            Step::PubAck(pick) => self.puback(pick),
            Step::Overdue => {
                let s = &mut self.session;
                for n in s.tracker.overdue(Instant::now(), Duration::ZERO) {
                    if !s.resend.contains(&n) {
                        s.resend.push_back(n);
                    }
                }
            }
            Step::UpstreamAck(pick) => {
                if !self.written.is_empty() {
                    let n = self.written[pick % self.written.len()];
                    self.ack_message(GATEWAY, vec![n], Signed::Trusted);
                }
            }
            Step::ForgedAck(k) => {
                let first = self.store_first_number();
                self.ack_message(
                    GATEWAY,
                    vec![first + 1_000_000 + k, first - 1 - k],
                    Signed::Trusted,
                );
            }
            Step::OtherGatewayAck(pick) => {
                if !self.written.is_empty() {
                    let n = self.written[pick % self.written.len()];
                    self.ack_message("gw-2", vec![n], Signed::Trusted);
                }
            }
            Step::ImpostorAck(pick, signed) => {
                if !self.written.is_empty() {
                    let n = self.written[pick % self.written.len()];
                    let how = if signed {
                        Signed::Impostor
                    } else {
                        Signed::Plain
                    };
                    self.ack_message(GATEWAY, vec![n], how);
                }
            }
            Step::Disconnect(retained) => self.new_session(retained),
            Step::Restart(retained) => {
                // Close the file, then open it again as a restarted daemon does.
                self.store = open(&self.path);
                self.new_session(retained);
            }
        }
    }

    /// A batch number near the ones this store hands out (it seeds them from the clock).
    fn store_first_number(&self) -> u64 {
        match self.cut.keys().next() {
            Some(n) => *n,
            None => 1 << 40,
        }
    }

    /// The rows in the file, read through a connection of its own.
    fn rows(&self) -> BTreeSet<u64> {
        let c = rusqlite::Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut st = c.prepare("SELECT seq FROM queue").unwrap();
        let rows = st.query_map([], |r| r.get::<_, i64>(0)).unwrap();
        rows.map(|r| r.unwrap() as u64).collect()
    }

    /// Rows = accepted − rows of the batches acknowledged by an ack of their own.
    fn check(&self, history: &[Step]) {
        let gone: BTreeSet<u64> = self
            .own_acked
            .iter()
            .flat_map(|n| self.cut[n].iter().copied())
            .collect();
        let expected: BTreeSet<u64> = self.appended.difference(&gone).copied().collect();
        let rows = self.rows();
        let lost: Vec<_> = expected.difference(&rows).collect();
        let kept: Vec<_> = rows.difference(&expected).collect();
        assert!(
            lost.is_empty() && kept.is_empty(),
            "{:?} mode after {history:?}: rows deleted without their own ack: {lost:?}; \
             rows of acknowledged batches still there: {kept:?}",
            self.mode
        );
    }

    /// Normal service for a while (everything written and acknowledged): the store empties.
    fn drain_all(&mut self) {
        self.new_session(1);
        for _ in 0..200 {
            if self.rows().is_empty() {
                return;
            }
            for _ in 0..=MAX_INFLIGHT {
                self.fill();
            }
            loop {
                let before = self.session.requests.len();
                self.write();
                if self.session.requests.len() == before {
                    break; // empty, or the window is full: acks first
                }
            }
            if self.mode == AckMode::Upstream {
                let written = std::mem::take(&mut self.written);
                self.ack_message(GATEWAY, written, Signed::Trusted);
            }
            while !self.at_broker.is_empty() {
                self.puback(0);
            }
        }
    }
}

fn run(mode: AckMode, steps: &[Step]) {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Model::new(mode, dir.path().join("store.db"));
    for (i, s) in steps.iter().enumerate() {
        m.apply(s);
        m.check(&steps[..=i]);
    }
    m.drain_all();
    m.check(steps);
    assert!(
        m.rows().is_empty(),
        "{mode:?} mode: rows stuck after normal service: {:?}",
        m.rows()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn broker_mode_deletes_a_batch_only_on_its_own_puback(steps in prop::collection::vec(step(), 1..80)) {
        run(AckMode::Broker, &steps);
    }

    #[test]
    fn upstream_mode_deletes_a_batch_only_on_an_upstream_ack_naming_it(steps in prop::collection::vec(step(), 1..80)) {
        run(AckMode::Upstream, &steps);
    }
}

/// The interleaving of issue 9 spelled out: `online` and a retained status are written before
/// the first batch, the link drops before the batch's own PUBACK.
#[test]
fn broker_mode_status_puback_then_link_loss_loses_nothing() {
    run(
        AckMode::Broker,
        &[
            Step::Append(3),
            Step::Other,
            Step::Fill,
            Step::Write, // online
            Step::Write, // the retained status of `Model::new`
            Step::Write, // the status of `Step::Other`
            Step::PubAck(0),
            Step::PubAck(0),
            Step::PubAck(0),
            Step::Write, // the batch; its PUBACK never comes
            Step::Disconnect(2),
        ],
    );
}

/// Send at once when idle (issue 11, item 5): the session's wake-up rule ([`fills_on`]) and
/// `fill`'s window loop (re-sends first, then new batches of at most `batch_max` rows), over the
/// real [`Store`], driven by proptest through random interleavings of commits of the writer,
/// acks of any batch in flight, ticks, certificate-rotation draining, and reconnects with a
/// backlog (slow start: the window opens at one batch and widens by one per ack).
///
/// Checked after every step:
/// - no committed row waits while the window has room: unless the session is draining, either
///   the window is full or nothing is pending (no uncut row, no queued re-send) — a reading
///   written to an idle gateway is on the wire as soon as its commit is handled;
/// - batches fill up under load (adaptive batching): every batch holds
///   `min(rows pending when it was cut, batch_max)` rows, never more than `batch_max`;
/// - while draining for a rotation no new batch is cut;
/// - every committed row is in exactly one batch or still pending;
/// - a commit on an idle session (the last fill found nothing) cuts the batch itself, in its own
///   transaction, and a commit on a busy or draining one cuts nothing (adaptive batching).
mod send_at_once {
    use super::*;
    use crate::uplink::session::{fills_on, FillEnd, Trigger};

    const WINDOW: usize = 3;
    const MAX: usize = 4;

    #[derive(Clone, Debug)]
    enum Ev {
        /// The writer commits this many rows and wakes the session.
        Commit(usize),
        /// The batch at this position (modulo) in flight is acknowledged.
        Ack(usize),
        /// The batching interval passed.
        Tick,
        /// A new certificate is pending: the session drains (no new batches).
        Drain,
        /// The session ends (rotation or link loss) and a new one starts from the store.
        Reconnect,
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            4 => (1usize..12).prop_map(Ev::Commit),
            4 => (0usize..8).prop_map(Ev::Ack),
            1 => Just(Ev::Tick),
            1 => Just(Ev::Drain),
            1 => Just(Ev::Reconnect),
        ]
    }

    struct Sim {
        store: Store,
        in_flight: Vec<u64>,
        resend: VecDeque<u64>,
        window: usize,
        last: FillEnd,
        draining: bool,
        /// Committed rows not yet in a batch.
        pending: usize,
        /// Rows of every batch cut.
        cut: BTreeMap<u64, usize>,
        committed: usize,
        value: f64,
    }

    impl Sim {
        /// As `Uplink::session`'s start: re-sends from the store, the window at one batch when
        /// there is a backlog, and the first tick (a tokio interval fires at once).
        fn start_session(&mut self) {
            self.in_flight.clear();
            self.store.withdraw_cut(); // the old session's end
            self.resend = self.store.resume().unwrap().into();
            self.window = if self.resend.is_empty() { WINDOW } else { 1 };
            self.draining = false;
            self.last = FillEnd::Empty;
            self.on(Trigger::Tick);
        }

        /// As the select loop: `fill` when [`fills_on`] says so.
        fn on(&mut self, t: Trigger) {
            if fills_on(t, self.last, !self.resend.is_empty(), self.draining) {
                self.last = self.fill();
            }
        }

        /// As `Uplink::fill`: the cut offer withdrawn first, made again when nothing is pending.
        fn fill(&mut self) -> FillEnd {
            self.store.withdraw_cut();
            loop {
                let resend_in_flight = self
                    .resend
                    .front()
                    .is_some_and(|n| self.in_flight.contains(n));
                if !(self.in_flight.len() < self.window || resend_in_flight) {
                    return FillEnd::WindowFull;
                }
                let again = self.resend.pop_front();
                let batch = match again {
                    Some(n) => self.store.load_batch(n).unwrap(),
                    None => self.store.next_batch(MAX).unwrap(),
                };
                let Some(b) = batch else {
                    if again.is_some() {
                        continue;
                    }
                    self.store.offer_cut(MAX, None);
                    return FillEnd::Empty;
                };
                if again.is_none() {
                    let rows = b.items.len();
                    assert_eq!(
                        rows,
                        self.pending.min(MAX),
                        "a batch takes everything pending up to batch_max"
                    );
                    self.pending -= rows;
                    self.cut.insert(b.number, rows);
                }
                if !self.in_flight.contains(&b.number) {
                    self.in_flight.push(b.number);
                }
            }
        }

        fn apply(&mut self, e: &Ev) {
            match e {
                Ev::Commit(n) => {
                    let rows: Vec<_> = (0..*n)
                        .map(|_| {
                            self.value += 1.0;
                            observation(self.value)
                        })
                        .collect();
                    let idle = self.last == FillEnd::Empty && !self.draining;
                    let before = self.store.unacked_batches().unwrap();
                    self.store.append(&rows).unwrap();
                    self.pending += n;
                    self.committed += n;
                    let after = self.store.unacked_batches().unwrap();
                    if idle {
                        // Idle: the commit itself cut the batch (one fsync before publish).
                        assert_eq!(after.len(), before.len() + 1, "no cut in the idle commit");
                        let b = self
                            .store
                            .load_batch(*after.last().unwrap())
                            .unwrap()
                            .unwrap();
                        assert_eq!(b.items.len(), self.pending.min(MAX));
                    } else {
                        assert_eq!(after, before, "a commit cut a batch with no offer");
                    }
                    self.on(Trigger::Commit);
                }
                Ev::Ack(i) => {
                    if self.in_flight.is_empty() {
                        return;
                    }
                    let n = self.in_flight.remove(i % self.in_flight.len());
                    assert!(self.store.ack(n).unwrap());
                    self.window = (self.window + 1).min(WINDOW);
                    self.on(Trigger::Acked);
                }
                Ev::Tick => self.on(Trigger::Tick),
                Ev::Drain => {
                    self.draining = true;
                    self.store.withdraw_cut();
                }
                Ev::Reconnect => self.start_session(),
            }
        }

        fn check(&self, before_cut: usize, e: &Ev) {
            if self.draining {
                assert_eq!(
                    self.cut.len(),
                    before_cut,
                    "a batch was cut while draining ({e:?})"
                );
            } else {
                assert!(
                    self.in_flight.len() >= self.window
                        || (self.pending == 0 && self.resend.is_empty()),
                    "after {e:?}: {} rows and {:?} re-sends wait with {} of {} in flight",
                    self.pending,
                    self.resend,
                    self.in_flight.len(),
                    self.window
                );
            }
            assert!(self.cut.values().all(|r| (1..=MAX).contains(r)));
            assert_eq!(
                self.cut.values().sum::<usize>() + self.pending,
                self.committed
            );
        }
    }

    fn run(events: &[Ev]) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let mut sim = Sim {
            store: open(&dir.path().join("store.db")),
            in_flight: Vec::new(),
            resend: VecDeque::new(),
            window: WINDOW,
            last: FillEnd::Empty,
            draining: false,
            pending: 0,
            cut: BTreeMap::new(),
            committed: 0,
            value: 0.0,
        };
        sim.start_session();
        for e in events {
            let before = sim.cut.len();
            sim.apply(e);
            sim.check(before, e);
        }
        sim
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn no_committed_row_waits_while_the_window_has_room(events in prop::collection::vec(ev(), 1..120)) {
            run(&events);
        }
    }

    /// Idle: each reading is its own batch, on the wire at its commit. Under load: while the
    /// window is full rows pile up, and the ack that opens it takes `batch_max` of them at once.
    #[test]
    fn one_row_leaves_at_its_commit_and_a_burst_fills_batches() {
        let sim = run(&[Ev::Commit(1), Ev::Ack(0), Ev::Commit(1)]);
        assert_eq!(sim.cut.values().copied().collect::<Vec<_>>(), [1, 1]);
        assert_eq!((sim.in_flight.len(), sim.pending), (1, 0));

        let mut burst = vec![Ev::Commit(1), Ev::Commit(1), Ev::Commit(1)];
        burst.extend((0..10).map(|_| Ev::Commit(1))); // the window is full: they wait
        burst.push(Ev::Ack(0));
        let sim = run(&burst);
        assert_eq!(
            sim.cut.values().copied().collect::<Vec<_>>(),
            [1, 1, 1, MAX]
        );
        assert_eq!(sim.pending, 10 - MAX);
    }

    /// The rule itself, case by case.
    #[test]
    fn fills_on_cases() {
        use FillEnd::*;
        use Trigger::*;
        for last in [WindowFull, Empty, Blocked] {
            assert!(fills_on(Commit, last, false, false));
            assert!(fills_on(Tick, last, false, false));
            for t in [Commit, Acked, Tick] {
                assert!(!fills_on(t, last, true, true), "never while draining");
            }
        }
        assert!(fills_on(Acked, WindowFull, false, false));
        assert!(
            fills_on(Acked, Empty, true, false),
            "re-sends wait for room"
        );
        assert!(
            !fills_on(Acked, Empty, false, false),
            "nothing pending: the next commit wakes"
        );
        assert!(
            !fills_on(Acked, Blocked, false, false),
            "a blocked fill is retried on the tick"
        );
    }
}
