//! The serial half of `wardgate demo`: the recordings of real devices it replays on
//! pseudo-terminals ([`crate::devsim`]), at what pace, and how many observations each holds.

use crate::devsim::Pace;
use wardgate_adapters::serial::protocols::{self, Decoded};
use wardgate_adapters::serial::ProtocolName;

/// Contec CMS50E live capture (see `data/real/serial/PROVENANCE.md`).
pub const CMS50E_RECORDING: &[u8] =
    include_bytes!("../../data/real/serial/cms50e_live_capture.bin");
/// Ivy 450C ANSAR-B capture (see `data/real/serial/PROVENANCE.md`).
pub const IVY450C_RECORDING: &[u8] =
    include_bytes!("../../data/real/serial/ivy450c_ansarb_capture.bin");

/// One simulated device of the demo.
pub struct DemoDevice {
    /// Device name in the demo config (`serial:{name}`).
    pub name: &'static str,
    /// Its protocol.
    pub protocol: ProtocolName,
    /// The recording it replays.
    pub recording: &'static [u8],
    /// Replay pace.
    pub pace: Pace,
    /// Bytes the gateway must send before the device starts (the CMS50 start-live command).
    pub start: Option<Vec<u8>>,
}

/// The demo's serial devices.
pub fn devices() -> Vec<DemoDevice> {
    vec![
        DemoDevice {
            name: "bed1-spo2",
            protocol: ProtocolName::Cms50,
            recording: CMS50E_RECORDING,
            // 60 live frames a second (PROVENANCE: the source README), 9 bytes each.
            pace: Pace::Frames {
                size: 9,
                per_sec: 60.0,
            },
            start: Some(vec![0x7D, 0x81, 0xA1]),
        },
        DemoDevice {
            name: "bed2-monitor",
            protocol: ProtocolName::AnsarB,
            recording: IVY450C_RECORDING,
            pace: Pace::Baud(9600),
            start: None,
        },
    ]
}

/// Observations the decoder finds in a recording (the demo's expected count): numerics and
/// waveform arrays, with what the decoder holds at the end (the gateway flushes it once the
/// replay has stopped and the line is quiet). A cms50 recording at the default one numeric a
/// second: SpO2, pulse rate and one pleth array per started second.
pub fn expected_observations(protocol: ProtocolName, recording: &[u8]) -> u64 {
    let mut p = protocols::build(protocol);
    let mut out = Vec::new();
    p.feed(recording, &mut out);
    p.flush(&mut out);
    out.iter()
        .filter(|d| matches!(d, Decoded::Reading(_) | Decoded::Waveform { .. }))
        .count() as u64
}

/// The demo device `dev` as one that also takes firmware: its recording streamed (repeated) on
/// a pty behind `link` with an SMP device `model` answering on the same line
/// ([`crate::smp_device::serial`]), so `wardgate demo` can update a serial device with no
/// Python. The host's start command (CMS50) is honoured as by [`crate::devsim`]. `speed`
/// scales the device's pace (1 = its own); `repeat` starts the recording over at its end.
pub fn start_with_smp(
    dev: &DemoDevice,
    link: &std::path::Path,
    model: crate::smp_device::SharedModel,
    speed: f64,
    repeat: bool,
) -> std::io::Result<crate::smp_device::serial::SerialSmpDevice> {
    use crate::smp_device::serial::{Recording, SerialOptions, SerialSmpDevice};
    let speed = if speed.is_finite() && speed > 0.0 {
        speed
    } else {
        1.0
    };
    let pace = match dev.pace {
        Pace::Frames { size, per_sec } => Pace::Frames {
            size,
            per_sec: per_sec * speed,
        },
        Pace::Baud(b) => Pace::Baud((f64::from(b) * speed).min(f64::from(u32::MAX)) as u32),
    };
    SerialSmpDevice::start(
        link,
        model,
        SerialOptions {
            recording: Some(Recording {
                data: dev.recording.to_vec(),
                pace,
                start: dev.start.clone(),
                repeat,
            }),
            ..Default::default()
        },
    )
}
