//! `wardgate check-config F` (DESIGN §9, a contract): exit 0 for a usable config; exit 2 and one
//! `FILE:line:col: message` line per problem otherwise, pointing at the offending text. What a
//! user checks: the shipped reference configs pass; each kind of mistake is reported at the
//! right line and column with a message that says what is wrong.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wardgate_e2e::broker::Pki;
use wardgate_e2e::process::{run, Output};
use wardgate_e2e::workspace_root;

const BIN: &str = env!("CARGO_BIN_EXE_wardgate-e2e-bin");

fn wardgate(args: &[&std::ffi::OsStr]) -> Output {
    let mut c = std::process::Command::new(BIN);
    c.args(args);
    run(c, b"", Duration::from_secs(20)).unwrap()
}

fn check_config(path: &Path) -> Output {
    wardgate(&["check-config".as_ref(), path.as_os_str()])
}

/// A valid gateway config with real certificate files and an owner-only key.
struct Fixture {
    dir: tempfile::TempDir,
    pki: Pki,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = wardgate_e2e::temp_dir("check-config").unwrap();
        let pki = Pki::create(&dir.path().join("pki"), "check-config CA").unwrap();
        // The serial ports of `base()` (check-config warns about a port that does not exist).
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        for port in ["bed1-spo2", "bed2-monitor"] {
            std::fs::write(dir.path().join("dev").join(port), "").unwrap();
        }
        Fixture { dir, pki }
    }

    fn base(&self) -> String {
        format!(
            r#"# a valid gateway config
version = 1

[gateway]
id = "gw-e2e-01"
site = "st-e2e"
ward = "ward-9"

[store]
path = "store.db"

[uplink]
host = "127.0.0.1"
port = 8883
ca = "{ca}"
cert = "{cert}"
key = "{key}"
ack = "upstream"
keepalive_s = 5
receiver_certs = ["{rx}"]

[[serial]]
name = "bed1-spo2"
path = "dev/bed1-spo2"
protocol = "cms50"

[[serial]]
name = "bed2-monitor"
path = "dev/bed2-monitor"
protocol = "ansar-b"
"#,
            ca = self.pki.ca_pem.display(),
            cert = self.pki.gateway_cert.display(),
            key = self.pki.gateway_key.display(),
            rx = self.pki.receiver_cert.display(),
        )
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// 1-based (line, column in characters) of the `nth` (0-based) occurrence of `needle`.
fn locate(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let off = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("`{needle}` #{nth} not in the config"))
        .0;
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map(|i| i + 1).unwrap_or(0)..]
        .chars()
        .count()
        + 1;
    (line, col)
}

/// Asserts exit 2 and exactly one diagnostic, at `at`, whose message starts with `message`.
fn assert_one_problem(out: &Output, file: &Path, at: (usize, usize), message: &str) {
    assert_eq!(out.code(), Some(2), "exit status; stderr: {}", out.stderr);
    assert_eq!(out.stdout, "", "nothing on stdout for a broken config");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one problem, one line: {:?}", out.stderr);
    let prefix = format!("{}:{}:{}: ", file.display(), at.0, at.1);
    assert!(
        lines[0].starts_with(&prefix),
        "want `{prefix}{message}…`\n got `{}`",
        lines[0]
    );
    assert!(
        lines[0][prefix.len()..].starts_with(message),
        "want `{prefix}{message}…`\n got `{}`",
        lines[0]
    );
}

#[test]
fn valid_config_with_real_files_passes_silently() {
    let f = Fixture::new();
    let p = f.write("wardgate.toml", &f.base());
    let out = check_config(&p);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), format!("{}: ok", p.display()));
    assert_eq!(out.stderr, "", "no warnings when every file is there");
}

#[test]
fn shipped_reference_configs_pass() {
    // config/wardgate.toml and config/receiver.toml point at /etc/...: check-config passes and
    // warns at the exact position of each file that is not provisioned on this machine.
    let mut checked = 0;
    for name in [
        "config/wardgate.toml",
        "config/receiver.toml",
        "config/demo.toml",
        "config/receiver-demo.toml",
    ] {
        let path = workspace_root().join(name);
        if !path.exists() {
            assert_ne!(
                name, "config/demo.toml",
                "the demo config is embedded by `wardgate demo`"
            );
            continue;
        }
        checked += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let out = check_config(&path);
        assert_eq!(out.code(), Some(0), "{name}: {out:?}");
        assert_eq!(out.stdout.trim(), format!("{}: ok", path.display()));
        for line in out.stderr.lines() {
            let rest = line
                .strip_prefix(&format!("{}:", path.display()))
                .unwrap_or_else(|| panic!("{name}: not `FILE:line:col: …`: {line}"));
            let mut it = rest.splitn(3, ':');
            let (l, c, msg): (usize, usize, &str) = (
                it.next().unwrap().parse().unwrap(),
                it.next().unwrap().parse().unwrap(),
                it.next().unwrap(),
            );
            assert!(
                msg.starts_with(" warning: "),
                "{name}: a reference config may only draw warnings: {line}"
            );
            if !msg.ends_with("does not exist (yet)") {
                continue;
            }
            // A missing file: the position is the opening quote of the path it names.
            let src_line = text.lines().nth(l - 1).unwrap();
            let quoted: String = src_line.chars().skip(c - 1).collect();
            assert!(
                quoted.starts_with('"'),
                "{name}:{l}:{c} does not point at a string: {src_line}"
            );
            let value = quoted[1..].split('"').next().unwrap();
            assert!(
                msg.contains(value.trim_start_matches("./")),
                "{name}:{l}:{c} points at `{value}`, message: {msg}"
            );
        }
    }
    assert!(checked >= 2, "the reference configs are missing");

    // The shipped gateway config with its files and state directory provisioned (same lines):
    // no warning at all.
    let shipped = workspace_root().join("config/wardgate.toml");
    if shipped.exists() {
        let f = Fixture::new();
        let text: String = std::fs::read_to_string(&shipped)
            .unwrap()
            .lines()
            .map(|l| {
                let file = match l.split('=').next().map(str::trim) {
                    Some("ca") if l.starts_with("ca") => Some(&f.pki.ca_pem),
                    Some("cert") if l.starts_with("cert") => Some(&f.pki.gateway_cert),
                    Some("key") if l.starts_with("key") => Some(&f.pki.gateway_key),
                    _ => None,
                };
                match file {
                    Some(p) => format!(
                        "{} = \"{}\"\n",
                        l.split('=').next().unwrap().trim(),
                        p.display()
                    ),
                    None if l.starts_with("receiver_certs") => {
                        format!("receiver_certs = [\"{}\"]\n", f.pki.receiver_cert.display())
                    }
                    // The serial ports: plugged in.
                    None if l.starts_with("path = \"/dev/serial/by-id/") => {
                        let port = f
                            .dir
                            .path()
                            .join(l.rsplit('/').next().unwrap().trim_end_matches('"'));
                        std::fs::write(&port, "").unwrap();
                        format!("path = \"{}\"\n", port.display())
                    }
                    // The state directory (systemd's StateDirectory= makes it in production).
                    None if l.starts_with("#path = \"/var/lib/wardgate")
                        || l.starts_with("path = \"/var/lib/wardgate") =>
                    {
                        format!("path = \"{}\"\n", f.dir.path().join("store.db").display())
                    }
                    None => format!("{l}\n"),
                }
            })
            .collect();
        let p = f.write("wardgate.toml", &text);
        let out = check_config(&p);
        assert_eq!(
            (out.code(), out.stderr.as_str()),
            (Some(0), ""),
            "provisioned reference config: {out:?}"
        );
    }
}

#[test]
fn each_kind_of_mistake_is_reported_at_its_line_and_column() {
    let f = Fixture::new();
    let base = f.base();
    // (case, replace, with, text whose first character is the reported position (nth), message)
    let cases: &[(&str, &str, &str, &str, usize, &str)] = &[
        // Syntax error: an unterminated string is reported where the line ends.
        (
            "syntax",
            "site = \"st-e2e\"",
            "site = \"st-e2e",
            "\n\n[store]",
            0,
            "invalid basic string",
        ),
        (
            "unknown-key",
            "host = \"127.0.0.1\"",
            "host = \"127.0.0.1\"\n  hots = \"x\"",
            "hots",
            0,
            "unknown field `hots`, expected one of `host`",
        ),
        (
            "port-zero",
            "port = 8883",
            "port = 0",
            "0\nca =",
            0,
            "port must be between 1 and 65535",
        ),
        (
            "protocol",
            "protocol = \"ansar-b\"",
            "protocol = \"foo\"",
            "\"foo\"",
            0,
            "unknown variant `foo`, expected one of `cms50`, `ansar-b`, `masimo`",
        ),
        (
            "type",
            "keepalive_s = 5",
            "keepalive_s = \"5\"",
            "\"5\"",
            0,
            "invalid type: string \"5\", expected u64",
        ),
        (
            "version",
            "version = 1",
            "version = 2",
            "2\n",
            0,
            "unsupported config version 2; this wardgate reads version 1",
        ),
        (
            "ack",
            "ack = \"upstream\"",
            "ack = \"never\"",
            "\"never\"",
            0,
            "unknown variant `never`, expected `upstream` or `broker`",
        ),
        (
            "topic",
            "ward = \"ward-9\"",
            "ward = \"ward #9\"",
            "\"ward #9\"",
            0,
            "ward `ward #9` must be non-empty and contain no `/`, `+`, `#` or spaces",
        ),
        // A required table missing: reported at the start of the file.
        (
            "missing-table",
            "[gateway]\nid = \"gw-e2e-01\"\nsite = \"st-e2e\"\nward = \"ward-9\"\n",
            "",
            "# a valid",
            0,
            "missing field `gateway`",
        ),
    ];
    let mut failures = Vec::new();
    for (case, from, to, at, nth, message) in cases {
        assert!(base.contains(from), "{case}: base config lacks `{from}`");
        let text = base.replacen(from, to, 1);
        let p = f.write(&format!("{case}.toml"), &text);
        let out = check_config(&p);
        let pos = if *case == "syntax" {
            // the end of the broken line
            let (l, _) = locate(&text, "site = \"st-e2e", 0);
            (l, "site = \"st-e2e".chars().count() + 1)
        } else {
            locate(&text, at, *nth)
        };
        if let Err(e) = std::panic::catch_unwind(|| assert_one_problem(&out, &p, pos, message)) {
            failures.push(format!(
                "{case}: {}",
                e.downcast_ref::<String>().cloned().unwrap_or_default()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn key_file_readable_by_others_is_refused_at_the_key_setting() {
    let f = Fixture::new();
    let base = f.base();
    std::fs::set_permissions(&f.pki.gateway_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = f.write("wardgate.toml", &base);
    let out = check_config(&p);
    let at = locate(&base, &format!("\"{}\"", f.pki.gateway_key.display()), 0);
    let key = f.pki.gateway_key.display();
    assert_one_problem(
        &out,
        &p,
        at,
        &format!("private key {key} is readable by others (mode 644); run `chmod 600 {key}`"),
    );
    // `wardgate run` refuses to start with the same diagnostic.
    let run = wardgate(&["run".as_ref(), "--config".as_ref(), p.as_os_str()]);
    assert_eq!(
        (run.code(), run.stderr.as_str()),
        (Some(2), out.stderr.as_str()),
        "run: {run:?}"
    );
}

#[test]
fn duplicate_serial_name_is_reported_at_the_duplicate() {
    let f = Fixture::new();
    let text = f
        .base()
        .replacen("name = \"bed2-monitor\"", "name = \"bed1-spo2\"", 1);
    let p = f.write("dup.toml", &text);
    let out = check_config(&p);
    // At the second `name = "bed1-spo2"`, not at the original definition.
    assert_one_problem(
        &out,
        &p,
        locate(&text, "\"bed1-spo2\"\npath", 1),
        "serial device name `bed1-spo2` is used twice",
    );
}

#[test]
fn numerics_every_s_is_checked_at_its_value() {
    let f = Fixture::new();
    let text = f.base().replacen(
        "protocol = \"cms50\"\n",
        "protocol = \"cms50\"\nnumerics_every_s = 90\n",
        1,
    );
    let p = f.write("numerics.toml", &text);
    assert_one_problem(
        &check_config(&p),
        &p,
        locate(&text, "90\n", 0),
        "serial `bed1-spo2`: numerics_every_s 90 is more than 60 (one SpO2 a minute); 1 sends SpO2 and pulse once a second, 0 with every frame",
    );
    let text = f.base().replacen(
        "protocol = \"ansar-b\"\n",
        "protocol = \"ansar-b\"\nnumerics_every_s = 1\n",
        1,
    );
    let p = f.write("numerics-ansar.toml", &text);
    let (line, col) = locate(&text, "numerics_every_s = 1", 0);
    assert_one_problem(
        &check_config(&p),
        &p,
        (line, col + "numerics_every_s = ".len()),
        "serial `bed2-monitor`: numerics_every_s is for protocol \"cms50\"",
    );
}

#[test]
fn several_problems_are_all_reported_in_file_order() {
    let f = Fixture::new();
    let text = f
        .base()
        .replacen("id = \"gw-e2e-01\"", "id = \"gw/e2e\"", 1)
        .replacen("port = 8883", "port = 0", 1);
    let p = f.write("multi.toml", &text);
    let out = check_config(&p);
    assert_eq!(out.code(), Some(2), "{out:?}");
    let (a, b) = (locate(&text, "\"gw/e2e\"", 0), locate(&text, "0\nca =", 0));
    assert_eq!(
        out.stderr,
        format!(
            "{f}:{}:{}: gateway id `gw/e2e` must be non-empty and contain no `/`, `+`, `#` or spaces\n{f}:{}:{}: port must be between 1 and 65535\n",
            a.0,
            a.1,
            b.0,
            b.1,
            f = p.display()
        )
    );
}

#[test]
fn receiver_config_mistakes_are_reported_too() {
    let f = Fixture::new();
    let text = format!(
        "version = 1\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = 8883\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\n[receiver]\ngateway_certs = [\"{gw}\"]\noutput = \"postgres:upstream\"\n",
        ca = f.pki.ca_pem.display(),
        cert = f.pki.receiver_cert.display(),
        key = f.pki.receiver_key.display(),
        gw = f.pki.gateway_cert.display()
    );
    let p = f.write("receiver.toml", &text);
    let out = check_config(&p);
    assert_one_problem(
        &out,
        &p,
        locate(&text, "\"postgres:", 0),
        "output `postgres:upstream` must be `sqlite:PATH` or `jsonl:PATH`",
    );
    let good = f.write(
        "receiver-ok.toml",
        &text.replace("postgres:upstream", "sqlite:upstream.db"),
    );
    let out = check_config(&good);
    assert_eq!((out.code(), out.stderr.as_str()), (Some(0), ""), "{out:?}");
}

#[test]
fn ble_section_mistakes_are_reported_at_their_value() {
    let f = Fixture::new();
    let ble = "\n[ble]\nadapter = \"hci0\"\n\n[[ble.device]]\nname = \"bed4-hr\"\naddress = \"00:22:D0:90:4C:14\"\nrequire_bond = false\n\n[[ble.device]]\nname = \"bed5-scale\"\naddress = \"5C:31:3E:01:16\"\n";
    let text = format!("{}{ble}", f.base());
    let p = f.write("ble-address.toml", &text);
    assert_one_problem(
        &check_config(&p),
        &p,
        locate(&text, "\"5C:31:3E:01:16\"", 0),
        "`5C:31:3E:01:16` is not a Bluetooth address",
    );

    // A resolvable private address cannot be allowlisted without a bond.
    let ble = "\n[ble]\n\n[[ble.device]]\nname = \"bed6-tracker\"\naddress = \"4A:11:22:33:44:55\"\naddress_type = \"random\"\nrequire_bond = false\n";
    let text = format!("{}{ble}", f.base());
    let p = f.write("ble-rpa.toml", &text);
    assert_one_problem(
        &check_config(&p),
        &p,
        locate(&text, "false", 0),
        "device `bed6-tracker`: 4A:11:22:33:44:55 is a resolvable private address",
    );

    // An unknown profile name and an unknown vendor profile.
    let ble = "\n[ble]\n\n[[ble.device]]\nname = \"bed7\"\naddress = \"C0:11:22:33:44:55\"\nvendor_profile = \"inhaler-x\"\n";
    let text = format!("{}{ble}", f.base());
    let p = f.write("ble-vendor.toml", &text);
    assert_one_problem(
        &check_config(&p),
        &p,
        locate(&text, "\"inhaler-x\"", 0),
        "device `bed7`: no [[ble.vendor_profile]] named `inhaler-x`",
    );

    // The shipped example vendor profile validates.
    let profile =
        std::fs::read_to_string(workspace_root().join("config/profiles/inhaler-example.toml"))
            .unwrap();
    let text = format!("{}\n[ble]\n\n[[ble.device]]\nname = \"bed7\"\naddress = \"C0:11:22:33:44:55\"\nvendor_profile = \"inhaler-example\"\n\n{profile}", f.base());
    let p = f.write("ble-ok.toml", &text);
    let out = check_config(&p);
    assert_eq!(out.code(), Some(0), "{out:?}");
}

/// 1-based (line, column) of the character right after the `nth` occurrence of `needle`.
fn after(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let (l, c) = locate(text, needle, nth);
    (l, c + needle.chars().count())
}

#[test]
fn every_toml_form_is_located_exactly() {
    let f = Fixture::new();
    let base = f.base();
    let store = "[store]\npath = \"store.db\"\n";
    assert!(base.contains(store));
    let top = |extra: &str| {
        base.replacen(store, "", 1)
            .replacen("version = 1\n", &format!("version = 1\n{extra}"), 1)
    };
    // (case, config text, position, message)
    let cases: Vec<(&str, String, (usize, usize), &str)> = vec![
        {
            // dotted keys at the top level: the second one's value
            let t = top("store.path = \"store.db\"\nstore.max_age_hours = 0\n");
            let at = after(&t, "store.max_age_hours = ", 0);
            ("dotted-keys", t, at, "max_age_hours must be greater than 0")
        },
        {
            // a header with spaces and quoted keys
            let t = base.replacen(
                store,
                "[ store ]\n\"path\" = \"store.db\"\n\"max_bytes\" = 0\n",
                1,
            );
            let at = after(&t, "\"max_bytes\" = ", 0);
            (
                "spaced-header-quoted-key",
                t,
                at,
                "max_bytes must be greater than 0",
            )
        },
        {
            // an inline table
            let t = top("store = { path = \"store.db\", commit_max_rows = 0 }\n");
            let at = after(&t, "commit_max_rows = ", 0);
            (
                "inline-table",
                t,
                at,
                "commit_max_rows must be greater than 0",
            )
        },
        {
            // the second [[serial]]: `baud` in both entries, only the second one non-standard
            let t = base
                .replacen(
                    "protocol = \"cms50\"",
                    "protocol = \"cms50\"\nbaud = 115200",
                    1,
                )
                .replacen(
                    "protocol = \"ansar-b\"",
                    "protocol = \"ansar-b\"\nbaud = 123",
                    1,
                );
            let at = after(&t, "baud = ", 1);
            (
                "array-of-tables",
                t,
                at,
                "serial `bed2-monitor`: baud 123 is not a standard rate",
            )
        },
        {
            // `path` in [store], then in two [[serial]]: only the last one is wrong
            let t = base.replacen("path = \"dev/bed2-monitor\"", "path = \"\"", 1);
            let at = after(&t, "path = ", 2);
            (
                "key-in-several-tables",
                t,
                at,
                "serial `bed2-monitor`: path is empty",
            )
        },
    ];
    let mut failures = Vec::new();
    for (case, text, at, message) in &cases {
        let p = f.write(&format!("{case}.toml"), text);
        let out = check_config(&p);
        if let Err(e) = std::panic::catch_unwind(|| assert_one_problem(&out, &p, *at, message)) {
            failures.push(format!(
                "{case}: {}",
                e.downcast_ref::<String>().cloned().unwrap_or_default()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_serial_port_that_does_not_exist_is_a_warning_at_its_path() {
    let f = Fixture::new();
    let text = f.base().replacen(
        "path = \"dev/bed2-monitor\"",
        "path = \"dev/bed2-monitr\"",
        1,
    );
    let p = f.write("typo.toml", &text);
    let out = check_config(&p);
    assert_eq!(out.code(), Some(0), "a warning, not an error: {out:?}");
    assert_eq!(out.stdout.trim(), format!("{}: ok", p.display()));
    let (line, col) = locate(&text, "\"dev/bed2-monitr\"", 0);
    assert_eq!(
        out.stderr,
        format!(
            "{}:{line}:{col}: warning: serial `bed2-monitor`: port {} does not exist (yet)\n",
            p.display(),
            f.dir.path().join("dev/bed2-monitr").display()
        )
    );
    // A dangling stable link (udev removed the device) is missing too.
    let link = f.dir.path().join("dev/by-id-gone");
    std::os::unix::fs::symlink(f.dir.path().join("dev/ttyUSB9"), &link).unwrap();
    let text = f
        .base()
        .replacen("path = \"dev/bed1-spo2\"", "path = \"dev/by-id-gone\"", 1);
    let p = f.write("dangling.toml", &text);
    let out = check_config(&p);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let (line, col) = locate(&text, "\"dev/by-id-gone\"", 0);
    assert!(
        out.stderr.starts_with(&format!(
            "{}:{line}:{col}: warning: serial `bed1-spo2`: port ",
            p.display()
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn a_private_key_given_as_the_ca_is_refused_at_its_value() {
    let f = Fixture::new();
    let base = f.base();
    let ca = format!("ca = \"{}\"", f.pki.ca_pem.display());
    let key = f.pki.gateway_key.display().to_string();
    let text = base.replacen(&ca, &format!("ca = \"{key}\""), 1);
    let p = f.write("ca-is-key.toml", &text);
    assert_one_problem(
        &check_config(&p),
        &p,
        after(&text, "ca = ", 0),
        &format!("{key} holds a private key"),
    );
}
