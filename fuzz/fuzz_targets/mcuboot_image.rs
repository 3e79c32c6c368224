//! The MCUboot image parser (`wardgate::firmware::image`): any input parses or is refused with
//! an offset inside the file, never a panic. When it parses: the TLVs lie inside the file, the
//! hashes are those of the bytes (the file SHA-256 of the whole input, the image hash of its
//! prefix), and checking the image against what it says about itself passes exactly when its
//! SHA256 TLV matches.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wardgate::firmware::image::{parse, Expected};

fuzz_target!(|data: &[u8]| {
    let info = match parse(data) {
        Ok(i) => i,
        Err(e) => {
            assert!(
                e.offset <= data.len() as u64,
                "error offset {} past the input",
                e.offset
            );
            return;
        }
    };
    assert_eq!(info.file_size, data.len() as u64);
    assert!(info.tlv_end <= info.file_size);
    for t in &info.tlvs {
        assert!(t.offset + 4 + t.value.len() as u64 <= info.tlv_end);
    }
    let file = ring_sha256(data);
    assert_eq!(info.file_sha256, file);
    let hashed = (info.tlv_offset + u64::from(info.header.protect_tlv_size)) as usize;
    assert_eq!(info.computed_hash, ring_sha256(&data[..hashed]));
    let own = Expected {
        version: info.header.version,
        size: info.file_size,
        sha256: info.file_sha256,
        mcuboot_hash: info.computed_hash,
        keyhash: None,
    };
    assert_eq!(info.check_against(&own).is_ok(), info.hash_matches());
});

fn ring_sha256(b: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .try_into()
        .unwrap()
}
