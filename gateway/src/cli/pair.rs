//! `wardgate pair ADDRESS`: the installer's pairing command. The running daemon never pairs.
//!
//! What it does, in order (BlueZ D-Bus API: `doc/org.bluez.Agent.rst`,
//! `org.bluez.AgentManager.rst`, `org.bluez.Device.rst`, `org.bluez.Adapter.rst`):
//! 1. Checks that BlueZ is set to **LE Secure Connections only** (`SecureConnections = only` in
//!    `[General]` of `/etc/bluetooth/main.conf`); otherwise it refuses, unless
//!    `--allow-legacy-pairing` (a device that cannot do LE SC: LE legacy pairing's keys can be
//!    cracked from a sniffed exchange).
//! 2. Registers a BlueZ agent (`org.bluez.Agent1`, capability `KeyboardDisplay`) and makes it
//!    the default, makes the adapter pairable for the duration, scans until BlueZ knows the
//!    device, and calls `Device1.Pair`.
//! 3. Shows what the agent is asked on the terminal: numeric comparison ("does the device show
//!    123456? [y/N]"), passkey display ("type 123456 on the device"), passkey entry. A pairing
//!    that completes without any of them is **Just Works** (no protection against a
//!    man-in-the-middle): refused and the bond removed, unless `--allow-just-works` (devices
//!    with neither display nor keyboard).
//! 4. Marks the device `Trusted`, prints its **identity address** (the address to put in
//!    `[[ble.device]] address`: after bonding BlueZ resolves the device's private addresses to
//!    it) and the config lines, and makes the adapter non-pairable again.
//!
//! Exit status: 0 paired; 1 pairing failed or refused; 2 usage (bad address).

use anyhow::{bail, Context};
use dbus::channel::{MatchingReceiver, Sender};
use dbus::message::MatchRule;
use dbus::nonblock::stdintf::org_freedesktop_dbus::{ObjectManager, Properties};
use dbus::nonblock::{Proxy, SyncConnection};
use dbus::Message;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wardgate_adapters::ble::central::bluez::device_path;
use wardgate_adapters::ble::config::Address;

/// Object path of our agent.
pub const AGENT_PATH: &str = "/org/wardgate/pairing_agent";

/// Options of `wardgate pair`.
#[derive(Clone, Debug)]
pub struct PairOptions {
    /// The device's address as it advertises now.
    pub address: Address,
    /// BlueZ adapter, e.g. `hci0`.
    pub adapter: String,
    /// Accept Just Works pairing (no MITM protection).
    pub allow_just_works: bool,
    /// Accept BlueZ settings that allow LE legacy pairing.
    pub allow_legacy: bool,
    /// BlueZ's main.conf (to check `SecureConnections`).
    pub bluez_main_conf: std::path::PathBuf,
    /// How long to look for the device and wait for the pairing.
    pub timeout: Duration,
}

/// Which association model the agent saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    JustWorks,
    NumericComparison,
    PasskeyDisplay,
    PasskeyEntry,
}

impl Method {
    fn describe(self) -> &'static str {
        match self {
            Method::JustWorks => "Just Works (no man-in-the-middle protection)",
            Method::NumericComparison => "numeric comparison",
            Method::PasskeyDisplay => "passkey shown here, typed on the device",
            Method::PasskeyEntry => "passkey shown on the device, typed here",
        }
    }
}

/// `SecureConnections` from BlueZ's main.conf `[General]` (`on` when absent: BlueZ's default).
pub fn secure_connections_mode(main_conf: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(main_conf) else {
        return "on".into();
    };
    let mut general = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            general = t == "[General]";
        } else if general && !t.starts_with('#') {
            if let Some((k, v)) = t.split_once('=') {
                if k.trim() == "SecureConnections" {
                    return v.trim().to_lowercase();
                }
            }
        }
    }
    "on".into()
}

/// Runs `wardgate pair`, prompting on the terminal (stdin/stdout).
pub async fn pair(opts: PairOptions) -> anyhow::Result<()> {
    let mode = secure_connections_mode(&opts.bluez_main_conf);
    if mode != "only" && !opts.allow_legacy {
        let source = if opts.bluez_main_conf.exists() {
            format!(
                "SecureConnections = {mode} in {}",
                opts.bluez_main_conf.display()
            )
        } else {
            format!(
                "{} does not exist, and BlueZ's default is SecureConnections = on",
                opts.bluez_main_conf.display()
            )
        };
        bail!(
            "BlueZ on this gateway allows LE legacy pairing ({source}): \
             set `SecureConnections = only` under [General] there and restart bluetooth \
             (`systemctl restart bluetooth`), or pass --allow-legacy-pairing for a device that \
             cannot do LE Secure Connections"
        );
    }
    let (resource, conn) = dbus_tokio::connection::new_system_sync()
        .context("cannot reach the system D-Bus (is dbus running?)")?;
    let bus_task = tokio::spawn(async move {
        let _ = resource.await;
    });
    let result = pair_on(&conn, &opts).await;
    // Always leave the adapter non-pairable and the agent unregistered.
    let adapter = proxy(&conn, format!("/org/bluez/{}", opts.adapter), 5);
    let _ = adapter.set("org.bluez.Adapter1", "Pairable", false).await;
    let _ = adapter
        .method_call::<(), _, _, _>("org.bluez.Adapter1", "StopDiscovery", ())
        .await;
    let manager = proxy(&conn, "/org/bluez".into(), 5);
    let _ = manager
        .method_call::<(), _, _, _>(
            "org.bluez.AgentManager1",
            "UnregisterAgent",
            (dbus::Path::from(AGENT_PATH),),
        )
        .await;
    bus_task.abort();
    result
}

fn proxy(
    conn: &Arc<SyncConnection>,
    path: String,
    secs: u64,
) -> Proxy<'static, Arc<SyncConnection>> {
    Proxy::new("org.bluez", path, Duration::from_secs(secs), conn.clone())
}

fn dbus_err(e: dbus::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: {}",
        e.name().unwrap_or("D-Bus error"),
        e.message().unwrap_or("")
    )
}

async fn pair_on(conn: &Arc<SyncConnection>, opts: &PairOptions) -> anyhow::Result<()> {
    let addr = opts.address;
    let seen: Arc<Mutex<Option<Method>>> = Arc::new(Mutex::new(None));
    // The agent: BlueZ calls us; answers come from the terminal on a blocking thread.
    let (calls_tx, mut calls_rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
    conn.start_receive(
        MatchRule::new_method_call().with_path(AGENT_PATH),
        Box::new(move |msg, _| {
            let _ = calls_tx.send(msg);
            true
        }),
    );
    let agent_conn = conn.clone();
    let agent_seen = seen.clone();
    let agent = tokio::spawn(async move {
        while let Some(msg) = calls_rx.recv().await {
            let c = agent_conn.clone();
            let s = agent_seen.clone();
            let reply = tokio::task::spawn_blocking(move || answer(&msg, &s))
                .await
                .ok();
            if let Some(r) = reply {
                let _ = c.send(r);
            }
        }
    });
    let manager = proxy(conn, "/org/bluez".into(), 10);
    manager
        .method_call::<(), _, _, _>(
            "org.bluez.AgentManager1",
            "RegisterAgent",
            (dbus::Path::from(AGENT_PATH), "KeyboardDisplay"),
        )
        .await
        .map_err(dbus_err)
        .context("registering the pairing agent with BlueZ")?;
    let _ = manager
        .method_call::<(), _, _, _>(
            "org.bluez.AgentManager1",
            "RequestDefaultAgent",
            (dbus::Path::from(AGENT_PATH),),
        )
        .await;
    let adapter = proxy(conn, format!("/org/bluez/{}", opts.adapter), 10);
    adapter
        .set("org.bluez.Adapter1", "Powered", true)
        .await
        .map_err(dbus_err)
        .with_context(|| format!("Bluetooth adapter {} (is it present?)", opts.adapter))?;
    let _ = adapter.set("org.bluez.Adapter1", "Pairable", true).await;
    let path = device_path(&opts.adapter, addr);
    println!(
        "Looking for {addr} on {} … (make the device discoverable / put it in pairing mode)",
        opts.adapter
    );
    let deadline = tokio::time::Instant::now() + opts.timeout;
    if !device_known(conn, &path).await {
        let _ = adapter
            .method_call::<(), _, _, _>("org.bluez.Adapter1", "StartDiscovery", ())
            .await;
        while !device_known(conn, &path).await {
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{addr} was not seen within {} s: is it in range and in pairing mode?",
                    opts.timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let device = proxy(conn, path.clone(), opts.timeout.as_secs().max(30));
    let paired: bool = device
        .get("org.bluez.Device1", "Paired")
        .await
        .unwrap_or(false);
    if paired {
        println!("{addr} is already paired with this gateway; re-pairing");
        let dev = dbus::Path::new(path.clone()).map_err(|e| anyhow::anyhow!(e))?;
        let _ = adapter
            .method_call::<(), _, _, _>("org.bluez.Adapter1", "RemoveDevice", (dev,))
            .await;
        while !device_known(conn, &path).await {
            if tokio::time::Instant::now() >= deadline {
                bail!("{addr} was not seen again after removing the old bond");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    println!("Pairing with {addr} …");
    let r = device
        .method_call::<(), _, _, _>("org.bluez.Device1", "Pair", ())
        .await;
    agent.abort();
    if let Err(e) = r {
        let name = e.name().unwrap_or("");
        let why = match name {
            "org.bluez.Error.AuthenticationRejected" | "org.bluez.Error.Rejected" => {
                "the passkey was not confirmed"
            }
            "org.bluez.Error.AuthenticationFailed" => {
                "authentication failed (wrong passkey, or the device refused)"
            }
            "org.bluez.Error.AuthenticationCanceled" => "pairing was cancelled",
            "org.bluez.Error.ConnectionAttemptFailed" => "could not connect to the device",
            "org.bluez.Error.AuthenticationTimeout" => "the device did not answer in time",
            _ => "pairing failed",
        };
        bail!("{addr}: {why} ({name}: {})", e.message().unwrap_or(""));
    }
    let method = seen
        .lock()
        .map(|m| m.unwrap_or(Method::JustWorks))
        .unwrap_or(Method::JustWorks);
    if method == Method::JustWorks && !opts.allow_just_works {
        let dev = dbus::Path::new(path.clone()).map_err(|e| anyhow::anyhow!(e))?;
        let _ = adapter
            .method_call::<(), _, _, _>("org.bluez.Adapter1", "RemoveDevice", (dev,))
            .await;
        bail!(
            "{addr} paired with Just Works: nothing proves it is the device in front of you \
             (no man-in-the-middle protection). The bond was removed. For a device with neither \
             display nor keyboard, pair it again with --allow-just-works, close to the gateway"
        );
    }
    let _ = device.set("org.bluez.Device1", "Trusted", true).await;
    let bonded: bool = match device.get("org.bluez.Device1", "Bonded").await {
        Ok(b) => b,
        // BlueZ before 5.70 has no `Bonded`: `Paired` is the best it tells.
        Err(_) => device
            .get("org.bluez.Device1", "Paired")
            .await
            .unwrap_or(false),
    };
    let identity: String = device
        .get("org.bluez.Device1", "Address")
        .await
        .unwrap_or_else(|_| addr.to_string());
    let address_type: String = device
        .get("org.bluez.Device1", "AddressType")
        .await
        .unwrap_or_else(|_| "public".into());
    let name: String = device
        .get("org.bluez.Device1", "Name")
        .await
        .unwrap_or_default();
    println!(
        "Paired {identity} ({}) using {}; bond {}.",
        if name.is_empty() { "no name" } else { &name },
        method.describe(),
        if bonded {
            "stored"
        } else {
            "NOT stored: the device did not bond"
        }
    );
    println!("Allowlist it in /etc/wardgate/wardgate.toml, then `systemctl restart wardgate`:\n");
    println!("[[ble.device]]\nname = \"…\"            # e.g. bed12-hr\naddress = \"{identity}\"\naddress_type = \"{address_type}\"\nrequire_bond = true");
    Ok(())
}

async fn device_known(conn: &Arc<SyncConnection>, path: &str) -> bool {
    let root = proxy(conn, "/".into(), 5);
    match root.get_managed_objects().await {
        Ok(objects) => objects.keys().any(|p| &**p == path),
        Err(_) => false,
    }
}

/// Answers one agent call (blocking: may prompt on the terminal).
fn answer(msg: &Message, seen: &Mutex<Option<Method>>) -> Message {
    let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
    let set = |m: Method| {
        if let Ok(mut s) = seen.lock() {
            *s = Some(m);
        }
    };
    let rejected = |why: &str| {
        msg.error(
            &"org.bluez.Error.Rejected".into(),
            &std::ffi::CString::new(why).unwrap_or_default(),
        )
    };
    match member.as_str() {
        "RequestConfirmation" => {
            let (_dev, passkey): (dbus::Path, u32) = match msg.read2() {
                Ok(v) => v,
                Err(_) => return rejected("bad arguments"),
            };
            set(Method::NumericComparison);
            if prompt_yes(&format!(
                "Does the device show the number {passkey:06}? [y/N] "
            )) {
                msg.method_return()
            } else {
                rejected("not confirmed by the installer")
            }
        }
        "DisplayPasskey" => {
            let (_dev, passkey, entered): (dbus::Path, u32, u16) = match msg.read3() {
                Ok(v) => v,
                Err(_) => return rejected("bad arguments"),
            };
            set(Method::PasskeyDisplay);
            if entered == 0 {
                println!("Type the passkey {passkey:06} on the device, then confirm there.");
            }
            msg.method_return()
        }
        "RequestPasskey" => {
            set(Method::PasskeyEntry);
            match prompt_line("Enter the 6-digit passkey the device shows: ")
                .trim()
                .parse::<u32>()
            {
                Ok(n) if n <= 999_999 => msg.method_return().append1(n),
                _ => rejected("no valid passkey entered"),
            }
        }
        "RequestAuthorization" => {
            // BlueZ asks this for an incoming Just Works pairing.
            set(Method::JustWorks);
            rejected("Just Works pairing initiated by the device is not accepted")
        }
        "RequestPinCode" | "AuthorizeService" => rejected("not supported by wardgate (BR/EDR)"),
        "DisplayPinCode" | "Release" | "Cancel" => {
            if member == "Cancel" {
                println!("BlueZ cancelled the request (timeout or the device gave up).");
            }
            msg.method_return()
        }
        _ => msg.error(
            &"org.freedesktop.DBus.Error.UnknownMethod".into(),
            &std::ffi::CString::new(format!("no method {member}")).unwrap_or_default(),
        ),
    }
}

fn prompt_line(q: &str) -> String {
    print!("{q}");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    line
}

fn prompt_yes(q: &str) -> bool {
    matches!(prompt_line(q).trim(), "y" | "Y" | "yes" | "YES" | "Yes")
}

/// `wardgate pair` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The device's Bluetooth address as it advertises now (AA:BB:CC:DD:EE:FF).
    address: String,
    /// BlueZ adapter.
    #[arg(long, default_value = "hci0")]
    adapter: String,
    /// Accept Just Works pairing (devices with neither display nor keyboard; no MITM protection).
    #[arg(long)]
    allow_just_works: bool,
    /// Accept a BlueZ that allows LE legacy pairing (SecureConnections is not `only`).
    #[arg(long)]
    allow_legacy_pairing: bool,
    /// BlueZ's main.conf, checked for `SecureConnections = only`.
    #[arg(long, default_value = "/etc/bluetooth/main.conf", hide = true)]
    bluez_main_conf: PathBuf,
    /// Seconds to look for the device and to wait for the pairing.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// `wardgate pair`: exit 2 for a malformed address or adapter name, 1 when pairing failed.
pub fn main(args: Args) -> anyhow::Result<std::process::ExitCode> {
    use crate::error::UsageError;
    let address = Address::parse(&args.address).map_err(UsageError)?;
    if !wardgate_adapters::ble::config::valid_adapter_name(&args.adapter) {
        return Err(UsageError(format!(
            "--adapter `{}` is not a BlueZ adapter name (like hci0)",
            args.adapter
        ))
        .into());
    }
    super::runtime()?.block_on(pair(PairOptions {
        address,
        adapter: args.adapter,
        allow_just_works: args.allow_just_works,
        allow_legacy: args.allow_legacy_pairing,
        bluez_main_conf: args.bluez_main_conf,
        timeout: Duration::from_secs(args.timeout.max(1)),
    }))?;
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_connections_setting() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("main.conf");
        assert_eq!(
            secure_connections_mode(&f),
            "on",
            "absent file: BlueZ default"
        );
        std::fs::write(
            &f,
            "[General]\n#SecureConnections = only\nName = x\n[Policy]\nSecureConnections=only\n",
        )
        .unwrap();
        assert_eq!(
            secure_connections_mode(&f),
            "on",
            "comments and other sections do not count"
        );
        std::fs::write(&f, "[General]\nSecureConnections = Only\n").unwrap();
        assert_eq!(secure_connections_mode(&f), "only");
    }
}
