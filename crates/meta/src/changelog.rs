//! The runtime changelog: every API or behaviour change the running service makes (topic created, deprecated or
//! retired, retention changed, maintenance scheduled, ...), kept in the append-only meta log `changelog` and
//! never pruned, because the changelog must cover the entire service period.
//!
//! Entries are encoded without JSON (this crate is JSON-free): a version byte, then the fields in a fixed order,
//! integers as little-endian u64, strings as a u32 little-endian length followed by UTF-8 bytes, and the optional
//! topic as a presence byte. Unknown versions decode to an error rather than to garbage.

use bytes::Bytes;

use crate::{MetaError, MetaStore};

/// The meta log the entries live in.
pub const CHANGELOG_LOG: &str = "changelog";

const VERSION: u8 = 1;

/// One runtime change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEntry {
    /// When the change took effect, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `api-change`, `topic-created`, `topic-state`, `retention`, `maintenance`, ... (open set).
    pub kind: String,
    pub title: String,
    pub detail: String,
    /// The topic the change concerns, if any.
    pub topic: Option<String>,
}

/// Appends `entry` to the changelog durably; returns its sequence number (1, 2, 3, ...).
pub async fn record_change(meta: &dyn MetaStore, entry: &ChangeEntry) -> Result<u64, MetaError> {
    meta.append(CHANGELOG_LOG, encode(entry)).await
}

/// Entries with sequence number `> after`, oldest first, at most `limit`, with their sequence numbers.
pub async fn list_changes(
    meta: &dyn MetaStore,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, ChangeEntry)>, MetaError> {
    let raw = meta.read_log(CHANGELOG_LOG, after, limit).await?;
    raw.into_iter()
        .map(|(seq, bytes)| {
            decode(&bytes).map(|e| (seq, e)).ok_or(MetaError::Storage {
                context: "decoding a changelog entry",
                detail: format!("entry {seq}"),
            })
        })
        .collect()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Strings longer than u32::MAX cannot reach here (request bodies are bounded far below that).
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..len as usize]);
}

/// Encodes an entry in the version-1 binary layout.
pub fn encode(entry: &ChangeEntry) -> Bytes {
    let mut out = Vec::with_capacity(32 + entry.title.len() + entry.detail.len());
    out.push(VERSION);
    out.extend_from_slice(&entry.time_ms.to_le_bytes());
    put_str(&mut out, &entry.kind);
    put_str(&mut out, &entry.title);
    put_str(&mut out, &entry.detail);
    match &entry.topic {
        Some(t) => {
            out.push(1);
            put_str(&mut out, t);
        }
        None => out.push(0),
    }
    Bytes::from(out)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
    }
    fn string(&mut self) -> Option<String> {
        let len = self.take(4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)?;
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// Decodes an entry; `None` for truncated, trailing or unknown-version bytes.
pub fn decode(bytes: &[u8]) -> Option<ChangeEntry> {
    let mut r = Reader(bytes);
    if r.u8()? != VERSION {
        return None;
    }
    let time_ms = r.u64()?;
    let kind = r.string()?;
    let title = r.string()?;
    let detail = r.string()?;
    let topic = match r.u8()? {
        0 => None,
        1 => Some(r.string()?),
        _ => return None,
    };
    if !r.0.is_empty() {
        return None;
    }
    Some(ChangeEntry { time_ms, kind, title, detail, topic })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: Option<&str>) -> ChangeEntry {
        ChangeEntry {
            time_ms: 1_764_000_000_123,
            kind: "topic-created".into(),
            title: "Topic créé".into(),
            detail: "line one\nline two".into(),
            topic: topic.map(str::to_owned),
        }
    }

    #[test]
    fn entry_round_trips_with_and_without_topic() {
        for e in [entry(Some("esgf2.publications")), entry(None)] {
            assert_eq!(decode(&encode(&e)), Some(e));
        }
    }

    #[test]
    fn truncated_or_trailing_bytes_do_not_decode() {
        let bytes = encode(&entry(Some("t")));
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(decode(&longer), None);
    }

    #[test]
    fn unknown_version_does_not_decode() {
        let mut bytes = encode(&entry(None)).to_vec();
        bytes[0] = 9;
        assert_eq!(decode(&bytes), None);
    }
}
