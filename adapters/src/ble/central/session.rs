//! One admitted device's connection loop: connect with backoff, fresh discovery, Device
//! Information, subscriptions, glucose records, decoding of every notification; and the
//! device's command channel: an SMP session for the firmware relay on the same connection
//! (see the adapter's module docs, "The way back").

use super::bluez::Bus;
use super::smp::{SmpGatt, SMP_CHARACTERISTIC};
use super::{
    event, inc, send, BleStats, DevicePort, DeviceSpec, CONNECT_TIMEOUT, GATT_TIMEOUT, LINK_CHECK,
    UUID_DIS_FIRMWARE, UUID_DIS_MANUFACTURER, UUID_DIS_MODEL, UUID_DIS_SERIAL, UUID_RACP,
};
use crate::ble::config::Address;
use crate::ble::decode::profiles::glucose;
use crate::ble::decode::uuid::Uuid;
use crate::ble::decode::vendor::{CharacteristicMode, VendorProfile};
use crate::ble::decode::{DecodeError, Profile};
use crate::observation::{DeviceEvent, EventKind, Observation, Reading};
use crate::retry::{Backoff, RateLimit, DEVICE_STABLE};
use crate::smp::channel::SmpLink;
use crate::smp::client::LinkRefusal;
use crate::{AdapterError, AdapterEvent, DeviceCommand};
use btleplug::api::Central as _;
use btleplug::api::{CharPropFlags, Characteristic, Peripheral as _, ValueNotification, WriteType};
use btleplug::platform::{Adapter as BtAdapter, Peripheral, PeripheralId};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};

/// One admitted device's connection loop.
pub(super) struct Session {
    pub(super) spec: Arc<DeviceSpec>,
    pub(super) central: BtAdapter,
    pub(super) id: PeripheralId,
    pub(super) bus: Arc<Bus>,
    pub(super) out: mpsc::Sender<AdapterEvent>,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) clock: watch::Receiver<bool>,
    pub(super) stats: Arc<BleStats>,
    pub(super) glucose_last: Arc<Mutex<HashMap<Address, u16>>>,
    /// The device's command channel and connection flag.
    pub(super) port: Arc<DevicePort>,
    /// An SMP session on a connection BlueZ held from before was refused once and the link
    /// renewed (see `open_smp`): at most once per session task, so a BlueZ that reconnects the
    /// device on its own cannot make it a loop.
    pub(super) smp_link_renewed: std::sync::atomic::AtomicBool,
}

/// The device's command inbox, held by its session for the session's lifetime.
type Inbox = mpsc::Receiver<DeviceCommand>;

/// The SMP session the relay opened on the current connection.
struct SmpSession {
    link: SmpLink,
    gatt: SmpGatt,
}

/// The SMP session slot of one connection: a session still open when the connection ends is
/// closed with it (the relay sees `Closed`, `link_lost`, and resumes at the device's offset on
/// a later connection), and says so in the log.
struct SmpSlot {
    device: String,
    session: Option<SmpSession>,
}

impl Drop for SmpSlot {
    fn drop(&mut self) {
        if self.session.is_some() {
            log::info!(
                "ble {}: the connection ended; the SMP session with it",
                self.device
            );
        }
    }
}

/// `connected` of the device's port while a connection is up; cleared when dropped (also when
/// the adapter's runtime goes away mid-connection).
struct ConnectedFlag(Arc<DevicePort>);

impl ConnectedFlag {
    fn set(port: &Arc<DevicePort>) -> ConnectedFlag {
        port.connected.store(true, Ordering::Relaxed);
        ConnectedFlag(port.clone())
    }
}

impl Drop for ConnectedFlag {
    fn drop(&mut self) {
        self.0.connected.store(false, Ordering::Relaxed);
    }
}

/// The next frame the relay sends on the open SMP session; pending without one. `None`: the
/// relay dropped its end. Cancel-safe (`mpsc::Receiver::recv`).
async fn next_smp_frame(smp: &mut Option<SmpSession>) -> Option<Vec<u8>> {
    match smp {
        Some(s) => s.link.to_device.recv().await,
        None => std::future::pending().await,
    }
}

/// What an SMP step asks of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Renew {
    /// Go on.
    Nothing,
    /// Disconnect and connect again: the device's SMP reassembly may hold part of a request.
    Link,
}

/// How a connection ended.
pub(super) enum Ended {
    LinkLost,
    Shutdown,
}

impl Session {
    pub(super) fn name(&self) -> &str {
        &self.spec.cfg.name
    }

    pub(super) async fn run(mut self, mut link: watch::Receiver<u64>) {
        let mut backoff = Backoff::device(Duration::from_secs(self.spec.cfg.max_backoff_s));
        let mut bond_reported = false;
        let mut last_error = String::new();
        let port = self.port.clone();
        let mut inbox = port.inbox.lock().await;
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            match self
                .connect_once(&mut link, &mut bond_reported, &mut last_error, &mut inbox)
                .await
            {
                Ok(Some(connected_for)) if connected_for >= DEVICE_STABLE => backoff.reset(),
                Ok(_) => {}
                Err(AdapterError::ChannelClosed) => return,
                Err(_) => {}
            }
            if *self.shutdown.borrow() {
                return;
            }
            let until = Instant::now() + backoff.next_delay();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    r = link.changed() => if r.is_err() { return } else { break },
                    _ = self.shutdown.changed() => return,
                    cmd = inbox.recv() => self.refuse_unconnected(cmd, bond_reported).await,
                }
            }
        }
    }

    /// A command while no connection is up: an SMP session is refused at once (`not_bonded`
    /// when the last bond check found none, else `device_offline`).
    async fn refuse_unconnected(&self, cmd: Option<DeviceCommand>, not_bonded: bool) {
        match cmd {
            Some(DeviceCommand::OpenSmp(link)) => {
                let why = if not_bonded {
                    LinkRefusal::NotBonded
                } else {
                    LinkRefusal::Offline
                };
                inc(&self.stats.smp_refused);
                log::info!("ble {}: SMP session refused: {why}", self.name());
                link.refuse(why);
            }
            Some(DeviceCommand::SendBytes(_)) => {
                log::debug!(
                    "ble {}: raw bytes have no meaning on BLE; dropped",
                    self.name()
                )
            }
            // Unreachable while the adapter holds a sender.
            None => std::future::pending::<()>().await,
        }
    }

    pub(super) async fn emit(&self, ev: AdapterEvent) -> Result<(), AdapterError> {
        send(&self.out, ev).await
    }

    pub(super) async fn report_once(
        &self,
        last: &mut String,
        why: String,
    ) -> Result<(), AdapterError> {
        if *last != why {
            log::warn!("ble {}: {why}", self.name());
            self.emit(event(
                &self.spec.device,
                EventKind::Error,
                format!("device {}: {why}", self.name()),
            ))
            .await?;
            *last = why;
        }
        Ok(())
    }

    /// One connection: `Ok(Some(duration))` after a connection ended, `Ok(None)` when no
    /// connection was made.
    pub(super) async fn connect_once(
        &mut self,
        link: &mut watch::Receiver<u64>,
        bond_reported: &mut bool,
        last_error: &mut String,
        inbox: &mut Inbox,
    ) -> Result<Option<Duration>, AdapterError> {
        let a = self.spec.address;
        if self.spec.cfg.require_bond {
            match self.bus.bond_state(&self.spec.adapter, a).await {
                Ok(st) if st.paired => *bond_reported = false,
                Ok(_) => {
                    if !*bond_reported {
                        self.report_once(last_error, format!("{a} is not bonded with this gateway: it needs (re-)pairing (`wardgate pair {a}`); its data is refused until then")).await?;
                        *bond_reported = true;
                    }
                    return Ok(None);
                }
                Err(_) => return Ok(None), // BlueZ does not know it (yet): wait for an advertisement
            }
        }
        let p = match self.central.peripheral(&self.id).await {
            Ok(p) => p,
            Err(_) => return Ok(None),
        };
        let adopted = p.is_connected().await.unwrap_or(false);
        if !adopted {
            match timeout(CONNECT_TIMEOUT, p.connect()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let e = e.to_string();
                    if e.contains("AuthenticationFailed")
                        || e.contains("Key Missing")
                        || e.contains("auth")
                    {
                        self.report_once(last_error, format!("{a} refused our keys ({e}): the device lost its bond; it needs re-pairing (`wardgate pair {a}`)")).await?;
                    } else {
                        log::debug!("ble {}: connect failed: {e}", self.name());
                    }
                    return Ok(None);
                }
                Err(_) => {
                    log::debug!("ble {}: connect timed out", self.name());
                    return Ok(None);
                }
            }
        }
        inc(&self.stats.connects);
        let started = Instant::now();
        let ended = self.connected(&p, link, adopted, last_error, inbox).await;
        let _ = self
            .emit(event(
                &self.spec.device,
                EventKind::Disconnected,
                format!("device {}: link lost", self.name()),
            ))
            .await;
        match ended {
            Ok(Ended::Shutdown) => {
                let _ = p.disconnect().await;
                Ok(Some(started.elapsed()))
            }
            Ok(Ended::LinkLost) => Ok(Some(started.elapsed())),
            Err(AdapterError::ChannelClosed) => Err(AdapterError::ChannelClosed),
            Err(e) => {
                log::warn!("ble {}: {e}", self.name());
                let _ = p.disconnect().await;
                Ok(Some(started.elapsed()))
            }
        }
    }

    pub(super) async fn read_string(
        &self,
        p: &Peripheral,
        chars: &[Characteristic],
        u: Uuid,
    ) -> Option<String> {
        let c = chars
            .iter()
            .find(|c| c.uuid == u && c.properties.contains(CharPropFlags::READ))?;
        let v = timeout(GATT_TIMEOUT, p.read(c)).await.ok()?.ok()?;
        let s = String::from_utf8_lossy(&v)
            .trim_end_matches('\0')
            .trim()
            .to_owned();
        (!s.is_empty()).then_some(s)
    }

    pub(super) async fn connected(
        &mut self,
        p: &Peripheral,
        link: &mut watch::Receiver<u64>,
        adopted: bool,
        last_error: &mut String,
        inbox: &mut Inbox,
    ) -> Result<Ended, AdapterError> {
        let a = self.spec.address;
        match timeout(GATT_TIMEOUT, p.discover_services()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(AdapterError::Transport(format!("service discovery: {e}"))),
            Err(_) => {
                return Err(AdapterError::Transport(
                    "service discovery timed out".into(),
                ))
            }
        }
        let chars: Vec<Characteristic> = p.characteristics().into_iter().collect();
        // The stream exists before the first StartNotify: nothing sent after it is missed.
        let mut notes = p
            .notifications()
            .await
            .map_err(|e| AdapterError::Transport(format!("notification stream: {e}")))?;
        let manufacturer = self.read_string(p, &chars, UUID_DIS_MANUFACTURER).await;
        let model = self.read_string(p, &chars, UUID_DIS_MODEL).await;
        let serial = self.read_string(p, &chars, UUID_DIS_SERIAL).await;
        let firmware = self.read_string(p, &chars, UUID_DIS_FIRMWARE).await;
        let identity_ok = match (&self.spec.cfg.serial_number, &serial) {
            (None, _) => true,
            (Some(want), Some(got)) if want == got => true,
            (Some(want), got) => {
                self.report_once(last_error, format!("{a} reports serial number {}, configured {want}; readings dropped until it matches", got.as_deref().unwrap_or("(none)"))).await?;
                false
            }
        };
        if identity_ok {
            last_error.clear();
        }
        let detail = format!(
            "device {}: address={a} manufacturer={:?} model={:?} serial={:?} firmware={:?} services={}{}",
            self.name(),
            manufacturer.as_deref().unwrap_or(""),
            model.as_deref().unwrap_or(""),
            serial.as_deref().unwrap_or(""),
            firmware.as_deref().unwrap_or(""),
            p.services().len(),
            if adopted { " adopted=true" } else { "" },
        );
        log::info!(
            "ble {}: connected{}",
            self.name(),
            if adopted {
                " (link held by BlueZ from before)"
            } else {
                ""
            }
        );
        // The Device Information firmware revision (0x2A26) becomes the device's firmware
        // version in its status and the heartbeat (issue 10 item 6).
        self.emit(AdapterEvent::Event(
            DeviceEvent::new(self.spec.device.clone(), EventKind::Connected, detail)
                .with_firmware(firmware.as_deref()),
        ))
        .await?;
        // Battery Level and vendor "read" characteristics: read once per connection. BlueZ
        // reports a read's result as a `Value` change too, so the value reaches `handle` through
        // the notification stream (exactly once), not from here.
        for c in &chars {
            let is_battery = c.uuid == Profile::Battery.uuid() && self.spec.wants(Profile::Battery);
            let vendor_read = self
                .spec
                .vendor
                .as_ref()
                .is_some_and(|v| vendor_mode(v, c.uuid) == Some(CharacteristicMode::Read));
            if (is_battery || vendor_read) && c.properties.contains(CharPropFlags::READ) {
                if let Ok(Err(e)) = timeout(GATT_TIMEOUT, p.read(c)).await {
                    log::debug!("ble {}: read {}: {e}", self.name(), c.uuid);
                }
            }
        }
        // Subscribe exactly once per connection to every wanted notify/indicate characteristic.
        let mut racp = None;
        for c in &chars {
            let is_racp = c.uuid == UUID_RACP;
            if is_racp && self.spec.wants(Profile::Glucose) {
                racp = Some(c.clone());
            }
            let wanted = Profile::from_uuid(c.uuid).is_some_and(|pr| self.spec.wants(pr))
                || (is_racp && self.spec.wants(Profile::Glucose))
                || self.spec.vendor.as_ref().is_some_and(|v| {
                    matches!(
                        vendor_mode(v, c.uuid),
                        Some(CharacteristicMode::Notify | CharacteristicMode::Indicate)
                    )
                });
            if wanted
                && c.properties
                    .intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE)
            {
                match timeout(GATT_TIMEOUT, p.subscribe(c)).await {
                    Ok(Ok(())) => inc(&self.stats.subscriptions),
                    Ok(Err(e)) => {
                        return Err(AdapterError::Transport(format!(
                            "subscribe {}: {e}",
                            c.uuid
                        )))
                    }
                    Err(_) => {
                        return Err(AdapterError::Transport(format!(
                            "subscribe {}: timed out",
                            c.uuid
                        )))
                    }
                }
            }
        }
        if let Some(c) = racp {
            let last = self
                .glucose_last
                .lock()
                .map(|m| m.get(&a).copied())
                .unwrap_or(None);
            let req = glucose::racp_request(last.map(|s| s.wrapping_add(1)));
            if let Err(e) = p.write(&c, &req, WriteType::WithResponse).await {
                log::warn!("ble {}: glucose record request: {e}", self.name());
            }
        }
        let mut errors = RateLimit::error_events();
        let silent_after = self.spec.cfg.silent_after();
        let mut last_value = Instant::now();
        // What the relay reads: this session holds a connection (cleared however it ends).
        let _connected = ConnectedFlag::set(&self.port);
        // The firmware relay's SMP session on this connection, dropped with it.
        let mut slot = SmpSlot {
            device: self.name().to_owned(),
            session: None,
        };
        let smp = &mut slot.session;
        // StartNotify on the SMP characteristic: once per connection, at the first session.
        let mut smp_subscribed = false;
        loop {
            let silent_at = last_value + silent_after.unwrap_or(Duration::from_secs(86_400 * 365));
            // While the relay updates the device, its silence says nothing about the link (a
            // slot erase keeps it quiet for tens of seconds, B25): the SMP client's own
            // timeouts judge it, and the silence window starts again when the session ends.
            let updating = smp.is_some();
            tokio::select! {
                n = notes.next() => match n {
                    Some(ValueNotification { uuid, value, .. }) => {
                        inc(&self.stats.notifications);
                        last_value = Instant::now();
                        if uuid == SMP_CHARACTERISTIC {
                            self.smp_notification(smp, &value);
                        } else {
                            self.handle(uuid, &value, identity_ok, &mut errors).await?;
                        }
                    }
                    None => return Err(AdapterError::Transport("notification stream ended".into())),
                },
                cmd = inbox.recv() => match cmd {
                    Some(DeviceCommand::OpenSmp(l)) => {
                        if self.open_smp(p, l, smp, &mut smp_subscribed, adopted).await == Renew::Link {
                            let _ = p.disconnect().await;
                            return Ok(Ended::LinkLost);
                        }
                    }
                    Some(DeviceCommand::SendBytes(_)) => {
                        log::debug!("ble {}: raw bytes have no meaning on BLE; dropped", self.name())
                    }
                    // Unreachable while the adapter holds a sender.
                    None => std::future::pending::<()>().await,
                },
                frame = next_smp_frame(smp) => match frame {
                    Some(f) => {
                        if self.smp_write(p, smp, &f).await == Renew::Link {
                            let _ = p.disconnect().await;
                            return Ok(Ended::LinkLost);
                        }
                    }
                    None => {
                        *smp = None;
                        log::info!("ble {}: SMP session closed (the relay is done)", self.name());
                    }
                },
                _ = tokio::time::sleep_until(silent_at), if silent_after.is_some() && !updating => {
                    let s = silent_after.unwrap_or_default().as_secs();
                    inc(&self.stats.silent_reconnects);
                    log::warn!("ble {}: subscribed but silent for {s} s; reconnecting", self.name());
                    self.emit(event(&self.spec.device, EventKind::Error, format!(
                        "device {}: subscribed but silent for {s} s (link up, no notifications); reconnecting and subscribing again", self.name()))).await?;
                    let _ = p.disconnect().await;
                    return Ok(Ended::LinkLost);
                }
                r = link.changed() => {
                    if r.is_err() { return Ok(Ended::Shutdown) }
                    if !p.is_connected().await.unwrap_or(false) { return Ok(Ended::LinkLost) }
                }
                _ = tokio::time::sleep(LINK_CHECK) => {
                    if !p.is_connected().await.unwrap_or(false) { return Ok(Ended::LinkLost) }
                }
                _ = self.shutdown.changed() => return Ok(Ended::Shutdown),
            }
            if updating {
                last_value = Instant::now();
            }
        }
    }

    /// `OpenSmp` on this connection: the bond checked with BlueZ (SMP is for bonded devices
    /// only, whatever `require_bond` says), the SMP characteristic found by UUID in this
    /// connection's fresh discovery, subscribed once per connection; then frames pass. A
    /// second session replaces the first (whose relay sees `Closed`). Refusals carry their
    /// reason to the relay, and nothing is written to the device.
    ///
    /// On a connection BlueZ held from before (`adopted`: we were restarted, maybe killed in
    /// the middle of writing a request), the device may hold the first pieces of a request
    /// that never ended; it reassembles by the header's length, so it would swallow our next
    /// requests into it. The first session there is refused (`device_offline`) and the link
    /// renewed ([`Renew::Link`]): a new connection starts the device's reassembly afresh.
    async fn open_smp(
        &self,
        p: &Peripheral,
        link: SmpLink,
        smp: &mut Option<SmpSession>,
        subscribed: &mut bool,
        adopted: bool,
    ) -> Renew {
        let a = self.spec.address;
        let refuse = |link: SmpLink, why: LinkRefusal| {
            inc(&self.stats.smp_refused);
            log::warn!("ble {}: SMP session refused: {why}", self.name());
            link.refuse(why);
            Renew::Nothing
        };
        match self.bus.bond_state(&self.spec.adapter, a).await {
            Ok(st) if st.bonded => {}
            Ok(_) => return refuse(link, LinkRefusal::NotBonded),
            Err(e) => {
                log::debug!("ble {}: bond state: {e}", self.name());
                return refuse(link, LinkRefusal::Offline);
            }
        }
        let Some(mut gatt) = SmpGatt::find(p) else {
            return refuse(link, LinkRefusal::NoSmpService);
        };
        if adopted && !*subscribed && !self.smp_link_renewed.swap(true, Ordering::Relaxed) {
            log::info!(
                "ble {}: SMP on a link held from before: renewing the link first (the device may hold half a request)",
                self.name()
            );
            refuse(link, LinkRefusal::Offline);
            return Renew::Link;
        }
        if !*subscribed {
            if let Err(e) = self.subscribe_smp(p, &gatt).await {
                log::warn!("ble {}: SMP: {e}; session not opened", self.name());
                return refuse(link, LinkRefusal::Offline);
            }
            *subscribed = true;
        }
        gatt.reset();
        if smp.is_some() {
            log::info!(
                "ble {}: a new SMP session replaces the open one",
                self.name()
            );
        }
        inc(&self.stats.smp_sessions);
        log::info!(
            "ble {}: SMP session opened (firmware relay; ATT MTU {}, writes of ≤ {} bytes); measurements keep flowing",
            self.name(),
            gatt.mtu(),
            gatt.mtu() - 3
        );
        *smp = Some(SmpSession { link, gatt });
        Renew::Nothing
    }

    async fn subscribe_smp(&self, p: &Peripheral, gatt: &SmpGatt) -> Result<(), String> {
        match timeout(GATT_TIMEOUT, p.subscribe(gatt.characteristic())).await {
            Ok(Ok(())) => {
                inc(&self.stats.subscriptions);
                Ok(())
            }
            Ok(Err(e)) => Err(format!("subscribe {SMP_CHARACTERISTIC}: {e}")),
            Err(_) => Err(format!("subscribe {SMP_CHARACTERISTIC}: timed out")),
        }
    }

    /// A notification of the SMP characteristic: reassembled, a whole frame passed to the
    /// relay. Without an open session it is a stray answer and dropped.
    fn smp_notification(&self, smp: &mut Option<SmpSession>, value: &[u8]) {
        let Some(s) = smp.as_mut() else {
            inc(&self.stats.smp_dropped);
            return;
        };
        let dropped = s.gatt.dropped;
        let frame = s.gatt.feed(value);
        if s.gatt.dropped > dropped {
            inc(&self.stats.smp_dropped);
        }
        let Some(f) = frame else {
            return;
        };
        match s.link.from_device.try_send(f) {
            Ok(()) => inc(&self.stats.smp_frames_in),
            Err(mpsc::error::TrySendError::Full(_)) => {
                inc(&self.stats.smp_dropped);
                log::debug!(
                    "ble {}: SMP frame dropped: the relay is not reading",
                    self.name()
                );
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                *smp = None;
                log::info!(
                    "ble {}: SMP session closed (the relay is done)",
                    self.name()
                );
            }
        }
    }

    /// Writes one frame from the relay. A write that finds the characteristic's object gone
    /// (the attribute table changed under the connection, B18) gets one fresh discovery, the
    /// characteristic found again by UUID and subscribed, and a second try; any other failure
    /// ends the SMP session (the relay sees `Closed` and retries on a later connection), and
    /// when part of the frame may have reached the device (a later piece failed, or a write
    /// timed out) the link is renewed too: the device would take our next request for the
    /// rest of this one.
    async fn smp_write(&self, p: &Peripheral, smp: &mut Option<SmpSession>, frame: &[u8]) -> Renew {
        let Some(s) = smp.as_mut() else {
            return Renew::Nothing;
        };
        let mut result = s.gatt.write(p, frame).await;
        if let Err(e) = &result {
            if e.stale {
                inc(&self.stats.smp_rediscoveries);
                log::warn!(
                    "ble {}: SMP {e}: the attribute table changed; discovering afresh",
                    self.name()
                );
                match self.rediscover_smp(p).await {
                    Ok(Some(g)) => {
                        s.gatt = g;
                        result = s.gatt.write(p, frame).await;
                    }
                    Ok(None) => {
                        inc(&self.stats.smp_refused);
                        log::warn!(
                            "ble {}: SMP characteristic gone after rediscovery; session ended",
                            self.name()
                        );
                        if let Some(s) = smp.take() {
                            s.link.refuse(LinkRefusal::NoSmpService);
                        }
                        return Renew::Nothing;
                    }
                    Err(why) => log::warn!("ble {}: SMP: {why}", self.name()),
                }
            }
        }
        match result {
            Ok(pieces) => {
                inc(&self.stats.smp_frames_out);
                self.stats
                    .smp_writes
                    .fetch_add(pieces as u64, Ordering::Relaxed);
                Renew::Nothing
            }
            Err(e) => {
                *smp = None;
                if e.piece > 1 || e.timed_out {
                    log::warn!(
                        "ble {}: SMP {e}; session ended, link renewed (the device may hold part of the request)",
                        self.name()
                    );
                    Renew::Link
                } else {
                    log::warn!(
                        "ble {}: SMP {e}; session ended (the relay retries)",
                        self.name()
                    );
                    Renew::Nothing
                }
            }
        }
    }

    /// A fresh service discovery on the open connection, then the SMP characteristic by UUID,
    /// subscribed. `Ok(None)`: the device no longer offers it.
    async fn rediscover_smp(&self, p: &Peripheral) -> Result<Option<SmpGatt>, String> {
        match timeout(GATT_TIMEOUT, p.discover_services()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("service discovery: {e}")),
            Err(_) => return Err("service discovery timed out".into()),
        }
        let Some(g) = SmpGatt::find(p) else {
            return Ok(None);
        };
        self.subscribe_smp(p, &g).await?;
        Ok(Some(g))
    }

    /// Decodes one value of characteristic `uuid` and sends its observations.
    pub(super) async fn handle(
        &self,
        uuid: Uuid,
        value: &[u8],
        identity_ok: bool,
        errors: &mut RateLimit,
    ) -> Result<(), AdapterError> {
        let decoded: Result<Vec<Reading>, (String, DecodeError)> = match Profile::from_uuid(uuid) {
            Some(Profile::Glucose) => match glucose::parse(value) {
                Ok(m) => {
                    let mut last = self.glucose_last.lock().unwrap_or_else(|e| e.into_inner());
                    let prev = last.get(&self.spec.address).copied();
                    if prev.is_some_and(|p| !seq_after(m.sequence, p)) {
                        inc(&self.stats.duplicates_dropped);
                        Ok(Vec::new())
                    } else {
                        last.insert(self.spec.address, m.sequence);
                        // The record's sequence number travels as a status flag, so the
                        // upstream can recognise a record fetched again after a gateway
                        // restart (the dedup state here is in memory).
                        let mut rs = glucose::readings(&m);
                        for r in &mut rs {
                            r.status.push(format!("record={}", m.sequence));
                        }
                        Ok(rs)
                    }
                }
                Err(e) => Err(("glucose measurement".into(), e)),
            },
            Some(p) if self.spec.wants(p) => p.decode(value).map_err(|e| (p.name().into(), e)),
            Some(_) => Ok(Vec::new()),
            None if uuid == UUID_RACP => {
                log::debug!("ble {}: RACP response {:02x?}", self.name(), value);
                Ok(Vec::new())
            }
            None => match &self.spec.vendor {
                Some(v) if v.characteristic(uuid).is_some() => v
                    .decode(uuid, value)
                    .map_err(|e| (format!("vendor profile {} {uuid}", v.name), e)),
                _ => Ok(Vec::new()),
            },
        };
        match decoded {
            Ok(readings) => {
                if !identity_ok {
                    self.stats
                        .readings_dropped
                        .fetch_add(readings.len() as u64, Ordering::Relaxed);
                    return Ok(());
                }
                let synced = *self.clock.borrow();
                for r in readings {
                    let o = Observation::from_reading(self.spec.device.clone(), r, synced);
                    self.emit(AdapterEvent::Observation(o)).await?;
                }
            }
            Err((what, e)) => {
                inc(&self.stats.decode_errors);
                if errors.allow(std::time::Instant::now()) {
                    self.emit(event(
                        &self.spec.device,
                        EventKind::Error,
                        format!("device {}: {what}: {e}", self.name()),
                    ))
                    .await?;
                }
            }
        }
        Ok(())
    }
}

/// The mode a vendor profile gives characteristic `u`, if it declares it.
pub(super) fn vendor_mode(v: &VendorProfile, u: Uuid) -> Option<CharacteristicMode> {
    v.characteristic(u).map(|c| c.mode)
}

/// Glucose sequence numbers are u16 and wrap: `a` comes after `b` when it is ahead by less
/// than half the range.
pub(super) fn seq_after(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glucose_sequence_wraps() {
        assert!(seq_after(2, 1));
        assert!(!seq_after(1, 1));
        assert!(!seq_after(1, 2));
        assert!(seq_after(0, 0xffff));
    }
}
