//! The SMP serial console decoder (PROTOCOLS §A.5) on arbitrary lines: fed whole and in chunks
//! (sizes from the first byte) it gives the same events; nothing panics; every frame it yields
//! encodes into lines of at most 127 bytes that decode to that frame again. The encoder round
//! trips the input itself as a frame body too.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wardgate_adapters::smp::console::{encode, ConsoleDecoder, ConsoleEvent, MAX_LINE};

fn decode(chunks: impl Iterator<Item = impl AsRef<[u8]>>) -> Vec<ConsoleEvent> {
    let mut d = ConsoleDecoder::new();
    let mut out = Vec::new();
    for c in chunks {
        d.feed(c.as_ref(), &mut out);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let whole = decode(std::iter::once(rest));
    let chunked = decode(rest.chunks(usize::from(first % 64) + 1));
    assert_eq!(whole, chunked);
    for ev in &whole {
        if let ConsoleEvent::Frame(f) = ev {
            let lines = encode(f, MAX_LINE);
            assert!(lines.split(|&b| b == b'\n').all(|l| l.len() < MAX_LINE));
            assert_eq!(decode(std::iter::once(&lines)), vec![ConsoleEvent::Frame(f.clone())]);
        }
    }
    let lines = encode(rest, MAX_LINE);
    assert_eq!(decode(std::iter::once(&lines)), vec![ConsoleEvent::Frame(rest.to_vec())]);
});
