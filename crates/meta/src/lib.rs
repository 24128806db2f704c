//! The service's state that is not events: principals and credential hashes, the topic catalogue, consumer-group
//! offsets, the audit log. Small, changed rarely compared with events, and read far more often than written.
//!
//! [`MetaStore`] is a typed-agnostic key-value store with named collections plus append-only logs, so it maps
//! onto an embedded database now ([`RedbMetaStore`], every commit fsync'd) and onto JetStream key-value buckets
//! and streams later. Callers serialize their own values. Like the log engine, this crate knows nothing of HTTP,
//! Kafka or JSON.

pub mod changelog;
pub mod lease;
pub mod offsets;
mod redb_store;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(any(test, feature = "conformance"))]
pub mod testing;

use async_trait::async_trait;
use bytes::Bytes;

pub use redb_store::RedbMetaStore;

// Clone: one failed write can be the answer to several callers (the catalogue's group commit of event ids).
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetaError {
    #[error("state store error while {context}: {detail}")]
    Storage { context: &'static str, detail: String },
    #[error("state store is closed")]
    Closed,
}

/// One write of a multi-entry transaction: `value: None` deletes the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub collection: &'static str,
    pub key: String,
    pub value: Option<Bytes>,
}

/// A change to the store seen through [`MetaStore::watch`], made by this process or another one.
///
/// A notification says only *that* something changed, never the new value: the receiver reads the key again,
/// so it always ends with the current state whatever order notifications arrive in or how many it coalesces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `key` of `collection` was written or deleted.
    Key { collection: String, key: String },
    /// Changes may have been missed (the watch restarted, or a receiver fell behind): treat everything as
    /// changed and reload.
    All,
}

/// How many notifications a [`MetaStore::watch`] receiver may fall behind before it is told
/// [`tokio::sync::broadcast::error::RecvError::Lagged`] (which a receiver must treat as [`Change::All`]).
pub const WATCH_CAPACITY: usize = 1024;

/// A durable, transactional key-value store of named collections and append-only logs.
///
/// Every call returns only once its change is durable. Keys within a collection are ordered bytewise.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    async fn get(&self, collection: &'static str, key: &str) -> Result<Option<Bytes>, MetaError>;
    /// The values of `keys` (in the same order, `None` for an absent key), read together: one call of the
    /// publish path's event-id lookup, so a backend can answer a batch with one read (redb: one transaction)
    /// or overlapping requests (NATS) instead of one round trip per key. The default reads them one by one.
    async fn get_many(
        &self,
        collection: &'static str,
        keys: &[String],
    ) -> Result<Vec<Option<Bytes>>, MetaError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(collection, key).await?);
        }
        Ok(out)
    }
    /// All entries whose key starts with `prefix`, in key order.
    async fn scan(&self, collection: &'static str, prefix: &str) -> Result<Vec<(String, Bytes)>, MetaError>;
    /// Applies all writes atomically: all of them or none.
    async fn write(&self, writes: Vec<Write>) -> Result<(), MetaError>;
    /// Sets `key` to `new` only if its current value is `expected` (`None` = absent). Returns whether it did.
    async fn compare_and_set(
        &self,
        collection: &'static str,
        key: &str,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<bool, MetaError>;
    /// Appends to an append-only log; returns the entry's sequence number (1, 2, 3, ...).
    async fn append(&self, log: &'static str, entry: Bytes) -> Result<u64, MetaError>;
    /// Entries with sequence number `> after`, oldest first, at most `limit`.
    async fn read_log(
        &self,
        log: &'static str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Bytes)>, MetaError>;

    /// Notifications of changes to `collections` (all collections when empty; never logs) made through any
    /// handle on the same store, in other processes too, each delivered once the change is durable and
    /// readable. `None` when the backend cannot be shared between processes (redb: one process owns the
    /// file, and its own writers keep their caches up to date), so there is nothing to follow.
    ///
    /// Each call starts its own follower (so call it once per cache owner and share the receiver), which
    /// sends [`Change::All`] whenever it (re)starts following — its first message — and stops when the
    /// last receiver is dropped. A receiver that falls more than [`WATCH_CAPACITY`] behind gets `Lagged`,
    /// which means [`Change::All`] too. Name only the collections that are cached: hot ones (event ids,
    /// consumer offsets) would be sent to every node on every write.
    fn watch(&self, collections: &[&'static str]) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        let _ = collections;
        None
    }

    /// How many independent [`MetaStore::write`]s are worth having in flight at once, for a caller that
    /// combines many small writes (group commit). 1 (the default) where writes are serialized anyway and
    /// each pays a fsync (redb): one write at a time lets the most wait and share it. More where a write is
    /// a round trip that overlaps with others (NATS), so waiting for the previous one would only add latency.
    fn write_parallelism(&self) -> usize {
        1
    }

    async fn put(&self, collection: &'static str, key: &str, value: Bytes) -> Result<(), MetaError> {
        self.write(vec![Write { collection, key: key.to_owned(), value: Some(value) }]).await
    }
    async fn delete(&self, collection: &'static str, key: &str) -> Result<(), MetaError> {
        self.write(vec![Write { collection, key: key.to_owned(), value: None }]).await
    }
}
