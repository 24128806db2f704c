//! Embedded-engine behaviour beyond the shared conformance suite: crash recovery from torn and corrupt tails,
//! segment rolls, sealed indexes, retention with a controlled clock, the data-directory lock.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use esgf_events_engine::{
    EmbeddedConfig, EmbeddedStore, LogStore, ManualClock, NewRecord, ReadLimits, Retention, StoreError,
    SystemClock, TopicConfig,
};
use proptest::prelude::*;

fn config(dir: &Path) -> EmbeddedConfig {
    let mut c = EmbeddedConfig::new(dir);
    c.segment_max_bytes = 16 << 10;
    c.index_interval_bytes = 512;
    c
}

fn value(i: u64) -> Bytes {
    Bytes::from(format!("{{\"event\":{i},\"pad\":\"{:0>180}\"}}", i))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn open(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open(config(dir), Arc::new(SystemClock)).unwrap()
}

async fn read_all(s: &EmbeddedStore, topic: &str) -> Result<Vec<esgf_events_engine::Record>, StoreError> {
    let mut out = Vec::new();
    let mut off = s.offsets(topic, 0).await?.earliest;
    loop {
        let r = s.read(topic, 0, off, ReadLimits::default()).await?;
        if r.records.is_empty() {
            return Ok(out);
        }
        off = r.next_offset;
        out.extend(r.records);
    }
}

/// Writes `batches` batches of 1..=3 records; returns the offset after each batch.
async fn fill(s: &EmbeddedStore, batches: u64) -> Vec<u64> {
    s.create_topic("t", TopicConfig::default()).await.unwrap();
    let mut ends = Vec::new();
    let mut n = 0;
    for b in 0..batches {
        let size = 1 + b % 3;
        let out =
            s.append("t", 0, (n..n + size).map(|i| NewRecord::from_value(value(i))).collect()).await.unwrap();
        n = out.last_offset + 1;
        ends.push(n);
    }
    ends
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("topics/t/0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn active_segment(dir: &Path) -> PathBuf {
    segments(dir).pop().unwrap()
}

/// Reopens after damage and checks the log is exactly a prefix of whole batches that ends where a batch ends,
/// holds the right values, and accepts appends at the next offset.
async fn check_prefix_after_reopen(dir: &Path, ends: &[u64]) -> u64 {
    let s = open(dir).await;
    let all = read_all(&s, "t").await.unwrap();
    let n = all.len() as u64;
    assert!(n == 0 || ends.contains(&n), "recovered {n} records: not a whole-batch prefix");
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        assert_eq!(r.value, value(i as u64));
    }
    let next = s.append("t", 0, vec![NewRecord::from_value("after")]).await.unwrap();
    assert_eq!(next.base_offset, n, "next append continues right after the recovered prefix");
    s.shutdown().await.unwrap();
    n
}

#[test]
fn recovery_from_every_truncation_point_of_the_active_tail() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let ends = rt.block_on(async {
        let s = open(dir.path()).await;
        let ends = fill(&s, 6).await;
        s.shutdown().await.unwrap();
        ends
    });
    let active = active_segment(dir.path());
    let original = std::fs::read(&active).unwrap();
    let pristine = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), pristine.path());
    for cut in (0..original.len()).rev() {
        let work = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), work.path());
        let f = std::fs::OpenOptions::new().write(true).open(active_segment(work.path())).unwrap();
        f.set_len(cut as u64).unwrap();
        rt.block_on(check_prefix_after_reopen(work.path(), &ends));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn flipped_byte_in_active_tail_is_cut_never_served(pos_frac in 0.0f64..1.0, bit in 0u8..8) {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let ends = rt.block_on(async {
            let s = open(dir.path()).await;
            let ends = fill(&s, 10).await;
            s.shutdown().await.unwrap();
            ends
        });
        let active = active_segment(dir.path());
        let mut bytes = std::fs::read(&active).unwrap();
        prop_assume!(!bytes.is_empty());
        let pos = ((bytes.len() - 1) as f64 * pos_frac) as usize;
        bytes[pos] ^= 1 << bit;
        std::fs::write(&active, &bytes).unwrap();
        let n = rt.block_on(check_prefix_after_reopen(dir.path(), &ends));
        // Everything before the damaged batch survives.
        prop_assert!(n <= *ends.last().unwrap());
    }

    #[test]
    fn flipped_byte_in_sealed_segment_is_detected_on_read(pos_frac in 0.0f64..1.0, bit in 0u8..8) {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        rt.block_on(async {
            let s = open(dir.path()).await;
            fill(&s, 200).await;
            s.shutdown().await.unwrap();
        });
        let sealed = segments(dir.path()).remove(0);
        let mut bytes = std::fs::read(&sealed).unwrap();
        let pos = ((bytes.len() - 1) as f64 * pos_frac) as usize;
        bytes[pos] ^= 1 << bit;
        std::fs::write(&sealed, &bytes).unwrap();
        rt.block_on(async {
            let s = open(dir.path()).await;
            // Reading the whole log must fail on the damaged batch rather than return altered records.
            match read_all(&s, "t").await {
                Err(StoreError::Corrupt { .. }) => {}
                Ok(all) => {
                    for (i, r) in all.iter().enumerate() {
                        assert_eq!(r.value, value(i as u64), "altered record served");
                    }
                    panic!("damage at byte {pos} went unnoticed");
                }
                Err(e) => panic!("unexpected error {e}"),
            }
            s.shutdown().await.unwrap();
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_roll_by_size_and_sealed_indexes_serve_reads_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let ends = fill(&s, 300).await;
    s.shutdown().await.unwrap();
    let segs = segments(dir.path());
    assert!(segs.len() > 5, "expected several segments, got {}", segs.len());
    for seg in &segs[..segs.len() - 1] {
        assert!(std::fs::metadata(seg).unwrap().len() <= 16 << 10);
        assert!(seg.with_extension("index").exists() && seg.with_extension("timeindex").exists());
    }
    // Remove one sealed index: it is rebuilt at open.
    std::fs::remove_file(segs[1].with_extension("index")).unwrap();
    let s = open(dir.path()).await;
    assert!(segs[1].with_extension("index").exists());
    let last = *ends.last().unwrap();
    for from in [0, 1, 57, 58, 59, 200, last - 1] {
        let r = s.read("t", 0, from, ReadLimits { max_records: 3, max_bytes: 1 << 20 }).await.unwrap();
        assert_eq!(r.records[0].offset, from);
        assert_eq!(r.records[0].value, value(from));
    }
    assert_eq!(read_all(&s, "t").await.unwrap().len() as u64, last);
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_deletes_expired_segments_and_rolls_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let s = EmbeddedStore::open(config(dir.path()), clock.clone()).unwrap();
    let day = Duration::from_secs(86_400);
    s.create_topic(
        "t",
        TopicConfig { partitions: 1, retention: Retention { max_age: Some(day), max_bytes: None } },
    )
    .await
    .unwrap();
    for i in 0..200 {
        s.append("t", 0, vec![NewRecord::from_value(value(i))]).await.unwrap();
    }
    clock.advance_ms(12 * 3600 * 1000);
    for i in 200..260 {
        s.append("t", 0, vec![NewRecord::from_value(value(i))]).await.unwrap();
    }
    // Nothing is a day old yet.
    assert_eq!(s.enforce_retention().await.unwrap().segments_deleted, 0);
    assert_eq!(s.offsets("t", 0).await.unwrap().earliest, 0);
    // 13 hours later the first 200 are over a day old; whole segments holding only them go.
    clock.advance_ms(13 * 3600 * 1000);
    let r = s.enforce_retention().await.unwrap();
    assert!(r.segments_deleted > 0);
    let o = s.offsets("t", 0).await.unwrap();
    assert!(o.earliest > 0 && o.earliest <= 200, "earliest {}", o.earliest);
    assert!(matches!(
        s.read("t", 0, 0, ReadLimits::default()).await,
        Err(StoreError::OffsetOutOfRange { .. })
    ));
    // Two days on, everything has expired: the active segment rolls so its data really goes.
    clock.advance_ms(2 * 86_400 * 1000);
    s.enforce_retention().await.unwrap();
    let o = s.offsets("t", 0).await.unwrap();
    assert_eq!((o.earliest, o.latest), (260, 260), "all expired data deleted, offsets keep counting");
    assert_eq!(s.append("t", 0, vec![NewRecord::from_value("new")]).await.unwrap().base_offset, 260);
    s.shutdown().await.unwrap();
    drop(s);
    // The deletions survive a restart.
    let s = EmbeddedStore::open(config(dir.path()), clock.clone()).unwrap();
    assert_eq!(s.offsets("t", 0).await.unwrap().earliest, 260);
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_keeps_the_newest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    s.create_topic(
        "t",
        TopicConfig { partitions: 1, retention: Retention { max_age: None, max_bytes: Some(40 << 10) } },
    )
    .await
    .unwrap();
    for i in 0..600 {
        s.append("t", 0, vec![NewRecord::from_value(value(i))]).await.unwrap();
    }
    s.enforce_retention().await.unwrap();
    let size: u64 = segments(dir.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(size <= (40 << 10) + (16 << 10), "kept {size} bytes");
    let o = s.offsets("t", 0).await.unwrap();
    assert!(o.earliest > 0);
    assert_eq!(o.latest, 600);
    let r = s.read("t", 0, o.earliest, ReadLimits::default()).await.unwrap();
    assert_eq!(r.records[0].value, value(o.earliest));
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let mut c = config(dir.path());
    c.segment_max_age = Duration::from_secs(3600);
    let s = EmbeddedStore::open(c, clock.clone()).unwrap();
    s.create_topic(
        "t",
        TopicConfig { partitions: 1, retention: Retention { max_age: None, max_bytes: None } },
    )
    .await
    .unwrap();
    s.append("t", 0, vec![NewRecord::from_value("a")]).await.unwrap();
    clock.advance_ms(3_600_001);
    // An idle partition rolls on the retention timer...
    s.enforce_retention().await.unwrap();
    assert_eq!(segments(dir.path()).len(), 2);
    // ...and a busy one on the next append.
    s.append("t", 0, vec![NewRecord::from_value("b")]).await.unwrap();
    clock.advance_ms(3_600_001);
    s.append("t", 0, vec![NewRecord::from_value("c")]).await.unwrap();
    assert_eq!(segments(dir.path()).len(), 3);
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_is_opened_by_one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    match EmbeddedStore::open(config(dir.path()), Arc::new(SystemClock)) {
        Err(StoreError::InvalidArgument(msg)) => assert!(msg.contains("in use")),
        other => panic!("second open succeeded: {:?}", other.map(|_| ())),
    }
    s.shutdown().await.unwrap();
    drop(s);
    open(dir.path()).await.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_after_shutdown_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    s.create_topic("t", TopicConfig::default()).await.unwrap();
    s.shutdown().await.unwrap();
    assert!(matches!(
        s.append("t", 0, vec![NewRecord::from_value("x")]).await,
        Err(StoreError::ShuttingDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_created_topic_left_by_a_crash_is_not_visible() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).await.shutdown().await.unwrap();
    std::fs::create_dir_all(dir.path().join("staging/ghost/0")).unwrap();
    let s = open(dir.path()).await;
    assert!(s.list_topics().await.unwrap().is_empty());
    assert!(!dir.path().join("staging/ghost").exists());
    s.create_topic("ghost", TopicConfig::default()).await.unwrap();
    s.shutdown().await.unwrap();
}
