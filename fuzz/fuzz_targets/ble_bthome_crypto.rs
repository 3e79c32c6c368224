//! Encrypted BTHome v2 (AES-128-CCM) with a fixed key and MAC. The first byte picks:
//! 0 arbitrary service data → `decrypt_bthome`, `parse_bthome_with_key`, and the same frame
//! inside an advertisement through `decode_advertisement_with_key`;
//! 1 a valid frame: device-information byte, 4-byte counter, then arbitrary BTHome objects are
//! encrypted with the key; decrypting must give back the objects and the counter, and the
//! object parser then runs on them (as an advertisement too);
//! 2 `parse_bindkey` on the rest as text. Nothing panics; readings are finite.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wardgate_adapters::ble::decode::advertisement::bthome::parse_bthome_with_key;
use wardgate_adapters::ble::decode::advertisement::bthome_crypto::{
    decrypt_bthome, encrypt_bthome, parse_bindkey,
};
use wardgate_adapters::ble::decode::advertisement::decode_advertisement_with_key;
use wardgate_fuzz::check_reading;

/// A fixed key (test only).
const KEY: [u8; 16] = [
    0x23, 0x1d, 0x39, 0xc1, 0xd7, 0xcc, 0x1a, 0xb1, 0xae, 0xe2, 0x24, 0xcd, 0x09, 0x6d, 0xb9,
    0x32,
];
const MAC: [u8; 6] = [0x54, 0x48, 0xe6, 0x8f, 0x80, 0xa5];

fn all(frame: &[u8]) {
    let _ = decrypt_bthome(MAC, frame, &KEY);
    if let Ok(b) = parse_bthome_with_key(frame, MAC, &KEY) {
        b.readings().iter().for_each(check_reading);
    }
    // The frame as 16-bit service data 0xFCD2 in an advertisement, when it fits.
    if frame.len() <= 250 {
        let mut adv = vec![0x02, 0x01, 0x06, (frame.len() + 3) as u8, 0x16, 0xd2, 0xfc];
        adv.extend_from_slice(frame);
        if let Ok(a) = decode_advertisement_with_key(&adv, MAC, Some(&KEY)) {
            a.readings().iter().for_each(check_reading);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, v)) = data.split_first() else { return };
    match sel % 3 {
        0 => all(v),
        1 => {
            if v.len() < 5 {
                return;
            }
            let info = v[0];
            let counter = u32::from_le_bytes([v[1], v[2], v[3], v[4]]);
            let objects = &v[5..];
            let Ok(frame) = encrypt_bthome(MAC, info, objects, counter, &KEY) else { return };
            // A frame too short for the reference parser is refused, anything else decrypts.
            if let Ok(c) = decrypt_bthome(MAC, &frame, &KEY) {
                assert_eq!(c.plaintext, objects);
                assert_eq!(c.counter, counter);
            } else {
                assert!(objects.len() < 2, "a valid frame did not decrypt");
            }
            all(&frame);
        }
        _ => {
            let _ = parse_bindkey(&String::from_utf8_lossy(v));
        }
    }
});
