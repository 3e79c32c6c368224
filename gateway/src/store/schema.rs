//! SQL schema, PRAGMAs (WAL, `synchronous`), and the checks that decide whether an existing file
//! is ours and intact.

use super::location::SCHEMA as LOCATION_SCHEMA;
use super::Synchronous;
use rusqlite::Connection;
use std::path::Path;

/// `PRAGMA application_id` of a wardgate store: ASCII "WGRD".
pub const APPLICATION_ID: i64 = 0x5747_5244;
/// `PRAGMA user_version`: the schema version. 1: queue, batches, meta. 2 (issue 10): the
/// firmware tables (`firmware_seq`, `firmware_jobs`, `firmware_executions`), added to a version-1
/// store by the same `CREATE TABLE IF NOT EXISTS` (nothing else changes, no data moves).
/// 3 (issue 10): `firmware_executions.retry_after_ms` (a failed attempt's back-off deadline,
/// so a restart neither retries at once nor forgets it; `ALTER TABLE … ADD COLUMN` on a
/// version-2 store, NULL for its rows) and `device_firmware` (the version each device last
/// reported over SMP).
/// 4 (issue 11): `queue.samples`, a waveform observation's sample array (`ALTER TABLE … ADD
/// COLUMN` on a version-3 store, NULL for its rows: they are all numerics and events).
/// 5 (issue 11): `device_location` (where each device was from which row on,
/// [`super::location`]), created empty in an older store: its rows and batches keep no location,
/// as before.
pub const SCHEMA_VERSION: i64 = 5;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue(
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    class        INTEGER NOT NULL,
    device       TEXT    NOT NULL,
    kind         TEXT,
    code         INTEGER,
    value        REAL,
    unit         INTEGER,
    device_time  TEXT,
    gateway_time INTEGER NOT NULL,
    time_quality INTEGER,
    status       TEXT,
    detail       TEXT,
    samples      BLOB
);
-- No index on class: retention (rare) scans by seq; every append would pay for one.
DROP INDEX IF EXISTS queue_class_seq;
CREATE TABLE IF NOT EXISTS batches(
    number     INTEGER PRIMARY KEY,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- Version 2: firmware jobs (store/firmware.rs).
CREATE TABLE IF NOT EXISTS firmware_seq(
    class      TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS firmware_jobs(
    id           TEXT PRIMARY KEY,
    class        TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    issued       INTEGER NOT NULL,
    expires      INTEGER NOT NULL,
    accepted_ms  INTEGER NOT NULL,
    cancelled_ms INTEGER,
    message      BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS firmware_executions(
    job        TEXT    NOT NULL,
    device     TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    attempt    INTEGER NOT NULL DEFAULT 0,
    offset     INTEGER NOT NULL DEFAULT 0,
    reason     TEXT,
    updated_ms INTEGER NOT NULL,
    retry_after_ms INTEGER,
    PRIMARY KEY(job, device)
);
-- Version 3: the firmware each device reported (store/firmware.rs).
CREATE TABLE IF NOT EXISTS device_firmware(
    device     TEXT PRIMARY KEY,
    version    TEXT    NOT NULL,
    hash       BLOB,
    confirmed  INTEGER NOT NULL,
    source     TEXT    NOT NULL,
    updated_ms INTEGER NOT NULL
);
";

/// Columns added after their table was first created: `(table, column, type)`. `CREATE TABLE IF
/// NOT EXISTS` leaves an existing table alone, so each is added by `ALTER TABLE … ADD COLUMN`
/// when missing (atomic; an interrupted upgrade is finished at the next open).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("firmware_executions", "retry_after_ms", "INTEGER"),
    ("queue", "samples", "BLOB"),
];

/// The schema of version 4 (issue 11, before device locations), for the migration test.
#[cfg(test)]
pub const SCHEMA_V4: &str = "
CREATE TABLE queue(seq INTEGER PRIMARY KEY AUTOINCREMENT, class INTEGER NOT NULL, device TEXT NOT NULL, kind TEXT, code INTEGER, value REAL, unit INTEGER, device_time TEXT, gateway_time INTEGER NOT NULL, time_quality INTEGER, status TEXT, detail TEXT, samples BLOB);
CREATE TABLE batches(number INTEGER PRIMARY KEY, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE firmware_seq(class TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE firmware_jobs(id TEXT PRIMARY KEY, class TEXT NOT NULL, seq INTEGER NOT NULL, issued INTEGER NOT NULL, expires INTEGER NOT NULL, accepted_ms INTEGER NOT NULL, cancelled_ms INTEGER, message BLOB NOT NULL);
CREATE TABLE firmware_executions(job TEXT NOT NULL, device TEXT NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, offset INTEGER NOT NULL DEFAULT 0, reason TEXT, updated_ms INTEGER NOT NULL, retry_after_ms INTEGER, PRIMARY KEY(job, device));
CREATE TABLE device_firmware(device TEXT PRIMARY KEY, version TEXT NOT NULL, hash BLOB, confirmed INTEGER NOT NULL, source TEXT NOT NULL, updated_ms INTEGER NOT NULL);
PRAGMA application_id=1464291908;
PRAGMA user_version=4;
";

/// The schema of version 3 (issue 10, before waveforms), for the migration test.
#[cfg(test)]
pub const SCHEMA_V3: &str = "
CREATE TABLE queue(seq INTEGER PRIMARY KEY AUTOINCREMENT, class INTEGER NOT NULL, device TEXT NOT NULL, kind TEXT, code INTEGER, value REAL, unit INTEGER, device_time TEXT, gateway_time INTEGER NOT NULL, time_quality INTEGER, status TEXT, detail TEXT);
CREATE TABLE batches(number INTEGER PRIMARY KEY, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE firmware_seq(class TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE firmware_jobs(id TEXT PRIMARY KEY, class TEXT NOT NULL, seq INTEGER NOT NULL, issued INTEGER NOT NULL, expires INTEGER NOT NULL, accepted_ms INTEGER NOT NULL, cancelled_ms INTEGER, message BLOB NOT NULL);
CREATE TABLE firmware_executions(job TEXT NOT NULL, device TEXT NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, offset INTEGER NOT NULL DEFAULT 0, reason TEXT, updated_ms INTEGER NOT NULL, retry_after_ms INTEGER, PRIMARY KEY(job, device));
CREATE TABLE device_firmware(device TEXT PRIMARY KEY, version TEXT NOT NULL, hash BLOB, confirmed INTEGER NOT NULL, source TEXT NOT NULL, updated_ms INTEGER NOT NULL);
PRAGMA application_id=1464291908;
PRAGMA user_version=3;
";

/// The schema of version 2 (issue 10 before the back-off deadline and the device firmware
/// table), for the migration test.
#[cfg(test)]
pub const SCHEMA_V2: &str = "
CREATE TABLE queue(seq INTEGER PRIMARY KEY AUTOINCREMENT, class INTEGER NOT NULL, device TEXT NOT NULL, kind TEXT, code INTEGER, value REAL, unit INTEGER, device_time TEXT, gateway_time INTEGER NOT NULL, time_quality INTEGER, status TEXT, detail TEXT);
CREATE TABLE batches(number INTEGER PRIMARY KEY, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE firmware_seq(class TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE firmware_jobs(id TEXT PRIMARY KEY, class TEXT NOT NULL, seq INTEGER NOT NULL, issued INTEGER NOT NULL, expires INTEGER NOT NULL, accepted_ms INTEGER NOT NULL, cancelled_ms INTEGER, message BLOB NOT NULL);
CREATE TABLE firmware_executions(job TEXT NOT NULL, device TEXT NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, offset INTEGER NOT NULL DEFAULT 0, reason TEXT, updated_ms INTEGER NOT NULL, PRIMARY KEY(job, device));
PRAGMA application_id=1464291908;
PRAGMA user_version=2;
";

/// The schema of version 1 (before the firmware tables), for the migration test.
#[cfg(test)]
pub const SCHEMA_V1: &str = "
CREATE TABLE queue(seq INTEGER PRIMARY KEY AUTOINCREMENT, class INTEGER NOT NULL, device TEXT NOT NULL, kind TEXT, code INTEGER, value REAL, unit INTEGER, device_time TEXT, gateway_time INTEGER NOT NULL, time_quality INTEGER, status TEXT, detail TEXT);
CREATE TABLE batches(number INTEGER PRIMARY KEY, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
PRAGMA application_id=1464291908;
PRAGMA user_version=1;
";

/// Why an existing file cannot be used.
pub enum OpenProblem {
    /// An operational error (permissions, I/O): not a reason to quarantine.
    Sqlite(rusqlite::Error),
    /// The file is corrupt, not a database, or another program's database.
    Unusable(String),
}

/// Opens `path`, applies PRAGMAs, checks integrity and ownership, and creates the schema.
pub fn open_checked(path: &Path, sync: Synchronous) -> Result<Connection, OpenProblem> {
    let conn = Connection::open(path).map_err(OpenProblem::Sqlite)?;
    let classify = |e: rusqlite::Error| match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
            ) =>
        {
            OpenProblem::Unusable(format!("corrupt ({e})"))
        }
        _ => OpenProblem::Sqlite(e),
    };
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(OpenProblem::Sqlite)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(classify)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenProblem::Sqlite(rusqlite::Error::InvalidParameterName(
            format!("could not switch to WAL (journal_mode is {mode})"),
        )));
    }
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(classify)?;
    if check != "ok" {
        return Err(OpenProblem::Unusable(format!(
            "corrupt (quick_check: {check})"
        )));
    }
    let app: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(classify)?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(classify)?;
    if app != APPLICATION_ID && !(app == 0 && tables == 0) {
        return Err(OpenProblem::Unusable(format!(
            "not a wardgate store (application_id {app:#x}, {tables} schema objects)"
        )));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(classify)?;
    if version > SCHEMA_VERSION {
        return Err(OpenProblem::Sqlite(rusqlite::Error::InvalidParameterName(format!(
            "store schema version {version} is newer than this wardgate ({SCHEMA_VERSION}); refusing to touch it"
        ))));
    }
    let sync = match sync {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous={sync};
         PRAGMA journal_size_limit=67108864;
         PRAGMA wal_autocheckpoint=1000;
         PRAGMA foreign_keys=OFF;
         PRAGMA application_id={APPLICATION_ID};
         {SCHEMA}
         {LOCATION_SCHEMA}"
    ))
    .map_err(classify)?;
    for (table, column, kind) in ADDED_COLUMNS {
        let present = conn
            .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")
            .and_then(|mut st| st.exists([table, column]))
            .map_err(classify)?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind};"))
                .map_err(classify)?;
        }
    }
    conn.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION};"))
        .map_err(classify)?;
    seed_fresh(&conn).map_err(classify)?;
    Ok(conn)
}

/// Seeds `seq` and batch numbers of a *fresh* store from the wall clock: seq starts at
/// `now_ms × 1000`, batch numbers at `now_ms`.
///
/// Why: the receiver dedups on `(gateway, seq)` and `(gateway, batch)`. A store that starts again
/// at 1 (after a quarantine, an SD-card swap or a reinstall) would have its new data taken for
/// duplicates upstream, acknowledged and deleted: lost silently. Seeded from the clock, a new
/// store's numbers start above anything an older store of this gateway can have issued (an older
/// store would need more than 1,000 rows per millisecond of its life to overlap). A gateway whose
/// clock still reads 1970 (no RTC, no NTP yet) seeds low; such a store is then only safe if no
/// older store of the same gateway reached upstream — documented in ARCHITECTURE.md.
fn seed_fresh(conn: &Connection) -> rusqlite::Result<()> {
    let fresh: i64 = conn.query_row("SELECT count(*) FROM meta", [], |r| r.get(0))?;
    if fresh > 0 {
        return Ok(());
    }
    let now = wardgate_adapters::observation::now_ms().max(1);
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         INSERT INTO sqlite_sequence(name, seq) SELECT 'queue', {seq} WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name='queue');
         INSERT INTO meta(key, value) VALUES ('assigned_upto', {seq}), ('next_batch', {now});
         COMMIT;",
        seq = now.saturating_mul(1000),
    ))
}
