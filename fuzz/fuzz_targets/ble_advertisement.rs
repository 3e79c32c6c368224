//! BLE advertisements on arbitrary bytes. The first byte picks the parser: 0 the whole
//! advertising payload (AD structures, then every beacon format it recognises; readings and
//! presence of each beacon), 1 AD structures, 2 Eddystone, 3 BTHome v2 (plain), 4 Mi Scale v1,
//! 5 iBeacon, 6 iBeacon from manufacturer data (company id = next 2 bytes), 7 Omron local name.
//! Nothing panics; readings are finite.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wardgate_adapters::ble::decode::advertisement::{
    bthome, decode_advertisement, eddystone, ibeacon, mi_scale, omron, parse_ad_structures,
};
use wardgate_fuzz::check_reading;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, v)) = data.split_first() else { return };
    match sel % 8 {
        0 => {
            if let Ok(adv) = decode_advertisement(v) {
                adv.readings().iter().for_each(check_reading);
                for b in &adv.beacons {
                    let _ = (b.kind(), b.presence());
                }
                for p in &adv.problems {
                    assert!(p.offset <= v.len(), "problem offset past the payload: {p:?}");
                }
            }
        }
        1 => {
            if let Ok(s) = parse_ad_structures(v) {
                for a in s {
                    assert!(a.offset < v.len());
                }
            }
        }
        2 => {
            if let Ok(eddystone::Eddystone::Tlm(t)) = eddystone::parse_eddystone(v) {
                let _ = t.uptime_s();
            }
        }
        3 => {
            if let Ok(b) = bthome::parse_bthome(v) {
                b.readings().iter().for_each(check_reading);
            }
        }
        4 => {
            if let Ok(m) = mi_scale::parse_mi_scale_v1(v) {
                let _ = m.weight_kg();
                m.readings().iter().for_each(check_reading);
            }
        }
        5 => {
            if let Ok(b) = ibeacon::parse_ibeacon(v) {
                let _ = b.uuid_string();
            }
        }
        6 => {
            if v.len() >= 2 {
                let _ = ibeacon::ibeacon_from_manufacturer(u16::from_le_bytes([v[0], v[1]]), &v[2..]);
            }
        }
        _ => {
            let _ = omron::parse_omron_name(&String::from_utf8_lossy(v));
        }
    }
});
