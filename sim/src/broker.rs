//! A small embedded MQTT 3.1.1 broker over mutual TLS, for `wardgate demo` and the tests.
//!
//! `wardgate demo` runs the whole chain (adapters → gateway → broker → `wardgate receive`) with
//! nothing but cargo, so it cannot rely on an external mosquitto. This module is that broker. It
//! reuses rumqttc's MQTT 3.1.1 packet codec (`rumqttc::mqttbytes::v4`) and serves it over
//! `tokio-rustls` with the `ring` provider only (no process-default crypto provider is used).
//!
//! It is **not** a production broker: hospitals run their own broker cluster (DESIGN.md §5).
//!
//! ```no_run
//! # async fn demo(tls: wardgate_sim::broker::BrokerTls) -> std::io::Result<()> {
//! use wardgate_sim::broker::EmbeddedBroker;
//! let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), tls).await?;
//! let port = broker.local_addr().port(); // clients connect to 127.0.0.1:port (or localhost)
//! # let _ = port;
//! broker.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # What it does
//! - Listens on a **loopback** address only; every client must complete a TLS handshake with a
//!   certificate chaining to one of [`BrokerTls::client_ca`] (no anonymous clients, no
//!   username/password — those CONNECT fields are ignored).
//! - CONNECT → CONNACK. A second connection with an already-connected client id takes over: the
//!   old connection is closed (and its Last Will published) *before* the new CONNACK is sent, so a
//!   retained "offline" will can never overwrite the new session's "online" status. An empty client
//!   id is given a generated one (clean sessions only).
//! - Keepalive: a connection that sends no packet for 1.5 × its keepalive is dropped (0 disables).
//! - Last Will: published (retain flag honoured) whenever a connection ends without DISCONNECT
//!   (socket drop, keepalive timeout, malformed packet, takeover, slow-consumer drop).
//! - PUBLISH QoS 0/1 (QoS 2 is accepted and downgraded to 1: PUBREC/PUBREL/PUBCOMP handshake with
//!   the publisher, delivery at most QoS 1). The message is routed first, then PUBACKed.
//! - Retained messages: the last one per topic is kept in memory; an empty retained payload
//!   deletes it; matching retained messages are sent (retain flag set) on SUBSCRIBE.
//! - SUBSCRIBE with `+` / `#` wildcards (topics starting with `$` do not match filters starting
//!   with a wildcard) and shared subscriptions `$share/{group}/{filter}`: each message goes to ONE
//!   member of a group, round-robin. Retained messages are not sent to shared subscriptions (as in
//!   MQTT 5). SUBACK grants `min(requested, 1)`; an invalid filter gets the failure code 0x80.
//!   Overlapping non-shared subscriptions of one client receive a message once, at the highest
//!   granted QoS.
//! - Delivery to subscribers at `min(publish QoS, granted QoS)` with fresh packet ids; subscriber
//!   PUBACKs are accepted.
//! - UNSUBSCRIBE/UNSUBACK, PINGREQ/PINGRESP, DISCONNECT (discards the will).
//!
//! # Limitations (by design)
//! - **Clean sessions only.** `clean_session = false` is accepted but treated as clean
//!   (CONNACK `session_present = 0`): nothing survives a disconnect, unacknowledged QoS 1
//!   deliveries are **not** redelivered on reconnect, and subscriptions must be renewed. There is
//!   no in-flight window or retry timer for outgoing QoS 1 messages.
//! - **Bounded memory per connection.** Each connection has an outgoing queue of
//!   [`OUTGOING_QUEUE`] packets. If a subscriber's queue is full, that subscriber is disconnected
//!   (its will is published) rather than blocking the broker or growing memory; a shared-group
//!   message then goes to the next member.
//! - Packets larger than [`MAX_PACKET_SIZE`] close the connection. Malformed packets or protocol
//!   violations close that connection only.
//! - Retained messages live in memory only and are lost when the broker stops.
//! - No authorisation: any authenticated client may publish/subscribe to any topic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PubAck, PubComp, PubRec, Publish,
    SubAck, SubscribeFilter, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Error as MqttError, Protocol, QoS};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_rustls::TlsAcceptor;

/// Largest MQTT packet (remaining length, in bytes) accepted from a client; bigger ones close the
/// connection.
pub const MAX_PACKET_SIZE: usize = 1024 * 1024;

/// Capacity, in packets, of each connection's outgoing queue. A subscriber whose queue is full is
/// disconnected.
pub const OUTGOING_QUEUE: usize = 1024;

/// Time allowed for the TLS handshake of a new connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed between the end of the TLS handshake and a complete CONNECT packet.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The writer coalesces queued packets into one TLS write up to about this many bytes.
const WRITE_BATCH: usize = 64 * 1024;
/// Upper bound when encoding outgoing packets (routed payloads were bounded on the way in).
const MAX_OUTGOING_SIZE: usize = 2 * MAX_PACKET_SIZE;

/// TLS material for [`EmbeddedBroker::start`]. Client authentication is mandatory.
pub struct BrokerTls {
    /// The broker's certificate chain, leaf first (its SANs should cover `127.0.0.1`/`localhost`).
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The private key of the leaf certificate.
    pub key: PrivateKeyDer<'static>,
    /// Trust anchors for client certificates: clients MUST present a certificate chaining to one
    /// of these (verified with rustls' `WebPkiClientVerifier`). Must not be empty.
    pub client_ca: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for BrokerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerTls")
            .field(
                "cert_chain",
                &format_args!("{} certificate(s)", self.cert_chain.len()),
            )
            .field("key", &format_args!("<redacted>"))
            .field(
                "client_ca",
                &format_args!("{} certificate(s)", self.client_ca.len()),
            )
            .finish()
    }
}

/// A snapshot of the broker's counters, from [`EmbeddedBroker::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Connections that completed TLS and CONNECT (CONNACK accepted).
    pub connections_accepted: u64,
    /// Connections currently in the connected state.
    pub connections_active: u64,
    /// TLS handshakes that failed or timed out (e.g. no or untrusted client certificate).
    pub tls_rejected: u64,
    /// Connections closed because of a malformed packet or a protocol violation.
    pub protocol_errors: u64,
    /// PUBLISH packets received from clients (wills not included).
    pub publishes_received: u64,
    /// PUBLISH packets queued for delivery to subscribers (live and retained).
    pub messages_delivered: u64,
    /// Last Will messages published.
    pub wills_published: u64,
    /// Subscribers disconnected because their outgoing queue was full.
    pub slow_subscribers_dropped: u64,
}

#[derive(Default)]
struct Counters {
    connections_accepted: AtomicU64,
    connections_active: AtomicU64,
    tls_rejected: AtomicU64,
    protocol_errors: AtomicU64,
    publishes_received: AtomicU64,
    messages_delivered: AtomicU64,
    wills_published: AtomicU64,
    slow_subscribers_dropped: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> BrokerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BrokerStats {
            connections_accepted: get(&self.connections_accepted),
            connections_active: get(&self.connections_active),
            tls_rejected: get(&self.tls_rejected),
            protocol_errors: get(&self.protocol_errors),
            publishes_received: get(&self.publishes_received),
            messages_delivered: get(&self.messages_delivered),
            wills_published: get(&self.wills_published),
            slow_subscribers_dropped: get(&self.slow_subscribers_dropped),
        }
    }
}

/// A running embedded broker. Dropping it without [`EmbeddedBroker::shutdown`] also stops it
/// (asynchronously).
pub struct EmbeddedBroker {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBroker {
    /// Binds `bind` (a loopback address; port 0 picks a free port) and starts serving MQTT over
    /// mutual TLS on the current tokio runtime.
    ///
    /// # Errors
    /// `InvalidInput` for a non-loopback address or unusable TLS material (bad key or
    /// certificate, empty `client_ca`); otherwise the error from binding the socket.
    pub async fn start(bind: SocketAddr, tls: BrokerTls) -> io::Result<EmbeddedBroker> {
        if !bind.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("embedded broker binds loopback addresses only, not {bind}"),
            ));
        }
        let acceptor = TlsAcceptor::from(server_config(tls)?);
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, acceptor, shared.clone(), stop_rx));
        log::info!("embedded MQTT broker listening on {addr} (mutual TLS)");
        Ok(EmbeddedBroker {
            addr,
            stop,
            task,
            shared,
        })
    }

    /// The address the broker listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the broker's counters.
    pub fn stats(&self) -> BrokerStats {
        self.shared.counters.snapshot()
    }

    /// Stops the broker: closes the listener and drops every connection (clients see the link
    /// drop; no wills are published), then returns once all its tasks have ended.
    pub async fn shutdown(self) {
        let EmbeddedBroker { stop, task, .. } = self;
        let _ = stop.send(());
        if let Err(e) = task.await {
            log::error!("embedded broker task failed: {e}");
        }
        log::info!("embedded MQTT broker stopped");
    }
}

fn invalid_input(e: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

/// A rustls server configuration from `tls`: ring, TLS 1.2/1.3, client certificates required
/// (chaining to `tls.client_ca`). The image server uses it too.
pub(crate) fn server_config(tls: BrokerTls) -> io::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in tls.client_ca {
        roots
            .add(ca)
            .map_err(|e| invalid_input(format!("client CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid_input(
            "client_ca must contain at least one certificate",
        ));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| invalid_input(format!("client verifier: {e}")))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(invalid_input)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.cert_chain, tls.key)
        .map_err(|e| invalid_input(format!("server certificate/key: {e}")))?;
    Ok(Arc::new(config))
}

// ---------------------------------------------------------------------------------------------
// Shared routing state
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Shared {
    router: Mutex<Router>,
    counters: Counters,
}

impl Shared {
    /// Locks the router. No code panics while holding it, but recover from poisoning anyway
    /// rather than taking the whole broker down.
    fn router(&self) -> MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct Router {
    /// Connected clients by connection id.
    conns: HashMap<u64, Conn>,
    /// Client id → connection id of the current session.
    clients: HashMap<String, u64>,
    /// Shared subscriptions by (group, filter).
    groups: BTreeMap<(String, String), Group>,
    /// Retained messages by topic.
    retained: BTreeMap<String, Retained>,
}

struct Conn {
    client_id: String,
    tx: mpsc::Sender<Packet>,
    kick: Arc<Notify>,
    will: Option<LastWill>,
    /// Non-shared subscriptions: filter → granted QoS.
    subs: HashMap<String, QoS>,
    /// Set once the connection is being dropped (slow consumer); routing skips it.
    dead: bool,
}

#[derive(Default)]
struct Group {
    members: Vec<(u64, QoS)>,
    next: usize,
}

struct Retained {
    payload: Bytes,
    qos: QoS,
}

enum Filter {
    Plain(String),
    Shared { group: String, filter: String },
}

impl Conn {
    /// Queues a PUBLISH for this connection; a full queue marks it dead and kicks it.
    fn deliver(
        &mut self,
        counters: &Counters,
        topic: &str,
        payload: &Bytes,
        qos: QoS,
        retain: bool,
    ) -> bool {
        let mut publish = Publish::from_bytes(topic, qos, payload.clone());
        publish.retain = retain;
        match self.tx.try_send(Packet::Publish(publish)) {
            Ok(()) => {
                bump(&counters.messages_delivered);
                true
            }
            Err(TrySendError::Full(_)) => {
                log::warn!(
                    "MQTT client {:?}: outgoing queue full ({OUTGOING_QUEUE}), disconnecting it",
                    self.client_id
                );
                self.dead = true;
                self.kick.notify_one();
                bump(&counters.slow_subscribers_dropped);
                false
            }
            Err(TrySendError::Closed(_)) => {
                self.dead = true;
                false
            }
        }
    }
}

impl Router {
    /// Registers a freshly connected client, taking over (closing) an existing session with the
    /// same client id; that session's will is published now, before the new CONNACK.
    fn register(&mut self, counters: &Counters, conn_id: u64, conn: Conn) {
        if let Some(old_id) = self.clients.insert(conn.client_id.clone(), conn_id) {
            if let Some(old) = self.remove_conn(old_id) {
                log::info!(
                    "MQTT client {:?} reconnected: closing its previous connection",
                    old.client_id
                );
                old.kick.notify_one();
                if let Some(will) = old.will {
                    self.publish_will(counters, will);
                }
            }
        }
        self.conns.insert(conn_id, conn);
    }

    /// Removes a connection and all its subscriptions.
    fn remove_conn(&mut self, conn_id: u64) -> Option<Conn> {
        let conn = self.conns.remove(&conn_id)?;
        self.groups.retain(|_, g| {
            g.members.retain(|(id, _)| *id != conn_id);
            !g.members.is_empty()
        });
        if self.clients.get(&conn.client_id) == Some(&conn_id) {
            self.clients.remove(&conn.client_id);
        }
        Some(conn)
    }

    /// Called when a connection ends; publishes its will unless it sent DISCONNECT.
    fn disconnect(&mut self, counters: &Counters, conn_id: u64, graceful: bool) {
        if let Some(conn) = self.remove_conn(conn_id) {
            if let (false, Some(will)) = (graceful, conn.will) {
                self.publish_will(counters, will);
            }
        }
    }

    fn publish_will(&mut self, counters: &Counters, will: LastWill) {
        log::debug!("publishing last will on {:?}", will.topic);
        bump(&counters.wills_published);
        self.publish(counters, &will.topic, will.message, will.qos, will.retain);
    }

    /// Stores/deletes the retained message if asked and routes an application message to every
    /// matching subscription.
    fn publish(
        &mut self,
        counters: &Counters,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) {
        let qos = cap_qos(qos);
        if retain {
            if payload.is_empty() {
                self.retained.remove(topic);
            } else {
                self.retained.insert(
                    topic.to_owned(),
                    Retained {
                        payload: payload.clone(),
                        qos,
                    },
                );
            }
        }
        for conn in self.conns.values_mut() {
            if conn.dead {
                continue;
            }
            let granted = conn
                .subs
                .iter()
                .filter(|(filter, _)| topic_matches(filter, topic))
                .map(|(_, q)| *q)
                .max_by_key(|q| *q as u8);
            if let Some(granted) = granted {
                conn.deliver(counters, topic, &payload, min_qos(qos, granted), false);
            }
        }
        for ((_, filter), group) in self.groups.iter_mut() {
            if !topic_matches(filter, topic) {
                continue;
            }
            let n = group.members.len();
            for i in 0..n {
                let idx = (group.next + i) % n;
                let (member, granted) = group.members[idx];
                let Some(conn) = self.conns.get_mut(&member) else {
                    continue;
                };
                if conn.dead {
                    continue;
                }
                if conn.deliver(counters, topic, &payload, min_qos(qos, granted), false) {
                    group.next = (idx + 1) % n;
                    break;
                }
            }
        }
    }

    /// Applies a SUBSCRIBE, queues the SUBACK then the matching retained messages. Returns false
    /// if the connection's own queue is full (or it is gone).
    fn subscribe(
        &mut self,
        counters: &Counters,
        conn_id: u64,
        pkid: u16,
        filters: Vec<SubscribeFilter>,
    ) -> bool {
        if !self.conns.contains_key(&conn_id) {
            return false;
        }
        let mut codes = Vec::with_capacity(filters.len());
        let mut plain = Vec::new();
        for f in filters {
            let granted = cap_qos(f.qos);
            match parse_filter(&f.path) {
                None => {
                    log::debug!("rejecting invalid subscription filter {:?}", f.path);
                    codes.push(SubscribeReasonCode::Failure);
                }
                Some(Filter::Plain(filter)) => {
                    plain.push((filter, granted));
                    codes.push(SubscribeReasonCode::Success(granted));
                }
                Some(Filter::Shared { group, filter }) => {
                    let g = self.groups.entry((group, filter)).or_default();
                    match g.members.iter_mut().find(|(id, _)| *id == conn_id) {
                        Some(member) => member.1 = granted,
                        None => g.members.push((conn_id, granted)),
                    }
                    codes.push(SubscribeReasonCode::Success(granted));
                }
            }
        }
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return false;
        };
        for (filter, granted) in &plain {
            conn.subs.insert(filter.clone(), *granted);
        }
        if conn
            .tx
            .try_send(Packet::SubAck(SubAck::new(pkid, codes)))
            .is_err()
        {
            return false;
        }
        for (filter, granted) in &plain {
            for (topic, msg) in &self.retained {
                if topic_matches(filter, topic)
                    && !conn.deliver(
                        counters,
                        topic,
                        &msg.payload,
                        min_qos(msg.qos, *granted),
                        true,
                    )
                {
                    return false;
                }
            }
        }
        true
    }

    /// Applies an UNSUBSCRIBE and queues the UNSUBACK. Returns false if that fails.
    fn unsubscribe(&mut self, conn_id: u64, pkid: u16, topics: &[String]) -> bool {
        for path in topics {
            match parse_filter(path) {
                Some(Filter::Plain(filter)) => {
                    if let Some(conn) = self.conns.get_mut(&conn_id) {
                        conn.subs.remove(&filter);
                    }
                }
                Some(Filter::Shared { group, filter }) => {
                    let key = (group, filter);
                    if let Some(g) = self.groups.get_mut(&key) {
                        g.members.retain(|(id, _)| *id != conn_id);
                        if g.members.is_empty() {
                            self.groups.remove(&key);
                        }
                    }
                }
                None => {}
            }
        }
        self.conns.get(&conn_id).is_some_and(|conn| {
            conn.tx
                .try_send(Packet::UnsubAck(UnsubAck::new(pkid)))
                .is_ok()
        })
    }
}

fn cap_qos(qos: QoS) -> QoS {
    match qos {
        QoS::ExactlyOnce => QoS::AtLeastOnce,
        q => q,
    }
}

fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

/// A topic name a client may publish to: non-empty, no wildcards, no NUL.
fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// A valid MQTT 3.1.1 topic filter (`+` a whole level, `#` a whole last level).
fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, level)| match *level {
        "+" => true,
        "#" => i == last,
        l => !l.contains(['+', '#']),
    })
}

fn parse_filter(path: &str) -> Option<Filter> {
    if let Some(rest) = path.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/')?;
        if group.is_empty() || group.contains(['+', '#']) || !valid_filter(filter) {
            return None;
        }
        Some(Filter::Shared {
            group: group.to_owned(),
            filter: filter.to_owned(),
        })
    } else if valid_filter(path) {
        Some(Filter::Plain(path.to_owned()))
    } else {
        None
    }
}

/// MQTT topic matching; `filter` must be valid. Topics starting with `$` are not matched by
/// filters starting with a wildcard.
fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut tasks = JoinSet::new();
    let mut next_id: u64 = 0;
    loop {
        tokio::select! {
            // Either shutdown() or the EmbeddedBroker was dropped.
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    next_id += 1;
                    tasks.spawn(serve_connection(tcp, peer, acceptor.clone(), shared.clone(), next_id));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    log::warn!("embedded broker accept failed: {e}");
                    sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        log::error!("embedded broker connection task panicked");
                    }
                }
            }
        }
    }
    drop(listener);
    // Aborting a connection task drops its TLS stream, which closes the socket.
    tasks.shutdown().await;
}

/// Why a connection ended.
enum End {
    /// The client sent DISCONNECT.
    Disconnect,
    /// The peer closed the connection.
    Eof,
    Io(io::Error),
    Protocol(String),
    KeepAlive,
    /// Taken over by a new connection with the same client id, or dropped as a slow consumer.
    Kicked,
    /// This connection's own outgoing queue was full.
    QueueFull,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Disconnect => f.write_str("sent DISCONNECT"),
            End::Eof => f.write_str("connection closed by the client"),
            End::Io(e) => write!(f, "I/O error: {e}"),
            End::Protocol(e) => write!(f, "protocol error: {e}"),
            End::KeepAlive => f.write_str("keepalive expired"),
            End::Kicked => f.write_str("disconnected by the broker (takeover or slow consumer)"),
            End::QueueFull => f.write_str("outgoing queue full"),
        }
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    conn_id: u64,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            bump(&shared.counters.tls_rejected);
            log::info!("embedded broker: TLS handshake with {peer} failed: {e}");
            return;
        }
        Err(_) => {
            bump(&shared.counters.tls_rejected);
            log::info!("embedded broker: TLS handshake with {peer} timed out");
            return;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(tls);
    let mut buf = BytesMut::with_capacity(8 * 1024);

    let connect = match timeout(CONNECT_TIMEOUT, read_first_packet(&mut rd, &mut buf)).await {
        Ok(Ok(Packet::Connect(connect))) => connect,
        Ok(Err(MqttError::InvalidProtocolLevel(level))) => {
            log::info!("embedded broker: {peer} speaks MQTT protocol level {level}; refusing");
            refuse(&mut wr, ConnectReturnCode::RefusedProtocolVersion).await;
            return;
        }
        Ok(Ok(other)) => {
            bump(&shared.counters.protocol_errors);
            log::info!("embedded broker: {peer} sent {other:?} before CONNECT; closing");
            return;
        }
        Ok(Err(e)) => {
            if !matches!(e, MqttError::Io(_)) {
                bump(&shared.counters.protocol_errors);
            }
            log::info!("embedded broker: no valid CONNECT from {peer}: {e}");
            return;
        }
        Err(_) => {
            log::info!("embedded broker: no CONNECT from {peer} within {CONNECT_TIMEOUT:?}");
            return;
        }
    };
    let Some((client_id, keep_alive, will)) =
        accept_connect(&mut wr, &shared, peer, connect, conn_id).await
    else {
        return;
    };

    let (tx, mut rx) = mpsc::channel(OUTGOING_QUEUE);
    let kick = Arc::new(Notify::new());
    shared.router().register(
        &shared.counters,
        conn_id,
        Conn {
            client_id: client_id.clone(),
            tx: tx.clone(),
            kick: kick.clone(),
            will,
            subs: HashMap::new(),
            dead: false,
        },
    );
    bump(&shared.counters.connections_accepted);
    shared
        .counters
        .connections_active
        .fetch_add(1, Ordering::Relaxed);
    log::debug!("embedded broker: {peer} connected as {client_id:?}");

    // CONNACK goes out directly, before the writer starts draining anything routed meanwhile.
    let end = match write_packet(
        &mut wr,
        Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
    )
    .await
    {
        Err(e) => End::Io(e),
        Ok(()) => {
            let ctx = ReaderCtx {
                shared: &shared,
                conn_id,
                tx: &tx,
                kick: &kick,
                keep_alive,
            };
            tokio::select! {
                end = read_loop(&mut rd, &mut buf, ctx) => end,
                end = write_loop(&mut wr, &mut rx) => end,
            }
        }
    };

    if matches!(end, End::Protocol(_)) {
        bump(&shared.counters.protocol_errors);
    }
    if matches!(end, End::Protocol(_) | End::QueueFull | End::KeepAlive) {
        log::info!("embedded broker: client {client_id:?} ({peer}) dropped: {end}");
    } else {
        log::debug!("embedded broker: client {client_id:?} ({peer}) gone: {end}");
    }
    shared
        .router()
        .disconnect(&shared.counters, conn_id, matches!(end, End::Disconnect));
    shared
        .counters
        .connections_active
        .fetch_sub(1, Ordering::Relaxed);
}

/// Validates a CONNECT. Returns the client id, the keepalive deadline and the will, or `None`
/// after refusing the connection.
async fn accept_connect<W: AsyncWrite + Unpin>(
    wr: &mut W,
    shared: &Shared,
    peer: SocketAddr,
    connect: Connect,
    conn_id: u64,
) -> Option<(String, Option<Duration>, Option<LastWill>)> {
    if connect.protocol != Protocol::V4 {
        log::info!("embedded broker: {peer} is not MQTT 3.1.1; refusing");
        refuse(wr, ConnectReturnCode::RefusedProtocolVersion).await;
        return None;
    }
    if let Some(will) = &connect.last_will {
        if !valid_topic(&will.topic) {
            bump(&shared.counters.protocol_errors);
            log::info!("embedded broker: {peer} sent an invalid will topic; closing");
            return None;
        }
    }
    let client_id = if connect.client_id.is_empty() {
        if !connect.clean_session {
            refuse(wr, ConnectReturnCode::BadClientId).await;
            return None;
        }
        format!("wardgate-auto-{conn_id}")
    } else {
        connect.client_id
    };
    if !connect.clean_session {
        log::debug!(
            "embedded broker: {client_id:?} asked for a persistent session; it gets a clean one"
        );
    }
    let keep_alive = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    Some((client_id, keep_alive, connect.last_will))
}

async fn refuse<W: AsyncWrite + Unpin>(wr: &mut W, code: ConnectReturnCode) {
    let _ = write_packet(wr, Packet::ConnAck(ConnAck::new(code, false))).await;
}

async fn write_packet<W: AsyncWrite + Unpin>(wr: &mut W, packet: Packet) -> io::Result<()> {
    let mut out = BytesMut::with_capacity(packet.size());
    packet
        .write(&mut out, MAX_OUTGOING_SIZE)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    wr.write_all(&out).await?;
    wr.flush().await
}

/// Reads more bytes into `buf`, keeping some spare capacity to read into.
async fn fill<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8 * 1024);
    }
    rd.read_buf(buf).await
}

async fn read_first_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Result<Packet, MqttError> {
    loop {
        match Packet::read(buf, MAX_PACKET_SIZE) {
            Err(MqttError::InsufficientBytes(_)) => {
                if fill(rd, buf).await? == 0 {
                    return Err(MqttError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
            }
            other => return other,
        }
    }
}

struct ReaderCtx<'a> {
    shared: &'a Shared,
    conn_id: u64,
    tx: &'a mpsc::Sender<Packet>,
    kick: &'a Notify,
    keep_alive: Option<Duration>,
}

async fn read_loop<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    ctx: ReaderCtx<'_>,
) -> End {
    let mut deadline = ctx.keep_alive.map(|k| Instant::now() + k);
    // QoS 2 packet ids received but not yet released, so a redelivered PUBLISH is not routed twice.
    let mut qos2_pending: HashSet<u16> = HashSet::new();
    loop {
        loop {
            match Packet::read(buf, MAX_PACKET_SIZE) {
                Ok(packet) => {
                    if let Some(k) = ctx.keep_alive {
                        deadline = Some(Instant::now() + k);
                    }
                    if let Some(end) = handle_packet(&ctx, packet, &mut qos2_pending) {
                        return end;
                    }
                }
                Err(MqttError::InsufficientBytes(_)) => break,
                Err(e) => return End::Protocol(e.to_string()),
            }
        }
        tokio::select! {
            read = fill(rd, buf) => match read {
                Ok(0) => return End::Eof,
                Ok(_) => {}
                Err(e) => return End::Io(e),
            },
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                return End::KeepAlive;
            }
            _ = ctx.kick.notified() => return End::Kicked,
        }
    }
}

/// Handles one packet from a connected client; `Some` ends the connection.
fn handle_packet(
    ctx: &ReaderCtx<'_>,
    packet: Packet,
    qos2_pending: &mut HashSet<u16>,
) -> Option<End> {
    let reply = |packet: Packet| match ctx.tx.try_send(packet) {
        Ok(()) => None,
        Err(_) => Some(End::QueueFull),
    };
    let counters = &ctx.shared.counters;
    match packet {
        Packet::Publish(publish) => {
            if !valid_topic(&publish.topic) {
                return Some(End::Protocol(format!(
                    "PUBLISH to invalid topic {:?}",
                    publish.topic
                )));
            }
            bump(&counters.publishes_received);
            let (qos, pkid) = (publish.qos, publish.pkid);
            let duplicate = qos == QoS::ExactlyOnce && !qos2_pending.insert(pkid);
            if !duplicate {
                ctx.shared.router().publish(
                    counters,
                    &publish.topic,
                    publish.payload,
                    qos,
                    publish.retain,
                );
            }
            match qos {
                QoS::AtMostOnce => None,
                QoS::AtLeastOnce => reply(Packet::PubAck(PubAck::new(pkid))),
                QoS::ExactlyOnce => reply(Packet::PubRec(PubRec::new(pkid))),
            }
        }
        Packet::PubRel(rel) => {
            qos2_pending.remove(&rel.pkid);
            reply(Packet::PubComp(PubComp::new(rel.pkid)))
        }
        // Acknowledgements of our deliveries: accepted; nothing is redelivered (clean sessions).
        Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => None,
        Packet::Subscribe(sub) => {
            if ctx
                .shared
                .router()
                .subscribe(counters, ctx.conn_id, sub.pkid, sub.filters)
            {
                None
            } else {
                Some(End::QueueFull)
            }
        }
        Packet::Unsubscribe(unsub) => {
            if ctx
                .shared
                .router()
                .unsubscribe(ctx.conn_id, unsub.pkid, &unsub.topics)
            {
                None
            } else {
                Some(End::QueueFull)
            }
        }
        Packet::PingReq => reply(Packet::PingResp),
        Packet::Disconnect => Some(End::Disconnect),
        other @ (Packet::Connect(_)
        | Packet::ConnAck(_)
        | Packet::SubAck(_)
        | Packet::UnsubAck(_)
        | Packet::PingResp) => Some(End::Protocol(format!("unexpected {other:?}"))),
    }
}

/// Drains the connection's outgoing queue onto the socket, assigning packet ids to QoS 1
/// deliveries.
async fn write_loop<W: AsyncWrite + Unpin>(wr: &mut W, rx: &mut mpsc::Receiver<Packet>) -> End {
    let mut out = BytesMut::with_capacity(8 * 1024);
    let mut last_pkid: u16 = 0;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(mut packet) = next.take() {
            if let Packet::Publish(publish) = &mut packet {
                if publish.qos != QoS::AtMostOnce {
                    last_pkid = last_pkid.checked_add(1).unwrap_or(1);
                    publish.pkid = last_pkid;
                }
            }
            if let Err(e) = packet.write(&mut out, MAX_OUTGOING_SIZE) {
                return End::Protocol(format!("cannot encode outgoing packet: {e}"));
            }
            if out.len() < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = wr.write_all(&out).await {
            return End::Io(e);
        }
        if let Err(e) = wr.flush().await {
            return End::Io(e);
        }
        out.clear();
    }
    // Every sender is gone (cannot happen while the reader holds one; kept for robustness).
    End::Kicked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_topics() {
        assert!(topic_matches("a/b/c", "a/b/c"));
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("#", "a/b"));
        assert!(topic_matches("a/+", "a/"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(!topic_matches("a/b/c", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/x", "$SYS/x"));
        assert!(topic_matches("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn filters_are_validated() {
        assert!(valid_filter("a/+/c/#"));
        assert!(valid_filter("#"));
        assert!(!valid_filter(""));
        assert!(!valid_filter("a/#/c"));
        assert!(!valid_filter("a/b#"));
        assert!(!valid_filter("a/b+/c"));
        assert!(matches!(
            parse_filter("$share/g/a/+"),
            Some(Filter::Shared { ref group, ref filter }) if group == "g" && filter == "a/+"
        ));
        assert!(parse_filter("$share//a").is_none());
        assert!(parse_filter("$share/g").is_none());
        assert!(parse_filter("$share/g+/a").is_none());
        assert!(!valid_topic("a/+"));
        assert!(!valid_topic(""));
        assert!(valid_topic("a/b"));
    }
}
