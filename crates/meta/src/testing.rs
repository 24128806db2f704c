//! Test support for crates that need a state store without a file or a cluster (feature `conformance`):
//! [`MemoryMetaStore`], a complete in-memory [`MetaStore`] that passes the conformance suite, and [`Severable`],
//! a wrapper around any store whose calls can be made to fail, to model a node cut off from its backend.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{MetaError, MetaStore, Write};

/// Collections and logs in memory, each call atomic under one lock. Nothing survives the process.
#[derive(Default)]
pub struct MemoryMetaStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    kv: BTreeMap<(String, String), Bytes>,
    logs: BTreeMap<String, Vec<Bytes>>,
}

impl MemoryMetaStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn apply(kv: &mut BTreeMap<(String, String), Bytes>, collection: &str, key: String, value: Option<Bytes>) {
    let k = (collection.to_owned(), key);
    match value {
        Some(v) => kv.insert(k, v),
        None => kv.remove(&k),
    };
}

#[async_trait]
impl MetaStore for MemoryMetaStore {
    async fn get(&self, collection: &'static str, key: &str) -> Result<Option<Bytes>, MetaError> {
        Ok(self.state().kv.get(&(collection.to_owned(), key.to_owned())).cloned())
    }
    async fn scan(&self, collection: &'static str, prefix: &str) -> Result<Vec<(String, Bytes)>, MetaError> {
        Ok(self
            .state()
            .kv
            .iter()
            .filter(|((c, k), _)| c == collection && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }
    async fn write(&self, writes: Vec<Write>) -> Result<(), MetaError> {
        let mut state = self.state();
        for w in writes {
            apply(&mut state.kv, w.collection, w.key, w.value);
        }
        Ok(())
    }
    async fn compare_and_set(
        &self,
        collection: &'static str,
        key: &str,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<bool, MetaError> {
        let mut state = self.state();
        if state.kv.get(&(collection.to_owned(), key.to_owned())) != expected.as_ref() {
            return Ok(false);
        }
        apply(&mut state.kv, collection, key.to_owned(), new);
        Ok(true)
    }
    async fn append(&self, log: &'static str, entry: Bytes) -> Result<u64, MetaError> {
        let mut state = self.state();
        let entries = state.logs.entry(log.to_owned()).or_default();
        entries.push(entry);
        Ok(entries.len() as u64)
    }
    async fn read_log(
        &self,
        log: &'static str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Bytes)>, MetaError> {
        let state = self.state();
        let Some(entries) = state.logs.get(log) else { return Ok(Vec::new()) };
        Ok((1u64..)
            .zip(entries.iter())
            .skip(usize::try_from(after).unwrap_or(usize::MAX))
            .take(limit)
            .map(|(seq, e)| (seq, e.clone()))
            .collect())
    }
}

/// `inner`, except that every call fails while [`Severable::sever`] is on.
pub struct Severable<M> {
    pub inner: M,
    cut: AtomicBool,
}

impl<M> Severable<M> {
    pub fn new(inner: M) -> Self {
        Severable { inner, cut: AtomicBool::new(false) }
    }

    /// Cuts the store off (`true`) or reconnects it (`false`).
    pub fn sever(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), MetaError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(MetaError::Storage { context: "testing", detail: "state store cut off".into() });
        }
        Ok(())
    }
}

impl Default for Severable<MemoryMetaStore> {
    fn default() -> Self {
        Severable::new(MemoryMetaStore::default())
    }
}

#[async_trait]
impl<M: MetaStore> MetaStore for Severable<M> {
    fn write_parallelism(&self) -> usize {
        self.inner.write_parallelism()
    }
    async fn get(&self, collection: &'static str, key: &str) -> Result<Option<Bytes>, MetaError> {
        self.check()?;
        self.inner.get(collection, key).await
    }
    async fn get_many(
        &self,
        collection: &'static str,
        keys: &[String],
    ) -> Result<Vec<Option<Bytes>>, MetaError> {
        self.check()?;
        self.inner.get_many(collection, keys).await
    }
    async fn scan(&self, collection: &'static str, prefix: &str) -> Result<Vec<(String, Bytes)>, MetaError> {
        self.check()?;
        self.inner.scan(collection, prefix).await
    }
    async fn write(&self, writes: Vec<Write>) -> Result<(), MetaError> {
        self.check()?;
        self.inner.write(writes).await
    }
    async fn compare_and_set(
        &self,
        collection: &'static str,
        key: &str,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<bool, MetaError> {
        self.check()?;
        self.inner.compare_and_set(collection, key, expected, new).await
    }
    async fn append(&self, log: &'static str, entry: Bytes) -> Result<u64, MetaError> {
        self.check()?;
        self.inner.append(log, entry).await
    }
    async fn read_log(
        &self,
        log: &'static str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Bytes)>, MetaError> {
        self.check()?;
        self.inner.read_log(log, after, limit).await
    }
}
