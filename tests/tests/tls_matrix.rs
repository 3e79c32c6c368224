//! The TLS matrix, both directions, on a real mosquitto: every broken certificate an installer
//! can meet is refused, with its own reason, in the gateway's log (one WARN line, not one per
//! retry) and in `wardgate status` ("DISCONNECTED since …: reason"), the gateway never
//! connects, keeps running and hands nothing over (its store keeps every row).
//!
//! Broker certificate (the gateway refuses it): expired, not yet valid, wrong host, unknown CA,
//! self-signed, incomplete chain (the broker does not send its intermediate), weak key (RSA 1024,
//! made with the `openssl` command line: rcgen/ring cannot make one), wrong key usage (a client
//! certificate on the broker). A complete chain through an intermediate connects (the control).
//!
//! Gateway certificate (the broker refuses it): revoked (mosquitto `crlfile`), expired. The
//! receiver's side (a gateway certificate revoked or expired at the receiver) is in
//! `receiver_trust.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;
use wardgate_e2e::broker::{MosquittoOptions, Pki};
use wardgate_e2e::env::{GatewayOptions, TestEnv};
use wardgate_e2e::{count_lines, wait_for};
use wardgate_sim::pki::{self_signed_leaf, write_key, Ca};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");

/// Writes `(cert, key)` PEMs to `dir/STEM.pem|.key`.
fn write_pair(dir: &Path, stem: &str, pair: (String, String)) -> (PathBuf, PathBuf) {
    wardgate_sim::pki::write_pair(dir, stem, pair).unwrap()
}

/// The broker's listener from `pki` with another certificate and key.
fn broker_with(pki: &Pki, (certfile, keyfile): (PathBuf, PathBuf)) -> MosquittoOptions {
    MosquittoOptions {
        certfile,
        keyfile,
        ..MosquittoOptions::from_pki(pki)
    }
}

const LOOPBACK: &[&str] = &["127.0.0.1", "localhost"];

/// The `N connection failures` figure of a `wardgate status` text.
fn connection_failures(status: &str) -> Option<u64> {
    let l = status.lines().find(|l| l.contains("connection failures"))?;
    let head = l.split(" connection failures").next()?;
    head.rsplit(' ').next()?.parse().ok()
}

/// Runs a gateway (backoff capped at 1 s) against the broker `env` started, and checks that the
/// uplink is refused with a reason holding every one of `needles`: one WARN line in the log,
/// the same in `wardgate status` after at least three attempts, no connection at the broker,
/// nothing handed over. Returns the status text.
fn assert_refused(env: &TestEnv, opts: GatewayOptions, needles: &[&str]) -> String {
    let mut opts = opts;
    opts.backoff_max_s = 1;
    let cfg = env.write_gateway_config(&opts).unwrap();
    let mut gateway = env.spawn_gateway(&cfg).unwrap();
    gateway
        .wait_stderr(needles[0], 1, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.stderr()));
    let mut status = String::new();
    wait_for(
        "`wardgate status` to show the refusal after three attempts",
        Duration::from_secs(30),
        || {
            let out = env.cli(
                &["status".as_ref(), "--config".as_ref(), cfg.as_os_str()],
                b"",
                Duration::from_secs(10),
            )?;
            status = out.stdout;
            Ok(status.contains("uplink:   DISCONNECTED since ")
                && needles.iter().all(|n| status.contains(n))
                && connection_failures(&status).is_some_and(|n| n >= 3))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nstatus:\n{status}\nlog:\n{}", gateway.stderr()));
    assert!(gateway.is_running(), "the gateway keeps running");
    let log = gateway.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(needles[0])).collect();
    assert_eq!(lines.len(), 1, "the reason is logged once:\n{log}");
    assert!(lines[0].starts_with("WARN"), "{}", lines[0]);
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` missing from: {}", lines[0]);
    }
    assert!(!log.contains("uplink connected"), "{log}");
    assert_eq!(
        count_lines(&env.broker.log(), "New client connected"),
        0,
        "no MQTT session at the broker:\n{}",
        env.broker.log()
    );
    let store = env.store().unwrap();
    // (That the store keeps accepting device data meanwhile is shown for one of these causes in
    // tls_failures.rs: the store does not depend on why the uplink is refused.)
    assert_eq!(store.unacked_batches, 0, "nothing handed over");
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    eprintln!("refused as expected; status:\n{status}");
    status
}

fn refused_broker_cert(
    name: &str,
    make: impl FnOnce(&Pki) -> (String, String),
    extra: &str,
    needles: &[&str],
) {
    let env = TestEnv::with_broker(name, BIN, |pki| {
        let pair = write_pair(&pki.dir, "broken-broker", make(pki));
        MosquittoOptions {
            extra: extra.into(),
            ..broker_with(pki, pair)
        }
    })
    .unwrap();
    let opts = env.gateway_options();
    assert_refused(&env, opts, needles);
}

#[test]
fn broker_certificate_expired() {
    refused_broker_cert(
        "tlsm-expired",
        |pki| {
            pki.ca
                .leaf_with("expired broker", LOOPBACK, true, |p| {
                    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
                })
                .unwrap()
        },
        "",
        &["expired on 2021-01-01", "CN=expired broker"],
    );
}

#[test]
fn broker_certificate_not_yet_valid() {
    refused_broker_cert(
        "tlsm-future",
        |pki| {
            pki.ca
                .leaf_with("future broker", LOOPBACK, true, |p| {
                    p.not_before = rcgen::date_time_ymd(2099, 1, 1);
                    p.not_after = rcgen::date_time_ymd(2100, 1, 1);
                })
                .unwrap()
        },
        "",
        &["waiting for time", "valid from 2099-01-01"],
    );
}

#[test]
fn broker_certificate_for_another_host() {
    refused_broker_cert(
        "tlsm-host",
        |pki| {
            pki.ca
                .leaf("other broker", &["mqtt.ward7.example.org"], true)
                .unwrap()
        },
        "",
        &[
            "does not name the configured host 127.0.0.1",
            "mqtt.ward7.example.org",
        ],
    );
}

#[test]
fn broker_certificate_from_an_unknown_ca() {
    refused_broker_cert(
        "tlsm-unknown-ca",
        |_| {
            Ca::new("rogue CA")
                .unwrap()
                .leaf("rogue broker", LOOPBACK, true)
                .unwrap()
        },
        "",
        &["not signed by the configured CA", "CN=rogue CA"],
    );
}

#[test]
fn broker_certificate_self_signed() {
    refused_broker_cert(
        "tlsm-self-signed",
        |_| self_signed_leaf("lonely broker", LOOPBACK, true).unwrap(),
        "",
        &["self-signed certificate", "CN=lonely broker"],
    );
}

#[test]
fn broker_certificate_without_its_intermediate() {
    refused_broker_cert(
        "tlsm-incomplete",
        |pki| {
            pki.ca
                .intermediate("ward intermediate CA")
                .unwrap()
                .leaf("chained broker", LOOPBACK, true)
                .unwrap()
        },
        "",
        &[
            "not signed by the configured CA",
            "CN=ward intermediate CA",
            "full chain",
        ],
    );
}

#[test]
fn broker_certificate_with_a_client_purpose() {
    refused_broker_cert(
        "tlsm-purpose",
        |pki| pki.ca.leaf("client-only broker", LOOPBACK, false).unwrap(),
        "",
        &["not issued for a TLS server", "serverAuth"],
    );
}

#[test]
fn broker_certificate_with_a_weak_rsa_key() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        wardgate_e2e::skip_or_fail("the openssl command is missing (apt-get install openssl)");
        return;
    }
    refused_broker_cert(
        "tlsm-weak",
        |pki| {
            // An RSA 1024 key and a serverAuth certificate for it, signed by the test CA.
            let dir = &pki.dir;
            let ca_key = dir.join("ca-signing.key");
            write_key(&ca_key, &pki.ca.key_pem()).unwrap();
            let ext = dir.join("weak.ext");
            std::fs::write(
                &ext,
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
            )
            .unwrap();
            let run = |args: &[&str]| {
                let out = std::process::Command::new("openssl")
                    .args(args)
                    .current_dir(dir)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "openssl {args:?}: {out:?}");
            };
            run(&[
                "req",
                "-new",
                "-newkey",
                "rsa:1024",
                "-nodes",
                "-keyout",
                "weak.key",
                "-out",
                "weak.csr",
                "-subj",
                "/CN=weak broker",
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                "weak.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-signing.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                "weak.ext",
                "-out",
                "weak.pem",
            ]);
            (
                std::fs::read_to_string(dir.join("weak.pem")).unwrap(),
                std::fs::read_to_string(dir.join("weak.key")).unwrap(),
            )
        },
        // Debian's OpenSSL refuses to load a 1024-bit key at its default security level 2.
        "ciphers DEFAULT:@SECLEVEL=0",
        &["weak key (RSA 1024 bits"],
    );
}

#[test]
fn broker_certificate_with_its_intermediate_connects() {
    let env = TestEnv::with_broker("tlsm-chain-ok", BIN, |pki| {
        let mid = pki.ca.intermediate("ward intermediate CA").unwrap();
        let (cert, key) = mid.leaf("chained broker", LOOPBACK, true).unwrap();
        let full = format!("{cert}{}", mid.cert_pem);
        broker_with(pki, write_pair(&pki.dir, "chained-broker", (full, key)))
    })
    .unwrap();
    let cfg = env.write_gateway_config(&env.gateway_options()).unwrap();
    let mut gateway = env.spawn_gateway(&cfg).unwrap();
    gateway
        .wait_stderr("uplink connected", 1, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.stderr()));
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
}

/// The gateway's certificate with serial number `serial` (rcgen otherwise picks one at random).
fn gateway_cert(pki: &Pki, serial: u64, expired: bool) -> (String, String) {
    pki.ca
        .leaf_with(wardgate_e2e::env::GATEWAY_ID, &[], false, |p| {
            p.serial_number = Some(serial.into());
            if expired {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
        })
        .unwrap()
}

#[test]
fn gateway_certificate_revoked_at_the_broker() {
    let env = TestEnv::with_broker("tlsm-client-revoked", BIN, |pki| {
        let crl = pki.dir.join("ca.crl");
        std::fs::write(&crl, pki.ca.crl(&[4242]).unwrap()).unwrap();
        MosquittoOptions {
            extra: format!("crlfile {}", crl.display()),
            ..MosquittoOptions::from_pki(pki)
        }
    })
    .unwrap();
    let (cert, key) = write_pair(
        &env.pki.dir,
        "revoked-gateway",
        gateway_cert(&env.pki, 4242, false),
    );
    let mut opts = env.gateway_options();
    opts.cert = cert;
    opts.key = key;
    assert_refused(&env, opts, &["as REVOKED", "uplink.cert"]);
}

#[test]
fn gateway_certificate_expired_at_the_broker() {
    let env = TestEnv::new("tlsm-client-expired", BIN).unwrap();
    let (cert, key) = write_pair(
        &env.pki.dir,
        "expired-gateway",
        gateway_cert(&env.pki, 4243, true),
    );
    let mut opts = env.gateway_options();
    opts.cert = cert;
    opts.key = key;
    assert_refused(&env, opts, &["as EXPIRED", "uplink.cert"]);
}
