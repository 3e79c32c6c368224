//! systemd notifications of the real binary: `wardgate run` with `NOTIFY_SOCKET` pointing at a
//! datagram socket in a temporary directory and the broker unreachable (a closed loopback port).
//! READY=1 must arrive, STATUS= lines keep coming, WATCHDOG=1 keeps coming although every
//! connection fails (the uplink loop is alive), and SIGTERM brings STOPPING=1 and a clean exit.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Kills the daemon if a test fails before it stopped it.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Writes certificates and a config whose uplink points at a closed loopback port.
fn gateway_config(dir: &Path) -> std::path::PathBuf {
    let ca = wardgate_sim::pki::Ca::new("sd_notify test CA").unwrap();
    wardgate_sim::pki::write_cert(&dir.join("ca.pem"), &ca.cert_pem).unwrap();
    let (cert, key) = ca.leaf("gw-sd-01", &[], false).unwrap();
    wardgate_sim::pki::write_cert(&dir.join("gateway.pem"), &cert).unwrap();
    wardgate_sim::pki::write_key(&dir.join("gateway.key"), &key).unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let path = dir.join("wardgate.toml");
    std::fs::write(
        &path,
        format!(
            r#"version = 1
[gateway]
id = "gw-sd-01"
site = "test-site"
ward = "ward-1"
[store]
path = "store.db"
[uplink]
host = "127.0.0.1"
port = {closed}
ca = "ca.pem"
cert = "gateway.pem"
key = "gateway.key"
receiver_certs = ["ca.pem"]
keepalive_s = 5
backoff_max_s = 1
"#
        ),
    )
    .unwrap();
    path
}

/// Starts `wardgate run` with the notification socket and watchdog environment.
fn spawn(config: &Path, socket: &Path, watchdog_usec: &str, watchdog_pid: Option<&str>) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wardgate"));
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", watchdog_usec)
        .env("WARDGATE_LOG", "warn")
        .env_remove("JOURNAL_STREAM")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(pid) = watchdog_pid {
        cmd.env("WATCHDOG_PID", pid);
    }
    Daemon(cmd.spawn().unwrap())
}

/// Collects notification lines for `window`, or until `stop` returns true on the lines so far.
fn collect(
    sock: &UnixDatagram,
    window: Duration,
    lines: &mut Vec<(Instant, String)>,
    stop: impl Fn(&[(Instant, String)]) -> bool,
) {
    let end = Instant::now() + window;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < end && !stop(lines) {
        let left = end.saturating_duration_since(Instant::now());
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let at = Instant::now();
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                lines.extend(text.lines().map(|l| (at, l.to_owned())));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// Reads notifications until none equal to `what` has arrived for `quiet`. `Ok` with the lines
/// read, or `Err` with them when no such spell began before `deadline` ran out.
#[allow(clippy::type_complexity)]
fn quiet_spell(
    sock: &UnixDatagram,
    what: &str,
    quiet: Duration,
    deadline: Duration,
) -> Result<Vec<(Instant, String)>, Vec<(Instant, String)>> {
    let end = Instant::now() + deadline;
    let mut lines: Vec<(Instant, String)> = Vec::new();
    let mut last = Instant::now();
    loop {
        let quiet_until = last + quiet;
        if Instant::now() >= quiet_until {
            return Ok(lines);
        }
        if Instant::now() >= end {
            return Err(lines);
        }
        let n = lines.len();
        collect(
            sock,
            quiet_until
                .min(end)
                .saturating_duration_since(Instant::now()),
            &mut lines,
            |l| l.len() > n,
        );
        if let Some((t, _)) = lines[n..].iter().rev().find(|(_, l)| l == what) {
            last = *t;
        }
    }
}

fn count(lines: &[(Instant, String)], what: &str) -> usize {
    lines.iter().filter(|(_, l)| l == what).count()
}

#[test]
fn ready_status_watchdog_while_broker_unreachable_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config(dir.path());
    let socket = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket).unwrap();
    // 2 s watchdog: WATCHDOG=1 expected every second.
    let mut daemon = spawn(&config, &socket, "2000000", None);

    let mut lines = Vec::new();
    collect(&sock, Duration::from_secs(20), &mut lines, |l| {
        count(l, "READY=1") > 0
    });
    assert_eq!(count(&lines, "READY=1"), 1, "no READY=1: {lines:?}");
    let ready_at = lines[0].0;

    // The broker is unreachable the whole time: the watchdog must keep coming regardless. Wait
    // for 5 pings and 3 statuses (due within about 6 s) with a generous deadline; what is
    // asserted is systemd's own rule: no gap between pings reaches the 2 s period (the daemon
    // pings every 1 s, so a loaded machine has a second of slack).
    collect(&sock, Duration::from_secs(30), &mut lines, |l| {
        count(l, "WATCHDOG=1") >= 5
            && l.iter().filter(|(_, x)| x.starts_with("STATUS=")).count() >= 3
    });
    let pings: Vec<Instant> = lines
        .iter()
        .filter(|(_, l)| l == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    assert!(pings.len() >= 5, "too few WATCHDOG=1 in 30 s: {lines:?}");
    let mut prev = ready_at;
    for t in &pings {
        assert!(
            t.duration_since(prev) < Duration::from_secs(2),
            "gap between watchdog pings reached the period: {lines:?}"
        );
        prev = *t;
    }
    let statuses: Vec<&str> = lines
        .iter()
        .filter_map(|(_, l)| l.strip_prefix("STATUS="))
        .collect();
    assert!(
        statuses.len() >= 3,
        "too few STATUS= lines in 30 s: {lines:?}"
    );
    let last = statuses.last().unwrap();
    assert!(
        last.starts_with("uplink down: ") && last.ends_with("; 0 queued; 0 devices"),
        "unexpected status {last:?}"
    );
    assert_eq!(count(&lines, "STOPPING=1"), 0);

    kill(Pid::from_raw(daemon.0.id() as i32), Signal::SIGTERM).unwrap();
    collect(&sock, Duration::from_secs(15), &mut lines, |l| {
        count(l, "STOPPING=1") > 0
    });
    assert_eq!(count(&lines, "STOPPING=1"), 1, "no STOPPING=1: {lines:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn no_watchdog_when_watchdog_pid_is_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config(dir.path());
    let socket = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket).unwrap();
    // PID 1 is never the daemon: the watchdog settings are meant for someone else.
    let mut daemon = spawn(&config, &socket, "1000000", Some("1"));

    let mut lines = Vec::new();
    collect(&sock, Duration::from_secs(20), &mut lines, |l| {
        count(l, "READY=1") > 0
    });
    assert_eq!(count(&lines, "READY=1"), 1, "no READY=1: {lines:?}");
    collect(&sock, Duration::from_secs(3), &mut lines, |_| false);
    assert_eq!(count(&lines, "WATCHDOG=1"), 0, "{lines:?}");
    assert!(lines.iter().any(|(_, l)| l.starts_with("STATUS=")));

    kill(Pid::from_raw(daemon.0.id() as i32), Signal::SIGTERM).unwrap();
    collect(&sock, Duration::from_secs(15), &mut lines, |l| {
        count(l, "STOPPING=1") > 0
    });
    assert_eq!(count(&lines, "STOPPING=1"), 1, "{lines:?}");
    assert!(daemon.0.wait().unwrap().success());
}

/// The notifier itself, in process: a writer that stops making progress stops the watchdog (the
/// uplink loop still beating), and progress resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_is_withheld_while_the_writer_makes_no_progress() {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use wardgate::pipeline::WriterStats;
    use wardgate::system::sd_notify::{Notifier, Watched};
    use wardgate::uplink::LoopBeat;

    let dir = tempfile::tempdir().unwrap();
    let (store, _) =
        wardgate::Store::open(&dir.path().join("store.db"), Default::default()).unwrap();
    let socket = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket).unwrap();
    let writer = Arc::new(WriterStats::default());
    let beat = Arc::new(LoopBeat::default());
    // The writer's last progress is older than the period (progress stamps are monotonic ms
    // since the process's first stamp); the uplink loop is alive.
    let first = now();
    tokio::time::sleep(Duration::from_millis(600)).await;
    writer.last_progress_ms.store(first, Ordering::Relaxed);
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(wardgate::system::sd_notify::run(
        Notifier::connect(socket.to_str().unwrap()).unwrap(),
        Some(Duration::from_millis(400)),
        Watched {
            writer_progress: {
                let writer = writer.clone();
                Box::new(move || writer.last_progress_ms.load(Ordering::Relaxed))
            },
            uplink_progress: {
                let beat = beat.clone();
                Box::new(move || beat.last_ms())
            },
            status: Box::new(move || format!("{} queued", store.queued())),
        },
        shutdown_rx,
    ));
    let beating = {
        let beat = beat.clone();
        tokio::spawn(async move {
            loop {
                beat.beat();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let sock = Arc::new(sock);
    let recv = |window: Duration| {
        let sock = sock.clone();
        tokio::task::spawn_blocking(move || {
            let mut lines = Vec::new();
            collect(&sock, window, &mut lines, |_| false);
            lines
        })
    };
    let stuck = recv(Duration::from_millis(1_500)).await.unwrap();
    assert_eq!(count(&stuck, "READY=1"), 1, "{stuck:?}");
    assert_eq!(count(&stuck, "WATCHDOG=1"), 0, "writer stuck: {stuck:?}");

    let progress = {
        let writer = writer.clone();
        tokio::spawn(async move {
            loop {
                writer.last_progress_ms.store(now(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Pings resume (every 200 ms; waited for with a generous deadline).
    let moving = {
        let sock = sock.clone();
        tokio::task::spawn_blocking(move || {
            let mut lines = Vec::new();
            collect(&sock, Duration::from_secs(15), &mut lines, |l| {
                count(l, "WATCHDOG=1") >= 3
            });
            lines
        })
    }
    .await
    .unwrap();
    assert!(
        count(&moving, "WATCHDOG=1") >= 3,
        "writer moving, yet fewer than 3 WATCHDOG=1 in 15 s: {moving:?}"
    );

    // The uplink loop stops (hung): the watchdog stops again. Pings keep coming while the last
    // beat is younger than the period (400 ms), and a loaded machine may send one late, so
    // what is asserted is that a quiet spell of 1 s (2.5 periods, 5 ping intervals) begins
    // within a generous deadline. Were the hang not noticed, pings would keep coming every
    // 200 ms and no such spell would ever begin.
    beating.abort();
    let hung = {
        let sock = sock.clone();
        tokio::task::spawn_blocking(move || {
            quiet_spell(
                &sock,
                "WATCHDOG=1",
                Duration::from_secs(1),
                Duration::from_secs(15),
            )
        })
    }
    .await
    .unwrap();
    assert!(
        hung.is_ok(),
        "uplink hung, yet WATCHDOG=1 kept coming: {hung:?}"
    );

    shutdown.send(true).unwrap();
    task.await.unwrap();
    progress.abort();
    let end = recv(Duration::from_millis(300)).await.unwrap();
    assert_eq!(count(&end, "STOPPING=1"), 1, "{end:?}");
}

fn now() -> u64 {
    wardgate_adapters::observation::mono_ms()
}
