//! The offline commands of the CLI contract (DESIGN §9): `decode` and `verify`, and the
//! independent Python verifier (`tests/python/verify_cose.py`) on the same messages. Messages come
//! from `wardgate demo --out DIR` (the whole chain in-process, real recordings).

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wardgate_e2e::process::{run, Output};
use wardgate_e2e::{python, real_recording};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");
const TARGET_TMP: &str = env!("CARGO_TARGET_TMPDIR");

fn wardgate(args: &[&std::ffi::OsStr], stdin: &[u8]) -> Output {
    let mut c = std::process::Command::new(BIN);
    c.args(args);
    run(c, stdin, Duration::from_secs(60)).unwrap()
}

fn json_lines(out: &Output) -> Vec<Value> {
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Observations of the demo's CMS50E (`bed1-spo2`): its 102 frames are 1.7 s of the device, so
/// SpO2, pulse rate and one pleth array (60 samples, then 42) for each of two seconds.
const CMS50_OBSERVATIONS: usize = 6;

/// Readings of the demo's plug-in device (the example plug-in's replay), run when Debian's
/// python3 is installed.
fn plugin_readings() -> usize {
    if Path::new("/usr/bin/python3").is_file() {
        // SpO2 and pulse of each of the 102 live frames of the CMS50E capture
        // (examples/plugins/oximeter_demo.csv).
        204
    } else {
        0
    }
}

/// The demo devices' configured locations (config/demo.toml, config/demo-ble.toml, the demo's
/// `[[exec]]` sections).
const DEMO_LOCATIONS: [(&str, &str); 6] = [
    ("serial:bed1-spo2", "ward-7/bed-1"),
    ("serial:bed2-monitor", "ward-7/bed-2"),
    ("ble:00:22:D0:90:4C:14", "ward-7/bed-3"),
    ("ble:5C:31:3E:01:16:6D", "ward-7/bed-3"),
    ("exec:bed15-plugin", "ward-7/bed-15"),
    ("exec:bed16-ecg", "ward-7/bed-16"),
];

/// Runs `wardgate demo --speed 50 --out DIR` (the whole chain in-process, real recordings) and
/// returns `(DIR/gateway.pem, DIR/messages/*.cose)`.
fn demo_messages(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let out = wardgate(
        &[
            "demo".as_ref(),
            "--speed".as_ref(),
            "50".as_ref(),
            "--out".as_ref(),
            dir.as_os_str(),
        ],
        b"",
    );
    assert_eq!(out.code(), Some(0), "wardgate demo: {out:?}");
    assert!(
        out.stdout
            .contains("demo: every recorded observation was stored, delivered and verified"),
        "{}",
        out.stdout
    );
    // The BLE devices run too (scripts/test installs dbus-daemon): the real captures of the
    // Polar H7 (3 notifications: 3 HR + 4 RR-intervals) and the A&D scale (2 weights).
    for row in [
        "ble:00:22:D0:90:4C:14          7        7          7         7  ok",
        "ble:5C:31:3E:01:16:6D          2        2          2         2  ok",
        // Issue 11 item 3: the ECG device, a shell plug-in replaying 20 s of MIT-BIH 208 as
        // one waveform observation (360 samples) a second.
        "exec:bed16-ecg                20       20         20        20  ok",
        // Issue 11 item 3: the CMS50E's 1.7 s as SpO2, pulse and one pleth array a second.
        "serial:bed1-spo2               6        6          6         6  ok",
        "refused:  ble:C4:7C:8D:6A:11:22 (0 observations stored",
        // Issue 10 item 9: the serial oximeter updated over SMP on its own line (signed job,
        // HTTPS download with the gateway's certificate, verified, tested, confirmed), its
        // version read back from the device.
        "every device updated",
    ] {
        assert!(
            out.stdout.contains(row),
            "demo output lacks `{row}`:\n{}",
            out.stdout
        );
    }
    // Issue 11 item 7: each device's configured location, as the receiver stored it with the
    // device's rows (read back from the receiver's SQLite output: it travelled in the batches).
    for (device, location) in DEMO_LOCATIONS {
        if device == "exec:bed15-plugin" && plugin_readings() == 0 {
            continue;
        }
        let cols: Vec<&str> = out
            .stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|c| c.len() == 7 && c[0] == device && c[5] == "ok")
            .unwrap_or_else(|| panic!("no observation row for {device}:\n{}", out.stdout));
        assert_eq!(cols[6], location, "{device}: {cols:?}");
    }
    // Issue 11 item 2: the example plug-in, a python3 child process of the daemon (the demo
    // leaves it out without python3, and says so).
    if Path::new("/usr/bin/python3").is_file() {
        let row = "exec:bed15-plugin            204      204        204       204  ok";
        assert!(
            out.stdout.contains(row),
            "demo output lacks `{row}`:\n{}",
            out.stdout
        );
    } else {
        wardgate_e2e::skip_or_fail("the demo's plug-in device needs /usr/bin/python3");
    }
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("serial:bed1-spo2") && l.contains(" 1.0.0 "))
        .unwrap_or_else(|| panic!("no firmware row for bed1-spo2:\n{}", out.stdout));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        (cols[1], cols[2], cols[5], cols[6]),
        ("1.0.0", "1.1.0", "1.1.0", "ok"),
        "from, to, running, result: {row}"
    );
    let image = std::fs::metadata(dir.join("images/oximeter-cms50-1.1.0.bin")).unwrap();
    assert_eq!(cols[3], image.len().to_string(), "bytes: {row}");
    // And the bonded BLE scale over the SMP GATT service of the simulated BlueZ.
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("ble:5C:31:3E:01:16:6D") && l.contains(" 2.0.0 "))
        .unwrap_or_else(|| panic!("no firmware row for the scale:\n{}", out.stdout));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        (cols[1], cols[2], cols[5], cols[6]),
        ("2.0.0", "2.1.0", "2.1.0", "ok"),
        "from, to, running, result: {row}"
    );
    let mut msgs: Vec<PathBuf> = std::fs::read_dir(dir.join("messages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    msgs.sort();
    assert!(!msgs.is_empty());
    (dir.join("gateway.pem"), msgs)
}

fn verify(cert: &Path, files: &[PathBuf], stdin: &[u8]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["verify".as_ref(), "--cert".as_ref(), cert.as_os_str()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    wardgate(&args, stdin)
}

/// A copy of `src` with one byte flipped at `at` (from the end when negative).
fn tampered(src: &Path, dir: &Path, at: isize) -> PathBuf {
    let mut b = std::fs::read(src).unwrap();
    let i = if at < 0 {
        (b.len() as isize + at) as usize
    } else {
        at as usize
    };
    b[i] ^= 0x01;
    let p = dir.join(format!(
        "tampered-{}",
        src.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&p, b).unwrap();
    p
}

#[test]
fn decode_cms50_recording_prints_one_json_line_per_observation_with_the_recorded_values() {
    let file = real_recording("cms50e_live_capture.bin");
    let out = wardgate(
        &[
            "decode".as_ref(),
            "--protocol".as_ref(),
            "cms50".as_ref(),
            file.as_os_str(),
        ],
        b"",
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(out.stderr, "", "no decoder errors in a clean recording");
    let lines = json_lines(&out);
    assert_eq!(
        lines.len(),
        CMS50_OBSERVATIONS,
        "102 frames = 1.7 s: per second SpO2, pulse and one pleth array"
    );
    for l in &lines {
        for key in ["code", "value", "unit", "device", "status"] {
            assert!(l.get(key).is_some(), "`{key}` missing in {l}");
        }
        assert_eq!(l["device"], "file:cms50e_live_capture.bin");
        assert!(
            l["status"].as_array().is_some_and(|s| s.is_empty()),
            "clean frames have no status flags: {l}"
        );
    }
    // Against the CSV transcription: SpO2 99 and pulse 60 of each second's last frame (59,
    // 101), then the second's pleth samples = wire byte & 0x7F, every one, in one line.
    let csv = std::fs::read_to_string(real_recording("cms50e_live_capture.expected.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 102);
    let col = |i: usize, c: usize| -> f64 { rows[i][c].parse().unwrap() };
    for (second, (lines, frames)) in lines.chunks(3).zip([0..60, 60..102]).enumerate() {
        let last = frames.end - 1;
        assert_eq!(
            (
                lines[0]["code"].as_u64(),
                lines[0]["value"].as_f64(),
                lines[0]["unit"].as_u64()
            ),
            (Some(150456), Some(col(last, 7)), Some(262688)),
            "second {second}: SpO2 {}",
            lines[0]
        );
        assert_eq!(
            (
                lines[1]["code"].as_u64(),
                lines[1]["value"].as_f64(),
                lines[1]["unit"].as_u64()
            ),
            (Some(149530), Some(col(last, 6)), Some(264864)),
            "second {second}: pulse {}",
            lines[1]
        );
        let w = &lines[2];
        assert_eq!(
            (w["code"].as_u64(), w["unit"].as_u64(), w["ucum"].as_str()),
            (Some(150452), Some(262656), Some("1")),
            "second {second}: pleth {w}"
        );
        assert_eq!(
            (
                w["period_us"].as_u64(),
                w["scale"].as_f64(),
                w["offset"].as_f64()
            ),
            (Some(16_667), Some(1.0), Some(0.0))
        );
        let samples: Vec<f64> = serde_json::from_value(w["samples"].clone()).unwrap();
        let want: Vec<f64> = frames.map(|i| (col(i, 4) as u32 & 0x7F) as f64).collect();
        assert_eq!(samples, want, "second {second}: pleth samples");
        assert_eq!(w["value"].as_f64(), Some(want[0]), "value = first sample");
    }
    // The same capture as ASCII hex decodes to the same observations.
    let hex = real_recording("cms50e_live_capture.hex.txt");
    let out_hex = wardgate(
        &[
            "decode".as_ref(),
            "--protocol".as_ref(),
            "cms50".as_ref(),
            hex.as_os_str(),
        ],
        b"",
    );
    let hex_lines: Vec<Value> = json_lines(&out_hex)
        .into_iter()
        .map(|mut v| {
            v["device"] = Value::Null;
            v
        })
        .collect();
    let bin_lines: Vec<Value> = lines
        .into_iter()
        .map(|mut v| {
            v["device"] = Value::Null;
            v
        })
        .collect();
    assert_eq!(
        hex_lines, bin_lines,
        "hex transcription and binary capture decode alike"
    );
}

#[test]
fn decode_ivy_recording_and_usage_errors() {
    let file = real_recording("ivy450c_ansarb_capture.bin");
    let out = wardgate(
        &[
            "decode".as_ref(),
            "--protocol".as_ref(),
            "ansar-b".as_ref(),
            file.as_os_str(),
        ],
        b"",
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 297, "27 messages × 11 numerics");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["code"] == 147842 && l["value"] == 80.0)
            .count(),
        27,
        "HR 80 in every message"
    );
    let no_protocol = wardgate(&["decode".as_ref(), file.as_os_str()], b"");
    assert_ne!(no_protocol.code(), Some(0));
    assert!(
        no_protocol.stderr.contains("--protocol"),
        "{}",
        no_protocol.stderr
    );
    let unknown = wardgate(
        &[
            "decode".as_ref(),
            "--protocol".as_ref(),
            "foo".as_ref(),
            file.as_os_str(),
        ],
        b"",
    );
    assert_ne!(unknown.code(), Some(0));
    assert!(
        unknown.stderr.contains("unknown protocol `foo`"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn verify_prints_payloads_of_genuine_messages_and_rejects_tampered_ones() {
    let scratch = wardgate_e2e::temp_dir("cli-verify").unwrap();
    let (cert, msgs) = demo_messages(&scratch.path().join("demo"));
    let (cert, msgs) = (&cert, &msgs);
    let out = verify(cert, msgs, b"");
    assert_eq!(out.code(), Some(0), "{out:?}");
    let payloads = json_lines(&out);
    assert_eq!(payloads.len(), msgs.len(), "one payload per message");
    let mut seqs = BTreeSet::new();
    let mut ecg = BTreeMap::new();
    for p in &payloads {
        assert_eq!(p["v"], 1);
        for key in ["gateway", "site", "ward", "batch", "observations", "events"] {
            assert!(p.get(key).is_some(), "`{key}` missing");
        }
        for o in p["observations"].as_array().unwrap() {
            for key in ["seq", "device", "code", "value", "unit", "gateway_time"] {
                assert!(o.get(key).is_some(), "observation without `{key}`: {o}");
            }
            assert!(
                seqs.insert(o["seq"].as_u64().unwrap()),
                "seq twice in the demo's messages"
            );
            // Each observation's device has its location in the batch (issue 11 item 7).
            let device = o["device"].as_str().unwrap();
            let want = DEMO_LOCATIONS.iter().find(|(d, _)| *d == device).unwrap().1;
            assert_eq!(
                p["locations"][device], want,
                "{device} in batch {}",
                p["batch"]
            );
            if o["device"] == "exec:bed16-ecg" {
                let samples: Vec<i32> =
                    serde_json::from_value(o["waveform"]["samples"].clone()).unwrap();
                ecg.insert(o["seq"].as_u64().unwrap(), samples);
            }
        }
    }
    // The ECG device's waveforms, in seq order, are the first 20 s of MIT-BIH 208, every sample.
    let adc: Vec<i32> = std::fs::read(
        wardgate_e2e::workspace_root()
            .join("data/real/physio/mitdb208_excerpt_360hz_adc_u16le.bin"),
    )
    .unwrap()
    .chunks_exact(2)
    .map(|b| i32::from(u16::from_le_bytes([b[0], b[1]])))
    .collect();
    let printed: Vec<i32> = ecg.into_values().flatten().collect();
    assert_eq!(printed, adc[..20 * 360], "the demo ECG, sample for sample");
    assert_eq!(
        seqs.len(),
        CMS50_OBSERVATIONS + 297 + 7 + 2 + 20 + plugin_readings(),
        "every recorded observation is in the messages (serial, BLE, the ECG and the plug-in)"
    );
    // One message on standard input.
    let stdin = wardgate(
        &[
            "verify".as_ref(),
            "--cert".as_ref(),
            cert.as_os_str(),
            "-".as_ref(),
        ],
        &std::fs::read(&msgs[0]).unwrap(),
    );
    assert_eq!(stdin.code(), Some(0), "{stdin:?}");
    assert_eq!(json_lines(&stdin)[0], payloads[0]);

    // A flipped bit in the signature, and one in the payload.
    for at in [-1, msgs[0].metadata().unwrap().len() as isize / 2] {
        let bad = tampered(&msgs[0], scratch.path(), at);
        let out = verify(cert, &[msgs[1].clone(), bad.clone()], b"");
        assert_eq!(out.code(), Some(1), "tampered at {at}: {out:?}");
        assert_eq!(
            json_lines(&out).len(),
            1,
            "the genuine one is still printed"
        );
        assert!(
            out.stderr.starts_with(&format!("{}: ", bad.display())),
            "names the file: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("bad signature") || out.stderr.contains("not a"),
            "{}",
            out.stderr
        );
    }
    // Signed by someone else (the certificate of another gateway).
    let other = wardgate_e2e::broker::Pki::create(&scratch.path().join("pki"), "other").unwrap();
    let out = verify(&other.gateway_cert, &msgs[..1], b"");
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("unknown kid"), "{}", out.stderr);
    // Not COSE at all.
    let junk = scratch.path().join("junk.cose");
    std::fs::write(&junk, b"hello").unwrap();
    let out = verify(cert, &[junk], b"");
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("not a COSE_Sign1"), "{}", out.stderr);
}

#[test]
fn independent_python_verifier_accepts_genuine_and_rejects_tampered_messages() {
    let scratch = wardgate_e2e::temp_dir("cli-python").unwrap();
    let (cert, msgs) = demo_messages(&scratch.path().join("demo"));
    let (cert, msgs) = (&cert, &msgs);
    let s = python::verify(TARGET_TMP.as_ref(), cert, msgs).unwrap();
    assert_eq!(
        s.output.code(),
        Some(0),
        "verify_cose.py on genuine messages: {:?}",
        s.output
    );
    assert_eq!(s.totals["verified"].as_u64(), Some(msgs.len() as u64));
    assert_eq!(
        s.totals["unique_observations"],
        CMS50_OBSERVATIONS + 297 + 7 + 2 + 20 + plugin_readings(),
        "{}",
        s.totals
    );
    if plugin_readings() > 0 {
        assert_eq!(
            s.totals["per_device"]["exec:bed15-plugin"],
            plugin_readings() as u64
        );
    }
    assert_eq!(
        s.totals["per_device"]["serial:bed1-spo2"],
        CMS50_OBSERVATIONS as u64
    );
    assert_eq!(s.totals["per_device"]["serial:bed2-monitor"], 297);
    assert_eq!(s.totals["per_device"]["ble:00:22:D0:90:4C:14"], 7);
    assert_eq!(s.totals["per_device"]["ble:5C:31:3E:01:16:6D"], 2);
    assert_eq!(s.totals["per_device"]["exec:bed16-ecg"], 20);
    // Every observation of each device travelled with its one location.
    for (device, location) in DEMO_LOCATIONS {
        if device == "exec:bed15-plugin" && plugin_readings() == 0 {
            continue;
        }
        assert_eq!(
            s.totals["per_location"][device],
            serde_json::json!({ location: s.totals["per_device"][device] }),
            "{device}: {}",
            s.totals
        );
    }

    let bad_sig = tampered(&msgs[0], scratch.path(), -1);
    let s = python::verify(TARGET_TMP.as_ref(), cert, std::slice::from_ref(&bad_sig)).unwrap();
    assert_eq!(s.output.code(), Some(1), "{:?}", s.output);
    assert!(
        s.output
            .stderr
            .contains(&format!("{}: bad signature", bad_sig.display())),
        "{}",
        s.output.stderr
    );
    let other = wardgate_e2e::broker::Pki::create(&scratch.path().join("pki"), "other").unwrap();
    let s = python::verify(TARGET_TMP.as_ref(), &other.gateway_cert, &msgs[..1]).unwrap();
    assert_eq!(s.output.code(), Some(1), "{:?}", s.output);
    assert!(
        s.output.stderr.contains("unknown kid"),
        "{}",
        s.output.stderr
    );
}

#[test]
fn decode_lines_needs_a_map_and_refuses_a_bad_one_at_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("capture.txt");
    std::fs::write(&capture, "SPO2=97 PR=72\nSPO2=x PR=71\n").unwrap();
    let no_map = wardgate(
        &[
            "decode".as_ref(),
            "--protocol".as_ref(),
            "lines".as_ref(),
            capture.as_os_str(),
        ],
        b"",
    );
    assert_eq!(no_map.code(), Some(2), "{no_map:?}");
    assert!(
        no_map.stderr.contains("--protocol lines needs --map FILE"),
        "{}",
        no_map.stderr
    );
    let map = dir.path().join("map.toml");
    let text = "[[lines_map]]\nname = \"kv\"\nsyntax = \"kv\"\n\n[[lines_map.field]]\nname = \"spo2\"\nkey = \"SPO2\"\nmdc = \"MDC_PULS_OXIM_SAT_O2\"\nunit = \"%\"\n\n[[lines_map.field]]\nname = \"pr\"\nkey = \"PR\"\nmdc = \"MDC_PULS_OXIM_PULS_RATE\"\nunit = \"/min\"\n";
    std::fs::write(&map, text).unwrap();
    let args = |m: &Path| {
        wardgate(
            &[
                "decode".as_ref(),
                "--protocol".as_ref(),
                "lines".as_ref(),
                "--map".as_ref(),
                m.as_os_str(),
                capture.as_os_str(),
            ],
            b"",
        )
    };
    let bad = args(&map);
    assert_eq!(bad.code(), Some(2), "{bad:?}");
    assert_eq!(
        bad.stderr.trim(),
        format!(
            "{}:15:8: lines_map `kv`: unit \"/min\" is ambiguous: write \"{{beat}}/min\" or \"{{breath}}/min\"",
            map.display()
        )
    );
    std::fs::write(&map, text.replace("\"/min\"", "\"{beat}/min\"")).unwrap();
    let good = args(&map);
    assert_eq!(good.code(), Some(0), "{good:?}");
    let lines = json_lines(&good);
    assert_eq!(lines.len(), 2, "{}", good.stdout);
    assert_eq!(
        (lines[0]["code"].as_u64(), lines[0]["value"].as_f64()),
        (Some(150456), Some(97.0))
    );
    assert_eq!(
        good.stderr.trim(),
        format!(
            "{}: byte offset 14: field \"spo2\" (key SPO2): value is not a number",
            capture.display()
        )
    );
}
