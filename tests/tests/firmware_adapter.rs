//! The firmware relay's path through a device's adapter: the real `SerialAdapter`
//! (wardgate-adapters, protocol `cms50`) holds the SMP device emulator's pty
//! (`tests/python/smp_device.py`, PyPI `smp`, independent of our codec), and
//! `smp::update::apply` runs over a `ChannelTransport` opened with `DeviceCommand::OpenSmp`:
//! upload, test, reset (the pty goes away and comes back; the adapter reconnects), a new
//! `OpenSmp` after the reset, confirm. The device ends on the new image, confirmed, with
//! `imgtool verify`'s digest as its hash. And: an `OpenSmp` while the port is gone is `Closed`
//! at once.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use wardgate_adapters::serial::{Parity, ProtocolName, SerialAdapter, SerialConfig};
use wardgate_adapters::smp::channel::{self, ChannelTransport};
use wardgate_adapters::smp::client::{
    ClientSettings, LinkRefusal, SmpClient, Transport, TransportError,
};
use wardgate_adapters::smp::update::{self, UpdateMode, UpdateStep};
use wardgate_adapters::{Adapter, AdapterContext, AdapterEvent, DeviceCommand};
use wardgate_e2e::process::run;
use wardgate_e2e::smp_device::{make_image, SmpDevice};
use wardgate_e2e::{python, temp_dir};

const TARGET_TMP: &str = env!("CARGO_TARGET_TMPDIR");

fn tmp() -> &'static Path {
    Path::new(TARGET_TMP)
}

/// `imgtool verify`'s image digest: the hash MCUboot (and so the device) reports for the slot.
fn imgtool_digest(dir: &Path, image: &Path) -> Vec<u8> {
    let py = python::smp_venv_python(tmp()).unwrap();
    let mut c = std::process::Command::new(py);
    c.args(["-m", "imgtool.main", "verify", "--key", "key.pem"])
        .arg(image)
        .current_dir(dir);
    let o = run(c, b"", Duration::from_secs(60)).unwrap();
    let hex = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Image digest: "))
        .unwrap_or_else(|| panic!("no digest from imgtool: {o:?}"))
        .trim()
        .to_string();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn config(path: &Path) -> SerialConfig {
    SerialConfig {
        name: "bed7-spo2".into(),
        path: path.into(),
        protocol: ProtocolName::Cms50,
        baud: None,
        data_bits: 8,
        parity: Parity::None,
        stop_bits: 1,
        serial_number: None,
        max_backoff_s: 1,
        map: None,
        location: None,
        numerics_every_s: None,
    }
}

/// A running adapter; its events are drained into a log by a task.
struct Running {
    adapter: Arc<SerialAdapter>,
    events: Arc<std::sync::Mutex<Vec<AdapterEvent>>>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _clock: watch::Sender<bool>,
}

fn start(cfg: SerialConfig) -> Running {
    let adapter = Arc::new(SerialAdapter::new(cfg));
    let (out, mut rx) = mpsc::channel(4096);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (clock, clock_rx) = watch::channel(true);
    let mut ctx = AdapterContext {
        id: adapter.name().to_string(),
        out,
        shutdown: shutdown_rx,
        clock_synced: clock_rx,
    };
    let a = adapter.clone();
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = events.clone();
    // The drain ends when the adapter's task drops its context (the last sender).
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            log.lock().unwrap().push(e);
        }
    });
    let task = tokio::spawn(async move { a.run(&mut ctx).await.expect("adapter failed") });
    Running {
        adapter,
        events,
        shutdown,
        task,
        _clock: clock,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("adapter did not stop")
            .unwrap();
    }

    fn observations(&self) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, AdapterEvent::Observation(_)))
            .count()
    }

    /// A new SMP session on the device's connection (what the relay does).
    async fn open_smp(&self) -> Result<ChannelTransport, TransportError> {
        open_smp(&self.adapter.command_sender()).await
    }
}

async fn open_smp(cmd: &mpsc::Sender<DeviceCommand>) -> Result<ChannelTransport, TransportError> {
    let (t, link) = channel::pair(8);
    cmd.send(DeviceCommand::OpenSmp(link))
        .await
        .map_err(|_| TransportError::Closed)?;
    Ok(t)
}

fn settings() -> ClientSettings {
    ClientSettings {
        timeout: Duration::from_millis(1500),
        first_chunk_timeout: Duration::from_secs(10),
        ..ClientSettings::default()
    }
}

/// The whole update through the adapter: OpenSmp, upload, test, reset, the adapter reconnects,
/// a new OpenSmp, confirm; the adapter counted the SMP frames and sent no observation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_through_the_serial_adapter() {
    let dir = temp_dir("fw-adapter").unwrap();
    let image_path = make_image(tmp(), dir.path(), "1.2.3", 20_000).unwrap();
    let image = std::fs::read(&image_path).unwrap();
    let hash = imgtool_digest(dir.path(), &image_path);
    let dev = SmpDevice::start(tmp(), dir.path(), "dev", &["--swap-delay", "0.5"]).unwrap();
    let running = start(config(&dev.link));

    let t0 = Instant::now();
    let mut client = SmpClient::new(running.open_smp().await.unwrap(), settings());
    // Before: the factory image.
    let slots = client.image_list().await.unwrap();
    assert_eq!(slots[0].version, "1.0.0", "{slots:?}");

    let cmd = running.adapter.command_sender();
    let reconnect = move || {
        let cmd = cmd.clone();
        async move { open_smp(&cmd).await }
    };
    let mut steps = Vec::new();
    let mut progress = |s: UpdateStep| {
        if !matches!(s, UpdateStep::Uploading { .. }) {
            steps.push(s);
        }
    };
    let report = update::apply(
        &mut client,
        &image,
        &hash,
        UpdateMode::TestConfirm,
        Duration::from_secs(10),
        reconnect,
        &mut progress,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\ndevice log:\n{}", dev.events()));
    assert_eq!(
        steps,
        [
            UpdateStep::Testing,
            UpdateStep::Rebooting,
            UpdateStep::Confirming
        ]
    );
    assert_eq!(report.version, "1.2.3");
    assert!(report.confirmed);
    assert_eq!(report.upload.bytes_sent, image.len() as u64);
    assert_eq!(dev.count("boot swap to 1.2.3 confirmed=False"), 1);
    assert_eq!(dev.count("confirm 1.2.3"), 1);

    // The device's own list, through a fresh session: slot 0 is the new image, confirmed.
    drop(client);
    let mut c = SmpClient::new(running.open_smp().await.unwrap(), settings());
    let slots = c.image_list().await.unwrap();
    let s0 = slots.iter().find(|s| s.slot == 0).unwrap();
    assert_eq!(
        (s0.version.as_str(), s0.hash.as_deref(), s0.confirmed),
        ("1.2.3", Some(&hash[..]), true)
    );
    // A second run is idempotent: nothing uploaded.
    let again = update::apply(
        &mut c,
        &image,
        &hash,
        UpdateMode::TestConfirm,
        Duration::from_secs(10),
        || async { Err::<ChannelTransport, _>(TransportError::Closed) },
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!((again.upload.chunks, again.confirmed), (0, true));
    drop(c);

    let stats = running.adapter.stats();
    assert!(stats.smp_sessions >= 3, "{stats:?}");
    assert!(
        stats.smp_frames_in >= 10 && stats.smp_frames_out >= stats.smp_frames_in,
        "{stats:?}"
    );
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert_eq!(stats.readings, 0);
    assert_eq!(running.observations(), 0);
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    running.stop().await;
}

/// An OpenSmp while the adapter has no port (the device is gone): the link is refused at once,
/// the relay sees `device_offline` promptly, on send and on recv.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_smp_without_a_port_is_refused_at_once() {
    let dir = temp_dir("fw-adapter-gone").unwrap();
    let running = start(config(&dir.path().join("no-such.tty")));
    let t0 = Instant::now();
    let mut t = running.open_smp().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(2), t.recv())
        .await
        .expect("recv did not end");
    assert!(
        matches!(r, Err(TransportError::Refused(LinkRefusal::Offline))),
        "{r:?}"
    );
    assert!(matches!(
        t.send(b"x").await,
        Err(TransportError::Refused(LinkRefusal::Offline))
    ));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // The client's view: a transport error, not a timeout.
    let mut c = SmpClient::new(running.open_smp().await.unwrap(), settings());
    let e = c.echo("hi").await.unwrap_err();
    assert_eq!(e.reason(), "device_offline", "{e}");
    assert!(running.adapter.stats().open_failures >= 1);
    running.stop().await;
}
