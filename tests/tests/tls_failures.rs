//! Mutual TLS failures, as an installer meets them. What a user checks: the gateway refuses a
//! broker whose certificate its CA did not sign, keeps accepting device data into its store,
//! says why in one log line (not one per retry); a broker that refuses the gateway's client
//! certificate gets a log line naming the client certificate; a missing client certificate or a
//! key that does not belong to it stops the gateway at start with a message naming the file.

use std::time::Duration;
use wardgate_e2e::broker::MosquittoOptions;
use wardgate_e2e::env::TestEnv;
use wardgate_e2e::pty::{Device, Replayer};
use wardgate_e2e::{count_lines, wait_for};
use wardgate_sim::pki::{write_pair, Ca};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");

/// A second CA, unknown to everyone else, with one leaf written to `dir/STEM.pem|.key`.
fn rogue_leaf(
    dir: &std::path::Path,
    stem: &str,
    cn: &str,
    names: &[&str],
    server: bool,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let ca = Ca::new("rogue CA").unwrap();
    write_pair(dir, stem, ca.leaf(cn, names, server).unwrap()).unwrap()
}

/// Connections mosquitto dropped during the TLS handshake (each one a retry of the gateway).
/// TLS handshakes the broker refused or saw aborted. mosquitto logs each one in one of two ways,
/// depending on whether it failed while accepting (`Client connection from … failed: …`) or just
/// after (`New connection …`, then `Client <unknown> disconnected: Protocol error`); counting one
/// form only made the count grow by chance, every few attempts.
fn failed_handshakes(log: &str) -> usize {
    count_lines(log, "Client <unknown> disconnected: Protocol error")
        + log
            .lines()
            .filter(|l| l.contains("Client connection from") && l.contains(" failed: "))
            .count()
}

#[test]
fn broker_certificate_from_an_unknown_ca_is_refused_logged_once_and_data_is_buffered() {
    let env = TestEnv::with_broker("tls-broker-ca", BIN, |pki| {
        let (certfile, keyfile) = rogue_leaf(
            &pki.dir,
            "rogue-broker",
            "rogue broker",
            &["127.0.0.1", "localhost"],
            true,
        );
        MosquittoOptions {
            certfile,
            keyfile,
            ..MosquittoOptions::from_pki(pki)
        }
    })
    .unwrap();
    let cms = Device::cms50e("bed1-spo2");
    let mut opts = env.gateway_options();
    opts.backoff_max_s = 1;
    opts.devices = vec![cms.clone()];
    let cfg = env.write_gateway_config(&opts).unwrap();
    let mut replay = Replayer::new("cms", cms.open_port(&env.dev_dir()).unwrap());
    let mut gateway = env.spawn_gateway(&cfg).unwrap();
    replay.play(&cms.recording, cms.pace, 2.0);

    gateway
        .wait_stderr(
            "not signed by the configured CA",
            1,
            Duration::from_secs(15),
        )
        .unwrap();
    // The devices' data is accepted all the same, and waits in the store.
    let want = cms.expected();
    wait_for(
        "the recording to be accepted into the store",
        Duration::from_secs(20),
        || {
            let s = env.store()?;
            Ok(s.queue.iter().filter(|r| r.kind.is_none()).count() as u64 >= want)
        },
    )
    .unwrap();
    // Several retry periods (backoff capped at 1 s) later, still one line about it.
    let before = failed_handshakes(&env.broker.log());
    wait_for(
        "three more refused handshakes at the broker",
        Duration::from_secs(40),
        || Ok(failed_handshakes(&env.broker.log()) >= before + 3),
    )
    .unwrap();
    assert!(
        gateway.is_running(),
        "the gateway must keep running and buffering"
    );
    let log = gateway.stderr();
    assert_eq!(
        count_lines(&log, "not signed by the configured CA"),
        1,
        "the reason is logged once, not per retry:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("not signed by the configured CA"))
        .unwrap();
    assert!(line.starts_with("WARN"), "{line}");
    assert!(
        line.contains("uplink.ca"),
        "the line names the setting to fix: {line}"
    );
    assert!(!log.contains("uplink connected"), "{log}");
    let s = env.store().unwrap();
    assert_eq!(
        s.queue.iter().filter(|r| r.kind.is_none()).count() as u64,
        want,
        "every observation still in the store"
    );
    assert_eq!(
        s.unacked_batches, 0,
        "nothing was handed to a broker it does not trust"
    );
    // `wardgate status` shows the installer the same reason and the waiting data.
    wait_for(
        "status to show the refused uplink",
        Duration::from_secs(10),
        || {
            let mut cmd = std::process::Command::new(BIN);
            cmd.arg("status").arg("--config").arg(&cfg);
            let out = wardgate_e2e::process::run(cmd, b"", Duration::from_secs(10))?;
            Ok(out.status.success()
                && out.stdout.contains("daemon:   running")
                && out.stdout.contains("uplink:   DISCONNECTED")
                && out.stdout.contains("not signed by the configured CA")
                && out
                    .stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("store:    "))
                    .and_then(|l| l.split(' ').next()?.parse::<u64>().ok())
                    .is_some_and(|rows| rows >= want))
        },
    )
    .unwrap();
    replay.wait_done(Duration::from_secs(10)).unwrap();
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
}

#[test]
fn client_certificate_from_another_ca_is_refused_by_the_broker_with_a_clear_log_line() {
    let env = TestEnv::new("tls-client-ca", BIN).unwrap();
    let (cert, key) = rogue_leaf(&env.pki.dir, "rogue-gateway", "gw-e2e-01", &[], false);
    let mut opts = env.gateway_options();
    opts.backoff_max_s = 1;
    opts.cert = cert;
    opts.key = key;
    let cfg = env.write_gateway_config(&opts).unwrap();
    let mut gateway = env.spawn_gateway(&cfg).unwrap();
    gateway
        .wait_stderr("client certificate", 1, Duration::from_secs(15))
        .unwrap();
    let before = failed_handshakes(&env.broker.log());
    wait_for(
        "three more refused handshakes at the broker",
        Duration::from_secs(40),
        || Ok(failed_handshakes(&env.broker.log()) >= before + 3),
    )
    .unwrap();
    let log = gateway.stderr();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("client certificate"))
        .collect();
    assert_eq!(lines.len(), 1, "logged once:\n{log}");
    assert!(
        lines[0].starts_with("WARN")
            && lines[0].contains("refused")
            && lines[0].contains("uplink.cert"),
        "{}",
        lines[0]
    );
    assert!(!log.contains("uplink connected"), "{log}");
    assert!(
        env.broker.log().contains("certificate verify failed"),
        "broker side: {}",
        env.broker.log()
    );
    assert_eq!(env.store().unwrap().unacked_batches, 0);
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
}

#[test]
fn client_certificate_missing_or_not_matching_its_key_stops_the_gateway_naming_the_file() {
    let env = TestEnv::new("tls-client-missing", BIN).unwrap();
    // Missing certificate file: `check-config` warns at its line and column (a config is often
    // checked before provisioning), `run` refuses to start naming the file.
    let mut opts = env.gateway_options();
    opts.cert = env.pki.dir.join("missing-gateway.pem");
    let cfg = env.write_gateway_config(&opts).unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let (line, col) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| {
            l.starts_with("cert = ")
                .then(|| (i + 1, l.find('"').unwrap() + 1))
        })
        .unwrap();
    let out = env
        .cli(
            &["check-config".as_ref(), cfg.as_os_str()],
            b"",
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(out.code(), Some(0), "{out:?}");
    let want = format!(
        "{}:{line}:{col}: warning: {} does not exist",
        cfg.display(),
        opts.cert.display()
    );
    assert!(
        out.stderr.lines().any(|l| l.starts_with(&want)),
        "want `{want}…`, got:\n{}",
        out.stderr
    );
    let mut gateway = env.spawn_gateway(&cfg).unwrap();
    let st = gateway.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(
        st.code(),
        Some(1),
        "wardgate run with a missing client certificate"
    );
    let err = gateway.stderr();
    assert!(
        err.contains(&format!("{}: cannot read", opts.cert.display()))
            && err.contains("No such file"),
        "names the missing file:\n{err}"
    );
    drop(gateway);

    // A key that belongs to another certificate: a configuration error (exit 2, as check-config
    // says) at the key setting, naming both files.
    let (_, other_key) = env.pki.leaf("other", "other", &[], false).unwrap();
    let mut opts = env.gateway_options();
    opts.key = other_key.clone();
    let cfg = env.write_gateway_config(&opts).unwrap();
    let out = env
        .cli(
            &["run".as_ref(), "--config".as_ref(), cfg.as_os_str()],
            b"",
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.starts_with(&format!("{}:", cfg.display()))
            && out.stderr.contains("does not belong to the certificate"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&other_key.display().to_string()),
        "names the key file: {}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&env.pki.gateway_cert.display().to_string()),
        "names the certificate: {}",
        out.stderr
    );
}
