//! The `exec` adapter with real child processes (`/bin/sh` and Debian's `python3` scripts, and
//! the shipped example plug-in): lines in, restarts on the backoff schedule, backpressure on a
//! flooding plug-in, bounded lines, stop with SIGTERM then SIGKILL, no process left behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use wardgate_adapters::exec::{ExecAdapter, ExecConfig};
use wardgate_adapters::observation::mdc;
use wardgate_adapters::{
    Adapter, AdapterContext, AdapterError, AdapterEvent, DeviceCommand, DeviceEvent, EventKind,
    Observation,
};

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("wardgate-exec-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    /// Writes an executable script.
    fn script(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Debian's interpreter, which the Python plug-ins of these tests name in their first line.
const PYTHON: &str = "/usr/bin/python3";

/// Whether the Python plug-ins can run; says SKIPPED loudly when not (and fails under `CI=true`,
/// like `wardgate_e2e::skip_or_fail`, which this crate cannot use: scripts/test installs
/// python3).
fn have_python(test: &str) -> bool {
    if Path::new(PYTHON).is_file() {
        return true;
    }
    let why = format!("{test}: {PYTHON} is not installed (apt-get install python3)");
    assert!(
        std::env::var_os("CI").is_none_or(|v| v != "true"),
        "{why}; CI runs every test"
    );
    eprintln!("\nSKIPPED: {why}");
    false
}

fn example_plugin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/oximeter_bridge.py")
}

fn example_csv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/oximeter_demo.csv")
}

fn config(name: &str, command: &Path, extra: &str) -> ExecConfig {
    toml::from_str(&format!(
        "name = \"{name}\"\ncommand = \"{}\"\nmax_backoff_s = 4\nstop_grace_s = 2\n{extra}",
        command.display()
    ))
    .unwrap()
}

struct Running {
    adapter: Arc<ExecAdapter>,
    events: mpsc::Receiver<AdapterEvent>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), AdapterError>>,
    _clock: watch::Sender<bool>,
}

fn start(cfg: ExecConfig, capacity: usize) -> Running {
    let adapter = Arc::new(ExecAdapter::new(cfg));
    let (out, events) = mpsc::channel(capacity);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (clock, clock_rx) = watch::channel(true);
    let mut ctx = AdapterContext {
        id: adapter.name().to_string(),
        out,
        shutdown: shutdown_rx,
        clock_synced: clock_rx,
    };
    let a = adapter.clone();
    let task = tokio::spawn(async move { a.run(&mut ctx).await });
    Running {
        adapter,
        events,
        shutdown,
        task,
        _clock: clock,
    }
}

impl Running {
    async fn next(&mut self) -> AdapterEvent {
        timeout(Duration::from_secs(15), self.events.recv())
            .await
            .expect("no event within 15 s")
            .expect("event channel closed")
    }

    /// The next device event (observations on the way are returned with it).
    async fn event(&mut self) -> (DeviceEvent, Vec<Observation>) {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                AdapterEvent::Event(e) => return (e, seen),
                AdapterEvent::Observation(o) => seen.push(o),
            }
        }
    }

    async fn expect(&mut self, kind: EventKind) -> (DeviceEvent, Vec<Observation>) {
        let (e, seen) = self.event().await;
        assert_eq!(e.kind, kind, "{e:?}");
        (e, seen)
    }

    /// Stops the adapter; how long it took.
    async fn stop(self) -> (Duration, Arc<ExecAdapter>) {
        let t0 = Instant::now();
        self.shutdown.send(true).unwrap();
        let r = timeout(Duration::from_secs(20), self.task)
            .await
            .expect("adapter did not stop within 20 s")
            .unwrap();
        assert!(r.is_ok(), "{r:?}");
        (t0.elapsed(), self.adapter)
    }
}

/// `R` (running), `Z` (zombie) … of a process, or `None` when it is gone.
fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid …: comm may hold spaces, so split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut parts = rest.split(' ');
    let state = parts.next()?.chars().next()?;
    let ppid = parts.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Waits until `pid` is no live process of ours: gone, or (reparented to an init that has not
/// reaped it yet) a zombie that is not our child.
fn wait_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match proc_state(pid) {
            None => return,
            Some(('Z', ppid)) if ppid != std::process::id() => return,
            Some(st) => {
                assert!(
                    Instant::now() < deadline,
                    "{what} (pid {pid}) still there: {st:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_plugin_reports_through_the_adapter_with_its_records_and_takes_commands() {
    if !have_python(
        "the_example_plugin_reports_through_the_adapter_with_its_records_and_takes_commands",
    ) {
        return;
    }
    let dir = Scratch::new("example");
    // The first 10 rows of the example's CSV (the CMS50E capture's SpO2 and pulse), the 4th
    // row's SpO2 cell missing as a device that lost it would send it.
    let text = std::fs::read_to_string(example_csv()).unwrap();
    let mut rows: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .take(10)
        .map(|l| {
            let (a, b) = l.split_once(',').unwrap();
            (a.to_owned(), b.to_owned())
        })
        .collect();
    assert_eq!(rows.len(), 10);
    rows[3].0 = "-".into();
    let csv = dir.0.join("oximeter_demo.csv");
    let mut body = String::from("spo2,pulse\n");
    for (a, b) in &rows {
        body.push_str(&format!("{a},{b}\n"));
    }
    std::fs::write(&csv, body).unwrap();
    let cfg = config(
        "bed12-ox",
        &example_plugin(),
        &format!(
            "args = [\"--replay\", \"{}\", \"--rate\", \"0\"]\nworking_dir = \"{}\"\n",
            csv.display(),
            dir.0.display()
        ),
    );
    let mut run = start(cfg, 1024);
    // The plug-in's own connected event first (its start is no event: no sign of the
    // device's life), then its 10 replayed readings (one SpO2 missing).
    let (e, _) = run.expect(EventKind::Connected).await;
    assert_eq!(e.device.as_str(), "exec:bed12-ox");
    assert_eq!(e.detail, "replaying oximeter_demo.csv");
    let (e, obs) = run.expect(EventKind::Disconnected).await;
    assert_eq!(e.detail, "replay finished after 10 readings");
    assert_eq!(obs.len(), 19);
    assert!(obs.iter().all(|o| o.device.as_str() == "exec:bed12-ox"));
    let spo2: Vec<f64> = obs
        .iter()
        .filter(|o| o.code == mdc::SPO2)
        .map(|o| o.value)
        .collect();
    let want: Vec<f64> = rows
        .iter()
        .filter(|(a, _)| a != "-")
        .map(|(a, _)| a.parse().unwrap())
        .collect();
    assert_eq!(spo2, want);
    let pulse: Vec<(f64, Vec<String>)> = obs
        .iter()
        .filter(|o| o.code == mdc::PULSE_RATE_OXIM)
        .map(|o| (o.value, o.status.clone()))
        .collect();
    let pulse_of = |i: usize| rows[i].1.parse::<f64>().unwrap();
    assert_eq!(pulse[0], (pulse_of(0), vec!["record=1".to_string()]));
    assert_eq!(pulse[9], (pulse_of(9), vec!["record=10".to_string()]));
    assert_eq!(obs[0].unit.ucum, "%");
    // The way back: a command reaches its stdin (it logs it; counted as written).
    run.adapter
        .command_sender()
        .send(DeviceCommand::SendBytes(b"hello".to_vec()))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while run.adapter.stats().commands_written < 1 {
        assert!(Instant::now() < deadline, "{:?}", run.adapter.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = run.adapter.stats().pid as u32;
    assert!(pid > 0);
    let (took, adapter) = run.stop().await;
    let st = adapter.stats();
    assert_eq!(
        (
            st.starts,
            st.restarts,
            st.bad_lines,
            st.lines_ok,
            st.forced_kills
        ),
        (1, 0, 0, 21, 0),
        "{st:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "it exits on SIGTERM: {took:?}"
    );
    wait_gone(pid, "the plug-in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_are_counted_and_reported_with_their_offset_and_never_become_observations() {
    let dir = Scratch::new("bad");
    let good = r#"{"v":1,"type":"observation","code":150456,"value":97,"unit":"%"}"#;
    let long = "x".repeat(700);
    let script = dir.script(
        "bad.sh",
        &format!(
            "#!/bin/sh\nprintf '%s\\n' '{good}' 'hello' '{{\"v\":2,\"type\":\"observation\"}}' '{long}' '' '{{\"v\":1,\"type\":\"event\",\"kind\":\"error\",\"device\":\"nope\"}}' '{good}'\nexec sleep 1000\n"
        ),
    );
    let cfg = config("bad", &script, "max_line = 512\n");
    let mut run = start(cfg, 1024);
    let offset_hello = good.len() + 1;
    let mut errors = Vec::new();
    let mut obs = Vec::new();
    while errors.len() < 4 {
        let (e, o) = run.event().await;
        obs.extend(o);
        assert_eq!(e.kind, EventKind::Error, "{e:?}");
        errors.push(e.detail);
    }
    assert_eq!(
        errors[0],
        format!("plug-in bad: line 2 (byte offset {offset_hello}): not a JSON object: expected value at line 1 column 1")
    );
    assert!(
        errors[1].contains("line 3 (") && errors[1].contains("schema version 2 is not 1"),
        "{errors:?}"
    );
    assert!(
        errors[2].contains("line 4 (") && errors[2].contains("longer than max_line (512 bytes)"),
        "{errors:?}"
    );
    assert!(
        errors[3].contains("line 5 (") && errors[3].contains("has no devices"),
        "{errors:?}"
    );
    while obs.len() < 2 {
        match run.next().await {
            AdapterEvent::Observation(o) => obs.push(o),
            AdapterEvent::Event(e) => panic!("{e:?}"),
        }
    }
    let st = run.adapter.stats();
    assert_eq!(
        (
            st.lines_ok,
            st.bad_lines,
            st.lines_too_long,
            st.observations
        ),
        (2, 4, 1, 2),
        "{st:?}"
    );
    let (_, adapter) = run.stop().await;
    assert_eq!(
        adapter.stats().starts,
        1,
        "a bad line never restarts the plug-in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_plugin_is_restarted_on_the_backoff_schedule_and_reaped() {
    let dir = Scratch::new("crash");
    let script = dir.script(
        "crash.sh",
        "#!/bin/sh\necho \"{\\\"v\\\":1,\\\"type\\\":\\\"event\\\",\\\"kind\\\":\\\"connected\\\",\\\"detail\\\":\\\"pid $$\\\"}\"\necho '{\"v\":1,\"type\":\"observation\",\"code\":150456,\"value\":97,\"unit\":\"%\"}'\necho 'about to fail' >&2\nexit 3\n",
    );
    let cfg = config("crashy", &script, "");
    let mut run = start(cfg, 1024);
    let mut starts: Vec<(Instant, u32)> = Vec::new();
    let mut exits: Vec<(Instant, String)> = Vec::new();
    let mut observations = 0;
    while exits.len() < 5 {
        let (e, obs) = run.event().await;
        observations += obs.len();
        match e.kind {
            EventKind::Connected => {
                let pid: u32 = e
                    .detail
                    .rsplit("pid ")
                    .next()
                    .and_then(|p| p.trim_end_matches(')').parse().ok())
                    .unwrap_or_else(|| panic!("{e:?}"));
                starts.push((Instant::now(), pid));
            }
            EventKind::Disconnected => exits.push((Instant::now(), e.detail)),
            _ => panic!("{e:?}"),
        }
    }
    // Every run's reading arrived before its exit was reported.
    while observations < 5 {
        match run.next().await {
            AdapterEvent::Observation(_) => observations += 1,
            AdapterEvent::Event(e) if e.kind == EventKind::Connected => {}
            AdapterEvent::Event(e) => panic!("{e:?}"),
        }
    }
    for (_, d) in &exits {
        assert!(
            d.starts_with("plug-in crashy: exited with status 3 after "),
            "{d}"
        );
    }
    // The schedule: the n-th wait (from 0) is drawn from [d/2, d], d = 0.5 s · 2^n capped at
    // max_backoff_s = 4 s; the detail says it, and the next start comes no earlier.
    for n in 0..4 {
        let d = (0.5 * f64::from(1u32 << n)).min(4.0);
        let said: f64 = exits[n]
            .1
            .rsplit("restarting in ")
            .next()
            .and_then(|s| s.trim_end_matches(" s").parse().ok())
            .unwrap();
        assert!(
            said >= d / 2.0 - 0.05 && said <= d + 0.05,
            "wait {n}: {said} s not in [{}, {d}]",
            d / 2.0
        );
        let gap = starts[n + 1].0.duration_since(exits[n].0).as_secs_f64();
        assert!(
            gap >= said - 0.05,
            "restart {n} came after {gap} s, announced {said} s"
        );
    }
    // No zombie: each exited plug-in was reaped while the adapter runs.
    for (_, pid) in &starts[..4] {
        wait_gone(*pid, "an exited plug-in");
    }
    let (_, adapter) = run.stop().await;
    let st = adapter.stats();
    assert!(st.restarts >= 4 && st.exits >= 5, "{st:?}");
    assert!(
        st.stderr_lines >= 5,
        "one stderr line per run, logged: {st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_cannot_start_is_reported_once_and_retried() {
    let missing = Path::new("/nonexistent/wardgate/plugin");
    let mut run = start(config("ghost", missing, ""), 64);
    let (e, _) = run.expect(EventKind::Error).await;
    assert!(
        e.detail
            .starts_with("plug-in ghost: cannot start /nonexistent/wardgate/plugin: No such file"),
        "{e:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while run.adapter.stats().start_failures < 3 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        run.events.try_recv().is_err(),
        "reported once, not per attempt"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_and_working_directory_are_explicit() {
    if !have_python("environment_and_working_directory_are_explicit") {
        return;
    }
    let dir = Scratch::new("env");
    let out = dir.0.join("seen.json");
    let script = dir.script(
        "env.py",
        &format!(
            "#!/usr/bin/python3\nimport json, os\njson.dump({{'env': dict(os.environ), 'cwd': os.getcwd()}}, open('{}', 'w'))\nprint('{{\"v\":1,\"type\":\"event\",\"kind\":\"connected\"}}', flush=True)\nimport time\ntime.sleep(1000)\n",
            out.display()
        ),
    );
    std::env::set_var("WARDGATE_TEST_SECRET", "must-not-leak");
    let cfg = config(
        "envy",
        &script,
        &format!(
            "working_dir = \"{}\"\nenv = {{ SITE = \"ward7\" }}\n",
            dir.0.display()
        ),
    );
    let mut run = start(cfg, 64);
    run.expect(EventKind::Connected).await;
    let seen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let mut keys: Vec<&str> = seen["env"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        // Set by the interpreter itself, not passed by wardgate.
        .filter(|k| *k != "LC_CTYPE")
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "LANG",
            "PATH",
            "SITE",
            "WARDGATE_DEVICE",
            "WARDGATE_PLUGIN",
            "WARDGATE_PLUGIN_SCHEMA"
        ]
    );
    assert_eq!(seen["env"]["SITE"], "ward7");
    assert_eq!(seen["env"]["PATH"], "/usr/local/bin:/usr/bin:/bin");
    assert_eq!(
        Path::new(seen["cwd"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        dir.0.canonicalize().unwrap()
    );
    run.stop().await;
}

/// The plug-in writes observation lines as fast as its pipe takes them, with a non-blocking
/// stdout, and counts the writes the full pipe refused (EAGAIN). While the test does not take
/// events from the adapter's channel, the adapter must stop reading: the bytes it has read stop
/// growing, bounded by what the channel and one read hold, and the plug-in sees its pipe full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_plugin_is_held_back_by_backpressure_not_buffered() {
    if !have_python("a_flooding_plugin_is_held_back_by_backpressure_not_buffered") {
        return;
    }
    let dir = Scratch::new("flood");
    let report = dir.0.join("eagain");
    let script = dir.script(
        "flood.py",
        &format!(
            r#"#!/usr/bin/python3
import os, time
os.set_blocking(1, False)
line = b'{{"v":1,"type":"observation","code":150456,"value":97,"unit":"%"}}\n'
chunk = line * 200
pending = b''
eagain = 0
written = 0
last = time.monotonic()
while True:
    if not pending:
        pending = chunk
    try:
        n = os.write(1, pending)
        pending = pending[n:]
        written += n
    except BlockingIOError:
        eagain += 1
        time.sleep(0.001)
    if time.monotonic() - last > 0.1:
        with open('{report}.tmp', 'w') as f:
            f.write('%d %d' % (eagain, written))
        os.replace('{report}.tmp', '{report}')
        last = time.monotonic()
"#,
            report = report.display()
        ),
    );
    let capacity = 64;
    let mut run = start(config("flood", &script, "max_line = 1024\n"), capacity);
    // Take nothing for a while: the adapter fills the channel, then must stop reading.
    let stable = |run: &Running| {
        let a = run.adapter.stats().stdout_bytes;
        std::thread::sleep(Duration::from_millis(500));
        (a, run.adapter.stats().stdout_bytes)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let held = loop {
        let (a, b) = stable(&run);
        if a == b && a > 0 {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "the adapter kept reading: {a} → {b}"
        );
    };
    let line = 65u64;
    // What it read: the channel's worth of lines, the one it waits to send, and at most one
    // read of 8 KiB beyond that.
    let bound = (capacity as u64 + 2) * line + 8192;
    assert!(
        held <= bound,
        "read {held} bytes with the channel full (bound {bound})"
    );
    let st = run.adapter.stats();
    assert!(st.stdout_buffer_max <= 1024 + 8192, "{st:?}");
    // The plug-in saw its pipe full: it was slowed, not buffered.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (eagain, written) = loop {
        if let Ok(s) = std::fs::read_to_string(&report) {
            let v: Vec<u64> = s.split(' ').filter_map(|x| x.parse().ok()).collect();
            if v.len() == 2 && v[0] > 0 {
                break (v[0], v[1]);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the plug-in never found its pipe full"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        written <= held + 256 * 1024,
        "written {written}, read {held}: the pipe holds the rest"
    );
    assert!(eagain > 0);
    // Taking events lets it go on.
    let mut taken = 0;
    while taken < 20_000 {
        match run.next().await {
            AdapterEvent::Observation(_) => taken += 1,
            AdapterEvent::Event(e) => panic!("{e:?}"),
        }
    }
    assert!(run.adapter.stats().stdout_bytes > held);
    let (_, adapter) = run.stop().await;
    assert_eq!(adapter.stats().bad_lines, 0);
}

/// An endless line (no newline ever): one report, its bytes dropped as they come, the adapter
/// holds no more than `max_line` plus one read whatever the plug-in writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_line_is_dropped_as_it_comes_and_never_held() {
    if !have_python("an_endless_line_is_dropped_as_it_comes_and_never_held") {
        return;
    }
    let dir = Scratch::new("endless");
    let script = dir.script(
        "endless.py",
        "#!/usr/bin/python3\nimport sys\nblock = b'y' * 65536\nwhile True:\n    sys.stdout.buffer.write(block)\n    sys.stdout.buffer.flush()\n",
    );
    let mut run = start(config("endless", &script, "max_line = 4096\n"), 64);
    let (e, _) = run.expect(EventKind::Error).await;
    assert_eq!(
        e.detail,
        "plug-in endless: line 1 (byte offset 0): longer than max_line (4096 bytes); dropped up to its newline"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while run.adapter.stats().stdout_bytes < 64 << 20 {
        assert!(Instant::now() < deadline, "{:?}", run.adapter.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = run.adapter.stats();
    assert!(st.stdout_buffer_max <= 4096 + 8192, "{st:?}");
    assert_eq!((st.lines_too_long, st.bad_lines), (1, 1), "{st:?}");
    run.stop().await;
}

/// A plug-in that ignores SIGTERM and has started a child of its own: on shutdown it gets
/// SIGKILL after `stop_grace_s`, and neither it nor its child is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_a_plugin_that_ignores_sigterm_and_its_children() {
    let dir = Scratch::new("stubborn");
    let pids = dir.0.join("pids");
    let script = dir.script(
        "stubborn.sh",
        &format!(
            "#!/bin/sh\ntrap '' TERM\nsleep 1000 &\necho \"$$ $!\" > {}\necho '{{\"v\":1,\"type\":\"event\",\"kind\":\"connected\"}}'\nwhile :; do sleep 1; done\n",
            pids.display()
        ),
    );
    let mut run = start(config("stubborn", &script, ""), 64);
    run.expect(EventKind::Connected).await;
    let text = std::fs::read_to_string(&pids).unwrap();
    let v: Vec<u32> = text
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let (plugin, grandchild) = (v[0], v[1]);
    assert!(proc_state(grandchild).is_some());
    let (took, adapter) = run.stop().await;
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "SIGKILL after the 2 s grace: {took:?}"
    );
    assert_eq!(adapter.stats().forced_kills, 1);
    wait_gone(plugin, "the plug-in");
    wait_gone(grandchild, "the plug-in's child");
}

/// A plug-in that closes its stdout but keeps running can report nothing more: it is stopped
/// (SIGTERM) and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_closes_its_stdout_is_stopped_and_restarted() {
    let dir = Scratch::new("mute");
    let script = dir.script("mute.sh", "#!/bin/sh\nexec 1>&-\nexec sleep 1000\n");
    let mut run = start(config("mute", &script, ""), 64);
    let (e, _) = run.expect(EventKind::Disconnected).await;
    assert!(
        e.detail.starts_with(
            "plug-in mute: closed its standard output and was stopped (killed by signal 15 (SIGTERM)) after "
        ),
        "{e:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while run.adapter.stats().starts < 2 {
        assert!(Instant::now() < deadline, "{:?}", run.adapter.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.stop().await;
}

/// A plug-in for several devices: each line names one of `[[exec]] devices`; its readings carry
/// that device's id, and a line naming another device is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_with_devices_reports_under_their_ids_only() {
    let dir = Scratch::new("devices");
    let obs = |d: &str, v: u32| {
        format!(
            r#"{{"v":1,"type":"observation","device":"{d}","code":150456,"value":{v},"unit":"%"}}"#
        )
    };
    let script = dir.script(
        "pumps.sh",
        &format!(
            "#!/bin/sh\nprintf '%s\\n' '{}' '{}' '{}' '{}' '{{\"v\":1,\"type\":\"event\",\"kind\":\"disconnected\",\"device\":\"pump-2\",\"detail\":\"cable\"}}'\nexec sleep 1000\n",
            obs("pump-1", 91),
            obs("pump-3", 93),
            r#"{"v":1,"type":"observation","code":150456,"value":94,"unit":"%"}"#,
            obs("pump-2", 92)
        ),
    );
    let mut run = start(
        config("pumps", &script, "devices = [\"pump-1\", \"pump-2\"]\n"),
        64,
    );
    let (e, seen) = run.expect(EventKind::Error).await;
    assert!(
        e.detail
            .contains("\"device\": \"pump-3\" is not one of [[exec]] devices (pump-1, pump-2)"),
        "{e:?}"
    );
    assert_eq!(e.device.as_str(), "exec:pumps");
    // A reading that names no device is refused too (it is no device's: never exec:pumps).
    let (e, more0) = run.expect(EventKind::Error).await;
    assert!(more0.is_empty(), "{more0:?}");
    assert_eq!(
        e.detail,
        "plug-in pumps: line 3 (byte offset 166): no \"device\": this plug-in has [[exec]] devices (pump-1, pump-2); each reading names one"
    );
    let (e, more) = run.expect(EventKind::Disconnected).await;
    assert_eq!(
        (e.device.as_str(), e.detail.as_str()),
        ("exec:pumps:pump-2", "cable")
    );
    let got: Vec<(String, f64)> = seen
        .iter()
        .chain(&more)
        .map(|o| (o.device.0.clone(), o.value))
        .collect();
    assert_eq!(
        got,
        [
            ("exec:pumps:pump-1".to_string(), 91.0),
            ("exec:pumps:pump-2".to_string(), 92.0)
        ]
    );
    run.stop().await;
}

/// A bad value is reported by kind, position and what was expected, never by itself: a
/// plug-in's values are patient values, and the error event goes upstream and to the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_value_is_reported_without_the_value() {
    let dir = Scratch::new("badvalue");
    let script = dir.script(
        "badvalue.sh",
        "#!/bin/sh\nprintf '%s\\n' '{\"v\":1,\"type\":\"observation\",\"code\":150456,\"value\":\"97\",\"unit\":\"%\"}' '{\"v\":1,\"type\":\"waveform\",\"code\":150452,\"unit\":\"1\",\"period_us\":16667,\"samples\":[61,3000000000]}'\nexec sleep 1000\n",
    );
    let mut run = start(config("badvalue", &script, ""), 64);
    let (a, _) = run.expect(EventKind::Error).await;
    let (b, _) = run.expect(EventKind::Error).await;
    assert_eq!(
        [a.detail.as_str(), b.detail.as_str()],
        [
            "plug-in badvalue: line 1 (byte offset 0): a value of the wrong type at column 54 (expected a number)",
            "plug-in badvalue: line 2 (byte offset 67): a value out of range at column 92 (expected a whole number from -2147483648 to 2147483647)",
        ]
    );
    run.stop().await;
}

/// A plug-in that writes far more than `max_lines_per_s`, taken from as fast as the test can:
/// what the adapter accepts is bounded by the limit (one second's burst, then the rate), the
/// episode is counted once, and what it holds stays one read and one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_over_max_lines_per_s_is_read_at_that_rate() {
    let dir = Scratch::new("rate");
    let script = dir.script(
        "rate.sh",
        "#!/bin/sh\nline='{\"v\":1,\"type\":\"observation\",\"code\":150456,\"value\":97,\"unit\":\"%\"}'\nwhile :; do printf '%s\\n%s\\n%s\\n%s\\n%s\\n%s\\n%s\\n%s\\n' \"$line\" \"$line\" \"$line\" \"$line\" \"$line\" \"$line\" \"$line\" \"$line\"; done\n",
    );
    let mut run = start(config("rate", &script, "max_lines_per_s = 200\n"), 64);
    // The first reading, then 4 s of taking everything.
    while !matches!(run.next().await, AdapterEvent::Observation(_)) {}
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs(4) {
        if let Ok(Some(AdapterEvent::Observation(_))) =
            timeout(Duration::from_millis(100), run.events.recv()).await
        {
            n += 1;
        }
    }
    // 4 s at 200/s after a burst of at most 200: no more than 1,000 (and the limit is no
    // stall: at least half of the rate).
    assert!((400..=1_000).contains(&n), "{n} observations in 4 s");
    let st = run.adapter.stats();
    assert_eq!(st.slowed, 1, "one episode: {st:?}");
    assert!(st.slowed_ms >= 2_000, "{st:?}");
    assert!(st.stdout_buffer_max <= 8192 + 65_536, "{st:?}");
    assert_eq!(st.bad_lines, 0, "{st:?}");
    run.stop().await;
}

/// A plug-in that exits at once sends nothing: no event says it is there (its starts are
/// not signs of life), only its exits, and every quick exit is counted in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_exits_at_once_gives_no_sign_of_life() {
    let dir = Scratch::new("exitnow");
    let script = dir.script("exit_now.sh", "#!/bin/sh\necho failing >&2\nexit 3\n");
    let mut run = start(config("exitnow", &script, ""), 64);
    for _ in 0..3 {
        let (e, obs) = run.expect(EventKind::Disconnected).await;
        assert!(obs.is_empty());
        assert!(
            e.detail
                .starts_with("plug-in exitnow: exited with status 3 after "),
            "{e:?}"
        );
    }
    let st = run.adapter.stats();
    assert!(st.quick_exits >= 3 && st.restarts >= 2, "{st:?}");
    run.stop().await;
}

/// A burst of bad lines and then silence: the ones over the limit are summarised by the timer,
/// not only when a later line comes (that may be never).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_held_back_are_summarised_without_a_further_line() {
    let dir = Scratch::new("burst");
    let script = dir.script(
        "burst.sh",
        "#!/bin/sh\nfor i in 1 2 3 4 5 6 7 8; do echo \"not json $i\"; done\nexec sleep 1000\n",
    );
    let mut run = start(config("burst", &script, ""), 64);
    let mut details = Vec::new();
    for _ in 0..6 {
        let (e, _) = run.expect(EventKind::Error).await;
        details.push(e.detail);
    }
    assert!(
        details[..5]
            .iter()
            .all(|d| d.starts_with("plug-in burst: line ")),
        "{details:?}"
    );
    assert_eq!(
        details[5],
        "plug-in burst: 3 further bad lines not reported one by one"
    );
    assert_eq!(run.adapter.stats().bad_lines, 8);
    run.stop().await;
}
