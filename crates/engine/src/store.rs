//! The one trait every storage backend implements (the embedded engine now, NATS JetStream later).

use std::time::Duration;

use async_trait::async_trait;

use crate::{
    AppendOutcome, NewRecord, PartitionOffsets, ReadLimits, ReadResult, Retention, RetentionReport,
    StoreError, TopicConfig, TopicInfo,
};

/// A durable, partitioned, append-only log of records.
///
/// Contract, checked by [`crate::conformance`] for every backend:
/// - `append` returns only once the whole batch is durable (or, in a mode named "relaxed", written); the batch
///   is all-or-nothing and its offsets are consecutive.
/// - Offsets are dense per partition and never reused, across restarts too.
/// - Readers never see a record that is not yet acknowledged, nor a corrupt one.
#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo, StoreError>;
    async fn delete_topic(&self, name: &str) -> Result<(), StoreError>;
    async fn list_topics(&self) -> Result<Vec<TopicInfo>, StoreError>;
    async fn describe_topic(&self, name: &str) -> Result<TopicInfo, StoreError>;
    async fn set_retention(&self, name: &str, retention: Retention) -> Result<TopicInfo, StoreError>;

    /// Appends `records` atomically to one partition.
    async fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<NewRecord>,
    ) -> Result<AppendOutcome, StoreError>;

    /// Reads from `offset` (inclusive). `offset == latest` returns no records; outside `earliest..=latest` is
    /// [`StoreError::OffsetOutOfRange`].
    async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<ReadResult, StoreError>;

    async fn offsets(&self, topic: &str, partition: u32) -> Result<PartitionOffsets, StoreError>;

    /// The first offset whose record timestamp is `>= timestamp_ms`, or `None` if there is none yet.
    async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<Option<u64>, StoreError>;

    /// Waits until the partition holds a record at `offset` (i.e. `latest > offset`) or `timeout` passes.
    /// Returns whether it does.
    async fn wait_for(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<bool, StoreError>;

    /// Deletes what every topic's retention says has expired.
    async fn enforce_retention(&self) -> Result<RetentionReport, StoreError>;

    /// Stops accepting appends, finishes the ones in flight, makes everything durable.
    async fn shutdown(&self) -> Result<(), StoreError>;
}
