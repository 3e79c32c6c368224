//! Configuration: the TOML schema, loading and validation (`wardgate check-config`).
//!
//! Two kinds of file share the loader: the gateway's (`[gateway]`, `[store]`, `[uplink]`,
//! `[[serial]]`, `[[lines_map]]`, `[[exec]]`, `[ble]`, `[firmware]`; see `config/wardgate.toml`) and the upstream receiver's (`[mqtt]`, `[receiver]`;
//! see `config/receiver.toml`). A file with a `[receiver]` table is a receiver config.
//!
//! Every problem is reported as `FILE:line:col: message` ([`Diagnostic`]). Loading goes:
//! 1. parse and deserialize ([`schema`]): syntax errors, unknown keys and wrong types come from
//!    the TOML parser with their span;
//! 2. pure checks ([`validate`]): identifiers usable in MQTT topics, ranges, duplicate device
//!    names, the BLE section's rules;
//! 3. relative paths resolved against the directory of the config file;
//! 4. filesystem checks ([`files`]): certificate and key files, the store's path, serial ports.
//!
//! Steps 2 and 4 name each problem's setting by [`KeyPath`]; [`positions`] finds where the
//! parser saw it, whatever TOML form wrote it. All problems are collected at once; warnings
//! (files not provisioned yet) come back with the config ([`Loaded`]) or with the errors.
//!
//! This module uses no other module of the crate (only `wardgate_adapters` for the device
//! sections), so everything may depend on it.

pub mod devices;
pub mod diagnostic;
pub mod files;
pub mod positions;
pub mod schema;
pub mod validate;
pub mod zone;

pub use diagnostic::{Diagnostic, Diagnostics, Severity};
pub use positions::KeyPath;
pub use schema::{
    AckMode, AnyConfig, ClockSource, Config, GatewaySection, MqttSection, ReceiverConfig,
    ReceiverSection, StoreSection, Synchronous, UplinkSection, VERSION,
};
pub use validate::{is_topic_safe, Problem};

use std::path::{Path, PathBuf};

/// A config that loaded, with the warnings found on the way (in file order).
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The validated config, relative paths resolved.
    pub config: T,
    /// Problems that do not refuse the config, e.g. a certificate not provisioned yet.
    pub warnings: Vec<Diagnostic>,
}

/// Which checks a load runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checks {
    /// Schema, values and the files the daemon will use (`run`, `receive`, `check-config`).
    Full,
    /// Schema and values only: for the installer commands that look at or repair those files
    /// themselves (`status` must work while a certificate is broken; `provision` replaces it).
    NoFiles,
}

/// Largest config file read, bytes: a config is a few KiB; anything larger is not one (and
/// `/dev/zero` must not fill the memory).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Loads and validates a gateway config. Errors carry every error as `FILE:line:col: message`
/// (warnings are dropped; [`load_any`] returns them).
pub fn load(path: &Path) -> Result<Config, Diagnostics> {
    load_gateway(path, Checks::Full)
}

/// [`load`] with the given [`Checks`].
pub fn load_gateway(path: &Path, checks: Checks) -> Result<Config, Diagnostics> {
    match load_with(path, checks)
        .map_err(Diagnostics::into_errors)?
        .config
    {
        AnyConfig::Gateway(c) => Ok(*c),
        AnyConfig::Receiver(_) => Err(Diagnostics(vec![Diagnostic::at(
            path,
            "",
            None,
            "this is a receiver config (it has [receiver]); this command needs a gateway config",
        )])),
    }
}

/// Loads and validates a receiver config (warnings are dropped, as with [`load`]).
pub fn load_receiver(path: &Path) -> Result<ReceiverConfig, Diagnostics> {
    match load_any(path).map_err(Diagnostics::into_errors)?.config {
        AnyConfig::Receiver(c) => Ok(*c),
        AnyConfig::Gateway(_) => Err(Diagnostics(vec![Diagnostic::at(
            path,
            "",
            None,
            "this is a gateway config; `wardgate receive` needs a [receiver] table",
        )])),
    }
}

/// Loads either kind of config file from `path` and validates it. The error holds the warnings
/// too (first), then the errors, each in file order.
pub fn load_any(path: &Path) -> Result<Loaded<AnyConfig>, Diagnostics> {
    load_with(path, Checks::Full)
}

/// [`load_any`] with the given [`Checks`]. Errors: the file cannot be read, is larger than
/// [`MAX_CONFIG_BYTES`], is not UTF-8, or does not validate.
pub fn load_with(path: &Path, checks: Checks) -> Result<Loaded<AnyConfig>, Diagnostics> {
    let fail = |m: String| Diagnostics(vec![Diagnostic::at(path, "", None, m)]);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(
            std::fs::File::open(path).map_err(|e| fail(format!("cannot read: {e}")))?,
            MAX_CONFIG_BYTES + 1,
        ),
        &mut bytes,
    )
    .map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(fail(format!(
            "larger than {} MiB: not a wardgate config",
            MAX_CONFIG_BYTES >> 20
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let good = std::str::from_utf8(&e.as_bytes()[..at]).unwrap_or_default();
        Diagnostics(vec![Diagnostic::at(
            path,
            good,
            Some(at..at),
            "not UTF-8 text here (a config file is UTF-8)",
        )])
    })?;
    parse_with(path, &text, checks)
}

/// Parses and validates `text` as the contents of `path` (relative paths resolve against its
/// directory). Like [`load_any`].
pub fn parse_any(path: &Path, text: &str) -> Result<Loaded<AnyConfig>, Diagnostics> {
    parse_with(path, text, Checks::Full)
}

/// [`parse_any`] with the given [`Checks`].
pub fn parse_with(
    path: &Path,
    text: &str,
    checks: Checks,
) -> Result<Loaded<AnyConfig>, Diagnostics> {
    let syntax = |e: toml::de::Error| {
        Diagnostics(vec![Diagnostic::at(
            path,
            text,
            e.span(),
            e.message().trim().replace('\n', "; "),
        )])
    };
    let table: toml::Table = toml::from_str(text).map_err(syntax)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let (config, problems) = if table.contains_key("receiver") {
        let mut c: ReceiverConfig = toml::from_str(text).map_err(syntax)?;
        let mut problems = validate::receiver(&c);
        resolve_receiver(&mut c, &base);
        if checks == Checks::Full {
            problems.extend(files::receiver(&c));
        }
        (AnyConfig::Receiver(Box::new(c)), problems)
    } else {
        let mut c: Config = toml::from_str(text).map_err(syntax)?;
        let mut problems = validate::gateway(&c);
        resolve_gateway(&mut c, &base);
        if checks == Checks::Full {
            problems.extend(files::gateway(&c));
        }
        (AnyConfig::Gateway(Box::new(c)), problems)
    };
    let positions = positions::Positions::parse(text);
    let mut diagnostics: Vec<Diagnostic> = problems
        .into_iter()
        .map(|p| {
            Diagnostic::at(path, text, positions.span(&p.at), p.message).with_severity(p.severity)
        })
        .collect();
    diagnostics.sort_by_key(|d| (d.severity == Severity::Error, d.line, d.col));
    if diagnostics.iter().any(|d| d.severity == Severity::Error) {
        Err(Diagnostics(diagnostics))
    } else {
        Ok(Loaded {
            config,
            warnings: diagnostics,
        })
    }
}

/// `base.join(p)` for a relative, non-empty `p`.
fn resolve(base: &Path, p: &mut PathBuf) {
    if p.is_relative() && !p.as_os_str().is_empty() {
        *p = base.join(&*p);
    }
}

fn resolve_gateway(c: &mut Config, base: &Path) {
    for p in [&mut c.uplink.ca, &mut c.uplink.cert, &mut c.uplink.key] {
        resolve(base, p.get_mut());
    }
    for p in c
        .uplink
        .receiver_certs
        .iter_mut()
        .chain(c.uplink.receiver_ca.as_mut())
        .chain(c.uplink.receiver_crl.iter_mut())
    {
        resolve(base, p.get_mut());
    }
    resolve(base, &mut c.store.path);
    if let Some(p) = c.store.status_path.as_mut() {
        resolve(base, p);
    }
    for s in c.serial.iter_mut() {
        resolve(base, &mut s.path);
    }
    for e in c.exec.iter_mut() {
        resolve(base, &mut e.command);
        if let Some(d) = e.working_dir.as_mut() {
            resolve(base, d);
        }
    }
    if let Some(f) = c.firmware.as_mut() {
        for p in f
            .signer_certs
            .iter_mut()
            .chain(f.signer_ca.as_mut())
            .chain(f.signer_crl.iter_mut())
        {
            resolve(base, p.get_mut());
        }
        if let Some(d) = f.cache_dir.as_mut() {
            resolve(base, d);
        }
    }
}

fn resolve_receiver(c: &mut ReceiverConfig, base: &Path) {
    for p in [&mut c.mqtt.ca, &mut c.mqtt.cert, &mut c.mqtt.key] {
        resolve(base, p.get_mut());
    }
    for p in c
        .receiver
        .gateway_certs
        .iter_mut()
        .chain(c.receiver.gateway_ca.as_mut())
        .chain(c.receiver.gateway_crl.iter_mut())
    {
        resolve(base, p.get_mut());
    }
    if let Some((kind, p)) = validate::output_path(c.receiver.output.get_ref()) {
        let resolved = format!("{kind}:{}", base.join(p).display());
        *c.receiver.output.get_mut() = resolved;
    }
    if let Some(d) = c.receiver.raw_dir.as_mut() {
        resolve(base, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "version = 1\n[gateway]\nid = \"gw1\"\nsite = \"s\"\nward = \"w\"\n[uplink]\nhost = \"h\"\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nreceiver_certs = [\"rx.pem\"]\n";

    fn problems(extra: &str) -> Vec<String> {
        let text = format!("{BASE}{extra}");
        match parse_any(Path::new("/nonexistent/w.toml"), &text) {
            Ok(l) => l.warnings.iter().map(|d| d.to_string()).collect(),
            Err(d) => d.0.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn a_minimal_config_is_accepted_with_warnings_for_absent_files() {
        assert_eq!(
            problems(""),
            [
                "/nonexistent/w.toml:1:1: warning: the store's directory /var/lib/wardgate does not exist (yet); under systemd StateDirectory=wardgate creates /var/lib/wardgate",
                "/nonexistent/w.toml:8:6: warning: /nonexistent/ca.pem does not exist (yet)",
                "/nonexistent/w.toml:9:8: warning: /nonexistent/c.pem does not exist (yet)",
                "/nonexistent/w.toml:10:7: warning: private key /nonexistent/k.pem does not exist (yet)",
                "/nonexistent/w.toml:11:19: warning: /nonexistent/rx.pem does not exist (yet)",
            ]
            .iter()
            .filter(|l| !l.contains("/var/lib/wardgate") || !Path::new("/var/lib/wardgate").is_dir())
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn warnings_come_back_with_the_errors_when_the_config_is_refused() {
        let d = parse_any(
            Path::new("/nonexistent/w.toml"),
            &BASE.replace("host = \"h\"", "host = \"h\"\nport = 0"),
        )
        .unwrap_err();
        let sev: Vec<Severity> = d.0.iter().map(|d| d.severity).collect();
        assert_eq!(sev.first(), Some(&Severity::Warning), "{d}");
        assert_eq!(sev.last(), Some(&Severity::Error), "{d}");
        assert_eq!(
            d.into_errors().to_string(),
            "/nonexistent/w.toml:8:8: port must be between 1 and 65535"
        );
    }

    /// The single error of `text` (a complete gateway config), as `line:col: message`.
    fn error_at(text: &str) -> String {
        let d = parse_any(Path::new("w.toml"), text)
            .unwrap_err()
            .into_errors();
        assert_eq!(d.0.len(), 1, "{d}");
        let d = &d.0[0];
        format!("{}:{}: {}", d.line, d.col, d.message)
    }

    const GW: &str = "version = 1\n[gateway]\nid = \"gw1\"\nsite = \"s\"\nward = \"w\"\n";
    const UP: &str =
        "[uplink]\nhost = \"h\"\nca = \"/ca.pem\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nreceiver_certs = [\"/rx.pem\"]\n";

    #[test]
    fn firmware_classes_name_configured_devices_once_and_unambiguously() {
        let devices = "[[serial]]\nname = \"bed12\"\npath = \"/dev/null\"\nprotocol = \"cms50\"\n\
                       [[serial]]\nname = \"bed14\"\npath = \"/dev/zero\"\nprotocol = \"cms50\"\n\
                       [ble]\n[[ble.device]]\nname = \"bed12\"\naddress = \"A0:9E:1A:12:34:56\"\n";
        let fw = |classes: &str| {
            format!("{GW}{UP}{devices}[firmware]\nsigner_ca = \"/fw-ca.pem\"\n[firmware.classes]\n{classes}")
        };
        // Lines: GW 5, UP 6, devices 12, [firmware] 24, signer_ca 25, [firmware.classes] 26.
        assert_eq!(
            error_at(&fw("acme = [\"bed12\"]\n")),
            "27:9: class `acme`: device `bed12` could be any of ble:A0:9E:1A:12:34:56, serial:bed12; name it by id"
        );
        assert_eq!(
            error_at(&fw("acme = [\"serial:bed12\"]\npolar = [\"bed14\", \"serial:bed12\"]\n")),
            "28:19: device `serial:bed12` (serial:bed12) is in class `acme` too: a device runs one firmware line"
        );
        assert_eq!(
            error_at(&fw("\"a/b\" = [\"bed14\"]\n")),
            "27:9: class `a/b` must be 1 to 64 characters without `/`, `+`, `#` or spaces"
        );
        let ok = parse_with(
            Path::new("/nonexistent/w.toml"),
            &fw("acme = [\"serial:bed12\", \"bed14\"]\npolar = [\"a0:9e:1a:12:34:56\"]\n"),
            Checks::NoFiles,
        )
        .unwrap();
        let AnyConfig::Gateway(c) = ok.config else {
            panic!("a gateway config")
        };
        let f = c.firmware.as_ref().unwrap();
        assert_eq!(f.min_battery, 30, "defaults");
        assert_eq!(
            f.cache_dir(&c.store),
            Path::new("/var/lib/wardgate/firmware")
        );
    }

    #[test]
    fn positions_follow_every_toml_form() {
        // dotted keys at the top level: the value of the second one
        let t = format!(
            "version = 1\nstore.path = \"s.db\"\nstore.max_age_hours = 0\n{}",
            &GW[12..]
        ) + UP;
        assert_eq!(error_at(&t), "3:23: max_age_hours must be greater than 0");
        // a spaced header and a quoted key
        let t = format!("{GW}[ store ]\n\"max_age_hours\" = 0\n{UP}");
        assert_eq!(error_at(&t), "7:19: max_age_hours must be greater than 0");
        // an inline table
        let t = format!(
            "version = 1\nstore = {{ path = \"s.db\", max_bytes = 0 }}\n{}{UP}",
            &GW[12..]
        );
        assert_eq!(error_at(&t), "2:38: max_bytes must be greater than 0");
        // the second [[serial]]
        let s = "[[serial]]\nname = \"a\"\npath = \"/dev/serial/by-id/a\"\nprotocol = \"cms50\"\nbaud = 9600\n";
        let t = format!(
            "{GW}{UP}{s}{}",
            s.replace("a\"", "b\"").replace("9600", "123")
        );
        assert!(
            error_at(&t).starts_with("21:8: serial `b`: baud 123 is not a standard rate"),
            "{}",
            error_at(&t)
        );
        // a key name in two tables ([store] and [[serial]]), only the second wrong
        let t = format!("{GW}[store]\npath = \"s.db\"\n{UP}[[serial]]\nname = \"a\"\npath = \"/dev/serial/by-id/a\"\nprotocol = \"cms50\"\nstop_bits = 1\n[[serial]]\nname = \"b\"\npath = \"\"\nprotocol = \"cms50\"\nstop_bits = 2\n");
        assert_eq!(error_at(&t), "21:8: serial `b`: path is empty");
    }

    #[test]
    fn serial_problems_point_at_their_own_key() {
        let p = problems("[[serial]]\nname = \"a\"\npath = \"/dev/x\"\nprotocol = \"cms50\"\n[[serial]]\nname = \"b\"\npath = \"/dev/x\"\nprotocol = \"cms50\"\nstop_bits = 3\n");
        assert!(
            p.contains(
                &"/nonexistent/w.toml:18:8: serial `b` uses the same port /dev/x as `a`"
                    .to_string()
            ),
            "{p:?}"
        );
        assert!(
            p.contains(
                &"/nonexistent/w.toml:20:13: serial `b`: stop_bits must be 1 or 2".to_string()
            ),
            "{p:?}"
        );
    }

    #[test]
    fn duplicate_names_and_topic_unsafe_ids_are_refused() {
        let p = problems("[[serial]]\nname = \"a\"\npath = \"/dev/x\"\nprotocol = \"cms50\"\n[[serial]]\nname = \"a\"\npath = \"/dev/y\"\nprotocol = \"masimo\"\nserial_number = \" \"\n");
        assert!(
            p.iter()
                .any(|l| l
                    .starts_with("/nonexistent/w.toml:17:8: serial device name `a` is used twice")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l
                    .starts_with("/nonexistent/w.toml:20:17: serial `a`: serial_number is empty")),
            "{p:?}"
        );
        let text = BASE.replace("id = \"gw1\"", "id = \"gw/1\"");
        let d = parse_any(Path::new("w.toml"), &text)
            .unwrap_err()
            .into_errors();
        assert!(
            d.to_string().starts_with("w.toml:3:6: gateway id `gw/1`"),
            "{d}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_carry_line_and_column() {
        let d = parse_any(Path::new("w.toml"), &format!("{BASE}bogus = 1\n")).unwrap_err();
        assert!(
            d.to_string()
                .starts_with("w.toml:12:1: unknown field `bogus`"),
            "{d}"
        );
        let d = parse_any(
            Path::new("w.toml"),
            &BASE.replace("host = \"h\"", "host = \"h\"\nport = 0"),
        )
        .unwrap_err()
        .into_errors();
        assert_eq!(
            d.to_string(),
            "w.toml:8:8: port must be between 1 and 65535"
        );
        let d = parse_any(
            Path::new("w.toml"),
            &BASE.replace("host = \"h\"", "host = \"h\"\nkeepalive_s = 70000"),
        )
        .unwrap_err();
        assert!(
            d.to_string().contains("keepalive_s must be at most 65535"),
            "{d}"
        );
    }

    /// Every error of `text` (a complete gateway config), as `line:col: message`.
    fn errors_at(text: &str) -> Vec<String> {
        parse_any(Path::new("w.toml"), text)
            .err()
            .map(|d| {
                d.into_errors()
                    .0
                    .iter()
                    .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn lines_devices_and_their_maps_are_checked_at_their_line_and_column() {
        let serial = "[[serial]]\nname = \"bed12\"\npath = \"/dev/null\"\nprotocol = \"lines\"\nmap = \"ox\"\nbaud = 115200\nserial_number = \"ox-001\"\n";
        let map = "[[lines_map]]\nname = \"ox\"\nsyntax = \"json\"\n[[lines_map.field]]\nname = \"dev\"\nkey = \"dev\"\nkind = \"id\"\n[[lines_map.field]]\nname = \"spo2\"\nkey = \"spo2\"\nmdc = \"MDC_PULS_OXIM_SAT_O2\"\nunit = \"%\"\n";
        // Lines: GW 1-5, UP 6-11, serial 12-18, map 19-30.
        assert_eq!(
            errors_at(&format!("{GW}{UP}{serial}{map}")),
            Vec::<String>::new()
        );
        // A map problem at the value that has it: the unit of field[1].
        let bad = map.replace("unit = \"%\"", "unit = \"/min\"");
        assert_eq!(
            errors_at(&format!("{GW}{UP}{serial}{bad}")),
            ["30:8: lines_map `ox`: unit \"/min\" is ambiguous: write \"{beat}/min\" or \"{breath}/min\""]
        );
        // The same map as an inline field table, and a column where syntax json wants a key.
        let inline = "[[lines_map]]\nname = \"ox\"\nsyntax = \"json\"\nfield = [ { name = \"dev\", key = \"dev\", kind = \"id\" }, { name = \"spo2\", column = 2, mdc = 150456, unit = \"%\" } ]\n";
        assert_eq!(
            errors_at(&format!("{GW}{UP}{serial}{inline}")),
            ["22:81: lines_map `ox`: syntax json locates fields by key, not column"]
        );
        // The device: a map that is not there, no baud, a serial number that cannot be checked.
        let other = serial.replace("map = \"ox\"", "map = \"oxx\"");
        assert_eq!(
            errors_at(&format!("{GW}{UP}{other}{map}")),
            ["16:7: serial `bed12`: no [[lines_map]] named `oxx` (there are: ox)"]
        );
        let no_baud = serial.replace("baud = 115200\n", "");
        assert_eq!(
            errors_at(&format!("{GW}{UP}{no_baud}{map}")),
            ["15:12: serial `bed12`: protocol lines has no standard baud rate: set baud (the device's manual names it, e.g. 9600 or 115200)"]
        );
        let no_id = map.replace("kind = \"id\"", "kind = \"record\"");
        assert_eq!(
            errors_at(&format!("{GW}{UP}{serial}{no_id}")),
            ["18:17: serial `bed12`: serial_number cannot be checked: map `ox` has no field of kind \"id\""]
        );
        let cms = serial.replace("protocol = \"lines\"", "protocol = \"cms50\"");
        assert_eq!(
            errors_at(&format!("{GW}{UP}{cms}{map}"))[0],
            "16:7: serial `bed12`: map is for protocol \"lines\"; protocol cms50 needs none"
        );
    }

    #[test]
    fn plugins_are_checked_at_their_line_and_column() {
        let exec = "[[exec]]\nname = \"pump\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"true\"]\nstop_grace_s = 30\nenv = { WARDGATE_PLUGIN = \"x\" }\n";
        // Lines: GW 1-5, UP 6-11, exec 12-17.
        assert_eq!(
            errors_at(&format!("{GW}{UP}{exec}")),
            [
                "16:16: plug-in `pump`: stop_grace_s must be between 1 and 15 s (the service itself has 20 s to stop)",
                "17:7: plug-in `pump`: WARDGATE_PLUGIN is set by wardgate itself"
            ]
            .map(|m| m.replace("plug-in `pump`: stop_grace_s", "stop_grace_s"))
        );
        // Not installed yet: a warning (the other devices must still start).
        let missing = "[[exec]]\nname = \"pump\"\ncommand = \"/nonexistent/pump.py\"\n";
        let l = parse_any(Path::new("w.toml"), &format!("{GW}{UP}{missing}")).unwrap();
        assert!(
            l.warnings
                .iter()
                .any(|d| d.to_string() == "w.toml:14:11: warning: plug-in `pump`: /nonexistent/pump.py does not exist (yet)"),
            "{:?}",
            l.warnings
        );
        // An empty PATH: a warning at the env table; max_lines_per_s bounded.
        let path = "[[exec]]\nname = \"pump\"\ncommand = \"/bin/sh\"\nenv = { PATH = \"\" }\nmax_lines_per_s = 0\n";
        let l = parse_any(Path::new("w.toml"), &format!("{GW}{UP}{path}")).unwrap_err();
        let text = l.to_string();
        assert!(
            text.contains("w.toml:15:7: warning: plug-in `pump`: env PATH is empty"),
            "{text}"
        );
        assert!(
            text.contains("w.toml:16:19: max_lines_per_s 0 must be between 1 and 100000"),
            "{text}"
        );
        // A plug-in name that is a serial device's too.
        let serial = "[[serial]]\nname = \"pump\"\npath = \"/dev/null\"\nprotocol = \"cms50\"\n";
        let ok_exec = "[[exec]]\nname = \"pump\"\ncommand = \"/bin/sh\"\n";
        assert_eq!(
            errors_at(&format!("{GW}{UP}{serial}{ok_exec}")),
            ["17:8: plug-in name `pump` is also the name of another adapter; choose another"]
        );
    }

    #[test]
    fn a_bad_location_is_reported_at_its_line_and_column() {
        let ble = "[ble]\n[[ble.device]]\nname = \"hr\"\naddress = \"A0:9E:1A:12:34:56\"\nrequire_bond = false\nlocation = \"ward-7/bed 12\"\n";
        // Lines: GW 1-5, UP 6-11, ble 12-17.
        assert_eq!(
            errors_at(&format!("{GW}{UP}{ble}")),
            ["17:12: location `ward-7/bed 12` contains ' '; use ASCII letters (A-Z, a-z), digits, `.`, `_`, `-` in `/`-separated parts, e.g. \"ward-7/bed-12\""]
        );
        let ok = ble.replace("bed 12", "bed-12");
        assert!(errors_at(&format!("{GW}{UP}{ok}")).is_empty());
    }
}
