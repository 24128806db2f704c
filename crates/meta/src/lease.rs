//! Leases and the node registry: how several stateless service nodes sharing one [`MetaStore`] agree that work
//! which must happen once (webhook delivery, mail, retention, topic lifecycle, Kafka group coordination) runs on
//! exactly one of them, and how another node takes that work over when the owner dies.
//!
//! A lease is one record in collection [`LEASES`]: owner node id, epoch, expiry (wall-clock ms). Every change is a
//! [`MetaStore::compare_and_set`] against the exact bytes last seen, so two nodes can never both win: a node
//! takes an absent or expired lease with `epoch + 1` and renews the one it holds (same epoch) every
//! `renew_every`. The epoch grows on every change of hands, so work tagged with it can be fenced.
//!
//! Expiry is compared on wall clocks of different nodes, so those clocks must agree to well within the ttl
//! (NTP). The holder itself does not trust the wall clock: it considers the lease lost a safety margin before
//! `ttl` has passed on its monotonic clock since the start of its last successful write, even if the store is
//! unreachable and it cannot learn anything newer.
//!
//! The node registry ([`NODES`]) is a heartbeat record per node (its HTTP URL and Kafka address), so operators
//! and the Kafka coordinator can find live nodes. Records use a tiny text encoding: this crate knows no JSON.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{MetaError, MetaStore};

/// The collection holding leases: lease name -> [`LeaseRecord`].
pub const LEASES: &str = "leases";
/// The collection holding node heartbeats: node id -> [`NodeInfo`].
pub const NODES: &str = "nodes";

/// Node records not refreshed for this long are deleted by any live node, so crashed nodes do not pile up.
const NODE_RECORD_RETENTION_MS: i64 = 60 * 60 * 1000;
/// Longest pause between two looks at a lease held by another node, so a released lease is taken promptly.
const RELEASE_POLL: Duration = Duration::from_secs(1);
/// How many heartbeats pass between two sweeps of stale node records.
const PRUNE_EVERY_BEATS: u64 = 100;

/// Who holds a lease, since when it changed hands (`epoch`) and until when (`expires_ms`, ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub owner: String,
    pub epoch: u64,
    pub expires_ms: i64,
}

/// How long a lease lasts without renewal and how often its holder renews it (`renew_every` < `ttl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    pub ttl: Duration,
    pub renew_every: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig { ttl: Duration::from_secs(10), renew_every: Duration::from_secs(3) }
    }
}

impl LeaseConfig {
    /// Checks that renewals come well before expiry: at least two renewal attempts fit into one ttl.
    pub fn validate(&self) -> Result<(), String> {
        if self.renew_every.is_zero() || self.ttl.is_zero() {
            return Err("lease ttl and renew interval must be positive".into());
        }
        if self.renew_every * 2 > self.ttl {
            return Err(format!(
                "lease renew interval ({:?}) must be at most half the lease ttl ({:?})",
                self.renew_every, self.ttl
            ));
        }
        Ok(())
    }

    /// The holder gives a lease up this much before its ttl runs out, to absorb clock skew between nodes and
    /// the time a renewal write takes.
    fn safety_margin(&self) -> Duration {
        self.ttl / 10
    }

    /// Backstop for any single store call, so a hung call cannot keep a lease "held" past its validity.
    fn call_timeout(&self) -> Duration {
        self.renew_every.max(Duration::from_millis(100))
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

// Encoding: `epoch \n expires_ms \n owner`; the owner comes last so any node id round-trips unescaped.
fn encode_lease(r: &LeaseRecord) -> Bytes {
    Bytes::from(format!("{}\n{}\n{}", r.epoch, r.expires_ms, r.owner))
}

fn decode_lease(raw: &[u8]) -> Option<LeaseRecord> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut parts = text.splitn(3, '\n');
    let epoch = parts.next()?.parse().ok()?;
    let expires_ms = parts.next()?.parse().ok()?;
    let owner = parts.next()?.to_owned();
    Some(LeaseRecord { owner, epoch, expires_ms })
}

/// This node's side of every lease: acquires, renews and releases them in background tasks.
pub struct Leases {
    meta: Arc<dyn MetaStore>,
    node_id: String,
    config: LeaseConfig,
    /// The local state of every lease this instance was asked to hold (for operators).
    held: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// The hold tasks, so shutdown can wait for their releases.
    tasks: Tasks,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases").field("node_id", &self.node_id).field("config", &self.config).finish()
    }
}

/// The lease as this node last wrote it.
struct Held {
    bytes: Bytes,
    epoch: u64,
    /// Monotonic instant after which this node must assume it lost the lease.
    valid_until: Instant,
}

enum Step {
    /// Try again right away (a race was lost or our own late write was found).
    Again,
    /// Wait this long before the next attempt.
    Wait(Duration),
}

impl Leases {
    pub fn new(meta: Arc<dyn MetaStore>, node_id: impl Into<String>, config: LeaseConfig) -> Arc<Self> {
        Arc::new(Leases {
            meta,
            node_id: node_id.into(),
            config,
            held: Mutex::new(HashMap::new()),
            tasks: Tasks::default(),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn config(&self) -> LeaseConfig {
        self.config
    }

    /// Spawns a task that tries to acquire `name` and renews it every `renew_every` while held; the returned
    /// receiver is `true` exactly while this node holds the lease. It turns false as soon as a renewal finds the
    /// lease taken, or when the lease's validity runs out without a successful renewal, and at `stop`; on stop
    /// the lease is released (its record rewritten as expired, keeping the epoch) so another node takes over
    /// at its next look (within `renew_every`).
    ///
    /// Hold each name once per node: a second `hold` of the same name races the first one for the same record.
    pub fn hold(self: &Arc<Self>, name: &str, stop: watch::Receiver<bool>) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        if let Ok(mut held) = self.held.lock() {
            held.insert(name.to_owned(), rx.clone());
        }
        let this = self.clone();
        let name = name.to_owned();
        self.tasks.push(tokio::spawn(async move { this.run(name, tx, stop).await }));
        rx
    }

    /// Waits (at most `within`) until every hold task has ended, i.e. after their `stop` released the leases,
    /// so a stopping node hands its work over before it exits. Returns whether all ended in time.
    pub async fn stopped(&self, within: Duration) -> bool {
        self.tasks.join(within).await
    }

    /// Whether this node currently holds `name` (as far as its own `hold` task knows).
    pub fn is_held(&self, name: &str) -> bool {
        self.held.lock().ok().and_then(|h| h.get(name).map(|rx| *rx.borrow())).unwrap_or(false)
    }

    /// The current unexpired holder, if any.
    pub async fn owner(&self, name: &str) -> Result<Option<LeaseRecord>, MetaError> {
        let raw = self.meta.get(LEASES, name).await?;
        let now = now_ms();
        Ok(raw.and_then(|r| decode_lease(&r)).filter(|r| r.expires_ms > now))
    }

    /// Every lease record in the store, expired ones included (for operators), in name order.
    pub async fn all(&self) -> Result<Vec<(String, LeaseRecord)>, MetaError> {
        let entries = self.meta.scan(LEASES, "").await?;
        Ok(entries.into_iter().filter_map(|(k, v)| decode_lease(&v).map(|r| (k, r))).collect())
    }

    async fn run(self: Arc<Self>, name: String, tx: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        let mut held: Option<Held> = None;
        // Set once another process was seen holding this lease under our own node id (two processes configured
        // with one id): from then on such a record is waited out like a foreign one instead of being taken
        // straight back, which would make the two processes steal it from each other forever.
        let mut twin_seen = false;
        loop {
            if *stop.borrow() {
                break;
            }
            let step = match held.take() {
                None => self.try_acquire(&name, &mut held, twin_seen).await,
                Some(h) => self.renew(&name, h, &mut held, &mut twin_seen).await,
            };
            let _ = tx.send_if_modified(|v| {
                let now_held = held.is_some();
                std::mem::replace(v, now_held) != now_held
            });
            let wait = match step {
                Step::Again => continue,
                Step::Wait(d) => d,
            };
            let deadline = Instant::now() + wait;
            let wake_at = match &held {
                Some(h) => deadline.min(h.valid_until),
                None => deadline,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = stop.changed() => {}
            }
            if let Some(h) = &held
                && Instant::now() >= h.valid_until
            {
                tracing::warn!(lease = %name, node = %self.node_id, epoch = h.epoch, "lease validity ran out before a renewal succeeded; giving it up");
                held = None;
                tx.send_replace(false);
            }
        }
        tx.send_replace(false);
        if let Some(h) = held {
            // Released by expiring it rather than deleting it: the next holder then continues the epoch count
            // (epoch + 1), so epochs never repeat.
            let expired = LeaseRecord { owner: self.node_id.clone(), epoch: h.epoch, expires_ms: 0 };
            let released = tokio::time::timeout(
                self.config.call_timeout(),
                self.meta.compare_and_set(LEASES, &name, Some(h.bytes), Some(encode_lease(&expired))),
            )
            .await;
            match released {
                Ok(Ok(true)) => {
                    tracing::info!(lease = %name, node = %self.node_id, epoch = h.epoch, "lease released")
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(lease = %name, error = %e, "could not release lease; it expires on its own")
                }
                Err(_) => tracing::warn!(lease = %name, "releasing lease timed out; it expires on its own"),
            }
        }
    }

    async fn try_acquire(&self, name: &str, held: &mut Option<Held>, twin_seen: bool) -> Step {
        let poll = self.config.renew_every;
        let raw = match tokio::time::timeout(self.config.call_timeout(), self.meta.get(LEASES, name)).await {
            Ok(Ok(raw)) => raw,
            Ok(Err(e)) => {
                tracing::warn!(lease = %name, error = %e, "reading lease failed");
                return Step::Wait(poll);
            }
            Err(_) => {
                tracing::warn!(lease = %name, "reading lease timed out");
                return Step::Wait(poll);
            }
        };
        let now = now_ms();
        let current = raw.as_deref().map(decode_lease);
        let epoch = match &current {
            None => 1,
            Some(None) => {
                // Unreadable record: nothing can hold it meaningfully, so take it over; the epoch restarts, which
                // only matters to fencing, and a corrupt record already broke that.
                tracing::warn!(lease = %name, "lease record is unreadable; taking it over");
                1
            }
            Some(Some(r)) if r.expires_ms <= now => r.epoch + 1,
            // Our own id but not held by this task: left by a previous run of this node (crash, restart), so
            // there is no need to wait for its expiry.
            Some(Some(r)) if r.owner == self.node_id && !twin_seen => r.epoch + 1,
            Some(Some(r)) => {
                // Held by someone else: look again at its expiry, or sooner (at most a second apart: one small
                // read) to notice a release, which is what makes a clean hand-over quick.
                let until_expiry = Duration::from_millis(u64::try_from(r.expires_ms - now).unwrap_or(0) + 1);
                return Step::Wait(poll.min(RELEASE_POLL).min(until_expiry));
            }
        };
        let started = Instant::now();
        let record =
            LeaseRecord { owner: self.node_id.clone(), epoch, expires_ms: now + ms(self.config.ttl) };
        let bytes = encode_lease(&record);
        let cas = self.meta.compare_and_set(LEASES, name, raw, Some(bytes.clone()));
        match tokio::time::timeout(self.config.call_timeout(), cas).await {
            Ok(Ok(true)) => {
                tracing::info!(lease = %name, node = %self.node_id, epoch, "lease acquired");
                *held = Some(Held { bytes, epoch, valid_until: self.valid_until(started) });
                Step::Wait(self.config.renew_every)
            }
            // Another node changed the record between our read and write: read again.
            Ok(Ok(false)) => Step::Again,
            Ok(Err(e)) => {
                tracing::warn!(lease = %name, error = %e, "acquiring lease failed");
                Step::Wait(poll)
            }
            Err(_) => {
                // The write may still land; the next read shows it as ours and takes it over cleanly.
                tracing::warn!(lease = %name, "acquiring lease timed out");
                Step::Wait(poll)
            }
        }
    }

    async fn renew(&self, name: &str, h: Held, held: &mut Option<Held>, twin_seen: &mut bool) -> Step {
        let retry = (self.config.renew_every / 4).max(Duration::from_millis(20));
        let started = Instant::now();
        if started >= h.valid_until {
            return Step::Again;
        }
        let record = LeaseRecord {
            owner: self.node_id.clone(),
            epoch: h.epoch,
            expires_ms: now_ms() + ms(self.config.ttl),
        };
        let bytes = encode_lease(&record);
        let budget = (h.valid_until - started).min(self.config.call_timeout());
        let cas = self.meta.compare_and_set(LEASES, name, Some(h.bytes.clone()), Some(bytes.clone()));
        match tokio::time::timeout(budget, cas).await {
            Ok(Ok(true)) => {
                *held = Some(Held { bytes, epoch: h.epoch, valid_until: self.valid_until(started) });
                Step::Wait(self.config.renew_every)
            }
            Ok(Ok(false)) => {
                let current = self.meta.get(LEASES, name).await.ok().flatten();
                match current.as_deref().and_then(decode_lease) {
                    // An earlier renewal of ours that timed out landed after all: carry on from it, keeping the
                    // validity of the last write we know the start time of.
                    Some(r) if r.owner == self.node_id && r.epoch == h.epoch => {
                        *held = Some(Held { bytes: current.unwrap_or_default(), ..h });
                        Step::Again
                    }
                    Some(r) => {
                        if r.owner == self.node_id {
                            *twin_seen = true;
                            tracing::error!(lease = %name, node = %self.node_id, epoch = r.epoch, "another process holds this lease under the same node id; node ids must be unique");
                        } else {
                            tracing::warn!(lease = %name, node = %self.node_id, new_owner = %r.owner, epoch = r.epoch, "lease lost to another node");
                        }
                        Step::Wait(self.config.renew_every)
                    }
                    None => {
                        tracing::warn!(lease = %name, node = %self.node_id, "lease record vanished while held");
                        Step::Again
                    }
                }
            }
            Ok(Err(e)) => {
                // Still ours until its validity runs out: retry soon rather than give the work up on one blip.
                tracing::warn!(lease = %name, error = %e, "renewing lease failed; retrying");
                *held = Some(h);
                Step::Wait(retry)
            }
            Err(_) => {
                tracing::warn!(lease = %name, "renewing lease timed out; retrying");
                *held = Some(h);
                Step::Wait(retry)
            }
        }
    }

    fn valid_until(&self, write_started: Instant) -> Instant {
        write_started + self.config.ttl - self.config.safety_margin()
    }
}

/// One service node as announced in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    /// Base URL of the node's HTTP API, as other nodes and clients reach it.
    pub http_url: Option<String>,
    /// Kafka advertised host and port, when the node serves Kafka.
    pub kafka_host: Option<String>,
    pub kafka_port: Option<u16>,
    /// Last heartbeat, ms since the Unix epoch.
    pub seen_ms: i64,
}

// Encoding: `seen_ms \n kafka_port \n http_url \n kafka_host \n id` with empty fields for None; newlines are
// stripped from the URL and host (they cannot be valid there), the id comes last so it round-trips unescaped.
fn encode_node(n: &NodeInfo) -> Bytes {
    let clean = |s: &Option<String>| s.as_deref().unwrap_or("").replace(['\n', '\r'], "");
    let port = n.kafka_port.map(|p| p.to_string()).unwrap_or_default();
    Bytes::from(format!(
        "{}\n{}\n{}\n{}\n{}",
        n.seen_ms,
        port,
        clean(&n.http_url),
        clean(&n.kafka_host),
        n.id
    ))
}

fn decode_node(raw: &[u8]) -> Option<NodeInfo> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut parts = text.splitn(5, '\n');
    let seen_ms = parts.next()?.parse().ok()?;
    let port = parts.next()?;
    let kafka_port = if port.is_empty() { None } else { Some(port.parse().ok()?) };
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let http_url = opt(parts.next()?);
    let kafka_host = opt(parts.next()?);
    let id = parts.next()?.to_owned();
    Some(NodeInfo { id, http_url, kafka_host, kafka_port, seen_ms })
}

/// The registry of live service nodes.
pub struct Nodes {
    meta: Arc<dyn MetaStore>,
    config: LeaseConfig,
    /// The heartbeat tasks, so shutdown can wait for the record's removal.
    tasks: Tasks,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nodes").field("config", &self.config).finish()
    }
}

impl Nodes {
    pub fn new(meta: Arc<dyn MetaStore>, config: LeaseConfig) -> Arc<Self> {
        Arc::new(Nodes { meta, config, tasks: Tasks::default() })
    }

    /// Spawns a heartbeat task writing `info` (seen_ms = now) every `renew_every` until `stop`, then deletes it.
    pub fn announce(self: &Arc<Self>, info: NodeInfo, mut stop: watch::Receiver<bool>) {
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut beats: u64 = 0;
            loop {
                if *stop.borrow() {
                    break;
                }
                let record = NodeInfo { seen_ms: now_ms(), ..info.clone() };
                let put = this.meta.put(NODES, &info.id, encode_node(&record));
                match tokio::time::timeout(this.config.call_timeout(), put).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(node = %info.id, error = %e, "node heartbeat failed"),
                    Err(_) => tracing::warn!(node = %info.id, "node heartbeat timed out"),
                }
                if beats.is_multiple_of(PRUNE_EVERY_BEATS) {
                    this.prune_stale().await;
                }
                beats += 1;
                tokio::select! {
                    _ = tokio::time::sleep(this.config.renew_every) => {}
                    _ = stop.changed() => {}
                }
            }
            let delete = this.meta.delete(NODES, &info.id);
            if let Ok(Err(e)) = tokio::time::timeout(this.config.call_timeout(), delete).await {
                tracing::warn!(node = %info.id, error = %e, "could not remove node record on shutdown");
            }
        });
        self.tasks.push(task);
    }

    /// Waits (at most `within`) until every heartbeat task has ended after its `stop`, its record removed.
    pub async fn stopped(&self, within: Duration) -> bool {
        self.tasks.join(within).await
    }

    /// Nodes seen within `ttl`, ordered by id.
    pub async fn live(&self) -> Result<Vec<NodeInfo>, MetaError> {
        let oldest = now_ms() - ms(self.config.ttl);
        let entries = self.meta.scan(NODES, "").await?;
        Ok(entries.into_iter().filter_map(|(_, v)| decode_node(&v)).filter(|n| n.seen_ms >= oldest).collect())
    }

    /// The last record `id` announced, however old (compare `seen_ms` to judge liveness).
    pub async fn get(&self, id: &str) -> Result<Option<NodeInfo>, MetaError> {
        Ok(self.meta.get(NODES, id).await?.and_then(|v| decode_node(&v)))
    }

    /// Deletes records of nodes gone for an hour; compare-and-set, so a node that comes back meanwhile stays.
    async fn prune_stale(&self) {
        let oldest = now_ms() - NODE_RECORD_RETENTION_MS;
        let Ok(entries) = self.meta.scan(NODES, "").await else { return };
        for (key, value) in entries {
            let stale = decode_node(&value).is_none_or(|n| n.seen_ms < oldest);
            if stale {
                let _ = self.meta.compare_and_set(NODES, &key, Some(value), None).await;
            }
        }
    }
}

/// Background tasks a stopping node waits for (bounded), so their last writes land before it exits.
#[derive(Default)]
struct Tasks(Mutex<Vec<JoinHandle<()>>>);

impl Tasks {
    /// Keeps `task`, dropping the handles of tasks already finished so the list stays bounded.
    fn push(&self, task: JoinHandle<()>) {
        if let Ok(mut tasks) = self.0.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
    }

    /// Waits (at most `within`) until every task kept so far has ended; whether all did in time.
    async fn join(&self, within: Duration) -> bool {
        let tasks = self.0.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        tokio::time::timeout(within, all).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{MemoryMetaStore, Severable};

    /// An in-memory store whose calls can be made to fail, to model an unreachable backend.
    type MemMeta = Severable<MemoryMetaStore>;

    fn short() -> LeaseConfig {
        LeaseConfig { ttl: Duration::from_millis(300), renew_every: Duration::from_millis(50) }
    }

    /// Waits (bounded) until the receiver shows `want`.
    async fn until(rx: &mut watch::Receiver<bool>, want: bool, within: Duration) {
        tokio::time::timeout(within, rx.wait_for(|v| *v == want))
            .await
            .unwrap_or_else(|_| panic!("lease state did not become {want} within {within:?}"))
            .expect("lease task ended");
    }

    #[test]
    fn records_round_trip_and_garbage_is_rejected() {
        let r = LeaseRecord { owner: "east-1\nodd".into(), epoch: 7, expires_ms: 1_700_000_000_000 };
        assert_eq!(decode_lease(&encode_lease(&r)), Some(r));
        let n = NodeInfo {
            id: "west-2".into(),
            http_url: Some("http://10.0.0.2:8080".into()),
            kafka_host: None,
            kafka_port: Some(9092),
            seen_ms: 5,
        };
        assert_eq!(decode_node(&encode_node(&n)), Some(n));
        for bad in [&b""[..], b"x\n1\nn", b"1\n", &[0xff, 0xfe]] {
            assert_eq!(decode_lease(bad), None);
            assert_eq!(decode_node(bad), None);
        }
    }

    #[test]
    fn config_requires_renewals_well_within_the_ttl() {
        assert!(LeaseConfig::default().validate().is_ok());
        let bad = LeaseConfig { ttl: Duration::from_secs(4), renew_every: Duration::from_secs(3) };
        assert!(bad.validate().is_err());
    }

    #[tokio::test]
    async fn a_free_lease_is_acquired_and_renewed_with_the_same_epoch() {
        let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::default());
        let leases = Leases::new(meta.clone(), "a", short());
        let (_stop_tx, stop) = watch::channel(false);
        let mut rx = leases.hold("webhooks", stop);
        until(&mut rx, true, Duration::from_secs(2)).await;
        let first = leases.owner("webhooks").await.unwrap().expect("held");
        assert_eq!((first.owner.as_str(), first.epoch), ("a", 1));
        assert!(leases.is_held("webhooks"));
        // Outlive the ttl several times over: renewals keep it, at the same epoch, with a later expiry.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(*rx.borrow());
        let later = leases.owner("webhooks").await.unwrap().expect("still held");
        assert_eq!((later.owner.as_str(), later.epoch), ("a", 1));
        assert!(later.expires_ms > first.expires_ms);
    }

    #[tokio::test]
    async fn another_node_cannot_take_an_unexpired_lease_but_takes_it_after_expiry_with_a_new_epoch() {
        let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::default());
        // A record left by node "a" that nobody renews: a crashed holder.
        let crashed = LeaseRecord { owner: "a".into(), epoch: 4, expires_ms: now_ms() + 300 };
        meta.put(LEASES, "mail", encode_lease(&crashed)).await.unwrap();
        let b = Leases::new(meta.clone(), "b", short());
        let (_stop_tx, stop) = watch::channel(false);
        let mut rx = b.hold("mail", stop);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!*rx.borrow(), "took an unexpired lease");
        assert_eq!(b.owner("mail").await.unwrap().map(|r| r.owner), Some("a".into()));
        until(&mut rx, true, Duration::from_secs(2)).await;
        let now = b.owner("mail").await.unwrap().expect("held");
        assert_eq!((now.owner.as_str(), now.epoch), ("b", 5));
    }

    #[tokio::test]
    async fn a_live_holder_keeps_the_lease_against_a_contender() {
        let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::default());
        let a = Leases::new(meta.clone(), "a", short());
        let b = Leases::new(meta.clone(), "b", short());
        let (_stop_tx, stop) = watch::channel(false);
        let mut ra = a.hold("retention", stop.clone());
        until(&mut ra, true, Duration::from_secs(2)).await;
        let rb = b.hold("retention", stop);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(*ra.borrow() && !*rb.borrow());
        assert_eq!(a.owner("retention").await.unwrap().map(|r| (r.owner, r.epoch)), Some(("a".into(), 1)));
    }

    #[tokio::test]
    async fn stopping_the_holder_releases_the_lease_and_another_node_takes_it_at_once() {
        let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::default());
        // Long ttl: a takeover within the test's bound can only come from the release, not from expiry.
        let config = LeaseConfig { ttl: Duration::from_secs(30), renew_every: Duration::from_millis(50) };
        let a = Leases::new(meta.clone(), "a", config);
        let b = Leases::new(meta.clone(), "b", config);
        let (stop_a_tx, stop_a) = watch::channel(false);
        let (_stop_b_tx, stop_b) = watch::channel(false);
        let mut ra = a.hold("lifecycle", stop_a);
        until(&mut ra, true, Duration::from_secs(2)).await;
        let mut rb = b.hold("lifecycle", stop_b);
        stop_a_tx.send_replace(true);
        assert!(a.stopped(Duration::from_secs(2)).await, "hold task did not end on stop");
        assert!(!*ra.borrow());
        assert_ne!(a.owner("lifecycle").await.unwrap().map(|r| r.owner), Some("a".into()), "not released");
        until(&mut rb, true, Duration::from_secs(2)).await;
        // The epoch goes on counting across a release.
        assert_eq!(b.owner("lifecycle").await.unwrap().map(|r| (r.owner, r.epoch)), Some(("b".into(), 2)));
    }

    #[tokio::test]
    async fn a_holder_that_cannot_reach_the_store_gives_the_lease_up_before_it_expires() {
        let mem = Arc::new(MemMeta::default());
        let meta: Arc<dyn MetaStore> = mem.clone();
        let a = Leases::new(meta.clone(), "a", short());
        let (_stop_tx, stop) = watch::channel(false);
        let mut ra = a.hold("webhooks", stop);
        until(&mut ra, true, Duration::from_secs(2)).await;
        mem.sever(true);
        let cut = std::time::Instant::now();
        until(&mut ra, false, Duration::from_secs(2)).await;
        assert!(cut.elapsed() < short().ttl, "still claimed the lease after the ttl: {:?}", cut.elapsed());
        // Once the store is back the node takes the lease again, as a new epoch.
        mem.sever(false);
        until(&mut ra, true, Duration::from_secs(2)).await;
        assert_eq!(a.owner("webhooks").await.unwrap().map(|r| r.epoch), Some(2));
    }

    #[tokio::test]
    async fn a_restarted_node_takes_back_its_own_lease_without_waiting_for_expiry() {
        let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::default());
        let left = LeaseRecord { owner: "a".into(), epoch: 2, expires_ms: now_ms() + 60_000 };
        meta.put(LEASES, "mail", encode_lease(&left)).await.unwrap();
        let a = Leases::new(meta.clone(), "a", short());
        let (_stop_tx, stop) = watch::channel(false);
        let mut ra = a.hold("mail", stop);
        until(&mut ra, true, Duration::from_secs(2)).await;
        assert_eq!(a.owner("mail").await.unwrap().map(|r| r.epoch), Some(3));
    }

    #[tokio::test]
    async fn a_lease_taken_away_turns_the_holder_false_at_its_next_renewal() {
        let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::default());
        let a = Leases::new(meta.clone(), "a", short());
        let (_stop_tx, stop) = watch::channel(false);
        let mut ra = a.hold("webhooks", stop);
        until(&mut ra, true, Duration::from_secs(2)).await;
        // An operator (or a node that believed the lease expired) overwrites it.
        let theirs = LeaseRecord { owner: "b".into(), epoch: 9, expires_ms: now_ms() + 60_000 };
        meta.put(LEASES, "webhooks", encode_lease(&theirs)).await.unwrap();
        until(&mut ra, false, Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn nodes_announce_themselves_and_leave_on_stop() {
        let meta: Arc<dyn MetaStore> = Arc::new(MemMeta::default());
        let nodes = Nodes::new(meta.clone(), short());
        // A node that stopped heartbeating long ago is not live.
        let gone =
            NodeInfo { id: "0-old".into(), http_url: None, kafka_host: None, kafka_port: None, seen_ms: 1 };
        meta.put(NODES, "0-old", encode_node(&gone)).await.unwrap();
        let (stop_tx, stop) = watch::channel(false);
        let info = NodeInfo {
            id: "east-1".into(),
            http_url: Some("http://127.0.0.1:8080".into()),
            kafka_host: Some("127.0.0.1".into()),
            kafka_port: Some(9092),
            seen_ms: 0,
        };
        nodes.announce(info.clone(), stop);
        let deadline = Instant::now() + Duration::from_secs(2);
        let live = loop {
            let live = nodes.live().await.unwrap();
            // The first heartbeat also sweeps records of nodes gone for long.
            let pruned = nodes.get("0-old").await.unwrap().is_none();
            if (!live.is_empty() && pruned) || Instant::now() > deadline {
                break live;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(live.len(), 1);
        assert_eq!(NodeInfo { seen_ms: 0, ..live[0].clone() }, info);
        assert!(nodes.get("0-old").await.unwrap().is_none(), "stale record not pruned");
        stop_tx.send_replace(true);
        assert!(nodes.stopped(Duration::from_secs(2)).await, "heartbeat task did not end on stop");
        assert!(nodes.get("east-1").await.unwrap().is_none(), "node record not removed on stop");
    }
}
