//! The gateway's certificate refused at the **receiver** (the other half of the TLS matrix in
//! `tls_matrix.rs`): the broker still lets the gateway in, but the receiver, which trusts
//! gateways through a CA (`gateway_ca`) and honours a revocation list (`gateway_crl`), refuses
//! its batches. What a user checks: the receiver logs why (once), stores nothing from it and
//! sends no ack, so the gateway deletes nothing; the receiver tells the gateway why in a signed
//! refusal notice, so `wardgate status` on the gateway says "RECEIVER REFUSES THIS GATEWAY'S
//! BATCHES: … revoked"; once the receiver trusts the certificate again, every buffered
//! observation arrives, once, and the notice is gone.
//!
//! Revoked: a CRL at the receiver. Expired: the receiver's clock two years ahead (libfaketime)
//! of a gateway certificate valid for one more year (mosquitto, on the real clock, still accepts
//! it).

use std::path::PathBuf;
use std::time::Duration;
use wardgate_e2e::env::{GatewayOptions, ReceiverOptions, TestEnv, GATEWAY_ID, SITE, WARD};
use wardgate_e2e::pty::{Device, Replayer};
use wardgate_e2e::wait_for;
use wardgate_sim::pki::write_pair;

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// A gateway certificate as `provision` makes them (CN and `urn:wardgate:{site}:{ward}:{id}`)
/// with serial number `serial`, valid until January 1st of `until_year` (default: rcgen's).
fn gateway_cert(env: &TestEnv, serial: u64, until_year: Option<i32>) -> (PathBuf, PathBuf) {
    let urn = format!("urn:wardgate:{SITE}:{WARD}:{GATEWAY_ID}");
    let (cert, key) = env
        .pki
        .ca
        .leaf_with(GATEWAY_ID, &[urn.as_str()], false, |p| {
            p.serial_number = Some(serial.into());
            if let Some(y) = until_year {
                p.not_after = rcgen::date_time_ymd(y, 1, 1);
            }
        })
        .unwrap();
    write_pair(&env.pki.dir, "gateway-ca-trusted", (cert, key)).unwrap()
}

/// The receiver's config trusting gateways by the test CA, with `crl` if given.
fn receiver_config(env: &TestEnv, crl: Option<&PathBuf>) -> PathBuf {
    let cfg = env
        .write_receiver_config_with_certs(&ReceiverOptions::default(), &[])
        .unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let mut trust = format!("gateway_ca = \"{}\"\n", env.pki.ca_pem.display());
    if let Some(crl) = crl {
        trust.push_str(&format!("gateway_crl = [\"{}\"]\n", crl.display()));
    }
    std::fs::write(&cfg, text.replace("gateway_certs = []\n", &trust)).unwrap();
    cfg
}

fn gateway_status(env: &TestEnv, cfg: &std::path::Path) -> String {
    env.cli(
        &["status".as_ref(), "--config".as_ref(), cfg.as_os_str()],
        b"",
        Duration::from_secs(10),
    )
    .map(|o| o.stdout)
    .unwrap_or_default()
}

/// Streams one recording through a gateway with `cert` while the receiver started with
/// `receiver_env` refuses it; checks the refusal on both sides; then restarts the receiver
/// trusting it (no CRL, real clock) and checks that everything arrives.
fn refused_then_trusted(
    env: &TestEnv,
    cert: (PathBuf, PathBuf),
    crl: Option<&PathBuf>,
    receiver_env: &[(&str, &str)],
    receiver_says: &str,
    status_says: &str,
) {
    let cms = Device::cms50e("bed1-spo2");
    let mut opts: GatewayOptions = env.gateway_options();
    opts.devices = vec![cms.clone()];
    opts.ack_timeout_s = 2;
    (opts.cert, opts.key) = cert;
    let gw_cfg = env.write_gateway_config(&opts).unwrap();

    let rx_cfg = receiver_config(env, crl);
    let mut receiver = env.spawn_receiver_with_env(&rx_cfg, receiver_env).unwrap();
    env.wait_subscribed("e2e-receiver", 1, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}\n{}", receiver.stderr()));
    let mut replay = Replayer::new("cms", cms.open_port(&env.dev_dir()).unwrap());
    let mut gateway = env.spawn_gateway(&gw_cfg).unwrap();
    replay.play(&cms.recording, cms.pace, 4.0);

    // The receiver refuses, says why once, and tells the gateway.
    receiver
        .wait_stderr(receiver_says, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", receiver.stderr()));
    let mut status = String::new();
    wait_for(
        "the gateway's status to report the receiver's refusal",
        Duration::from_secs(30),
        || {
            status = gateway_status(env, &gw_cfg);
            Ok(status.contains("RECEIVER REFUSES THIS GATEWAY'S BATCHES")
                && status.contains(status_says))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nstatus:\n{status}\ngateway:\n{}", gateway.stderr()));
    eprintln!("while refused:\n{status}");
    replay.wait_done(Duration::from_secs(60)).unwrap();
    // Several re-sends later (ack_timeout 2 s): still one line in the receiver's log, still
    // nothing stored upstream, every observation still in the gateway's store.
    wait_for(
        "three re-sends of the first batch",
        Duration::from_secs(30),
        || {
            let s = gateway_status(env, &gw_cfg);
            Ok(s.lines()
                .find(|l| l.contains("batches sent ("))
                .and_then(|l| {
                    l.split(" re-sent")
                        .next()?
                        .rsplit('(')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .is_some_and(|n| n >= 3))
        },
    )
    .unwrap();
    assert_eq!(
        receiver
            .stderr()
            .lines()
            .filter(|l| l.contains("rejected message"))
            .count(),
        1,
        "logged once:\n{}",
        receiver.stderr()
    );
    assert!(
        env.upstream()
            .count_by_device()
            .unwrap_or_default()
            .is_empty(),
        "nothing from a refused gateway is stored"
    );
    let store = env.store().unwrap();
    assert_eq!(
        store.queue.iter().filter(|r| r.kind.is_none()).count() as u64,
        cms.expected(),
        "every observation waits in the gateway's store"
    );
    assert!(gateway.stderr().contains("refuses this gateway's batches"));

    // Trusted again (a mistaken revocation lifted, the receiver's clock fixed): everything
    // arrives, once, and the notice is cleared.
    receiver.terminate(Duration::from_secs(10)).unwrap();
    let rx_cfg = receiver_config(env, None);
    let mut receiver = env.spawn_receiver(&rx_cfg).unwrap();
    env.wait_delivered(&[(cms.id(), cms.expected())], Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", receiver.stderr()));
    let (rows, distinct) = env.upstream().row_and_distinct_counts().unwrap();
    assert_eq!(rows, distinct, "each observation stored once");
    env.wait_store_drained(Duration::from_secs(30)).unwrap();
    wait_for(
        "the notice to clear from status",
        Duration::from_secs(15),
        || Ok(!gateway_status(env, &gw_cfg).contains("RECEIVER REFUSES")),
    )
    .unwrap();
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    receiver.terminate(Duration::from_secs(10)).unwrap();
}

#[test]
fn gateway_certificate_revoked_at_the_receiver() {
    let env = TestEnv::new("rx-trust-revoked", BIN).unwrap();
    let cert = gateway_cert(&env, 5151, None);
    let crl = env.pki.dir.join("gateways.crl");
    std::fs::write(&crl, env.pki.ca.crl(&[5151]).unwrap()).unwrap();
    refused_then_trusted(
        &env,
        cert,
        Some(&crl),
        &[],
        "it is revoked",
        "it is revoked",
    );
}

#[test]
fn gateway_certificate_expired_at_the_receiver() {
    if !std::path::Path::new(LIBFAKETIME).exists() {
        wardgate_e2e::skip_or_fail(&format!(
            "{LIBFAKETIME} missing: apt-get install faketime (scripts/test does)"
        ));
        return;
    }
    let env = TestEnv::new("rx-trust-expired", BIN).unwrap();
    let next_year = 1970 + (wardgate_adapters::observation::now_ms() / 31_556_952_000) as i32 + 1;
    let cert = gateway_cert(&env, 5152, Some(next_year + 1));
    // The receiver's clock three years ahead: the gateway's certificate has expired by it.
    let faked = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME", "+1095d"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("NO_FAKE_STAT", "1"),
    ];
    refused_then_trusted(
        &env,
        cert,
        None,
        &faked,
        "it expired on",
        &format!("it expired on {}-01-01", next_year + 1),
    );
}
