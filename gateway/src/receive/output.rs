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
//!
//! **Several receivers** (`[receiver] share_group`) may each write their own file, or share
//! one SQLite file: writers then take turns, each waiting up to [`SHARED_FILE_WAIT`]. Dedup
//! works across a shared file; across separate files a batch the gateway re-sent (its ack was
//! late) may be stored by two receivers, so readers merging files dedup on `(gateway, seq)`.

use crate::batch::{BatchPayload, WireObservation};
use std::collections::{BTreeMap, HashMap, HashSet};
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

impl Written {
    /// Counts one new observation of `device` (the name is copied only the first time).
    fn count(&mut self, device: &str) {
        match self.per_device.get_mut(device) {
            Some(n) => *n += 1,
            None => {
                self.per_device.insert(device.to_owned(), 1);
            }
        }
    }
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

/// One observation line of the JSON-lines output: the wire observation with `value` as stored,
/// `status` with the invalid-value flag, and `gateway`, `batch`, `type` added. The keys are in
/// sorted order, as the `serde_json::Value` this was built from before wrote them, so the lines
/// are byte for byte the same (the waveform object, rare, still goes through a `Value`).
#[derive(serde::Serialize)]
struct ObservationLine<'a> {
    batch: u64,
    code: u32,
    device: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_time: Option<&'a str>,
    gateway: &'a str,
    gateway_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<&'a str>,
    seq: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    status: Vec<&'a str>,
    time_quality: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    ucum: &'a str,
    unit: u32,
    value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    waveform: Option<serde_json::Value>,
}

impl<'a> ObservationLine<'a> {
    fn new(
        p: &'a BatchPayload,
        o: &'a WireObservation,
        value: Option<f64>,
        flag: Option<&'static str>,
    ) -> serde_json::Result<ObservationLine<'a>> {
        Ok(ObservationLine {
            batch: p.batch,
            code: o.code,
            device: &o.device,
            device_time: o.device_time.as_deref(),
            gateway: &p.gateway,
            gateway_time: o.gateway_time,
            location: p.locations.get(&o.device).map(String::as_str),
            seq: o.seq,
            status: o.status.iter().map(String::as_str).chain(flag).collect(),
            time_quality: &o.time_quality,
            kind: "observation",
            ucum: &o.ucum,
            unit: o.unit,
            value,
            waveform: o.waveform.as_ref().map(serde_json::to_value).transpose()?,
        })
    }
}

/// The row's `status` column: its flags (with the invalid-value flag) joined with `,`, or
/// absent when there are none.
fn status_text(o: &WireObservation, flag: Option<&str>) -> Option<String> {
    match (o.status.as_slice(), flag) {
        ([], None) => None,
        ([], Some(f)) => Some(f.to_owned()),
        (s, None) => Some(s.join(",")),
        (s, Some(f)) => Some(format!("{},{f}", s.join(","))),
    }
}

/// Where verified data goes.
pub enum Output {
    /// SQLite file with `observations`, `events` and `batches` tables.
    Sqlite(rusqlite::Connection),
    /// JSON lines, one observation or event per line, fsynced per batch.
    Jsonl {
        /// The open file (append).
        file: std::fs::File,
        /// The seqs already written, per gateway (loaded from the file at start).
        seen: HashMap<String, HashSet<u64>>,
        /// `(gateway, batch)` already written.
        batches: HashSet<(String, u64)>,
    },
}

const OBSERVATIONS: &str =
    "observations(gateway TEXT NOT NULL, seq INTEGER NOT NULL, batch INTEGER NOT NULL,
    device TEXT NOT NULL, code INTEGER NOT NULL, value REAL, unit INTEGER NOT NULL, ucum TEXT,
    gateway_time INTEGER NOT NULL, time_quality TEXT, device_time TEXT, status TEXT,
    waveform TEXT, location TEXT, PRIMARY KEY(gateway, seq))";

/// How long a write waits for another receiver writing the same SQLite file (one
/// transaction per batch) before it fails; failing stops the receiver without PUBACK, so the
/// broker redelivers the batch.
pub const SHARED_FILE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens (creating or migrating) the SQLite output.
fn open_sqlite(path: &std::path::Path) -> anyhow::Result<rusqlite::Connection> {
    let mut c = rusqlite::Connection::open(path)?;
    // Several receivers may share one file: each waits its turn to write (SQLite's busy
    // handler) instead of failing the batch.
    c.busy_timeout(SHARED_FILE_WAIT)?;
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

/// Rows per multi-row `INSERT` on the fast path ([`COLUMNS`] parameters each: 896, far below
/// SQLite's limit of 32,766).
const ROWS_PER_INSERT: usize = 64;

/// Parameters per observation row.
const COLUMNS: usize = 14;

/// `INSERT INTO observations … VALUES (14 × ?), …` for `rows` rows, no row skipped silently:
/// `ON CONFLICT DO NOTHING` on the key only, so any other constraint failing is an error that
/// keeps the batch unacknowledged, never a silently lost row.
fn insert_sql(rows: usize) -> String {
    let row = format!("({})", ["?"; COLUMNS].join(", "));
    format!(
        "INSERT INTO observations(gateway, seq, batch, device, code, value, unit, ucum, gateway_time, time_quality, device_time, status, waveform, location)
         VALUES {} ON CONFLICT(gateway, seq) DO NOTHING",
        vec![row; rows].join(", ")
    )
}

/// The SQL of [`insert_sql`] for one row and for [`ROWS_PER_INSERT`] rows, made once.
fn insert_statements() -> &'static (String, String) {
    static SQL: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    SQL.get_or_init(|| (insert_sql(1), insert_sql(ROWS_PER_INSERT)))
}

/// Whether every observation of `p` will be a new row: its seqs strictly increase (no seq twice
/// in the batch) and the output holds no row of this gateway in their range. Read inside the
/// batch's write transaction (`BEGIN IMMEDIATE`), so another receiver sharing the file cannot
/// add one in between. False for an empty batch and for seqs beyond SQLite's integers.
fn all_rows_new(tx: &rusqlite::Transaction<'_>, p: &BatchPayload) -> rusqlite::Result<bool> {
    let (Some(first), Some(last)) = (p.observations.first(), p.observations.last()) else {
        return Ok(false);
    };
    if i64::try_from(last.seq).is_err() || !p.observations.windows(2).all(|w| w[0].seq < w[1].seq) {
        return Ok(false);
    }
    let taken: bool = tx
        .prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM observations WHERE gateway = ?1 AND seq BETWEEN ?2 AND ?3)",
        )?
        .query_row(
            rusqlite::params![p.gateway, first.seq as i64, last.seq as i64],
            |r| r.get(0),
        )?;
    Ok(!taken)
}

/// Binds observation `o` of `p` as the row starting at parameter `at + 1`; returns its
/// invalid-value flag.
fn bind_row(
    st: &mut rusqlite::CachedStatement<'_>,
    at: usize,
    p: &BatchPayload,
    o: &WireObservation,
) -> anyhow::Result<Option<&'static str>> {
    let (value, flag) = stored_value(o.value);
    st.raw_bind_parameter(at + 1, &p.gateway)?;
    st.raw_bind_parameter(at + 2, o.seq as i64)?;
    st.raw_bind_parameter(at + 3, p.batch as i64)?;
    st.raw_bind_parameter(at + 4, &o.device)?;
    st.raw_bind_parameter(at + 5, o.code)?;
    st.raw_bind_parameter(at + 6, value)?;
    st.raw_bind_parameter(at + 7, o.unit)?;
    st.raw_bind_parameter(at + 8, &o.ucum)?;
    st.raw_bind_parameter(at + 9, o.gateway_time)?;
    st.raw_bind_parameter(at + 10, &o.time_quality)?;
    st.raw_bind_parameter(at + 11, &o.device_time)?;
    st.raw_bind_parameter(at + 12, status_text(o, flag))?;
    let waveform = o.waveform.as_ref().map(serde_json::to_string).transpose()?;
    st.raw_bind_parameter(at + 13, waveform)?;
    st.raw_bind_parameter(at + 14, p.locations.get(&o.device))?;
    Ok(flag)
}

/// The fast path, when [`all_rows_new`]: [`ROWS_PER_INSERT`] rows per statement, each of them
/// counted as new (checked: a row not inserted is an error, the batch is not acknowledged).
fn insert_new_rows(
    tx: &rusqlite::Transaction<'_>,
    p: &BatchPayload,
    w: &mut Written,
) -> anyhow::Result<()> {
    let (one, many) = insert_statements();
    let mut chunks = p.observations.chunks_exact(ROWS_PER_INSERT);
    let mut st = tx.prepare_cached(many)?;
    for chunk in &mut chunks {
        let mut invalid = 0;
        for (i, o) in chunk.iter().enumerate() {
            invalid += u64::from(bind_row(&mut st, i * COLUMNS, p, o)?.is_some());
        }
        let n = st.raw_execute()?;
        anyhow::ensure!(n == chunk.len(), "{} of {} new rows stored", n, chunk.len());
        for o in chunk {
            w.count(&o.device);
        }
        w.invalid_values += invalid;
    }
    let mut st = tx.prepare_cached(one)?;
    for o in chunks.remainder() {
        let flag = bind_row(&mut st, 0, p, o)?;
        anyhow::ensure!(st.raw_execute()? == 1, "new row seq {} not stored", o.seq);
        w.count(&o.device);
        w.invalid_values += u64::from(flag.is_some());
    }
    Ok(())
}

/// The general path (a re-sent batch, rows already stored, a seq twice): row by row, counting
/// the ones that were new.
fn insert_rows_one_by_one(
    tx: &rusqlite::Transaction<'_>,
    p: &BatchPayload,
    w: &mut Written,
) -> anyhow::Result<()> {
    let mut st = tx.prepare_cached(&insert_statements().0)?;
    for o in &p.observations {
        let flag = bind_row(&mut st, 0, p, o)?;
        if st.raw_execute()? == 1 {
            w.count(&o.device);
            w.invalid_values += u64::from(flag.is_some());
        }
    }
    Ok(())
}

/// Reads a JSON-lines file, cut back to its last newline when it ends inside a line (a crash
/// or a full disk during a write; the batch of that line was never acknowledged, since the ack
/// follows the fsync). Returns the complete lines and the bytes dropped (0 when the file ends
/// with a newline, is empty or does not exist).
fn read_dropping_torn_tail(path: &std::path::Path) -> std::io::Result<(Vec<u8>, u64)> {
    let mut bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    if bytes.last().is_none_or(|b| *b == b'\n') {
        return Ok((bytes, 0));
    }
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(keep as u64)?;
    f.sync_data()?;
    let torn = (bytes.len() - keep) as u64;
    bytes.truncate(keep);
    Ok((bytes, torn))
}

impl Output {
    /// Opens `sqlite:PATH` or `jsonl:PATH`. A JSON-lines file that ends inside a line (a write
    /// cut short) is first cut back to its last complete line.
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
                let mut seen: HashMap<String, HashSet<u64>> = HashMap::new();
                let mut batches = HashSet::new();
                let (bytes, torn) = read_dropping_torn_tail(&path)?;
                if torn > 0 {
                    log::warn!(
                        "output {}: dropped a torn last line ({torn} bytes without a newline: a \
                         write cut short by a crash or a full disk); its batch was never \
                         acknowledged and is stored again when the gateway sends it again",
                        path.display()
                    );
                }
                let text = String::from_utf8_lossy(&bytes);
                for line in text.lines() {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                        let gw = v["gateway"].as_str().unwrap_or_default().to_owned();
                        if let Some(seq) = v["seq"].as_u64() {
                            seen.entry(gw.clone()).or_default().insert(seq);
                        }
                        if let Some(b) = v["batch"].as_u64() {
                            batches.insert((gw, b));
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
                    if all_rows_new(&tx, p)? {
                        insert_new_rows(&tx, p, &mut w)?;
                    } else {
                        insert_rows_one_by_one(&tx, p, &mut w)?;
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
                let known = seen.get(&p.gateway);
                let mut fresh_seq =
                    |seq: u64| !known.is_some_and(|k| k.contains(&seq)) && new_seqs.insert(seq);
                for o in &p.observations {
                    if fresh_seq(o.seq) {
                        let (value, flag) = stored_value(o.value);
                        serde_json::to_writer(&mut out, &ObservationLine::new(p, o, value, flag)?)?;
                        out.push(b'\n');
                        w.count(&o.device);
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
                // A write that fails half-way must not leave half a line for the next batch's
                // first line to be glued to: the file goes back to where it was.
                let before = file.metadata()?.len();
                if let Err(e) = file.write_all(&out).and_then(|()| file.sync_data()) {
                    let _ = file.set_len(before);
                    return Err(e.into());
                }
                // Only now is it durable: a failed write leaves the dedup sets as they were, so
                // the redelivered batch is written again.
                batches.insert((p.gateway.clone(), p.batch));
                seen.entry(p.gateway.clone()).or_default().extend(new_seqs);
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

    /// Every column of every observation row, in seq order, as text.
    fn rows(path: &std::path::Path) -> Vec<String> {
        let c = rusqlite::Connection::open(path).unwrap();
        let mut st = c
            .prepare("SELECT gateway, seq, batch, device, code, value, unit, ucum, gateway_time, time_quality, device_time, status, waveform, location FROM observations ORDER BY seq")
            .unwrap();
        st.query_map([], |r| {
            Ok((0..14)
                .map(|i| format!("{:?}", rusqlite::types::Value::from(r.get_ref(i).unwrap())))
                .collect::<Vec<_>>()
                .join("|"))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    #[test]
    fn many_rows_at_once_and_row_by_row_store_the_same_rows_and_counts() {
        use wardgate_adapters::observation::Waveform;
        // 150 rows: two full multi-row statements and a remainder of 22; a NaN, a status, a
        // device time, a waveform and a second device among them.
        let mut all: Vec<_> = (1..=150).map(|s| obs(s, 90.0 + s as f64 / 10.0)).collect();
        all[69].value = f64::NAN;
        all[3].status = vec!["low-perfusion".into()];
        all[130].status = vec!["implausible".into()];
        all[130].value = f64::INFINITY;
        all[10].device_time = Some("2026-12-06T08:00:00".into());
        all[99].waveform = Some(Waveform {
            period_us: 13_333,
            scale: 0.5,
            offset: 1.0,
            samples: vec![1, 2, 3],
        });
        for o in &mut all[120..] {
            o.device = "ble:a4:c1:38:0f:2e:91".into();
        }
        let mut full = batch(1, all.clone());
        full.locations
            .insert("ble:a4:c1:38:0f:2e:91".into(), "ward-7/bed-9".into());
        let d = tempfile::tempdir().unwrap();
        // A fresh output: every row new, many at once.
        let fast = d.path().join("fast.db");
        let mut out = Output::open(&format!("sqlite:{}", fast.display())).unwrap();
        let w = out.write(&full).unwrap();
        assert_eq!(w.per_device.get("serial:a"), Some(&120));
        assert_eq!(w.per_device.get("ble:a4:c1:38:0f:2e:91"), Some(&30));
        assert_eq!((w.invalid_values, w.duplicate), (2, false));
        // An output that already holds seq 150: row by row, seq 150 not counted again.
        let slow = d.path().join("slow.db");
        let mut out = Output::open(&format!("sqlite:{}", slow.display())).unwrap();
        let mut first = batch(9, vec![all[149].clone()]);
        first.locations = full.locations.clone();
        out.write(&first).unwrap();
        let w = out.write(&full).unwrap();
        assert_eq!(w.per_device.get("serial:a"), Some(&120));
        assert_eq!(w.per_device.get("ble:a4:c1:38:0f:2e:91"), Some(&29));
        assert_eq!(w.invalid_values, 2);
        let (a, mut b) = (rows(&fast), rows(&slow));
        assert_eq!(a.len(), 150);
        // The one row stored first came in batch 9.
        assert!(b[149].contains("|Integer(9)|"), "{}", b[149]);
        b[149] = b[149].replace("|Integer(9)|", "|Integer(1)|");
        assert_eq!(a, b);
        assert!(
            a[69].contains("Null") && a[69].contains("invalid-value=nan"),
            "{}",
            a[69]
        );
        assert!(
            a[130].contains("implausible,invalid-value=inf"),
            "{}",
            a[130]
        );
        assert!(a[99].contains(r#"{\"period_us\":13333"#), "{}", a[99]);
        assert!(a[0].ends_with("|Null"), "{}", a[0]);
        assert!(a[140].ends_with(r#"|Text("ward-7/bed-9")"#), "{}", a[140]);
    }

    #[test]
    fn a_batch_overlapping_stored_rows_or_naming_a_seq_twice_stores_each_row_once() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("up.db");
        let mut out = Output::open(&format!("sqlite:{}", path.display())).unwrap();
        let w = out
            .write(&batch(1, (1..=100).map(|s| obs(s, 1.0)).collect()))
            .unwrap();
        assert_eq!(w.per_device.get("serial:a"), Some(&100));
        // Seqs 91..=200 after 1..=100: 100 new.
        let w = out
            .write(&batch(2, (91..=200).map(|s| obs(s, 2.0)).collect()))
            .unwrap();
        assert_eq!(w.per_device.get("serial:a"), Some(&100));
        // 300 twice in one batch, out of order: stored once, counted once.
        let w = out
            .write(&batch(3, vec![obs(301, 3.0), obs(300, 3.0), obs(300, 4.0)]))
            .unwrap();
        assert_eq!(w.per_device.get("serial:a"), Some(&2));
        let c = rusqlite::Connection::open(&path).unwrap();
        let (n, v): (i64, f64) = c
            .query_row(
                "SELECT (SELECT count(*) FROM observations), value FROM observations WHERE seq = 300",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((n, v), (202, 3.0));
    }

    /// A JSON line as the receiver built it before `ObservationLine` (through a `Value`).
    fn line_as_before(p: &BatchPayload, o: &WireObservation) -> String {
        let (value, flag) = stored_value(o.value);
        let mut v = serde_json::to_value(o).unwrap();
        v["value"] = value.into();
        let mut status = o.status.clone();
        status.extend(flag.map(str::to_owned));
        if !status.is_empty() {
            v["status"] = status.into();
        }
        v["gateway"] = p.gateway.clone().into();
        v["batch"] = p.batch.into();
        v["type"] = "observation".into();
        if let Some(l) = p.locations.get(&o.device) {
            v["location"] = l.clone().into();
        }
        serde_json::to_string(&v).unwrap()
    }

    #[test]
    fn jsonl_lines_are_byte_for_byte_what_they_were() {
        use wardgate_adapters::observation::Waveform;
        let mut all: Vec<_> = (1..=6).map(|s| obs(s, 90.25 + s as f64)).collect();
        all[0].value = 97.0;
        all[1].value = f64::NAN;
        all[1].status = vec!["low-perfusion".into(), "implausible".into()];
        all[2].status = vec!["low-perfusion".into()];
        all[3].device_time = Some("2026-12-06T08:00:00".into());
        all[3].gateway_time = -5;
        all[4].value = f64::NEG_INFINITY;
        all[5].waveform = Some(Waveform {
            period_us: 13_333,
            scale: 0.005,
            offset: -5.12,
            samples: vec![-3, 0, 2048],
        });
        let mut b = batch(1 << 60, all);
        b.locations.insert("serial:a".into(), "ward-7/bed-3".into());
        b.observations[2].device = "serial:b".into();
        let d = tempfile::tempdir().unwrap();
        let spec = format!("jsonl:{}", d.path().join("up.jsonl").display());
        Output::open(&spec).unwrap().write(&b).unwrap();
        let text = std::fs::read_to_string(d.path().join("up.jsonl")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "six observations and an event");
        for (line, o) in lines.iter().zip(&b.observations) {
            assert_eq!(*line, line_as_before(&b, o));
        }
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

    #[test]
    fn a_torn_last_jsonl_line_is_dropped_at_open_and_the_batch_is_written_again_whole() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("up.jsonl");
        let spec = format!("jsonl:{}", path.display());
        let mut out = Output::open(&spec).unwrap();
        out.write(&batch(1, vec![obs(1, 97.0)])).unwrap();
        drop(out);
        let whole = std::fs::read(&path).unwrap();
        // Batch 2's line cut short by a crash (never acknowledged), with half a UTF-8 character.
        let mut torn = whole.clone();
        torn.extend_from_slice(b"{\"batch\":2,\"code\":150456,\"device\":\"\xc3");
        std::fs::write(&path, &torn).unwrap();
        let mut out = Output::open(&spec).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            whole,
            "cut back to the last newline"
        );
        // Batch 1 is still known (the dedup index survived the torn UTF-8); batch 2 comes again.
        let w = out.write(&batch(1, vec![obs(1, 97.0)])).unwrap();
        assert!(w.duplicate && w.per_device.is_empty());
        out.write(&batch(2, vec![obs(2, 96.0)])).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let seqs: Vec<u64> = lines.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 101, 2, 102], "every line parses, each row once");
        assert_eq!(
            read_dropping_torn_tail(&d.path().join("absent.jsonl")).unwrap(),
            (Vec::new(), 0)
        );
    }
}
