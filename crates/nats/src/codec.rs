//! How records, names and keys are represented in NATS: pure functions, no I/O.
//!
//! A record is one JetStream message. Its value is the message payload, byte for byte, so NATS-native tools
//! see the event itself. Everything else travels in message headers:
//! - `Esgf-Ts`: the record timestamp (ms since the epoch, decimal).
//! - `Esgf-Max-Ts`: the largest record timestamp in the partition up to and including this record. Record
//!   timestamps come from producers and need not increase; this running maximum does, which makes
//!   "first offset with a timestamp at or after T" a binary search (see `JetStreamStore::offset_for_timestamp`).
//! - `Esgf-Key`: the key, `t:<text>` when it is printable ASCII without surrounding spaces, else
//!   `b:<base64>`; absent when the record has no key. (NATS header values are text lines: arbitrary bytes,
//!   line breaks or trailing spaces would not survive.)
//! - `Esgf-Headers`: the record headers, base64 of `(u32 name length, name, u32 value length, value)*`, big
//!   endian; absent when there are none. Kafka header names are arbitrary UTF-8 and values arbitrary bytes,
//!   neither of which NATS header names/values can carry faithfully, so they are framed rather than mapped
//!   one to one.
//! - `Esgf-Append`: on the first message of each append only, a random id, so an append whose
//!   acknowledgement was lost can tell whether it was stored (see `log.rs`).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use esgf_events_engine::{Header, Record};

use async_nats::header::HeaderMap;

pub(crate) const H_TS: &str = "Esgf-Ts";
pub(crate) const H_MAX_TS: &str = "Esgf-Max-Ts";
pub(crate) const H_KEY: &str = "Esgf-Key";
pub(crate) const H_HEADERS: &str = "Esgf-Headers";
pub(crate) const H_APPEND: &str = "Esgf-Append";

/// Longest topic-name part of a stream name: stream names end up as directory names on every node.
const STREAM_TOPIC_CHARS: usize = 64;

/// Headers of one record's message (without the per-append `Esgf-Append`).
pub(crate) fn record_headers(
    timestamp_ms: i64,
    max_ts: i64,
    key: Option<&[u8]>,
    headers: &[Header],
) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(H_TS, timestamp_ms.to_string().as_str());
    map.insert(H_MAX_TS, max_ts.to_string().as_str());
    if let Some(key) = key {
        map.insert(H_KEY, encode_key_header(key).as_str());
    }
    if !headers.is_empty() {
        map.insert(H_HEADERS, encode_record_headers(headers).as_str());
    }
    map
}

fn encode_key_header(key: &[u8]) -> String {
    let printable = !key.is_empty()
        && key.iter().all(|b| (0x20..0x7f).contains(b))
        && key.first() != Some(&b' ')
        && key.last() != Some(&b' ');
    if printable {
        // Printable ASCII, so this is valid UTF-8.
        format!("t:{}", String::from_utf8_lossy(key))
    } else {
        format!("b:{}", STANDARD.encode(key))
    }
}

fn decode_key_header(value: &str) -> Result<Bytes, String> {
    if let Some(text) = value.strip_prefix("t:") {
        Ok(Bytes::copy_from_slice(text.as_bytes()))
    } else if let Some(b64) = value.strip_prefix("b:") {
        STANDARD.decode(b64).map(Bytes::from).map_err(|e| format!("key is not valid base64: {e}"))
    } else {
        Err(format!("key header has an unknown form: {value:?}"))
    }
}

fn encode_record_headers(headers: &[Header]) -> String {
    let mut buf = Vec::new();
    for h in headers {
        buf.extend_from_slice(&(h.name.len() as u32).to_be_bytes());
        buf.extend_from_slice(h.name.as_bytes());
        buf.extend_from_slice(&(h.value.len() as u32).to_be_bytes());
        buf.extend_from_slice(&h.value);
    }
    STANDARD.encode(buf)
}

fn decode_record_headers(value: &str) -> Result<Vec<Header>, String> {
    let buf = STANDARD.decode(value).map_err(|e| format!("headers are not valid base64: {e}"))?;
    let mut rest = &buf[..];
    let mut out = Vec::new();
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, String> {
        if rest.len() < 4 {
            return Err("truncated header length".into());
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() - 4 < len {
            return Err("header length beyond the end".into());
        }
        let field = rest[4..4 + len].to_vec();
        *rest = &rest[4 + len..];
        Ok(field)
    };
    while !rest.is_empty() {
        let name = String::from_utf8(take(&mut rest)?).map_err(|_| "header name is not UTF-8".to_owned())?;
        let value = Bytes::from(take(&mut rest)?);
        out.push(Header { name, value });
    }
    Ok(out)
}

/// The record stored at stream sequence `seq` (offset `seq - 1`).
pub(crate) fn decode_record(seq: u64, headers: &HeaderMap, payload: Bytes) -> Result<Record, String> {
    let get = |name: &str| headers.get(name).map(|v| v.as_str());
    let timestamp_ms = get(H_TS)
        .ok_or("message has no Esgf-Ts header: not written by this service")?
        .parse::<i64>()
        .map_err(|_| "Esgf-Ts is not a number".to_owned())?;
    let key = get(H_KEY).map(decode_key_header).transpose()?;
    let headers = get(H_HEADERS).map(decode_record_headers).transpose()?.unwrap_or_default();
    Ok(Record { offset: seq.saturating_sub(1), timestamp_ms, key, value: payload, headers })
}

/// The running maximum timestamp carried by a message.
pub(crate) fn max_ts(headers: &HeaderMap) -> Result<i64, String> {
    headers
        .get(H_MAX_TS)
        .ok_or("message has no Esgf-Max-Ts header")?
        .as_str()
        .parse::<i64>()
        .map_err(|_| "Esgf-Max-Ts is not a number".to_owned())
}

/// The record's own timestamp.
pub(crate) fn own_ts(headers: &HeaderMap) -> Result<i64, String> {
    headers
        .get(H_TS)
        .ok_or("message has no Esgf-Ts header")?
        .as_str()
        .parse::<i64>()
        .map_err(|_| "Esgf-Ts is not a number".to_owned())
}

/// Bytes a record counts for against a read's `max_bytes` (the same measure as `NewRecord::approx_size`).
pub(crate) fn record_size(r: &Record) -> usize {
    r.value.len()
        + r.key.as_ref().map_or(0, Bytes::len)
        + r.headers.iter().map(|h| h.name.len() + h.value.len() + 4).sum::<usize>()
        + 24
}

/// The stream holding one partition of one incarnation of a topic.
///
/// Stream names allow `[A-Za-z0-9_-]`; topic names also allow `.`, so `a.b` and `a_b` would both map to
/// `a_b`: the incarnation id (random, per creation of the topic) keeps them apart, and also keeps a deleted
/// topic's leftover stream from ever being mistaken for a re-created topic's.
pub(crate) fn partition_stream(topic: &str, incarnation: &str, partition: u32) -> String {
    let readable: String =
        topic.chars().take(STREAM_TOPIC_CHARS).map(|c| if c == '.' { '_' } else { c }).collect();
    format!("ESGF_{readable}_{incarnation}_P{partition}")
}

/// The subject a partition stream listens on (one subject per stream, so subjects never overlap).
pub(crate) fn partition_subject(stream: &str) -> String {
    format!("esgf.log.{stream}")
}

/// Subject filter matching every partition stream (for listing them).
pub(crate) const PARTITION_SUBJECTS: &str = "esgf.log.>";

/// A KV key token for an arbitrary string: `k` + unpadded base64url of its bytes. The alphabet
/// `[A-Za-z0-9_-]` is valid in KV keys, there are no dots (token separators), and the `k` keeps the empty
/// string a valid, non-empty token.
pub(crate) fn encode_kv_key(key: &str) -> String {
    format!("k{}", URL_SAFE_NO_PAD.encode(key.as_bytes()))
}

pub(crate) fn decode_kv_key(token: &str) -> Option<String> {
    let b64 = token.strip_prefix('k')?;
    String::from_utf8(URL_SAFE_NO_PAD.decode(b64).ok()?).ok()
}

/// Whether `name` can be used verbatim as a subject token and in a stream name (collection and log names
/// are fixed identifiers chosen in code, so they are checked rather than encoded: the state stays readable
/// with NATS tools).
pub(crate) fn is_plain_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &[u8]) -> Header {
        Header { name: name.into(), value: Bytes::copy_from_slice(value) }
    }

    #[test]
    fn record_round_trips_key_headers_and_timestamp() {
        let headers =
            vec![h("content-type", b"application/json"), h("bin\u{e9}", &[0, 255, 10, 13]), h("", b"")];
        for key in [
            None,
            Some(&b"CMIP6.x|node"[..]),
            Some(&b""[..]),
            Some(&b" padded "[..]),
            Some(&[0xff, 0, b'\n'][..]),
        ] {
            let map = record_headers(-5, 7, key, &headers);
            let r = decode_record(42, &map, Bytes::from_static(b"{}")).unwrap();
            assert_eq!(r.offset, 41);
            assert_eq!(r.timestamp_ms, -5);
            assert_eq!(r.key.as_deref(), key);
            assert_eq!(r.headers, headers);
            assert_eq!(max_ts(&map).unwrap(), 7);
        }
    }

    #[test]
    fn readable_keys_stay_readable() {
        assert_eq!(
            encode_key_header(b"CMIP6.ScenarioMIP|esgf.llnl.gov"),
            "t:CMIP6.ScenarioMIP|esgf.llnl.gov"
        );
        assert!(encode_key_header("é".as_bytes()).starts_with("b:"));
        assert!(encode_key_header(b"a\r\nb").starts_with("b:"));
    }

    #[test]
    fn truncated_header_framing_is_an_error_not_a_panic() {
        let good = encode_record_headers(&[h("name", b"value")]);
        let bytes = STANDARD.decode(&good).unwrap();
        for cut in 0..bytes.len() {
            let partial = STANDARD.encode(&bytes[..cut]);
            let decoded = decode_record_headers(&partial);
            assert!(cut == 0 || decoded.is_err(), "cut at {cut} decoded as {decoded:?}");
        }
        assert!(decode_record_headers("!!!").is_err());
    }

    #[test]
    fn message_without_timestamp_is_reported_not_guessed() {
        assert!(decode_record(1, &HeaderMap::new(), Bytes::new()).is_err());
    }

    #[test]
    fn stream_names_are_valid_and_distinct_for_dotted_names() {
        let a = partition_stream("a.b", "inc1", 0);
        let b = partition_stream("a_b", "inc2", 0);
        assert_ne!(a, b);
        assert_eq!(a, "ESGF_a_b_inc1_P0");
        let long = partition_stream(&"x".repeat(249), "inc", 1023);
        assert!(long.len() < 100, "{}", long.len());
        assert!(long.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'));
    }

    #[test]
    fn kv_keys_round_trip_and_are_valid_tokens() {
        for key in ["", "g/a", "group\u{0}topic\u{0}3", "..", "a.b", "ünï", &"z".repeat(300)] {
            let token = encode_kv_key(key);
            assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "{token}");
            assert_eq!(decode_kv_key(&token).as_deref(), Some(key));
        }
        assert_eq!(decode_kv_key("xnope"), None);
    }

    #[test]
    fn plain_names_are_checked() {
        assert!(is_plain_name("group_offsets"));
        assert!(is_plain_name("audit-log"));
        assert!(!is_plain_name(""));
        assert!(!is_plain_name("a.b"));
        assert!(!is_plain_name("a b"));
        assert!(!is_plain_name(&"x".repeat(65)));
    }
}
