//! Line settings of a serial port: what the config asks for, applied when the port opens, and
//! read back from the port, which must have taken them (a USB-serial bridge that silently
//! ignores parity would otherwise deliver garbage that may still frame).

use super::config::{Parity, SerialConfig};
use std::path::Path;
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

/// Largest accepted difference between the requested and the read-back baud rate, in percent.
pub const BAUD_TOLERANCE_PERCENT: u32 = 2;

/// Why a port's line settings cannot be used. Either way the adapter refuses to run
/// ([`crate::AdapterError::Config`]): no retry can fix it.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The port would not report a setting.
    #[error("cannot read back the {what}: {source}")]
    ReadBack {
        /// `baud rate`, `data bits`, `parity` or `stop bits`.
        what: &'static str,
        /// The driver's error.
        source: tokio_serial::Error,
    },
    /// The port reports other settings than the ones asked for.
    #[error("port did not take the requested settings: asked for {}, port reports {}", wanted.describe(), actual.describe())]
    NotTaken {
        /// What the config asks for.
        wanted: LineSettings,
        /// What the port reports.
        actual: LineSettings,
    },
}

/// Line settings of a serial port: what the config asks for or what the port reports back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineSettings {
    /// Baud rate in bit/s.
    pub baud: u32,
    /// Data bits, 5–8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
}

impl LineSettings {
    /// The settings `cfg` asks for (baud defaults to the protocol's own).
    pub fn from_config(cfg: &SerialConfig) -> Self {
        LineSettings {
            baud: cfg.baud(),
            data_bits: cfg.data_bits,
            parity: cfg.parity,
            stop_bits: cfg.stop_bits,
        }
    }

    /// Reads the settings back from an open port.
    pub fn read_back(port: &dyn SerialPort) -> Result<Self, LineError> {
        let err =
            |what: &'static str, e: tokio_serial::Error| LineError::ReadBack { what, source: e };
        let baud = port.baud_rate().map_err(|e| err("baud rate", e))?;
        let data_bits = match port.data_bits().map_err(|e| err("data bits", e))? {
            tokio_serial::DataBits::Five => 5,
            tokio_serial::DataBits::Six => 6,
            tokio_serial::DataBits::Seven => 7,
            tokio_serial::DataBits::Eight => 8,
        };
        let parity = match port.parity().map_err(|e| err("parity", e))? {
            tokio_serial::Parity::None => Parity::None,
            tokio_serial::Parity::Even => Parity::Even,
            tokio_serial::Parity::Odd => Parity::Odd,
        };
        let stop_bits = match port.stop_bits().map_err(|e| err("stop bits", e))? {
            tokio_serial::StopBits::One => 1,
            tokio_serial::StopBits::Two => 2,
        };
        Ok(LineSettings {
            baud,
            data_bits,
            parity,
            stop_bits,
        })
    }

    /// Opens `path` with these settings: no flow control, exclusive access (`TIOCEXCL` +
    /// `flock`, tokio-serial's native open). The caller reads them back ([`LineSettings::read_back`]).
    pub fn open(&self, path: &Path) -> Result<SerialStream, tokio_serial::Error> {
        let want = self;
        let data_bits = match want.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        };
        let parity = match want.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        let stop_bits = if want.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        };
        let path = path.to_string_lossy();
        tokio_serial::new(path, want.baud)
            .data_bits(data_bits)
            .parity(parity)
            .stop_bits(stop_bits)
            .flow_control(tokio_serial::FlowControl::None)
            .open_native_async()
    }

    /// Short form such as `115200 8N1`.
    pub fn describe(&self) -> String {
        let p = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        format!("{} {}{}{}", self.baud, self.data_bits, p, self.stop_bits)
    }
}

/// Checks that the port took the requested settings: equal data bits, parity and stop bits, baud
/// rate within [`BAUD_TOLERANCE_PERCENT`]. `Err` says what differs.
pub fn check_line_settings(wanted: &LineSettings, actual: &LineSettings) -> Result<(), LineError> {
    let baud_ok = u64::from(wanted.baud.abs_diff(actual.baud)) * 100
        <= u64::from(wanted.baud) * u64::from(BAUD_TOLERANCE_PERCENT);
    if baud_ok
        && wanted.data_bits == actual.data_bits
        && wanted.parity == actual.parity
        && wanted.stop_bits == actual.stop_bits
    {
        Ok(())
    } else {
        Err(LineError::NotTaken {
            wanted: *wanted,
            actual: *actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(baud: u32, data_bits: u8, parity: Parity, stop_bits: u8) -> LineSettings {
        LineSettings {
            baud,
            data_bits,
            parity,
            stop_bits,
        }
    }

    #[test]
    fn read_back_settings_must_match_what_was_asked() {
        let want = settings(9600, 8, Parity::None, 1);
        assert!(check_line_settings(&want, &want).is_ok());
        // A driver reporting the rate it achieved (within 2 %) is fine.
        assert!(check_line_settings(
            &settings(115_200, 8, Parity::None, 1),
            &settings(115_384, 8, Parity::None, 1)
        )
        .is_ok());
        let e = check_line_settings(&want, &settings(19_200, 8, Parity::None, 1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("asked for 9600 8N1, port reports 19200 8N1"),
            "{e}"
        );
        assert!(check_line_settings(&want, &settings(9600, 8, Parity::Even, 1)).is_err());
        assert!(check_line_settings(&want, &settings(9600, 7, Parity::None, 1)).is_err());
        assert!(check_line_settings(&want, &settings(9600, 8, Parity::None, 2)).is_err());
        assert_eq!(settings(9600, 7, Parity::Odd, 2).describe(), "9600 7O2");
    }
}
