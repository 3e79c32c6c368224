//! The `exec` plug-in line protocol (`exec::message::parse_line`, schema v1) and the framing
//! the adapter reads a plug-in's stdout with (`framing::LineFramer`). The first byte picks:
//! 0 the rest is one line, parsed with devices `["pump-1", "pump-2"]`; 1 the same without
//! devices; 2 the rest is a stdout stream: framed with a `max_line` from the second byte,
//! whole and in chunks from the input (the same lines and offsets, at most `max_line` bytes
//! each, the framer never holding more than `max_line` + the piece fed), each line parsed.
//! A parsed observation has a finite value, at most 16 flags + `record=N`, each printable
//! without spaces, a device time `YYYY-MM-DDThh:mm:ss`; an event's detail has at most 200
//! characters and no control character; a waveform's array has no problem (1–4,096 samples,
//! period > 0, finite scale and offset) and its value is sample 0's physical value; a device
//! index is one of the devices. Nothing panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wardgate_adapters::exec::message::{parse_line, PluginMessage, MAX_DETAIL, MAX_STATUS};
use wardgate_adapters::framing::{Framed, LineFramer};
use wardgate_adapters::serial::protocols::lines::map::is_status_text;
use wardgate_fuzz::Rng;

fn check(line: &[u8], devices: &[String]) {
    match parse_line(line, devices) {
        Ok(PluginMessage::Observation { device, reading }) => {
            assert!(reading.value.is_finite());
            assert!(reading.status.len() <= MAX_STATUS + 1);
            assert!(
                reading.status.iter().all(|s| is_status_text(s)),
                "{reading:?}"
            );
            if let Some(t) = &reading.device_time {
                assert_eq!(t.len(), 19);
            }
            assert!(device.map_or(true, |i| i < devices.len()));
        }
        Ok(PluginMessage::Waveform {
            device,
            reading,
            waveform,
        }) => {
            assert_eq!(waveform.problem(), None);
            assert!(reading.value.is_finite());
            assert_eq!(reading.value, waveform.physical(waveform.samples[0]));
            assert!(reading.status.len() <= MAX_STATUS + 1);
            assert!(reading.status.iter().all(|s| is_status_text(s)));
            assert!(device.map_or(true, |i| i < devices.len()));
        }
        Ok(PluginMessage::Event { device, detail, .. }) => {
            assert!(detail.chars().count() <= MAX_DETAIL);
            assert!(!detail.chars().any(char::is_control));
            assert!(device.map_or(true, |i| i < devices.len()));
        }
        Err(e) => assert!(!e.is_empty()),
    }
}

/// (offset, line or None for too long) of `pieces` through a framer.
fn frame(max_line: usize, pieces: &[&[u8]]) -> Vec<(u64, Option<Vec<u8>>)> {
    let mut f = LineFramer::new(b"\n", max_line);
    let mut out = Vec::new();
    for p in pieces {
        f.push(p);
        while let Some(l) = f.next_line() {
            out.push(match l {
                Framed::Line { offset, bytes } => {
                    assert!(bytes.len() <= max_line);
                    (offset, Some(bytes.to_vec()))
                }
                Framed::TooLong { offset, .. } => (offset, None),
            });
        }
        assert!(
            f.buffered() <= max_line + p.len(),
            "held {} bytes",
            f.buffered()
        );
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let devices = vec!["pump-1".to_string(), "pump-2".to_string()];
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => check(rest, &devices),
        1 => check(rest, &[]),
        _ => {
            let Some((&m, stream)) = rest.split_first() else {
                return;
            };
            let max_line = 1 + m as usize;
            let whole = frame(max_line, &[stream]);
            let mut rng = Rng::from_data(data);
            let mut pieces = Vec::new();
            let mut r = stream;
            while !r.is_empty() {
                let n = ((rng.next() % 64) as usize).min(r.len());
                let (a, b) = r.split_at(n);
                pieces.push(a);
                r = b;
            }
            assert_eq!(whole, frame(max_line, &pieces), "whole vs chunked");
            for (_, line) in whole {
                if let Some(l) = line {
                    check(&l, &devices);
                }
            }
        }
    }
});
