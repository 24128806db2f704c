//! What the ESGF Event Service knows about ESGF event envelopes: JSON-aware, transport-free.
//!
//! - [`record_key`]: the record key an event implies (its STAC item id), so every event about one dataset
//!   goes to one partition, in order; also [`publication_method`] and [`event_id`].
//! - [`Filter`] and [`Selector`]: server-side filters (`filter=data.payload.collection_id:CMIP6`,
//!   `key_prefix=CMIP6.`), shared by every way of reading events.
//! - [`to_cloudevent`]: a record as a CloudEvents 1.0 JSON document.
//! - [`validate`]: a topic's [`ValidationPolicy`] (`none`, `esgf-envelope`, `esgf-strict`) applied to one
//!   event, every violation with its JSON pointer; [`SchemaRegistry`] holds the shipped extension schemas.
//! - [`single_line`]: JSON on one line, for line-oriented transports.
//!
//! Events are looked at lazily: one object level at a time, each member a raw slice of the stored bytes, so
//! no event is ever built into a tree and the stored bytes stay the single source of truth.

mod cloudevents;
mod envelope;
mod filter;
mod json;
mod schemas;
mod validate;

pub use cloudevents::{RecordRef, base64, cloudevent_type, rfc3339_millis, to_cloudevent};
pub use envelope::{event_id, publication_method, record_key};
pub use filter::{Filter, FilterError, MAX_FILTER_BYTES, MAX_FILTERS, MAX_PATH_SEGMENTS, Selector};
pub use json::single_line;
pub use schemas::{SchemaError, SchemaRegistry, normalize_schema_id};
pub use validate::{MAX_VIOLATIONS, ValidationPolicy, Violation, validate};
