//! Provisioning and certificate rotation, as an installer and the hospital CA meet them.
//!
//! What a user checks: `wardgate provision` leaves an owner-only P-256 key and a CSR that
//! openssl accepts and whose subject names the gateway, site and ward; the CA (openssl, with the
//! test CA's key) signs it; `--install-cert` refuses a certificate for another key and installs
//! the right one; the gateway then connects to a real mosquitto (mutual TLS) with it and its
//! batches verify with that certificate. A running gateway whose certificate and key are
//! replaced on disk presents the new pair at a clean reconnect, without a restart, signs with the
//! new key from then on and loses nothing; a truncated certificate or a key of another
//! certificate keeps the old pair in use and is reported upstream, in the log and in
//! `wardgate status`. A key readable by its group stops `wardgate run` with the fix.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use wardgate_e2e::env::{ReceiverOptions, TestEnv, GATEWAY_ID, SITE, WARD};
use wardgate_e2e::pty::{Device, Replayer};
use wardgate_e2e::wait_for;

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn run(cmd: &mut Command) -> wardgate_e2e::process::Output {
    let c = std::mem::replace(cmd, Command::new("true"));
    wardgate_e2e::process::run(c, b"", Duration::from_secs(60)).unwrap()
}

fn wardgate(env: &TestEnv, args: &[&std::ffi::OsStr]) -> wardgate_e2e::process::Output {
    env.cli(args, b"", Duration::from_secs(60)).unwrap()
}

/// Signs `csr` with the test CA using openssl (an independent implementation), copying the
/// CSR's extensions (clientAuth, the SAN).
fn openssl_sign(env: &TestEnv, csr: &Path, out: &Path) {
    let ca_key = env.pki.dir.join("ca.key");
    if !ca_key.exists() {
        wardgate_sim::pki::write_key(&ca_key, &env.pki.ca.key_pem()).unwrap();
    }
    let o = run(Command::new("openssl")
        .args([
            "x509",
            "-req",
            "-days",
            "2",
            "-copy_extensions",
            "copy",
            "-in",
        ])
        .arg(csr)
        .arg("-CA")
        .arg(&env.pki.ca_pem)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-out")
        .arg(out));
    assert_eq!(o.code(), Some(0), "openssl x509 -req: {o:?}");
}

#[test]
fn provision_csr_signed_by_the_ca_installed_and_used_for_tls_and_signing() {
    let env = TestEnv::new("provision", BIN).unwrap();
    let (key, cert) = (
        env.gw_dir.join("gateway.key"),
        env.gw_dir.join("gateway.pem"),
    );
    let cms = Device::cms50e("bed1-spo2");
    let mut opts = env.gateway_options();
    opts.cert = cert.clone();
    opts.key = key.clone();
    opts.devices = vec![cms.clone()];
    let cfg = env.write_gateway_config(&opts).unwrap();

    // Step 1: key + CSR.
    let out = wardgate(
        &env,
        &["provision".as_ref(), "--config".as_ref(), cfg.as_os_str()],
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(mode(&key), 0o600, "owner-only key");
    let key_pem = std::fs::read_to_string(&key).unwrap();
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
    let csr = env.gw_dir.join("gateway.csr");
    assert!(
        out.stdout.contains(&csr.display().to_string()),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("--install-cert"),
        "next step: {}",
        out.stdout
    );
    // The printed kid is SHA-256 of the key's SubjectPublicKeyInfo.
    let kid = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("kid:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let spki = rcgen::KeyPair::from_pem(&key_pem).unwrap().public_key_der();
    assert_eq!(kid, hex_sha256(&spki));
    // openssl: the CSR's self-signature verifies, the key is P-256, the subject names us.
    let o = run(Command::new("openssl")
        .args([
            "req", "-verify", "-noout", "-text", "-nameopt", "RFC2253", "-in",
        ])
        .arg(&csr));
    assert_eq!(o.code(), Some(0), "openssl req -verify: {o:?}");
    let all = format!("{}{}", o.stdout, o.stderr);
    assert!(all.contains("verify OK"), "{all}");
    assert!(all.contains("NIST CURVE: P-256"), "{all}");
    assert!(
        all.contains(&format!("Subject: OU={WARD},O={SITE},CN={GATEWAY_ID}")),
        "{all}"
    );
    assert!(
        all.contains(&format!("URI:urn:wardgate:{SITE}:{WARD}:{GATEWAY_ID}")),
        "{all}"
    );
    assert!(all.contains("TLS Web Client Authentication"), "{all}");

    // Again without --force: refused (exit 2), the key untouched.
    let again = wardgate(
        &env,
        &["provision".as_ref(), "--config".as_ref(), cfg.as_os_str()],
    );
    assert_eq!(again.code(), Some(2), "{again:?}");
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), key_pem);

    // Step 2: a certificate for another key is refused (exit 1), nothing installed.
    let install = |signed: &Path| {
        wardgate(
            &env,
            &[
                "provision".as_ref(),
                "--install-cert".as_ref(),
                signed.as_os_str(),
                "--config".as_ref(),
                cfg.as_os_str(),
            ],
        )
    };
    let wrong = install(&env.pki.gateway_cert);
    assert_eq!(wrong.code(), Some(1), "{wrong:?}");
    assert!(
        wrong
            .stderr
            .contains("is not a certificate for this gateway's key"),
        "{}",
        wrong.stderr
    );
    assert!(!cert.exists());
    // The CA signs the CSR; installed with its chain verified against uplink.ca.
    let signed = env.dir.join("signed.pem");
    openssl_sign(&env, &csr, &signed);
    let ok = install(&signed);
    assert_eq!(ok.code(), Some(0), "{ok:?}");
    assert!(
        ok.stdout.contains(&format!("kid:      {kid}")),
        "{}",
        ok.stdout
    );
    assert!(
        ok.stdout.contains("chain:    verified against"),
        "{}",
        ok.stdout
    );
    assert_eq!(mode(&cert), 0o644);
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        std::fs::read(&signed).unwrap()
    );
    let ck = run(Command::new(BIN).arg("check-config").arg(&cfg));
    assert_eq!(ck.code(), Some(0), "{ck:?}");

    // The gateway connects with it (mutual TLS, real mosquitto) and signs with its key.
    let mut receiver = env
        .start_receiver_with_certs(&ReceiverOptions::default(), std::slice::from_ref(&cert))
        .unwrap();
    let mut replay = Replayer::new("cms", cms.open_port(&env.dev_dir()).unwrap());
    let mut gateway = env.spawn_gateway(&cfg).unwrap();
    replay.play(&cms.recording, cms.pace, 4.0);
    replay.wait_done(Duration::from_secs(30)).unwrap();
    env.wait_delivered(&[(cms.id(), cms.expected())], Duration::from_secs(30))
        .unwrap();
    assert!(
        gateway.stderr().contains(&format!("kid {kid}")),
        "{}",
        gateway.stderr()
    );
    let mut args: Vec<std::ffi::OsString> =
        vec!["verify".into(), "--cert".into(), cert.clone().into()];
    let raw = env.raw_messages();
    args.extend(raw.iter().map(|p| p.clone().into_os_string()));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let v = wardgate(&env, &args);
    assert_eq!(
        v.code(),
        Some(0),
        "every batch verifies with the installed cert: {v:?}"
    );
    let old = wardgate(
        &env,
        &[
            "verify".as_ref(),
            "--cert".as_ref(),
            env.pki.gateway_cert.as_os_str(),
            raw[0].as_os_str(),
        ],
    );
    assert_eq!(old.code(), Some(1), "not with another certificate: {old:?}");
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    receiver.terminate(Duration::from_secs(10)).unwrap();

    // Renewal with a new key: --force stages it as <key>.new; the pair in use stays untouched,
    // so a restart before the new certificate arrives still works.
    let forced = wardgate(
        &env,
        &[
            "provision".as_ref(),
            "--force".as_ref(),
            "--config".as_ref(),
            cfg.as_os_str(),
        ],
    );
    assert_eq!(forced.code(), Some(0), "{forced:?}");
    let staged = env.gw_dir.join("gateway.key.new");
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        key_pem,
        "the key in use is untouched"
    );
    assert_ne!(std::fs::read_to_string(&staged).unwrap(), key_pem);
    assert_eq!(mode(&staged), 0o600);
    let check = wardgate(&env, &["check-config".as_ref(), cfg.as_os_str()]);
    assert_eq!(check.code(), Some(0), "{check:?}");
    // Re-installing the current certificate (same key) still works; the staged key waits.
    let same = install(&signed);
    assert_eq!(same.code(), Some(0), "{same:?}");
    assert!(staged.exists());
    // The CA signs the new CSR: key and certificate are swapped together, the old key kept.
    let renewed = env.dir.join("renewed.pem");
    openssl_sign(&env, &csr, &renewed);
    let swap = install(&renewed);
    assert_eq!(swap.code(), Some(0), "{swap:?}");
    assert!(!staged.exists());
    assert_eq!(
        std::fs::read_to_string(env.gw_dir.join("gateway.key.old")).unwrap(),
        key_pem
    );
    assert_ne!(std::fs::read_to_string(&key).unwrap(), key_pem);
    assert_eq!(mode(&key), 0o600);
    let check = wardgate(&env, &["check-config".as_ref(), cfg.as_os_str()]);
    assert_eq!(check.code(), Some(0), "the new pair matches: {check:?}");
    // The certificate installed before is for the old key now: refused.
    let stale = install(&signed);
    assert_eq!(stale.code(), Some(1), "{stale:?}");
}

fn hex_sha256(b: &[u8]) -> String {
    let d = openssl_sha256(b);
    d.iter().map(|x| format!("{x:02x}")).collect()
}

fn openssl_sha256(b: &[u8]) -> Vec<u8> {
    // Through openssl, independently of wardgate's own code.
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), b).unwrap();
    let o = run(Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .arg(tmp.path()));
    let hex = o.stdout.split_whitespace().next().unwrap().to_owned();
    (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Which of `certs` verifies `msg` (exactly one expected).
fn signed_by(msg: &Path, certs: &[&PathBuf]) -> Vec<usize> {
    let bytes = std::fs::read(msg).unwrap();
    certs
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            let mut v = wardgate::signing::Verifier::default();
            v.add_file(c).unwrap();
            v.verify(&bytes).is_ok()
        })
        .map(|(i, _)| i)
        .collect()
}

fn status(cfg: &Path) -> String {
    run(Command::new(BIN).arg("status").arg("--config").arg(cfg)).stdout
}

#[test]
fn rotation_on_disk_without_restart_and_refused_replacements_keep_the_old_pair() {
    let env = TestEnv::new("rotation", BIN).unwrap();
    let (cert, key) = (
        env.gw_dir.join("gateway.pem"),
        env.gw_dir.join("gateway.key"),
    );
    std::fs::copy(&env.pki.gateway_cert, &cert).unwrap();
    wardgate_sim::pki::write_key(
        &key,
        &std::fs::read_to_string(&env.pki.gateway_key).unwrap(),
    )
    .unwrap();
    let (cert_a, _) = (env.pki.gateway_cert.clone(), env.pki.gateway_key.clone());
    let (cert_b, key_b) = env.pki.leaf("gateway-b", GATEWAY_ID, &[], false).unwrap();
    let (cert_c, _) = env.pki.leaf("gateway-c", GATEWAY_ID, &[], false).unwrap();

    // Every frame's numerics (numerics_every_s = 0): at a twentieth of its pace the CMS50E's
    // device second is 20 s, and readings must flow before, during and after the replacements.
    let cms = Device::cms50e("bed1-spo2").with_numerics_every(0);
    let mut opts = env.gateway_options();
    opts.cert = cert.clone();
    opts.key = key.clone();
    opts.devices = vec![cms.clone()];
    opts.cert_check_s = Some(1);
    let cfg = env.write_gateway_config(&opts).unwrap();
    let mut receiver = env
        .start_receiver_with_certs(
            &ReceiverOptions::default(),
            &[cert_a.clone(), cert_b.clone()],
        )
        .unwrap();
    let mut replay = Replayer::new("cms", cms.open_port(&env.dev_dir()).unwrap());
    let mut gateway = env.spawn_gateway(&cfg).unwrap();
    // ~17 s of data: before, during and after the replacements.
    replay.play(&cms.recording, cms.pace, 0.05);
    let up = env.upstream();
    wait_for(
        "first observations upstream",
        Duration::from_secs(20),
        || Ok(up.count(&cms.id())? >= 10),
    )
    .unwrap();

    // 1. A truncated certificate: refused, old pair in use, reported three ways.
    let b_pem = std::fs::read(&cert_b).unwrap();
    std::fs::write(&cert, &b_pem[..b_pem.len() / 2]).unwrap();
    let gateway_errors = |needle: &str| -> usize {
        up.events()
            .unwrap()
            .iter()
            .filter(|e| {
                e.device == "gateway"
                    && e.kind == "error"
                    && e.detail.as_deref().unwrap_or("").contains(needle)
            })
            .count()
    };
    wait_for(
        "the refused certificate reported upstream",
        Duration::from_secs(20),
        || Ok(gateway_errors("gateway.pem") >= 1),
    )
    .unwrap();
    let ev = up
        .events()
        .unwrap()
        .into_iter()
        .find(|e| e.device == "gateway")
        .unwrap();
    let detail = ev.detail.unwrap_or_default();
    assert!(detail.contains("still using the previous pair"), "{detail}");
    let warn = gateway
        .stderr()
        .lines()
        .find(|l| l.contains("replacement uplink certificate/key refused"))
        .unwrap()
        .to_owned();
    assert!(
        warn.starts_with("WARN") && warn.contains("gateway.pem"),
        "{warn}"
    );
    wait_for(
        "status to show the refusal",
        Duration::from_secs(10),
        || Ok(status(&cfg).contains("CERTIFICATE/KEY REPLACEMENT REFUSED")),
    )
    .unwrap();
    let before = up.count(&cms.id()).unwrap();
    wait_for(
        "delivery to go on with the old pair",
        Duration::from_secs(20),
        || Ok(up.count(&cms.id())? > before + 20),
    )
    .unwrap();

    // 2. A whole certificate, but of another key (C's certificate with the key on disk, A's).
    std::fs::copy(&cert_c, &cert).unwrap();
    wait_for(
        "the mismatched pair reported upstream",
        Duration::from_secs(20),
        || Ok(gateway_errors("does not belong to the certificate") >= 1),
    )
    .unwrap();
    // Reported once per distinct content, not once per check.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(gateway_errors("does not belong to the certificate"), 1);
    assert_eq!(gateway_errors(""), 2, "{:?}", up.events().unwrap());

    // 3. Pair B, installed as an installer would: key, then certificate.
    wardgate_sim::pki::write_key(&key, &std::fs::read_to_string(&key_b).unwrap()).unwrap();
    std::fs::copy(&cert_b, &cert).unwrap();
    gateway
        .wait_stderr("uplink certificate rotated", 1, Duration::from_secs(30))
        .unwrap();
    wait_for(
        "status to show the new pair",
        Duration::from_secs(10),
        || {
            let s = status(&cfg);
            Ok(s.contains("1 rotations since start") && !s.contains("REFUSED"))
        },
    )
    .unwrap();

    replay.wait_done(Duration::from_secs(60)).unwrap();
    env.wait_settled(Duration::from_millis(500), Duration::from_secs(30))
        .unwrap();
    assert!(gateway.is_running(), "no restart");
    assert_eq!(
        up.count(&cms.id()).unwrap(),
        cms.expected(),
        "no observation lost"
    );
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    receiver.terminate(Duration::from_secs(10)).unwrap();

    // Every message verifies (with A or B: `wardgate verify` with both), the ones before the
    // rotation with A only, every one after it with B only, and there are some of each.
    let raw = env.raw_messages();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "verify".as_ref(),
        "--cert".as_ref(),
        cert_a.as_os_str(),
        "--cert".as_ref(),
        cert_b.as_os_str(),
    ];
    args.extend(raw.iter().map(|p| p.as_os_str()));
    let v = wardgate(&env, &args);
    assert_eq!(v.code(), Some(0), "{v:?}");
    let by: Vec<Vec<usize>> = raw
        .iter()
        .map(|m| signed_by(m, &[&cert_a, &cert_b]))
        .collect();
    assert!(by.iter().all(|b| b.len() == 1), "{by:?}");
    let first_b = by
        .iter()
        .position(|b| b == &[1])
        .expect("messages signed with B");
    assert!(first_b > 0, "messages signed with A first");
    assert!(
        by[first_b..].iter().all(|b| b == &[1]),
        "after the rotation only B: {by:?}"
    );
    // The broker saw a second connection (the new certificate) and the gateway said so.
    assert!(
        gateway.stderr_count("uplink connected") >= 2,
        "{}",
        gateway.stderr()
    );
}

#[test]
fn group_readable_key_stops_run_with_exit_2_and_the_chmod_hint() {
    let env = TestEnv::new("key-mode", BIN).unwrap();
    let cfg = env.write_gateway_config(&env.gateway_options()).unwrap();
    std::fs::set_permissions(&env.pki.gateway_key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = wardgate(
        &env,
        &["run".as_ref(), "--config".as_ref(), cfg.as_os_str()],
    );
    assert_eq!(out.code(), Some(2), "{out:?}");
    let k = env.pki.gateway_key.display().to_string();
    assert!(
        out.stderr.contains(&format!(
            "private key {k} is readable by others (mode 640); run `chmod 600 {k}`"
        )),
        "{}",
        out.stderr
    );
}
