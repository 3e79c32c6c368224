//! `wardgate run`: wires adapters → pipeline (writer) → store → uplink, and stops them in order.
//!
//! Shutdown order: adapters stop first (their senders drop), the writer drains and commits what
//! is left in the channel, then the uplink publishes `offline` and disconnects. A kill -9 at any
//! point loses nothing accepted: the store is the source of truth.
//!
//! Under systemd (`NOTIFY_SOCKET` set) a sibling task sends `READY=1` once everything is started,
//! `STATUS=` every 2 s, `WATCHDOG=1` while the writer and the uplink loop make progress, and
//! `STOPPING=1` on shutdown (see [`crate::sd_notify`]).

use crate::config::Config;
use crate::pipeline::{run_writer, WriterOptions, WriterStats};
use crate::store::{OpenReport, Store, StoreOptions};
use crate::supervisor::{supervise, AdapterHealth};
use crate::uplink::credentials::Credentials;
use crate::uplink::{LoopBeat, Uplink, UplinkSettings, UplinkStatus};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use wardgate_adapters::ble::central::{BleAdapter, BleStats};
use wardgate_adapters::serial::SerialAdapter;
use wardgate_adapters::Adapter;

/// Capacity of the adapter → writer channel (events). Beyond it adapters wait.
pub const CHANNEL_CAPACITY: usize = 8192;

/// A running gateway.
pub struct Running {
    /// Set to `true` to stop everything.
    pub shutdown: watch::Sender<bool>,
    /// What the writer accepted.
    pub writer: Arc<WriterStats>,
    /// The uplink's state.
    pub uplink: watch::Receiver<UplinkStatus>,
    /// The store.
    pub store: Arc<Store>,
    /// What opening the store found.
    pub open_report: OpenReport,
    /// Health of each adapter, by name.
    pub adapters: Vec<(String, Arc<AdapterHealth>)>,
    adapter_tasks: Vec<tokio::task::JoinHandle<()>>,
    writer_task: tokio::task::JoinHandle<()>,
    uplink_task: tokio::task::JoinHandle<()>,
    status_task: tokio::task::JoinHandle<()>,
    notify_task: tokio::task::JoinHandle<()>,
    /// Keeps the writer running (idle ticks, retention, watchdog progress) even with no adapter;
    /// dropped in [`Running::stop`] once the adapters have stopped.
    writer_keepalive: mpsc::Sender<wardgate_adapters::AdapterEvent>,
}

/// Starts the gateway described by a validated config.
///
/// Errors: the store cannot be opened, the key or certificates are unusable.
pub async fn start(cfg: &Config) -> anyhow::Result<Running> {
    // The certificate and key, watched for replacement on disk (rotation without a restart).
    let credentials = Credentials::load(
        cfg.uplink.ca.get_ref(),
        cfg.uplink.cert.get_ref(),
        cfg.uplink.key.get_ref(),
        (cfg.uplink.cert_check_s > 0).then(|| Duration::from_secs(cfg.uplink.cert_check_s)),
    )?;
    let (signer, tls) = (
        credentials.active().signer.clone(),
        credentials.active().tls.clone(),
    );
    let opts = StoreOptions {
        synchronous: cfg.store.synchronous,
        max_bytes: cfg.store.max_bytes,
        max_age_ms: (cfg.store.max_age_hours as i64).saturating_mul(3_600_000),
    };
    let path = cfg.store.path.clone();
    let (store, open_report) =
        tokio::task::spawn_blocking(move || Store::open(&path, opts)).await??;
    let store = Arc::new(store);
    let notifier = crate::sd_notify::Notifier::from_env();
    let watchdog = notifier
        .is_enabled()
        .then(crate::sd_notify::watchdog_from_env)
        .flatten();
    if let Some(w) = watchdog {
        log::info!("systemd watchdog: {w:?}; WATCHDOG=1 only while the writer and uplink progress");
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let clock = {
        let st = store.clone();
        let source = cfg.clock_source();
        tokio::task::spawn_blocking(move || crate::clock::SharedClock::new(source, &st)).await?
    };
    if !clock.synced() {
        log::warn!("the system clock is not known to be synchronised (no NTP yet?): observations are stamped `unsynced` until it is, then corrected");
    }
    let clock_rx = clock.subscribe();
    let (retained_tx, retained_rx) = watch::channel(crate::health::RetainedSet::new());
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let wake = Arc::new(Notify::new());
    let writer = Arc::new(WriterStats::default());
    // Opening the store is the writer's first progress (the watchdog's starting point).
    writer.last_progress_ms.store(
        wardgate_adapters::observation::mono_ms(),
        std::sync::atomic::Ordering::Relaxed,
    );
    let writer_task = tokio::spawn(run_writer(
        store.clone(),
        rx,
        WriterOptions {
            commit_interval: Duration::from_millis(cfg.store.commit_interval_ms),
            commit_max_rows: cfg.store.commit_max_rows,
            batch_max: cfg.uplink.batch_max,
            // Also the writer's idle tick: kept well inside the watchdog period.
            retention_every: crate::sd_notify::writer_tick(watchdog),
        },
        wake.clone(),
        writer.clone(),
    ));
    let mut adapters = Vec::new();
    let mut adapter_tasks = Vec::new();
    let mut start_adapter = |adapter: Arc<dyn Adapter>| {
        let health = Arc::new(AdapterHealth::default());
        adapters.push((adapter.name().to_owned(), health.clone()));
        adapter_tasks.push(tokio::spawn(supervise(
            adapter,
            tx.clone(),
            shutdown_rx.clone(),
            clock_rx.clone(),
            health,
        )));
    };
    let mut serial_adapters = Vec::new();
    for s in &cfg.serial {
        let serial = Arc::new(SerialAdapter::new(s.clone()));
        serial_adapters.push(serial.clone());
        start_adapter(serial);
    }
    let mut ble_stats = None;
    if let Some(b) = &cfg.ble {
        let ble = Arc::new(BleAdapter::new(b.clone()));
        ble_stats = Some(ble.stats());
        start_adapter(ble);
    }
    let writer_keepalive = tx;
    let (uplink, uplink_status) = Uplink::new(
        store.clone(),
        signer,
        UplinkSettings::from_config(cfg, tls),
        wake,
    );
    let uplink_beat = Arc::new(LoopBeat::default());
    uplink_beat.beat();
    let uplink = uplink
        .with_beat(uplink_beat.clone())
        .with_retained(retained_rx)
        .with_clock(clock.clone())
        .with_credentials(credentials);
    let uplink_task = tokio::spawn(uplink.run(shutdown_rx.clone()));
    let mut tracked: Vec<(String, crate::liveness::Thresholds)> = cfg
        .serial
        .iter()
        .map(|s| {
            (
                format!("serial:{}", s.name),
                crate::liveness::Thresholds::SERIAL,
            )
        })
        .collect();
    for d in cfg.ble.iter().flat_map(|b| b.devices.iter()) {
        if let Ok(a) = wardgate_adapters::ble::config::Address::parse(&d.address) {
            let (stale, offline) = d.liveness_s();
            tracked.push((
                wardgate_adapters::ble::central::device_id(a).0,
                crate::liveness::Thresholds {
                    stale: Duration::from_secs(stale),
                    offline: Duration::from_secs(offline),
                },
            ));
        }
    }
    let status_task = tokio::spawn(
        StatusLoop {
            store_path: cfg.store.path.clone(),
            origin: crate::batch::Origin {
                gateway: cfg.gateway.id.get_ref().clone(),
                site: cfg.gateway.site.get_ref().clone(),
                ward: cfg.gateway.ward.get_ref().clone(),
            },
            store: store.clone(),
            uplink: uplink_status.clone(),
            writer: writer.clone(),
            adapters: adapters.clone(),
            counters: Counters {
                serial: serial_adapters,
                ble: ble_stats,
            },
            tracked,
            retained: retained_tx,
            heartbeat_every: Duration::from_secs(cfg.uplink.heartbeat_s.max(1)),
            clock,
            started: std::time::Instant::now(),
        }
        .run(shutdown_rx.clone()),
    );
    // Last: READY=1 means the store is open and every task above has started.
    let notify_task = tokio::spawn(crate::sd_notify::run(
        notifier,
        watchdog,
        crate::sd_notify::Watched {
            writer: writer.clone(),
            uplink_beat,
            uplink: uplink_status.clone(),
            store: store.clone(),
            devices: cfg.serial.len() + cfg.ble.as_ref().map_or(0, |b| b.devices.len()),
        },
        shutdown_rx,
    ));
    log::info!(
        "wardgate {} started: gateway {} ({} serial devices, {} BLE devices), store {}",
        env!("CARGO_PKG_VERSION"),
        cfg.gateway.id.get_ref(),
        cfg.serial.len(),
        cfg.ble.as_ref().map_or(0, |b| b.devices.len()),
        cfg.store.path.display()
    );
    Ok(Running {
        shutdown,
        writer,
        uplink: uplink_status,
        store,
        open_report,
        adapters,
        adapter_tasks,
        writer_task,
        uplink_task,
        status_task,
        notify_task,
        writer_keepalive,
    })
}

impl Running {
    /// Stops adapters, drains and commits the channel, disconnects the uplink.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.adapter_tasks {
            let _ = t.await;
        }
        drop(self.writer_keepalive);
        let _ = self.writer_task.await;
        let _ = self.uplink_task.await;
        let _ = self.status_task.await;
        let _ = self.notify_task.await;
    }
}

/// `wardgate run`: starts the gateway and runs until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let running = start(&cfg).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: shutting down"),
    }
    running.stop().await;
    Ok(())
}

/// Where the status snapshot reads the adapters' own counters.
struct Counters {
    serial: Vec<Arc<SerialAdapter>>,
    ble: Option<Arc<BleStats>>,
}

/// The daemon's 2-second loop: the `status.json` snapshot for `wardgate status`, device
/// liveness (transitions logged and published retained), the gateway heartbeat, and the clock
/// (synchronisation state for the adapters, correction of buffered rows when it syncs).
struct StatusLoop {
    store_path: std::path::PathBuf,
    origin: crate::batch::Origin,
    store: Arc<Store>,
    uplink: watch::Receiver<UplinkStatus>,
    writer: Arc<WriterStats>,
    adapters: Vec<(String, Arc<AdapterHealth>)>,
    counters: Counters,
    /// Configured devices and their liveness thresholds.
    tracked: Vec<(String, crate::liveness::Thresholds)>,
    retained: watch::Sender<crate::health::RetainedSet>,
    heartbeat_every: Duration,
    clock: Arc<crate::clock::SharedClock>,
    started: std::time::Instant,
}

impl StatusLoop {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        use std::sync::atomic::Ordering;
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        // Liveness from the writer's counts: a device whose accepted rows grew since the last
        // snapshot was seen (within the last 2 s). Monotonic time: a clock step changes nothing.
        let mut liveness = crate::liveness::LivenessTracker::new();
        let mut since: std::collections::BTreeMap<String, i64> = Default::default();
        let start = std::time::Instant::now();
        for (d, t) in &self.tracked {
            liveness.track(d, *t, start);
            since.insert(d.clone(), wardgate_adapters::observation::now_ms());
        }
        let mut previous: std::collections::BTreeMap<String, u64> = Default::default();
        let mut last_heartbeat: Option<std::time::Instant> = None;
        let mut first = true;
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
                        let s = crate::health::DeviceStatus {
                            device: d.clone(),
                            state: state.as_str().into(),
                            since_ms: since.get(d).copied().unwrap_or(now_ms),
                            last_seen_ms: c.last_seen_ms,
                            battery_pct: c.battery_pct,
                            rssi_dbm: c.rssi_dbm,
                            errors: c.errors,
                            last_error: c.last_error.clone(),
                        };
                        set.insert(
                            crate::health::device_topic(d),
                            Arc::new(crate::health::device_status(&self.origin.gateway, &s)),
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
            let adapters: Vec<crate::status::AdapterSnapshot> = self
                .adapters
                .iter()
                .map(|(name, h)| crate::status::AdapterSnapshot {
                    name: name.clone(),
                    failures: h.failures.load(Ordering::Relaxed),
                    restarts: h.restarts.load(Ordering::Relaxed),
                    serial: self
                        .counters
                        .serial
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
                self.heartbeat(&liveness, &uplink, &adapters, now_ms).await;
            }
            let snap = crate::status::Snapshot {
                written_ms: now_ms,
                written_boot_ms: crate::status::boot_ms(),
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
                clock_synced: Some(self.clock.synced()),
            };
            let path = self.store_path.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = crate::status::write_snapshot(&path, &snap) {
                    log::debug!("cannot write status snapshot: {e}");
                }
            })
            .await;
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
        liveness: &crate::liveness::LivenessTracker,
        uplink: &UplinkStatus,
        adapters: &[crate::status::AdapterSnapshot],
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
        let count = |st: crate::liveness::DeviceState| {
            liveness.states().filter(|(_, s)| *s == st).count() as u64
        };
        let h = crate::health::Heartbeat {
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
            adapters: adapters
                .iter()
                .map(|a| (a.name.clone(), a.failures, a.restarts))
                .collect(),
            devices_online: count(crate::liveness::DeviceState::Online),
            devices_stale: count(crate::liveness::DeviceState::Stale),
            devices_offline: count(crate::liveness::DeviceState::Offline),
        };
        self.retained.send_modify(|set| {
            set.insert("heartbeat".into(), Arc::new(crate::health::heartbeat(&h)));
        });
    }
}
