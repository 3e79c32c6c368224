//! The input of issue 11 "Measure" (c), the harness the ThingsBoard IoT Gateway was measured
//! with: one JSON line per reading, `{"dev":"ox-001","spo2":97,"pulse":72,"ts":<send time, µs
//! since the epoch>,"seq":<n>}`, reading i to pty i mod 4 as device `ox-%03d` (i mod 4 + 1); the
//! `[[lines_map]]` that reads it; and the count of what arrived upstream by (device, record
//! number): lost, duplicated, stored but never sent.

/// Ptys (devices) of the harness.
pub const PTYS: u64 = 4;
/// Observations per reading (SpO2 and pulse).
pub const OBS_PER_READING: u64 = 2;
/// The codes of a reading's two observations, in [`Tally`] slot order.
pub const CODES: [u32; 2] = [
    wardgate_adapters::observation::mdc::SPO2,
    wardgate_adapters::observation::mdc::PULSE_RATE_OXIM,
];

/// The `[[lines_map]]` named `bench-oximeter`: `dev` is the device's id (checked against the
/// `[[serial]]`'s `serial_number`), `spo2` and `pulse` measurements with their MDC codes, `ts`
/// the device time in µs since the epoch, `seq` the device's record number (status `record=N`).
pub const LINES_MAP: &str = r#"
[[lines_map]]
name = "bench-oximeter"
description = "issue 11 bench harness: {dev, spo2, pulse, ts (µs since the epoch), seq}"
syntax = "json"
max_line = 256

[[lines_map.field]]
name = "dev"
key = "dev"
kind = "id"

[[lines_map.field]]
name = "spo2"
key = "spo2"
mdc = "MDC_PULS_OXIM_SAT_O2"
unit = "%"
range = [0, 100]

[[lines_map.field]]
name = "pulse"
key = "pulse"
mdc = "MDC_PULS_OXIM_PULS_RATE"
unit = "{beat}/min"
range = [0, 350]

[[lines_map.field]]
name = "ts"
key = "ts"
kind = "time"
format = "unix_us"

[[lines_map.field]]
name = "seq"
key = "seq"
kind = "record"
"#;

/// Device (and `[[serial]]` name) of reading `i`: `ox-001` … `ox-004`.
pub fn device_name(i: u64) -> String {
    format!("ox-{:03}", i % PTYS + 1)
}

/// Reading `i`'s line, sent at `ts_us` (µs since the epoch), newline-terminated.
pub fn line(i: u64, ts_us: u64) -> String {
    format!(
        "{{\"dev\":\"{}\",\"spo2\":{},\"pulse\":{},\"ts\":{ts_us},\"seq\":{i}}}\n",
        device_name(i),
        90 + i % 10,
        60 + i % 40
    )
}

/// One observation row of a receiver's output: device (`serial:ox-001`), code, status flags
/// (comma-separated), the receipt time of its batch (ms since the epoch).
#[derive(Clone, Debug)]
pub struct Row {
    /// `observations.device`.
    pub device: String,
    /// `observations.code`.
    pub code: u32,
    /// `observations.status`.
    pub status: Option<String>,
    /// `batches.received_ms` of its batch.
    pub received_ms: i64,
}

/// What arrived of readings `0..readings`, over every receiver's output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// Readings with an observation in no output.
    pub lost: u64,
    /// Readings with an observation stored more than once (in one output or across them).
    pub duplicated: u64,
    /// Rows that are none of the readings sent (another device, code or record number).
    pub unexpected: u64,
    /// Per reading: the receipt of its last observation (ms), `None` while it is incomplete.
    pub receipt_ms: Vec<Option<i64>>,
    /// The latest receipt of any row (ms), `None` without rows.
    pub last_ms: Option<i64>,
}

/// Counts `rows` against readings `0..readings` as [`line`] writes them.
pub fn tally(readings: u64, rows: impl IntoIterator<Item = Row>) -> Tally {
    let n = readings as usize;
    let mut count = vec![[0u32; 2]; n];
    let mut last = vec![i64::MIN; n];
    let mut t = Tally::default();
    for r in rows {
        t.last_ms = Some(t.last_ms.unwrap_or(i64::MIN).max(r.received_ms));
        let record = r.status.as_deref().and_then(|s| {
            s.split(',')
                .find_map(|f| f.strip_prefix("record="))
                .and_then(|v| v.parse::<u64>().ok())
        });
        let slot = CODES.iter().position(|&c| c == r.code);
        match (record, slot) {
            (Some(i), Some(slot))
                if i < readings && r.device == format!("serial:{}", device_name(i)) =>
            {
                count[i as usize][slot] += 1;
                last[i as usize] = last[i as usize].max(r.received_ms);
            }
            _ => t.unexpected += 1,
        }
    }
    t.lost = count.iter().filter(|c| c.contains(&0)).count() as u64;
    t.duplicated = count.iter().filter(|c| c.iter().any(|&k| k > 1)).count() as u64;
    t.receipt_ms = count
        .iter()
        .zip(last)
        .map(|(c, at)| (!c.contains(&0)).then_some(at))
        .collect();
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardgate_adapters::serial::protocols::{Decoded, Protocol};

    fn row(device: &str, code: u32, status: &str, at: i64) -> Row {
        Row {
            device: device.into(),
            code,
            status: Some(status.into()),
            received_ms: at,
        }
    }

    /// The map compiles as `check-config` would, and the gateway's own `lines` decoder makes
    /// of reading i its device's id, SpO2 and pulse with `record=i` and the device time.
    #[test]
    fn the_gateway_decodes_the_harness_lines_with_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("map.toml");
        std::fs::write(&file, LINES_MAP).unwrap();
        let map = wardgate::cli::decode::load_lines_map(&file, Some("bench-oximeter")).unwrap();
        let mut dec = wardgate_adapters::serial::protocols::lines::Lines::new(map);
        let mut out = Vec::new();
        let ts = 1_718_000_000_250_000;
        dec.feed(line(6, ts).as_bytes(), &mut out);
        let mut readings = Vec::new();
        let mut ids = Vec::new();
        for d in out {
            match d {
                Decoded::Reading(r) => readings.push(r),
                Decoded::Identity(id) => ids.push(id),
                Decoded::Error { message, .. } => panic!("{message}"),
                Decoded::Waveform { .. } => panic!("a lines map gives no waveform: {d:?}"),
            }
        }
        assert_eq!(ids, ["ox-003"]);
        let got: Vec<(u32, f64, Vec<String>, Option<String>)> = readings
            .into_iter()
            .map(|r| (r.code, r.value, r.status, r.device_time))
            .collect();
        let t = Some("2024-06-10T06:13:20".to_string());
        assert_eq!(
            got,
            [
                (CODES[0], 96.0, vec!["record=6".to_string()], t.clone()),
                (CODES[1], 66.0, vec!["record=6".to_string()], t),
            ]
        );
    }

    #[test]
    fn tally_counts_lost_duplicated_and_unexpected_by_device_and_record() {
        let (s, p) = (CODES[0], CODES[1]);
        let rows = vec![
            row("serial:ox-001", s, "record=0", 10),
            row("serial:ox-001", p, "record=0", 12),
            // reading 1: only its SpO2 (lost), reading 2: pulse twice (duplicated)
            row("serial:ox-002", s, "record=1", 11),
            row("serial:ox-003", s, "record=2", 13),
            row("serial:ox-003", p, "implausible,record=2", 14),
            row("serial:ox-003", p, "record=2", 20),
            // wrong device for record 3, a record never sent, no record
            row("serial:ox-001", s, "record=3", 15),
            row("serial:ox-004", s, "record=99", 16),
            row("serial:ox-004", p, "alarm", 17),
        ];
        let t = tally(4, rows);
        assert_eq!((t.lost, t.duplicated, t.unexpected), (2, 1, 3));
        assert_eq!(t.receipt_ms, [Some(12), None, Some(20), None]);
        assert_eq!(t.last_ms, Some(20));
        let none = tally(2, Vec::new());
        assert_eq!((none.lost, none.duplicated, none.last_ms), (2, 0, None));
    }
}
