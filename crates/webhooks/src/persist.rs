//! Where subscriptions live in the state store ([`MetaStore`]).
//!
//! - `webhook_subscriptions`: key = subscription id, value = JSON [`Record`], **including the signing secret**:
//!   HMAC needs the secret itself, so it cannot be hashed like an API token. The state file is created 0600 and
//!   the secret never leaves it again (no API answer, no log line, `Debug` of the parsed secret hides it).
//! - `webhook_cursors`: key = `id \0 partition` (zero-padded, so keys sort by partition), value = the next offset
//!   to deliver, as decimal text.
//! - `webhook_dead_letters`: key = `id \0 seq` (zero-padded), value = JSON [`DeadLetter`].
//! - `webhook_redrive`: key = subscription id, value empty: a redrive asked for on a node that does not deliver
//!   (it does not hold the `webhooks` lease); the delivering node takes it up at its next rescan.
//!
//! `\0` cannot occur in an id (ids are generated: `sub_` + hex), so an id's prefix scan finds only its own keys.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use esgf_events_meta::{MetaStore, Write};
use serde::{Deserialize, Serialize};

use crate::model::{DeadLetter, Format, WebhookError};

pub(crate) const SUBSCRIPTIONS: &str = "webhook_subscriptions";
pub(crate) const CURSORS: &str = "webhook_cursors";
pub(crate) const DEAD_LETTERS: &str = "webhook_dead_letters";
pub(crate) const REDRIVE: &str = "webhook_redrive";

/// A subscription as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) id: String,
    pub(crate) owner: String,
    pub(crate) topic: String,
    pub(crate) url: String,
    pub(crate) filter: Vec<String>,
    pub(crate) key_prefix: Option<String>,
    pub(crate) format: Format,
    pub(crate) from: String,
    pub(crate) created_ms: i64,
    pub(crate) paused: bool,
    /// `whsec_...`; see the module doc.
    pub(crate) secret: String,
}

/// A subscription and its delivery state, as loaded at start-up.
pub(crate) struct Loaded {
    pub(crate) record: Record,
    /// Indexed by partition; partitions without a stored cursor are `None`.
    pub(crate) cursors: Vec<Option<u64>>,
    pub(crate) dead_letters: usize,
    /// The sequence number the next dead letter gets.
    pub(crate) next_dead_seq: u64,
}

fn prefix(id: &str) -> String {
    format!("{id}\0")
}

fn cursor_key(id: &str, partition: u32) -> String {
    format!("{id}\0{partition:010}")
}

fn dead_key(id: &str, seq: u64) -> String {
    format!("{id}\0{seq:020}")
}

/// `(subscription id, partition, offset)` of one cursor entry.
fn parse_cursor<'k>(key: &'k str, value: &[u8]) -> Result<(&'k str, usize, u64), WebhookError> {
    let (id, partition) = key.rsplit_once('\0').ok_or_else(|| corrupt(key, "no partition in the key"))?;
    let partition = partition
        .parse::<usize>()
        .ok()
        .filter(|p| *p < MAX_PARTITIONS)
        .ok_or_else(|| corrupt(key, "no valid partition in the key"))?;
    let offset = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| corrupt(key, "the cursor is not a number"))?;
    Ok((id, partition, offset))
}

/// Far above any topic's partition count; a key beyond it is corrupt, not a reason to allocate.
const MAX_PARTITIONS: usize = 1 << 16;

fn set_cursor(cursors: &mut Vec<Option<u64>>, partition: usize, offset: u64) {
    if cursors.len() <= partition {
        cursors.resize(partition + 1, None);
    }
    cursors[partition] = Some(offset);
}

fn corrupt(key: &str, detail: impl ToString) -> WebhookError {
    WebhookError::Corrupt { key: key.to_owned(), detail: detail.to_string() }
}

fn cursor_write(id: &str, partition: u32, offset: u64) -> Write {
    Write {
        collection: CURSORS,
        key: cursor_key(id, partition),
        value: Some(Bytes::from(offset.to_string())),
    }
}

fn json<T: Serialize>(value: &T) -> Bytes {
    // Plain structs of strings and numbers always serialize.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

#[derive(Clone)]
pub(crate) struct Persist {
    meta: Arc<dyn MetaStore>,
}

impl Persist {
    pub(crate) fn new(meta: Arc<dyn MetaStore>) -> Self {
        Persist { meta }
    }

    pub(crate) async fn load_all(&self) -> Result<Vec<Loaded>, WebhookError> {
        let mut loaded = Vec::new();
        for record in self.records().await? {
            let mut cursors = Vec::new();
            for (key, value) in self.meta.scan(CURSORS, &prefix(&record.id)).await? {
                let (_, partition, offset) = parse_cursor(&key, &value)?;
                set_cursor(&mut cursors, partition, offset);
            }
            let (dead_letters, next_dead_seq) = self.dead_letter_state(&record.id).await?;
            loaded.push(Loaded { record, cursors, dead_letters, next_dead_seq });
        }
        Ok(loaded)
    }

    /// Every subscription record, in id order.
    pub(crate) async fn records(&self) -> Result<Vec<Record>, WebhookError> {
        let mut records = Vec::new();
        for (key, value) in self.meta.scan(SUBSCRIPTIONS, "").await? {
            records.push(serde_json::from_slice(&value).map_err(|e| corrupt(&key, e))?);
        }
        Ok(records)
    }

    /// Every subscription's persisted cursors (one scan), indexed by partition.
    pub(crate) async fn all_cursors(&self) -> Result<HashMap<String, Vec<Option<u64>>>, WebhookError> {
        let mut all: HashMap<String, Vec<Option<u64>>> = HashMap::new();
        for (key, value) in self.meta.scan(CURSORS, "").await? {
            let (id, partition, offset) = parse_cursor(&key, &value)?;
            set_cursor(all.entry(id.to_owned()).or_default(), partition, offset);
        }
        Ok(all)
    }

    /// How many dead letters a subscription has, and the sequence number the next one gets.
    pub(crate) async fn dead_letter_state(&self, id: &str) -> Result<(usize, u64), WebhookError> {
        let dead = self.meta.scan(DEAD_LETTERS, &prefix(id)).await?;
        let next_dead_seq = match dead.last() {
            Some((key, value)) => {
                let letter: DeadLetter = serde_json::from_slice(value).map_err(|e| corrupt(key, e))?;
                letter.seq + 1
            }
            None => 1,
        };
        Ok((dead.len(), next_dead_seq))
    }

    /// Leaves a redrive request for the node that delivers (see the module doc).
    pub(crate) async fn request_redrive(&self, id: &str) -> Result<(), WebhookError> {
        self.meta.put(REDRIVE, id, Bytes::new()).await?;
        Ok(())
    }

    /// Takes every pending redrive request: returns their ids and removes them.
    pub(crate) async fn take_redrive_requests(&self) -> Result<Vec<String>, WebhookError> {
        let mut ids = Vec::new();
        for (id, value) in self.meta.scan(REDRIVE, "").await? {
            // Compare-and-delete: a request made again meanwhile is the same request, but must not be lost
            // either way; the value never changes, so this only guards against a concurrent take.
            if self.meta.compare_and_set(REDRIVE, &id, Some(value), None).await? {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// The record and its starting cursors, atomically.
    pub(crate) async fn create(&self, record: &Record, cursors: &[u64]) -> Result<(), WebhookError> {
        let mut writes =
            vec![Write { collection: SUBSCRIPTIONS, key: record.id.clone(), value: Some(json(record)) }];
        for (partition, offset) in (0u32..).zip(cursors) {
            writes.push(cursor_write(&record.id, partition, *offset));
        }
        self.meta.write(writes).await?;
        Ok(())
    }

    pub(crate) async fn save(&self, record: &Record) -> Result<(), WebhookError> {
        self.meta.put(SUBSCRIPTIONS, &record.id, json(record)).await?;
        Ok(())
    }

    /// The record, its cursors and its dead letters, atomically.
    pub(crate) async fn delete(&self, id: &str) -> Result<(), WebhookError> {
        let mut writes = vec![
            Write { collection: SUBSCRIPTIONS, key: id.to_owned(), value: None },
            Write { collection: REDRIVE, key: id.to_owned(), value: None },
        ];
        for collection in [CURSORS, DEAD_LETTERS] {
            for (key, _) in self.meta.scan(collection, &prefix(id)).await? {
                writes.push(Write { collection, key, value: None });
            }
        }
        self.meta.write(writes).await?;
        Ok(())
    }

    /// Moves cursors forward, never back: each partition's cursor is compare-and-set against the stored value
    /// and left alone if it is already further. When delivery changes hands (the `webhooks` lease), the old owner
    /// may still finish one delivery and commit after the new owner has moved on; its late commit must not send
    /// the cursor back, or everything in between would be delivered a second time after the next takeover.
    pub(crate) async fn commit_cursors(&self, id: &str, cursors: &[(u32, u64)]) -> Result<(), WebhookError> {
        for &(partition, offset) in cursors {
            let key = cursor_key(id, partition);
            let new = Bytes::from(offset.to_string());
            // Bounded: each failed compare-and-set means another writer moved this cursor in between.
            for _ in 0..8 {
                let current = self.meta.get(CURSORS, &key).await?;
                if let Some(stored) = &current {
                    let (_, _, at) = parse_cursor(&key, stored)?;
                    if at >= offset {
                        tracing::debug!(
                            subscription = id,
                            partition,
                            stored = at,
                            offset,
                            "cursor already at or past this commit (another node delivered further)"
                        );
                        break;
                    }
                }
                if self.meta.compare_and_set(CURSORS, &key, current, Some(new.clone())).await? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Stores a dead letter and moves its partition's cursor past it, atomically: the event is either still to
    /// be delivered or in the list, never neither.
    pub(crate) async fn add_dead_letter(
        &self,
        id: &str,
        letter: &DeadLetter,
        cursor: (u32, u64),
    ) -> Result<(), WebhookError> {
        self.meta
            .write(vec![
                Write { collection: DEAD_LETTERS, key: dead_key(id, letter.seq), value: Some(json(letter)) },
                cursor_write(id, cursor.0, cursor.1),
            ])
            .await?;
        Ok(())
    }

    pub(crate) async fn update_dead_letter(&self, id: &str, letter: &DeadLetter) -> Result<(), WebhookError> {
        self.meta.put(DEAD_LETTERS, &dead_key(id, letter.seq), json(letter)).await?;
        Ok(())
    }

    pub(crate) async fn remove_dead_letter(&self, id: &str, seq: u64) -> Result<(), WebhookError> {
        self.meta.delete(DEAD_LETTERS, &dead_key(id, seq)).await?;
        Ok(())
    }

    /// Dead letters with `seq > after`, oldest first, at most `limit`.
    pub(crate) async fn dead_letters(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, WebhookError> {
        let mut letters = Vec::new();
        for (key, value) in self.meta.scan(DEAD_LETTERS, &prefix(id)).await? {
            let letter: DeadLetter = serde_json::from_slice(&value).map_err(|e| corrupt(&key, e))?;
            if letter.seq > after {
                letters.push(letter);
                if letters.len() >= limit {
                    break;
                }
            }
        }
        Ok(letters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_entries_parse_to_id_partition_and_offset() {
        let key = cursor_key("sub_ab", 3);
        assert_eq!(parse_cursor(&key, b"42").unwrap(), ("sub_ab", 3, 42));
        assert!(parse_cursor("sub_ab", b"42").is_err());
        assert!(parse_cursor(&key, b"x").is_err());
    }

    #[tokio::test]
    async fn a_late_commit_from_a_former_owner_never_moves_a_cursor_back() {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetaStore> =
            Arc::new(esgf_events_meta::RedbMetaStore::open(&dir.path().join("s.redb")).unwrap());
        let persist = Persist::new(Arc::clone(&meta));
        persist.commit_cursors("sub_a", &[(0, 10), (1, 3)]).await.unwrap();
        // The former owner commits what it delivered before the new owner took over and moved on.
        persist.commit_cursors("sub_a", &[(0, 7), (1, 5)]).await.unwrap();
        let all = persist.all_cursors().await.unwrap();
        assert_eq!(
            all["sub_a"],
            vec![Some(10), Some(5)],
            "partition 0 kept 10; partition 1 moved forward to 5"
        );
    }

    #[test]
    fn keys_sort_by_partition_and_sequence() {
        assert!(cursor_key("s", 2) < cursor_key("s", 10));
        assert!(dead_key("s", 9) < dead_key("s", 10));
        assert!(cursor_key("s", 0).starts_with(&prefix("s")));
        assert!(
            !cursor_key("sub_a1", 0).starts_with(&prefix("sub_a")),
            "one id's prefix never covers another"
        );
    }
}
