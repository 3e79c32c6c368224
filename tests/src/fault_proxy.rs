//! [`FaultProxy`]: a TLS-terminating MQTT proxy between the gateway and the real mosquitto, that
//! injects the uplink faults of FAILURES.md (B01, B04, B07) at the MQTT packet level.
//!
//! TLS is end to end between a client and mosquitto, so a plain TCP proxy cannot see MQTT
//! packets. This one terminates the gateway's TLS with the test PKI's broker certificate
//! (client certificates from the test CA required, as mosquitto does), and opens its own mutual
//! TLS connection to mosquitto for each accepted connection, presenting the gateway's client
//! certificate (so the broker sees the same identity). In between it reads whole MQTT packets
//! (fixed header byte, variable-length "remaining length", body) in both directions and forwards
//! them one by one, unless a fault says otherwise:
//!
//! - PUBACKs (broker → client) delayed by a fixed or random time (order kept: a packet never
//!   overtakes one read before it), or dropped (all, every Nth, or those of one packet id);
//! - every connection cut now, or after every Nth PUBLISH (client → broker), both sides closed
//!   (no DISCONNECT, no TLS close_notify: as a dying link looks);
//! - blackhole: connections are accepted (TLS completes) but nothing is forwarded either way.
//!
//! Faults ([`Faults`]) can be changed while connections run; counters ([`Stats`]) say what the
//! proxy saw. Everything runs on the proxy's own small tokio runtime: dropping the handle ends
//! every task and closes every connection. Buffers are bounded (one packet at a time, at most
//! [`MAX_PACKET`] bytes, and at most [`DELAY_QUEUE`] packets waiting out a delay).

use crate::broker::Pki;
use crate::{anyhow, Context, Result};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Largest MQTT packet forwarded (the gateway's own outgoing limit is 16 MiB); a larger one
/// closes the connection.
pub const MAX_PACKET: usize = 16 << 20;
/// Most broker → client packets waiting out a PUBACK delay per connection (then reading from the
/// broker pauses: backpressure, not memory).
pub const DELAY_QUEUE: usize = 256;
/// Most PUBLISH packets remembered in [`FaultProxy::publishes`] (later ones are only counted).
pub const MAX_PUBLISH_LOG: usize = 100_000;

const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;

/// What happens to each PUBACK the broker sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PubackFault {
    /// Forwarded at once.
    #[default]
    Forward,
    /// Forwarded after a delay drawn uniformly from `min..=max` (fixed when equal).
    Delay {
        /// Shortest delay.
        min: Duration,
        /// Longest delay.
        max: Duration,
    },
    /// Every `every`-th PUBACK (counted over all connections) is dropped; `every = 1`: all of
    /// them (the broker "holds back" its acks).
    Drop {
        /// 1 drops every PUBACK, N every Nth (0: none).
        every: u64,
    },
    /// Every PUBACK for this packet id is dropped, the others are forwarded: the client's
    /// packet ids wrap around to an id still unacknowledged (a packet-id collision).
    DropPkid(u16),
}

/// The faults in force; change them with [`FaultProxy::set`] at any time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// PUBACK delay or loss.
    pub puback: PubackFault,
    /// Close the connection right after forwarding every Nth PUBLISH from a client (counted over
    /// all connections).
    pub cut_every_nth_publish: Option<u64>,
    /// Accept and complete TLS, forward nothing (new connections do not even reach the broker).
    pub blackhole: bool,
}

/// What the proxy has seen so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// TCP connections accepted from clients.
    pub connections: u64,
    /// PUBLISH packets read from clients (forwarded or not).
    pub publishes: u64,
    /// PUBACKs forwarded to clients (delayed or not).
    pub pubacks_forwarded: u64,
    /// PUBACKs dropped by a fault.
    pub pubacks_dropped: u64,
    /// Connections closed by a fault ([`FaultProxy::cut_all`] or `cut_every_nth_publish`).
    pub cuts: u64,
}

/// One PUBLISH a client sent through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenPublish {
    /// Which accepted connection (1, 2, …).
    pub connection: u64,
    /// Its packet id (0 for QoS 0).
    pub pkid: u16,
    /// Its DUP flag.
    pub dup: bool,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    publishes: AtomicU64,
    pubacks_seen: AtomicU64,
    pubacks_forwarded: AtomicU64,
    pubacks_dropped: AtomicU64,
    cuts: AtomicU64,
}

struct Shared {
    faults: Mutex<Faults>,
    counters: Counters,
    publish_log: Mutex<Vec<SeenPublish>>,
    /// Bumped by [`FaultProxy::cut_all`]: every connection task watching it ends.
    cut: watch::Sender<u64>,
}

impl Shared {
    fn faults(&self) -> Faults {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running proxy; see the module documentation. Dropping it closes everything.
pub struct FaultProxy {
    /// The port it listens on (127.0.0.1): point the gateway's `[uplink] port` here.
    pub port: u16,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy on a random loopback port in front of mosquitto on `127.0.0.1:broker_port`,
    /// with the certificates of `pki` (broker certificate towards clients, the gateway's client
    /// certificate towards the broker). No faults at first.
    pub fn start(pki: &Pki, broker_port: u16) -> Result<FaultProxy> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in wardgate::signing::read_certs(&pki.ca_pem)? {
            roots.add(c)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()?;
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                wardgate::signing::read_certs(&pki.broker_cert)?,
                wardgate::signing::read_key(&pki.broker_key)?,
            )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let client =
            wardgate::tls::client_config(&pki.ca_pem, &pki.gateway_cert, &pki.gateway_key)?;
        let connector = tokio_rustls::TlsConnector::from(client);

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()?;
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            faults: Mutex::new(Faults::default()),
            counters: Counters::default(),
            publish_log: Mutex::new(Vec::new()),
            cut: watch::channel(0).0,
        });
        let sh = shared.clone();
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let id = sh.counters.connections.fetch_add(1, Ordering::Relaxed) + 1;
                let (sh, acceptor, connector) = (sh.clone(), acceptor.clone(), connector.clone());
                let mut cut = sh.cut.subscribe();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(&sh, id, tcp, acceptor, connector, broker_port) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(FaultProxy {
            port,
            shared,
            rt: Some(rt),
        })
    }

    /// Changes the faults in force (for connections already open too).
    pub fn set(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.shared.faults.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    /// Closes every open connection now, both sides (new ones are accepted as usual).
    pub fn cut_all(&self) {
        self.shared.cut.send_modify(|g| *g += 1);
        // Counted as one cut per call: how many connections were open is not tracked.
        self.shared.counters.cuts.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            connections: c.connections.load(Ordering::Relaxed),
            publishes: c.publishes.load(Ordering::Relaxed),
            pubacks_forwarded: c.pubacks_forwarded.load(Ordering::Relaxed),
            pubacks_dropped: c.pubacks_dropped.load(Ordering::Relaxed),
            cuts: c.cuts.load(Ordering::Relaxed),
        }
    }

    /// The PUBLISH packets clients sent so far (the first [`MAX_PUBLISH_LOG`]).
    pub fn publishes(&self) -> Vec<SeenPublish> {
        self.shared
            .publish_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// One client connection: TLS in, TLS out to the broker, forward until either side ends or a
/// fault cuts it.
async fn serve(
    sh: &Shared,
    id: u64,
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
    broker_port: u16,
) -> Result<()> {
    let client = acceptor.accept(tcp).await?;
    let (client_r, client_w) = tokio::io::split(client);
    let mut client_r = BufReader::new(client_r);
    if sh.faults().blackhole {
        // Swallow whatever the client sends until it gives up (or a cut).
        let mut buf = [0u8; 4096];
        while client_r.read(&mut buf).await? > 0 {}
        return Ok(());
    }
    let up = TcpStream::connect((Ipv4Addr::LOCALHOST, broker_port)).await?;
    up.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let broker = connector.connect(name, up).await?;
    let (broker_r, broker_w) = tokio::io::split(broker);
    tokio::select! {
        r = client_to_broker(sh, id, client_r, broker_w) => r,
        r = broker_to_client(sh, BufReader::new(broker_r), client_w) => r,
    }
}

/// Forwards the client's packets; notes PUBLISHes and cuts after every Nth when asked.
async fn client_to_broker(
    sh: &Shared,
    id: u64,
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
) -> Result<()> {
    while let Some(p) = read_packet(&mut from).await? {
        let faults = sh.faults();
        let publish = p[0] >> 4 == PUBLISH;
        let n = if publish {
            let seen = SeenPublish {
                connection: id,
                pkid: publish_pkid(&p).unwrap_or(0),
                dup: p[0] & 0x08 != 0,
            };
            let mut log = sh.publish_log.lock().unwrap_or_else(|e| e.into_inner());
            if log.len() < MAX_PUBLISH_LOG {
                log.push(seen);
            }
            sh.counters.publishes.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        if faults.blackhole {
            continue;
        }
        to.write_all(&p).await?;
        to.flush().await?;
        if publish
            && faults
                .cut_every_nth_publish
                .is_some_and(|k| n.is_multiple_of(k))
        {
            sh.counters.cuts.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
    }
    Ok(())
}

/// Forwards the broker's packets, delaying or dropping PUBACKs as the faults say. A writer
/// future releases packets in the order they were read, each at its own time.
async fn broker_to_client(
    sh: &Shared,
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
) -> Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(DELAY_QUEUE);
    let reader = async move {
        while let Some(p) = read_packet(&mut from).await? {
            let faults = sh.faults();
            if faults.blackhole {
                continue;
            }
            let mut at = Instant::now();
            if p[0] >> 4 == PUBACK {
                let n = sh.counters.pubacks_seen.fetch_add(1, Ordering::Relaxed) + 1;
                match faults.puback {
                    PubackFault::Forward => {}
                    PubackFault::Delay { min, max } => {
                        let span = max.saturating_sub(min).as_millis() as u64;
                        at += min + Duration::from_millis(fastrand::u64(0..=span));
                    }
                    PubackFault::Drop { every } => {
                        if n.is_multiple_of(every) {
                            sh.counters.pubacks_dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    PubackFault::DropPkid(id) => {
                        if p.get(2..4) == Some(&id.to_be_bytes()[..]) {
                            sh.counters.pubacks_dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
            }
            if tx.send((at, p)).await.is_err() {
                break;
            }
        }
        Ok::<(), anyhow::Error>(())
    };
    let writer = async move {
        while let Some((at, p)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            to.write_all(&p).await?;
            to.flush().await?;
            if p[0] >> 4 == PUBACK {
                sh.counters
                    .pubacks_forwarded
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok::<(), anyhow::Error>(())
    };
    // The reader ending (broker closed) closes the channel; the writer then drains what waits.
    let (r, w) = tokio::join!(reader, writer);
    r.and(w)
}

/// Reads one whole MQTT packet (fixed header, remaining length, body); `None` at a clean EOF
/// before its first byte.
async fn read_packet(r: &mut (impl AsyncRead + Unpin)) -> Result<Option<Vec<u8>>> {
    let mut first = [0u8; 1];
    if r.read(&mut first).await? == 0 {
        return Ok(None);
    }
    let mut packet = vec![first[0]];
    let mut len = 0usize;
    for i in 0..4 {
        let b = r.read_u8().await.context("packet cut in its length")?;
        packet.push(b);
        len |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            if len > MAX_PACKET {
                return Err(anyhow!(
                    "MQTT packet of {len} bytes is over the proxy's limit"
                ));
            }
            let head = packet.len();
            packet.resize(head + len, 0);
            r.read_exact(&mut packet[head..]).await?;
            return Ok(Some(packet));
        }
    }
    Err(anyhow!("malformed MQTT remaining length"))
}

/// The packet id of a PUBLISH (`None` for QoS 0 or a packet too short to hold one).
fn publish_pkid(p: &[u8]) -> Option<u16> {
    if (p[0] >> 1) & 3 == 0 {
        return None;
    }
    // Skip the fixed header: type byte, then the remaining-length bytes (last one < 0x80).
    let body = 1 + p[1..].iter().position(|b| b & 0x80 == 0)? + 1;
    let topic_len = u16::from_be_bytes([*p.get(body)?, *p.get(body + 1)?]) as usize;
    let at = body + 2 + topic_len;
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_framed_by_their_remaining_length() {
        // PUBLISH QoS 1, DUP, topic "a/b", pkid 0x0102, payload "xy"; then a PUBACK for 7.
        let publish = [
            0x3a, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x02, b'x', b'y',
        ];
        let puback = [0x40, 0x02, 0x00, 0x07];
        let bytes: Vec<u8> = publish.iter().chain(&puback).copied().collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut r = &bytes[..];
            let p = read_packet(&mut r).await.unwrap().unwrap();
            assert_eq!(p, publish);
            assert_eq!(publish_pkid(&p), Some(0x0102));
            assert_eq!(read_packet(&mut r).await.unwrap().unwrap(), puback);
            assert_eq!(read_packet(&mut r).await.unwrap(), None);
            // A length over two bytes (200 = 0xc8 0x01), and a packet cut short.
            let mut long = vec![0x30, 0xc8, 0x01];
            long.extend(std::iter::repeat_n(0u8, 200));
            assert_eq!(read_packet(&mut &long[..]).await.unwrap().unwrap(), long);
            assert!(read_packet(&mut &long[..100]).await.is_err());
        });
    }
}
