//! The `lines` serial decoder. The first byte picks: 0–2 the shipped example maps
//! (`config/profiles/lines-example.toml`: json `esp32-oximeter`, csv with checksum
//! `nibp-export`, kv `masimo-ascii1`), 3 a kv map with a CRC-16 checksum, a CR terminator and
//! every field kind; the rest is the byte stream, fed whole, one byte at a time and in random
//! chunks (`wardgate_fuzz::check_serial`: identical output, finite readings, offsets inside
//! the stream). Beyond that: every status flag and id is printable text without spaces, every
//! device time is `YYYY-MM-DDThh:mm:ss`. 4: the rest, as UTF-8 TOML, deserialised as
//! `[[lines_map]]` tables (the serde path the gateway config uses) and compiled; a map that
//! compiles decodes fixed lines and the text itself. Nothing panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use std::sync::{Arc, OnceLock};
use wardgate_adapters::serial::protocols::lines::map::{is_status_text, CompiledMap, LinesMap};
use wardgate_adapters::serial::protocols::lines::Lines;
use wardgate_adapters::serial::protocols::{Decoded, Protocol};
use wardgate_fuzz::check_serial;

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    lines_map: Vec<LinesMap>,
}

const EXTRA: &str = r##"
[[lines_map]]
name = "kv-crc"
syntax = "kv"
terminator = "\r"
separator = ";"
assign = ":"
skip_prefix = ["#"]
[lines_map.checksum]
algorithm = "crc16-xmodem"
separator = "|"
[[lines_map.field]]
name = "id"
key = "id"
kind = "id"
optional = true
[[lines_map.field]]
name = "t"
key = "t"
kind = "time"
format = "%d.%m.%y %H:%M:%S.%f%z"
optional = true
[[lines_map.field]]
name = "n"
key = "n"
kind = "record"
optional = true
[[lines_map.field]]
name = "st"
key = "st"
kind = "status"
values = { OK = "", ALM = "alarm" }
optional = true
[[lines_map.field]]
name = "bits"
key = "b"
kind = "status"
radix = 16
bits = { 0 = "a", 63 = "z" }
optional = true
[[lines_map.field]]
name = "hr"
key = "hr"
mdc = "MDC_ECG_HEART_RATE"
unit = "{beat}/min"
scale = 0.5
add = -1
range = [0, 300]
absent = ["--"]
suffix = "bpm"
optional = true
[[lines_map.field]]
name = "ev"
key = "ev"
kind = "event"
mdc = 67108999
optional = true
"##;

fn maps() -> &'static [Arc<CompiledMap>] {
    static M: OnceLock<Vec<Arc<CompiledMap>>> = OnceLock::new();
    M.get_or_init(|| {
        let text = format!(
            "{}\n{EXTRA}",
            include_str!("../../config/profiles/lines-example.toml")
        );
        toml::from_str::<File>(&text)
            .expect("the maps parse")
            .lines_map
            .iter()
            .map(|m| Arc::new(m.compile().expect("the maps compile")))
            .collect()
    })
}

fn make0() -> Box<dyn Protocol> {
    Box::new(Lines::new(maps()[0].clone()))
}
fn make1() -> Box<dyn Protocol> {
    Box::new(Lines::new(maps()[1].clone()))
}
fn make2() -> Box<dyn Protocol> {
    Box::new(Lines::new(maps()[2].clone()))
}
fn make3() -> Box<dyn Protocol> {
    Box::new(Lines::new(maps()[3].clone()))
}

fn check_output(out: &[Decoded]) {
    for d in out {
        match d {
            Decoded::Reading(r) => {
                assert!(r.value.is_finite());
                assert!(r.status.iter().all(|s| is_status_text(s)), "{r:?}");
                if let Some(t) = &r.device_time {
                    assert_eq!(t.len(), 19, "{t}");
                    assert_eq!(t.as_bytes()[10], b'T', "{t}");
                }
            }
            Decoded::Identity(id) => assert!(is_status_text(id), "{id:?}"),
            Decoded::Error { .. } => {}
            Decoded::Waveform { .. } => panic!("lines emits no waveform: {d:?}"),
        }
    }
}

fn decode(p: &mut dyn Protocol, bytes: &[u8]) -> Vec<Decoded> {
    let mut out = Vec::new();
    p.feed(bytes, &mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 5 {
        4 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let Ok(f) = toml::from_str::<File>(text) else {
                return;
            };
            for m in &f.lines_map {
                let _ = m.problems();
                if let Ok(c) = m.compile() {
                    let mut p = Lines::new(Arc::new(c));
                    let fixed: [&[u8]; 4] = [
                        b"{\"a\":1,\"b\":\"2\"}\n",
                        b"1,2,3,\"4\"\r\n",
                        b"a=1 b=2 c=x\n",
                        text.as_bytes(),
                    ];
                    for input in fixed {
                        check_output(&decode(&mut p, input));
                    }
                }
            }
        }
        s => {
            let make = [make0, make1, make2, make3][s as usize];
            check_serial(make, rest);
            check_output(&decode(make().as_mut(), rest));
        }
    }
});
