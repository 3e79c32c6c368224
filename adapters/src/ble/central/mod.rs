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
//! 5. **The way back** (DESIGN §1): every configured device has a command channel
//!    ([`BleAdapter::command_sender`]) that its session serves. `DeviceCommand::OpenSmp` opens
//!    an SMP session for the firmware relay on the device's existing connection ([`smp`]):
//!    refused ([`SmpLink::refuse`](crate::smp::channel::SmpLink::refuse), a reason the relay
//!    reports) when the device is not connected (`device_offline`), not bonded (`not_bonded`:
//!    SMP is for bonded devices only, also with `require_bond = false`) or has no SMP
//!    characteristic (`no_smp_service`); otherwise the SMP characteristic is subscribed once per
//!    connection on the session's one notification stream, frames from the relay are written
//!    in pieces of ≤ ATT MTU − 3, notifications reassembled and passed on whole, while the
//!    device's measurements keep flowing. The link is dropped with the connection (the relay
//!    resumes at the device's offset on the next one); after the device's reset the session
//!    reconnects and discovers GATT afresh (B18) before anything is subscribed or written.
//!    While an SMP session is open the silence watchdog (`silent_after_s`) is suspended: a slot
//!    erase keeps a device quiet for tens of seconds, and the SMP client has its own timeouts.
//!    The device reassembles requests by the SMP header's length, so half a request left on it
//!    would swallow the next ones: a link BlueZ held from before our start (we may have been
//!    killed mid-request) is renewed before its first SMP session, and so is a link on which a
//!    write failed after part of a request went out.
//!    [`BleAdapter::is_connected`] tells the relay whether a session holds a connection.
//!
//! # Files
//! | file | role |
//! |---|---|
//! | `mod.rs` | [`BleAdapter`]: its own thread and current-thread runtime bridged to the gateway's channel; the scan loop's driver; [`BleStats`] |
//! | `admission.rs` | who is served: refused-device bookkeeping (bounded, rate-limited), tag rules, what one advertisement report said |
//! | `scan.rs` | the scan loop's state: classification of every report, presence summaries, session start, blind-adapter recovery |
//! | `session.rs` | one admitted device's connection loop: connect with [`crate::retry::Backoff`], discovery, subscriptions, decoding |
//! | [`bluez`] | the few BlueZ D-Bus calls btleplug lacks (bond state, pairable, power, `RemoveDevice`) |
//! | [`smp`] | SMP over GATT: the SMP characteristic, MTU-sized writes, notification reassembly; a standalone transport for the bench CLI |
//!
//! Everything pure (decoders, presence aggregation, UUIDs) lives in [`crate::ble::decode`].
//!
//! Every decoded [`Reading`](crate::observation::Reading) becomes an [`Observation`](crate::observation::Observation) with device id `ble:<identity address>`.
//! Logs never carry clinical values above `debug`.

pub mod bluez;
pub mod smp;

mod admission;
mod scan;
mod session;

use self::bluez::Bus;
use self::scan::Scan;
use crate::ble::config::{Address, BleConfig, BleDeviceConfig};
use crate::ble::decode::uuid::{sig16, Uuid};
use crate::ble::decode::vendor::VendorProfile;
use crate::ble::decode::Profile;
use crate::observation::{DeviceEvent, DeviceId, EventKind};
use crate::{Adapter, AdapterContext, AdapterError, AdapterEvent, DeviceCommand, RunFuture};
use btleplug::api::{Central, Manager as _, ScanFilter};
use btleplug::platform::{Adapter as BtAdapter, Manager};
use futures::StreamExt;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

/// Most addresses the adapter remembers (refused-device report times); oldest forgotten first.
pub const MAX_TRACKED: usize = 4096;
/// Most tags tracked per `[[ble.tag]]` rule for presence aggregation.
pub const MAX_TAGS_PER_RULE: usize = 2048;
/// Longest wait for a connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for service discovery and for one GATT read.
const GATT_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a connected session double-checks the link (a missed signal cannot stall it).
const LINK_CHECK: Duration = Duration::from_secs(5);

/// Device Information: Manufacturer Name String.
const UUID_DIS_MANUFACTURER: Uuid = sig16(0x2A29);
/// Device Information: Model Number String.
const UUID_DIS_MODEL: Uuid = sig16(0x2A24);
/// Device Information: Serial Number String.
const UUID_DIS_SERIAL: Uuid = sig16(0x2A25);
/// Device Information: Firmware Revision String.
const UUID_DIS_FIRMWARE: Uuid = sig16(0x2A26);
/// Record Access Control Point (Glucose).
const UUID_RACP: Uuid = sig16(0x2A52);

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
    /// SMP sessions opened for the firmware relay (`DeviceCommand::OpenSmp` accepted).
    pub smp_sessions: AtomicU64,
    /// `OpenSmp` refused (not connected, not bonded, no SMP characteristic).
    pub smp_refused: AtomicU64,
    /// SMP frames written to devices (each in ATT-MTU-sized pieces).
    pub smp_frames_out: AtomicU64,
    /// Write Without Response pieces of those frames.
    pub smp_writes: AtomicU64,
    /// Whole SMP frames reassembled from notifications and passed to the relay.
    pub smp_frames_in: AtomicU64,
    /// SMP frames or notifications dropped (did not reassemble, the relay not reading).
    pub smp_dropped: AtomicU64,
    /// Fresh service discoveries after a write found the SMP characteristic gone (B18).
    pub smp_rediscoveries: AtomicU64,
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
    /// The way back to each configured device (survives adapter restarts).
    ports: Arc<HashMap<Address, Arc<DevicePort>>>,
    /// Told the device id and location of each tag a `[[ble.tag]]` rule with a `location`
    /// admits, before any of its rows is sent ([`BleAdapter::with_tag_location`]).
    tag_location: Option<TagLocationHook>,
}

/// Called with `(device id, location)` when a `[[ble.tag]]` rule with a `location` admits a tag.
pub type TagLocationHook = Arc<dyn Fn(&DeviceId, &str) + Send + Sync>;

/// Commands queued per device before its session takes them.
const COMMAND_CAPACITY: usize = 4;

/// The way back to one configured device: its command channel, served by its session, and
/// whether that session holds a connection now.
struct DevicePort {
    commands: mpsc::Sender<DeviceCommand>,
    /// Taken by the device's session for its lifetime (one session per device).
    inbox: tokio::sync::Mutex<mpsc::Receiver<DeviceCommand>>,
    /// Connected, discovered and subscribed (what the relay's policy reads).
    connected: AtomicBool,
}

impl BleAdapter {
    /// An adapter for a validated `[ble]` section ([`BleConfig::problems`] empty).
    pub fn new(cfg: BleConfig) -> Self {
        let ports = cfg
            .devices
            .iter()
            .filter_map(|d| Address::parse(&d.address).ok())
            .map(|a| {
                let (commands, inbox) = mpsc::channel(COMMAND_CAPACITY);
                let port = DevicePort {
                    commands,
                    inbox: tokio::sync::Mutex::new(inbox),
                    connected: AtomicBool::new(false),
                };
                (a, Arc::new(port))
            })
            .collect();
        BleAdapter {
            cfg: Arc::new(cfg),
            stats: Arc::default(),
            glucose_last: Arc::default(),
            ports: Arc::new(ports),
            tag_location: None,
        }
    }

    /// Calls `hook(device id, location)` each time a `[[ble.tag]]` rule that has a `location`
    /// admits a tag (again after the adapter restarts or forgets tags), on the adapter's scan
    /// task and before the tag's first row is sent: the gateway's store then records the rows
    /// with it. The hook must be quick (it runs on the scan loop).
    pub fn with_tag_location(mut self, hook: TagLocationHook) -> Self {
        self.tag_location = Some(hook);
        self
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<BleStats> {
        self.stats.clone()
    }

    /// The command channel of the configured device with identity address `address` (`None`:
    /// not a `[[ble.device]]`): [`DeviceCommand::OpenSmp`] opens an SMP session on its
    /// connection (see the module docs for when it is refused); `SendBytes` has no meaning on
    /// BLE and is dropped. At most 4 commands wait while the session is busy (`try_send` says
    /// `Full` beyond). The channel works from any runtime (the adapter runs on its own thread).
    pub fn command_sender(&self, address: Address) -> Option<mpsc::Sender<DeviceCommand>> {
        self.ports.get(&address).map(|p| p.commands.clone())
    }

    /// Whether the session of `address` holds a connection now (connected, services
    /// discovered, subscriptions made); false for an unknown address or while the adapter is
    /// not running.
    pub fn is_connected(&self, address: Address) -> bool {
        self.ports
            .get(&address)
            .is_some_and(|p| p.connected.load(Ordering::Relaxed))
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
                ports: self.ports.clone(),
                tag_location: self.tag_location.clone(),
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
    AdapterEvent::Event(DeviceEvent::new(device.clone(), kind, detail))
}

async fn send(out: &mpsc::Sender<AdapterEvent>, ev: AdapterEvent) -> Result<(), AdapterError> {
    out.send(ev).await.map_err(|_| AdapterError::ChannelClosed)
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
        let bus = Arc::new(Bus::connect().map_err(|e| AdapterError::Transport(e.to_string()))?);
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
