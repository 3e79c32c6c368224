//! "Nothing invented": what the serial decoders make of input that is not their device talking.
//!
//! - **Random bytes**: 4 MiB of seeded random bytes per decoder, fed in random chunks; the number
//!   of numeric readings must be 0 (the figure is printed as readings per MB, run with
//!   `cargo test -p wardgate-adapters --test decoder_noise -- --nocapture` to see it;
//!   `NOISE_MB=100 cargo test --release …` for a larger sample).
//! - **A wrong baud rate**: each real recording (and, for Masimo, the published example lines) is
//!   turned into the 8N1 line levels the device puts on the wire at its own baud rate, with the
//!   idle time a real device leaves between frames, and read back by a simulated UART at every
//!   other standard rate ([`misread`]: falling edge → start bit checked at its middle → 8 data
//!   bits sampled at their middles, LSB first → the byte is delivered even on a framing error, as
//!   Linux does without `INPCK`/`IGNPAR`). What the decoder makes of that must hold 0 readings.

use wardgate_adapters::serial::protocols::{build, Decoded, Protocol};
use wardgate_adapters::serial::ProtocolName;

const REAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/real/serial/");

fn real(name: &str) -> Vec<u8> {
    std::fs::read(format!("{REAL}{name}")).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

/// The standard rates a `[[serial]]` may be configured with.
const BAUDS: [u32; 9] = [1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400];

/// (numeric readings, decoder errors) for `bytes` fed in seeded random chunks.
fn decode(protocol: ProtocolName, bytes: &[u8], seed: u64) -> (usize, usize) {
    let (readings, errors, _) = decode_counting(protocol, bytes, seed);
    (readings, errors)
}

/// [`decode`] and the decoder's count of well-formed frames.
fn decode_counting(protocol: ProtocolName, bytes: &[u8], seed: u64) -> (usize, usize, u64) {
    let mut p: Box<dyn Protocol> = build(protocol);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::new();
    let (mut readings, mut errors) = (0, 0);
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = rng.usize(1..=rest.len().min(1024));
        p.feed(&rest[..n], &mut out);
        rest = &rest[n..];
        if rest.is_empty() {
            p.flush(&mut out); // the stream ended: what the decoder holds counts too
        }
        for d in out.drain(..) {
            match d {
                Decoded::Reading(_) | Decoded::Waveform { .. } => readings += 1,
                Decoded::Error { .. } => errors += 1,
                Decoded::Identity(_) => {}
            }
        }
    }
    (readings, errors, p.frames_ok())
}

const MIB: usize = 1 << 20;

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

fn random_input_gives_no_readings(protocol: ProtocolName) {
    let mb: usize = std::env::var("NOISE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut total = 0;
    let len = mb * MIB;
    for seed in [1u64, 2] {
        let bytes = random_bytes(seed, len / 2);
        let (readings, errors, frames) = decode_counting(protocol, &bytes, seed);
        println!(
            "{protocol:?} seed {seed}: {readings} readings, {errors} errors, {frames} frames trusted (frames_ok)"
        );
        total += readings;
    }
    let per_mb = total as f64 / (len as f64 / 1e6);
    println!("{protocol:?}: {total} numeric readings from {len} random bytes = {per_mb:.2} per MB");
    assert_eq!(
        total, 0,
        "{protocol:?}: readings invented from random bytes"
    );
}

#[test]
fn cms50_invents_no_reading_from_random_bytes() {
    random_input_gives_no_readings(ProtocolName::Cms50);
}

#[test]
fn ansar_b_invents_no_reading_from_random_bytes() {
    random_input_gives_no_readings(ProtocolName::AnsarB);
}

#[test]
fn masimo_invents_no_reading_from_random_bytes() {
    random_input_gives_no_readings(ProtocolName::Masimo);
}

/// What a UART at `rx_baud` reads from `frames` sent 8N1 at `tx_baud`, each frame followed by
/// `idle_bits` bit times of idle line (mark).
fn misread(frames: &[&[u8]], tx_baud: u32, idle_bits: usize, rx_baud: u32) -> Vec<u8> {
    uart(&line_levels(frames, idle_bits), tx_baud, rx_baud)
}

/// The line levels (one per transmitter bit time, `true` = mark) of `frames` sent 8N1, each
/// followed by `idle_bits` of idle line.
fn line_levels(frames: &[&[u8]], idle_bits: usize) -> Vec<bool> {
    let mut line = Vec::new();
    for f in frames {
        for &b in *f {
            line.push(false); // start
            line.extend((0..8).map(|i| b >> i & 1 == 1));
            line.push(true); // stop
        }
        line.extend(std::iter::repeat_n(true, idle_bits));
    }
    line
}

/// What a UART at `rx_baud` reads from `line` sent at `tx_baud`.
fn uart(line: &[bool], tx_baud: u32, rx_baud: u32) -> Vec<u8> {
    let level = |t: f64| line.get(t as usize).copied().unwrap_or(true);
    // next_low[i]: the first index >= i where the line is at space (a start bit may begin).
    let mut next_low = vec![line.len(); line.len() + 1];
    for i in (0..line.len()).rev() {
        next_low[i] = if line[i] { next_low[i + 1] } else { i };
    }
    // One receiver bit time, in transmitter bit times.
    let r = f64::from(tx_baud) / f64::from(rx_baud);
    let step = r / 16.0; // the receiver's 16× oversampling while it hunts for a start bit
    let end = line.len() as f64;
    let mut out = Vec::new();
    let mut t = 0.0;
    while t < end {
        if level(t) {
            // Hunt: the next sample at space is within one oversampling step of the edge.
            let edge = next_low[(t as usize + 1).min(line.len())] as f64;
            t = (t + step).max(edge + step / 2.0);
            continue;
        }
        if level(t + r / 2.0) {
            t += step; // a glitch, not a start bit
            continue;
        }
        let mut b = 0u8;
        for i in 0..8 {
            if level(t + r * (1.5 + f64::from(i))) {
                b |= 1 << i;
            }
        }
        out.push(b); // delivered even when the stop bit is wrong (no INPCK)
        t += r * 9.5;
        // Wait for the line to return to mark before the next start bit can be seen.
        while t < end && !level(t) {
            t += step;
        }
    }
    out
}

#[test]
fn the_uart_model_reads_the_right_baud_back_exactly() {
    let bin = real("cms50e_live_capture.bin");
    let frames: Vec<&[u8]> = bin.chunks(9).collect();
    let flat: Vec<u8> = frames.concat();
    for idle in [0, 173] {
        assert_eq!(misread(&frames, 115200, idle, 115200), flat);
        assert_eq!(misread(&frames, 9600, idle, 9600), flat);
    }
    // And a real 2 % clock error still reads right, as a real UART does.
    assert_eq!(misread(&frames, 115200, 10, 117500), flat);
}

/// A device's protocol, its baud rate, the frames of its stream, and the idle bit times after
/// each frame to try.
type DeviceStream = (ProtocolName, u32, Vec<Vec<u8>>, Vec<usize>);

/// Each device's stream at its own baud rate.
fn device_streams() -> Vec<DeviceStream> {
    // CMS50E: 9-byte frames at 60/s on 115200 baud (1920 bit times per frame, 90 of them bits).
    let cms = real("cms50e_live_capture.bin");
    let cms_frames: Vec<Vec<u8>> = cms.chunks(9).map(<[u8]>::to_vec).collect();
    let cms_frames: Vec<Vec<u8>> = cms_frames.iter().cycle().take(102 * 6).cloned().collect();
    // Ivy 450C: one ~560-byte message a second at 9600 baud; the recording cut at each 0xFF start.
    let ivy = real("ivy450c_ansarb_capture.bin");
    let mut ivy_frames: Vec<Vec<u8>> = Vec::new();
    for (i, &b) in ivy.iter().enumerate() {
        if b == 0xFF && ivy.get(i + 1) == Some(&b'A') || ivy_frames.is_empty() {
            ivy_frames.push(Vec::new());
        }
        ivy_frames.last_mut().unwrap().push(b);
    }
    let ivy_frames: Vec<Vec<u8>> = ivy_frames.iter().cycle().take(27 * 2).cloned().collect();
    // Masimo: the published example lines (no recording exists), one a second at 9600 baud.
    let masimo_lines = [
        "12/01/05 11:56:29 SN=0123456789 SPO2=098% BPM=240 PI=20.00% SPCO=01.0% SPMET=00.5% DESAT=01 PIDELTA=-02 PVI=027 ALARM=0000 EXC=000820\r\n",
        "09/15/10 15:10:29 SPO2=097% BPM=064 PI=11.82% ALARM=20 EXC=800\r\n",
        "02/22/16 22:47:45 SN=0000056661 SPO2=098% BPM=097 PI=03.60% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800\r\n",
    ];
    let masimo_frames: Vec<Vec<u8>> = masimo_lines
        .iter()
        .cycle()
        .take(100)
        .map(|l| l.as_bytes().to_vec())
        .collect();
    vec![
        (ProtocolName::Cms50, 115200, cms_frames, vec![0, 7, 1830]),
        (ProtocolName::AnsarB, 9600, ivy_frames, vec![0, 3, 4000]),
        (ProtocolName::Masimo, 9600, masimo_frames, vec![0, 5, 8000]),
    ]
}

#[test]
fn a_recording_read_at_a_wrong_baud_rate_gives_no_readings() {
    for (protocol, baud, frames, idles) in device_streams() {
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        // At its own rate the stream decodes, so the zeros below mean something.
        let (right, _) = decode(protocol, &misread(&refs, baud, idles[0], baud), 3);
        assert!(right > 0, "{protocol:?} at its own baud rate");
        for &idle in &idles {
            let line = line_levels(&refs, idle);
            for rx in BAUDS.into_iter().filter(|&b| b != baud) {
                let bytes = uart(&line, baud, rx);
                let (readings, errors) = decode(protocol, &bytes, 4);
                println!(
                    "{protocol:?} sent at {baud}, read at {rx}, idle {idle} bits: {} bytes, {readings} readings, {errors} errors",
                    bytes.len()
                );
                assert_eq!(
                    readings, 0,
                    "{protocol:?} sent at {baud} read at {rx} (idle {idle}): readings invented"
                );
            }
        }
    }
}
