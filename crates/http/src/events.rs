//! Publishing and reading events.
//!
//! Publishing stores each event's exact JSON bytes (no re-serialization), keyed like the ESGF envelope says and
//! partitioned like Kafka's default partitioner. A request is validated whole (limits, the topic's lifecycle
//! state and validation policy from the catalogue), and charged against the producer's rate limit, before
//! anything is appended, so a refused batch leaves nothing behind. Events whose `metadata.event_id` the topic has
//! already seen within the dedupe window are not appended again: their original position is returned with
//! `"duplicate": true`. Reading embeds the stored
//! bytes back verbatim, or as CloudEvents (`format=cloudevents`); it may start at a consumer group's committed
//! offset (`group=`) and keep only the events that pass server-side filters (`filter=`, `key_prefix=`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use esgf_events_catalogue::Dedupe;
use esgf_events_engine::{AppendOutcome, NewRecord, ReadLimits, Record, StoreError};
use esgf_events_envelope::{RecordRef, Selector, base64, record_key, to_cloudevent};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::access::Caller;
use crate::body::{
    QueryPairs, check_query, check_query_repeatable, invalid_param, path_param, query_pairs, query_value,
    query_values, read_body, require_json,
};
use crate::error::{ApiError, close_connection};
use crate::groups::{committed, open_group};
use crate::partitioner::partition_for_key;
use crate::topics::format_timestamp;
use crate::{DEFAULT_READ_LIMIT, HttpConfig, SharedState};

// ---------------------------------------------------------------------------------------------------------------
// Publish
// ---------------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
struct Placement {
    partition: u32,
    offset: u64,
    /// The event repeats an `event_id` already published on the topic: nothing was appended, this is where
    /// the original is.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

#[derive(Debug, Serialize)]
struct PublishResponse {
    results: Vec<Placement>,
}

pub(crate) async fn publish(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<QueryPairs>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    // Refusals decided before the body is read close the connection (see `close_connection`).
    let refuse = |err: ApiError| {
        let mut response = err.into_response();
        close_connection(&mut response);
        response
    };
    let topic = path_param(path).map_err(refuse)?;
    let query = query_pairs(query).map_err(refuse)?;
    check_query(&query, &["key"]).map_err(refuse)?;
    let query_key = match query_value(&query, "key") {
        Some("") => {
            return Err(refuse(invalid_param("key", "must not be empty; omit it to publish without a key")));
        }
        Some(key) => Some(Bytes::copy_from_slice(key.as_bytes())),
        None => None,
    };
    require_json(&headers).map_err(refuse)?;

    // Before reading the body: an unknown topic should not cost us up to `max_body_bytes` of buffering.
    let info = state.store.describe_topic(&topic).await.map_err(|e| refuse(e.into()))?;
    let caller = caller.and_then(|Extension(Caller(identity))| identity);
    publish_body(state, caller, topic, info, query_key, headers, body)
        .await
        .map_err(IntoResponse::into_response)
}

async fn publish_body(
    state: SharedState,
    caller: Option<esgf_events_auth::Identity>,
    topic: String,
    info: esgf_events_engine::TopicInfo,
    query_key: Option<Bytes>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let body = read_body(&headers, body, state.config.max_body_bytes).await?;
    let events = split_events(&body, &state.config)?;

    // The topic's lifecycle state and validation policy, before anything is charged or appended.
    if let Some(catalogue) = &state.catalogue {
        catalogue.check_publish(&topic, events.iter().map(|e| e.get().as_bytes()))?;
    }

    // Charged only for a batch that is otherwise acceptable, and all-or-nothing: a refused batch costs nothing.
    if let (Some(auth), Some(who)) = (&state.auth, &caller) {
        let count = u32::try_from(events.len()).unwrap_or(u32::MAX);
        let bytes = events.iter().map(|e| e.get().len() as u64).sum();
        auth.check_publish_rate(who, count, bytes)
            .map_err(|limited| ApiError::RateLimited { policy: "publish", limited })?;
    }

    // Idempotent publish: every event id of the request is looked up before anything is appended.
    let dedupe = match &state.catalogue {
        Some(catalogue) => {
            // Collected first: an iterator borrowing across the await trips the handler's `Send` inference.
            let texts: Vec<&str> = events.iter().map(|e| e.get()).collect();
            catalogue.find_duplicates(&topic, texts, info.retention.max_age).await?
        }
        None => vec![Dedupe::New; events.len()],
    };

    // Everything below is infallible until the appends: the request is fully validated at this point.
    let mut round_robin = None;
    let mut groups: BTreeMap<u32, (Vec<usize>, Vec<NewRecord>)> = BTreeMap::new();
    for (index, event) in events.iter().enumerate() {
        if dedupe[index] != Dedupe::New {
            continue;
        }
        let key = query_key.clone().or_else(|| record_key(event.get()).map(Bytes::from));
        let partition = match &key {
            Some(key) => partition_for_key(key, info.partitions),
            // All unkeyed events of one request share a partition, so an unkeyed batch stays one atomic append.
            None => *round_robin.get_or_insert_with(|| state.next_round_robin(info.partitions)),
        };
        let group = groups.entry(partition).or_default();
        group.0.push(index);
        group.1.push(NewRecord {
            timestamp_ms: None,
            key,
            // Zero-copy: the event's exact bytes, borrowed from the request body.
            value: body.slice_ref(event.get().as_bytes()),
            headers: Vec::new(),
        });
    }
    let count = events.len();
    let appended =
        if groups.is_empty() { Vec::new() } else { append_groups(&state, &topic, groups, count).await? };
    let mut results = vec![Placement { partition: 0, offset: 0, duplicate: false }; count];
    for (index, decision) in dedupe.iter().enumerate() {
        results[index] = match *decision {
            Dedupe::New => appended[index],
            Dedupe::Duplicate(original) => {
                Placement { partition: original.partition, offset: original.offset, duplicate: true }
            }
            Dedupe::SameAs(first) => Placement { duplicate: true, ..appended[first] },
        };
    }
    if let Some(catalogue) = &state.catalogue {
        let placed: Vec<(&str, u32, u64)> = dedupe
            .iter()
            .enumerate()
            .filter(|(_, d)| **d == Dedupe::New)
            .map(|(i, _)| (events[i].get(), results[i].partition, results[i].offset))
            .collect();
        // Written after the append: a crash in between lets one re-publish of these ids through (documented).
        if let Err(e) = catalogue.record_event_ids(&topic, placed).await {
            tracing::error!(%topic, error = %e, "events appended but their event ids were not recorded");
        }
    }
    let (mut new_events, mut new_bytes) = (0u64, 0u64);
    for (index, decision) in dedupe.iter().enumerate() {
        if *decision == Dedupe::New {
            new_events += 1;
            new_bytes += events[index].get().len() as u64;
        }
    }
    esgf_events_ops::metrics::published(&topic, "http", new_events, new_bytes, started.elapsed());
    drop(events);
    tracing::debug!(%topic, events = count, "published");
    Ok((StatusCode::CREATED, axum::Json(PublishResponse { results })).into_response())
}

/// Parses the body into its events: one object, or an array of objects. Checks every limit, so the caller can
/// append without further validation.
fn split_events<'a>(body: &'a [u8], config: &HttpConfig) -> Result<Vec<&'a RawValue>, ApiError> {
    let first = body.iter().copied().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    // One pass either way: look at the first byte instead of parsing once to find the shape and again for items.
    let events = if first == Some(b'[') {
        let events: Vec<&RawValue> =
            serde_json::from_slice(body).map_err(|err| ApiError::malformed_json(&err))?;
        if events.is_empty() {
            return Err(ApiError::InvalidRequest(
                "the batch is an empty array: send at least one event".to_owned(),
            ));
        }
        if events.len() > config.max_batch_events {
            return Err(ApiError::BatchTooLarge { events: events.len(), max: config.max_batch_events });
        }
        for (index, event) in events.iter().enumerate() {
            if !event.get().starts_with('{') {
                return Err(ApiError::InvalidEvent {
                    index: Some(index),
                    detail: format!(
                        "batch element {index} is not a JSON object: every event must be an object"
                    ),
                });
            }
        }
        events
    } else {
        let event: &RawValue = serde_json::from_slice(body).map_err(|err| ApiError::malformed_json(&err))?;
        if !event.get().starts_with('{') {
            return Err(ApiError::InvalidEvent {
                index: None,
                detail: "the body must be a JSON object (one event) or an array of objects (a batch)"
                    .to_owned(),
            });
        }
        vec![event]
    };
    for (index, event) in events.iter().enumerate() {
        let size = event.get().len();
        if size > config.max_event_bytes {
            return Err(ApiError::EventTooLarge { index, size, max: config.max_event_bytes });
        }
    }
    Ok(events)
}

/// Appends each partition's events as one batch (concurrently when there are several) and maps the offsets
/// back to input order. A batch spanning partitions is not atomic across them: if one append fails, others may
/// already have succeeded (documented limitation); the error is what the client sees.
async fn append_groups(
    state: &SharedState,
    topic: &str,
    groups: BTreeMap<u32, (Vec<usize>, Vec<NewRecord>)>,
    count: usize,
) -> Result<Vec<Placement>, ApiError> {
    let mut results = vec![Placement { partition: 0, offset: 0, duplicate: false }; count];
    let mut place = |partition: u32, indices: &[usize], outcome: AppendOutcome| {
        for (i, &index) in indices.iter().enumerate() {
            results[index] =
                Placement { partition, offset: outcome.base_offset + i as u64, duplicate: false };
        }
    };

    if groups.len() == 1 {
        for (partition, (indices, records)) in groups {
            let outcome = state.store.append(topic, partition, records).await?;
            place(partition, &indices, outcome);
        }
        return Ok(results);
    }

    // Spawned, not just joined: once started, every partition's append runs to completion even if the client
    // goes away, so what was acknowledged internally is never half-abandoned.
    let mut tasks = tokio::task::JoinSet::new();
    for (partition, (indices, records)) in groups {
        let store = state.store.clone();
        let topic = topic.to_owned();
        tasks.spawn(async move {
            let outcome = store.append(&topic, partition, records).await;
            (partition, indices, outcome)
        });
    }
    let mut first_error = None;
    let mut appended = 0usize;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((partition, indices, Ok(outcome))) => {
                appended += 1;
                place(partition, &indices, outcome);
            }
            Ok((partition, _, Err(err))) => {
                tracing::warn!(%topic, partition, error = %err, "append of one partition's share of a batch failed");
                first_error.get_or_insert(ApiError::Store(err));
            }
            Err(join_error) => {
                tracing::error!(%topic, error = %join_error, "append task failed");
                first_error.get_or_insert(ApiError::Store(StoreError::Backend(format!(
                    "append task failed: {join_error}"
                ))));
            }
        }
    }
    match first_error {
        Some(err) => {
            if appended > 0 {
                tracing::warn!(%topic, partitions_appended = appended, "batch partially appended across partitions");
            }
            Err(err)
        }
        None => Ok(results),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Read
// ---------------------------------------------------------------------------------------------------------------

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    Earliest,
    Offset(u64),
    /// The first record at or after this time (ms since the epoch), or the log end if there is none yet.
    Since(i64),
}

/// How events are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The stored event JSON, as published.
    Native,
    /// Each event as a CloudEvents 1.0 JSON document (structured mode).
    CloudEvents,
}

/// `format=`: `cloudevents`, or `native` (the default).
pub(crate) fn parse_format(pairs: &[(String, String)]) -> Result<Format, ApiError> {
    match query_value(pairs, "format") {
        None | Some("native") => Ok(Format::Native),
        Some("cloudevents") => Ok(Format::CloudEvents),
        Some(_) => Err(invalid_param("format", "must be 'cloudevents' or 'native' (the default)")),
    }
}

/// `filter=` (any number, ANDed) and `key_prefix=`.
pub(crate) fn parse_selector(pairs: &[(String, String)]) -> Result<Selector, ApiError> {
    let key_prefix = query_value(pairs, "key_prefix");
    if key_prefix == Some("") {
        return Err(invalid_param("key_prefix", "must not be empty; omit it to select every key"));
    }
    Selector::parse(query_values(pairs, "filter"), key_prefix).map_err(|err| invalid_param("filter", err))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadQuery {
    pub(crate) partition: u32,
    pub(crate) start: Start,
    pub(crate) limit: usize,
    pub(crate) wait: Duration,
    /// Start at this consumer group's committed offset.
    pub(crate) group: Option<String>,
    pub(crate) format: Format,
    pub(crate) selector: Selector,
}

const READ_PARAMS: [&str; 9] =
    ["partition", "offset", "since", "limit", "wait", "group", "format", "filter", "key_prefix"];

/// Records one filtered read may look at before answering (with what it found, maybe nothing, and the offset
/// to continue from), so a filter that matches nothing cannot make one request scan the whole log.
const MAX_SCANNED_RECORDS: usize = 10_000;

/// Parses and bounds the read parameters. Out-of-bounds values are refused rather than clamped, so a client is
/// never silently given less than it asked for.
pub(crate) fn parse_read_query(
    pairs: &[(String, String)],
    config: &HttpConfig,
) -> Result<ReadQuery, ApiError> {
    check_query_repeatable(pairs, &READ_PARAMS, &["filter"])?;

    let partition = match query_value(pairs, "partition") {
        None => 0,
        Some(v) => {
            v.parse::<u32>().map_err(|_| invalid_param("partition", "must be a non-negative integer"))?
        }
    };

    let start = match (query_value(pairs, "offset"), query_value(pairs, "since")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidQuery {
                detail: "give either 'offset' or 'since', not both".to_owned(),
                parameters: vec!["offset".to_owned(), "since".to_owned()],
            });
        }
        (Some(v), None) => Start::Offset(
            v.parse::<u64>().map_err(|_| invalid_param("offset", "must be a non-negative integer"))?,
        ),
        (None, Some(v)) => Start::Since(parse_since(v)?),
        (None, None) => Start::Earliest,
    };

    let group = query_value(pairs, "group").map(str::to_owned);
    if group.is_some() && start != Start::Earliest {
        return Err(ApiError::InvalidQuery {
            detail: "'group' reads from the group's committed offset: give no 'offset' or 'since' with it"
                .to_owned(),
            parameters: vec!["group".to_owned()],
        });
    }

    let limit = match query_value(pairs, "limit") {
        None => DEFAULT_READ_LIMIT.min(config.max_read_limit),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=config.max_read_limit).contains(&n) => n,
            _ => {
                return Err(invalid_param(
                    "limit",
                    format!("must be an integer from 1 to {}", config.max_read_limit),
                ));
            }
        },
    };

    let wait = match query_value(pairs, "wait") {
        None => Duration::ZERO,
        Some(v) => {
            let max = config.max_wait.as_secs_f64();
            let bad = || invalid_param("wait", format!("must be a number of seconds from 0 to {max}"));
            let seconds = v.parse::<f64>().map_err(|_| bad())?;
            if !(0.0..=max).contains(&seconds) {
                return Err(bad());
            }
            Duration::try_from_secs_f64(seconds).map_err(|_| bad())?.min(config.max_wait)
        }
    };

    Ok(ReadQuery {
        partition,
        start,
        limit,
        wait,
        group,
        format: parse_format(pairs)?,
        selector: parse_selector(pairs)?,
    })
}

/// `since=` as milliseconds since the epoch.
pub(crate) fn parse_since(value: &str) -> Result<i64, ApiError> {
    let at = chrono::DateTime::parse_from_rfc3339(value).map_err(|err| {
        invalid_param("since", format!("must be an RFC 3339 time like 2026-11-27T10:00:00Z ({err})"))
    })?;
    Ok(at.timestamp_millis())
}

pub(crate) async fn read(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<QueryPairs>, QueryRejection>,
) -> Result<Response, ApiError> {
    let topic = path_param(path)?;
    let q = parse_read_query(&query_pairs(query)?, &state.config)?;
    let store = state.store.as_ref();
    // Responses stay within the same byte budget as requests (the store still returns at least one record).
    let limits = ReadLimits { max_records: q.limit, max_bytes: state.config.max_body_bytes };

    let mut offset = match (&q.group, q.start) {
        (Some(group), _) => {
            let caller = caller.as_ref().and_then(|Extension(Caller(identity))| identity.as_ref());
            let offsets = open_group(&state, caller, group).await?;
            let bounds = store.offsets(&topic, q.partition).await?;
            // Retention may have passed the commit; a commit beyond the end (not made here) reads the end.
            committed(&offsets, group, &topic, q.partition)
                .await?
                .map_or(bounds.earliest, |offset| offset.clamp(bounds.earliest, bounds.latest))
        }
        (None, Start::Offset(offset)) => offset,
        (None, Start::Earliest) => store.offsets(&topic, q.partition).await?.earliest,
        (None, Start::Since(ms)) => match store.offset_for_timestamp(&topic, q.partition, ms).await? {
            Some(offset) => offset,
            None => store.offsets(&topic, q.partition).await?.latest,
        },
    };
    let from_earliest = q.group.is_some() || q.start == Start::Earliest;

    let deadline = Instant::now() + q.wait;
    let mut scanned = 0usize;
    loop {
        let result = match store.read(&topic, q.partition, offset, limits).await {
            // Retention may have moved the start between our two calls; "earliest" means whatever is earliest now.
            Err(StoreError::OffsetOutOfRange { earliest, .. }) if from_earliest && offset < earliest => {
                store.read(&topic, q.partition, earliest, limits).await?
            }
            other => other?,
        };
        let found = !result.records.is_empty();
        scanned += result.records.len();
        offset = result.next_offset;
        let selected: Vec<&Record> =
            result.records.iter().filter(|r| q.selector.matches(r.key.as_deref(), &r.value)).collect();
        if !selected.is_empty() || scanned >= MAX_SCANNED_RECORDS {
            let bytes = selected.iter().map(|r| r.value.len() as u64).sum();
            esgf_events_ops::metrics::read(&topic, "http", selected.len() as u64, bytes);
            return Ok(read_response(&topic, q.partition, &selected, offset, q.format));
        }
        if found {
            // Everything read was filtered out: look further at once.
            continue;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(read_response(&topic, q.partition, &[], offset, q.format));
        }
        let arrived = tokio::select! {
            arrived = store.wait_for(&topic, q.partition, offset, remaining) => arrived?,
            // Draining must not wait out every long-poll: answer "nothing yet" and let the client come back.
            () = state.shutdown.begun() => false,
        };
        if !arrived {
            return Ok(read_response(&topic, q.partition, &[], offset, q.format));
        }
    }
}

#[derive(Serialize)]
struct ReadResponse<T> {
    events: Vec<T>,
    next_offset: u64,
}

#[derive(Serialize)]
struct EventOut<'a> {
    partition: u32,
    offset: u64,
    timestamp: String,
    key: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    headers: Vec<HeaderOut<'a>>,
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    name: &'a str,
    value: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

/// Bytes as text when they are UTF-8; otherwise a lossy rendering plus the exact bytes in base64.
fn text_or_base64(bytes: &[u8]) -> (Cow<'_, str>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Cow::Borrowed(text), None),
        Err(_) => (String::from_utf8_lossy(bytes), Some(base64(bytes))),
    }
}

fn event_out(partition: u32, record: &Record) -> EventOut<'_> {
    let (key, key_base64) = match record.key.as_deref().map(text_or_base64) {
        Some((text, b64)) => (Some(text), b64),
        None => (None, None),
    };
    // Values published over HTTP are always JSON; a record from another producer may not be.
    let (value, value_base64) = match serde_json::from_slice::<&RawValue>(&record.value) {
        Ok(raw) => (Some(raw), None),
        Err(_) => (None, Some(base64(&record.value))),
    };
    let headers = record
        .headers
        .iter()
        .map(|h| {
            let (value, value_base64) = text_or_base64(&h.value);
            HeaderOut { name: &h.name, value, value_base64 }
        })
        .collect();
    EventOut {
        partition,
        offset: record.offset,
        timestamp: format_timestamp(record.timestamp_ms),
        key,
        key_base64,
        value,
        value_base64,
        headers,
    }
}

fn read_response(
    topic: &str,
    partition: u32,
    records: &[&Record],
    next_offset: u64,
    format: Format,
) -> Response {
    let encoded = match format {
        Format::Native => serde_json::to_vec(&ReadResponse {
            events: records.iter().map(|r| event_out(partition, r)).collect(),
            next_offset,
        }),
        Format::CloudEvents => {
            let events: Result<Vec<Box<RawValue>>, _> = records
                .iter()
                .map(|r| {
                    let at = RecordRef { topic, partition, offset: r.offset, timestamp_ms: r.timestamp_ms };
                    RawValue::from_string(to_cloudevent(&at, &r.value))
                })
                .collect();
            events.and_then(|events| serde_json::to_vec(&ReadResponse { events, next_offset }))
        }
    };
    match encoded {
        Ok(bytes) => {
            let mut response = (StatusCode::OK, bytes).into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        // Cannot happen (every part is plain data or already-valid JSON); still an answer, not a panic.
        Err(err) => ApiError::Store(StoreError::Backend(format!("could not encode the response: {err}")))
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> QueryPairs {
        list.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    fn parse(list: &[(&str, &str)]) -> Result<ReadQuery, ApiError> {
        parse_read_query(&pairs(list), &HttpConfig::default())
    }

    fn query(partition: u32, start: Start, limit: usize, wait: Duration) -> ReadQuery {
        ReadQuery {
            partition,
            start,
            limit,
            wait,
            group: None,
            format: Format::Native,
            selector: Selector::default(),
        }
    }

    #[test]
    fn read_query_defaults_to_partition_0_from_earliest() {
        let q = parse(&[]).expect("valid");
        assert_eq!(q, query(0, Start::Earliest, 100, Duration::ZERO));
    }

    #[test]
    fn read_query_parses_every_parameter() {
        let q = parse(&[("partition", "3"), ("offset", "40"), ("limit", "1000"), ("wait", "2.5")])
            .expect("valid");
        assert_eq!(q, query(3, Start::Offset(40), 1000, Duration::from_millis(2500)));
        let q = parse(&[("since", "2026-11-27T10:00:00Z")]).expect("valid");
        assert_eq!(q.start, Start::Since(1_795_773_600_000));
        let q = parse(&[("since", "2026-11-27T11:00:00.5+01:00")]).expect("valid");
        assert_eq!(q.start, Start::Since(1_795_773_600_500));
        let q = parse(&[
            ("group", "indexer"),
            ("format", "cloudevents"),
            ("filter", "data.payload.collection_id:CMIP6"),
            ("filter", "data.payload.method:POST"),
            ("key_prefix", "CMIP6."),
        ])
        .expect("valid");
        assert_eq!(q.group.as_deref(), Some("indexer"));
        assert_eq!(q.format, Format::CloudEvents);
        assert_eq!(q.selector.filters().len(), 2);
        assert_eq!(q.selector.key_prefix(), Some(&b"CMIP6."[..]));
    }

    #[test]
    fn offset_and_since_together_are_refused() {
        let err = parse(&[("offset", "1"), ("since", "2026-11-27T10:00:00Z")]).expect_err("both");
        assert_eq!(err.kind(), "invalid-query");
    }

    #[test]
    fn group_with_a_start_position_is_refused() {
        for start in [("offset", "1"), ("since", "2026-11-27T10:00:00Z")] {
            let err = parse(&[("group", "g"), start]).expect_err("group and a start");
            assert_eq!(err.to_problem()["parameters"], serde_json::json!(["group"]));
        }
    }

    #[test]
    fn read_query_refuses_out_of_bounds_values() {
        for bad in [
            [("limit", "0")],
            [("limit", "1001")],
            [("limit", "ten")],
            [("wait", "31")],
            [("wait", "-1")],
            [("wait", "NaN")],
            [("offset", "-1")],
            [("partition", "x")],
            [("since", "yesterday")],
            [("format", "xml")],
            [("filter", "no-colon")],
            [("key_prefix", "")],
        ] {
            let err = parse(&bad).expect_err(&format!("{bad:?}"));
            assert_eq!(err.kind(), "invalid-query", "{bad:?}");
            assert_eq!(err.to_problem()["parameters"], serde_json::json!([bad[0].0]), "{bad:?}");
        }
    }

    #[test]
    fn bad_filter_is_explained_with_the_syntax() {
        let err = parse(&[("filter", "data.payload.collection_id=CMIP6")]).expect_err("wrong separator");
        let detail = err.to_problem()["detail"].as_str().unwrap_or_default().to_owned();
        assert!(
            detail.contains("PATH:VALUE") && detail.contains("data.payload.collection_id:CMIP6"),
            "{detail}"
        );
    }

    #[test]
    fn read_query_refuses_unknown_and_repeated_parameters() {
        let err = parse(&[("ofset", "4")]).expect_err("unknown");
        assert_eq!(err.to_problem()["parameters"], serde_json::json!(["ofset"]));
        let err = parse(&[("limit", "4"), ("limit", "5")]).expect_err("repeated");
        assert_eq!(err.to_problem()["parameters"], serde_json::json!(["limit"]));
    }

    #[test]
    fn single_object_is_one_event_and_keeps_its_exact_bytes() {
        let body = b"  {\"b\": 1,   \"a\" : [ 2 ]}\n";
        let events = split_events(body, &HttpConfig::default()).expect("valid");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].get(), "{\"b\": 1,   \"a\" : [ 2 ]}");
    }

    #[test]
    fn array_is_a_batch_of_exact_bytes() {
        let body = br#"[{"a":1}, { "b" : 2 }]"#;
        let events = split_events(body, &HttpConfig::default()).expect("valid");
        let texts: Vec<&str> = events.iter().map(|e| e.get()).collect();
        assert_eq!(texts, [r#"{"a":1}"#, r#"{ "b" : 2 }"#]);
    }

    #[test]
    fn non_object_batch_element_is_named_by_index() {
        let err = split_events(br#"[{"a":1}, 2]"#, &HttpConfig::default()).expect_err("2 is no event");
        let p = err.to_problem();
        assert_eq!(
            (p["type"].as_str(), p["index"].as_u64()),
            (Some("urn:esgf-events:problem:invalid-event"), Some(1))
        );
    }

    #[test]
    fn scalar_body_is_not_an_event() {
        for body in [&b"42"[..], b"\"x\"", b"null"] {
            assert_eq!(
                split_events(body, &HttpConfig::default()).expect_err("scalar").kind(),
                "invalid-event"
            );
        }
    }

    #[test]
    fn limits_are_checked_per_event_and_per_batch() {
        let config = HttpConfig { max_event_bytes: 10, max_batch_events: 2, ..HttpConfig::default() };
        let err = split_events(br#"[{"a":1},{"a":"0123456789"}]"#, &config).expect_err("too big");
        assert!(matches!(err, ApiError::EventTooLarge { index: 1, .. }), "{err:?}");
        let err = split_events(br#"[{},{},{}]"#, &config).expect_err("too many");
        assert!(matches!(err, ApiError::BatchTooLarge { events: 3, max: 2 }), "{err:?}");
    }

    proptest::proptest! {
        /// Whatever whitespace and member order a client uses, each stored event is exactly its own bytes.
        #[test]
        fn batch_elements_are_split_byte_identical(
            members in proptest::collection::vec(("[a-z]{1,6}", -1000i64..1000), 0..5),
            count in 1usize..6,
            pad in "[ \t\r\n]{0,3}",
        ) {
            let event = format!(
                "{{{}}}",
                members.iter().map(|(k, v)| format!("{pad}\"{k}\"{pad}:{pad}{v}")).collect::<Vec<_>>().join(",")
            );
            let events = vec![event.as_str(); count];
            let body = format!("{pad}[{pad}{}{pad}]{pad}", events.join(&format!("{pad},{pad}")));
            // Duplicate member names are still valid JSON for a raw split.
            let split = split_events(body.as_bytes(), &HttpConfig::default()).expect("valid batch");
            proptest::prop_assert_eq!(split.iter().map(|e| e.get()).collect::<Vec<_>>(), events);
        }
    }

    #[test]
    fn non_json_value_and_non_utf8_key_are_base64() {
        let record = Record {
            offset: 7,
            timestamp_ms: 0,
            key: Some(Bytes::from_static(&[0xff, b'k'])),
            value: Bytes::from_static(b"not json"),
            headers: vec![esgf_events_engine::Header { name: "h".into(), value: Bytes::from_static(b"v") }],
        };
        let json = serde_json::to_value(event_out(2, &record)).expect("serializes");
        assert_eq!(json["value_base64"], "bm90IGpzb24=");
        assert!(json.get("value").is_none());
        assert_eq!(json["key"], "\u{fffd}k");
        assert_eq!(json["key_base64"], "/2s=");
        assert_eq!(json["headers"], serde_json::json!([{"name": "h", "value": "v"}]));
        assert_eq!(json["timestamp"], "1970-01-01T00:00:00.000Z");
    }
}
