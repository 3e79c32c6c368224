//! Where each device was when its rows were committed (issue 11 item 7): the
//! `device_location(device, from_seq, location)` table (schema version 5), written in the same
//! transaction as the rows, read when a batch is made, pruned on ack.
//!
//! An entry says "from row `from_seq` of `device` on, its location is `location`" (`NULL`: none
//! configured). One is written whenever a device's configured location differs from its latest
//! entry — at its first row with a location, after a restart with a changed location, and when a
//! location is removed (`NULL`, so later rows do not inherit the old one). A device never given a
//! location has no entry. A row's location is the one of the entry with the greatest `from_seq`
//! not above the row's seq.
//!
//! A batch carries one location per device ([`crate::batch::Batch::locations`]): when a device's
//! location changes inside the rows a batch would take, the batch is cut just before the change
//! ([`cut_at_change`]). Entries only older rows could use are deleted on ack ([`prune`]); the
//! latest per device is always kept (it decides whether the next row needs a new entry).

use crate::batch::Item;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{BTreeMap, HashMap};

/// The table (version 5), created with the rest of the schema.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS device_location(
    device   TEXT    NOT NULL,
    from_seq INTEGER NOT NULL,
    location TEXT,
    PRIMARY KEY(device, from_seq)
);";

/// The configured locations and the latest entry of each device, kept in memory so an append
/// that changes nothing costs one map lookup per device of the append.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Device id → configured location; a device absent here has none.
    configured: HashMap<String, String>,
    /// Device id → its latest entry in `device_location` (`None`: "no location" recorded).
    latest: HashMap<String, Option<String>>,
}

impl Tracker {
    /// Loads the latest entry of every device from the store.
    pub fn load(conn: &Connection) -> rusqlite::Result<Tracker> {
        let mut st = conn.prepare(
            "SELECT device, location FROM device_location d WHERE from_seq = (SELECT max(from_seq) FROM device_location WHERE device = d.device)",
        )?;
        let latest = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<HashMap<String, Option<String>>>>()?;
        Ok(Tracker {
            configured: HashMap::new(),
            latest,
        })
    }

    /// Replaces the configured locations (device id → location).
    pub fn configure(&mut self, configured: HashMap<String, String>) {
        self.configured = configured;
    }

    /// Sets (or, with `None`, clears) one device's configured location.
    pub fn set(&mut self, device: &str, location: Option<&str>) {
        match location {
            Some(l) => self.configured.insert(device.to_owned(), l.to_owned()),
            None => self.configured.remove(device),
        };
    }

    /// Whether no device has, or ever had, a location: appends then skip all of this.
    pub fn idle(&self) -> bool {
        self.configured.is_empty() && self.latest.is_empty()
    }

    /// The entries an append must write: `(device, from_seq, location)` for each device whose
    /// configured location differs from its latest entry; `first_rows` is each device's first
    /// seq in the append, in any order, one per device.
    pub fn changes<'a>(
        &self,
        first_rows: impl IntoIterator<Item = (&'a str, i64)>,
    ) -> Vec<(String, i64, Option<String>)> {
        let mut out = Vec::new();
        for (device, seq) in first_rows {
            let now = self.configured.get(device);
            let was = self.latest.get(device);
            let differs = match (was, now) {
                (None, None) => false,
                (None, Some(_)) => true,
                (Some(w), n) => w.as_ref() != n,
            };
            if differs {
                out.push((device.to_owned(), seq, now.cloned()));
            }
        }
        out
    }

    /// Records entries written by a committed append.
    pub fn committed(&mut self, changes: Vec<(String, i64, Option<String>)>) {
        for (device, _, location) in changes {
            self.latest.insert(device, location);
        }
    }
}

/// Writes `changes` (from [`Tracker::changes`]) inside the append's transaction.
pub fn write(conn: &Connection, changes: &[(String, i64, Option<String>)]) -> rusqlite::Result<()> {
    let mut st = conn.prepare_cached(
        "INSERT OR REPLACE INTO device_location(device, from_seq, location) VALUES (?1, ?2, ?3)",
    )?;
    for (device, seq, location) in changes {
        st.execute(params![device, seq, location])?;
    }
    Ok(())
}

/// The location of `device`'s row `seq`: its entry with the greatest `from_seq ≤ seq`.
fn location_at(conn: &Connection, device: &str, seq: u64) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached(
        "SELECT location FROM device_location WHERE device = ?1 AND from_seq <= ?2 ORDER BY from_seq DESC LIMIT 1",
    )?
    .query_row(params![device, seq as i64], |r| r.get::<_, Option<String>>(0))
    .optional()
    .map(Option::flatten)
}

/// The device an item belongs to.
fn device_of(item: &Item) -> &str {
    match item {
        Item::Observation(o) => &o.observation.device.0,
        Item::Event(e) => &e.event.device.0,
    }
}

/// Shortens `items` (seq order) so no device's location changes inside them: cut just before the
/// first entry that starts after the first row of its device in `items`. The first row is never
/// cut, so a batch always makes progress.
pub fn cut_at_change(conn: &Connection, items: &mut Vec<Item>) -> rusqlite::Result<()> {
    let (Some(first), Some(last)) = (items.first().map(Item::seq), items.last().map(Item::seq))
    else {
        return Ok(());
    };
    let mut st = conn.prepare_cached(
        "SELECT device, from_seq FROM device_location WHERE from_seq > ?1 AND from_seq <= ?2 ORDER BY from_seq",
    )?;
    let changes = st
        .query_map(params![first as i64, last as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if changes.is_empty() {
        return Ok(());
    }
    let mut first_row: HashMap<&str, u64> = HashMap::new();
    for item in items.iter() {
        first_row.entry(device_of(item)).or_insert(item.seq());
    }
    let cut = changes
        .iter()
        .filter(|(device, from)| first_row.get(device.as_str()).is_some_and(|f| f < from))
        .map(|(_, from)| *from)
        .min();
    if let Some(cut) = cut {
        items.retain(|i| i.seq() < cut);
    }
    Ok(())
}

/// The location of each device with rows in `items` (one per device: see [`cut_at_change`]);
/// devices without one are absent.
pub fn for_items(conn: &Connection, items: &[Item]) -> rusqlite::Result<BTreeMap<String, String>> {
    let mut first_row: BTreeMap<&str, u64> = BTreeMap::new();
    for item in items {
        first_row.entry(device_of(item)).or_insert(item.seq());
    }
    let mut out = BTreeMap::new();
    for (device, seq) in first_row {
        if let Some(l) = location_at(conn, device, seq)? {
            out.insert(device.to_owned(), l);
        }
    }
    Ok(out)
}

/// Deletes the entries no row left in the queue can need: those with a newer entry of the same
/// device at or below the lowest queued seq. The latest entry of each device always stays.
pub fn prune(conn: &Connection) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM device_location WHERE EXISTS (
            SELECT 1 FROM device_location n WHERE n.device = device_location.device
              AND n.from_seq > device_location.from_seq
              AND n.from_seq <= coalesce((SELECT min(seq) FROM queue), 9223372036854775807))",
    )?
    .execute([])
}
