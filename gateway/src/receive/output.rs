//! Where verified batches go, durably: SQLite (`synchronous=FULL`, one transaction per batch)
//! or JSON lines (`fsync` per batch). Dedup on `(gateway, seq)` and `(gateway, batch)`.
//!
//! **A value that is not a finite number** (NaN, ±infinity — a gateway bug, since decoders
//! never emit one) is stored as an *absent* value (SQL `NULL`, JSON `null`) with the status flag
//! `invalid-value=nan|inf|-inf` added to the row's `status`, and counted
//! ([`Written::invalid_values`]). The batch is stored and acknowledged: rejecting it would leave
//! every other row of the batch stuck at the gateway for good (it would re-send it forever),
//! and dropping the row silently is what the old schema did (`value REAL NOT NULL` under
//! `INSERT OR IGNORE`). Nothing is invented either: the flag says the value was not a number.
//! Older SQLite outputs are migrated once at open (the `value` column loses `NOT NULL`).
//!
//! **A waveform observation** is one row like any other; its sample array goes into
//! `observations.waveform` as JSON text (`{"period_us":…,"scale":…,"offset":…,"samples":[…]}`,
//! the wire object unchanged; NULL for a numeric), and in a JSON lines output as the row's
//! `waveform` object. An older SQLite output gains the column at open.
//!
//! **A row's location** (issue 11 item 7) is its device's entry in the batch's `locations` (where
//! the device was configured to be when the gateway committed the row): `observations.location`
//! and `events.location` (NULL when none), the JSON lines field `location` (absent when none).
//! An older SQLite output gains the columns at open (NULL for its rows).

use crate::batch::{BatchPayload, WireObservation};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;

/// What [`Output::write`] wrote for one batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// New observations per device.
    pub per_device: BTreeMap<String, u64>,
    /// New device events.
    pub events: u64,
    /// New observations stored with an absent value because theirs was not a finite number.
    pub invalid_values: u64,
    /// Whether this batch (gateway, number) had been stored before (a re-send).
    pub duplicate: bool,
}

/// A value as stored: `(value, extra status flag)`. Finite values unchanged; NaN and ±infinity
/// absent, with the flag saying which.
pub fn stored_value(v: f64) -> (Option<f64>, Option<&'static str>) {
    if v.is_finite() {
        (Some(v), None)
    } else if v.is_nan() {
        (None, Some("invalid-value=nan"))
    } else if v > 0.0 {
        (None, Some("invalid-value=inf"))
    } else {
        (None, Some("invalid-value=-inf"))
    }
}

/// The row's status flags as stored, with the invalid-value flag appended when there is one.
fn stored_status(o: &WireObservation, flag: Option<&str>) -> Vec<String> {
    let mut s = o.status.clone();
    if let Some(f) = flag {
        s.push(f.to_owned());
    }
    s
}

/// Where verified data goes.
pub enum Output {
    /// SQLite file with `observations`, `events` and `batches` tables.
    Sqlite(rusqlite::Connection),
    /// JSON lines, one observation or event per line, fsynced per batch.
    Jsonl {
        /// The open file (append).
        file: std::fs::File,
        /// `(gateway, seq)` already written (loaded from the file at start).
        seen: HashSet<(String, u64)>,
        /// `(gateway, batch)` already written.
        batches: HashSet<(String, u64)>,
    },
}

const OBSERVATIONS: &str =
    "observations(gateway TEXT NOT NULL, seq INTEGER NOT NULL, batch INTEGER NOT NULL,
    device TEXT NOT NULL, code INTEGER NOT NULL, value REAL, unit INTEGER NOT NULL, ucum TEXT,
    gateway_time INTEGER NOT NULL, time_quality TEXT, device_time TEXT, status TEXT,
    waveform TEXT, location TEXT, PRIMARY KEY(gateway, seq))";

/// Opens (creating or migrating) the SQLite output.
fn open_sqlite(path: &std::path::Path) -> anyhow::Result<rusqlite::Connection> {
    let mut c = rusqlite::Connection::open(path)?;
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    c.execute_batch(&format!(
        "PRAGMA synchronous=FULL;
         CREATE TABLE IF NOT EXISTS batches(gateway TEXT NOT NULL, batch INTEGER NOT NULL, site TEXT, ward TEXT,
            received_ms INTEGER NOT NULL, PRIMARY KEY(gateway, batch));
         CREATE TABLE IF NOT EXISTS {OBSERVATIONS};
         CREATE TABLE IF NOT EXISTS events(gateway TEXT NOT NULL, seq INTEGER NOT NULL, batch INTEGER NOT NULL,
            device TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT, gateway_time INTEGER NOT NULL,
            location TEXT, PRIMARY KEY(gateway, seq));"
    ))?;
    let has_waveform = c
        .prepare("SELECT 1 FROM pragma_table_info('observations') WHERE name = 'waveform'")?
        .exists([])?;
    if !has_waveform {
        // Before waveforms (issue 11): the column is added, rows kept (NULL: numerics).
        c.execute_batch("ALTER TABLE observations ADD COLUMN waveform TEXT;")?;
    }
    for table in ["observations", "events"] {
        let has_location = c
            .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = 'location'")?
            .exists([table])?;
        if !has_location {
            // Before device locations (issue 11 item 7): rows kept, NULL (none known).
            c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN location TEXT;"))?;
        }
    }
    let value_not_null: bool = c.query_row(
        "SELECT \"notnull\" FROM pragma_table_info('observations') WHERE name = 'value'",
        [],
        |r| r.get(0),
    )?;
    if value_not_null {
        // Before absent values were stored: rebuild the table without the constraint, rows kept.
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n: i64 = tx.query_row("SELECT count(*) FROM observations", [], |r| r.get(0))?;
        tx.execute_batch(&format!(
            "CREATE TABLE migrated_{OBSERVATIONS};
             INSERT INTO migrated_observations SELECT gateway, seq, batch, device, code, value, unit, ucum,
                gateway_time, time_quality, device_time, status, waveform, location FROM observations;
             DROP TABLE observations;
             ALTER TABLE migrated_observations RENAME TO observations;"
        ))?;
        tx.commit()?;
        log::info!(
            "receiver output {}: observations.value may now be absent (NULL) for values that were not numbers; {n} rows kept",
            path.display()
        );
    }
    Ok(c)
}

impl Output {
    /// Opens `sqlite:PATH` or `jsonl:PATH`.
    pub fn open(spec: &str) -> anyhow::Result<Output> {
        let (kind, path) = spec
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("output `{spec}` must be sqlite:PATH or jsonl:PATH"))?;
        let path = PathBuf::from(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        match kind {
            "sqlite" => Ok(Output::Sqlite(open_sqlite(&path)?)),
            "jsonl" => {
                let mut seen = HashSet::new();
                let mut batches = HashSet::new();
                if let Ok(text) = std::fs::read_to_string(&path) {
                    for line in text.lines() {
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                            let gw = v["gateway"].as_str().unwrap_or_default().to_owned();
                            if let Some(seq) = v["seq"].as_u64() {
                                seen.insert((gw.clone(), seq));
                            }
                            if let Some(b) = v["batch"].as_u64() {
                                batches.insert((gw, b));
                            }
                        }
                    }
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?;
                Ok(Output::Jsonl {
                    file,
                    seen,
                    batches,
                })
            }
            other => anyhow::bail!("output kind `{other}` must be sqlite or jsonl"),
        }
    }

    /// Writes a verified batch durably (committed or fsynced when this returns). Rows already
    /// present (same gateway and seq) are skipped; every other row is stored (see the module
    /// documentation for values that are not numbers).
    pub fn write(&mut self, p: &BatchPayload) -> anyhow::Result<Written> {
        let now = wardgate_adapters::observation::now_ms();
        let mut w = Written::default();
        match self {
            Output::Sqlite(c) => {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let fresh = tx.execute(
                    "INSERT OR IGNORE INTO batches(gateway, batch, site, ward, received_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                    rusqlite::params![p.gateway, p.batch as i64, p.site, p.ward, now],
                )? == 1;
                {
                    // `ON CONFLICT DO NOTHING` on the key only: any other constraint failing is
                    // an error that keeps the batch unacknowledged, never a silently lost row.
                    let mut ins = tx.prepare_cached(
                        "INSERT INTO observations(gateway, seq, batch, device, code, value, unit, ucum, gateway_time, time_quality, device_time, status, waveform, location)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) ON CONFLICT(gateway, seq) DO NOTHING",
                    )?;
                    for o in &p.observations {
                        let (value, flag) = stored_value(o.value);
                        let status = stored_status(o, flag);
                        let status = (!status.is_empty()).then(|| status.join(","));
                        let waveform =
                            o.waveform.as_ref().map(serde_json::to_string).transpose()?;
                        let n = ins.execute(rusqlite::params![
                            p.gateway,
                            o.seq as i64,
                            p.batch as i64,
                            o.device,
                            o.code,
                            value,
                            o.unit,
                            o.ucum,
                            o.gateway_time,
                            o.time_quality,
                            o.device_time,
                            status,
                            waveform,
                            p.locations.get(&o.device)
                        ])?;
                        if n == 1 {
                            *w.per_device.entry(o.device.clone()).or_insert(0) += 1;
                            w.invalid_values += u64::from(flag.is_some());
                        }
                    }
                    let mut ev = tx.prepare_cached(
                        "INSERT INTO events(gateway, seq, batch, device, kind, detail, gateway_time, location) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT(gateway, seq) DO NOTHING",
                    )?;
                    for e in &p.events {
                        w.events += ev.execute(rusqlite::params![
                            p.gateway,
                            e.seq as i64,
                            p.batch as i64,
                            e.device,
                            e.kind,
                            e.detail,
                            e.gateway_time,
                            p.locations.get(&e.device)
                        ])? as u64;
                    }
                }
                tx.commit()?;
                w.duplicate = !fresh;
                Ok(w)
            }
            Output::Jsonl {
                file,
                seen,
                batches,
            } => {
                let fresh = !batches.contains(&(p.gateway.clone(), p.batch));
                let mut out = Vec::new();
                let mut new_seqs = HashSet::new();
                let mut fresh_seq =
                    |seq: u64| !seen.contains(&(p.gateway.clone(), seq)) && new_seqs.insert(seq);
                for o in &p.observations {
                    if fresh_seq(o.seq) {
                        let (value, flag) = stored_value(o.value);
                        let mut v = serde_json::to_value(o)?;
                        v["value"] = value.into();
                        let status = stored_status(o, flag);
                        if !status.is_empty() {
                            v["status"] = status.into();
                        }
                        v["gateway"] = p.gateway.clone().into();
                        v["batch"] = p.batch.into();
                        v["type"] = "observation".into();
                        if let Some(l) = p.locations.get(&o.device) {
                            v["location"] = l.clone().into();
                        }
                        serde_json::to_writer(&mut out, &v)?;
                        out.push(b'\n');
                        *w.per_device.entry(o.device.clone()).or_insert(0) += 1;
                        w.invalid_values += u64::from(flag.is_some());
                    }
                }
                for e in &p.events {
                    if fresh_seq(e.seq) {
                        let mut v = serde_json::to_value(e)?;
                        v["gateway"] = p.gateway.clone().into();
                        v["batch"] = p.batch.into();
                        v["type"] = "event".into();
                        if let Some(l) = p.locations.get(&e.device) {
                            v["location"] = l.clone().into();
                        }
                        serde_json::to_writer(&mut out, &v)?;
                        out.push(b'\n');
                        w.events += 1;
                    }
                }
                file.write_all(&out)?;
                file.sync_data()?;
                // Only now is it durable: a failed write leaves the dedup sets as they were, so
                // the redelivered batch is written again.
                batches.insert((p.gateway.clone(), p.batch));
                seen.extend(new_seqs.into_iter().map(|s| (p.gateway.clone(), s)));
                w.duplicate = !fresh;
                Ok(w)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::WireEvent;

    fn obs(seq: u64, value: f64) -> WireObservation {
        WireObservation::spo2_for_tests(seq, value)
    }

    fn batch(n: u64, observations: Vec<WireObservation>) -> BatchPayload {
        BatchPayload {
            v: 1,
            gateway: "gw1".into(),
            site: "s".into(),
            ward: "w".into(),
            batch: n,
            observations,
            events: vec![WireEvent {
                seq: 100 + n,
                device: "gateway".into(),
                kind: "connected".into(),
                detail: String::new(),
                gateway_time: 1,
            }],
            locations: Default::default(),
        }
    }

    #[test]
    fn stored_values() {
        assert_eq!(stored_value(97.5), (Some(97.5), None));
        assert_eq!(stored_value(f64::NAN), (None, Some("invalid-value=nan")));
        assert_eq!(
            stored_value(f64::INFINITY),
            (None, Some("invalid-value=inf"))
        );
        assert_eq!(
            stored_value(f64::NEG_INFINITY),
            (None, Some("invalid-value=-inf"))
        );
    }

    #[test]
    fn sqlite_stores_a_nan_as_absent_with_a_status_and_counts_it() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("up.db");
        let mut out = Output::open(&format!("sqlite:{}", path.display())).unwrap();
        let mut b = batch(
            1,
            vec![obs(1, 97.0), obs(2, f64::NAN), obs(3, f64::INFINITY)],
        );
        b.observations[1].status = vec!["low-perfusion".into()];
        let w = out.write(&b).unwrap();
        assert_eq!(w.per_device.get("serial:a"), Some(&3));
        assert_eq!((w.invalid_values, w.events, w.duplicate), (2, 1, false));
        let c = rusqlite::Connection::open(&path).unwrap();
        let rows: Vec<(u64, Option<f64>, Option<String>)> = c
            .prepare("SELECT seq, value, status FROM observations ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                (1, Some(97.0), None),
                (2, None, Some("low-perfusion,invalid-value=nan".into())),
                (3, None, Some("invalid-value=inf".into())),
            ]
        );
        // The re-send is a duplicate and counts nothing twice.
        let w = out.write(&b).unwrap();
        assert_eq!(
            (w.per_device.len(), w.invalid_values, w.duplicate),
            (0, 0, true)
        );
    }

    #[test]
    fn a_waveform_arrives_sample_for_sample_in_sqlite_and_jsonl() {
        use wardgate_adapters::observation::Waveform;
        let samples: Vec<i32> = (0..360).map(|i| (i * 7919) % 2048 - 1024).collect();
        let mut b = batch(1, vec![obs(1, 97.0), obs(2, -5.12)]);
        b.observations[1].waveform = Some(Waveform {
            period_us: 2778,
            scale: 0.005,
            offset: -5.12,
            samples: samples.clone(),
        });
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("up.db");
        let mut out = Output::open(&format!("sqlite:{}", path.display())).unwrap();
        out.write(&b).unwrap();
        let c = rusqlite::Connection::open(&path).unwrap();
        let rows: Vec<Option<String>> = c
            .prepare("SELECT waveform FROM observations ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows[0], None, "a numeric has no waveform");
        let w: serde_json::Value = serde_json::from_str(rows[1].as_deref().unwrap()).unwrap();
        assert_eq!(w["period_us"], 2778);
        assert_eq!(w["offset"], -5.12);
        assert_eq!(w["samples"], serde_json::json!(samples));

        let spec = format!("jsonl:{}", d.path().join("up.jsonl").display());
        Output::open(&spec).unwrap().write(&b).unwrap();
        let text = std::fs::read_to_string(d.path().join("up.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(lines[0].get("waveform").is_none());
        assert_eq!(lines[1]["waveform"]["samples"], serde_json::json!(samples));
        assert_eq!(lines[1]["waveform"]["scale"], 0.005);
    }

    #[test]
    fn each_row_is_stored_with_its_device_s_location_in_sqlite_and_jsonl() {
        let mut b = batch(1, vec![obs(1, 97.0), obs(2, 96.0)]);
        b.observations[1].device = "serial:b".into();
        b.locations = [
            ("serial:a".to_owned(), "ward-7/bed-12".to_owned()),
            ("gateway".to_owned(), "ward-7/cupboard".to_owned()),
        ]
        .into();
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("up.db");
        Output::open(&format!("sqlite:{}", path.display()))
            .unwrap()
            .write(&b)
            .unwrap();
        let c = rusqlite::Connection::open(&path).unwrap();
        let rows: Vec<(String, Option<String>)> = c
            .prepare("SELECT device, location FROM observations ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                ("serial:a".into(), Some("ward-7/bed-12".into())),
                ("serial:b".into(), None)
            ]
        );
        let ev: Option<String> = c
            .query_row("SELECT location FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ev.as_deref(), Some("ward-7/cupboard"));

        let jl = d.path().join("up.jsonl");
        Output::open(&format!("jsonl:{}", jl.display()))
            .unwrap()
            .write(&b)
            .unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jl)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["location"], "ward-7/bed-12");
        assert!(lines[1].get("location").is_none());
        assert_eq!(lines[2]["location"], "ward-7/cupboard");
        assert!(lines[0].get("locations").is_none());
    }

    #[test]
    fn an_old_sqlite_output_is_migrated_with_its_rows() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("up.db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE observations(gateway TEXT NOT NULL, seq INTEGER NOT NULL, batch INTEGER NOT NULL,
                    device TEXT NOT NULL, code INTEGER NOT NULL, value REAL NOT NULL, unit INTEGER NOT NULL, ucum TEXT,
                    gateway_time INTEGER NOT NULL, time_quality TEXT, device_time TEXT, status TEXT,
                    PRIMARY KEY(gateway, seq));
                 INSERT INTO observations VALUES ('gw1', 1, 1, 'serial:a', 150456, 96.0, 262688, '%', 1, 'synced', NULL, NULL);",
            )
            .unwrap();
        }
        let mut out = Output::open(&format!("sqlite:{}", path.display())).unwrap();
        let w = out
            .write(&batch(2, vec![obs(1, 1.0), obs(2, f64::NAN)]))
            .unwrap();
        assert_eq!(
            (w.per_device.get("serial:a"), w.invalid_values),
            (Some(&1), 1)
        );
        let c = rusqlite::Connection::open(&path).unwrap();
        let v: Vec<Option<f64>> = c
            .prepare("SELECT value FROM observations ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(v, [Some(96.0), None]);
        for table in ["observations", "events"] {
            let n: i64 = c
                .query_row(
                    &format!("SELECT count(*) FROM {table} WHERE location IS NULL"),
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(
                n >= 1,
                "{table} gained a location column, NULL for old rows"
            );
        }
        drop(out);
        // Opening again does nothing more.
        Output::open(&format!("sqlite:{}", path.display())).unwrap();
    }

    #[test]
    fn jsonl_writes_null_with_a_status_and_dedups_across_reopen() {
        let d = tempfile::tempdir().unwrap();
        let spec = format!("jsonl:{}", d.path().join("up.jsonl").display());
        let mut out = Output::open(&spec).unwrap();
        let w = out
            .write(&batch(1, vec![obs(1, f64::NAN), obs(2, 5.0)]))
            .unwrap();
        assert_eq!((w.invalid_values, w.events, w.duplicate), (1, 1, false));
        drop(out);
        let text = std::fs::read_to_string(d.path().join("up.jsonl")).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["value"], serde_json::Value::Null);
        assert_eq!(first["status"], serde_json::json!(["invalid-value=nan"]));
        let mut out = Output::open(&spec).unwrap();
        let w = out
            .write(&batch(1, vec![obs(1, f64::NAN), obs(2, 5.0)]))
            .unwrap();
        assert_eq!((w.per_device.len(), w.events, w.duplicate), (0, 0, true));
    }
}
