//! The daemon's 2-second status loop: device liveness from the writer's counts (transitions
//! logged and published as retained device status), the gateway heartbeat, the `status.json`
//! snapshot for `wardgate status`, and the clock (synchronisation followed, buffered rows
//! corrected when it syncs). Each device's firmware version (the relay's SMP reports in the
//! store, BLE Device Information in the writer's counts) goes into all three; a device whose
//! version changes gets its retained status published again.

use crate::pipeline::WriterStats;
use crate::store::Store;
use crate::supervisor::AdapterHealth;
use crate::uplink::UplinkStatus;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use wardgate_adapters::ble::central::BleStats;
use wardgate_adapters::exec::ExecAdapter;
use wardgate_adapters::serial::SerialAdapter;
use wardgate_adapters::Adapter;

/// Where the status snapshot reads the adapters' own counters.
pub struct Counters {
    /// The serial adapters (their frame counters).
    pub serial: Vec<Arc<SerialAdapter>>,
    /// The plug-ins (their process and line counters).
    pub exec: Vec<Arc<ExecAdapter>>,
    /// The BLE adapter's counters.
    pub ble: Option<Arc<BleStats>>,
}

/// The daemon's 2-second loop: the `status.json` snapshot for `wardgate status`, device
/// liveness (transitions logged and published retained), the gateway heartbeat, and the clock
/// (synchronisation state for the adapters, correction of buffered rows when it syncs).
pub struct StatusLoop {
    /// Where `status.json` is written (`crate::config::StoreSection::status_path`).
    pub status_path: std::path::PathBuf,
    /// Who this gateway is (heartbeat fields, device status payloads).
    pub origin: crate::batch::Origin,
    /// The store (queue depth, oldest row, bytes; clock corrections).
    pub store: Arc<Store>,
    /// The uplink's state.
    pub uplink: watch::Receiver<UplinkStatus>,
    /// What the writer accepted, per device (liveness follows its counts).
    pub writer: Arc<WriterStats>,
    /// Each adapter's failures and restarts, by name.
    pub adapters: Vec<(String, Arc<AdapterHealth>)>,
    /// The adapters' own counters.
    pub counters: Counters,
    /// Configured devices and their liveness thresholds.
    pub tracked: Vec<(String, super::liveness::Thresholds)>,
    /// The configured `location` of each device that has one, by device id (device status and
    /// `status.json`; never the heartbeat, which is not encrypted).
    pub locations: std::collections::BTreeMap<String, String>,
    /// Where device status and heartbeat payloads go (the uplink publishes them retained).
    pub retained: watch::Sender<crate::uplink::RetainedSet>,
    /// Heartbeat period (`[uplink] heartbeat_s`).
    pub heartbeat_every: Duration,
    /// Whether the heartbeat carries each device's firmware version. The heartbeat is signed,
    /// never encrypted (monitoring reads it without a receiver key): with `[uplink]` encryption
    /// on, device ids and versions stay in the encrypted device status only (a version list on a
    /// shared broker tells any certificate holder which devices run a vulnerable image).
    pub heartbeat_firmware: bool,
    /// The clock source, polled every tick.
    pub clock: Arc<crate::system::clock::SharedClock>,
    /// When the daemon started (heartbeat uptime).
    pub started: std::time::Instant,
}

impl StatusLoop {
    /// The firmware version of each device now (see [`super::snapshot::firmware_versions`]).
    async fn firmware_versions(
        &self,
        counts: &std::collections::BTreeMap<String, crate::pipeline::DeviceCounts>,
    ) -> std::collections::BTreeMap<String, super::snapshot::FirmwareVersion> {
        let store = self.store.clone();
        let smp = tokio::task::spawn_blocking(move || store.firmware_devices())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        super::snapshot::firmware_versions(&smp, counts)
    }

    /// The firmware executions for the snapshot: unfinished ones, and finished ones of the
    /// last day (an empty list without `[firmware]`: the tables are empty).
    async fn firmware_executions(&self, now_ms: i64) -> Vec<super::snapshot::FirmwareExecution> {
        let store = self.store.clone();
        let rows = tokio::task::spawn_blocking(move || store.firmware_executions(None))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        rows.into_iter()
            .filter(|e| {
                !crate::store::firmware::FINAL_STATES.contains(&e.state.as_str())
                    || now_ms - e.updated_ms < 86_400_000
            })
            .map(|e| super::snapshot::FirmwareExecution {
                job: e.job,
                device: e.device,
                state: e.state,
                attempt: e.attempt,
                reason: e.reason,
                updated_ms: e.updated_ms,
            })
            .collect()
    }

    /// Runs until `shutdown` turns true, then writes a last snapshot marked `stopped`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        use std::sync::atomic::Ordering;
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        // Liveness from the writer's counts: a device whose accepted rows grew since the last
        // snapshot was seen (within the last 2 s). Monotonic time: a clock step changes nothing.
        let mut liveness = super::liveness::LivenessTracker::new();
        let mut since: std::collections::BTreeMap<String, i64> = Default::default();
        let start = std::time::Instant::now();
        for (d, t) in &self.tracked {
            liveness.track(d, *t, start);
            since.insert(d.clone(), wardgate_adapters::observation::now_ms());
        }
        let mut previous: std::collections::BTreeMap<String, u64> = Default::default();
        // The firmware version last published in each device's status.
        let mut published_fw: std::collections::BTreeMap<String, String> = Default::default();
        let mut last_heartbeat: Option<std::time::Instant> = None;
        let mut first = true;
        // The last snapshot write error, logged once per distinct error (not every 2 s).
        let mut write_error: Option<String> = None;
        loop {
            let stop = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.changed() => true,
            };
            self.follow_clock().await;
            let devices = self
                .writer
                .per_device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let now = std::time::Instant::now();
            let now_ms = wardgate_adapters::observation::now_ms();
            let mut transitions = Vec::new();
            for (d, c) in &devices {
                // Only signs of life from the device count, not the gateway's error reports.
                if previous.insert(d.clone(), c.activity).unwrap_or(0) < c.activity {
                    transitions.extend(liveness.seen(d, now));
                }
            }
            transitions.extend(liveness.tick(now));
            let mut changed: Vec<String> = transitions.iter().map(|t| t.device.clone()).collect();
            let versions = self.firmware_versions(&devices).await;
            for (d, v) in &versions {
                if published_fw.get(d) != Some(&v.version) && !changed.contains(d) {
                    changed.push(d.clone());
                }
            }
            if first {
                // Every configured device's initial state, so the upstream knows them all.
                changed.extend(self.tracked.iter().map(|(d, _)| d.clone()));
                first = false;
            }
            for t in &transitions {
                log::info!("{t}");
                since.insert(t.device.clone(), now_ms);
            }
            if !changed.is_empty() {
                self.retained.send_modify(|set| {
                    for d in &changed {
                        let Some(state) = liveness.state(d) else {
                            continue;
                        };
                        let c = devices.get(d).cloned().unwrap_or_default();
                        let fw = versions.get(d);
                        if let Some(v) = fw {
                            published_fw.insert(d.clone(), v.version.clone());
                        }
                        let s = super::retained::DeviceStatus {
                            device: d.clone(),
                            state: state.as_str().into(),
                            since_ms: since.get(d).copied().unwrap_or(now_ms),
                            last_seen_ms: c.last_seen_ms,
                            battery_pct: c.battery_pct,
                            rssi_dbm: c.rssi_dbm,
                            errors: c.errors,
                            last_error: c.last_error.clone(),
                            firmware: fw.map(|v| v.version.clone()),
                            firmware_source: fw.map(|v| v.source.clone()),
                            location: self.locations.get(d).cloned(),
                        };
                        set.insert(
                            super::retained::device_topic(d),
                            Arc::new(super::retained::device_status(&self.origin.gateway, &s)),
                        );
                    }
                });
            }
            let uplink = {
                let mut u = self.uplink.borrow().clone();
                // After shutdown nothing is connected, whatever the last state was.
                u.connected &= !stop;
                u
            };
            let adapters: Vec<super::snapshot::AdapterSnapshot> = self
                .adapters
                .iter()
                .map(|(name, h)| super::snapshot::AdapterSnapshot {
                    name: name.clone(),
                    failures: h.failures.load(Ordering::Relaxed),
                    // A plug-in's own restarts are the adapter's too.
                    restarts: h.restarts.load(Ordering::Relaxed)
                        + self
                            .counters
                            .exec
                            .iter()
                            .find(|a| a.name() == name)
                            .map_or(0, |a| a.stats().restarts),
                    serial: self
                        .counters
                        .serial
                        .iter()
                        .find(|a| a.name() == name)
                        .and_then(|a| serde_json::to_value(a.stats()).ok())
                        .and_then(|v| serde_json::from_value(v).ok()),
                    exec: self
                        .counters
                        .exec
                        .iter()
                        .find(|a| a.name() == name)
                        .and_then(|a| serde_json::to_value(a.stats()).ok())
                        .and_then(|v| serde_json::from_value(v).ok()),
                    ble: self
                        .counters
                        .ble
                        .as_ref()
                        .filter(|_| name == "ble")
                        .and_then(|b| serde_json::to_value(&**b).ok())
                        .and_then(|v| serde_json::from_value(v).ok()),
                })
                .collect();
            if last_heartbeat.is_none_or(|t| now.duration_since(t) >= self.heartbeat_every) {
                last_heartbeat = Some(now);
                self.heartbeat(&liveness, &uplink, &adapters, &versions, now_ms)
                    .await;
            }
            let firmware = self.firmware_executions(now_ms).await;
            let snap = super::snapshot::Snapshot {
                written_ms: now_ms,
                written_boot_ms: super::snapshot::boot_ms(),
                stopped: stop,
                gateway: self.origin.gateway.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                uplink,
                devices,
                liveness: liveness
                    .states()
                    .map(|(d, st)| (d.to_owned(), st.as_str().to_owned()))
                    .collect(),
                adapters,
                locations: self.locations.clone(),
                clock_synced: Some(self.clock.synced()),
                store: self
                    .writer
                    .store
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
                firmware,
                firmware_versions: versions,
            };
            let path = self.status_path.clone();
            let written = tokio::task::spawn_blocking(move || {
                super::snapshot::write_snapshot(&path, &snap).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match written {
                Ok(()) if write_error.is_some() => {
                    write_error = None;
                    log::info!(
                        "status snapshot {} written again",
                        self.status_path.display()
                    );
                }
                Ok(()) => {}
                Err(e) if write_error.as_ref() != Some(&e) => {
                    log::warn!(
                        "cannot write the status snapshot {} ({e}): `wardgate status` will show the daemon as not running; set [store] status_path on another filesystem (systemd: RuntimeDirectory=wardgate)",
                        self.status_path.display()
                    );
                    write_error = Some(e);
                }
                Err(_) => {}
            }
            if stop {
                return;
            }
        }
    }

    /// Polls the clock source (on synchronisation the rows stamped before are corrected).
    async fn follow_clock(&mut self) {
        let (clock, store) = (self.clock.clone(), self.store.clone());
        let _ = tokio::task::spawn_blocking(move || clock.poll(&store)).await;
    }

    async fn heartbeat(
        &self,
        liveness: &super::liveness::LivenessTracker,
        uplink: &UplinkStatus,
        adapters: &[super::snapshot::AdapterSnapshot],
        versions: &std::collections::BTreeMap<String, super::snapshot::FirmwareVersion>,
        now_ms: i64,
    ) {
        let store = self.store.clone();
        let figures = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>((store.oldest_pending_ms()?, store.bytes()?))
        })
        .await;
        let (oldest, bytes) = match figures {
            Ok(Ok(f)) => f,
            _ => (None, 0),
        };
        let count = |st: super::liveness::DeviceState| {
            liveness.states().filter(|(_, s)| *s == st).count() as u64
        };
        let h = super::retained::Heartbeat {
            gateway: self.origin.gateway.clone(),
            site: self.origin.site.clone(),
            ward: self.origin.ward.clone(),
            time_ms: now_ms,
            uptime_s: self.started.elapsed().as_secs(),
            queue_depth: self.store.queued(),
            oldest_unsent_age_s: oldest.map(|t| ((now_ms - t).max(0) / 1000) as u64),
            store_bytes: bytes,
            clock_synced: self.clock.synced(),
            uplink_connected: uplink.connected,
            batches_acked: uplink.batches_acked,
            acks_refused: uplink.acks_refused,
            store_full: {
                let st = self.writer.store.lock().unwrap_or_else(|e| e.into_inner());
                (st.full, st.refused_since_start)
            },
            adapters: adapters
                .iter()
                .map(|a| (a.name.clone(), a.failures, a.restarts))
                .collect(),
            devices_online: count(super::liveness::DeviceState::Online),
            devices_stale: count(super::liveness::DeviceState::Stale),
            devices_offline: count(super::liveness::DeviceState::Offline),
            firmware: if self.heartbeat_firmware {
                versions
                    .iter()
                    .map(|(d, v)| (d.clone(), v.version.clone()))
                    .collect()
            } else {
                Vec::new()
            },
        };
        self.retained.send_modify(|set| {
            set.insert("heartbeat".into(), Arc::new(super::retained::heartbeat(&h)));
        });
    }
}
