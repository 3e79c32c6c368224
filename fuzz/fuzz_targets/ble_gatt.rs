//! Every GATT profile decoder on arbitrary bytes. The first byte picks the parser, the rest is
//! the characteristic value: 0-8 `Profile::ALL` (heart rate, blood pressure, cuff pressure,
//! thermometer, PLX spot-check, PLX continuous, weight, glucose, battery), 9 glucose context,
//! 10 weight with a Weight Scale Feature (first 4 bytes), 11 PLX features, 12 Date Time and
//! Current Time. Nothing panics; readings are finite; error offsets lie inside the value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wardgate_adapters::ble::decode::profiles::{glucose, plx, weight, Profile};
use wardgate_adapters::ble::decode::{CurrentTime, DateTime, DecodeError};
use wardgate_adapters::observation::Reading;
use wardgate_fuzz::check_reading;

fn check(r: Result<Vec<Reading>, DecodeError>, len: usize) {
    match r {
        Ok(rs) => rs.iter().for_each(check_reading),
        Err(e) => assert!(e.offset <= len, "offset {} past {len} bytes: {e:?}", e.offset),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, v)) = data.split_first() else { return };
    match sel % 13 {
        i @ 0..=8 => {
            let p = Profile::ALL[i as usize];
            check(p.decode(v), v.len());
        }
        9 => {
            let _ = glucose::parse_context(v);
        }
        10 => {
            if v.len() >= 4 {
                if let Ok(f) = weight::WeightScaleFeature::parse(&v[..4]) {
                    let _ = (f.weight_resolution(), f.height_resolution());
                    check(weight::decode_with_feature(&v[4..], f), v.len() - 4);
                }
            }
        }
        11 => {
            if let Ok(f) = plx::parse_features(v) {
                let _ = f.feature_names();
            }
        }
        _ => {
            if let Ok(d) = DateTime::parse(v) {
                let _ = d.to_iso();
                let _ = d.add_minutes(i32::from(v.get(7).copied().unwrap_or(0) as i8) * 97);
            }
            let _ = DateTime::from_bytes(v);
            if let Ok(t) = CurrentTime::parse(v) {
                let _ = t.adjust_reasons();
            }
        }
    }
});
