//! End-to-end confidentiality (issue 9 item 3) on the shared broker: the gateway lists the
//! receiver's certificate in `[uplink] receiver_certs`, so batches and device status are
//! COSE_Encrypt to it (on by default). A third party holding another valid certificate from the
//! hospital CA subscribes to everything and captures it: it can neither verify nor read a
//! message (no COSE_Sign1, no device id or value in the bytes), while the receiver decrypts,
//! verifies and stores every observation. The captured batches are then decrypted and verified
//! by the independent Python decryptor (`tests/python/decrypt_cose.py` via `verify_cose.py
//! --key`) and by `wardgate verify --key`; without the key both refuse them.

use std::path::PathBuf;
use std::time::Duration;
use wardgate_e2e::env::{ReceiverOptions, TestEnv};
use wardgate_e2e::pty::{Device, Replayer};
use wardgate_e2e::{mqtt, python};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");
const TARGET_TMP: &str = env!("CARGO_TARGET_TMPDIR");

#[test]
fn a_third_party_on_the_batch_topic_reads_nothing_while_the_receiver_stores_everything() {
    let env = TestEnv::new("encryption", BIN).unwrap();
    let cms = Device::cms50e("bed1-spo2");
    let expected = cms.expected();
    let (eve_cert, eve_key) = env
        .pki
        .leaf("eavesdropper", "gw-ward7-09", &[], false)
        .unwrap();

    // The eavesdropper subscribes to every wardgate topic before anything is published.
    let listen = {
        let (ca, port) = (env.pki.ca_pem.clone(), env.broker.port);
        std::thread::spawn(move || {
            mqtt::collect_with(
                &ca,
                &eve_cert,
                &eve_key,
                port,
                "wardgate/v1/#",
                Duration::from_secs(25),
            )
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let mut receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut opts = env.gateway_options();
    opts.devices = vec![cms.clone()];
    let cfg = env.write_gateway_config(&opts).unwrap();
    let mut replays = Replayer::for_devices(&env.dev_dir(), &[&cms]).unwrap();
    let mut gateway = env.spawn_gateway(&cfg).unwrap();
    replays[0].play(&cms.recording, cms.pace, 1.0);
    replays[0].wait_done(Duration::from_secs(60)).unwrap();
    // Settled, not merely drained: with send-at-once the queue is empty between two commits
    // while the device's last bytes are still being decoded.
    env.wait_settled(Duration::from_secs(2), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", env.diagnostics()));

    // The receiver stored every observation, values included.
    let up = env.upstream();
    assert_eq!(up.count("serial:bed1-spo2").unwrap(), expected);

    let seen = listen.join().unwrap().unwrap();
    let batches: Vec<_> = seen
        .iter()
        .filter(|m| m.topic.ends_with("/batch"))
        .collect();
    let statuses: Vec<_> = seen
        .iter()
        .filter(|m| m.topic.contains("/device/") && !m.payload.is_empty())
        .collect();
    assert!(!batches.is_empty(), "the eavesdropper saw no batch");
    assert!(
        !statuses.is_empty(),
        "the eavesdropper saw no device status"
    );
    let mut gateway_verifier = wardgate::signing::Verifier::default();
    gateway_verifier.add_file(&env.pki.gateway_cert).unwrap();
    for m in batches.iter().chain(&statuses) {
        assert!(
            wardgate::encryption::is_encrypted(&m.payload),
            "{} is not COSE_Encrypt",
            m.topic
        );
        // Holding the gateway's certificate does not help: there is no signed message to read.
        assert!(gateway_verifier.verify(&m.payload).is_err());
        for clear in [&b"bed1-spo2"[..], b"observations", b"gw-e2e-01"] {
            assert!(
                !m.payload.windows(clear.len()).any(|w| w == clear),
                "{} payload shows {:?} in clear",
                m.topic,
                String::from_utf8_lossy(clear)
            );
        }
    }
    // The eavesdropper's own key opens nothing.
    let eve = wardgate::encryption::Decryptor::from_files(
        &env.pki.ca_pem.parent().unwrap().join("eavesdropper.pem"),
        &env.pki.ca_pem.parent().unwrap().join("eavesdropper.key"),
    )
    .unwrap();
    assert!(batches.iter().all(|m| eve.decrypt(&m.payload).is_err()));

    // The captured messages, decrypted and verified independently with the receiver's key.
    let dir = env.dir.join("captured");
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<PathBuf> = batches
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let p = dir.join(format!("{i:05}.cose"));
            std::fs::write(&p, &m.payload).unwrap();
            p
        })
        .collect();
    let s = python::verify_with(
        TARGET_TMP.as_ref(),
        &env.pki.gateway_cert,
        Some(&env.pki.receiver_key),
        std::slice::from_ref(&dir),
    )
    .unwrap();
    assert!(s.output.status.success(), "{:?}", s.output);
    assert_eq!(s.totals["failed"], 0, "{:?}", s.output);
    assert_eq!(s.totals["verified"], files.len());
    assert!(s.totals["unique_observations"].as_u64().unwrap() > 0);
    // Without the key, the Python verifier refuses them (not a COSE_Sign1).
    let s = python::verify(TARGET_TMP.as_ref(), &env.pki.gateway_cert, &files[..1]).unwrap();
    assert_eq!(s.totals["failed"], 1, "{:?}", s.output);
    // With the eavesdropper's key, no recipient is found.
    let s = python::verify_with(
        TARGET_TMP.as_ref(),
        &env.pki.gateway_cert,
        Some(&env.pki.ca_pem.parent().unwrap().join("eavesdropper.key")),
        &files[..1],
    )
    .unwrap();
    assert_eq!(s.totals["failed"], 1, "{:?}", s.output);
    assert!(s.output.stderr.contains("no recipient"), "{:?}", s.output);

    // `wardgate verify --key` opens them too; without --key it says why not.
    let cert = env.pki.gateway_cert.as_os_str();
    let key = env.pki.receiver_key.as_os_str();
    let mut args: Vec<&std::ffi::OsStr> = vec!["verify".as_ref(), "--cert".as_ref(), cert];
    args.extend(["--key".as_ref(), key]);
    args.extend(files.iter().map(|f| f.as_os_str()));
    let out = env.cli(&args, b"", Duration::from_secs(60)).unwrap();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), files.len());
    let out = env
        .cli(
            &[
                "verify".as_ref(),
                "--cert".as_ref(),
                cert,
                files[0].as_os_str(),
            ],
            b"",
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr.contains("encrypted"), "{}", out.stderr);

    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    receiver.terminate(Duration::from_secs(10)).unwrap();
}
