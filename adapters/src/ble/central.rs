//! [`BleAdapter`]: BLE devices through BlueZ (btleplug), admitted, decoded, supervised.
//!
//! # What it does
//! 1. Connects to BlueZ on the system D-Bus (btleplug's BlueZ backend; `DBUS_SYSTEM_BUS_ADDRESS`
//!    is honoured, which is how the tests reach a simulated BlueZ), picks the configured adapter
//!    (`hci0`), subscribes to its events and starts scanning.
//! 2. **Admission** (DESIGN §6). Every device BlueZ reports is classified by its address:
//!    - a `[[ble.device]]` entry (identity address) gets one **session** (below). An entry with
//!      `require_bond = true` (the default) is served only while BlueZ holds a bond for it
//!      (`Paired`); without one, an `error` event says it needs (re-)pairing with
//!      `wardgate pair`, and nothing it sends is read.
//!    - a device matching a `[[ble.tag]]` rule (service data UUID, iBeacon UUID, name prefix or
//!      address, each explicit in the config) feeds presence aggregation: one `rssi` event per
//!      tag per window (`count=… rssi_min=… rssi_median=… rssi_max=…`) plus the beacon's own
//!      readings (temperature, battery) once per window, whatever the advertising rate.
//!    - anything else is **refused**: a `rejected` event `address=… address_type=… rssi=…
//!      name="…" reason=not-allowlisted` for an installer to approve (at most once per address per
//!      `rejected_repeat_s`, at most `rejected_per_minute` events a minute, the rest counted in a
//!      summary event), and its data never reaches the store. With `prune_rejected` (default) the
//!      device is removed from BlueZ (`Adapter1.RemoveDevice`) unless it is paired or connected.
//!      The adapter's own memory is bounded ([`MAX_TRACKED`] addresses) whatever the number of
//!      rotating addresses on the ward.
//! 3. **Sessions**: one task per admitted device, alive until shutdown. Per connection:
//!    connect (capped exponential backoff with equal jitter while the device is absent; a fresh
//!    advertisement from it triggers an attempt at once), **fresh service discovery** (a device
//!    whose attribute table changed after a firmware update is re-read, never served from a
//!    stale list), one notification stream opened before subscribing, Device Information
//!    (manufacturer 0x2A29, model 0x2A24, serial number 0x2A25, firmware 0x2A26) and Battery
//!    Level 0x2A19 read, then **every wanted notify/indicate characteristic subscribed exactly
//!    once** (StartNotify per connection; the previous connection's stream is dropped first, so
//!    notifications are never doubled). Glucose meters get a Record Access Control Point request
//!    (0x2A52, "report stored records with sequence number ≥ last seen + 1") and records are
//!    deduplicated by sequence number. On link loss: `disconnected`, reconnect.
//! 4. **Reconcile after our own restart**: devices BlueZ still holds connected are reported by
//!    btleplug as connected at start; their sessions adopt the link (no reconnect), rediscover
//!    and resubscribe.
//!
//! Every decoded [`Reading`] becomes an [`Observation`] with device id `ble:<identity address>`.
//! Logs never carry clinical values above `debug`.

use super::bluez::{address_from_id, Bus};
use super::config::{parse_uuid128, Address, BleConfig, BleDeviceConfig, TagRule};
use super::presence::PresenceAggregator;
use super::profiles::{glucose, Profile};
use super::vendor::{self, CharacteristicMode, VendorProfile};
use super::{advertisement, Reading};
use crate::observation::{now_ms, DeviceEvent, DeviceId, EventKind, Observation};
use crate::{Adapter, AdapterContext, AdapterError, AdapterEvent, RunFuture};
use btleplug::api::{
    Central, CentralEvent, CentralState, CharPropFlags, Characteristic, Manager as _,
    Peripheral as _, ScanFilter, ValueNotification, WriteType,
};
use btleplug::platform::{Adapter as BtAdapter, Manager, Peripheral, PeripheralId};
use futures::StreamExt;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};
use uuid::Uuid;

/// Most addresses the adapter remembers (refused-device report times); oldest forgotten first.
pub const MAX_TRACKED: usize = 4096;
/// Most tags tracked per `[[ble.tag]]` rule for presence aggregation.
pub const MAX_TAGS_PER_RULE: usize = 2048;
/// Longest wait for a connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for service discovery and for one GATT read.
const GATT_TIMEOUT: Duration = Duration::from_secs(15);
/// First reconnect wait (before jitter).
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
/// A connection that lasted this long resets the backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// How often a connected session double-checks the link (a missed signal cannot stall it).
const LINK_CHECK: Duration = Duration::from_secs(5);
/// Most decode `error` events per device per second; the rest are counted.
const MAX_ERROR_EVENTS_PER_SEC: u32 = 5;

const UUID_DIS_MANUFACTURER: u16 = 0x2A29;
const UUID_DIS_MODEL: u16 = 0x2A24;
const UUID_DIS_SERIAL: u16 = 0x2A25;
const UUID_DIS_FIRMWARE: u16 = 0x2A26;
const UUID_RACP: u16 = 0x2A52;

/// Counters of the BLE adapter, readable while it runs ([`BleAdapter::stats`]).
#[derive(Debug, Default, Serialize)]
pub struct BleStats {
    /// Advertisement reports seen (any device).
    pub advertisements: AtomicU64,
    /// Refused sightings (devices neither allowlisted nor matching a tag rule).
    pub rejected: AtomicU64,
    /// `rejected` events sent.
    pub rejected_events: AtomicU64,
    /// `rejected` events held back by the per-minute limit (summarised).
    pub rejected_suppressed: AtomicU64,
    /// Refused devices removed from BlueZ.
    pub pruned: AtomicU64,
    /// Addresses currently remembered (bounded by [`MAX_TRACKED`]).
    pub tracked: AtomicU64,
    /// Successful connections (including adopted ones).
    pub connects: AtomicU64,
    /// StartNotify calls made (one per characteristic per connection).
    pub subscriptions: AtomicU64,
    /// Notification/indication values received from admitted devices.
    pub notifications: AtomicU64,
    /// Values that did not decode.
    pub decode_errors: AtomicU64,
    /// Stored glucose records dropped as already delivered (same sequence number).
    pub duplicates_dropped: AtomicU64,
    /// Readings dropped because the device's serial number did not match the config.
    pub readings_dropped: AtomicU64,
    /// Presence summaries sent.
    pub presence_summaries: AtomicU64,
    /// Reconnects because a subscribed device went silent.
    pub silent_reconnects: AtomicU64,
    /// Times the adapter heard no advertisement while known tags should be heard.
    pub blind_episodes: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The BLE adapter (one per gateway; it serves every configured BLE device and tag).
pub struct BleAdapter {
    cfg: Arc<BleConfig>,
    stats: Arc<BleStats>,
    /// Last glucose record sequence number delivered, per device (survives reconnects and
    /// adapter restarts within the process).
    glucose_last: Arc<Mutex<HashMap<Address, u16>>>,
}

impl BleAdapter {
    /// An adapter for a validated `[ble]` section ([`BleConfig::problems`] empty).
    pub fn new(cfg: BleConfig) -> Self {
        BleAdapter {
            cfg: Arc::new(cfg),
            stats: Arc::default(),
            glucose_last: Arc::default(),
        }
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<BleStats> {
        self.stats.clone()
    }
}

impl Adapter for BleAdapter {
    fn name(&self) -> &str {
        "ble"
    }
    /// Runs the adapter on **its own thread and single-threaded runtime**: libdbus connects
    /// with blocking calls (no timeout when the system bus hangs), and btleplug makes some
    /// more; none of them may stall the gateway's runtime (store writer, uplink, serial
    /// adapters, watchdog). Events cross over on the same bounded channel.
    fn run<'a>(&'a self, ctx: &'a mut AdapterContext) -> RunFuture<'a> {
        Box::pin(async move {
            let inner = BleAdapter {
                cfg: self.cfg.clone(),
                stats: self.stats.clone(),
                glucose_last: self.glucose_last.clone(),
            };
            // The thread sends into its own channel; a task here forwards to the gateway's. If
            // the thread hangs, dropping the forwarder releases the gateway's channel, so the
            // writer can drain and the daemon stop.
            let (ble_tx, mut ble_rx) = mpsc::channel::<AdapterEvent>(1024);
            let out = ctx.out.clone();
            let forward = tokio::spawn(async move {
                while let Some(ev) = ble_rx.recv().await {
                    if out.send(ev).await.is_err() {
                        break;
                    }
                }
            });
            let mut own = AdapterContext {
                id: ctx.id.clone(),
                out: ble_tx,
                shutdown: ctx.shutdown.clone(),
                clock_synced: ctx.clock_synced.clone(),
            };
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new()
                .name("wardgate-ble".into())
                .spawn(move || {
                    let r = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(inner.run_inner(&mut own)),
                        Err(e) => Err(AdapterError::Transport(format!("BLE runtime: {e}"))),
                    };
                    let _ = done_tx.send(r);
                });
            if let Err(e) = spawned {
                forward.abort();
                return Err(AdapterError::Transport(format!("BLE thread: {e}")));
            }
            let mut shutdown = ctx.shutdown.clone();
            let abort = forward.abort_handle();
            tokio::select! {
                r = done_rx => {
                    // The thread's senders are gone with its runtime: the forwarder ends once it
                    // has passed on what was queued.
                    let _ = timeout(Duration::from_secs(5), forward).await;
                    abort.abort();
                    r.unwrap_or_else(|_| Err(AdapterError::Transport("BLE thread ended".into())))
                }
                _ = async {
                    while !*shutdown.borrow() {
                        if shutdown.changed().await.is_err() { break; }
                    }
                    // A thread stuck in a blocking D-Bus call cannot be joined: give it a moment,
                    // then let the gateway stop without it (the process exit ends it).
                    tokio::time::sleep(Duration::from_secs(6)).await;
                } => {
                    log::warn!("ble: the BLE thread did not stop within 6 s (system D-Bus hung?); stopping without it");
                    abort.abort();
                    Ok(())
                }
            }
        })
    }
}

/// What a configured device needs at run time.
struct DeviceSpec {
    cfg: BleDeviceConfig,
    address: Address,
    device: DeviceId,
    adapter: String,
    /// `None`: every known profile.
    profiles: Option<Vec<Profile>>,
    vendor: Option<VendorProfile>,
}

impl DeviceSpec {
    fn wants(&self, p: Profile) -> bool {
        self.profiles.as_ref().is_none_or(|v| v.contains(&p))
    }
}

struct SessionHandle {
    link: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

/// The device id upstream for a BLE device: `ble:<identity address>`.
pub fn device_id(address: Address) -> DeviceId {
    DeviceId(format!("ble:{address}"))
}

fn event(device: &DeviceId, kind: EventKind, detail: String) -> AdapterEvent {
    AdapterEvent::Event(DeviceEvent {
        device: device.clone(),
        kind,
        detail,
        gateway_time: now_ms(),
    })
}

async fn send(out: &mpsc::Sender<AdapterEvent>, ev: AdapterEvent) -> Result<(), AdapterError> {
    out.send(ev).await.map_err(|_| AdapterError::ChannelClosed)
}

/// The 16-bit form of a UUID on the Bluetooth Base UUID ([`vendor::BASE_UUID`]), if it is one.
pub fn short_uuid(u: Uuid) -> Option<u16> {
    let v = u.as_u128();
    let short = (v >> 96) as u32;
    (short <= 0xFFFF && v & !(0xFFFF_FFFFu128 << 96) == vendor::BASE_UUID).then_some(short as u16)
}

/// The full UUID of a 16-bit one.
pub fn uuid16(u: u16) -> Uuid {
    Uuid::from_u128(vendor::uuid16(u))
}

impl BleAdapter {
    async fn run_inner(&self, ctx: &mut AdapterContext) -> Result<(), AdapterError> {
        let me = DeviceId(format!("adapter:{}", ctx.id));
        let manager = Manager::new().await.map_err(|e| {
            AdapterError::Transport(format!(
                "cannot reach BlueZ on the system D-Bus ({e}); is bluetoothd running?"
            ))
        })?;
        let central = pick_adapter(&manager, &self.cfg.adapter).await?;
        let bus = Arc::new(Bus::connect().map_err(AdapterError::Transport)?);
        // The daemon never accepts new pairings (only `wardgate pair` does).
        if let Err(e) = bus.set_pairable(&self.cfg.adapter, false).await {
            log::warn!("ble: cannot make {} non-pairable: {e}", self.cfg.adapter);
        }
        let mut events = central
            .events()
            .await
            .map_err(|e| AdapterError::Transport(format!("BlueZ events: {e}")))?;
        central
            .start_scan(ScanFilter::default())
            .await
            .map_err(|e| {
                AdapterError::Transport(format!(
                    "cannot start scanning on {}: {e}",
                    self.cfg.adapter
                ))
            })?;
        log::info!(
            "ble: scanning on {} ({} devices allowlisted, {} tag rules)",
            self.cfg.adapter,
            self.cfg.devices.len(),
            self.cfg.tags.len()
        );
        let mut scan = Scan::new(self, &central, bus.clone(), ctx);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = ctx.shutdown.clone();
        let result = loop {
            if *shutdown.borrow() {
                break Ok(());
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                ev = events.next() => match ev {
                    None => break Err(AdapterError::Transport("BlueZ event stream ended (D-Bus connection lost)".into())),
                    Some(ev) => if let Err(e) = scan.on_event(ev).await { break Err(e) },
                },
                _ = tick.tick() => if let Err(e) = scan.on_tick().await { break Err(e) },
            }
        };
        let _ = central.stop_scan().await;
        scan.stop().await;
        if let Err(AdapterError::Transport(why)) = &result {
            let _ = send(
                &ctx.out,
                event(&me, EventKind::Error, format!("ble: {why}")),
            )
            .await;
        }
        result
    }
}

async fn pick_adapter(manager: &Manager, name: &str) -> Result<BtAdapter, AdapterError> {
    let adapters = manager
        .adapters()
        .await
        .map_err(|e| AdapterError::Transport(format!("listing Bluetooth adapters: {e}")))?;
    let mut seen = Vec::new();
    for a in adapters {
        let info = a.adapter_info().await.unwrap_or_default();
        let id = info.split_whitespace().next().unwrap_or("").to_owned();
        if id == name {
            return Ok(a);
        }
        seen.push(id);
    }
    Err(AdapterError::Transport(format!(
        "Bluetooth adapter {name} not found (BlueZ has: {})",
        if seen.is_empty() {
            "none".into()
        } else {
            seen.join(", ")
        }
    )))
}

/// Refused-device bookkeeping with bounded memory.
struct RejectTracker {
    last: HashMap<Address, Instant>,
    order: VecDeque<Address>,
    repeat: Duration,
    per_minute: u32,
    minute_start: Instant,
    sent_this_minute: u32,
    suppressed: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum RejectDecision {
    /// Send a `rejected` event.
    Report,
    /// Over the per-minute limit: counted for the summary.
    Suppress,
    /// Reported recently.
    Recent,
}

impl RejectTracker {
    fn new(repeat: Duration, per_minute: u32, now: Instant) -> Self {
        RejectTracker {
            last: HashMap::new(),
            order: VecDeque::new(),
            repeat,
            per_minute,
            minute_start: now,
            sent_this_minute: 0,
            suppressed: 0,
        }
    }

    fn decide(&mut self, a: Address, now: Instant) -> RejectDecision {
        if let Some(t) = self.last.get(&a) {
            if now.duration_since(*t) < self.repeat {
                return RejectDecision::Recent;
            }
        }
        if !self.last.contains_key(&a) {
            while self.last.len() >= MAX_TRACKED {
                match self.order.pop_front() {
                    Some(old) => {
                        self.last.remove(&old);
                    }
                    None => break,
                }
            }
            self.order.push_back(a);
        }
        self.last.insert(a, now);
        if now.duration_since(self.minute_start) >= Duration::from_secs(60) {
            self.minute_start = now;
            self.sent_this_minute = 0;
        }
        if self.sent_this_minute < self.per_minute {
            self.sent_this_minute += 1;
            RejectDecision::Report
        } else {
            self.suppressed += 1;
            RejectDecision::Suppress
        }
    }

    /// The number of reports held back, once the minute they belong to is over.
    fn take_summary(&mut self, now: Instant) -> Option<u64> {
        if self.suppressed > 0 && now.duration_since(self.minute_start) >= Duration::from_secs(60) {
            self.minute_start = now;
            self.sent_this_minute = 0;
            return Some(std::mem::take(&mut self.suppressed));
        }
        None
    }
}

/// One tag rule at run time.
struct TagState {
    rule: TagRule,
    service_data: Option<Uuid>,
    ibeacon: Option<[u8; 16]>,
    addresses: Vec<Address>,
    keys: HashMap<Address, [u8; 16]>,
    presence: PresenceAggregator,
    /// Latest beacon readings per tag, sent with the tag's next presence summary.
    latest: HashMap<String, Vec<Reading>>,
}

impl TagState {
    fn new(rule: &TagRule) -> Self {
        TagState {
            service_data: rule
                .service_data
                .as_deref()
                .and_then(|s| u16::from_str_radix(s, 16).ok())
                .map(uuid16),
            ibeacon: rule.ibeacon_uuid.as_deref().and_then(parse_uuid128),
            addresses: rule
                .addresses
                .iter()
                .filter_map(|a| Address::parse(a).ok())
                .collect(),
            keys: rule
                .bthome_keys
                .iter()
                .filter_map(|(a, k)| {
                    let a = Address::parse(a).ok()?;
                    let k = super::bthome_crypto::parse_bindkey(k).ok()?;
                    Some((a, k))
                })
                .collect(),
            presence: PresenceAggregator::new(
                Duration::from_secs(rule.window_s.max(1)),
                MAX_TAGS_PER_RULE,
            ),
            latest: HashMap::new(),
            rule: rule.clone(),
        }
    }

    fn matches(&self, a: Address, props: &Sighting) -> bool {
        self.addresses.contains(&a)
            || self
                .service_data
                .is_some_and(|u| props.service_data.contains_key(&u))
            || self.ibeacon.is_some_and(|want| {
                props
                    .manufacturer_data
                    .get(&advertisement::COMPANY_APPLE)
                    .and_then(|d| {
                        advertisement::ibeacon_from_manufacturer(advertisement::COMPANY_APPLE, d)
                    })
                    .is_some_and(|b| b.uuid == want)
            })
            || self
                .rule
                .name_prefix
                .as_deref()
                .is_some_and(|p| props.name.as_deref().is_some_and(|n| n.starts_with(p)))
    }
}

/// What one advertisement report told us.
#[derive(Default)]
struct Sighting {
    rssi: Option<i16>,
    name: Option<String>,
    address_type: Option<String>,
    manufacturer_data: HashMap<u16, Vec<u8>>,
    service_data: HashMap<Uuid, Vec<u8>>,
}

/// The scanning side: classification, admission, presence, sessions.
struct Scan<'a> {
    owner: &'a BleAdapter,
    central: &'a BtAdapter,
    bus: Arc<Bus>,
    ctx: &'a AdapterContext,
    admitted: HashMap<Address, Arc<DeviceSpec>>,
    sessions: HashMap<Address, SessionHandle>,
    rejects: RejectTracker,
    tags: Vec<TagState>,
    /// Which rule a tag address matched (bounded like the reject map).
    tag_of: HashMap<Address, usize>,
    powered_off_reported: bool,
    /// Last advertisement report of any device.
    last_advert: Instant,
    /// Recovery stage of a blind adapter (0: hearing fine).
    blind_stage: u32,
    /// The adapter is pairable: `wardgate pair` is running, so unknown devices are not pruned
    /// (the device being paired is one of them). Refreshed every tick.
    pairing_in_progress: bool,
}

impl<'a> Scan<'a> {
    fn new(
        owner: &'a BleAdapter,
        central: &'a BtAdapter,
        bus: Arc<Bus>,
        ctx: &'a AdapterContext,
    ) -> Self {
        let cfg = &owner.cfg;
        let admitted =
            cfg.devices
                .iter()
                .filter_map(|d| {
                    let address = Address::parse(&d.address).ok()?;
                    let spec = DeviceSpec {
                        address,
                        device: device_id(address),
                        adapter: cfg.adapter.clone(),
                        profiles: d
                            .profiles
                            .as_ref()
                            .map(|v| v.iter().filter_map(|n| Profile::from_name(n)).collect()),
                        vendor: d.vendor_profile.as_ref().and_then(|n| {
                            cfg.vendor_profiles.iter().find(|p| &p.name == n).cloned()
                        }),
                        cfg: d.clone(),
                    };
                    Some((address, Arc::new(spec)))
                })
                .collect();
        Scan {
            owner,
            central,
            bus,
            ctx,
            admitted,
            sessions: HashMap::new(),
            rejects: RejectTracker::new(
                Duration::from_secs(cfg.rejected_repeat_s),
                cfg.rejected_per_minute,
                Instant::now(),
            ),
            tags: cfg.tags.iter().map(TagState::new).collect(),
            tag_of: HashMap::new(),
            powered_off_reported: false,
            last_advert: Instant::now(),
            blind_stage: 0,
            pairing_in_progress: false,
        }
    }

    async fn on_event(&mut self, ev: CentralEvent) -> Result<(), AdapterError> {
        if matches!(
            ev,
            CentralEvent::DeviceDiscovered(_)
                | CentralEvent::RssiUpdate { .. }
                | CentralEvent::ManufacturerDataAdvertisement { .. }
                | CentralEvent::ServiceDataAdvertisement { .. }
        ) {
            self.last_advert = Instant::now();
            if self.blind_stage > 0 {
                log::info!("ble: {} hears advertisements again", self.owner.cfg.adapter);
                self.blind_stage = 0;
            }
        }
        let stats = &self.owner.stats;
        match ev {
            CentralEvent::DeviceConnected(id) => {
                if let Some(spec) = self.spec_of(&id) {
                    self.ensure_session(spec, id);
                }
            }
            CentralEvent::DeviceDisconnected(id) => {
                if let Some(a) = address_from_id(&id.to_string()) {
                    if let Some(s) = self.sessions.get(&a) {
                        s.link.send_modify(|n| *n += 1);
                    }
                }
            }
            CentralEvent::StateUpdate(state) => {
                let off = state != CentralState::PoweredOn;
                if off && !self.powered_off_reported {
                    log::warn!(
                        "ble: adapter {} is not powered on ({state:?})",
                        self.owner.cfg.adapter
                    );
                    send(
                        &self.ctx.out,
                        event(
                            &DeviceId(format!("adapter:{}", self.ctx.id)),
                            EventKind::Error,
                            format!("Bluetooth adapter {} is not powered on ({state:?}); no BLE device can be heard", self.owner.cfg.adapter),
                        ),
                    )
                    .await?;
                }
                self.powered_off_reported = off;
            }
            CentralEvent::DeviceDiscovered(id) => {
                inc(&stats.advertisements);
                self.on_sighting(id, None, true).await?;
            }
            CentralEvent::RssiUpdate { id, rssi } => {
                inc(&stats.advertisements);
                self.on_sighting(id, Some(rssi), false).await?;
            }
            CentralEvent::ServiceDataAdvertisement { id, service_data } => {
                // Tags: refresh the beacon readings from the event's own data (the count comes
                // from RSSI reports).
                if let Some(a) = address_from_id(&id.to_string()) {
                    if let Some(&rule) = self.tag_of.get(&a) {
                        self.tag_data(rule, a, &service_data);
                    } else if let Some(s) = self.sessions.get(&a) {
                        s.link.send_modify(|n| *n += 1);
                    }
                }
            }
            CentralEvent::ManufacturerDataAdvertisement { id, .. } => {
                if let Some(s) =
                    address_from_id(&id.to_string()).and_then(|a| self.sessions.get(&a))
                {
                    s.link.send_modify(|n| *n += 1);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn spec_of(&self, id: &PeripheralId) -> Option<Arc<DeviceSpec>> {
        address_from_id(&id.to_string()).and_then(|a| self.admitted.get(&a).cloned())
    }

    async fn sighting(&self, id: &PeripheralId) -> Option<Sighting> {
        let p = self.central.peripheral(id).await.ok()?;
        let props = p.properties().await.ok()??;
        Some(Sighting {
            rssi: props.rssi,
            // `local_name` is BlueZ's Alias, which defaults to the address: not a name.
            name: props.advertisement_name,
            address_type: props.address_type.map(|t| format!("{t:?}").to_lowercase()),
            manufacturer_data: props.manufacturer_data,
            service_data: props.service_data,
        })
    }

    async fn on_sighting(
        &mut self,
        id: PeripheralId,
        rssi: Option<i16>,
        discovered: bool,
    ) -> Result<(), AdapterError> {
        let Some(a) = address_from_id(&id.to_string()) else {
            return Ok(());
        };
        if let Some(spec) = self.admitted.get(&a).cloned() {
            match self.sessions.get(&a) {
                Some(s) if !s.task.is_finished() => s.link.send_modify(|n| *n += 1),
                _ => self.ensure_session(spec, id),
            }
            return Ok(());
        }
        if let Some(&rule) = self.tag_of.get(&a) {
            if let Some(r) = rssi {
                self.tags[rule]
                    .presence
                    .record(&a.to_string(), r, std::time::Instant::now());
            }
            return Ok(());
        }
        // Unknown so far: look at what it advertises.
        let now = Instant::now();
        if !discovered
            && self
                .rejects
                .last
                .get(&a)
                .is_some_and(|t| now.duration_since(*t) < self.rejects.repeat)
        {
            inc(&self.owner.stats.rejected);
            return Ok(());
        }
        // What it advertises is needed only to match tag rules or to report it: a ward full of
        // phones costs no extra D-Bus round trip per advertisement when there are no tag rules.
        let mut s = None;
        if !self.tags.is_empty() {
            let Some(got) = self.sighting(&id).await else {
                return Ok(());
            };
            s = Some(got);
        }
        if let Some(rule) = s
            .as_ref()
            .and_then(|s| self.tags.iter().position(|t| t.matches(a, s)))
        {
            let s = s.unwrap_or_default();
            if self.tag_of.len() >= MAX_TRACKED {
                self.tag_of.clear();
            }
            self.tag_of.insert(a, rule);
            if let Some(r) = rssi.or(s.rssi) {
                self.tags[rule]
                    .presence
                    .record(&a.to_string(), r, std::time::Instant::now());
            }
            self.tag_data(rule, a, &s.service_data);
            return Ok(());
        }
        inc(&self.owner.stats.rejected);
        let decision = self.rejects.decide(a, now);
        self.owner
            .stats
            .tracked
            .store(self.rejects.last.len() as u64, Ordering::Relaxed);
        match decision {
            RejectDecision::Recent => return Ok(()),
            RejectDecision::Suppress => inc(&self.owner.stats.rejected_suppressed),
            RejectDecision::Report => {
                inc(&self.owner.stats.rejected_events);
                let s = match s {
                    Some(s) => s,
                    None => self.sighting(&id).await.unwrap_or_default(),
                };
                let detail = format!(
                    "address={a} address_type={} rssi={} name={:?} reason=not-allowlisted",
                    s.address_type.as_deref().unwrap_or("unknown"),
                    rssi.or(s.rssi).map_or("unknown".into(), |r| r.to_string()),
                    s.name.as_deref().unwrap_or(""),
                );
                // Advertised names are often people's (a phone's): upstream only, not the log.
                log::info!(
                    "ble: refused {a} ({}), not allowlisted",
                    s.address_type.as_deref().unwrap_or("unknown")
                );
                send(
                    &self.ctx.out,
                    event(&device_id(a), EventKind::Rejected, detail),
                )
                .await?;
            }
        }
        if self.owner.cfg.prune_rejected && !self.pairing_in_progress {
            if let Ok(st) = self.bus.bond_state(&self.owner.cfg.adapter, a).await {
                if !st.paired
                    && !st.connected
                    && self
                        .bus
                        .remove_device(&self.owner.cfg.adapter, a)
                        .await
                        .is_ok()
                {
                    inc(&self.owner.stats.pruned);
                }
            }
        }
        Ok(())
    }

    /// Decodes the tag's advertised service data into readings kept for its next summary.
    fn tag_data(&mut self, rule: usize, a: Address, service_data: &HashMap<Uuid, Vec<u8>>) {
        let mut readings = Vec::new();
        for (uuid, data) in service_data {
            let frame = match short_uuid(*uuid) {
                Some(advertisement::UUID_EDDYSTONE) => advertisement::parse_eddystone(data)
                    .ok()
                    .map(advertisement::Beacon::Eddystone),
                Some(advertisement::UUID_BTHOME) => {
                    let key = self.tags[rule].keys.get(&a);
                    bthome(a, data, key).map(advertisement::Beacon::BtHome)
                }
                _ => None,
            };
            if let Some(b) = frame {
                readings.extend(b.readings());
            }
        }
        let t = &mut self.tags[rule];
        if !readings.is_empty()
            && (t.latest.len() < MAX_TAGS_PER_RULE || t.latest.contains_key(&a.to_string()))
        {
            t.latest.insert(a.to_string(), readings);
        }
    }

    fn ensure_session(&mut self, spec: Arc<DeviceSpec>, id: PeripheralId) {
        if let Some(s) = self.sessions.get(&spec.address) {
            if !s.task.is_finished() {
                s.link.send_modify(|n| *n += 1);
                return;
            }
        }
        let (link, link_rx) = watch::channel(0u64);
        let session = Session {
            spec: spec.clone(),
            central: self.central.clone(),
            id,
            bus: self.bus.clone(),
            out: self.ctx.out.clone(),
            shutdown: self.ctx.shutdown.clone(),
            clock: self.ctx.clock_synced.clone(),
            stats: self.owner.stats.clone(),
            glucose_last: self.owner.glucose_last.clone(),
        };
        let task = tokio::spawn(session.run(link_rx));
        self.sessions
            .insert(spec.address, SessionHandle { link, task });
    }

    /// A blind adapter: no advertisement for `blind_after_s` while tags it heard before should
    /// be heard. Recovery in stages: restart discovery, power-cycle the adapter, then fail (the
    /// supervisor restarts the BLE adapter with a new D-Bus connection).
    async fn check_blind(&mut self) -> Result<(), AdapterError> {
        let blind_after = Duration::from_secs(self.owner.cfg.blind_after_s.max(1));
        if self.tags.is_empty()
            || self.tag_of.is_empty()
            || self.last_advert.elapsed() < blind_after
        {
            return Ok(());
        }
        self.blind_stage += 1;
        inc(&self.owner.stats.blind_episodes);
        let adapter = self.owner.cfg.adapter.clone();
        let secs = blind_after.as_secs();
        let action = match self.blind_stage {
            1 => "restarting discovery",
            2 => "power-cycling the adapter",
            _ => "restarting the BLE adapter",
        };
        let detail = format!("Bluetooth adapter {adapter} heard no advertisement for {secs} s while known asset tags should be heard (blind?); {action}");
        log::warn!("ble: {detail}");
        send(
            &self.ctx.out,
            event(
                &DeviceId(format!("adapter:{}", self.ctx.id)),
                EventKind::Error,
                detail,
            ),
        )
        .await?;
        self.last_advert = Instant::now();
        match self.blind_stage {
            1 => {
                let _ = self.central.stop_scan().await;
                self.central
                    .start_scan(ScanFilter::default())
                    .await
                    .map_err(|e| AdapterError::Transport(format!("restarting discovery: {e}")))?;
            }
            2 => {
                let _ = self.bus.set_powered(&adapter, false).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = self.bus.set_powered(&adapter, true).await;
                let _ = self.central.stop_scan().await;
                self.central
                    .start_scan(ScanFilter::default())
                    .await
                    .map_err(|e| {
                        AdapterError::Transport(format!(
                            "restarting discovery after a power cycle: {e}"
                        ))
                    })?;
            }
            _ => {
                return Err(AdapterError::Transport(format!(
                    "adapter {adapter} stayed blind after a discovery restart and a power cycle"
                )))
            }
        }
        Ok(())
    }

    async fn on_tick(&mut self) -> Result<(), AdapterError> {
        self.check_blind().await?;
        if self.owner.cfg.prune_rejected {
            self.pairing_in_progress = self
                .bus
                .pairable(&self.owner.cfg.adapter)
                .await
                .unwrap_or(false);
        }
        let now = std::time::Instant::now();
        for t in &mut self.tags {
            for s in t.presence.drain_due(now) {
                inc(&self.owner.stats.presence_summaries);
                let Some(a) = Address::parse(&s.key).ok() else {
                    continue;
                };
                let dev = device_id(a);
                send(
                    &self.ctx.out,
                    event(&dev, EventKind::Rssi, presence_detail(&t.rule, &s)),
                )
                .await?;
                for r in t.latest.remove(&s.key).unwrap_or_default() {
                    let o =
                        Observation::from_reading(dev.clone(), r, *self.ctx.clock_synced.borrow());
                    send(&self.ctx.out, AdapterEvent::Observation(o)).await?;
                }
            }
        }
        if let Some(n) = self.rejects.take_summary(Instant::now()) {
            let detail = format!("{n} more refused devices in the last minute were not reported one by one (limit rejected_per_minute = {})", self.owner.cfg.rejected_per_minute);
            send(
                &self.ctx.out,
                event(
                    &DeviceId(format!("adapter:{}", self.ctx.id)),
                    EventKind::Rejected,
                    detail,
                ),
            )
            .await?;
        }
        Ok(())
    }

    async fn stop(&mut self) {
        let tasks: Vec<_> = self.sessions.drain().map(|(_, s)| s.task).collect();
        for t in tasks {
            if timeout(Duration::from_secs(5), t).await.is_err() {
                log::warn!("ble: a device session did not stop within 5 s");
            }
        }
        for t in &mut self.tags {
            for s in t.presence.flush_all() {
                if let Ok(a) = Address::parse(&s.key) {
                    let detail = presence_detail(&t.rule, &s);
                    let _ = self
                        .ctx
                        .out
                        .try_send(event(&device_id(a), EventKind::Rssi, detail));
                }
            }
        }
    }
}

/// The `rssi` event detail of a tag's presence summary (wire-format.md).
fn presence_detail(rule: &TagRule, s: &super::presence::PresenceSummary) -> String {
    format!(
        "rule={} window_s={} count={} rssi_min={} rssi_median={:.1} rssi_max={}",
        rule.name, rule.window_s, s.count, s.rssi_min, s.rssi_median, s.rssi_max
    )
}

/// BTHome v2 service data, decrypted with the tag's key when it is encrypted.
fn bthome(a: Address, data: &[u8], key: Option<&[u8; 16]>) -> Option<advertisement::BtHome> {
    match key {
        Some(k) => advertisement::parse_bthome_with_key(data, a.0, k).ok(),
        None => advertisement::parse_bthome(data).ok(),
    }
}

/// One admitted device's connection loop.
struct Session {
    spec: Arc<DeviceSpec>,
    central: BtAdapter,
    id: PeripheralId,
    bus: Arc<Bus>,
    out: mpsc::Sender<AdapterEvent>,
    shutdown: watch::Receiver<bool>,
    clock: watch::Receiver<bool>,
    stats: Arc<BleStats>,
    glucose_last: Arc<Mutex<HashMap<Address, u16>>>,
}

/// How a connection ended.
enum Ended {
    LinkLost,
    Shutdown,
}

impl Session {
    fn name(&self) -> &str {
        &self.spec.cfg.name
    }

    async fn run(mut self, mut link: watch::Receiver<u64>) {
        let mut attempt: u32 = 0;
        let mut bond_reported = false;
        let mut last_error = String::new();
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            match self
                .connect_once(&mut link, &mut bond_reported, &mut last_error)
                .await
            {
                Ok(Some(connected_for)) => {
                    attempt = if connected_for >= STABLE_CONNECTION {
                        0
                    } else {
                        attempt + 1
                    };
                }
                Ok(None) => attempt = attempt.saturating_add(1),
                Err(AdapterError::ChannelClosed) => return,
                Err(_) => attempt = attempt.saturating_add(1),
            }
            if *self.shutdown.borrow() {
                return;
            }
            let wait = backoff(attempt, Duration::from_secs(self.spec.cfg.max_backoff_s));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                r = link.changed() => if r.is_err() { return },
                _ = self.shutdown.changed() => return,
            }
        }
    }

    async fn emit(&self, ev: AdapterEvent) -> Result<(), AdapterError> {
        send(&self.out, ev).await
    }

    async fn report_once(&self, last: &mut String, why: String) -> Result<(), AdapterError> {
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
    async fn connect_once(
        &mut self,
        link: &mut watch::Receiver<u64>,
        bond_reported: &mut bool,
        last_error: &mut String,
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
        let ended = self.connected(&p, link, adopted, last_error).await;
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

    async fn read_string(
        &self,
        p: &Peripheral,
        chars: &[Characteristic],
        u: u16,
    ) -> Option<String> {
        let c = chars.iter().find(|c| {
            short_uuid(c.uuid) == Some(u) && c.properties.contains(CharPropFlags::READ)
        })?;
        let v = timeout(GATT_TIMEOUT, p.read(c)).await.ok()?.ok()?;
        let s = String::from_utf8_lossy(&v)
            .trim_end_matches('\0')
            .trim()
            .to_owned();
        (!s.is_empty()).then_some(s)
    }

    async fn connected(
        &mut self,
        p: &Peripheral,
        link: &mut watch::Receiver<u64>,
        adopted: bool,
        last_error: &mut String,
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
        self.emit(event(&self.spec.device, EventKind::Connected, detail))
            .await?;
        // Battery Level and vendor "read" characteristics: read once per connection. BlueZ
        // reports a read's result as a `Value` change too, so the value reaches `handle` through
        // the notification stream (exactly once), not from here.
        for c in &chars {
            let is_battery = short_uuid(c.uuid) == Some(Profile::Battery.uuid())
                && self.spec.wants(Profile::Battery);
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
            let short = short_uuid(c.uuid);
            if short == Some(UUID_RACP) && self.spec.wants(Profile::Glucose) {
                racp = Some(c.clone());
            }
            let wanted = short
                .and_then(Profile::from_uuid)
                .is_some_and(|pr| self.spec.wants(pr))
                || (short == Some(UUID_RACP) && self.spec.wants(Profile::Glucose))
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
        let mut errors = ErrorBudget::default();
        let silent_after = self.spec.cfg.silent_after();
        let mut last_value = Instant::now();
        loop {
            let silent_at = last_value + silent_after.unwrap_or(Duration::from_secs(86_400 * 365));
            tokio::select! {
                n = notes.next() => match n {
                    Some(ValueNotification { uuid, value, .. }) => {
                        inc(&self.stats.notifications);
                        last_value = Instant::now();
                        self.handle(uuid, &value, identity_ok, &mut errors).await?;
                    }
                    None => return Err(AdapterError::Transport("notification stream ended".into())),
                },
                _ = tokio::time::sleep_until(silent_at), if silent_after.is_some() => {
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
        }
    }

    /// Decodes one value of characteristic `uuid` and sends its observations.
    async fn handle(
        &self,
        uuid: Uuid,
        value: &[u8],
        identity_ok: bool,
        errors: &mut ErrorBudget,
    ) -> Result<(), AdapterError> {
        let short = short_uuid(uuid);
        let decoded: Result<Vec<Reading>, (String, super::DecodeError)> =
            match short.and_then(Profile::from_uuid) {
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
                None if short == Some(UUID_RACP) => {
                    log::debug!("ble {}: RACP response {:02x?}", self.name(), value);
                    Ok(Vec::new())
                }
                None => match &self.spec.vendor {
                    Some(v) if v.characteristic(uuid.as_u128()).is_some() => v
                        .decode(uuid.as_u128(), value)
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
                if errors.allow() {
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
fn vendor_mode(v: &VendorProfile, u: Uuid) -> Option<CharacteristicMode> {
    v.characteristic(u.as_u128()).map(|c| c.mode)
}

/// Glucose sequence numbers are u16 and wrap: `a` comes after `b` when it is ahead by less
/// than half the range.
fn seq_after(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

/// At most [`MAX_ERROR_EVENTS_PER_SEC`] error events a second per connection.
#[derive(Default)]
struct ErrorBudget {
    second: Option<Instant>,
    sent: u32,
}

impl ErrorBudget {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        if self
            .second
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
        {
            self.second = Some(now);
            self.sent = 0;
        }
        self.sent += 1;
        self.sent <= MAX_ERROR_EVENTS_PER_SEC
    }
}

/// Capped exponential backoff with equal jitter: attempt 0 waits 125–250 ms.
fn backoff(attempt: u32, max: Duration) -> Duration {
    let base = INITIAL_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(max.max(INITIAL_BACKOFF));
    let half = base / 2;
    half + Duration::from_millis(fastrand::u64(0..=half.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        assert_eq!(short_uuid(uuid16(0x2a37)), Some(0x2a37));
        assert_eq!(
            uuid16(0x180d).to_string(),
            "0000180d-0000-1000-8000-00805f9b34fb"
        );
        assert_eq!(short_uuid(Uuid::from_u128(0x1234)), None);
    }

    #[test]
    fn glucose_sequence_wraps() {
        assert!(seq_after(2, 1));
        assert!(!seq_after(1, 1));
        assert!(!seq_after(1, 2));
        assert!(seq_after(0, 0xffff));
    }

    #[test]
    fn reject_tracker_is_bounded_and_rate_limited() {
        let t0 = Instant::now();
        let mut r = RejectTracker::new(Duration::from_secs(600), 30, t0);
        let mut reports = 0;
        for i in 0..(MAX_TRACKED as u32 + 1000) {
            let b = i.to_be_bytes();
            let a = Address([0x40, 0, b[0], b[1], b[2], b[3]]);
            if r.decide(a, t0) == RejectDecision::Report {
                reports += 1;
            }
        }
        assert_eq!(reports, 30);
        assert!(r.last.len() <= MAX_TRACKED && r.order.len() <= MAX_TRACKED);
        assert_eq!(r.take_summary(t0), None, "the minute is not over yet");
        assert_eq!(
            r.take_summary(t0 + Duration::from_secs(61)),
            Some(MAX_TRACKED as u64 + 1000 - 30)
        );
        // A recently reported address is not reported again.
        let a = Address([0xC0, 0, 0, 0, 0, 1]);
        assert_eq!(
            r.decide(a, t0 + Duration::from_secs(61)),
            RejectDecision::Report
        );
        assert_eq!(
            r.decide(a, t0 + Duration::from_secs(62)),
            RejectDecision::Recent
        );
        assert_eq!(
            r.decide(a, t0 + Duration::from_secs(61 + 600)),
            RejectDecision::Report
        );
    }

    #[test]
    fn backoff_is_capped_with_jitter() {
        for attempt in 0..40 {
            let d = backoff(attempt, Duration::from_secs(30));
            assert!(
                d <= Duration::from_secs(30) && d >= Duration::from_millis(125),
                "{d:?}"
            );
        }
    }
}
