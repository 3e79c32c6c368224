//! `wardgate status`: what the gateway is doing, for an installer (text) or a script (`--json`).
//!
//! The running daemon writes a snapshot, `status.json`, every 2 s (atomically: temp file +
//! rename) where `[store] status_path` says: by default `/run/wardgate/status.json` under systemd,
//! else beside the store (`crate::config::StoreSection::status_path`; this command resolves it
//! from the same config). `wardgate status` reads that snapshot and the store itself
//! (read-only), so it works whether the daemon runs or not and needs no socket or privileges
//! beyond reading the state and runtime directories.

use crate::health::snapshot::{boot_ms, Snapshot, FRESH_MS};
use crate::store::StoreStats;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wardgate_adapters::observation::now_ms;

/// What `wardgate status` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Whether a fresh snapshot shows the daemon running.
    pub running: bool,
    /// The daemon's last snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// The store read directly (queue depth and age, bytes), if it exists.
    pub store: Option<StoreStats>,
    /// What could not be read (permission denied, corrupt file), in an installer's words.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// Gathers the report for a gateway whose store is at `store_path` and whose daemon writes its
/// snapshot to `snap_path`. What cannot be read (permissions, a corrupt file) is named in
/// [`Report::problems`], never taken for "absent".
pub fn report(store_path: &Path, snap_path: &Path) -> Report {
    let mut problems = Vec::new();
    let snapshot: Option<Snapshot> = match std::fs::read(snap_path) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(format!(
                    "{} is unreadable ({e}): the daemon rewrites it every 2 s while it runs",
                    snap_path.display()
                ));
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            problems.push(format!(
                "cannot read {} ({e}){}",
                snap_path.display(),
                sudo_hint(&e)
            ));
            None
        }
    };
    let running = snapshot.as_ref().is_some_and(|s| !s.stopped && fresh(s));
    if let Some(s) = snapshot.as_ref().filter(|_| running) {
        problems.extend(plugin_problems(s));
    }
    let store = match std::fs::metadata(store_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            problems.push(format!(
                "cannot read the store {} ({e}){}",
                store_path.display(),
                sudo_hint(&e)
            ));
            None
        }
        Ok(_) => match crate::store::read_stats(store_path) {
            Ok(st) => Some(st),
            Err(e) => {
                problems.push(format!(
                    "cannot read the store {} ({e})",
                    store_path.display()
                ));
                None
            }
        },
    };
    Report {
        running,
        snapshot,
        store,
        problems,
    }
}

/// Plug-ins of a running daemon that are not running, or keep exiting within a minute of
/// their start (3 or more runs in a row: [`wardgate_adapters::exec::ExecStats::quick_exits`]).
fn plugin_problems(s: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for a in &s.adapters {
        let Some(m) = &a.exec else { continue };
        let g = |k: &str| m.get(k).copied().unwrap_or(0);
        let quick = g("quick_exits");
        let why = if g("starts") == 0 && g("start_failures") > 0 {
            format!(
                "plug-in {} cannot start ({} attempts; see the journal)",
                a.name,
                g("start_failures")
            )
        } else if quick >= 3 {
            format!(
                "plug-in {} keeps restarting: its last {quick} runs ended within a minute of their start ({} starts; its stderr is in the journal as `plugin {}:`)",
                a.name,
                g("starts"),
                a.name
            )
        } else if g("pid") == 0 {
            format!("plug-in {} is not running ({} starts)", a.name, g("starts"))
        } else {
            continue;
        };
        out.push(why);
    }
    out
}

/// Whether the snapshot was written within [`FRESH_MS`]: on the boot clock when the snapshot
/// has it (a snapshot from before a reboot is never fresh), else on the wall clock.
fn fresh(s: &Snapshot) -> bool {
    match (s.written_boot_ms, boot_ms()) {
        (Some(w), Some(now)) => now >= w && now - w < FRESH_MS,
        _ => now_ms() - s.written_ms < FRESH_MS,
    }
}

fn sudo_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        ": run it with sudo, or as user wardgate"
    } else {
        ""
    }
}

fn ago(ms: i64) -> String {
    let s = (now_ms() - ms).max(0) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

/// The device as the status lists it: its id, and where it is when configured
/// (`serial:bed1 at ward-7/bed-12`).
fn device_label(s: &Snapshot, device: &str) -> String {
    match s.locations.get(device) {
        Some(l) => format!("{device} at {l}"),
        None => device.to_owned(),
    }
}

/// `firmware 1.2.3 (smp), ` when the device's version is known, else nothing.
fn firmware_of(s: &Snapshot, device: &str) -> String {
    s.firmware_versions
        .get(device)
        .map(|v| format!("firmware {} ({}), ", v.version, v.source))
        .unwrap_or_default()
}

/// The `firmware:` lines of the report: one per execution (job, device, state, attempt,
/// reason, when it last changed).
fn st_firmware(r: &Report) -> Vec<String> {
    let Some(s) = &r.snapshot else {
        return Vec::new();
    };
    s.firmware
        .iter()
        .map(|e| {
            format!(
                "firmware: job {} on {}: {}{}{} ({})",
                e.job,
                e.device,
                e.state.to_uppercase(),
                e.reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                if e.attempt > 0 {
                    format!(", attempt {}", e.attempt)
                } else {
                    String::new()
                },
                ago(e.updated_ms)
            )
        })
        .collect()
}

/// The report as text for an installer.
pub fn render(r: &Report, gateway: &str) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("gateway {gateway}"));
    for p in &r.problems {
        line(format!("PROBLEM:  {p}"));
    }
    match &r.snapshot {
        Some(s) if r.running => line(format!(
            "daemon:   running (wardgate {}, status {})",
            s.version,
            ago(s.written_ms)
        )),
        Some(s) if s.stopped => line(format!(
            "daemon:   NOT RUNNING (stopped {})",
            ago(s.written_ms)
        )),
        Some(s) => line(format!(
            "daemon:   NOT RUNNING (last status {}; killed or hung?)",
            ago(s.written_ms)
        )),
        None if r.problems.iter().any(|p| p.contains("status.json")) => {
            line("daemon:   UNKNOWN (its status file cannot be read: see PROBLEM)".into())
        }
        None => line("daemon:   NOT RUNNING (no status written yet)".into()),
    }
    if let Some(synced) = r.snapshot.as_ref().and_then(|s| s.clock_synced) {
        line(if synced {
            "clock:    synchronised".into()
        } else {
            "clock:    NOT SYNCHRONISED (no NTP yet: observations are stamped `unsynced` and corrected once it syncs; a broker certificate may look not yet valid)".into()
        });
    }
    if let Some(s) = &r.snapshot {
        let u = &s.uplink;
        if u.connected && r.running {
            line("uplink:   connected".into());
        } else {
            line(format!(
                "uplink:   DISCONNECTED{}{}",
                u.down_since_ms
                    .map(|t| format!(
                        " since {} ({})",
                        crate::cli::provision::rfc3339(std::time::Duration::from_millis(
                            u64::try_from(t).unwrap_or(0)
                        )),
                        ago(t)
                    ))
                    .unwrap_or_default(),
                u.last_error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
        line(format!(
            "          {} batches sent ({} re-sent), {} acknowledged, {} connection failures",
            u.batches_sent, u.batches_resent, u.batches_acked, u.connection_failures
        ));
        if let Some(kid) = &u.kid {
            line(format!(
                "          certificate kid {kid}{}",
                if u.rotations > 0 {
                    format!(" ({} rotations since start)", u.rotations)
                } else {
                    String::new()
                }
            ));
        }
        if u.acks_refused > 0 {
            line(format!(
                "          {} ACKS REFUSED (not signed by a trusted receiver, or not for this gateway; they deleted nothing){}",
                u.acks_refused,
                u.last_refused_ack
                    .as_ref()
                    .map(|l| format!("; last: {l}"))
                    .unwrap_or_default()
            ));
        }
        if let Some(r) = &u.receiver_refusal {
            line(format!(
                "          RECEIVER REFUSES THIS GATEWAY'S BATCHES{}: {r} (they stay in the store and are re-sent)",
                u.receiver_refusal_since_ms
                    .map(|t| format!(" (first {})", ago(t)))
                    .unwrap_or_default()
            ));
        }
        if let Some(e) = &u.credentials_error {
            line(format!(
                "          CERTIFICATE/KEY REPLACEMENT REFUSED, still using the previous pair: {e}"
            ));
        }
    }
    if let Some(s) = r.snapshot.as_ref().filter(|_| r.running) {
        let st = &s.store;
        if let Some(since) = st.failing_since_ms {
            line(format!(
                "store:    {} since {}: NOT ACCEPTING NEW ROWS; {} held in memory and retried every second{}",
                if st.full { "FULL" } else { "FAILING" },
                ago(since),
                st.buffered,
                st.last_error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(s) = &r.snapshot {
        let st = &s.store;
        let unreported: u64 = st.refused_unreported.values().map(|r| r.total()).sum();
        if st.refused_since_start > 0 || unreported > 0 {
            line(format!(
                "          {} ROWS REFUSED since start (store full){}",
                st.refused_since_start,
                if unreported > 0 {
                    format!(
                        "; {unreported} not yet reported upstream ({})",
                        st.refused_unreported
                            .iter()
                            .map(|(d, r)| format!("{d}: {}", r.total()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    "; reported upstream as a `dropped` event".into()
                }
            ));
        }
    }
    match &r.store {
        Some(st) => line(format!(
            "store:    {} rows queued{}, {} batches awaiting acknowledgement, {:.1} MB",
            st.queued,
            st.oldest_ms
                .map(|t| format!(" (oldest {})", ago(t)))
                .unwrap_or_default(),
            st.unacked_batches,
            st.bytes as f64 / 1e6
        )),
        None if r.problems.iter().any(|p| p.contains("the store")) => {
            line("store:    UNKNOWN (cannot be read: see PROBLEM)".into())
        }
        None => line("store:    not created yet".into()),
    }
    if let Some(s) = &r.snapshot {
        for a in &s.adapters {
            let serial = a
                .serial
                .as_ref()
                .map(|m| {
                    format!(
                        ", {} frames, {} frame errors, {} disconnects",
                        m.get("frames_ok").unwrap_or(&0),
                        m.get("frame_errors").unwrap_or(&0),
                        m.get("disconnects").unwrap_or(&0)
                    )
                })
                .unwrap_or_default();
            let ble = a
                .ble
                .as_ref()
                .map(|m| {
                    let g = |k: &str| m.get(k).copied().unwrap_or(0);
                    format!(
                        ", {} advertisements, {} refused sightings ({} reported), {} connects, {} subscriptions, {} notifications, {} decode errors",
                        g("advertisements"), g("rejected"), g("rejected_events"), g("connects"),
                        g("subscriptions"), g("notifications"), g("decode_errors")
                    )
                })
                .unwrap_or_default();
            let exec = a
                .exec
                .as_ref()
                .map(|m| {
                    let g = |k: &str| m.get(k).copied().unwrap_or(0);
                    format!(
                        ", plug-in {}, {} starts, {} lines, {} bad lines ({} too long), {} stderr lines{}, {} forced kills{}",
                        match g("pid") {
                            0 => "not running".to_string(),
                            pid => format!("pid {pid}"),
                        },
                        g("starts"),
                        g("lines_ok"),
                        g("bad_lines"),
                        g("lines_too_long"),
                        g("stderr_lines"),
                        match g("stderr_suppressed") {
                            0 => String::new(),
                            n => format!(" ({n} more not logged: over {} a second)", wardgate_adapters::exec::adapter::STDERR_LINES_PER_SEC),
                        },
                        g("forced_kills"),
                        match g("slowed") {
                            0 => String::new(),
                            n => format!(", SLOWED {n} times for writing more than max_lines_per_s ({:.1} s held back)", g("slowed_ms") as f64 / 1000.0),
                        }
                    )
                })
                .unwrap_or_default();
            line(format!(
                "adapter:  {} ({} failures, {} restarts{serial}{exec}{ble})",
                a.name, a.failures, a.restarts
            ));
        }
        for (d, c) in &s.devices {
            // A stopped or hung daemon's states are history: show only when it was last seen.
            let state = s.liveness.get(d).filter(|_| r.running);
            let seen = (c.last_seen_ms > 0).then(|| format!("last seen {}", ago(c.last_seen_ms)));
            let head = match (state, seen) {
                (Some(st), Some(seen)) => format!("{st} ({seen}), "),
                (Some(st), None) => format!("{st}, "),
                (None, Some(seen)) => format!("{seen}, "),
                (None, None) => String::new(),
            };
            line(format!(
                "device:   {}: {head}{}accepted since start: observations {}, events {}",
                device_label(s, d),
                firmware_of(s, d),
                c.observations,
                c.events
            ));
        }
        for e in &st_firmware(r) {
            line(e.clone());
        }
        // Configured devices that never sent anything since the daemon started.
        for (d, st) in s
            .liveness
            .iter()
            .filter(|(d, _)| !s.devices.contains_key(*d))
        {
            line(format!(
                "device:   {}: {}{} (nothing received since start)",
                device_label(s, d),
                if r.running { st.as_str() } else { "not seen" },
                firmware_of(s, d)
                    .strip_suffix(", ")
                    .map(|f| format!(", {f}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

/// `wardgate status` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Gateway config file.
    #[arg(long, short, default_value = "/etc/wardgate/wardgate.toml")]
    config: PathBuf,
    /// Machine-readable JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `wardgate status`: exit 1 when something could not be read (named in the report).
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = crate::config::load_gateway(&args.config, crate::config::Checks::NoFiles)?;
    let r = report(&cfg.store.path, &cfg.store.status_path());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", render(&r, cfg.gateway.id.get_ref()));
    }
    Ok(super::exit_if(r.problems.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::DeviceCounts;

    #[test]
    fn a_snapshot_without_liveness_or_last_seen_still_parses() {
        // A snapshot as an older daemon wrote it: no `liveness`, no `last_seen_ms`.
        let mut snap = Snapshot::default();
        snap.devices
            .insert("serial:bed1".into(), DeviceCounts::default());
        let mut v = serde_json::to_value(&snap).unwrap();
        v.as_object_mut().unwrap().remove("liveness").unwrap();
        v["devices"]["serial:bed1"]
            .as_object_mut()
            .unwrap()
            .remove("last_seen_ms")
            .unwrap();
        let s: Snapshot = serde_json::from_value(v).unwrap();
        assert!(s.liveness.is_empty());
        assert_eq!(s.devices["serial:bed1"].last_seen_ms, 0);
    }

    #[test]
    fn status_shows_each_devices_state_and_when_it_was_last_seen() {
        let now = now_ms();
        let mut snap = Snapshot {
            written_ms: now,
            gateway: "g".into(),
            ..Default::default()
        };
        snap.devices.insert(
            "serial:bed1".into(),
            DeviceCounts {
                observations: 5,
                events: 0,
                last_seen_ms: now - 3_000,
                ..Default::default()
            },
        );
        snap.liveness.insert("serial:bed1".into(), "online".into());
        let running = Report {
            running: true,
            snapshot: Some(snap.clone()),
            store: None,
            problems: vec![],
        };
        let text = render(&running, "g");
        assert!(
            text.contains("device:   serial:bed1: online (last seen 3 s ago), accepted"),
            "{text}"
        );
        let stopped = Report {
            running: false,
            ..running
        };
        let text = render(&stopped, "g");
        assert!(
            text.contains("device:   serial:bed1: last seen 3 s ago, accepted"),
            "{text}"
        );
    }

    /// The text of a running daemon's report with `snap` (no store read, no problems).
    fn render_running(snap: Snapshot) -> String {
        let r = Report {
            running: true,
            snapshot: Some(snap),
            store: None,
            problems: vec![],
        };
        render(&r, "g")
    }

    #[test]
    fn plugins_that_are_not_running_or_keep_restarting_are_problems() {
        let plugin = |name: &str, stats: &[(&str, u64)]| crate::health::snapshot::AdapterSnapshot {
            name: name.into(),
            failures: 0,
            restarts: 0,
            serial: None,
            exec: Some(stats.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
            ble: None,
        };
        let snap = Snapshot {
            written_ms: now_ms(),
            adapters: vec![
                plugin("ok", &[("pid", 7), ("starts", 1)]),
                plugin("crashy", &[("pid", 0), ("starts", 12), ("quick_exits", 11)]),
                plugin("missing", &[("pid", 0), ("start_failures", 4)]),
                plugin("between", &[("pid", 0), ("starts", 2), ("quick_exits", 1)]),
                plugin(
                    "flood",
                    &[
                        ("pid", 9),
                        ("starts", 1),
                        ("slowed", 2),
                        ("slowed_ms", 4_500),
                        ("stderr_lines", 20),
                        ("stderr_suppressed", 380),
                    ],
                ),
            ],
            ..Snapshot::default()
        };
        assert_eq!(
            plugin_problems(&snap),
            [
                "plug-in crashy keeps restarting: its last 11 runs ended within a minute of their start (12 starts; its stderr is in the journal as `plugin crashy:`)",
                "plug-in missing cannot start (4 attempts; see the journal)",
                "plug-in between is not running (2 starts)",
            ]
        );
        let text = render_running(snap);
        assert!(
            text.contains(", 20 stderr lines (380 more not logged: over 20 a second), 0 forced kills, SLOWED 2 times for writing more than max_lines_per_s (4.5 s held back))"),
            "{text}"
        );
    }

    #[test]
    fn firmware_executions_show_their_state_reason_and_attempt() {
        let snap = Snapshot {
            written_ms: now_ms(),
            firmware: vec![crate::health::snapshot::FirmwareExecution {
                job: "fw-7".into(),
                device: "serial:bed1".into(),
                state: "waiting".into(),
                attempt: 1,
                reason: Some("in_clinical_use".into()),
                updated_ms: now_ms() - 3_000,
            }],
            ..Snapshot::default()
        };
        let text = render_running(snap);
        assert!(
            text.contains(
                "firmware: job fw-7 on serial:bed1: WAITING (in_clinical_use), attempt 1 (3 s ago)"
            ),
            "{text}"
        );
    }

    #[test]
    fn unreadable_files_are_problems_not_absence() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store.db");
        let snap = dir.path().join("status.json");
        let r = report(&store, &snap);
        assert!(r.problems.is_empty() && r.snapshot.is_none() && r.store.is_none());
        std::fs::write(&snap, b"{ not json").unwrap();
        std::fs::write(&store, b"not sqlite").unwrap();
        let r = report(&store, &snap);
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
        assert!(
            r.problems[0].contains("status.json is unreadable"),
            "{:?}",
            r.problems
        );
        assert!(
            r.problems[1].contains("cannot read the store"),
            "{:?}",
            r.problems
        );
        let text = render(&r, "g");
        assert!(text.contains("PROBLEM:  "), "{text}");
    }

    #[test]
    fn a_full_store_and_refused_rows_are_shown() {
        let mut snap = Snapshot {
            written_ms: now_ms(),
            ..Default::default()
        };
        snap.store.failing_since_ms = Some(now_ms() - 5_000);
        snap.store.full = true;
        snap.store.buffered = 50;
        snap.store.refused_since_start = 7;
        snap.store.refused_unreported.insert(
            "serial:bed1".into(),
            crate::pipeline::Refused {
                waveform: 7,
                ..Default::default()
            },
        );
        let text = render_running(snap);
        assert!(
            text.contains("store:    FULL since 5 s ago: NOT ACCEPTING NEW ROWS; 50 held"),
            "{text}"
        );
        assert!(
            text.contains("7 ROWS REFUSED since start (store full); 7 not yet reported upstream (serial:bed1: 7)"),
            "{text}"
        );
    }

    #[test]
    fn configured_devices_that_never_spoke_are_listed() {
        let mut snap = Snapshot::default();
        snap.liveness
            .insert("ble:00:22:D0:90:4C:14".into(), "offline".into());
        let text = render_running(snap);
        assert!(
            text.contains(
                "device:   ble:00:22:D0:90:4C:14: offline (nothing received since start)"
            ),
            "{text}"
        );
    }

    #[test]
    fn running_is_judged_on_the_boot_clock_not_the_wall_clock() {
        let boot = boot_ms().unwrap();
        let snap = |written_ms: i64, written_boot_ms: i64| Snapshot {
            written_ms,
            written_boot_ms: Some(written_boot_ms),
            ..Default::default()
        };
        // Written 2 s ago by the boot clock, while the wall clock says hours ago (a step).
        assert!(fresh(&snap(now_ms() - 5 * 3_600_000, boot - 2_000)));
        // The wall clock says "just now", the boot clock 60 s ago: a dead daemon.
        assert!(!fresh(&snap(now_ms(), boot - 60_000)));
        // From before a reboot (boot clock restarted): never running.
        assert!(!fresh(&snap(now_ms(), boot + 3_600_000)));
    }

    #[test]
    fn each_devices_firmware_version_is_shown_when_known() {
        let mut snap = Snapshot {
            written_ms: now_ms(),
            gateway: "g".into(),
            ..Default::default()
        };
        snap.devices.insert(
            "serial:bed1".into(),
            DeviceCounts {
                observations: 3,
                ..Default::default()
            },
        );
        snap.liveness.insert("serial:bed1".into(), "online".into());
        snap.liveness
            .insert("ble:00:22:D0:90:4C:14".into(), "offline".into());
        for (d, v, src) in [
            ("serial:bed1", "1.4.0", "smp"),
            ("ble:00:22:D0:90:4C:14", "2.1", "dis"),
        ] {
            snap.firmware_versions.insert(
                d.into(),
                crate::health::snapshot::FirmwareVersion {
                    version: v.into(),
                    source: src.into(),
                    since_ms: 1,
                },
            );
        }
        let text = render_running(snap);
        assert!(
            text.contains(
                "device:   serial:bed1: online, firmware 1.4.0 (smp), accepted since start"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "device:   ble:00:22:D0:90:4C:14: offline, firmware 2.1 (dis) (nothing received since start)"
            ),
            "{text}"
        );
    }

    #[test]
    fn each_devices_location_is_shown_when_configured() {
        let mut snap = Snapshot {
            written_ms: now_ms(),
            gateway: "g".into(),
            ..Default::default()
        };
        snap.devices.insert(
            "serial:bed12".into(),
            DeviceCounts {
                observations: 3,
                ..Default::default()
            },
        );
        snap.liveness.insert("serial:bed12".into(), "online".into());
        snap.liveness.insert("exec:pump".into(), "offline".into());
        snap.liveness.insert("serial:bed14".into(), "online".into());
        snap.locations
            .insert("serial:bed12".into(), "ward-7/bed-12".into());
        snap.locations.insert("exec:pump".into(), "ward-7".into());
        // A snapshot round-trips with its locations (status.json).
        let back: Snapshot = serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
        assert_eq!(back.locations, snap.locations);
        let text = render_running(snap);
        assert!(
            text.contains("device:   serial:bed12 at ward-7/bed-12: online, accepted since start"),
            "{text}"
        );
        assert!(
            text.contains("device:   exec:pump at ward-7: offline (nothing received since start)"),
            "{text}"
        );
        assert!(
            text.contains("device:   serial:bed14: online (nothing received since start)"),
            "{text}"
        );
    }
}
