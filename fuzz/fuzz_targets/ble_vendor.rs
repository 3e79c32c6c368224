//! Declarative vendor GATT profiles. The first byte picks: 0 the shipped example profile
//! (`config/profiles/inhaler-example.toml`) decodes the rest as a value of each of its
//! characteristics (and of one it does not have); 1 the rest, as UTF-8 TOML, is deserialised
//! as `[[ble.vendor_profile]]` tables (the serde path the gateway config uses), validated, and
//! every characteristic of every profile — validated or not — decodes a few fixed values;
//! 2 `uuid::parse` and `parse_unit` on the rest as text. Nothing panics; readings are finite.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use std::sync::OnceLock;
use wardgate_adapters::ble::decode::uuid;
use wardgate_adapters::ble::decode::vendor::{parse_unit, VendorProfile};
use wardgate_fuzz::check_reading;

#[derive(Deserialize)]
struct File {
    ble: Ble,
}

#[derive(Deserialize)]
struct Ble {
    #[serde(default)]
    vendor_profile: Vec<VendorProfile>,
}

fn example() -> &'static VendorProfile {
    static P: OnceLock<VendorProfile> = OnceLock::new();
    P.get_or_init(|| {
        let f: File = toml::from_str(include_str!("../../config/profiles/inhaler-example.toml"))
            .expect("the example profile parses");
        f.ble.vendor_profile.into_iter().next().unwrap()
    })
}

fn decode_all(p: &VendorProfile, value: &[u8]) {
    for c in &p.characteristics {
        let _ = c.required_len();
        if let Ok(f) = c.decode_frame(value) {
            f.readings.iter().for_each(check_reading);
        }
        if let Ok(u) = uuid::parse(&c.uuid) {
            if let Ok(rs) = p.decode(u, value) {
                rs.iter().for_each(check_reading);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, v)) = data.split_first() else { return };
    match sel % 3 {
        0 => {
            let p = example();
            decode_all(p, v);
            let _ = p.decode(uuid::parse("fe50").unwrap(), v);
        }
        1 => {
            let Ok(text) = std::str::from_utf8(v) else { return };
            let Ok(f) = toml::from_str::<File>(text) else { return };
            let values: [&[u8]; 5] = [
                &[],
                &[0x01],
                &[0xff; 7],
                &[0x00, 0x08, 0x00, 0x80, 0xff, 0x07, 0xfe, 0x7f, 0x00, 0x08, 0xe8, 0x07, 1, 2],
                &[0x5a; 64],
            ];
            for p in &f.ble.vendor_profile {
                let _ = p.validate();
                let _ = p.service_uuid();
                for value in values {
                    decode_all(p, value);
                }
            }
        }
        _ => {
            let text = String::from_utf8_lossy(v);
            let _ = uuid::parse(&text);
            let _ = uuid::parse_128(&text);
            let _ = parse_unit(&text);
        }
    }
});
