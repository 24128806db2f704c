//! The conformance suite every [`LogStore`] backend must pass, written once and run per backend.
//!
//! A backend provides a [`Harness`] and expands [`conformance_suite!`](crate::conformance_suite) in a test
//! module; each case becomes its own `#[tokio::test]`. Cases only use the trait, so a backend that passes
//! them behaves as the transports expect.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Header, LogStore, NewRecord, ReadLimits, Retention, StoreError, TopicConfig};

/// How the suite gets stores of one backend.
#[async_trait]
pub trait Harness: Send + Sync {
    type Store: LogStore;
    /// An empty store, private to this harness.
    async fn open(&self) -> Self::Store;
    /// Shuts `store` down cleanly and opens the same data again.
    async fn reopen(&self, store: Self::Store) -> Self::Store;
}

/// Expands to one `#[tokio::test]` per conformance case, each calling `$harness` for a fresh harness.
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::conformance_suite!(@cases $harness;
            topics_are_created_listed_described_and_deleted,
            invalid_topic_names_and_partition_counts_are_refused,
            appends_get_dense_offsets_and_read_back_identical,
            empty_batch_is_refused,
            concurrent_appends_get_unique_dense_offsets,
            read_limits_bound_records_and_bytes,
            read_outside_retained_range_is_out_of_range,
            partitions_are_independent,
            offset_for_timestamp_finds_first_record_at_or_after,
            wait_for_wakes_on_append_and_times_out,
            data_and_offsets_survive_reopen,
            retention_setting_survives_reopen,
            large_records_roundtrip,
            reads_from_any_offset_across_many_batches,
            deleted_topic_can_be_recreated_empty
        );
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness;
                $crate::conformance::$case(&harness).await;
            }
        )*
    };
}

fn rec(value: &str) -> NewRecord {
    NewRecord::from_value(Bytes::copy_from_slice(value.as_bytes()))
}

fn keyed(key: &str, value: &str, ts: i64) -> NewRecord {
    NewRecord {
        timestamp_ms: Some(ts),
        key: Some(Bytes::copy_from_slice(key.as_bytes())),
        value: Bytes::copy_from_slice(value.as_bytes()),
        headers: vec![Header { name: "content-type".into(), value: Bytes::from_static(b"application/json") }],
    }
}

async fn topic<S: LogStore>(store: &S, name: &str, partitions: u32) {
    store
        .create_topic(name, TopicConfig { partitions, retention: Retention::DEFAULT })
        .await
        .expect("create topic");
}

async fn read_all<S: LogStore>(store: &S, topic: &str, partition: u32) -> Vec<crate::Record> {
    let mut out = Vec::new();
    let mut offset = store.offsets(topic, partition).await.expect("offsets").earliest;
    loop {
        let r = store.read(topic, partition, offset, ReadLimits::default()).await.expect("read");
        if r.records.is_empty() {
            return out;
        }
        offset = r.next_offset;
        out.extend(r.records);
    }
}

pub async fn topics_are_created_listed_described_and_deleted<H: Harness>(h: &H) {
    let s = h.open().await;
    topic(&s, "esgf2.publications", 1).await;
    topic(&s, "a-first", 3).await;
    let names: Vec<String> = s.list_topics().await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, vec!["a-first", "esgf2.publications"]);
    let t = s.describe_topic("a-first").await.unwrap();
    assert_eq!((t.partitions, t.retention), (3, Retention::DEFAULT));
    assert!(matches!(
        s.create_topic("a-first", TopicConfig::default()).await,
        Err(StoreError::TopicExists(n)) if n == "a-first"
    ));
    assert!(matches!(s.describe_topic("nope").await, Err(StoreError::TopicNotFound(_))));
    s.delete_topic("a-first").await.unwrap();
    assert!(matches!(s.describe_topic("a-first").await, Err(StoreError::TopicNotFound(_))));
    assert!(matches!(s.append("a-first", 0, vec![rec("x")]).await, Err(StoreError::TopicNotFound(_))));
    assert!(matches!(s.delete_topic("a-first").await, Err(StoreError::TopicNotFound(_))));
    s.shutdown().await.unwrap();
}

pub async fn invalid_topic_names_and_partition_counts_are_refused<H: Harness>(h: &H) {
    let s = h.open().await;
    for bad in ["", ".", "..", "a/b", "../etc", "sp ace", &"x".repeat(250)] {
        assert!(
            matches!(
                s.create_topic(bad, TopicConfig::default()).await,
                Err(StoreError::InvalidTopicName { .. })
            ),
            "{bad:?} accepted"
        );
    }
    let zero = TopicConfig { partitions: 0, ..TopicConfig::default() };
    assert!(matches!(s.create_topic("ok", zero).await, Err(StoreError::InvalidArgument(_))));
    assert!(s.list_topics().await.unwrap().is_empty());
    s.shutdown().await.unwrap();
}

pub async fn appends_get_dense_offsets_and_read_back_identical<H: Harness>(h: &H) {
    let s = h.open().await;
    topic(&s, "t", 1).await;
    let a = s.append("t", 0, vec![keyed("k0", "{\"n\":0}", 1_000)]).await.unwrap();
    assert_eq!((a.base_offset, a.last_offset), (0, 0));
    let b = s
        .append(
            "t",
            0,
            (1..=3).map(|i| keyed(&format!("k{i}"), &format!("{{\"n\":{i}}}"), 1_000 + i)).collect(),
        )
        .await
        .unwrap();
    assert_eq!((b.base_offset, b.last_offset), (1, 3));
    let c = s.append("t", 0, vec![rec("{}")]).await.unwrap();
    assert_eq!(c.base_offset, 4);
    let all = read_all(&s, "t", 0).await;
    assert_eq!(all.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    for (i, r) in all.iter().take(4).enumerate() {
        assert_eq!(r.value, Bytes::from(format!("{{\"n\":{i}}}")));
        assert_eq!(r.key, Some(Bytes::from(format!("k{i}"))));
        assert_eq!(r.timestamp_ms, 1_000 + i as i64);
        assert_eq!(r.headers[0].name, "content-type");
        assert_eq!(&r.headers[0].value[..], b"application/json");
    }
    assert_eq!(all[4].key, None);
    assert!(all[4].timestamp_ms > 0, "an unstamped record gets the append time");
    let o = s.offsets("t", 0).await.unwrap();
    assert_eq!((o.earliest, o.latest), (0, 5));
    s.shutdown().await.unwrap();
}

pub async fn empty_batch_is_refused<H: Harness>(h: &H) {
    let s = h.open().await;
    topic(&s, "t", 1).await;
    assert!(matches!(s.append("t", 0, vec![]).await, Err(StoreError::InvalidArgument(_))));
    assert_eq!(s.offsets("t", 0).await.unwrap().latest, 0);
    s.shutdown().await.unwrap();
}

pub async fn concurrent_appends_get_unique_dense_offsets<H: Harness>(h: &H) {
    let s = Arc::new(h.open().await);
    topic(&*s, "t", 1).await;
    let mut tasks = Vec::new();
    for producer in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..25 {
                let n = 1 + (i % 3);
                let batch: Vec<_> = (0..n).map(|j| rec(&format!("{producer}-{i}-{j}"))).collect();
                let out = s.append("t", 0, batch).await.unwrap();
                assert_eq!(out.last_offset - out.base_offset + 1, n as u64);
                for j in 0..n {
                    acked.push((out.base_offset + j as u64, format!("{producer}-{i}-{j}")));
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked.sort();
    let all = read_all(&*s, "t", 0).await;
    assert_eq!(all.len(), acked.len());
    for (r, (offset, value)) in all.iter().zip(&acked) {
        assert_eq!(r.offset, *offset);
        assert_eq!(r.value, Bytes::from(value.clone()));
    }
    let offsets: BTreeSet<u64> = acked.iter().map(|a| a.0).collect();
    assert_eq!(offsets, (0..acked.len() as u64).collect());
    s.shutdown().await.unwrap();
}

pub async fn read_limits_bound_records_and_bytes<H: Harness>(h: &H) {
    let s = h.open().await;
    topic(&s, "t", 1).await;
    for i in 0..10 {
        s.append("t", 0, vec![rec(&format!("{i:0>100}"))]).await.unwrap();
    }
    let r = s.read("t", 0, 2, ReadLimits { max_records: 3, max_bytes: 1 << 20 }).await.unwrap();
    assert_eq!(r.records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![2, 3, 4]);
    assert_eq!(r.next_offset, 5);
    let r = s.read("t", 0, 0, ReadLimits { max_records: 100, max_bytes: 1 }).await.unwrap();
    assert_eq!(r.records.len(), 1, "at least one record even when it exceeds max_bytes");
    assert_eq!(r.next_offset, 1);
    let r = s.read("t", 0, 0, ReadLimits { max_records: 100, max_bytes: 450 }).await.unwrap();
    assert!((1..10).contains(&r.records.len()), "byte limit stops the read early: {}", r.records.len());
    s.shutdown().await.unwrap();
}

pub async fn read_outside_retained_range_is_out_of_range<H: Harness>(h: &H) {
    let s = h.open().await;
    topic(&s, "t", 1).await;
    s.append("t", 0, vec![rec("a"), rec("b")]).await.unwrap();
    let r = s.read("t", 0, 2, ReadLimits::default()).await.unwrap();
    assert!(r.records.is_empty());
    assert_eq!((r.next_offset, r.earliest, r.latest), (2, 0, 2));
    match s.read("t", 0, 3, ReadLimits::default()).await {
        Err(StoreError::OffsetOutOfRange { requested, earliest, latest, .. }) => {
            assert_eq!((requested, earliest, latest), (3, 0, 2));
        }
        other => panic!("expected out of range, got {other:?}"),
    }
    s.shutdown().await.unwrap();
}

pub async fn partitions_are_independent<H: Harness>(h: &H) {
    let s = h.open().await;
    topic(&s, "t", 3).await;
    for p in 0..3u32 {
        for i in 0..=p {
            let out = s.append("t", p, vec![rec(&format!("p{p}-{i}"))]).await.unwrap();
            assert_eq!(out.base_offset, u64::from(i));
        }
    }
    for p in 0..3u32 {
        let all = read_all(&s, "t", p).await;
        assert_eq!(all.len(), p as usize + 1);
        assert_eq!(all[0].value, Bytes::from(format!("p{p}-0")));
    }
    assert!(matches!(
        s.append("t", 3, vec![rec("x")]).await,
        Err(StoreError::PartitionNotFound { partition: 3, partitions: 3, .. })
    ));
    assert!(matches!(
        s.read("t", 7, 0, ReadLimits::default()).await,
        Err(StoreError::PartitionNotFound { .. })
    ));
    s.shutdown().await.unwrap();
}

pub async fn offset_for_timestamp_finds_first_record_at_or_after<H: Harness>(h: &H) {
    let s = h.open().await;
    topic(&s, "t", 1).await;
    // Mostly increasing, with some records stamped in the past (producer clocks differ).
    let stamps: Vec<i64> = (0..300).map(|i| 10_000 + i * 10 - if i % 7 == 3 { 45 } else { 0 }).collect();
    for chunk in stamps.chunks(4) {
        s.append("t", 0, chunk.iter().map(|&ts| keyed("k", &format!("{ts:0>200}"), ts)).collect())
            .await
            .unwrap();
    }
    for target in [0, 9_999, 10_000, 10_001, 10_025, 10_600, 12_990, 12_991, 13_000, 99_999] {
        let expected = stamps.iter().position(|&ts| ts >= target).map(|p| p as u64);
        assert_eq!(s.offset_for_timestamp("t", 0, target).await.unwrap(), expected, "target {target}");
    }
    s.shutdown().await.unwrap();
}

pub async fn wait_for_wakes_on_append_and_times_out<H: Harness>(h: &H) {
    let s = Arc::new(h.open().await);
    topic(&*s, "t", 1).await;
    assert!(!s.wait_for("t", 0, 0, Duration::from_millis(50)).await.unwrap());
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move { s.wait_for("t", 0, 0, Duration::from_secs(30)).await.unwrap() })
    };
    tokio::task::yield_now().await;
    s.append("t", 0, vec![rec("x")]).await.unwrap();
    assert!(waiter.await.unwrap());
    assert!(s.wait_for("t", 0, 0, Duration::from_millis(1)).await.unwrap(), "already there");
    s.shutdown().await.unwrap();
}

pub async fn data_and_offsets_survive_reopen<H: Harness>(h: &H) {
    let s = h.open().await;
    topic(&s, "t", 2).await;
    for i in 0..50 {
        s.append("t", i % 2, vec![keyed(&format!("k{i}"), &format!("v{i}"), 1_000 + i64::from(i))])
            .await
            .unwrap();
    }
    let before = (read_all(&s, "t", 0).await, read_all(&s, "t", 1).await);
    let s = h.reopen(s).await;
    assert_eq!(s.describe_topic("t").await.unwrap().partitions, 2);
    let after = (read_all(&s, "t", 0).await, read_all(&s, "t", 1).await);
    assert_eq!(before, after);
    let next = s.append("t", 0, vec![rec("after")]).await.unwrap();
    assert_eq!(next.base_offset, 25, "offsets continue, never reused");
    s.shutdown().await.unwrap();
}

pub async fn retention_setting_survives_reopen<H: Harness>(h: &H) {
    let s = h.open().await;
    topic(&s, "t", 1).await;
    let r = Retention { max_age: Some(Duration::from_secs(3600)), max_bytes: Some(1 << 30) };
    assert_eq!(s.set_retention("t", r).await.unwrap().retention, r);
    let s = h.reopen(s).await;
    assert_eq!(s.describe_topic("t").await.unwrap().retention, r);
    let forever = Retention { max_age: None, max_bytes: None };
    s.set_retention("t", forever).await.unwrap();
    let s = h.reopen(s).await;
    assert_eq!(s.describe_topic("t").await.unwrap().retention, forever);
    s.shutdown().await.unwrap();
}

pub async fn large_records_roundtrip<H: Harness>(h: &H) {
    let s = h.open().await;
    topic(&s, "t", 1).await;
    let big: String = (0..(1 << 20)).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    s.append("t", 0, vec![rec(&big), rec("small")]).await.unwrap();
    let all = read_all(&s, "t", 0).await;
    assert_eq!(all[0].value.len(), 1 << 20);
    assert_eq!(all[0].value, Bytes::from(big));
    assert_eq!(all[1].value, Bytes::from_static(b"small"));
    s.shutdown().await.unwrap();
}

pub async fn reads_from_any_offset_across_many_batches<H: Harness>(h: &H) {
    let s = h.open().await;
    topic(&s, "t", 1).await;
    let mut n = 0u64;
    for i in 0..400u64 {
        let size = 1 + (i % 5) as usize;
        s.append("t", 0, (0..size).map(|j| rec(&format!("{:0>300}", n + j as u64))).collect()).await.unwrap();
        n += size as u64;
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..60 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let from = rng % n;
        let r = s.read("t", 0, from, ReadLimits { max_records: 7, max_bytes: 1 << 20 }).await.unwrap();
        assert_eq!(r.records[0].offset, from);
        for (k, rec) in r.records.iter().enumerate() {
            assert_eq!(rec.offset, from + k as u64);
            assert_eq!(rec.value, Bytes::from(format!("{:0>300}", from + k as u64)));
        }
    }
    s.shutdown().await.unwrap();
}

pub async fn deleted_topic_can_be_recreated_empty<H: Harness>(h: &H) {
    let s = h.open().await;
    topic(&s, "t", 1).await;
    s.append("t", 0, vec![rec("old")]).await.unwrap();
    s.delete_topic("t").await.unwrap();
    topic(&s, "t", 1).await;
    assert_eq!(s.offsets("t", 0).await.unwrap().latest, 0);
    assert!(read_all(&s, "t", 0).await.is_empty());
    s.shutdown().await.unwrap();
}
