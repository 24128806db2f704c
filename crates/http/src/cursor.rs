//! Stream cursors: the `id:` of every server-sent event, and what `Last-Event-ID` hands back.
//!
//! A cursor names, for EVERY partition of the stream, the next offset to deliver after that event:
//! `0-42.1-17` is "partition 0 from offset 42, partition 1 from offset 17". It is self-contained (no server
//! state), so resuming with it is exact across reconnections and server restarts, and it only holds digits,
//! `-` and `.`, so it is safe in a header, a URL and an SSE field as is. Partitions are listed in ascending
//! order, each once.

use std::fmt::Write;

use crate::topics::MAX_PARTITIONS;

/// Longest cursor accepted: every partition of the largest topic with a 20-digit offset.
pub(crate) const MAX_CURSOR_BYTES: usize = MAX_PARTITIONS as usize * 32;

/// A decoded cursor: `(partition, next offset)`, partitions strictly ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor(Vec<(u32, u64)>);

impl Cursor {
    /// The next offset of `partition`, if the cursor names it.
    pub(crate) fn get(&self, partition: u32) -> Option<u64> {
        self.0.binary_search_by_key(&partition, |&(p, _)| p).ok().map(|i| self.0[i].1)
    }

    /// The partitions named, ascending.
    pub(crate) fn partitions(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().map(|&(p, _)| p)
    }

    /// Parses a cursor; the error says what is wrong in words a client can act on.
    pub(crate) fn parse(text: &str) -> Result<Cursor, String> {
        if text.is_empty() {
            return Err("the cursor is empty".to_owned());
        }
        if text.len() > MAX_CURSOR_BYTES {
            return Err(format!("the cursor is longer than {MAX_CURSOR_BYTES} bytes"));
        }
        let mut entries: Vec<(u32, u64)> = Vec::new();
        for entry in text.split('.') {
            let Some((partition, offset)) = entry.split_once('-') else {
                return Err(format!("'{}' is not PARTITION-OFFSET", shorten(entry)));
            };
            let partition = digits(partition)
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(|| format!("'{}' is not a partition number", shorten(partition)))?;
            let offset = digits(offset).ok_or_else(|| format!("'{}' is not an offset", shorten(offset)))?;
            if entries.last().is_some_and(|&(previous, _)| previous >= partition) {
                return Err("partitions must be listed once each, in ascending order".to_owned());
            }
            entries.push((partition, offset));
        }
        Ok(Cursor(entries))
    }
}

/// Plain ASCII digits only (no sign, no spaces), as a u64.
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn shorten(text: &str) -> String {
    text.chars().take(40).collect()
}

/// The cursor of `positions[i]` for `partitions[i]`; `partitions` must be ascending.
pub(crate) fn encode(partitions: &[u32], positions: &[u64]) -> String {
    let mut out = String::with_capacity(partitions.len() * 8);
    for (i, (partition, offset)) in partitions.iter().zip(positions).enumerate() {
        if i > 0 {
            out.push('.');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{partition}-{offset}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cursor_lists_every_partition() {
        assert_eq!(encode(&[0, 1], &[42, 17]), "0-42.1-17");
        assert_eq!(encode(&[5], &[0]), "5-0");
        let cursor = Cursor::parse("0-42.1-17").expect("valid");
        assert_eq!((cursor.get(0), cursor.get(1), cursor.get(2)), (Some(42), Some(17), None));
        assert_eq!(cursor.partitions().collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn malformed_cursors_are_refused() {
        for bad in [
            "",
            "0",
            "0-",
            "-1",
            "0-1.",
            ".0-1",
            "0-1..1-2",
            "0-+1",
            "0--1",
            " 0-1",
            "0-1 ",
            "a-1",
            "0-18446744073709551616",
            "4294967296-0",
            "1-0.0-0",
            "0-0.0-1",
            "0-1,1-2",
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Cursor::parse(&"0-1.".repeat(MAX_CURSOR_BYTES)).is_err());
    }

    proptest! {
        /// Whatever the partitions and offsets, a cursor decodes to exactly what was encoded.
        #[test]
        fn encode_then_parse_round_trips(
            entries in proptest::collection::btree_map(0u32..MAX_PARTITIONS, any::<u64>(), 1..64),
        ) {
            let partitions: Vec<u32> = entries.keys().copied().collect();
            let positions: Vec<u64> = entries.values().copied().collect();
            let text = encode(&partitions, &positions);
            prop_assert!(text.bytes().all(|b| b.is_ascii_digit() || b == b'-' || b == b'.'));
            let cursor = Cursor::parse(&text).expect("an encoded cursor parses");
            for (partition, offset) in &entries {
                prop_assert_eq!(cursor.get(*partition), Some(*offset));
            }
            prop_assert_eq!(cursor.partitions().collect::<Vec<_>>(), partitions);
        }

        /// Parsing never panics and accepts only what the encoder could have written.
        #[test]
        fn parse_is_total_and_strict(text in "[0-9.\\- a]{0,40}") {
            if let Ok(cursor) = Cursor::parse(&text) {
                let partitions: Vec<u32> = cursor.partitions().collect();
                let positions: Vec<u64> = partitions.iter().map(|p| cursor.get(*p).unwrap_or_default()).collect();
                // Leading zeros are the only spelling difference the parser tolerates.
                let canonical = encode(&partitions, &positions);
                prop_assert_eq!(Cursor::parse(&canonical).expect("canonical"), cursor);
            }
        }
    }

    #[test]
    fn largest_topic_fits_the_bound() {
        let partitions: Vec<u32> = (0..MAX_PARTITIONS).collect();
        let text = encode(&partitions, &vec![u64::MAX; partitions.len()]);
        assert!(text.len() <= MAX_CURSOR_BYTES);
        assert!(Cursor::parse(&text).is_ok());
    }
}
