//! The SMP-over-BLE reassembler (PROTOCOLS §A.4) on arbitrary notifications (the input cut into
//! pieces whose size comes from the first byte): nothing panics, every frame it yields is exactly
//! `8 + len` bytes of a valid header, and a valid frame split at any ATT MTU reassembles to
//! itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wardgate_adapters::smp::ble::{split, Reassembler};
use wardgate_adapters::smp::header::{Frame, Header};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut r = Reassembler::new();
    for piece in rest.chunks(usize::from(first % 40) + 1) {
        if let Ok(Some(frame)) = r.push(piece) {
            let h = Header::decode(&frame).expect("a reassembled frame has a header");
            assert_eq!(h.frame_len(), frame.len());
        }
    }
    if Frame::decode(rest).is_ok() {
        let mtu = 23 + u16::from(first);
        let mut r = Reassembler::new();
        let mut got = None;
        for p in split(rest, mtu) {
            assert!(p.len() <= usize::from(mtu) - 3);
            got = r.push(p).expect("a valid frame reassembles");
        }
        assert_eq!(got.as_deref(), Some(rest));
    }
});
