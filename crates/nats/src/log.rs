//! [`JetStreamStore`]: the event log on JetStream, one stream per topic partition.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, RetentionPolicy, StorageType};
use async_trait::async_trait;
use esgf_events_engine::{
    AppendOutcome, Clock, LogStore, NewRecord, PartitionOffsets, ReadLimits, ReadResult, Record, Retention,
    RetentionReport, StoreError, TopicConfig, TopicInfo, validate_topic_name,
};
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::time::Instant;

use crate::api::{self, Js, JsError, OutMsg, StoredMsg, code};
use crate::codec;
use crate::config::NatsConfig;
use crate::kv::{Bucket, Op};

/// The bucket holding one entry per topic (its partitions, retention, creation time and incarnation).
pub const TOPICS_BUCKET: &str = "esgf_topics";

/// Same bound as the embedded engine: a topic is a set of streams, each with its own Raft group.
const MAX_PARTITIONS: u32 = 1024;

/// Streams created or deleted concurrently when a topic is.
const STREAM_ADMIN_CONCURRENCY: usize = 8;

/// Appends of this process to one partition that may await their acknowledgements at once (the rest queue).
/// Pipelining is what lets concurrent producers share the round trip to the stream leader; JetStream bounds
/// atomic batches in flight per stream too, and refusing on that limit is retried.
const MAX_APPENDS_IN_FLIGHT: usize = 16;

/// How old a topic description `describe_topic` may answer from this process's cache. The HTTP API
/// describes the topic on every publish; reading the catalogue each time would add a request to the
/// catalogue's stream leader to every publish. Changes made through this process are cached at once; those
/// made through another node are seen within this time (an append to a topic another node deleted fails on
/// the sealed stream regardless).
const DESCRIBE_CACHE_TTL: Duration = Duration::from_secs(1);

/// Most records one read asks a replica for; the byte limit usually stops it earlier.
const MAX_READ_RECORDS: usize = 10_000;

/// A partition stream no topic refers to is deleted only once it is this old, so a topic that another node
/// is creating right now (streams first, catalogue entry last) is never mistaken for an orphan.
const ORPHAN_GRACE_MS: i64 = 10 * 60 * 1000;

/// A topic's catalogue entry (JSON in [`TOPICS_BUCKET`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct TopicMeta {
    name: String,
    partitions: u32,
    max_age_ms: Option<u64>,
    max_bytes: Option<u64>,
    created_ms: i64,
    /// Random per creation: part of every stream name, so a re-created topic never sees an old stream.
    incarnation: String,
    /// Copies of each partition stream, fixed at creation.
    replicas: usize,
}

impl TopicMeta {
    fn retention(&self) -> Retention {
        Retention { max_age: self.max_age_ms.map(Duration::from_millis), max_bytes: self.max_bytes }
    }

    fn info(&self) -> TopicInfo {
        TopicInfo {
            name: self.name.clone(),
            partitions: self.partitions,
            retention: self.retention(),
            created_ms: self.created_ms,
        }
    }

    fn stream(&self, partition: u32) -> String {
        codec::partition_stream(&self.name, &self.incarnation, partition)
    }

    fn stream_config(&self, partition: u32) -> StreamConfig {
        let name = self.stream(partition);
        let metadata = HashMap::from([
            ("esgf_topic".to_owned(), self.name.clone()),
            ("esgf_partition".to_owned(), partition.to_string()),
            ("esgf_incarnation".to_owned(), self.incarnation.clone()),
            ("esgf_created_ms".to_owned(), self.created_ms.to_string()),
        ]);
        StreamConfig {
            subjects: vec![codec::partition_subject(&name)],
            description: Some(format!("ESGF Event Service: topic {} partition {partition}", self.name)),
            name,
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: self.replicas,
            // Limits only ever remove the oldest messages (see the crate docs on dense offsets).
            discard: DiscardPolicy::Old,
            // JetStream counts max_age in i64 nanoseconds (about 292 years); longer means no limit.
            max_age: self
                .max_age_ms
                .map(Duration::from_millis)
                .filter(|d| d.as_nanos() < i64::MAX as u128)
                .unwrap_or(Duration::ZERO),
            max_bytes: self.max_bytes.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            max_messages: -1,
            max_messages_per_subject: -1,
            max_consumers: -1,
            // Nothing may remove a message from the middle of the stream: no delete, no purge, no rollup.
            deny_delete: true,
            deny_purge: true,
            allow_rollup: false,
            allow_direct: true,
            allow_atomic_publish: true,
            metadata,
            ..Default::default()
        }
    }
}

/// The last record of a partition as this process last saw it.
#[derive(Debug, Clone, Copy)]
struct Tail {
    last_seq: u64,
    /// `Esgf-Max-Ts` of the last record (`i64::MIN` when there is none).
    max_ts: i64,
}

/// This process's view of a partition's end, for appending.
#[derive(Debug, Default)]
struct Writer {
    /// The tail after every append this process has sent, acknowledged or still in flight. `None`: unknown,
    /// read it from the stream leader before the next append.
    tail: Option<Tail>,
    /// Incremented whenever `tail` is discarded, so an append that failed after chaining onto an older
    /// prediction does not discard a newer, valid one.
    generation: u64,
}

impl Writer {
    /// Forgets the predicted tail, if it is still the one of `generation`.
    fn discard(&mut self, generation: u64) {
        if self.generation == generation {
            self.tail = None;
            self.generation += 1;
        }
    }
}

struct PartitionHandle {
    stream: String,
    subject: String,
    /// Serialises the *sending* of this process's appends to the partition: each names the sequence it
    /// expects to follow, chained onto the appends sent before it, and one connection delivers them in order,
    /// so they are stored in that order without waiting for each other's acknowledgements. Other nodes are
    /// serialised by JetStream's expected-last-sequence check.
    writer: Mutex<Writer>,
    /// Appends between taking their turn and their outcome, at most [`MAX_APPENDS_IN_FLIGHT`]; shutdown takes
    /// every permit to wait for them.
    in_flight: Semaphore,
    /// The partition's latest offset as last seen: appends through this process and polls publish it here.
    latest: watch::Sender<u64>,
    /// When some waiter last asked the leader, so many waiters on one partition poll it once, not each.
    last_poll: std::sync::Mutex<Option<Instant>>,
}

impl PartitionHandle {
    fn observe_latest(&self, latest: u64) {
        self.latest.send_if_modified(|seen| {
            if latest > *seen {
                *seen = latest;
                true
            } else {
                false
            }
        });
    }
}

struct TopicHandle {
    name: String,
    incarnation: String,
    partitions: Vec<Arc<PartitionHandle>>,
    /// The catalogue entry as last read or written by this process, and when.
    described: std::sync::Mutex<(TopicInfo, Instant)>,
}

impl TopicHandle {
    fn new(meta: &TopicMeta) -> Self {
        let partitions = (0..meta.partitions)
            .map(|p| {
                let stream = meta.stream(p);
                Arc::new(PartitionHandle {
                    subject: codec::partition_subject(&stream),
                    stream,
                    writer: Mutex::new(Writer::default()),
                    in_flight: Semaphore::new(MAX_APPENDS_IN_FLIGHT),
                    latest: watch::Sender::new(0),
                    last_poll: std::sync::Mutex::new(None),
                })
            })
            .collect();
        TopicHandle {
            name: meta.name.clone(),
            incarnation: meta.incarnation.clone(),
            partitions,
            described: std::sync::Mutex::new((meta.info(), Instant::now())),
        }
    }
}

/// The event log on a NATS JetStream cluster. Cheap to clone; clones share connection and caches.
#[derive(Clone)]
pub struct JetStreamStore {
    inner: Arc<Inner>,
}

struct Inner {
    js: Js,
    config: NatsConfig,
    clock: Arc<dyn Clock>,
    topics: Bucket,
    /// Topic handles by name. Only append/read paths use it; describe/list always read the catalogue, so
    /// another node's retention change is seen at once. A handle made stale by another node deleting or
    /// re-creating the topic fails on its deleted streams and is then dropped (see `vanished`).
    cache: RwLock<HashMap<String, Arc<TopicHandle>>>,
    shutting_down: AtomicBool,
}

fn backend(context: &str) -> impl FnOnce(JsError) -> StoreError + '_ {
    move |e| StoreError::Backend(format!("{context}: {e}"))
}

fn corrupt(stream: &str, seq: u64, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: PathBuf::from(format!("nats-stream:{stream}")),
        position: seq,
        detail: detail.into(),
    }
}

impl JetStreamStore {
    /// Opens the log on an established connection (see [`crate::connect`]), creating the topic catalogue
    /// bucket if this is the cluster's first start.
    pub async fn open(
        client: async_nats::Client,
        config: NatsConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<JetStreamStore, StoreError> {
        if config.replicas == 0 {
            return Err(StoreError::InvalidArgument("replicas must be at least 1".into()));
        }
        api::check_server_version(&client).map_err(StoreError::Backend)?;
        let js = Js::new(client, config.request_timeout);
        let topics = api::retry(config.operation_timeout, "open topic catalogue", || {
            Bucket::open(js.clone(), TOPICS_BUCKET, config.replicas)
        })
        .await
        .map_err(backend("opening the topic catalogue"))?;
        Ok(JetStreamStore {
            inner: Arc::new(Inner {
                js,
                config,
                clock,
                topics,
                cache: RwLock::new(HashMap::new()),
                shutting_down: AtomicBool::new(false),
            }),
        })
    }
}

impl Inner {
    fn check_open(&self) -> Result<(), StoreError> {
        if self.shutting_down.load(Ordering::SeqCst) { Err(StoreError::ShuttingDown) } else { Ok(()) }
    }

    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, JsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, JsError>>,
    {
        api::retry(self.config.operation_timeout, what, op).await
    }

    fn cached(&self, name: &str) -> Option<Arc<TopicHandle>> {
        self.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned()
    }

    fn forget(&self, name: &str) {
        self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
    }

    /// The handle for `meta`, sharing the cached one when it is the same incarnation (so all appends of this
    /// process to a partition queue on one lock).
    fn remember(&self, meta: &TopicMeta) -> Arc<TopicHandle> {
        let mut cache = self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(h) = cache.get(&meta.name)
            && h.incarnation == meta.incarnation
        {
            *h.described.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                (meta.info(), Instant::now());
            return h.clone();
        }
        let handle = Arc::new(TopicHandle::new(meta));
        cache.insert(meta.name.clone(), handle.clone());
        handle
    }

    /// The catalogue entry of `name` and its revision, or `None`.
    async fn load_meta(&self, name: &str) -> Result<Option<(TopicMeta, u64)>, StoreError> {
        let key = codec::encode_kv_key(name);
        let entry = self
            .retry("read topic", || self.topics.get(&key))
            .await
            .map_err(backend("reading the topic catalogue"))?;
        let Some(value) = entry.value else { return Ok(None) };
        let meta: TopicMeta = serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
            path: PathBuf::from(format!("nats-kv:{TOPICS_BUCKET}/{name}")),
            position: entry.revision,
            detail: e.to_string(),
        })?;
        Ok(Some((meta, entry.revision)))
    }

    async fn topic(&self, name: &str) -> Result<Arc<TopicHandle>, StoreError> {
        if let Some(h) = self.cached(name) {
            return Ok(h);
        }
        match self.load_meta(name).await? {
            Some((meta, _)) => Ok(self.remember(&meta)),
            None => Err(StoreError::TopicNotFound(name.to_owned())),
        }
    }

    async fn partition(&self, topic: &str, partition: u32) -> Result<Arc<PartitionHandle>, StoreError> {
        let t = self.topic(topic).await?;
        let partitions = t.partitions.len() as u32;
        t.partitions.get(partition as usize).cloned().ok_or_else(|| StoreError::PartitionNotFound {
            topic: topic.to_owned(),
            partition,
            partitions,
        })
    }

    /// A partition's stream is gone: the topic was deleted (or deleted and re-created) by another node.
    async fn vanished(&self, topic: &str) -> StoreError {
        self.forget(topic);
        match self.load_meta(topic).await {
            Ok(None) => StoreError::TopicNotFound(topic.to_owned()),
            Ok(Some(_)) => StoreError::Backend(format!(
                "topic '{topic}' was deleted and re-created while this request ran; retry it"
            )),
            Err(e) => e,
        }
    }

    /// First and last sequence held, from the stream leader: `(earliest offset, latest offset)`.
    async fn bounds(&self, topic: &str, p: &PartitionHandle) -> Result<(u64, u64), StoreError> {
        let info = match self.retry("stream info", || self.js.stream_info(&p.stream)).await {
            Ok(info) => info,
            Err(e) if e.is_code(code::STREAM_NOT_FOUND) => return Err(self.vanished(topic).await),
            Err(e) => return Err(backend("reading partition state")(e)),
        };
        let latest = info.state.last_sequence;
        // An empty stream reports first = last + 1 (or 0 for a new one): earliest is then latest.
        let earliest =
            if info.state.messages == 0 { latest } else { info.state.first_sequence.saturating_sub(1) };
        p.observe_latest(latest);
        Ok((earliest, latest))
    }

    async fn load_tail(&self, p: &PartitionHandle) -> Result<Tail, JsError> {
        let info = self.js.stream_info(&p.stream).await?;
        let last_seq = info.state.last_sequence;
        let max_ts = if info.state.messages == 0 {
            i64::MIN
        } else {
            match self.js.msg_get(&p.stream, last_seq).await? {
                Some(m) => codec::max_ts(&m.headers)
                    .map_err(|e| JsError::Protocol(format!("seq {last_seq}: {e}")))?,
                // Retention removed it between the two requests: nothing retained precedes the next record.
                None => i64::MIN,
            }
        };
        Ok(Tail { last_seq, max_ts })
    }

    /// One message, from any replica if it has it, else from the leader.
    async fn message(&self, stream: &str, seq: u64) -> Result<Option<StoredMsg>, JsError> {
        if let Ok(msgs) = self.js.direct_get_batch(stream, seq, 1, 1).await
            && let Some(m) = msgs.into_iter().next()
            && m.seq == seq
        {
            return Ok(Some(m));
        }
        self.retry("get message", || self.js.msg_get(stream, seq)).await
    }

    async fn running_max(&self, stream: &str, seq: u64) -> Result<Option<i64>, StoreError> {
        match self.message(stream, seq).await.map_err(backend("reading a record"))? {
            Some(m) => codec::max_ts(&m.headers).map(Some).map_err(|e| corrupt(stream, seq, e)),
            None => Ok(None),
        }
    }

    fn decode(stream: &str, m: StoredMsg) -> Result<Record, StoreError> {
        let seq = m.seq;
        codec::decode_record(seq, &m.headers, m.payload).map_err(|e| corrupt(stream, seq, e))
    }

    /// Creates the partition streams of `meta`; on failure deletes the ones it made.
    async fn create_streams(&self, meta: &TopicMeta) -> Result<(), StoreError> {
        let created = futures_util::stream::iter(0..meta.partitions)
            .map(|p| {
                let config = meta.stream_config(p);
                async move { self.retry("create stream", || self.js.stream_create(&config)).await.map(|_| ()) }
            })
            .buffer_unordered(STREAM_ADMIN_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await;
        if let Err(e) = created {
            self.delete_streams(meta).await;
            return Err(StoreError::Backend(format!("creating the streams of topic '{}': {e}", meta.name)));
        }
        Ok(())
    }

    /// Deletes the partition streams of `meta`, best effort: what fails stays as an orphan for
    /// `enforce_retention` to sweep.
    ///
    /// Each stream is sealed first. A deleted stream keeps accepting publishes for a moment after the
    /// delete request returns (its replicas shut down asynchronously), so another node still holding the
    /// topic could have an append acknowledged into a stream about to vanish. Sealing goes through the
    /// stream's own Raft group: once it returns, every append to the stream is refused, and the appending
    /// node learns the topic is gone.
    async fn delete_streams(&self, meta: &TopicMeta) {
        futures_util::stream::iter(0..meta.partitions)
            .map(|p| {
                let stream = meta.stream(p);
                let sealed = StreamConfig { sealed: true, ..meta.stream_config(p) };
                async move {
                    match self.retry("seal stream", || self.js.stream_update(&sealed)).await {
                        Ok(_) => {}
                        Err(e) if e.is_code(code::STREAM_NOT_FOUND) => return,
                        Err(e) => tracing::warn!(%stream, error = %e, "could not seal stream before deleting it"),
                    }
                    if let Err(e) = self.retry("delete stream", || self.js.stream_delete(&stream)).await {
                        tracing::warn!(%stream, error = %e, "could not delete stream; it will be swept later");
                    }
                }
            })
            .buffer_unordered(STREAM_ADMIN_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
    }

    async fn all_metas(&self) -> Result<Vec<TopicMeta>, StoreError> {
        let paths =
            self.retry("list topics", || self.topics.paths("*")).await.map_err(backend("listing topics"))?;
        let mut names: Vec<String> = paths.iter().filter_map(|p| codec::decode_kv_key(p)).collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some((meta, _)) = self.load_meta(&name).await? {
                out.push(meta);
            }
        }
        Ok(out)
    }

    /// Writes a changed catalogue entry if its revision is still `revision`. `Ok(false)`: it changed.
    async fn replace_meta(&self, meta: &TopicMeta, revision: u64) -> Result<bool, StoreError> {
        let key = codec::encode_kv_key(&meta.name);
        let value = serde_json::to_vec(meta).map_err(|e| StoreError::Backend(e.to_string()))?;
        let op = Op::Put(value.into());
        match self.topics.write_one(&key, &op, Some(revision), None).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_wrong_last_sequence() => Ok(false),
            Err(e) => Err(backend("writing the topic catalogue")(e)),
        }
    }

    async fn apply_limits(&self, meta: &TopicMeta) -> Result<(), StoreError> {
        futures_util::stream::iter(0..meta.partitions)
            .map(|p| {
                let config = meta.stream_config(p);
                async move { self.retry("update stream", || self.js.stream_update(&config)).await.map(|_| ()) }
            })
            .buffer_unordered(STREAM_ADMIN_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
            .map_err(backend("applying retention to the partition streams"))
    }

    async fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<NewRecord>,
    ) -> Result<AppendOutcome, StoreError> {
        self.check_open()?;
        if records.is_empty() {
            return Err(StoreError::InvalidArgument("an append needs at least one record".into()));
        }
        if records.len() > self.config.max_batch_records {
            return Err(StoreError::InvalidArgument(format!(
                "a batch of {} records exceeds the maximum of {} per append",
                records.len(),
                self.config.max_batch_records
            )));
        }
        let total: usize = records.iter().map(NewRecord::approx_size).sum();
        if total > self.config.max_batch_bytes {
            return Err(StoreError::BatchTooLarge { size: total, max: self.config.max_batch_bytes });
        }
        // Each record is one NATS message, bounded by the server's max_payload (headers included; ours take
        // about 200 bytes beyond the record's own).
        let max_payload = self.js.max_payload();
        if let Some(big) = records.iter().map(|r| r.approx_size() + 256).find(|s| *s > max_payload) {
            return Err(StoreError::BatchTooLarge { size: big, max: max_payload });
        }
        let p = self.partition(topic, partition).await?;
        let n = records.len() as u64;
        let _permit = p.in_flight.acquire().await.map_err(|_| StoreError::ShuttingDown)?;
        // Shutdown waits for the permits: an append that was queued for one must not start after.
        self.check_open()?;
        let append_id = api::random_id(22);
        let now = self.clock.now_ms();
        let deadline = Instant::now() + self.config.operation_timeout;
        let mut pause = Duration::from_millis(10);
        // Tails after which an attempt whose outcome we never learned may have landed.
        let mut unknown_outcomes: Vec<u64> = Vec::new();
        let mut last_error = String::new();
        loop {
            if Instant::now() >= deadline {
                let maybe =
                    if unknown_outcomes.is_empty() { "" } else { "; it may or may not have been stored" };
                return Err(StoreError::Backend(format!(
                    "append to {topic}/{partition} not acknowledged within {:?} ({last_error}){maybe}",
                    self.config.operation_timeout
                )));
            }
            // Take a turn: choose the expectation and hand the batch to the connection, then let the next
            // append go while this one waits for its acknowledgement.
            let attempt = {
                let mut writer = p.writer.lock().await;
                self.check_open()?;
                let tail = match writer.tail {
                    Some(t) => Ok(t),
                    None => self.load_tail(&p).await,
                };
                match tail {
                    Err(e) => Attempt::NoTail(e),
                    Ok(tail) => {
                        writer.tail = Some(tail);
                        if let Some(base) =
                            self.find_own_append(&p.stream, &unknown_outcomes, tail, n, &append_id).await
                        {
                            tracing::info!(
                                topic,
                                partition,
                                base,
                                "an append whose acknowledgement was lost had been stored"
                            );
                            let generation = writer.generation;
                            writer.discard(generation);
                            p.observe_latest(base + n);
                            return Ok(AppendOutcome { base_offset: base, last_offset: base + n - 1 });
                        }
                        let (msgs, max_ts) = build_messages(&records, now, tail, &append_id);
                        match self.js.send_atomic(&p.subject, msgs).await {
                            Ok(pending) => {
                                writer.tail = Some(Tail { last_seq: tail.last_seq + n, max_ts });
                                Attempt::Sent { tail, generation: writer.generation, pending }
                            }
                            Err(e) => {
                                let generation = writer.generation;
                                writer.discard(generation);
                                Attempt::Failed { tail, error: e }
                            }
                        }
                    }
                }
            };
            let (tail, result) = match attempt {
                Attempt::NoTail(e) if e.is_code(code::STREAM_NOT_FOUND) => {
                    return Err(self.vanished(topic).await);
                }
                Attempt::NoTail(e) if e.is_transient() => {
                    last_error = e.to_string();
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
                Attempt::NoTail(e) => return Err(backend("reading the partition tail")(e)),
                Attempt::Failed { tail, error } => (tail, Err(error)),
                Attempt::Sent { tail, generation, pending } => {
                    let result = pending.wait().await;
                    if !matches!(&result, Ok(ack) if ack.seq == tail.last_seq + n) {
                        // Appends sent after this one chained onto it and fail too; the next one re-reads.
                        p.writer.lock().await.discard(generation);
                    }
                    (tail, result)
                }
            };
            match result {
                Ok(ack) if ack.seq == tail.last_seq + n => {
                    p.observe_latest(ack.seq);
                    return Ok(AppendOutcome { base_offset: tail.last_seq, last_offset: ack.seq - 1 });
                }
                Ok(ack) => {
                    // Cannot happen while the expected-last-sequence check holds; refuse to guess offsets.
                    return Err(StoreError::Backend(format!(
                        "append to {topic}/{partition} stored up to sequence {}, expected {}",
                        ack.seq,
                        tail.last_seq + n
                    )));
                }
                Err(e) if e.is_wrong_last_sequence() => {
                    // Another node appended, our tail was stale, or an append this one chained onto failed:
                    // re-read the tail and try again at once.
                    tracing::debug!(topic, partition, error = %e, "partition moved on; re-reading its tail");
                    last_error = e.to_string();
                }
                Err(e) if e.is_code(code::STREAM_NOT_FOUND) || e.is_code(code::STREAM_SEALED) => {
                    return Err(self.vanished(topic).await);
                }
                Err(e) if e.is_code(code::BATCH_TOO_LARGE) => {
                    return Err(StoreError::InvalidArgument(format!(
                        "the NATS servers refuse a batch of {n} records ({e}); raise jetstream.limits.batch.max_msgs \
                         or lower max_batch_records"
                    )));
                }
                Err(e) if e.is_transient() => {
                    if matches!(e, JsError::Unavailable(_)) {
                        // No answer: the batch may have been stored. It can only have landed right after this tail.
                        unknown_outcomes.push(tail.last_seq);
                    }
                    tracing::warn!(topic, partition, error = %e, "append failed transiently; retrying");
                    last_error = e.to_string();
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(JsError::Refused(detail)) => {
                    return Err(StoreError::InvalidArgument(format!(
                        "the NATS client refused the append: {detail}"
                    )));
                }
                Err(e) => return Err(backend("appending")(e)),
            }
        }
    }

    /// Whether one of our earlier attempts, sent when the partition ended at one of `bases`, was stored:
    /// its first message carries our append id. Returns the base offset it landed at.
    async fn find_own_append(
        &self,
        stream: &str,
        bases: &[u64],
        tail: Tail,
        n: u64,
        append_id: &str,
    ) -> Option<u64> {
        for &base in bases {
            if tail.last_seq < base + n {
                continue;
            }
            match self.retry("check append", || self.js.msg_get(stream, base + 1)).await {
                Ok(Some(m)) if m.header(codec::H_APPEND) == Some(append_id) => return Some(base),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%stream, error = %e, "could not check whether a lost append was stored")
                }
            }
        }
        None
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<ReadResult, StoreError> {
        let p = self.partition(topic, partition).await?;
        let (earliest, latest) = self.bounds(topic, &p).await?;
        let out_of_range = |earliest, latest| StoreError::OffsetOutOfRange {
            topic: topic.to_owned(),
            partition,
            requested: offset,
            earliest,
            latest,
        };
        if offset < earliest || offset > latest {
            return Err(out_of_range(earliest, latest));
        }
        if offset == latest {
            return Ok(ReadResult { records: Vec::new(), next_offset: offset, earliest, latest });
        }
        let max_records = limits.max_records.clamp(1, MAX_READ_RECORDS);
        let msgs = self
            .retry("read", || {
                api::read_range(&self.js, &p.stream, offset + 1, latest, max_records, limits.max_bytes)
            })
            .await
            .map_err(backend("reading records"))?;
        if msgs.is_empty() {
            // Retention removed the records between the two requests (else the leader would have them).
            let (earliest, latest) = self.bounds(topic, &p).await?;
            if offset < earliest {
                return Err(out_of_range(earliest, latest));
            }
            return Err(StoreError::Backend(format!("{topic}/{partition}: no record at offset {offset}")));
        }
        let mut records = Vec::with_capacity(msgs.len());
        let mut bytes = 0usize;
        for m in msgs {
            let r = Self::decode(&p.stream, m)?;
            bytes += codec::record_size(&r);
            if !records.is_empty() && bytes > limits.max_bytes {
                break;
            }
            records.push(r);
        }
        let next_offset = offset + records.len() as u64;
        Ok(ReadResult { records, next_offset, earliest, latest })
    }

    async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        ts: i64,
    ) -> Result<Option<u64>, StoreError> {
        let p = self.partition(topic, partition).await?;
        let (earliest, latest) = self.bounds(topic, &p).await?;
        if earliest == latest {
            return Ok(None);
        }
        // Binary search over sequences for the first whose running maximum timestamp reaches `ts`. The
        // running maximum never decreases, and the first record where it reaches `ts` is the first record
        // stamped at or after `ts` — unless that is the oldest retained record, whose running maximum may
        // come from records retention already removed; then scan forward by own timestamps.
        let (first, last) = (earliest + 1, latest);
        match self.running_max(&p.stream, last).await? {
            Some(max) if max >= ts => {}
            _ => return Ok(None),
        }
        let (mut lo, mut hi) = (first, last);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.running_max(&p.stream, mid).await? {
                Some(max) if max >= ts => hi = mid,
                Some(_) => lo = mid + 1,
                // Retention removed `mid` meanwhile: everything up to it is gone.
                None => lo = mid + 1,
            }
        }
        if lo > first {
            return Ok(Some(lo - 1));
        }
        let mut seq = lo;
        let mut scanned = 0usize;
        while seq <= last && scanned < self.config.timestamp_scan_limit {
            let msgs = self
                .retry("scan", || api::read_range(&self.js, &p.stream, seq, last, 500, 4 << 20))
                .await
                .map_err(backend("scanning for a timestamp"))?;
            if msgs.is_empty() {
                break;
            }
            for m in &msgs {
                if codec::own_ts(&m.headers).map_err(|e| corrupt(&p.stream, m.seq, e))? >= ts {
                    return Ok(Some(m.seq - 1));
                }
            }
            scanned += msgs.len();
            seq += msgs.len() as u64;
        }
        if scanned >= self.config.timestamp_scan_limit {
            // Give the earliest possible answer rather than none: a reader then sees a few older records.
            tracing::debug!(topic, partition, ts, "timestamp scan limit reached");
            return Ok(Some(lo - 1));
        }
        Ok(None)
    }

    async fn wait_for(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<bool, StoreError> {
        let p = self.partition(topic, partition).await?;
        let mut seen = p.latest.subscribe();
        if *seen.borrow_and_update() > offset {
            return Ok(true);
        }
        let deadline = Instant::now() + timeout;
        let mut interval = Duration::from_millis(10);
        loop {
            let due = {
                let mut last = p.last_poll.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let due = last.is_none_or(|t| t.elapsed() >= interval);
                if due {
                    *last = Some(Instant::now());
                }
                due
            };
            if due {
                let (_, latest) = self.bounds(topic, &p).await?;
                if latest > offset {
                    return Ok(true);
                }
            }
            if *seen.borrow_and_update() > offset {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let pause = interval.min(deadline - now);
            tokio::select! {
                changed = seen.changed() => {
                    if changed.is_err() {
                        return Ok(false);
                    }
                }
                () = tokio::time::sleep(pause) => {}
            }
            interval = (interval * 2).min(self.config.wait_poll_max);
        }
    }

    async fn enforce_retention(&self) -> Result<RetentionReport, StoreError> {
        // JetStream applies max_age and max_bytes itself, continuously. What is left here: re-apply limits a
        // failed `set_retention` may have left half-done, and delete streams of deleted topics that a failed
        // `delete_topic` left behind.
        let metas = self.all_metas().await?;
        let mut wanted: HashMap<String, StreamConfig> = HashMap::new();
        for meta in &metas {
            for p in 0..meta.partitions {
                let config = meta.stream_config(p);
                wanted.insert(config.name.clone(), config);
            }
        }
        let streams = self
            .retry("list streams", || self.js.stream_list(codec::PARTITION_SUBJECTS))
            .await
            .map_err(backend("listing partition streams"))?;
        let mut report = RetentionReport::default();
        let now = self.clock.now_ms();
        let mut present = HashSet::new();
        for info in streams {
            let name = info.config.name.clone();
            present.insert(name.clone());
            if let Some(want) = wanted.get(&name) {
                if info.config.max_age != want.max_age || info.config.max_bytes != want.max_bytes {
                    tracing::info!(stream = %name, "re-applying retention limits");
                    self.retry("update stream", || self.js.stream_update(want))
                        .await
                        .map_err(backend("re-applying retention"))?;
                }
                continue;
            }
            // Only streams this service made carry its metadata; never touch anything else.
            let Some(created) =
                info.config.metadata.get("esgf_created_ms").and_then(|c| c.parse::<i64>().ok())
            else {
                continue;
            };
            if now - created < ORPHAN_GRACE_MS {
                continue;
            }
            tracing::info!(stream = %name, "deleting the stream of a deleted topic");
            if self
                .retry("delete stream", || self.js.stream_delete(&name))
                .await
                .map_err(backend("deleting an orphan stream"))?
            {
                report.segments_deleted += 1;
                report.bytes_deleted += info.state.bytes;
            }
        }
        for name in wanted.keys().filter(|name| !present.contains(*name)) {
            // Re-creating it would restart its offsets at 0 and break every consumer's position: that is an
            // operator's decision (restore the stream from a backup, or delete and re-create the topic).
            tracing::error!(stream = %name, "partition stream of an existing topic is missing");
        }
        Ok(report)
    }
}

/// One turn of an append at the partition's writer.
enum Attempt {
    /// The tail could not be read.
    NoTail(JsError),
    /// Handed to the connection; the acknowledgement is pending.
    Sent { tail: Tail, generation: u64, pending: api::PendingAck },
    /// Sending failed (possibly after part of a batch went out: the server drops an uncommitted batch).
    Failed { tail: Tail, error: JsError },
}

/// The messages of one append attempt, and the running maximum timestamp after it.
fn build_messages(records: &[NewRecord], now: i64, tail: Tail, append_id: &str) -> (Vec<OutMsg>, i64) {
    let mut max_ts = tail.max_ts;
    let msgs = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let ts = r.timestamp_ms.unwrap_or(now);
            max_ts = max_ts.max(ts);
            let mut headers = codec::record_headers(ts, max_ts, r.key.as_deref(), &r.headers);
            if i == 0 {
                headers.insert(codec::H_APPEND, append_id);
                // The append lands right after `tail` or not at all: this is what keeps offsets dense when
                // several writers (or retries) race.
                headers.insert("Nats-Expected-Last-Sequence", tail.last_seq.to_string().as_str());
            }
            OutMsg { headers, payload: r.value.clone() }
        })
        .collect();
    (msgs, max_ts)
}

#[async_trait]
impl LogStore for JetStreamStore {
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo, StoreError> {
        let inner = &self.inner;
        validate_topic_name(name)?;
        if config.partitions == 0 || config.partitions > MAX_PARTITIONS {
            return Err(StoreError::InvalidArgument(format!("partitions must be 1..={MAX_PARTITIONS}")));
        }
        inner.check_open()?;
        let key = codec::encode_kv_key(name);
        let existing = inner
            .retry("read topic", || inner.topics.get(&key))
            .await
            .map_err(backend("reading the topic catalogue"))?;
        if existing.value.is_some() {
            return Err(StoreError::TopicExists(name.to_owned()));
        }
        let meta = TopicMeta {
            name: name.to_owned(),
            partitions: config.partitions,
            max_age_ms: config.retention.max_age.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            max_bytes: config.retention.max_bytes,
            created_ms: inner.clock.now_ms(),
            incarnation: api::random_id(12),
            replicas: inner.config.replicas,
        };
        inner.create_streams(&meta).await?;
        // The catalogue entry is written last and only if the key is still as we read it: of two nodes
        // creating the same topic at once exactly one wins, and a topic is never visible before its streams.
        match inner.replace_meta(&meta, existing.revision).await {
            Ok(true) => {
                inner.remember(&meta);
                tracing::info!(topic = name, partitions = meta.partitions, incarnation = %meta.incarnation, "topic created");
                Ok(meta.info())
            }
            Ok(false) => {
                inner.delete_streams(&meta).await;
                Err(StoreError::TopicExists(name.to_owned()))
            }
            Err(e) => {
                inner.delete_streams(&meta).await;
                Err(e)
            }
        }
    }

    async fn delete_topic(&self, name: &str) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner.check_open()?;
        let key = codec::encode_kv_key(name);
        let mut backoff = api::Backoff::new(inner.config.operation_timeout);
        let meta = loop {
            let Some((meta, revision)) = inner.load_meta(name).await? else {
                inner.forget(name);
                return Err(StoreError::TopicNotFound(name.to_owned()));
            };
            match inner.topics.write_one(&key, &Op::Delete, Some(revision), None).await {
                Ok(_) => break meta,
                Err(e) if e.is_wrong_last_sequence() && backoff.wait().await => continue,
                Err(e) => return Err(backend("deleting from the topic catalogue")(e)),
            }
        };
        inner.forget(name);
        inner.delete_streams(&meta).await;
        tracing::info!(topic = name, incarnation = %meta.incarnation, "topic deleted");
        Ok(())
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>, StoreError> {
        Ok(self.inner.all_metas().await?.iter().map(TopicMeta::info).collect())
    }

    async fn describe_topic(&self, name: &str) -> Result<TopicInfo, StoreError> {
        if let Some(h) = self.inner.cached(name) {
            let (info, at) = h.described.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            if at.elapsed() < DESCRIBE_CACHE_TTL {
                return Ok(info);
            }
        }
        match self.inner.load_meta(name).await? {
            Some((meta, _)) => {
                self.inner.remember(&meta);
                Ok(meta.info())
            }
            None => {
                self.inner.forget(name);
                Err(StoreError::TopicNotFound(name.to_owned()))
            }
        }
    }

    async fn set_retention(&self, name: &str, retention: Retention) -> Result<TopicInfo, StoreError> {
        let inner = &self.inner;
        inner.check_open()?;
        let mut backoff = api::Backoff::new(inner.config.operation_timeout);
        let meta = loop {
            let Some((mut meta, revision)) = inner.load_meta(name).await? else {
                return Err(StoreError::TopicNotFound(name.to_owned()));
            };
            meta.max_age_ms = retention.max_age.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            meta.max_bytes = retention.max_bytes;
            if inner.replace_meta(&meta, revision).await? {
                break meta;
            }
            if !backoff.wait().await {
                return Err(StoreError::Backend(format!(
                    "topic '{name}' kept changing while setting its retention"
                )));
            }
        };
        inner.remember(&meta);
        // The catalogue is the truth; if this fails half-way, `enforce_retention` re-applies it.
        inner.apply_limits(&meta).await?;
        Ok(meta.info())
    }

    async fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<NewRecord>,
    ) -> Result<AppendOutcome, StoreError> {
        self.inner.append(topic, partition, records).await
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<ReadResult, StoreError> {
        self.inner.read(topic, partition, offset, limits).await
    }

    async fn offsets(&self, topic: &str, partition: u32) -> Result<PartitionOffsets, StoreError> {
        let p = self.inner.partition(topic, partition).await?;
        let (earliest, latest) = self.inner.bounds(topic, &p).await?;
        Ok(PartitionOffsets { partition, earliest, latest })
    }

    async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        self.inner.offset_for_timestamp(topic, partition, timestamp_ms).await
    }

    async fn wait_for(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.wait_for(topic, partition, offset, timeout).await
    }

    async fn enforce_retention(&self) -> Result<RetentionReport, StoreError> {
        self.inner.enforce_retention().await
    }

    async fn shutdown(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner.shutting_down.store(true, Ordering::SeqCst);
        let handles: Vec<Arc<TopicHandle>> =
            inner.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect();
        for t in handles {
            for p in &t.partitions {
                // Appends in flight hold a permit until JetStream acknowledged them (or they failed).
                if let Ok(all) = p.in_flight.acquire_many(MAX_APPENDS_IN_FLIGHT as u32).await {
                    drop(all);
                }
            }
            tracing::debug!(topic = %t.name, "appends drained");
        }
        inner
            .js
            .client()
            .flush()
            .await
            .map_err(|e| StoreError::Backend(format!("flushing the NATS connection: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn meta() -> TopicMeta {
        TopicMeta {
            name: "esgf2.publications".into(),
            partitions: 2,
            max_age_ms: Some(90 * 24 * 3600 * 1000),
            max_bytes: None,
            created_ms: 1,
            incarnation: "abc".into(),
            replicas: 3,
        }
    }

    #[test]
    fn partition_streams_can_never_lose_a_message_from_the_middle() {
        let c = meta().stream_config(1);
        assert!(c.deny_delete && c.deny_purge && !c.allow_rollup);
        assert_eq!(c.discard, DiscardPolicy::Old);
        assert_eq!((c.max_messages, c.max_messages_per_subject), (-1, -1));
        assert!(c.allow_atomic_publish);
        assert_eq!(c.subjects, vec!["esgf.log.ESGF_esgf2_publications_abc_P1".to_owned()]);
        assert_eq!(c.max_age, Duration::from_secs(90 * 24 * 3600));
        assert_eq!(c.max_bytes, -1);
    }

    #[test]
    fn retention_forever_and_huge_ages_mean_no_limit() {
        let mut m = meta();
        m.max_age_ms = None;
        assert_eq!(m.stream_config(0).max_age, Duration::ZERO);
        m.max_age_ms = Some(u64::MAX);
        assert_eq!(m.stream_config(0).max_age, Duration::ZERO);
        m.max_bytes = Some(u64::MAX);
        assert_eq!(m.stream_config(0).max_bytes, i64::MAX);
    }

    #[test]
    fn catalogue_entries_round_trip_retention() {
        let m = meta();
        let back: TopicMeta = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.info().retention, Retention::DEFAULT);
    }

    #[test]
    fn a_failed_append_discards_only_the_tail_prediction_it_chained_onto() {
        let mut w = Writer { tail: Some(Tail { last_seq: 10, max_ts: 0 }), generation: 0 };
        // Appends A and B were sent in generation 0; A fails and discards the prediction.
        w.discard(0);
        assert!(w.tail.is_none());
        assert_eq!(w.generation, 1);
        // C re-reads the tail and is sent in generation 1; then B, which chained onto A, fails too.
        w.tail = Some(Tail { last_seq: 10, max_ts: 0 });
        w.discard(0);
        assert_eq!(w.tail.map(|t| t.last_seq), Some(10), "B's failure must not discard C's fresh tail");
        assert_eq!(w.generation, 1);
    }

    #[test]
    fn only_the_first_message_of_an_append_carries_the_expectation() {
        let records = vec![
            NewRecord { timestamp_ms: Some(50), key: None, value: Bytes::from_static(b"a"), headers: vec![] },
            NewRecord { timestamp_ms: Some(20), key: None, value: Bytes::from_static(b"b"), headers: vec![] },
            NewRecord::from_value("c"),
        ];
        let (msgs, max) = build_messages(&records, 30, Tail { last_seq: 7, max_ts: 40 }, "id");
        assert_eq!(msgs[0].headers.get("Nats-Expected-Last-Sequence").map(|v| v.as_str()), Some("7"));
        assert_eq!(msgs[0].headers.get(codec::H_APPEND).map(|v| v.as_str()), Some("id"));
        assert!(msgs[1].headers.get("Nats-Expected-Last-Sequence").is_none());
        let maxes: Vec<i64> = msgs.iter().map(|m| codec::max_ts(&m.headers).unwrap()).collect();
        assert_eq!(maxes, vec![50, 50, 50], "the running maximum never decreases");
        assert_eq!(codec::own_ts(&msgs[2].headers).unwrap(), 30, "unstamped records get the append time");
        assert_eq!(max, 50);
    }
}
