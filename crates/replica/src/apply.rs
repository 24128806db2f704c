//! Applying one ESGF event to the index: the replica's whole meaning, kept apart from fetching and offsets.
//!
//! [`apply`] reads and writes only the `items` table through the connection it is given, which must be inside
//! the caller's transaction: the caller commits the change together with the consumer offset. A rejected event
//! writes nothing (every check happens before the single write at the end), so the caller can skip it without
//! a savepoint and the transaction stays usable.
//!
//! What an event means, following the STAC Transactions semantics the ESGF publishers use:
//! - `POST`: create `data.payload.item`; an existing id is rejected (`item-exists`).
//! - `PUT`: replace the item `data.payload.item_id` (else the item's own id); a missing one is rejected
//!   (`item-not-found`), so is a body whose id differs from the target (`item-id-mismatch`).
//! - `PATCH`: `data.payload.patch` is a JSON Patch (RFC 6902) operation list, the same list wrapped as
//!   `{"operations": [...]}` (the data-challenge publishers' shape), or else a JSON Merge Patch (RFC 7396)
//!   object. Retractions and replica additions are patches. An operation that cannot apply rejects the whole
//!   event (`invalid-patch`); so does a patch that changes the item's id or leaves something that is not an
//!   object.
//! - `DELETE`: remove the item (STAC Transactions has it, although ESGF retracts rather than deletes).

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};

use crate::canonical::to_canonical;
use crate::facets::Facets;

/// What an applied event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub action: Action,
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Replaced,
    Patched,
    Deleted,
}

/// Why an event was not applied. Everything but [`ApplyError::Storage`] is the event's fault: the replica
/// reports it and moves on (or stops, if told to); a storage failure stops the replica whatever it was told.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    InvalidEvent(String),
    #[error("item {0} does not exist")]
    NotFound(String),
    #[error("item {0} already exists")]
    Exists(String),
    #[error("the patch cannot be applied to item {id}: {reason}")]
    InvalidPatch { id: String, reason: String },
    #[error("the event targets item {target} but carries an item whose id is {found}")]
    IdMismatch { target: String, found: String },
    #[error("the index's storage failed")]
    Storage(#[from] rusqlite::Error),
}

impl ApplyError {
    /// The event's fault (report and go on), as opposed to the index's (stop).
    pub fn is_rejection(&self) -> bool {
        !matches!(self, ApplyError::Storage(_))
    }

    /// The `<kind>` of the problem type `urn:esgf-events:problem:<kind>`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApplyError::InvalidEvent(_) => "invalid-event",
            ApplyError::NotFound(_) => "item-not-found",
            ApplyError::Exists(_) => "item-exists",
            ApplyError::InvalidPatch { .. } => "invalid-patch",
            ApplyError::IdMismatch { .. } => "item-id-mismatch",
            ApplyError::Storage(_) => "storage-error",
        }
    }

    pub fn title(&self) -> &'static str {
        match self {
            ApplyError::InvalidEvent(_) => "Invalid event",
            ApplyError::NotFound(_) => "Item not found",
            ApplyError::Exists(_) => "Item already exists",
            ApplyError::InvalidPatch { .. } => "Invalid patch",
            ApplyError::IdMismatch { .. } => "Item id mismatch",
            ApplyError::Storage(_) => "Storage error",
        }
    }

    /// The status a STAC Transactions server answers the same request with.
    pub fn status(&self) -> u16 {
        match self {
            ApplyError::InvalidEvent(_) | ApplyError::InvalidPatch { .. } | ApplyError::IdMismatch { .. } => {
                400
            }
            ApplyError::NotFound(_) => 404,
            ApplyError::Exists(_) => 409,
            ApplyError::Storage(_) => 500,
        }
    }

    /// The item the event is about, when it got that far.
    pub fn item_id(&self) -> Option<&str> {
        match self {
            ApplyError::NotFound(id) | ApplyError::Exists(id) | ApplyError::InvalidPatch { id, .. } => {
                Some(id)
            }
            ApplyError::IdMismatch { target, .. } => Some(target),
            ApplyError::InvalidEvent(_) | ApplyError::Storage(_) => None,
        }
    }
}

/// A patch as an event carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch {
    /// RFC 6902, from a bare list or an `{"operations": [...]}` wrapper.
    Json(Vec<json_patch::PatchOperation>),
    /// RFC 7396.
    Merge(Value),
}

/// What an event asks of the index, once its envelope is understood.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Create { item: Map<String, Value> },
    Replace { id: String, item: Map<String, Value> },
    Patch { id: String, patch: Patch },
    Delete { id: String },
}

/// An event's envelope, understood: the change and the collection it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub change: Change,
    /// `data.payload.collection_id`, for items that name no collection themselves.
    pub collection_id: Option<String>,
}

impl Request {
    /// Understands an ESGF event (`{"metadata": ..., "data": {"payload": {"method": ..., ...}}}`).
    pub fn parse(event: &Value) -> Result<Request, ApplyError> {
        let invalid = |what: &str| ApplyError::InvalidEvent(what.to_owned());
        let payload = event
            .get("data")
            .and_then(|data| data.get("payload"))
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("the event has no data.payload object"))?;
        let method = payload
            .get("method")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("data.payload.method is missing or not a string"))?;
        let item_id = match payload.get("item_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
            Some(_) => return Err(invalid("data.payload.item_id is not a non-empty string")),
        };
        let item = || match payload.get("item") {
            Some(Value::Object(item)) => Ok(item.clone()),
            Some(_) => Err(invalid("data.payload.item is not an object")),
            None => Err(invalid("data.payload.item is missing")),
        };
        let own_id = |item: &Map<String, Value>| match item.get("id") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(id)) if !id.is_empty() => Ok(Some(id.clone())),
            Some(_) => Err(invalid("the item's id is not a non-empty string")),
        };
        let target = |what: &str| item_id.clone().ok_or_else(|| invalid(&format!("{what} without item_id")));

        let change = if method.eq_ignore_ascii_case("POST") {
            let item = item()?;
            let id = own_id(&item)?.ok_or_else(|| invalid("a POST item must have an id"))?;
            if let Some(target) = &item_id
                && *target != id
            {
                return Err(ApplyError::IdMismatch { target: target.clone(), found: id });
            }
            Change::Create { item }
        } else if method.eq_ignore_ascii_case("PUT") {
            let item = item()?;
            let own = own_id(&item)?;
            let id = match (&item_id, own) {
                (Some(target), Some(found)) if *target != found => {
                    return Err(ApplyError::IdMismatch { target: target.clone(), found });
                }
                (Some(target), _) => target.clone(),
                (None, Some(found)) => found,
                (None, None) => return Err(invalid("a PUT needs item_id or an item with an id")),
            };
            Change::Replace { id, item }
        } else if method.eq_ignore_ascii_case("PATCH") {
            let id = target("a PATCH")?;
            let patch = parse_patch(payload.get("patch"))
                .map_err(|reason| ApplyError::InvalidPatch { id: id.clone(), reason })?;
            Change::Patch { id, patch }
        } else if method.eq_ignore_ascii_case("DELETE") {
            Change::Delete { id: target("a DELETE")? }
        } else {
            return Err(invalid(&format!("unknown method {method:?} (expected POST, PUT, PATCH or DELETE)")));
        };
        let collection_id = payload.get("collection_id").and_then(Value::as_str).map(str::to_owned);
        Ok(Request { change, collection_id })
    }
}

fn parse_patch(patch: Option<&Value>) -> Result<Patch, String> {
    let operations = |list: &Value| {
        serde_json::from_value::<Vec<json_patch::PatchOperation>>(list.clone())
            .map(Patch::Json)
            .map_err(|e| format!("not a JSON Patch operation list: {e}"))
    };
    match patch {
        Some(list @ Value::Array(_)) => operations(list),
        // The wrapper, and only the wrapper: a merge patch that sets an item member named "operations" would
        // carry other members too, or a non-list value.
        Some(Value::Object(object))
            if object.len() == 1 && object.get("operations").is_some_and(Value::is_array) =>
        {
            operations(&object["operations"])
        }
        Some(merge @ Value::Object(_)) => Ok(Patch::Merge(merge.clone())),
        Some(other) => Err(format!("data.payload.patch is neither a list nor an object: {}", kind_of(other))),
        None => Err("data.payload.patch is missing".into()),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Applies `event` to the index through `conn`, which must be inside the caller's transaction.
pub fn apply(conn: &Connection, event: &Value) -> Result<Applied, ApplyError> {
    let Request { change, collection_id } = Request::parse(event)?;
    let collection = collection_id.as_deref();
    match change {
        Change::Create { item } => {
            let id = item.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            if load(conn, &id)?.is_some() {
                return Err(ApplyError::Exists(id));
            }
            store(conn, &id, &Value::Object(item), collection)?;
            Ok(Applied { action: Action::Created, id })
        }
        Change::Replace { id, mut item } => {
            if load(conn, &id)?.is_none() {
                return Err(ApplyError::NotFound(id));
            }
            // Every indexed item carries its id, so an export line stands on its own.
            item.entry("id").or_insert_with(|| Value::String(id.clone()));
            store(conn, &id, &Value::Object(item), collection)?;
            Ok(Applied { action: Action::Replaced, id })
        }
        Change::Patch { id, patch } => {
            let mut item = load(conn, &id)?.ok_or_else(|| ApplyError::NotFound(id.clone()))?;
            let invalid = |reason: String| ApplyError::InvalidPatch { id: id.clone(), reason };
            match &patch {
                // The unsafe variant leaves a half-patched document on failure, which is dropped here anyway;
                // the safe one would keep an undo copy of every operation.
                Patch::Json(operations) => {
                    json_patch::patch_unsafe(&mut item, operations).map_err(|e| invalid(e.to_string()))?;
                }
                Patch::Merge(merge) => json_patch::merge(&mut item, merge),
            }
            match item.get("id") {
                _ if !item.is_object() => return Err(invalid("the result is not an object".into())),
                Some(Value::String(new_id)) if *new_id == id => {}
                _ => return Err(invalid("a patch may not change or remove the item's id".into())),
            }
            store(conn, &id, &item, collection)?;
            Ok(Applied { action: Action::Patched, id })
        }
        Change::Delete { id } => {
            let deleted = conn.prepare_cached("DELETE FROM items WHERE id = ?1")?.execute(params![id])?;
            if deleted == 0 {
                return Err(ApplyError::NotFound(id));
            }
            Ok(Applied { action: Action::Deleted, id })
        }
    }
}

/// The stored item `id`, if there is one.
pub(crate) fn load(conn: &Connection, id: &str) -> Result<Option<Value>, ApplyError> {
    let text: Option<String> = conn
        .prepare_cached("SELECT item FROM items WHERE id = ?1")?
        .query_row(params![id], |row| row.get(0))
        .optional()?;
    match text {
        // The index wrote it; unreadable JSON there is corruption, not the event's fault.
        Some(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            ApplyError::Storage(rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                Box::new(e),
            ))
        }),
        None => Ok(None),
    }
}

fn store(conn: &Connection, id: &str, item: &Value, collection_id: Option<&str>) -> Result<(), ApplyError> {
    let facets = Facets::of(item, collection_id);
    conn.prepare_cached(
        "INSERT INTO items (id, collection, institution, source, experiment, variable, version, retracted, \
         latest, item) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
         ON CONFLICT (id) DO UPDATE SET collection = excluded.collection, institution = excluded.institution, \
         source = excluded.source, experiment = excluded.experiment, variable = excluded.variable, \
         version = excluded.version, retracted = excluded.retracted, latest = excluded.latest, \
         item = excluded.item",
    )?
    .execute(params![
        id,
        facets.collection,
        facets.institution,
        facets.source,
        facets.experiment,
        facets.variable,
        facets.version,
        facets.retracted,
        facets.latest,
        to_canonical(item),
    ])?;
    Ok(())
}
