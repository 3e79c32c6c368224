//! The raw ceiling of issue 11 "Measure" (b): plain rusqlite inserting the store's row shape —
//! the `queue` table exactly as `wardgate::store` creates it (its DDL read back from a store
//! that wardgate's own code made, so a new column is measured too) — in transactions of
//! `per_txn` rows, WAL, `synchronous=FULL`: what this machine's SQLite and disk allow before
//! any gateway code runs.

use crate::{Context, Result};
use std::path::Path;
use std::time::Instant;
use wardgate::store::Class;
use wardgate_adapters::observation::{mdc, Unit};

/// The `CREATE TABLE queue(…)` statement of a store made by `wardgate::store::Store::open` in
/// `dir` (the store file is left there).
pub fn queue_ddl(dir: &Path) -> Result<String> {
    let path = dir.join("ddl-store.db");
    let (store, _) = wardgate::store::Store::open(&path, wardgate::store::StoreOptions::default())?;
    drop(store);
    let c = rusqlite::Connection::open(&path)?;
    let ddl: String = c
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'queue'",
            [],
            |r| r.get(0),
        )
        .context("the store has no queue table")?;
    Ok(ddl)
}

/// Inserts `rows` observation rows (the columns `Store::append` writes for a numeric: class,
/// device, code, value, unit, device time, gateway time, time quality, status `record=N`) into
/// a fresh `queue` in `dir/raw.db`, `per_txn` rows per `synchronous=FULL` WAL transaction;
/// returns rows per second (wall clock, first `BEGIN` to last `COMMIT`).
pub fn insert_rate(dir: &Path, rows: u64, per_txn: u64) -> Result<f64> {
    let ddl = queue_ddl(dir)?;
    let path = dir.join("raw.db");
    let _ = std::fs::remove_file(&path);
    let mut c = rusqlite::Connection::open(&path)?;
    let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "journal_mode is {mode}");
    c.execute_batch("PRAGMA synchronous=FULL;")?;
    c.execute_batch(&ddl)?;
    let devices = [
        "serial:ox-001",
        "serial:ox-002",
        "serial:ox-003",
        "serial:ox-004",
    ];
    let t0 = Instant::now();
    let gateway_time = wardgate_adapters::observation::now_ms();
    let mut i = 0u64;
    while i < rows {
        let tx = c.transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO queue(class, device, kind, code, value, unit, device_time, gateway_time, time_quality, status, detail, samples)
                 VALUES (?1, ?2, NULL, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, NULL)",
            )?;
            for _ in 0..per_txn.min(rows - i) {
                let (code, value, unit) = if i & 1 == 0 {
                    (mdc::SPO2, 97.0, Unit::PERCENT.mdc)
                } else {
                    (mdc::PULSE_RATE_OXIM, 72.0, Unit::BEAT_PER_MIN.mdc)
                };
                ins.execute(rusqlite::params![
                    Class::Numeric as i64,
                    devices[(i / 2 % 4) as usize],
                    code,
                    value,
                    unit,
                    "2026-12-06T08:00:00",
                    gateway_time,
                    0i64,
                    format!("record={}", i / 2),
                ])?;
                i += 1;
            }
        }
        tx.commit()?;
    }
    Ok(rows as f64 / t0.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_inserts_every_row_into_the_stores_own_table() {
        let dir = tempfile::tempdir().unwrap();
        let ddl = queue_ddl(dir.path()).unwrap();
        assert!(ddl.contains("CREATE TABLE queue"), "{ddl}");
        assert!(ddl.contains("gateway_time"), "{ddl}");
        let rate = insert_rate(dir.path(), 2_500, 1_000).unwrap();
        assert!(rate > 0.0);
        let c = rusqlite::Connection::open(dir.path().join("raw.db")).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM queue", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2_500);
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
