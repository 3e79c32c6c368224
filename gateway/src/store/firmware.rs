//! The firmware relay's durable state (schema versions 2 and 3): accepted jobs, the last
//! accepted `seq` per target class (anti-rollback), one execution per job and device (with the
//! back-off deadline of its last failed attempt), and the firmware each device last reported
//! over SMP.
//!
//! Plain values only (ids, numbers, text states): the meaning of a job lives in the firmware
//! relay, which decides; the store remembers, in short transactions like the rest
//! of [`Store`]. The `seq` check and the recording of a job happen in **one** `BEGIN IMMEDIATE`
//! transaction, so two copies of a job arriving together cannot both be accepted.

use super::{Store, StoreError};
use rusqlite::{params, OptionalExtension, TransactionBehavior};

/// An accepted job (or the job a cancel names, once cancelled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRow {
    /// Job id.
    pub id: String,
    /// Target class.
    pub class: String,
    /// Its `seq`.
    pub seq: u64,
    /// `issued`, Unix seconds.
    pub issued: u64,
    /// `expires`, Unix seconds.
    pub expires: u64,
    /// When this gateway accepted it, Unix ms.
    pub accepted_ms: i64,
    /// When a cancel for it was accepted, Unix ms.
    pub cancelled_ms: Option<i64>,
    /// The signed job (COSE_Sign1) as received.
    pub message: Vec<u8>,
}

/// One job on one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionRow {
    /// Job id.
    pub job: String,
    /// Device id (`serial:…`, `ble:…`).
    pub device: String,
    /// State, as the relay names it (`queued` when accepted; `cancelled` by a cancel).
    pub state: String,
    /// Attempts started so far.
    pub attempt: u32,
    /// The last upload offset the device reported, bytes (the device's offset is the only
    /// truth about an upload; this is what the relay last heard).
    pub offset: u64,
    /// Why it waits or failed (a stable reason string), if it does.
    pub reason: Option<String>,
    /// Last change, Unix ms.
    pub updated_ms: i64,
    /// No new attempt before this, Unix ms: the back-off after a failed attempt (schema 3), kept
    /// across restarts. `None`: no back-off running.
    pub retry_after_ms: Option<i64>,
}

/// The firmware a device reported (schema 3): over SMP, its running image (slot 0 active).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceFirmwareRow {
    /// Device id.
    pub device: String,
    /// Version text as the device reports it (`1.2.3`, `1.2.3.4`).
    pub version: String,
    /// MCUboot image hash of the running image, when reported.
    pub hash: Option<Vec<u8>>,
    /// Whether the running image is confirmed.
    pub confirmed: bool,
    /// Where it came from: `smp` (the image list).
    pub source: String,
    /// When it was reported, Unix ms.
    pub updated_ms: i64,
}

/// Why a job or cancel could not be recorded (the store worked; the message is refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeqConflict {
    /// `seq` is not greater than `last`, the last accepted for the class.
    Replayed {
        /// The last accepted seq.
        last: u64,
    },
    /// This very job (same id, class and seq) is already recorded: the retained job seen again.
    DuplicateJob,
    /// A job with this id but another class or seq is already recorded: job ids are never
    /// reused, so this is a mistake upstream (or a forgery), reported, not ignored.
    IdReused,
    /// The cancel's class is not its job's.
    ClassMismatch {
        /// The job's class.
        job_class: String,
    },
}

/// Execution states that are final: a cancel leaves them alone.
pub const FINAL_STATES: &[&str] = &["done", "failed", "cancelled"];

impl Store {
    /// The last accepted `seq` of `class`, if any.
    pub fn firmware_last_seq(&self, class: &str) -> Result<Option<u64>, StoreError> {
        self.lock()
            .query_row(
                "SELECT seq FROM firmware_seq WHERE class = ?1",
                [class],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|o| o.map(|s| s as u64))
            .map_err(|e| self.err(e))
    }

    /// Records `job` and a `queued` execution per device if its `seq` is greater than the last
    /// accepted for its class and its id is new; the class's seq becomes the job's. A newer job
    /// **supersedes** the older jobs of its class on its devices: their unfinished executions
    /// become `cancelled` (reason `superseded`), so an older image waiting for its window can
    /// never run after a newer one (a security fix silently undone). One transaction.
    /// `Ok(Err(_))`: refused, nothing written; the same job again (same id and seq, e.g. the
    /// retained job at every reconnect) is [`SeqConflict::DuplicateJob`], not a replay.
    pub fn firmware_accept_job(
        &self,
        job: &JobRow,
        devices: &[String],
    ) -> Result<Result<(), SeqConflict>, StoreError> {
        let mut conn = self.lock();
        let mut run = || -> rusqlite::Result<Result<(), SeqConflict>> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let same: bool = tx
                .query_row(
                    "SELECT 1 FROM firmware_jobs WHERE id = ?1 AND class = ?2 AND seq = ?3",
                    params![job.id, job.class, job.seq as i64],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if same {
                return Ok(Err(SeqConflict::DuplicateJob));
            }
            if let Some(c) = seq_conflict(&tx, &job.class, job.seq)? {
                return Ok(Err(c));
            }
            let exists: bool = tx
                .query_row(
                    "SELECT 1 FROM firmware_jobs WHERE id = ?1",
                    [&job.id],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if exists {
                return Ok(Err(SeqConflict::IdReused));
            }
            tx.execute(
                "INSERT INTO firmware_jobs(id, class, seq, issued, expires, accepted_ms, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    job.id,
                    job.class,
                    job.seq as i64,
                    job.issued as i64,
                    job.expires as i64,
                    job.accepted_ms,
                    job.message
                ],
            )?;
            for d in devices {
                tx.execute(
                    "UPDATE firmware_executions SET state = 'cancelled', reason = 'superseded',
                            updated_ms = ?3
                     WHERE device = ?1 AND state NOT IN ('done', 'failed', 'cancelled')
                       AND job IN (SELECT id FROM firmware_jobs WHERE class = ?2)",
                    params![d, job.class, job.accepted_ms],
                )?;
                tx.execute(
                    "INSERT INTO firmware_executions(job, device, state, updated_ms)
                     VALUES (?1, ?2, 'queued', ?3)",
                    params![job.id, d, job.accepted_ms],
                )?;
            }
            set_seq(&tx, &job.class, job.seq, job.accepted_ms)?;
            tx.commit()?;
            Ok(Ok(()))
        };
        run().map_err(|e| self.err(e))
    }

    /// Records a cancel of `job` (class `class`, `seq`): the class's seq advances, the job (if
    /// known) is marked cancelled and its unfinished executions become `cancelled`. Returns how
    /// many executions it cancelled. One transaction. `Ok(Err(_))`: refused, nothing written.
    pub fn firmware_accept_cancel(
        &self,
        class: &str,
        seq: u64,
        job: &str,
        now_ms: i64,
    ) -> Result<Result<u64, SeqConflict>, StoreError> {
        let mut conn = self.lock();
        let mut run = || -> rusqlite::Result<Result<u64, SeqConflict>> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(c) = seq_conflict(&tx, class, seq)? {
                return Ok(Err(c));
            }
            let job_class: Option<String> = tx
                .query_row(
                    "SELECT class FROM firmware_jobs WHERE id = ?1",
                    [job],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(jc) = job_class.filter(|jc| jc != class) {
                return Ok(Err(SeqConflict::ClassMismatch { job_class: jc }));
            }
            tx.execute(
                "UPDATE firmware_jobs SET cancelled_ms = ?2 WHERE id = ?1 AND cancelled_ms IS NULL",
                params![job, now_ms],
            )?;
            let n = tx.execute(
                "UPDATE firmware_executions SET state = 'cancelled', updated_ms = ?2
                 WHERE job = ?1 AND state NOT IN ('done', 'failed', 'cancelled')",
                params![job, now_ms],
            )?;
            set_seq(&tx, class, seq, now_ms)?;
            tx.commit()?;
            Ok(Ok(n as u64))
        };
        run().map_err(|e| self.err(e))
    }

    /// Every recorded job, oldest accepted first.
    pub fn firmware_jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let conn = self.lock();
        let run = || -> rusqlite::Result<Vec<JobRow>> {
            let mut st = conn.prepare(
                "SELECT id, class, seq, issued, expires, accepted_ms, cancelled_ms, message
                 FROM firmware_jobs ORDER BY accepted_ms, rowid",
            )?;
            let rows = st.query_map([], |r| {
                Ok(JobRow {
                    id: r.get(0)?,
                    class: r.get(1)?,
                    seq: r.get::<_, i64>(2)? as u64,
                    issued: r.get::<_, i64>(3)? as u64,
                    expires: r.get::<_, i64>(4)? as u64,
                    accepted_ms: r.get(5)?,
                    cancelled_ms: r.get(6)?,
                    message: r.get(7)?,
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    /// The executions of `job` (all jobs when `None`), by job then device.
    pub fn firmware_executions(&self, job: Option<&str>) -> Result<Vec<ExecutionRow>, StoreError> {
        let conn = self.lock();
        let run = || -> rusqlite::Result<Vec<ExecutionRow>> {
            let mut st = conn.prepare(
                "SELECT job, device, state, attempt, offset, reason, updated_ms, retry_after_ms
                 FROM firmware_executions WHERE ?1 IS NULL OR job = ?1 ORDER BY job, device",
            )?;
            let rows = st.query_map([job], |r| {
                Ok(ExecutionRow {
                    job: r.get(0)?,
                    device: r.get(1)?,
                    state: r.get(2)?,
                    attempt: r.get::<_, i64>(3)? as u32,
                    offset: r.get::<_, i64>(4)? as u64,
                    reason: r.get(5)?,
                    updated_ms: r.get(6)?,
                    retry_after_ms: r.get(7)?,
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    /// Sets an execution's state, attempt, offset, reason and back-off deadline (the relay's
    /// state machine drives it). Returns false when there is no such execution, or it is final
    /// ([`FINAL_STATES`]): a cancelled or finished execution is never revived.
    pub fn firmware_set_execution(&self, e: &ExecutionRow) -> Result<bool, StoreError> {
        self.lock()
            .execute(
                "UPDATE firmware_executions
                 SET state = ?3, attempt = ?4, offset = ?5, reason = ?6, updated_ms = ?7,
                     retry_after_ms = ?8
                 WHERE job = ?1 AND device = ?2 AND state NOT IN ('done', 'failed', 'cancelled')",
                params![
                    e.job,
                    e.device,
                    e.state,
                    e.attempt,
                    e.offset as i64,
                    e.reason,
                    e.updated_ms,
                    e.retry_after_ms
                ],
            )
            .map(|n| n == 1)
            .map_err(|err| self.err(err))
    }

    /// Records the firmware `row.device` reports (replacing what was known of it).
    pub fn firmware_set_device(&self, row: &DeviceFirmwareRow) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT INTO device_firmware(device, version, hash, confirmed, source, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(device) DO UPDATE SET version = excluded.version,
                   hash = excluded.hash, confirmed = excluded.confirmed,
                   source = excluded.source, updated_ms = excluded.updated_ms",
                params![
                    row.device,
                    row.version,
                    row.hash,
                    row.confirmed,
                    row.source,
                    row.updated_ms
                ],
            )
            .map(|_| ())
            .map_err(|err| self.err(err))
    }

    /// The firmware every device last reported, by device.
    pub fn firmware_devices(&self) -> Result<Vec<DeviceFirmwareRow>, StoreError> {
        let conn = self.lock();
        let run = || -> rusqlite::Result<Vec<DeviceFirmwareRow>> {
            let mut st = conn.prepare(
                "SELECT device, version, hash, confirmed, source, updated_ms
                 FROM device_firmware ORDER BY device",
            )?;
            let rows = st.query_map([], |r| {
                Ok(DeviceFirmwareRow {
                    device: r.get(0)?,
                    version: r.get(1)?,
                    hash: r.get(2)?,
                    confirmed: r.get(3)?,
                    source: r.get(4)?,
                    updated_ms: r.get(5)?,
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }
}

fn seq_conflict(
    tx: &rusqlite::Transaction<'_>,
    class: &str,
    seq: u64,
) -> rusqlite::Result<Option<SeqConflict>> {
    let last: Option<i64> = tx
        .query_row(
            "SELECT seq FROM firmware_seq WHERE class = ?1",
            [class],
            |r| r.get(0),
        )
        .optional()?;
    Ok(last
        .map(|l| l as u64)
        .filter(|l| seq <= *l)
        .map(|last| SeqConflict::Replayed { last }))
}

fn set_seq(
    tx: &rusqlite::Transaction<'_>,
    class: &str,
    seq: u64,
    now_ms: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO firmware_seq(class, seq, updated_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(class) DO UPDATE SET seq = excluded.seq, updated_ms = excluded.updated_ms",
        params![class, seq as i64, now_ms],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn job(id: &str, class: &str, seq: u64) -> JobRow {
        JobRow {
            id: id.into(),
            class: class.into(),
            seq,
            issued: 1,
            expires: 2,
            accepted_ms: 1000,
            cancelled_ms: None,
            message: vec![0xd2, seq as u8],
        }
    }

    #[test]
    fn seq_must_grow_per_class_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let (s, _) = Store::open(&path, StoreOptions::default()).unwrap();
            let devs = vec!["serial:a".to_owned(), "serial:b".to_owned()];
            assert_eq!(
                s.firmware_accept_job(&job("j5", "c", 5), &devs).unwrap(),
                Ok(())
            );
            assert_eq!(
                s.firmware_accept_job(&job("j4", "c", 4), &devs).unwrap(),
                Err(SeqConflict::Replayed { last: 5 })
            );
            assert_eq!(
                s.firmware_accept_job(&job("j5", "c", 6), &devs).unwrap(),
                Err(SeqConflict::IdReused)
            );
            // Another class has its own sequence.
            assert_eq!(
                s.firmware_accept_job(&job("k1", "d", 1), &devs[..1])
                    .unwrap(),
                Ok(())
            );
        }
        let (s, _) = Store::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(s.firmware_last_seq("c").unwrap(), Some(5));
        assert_eq!(
            s.firmware_accept_job(&job("j5b", "c", 5), &[]).unwrap(),
            Err(SeqConflict::Replayed { last: 5 }),
            "after a restart too"
        );
        let jobs = s.firmware_jobs().unwrap();
        assert_eq!(
            jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["j5", "k1"]
        );
        assert_eq!(jobs[0].message, vec![0xd2, 5]);
        let ex = s.firmware_executions(Some("j5")).unwrap();
        assert_eq!(ex.len(), 2);
        assert!(ex
            .iter()
            .all(|e| e.state == "queued" && e.attempt == 0 && e.offset == 0));
        assert_eq!(s.firmware_executions(None).unwrap().len(), 3);
    }

    /// A newer job of a class supersedes the older one's unfinished executions on its devices
    /// (an older image waiting for its window must never run after a newer one); finished ones
    /// and other devices are left alone; the retained job seen again is a duplicate, not a
    /// replay.
    #[test]
    fn a_newer_job_supersedes_the_older_unfinished_executions_of_its_class() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(&dir.path().join("store.db"), StoreOptions::default()).unwrap();
        let (a, b, c) = (
            "serial:a".to_owned(),
            "serial:b".to_owned(),
            "serial:c".to_owned(),
        );
        s.firmware_accept_job(&job("old", "c", 1), &[a.clone(), b.clone(), c.clone()])
            .unwrap()
            .unwrap();
        let mut done = s.firmware_executions(Some("old")).unwrap()[1].clone();
        assert_eq!(done.device, b);
        done.state = "done".into();
        assert!(s.firmware_set_execution(&done).unwrap());
        // The newer job targets a and b, not c.
        s.firmware_accept_job(&job("new", "c", 2), &[a.clone(), b.clone()])
            .unwrap()
            .unwrap();
        let old: Vec<(String, String, Option<String>)> = s
            .firmware_executions(Some("old"))
            .unwrap()
            .into_iter()
            .map(|e| (e.device, e.state, e.reason))
            .collect();
        assert_eq!(
            old,
            [
                (a.clone(), "cancelled".into(), Some("superseded".into())),
                (b.clone(), "done".into(), None),
                (c.clone(), "queued".into(), None),
            ]
        );
        assert!(s
            .firmware_executions(Some("new"))
            .unwrap()
            .iter()
            .all(|e| e.state == "queued"));
        assert_eq!(
            s.firmware_accept_job(&job("new", "c", 2), &[a]).unwrap(),
            Err(SeqConflict::DuplicateJob),
            "the retained job again"
        );
    }

    #[test]
    fn executions_move_until_final_and_a_cancel_stops_the_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(&dir.path().join("s.db"), StoreOptions::default()).unwrap();
        let devs = vec!["serial:a".to_owned(), "serial:b".to_owned()];
        s.firmware_accept_job(&job("j1", "c", 1), &devs)
            .unwrap()
            .unwrap();
        let mut e = s.firmware_executions(Some("j1")).unwrap()[0].clone();
        e.state = "uploading".into();
        e.attempt = 1;
        e.offset = 4096;
        assert!(s.firmware_set_execution(&e).unwrap());
        let mut done = s.firmware_executions(Some("j1")).unwrap()[1].clone();
        done.state = "done".into();
        assert!(s.firmware_set_execution(&done).unwrap());
        assert_eq!(
            s.firmware_accept_cancel("other", 2, "j1", 5).unwrap(),
            Err(SeqConflict::ClassMismatch {
                job_class: "c".into()
            })
        );
        assert_eq!(
            s.firmware_accept_cancel("c", 1, "j1", 5).unwrap(),
            Err(SeqConflict::Replayed { last: 1 })
        );
        assert_eq!(s.firmware_accept_cancel("c", 2, "j1", 5).unwrap(), Ok(1));
        let ex = s.firmware_executions(Some("j1")).unwrap();
        assert_eq!(
            ex.iter()
                .map(|e| (e.state.as_str(), e.offset))
                .collect::<Vec<_>>(),
            [("cancelled", 4096), ("done", 0)]
        );
        assert!(
            !s.firmware_set_execution(&e).unwrap(),
            "a cancelled execution stays cancelled"
        );
        assert_eq!(s.firmware_jobs().unwrap()[0].cancelled_ms, Some(5));
        // The old job cannot come back after its cancel.
        assert_eq!(s.firmware_last_seq("c").unwrap(), Some(2));
    }

    #[test]
    fn a_version_1_store_gains_the_firmware_tables_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
            c.execute_batch(super::super::schema::SCHEMA_V1).unwrap();
            c.execute_batch(
                "INSERT INTO queue(class, device, code, value, unit, gateway_time, time_quality)
                 VALUES (1, 'serial:a', 150456, 97.0, 544, 1, 0);
                 INSERT INTO meta(key, value) VALUES ('assigned_upto', 0), ('next_batch', 7);",
            )
            .unwrap();
        }
        let (s, report) = Store::open(&path, StoreOptions::default()).unwrap();
        assert!(
            report.quarantined.is_none(),
            "a v1 store is ours, not foreign"
        );
        assert_eq!(s.queued(), 1, "its rows are kept");
        let v: i64 = s
            .lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, super::super::schema::SCHEMA_VERSION);
        assert_eq!(
            s.firmware_accept_job(&job("j1", "c", 1), &[]).unwrap(),
            Ok(())
        );
        assert_eq!(
            s.next_batch(10).unwrap().unwrap().number,
            7,
            "meta untouched"
        );
    }

    #[test]
    fn a_version_2_store_gains_the_back_off_column_and_the_device_firmware_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
            c.execute_batch(super::super::schema::SCHEMA_V2).unwrap();
            c.execute_batch(
                "INSERT INTO meta(key, value) VALUES ('assigned_upto', 0), ('next_batch', 7);
                 INSERT INTO firmware_seq(class, seq, updated_ms) VALUES ('c', 4, 1);
                 INSERT INTO firmware_jobs(id, class, seq, issued, expires, accepted_ms, message)
                   VALUES ('j4', 'c', 4, 1, 2, 1000, x'd2');
                 INSERT INTO firmware_executions(job, device, state, attempt, offset, reason, updated_ms)
                   VALUES ('j4', 'serial:a', 'waiting', 2, 4096, 'link_lost', 1500);",
            )
            .unwrap();
        }
        let (s, report) = Store::open(&path, StoreOptions::default()).unwrap();
        assert!(report.quarantined.is_none());
        let v: i64 = s
            .lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, super::super::schema::SCHEMA_VERSION);
        let mut e = s.firmware_executions(Some("j4")).unwrap().remove(0);
        assert_eq!(
            (e.state.as_str(), e.attempt, e.offset, e.retry_after_ms),
            ("waiting", 2, 4096, None),
            "the row is kept, with no back-off known"
        );
        assert_eq!(s.firmware_last_seq("c").unwrap(), Some(4));
        e.retry_after_ms = Some(99_000);
        assert!(s.firmware_set_execution(&e).unwrap());
        drop(s);
        // Opened again (a restart): the deadline is still there, and the schema stays 3.
        let (s, _) = Store::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(
            s.firmware_executions(Some("j4")).unwrap()[0].retry_after_ms,
            Some(99_000)
        );
        let row = DeviceFirmwareRow {
            device: "serial:a".into(),
            version: "1.2.3".into(),
            hash: Some(vec![7; 32]),
            confirmed: true,
            source: "smp".into(),
            updated_ms: 5,
        };
        s.firmware_set_device(&row).unwrap();
        s.firmware_set_device(&DeviceFirmwareRow {
            version: "1.3.0".into(),
            updated_ms: 6,
            ..row.clone()
        })
        .unwrap();
        let devs = s.firmware_devices().unwrap();
        assert_eq!(devs.len(), 1);
        assert_eq!((devs[0].version.as_str(), devs[0].updated_ms), ("1.3.0", 6));
    }
}
