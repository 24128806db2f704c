//! Lazy JSON navigation over borrowed text: one object level at a time, each member kept as a raw slice, so
//! looking up `data.payload.item.id` in a 1 MB event never builds the event's tree, and a scan stops at the
//! member it wants. Everything here is total: text that is not what was hoped for (not an object, malformed
//! after the member sought) just means "not found".

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// The message of the error a visitor returns to stop a scan early (never shown to anyone).
const STOP: &str = "scan stopped early";

/// A member name or string value: borrowed when the JSON spelling has no escapes, decoded otherwise.
pub(crate) struct Text<'de>(pub(crate) Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// Visits members in order; the callback returns `false` to stop.
struct Members<F>(F);

impl<'de, F: FnMut(&str, &'de RawValue) -> bool> Visitor<'de> for Members<F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(Text(name)) = map.next_key()? {
            let value: &'de RawValue = map.next_value()?;
            if !(self.0)(&name, value) {
                // serde_json insists on reading a map to its end; an error is the only way out early.
                return Err(de::Error::custom(STOP));
            }
        }
        Ok(())
    }
}

/// Visits elements in order; the callback returns `false` to stop.
struct Elements<F>(F);

impl<'de, F: FnMut(&'de RawValue) -> bool> Visitor<'de> for Elements<F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while let Some(element) = seq.next_element::<&'de RawValue>()? {
            if !(self.0)(element) {
                return Err(de::Error::custom(STOP));
            }
        }
        Ok(())
    }
}

/// Calls `each(name, value)` for the members of the object `raw` until it returns `false`. Nothing happens if
/// `raw` is not an object; a malformed object ends the scan where it breaks.
pub(crate) fn each_member<'a>(raw: &'a str, each: impl FnMut(&str, &'a RawValue) -> bool) {
    if !raw.trim_start().starts_with('{') {
        return;
    }
    let mut deserializer = serde_json::Deserializer::from_str(raw);
    // Err means malformed or stopped early: either way the callback has seen all it will see.
    let _ = deserializer.deserialize_map(Members(each));
}

/// Calls `each(element)` for the elements of the array `raw` until it returns `false`.
pub(crate) fn each_element<'a>(raw: &'a str, each: impl FnMut(&'a RawValue) -> bool) {
    if !raw.trim_start().starts_with('[') {
        return;
    }
    let mut deserializer = serde_json::Deserializer::from_str(raw);
    let _ = deserializer.deserialize_seq(Elements(each));
}

/// The first member called `name` of the object `raw`.
pub(crate) fn member<'a>(raw: &'a str, name: &str) -> Option<&'a RawValue> {
    let mut found = None;
    each_member(raw, |n, value| {
        if n == name {
            found = Some(value);
            return false;
        }
        true
    });
    found
}

/// The value at `segments` (member names, outermost first) below the object `raw`.
pub(crate) fn at_path<'a>(raw: &'a str, segments: &[&str]) -> Option<&'a RawValue> {
    let (first, rest) = segments.split_first()?;
    let mut value = member(raw, first)?;
    for segment in rest {
        value = member(value.get(), segment)?;
    }
    Some(value)
}

/// The decoded text of a JSON string; `None` for any other kind of value.
pub(crate) fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    if !raw.get().starts_with('"') {
        return None;
    }
    serde_json::from_str::<Text<'_>>(raw.get()).ok().map(|Text(text)| text)
}

/// Whether `raw` is a JSON number (its spelling is kept as is: `12.50` stays `12.50`).
pub(crate) fn is_number(raw: &RawValue) -> bool {
    matches!(raw.get().as_bytes().first(), Some(b'-' | b'0'..=b'9'))
}

/// `json` on one line: unchanged if it has no line break, otherwise without its insignificant whitespace.
///
/// For line-oriented transports (a server-sent event's `data:` field): producers often send pretty-printed
/// events, and a raw newline can only sit between tokens (never inside a JSON string), so dropping the
/// whitespace between tokens changes nothing a JSON parser sees. Input that is not valid JSON is handled
/// without failing: quotes are tracked naively and line breaks outside them are dropped.
pub fn single_line(json: &str) -> Cow<'_, str> {
    if !json.bytes().any(|b| b == b'\n' || b == b'\r') {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            ' ' | '\t' | '\n' | '\r' => {}
            '"' => {
                in_string = true;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).expect("valid JSON")
    }

    #[test]
    fn member_finds_the_first_match_and_ignores_non_objects() {
        let event = r#"{"a": 1, "b": {"c": [1, 2]}, "a": 2}"#;
        assert_eq!(member(event, "a").map(RawValue::get), Some("1"));
        assert_eq!(member(event, "b").map(RawValue::get), Some(r#"{"c": [1, 2]}"#));
        assert!(member(event, "z").is_none());
        for not_object in ["[1]", "\"a\"", "3", "", "null"] {
            assert!(member(not_object, "a").is_none(), "{not_object}");
        }
    }

    #[test]
    fn member_before_malformed_rest_is_still_found() {
        // The scan stops at the member, so what follows is never looked at.
        assert_eq!(member(r#"{"id": "x", "rest": ]]]"#, "id").map(RawValue::get), Some("\"x\""));
        assert!(member(r#"{"rest": ]]], "id": "x"}"#, "id").is_none());
    }

    #[test]
    fn escaped_member_names_are_decoded() {
        assert_eq!(
            member(r#"{"cmip6\u003ainstitution_id": "IPSL"}"#, "cmip6:institution_id").map(RawValue::get),
            Some("\"IPSL\"")
        );
    }

    #[test]
    fn at_path_walks_nested_objects() {
        let event = r#"{"data": {"payload": {"item": {"id": "CMIP6.x"}}}}"#;
        assert_eq!(
            at_path(event, &["data", "payload", "item", "id"]).map(RawValue::get),
            Some("\"CMIP6.x\"")
        );
        assert!(at_path(event, &["data", "payload", "item_id"]).is_none());
        assert!(at_path(event, &["data", "payload", "item", "id", "deeper"]).is_none());
    }

    #[test]
    fn elements_are_visited_until_stopped() {
        let mut seen = Vec::new();
        each_element("[1, \"two\", {\"x\": 3}, 4]", |e| {
            seen.push(e.get().to_owned());
            seen.len() < 3
        });
        assert_eq!(seen, ["1", "\"two\"", "{\"x\": 3}"]);
    }

    #[test]
    fn strings_are_decoded_and_other_kinds_are_not_strings() {
        assert_eq!(string(raw(r#""a\"b\u00e9""#)).as_deref(), Some("a\"bé"));
        assert!(matches!(string(raw(r#""plain""#)), Some(Cow::Borrowed("plain"))));
        assert!(string(raw("12")).is_none());
        assert!(is_number(raw("-1.5e3")) && !is_number(raw("true")));
    }

    #[test]
    fn single_line_keeps_one_line_json_untouched() {
        let json = r#"{ "a" : [1, 2] }"#;
        assert!(matches!(single_line(json), Cow::Borrowed(s) if s == json));
    }

    #[test]
    fn single_line_drops_whitespace_between_tokens_only() {
        let json = "{\n  \"a b\": \"x\\\" \\n y\",\r\n  \"c\": [\n 1,\n 2\n ]\n}";
        let line = single_line(json);
        assert_eq!(line, r#"{"a b":"x\" \n y","c":[1,2]}"#);
        let before: serde_json::Value = serde_json::from_str(json).expect("valid");
        let after: serde_json::Value = serde_json::from_str(&line).expect("still valid");
        assert_eq!(before, after);
    }

    proptest::proptest! {
        /// Whatever the formatting, one line carries the same JSON value.
        #[test]
        fn single_line_preserves_the_value(value in arbitrary_json(), pretty in proptest::bool::ANY) {
            let text = if pretty {
                serde_json::to_string_pretty(&value).expect("serializes")
            } else {
                serde_json::to_string(&value).expect("serializes")
            };
            let line = single_line(&text);
            proptest::prop_assert!(!line.contains('\n') && !line.contains('\r'));
            let back: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
            proptest::prop_assert_eq!(back, value);
        }
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[ -~\n\t\"\\\\é]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[ -~\n]{0,5}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
