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

mod settings;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use esgf_events_engine::Clock;
use esgf_events_envelope::{SchemaRegistry, ValidationPolicy, Violation, event_id, validate};
use esgf_events_meta::changelog::{ChangeEntry, record_change};
use esgf_events_meta::{MetaError, MetaStore, Write};

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
            meta,
            clock,
            schemas,
            dedupe_window,
            cache: RwLock::new(cache),
            writes: tokio::sync::Mutex::new(()),
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
    /// before anything is appended.
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
        for (index, event) in events.into_iter().enumerate() {
            let Some(id) = event_id(event).filter(|id| id.len() <= MAX_EVENT_ID_BYTES) else {
                out.push(Dedupe::New);
                continue;
            };
            if let Some(&first) = seen.get(&id) {
                out.push(Dedupe::SameAs(first));
                continue;
            }
            let recorded = self
                .meta
                .get(EVENT_IDS_COLLECTION, &key(topic, &id))
                .await?
                .and_then(|b| Recorded::decode(&b));
            let live = recorded.filter(|r| within(window, r.time_ms, now));
            out.push(match live {
                Some(r) => Dedupe::Duplicate(r),
                None => Dedupe::New,
            });
            seen.insert(id, index);
        }
        Ok(out)
    }

    /// Remembers where the new events of a request landed (after the append succeeded), in one write.
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
            self.meta.write(writes).await?;
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
