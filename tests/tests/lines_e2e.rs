//! `lines` devices on real pseudo-terminals → `wardgate run` (a child process) → real mosquitto
//! with mutual TLS → `wardgate receive` → SQLite. What a user checks: every good line's values
//! arrive with the device's time and record number; a line that does not parse, a value the
//! device cannot send, a line from another device (wrong id) is never stored, and is reported
//! upstream with its byte offset and counted in `wardgate status`; `wardgate decode --protocol
//! lines --map` on the same capture shows the same readings.

use std::path::Path;
use std::time::Duration;
use wardgate_e2e::env::{ReceiverOptions, TestEnv};
use wardgate_sim::devsim::{Pace, SimulatedPort};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");

const SPO2: u32 = 150456;
const PULSE_OXIM: u32 = 149530;
const NIBP_SYS: u32 = 150021;
const TEMP_BODY: u32 = 150364;

fn example_maps() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/profiles/lines-example.toml"),
    )
    .unwrap()
}

/// `$BODY*HH` with the NMEA XOR checksum, CR LF.
fn nmea(body: &str) -> String {
    let sum = body.bytes().fold(0u8, |a, b| a ^ b);
    format!("${body}*{sum:02X}\r\n")
}

/// The ESP32 device's capture: good lines, and five that must not be stored.
fn oximeter_capture() -> (String, Vec<(u64, &'static str)>) {
    let mut text = String::new();
    let mut bad = Vec::new();
    let good = |i: u32| {
        format!(
            "{{\"dev\":\"ox-001\",\"spo2\":{},\"pulse\":{},\"ts\":{},\"seq\":{i}}}\n",
            90 + i % 10,
            60 + i,
            1_718_000_000_000_000u64 + u64::from(i) * 1_000_000
        )
    };
    for i in 1..=20 {
        match i {
            3 => {
                // Which SpO2 is meant? Neither is stored.
                bad.push((text.len() as u64, "key \"spo2\" appears twice in the line"));
                text.push_str(
                    "{\"dev\":\"ox-001\",\"spo2\":93,\"spo2\":12,\"pulse\":63,\"seq\":3}\n",
                );
            }
            5 => {
                bad.push((text.len() as u64, "not JSON"));
                text.push_str("{\"dev\":\"ox-001\",\"spo2\":9\n");
            }
            9 => {
                bad.push((text.len() as u64, "outside what the device can send"));
                text.push_str("{\"dev\":\"ox-001\",\"spo2\":101,\"pulse\":70,\"seq\":9}\n");
            }
            13 => {
                // Another oximeter on this cable: its readings are not this bed's.
                bad.push((text.len() as u64, "reports serial number ox-002"));
                text.push_str("{\"dev\":\"ox-002\",\"spo2\":88,\"pulse\":120,\"seq\":13}\n");
            }
            17 => {
                bad.push((text.len() as u64, "not UTF-8 text"));
                text.push_str("{\"dev\":\"ox-001\",\"spo2\":\u{FFFD}}\n");
            }
            _ => text.push_str(&good(i)),
        }
    }
    (text, bad)
}

#[test]
fn lines_devices_on_ptys_arrive_upstream_and_bad_lines_are_reported_never_stored() {
    let env = TestEnv::new("lines", BIN).unwrap();
    let gw_cfg = env.write_gateway_config(&env.gateway_options()).unwrap();
    let mut cfg = std::fs::read_to_string(&gw_cfg).unwrap();
    cfg.push_str(
        "\n[[serial]]\nname = \"bed1-ox\"\npath = \"dev/bed1-ox\"\nprotocol = \"lines\"\nmap = \"esp32-oximeter\"\nbaud = 115200\nserial_number = \"ox-001\"\nmax_backoff_s = 1\n\
         \n[[serial]]\nname = \"bed2-nibp\"\npath = \"dev/bed2-nibp\"\nprotocol = \"lines\"\nmap = \"nibp-export\"\nbaud = 9600\nmax_backoff_s = 1\n\n",
    );
    cfg.push_str(&example_maps());
    std::fs::write(&gw_cfg, &cfg).unwrap();
    let check = env
        .cli(
            &["check-config".as_ref(), gw_cfg.as_os_str()],
            b"",
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!(check.code(), Some(0), "check-config: {check:?}");

    let dev = env.dev_dir();
    std::fs::create_dir_all(&dev).unwrap();
    let mut ox = SimulatedPort::open(&dev.join("bed1-ox"), None).unwrap();
    let mut nibp = SimulatedPort::open(&dev.join("bed2-nibp"), None).unwrap();
    let mut receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut gateway = env.spawn_gateway(&gw_cfg).unwrap();
    // The ports are open before a byte is sent (a pty keeps nothing for a reader to come).
    for name in ["bed1-ox", "bed2-nibp"] {
        gateway
            .wait_stderr(
                &format!("serial {name}: connected to"),
                1,
                Duration::from_secs(20),
            )
            .unwrap();
    }
    let (ox_text, ox_bad) = oximeter_capture();
    let mut ox_bytes = ox_text.into_bytes();
    // Line 17's bad byte: a lone 0xFF in place of the replacement character.
    let at = ox_bytes
        .windows(3)
        .position(|w| w == "\u{FFFD}".as_bytes())
        .unwrap();
    ox_bytes.splice(at..at + 3, [0xFF]);
    let ox_bad: Vec<(u64, &str)> = ox_bad
        .into_iter()
        .map(|(o, w)| (if o > at as u64 { o - 2 } else { o }, w))
        .collect();
    let nibp_text = [
        nmea("NIBP,2024-06-10 06:13:20,121,79,93,64,368,0000"),
        "$STAT,battery ok*00\r\n".to_string(),
        nmea("NIBP,2024-06-10 06:18:20,118,77,90,---,369,0041"),
    ]
    .concat();
    let t1 = std::thread::spawn({
        let bytes = ox_bytes.clone();
        move || {
            ox.replay(&bytes, Pace::Baud(115_200), 1.0, Duration::from_secs(5))
                .map(|_| ox)
        }
    });
    let t2 = std::thread::spawn({
        let bytes = nibp_text.clone().into_bytes();
        move || {
            nibp.replay(&bytes, Pace::Baud(9600), 1.0, Duration::from_secs(5))
                .map(|_| nibp)
        }
    });
    let mut ox = t1.join().unwrap().unwrap();
    let _nibp = t2.join().unwrap().unwrap();
    // Then one endless line (12 wrong-baud windows of 4096 bytes, no terminator) and a good
    // line: a device that was decoding fine gets the too-long error, not a baud-rate diagnosis.
    let endless_at = ox_bytes.len() as u64;
    let mut tail = vec![b'9'; 12 * 4096];
    tail.extend_from_slice(
        b"\n{\"dev\":\"ox-001\",\"spo2\":91,\"pulse\":81,\"ts\":1718000021000000,\"seq\":21}\n",
    );
    ox.replay(&tail, Pace::Baud(115_200), 10.0, Duration::from_secs(5))
        .unwrap();

    // 16 good oximeter lines × 2 readings; 2 NIBP lines: 5 + 4 readings.
    let want = [
        ("serial:bed1-ox".to_string(), 32),
        ("serial:bed2-nibp".to_string(), 9),
    ];
    env.wait_delivered(&want, Duration::from_secs(30)).unwrap();
    // Wait for the error events too, then stop cleanly.
    let up = env.upstream();
    wardgate_e2e::wait_for("the error events upstream", Duration::from_secs(20), || {
        Ok(up
            .events()?
            .iter()
            .filter(|e| e.device == "serial:bed1-ox" && e.kind == "error")
            .count()
            >= 6)
    })
    .unwrap();
    // Counted in `wardgate status` (its snapshot is written every 2 s): the four malformed
    // lines and the endless one (the foreign one parsed and was held back by the identity gate).
    let want_ox = "adapter:  bed1-ox (0 failures, 0 restarts, 17 frames, 5 frame errors";
    let want_nibp = "adapter:  bed2-nibp (0 failures, 0 restarts, 3 frames, 0 frame errors";
    let mut status = String::new();
    wardgate_e2e::wait_for(
        "the counts in wardgate status",
        Duration::from_secs(20),
        || {
            status = env
                .cli(
                    &["status".as_ref(), "--config".as_ref(), gw_cfg.as_os_str()],
                    b"",
                    Duration::from_secs(20),
                )?
                .stdout;
            Ok(status.contains(want_ox) && status.contains(want_nibp))
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {status}"));
    // The journal: the endless line's own error, once, and no baud-rate diagnosis.
    let journal = gateway.stderr();
    assert_eq!(
        wardgate_e2e::count_lines(
            &journal,
            &format!(
                "serial bed1-ox: line longer than max_line (256 bytes) at byte offset {endless_at}"
            )
        ),
        1,
        "{journal}"
    );
    assert_eq!(
        wardgate_e2e::count_lines(&journal, "check the baud rate"),
        0,
        "{journal}"
    );
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "{st}");
    receiver.terminate(Duration::from_secs(10)).unwrap();

    // Exactly the good lines' readings, with their values, device time and record number.
    let counts = up.count_by_device().unwrap();
    assert_eq!(
        counts,
        want.iter()
            .cloned()
            .collect::<std::collections::BTreeMap<_, _>>()
    );
    let obs = up.observations().unwrap();
    let ox: Vec<_> = obs
        .iter()
        .filter(|o| o.device == "serial:bed1-ox")
        .collect();
    let good: Vec<u32> = (1..=21)
        .filter(|i| ![3, 5, 9, 13, 17].contains(i))
        .collect();
    let spo2: Vec<(f64, String)> = ox
        .iter()
        .filter(|o| o.code == SPO2)
        .map(|o| (o.value.unwrap(), o.status.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        spo2,
        good.iter()
            .map(|i| (f64::from(90 + i % 10), format!("record={i}")))
            .collect::<Vec<_>>()
    );
    let pulse: Vec<f64> = ox
        .iter()
        .filter(|o| o.code == PULSE_OXIM)
        .map(|o| o.value.unwrap())
        .collect();
    assert_eq!(
        pulse,
        good.iter().map(|i| f64::from(60 + i)).collect::<Vec<_>>()
    );
    assert!(!ox
        .iter()
        .any(|o| [88.0, 101.0, 12.0, 93.0].contains(&o.value.unwrap())));
    let rx_db = rusqlite::Connection::open(&up.path).unwrap();
    let times: Vec<(String, String)> = rx_db
        .prepare("SELECT device_time, time_quality FROM observations WHERE device = 'serial:bed1-ox' AND code = ?1 ORDER BY seq")
        .unwrap()
        .query_map([SPO2], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(times[0], ("2024-06-10T06:13:21".into(), "device".into()));
    assert_eq!(times.len(), 16);
    let nibp: Vec<(u32, f64, String)> = obs
        .iter()
        .filter(|o| o.device == "serial:bed2-nibp")
        .map(|o| {
            (
                o.code,
                o.value.unwrap(),
                o.status.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(nibp[0], (NIBP_SYS, 121.0, String::new()));
    assert_eq!(nibp[4].0, TEMP_BODY);
    assert!((nibp[4].1 - 36.8).abs() < 1e-9, "{nibp:?}");
    assert_eq!(
        nibp[5],
        (NIBP_SYS, 118.0, "alarm-sys-high,low-battery".into())
    );

    // Each refused line reported upstream at its byte offset.
    let events = up.events().unwrap();
    let errors: Vec<String> = events
        .iter()
        .filter(|e| e.device == "serial:bed1-ox" && e.kind == "error")
        .map(|e| e.detail.clone().unwrap_or_default())
        .collect();
    for (offset, why) in &ox_bad {
        if why.contains("ox-002") {
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains("reports serial number ox-002, configured ox-001")),
                "{errors:?}"
            );
        } else {
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains(why) && e.ends_with(&format!("at byte offset {offset}"))),
                "{why} at {offset}: {errors:?}"
            );
        }
    }

    // `wardgate decode` shows what the map makes of the same capture: the same readings.
    let capture = env.dir.join("bed1-ox.capture");
    std::fs::write(&capture, &ox_bytes).unwrap();
    let maps = env.dir.join("maps.toml");
    std::fs::write(&maps, example_maps()).unwrap();
    let out = env
        .cli(
            &[
                "decode".as_ref(),
                "--protocol".as_ref(),
                "lines".as_ref(),
                "--map".as_ref(),
                maps.as_os_str(),
                "--map-name".as_ref(),
                "esp32-oximeter".as_ref(),
                capture.as_os_str(),
            ],
            b"",
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!(out.code(), Some(0), "{out:?}");
    let decoded: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // decode has no identity gate: it shows the foreign device's line too, and says so.
    assert_eq!(decoded.len(), 32);
    assert!(
        out.stderr.contains("device reports serial number ox-001")
            && out.stderr.contains("device reports serial number ox-002 from output line 19 on (was ox-001): a gateway with serial_number = \"ox-001\" holds these lines back")
            && out.stderr.contains("device reports serial number ox-001 again from output line 21 on (was ox-002)"),
        "{}",
        out.stderr
    );
    let decoded_spo2: Vec<f64> = decoded
        .iter()
        .filter(|v| v["code"] == SPO2 && v["status"][0] != "record=13")
        .map(|v| v["value"].as_f64().unwrap())
        .collect();
    // The capture ends before the endless line and line 21.
    assert_eq!(
        decoded_spo2,
        spo2[..spo2.len() - 1]
            .iter()
            .map(|(v, _)| *v)
            .collect::<Vec<_>>()
    );
    assert!(
        out.stderr.contains(&format!(
            "byte offset {}: key \"spo2\" appears twice in the line",
            ox_bad[0].0
        )),
        "{}",
        out.stderr
    );
    assert_eq!(
        wardgate_e2e::count_lines(&out.stderr, "byte offset"),
        4,
        "{}",
        out.stderr
    );
}
