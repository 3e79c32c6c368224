//! A simulated BlueZ: the `org.bluez` D-Bus API served on a private `dbus-daemon`, so that
//! btleplug's real BlueZ code path (btleplug → bluez-async → dbus/libdbus) runs in tests and in
//! `wardgate demo` without Bluetooth hardware and without root.
//!
//! ```no_run
//! use wardgate_sim::blesim::{self, Bus, SimBluez};
//! let bus = Bus::start()?;                        // private dbus-daemon, killed on drop
//! let sim = SimBluez::start(bus.address())?;      // owns org.bluez, serves /org/bluez/hci0
//! let info = blesim::DeviceInformation::new("Acme", "HRM-1", "SN1", "1.0");
//! sim.place_device(blesim::heart_rate_strap("C0:FF:EE:00:00:01", &info));
//! std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", bus.address()); // before btleplug's Manager::new()
//! # Ok::<(), blesim::Error>(())
//! ```
//!
//! What is served (see BlueZ `doc/org.bluez.*.rst`), and what the clients rely on:
//! - `/`: `org.freedesktop.DBus.ObjectManager` (`GetManagedObjects`, `InterfacesAdded`,
//!   `InterfacesRemoved`); every object: `Introspectable` (child nodes are how bluez-async finds
//!   `serviceXXXX`/`charYYYY`/`descZZZZ`) and `Properties` (`Get`/`GetAll`/`Set`,
//!   `PropertiesChanged`). All signals are sent by the connection owning `org.bluez`, which is
//!   what bluez-async's match rules (`sender='org.bluez'`, `path_namespace=…`) require.
//! - `/org/bluez`: `AgentManager1`. `/org/bluez/hci0`: `Adapter1`.
//! - `/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF[/serviceXXXX[/charYYYY[/descZZZZ]]]`: `Device1`,
//!   `GattService1`, `GattCharacteristic1`, `GattDescriptor1` (handles are allocated as a real
//!   attribute table: service, characteristic declaration, value, CCCD for notify/indicate).
//!
//! BlueZ behaviour mimicked:
//! - `Connect`: `Connected=true`, GATT objects appear (`InterfacesAdded`, first connection or after
//!   [`SimBluez::set_gatt`]), `UUIDs` gains the GATT services, `ServicesResolved=true`, then the
//!   method returns. Out of range: `org.bluez.Error.Failed` "le-connection-abort-by-local"
//!   (immediately; real BlueZ takes the connection timeout). Already connected: success.
//! - Link loss ([`SimBluez::drop_link`], `Disconnect`, going out of range, powering off):
//!   `Notifying=false` on every notifying characteristic (all notify sessions end),
//!   `ServicesResolved=false`, `Connected=false`; GATT objects are kept (BlueZ's GATT cache).
//! - A notification/indication is a `PropertiesChanged` of `Value` on the characteristic path,
//!   emitted only while connected and notifying. `ReadValue` also updates the cached `Value`
//!   and emits `PropertiesChanged(Value)` (BlueZ writes read results into its attribute cache),
//!   so a btleplug `notifications()` stream also sees read results.
//! - `StartNotify` while already notifying succeeds (adds the caller's session); every call is
//!   counted ([`SimBluez::start_notify_count`]). `StopNotify` without a session:
//!   `org.bluez.Error.Failed` "No notify session started".
//! - Discovery is per client (unique bus name): `StartDiscovery` twice from one client →
//!   `org.bluez.Error.InProgress`; `Discovering` is true while any client discovers; a client
//!   leaving the bus ends its discovery, notify sessions and agent (NameOwnerChanged).
//! - `SetDiscoveryFilter` `DuplicateData=true` (btleplug sets it) makes every advertisement
//!   re-emit `ManufacturerData`/`ServiceData` even when unchanged; `RSSI`, `Name`, `TxPower`,
//!   `UUIDs` are emitted when changed.
//! - `Pair` with an agent: see [`Pairing`]. Success sets `Paired` and `Bonded`, and connects
//!   (bluez-async then waits for `ServicesResolved`).
//! - ATT MTU per device ([`SimBluez::set_mtu`], default [`DEFAULT_MTU`]): the characteristics'
//!   `MTU` property and `AcquireWrite`'s answer; a command write (`type: command`, or to a
//!   characteristic without `write`) longer than MTU − 3 fails `org.bluez.Error.Failed` "Failed
//!   to initiate write". `AcquireWrite` returns a socket whose packets are command writes;
//!   `AcquireNotify` is not simulated (`NotSupported`). `Adapter1.Roles` lists `central`.
//! - The SMP GATT service backed by a device model: [`SimBluez::attach_smp`], [`smp_service`],
//!   [`smp_vitals_device`]; the `smp` module docs say what it does (bonded links only, writes
//!   reassembled, notifications ≤ MTU − 3, the erase off the dispatch thread, reset and swap).
//!
//! Notes for the btleplug adapter (btleplug 0.13.5 / bluez-async 0.9, read from their code and
//! exercised in `tests/blesim_btleplug.rs`):
//! - Every `Central::events()` call first synthesises `DeviceDiscovered` (+ `ServicesAdvertisement`
//!   if `UUIDs` is non-empty, + `DeviceConnected` if connected) for every device BlueZ already
//!   knows, then streams live events; duplicates of `DeviceDiscovered` are possible.
//! - A new device's first advertisement arrives inside `InterfacesAdded`: btleplug emits only
//!   `DeviceDiscovered` (+ `ServicesAdvertisement`), no `RssiUpdate`/`ManufacturerData…` — read
//!   `properties()` on discovery. Later adverts come as `RssiUpdate`, `ManufacturerData…`,
//!   `ServiceData…`. `InterfacesRemoved` is ignored: there is no "device lost" event, and
//!   `DeviceUpdated`/`DeviceServicesModified` are never emitted on BlueZ.
//! - `Peripheral::notifications()` is a device-scoped `PropertiesChanged(Value)` stream: it also
//!   yields read results, never ends on link loss, survives reconnects (same GATT paths), and
//!   each call creates an independent stream that gets its own copy of every value. It only
//!   yields characteristics known to *that* `Peripheral` value (after its `discover_services`).
//! - Link loss ends every notify session: after reconnecting, `subscribe` again. `connect()`
//!   returns after `ServicesResolved`. A GATT table change is not signalled to btleplug:
//!   call `discover_services` again (old characteristic paths then fail with UnknownObject).
//! - `start_scan` powers the adapter on and sets `DuplicateData=true`; a second `start_scan`
//!   from the same connection fails with `org.bluez.Error.InProgress`; a client's discovery
//!   ends when its D-Bus connection closes. btleplug has no pairing API: call `Device1.Pair`
//!   and register an `org.bluez.Agent1` with `dbus` directly.

mod bus;
mod profiles;
mod smp;

pub use bus::{Bus, DBUS_DAEMON};
pub use profiles::{
    battery_service, chr, device_information_service, glucose_meter, glucose_racp,
    heart_rate_strap, normalize_uuid, racp, svc, uuid16, weight_scale, DeviceInformation,
    GLUCOSE_FEATURE, GLUCOSE_MEASUREMENT, GLUCOSE_MEASUREMENT_CONTEXT, RACP,
};
pub use smp::{smp_service, smp_vitals_device, SMP_CHARACTERISTIC_UUID, SMP_SERVICE_UUID};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use dbus::arg::{PropMap, RefArg, Variant};
use dbus::channel::Channel;
use dbus::message::MessageType;
use dbus::strings::ErrorName;
use dbus::Message;

/// The simulated adapter's object path.
pub const ADAPTER_PATH: &str = "/org/bluez/hci0";
/// The simulated adapter's address.
pub const ADAPTER_ADDRESS: &str = "00:1A:7D:DA:71:13";
/// The ATT MTU of a simulated connection unless [`SimBluez::set_mtu`] says otherwise.
pub const DEFAULT_MTU: u16 = 247;
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

const I_PROPS: &str = "org.freedesktop.DBus.Properties";
const I_INTROSPECT: &str = "org.freedesktop.DBus.Introspectable";
const I_OM: &str = "org.freedesktop.DBus.ObjectManager";
const I_ADAPTER: &str = "org.bluez.Adapter1";
const I_AGENT_MANAGER: &str = "org.bluez.AgentManager1";
const I_DEVICE: &str = "org.bluez.Device1";
const I_SERVICE: &str = "org.bluez.GattService1";
const I_CHAR: &str = "org.bluez.GattCharacteristic1";
const I_DESC: &str = "org.bluez.GattDescriptor1";
const CCCD: &str = "00002902-0000-1000-8000-00805f9b34fb";

/// Errors starting the bus or the simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found: install it (apt-get install dbus-daemon) to run the BLE simulator")]
    DaemonMissing(PathBuf),
    #[error("dbus-daemon failed: {0}")]
    DaemonFailed(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("D-Bus: {0}")]
    Dbus(#[from] dbus::Error),
    #[error("could not own org.bluez on the bus (another BlueZ or simulator owns it)")]
    NameTaken,
}

/// LE address type of a simulated device (`Device1.AddressType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressType {
    Public,
    Random,
}

impl AddressType {
    fn as_str(self) -> &'static str {
        match self {
            AddressType::Public => "public",
            AddressType::Random => "random",
        }
    }
}

/// A simulated peripheral.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimDevice {
    /// `"AA:BB:CC:DD:EE:FF"` (case-insensitive; stored uppercase).
    pub address: String,
    pub address_type: AddressType,
    /// The advertised / GAP name (`Device1.Name`; `Alias` falls back to the address).
    pub name: Option<String>,
    pub paired: bool,
    pub bonded: bool,
    /// The attribute table, served after the first connection.
    pub services: Vec<SimService>,
    /// Whether a `Connect` can succeed.
    pub in_range: bool,
}

/// A primary GATT service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimService {
    /// 128-bit lowercase (a 4-hex-digit short UUID is expanded).
    pub uuid: String,
    pub characteristics: Vec<SimCharacteristic>,
}

/// A GATT characteristic. A CCCD (0x2902) descriptor is added for notify/indicate ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimCharacteristic {
    pub uuid: String,
    /// BlueZ flag strings: "read", "write", "write-without-response", "notify", "indicate", …
    pub flags: Vec<String>,
    /// What `ReadValue` returns.
    pub value: Vec<u8>,
}

/// One advertising report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advert {
    pub rssi: i16,
    pub name: Option<String>,
    /// (company id, data) → `ManufacturerData` `a{qv}` with `ay` variants.
    pub manufacturer_data: Vec<(u16, Vec<u8>)>,
    /// (service uuid, data) → `ServiceData` `a{sv}` with `ay` variants.
    pub service_data: Vec<(String, Vec<u8>)>,
    /// Advertised service UUIDs → `UUIDs`.
    pub service_uuids: Vec<String>,
    pub tx_power: Option<i16>,
}

/// How the simulated device pairs (`Device1.Pair`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pairing {
    /// No agent involvement (note: wardgate refuses Just Works by default).
    JustWorks,
    /// The agent is asked `RequestConfirmation(device, passkey)`; a method return accepts,
    /// an error rejects (`org.bluez.Error.Rejected` → Pair fails `AuthenticationRejected`,
    /// `Canceled` → `AuthenticationCanceled`, anything else → `AuthenticationFailed`).
    NumericComparison(u32),
    /// The device displays the passkey; the agent is asked `RequestPasskey(device) → u` and
    /// the answer is compared (mismatch → `AuthenticationFailed`).
    Passkey(u32),
    /// Pairing fails with `org.bluez.Error.AuthenticationFailed` and this message.
    Fail(String),
}

/// WriteValue handler: returns (characteristic uuid, value) pairs that are then
/// notified/indicated in order (each only if that characteristic is notifying).
pub type WriteHandler = Arc<dyn Fn(&[u8]) -> Vec<(String, Vec<u8>)> + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// State

struct Desc {
    handle: u16,
    uuid: String,
    value: Vec<u8>,
}

struct Chr {
    handle: u16,
    uuid: String,
    flags: Vec<String>,
    /// What the peripheral returns on read.
    value: Vec<u8>,
    /// BlueZ's cached `Value` property.
    cached: Vec<u8>,
    /// Notify sessions (client unique names).
    sessions: BTreeSet<String>,
    descs: Vec<Desc>,
}

impl Chr {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

struct Svc {
    handle: u16,
    uuid: String,
    chars: Vec<Chr>,
}

struct Dev {
    address: String,
    address_type: AddressType,
    name: Option<String>,
    paired: bool,
    bonded: bool,
    trusted: bool,
    in_range: bool,
    exported: bool,
    connected: bool,
    services_resolved: bool,
    rssi: Option<i16>,
    tx_power: Option<i16>,
    manufacturer_data: BTreeMap<u16, Vec<u8>>,
    service_data: BTreeMap<String, Vec<u8>>,
    uuids: Vec<String>,
    services: Vec<Svc>,
    gatt_exported: bool,
    connect_count: usize,
    pairing: Pairing,
    pairing_busy: bool,
    pairing_cancelled: bool,
    handlers: HashMap<String, WriteHandler>,
    start_notify: HashMap<String, usize>,
    writes: HashMap<String, Vec<Vec<u8>>>,
    /// The ATT MTU of its connections (`GattCharacteristic1.MTU`, `AcquireWrite`).
    mtu: u16,
    /// The SMP server behind the SMP characteristic ([`SimBluez::attach_smp`]).
    smp: Option<smp::SmpServer>,
}

struct Agent {
    sender: String,
    path: String,
    capability: String,
}

struct State {
    powered: bool,
    pairable: bool,
    discovery: BTreeSet<String>,
    duplicate_data: bool,
    devices: BTreeMap<String, Dev>,
    agents: Vec<Agent>,
    ignored_adverts: usize,
}

impl State {
    fn discovering(&self) -> bool {
        !self.discovery.is_empty()
    }
}

fn build_gatt(services: &[SimService]) -> Vec<Svc> {
    let mut h: u16 = 0x000a;
    let mut out = Vec::new();
    for s in services {
        let handle = h;
        h += 1;
        let mut chars = Vec::new();
        for c in &s.characteristics {
            let ch = h;
            h += 2; // declaration + value
            let mut descs = Vec::new();
            if c.flags.iter().any(|f| f == "notify" || f == "indicate") {
                descs.push(Desc {
                    handle: h,
                    uuid: CCCD.into(),
                    value: vec![0, 0],
                });
                h += 1;
            }
            chars.push(Chr {
                handle: ch,
                uuid: normalize_uuid(&c.uuid),
                flags: c.flags.clone(),
                value: c.value.clone(),
                cached: Vec::new(),
                sessions: BTreeSet::new(),
                descs,
            });
        }
        out.push(Svc {
            handle,
            uuid: normalize_uuid(&s.uuid),
            chars,
        });
    }
    out
}

fn new_dev(d: &SimDevice) -> Dev {
    Dev {
        address: d.address.to_ascii_uppercase(),
        address_type: d.address_type,
        name: d.name.clone(),
        paired: d.paired,
        bonded: d.bonded,
        trusted: false,
        in_range: d.in_range,
        exported: false,
        connected: false,
        services_resolved: false,
        rssi: None,
        tx_power: None,
        manufacturer_data: BTreeMap::new(),
        service_data: BTreeMap::new(),
        uuids: Vec::new(),
        services: build_gatt(&d.services),
        gatt_exported: false,
        connect_count: 0,
        pairing: Pairing::JustWorks,
        pairing_busy: false,
        pairing_cancelled: false,
        handlers: HashMap::new(),
        start_notify: HashMap::new(),
        writes: HashMap::new(),
        mtu: DEFAULT_MTU,
        smp: None,
    }
}

/// The table a device serves now, as the `SimService`s it was built from.
fn services_of(d: &Dev) -> Vec<SimService> {
    d.services
        .iter()
        .map(|s| SimService {
            uuid: s.uuid.clone(),
            characteristics: s
                .chars
                .iter()
                .map(|c| SimCharacteristic {
                    uuid: c.uuid.clone(),
                    flags: c.flags.clone(),
                    value: c.value.clone(),
                })
                .collect(),
        })
        .collect()
}

/// D-Bus object path of a device: `/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF`.
pub fn device_path(address: &str) -> String {
    format!(
        "{ADAPTER_PATH}/dev_{}",
        address.to_ascii_uppercase().replace(':', "_")
    )
}

fn svc_path(addr: &str, s: &Svc) -> String {
    format!("{}/service{:04x}", device_path(addr), s.handle)
}
fn chr_path(addr: &str, s: &Svc, c: &Chr) -> String {
    format!("{}/char{:04x}", svc_path(addr, s), c.handle)
}
fn desc_path(addr: &str, s: &Svc, c: &Chr, d: &Desc) -> String {
    format!("{}/desc{:04x}", chr_path(addr, s, c), d.handle)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Obj {
    Bluez,
    Adapter,
    Dev(String),
    Svc(String, usize),
    Chr(String, usize, usize),
    Desc(String, usize, usize, usize),
}

fn v<T: RefArg + 'static>(t: T) -> Variant<Box<dyn RefArg>> {
    Variant(Box::new(t))
}

fn opath(s: String) -> dbus::Path<'static> {
    dbus::Path::new(s).expect("valid object path")
}

fn mfr_variant(m: &BTreeMap<u16, Vec<u8>>) -> Variant<Box<dyn RefArg>> {
    let map: HashMap<u16, Variant<Box<dyn RefArg>>> =
        m.iter().map(|(k, d)| (*k, v(d.clone()))).collect();
    v(map)
}

fn sd_variant(m: &BTreeMap<String, Vec<u8>>) -> Variant<Box<dyn RefArg>> {
    let map: PropMap = m.iter().map(|(k, d)| (k.clone(), v(d.clone()))).collect();
    v(map)
}

fn alias(d: &Dev) -> String {
    d.name
        .clone()
        .unwrap_or_else(|| d.address.replace(':', "-"))
}

fn device_props(d: &Dev) -> PropMap {
    let mut p = PropMap::new();
    p.insert("Address".into(), v(d.address.clone()));
    p.insert("AddressType".into(), v(d.address_type.as_str().to_string()));
    if let Some(n) = &d.name {
        p.insert("Name".into(), v(n.clone()));
    }
    p.insert("Alias".into(), v(alias(d)));
    p.insert("Paired".into(), v(d.paired));
    p.insert("Bonded".into(), v(d.bonded));
    p.insert("Trusted".into(), v(d.trusted));
    p.insert("Blocked".into(), v(false));
    p.insert("LegacyPairing".into(), v(false));
    p.insert("Connected".into(), v(d.connected));
    p.insert("ServicesResolved".into(), v(d.services_resolved));
    p.insert("UUIDs".into(), v(d.uuids.clone()));
    p.insert("Adapter".into(), v(opath(ADAPTER_PATH.into())));
    if let Some(r) = d.rssi {
        p.insert("RSSI".into(), v(r));
    }
    if let Some(t) = d.tx_power {
        p.insert("TxPower".into(), v(t));
    }
    if !d.manufacturer_data.is_empty() {
        p.insert("ManufacturerData".into(), mfr_variant(&d.manufacturer_data));
    }
    if !d.service_data.is_empty() {
        p.insert("ServiceData".into(), sd_variant(&d.service_data));
    }
    p
}

fn adapter_props(st: &State) -> PropMap {
    let mut p = PropMap::new();
    p.insert("Address".into(), v(ADAPTER_ADDRESS.to_string()));
    p.insert("AddressType".into(), v("public".to_string()));
    p.insert("Name".into(), v("wardgate-blesim".to_string()));
    p.insert("Alias".into(), v("wardgate-blesim".to_string()));
    p.insert("Class".into(), v(0u32));
    p.insert("Powered".into(), v(st.powered));
    p.insert("Discoverable".into(), v(false));
    p.insert("DiscoverableTimeout".into(), v(180u32));
    p.insert("Pairable".into(), v(st.pairable));
    p.insert("PairableTimeout".into(), v(0u32));
    p.insert("Discovering".into(), v(st.discovering()));
    p.insert("UUIDs".into(), v(Vec::<String>::new()));
    p.insert("Modalias".into(), v("usb:v1D6Bp0246d0541".to_string()));
    // BlueZ ≥ 5.66; bleak picks an adapter by its `central` role.
    p.insert(
        "Roles".into(),
        v(vec!["central".to_string(), "peripheral".to_string()]),
    );
    p
}

/// The bluez interfaces (with properties) of an object.
fn interfaces(st: &State, obj: &Obj) -> Vec<(&'static str, PropMap)> {
    match obj {
        Obj::Bluez => vec![(I_AGENT_MANAGER, PropMap::new())],
        Obj::Adapter => vec![(I_ADAPTER, adapter_props(st))],
        Obj::Dev(a) => vec![(I_DEVICE, device_props(&st.devices[a]))],
        Obj::Svc(a, si) => {
            let s = &st.devices[a].services[*si];
            let mut p = PropMap::new();
            p.insert("UUID".into(), v(s.uuid.clone()));
            p.insert("Primary".into(), v(true));
            p.insert("Device".into(), v(opath(device_path(a))));
            p.insert("Includes".into(), v(Vec::<dbus::Path<'static>>::new()));
            p.insert("Handle".into(), v(s.handle));
            vec![(I_SERVICE, p)]
        }
        Obj::Chr(a, si, ci) => {
            let s = &st.devices[a].services[*si];
            let c = &s.chars[*ci];
            let mut p = PropMap::new();
            p.insert("UUID".into(), v(c.uuid.clone()));
            p.insert("Service".into(), v(opath(svc_path(a, s))));
            p.insert("Value".into(), v(c.cached.clone()));
            p.insert("Notifying".into(), v(!c.sessions.is_empty()));
            p.insert("Flags".into(), v(c.flags.clone()));
            p.insert("MTU".into(), v(st.devices[a].mtu));
            if c.has("write-without-response") {
                p.insert("WriteAcquired".into(), v(false));
            }
            p.insert("Handle".into(), v(c.handle + 1));
            vec![(I_CHAR, p)]
        }
        Obj::Desc(a, si, ci, di) => {
            let s = &st.devices[a].services[*si];
            let c = &s.chars[*ci];
            let d = &c.descs[*di];
            let mut p = PropMap::new();
            p.insert("UUID".into(), v(d.uuid.clone()));
            p.insert("Characteristic".into(), v(opath(chr_path(a, s, c))));
            p.insert("Value".into(), v(d.value.clone()));
            p.insert("Handle".into(), v(d.handle));
            vec![(I_DESC, p)]
        }
    }
}

fn gatt_objects(st: &State, a: &str) -> Vec<(String, Obj)> {
    let d = &st.devices[a];
    let mut out = Vec::new();
    for (si, s) in d.services.iter().enumerate() {
        out.push((svc_path(a, s), Obj::Svc(a.into(), si)));
        for (ci, c) in s.chars.iter().enumerate() {
            out.push((chr_path(a, s, c), Obj::Chr(a.into(), si, ci)));
            for (di, de) in c.descs.iter().enumerate() {
                out.push((desc_path(a, s, c, de), Obj::Desc(a.into(), si, ci, di)));
            }
        }
    }
    out
}

/// Every exported object, parents before children.
fn all_objects(st: &State) -> Vec<(String, Obj)> {
    let mut out = vec![
        ("/org/bluez".to_string(), Obj::Bluez),
        (ADAPTER_PATH.to_string(), Obj::Adapter),
    ];
    for (a, d) in &st.devices {
        if !d.exported {
            continue;
        }
        out.push((device_path(a), Obj::Dev(a.clone())));
        if d.gatt_exported {
            out.extend(gatt_objects(st, a));
        }
    }
    out
}

fn lookup(st: &State, path: &str) -> Option<Obj> {
    all_objects(st)
        .into_iter()
        .find(|(p, _)| p == path)
        .map(|(_, o)| o)
}

fn iface_names(iface: &str) -> Vec<String> {
    vec![
        iface.to_string(),
        I_PROPS.to_string(),
        I_INTROSPECT.to_string(),
    ]
}

fn sig_added(st: &State, path: &str, obj: &Obj) -> Message {
    let mut ifs: HashMap<String, PropMap> = HashMap::new();
    for (name, props) in interfaces(st, obj) {
        ifs.insert(name.to_string(), props);
    }
    ifs.insert(I_PROPS.into(), PropMap::new());
    ifs.insert(I_INTROSPECT.into(), PropMap::new());
    Message::new_signal("/", I_OM, "InterfacesAdded")
        .expect("signal")
        .append2(opath(path.to_string()), ifs)
}

fn sig_removed(path: &str, iface: &str) -> Message {
    Message::new_signal("/", I_OM, "InterfacesRemoved")
        .expect("signal")
        .append2(opath(path.to_string()), iface_names(iface))
}

fn sig_changed(path: &str, iface: &str, props: PropMap) -> Message {
    Message::new_signal(path.to_string(), I_PROPS, "PropertiesChanged")
        .expect("signal")
        .append3(iface.to_string(), props, Vec::<String>::new())
}

fn one(name: &str, value: Variant<Box<dyn RefArg>>) -> PropMap {
    let mut p = PropMap::new();
    p.insert(name.to_string(), value);
    p
}

fn dev_changed(a: &str, name: &str, value: Variant<Box<dyn RefArg>>) -> Message {
    sig_changed(&device_path(a), I_DEVICE, one(name, value))
}

fn export_gatt(st: &mut State, a: &str, out: &mut Vec<Message>) {
    for (p, o) in gatt_objects(st, a) {
        out.push(sig_added(st, &p, &o));
    }
    st.devices.get_mut(a).unwrap().gatt_exported = true;
}

fn unexport_gatt(st: &mut State, a: &str, out: &mut Vec<Message>) {
    if !st.devices[a].gatt_exported {
        return;
    }
    for (p, o) in gatt_objects(st, a).into_iter().rev() {
        let iface = match o {
            Obj::Svc(..) => I_SERVICE,
            Obj::Chr(..) => I_CHAR,
            _ => I_DESC,
        };
        out.push(sig_removed(&p, iface));
    }
    st.devices.get_mut(a).unwrap().gatt_exported = false;
}

fn update_uuids(st: &mut State, a: &str, extra: &[String], out: &mut Vec<Message>) {
    let d = st.devices.get_mut(a).unwrap();
    let mut uuids = d.uuids.clone();
    let gatt: Vec<String> = if d.gatt_exported {
        d.services.iter().map(|s| s.uuid.clone()).collect()
    } else {
        vec![]
    };
    for u in extra.iter().map(|u| normalize_uuid(u)).chain(gatt) {
        if !uuids.contains(&u) {
            uuids.push(u);
        }
    }
    if uuids != d.uuids {
        d.uuids = uuids.clone();
        if d.exported {
            out.push(dev_changed(a, "UUIDs", v(uuids)));
        }
    }
}

fn do_connect(st: &mut State, a: &str, out: &mut Vec<Message>) {
    let d = st.devices.get_mut(a).unwrap();
    if d.connected {
        return;
    }
    d.connected = true;
    out.push(dev_changed(a, "Connected", v(true)));
    if !st.devices[a].gatt_exported {
        export_gatt(st, a, out);
    }
    update_uuids(st, a, &[], out);
    st.devices.get_mut(a).unwrap().services_resolved = true;
    out.push(dev_changed(a, "ServicesResolved", v(true)));
}

fn do_disconnect(st: &mut State, a: &str, out: &mut Vec<Message>) {
    let d = st.devices.get_mut(a).unwrap();
    if !d.connected {
        return;
    }
    let mut ended = Vec::new();
    for s in d.services.iter_mut() {
        for c in s.chars.iter_mut() {
            if !c.sessions.is_empty() {
                c.sessions.clear();
                ended.push(format!(
                    "{}/service{:04x}/char{:04x}",
                    device_path(a),
                    s.handle,
                    c.handle
                ));
            }
        }
    }
    if d.gatt_exported {
        for p in ended {
            out.push(sig_changed(&p, I_CHAR, one("Notifying", v(false))));
        }
    }
    if let Some(smp) = d.smp.as_mut() {
        smp.reassembler.reset();
    }
    d.services_resolved = false;
    out.push(dev_changed(a, "ServicesResolved", v(false)));
    d.connected = false;
    out.push(dev_changed(a, "Connected", v(false)));
}

fn set_notifying_sessions(
    st: &mut State,
    a: &str,
    si: usize,
    ci: usize,
    f: impl FnOnce(&mut BTreeSet<String>),
    out: &mut Vec<Message>,
) {
    let d = st.devices.get_mut(a).unwrap();
    let s = &mut d.services[si];
    let shandle = s.handle;
    let c = &mut s.chars[ci];
    let before = !c.sessions.is_empty();
    f(&mut c.sessions);
    let after = !c.sessions.is_empty();
    if before != after {
        let p = format!(
            "{}/service{:04x}/char{:04x}",
            device_path(a),
            shandle,
            c.handle
        );
        out.push(sig_changed(&p, I_CHAR, one("Notifying", v(after))));
    }
}

/// Emits a Value change on a characteristic if connected and notifying. Returns whether sent.
fn emit_value(
    st: &mut State,
    a: &str,
    si: usize,
    ci: usize,
    value: &[u8],
    out: &mut Vec<Message>,
) -> bool {
    let d = st.devices.get_mut(a).unwrap();
    if !d.connected || !d.gatt_exported {
        return false;
    }
    let s = &mut d.services[si];
    let shandle = s.handle;
    let c = &mut s.chars[ci];
    if c.sessions.is_empty() {
        return false;
    }
    c.value = value.to_vec();
    c.cached = value.to_vec();
    let p = format!(
        "{}/service{:04x}/char{:04x}",
        device_path(a),
        shandle,
        c.handle
    );
    out.push(sig_changed(&p, I_CHAR, one("Value", v(value.to_vec()))));
    true
}

fn find_chr(st: &State, a: &str, uuid: &str) -> Option<(usize, usize)> {
    let u = normalize_uuid(uuid);
    let d = st.devices.get(a)?;
    for (si, s) in d.services.iter().enumerate() {
        for (ci, c) in s.chars.iter().enumerate() {
            if c.uuid == u {
                return Some((si, ci));
            }
        }
    }
    None
}

fn key(address: &str) -> String {
    address.to_ascii_uppercase()
}

// ---------------------------------------------------------------------------------------------
// The simulator

struct Inner {
    ch: Channel,
    bus_address: String,
    st: Mutex<State>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send_all(&self, out: Vec<Message>) {
        for m in out {
            let _ = self.ch.send(m);
        }
    }
}

struct Guard {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The simulated BlueZ. Cheap to clone; `Send + Sync`; stops serving when the last clone drops.
#[derive(Clone)]
pub struct SimBluez {
    inner: Arc<Inner>,
    _guard: Arc<Guard>,
}

impl std::fmt::Debug for SimBluez {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimBluez")
            .field("bus", &self.inner.bus_address)
            .finish()
    }
}

impl SimBluez {
    /// Connects to the bus at `bus_address`, owns `org.bluez` and serves `/`, `/org/bluez`
    /// (AgentManager1) and `/org/bluez/hci0` (Adapter1, powered, not discovering) from a
    /// dispatch thread. Usable from tokio tests and plain threads alike (all calls are
    /// short and non-blocking).
    pub fn start(bus_address: &str) -> Result<SimBluez, Error> {
        let mut ch = Channel::open_private(bus_address)?;
        ch.register()?;
        let req = Message::new_method_call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "RequestName",
        )
        .expect("method call")
        .append2("org.bluez", 4u32); // DBUS_NAME_FLAG_DO_NOT_QUEUE
        let reply = ch.send_with_reply_and_block(req, Duration::from_secs(5))?;
        if reply.read1::<u32>().ok() != Some(1) {
            return Err(Error::NameTaken);
        }
        let rule = "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged'";
        let add = Message::new_method_call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "AddMatch",
        )
        .expect("method call")
        .append1(rule);
        ch.send_with_reply_and_block(add, Duration::from_secs(5))?;
        let inner = Arc::new(Inner {
            ch,
            bus_address: bus_address.to_string(),
            st: Mutex::new(State {
                powered: true,
                pairable: true,
                discovery: BTreeSet::new(),
                duplicate_data: false,
                devices: BTreeMap::new(),
                agents: Vec::new(),
                ignored_adverts: 0,
            }),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let inner = inner.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("blesim-dbus".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if inner
                            .ch
                            .read_write(Some(Duration::from_millis(10)))
                            .is_err()
                        {
                            break; // bus gone
                        }
                        while let Some(msg) = inner.ch.pop_message() {
                            dispatch(&inner, msg);
                        }
                    }
                    inner.ch.flush();
                })
                .map_err(|e| Error::Io("spawning the dispatch thread".into(), e))?
        };
        Ok(SimBluez {
            inner,
            _guard: Arc::new(Guard {
                stop,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The bus this simulator serves.
    pub fn bus_address(&self) -> &str {
        &self.inner.bus_address
    }

    /// A device BlueZ already knows (e.g. bonded from before): exported now (`InterfacesAdded`)
    /// without advertising. Replaces (removes, then re-adds) a device with the same address.
    pub fn add_device(&self, d: SimDevice) {
        let mut st = self.inner.lock();
        let mut out = Vec::new();
        let a = key(&d.address);
        remove_if_present(&mut st, &a, &mut out);
        let mut dev = new_dev(&d);
        if let Some(n) = &d.name {
            dev.name = Some(n.clone());
        }
        dev.exported = true;
        st.devices.insert(a.clone(), dev);
        out.push(sig_added(&st, &device_path(&a), &Obj::Dev(a.clone())));
        self.inner.send_all(out);
    }

    /// (Addition) A device that exists in radio range but BlueZ does not know yet: nothing is
    /// exported until it [`advertise`](Self::advertise)s while the adapter is discovering.
    /// Replaces an unexported device with the same address; ignored if BlueZ already knows it.
    pub fn place_device(&self, d: SimDevice) {
        let mut st = self.inner.lock();
        let a = key(&d.address);
        if st.devices.get(&a).is_some_and(|x| x.exported) {
            return;
        }
        st.devices.insert(a, new_dev(&d));
    }

    /// One advertising report. While discovering: an unknown (or removed) device is created
    /// and exported (`InterfacesAdded` with RSSI/Name/ManufacturerData/ServiceData/UUIDs/
    /// TxPower); a known one gets `PropertiesChanged` (see the module docs for which). Not
    /// discovering: ignored and counted ([`ignored_adverts`](Self::ignored_adverts)).
    /// Advertising implies the device is in range.
    pub fn advertise(&self, address: &str, adv: &Advert) {
        advertise_inner(&self.inner, address, adv)
    }

    /// Notifies/indicates `value` on the characteristic. `false` (nothing sent) unless the
    /// device is connected and the characteristic is notifying.
    pub fn notify(&self, address: &str, char_uuid: &str, value: &[u8]) -> bool {
        notify_inner(&self.inner, address, char_uuid, value)
    }

    /// Sets what `ReadValue` returns (no signal).
    pub fn set_value(&self, address: &str, char_uuid: &str, value: &[u8]) {
        let mut st = self.inner.lock();
        let a = key(address);
        if let Some((si, ci)) = find_chr(&st, &a, char_uuid) {
            st.devices.get_mut(&a).unwrap().services[si].chars[ci].value = value.to_vec();
        }
    }

    /// Link loss: every notify session ends (`Notifying=false`), `ServicesResolved=false`,
    /// `Connected=false`. GATT objects stay. No-op when not connected.
    pub fn drop_link(&self, address: &str) {
        let mut st = self.inner.lock();
        let a = key(address);
        if !st.devices.contains_key(&a) {
            return;
        }
        let mut out = Vec::new();
        do_disconnect(&mut st, &a, &mut out);
        self.inner.send_all(out);
    }

    /// `Connect` fails while out of range; going out of range while connected is a link loss.
    pub fn set_in_range(&self, address: &str, in_range: bool) {
        set_in_range_inner(&self.inner, address, in_range)
    }

    /// The attribute table changed (firmware update). Exported GATT objects are removed
    /// (`InterfacesRemoved`); if connected the new table is exported at once (`InterfacesAdded`),
    /// else at the next connection. Write handlers and counters (by UUID) are kept.
    pub fn set_gatt(&self, address: &str, services: Vec<SimService>) {
        set_gatt_inner(&self.inner, address, services)
    }

    /// Sets `Paired`/`Bonded` (PropertiesChanged when exported and changed).
    pub fn set_bonded(&self, address: &str, paired: bool, bonded: bool) {
        let mut st = self.inner.lock();
        let a = key(address);
        let Some(d) = st.devices.get_mut(&a) else {
            return;
        };
        let mut ch = PropMap::new();
        if d.paired != paired {
            ch.insert("Paired".into(), v(paired));
        }
        if d.bonded != bonded {
            ch.insert("Bonded".into(), v(bonded));
        }
        d.paired = paired;
        d.bonded = bonded;
        if d.exported && !ch.is_empty() {
            let m = sig_changed(&device_path(&a), I_DEVICE, ch);
            self.inner.send_all(vec![m]);
        }
    }

    /// Installs the `WriteValue` handler of a characteristic. After the write is recorded and
    /// answered, the returned (characteristic uuid, value) pairs are notified/indicated in
    /// order (each only if that characteristic is notifying). Replaces an earlier handler;
    /// survives [`set_gatt`](Self::set_gatt). The handler runs without the simulator's lock.
    pub fn on_write(
        &self,
        address: &str,
        char_uuid: &str,
        f: impl Fn(&[u8]) -> Vec<(String, Vec<u8>)> + Send + Sync + 'static,
    ) {
        let mut st = self.inner.lock();
        if let Some(d) = st.devices.get_mut(&key(address)) {
            d.handlers.insert(normalize_uuid(char_uuid), Arc::new(f));
        }
    }

    /// Serves the SMP characteristic of the device at `address` with `model` (see
    /// [`smp_service`] and the `smp` module docs: reassembly by header length, notifications of
    /// at most MTU − 3 bytes, bonded links only, the model's delays on a worker thread, a reset
    /// drops the link for the model's swap time). The device must have been added or placed
    /// first and should serve [`smp_service`]; a second call replaces the model. The worker
    /// ends when the device is replaced or the simulator stops.
    pub fn attach_smp(&self, address: &str, model: crate::smp_device::SharedModel) {
        let a = key(address);
        let server = smp::SmpServer::start(Arc::downgrade(&self.inner), a.clone(), model);
        if let Some(d) = self.inner.lock().devices.get_mut(&a) {
            d.smp = Some(server);
        }
    }

    /// Sets the ATT MTU of the device's connections (23…517; default [`DEFAULT_MTU`]): the
    /// `MTU` property of its characteristics, what `AcquireWrite` returns, the longest command
    /// write (MTU − 3) and the SMP notification size.
    pub fn set_mtu(&self, address: &str, mtu: u16) {
        if let Some(d) = self.inner.lock().devices.get_mut(&key(address)) {
            d.mtu = mtu.clamp(23, 517);
        }
    }

    /// The ATT MTU of the device's connections.
    pub fn mtu(&self, address: &str) -> u16 {
        mtu_of(&self.inner, address)
    }

    /// Installs [`glucose_racp`]`(records)` on the RACP characteristic (0x2A52).
    pub fn install_glucose_racp(&self, address: &str, records: Vec<(u16, Vec<u8>)>) {
        self.on_write(address, &uuid16(RACP), glucose_racp(records));
    }

    /// `StartNotify` calls on the characteristic so far (every call, also while notifying).
    pub fn start_notify_count(&self, address: &str, char_uuid: &str) -> usize {
        let st = self.inner.lock();
        st.devices
            .get(&key(address))
            .and_then(|d| d.start_notify.get(&normalize_uuid(char_uuid)).copied())
            .unwrap_or(0)
    }

    /// `Device1.Connect` calls so far (failed ones included; `Pair`'s implicit connection and
    /// [`connect_at_start`](Self::connect_at_start) excluded).
    pub fn connect_count(&self, address: &str) -> usize {
        self.inner
            .lock()
            .devices
            .get(&key(address))
            .map_or(0, |d| d.connect_count)
    }

    pub fn is_connected(&self, address: &str) -> bool {
        self.inner
            .lock()
            .devices
            .get(&key(address))
            .is_some_and(|d| d.connected)
    }

    /// (Addition) Whether the characteristic currently has a notify session.
    pub fn is_notifying(&self, address: &str, char_uuid: &str) -> bool {
        let st = self.inner.lock();
        let a = key(address);
        find_chr(&st, &a, char_uuid)
            .is_some_and(|(si, ci)| !st.devices[&a].services[si].chars[ci].sessions.is_empty())
    }

    /// (Addition) `(Paired, Bonded)`, `None` for an unknown address.
    pub fn bond_state(&self, address: &str) -> Option<(bool, bool)> {
        self.inner
            .lock()
            .devices
            .get(&key(address))
            .map(|d| (d.paired, d.bonded))
    }

    /// `Adapter1.Pairable` (whether the adapter accepts incoming pairing requests).
    pub fn is_pairable(&self) -> bool {
        self.inner.lock().pairable
    }

    pub fn is_discovering(&self) -> bool {
        self.inner.lock().discovering()
    }

    /// Device1 objects currently exported (`RemoveDevice` lowers it).
    pub fn device_count(&self) -> usize {
        self.inner
            .lock()
            .devices
            .values()
            .filter(|d| d.exported)
            .count()
    }

    /// (Addition) Advertisements ignored because nobody was discovering.
    pub fn ignored_adverts(&self) -> usize {
        self.inner.lock().ignored_adverts
    }

    /// (Addition) Registered agents as (bus name, object path, capability), default first.
    pub fn agents(&self) -> Vec<(String, String, String)> {
        self.inner
            .lock()
            .agents
            .iter()
            .map(|a| (a.sender.clone(), a.path.clone(), a.capability.clone()))
            .collect()
    }

    /// Values written to the characteristic (`WriteValue`), oldest first.
    pub fn writes(&self, address: &str, char_uuid: &str) -> Vec<Vec<u8>> {
        let st = self.inner.lock();
        st.devices
            .get(&key(address))
            .and_then(|d| d.writes.get(&normalize_uuid(char_uuid)).cloned())
            .unwrap_or_default()
    }

    /// How `Device1.Pair` behaves for this device (default [`Pairing::JustWorks`]).
    pub fn set_pairing(&self, address: &str, method: Pairing) {
        if let Some(d) = self.inner.lock().devices.get_mut(&key(address)) {
            d.pairing = method;
        }
    }

    /// The device is already Connected + ServicesResolved (GATT exported) — e.g. before the
    /// client starts (reconcile). Exports the device too if BlueZ did not know it.
    pub fn connect_at_start(&self, address: &str) {
        let mut st = self.inner.lock();
        let a = key(address);
        let Some(d) = st.devices.get_mut(&a) else {
            return;
        };
        let mut out = Vec::new();
        if !d.exported {
            d.exported = true;
            out.push(sig_added(&st, &device_path(&a), &Obj::Dev(a.clone())));
        }
        do_connect(&mut st, &a, &mut out);
        self.inner.send_all(out);
    }
}

fn advertise_inner(inner: &Inner, address: &str, adv: &Advert) {
    let mut st = inner.lock();
    if !st.discovering() {
        st.ignored_adverts += 1;
        return;
    }
    let a = key(address);
    let mut out = Vec::new();
    let dup = st.duplicate_data;
    let d = st.devices.entry(a.clone()).or_insert_with(|| {
        new_dev(&SimDevice {
            address: a.clone(),
            address_type: AddressType::Public,
            name: adv.name.clone(),
            paired: false,
            bonded: false,
            services: vec![],
            in_range: true,
        })
    });
    d.in_range = true;
    let mfr: BTreeMap<u16, Vec<u8>> = adv.manufacturer_data.iter().cloned().collect();
    let sd: BTreeMap<String, Vec<u8>> = adv
        .service_data
        .iter()
        .map(|(u, d)| (normalize_uuid(u), d.clone()))
        .collect();
    if !d.exported {
        d.rssi = Some(adv.rssi);
        d.tx_power = adv.tx_power;
        if adv.name.is_some() {
            d.name = adv.name.clone();
        }
        d.manufacturer_data = mfr;
        d.service_data = sd;
        d.uuids = Vec::new();
        d.exported = true;
        update_uuids(&mut st, &a, &adv.service_uuids, &mut Vec::new());
        out.push(sig_added(&st, &device_path(&a), &Obj::Dev(a.clone())));
    } else {
        let mut ch = PropMap::new();
        if d.rssi != Some(adv.rssi) {
            d.rssi = Some(adv.rssi);
            ch.insert("RSSI".into(), v(adv.rssi));
        }
        if let Some(name) = adv.name.as_ref().filter(|n| d.name.as_ref() != Some(*n)) {
            d.name = Some(name.clone());
            ch.insert("Name".into(), v(name.clone()));
            ch.insert("Alias".into(), v(alias(d)));
        }
        if let Some(tx) = adv.tx_power.filter(|t| d.tx_power != Some(*t)) {
            d.tx_power = Some(tx);
            ch.insert("TxPower".into(), v(tx));
        }
        if !mfr.is_empty() && (dup || mfr != d.manufacturer_data) {
            d.manufacturer_data = mfr;
            ch.insert("ManufacturerData".into(), mfr_variant(&d.manufacturer_data));
        }
        if !sd.is_empty() && (dup || sd != d.service_data) {
            d.service_data = sd;
            ch.insert("ServiceData".into(), sd_variant(&d.service_data));
        }
        if !ch.is_empty() {
            out.push(sig_changed(&device_path(&a), I_DEVICE, ch));
        }
        update_uuids(&mut st, &a, &adv.service_uuids, &mut out);
    }
    inner.send_all(out);
}

fn notify_inner(inner: &Inner, address: &str, char_uuid: &str, value: &[u8]) -> bool {
    let mut st = inner.lock();
    let a = key(address);
    let Some((si, ci)) = find_chr(&st, &a, char_uuid) else {
        return false;
    };
    let mut out = Vec::new();
    let sent = emit_value(&mut st, &a, si, ci, value, &mut out);
    inner.send_all(out);
    sent
}

fn set_in_range_inner(inner: &Inner, address: &str, in_range: bool) {
    let mut st = inner.lock();
    let a = key(address);
    let Some(d) = st.devices.get_mut(&a) else {
        return;
    };
    d.in_range = in_range;
    let mut out = Vec::new();
    if !in_range {
        do_disconnect(&mut st, &a, &mut out);
    }
    inner.send_all(out);
}

fn set_gatt_inner(inner: &Inner, address: &str, services: Vec<SimService>) {
    let mut st = inner.lock();
    let a = key(address);
    if !st.devices.contains_key(&a) {
        return;
    }
    let mut out = Vec::new();
    unexport_gatt(&mut st, &a, &mut out);
    let d = st.devices.get_mut(&a).unwrap();
    d.services = build_gatt(&services);
    if d.connected {
        export_gatt(&mut st, &a, &mut out);
        update_uuids(&mut st, &a, &[], &mut out);
    }
    inner.send_all(out);
}

/// The ATT MTU of a device's connections.
fn mtu_of(inner: &Inner, address: &str) -> u16 {
    inner
        .lock()
        .devices
        .get(&key(address))
        .map_or(DEFAULT_MTU, |d| d.mtu)
}

/// After a firmware change: the same table with the new firmware revision (B18).
fn firmware_changed(inner: &Inner, address: &str, version: &str) {
    let services = {
        let st = inner.lock();
        match st.devices.get(&key(address)) {
            Some(d) => services_of(d),
            None => return,
        }
    };
    set_gatt_inner(inner, address, smp::with_firmware(services, version));
}

/// The device advertises again (after a reset) if someone discovers: name and RSSI (a
/// changed RSSI, so scanners that report only changes see it).
fn readvertise(inner: &Inner, address: &str) {
    let (name, rssi) = {
        let st = inner.lock();
        if !st.discovering() {
            return;
        }
        match st.devices.get(&key(address)) {
            Some(d) => (d.name.clone(), if d.rssi == Some(-60) { -61 } else { -60 }),
            None => return,
        }
    };
    advertise_inner(
        inner,
        address,
        &Advert {
            rssi,
            name,
            ..Default::default()
        },
    );
}

fn remove_if_present(st: &mut State, a: &str, out: &mut Vec<Message>) {
    if !st.devices.get(a).is_some_and(|d| d.exported) {
        st.devices.remove(a);
        return;
    }
    do_disconnect(st, a, out);
    unexport_gatt(st, a, out);
    out.push(sig_removed(&device_path(a), I_DEVICE));
    st.devices.remove(a);
}

// ---------------------------------------------------------------------------------------------
// Dispatch

struct DErr(&'static str, String);

fn derr(name: &'static str, text: &str) -> DErr {
    DErr(name, text.to_string())
}

fn error_reply(msg: &Message, e: &DErr) -> Message {
    let text = CString::new(e.1.replace('\0', " ")).unwrap_or_default();
    msg.error(&ErrorName::new(e.0).expect("error name"), &text)
}

fn dispatch(inner: &Arc<Inner>, msg: Message) {
    match msg.msg_type() {
        MessageType::MethodCall => {}
        MessageType::Signal => {
            if msg.member().as_deref() == Some("NameOwnerChanged") {
                if let Ok((name, _old, new)) = msg.read3::<&str, &str, &str>() {
                    if new.is_empty() && name.starts_with(':') {
                        client_left(inner, name);
                    }
                }
            }
            return;
        }
        _ => return,
    }
    let path = msg.path().map(|p| p.to_string()).unwrap_or_default();
    let iface = msg.interface().map(|i| i.to_string()).unwrap_or_default();
    let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
    let sender = msg.sender().map(|s| s.to_string()).unwrap_or_default();

    // Methods that release the lock part-way.
    if iface == I_CHAR && member == "WriteValue" {
        return write_value(inner, &msg, &path);
    }
    if iface == I_CHAR && member == "AcquireWrite" {
        return acquire_write(inner, &msg, &path);
    }
    if iface == I_DEVICE && member == "Pair" {
        return pair(inner, msg, &path);
    }

    let mut st = inner.lock();
    let mut out = Vec::new();
    let res = handle(&mut st, &msg, &path, &iface, &member, &sender, &mut out);
    match res {
        Ok(()) => {}
        Err(e) => {
            out.clear();
            out.push(error_reply(&msg, &e));
        }
    }
    inner.send_all(out);
}

fn client_left(inner: &Arc<Inner>, name: &str) {
    let mut st = inner.lock();
    let mut out = Vec::new();
    if st.discovery.remove(name) && !st.discovering() {
        out.push(sig_changed(
            ADAPTER_PATH,
            I_ADAPTER,
            one("Discovering", v(false)),
        ));
    }
    let addrs: Vec<String> = st.devices.keys().cloned().collect();
    for a in addrs {
        let n = st.devices[&a].services.len();
        for si in 0..n {
            for ci in 0..st.devices[&a].services[si].chars.len() {
                if st.devices[&a].services[si].chars[ci]
                    .sessions
                    .contains(name)
                {
                    set_notifying_sessions(
                        &mut st,
                        &a,
                        si,
                        ci,
                        |s| {
                            s.remove(name);
                        },
                        &mut out,
                    );
                }
            }
        }
    }
    st.agents.retain(|a| a.sender != name);
    inner.send_all(out);
}

fn introspect_xml(st: &State, path: &str) -> String {
    let objs = all_objects(st);
    let mut ifs: Vec<&str> = vec![I_INTROSPECT, I_PROPS];
    if path == "/" {
        ifs.push(I_OM);
    }
    if let Some((_, o)) = objs.iter().find(|(p, _)| p == path) {
        for (i, _) in interfaces(st, o) {
            ifs.push(i);
        }
    }
    let prefix = if path == "/" {
        "/".to_string()
    } else {
        format!("{path}/")
    };
    let mut children = BTreeSet::new();
    for (p, _) in &objs {
        if let Some(rest) = p.strip_prefix(&prefix) {
            if let Some(first) = rest.split('/').next() {
                if !first.is_empty() {
                    children.insert(first.to_string());
                }
            }
        }
    }
    let mut x = String::from(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n",
    );
    for i in ifs {
        x.push_str(&format!("  <interface name=\"{i}\"></interface>\n"));
    }
    for c in children {
        x.push_str(&format!("  <node name=\"{c}\"/>\n"));
    }
    x.push_str("</node>\n");
    x
}

fn get_prop_map(st: &State, path: &str, iface: &str) -> Result<PropMap, DErr> {
    let obj = lookup(st, path).ok_or_else(|| {
        derr(
            "org.freedesktop.DBus.Error.UnknownObject",
            &format!("no object {path}"),
        )
    })?;
    interfaces(st, &obj)
        .into_iter()
        .find(|(i, _)| *i == iface)
        .map(|(_, p)| p)
        .ok_or_else(|| {
            derr(
                "org.freedesktop.DBus.Error.InvalidArgs",
                &format!("no interface {iface} on {path}"),
            )
        })
}

fn dev_of(st: &State, path: &str) -> Result<String, DErr> {
    match lookup(st, path) {
        Some(Obj::Dev(a)) => Ok(a),
        _ => Err(derr(
            "org.freedesktop.DBus.Error.UnknownObject",
            &format!("no device {path}"),
        )),
    }
}

fn chr_of(st: &State, path: &str) -> Result<(String, usize, usize), DErr> {
    match lookup(st, path) {
        Some(Obj::Chr(a, si, ci)) => Ok((a, si, ci)),
        _ => Err(derr(
            "org.freedesktop.DBus.Error.UnknownObject",
            &format!("no characteristic {path}"),
        )),
    }
}

fn not_connected() -> DErr {
    derr("org.bluez.Error.Failed", "Not connected")
}

#[allow(clippy::too_many_arguments)]
fn handle(
    st: &mut State,
    msg: &Message,
    path: &str,
    iface: &str,
    member: &str,
    sender: &str,
    out: &mut Vec<Message>,
) -> Result<(), DErr> {
    let ok = |out: &mut Vec<Message>| out.push(msg.method_return());
    match (iface, member) {
        (I_INTROSPECT, "Introspect") => {
            out.push(msg.method_return().append1(introspect_xml(st, path)))
        }
        (I_OM, "GetManagedObjects") => {
            if path != "/" {
                return Err(derr(
                    "org.freedesktop.DBus.Error.UnknownMethod",
                    "ObjectManager is on /",
                ));
            }
            let mut tree: HashMap<dbus::Path<'static>, HashMap<String, PropMap>> = HashMap::new();
            for (p, o) in all_objects(st) {
                let mut ifs: HashMap<String, PropMap> = HashMap::new();
                for (i, props) in interfaces(st, &o) {
                    ifs.insert(i.to_string(), props);
                }
                ifs.insert(I_PROPS.into(), PropMap::new());
                ifs.insert(I_INTROSPECT.into(), PropMap::new());
                tree.insert(opath(p), ifs);
            }
            out.push(msg.method_return().append1(tree));
        }
        (I_PROPS, "GetAll") => {
            let i: &str = msg
                .read1()
                .map_err(|e| derr("org.freedesktop.DBus.Error.InvalidArgs", &e.to_string()))?;
            let p = get_prop_map(st, path, i)?;
            out.push(msg.method_return().append1(p));
        }
        (I_PROPS, "Get") => {
            let (i, name): (&str, &str) = msg
                .read2()
                .map_err(|e| derr("org.freedesktop.DBus.Error.InvalidArgs", &e.to_string()))?;
            let mut p = get_prop_map(st, path, i)?;
            let val = p.remove(name).ok_or_else(|| {
                derr(
                    "org.freedesktop.DBus.Error.InvalidArgs",
                    &format!("No such property '{name}'"),
                )
            })?;
            out.push(msg.method_return().append1(val));
        }
        (I_PROPS, "Set") => {
            let (i, name, val): (&str, &str, Variant<Box<dyn RefArg>>) = msg
                .read3()
                .map_err(|e| derr("org.freedesktop.DBus.Error.InvalidArgs", &e.to_string()))?;
            let b = dbus::arg::cast::<bool>(&*val.0).copied();
            match (lookup(st, path), i, name) {
                (Some(Obj::Adapter), I_ADAPTER, "Powered") => {
                    let b = b.ok_or_else(|| {
                        derr("org.freedesktop.DBus.Error.InvalidArgs", "Powered is b")
                    })?;
                    ok(out);
                    if b != st.powered {
                        if !b {
                            let addrs: Vec<String> = st.devices.keys().cloned().collect();
                            for a in addrs {
                                do_disconnect(st, &a, out);
                            }
                            if st.discovering() {
                                st.discovery.clear();
                                out.push(sig_changed(
                                    ADAPTER_PATH,
                                    I_ADAPTER,
                                    one("Discovering", v(false)),
                                ));
                            }
                        }
                        st.powered = b;
                        out.push(sig_changed(ADAPTER_PATH, I_ADAPTER, one("Powered", v(b))));
                    }
                }
                (Some(Obj::Adapter), I_ADAPTER, "Pairable") => {
                    let b = b.ok_or_else(|| {
                        derr("org.freedesktop.DBus.Error.InvalidArgs", "Pairable is b")
                    })?;
                    ok(out);
                    if b != st.pairable {
                        st.pairable = b;
                        out.push(sig_changed(ADAPTER_PATH, I_ADAPTER, one("Pairable", v(b))));
                    }
                }
                (Some(Obj::Dev(a)), I_DEVICE, "Trusted") => {
                    let b = b.ok_or_else(|| {
                        derr("org.freedesktop.DBus.Error.InvalidArgs", "Trusted is b")
                    })?;
                    ok(out);
                    let d = st.devices.get_mut(&a).unwrap();
                    if d.trusted != b {
                        d.trusted = b;
                        out.push(dev_changed(&a, "Trusted", v(b)));
                    }
                }
                (None, ..) => return Err(derr("org.freedesktop.DBus.Error.UnknownObject", path)),
                _ => {
                    return Err(derr(
                        "org.freedesktop.DBus.Error.PropertyReadOnly",
                        &format!("{i}.{name} is read-only in the simulator"),
                    ))
                }
            }
        }
        (I_ADAPTER, _) if path == ADAPTER_PATH => match member {
            "StartDiscovery" => {
                if !st.powered {
                    return Err(derr("org.bluez.Error.NotReady", "Resource Not Ready"));
                }
                if st.discovery.contains(sender) {
                    return Err(derr(
                        "org.bluez.Error.InProgress",
                        "Operation already in progress",
                    ));
                }
                ok(out);
                st.discovery.insert(sender.to_string());
                if st.discovery.len() == 1 {
                    out.push(sig_changed(
                        ADAPTER_PATH,
                        I_ADAPTER,
                        one("Discovering", v(true)),
                    ));
                }
            }
            "StopDiscovery" => {
                if !st.discovery.remove(sender) {
                    return Err(derr("org.bluez.Error.Failed", "No discovery started"));
                }
                ok(out);
                if !st.discovering() {
                    out.push(sig_changed(
                        ADAPTER_PATH,
                        I_ADAPTER,
                        one("Discovering", v(false)),
                    ));
                }
            }
            "SetDiscoveryFilter" => {
                let f: PropMap = msg
                    .read1()
                    .map_err(|e| derr("org.bluez.Error.InvalidArguments", &e.to_string()))?;
                st.duplicate_data = f
                    .get("DuplicateData")
                    .and_then(|x| dbus::arg::cast::<bool>(&*x.0).copied())
                    .unwrap_or(false);
                ok(out);
            }
            "RemoveDevice" => {
                let p: dbus::Path = msg
                    .read1()
                    .map_err(|e| derr("org.bluez.Error.InvalidArguments", &e.to_string()))?;
                let a = match lookup(st, &p) {
                    Some(Obj::Dev(a)) => a,
                    _ => return Err(derr("org.bluez.Error.DoesNotExist", "Does Not Exist")),
                };
                do_disconnect(st, &a, out);
                unexport_gatt(st, &a, out);
                out.push(sig_removed(&device_path(&a), I_DEVICE));
                let d = st.devices.get_mut(&a).unwrap();
                d.exported = false;
                d.paired = false;
                d.bonded = false;
                d.trusted = false;
                d.rssi = None;
                d.tx_power = None;
                d.manufacturer_data.clear();
                d.service_data.clear();
                d.uuids.clear();
                out.push(msg.method_return());
            }
            _ => return Err(derr("org.freedesktop.DBus.Error.UnknownMethod", member)),
        },
        (I_AGENT_MANAGER, _) if path == "/org/bluez" => match member {
            "RegisterAgent" => {
                let (p, cap): (dbus::Path, &str) = msg
                    .read2()
                    .map_err(|e| derr("org.bluez.Error.InvalidArguments", &e.to_string()))?;
                if st.agents.iter().any(|a| a.sender == sender) {
                    return Err(derr("org.bluez.Error.AlreadyExists", "Already Exists"));
                }
                st.agents.push(Agent {
                    sender: sender.into(),
                    path: p.to_string(),
                    capability: cap.into(),
                });
                ok(out);
            }
            "UnregisterAgent" => {
                let p: dbus::Path = msg
                    .read1()
                    .map_err(|e| derr("org.bluez.Error.InvalidArguments", &e.to_string()))?;
                let before = st.agents.len();
                st.agents.retain(|a| !(a.sender == sender && a.path == *p));
                if st.agents.len() == before {
                    return Err(derr("org.bluez.Error.DoesNotExist", "Does Not Exist"));
                }
                ok(out);
            }
            "RequestDefaultAgent" => {
                let p: dbus::Path = msg
                    .read1()
                    .map_err(|e| derr("org.bluez.Error.InvalidArguments", &e.to_string()))?;
                let Some(i) = st
                    .agents
                    .iter()
                    .position(|a| a.sender == sender && a.path == *p)
                else {
                    return Err(derr("org.bluez.Error.DoesNotExist", "Does Not Exist"));
                };
                let a = st.agents.remove(i);
                st.agents.insert(0, a);
                ok(out);
            }
            _ => return Err(derr("org.freedesktop.DBus.Error.UnknownMethod", member)),
        },
        (I_DEVICE, _) => {
            let a = dev_of(st, path)?;
            match member {
                "Connect" => {
                    st.devices.get_mut(&a).unwrap().connect_count += 1;
                    if !st.powered {
                        return Err(derr("org.bluez.Error.NotReady", "Resource Not Ready"));
                    }
                    if !st.devices[&a].in_range {
                        return Err(derr(
                            "org.bluez.Error.Failed",
                            "le-connection-abort-by-local",
                        ));
                    }
                    do_connect(st, &a, out);
                    ok(out);
                }
                "Disconnect" => {
                    if !st.devices[&a].connected {
                        return Err(derr("org.bluez.Error.NotConnected", "Not Connected"));
                    }
                    do_disconnect(st, &a, out);
                    ok(out);
                }
                "CancelPairing" => {
                    let d = st.devices.get_mut(&a).unwrap();
                    if !d.pairing_busy {
                        return Err(derr("org.bluez.Error.DoesNotExist", "Does Not Exist"));
                    }
                    d.pairing_cancelled = true;
                    ok(out);
                }
                _ => return Err(derr("org.freedesktop.DBus.Error.UnknownMethod", member)),
            }
        }
        (I_CHAR, _) => {
            let (a, si, ci) = chr_of(st, path)?;
            if !st.devices[&a].connected {
                return Err(not_connected());
            }
            match member {
                "ReadValue" => {
                    let c = &mut st.devices.get_mut(&a).unwrap().services[si].chars[ci];
                    if !c.has("read") {
                        return Err(derr("org.bluez.Error.NotPermitted", "Read not permitted"));
                    }
                    c.cached = c.value.clone();
                    let val = c.value.clone();
                    out.push(sig_changed(path, I_CHAR, one("Value", v(val.clone()))));
                    out.push(msg.method_return().append1(val));
                }
                "StartNotify" => {
                    let d = &st.devices[&a];
                    let c = &d.services[si].chars[ci];
                    if !c.has("notify") && !c.has("indicate") {
                        return Err(derr(
                            "org.bluez.Error.NotSupported",
                            "Operation is not supported",
                        ));
                    }
                    if d.smp.is_some() && smp::is_smp_char(&c.uuid) && !d.bonded {
                        // The CCCD write needs an encrypted link (smp_bt).
                        return Err(not_paired());
                    }
                    let u = c.uuid.clone();
                    *st.devices
                        .get_mut(&a)
                        .unwrap()
                        .start_notify
                        .entry(u)
                        .or_insert(0) += 1;
                    ok(out);
                    let s = sender.to_string();
                    set_notifying_sessions(
                        st,
                        &a,
                        si,
                        ci,
                        |set| {
                            set.insert(s);
                        },
                        out,
                    );
                }
                "StopNotify" => {
                    if !st.devices[&a].services[si].chars[ci]
                        .sessions
                        .contains(sender)
                    {
                        return Err(derr("org.bluez.Error.Failed", "No notify session started"));
                    }
                    ok(out);
                    set_notifying_sessions(
                        st,
                        &a,
                        si,
                        ci,
                        |set| {
                            set.remove(sender);
                        },
                        out,
                    );
                }
                "AcquireNotify" => {
                    return Err(derr(
                        "org.bluez.Error.NotSupported",
                        "AcquireNotify is not simulated: use StartNotify",
                    ))
                }
                _ => return Err(derr("org.freedesktop.DBus.Error.UnknownMethod", member)),
            }
        }
        (I_DESC, _) => {
            let Some(Obj::Desc(a, si, ci, di)) = lookup(st, path) else {
                return Err(derr("org.freedesktop.DBus.Error.UnknownObject", path));
            };
            if !st.devices[&a].connected {
                return Err(not_connected());
            }
            let c = &mut st.devices.get_mut(&a).unwrap().services[si].chars[ci];
            let notifying = !c.sessions.is_empty();
            let indicate = c.has("indicate") && !c.has("notify");
            let d = &mut c.descs[di];
            match member {
                "ReadValue" => {
                    if d.uuid == CCCD {
                        d.value = vec![
                            if notifying {
                                if indicate {
                                    2
                                } else {
                                    1
                                }
                            } else {
                                0
                            },
                            0,
                        ];
                    }
                    out.push(msg.method_return().append1(d.value.clone()));
                }
                "WriteValue" => {
                    if d.uuid == CCCD {
                        return Err(derr("org.bluez.Error.NotPermitted", "Write not permitted"));
                    }
                    let val: Vec<u8> = msg
                        .read1()
                        .map_err(|e| derr("org.bluez.Error.InvalidArguments", &e.to_string()))?;
                    d.value = val;
                    ok(out);
                }
                _ => return Err(derr("org.freedesktop.DBus.Error.UnknownMethod", member)),
            }
        }
        _ => {
            return Err(derr(
                "org.freedesktop.DBus.Error.UnknownMethod",
                &format!("{iface}.{member} on {path}"),
            ))
        }
    }
    Ok(())
}

fn write_value(inner: &Arc<Inner>, msg: &Message, path: &str) {
    let (val, opts): (Vec<u8>, Option<PropMap>) = match msg.read2::<Vec<u8>, PropMap>() {
        Ok((v, o)) => (v, Some(o)),
        Err(_) => match msg.read1::<Vec<u8>>() {
            Ok(v) => (v, None),
            Err(e) => {
                let e = derr("org.bluez.Error.InvalidArguments", &e.to_string());
                return inner.send_all(vec![error_reply(msg, &e)]);
            }
        },
    };
    let kind = opts
        .as_ref()
        .and_then(|o| o.get("type"))
        .and_then(|t| t.0.as_str())
        .map(str::to_string);
    let mut out = vec![msg.method_return()];
    match incoming_write(inner, path, val, kind.as_deref(), &mut out) {
        Ok(()) => inner.send_all(out),
        Err(e) => inner.send_all(vec![error_reply(msg, &e)]),
    }
}

/// A write from a client (`WriteValue`, or a packet on an `AcquireWrite` socket: `kind`
/// "command"): checks, records it, then hands it to the SMP server or the write handler, whose
/// notifications are appended to `out` after the method return.
fn incoming_write(
    inner: &Arc<Inner>,
    path: &str,
    val: Vec<u8>,
    kind: Option<&str>,
    out: &mut Vec<Message>,
) -> Result<(), DErr> {
    let (a, handler) = {
        let mut st = inner.lock();
        let (a, si, ci) = chr_of(&st, path)?;
        let d = &st.devices[&a];
        if !d.connected {
            return Err(not_connected());
        }
        let c = &d.services[si].chars[ci];
        let command = kind == Some("command") || (!c.has("write") && kind != Some("request"));
        if command && !c.has("write-without-response") {
            return Err(derr(
                "org.bluez.Error.NotSupported",
                "Operation is not supported",
            ));
        }
        if !command && !c.has("write") {
            return Err(derr("org.bluez.Error.NotPermitted", "Write not permitted"));
        }
        if command && val.len() > usize::from(d.mtu) - 3 {
            // bt_att refuses a PDU above the MTU: the write cannot even start.
            return Err(derr("org.bluez.Error.Failed", "Failed to initiate write"));
        }
        let smp = d.smp.is_some() && smp::is_smp_char(&c.uuid);
        if smp && !d.bonded {
            return Err(not_paired());
        }
        let u = c.uuid.clone();
        let d = st.devices.get_mut(&a).unwrap();
        d.writes.entry(u.clone()).or_default().push(val.clone());
        if smp {
            if let Some(server) = d.smp.as_mut() {
                match server.reassembler.push(&val) {
                    Ok(Some(frame)) => {
                        let _ = server.tx.send(frame);
                    }
                    Ok(None) => {}
                    Err(e) => log::debug!("blesim {a}: SMP write dropped: {e}"),
                }
            }
            return Ok(());
        }
        (a, d.handlers.get(&u).cloned())
    };
    let results = handler.map(|h| h(&val)).unwrap_or_default();
    let mut st = inner.lock();
    for (u, value) in results {
        if let Some((si, ci)) = find_chr(&st, &a, &u) {
            emit_value(&mut st, &a, si, ci, &value, out);
        }
    }
    Ok(())
}

fn not_paired() -> DErr {
    derr("org.bluez.Error.NotPermitted", "Not paired")
}

/// `AcquireWrite(a{sv}) → (h fd, q mtu)`: a datagram socket whose packets are command writes
/// (BlueZ uses a SOCK_SEQPACKET pair; datagrams keep the same packet boundaries). A reader
/// thread turns each packet into a write until the client closes its end.
fn acquire_write(inner: &Arc<Inner>, msg: &Message, path: &str) {
    let checked: Result<u16, DErr> = (|| {
        let st = inner.lock();
        let (a, si, ci) = chr_of(&st, path)?;
        let d = &st.devices[&a];
        if !d.connected {
            return Err(not_connected());
        }
        let c = &d.services[si].chars[ci];
        if !c.has("write-without-response") {
            return Err(derr(
                "org.bluez.Error.NotSupported",
                "Operation is not supported",
            ));
        }
        if d.smp.is_some() && smp::is_smp_char(&c.uuid) && !d.bonded {
            return Err(not_paired());
        }
        Ok(d.mtu)
    })();
    let mtu = match checked {
        Ok(m) => m,
        Err(e) => return inner.send_all(vec![error_reply(msg, &e)]),
    };
    let (ours, theirs) = match std::os::unix::net::UnixDatagram::pair() {
        Ok(p) => p,
        Err(e) => {
            let e = derr("org.bluez.Error.Failed", &format!("socketpair: {e}"));
            return inner.send_all(vec![error_reply(msg, &e)]);
        }
    };
    let weak = Arc::downgrade(inner);
    let path = path.to_string();
    let _ = ours.set_read_timeout(Some(Duration::from_millis(200)));
    let spawned = std::thread::Builder::new()
        .name("blesim-acquired-write".into())
        .spawn(move || {
            let mut buf = vec![0u8; usize::from(mtu)];
            loop {
                match ours.recv(&mut buf) {
                    Ok(0) => return, // the client closed its end
                    Ok(n) => {
                        let Some(inner) = weak.upgrade() else { return };
                        let mut out = Vec::new();
                        if incoming_write(
                            &inner,
                            &path,
                            buf[..n].to_vec(),
                            Some("command"),
                            &mut out,
                        )
                        .is_err()
                        {
                            return; // link lost or the characteristic is gone
                        }
                        inner.send_all(out);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if weak.strong_count() == 0 {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    if let Err(e) = spawned {
        let e = derr("org.bluez.Error.Failed", &format!("reader thread: {e}"));
        return inner.send_all(vec![error_reply(msg, &e)]);
    }
    let fd: dbus::arg::OwnedFd = std::os::fd::OwnedFd::from(theirs);
    inner.send_all(vec![msg.method_return().append2(fd, mtu)]);
}

enum AgentAsk {
    Confirm(u32),
    Passkey(u32),
}

fn pair(inner: &Arc<Inner>, msg: Message, path: &str) {
    let mut st = inner.lock();
    let a = match dev_of(&st, path) {
        Ok(a) => a,
        Err(e) => return inner.send_all(vec![error_reply(&msg, &e)]),
    };
    let d = &st.devices[&a];
    let fail = |e: DErr| inner.send_all(vec![error_reply(&msg, &e)]);
    if d.paired {
        return fail(derr("org.bluez.Error.AlreadyExists", "Already Exists"));
    }
    if d.pairing_busy {
        return fail(derr("org.bluez.Error.InProgress", "In Progress"));
    }
    if !d.in_range || !st.powered {
        return fail(derr(
            "org.bluez.Error.ConnectionAttemptFailed",
            "Page Timeout",
        ));
    }
    let ask = match d.pairing.clone() {
        Pairing::JustWorks => {
            let mut out = Vec::new();
            finish_pair(&mut st, &a, &mut out);
            out.push(msg.method_return());
            return inner.send_all(out);
        }
        Pairing::Fail(reason) => return fail(DErr("org.bluez.Error.AuthenticationFailed", reason)),
        Pairing::NumericComparison(p) => AgentAsk::Confirm(p),
        Pairing::Passkey(p) => AgentAsk::Passkey(p),
    };
    let Some(agent) = st
        .agents
        .first()
        .map(|a| (a.sender.clone(), a.path.clone()))
    else {
        return fail(derr(
            "org.bluez.Error.AuthenticationFailed",
            "Authentication Failed (no agent)",
        ));
    };
    let dev = st.devices.get_mut(&a).unwrap();
    dev.pairing_busy = true;
    dev.pairing_cancelled = false;
    drop(st);
    // The agent is called from its own connection and thread, so the dispatch loop keeps
    // serving (the agent's process may call back into BlueZ meanwhile).
    let inner = inner.clone();
    std::thread::spawn(move || {
        let outcome = ask_agent(
            &inner.bus_address,
            &agent.0,
            &agent.1,
            &device_path(&a),
            ask,
        );
        let mut st = inner.lock();
        let mut out = Vec::new();
        let Some(d) = st.devices.get_mut(&a) else {
            return;
        };
        d.pairing_busy = false;
        let outcome = if d.pairing_cancelled {
            Err(derr(
                "org.bluez.Error.AuthenticationCanceled",
                "Authentication Canceled",
            ))
        } else {
            outcome
        };
        match outcome {
            Ok(()) => {
                finish_pair(&mut st, &a, &mut out);
                out.push(msg.method_return());
            }
            Err(e) => out.push(error_reply(&msg, &e)),
        }
        inner.send_all(out);
    });
}

fn finish_pair(st: &mut State, a: &str, out: &mut Vec<Message>) {
    let d = st.devices.get_mut(a).unwrap();
    d.paired = true;
    d.bonded = true;
    let mut ch = PropMap::new();
    ch.insert("Paired".into(), v(true));
    ch.insert("Bonded".into(), v(true));
    out.push(sig_changed(&device_path(a), I_DEVICE, ch));
    do_connect(st, a, out);
}

fn ask_agent(
    bus: &str,
    sender: &str,
    agent_path: &str,
    dev_path: &str,
    ask: AgentAsk,
) -> Result<(), DErr> {
    let failed = |t: String| DErr("org.bluez.Error.AuthenticationFailed", t);
    let mut ch =
        Channel::open_private(bus).map_err(|e| failed(format!("agent connection: {e}")))?;
    ch.register()
        .map_err(|e| failed(format!("agent connection: {e}")))?;
    let call = |member: &str| {
        Message::new_method_call(sender, agent_path, "org.bluez.Agent1", member).map_err(failed)
    };
    let m = match ask {
        AgentAsk::Confirm(p) => {
            call("RequestConfirmation")?.append2(opath(dev_path.to_string()), p)
        }
        AgentAsk::Passkey(_) => call("RequestPasskey")?.append1(opath(dev_path.to_string())),
    };
    match ch.send_with_reply_and_block(m, AGENT_TIMEOUT) {
        Ok(reply) => match ask {
            AgentAsk::Confirm(_) => Ok(()),
            AgentAsk::Passkey(p) => match reply.read1::<u32>() {
                Ok(entered) if entered == p => Ok(()),
                Ok(_) => Err(failed("Authentication Failed (passkey mismatch)".into())),
                Err(e) => Err(failed(format!("agent reply: {e}"))),
            },
        },
        Err(e) => match e.name() {
            Some("org.bluez.Error.Rejected") => Err(derr(
                "org.bluez.Error.AuthenticationRejected",
                "Authentication Rejected",
            )),
            Some("org.bluez.Error.Canceled") => Err(derr(
                "org.bluez.Error.AuthenticationCanceled",
                "Authentication Canceled",
            )),
            _ => Err(failed(format!(
                "Authentication Failed ({})",
                e.message().unwrap_or("agent error")
            ))),
        },
    }
}
