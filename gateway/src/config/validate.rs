//! Checks that need no filesystem: values, ranges and rules across fields, on the config as
//! written (before relative paths are resolved). Pure: the same config always gives the same
//! [`Problem`]s, each naming its setting by [`KeyPath`]; [`super::positions`] locates them.

use super::diagnostic::Severity;
use super::positions::KeyPath;
use super::schema::{ClockSource, Config, ReceiverConfig, VERSION};
use std::collections::HashSet;

/// One problem with a setting, before it is located in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The setting the problem is about (its value is where the diagnostic points).
    pub at: KeyPath,
    /// Error (the config is refused) or warning (reported, accepted).
    pub severity: Severity,
    /// What is wrong and, where possible, what would be right.
    pub message: String,
}

impl Problem {
    /// An error at `at`.
    pub fn error(at: KeyPath, message: impl Into<String>) -> Problem {
        Problem {
            at,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    /// A warning at `at`.
    pub fn warning(at: KeyPath, message: impl Into<String>) -> Problem {
        Problem {
            at,
            severity: Severity::Warning,
            message: message.into(),
        }
    }
}

/// Baud rates a serial port can be set to on Linux (the termios `Bnnn` constants).
pub const STANDARD_BAUD_RATES: &[u32] = &[
    50, 75, 110, 134, 150, 200, 300, 600, 1_200, 1_800, 2_400, 4_800, 9_600, 19_200, 38_400,
    57_600, 115_200, 230_400, 460_800, 500_000, 576_000, 921_600, 1_000_000, 1_152_000, 1_500_000,
    2_000_000, 2_500_000, 3_000_000, 3_500_000, 4_000_000,
];

/// Most minutes `[firmware] in_use_minutes` may be (one week).
pub const MAX_IN_USE_MINUTES: u64 = 7 * 24 * 60;

/// Whether `s` can be one level of an MQTT topic: non-empty, no `/`, `+`, `#`, whitespace or NUL.
pub fn is_topic_safe(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#' | '\0') || c.is_whitespace())
}

fn version(out: &mut Vec<Problem>, v: u32) {
    if v != VERSION {
        out.push(Problem::error(
            KeyPath::of("version"),
            format!("unsupported config version {v}; this wardgate reads version {VERSION}"),
        ));
    }
}

fn topic_safe(out: &mut Vec<Problem>, at: KeyPath, value: &str, what: &str) {
    if !is_topic_safe(value) {
        out.push(Problem::error(
            at,
            format!("{what} `{value}` must be non-empty and contain no `/`, `+`, `#` or spaces"),
        ));
    }
}

fn port(out: &mut Vec<Problem>, at: KeyPath, port: u16) {
    if port == 0 {
        out.push(Problem::error(at, "port must be between 1 and 65535"));
    }
}

/// The problems of a gateway config that can be seen without the filesystem.
pub fn gateway(c: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    version(&mut out, *c.version.get_ref());
    let gw = KeyPath::of("gateway");
    topic_safe(
        &mut out,
        gw.clone().key("id"),
        c.gateway.id.get_ref(),
        "gateway id",
    );
    topic_safe(
        &mut out,
        gw.clone().key("site"),
        c.gateway.site.get_ref(),
        "site",
    );
    topic_safe(
        &mut out,
        gw.clone().key("ward"),
        c.gateway.ward.get_ref(),
        "ward",
    );
    if let Some(clock) = &c.gateway.clock {
        if let Err(e) = ClockSource::parse(clock.get_ref()) {
            out.push(Problem::error(gw.clone().key("clock"), e));
        }
    }
    let up = KeyPath::of("uplink");
    topic_safe(
        &mut out,
        up.clone().key("host"),
        c.uplink.host.get_ref(),
        "host",
    );
    port(&mut out, up.clone().key("port"), *c.uplink.port.get_ref());
    if c.uplink.ack == super::schema::AckMode::Upstream
        && c.uplink.receiver_certs.is_empty()
        && c.uplink.receiver_ca.is_none()
    {
        out.push(Problem::error(
            up.clone().key("receiver_certs"),
            "upstream acks must be signed by a trusted receiver: set receiver_certs (the \
             receivers' certificates) or receiver_ca (their CA); without one no ack could ever \
             be verified and nothing would leave the store",
        ));
    }
    let encrypt = c.uplink.encrypt.as_ref().map(|e| *e.get_ref());
    if encrypt == Some(true) && c.uplink.receiver_certs.is_empty() {
        out.push(Problem::error(
            up.clone().key("encrypt"),
            "encrypt = true needs the receivers' certificates in receiver_certs: their public \
             keys are what batches are encrypted to",
        ));
    }
    if encrypt != Some(false) && c.uplink.receiver_certs.len() > crate::encryption::MAX_RECIPIENTS {
        out.push(Problem::error(
            up.clone().key("receiver_certs"),
            format!(
                "messages are encrypted to at most {} receivers; list fewer receiver_certs, or \
                 set encrypt = false",
                crate::encryption::MAX_RECIPIENTS
            ),
        ));
    }
    let store = KeyPath::of("store");
    let positive = [
        (&up, "keepalive_s", c.uplink.keepalive_s as u128),
        (&up, "batch_max", c.uplink.batch_max as u128),
        (&up, "max_inflight", c.uplink.max_inflight as u128),
        (&up, "ack_timeout_s", c.uplink.ack_timeout_s as u128),
        (&up, "backoff_max_s", c.uplink.backoff_max_s as u128),
        (&up, "heartbeat_s", c.uplink.heartbeat_s as u128),
        (&store, "commit_max_rows", c.store.commit_max_rows as u128),
        (
            &store,
            "commit_interval_ms",
            c.store.commit_interval_ms as u128,
        ),
        (&store, "max_bytes", c.store.max_bytes as u128),
        (&store, "max_age_hours", c.store.max_age_hours as u128),
        (&store, "buffer_max_rows", c.store.buffer_max_rows as u128),
        (&store, "max_pages", c.store.max_pages.unwrap_or(1) as u128),
    ];
    for (table, key, value) in positive {
        if value == 0 {
            out.push(Problem::error(
                table.clone().key(key),
                format!("{key} must be greater than 0"),
            ));
        }
    }
    if c.uplink.keepalive_s > 65_535 {
        out.push(Problem::error(
            up.clone().key("keepalive_s"),
            "keepalive_s must be at most 65535 (MQTT limit)",
        ));
    }
    if c.store.path.as_os_str().is_empty() {
        out.push(Problem::error(
            store.key("path"),
            "store path is empty; give a file, e.g. /var/lib/wardgate/store.db",
        ));
    }
    serial(&mut out, c);
    lines_maps(&mut out, c);
    exec(&mut out, c);
    locations(&mut out, c);
    firmware(&mut out, c);
    if let Some(ble) = &c.ble {
        for (key, message) in ble.problems() {
            let mut at = KeyPath::of("ble");
            at.0.extend(KeyPath::parse(&key).0);
            out.push(Problem::error(at, message));
        }
    }
    out
}

/// Longest `location` of a device, characters.
pub const LOCATION_MAX: usize = 64;

/// Whether `s` is a device `location` (issue 11 item 7): 1 to [`LOCATION_MAX`] characters,
/// `/`-separated parts, each non-empty and made of `A-Z a-z 0-9 . _ -` (e.g. `ward-7/bed-12`).
/// Errors say what is wrong, in installer words.
pub fn check_location(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("location is empty; remove it or give one, e.g. \"ward-7/bed-12\"".into());
    }
    if s.chars().count() > LOCATION_MAX {
        return Err(format!(
            "location is {} characters long; at most {LOCATION_MAX}",
            s.chars().count()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(format!(
            "location `{s}` contains {c:?}; use ASCII letters (A-Z, a-z), digits, `.`, `_`, `-` in `/`-separated parts, e.g. \"ward-7/bed-12\""
        ));
    }
    if s.split('/').any(str::is_empty) {
        return Err(format!(
            "location `{s}` has an empty part (a leading, trailing or doubled `/`)"
        ));
    }
    if s.split('/').any(|p| p.chars().all(|c| c == '.')) {
        return Err(format!(
            "location `{s}` has a part made only of dots; name the ward, room or bed"
        ));
    }
    Ok(())
}

/// The `location` of every configured device: `[[serial]]`, `[[exec]]`, `[[ble.device]]`, and
/// of every `[[ble.tag]]` rule (its tags').
fn locations(out: &mut Vec<Problem>, c: &Config) {
    let serial = c
        .serial
        .iter()
        .enumerate()
        .map(|(i, s)| (KeyPath::of("serial").index(i), s.location.as_deref()));
    let exec = c
        .exec
        .iter()
        .enumerate()
        .map(|(i, e)| (KeyPath::of("exec").index(i), e.location.as_deref()));
    let ble = c.ble.iter().flat_map(|b| {
        b.devices.iter().enumerate().map(|(i, d)| {
            (
                KeyPath::of("ble").key("device").index(i),
                d.location.as_deref(),
            )
        })
    });
    let tags = c.ble.iter().flat_map(|b| {
        b.tags.iter().enumerate().map(|(i, t)| {
            (
                KeyPath::of("ble").key("tag").index(i),
                t.location.as_deref(),
            )
        })
    });
    for (at, location) in serial.chain(exec).chain(ble).chain(tags) {
        if let Some(Err(e)) = location.map(check_location) {
            out.push(Problem::error(at.key("location"), e));
        }
    }
}

fn serial(out: &mut Vec<Problem>, c: &Config) {
    let mut names = HashSet::new();
    for (i, s) in c.serial.iter().enumerate() {
        let at = |key: &str| KeyPath::of("serial").index(i).key(key);
        if !is_topic_safe(&s.name) {
            out.push(Problem::error(at("name"), format!("serial device name `{}` must be non-empty and contain no `/`, `+`, `#` or spaces (it is part of MQTT topics)", s.name)));
        }
        if !names.insert(s.name.as_str()) {
            out.push(Problem::error(
                at("name"),
                format!("serial device name `{}` is used twice", s.name),
            ));
        }
        if !(5..=8).contains(&s.data_bits) {
            out.push(Problem::error(
                at("data_bits"),
                format!("serial `{}`: data_bits must be 5, 6, 7 or 8", s.name),
            ));
        }
        if !(1..=2).contains(&s.stop_bits) {
            out.push(Problem::error(
                at("stop_bits"),
                format!("serial `{}`: stop_bits must be 1 or 2", s.name),
            ));
        }
        match s.baud {
            Some(0) => out.push(Problem::error(
                at("baud"),
                format!("serial `{}`: baud must be greater than 0", s.name),
            )),
            Some(b) if !STANDARD_BAUD_RATES.contains(&b) => out.push(Problem::error(
                at("baud"),
                format!(
                    "serial `{}`: baud {b} is not a standard rate (e.g. 9600, 19200, 38400, 57600, 115200); the device's manual names its rate",
                    s.name
                ),
            )),
            _ => {}
        }
        if s.serial_number
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            out.push(Problem::error(at("serial_number"), format!("serial `{}`: serial_number is empty; remove it or give the device's serial number", s.name)));
        }
        if s.path.as_os_str().is_empty() {
            out.push(Problem::error(
                at("path"),
                format!("serial `{}`: path is empty", s.name),
            ));
        }
        lines_device(out, c, i, s);
        numerics_every(out, i, s);
        let p = s.path.to_string_lossy();
        if p.starts_with("/dev/ttyUSB") || p.starts_with("/dev/ttyACM") {
            out.push(Problem::warning(at("path"), format!("serial `{}`: {p} can be renumbered at reboot; use its /dev/serial/by-id/ path so data cannot land on another bed's device", s.name)));
        }
    }
}

/// `numerics_every_s` of a `[[serial]]` device: cms50 only (the other protocols send their
/// numerics at the device's own pace), at most
/// [`MAX_NUMERICS_EVERY_S`](wardgate_adapters::serial::config::MAX_NUMERICS_EVERY_S).
fn numerics_every(out: &mut Vec<Problem>, i: usize, s: &wardgate_adapters::serial::SerialConfig) {
    use wardgate_adapters::serial::config::MAX_NUMERICS_EVERY_S;
    use wardgate_adapters::serial::ProtocolName;
    let Some(n) = s.numerics_every_s else {
        return;
    };
    let at = KeyPath::of("serial").index(i).key("numerics_every_s");
    let name = &s.name;
    if s.protocol != ProtocolName::Cms50 {
        out.push(Problem::error(
            at,
            format!(
                "serial `{name}`: numerics_every_s is for protocol \"cms50\" (60 frames a second); protocol {} sends its numerics at its own pace: remove it",
                s.protocol.as_str()
            ),
        ));
    } else if n > MAX_NUMERICS_EVERY_S {
        out.push(Problem::error(
            at,
            format!(
                "serial `{name}`: numerics_every_s {n} is more than {MAX_NUMERICS_EVERY_S} (one SpO2 a minute); 1 sends SpO2 and pulse once a second, 0 with every frame"
            ),
        ));
    }
}

/// A `[[serial]]` device of protocol `lines`: its map exists (and only it has one), its baud
/// rate is given, and a `serial_number` can be checked (the map has an `id` field).
fn lines_device(
    out: &mut Vec<Problem>,
    c: &Config,
    i: usize,
    s: &wardgate_adapters::serial::SerialConfig,
) {
    use wardgate_adapters::serial::ProtocolName;
    let at = |key: &str| KeyPath::of("serial").index(i).key(key);
    let name = &s.name;
    if s.protocol != ProtocolName::Lines {
        if s.map.is_some() {
            out.push(Problem::error(
                at("map"),
                format!(
                    "serial `{name}`: map is for protocol \"lines\"; protocol {} needs none",
                    s.protocol.as_str()
                ),
            ));
        }
        return;
    }
    let Some(map) = &s.map else {
        out.push(Problem::error(
            at("protocol"),
            format!("serial `{name}`: protocol lines needs map = \"NAME\" of a [[lines_map]]"),
        ));
        return;
    };
    if s.baud.is_none() {
        out.push(Problem::error(
            at("protocol"),
            format!(
                "serial `{name}`: protocol lines has no standard baud rate: set baud (the device's manual names it, e.g. 9600 or 115200)"
            ),
        ));
    }
    match c.lines_map.iter().find(|m| &m.name == map) {
        None => out.push(Problem::error(
            at("map"),
            format!(
                "serial `{name}`: no [[lines_map]] named `{map}`{}",
                if c.lines_map.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (there are: {})",
                        c.lines_map
                            .iter()
                            .map(|m| m.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ),
        )),
        Some(m) => {
            let has_id = m
                .fields
                .iter()
                .any(|f| f.kind == wardgate_adapters::serial::protocols::lines::map::FieldKind::Id);
            if s.serial_number.is_some() && !has_id {
                out.push(Problem::error(
                    at("serial_number"),
                    format!(
                        "serial `{name}`: serial_number cannot be checked: map `{map}` has no field of kind \"id\""
                    ),
                ));
            }
        }
    }
}

/// `[[lines_map]]`: unique names and every problem of each map at its key.
fn lines_maps(out: &mut Vec<Problem>, c: &Config) {
    let mut names = HashSet::new();
    for (i, m) in c.lines_map.iter().enumerate() {
        let at = KeyPath::of("lines_map").index(i);
        if !m.name.trim().is_empty() && !names.insert(m.name.as_str()) {
            out.push(Problem::error(
                at.clone().key("name"),
                format!("lines_map name `{}` is used twice", m.name),
            ));
        }
        for (key, message) in m.problems() {
            let mut p = at.clone();
            p.0.extend(KeyPath::parse(&key).0);
            out.push(Problem::error(
                p,
                format!("lines_map `{}`: {message}", m.name),
            ));
        }
    }
}

/// `[[exec]]`: each plug-in's own problems, and names unique among plug-ins and serial devices
/// (an adapter's name appears alone in logs and `wardgate status`).
fn exec(out: &mut Vec<Problem>, c: &Config) {
    let mut names = HashSet::new();
    for (i, e) in c.exec.iter().enumerate() {
        let at = KeyPath::of("exec").index(i);
        if !names.insert(e.name.as_str()) {
            out.push(Problem::error(
                at.clone().key("name"),
                format!("plug-in name `{}` is used twice", e.name),
            ));
        } else if c.serial.iter().any(|s| s.name == e.name) || e.name == "ble" {
            out.push(Problem::error(
                at.clone().key("name"),
                format!(
                    "plug-in name `{}` is also the name of another adapter; choose another",
                    e.name
                ),
            ));
        }
        for (key, message) in e.problems() {
            let mut p = at.clone();
            p.0.extend(KeyPath::parse(&key).0);
            out.push(Problem::error(p, message));
        }
        if e.env.get("PATH").is_some_and(|p| p.trim().is_empty()) {
            out.push(Problem::warning(
                at.clone().key("env"),
                format!(
                    "plug-in `{}`: env PATH is empty: a script starting `#!/usr/bin/env python3` finds no interpreter; leave PATH out for the default",
                    e.name
                ),
            ));
        }
    }
}

/// `[firmware]`: trust apart from the TLS CA, window and time zone, bounds, and classes whose
/// devices are configured, named unambiguously, each in one class.
fn firmware(out: &mut Vec<Problem>, c: &Config) {
    let Some(f) = &c.firmware else { return };
    let fw = KeyPath::of("firmware");
    if f.signer_certs.is_empty() && f.signer_ca.is_none() {
        out.push(Problem::error(
            fw.clone(),
            "[firmware] needs its own trust: signer_certs (firmware signer certificates) or \
             signer_ca (the firmware CA); without one no job could be verified",
        ));
    }
    if let Some(ca) = &f.signer_ca {
        if ca.get_ref() == c.uplink.ca.get_ref() {
            out.push(Problem::error(
                fw.clone().key("signer_ca"),
                "signer_ca is the TLS CA (uplink.ca): firmware trust must be configured apart \
                 from it, so that a certificate for the broker connection can never sign firmware",
            ));
        }
    }
    if let Some(w) = &f.window {
        let times = &w.get_ref().0;
        if times.len() != 2 {
            out.push(Problem::error(
                fw.clone().key("window"),
                format!(
                    "window has {} time(s); it must be [\"HH:MM\", \"HH:MM\"] or \"HH:MM-HH:MM\" (start, end; local time of `timezone`)",
                    times.len()
                ),
            ));
        } else {
            let mut ok = true;
            for (i, (t, what)) in times.iter().zip(["start", "end"]).enumerate() {
                if super::schema::TimeOfDay::parse(t).is_none() {
                    ok = false;
                    out.push(Problem::error(
                        fw.clone().key("window").index(i),
                        format!(
                            "window {what} `{t}` is not a time of day: HH:MM from 00:00 to 23:59 (an end before the start crosses midnight)"
                        ),
                    ));
                }
            }
            if ok && times[0] == times[1] {
                out.push(Problem::error(
                    fw.clone().key("window").index(1),
                    format!(
                        "window start and end are both `{}`: an empty window would never open; leave `window` out for any time",
                        times[0]
                    ),
                ));
            }
        }
    }
    if let Some(tz) = &f.timezone {
        if let Err(e) = super::schema::check_tz(tz.get_ref()) {
            out.push(Problem::error(fw.clone().key("timezone"), e));
        }
    }
    if f.min_battery > 100 {
        out.push(Problem::error(
            fw.clone().key("min_battery"),
            format!(
                "min_battery {} is not a percentage (0 to 100)",
                f.min_battery
            ),
        ));
    }
    // A week: far beyond any ward's idea of "recently used", far below an overflow.
    if f.in_use_minutes > MAX_IN_USE_MINUTES {
        out.push(Problem::error(
            fw.clone().key("in_use_minutes"),
            format!(
                "in_use_minutes {} is out of range (0 to {MAX_IN_USE_MINUTES}, one week)",
                f.in_use_minutes
            ),
        ));
    }
    if f.retry_initial_s > 900 {
        out.push(Problem::error(
            fw.clone().key("retry_initial_s"),
            format!(
                "retry_initial_s {} is out of range (1 to 900: the back-off is capped at 15 min)",
                f.retry_initial_s
            ),
        ));
    }
    for (key, v) in [
        ("cache_max_bytes", f.cache_max_bytes as u128),
        ("max_parallel", f.max_parallel as u128),
        ("retry_initial_s", f.retry_initial_s as u128),
    ] {
        if v == 0 {
            out.push(Problem::error(
                fw.clone().key(key),
                format!("{key} must be greater than 0"),
            ));
        }
    }
    let devices = super::devices::configured(c);
    let mut class_of: std::collections::HashMap<String, &str> = Default::default();
    for (class, refs) in &f.classes {
        let at = || fw.clone().key("classes").key(class);
        if !is_topic_safe(class) || class.len() > 64 {
            out.push(Problem::error(
                at(),
                format!(
                    "class `{class}` must be 1 to 64 characters without `/`, `+`, `#` or spaces"
                ),
            ));
        }
        for (i, r) in refs.iter().enumerate() {
            match super::devices::lookup(&devices, r) {
                Ok(d) => {
                    if let Some(other) = class_of.insert(d.id.clone(), class) {
                        if other != class {
                            out.push(Problem::error(
                                at().index(i),
                                format!("device `{r}` ({}) is in class `{other}` too: a device runs one firmware line", d.id),
                            ));
                        }
                    }
                }
                Err(super::devices::LookupError::Unknown) => out.push(Problem::error(
                    at().index(i),
                    format!("class `{class}`: device `{r}` is not configured ([[serial]] name, [[ble.device]] name or address)"),
                )),
                Err(super::devices::LookupError::Ambiguous(ids)) => out.push(Problem::error(
                    at().index(i),
                    format!("class `{class}`: device `{r}` could be any of {}; name it by id", ids.join(", ")),
                )),
            }
        }
    }
}

/// MQTT 3.1.1's largest remaining length (§2.2.3): no packet, hence no payload, is larger.
pub const MQTT_MAX_PAYLOAD: usize = 268_435_455;

/// The problems of a receiver config that can be seen without the filesystem.
pub fn receiver(c: &ReceiverConfig) -> Vec<Problem> {
    let mut out = Vec::new();
    version(&mut out, *c.version.get_ref());
    let mqtt = KeyPath::of("mqtt");
    topic_safe(
        &mut out,
        mqtt.clone().key("host"),
        c.mqtt.host.get_ref(),
        "host",
    );
    port(&mut out, mqtt.key("port"), *c.mqtt.port.get_ref());
    let rx = KeyPath::of("receiver");
    if c.receiver.gateway_certs.is_empty() && c.receiver.gateway_ca.is_none() {
        out.push(Problem::error(
            rx.clone().key("gateway_certs"),
            "neither gateway_certs nor gateway_ca is set: no batch could ever be verified",
        ));
    }
    if let Some(g) = &c.receiver.share_group {
        topic_safe(&mut out, rx.clone().key("share_group"), g, "share_group");
    }
    if let Err(e) = topic_filter(&c.receiver.topic) {
        out.push(Problem::error(rx.clone().key("topic"), e));
    }
    let max = c.receiver.max_message_bytes;
    if !(1024..=MQTT_MAX_PAYLOAD).contains(&max) {
        out.push(Problem::error(
            rx.clone().key("max_message_bytes"),
            format!("max_message_bytes must be between 1024 and {MQTT_MAX_PAYLOAD} (MQTT's largest packet)"),
        ));
    }
    if output_path(c.receiver.output.get_ref()).is_none() {
        out.push(Problem::error(
            rx.key("output"),
            format!(
                "output `{}` must be `sqlite:PATH` or `jsonl:PATH`",
                c.receiver.output.get_ref()
            ),
        ));
    }
    out
}

/// Whether `f` is a valid MQTT topic filter (MQTT 3.1.1 §4.7): non-empty levels or `+` alone
/// in a level, `#` only as the last level; no `$` at the start (a shared subscription is made
/// from `share_group`).
pub fn topic_filter(f: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("topic `{f}` is not an MQTT topic filter: {why}"));
    if f.is_empty() || f.contains('\0') {
        return bad("empty or holds NUL");
    }
    if f.starts_with('$') {
        return bad("it starts with `$` (use share_group for a shared subscription)");
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return bad("`#` must be a whole level, the last one");
        }
        if l.contains('+') && *l != "+" {
            return bad("`+` must be a whole level");
        }
    }
    Ok(())
}

/// `(kind, PATH)` of a receiver `output` (`sqlite:PATH` or `jsonl:PATH`); `None` if malformed.
pub fn output_path(output: &str) -> Option<(&str, &str)> {
    match output.split_once(':') {
        Some((kind @ ("sqlite" | "jsonl"), p)) if !p.is_empty() => Some((kind, p)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "version = 1\n[gateway]\nid = \"gw1\"\nsite = \"s\"\nward = \"w\"\n[uplink]\nhost = \"h\"\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nreceiver_certs = [\"rx.pem\"]\n";

    /// `(path, message)` of each problem of `BASE` + `extra`.
    fn problems(extra: &str) -> Vec<(String, String)> {
        let c: Config = toml::from_str(&format!("{BASE}{extra}")).unwrap();
        gateway(&c)
            .into_iter()
            .map(|p| (p.at.to_string(), p.message))
            .collect()
    }

    fn paths(extra: &str) -> Vec<String> {
        problems(extra).into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn encrypt_needs_receiver_certs_and_at_most_eight() {
        assert!(problems("encrypt = true\n").is_empty());
        assert!(problems("encrypt = false\n").is_empty());
        let no_certs = BASE.replace("receiver_certs = [\"rx.pem\"]\n", "ack = \"broker\"\n");
        let check = |extra: &str| -> Vec<String> {
            let c: Config = toml::from_str(&format!("{no_certs}{extra}")).unwrap();
            gateway(&c).into_iter().map(|p| p.at.to_string()).collect()
        };
        assert_eq!(check("encrypt = true\n"), ["uplink.encrypt"]);
        assert!(
            check("").is_empty(),
            "off by default without receiver_certs"
        );
        let nine = BASE.replace(
            "receiver_certs = [\"rx.pem\"]",
            &format!("receiver_certs = [{}]", ["\"r.pem\""; 9].join(", ")),
        );
        let c: Config = toml::from_str(&nine).unwrap();
        let at: Vec<String> = gateway(&c).into_iter().map(|p| p.at.to_string()).collect();
        assert_eq!(at, ["uplink.receiver_certs"]);
        let c: Config = toml::from_str(&format!("{nine}encrypt = false\n")).unwrap();
        assert!(gateway(&c).is_empty());
    }

    #[test]
    fn receiver_topic_filters_and_share_groups_are_checked() {
        assert!(topic_filter("wardgate/v1/+/+/+/batch").is_ok());
        assert!(topic_filter("wardgate/#").is_ok());
        for bad in [
            "",
            "wardgate/#/x",
            "ward#gate/x",
            "wardgate/a+/x",
            "$share/g/x",
        ] {
            assert!(topic_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_minimal_config_has_no_problem() {
        assert_eq!(problems(""), vec![]);
    }

    #[test]
    fn identifiers_must_be_usable_in_topics() {
        assert!(is_topic_safe("ward-7"));
        for bad in ["", "a/b", "a+", "#", "a b", "a\0"] {
            assert!(!is_topic_safe(bad), "{bad:?}");
        }
        let c: Config = toml::from_str(&BASE.replace("\"w\"", "\"w 7\"")).unwrap();
        let p = gateway(&c);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].at.to_string(), "gateway.ward");
        assert!(p[0].message.starts_with("ward `w 7` must be"), "{p:?}");
    }

    #[test]
    fn ranges_are_checked() {
        let c: Config = toml::from_str(&BASE.replace(
            "host = \"h\"",
            "host = \"h\"\nport = 0\nkeepalive_s = 70000\nbatch_max = 0",
        ))
        .unwrap();
        let p: Vec<String> = gateway(&c).into_iter().map(|p| p.at.to_string()).collect();
        assert_eq!(p, ["uplink.port", "uplink.batch_max", "uplink.keepalive_s"]);
        assert_eq!(
            paths("[store]\nmax_age_hours = 0\npath = \"\"\n"),
            ["store.max_age_hours", "store.path"]
        );
    }

    #[test]
    fn version_and_clock_are_checked() {
        let c: Config = toml::from_str(&BASE.replace("version = 1", "version = 2")).unwrap();
        assert_eq!(
            gateway(&c)[0].message,
            "unsupported config version 2; this wardgate reads version 1"
        );
        let c: Config =
            toml::from_str(&BASE.replace("ward = \"w\"", "ward = \"w\"\nclock = \"ntp\"")).unwrap();
        assert_eq!(gateway(&c)[0].at.to_string(), "gateway.clock");
    }

    #[test]
    fn serial_rules_name_the_entry_and_key() {
        let two = "[[serial]]\nname = \"a\"\npath = \"/dev/serial/by-id/x\"\nprotocol = \"cms50\"\n[[serial]]\nname = \"a\"\npath = \"/dev/ttyUSB0\"\nprotocol = \"masimo\"\nstop_bits = 3\ndata_bits = 9\nserial_number = \" \"\n";
        let p = problems(two);
        let at: Vec<&str> = p.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(
            at,
            [
                "serial[1].name",
                "serial[1].data_bits",
                "serial[1].stop_bits",
                "serial[1].serial_number",
                "serial[1].path"
            ]
        );
        assert!(p[0].1.contains("is used twice"));
        // the renumberable port is a warning, the rest errors
        let c: Config = toml::from_str(&format!("{BASE}{two}")).unwrap();
        let sev: Vec<Severity> = gateway(&c).into_iter().map(|p| p.severity).collect();
        assert_eq!(sev.iter().filter(|s| **s == Severity::Warning).count(), 1);
        assert_eq!(sev.last(), Some(&Severity::Warning));
    }

    #[test]
    fn numerics_every_s_is_for_cms50_and_at_most_a_minute() {
        let one = |protocol: &str, every: &str| {
            problems(&format!(
                "[[serial]]\nname = \"a\"\npath = \"/dev/serial/by-id/x\"\nprotocol = \"{protocol}\"\n{every}"
            ))
        };
        for ok in [
            "",
            "numerics_every_s = 0\n",
            "numerics_every_s = 1\n",
            "numerics_every_s = 60\n",
        ] {
            assert_eq!(one("cms50", ok), vec![], "{ok}");
        }
        let p = one("cms50", "numerics_every_s = 61\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "serial[0].numerics_every_s");
        assert!(p[0].1.contains("more than 60"), "{p:?}");
        let p = one("masimo", "numerics_every_s = 1\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "serial[0].numerics_every_s");
        assert!(p[0].1.contains("is for protocol \"cms50\""), "{p:?}");
        // A negative number is no u32: the file does not parse.
        let bad = format!(
            "{BASE}[[serial]]\nname = \"a\"\npath = \"/dev/serial/by-id/x\"\nprotocol = \"cms50\"\nnumerics_every_s = -1\n"
        );
        assert!(toml::from_str::<Config>(&bad).is_err());
    }

    #[test]
    fn a_non_standard_baud_rate_is_refused() {
        let one = |baud: &str| {
            problems(&format!(
                "[[serial]]\nname = \"a\"\npath = \"/dev/serial/by-id/x\"\nprotocol = \"cms50\"\n{baud}"
            ))
        };
        assert_eq!(one(""), vec![]);
        assert_eq!(one("baud = 9600\n"), vec![]);
        assert_eq!(one("baud = 115200\n"), vec![]);
        let p = one("baud = 123\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "serial[0].baud");
        assert!(
            p[0].1
                .starts_with("serial `a`: baud 123 is not a standard rate"),
            "{p:?}"
        );
        assert_eq!(
            one("baud = 0\n")[0].1,
            "serial `a`: baud must be greater than 0"
        );
    }

    #[test]
    fn locations_are_checked_on_every_device_kind() {
        assert_eq!(check_location("ward-7/bed-12"), Ok(()));
        assert_eq!(check_location("icu.b_2"), Ok(()));
        assert!(check_location(&"a".repeat(64)).is_ok());
        assert!(check_location(&"a".repeat(65))
            .unwrap_err()
            .contains("at most 64"));
        assert!(check_location("").unwrap_err().contains("empty"));
        assert!(check_location("ward 7").unwrap_err().contains("' '"));
        assert!(check_location("bed-12/")
            .unwrap_err()
            .contains("empty part"));
        assert!(check_location("a//b").unwrap_err().contains("empty part"));
        assert!(check_location("..").unwrap_err().contains("only of dots"));
        assert!(check_location("ward-7/./bed-1")
            .unwrap_err()
            .contains("only of dots"));
        assert_eq!(check_location("ward.7/bed-1.a"), Ok(()));
        assert!(check_location("/a").unwrap_err().contains("empty part"));
        assert!(check_location("chambre-\u{e9}").is_err());
        let ok = "[[serial]]\nname = \"a\"\npath = \"/dev/serial/by-id/x\"\nprotocol = \"cms50\"\nlocation = \"ward-7/bed-12\"\n";
        assert!(problems(ok).is_empty(), "{:?}", problems(ok));
        let bad = "[[serial]]\nname = \"a\"\npath = \"/dev/serial/by-id/x\"\nprotocol = \"cms50\"\nlocation = \"ward 7\"\n[[exec]]\nname = \"p\"\ncommand = \"/bin/true\"\nlocation = \"x//y\"\n[ble]\n[[ble.device]]\nname = \"d\"\naddress = \"A0:9E:1A:12:34:56\"\nrequire_bond = false\nlocation = \"\"\n[[ble.tag]]\nname = \"fridges\"\nservice_data = \"fcd2\"\nlocation = \"pharmacy fridge\"\n";
        assert_eq!(
            paths(bad),
            [
                "serial[0].location",
                "exec[0].location",
                "ble.device[0].location",
                "ble.tag[0].location"
            ]
        );
    }

    #[test]
    fn ble_problems_are_placed_under_ble() {
        let p =
            paths("[ble]\nadapter = \"hci-0\"\n[[ble.device]]\nname = \"d\"\naddress = \"nope\"\n");
        assert_eq!(p, ["ble.adapter", "ble.device[0].address"]);
    }

    #[test]
    fn receiver_rules() {
        let text = "version = 1\n[mqtt]\nhost = \"h\"\nport = 0\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[receiver]\ngateway_certs = []\noutput = \"postgres:x\"\nmax_message_bytes = 10\n";
        let c: ReceiverConfig = toml::from_str(text).unwrap();
        let p: Vec<String> = receiver(&c).into_iter().map(|p| p.at.to_string()).collect();
        assert_eq!(
            p,
            [
                "mqtt.port",
                "receiver.gateway_certs",
                "receiver.max_message_bytes",
                "receiver.output"
            ]
        );
        assert_eq!(output_path("sqlite:a.db"), Some(("sqlite", "a.db")));
        assert_eq!(output_path("jsonl:"), None);
    }
}
