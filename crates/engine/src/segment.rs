//! One segment: a `<base offset>.log` file of consecutive batches, plus its sealed indexes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};

use crate::StoreError;
use crate::batch::{self, BatchHeader, FrameError};
use crate::index::{IndexBuf, IndexBytes, OFFSET_ENTRY, TIME_ENTRY};

pub fn log_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// Parses `00000000000000000042.log` into 42.
pub fn parse_log_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok()).flatten()
}

/// The open files of one segment. Shared (`Arc`) by the writer and readers; a deleted segment's file stays
/// readable to readers that still hold it.
///
/// Reads go through a read-only memory map of `map_len` bytes (for the active segment: the most it can grow
/// to), so records handed to readers are slices of the page cache: no copy, no zeroed buffers, no syscall per
/// read. That is what makes replay fast.
#[derive(Debug)]
pub struct SegmentFile {
    pub base: u64,
    pub path: PathBuf,
    pub file: File,
    map_len: u64,
    map: OnceLock<Option<Bytes>>,
    sealed_index: OnceLock<Result<(IndexBytes, IndexBytes), String>>,
}

impl SegmentFile {
    /// Opens a segment. `map_len` is how much of it reads may map: its size when sealed, its maximum size when
    /// active.
    pub fn open(dir: &Path, base: u64, create: bool, map_len: u64) -> Result<SegmentFile, StoreError> {
        let path = dir.join(log_name(base));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(format!("opening segment {}", path.display()), e))?;
        Ok(SegmentFile { base, path, file, map_len, map: OnceLock::new(), sealed_index: OnceLock::new() })
    }

    pub fn index_path(&self) -> PathBuf {
        self.path.with_extension("index")
    }

    pub fn timeindex_path(&self) -> PathBuf {
        self.path.with_extension("timeindex")
    }

    pub fn len(&self) -> Result<u64, StoreError> {
        Ok(self.file.metadata().map_err(|e| self.io("reading the size of", e))?.len())
    }

    pub fn io(&self, what: &str, e: std::io::Error) -> StoreError {
        StoreError::io(format!("{what} segment {}", self.path.display()), e)
    }

    pub fn corrupt(&self, position: u64, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt { path: self.path.clone(), position, detail: detail.into() }
    }

    /// The `len` bytes at `pos`: a slice of the segment's map, or a fresh copy if it cannot be mapped.
    /// Callers only ask for bytes below the acknowledged end of the segment.
    pub fn read_at(&self, pos: u64, len: usize) -> Result<Bytes, StoreError> {
        let end = pos.checked_add(len as u64).filter(|&e| e <= self.map_len);
        if let (Some(end), Some(map)) = (end, self.mapped()) {
            return Ok(map.slice(pos as usize..end as usize));
        }
        let mut buf = BytesMut::zeroed(len);
        self.file.read_exact_at(&mut buf, pos).map_err(|e| self.io("reading", e))?;
        Ok(buf.freeze())
    }

    fn mapped(&self) -> Option<&Bytes> {
        self.map
            .get_or_init(|| {
                if self.map_len == 0 {
                    return None;
                }
                // SAFETY: the engine only reads mapped bytes below a segment's acknowledged end, which are never
                // rewritten (the log is append-only; recovery truncates a tail before any map exists, and a failed
                // write only cuts bytes past the acknowledged end). The data directory lock keeps other processes
                // from writing segments. Mapping past the end of the file is allowed; those pages are not touched.
                let map = unsafe { memmap2::MmapOptions::new().len(self.map_len as usize).map(&self.file) };
                match map {
                    Ok(map) => {
                        let _ = map.advise(memmap2::Advice::Sequential);
                        Some(Bytes::from_owner(map))
                    }
                    Err(e) => {
                        tracing::warn!(segment = %self.path.display(), error = %e, "cannot map segment; using reads");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// The sealed indexes (offset, time), mapped on first use.
    pub fn sealed_index(&self) -> Result<&(IndexBytes, IndexBytes), StoreError> {
        self.sealed_index
            .get_or_init(|| {
                let open = |p: PathBuf, entry| {
                    File::open(&p)
                        .and_then(|f| IndexBytes::map(&f, entry))
                        .map_err(|e| format!("{}: {e}", p.display()))
                };
                Ok((open(self.index_path(), OFFSET_ENTRY)?, open(self.timeindex_path(), TIME_ENTRY)?))
            })
            .as_ref()
            .map_err(|e| StoreError::Backend(format!("index unavailable: {e}")))
    }

    /// Writes this segment's indexes for sealing: to temporary files, fsync'd, then renamed into place, so a
    /// crash leaves either no index (rebuilt on open) or a complete one.
    pub fn write_sealed_index(&self, idx: &IndexBuf) -> Result<(), StoreError> {
        for (path, bytes) in [(self.index_path(), &idx.offsets), (self.timeindex_path(), &idx.times)] {
            let tmp = path.with_extension("tmp");
            let mut f =
                File::create(&tmp).map_err(|e| StoreError::io(format!("creating {}", tmp.display()), e))?;
            f.write_all(bytes)
                .and_then(|()| f.sync_all())
                .map_err(|e| StoreError::io(format!("writing {}", tmp.display()), e))?;
            std::fs::rename(&tmp, &path)
                .map_err(|e| StoreError::io(format!("renaming {}", tmp.display()), e))?;
        }
        Ok(())
    }
}

/// What a scan of a segment found.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    /// The segment's base offset.
    pub base: u64,
    /// Bytes of valid, consecutive batches from the start.
    pub valid_len: u64,
    /// Offset after the last valid batch (`base` when empty).
    pub next_offset: u64,
    pub first_ts: Option<i64>,
    pub max_ts: Option<i64>,
    pub index: IndexBuf,
    /// Why the scan stopped before the end of the file, if it did.
    pub stopped: Option<String>,
}

/// Reads a segment from the start, verifying every batch, and rebuilds its index. Stops at the first torn,
/// corrupt or out-of-sequence batch: everything from there is not part of the log.
pub fn scan(seg: &SegmentFile, file_len: u64, index_interval: u32) -> Result<ScanOutcome, StoreError> {
    const CHUNK: usize = 8 << 20;
    let mut out = ScanOutcome { base: seg.base, next_offset: seg.base, ..ScanOutcome::default() };
    let mut since_index = u64::MAX;
    let mut pos = 0u64;
    let mut max_ts = i64::MIN;
    'chunks: while pos < file_len {
        let chunk = seg.read_at(pos, (file_len - pos).min(CHUNK as u64) as usize)?;
        let mut p = 0usize;
        while p < chunk.len() {
            let at = pos + p as u64;
            let verified = match batch::check_batch(&chunk[p..]) {
                Ok(h) => Ok(h),
                Err(FrameError::Incomplete { needed, .. }) if at + needed as u64 > file_len => {
                    out.stopped = Some(format!("torn batch at byte {at}"));
                    break 'chunks;
                }
                // The batch continues past this chunk: re-read from its start.
                Err(FrameError::Incomplete { .. }) if p > 0 => break,
                // A batch larger than a whole chunk: read it on its own.
                Err(FrameError::Incomplete { needed, .. }) => batch::check_batch(&seg.read_at(at, needed)?),
                Err(e) => Err(e),
            };
            match verified {
                Ok(h) => {
                    if !accept(&mut out, &h, at, &mut since_index, index_interval, &mut max_ts) {
                        break 'chunks;
                    }
                    p += h.total_len;
                    if p > chunk.len() {
                        break;
                    }
                }
                Err(e) => {
                    out.stopped = Some(format!("invalid batch at byte {at}: {e}"));
                    break 'chunks;
                }
            }
        }
        pos += p as u64;
    }
    Ok(out)
}

/// Adds one verified batch at `position` to a scan, or records why the log ends before it.
fn accept(
    out: &mut ScanOutcome,
    h: &BatchHeader,
    position: u64,
    since_index: &mut u64,
    interval: u32,
    max_ts: &mut i64,
) -> bool {
    if h.base_offset != out.next_offset {
        out.stopped = Some(format!(
            "batch at byte {position} has base offset {} where {} was expected",
            h.base_offset, out.next_offset
        ));
        return false;
    }
    *max_ts = (*max_ts).max(h.max_timestamp);
    if *since_index >= u64::from(interval) {
        out.index.push((h.base_offset - out.base) as u32, position as u32, *max_ts);
        *since_index = 0;
    }
    *since_index += h.total_len as u64;
    out.first_ts.get_or_insert(h.base_timestamp);
    out.max_ts = Some(*max_ts);
    out.next_offset = h.next_offset();
    out.valid_len = position + h.total_len as u64;
    true
}
