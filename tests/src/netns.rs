//! A network namespace and a veth pair the test creates itself (root and iproute2 needed), so a
//! component can sit behind a link the test controls: [`NetNs::blackhole`] makes everything the
//! namespace sends to the host side vanish silently (no RST, no ICMP: a half-open connection,
//! FAILURES.md B02), [`NetNs::restore`] brings it back.
//!
//! Addresses: a /30 in 10.200.0.0/16 (host side `.1`, namespace side `.2`), private and used only
//! between the two ends created here. Dropping the guard deletes the veth pair and the
//! namespace, whatever happened. Namespaces named `wg-e2e-PID` whose creating process is gone
//! (a test killed before its guard ran) are deleted by the next [`NetNs::create`].

use crate::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::process::Command;

const PREFIX: &str = "wg-e2e-";

/// Why namespaces cannot be created here (for [`crate::skip_or_fail`]), `None` when they can.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("network namespaces need root".into());
    }
    if ip_bin().is_none() {
        return Some("`ip` (iproute2) is not installed".into());
    }
    None
}

fn ip_bin() -> Option<&'static str> {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

fn ip(args: &[&str]) -> Result<()> {
    let bin = ip_bin().context("`ip` (iproute2) is not installed")?;
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("run ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A namespace with one veth pair to the host namespace. See the module documentation.
pub struct NetNs {
    /// The namespace's name (`wg-e2e-PID`).
    pub name: String,
    /// The host side's interface.
    pub host_if: String,
    /// The host side's address.
    pub host_ip: Ipv4Addr,
    /// The namespace side's address (where a server inside listens).
    pub ns_ip: Ipv4Addr,
    blackholed: bool,
}

impl NetNs {
    /// Creates the namespace and the pair, with loopback up inside.
    pub fn create() -> Result<NetNs> {
        if let Some(why) = unavailable() {
            bail!("{why}");
        }
        remove_stale();
        let pid = std::process::id();
        let name = format!("{PREFIX}{pid}");
        let host_if = format!("wgh{}", pid % 1_000_000);
        let ns_if = format!("wgn{}", pid % 1_000_000);
        let third = (pid % 250) as u8 + 1;
        let host_ip = Ipv4Addr::new(10, 200, third, 1);
        let ns_ip = Ipv4Addr::new(10, 200, third, 2);
        ip(&["netns", "add", &name])?;
        let ns = NetNs {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip,
            ns_ip,
            blackholed: false,
        };
        // From here on, the guard cleans up whatever a failing step leaves.
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ])?;
        ip(&["-n", &name, "link", "set", &ns_if, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip netns exec NAME` prefix for [`crate::process::Proc::spawn`]: (program, leading args).
    pub fn exec_prefix(&self) -> (std::path::PathBuf, Vec<String>) {
        (
            ip_bin().unwrap_or("ip").into(),
            vec!["netns".into(), "exec".into(), self.name.clone()],
        )
    }

    /// Silently drops everything the namespace sends to the host side (a blackhole route for
    /// the host address inside the namespace: packets vanish, no RST, no ICMP). What arrives
    /// from the host still arrives.
    pub fn blackhole(&mut self) -> Result<()> {
        ip(&[
            "-n",
            &self.name,
            "route",
            "add",
            "blackhole",
            &format!("{}/32", self.host_ip),
        ])?;
        self.blackholed = true;
        Ok(())
    }

    /// Undoes [`Self::blackhole`].
    pub fn restore(&mut self) -> Result<()> {
        ip(&[
            "-n",
            &self.name,
            "route",
            "del",
            "blackhole",
            &format!("{}/32", self.host_ip),
        ])?;
        self.blackholed = false;
        Ok(())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.blackholed {
            let _ = self.restore();
        }
        // Deleting one end deletes the pair (also when it is gone with the namespace already).
        let _ = ip(&["link", "del", &self.host_if]);
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!(
                "[e2e] could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Deletes `wg-e2e-PID` namespaces (and their host-side veth) whose process has gone.
fn remove_stale() {
    let Some(bin) = ip_bin() else { return };
    let Ok(out) = Command::new(bin).args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["link", "del", &format!("wgh{}", pid % 1_000_000)]);
            let _ = ip(&["netns", "del", name]);
        }
    }
}
