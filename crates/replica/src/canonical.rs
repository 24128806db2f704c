//! Canonical JSON: object keys sorted (by their UTF-8 bytes), no insignificant whitespace, strings and numbers
//! as serde_json writes them.
//!
//! Two replicas that applied the same events hold byte-identical canonical items, so their exports can be
//! compared with `cmp`. The writer does not rely on serde_json's map ordering: a dependency enabling its
//! `preserve_order` feature anywhere in the build would silently change that ordering for everyone.

use serde_json::Value;

/// `value` as canonical JSON text.
pub fn to_canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

/// Appends `value` as canonical JSON text to `out`.
pub fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            // Scalars have exactly one compact form; serde_json's escaping is the reference.
            out.push_str(&value.to_string());
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_level_without_whitespace() {
        let value: Value =
            serde_json::from_str(r#"{ "b": 1, "a": { "z": [ 3, { "y": null, "x": true } ], "c": "s" } }"#)
                .unwrap();
        assert_eq!(to_canonical(&value), r#"{"a":{"c":"s","z":[3,{"x":true,"y":null}]},"b":1}"#);
    }

    #[test]
    fn strings_are_escaped_and_numbers_kept() {
        let value = json!({"q": "a\"b\\c\n\u{1}é", "n": -1.5e-7, "i": 12345678901234567u64});
        let text = to_canonical(&value);
        assert_eq!(text, r#"{"i":12345678901234567,"n":-1.5e-7,"q":"a\"b\\c\n\u0001é"}"#);
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
    }

    #[test]
    fn equal_values_have_equal_text_whatever_the_input_order() {
        let a: Value = serde_json::from_str(r#"{"x":1,"y":{"p":[1,2],"q":"r"}}"#).unwrap();
        let b: Value = serde_json::from_str("{\"y\":{\"q\":\"r\",\n \"p\":[1, 2]},\"x\":1}").unwrap();
        assert_eq!(to_canonical(&a), to_canonical(&b));
    }
}
