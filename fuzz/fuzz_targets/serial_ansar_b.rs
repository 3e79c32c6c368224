//! The ansar_b serial decoder on arbitrary bytes: fed whole, byte by byte and in random chunks, the
//! results must be identical; nothing panics; readings are finite.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wardgate_adapters::serial::protocols::{ansar_b::AnsarB, Protocol};

fn make() -> Box<dyn Protocol> {
    Box::new(AnsarB::new())
}

fuzz_target!(|data: &[u8]| wardgate_fuzz::check_serial(make, data));
