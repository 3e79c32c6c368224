//! The daemon's status snapshot, `status.json`: written every 2 s by the status loop
//! (`status_loop.rs`) atomically (temp file + rename), read by `wardgate status`
//! (`cli/status.rs`), so the status view needs no socket and works whether the daemon runs
//! or not.
//!
//! Where: `[store] status_path`, by default `/run/wardgate/status.json` when systemd made the
//! runtime directory (`RuntimeDirectory=wardgate`, a tmpfs), else `status.json` beside the store
//! (`crate::config::StoreSection::status_path`). Under /run a full store's filesystem cannot
//! stop the daemon from telling the truth about it; beside the store (runs outside systemd,
//! tests) it can, so give such runs a `status_path` on another filesystem if that matters.

use crate::pipeline::DeviceCounts;
use crate::uplink::UplinkStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How old a snapshot may be while the daemon still counts as running (it writes every 2 s).
pub const FRESH_MS: i64 = 10_000;

/// Health of one adapter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AdapterSnapshot {
    /// Configured name.
    pub name: String,
    /// Runs that ended in an error or a panic.
    pub failures: u64,
    /// Restarts by the supervisor; for a plug-in, plus the plug-in's own restarts
    /// (`exec.restarts`).
    pub restarts: u64,
    /// Serial adapters: frames decoded, frame errors, connects, disconnects (else absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<BTreeMap<String, u64>>,
    /// Plug-ins (`[[exec]]`): starts, restarts, exits, lines, bad lines, stderr lines, forced
    /// kills, the running pid (see `wardgate_adapters::exec::ExecStats`; else absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<BTreeMap<String, u64>>,
    /// The BLE adapter: advertisements, refused devices, pruned, connects, subscriptions,
    /// notifications, decode errors (see `wardgate_adapters::ble::central::BleStats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ble: Option<BTreeMap<String, u64>>,
}

/// The snapshot the daemon writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was written, ms since the Unix epoch.
    pub written_ms: i64,
    /// When it was written, ms of `CLOCK_BOOTTIME` (monotonic since boot, system-wide): decides
    /// "running" without trusting the wall clock. Absent in snapshots of older daemons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_boot_ms: Option<i64>,
    /// Set in the last snapshot of a daemon that shut down cleanly.
    #[serde(default)]
    pub stopped: bool,
    /// Gateway id.
    pub gateway: String,
    /// `wardgate` version.
    pub version: String,
    /// The uplink.
    pub uplink: UplinkStatus,
    /// Rows accepted per device since the daemon started.
    pub devices: BTreeMap<String, DeviceCounts>,
    /// Liveness per tracked device (`online`, `stale`, `offline`; see [`crate::health::liveness`]).
    /// Absent in snapshots of older daemons.
    #[serde(default)]
    pub liveness: BTreeMap<String, String>,
    /// Adapters.
    pub adapters: Vec<AdapterSnapshot>,
    /// Whether the system clock was synchronised (absent in snapshots of older daemons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_synced: Option<bool>,
    /// Whether the store accepts rows (full disk) and what was refused (absent in snapshots of
    /// older daemons).
    #[serde(default)]
    pub store: crate::pipeline::StoreState,
    /// Firmware executions not finished, and those finished in the last day (absent without
    /// `[firmware]` and in snapshots of older daemons).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firmware: Vec<FirmwareExecution>,
    /// The firmware each device last reported, by device id (absent when none did and in
    /// snapshots of older daemons).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub firmware_versions: BTreeMap<String, FirmwareVersion>,
    /// The configured `location` of each device that has one, by device id (absent when none
    /// has and in snapshots of older daemons).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub locations: BTreeMap<String, String>,
}

/// The firmware a device reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareVersion {
    /// Version text as reported.
    pub version: String,
    /// `smp` (the running image over SMP, recorded by the firmware relay) or `dis` (BLE Device
    /// Information 0x2A26 at the last connection).
    pub source: String,
    /// When it was reported, Unix ms.
    pub since_ms: i64,
}

/// The version of each device: the newer of what the relay recorded over SMP (`smp`, from the
/// store) and what the device said at its last BLE connection (`dis`, the writer's counts).
pub fn firmware_versions(
    smp: &[crate::store::firmware::DeviceFirmwareRow],
    counts: &BTreeMap<String, DeviceCounts>,
) -> BTreeMap<String, FirmwareVersion> {
    let mut out: BTreeMap<String, FirmwareVersion> = BTreeMap::new();
    for r in smp {
        out.insert(
            r.device.clone(),
            FirmwareVersion {
                version: r.version.clone(),
                source: r.source.clone(),
                since_ms: r.updated_ms,
            },
        );
    }
    for (d, c) in counts {
        let Some(v) = &c.firmware else { continue };
        if out.get(d).is_none_or(|f| f.since_ms <= c.firmware_ms) {
            out.insert(
                d.clone(),
                FirmwareVersion {
                    version: v.clone(),
                    source: "dis".into(),
                    since_ms: c.firmware_ms,
                },
            );
        }
    }
    out
}

/// One firmware job on one device, as `wardgate status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FirmwareExecution {
    /// Job id.
    pub job: String,
    /// Device id.
    pub device: String,
    /// State (`queued`, `waiting`, `downloading`, …, `done`, `failed`, `cancelled`).
    pub state: String,
    /// Attempts started.
    pub attempt: u32,
    /// Why it waits or failed.
    pub reason: Option<String>,
    /// Last change, Unix ms.
    pub updated_ms: i64,
}

/// Writes `snap` atomically to `path` (temp file beside it + rename).
pub fn write_snapshot(path: &Path, snap: &Snapshot) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(snap)?)?;
    std::fs::rename(tmp, path)
}

/// `CLOCK_BOOTTIME` in ms: monotonic since boot, the same for every process, unmoved by
/// wall-clock steps (`None` if the clock cannot be read).
pub fn boot_ms() -> Option<i64> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .ok()
        .map(|t| t.tv_sec() * 1000 + t.tv_nsec() / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::firmware::DeviceFirmwareRow;

    #[test]
    fn the_newer_report_of_a_devices_firmware_wins() {
        let smp = |d: &str, v: &str, at: i64| DeviceFirmwareRow {
            device: d.into(),
            version: v.into(),
            hash: None,
            confirmed: true,
            source: "smp".into(),
            updated_ms: at,
        };
        let mut counts = BTreeMap::new();
        counts.insert(
            "ble:a".to_string(),
            DeviceCounts {
                firmware: Some("2.0 (dis)".into()),
                firmware_ms: 500,
                ..Default::default()
            },
        );
        counts.insert("serial:b".to_string(), DeviceCounts::default());
        let v = firmware_versions(
            &[smp("ble:a", "1.9.0", 100), smp("serial:b", "1.0.0", 50)],
            &counts,
        );
        assert_eq!(
            (v["ble:a"].version.as_str(), v["ble:a"].source.as_str()),
            ("2.0 (dis)", "dis")
        );
        assert_eq!(
            (
                v["serial:b"].version.as_str(),
                v["serial:b"].source.as_str()
            ),
            ("1.0.0", "smp")
        );
        // An SMP report after the connection (the relay updated it) wins.
        let v = firmware_versions(&[smp("ble:a", "2.1.0", 900)], &counts);
        assert_eq!(
            (v["ble:a"].version.as_str(), v["ble:a"].source.as_str()),
            ("2.1.0", "smp")
        );
        assert_eq!(v.len(), 1);
    }
}
