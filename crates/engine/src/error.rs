//! Typed errors of the log. Transports map them to HTTP statuses or Kafka codes, each in exactly one place.

use std::path::PathBuf;

/// Everything a [`crate::LogStore`] call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("topic '{0}' does not exist")]
    TopicNotFound(String),
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("invalid topic name '{name}': {reason}")]
    InvalidTopicName { name: String, reason: String },
    #[error("topic '{topic}' has no partition {partition} (it has {partitions})")]
    PartitionNotFound { topic: String, partition: u32, partitions: u32 },
    #[error(
        "offset {requested} is out of range for {topic}/{partition}: retained offsets are {earliest}..{latest} \
         (earliest inclusive, latest is the next offset to be written)"
    )]
    OffsetOutOfRange { topic: String, partition: u32, requested: u64, earliest: u64, latest: u64 },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("batch of {size} bytes exceeds the maximum of {max} bytes")]
    BatchTooLarge { size: usize, max: usize },
    #[error("corrupt data in {path} at byte {position}: {detail}")]
    Corrupt { path: PathBuf, position: u64, detail: String },
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the log is shutting down")]
    ShuttingDown,
    #[error("storage backend error: {0}")]
    Backend(String),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { context: context.into(), source }
    }
}
