//! `GET /v1/topics/{topic}/stream`: following a topic as server-sent events (`text/event-stream`).
//!
//! Each event is
//! ```text
//! id: 0-42.1-17            <- a cursor: the next offset of EVERY partition after this event (cursor.rs)
//! event: post              <- data.payload.method, lower-cased, or "event"
//! data: {...}              <- the event JSON on one line (or a CloudEvent with format=cloudevents)
//! ```
//! Resuming: `Last-Event-ID` (the header browsers and SSE clients send on reconnection) or `last_event_id=`
//! continues exactly after that event, across restarts: the cursor is self-contained. Otherwise the stream
//! starts at `from=beginning|latest|<offset>` (an offset needs a single partition: `partition=`), at
//! `since=<RFC 3339>`, or at a consumer group's committed offsets (`group=`, committed back as the stream goes:
//! at most every second or every [`COMMIT_EVERY_EVENTS`] events, when idle and when the stream ends). The
//! default start is the end of the log (`latest`), or for a group the earliest offset where it has no commit.
//! `filter=` and `key_prefix=` select events server-side; filtered-out events still advance the cursor.
//!
//! Resources: each stream has its own reader task that reads the log (cheap memory-mapped slices), waits on
//! the store when caught up, and pushes formatted events into a channel of [`CHANNEL_EVENTS`] to the response
//! body. A slow client therefore stalls only its own reader, which holds at most one read batch besides the
//! channel; it catches up from the log later. Followers of the same partition share what they read near its
//! end (`tail.rs`): one log read and one rendering per event, however many follow. Partitions are merged fairly: one batch from each in turn.
//! Streams are bounded by `HttpConfig::max_streams` (503 beyond), idle ones send `: keep-alive` comments every
//! `HttpConfig::stream_heartbeat`, and all end cleanly (after a last group commit) when the server shuts down.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use esgf_events_engine::{LogStore, ReadLimits, Record, StoreError};
use esgf_events_envelope::{RecordRef, Selector, base64, publication_method, single_line, to_cloudevent};
use esgf_events_meta::offsets::{GroupOffsets, OffsetCommit};
use http_body::Frame;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::access::Caller;
use crate::body::{QueryPairs, check_query_repeatable, invalid_param, path_param, query_pairs, query_value};
use crate::cursor::{self, Cursor};
use crate::error::ApiError;
use crate::events::{Format, parse_format, parse_selector, parse_since};
use crate::groups::{committed, open_group};
use crate::tail::{SharedRecord, TAIL_WINDOW, Tail};
use crate::{AppState, SharedState};

/// Events queued between a stream's reader and its connection: all a stalled client can make the server hold,
/// besides one read batch.
pub(crate) const CHANNEL_EVENTS: usize = 64;

/// One read of one partition: the unit of fairness between partitions, and of what a stalled reader holds.
pub(crate) const READ_BATCH: ReadLimits = ReadLimits { max_records: 64, max_bytes: 1 << 20 };

/// A group stream commits at least this often while events flow...
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// ...or after this many events, whichever comes first.
pub(crate) const COMMIT_EVERY_EVENTS: u64 = 1000;

const STREAM_PARAMS: [&str; 8] =
    ["partition", "from", "since", "group", "format", "filter", "key_prefix", "last_event_id"];

/// A comment line, without the blank line that would end an event: a few clients (httpx-sse) report an empty
/// event for a blank line that follows a comment.
const HEARTBEAT: &[u8] = b": keep-alive\n";
/// Sent first, so the client (and any proxy) sees the stream open at once even when nothing is to be sent.
const OPENING: &[u8] = b": stream open\n";

/// Where a stream starts in partitions that no cursor or group commit places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Beginning,
    Latest,
    /// Single-partition streams only.
    Offset(u64),
    /// The first record at or after this time (ms since the epoch).
    Since(i64),
}

#[derive(Debug)]
struct StreamRequest {
    partition: Option<u32>,
    from: Option<From>,
    group: Option<String>,
    format: Format,
    selector: Selector,
    cursor: Option<Cursor>,
}

fn parse_request(pairs: &[(String, String)], headers: &HeaderMap) -> Result<StreamRequest, ApiError> {
    check_query_repeatable(pairs, &STREAM_PARAMS, &["filter"])?;
    let partition = query_value(pairs, "partition")
        .map(|v| v.parse::<u32>().map_err(|_| invalid_param("partition", "must be a non-negative integer")))
        .transpose()?;
    let from = match (query_value(pairs, "from"), query_value(pairs, "since")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidQuery {
                detail: "give either 'from' or 'since', not both".to_owned(),
                parameters: vec!["from".to_owned(), "since".to_owned()],
            });
        }
        (Some("beginning"), None) => Some(From::Beginning),
        (Some("latest"), None) => Some(From::Latest),
        (Some(v), None) => Some(From::Offset(v.parse::<u64>().map_err(|_| {
            invalid_param("from", "must be 'beginning', 'latest' or an offset (with 'partition')")
        })?)),
        (None, Some(v)) => Some(From::Since(parse_since(v)?)),
        (None, None) => None,
    };

    // The header wins: browsers resend the page's original URL (and its `last_event_id=`) on every reconnection,
    // with the newest id in the header.
    let cursor = match headers.get("last-event-id") {
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                ApiError::InvalidRequest("the Last-Event-ID header is not a stream cursor".to_owned())
            })?;
            match text.trim() {
                "" => None,
                text => Some(Cursor::parse(text).map_err(|reason| {
                    ApiError::InvalidRequest(format!(
                        "the Last-Event-ID header is not a stream cursor: {reason} (it is the 'id' of an event \
                         of this stream, like 0-42.1-17)"
                    ))
                })?),
            }
        }
        None => match query_value(pairs, "last_event_id") {
            Some(text) => Some(Cursor::parse(text).map_err(|reason| {
                invalid_param(
                    "last_event_id",
                    format!("not a stream cursor: {reason} (it is the 'id' of an event, like 0-42.1-17)"),
                )
            })?),
            None => None,
        },
    };

    Ok(StreamRequest {
        partition,
        from,
        group: query_value(pairs, "group").map(str::to_owned),
        format: parse_format(pairs)?,
        selector: parse_selector(pairs)?,
        cursor,
    })
}

pub(crate) async fn stream(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<QueryPairs>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let topic = path_param(path)?;
    let request = parse_request(&query_pairs(query)?, &headers)?;
    let info = state.store.describe_topic(&topic).await?;
    let partitions: Vec<u32> = match request.partition {
        Some(partition) if partition < info.partitions => vec![partition],
        Some(partition) => {
            return Err(
                StoreError::PartitionNotFound { topic, partition, partitions: info.partitions }.into()
            );
        }
        None => (0..info.partitions).collect(),
    };
    if matches!(request.from, Some(From::Offset(_))) && partitions.len() > 1 {
        return Err(invalid_param(
            "from",
            format!(
                "an offset names a position in one partition: add 'partition' (the topic has {} partitions)",
                partitions.len()
            ),
        ));
    }
    if let Some(cursor) = &request.cursor
        && let Some(partition) = cursor.partitions().find(|p| *p >= info.partitions)
    {
        return Err(ApiError::InvalidRequest(format!(
            "the cursor names partition {partition}, but topic '{topic}' has {} partitions",
            info.partitions
        )));
    }

    let group = match &request.group {
        Some(group) => {
            let caller = caller.as_ref().and_then(|Extension(Caller(identity))| identity.as_ref());
            Some((open_group(&state, caller, group).await?, group.clone()))
        }
        None => None,
    };
    let positions = start_positions(&state, &topic, &partitions, &request, group.as_ref()).await?;

    let permit = Arc::clone(&state.streams)
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyStreams { max: state.config.max_streams })?;
    let (tx, rx) = mpsc::channel(CHANNEL_EVENTS);
    let delivered = group.as_ref().map(|_| Arc::new(Mutex::new(positions.clone())));
    tracing::debug!(
        %topic,
        partitions = partitions.len(),
        group = request.group.as_deref(),
        cursor = %cursor::encode(&partitions, &positions),
        "event stream opened"
    );
    let reader = Reader {
        store: Arc::clone(&state.store),
        state: Arc::clone(&state),
        group: group.map(|(offsets, name)| GroupCommit {
            offsets,
            group: name,
            delivered: delivered.clone().unwrap_or_default(),
            committed: positions.clone(),
            last_commit: Instant::now(),
            uncommitted_events: 0,
        }),
        tails: partitions.iter().map(|p| state.tails.follow(&topic, info.created_ms, *p)).collect(),
        woken: vec![true; partitions.len()],
        topic,
        partitions,
        positions,
        selector: request.selector,
        format: request.format,
        tx,
        progress: Arc::new(Progress::default()),
    };
    tokio::spawn(reader.run(permit));

    let mut response = Response::new(Body::new(SseBody { rx, delivered, opening: true, pending: None }));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies (nginx) must pass events through as they come rather than buffer the response.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Where each partition starts: the cursor, else the group's commit, else `from`/`since`.
async fn start_positions(
    state: &AppState,
    topic: &str,
    partitions: &[u32],
    request: &StreamRequest,
    group: Option<&(GroupOffsets, String)>,
) -> Result<Vec<u64>, ApiError> {
    let store = state.store.as_ref();
    let default_from = if group.is_some() { From::Beginning } else { From::Latest };
    let mut positions = Vec::with_capacity(partitions.len());
    for &partition in partitions {
        let bounds = store.offsets(topic, partition).await?;
        if let Some(next) = request.cursor.as_ref().and_then(|c| c.get(partition)) {
            if next > bounds.latest {
                return Err(ApiError::InvalidRequest(format!(
                    "the cursor is ahead of partition {partition} (offset {next}, but the partition ends at {}): \
                     it does not come from this topic",
                    bounds.latest
                )));
            }
            // Retention may have removed what the client had not seen yet: continue with what is left.
            positions.push(next.max(bounds.earliest));
            continue;
        }
        if let Some((offsets, name)) = group
            && let Some(offset) = committed(offsets, name, topic, partition).await?
        {
            positions.push(offset.clamp(bounds.earliest, bounds.latest));
            continue;
        }
        let position = match request.from.unwrap_or(default_from) {
            From::Beginning => bounds.earliest,
            From::Latest => bounds.latest,
            From::Offset(offset) if (bounds.earliest..=bounds.latest).contains(&offset) => offset,
            From::Offset(offset) => {
                return Err(StoreError::OffsetOutOfRange {
                    topic: topic.to_owned(),
                    partition,
                    requested: offset,
                    earliest: bounds.earliest,
                    latest: bounds.latest,
                }
                .into());
            }
            From::Since(ms) => {
                store.offset_for_timestamp(topic, partition, ms).await?.unwrap_or(bounds.latest)
            }
        };
        positions.push(position);
    }
    Ok(positions)
}

/// What the reader hands the response body: bytes to write (this stream's own `head`, then a `body` shared with
/// every stream sending the same event), and (for group streams) the positions delivered once they are written.
pub(crate) struct Chunk {
    head: Bytes,
    body: Bytes,
    positions: Option<Box<[u64]>>,
}

impl Chunk {
    fn only(bytes: Bytes) -> Chunk {
        Chunk { head: bytes, body: Bytes::new(), positions: None }
    }
}

/// The response body: whatever the reader queued, in order.
struct SseBody {
    rx: mpsc::Receiver<Chunk>,
    /// Positions of the last event handed to the connection (group streams only).
    delivered: Option<Arc<Mutex<Vec<u64>>>>,
    opening: bool,
    /// The shared part of the event whose head was just written.
    pending: Option<Bytes>,
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.opening {
            self.opening = false;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(OPENING)))));
        }
        if let Some(body) = self.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(body))));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => {
                if let (Some(delivered), Some(positions)) = (&self.delivered, chunk.positions) {
                    *delivered.lock().unwrap_or_else(PoisonError::into_inner) = positions.into_vec();
                }
                if !chunk.body.is_empty() {
                    self.pending = Some(chunk.body);
                }
                Poll::Ready(Some(Ok(Frame::data(chunk.head))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// How far a reader got (for tests and diagnostics).
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Records read from the log.
    pub(crate) read: AtomicU64,
    /// Events queued for the client.
    pub(crate) sent: AtomicU64,
}

/// Why a reader stopped.
#[derive(Debug)]
enum End {
    /// The client went away.
    Disconnected,
    /// The server is shutting down.
    Shutdown,
    /// A partition closed under the stream (topic deleted, log shutting down).
    Closed,
    Failed(StoreError),
}

/// A group stream's commits: what the client has been handed, written back at most every [`COMMIT_INTERVAL`]
/// or [`COMMIT_EVERY_EVENTS`], when idle and at the end.
struct GroupCommit {
    offsets: GroupOffsets,
    group: String,
    delivered: Arc<Mutex<Vec<u64>>>,
    committed: Vec<u64>,
    last_commit: Instant,
    uncommitted_events: u64,
}

/// One stream's reader: the log, its position in each partition, and the channel to the client.
pub(crate) struct Reader {
    store: Arc<dyn LogStore>,
    state: SharedState,
    topic: String,
    /// Ascending.
    partitions: Vec<u32>,
    /// The next offset to read, per partition (parallel to `partitions`).
    positions: Vec<u64>,
    /// Each partition's shared tail (parallel to `partitions`).
    tails: Vec<Arc<Tail>>,
    /// Per partition: woken since its last read, so the next read must look at the log even at its known end.
    woken: Vec<bool>,
    selector: Selector,
    format: Format,
    tx: mpsc::Sender<Chunk>,
    group: Option<GroupCommit>,
    progress: Arc<Progress>,
}

impl Reader {
    async fn run(mut self, _permit: OwnedSemaphorePermit) {
        let end = self.pump().await;
        if let Some(group) = &mut self.group {
            // After a disconnect the queue's content never reached the client: only what the body handed on.
            let idle = !matches!(end, End::Disconnected) && self.tx.capacity() == self.tx.max_capacity();
            commit(group, &self.topic, &self.partitions, idle.then_some(&self.positions[..])).await;
        }
        let cursor = cursor::encode(&self.partitions, &self.positions);
        match end {
            End::Failed(err) => {
                tracing::warn!(topic = %self.topic, error = %err, %cursor, "event stream failed");
                let problem = ApiError::Store(err).problem_json();
                let bytes = Bytes::from(format!("event: problem\ndata: {problem}\n\n"));
                let _ = self.tx.try_send(Chunk::only(bytes));
            }
            end => tracing::debug!(topic = %self.topic, ?end, %cursor, "event stream ended"),
        }
    }

    /// Reads and queues until the stream has to end.
    async fn pump(&mut self) -> End {
        let heartbeat = self.state.config.stream_heartbeat.max(Duration::from_millis(10));
        let count = self.partitions.len();
        let mut last_write = Instant::now();
        let mut next = 0;
        let mut caught_up = 0;
        loop {
            if self.state.shutdown.has_begun() {
                return End::Shutdown;
            }
            let i = next;
            next = (next + 1) % count.max(1);
            let records = match self.read(i).await {
                Ok(records) => records,
                Err(err) => return End::Failed(err),
            };
            if records.is_empty() {
                caught_up += 1;
            } else {
                caught_up = 0;
                for shared in &records {
                    let record = &shared.record;
                    if !self.selector.matches(record.key.as_deref(), &record.value) {
                        self.positions[i] = record.offset + 1;
                        continue;
                    }
                    let previous = self.positions[i];
                    self.positions[i] = record.offset + 1;
                    let chunk = self.event(i, shared);
                    tokio::select! {
                        biased;
                        () = self.state.shutdown.begun() => {
                            self.positions[i] = previous;
                            return End::Shutdown;
                        }
                        sent = self.tx.send(chunk) => if sent.is_err() {
                            self.positions[i] = previous;
                            return End::Disconnected;
                        }
                    }
                    self.progress.sent.fetch_add(1, Ordering::Relaxed);
                    last_write = Instant::now();
                    if let Some(group) = &mut self.group {
                        group.uncommitted_events += 1;
                    }
                }
            }

            let idle = caught_up >= count;
            if let Some(group) = &mut self.group
                && (group.uncommitted_events >= COMMIT_EVERY_EVENTS
                    || group.last_commit.elapsed() >= COMMIT_INTERVAL)
            {
                // An empty queue means the client was handed everything read, filtered-out events included.
                let settled = self.tx.capacity() == self.tx.max_capacity();
                commit(group, &self.topic, &self.partitions, settled.then_some(&self.positions[..])).await;
            }
            if last_write.elapsed() >= heartbeat {
                match self.tx.try_send(Chunk::only(Bytes::from_static(HEARTBEAT))) {
                    // A full queue means data is waiting to be written anyway: no keep-alive needed.
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => last_write = Instant::now(),
                    Err(mpsc::error::TrySendError::Closed(_)) => return End::Disconnected,
                }
            }
            if !idle {
                continue;
            }
            caught_up = 0;

            let mut timeout = heartbeat.saturating_sub(last_write.elapsed());
            if let Some(group) = &self.group
                && group.uncommitted_events > 0
            {
                timeout = timeout.min(COMMIT_INTERVAL.saturating_sub(group.last_commit.elapsed()));
            }
            let timeout = timeout.max(Duration::from_millis(1));
            let started = Instant::now();
            let waited = tokio::select! {
                biased;
                () = self.state.shutdown.begun() => return End::Shutdown,
                () = self.tx.closed() => return End::Disconnected,
                waited = wait_any(self.store.as_ref(), &self.topic, &self.partitions, &self.positions, timeout) => waited,
            };
            match waited {
                Ok(true) => self.woken.fill(true),
                // Returned before its time with nothing new: the partition is gone or the log is closing.
                Ok(false) if started.elapsed() < timeout => return End::Closed,
                Ok(false) => {}
                Err(err) => return End::Failed(err),
            }
        }
    }

    /// One batch of partition `i` from its position: from the partition's shared tail when it holds it, else from
    /// the log. A tail read (at or past the end of the shared tail) is made by one follower at a time, so
    /// followers woken by the same append read the log once between them, and a follower at the known end of
    /// the log that was not woken since reads nothing at all; a stream catching up reads the log alone.
    async fn read(&mut self, i: usize) -> Result<Vec<Arc<SharedRecord>>, StoreError> {
        let tail = Arc::clone(&self.tails[i]);
        let position = self.positions[i];
        if let Some(records) = tail.get(position, READ_BATCH.max_records) {
            self.woken[i] = false;
            self.progress.read.fetch_add(records.len() as u64, Ordering::Relaxed);
            return Ok(records);
        }
        let _filling = if tail.reaches(position) {
            if !self.woken[i] && position >= tail.known_end() {
                return Ok(Vec::new());
            }
            let guard = tail.fill.lock().await;
            if let Some(records) = tail.get(position, READ_BATCH.max_records) {
                self.woken[i] = false;
                self.progress.read.fetch_add(records.len() as u64, Ordering::Relaxed);
                return Ok(records);
            }
            Some(guard)
        } else {
            None
        };
        let partition = self.partitions[i];
        let result = match self.store.read(&self.topic, partition, self.positions[i], READ_BATCH).await {
            Err(StoreError::OffsetOutOfRange { earliest, .. }) if self.positions[i] < earliest => {
                tracing::warn!(
                    topic = %self.topic,
                    partition,
                    from = self.positions[i],
                    to = earliest,
                    "retention removed events before this stream delivered them; continuing at the earliest"
                );
                self.positions[i] = earliest;
                self.store.read(&self.topic, partition, earliest, READ_BATCH).await?
            }
            other => other?,
        };
        let records: Vec<Arc<SharedRecord>> = result.records.into_iter().map(SharedRecord::new).collect();
        if result.latest.saturating_sub(result.next_offset) <= TAIL_WINDOW {
            tail.insert(&records);
        }
        tail.saw_end(result.latest);
        self.woken[i] = false;
        self.progress.read.fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(records)
    }

    /// The SSE event of `shared` (partition `i`): this stream's `id:` line (the cursor after the event), then the
    /// `event:` and `data:` lines every stream shares.
    fn event(&self, i: usize, shared: &SharedRecord) -> Chunk {
        let cursor = cursor::encode(&self.partitions, &self.positions);
        let head = Bytes::from(format!("id: {cursor}\n"));
        let body = match self.format {
            Format::Native => shared.rendering(0, render_native),
            Format::CloudEvents => shared.rendering(1, |record| {
                let at = RecordRef {
                    topic: &self.topic,
                    partition: self.partitions[i],
                    offset: record.offset,
                    timestamp_ms: record.timestamp_ms,
                };
                render(json_text(record), &to_cloudevent(&at, &record.value))
            }),
        };
        let positions = self.group.as_ref().map(|_| self.positions.clone().into_boxed_slice());
        Chunk { head, body, positions }
    }
}

/// The JSON text of a record's value, if it is UTF-8 JSON.
fn json_text(record: &Record) -> Option<&str> {
    std::str::from_utf8(&record.value).ok().filter(|text| serde_json::from_str::<&RawValue>(text).is_ok())
}

/// The `event:` and `data:` lines of a record in the native format.
fn render_native(record: &Record) -> Bytes {
    let json = json_text(record);
    match json {
        Some(text) => render(json, text),
        // A record from a non-HTTP producer that is not JSON: still one JSON line.
        None => render(None, &format!("{{\"value_base64\":\"{}\"}}", base64(&record.value))),
    }
}

/// `event: <method of the event JSON, or "event">` and `data: <data on one line>`, ending the event.
fn render(json: Option<&str>, data: &str) -> Bytes {
    let name = json.and_then(publication_method).unwrap_or_else(|| "event".to_owned());
    let data = single_line(data);
    let mut text = String::with_capacity(name.len() + data.len() + 18);
    text.push_str("event: ");
    text.push_str(&name);
    text.push_str("\ndata: ");
    text.push_str(&data);
    text.push_str("\n\n");
    Bytes::from(text)
}

/// Commits what the client has been handed: `settled` (the reader's own positions) when nothing is queued,
/// else what the body last handed on. Failures are logged: the stream goes on, and the next commit retries.
async fn commit(group: &mut GroupCommit, topic: &str, partitions: &[u32], settled: Option<&[u64]>) {
    let delivered = match settled {
        Some(positions) => positions.to_vec(),
        None => group.delivered.lock().unwrap_or_else(PoisonError::into_inner).clone(),
    };
    if delivered == group.committed {
        group.last_commit = Instant::now();
        group.uncommitted_events = 0;
        return;
    }
    let commits: Vec<OffsetCommit> = partitions
        .iter()
        .zip(&delivered)
        .zip(&group.committed)
        .filter(|((_, new), old)| new != old)
        .map(|((partition, offset), _)| (topic.to_owned(), *partition, *offset, None))
        .collect();
    match group.offsets.commit(&group.group, commits).await {
        Ok(()) => {
            group.committed = delivered;
            group.last_commit = Instant::now();
            group.uncommitted_events = 0;
        }
        Err(err) => {
            tracing::warn!(group = %group.group, %topic, error = %err, "could not commit a stream's group offsets");
            group.last_commit = Instant::now();
        }
    }
}

/// One partition's `wait_for`.
type Wait<'a> = Pin<Box<dyn Future<Output = Result<bool, StoreError>> + Send + 'a>>;

/// Waits until any partition has a record at its position, or `timeout` passes. Returns whether one does.
async fn wait_any(
    store: &dyn LogStore,
    topic: &str,
    partitions: &[u32],
    positions: &[u64],
    timeout: Duration,
) -> Result<bool, StoreError> {
    if let ([partition], [position]) = (partitions, positions) {
        return store.wait_for(topic, *partition, *position, timeout).await;
    }
    let mut waits: Vec<Wait<'_>> = partitions
        .iter()
        .zip(positions)
        .map(|(partition, position)| store.wait_for(topic, *partition, *position, timeout))
        .collect();
    std::future::poll_fn(|cx| {
        for wait in &mut waits {
            if let Poll::Ready(result) = wait.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HttpConfig;
    use crate::test_store::FakeStore;
    use esgf_events_engine::{NewRecord, TopicConfig};

    struct Harness {
        store: Arc<FakeStore>,
        state: SharedState,
    }

    impl Harness {
        async fn new(partitions: u32) -> Harness {
            let store = Arc::new(FakeStore::new());
            store
                .create_topic("t", TopicConfig { partitions, ..TopicConfig::default() })
                .await
                .expect("topic");
            let state = Arc::new(AppState::new(store.clone(), None, HttpConfig::default()));
            Harness { store, state }
        }

        /// A reader of every partition from offset 0, and the receiving end of its queue.
        fn reader(&self, partitions: u32) -> (Reader, mpsc::Receiver<Chunk>, Arc<Progress>) {
            let (tx, rx) = mpsc::channel(CHANNEL_EVENTS);
            let progress = Arc::new(Progress::default());
            let reader = Reader {
                store: self.store.clone(),
                state: Arc::clone(&self.state),
                topic: "t".to_owned(),
                partitions: (0..partitions).collect(),
                positions: vec![0; partitions as usize],
                tails: (0..partitions).map(|p| self.state.tails.follow("t", 0, p)).collect(),
                woken: vec![true; partitions as usize],
                selector: Selector::default(),
                format: Format::Native,
                tx,
                group: None,
                progress: Arc::clone(&progress),
            };
            (reader, rx, progress)
        }

        async fn publish(&self, partition: u32, from: u64, count: u64) {
            let records = (from..from + count)
                .map(|n| {
                    NewRecord::from_value(format!(r#"{{"n":{n},"data":{{"payload":{{"method":"POST"}}}}}}"#))
                })
                .collect();
            self.store.append("t", partition, records).await.expect("append");
        }
    }

    fn fields(chunk: &Chunk) -> (String, String, serde_json::Value) {
        let joined = [&chunk.head[..], &chunk.body[..]].concat();
        let text = std::str::from_utf8(&joined).expect("utf8");
        let mut id = String::new();
        let mut event = String::new();
        let mut data = serde_json::Value::Null;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.to_owned();
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = serde_json::from_str(v).expect("data is JSON");
            }
        }
        (id, event, data)
    }

    #[tokio::test]
    async fn a_consumer_that_does_not_read_holds_the_reader_at_the_queue_bound() {
        let h = Harness::new(1).await;
        let (reader, mut rx, progress) = h.reader(1);
        let permit = Arc::clone(&h.state.streams).try_acquire_owned().expect("permit");
        let task = tokio::spawn(reader.run(permit));
        for batch in 0..10 {
            h.publish(0, batch * 1000, 1000).await;
        }

        // The test runtime has one thread: while the test yields, the reader runs as far as it can.
        while rx.len() < CHANNEL_EVENTS {
            tokio::task::yield_now().await;
        }
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
        let read = progress.read.load(Ordering::Relaxed);
        let sent = progress.sent.load(Ordering::Relaxed);
        assert_eq!(sent, CHANNEL_EVENTS as u64, "nothing beyond the queue is formatted");
        assert!(
            read <= (CHANNEL_EVENTS + READ_BATCH.max_records) as u64,
            "the reader read {read} of 10000 records ahead of a client that reads nothing"
        );

        // Once the client reads, it gets everything, in order, from the log.
        for n in 0..10_000u64 {
            let chunk = rx.recv().await.expect("stream goes on");
            let (id, event, data) = fields(&chunk);
            assert_eq!(
                (id, event.as_str(), &data["n"]),
                (format!("0-{}", n + 1), "post", &serde_json::json!(n))
            );
        }
        drop(rx);
        task.await.expect("reader ends when the client goes away");
        assert_eq!(h.state.streams.available_permits(), h.state.config.max_streams, "the slot is free again");
    }

    #[tokio::test]
    async fn partitions_are_merged_one_batch_at_a_time() {
        let h = Harness::new(3).await;
        for partition in 0..3 {
            h.publish(partition, 0, 200).await;
        }
        let (reader, mut rx, _) = h.reader(3);
        let permit = Arc::clone(&h.state.streams).try_acquire_owned().expect("permit");
        let task = tokio::spawn(reader.run(permit));
        let batch = READ_BATCH.max_records;
        let mut order = Vec::new();
        let mut last = [0u64; 3];
        for _ in 0..600 {
            let chunk = rx.recv().await.expect("event");
            let (id, _, data) = fields(&chunk);
            let cursor = Cursor::parse(&id).expect("cursor");
            // Exactly one partition moved, by one, and it is the one the event came from.
            let moved: Vec<u32> = (0..3).filter(|p| cursor.get(*p) != Some(last[*p as usize])).collect();
            assert_eq!(moved.len(), 1, "{id}");
            let p = moved[0] as usize;
            assert_eq!(cursor.get(moved[0]), Some(last[p] + 1));
            assert_eq!(data["n"], serde_json::json!(last[p]));
            last[p] += 1;
            order.push(moved[0]);
        }
        // Round-robin by batch: p0's first batch, p1's, p2's, then p0 again.
        assert!(order[..batch].iter().all(|p| *p == 0));
        assert!(order[batch..2 * batch].iter().all(|p| *p == 1));
        assert!(order[2 * batch..3 * batch].iter().all(|p| *p == 2));
        assert_eq!(order[3 * batch], 0);
        drop(rx);
        task.await.expect("reader ends");
    }

    #[tokio::test]
    async fn followers_of_a_partition_read_each_append_from_the_log_once_between_them() {
        let h = Harness::new(1).await;
        let followers = 50;
        let mut receivers = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..followers {
            let (reader, rx, _) = h.reader(1);
            let permit = Arc::clone(&h.state.streams).try_acquire_owned().expect("permit");
            tasks.push(tokio::spawn(reader.run(permit)));
            receivers.push(rx);
        }
        h.store.waiters.subscribe().wait_for(|n| *n == followers).await.expect("all followers wait");
        let before = h.store.reads.load(Ordering::SeqCst);
        for n in 0..20 {
            h.publish(0, n, 1).await;
            for rx in &mut receivers {
                let (id, _, data) = fields(&rx.recv().await.expect("event"));
                assert_eq!((id, &data["n"]), (format!("0-{}", n + 1), &serde_json::json!(n)));
            }
            h.store.waiters.subscribe().wait_for(|w| *w == followers).await.expect("all wait again");
        }
        let reads = h.store.reads.load(Ordering::SeqCst) - before;
        assert!(reads <= 20 * 2, "{followers} followers made {reads} log reads for 20 appends");
        drop(receivers);
        for task in tasks {
            task.await.expect("reader ends");
        }
        assert_eq!(h.state.tails.cached_bytes(), 0, "nobody follows: the tail is gone");
    }

    #[tokio::test]
    async fn shutdown_ends_a_waiting_reader() {
        let h = Harness::new(2).await;
        let (reader, mut rx, _) = h.reader(2);
        let permit = Arc::clone(&h.state.streams).try_acquire_owned().expect("permit");
        let task = tokio::spawn(reader.run(permit));
        h.store.waiters.subscribe().wait_for(|n| *n > 0).await.expect("the reader waits for events");
        h.state.shutdown.begin();
        task.await.expect("reader ends");
        assert!(rx.recv().await.is_none(), "the stream ends without a last event");
    }

    #[tokio::test]
    async fn non_json_records_are_one_json_line_and_pretty_ones_are_folded() {
        let h = Harness::new(1).await;
        h.store
            .append(
                "t",
                0,
                vec![
                    NewRecord::from_value(&b"\xffnot json\nid: 9-9"[..]),
                    NewRecord::from_value("{\n  \"a\": \"x\\ny\",\n  \"b\": [1,\n 2]\n}"),
                ],
            )
            .await
            .expect("append");
        let (reader, mut rx, _) = h.reader(1);
        let permit = Arc::clone(&h.state.streams).try_acquire_owned().expect("permit");
        let task = tokio::spawn(reader.run(permit));
        let first = rx.recv().await.expect("event");
        let joined = [&first.head[..], &first.body[..]].concat();
        let text = std::str::from_utf8(&joined).expect("utf8");
        assert_eq!(text.matches('\n').count(), 4, "three fields and the blank line: {text}");
        let (id, event, data) = fields(&first);
        assert_eq!((id.as_str(), event.as_str()), ("0-1", "event"));
        assert_eq!(data["value_base64"], base64(b"\xffnot json\nid: 9-9"));
        let (_, _, data) = fields(&rx.recv().await.expect("event"));
        assert_eq!(data, serde_json::json!({"a": "x\ny", "b": [1, 2]}));
        drop(rx);
        task.await.expect("reader ends");
    }
}
