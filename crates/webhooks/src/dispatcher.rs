//! The dispatcher: one task per active subscription, reading the log from the subscription's cursors and
//! POSTing each selected event to its URL.
//!
//! Guarantees:
//! - **Order**: one delivery in flight per subscription, so events of a partition arrive in offset order
//!   (partitions are served round-robin, a read batch at a time).
//! - **At least once**: a cursor moves past an event only once the receiver answered 2xx, or once the event is in
//!   the dead-letter list (both written in one transaction). Cursors are persisted in batches (every
//!   [`COMMIT_EVERY`] events or [`COMMIT_INTERVAL`], and whenever delivery goes idle, pauses or stops), so a crash
//!   re-delivers at most that much; receivers deduplicate on `webhook-id`, which is stable per event.
//! - **Retries**: exponential backoff with full jitter, or the receiver's `Retry-After` on 429/503, until
//!   `max_attempts` or `max_age`; then the event becomes a dead letter and delivery goes on with the next one.
//! - **Bounded**: one request in flight per subscription, a shared client with a small idle pool, response bodies
//!   read up to 64 KiB, subscriptions per principal and dead letters per subscription capped.
//!
//! Control operations ([`SubscriptionControl`]) are serialised by one lock; each one persists its change before
//! the in-memory state (and the tasks) follow.
//!
//! **Several nodes**: every node keeps a dispatcher, so any node answers the API, but only the *active* one
//! delivers (the one holding the `webhooks` lease, see [`Dispatcher::follow`]). The others are on standby: a
//! subscription created, paused, resumed or deleted through them is persisted and picked up by the active node
//! at its next [`Dispatcher::rescan`]; a redrive asked of them is left in the state store for the active node.
//! Activation reloads every cursor from the state store, so delivery continues where the previous owner last
//! committed: a takeover re-delivers at most one commit batch per subscription (at least once), never skips.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use esgf_events_engine::{LogStore, ReadLimits, Record, StoreError};
use esgf_events_envelope::Selector;
use esgf_events_meta::MetaStore;
use reqwest::Url;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, warn};

use crate::backoff;
use crate::delivery::{self, Message};
use crate::model::{
    Created, DeadLetter, DeliveryInfo, ErrorInfo, Format, NewSubscription, PartitionProgress, StartFrom,
    State, SubscriptionView, WebhookConfig, WebhookError,
};
use crate::persist::{Persist, Record as StoredRecord};
use crate::signing::WebhookSecret;
use crate::url_rules::{UrlPolicy, UrlRefused};

/// Cursor commits: after this many events passed...
pub const COMMIT_EVERY: usize = 100;
/// ...or this long after the first uncommitted one, whichever comes first.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Records per read of one partition.
const READ_LIMITS: ReadLimits = ReadLimits { max_records: 100, max_bytes: 4 << 20 };
/// How long an idle subscription waits on the log before looking again (a wake-up cuts it short).
const IDLE_WAIT: Duration = Duration::from_secs(30);
/// How often a subscription that cannot proceed (no grant, topic gone, dead letters full) checks again.
const RECHECK: Duration = Duration::from_secs(30);
/// Wait after a storage error before trying again.
const STORAGE_RETRY: Duration = Duration::from_secs(2);
/// How long pausing, deleting or shutting down waits for a task to finish its current step, beyond the
/// delivery timeout (an attempt in flight is allowed to finish).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Longest accepted URL and key prefix: they are stored and shown, not documents.
const MAX_URL_BYTES: usize = 2048;
const MAX_KEY_PREFIX_BYTES: usize = 1024;

/// Whether a principal may (still) read a topic. Checked when a subscription is created (by the API) and before
/// every read batch (here), so revoking a grant stops deliveries too.
pub trait AccessCheck: Send + Sync + 'static {
    fn may_read(&self, principal: &str, topic: &str) -> bool;
}

/// No access control (in-process tests and benchmarks).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl AccessCheck for AllowAll {
    fn may_read(&self, _: &str, _: &str) -> bool {
        true
    }
}

/// What the HTTP API needs of the dispatcher. Authorisation (who may see or change which subscription) is the
/// caller's business; `owner` is recorded as given.
#[async_trait]
pub trait SubscriptionControl: Send + Sync + 'static {
    /// Validates, persists and starts a subscription; the answer carries its secret, shown this once.
    async fn create(&self, owner: &str, request: NewSubscription) -> Result<Created, WebhookError>;
    /// Every subscription (`owner: None`) or one principal's, oldest first.
    async fn list(&self, owner: Option<&str>) -> Result<Vec<SubscriptionView>, WebhookError>;
    async fn get(&self, id: &str) -> Result<SubscriptionView, WebhookError>;
    /// Stops delivery (idempotent), after the attempt in flight if any (bounded by the delivery timeout).
    async fn pause(&self, id: &str) -> Result<SubscriptionView, WebhookError>;
    async fn resume(&self, id: &str) -> Result<SubscriptionView, WebhookError>;
    /// Stops delivery and forgets the subscription, its cursors and its dead letters.
    async fn delete(&self, id: &str) -> Result<(), WebhookError>;
    /// Dead letters with `seq > after`, oldest first, at most `limit`.
    async fn dead_letters(&self, id: &str, after: u64, limit: usize)
    -> Result<Vec<DeadLetter>, WebhookError>;
    /// Queues a redrive: every dead letter is delivered again, in order, before new events, and removed once
    /// delivered. Returns how many there are now. Refused while paused.
    async fn redrive(&self, id: &str) -> Result<usize, WebhookError>;
}

/// What every task shares.
struct Ctx {
    store: Arc<dyn LogStore>,
    persist: Persist,
    config: WebhookConfig,
    client: reqwest::Client,
    access: Arc<dyn AccessCheck>,
}

/// A subscription's compiled settings and live status, shared by the API and its task.
struct Shared {
    id: String,
    owner: String,
    topic: String,
    /// Checked against the current rules at start-up too: rules may have tightened since the subscription was made.
    url: Result<Url, UrlRefused>,
    secret: WebhookSecret,
    selector: Selector,
    format: Format,
    status: Mutex<Status>,
    /// Cuts idle waits short (redrive requests).
    wake: Notify,
}

#[derive(Debug, Default)]
struct Status {
    failing: bool,
    last_error: Option<ErrorInfo>,
    last_delivery: Option<DeliveryInfo>,
    /// Next offset to deliver, per partition (ahead of the persisted ones by at most one commit batch).
    cursors: Vec<u64>,
    dead_letters: usize,
    next_dead_seq: u64,
    redrive: bool,
}

impl Shared {
    fn status(&self) -> MutexGuard<'_, Status> {
        // A panic while holding this lock cannot leave the status inconsistent (plain field writes).
        self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One subscription. Control operations on it take `worker` (an async lock, held while a task stops, which can
/// take up to the delivery timeout); reads only take the short `record` lock, so they are never held up.
struct Entry {
    record: Mutex<StoredRecord>,
    shared: Arc<Shared>,
    worker: tokio::sync::Mutex<Option<Worker>>,
    /// Set by a delete, under `worker`: an operation that found the entry before it went sees it.
    deleted: AtomicBool,
}

impl Entry {
    fn new(record: StoredRecord, shared: Arc<Shared>, worker: Option<Worker>) -> Arc<Entry> {
        Arc::new(Entry {
            record: Mutex::new(record),
            shared,
            worker: tokio::sync::Mutex::new(worker),
            deleted: AtomicBool::new(false),
        })
    }

    fn record(&self) -> MutexGuard<'_, StoredRecord> {
        self.record.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct Worker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A dispatcher dropped without [`Dispatcher::shutdown`] takes its tasks with it, uncommitted cursors and all,
/// like a crash: their events are delivered again on the next start (at least once), never lost.
impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Delivers the webhooks of every subscription (see the module doc).
pub struct Dispatcher {
    ctx: Arc<Ctx>,
    policy: UrlPolicy,
    subs: RwLock<HashMap<String, Arc<Entry>>>,
    /// Serialises changes to the set of subscriptions and their tasks (creations, so two at once cannot both
    /// pass the per-owner limit; pause, resume, delete; rescans and activation), so a rescan never acts on a
    /// view a local change has overtaken. Taken before any entry's `worker` lock.
    creating: tokio::sync::Mutex<()>,
    closing: AtomicBool,
    /// Whether this dispatcher delivers (see the module doc).
    active: AtomicBool,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Loads every subscription from `meta` and starts delivering the active ones, without access re-checks.
    pub async fn start(
        store: Arc<dyn LogStore>,
        meta: Arc<dyn MetaStore>,
        config: WebhookConfig,
    ) -> Result<Dispatcher, WebhookError> {
        Self::start_with_access(store, meta, config, Arc::new(AllowAll)).await
    }

    /// [`Dispatcher::start`], checking before every read batch that the owner may still read the topic.
    pub async fn start_with_access(
        store: Arc<dyn LogStore>,
        meta: Arc<dyn MetaStore>,
        config: WebhookConfig,
        access: Arc<dyn AccessCheck>,
    ) -> Result<Dispatcher, WebhookError> {
        Self::open(store, meta, config, access, true).await
    }

    /// [`Dispatcher::start_with_access`] on standby: it answers the API but delivers nothing until
    /// [`Dispatcher::set_active`] (or [`Dispatcher::follow`]) makes it the delivering node.
    pub async fn standby(
        store: Arc<dyn LogStore>,
        meta: Arc<dyn MetaStore>,
        config: WebhookConfig,
        access: Arc<dyn AccessCheck>,
    ) -> Result<Dispatcher, WebhookError> {
        Self::open(store, meta, config, access, false).await
    }

    async fn open(
        store: Arc<dyn LogStore>,
        meta: Arc<dyn MetaStore>,
        config: WebhookConfig,
        access: Arc<dyn AccessCheck>,
        active: bool,
    ) -> Result<Dispatcher, WebhookError> {
        if config.max_attempts == 0 || config.timeout.is_zero() {
            return Err(WebhookError::Invalid(
                "max_attempts and timeout must be greater than zero".to_owned(),
            ));
        }
        let policy = UrlPolicy::new(&config.allow, &config.deny, &config.own_addresses)
            .map_err(|e| WebhookError::Invalid(format!("webhook URL rule {e}")))?;
        let client = delivery::client(&config, &policy)?;
        let persist = Persist::new(meta);
        let loaded = persist.load_all().await?;
        let ctx = Arc::new(Ctx { store, persist, config, client, access });
        let dispatcher = Dispatcher {
            ctx,
            policy,
            subs: RwLock::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            closing: AtomicBool::new(false),
            active: AtomicBool::new(active),
        };

        let mut entries = HashMap::new();
        let (mut running, mut paused) = (0usize, 0usize);
        for loaded in loaded {
            let mut cursors: Vec<u64> = loaded.cursors.iter().map(|c| c.unwrap_or(0)).collect();
            if let Ok(info) = dispatcher.ctx.store.describe_topic(&loaded.record.topic).await
                && cursors.len() < info.partitions as usize
            {
                // A partition without a cursor starts at its beginning (an out-of-range offset moves to earliest).
                cursors.resize(info.partitions as usize, 0);
            }
            let shared =
                dispatcher.shared(&loaded.record, cursors, loaded.dead_letters, loaded.next_dead_seq)?;
            if let Err(refused) = &shared.url {
                warn!(subscription = %loaded.record.id, error = %refused, "webhook URL is refused by the current rules; its delivery waits");
            }
            let worker = if loaded.record.paused {
                paused += 1;
                None
            } else {
                running += 1;
                dispatcher.spawn_if_active(&shared)
            };
            entries.insert(loaded.record.id.clone(), Entry::new(loaded.record, shared, worker));
        }
        *dispatcher.subs_mut() = entries;
        info!(active = running, paused, delivering = active, "webhook dispatcher started");
        Ok(dispatcher)
    }

    /// Whether this dispatcher delivers.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// Makes this dispatcher the delivering one (reloading every subscription and cursor from the state store
    /// first, since another node may have delivered meanwhile) or puts it on standby (every task stops after
    /// its attempt in flight and commits its cursors). Idempotent.
    pub async fn set_active(&self, active: bool) {
        let _creating = self.creating.lock().await;
        if self.closing.load(Ordering::SeqCst) {
            return;
        }
        let was = self.active.swap(active, Ordering::SeqCst);
        if active {
            if let Err(e) = self.reconcile().await {
                // The tasks of the subscriptions already known run; the next rescan retries the rest.
                warn!(error = %e, "reloading webhook subscriptions on activation failed");
            }
            if !was {
                info!("webhook delivery active on this node");
            }
            return;
        }
        let entries: Vec<(String, Arc<Entry>)> =
            self.subs().iter().map(|(id, e)| (id.clone(), Arc::clone(e))).collect();
        let mut workers = Vec::new();
        for (id, entry) in entries {
            if let Some(worker) = entry.worker.lock().await.take() {
                worker.stop.send_replace(true);
                workers.push((id, worker));
            }
        }
        let stopped = workers.len();
        for (id, worker) in workers {
            stop_worker(&id, worker, self.ctx.config.timeout).await;
        }
        if was {
            info!(stopped, "webhook delivery on standby on this node");
        }
    }

    /// Brings the in-memory subscriptions in line with the state store: subscriptions created, paused, resumed
    /// or deleted through another node; on the active node also starts and stops tasks accordingly and takes up
    /// redrive requests left by other nodes. Cheap enough to run every second or two.
    pub async fn rescan(&self) -> Result<(), WebhookError> {
        let _creating = self.creating.lock().await;
        if self.closing.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.reconcile().await
    }

    /// Keeps this dispatcher active exactly while `held` is true (the `webhooks` lease) and rescans every
    /// `rescan_every`, until `held`'s sender is gone. Run it as a task; [`Dispatcher::shutdown`] still stops it.
    pub async fn follow(self: Arc<Self>, mut held: watch::Receiver<bool>, rescan_every: Duration) {
        loop {
            let want = *held.borrow_and_update();
            if want != self.is_active() {
                self.set_active(want).await;
            }
            tokio::select! {
                changed = held.changed() => {
                    if changed.is_err() {
                        // The lease task ended (the node is stopping): deliver no more.
                        self.set_active(false).await;
                        return;
                    }
                }
                () = tokio::time::sleep(rescan_every) => {
                    if let Err(e) = self.rescan().await {
                        warn!(error = %e, "rescanning webhook subscriptions failed; will retry");
                    }
                }
            }
        }
    }

    /// The body of [`Dispatcher::rescan`]; the caller holds `creating`.
    async fn reconcile(&self) -> Result<(), WebhookError> {
        let records = self.ctx.persist.records().await?;
        let mut cursors = self.ctx.persist.all_cursors().await?;
        let active = self.is_active();
        let ids: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
        let gone: Vec<(String, Arc<Entry>)> = self
            .subs()
            .iter()
            .filter(|(id, _)| !ids.contains(id.as_str()))
            .map(|(id, e)| (id.clone(), Arc::clone(e)))
            .collect();
        for (id, entry) in gone {
            let mut worker = entry.worker.lock().await;
            let had_task = worker.is_some();
            if let Some(running) = worker.take() {
                stop_worker(&id, running, self.ctx.config.timeout).await;
            }
            entry.deleted.store(true, Ordering::SeqCst);
            self.subs_mut().remove(&id);
            if had_task {
                // The task's last commit may have written cursors after the delete: remove them again.
                if let Err(e) = self.ctx.persist.delete(&id).await {
                    warn!(subscription = %id, error = %e, "cleaning up a deleted subscription's cursors failed");
                }
            }
            info!(subscription = %id, "webhook subscription deleted through another node");
        }
        for record in records {
            let persisted = cursors.remove(&record.id).unwrap_or_default();
            let existing = self.subs().get(&record.id).cloned();
            let Some(entry) = existing else {
                self.adopt(record, persisted, active).await;
                continue;
            };
            let mut worker = entry.worker.lock().await;
            if entry.deleted.load(Ordering::SeqCst) {
                continue;
            }
            let paused = record.paused;
            if *entry.record() != record {
                *entry.record() = record;
            }
            if worker.is_some() {
                if !paused && active {
                    // Running here: its in-memory cursors are ahead of the persisted ones.
                    continue;
                }
                if let Some(running) = worker.take() {
                    stop_worker(&entry.shared.id, running, self.ctx.config.timeout).await;
                }
                entry.shared.status().failing = false;
                // The task's last commit made the persisted cursors equal the in-memory ones.
                continue;
            }
            // No task here: whoever delivers (another node, or nobody) persisted the truth.
            merge_cursors(&mut entry.shared.status().cursors, &persisted);
            if active && !paused {
                match self.ctx.persist.dead_letter_state(&entry.shared.id).await {
                    Ok((count, next_seq)) => {
                        let mut status = entry.shared.status();
                        status.dead_letters = count;
                        status.next_dead_seq = next_seq;
                    }
                    Err(e) => {
                        warn!(subscription = %entry.shared.id, error = %e, "reading dead letters failed; will retry");
                        continue;
                    }
                }
                *worker = Some(self.spawn(&entry.shared));
            }
        }
        if active {
            for id in self.ctx.persist.take_redrive_requests().await? {
                if let Some(entry) = self.subs().get(&id) {
                    entry.shared.status().redrive = true;
                    entry.shared.wake.notify_one();
                    info!(subscription = %id, "webhook redrive taken up from another node");
                }
            }
        }
        Ok(())
    }

    /// A subscription first seen in the state store (created through another node).
    async fn adopt(&self, record: StoredRecord, persisted: Vec<Option<u64>>, active: bool) {
        let id = record.id.clone();
        let (dead_letters, next_dead_seq) = match self.ctx.persist.dead_letter_state(&id).await {
            Ok(state) => state,
            Err(e) => {
                warn!(subscription = %id, error = %e, "reading dead letters failed; will retry");
                return;
            }
        };
        let mut cursors: Vec<u64> = persisted.iter().map(|c| c.unwrap_or(0)).collect();
        if let Ok(info) = self.ctx.store.describe_topic(&record.topic).await
            && cursors.len() < info.partitions as usize
        {
            cursors.resize(info.partitions as usize, 0);
        }
        let shared = match self.shared(&record, cursors, dead_letters, next_dead_seq) {
            Ok(shared) => shared,
            Err(e) => {
                warn!(subscription = %id, error = %e, "a webhook subscription in the state store is unusable");
                return;
            }
        };
        let worker = if active && !record.paused { Some(self.spawn(&shared)) } else { None };
        debug!(subscription = %id, delivering = worker.is_some(), "webhook subscription picked up from the state store");
        self.subs_mut().insert(id, Entry::new(record, shared, worker));
    }

    fn spawn_if_active(&self, shared: &Arc<Shared>) -> Option<Worker> {
        self.is_active().then(|| self.spawn(shared))
    }

    /// Stops every task (each commits its cursors first); afterwards every control operation is refused.
    pub async fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        // A creation in progress finishes (or sees `closing`) first, so no task is started after this point.
        let _creating = self.creating.lock().await;
        let entries: Vec<(String, Arc<Entry>)> =
            self.subs().iter().map(|(id, e)| (id.clone(), Arc::clone(e))).collect();
        let mut workers = Vec::with_capacity(entries.len());
        for (id, entry) in entries {
            if let Some(worker) = entry.worker.lock().await.take() {
                // Every task is told at once; they finish their attempts in flight side by side.
                worker.stop.send_replace(true);
                workers.push((id, worker));
            }
        }
        for (id, worker) in workers {
            stop_worker(&id, worker, self.ctx.config.timeout).await;
        }
        info!("webhook dispatcher stopped");
    }

    fn shared(
        &self,
        record: &StoredRecord,
        cursors: Vec<u64>,
        dead_letters: usize,
        next_dead_seq: u64,
    ) -> Result<Arc<Shared>, WebhookError> {
        let corrupt = |detail: String| WebhookError::Corrupt { key: record.id.clone(), detail };
        let secret = WebhookSecret::parse(&record.secret).map_err(|e| corrupt(e.to_string()))?;
        let selector =
            Selector::parse(record.filter.iter().map(String::as_str), record.key_prefix.as_deref())
                .map_err(|e| corrupt(e.to_string()))?;
        Ok(Arc::new(Shared {
            id: record.id.clone(),
            owner: record.owner.clone(),
            topic: record.topic.clone(),
            url: self.policy.check(&record.url),
            secret,
            selector,
            format: record.format,
            status: Mutex::new(Status { cursors, dead_letters, next_dead_seq, ..Status::default() }),
            wake: Notify::new(),
        }))
    }

    fn spawn(&self, shared: &Arc<Shared>) -> Worker {
        let (stop, stopped) = watch::channel(false);
        let cursors = shared.status().cursors.clone();
        let run = Run {
            ctx: Arc::clone(&self.ctx),
            shared: Arc::clone(shared),
            stop: stopped,
            dirty: vec![false; cursors.len()],
            cursors,
            pending: 0,
            since: None,
        };
        Worker { stop, task: tokio::spawn(run.run()) }
    }

    fn subs(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Entry>>> {
        // Map inserts and removes cannot be left half-done by a panic.
        self.subs.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn subs_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Entry>>> {
        self.subs.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn entry(&self, id: &str) -> Result<Arc<Entry>, WebhookError> {
        self.subs().get(id).cloned().ok_or_else(|| WebhookError::NotFound(id.to_owned()))
    }

    /// The entry's control lock, once no delete has removed it meanwhile and the dispatcher is still open.
    async fn control<'a>(
        &self,
        id: &str,
        entry: &'a Entry,
    ) -> Result<tokio::sync::MutexGuard<'a, Option<Worker>>, WebhookError> {
        let worker = entry.worker.lock().await;
        if entry.deleted.load(Ordering::SeqCst) {
            return Err(WebhookError::NotFound(id.to_owned()));
        }
        self.check_open()?;
        Ok(worker)
    }

    fn check_open(&self) -> Result<(), WebhookError> {
        if self.closing.load(Ordering::SeqCst) { Err(WebhookError::ShuttingDown) } else { Ok(()) }
    }

    async fn view(&self, record: &StoredRecord, shared: &Shared) -> SubscriptionView {
        let (state, last_error, last_delivery, cursors, dead_letters, redriving) = {
            let status = shared.status();
            let state = if record.paused {
                State::Paused
            } else if status.failing {
                State::Failing
            } else {
                State::Active
            };
            (
                state,
                status.last_error.clone(),
                status.last_delivery.clone(),
                status.cursors.clone(),
                status.dead_letters,
                status.redrive,
            )
        };
        let mut partitions = Vec::with_capacity(cursors.len());
        for (partition, cursor) in (0u32..).zip(cursors) {
            // A topic deleted under the subscription has no offsets: show no lag rather than fail the listing.
            let latest = match self.ctx.store.offsets(&record.topic, partition).await {
                Ok(offsets) => offsets.latest,
                Err(_) => cursor,
            };
            partitions.push(PartitionProgress {
                partition,
                cursor,
                latest,
                lag: latest.saturating_sub(cursor),
            });
        }
        SubscriptionView {
            id: record.id.clone(),
            owner: record.owner.clone(),
            topic: record.topic.clone(),
            url: record.url.clone(),
            filter: record.filter.clone(),
            key_prefix: record.key_prefix.clone(),
            format: record.format,
            from: record.from.clone(),
            created: rfc3339(record.created_ms),
            state,
            last_error,
            last_delivery,
            lag: partitions.iter().map(|p| p.lag).sum(),
            partitions,
            dead_letters,
            redriving,
        }
    }

    /// A snapshot of one entry, so views are built without holding the lock.
    fn snapshot(&self, id: &str) -> Result<(StoredRecord, Arc<Shared>), WebhookError> {
        let entry = self.entry(id)?;
        let record = entry.record().clone();
        Ok((record, Arc::clone(&entry.shared)))
    }

    async fn starting_cursors(&self, topic: &str, from: StartFrom) -> Result<Vec<u64>, WebhookError> {
        let info = self.ctx.store.describe_topic(topic).await?;
        let mut cursors = Vec::with_capacity(info.partitions as usize);
        for partition in 0..info.partitions {
            let offsets = self.ctx.store.offsets(topic, partition).await?;
            cursors.push(match from {
                StartFrom::Beginning => offsets.earliest,
                StartFrom::Latest => offsets.latest,
                StartFrom::Time(ms) => {
                    self.ctx.store.offset_for_timestamp(topic, partition, ms).await?.unwrap_or(offsets.latest)
                }
            });
        }
        Ok(cursors)
    }
}

/// Takes persisted cursors where there are any; partitions the store knows nothing of keep theirs.
fn merge_cursors(cursors: &mut Vec<u64>, persisted: &[Option<u64>]) {
    if cursors.len() < persisted.len() {
        cursors.resize(persisted.len(), 0);
    }
    for (cursor, stored) in cursors.iter_mut().zip(persisted) {
        if let Some(stored) = stored {
            *cursor = *stored;
        }
    }
}

async fn stop_worker(id: &str, mut worker: Worker, attempt_timeout: Duration) {
    worker.stop.send_replace(true);
    if tokio::time::timeout(attempt_timeout + STOP_GRACE, &mut worker.task).await.is_err() {
        warn!(subscription = %id, "webhook task did not stop in time; aborting it");
        worker.task.abort();
    }
}

fn new_id() -> Result<String, WebhookError> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| crate::signing::SecretError::Random(e.to_string()))?;
    let mut id = String::with_capacity(4 + 24);
    id.push_str("sub_");
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    Ok(id)
}

fn rfc3339(ms: i64) -> String {
    esgf_events_envelope::rfc3339_millis(ms)
}

fn now_rfc3339() -> String {
    rfc3339(chrono::Utc::now().timestamp_millis())
}

#[async_trait]
impl SubscriptionControl for Dispatcher {
    async fn create(&self, owner: &str, request: NewSubscription) -> Result<Created, WebhookError> {
        self.check_open()?;
        esgf_events_engine::validate_topic_name(&request.topic)?;
        if request.url.len() > MAX_URL_BYTES {
            return Err(WebhookError::Invalid(format!("the URL is longer than {MAX_URL_BYTES} bytes")));
        }
        self.policy.check(&request.url)?;
        if request.key_prefix.as_ref().is_some_and(|p| p.len() > MAX_KEY_PREFIX_BYTES) {
            return Err(WebhookError::Invalid(format!(
                "key_prefix is longer than {MAX_KEY_PREFIX_BYTES} bytes"
            )));
        }
        Selector::parse(request.filter.iter().map(String::as_str), request.key_prefix.as_deref())
            .map_err(|e| WebhookError::Invalid(e.to_string()))?;
        let from_text = request.from.clone().unwrap_or_else(|| "latest".to_owned());
        let from = StartFrom::parse(&from_text).map_err(WebhookError::Invalid)?;
        let cursors = self.starting_cursors(&request.topic, from).await?;

        let secret = WebhookSecret::generate()?;
        let record = StoredRecord {
            id: new_id()?,
            owner: owner.to_owned(),
            topic: request.topic,
            url: request.url,
            filter: request.filter,
            key_prefix: request.key_prefix,
            format: request.format.unwrap_or_default(),
            from: from_text,
            created_ms: chrono::Utc::now().timestamp_millis(),
            paused: false,
            secret: secret.expose().to_owned(),
        };

        let _creating = self.creating.lock().await;
        self.check_open()?;
        let max = self.ctx.config.max_subscriptions_per_owner;
        if self.subs().values().filter(|e| e.record().owner == owner).count() >= max {
            return Err(WebhookError::Limit { owner: owner.to_owned(), max });
        }
        let shared = self.shared(&record, cursors.clone(), 0, 1)?;
        self.ctx.persist.create(&record, &cursors).await?;
        let worker = self.spawn_if_active(&shared);
        info!(
            subscription = %record.id, owner, topic = %record.topic,
            host = shared.url.as_ref().ok().and_then(|u| u.host_str()).unwrap_or(""),
            from = %record.from, "webhook subscription created"
        );
        let entry = Entry::new(record.clone(), Arc::clone(&shared), worker);
        self.subs_mut().insert(record.id.clone(), entry);
        Ok(Created { subscription: self.view(&record, &shared).await, secret })
    }

    async fn list(&self, owner: Option<&str>) -> Result<Vec<SubscriptionView>, WebhookError> {
        let mut snapshots: Vec<(StoredRecord, Arc<Shared>)> = self
            .subs()
            .values()
            .map(|e| (e.record().clone(), Arc::clone(&e.shared)))
            .filter(|(record, _)| owner.is_none_or(|o| record.owner == o))
            .collect();
        snapshots.sort_by(|(a, _), (b, _)| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        let mut views = Vec::with_capacity(snapshots.len());
        for (record, shared) in &snapshots {
            views.push(self.view(record, shared).await);
        }
        Ok(views)
    }

    async fn get(&self, id: &str) -> Result<SubscriptionView, WebhookError> {
        let (record, shared) = self.snapshot(id)?;
        Ok(self.view(&record, &shared).await)
    }

    async fn pause(&self, id: &str) -> Result<SubscriptionView, WebhookError> {
        let creating = self.creating.lock().await;
        let entry = self.entry(id)?;
        let mut worker = self.control(id, &entry).await?;
        let paused = entry.record().paused;
        if !paused {
            let mut record = entry.record().clone();
            record.paused = true;
            self.ctx.persist.save(&record).await?;
            *entry.record() = record;
            if let Some(running) = worker.take() {
                stop_worker(id, running, self.ctx.config.timeout).await;
            }
            entry.shared.status().failing = false;
            info!(subscription = %id, "webhook subscription paused");
        }
        drop(worker);
        drop(creating);
        let record = entry.record().clone();
        Ok(self.view(&record, &entry.shared).await)
    }

    async fn resume(&self, id: &str) -> Result<SubscriptionView, WebhookError> {
        let creating = self.creating.lock().await;
        let entry = self.entry(id)?;
        let mut worker = self.control(id, &entry).await?;
        let paused = entry.record().paused;
        if paused {
            let mut record = entry.record().clone();
            record.paused = false;
            self.ctx.persist.save(&record).await?;
            *entry.record() = record;
            *worker = self.spawn_if_active(&entry.shared);
            info!(subscription = %id, "webhook subscription resumed");
        }
        drop(worker);
        drop(creating);
        let record = entry.record().clone();
        Ok(self.view(&record, &entry.shared).await)
    }

    async fn delete(&self, id: &str) -> Result<(), WebhookError> {
        let _creating = self.creating.lock().await;
        let entry = self.entry(id)?;
        let mut worker = self.control(id, &entry).await?;
        // The task goes first: its last cursor commit must not land after the delete.
        if let Some(running) = worker.take() {
            stop_worker(id, running, self.ctx.config.timeout).await;
        }
        if let Err(e) = self.ctx.persist.delete(id).await {
            let paused = entry.record().paused;
            if !paused {
                *worker = self.spawn_if_active(&entry.shared);
            }
            return Err(e);
        }
        entry.deleted.store(true, Ordering::SeqCst);
        self.subs_mut().remove(id);
        info!(subscription = %id, "webhook subscription deleted");
        Ok(())
    }

    async fn dead_letters(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, WebhookError> {
        self.snapshot(id)?;
        self.ctx.persist.dead_letters(id, after, limit).await
    }

    async fn redrive(&self, id: &str) -> Result<usize, WebhookError> {
        self.check_open()?;
        let (record, shared) = self.snapshot(id)?;
        if record.paused {
            return Err(WebhookError::Paused(id.to_owned()));
        }
        if !self.is_active() {
            // Another node delivers: leave the request where it looks.
            self.ctx.persist.request_redrive(id).await?;
            let count = shared.status().dead_letters;
            info!(subscription = %id, dead_letters = count, "webhook redrive queued for the delivering node");
            return Ok(count);
        }
        let count = {
            let mut status = shared.status();
            status.redrive = true;
            status.dead_letters
        };
        shared.wake.notify_one();
        info!(subscription = %id, dead_letters = count, "webhook redrive queued");
        Ok(count)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// One subscription's task
// ---------------------------------------------------------------------------------------------------------------

/// How a delivery loop step ended.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    /// Something was delivered, skipped or waited on: look again.
    Progress,
    /// Nothing to deliver right now.
    Idle,
    /// Stop was requested.
    Stop,
}

/// The outcome of delivering one event, retries included.
enum Attempts {
    Delivered { status: u16, attempts: u32 },
    GaveUp { message: String, attempts: u32 },
    Stop,
}

struct Run {
    ctx: Arc<Ctx>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    cursors: Vec<u64>,
    /// Partitions whose cursor moved since the last commit.
    dirty: Vec<bool>,
    /// Events passed since the last commit.
    pending: usize,
    /// When the oldest uncommitted move happened.
    since: Option<Instant>,
}

/// Resolves once stop is requested (or the dispatcher is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

impl Run {
    async fn run(mut self) {
        debug!(subscription = %self.shared.id, "webhook task started");
        self.deliver_loop().await;
        self.commit().await;
        debug!(subscription = %self.shared.id, "webhook task stopped");
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    /// Waits for `timeout` (forever if `None`), a wake-up or stop; true if stop.
    async fn park(&self, timeout: Option<Duration>) -> bool {
        let mut stop = self.stop.clone();
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => false,
            () = self.shared.wake.notified() => false,
            () = stopped(&mut stop) => true,
        }
    }

    fn note_error(&self, webhook_id: Option<&str>, attempt: u32, message: String) {
        let mut status = self.shared.status();
        status.failing = true;
        status.last_error = Some(ErrorInfo {
            time: now_rfc3339(),
            webhook_id: webhook_id.map(str::to_owned),
            attempt,
            message,
        });
    }

    async fn deliver_loop(&mut self) {
        if let Err(refused) = &self.shared.url {
            self.note_error(None, 0, refused.to_string());
            // Nothing to do until the subscription is paused, deleted or the service stops.
            while !self.park(None).await {}
            return;
        }
        loop {
            if self.stopping() {
                return;
            }
            if !self.ctx.access.may_read(&self.shared.owner, &self.shared.topic) {
                let message = format!(
                    "'{}' may no longer read topic '{}': delivery resumes once the grant is back",
                    self.shared.owner, self.shared.topic
                );
                warn!(subscription = %self.shared.id, "{message}");
                self.note_error(None, 0, message);
                self.commit().await;
                if self.park(Some(RECHECK)).await {
                    return;
                }
                continue;
            }
            let (redrive, full) = {
                let mut status = self.shared.status();
                let redrive = std::mem::take(&mut status.redrive);
                (redrive, status.dead_letters >= self.ctx.config.max_dead_letters)
            };
            if redrive {
                if self.redrive().await {
                    return;
                }
                continue;
            }
            if full {
                let message = format!(
                    "the dead-letter list is full ({} events): redrive or delete it to go on",
                    self.ctx.config.max_dead_letters
                );
                self.note_error(None, 0, message);
                self.commit().await;
                if self.park(Some(RECHECK)).await {
                    return;
                }
                continue;
            }
            match self.deliver_available().await {
                Flow::Stop => return,
                Flow::Progress => self.commit_if_due().await,
                Flow::Idle => {
                    self.commit().await;
                    self.shared.status().failing = false;
                    if self.wait_for_records().await {
                        return;
                    }
                }
            }
        }
    }

    /// One read batch per partition, each selected event delivered in order.
    async fn deliver_available(&mut self) -> Flow {
        let mut progressed = false;
        for partition in 0..self.cursors.len() {
            let p = partition as u32;
            let offset = self.cursors[partition];
            let mut stop = self.stop.clone();
            let read = tokio::select! {
                read = self.ctx.store.read(&self.shared.topic, p, offset, READ_LIMITS) => read,
                () = stopped(&mut stop) => return Flow::Stop,
            };
            let batch = match read {
                Ok(batch) => batch,
                Err(StoreError::OffsetOutOfRange { earliest, latest, .. }) => {
                    let to = if offset < earliest { earliest } else { latest };
                    warn!(
                        subscription = %self.shared.id, partition = p, from = offset, to,
                        "cursor outside the partition (events expired by retention, or the topic was recreated): moving it"
                    );
                    self.advance(partition, to, true);
                    progressed = true;
                    continue;
                }
                Err(err) => {
                    let gone =
                        matches!(err, StoreError::TopicNotFound(_) | StoreError::PartitionNotFound { .. });
                    self.note_error(None, 0, format!("cannot read topic '{}': {err}", self.shared.topic));
                    let wait = if gone { RECHECK } else { STORAGE_RETRY };
                    return if self.park(Some(wait)).await { Flow::Stop } else { Flow::Progress };
                }
            };
            let next = batch.next_offset;
            for record in batch.records {
                if !self.shared.selector.matches(record.key.as_deref(), &record.value) {
                    self.advance(partition, record.offset + 1, false);
                    progressed = true;
                    continue;
                }
                if !self.deliver(partition, &record).await {
                    return Flow::Stop;
                }
                progressed = true;
                self.commit_if_due().await;
                let interrupt = {
                    let status = self.shared.status();
                    status.redrive || status.dead_letters >= self.ctx.config.max_dead_letters
                };
                if interrupt {
                    return Flow::Progress;
                }
            }
            if next > self.cursors[partition] {
                self.advance(partition, next, false);
            }
        }
        if progressed { Flow::Progress } else { Flow::Idle }
    }

    /// Moves a partition's cursor forward; `commit_now` marks a move worth persisting at once.
    fn advance(&mut self, partition: usize, to: u64, commit_now: bool) {
        if to <= self.cursors[partition] {
            return;
        }
        self.cursors[partition] = to;
        self.dirty[partition] = true;
        self.pending += if commit_now { COMMIT_EVERY } else { 1 };
        self.since.get_or_insert_with(Instant::now);
        if let Some(cursor) = self.shared.status().cursors.get_mut(partition) {
            *cursor = to;
        }
    }

    async fn commit_if_due(&mut self) {
        if self.pending >= COMMIT_EVERY || self.since.is_some_and(|t| t.elapsed() >= COMMIT_INTERVAL) {
            self.commit().await;
        }
    }

    /// Persists the cursors that moved; on failure they stay dirty for the next commit.
    async fn commit(&mut self) {
        let moved: Vec<(u32, u64)> = (0u32..)
            .zip(self.cursors.iter().zip(&self.dirty))
            .filter(|(_, (_, dirty))| **dirty)
            .map(|(p, (cursor, _))| (p, *cursor))
            .collect();
        if moved.is_empty() {
            return;
        }
        match self.ctx.persist.commit_cursors(&self.shared.id, &moved).await {
            Ok(()) => {
                self.dirty.iter_mut().for_each(|d| *d = false);
                self.pending = 0;
                self.since = None;
            }
            Err(err) => {
                error!(subscription = %self.shared.id, error = %err, "cannot persist webhook cursors; will retry");
            }
        }
    }

    /// Delivers one event, retrying; a final failure makes it a dead letter. False if stop was requested.
    async fn deliver(&mut self, partition: usize, record: &Record) -> bool {
        let p = partition as u32;
        let webhook_id = format!("{}-{p}-{}", self.shared.topic, record.offset);
        match self.attempts(p, record, &webhook_id).await {
            Attempts::Stop => false,
            Attempts::Delivered { status, attempts } => {
                metrics::counter!("esgf_events_webhook_deliveries_total", "outcome" => "delivered")
                    .increment(1);
                self.delivered(&webhook_id, status, attempts);
                self.advance(partition, record.offset + 1, false);
                true
            }
            Attempts::GaveUp { message, attempts } => {
                let seq = self.shared.status().next_dead_seq;
                let letter = DeadLetter {
                    seq,
                    partition: p,
                    offset: record.offset,
                    webhook_id: webhook_id.clone(),
                    failed_at: now_rfc3339(),
                    attempts,
                    last_error: message,
                };
                loop {
                    match self
                        .ctx
                        .persist
                        .add_dead_letter(&self.shared.id, &letter, (p, record.offset + 1))
                        .await
                    {
                        Ok(()) => break,
                        Err(err) => {
                            error!(subscription = %self.shared.id, error = %err, "cannot store a dead letter; will retry");
                            if self.park(Some(STORAGE_RETRY)).await {
                                return false;
                            }
                        }
                    }
                }
                warn!(
                    subscription = %self.shared.id, webhook_id, attempts, error = %letter.last_error,
                    "webhook delivery failed for good: event moved to the dead-letter list"
                );
                metrics::counter!("esgf_events_webhook_dead_letters_total").increment(1);
                {
                    let mut status = self.shared.status();
                    status.dead_letters += 1;
                    status.next_dead_seq = seq + 1;
                }
                // The dead letter's transaction persisted this cursor already.
                let other_moves = self.dirty.iter().enumerate().any(|(i, d)| *d && i != partition);
                self.advance(partition, record.offset + 1, false);
                self.dirty[partition] = false;
                if !other_moves {
                    self.pending = 0;
                    self.since = None;
                }
                true
            }
        }
    }

    fn delivered(&self, webhook_id: &str, status: u16, attempts: u32) {
        let mut s = self.shared.status();
        s.failing = false;
        s.last_delivery =
            Some(DeliveryInfo { time: now_rfc3339(), webhook_id: webhook_id.to_owned(), status, attempts });
    }

    /// Attempts one event until it is delivered, retries run out, or stop.
    async fn attempts(&self, partition: u32, record: &Record, webhook_id: &str) -> Attempts {
        let Ok(url) = &self.shared.url else {
            return Attempts::Stop;
        };
        let (body, content_type): (Bytes, &'static str) = delivery::render(
            self.shared.format,
            &self.shared.topic,
            partition,
            record.offset,
            record.timestamp_ms,
            &record.value,
        );
        let message = Message { url, secret: &self.shared.secret, webhook_id, body: &body, content_type };
        let config = &self.ctx.config;
        let started = Instant::now();
        let mut stop = self.stop.clone();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // Not interrupted by stop: an attempt ends within the timeout anyway, and letting it finish means a
            // receiver that accepted the event is not sent it again after a pause or a restart.
            let result = delivery::attempt(&self.ctx.client, config.timeout, &message).await;
            let failure = match result {
                Ok(status) => return Attempts::Delivered { status: status.as_u16(), attempts: attempt },
                Err(failure) => failure,
            };
            debug!(subscription = %self.shared.id, webhook_id, attempt, error = %failure.message, "webhook attempt failed");
            self.note_error(Some(webhook_id), attempt, failure.message.clone());
            if attempt >= config.max_attempts {
                return Attempts::GaveUp { message: failure.message, attempts: attempt };
            }
            let wait = match failure.retry_after {
                Some(asked) => asked.min(config.backoff_cap),
                None => backoff::delay(attempt, config.backoff_base, config.backoff_cap, fastrand::f64()),
            };
            if started.elapsed() + wait >= config.max_age {
                return Attempts::GaveUp {
                    message: format!("{} (gave up: retrying would exceed max_age)", failure.message),
                    attempts: attempt,
                };
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stopped(&mut stop) => return Attempts::Stop,
            }
        }
    }

    /// Delivers the dead letters again, oldest first, removing each once delivered; stops at the first that
    /// fails for good (it stays, with its new error). True if stop was requested.
    async fn redrive(&mut self) -> bool {
        let id = self.shared.id.clone();
        let letters = match self.ctx.persist.dead_letters(&id, 0, usize::MAX).await {
            Ok(letters) => letters,
            Err(err) => {
                self.note_error(None, 0, format!("cannot read the dead letters: {err}"));
                self.shared.status().redrive = true;
                return self.park(Some(STORAGE_RETRY)).await;
            }
        };
        info!(subscription = %id, dead_letters = letters.len(), "redriving dead letters");
        for mut letter in letters {
            let read = self
                .ctx
                .store
                .read(
                    &self.shared.topic,
                    letter.partition,
                    letter.offset,
                    ReadLimits { max_records: 1, max_bytes: 1 },
                )
                .await;
            let record = match read {
                Ok(batch) => batch.records.into_iter().next().filter(|r| r.offset == letter.offset),
                Err(StoreError::OffsetOutOfRange { .. }) => None,
                Err(err) => {
                    self.note_error(
                        None,
                        0,
                        format!("redrive cannot read topic '{}': {err}", self.shared.topic),
                    );
                    self.shared.status().redrive = true;
                    return self.park(Some(STORAGE_RETRY)).await;
                }
            };
            let outcome = match &record {
                Some(record) => self.attempts(letter.partition, record, &letter.webhook_id).await,
                None => {
                    warn!(subscription = %id, webhook_id = %letter.webhook_id, "dead letter no longer in the log (retention): dropping it");
                    Attempts::Delivered { status: 0, attempts: 0 }
                }
            };
            match outcome {
                Attempts::Stop => {
                    self.shared.status().redrive = true;
                    return true;
                }
                Attempts::Delivered { status, attempts } => {
                    if let Err(err) = self.ctx.persist.remove_dead_letter(&id, letter.seq).await {
                        error!(subscription = %id, error = %err, "cannot remove a redriven dead letter; redrive stopped");
                        return false;
                    }
                    self.shared.status().dead_letters -= 1;
                    if record.is_some() {
                        self.delivered(&letter.webhook_id, status, attempts);
                    }
                }
                Attempts::GaveUp { message, attempts } => {
                    letter.attempts = letter.attempts.saturating_add(attempts);
                    letter.last_error = message;
                    letter.failed_at = now_rfc3339();
                    if let Err(err) = self.ctx.persist.update_dead_letter(&id, &letter).await {
                        error!(subscription = %id, error = %err, "cannot update a dead letter");
                    }
                    warn!(subscription = %id, webhook_id = %letter.webhook_id, "redrive stopped: the event failed again");
                    return false;
                }
            }
        }
        false
    }

    /// Waits until any partition has a record at its cursor, a wake-up, or stop; true if stop.
    async fn wait_for_records(&self) -> bool {
        let mut stop = self.stop.clone();
        let mut waits = JoinSet::new();
        for (partition, cursor) in (0u32..).zip(&self.cursors) {
            let store = Arc::clone(&self.ctx.store);
            let topic = self.shared.topic.clone();
            let cursor = *cursor;
            waits.spawn(async move { store.wait_for(&topic, partition, cursor, IDLE_WAIT).await });
        }
        let waited = tokio::select! {
            result = waits.join_next() => match result {
                Some(Ok(Ok(_))) | None => true,
                // The store refused (topic gone, shutting down): the next read reports it; do not spin.
                Some(Ok(Err(_)) | Err(_)) => false,
            },
            () = self.shared.wake.notified() => true,
            () = stopped(&mut stop) => return true,
        };
        // Dropping the set aborts the other partitions' waits.
        drop(waits);
        if !waited {
            return self.park(Some(STORAGE_RETRY)).await;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_random_hex() {
        let id = new_id().expect("random");
        assert!(id.starts_with("sub_") && id.len() == 28, "{id}");
        assert!(id[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(new_id().expect("random"), id);
    }
}
