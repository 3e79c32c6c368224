//! The Rust SMP device model of the simulated world (`wardgate_sim::smp_device`), checked by
//! two independent clients that share no code with wardgate: PyPI `smpclient` 7.3.0 (serial,
//! and BLE through bleak → BlueZ D-Bus, here the simulated BlueZ on a private bus) and PyPI
//! `mcumgr-toolkit` 0.20.0 (the Rust crate's pyo3 binding: its own framing, chunking and
//! retransmission). The driver is `tests/python/smp_peers.py`; the image is signed by PyPI
//! `imgtool`; the expected slot hash is smpclient's reading of the image's SHA256 TLV.
//!
//! What a technician would check, for each client: echo and MCUmgr parameters answered, the
//! slots listed (1.0.0 running and confirmed), a full upload (bytes, one erase), the uploaded
//! slot listed with the image's version and hash, test → reset → the device back within the
//! swap time running the new version unconfirmed → confirm → confirmed; an interrupted upload
//! resumed at the device's offset without a second erase; errors by name.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wardgate_e2e::ble::BleWorld;
use wardgate_e2e::process::run;
use wardgate_e2e::smp_device::make_image;
use wardgate_e2e::{python, temp_dir, workspace_root};
use wardgate_sim::blesim::{self, DeviceInformation};
use wardgate_sim::smp_device::serial::{SerialOptions, SerialSmpDevice};
use wardgate_sim::smp_device::{lock, SharedModel, SmpDeviceModel, SmpDeviceOptions, SmpEvent};

const TARGET_TMP: &str = env!("CARGO_TARGET_TMPDIR");

fn tmp() -> &'static Path {
    Path::new(TARGET_TMP)
}

/// Runs the driver and returns its JSON lines by step name (the last line of each step).
fn peers(args: &[&str], env: &[(&str, &str)]) -> Vec<Value> {
    let py = python::peers_venv_python(tmp()).unwrap();
    let mut c = std::process::Command::new(py);
    c.arg(workspace_root().join("tests/python/smp_peers.py"))
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = run(c, b"", Duration::from_secs(240)).unwrap();
    let lines: Vec<Value> = o
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        !lines.is_empty(),
        "the driver printed nothing ({}):\n{}\n{}",
        o.status,
        o.stdout,
        o.stderr
    );
    eprintln!("{}", o.stdout);
    if !o.status.success() || lines.iter().any(|l| l.get("step") == Some(&"fatal".into())) {
        panic!(
            "the driver failed ({}):\n{}\n{}",
            o.status, o.stdout, o.stderr
        );
    }
    lines
}

fn step<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .rev()
        .find(|l| l["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {lines:#?}"))
}

fn no_error(v: &Value) -> &Value {
    assert!(
        v.get("error").is_none_or(Value::is_null),
        "step {} failed: {}",
        v["step"],
        v["error"]
    );
    v
}

fn slot(v: &Value, n: u64) -> &Value {
    v["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slot"] == n)
        .unwrap_or_else(|| panic!("no slot {n} in {v}"))
}

struct Image {
    path: PathBuf,
    bytes: u64,
}

fn image(dir: &Path, version: &str, body: usize) -> Image {
    let path = make_image(tmp(), dir, version, body).unwrap();
    let bytes = std::fs::metadata(&path).unwrap().len();
    Image { path, bytes }
}

fn options() -> SmpDeviceOptions {
    SmpDeviceOptions {
        erase_delay: Duration::from_millis(1500),
        swap_time: Duration::from_secs(1),
        ..Default::default()
    }
}

/// The checks of a whole update seen by a client, against the model's own state.
fn check_full_update(lines: &[Value], model: &SharedModel, img: &Image, version: &str) {
    assert_eq!(no_error(step(lines, "echo"))["r"], "wardgate model");
    let p = no_error(step(lines, "params"));
    assert_eq!(
        (p["buf_size"].as_u64(), p["buf_count"].as_u64()),
        (Some(512), Some(4))
    );
    let l = step(lines, "list");
    assert_eq!(slot(l, 0)["version"], "1.0.0");
    assert_eq!(
        (
            slot(l, 0)["active"].as_bool(),
            slot(l, 0)["confirmed"].as_bool()
        ),
        (Some(true), Some(true))
    );
    let hash = step(lines, "image")["hash"].as_str().unwrap().to_string();
    let up = no_error(step(lines, "upload"));
    assert_eq!(
        up["last"].as_u64(),
        Some(img.bytes),
        "the upload ends at the image's length"
    );
    let l = step(lines, "list-after-upload");
    assert_eq!(slot(l, 1)["version"], version);
    assert_eq!(
        slot(l, 1)["hash"],
        hash.as_str(),
        "the slot hash is the image's SHA256 TLV"
    );
    let t = no_error(step(lines, "test"));
    assert_eq!(slot(t, 1)["pending"].as_bool(), Some(true));
    no_error(step(lines, "back"));
    let l = step(lines, "list-after-reset");
    assert_eq!(
        slot(l, 0)["version"],
        version,
        "the device runs the new image after the swap"
    );
    assert_eq!(slot(l, 0)["hash"], hash.as_str());
    assert_eq!(
        slot(l, 0)["confirmed"].as_bool(),
        Some(false),
        "on test, not confirmed"
    );
    assert_eq!(slot(l, 1)["version"], "1.0.0");
    let c = no_error(step(lines, "confirm"));
    assert_eq!(slot(c, 0)["confirmed"].as_bool(), Some(true));
    let m = lock(model);
    assert_eq!(m.running_version(), version);
    assert!(m.running_confirmed());
    let n = m.counters();
    assert_eq!(n.erases, 1, "one slot erase for the whole upload");
    assert_eq!(n.bytes_written, img.bytes);
    assert_eq!((n.uploads_complete, n.resets, n.swaps), (1, 1, 1));
    assert!(m.events().contains(&SmpEvent::Confirmed {
        version: version.into()
    }));
}

#[test]
fn smpclient_over_a_pty() {
    let dir = temp_dir("smp-peers-sc").unwrap();
    let img = image(dir.path(), "1.4.2", 6000);
    let model = SmpDeviceModel::new(options()).shared();
    let link = dir.path().join("dev.tty");
    // A console log line before every response (F8): smpclient must skip it too.
    let _dev = SerialSmpDevice::start(
        &link,
        model.clone(),
        SerialOptions {
            noise: true,
            ..Default::default()
        },
    )
    .unwrap();
    let t = Instant::now();
    let lines = peers(
        &[
            "smpclient-serial",
            "--port",
            link.to_str().unwrap(),
            "--image",
            img.path.to_str().unwrap(),
        ],
        &[],
    );
    check_full_update(&lines, &model, &img, "1.4.2");
    eprintln!("smpclient over a pty: {:?}", t.elapsed());
}

#[test]
fn smpclient_resumes_at_the_device_offset() {
    let dir = temp_dir("smp-peers-resume").unwrap();
    let img = image(dir.path(), "1.5.0", 5000);
    let model = SmpDeviceModel::new(SmpDeviceOptions {
        drop_reply_at: Some(2000),
        ..options()
    })
    .shared();
    let link = dir.path().join("dev.tty");
    let _dev = SerialSmpDevice::start(&link, model.clone(), SerialOptions::default()).unwrap();
    let lines = peers(
        &[
            "smpclient-resume",
            "--port",
            link.to_str().unwrap(),
            "--image",
            img.path.to_str().unwrap(),
            "--timeout",
            "1",
        ],
        &[],
    );
    // smpclient does not retry: the first try stops at the lost reply.
    let try1 = step(&lines, "upload-try1");
    assert!(
        try1["error"]
            .as_str()
            .unwrap_or_default()
            .contains("Timeout"),
        "{try1}"
    );
    let stopped = try1["last"].as_u64().unwrap();
    // The device wrote the chunk whose reply was lost: the second try resumes past it.
    let try2 = no_error(step(&lines, "upload-try2"));
    let resumed_at = try2["first"].as_u64().unwrap();
    let m = lock(&model);
    let dropped = m
        .events()
        .iter()
        .find_map(|e| match e {
            SmpEvent::ReplyDropped { off } => Some(*off),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        stopped, dropped,
        "try 1 stopped at the chunk whose reply was dropped"
    );
    assert!(m
        .events()
        .contains(&SmpEvent::SessionResumed { off: resumed_at }));
    assert!(
        resumed_at > dropped,
        "resumed at {resumed_at}, past the dropped reply at {dropped}"
    );
    assert_eq!(try2["last"].as_u64(), Some(img.bytes));
    let n = m.counters();
    assert_eq!(
        (n.erases, n.sessions_new, n.sessions_resumed),
        (1, 1, 1),
        "no second erase"
    );
    assert_eq!(n.bytes_written, img.bytes, "every byte written once");
    assert_eq!(
        slot(step(&lines, "list-after-upload"), 1)["version"],
        "1.5.0"
    );
}

#[test]
fn mcumgr_toolkit_over_a_pty() {
    let dir = temp_dir("smp-peers-tk").unwrap();
    let img = image(dir.path(), "2.0.1", 6000);
    // A lost reply mid-upload: mcumgr-toolkit re-sends the same request; the device, which
    // wrote that chunk, answers its new offset and the upload goes on.
    let model = SmpDeviceModel::new(SmpDeviceOptions {
        drop_reply_at: Some(3000),
        ..options()
    })
    .shared();
    let link = dir.path().join("dev.tty");
    let _dev = SerialSmpDevice::start(&link, model.clone(), SerialOptions::default()).unwrap();
    let lines = peers(
        &[
            "toolkit-serial",
            "--port",
            link.to_str().unwrap(),
            "--image",
            img.path.to_str().unwrap(),
        ],
        &[],
    );
    check_full_update(&lines, &model, &img, "2.0.1");
    let m = lock(&model);
    assert_eq!(m.counters().replies_dropped, 1);
    assert!(
        m.counters().offset_mismatches >= 1,
        "the re-sent chunk was answered with the device's offset"
    );
    // An error by name: a test of a hash the device does not have.
    let bad = step(&lines, "bad-test");
    let e = bad["error"].as_str().unwrap_or_default().to_string();
    assert!(e.contains("HASH_NOT_FOUND") || e.contains("8"), "{e}");
}

/// Stops its advertising thread when dropped.
struct Advertiser {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Advertiser {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A simulated BlueZ with one bonded vital-signs device `name` (serial `serial`) whose SMP
/// service is backed by a fresh model, advertising while anyone scans (bleak finds a device by
/// address through discovery).
fn advertised_smp_device(
    address: &'static str,
    name: &'static str,
    serial: &str,
) -> (BleWorld, SharedModel, Advertiser) {
    let world = BleWorld::start().unwrap();
    let info = DeviceInformation::new("Acme", name, serial, "1.0.0");
    world
        .sim
        .add_device(blesim::smp_vitals_device(address, &info));
    let model = SmpDeviceModel::new(options()).shared();
    world.sim.attach_smp(address, model.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (sim, stop) = (world.sim.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rssi = -55;
            while !stop.load(Ordering::Relaxed) {
                if sim.is_discovering() {
                    rssi = if rssi == -55 { -56 } else { -55 };
                    sim.advertise(
                        address,
                        &blesim::Advert {
                            rssi,
                            name: Some(name.into()),
                            ..Default::default()
                        },
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    (
        world,
        model,
        Advertiser {
            stop,
            thread: Some(thread),
        },
    )
}

#[test]
fn smpclient_over_the_simulated_bluez() {
    let dir = temp_dir("smp-peers-ble").unwrap();
    let img = image(dir.path(), "3.0.0", 4000);
    const ADDR: &str = "C0:FF:EE:5E:00:01";
    let (world, model, adv) = advertised_smp_device(ADDR, "Vitals-1", "SN7");
    let lines = peers(
        &[
            "smpclient-ble",
            "--address",
            ADDR,
            "--image",
            img.path.to_str().unwrap(),
            "--timeout",
            "5",
        ],
        &world.env(),
    );
    drop(adv);
    let mtu = step(&lines, "mtu");
    assert_eq!(
        mtu["max_write"].as_u64(),
        Some(244),
        "bleak read MTU 247 through AcquireWrite"
    );
    check_full_update(&lines, &model, &img, "3.0.0");
    // Every write the device got fit in MTU − 3.
    let writes = world.sim.writes(ADDR, blesim::SMP_CHARACTERISTIC_UUID);
    assert!(!writes.is_empty() && writes.iter().all(|w| w.len() <= 244));
}

#[test]
fn mcumgr_toolkit_over_the_simulated_bluez() {
    let dir = temp_dir("smp-peers-tk-ble").unwrap();
    let img = image(dir.path(), "3.1.0", 4000);
    const ADDR: &str = "C0:FF:EE:5E:00:02";
    let (world, model, adv) = advertised_smp_device(ADDR, "Vitals-2", "SN8");
    let lines = peers(
        &[
            "toolkit-ble",
            "--address",
            ADDR,
            "--image",
            img.path.to_str().unwrap(),
            "--timeout",
            "5",
        ],
        &world.env(),
    );
    drop(adv);
    check_full_update(&lines, &model, &img, "3.1.0");
}

/// The gateway's own SMP client (`wardgate firmware upload --port`, the relay's `update::apply`)
/// against the Rust model, as the demo's serial device will see it: the whole update with
/// console noise, then a device whose slot 1 holds a pending image it cannot swap: a v2 device
/// refuses with `NO_FREE_SLOT` (Zephyr's answer), which the gateway reports as `bad_state`.
#[test]
fn the_gateway_client_updates_the_model() {
    let dir = temp_dir("smp-peers-gw").unwrap();
    let img = image(dir.path(), "4.0.0", 20_000);
    let model = SmpDeviceModel::new(options()).shared();
    let link = dir.path().join("dev.tty");
    let _dev = SerialSmpDevice::start(
        &link,
        model.clone(),
        SerialOptions {
            noise: true,
            ..Default::default()
        },
    )
    .unwrap();
    let bench = |link: &Path| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_wardgate-e2e-bin"));
        c.args([
            "firmware",
            "upload",
            "--port",
            link.to_str().unwrap(),
            img.path.to_str().unwrap(),
        ]);
        run(c, b"", Duration::from_secs(120)).unwrap()
    };
    let out = bench(&link);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    {
        let m = lock(&model);
        assert_eq!(m.running_version(), "4.0.0");
        assert!(m.running_confirmed());
        let n = m.counters();
        assert_eq!((n.erases, n.bytes_written, n.swaps), (1, img.bytes, 1));
    }
    let stuck = SmpDeviceModel::new(SmpDeviceOptions {
        stuck_pending: true,
        ..options()
    })
    .shared();
    let link2 = dir.path().join("stuck.tty");
    let _dev2 = SerialSmpDevice::start(&link2, stuck.clone(), SerialOptions::default()).unwrap();
    let out = bench(&link2);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("reason=bad_state"), "{}", out.stderr);
    assert!(lock(&stuck)
        .events()
        .iter()
        .any(|e| matches!(e, SmpEvent::Refused { error, .. } if error == "NO_FREE_SLOT")));
    assert_eq!(lock(&stuck).counters().erases, 0);
}
