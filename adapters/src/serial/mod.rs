//! Serial bedside devices: the port supervisor ([`SerialAdapter`]) and protocol decoders.
//!
//! | file | role | I/O? |
//! |---|---|---|
//! | [`config`] | `[[serial]]` tables ([`SerialConfig`]) | no |
//! | [`protocols`] | decoders (`cms50`, `ansar-b`, `masimo`) and [`protocols::build`] | no (pure state machines) |
//! | [`line`](mod@line) | line settings ([`LineSettings`]): applied when the port opens, read back and checked | opens the port, reads its settings |
//! | [`identity`] | the serial-number gate ([`identity::IdentityGate`]) | no |
//! | [`adapter`] | [`SerialAdapter`]: the run loop that opens the stable path, checks line settings and identity, feeds the decoder and reopens after an unplug | yes |

pub mod adapter;
pub mod config;
pub mod identity;
pub mod line;
pub mod protocols;

pub use adapter::{SerialAdapter, SerialStats};
pub use config::{Parity, ProtocolName, SerialConfig};
pub use line::LineSettings;
