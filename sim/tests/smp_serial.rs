//! The SMP device model on a real pty ([`wardgate_sim::smp_device::serial`]) sharing the line with
//! a demo device's recording: the recording streams, an SMP request written by the host is
//! answered in console framing between the recording's bytes, a reset takes the pty away for
//! the swap time, then both resume on a new pty behind the same link; a power cycle boots the
//! model.

use std::io::{Read, Write};
use std::time::{Duration, Instant};
use wardgate_adapters::smp::console::{self, ConsoleDecoder, ConsoleEvent};
use wardgate_adapters::smp::header::{Frame, Op, Version};
use wardgate_adapters::smp::os;
use wardgate_sim::demo_serial;
use wardgate_sim::smp_device::{lock, SmpDeviceModel, SmpDeviceOptions, SmpEvent};

fn open(link: &std::path::Path) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(link)
        .unwrap();
    nix::fcntl::fcntl(
        &f,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    f
}

/// Reads for `d`: (bytes read, SMP frames found).
fn read_for(
    f: &mut std::fs::File,
    dec: &mut ConsoleDecoder,
    d: Duration,
) -> (Vec<u8>, Vec<Vec<u8>>) {
    let end = Instant::now() + d;
    let mut all = Vec::new();
    let mut frames = Vec::new();
    let mut ev = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match f.read(&mut buf) {
            Ok(n) if n > 0 => {
                all.extend_from_slice(&buf[..n]);
                dec.feed(&buf[..n], &mut ev);
                for e in ev.drain(..) {
                    if let ConsoleEvent::Frame(fr) = e {
                        frames.push(fr);
                    }
                }
            }
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    (all, frames)
}

#[test]
fn recording_and_smp_share_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("bed2.tty");
    let dev = demo_serial::devices()
        .into_iter()
        .find(|d| d.name == "bed2-monitor")
        .unwrap();
    let model = SmpDeviceModel::new(SmpDeviceOptions {
        swap_time: Duration::from_millis(1500),
        ..Default::default()
    })
    .shared();
    let sim = demo_serial::start_with_smp(&dev, &link, model.clone(), 1.0, true).unwrap();
    let mut f = open(&link);
    let mut dec = ConsoleDecoder::new();
    let (bytes, _) = read_for(&mut f, &mut dec, Duration::from_millis(500));
    assert!(
        bytes.len() >= 200,
        "the recording streams ({} bytes in 0.5 s)",
        bytes.len()
    );
    assert!(
        dev.recording.starts_with(&bytes[..64]),
        "the recording's own bytes"
    );

    let echo = Frame::new(
        Version::V2,
        Op::Write,
        0,
        0,
        7,
        &os::echo_request("between records"),
    )
    .unwrap()
    .encode();
    f.write_all(&console::encode(&echo, console::MAX_LINE))
        .unwrap();
    let (bytes, frames) = read_for(&mut f, &mut dec, Duration::from_millis(700));
    assert_eq!(
        frames.len(),
        1,
        "one answer amid {} bytes of recording",
        bytes.len()
    );
    let rsp = Frame::decode(&frames[0]).unwrap();
    assert_eq!((rsp.header.seq, rsp.header.op), (7, Op::WriteRsp));
    assert_eq!(
        os::echo_response(&rsp.body().unwrap()).unwrap(),
        "between records"
    );

    // Reset: answered, then silent for the swap time, then the recording and SMP come back.
    let reset = Frame::new(Version::V2, Op::Write, 0, 5, 8, &os::reset_request(false))
        .unwrap()
        .encode();
    f.write_all(&console::encode(&reset, console::MAX_LINE))
        .unwrap();
    let t = Instant::now();
    loop {
        let (_, frames) = read_for(&mut f, &mut dec, Duration::from_millis(20));
        if !frames.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no answer to the reset"
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(!sim.is_up(), "swapping");
    assert!(!link.exists(), "the pty is gone during the swap");
    let gone = Instant::now();
    while !sim.is_up() {
        assert!(gone.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        gone.elapsed() >= Duration::from_millis(1300),
        "back after {:?}",
        gone.elapsed()
    );
    let mut f = open(&link);
    let mut dec = ConsoleDecoder::new();
    let (again, _) = read_for(&mut f, &mut dec, Duration::from_millis(500));
    assert!(
        again.len() >= 100,
        "the recording resumed ({} bytes)",
        again.len()
    );
    f.write_all(&console::encode(&echo, console::MAX_LINE))
        .unwrap();
    let (_, frames) = read_for(&mut f, &mut dec, Duration::from_millis(700));
    assert_eq!(frames.len(), 1, "SMP answers again");

    sim.power_cycle();
    let t = Instant::now();
    while lock(&model).counters().boots < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the power cycle did not boot the model"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = lock(&model);
    assert_eq!(
        m.counters().resets,
        1,
        "one reset over SMP, one power cycle"
    );
    assert!(
        m.events()
            .iter()
            .filter(|e| matches!(e, SmpEvent::Boot { .. }))
            .count()
            == 2
    );
    let (frames_in, frames_out, recording, resets) = sim.counts();
    assert_eq!((frames_in, frames_out, resets), (3, 3, 2));
    assert!(recording > 400);
}
