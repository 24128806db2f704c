//! CloudEvents 1.0 in structured mode (JSON event format): one stored record as one CloudEvent, for consumers
//! that speak CloudEvents (SDKs, Knative, Azure Event Grid, ...).
//!
//! | attribute         | value                                                                           |
//! |-------------------|---------------------------------------------------------------------------------|
//! | `specversion`     | `"1.0"`                                                                         |
//! | `id`              | `metadata.event_id` of the event, else `"<topic>/<partition>/<offset>"`         |
//! | `source`          | `"/topics/<topic>"` (a URI-reference)                                           |
//! | `type`            | `org.esgf.publication.post` / `.put` / `.patch` from `data.payload.method`, else `org.esgf.event` |
//! | `subject`         | the STAC item id (the record key the envelope implies), when there is one       |
//! | `time`            | the record's timestamp, RFC 3339 with milliseconds                              |
//! | `datacontenttype` | `application/json` (`application/octet-stream` for a value that is not JSON)   |
//! | `esgfpartition`   | the partition (an Integer)                                                      |
//! | `esgfoffset`      | the offset, as a String: CloudEvents Integers are 32-bit and offsets are not    |
//! | `data`            | the event JSON, embedded byte for byte (`data_base64` for a value that is not JSON) |

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::envelope::{event_id, publication_method, record_key};

/// CloudEvents `type` of an event with this publication method (see [`publication_method`]).
pub fn cloudevent_type(method: Option<&str>) -> &'static str {
    match method {
        Some("post") => "org.esgf.publication.post",
        Some("put") => "org.esgf.publication.put",
        Some("patch") => "org.esgf.publication.patch",
        _ => "org.esgf.event",
    }
}

/// Where a record sits and when it was stored: the attributes CloudEvents needs besides the event itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: String,
    source: String,
    #[serde(rename = "type")]
    type_: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    time: String,
    datacontenttype: &'static str,
    esgfpartition: u32,
    esgfoffset: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

/// The record `value` stored at `record` as one CloudEvents JSON document (structured mode).
pub fn to_cloudevent(record: &RecordRef<'_>, value: &[u8]) -> String {
    let event = std::str::from_utf8(value).ok().and_then(|text| serde_json::from_str::<&RawValue>(text).ok());
    let text = event.map(RawValue::get);
    let method = text.and_then(publication_method);
    let cloudevent = CloudEvent {
        specversion: "1.0",
        id: text
            .and_then(event_id)
            .unwrap_or_else(|| format!("{}/{}/{}", record.topic, record.partition, record.offset)),
        source: format!("/topics/{}", record.topic),
        type_: cloudevent_type(method.as_deref()),
        subject: text.and_then(record_key),
        time: rfc3339_millis(record.timestamp_ms),
        datacontenttype: if event.is_some() { "application/json" } else { "application/octet-stream" },
        esgfpartition: record.partition,
        esgfoffset: record.offset.to_string(),
        data: event,
        data_base64: if event.is_some() { None } else { Some(base64(value)) },
    };
    // Plain strings, numbers and already-valid JSON: serializing cannot fail.
    serde_json::to_string(&cloudevent).unwrap_or_default()
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-27T10:00:00.000Z` (times outside chrono's range saturate).
pub fn rfc3339_millis(ms: i64) -> String {
    let at = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(if ms < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    });
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Standard base64 with padding (RFC 4648 section 4), for values that are not JSON.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const RECORD: RecordRef<'static> =
        RecordRef { topic: "esgf2.publications", partition: 3, offset: 41, timestamp_ms: 1_795_773_600_123 };

    fn cloudevent(value: &str) -> (String, Value) {
        let text = to_cloudevent(&RECORD, value.as_bytes());
        let parsed = serde_json::from_str(&text).expect("a CloudEvent is JSON");
        (text, parsed)
    }

    #[test]
    fn publication_maps_to_every_attribute() {
        let event = r#"{"data":{"payload":{"method":"PATCH","item_id":"CMIP6.x"}},"metadata":{"event_id":"932bda79"}}"#;
        let (text, ce) = cloudevent(event);
        assert_eq!(
            ce,
            json!({
                "specversion": "1.0",
                "id": "932bda79",
                "source": "/topics/esgf2.publications",
                "type": "org.esgf.publication.patch",
                "subject": "CMIP6.x",
                "time": "2026-11-27T10:00:00.123Z",
                "datacontenttype": "application/json",
                "esgfpartition": 3,
                "esgfoffset": "41",
                "data": serde_json::from_str::<Value>(event).expect("json"),
            })
        );
        // The event is embedded byte for byte.
        assert!(text.contains(event), "{text}");
    }

    #[test]
    fn id_falls_back_to_the_record_position_and_unknown_methods_are_plain_events() {
        let (_, ce) = cloudevent(r#"{"data":{"payload":{"method":"DELETE"}}}"#);
        assert_eq!(ce["id"], "esgf2.publications/3/41");
        assert_eq!(ce["type"], "org.esgf.event");
        assert!(ce.get("subject").is_none());
        let (_, ce) = cloudevent(r#"{"data":{"payload":{"method":"post","item":{"id":"CMIP6.y"}}}}"#);
        assert_eq!(
            (ce["type"].as_str(), ce["subject"].as_str()),
            (Some("org.esgf.publication.post"), Some("CMIP6.y"))
        );
    }

    #[test]
    fn non_json_values_travel_as_base64() {
        let text = to_cloudevent(&RECORD, b"\xffbinary");
        let ce: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(ce["datacontenttype"], "application/octet-stream");
        assert_eq!(ce["data_base64"], base64(b"\xffbinary"));
        assert!(ce.get("data").is_none());
    }

    #[test]
    fn extension_attribute_names_are_lowercase_alphanumerics() {
        let (_, ce) = cloudevent("{}");
        for name in ce.as_object().expect("object").keys() {
            if !matches!(name.as_str(), "data" | "data_base64") {
                assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "{name}");
            }
        }
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn timestamps_are_rfc3339_with_millis_and_saturate() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert!(rfc3339_millis(i64::MAX).starts_with('+'));
    }
}
