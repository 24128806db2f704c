//! Per-topic validation of ESGF events before they enter the stream: a malformed event poisons every index
//! downstream, so it is cheaper to refuse it at the door. Every violation is reported (not just the first),
//! each with the RFC 6901 JSON pointer of the offending member, so a producer can fix a batch in one go.
//!
//! Levels:
//! - `none`: anything that is JSON.
//! - `esgf-envelope`: the envelope the index services rely on (`data.type == "STAC"`, a POST/PUT/PATCH payload
//!   with the members its method needs, an object `metadata`). Real production events pass (the piddiplatsch
//!   samples carry only `metadata.time`).
//! - `esgf-strict`: also the full metadata block of the ESGF event model, a STAC Item that is a valid STAC
//!   Feature per the STAC item spec, and each extension schema the item names in `stac_extensions` that the
//!   topic has registered.

use serde_json::{Map, Value};

use crate::schemas::SchemaRegistry;

/// A topic's validation policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ValidationPolicy {
    #[default]
    None,
    EsgfEnvelope,
    EsgfStrict,
}

impl ValidationPolicy {
    /// The spelling in topic settings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::EsgfEnvelope => "esgf-envelope",
            Self::EsgfStrict => "esgf-strict",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(Self::None),
            "esgf-envelope" => Some(Self::EsgfEnvelope),
            "esgf-strict" => Some(Self::EsgfStrict),
            _ => None,
        }
    }
}

impl std::fmt::Display for ValidationPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing wrong with an event: where (RFC 6901 pointer into the event; `""` = the whole event) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub pointer: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.pointer.is_empty() { "(event)" } else { &self.pointer };
        write!(f, "{at}: {}", self.message)
    }
}

/// The most violations reported for one event: a wildly wrong event must not produce an unbounded answer.
pub const MAX_VIOLATIONS: usize = 100;

/// Checks `event` (its JSON bytes) against `policy`. `schemas` holds the extension schemas the topic has
/// registered; an extension the item names that is not among them is not checked.
pub fn validate(
    policy: ValidationPolicy,
    event: &[u8],
    schemas: &SchemaRegistry,
) -> Result<(), Vec<Violation>> {
    if policy == ValidationPolicy::None {
        return Ok(());
    }
    let value: Value = match serde_json::from_slice(event) {
        Ok(value) => value,
        Err(e) => return Err(vec![violation("", format!("not valid JSON: {e}"))]),
    };
    let mut out = Out::default();
    envelope(&value, &mut out);
    if policy == ValidationPolicy::EsgfStrict {
        strict(&value, schemas, &mut out);
    }
    if out.0.is_empty() { Ok(()) } else { Err(out.0) }
}

#[derive(Default)]
struct Out(Vec<Violation>);

impl Out {
    fn push(&mut self, pointer: impl Into<String>, message: impl Into<String>) {
        if self.0.len() < MAX_VIOLATIONS {
            self.0.push(violation(pointer, message));
        }
    }
}

fn violation(pointer: impl Into<String>, message: impl Into<String>) -> Violation {
    Violation { pointer: pointer.into(), message: message.into() }
}

/// Escapes one reference token (RFC 6901 §3).
fn token(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `parent[name]` when it is an object; otherwise records why not.
fn object<'a>(
    parent: &'a Map<String, Value>,
    at: &str,
    name: &str,
    out: &mut Out,
) -> Option<&'a Map<String, Value>> {
    let pointer = format!("{at}/{}", token(name));
    match parent.get(name) {
        Some(Value::Object(map)) => Some(map),
        Some(other) => {
            out.push(pointer, format!("must be an object, found {}", kind(other)));
            None
        }
        None => {
            out.push(pointer, "is required");
            None
        }
    }
}

/// `parent[name]` must be a non-empty string.
fn string<'a>(parent: &'a Map<String, Value>, at: &str, name: &str, out: &mut Out) -> Option<&'a str> {
    let pointer = format!("{at}/{}", token(name));
    match parent.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(Value::String(_)) => {
            out.push(pointer, "must not be empty");
            None
        }
        Some(other) => {
            out.push(pointer, format!("must be a string, found {}", kind(other)));
            None
        }
        None => {
            out.push(pointer, "is required");
            None
        }
    }
}

fn envelope(event: &Value, out: &mut Out) {
    let Value::Object(root) = event else {
        out.push("", format!("an event must be a JSON object, found {}", kind(event)));
        return;
    };
    object(root, "", "metadata", out);
    let Some(data) = object(root, "", "data", out) else { return };
    match data.get("type") {
        Some(Value::String(t)) if t == "STAC" => {}
        Some(other) => out.push("/data/type", format!("must be \"STAC\", found {other}")),
        None => out.push("/data/type", "is required (\"STAC\")"),
    }
    let Some(payload) = object(data, "/data", "payload", out) else { return };
    let at = "/data/payload";
    let method = match payload.get("method") {
        Some(Value::String(m)) if matches!(m.as_str(), "POST" | "PUT" | "PATCH") => m.as_str(),
        Some(other) => {
            out.push(
                "/data/payload/method",
                format!("must be \"POST\", \"PUT\" or \"PATCH\", found {other}"),
            );
            return;
        }
        None => {
            out.push("/data/payload/method", "is required (\"POST\", \"PUT\" or \"PATCH\")");
            return;
        }
    };
    string(payload, at, "collection_id", out);
    match method {
        "POST" => {
            if let Some(item) = object(payload, at, "item", out) {
                string(item, "/data/payload/item", "id", out);
            }
        }
        "PUT" => {
            string(payload, at, "item_id", out);
            object(payload, at, "item", out);
        }
        _ => {
            string(payload, at, "item_id", out);
            patch(payload.get("patch"), out);
        }
    }
}

/// A PATCH's `patch`: an RFC 7396 merge-patch object, an RFC 6902 operation list, or the list wrapped as
/// `{"operations": [...]}` (seen in production data-challenge events).
fn patch(patch: Option<&Value>, out: &mut Out) {
    let at = "/data/payload/patch";
    match patch {
        None => out.push(at, "is required (a merge-patch object or a JSON Patch operation list)"),
        Some(Value::Array(ops)) => operations(ops, at, out),
        Some(Value::Object(map)) => {
            if let Some(Value::Array(ops)) = map.get("operations") {
                operations(ops, &format!("{at}/operations"), out);
            }
            // Any other object is a merge patch, and every object is a well-formed merge patch.
        }
        Some(other) => out.push(
            at,
            format!("must be a merge-patch object or a JSON Patch operation list, found {}", kind(other)),
        ),
    }
}

fn operations(ops: &[Value], at: &str, out: &mut Out) {
    if ops.is_empty() {
        out.push(at, "a JSON Patch must hold at least one operation");
    }
    for (i, op) in ops.iter().enumerate() {
        let at = format!("{at}/{i}");
        let Value::Object(op) = op else {
            out.push(at, format!("a JSON Patch operation must be an object, found {}", kind(op)));
            continue;
        };
        let Some(name) = string(op, &at, "op", out) else { continue };
        let needs: &[&str] = match name {
            "add" | "replace" | "test" => &["path", "value"],
            "remove" => &["path"],
            "move" | "copy" => &["path", "from"],
            other => {
                out.push(
                    format!("{at}/op"),
                    format!("unknown operation {other:?} (add, remove, replace, move, copy, test)"),
                );
                continue;
            }
        };
        for member in needs {
            let pointer = format!("{at}/{member}");
            match (op.get(*member), *member) {
                (None, _) => out.push(pointer, format!("is required for {name:?}")),
                (Some(_), "value") => {}
                (Some(Value::String(p)), _) if is_json_pointer(p) => {}
                (Some(Value::String(p)), _) => out.push(pointer, format!("{p:?} is not a JSON pointer")),
                (Some(other), _) => {
                    out.push(pointer, format!("must be a JSON pointer string, found {}", kind(other)))
                }
            }
        }
    }
}

/// RFC 6901: empty, or `/`-separated tokens where `~` only appears as `~0` or `~1`.
fn is_json_pointer(p: &str) -> bool {
    if p.is_empty() {
        return true;
    }
    if !p.starts_with('/') {
        return false;
    }
    let bytes = p.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| b != b'~' || matches!(bytes.get(i + 1), Some(b'0' | b'1')))
}

fn strict(event: &Value, schemas: &SchemaRegistry, out: &mut Out) {
    let Value::Object(root) = event else { return };
    if let Some(Value::Object(metadata)) = root.get("metadata") {
        let at = "/metadata";
        if let Some(auth) = object(metadata, at, "auth", out)
            && let Some(requester) = object(auth, "/metadata/auth", "requester_data", out)
        {
            for member in ["client_id", "iss", "sub"] {
                string(requester, "/metadata/auth/requester_data", member, out);
            }
        }
        if let Some(publisher) = object(metadata, at, "publisher", out) {
            string(publisher, "/metadata/publisher", "package", out);
            string(publisher, "/metadata/publisher", "version", out);
        }
        for member in ["event_id", "request_id", "time", "schema_version"] {
            string(metadata, at, member, out);
        }
    }
    let item = root
        .get("data")
        .and_then(|d| d.get("payload"))
        .and_then(|p| p.get("item"))
        .and_then(Value::as_object);
    if let Some(item) = item {
        stac_feature(item, out);
        extensions(item, schemas, out);
    }
}

/// The members the STAC Item specification (1.0/1.1) requires of an Item.
fn stac_feature(item: &Map<String, Value>, out: &mut Out) {
    let at = "/data/payload/item";
    match item.get("type") {
        Some(Value::String(t)) if t == "Feature" => {}
        Some(other) => out.push(format!("{at}/type"), format!("must be \"Feature\", found {other}")),
        None => out.push(format!("{at}/type"), "is required (\"Feature\")"),
    }
    string(item, at, "stac_version", out);
    string(item, at, "id", out);
    match item.get("geometry") {
        None => out.push(format!("{at}/geometry"), "is required (a GeoJSON geometry or null)"),
        Some(Value::Null) => {}
        Some(Value::Object(geometry)) => {
            string(geometry, &format!("{at}/geometry"), "type", out);
            // STAC: bbox is required whenever geometry is not null.
            match item.get("bbox") {
                Some(Value::Array(b)) if matches!(b.len(), 4 | 6) && b.iter().all(Value::is_number) => {}
                Some(_) => out.push(format!("{at}/bbox"), "must be an array of 4 or 6 numbers"),
                None => out.push(format!("{at}/bbox"), "is required when geometry is not null"),
            }
        }
        Some(other) => {
            out.push(format!("{at}/geometry"), format!("must be an object or null, found {}", kind(other)))
        }
    }
    if let Some(properties) = object(item, at, "properties", out) {
        let at = "/data/payload/item/properties";
        match properties.get("datetime") {
            Some(Value::String(_)) => {}
            Some(Value::Null) => {
                // A null datetime is allowed only with a range.
                string(properties, at, "start_datetime", out);
                string(properties, at, "end_datetime", out);
            }
            Some(other) => {
                out.push(format!("{at}/datetime"), format!("must be a string or null, found {}", kind(other)))
            }
            None => out.push(
                format!("{at}/datetime"),
                "is required (null only with start_datetime and end_datetime)",
            ),
        }
    }
    match item.get("links") {
        Some(Value::Array(_)) => {}
        Some(other) => out.push(format!("{at}/links"), format!("must be an array, found {}", kind(other))),
        None => out.push(format!("{at}/links"), "is required"),
    }
    object(item, at, "assets", out);
    match item.get("stac_extensions") {
        None => {}
        Some(Value::Array(list)) => {
            for (i, entry) in list.iter().enumerate() {
                if !entry.is_string() {
                    out.push(format!("{at}/stac_extensions/{i}"), "must be a schema URL string");
                }
            }
        }
        Some(other) => {
            out.push(format!("{at}/stac_extensions"), format!("must be an array, found {}", kind(other)))
        }
    }
}

/// Runs each registered extension schema the item names. The item is re-wrapped as a `Value` only when a
/// schema actually applies.
fn extensions(item: &Map<String, Value>, schemas: &SchemaRegistry, out: &mut Out) {
    let Some(Value::Array(list)) = item.get("stac_extensions") else { return };
    let mut instance = None;
    for url in list.iter().filter_map(Value::as_str) {
        let validator = match schemas.validator(url) {
            Ok(Some(validator)) => validator,
            Ok(None) => continue,
            Err(e) => {
                out.push("/data/payload/item/stac_extensions", e.to_string());
                continue;
            }
        };
        let instance = instance.get_or_insert_with(|| Value::Object(item.clone()));
        for error in validator.iter_errors(instance) {
            schema_violation(&error, url, 0, out);
        }
    }
}

/// How deep `oneOf`/`anyOf` branches are followed when explaining a schema violation.
const MAX_BRANCH_DEPTH: usize = 8;

/// Reports a schema error where it happened. A failed `oneOf`/`anyOf` says only "no branch matched", which is
/// useless to a producer; the branch with the fewest errors is the one the item was most nearly meant to
/// match (the extension schemas choose Item vs Collection this way), so its errors are reported instead.
fn schema_violation(error: &jsonschema::ValidationError<'_>, url: &str, depth: usize, out: &mut Out) {
    use jsonschema::error::ValidationErrorKind;
    if let ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } =
        error.kind()
        && depth < MAX_BRANCH_DEPTH
        && let Some(branch) = context.iter().filter(|b| !b.is_empty()).min_by_key(|b| b.len())
    {
        for inner in branch {
            schema_violation(inner, url, depth + 1, out);
        }
        return;
    }
    let pointer = format!("/data/payload/item{}", error.instance_path().as_str());
    out.push(pointer, format!("{} (schema {url})", error.masked()));
}

#[cfg(test)]
mod tests;
