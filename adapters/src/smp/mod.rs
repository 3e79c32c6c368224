//! SMP/MCUmgr (PROTOCOLS §A): the pure codec and the client that relays firmware with it.
//!
//! Pure (no I/O, never panics on any input; fuzzed): [`header`] (the 8-byte header and a whole
//! frame), [`cbor`] (payload helpers), [`error`] (v1 `rc` / v2 `err` with their names), [`os`]
//! and [`image`] (the group payloads), [`console`] (serial console framing), [`ble`]
//! (notification reassembly and write splitting). The MCUboot image parser that gives the slot
//! hash an upload must end with is the gateway's (`firmware::image`).
//! With I/O: [`client`] (the async request/response and upload state machine over a
//! [`client::Transport`]), [`serial`] (that transport on a serial port), [`channel`] (that
//! transport through the adapter that holds the device's connection), [`source`] (the image an
//! upload reads in chunks: a verified file held open, never the whole image in memory) and
//! [`update`] (the whole update sequence over any transport: upload, test/confirm, reset,
//! reconnect, check).

pub mod ble;
pub mod cbor;
pub mod channel;
pub mod client;
pub mod console;
pub mod error;
pub mod header;
pub mod image;
pub mod os;
pub mod serial;
pub mod source;
pub mod update;
