//! An in-memory [`LogStore`] for the handler tests: a test double for HTTP logic only, not a backend (the real
//! engine has its own conformance and integration tests).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use esgf_events_engine::{
    AppendOutcome, LogStore, NewRecord, PartitionOffsets, ReadLimits, ReadResult, Record, Retention,
    RetentionReport, StoreError, TopicConfig, TopicInfo, validate_topic_name,
};
use tokio::sync::watch;

#[derive(Default)]
struct Partition {
    /// Offset of `records[0]` (moves forward when the test simulates retention).
    earliest: u64,
    records: Vec<Record>,
}

impl Partition {
    fn latest(&self) -> u64 {
        self.earliest + self.records.len() as u64
    }
}

struct Topic {
    info: TopicInfo,
    partitions: Vec<Partition>,
}

pub(crate) struct FakeStore {
    topics: Mutex<BTreeMap<String, Topic>>,
    /// Bumped on every append, so waiters re-check.
    appended: watch::Sender<u64>,
    /// How many `wait_for` calls are in progress: lets tests know a long-poll is parked without sleeping.
    pub(crate) waiters: watch::Sender<usize>,
    now_ms: AtomicI64,
    pub(crate) appends: AtomicUsize,
    /// How many `read` calls were made.
    pub(crate) reads: AtomicUsize,
}

impl FakeStore {
    pub(crate) fn new() -> Self {
        FakeStore {
            topics: Mutex::new(BTreeMap::new()),
            appended: watch::Sender::new(0),
            waiters: watch::Sender::new(0),
            now_ms: AtomicI64::new(1_795_773_600_000),
            appends: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
        }
    }

    /// The time the next append is stamped with.
    pub(crate) fn set_now_ms(&self, ms: i64) {
        self.now_ms.store(ms, Ordering::SeqCst);
    }

    /// Simulates retention: drops every record of the partition below `earliest`.
    pub(crate) fn truncate_before(&self, topic: &str, partition: u32, earliest: u64) {
        let mut topics = self.lock();
        let Some(p) = topics.get_mut(topic).and_then(|t| t.partitions.get_mut(partition as usize)) else {
            panic!("no {topic}/{partition}");
        };
        let drop = (earliest.saturating_sub(p.earliest) as usize).min(p.records.len());
        p.records.drain(..drop);
        p.earliest += drop as u64;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Topic>> {
        self.topics.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn with_partition<T>(
        &self,
        topic: &str,
        partition: u32,
        f: impl FnOnce(&mut Partition) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut topics = self.lock();
        let t = topics.get_mut(topic).ok_or_else(|| StoreError::TopicNotFound(topic.to_owned()))?;
        let partitions = t.info.partitions;
        let p = t.partitions.get_mut(partition as usize).ok_or_else(|| StoreError::PartitionNotFound {
            topic: topic.to_owned(),
            partition,
            partitions,
        })?;
        f(p)
    }
}

#[async_trait]
impl LogStore for FakeStore {
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo, StoreError> {
        validate_topic_name(name)?;
        let mut topics = self.lock();
        if topics.contains_key(name) {
            return Err(StoreError::TopicExists(name.to_owned()));
        }
        let info = TopicInfo {
            name: name.to_owned(),
            partitions: config.partitions,
            retention: config.retention,
            created_ms: self.now_ms.load(Ordering::SeqCst),
        };
        let partitions = (0..config.partitions).map(|_| Partition::default()).collect();
        topics.insert(name.to_owned(), Topic { info: info.clone(), partitions });
        Ok(info)
    }

    async fn delete_topic(&self, name: &str) -> Result<(), StoreError> {
        self.lock().remove(name).map(|_| ()).ok_or_else(|| StoreError::TopicNotFound(name.to_owned()))
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>, StoreError> {
        Ok(self.lock().values().map(|t| t.info.clone()).collect())
    }

    async fn describe_topic(&self, name: &str) -> Result<TopicInfo, StoreError> {
        self.lock()
            .get(name)
            .map(|t| t.info.clone())
            .ok_or_else(|| StoreError::TopicNotFound(name.to_owned()))
    }

    async fn set_retention(&self, name: &str, retention: Retention) -> Result<TopicInfo, StoreError> {
        let mut topics = self.lock();
        let t = topics.get_mut(name).ok_or_else(|| StoreError::TopicNotFound(name.to_owned()))?;
        t.info.retention = retention;
        Ok(t.info.clone())
    }

    async fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<NewRecord>,
    ) -> Result<AppendOutcome, StoreError> {
        if records.is_empty() {
            return Err(StoreError::InvalidArgument("empty batch".into()));
        }
        let now = self.now_ms.load(Ordering::SeqCst);
        let outcome = self.with_partition(topic, partition, |p| {
            let base_offset = p.latest();
            for (i, r) in records.into_iter().enumerate() {
                p.records.push(Record {
                    offset: base_offset + i as u64,
                    timestamp_ms: r.timestamp_ms.unwrap_or(now),
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                });
            }
            Ok(AppendOutcome { base_offset, last_offset: p.latest() - 1 })
        })?;
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.appended.send_modify(|n| *n += 1);
        Ok(outcome)
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<ReadResult, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.with_partition(topic, partition, |p| {
            let (earliest, latest) = (p.earliest, p.latest());
            if offset < earliest || offset > latest {
                return Err(StoreError::OffsetOutOfRange {
                    topic: topic.to_owned(),
                    partition,
                    requested: offset,
                    earliest,
                    latest,
                });
            }
            let records: Vec<Record> =
                p.records[(offset - earliest) as usize..].iter().take(limits.max_records).cloned().collect();
            let next_offset = offset + records.len() as u64;
            Ok(ReadResult { records, next_offset, earliest, latest })
        })
    }

    async fn offsets(&self, topic: &str, partition: u32) -> Result<PartitionOffsets, StoreError> {
        self.with_partition(topic, partition, |p| {
            Ok(PartitionOffsets { partition, earliest: p.earliest, latest: p.latest() })
        })
    }

    async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        self.with_partition(topic, partition, |p| {
            Ok(p.records.iter().find(|r| r.timestamp_ms >= timestamp_ms).map(|r| r.offset))
        })
    }

    async fn wait_for(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<bool, StoreError> {
        let mut appended = self.appended.subscribe();
        let has_record = || self.with_partition(topic, partition, |p| Ok(p.latest() > offset));
        if has_record()? {
            return Ok(true);
        }
        self.waiters.send_modify(|n| *n += 1);
        let arrived =
            tokio::time::timeout(timeout, appended.wait_for(|_| has_record().unwrap_or(true))).await;
        self.waiters.send_modify(|n| *n -= 1);
        Ok(arrived.is_ok() && has_record()?)
    }

    async fn enforce_retention(&self) -> Result<RetentionReport, StoreError> {
        Ok(RetentionReport::default())
    }

    async fn shutdown(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
