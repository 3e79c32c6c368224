//! Disk full (issue 9, item 8): the gateway's store on a tiny filesystem (a 1 MiB tmpfs the test
//! mounts in a private mount namespace, as root; the gateway runs inside it) that a filler file
//! leaves ~160 KiB of. A CMS50E streams; the store fills; the daemon keeps running and keeps the
//! systemd watchdog fed, says once in its log what it does, `wardgate status` (status snapshot
//! outside the full filesystem) says the store is full and how many rows it refused. Then the
//! filler is deleted and the receiver started: every row the store accepted arrives upstream
//! (no gap in `seq`), the refusal arrives as one `dropped` event with per-device counts, and
//! accepted + refused = every observation the device sent.
//!
//! The same behaviour without root, on SQLite's page limit (`[store] max_pages`), is tested in
//! `gateway/tests/writer.rs`.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wardgate_e2e::db::read_store_copy;
use wardgate_e2e::env::{ReceiverOptions, TestEnv};
use wardgate_e2e::process::Proc;
use wardgate_e2e::pty::{Device, Replayer};
use wardgate_e2e::{count_lines, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");

/// Runs inside `unshare -m`: a 1 MiB tmpfs on `tiny/`, the fresh store copied in, a filler that
/// leaves 160 KiB, then the gateway.
const NAMESPACE_SCRIPT: &str = r#"set -e
mount -t tmpfs -o size=1m tmpfs tiny
cp store.db tiny/store.db
dd if=/dev/zero of=tiny/filler bs=4096 2>/dev/null || true
truncate -s -160K tiny/filler
exec "$1" run --config "$2"
"#;

fn tool(name: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_full_filesystem_refuses_new_rows_reports_them_and_loses_nothing_accepted() {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return wardgate_e2e::skip_or_fail(
            "mounting a tmpfs in a private mount namespace needs root",
        );
    }
    if !tool("unshare") || !tool("nsenter") {
        return wardgate_e2e::skip_or_fail("unshare and nsenter (util-linux) are needed");
    }
    let env = TestEnv::new("diskfull", BIN).unwrap();
    // Every frame's numerics (60 SpO2 and 60 pulse rates a second, and the pleth array): enough
    // rows to fill the tiny store in seconds.
    let cms = Device::cms50e("bed1").with_numerics_every(0);
    let mut opts = env.gateway_options();
    opts.devices = vec![cms.clone()];
    let cfg = env.write_gateway_config(&opts).unwrap();
    let seed = env.init_store().unwrap();
    std::fs::create_dir_all(env.gw_dir.join("tiny")).unwrap();
    std::fs::create_dir_all(env.gw_dir.join("run")).unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "path = \"store.db\"\nstatus_path = \"status.json\"\n",
        "path = \"tiny/store.db\"\nstatus_path = \"run/status.json\"\nbuffer_max_rows = 20\n",
    );
    std::fs::write(&cfg, text).unwrap();

    // The watchdog: a notify socket of our own, a 2 s period (WATCHDOG=1 every second).
    let notify_path = env.dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_nonblocking(true).unwrap();
    let notify_env = notify_path.display().to_string();
    let mut replays = Replayer::for_devices(&env.dev_dir(), &[&cms]).unwrap();
    let mut gateway = Proc::spawn(
        "gateway",
        Path::new("unshare"),
        [
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            NAMESPACE_SCRIPT,
            "sh",
            BIN,
            cfg.to_str().unwrap(),
        ],
        &env.gw_dir,
        &env.log_dir,
        &[("NOTIFY_SOCKET", &notify_env), ("WATCHDOG_USEC", "2000000")],
    )
    .unwrap();
    // The gateway's view of its store (its mount namespace), while it runs.
    let ns = PathBuf::from(format!("/proc/{}/root", gateway.pid()));
    let ns_path = |p: &Path| ns.join(p.strip_prefix("/").unwrap());
    // SQLite resolves the /proc/PID/root link to our own namespace: read copies.
    let store_path = ns_path(&env.gw_dir.join("tiny/store.db"));
    let scratch = env.dir.join("scratch");
    let plays = 20;
    for _ in 0..plays {
        replays[0].play(&cms.recording, cms.pace, 1.0);
    }
    let sent = cms.expected_in(&cms.recording.repeat(plays));

    let t0 = Instant::now();
    gateway
        .wait_stderr("the store is full", 1, Duration::from_secs(30))
        .unwrap();
    let full_after = t0.elapsed();
    let accepted_at_full = read_store_copy(&store_path, &scratch).unwrap().max_seq - seed.seq;
    let mut pings = 0;
    let mut buf = [0u8; 512];
    while notify.recv(&mut buf).is_ok() {}
    let watch_from = Instant::now();
    let status = |gw: &Proc| {
        let mut c = std::process::Command::new("nsenter");
        c.args(["-t", &gw.pid().to_string(), "-m", BIN, "status", "--config"])
            .arg(&cfg);
        let out = wardgate_e2e::process::run(c, b"", Duration::from_secs(20)).unwrap();
        out.stdout
    };
    // Full for 6 s while the device keeps streaming: running, watchdog fed, refusing.
    while watch_from.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(200));
        while let Ok(n) = notify.recv(&mut buf) {
            pings += String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") as u32;
        }
        assert!(gateway.is_running(), "the gateway died on a full disk");
    }
    assert!(
        pings >= 4,
        "WATCHDOG=1 kept coming while full: {pings} in 6 s"
    );
    // Stop listening (an unread datagram socket fills up and blocks the notifier's send).
    drop(notify);
    let _ = std::fs::remove_file(&notify_path);
    let text = status(&gateway);
    assert!(text.contains("daemon:   running"), "{text}");
    assert!(text.contains("store:    FULL since"), "{text}");
    assert!(text.contains("ROWS REFUSED since start"), "{text}");
    let log = gateway.stderr();
    assert_eq!(count_lines(&log, "the store is full"), 1, "{log}");
    assert_eq!(
        count_lines(&log, "refusing new rows from now on"),
        1,
        "{log}"
    );
    assert_eq!(count_lines(&log, "dropping oldest rows"), 0, "{log}");
    // The uplink stays connected: it cannot cut new batches, says so once, and does not turn
    // the full store into a reconnect loop.
    assert!(
        count_lines(&log, "no new batch is cut until space returns") <= 1,
        "{log}"
    );
    assert_eq!(
        count_lines(&log, "buffering in the store and retrying"),
        0,
        "a full store must not end the MQTT session:\n{log}"
    );
    let during = read_store_copy(&store_path, &scratch).unwrap();
    assert_eq!(
        during.max_seq - seed.seq,
        accepted_at_full,
        "nothing accepted while full"
    );

    // Space returns; the receiver comes up.
    let _receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    std::fs::remove_file(ns_path(&env.gw_dir.join("tiny/filler"))).unwrap();
    let t1 = Instant::now();
    let up = env.upstream();
    let dropped = wardgate_e2e::wait_until(
        "the refusal reported upstream",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let ev: Vec<_> = up
                .events()?
                .into_iter()
                .filter(|e| e.kind == "dropped")
                .collect();
            match ev.as_slice() {
                [] => Err(anyhow::anyhow!("no dropped event yet")),
                _ => Ok(Some(ev)),
            }
        },
    )
    .unwrap();
    let reported_after = t1.elapsed();
    replays[0].wait_done(Duration::from_secs(120)).unwrap();
    // Settled: the store drained and every seq it ever assigned upstream, once.
    let mut last = (0, Instant::now());
    wait_for("the chain to settle", Duration::from_secs(90), || {
        let s = read_store_copy(&store_path, &scratch)?;
        let seqs = up.all_seqs()?;
        if s.max_seq != last.0 {
            last = (s.max_seq, Instant::now());
        }
        Ok(s.queue.is_empty()
            && s.unacked_batches == 0
            && seqs.len() as u64 == s.max_seq - seed.seq
            && seqs.first() == Some(&(seed.seq + 1))
            && seqs.last() == Some(&s.max_seq)
            && last.1.elapsed() > Duration::from_secs(2))
    })
    .unwrap();
    let text = status(&gateway);
    assert!(!text.contains("FULL since"), "{text}");
    assert!(
        text.contains("reported upstream as a `dropped` event"),
        "{text}"
    );

    // One report; accepted + refused = everything the device sent.
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    let detail = dropped[0].detail.clone().unwrap_or_default();
    assert!(detail.starts_with("reason=store_full "), "{detail}");
    assert!(
        detail.contains(&format!("| {} waveform=", cms.id())),
        "{detail}"
    );
    let field = |k: &str| -> u64 {
        detail
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let refused_obs = field("waveform") + field("numeric");
    assert!(refused_obs > 0, "{detail}");
    assert!(field("first_ms") <= field("last_ms"), "{detail}");
    let upstream_obs = up.count(&cms.id()).unwrap();
    assert_eq!(
        upstream_obs + refused_obs,
        sent,
        "accepted ({upstream_obs}) + refused ({refused_obs}) = sent ({sent}); {detail}"
    );
    eprintln!(
        "disk full: full after {full_after:?}, {accepted_at_full} rows accepted before; {pings} watchdog pings in 6 s full; \
         reported {reported_after:?} after space returned; {upstream_obs} observations upstream, {refused_obs} refused of {sent}"
    );
    gateway.terminate(Duration::from_secs(20)).unwrap();
}
