//! Unit tests of the `lines` decoder and its map checks, on the shipped example maps
//! (`config/profiles/lines-example.toml`) and small maps written here.

use super::map::{CompiledMap, LinesMap};
use super::*;
use crate::observation::{mdc, Unit};
use serde::Deserialize;

/// The shipped examples.
const EXAMPLE: &str = include_str!("../../../../../config/profiles/lines-example.toml");

#[derive(Deserialize)]
struct File {
    lines_map: Vec<LinesMap>,
}

fn maps(text: &str) -> Vec<LinesMap> {
    toml::from_str::<File>(text).unwrap().lines_map
}

fn example(name: &str) -> Arc<CompiledMap> {
    let m = maps(EXAMPLE)
        .into_iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no example map {name}"));
    Arc::new(m.compile().unwrap_or_else(|e| panic!("{name}: {e:?}")))
}

fn map(text: &str) -> Arc<CompiledMap> {
    Arc::new(maps(text).remove(0).compile().unwrap())
}

fn problems(text: &str) -> Vec<String> {
    maps(text)
        .remove(0)
        .problems()
        .into_iter()
        .map(|(k, m)| format!("{k}: {m}"))
        .collect()
}

/// Everything `input` decodes to, fed in pieces of `chunk` bytes.
fn decode(map: &Arc<CompiledMap>, input: &[u8], chunk: usize) -> Vec<Decoded> {
    let mut p = Lines::new(map.clone());
    let mut out = Vec::new();
    for c in input.chunks(chunk.max(1)) {
        p.feed(c, &mut out);
    }
    out
}

fn reading(code: u32, value: f64, unit: Unit, time: Option<&str>, status: &[&str]) -> Decoded {
    Decoded::Reading(Reading {
        code,
        value,
        unit,
        device_time: time.map(Into::into),
        status: status.iter().map(|s| s.to_string()).collect(),
    })
}

#[test]
fn every_shipped_example_map_compiles() {
    let all = maps(EXAMPLE);
    assert_eq!(all.len(), 3);
    for m in all {
        assert_eq!(m.problems(), Vec::<(String, String)>::new(), "{}", m.name);
    }
}

#[test]
fn json_lines_of_the_esp32_example() {
    let m = example("esp32-oximeter");
    let input =
        b"{\"dev\":\"ox-001\",\"spo2\":97,\"pulse\":72,\"ts\":1718000000250000,\"seq\":17}\n\
{\"dev\":\"ox-001\",\"spo2\":-1,\"pulse\":\"71\",\"seq\":18}\r\n";
    let t = Some("2024-06-10T06:13:20");
    let want = vec![
        Decoded::Identity("ox-001".into()),
        reading(mdc::SPO2, 97.0, Unit::PERCENT, t, &["record=17"]),
        reading(
            mdc::PULSE_RATE_OXIM,
            72.0,
            Unit::BEAT_PER_MIN,
            t,
            &["record=17"],
        ),
        Decoded::Identity("ox-001".into()),
        // spo2 -1: absent (no finger); the pulse as a JSON string is read alike; no ts.
        reading(
            mdc::PULSE_RATE_OXIM,
            71.0,
            Unit::BEAT_PER_MIN,
            None,
            &["record=18"],
        ),
    ];
    for chunk in [1, 2, 7, 64, 4096] {
        assert_eq!(decode(&m, input, chunk), want, "chunk {chunk}");
    }
    let mut p = Lines::new(m.clone());
    p.feed(input, &mut Vec::new());
    assert_eq!(p.frames_ok(), 2);
    assert!(p.reports_identity());
}

#[test]
fn a_bad_field_refuses_the_whole_line_at_its_offset_and_never_shows_the_value() {
    let m = example("esp32-oximeter");
    let good = "{\"dev\":\"ox-001\",\"spo2\":97,\"pulse\":72}\n";
    let cases = [
        (
            "{\"dev\":\"ox-001\",\"spo2\":101,\"pulse\":72}",
            "field \"spo2\" (key spo2): value is outside what the device can send (0 to 100)",
        ),
        (
            "{\"dev\":\"ox-001\",\"spo2\":\"9x\",\"pulse\":72}",
            "field \"spo2\" (key spo2): value is not a number (does the device add a unit? set suffix)",
        ),
        (
            "{\"dev\":\"ox-001\",\"pulse\":72}",
            "field \"spo2\" (key spo2) is missing",
        ),
        (
            "{\"dev\":\"ox-001\",\"spo2\":[97],\"pulse\":72}",
            "field \"spo2\" (key spo2) is an array, not a value",
        ),
        ("{\"dev\":\"ox-001\",\"spo2\":97,", "not JSON: EOF while parsing a value at line 1 column 26"),
        ("[1,2]", "not a JSON object but an array"),
        (
            "{\"dev\":\"ox 001\",\"spo2\":97,\"pulse\":72}",
            "field \"dev\" (key dev): an id is printable text without spaces, at most 64 characters",
        ),
        (
            "{\"dev\":\"ox-001\",\"spo2\":97,\"pulse\":72,\"ts\":\"yesterday\"}",
            "field \"ts\" (key ts): time \"yesterday\" is not a whole number",
        ),
        (
            "{\"dev\":\"ox-001\",\"spo2\":97,\"pulse\":72,\"seq\":-3}",
            "field \"seq\" (key seq): a record number is a whole number from 0",
        ),
        ("{\"dev\":\"\",\"spo2\":97,\"pulse\":72}", "field \"dev\" (key dev) is empty"),
        (
            "{\"dev\":\"ox-001\",\"spo2\":97,\"spo2\":12,\"pulse\":72}",
            "key \"spo2\" appears twice in the line: which value is meant is ambiguous",
        ),
        (
            "{\"dev\":\"ox-001\",\"spo2\":97,\"pulse\":72,\"seq\":18446744073709551616}",
            "field \"seq\" (key seq): the record number is too large (at most 18446744073709551615)",
        ),
        (
            "{\"dev\":\"ox-001\",\"spo2\":1e-400,\"pulse\":72}",
            "a number in the line is too small to be told from 0 (underflow); it would be stored as 0",
        ),
    ];
    for (bad, why) in cases {
        let input = format!("{good}{bad}\n{good}");
        let out = decode(&m, input.as_bytes(), 5);
        let errors: Vec<&Decoded> = out
            .iter()
            .filter(|d| matches!(d, Decoded::Error { .. }))
            .collect();
        assert_eq!(
            errors,
            [&Decoded::Error {
                offset: good.len() as u64,
                message: why.into()
            }],
            "{bad}"
        );
        let readings = out
            .iter()
            .filter(|d| matches!(d, Decoded::Reading(_)))
            .count();
        assert_eq!(readings, 4, "only the good lines' readings: {bad}");
        for e in errors {
            if let Decoded::Error { message, .. } = e {
                assert!(!message.contains("101"), "no patient value in {message}");
            }
        }
    }
}

#[test]
fn non_text_bytes_and_overlong_lines_are_errors_with_their_offsets() {
    let m = example("esp32-oximeter");
    let good = "{\"dev\":\"ox-001\",\"spo2\":97,\"pulse\":72}\n";
    let mut input = good.as_bytes().to_vec();
    input.extend(b"{\"dev\":\"ox\xff\"}\n");
    let long_at = input.len() as u64;
    input.extend([b'x'; 5000]);
    input.push(b'\n');
    input.extend(good.as_bytes());
    let out = decode(&m, &input, 100);
    let errors: Vec<(u64, String)> = out
        .iter()
        .filter_map(|d| match d {
            Decoded::Error { offset, message } => Some((*offset, message.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        errors,
        [
            (
                good.len() as u64,
                "byte 0xFF at byte 10 of the line is not UTF-8 text".to_string()
            ),
            (long_at, "line longer than max_line (256 bytes)".to_string()),
        ]
    );
    assert_eq!(
        out.iter()
            .filter(|d| matches!(d, Decoded::Reading(_)))
            .count(),
        4
    );
}

#[test]
fn the_first_line_may_be_a_fragment_and_is_skipped_silently() {
    let m = example("esp32-oximeter");
    let input = b"o\",\"spo2\":97,\"pulse\":72}\n{\"dev\":\"ox-001\",\"spo2\":97,\"pulse\":72}\n";
    let out = decode(&m, input, 3);
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[0], Decoded::Identity("ox-001".into()));
    // Not when the stream started with a whole line: then a bad first line is reported.
    let out = decode(&m, b"\n{\"spo2\":1}\n", 3);
    assert!(
        matches!(out[..], [Decoded::Error { offset: 1, .. }]),
        "{out:?}"
    );
}

#[test]
fn csv_with_an_nmea_checksum_prefix_filter_scale_and_status_bits() {
    let m = example("nibp-export");
    let body = "NIBP,2024-06-10 06:13:20,121,79,93,---,368,0043";
    let sum = checksum::Algorithm::Xor8.compute(body.as_bytes());
    let line = format!("${body}*{sum:02X}\r\n");
    let input =
        format!("$STAT,ok*00\r\n{line}$NIBP,2024-06-10 06:13:20,121,79,93,64,368,0041*10\r\n");
    let out = decode(&m, input.as_bytes(), 9);
    let t = Some("2024-06-10T06:13:20");
    let st = ["alarm-sys-high", "alarm-sys-low", "low-battery"];
    assert_eq!(
        out,
        vec![
            reading(mdc::NIBP_SYS, 121.0, Unit::MMHG, t, &st),
            reading(mdc::NIBP_DIA, 79.0, Unit::MMHG, t, &st),
            reading(mdc::NIBP_MEAN, 93.0, Unit::MMHG, t, &st),
            // pulse "---": absent
            reading(mdc::TEMP_BODY, 368.0 * 0.1, Unit::DEGC, t, &st),
            reading(
                mdc::NIBP_SYS,
                121.0,
                Unit::MMHG,
                t,
                &["alarm-sys-high", "low-battery"]
            ),
            reading(
                mdc::NIBP_DIA,
                79.0,
                Unit::MMHG,
                t,
                &["alarm-sys-high", "low-battery"]
            ),
            reading(
                mdc::NIBP_MEAN,
                93.0,
                Unit::MMHG,
                t,
                &["alarm-sys-high", "low-battery"]
            ),
            reading(
                mdc::PULSE_RATE_NIBP,
                64.0,
                Unit::BEAT_PER_MIN,
                t,
                &["alarm-sys-high", "low-battery"]
            ),
            reading(
                mdc::TEMP_BODY,
                368.0 * 0.1,
                Unit::DEGC,
                t,
                &["alarm-sys-high", "low-battery"]
            ),
        ]
    );
    // A flipped bit: the checksum refuses the line.
    let bad = format!("\r\n{}", line.replace(",121,", ",131,"));
    let out = decode(&m, bad.as_bytes(), 4);
    assert!(
        matches!(&out[..], [Decoded::Error { offset: 2, message }] if message.starts_with("bad checksum")),
        "{out:?}"
    );
    // A missing required column.
    let short = "NIBP,2024-06-10 06:13:20,121";
    let sum = checksum::Algorithm::Xor8.compute(short.as_bytes());
    let out = decode(&m, format!("\r\n${short}*{sum:02X}\r\n").as_bytes(), 4);
    assert!(
        matches!(&out[..], [Decoded::Error { message, .. }] if message == "field \"dia\" (column 4) is missing"),
        "{out:?}"
    );
}

/// Published Masimo example lines (see `masimo.rs`: documentation, not recordings) through the
/// `masimo-ascii1` example map and through the dedicated decoder: the same readings (the map
/// leaves the date and time unmapped, may order status flags differently, and names bits
/// outside its table `exc-bitN` where the decoder writes `exception-0x…`).
#[test]
fn the_masimo_example_map_reads_what_the_masimo_decoder_reads() {
    let lines = [
        "12/01/05 11:56:29 SN=0123456789 SPO2=098% BPM=240 PI=20.00% SPCO=01.0% SPMET=00.5% DESAT=01 PIDELTA=-02 PVI=027 ALARM=0000 EXC=000820\r\n",
        "09/15/10 15:10:29 SPO2=097% BPM=064 PI=11.82% ALARM=20 EXC=800\r\n",
        "02/22/16 22:47:45 SN=0000056661 SPO2=098% BPM=097 PI=03.60% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800\r\n",
        "03/15/11 14:22:06 SPO2=000% BPM=000 PI=00.00% ALARM=0000 EXC=000828\r\n",
        "03/15/11 14:22:07 SPO2=090% BPM=--- PI=--.--% ALARM=0012 EXC=800604\r\n",
    ];
    let input = format!("\n{}", lines.concat());
    let norm = |out: Vec<Decoded>| -> Vec<Decoded> {
        out.into_iter()
            .map(|d| match d {
                Decoded::Reading(mut r) => {
                    r.device_time = None;
                    r.status
                        .retain(|s| !s.starts_with("exc-bit") && !s.starts_with("exception-0x"));
                    r.status.sort();
                    Decoded::Reading(r)
                }
                other => other,
            })
            .collect()
    };
    let ours = norm(decode(&example("masimo-ascii1"), input.as_bytes(), 11));
    let mut theirs = Vec::new();
    super::super::masimo::Masimo::new().feed(input.as_bytes(), &mut theirs);
    let theirs = norm(theirs);
    assert_eq!(ours, theirs);
    assert_eq!(
        ours.iter()
            .filter(|d| matches!(d, Decoded::Reading(_)))
            .count(),
        10
    );
}

#[test]
fn kv_status_values_events_and_unmapped_values() {
    let m = map(r##"
[[lines_map]]
name = "pump"
syntax = "kv"
separator = ";"
assign = ":"
skip_prefix = ["#"]
[[lines_map.field]]
name = "state"
key = "st"
kind = "status"
values = { RUN = "", OCCL = "occlusion" }
[[lines_map.field]]
name = "bolus"
key = "bolus"
kind = "event"
mdc = 67108999
optional = true
[[lines_map.field]]
name = "rate"
key = "rate"
mdc = 67109000
unit = "1"
"##);
    let out = decode(
        &m,
        b"# pump v2.1 booted\nst:RUN; rate: 12.5\nst:OCCL;rate:0;bolus:1\nst:HOLD;rate:3\nst:a b;rate:3\n",
        3,
    );
    assert_eq!(
        out,
        vec![
            reading(67_109_000, 12.5, Unit::DIMLESS, None, &[]),
            reading(
                67_108_999,
                1.0,
                Unit::DIMLESS,
                None,
                &["event:bolus", "occlusion"]
            ),
            reading(67_109_000, 0.0, Unit::DIMLESS, None, &["occlusion"]),
            reading(67_109_000, 3.0, Unit::DIMLESS, None, &["state=HOLD"]),
            Decoded::Error {
                offset: 76,
                message: "field \"state\" (key st): a status value is printable text without spaces, at most 64 characters with the field name".into()
            },
        ]
    );
    let mut p = Lines::new(m);
    p.feed(b"# comment\n\n\nst:RUN;rate:1\n", &mut Vec::new());
    assert_eq!(
        p.frames_ok(),
        2,
        "the comment and the line; blank lines are neither"
    );
}

#[test]
fn other_terminators_and_nested_json_keys() {
    let m = map(r#"
[[lines_map]]
name = "etx"
syntax = "json"
terminator = "\u0003"
[[lines_map.field]]
name = "t"
key = "vitals.temp"
mdc = "MDC_TEMP_BODY"
unit = "Cel"
[[lines_map.field]]
name = "when"
key = "at"
kind = "time"
format = "iso8601"
"#);
    let out = decode(
        &m,
        b"{\"vitals\":{\"temp\":36.6},\"at\":\"2024-01-01T00:30:00+01:00\"}\x03{\"vitals\":{\"temp\":null},\"at\":\"2024-01-01T00:30:00\"}\x03",
        6,
    );
    assert_eq!(
        out,
        vec![reading(
            mdc::TEMP_BODY,
            36.6,
            Unit::DEGC,
            Some("2023-12-31T23:30:00"),
            &[]
        )]
    );
}

#[test]
fn a_lines_device_without_its_map_reports_every_line() {
    let mut p = Lines::unmapped();
    let mut out = Vec::new();
    p.feed(b"a=1\nb=2\n", &mut out);
    assert_eq!(out.len(), 2);
    assert!(
        matches!(&out[0], Decoded::Error { offset: 0, message } if message.contains("no map")),
        "{out:?}"
    );
    assert!(!p.reports_identity());
}

#[test]
fn map_problems_name_their_key() {
    let head = "[[lines_map]]\nname = \"m\"\n";
    let cases: &[(&str, &str)] = &[
        ("syntax = \"json\"\n", "field: no field"),
        (
            "syntax = \"json\"\nterminator = \"\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nmdc=1\nunit=\"%\"\n",
            "terminator: terminator must be 1 to 8 bytes",
        ),
        (
            "syntax = \"json\"\nmax_line = 8\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nmdc=1\nunit=\"%\"\n",
            "max_line: max_line 8 must be between 16 and 65536 bytes",
        ),
        (
            "syntax = \"json\"\nseparator = \";\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nmdc=1\nunit=\"%\"\n",
            "separator: syntax json takes no separator",
        ),
        (
            "syntax = \"csv\"\nseparator = \";;\"\n[[lines_map.field]]\nname=\"a\"\ncolumn=1\nmdc=1\nunit=\"%\"\n",
            "separator: csv separator \";;\" must be one character",
        ),
        (
            "syntax = \"csv\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nmdc=1\nunit=\"%\"\n",
            "field[0].key: syntax csv locates fields by column",
        ),
        (
            "syntax = \"csv\"\n[[lines_map.field]]\nname=\"a\"\ncolumn=5\nmdc=1\nunit=\"%\"\n[[lines_map.field]]\nname=\"b\"\ncolumn=5\nmdc=2\nunit=\"%\"\n",
            "field[1].column: column 5 is also field \"a\"'s: one value cannot be two fields",
        ),
        (
            "syntax = \"kv\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"SPO2\"\nmdc=1\nunit=\"%\"\n[[lines_map.field]]\nname=\"b\"\nkey=\"SPO2\"\nkind=\"status\"\n",
            "field[1].key: key SPO2 is also field \"a\"'s: one value cannot be two fields",
        ),
        (
            "syntax = \"csv\"\n[[lines_map.field]]\nname=\"a\"\ncolumn=0\nmdc=1\nunit=\"%\"\n",
            "field[0].column: columns count from 1",
        ),
        (
            "syntax = \"kv\"\n[[lines_map.field]]\nname=\"a\"\ncolumn=2\nmdc=1\nunit=\"%\"\n",
            "field[0].column: syntax kv locates fields by key",
        ),
        (
            "syntax = \"kv\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nunit=\"%\"\n",
            "field[0].mdc: a measurement needs an mdc code",
        ),
        (
            "syntax = \"kv\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nmdc=\"MDC_NOPE\"\nunit=\"%\"\n",
            "field[0].mdc: unknown mdc name",
        ),
        (
            "syntax = \"kv\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nmdc=1\nunit=\"/min\"\n",
            "field[0].unit: unit \"/min\" is ambiguous",
        ),
        (
            "syntax = \"kv\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nmdc=1\nunit=\"%\"\nrange=[5,1]\n",
            "field[0].range: range must be [min, max]",
        ),
        (
            "syntax = \"kv\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nkind=\"id\"\nabsent=[\"-\"]\n",
            "field[0].absent: the id field takes no absent values",
        ),
        (
            "syntax = \"kv\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nkind=\"time\"\n",
            "field[0].format: a time field needs a format",
        ),
        (
            "syntax = \"kv\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nkind=\"time\"\nformat=\"%H:%M\"\n",
            "field[0].format: time format \"%H:%M\" needs exactly one year",
        ),
        (
            "syntax = \"kv\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nkind=\"record\"\nmdc=1\n",
            "field[0].mdc: a record field takes no mdc",
        ),
        (
            "syntax = \"kv\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nkind=\"status\"\nbits={ 64 = \"x\" }\n",
            "field[0].bits: bit \"64\" is not a number from 0 to 63",
        ),
        (
            "syntax = \"kv\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nkind=\"status\"\nradix=16\n",
            "field[0].radix: radix goes with bits",
        ),
        (
            "syntax = \"kv\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nkind=\"status\"\nvalues={ A = \"has space\" }\n",
            "field[0].values: flag \"has space\"",
        ),
        (
            "syntax = \"kv\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nkind=\"record\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"b\"\nkind=\"record\"\n",
            "field[1].name: field name \"a\" is used twice",
        ),
        (
            "syntax = \"kv\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nkind=\"record\"\n[[lines_map.field]]\nname=\"b\"\nkey=\"b\"\nkind=\"record\"\n",
            "field[1].kind: a line has at most one record field",
        ),
        (
            "syntax = \"kv\"\n[[lines_map.field]]\nname=\"a\"\nkey=\"a\"\nmdc=1\nunit=\"%\"\nformat=\"unix_s\"\n",
            "field[0].format: a measurement field takes no format",
        ),
        (
            "syntax = \"kv\"\n[checksum]\n",
            "",
        ),
    ];
    for (body, want) in cases {
        if want.is_empty() {
            continue;
        }
        let p = problems(&format!("{head}{body}"));
        assert!(
            p.iter().any(|m| m.starts_with(want)),
            "{body}: want {want:?}, got {p:?}"
        );
    }
}

#[test]
fn random_bytes_never_panic_and_never_read() {
    // A cheap in-tree companion of the fuzz target: random bytes through every example map.
    let mut rng = fastrand::Rng::with_seed(11);
    for name in ["esp32-oximeter", "nibp-export", "masimo-ascii1"] {
        let m = example(name);
        let mut p = Lines::new(m.clone());
        let mut out = Vec::new();
        for _ in 0..2000 {
            let n = rng.usize(0..300);
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            p.feed(&bytes, &mut out);
        }
        let readings = out
            .iter()
            .filter(|d| matches!(d, Decoded::Reading(_)))
            .count();
        assert_eq!(readings, 0, "{name}: random bytes gave readings");
        assert!(p.buffered_high_water() <= m.max_line + 300, "{name}");
    }
}

#[test]
fn numbers_a_double_cannot_hold_and_empty_required_times_refuse_the_line() {
    let m = map(concat!(
        "[[lines_map]]\nname = \"m\"\nsyntax = \"csv\"\n",
        "[[lines_map.field]]\nname = \"t\"\ncolumn = 1\nkind = \"time\"\nformat = \"unix_s\"\n",
        "[[lines_map.field]]\nname = \"n\"\ncolumn = 2\nkind = \"record\"\noptional = true\n",
        "[[lines_map.field]]\nname = \"v\"\ncolumn = 3\nmdc = 1\nunit = \"%\"\n",
    ));
    let out = decode(
        &m,
        b"0,1,5\n0,2,1e400\n0,3,1e-400\n,4,5\n0,,0.0\n0,6,-0e-999\n",
        3,
    );
    let at = |offset: u64, message: &str| Decoded::Error {
        offset,
        message: message.into(),
    };
    assert_eq!(
        out,
        [
            reading(1, 5.0, Unit::PERCENT, Some("1970-01-01T00:00:00"), &["record=1"]),
            at(6, "field \"v\" (column 3): value is too large for a number (overflow)"),
            at(
                16,
                "field \"v\" (column 3): value is too small to be told from 0 (underflow); it would be stored as 0"
            ),
            at(
                27,
                "field \"t\" (column 1) is empty (set optional = true if the device may leave it empty)"
            ),
            // An empty optional record is no record; 0.0 and -0e-999 are zero.
            reading(1, 0.0, Unit::PERCENT, Some("1970-01-01T00:00:00"), &[]),
            reading(1, -0.0, Unit::PERCENT, Some("1970-01-01T00:00:00"), &["record=6"]),
        ]
    );
}
