//! Unit tests of the device model: every command, every fault switch, through whole frames
//! built and read with the adapters' codec.

use super::mcuboot::tests::image;
use super::*;
use wardgate_adapters::smp::error::{device_error, DeviceError};
use wardgate_adapters::smp::image::UploadStart;

struct Client {
    seq: u8,
    version: Version,
}

impl Client {
    fn v2() -> Client {
        Client {
            seq: 0,
            version: Version::V2,
        }
    }

    fn frame(&mut self, op: Op, group: u16, cmd: u8, body: &Value) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        Frame::new(self.version, op, group, cmd, self.seq, body)
            .unwrap()
            .encode()
    }

    /// Sends and decodes: (response frame, reply).
    fn ask(
        &mut self,
        m: &mut SmpDeviceModel,
        op: Op,
        group: u16,
        cmd: u8,
        body: &Value,
    ) -> (Option<Frame>, Reply) {
        let f = self.frame(op, group, cmd, body);
        let r = m.handle(&f);
        let rsp = r.response.as_ref().map(|b| Frame::decode(b).unwrap());
        if let Some(rsp) = &rsp {
            assert_eq!(rsp.header.seq, self.seq, "a response echoes the sequence");
            assert_eq!(rsp.header.op, op.response(), "the op mirrors the request's");
            assert_eq!((rsp.header.group, rsp.header.cmd), (group, cmd));
            assert_eq!(rsp.header.version, self.version);
        }
        (rsp, r)
    }

    fn body(&mut self, m: &mut SmpDeviceModel, op: Op, group: u16, cmd: u8, body: &Value) -> Value {
        self.ask(m, op, group, cmd, body).0.unwrap().body().unwrap()
    }

    fn chunk(&mut self, m: &mut SmpDeviceModel, img: &[u8], off: usize, n: usize) -> Reply {
        let sha = sha256(img);
        let req = UploadRequest {
            off: off as u64,
            data: img[off..(off + n).min(img.len())].to_vec(),
            start: (off == 0).then_some(UploadStart {
                len: img.len() as u64,
                sha: Some(sha),
                image: Some(0),
                upgrade: Some(false),
            }),
        };
        self.ask(
            m,
            Op::Write,
            image::GROUP,
            image::CMD_UPLOAD,
            &req.to_body(),
        )
        .1
    }

    /// Uploads following only the device's `off`; returns the offsets answered.
    fn upload(&mut self, m: &mut SmpDeviceModel, img: &[u8], chunk: usize) -> Vec<u64> {
        let mut off = 0usize;
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            let r = self.chunk(m, img, off, chunk);
            let rsp = UploadResponse::from_body(
                &Frame::decode(&r.response.unwrap()).unwrap().body().unwrap(),
            )
            .unwrap();
            off = rsp.off.unwrap() as usize;
            seen.push(off as u64);
            if off == img.len() {
                assert_eq!(rsp.matched, Some(true));
                return seen;
            }
        }
        panic!("upload did not finish: {seen:?}");
    }

    fn slots(&mut self, m: &mut SmpDeviceModel) -> Vec<SlotState> {
        image::parse_state(&self.body(m, Op::Read, image::GROUP, 0, &cbor::map([]))).unwrap()
    }

    fn state_write(&mut self, m: &mut SmpDeviceModel, hash: Option<&[u8]>, confirm: bool) -> Value {
        self.body(
            m,
            Op::Write,
            image::GROUP,
            0,
            &image::state_write(hash, confirm),
        )
    }

    fn reset(&mut self, m: &mut SmpDeviceModel) -> BootOutcome {
        let (rsp, r) = self.ask(
            m,
            Op::Write,
            os::GROUP,
            os::CMD_RESET,
            &os::reset_request(false),
        );
        assert!(rsp.is_some() && r.reset);
        m.boot()
    }
}

fn err(body: &Value) -> Option<DeviceError> {
    device_error(body).unwrap()
}

fn app(version: (u8, u8, u16, u32), len: usize) -> Vec<u8> {
    image(
        version,
        &(0..len).map(|i| (i * 7) as u8).collect::<Vec<_>>(),
        false,
    )
}

fn model() -> SmpDeviceModel {
    SmpDeviceModel::new(SmpDeviceOptions::default())
}

#[test]
fn echo_mirrors_the_op_and_params_read() {
    let mut m = model();
    let mut c = Client::v2();
    for op in [Op::Read, Op::Write] {
        let b = c.body(&mut m, op, 0, 0, &os::echo_request("hello"));
        assert_eq!(os::echo_response(&b).unwrap(), "hello");
    }
    let b = c.body(&mut m, Op::Read, 0, 6, &cbor::map([]));
    assert_eq!(
        Params::from_body(&b).unwrap(),
        Params {
            buf_size: 512,
            buf_count: 4
        }
    );
    // An unknown command is ENOTSUP as a v1 `rc`, also under v2.
    let b = c.body(&mut m, Op::Read, 9, 1, &cbor::map([]));
    assert!(err(&b).unwrap().is_not_supported());
}

#[test]
fn params_not_supported_switch() {
    let mut m = SmpDeviceModel::new(SmpDeviceOptions {
        params_not_supported: true,
        ..Default::default()
    });
    let b = Client::v2().body(&mut m, Op::Read, 0, 6, &cbor::map([]));
    assert_eq!(err(&b), Some(DeviceError::V1 { rc: 8, rsn: None }));
}

#[test]
fn full_update_test_reset_confirm() {
    let mut m = model();
    let mut c = Client::v2();
    let img = app((1, 2, 3, 0), 3000);
    let info = mcuboot::read(&img).unwrap();
    let offs = c.upload(&mut m, &img, 400);
    assert_eq!(offs.last(), Some(&(img.len() as u64)));
    let slots = c.slots(&mut m);
    assert_eq!(slots.len(), 2);
    assert_eq!(
        (
            slots[0].version.as_str(),
            slots[0].active,
            slots[0].confirmed
        ),
        ("1.0.0", true, true)
    );
    assert_eq!(slots[1].version, "1.2.3");
    assert_eq!(slots[1].hash.as_deref(), Some(&info.hash[..]));
    assert!(!slots[1].pending);
    // Test: pending, not permanent; the response is the state list as WRITE_RSP.
    let b = c.state_write(&mut m, Some(&info.hash), false);
    let s = image::parse_state(&b).unwrap();
    assert!(s[1].pending && !s[1].permanent);
    assert_eq!(c.reset(&mut m), BootOutcome::Swapped { confirmed: false });
    let s = c.slots(&mut m);
    assert_eq!(
        (s[0].version.as_str(), s[0].active, s[0].confirmed),
        ("1.2.3", true, false)
    );
    // Zephyr lists the image a test boot would revert to as confirmed.
    assert_eq!((s[1].version.as_str(), s[1].confirmed), ("1.0.0", true));
    c.state_write(&mut m, None, true);
    let s = c.slots(&mut m);
    assert!(s[0].confirmed && !s[1].confirmed);
    assert_eq!(m.boot(), BootOutcome::Same);
    assert_eq!(m.running_version(), "1.2.3");
    let n = m.counters();
    assert_eq!(
        (
            n.sessions_new,
            n.erases,
            n.uploads_complete,
            n.resets,
            n.swaps
        ),
        (1, 1, 1, 1, 1)
    );
    assert_eq!(n.bytes_written, img.len() as u64);
    assert!(m.events().iter().any(|e| *e
        == SmpEvent::Confirmed {
            version: "1.2.3".into()
        }));
}

#[test]
fn unconfirmed_image_reverts_unless_the_switch_is_off() {
    for revert in [true, false] {
        let mut m = SmpDeviceModel::new(SmpDeviceOptions {
            revert_unconfirmed: revert,
            ..Default::default()
        });
        let mut c = Client::v2();
        let img = app((2, 0, 0, 0), 1000);
        c.upload(&mut m, &img, 300);
        c.state_write(&mut m, Some(&mcuboot::read(&img).unwrap().hash), false);
        c.reset(&mut m);
        assert_eq!(m.running_version(), "2.0.0");
        let outcome = c.reset(&mut m);
        if revert {
            assert_eq!(outcome, BootOutcome::Reverted);
            assert_eq!(m.running_version(), "1.0.0");
            assert_eq!(c.slots(&mut m)[1].version, "2.0.0");
        } else {
            assert_eq!(outcome, BootOutcome::Same);
            assert_eq!(m.running_version(), "2.0.0");
        }
        assert!(m.running_confirmed());
    }
}

#[test]
fn permanent_swap_is_confirmed_and_test_boot_failure_reverts() {
    let mut m = model();
    let mut c = Client::v2();
    let img = app((3, 1, 0, 7), 800);
    let h = mcuboot::read(&img).unwrap().hash;
    c.upload(&mut m, &img, 300);
    let s = image::parse_state(&c.state_write(&mut m, Some(&h), true)).unwrap();
    assert!(s[1].pending && s[1].permanent);
    assert_eq!(c.reset(&mut m), BootOutcome::Swapped { confirmed: true });
    assert_eq!(m.running_version(), "3.1.0.7");
    assert!(m.running_confirmed());

    let mut m = SmpDeviceModel::new(SmpDeviceOptions {
        test_boot_fails: true,
        ..Default::default()
    });
    c.upload(&mut m, &img, 300);
    c.state_write(&mut m, Some(&h), false);
    assert_eq!(c.reset(&mut m), BootOutcome::Reverted);
    assert_eq!(m.running_version(), "1.0.0");
}

#[test]
fn resume_with_the_same_sha_answers_the_device_offset_without_erase() {
    let mut m = SmpDeviceModel::new(SmpDeviceOptions {
        erase_delay: Duration::from_secs(3),
        ..Default::default()
    });
    let mut c = Client::v2();
    let img = app((1, 1, 0, 0), 2000);
    let r = c.chunk(&mut m, &img, 0, 300);
    assert_eq!(
        r.delay,
        Duration::from_secs(3),
        "the first chunk erases the slot"
    );
    c.chunk(&mut m, &img, 300, 300);
    assert_eq!(m.session_offset(), Some(600));
    // The link drops; the client starts again at 0 with the same sha: the device says 600.
    let r = c.chunk(&mut m, &img, 0, 300);
    assert_eq!(r.delay, Duration::ZERO);
    let rsp =
        UploadResponse::from_body(&Frame::decode(&r.response.unwrap()).unwrap().body().unwrap())
            .unwrap();
    assert_eq!(rsp.off, Some(600));
    // A chunk at another offset is not written: the device answers its own.
    let r = c.chunk(&mut m, &img, 900, 300);
    let rsp =
        UploadResponse::from_body(&Frame::decode(&r.response.unwrap()).unwrap().body().unwrap())
            .unwrap();
    assert_eq!(rsp.off, Some(600));
    let n = m.counters();
    assert_eq!(
        (
            n.erases,
            n.sessions_new,
            n.sessions_resumed,
            n.offset_mismatches
        ),
        (1, 1, 1, 1)
    );
    // A different image (another sha) starts a new session with an erase.
    let other = app((1, 1, 1, 0), 2000);
    assert_eq!(
        c.chunk(&mut m, &other, 0, 300).delay,
        Duration::from_secs(3)
    );
    assert_eq!(m.counters().erases, 2);
}

#[test]
fn dropped_reply_then_retry_gets_the_new_offset() {
    let mut m = SmpDeviceModel::new(SmpDeviceOptions {
        drop_reply_at: Some(500),
        ..Default::default()
    });
    let mut c = Client::v2();
    let img = app((1, 0, 1, 0), 1500);
    c.chunk(&mut m, &img, 0, 300);
    assert!(c.chunk(&mut m, &img, 300, 300).response.is_some());
    let r = c.chunk(&mut m, &img, 600, 300);
    assert_eq!(r.response, None, "the reply to the chunk at 600 is lost");
    assert_eq!(m.session_offset(), Some(900), "but the chunk was written");
    let r = c.chunk(&mut m, &img, 600, 300);
    let rsp =
        UploadResponse::from_body(&Frame::decode(&r.response.unwrap()).unwrap().body().unwrap())
            .unwrap();
    assert_eq!(rsp.off, Some(900));
    assert_eq!(m.counters().replies_dropped, 1);
    // Once only.
    assert_eq!(
        c.upload(&mut m, &img, 300).last(),
        Some(&(img.len() as u64))
    );
}

#[test]
fn offset_reset_mid_upload_once() {
    let mut m = SmpDeviceModel::new(SmpDeviceOptions {
        reset_offset_at: Some(600),
        ..Default::default()
    });
    let mut c = Client::v2();
    let img = app((1, 3, 0, 0), 1500);
    let offs = c.upload(&mut m, &img, 300);
    assert!(offs.contains(&0), "{offs:?}");
    assert_eq!(m.counters().sessions_new, 2);
    assert!(m.events().contains(&SmpEvent::OffsetReset { off: 600 }));
}

#[test]
fn stale_offset_after_erase_gives_a_mismatch() {
    let mut m = SmpDeviceModel::new(SmpDeviceOptions {
        stale_offset_after_erase: true,
        ..Default::default()
    });
    let mut c = Client::v2();
    let img = app((1, 4, 0, 0), 1200);
    c.chunk(&mut m, &img, 0, 300);
    c.chunk(&mut m, &img, 300, 300);
    let b = c.body(&mut m, Op::Write, 1, 5, &image::erase_request(None));
    assert_eq!(err(&b), None);
    // Resuming with the same sha continues at 600 over erased flash: the image does not match.
    let mut off = 0;
    let mut matched = None;
    while off < img.len() {
        let r = c.chunk(&mut m, &img, off, 300);
        let rsp = UploadResponse::from_body(
            &Frame::decode(&r.response.unwrap()).unwrap().body().unwrap(),
        )
        .unwrap();
        off = rsp.off.unwrap() as usize;
        matched = rsp.matched;
    }
    assert_eq!(matched, Some(false));
    // Without the switch the erase ends the session: a new one starts at 0.
    let mut m = model();
    c.chunk(&mut m, &img, 0, 300);
    c.body(&mut m, Op::Write, 1, 5, &image::erase_request(None));
    assert_eq!(m.session_offset(), None);
}

#[test]
fn pending_slot_is_not_erasable_and_errors_follow_the_version() {
    for (v1, expect) in [
        (false, DeviceError::V2 { group: 1, rc: 9 }),
        (true, DeviceError::V1 { rc: 6, rsn: None }),
    ] {
        let mut m = SmpDeviceModel::new(SmpDeviceOptions {
            v1_errors: v1,
            ..Default::default()
        });
        let mut c = Client::v2();
        let img = app((1, 5, 0, 0), 700);
        c.upload(&mut m, &img, 300);
        c.state_write(&mut m, Some(&mcuboot::read(&img).unwrap().hash), false);
        let b = c.body(&mut m, Op::Write, 1, 5, &image::erase_request(None));
        assert_eq!(err(&b), Some(expect.clone()));
        // An upload of another image into the pending slot is refused the same way.
        let other = app((1, 6, 0, 0), 700);
        let r = c.chunk(&mut m, &other, 0, 300);
        let b = Frame::decode(&r.response.unwrap()).unwrap().body().unwrap();
        assert_eq!(err(&b), Some(expect));
    }
    // Switch off: the pending slot can be erased.
    let mut m = SmpDeviceModel::new(SmpDeviceOptions {
        pending_not_erasable: false,
        ..Default::default()
    });
    let mut c = Client::v2();
    let img = app((1, 5, 0, 0), 700);
    c.upload(&mut m, &img, 300);
    c.state_write(&mut m, Some(&mcuboot::read(&img).unwrap().hash), false);
    let b = c.body(&mut m, Op::Write, 1, 5, &image::erase_request(None));
    assert_eq!(err(&b), None);
    assert_eq!(c.slots(&mut m).len(), 1);
    // A v1 request gets v1 errors whatever the switch.
    let mut c1 = Client {
        seq: 0,
        version: Version::V1,
    };
    let b = c1.state_write(&mut m, Some(&[1; 32]), false);
    assert_eq!(err(&b), Some(DeviceError::V1 { rc: 1, rsn: None }));
}

#[test]
fn stuck_pending_slot_never_swaps() {
    let mut m = SmpDeviceModel::new(SmpDeviceOptions {
        stuck_pending: true,
        ..Default::default()
    });
    let mut c = Client::v2();
    let s = c.slots(&mut m);
    assert!(s[1].pending);
    assert_eq!(c.reset(&mut m), BootOutcome::Same);
    assert_eq!(m.running_version(), "1.0.0");
    let b = c.body(&mut m, Op::Write, 1, 5, &image::erase_request(None));
    assert!(err(&b).unwrap().name() == "NO_FREE_SLOT");
}

#[test]
fn state_write_errors() {
    let mut m = model();
    let mut c = Client::v2();
    let name = |b: &Value| err(b).map(|e| e.name());
    assert_eq!(
        name(&c.state_write(&mut m, None, false)).as_deref(),
        Some("INVALID_HASH")
    );
    assert_eq!(
        name(&c.state_write(&mut m, Some(&[1; 5]), true)).as_deref(),
        Some("INVALID_HASH")
    );
    assert_eq!(
        name(&c.state_write(&mut m, Some(&[1; 32]), false)).as_deref(),
        Some("HASH_NOT_FOUND")
    );
    let running = m.slots()[0].hash.clone().unwrap();
    assert_eq!(
        name(&c.state_write(&mut m, Some(&running), false)).as_deref(),
        Some("IMAGE_SETTING_TEST_TO_ACTIVE_DENIED")
    );
    // Confirming the running (confirmed) image is fine.
    assert_eq!(name(&c.state_write(&mut m, Some(&running), true)), None);
}

#[test]
fn upload_refusals_slot_size_header_and_length() {
    let mut m = SmpDeviceModel::new(SmpDeviceOptions {
        slot_size: 1024,
        ..Default::default()
    });
    let mut c = Client::v2();
    let name = |r: Reply| {
        err(&Frame::decode(&r.response.unwrap()).unwrap().body().unwrap()).map(|e| e.name())
    };
    let big = app((1, 0, 0, 0), 2000);
    assert_eq!(
        name(c.chunk(&mut m, &big, 0, 200)).as_deref(),
        Some("INVALID_IMAGE_TOO_LARGE")
    );
    let mut junk = app((1, 0, 0, 0), 500);
    junk[0] = 0;
    assert_eq!(
        name(c.chunk(&mut m, &junk, 0, 200)).as_deref(),
        Some("INVALID_IMAGE_HEADER_MAGIC")
    );
    // No `len` on the first chunk.
    let req = UploadRequest {
        off: 0,
        data: vec![0; 10],
        start: None,
    };
    let b = c.body(&mut m, Op::Write, 1, 1, &req.to_body());
    assert_eq!(err(&b).map(|e| e.name()).as_deref(), Some("INVALID_LENGTH"));
    // A chunk with no session: off 0 (start over).
    let req = UploadRequest {
        off: 100,
        data: vec![0; 10],
        start: None,
    };
    let b = c.body(&mut m, Op::Write, 1, 1, &req.to_body());
    assert_eq!(UploadResponse::from_body(&b).unwrap().off, Some(0));
    assert_eq!(m.counters().erases, 0);
}

#[test]
fn tampered_image_is_listed_but_refused_at_boot() {
    let mut m = model();
    let mut c = Client::v2();
    let img = image((4, 0, 0, 0), &[5; 600], true);
    c.upload(&mut m, &img, 250);
    let tlv = mcuboot::read(&img).unwrap().hash;
    assert_eq!(c.slots(&mut m)[1].hash.as_deref(), Some(&tlv[..]));
    c.state_write(&mut m, Some(&tlv), false);
    assert_eq!(c.reset(&mut m), BootOutcome::Rejected);
    assert_eq!(m.running_version(), "1.0.0");
    assert_eq!(c.slots(&mut m).len(), 1);
}

#[test]
fn oversize_and_garbage_get_no_answer_and_never_panic() {
    let mut m = model();
    let mut c = Client::v2();
    let big = c.frame(Op::Write, 0, 0, &os::echo_request(&"x".repeat(600)));
    assert_eq!(m.handle(&big), Reply::default());
    assert_eq!(m.handle(&[]), Reply::default());
    assert_eq!(
        m.handle(&[0x0b, 0, 0, 1, 0, 0, 0, 0, 0xa0]),
        Reply::default(),
        "a response is not a request"
    );
    // Every prefix and a few corruptions of real requests.
    let img = app((1, 0, 0, 0), 400);
    let mut frames = vec![
        c.frame(
            Op::Write,
            1,
            1,
            &UploadRequest {
                off: 0,
                data: img[..200].to_vec(),
                start: Some(UploadStart {
                    len: 400,
                    sha: Some(vec![1; 32]),
                    image: None,
                    upgrade: None,
                }),
            }
            .to_body(),
        ),
        c.frame(Op::Write, 1, 0, &image::state_write(Some(&[0; 32]), true)),
        c.frame(Op::Write, 0, 5, &cbor::map([])),
    ];
    frames.push(c.frame(Op::Write, 1, 1, &cbor::map([("off", Value::from(-1))])));
    for f in frames {
        for cut in 0..f.len() {
            let _ = m.handle(&f[..cut]);
        }
        for i in 8..f.len() {
            let mut g = f.clone();
            g[i] ^= 0xff;
            let _ = m.handle(&g);
        }
    }
    let n = m.events().len();
    assert!(n <= MAX_EVENTS);
}

/// A fuzz-like sweep in the unit tests (the fuzz workspace deliberately builds no simulator):
/// random frames with valid and broken headers, random payloads and mutated real requests, with
/// boots in between; the model never panics and every answer is a well-formed SMP frame that
/// echoes the request's sequence number.
#[test]
fn random_requests_never_panic() {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut m = SmpDeviceModel::new(SmpDeviceOptions {
        drop_reply_at: Some(100),
        reset_offset_at: Some(300),
        stale_offset_after_erase: true,
        ..Default::default()
    });
    let mut c = Client::v2();
    let img = app((1, 0, 0, 0), 600);
    let seeds = [
        c.frame(
            Op::Write,
            1,
            1,
            &UploadRequest {
                off: 0,
                data: img[..150].to_vec(),
                start: Some(UploadStart {
                    len: img.len() as u64,
                    sha: Some(sha256(&img)),
                    image: Some(0),
                    upgrade: None,
                }),
            }
            .to_body(),
        ),
        c.frame(
            Op::Write,
            1,
            1,
            &UploadRequest {
                off: 150,
                data: img[150..300].to_vec(),
                start: None,
            }
            .to_body(),
        ),
        c.frame(
            Op::Write,
            1,
            0,
            &image::state_write(Some(&mcuboot::read(&img).unwrap().hash), false),
        ),
        c.frame(Op::Read, 1, 0, &cbor::map([])),
        c.frame(Op::Write, 1, 5, &image::erase_request(Some(1))),
        c.frame(Op::Read, 0, 6, &cbor::map([])),
    ];
    for i in 0..20_000u32 {
        let r = rnd();
        let mut f = seeds[(r % seeds.len() as u64) as usize].clone();
        match (r >> 8) % 4 {
            0 => {}
            1 => {
                let at = (rnd() as usize) % f.len();
                f[at] = rnd() as u8;
            }
            2 => f.truncate((rnd() as usize) % f.len()),
            _ => {
                let n = (rnd() % 64) as usize;
                f = (0..n).map(|_| rnd() as u8).collect();
                if n >= 8 {
                    f[0] &= 0x1b; // mostly valid byte 0
                }
            }
        }
        let seq = f.get(6).copied();
        let reply = m.handle(&f);
        if let Some(rsp) = reply.response {
            let rsp = Frame::decode(&rsp).expect("a well-formed response");
            assert_eq!(Some(rsp.header.seq), seq);
            assert!(rsp.body().is_ok());
        }
        if reply.reset || i % 997 == 0 {
            m.boot();
        }
    }
    assert!(m.counters().requests == 20_000);
}
