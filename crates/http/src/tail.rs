//! The recent tail of each followed partition, shared by the event streams following it.
//!
//! When an event is published, every stream following its partition wakes up wanting the same record, formatted
//! the same way. Without sharing, N followers cost N log reads (each a trip to a blocking thread) and N JSON
//! scans per event. With this cache the first follower reads and the others find the record here, with its SSE
//! rendering already done (`event:` and `data:` lines; each stream only adds its own `id:` line).
//!
//! Only the tail is cached: records a read finds near the end of the log. A stream catching up from far back
//! reads the log itself, without evicting what live followers share. Bounded: [`MAX_TAIL_EVENTS`] records per
//! partition and [`MAX_CACHED_BYTES`] over all partitions; a partition's tail lives as long as a stream follows
//! it. Records never change once written, so a cached one is always right.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use bytes::Bytes;
use esgf_events_engine::Record;

/// Records kept per partition: a few read batches, enough for followers that lag a little.
pub(crate) const MAX_TAIL_EVENTS: usize = 1024;
/// Record bytes kept over all partitions.
pub(crate) const MAX_CACHED_BYTES: usize = 64 << 20;
/// A read ending at most this many records before the log end counts as a tail read, whose records are shared.
pub(crate) const TAIL_WINDOW: u64 = MAX_TAIL_EVENTS as u64;

/// One stored record and, once some stream needed them, its renderings.
pub(crate) struct SharedRecord {
    pub(crate) record: Record,
    renderings: [OnceLock<Bytes>; 2],
}

impl SharedRecord {
    pub(crate) fn new(record: Record) -> Arc<SharedRecord> {
        Arc::new(SharedRecord { record, renderings: [OnceLock::new(), OnceLock::new()] })
    }

    /// Rendering number `which` (one per output format), made by `render` the first time it is asked for.
    pub(crate) fn rendering(&self, which: usize, render: impl FnOnce(&Record) -> Bytes) -> Bytes {
        self.renderings[which].get_or_init(|| render(&self.record)).clone()
    }

    fn size(&self) -> usize {
        self.record.value.len() + self.record.key.as_ref().map_or(0, Bytes::len) + 128
    }
}

/// Which partition: topic name, its creation time (a topic recreated under the same name is another log), and
/// the partition number.
type TailKey = (String, i64, u32);

/// Every followed partition's tail.
#[derive(Default)]
pub(crate) struct Tails {
    tails: Mutex<HashMap<TailKey, Weak<Tail>>>,
    /// Bytes cached over all tails.
    bytes: Arc<AtomicUsize>,
}

impl Tails {
    /// The tail of one partition, shared with every other stream following it; kept while someone holds it.
    pub(crate) fn follow(&self, topic: &str, created_ms: i64, partition: u32) -> Arc<Tail> {
        let mut tails = self.tails.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (topic.to_owned(), created_ms, partition);
        if let Some(tail) = tails.get(&key).and_then(Weak::upgrade) {
            return tail;
        }
        // Forget tails nobody follows any more while we are here, so the map stays as small as the followers.
        tails.retain(|_, tail| tail.strong_count() > 0);
        let tail = Arc::new(Tail {
            ring: Mutex::new(Ring::default()),
            fill: tokio::sync::Mutex::new(()),
            known_end: AtomicU64::new(0),
            bytes: Arc::clone(&self.bytes),
        });
        tails.insert(key, Arc::downgrade(&tail));
        tail
    }

    /// Bytes cached over all tails (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn cached_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The cached tail of one partition.
pub(crate) struct Tail {
    ring: Mutex<Ring>,
    /// Held while reading the log for this tail, so followers woken by one append read it once between them.
    pub(crate) fill: tokio::sync::Mutex<()>,
    /// The largest log end any read of this partition reported: followers at or past it that have not been woken
    /// since know there is nothing to read, without asking the log.
    known_end: AtomicU64,
    bytes: Arc<AtomicUsize>,
}

/// Consecutive records `first..first + records.len()`.
#[derive(Default)]
struct Ring {
    first: u64,
    records: VecDeque<Arc<SharedRecord>>,
    bytes: usize,
}

impl Ring {
    fn end(&self) -> u64 {
        self.first + self.records.len() as u64
    }
}

impl Tail {
    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Up to `max` consecutive records from `offset`, if the tail holds `offset`.
    pub(crate) fn get(&self, offset: u64, max: usize) -> Option<Vec<Arc<SharedRecord>>> {
        let ring = self.ring();
        if offset < ring.first || offset >= ring.end() {
            return None;
        }
        let skip = usize::try_from(offset - ring.first).ok()?;
        Some(ring.records.iter().skip(skip).take(max).cloned().collect())
    }

    /// Records that a read found the log ending at `end`.
    pub(crate) fn saw_end(&self, end: u64) {
        self.known_end.fetch_max(end, Ordering::Relaxed);
    }

    /// The largest log end seen (see [`Tail::saw_end`]).
    pub(crate) fn known_end(&self) -> u64 {
        self.known_end.load(Ordering::Relaxed)
    }

    /// Whether `offset` is at or past the end of what the tail holds: a read there is a tail read.
    pub(crate) fn reaches(&self, offset: u64) -> bool {
        let ring = self.ring();
        ring.records.is_empty() || offset >= ring.end()
    }

    /// Adds records read at the tail of the log (consecutive, ascending); what the tail already holds is skipped
    /// and a gap starts the tail afresh.
    pub(crate) fn insert(&self, records: &[Arc<SharedRecord>]) {
        let mut ring = self.ring();
        for shared in records {
            let offset = shared.record.offset;
            if !ring.records.is_empty() && offset < ring.end() {
                continue;
            }
            if ring.records.is_empty() || offset > ring.end() {
                self.clear(&mut ring);
                ring.first = offset;
            }
            let size = shared.size();
            while !ring.records.is_empty()
                && (ring.records.len() >= MAX_TAIL_EVENTS
                    || self.bytes.load(Ordering::Relaxed) + size > MAX_CACHED_BYTES)
            {
                self.pop_front(&mut ring);
            }
            if self.bytes.load(Ordering::Relaxed) + size > MAX_CACHED_BYTES {
                // Other tails hold the whole budget: this one stays empty rather than grow the cache.
                return;
            }
            ring.records.push_back(Arc::clone(shared));
            ring.bytes += size;
            self.bytes.fetch_add(size, Ordering::Relaxed);
        }
    }

    fn pop_front(&self, ring: &mut Ring) {
        if let Some(shared) = ring.records.pop_front() {
            let size = shared.size();
            ring.first += 1;
            ring.bytes -= size;
            self.bytes.fetch_sub(size, Ordering::Relaxed);
        }
    }

    fn clear(&self, ring: &mut Ring) {
        self.bytes.fetch_sub(ring.bytes, Ordering::Relaxed);
        ring.records.clear();
        ring.bytes = 0;
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let bytes = self.ring().bytes;
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(offset: u64, size: usize) -> Arc<SharedRecord> {
        SharedRecord::new(Record {
            offset,
            timestamp_ms: 0,
            key: None,
            value: Bytes::from(vec![b'x'; size]),
            headers: Vec::new(),
        })
    }

    fn offsets(records: &[Arc<SharedRecord>]) -> Vec<u64> {
        records.iter().map(|r| r.record.offset).collect()
    }

    #[test]
    fn followers_of_one_partition_share_its_tail_while_any_follows() {
        let tails = Tails::default();
        let a = tails.follow("t", 1, 0);
        let b = tails.follow("t", 1, 0);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &tails.follow("t", 1, 1)), "another partition");
        assert!(!Arc::ptr_eq(&a, &tails.follow("t", 2, 0)), "a topic recreated under the same name");
        a.insert(&[shared(5, 10)]);
        assert!(tails.cached_bytes() > 0);
        drop((a, b));
        assert_eq!(tails.cached_bytes(), 0, "an unfollowed tail gives its bytes back");
        assert!(tails.follow("t", 1, 0).get(5, 1).is_none(), "and is gone");
    }

    #[test]
    fn the_tail_holds_consecutive_records_and_restarts_after_a_gap() {
        let tails = Tails::default();
        let tail = tails.follow("t", 0, 0);
        assert!(tail.reaches(0));
        tail.insert(&[shared(3, 1), shared(4, 1), shared(5, 1)]);
        assert_eq!(offsets(&tail.get(4, 10).expect("held")), [4, 5]);
        assert_eq!(offsets(&tail.get(3, 2).expect("held")), [3, 4]);
        assert!(tail.get(2, 10).is_none() && tail.get(6, 10).is_none());
        assert!(!tail.reaches(5) && tail.reaches(6));
        tail.insert(&[shared(5, 1), shared(6, 1)]);
        assert_eq!(offsets(&tail.get(3, 10).expect("held")), [3, 4, 5, 6], "overlap skipped");
        tail.insert(&[shared(9, 1)]);
        assert!(tail.get(3, 10).is_none(), "a gap restarts the tail");
        assert_eq!(offsets(&tail.get(9, 10).expect("held")), [9]);
    }

    #[test]
    fn the_tail_is_bounded_in_records_and_bytes() {
        let tails = Tails::default();
        let tail = tails.follow("t", 0, 0);
        let records: Vec<_> = (0..MAX_TAIL_EVENTS as u64 + 10).map(|o| shared(o, 1)).collect();
        tail.insert(&records);
        assert!(tail.get(9, 1).is_none());
        assert_eq!(tail.get(10, usize::MAX).map(|r| r.len()), Some(MAX_TAIL_EVENTS));

        let big = MAX_CACHED_BYTES / 4;
        let other = tails.follow("u", 0, 0);
        other.insert(&(0..8).map(|o| shared(o, big)).collect::<Vec<_>>());
        assert!(tails.cached_bytes() <= MAX_CACHED_BYTES);
        assert!(other.get(7, 1).is_some() && other.get(0, 1).is_none(), "oldest evicted first");
    }

    #[test]
    fn a_rendering_is_made_once() {
        let record = shared(0, 3);
        let mut calls = 0;
        for _ in 0..3 {
            let bytes = record.rendering(1, |r| {
                calls += 1;
                r.value.clone()
            });
            assert_eq!(&bytes[..], b"xxx");
        }
        assert_eq!(calls, 1);
    }
}
