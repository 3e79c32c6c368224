//! Store tests on real SQLite files.

use super::*;
use wardgate_adapters::observation::TimeQuality;

fn obs(device: &str, code: u32, value: f64) -> AdapterEvent {
    AdapterEvent::Observation(Observation {
        device: DeviceId(device.into()),
        code,
        value,
        unit: Unit::PERCENT,
        device_time: None,
        gateway_time: now_ms(),
        time_quality: TimeQuality::Synced,
        status: vec![],
        waveform: None,
    })
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("store.db"), StoreOptions::default())
        .unwrap()
        .0
}

#[test]
fn seqs_strictly_increase_and_are_never_reused_after_ack() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let r1 = s
        .append(&[obs("d", mdc::SPO2, 97.0), obs("d", mdc::SPO2, 98.0)])
        .unwrap();
    let first = *r1.start();
    assert_eq!(r1, first..=first + 1);
    let b = s.next_batch(10).unwrap().unwrap();
    assert!(s.ack(b.number).unwrap());
    let r2 = s.append(&[obs("d", mdc::SPO2, 99.0)]).unwrap();
    assert_eq!(
        r2,
        first + 2..=first + 2,
        "AUTOINCREMENT: a deleted seq is not handed out again"
    );
}

#[test]
fn a_batch_keeps_its_number_and_rows_across_reopen_until_acked() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let s = open(&dir);
        s.append(&[
            obs("a", mdc::SPO2, 95.0),
            obs("b", mdc::PULSE_RATE_OXIM, 61.0),
        ])
        .unwrap();
        let b = s.next_batch(10).unwrap().unwrap();
        s.append(&[obs("a", mdc::SPO2, 96.0)]).unwrap();
        b
    };
    let s = open(&dir);
    assert_eq!(s.unacked_batches().unwrap(), vec![first.number]);
    assert_eq!(s.load_batch(first.number).unwrap().unwrap(), first);
    let next = s.next_batch(10).unwrap().unwrap();
    assert!(
        next.number > first.number,
        "batch numbers strictly increase"
    );
    assert_eq!(
        next.items.len(),
        1,
        "rows already in a batch are not handed out twice"
    );
    assert!(s.ack(first.number).unwrap());
    assert!(!s.ack(first.number).unwrap(), "a repeated ack is harmless");
    assert_eq!(s.stats().unwrap().queued, 1);
}

#[test]
fn observation_fields_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let o = Observation {
        device: DeviceId("serial:bed1".into()),
        code: mdc::NIBP_SYS,
        value: 121.5,
        unit: Unit::MMHG,
        device_time: Some("2011-03-15T14:22:05".into()),
        gateway_time: 1_700_000_000_123,
        time_quality: TimeQuality::Device,
        status: vec!["alarm".into(), "low-perfusion".into()],
        waveform: None,
    };
    let e = DeviceEvent {
        device: DeviceId("serial:bed1".into()),
        kind: EventKind::Disconnected,
        detail: "EIO".into(),
        gateway_time: 5,
        presence: None,
        firmware: None,
    };
    let first = *s
        .append(&[
            AdapterEvent::Observation(o.clone()),
            AdapterEvent::Event(e.clone()),
        ])
        .unwrap()
        .start();
    let b = s.next_batch(10).unwrap().unwrap();
    assert_eq!(
        b.items,
        vec![
            Item::Observation(StoredObservation {
                seq: first,
                observation: o
            }),
            Item::Event(StoredEvent {
                seq: first + 1,
                event: e
            })
        ]
    );
}

#[test]
fn a_corrupt_file_is_quarantined_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    std::fs::write(
        &path,
        b"this is not an SQLite database, just bytes on a bad SD card ......",
    )
    .unwrap();
    let (s, report) = Store::open(&path, StoreOptions::default()).unwrap();
    let (aside, reason) = report.quarantined.expect("quarantined");
    assert!(reason.contains("corrupt"), "{reason}");
    assert!(
        std::fs::read(&aside).unwrap().starts_with(b"this is not"),
        "the old bytes are kept"
    );
    // the fresh store works and reports the quarantine upstream as an event
    let b = s.next_batch(10).unwrap().unwrap();
    assert!(matches!(&b.items[0], Item::Event(e) if e.event.detail.contains("quarantined")));
}

#[test]
fn a_foreign_database_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE patients(name TEXT); INSERT INTO patients VALUES ('x');")
        .unwrap();
    let (_s, report) = Store::open(&path, StoreOptions::default()).unwrap();
    assert!(report
        .quarantined
        .unwrap()
        .1
        .contains("not a wardgate store"));
}

#[test]
fn size_retention_drops_waveform_first_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        max_bytes: 64 * 1024,
        ..Default::default()
    };
    let (s, _) = Store::open(&dir.path().join("store.db"), opts).unwrap();
    let mut rows = Vec::new();
    for i in 0..3000 {
        rows.push(obs("d", mdc::PLETH, i as f64));
    }
    for i in 0..200 {
        rows.push(obs("d", mdc::SPO2, 90.0 + (i % 10) as f64));
    }
    s.append(&rows).unwrap();
    let report = s
        .enforce_retention(now_ms())
        .unwrap()
        .expect("over the limit");
    assert!(report.waveform > 0);
    assert_eq!(
        report.numeric, 0,
        "numerics survive while waveform rows are left"
    );
    assert_eq!(s.stats().unwrap().dropped, report.total());
    // the drop is itself queued as an event for upstream
    let mut found = false;
    while let Some(b) = s.next_batch(10_000).unwrap() {
        found |= b.items.iter().any(|i| matches!(i, Item::Event(e) if e.event.kind == EventKind::Dropped && e.event.detail.contains("reason=max_bytes")));
        s.ack(b.number).unwrap();
    }
    assert!(found);
}

#[test]
fn age_retention_drops_old_rows() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        max_age_ms: 1000,
        ..Default::default()
    };
    let (s, _) = Store::open(&dir.path().join("store.db"), opts).unwrap();
    s.append(&[obs("d", mdc::SPO2, 97.0)]).unwrap();
    let r = s.enforce_retention(now_ms() + 10_000).unwrap().unwrap();
    assert_eq!((r.numeric, r.reason), (1, "max_age"));
}

#[test]
fn a_fresh_store_after_quarantine_numbers_above_the_old_one() {
    // Upstream dedups on (gateway, seq) and (gateway, batch): a replacement store that started
    // again at 1 would have its data taken for duplicates and lost.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let (old_seq, old_batch) = {
        let s = open(&dir);
        let r = s.append(&[obs("d", mdc::SPO2, 97.0)]).unwrap();
        (*r.end(), s.next_batch(10).unwrap().unwrap().number)
    };
    std::thread::sleep(std::time::Duration::from_millis(5));
    std::fs::write(
        &path,
        b"garbage after a power cut ............................................",
    )
    .unwrap();
    let _ = std::fs::remove_file(dir.path().join("store.db-wal"));
    let (s, report) = Store::open(&path, StoreOptions::default()).unwrap();
    assert!(report.quarantined.is_some());
    let r = s.append(&[obs("d", mdc::SPO2, 98.0)]).unwrap();
    assert!(*r.start() > old_seq, "{} must exceed {old_seq}", r.start());
    assert!(s.next_batch(10).unwrap().unwrap().number > old_batch);
}

#[test]
fn the_queued_counter_matches_the_table_through_append_ack_retention_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        max_bytes: 64 * 1024,
        ..Default::default()
    };
    let (s, _) = Store::open(&dir.path().join("store.db"), opts.clone()).unwrap();
    let rows: Vec<_> = (0..3000).map(|i| obs("d", mdc::PLETH, i as f64)).collect();
    s.append(&rows).unwrap();
    let b = s.next_batch(100).unwrap().unwrap();
    s.ack(b.number).unwrap();
    s.enforce_retention(now_ms())
        .unwrap()
        .expect("over the limit");
    assert_eq!(s.queued(), s.stats().unwrap().queued);
    drop(s);
    let (s, _) = Store::open(&dir.path().join("store.db"), opts).unwrap();
    assert_eq!(s.queued(), s.stats().unwrap().queued);
}

#[test]
fn a_clock_step_corrects_old_clock_rows_once_and_never_batched_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let at = |t: i64, q: TimeQuality| {
        AdapterEvent::Observation(Observation {
            gateway_time: t,
            time_quality: q,
            ..match obs("d", mdc::SPO2, 97.0) {
                AdapterEvent::Observation(o) => o,
                _ => unreachable!(),
            }
        })
    };
    let step = 2 * 86_400_000i64;
    let old_now = 1_000_000_000_000i64;
    let new_now = old_now + step;
    let after = s.max_seq().unwrap();
    // One row already in a batch, two more by the old clock, then the poll that still saw the
    // clock unsynchronised (upto), then one row stamped by the new clock before detection.
    s.append(&[at(old_now - 9_000, TimeQuality::Unsynced)])
        .unwrap();
    let batched = s.next_batch(10).unwrap().unwrap();
    s.append(&[
        at(old_now - 5_000, TimeQuality::Unsynced),
        at(old_now - 4_000, TimeQuality::Unsynced),
    ])
    .unwrap();
    let upto = s.max_seq().unwrap();
    s.append(&[at(new_now - 500, TimeQuality::Unsynced)])
        .unwrap();
    assert_eq!(s.correct_unsynced(after, upto, step, new_now).unwrap(), 2);
    let rows = s.load_batch(batched.number).unwrap().unwrap();
    assert_eq!(rows.items.len(), 1);
    let c = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
    let times: Vec<(i64, i64)> = c
        .prepare("SELECT gateway_time, time_quality FROM queue ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        times,
        [
            (old_now - 9_000, 1), // in a numbered batch: untouched
            (new_now - 5_000, 0), // old clock: corrected, synced
            (new_now - 4_000, 0),
            (new_now - 500, 1), // already on the new clock: not shifted again
        ]
    );
}

fn pleth(device: &str, samples: Vec<i32>) -> Observation {
    let waveform = Waveform {
        period_us: 16_667,
        scale: 1.0,
        offset: 0.0,
        samples,
    };
    Observation {
        device: DeviceId(device.into()),
        code: mdc::PLETH,
        value: waveform.physical(waveform.samples[0]),
        unit: Unit::DIMLESS,
        device_time: None,
        gateway_time: 1_700_000_000_000,
        time_quality: TimeQuality::Synced,
        status: vec![],
        waveform: Some(waveform),
    }
}

#[test]
fn a_waveform_is_one_row_that_comes_back_sample_for_sample() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let samples: Vec<i32> = (0..60).map(|i| (i * 37) % 101 - 50).collect();
    let mut o = pleth("serial:bed1", samples);
    o.waveform.as_mut().unwrap().scale = 0.005;
    o.waveform.as_mut().unwrap().offset = -1.25;
    let first = *s
        .append(&[
            AdapterEvent::Observation(o.clone()),
            obs("serial:bed1", mdc::SPO2, 97.0),
        ])
        .unwrap()
        .start();
    assert_eq!(s.queued(), 2, "60 samples are one row");
    let b = s.next_batch(10).unwrap().unwrap();
    assert_eq!(
        b.items[0],
        Item::Observation(StoredObservation {
            seq: first,
            observation: o
        })
    );
    match &b.items[1] {
        Item::Observation(n) => assert_eq!(n.observation.waveform, None),
        other => panic!("expected the numeric, got {other:?}"),
    }
    assert_eq!(
        class_of(&AdapterEvent::Observation(pleth("d", vec![1]))),
        Class::Waveform
    );
}

#[test]
fn a_damaged_stored_waveform_is_an_error_not_samples() {
    assert!(decode_waveform(b"\xff\x00").is_err());
    let empty = Waveform {
        period_us: 1000,
        scale: 1.0,
        offset: 0.0,
        samples: vec![],
    };
    assert!(decode_waveform(&encode_waveform(&empty))
        .unwrap_err()
        .contains("without samples"));
    let w = pleth("d", vec![1, -2, i32::MAX, i32::MIN])
        .waveform
        .unwrap();
    assert_eq!(decode_waveform(&encode_waveform(&w)).unwrap(), w);
}

#[test]
fn a_version_3_store_with_buffered_rows_gains_waveforms_and_keeps_its_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        c.execute_batch(schema::SCHEMA_V3).unwrap();
        // One batch sent and not acknowledged (upstream away), one row not yet batched.
        c.execute_batch(
            "INSERT INTO queue(seq, class, device, code, value, unit, gateway_time, time_quality)
               VALUES (100, 1, 'serial:a', 150456, 97.0, 262688, 1, 0),
                      (101, 1, 'serial:a', 149530, 61.0, 264864, 2, 0);
             INSERT INTO queue(seq, class, device, kind, gateway_time, detail)
               VALUES (102, 2, 'serial:a', 'disconnected', 3, 'EIO');
             INSERT INTO batches(number, first_seq, last_seq, created_ms) VALUES (7, 100, 101, 5);
             INSERT INTO meta(key, value) VALUES ('assigned_upto', 101), ('next_batch', 8);",
        )
        .unwrap();
    }
    let (s, report) = Store::open(&path, StoreOptions::default()).unwrap();
    assert!(report.quarantined.is_none(), "a v3 store is ours");
    let v: i64 = s
        .lock()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, schema::SCHEMA_VERSION);
    assert_eq!(s.unacked_batches().unwrap(), vec![7]);
    let old = s.load_batch(7).unwrap().unwrap();
    assert_eq!(
        old.items.len(),
        2,
        "the unacknowledged batch keeps its rows"
    );
    match &old.items[0] {
        Item::Observation(o) => {
            assert_eq!((o.seq, o.observation.value), (100, 97.0));
            assert_eq!(o.observation.waveform, None);
        }
        other => panic!("{other:?}"),
    }
    let w = pleth("serial:a", vec![10, 20, 30]);
    let range = s.append(&[AdapterEvent::Observation(w.clone())]).unwrap();
    assert!(*range.start() > 102, "seq keeps growing across the upgrade");
    let next = s.next_batch(10).unwrap().unwrap();
    assert_eq!(next.number, 8);
    assert_eq!(
        next.items.len(),
        2,
        "the event buffered before, then the waveform"
    );
    assert_eq!(
        next.items[1],
        Item::Observation(StoredObservation {
            seq: *range.start(),
            observation: w
        })
    );
    assert!(s.ack(7).unwrap());
    drop(s);
    let (s, _) = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(
        s.load_batch(8).unwrap().unwrap(),
        next,
        "and after a restart"
    );
}

#[test]
fn size_retention_drops_waveform_observations_before_numerics() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        max_bytes: 64 * 1024,
        ..Default::default()
    };
    let (s, _) = Store::open(&dir.path().join("store.db"), opts).unwrap();
    // 200 one-second pleth arrays (60 samples each) interleaved with their numerics.
    let mut rows = Vec::new();
    for i in 0..200 {
        let mut w = pleth("serial:bed1", (0..60).map(|k| (i * 60 + k) % 100).collect());
        w.gateway_time = now_ms();
        rows.push(AdapterEvent::Observation(w));
        rows.push(obs("serial:bed1", mdc::SPO2, 97.0));
    }
    s.append(&rows).unwrap();
    let report = s
        .enforce_retention(now_ms())
        .unwrap()
        .expect("200 arrays are over 64 KiB");
    assert!(report.waveform > 0);
    assert_eq!(
        report.numeric, 0,
        "numerics survive while waveforms are left"
    );
    let mut numerics = 0;
    while let Some(b) = s.next_batch(10_000).unwrap() {
        for i in &b.items {
            if let Item::Observation(o) = i {
                if o.observation.waveform.is_none() {
                    numerics += 1;
                }
            }
        }
        s.ack(b.number).unwrap();
    }
    assert_eq!(numerics, 200);
}

/// Issue 11, send at once: with a cut offered, the writer's commit assigns its rows to a batch in
/// the same transaction; `next_batch` hands that batch out as it was cut, once, and one offer
/// cuts one batch.
#[test]
fn an_offered_cut_is_made_in_the_appending_commit_and_handed_out_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    // Without an offer a commit cuts nothing.
    let r0 = s.append(&[obs("d", mdc::SPO2, 90.0)]).unwrap();
    assert!(s.unacked_batches().unwrap().is_empty());
    s.offer_cut(2, None);
    let r1 = s
        .append(&[obs("d", mdc::SPO2, 91.0), obs("d", mdc::SPO2, 92.0)])
        .unwrap();
    // Cut at the commit: the oldest unassigned rows, at most `batch_max` of them.
    let cut = s.unacked_batches().unwrap();
    assert_eq!(cut.len(), 1, "the commit cut one batch");
    let b = s.load_batch(cut[0]).unwrap().unwrap();
    let seqs: Vec<u64> = b.items.iter().map(Item::seq).collect();
    assert_eq!(seqs, vec![*r0.start(), *r1.start()]);
    // The offer is used up: the next commit cuts nothing.
    s.append(&[obs("d", mdc::SPO2, 93.0)]).unwrap();
    assert_eq!(s.unacked_batches().unwrap(), cut);
    // `next_batch` hands out the batch cut in the commit first, then cuts the rest itself.
    assert_eq!(s.next_batch(10).unwrap().unwrap(), b);
    let rest = s.next_batch(10).unwrap().unwrap();
    assert!(rest.number > b.number);
    let seqs: Vec<u64> = rest.items.iter().map(Item::seq).collect();
    assert_eq!(seqs.len(), 2, "{seqs:?}");
    assert_eq!(*seqs.last().unwrap(), *r1.end() + 1);
    assert!(s.next_batch(10).unwrap().is_none());
}

#[test]
fn a_withdrawn_offer_cuts_nothing_and_a_check_saying_no_keeps_the_offer() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.offer_cut(10, None);
    s.withdraw_cut();
    s.append(&[obs("d", mdc::SPO2, 90.0)]).unwrap();
    assert!(s.unacked_batches().unwrap().is_empty());
    // The check (the uplink's: the clock changed its synchronisation since the last poll) says
    // no: the commit leaves the cut to the uplink and the offer stays for a later commit.
    let settled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = settled.clone();
    s.offer_cut(
        10,
        Some(std::sync::Arc::new(move || {
            s2.load(std::sync::atomic::Ordering::Relaxed)
        })),
    );
    s.append(&[obs("d", mdc::SPO2, 91.0)]).unwrap();
    assert!(s.unacked_batches().unwrap().is_empty());
    settled.store(true, std::sync::atomic::Ordering::Relaxed);
    s.append(&[obs("d", mdc::SPO2, 92.0)]).unwrap();
    let b = s.next_batch(10).unwrap().unwrap();
    assert_eq!(b.items.len(), 3, "the kept offer cuts all three rows");
    s.append(&[obs("d", mdc::SPO2, 93.0)]).unwrap();
    assert_eq!(s.unacked_batches().unwrap(), vec![b.number], "used up");
}

/// A batch cut in a commit and not handed out before the session ended is re-sent by the next
/// session (`resume`) and not handed out a second time by `next_batch`; after a restart too.
#[test]
fn a_batch_cut_in_a_commit_is_re_sent_once_by_the_next_session() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.offer_cut(10, None);
    s.append(&[obs("d", mdc::SPO2, 90.0)]).unwrap();
    s.offer_cut(10, None); // a new offer: withdrawn by `resume`
    let cut = s.unacked_batches().unwrap();
    assert_eq!(s.resume().unwrap(), cut);
    s.append(&[obs("d", mdc::SPO2, 91.0)]).unwrap();
    let next = s.next_batch(10).unwrap().unwrap();
    assert!(!cut.contains(&next.number), "not handed out twice");
    assert_eq!(next.items.len(), 1);
    assert_eq!(s.unacked_batches().unwrap(), vec![cut[0], next.number]);
    // After a restart nothing is pending in memory; the file lists both.
    s.offer_cut(10, None);
    s.append(&[obs("d", mdc::SPO2, 92.0)]).unwrap();
    let all = s.unacked_batches().unwrap();
    assert_eq!(all.len(), 3);
    drop(s);
    let s = open(&dir);
    assert_eq!(s.resume().unwrap(), all);
    assert!(s.next_batch(10).unwrap().is_none());
}

/// The ack's delete is committed without its own fsync and the connection is `FULL` again
/// afterwards (every append keeps its fsync); the rows are gone at once for this process and for
/// another connection (a `kill -9` loses nothing that was written; only a power cut before the
/// next `FULL` commit can bring the batch back, to be re-sent).
#[test]
fn an_ack_deletes_at_once_and_leaves_the_connection_fully_synchronous() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    assert_eq!(s.synchronous_now(), 2);
    s.append(&[obs("d", mdc::SPO2, 90.0), obs("d", mdc::SPO2, 91.0)])
        .unwrap();
    let b = s.next_batch(10).unwrap().unwrap();
    s.append(&[obs("d", mdc::SPO2, 92.0)]).unwrap();
    assert!(s.ack(b.number).unwrap());
    assert_eq!(s.synchronous_now(), 2, "FULL again after the ack");
    assert!(!s.ack(b.number).unwrap());
    assert_eq!(s.synchronous_now(), 2, "FULL again after an unknown ack");
    assert_eq!(s.queued(), 1);
    let other = read_stats(s.path()).unwrap();
    assert_eq!((other.queued, other.unacked_batches), (1, 0));
    // A store opened `normal` stays `normal`.
    let dir2 = tempfile::tempdir().unwrap();
    let n = Store::open(
        &dir2.path().join("store.db"),
        StoreOptions {
            synchronous: Synchronous::Normal,
            ..StoreOptions::default()
        },
    )
    .unwrap()
    .0;
    n.append(&[obs("d", mdc::SPO2, 90.0)]).unwrap();
    let b = n.next_batch(10).unwrap().unwrap();
    assert!(n.ack(b.number).unwrap());
    assert_eq!(n.synchronous_now(), 1);
}

fn located(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(d, l)| (d.to_string(), l.to_string()))
        .collect()
}

fn entries(s: &Store) -> Vec<(String, i64, Option<String>)> {
    s.lock()
        .prepare("SELECT device, from_seq, location FROM device_location ORDER BY device, from_seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_batch_names_the_location_each_device_had_when_its_rows_were_committed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.set_locations(located(&[("serial:a", "ward-7/bed-12")]));
    let r = s
        .append(&[
            obs("serial:a", mdc::SPO2, 97.0),
            obs("serial:b", mdc::SPO2, 95.0),
            obs("serial:a", mdc::SPO2, 98.0),
        ])
        .unwrap();
    assert_eq!(
        entries(&s),
        [(
            "serial:a".into(),
            *r.start() as i64,
            Some("ward-7/bed-12".into())
        )],
        "one entry, at the device's first row; a device without a location has none"
    );
    s.append(&[obs("serial:a", mdc::SPO2, 99.0)]).unwrap();
    assert_eq!(entries(&s).len(), 1, "an unchanged location writes nothing");
    let b = s.next_batch(10).unwrap().unwrap();
    assert_eq!(b.items.len(), 4);
    assert_eq!(
        b.locations,
        [("serial:a".to_owned(), "ward-7/bed-12".to_owned())].into()
    );
    assert_eq!(
        s.load_batch(b.number).unwrap().unwrap(),
        b,
        "a re-send says the same"
    );
}

#[test]
fn a_location_change_cuts_the_batch_and_survives_reopen_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let (a1, a2) = {
        let s = open(&dir);
        s.set_locations(located(&[
            ("serial:a", "ward-7/bed-12"),
            ("serial:b", "ward-7/bed-3"),
        ]));
        let a1 = s
            .append(&[
                obs("serial:a", mdc::SPO2, 97.0),
                obs("serial:b", mdc::SPO2, 90.0),
            ])
            .unwrap();
        // The gateway restarts with serial:a moved and serial:b's location removed.
        drop(s);
        let s = open(&dir);
        s.set_locations(located(&[("serial:a", "ward-8/bed-1")]));
        let a2 = s
            .append(&[
                obs("serial:b", mdc::SPO2, 91.0),
                obs("serial:a", mdc::SPO2, 98.0),
            ])
            .unwrap();
        (a1, a2)
    };
    let s = open(&dir);
    s.set_locations(located(&[("serial:a", "ward-8/bed-1")]));
    // Reopened with the same configuration: nothing new recorded.
    s.append(&[obs("serial:a", mdc::SPO2, 99.0)]).unwrap();
    let (b1, b2) = (*a2.start(), *a2.end());
    assert_eq!(
        entries(&s),
        [
            (
                "serial:a".into(),
                *a1.start() as i64,
                Some("ward-7/bed-12".into())
            ),
            ("serial:a".into(), b2 as i64, Some("ward-8/bed-1".into())),
            (
                "serial:b".into(),
                *a1.end() as i64,
                Some("ward-7/bed-3".into())
            ),
            ("serial:b".into(), b1 as i64, None),
        ]
    );
    // serial:b changes first (at b1): the first batch stops before it.
    let first = s.next_batch(100).unwrap().unwrap();
    assert_eq!(
        first.items.iter().map(Item::seq).collect::<Vec<_>>(),
        [*a1.start(), *a1.end()]
    );
    assert_eq!(
        first.locations,
        [
            ("serial:a".to_owned(), "ward-7/bed-12".to_owned()),
            ("serial:b".to_owned(), "ward-7/bed-3".to_owned())
        ]
        .into()
    );
    // b1 is serial:b's first row of the next batch and serial:a's change comes with its first row
    // there: no further cut, serial:b has no location any more.
    let second = s.next_batch(100).unwrap().unwrap();
    assert_eq!(second.items.len(), 3);
    assert_eq!(
        second.locations,
        [("serial:a".to_owned(), "ward-8/bed-1".to_owned())].into()
    );
    assert!(s.ack(first.number).unwrap());
    assert_eq!(
        entries(&s),
        [
            (
                "serial:a".into(),
                *a1.start() as i64,
                Some("ward-7/bed-12".into())
            ),
            ("serial:a".into(), b2 as i64, Some("ward-8/bed-1".into())),
            ("serial:b".into(), b1 as i64, None),
        ],
        "serial:b's old entry is gone; pruning goes by the lowest queued seq (b1), which \
         serial:a's old entry still covers"
    );
    assert_eq!(s.load_batch(second.number).unwrap().unwrap(), second);
    assert!(s.ack(second.number).unwrap());
    assert_eq!(entries(&s).len(), 2, "the latest entry per device is kept");
}

#[test]
fn a_change_inside_a_device_s_rows_cuts_the_batch_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.set_location("serial:a", Some("bed-1"));
    let r1 = s
        .append(&[
            obs("serial:a", mdc::SPO2, 97.0),
            obs("serial:a", mdc::SPO2, 97.0),
        ])
        .unwrap();
    s.set_location("serial:a", Some("bed-2"));
    let r2 = s.append(&[obs("serial:a", mdc::SPO2, 96.0)]).unwrap();
    let first = s.next_batch(100).unwrap().unwrap();
    assert_eq!(first.items.last().unwrap().seq(), *r1.end());
    assert_eq!(first.locations["serial:a"], "bed-1");
    let second = s.next_batch(100).unwrap().unwrap();
    assert_eq!(second.items[0].seq(), *r2.start());
    assert_eq!(second.locations["serial:a"], "bed-2");
    assert!(s.next_batch(100).unwrap().is_none());
}

#[test]
fn a_version_4_store_is_upgraded_with_its_queue_and_unacked_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v4.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        c.execute_batch(schema::SCHEMA_V4).unwrap();
        c.execute_batch(
            "INSERT INTO queue(seq, class, device, code, value, unit, gateway_time, time_quality)
               VALUES (100, 1, 'serial:a', 150456, 97.0, 262688, 1, 0),
                      (101, 1, 'serial:a', 150456, 96.0, 262688, 2, 0),
                      (102, 1, 'serial:a', 150456, 95.0, 262688, 3, 0);
             INSERT INTO batches(number, first_seq, last_seq, created_ms) VALUES (7, 100, 101, 5);
             INSERT INTO meta(key, value) VALUES ('assigned_upto', 101), ('next_batch', 8);",
        )
        .unwrap();
    }
    let (s, report) = Store::open(&path, StoreOptions::default()).unwrap();
    assert!(report.quarantined.is_none(), "a v4 store is ours");
    let v: i64 = s
        .lock()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 5);
    s.set_locations(located(&[("serial:a", "ward-7/bed-12")]));
    let old = s.load_batch(7).unwrap().unwrap();
    assert_eq!(
        old.items.len(),
        2,
        "the unacknowledged batch keeps its rows"
    );
    assert!(
        old.locations.is_empty(),
        "rows read before the upgrade have no location"
    );
    let r = s.append(&[obs("serial:a", mdc::SPO2, 94.0)]).unwrap();
    let next = s.next_batch(10).unwrap().unwrap();
    assert_eq!(
        next.items.iter().map(Item::seq).collect::<Vec<_>>(),
        [102],
        "the row buffered before the upgrade travels alone: it has no location"
    );
    assert!(next.locations.is_empty());
    let last = s.next_batch(10).unwrap().unwrap();
    assert_eq!(last.items[0].seq(), *r.start());
    assert_eq!(last.locations["serial:a"], "ward-7/bed-12");
}

/// A batch cut in the writer's commit follows the same rules as one cut by `next_batch`: it ends
/// where a device's location changes (the rows after it wait for the next cut) and carries the
/// locations its rows were committed with.
#[test]
fn a_cut_in_the_commit_ends_at_a_location_change_and_carries_the_locations() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    s.set_locations(located(&[("serial:a", "ward-7/bed-12")]));
    let before = s.append(&[obs("serial:a", mdc::SPO2, 97.0)]).unwrap();
    s.set_locations(located(&[("serial:a", "ward-8/bed-1")]));
    s.offer_cut(10, None);
    let after = s.append(&[obs("serial:a", mdc::SPO2, 98.0)]).unwrap();
    let cut = s.unacked_batches().unwrap();
    assert_eq!(cut.len(), 1);
    let b = s.next_batch(10).unwrap().unwrap();
    assert_eq!(b.number, cut[0], "the batch cut in the commit comes first");
    assert_eq!(
        b.items.iter().map(Item::seq).collect::<Vec<_>>(),
        [*before.start()]
    );
    assert_eq!(b.locations["serial:a"], "ward-7/bed-12");
    assert_eq!(s.load_batch(b.number).unwrap().unwrap(), b);
    let rest = s.next_batch(10).unwrap().unwrap();
    assert_eq!(
        rest.items.iter().map(Item::seq).collect::<Vec<_>>(),
        [*after.start()]
    );
    assert_eq!(rest.locations["serial:a"], "ward-8/bed-1");
}
