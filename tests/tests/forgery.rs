//! The shared broker (issue 9): another holder of a certificate from the hospital CA — here a
//! second ward gateway, `gw-ward7-02` — on the same mosquitto with no ACLs.
//!
//! - **Forged acks delete nothing.** With the receiver down, the impostor watches the batch
//!   topic and acks every batch it sees: a plain v1 ack, a v2 ack signed with its own key, and a
//!   retained one. The gateway refuses them all (counted in `wardgate status`, logged once per
//!   sender); when the real receiver comes back, every observation of the recording arrives.
//! - **One gateway cannot forge another's data.** The impostor signs a batch claiming to be
//!   `gw-e2e-01` with seqs the real gateway will use; the receiver refuses it (its certificate
//!   names another gateway), and the real rows with those seqs are then stored, not dropped as
//!   duplicates.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wardgate::batch::{Ack, BatchPayload, WireObservation};
use wardgate_e2e::env::{ReceiverOptions, TestEnv, GATEWAY_ID, SITE, WARD};
use wardgate_e2e::pty::{Device, Replayer};
use wardgate_e2e::{count_lines, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");
const IMPOSTOR: &str = "gw-ward7-02";

/// An MQTT client holding the impostor's certificate: `(client, event loop)`, connected.
async fn impostor_client(env: &TestEnv, id: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let (cert, key) = env.pki.leaf("impostor", IMPOSTOR, &[], false).unwrap();
    let tls = wardgate::tls::client_config(&env.pki.ca_pem, &cert, &key).unwrap();
    let mut o = MqttOptions::new(id, "127.0.0.1", env.broker.port);
    o.set_keep_alive(Duration::from_secs(5))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    AsyncClient::new(o, 64)
}

/// The impostor's signer (its own certificate and key, as a real second gateway has).
fn impostor_signer(env: &TestEnv) -> wardgate::signing::Signer {
    let dir = env.pki.ca_pem.parent().unwrap();
    wardgate::signing::Signer::from_files(&dir.join("impostor.pem"), &dir.join("impostor.key"))
        .unwrap()
}

#[test]
fn forged_acks_from_another_certificate_holder_delete_nothing() {
    let env = TestEnv::new("forged-acks", BIN).unwrap();
    // Every frame's numerics (numerics_every_s = 0): rows enough for many batches.
    let cms = Device::cms50e("bed1-spo2").with_numerics_every(0);
    let mut opts = env.gateway_options();
    opts.devices = vec![cms.clone()];
    let cfg = env.write_gateway_config(&opts).unwrap();
    let mut replays = Replayer::for_devices(&env.dev_dir(), &[&cms]).unwrap();
    let mut gateway = env.spawn_gateway(&cfg).unwrap();

    // The impostor acks every batch it sees, three ways, while no receiver runs.
    let forged = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (client, mut el) = rt.block_on(impostor_client(&env, "impostor-acker"));
    let signer = impostor_signer(&env);
    let gateway_cert = env.pki.gateway_cert.clone();
    let ack_topic = format!("wardgate/v1/{SITE}/{WARD}/{GATEWAY_ID}/ack");
    {
        let (forged, stop) = (forged.clone(), stop.clone());
        rt.spawn(async move {
            let mut reader = wardgate::signing::Verifier::default();
            reader.add_file(&gateway_cert).unwrap();
            client
                .subscribe("wardgate/v1/+/+/+/batch", QoS::AtLeastOnce)
                .await
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(1), el.poll()).await
                else {
                    continue;
                };
                let Event::Incoming(Packet::Publish(p)) = ev else {
                    continue;
                };
                if !p.topic.ends_with("/batch") {
                    continue;
                }
                // Batches are encrypted to the receiver (issue 9 item 3): the impostor holds a
                // valid certificate but can read neither the values nor the batch number, so it
                // guesses the number (small and sequential).
                assert!(
                    reader.verify(&p.payload).is_err(),
                    "batch readable by a third party"
                );
                let guessed = forged.load(Ordering::Relaxed) + 1;
                let batch = guessed;
                let ack = |v| Ack {
                    v,
                    gateway: GATEWAY_ID.into(),
                    batches: vec![batch],
                    refused: None,
                };
                // try_publish: never await the client from the task that polls its loop.
                let _ = client.try_publish(&ack_topic, QoS::AtLeastOnce, false, ack(1).to_cbor());
                let _ = client.try_publish(
                    &ack_topic,
                    QoS::AtLeastOnce,
                    false,
                    signer.sign(ack(2).to_cbor()),
                );
                let _ = client.try_publish(&ack_topic, QoS::AtLeastOnce, true, ack(1).to_cbor());
                forged.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    replays[0].play(&cms.recording, cms.pace, 1.0);
    wait_for(
        "batches seen and acked by the impostor",
        Duration::from_secs(60),
        || Ok(forged.load(Ordering::Relaxed) >= 5),
    )
    .unwrap();
    replays[0].wait_done(Duration::from_secs(60)).unwrap();
    stop.store(true, Ordering::Relaxed);
    drop(rt);

    // Nothing left the store: every observation accepted is still queued.
    let status = |json: bool| {
        let mut c = std::process::Command::new(BIN);
        c.args(["status", "--config"]).arg(&cfg);
        if json {
            c.arg("--json");
        }
        c.output().unwrap()
    };
    wait_for(
        "refused acks in wardgate status",
        Duration::from_secs(30),
        || {
            let v: serde_json::Value = serde_json::from_slice(&status(true).stdout)?;
            Ok(v["snapshot"]["uplink"]["acks_refused"]
                .as_u64()
                .unwrap_or(0)
                >= 10)
        },
    )
    .unwrap();
    let text = String::from_utf8_lossy(&status(false).stdout).into_owned();
    assert!(text.contains("ACKS REFUSED"), "{text}");
    let expected = cms.expected();
    let queued = env.store().unwrap().queue.len() as u64;
    assert!(
        queued >= expected,
        "rows were deleted: {queued} queued for {expected} observations (and device events)"
    );
    // Logged once per sender (unsigned, and the impostor's kid), not once per forged ack.
    let log = gateway.stderr();
    let lines = count_lines(&log, "refusing an ack from");
    assert_eq!(lines, 2, "one line per sender:\n{log}");

    // The real receiver comes back: everything arrives, once.
    let _receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    env.wait_delivered(&[(cms.id(), expected)], Duration::from_secs(60))
        .unwrap();
    env.wait_store_drained(Duration::from_secs(30)).unwrap();
    let (rows, distinct) = env.upstream().row_and_distinct_counts().unwrap();
    assert_eq!((rows, distinct), (expected, expected));
    // The retained forgery is gone once the gateway reconnects: it clears its ack topic before
    // it subscribes.
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    let mut gateway = env.spawn_gateway(&cfg).unwrap();
    gateway
        .wait_stderr("uplink connected", 1, Duration::from_secs(30))
        .unwrap();
    let ack_filter = format!("wardgate/v1/{SITE}/{WARD}/{GATEWAY_ID}/ack");
    wait_for(
        "the retained forged ack cleared",
        Duration::from_secs(30),
        || {
            let seen = wardgate_e2e::mqtt::collect(&env, &ack_filter, Duration::from_secs(1))?;
            Ok(seen.iter().all(|m| !m.retained || m.payload.is_empty()))
        },
    )
    .unwrap();
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
}

#[test]
fn a_batch_signed_by_another_gateway_is_refused_and_the_real_rows_are_stored() {
    let env = TestEnv::new("forged-batch", BIN).unwrap();
    // The receiver trusts both gateways' certificates, as a hospital's receiver does.
    let signer = {
        env.pki.leaf("impostor", IMPOSTOR, &[], false).unwrap();
        impostor_signer(&env)
    };
    let dir = env.pki.ca_pem.parent().unwrap().to_path_buf();
    let rx_cfg = env
        .write_receiver_config_with_certs(
            &ReceiverOptions::default(),
            &[env.pki.gateway_cert.clone(), dir.join("impostor.pem")],
        )
        .unwrap();
    let mut receiver = env.spawn_receiver(&rx_cfg).unwrap();
    env.wait_subscribed(
        &ReceiverOptions::default().client_id,
        1,
        Duration::from_secs(20),
    )
    .unwrap();

    // The gateway's store seeds its seqs from the clock: the impostor claims the next ones.
    let seed = env.init_store().unwrap();
    let first = seed.seq + 1;
    let forged = BatchPayload {
        v: 1,
        gateway: GATEWAY_ID.into(),
        site: SITE.into(),
        ward: WARD.into(),
        batch: seed.batch,
        observations: (0..2000)
            .map(|i| WireObservation {
                seq: first + i,
                device: "serial:bed1-spo2".into(),
                code: 150456,
                value: 42.0,
                unit: 262688,
                ucum: "%".into(),
                gateway_time: 1,
                time_quality: "synced".into(),
                device_time: None,
                status: vec![],
                waveform: None,
            })
            .collect(),
        events: vec![],
        locations: Default::default(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, mut el) = impostor_client(&env, "impostor-forger").await;
        client
            .publish(
                format!("wardgate/v1/{SITE}/{WARD}/{GATEWAY_ID}/batch"),
                QoS::AtLeastOnce,
                false,
                signer.sign(forged.to_cbor()),
            )
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
                Ok(Ok(_)) => {}
                other => panic!("forged batch not published: {other:?}"),
            }
        }
    });
    receiver
        .wait_stderr("not by gateway gw-e2e-01", 1, Duration::from_secs(20))
        .unwrap();

    // The real gateway streams its recording: its rows (with those seqs) are stored.
    let cms = Device::cms50e("bed1-spo2");
    let mut opts = env.gateway_options();
    opts.devices = vec![cms.clone()];
    let cfg = env.write_gateway_config(&opts).unwrap();
    let mut replays = Replayer::for_devices(&env.dev_dir(), &[&cms]).unwrap();
    let mut gateway = env.spawn_gateway(&cfg).unwrap();
    replays[0].play(&cms.recording, cms.pace, 1.0);
    env.wait_delivered(&[(cms.id(), cms.expected())], Duration::from_secs(60))
        .unwrap();
    let obs = env.upstream().observations().unwrap();
    assert!(
        obs.iter()
            .all(|o| !(o.code == 150456 && o.value == Some(42.0))),
        "a forged SpO2 of 42 % was stored"
    );
    assert!(
        env.upstream().all_seqs().unwrap().contains(&first),
        "the real first row (seq {first}) was dropped as a duplicate of the forged one"
    );
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
}
