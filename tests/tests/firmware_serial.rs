//! `wardgate firmware list|upload` (the SMP client of the firmware relay) against an SMP device
//! emulator on a real pty. The emulator is built on PyPI `smp` (tests/python/smp_device.py), so
//! it shares no code with our codec; the images are signed by PyPI `imgtool`, and the expected
//! slot hash comes from `imgtool verify`, not from our MCUboot code. Each test switches on one
//! fault of FIRMWARE.md §2 / FAILURES.md B23–B25 and checks what a technician sees: the exit
//! status, the reason, the slots the device lists afterwards, and the device's own event log.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wardgate_e2e::process::{run, Output, Proc};
use wardgate_e2e::smp_device::{make_image, SmpDevice};
use wardgate_e2e::{python, temp_dir, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");
const TARGET_TMP: &str = env!("CARGO_TARGET_TMPDIR");

fn tmp() -> &'static Path {
    Path::new(TARGET_TMP)
}

fn wardgate(args: &[&str]) -> Output {
    let mut c = std::process::Command::new(BIN);
    c.args(args);
    run(c, b"", Duration::from_secs(120)).unwrap()
}

fn upload(dev: &SmpDevice, image: &Path, extra: &[&str]) -> Output {
    let port = dev.link.to_str().unwrap();
    let mut args = vec![
        "firmware",
        "upload",
        "--port",
        port,
        image.to_str().unwrap(),
    ];
    args.extend(extra);
    wardgate(&args)
}

fn list(dev: &SmpDevice) -> Vec<Value> {
    let out = wardgate(&["firmware", "list", "--port", dev.link.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "list failed: {out:?}");
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn slot(slots: &[Value], n: u64) -> &Value {
    slots
        .iter()
        .find(|s| s["slot"] == n)
        .unwrap_or_else(|| panic!("no slot {n} in {slots:?}"))
}

/// `imgtool verify`'s image digest: the hash MCUboot (and so the device) reports for the slot.
fn imgtool_digest(dir: &Path, image: &Path) -> String {
    let py = python::smp_venv_python(tmp()).unwrap();
    let mut c = std::process::Command::new(py);
    c.args(["-m", "imgtool.main", "verify", "--key", "key.pem"])
        .arg(image)
        .current_dir(dir);
    let o = run(c, b"", Duration::from_secs(60)).unwrap();
    o.stdout
        .lines()
        .find_map(|l| l.strip_prefix("Image digest: "))
        .unwrap_or_else(|| panic!("no digest from imgtool: {o:?}"))
        .trim()
        .to_string()
}

/// The numbers of the final `uploaded N bytes in S s (K KB/s)` line.
fn uploaded_line(out: &Output) -> (u64, f64, f64) {
    let last = out.stdout.lines().last().unwrap_or_default();
    let rest = last
        .strip_prefix("uploaded ")
        .unwrap_or_else(|| panic!("last line is not `uploaded …`: {out:?}"));
    let words: Vec<&str> = rest.split_whitespace().collect();
    // N bytes in S s (K KB/s)
    assert_eq!(
        (words[1], words[2], words[4], words[6]),
        ("bytes", "in", "s", "KB/s)"),
        "{last}"
    );
    (
        words[0].parse().unwrap(),
        words[3].parse().unwrap(),
        words[5].trim_start_matches('(').parse().unwrap(),
    )
}

/// `(re-sent, dropped)` from the CLI's `N requests, R re-sent after a timeout, D late or stray
/// answers dropped, …` line.
fn client_stats(out: &Output) -> (u64, u64) {
    let (r, d, _, _) = pipeline_stats(out);
    (r, d)
}

/// `(re-sent, dropped, most in flight, pipeline drops)` from the CLI's stats line.
fn pipeline_stats(out: &Output) -> (u64, u64, u64, u64) {
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("re-sent after a timeout"))
        .unwrap_or_else(|| panic!("no stats line: {}", out.stderr));
    let num = |after: &str| -> u64 {
        let i = line.find(after).unwrap();
        line[..i].rsplit(' ').next().unwrap().parse().unwrap()
    };
    let after = |before: &str| -> u64 {
        let i = line.find(before).unwrap() + before.len();
        line[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (
        num(" re-sent"),
        num(" late or stray"),
        after("at most "),
        after("pipeline dropped "),
    )
}

fn ok(out: &Output) {
    assert_eq!(
        out.code(),
        Some(0),
        "upload failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}

fn setup(
    name: &str,
    version: &str,
    len: usize,
    flags: &[&str],
) -> (tempfile::TempDir, SmpDevice, PathBuf) {
    let dir = temp_dir(name).unwrap();
    let image = make_image(tmp(), dir.path(), version, len).unwrap();
    let dev = SmpDevice::start(tmp(), dir.path(), "dev", flags).unwrap();
    (dir, dev, image)
}

/// The whole bench path with console log lines interleaved (F8): upload, test, reset, the port
/// gone for a second (swap), reconnect, confirm; the device then runs the new version,
/// confirmed, with imgtool's digest as its hash.
#[test]
fn upload_test_confirm_with_console_noise() {
    let (dir, dev, image) = setup(
        "fw-full",
        "1.2.3",
        40_000,
        &["--noise", "--swap-delay", "1"],
    );
    let before = list(&dev);
    assert_eq!(slot(&before, 0)["version"], "1.0.0");
    let out = upload(&dev, &image, &[]);
    ok(&out);
    let (n, secs, rate) = uploaded_line(&out);
    assert_eq!(n, std::fs::metadata(&image).unwrap().len());
    assert!(secs >= 0.0 && rate > 0.0, "{out:?}");
    let after = list(&dev);
    let s0 = slot(&after, 0);
    assert_eq!(s0["version"], "1.2.3");
    assert_eq!(s0["hash"], imgtool_digest(dir.path(), &image));
    assert_eq!(
        (s0["active"].as_bool(), s0["confirmed"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(slot(&after, 1)["version"], "1.0.0");
    // One session, one erase, then test → reset → boot on the new image → confirm.
    assert_eq!(dev.count("session new"), 1, "{}", dev.events());
    assert_eq!(dev.count("boot swap to 1.2.3 confirmed=False"), 1);
    assert_eq!(dev.count("confirm 1.2.3"), 1);
    // Running it again uploads nothing: the device already runs it, confirmed.
    let again = upload(&dev, &image, &[]);
    ok(&again);
    assert_eq!(uploaded_line(&again).0, 0);
}

/// B25/F1: the first chunk is answered only after a 3 s "slot erase", beyond the 2 s
/// per-request timeout and with no re-sends allowed: the first-chunk timeout (40 s default)
/// applies and the upload succeeds with one session. Control: with `--first-timeout 1` the same
/// device makes the upload fail with reason `timeout`.
#[test]
fn b25_first_chunk_waits_for_the_slot_erase() {
    let (_dir, dev, image) = setup("fw-b25", "1.3.0", 8_000, &["--erase-delay", "3"]);
    let fast = ["--timeout-ms", "2000", "--retries", "0"];
    let mut control = fast.to_vec();
    control.extend(["--first-timeout", "1"]);
    let out = upload(&dev, &image, &control);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("reason=timeout"), "{}", out.stderr);
    // The device is still erasing for the abandoned upload: wait until it answers again.
    let port = dev.link.to_str().unwrap();
    wait_for(
        "the device to answer after its erase",
        Duration::from_secs(30),
        || Ok(wardgate(&["firmware", "list", "--port", port]).code() == Some(0)),
    )
    .unwrap();
    // A new image: a new session, a new 3 s erase.
    let image2 = make_image(tmp(), dev.log.parent().unwrap(), "1.3.1", 8_000).unwrap();
    let out = upload(&dev, &image2, &fast);
    ok(&out);
    assert_eq!(dev.count("session new"), 2, "{}", dev.events());
    assert_eq!(slot(&list(&dev), 0)["version"], "1.3.1");
}

/// F2: one upload answer comes 2.5 s late, after the client's 1.5 s timeout. The client re-sends
/// the chunk with the same sequence number; the late answer and the answer to the re-send both
/// arrive; the extra one is dropped by its sequence number and the upload completes correctly.
#[test]
fn f2_late_reply_is_dropped() {
    let (dir, dev, image) = setup(
        "fw-late",
        "1.4.0",
        20_000,
        &["--late-at", "5000", "--late-by", "2.5", "--buf-count", "2"],
    );
    let out = upload(&dev, &image, &["--timeout-ms", "1500"]);
    ok(&out);
    assert_eq!(dev.count("late off="), 1, "{}", dev.events());
    let (resent, dropped) = client_stats(&out);
    assert!(resent >= 1 && dropped >= 1, "{}", out.stderr);
    assert_eq!(
        slot(&list(&dev), 0)["hash"],
        imgtool_digest(dir.path(), &image)
    );
}

/// F7: the device drops one request without answering. With one request in flight (a device
/// with 2 buffers) the client re-sends it after its timeout with the same sequence number and
/// the same bytes. (Pipelined, the next answer names the device's offset first:
/// `pipelined_upload_follows_the_device_past_a_dropped_request`.)
#[test]
fn dropped_reply_is_resent_with_the_same_seq() {
    let (_dir, dev, image) = setup(
        "fw-drop",
        "1.5.0",
        20_000,
        &["--drop-at", "9000", "--buf-count", "2"],
    );
    let out = upload(&dev, &image, &["--timeout-ms", "1500"]);
    ok(&out);
    let events = dev.events();
    let lines: Vec<&str> = events
        .lines()
        .map(|l| l.split_once(' ').unwrap().1)
        .collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("drop off="))
        .expect("no drop");
    // `upload off=X len=L seq=S`, `drop off=X seq=S`, then the re-send `upload off=X len=L seq=S`.
    assert_eq!(lines[at - 1], lines[at + 1], "{events}");
    let seq = lines[at].split("seq=").nth(1).unwrap();
    assert!(lines[at + 1].ends_with(&format!("seq={seq}")));
    assert_eq!(dev.count("session new"), 1);
}

/// B23 (zephyr#37893): one answer arrives framed without its CRC. The client drops it as a
/// decode error (no hang), re-sends the request after its timeout with the same sequence
/// number (one request in flight: a device with 2 buffers), and the upload completes.
#[test]
fn b23_answer_without_crc_is_dropped_and_retried() {
    let (_dir, dev, image) = setup(
        "fw-nocrc",
        "1.5.1",
        20_000,
        &["--no-crc-at", "7000", "--buf-count", "2"],
    );
    let out = upload(&dev, &image, &["--timeout-ms", "1500"]);
    ok(&out);
    assert_eq!(dev.count("no-crc off="), 1, "{}", dev.events());
    assert!(client_stats(&out).0 >= 1, "{}", out.stderr);
    assert_eq!(slot(&list(&dev), 0)["version"], "1.5.1");
}

/// B24 (zephyr#51798): the device keeps a stale upload offset after an erase. It answers the
/// first chunk with half the image's length although it holds nothing; the client follows it,
/// the device reports `match: false`, and the client uploads again from offset 0 without `sha`
/// (a new session); the slot hash is then right and the update completes.
#[test]
fn b24_stale_offset_after_erase_restarts_at_zero() {
    let dir = temp_dir("fw-b24").unwrap();
    let image = make_image(tmp(), dir.path(), "1.6.0", 20_000).unwrap();
    let dev = SmpDevice::start(
        tmp(),
        dir.path(),
        "dev",
        &["--stale-session", image.to_str().unwrap()],
    )
    .unwrap();
    let out = upload(&dev, &image, &[]);
    ok(&out);
    let events = dev.events();
    let order = [
        "session resume off=",
        "complete match=False",
        "session new len=",
        "complete match=True",
    ];
    let mut from = 0;
    for o in order {
        from += events[from..]
            .find(o)
            .unwrap_or_else(|| panic!("no `{o}` after byte {from}:\n{events}"));
    }
    assert!(events.contains("sha=no"), "{events}");
    let s0 = slot(&list(&dev), 0).clone();
    assert_eq!(
        (s0["version"].as_str(), s0["confirmed"].as_bool()),
        (Some("1.6.0"), Some(true))
    );
    assert_eq!(s0["hash"], imgtool_digest(dir.path(), &image));
}

/// F14/B25: the upload is killed (SIGKILL) half-way; running it again resumes at the offset the
/// device reports, with no second session and no second erase.
#[test]
fn interrupted_upload_resumes_without_a_second_erase() {
    // Paced to the line rate of 115200 baud so the upload takes a few seconds.
    let (dir, dev, image) = setup(
        "fw-resume",
        "1.7.0",
        30_000,
        &["--pace-baud", "115200", "--erase-delay", "0.5"],
    );
    let port = dev.link.to_str().unwrap().to_string();
    let mut cli = Proc::spawn(
        "cli",
        Path::new(BIN),
        [
            "firmware",
            "upload",
            "--port",
            &port,
            image.to_str().unwrap(),
        ],
        dir.path(),
        dir.path(),
        &[],
    )
    .unwrap();
    wait_for(
        "a third of the image on the device",
        Duration::from_secs(60),
        || Ok(dev.count("upload off=") >= 20),
    )
    .unwrap();
    cli.kill9().unwrap();
    let out = upload(&dev, &image, &[]);
    ok(&out);
    assert_eq!(dev.count("session new"), 1, "{}", dev.events());
    assert_eq!(dev.count("erase delay"), 1);
    assert_eq!(dev.count("session resume off="), 1);
    assert!(out.stderr.contains("resumed at offset"), "{}", out.stderr);
    let (n, _, _) = uploaded_line(&out);
    let total = std::fs::metadata(&image).unwrap().len();
    assert!(n < total, "sent {n} of {total} bytes after the resume");
    let resumed_at: u64 = dev
        .events()
        .lines()
        .find_map(|l| l.split("session resume off=").nth(1)?.trim().parse().ok())
        .unwrap();
    assert!(resumed_at > 0 && resumed_at < total);
    assert!(
        n <= total - resumed_at + 1024,
        "sent {n} bytes from offset {resumed_at} of {total}"
    );
    assert_eq!(slot(&list(&dev), 0)["version"], "1.7.0");
}

/// F6: no MCUmgr parameters (`{"rc": 8}` ENOTSUP, a non-group error, from a v2 device): the client uses its default 256-byte buffer,
/// and every request fits it. The device also restarts the session at offset 0 once mid-upload:
/// the client starts over with the first-chunk fields.
#[test]
fn f6_enotsup_params_and_offset_reset() {
    let (_dir, dev, image) = setup(
        "fw-enotsup",
        "1.8.0",
        12_000,
        &["--no-params", "--reset-offset-at", "6000"],
    );
    let out = upload(&dev, &image, &[]);
    ok(&out);
    let max = dev
        .events()
        .lines()
        .filter(|l| l.contains(" upload off="))
        .filter_map(|l| l.split("len=").nth(1))
        .filter_map(|l| l.split_whitespace().next()?.parse::<usize>().ok())
        .max()
        .unwrap();
    assert!((200..=252).contains(&max), "largest chunk {max}");
    assert_eq!(dev.count("offset reset to 0"), 1);
    assert!(
        out.stderr
            .contains("restarted the upload at offset 0 1 time"),
        "{}",
        out.stderr
    );
    assert_eq!(slot(&list(&dev), 0)["version"], "1.8.0");
}

/// F9: test-only leaves the new image running unconfirmed (said so); a power cycle then reverts
/// to the old one. A device whose test image never boots comes back on the old image:
/// `reason=reverted`, exit 1.
#[test]
fn f9_test_only_reverts_when_not_confirmed() {
    let (dir, mut dev, image) = setup("fw-revert", "2.0.0", 8_000, &[]);
    let out = upload(&dev, &image, &["--mode", "test-only"]);
    ok(&out);
    assert!(out.stderr.contains("not confirmed"), "{}", out.stderr);
    let s0 = slot(&list(&dev), 0).clone();
    assert_eq!(
        (s0["version"].as_str(), s0["confirmed"].as_bool()),
        (Some("2.0.0"), Some(false))
    );
    dev.power_cycle().unwrap();
    let s0 = slot(&list(&dev), 0).clone();
    assert_eq!(
        (s0["version"].as_str(), s0["confirmed"].as_bool()),
        (Some("1.0.0"), Some(true))
    );

    let bad = SmpDevice::start(tmp(), dir.path(), "bad", &["--boot-fails"]).unwrap();
    let out = upload(&bad, &image, &[]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("reason=reverted"), "{}", out.stderr);
    assert_eq!(slot(&list(&bad), 0)["version"], "1.0.0");
}

/// F10: slot 1 holds a pending image the device cannot erase: the upload is refused with its
/// own reason, `bad_state`, as v1 `rc` EBADSTATE and as v2 IMAGE_ALREADY_PENDING alike.
#[test]
fn f10_pending_slot_is_bad_state() {
    let dir = temp_dir("fw-ebadstate").unwrap();
    let image = make_image(tmp(), dir.path(), "2.1.0", 4_000).unwrap();
    for (name, flags) in [
        ("v1", &["--pending-stuck", "--v1-errors"][..]),
        ("v2", &["--pending-stuck"][..]),
    ] {
        let dev = SmpDevice::start(tmp(), dir.path(), name, flags).unwrap();
        let out = upload(&dev, &image, &[]);
        assert_eq!(out.code(), Some(1), "{name}: {out:?}");
        assert!(
            out.stderr.contains("reason=bad_state"),
            "{name}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("cannot be erased"),
            "{name}: {}",
            out.stderr
        );
        assert_eq!(dev.count("session new"), 0);
    }
}

/// Pipelining within the device's buffer count (issue 10 item 2): a device with 4 SMP buffers
/// gets up to 3 upload requests in flight — it finds the next requests already received when it
/// answers one (`pipelined ahead=` in its log) — and holds exactly the image afterwards. A
/// device with 2 buffers gets one at a time.
#[test]
fn pipelined_upload_stays_within_the_buffer_count() {
    let (dir, dev, image) = setup(
        "fw-pipe",
        "2.3.0",
        30_000,
        &["--buf-count", "4", "--pace-baud", "230400"],
    );
    let out = upload(&dev, &image, &["--mode", "test-only"]);
    ok(&out);
    let (resent, _, in_flight, drops) = pipeline_stats(&out);
    assert_eq!((resent, in_flight, drops), (0, 3, 0), "{}", out.stderr);
    assert!(dev.count("pipelined ahead=") > 10, "{}", dev.events());
    assert_eq!(dev.count("session new"), 1);
    let s0 = slot(&list(&dev), 0).clone();
    assert_eq!(s0["hash"], imgtool_digest(dir.path(), &image));

    let two = SmpDevice::start(tmp(), dir.path(), "two", &["--buf-count", "2"]).unwrap();
    let out = upload(&two, &image, &["--mode", "test-only"]);
    ok(&out);
    assert_eq!(pipeline_stats(&out).2, 1, "{}", out.stderr);
    assert_eq!(two.count("pipelined ahead="), 0, "{}", two.events());
    assert_eq!(
        slot(&list(&two), 0)["hash"],
        imgtool_digest(dir.path(), &image)
    );
}

/// The device ignores one request of a pipelined upload (`--drop-at`): it answers the requests
/// after it with its own offset, the client drops its pipeline and goes on from that offset at
/// once — no timeout, no re-send with an old sequence number — and the device holds exactly the
/// image.
#[test]
fn pipelined_upload_follows_the_device_past_a_dropped_request() {
    let (dir, dev, image) = setup(
        "fw-pipe-drop",
        "2.3.1",
        30_000,
        &["--buf-count", "4", "--drop-at", "9000"],
    );
    let out = upload(
        &dev,
        &image,
        &["--mode", "test-only", "--timeout-ms", "20000"],
    );
    ok(&out);
    assert_eq!(dev.count("drop off="), 1, "{}", dev.events());
    let (resent, dropped, _, drops) = pipeline_stats(&out);
    assert_eq!(resent, 0, "no timeout was needed: {}", out.stderr);
    assert!(drops >= 1 && dropped >= 1, "{}", out.stderr);
    let (_, secs, _) = uploaded_line(&out);
    assert!(secs < 20.0, "the 20 s timeout was not waited for: {secs} s");
    assert_eq!(
        slot(&list(&dev), 0)["hash"],
        imgtool_digest(dir.path(), &image)
    );
}

/// FIRMWARE.md F10, issue 10 item 3: an image larger than the device's slot is refused with
/// `reason=image_too_large` before anything is erased or sent — from the slot info the device
/// reports, and, from a device without slot info, by the device's own refusal at the first
/// request (INVALID_IMAGE_TOO_LARGE), which starts no session either.
#[test]
fn an_image_larger_than_the_slot_is_refused_before_the_erase() {
    let (dir, dev, image) = setup("fw-too-large", "2.4.0", 20_000, &["--slot-size", "0x4000"]);
    let out = upload(&dev, &image, &[]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("reason=image_too_large"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("12288 bytes"),
        "the slot's limit is named: {}",
        out.stderr
    );
    assert_eq!(dev.count("slot-info"), 1, "{}", dev.events());
    assert_eq!(dev.count("upload off="), 0, "{}", dev.events());
    assert_eq!(dev.count("erase"), 0, "{}", dev.events());
    assert_eq!(slot(&list(&dev), 0)["version"], "1.0.0");

    let old = SmpDevice::start(
        tmp(),
        dir.path(),
        "old",
        &["--slot-size", "0x4000", "--no-slot-info"],
    )
    .unwrap();
    let out = upload(&old, &image, &[]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("reason=image_too_large"),
        "{}",
        out.stderr
    );
    assert_eq!(old.count("upload refused: len="), 1, "{}", old.events());
    assert_eq!(old.count("session new"), 0, "{}", old.events());

    // The same image fits a device with a larger slot.
    let big = SmpDevice::start(tmp(), dir.path(), "big", &["--slot-size", "0x8000"]).unwrap();
    ok(&upload(&big, &image, &["--mode", "test-only"]));
}

/// The image is read from the file during the upload, never held whole: a file changed under
/// the upload (appended to) is refused at the next chunk with `reason=image_changed`, and what
/// the device holds is never confirmed.
#[test]
fn an_image_file_changed_during_the_upload_is_refused() {
    let (_dir, dev, image) = setup("fw-changed", "2.5.0", 60_000, &["--pace-baud", "115200"]);
    let port = dev.link.to_str().unwrap().to_string();
    let mut cli = Proc::spawn(
        "cli",
        Path::new(BIN),
        [
            "firmware",
            "upload",
            "--port",
            &port,
            image.to_str().unwrap(),
        ],
        image.parent().unwrap(),
        image.parent().unwrap(),
        &[],
    )
    .unwrap();
    wait_for("the upload under way", Duration::from_secs(60), || {
        Ok(dev.count("upload off=") >= 5)
    })
    .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&image)
        .unwrap();
    std::io::Write::write_all(&mut f, b"tampered").unwrap();
    drop(f);
    let status = cli.wait_exit(Duration::from_secs(120)).unwrap();
    assert_eq!(status.code(), Some(1), "{}", cli.stderr());
    assert!(
        cli.stderr().contains("reason=image_changed"),
        "{}",
        cli.stderr()
    );
    assert_eq!(dev.count("complete"), 0, "{}", dev.events());
    assert_eq!(slot(&list(&dev), 0)["version"], "1.0.0");
}

/// The bench's numbers are bounded (review of issue 10): a usage error (exit 2) that names the
/// option and the range, before any port is opened.
#[test]
fn bench_options_out_of_range_are_usage_errors() {
    for (args, want) in [
        (&["--timeout-ms", "0"][..], "100..=600000"),
        (&["--timeout-ms", "99999999"][..], "100..=600000"),
        (&["--retries", "1000"][..], "0..=20"),
        (&["--first-timeout", "inf"][..], "outside 1 to 600 s"),
        (&["--first-timeout=-3"][..], "outside 1 to 600 s"),
        (
            &["--first-timeout", "soon"][..],
            "is not a number of seconds",
        ),
        (&["--swap-time", "NaN"][..], "outside 1 to 3600 s"),
    ] {
        let mut a = vec!["firmware", "upload", "--port", "/nonexistent/tty"];
        a.extend(args);
        a.push("/nonexistent/image.bin");
        let out = wardgate(&a);
        assert_eq!(out.code(), Some(2), "{args:?}: {out:?}");
        let option = args[0].split('=').next().unwrap();
        assert!(out.stderr.contains(option), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(want),
            "{args:?}: want `{want}` in {}",
            out.stderr
        );
    }
}

/// The bench of issue 10 (figures, not a check; `scripts/bench-smp`): upload throughput over a
/// pty paced by the emulator to `WARDGATE_SMP_BAUD` (default 115200, 8N1: baud/10 bytes/s), as a
/// fraction of the line's payload limit after the console framing (base64: 3 bytes in 4
/// characters; 3 bytes of marker and newline per 120 characters: 90 packet bytes per 123 line
/// bytes). Median of `WARDGATE_SMP_RUNS` (default 3) uploads of a 100 kB image, each to a fresh
/// device with `WARDGATE_SMP_BUF_COUNT` (default 4) buffers of `WARDGATE_SMP_BUF` (default 512)
/// bytes: `BUF_COUNT - 1` upload requests in flight (1: no pipelining). The emulator's line is
/// full duplex (requests received while answers are sent).
#[test]
#[ignore = "bench: run with scripts/bench-smp"]
fn bench_upload_throughput() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (baud, runs, buf, count) = (
        env("WARDGATE_SMP_BAUD", 115_200),
        env("WARDGATE_SMP_RUNS", 3),
        env("WARDGATE_SMP_BUF", 512),
        env("WARDGATE_SMP_BUF_COUNT", 4),
    );
    let dir = temp_dir("fw-bench").unwrap();
    let image = make_image(tmp(), dir.path(), "3.0.0", 100_000).unwrap();
    let limit = baud as f64 / 10.0 * 90.0 / 123.0;
    let mut rates = Vec::new();
    for run in 0..runs {
        let (b, s, n) = (baud.to_string(), buf.to_string(), count.to_string());
        let dev = SmpDevice::start(
            tmp(),
            dir.path(),
            &format!("bench{run}"),
            &["--pace-baud", &b, "--buf-size", &s, "--buf-count", &n],
        )
        .unwrap();
        let out = upload(&dev, &image, &["--mode", "test-only"]);
        ok(&out);
        let (n, secs, _) = uploaded_line(&out);
        let rate = n as f64 / secs;
        eprintln!(
            "run {run}: {n} bytes in {secs:.2} s = {rate:.0} B/s = {:.1} % of {limit:.0} B/s",
            100.0 * rate / limit
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "smp upload at {baud} baud, buf_size {buf}, buf_count {count}: median {median:.0} B/s = {:.1} % of the line's payload limit ({limit:.0} B/s) over {runs} runs",
        100.0 * median / limit
    );
}

/// Nothing reaches a device unverified: an image with one body byte flipped (its SHA256 TLV no
/// longer matches) and a file that is no MCUboot image are refused with their reasons before a
/// single upload request is sent.
#[test]
fn tampered_or_foreign_image_is_refused_before_upload() {
    let (dir, dev, image) = setup("fw-tampered", "2.2.0", 4_000, &[]);
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[0x300] ^= 0x01;
    let tampered = dir.path().join("tampered.bin");
    std::fs::write(&tampered, &bytes).unwrap();
    let out = upload(&dev, &tampered, &[]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("reason=image_hash_mismatch"),
        "{}",
        out.stderr
    );
    let foreign = dir.path().join("foreign.bin");
    std::fs::write(&foreign, vec![0x5a; 4096]).unwrap();
    let out = upload(&dev, &foreign, &[]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("reason=not_mcuboot"), "{}", out.stderr);
    assert_eq!(dev.count("upload off="), 0, "{}", dev.events());
    assert_eq!(slot(&list(&dev), 0)["version"], "1.0.0");
}
