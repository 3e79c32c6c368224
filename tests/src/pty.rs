//! Simulated serial devices on real pseudo-terminals ([`wardgate_sim::devsim::SimulatedPort`]) fed
//! with the recordings of real devices, and a [`Replayer`] thread that plays byte segments into
//! a port on command, so a test can pause the device, kill the gateway, and go on.

use crate::{anyhow, Result};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;
use wardgate_adapters::serial::protocols::cms50::START_LIVE;
use wardgate_adapters::serial::ProtocolName;
use wardgate_sim::devsim::{Pace, SimulatedPort};

/// A simulated bedside device: its recording and how it sends it.
#[derive(Clone, Debug)]
pub struct Device {
    /// `[[serial]] name` (the device id is `serial:<name>`).
    pub name: String,
    /// Decoder.
    pub protocol: ProtocolName,
    /// The recording of the real device.
    pub recording: Vec<u8>,
    /// The device's own pace.
    pub pace: Pace,
    /// Bytes the host must send before it streams (the CMS50's start-live command).
    pub start: Option<Vec<u8>>,
    /// `numerics_every_s` in its `[[serial]]` (cms50; `None`: the default, once a second).
    pub numerics_every_s: Option<u32>,
}

impl Device {
    /// Contec CMS50E: `data/real/serial/cms50e_live_capture.bin`, 60 frames of 9 bytes a second,
    /// streams only after the host's start-live command `7D 81 A1 …`.
    pub fn cms50e(name: &str) -> Device {
        Device {
            name: name.into(),
            protocol: ProtocolName::Cms50,
            recording: wardgate_sim::demo_serial::CMS50E_RECORDING.to_vec(),
            pace: Pace::Frames {
                size: 9,
                per_sec: 60.0,
            },
            start: Some(START_LIVE[..3].to_vec()),
            numerics_every_s: None,
        }
    }

    /// The device with `numerics_every_s = n` in its `[[serial]]` (0: SpO2 and pulse with every
    /// CMS50 frame, 60 a second, for tests that need many observations).
    pub fn with_numerics_every(mut self, n: u32) -> Device {
        self.numerics_every_s = Some(n);
        self
    }

    /// A fresh decoder as the gateway configures it for this device.
    fn decoder(&self) -> Box<dyn wardgate_adapters::serial::protocols::Protocol> {
        use wardgate_adapters::serial::protocols::{build, cms50::Cms50};
        match (self.protocol, self.numerics_every_s) {
            (ProtocolName::Cms50, Some(n)) => Box::new(Cms50::with_numerics_every(n)),
            (protocol, _) => build(protocol),
        }
    }

    /// Ivy 450C in ANSAR-B mode: `data/real/serial/ivy450c_ansarb_capture.bin` at 9600 baud.
    pub fn ivy450c(name: &str) -> Device {
        Device {
            name: name.into(),
            protocol: ProtocolName::AnsarB,
            recording: wardgate_sim::demo_serial::IVY450C_RECORDING.to_vec(),
            pace: Pace::Baud(9600),
            start: None,
            numerics_every_s: None,
        }
    }

    /// The device id the gateway gives it.
    pub fn id(&self) -> String {
        format!("serial:{}", self.name)
    }

    /// The protocol's config name (`protocol = "…"`).
    pub fn protocol_name(&self) -> &'static str {
        self.protocol.as_str()
    }

    /// Observations the decoder finds in `bytes` (the whole recording: [`Self::expected`]),
    /// with what it holds at the end: the gateway sends that when the line goes quiet.
    pub fn expected_in(&self, bytes: &[u8]) -> u64 {
        use wardgate_adapters::serial::protocols::Decoded;
        if self.numerics_every_s.is_none() {
            return wardgate_sim::demo_serial::expected_observations(self.protocol, bytes);
        }
        let mut p = self.decoder();
        let mut out = Vec::new();
        p.feed(bytes, &mut out);
        p.flush(&mut out);
        out.iter()
            .filter(|d| matches!(d, Decoded::Reading(_) | Decoded::Waveform { .. }))
            .count() as u64
    }

    /// The waveform samples the decoder finds in `bytes` (each array's samples in order, with
    /// what it holds at the end), e.g. the CMS50's pleth.
    pub fn samples_in(&self, bytes: &[u8]) -> Vec<i32> {
        use wardgate_adapters::serial::protocols::Decoded;
        let mut p = self.decoder();
        let mut out = Vec::new();
        p.feed(bytes, &mut out);
        p.flush(&mut out);
        out.into_iter()
            .filter_map(|d| match d {
                Decoded::Waveform { waveform, .. } => Some(waveform.samples),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Observations in the whole recording.
    pub fn expected(&self) -> u64 {
        self.expected_in(&self.recording)
    }

    /// Opens its pty with the stable link `dev_dir/<name>`.
    pub fn open_port(&self, dev_dir: &Path) -> Result<SimulatedPort> {
        std::fs::create_dir_all(dev_dir)?;
        Ok(SimulatedPort::open(
            &dev_dir.join(&self.name),
            self.start.clone(),
        )?)
    }
}

enum Cmd {
    Play {
        data: Vec<u8>,
        pace: Pace,
        speed: f64,
    },
}

/// A thread that owns a [`SimulatedPort`] and plays segments into it, one after the other.
pub struct Replayer {
    name: String,
    tx: Option<mpsc::Sender<Cmd>>,
    done: mpsc::Receiver<std::io::Result<usize>>,
    thread: Option<std::thread::JoinHandle<SimulatedPort>>,
    pending: usize,
}

/// How long a segment waits for the host's start command.
const START_TIMEOUT: Duration = Duration::from_secs(20);

impl Replayer {
    /// Opens each device's pty under `dev_dir` and a replayer for it, in order.
    pub fn for_devices(dev_dir: &Path, devices: &[&Device]) -> Result<Vec<Replayer>> {
        devices
            .iter()
            .map(|d| Ok(Replayer::new(&d.name, d.open_port(dev_dir)?)))
            .collect()
    }

    /// Takes over `port`.
    pub fn new(name: &str, mut port: SimulatedPort) -> Replayer {
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("replay-{name}"))
            .spawn(move || {
                while let Ok(Cmd::Play { data, pace, speed }) = rx.recv() {
                    let r = port.replay(&data, pace, speed, START_TIMEOUT);
                    if done_tx.send(r).is_err() {
                        break;
                    }
                }
                port
            })
            .expect("spawn replay thread");
        Replayer {
            name: name.into(),
            tx: Some(tx),
            done,
            thread: Some(thread),
            pending: 0,
        }
    }

    /// Queues `data` to be written at `pace`, `speed` times faster than the device.
    pub fn play(&mut self, data: &[u8], pace: Pace, speed: f64) {
        if let Some(tx) = &self.tx {
            if tx
                .send(Cmd::Play {
                    data: data.to_vec(),
                    pace,
                    speed,
                })
                .is_ok()
            {
                self.pending += 1;
            }
        }
    }

    /// Waits until every queued segment has been written (error on a write error or timeout).
    pub fn wait_done(&mut self, timeout: Duration) -> Result<usize> {
        let deadline = std::time::Instant::now() + timeout;
        let mut total = 0;
        while self.pending > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let r = self
                .done
                .recv_timeout(left)
                .map_err(|_| anyhow!("replay {}: not finished within {timeout:?}", self.name))?;
            self.pending -= 1;
            total += r.map_err(|e| anyhow!("replay {}: {e}", self.name))?;
        }
        Ok(total)
    }

    /// Stops the thread (after the queued segments) and returns the port.
    pub fn finish(mut self) -> Result<SimulatedPort> {
        self.tx = None;
        self.thread
            .take()
            .expect("thread")
            .join()
            .map_err(|_| anyhow!("replay {} panicked", self.name))
    }
}

impl Drop for Replayer {
    fn drop(&mut self) {
        self.tx = None; // the thread ends after its current segment and drops the port
    }
}

/// Offsets just past each ANSAR-B message end (`0xFE`) in `bytes`: cut points where a replay
/// can pause without splitting a message.
pub fn ansar_b_message_ends(bytes: &[u8]) -> Vec<usize> {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == 0xFE)
        .map(|(i, _)| i + 1)
        .collect()
}

/// A device that keeps sending: a thread replaying its recording over and over (in slices of
/// about a second, so [`Streamer::stop`] returns quickly) until stopped. Writes block while
/// nobody reads the pty (the gateway is dead) and resume when the restarted gateway reads.
pub struct Streamer {
    name: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::io::Result<u64>>>,
}

impl Streamer {
    /// Opens `device`'s pty under `dev_dir` and streams its recording at `speed` × its pace.
    pub fn start(device: &Device, dev_dir: &Path, speed: f64) -> Result<Streamer> {
        use std::sync::atomic::Ordering;
        let mut port = device.open_port(dev_dir)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let (rec, pace) = (device.recording.clone(), device.pace);
        // About one second of the device per slice (frame-aligned for fixed-size frames).
        let slice = match pace {
            Pace::Frames { size, per_sec } => size * (per_sec as usize).max(1),
            Pace::Baud(b) => (b as usize / 10).max(1),
        };
        let thread = std::thread::Builder::new()
            .name(format!("stream-{}", device.name))
            .spawn(move || {
                let mut written = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    for part in rec.chunks(slice) {
                        if flag.load(Ordering::Relaxed) {
                            break;
                        }
                        written += port.replay(part, pace, speed, Duration::from_secs(60))? as u64;
                    }
                }
                Ok(written)
            })?;
        Ok(Streamer {
            name: device.name.clone(),
            stop,
            thread: Some(thread),
        })
    }

    /// Stops after the current slice; the bytes written.
    pub fn stop(mut self) -> Result<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .expect("thread")
            .join()
            .map_err(|_| anyhow!("stream {} panicked", self.name))?
            .map_err(|e| anyhow!("stream {}: {e}", self.name))
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
