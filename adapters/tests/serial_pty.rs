//! `SerialAdapter` against real pseudo-terminals, fed with the real recordings in
//! `data/real/serial/`.
//!
//! The adapter opens a *stable path*: a symlink to the pty's slave, like `/dev/serial/by-id/…`.
//! Unplugging is simulated the way the kernel does it: the master closes (the slave then reads
//! `EIO`), and udev re-points the stable link at the device's new node.

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};
use wardgate_adapters::observation::mdc;
use wardgate_adapters::serial::LineSettings;
use wardgate_adapters::serial::{Parity, ProtocolName, SerialAdapter, SerialConfig};
use wardgate_adapters::{
    Adapter, AdapterContext, AdapterError, AdapterEvent, EventKind, Observation, TimeQuality,
};

const REAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/real/serial/");

fn real(name: &str) -> Vec<u8> {
    std::fs::read(format!("{REAL}{name}")).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

/// One pseudo-terminal: the test plays the device on the master side.
struct Pty {
    /// Master side, non-blocking.
    master: File,
    /// The slave fd from `openpty`, kept open so the pair lives until the test drops it.
    _slave: OwnedFd,
    /// `/dev/pts/N`.
    path: PathBuf,
}

impl Pty {
    fn new() -> Pty {
        let pair = nix::pty::openpty(None, None).expect("openpty");
        let mut t = tcgetattr(&pair.slave).expect("tcgetattr");
        cfmakeraw(&mut t);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &t).expect("tcsetattr");
        let path = nix::unistd::ttyname(&pair.slave).expect("ttyname");
        fcntl(&pair.master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).expect("O_NONBLOCK");
        Pty {
            master: File::from(pair.master),
            _slave: pair.slave,
            path,
        }
    }

    /// Writes everything, waiting while the pty buffer is full.
    async fn write_all(&mut self, mut bytes: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !bytes.is_empty() {
            match self.master.write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "pty write stalled");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => panic!("pty write: {e}"),
            }
        }
    }

    /// Reads exactly `n` bytes the adapter wrote to the device.
    async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.len() < n {
            match self.master.read(&mut buf[..n - got.len()]) {
                Ok(k) => got.extend(&buf[..k]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "nothing written by the adapter: {got:02X?}"
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => panic!("pty read: {e}"),
            }
        }
        got
    }
}

/// A scratch directory for the stable links, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("wardgate-serial-pty-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Points `link` at `target` atomically, as udev does for `/dev/serial/by-id`.
fn point(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("rename symlink");
}

fn config(
    name: &str,
    path: &Path,
    protocol: ProtocolName,
    serial_number: Option<&str>,
) -> SerialConfig {
    SerialConfig {
        name: name.into(),
        path: path.into(),
        protocol,
        baud: None,
        data_bits: 8,
        parity: Parity::None,
        stop_bits: 1,
        serial_number: serial_number.map(Into::into),
        max_backoff_s: 1,
        map: None,
        location: None,
        numerics_every_s: None,
    }
}

/// A running adapter and the test's ends of its channels.
struct Running {
    adapter: Arc<SerialAdapter>,
    events: mpsc::Receiver<AdapterEvent>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), AdapterError>>,
    _clock: watch::Sender<bool>,
}

fn start(cfg: SerialConfig) -> Running {
    let adapter = Arc::new(SerialAdapter::new(cfg));
    let (out, events) = mpsc::channel(4096);
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
        timeout(Duration::from_secs(5), self.events.recv())
            .await
            .expect("no event within 5 s")
            .expect("event channel closed")
    }

    /// Waits for a device event of `kind`; observations on the way are returned with it.
    async fn expect_event(&mut self, kind: EventKind) -> (String, Vec<Observation>) {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                AdapterEvent::Event(e) if e.kind == kind => return (e.detail, seen),
                AdapterEvent::Event(e) => panic!("expected {kind:?}, got {e:?}"),
                AdapterEvent::Observation(o) => seen.push(o),
            }
        }
    }

    /// Collects `n` observations; any device event on the way fails the test.
    async fn observations(&mut self, n: usize) -> Vec<Observation> {
        let mut seen = Vec::new();
        while seen.len() < n {
            match self.next().await {
                AdapterEvent::Observation(o) => seen.push(o),
                AdapterEvent::Event(e) => {
                    panic!("unexpected event {e:?} after {} observations", seen.len())
                }
            }
        }
        seen
    }

    async fn stop(self) -> (Arc<SerialAdapter>, Result<(), AdapterError>) {
        self.shutdown.send(true).expect("adapter gone");
        let res = timeout(Duration::from_secs(2), self.task)
            .await
            .expect("adapter did not stop")
            .expect("join");
        (self.adapter, res)
    }
}

fn values(obs: &[Observation], code: u32) -> Vec<f64> {
    obs.iter()
        .filter(|o| o.code == code)
        .map(|o| o.value)
        .collect()
}

/// The device → host bytes of the CMS50D+ capture (handshake responses, then live frames).
fn cms50dplus_device_bytes() -> Vec<u8> {
    let text = String::from_utf8(real("cms50dplus_handshake_and_live.csv")).unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1] == "dev->host").then(|| hex::decode(f[2]).unwrap())
        })
        .flatten()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cms50_replay_then_unplug_and_replug_on_the_stable_path() {
    let scratch = Scratch::new("cms50");
    let link = scratch.0.join("usb-Contec_CMS50-if00-port0");
    let mut pty = Pty::new();
    point(&link, &pty.path);
    let mut run = start(config("bed7-spo2", &link, ProtocolName::Cms50, None));

    let (detail, _) = run.expect_event(EventKind::Connected).await;
    assert!(detail.contains("115200 8N1"), "{detail}");
    assert_eq!(
        pty.read_exact(9).await,
        hex::decode("7d81a1808080808080").unwrap(),
        "start-live command"
    );

    // Replay the CMS50E recording in uneven pieces: 102 frames, 1.7 s of the device's time.
    // The first second leaves when complete; the rest when the line has gone quiet.
    let bin = real("cms50e_live_capture.bin");
    for piece in bin.chunks(97) {
        pty.write_all(piece).await;
    }
    let obs = run.observations(2 * 3).await;
    assert_eq!(values(&obs, mdc::SPO2), vec![99.0; 2]);
    assert_eq!(values(&obs, mdc::PULSE_RATE_OXIM), vec![60.0; 2]);
    let arrays = pleth(&obs);
    assert_eq!(arrays.iter().map(Vec::len).collect::<Vec<_>>(), [60, 42]);
    assert_eq!(arrays.concat(), recording_pleth(&bin));
    for o in &obs {
        assert_eq!(o.device.as_str(), "serial:bed7-spo2");
        assert_eq!(o.time_quality, TimeQuality::Synced);
        assert!(o.device_time.is_none() && o.gateway_time > 0);
    }

    // Unplug: udev re-points the stable link at the replugged device's new node, the old node's
    // master goes away and the adapter's read fails with EIO.
    let mut pty2 = Pty::new();
    point(&link, &pty2.path);
    drop(pty);
    let (detail, _) = run.expect_event(EventKind::Disconnected).await;
    assert!(detail.starts_with("device bed7-spo2: "), "{detail}");
    assert!(
        detail.contains("EIO") || detail.contains("end of file"),
        "{detail}"
    );
    let (detail, _) = run.expect_event(EventKind::Connected).await;
    assert!(detail.contains(&link.display().to_string()), "{detail}");
    assert_eq!(
        pty2.read_exact(9).await,
        hex::decode("7d81a1808080808080").unwrap()
    );

    pty2.write_all(&cms50dplus_device_bytes()).await;
    let obs = run.observations(3).await;
    assert_eq!(values(&obs, mdc::PULSE_RATE_OXIM), vec![65.0]);
    assert_eq!(values(&obs, mdc::SPO2), vec![97.0]);
    assert_eq!(pleth(&obs), vec![vec![51, 48, 46, 44, 43]]);

    let (adapter, res) = run.stop().await;
    assert!(res.is_ok(), "{res:?}");
    let s = adapter.stats();
    assert_eq!(
        (s.connects, s.reconnects, s.disconnects),
        (2, 1, 1),
        "{s:?}"
    );
    assert_eq!(
        (s.frames_ok, s.frame_errors, s.readings),
        (107, 0, 9),
        "{s:?}"
    );
}

/// The pleth arrays among `obs`, in order.
fn pleth(obs: &[Observation]) -> Vec<Vec<i32>> {
    obs.iter()
        .filter(|o| o.code == mdc::PLETH)
        .map(|o| {
            let w = o.waveform.as_ref().expect("the pleth is a waveform");
            assert_eq!((w.period_us, w.scale, w.offset), (16_667, 1.0, 0.0));
            assert_eq!(o.value, f64::from(w.samples[0]));
            w.samples.clone()
        })
        .collect()
}

/// The pleth sample of every live frame of a CMS50 stream of whole 9-byte frames (d1 bits
/// 0..6, bit 7 of the data byte being the sync bit).
fn recording_pleth(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks(9)
        .map(|f| {
            assert_eq!(f[0], 0x01, "a live frame");
            i32::from(f[3] & 0x7F)
        })
        .collect()
}

/// A pause in the stream ends the array: samples are never joined across it, and each array is
/// stamped at its first sample. Samples held when the port is lost leave before `disconnected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_ends_the_pleth_array_and_a_disconnect_loses_no_held_sample() {
    let scratch = Scratch::new("cms50-gap");
    let link = scratch.0.join("usb-Contec_CMS50-if00-port0");
    let mut pty = Pty::new();
    point(&link, &pty.path);
    let mut run = start(config("bed7-spo2", &link, ProtocolName::Cms50, None));
    run.expect_event(EventKind::Connected).await;
    let _start_live = pty.read_exact(9).await;
    let bin = real("cms50e_live_capture.bin");
    let (first, second) = (&bin[..30 * 9], &bin[30 * 9..60 * 9]);

    // 30 frames, a pause of 1.5 s (three times GAP), the next 30.
    pty.write_all(first).await;
    let a = run.observations(3).await;
    let after_first = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pty.write_all(second).await;
    let b = run.observations(3).await;
    assert!(
        after_first.elapsed() >= Duration::from_millis(1500),
        "the second half's array waited for its own pause"
    );
    assert_eq!(pleth(&a), vec![recording_pleth(first)]);
    assert_eq!(pleth(&b), vec![recording_pleth(second)]);
    assert_eq!(values(&a, mdc::SPO2), vec![99.0]);
    assert_eq!(values(&b, mdc::SPO2), vec![99.0]);
    let stamp = |obs: &[Observation]| {
        obs.iter()
            .find(|o| o.code == mdc::PLETH)
            .unwrap()
            .gateway_time
    };
    let numeric = |obs: &[Observation]| {
        obs.iter()
            .find(|o| o.code == mdc::SPO2)
            .unwrap()
            .gateway_time
    };
    // Each array starts 29 periods (483 ms) before its last bytes arrived (the numerics' time).
    for obs in [&a, &b] {
        assert_eq!(numeric(obs) - stamp(obs), 484, "29 × 16.667 ms, rounded up");
    }
    assert!(
        stamp(&b) - stamp(&a) >= 1500,
        "{} ms apart",
        stamp(&b) - stamp(&a)
    );

    // 20 frames, and the port is lost before the line goes quiet: the 20 samples and their
    // numerics still leave, before the `disconnected` event.
    let third = &bin[60 * 9..80 * 9];
    pty.write_all(third).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while run.adapter.stats().bytes_read < 9 * 80 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(pty);
    let (_, c) = run.expect_event(EventKind::Disconnected).await;
    assert_eq!(pleth(&c), vec![recording_pleth(third)]);
    assert_eq!(values(&c, mdc::PULSE_RATE_OXIM), vec![60.0]);
    let (adapter, res) = run.stop().await;
    assert!(res.is_ok(), "{res:?}");
    assert_eq!(adapter.stats().readings, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ivy_replay_at_9600_baud() {
    let scratch = Scratch::new("ivy");
    let link = scratch.0.join("usb-Ivy_450C");
    let mut pty = Pty::new();
    point(&link, &pty.path);
    let mut run = start(config("bed3-monitor", &link, ProtocolName::AnsarB, None));
    let (detail, _) = run.expect_event(EventKind::Connected).await;
    assert!(detail.contains("9600 8N1"), "{detail}");
    pty.write_all(&real("ivy450c_ansarb_capture.bin")).await;
    let obs = run.observations(27 * 11).await;
    assert_eq!(values(&obs, mdc::SPO2), vec![100.0; 27]);
    assert_eq!(values(&obs, mdc::NIBP_SYS), vec![121.0; 27]);
    let (adapter, res) = run.stop().await;
    assert!(res.is_ok(), "{res:?}");
    assert_eq!(
        (adapter.stats().frames_ok, adapter.stats().frame_errors),
        (27, 0)
    );
}

fn open_with(path: &Path, want: &LineSettings) -> tokio_serial::SerialStream {
    use tokio_serial::SerialPortBuilderExt;
    let parity = match want.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let data_bits = if want.data_bits == 7 {
        tokio_serial::DataBits::Seven
    } else {
        tokio_serial::DataBits::Eight
    };
    let stop_bits = if want.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    tokio_serial::new(path.to_string_lossy(), want.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .open_native_async()
        .expect("open pty slave")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_settings_are_read_back_from_a_real_tty() {
    let pty = Pty::new();
    for want in [
        LineSettings {
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
        },
        LineSettings {
            baud: 115_200,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 2,
        },
        LineSettings {
            baud: 19_200,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
        },
    ] {
        let port = open_with(&pty.path, &want);
        assert_eq!(LineSettings::read_back(&port).expect("read back"), want);
    }
    // A pty never does parity or fewer than 8 data bits: Linux clears PARENB and forces CS8
    // (drivers/tty/pty.c, pty_set_termios). It is a real port that does not take its settings.
    let want = LineSettings {
        baud: 115_200,
        data_bits: 7,
        parity: Parity::Even,
        stop_bits: 2,
    };
    let port = open_with(&pty.path, &want);
    let got = LineSettings::read_back(&port).expect("read back");
    assert_eq!(
        (got.data_bits, got.parity, got.baud),
        (8, Parity::None, 115_200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_does_not_take_the_parity_is_refused() {
    let scratch = Scratch::new("parity");
    let link = scratch.0.join("usb-Ivy_450C");
    let pty = Pty::new();
    point(&link, &pty.path);
    let mut cfg = config("bed4-monitor", &link, ProtocolName::AnsarB, None);
    cfg.parity = Parity::Even;
    let mut run = start(cfg);
    let (detail, seen) = run.expect_event(EventKind::Error).await;
    assert!(seen.is_empty());
    assert!(
        detail.contains("asked for 9600 8E1, port reports 9600 8N1"),
        "{detail}"
    );
    let res = timeout(Duration::from_secs(2), run.task)
        .await
        .expect("returns")
        .expect("join");
    assert!(matches!(res, Err(AdapterError::Config(_))), "{res:?}");
    assert_eq!(
        run.adapter.stats().connects,
        0,
        "never reported as connected"
    );
    drop(pty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masimo_readings_wait_for_the_configured_serial_number() {
    let scratch = Scratch::new("masimo");
    let link = scratch.0.join("usb-Masimo_Rad8");
    let mut pty = Pty::new();
    point(&link, &pty.path);
    let mut run = start(config(
        "bed9-spo2",
        &link,
        ProtocolName::Masimo,
        Some("0000056661"),
    ));
    run.expect_event(EventKind::Connected).await;

    // Published example lines (documentation, not recordings): mdpnp/mdpnp
    // `other/pox_rad/src/poxrad_discrete.h` (a Radical-7 with another serial number) and
    // yahnatan/pulseox `README.md` (Rad-8 output with the configured one).
    let other = "12/01/05 11:56:29 SN=0123456789 SPO2=098% BPM=240 PI=20.00% SPCO=01.0% SPMET=00.5% DESAT=01 PIDELTA=-02 PVI=027 ALARM=0000 EXC=000820\r\n";
    let ours = "02/22/16 22:47:45 SN=0000056661 SPO2=098% BPM=097 PI=03.60% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800\r\n";
    pty.write_all(other.as_bytes()).await;
    let (detail, seen) = run.expect_event(EventKind::Error).await;
    assert!(
        seen.is_empty(),
        "another bed's readings must not pass: {seen:?}"
    );
    assert!(
        detail.contains("reports serial number 0123456789, configured 0000056661"),
        "{detail}"
    );

    pty.write_all(ours.as_bytes()).await;
    let obs = run.observations(3).await;
    assert_eq!(values(&obs, mdc::SPO2), vec![98.0]);
    assert_eq!(values(&obs, mdc::PULSE_RATE_OXIM), vec![97.0]);
    assert_eq!(values(&obs, mdc::PERFUSION_INDEX), vec![3.6]);
    assert!(obs.iter().all(|o| o.time_quality == TimeQuality::Device
        && o.device_time.as_deref() == Some("2016-02-22T22:47:45")));

    // The wrong device again (as after a cable swap): reported again, since the number changed
    // from the matching one; its readings are dropped, the matching line's pass.
    pty.write_all(other.as_bytes()).await;
    pty.write_all(ours.as_bytes()).await;
    let (detail, _) = run.expect_event(EventKind::Error).await;
    assert!(detail.contains("0123456789"), "{detail}");
    let obs = run.observations(3).await;
    assert_eq!(values(&obs, mdc::SPO2), vec![98.0]);

    let (adapter, res) = run.stop().await;
    assert!(res.is_ok(), "{res:?}");
    let s = adapter.stats();
    assert_eq!(
        (s.readings, s.readings_dropped, s.identity_mismatches),
        (6, 6, 2),
        "{s:?}"
    );
}

#[tokio::test]
async fn a_serial_number_for_a_protocol_without_one_is_refused() {
    let mut run = start(config(
        "bed1-spo2",
        Path::new("/nonexistent/port"),
        ProtocolName::Cms50,
        Some("123"),
    ));
    let (detail, _) = run.expect_event(EventKind::Error).await;
    assert!(detail.contains("never reports one"), "{detail}");
    let res = timeout(Duration::from_secs(2), run.task)
        .await
        .expect("returns")
        .expect("join");
    assert!(matches!(res, Err(AdapterError::Config(_))), "{res:?}");
    assert_eq!(run.adapter.stats().open_failures, 0, "nothing was opened");
}

#[tokio::test]
async fn a_missing_port_is_retried_with_backoff_until_shutdown() {
    let scratch = Scratch::new("missing");
    let link = scratch.0.join("not-plugged-in");
    let started = Instant::now();
    let mut run = start(config("bed2-spo2", &link, ProtocolName::Masimo, None));
    let (detail, _) = run.expect_event(EventKind::Error).await;
    assert!(detail.contains("cannot open"), "{detail}");
    // The schedule (port.rs): waits of 125–250 ms, 250–500 ms, 500–1000 ms (cap 1 s) between
    // attempts. Asserted as lower bounds from before the first attempt, which a loaded machine
    // can only make later, never earlier: a busy loop or a fixed short interval fails them.
    // The upper side is only "it keeps retrying", with a generous deadline.
    let deadline = started + Duration::from_secs(15);
    let mut reached = Vec::new(); // when attempt 1, 2, 3, 4 had been seen to fail
    while reached.len() < 4 {
        let failures = run.adapter.stats().open_failures as usize;
        while reached.len() < failures.min(4) {
            reached.push(started.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "retrying stopped: {failures} attempts in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let min_ms = [0, 125, 125 + 250, 125 + 250 + 500];
    for (n, (at, min)) in reached.iter().zip(min_ms).enumerate() {
        assert!(
            *at >= Duration::from_millis(min),
            "backoff, not a busy loop: attempt {} after {at:?}, expected no sooner than {min} ms \
             (all: {reached:?})",
            n + 1
        );
    }
    // Only the first failure of a streak is reported.
    assert!(run.events.try_recv().is_err());
    let (_, res) = run.stop().await;
    assert!(res.is_ok());
}

/// Noise on the line (a wrong baud rate, a bad cable): no observation, and one `error` event
/// that says so, with the configured rate, however long the noise lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_on_the_line_is_reported_once_as_a_baud_rate_or_cable_problem() {
    let scratch = Scratch::new("noise");
    let link = scratch.0.join("usb-Contec_CMS50");
    let mut pty = Pty::new();
    point(&link, &pty.path);
    let mut cfg = config("bed1-spo2", &link, ProtocolName::Cms50, None);
    cfg.baud = Some(19200);
    let mut run = start(cfg);
    let (detail, _) = run.expect_event(EventKind::Connected).await;
    assert!(detail.contains("19200 8N1"), "{detail}");
    let _start_live = pty.read_exact(9).await;
    let mut rng = fastrand::Rng::with_seed(0x00BA_DBAD);
    let mut noise = vec![0u8; 4 * 4096];
    rng.fill(&mut noise);
    for chunk in noise.chunks(512) {
        pty.write_all(chunk).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Everything the adapter says about it, until it has been quiet for a while.
    let mut details = Vec::new();
    while let Ok(Some(ev)) = timeout(Duration::from_millis(700), run.events.recv()).await {
        match ev {
            AdapterEvent::Event(e) => {
                assert_eq!(e.kind, EventKind::Error, "{e:?}");
                details.push(e.detail);
            }
            AdapterEvent::Observation(o) => panic!("a reading from noise: {o:?}"),
        }
    }
    let baud: Vec<&String> = details
        .iter()
        .filter(|d| d.contains("check the baud rate"))
        .collect();
    assert_eq!(baud.len(), 1, "{details:#?}");
    assert!(
        baud[0].starts_with("device bed1-spo2: ")
            && baud[0].contains(
                "bytes and no valid frame: check the baud rate (configured 19200) and the cable"
            ),
        "{}",
        baud[0]
    );
    // The decoder's own errors are rate-limited, not one per bad frame.
    assert!(details.len() < 40, "{} events", details.len());
    let (adapter, res) = run.stop().await;
    assert!(res.is_ok(), "{res:?}");
    let stats = adapter.stats();
    assert_eq!((stats.readings, stats.frames_ok), (0, 0));
    assert_eq!(stats.line_suspect_reports, 1);
    assert_eq!(stats.bytes_read, noise.len() as u64);
    assert!(stats.frame_errors > 100, "{stats:?}");
}

/// An SMP session on the connection (`DeviceCommand::OpenSmp`, the firmware relay): frames go
/// out as console lines, the device's console lines come back as frames, and the data protocol
/// is paused: the CMS50 bytes the device sends meanwhile give no observation and no keep-alive
/// is written. When the relay drops its end, the data protocol starts again as on a fresh
/// connection (start-live written again, a new decoder locks and readings flow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smp_session_pauses_the_data_protocol_until_the_relay_is_done() {
    use wardgate_adapters::smp::channel;
    use wardgate_adapters::smp::client::Transport;
    use wardgate_adapters::smp::console;
    use wardgate_adapters::DeviceCommand;

    let scratch = Scratch::new("smp");
    let link = scratch.0.join("usb-Contec_CMS50-if00-port0");
    let mut pty = Pty::new();
    point(&link, &pty.path);
    let mut run = start(config("bed7-spo2", &link, ProtocolName::Cms50, None));
    run.expect_event(EventKind::Connected).await;
    let start_live = hex::decode("7d81a1808080808080").unwrap();
    assert_eq!(pty.read_exact(9).await, start_live);

    let (mut t, smp_link) = channel::pair(4);
    run.adapter
        .command_sender()
        .send(DeviceCommand::OpenSmp(smp_link))
        .await
        .unwrap();
    // The partial console line is ended first, then the request as console lines.
    assert_eq!(pty.read_exact(1).await, b"\n");
    let request = vec![
        0x0a, 0x00, 0x00, 0x05, 0x00, 0x00, 0x01, 0x00, 0xa1, 0x61, 0x64, 0x62,
    ];
    t.send(&request).await.unwrap();
    let lines = console::encode(&request, console::MAX_LINE);
    assert_eq!(pty.read_exact(lines.len()).await, lines);

    // The device streams CMS50 frames, console text, then its answer.
    let reply = vec![
        0x0b, 0x00, 0x00, 0x05, 0x00, 0x00, 0x01, 0x00, 0xa1, 0x61, 0x72, 0x62,
    ];
    let mut bytes = real("cms50e_live_capture.bin");
    bytes.extend_from_slice(b"\n[00:00:01.000] <inf> app: hello\n");
    bytes.extend(console::encode(&reply, console::MAX_LINE));
    pty.write_all(&bytes).await;
    let got = timeout(Duration::from_secs(5), t.recv())
        .await
        .expect("no SMP frame")
        .unwrap();
    assert_eq!(got, reply);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(run.events.try_recv().is_err(), "an event during SMP");

    // The relay is done: the data protocol starts again.
    drop(t);
    assert_eq!(pty.read_exact(9).await, start_live);
    pty.write_all(&real("cms50e_live_capture.bin")).await;
    let obs = run.observations(2 * 3).await;
    assert_eq!(values(&obs, mdc::SPO2), vec![99.0; 2]);
    assert_eq!(pleth(&obs).concat().len(), 102);

    let (adapter, res) = run.stop().await;
    assert!(res.is_ok(), "{res:?}");
    let s = adapter.stats();
    assert_eq!(
        (
            s.smp_sessions,
            s.smp_frames_out,
            s.smp_frames_in,
            s.readings
        ),
        (1, 1, 1, 6),
        "{s:?}"
    );
}
