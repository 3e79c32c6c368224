//! A half-open uplink (FAILURES.md B02, issue 9 item 8): the broker (a real mosquitto) runs in a
//! network namespace the test creates, behind a veth pair; the gateway reaches it over the
//! veth, the receiver from inside the namespace (its loopback), so only the gateway's link is
//! cut. While the gateway is connected and the devices stream, everything the broker sends to
//! the gateway is dropped silently (no RST, no ICMP) for three keepalive periods
//! (`keepalive_s = 5`), then restored. What a user checks: the gateway declares the link down
//! within about two keepalive periods (its log and `wardgate status`), its store keeps
//! accepting, and after the restore every accepted observation arrives upstream, once.
//!
//! Needs root and iproute2 (`ip netns`); otherwise SKIPPED (fails under CI=true).

use std::time::{Duration, Instant};
use wardgate_e2e::env::{ReceiverOptions, TestEnv};
use wardgate_e2e::netns::{self, NetNs};
use wardgate_e2e::process::Proc;
use wardgate_e2e::pty::{Device, Streamer};
use wardgate_e2e::{count_lines, wait_for, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");
const KEEPALIVE_S: u64 = 5;

/// Starts mosquitto inside `ns`, listening on the namespace's veth address and on its loopback,
/// both on `port`, with `cert`/`key` (valid for both addresses) and the test CA.
fn start_broker_in(
    ns: &NetNs,
    env: &TestEnv,
    port: u16,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Proc {
    let dir = env.dir.join("broker-ns");
    std::fs::create_dir_all(&dir).unwrap();
    let mut conf = String::from(
        "per_listener_settings false\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n\
         user root\nlog_dest stderr\nlog_type all\nconnection_messages true\n\
         log_timestamp_format %H:%M:%S\nmax_queued_messages 10000\n",
    );
    for addr in [ns.ns_ip.to_string(), "127.0.0.1".to_string()] {
        conf.push_str(&format!(
            "listener {port} {addr}\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            env.pki.ca_pem.display(),
            cert.display(),
            key.display()
        ));
    }
    let conf_path = dir.join("mosquitto.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let (prog, mut args) = ns.exec_prefix();
    args.push(wardgate_e2e::broker::mosquitto_bin().display().to_string());
    args.push("-c".into());
    args.push(conf_path.display().to_string());
    let mut p = Proc::spawn("mosquitto-ns", &prog, &args, &dir, &env.log_dir, &[]).unwrap();
    let addr = std::net::SocketAddr::from((ns.ns_ip, port));
    wait_for(
        "mosquitto in the namespace to accept",
        Duration::from_secs(10),
        || {
            assert!(
                p.is_running(),
                "mosquitto in the namespace exited:\n{}",
                p.stderr()
            );
            Ok(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
        },
    )
    .unwrap();
    p
}

#[test]
fn half_open_uplink_is_noticed_within_two_keepalives_and_loses_nothing() {
    if let Some(why) = netns::unavailable() {
        return wardgate_e2e::skip_or_fail(&why);
    }
    let mut ns = match NetNs::create() {
        Ok(ns) => ns,
        Err(e) => {
            return wardgate_e2e::skip_or_fail(&format!("cannot create a network namespace: {e:#}"))
        }
    };
    let env = TestEnv::new("half-open", BIN).unwrap();
    let port = env.broker.port; // the same number inside the namespace: the receiver's config fits
    let (cert, key) = env
        .pki
        .leaf(
            "broker-ns",
            "e2e broker (netns)",
            &[&ns.ns_ip.to_string(), "127.0.0.1"],
            true,
        )
        .unwrap();
    let mut broker = start_broker_in(&ns, &env, port, &cert, &key);

    // The receiver inside the namespace (its loopback: untouched by the cut).
    let rx_opts = ReceiverOptions::default();
    let rx_cfg = env.write_receiver_config(&rx_opts).unwrap();
    let (prog, mut args) = ns.exec_prefix();
    args.extend([
        env.bin.display().to_string(),
        "receive".into(),
        "--config".into(),
        rx_cfg.display().to_string(),
    ]);
    let mut receiver =
        Proc::spawn("receiver", &prog, &args, &env.rx_dir, &env.log_dir, &[]).unwrap();
    wait_for("the receiver to subscribe", Duration::from_secs(15), || {
        Ok(count_lines(&broker.stderr(), "wardgate/v1/+/+/+/batch") >= 1)
    })
    .unwrap();

    // The gateway over the veth.
    let cms = Device::cms50e("bed1-spo2");
    let ivy = Device::ivy450c("bed2-monitor");
    let mut opts = env.gateway_options();
    opts.keepalive_s = KEEPALIVE_S;
    opts.devices = vec![cms.clone(), ivy.clone()];
    let gw_cfg = env.write_gateway_config(&opts).unwrap();
    let text = std::fs::read_to_string(&gw_cfg).unwrap();
    let text = text.replace("host = \"127.0.0.1\"", &format!("host = \"{}\"", ns.ns_ip));
    assert!(text.contains(&ns.ns_ip.to_string()));
    std::fs::write(&gw_cfg, text).unwrap();
    let streams = [
        Streamer::start(&cms, &env.dev_dir(), 0.25).unwrap(),
        Streamer::start(&ivy, &env.dev_dir(), 1.0).unwrap(),
    ];
    let mut gateway = env.spawn_gateway(&gw_cfg).unwrap();
    gateway
        .wait_stderr("uplink connected", 1, Duration::from_secs(20))
        .unwrap();
    let up = env.upstream();
    wait_for("observations upstream", Duration::from_secs(20), || {
        Ok(up.row_and_distinct_counts()?.0 > 20)
    })
    .unwrap();
    let down_needle = format!("uplink to {}:{port}", ns.ns_ip);
    let downs_before = gateway.stderr_count(&down_needle);
    let connects_before = gateway.stderr_count("uplink connected");
    let seq_before = env.store().unwrap().max_seq;

    // Cut: the broker's packets to the gateway vanish, for three keepalive periods.
    let t0 = Instant::now();
    ns.blackhole().unwrap();
    let outage = Duration::from_secs(3 * KEEPALIVE_S);
    let noticed = wait_until(
        "the gateway to declare the uplink down",
        outage,
        Duration::from_millis(50),
        || Ok((gateway.stderr_count(&down_needle) > downs_before).then(|| t0.elapsed())),
    );
    // `wardgate status` says so too (status.json is written every 2 s).
    let status_down = wait_until(
        "`wardgate status` to say DISCONNECTED",
        Duration::from_secs(5),
        Duration::from_millis(200),
        || {
            let out = env.cli(
                &["status".as_ref(), "--config".as_ref(), gw_cfg.as_os_str()],
                b"",
                Duration::from_secs(10),
            )?;
            Ok(out.stdout.contains("DISCONNECTED").then_some(out.stdout))
        },
    );
    std::thread::sleep(outage.saturating_sub(t0.elapsed()));
    let seq_during = env.store().unwrap().max_seq;
    let upstream_during = up.row_and_distinct_counts().unwrap().0;
    ns.restore().unwrap();
    let t_restore = Instant::now();
    gateway
        .wait_stderr(
            "uplink connected",
            connects_before + 1,
            Duration::from_secs(30),
        )
        .unwrap();
    let reconnected = t_restore.elapsed();

    let noticed = noticed.unwrap();
    let status_down = status_down.unwrap();
    let last_down = gateway
        .stderr()
        .lines()
        .rfind(|l| l.contains(&down_needle))
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "half-open uplink (keepalive {KEEPALIVE_S} s, broker's packets dropped for {} s): declared down after {:.1} s ({last_down}); reconnected {:.1} s after the restore; store accepted {} rows during the cut",
        outage.as_secs(),
        noticed.as_secs_f64(),
        reconnected.as_secs_f64(),
        seq_during - seq_before
    );
    assert!(
        noticed <= Duration::from_secs(2 * KEEPALIVE_S + 2),
        "a half-open uplink took {noticed:?} to be noticed (keepalive {KEEPALIVE_S} s)"
    );
    assert!(status_down.contains("DISCONNECTED since "), "{status_down}");
    assert!(
        status_down.contains("the broker stopped answering"),
        "the status names a dead link, not a library message: {status_down}"
    );
    assert!(
        seq_during > seq_before + 20,
        "the store stopped accepting during the cut: {seq_before} → {seq_during}"
    );
    assert!(upstream_during > 0);

    // Everything arrives, once.
    for s in streams {
        s.stop().unwrap();
    }
    let last = env
        .wait_settled(Duration::from_secs(2), Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        up.all_seqs().unwrap(),
        env.accepted_seqs(last.max_seq),
        "accepted seqs lost"
    );
    let (rows, distinct) = up.row_and_distinct_counts().unwrap();
    assert_eq!(rows, distinct, "an observation stored twice upstream");
    eprintln!(
        "after the restore: {} accepted seqs all upstream, {rows} observation rows, 0 duplicated",
        last.max_seq - env.seed().seq
    );
    assert!(gateway
        .terminate(Duration::from_secs(10))
        .unwrap()
        .success());
    receiver.terminate(Duration::from_secs(10)).unwrap();
    broker.terminate(Duration::from_secs(10)).unwrap();
}
