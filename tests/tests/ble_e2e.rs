//! BLE end to end with real parts: btleplug's real BlueZ code path in `wardgate run` (a child
//! process) talks to a simulated BlueZ on a private dbus-daemon; the simulated devices send the
//! real captures of `data/real/ble/`; observations travel the same store → COSE_Sign1 → real
//! mosquitto (mutual TLS) → `wardgate receive` path as the serial ones. What a user checks:
//! the values arrive once, signed; refused devices are visible and never stored; a link loss
//! costs nothing and never doubles a subscription.

use std::time::Duration;
use wardgate_e2e::ble::{captured_advert, gatt_capture, write_config_with_ble, BleWorld};
use wardgate_e2e::env::{ReceiverOptions, TestEnv};
use wardgate_e2e::wait_for;
use wardgate_sim::blesim::{self, Advert, DeviceInformation, Pairing, SimDevice};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");

use wardgate_adapters::observation::mdc::{
    BATTERY_CHARGE as BATTERY, BODY_WEIGHT, GLU_CAPILLARY_WHOLEBLOOD as GLUCOSE_CAPILLARY,
    HEART_RATE_ECG as HEART_RATE, PVT_DOSES_REMAINING as DOSES_REMAINING,
    PVT_INHALER_ACTUATION as INHALER_ACTUATION, RR_INTERVAL, TEMP_BODY,
};

/// A test address for the Polar H7 (Polar's OUI 00:22:D0; the capture does not carry one).
const STRAP: &str = "00:22:D0:90:4C:14";
/// A test address for the A&D UC-352BLE scale.
const SCALE: &str = "5C:31:3E:01:16:6D";

fn hr_uuid() -> String {
    blesim::uuid16(0x2A37)
}

fn strap() -> SimDevice {
    let mut d = blesim::heart_rate_strap(
        STRAP,
        &DeviceInformation::new("Polar Electro Oy", "Polar H7", "D7904C14", "1.4.0"),
    );
    d.address_type = blesim::AddressType::Public;
    d.name = Some("Polar H7 D7904C14".into());
    d
}

fn scale() -> SimDevice {
    let mut d = blesim::weight_scale(
        SCALE,
        &DeviceInformation::new("A&D Medical", "UC-352BLE", "5130116", "2.0"),
    );
    d.paired = true;
    d.bonded = true;
    d
}

const BLE_CONFIG: &str = r#"
[ble]
adapter = "hci0"

[[ble.device]]
name = "bed4-hr"
address = "00:22:D0:90:4C:14"
require_bond = false
profiles = ["heart-rate", "battery"]

[[ble.device]]
name = "bed4-scale"
address = "5C:31:3E:01:16:6D"
"#;

fn wait_sim(what: &str, secs: u64, f: impl FnMut() -> bool) {
    let mut f = f;
    wait_for(what, Duration::from_secs(secs), || Ok(f())).unwrap();
}

#[test]
fn ble_devices_are_admitted_decoded_delivered_signed_and_resubscribed_once_after_link_loss() {
    let env = TestEnv::new("ble", BIN).unwrap();
    let ble = BleWorld::start().unwrap();
    let sim = &ble.sim;
    sim.place_device(strap());
    sim.add_device(scale()); // bonded from an earlier `wardgate pair`
    let cfg = write_config_with_ble(&env, &env.gateway_options(), BLE_CONFIG).unwrap();
    let mut receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut gateway = env.spawn_gateway_with_env(&cfg, &ble.env()).unwrap();

    wait_sim("the gateway to scan", 20, || sim.is_discovering());
    assert!(
        !sim.is_pairable(),
        "the running daemon accepts no new pairings"
    );
    // The strap advertises as the real Polar H7 did; a stranger advertises beside it.
    sim.advertise(STRAP, &captured_advert("ble-adv-06", -58));
    let stranger = "C4:7C:8D:6A:11:22";
    sim.advertise(
        stranger,
        &Advert {
            rssi: -71,
            name: Some("Unknown Tracker".into()),
            manufacturer_data: vec![(0x0059, vec![1, 2, 3])],
            ..Default::default()
        },
    );
    wait_sim("the strap to be subscribed", 20, || {
        sim.start_notify_count(STRAP, &hr_uuid()) == 1
    });
    wait_sim("the scale to be subscribed", 20, || {
        sim.is_notifying(SCALE, &blesim::uuid16(0x2A9D))
    });
    // The scale indicates its two stored records (real capture), the strap its three
    // notifications (real capture), about a second apart on the real devices.
    for v in gatt_capture("A&D UC-352BLE") {
        assert!(sim.notify(SCALE, &blesim::uuid16(0x2A9D), &v));
    }
    let hr = gatt_capture("Polar H7");
    assert_eq!(hr.len(), 3);
    for v in &hr {
        assert!(sim.notify(STRAP, &hr_uuid(), v));
        std::thread::sleep(Duration::from_millis(50));
    }
    let strap_id = format!("ble:{STRAP}");
    let scale_id = format!("ble:{SCALE}");
    let up = env.upstream();
    // A notification's readings (HR, then its RR-intervals) may land in different batches.
    wait_for(
        "HR, RR and weights upstream",
        Duration::from_secs(20),
        || {
            Ok(up.values(&strap_id, HEART_RATE)?.len() == 3
                && up.values(&strap_id, RR_INTERVAL)?.len() == 4
                && up.values(&scale_id, BODY_WEIGHT)?.len() == 2)
        },
    )
    .unwrap();
    assert_eq!(
        up.values(&strap_id, HEART_RATE).unwrap(),
        [78.0, 79.0, 80.0]
    );
    let rr = up.values(&strap_id, RR_INTERVAL).unwrap();
    let want_rr: Vec<f64> = [722.0, 712.0, 695.0, 704.0]
        .iter()
        .map(|r| r * 1000.0 / 1024.0)
        .collect();
    assert_eq!(rr.len(), 4, "RR-intervals {rr:?}");
    for (a, b) in rr.iter().zip(&want_rr) {
        assert!((a - b).abs() < 1e-6, "RR {rr:?} vs {want_rr:?}");
    }
    assert_eq!(up.values(&scale_id, BODY_WEIGHT).unwrap(), [65.7, 65.6]);
    let obs = up.observations().unwrap();
    assert!(
        obs.iter()
            .all(|o| o.device == strap_id || o.device == scale_id),
        "only admitted devices' data upstream: {:?}",
        obs.iter()
            .map(|o| &o.device)
            .collect::<std::collections::BTreeSet<_>>()
    );
    // Battery Level was read on connect (the simulated battery reads 100 %? whatever it holds:
    // a battery observation exists for the strap).
    assert!(
        !up.values(&strap_id, BATTERY).unwrap().is_empty(),
        "battery level read on connect"
    );

    // The stranger is visible upstream, with what an installer needs to approve it.
    wait_for(
        "the rejected event upstream",
        Duration::from_secs(10),
        || Ok(up.events()?.iter().any(|e| e.kind == "rejected")),
    )
    .unwrap();
    let events = up.events().unwrap();
    let rejected: Vec<_> = events.iter().filter(|e| e.kind == "rejected").collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].device, format!("ble:{stranger}"));
    let detail = rejected[0].detail.clone().unwrap_or_default();
    for want in [
        &format!("address={stranger}"),
        "rssi=-71",
        "name=\"Unknown Tracker\"",
        "reason=not-allowlisted",
    ] {
        assert!(
            detail.contains(want),
            "rejected detail {detail:?} lacks {want}"
        );
    }
    let connected: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "connected" && e.device == strap_id)
        .collect();
    assert_eq!(connected.len(), 1);
    let d = connected[0].detail.clone().unwrap_or_default();
    assert!(
        d.contains("manufacturer=\"Polar Electro Oy\"") && d.contains("serial=\"D7904C14\""),
        "{d}"
    );

    // Link loss: disconnected upstream, reconnect, exactly one new StartNotify, no doubles.
    sim.drop_link(STRAP);
    wait_sim("the strap to be resubscribed", 20, || {
        sim.connect_count(STRAP) == 2 && sim.start_notify_count(STRAP, &hr_uuid()) == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sim.start_notify_count(STRAP, &hr_uuid()),
        2,
        "one StartNotify per connection"
    );
    assert!(sim.notify(STRAP, &hr_uuid(), &hr[0]));
    wait_for(
        "the HR after the reconnect",
        Duration::from_secs(20),
        || Ok(up.values(&strap_id, HEART_RATE)?.len() >= 4),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        up.values(&strap_id, HEART_RATE).unwrap(),
        [78.0, 79.0, 80.0, 78.0],
        "the notification after the reconnect arrives once"
    );
    let events = up.events().unwrap();
    assert!(events
        .iter()
        .any(|e| e.kind == "disconnected" && e.device == strap_id));

    // Signed like every batch: each raw message verifies.
    env.wait_store_drained(Duration::from_secs(15)).unwrap();
    let payloads = env.verify_raw_messages().unwrap();
    let signed_hr: usize = payloads
        .iter()
        .flat_map(|p| p["observations"].as_array().unwrap().iter())
        .filter(|o| o["device"] == strap_id.as_str() && o["code"] == HEART_RATE)
        .count();
    assert_eq!(signed_hr, 4);
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "gateway exit {st}: {}", gateway.stderr());
    let _ = receiver.terminate(Duration::from_secs(5));
}

#[test]
fn refused_devices_stay_out_of_the_store_bonds_are_required_and_memory_stays_bounded() {
    let env = TestEnv::new("ble-refused", BIN).unwrap();
    let ble = BleWorld::start().unwrap();
    let sim = &ble.sim;
    // The scale is allowlisted with require_bond (default) but BlueZ holds no bond for it.
    let mut unbonded = scale();
    unbonded.paired = false;
    unbonded.bonded = false;
    sim.add_device(unbonded);
    let cfg = write_config_with_ble(
        &env,
        &env.gateway_options(),
        "[ble]\nrejected_per_minute = 20\n\n[[ble.device]]\nname = \"bed4-scale\"\naddress = \"5C:31:3E:01:16:6D\"\n",
    )
    .unwrap();
    let _receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut gateway = env.spawn_gateway_with_env(&cfg, &ble.env()).unwrap();
    wait_sim("the gateway to scan", 20, || sim.is_discovering());

    // 2,000 random addresses (phones, rotating private addresses) advertise once each.
    let n = 2000u32;
    for i in 0..n {
        let b = i.to_be_bytes();
        let a = format!(
            "4{:X}:{:02X}:{:02X}:{:02X}:{:02X}:9A",
            i % 16,
            b[0],
            b[1],
            b[2],
            b[3]
        );
        sim.advertise(
            &a,
            &Advert {
                rssi: -80,
                ..Default::default()
            },
        );
    }
    let up = env.upstream();
    wait_for(
        "the rejected events upstream",
        Duration::from_secs(30),
        || Ok(up.events()?.iter().filter(|e| e.kind == "rejected").count() >= 20),
    )
    .unwrap();
    // The gateway removes what it refused from BlueZ: BlueZ's device list stays small too.
    wait_sim("refused devices pruned from BlueZ", 90, || {
        sim.device_count() < 50
    });
    std::thread::sleep(Duration::from_secs(1));
    let rejected = up
        .events()
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "rejected")
        .count();
    assert_eq!(
        rejected, 20,
        "at most rejected_per_minute events; the rest are counted"
    );
    assert!(
        up.observations().unwrap().is_empty(),
        "no refused data upstream"
    );
    assert!(
        env.store().unwrap().queue.iter().all(|r| r.kind.is_some()),
        "no observation stored"
    );

    // The unbonded scale: never connected, reported as needing pairing.
    assert_eq!(
        sim.connect_count(SCALE),
        0,
        "an allowlisted device without its bond is not served"
    );
    let events = up.events().unwrap();
    let need = events
        .iter()
        .find(|e| e.device == format!("ble:{SCALE}") && e.kind == "error")
        .unwrap_or_else(|| panic!("needs-pairing event: {events:?}"));
    assert!(
        need.detail
            .as_deref()
            .unwrap_or("")
            .contains("wardgate pair 5C:31:3E:01:16:6D"),
        "{need:?}"
    );

    // What `wardgate status` shows an installer: the adapter's counters, bounded memory (the
    // snapshot is rewritten every 2 s).
    let status = || -> serde_json::Value {
        let out = std::process::Command::new(BIN)
            .args(["status", "--json", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let adapters = v["snapshot"]["adapters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        adapters
            .into_iter()
            .find(|a| a["name"] == "ble")
            .unwrap_or_default()
    };
    wait_for(
        "status to count the refused sightings",
        Duration::from_secs(15),
        || Ok(status()["ble"]["rejected"].as_u64().unwrap_or(0) >= u64::from(n)),
    )
    .unwrap();
    let b = status();
    assert!(b["ble"]["tracked"].as_u64().unwrap() <= 4096, "{b}");
    assert!(b["ble"]["pruned"].as_u64().unwrap() > 0, "{b}");
    assert_eq!(b["ble"]["rejected_events"].as_u64(), Some(20), "{b}");

    // The bond appears (an installer ran `wardgate pair`): now it is served.
    sim.set_bonded(SCALE, true, true);
    sim.advertise(
        SCALE,
        &Advert {
            rssi: -60,
            ..Default::default()
        },
    );
    wait_sim("the scale to connect once bonded", 40, || {
        sim.connect_count(SCALE) >= 1
    });
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "{}", gateway.stderr());
}

#[test]
fn stored_glucose_records_arrive_once_through_racp_after_reconnects() {
    let env = TestEnv::new("ble-glucose", BIN).unwrap();
    let ble = BleWorld::start().unwrap();
    let sim = &ble.sim;
    let meter = "00:09:1F:40:00:01";
    let mut d = blesim::glucose_meter(
        meter,
        &DeviceInformation::new("Roche", "Accu-Chek Guide", "92300001", "1.0"),
    );
    d.paired = true;
    d.bonded = true;
    sim.add_device(d);
    // Glucose Measurement payloads from the specification vectors of PROTOCOLS.md §C.2 (no
    // real capture exists), with their sequence numbers 7, 1, 2 rewritten to 1, 2, 3.
    let record = |seq: u16| {
        let mut v = wardgate_e2e::hex("1b0700e207041a0b091e1e005ab0110100");
        v[1..3].copy_from_slice(&seq.to_le_bytes());
        (seq, v)
    };
    sim.install_glucose_racp(meter, vec![record(1), record(2), record(3)]);
    let cfg = write_config_with_ble(
        &env,
        &env.gateway_options(),
        "[ble]\n[[ble.device]]\nname = \"bed5-glucose\"\naddress = \"00:09:1F:40:00:01\"\n",
    )
    .unwrap();
    let _receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut gateway = env.spawn_gateway_with_env(&cfg, &ble.env()).unwrap();
    let id = format!("ble:{meter}");
    let up = env.upstream();
    wait_for("3 stored records upstream", Duration::from_secs(30), || {
        Ok(up.values(&id, GLUCOSE_CAPILLARY)?.len() == 3)
    })
    .unwrap();
    let racp = blesim::uuid16(0x2A52);
    assert_eq!(
        sim.writes(meter, &racp),
        [vec![0x01, 0x01]],
        "first connection: all records"
    );
    // The firmware revision it reported (Device Information 0x2A26) is its version in
    // `wardgate status` (issue 10 item 6), before any firmware job.
    wait_for(
        "the meter's firmware in status",
        Duration::from_secs(15),
        || {
            let out = std::process::Command::new(BIN)
                .args(["status", "--json", "--config"])
                .arg(&cfg)
                .output()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let fw = &v["snapshot"]["firmware_versions"][&id];
            Ok(fw["version"] == "1.0" && fw["source"] == "dis")
        },
    )
    .unwrap();
    // Link loss; the meter takes a 4th reading meanwhile.
    sim.drop_link(meter);
    sim.install_glucose_racp(meter, vec![record(1), record(2), record(3), record(4)]);
    wait_for("the 4th record upstream", Duration::from_secs(30), || {
        Ok(up.values(&id, GLUCOSE_CAPILLARY)?.len() >= 4)
    })
    .unwrap();
    assert_eq!(
        sim.writes(meter, &racp)[1],
        [0x01, 0x03, 0x01, 0x04, 0x00],
        "after a reconnect: only records from sequence number 4"
    );
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        up.values(&id, GLUCOSE_CAPILLARY).unwrap().len(),
        4,
        "each record once"
    );
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "{}", gateway.stderr());
}

#[test]
fn after_a_kill_9_the_restarted_gateway_adopts_the_link_bluez_still_holds() {
    let env = TestEnv::new("ble-adopt", BIN).unwrap();
    let ble = BleWorld::start().unwrap();
    let sim = &ble.sim;
    sim.add_device(strap());
    sim.connect_at_start(STRAP);
    let cfg = write_config_with_ble(&env, &env.gateway_options(), BLE_CONFIG).unwrap();
    let _receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut gateway = env.spawn_gateway_with_env(&cfg, &ble.env()).unwrap();
    wait_sim("the held link to be subscribed", 20, || {
        sim.start_notify_count(STRAP, &hr_uuid()) == 1
    });
    assert_eq!(sim.connect_count(STRAP), 0, "adopted, not reconnected");
    let hr = gatt_capture("Polar H7");
    assert!(sim.notify(STRAP, &hr_uuid(), &hr[0]));
    let id = format!("ble:{STRAP}");
    let up = env.upstream();
    wait_for("the first HR", Duration::from_secs(20), || {
        Ok(up.values(&id, HEART_RATE)?.len() == 1)
    })
    .unwrap();

    gateway.kill9().unwrap();
    assert!(
        sim.is_connected(STRAP),
        "BlueZ keeps the link after our process died"
    );
    let mut gateway = env.spawn_gateway_with_env(&cfg, &ble.env()).unwrap();
    wait_sim("the restarted gateway to resubscribe", 20, || {
        sim.start_notify_count(STRAP, &hr_uuid()) == 2
    });
    assert_eq!(sim.connect_count(STRAP), 0, "still the same link");
    assert!(sim.notify(STRAP, &hr_uuid(), &hr[1]));
    wait_for("the HR after the restart", Duration::from_secs(20), || {
        Ok(up.values(&id, HEART_RATE)?.len() == 2)
    })
    .unwrap();
    assert_eq!(up.values(&id, HEART_RATE).unwrap(), [78.0, 79.0]);
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "{}", gateway.stderr());
}

#[test]
fn inhaler_vendor_profile_asset_tag_presence_and_a_changed_attribute_table() {
    let env = TestEnv::new("ble-vendor", BIN).unwrap();
    let ble = BleWorld::start().unwrap();
    let sim = &ble.sim;
    // A simulated inhaler add-on (synthetic: no real recording of a smart inhaler exists),
    // served by the example vendor profile shipped in config/profiles/.
    let inhaler = "C0:FF:EE:00:00:01";
    let svc = "5e1f0000-7c3a-4b8e-9d2f-1a2b3c4d5e6f";
    let act = "5e1f0001-7c3a-4b8e-9d2f-1a2b3c4d5e6f";
    let batt = "5e1f0002-7c3a-4b8e-9d2f-1a2b3c4d5e6f";
    sim.add_device(SimDevice {
        address: inhaler.into(),
        address_type: blesim::AddressType::Random,
        name: Some("Inhaler".into()),
        paired: true,
        bonded: true,
        services: vec![blesim::SimService {
            uuid: svc.into(),
            characteristics: vec![
                blesim::SimCharacteristic {
                    uuid: act.into(),
                    flags: vec!["notify".into()],
                    value: vec![],
                },
                blesim::SimCharacteristic {
                    uuid: batt.into(),
                    flags: vec!["read".into()],
                    value: vec![87],
                },
            ],
        }],
        in_range: true,
    });
    let profile = std::fs::read_to_string(
        wardgate_e2e::workspace_root().join("config/profiles/inhaler-example.toml"),
    )
    .unwrap();
    let ble_cfg = format!(
        "[ble]\n[[ble.device]]\nname = \"bed6-inhaler\"\naddress = \"{inhaler}\"\naddress_type = \"random\"\nvendor_profile = \"inhaler-example\"\n\n\
         [[ble.device]]\nname = \"bed4-hr\"\naddress = \"{STRAP}\"\nrequire_bond = false\n\n\
         [[ble.tag]]\nname = \"pumps\"\nibeacon_uuid = \"426c7565-4368-6172-6d42-6561636f6e73\"\nwindow_s = 1\n\n{profile}"
    );
    let cfg = write_config_with_ble(&env, &env.gateway_options(), &ble_cfg).unwrap();
    let check = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut gateway = env.spawn_gateway_with_env(&cfg, &ble.env()).unwrap();
    wait_sim("the inhaler to be subscribed", 20, || {
        sim.is_notifying(inhaler, act)
    });
    // One actuation: time 2026-11-29T08:00:00Z (Unix 1795939200), event, 119 doses left.
    let mut v = 1_795_939_200u32.to_le_bytes().to_vec();
    v.push(1);
    v.extend_from_slice(&119u16.to_le_bytes());
    assert!(sim.notify(inhaler, act, &v));
    let id = format!("ble:{inhaler}");
    let up = env.upstream();
    wait_for("the actuation upstream", Duration::from_secs(20), || {
        Ok(!up.values(&id, DOSES_REMAINING)?.is_empty())
    })
    .unwrap();
    assert_eq!(up.values(&id, DOSES_REMAINING).unwrap(), [119.0]);
    assert_eq!(up.values(&id, INHALER_ACTUATION).unwrap().len(), 1);
    assert_eq!(
        up.values(&id, BATTERY).unwrap(),
        [87.0],
        "vendor battery read on connect"
    );

    // An asset tag (the real Blue Charm iBeacon frame) at 10 Hz for 3 s: presence summaries
    // per 1 s window, not 30 observations.
    let tag = "D4:CA:6E:11:22:33";
    let frame = wardgate_e2e::hex("0215426c7565436861726d426561636f6e730efe1355c5");
    for i in 0..30 {
        sim.advertise(
            tag,
            &Advert {
                rssi: -60 - (i % 7) as i16,
                manufacturer_data: vec![(0x004C, frame.clone())],
                ..Default::default()
            },
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for("presence summaries", Duration::from_secs(10), || {
        Ok(up
            .events()?
            .iter()
            .filter(|e| e.kind == "rssi" && e.device == format!("ble:{tag}"))
            .count()
            >= 2)
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let presence: Vec<_> = up
        .events()
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "rssi" && e.device == format!("ble:{tag}"))
        .collect();
    assert!(
        (2..=5).contains(&presence.len()),
        "one summary per window: {presence:?}"
    );
    let counted: u64 = presence
        .iter()
        .map(|e| {
            let d = e.detail.clone().unwrap_or_default();
            assert!(
                d.contains("rule=pumps")
                    && d.contains("rssi_min=")
                    && d.contains("rssi_median=")
                    && d.contains("rssi_max="),
                "{d}"
            );
            d.split_whitespace()
                .find_map(|kv| kv.strip_prefix("count="))
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert!(
        (25..=30).contains(&counted),
        "advertisements counted: {counted}"
    );
    assert!(
        up.events()
            .unwrap()
            .iter()
            .all(|e| e.kind != "rejected" || e.device != format!("ble:{tag}")),
        "the tag is admitted by its rule"
    );

    // A firmware update changes the strap's attribute table (a thermometer characteristic
    // appears): the next connection discovers it afresh.
    sim.place_device(strap());
    sim.advertise(STRAP, &captured_advert("ble-adv-06", -55));
    wait_sim("the strap subscribed", 20, || {
        sim.start_notify_count(STRAP, &hr_uuid()) == 1
    });
    let mut services = strap().services;
    services.push(blesim::SimService {
        uuid: blesim::uuid16(0x1809),
        characteristics: vec![blesim::SimCharacteristic {
            uuid: blesim::uuid16(0x2A1C),
            flags: vec!["indicate".into()],
            value: vec![],
        }],
    });
    sim.drop_link(STRAP);
    sim.set_gatt(STRAP, services);
    let temp = blesim::uuid16(0x2A1C);
    wait_sim(
        "the new characteristic subscribed after the update",
        30,
        || sim.is_notifying(STRAP, &temp),
    );
    // Health Thermometer: flags 0 (°C), FLOAT 36.4 = mantissa 364, exponent -1 (0xFF000016C).
    assert!(sim.notify(STRAP, &temp, &[0x00, 0x6C, 0x01, 0x00, 0xFF]));
    wait_for("the temperature upstream", Duration::from_secs(20), || {
        Ok(!up.values(&format!("ble:{STRAP}"), TEMP_BODY)?.is_empty())
    })
    .unwrap();
    assert_eq!(
        up.values(&format!("ble:{STRAP}"), TEMP_BODY).unwrap(),
        [36.4]
    );
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "{}", gateway.stderr());
}

fn pair(
    ble: &BleWorld,
    args: &[&str],
    main_conf: &std::path::Path,
    stdin: &[u8],
) -> wardgate_e2e::process::Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("pair")
        .args(args)
        .arg("--bluez-main-conf")
        .arg(main_conf)
        .arg("--timeout")
        .arg("15");
    cmd.env("DBUS_SYSTEM_BUS_ADDRESS", ble.bus.address());
    wardgate_e2e::process::run(cmd, stdin, Duration::from_secs(30)).unwrap()
}

#[test]
fn pair_requires_secure_connections_confirms_the_number_and_refuses_just_works() {
    let ble = BleWorld::start().unwrap();
    let sim = &ble.sim;
    let dir = wardgate_e2e::temp_dir("ble-pair").unwrap();
    let sc_only = dir.path().join("main.conf");
    std::fs::write(&sc_only, "[General]\nSecureConnections = only\n").unwrap();
    let default_conf = dir.path().join("default.conf");
    std::fs::write(&default_conf, "[General]\n#SecureConnections = on\n").unwrap();

    let mut scale = scale();
    scale.paired = false;
    scale.bonded = false;
    sim.place_device(scale);
    sim.set_pairing(SCALE, Pairing::NumericComparison(123456));
    // Advertise while the pair command scans.
    let adv_sim = sim.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let advertiser = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            adv_sim.advertise(
                SCALE,
                &Advert {
                    rssi: -50,
                    name: Some("A&D_UC-352BLE_01166D".into()),
                    ..Default::default()
                },
            );
            adv_sim.advertise(
                "D1:00:00:00:00:02",
                &Advert {
                    rssi: -50,
                    ..Default::default()
                },
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });

    // BlueZ allows legacy pairing: refused with the fix.
    let out = pair(&ble, &[SCALE], &default_conf, b"");
    assert_eq!(out.status.code(), Some(1));
    let err = out.stderr.clone();
    assert!(err.contains("SecureConnections = only"), "{err}");
    assert_eq!(sim.bond_state(SCALE).map(|b| b.0), Some(false));

    // The installer declines the number: not paired.
    let out = pair(&ble, &[SCALE], &sc_only, b"n\n");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr.clone());
    assert!(out.stdout.clone().contains("123456"));
    assert_eq!(sim.bond_state(SCALE).map(|b| b.0), Some(false));

    // The installer confirms: paired, bonded, trusted, and told what to put in the config.
    let out = pair(&ble, &[SCALE], &sc_only, b"y\n");
    let stdout = out.stdout.clone();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        out.stderr.clone()
    );
    assert!(
        stdout.contains("Does the device show the number 123456?"),
        "{stdout}"
    );
    assert!(
        stdout.contains("numeric comparison") && stdout.contains(&format!("address = \"{SCALE}\"")),
        "{stdout}"
    );
    assert_eq!(sim.bond_state(SCALE), Some((true, true)));
    assert!(!sim.is_pairable(), "pair leaves the adapter non-pairable");

    // Just Works: refused by default and the bond removed.
    let jw = "D1:00:00:00:00:02";
    sim.set_pairing(jw, Pairing::JustWorks);
    let out = pair(&ble, &[jw], &sc_only, b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.clone().contains("Just Works"),
        "{}",
        out.stderr.clone()
    );
    assert_ne!(
        sim.bond_state(jw).map(|b| b.0),
        Some(true),
        "no bond left behind"
    );
    let out = pair(&ble, &[jw, "--allow-just-works"], &sc_only, b"");
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr.clone());

    // A bad address is a usage error.
    let out = pair(&ble, &["not-an-address"], &sc_only, b"");
    assert_eq!(out.status.code(), Some(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    advertiser.join().unwrap();
}

/// A hung system D-Bus (here: the bus daemon frozen with SIGSTOP) must not stall anything but
/// BLE: the serial monitor's data keeps reaching the store, `wardgate status` shows the daemon
/// running, and SIGTERM still stops it promptly.
#[test]
fn a_hung_system_bus_stalls_only_ble_serial_data_flows_and_the_daemon_stops() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let env = TestEnv::new("ble-hung-bus", BIN).unwrap();
    let ble = BleWorld::start().unwrap();
    let ivy = wardgate_e2e::pty::Device::ivy450c("bed2-monitor");
    let mut opts = env.gateway_options();
    opts.devices = vec![ivy.clone()];
    let cfg = write_config_with_ble(&env, &opts, BLE_CONFIG).unwrap();
    let mut replays = wardgate_e2e::pty::Replayer::for_devices(&env.dev_dir(), &[&ivy]).unwrap();
    let mut gateway = env.spawn_gateway_with_env(&cfg, &ble.env()).unwrap();
    wait_sim("the gateway to scan", 20, || ble.sim.is_discovering());
    // The monitor sends its recording at its own pace (about 16 s); the bus freezes.
    replays[0].play(&ivy.recording, ivy.pace, 1.0);
    let bus = Pid::from_raw(ble.bus.pid() as i32);
    kill(bus, Signal::SIGSTOP).unwrap();
    let rows = || env.store().map(|s| s.max_seq).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(2));
    let before = rows();
    std::thread::sleep(Duration::from_secs(4));
    let after = rows();
    let status = std::process::Command::new(BIN)
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    let started = std::time::Instant::now();
    let st = gateway.terminate(Duration::from_secs(15));
    let took = started.elapsed();
    kill(bus, Signal::SIGCONT).unwrap();
    assert!(
        after > before,
        "serial rows kept coming while the bus was frozen: {before} → {after}"
    );
    assert!(text.contains("daemon:   running"), "{text}");
    let st = st.unwrap();
    assert!(st.success(), "exit {st}: {}", gateway.stderr());
    assert!(took < Duration::from_secs(12), "SIGTERM took {took:?}");
}

/// BTHome sensor tags (issue 11 item 6): the quantities a tag advertises become observations of
/// the tag's device id, once per presence window, not once per advertisement. A plain sensor
/// (the BTHome v2 reference frame D-11 of PROTOCOLS.md, bthome-ble's test vector: 25.06 °C,
/// 50.55 % humidity) advertising at 10 Hz for 3 s with a 1 s window: its humidity arrives
/// upstream under the wardgate-private code, a few times, not 30. An encrypted sensor (vector
/// D-14, same values, its key configured) repeating one frame: used once — the same counter
/// again is a replay and is not used.
#[test]
fn bthome_sensor_quantities_arrive_as_observations_once_per_window() {
    use wardgate_adapters::observation::mdc::{PVT_HUMIDITY_REL, TEMP_ROOM};
    let env = TestEnv::new("ble-bthome", BIN).unwrap();
    let ble = BleWorld::start().unwrap();
    let sim = &ble.sim;
    let fridge = "A4:C1:38:00:00:01";
    let keyed = "54:48:E6:8F:80:A5";
    let ble_cfg = format!(
        "[ble]\n\n[[ble.tag]]\nname = \"fridges\"\nservice_data = \"fcd2\"\nwindow_s = 1\n\
         location = \"pharmacy/fridge-1\"\n[ble.tag.bthome_keys]\n\"{keyed}\" = \"231d39c1d7cc1ab1aee224cd096db932\"\n"
    );
    let cfg = write_config_with_ble(&env, &env.gateway_options(), &ble_cfg).unwrap();
    let check = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut gateway = env.spawn_gateway_with_env(&cfg, &ble.env()).unwrap();
    let plain = wardgate_e2e::hex("4002ca0903bf13");
    let encrypted = wardgate_e2e::hex("41a47266c95f730011223378237214");
    for i in 0..30 {
        for (address, frame) in [(fridge, &plain), (keyed, &encrypted)] {
            sim.advertise(
                address,
                &Advert {
                    rssi: -60 - (i % 5) as i16,
                    service_data: vec![(blesim::uuid16(0xFCD2), frame.clone())],
                    ..Default::default()
                },
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let up = env.upstream();
    let (fridge_id, keyed_id) = (format!("ble:{fridge}"), format!("ble:{keyed}"));
    wait_for("the humidity upstream", Duration::from_secs(20), || {
        Ok(up.values(&fridge_id, PVT_HUMIDITY_REL)?.len() >= 2
            && !up.values(&keyed_id, PVT_HUMIDITY_REL)?.is_empty())
    })
    .unwrap();
    // Let every window close, then count.
    std::thread::sleep(Duration::from_secs(3));
    let humidity = up.values(&fridge_id, PVT_HUMIDITY_REL).unwrap();
    assert!(
        (2..=5).contains(&humidity.len()) && humidity.iter().all(|v| *v == 50.55),
        "one humidity per 1 s window over 3 s of advertising, not 30: {humidity:?}"
    );
    let temperature = up.values(&fridge_id, TEMP_ROOM).unwrap();
    assert_eq!(temperature.len(), humidity.len(), "{temperature:?}");
    assert!(temperature.iter().all(|v| *v == 25.06));
    let obs = up.observations().unwrap();
    let h = obs
        .iter()
        .find(|o| o.device == fridge_id && o.code == PVT_HUMIDITY_REL)
        .unwrap();
    assert_eq!((h.unit, h.ucum.as_deref()), (262_688, Some("%")));
    assert_eq!(h.status, None, "a plausible humidity carries no flag");
    // The keyed sensor's one frame, repeated: used once.
    assert_eq!(
        up.values(&keyed_id, PVT_HUMIDITY_REL).unwrap(),
        [50.55],
        "a repeated encrypted frame (same counter) is not used again"
    );
    assert_eq!(up.values(&keyed_id, TEMP_ROOM).unwrap(), [25.06]);
    // Every tag the rule admits is where the rule says (issue 11 item 7): each of their rows
    // reached the receiver with the rule's location.
    for id in [&fridge_id, &keyed_id] {
        let rows = up.locations(id).unwrap();
        assert!(!rows.is_empty(), "{id}");
        for (seq, location) in rows {
            assert_eq!(
                location.as_deref(),
                Some("pharmacy/fridge-1"),
                "{id} row {seq}"
            );
        }
    }
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "{}", gateway.stderr());
}
