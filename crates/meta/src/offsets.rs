//! Committed consumer-group offsets, typed, over a [`MetaStore`].
//!
//! Shared by the Kafka endpoint (OffsetCommit/OffsetFetch) and the HTTP API, so a consumer group can switch
//! protocols and resume where it left off. One entry per (group, topic, partition) in collection
//! [`COLLECTION`], key `group \0 topic \0 partition`: `\0` cannot occur in a topic name and Kafka clients never
//! put it in a group id, so keys never collide and a prefix scan of `group \0` lists exactly one group.
//!
//! The value is plain text, `offset \n commit_time_ms \n metadata`: the metadata string comes last so it may
//! contain anything, newlines included, without escaping.

use std::sync::Arc;

use bytes::Bytes;

use crate::{MetaError, MetaStore, Write};

/// The collection holding committed offsets.
pub const COLLECTION: &str = "group_offsets";

const SEP: char = '\u{0}';

/// One committed position of a group in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: u32,
    /// The next offset the group will read (Kafka's convention: last processed + 1).
    pub offset: u64,
    /// Free text the client attached to the commit (Kafka's commit metadata); empty when none.
    pub metadata: String,
    /// When the commit was made, milliseconds since the Unix epoch.
    pub committed_ms: i64,
}

/// One offset to commit: `(topic, partition, offset, metadata)`.
pub type OffsetCommit = (String, u32, u64, Option<String>);

#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("invalid group offset entry '{key}': {detail}")]
    Corrupt { key: String, detail: String },
    #[error("invalid group id or topic: {0}")]
    InvalidName(String),
}

/// The committed offsets of every consumer group.
#[derive(Clone)]
pub struct GroupOffsets {
    store: Arc<dyn MetaStore>,
}

impl std::fmt::Debug for GroupOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupOffsets")
    }
}

impl GroupOffsets {
    pub fn new(store: Arc<dyn MetaStore>) -> Self {
        GroupOffsets { store }
    }

    /// Commits all `offsets` of `group` atomically, stamped with `now_ms`; durable when this returns.
    pub async fn commit_at(
        &self,
        group: &str,
        offsets: Vec<OffsetCommit>,
        now_ms: i64,
    ) -> Result<(), OffsetsError> {
        check_name(group)?;
        let mut writes = Vec::with_capacity(offsets.len());
        for (topic, partition, offset, metadata) in offsets {
            check_name(&topic)?;
            let value = encode_value(offset, now_ms, metadata.as_deref().unwrap_or(""));
            writes.push(Write {
                collection: COLLECTION,
                key: key(group, &topic, partition),
                value: Some(value),
            });
        }
        if writes.is_empty() {
            return Ok(());
        }
        self.store.write(writes).await?;
        Ok(())
    }

    /// Commits all `offsets` of `group` atomically, stamped with the current time.
    pub async fn commit(&self, group: &str, offsets: Vec<OffsetCommit>) -> Result<(), OffsetsError> {
        self.commit_at(group, offsets, now_ms()).await
    }

    /// The committed offset of `group` in one partition, if any.
    pub async fn fetch(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<CommittedOffset>, OffsetsError> {
        check_name(group)?;
        check_name(topic)?;
        let key = key(group, topic, partition);
        match self.store.get(COLLECTION, &key).await? {
            None => Ok(None),
            Some(value) => decode_entry(&key, topic.to_owned(), partition, &value).map(Some),
        }
    }

    /// Every committed offset of `group`, ordered by topic then partition key.
    pub async fn list(&self, group: &str) -> Result<Vec<CommittedOffset>, OffsetsError> {
        check_name(group)?;
        let prefix = format!("{group}{SEP}");
        let entries = self.store.scan(COLLECTION, &prefix).await?;
        let mut out = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let rest = &key[prefix.len()..];
            let (topic, partition) =
                rest.rsplit_once(SEP).ok_or_else(|| corrupt(&key, "key lacks a partition"))?;
            let partition: u32 = partition.parse().map_err(|_| corrupt(&key, "partition is not a number"))?;
            out.push(decode_entry(&key, topic.to_owned(), partition, &value)?);
        }
        Ok(out)
    }

    /// Every committed offset of every group, as `(group, offset)`, at most `limit` (key order). Unreadable
    /// entries are skipped with an error log: one corrupt entry must not hide every group's lag.
    pub async fn all(&self, limit: usize) -> Result<Vec<(String, CommittedOffset)>, OffsetsError> {
        let entries = self.store.scan(COLLECTION, "").await?;
        let mut out = Vec::with_capacity(entries.len().min(limit));
        for (key, value) in entries.into_iter().take(limit) {
            let mut parts = key.splitn(3, SEP);
            let (Some(group), Some(topic), Some(partition)) = (parts.next(), parts.next(), parts.next())
            else {
                skip_corrupt(&key);
                continue;
            };
            let Ok(partition) = partition.parse::<u32>() else {
                skip_corrupt(&key);
                continue;
            };
            match decode_entry(&key, topic.to_owned(), partition, &value) {
                Ok(entry) => out.push((group.to_owned(), entry)),
                Err(_) => skip_corrupt(&key),
            }
        }
        Ok(out)
    }
}

fn skip_corrupt(key: &str) {
    tracing::error!(key = %key.escape_default(), "unreadable consumer-group offset entry skipped");
}

fn check_name(name: &str) -> Result<(), OffsetsError> {
    if name.contains(SEP) {
        return Err(OffsetsError::InvalidName(format!("{name:?} contains a NUL character")));
    }
    Ok(())
}

fn key(group: &str, topic: &str, partition: u32) -> String {
    format!("{group}{SEP}{topic}{SEP}{partition}")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn encode_value(offset: u64, committed_ms: i64, metadata: &str) -> Bytes {
    Bytes::from(format!("{offset}\n{committed_ms}\n{metadata}"))
}

fn corrupt(key: &str, detail: &str) -> OffsetsError {
    OffsetsError::Corrupt { key: key.escape_default().to_string(), detail: detail.to_owned() }
}

fn decode_entry(
    key: &str,
    topic: String,
    partition: u32,
    value: &[u8],
) -> Result<CommittedOffset, OffsetsError> {
    let text = std::str::from_utf8(value).map_err(|_| corrupt(key, "value is not UTF-8"))?;
    let mut parts = text.splitn(3, '\n');
    let offset = parts
        .next()
        .and_then(|o| o.parse::<u64>().ok())
        .ok_or_else(|| corrupt(key, "offset is not a number"))?;
    let committed_ms = parts
        .next()
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or_else(|| corrupt(key, "commit time is not a number"))?;
    let metadata = parts.next().unwrap_or("").to_owned();
    Ok(CommittedOffset { topic, partition, offset, metadata, committed_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trips_metadata_with_newlines() {
        let value = encode_value(42, 1_700_000_000_000, "line1\nline2");
        let entry = decode_entry("k", "t".into(), 3, &value).unwrap();
        assert_eq!(entry.offset, 42);
        assert_eq!(entry.committed_ms, 1_700_000_000_000);
        assert_eq!(entry.metadata, "line1\nline2");
        assert_eq!(entry.partition, 3);
    }

    #[test]
    fn garbage_value_is_reported_as_corrupt_not_a_panic() {
        for bad in [&b""[..], b"x\n1\n", b"1\nnope\n", &[0xff, 0xfe]] {
            assert!(matches!(decode_entry("k", "t".into(), 0, bad), Err(OffsetsError::Corrupt { .. })));
        }
    }

    #[test]
    fn keys_of_one_group_share_a_prefix_no_other_group_has() {
        assert!(key("g", "t", 1).starts_with("g\u{0}"));
        assert!(!key("g2", "t", 1).starts_with("g\u{0}"));
    }

    #[test]
    fn names_with_nul_are_refused() {
        assert!(matches!(check_name("a\u{0}b"), Err(OffsetsError::InvalidName(_))));
        assert!(check_name("esgf-consumers").is_ok());
    }
}
