//! Serial bedside devices: port supervisor ([`SerialAdapter`]) and protocol decoders.
//!
//! - [`config`]: `[[serial]]` tables ([`SerialConfig`]).
//! - [`protocols`]: pure decoders (`cms50`, `ansar-b`, `masimo`) and [`protocols::build`].
//! - [`port`]: [`SerialAdapter`], which opens the stable path, checks the line settings and the
//!   device's serial number, feeds the decoder and reopens after an unplug.

pub mod config;
pub mod port;
pub mod protocols;

pub use config::{Parity, ProtocolName, SerialConfig};
pub use port::{SerialAdapter, SerialStats};
