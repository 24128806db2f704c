//! The record model shared by every backend: Kafka's, because the Kafka endpoint serves the same records.

use std::time::Duration;

use bytes::Bytes;

use crate::StoreError;

/// One record header (Kafka semantics: a UTF-8 name and opaque bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Bytes,
}

/// A record as a producer hands it to the log; the log assigns its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Milliseconds since the Unix epoch; `None` means "the time the log appends it".
    pub timestamp_ms: Option<i64>,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<Header>,
}

impl NewRecord {
    /// A record with a value only: the log stamps it and it has no key or headers.
    pub fn from_value(value: impl Into<Bytes>) -> Self {
        NewRecord { timestamp_ms: None, key: None, value: value.into(), headers: Vec::new() }
    }

    /// Bytes this record occupies in a batch, roughly: used for size limits, not for framing.
    pub fn approx_size(&self) -> usize {
        self.value.len()
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.headers.iter().map(|h| h.name.len() + h.value.len() + 4).sum::<usize>()
            + 24
    }
}

/// A stored record, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Dense per partition: 0, 1, 2, ... never reused.
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<Header>,
}

/// How long a topic keeps its records. `None` means "no limit" for that dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Option<Duration>,
    /// Per partition, like Kafka's `retention.bytes`.
    pub max_bytes: Option<u64>,
}

impl Retention {
    /// The service default: 90 days, no size limit (the specification's suggested period).
    pub const DEFAULT: Retention =
        Retention { max_age: Some(Duration::from_secs(90 * 24 * 3600)), max_bytes: None };
}

impl Default for Retention {
    fn default() -> Self {
        Retention::DEFAULT
    }
}

/// What a caller asks for when creating a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicConfig {
    pub partitions: u32,
    pub retention: Retention,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig { partitions: 1, retention: Retention::DEFAULT }
    }
}

/// A topic as the log knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: u32,
    pub retention: Retention,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// The offsets bounding what a partition holds: records `earliest..latest` are readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub partition: u32,
    /// The oldest retained offset (equals `latest` when the partition is empty).
    pub earliest: u64,
    /// The next offset to be assigned (Kafka's log-end offset / high watermark).
    pub latest: u64,
}

/// Where an appended batch landed. Offsets are `base_offset..=last_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub base_offset: u64,
    pub last_offset: u64,
}

/// Caps on one read. At least one record is returned when any is available, even if it exceeds `max_bytes`
/// (so a large record can never block a consumer), as Kafka does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    pub max_records: usize,
    pub max_bytes: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits { max_records: 500, max_bytes: 4 << 20 }
    }
}

/// The records of one read plus where to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    pub records: Vec<Record>,
    /// The offset to ask for next (the requested offset when nothing was returned).
    pub next_offset: u64,
    pub earliest: u64,
    pub latest: u64,
}

/// What one retention pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
}

/// Kafka's topic-name rule, `[A-Za-z0-9._-]{1,249}`, minus `.` and `..` (they would name directories).
pub fn validate_topic_name(name: &str) -> Result<(), StoreError> {
    let invalid =
        |reason: &str| Err(StoreError::InvalidTopicName { name: name.to_owned(), reason: reason.to_owned() });
    if name.is_empty() || name.len() > 249 {
        return invalid("a topic name is 1 to 249 characters long");
    }
    if name == "." || name == ".." {
        return invalid("'.' and '..' are not allowed as topic names");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return invalid("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for ok in ["esgf2.publications", "a", "A-b_c.9", &"x".repeat(249)] {
            assert!(validate_topic_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(250), "a\0"] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }
}
