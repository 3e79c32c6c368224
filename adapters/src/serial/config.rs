//! Serial device configuration (`[[serial]]` tables in `wardgate.toml`).

use serde::Deserialize;
use std::path::PathBuf;

/// Which bedside-monitor protocol a serial device speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ProtocolName {
    /// Contec CMS50D+/CMS50E pulse oximeter, newer `7D 81` command protocol, 115200 8N1.
    #[serde(rename = "cms50")]
    Cms50,
    /// Ivy Biomedical 450C "ANSAR-B" output, 9600 8N1.
    #[serde(rename = "ansar-b")]
    AnsarB,
    /// Masimo Radical-7 / Rad-series ASCII serial output ("ASCII 1"), 9600 8N1.
    #[serde(rename = "masimo")]
    Masimo,
    /// Text lines (JSON, CSV, `key=value`) decoded by a `[[lines_map]]` named in `map`
    /// (`serial/protocols/lines/`); the baud rate must be given.
    #[serde(rename = "lines")]
    Lines,
}

/// Parity setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit (the `N` of 8N1).
    #[default]
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// One serial bedside device.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// The installer's name for the device, e.g. `bed12-spo2`; the device id is `serial:<name>`.
    pub name: String,
    /// Where the device is, e.g. `ward-7/bed-12` (issue 11 item 7): up to 64 characters,
    /// `/`-separated non-empty parts of `A-Z a-z 0-9 . _ -` (checked by `check-config`).
    /// Shown in the device's retained status, `status.json` and `wardgate status`.
    #[serde(default)]
    pub location: Option<String>,
    /// Stable path of the port, e.g. `/dev/serial/by-id/usb-Prolific_…-if00-port0`. Never a
    /// `/dev/ttyUSBn` number in production: those are renumbered at reboot.
    pub path: PathBuf,
    /// The device protocol.
    pub protocol: ProtocolName,
    /// Baud rate in bit/s; default is the protocol's own (cms50 115200, ansar-b 9600, masimo
    /// 9600; `lines` has none: give it).
    pub baud: Option<u32>,
    /// Data bits, 5–8; default 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Parity; default `none`.
    #[serde(default)]
    pub parity: Parity,
    /// Stop bits, 1 or 2; default 1.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// The serial number the device must report (protocols that report one, e.g. masimo `SN=`).
    /// Readings from a device reporting another number are refused and an `error` event raised.
    pub serial_number: Option<String>,
    /// Longest wait between reopen attempts after an unplug, in seconds; default 30.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_s: u64,
    /// `protocol = "lines"`: the name of the `[[lines_map]]` its lines are decoded by (required
    /// there, refused elsewhere).
    #[serde(default)]
    pub map: Option<String>,
    /// `protocol = "cms50"`: SpO2 and pulse rate once every this many seconds (the last values
    /// of the window, never an average), `0` = with every frame (60 a second); default 1, at
    /// most 60 (checked by `check-config`; refused for other protocols). The pleth leaves as one
    /// waveform array a second either way (`serial/protocols/cms50.rs`).
    #[serde(default)]
    pub numerics_every_s: Option<u32>,
}

/// Default `numerics_every_s` of a cms50 device: SpO2 and pulse rate once a second.
pub const DEFAULT_NUMERICS_EVERY_S: u32 = 1;

/// Largest `numerics_every_s` the configuration accepts: one value a minute.
pub const MAX_NUMERICS_EVERY_S: u32 = 60;

fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_max_backoff() -> u64 {
    30
}

impl ProtocolName {
    /// The protocol's default baud rate (bit/s). `lines` has none (the configuration must give
    /// one); 115200 stands in so the value is never 0.
    pub fn default_baud(self) -> u32 {
        match self {
            ProtocolName::Cms50 | ProtocolName::Lines => 115_200,
            ProtocolName::AnsarB | ProtocolName::Masimo => 9_600,
        }
    }

    /// Whether the protocol has a default baud rate (all but `lines`).
    pub fn has_default_baud(self) -> bool {
        self != ProtocolName::Lines
    }

    /// Every protocol, in the order the documentation lists them.
    pub const ALL: [ProtocolName; 4] = [
        ProtocolName::Cms50,
        ProtocolName::AnsarB,
        ProtocolName::Masimo,
        ProtocolName::Lines,
    ];
    /// The CLI/config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolName::Cms50 => "cms50",
            ProtocolName::AnsarB => "ansar-b",
            ProtocolName::Masimo => "masimo",
            ProtocolName::Lines => "lines",
        }
    }
}

impl SerialConfig {
    /// The effective `numerics_every_s` of a cms50 device (default
    /// [`DEFAULT_NUMERICS_EVERY_S`]).
    pub fn numerics_every_s(&self) -> u32 {
        self.numerics_every_s.unwrap_or(DEFAULT_NUMERICS_EVERY_S)
    }

    /// The effective baud rate.
    pub fn baud(&self) -> u32 {
        self.baud.unwrap_or_else(|| self.protocol.default_baud())
    }
}
