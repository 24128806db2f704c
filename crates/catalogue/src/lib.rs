//! The topic catalogue of the ESGF Event Service: what the service knows about a topic beyond what the log
//! engine stores (partitions, retention). Per topic: the validation policy and registered extension schemas,
//! the discovery metadata (description, owner), and the lifecycle (state, sunset, successor, announcement,
//! a scheduled transition). Also the event ids of idempotent publishes.
//!
//! Kept in the [`MetaStore`] (collections `topic_catalogue` and `event_ids`, as JSON and text), cached in memory
//! so the publish path never does I/O to find a topic's policy. Shared by the HTTP and Kafka endpoints, so both
//! refuse the same events with the same reasons. A topic the catalogue has never heard of has the default
//! settings: active, no validation.
//!
//! Every state, validation or retention change writes an entry to the service changelog
//! (`esgf_events_meta::changelog`).
//!
//! Event ids are on every publish's path, so they cost as little state-store work as the guarantees allow: a
//! request's ids are looked up with one [`MetaStore::get_many`], and the id records of concurrent requests are
//! group-committed (one durable write for all the requests queued while the previous write ran, see
//! `IdRecorder`) instead of paying one fsync each.

mod settings;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use esgf_events_engine::Clock;
use esgf_events_envelope::{SchemaRegistry, ValidationPolicy, Violation, event_id, validate};
use esgf_events_meta::changelog::{ChangeEntry, record_change};
use esgf_events_meta::{MetaError, MetaStore, Write};
use tokio::sync::{Semaphore, mpsc, oneshot};

pub use settings::{
    Applied, MAX_DESCRIPTION_CHARS, MAX_SCHEMAS, SETTINGS_MEMBERS, Scheduled, SettingsChange, TopicSettings,
    TopicState, apply, rfc3339,
};

/// The collection holding each topic's settings (JSON), keyed by topic name.
pub const CATALOGUE_COLLECTION: &str = "topic_catalogue";
/// The collection holding the event ids seen per topic, keyed `<topic>\0<event_id>`.
pub const EVENT_IDS_COLLECTION: &str = "event_ids";
/// Event ids longer than this are not remembered (the event is still accepted, just not deduplicated).
pub const MAX_EVENT_ID_BYTES: usize = 256;
/// Most violations reported for one request (a batch of broken events must not produce an unbounded answer).
pub const MAX_REPORTED_VIOLATIONS: usize = 1000;
/// The suffix of a topic's companion errors stream.
pub const ERRORS_SUFFIX: &str = ".errors";
/// Most id records in one group commit. A request with more is written alone, as one write. At most the
/// JetStream servers' default atomic-batch size, so combining requests never makes a write the state store
/// refuses when each request alone would have been accepted.
pub const MAX_GROUP_WRITES: usize = 1000;
/// Requests whose id records may wait for the group commit at once; more wait to be queued (backpressure).
const ID_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("the catalogue entry of topic {topic} is corrupt: {detail}")]
    Corrupt { topic: String, detail: String },
}

/// One violation of one event of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventViolation {
    /// The event's position in the request (0 for a single event).
    pub index: usize,
    pub pointer: String,
    pub message: String,
}

/// Why a publish is refused before anything is appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishRefusal {
    #[error("topic {topic} is read-only: it accepts no new events{}", successor_hint(.successor))]
    ReadOnly { topic: String, successor: Option<String> },
    #[error("topic {topic} is retired: it accepts no new events{}", successor_hint(.successor))]
    Retired { topic: String, successor: Option<String> },
    #[error("{} violation(s) of the topic's validation policy {policy}: {}", .violations.len(), summary(.violations))]
    Invalid { policy: ValidationPolicy, violations: Vec<EventViolation> },
}

fn successor_hint(successor: &Option<String>) -> String {
    successor.as_ref().map(|s| format!("; publish to {s} instead")).unwrap_or_default()
}

/// Violations spelled out in a refusal's message; the rest are counted (HTTP lists them all in `errors`).
const MAX_SUMMARIZED: usize = 20;

/// The violations on one line (the Kafka error message carries them), bounded.
fn summary(violations: &[EventViolation]) -> String {
    let mut text = violations
        .iter()
        .take(MAX_SUMMARIZED)
        .map(|v| {
            let at = if v.pointer.is_empty() { "/" } else { &v.pointer };
            format!("event {} at {at}: {}", v.index, v.message)
        })
        .collect::<Vec<_>>()
        .join("; ");
    if violations.len() > MAX_SUMMARIZED {
        text.push_str(&format!("; and {} more", violations.len() - MAX_SUMMARIZED));
    }
    text
}

/// One topic's catalogue entry with its compiled schema view.
#[derive(Debug, Clone, Default)]
pub struct TopicEntry {
    pub settings: TopicSettings,
    schemas: SchemaRegistry,
}

impl TopicEntry {
    fn new(settings: TopicSettings, all: &SchemaRegistry) -> Self {
        // Settings were checked when written; a schema since dropped from the build is skipped, not fatal.
        let known: Vec<&String> = settings.schemas.iter().filter(|id| all.contains(id)).collect();
        let schemas = all.subset(&known).unwrap_or_default();
        TopicEntry { settings, schemas }
    }
}

/// Where an earlier publish of an event id landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub partition: u32,
    pub offset: u64,
    pub time_ms: i64,
}

impl Recorded {
    fn encode(&self) -> Bytes {
        Bytes::from(format!("{} {} {}", self.partition, self.offset, self.time_ms))
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(' ');
        let recorded = Recorded {
            partition: parts.next()?.parse().ok()?,
            offset: parts.next()?.parse().ok()?,
            time_ms: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(recorded)
    }
}

/// What to do with one event of a publish, as far as idempotence goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedupe {
    /// Append it.
    New,
    /// Already in the log: append nothing, answer with the original position.
    Duplicate(Recorded),
    /// Repeats the event id of an earlier event of the same request: appended once, answered with its position.
    SameAs(usize),
}

/// The topic catalogue.
pub struct Catalogue {
    meta: Arc<dyn MetaStore>,
    clock: Arc<dyn Clock>,
    schemas: SchemaRegistry,
    /// `None`: a topic's dedupe window is its retention.
    dedupe_window: Option<Duration>,
    cache: RwLock<BTreeMap<String, Arc<TopicEntry>>>,
    /// Serializes read-modify-write of settings (two concurrent PATCHes must not lose one's change).
    writes: tokio::sync::Mutex<()>,
    ids: IdRecorder,
}

/// One request's id records and where to send the outcome of the write that made them durable.
struct IdJob {
    writes: Vec<Write>,
    done: oneshot::Sender<Result<(), MetaError>>,
}

/// The group commit of event-id records: one task takes every request queued while the previous writes ran
/// and makes them durable with one [`MetaStore::write`] (atomic, so all of a group or none), then answers each
/// request with that write's outcome. A lone request is written at once (no waiting for company), so the
/// latency is at most one extra write; under load, N concurrent publishes cost one fsync (redb) or one
/// replicated batch (NATS) instead of N. Up to [`MetaStore::write_parallelism`] group writes are in flight at
/// once: one for redb (so the most requests share each fsync); many for NATS, where overlapping round trips
/// beat atomic batches, so requests are combined only beyond that bound.
///
/// The write runs in the task, not in the caller: a caller that goes away (a client hanging up) neither
/// cancels the write for the others of its group nor leaves it half done. The task holds the store weakly, so
/// dropping the catalogue releases the store (a redb file can be reopened) and ends the task.
struct IdRecorder {
    queue: mpsc::Sender<IdJob>,
}

impl IdRecorder {
    fn start(meta: &Arc<dyn MetaStore>) -> Self {
        let (queue, jobs) = mpsc::channel(ID_QUEUE);
        let slots = Arc::new(Semaphore::new(meta.write_parallelism().max(1)));
        tokio::spawn(group_commit(Arc::downgrade(meta), jobs, slots));
        IdRecorder { queue }
    }

    /// Returns once `writes` are durable (or failed, with the error of the group's write).
    async fn record(&self, writes: Vec<Write>) -> Result<(), MetaError> {
        let (done, outcome) = oneshot::channel();
        self.queue.send(IdJob { writes, done }).await.map_err(|_| MetaError::Closed)?;
        outcome.await.map_err(|_| MetaError::Closed)?
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

async fn group_commit(meta: Weak<dyn MetaStore>, mut jobs: mpsc::Receiver<IdJob>, slots: Arc<Semaphore>) {
    // A job that did not fit the previous group: the first of the next one.
    let mut held: Option<IdJob> = None;
    loop {
        // Waiting for a free slot is what lets requests accumulate (in the queue) into the next group.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let first = match held.take() {
            Some(job) => job,
            None => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut writes = first.writes;
        let mut waiters = vec![first.done];
        while writes.len() < MAX_GROUP_WRITES {
            let Ok(job) = jobs.try_recv() else { break };
            if writes.len() + job.writes.len() > MAX_GROUP_WRITES {
                held = Some(job);
                break;
            }
            writes.extend(job.writes);
            waiters.push(job.done);
        }
        let meta = meta.clone();
        tokio::spawn(async move {
            let (requests, records) = (waiters.len(), writes.len());
            let outcome = match meta.upgrade() {
                Some(meta) => meta.write(writes).await,
                None => Err(MetaError::Closed),
            };
            drop(slot);
            tracing::trace!(requests, records, ok = outcome.is_ok(), "event-id group commit");
            for waiter in waiters {
                // A waiter that has gone away needs no answer.
                let _ = waiter.send(outcome.clone());
            }
        });
    }
}

impl std::fmt::Debug for Catalogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalogue").field("dedupe_window", &self.dedupe_window).finish_non_exhaustive()
    }
}

fn key(topic: &str, event_id: &str) -> String {
    format!("{topic}\0{event_id}")
}

impl Catalogue {
    /// The state-store collections this cache holds (event ids are read when needed, not cached).
    pub const CACHED_COLLECTIONS: [&'static str; 1] = [CATALOGUE_COLLECTION];

    /// Loads the catalogue from `meta`. `dedupe_window`: how long an event id is remembered; `None` means
    /// each topic's retention.
    pub async fn open(
        meta: Arc<dyn MetaStore>,
        clock: Arc<dyn Clock>,
        dedupe_window: Option<Duration>,
    ) -> Result<Self, CatalogueError> {
        let schemas = SchemaRegistry::builtin();
        let cache = load_all(meta.as_ref(), &schemas).await?;
        Ok(Catalogue {
            clock,
            schemas,
            dedupe_window,
            cache: RwLock::new(cache),
            writes: tokio::sync::Mutex::new(()),
            ids: IdRecorder::start(&meta),
            meta,
        })
    }

    /// Re-reads one changed key of the state store, if it is a catalogue entry (other collections are
    /// ignored): how a change made by another service node on a shared store takes effect here. Serialised
    /// with this node's own changes. On error the cache is unchanged: retry, or [`Catalogue::reload`].
    pub async fn refresh(&self, collection: &str, key: &str) -> Result<(), CatalogueError> {
        if collection != CATALOGUE_COLLECTION {
            return Ok(());
        }
        let _guard = self.writes.lock().await;
        let entry = match self.meta.get(CATALOGUE_COLLECTION, key).await? {
            Some(bytes) => Some(Arc::new(TopicEntry::new(parse(key, &bytes)?, &self.schemas))),
            None => None,
        };
        let mut cache = self.cache.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        match entry {
            Some(entry) => cache.insert(key.to_owned(), entry),
            None => cache.remove(key),
        };
        Ok(())
    }

    /// Re-reads the whole catalogue (after changes may have been missed). On error the cache is unchanged.
    pub async fn reload(&self) -> Result<(), CatalogueError> {
        let _guard = self.writes.lock().await;
        let fresh = load_all(self.meta.as_ref(), &self.schemas).await?;
        *self.cache.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        Ok(())
    }

    pub fn meta(&self) -> &Arc<dyn MetaStore> {
        &self.meta
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The shipped extension schemas (the ids a topic may register).
    pub fn schemas(&self) -> &SchemaRegistry {
        &self.schemas
    }

    /// A topic's entry; the defaults when the catalogue has none.
    pub fn get(&self, topic: &str) -> Arc<TopicEntry> {
        let cache = self.cache.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.get(topic).cloned().unwrap_or_default()
    }

    /// Applies `change` to `topic`'s settings (checked first; nothing changes on error), stores them and writes
    /// the changelog entries. Returns the new settings.
    pub async fn update(
        &self,
        topic: &str,
        change: &SettingsChange,
        actor: &str,
    ) -> Result<TopicSettings, CatalogueError> {
        let _guard = self.writes.lock().await;
        let current = self.get(topic);
        let applied = apply(topic, &current.settings, change, self.now_ms(), actor, &self.schemas)?;
        self.store(topic, applied).await
    }

    async fn store(&self, topic: &str, applied: Applied) -> Result<TopicSettings, CatalogueError> {
        let json =
            serde_json::to_vec(&applied.settings).map_err(|e| CatalogueError::Invalid(e.to_string()))?;
        self.meta.put(CATALOGUE_COLLECTION, topic, Bytes::from(json)).await?;
        let entry = Arc::new(TopicEntry::new(applied.settings.clone(), &self.schemas));
        self.cache.write().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(topic.to_owned(), entry);
        for change in &applied.changes {
            tracing::info!(%topic, kind = %change.kind, title = %change.title, "topic catalogue change");
            self.changelog(change).await;
        }
        Ok(applied.settings)
    }

    /// Appends to the changelog. A failure is logged, not returned: the change itself is already durable, and
    /// refusing the request now would misreport it as not done.
    pub async fn changelog(&self, entry: &ChangeEntry) {
        if let Err(e) = record_change(self.meta.as_ref(), entry).await {
            tracing::error!(error = %e, kind = %entry.kind, "could not write a changelog entry");
        }
    }

    /// Records a retention change of `topic` in the changelog (the engine owns retention itself).
    pub async fn record_retention_change(&self, topic: &str, before: &str, after: &str, actor: &str) {
        let entry = ChangeEntry {
            time_ms: u64::try_from(self.now_ms()).unwrap_or(0),
            kind: "retention".to_owned(),
            title: format!("Topic {topic} retention is now {after}"),
            detail: format!("was {before}; changed by {actor}"),
            topic: Some(topic.to_owned()),
        };
        self.changelog(&entry).await;
    }

    /// Records the creation of `topic` in the changelog: a new topic changes what is available to every client.
    pub async fn record_topic_created(&self, topic: &str, partitions: u32, retention: &str, actor: &str) {
        let entry = ChangeEntry {
            time_ms: u64::try_from(self.now_ms()).unwrap_or(0),
            kind: "topic-created".to_owned(),
            title: format!("Topic {topic} created"),
            detail: format!("{partitions} partition(s), retention {retention}; created by {actor}"),
            topic: Some(topic.to_owned()),
        };
        self.changelog(&entry).await;
    }

    /// Forgets a topic (it was deleted, or its creation failed).
    pub async fn remove(&self, topic: &str) -> Result<(), CatalogueError> {
        let _guard = self.writes.lock().await;
        self.meta.delete(CATALOGUE_COLLECTION, topic).await?;
        self.cache.write().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(topic);
        Ok(())
    }

    /// Applies every scheduled transition whose time has come. Returns what changed. Run periodically by the
    /// server, and callable directly (tests move a manual clock and call it).
    pub async fn apply_due(&self) -> Result<Vec<(String, TopicState)>, CatalogueError> {
        let _guard = self.writes.lock().await;
        let now = self.now_ms();
        let due: Vec<(String, TopicSettings)> = {
            let cache = self.cache.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            cache
                .iter()
                .filter(|(_, e)| e.settings.scheduled.is_some_and(|s| s.at_ms <= now))
                .map(|(t, e)| (t.clone(), e.settings.clone()))
                .collect()
        };
        let mut applied = Vec::new();
        for (topic, current) in due {
            let Some(scheduled) = current.scheduled else { continue };
            let mut next = current.clone();
            next.scheduled = None;
            let mut changes = Vec::new();
            if scheduled.state != current.state && current.state != TopicState::Retired {
                next.enter(scheduled.state, scheduled.at_ms);
                changes.push(settings::state_entry(&topic, current.state, scheduled.state, now, "schedule"));
            }
            self.store(&topic, Applied { settings: next, changes }).await?;
            applied.push((topic, scheduled.state));
        }
        Ok(applied)
    }

    /// Checks a publish of `events` to `topic` against its state and validation policy. Every event is
    /// checked, so the answer lists every violation of the request (up to [`MAX_REPORTED_VIOLATIONS`]).
    pub fn check_publish<'a>(
        &self,
        topic: &str,
        events: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), PublishRefusal> {
        let entry = self.get(topic);
        let settings = &entry.settings;
        match settings.state {
            TopicState::ReadOnly => {
                return Err(PublishRefusal::ReadOnly {
                    topic: topic.to_owned(),
                    successor: settings.successor.clone(),
                });
            }
            TopicState::Retired => {
                return Err(PublishRefusal::Retired {
                    topic: topic.to_owned(),
                    successor: settings.successor.clone(),
                });
            }
            TopicState::Active | TopicState::Deprecated => {}
        }
        if settings.validation == ValidationPolicy::None {
            return Ok(());
        }
        let mut violations = Vec::new();
        for (index, event) in events.into_iter().enumerate() {
            if let Err(found) = validate(settings.validation, event, &entry.schemas) {
                let room = MAX_REPORTED_VIOLATIONS.saturating_sub(violations.len());
                violations.extend(
                    found.into_iter().take(room).map(|Violation { pointer, message }| EventViolation {
                        index,
                        pointer,
                        message,
                    }),
                );
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(PublishRefusal::Invalid { policy: settings.validation, violations })
        }
    }

    /// The window within which a repeated event id on `topic` is a duplicate: the configured one, else the
    /// topic's retention (`None` = forever).
    pub fn dedupe_window(&self, retention: Option<Duration>) -> Option<Duration> {
        self.dedupe_window.or(retention)
    }

    /// Decides, for each event of a request (in order), whether it is new or repeats an event id already
    /// published on `topic` within the window, or one earlier in the same request. All ids are looked up
    /// before anything is appended, together in one [`MetaStore::get_many`].
    pub async fn find_duplicates<'a>(
        &self,
        topic: &str,
        events: impl IntoIterator<Item = &'a str>,
        retention: Option<Duration>,
    ) -> Result<Vec<Dedupe>, CatalogueError> {
        let window = self.dedupe_window(retention);
        let now = self.now_ms();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut out = Vec::new();
        // The first event of each distinct id, and its key: the ones looked up.
        let (mut looked_up, mut keys) = (Vec::new(), Vec::new());
        for (index, event) in events.into_iter().enumerate() {
            let Some(id) = event_id(event).filter(|id| id.len() <= MAX_EVENT_ID_BYTES) else {
                out.push(Dedupe::New);
                continue;
            };
            if let Some(&first) = seen.get(&id) {
                out.push(Dedupe::SameAs(first));
                continue;
            }
            out.push(Dedupe::New);
            looked_up.push(index);
            keys.push(key(topic, &id));
            seen.insert(id, index);
        }
        if keys.is_empty() {
            return Ok(out);
        }
        let values = self.meta.get_many(EVENT_IDS_COLLECTION, &keys).await?;
        for (index, value) in looked_up.into_iter().zip(values) {
            let recorded = value.and_then(|b| Recorded::decode(&b));
            if let Some(r) = recorded.filter(|r| within(window, r.time_ms, now)) {
                out[index] = Dedupe::Duplicate(r);
            }
        }
        Ok(out)
    }

    /// Remembers where the new events of a request landed (after the append succeeded), in one write, shared
    /// with the concurrent requests' records (group commit). Returns once they are durable.
    ///
    /// A crash between the append and this write forgets those ids, so one re-publish of them after the
    /// restart is appended again: the dedupe is best-effort across crashes, exact otherwise.
    pub async fn record_event_ids<'a>(
        &self,
        topic: &str,
        placed: impl IntoIterator<Item = (&'a str, u32, u64)>,
    ) -> Result<(), CatalogueError> {
        let now = self.now_ms();
        let writes: Vec<Write> = placed
            .into_iter()
            .filter_map(|(event, partition, offset)| {
                let id = event_id(event).filter(|id| id.len() <= MAX_EVENT_ID_BYTES)?;
                Some(Write {
                    collection: EVENT_IDS_COLLECTION,
                    key: key(topic, &id),
                    value: Some(Recorded { partition, offset, time_ms: now }.encode()),
                })
            })
            .collect();
        if !writes.is_empty() {
            self.ids.record(writes).await?;
        }
        Ok(())
    }

    /// Deletes `topic`'s remembered event ids older than its window; returns how many. Bounded per call.
    pub async fn prune_event_ids(
        &self,
        topic: &str,
        retention: Option<Duration>,
    ) -> Result<usize, CatalogueError> {
        let Some(window) = self.dedupe_window(retention) else { return Ok(0) };
        let now = self.now_ms();
        let entries = self.meta.scan(EVENT_IDS_COLLECTION, &format!("{topic}\0")).await?;
        let stale: Vec<Write> = entries
            .into_iter()
            .filter(|(_, v)| Recorded::decode(v).is_none_or(|r| !within(Some(window), r.time_ms, now)))
            .map(|(key, _)| Write { collection: EVENT_IDS_COLLECTION, key, value: None })
            .collect();
        let count = stale.len();
        for chunk in stale.chunks(1000) {
            self.meta.write(chunk.to_vec()).await?;
        }
        Ok(count)
    }
}

fn parse(topic: &str, bytes: &[u8]) -> Result<TopicSettings, CatalogueError> {
    serde_json::from_slice(bytes)
        .map_err(|e| CatalogueError::Corrupt { topic: topic.to_owned(), detail: e.to_string() })
}

async fn load_all(
    meta: &dyn MetaStore,
    schemas: &SchemaRegistry,
) -> Result<BTreeMap<String, Arc<TopicEntry>>, CatalogueError> {
    let mut cache = BTreeMap::new();
    for (topic, bytes) in meta.scan(CATALOGUE_COLLECTION, "").await? {
        let settings = parse(&topic, &bytes)?;
        cache.insert(topic, Arc::new(TopicEntry::new(settings, schemas)));
    }
    Ok(cache)
}

fn within(window: Option<Duration>, then_ms: i64, now_ms: i64) -> bool {
    match window {
        None => true,
        Some(w) => now_ms.saturating_sub(then_ms) <= i64::try_from(w.as_millis()).unwrap_or(i64::MAX),
    }
}

/// The errors-stream companion of `topic`.
pub fn errors_topic_name(topic: &str) -> String {
    format!("{topic}{ERRORS_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use async_trait::async_trait;
    use esgf_events_engine::ManualClock;

    /// An in-memory state store that counts the calls the dedupe makes, and can hold writes back (`gate`) or
    /// fail them, to see what the group commit combines.
    #[derive(Default)]
    struct Counting {
        map: Mutex<BTreeMap<(String, String), Bytes>>,
        gets: AtomicUsize,
        get_manys: AtomicUsize,
        writes_started: AtomicUsize,
        gate: tokio::sync::Mutex<()>,
        fail: AtomicBool,
        /// `write_parallelism`; 0 = the trait's default.
        parallelism: usize,
    }

    #[async_trait]
    impl MetaStore for Counting {
        fn write_parallelism(&self) -> usize {
            if self.parallelism == 0 { 1 } else { self.parallelism }
        }
        async fn get(&self, collection: &'static str, key: &str) -> Result<Option<Bytes>, MetaError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            Ok(self.map.lock().unwrap().get(&(collection.to_owned(), key.to_owned())).cloned())
        }
        async fn get_many(
            &self,
            collection: &'static str,
            keys: &[String],
        ) -> Result<Vec<Option<Bytes>>, MetaError> {
            self.get_manys.fetch_add(1, Ordering::SeqCst);
            let map = self.map.lock().unwrap();
            Ok(keys.iter().map(|k| map.get(&(collection.to_owned(), k.clone())).cloned()).collect())
        }
        async fn scan(&self, _: &'static str, _: &str) -> Result<Vec<(String, Bytes)>, MetaError> {
            Ok(Vec::new())
        }
        async fn write(&self, writes: Vec<Write>) -> Result<(), MetaError> {
            self.writes_started.fetch_add(1, Ordering::SeqCst);
            let _held = self.gate.lock().await;
            if self.fail.load(Ordering::SeqCst) {
                return Err(MetaError::Storage { context: "writing", detail: "disk full".into() });
            }
            let mut map = self.map.lock().unwrap();
            for w in writes {
                match w.value {
                    Some(v) => map.insert((w.collection.to_owned(), w.key), v),
                    None => map.remove(&(w.collection.to_owned(), w.key)),
                };
            }
            Ok(())
        }
        async fn compare_and_set(
            &self,
            _: &'static str,
            _: &str,
            _: Option<Bytes>,
            _: Option<Bytes>,
        ) -> Result<bool, MetaError> {
            Ok(false)
        }
        async fn append(&self, _: &'static str, _: Bytes) -> Result<u64, MetaError> {
            Ok(1)
        }
        async fn read_log(&self, _: &'static str, _: u64, _: usize) -> Result<Vec<(u64, Bytes)>, MetaError> {
            Ok(Vec::new())
        }
    }

    fn event(id: &str) -> String {
        format!(r#"{{"metadata":{{"event_id":"{id}"}}}}"#)
    }

    async fn open(store: &Arc<Counting>) -> Arc<Catalogue> {
        let meta: Arc<dyn MetaStore> = store.clone();
        Arc::new(Catalogue::open(meta, Arc::new(ManualClock::new(1_000)), None).await.unwrap())
    }

    /// Polls (yielding to the other tasks) until `ready`; a bound so a broken expectation fails, not hangs.
    async fn until(mut ready: impl FnMut() -> bool) {
        for _ in 0..100_000 {
            if ready() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("condition never became true");
    }

    #[tokio::test]
    async fn duplicates_are_found_with_one_lookup_per_request_within_a_batch_and_across_requests() {
        let store = Arc::new(Counting::default());
        let catalogue = open(&store).await;
        let (a, b, c) = (event("a"), event("b"), event("c"));
        let first = catalogue.find_duplicates("t", [&*a, &*b, &*a, "{}"], None).await.unwrap();
        assert_eq!(first, [Dedupe::New, Dedupe::New, Dedupe::SameAs(0), Dedupe::New]);
        catalogue.record_event_ids("t", [(&*a, 0, 7), (&*b, 1, 3)]).await.unwrap();

        let second = catalogue.find_duplicates("t", [&*c, &*b, &*a, &*c, &*b], None).await.unwrap();
        let at = |partition, offset| Dedupe::Duplicate(Recorded { partition, offset, time_ms: 1_000 });
        assert_eq!(second, [Dedupe::New, at(1, 3), at(0, 7), Dedupe::SameAs(0), Dedupe::SameAs(1)]);
        assert_eq!(store.get_manys.load(Ordering::SeqCst), 2, "one lookup per request");
        assert_eq!(store.gets.load(Ordering::SeqCst), 0, "never one key at a time");

        // A request without event ids looks nothing up.
        catalogue.find_duplicates("t", ["{}"], None).await.unwrap();
        assert_eq!(store.get_manys.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_id_records_are_combined_into_one_write_and_all_durable_when_answered() {
        let store = Arc::new(Counting::default());
        let catalogue = open(&store).await;
        let gate = store.gate.lock().await;
        let record = |n: usize| {
            let catalogue = Arc::clone(&catalogue);
            tokio::spawn(async move {
                catalogue.record_event_ids("t", [(&*event(&format!("e{n}")), 0, n as u64)]).await
            })
        };
        // The first request's write is under way (held at the gate) while the others queue up behind it.
        let first = record(0);
        until(|| store.writes_started.load(Ordering::SeqCst) == 1).await;
        let rest: Vec<_> = (1..8).map(record).collect();
        until(|| catalogue.ids.queued() == 7).await;
        assert!(!first.is_finished(), "not answered before its write is done");
        drop(gate);
        first.await.unwrap().unwrap();
        for handle in rest {
            handle.await.unwrap().unwrap();
        }
        assert_eq!(
            store.writes_started.load(Ordering::SeqCst),
            2,
            "the seven queued requests share one write"
        );
        let keys: Vec<String> = (0..8).map(|n| key("t", &format!("e{n}"))).collect();
        let stored = store.get_many(EVENT_IDS_COLLECTION, &keys).await.unwrap();
        for (n, value) in stored.iter().enumerate() {
            let recorded = value.as_ref().and_then(|v| Recorded::decode(v));
            assert_eq!(recorded, Some(Recorded { partition: 0, offset: n as u64, time_ms: 1_000 }), "e{n}");
        }
    }

    #[tokio::test]
    async fn a_store_with_parallel_writes_gets_that_many_groups_in_flight_and_the_rest_combined() {
        let store = Arc::new(Counting { parallelism: 2, ..Counting::default() });
        let catalogue = open(&store).await;
        let gate = store.gate.lock().await;
        let record = |n: usize| {
            let catalogue = Arc::clone(&catalogue);
            tokio::spawn(
                async move { catalogue.record_event_ids("t", [(&*event(&format!("e{n}")), 0, 0)]).await },
            )
        };
        let first = record(0);
        until(|| store.writes_started.load(Ordering::SeqCst) == 1).await;
        let second = record(1);
        until(|| store.writes_started.load(Ordering::SeqCst) == 2).await;
        // Both slots taken: these wait, and then share one write.
        let rest: Vec<_> = (2..6).map(record).collect();
        until(|| catalogue.ids.queued() == 4).await;
        drop(gate);
        for handle in [first, second].into_iter().chain(rest) {
            handle.await.unwrap().unwrap();
        }
        assert_eq!(store.writes_started.load(Ordering::SeqCst), 3);
        assert_eq!(store.map.lock().unwrap().len(), 6);
    }

    #[tokio::test]
    async fn a_failed_group_write_fails_every_request_of_the_group() {
        let store = Arc::new(Counting::default());
        let catalogue = open(&store).await;
        store.fail.store(true, Ordering::SeqCst);
        let gate = store.gate.lock().await;
        let record = |n: usize| {
            let catalogue = Arc::clone(&catalogue);
            tokio::spawn(
                async move { catalogue.record_event_ids("t", [(&*event(&format!("e{n}")), 0, 0)]).await },
            )
        };
        let first = record(0);
        until(|| store.writes_started.load(Ordering::SeqCst) == 1).await;
        let rest: Vec<_> = (1..4).map(record).collect();
        until(|| catalogue.ids.queued() == 3).await;
        drop(gate);
        assert!(matches!(first.await.unwrap(), Err(CatalogueError::Meta(_))));
        for handle in rest {
            assert!(matches!(handle.await.unwrap(), Err(CatalogueError::Meta(MetaError::Storage { .. }))));
        }
        assert_eq!(store.writes_started.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_larger_than_a_group_is_written_alone_and_groups_stay_bounded() {
        let store = Arc::new(Counting::default());
        let catalogue = open(&store).await;
        let gate = store.gate.lock().await;
        let events: Vec<String> = (0..MAX_GROUP_WRITES + 1).map(|n| event(&format!("big{n}"))).collect();
        let first = {
            let catalogue = Arc::clone(&catalogue);
            tokio::spawn(async move { catalogue.record_event_ids("t", [(&*event("x"), 0, 0)]).await })
        };
        until(|| store.writes_started.load(Ordering::SeqCst) == 1).await;
        let big = {
            let catalogue = Arc::clone(&catalogue);
            tokio::spawn(async move {
                catalogue.record_event_ids("t", events.iter().map(|e| (e.as_str(), 0, 0))).await
            })
        };
        let small = {
            let catalogue = Arc::clone(&catalogue);
            tokio::spawn(async move { catalogue.record_event_ids("t", [(&*event("y"), 0, 0)]).await })
        };
        until(|| catalogue.ids.queued() == 2).await;
        drop(gate);
        for handle in [first, big, small] {
            handle.await.unwrap().unwrap();
        }
        // The oversized request alone, then the small one that queued behind it.
        assert_eq!(store.writes_started.load(Ordering::SeqCst), 3);
        assert_eq!(store.map.lock().unwrap().len(), MAX_GROUP_WRITES + 3);
    }

    #[test]
    fn recorded_positions_round_trip_and_garbage_does_not_decode() {
        let r = Recorded { partition: 3, offset: 41, time_ms: -5 };
        assert_eq!(Recorded::decode(&r.encode()), Some(r));
        for bad in ["", "1 2", "1 2 3 4", "a b c"] {
            assert_eq!(Recorded::decode(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn window_none_is_forever() {
        assert!(within(None, 0, i64::MAX));
        assert!(within(Some(Duration::from_secs(1)), 0, 1000));
        assert!(!within(Some(Duration::from_secs(1)), 0, 1001));
    }

    #[test]
    fn refusal_messages_name_every_violation() {
        let refusal = PublishRefusal::Invalid {
            policy: ValidationPolicy::EsgfEnvelope,
            violations: vec![
                EventViolation { index: 0, pointer: "/data/type".into(), message: "must be \"STAC\"".into() },
                EventViolation { index: 2, pointer: "".into(), message: "not an object".into() },
            ],
        };
        let text = refusal.to_string();
        assert!(text.contains("event 0 at /data/type") && text.contains("event 2 at /:"), "{text}");
        let ro = PublishRefusal::ReadOnly { topic: "a".into(), successor: Some("b".into()) };
        assert_eq!(ro.to_string(), "topic a is read-only: it accepts no new events; publish to b instead");
    }
}
