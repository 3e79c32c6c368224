//! The Debian package (`packaging/build-deb`, cargo-deb metadata in `gateway/Cargo.toml`,
//! maintainer scripts in `gateway/debian/`), checked the way an administrator would:
//!
//! - what `dpkg-deb --field/--contents/--ctrl-tarfile` show: paths, modes, owners, the conffile
//!   list, Depends/Recommends, the maintainer scripts;
//! - a real `dpkg` install into a scratch root (`dpkg --root`, scripts run chrootless with
//!   `DPKG_ROOT`, so the real `systemd-sysusers`, `systemd-tmpfiles` and `deb-systemd-helper`
//!   act on the scratch root): user and state directory created, service enabled; then two
//!   upgrades, remove and purge, with a real SQLite store in `/var/lib/wardgate` that must come
//!   out byte-identical every time, and an edited conffile that must be kept;
//! - the maintainer scripts' service handling on a machine where systemd runs (first install:
//!   enable, no start; upgrade: try-restart; remove: stop), against recording stand-ins for
//!   systemctl & co in a private mount namespace that has `/run/systemd/system`.
//!
//! Not exercised: a real systemd starting the unit (no systemd runs here); the unit itself is
//! checked by `systemd_unit.rs`.
//!
//! Where the .deb comes from: `WARDGATE_DEB=path.deb` (any architecture, e.g. one built by
//! `cross/build && packaging/build-deb --target … --no-build`); otherwise the test runs
//! `packaging/build-deb --profile dev` (cargo-deb must be installed: `./scripts/test` installs it).
//! `WARDGATE_SKIP_PACKAGE=1` skips, loudly. The install parts need root (CI is root). Every skip
//! goes through [`wardgate_e2e::skip_or_fail`]: `SKIPPED: <test>: <reason>` on a developer's
//! machine, a failure under `CI=true`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use wardgate_e2e::{temp_dir, workspace_root};

const CONFFILE: &str = "/etc/wardgate/wardgate.toml";

fn sh(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_root() -> bool {
    ok(Command::new("id").arg("-u")).trim() == "0"
}

/// The .deb under test, built once per test binary (the tests share it); `None` when the test
/// is skipped (each test that asks says so itself, see [`wardgate_e2e::skip_or_fail`]).
fn deb() -> Option<&'static Path> {
    if std::env::var_os("WARDGATE_SKIP_PACKAGE").is_some() {
        wardgate_e2e::skip_or_fail("WARDGATE_SKIP_PACKAGE is set");
        return None;
    }
    static DEB: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, p) = DEB.get_or_init(|| {
        let dir = temp_dir("deb").unwrap();
        if let Some(p) = std::env::var_os("WARDGATE_DEB") {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "WARDGATE_DEB={} is not a file", p.display());
            return (dir, p);
        }
        let have = Command::new("cargo")
            .args(["deb", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            have,
            "cargo-deb is not installed. Install it (`cargo install cargo-deb --locked --version \
             3.8.0`; ./scripts/test does this), or point WARDGATE_DEB at a built .deb, or set \
             WARDGATE_SKIP_PACKAGE=1 to skip the package tests"
        );
        let out = dir.path().join("wardgate.deb");
        // The dev profile: the binary `cargo test --workspace` already built, so this only
        // packages (a release build would cost minutes in CI). cargo-deb warns about it; the
        // contents are the same as a release package's but for the binary's optimisation.
        let mut c = Command::new(workspace_root().join("packaging/build-deb"));
        c.args(["--profile", "dev", "-o"]).arg(&out);
        // Not the variables cargo set for this test process: build scripts track some of them
        // (ring: CARGO_MANIFEST_DIR), and a change would rebuild half the tree twice per run.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .iter()
            .any(|p| k.starts_with(p))
            {
                c.env_remove(&*k);
            }
        }
        ok(&mut c);
        (dir, out)
    });
    Some(p.as_path())
}

fn field(deb: &Path, name: &str) -> String {
    ok(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name))
        .trim()
        .to_string()
}

/// `dpkg-deb -e`: the control members (control, conffiles, maintainer scripts) in a directory.
fn control_dir(deb: &Path, into: &Path) -> PathBuf {
    let d = into.join("DEBIAN");
    ok(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&d));
    d
}

#[test]
fn control_fields_name_the_dependencies() {
    let Some(deb) = deb() else { return };
    assert_eq!(field(deb, "Package"), "wardgate");
    assert!(field(deb, "Version").starts_with("0.1.0"));
    assert_eq!(field(deb, "Section"), "net");
    let depends = field(deb, "Depends");
    assert!(depends.contains("libc6"), "Depends: {depends}");
    assert!(depends.contains("systemd"), "Depends: {depends}");
    let recommends = field(deb, "Recommends");
    assert!(recommends.contains("dbus"), "Recommends: {recommends}");
    assert!(recommends.contains("bluez"), "Recommends: {recommends}");
    // Bundled SQLite, vendored libdbus, ring: nothing but libc is linked dynamically.
    for lib in ["libsqlite3", "libdbus", "libssl"] {
        assert!(!depends.contains(lib), "Depends names {lib}: {depends}");
    }
}

#[test]
fn contents_have_the_paths_modes_and_owners() {
    let Some(deb) = deb() else { return };
    let listing = ok(Command::new("dpkg-deb").arg("--contents").arg(deb));
    // `-rwxr-xr-x 0/0   123 2024-01-01 00:00 ./usr/bin/wardgate`
    let entry = |path: &str| -> (String, String) {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" .{path}")))
            .unwrap_or_else(|| panic!("{path} not in the package:\n{listing}"));
        let mut cols = line.split_whitespace();
        (
            cols.next().unwrap().to_string(),
            cols.next().unwrap().to_string(),
        )
    };
    let expect = [
        ("/usr/bin/wardgate", "-rwxr-xr-x"),
        ("/lib/systemd/system/wardgate.service", "-rw-r--r--"),
        ("/usr/lib/sysusers.d/wardgate.conf", "-rw-r--r--"),
        ("/usr/lib/tmpfiles.d/wardgate.conf", "-rw-r--r--"),
        ("/usr/share/dbus-1/system.d/wardgate.conf", "-rw-r--r--"),
        (CONFFILE, "-rw-r--r--"),
        (
            "/usr/share/wardgate/profiles/inhaler-example.toml",
            "-rw-r--r--",
        ),
        (
            "/usr/share/wardgate/profiles/lines-example.toml",
            "-rw-r--r--",
        ),
        (
            "/usr/share/doc/wardgate/examples/plugins/oximeter_bridge.py",
            "-rw-r--r--",
        ),
        ("/usr/share/doc/wardgate/plugins.md", "-rw-r--r--"),
        ("/usr/share/doc/wardgate/install.md", "-rw-r--r--"),
        ("/usr/share/doc/wardgate/README.md", "-rw-r--r--"),
        ("/usr/share/doc/wardgate/README.Debian", "-rw-r--r--"),
        ("/usr/share/doc/wardgate/copyright", "-rw-r--r--"),
    ];
    for (path, mode) in expect {
        let (m, owner) = entry(path);
        assert_eq!(m, mode, "{path}");
        // cargo-deb writes numeric owners; dpkg-built packages show names.
        assert!(
            owner == "0/0" || owner == "root/root",
            "{path}: owner {owner}"
        );
    }
    // The state directory is the system's (tmpfiles/StateDirectory), not a packaged path:
    // dpkg never deletes what it did not install, so the store survives remove and upgrade.
    assert!(
        !listing.contains("./var/lib/wardgate"),
        "the package must not own /var/lib/wardgate:\n{listing}"
    );
}

#[test]
fn packaged_files_are_the_repository_files() {
    let Some(deb) = deb() else { return };
    let tmp = temp_dir("deb-x").unwrap();
    ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(tmp.path()));
    let root = workspace_root();
    for (src, dst) in [
        (
            "systemd/wardgate.service",
            "lib/systemd/system/wardgate.service",
        ),
        (
            "systemd/wardgate.sysusers",
            "usr/lib/sysusers.d/wardgate.conf",
        ),
        (
            "systemd/wardgate.tmpfiles",
            "usr/lib/tmpfiles.d/wardgate.conf",
        ),
        (
            "systemd/wardgate-dbus.conf",
            "usr/share/dbus-1/system.d/wardgate.conf",
        ),
        ("config/wardgate.toml", "etc/wardgate/wardgate.toml"),
        (
            "config/profiles/inhaler-example.toml",
            "usr/share/wardgate/profiles/inhaler-example.toml",
        ),
        (
            "config/profiles/lines-example.toml",
            "usr/share/wardgate/profiles/lines-example.toml",
        ),
        (
            "examples/plugins/oximeter_bridge.py",
            "usr/share/doc/wardgate/examples/plugins/oximeter_bridge.py",
        ),
        ("docs/plugins.md", "usr/share/doc/wardgate/plugins.md"),
        ("README.md", "usr/share/doc/wardgate/README.md"),
    ] {
        assert_eq!(
            fs::read(root.join(src)).unwrap(),
            fs::read(tmp.path().join(dst)).unwrap_or_else(|e| panic!("{dst}: {e}")),
            "{dst} differs from {src}"
        );
    }
    // The unit's paths exist in the package.
    let unit = fs::read_to_string(tmp.path().join("lib/systemd/system/wardgate.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/wardgate run --config /etc/wardgate/wardgate.toml"));
    assert!(unit.contains("Documentation=file:///usr/share/doc/wardgate/README.md"));
}

#[test]
fn conffile_list_and_maintainer_scripts() {
    let Some(deb) = deb() else { return };
    let tmp = temp_dir("deb-ctrl").unwrap();
    let ctrl = control_dir(deb, tmp.path());
    let conffiles = fs::read_to_string(ctrl.join("conffiles")).unwrap();
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        [CONFFILE],
        "conffiles: {conffiles}"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let p = ctrl.join(script);
        let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{script}: {e}"));
        assert!(text.starts_with("#!/bin/sh\n"), "{script}: not POSIX sh");
        assert!(
            text.lines().any(|l| l.trim() == "set -e"),
            "{script}: no set -e"
        );
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755,
            "{script}"
        );
        // dash is Debian's /bin/sh: the scripts must parse there.
        ok(Command::new("dash").arg("-n").arg(&p));
    }
    // Nothing in the scripts deletes the state directory.
    for script in ["postinst", "prerm", "postrm"] {
        let text = fs::read_to_string(ctrl.join(script)).unwrap();
        assert!(
            !text
                .lines()
                .any(|l| l.contains("rm ") && l.contains("/var/lib/wardgate")),
            "{script} removes /var/lib/wardgate"
        );
    }
}

// ---- a real dpkg in a scratch root ------------------------------------------------------

struct Root {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    force_arch: bool,
}

impl Root {
    fn new(deb: &Path) -> Root {
        let tmp = temp_dir("dpkg-root").unwrap();
        let dir = tmp.path().join("root");
        for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::write(dir.join("var/lib/dpkg/status"), "").unwrap();
        fs::write(dir.join("var/lib/dpkg/available"), "").unwrap();
        let host = ok(Command::new("dpkg").arg("--print-architecture"));
        let force_arch = field(deb, "Architecture") != host.trim();
        Root {
            _tmp: tmp,
            dir,
            force_arch,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }

    /// `dpkg --root=DIR ARGS…`, maintainer scripts run outside a chroot with DPKG_ROOT=DIR.
    /// Dependencies are not installed in the scratch root, hence --force-depends.
    fn dpkg(&self, args: &[&std::ffi::OsStr]) -> String {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", self.dir.display()))
            .arg("--log=/dev/null")
            .args(["--force-script-chrootless", "--force-depends"]);
        if self.force_arch {
            c.arg("--force-architecture");
        }
        c.args(args);
        let out = sh(&mut c);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{c:?} failed:\n{text}");
        text
    }

    fn status(&self) -> String {
        fs::read_to_string(self.path("/var/lib/dpkg/status")).unwrap()
    }

    fn enabled(&self) -> bool {
        self.path("/etc/systemd/system/multi-user.target.wants/wardgate.service")
            .symlink_metadata()
            .is_ok()
    }

    fn uid_of(&self, user: &str) -> Option<u32> {
        fs::read_to_string(self.path("/etc/passwd"))
            .ok()?
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .and_then(|l| l.split(':').nth(2)?.parse().ok())
    }
}

/// A copy of `deb` with another version (and, optionally, a changed shipped config): what the
/// next release looks like to dpkg.
fn repack(deb: &Path, version: &str, change_config: bool, into: &Path) -> PathBuf {
    let tree = into.join(format!("tree-{version}"));
    ok(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let text = fs::read_to_string(&control).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("Version:") {
                format!("Version: {version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&control, text).unwrap();
    if change_config {
        let conf = tree.join("etc/wardgate/wardgate.toml");
        let mut t = fs::read_to_string(&conf).unwrap();
        t.push_str("# shipped change in the next release\n");
        fs::write(&conf, t).unwrap();
        // cargo-deb writes no md5sums; if a package has them, the new file needs its own.
        let sums_path = tree.join("DEBIAN/md5sums");
        if let Ok(sums) = fs::read_to_string(&sums_path) {
            let md5 = ok(Command::new("md5sum")
                .arg("etc/wardgate/wardgate.toml")
                .current_dir(&tree));
            let sums: String = sums
                .lines()
                .map(|l| {
                    if l.ends_with(" etc/wardgate/wardgate.toml") {
                        md5.clone()
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
            fs::write(&sums_path, sums).unwrap();
        }
    }
    let out = into.join(format!("wardgate_{version}.deb"));
    ok(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "-b"])
        .arg(&tree)
        .arg(&out));
    out
}

/// A real SQLite store with rows, as the gateway leaves it when upstream is away.
fn write_store(path: &Path) {
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch(
        "CREATE TABLE pending(seq INTEGER PRIMARY KEY, device TEXT, code INTEGER, value REAL);
         INSERT INTO pending(device, code, value) VALUES
           ('serial:bed-3-spo2', 150456, 97.0), ('serial:bed-3-spo2', 149530, 72.0);",
    )
    .unwrap();
}

#[test]
fn install_upgrade_remove_purge_keep_the_store_and_the_edited_config() {
    if !is_root() {
        return wardgate_e2e::skip_or_fail(
            "installing into a scratch root with dpkg needs root (CI runs as root)",
        );
    }
    let Some(deb) = deb() else { return };
    let root = Root::new(deb);
    let work = temp_dir("deb-versions").unwrap();
    let v1 = field(deb, "Version");
    let v2 = format!("{v1}+upgrade2");
    let v3 = format!("{v1}+upgrade3");
    let deb2 = repack(deb, &v2, false, work.path());
    let deb3 = repack(deb, &v3, true, work.path());

    // --- first install ---------------------------------------------------------------------
    root.dpkg(&["-i".as_ref(), deb.as_os_str()]);
    assert!(root
        .status()
        .contains("Package: wardgate\nStatus: install ok installed"));
    let bin = root.path("/usr/bin/wardgate");
    let meta = fs::metadata(&bin).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    if !root.force_arch {
        let v = ok(Command::new(&bin).arg("--version"));
        assert!(v.starts_with("wardgate 0.1.0"), "--version: {v}");
    }
    // systemd-sysusers made the user, in dialout for the serial ports.
    let uid = root
        .uid_of("wardgate")
        .expect("postinst created no wardgate user");
    let group = fs::read_to_string(root.path("/etc/group")).unwrap();
    let dialout = group
        .lines()
        .find(|l| l.starts_with("dialout:"))
        .expect("no dialout group");
    assert!(
        dialout.ends_with(":wardgate") || dialout.contains("wardgate"),
        "{dialout}"
    );
    // systemd-tmpfiles made the state directory, owner-only.
    let state = root.path("/var/lib/wardgate");
    let m = fs::metadata(&state).expect("postinst created no /var/lib/wardgate");
    assert!(m.is_dir());
    assert_eq!(m.permissions().mode() & 0o7777, 0o700);
    assert_eq!(m.uid(), uid);
    // Enabled, so it starts at boot once provisioned.
    assert!(root.enabled(), "not enabled after the first install");
    let conf = root.path(CONFFILE);
    let cm = fs::metadata(&conf).unwrap();
    assert_eq!(cm.permissions().mode() & 0o777, 0o644);
    assert_eq!(cm.uid(), 0);
    assert!(root.status().contains(&format!("Conffiles:\n {CONFFILE} ")));

    // The ward's administrator edits the config; the gateway buffers observations.
    let mut edited = fs::read_to_string(&conf).unwrap();
    edited.push_str("\n# edited on this ward\n");
    fs::write(&conf, &edited).unwrap();
    let store = state.join("store.db");
    write_store(&store);
    let store_bytes = fs::read(&store).unwrap();

    // --- upgrade, shipped config unchanged: no question asked, edit kept ----------------------
    root.dpkg(&["-i".as_ref(), deb2.as_os_str()]);
    assert!(root.status().contains(&format!("Version: {v2}")));
    assert_eq!(
        fs::read_to_string(&conf).unwrap(),
        edited,
        "edited conffile lost"
    );
    assert_eq!(
        fs::read(&store).unwrap(),
        store_bytes,
        "store changed by upgrade"
    );
    assert!(root.enabled(), "upgrade disabled the service");

    // Postinst again (dpkg-reconfigure, an interrupted configure): idempotent.
    let postinst = root.path("/var/lib/dpkg/info/wardgate.postinst");
    ok(Command::new("sh")
        .arg(&postinst)
        .args(["configure", &v1])
        .env("DPKG_ROOT", &root.dir));
    assert_eq!(root.uid_of("wardgate"), Some(uid));
    assert_eq!(fs::read(&store).unwrap(), store_bytes);

    // --- the administrator disabled it; upgrade with a changed shipped config ---------------
    ok(Command::new("systemctl")
        .arg(format!("--root={}", root.dir.display()))
        .args(["disable", "wardgate.service"]));
    assert!(!root.enabled());
    // What unattended upgrades do: keep the local version of a changed conffile.
    root.dpkg(&[
        "--force-confdef".as_ref(),
        "--force-confold".as_ref(),
        "-i".as_ref(),
        deb3.as_os_str(),
    ]);
    assert!(root.status().contains(&format!("Version: {v3}")));
    assert_eq!(
        fs::read_to_string(&conf).unwrap(),
        edited,
        "edited conffile lost"
    );
    let dist = fs::read_to_string(root.path("/etc/wardgate/wardgate.toml.dpkg-dist"))
        .expect("the new shipped config is not beside the kept one");
    assert!(dist.contains("# shipped change in the next release"));
    assert_eq!(fs::read(&store).unwrap(), store_bytes);
    assert!(!root.enabled(), "upgrade re-enabled a disabled service");

    // --- remove: binary gone; config, store and directory stay --------------------------------
    root.dpkg(&["-r".as_ref(), "wardgate".as_ref()]);
    assert!(!bin.exists());
    assert!(!root.path("/lib/systemd/system/wardgate.service").exists());
    assert_eq!(fs::read_to_string(&conf).unwrap(), edited);
    assert_eq!(
        fs::read(&store).unwrap(),
        store_bytes,
        "store changed by remove"
    );
    assert!(root.status().contains("Status: deinstall ok config-files"));

    // --- purge: config gone; the store is still kept (un-sent clinical data) ------------------
    let out = root.dpkg(&["-P".as_ref(), "wardgate".as_ref()]);
    assert!(!conf.exists());
    assert_eq!(
        fs::read(&store).unwrap(),
        store_bytes,
        "store changed by purge"
    );
    assert!(
        out.contains("kept") && out.contains("/var/lib/wardgate"),
        "purge does not say it kept the store:\n{out}"
    );
    assert!(!root.status().contains("Package: wardgate"));
}

// ---- the scripts' service handling where systemd runs ----------------------------------

/// Runs a maintainer script with `/run/systemd/system` present (a tmpfs over /run in a private
/// mount namespace) and recording stand-ins for systemctl, deb-systemd-helper,
/// deb-systemd-invoke, systemd-sysusers and systemd-tmpfiles first on PATH. Returns the calls.
fn run_script(script: &Path, args: &[&str], was_enabled: bool) -> Vec<String> {
    let tmp = temp_dir("fake-systemd").unwrap();
    let bin = tmp.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let log = tmp.path().join("calls");
    for tool in [
        "systemctl",
        "deb-systemd-helper",
        "deb-systemd-invoke",
        "systemd-sysusers",
        "systemd-tmpfiles",
    ] {
        let p = bin.join(tool);
        fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"{tool} $*\" >> \"$FAKE_LOG\"\n\
                 if [ \"$1\" = --quiet ] && [ \"$2\" = was-enabled ]; then exit $FAKE_WAS_ENABLED; fi\n\
                 exit 0\n"
            ),
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    ok(Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && exec sh \"$@\"")
        .arg("sh")
        .arg(script)
        .args(args)
        .env("PATH", path)
        .env_remove("DPKG_ROOT")
        .env("FAKE_LOG", &log)
        .env("FAKE_WAS_ENABLED", if was_enabled { "0" } else { "1" }));
    fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn scripts_enable_without_starting_restart_on_upgrade_and_stop_on_remove() {
    if !is_root() {
        return wardgate_e2e::skip_or_fail(
            "a private mount namespace with /run/systemd/system needs root",
        );
    }
    let Some(deb) = deb() else { return };
    let tmp = temp_dir("deb-scripts").unwrap();
    let ctrl = control_dir(deb, tmp.path());
    let (postinst, prerm, postrm) = (
        ctrl.join("postinst"),
        ctrl.join("prerm"),
        ctrl.join("postrm"),
    );
    let has = |calls: &[String], c: &str| calls.iter().any(|l| l == c);
    let starts = |calls: &[String]| {
        calls.iter().any(|l| {
            let w: Vec<_> = l.split_whitespace().collect();
            w.contains(&"start") || w.contains(&"restart") || w.contains(&"try-restart")
        })
    };

    // First install: user, state dir, enabled, daemon-reload; not started (needs provisioning).
    let calls = run_script(&postinst, &["configure"], true);
    for c in [
        "systemd-sysusers wardgate.conf",
        "systemd-tmpfiles --create wardgate.conf",
        "deb-systemd-helper enable wardgate.service",
        "systemctl --system daemon-reload",
    ] {
        assert!(has(&calls, c), "first install: no `{c}` in {calls:?}");
    }
    assert!(
        !starts(&calls),
        "first install starts the service: {calls:?}"
    );

    // Upgrade of an enabled service: restarted only if running (try-restart).
    let calls = run_script(&postinst, &["configure", "0.1.0-1"], true);
    assert!(
        has(&calls, "deb-systemd-invoke try-restart wardgate.service"),
        "{calls:?}"
    );
    assert!(has(&calls, "deb-systemd-helper enable wardgate.service"));
    assert!(!calls
        .iter()
        .any(|l| l.ends_with(" start wardgate.service") || l.contains(" restart ")));

    // Upgrade after the administrator disabled it: stays disabled.
    let calls = run_script(&postinst, &["configure", "0.1.0-1"], false);
    assert!(
        !has(&calls, "deb-systemd-helper enable wardgate.service"),
        "{calls:?}"
    );
    assert!(has(
        &calls,
        "deb-systemd-helper update-state wardgate.service"
    ));

    // prerm: stop on remove, keep running through an upgrade.
    let calls = run_script(&prerm, &["remove"], true);
    assert!(
        has(&calls, "deb-systemd-invoke stop wardgate.service"),
        "{calls:?}"
    );
    let calls = run_script(&prerm, &["upgrade", "0.1.0-2"], true);
    assert!(calls.is_empty(), "prerm upgrade: {calls:?}");

    // postrm: remove masks (so a leftover enable link does not start a missing binary), purge
    // forgets the enablement state.
    let calls = run_script(&postrm, &["remove"], true);
    assert!(
        has(&calls, "deb-systemd-helper mask wardgate.service"),
        "{calls:?}"
    );
    let calls = run_script(&postrm, &["purge"], true);
    assert!(
        has(&calls, "deb-systemd-helper purge wardgate.service"),
        "{calls:?}"
    );
}

/// The packaged binary is the product alone: built without the `demo` feature, it has no `demo`
/// subcommand and links none of the simulated world (`wardgate-sim`: a fake BlueZ, an MQTT
/// server, a throw-away PKI). Its installer commands are all there.
#[test]
fn packaged_binary_holds_no_simulator() {
    let Some(deb) = deb() else { return };
    let tmp = temp_dir("deb-bin").unwrap();
    ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(tmp.path()));
    let bin = tmp.path().join("usr/bin/wardgate");
    let help = ok(Command::new(&bin).arg("--help"));
    for cmd in [
        "run",
        "check-config",
        "status",
        "provision",
        "pair",
        "decode",
        "verify",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
            "`{cmd}` missing from the packaged binary's help:\n{help}"
        );
    }
    assert!(
        !help.lines().any(|l| l.trim_start().starts_with("demo ")),
        "the packaged binary offers `demo`:\n{help}"
    );
    let demo = sh(Command::new(&bin).arg("demo"));
    assert_eq!(
        demo.status.code(),
        Some(2),
        "`wardgate demo` in the package must be a usage error"
    );
    // No simulator code: its crate name and source paths appear in any binary that links it
    // (panic locations, type names), stripped or not.
    let bytes = fs::read(&bin).unwrap();
    for needle in [
        "wardgate_sim",
        "sim/src/blesim",
        "sim/src/broker.rs",
        "wardgate demo CA",
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the packaged binary contains `{needle}`: a simulator was linked in"
        );
    }
}
