//! Sparse per-segment indexes, so reads by offset and by timestamp never scan a whole log.
//!
//! Offset index entries are `(relative offset u32, byte position u32)`, time index entries are
//! `(max timestamp so far i64, relative offset u32)`, both little-endian and written at batch starts, one per
//! `index_interval_bytes` of log. The active segment keeps them in memory (rebuilt by the recovery scan); a
//! sealed segment writes them to `.index` / `.timeindex` once, atomically, and maps them lazily.

use std::fs::File;
use std::ops::Deref;

use memmap2::Mmap;

pub const OFFSET_ENTRY: usize = 8;
pub const TIME_ENTRY: usize = 12;

/// Index bytes in memory or mapped from a sealed segment's file.
#[derive(Debug)]
pub enum IndexBytes {
    Owned(Vec<u8>),
    Mapped(Mmap),
}

impl Deref for IndexBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            IndexBytes::Owned(v) => v,
            IndexBytes::Mapped(m) => m,
        }
    }
}

impl IndexBytes {
    /// Maps a sealed index file. The file is never written again, so the mapping cannot change under us.
    pub fn map(file: &File, entry: usize) -> std::io::Result<IndexBytes> {
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Ok(IndexBytes::Owned(Vec::new()));
        }
        // SAFETY: sealed index files are written once (tmp + rename) and never modified or truncated while the
        // engine runs; the engine holds the data directory's lock so no other process writes them.
        let map = unsafe { Mmap::map(file)? };
        if map.len() % entry != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "index length is not whole entries",
            ));
        }
        Ok(IndexBytes::Mapped(map))
    }
}

/// The in-memory indexes of the active segment.
#[derive(Debug, Default, Clone)]
pub struct IndexBuf {
    pub offsets: Vec<u8>,
    pub times: Vec<u8>,
}

impl IndexBuf {
    pub fn push(&mut self, rel_offset: u32, position: u32, max_ts_so_far: i64) {
        self.offsets.extend_from_slice(&rel_offset.to_le_bytes());
        self.offsets.extend_from_slice(&position.to_le_bytes());
        self.times.extend_from_slice(&max_ts_so_far.to_le_bytes());
        self.times.extend_from_slice(&rel_offset.to_le_bytes());
    }
}

fn offset_entry(bytes: &[u8], i: usize) -> (u32, u32) {
    let e = &bytes[i * OFFSET_ENTRY..(i + 1) * OFFSET_ENTRY];
    (u32::from_le_bytes(e[0..4].try_into().expect("4")), u32::from_le_bytes(e[4..8].try_into().expect("4")))
}

fn time_entry(bytes: &[u8], i: usize) -> (i64, u32) {
    let e = &bytes[i * TIME_ENTRY..(i + 1) * TIME_ENTRY];
    (i64::from_le_bytes(e[0..8].try_into().expect("8")), u32::from_le_bytes(e[8..12].try_into().expect("4")))
}

/// Byte position of the batch holding `rel_offset`, or a batch before it: the entry with the largest relative
/// offset `<= rel_offset`. `0` when no entry qualifies (scan from the segment start).
pub fn position_for_offset(offsets: &[u8], rel_offset: u32) -> u32 {
    let n = offsets.len() / OFFSET_ENTRY;
    // Entries are sorted by relative offset: find the first entry past the target, step back one.
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if offset_entry(offsets, mid).0 <= rel_offset {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 { 0 } else { offset_entry(offsets, lo - 1).1 }
}

/// Relative offset of a batch from which a scan for the first record with timestamp `>= ts` can start: the
/// last entry whose running max timestamp is `< ts` (every record up to it is older). `0` when none.
pub fn start_for_timestamp(times: &[u8], ts: i64) -> u32 {
    let n = times.len() / TIME_ENTRY;
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if time_entry(times, mid).0 < ts {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 { 0 } else { time_entry(times, lo - 1).1 }
}

/// The last time entry: a sealed segment's max timestamp.
pub fn last_time(times: &[u8]) -> Option<i64> {
    let n = times.len() / TIME_ENTRY;
    (n > 0).then(|| time_entry(times, n - 1).0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_index_points_at_segment_start() {
        assert_eq!(position_for_offset(&[], 10), 0);
        assert_eq!(start_for_timestamp(&[], 10), 0);
        assert_eq!(last_time(&[]), None);
    }

    proptest! {
        #[test]
        fn offset_lookup_returns_greatest_entry_not_after_target(
            mut rels in prop::collection::btree_set(0u32..10_000, 0..200),
            target in 0u32..10_100,
        ) {
            let rels: Vec<u32> = std::mem::take(&mut rels).into_iter().collect();
            let mut idx = IndexBuf::default();
            for (i, r) in rels.iter().enumerate() {
                idx.push(*r, (i as u32) * 100, i as i64);
            }
            let expected = rels.iter().enumerate().rfind(|(_, r)| **r <= target).map_or(0, |(i, _)| i as u32 * 100);
            prop_assert_eq!(position_for_offset(&idx.offsets, target), expected);
        }

        #[test]
        fn time_lookup_returns_last_entry_strictly_older(
            mut steps in prop::collection::vec(0i64..50, 0..200),
            target in 0i64..5_000,
        ) {
            let mut idx = IndexBuf::default();
            let mut ts = 0;
            let mut entries = Vec::new();
            for (i, s) in std::mem::take(&mut steps).into_iter().enumerate() {
                ts += s;
                idx.push(i as u32 * 3, 0, ts);
                entries.push((ts, i as u32 * 3));
            }
            let expected = entries.iter().rfind(|(t, _)| *t < target).map_or(0, |(_, r)| *r);
            prop_assert_eq!(start_for_timestamp(&idx.times, target), expected);
            prop_assert_eq!(last_time(&idx.times), entries.last().map(|e| e.0));
        }
    }
}
