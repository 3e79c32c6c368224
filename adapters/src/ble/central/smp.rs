//! SMP (MCUmgr) over GATT for the firmware relay (issue 10 item 2, PROTOCOLS §A.4): service
//! `8D53DC1D-1DB7-4CD3-868B-8A527460AA84`, one characteristic
//! `DA2E7828-FBCE-4E01-AE9E-261174997C48` (write without response + notify). Requests go out as
//! Write Without Response in pieces of at most ATT MTU − 3 bytes; responses come back as
//! notifications, reassembled by the SMP header's length ([`crate::smp::ble`], pure). Bonded
//! devices only: Zephyr's `smp_bt` requires an encrypted link, and an unencrypted one would let
//! anyone in radio range load firmware.
//!
//! Two users:
//! - the daemon's device session (`session.rs`): a `DeviceCommand::OpenSmp` on a connected,
//!   bonded device; the SMP notifications arrive on the session's **one** notification stream
//!   next to the device's measurements (which keep flowing during an update); [`SmpGatt`] writes
//!   and reassembles, the session forwards whole frames to the relay's [`SmpLink`];
//! - `wardgate firmware list|upload --ble ADDRESS`: [`SmpOpener::open`] connects on its own
//!   (bond checked first, fresh service discovery, the stream opened before `StartNotify`) and
//!   gives a [`BleSmpTransport`] for [`crate::smp::client::SmpClient`].
//!
//! The ATT MTU: btleplug 0.13 reports BlueZ's `MTU` property of `GattCharacteristic1` (read at
//! service discovery, BlueZ ≥ 5.62) as `Peripheral::mtu()`, 23 when BlueZ does not say; a value
//! below 23 counts as 23 ([`crate::smp::ble::split`]).
//!
//! B18 (FAILURES.md): after a firmware update the attribute table may have changed, and BlueZ
//! reuses no handle btleplug has not re-read: every connection starts with a fresh discovery
//! (the session and [`SmpOpener::open`] alike), the SMP characteristic is found by its UUIDs
//! (never by a remembered handle), and a write that fails because the characteristic's object is
//! gone triggers one rediscovery and a second try ([`is_stale_object`]).
//!
//! [`SmpLink`]: crate::smp::channel::SmpLink

use super::bluez::Bus;
use super::{pick_adapter, CONNECT_TIMEOUT, GATT_TIMEOUT};
use crate::ble::config::Address;
use crate::ble::decode::uuid::Uuid;
use crate::smp::ble::{split, BleError, Reassembler, MIN_ATT_MTU};
use crate::smp::client::{LinkRefusal, Transport, TransportError};
use btleplug::api::{
    BDAddr, Central as _, CharPropFlags, Characteristic, Peripheral as _, ValueNotification,
    WriteType,
};
use btleplug::platform::{Adapter as BtAdapter, Manager, Peripheral};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

/// The SMP service (PROTOCOLS §A.4; Zephyr `smp_bt`).
pub const SMP_SERVICE: Uuid = Uuid::from_u128(0x8D53DC1D_1DB7_4CD3_868B_8A527460AA84);
/// The SMP characteristic: write without response (requests) and notify (responses).
pub const SMP_CHARACTERISTIC: Uuid = Uuid::from_u128(0xDA2E7828_FBCE_4E01_AE9E_261174997C48);

/// How often a standalone transport checks that the link is still up while it waits
/// (btleplug's notification stream does not end on link loss).
const LINK_POLL: Duration = Duration::from_secs(1);

/// The SMP characteristic of one connection, its ATT MTU and the reassembly of its
/// notifications.
#[derive(Debug)]
pub struct SmpGatt {
    chr: Characteristic,
    mtu: u16,
    rx: Reassembler,
    /// Notifications dropped because they did not reassemble (bad header, overrun).
    pub dropped: u64,
}

/// Why a write of an SMP frame failed.
#[derive(Debug, thiserror::Error)]
#[error("write of SMP piece {piece} of {pieces} ({len} bytes): {reason}")]
pub struct WriteError {
    /// 1-based piece that failed.
    pub piece: usize,
    /// Pieces of the frame.
    pub pieces: usize,
    /// Bytes of that piece.
    pub len: usize,
    /// BlueZ's (or btleplug's) words, or `timed out`.
    pub reason: String,
    /// The characteristic's object is gone (the attribute table changed, B18).
    pub stale: bool,
    /// No answer from BlueZ within the GATT timeout (the piece may have gone out).
    pub timed_out: bool,
}

impl SmpGatt {
    /// The SMP characteristic among what the last discovery of `p` found: UUID
    /// [`SMP_CHARACTERISTIC`] in service [`SMP_SERVICE`] with write-without-response and notify;
    /// `None` when the device does not offer it. The MTU is the connection's
    /// (`Peripheral::mtu`, 23 when unknown).
    pub fn find(p: &Peripheral) -> Option<SmpGatt> {
        let chr = p.characteristics().into_iter().find(|c| {
            c.uuid == SMP_CHARACTERISTIC
                && c.service_uuid == SMP_SERVICE
                && c.properties.contains(CharPropFlags::WRITE_WITHOUT_RESPONSE)
                && c.properties.contains(CharPropFlags::NOTIFY)
        })?;
        Some(SmpGatt {
            chr,
            mtu: p.mtu().max(MIN_ATT_MTU),
            rx: Reassembler::new(),
            dropped: 0,
        })
    }

    /// The characteristic (to subscribe).
    pub fn characteristic(&self) -> &Characteristic {
        &self.chr
    }

    /// The ATT MTU writes are sized for (bytes, ≥ 23).
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Writes one whole SMP frame as Write Without Response pieces of ≤ MTU − 3 bytes, in
    /// order; returns the number of pieces. Each piece waits at most the GATT timeout.
    pub async fn write(&self, p: &Peripheral, frame: &[u8]) -> Result<usize, WriteError> {
        let pieces = split(frame, self.mtu).count();
        for (i, piece) in split(frame, self.mtu).enumerate() {
            let fail = |reason: String, stale: bool| WriteError {
                piece: i + 1,
                pieces,
                len: piece.len(),
                timed_out: reason == "timed out",
                reason,
                stale,
            };
            match timeout(
                GATT_TIMEOUT,
                p.write(&self.chr, piece, WriteType::WithoutResponse),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let name = dbus_error_name(&e);
                    let text = e.to_string();
                    let stale = is_stale_object(name.as_deref(), &text);
                    let reason = match name {
                        Some(n) => format!("{n}: {text}"),
                        None => text,
                    };
                    return Err(fail(reason, stale));
                }
                Err(_) => return Err(fail("timed out".into(), false)),
            }
        }
        Ok(pieces)
    }

    /// One notification of the SMP characteristic: a whole frame when it completes one. A
    /// notification that does not fit (no SMP header, more bytes than the header says) is
    /// dropped and counted; the next one starts a new frame (the client's timeout re-sends).
    pub fn feed(&mut self, value: &[u8]) -> Option<Vec<u8>> {
        match self.rx.push(value) {
            Ok(f) => f,
            Err(e @ (BleError::Header(_) | BleError::Overrun { .. })) => {
                self.dropped += 1;
                log::debug!("ble smp: dropped a notification: {e}");
                None
            }
        }
    }

    /// Drops a partly reassembled frame (a new session starts clean).
    pub fn reset(&mut self) {
        self.rx.reset();
    }
}

/// The D-Bus error name behind a btleplug error on BlueZ (e.g.
/// `org.freedesktop.DBus.Error.UnknownObject`), when there is one: btleplug wraps bluez-async's
/// error, whose text is only the message.
pub fn dbus_error_name(e: &btleplug::Error) -> Option<String> {
    let btleplug::Error::Other(inner) = e else {
        return None;
    };
    match inner.downcast_ref::<bluez_async::BluetoothError>()? {
        bluez_async::BluetoothError::DbusError(d) => d.name().map(str::to_owned),
        _ => None,
    }
}

/// Whether a GATT error says the characteristic's D-Bus object no longer exists (its attribute
/// table changed: B18), so a fresh discovery may find it under a new handle: the D-Bus error
/// `org.freedesktop.DBus.Error.UnknownObject` (or `UnknownMethod`/`UnknownInterface`: the path
/// now holds something else), or btleplug's own "Characteristic with UUID … not found" when the
/// last discovery lacks it.
pub fn is_stale_object(dbus_name: Option<&str>, text: &str) -> bool {
    matches!(
        dbus_name,
        Some(
            "org.freedesktop.DBus.Error.UnknownObject"
                | "org.freedesktop.DBus.Error.UnknownMethod"
                | "org.freedesktop.DBus.Error.UnknownInterface"
        )
    ) || (text.contains("Characteristic with UUID") && text.contains("not found"))
}

/// Why a standalone SMP connection could not be made ([`SmpOpener`]).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// BlueZ cannot be reached, or has no such adapter.
    #[error("{0}")]
    Bluez(String),
    /// BlueZ does not know the device: a bonded device is always known (BlueZ keeps it).
    #[error("BlueZ does not know {0}: pair it first (`wardgate pair {0}`)")]
    Unknown(Address),
    /// A refusal the relay reports too (`not_bonded`, `no_smp_service`, `device_offline`).
    #[error("{address}: {why}")]
    Refused {
        /// The device.
        address: Address,
        /// Why.
        why: LinkRefusal,
    },
    /// Connecting, discovering or subscribing failed.
    #[error("{address}: {step}: {reason}")]
    Link {
        /// The device.
        address: Address,
        /// `connect`, `discover`, `subscribe`.
        step: &'static str,
        /// BlueZ's words or `timed out`.
        reason: String,
    },
}

impl OpenError {
    /// Machine-readable: `bluez`, `not_bonded`, `no_smp_service`, `device_offline`,
    /// `connect`, `discover`, `subscribe`.
    pub fn reason(&self) -> &'static str {
        match self {
            OpenError::Bluez(_) => "bluez",
            OpenError::Unknown(_) => "not_bonded",
            OpenError::Refused { why, .. } => why.as_str(),
            OpenError::Link { step, .. } => step,
        }
    }
}

impl From<OpenError> for TransportError {
    fn from(e: OpenError) -> TransportError {
        match e {
            OpenError::Refused { why, .. } => TransportError::Refused(why),
            OpenError::Unknown(_) => TransportError::Refused(LinkRefusal::NotBonded),
            other => TransportError::Io(std::io::Error::other(other.to_string())),
        }
    }
}

/// Opens SMP sessions on one bonded device through BlueZ, outside the daemon (the bench CLI):
/// made once, [`SmpOpener::open`] again after the device's reset. Cheap to clone.
#[derive(Clone)]
pub struct SmpOpener {
    central: BtAdapter,
    bus: Arc<Bus>,
    adapter: String,
    address: Address,
    /// Keeps btleplug's BlueZ session alive.
    _manager: Arc<Manager>,
}

impl SmpOpener {
    /// Reaches BlueZ on the system bus (`DBUS_SYSTEM_BUS_ADDRESS` honoured) and picks
    /// `adapter` (`hci0`). Error: no bus, no BlueZ, no such adapter.
    pub async fn new(adapter: &str, address: Address) -> Result<SmpOpener, OpenError> {
        let manager = Manager::new().await.map_err(|e| {
            OpenError::Bluez(format!(
                "cannot reach BlueZ on the system D-Bus ({e}); is bluetoothd running?"
            ))
        })?;
        let central = pick_adapter(&manager, adapter)
            .await
            .map_err(|e| OpenError::Bluez(e.to_string()))?;
        let bus = Bus::connect().map_err(OpenError::Bluez)?;
        Ok(SmpOpener {
            central,
            bus: Arc::new(bus),
            adapter: adapter.to_owned(),
            address,
            _manager: Arc::new(manager),
        })
    }

    /// The device's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// One SMP session: the bond checked (BlueZ's `Bonded`; refused `not_bonded` without it,
    /// before anything is sent), connected if it is not (each attempt ≤ 20 s, until `wait` has
    /// passed), a fresh service discovery (B18), the SMP characteristic found by UUID (refused
    /// `no_smp_service` without it), the notification stream opened, then `StartNotify`.
    ///
    /// `fresh`: a link BlueZ already holds is renewed first (disconnect, connect). Whoever held
    /// it (an earlier run killed mid-request, the daemon) may have left the first pieces of a
    /// request on the device, which reassembles by the header's length and would swallow ours
    /// into it; a new connection starts it afresh. Not needed after the device's own reset.
    pub async fn open(&self, wait: Duration, fresh: bool) -> Result<BleSmpTransport, OpenError> {
        let a = self.address;
        let deadline = tokio::time::Instant::now() + wait;
        let st = self
            .bus
            .bond_state(&self.adapter, a)
            .await
            .map_err(|_| OpenError::Unknown(a))?;
        if !st.bonded {
            return Err(OpenError::Refused {
                address: a,
                why: LinkRefusal::NotBonded,
            });
        }
        let want = BDAddr::from(a.0);
        let p = loop {
            let found = self
                .central
                .peripherals()
                .await
                .map_err(|e| OpenError::Bluez(format!("listing devices: {e}")))?
                .into_iter()
                .find(|p| p.address() == want);
            match found {
                Some(p) => break p,
                None if tokio::time::Instant::now() >= deadline => {
                    return Err(OpenError::Unknown(a))
                }
                None => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        if fresh && p.is_connected().await.unwrap_or(false) {
            log::info!("ble {a}: renewing the link BlueZ holds, for a clean SMP session");
            if let Ok(Err(e)) = timeout(GATT_TIMEOUT, p.disconnect()).await {
                log::debug!("ble {a}: disconnect: {e}");
            }
        }
        loop {
            if p.is_connected().await.unwrap_or(false) {
                break;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let last = match timeout(
                CONNECT_TIMEOUT.min(left.max(Duration::from_millis(100))),
                p.connect(),
            )
            .await
            {
                Ok(Ok(())) => break,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(OpenError::Link {
                    address: a,
                    step: "connect",
                    reason: last,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        match timeout(GATT_TIMEOUT, p.discover_services()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(OpenError::Link {
                    address: a,
                    step: "discover",
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(OpenError::Link {
                    address: a,
                    step: "discover",
                    reason: "timed out".into(),
                })
            }
        }
        let gatt = SmpGatt::find(&p).ok_or(OpenError::Refused {
            address: a,
            why: LinkRefusal::NoSmpService,
        })?;
        let link = |step, reason: String| OpenError::Link {
            address: a,
            step,
            reason,
        };
        // The stream exists before StartNotify: no response is missed.
        let notes = p
            .notifications()
            .await
            .map_err(|e| link("subscribe", e.to_string()))?;
        match timeout(GATT_TIMEOUT, p.subscribe(gatt.characteristic())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(link("subscribe", e.to_string())),
            Err(_) => return Err(link("subscribe", "timed out".into())),
        }
        log::info!(
            "ble {a}: SMP session open (ATT MTU {}, writes of ≤ {} bytes)",
            gatt.mtu(),
            gatt.mtu() - 3
        );
        Ok(BleSmpTransport { p, gatt, notes })
    }
}

/// [`Transport`] of whole SMP frames over the SMP characteristic of a connection made by
/// [`SmpOpener`]. `recv` returns [`TransportError::Closed`] once BlueZ reports the link down
/// (checked every second while waiting).
pub struct BleSmpTransport {
    p: Peripheral,
    gatt: SmpGatt,
    notes: Pin<Box<dyn Stream<Item = ValueNotification> + Send>>,
}

impl BleSmpTransport {
    /// The ATT MTU the writes are sized for.
    pub fn mtu(&self) -> u16 {
        self.gatt.mtu()
    }

    /// Notifications dropped because they did not reassemble.
    pub fn dropped(&self) -> u64 {
        self.gatt.dropped
    }
}

impl Transport for BleSmpTransport {
    async fn send(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        match self.gatt.write(&self.p, frame).await {
            Ok(_) => Ok(()),
            Err(_) if !self.p.is_connected().await.unwrap_or(false) => Err(TransportError::Closed),
            Err(e) => Err(TransportError::Io(std::io::Error::other(e.to_string()))),
        }
    }

    /// Cancel-safe: a notification is taken from the stream only when `next` completes, and a
    /// partly reassembled frame stays in `self`.
    async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        loop {
            tokio::select! {
                n = self.notes.next() => match n {
                    None => return Err(TransportError::Closed),
                    Some(v) if v.uuid == SMP_CHARACTERISTIC => {
                        if let Some(f) = self.gatt.feed(&v.value) {
                            return Ok(f);
                        }
                    }
                    Some(_) => {}
                },
                _ = tokio::time::sleep(LINK_POLL) => {
                    if !self.p.is_connected().await.unwrap_or(false) {
                        return Err(TransportError::Closed);
                    }
                }
            }
        }
    }

    /// BLE adds no framing: the device's buffer holds the frame itself.
    fn frame_limit(&self, buf_size: usize) -> usize {
        buf_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_the_smp_services() {
        assert_eq!(
            SMP_SERVICE.to_string(),
            "8d53dc1d-1db7-4cd3-868b-8a527460aa84"
        );
        assert_eq!(
            SMP_CHARACTERISTIC.to_string(),
            "da2e7828-fbce-4e01-ae9e-261174997c48"
        );
    }

    #[test]
    fn stale_objects_are_recognised() {
        let dbus = |name: &str, text: &str| {
            btleplug::Error::Other(Box::new(bluez_async::BluetoothError::DbusError(
                dbus::Error::new_custom(name, text),
            )))
        };
        let gone = dbus(
            "org.freedesktop.DBus.Error.UnknownObject",
            "no characteristic /org/bluez/hci0/dev_C0_FF_EE_00_00_01/service001d/char001e",
        );
        let name = dbus_error_name(&gone);
        assert_eq!(
            name.as_deref(),
            Some("org.freedesktop.DBus.Error.UnknownObject")
        );
        assert!(is_stale_object(name.as_deref(), &gone.to_string()));
        let off = dbus("org.bluez.Error.Failed", "Not connected");
        assert!(!is_stale_object(
            dbus_error_name(&off).as_deref(),
            &off.to_string()
        ));
        assert!(is_stale_object(
            None,
            "Characteristic with UUID da2e7828-fbce-4e01-ae9e-261174997c48 not found."
        ));
        assert!(!is_stale_object(None, "Operation failed"));
        assert_eq!(dbus_error_name(&btleplug::Error::NotConnected), None);
    }

    #[test]
    fn refusals_become_transport_errors_with_their_reason() {
        let a = Address([1, 2, 3, 4, 5, 6]);
        let e: TransportError = OpenError::Refused {
            address: a,
            why: LinkRefusal::NoSmpService,
        }
        .into();
        assert!(matches!(
            e,
            TransportError::Refused(LinkRefusal::NoSmpService)
        ));
        assert!(matches!(
            TransportError::from(OpenError::Unknown(a)),
            TransportError::Refused(LinkRefusal::NotBonded)
        ));
        assert_eq!(OpenError::Unknown(a).reason(), "not_bonded");
        let e = OpenError::Link {
            address: a,
            step: "connect",
            reason: "le-connection-abort-by-local".into(),
        };
        assert_eq!(e.reason(), "connect");
        assert!(matches!(TransportError::from(e), TransportError::Io(_)));
    }
}
