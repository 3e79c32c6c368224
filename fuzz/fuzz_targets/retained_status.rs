//! The upstream's reader of the retained device status and heartbeat payloads
//! (`wardgate::health::retained::decode`, docs/wire-format.md "Device status and heartbeat"),
//! with the firmware versions of issue 10. The first byte picks: 0 arbitrary bytes; 1 the rest
//! as the fields of a device status, encoded by the gateway's own writer; 2 the same for a
//! heartbeat.
//!
//! Checks beyond "no panic": whatever decodes re-encodes (through the gateway's writer) to a
//! payload that decodes to the same value; what the writer produces always decodes to exactly
//! what was written.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wardgate::health::retained::{
    decode, device_status, heartbeat, DeviceStatus, Heartbeat, Retained,
};

/// Bytes as text, at most `n` characters.
fn text(b: &[u8], n: usize) -> String {
    String::from_utf8_lossy(&b[..b.len().min(n)]).into_owned()
}

fn opt(flag: u8, s: String) -> Option<String> {
    (flag & 1 == 1).then_some(s)
}

fn check_round_trip(r: &Retained) {
    let again = match r {
        Retained::DeviceStatus { gateway, status } => decode(&device_status(gateway, status)),
        Retained::Heartbeat(h) => decode(&heartbeat(h)),
    };
    // A float battery NaN does not compare equal to itself; everything else must.
    if let (
        Retained::DeviceStatus { status: a, .. },
        Ok(Retained::DeviceStatus { status: b, .. }),
    ) = (r, &again)
    {
        if a.battery_pct.is_some_and(f64::is_nan) {
            assert!(b.battery_pct.is_some_and(f64::is_nan));
            return;
        }
    }
    assert_eq!(again.as_ref(), Ok(r));
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, v)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => {
            if let Ok(r) = decode(v) {
                check_round_trip(&r);
            }
        }
        1 => {
            let f = |i: usize| v.get(i).copied().unwrap_or(0);
            let n = |i: usize| i64::from_le_bytes(std::array::from_fn(|k| f(i + k)));
            let rest = v.get(24..).unwrap_or(&[]);
            let s = DeviceStatus {
                device: text(rest, 20),
                state: ["online", "stale", "offline"][usize::from(f(0)) % 3].into(),
                since_ms: n(1),
                last_seen_ms: n(9),
                battery_pct: (f(17) & 1 == 1).then_some(f64::from(f(18))),
                rssi_dbm: (f(17) & 2 == 2).then_some(-i64::from(f(19))),
                errors: u64::from(f(20)),
                last_error: opt(f(21), text(rest.get(20..).unwrap_or(&[]), 40)),
                firmware: opt(f(22), text(rest.get(5..).unwrap_or(&[]), 30)),
                firmware_source: opt(f(23), "smp".into()),
                location: opt(f(22) >> 1, text(rest.get(10..).unwrap_or(&[]), 64)),
            };
            let r = Retained::DeviceStatus {
                gateway: "gw-1".into(),
                status: s.clone(),
            };
            assert_eq!(decode(&device_status("gw-1", &s)), Ok(r));
        }
        _ => {
            let f = |i: usize| v.get(i).copied().unwrap_or(0);
            let rest = v.get(8..).unwrap_or(&[]);
            let firmware = rest
                .chunks(9)
                .take(usize::from(f(0) % 16))
                .map(|c| {
                    (
                        format!("serial:{}", text(c, 4)),
                        text(c.get(4..).unwrap_or(&[]), 5),
                    )
                })
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .collect();
            let h = Heartbeat {
                gateway: text(rest, 8),
                site: "s".into(),
                ward: "w".into(),
                time_ms: i64::from(f(1)) << 32,
                uptime_s: u64::from(f(2)),
                queue_depth: u64::from(f(3)),
                oldest_unsent_age_s: (f(4) & 1 == 1).then_some(u64::from(f(5))),
                store_bytes: u64::from(f(6)) << 20,
                store_full: (f(7) & 1 == 1, u64::from(f(7))),
                clock_synced: f(7) & 2 == 2,
                adapters: vec![("serial".into(), u64::from(f(1)), u64::from(f(2)))],
                firmware,
                ..Default::default()
            };
            assert_eq!(decode(&heartbeat(&h)), Ok(Retained::Heartbeat(h)));
        }
    }
});
