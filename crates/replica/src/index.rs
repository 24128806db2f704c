//! The index: one SQLite file holding the items, their searchable columns, the consumer offsets they reflect,
//! and the error reports still to be delivered.
//!
//! Crash safety rests on one rule: an index change and the offset that moves past its event are committed in
//! the same transaction ([`Index::apply_page`]), in WAL mode with `synchronous=FULL`, so a committed page
//! survives a crash and a half-applied one never happened. Error reports go into the same transaction too (an
//! outbox), and are delivered after the commit: delivered at least once, never lost.
//!
//! A snapshot ([`snapshot`]) is a consistent copy (`VACUUM INTO`) that carries the offsets it reflects; a new
//! replica made from it ([`bootstrap`]) resumes exactly there.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde_json::{Value, json};

use crate::apply::{ApplyError, apply};
use crate::facets::{Condition, ConditionValue};

/// Written into every index; an index of another format is refused rather than misread.
pub const FORMAT: &str = "esgf-events-replica/1";

/// How long a statement waits for another connection's write lock (a `snapshot` or a second follower) before
/// failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS replica_meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY NOT NULL,
    collection TEXT,
    institution TEXT,
    source TEXT,
    experiment TEXT,
    variable TEXT,
    version TEXT,
    retracted INTEGER NOT NULL,
    latest INTEGER,
    item TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_collection ON items (collection);
CREATE INDEX IF NOT EXISTS items_institution ON items (institution);
CREATE INDEX IF NOT EXISTS items_source ON items (source);
CREATE INDEX IF NOT EXISTS items_experiment ON items (experiment);
CREATE INDEX IF NOT EXISTS items_variable ON items (variable);
CREATE INDEX IF NOT EXISTS items_version ON items (version);
CREATE TABLE IF NOT EXISTS offsets (partition INTEGER PRIMARY KEY NOT NULL, next_offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending_reports (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    report TEXT NOT NULL
);
";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index storage failed")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not an esgf-events index: {reason}", path.display())]
    NotAnIndex { path: PathBuf, reason: String },
    #[error("the index {} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("the index follows topic '{indexed}', not '{requested}'")]
    TopicMismatch { indexed: String, requested: String },
    #[error(
        "partition {partition}: the index expects offset {expected} next but was given {found}; events in \
         between would be skipped"
    )]
    Gap { partition: u32, expected: u64, found: u64 },
    #[error("{} already exists; choose another name or remove it", path.display())]
    Exists { path: PathBuf },
    #[error(
        "{} is not a snapshot made by `esgf-events replicate snapshot` (it has no snapshot id)",
        path.display()
    )]
    NotASnapshot { path: PathBuf },
    #[error(
        "the index {} already exists and was not made from the snapshot {}; remove it (or use another \
         --index) to bootstrap a new replica",
        index.display(),
        snapshot.display()
    )]
    BootstrapConflict { index: PathBuf, snapshot: PathBuf },
    #[error("the path {} is not valid UTF-8, which SQLite needs here", path.display())]
    NonUtf8Path { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> IndexError + '_ {
    move |source| IndexError::Io { path: path.to_owned(), source }
}

/// One event of a page, at its offset. `Err`: the record is not a JSON event (the server sent it as
/// `value_base64`), which is the event's fault like any other rejection.
#[derive(Debug, Clone)]
pub struct PageEvent {
    pub offset: u64,
    pub event: Result<Value, String>,
}

/// What to do when an event cannot be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Report it, skip it, go on.
    Continue,
    /// Report it and stop before it: the offset stays on the failing event.
    Stop,
}

/// The result of one committed page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageOutcome {
    pub applied: usize,
    /// Rejected events, reported and skipped (or, with [`ErrorPolicy::Stop`], the one that stopped the page).
    pub rejected: usize,
    /// Events at offsets the index had already passed (a page fetched twice), ignored.
    pub duplicates: usize,
    /// The partition's stored offset after the commit.
    pub next_offset: u64,
    /// Set when [`ErrorPolicy::Stop`] stopped the page at this rejected event.
    pub stopped: Option<Stopped>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub offset: u64,
    pub kind: &'static str,
    pub detail: String,
}

/// An error report waiting to be published to the topic's errors stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReport {
    pub seq: i64,
    pub partition: u32,
    pub offset: u64,
    /// `{"metadata", "data", "error"}` as JSON text.
    pub report: String,
}

/// What `index info` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IndexInfo {
    pub format: String,
    pub topic: Option<String>,
    pub items: u64,
    pub retracted: u64,
    pub offsets: Vec<PartitionOffset>,
    pub pending_reports: u64,
    /// The snapshot this replica was bootstrapped from, if any.
    pub bootstrapped_from: Option<String>,
    /// Set in snapshot files only.
    pub snapshot_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PartitionOffset {
    pub partition: u32,
    pub next_offset: u64,
}

/// An open index.
pub struct Index {
    conn: Connection,
    /// The bound topic, cached: error reports name it.
    topic: Option<String>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("path", &self.conn.path()).field("topic", &self.topic).finish()
    }
}

impl Index {
    /// Opens the index at `path`, creating an empty one if there is no file.
    pub fn open_or_create(path: &Path) -> Result<Index, IndexError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Index::open_with(path, flags, true)
    }

    /// Opens an existing index for writing.
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        if !path.exists() {
            return Err(IndexError::Missing { path: path.to_owned() });
        }
        Index::open_with(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX, false)
    }

    /// Opens an existing index for reading only (export, query, info): a follower may be writing it meanwhile.
    pub fn open_read_only(path: &Path) -> Result<Index, IndexError> {
        if !path.exists() {
            return Err(IndexError::Missing { path: path.to_owned() });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mut index = Index { conn, topic: None };
        index.check_format(path)?;
        index.topic = index.meta("topic")?;
        Ok(index)
    }

    /// An empty index in memory, for tests and benchmarks of the apply logic.
    pub fn in_memory() -> Result<Index, IndexError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        conn.execute("INSERT INTO replica_meta (key, value) VALUES ('format', ?1)", params![FORMAT])?;
        Ok(Index { conn, topic: None })
    }

    fn open_with(path: &Path, flags: OpenFlags, create: bool) -> Result<Index, IndexError> {
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // FULL: a commit is on disk when it returns, so an applied page and its offset survive a power cut,
        // not just a crash.
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        let mut index = Index { conn, topic: None };
        if create && index.table_count()? == 0 {
            let tx = index.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(SCHEMA)?;
            tx.execute(
                "INSERT OR IGNORE INTO replica_meta (key, value) VALUES ('format', ?1)",
                params![FORMAT],
            )?;
            tx.commit()?;
        }
        // Before anything is changed: a database of something else is left exactly as it was.
        index.check_format(path)?;
        // WAL: readers (export, snapshot) never block the follower, nor it them.
        let mode: String = index.conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(IndexError::NotAnIndex {
                path: path.to_owned(),
                reason: format!("SQLite refused WAL mode (journal mode is {mode})"),
            });
        }
        index.topic = index.meta("topic")?;
        Ok(index)
    }

    fn table_count(&self) -> Result<u64, IndexError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'table'", [], |row| row.get(0))?)
    }

    fn check_format(&self, path: &Path) -> Result<(), IndexError> {
        let not_an_index = |reason: String| IndexError::NotAnIndex { path: path.to_owned(), reason };
        let has_meta: bool = self.conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'replica_meta'",
            [],
            |row| row.get(0),
        )?;
        if !has_meta {
            return Err(not_an_index("it has no replica_meta table".into()));
        }
        match self.meta("format")? {
            Some(format) if format == FORMAT => Ok(()),
            Some(format) => {
                Err(not_an_index(format!("its format is {format:?}, this program reads {FORMAT:?}")))
            }
            None => Err(not_an_index("it names no format".into())),
        }
    }

    fn meta(&self, key: &str) -> Result<Option<String>, IndexError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM replica_meta WHERE key = ?1", params![key], |row| row.get(0))
            .optional()?)
    }

    /// The topic this index follows, once bound.
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// Binds the index to `topic` on first use; refuses another topic afterwards (its offsets would mean
    /// nothing there).
    pub fn bind_topic(&mut self, topic: &str) -> Result<(), IndexError> {
        match self.meta("topic")? {
            Some(indexed) if indexed == topic => {}
            Some(indexed) => return Err(IndexError::TopicMismatch { indexed, requested: topic.to_owned() }),
            None => {
                self.conn
                    .execute("INSERT INTO replica_meta (key, value) VALUES ('topic', ?1)", params![topic])?;
            }
        }
        self.topic = Some(topic.to_owned());
        Ok(())
    }

    /// The next offset to apply, per partition; partitions never applied are absent.
    pub fn offsets(&self) -> Result<BTreeMap<u32, u64>, IndexError> {
        let mut statement = self.conn.prepare_cached("SELECT partition, next_offset FROM offsets")?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, u32>(0)?, row.get::<_, u64>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Applies `events` (consecutive offsets of one partition) and moves the partition's offset past them, in
    /// one transaction. Events below the stored offset were applied before and are skipped, so a page
    /// delivered twice changes nothing. Rejected events are logged and queued for reporting in the same
    /// transaction; with [`ErrorPolicy::Stop`] the page ends before the first one.
    ///
    /// Errors: storage failures, and a page that starts past the stored offset ([`IndexError::Gap`]); either
    /// way nothing of the page is committed.
    pub fn apply_page(
        &mut self,
        partition: u32,
        events: &[PageEvent],
        policy: ErrorPolicy,
    ) -> Result<PageOutcome, IndexError> {
        let topic = self.topic.clone().unwrap_or_default();
        // IMMEDIATE: take the write lock now, so the offset read below cannot be overtaken by another writer.
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<u64> = tx
            .prepare_cached("SELECT next_offset FROM offsets WHERE partition = ?1")?
            .query_row(params![partition], |row| row.get(0))
            .optional()?;
        let mut next = stored;
        let mut outcome = PageOutcome::default();
        for event in events {
            if let Some(expected) = next {
                if event.offset < expected {
                    outcome.duplicates += 1;
                    continue;
                }
                if event.offset > expected {
                    return Err(IndexError::Gap { partition, expected, found: event.offset });
                }
            }
            let result = match &event.event {
                Ok(value) => apply(&tx, value),
                Err(reason) => Err(ApplyError::InvalidEvent(reason.clone())),
            };
            match result {
                Ok(_) => outcome.applied += 1,
                Err(ApplyError::Storage(e)) => return Err(IndexError::Sqlite(e)),
                Err(rejection) => {
                    outcome.rejected += 1;
                    tracing::warn!(
                        topic = %topic,
                        partition,
                        offset = event.offset,
                        item_id = rejection.item_id().unwrap_or_default(),
                        kind = rejection.kind(),
                        "event not applied: {rejection}"
                    );
                    let report = error_report(&topic, partition, event, &rejection);
                    tx.prepare_cached(
                        "INSERT INTO pending_reports (partition, offset, report) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![partition, event.offset, report])?;
                    if policy == ErrorPolicy::Stop {
                        outcome.stopped = Some(Stopped {
                            offset: event.offset,
                            kind: rejection.kind(),
                            detail: rejection.to_string(),
                        });
                        next = Some(event.offset);
                        break;
                    }
                }
            }
            next = Some(event.offset + 1);
        }
        if let Some(next) = next
            && Some(next) != stored
        {
            tx.prepare_cached(
                "INSERT INTO offsets (partition, next_offset) VALUES (?1, ?2) \
                 ON CONFLICT (partition) DO UPDATE SET next_offset = excluded.next_offset",
            )?
            .execute(params![partition, next])?;
        }
        tx.commit()?;
        outcome.next_offset = next.unwrap_or_default();
        Ok(outcome)
    }

    /// Error reports not yet delivered, oldest first.
    pub fn pending_reports(&self, limit: usize) -> Result<Vec<PendingReport>, IndexError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT seq, partition, offset, report FROM pending_reports ORDER BY seq LIMIT ?1",
        )?;
        let rows = statement.query_map(params![limit as i64], |row| {
            Ok(PendingReport {
                seq: row.get(0)?,
                partition: row.get(1)?,
                offset: row.get(2)?,
                report: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets a report: delivered, or deliberately dropped (after logging it).
    pub fn remove_report(&self, seq: i64) -> Result<(), IndexError> {
        self.conn.prepare_cached("DELETE FROM pending_reports WHERE seq = ?1")?.execute(params![seq])?;
        Ok(())
    }

    /// The stored item `id`, as canonical JSON.
    pub fn get(&self, id: &str) -> Result<Option<String>, IndexError> {
        Ok(self
            .conn
            .prepare_cached("SELECT item FROM items WHERE id = ?1")?
            .query_row(params![id], |row| row.get(0))
            .optional()?)
    }

    pub fn item_count(&self) -> Result<u64, IndexError> {
        Ok(self.conn.query_row("SELECT count(*) FROM items", [], |row| row.get(0))?)
    }

    /// Writes every item as one canonical JSON line, in id order (bytewise), and returns how many. Two
    /// replicas that applied the same events write identical bytes.
    pub fn export(&self, out: &mut dyn Write) -> Result<u64, IndexError> {
        self.query(None, &[], None, &mut |line| {
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")
        })
    }

    /// Calls `each` with every item (canonical JSON) matching the id and every condition, in id order, at most
    /// `limit` of them; returns how many.
    pub fn query(
        &self,
        id: Option<&str>,
        conditions: &[Condition],
        limit: Option<u64>,
        each: &mut dyn FnMut(&str) -> io::Result<()>,
    ) -> Result<u64, IndexError> {
        let mut sql = String::from("SELECT item FROM items WHERE 1 = 1");
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(id) = id {
            sql.push_str(" AND id = ?");
            values.push(id.to_owned().into());
        }
        for condition in conditions {
            // Column names come from the fixed facet list, never from the user's text.
            sql.push_str(&format!(" AND {} = ?", condition.facet.name()));
            values.push(match &condition.value {
                ConditionValue::Text(text) => text.clone().into(),
                ConditionValue::Flag(flag) => i64::from(*flag).into(),
            });
        }
        // BINARY collation: byte order, the same everywhere.
        sql.push_str(" ORDER BY id");
        if let Some(limit) = limit {
            sql.push_str(&format!(" LIMIT {}", limit.min(i64::MAX as u64)));
        }
        let mut statement = self.conn.prepare(&sql)?;
        let mut rows = statement.query(rusqlite::params_from_iter(values))?;
        let mut count = 0;
        while let Some(row) = rows.next()? {
            let item: String = row.get(0)?;
            each(&item).map_err(io_error(Path::new("output")))?;
            count += 1;
        }
        Ok(count)
    }

    pub fn info(&self) -> Result<IndexInfo, IndexError> {
        let count =
            |sql: &str| -> Result<u64, IndexError> { Ok(self.conn.query_row(sql, [], |row| row.get(0))?) };
        Ok(IndexInfo {
            format: self.meta("format")?.unwrap_or_default(),
            topic: self.meta("topic")?,
            items: count("SELECT count(*) FROM items")?,
            retracted: count("SELECT count(*) FROM items WHERE retracted")?,
            offsets: self
                .offsets()?
                .into_iter()
                .map(|(partition, next_offset)| PartitionOffset { partition, next_offset })
                .collect(),
            pending_reports: count("SELECT count(*) FROM pending_reports")?,
            bootstrapped_from: self.meta("bootstrapped_from")?,
            snapshot_id: self.meta("snapshot_id")?,
        })
    }

    /// The connection, for [`apply`] in tests and benchmarks.
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// `{"metadata", "data", "error"}`: the rejected event's envelope with an RFC 9457 problem saying why, and
/// where the event is in the topic.
fn error_report(topic: &str, partition: u32, event: &PageEvent, rejection: &ApplyError) -> String {
    let member = |name: &str| {
        event.event.as_ref().ok().and_then(|value| value.get(name)).cloned().unwrap_or(Value::Null)
    };
    let mut error = json!({
        "type": format!("urn:esgf-events:problem:{}", rejection.kind()),
        "title": rejection.title(),
        "status": rejection.status(),
        "detail": rejection.to_string(),
        "topic": topic,
        "partition": partition,
        "offset": event.offset,
    });
    if let Some(id) = rejection.item_id() {
        error["item_id"] = Value::String(id.to_owned());
    }
    json!({"metadata": member("metadata"), "data": member("data"), "error": error}).to_string()
}

/// What [`snapshot`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub snapshot_id: String,
    pub topic: Option<String>,
    pub items: u64,
    pub offsets: BTreeMap<u32, u64>,
}

/// Writes a consistent copy of the index at `index` to `out` (which must not exist): the items with the
/// offsets they reflect, under a fresh snapshot id. Safe while a follower writes the index.
pub fn snapshot(index: &Path, out: &Path) -> Result<SnapshotInfo, IndexError> {
    if out.exists() {
        return Err(IndexError::Exists { path: out.to_owned() });
    }
    let source = Index::open(index)?;
    let tmp = sibling(out, ".tmp");
    remove_if_present(&tmp)?;
    let tmp_text = tmp.to_str().ok_or_else(|| IndexError::NonUtf8Path { path: tmp.clone() })?;
    // One read transaction: the items and the offsets come from the same instant.
    source.conn.execute("VACUUM INTO ?1", params![tmp_text])?;
    drop(source);

    let snapshot_id = format!("{:032x}", fastrand::u128(..));
    let info = {
        let conn = Connection::open(&tmp)?;
        // A snapshot is one self-contained file: no WAL beside it to lose when it is copied.
        conn.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))?;
        conn.execute_batch("PRAGMA synchronous = FULL")?;
        let mut copy = Index { conn, topic: None };
        copy.check_format(&tmp)?;
        let tx = copy.conn.transaction()?;
        tx.execute(
            "INSERT INTO replica_meta (key, value) VALUES ('snapshot_id', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![snapshot_id],
        )?;
        // The source replica delivers its own pending reports; a replica made from this must not repeat them.
        tx.execute("DELETE FROM pending_reports", [])?;
        tx.commit()?;
        SnapshotInfo {
            snapshot_id: snapshot_id.clone(),
            topic: copy.meta("topic")?,
            items: copy.item_count()?,
            offsets: copy.offsets()?,
        }
    };
    publish_file(&tmp, out)?;
    Ok(info)
}

/// How [`bootstrap`] left the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrapped {
    /// A new index was made from the snapshot.
    Created { snapshot_id: String },
    /// The index was made from this snapshot before (a restart): it is used as it is, from its own offsets.
    Resumed { snapshot_id: String },
}

/// Makes the index at `index` from the snapshot at `snapshot`, for topic `topic`. If the index exists it must
/// come from this very snapshot (it is then left alone, so a restarted replica resumes where it was); anything
/// else is refused rather than overwritten.
pub fn bootstrap(snapshot: &Path, index: &Path, topic: &str) -> Result<Bootstrapped, IndexError> {
    let source = Index::open_read_only(snapshot)?;
    let snapshot_id =
        source.meta("snapshot_id")?.ok_or_else(|| IndexError::NotASnapshot { path: snapshot.to_owned() })?;
    match source.meta("topic")? {
        Some(indexed) if indexed != topic => {
            return Err(IndexError::TopicMismatch { indexed, requested: topic.to_owned() });
        }
        _ => {}
    }
    drop(source);

    let tmp = sibling(index, ".bootstrap");
    if index.exists() {
        // Compared before anything opens the index for writing (which would change its header).
        let resumed = same_bytes(index, snapshot)?
            || Index::open_read_only(index)?.meta("bootstrapped_from")?.as_deref()
                == Some(snapshot_id.as_str());
        if resumed {
            // Left over if the last bootstrap was interrupted between publishing the index and cleaning up.
            remove_if_present(&tmp)?;
            return Ok(Bootstrapped::Resumed { snapshot_id });
        }
        return Err(IndexError::BootstrapConflict { index: index.to_owned(), snapshot: snapshot.to_owned() });
    }

    remove_if_present(&tmp)?;
    std::fs::copy(snapshot, &tmp).map_err(io_error(&tmp))?;
    {
        let conn = Connection::open(&tmp)?;
        conn.execute_batch("PRAGMA synchronous = FULL")?;
        let mut copy = Index { conn, topic: None };
        copy.check_format(&tmp)?;
        let tx = copy.conn.transaction()?;
        tx.execute("DELETE FROM replica_meta WHERE key = 'snapshot_id'", [])?;
        tx.execute(
            "INSERT INTO replica_meta (key, value) VALUES ('bootstrapped_from', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![snapshot_id],
        )?;
        tx.execute("DELETE FROM pending_reports", [])?;
        tx.commit()?;
        // Leave no WAL behind: the file alone is the index until the follower opens it in WAL mode.
        copy.conn.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))?;
    }
    publish_file(&tmp, index)?;
    Ok(Bootstrapped::Created { snapshot_id })
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn remove_if_present(path: &Path) -> Result<(), IndexError> {
    for extra in ["", "-wal", "-shm", "-journal"] {
        let file = sibling(path, extra);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(IndexError::Io { path: file, source: e }),
        }
    }
    Ok(())
}

/// Makes the finished file `tmp` appear at `dest` atomically, never replacing an existing file, and durably
/// (the file's data, then the directory entry).
fn publish_file(tmp: &Path, dest: &Path) -> Result<(), IndexError> {
    File::open(tmp).and_then(|f| f.sync_all()).map_err(io_error(tmp))?;
    // A hard link fails if `dest` exists, where a rename would silently replace it.
    match std::fs::hard_link(tmp, dest) {
        Ok(()) => std::fs::remove_file(tmp).map_err(io_error(tmp))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(IndexError::Exists { path: dest.to_owned() });
        }
        // Filesystems without hard links: check, then rename (a race with another writer is the operator's).
        Err(_) => {
            if dest.exists() {
                return Err(IndexError::Exists { path: dest.to_owned() });
            }
            std::fs::rename(tmp, dest).map_err(io_error(dest))?;
        }
    }
    let dir = match dest.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))?;
    Ok(())
}

/// Whether two files hold the same bytes, compared a block at a time (an index can be large).
fn same_bytes(a: &Path, b: &Path) -> Result<bool, IndexError> {
    use std::io::Read;
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).map_err(io_error(p));
    if len(a)? != len(b)? {
        return Ok(false);
    }
    let (mut fa, mut fb) = (File::open(a).map_err(io_error(a))?, File::open(b).map_err(io_error(b))?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(&mut fa, &mut ba).map_err(io_error(a))?;
        let m = read_full(&mut fb, &mut bb).map_err(io_error(b))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }

    fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        Ok(filled)
    }
}
