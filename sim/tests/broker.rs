//! Integration tests for the embedded MQTT broker: real mutual TLS on 127.0.0.1 with certificates
//! made by rcgen, real `rumqttc` clients, and a raw tokio-rustls client where we need to misbehave
//! on the wire (dropping the socket without DISCONNECT, going silent, sending garbage).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rumqttc::{
    AsyncClient, Connect, Event, LastWill, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use wardgate_sim::broker::{BrokerTls, EmbeddedBroker};

const WAIT: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------------------------------------
// PKI
// ------------------------------------------------------------------------------------------------

struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    fn clone_identity(&self) -> Identity {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    fn issue(&self, name: &str, sans: &[&str], purpose: ExtendedKeyUsagePurpose) -> Identity {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Identity {
            chain: vec![cert.der().clone(), self.der()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

struct Pki {
    ca: Ca,
    server: Identity,
    client: Identity,
    /// A client certificate from a CA the broker does not trust.
    rogue: Identity,
}

impl Pki {
    fn new() -> Pki {
        let ca = Ca::new("wardgate test CA");
        let server = ca.issue(
            "broker",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = ca.issue("gw-1", &["gw-1"], ExtendedKeyUsagePurpose::ClientAuth);
        let rogue = Ca::new("some other CA").issue(
            "intruder",
            &["intruder"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Pki {
            ca,
            server,
            client,
            rogue,
        }
    }

    fn broker_tls(&self) -> BrokerTls {
        BrokerTls {
            cert_chain: self.server.chain.clone(),
            key: self.server.key.clone_key(),
            client_ca: vec![self.ca.der()],
        }
    }

    /// A client config trusting our CA, presenting `identity` (or no certificate).
    fn client_config(&self, identity: Option<Identity>) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der()).unwrap();
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        Arc::new(match identity {
            Some(id) => builder.with_client_auth_cert(id.chain, id.key).unwrap(),
            None => builder.with_no_client_auth(),
        })
    }

    fn good_config(&self) -> Arc<ClientConfig> {
        self.client_config(Some(self.client.clone_identity()))
    }
}

async fn start_broker(pki: &Pki) -> EmbeddedBroker {
    EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), pki.broker_tls())
        .await
        .unwrap()
}

// ------------------------------------------------------------------------------------------------
// rumqttc client harness
// ------------------------------------------------------------------------------------------------

struct Client {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Result<Packet, String>>,
}

impl Client {
    /// Starts a rumqttc client; does not wait for CONNACK.
    fn start(addr: SocketAddr, id: &str, config: Arc<ClientConfig>) -> Client {
        let mut options = MqttOptions::new(id, "127.0.0.1", addr.port());
        options.set_keep_alive(Duration::from_secs(5));
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, incoming) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            break;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        // No reconnection: tests want to see the first failure.
                        let _ = tx.send(Err(e.to_string()));
                        break;
                    }
                }
            }
        });
        Client { client, incoming }
    }

    /// Starts a client and waits for a successful CONNACK.
    async fn connect(addr: SocketAddr, id: &str, config: Arc<ClientConfig>) -> Client {
        let mut c = Client::start(addr, id, config);
        match c.next().await {
            Ok(Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success)
            }
            other => panic!("{id}: expected CONNACK, got {other:?}"),
        }
        c
    }

    async fn next(&mut self) -> Result<Packet, String> {
        timeout(WAIT, self.incoming.recv())
            .await
            .expect("timed out waiting for an MQTT event")
            .expect("event loop task ended")
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubscribeReasonCode {
        self.client.subscribe(filter, qos).await.unwrap();
        loop {
            match self.next().await {
                Ok(Packet::SubAck(ack)) => return ack.return_codes[0],
                Ok(Packet::PingResp) => {}
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK.
    async fn publish_acked(&mut self, topic: &str, payload: &[u8], retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
            .await
            .unwrap();
        loop {
            match self.next().await {
                Ok(Packet::PubAck(_)) => return,
                Ok(Packet::PingResp) => {}
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }

    async fn next_publish(&mut self) -> Publish {
        loop {
            match self.next().await {
                Ok(Packet::Publish(p)) => return p,
                Ok(Packet::PingResp) | Ok(Packet::PubAck(_)) => {}
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    /// Asserts that no PUBLISH arrives within `quiet`.
    async fn assert_no_publish(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while let Ok(event) = tokio::time::timeout_at(deadline, self.incoming.recv()).await {
            if let Some(Ok(Packet::Publish(p))) = event {
                panic!("unexpected PUBLISH {p:?}");
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Raw MQTT-over-TLS client, for misbehaving on the wire
// ------------------------------------------------------------------------------------------------

struct Raw {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
}

impl Raw {
    async fn connect(addr: SocketAddr, config: Arc<ClientConfig>, connect: Connect) -> Raw {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let stream = TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
        };
        raw.send(Packet::Connect(connect)).await;
        match raw.read().await {
            Some(Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, usize::MAX).unwrap();
        self.send_bytes(&out).await;
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Next packet, or `None` once the broker closed the connection.
    async fn read(&mut self) -> Option<Packet> {
        loop {
            match Packet::read(&mut self.buf, 1 << 20) {
                Ok(p) => return Some(p),
                Err(rumqttc::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("broker sent garbage: {e}"),
            }
            match timeout(WAIT, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => panic!("timed out waiting for the broker"),
            }
        }
    }
}

fn connect_with_will(id: &str, keep_alive: u16, will_topic: &str) -> Connect {
    let mut connect = Connect::new(id);
    connect.keep_alive = keep_alive;
    connect.last_will = Some(LastWill::new(will_topic, "offline", QoS::AtLeastOnce, true));
    connect
}

// ------------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn qos1_publish_reaches_wildcard_subscribers() {
    let pki = Pki::new();
    let broker = start_broker(&pki).await;
    let addr = broker.local_addr();

    let mut sub = Client::connect(addr, "sub-qos1", pki.good_config()).await;
    assert_eq!(
        sub.subscribe("wardgate/v1/+/ward-1/#", QoS::AtLeastOnce)
            .await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let mut sub0 = Client::connect(addr, "sub-qos0", pki.good_config()).await;
    assert_eq!(
        sub0.subscribe("wardgate/v1/site-a/+/+/batch", QoS::AtMostOnce)
            .await,
        SubscribeReasonCode::Success(QoS::AtMostOnce)
    );
    // QoS 2 requested → granted 1.
    let mut sub2 = Client::connect(addr, "sub-qos2", pki.good_config()).await;
    assert_eq!(
        sub2.subscribe("wardgate/v1/site-a/ward-1/gw-1/batch", QoS::ExactlyOnce)
            .await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );

    let mut publisher = Client::connect(addr, "gw-1", pki.good_config()).await;
    publisher
        .publish_acked(
            "wardgate/v1/site-a/ward-2/gw-9/batch",
            b"not for sub",
            false,
        )
        .await;
    publisher
        .publish_acked("wardgate/v1/site-a/ward-1/gw-1/batch", b"batch 1", false)
        .await;

    let got = sub.next_publish().await;
    assert_eq!(got.topic, "wardgate/v1/site-a/ward-1/gw-1/batch");
    assert_eq!(&got.payload[..], b"batch 1");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert_ne!(got.pkid, 0);
    assert!(!got.retain);

    // The QoS 0 subscriber gets both, downgraded to QoS 0.
    for expected in [&b"not for sub"[..], b"batch 1"] {
        let got = sub0.next_publish().await;
        assert_eq!(&got.payload[..], expected);
        assert_eq!(got.qos, QoS::AtMostOnce);
    }
    let got = sub2.next_publish().await;
    assert_eq!(&got.payload[..], b"batch 1");
    assert_eq!(got.qos, QoS::AtLeastOnce);

    sub.assert_no_publish(Duration::from_millis(200)).await;
    let stats = broker.stats();
    assert_eq!(stats.publishes_received, 2);
    assert_eq!(stats.messages_delivered, 4);
    assert_eq!(stats.connections_active, 4);
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_message_reaches_late_subscriber_and_empty_payload_deletes_it() {
    let pki = Pki::new();
    let broker = start_broker(&pki).await;
    let addr = broker.local_addr();
    let topic = "wardgate/v1/site-a/ward-1/gw-1/status";

    let mut early = Client::connect(addr, "early", pki.good_config()).await;
    early.subscribe(topic, QoS::AtLeastOnce).await;

    let mut publisher = Client::connect(addr, "gw-1", pki.good_config()).await;
    publisher.publish_acked(topic, b"online", true).await;

    // A live delivery carries retain = 0.
    let live = early.next_publish().await;
    assert_eq!(&live.payload[..], b"online");
    assert!(!live.retain);

    let mut late = Client::connect(addr, "late", pki.good_config()).await;
    late.subscribe("wardgate/v1/+/+/+/status", QoS::AtLeastOnce)
        .await;
    let got = late.next_publish().await;
    assert_eq!(got.topic, topic);
    assert_eq!(&got.payload[..], b"online");
    assert!(got.retain, "retained delivery must carry the retain flag");
    assert_eq!(got.qos, QoS::AtLeastOnce);

    // An empty retained payload deletes the retained message (and is still routed live).
    publisher.publish_acked(topic, b"", true).await;
    assert!(early.next_publish().await.payload.is_empty());
    let mut later = Client::connect(addr, "later", pki.good_config()).await;
    later.subscribe(topic, QoS::AtLeastOnce).await;
    later.assert_no_publish(Duration::from_millis(300)).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn shared_subscription_splits_messages_without_duplicates() {
    let pki = Pki::new();
    let broker = start_broker(&pki).await;
    let addr = broker.local_addr();
    let filter = "$share/receivers/wardgate/v1/+/+/+/batch";

    let mut r1 = Client::connect(addr, "receiver-1", pki.good_config()).await;
    let mut r2 = Client::connect(addr, "receiver-2", pki.good_config()).await;
    assert_eq!(
        r1.subscribe(filter, QoS::AtLeastOnce).await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    r2.subscribe(filter, QoS::AtLeastOnce).await;

    let mut publisher = Client::connect(addr, "gw-1", pki.good_config()).await;
    const N: usize = 20;
    for i in 0..N {
        publisher
            .publish_acked(
                "wardgate/v1/site-a/ward-1/gw-1/batch",
                i.to_string().as_bytes(),
                false,
            )
            .await;
    }

    let mut seen = BTreeSet::new();
    let (mut n1, mut n2) = (0, 0);
    while n1 + n2 < N {
        let p = tokio::select! {
            p = r1.next_publish() => { n1 += 1; p }
            p = r2.next_publish() => { n2 += 1; p }
        };
        let i: usize = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
        assert!(seen.insert(i), "message {i} delivered twice");
    }
    assert_eq!(seen, (0..N).collect::<BTreeSet<_>>());
    // Round-robin: an even split.
    assert_eq!((n1, n2), (N / 2, N / 2));
    r1.assert_no_publish(Duration::from_millis(200)).await;
    r2.assert_no_publish(Duration::from_millis(10)).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn last_will_published_when_socket_drops_without_disconnect() {
    let pki = Pki::new();
    let broker = start_broker(&pki).await;
    let addr = broker.local_addr();
    let topic = "wardgate/v1/site-a/ward-1/gw-7/status";

    let mut watcher = Client::connect(addr, "watcher", pki.good_config()).await;
    watcher
        .subscribe("wardgate/v1/site-a/ward-1/+/status", QoS::AtLeastOnce)
        .await;

    // A client that says goodbye properly: its will is discarded.
    let mut polite = Raw::connect(
        addr,
        pki.good_config(),
        connect_with_will("gw-8", 30, "wardgate/v1/site-a/ward-1/gw-8/status"),
    )
    .await;
    polite.send(Packet::Disconnect).await;
    assert!(polite.read().await.is_none());

    // A client whose link just drops.
    let raw = Raw::connect(
        addr,
        pki.good_config(),
        connect_with_will("gw-7", 30, topic),
    )
    .await;
    drop(raw);

    let will = watcher.next_publish().await;
    assert_eq!(will.topic, topic, "only gw-7's will may be published");
    assert_eq!(&will.payload[..], b"offline");
    assert_eq!(will.qos, QoS::AtLeastOnce);

    // The will was retained: a late subscriber sees it with the retain flag.
    let mut late = Client::connect(addr, "late", pki.good_config()).await;
    late.subscribe("wardgate/v1/site-a/ward-1/+/status", QoS::AtLeastOnce)
        .await;
    let retained = late.next_publish().await;
    assert_eq!(retained.topic, topic);
    assert!(retained.retain);
    late.assert_no_publish(Duration::from_millis(200)).await;
    assert_eq!(broker.stats().wills_published, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn silent_client_dropped_after_one_and_a_half_keepalives() {
    let pki = Pki::new();
    let broker = start_broker(&pki).await;
    let addr = broker.local_addr();
    let topic = "wardgate/v1/site-a/ward-1/gw-3/status";
    let mut watcher = Client::connect(addr, "watcher", pki.good_config()).await;
    watcher.subscribe(topic, QoS::AtLeastOnce).await;

    let started = Instant::now();
    let mut raw = Raw::connect(addr, pki.good_config(), connect_with_will("gw-3", 1, topic)).await;
    assert!(
        raw.read().await.is_none(),
        "broker should drop the silent client"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1400) && elapsed < Duration::from_secs(3),
        "dropped after {elapsed:?}"
    );
    assert_eq!(&watcher.next_publish().await.payload[..], b"offline");
    broker.shutdown().await;
}

#[tokio::test]
async fn same_client_id_takes_over_the_old_session() {
    let pki = Pki::new();
    let broker = start_broker(&pki).await;
    let addr = broker.local_addr();

    let mut first = Raw::connect(addr, pki.good_config(), Connect::new("gw-1")).await;
    let mut second = Raw::connect(addr, pki.good_config(), Connect::new("gw-1")).await;
    assert!(first.read().await.is_none(), "old session must be closed");
    second.send(Packet::PingReq).await;
    assert!(matches!(second.read().await, Some(Packet::PingResp)));
    assert_eq!(broker.stats().connections_active, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn malformed_packet_closes_only_that_connection() {
    let pki = Pki::new();
    let broker = start_broker(&pki).await;
    let addr = broker.local_addr();

    let mut bystander = Raw::connect(addr, pki.good_config(), Connect::new("bystander")).await;
    let mut bad = Raw::connect(addr, pki.good_config(), Connect::new("bad")).await;
    // Packet type 15 does not exist in MQTT 3.1.1.
    bad.send_bytes(&[0xF0, 0x00]).await;
    assert!(bad.read().await.is_none());

    // Oversized packet (remaining length 16 MiB) is refused before it is read.
    let mut huge = Raw::connect(addr, pki.good_config(), Connect::new("huge")).await;
    huge.send_bytes(&[0x30, 0x80, 0x80, 0x80, 0x08]).await;
    assert!(huge.read().await.is_none());

    bystander.send(Packet::PingReq).await;
    assert!(matches!(bystander.read().await, Some(Packet::PingResp)));
    assert_eq!(broker.stats().protocol_errors, 2);
    broker.shutdown().await;
}

/// Waits until the broker has counted `n` rejected TLS handshakes.
async fn wait_tls_rejected(broker: &EmbeddedBroker, n: u64) {
    let deadline = Instant::now() + WAIT;
    while broker.stats().tls_rejected < n {
        assert!(
            Instant::now() < deadline,
            "broker did not reject the handshake"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn client_with_cert_from_unknown_ca_is_refused() {
    let pki = Pki::new();
    let broker = start_broker(&pki).await;
    let mut c = Client::start(
        broker.local_addr(),
        "intruder",
        pki.client_config(Some(pki.rogue.clone_identity())),
    );
    let first = c.next().await;
    assert!(
        matches!(&first, Err(e) if e.contains("UnknownCA")),
        "expected a TLS UnknownCA alert, got {first:?}"
    );
    wait_tls_rejected(&broker, 1).await;
    assert_eq!(broker.stats().connections_accepted, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn client_without_cert_is_refused() {
    let pki = Pki::new();
    let broker = start_broker(&pki).await;
    let mut c = Client::start(broker.local_addr(), "anonymous", pki.client_config(None));
    let first = c.next().await;
    assert!(
        matches!(&first, Err(e) if e.contains("CertificateRequired")),
        "expected a TLS CertificateRequired alert, got {first:?}"
    );
    wait_tls_rejected(&broker, 1).await;
    assert_eq!(broker.stats().connections_accepted, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn shutdown_drops_connected_clients_and_closes_the_port() {
    let pki = Pki::new();
    let broker = start_broker(&pki).await;
    let addr = broker.local_addr();
    let mut c = Client::connect(addr, "gw-1", pki.good_config()).await;
    let mut raw = Raw::connect(addr, pki.good_config(), Connect::new("gw-2")).await;

    timeout(WAIT, broker.shutdown()).await.unwrap();
    assert!(c.next().await.is_err(), "client should see the link drop");
    assert!(raw.read().await.is_none());
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn start_refuses_non_loopback_and_bad_tls() {
    let pki = Pki::new();
    let err = EmbeddedBroker::start("0.0.0.0:0".parse().unwrap(), pki.broker_tls())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);

    let mut tls = pki.broker_tls();
    tls.client_ca.clear();
    let err = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), tls)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn slow_subscriber_is_disconnected_instead_of_blocking() {
    let pki = Pki::new();
    let broker = start_broker(&pki).await;
    let addr = broker.local_addr();

    let mut slow = Raw::connect(addr, pki.good_config(), Connect::new("slow")).await;
    slow.send(Packet::Subscribe(rumqttc::Subscribe::new(
        "flood/#",
        QoS::AtMostOnce,
    )))
    .await;
    assert!(matches!(slow.read().await, Some(Packet::SubAck(_))));
    // From here on `slow` reads nothing.
    let mut fast = Client::connect(addr, "fast", pki.good_config()).await;
    fast.subscribe("flood/last", QoS::AtMostOnce).await;

    let mut publisher = Raw::connect(addr, pki.good_config(), Connect::new("flooder")).await;
    let payload = vec![0x55u8; 64 * 1024];
    let mut sent = 0;
    while broker.stats().slow_subscribers_dropped == 0 {
        assert!(sent < 20_000, "slow subscriber never dropped");
        let mut out = BytesMut::new();
        for _ in 0..32 {
            Packet::Publish(Publish::new("flood/x", QoS::AtMostOnce, payload.clone()))
                .write(&mut out, usize::MAX)
                .unwrap();
        }
        publisher.send_bytes(&out).await;
        sent += 32;
        tokio::task::yield_now().await;
    }
    // The broker still routes for everybody else.
    publisher
        .send(Packet::Publish(Publish::new(
            "flood/last",
            QoS::AtMostOnce,
            "done",
        )))
        .await;
    assert_eq!(&fast.next_publish().await.payload[..], b"done");
    // The slow subscriber's link was closed: draining it ends in EOF.
    while slow.read().await.is_some() {}
    broker.shutdown().await;
}
