//! Liveness and time on the ward, with real parts: `wardgate run` (child process) with BLE
//! devices on the simulated BlueZ, real mosquitto with mutual TLS, an MQTT watcher reading the
//! retained topics (verified with the gateway's certificate), the receiver's SQLite output.
//! What a user checks: every device's state is published retained on each transition; the
//! heartbeat tells the gateway's health; a silent device or a blind adapter is reported and
//! recovered; an unsynchronised clock is visible, and buffered observations are corrected when
//! it syncs; wall-clock jumps mark no device offline and cause no reconnect.

use std::time::Duration;
use wardgate_e2e::ble::{gatt_capture, write_config_with_ble, BleWorld};
use wardgate_e2e::env::{ReceiverOptions, TestEnv};
use wardgate_e2e::{mqtt, wait_for};
use wardgate_sim::blesim::{self, Advert, DeviceInformation};

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");
const STRAP: &str = "00:22:D0:90:4C:14";

fn strap(ble: &BleWorld) {
    let mut d = blesim::heart_rate_strap(
        STRAP,
        &DeviceInformation::new("Polar Electro Oy", "Polar H7", "D7904C14", "1.4.0"),
    );
    d.address_type = blesim::AddressType::Public;
    ble.sim.place_device(d);
}

fn strap_config(extra: &str) -> String {
    format!(
        "[[ble.device]]\nname = \"bed4-hr\"\naddress = \"{STRAP}\"\nrequire_bond = false\nprofiles = [\"heart-rate\", \"battery\"]\n{extra}\n"
    )
}

/// Waits for the gateway to scan, lets the strap advertise, waits until it is subscribed.
fn connect_strap(sim: &blesim::SimBluez) {
    wait_for("scanning", Duration::from_secs(20), || {
        Ok(sim.is_discovering())
    })
    .unwrap();
    sim.advertise(
        STRAP,
        &Advert {
            rssi: -60,
            ..Default::default()
        },
    );
    wait_for("subscribed", Duration::from_secs(20), || {
        Ok(sim.is_notifying(STRAP, &hr()))
    })
    .unwrap();
}

/// The environment that runs a process under libfaketime with the wall-clock offset read from
/// `offset_file` (re-read once a second), the monotonic clock and file times real.
fn faketime_env(offset_file: &str) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", LIBFAKETIME.into()),
        ("FAKETIME_TIMESTAMP_FILE", offset_file.into()),
        // Re-read the offset file once a second (reading it at every call from many threads
        // now and then fails, and libfaketime then falls back to the real time).
        ("FAKETIME_CACHE_DURATION", "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ("FAKETIME_DONT_RESET", "1".into()),
        // File times stay real (libfaketime would fake stat results too).
        ("NO_FAKE_STAT", "1".into()),
    ]
}

fn hr() -> String {
    blesim::uuid16(0x2A37)
}

/// Sets `[uplink] heartbeat_s` and `[gateway] clock` in a written config.
fn tune(path: &std::path::Path, heartbeat_s: u64, clock: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.replacen(
        "[uplink]\n",
        &format!("[uplink]\nheartbeat_s = {heartbeat_s}\n"),
        1,
    );
    let text = text.replacen(
        "[gateway]\n",
        &format!("[gateway]\nclock = \"{clock}\"\n"),
        1,
    );
    std::fs::write(path, text).unwrap();
}

/// What `wardgate status` prints for this config.
fn status_text(cfg: &std::path::Path) -> String {
    let out = std::process::Command::new(BIN)
        .args(["status", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The uplink's "N connection failures" from `wardgate status` output.
fn connection_failures(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.trim_end().strip_suffix(" connection failures"))?
        .rsplit(", ")
        .next()?
        .parse()
        .ok()
}

fn states_of(env: &TestEnv, msgs: &[mqtt::Message], topic_end: &str) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.topic.ends_with(topic_end))
        .map(|m| {
            mqtt::verified_json(env, &m.payload).unwrap()["state"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn device_status_is_published_retained_on_every_transition_and_the_heartbeat_reports_health() {
    let env = TestEnv::new("liveness", BIN).unwrap();
    let ble = BleWorld::start().unwrap();
    strap(&ble);
    let cfg = write_config_with_ble(
        &env,
        &env.gateway_options(),
        &format!(
            "[ble]\n{}",
            strap_config(
                "stale_after_s = 3\noffline_after_s = 7\nsilent_after_s = 0\nlocation = \"ward-4/bed-4\""
            )
        ),
    )
    .unwrap();
    tune(&cfg, 1, "synced");
    let _receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    // Watch the device's status topic live for the whole scenario.
    let (ca, cert, key, port) = (
        env.pki.ca_pem.clone(),
        env.pki.receiver_cert.clone(),
        env.pki.receiver_key.clone(),
        env.broker.port,
    );
    let mut gateway = env.spawn_gateway_with_env(&cfg, &ble.env()).unwrap();
    let watcher = std::thread::spawn(move || {
        mqtt::collect_with(
            &ca,
            &cert,
            &key,
            port,
            "wardgate/v1/+/+/+/device/+/status",
            Duration::from_secs(21),
        )
    });
    let sim = &ble.sim;
    wait_for("scanning", Duration::from_secs(20), || {
        Ok(sim.is_discovering())
    })
    .unwrap();
    // The configured device is published `offline` first (waited for as the retained state).
    let topic_end = format!("/device/ble:{STRAP}/status");
    wait_for(
        "the strap published offline",
        Duration::from_secs(20),
        || {
            let now = mqtt::latest(
                &env,
                "wardgate/v1/+/+/+/device/+/status",
                Duration::from_millis(500),
            )?;
            Ok(now
                .values()
                .filter(|m| m.topic.ends_with(&topic_end))
                .any(|m| states_of(&env, std::slice::from_ref(m), &topic_end) == ["offline"]))
        },
    )
    .unwrap();
    connect_strap(sim);
    for v in gatt_capture("Polar H7") {
        sim.notify(STRAP, &hr(), &v);
        std::thread::sleep(Duration::from_millis(300));
    }
    // The strap walks away: link lost, no reconnect possible → stale after 3 s, offline after 7 s
    // (thresholds more than one 2-s status tick apart, so the stale state is seen).
    sim.set_in_range(STRAP, false);
    let msgs = watcher.join().unwrap().unwrap();
    let states = states_of(&env, &msgs, &topic_end);
    let mut dedup = states.clone();
    dedup.dedup();
    assert_eq!(
        dedup,
        ["offline", "online", "stale", "offline"],
        "retained states in order: {states:?}"
    );
    let last = msgs
        .iter()
        .rev()
        .find(|m| m.topic.ends_with(&topic_end))
        .unwrap();
    let j = mqtt::verified_json(&env, &last.payload).unwrap();
    assert_eq!(j["device"], format!("ble:{STRAP}"));
    assert_eq!(j["kind"], "device-status");
    assert_eq!(
        j["location"], "ward-4/bed-4",
        "the configured location: {j}"
    );
    assert!(
        j["battery"].as_f64().is_some(),
        "battery level read on connect travels with the status: {j}"
    );
    assert!(
        j["last_seen"].as_i64().unwrap() > 0
            && j["since"].as_i64().unwrap() >= j["last_seen"].as_i64().unwrap(),
        "{j}"
    );

    // A late subscriber gets the current state retained, and the heartbeat.
    let now = mqtt::latest(&env, "wardgate/v1/#", Duration::from_secs(2)).unwrap();
    let st = now
        .values()
        .find(|m| m.topic.ends_with(&topic_end))
        .expect("retained device status");
    assert!(st.retained);
    assert_eq!(
        mqtt::verified_json(&env, &st.payload).unwrap()["state"],
        "offline"
    );
    let hb = now
        .values()
        .find(|m| m.topic.ends_with("/heartbeat"))
        .expect("retained heartbeat");
    let h = mqtt::verified_json(&env, &hb.payload).unwrap();
    assert_eq!(h["kind"], "heartbeat");
    assert_eq!(h["gateway"], "gw-e2e-01");
    assert_eq!(h["clock_synced"], true);
    assert_eq!(h["uplink"]["connected"], true);
    assert_eq!(h["devices"]["offline"], 1);
    assert!(h["uptime_s"].as_u64().unwrap() >= 5, "{h}");
    assert!(
        h["queue_depth"].as_u64().is_some() && h["store_bytes"].as_u64().unwrap() > 0,
        "{h}"
    );
    assert_eq!(h["adapters"][0]["name"], "ble");
    assert_eq!(
        (h["store_full"].as_bool(), h["rows_refused"].as_u64()),
        (Some(false), Some(0))
    );
    assert_eq!(h["uplink"]["acks_refused"], 0);
    assert!(
        !h.to_string().contains("ward-4/bed-4"),
        "the heartbeat (never encrypted) carries no location: {h}"
    );
    // The installer sees where the device is.
    let text = status_text(&cfg);
    assert!(
        text.contains(&format!("device:   ble:{STRAP} at ward-4/bed-4: offline")),
        "{text}"
    );
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "{}", gateway.stderr());
}

#[test]
fn a_silent_subscribed_device_is_reported_and_reconnected_and_a_blind_adapter_recovers() {
    let env = TestEnv::new("liveness-silent", BIN).unwrap();
    let ble = BleWorld::start().unwrap();
    strap(&ble);
    let tag = "D4:CA:6E:11:22:33";
    let cfg = write_config_with_ble(
        &env,
        &env.gateway_options(),
        &format!(
            "[ble]\nblind_after_s = 2\n{}\n[[ble.tag]]\nname = \"pumps\"\naddresses = [\"{tag}\"]\nwindow_s = 1\n",
            strap_config("silent_after_s = 2")
        ),
    )
    .unwrap();
    let _receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut gateway = env.spawn_gateway_with_env(&cfg, &ble.env()).unwrap();
    let sim = &ble.sim;
    wait_for("scanning", Duration::from_secs(20), || {
        Ok(sim.is_discovering())
    })
    .unwrap();
    sim.advertise(
        STRAP,
        &Advert {
            rssi: -60,
            ..Default::default()
        },
    );
    sim.advertise(
        tag,
        &Advert {
            rssi: -70,
            ..Default::default()
        },
    );
    wait_for("subscribed", Duration::from_secs(20), || {
        Ok(sim.is_notifying(STRAP, &hr()))
    })
    .unwrap();
    sim.notify(STRAP, &hr(), &gatt_capture("Polar H7")[0]);
    // Then nothing: after 2 s of silence the gateway reports it and reconnects, subscribing again.
    wait_for(
        "a reconnect after the silence",
        Duration::from_secs(20),
        || Ok(sim.connect_count(STRAP) >= 2 && sim.start_notify_count(STRAP, &hr()) >= 2),
    )
    .unwrap();
    let up = env.upstream();
    wait_for(
        "the silence reported upstream",
        Duration::from_secs(20),
        || {
            Ok(up.events()?.iter().any(|e| {
                e.kind == "error"
                    && e.detail
                        .as_deref()
                        .unwrap_or("")
                        .contains("subscribed but silent for 2 s")
            }))
        },
    )
    .unwrap();

    // Blind adapter: the tag (heard before) falls silent with everything else for 2 s.
    wait_for(
        "the blind adapter reported",
        Duration::from_secs(20),
        || {
            Ok(up.events()?.iter().any(|e| {
                e.kind == "error"
                    && e.device == "adapter:ble"
                    && e.detail
                        .as_deref()
                        .unwrap_or("")
                        .contains("heard no advertisement for 2 s")
            }))
        },
    )
    .unwrap();
    let events = up.events().unwrap();
    let blind = events
        .iter()
        .find(|e| {
            e.device == "adapter:ble"
                && e.detail
                    .as_deref()
                    .unwrap_or("")
                    .contains("restarting discovery")
        })
        .unwrap_or_else(|| panic!("first recovery step: {events:?}"));
    assert!(blind.detail.as_deref().unwrap().contains("blind"));
    // Discovery was restarted: the adapter scans, and hears the tag again.
    wait_for("scanning again", Duration::from_secs(10), || {
        Ok(sim.is_discovering())
    })
    .unwrap();
    for _ in 0..5 {
        sim.advertise(
            tag,
            &Advert {
                rssi: -65,
                ..Default::default()
            },
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        gateway.stderr().contains("hears advertisements again")
            || gateway
                .wait_stderr("hears advertisements again", 1, Duration::from_secs(10))
                .is_ok()
    );
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "{}", gateway.stderr());
}

#[test]
fn an_unsynchronised_clock_is_visible_and_buffered_observations_are_corrected_when_it_syncs() {
    let mut env = TestEnv::new("clock", BIN).unwrap();
    let ble = BleWorld::start().unwrap();
    strap(&ble);
    let synced_flag = env.dir.join("timesync-synchronized");
    let cfg = write_config_with_ble(
        &env,
        &env.gateway_options(),
        &format!("[ble]\n{}", strap_config("silent_after_s = 0")),
    )
    .unwrap();
    tune(&cfg, 1, &format!("file:{}", synced_flag.display()));
    let _receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let mut gateway = env.spawn_gateway_with_env(&cfg, &ble.env()).unwrap();
    let sim = &ble.sim;
    connect_strap(sim);
    let hr_values = gatt_capture("Polar H7");
    sim.notify(STRAP, &hr(), &hr_values[0]);
    let id = format!("ble:{STRAP}");
    let up = env.upstream();
    wait_for("the first HR", Duration::from_secs(20), || {
        Ok(up.values(&id, 147_842)?.len() == 1)
    })
    .unwrap();
    // An installer sees it (in the status snapshot, written every 2 s).
    let mut text = String::new();
    wait_for(
        "status saying the clock is not synchronised",
        Duration::from_secs(20),
        || {
            text = status_text(&cfg);
            Ok(text.contains("clock:    NOT SYNCHRONISED"))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{text}"));

    // The broker goes away; two more readings wait in the store, stamped unsynced.
    env.broker.stop().unwrap();
    sim.notify(STRAP, &hr(), &hr_values[1]);
    sim.notify(STRAP, &hr(), &hr_values[2]);
    wait_for("two rows buffered", Duration::from_secs(10), || {
        Ok(env
            .store()?
            .queue
            .iter()
            .filter(|r| r.code == Some(147_842))
            .count()
            == 2)
    })
    .unwrap();
    // NTP synchronises the clock; then the broker is back.
    std::fs::write(&synced_flag, b"").unwrap();
    gateway
        .wait_stderr("clock synchronised", 1, Duration::from_secs(10))
        .unwrap();
    env.broker.restart().unwrap();
    wait_for("all three HR upstream", Duration::from_secs(30), || {
        Ok(up.values(&id, 147_842)?.len() == 3)
    })
    .unwrap();
    let c = rusqlite::Connection::open(&up.path).unwrap();
    let q: Vec<(f64, String)> = c
        .prepare("SELECT value, time_quality FROM observations WHERE code = 147842 ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        q,
        [
            (78.0, "unsynced".to_string()),
            (79.0, "synced".to_string()),
            (80.0, "synced".to_string())
        ],
        "the one sent before the sync stays `unsynced`; the buffered ones were corrected"
    );
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "{}", gateway.stderr());
}

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

#[test]
fn wall_clock_jumps_of_hours_mark_no_device_offline_and_cause_no_reconnect() {
    // The gateway runs under libfaketime (scripts/test installs it): its wall clock follows an
    // offset read from a file at every call, its monotonic clock stays real.
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} missing: apt-get install faketime (scripts/test does)"
    );
    let env = TestEnv::new("clock-jump", BIN).unwrap();
    let ble = BleWorld::start().unwrap();
    strap(&ble);
    let offset = env.dir.join("faketime-offset");
    std::fs::write(&offset, "+0").unwrap();
    let cfg = write_config_with_ble(
        &env,
        &env.gateway_options(),
        &format!(
            "[ble]\n{}",
            strap_config("stale_after_s = 4\noffline_after_s = 8\nsilent_after_s = 0")
        ),
    )
    .unwrap();
    tune(&cfg, 1, "synced");
    let _receiver = env.start_receiver(&ReceiverOptions::default()).unwrap();
    let faked = faketime_env(&offset.display().to_string());
    let mut vars: Vec<(&str, &str)> = ble.env().to_vec();
    vars.extend(faked.iter().map(|(k, v)| (*k, v.as_str())));
    let mut gateway = env.spawn_gateway_with_env(&cfg, &vars).unwrap();
    let sim = &ble.sim;
    connect_strap(sim);
    let id = format!("ble:{STRAP}");
    let up = env.upstream();
    let (ca, cert, key, port) = (
        env.pki.ca_pem.clone(),
        env.pki.receiver_cert.clone(),
        env.pki.receiver_key.clone(),
        env.broker.port,
    );
    let watcher = std::thread::spawn(move || {
        mqtt::collect_with(
            &ca,
            &cert,
            &key,
            port,
            "wardgate/v1/+/+/+/device/+/status",
            Duration::from_secs(10),
        )
    });
    // 24 notifications, 300 ms apart; the wall clock jumps 5 h forward, then 5 h back.
    let v = gatt_capture("Polar H7")[0].clone();
    for i in 0..24 {
        if i == 6 {
            std::fs::write(&offset, "+5h").unwrap();
        }
        if i == 14 {
            std::fs::write(&offset, "-5h").unwrap();
        }
        assert!(sim.notify(STRAP, &hr(), &v));
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_for("all 24 upstream", Duration::from_secs(30), || {
        Ok(up.values(&id, 147_842)?.len() == 24)
    })
    .unwrap();
    let msgs = watcher.join().unwrap().unwrap();
    let states = states_of(&env, &msgs, &format!("/device/ble:{STRAP}/status"));
    // The retained state may still be the initial `offline` when the watcher subscribes.
    let after: Vec<_> = states.iter().skip_while(|s| *s != "online").collect();
    assert!(
        !after.is_empty() && after.iter().all(|s| *s == "online"),
        "no stale/offline on a wall-clock jump (liveness runs on monotonic time): {states:?}"
    );
    assert_eq!(
        gateway.stderr_count("uplink connected"),
        1,
        "no reconnect: {}",
        gateway.stderr()
    );
    assert_eq!(
        sim.connect_count(STRAP),
        1,
        "the BLE link was never dropped"
    );
    // The jumps are visible in the stamps (that is what the clock said), nothing was lost.
    let c = rusqlite::Connection::open(&up.path).unwrap();
    let (min, max): (i64, i64) = c
        .query_row(
            "SELECT min(gateway_time), max(gateway_time) FROM observations WHERE code = 147842",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        max - min > 9 * 3_600_000,
        "stamps span the jumps: {min}..{max}"
    );
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "{}", gateway.stderr());
}

#[test]
fn a_clock_days_behind_waits_for_time_then_delivers_with_corrected_stamps() {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} missing: apt-get install faketime"
    );
    // The broker's certificate, as a real CA issues it, valid from midnight UTC; the gateway's
    // clock is behind it: here the certificate is dated tomorrow and the gateway's clock is the
    // machine's, then "NTP" steps it two days forward (libfaketime). A libfaketime hiccup can
    // only make the clock look behind, never let a connection through early.
    let env = TestEnv::with_broker("clock-behind", BIN, |pki| {
        let tomorrow = (wardgate_adapters::observation::now_ms() / 86_400_000 + 1) * 86_400;
        let t = wardgate_adapters::ble::DateTime::from_unix_seconds(tomorrow).unwrap();
        let (y, m, d) = (i32::from(t.year), t.month, t.day);
        let (cert, key) = pki
            .ca
            .leaf_valid_from(
                "e2e broker",
                &["127.0.0.1", "localhost"],
                true,
                Some((y, m, d)),
            )
            .unwrap();
        let (c, k) = (
            pki.dir.join("broker-recent.pem"),
            pki.dir.join("broker-recent.key"),
        );
        wardgate_sim::pki::write_cert(&c, &cert).unwrap();
        wardgate_sim::pki::write_key(&k, &key).unwrap();
        let mut o = wardgate_e2e::broker::MosquittoOptions::from_pki(pki);
        o.certfile = c;
        o.keyfile = k;
        o
    })
    .unwrap();
    let ble = BleWorld::start().unwrap();
    strap(&ble);
    // A Raspberry Pi without RTC booted with a clock behind; NTP has not answered yet.
    let offset = env.dir.join("faketime-offset");
    std::fs::write(&offset, "+0").unwrap();
    let synced_flag = env.dir.join("timesync-synchronized");
    let cfg = write_config_with_ble(
        &env,
        &env.gateway_options(),
        &format!("[ble]\n{}", strap_config("silent_after_s = 0")),
    )
    .unwrap();
    tune(&cfg, 1, &format!("file:{}", synced_flag.display()));
    // The upstream receiver's clock is right (two days ahead of the machine's, like the
    // gateway's after NTP).
    let _receiver = env
        .start_receiver_with_env(
            &ReceiverOptions::default(),
            &[
                ("LD_PRELOAD", LIBFAKETIME),
                ("FAKETIME", "+2d"),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
                ("NO_FAKE_STAT", "1"),
            ],
        )
        .unwrap();
    let faked = faketime_env(&offset.display().to_string());
    let mut vars: Vec<(&str, &str)> = ble.env().to_vec();
    vars.extend(faked.iter().map(|(k, v)| (*k, v.as_str())));
    let mut gateway = env.spawn_gateway_with_env(&cfg, &vars).unwrap();
    // The broker's certificate is not valid yet by this clock: "waiting for time", not a failure.
    gateway
        .wait_stderr("waiting for time", 1, Duration::from_secs(20))
        .unwrap();
    let sim = &ble.sim;
    connect_strap(sim);
    for v in gatt_capture("Polar H7") {
        sim.notify(STRAP, &hr(), &v);
    }
    wait_for("three rows buffered", Duration::from_secs(10), || {
        Ok(env
            .store()?
            .queue
            .iter()
            .filter(|r| r.code == Some(147_842))
            .count()
            == 3)
    })
    .unwrap();
    // Status says so, after a few connection attempts (so that "logged once" below means
    // something: the uplink retried and did not log each time).
    let mut text = String::new();
    wait_for(
        "status: waiting for time, after 3 attempts",
        Duration::from_secs(30),
        || {
            text = status_text(&cfg);
            Ok(text.contains("waiting for time")
                && text.contains("NOT SYNCHRONISED")
                && connection_failures(&text).is_some_and(|n| n >= 3))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    assert!(gateway.is_running(), "waiting for time is not fatal");
    assert_eq!(
        gateway
            .stderr()
            .lines()
            .filter(|l| l.starts_with("WARN") && l.contains("waiting for time"))
            .count(),
        1,
        "logged once, not at every retry: {}",
        gateway.stderr()
    );

    // NTP answers: the clock steps two days forward and is synchronised (together: the flag,
    // then at once the clock).
    std::fs::write(&synced_flag, b"").unwrap();
    std::fs::write(&offset, "+2d").unwrap();
    let id = format!("ble:{STRAP}");
    let up = env.upstream();
    wait_for(
        "the buffered readings upstream",
        Duration::from_secs(40),
        || Ok(up.values(&id, 147_842)?.len() == 3),
    )
    .unwrap();
    let c = rusqlite::Connection::open(&up.path).unwrap();
    let rows: Vec<(i64, String)> = c
        .prepare(
            "SELECT gateway_time, time_quality FROM observations WHERE code = 147842 ORDER BY seq",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let now = wardgate_adapters::observation::now_ms() + 2 * 86_400_000;
    for (t, q) in &rows {
        assert_eq!(q, "synced", "{rows:?}");
        assert!(
            (now - t).abs() < 120_000,
            "corrected by the 2-day step to the gateway's new clock: {t} vs {now}"
        );
    }
    let st = gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(st.success(), "{}", gateway.stderr());
}
