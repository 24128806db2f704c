//! [`JetStreamMeta`]: the service's state store (principals, topic ACLs, consumer offsets, webhook state, the
//! audit log) on JetStream.
//!
//! Layout: every collection lives in ONE key-value bucket, [`META_BUCKET`], under `<collection>.<key>` (the
//! key encoded as `k` + base64url, so any string is a valid KV key). One bucket rather than one per
//! collection because `MetaStore::write` is atomic across collections and callers rely on it (a webhook's
//! dead letter and its cursor move together; a subscription is created with its cursors), and JetStream's
//! atomic batch publish is atomic within one stream only. A multi-entry `write` is therefore one atomic batch
//! on the bucket's stream: all entries or none, never a part.
//!
//! `compare_and_set` is a conditional publish on the key's subject (`Nats-Expected-Last-Subject-Sequence` =
//! the revision just read), retried while other writers move the key.
//!
//! Logs (`append`/`read_log`) are streams `ESGF_LOG_<name>`; an entry's sequence number is its stream
//! sequence, dense because these streams have no limits and deny deletes and purges. Each append carries a
//! `Nats-Msg-Id`, so a retry after a lost acknowledgement is recognised as a duplicate (within the stream's
//! two-minute window) instead of being stored twice.
//!
//! [`MetaStore::watch`] follows the bucket's keys of the named collections with one background task per
//! call (an ordered consumer filtered to those collections, ended when the last receiver is dropped; see
//! `watch.rs`), so every service node's caches follow changes made through any other node. Log appends are
//! not reported.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, RetentionPolicy, StorageType};
use async_trait::async_trait;
use bytes::Bytes;
use esgf_events_meta::{Change, MetaError, MetaStore, WATCH_CAPACITY, Write};
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::{Mutex, broadcast};

use crate::api::{self, Js, JsError, OutMsg, code};
use crate::codec;
use crate::config::NatsConfig;
use crate::kv::{self, Bucket, Op};
use crate::watch::{self, Seen};

/// The bucket holding every collection.
pub const META_BUCKET: &str = "esgf_meta";

/// Keys fetched concurrently by a scan.
const SCAN_CONCURRENCY: usize = 16;
/// Writes worth having in flight at once (see [`MetaStore::write_parallelism`]): each is a replicated round
/// trip, and they overlap. High, because combining small writes does not pay here: an atomic batch of N keys
/// costs the server more than N single-key writes in flight together (`bench --suite backends`, 16 clients
/// publishing single events: ~20 % fewer events/s with 4 in flight and the rest grouped). The bound keeps a
/// burst from putting unlimited requests on the connection.
const WRITE_PARALLELISM: usize = 64;
/// Keys fetched concurrently by a `get_many` (a publish's event-id lookup): each is a round trip, so overlap
/// them, but bounded so one large batch cannot flood the connection.
const GET_MANY_CONCURRENCY: usize = 32;

/// The state store on a NATS JetStream cluster. Cheap to clone.
#[derive(Clone)]
pub struct JetStreamMeta {
    inner: Arc<Inner>,
}

struct Inner {
    js: Js,
    bucket: Bucket,
    config: NatsConfig,
    /// Log streams known to exist.
    logs: Mutex<HashSet<&'static str>>,
}

fn storage(context: &'static str) -> impl FnOnce(JsError) -> MetaError {
    move |e| MetaError::Storage { context, detail: e.to_string() }
}

fn check_name(kind: &'static str, name: &str) -> Result<(), MetaError> {
    if codec::is_plain_name(name) {
        Ok(())
    } else {
        Err(MetaError::Storage {
            context: kind,
            detail: format!("{name:?} is not a valid name here: use 1 to 64 of [A-Za-z0-9_-]"),
        })
    }
}

fn path(collection: &str, key: &str) -> String {
    format!("{collection}.{}", codec::encode_kv_key(key))
}

/// The change a bucket path stands for; `None` for a path this store never writes.
fn change_at(path: &str) -> Option<Change> {
    let (collection, token) = path.split_once('.')?;
    let key = codec::decode_kv_key(token)?;
    codec::is_plain_name(collection).then(|| Change::Key { collection: collection.to_owned(), key })
}

fn log_stream(log: &str) -> String {
    format!("ESGF_LOG_{log}")
}

fn log_subject(log: &str) -> String {
    format!("esgf.metalog.{log}")
}

impl JetStreamMeta {
    /// Opens the state store on an established connection (see [`crate::connect`]), creating its bucket on
    /// the cluster's first start.
    pub async fn open(client: async_nats::Client, config: NatsConfig) -> Result<JetStreamMeta, MetaError> {
        if config.replicas == 0 {
            return Err(MetaError::Storage {
                context: "opening",
                detail: "replicas must be at least 1".into(),
            });
        }
        api::check_server_version(&client)
            .map_err(|detail| MetaError::Storage { context: "connecting to NATS", detail })?;
        let js = Js::new(client, config.request_timeout);
        let bucket = api::retry(config.operation_timeout, "open state bucket", || {
            Bucket::open(js.clone(), META_BUCKET, config.replicas)
        })
        .await
        .map_err(storage("opening the state bucket"))?;
        Ok(JetStreamMeta { inner: Arc::new(Inner { js, bucket, config, logs: Mutex::new(HashSet::new()) }) })
    }
}

impl Inner {
    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, JsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, JsError>>,
    {
        api::retry(self.config.operation_timeout, what, op).await
    }

    fn log_config(&self, log: &str) -> StreamConfig {
        StreamConfig {
            name: log_stream(log),
            description: Some(format!("ESGF Event Service state: log {log}")),
            subjects: vec![log_subject(log)],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: self.config.replicas,
            discard: DiscardPolicy::Old,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            max_consumers: -1,
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        }
    }

    async fn ensure_log(&self, log: &'static str) -> Result<(), MetaError> {
        let mut known = self.logs.lock().await;
        if known.contains(log) {
            return Ok(());
        }
        let config = self.log_config(log);
        self.retry("create log", || kv::ensure_stream(&self.js, &config))
            .await
            .map_err(storage("creating a log"))?;
        known.insert(log);
        Ok(())
    }
}

#[async_trait]
impl MetaStore for JetStreamMeta {
    fn watch(&self, collections: &[&'static str]) -> Option<broadcast::Receiver<Change>> {
        // The follower needs a runtime to run on; outside one there is nothing to follow with.
        tokio::runtime::Handle::try_current().ok()?;
        let mut filters = Vec::with_capacity(collections.len());
        for &collection in collections {
            match check_name("collection", collection) {
                Ok(()) => filters.push(format!("{collection}.>")),
                // A name no key can have: nothing to follow there (and never a filter matching more).
                Err(e) => tracing::warn!(error = %e, "not following an invalid collection name"),
            }
        }
        if filters.is_empty() && !collections.is_empty() {
            return None;
        }
        let (changes, receiver) = broadcast::channel(WATCH_CAPACITY);
        let sender = changes.clone();
        let report = move |seen: Seen| {
            let change = match seen {
                Seen::Gap => Some(Change::All),
                Seen::Path(path) => change_at(&path),
            };
            if let Some(change) = change {
                // Fails only without receivers, and then the follower is about to stop.
                let _ = sender.send(change);
            }
        };
        // Ends the follower once nobody listens any more.
        let stop = async move { changes.closed().await };
        watch::spawn(self.inner.js.client().clone(), META_BUCKET, &filters, report, stop);
        Some(receiver)
    }

    fn write_parallelism(&self) -> usize {
        WRITE_PARALLELISM
    }

    async fn get(&self, collection: &'static str, key: &str) -> Result<Option<Bytes>, MetaError> {
        check_name("collection", collection)?;
        let inner = &self.inner;
        let path = path(collection, key);
        let entry = inner.retry("get", || inner.bucket.get(&path)).await.map_err(storage("reading a key"))?;
        Ok(entry.value)
    }

    async fn get_many(
        &self,
        collection: &'static str,
        keys: &[String],
    ) -> Result<Vec<Option<Bytes>>, MetaError> {
        check_name("collection", collection)?;
        let inner = &self.inner;
        // `buffered` keeps the answers in the order of `keys`.
        // Collected first: a mapping iterator held across the awaits trips the future's `Send` inference.
        let paths: Vec<String> = keys.iter().map(|key| path(collection, key)).collect();
        futures_util::stream::iter(paths)
            .map(|path| async move { inner.retry("get", || inner.bucket.get(&path)).await.map(|e| e.value) })
            .buffered(GET_MANY_CONCURRENCY)
            .try_collect()
            .await
            .map_err(storage("reading keys"))
    }

    async fn scan(&self, collection: &'static str, prefix: &str) -> Result<Vec<(String, Bytes)>, MetaError> {
        check_name("collection", collection)?;
        let inner = &self.inner;
        let filter = format!("{collection}.*");
        let paths =
            inner.retry("scan", || inner.bucket.paths(&filter)).await.map_err(storage("listing keys"))?;
        let token_start = collection.len() + 1;
        let mut keys: Vec<String> = paths
            .iter()
            .filter_map(|p| p.get(token_start..).and_then(codec::decode_kv_key))
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        // Deleted keys keep a marker, so some of these have no value: they are dropped below.
        let paths: Vec<String> = keys.iter().map(|key| path(collection, key)).collect();
        let values: Vec<Option<Bytes>> =
            futures_util::stream::iter(paths)
                .map(|path| async move {
                    inner.retry("scan get", || inner.bucket.get(&path)).await.map(|e| e.value)
                })
                .buffered(SCAN_CONCURRENCY)
                .try_collect()
                .await
                .map_err(storage("reading scanned keys"))?;
        Ok(keys.into_iter().zip(values).filter_map(|(k, v)| v.map(|v| (k, v))).collect())
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), MetaError> {
        let inner = &self.inner;
        // A key written twice in one transaction ends with its last write; an atomic batch with both would
        // store both messages, so keep only the last.
        let mut last_index: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, w) in writes.iter().enumerate() {
            check_name("collection", w.collection)?;
            last_index.insert((w.collection, w.key.as_str()), i);
        }
        let ops: Vec<(String, Op)> = writes
            .iter()
            .enumerate()
            .filter(|(i, w)| last_index.get(&(w.collection, w.key.as_str())) == Some(i))
            .map(|(_, w)| (path(w.collection, &w.key), w.value.clone().map_or(Op::Delete, Op::Put)))
            .collect();
        if ops.len() > inner.config.max_batch_records {
            return Err(MetaError::Storage {
                context: "writing",
                detail: format!(
                    "{} entries in one transaction exceed the maximum of {}",
                    ops.len(),
                    inner.config.max_batch_records
                ),
            });
        }
        // Re-sending after a lost acknowledgement writes the same values again: harmless.
        inner.retry("write", || inner.bucket.write_all(&ops)).await.map_err(storage("writing"))
    }

    async fn compare_and_set(
        &self,
        collection: &'static str,
        key: &str,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<bool, MetaError> {
        check_name("collection", collection)?;
        let inner = &self.inner;
        let path = path(collection, key);
        let op = new.map_or(Op::Delete, Op::Put);
        // Identifies this call's write, so after a lost acknowledgement it can tell its own write from
        // another writer's that happened to store the same value.
        let write_id = api::random_id(22);
        let mut maybe_written = false;
        let mut backoff = api::Backoff::new(inner.config.operation_timeout);
        loop {
            let entry =
                inner.retry("cas get", || inner.bucket.get(&path)).await.map_err(storage("reading a key"))?;
            if maybe_written && entry.write_id.as_deref() == Some(write_id.as_str()) {
                return Ok(true);
            }
            if entry.value != expected {
                return Ok(false);
            }
            match inner.bucket.write_one(&path, &op, Some(entry.revision), Some(&write_id)).await {
                Ok(_) => return Ok(true),
                // Another writer got there first (or is still replicating its write): re-read and decide again.
                Err(e) if e.is_wrong_last_sequence() => {}
                Err(e) if e.is_transient() => maybe_written |= matches!(e, JsError::Unavailable(_)),
                Err(e) => return Err(storage("conditional write")(e)),
            }
            if !backoff.wait().await {
                return Err(MetaError::Storage {
                    context: "conditional write",
                    detail: format!("key kept changing for {:?}", inner.config.operation_timeout),
                });
            }
        }
    }

    async fn append(&self, log: &'static str, entry: Bytes) -> Result<u64, MetaError> {
        check_name("log", log)?;
        let inner = &self.inner;
        inner.ensure_log(log).await?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", api::random_id(22).as_str());
        let msg = OutMsg { headers, payload: entry };
        let subject = log_subject(log);
        let ack = inner
            .retry("append", || inner.js.publish(&subject, msg.clone()))
            .await
            .map_err(storage("appending to a log"))?;
        Ok(ack.seq)
    }

    async fn read_log(
        &self,
        log: &'static str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Bytes)>, MetaError> {
        check_name("log", log)?;
        let inner = &self.inner;
        let stream = log_stream(log);
        let info = match inner.retry("log info", || inner.js.stream_info(&stream)).await {
            Ok(info) => info,
            Err(e) if e.is_code(code::STREAM_NOT_FOUND) => return Ok(Vec::new()),
            Err(e) => return Err(storage("reading a log")(e)),
        };
        let last = info.state.last_sequence;
        let mut out = Vec::new();
        let mut next = after.saturating_add(1).max(info.state.first_sequence);
        while out.len() < limit && next <= last {
            let batch = (limit - out.len()).min(1000);
            let msgs = inner
                .retry("read log", || api::read_range(&inner.js, &stream, next, last, batch, 4 << 20))
                .await
                .map_err(storage("reading a log"))?;
            if msgs.is_empty() {
                break;
            }
            next = msgs.last().map_or(next, |m| m.seq + 1);
            out.extend(msgs.into_iter().map(|m| (m.seq, m.payload)));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_and_log_names_must_be_plain() {
        assert!(check_name("collection", "group_offsets").is_ok());
        assert!(check_name("collection", "a.b").is_err());
        assert!(check_name("log", "").is_err());
    }

    #[test]
    fn bucket_paths_map_back_to_the_changed_key() {
        for key in ["", "alice", "a.b", "topic\0event", "ü/x y"] {
            assert_eq!(
                change_at(&path("principals", key)),
                Some(Change::Key { collection: "principals".into(), key: key.into() }),
                "{key:?}"
            );
        }
        assert_eq!(change_at("principals"), None, "no key token");
        assert_eq!(change_at("principals.notbase64!"), None);
    }

    #[test]
    fn paths_put_each_collection_under_its_own_token() {
        assert_eq!(path("c", ""), "c.k");
        assert!(path("principals", "alice").starts_with("principals.k"));
        assert_eq!(path("c", "a.b").matches('.').count(), 1, "a key never adds tokens");
    }
}
