//! `wardgate decode --profile NAME HEX` through the real binary: JSON lines on stdout, errors
//! as `hex: byte offset N: message` with exit 1, unknown profile exit 2, and `--protocol`
//! unchanged.

use std::process::{Command, Output};

fn wardgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wardgate"))
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .output()
        .expect("run wardgate")
}

fn lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect(l))
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn heart_rate_capture_prints_observations() {
    // data/real/ble/gatt_notifications.csv ble-gatt-03 (Polar H7).
    let o = wardgate(&["decode", "--profile", "heart-rate", "104ed202c802"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let l = lines(&o);
    assert_eq!(l.len(), 3);
    assert_eq!(
        l[0],
        serde_json::json!({"device":"hex","code":147842,"value":78.0,"unit":264864,"ucum":"/min","status":[]})
    );
    assert_eq!(
        (l[1]["code"].as_u64(), l[1]["ucum"].as_str()),
        (Some(147_240), Some("ms"))
    );
    assert!((l[1]["value"].as_f64().unwrap() - 705.078).abs() < 0.001);
}

#[test]
fn weight_capture_has_device_time() {
    // ble-gatt-01 (A&D UC-352BLE).
    let o = wardgate(&["decode", "--profile", "weight", "025433ea070816082a24"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let l = lines(&o);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["code"], 188_736);
    assert_eq!(l[0]["value"], 65.7);
    assert_eq!(l[0]["ucum"], "kg");
    assert_eq!(l[0]["device_time"], "2026-08-22T08:42:36");
}

#[test]
fn every_profile_name_is_accepted() {
    for (p, hex) in [
        ("heart-rate", "0055"),
        ("blood-pressure", "00bdf00b009ff0"),
        ("cuff-pressure", "00d7f000000000"),
        ("thermometer", "06b00e00fedc070c050b321b04"),
        ("plx-spot", "0062004800"),
        ("plx-continuous", "00e8f384f3"),
        ("weight", "00b036"),
        ("glucose", "0a0200e207041a0b091e5ab0110000"),
        ("battery", "64"),
        ("ibeacon", "0215a495bb70c5b14b44b5121370f02d74de005806c8c5"),
        ("eddystone", "20000b1813000000146700002ac4"),
        ("bthome", "4002ca0903bf13"),
        (
            "advertisement",
            "0201061aff4c0002154142434445464748494041424344454600010002f8",
        ),
    ] {
        let o = wardgate(&["decode", "--profile", p, hex]);
        assert_eq!(o.status.code(), Some(0), "{p}: {}", stderr(&o));
        assert!(!lines(&o).is_empty(), "{p}");
    }
}

#[test]
fn glucose_line_carries_the_sequence_number() {
    let o = wardgate(&[
        "decode",
        "--profile",
        "glucose",
        "0a0200e207041a0b091e5ab0110000",
    ]);
    let l = lines(&o);
    assert_eq!(l[0]["sequence"], 2);
    assert_eq!(l[0]["code"], 160_184);
    assert_eq!(l[0]["ucum"], "mg/dL");
}

#[test]
fn beacon_prints_presence_then_observations() {
    let o = wardgate(&[
        "decode",
        "--profile",
        "eddystone",
        "20000b1813000000146700002ac4",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let l = lines(&o);
    assert_eq!(l[0]["presence"]["kind"], "eddystone-tlm");
    assert_eq!(l[0]["presence"]["battery_mv"], 2840);
    assert_eq!(l[1]["code"], 188_508);
    assert_eq!(l[1]["value"], 19.0);
}

#[test]
fn decode_error_is_reported_with_offset_and_exit_1() {
    // C-05: RR flag set, RR missing.
    let o = wardgate(&["decode", "--profile", "heart-rate", "170101"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert_eq!(
        stderr(&o),
        "hex: byte offset 3: RR-interval: flag set but no RR-interval present\n"
    );
    let o = wardgate(&["decode", "--profile", "battery", "6x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("hex: byte offset 0: "),
        "{}",
        stderr(&o)
    );
    let o = wardgate(&["decode", "--profile", "bthome", "41a1b2c3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("encrypted"), "{}", stderr(&o));
}

#[test]
fn unknown_profile_exits_2() {
    let o = wardgate(&["decode", "--profile", "fitbit", "00"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown profile `fitbit`"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("heart-rate"), "{}", stderr(&o));
}

#[test]
fn protocol_and_profile_are_mutually_exclusive() {
    let o = wardgate(&[
        "decode",
        "--protocol",
        "cms50",
        "--profile",
        "battery",
        "64",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
}

#[test]
fn protocol_file_still_works() {
    let dir = std::env::temp_dir().join(format!("wardgate-decode-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("empty.bin");
    std::fs::write(&file, b"").unwrap();
    // An empty recording: nothing decoded → exit 1 with the usual message.
    let o = wardgate(&["decode", "--protocol", "cms50", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no observations decoded as cms50"),
        "{}",
        stderr(&o)
    );
    let o = wardgate(&["decode", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--protocol"), "{}", stderr(&o));
    let o = wardgate(&["decode", "--protocol", "foo", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).ok();
}
