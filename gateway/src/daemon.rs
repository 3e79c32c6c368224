//! `wardgate run`: wires adapters → pipeline (writer) → store → uplink, and stops them in order.
//!
//! Shutdown order: adapters stop first (their senders drop), the writer drains and commits what
//! is left in the channel, then the uplink publishes `offline` and disconnects. A kill -9 at any
//! point loses nothing accepted: the store is the source of truth.
//!
//! Under systemd (`NOTIFY_SOCKET` set) a sibling task sends `READY=1` once everything is started,
//! `STATUS=` every 2 s, `WATCHDOG=1` while the writer and the uplink loop make progress, and
//! `STOPPING=1` on shutdown (see [`crate::system::sd_notify`]).

use crate::config::Config;
use crate::pipeline::{run_writer, WriterOptions, WriterStats};
use crate::store::{OpenReport, Store, StoreOptions};
use crate::supervisor::{supervise, AdapterHealth};
use crate::uplink::credentials::Credentials;
use crate::uplink::{LoopBeat, Uplink, UplinkSettings, UplinkStatus};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use wardgate_adapters::ble::central::BleAdapter;
use wardgate_adapters::exec::ExecAdapter;
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
    /// The firmware relay, with `[firmware]`.
    firmware_task: Option<tokio::task::JoinHandle<()>>,
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
    let download_tls = tls.clone();
    let opts = StoreOptions {
        synchronous: cfg.store.synchronous,
        max_bytes: cfg.store.max_bytes,
        max_age_ms: (cfg.store.max_age_hours as i64).saturating_mul(3_600_000),
        max_pages: cfg.store.max_pages,
    };
    let path = cfg.store.path.clone();
    let (store, open_report) =
        tokio::task::spawn_blocking(move || Store::open(&path, opts)).await??;
    // Rows are stored with the location their device has now (store::location).
    store.set_locations(configured_locations(cfg).into_iter().collect());
    let store = Arc::new(store);
    let notifier = crate::system::sd_notify::Notifier::from_env();
    let watchdog = notifier
        .is_enabled()
        .then(crate::system::sd_notify::watchdog_from_env)
        .flatten();
    if let Some(w) = watchdog {
        log::info!("systemd watchdog: {w:?}; WATCHDOG=1 only while the writer and uplink progress");
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let clock = {
        let st = store.clone();
        let source = cfg.clock_source();
        tokio::task::spawn_blocking(move || crate::system::clock::SharedClock::new(source, &st))
            .await?
    };
    if !clock.synced() {
        log::warn!("the system clock is not known to be synchronised (no NTP yet?): observations are stamped `unsynced` until it is, then corrected");
    }
    let clock_rx = clock.subscribe();
    let (retained_tx, retained_rx) = watch::channel(crate::uplink::RetainedSet::new());
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
            // Also the writer's idle tick: kept well inside the watchdog period.
            retention_every: crate::system::sd_notify::writer_tick(watchdog),
            buffer_max_rows: cfg.store.buffer_max_rows.max(1),
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
    // The `[[lines_map]]`s, compiled once and shared by the devices that name them (validated:
    // one that does not compile is skipped here, and its device refuses to run, reported).
    let lines_maps: std::collections::HashMap<&str, Arc<_>> = cfg
        .lines_map
        .iter()
        .filter_map(|m| Some((m.name.as_str(), Arc::new(m.compile().ok()?))))
        .collect();
    let mut serial_adapters = Vec::new();
    for s in &cfg.serial {
        let mut serial = SerialAdapter::new(s.clone());
        if let Some(map) = s.map.as_deref().and_then(|m| lines_maps.get(m)) {
            serial = serial.with_lines_map(map.clone());
        }
        let serial = Arc::new(serial);
        serial_adapters.push(serial.clone());
        start_adapter(serial);
    }
    let mut exec_adapters = Vec::new();
    for e in &cfg.exec {
        // Started through this very binary (`/proc/self/exe`, valid even when the file was
        // replaced by an upgrade), which closes every descriptor but 0–2 before the plug-in runs.
        let plugin = Arc::new(
            ExecAdapter::new(e.clone()).with_launcher(std::path::PathBuf::from("/proc/self/exe")),
        );
        exec_adapters.push(plugin.clone());
        start_adapter(plugin);
    }
    let mut ble_stats = None;
    let mut ble_adapter = None;
    if let Some(b) = &cfg.ble {
        // A tag a `[[ble.tag]]` rule with a `location` admits: its rows are stored with it.
        let located = store.clone();
        let ble = Arc::new(BleAdapter::new(b.clone()).with_tag_location(Arc::new(
            move |id: &wardgate_adapters::observation::DeviceId, location: &str| {
                located.set_location(&id.0, Some(location))
            },
        )));
        ble_stats = Some(ble.stats());
        ble_adapter = Some(ble.clone());
        start_adapter(ble);
    }
    let writer_keepalive = tx;
    let encryptor = crate::uplink::encryptor_from_config(cfg)?;
    // With encryption on, device names and versions travel only encrypted (device status); the
    // heartbeat, signed only, then leaves its firmware map out.
    let heartbeat_firmware = encryptor.is_none();
    let (uplink, uplink_status) = Uplink::new(
        store.clone(),
        signer,
        UplinkSettings::from_config(
            cfg,
            tls,
            Arc::new(crate::uplink::receivers_from_config(cfg)?),
        )
        .with_encryption(encryptor),
        wake,
    );
    let uplink_beat = Arc::new(LoopBeat::default());
    uplink_beat.beat();
    let mut uplink = uplink
        .with_beat(uplink_beat.clone())
        .with_retained(retained_rx)
        .with_clock(clock.clone())
        .with_credentials(credentials);
    // A relay that cannot start (its trust anchor unreadable, say) leaves the gateway running
    // without it: observations matter more than firmware (check-config warns about the file).
    let relay = match &cfg.firmware {
        Some(fw) => match firmware_relay(
            cfg,
            fw,
            &store,
            download_tls,
            Arc::new(AdapterLinks {
                serial: serial_adapters
                    .iter()
                    .map(|a| (format!("serial:{}", a.name()), a.clone()))
                    .collect(),
                ble: ble_adapter.clone(),
                writer: writer.clone(),
            }),
            retained_tx.clone(),
        ) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                log::error!(
                    "firmware relay off: {e}; the gateway runs without it (no job is accepted) \
                     until the [firmware] section is fixed and the gateway restarted"
                );
                None
            }
        },
        None => None,
    };
    let firmware_task = match relay {
        Some(relay) => {
            let (jobs_tx, jobs_rx) = mpsc::channel(16);
            uplink = uplink.with_firmware_jobs(jobs_tx);
            Some(tokio::spawn(relay.run(jobs_rx, shutdown_rx.clone())))
        }
        None => None,
    };
    let uplink_task = tokio::spawn(uplink.run(shutdown_rx.clone()));
    let mut tracked: Vec<(String, crate::health::liveness::Thresholds)> = cfg
        .serial
        .iter()
        .map(|s| {
            (
                format!("serial:{}", s.name),
                crate::health::liveness::Thresholds::SERIAL,
            )
        })
        .collect();
    // Where each device is (`location`): device status and status.json.
    let locations = configured_locations(cfg);
    for e in &cfg.exec {
        let thresholds = crate::health::liveness::Thresholds {
            stale: Duration::from_secs(e.stale_after_s.unwrap_or(10)),
            offline: Duration::from_secs(e.offline_after_s.unwrap_or(60)),
        };
        // A plug-in with `devices` is not a device itself: its liveness is its devices' (and
        // the adapter's running/restarts/problems), not an `exec:NAME` that never reads.
        tracked.extend(e.device_ids().into_iter().map(|id| (id.0, thresholds)));
    }
    for d in cfg.ble.iter().flat_map(|b| b.devices.iter()) {
        if let Ok(a) = wardgate_adapters::ble::config::Address::parse(&d.address) {
            let (stale, offline) = d.liveness_s();
            tracked.push((
                wardgate_adapters::ble::central::device_id(a).0,
                crate::health::liveness::Thresholds {
                    stale: Duration::from_secs(stale),
                    offline: Duration::from_secs(offline),
                },
            ));
        }
    }
    let status_task = tokio::spawn(
        crate::health::status_loop::StatusLoop {
            status_path: cfg.store.status_path(),
            origin: crate::batch::Origin {
                gateway: cfg.gateway.id.get_ref().clone(),
                site: cfg.gateway.site.get_ref().clone(),
                ward: cfg.gateway.ward.get_ref().clone(),
            },
            store: store.clone(),
            uplink: uplink_status.clone(),
            writer: writer.clone(),
            adapters: adapters.clone(),
            counters: crate::health::status_loop::Counters {
                serial: serial_adapters,
                exec: exec_adapters,
                ble: ble_stats,
            },
            tracked,
            locations,
            retained: retained_tx,
            heartbeat_every: Duration::from_secs(cfg.uplink.heartbeat_s.max(1)),
            heartbeat_firmware,
            clock,
            started: std::time::Instant::now(),
        }
        .run(shutdown_rx.clone()),
    );
    // Last: READY=1 means the store is open and every task above has started.
    let notify_task = tokio::spawn(crate::system::sd_notify::run(
        notifier,
        watchdog,
        watched(&writer, &uplink_beat, &uplink_status, &store, cfg),
        shutdown_rx,
    ));
    log::info!(
        "wardgate {} started: gateway {} ({} serial devices, {} BLE devices, {} plug-ins), store {}",
        env!("CARGO_PKG_VERSION"),
        cfg.gateway.id.get_ref(),
        cfg.serial.len(),
        cfg.ble.as_ref().map_or(0, |b| b.devices.len()),
        cfg.exec.len(),
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
        firmware_task,
        writer_keepalive,
    })
}

/// The firmware relay of `[firmware]`: its trust anchor, image cache and defaults.
fn firmware_relay(
    cfg: &Config,
    fw: &crate::config::schema::FirmwareSection,
    store: &Arc<Store>,
    tls: Arc<rustls::ClientConfig>,
    devices: Arc<AdapterLinks>,
    retained: watch::Sender<crate::uplink::RetainedSet>,
) -> anyhow::Result<crate::firmware::relay::Relay> {
    use crate::firmware::{download, policy::Zone, relay};
    let trust = crate::signing::Verifier::from_files(
        fw.signer_certs.iter().map(|p| p.get_ref().as_path()),
        fw.signer_ca.iter().map(|p| p.get_ref().as_path()),
        fw.signer_crl.iter().map(|p| p.get_ref().as_path()),
    )
    .map_err(|e| anyhow::anyhow!("[firmware] trust: {e}"))?;
    let zone = match &fw.timezone {
        Some(z) => Zone::parse(z.get_ref()).map_err(|e| anyhow::anyhow!("[firmware] {e}"))?,
        None => Zone::Fixed(0),
    };
    Ok(relay::Relay {
        store: store.clone(),
        trust: Arc::new(trust),
        fleet: crate::firmware::target::Fleet::from_config(cfg),
        download: download::Settings::new(
            tls,
            cfg.uplink.cert.get_ref().display().to_string(),
            fw.cache_dir(&cfg.store),
            fw.cache_max_bytes,
        ),
        defaults: relay::Defaults {
            window: relay::window_of(fw.window.as_ref().map(|w| &w.get_ref().0)),
            zone,
            in_use_minutes: fw.in_use_minutes,
            min_battery: fw.min_battery,
            max_parallel: fw.max_parallel,
            retry_initial_s: fw.retry_initial_s.max(1),
        },
        devices,
        retained,
    })
}

/// The relay's view of the devices: serial adapters carry SMP on their connection, and so does
/// the BLE adapter for its bonded devices (`DeviceCommand::OpenSmp` through the device's
/// command channel); what the writer accepted says when a device was last seen and its
/// battery.
struct AdapterLinks {
    serial: std::collections::HashMap<String, Arc<SerialAdapter>>,
    ble: Option<Arc<BleAdapter>>,
    writer: Arc<WriterStats>,
}

impl AdapterLinks {
    /// The BLE identity address of a `ble:AA:BB:…` device id.
    fn ble_address(device: &str) -> Option<wardgate_adapters::ble::config::Address> {
        wardgate_adapters::ble::config::Address::parse(device.strip_prefix("ble:")?).ok()
    }
}

impl crate::firmware::relay::DeviceLinks for AdapterLinks {
    fn view(&self, device: &str) -> crate::firmware::relay::DeviceView {
        let counts = self
            .writer
            .per_device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
            .cloned()
            .unwrap_or_default();
        let connected = match (Self::ble_address(device), &self.ble) {
            (Some(a), Some(ble)) => ble.is_connected(a),
            _ => self
                .serial
                .get(device)
                .map(|a| a.stats())
                .is_some_and(|s| s.connects > s.disconnects),
        };
        crate::firmware::relay::DeviceView {
            connected,
            // In clinical use = it produced observations recently (issue 10's definition): the
            // time of its last sign of life once it has sent any clinical observation (a
            // battery level is none: BLE devices report theirs at every connection). A monitor
            // that connected but has sent no reading yet is not in use (no patient data flows).
            last_observation_s: (counts.last_clinical_ms > 0 && counts.last_seen_ms > 0)
                .then_some((counts.last_seen_ms / 1000) as u64),
            battery: counts.battery_pct.map(|b| b.clamp(0.0, 100.0) as u8),
        }
    }

    fn open_smp(&self, device: &str) -> Option<wardgate_adapters::smp::channel::ChannelTransport> {
        let (transport, link) = wardgate_adapters::smp::channel::pair(16);
        let sender = match (Self::ble_address(device), &self.ble) {
            // BLE adds no framing: the device's SMP buffer holds the frame itself.
            (Some(a), Some(ble)) => {
                return ble
                    .command_sender(a)?
                    .try_send(wardgate_adapters::DeviceCommand::OpenSmp(link))
                    .ok()
                    .map(|()| transport.with_overhead(0));
            }
            _ => self.serial.get(device)?.command_sender(),
        };
        sender
            .try_send(wardgate_adapters::DeviceCommand::OpenSmp(link))
            .ok()?;
        Some(transport)
    }
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
        if let Some(t) = self.firmware_task {
            let _ = t.await;
        }
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

/// What the systemd notifier watches: the writer's and the uplink loop's progress, and the
/// `STATUS=` line (uplink state, queue depth, configured devices).
fn watched(
    writer: &Arc<WriterStats>,
    uplink_beat: &Arc<LoopBeat>,
    uplink: &watch::Receiver<UplinkStatus>,
    store: &Arc<Store>,
    cfg: &Config,
) -> crate::system::sd_notify::Watched {
    let devices = cfg.serial.len()
        + cfg.ble.as_ref().map_or(0, |b| b.devices.len())
        + cfg.exec.iter().map(|e| e.device_ids().len()).sum::<usize>();
    let (writer, beat, uplink, store) = (
        writer.clone(),
        uplink_beat.clone(),
        uplink.clone(),
        store.clone(),
    );
    crate::system::sd_notify::Watched {
        writer_progress: Box::new(move || {
            writer
                .last_progress_ms
                .load(std::sync::atomic::Ordering::Relaxed)
        }),
        uplink_progress: Box::new(move || beat.last_ms()),
        status: Box::new(move || {
            let u = uplink.borrow();
            crate::system::sd_notify::status_line(
                u.connected,
                u.last_error.as_deref(),
                Some(store.queued()),
                devices,
            )
        }),
    }
}

/// Device id → configured `location`, for every `[[serial]]`, `[[exec]]` (the plug-in and each of
/// its devices) and `[[ble.device]]` that has one.
pub(crate) fn configured_locations(cfg: &Config) -> std::collections::BTreeMap<String, String> {
    let mut locations: std::collections::BTreeMap<String, String> = cfg
        .serial
        .iter()
        .filter_map(|s| Some((format!("serial:{}", s.name), s.location.clone()?)))
        .collect();
    for e in &cfg.exec {
        if let Some(l) = &e.location {
            let mut ids = e.device_ids();
            ids.push(e.device_id());
            locations.extend(ids.iter().map(|id| (id.0.clone(), l.clone())));
        }
    }
    for d in cfg.ble.iter().flat_map(|b| b.devices.iter()) {
        if let (Ok(a), Some(l)) = (
            wardgate_adapters::ble::config::Address::parse(&d.address),
            &d.location,
        ) {
            locations.insert(wardgate_adapters::ble::central::device_id(a).0, l.clone());
        }
    }
    locations
}
