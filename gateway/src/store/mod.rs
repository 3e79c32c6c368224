//! `Store`: the durable buffer between devices and the uplink (DESIGN §4, a contract).
//!
//! # Design note
//!
//! **Constraints.** A Raspberry Pi with an SD card, no UPS, and an upstream that can be away for
//! days. Nothing accepted may be lost to a crash, a kill -9 or a power cut; nothing may be
//! deleted before the upstream (or, in `broker` ack mode, the broker) acknowledged it; the file
//! must stay within a configured size; the uplink must never block ingestion.
//!
//! **On-disk layout.** One SQLite file in WAL mode (`PRAGMA application_id` = `0x57475244`,
//! "WGRD", `user_version` = schema version):
//! - `queue(seq INTEGER PRIMARY KEY AUTOINCREMENT, class, device, kind, code, value, unit,
//!   device_time, gateway_time, time_quality, status, detail)`: observations (`kind` NULL) and
//!   device events (`kind` = event name) in one sequence space. `AUTOINCREMENT` makes `seq`
//!   strictly increasing for the life of the file, never reused after deletes.
//! - `batches(number INTEGER PRIMARY KEY, first_seq, last_seq, created_ms)`: every batch handed
//!   to the uplink and not yet acknowledged. A batch is the contiguous `seq` range
//!   `first_seq..=last_seq` of `queue` (rows inside the range may be missing only when retention
//!   dropped them, which it does for whole batches).
//! - `meta(key, value)`: `assigned_upto` (highest seq already in a batch) and `next_batch`.
//! - Since schema version 2, the firmware relay's state ([`firmware`]): `firmware_seq` (last
//!   accepted job `seq` per target class: anti-rollback), `firmware_jobs` (each accepted job with
//!   its signed message), `firmware_executions` (one row per job and device: state, attempt, last
//!   offset the device reported, reason). An older store gains these tables when opened;
//!   nothing else changes.
//! - Since schema version 4, `queue.samples` (BLOB, NULL for numerics and events): a waveform
//!   observation's sample array (period, scale, offset, raw samples) as CBOR
//!   ([`encode_waveform`]), in the same row as its first sample's value: a waveform is one row,
//!   stored, batched, acknowledged and dropped like any other (retention class `waveform`).
//! - Since schema version 5, `device_location(device, from_seq, location)` ([`location`]): the
//!   location each device was configured with from which row on, written in the same
//!   transaction as the rows; a batch names one location per device ([`Batch::locations`]) and is
//!   cut where a device's location changes; entries no queued row needs go on ack.
//!
//! **Accepted.** An observation is accepted when the transaction that inserted it has committed
//! ([`Store::append`] returned `Ok`). With `synchronous=FULL` (default) that commit is fsynced.
//! Writers use `BEGIN IMMEDIATE`; no read transaction outlives a call (the store is used from
//! blocking threads, never held across an `.await`).
//!
//! **Batches.** [`Store::next_batch`] assigns the oldest unassigned rows to a new batch number in
//! one transaction *before* the uplink publishes it, so a batch keeps its number and its rows
//! across reconnects, restarts and crashes: [`Store::unacked_batches`] lists what must be sent
//! again. Batch numbers strictly increase. While the uplink is idle it offers a cut
//! ([`Store::offer_cut`]): the next [`Store::append`] assigns its rows to a batch in its own
//! transaction (one fsync for both), and `next_batch` hands that batch out first.
//! [`Store::resume`] starts a session with every unacknowledged batch.
//!
//! **Deleted.** Rows leave the store only in [`Store::ack`] (their batch was acknowledged; the
//! delete is made durable by the next `FULL` commit, not by its own fsync: a power cut in between
//! brings the batch back to be re-sent, never loses a row) or in
//! retention ([`Store::enforce_retention`]), which drops the oldest rows of the lowest priority
//! class first (waveform samples, then numerics, then device events) and records a `dropped`
//! event with the counts, which travels upstream like any other event: nothing is lost silently.
//!
//! **Full.** A full store (SQLITE_FULL: the filesystem is out of space, or the file reached
//! `[store] max_pages`) deletes nothing: [`Store::append`] fails with [`StoreError::is_full`] and
//! the rows it was given are *not accepted*. Rows already accepted are never given up to make
//! room for new ones on a full disk (deleting needs free space in the WAL anyway, and a full disk
//! is an accident, not the configured size limit `max_bytes`, which retention enforces by
//! dropping the oldest). The writer (`pipeline.rs`) holds a bounded number of new rows in
//! memory, refuses the rest (newest first, waveform before numerics before events), counts them
//! per device and records one `dropped` event (`reason=store_full`) when the store accepts rows
//! again. Acknowledged batches are still deleted while full, which frees pages for new rows.
//!
//! **Recovery.** [`Store::open`] runs `PRAGMA quick_check` and checks `application_id`. A corrupt
//! or foreign file is renamed (with its `-wal`/`-shm`) to `<name>.quarantined-<epoch ms>`, a
//! fresh store is created, and the returned [`OpenReport`] says so, for the daemon to log and
//! report upstream. Data is never deleted to recover.

pub mod firmware;
pub mod location;
pub mod schema;

use crate::batch::{Batch, Item, StoredEvent, StoredObservation};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use wardgate_adapters::observation::{
    mdc, now_ms, DeviceEvent, DeviceId, EventKind, Observation, TimeQuality, Unit, Waveform,
};
use wardgate_adapters::AdapterEvent;

pub use crate::config::Synchronous;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error (I/O, full disk, busy beyond the timeout …).
    #[error("store {path}: {source}")]
    Sqlite {
        /// The store file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The store's directory does not exist (it is never created implicitly).
    #[error(
        "the store's directory {0} does not exist; create it (systemd: StateDirectory=wardgate)"
    )]
    MissingDirectory(PathBuf),
    /// Quarantining a corrupt file failed (e.g. read-only directory).
    #[error("store {path}: cannot quarantine corrupt file: {source}")]
    Quarantine {
        /// The store file.
        path: PathBuf,
        /// The rename error.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether this is a full store: SQLITE_FULL, from a full filesystem (ENOSPC) or from the
    /// store's own page limit (`[store] max_pages`, `PRAGMA max_page_count`).
    pub fn is_full(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite { source: rusqlite::Error::SqliteFailure(e, _), .. }
                if e.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

/// Retention priority class of a row: the lowest class is dropped first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// High-rate waveform samples (e.g. pleth, MDC 150452): dropped first.
    Waveform = 0,
    /// Numerics (SpO2, heart rate, NIBP …).
    Numeric = 1,
    /// Device and gateway events: dropped last.
    Event = 2,
}

/// Options for [`Store::open`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `full` (fsync every commit) or `normal`.
    pub synchronous: Synchronous,
    /// Size limit of live data in bytes.
    pub max_bytes: u64,
    /// Age limit in milliseconds (by gateway time).
    pub max_age_ms: i64,
    /// Hard limit of the file in pages (`PRAGMA max_page_count`): a commit that would grow the
    /// file beyond it fails as a full disk does. `None`: SQLite's default (no practical limit).
    pub max_pages: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            synchronous: Synchronous::Full,
            max_bytes: 1 << 30,
            max_age_ms: 168 * 3_600_000,
            max_pages: None,
        }
    }
}

/// What [`Store::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Set when the existing file was corrupt or foreign and was moved aside: (new path, reason).
    pub quarantined: Option<(PathBuf, String)>,
}

/// Figures for `status` and the heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreStats {
    /// Rows (observations and events) not yet acknowledged.
    pub queued: u64,
    /// Gateway time (epoch ms) of the oldest unacknowledged row.
    pub oldest_ms: Option<i64>,
    /// Batches handed to the uplink and not yet acknowledged.
    pub unacked_batches: u64,
    /// Bytes of live data in the file (pages in use × page size).
    pub bytes: u64,
    /// Rows dropped by retention since this process opened the store.
    pub dropped: u64,
}

/// Counts of a retention drop, also recorded as a `dropped` event in the queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropReport {
    /// Waveform rows dropped.
    pub waveform: u64,
    /// Numeric rows dropped.
    pub numeric: u64,
    /// Event rows dropped.
    pub events: u64,
    /// Which limit: `max_bytes` or `max_age`.
    pub reason: &'static str,
}

impl DropReport {
    /// Total rows dropped.
    pub fn total(&self) -> u64 {
        self.waveform + self.numeric + self.events
    }
}

/// The durable buffer. Cheap to share (`Arc<Store>`); every method is blocking and short.
pub struct Store {
    /// One connection behind a mutex: writers and the uplink never see SQLITE_BUSY, and no
    /// transaction outlives a method call.
    conn: Mutex<Connection>,
    /// The file, for error messages and quarantine.
    path: PathBuf,
    /// Retention limits.
    opts: StoreOptions,
    /// Rows dropped by retention since open (reported in status).
    dropped: std::sync::atomic::AtomicU64,
    /// Rows in `queue`: counted once at open, then kept by append, ack and retention, so status
    /// and the systemd STATUS line never scan the table.
    queued: std::sync::atomic::AtomicU64,
    /// Cutting batches inside the writer's commit ([`Store::offer_cut`]). Locked only while
    /// `conn` is held (lock order: `conn`, then `cut`), except by the offer and its withdrawal,
    /// which touch nothing else.
    cut: Mutex<CutState>,
    /// Configured device locations and each device's latest `device_location` entry
    /// ([`location`]); an append holds it (after `conn`) for its whole transaction.
    locations: Mutex<location::Tracker>,
}

/// Batches cut inside the writer's commit (send at once, issue 11): the uplink offers a cut while
/// it is idle; the next [`Store::append`] assigns its rows to a batch in the same transaction (one
/// fsync for the rows and the assignment) and keeps the number here until [`Store::next_batch`]
/// hands it out.
#[derive(Default)]
struct CutState {
    /// `(batch_max, check)` while the uplink waits for rows with room in its window.
    offer: Option<(usize, Option<CutCheck>)>,
    /// Cut in a commit, not yet handed out by `next_batch`, oldest first: the batch as read in
    /// the commit's own transaction (so it is not read twice).
    precut: std::collections::VecDeque<Batch>,
}

/// Asked by a commit right before it cuts an offered batch ([`Store::offer_cut`]): `false`
/// leaves the cut to the uplink (the offer stays). The uplink passes "the clock has not changed
/// its synchronisation since the last poll" (`system::clock::SharedClock::settled`): rows stamped
/// before a synchronisation are corrected before they are cut. Called with the store's connection
/// locked: it must not lock anything that is held while calling the store.
pub type CutCheck = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// The retention class of a row (also the order in which the writer refuses rows when full).
pub fn class_of(item: &AdapterEvent) -> Class {
    match item {
        AdapterEvent::Observation(o) if o.waveform.is_some() || o.code == mdc::PLETH => {
            Class::Waveform
        }
        AdapterEvent::Observation(_) => Class::Numeric,
        AdapterEvent::Event(_) => Class::Event,
    }
}

impl Store {
    /// Opens (or creates) the store at `path`, quarantining a corrupt or foreign file.
    ///
    /// Errors: the directory is not writable, the disk is full, or a corrupt file cannot be
    /// moved aside.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<(Store, OpenReport), StoreError> {
        let mut report = OpenReport::default();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                // Never create it: a typo in the path would silently start an empty store.
                return Err(StoreError::MissingDirectory(parent.to_path_buf()));
            }
        }
        let conn = match schema::open_checked(path, opts.synchronous) {
            Ok(c) => c,
            Err(schema::OpenProblem::Sqlite(e)) => {
                return Err(StoreError::Sqlite {
                    path: path.into(),
                    source: e,
                })
            }
            Err(schema::OpenProblem::Unusable(reason)) => {
                let aside = quarantine(path).map_err(|source| StoreError::Quarantine {
                    path: path.into(),
                    source,
                })?;
                log::error!(
                    "store {}: {reason}; moved it to {} and started a fresh store",
                    path.display(),
                    aside.display()
                );
                report.quarantined = Some((aside, reason));
                schema::open_checked(path, opts.synchronous).map_err(|p| match p {
                    schema::OpenProblem::Sqlite(e) => StoreError::Sqlite {
                        path: path.into(),
                        source: e,
                    },
                    schema::OpenProblem::Unusable(r) => StoreError::Sqlite {
                        path: path.into(),
                        source: rusqlite::Error::InvalidParameterName(format!(
                            "fresh store unusable: {r}"
                        )),
                    },
                })?
            }
        };
        if let Some(max) = opts.max_pages {
            conn.query_row(&format!("PRAGMA max_page_count = {max}"), [], |_| Ok(()))
                .map_err(|e| StoreError::Sqlite {
                    path: path.into(),
                    source: e,
                })?;
        }
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM queue", [], |r| r.get(0))
            .map_err(|e| StoreError::Sqlite {
                path: path.into(),
                source: e,
            })?;
        let tracker = location::Tracker::load(&conn).map_err(|e| StoreError::Sqlite {
            path: path.into(),
            source: e,
        })?;
        let store = Store {
            conn: Mutex::new(conn),
            path: path.into(),
            opts,
            dropped: Default::default(),
            queued: std::sync::atomic::AtomicU64::new(rows as u64),
            cut: Mutex::new(CutState::default()),
            locations: Mutex::new(tracker),
        };
        if let Some((aside, reason)) = &report.quarantined {
            store.append(&[AdapterEvent::Event(DeviceEvent {
                device: DeviceId("gateway".into()),
                kind: EventKind::Error,
                detail: format!(
                    "store file was {reason}; quarantined as {} and a fresh store started",
                    aside.display()
                ),
                gateway_time: now_ms(),
                presence: None,
                firmware: None,
            })])?;
        }
        Ok((store, report))
    }

    /// Sets the configured location of every device (device id, e.g. `serial:bed12-spo2`, →
    /// location, e.g. `ward-7/bed-12`; a device not named has none). Rows appended from now on
    /// are stored with these ([`location`]); call it before the first append.
    pub fn set_locations(&self, configured: std::collections::HashMap<String, String>) {
        self.tracker().configure(configured);
    }

    /// Sets (`Some`) or clears (`None`) one device's configured location, e.g. for a device
    /// admitted at run time by a rule that gives one. Waits only for an append in progress
    /// (rows it commits keep the location they were read with).
    pub fn set_location(&self, device: &str, location: Option<&str>) {
        self.tracker().set(device, location);
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, location::Tracker> {
        self.locations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction open (rusqlite rolls back on
        // drop), so a poisoned mutex still guards a consistent connection.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cut_state(&self) -> std::sync::MutexGuard<'_, CutState> {
        self.cut.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The uplink is idle (its last look found nothing to send) with room in its in-flight window:
    /// the next [`Self::append`] also cuts a batch of up to `batch_max` of the oldest unassigned
    /// rows in its own transaction, so a reading waits for one fsync, not two (the cut's own
    /// commit), before it can be published. One offer cuts at most one batch; [`Self::next_batch`]
    /// hands that batch out first. A commit for which `check` returns `false` cuts nothing and
    /// leaves the offer for the next one (see [`CutCheck`]).
    pub fn offer_cut(&self, batch_max: usize, check: Option<CutCheck>) {
        self.cut_state().offer = Some((batch_max.max(1), check));
    }

    /// Withdraws [`Self::offer_cut`] (the window filled, the store refused a cut, the session
    /// drains for a rotation or ended): commits no longer cut batches.
    pub fn withdraw_cut(&self) {
        self.cut_state().offer = None;
    }

    /// For a new uplink session: withdraws any cut offer, forgets which batches cut in a commit
    /// were not handed out yet, and returns every unacknowledged batch, oldest first (they
    /// included: the session re-sends them all, each once).
    pub fn resume(&self) -> Result<Vec<u64>, StoreError> {
        let _conn = self.lock();
        let mut cut = self.cut_state();
        cut.offer = None;
        cut.precut.clear();
        drop(cut);
        drop(_conn);
        self.unacked_batches()
    }

    /// Appends observations and events in one transaction (group commit) and returns the seq
    /// range they received. When it returns `Ok`, they are accepted (DESIGN §4).
    ///
    /// Errors: SQLite I/O errors. A full store (the disk, or `max_pages`) is
    /// [`StoreError::is_full`]: nothing is deleted to make room (rows already accepted are never
    /// given up for new ones on a full disk; the writer refuses new rows instead, counted and
    /// reported by the writer), and the caller may retry the same rows later.
    pub fn append(
        &self,
        items: &[AdapterEvent],
    ) -> Result<std::ops::RangeInclusive<u64>, StoreError> {
        self.try_append(items).map_err(|e| self.err(e))
    }

    fn try_append(
        &self,
        items: &[AdapterEvent],
    ) -> rusqlite::Result<std::ops::RangeInclusive<u64>> {
        let mut conn = self.lock();
        let mut tracker = self.tracker();
        let mut first_rows: Option<Vec<(&str, i64)>> = (!tracker.idle()).then(Vec::new);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (mut first, mut last) = (0i64, 0i64);
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO queue(class, device, kind, code, value, unit, device_time, gateway_time, time_quality, status, detail, samples)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for (i, item) in items.iter().enumerate() {
                let class = class_of(item) as i64;
                match item {
                    AdapterEvent::Observation(o) => {
                        let status = if o.status.is_empty() {
                            None
                        } else {
                            Some(o.status.join(","))
                        };
                        ins.execute(params![
                            class,
                            o.device.as_str(),
                            Option::<&str>::None,
                            o.code,
                            o.value,
                            o.unit.mdc,
                            o.device_time,
                            o.gateway_time,
                            o.time_quality as i64,
                            status,
                            Option::<&str>::None,
                            o.waveform.as_ref().map(encode_waveform)
                        ])?;
                    }
                    AdapterEvent::Event(e) => {
                        ins.execute(params![
                            class,
                            e.device.as_str(),
                            e.kind.as_str(),
                            Option::<u32>::None,
                            Option::<f64>::None,
                            Option::<u32>::None,
                            Option::<&str>::None,
                            e.gateway_time,
                            Option::<i64>::None,
                            Option::<&str>::None,
                            e.detail,
                            Option::<Vec<u8>>::None
                        ])?;
                    }
                }
                let seq = tx.last_insert_rowid();
                if i == 0 {
                    first = seq;
                }
                last = seq;
                if let Some(rows) = first_rows.as_mut() {
                    let device = match item {
                        AdapterEvent::Observation(o) => o.device.as_str(),
                        AdapterEvent::Event(e) => e.device.as_str(),
                    };
                    if !rows.iter().any(|(d, _)| *d == device) {
                        rows.push((device, seq));
                    }
                }
            }
        }
        let changes = first_rows
            .map(|rows| tracker.changes(rows))
            .unwrap_or_default();
        location::write(&tx, &changes)?;
        // The offer is taken before the commit (its lock is never held across an fsync) and put
        // back if the commit fails or its check says no; one offer cuts at most one batch.
        let offered = if items.is_empty() {
            None
        } else {
            self.cut_state().offer.take()
        };
        let offered = match offered {
            Some((max, check)) if check.as_ref().is_none_or(|c| c()) => Some((max, check)),
            Some(kept) => {
                self.cut_state().offer.get_or_insert(kept);
                None
            }
            None => None,
        };
        let committed = (|| {
            let batch = match &offered {
                Some((max, _)) => match cut_batch(&tx, *max)? {
                    Some((number, items)) => Some(Batch {
                        number,
                        locations: location::for_items(&tx, &items)?,
                        items,
                    }),
                    None => None,
                },
                None => None,
            };
            tx.commit()?;
            Ok(batch)
        })();
        match committed {
            Ok(batch) => {
                tracker.committed(changes);
                if let Some(batch) = batch {
                    self.cut_state().precut.push_back(batch);
                }
            }
            Err(e) => {
                if let Some(kept) = offered {
                    self.cut_state().offer.get_or_insert(kept);
                }
                return Err(e);
            }
        }
        self.queued
            .fetch_add(items.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(first as u64..=last as u64)
    }

    /// Assigns up to `max` of the oldest unassigned rows to a new batch and returns it, or `None`
    /// when nothing is pending. The assignment is committed before this returns. A batch cut in
    /// the writer's commit ([`Self::offer_cut`]) and not handed out yet is returned first, as it
    /// was cut (no write then).
    pub fn next_batch(&self, max: usize) -> Result<Option<Batch>, StoreError> {
        let mut conn = self.lock();
        let r = (|| {
            loop {
                let Some(batch) = self.cut_state().precut.pop_front() else {
                    break;
                };
                // Gone only if retention dropped it meanwhile (then the next one); rows are
                // immutable once in a batch, so the copy read at the cut is what the file holds.
                if batch_range(&conn, batch.number)?.is_some() {
                    return Ok(Some(batch));
                }
            }
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some((number, items)) = cut_batch(&tx, max)? else {
                return Ok(None);
            };
            let locations = location::for_items(&tx, &items)?;
            tx.commit()?;
            Ok(Some(Batch {
                number,
                items,
                locations,
            }))
        })();
        r.map_err(|e| self.err(e))
    }

    /// Numbers of the batches handed out and not yet acknowledged, oldest first.
    pub fn unacked_batches(&self) -> Result<Vec<u64>, StoreError> {
        let conn = self.lock();
        let r = (|| {
            let mut st = conn.prepare_cached("SELECT number FROM batches ORDER BY number")?;
            let rows = st.query_map([], |r| r.get::<_, i64>(0))?;
            rows.map(|r| r.map(|n| n as u64))
                .collect::<rusqlite::Result<Vec<_>>>()
        })();
        r.map_err(|e| self.err(e))
    }

    /// Reads batch `number` again (same rows as when it was first handed out), for a re-send.
    pub fn load_batch(&self, number: u64) -> Result<Option<Batch>, StoreError> {
        let conn = self.lock();
        let r = (|| {
            let Some((first, last)) = batch_range(&conn, number)? else {
                return Ok(None);
            };
            let items = read_items(
                &conn,
                "seq BETWEEN ?1 AND ?2 ORDER BY seq",
                params![first, last],
            )?;
            let locations = location::for_items(&conn, &items)?;
            Ok(Some(Batch {
                number,
                items,
                locations,
            }))
        })();
        r.map_err(|e| self.err(e))
    }

    /// Acknowledges batch `number`: its rows leave the store. Returns `false` if the batch was
    /// unknown (already acknowledged, or a stray ack), which is harmless.
    ///
    /// The delete is committed without its own fsync (`synchronous=NORMAL` for this one
    /// transaction; WAL mode): it becomes durable with the next `FULL` commit (the next append or
    /// cut, whose fsync of the WAL covers every frame before it) or checkpoint. A power cut
    /// before that can only bring the batch back, with its number and rows: the next session
    /// re-sends it and the receiver, which dedups on `(gateway, seq)`, stores nothing twice and
    /// acknowledges it again. Rows are never lost this way, and a later commit is never durable
    /// without this one (the WAL is a log: what survives is a prefix of the commits).
    pub fn ack(&self, number: u64) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let relaxed = self.opts.synchronous == Synchronous::Full;
        if relaxed {
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(|e| self.err(e))?;
        }
        let r = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some((first, last)) = batch_range(&tx, number)? else {
                return Ok(false);
            };
            let deleted = tx
                .prepare_cached("DELETE FROM queue WHERE seq BETWEEN ?1 AND ?2")?
                .execute([first, last])?;
            tx.prepare_cached("DELETE FROM batches WHERE number=?1")?
                .execute([number as i64])?;
            location::prune(&tx)?;
            tx.commit()?;
            self.queued
                .fetch_sub(deleted as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(true)
        })();
        if relaxed {
            // Every other commit stays `FULL`: an error here fails the ack (the caller retries),
            // never leaves appends without their fsync.
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(|e| self.err(e))?;
        }
        r.map_err(|e| self.err(e))
    }

    /// `PRAGMA synchronous` of the store's connection now (0 off, 1 normal, 2 full), for tests.
    #[cfg(test)]
    fn synchronous_now(&self) -> i64 {
        self.lock()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    /// The highest `seq` ever assigned (0 for an empty, never-used store).
    pub fn max_seq(&self) -> Result<u64, StoreError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name='queue'), 0)",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n.max(0) as u64)
        .map_err(|e| self.err(e))
    }

    /// The clock was stepped by `step_ms` when it became synchronised (at wall time `now_ms`,
    /// on the new clock): adds the step to the `gateway_time` of the rows stamped by the old
    /// clock that are not yet in a batch (numbered batches are immutable: their rows keep what
    /// they were sent with), and marks those observations stamped `unsynced` as `synced`.
    /// Rows with `after_seq < seq ≤ upto_seq` were stamped by the old clock for sure; a later row
    /// (appended between the step and its detection) is corrected only if its time is nearer the
    /// old clock's "now" (`now_ms - step_ms`) than the new one (a tie, e.g. no step at all, counts as
    /// old), so it is never shifted twice.
    /// Returns the number of rows corrected. One immediate transaction.
    pub fn correct_unsynced(
        &self,
        after_seq: u64,
        upto_seq: u64,
        step_ms: i64,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        let r = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let batched: i64 =
                tx.query_row("SELECT coalesce(max(last_seq), 0) FROM batches", [], |r| {
                    r.get(0)
                })?;
            let from = (after_seq as i64).max(batched);
            let n = tx.execute(
                "UPDATE queue SET gateway_time = gateway_time + ?1,
                        time_quality = CASE WHEN time_quality = ?2 THEN ?3 ELSE time_quality END
                 WHERE seq > ?4
                   AND (seq <= ?5 OR abs(gateway_time - (?6 - ?1)) <= abs(gateway_time - ?6))",
                params![
                    step_ms,
                    TimeQuality::Unsynced as i64,
                    TimeQuality::Synced as i64,
                    from,
                    upto_seq as i64,
                    now_ms
                ],
            )?;
            tx.commit()?;
            Ok(n as u64)
        })();
        r.map_err(|e| self.err(e))
    }

    /// Gateway time (Unix ms) of the oldest row not yet acknowledged, by `seq` (an index
    /// lookup, cheap enough for every heartbeat; rows are appended in time order, so this is
    /// the oldest unless the clock stepped backwards).
    pub fn oldest_pending_ms(&self) -> Result<Option<i64>, StoreError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT gateway_time FROM queue ORDER BY seq LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| self.err(e))
    }

    /// Bytes of live data in the file (pages in use × page size).
    pub fn bytes(&self) -> Result<u64, StoreError> {
        let conn = self.lock();
        used_bytes(&conn).map_err(|e| self.err(e))
    }

    /// Rows (observations and events) not yet acknowledged, without touching the file.
    pub fn queued(&self) -> u64 {
        self.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Figures for status and heartbeat (scans the queue: not for a hot path; see [`Self::queued`]).
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let conn = self.lock();
        let r = (|| {
            let (queued, oldest): (i64, Option<i64>) =
                conn.query_row("SELECT count(*), min(gateway_time) FROM queue", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let unacked: i64 = conn.query_row("SELECT count(*) FROM batches", [], |r| r.get(0))?;
            Ok(StoreStats {
                queued: queued as u64,
                oldest_ms: oldest,
                unacked_batches: unacked as u64,
                bytes: used_bytes(&conn)?,
                dropped: self.dropped.load(std::sync::atomic::Ordering::Relaxed),
            })
        })();
        r.map_err(|e| self.err(e))
    }

    /// Applies the age and size limits. Returns what was dropped (also queued as a `dropped`
    /// event), or `None` when within limits.
    pub fn enforce_retention(&self, now: i64) -> Result<Option<DropReport>, StoreError> {
        let mut total = DropReport {
            reason: "max_age",
            ..Default::default()
        };
        {
            let mut conn = self.lock();
            let r = (|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let cutoff = now - self.opts.max_age_ms;
                let dropped = drop_where(&tx, "gateway_time < ?1", params![cutoff])?;
                tx.commit()?;
                Ok(dropped)
            })();
            let d = r.map_err(|e| self.err(e))?;
            total.waveform += d.waveform;
            total.numeric += d.numeric;
            total.events += d.events;
        }
        if total.total() > 0 {
            self.record_drop(&total)?;
        }
        let used = {
            let conn = self.lock();
            used_bytes(&conn).map_err(|e| self.err(e))?
        };
        if used > self.opts.max_bytes {
            let fraction = ((used - self.opts.max_bytes) as f64 / used as f64 + 0.05).min(1.0);
            if let Some(r) = self.drop_oldest(fraction, "max_bytes")? {
                return Ok(Some(r));
            }
        }
        Ok((total.total() > 0).then_some(total))
    }

    /// Drops about `fraction` of the rows: oldest first, lowest class first; unassigned rows
    /// before whole unacknowledged batches.
    fn drop_oldest(
        &self,
        fraction: f64,
        reason: &'static str,
    ) -> Result<Option<DropReport>, StoreError> {
        let report = {
            let mut conn = self.lock();
            let r = (|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let rows: i64 = tx.query_row("SELECT count(*) FROM queue", [], |r| r.get(0))?;
                let mut want = ((rows as f64) * fraction).ceil().max(1.0) as i64;
                let assigned: i64 = tx.query_row(
                    "SELECT value FROM meta WHERE key='assigned_upto'",
                    [],
                    |r| r.get(0),
                )?;
                let mut report = DropReport {
                    reason,
                    ..Default::default()
                };
                for class in [Class::Waveform, Class::Numeric, Class::Event] {
                    if want <= 0 {
                        break;
                    }
                    let n = tx.execute(
                        "DELETE FROM queue WHERE seq IN (SELECT seq FROM queue WHERE seq > ?1 AND class = ?2 ORDER BY seq LIMIT ?3)",
                        params![assigned, class as i64, want],
                    )? as i64;
                    want -= n;
                    match class {
                        Class::Waveform => report.waveform += n as u64,
                        Class::Numeric => report.numeric += n as u64,
                        Class::Event => report.events += n as u64,
                    }
                }
                // Still over: everything left is in flight; drop whole oldest batches.
                while want > 0 {
                    let oldest: Option<(i64, i64, i64)> = tx
                        .query_row("SELECT number, first_seq, last_seq FROM batches ORDER BY number LIMIT 1", [], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })
                        .optional()?;
                    let Some((number, first, last)) = oldest else {
                        break;
                    };
                    let d = drop_where(&tx, "seq BETWEEN ?1 AND ?2", params![first, last])?;
                    tx.execute("DELETE FROM batches WHERE number=?1", [number])?;
                    want -= d.total() as i64;
                    report.waveform += d.waveform;
                    report.numeric += d.numeric;
                    report.events += d.events;
                }
                tx.commit()?;
                Ok(report)
            })();
            r.map_err(|e| self.err(e))?
        };
        if report.total() == 0 {
            return Ok(None);
        }
        self.record_drop(&report)?;
        Ok(Some(report))
    }

    fn record_drop(&self, r: &DropReport) -> Result<(), StoreError> {
        self.dropped
            .fetch_add(r.total(), std::sync::atomic::Ordering::Relaxed);
        self.queued
            .fetch_sub(r.total(), std::sync::atomic::Ordering::Relaxed);
        log::warn!(
            "store {}: retention ({}) dropped {} rows: {} waveform, {} numeric, {} events",
            self.path.display(),
            r.reason,
            r.total(),
            r.waveform,
            r.numeric,
            r.events
        );
        self.try_append(&[AdapterEvent::Event(DeviceEvent {
            device: DeviceId("gateway".into()),
            kind: EventKind::Dropped,
            detail: format!(
                "reason={} waveform={} numeric={} events={} total={}",
                r.reason,
                r.waveform,
                r.numeric,
                r.events,
                r.total()
            ),
            gateway_time: now_ms(),
            presence: None,
            firmware: None,
        })])
        .map(|_| ())
        .map_err(|e| self.err(e))
    }

    /// Checkpoints and truncates the WAL (call when idle): keeps the `-wal` file bounded even
    /// after a burst.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| self.err(e))
    }
}

/// Assigns up to `max` of the oldest unassigned rows (`seq > assigned_upto`) to the next batch
/// number inside `tx`, ending the batch early where a device's location changes
/// ([`location::cut_at_change`]): `(number, rows)`, or `None` when no row is unassigned.
fn cut_batch(tx: &Connection, max: usize) -> rusqlite::Result<Option<(u64, Vec<Item>)>> {
    let assigned: i64 = tx.query_row(
        "SELECT value FROM meta WHERE key='assigned_upto'",
        [],
        |r| r.get(0),
    )?;
    let mut items = read_items(
        tx,
        "seq > ?1 ORDER BY seq LIMIT ?2",
        params![assigned, max as i64],
    )?;
    location::cut_at_change(tx, &mut items)?;
    let (Some(first), Some(last)) = (items.first().map(Item::seq), items.last().map(Item::seq))
    else {
        return Ok(None);
    };
    let number: i64 = tx.query_row("SELECT value FROM meta WHERE key='next_batch'", [], |r| {
        r.get(0)
    })?;
    let mut ins = tx.prepare_cached(
        "INSERT INTO batches(number, first_seq, last_seq, created_ms) VALUES (?1, ?2, ?3, ?4)",
    )?;
    ins.execute(params![number, first as i64, last as i64, now_ms()])?;
    let mut set = tx.prepare_cached("UPDATE meta SET value=?1 WHERE key=?2")?;
    set.execute(params![last as i64, "assigned_upto"])?;
    set.execute(params![number + 1, "next_batch"])?;
    Ok(Some((number as u64, items)))
}

/// The seq range `(first, last)` of batch `number`, if it is unacknowledged.
fn batch_range(conn: &Connection, number: u64) -> rusqlite::Result<Option<(i64, i64)>> {
    conn.query_row(
        "SELECT first_seq, last_seq FROM batches WHERE number=?1",
        [number as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(((pages - free).max(0) * size) as u64)
}

/// Deletes rows matching `cond` (whole batches they belong to stay consistent because callers
/// pass batch-aligned conditions or age cut-offs) and counts them by class.
fn drop_where(
    tx: &rusqlite::Transaction<'_>,
    cond: &str,
    p: impl rusqlite::Params + Clone,
) -> rusqlite::Result<DropReport> {
    let mut report = DropReport::default();
    {
        let mut st = tx.prepare(&format!(
            "SELECT class, count(*) FROM queue WHERE {cond} GROUP BY class"
        ))?;
        let mut rows = st.query(p.clone())?;
        while let Some(r) = rows.next()? {
            let (class, n): (i64, i64) = (r.get(0)?, r.get(1)?);
            match class {
                0 => report.waveform += n as u64,
                1 => report.numeric += n as u64,
                _ => report.events += n as u64,
            }
        }
    }
    if report.total() > 0 {
        tx.execute(&format!("DELETE FROM queue WHERE {cond}"), p)?;
        // Batches whose rows are all gone are done with.
        tx.execute(
            "DELETE FROM batches WHERE NOT EXISTS (SELECT 1 FROM queue WHERE seq BETWEEN batches.first_seq AND batches.last_seq)",
            [],
        )?;
    }
    Ok(report)
}

fn read_items(
    conn: &Connection,
    cond: &str,
    p: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Item>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT seq, device, kind, code, value, unit, device_time, gateway_time, time_quality, status, detail, samples FROM queue WHERE {cond}"
    ))?;
    let mut rows = st.query(p)?;
    let mut items = Vec::new();
    while let Some(r) = rows.next()? {
        let seq = r.get::<_, i64>(0)? as u64;
        let device = DeviceId(r.get(1)?);
        let kind: Option<String> = r.get(2)?;
        let gateway_time: i64 = r.get(7)?;
        match kind {
            None => {
                let unit_code: u32 = r.get(5)?;
                let status: Option<String> = r.get(9)?;
                let waveform = match r.get::<_, Option<Vec<u8>>>(11)? {
                    Some(blob) => Some(decode_waveform(&blob).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            11,
                            rusqlite::types::Type::Blob,
                            format!("row {seq}: {e}").into(),
                        )
                    })?),
                    None => None,
                };
                items.push(Item::Observation(StoredObservation {
                    seq,
                    observation: Observation {
                        device,
                        code: r.get(3)?,
                        value: r.get(4)?,
                        unit: Unit::from_mdc(unit_code).unwrap_or(Unit {
                            mdc: unit_code,
                            ucum: "",
                        }),
                        device_time: r.get(6)?,
                        gateway_time,
                        time_quality: match r.get::<_, i64>(8)? {
                            0 => TimeQuality::Synced,
                            1 => TimeQuality::Unsynced,
                            _ => TimeQuality::Device,
                        },
                        status: status
                            .map(|s| s.split(',').map(str::to_owned).collect())
                            .unwrap_or_default(),
                        waveform,
                    },
                }));
            }
            Some(kind) => items.push(Item::Event(StoredEvent {
                seq,
                event: DeviceEvent {
                    device,
                    kind: event_kind(&kind),
                    detail: r.get::<_, Option<String>>(10)?.unwrap_or_default(),
                    gateway_time,
                    presence: None,
                    firmware: None,
                },
            })),
        }
    }
    Ok(items)
}

/// A waveform as stored in `queue.samples`: the CBOR map of [`Waveform`] (`period_us`, `scale`,
/// `offset`, `samples`).
pub fn encode_waveform(w: &Waveform) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + w.samples.len() * 3);
    ciborium::into_writer(w, &mut out).expect("serialising to a Vec cannot fail");
    out
}

/// Reads a stored waveform back. Errors: not the CBOR of a [`Waveform`], or one that
/// [`Waveform::problem`] refuses (a damaged row is reported, never turned into samples).
pub fn decode_waveform(blob: &[u8]) -> Result<Waveform, String> {
    let w: Waveform =
        ciborium::from_reader(blob).map_err(|e| format!("stored waveform unreadable: {e}"))?;
    match w.problem() {
        Some(p) => Err(format!("stored waveform refused: {p}")),
        None => Ok(w),
    }
}

fn event_kind(s: &str) -> EventKind {
    match s {
        "connected" => EventKind::Connected,
        "disconnected" => EventKind::Disconnected,
        "battery" => EventKind::Battery,
        "rssi" => EventKind::Rssi,
        "rejected" => EventKind::Rejected,
        "dropped" => EventKind::Dropped,
        _ => EventKind::Error,
    }
}

/// Renames `path` and its `-wal`/`-shm` companions to `<path>.quarantined-<epoch ms>[...]`.
fn quarantine(path: &Path) -> std::io::Result<PathBuf> {
    let stamp = now_ms();
    let aside = PathBuf::from(format!("{}.quarantined-{stamp}", path.display()));
    std::fs::rename(path, &aside)?;
    for suffix in ["-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            std::fs::rename(&from, format!("{}{suffix}", aside.display()))?;
        }
    }
    Ok(aside)
}

/// Reads the store at `path` read-only (no recovery, no writes, works while the daemon runs):
/// queue depth and age, unacknowledged batches, bytes in use (`dropped` is 0: only the daemon
/// counts drops). For `wardgate status`.
pub fn read_stats(path: &Path) -> rusqlite::Result<StoreStats> {
    let c =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let (queued, oldest): (i64, Option<i64>) =
        c.query_row("SELECT count(*), min(gateway_time) FROM queue", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let unacked: i64 = c.query_row("SELECT count(*) FROM batches", [], |r| r.get(0))?;
    let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(StoreStats {
        queued: queued as u64,
        oldest_ms: oldest,
        unacked_batches: unacked as u64,
        bytes: ((pages - free).max(0) * size) as u64,
        dropped: 0,
    })
}

#[cfg(test)]
mod tests;
