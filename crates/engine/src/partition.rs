//! One partition: its segments, its writer thread, reads, recovery and retention.
//!
//! Appends go through a bounded queue to one writer thread per partition. The writer takes every append that
//! is waiting, encodes each as one batch, writes them with one `write` and makes them durable with one
//! `fdatasync` (group commit), and only then publishes the new end of the log to readers and acknowledges the
//! producers. Readers therefore never see a record that could still be lost. Offsets are assigned by the writer
//! alone, so they are dense and never reused.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::batch::{self, BatchHeader, FrameError};
use crate::index::{self, IndexBuf};
use crate::segment::{self, SegmentFile};
use crate::{
    AppendOutcome, Clock, Durability, NewRecord, ReadLimits, ReadResult, Record, Retention, RetentionReport,
    StoreError,
};

/// Engine settings a partition needs (derived once from the store's config).
#[derive(Debug, Clone)]
pub struct Settings {
    pub durability: Durability,
    pub segment_max_bytes: u64,
    pub segment_max_age_ms: i64,
    pub index_interval: u32,
    pub max_batch_bytes: usize,
    pub queue_depth: usize,
    pub queue_bytes: usize,
}

impl Settings {
    /// The most an active segment can hold: it rolls before passing `segment_max_bytes`, except that one
    /// batch may land in an empty segment whatever its size.
    fn active_map_len(&self) -> u64 {
        self.segment_max_bytes + self.max_batch_bytes as u64
    }
}

/// Most appends one group commit takes, so one fsync never waits behind an unbounded amount of work.
const MAX_GROUP: usize = 4096;
/// Bytes after which a group is written and synced even if more appends are waiting: keeps the latency of
/// the first append in a group bounded when producers send large batches.
const MAX_GROUP_BYTES: usize = 8 << 20;
/// Read-ahead per disk read when the caller allows more bytes.
const MIN_READ_CHUNK: usize = 64 << 10;
const MAX_READ_CHUNK: usize = 8 << 20;

struct Sealed {
    file: Arc<SegmentFile>,
    next_offset: u64,
    size: u64,
    max_ts: i64,
}

/// The active segment as readers may see it: only acknowledged bytes.
struct Active {
    file: Arc<SegmentFile>,
    next_offset: u64,
    len: u64,
    first_ts: Option<i64>,
    max_ts: Option<i64>,
    index: IndexBuf,
    since_index: u64,
}

struct State {
    sealed: VecDeque<Sealed>,
    active: Active,
    /// Set when a write or fsync failed: what reached the disk is unknown, so appends stop until a restart
    /// re-runs recovery (retrying an fsync after a failure can report success for lost data).
    failed: Option<String>,
}

enum Cmd {
    Append {
        records: Vec<NewRecord>,
        reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    },
    /// Roll the active segment if it holds data older than `expire_before` or older than the segment age limit.
    Roll {
        expire_before: Option<i64>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// State shared by the writer thread and readers.
struct Shared {
    topic: String,
    id: u32,
    dir: PathBuf,
    settings: Arc<Settings>,
    clock: Arc<dyn Clock>,
    state: RwLock<State>,
    visible: watch::Sender<u64>,
}

/// A partition's handle: dropping it stops its writer after the queued appends.
pub struct Partition {
    shared: Arc<Shared>,
    /// Permits = bytes of appends queued or in flight.
    queued_bytes: Arc<tokio::sync::Semaphore>,
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// One segment's readable range, taken under the lock and used without it.
struct SegView {
    file: Arc<SegmentFile>,
    start: u64,
    end: u64,
}

impl Partition {
    /// Opens a partition directory, recovering its active segment's tail, and starts its writer.
    pub fn open(
        topic: &str,
        id: u32,
        dir: &Path,
        settings: Arc<Settings>,
        clock: Arc<dyn Clock>,
    ) -> Result<Partition, StoreError> {
        let state = recover(topic, id, dir, &settings)?;
        let next = state.active.next_offset;
        let shared = Arc::new(Shared {
            topic: topic.to_owned(),
            id,
            dir: dir.to_owned(),
            settings: settings.clone(),
            clock,
            state: RwLock::new(state),
            visible: watch::Sender::new(next),
        });
        let (tx, rx) = mpsc::channel(settings.queue_depth.max(1));
        let writer_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("log-writer-{topic}-{id}"))
            .spawn(move || writer_loop(&writer_shared, rx))
            .map_err(|e| StoreError::io("starting a partition writer", e))?;
        let queued_bytes = Arc::new(tokio::sync::Semaphore::new(settings.queue_bytes.max(1)));
        Ok(Partition { shared, queued_bytes, tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(handle)) })
    }

    pub async fn append(&self, records: Vec<NewRecord>) -> Result<AppendOutcome, StoreError> {
        if records.is_empty() {
            return Err(StoreError::InvalidArgument("a batch holds at least one record".into()));
        }
        let approx: usize = records.iter().map(NewRecord::approx_size).sum();
        if approx > self.shared.settings.max_batch_bytes {
            return Err(StoreError::BatchTooLarge {
                size: approx,
                max: self.shared.settings.max_batch_bytes,
            });
        }
        // Held until the append is acknowledged; capped so one huge batch can still pass alone.
        let permits = approx.clamp(1, self.shared.settings.queue_bytes.max(1)) as u32;
        let _permit = self.queued_bytes.acquire_many(permits).await.map_err(|_| StoreError::ShuttingDown)?;
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Append { records, reply }).await?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    async fn send(&self, cmd: Cmd) -> Result<(), StoreError> {
        let tx = lock(&self.tx).clone().ok_or(StoreError::ShuttingDown)?;
        tx.send(cmd).await.map_err(|_| StoreError::ShuttingDown)
    }

    pub fn offsets(&self) -> (u64, u64) {
        self.shared.bounds()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.visible.subscribe()
    }

    pub async fn read(self: &Arc<Self>, offset: u64, limits: ReadLimits) -> Result<ReadResult, StoreError> {
        let this = self.clone();
        blocking(move || this.shared.read(offset, limits)).await
    }

    pub async fn offset_for_timestamp(self: &Arc<Self>, ts: i64) -> Result<Option<u64>, StoreError> {
        let this = self.clone();
        blocking(move || this.shared.offset_for_timestamp(ts)).await
    }

    /// Rolls what must roll, then deletes whole sealed segments that retention says have expired.
    pub async fn enforce_retention(
        self: &Arc<Self>,
        retention: Retention,
    ) -> Result<RetentionReport, StoreError> {
        let now = self.shared.clock.now_ms();
        let expire_before = retention
            .max_age
            .map(|age| now.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)));
        let (reply, rx) = oneshot::channel();
        match self.send(Cmd::Roll { expire_before, reply }).await {
            Ok(()) => rx.await.map_err(|_| StoreError::ShuttingDown)??,
            Err(StoreError::ShuttingDown) => return Ok(RetentionReport::default()),
            Err(e) => return Err(e),
        }
        let this = self.clone();
        blocking(move || this.shared.delete_expired(expire_before, retention.max_bytes)).await
    }

    /// Stops the writer after the appends already queued, and makes everything durable.
    pub async fn shutdown(self: &Arc<Self>) -> Result<(), StoreError> {
        drop(lock(&self.tx).take());
        let handle = lock(&self.writer).take();
        if let Some(handle) = handle {
            blocking(move || {
                handle.join().map_err(|_| StoreError::Backend("partition writer panicked".into()))
            })
            .await?;
        }
        let this = self.clone();
        blocking(move || {
            let file = this.shared.read_state().active.file.clone();
            file.file.sync_data().map_err(|e| file.io("syncing", e))
        })
        .await
    }

    /// Syncs the active segment (for the relaxed durability mode's periodic flush).
    pub fn sync(&self) -> Result<(), StoreError> {
        let file = self.shared.read_state().active.file.clone();
        file.file.sync_data().map_err(|e| file.io("syncing", e))
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        drop(lock(&self.tx).take());
        if let Some(handle) = lock(&self.writer).take() {
            let _ = handle.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend(format!("blocking task failed: {e}")))?
}

impl Shared {
    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bounds(&self) -> (u64, u64) {
        let st = self.read_state();
        let earliest = st.sealed.front().map_or(st.active.file.base, |s| s.file.base);
        (earliest, st.active.next_offset)
    }

    fn out_of_range(&self, requested: u64, earliest: u64, latest: u64) -> StoreError {
        StoreError::OffsetOutOfRange {
            topic: self.topic.clone(),
            partition: self.id,
            requested,
            earliest,
            latest,
        }
    }

    /// The readable range of the segment holding `offset`, starting at the indexed batch at or before it.
    /// `use_index = false` starts at the segment's first byte (fallback when an index looks wrong).
    fn segment_for(&self, offset: u64, use_index: bool) -> Result<Option<SegView>, StoreError> {
        let st = self.read_state();
        let a = &st.active;
        if offset >= a.file.base {
            if offset >= a.next_offset {
                return Ok(None);
            }
            let start = if use_index {
                index::position_for_offset(&a.index.offsets, (offset - a.file.base) as u32)
            } else {
                0
            };
            return Ok(Some(SegView { file: a.file.clone(), start: u64::from(start), end: a.len }));
        }
        let i = st.sealed.partition_point(|s| s.file.base <= offset);
        if i == 0 {
            return Ok(None);
        }
        let s = &st.sealed[i - 1];
        if offset >= s.next_offset {
            return Ok(None);
        }
        let (file, end) = (s.file.clone(), s.size);
        drop(st);
        let start = if use_index {
            match file.sealed_index() {
                Ok((offsets, _)) => index::position_for_offset(offsets, (offset - file.base) as u32),
                Err(e) => {
                    tracing::warn!(segment = %file.path.display(), error = %e, "index unavailable, scanning");
                    0
                }
            }
        } else {
            0
        };
        Ok(Some(SegView { file, start: u64::from(start), end }))
    }

    fn read(&self, offset: u64, limits: ReadLimits) -> Result<ReadResult, StoreError> {
        let (earliest, latest) = self.bounds();
        if offset < earliest || offset > latest {
            return Err(self.out_of_range(offset, earliest, latest));
        }
        let max_records = limits.max_records.max(1);
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut cur = offset;
        while records.len() < max_records && bytes < limits.max_bytes {
            let Some(view) = self.segment_for(cur, true)? else {
                break;
            };
            let before = cur;
            match self.read_segment(&view, &mut cur, max_records, limits.max_bytes, &mut records, &mut bytes)
            {
                Err(ReadError::IndexMismatch) => {
                    tracing::warn!(topic = %self.topic, partition = self.id, offset = cur, "index points past the offset, rescanning segment");
                    let Some(view) = self.segment_for(cur, false)? else {
                        break;
                    };
                    // Still past the offset when scanned from the segment's start: the batch's base-offset
                    // field (not covered by the CRC) is damaged, so this is corruption, not a stale index.
                    self.read_segment(
                        &view,
                        &mut cur,
                        max_records,
                        limits.max_bytes,
                        &mut records,
                        &mut bytes,
                    )
                    .map_err(|e| match e {
                        ReadError::IndexMismatch => view.file.corrupt(
                            view.start,
                            format!("the batch holding offset {cur} names a later base offset"),
                        ),
                        ReadError::Store(e) => e,
                    })?;
                }
                other => other.map_err(ReadError::into_store)?,
            }
            if cur == before {
                break;
            }
        }
        if records.is_empty() && cur < earliest.max(self.bounds().0) {
            // Retention removed the segment while we were reading it.
            let (e, l) = self.bounds();
            return Err(self.out_of_range(offset, e, l));
        }
        Ok(ReadResult { records, next_offset: cur, earliest, latest: latest.max(cur) })
    }

    fn read_segment(
        &self,
        view: &SegView,
        cur: &mut u64,
        max_records: usize,
        max_bytes: usize,
        out: &mut Vec<Record>,
        bytes: &mut usize,
    ) -> Result<(), ReadError> {
        let mut first = true;
        let hint = max_bytes.saturating_sub(*bytes);
        for_each_batch(&view.file, view.start, view.end, hint, |batch, h| {
            if first && h.base_offset > *cur {
                return Err(ReadError::IndexMismatch);
            }
            first = false;
            if h.next_offset() <= *cur {
                return Ok(ControlFlow::Continue(()));
            }
            batch::decode_records(&batch, &h, *cur, out).map_err(|e| {
                ReadError::Store(view.file.corrupt(0, format!("batch at offset {}: {e}", h.base_offset)))
            })?;
            *bytes += h.total_len;
            *cur = h.next_offset();
            if out.len() >= max_records {
                out.truncate(max_records);
                *cur = out.last().map_or(*cur, |r| r.offset + 1);
                return Ok(ControlFlow::Break(()));
            }
            Ok(if *bytes >= max_bytes { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
        })
    }

    fn offset_for_timestamp(&self, ts: i64) -> Result<Option<u64>, StoreError> {
        // Candidate segments in order, each with the position to start scanning from.
        let candidates: Vec<SegView> = {
            let st = self.read_state();
            let mut v = Vec::new();
            for s in &st.sealed {
                if s.max_ts >= ts {
                    v.push(SegView { file: s.file.clone(), start: u64::MAX, end: s.size });
                }
            }
            let a = &st.active;
            if a.max_ts.is_some_and(|m| m >= ts) {
                let rel = index::start_for_timestamp(&a.index.times, ts);
                let start = index::position_for_offset(&a.index.offsets, rel);
                v.push(SegView { file: a.file.clone(), start: u64::from(start), end: a.len });
            }
            v
        };
        for mut view in candidates {
            if view.start == u64::MAX {
                view.start = match view.file.sealed_index() {
                    Ok((offsets, times)) => {
                        u64::from(index::position_for_offset(offsets, index::start_for_timestamp(times, ts)))
                    }
                    Err(_) => 0,
                };
            }
            let mut found = None;
            for_each_batch(&view.file, view.start, view.end, MIN_READ_CHUNK, |batch, h| {
                if h.max_timestamp < ts {
                    return Ok(ControlFlow::Continue(()));
                }
                let mut recs = Vec::new();
                batch::decode_records(&batch, &h, 0, &mut recs).map_err(|e| {
                    ReadError::Store(view.file.corrupt(0, format!("batch at offset {}: {e}", h.base_offset)))
                })?;
                found = recs.iter().find(|r| r.timestamp_ms >= ts).map(|r| r.offset);
                Ok(if found.is_some() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
            })
            .map_err(ReadError::into_store)?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    fn delete_expired(
        &self,
        expire_before: Option<i64>,
        max_bytes: Option<u64>,
    ) -> Result<RetentionReport, StoreError> {
        let removed: Vec<Sealed> = {
            let mut st = self.write_state();
            let mut total: u64 = st.sealed.iter().map(|s| s.size).sum::<u64>() + st.active.len;
            let mut removed = Vec::new();
            while let Some(front) = st.sealed.front() {
                let expired = expire_before.is_some_and(|e| front.max_ts < e);
                let oversize = max_bytes.is_some_and(|m| total > m);
                if !(expired || oversize) {
                    break;
                }
                total -= front.size;
                removed.extend(st.sealed.pop_front());
            }
            removed
        };
        let mut report = RetentionReport::default();
        for s in removed {
            for path in [s.file.path.clone(), s.file.index_path(), s.file.timeindex_path()] {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(StoreError::io(format!("deleting {}", path.display()), e));
                    }
                }
            }
            tracing::info!(topic = %self.topic, partition = self.id, base_offset = s.file.base,
                next_offset = s.next_offset, bytes = s.size, "retention deleted segment");
            report.segments_deleted += 1;
            report.bytes_deleted += s.size;
        }
        if report.segments_deleted > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(report)
    }
}

enum ReadError {
    IndexMismatch,
    Store(StoreError),
}

impl ReadError {
    fn into_store(self) -> StoreError {
        match self {
            ReadError::Store(e) => e,
            ReadError::IndexMismatch => StoreError::Backend("index mismatch after rescan".into()),
        }
    }
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        ReadError::Store(e)
    }
}

/// Calls `f` with each verified batch of `file` in `start..end`, in order. A batch that fails its CRC or
/// structure check, or breaks the offset sequence, is an error: corrupt bytes are never handed out.
fn for_each_batch(
    file: &SegmentFile,
    start: u64,
    end: u64,
    hint: usize,
    mut f: impl FnMut(Bytes, BatchHeader) -> Result<ControlFlow<()>, ReadError>,
) -> Result<(), ReadError> {
    let mut pos = start;
    let mut expected: Option<u64> = None;
    let chunk_len = hint.clamp(MIN_READ_CHUNK, MAX_READ_CHUNK) as u64;
    while pos < end {
        let mut chunk = file.read_at(pos, (end - pos).min(chunk_len) as usize)?;
        let mut p = 0usize;
        while p < chunk.len() {
            let at = pos + p as u64;
            let h = match batch::check_batch(&chunk[p..]) {
                Ok(h) => h,
                Err(FrameError::Incomplete { needed, .. }) => {
                    if at + needed as u64 > end {
                        return Err(file
                            .corrupt(at, "batch runs past the end of the acknowledged log")
                            .into());
                    }
                    if p > 0 {
                        break;
                    }
                    chunk = file.read_at(at, needed)?;
                    continue;
                }
                Err(FrameError::Invalid(e)) => return Err(file.corrupt(at, e).into()),
            };
            if expected.is_some_and(|x| x != h.base_offset) {
                return Err(file
                    .corrupt(
                        at,
                        format!(
                            "batch base offset {} breaks the sequence (expected {expected:?})",
                            h.base_offset
                        ),
                    )
                    .into());
            }
            expected = Some(h.next_offset());
            let batch = chunk.slice(p..p + h.total_len);
            p += h.total_len;
            if f(batch, h)?.is_break() {
                return Ok(());
            }
        }
        pos += p as u64;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("syncing directory {}", dir.display()), e))
}

/// Rebuilds a partition's state from its directory: sealed segments are trusted as far as their indexes go
/// (they were fsync'd before sealing), the active segment is scanned and a torn or corrupt tail is cut off.
fn recover(topic: &str, id: u32, dir: &Path, settings: &Settings) -> Result<State, StoreError> {
    let mut bases = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = segment::parse_log_name(&name) {
            bases.push(base);
        } else if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    bases.sort_unstable();
    // Index files whose segment is gone (a crash during retention) are removed.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if matches!(path.extension().and_then(|e| e.to_str()), Some("index" | "timeindex"))
                && !path.with_extension("log").exists()
            {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    if bases.is_empty() {
        SegmentFile::open(dir, 0, true, 0)?;
        sync_dir(dir)?;
        bases.push(0);
    }
    let active_base = *bases.last().expect("at least one segment");
    let mut sealed = VecDeque::new();
    for (i, &base) in bases[..bases.len() - 1].iter().enumerate() {
        let size = std::fs::metadata(dir.join(segment::log_name(base)))
            .map_err(|e| StoreError::io(format!("reading the size of segment {base}"), e))?
            .len();
        let file = Arc::new(SegmentFile::open(dir, base, false, size)?);
        let next_offset = bases[i + 1];
        let max_ts = match file.sealed_index().ok().and_then(|(_, times)| index::last_time(times)) {
            Some(ts) => ts,
            None => {
                tracing::warn!(topic, partition = id, segment = %file.path.display(), "rebuilding missing index");
                let scan = segment::scan(&file, size, settings.index_interval)?;
                if scan.valid_len != size || scan.next_offset != next_offset {
                    tracing::error!(topic, partition = id, segment = %file.path.display(),
                        reason = ?scan.stopped, "sealed segment is damaged; its damaged records will not be served");
                }
                file.write_sealed_index(&scan.index)?;
                let rebuilt = Arc::new(SegmentFile::open(dir, base, false, size)?);
                sealed.push_back(Sealed {
                    file: rebuilt,
                    next_offset,
                    size,
                    max_ts: scan.max_ts.unwrap_or(i64::MIN),
                });
                continue;
            }
        };
        sealed.push_back(Sealed { file, next_offset, size, max_ts });
    }
    let file = Arc::new(SegmentFile::open(dir, active_base, false, settings.active_map_len())?);
    for stale in [file.index_path(), file.timeindex_path()] {
        let _ = std::fs::remove_file(stale);
    }
    let len = file.len()?;
    let scan = segment::scan(&file, len, settings.index_interval)?;
    if scan.valid_len < len {
        tracing::warn!(topic, partition = id, segment = %file.path.display(), kept_bytes = scan.valid_len,
            dropped_bytes = len - scan.valid_len, reason = ?scan.stopped, "truncating unacknowledged tail");
        file.file.set_len(scan.valid_len).map_err(|e| file.io("truncating", e))?;
        file.file.sync_all().map_err(|e| file.io("syncing", e))?;
    }
    if let Some(prev) = sealed.back()
        && prev.next_offset != active_base
    {
        return Err(file.corrupt(0, "segment base offsets are not contiguous"));
    }
    let since_index = scan.valid_len.saturating_sub(last_index_pos(&scan.index));
    Ok(State {
        sealed,
        active: Active {
            file,
            next_offset: scan.next_offset,
            len: scan.valid_len,
            first_ts: scan.first_ts,
            max_ts: scan.max_ts,
            index: scan.index,
            since_index,
        },
        failed: None,
    })
}

fn last_index_pos(idx: &IndexBuf) -> u64 {
    let n = idx.offsets.len() / index::OFFSET_ENTRY;
    if n == 0 {
        return 0;
    }
    let e = &idx.offsets[(n - 1) * index::OFFSET_ENTRY..];
    u64::from(u32::from_le_bytes(e[4..8].try_into().expect("4 bytes")))
}

/// What the writer has written but not yet published, for the current group.
struct Pending {
    buf: Vec<u8>,
    replies: Vec<(oneshot::Sender<Result<AppendOutcome, StoreError>>, AppendOutcome)>,
    next_offset: u64,
    segment_base: u64,
    len: u64,
    first_ts: Option<i64>,
    max_ts: Option<i64>,
    index_adds: Vec<(u32, u32, i64)>,
    since_index: u64,
}

fn writer_loop(shared: &Shared, mut rx: mpsc::Receiver<Cmd>) {
    let mut buf = Vec::with_capacity(1 << 20);
    while let Some(first) = rx.blocking_recv() {
        let mut cmds = vec![first];
        while cmds.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(c) => cmds.push(c),
                Err(_) => break,
            }
        }
        buf.clear();
        process(shared, cmds, &mut buf);
        if buf.capacity() > 64 << 20 {
            buf = Vec::with_capacity(1 << 20);
        }
    }
}

fn process(shared: &Shared, cmds: Vec<Cmd>, buf: &mut Vec<u8>) {
    let mut pending = start_pending(shared, std::mem::take(buf));
    for cmd in cmds {
        if let Some(reason) = shared.read_state().failed.clone() {
            fail_cmd(cmd, &reason);
            continue;
        }
        match cmd {
            Cmd::Append { records, reply } => {
                let now = shared.clock.now_ms();
                let s = &shared.settings;
                let start = pending.buf.len();
                let h = batch::encode_batch(pending.next_offset, &records, now, &mut pending.buf);
                if h.total_len > s.max_batch_bytes {
                    pending.buf.truncate(start);
                    let _ = reply
                        .send(Err(StoreError::BatchTooLarge { size: h.total_len, max: s.max_batch_bytes }));
                    continue;
                }
                // Encoded batches do not depend on their position, so one that must go to a new segment is
                // moved there as it is.
                let cur_len = pending.len + start as u64;
                let too_big = cur_len > 0 && cur_len + h.total_len as u64 > s.segment_max_bytes;
                let too_old = pending.first_ts.is_some_and(|f| now.saturating_sub(f) >= s.segment_max_age_ms);
                let too_many = pending.next_offset - pending.segment_base > u64::from(u32::MAX / 2);
                if too_big || too_old || too_many {
                    let encoded = pending.buf.split_off(start);
                    pending = flush_and_roll(shared, pending);
                    if let Some(reason) = shared.read_state().failed.clone() {
                        fail_cmd(Cmd::Append { records, reply }, &reason);
                        continue;
                    }
                    pending.buf.extend_from_slice(&encoded);
                }
                let position = pending.len + (pending.buf.len() - h.total_len) as u64;
                let max_ts = pending.max_ts.map_or(h.max_timestamp, |m| m.max(h.max_timestamp));
                if pending.since_index >= u64::from(s.index_interval) {
                    pending.index_adds.push((
                        (h.base_offset - pending.segment_base) as u32,
                        position as u32,
                        max_ts,
                    ));
                    pending.since_index = 0;
                }
                pending.since_index += h.total_len as u64;
                pending.first_ts.get_or_insert(h.base_timestamp);
                pending.max_ts = Some(max_ts);
                pending.next_offset = h.next_offset();
                pending.replies.push((
                    reply,
                    AppendOutcome { base_offset: h.base_offset, last_offset: h.last_offset() },
                ));
                if pending.buf.len() >= MAX_GROUP_BYTES {
                    pending = flush(shared, pending);
                }
            }
            Cmd::Roll { expire_before, reply } => {
                let now = shared.clock.now_ms();
                pending = flush(shared, pending);
                let expired = expire_before.is_some_and(|e| pending.max_ts.is_some_and(|m| m < e));
                let aged = pending
                    .first_ts
                    .is_some_and(|f| now.saturating_sub(f) >= shared.settings.segment_max_age_ms);
                let result = if pending.len > 0 && (expired || aged) {
                    pending = flush_and_roll(shared, pending);
                    shared.read_state().failed.clone().map_or(Ok(()), |r| Err(StoreError::Backend(r)))
                } else {
                    Ok(())
                };
                let _ = reply.send(result);
            }
        }
    }
    *buf = flush(shared, pending).buf;
}

fn start_pending(shared: &Shared, buf: Vec<u8>) -> Pending {
    let st = shared.read_state();
    let a = &st.active;
    Pending {
        buf,
        replies: Vec::new(),
        next_offset: a.next_offset,
        segment_base: a.file.base,
        len: a.len,
        first_ts: a.first_ts,
        max_ts: a.max_ts,
        index_adds: Vec::new(),
        since_index: if a.len == 0 { u64::MAX } else { a.since_index },
    }
}

fn fail_cmd(cmd: Cmd, reason: &str) {
    let err = || StoreError::Backend(format!("partition is failed until restart: {reason}"));
    match cmd {
        Cmd::Append { reply, .. } => drop(reply.send(Err(err()))),
        Cmd::Roll { reply, .. } => drop(reply.send(Err(err()))),
    }
}

/// Writes and syncs the group, publishes it to readers, acknowledges producers. Returns a fresh group.
fn flush(shared: &Shared, mut p: Pending) -> Pending {
    if p.buf.is_empty() {
        return p;
    }
    let file = shared.read_state().active.file.clone();
    let started = std::time::Instant::now();
    let written = file.file.write_all_at(&p.buf, p.len).and_then(|()| match shared.settings.durability {
        Durability::FsyncBeforeAck => file.file.sync_data(),
        Durability::Relaxed { .. } => Ok(()),
    });
    // The metrics facade only: a no-op until the binary installs a recorder; named in esgf_events_ops::metrics.
    metrics::histogram!("esgf_events_fsync_seconds").record(started.elapsed().as_secs_f64());
    if let Err(e) = written {
        tracing::error!(topic = %shared.topic, partition = shared.id, error = %e,
            "write or fsync failed; the partition refuses appends until restart");
        // Best effort: cut what may be half-written, so a restart's recovery has less to judge.
        let _ = file.file.set_len(p.len);
        let reason = format!("{e}");
        shared.write_state().failed = Some(reason.clone());
        for (reply, _) in p.replies.drain(..) {
            let _ = reply.send(Err(StoreError::io(
                format!("appending to {}", file.path.display()),
                std::io::Error::new(e.kind(), reason.clone()),
            )));
        }
        p.buf.clear();
        p.index_adds.clear();
        let fresh = start_pending(shared, std::mem::take(&mut p.buf));
        return fresh;
    }
    {
        let mut st = shared.write_state();
        let a = &mut st.active;
        a.len += p.buf.len() as u64;
        a.next_offset = p.next_offset;
        a.first_ts = p.first_ts;
        a.max_ts = p.max_ts;
        for (rel, pos, ts) in p.index_adds.drain(..) {
            a.index.push(rel, pos, ts);
        }
        a.since_index = p.since_index;
    }
    shared.visible.send_replace(p.next_offset);
    for (reply, outcome) in p.replies.drain(..) {
        let _ = reply.send(Ok(outcome));
    }
    p.len += p.buf.len() as u64;
    p.buf.clear();
    p
}

/// Flushes, then seals the active segment (indexes written and synced) and starts a new one.
fn flush_and_roll(shared: &Shared, p: Pending) -> Pending {
    let p = flush(shared, p);
    if shared.read_state().failed.is_some() || p.len == 0 {
        return p;
    }
    if let Err(e) = roll(shared) {
        tracing::error!(topic = %shared.topic, partition = shared.id, error = %e, "segment roll failed");
        shared.write_state().failed = Some(format!("segment roll failed: {e}"));
    }
    start_pending(shared, p.buf)
}

fn roll(shared: &Shared) -> Result<(), StoreError> {
    let (old, index, next_offset, len, max_ts) = {
        let st = shared.read_state();
        let a = &st.active;
        (a.file.clone(), a.index.clone(), a.next_offset, a.len, a.max_ts)
    };
    // The sealed segment must be durable before anything depends on it being whole.
    old.file.sync_data().map_err(|e| old.io("syncing", e))?;
    let mut index = index;
    // A final time entry so the sealed segment's max timestamp is its time index's last entry.
    let last_rel = {
        let n = index.offsets.len() / index::OFFSET_ENTRY;
        if n == 0 {
            0
        } else {
            u32::from_le_bytes(index.offsets[(n - 1) * 8..(n - 1) * 8 + 4].try_into().expect("4"))
        }
    };
    index.times.extend_from_slice(&max_ts.unwrap_or(i64::MIN).to_le_bytes());
    index.times.extend_from_slice(&last_rel.to_le_bytes());
    old.write_sealed_index(&index)?;
    let new = Arc::new(SegmentFile::open(&shared.dir, next_offset, true, shared.settings.active_map_len())?);
    sync_dir(&shared.dir)?;
    let mut st = shared.write_state();
    st.sealed.push_back(Sealed { file: old, next_offset, size: len, max_ts: max_ts.unwrap_or(i64::MIN) });
    st.active = Active {
        file: new,
        next_offset,
        len: 0,
        first_ts: None,
        max_ts: None,
        index: IndexBuf::default(),
        since_index: u64::MAX,
    };
    tracing::debug!(topic = %shared.topic, partition = shared.id, base_offset = next_offset, "rolled segment");
    Ok(())
}
