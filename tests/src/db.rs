//! Reading the SQLite files a user would look at: the receiver's output (`observations`,
//! `events`, `batches`) and the gateway's store (`queue`, `batches`, `sqlite_sequence`).
//!
//! Live files are opened read-only (WAL lets us read while the process writes). The store of a
//! gateway that was just killed is read from a copy, so our reading never checkpoints or
//! recovers the real file before the restarted gateway does.

use crate::{Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn open_ro(path: &Path) -> Result<Connection> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("open {} read-only", path.display()))?;
    c.busy_timeout(Duration::from_secs(5))?;
    Ok(c)
}

/// One row of the receiver's `observations` table.
#[derive(Clone, Debug, PartialEq)]
pub struct UpObservation {
    /// Gateway id.
    pub gateway: String,
    /// The gateway's seq.
    pub seq: u64,
    /// Batch that carried it (first copy stored).
    pub batch: u64,
    /// Device id.
    pub device: String,
    /// MDC code.
    pub code: u32,
    /// Value; absent (NULL) when the gateway sent one that was not a number (the row's status
    /// then says `invalid-value=…`).
    pub value: Option<f64>,
    /// MDC unit code.
    pub unit: u32,
    /// UCUM unit.
    pub ucum: Option<String>,
    /// Status flags joined by `,`.
    pub status: Option<String>,
}

/// One row of the receiver's `events` table.
#[derive(Clone, Debug, PartialEq)]
pub struct UpEvent {
    /// The gateway's seq.
    pub seq: u64,
    /// Batch that carried it.
    pub batch: u64,
    /// Device id.
    pub device: String,
    /// Event kind.
    pub kind: String,
    /// Detail text.
    pub detail: Option<String>,
}

/// The receiver's output database (`output = "sqlite:PATH"`).
#[derive(Clone, Debug)]
pub struct Upstream {
    /// The file.
    pub path: PathBuf,
}

impl Upstream {
    /// The database at `path` (it may not exist yet: then every query returns nothing).
    pub fn new(path: &Path) -> Upstream {
        Upstream {
            path: path.to_path_buf(),
        }
    }

    fn conn(&self) -> Result<Option<Connection>> {
        if !self.path.exists() {
            return Ok(None);
        }
        Ok(Some(open_ro(&self.path)?))
    }

    /// Every observation, in seq order.
    pub fn observations(&self) -> Result<Vec<UpObservation>> {
        let Some(c) = self.conn()? else {
            return Ok(Vec::new());
        };
        let mut st = c.prepare("SELECT gateway, seq, batch, device, code, value, unit, ucum, status FROM observations ORDER BY gateway, seq")?;
        let rows = st.query_map([], |r| {
            Ok(UpObservation {
                gateway: r.get(0)?,
                seq: r.get::<_, i64>(1)? as u64,
                batch: r.get::<_, i64>(2)? as u64,
                device: r.get(3)?,
                code: r.get::<_, i64>(4)? as u32,
                value: r.get(5)?,
                unit: r.get::<_, i64>(6)? as u32,
                ucum: r.get(7)?,
                status: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Every event, in seq order.
    pub fn events(&self) -> Result<Vec<UpEvent>> {
        let Some(c) = self.conn()? else {
            return Ok(Vec::new());
        };
        let mut st =
            c.prepare("SELECT seq, batch, device, kind, detail FROM events ORDER BY seq")?;
        let rows = st.query_map([], |r| {
            Ok(UpEvent {
                seq: r.get::<_, i64>(0)? as u64,
                batch: r.get::<_, i64>(1)? as u64,
                device: r.get(2)?,
                kind: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// `(seq, location)` of every observation and event of `device`, in seq order: the location
    /// the receiver stored with each row (`None`: none).
    pub fn locations(&self, device: &str) -> Result<Vec<(u64, Option<String>)>> {
        let Some(c) = self.conn()? else {
            return Ok(Vec::new());
        };
        let mut st = c.prepare(
            "SELECT seq, location FROM observations WHERE device = ?1
             UNION ALL SELECT seq, location FROM events WHERE device = ?1 ORDER BY seq",
        )?;
        let rows = st.query_map([device], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Observations per device.
    pub fn count_by_device(&self) -> Result<BTreeMap<String, u64>> {
        let Some(c) = self.conn()? else {
            return Ok(BTreeMap::new());
        };
        let mut st = c.prepare("SELECT device, count(*) FROM observations GROUP BY device")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<BTreeMap<_, _>>>()?)
    }

    /// Observations of one device.
    pub fn count(&self, device: &str) -> Result<u64> {
        Ok(self.count_by_device()?.get(device).copied().unwrap_or(0))
    }

    /// `(rows, distinct (gateway, seq))` of the observations table.
    pub fn row_and_distinct_counts(&self) -> Result<(u64, u64)> {
        let Some(c) = self.conn()? else {
            return Ok((0, 0));
        };
        Ok(c.query_row("SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT gateway, seq FROM observations)) FROM observations", [], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?)
    }

    /// Every seq delivered (observations and events share the gateway's sequence).
    pub fn all_seqs(&self) -> Result<BTreeSet<u64>> {
        let Some(c) = self.conn()? else {
            return Ok(BTreeSet::new());
        };
        let mut st = c.prepare("SELECT seq FROM observations UNION ALL SELECT seq FROM events")?;
        let rows = st.query_map([], |r| Ok(r.get::<_, i64>(0)? as u64))?;
        let v = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        let n = v.len();
        let set: BTreeSet<u64> = v.into_iter().collect();
        anyhow::ensure!(
            set.len() == n,
            "{} seqs appear both as an observation and an event",
            n - set.len()
        );
        Ok(set)
    }

    /// Batch numbers recorded in the `batches` table.
    pub fn batches(&self) -> Result<Vec<u64>> {
        let Some(c) = self.conn()? else {
            return Ok(Vec::new());
        };
        let mut st = c.prepare("SELECT batch FROM batches ORDER BY batch")?;
        let rows = st.query_map([], |r| Ok(r.get::<_, i64>(0)? as u64))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The waveform observations of `code` from `device`, in seq order: `(gateway_time,
    /// period_us, samples)` from the `waveform` column (JSON); an observation of that code
    /// without one is an error.
    pub fn waveforms(&self, device: &str, code: u32) -> Result<Vec<(i64, u32, Vec<i32>)>> {
        let Some(c) = self.conn()? else {
            return Ok(Vec::new());
        };
        let mut st = c.prepare(
            "SELECT gateway_time, waveform FROM observations WHERE device = ?1 AND code = ?2 ORDER BY seq",
        )?;
        let rows = st.query_map(rusqlite::params![device, code], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (t, w) = row?;
            let w = w.with_context(|| format!("{device} code {code} at {t}: no waveform"))?;
            let w: serde_json::Value = serde_json::from_str(&w)?;
            let period = w["period_us"].as_u64().context("period_us")? as u32;
            let samples: Vec<i32> = serde_json::from_value(w["samples"].clone())?;
            out.push((t, period, samples));
        }
        Ok(out)
    }

    /// Every sample of the waveform observations of `code` from `device`, concatenated in seq
    /// order (see [`Self::waveforms`]).
    pub fn samples(&self, device: &str, code: u32) -> Result<Vec<i32>> {
        Ok(self
            .waveforms(device, code)?
            .into_iter()
            .flat_map(|w| w.2)
            .collect())
    }

    /// Values of `code` from `device`, in seq order.
    pub fn values(&self, device: &str, code: u32) -> Result<Vec<f64>> {
        Ok(self
            .observations()?
            .into_iter()
            .filter(|o| o.device == device && o.code == code)
            // An absent value shows as NaN, so no comparison with real values passes by accident.
            .map(|o| o.value.unwrap_or(f64::NAN))
            .collect())
    }
}

/// One row of the gateway store's `queue`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreRow {
    /// seq.
    pub seq: u64,
    /// Device id.
    pub device: String,
    /// Event kind, `None` for an observation.
    pub kind: Option<String>,
    /// MDC code of an observation.
    pub code: Option<u32>,
    /// Value of an observation.
    pub value: Option<f64>,
}

/// What the gateway's store holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreSnapshot {
    /// Highest seq ever assigned (`sqlite_sequence`): every row accepted so far has a seq up to
    /// this, acknowledged ones included. (A fresh store does not start at 0: it is seeded from
    /// the clock, see [`crate::env::StoreSeed`].)
    pub max_seq: u64,
    /// Rows not yet acknowledged.
    pub queue: Vec<StoreRow>,
    /// Batches handed to the uplink and not yet acknowledged.
    pub unacked_batches: u64,
    /// The number the next batch will get (`meta.next_batch`).
    pub next_batch: u64,
}

fn snapshot(c: &Connection) -> Result<StoreSnapshot> {
    let max_seq: Option<i64> = c
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name='queue'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let mut st = c.prepare("SELECT seq, device, kind, code, value FROM queue ORDER BY seq")?;
    let queue = st
        .query_map([], |r| {
            Ok(StoreRow {
                seq: r.get::<_, i64>(0)? as u64,
                device: r.get(1)?,
                kind: r.get(2)?,
                code: r.get::<_, Option<i64>>(3)?.map(|c| c as u32),
                value: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let unacked: i64 = c.query_row("SELECT count(*) FROM batches", [], |r| r.get(0))?;
    let next_batch: Option<i64> = c
        .query_row("SELECT value FROM meta WHERE key='next_batch'", [], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(StoreSnapshot {
        max_seq: max_seq.unwrap_or(0) as u64,
        queue,
        unacked_batches: unacked as u64,
        next_batch: next_batch.unwrap_or(0) as u64,
    })
}

/// Reads a live store (the gateway may be running) read-only. A store that does not exist yet
/// reads as empty.
pub fn read_store(path: &Path) -> Result<StoreSnapshot> {
    if !path.exists() {
        return Ok(StoreSnapshot::default());
    }
    snapshot(&open_ro(path)?)
}

/// Reads the store of a dead gateway from a copy (`store.db` and its `-wal`) made in `scratch`,
/// so SQLite's recovery runs on the copy and the real files stay exactly as the kill left them.
pub fn read_store_copy(path: &Path, scratch: &Path) -> Result<StoreSnapshot> {
    std::fs::create_dir_all(scratch)?;
    let copy = scratch.join("store-copy.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", copy.display()));
    }
    std::fs::copy(path, &copy).with_context(|| format!("copy {}", path.display()))?;
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    if wal.exists() {
        std::fs::copy(&wal, format!("{}-wal", copy.display()))?;
    }
    let c = Connection::open(&copy)?;
    snapshot(&c)
}
