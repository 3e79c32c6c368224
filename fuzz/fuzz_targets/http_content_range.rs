//! `wardgate::firmware::download::parse_content_range` (the firmware download's one hand-parsed
//! HTTP header) on arbitrary bytes. Beyond "no panic": what it accepts is well-formed
//! (first ≤ last < complete) and prints back to a value that parses to the same range.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wardgate::firmware::download::{parse_content_range, ContentRange};

fuzz_target!(|data: &[u8]| {
    let Some(r) = parse_content_range(data) else { return };
    let text = match r {
        ContentRange::Bytes { first, last, complete } => {
            assert!(first <= last);
            if let Some(c) = complete {
                assert!(last < c);
            }
            let c = complete.map_or("*".to_string(), |c| c.to_string());
            format!("bytes {first}-{last}/{c}")
        }
        ContentRange::Unsatisfied { complete } => format!("bytes */{complete}"),
    };
    assert_eq!(parse_content_range(text.as_bytes()), Some(r), "{text}");
});
