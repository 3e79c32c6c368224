//! The SMP GATT service of the simulated BlueZ, driven with plain D-Bus calls as a central would
//! make them (BlueZ's `GattCharacteristic1` API): fragmented command writes of at most MTU − 3
//! bytes, notifications reassembled by the SMP header, the erase delay off the D-Bus loop, a
//! reset that drops the link for the swap time and brings the device back with a new GATT
//! table, bonded links only, `AcquireWrite`. Frames are built and read with the adapters'
//! codec; the model's own state is read back to check what the device did. Skips only when
//! `dbus-daemon` is absent (fails under `CI=true`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dbus::arg::{PropMap, RefArg, Variant};
use dbus::channel::Channel;
use dbus::message::MessageType;
use dbus::Message;
use wardgate_adapters::smp::ble::{split, Reassembler};
use wardgate_adapters::smp::cbor;
use wardgate_adapters::smp::header::{Frame, Op, Version};
use wardgate_adapters::smp::image::{self, UploadRequest, UploadResponse, UploadStart};
use wardgate_adapters::smp::os;
use wardgate_sim::blesim::{
    self, device_path, smp_vitals_device, Bus, DeviceInformation, SimBluez, SMP_CHARACTERISTIC_UUID,
};
use wardgate_sim::smp_device::{self, SmpDeviceModel, SmpDeviceOptions};

const DEV: &str = "C0:FF:EE:00:00:21";
const STRANGER: &str = "C0:FF:EE:00:00:22";
const CALL: Duration = Duration::from_secs(5);

fn start_bus() -> Option<Bus> {
    match Bus::start() {
        Ok(b) => Some(b),
        Err(blesim::Error::DaemonMissing(p)) => {
            let ci = std::env::var("CI").unwrap_or_default().to_ascii_lowercase();
            if !matches!(ci.trim(), "" | "0" | "false" | "no") {
                panic!("{} is absent: CI runs every test", p.display());
            }
            eprintln!("\nSKIPPED: blesim_smp: {} is absent", p.display());
            None
        }
        Err(e) => panic!("starting dbus-daemon: {e}"),
    }
}

/// A central on the private bus: method calls and the SMP characteristic's notifications.
struct Central {
    ch: Channel,
    signals: Vec<Message>,
}

impl Central {
    fn open(bus: &Bus) -> Central {
        let mut ch = Channel::open_private(bus.address()).unwrap();
        ch.register().unwrap();
        let mut c = Central {
            ch,
            signals: Vec::new(),
        };
        c.call(
            Message::new_method_call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "AddMatch",
            )
            .unwrap()
            .append1("type='signal',sender='org.bluez'"),
        )
        .unwrap();
        c
    }

    fn call(&mut self, m: Message) -> Result<Message, dbus::Error> {
        let serial = self
            .ch
            .send(m)
            .map_err(|_| dbus::Error::new_failed("send"))?;
        let deadline = Instant::now() + CALL;
        loop {
            self.ch
                .read_write(Some(Duration::from_millis(20)))
                .map_err(|_| dbus::Error::new_failed("bus gone"))?;
            while let Some(msg) = self.ch.pop_message() {
                match msg.msg_type() {
                    MessageType::Signal => self.signals.push(msg),
                    MessageType::MethodReturn if msg.get_reply_serial() == Some(serial) => {
                        return Ok(msg)
                    }
                    MessageType::Error if msg.get_reply_serial() == Some(serial) => {
                        let mut msg = msg;
                        return Err(msg.as_result().unwrap_err());
                    }
                    _ => {}
                }
            }
            assert!(Instant::now() < deadline, "no answer within {CALL:?}");
        }
    }

    fn method(&mut self, path: &str, iface: &str, member: &str) -> Message {
        Message::new_method_call("org.bluez", path.to_string(), iface, member).unwrap()
    }

    fn connect(&mut self, address: &str) -> Result<(), dbus::Error> {
        let m = self.method(&device_path(address), "org.bluez.Device1", "Connect");
        self.call(m).map(|_| ())
    }

    fn smp_char(&mut self, address: &str) -> String {
        let m = self.method(
            "/",
            "org.freedesktop.DBus.ObjectManager",
            "GetManagedObjects",
        );
        let reply = self.call(m).unwrap();
        let tree: HashMap<dbus::Path<'static>, HashMap<String, PropMap>> = reply.read1().unwrap();
        tree.into_iter()
            .find(|(p, ifs)| {
                p.starts_with(&device_path(address))
                    && ifs
                        .get("org.bluez.GattCharacteristic1")
                        .and_then(|c| c.get("UUID"))
                        .and_then(|u| u.0.as_str().map(|s| s == SMP_CHARACTERISTIC_UUID))
                        .unwrap_or(false)
            })
            .map(|(p, _)| p.to_string())
            .expect("the SMP characteristic is exported")
    }

    fn char_prop(&mut self, path: &str, name: &str) -> Variant<Box<dyn RefArg>> {
        let m = self
            .method(path, "org.freedesktop.DBus.Properties", "Get")
            .append2("org.bluez.GattCharacteristic1", name);
        self.call(m).unwrap().read1().unwrap()
    }

    fn start_notify(&mut self, path: &str) -> Result<(), dbus::Error> {
        let m = self.method(path, "org.bluez.GattCharacteristic1", "StartNotify");
        self.call(m).map(|_| ())
    }

    fn write_command(&mut self, path: &str, bytes: &[u8]) -> Result<(), dbus::Error> {
        let mut opts = PropMap::new();
        opts.insert("type".into(), Variant(Box::new("command".to_string())));
        let m = self
            .method(path, "org.bluez.GattCharacteristic1", "WriteValue")
            .append2(bytes.to_vec(), opts);
        self.call(m).map(|_| ())
    }

    /// The `Value` notifications of `path` received so far (oldest first), drained.
    fn notifications(&mut self, path: &str) -> Vec<Vec<u8>> {
        let _ = self.ch.read_write(Some(Duration::from_millis(5)));
        while let Some(m) = self.ch.pop_message() {
            if m.msg_type() == MessageType::Signal {
                self.signals.push(m);
            }
        }
        let mut out = Vec::new();
        self.signals.retain(|m| {
            let mine = m.path().is_some_and(|p| &*p == path)
                && m.member().is_some_and(|n| &*n == "PropertiesChanged");
            if mine {
                if let Ok((_, props)) = m.read2::<&str, PropMap>() {
                    if let Some(v) = props.get("Value") {
                        if let Some(bytes) = dbus::arg::cast::<Vec<u8>>(&*v.0) {
                            out.push(bytes.clone());
                        }
                    }
                }
            }
            !mine
        });
        out
    }

    /// Sends one request in pieces of MTU − 3 and waits for the whole response.
    fn request(&mut self, path: &str, mtu: u16, frame: &[u8], wait: Duration) -> (Frame, usize) {
        for piece in split(frame, mtu) {
            self.write_command(path, piece).unwrap();
        }
        let mut r = Reassembler::new();
        let mut pieces = 0;
        let deadline = Instant::now() + wait;
        loop {
            for n in self.notifications(path) {
                assert!(
                    n.len() <= usize::from(mtu) - 3,
                    "a notification of {} bytes at MTU {mtu}",
                    n.len()
                );
                pieces += 1;
                if let Some(f) = r.push(&n).unwrap() {
                    return (Frame::decode(&f).unwrap(), pieces);
                }
            }
            assert!(Instant::now() < deadline, "no SMP response within {wait:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn frame(seq: u8, op: Op, group: u16, cmd: u8, body: &ciborium::Value) -> Vec<u8> {
    Frame::new(Version::V2, op, group, cmd, seq, body)
        .unwrap()
        .encode()
}

/// A small MCUboot image (32-byte header, body, SHA256 TLV) of `version`.
fn mcuboot_image(version: (u8, u8, u16), body: usize) -> (Vec<u8>, Vec<u8>) {
    let mut d = Vec::new();
    d.extend(0x96F3_B83Du32.to_le_bytes());
    d.extend(0u32.to_le_bytes());
    d.extend(32u16.to_le_bytes());
    d.extend(0u16.to_le_bytes());
    d.extend((body as u32).to_le_bytes());
    d.extend(0u32.to_le_bytes());
    d.extend([version.0, version.1]);
    d.extend(version.2.to_le_bytes());
    d.extend([0u8; 8]);
    d.extend((0..body).map(|i| (i * 31 % 251) as u8));
    let hash = ring::digest::digest(&ring::digest::SHA256, &d)
        .as_ref()
        .to_vec();
    d.extend(0x6907u16.to_le_bytes());
    d.extend(40u16.to_le_bytes());
    d.extend([0x10, 0, 32, 0]);
    d.extend(&hash);
    (d, hash)
}

#[test]
fn smp_gatt_service_serves_the_model() {
    let Some(bus) = start_bus() else { return };
    let sim = SimBluez::start(bus.address()).unwrap();
    let info = DeviceInformation::new("Acme", "Vitals-1", "SN1", "1.0.0");
    sim.add_device(smp_vitals_device(DEV, &info));
    let model = SmpDeviceModel::new(SmpDeviceOptions {
        erase_delay: Duration::from_millis(1500),
        swap_time: Duration::from_millis(800),
        ..Default::default()
    })
    .shared();
    sim.attach_smp(DEV, model.clone());
    sim.set_mtu(DEV, 23);
    let mut c = Central::open(&bus);
    c.connect(DEV).unwrap();
    let path = c.smp_char(DEV);
    let mtu = 23u16;
    assert_eq!(c.char_prop(&path, "MTU").0.as_u64(), Some(23));
    c.start_notify(&path).unwrap();

    // Echo over 20-byte writes, answered in 20-byte notifications.
    let text = "a request longer than one ATT payload";
    let (rsp, pieces) = c.request(
        &path,
        mtu,
        &frame(1, Op::Write, 0, 0, &os::echo_request(text)),
        CALL,
    );
    assert_eq!(os::echo_response(&rsp.body().unwrap()).unwrap(), text);
    assert!(pieces >= 3, "{pieces} notifications");
    // A write longer than MTU − 3 fails as BlueZ's does.
    let e = c.write_command(&path, &[0u8; 21]).unwrap_err();
    assert_eq!(e.name(), Some("org.bluez.Error.Failed"));
    assert_eq!(e.message(), Some("Failed to initiate write"));

    // Upload: the first chunk's erase (1.5 s) does not block the D-Bus loop.
    let (img, hash) = mcuboot_image((2, 1, 0), 700);
    let sha = ring::digest::digest(&ring::digest::SHA256, &img)
        .as_ref()
        .to_vec();
    let mut off = 0usize;
    let mut seq = 10u8;
    while off < img.len() {
        let n = (img.len() - off).min(200);
        let req = UploadRequest {
            off: off as u64,
            data: img[off..off + n].to_vec(),
            start: (off == 0).then(|| UploadStart {
                len: img.len() as u64,
                sha: Some(sha.clone()),
                image: Some(0),
                upgrade: None,
            }),
        };
        let f = frame(seq, Op::Write, 1, 1, &req.to_body());
        if off == 0 {
            for piece in split(&f, mtu) {
                c.write_command(&path, piece).unwrap();
            }
            let t = Instant::now();
            let _ = c.char_prop(&path, "UUID");
            assert!(
                t.elapsed() < Duration::from_millis(700),
                "the erase blocked the D-Bus loop: {:?}",
                t.elapsed()
            );
            let mut r = Reassembler::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            let rsp = loop {
                if let Some(f) = c
                    .notifications(&path)
                    .iter()
                    .find_map(|n| r.push(n).unwrap())
                {
                    break Frame::decode(&f).unwrap();
                }
                assert!(Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(10));
            };
            off = UploadResponse::from_body(&rsp.body().unwrap())
                .unwrap()
                .off
                .unwrap() as usize;
        } else {
            let (rsp, _) = c.request(&path, mtu, &f, CALL);
            off = UploadResponse::from_body(&rsp.body().unwrap())
                .unwrap()
                .off
                .unwrap() as usize;
        }
        seq += 1;
    }
    let (rsp, _) = c.request(
        &path,
        mtu,
        &frame(seq, Op::Read, 1, 0, &cbor::map([])),
        CALL,
    );
    let slots = image::parse_state(&rsp.body().unwrap()).unwrap();
    assert_eq!(slots[1].version, "2.1.0");
    assert_eq!(slots[1].hash.as_deref(), Some(&hash[..]));
    let (rsp, _) = c.request(
        &path,
        mtu,
        &frame(
            seq + 1,
            Op::Write,
            1,
            0,
            &image::state_write(Some(&hash), false),
        ),
        CALL,
    );
    assert!(image::parse_state(&rsp.body().unwrap()).unwrap()[1].pending);

    // Reset: answered, then the link drops and the device is away for the swap time.
    let (rsp, _) = c.request(
        &path,
        mtu,
        &frame(seq + 2, Op::Write, 0, 5, &os::reset_request(false)),
        CALL,
    );
    assert_eq!(rsp.header.op, Op::WriteRsp);
    let gone = Instant::now();
    while sim.is_connected(DEV) {
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "the link did not drop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let e = c.connect(DEV).unwrap_err();
    assert_eq!(
        e.name(),
        Some("org.bluez.Error.Failed"),
        "connect during the swap"
    );
    let back = Instant::now();
    loop {
        if c.connect(DEV).is_ok() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "the device did not come back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        gone.elapsed() >= Duration::from_millis(800),
        "back after {:?}",
        gone.elapsed()
    );
    {
        let m = smp_device::lock(&model);
        assert_eq!(m.running_version(), "2.1.0");
        assert!(!m.running_confirmed());
        assert_eq!(m.counters().erases, 1);
    }
    // The GATT table was replaced (B18): the firmware revision reads the new version.
    let m = c.method(
        "/",
        "org.freedesktop.DBus.ObjectManager",
        "GetManagedObjects",
    );
    let tree: HashMap<dbus::Path<'static>, HashMap<String, PropMap>> =
        c.call(m).unwrap().read1().unwrap();
    let fw_path = tree
        .iter()
        .find(|(p, ifs)| {
            p.starts_with(&device_path(DEV))
                && ifs
                    .get("org.bluez.GattCharacteristic1")
                    .and_then(|c| c.get("UUID"))
                    .and_then(|u| u.0.as_str().map(|s| s.starts_with("00002a26")))
                    .unwrap_or(false)
        })
        .map(|(p, _)| p.to_string())
        .unwrap();
    let m = c
        .method(&fw_path, "org.bluez.GattCharacteristic1", "ReadValue")
        .append1(PropMap::new());
    let fw: Vec<u8> = c.call(m).unwrap().read1().unwrap();
    assert_eq!(fw, b"2.1.0");
    // Notifications ended with the link: subscribe again, then confirm.
    let path = c.smp_char(DEV);
    c.start_notify(&path).unwrap();
    let _ = c.notifications(&path);
    let (rsp, _) = c.request(
        &path,
        mtu,
        &frame(seq + 3, Op::Write, 1, 0, &image::state_write(None, true)),
        CALL,
    );
    let slots = image::parse_state(&rsp.body().unwrap()).unwrap();
    assert!(slots[0].active && slots[0].confirmed && slots[0].version == "2.1.0");

    // AcquireWrite: the MTU and a socket whose packets are command writes.
    let m = c
        .method(&path, "org.bluez.GattCharacteristic1", "AcquireWrite")
        .append1(PropMap::new());
    let (fd, acquired_mtu): (std::os::fd::OwnedFd, u16) = c.call(m).unwrap().read2().unwrap();
    assert_eq!(acquired_mtu, 23);
    let sock = std::os::unix::net::UnixDatagram::from(fd);
    for piece in split(&frame(99, Op::Read, 0, 0, &os::echo_request("via fd")), mtu) {
        sock.send(piece).unwrap();
    }
    let mut r = Reassembler::new();
    let deadline = Instant::now() + CALL;
    let rsp = loop {
        if let Some(f) = c
            .notifications(&path)
            .iter()
            .find_map(|n| r.push(n).unwrap())
        {
            break Frame::decode(&f).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no answer to the write through AcquireWrite's socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!((rsp.header.op, rsp.header.seq), (Op::ReadRsp, 99));
    assert_eq!(os::echo_response(&rsp.body().unwrap()).unwrap(), "via fd");
}

#[test]
fn smp_needs_a_bonded_link() {
    let Some(bus) = start_bus() else { return };
    let sim = SimBluez::start(bus.address()).unwrap();
    let info = DeviceInformation::new("Acme", "Vitals-1", "SN2", "1.0.0");
    let mut d = smp_vitals_device(STRANGER, &info);
    d.paired = false;
    d.bonded = false;
    sim.add_device(d);
    let model = SmpDeviceModel::new(SmpDeviceOptions::default()).shared();
    sim.attach_smp(STRANGER, model.clone());
    let mut c = Central::open(&bus);
    c.connect(STRANGER).unwrap();
    let path = c.smp_char(STRANGER);
    for e in [
        c.start_notify(&path).unwrap_err(),
        c.write_command(&path, &frame(1, Op::Read, 0, 0, &os::echo_request("x")))
            .unwrap_err(),
    ] {
        assert_eq!(e.name(), Some("org.bluez.Error.NotPermitted"));
        assert_eq!(e.message(), Some("Not paired"));
    }
    assert_eq!(smp_device::lock(&model).counters().requests, 0);
    // Bonded later (the installer paired it): SMP works.
    sim.set_bonded(STRANGER, true, true);
    c.start_notify(&path).unwrap();
    let (rsp, _) = c.request(
        &path,
        blesim::DEFAULT_MTU,
        &frame(2, Op::Read, 0, 6, &cbor::map([])),
        CALL,
    );
    assert_eq!(
        os::Params::from_body(&rsp.body().unwrap())
            .unwrap()
            .buf_size,
        512
    );
}
