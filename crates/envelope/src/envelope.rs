//! The few envelope members the service itself relies on: the item id (the record key, so every event about
//! one dataset lands in one partition, in order), the publication method and the event id.
//!
//! Production events are looser than the published models, so every lookup tolerates members of unexpected
//! types: they only mean "not here".

use serde_json::value::RawValue;

use crate::json;

/// The record key an ESGF event implies: `data.payload.item.id`, else `data.payload.item_id` (PUT and PATCH
/// events name the item without carrying it). Strings give their text, numbers their JSON spelling; anything
/// else is no key.
pub fn record_key(event: &str) -> Option<String> {
    let payload = json::at_path(event, &["data", "payload"])?;
    // One pass over the payload for both candidates: `item` may be large and come after `item_id`.
    let (mut item, mut item_id) = (None, None);
    json::each_member(payload.get(), |name, value| {
        match name {
            "item" if item.is_none() => item = Some(value),
            "item_id" if item_id.is_none() => item_id = Some(value),
            _ => {}
        }
        true
    });
    let from_item = item.and_then(|item| json::member(item.get(), "id")).and_then(key_text);
    from_item.or_else(|| item_id.and_then(key_text))
}

fn key_text(raw: &RawValue) -> Option<String> {
    if json::is_number(raw) {
        return Some(raw.get().to_owned());
    }
    json::string(raw).map(|text| text.into_owned())
}

/// Longest method name taken from an event (real ones are four or five letters).
const MAX_METHOD_LEN: usize = 32;

/// `data.payload.method`, lower-cased (`post`, `put`, `patch`), when it is a short ASCII token (letters,
/// digits, `-`, `_`, `.`); so it is safe as an SSE event name or inside a CloudEvents type.
pub fn publication_method(event: &str) -> Option<String> {
    let raw = json::at_path(event, &["data", "payload", "method"])?;
    let method = json::string(raw)?;
    let token = !method.is_empty()
        && method.len() <= MAX_METHOD_LEN
        && method.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    token.then(|| method.to_ascii_lowercase())
}

/// `metadata.event_id` when it is a non-empty string or a number: the producer's own id of the event.
pub fn event_id(event: &str) -> Option<String> {
    let raw = json::at_path(event, &["metadata", "event_id"])?;
    key_text(raw).filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_comes_from_item_id_first() {
        let event = r#"{"specversion":"1.0","data":{"payload":{"item":{"id":"CMIP6.a.b","x":[1,2]},"item_id":"other"}}}"#;
        assert_eq!(record_key(event).as_deref(), Some("CMIP6.a.b"));
        // Order of members does not matter.
        let event = r#"{"data":{"payload":{"item_id":"other","item":{"x":[1],"id":"CMIP6.a.b"}}}}"#;
        assert_eq!(record_key(event).as_deref(), Some("CMIP6.a.b"));
    }

    #[test]
    fn key_falls_back_to_payload_item_id() {
        let event = r#"{"data":{"payload":{"item_id":"CMIP6.c"}}}"#;
        assert_eq!(record_key(event).as_deref(), Some("CMIP6.c"));
        let event = r#"{"data":{"payload":{"item":{"properties":{}},"item_id":"CMIP6.d"}}}"#;
        assert_eq!(record_key(event).as_deref(), Some("CMIP6.d"));
        let event = r#"{"data":{"payload":{"item":"not an object","item_id":"CMIP6.e"}}}"#;
        assert_eq!(record_key(event).as_deref(), Some("CMIP6.e"));
    }

    #[test]
    fn key_strings_are_unescaped_and_numbers_kept_verbatim() {
        assert_eq!(
            record_key(r#"{"data":{"payload":{"item":{"id":"a\u00e9\"b"}}}}"#).as_deref(),
            Some("aé\"b")
        );
        assert_eq!(record_key(r#"{"data":{"payload":{"item_id":12.50}}}"#).as_deref(), Some("12.50"));
    }

    #[test]
    fn events_without_an_envelope_key_have_none() {
        for event in [
            r#"{}"#,
            r#"{"data":null}"#,
            r#"{"data":[1]}"#,
            r#"{"data":{"payload":{}}}"#,
            r#"{"data":{"payload":{"item":{"id":null}}}}"#,
            r#"{"data":{"payload":{"item":{"id":{"nested":1}}}}}"#,
            r#"{"data":{"payload":{"item":{"id":true}}}}"#,
            r#"{"id":"top-level ids are not keys"}"#,
            "not json",
        ] {
            assert_eq!(record_key(event), None, "{event}");
        }
    }

    #[test]
    fn method_is_lower_cased_and_must_be_a_token() {
        assert_eq!(
            publication_method(r#"{"data":{"payload":{"method":"PATCH"}}}"#).as_deref(),
            Some("patch")
        );
        for event in [
            r#"{"data":{"payload":{"method":"a b"}}}"#,
            r#"{"data":{"payload":{"method":"x\ny"}}}"#,
            r#"{"data":{"payload":{"method":""}}}"#,
            r#"{"data":{"payload":{"method":7}}}"#,
            r#"{"data":{"payload":{}}}"#,
        ] {
            assert_eq!(publication_method(event), None, "{event}");
        }
    }

    #[test]
    fn event_id_comes_from_metadata() {
        assert_eq!(event_id(r#"{"metadata":{"event_id":"932bda79"}}"#).as_deref(), Some("932bda79"));
        assert_eq!(event_id(r#"{"metadata":{"event_id":""}}"#), None);
        assert_eq!(event_id(r#"{"metadata":{"time":"x"}}"#), None);
    }

    #[test]
    fn real_fixture_shapes() {
        let post = r#"{"metadata": {"time": "2026-07-19T08:14:12.057860"}, "data": {"type": "STAC", "payload":
            {"collection_id": "CMIP6", "method": "POST", "item": {"type": "Feature", "id":
            "CMIP6.DCPP.MOHC.HadGEM3-GC31-MM.dcppA-hindcast.s1960-r10i1p1f2.day.huss.gn.v20200417"}}}}"#;
        assert_eq!(
            record_key(post).as_deref(),
            Some("CMIP6.DCPP.MOHC.HadGEM3-GC31-MM.dcppA-hindcast.s1960-r10i1p1f2.day.huss.gn.v20200417")
        );
        assert_eq!(publication_method(post).as_deref(), Some("post"));
        assert_eq!(event_id(post), None);
    }
}
