//! [`MetaStore`] on redb: one database file, every write transaction committed durably (fsync).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use crate::{MetaError, MetaStore, Write};

/// The embedded state store (`<data dir>/state.redb`).
#[derive(Clone)]
pub struct RedbMetaStore {
    db: Arc<Database>,
}

fn err(context: &'static str) -> impl Fn(redb::Error) -> MetaError {
    move |e| MetaError::Storage { context, detail: e.to_string() }
}

fn kv(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

fn log_table(name: &str) -> TableDefinition<'_, u64, &'static [u8]> {
    TableDefinition::new(name)
}

impl RedbMetaStore {
    /// Opens or creates the database at `path` (redb recovers from a crash on open).
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        let db = Database::create(path).map_err(|e| err("opening")(e.into()))?;
        Ok(RedbMetaStore { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, MetaError> + Send + 'static,
    ) -> Result<T, MetaError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| MetaError::Storage { context: "running a blocking task", detail: e.to_string() })?
    }
}

#[async_trait]
impl MetaStore for RedbMetaStore {
    async fn get(&self, collection: &'static str, key: &str) -> Result<Option<Bytes>, MetaError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| err("reading")(e.into()))?;
            let table = match txn.open_table(kv(collection)) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(err("reading")(e.into())),
            };
            let value = table.get(key.as_str()).map_err(|e| err("reading")(e.into()))?;
            Ok(value.map(|v| Bytes::copy_from_slice(v.value())))
        })
        .await
    }

    async fn get_many(
        &self,
        collection: &'static str,
        keys: &[String],
    ) -> Result<Vec<Option<Bytes>>, MetaError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys = keys.to_vec();
        // One read transaction on one blocking thread for the whole batch: each `get` would pay both again.
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| err("reading")(e.into()))?;
            let table = match txn.open_table(kv(collection)) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(vec![None; keys.len()]),
                Err(e) => return Err(err("reading")(e.into())),
            };
            keys.iter()
                .map(|key| {
                    let value = table.get(key.as_str()).map_err(|e| err("reading")(e.into()))?;
                    Ok(value.map(|v| Bytes::copy_from_slice(v.value())))
                })
                .collect()
        })
        .await
    }

    async fn scan(&self, collection: &'static str, prefix: &str) -> Result<Vec<(String, Bytes)>, MetaError> {
        let prefix = prefix.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| err("scanning")(e.into()))?;
            let table = match txn.open_table(kv(collection)) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(err("scanning")(e.into())),
            };
            let mut out = Vec::new();
            for entry in table.range(prefix.as_str()..).map_err(|e| err("scanning")(e.into()))? {
                let (k, v) = entry.map_err(|e| err("scanning")(e.into()))?;
                if !k.value().starts_with(prefix.as_str()) {
                    break;
                }
                out.push((k.value().to_owned(), Bytes::copy_from_slice(v.value())));
            }
            Ok(out)
        })
        .await
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), MetaError> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(|e| err("writing")(e.into()))?;
            for w in &writes {
                let mut table = txn.open_table(kv(w.collection)).map_err(|e| err("writing")(e.into()))?;
                match &w.value {
                    Some(v) => {
                        drop(table.insert(w.key.as_str(), v.as_ref()).map_err(|e| err("writing")(e.into()))?)
                    }
                    None => drop(table.remove(w.key.as_str()).map_err(|e| err("writing")(e.into()))?),
                }
            }
            txn.commit().map_err(|e| err("committing")(e.into()))
        })
        .await
    }

    async fn compare_and_set(
        &self,
        collection: &'static str,
        key: &str,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<bool, MetaError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(|e| err("writing")(e.into()))?;
            {
                let mut table = txn.open_table(kv(collection)).map_err(|e| err("writing")(e.into()))?;
                let current = table
                    .get(key.as_str())
                    .map_err(|e| err("reading")(e.into()))?
                    .map(|v| Bytes::copy_from_slice(v.value()));
                if current != expected {
                    return Ok(false);
                }
                match &new {
                    Some(v) => {
                        drop(table.insert(key.as_str(), v.as_ref()).map_err(|e| err("writing")(e.into()))?)
                    }
                    None => drop(table.remove(key.as_str()).map_err(|e| err("writing")(e.into()))?),
                }
            }
            txn.commit().map_err(|e| err("committing")(e.into()))?;
            Ok(true)
        })
        .await
    }

    async fn append(&self, log: &'static str, entry: Bytes) -> Result<u64, MetaError> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(|e| err("appending")(e.into()))?;
            let seq = {
                let mut table = txn.open_table(log_table(log)).map_err(|e| err("appending")(e.into()))?;
                let last =
                    table.last().map_err(|e| err("appending")(e.into()))?.map_or(0, |(k, _)| k.value());
                let seq = last + 1;
                table.insert(seq, entry.as_ref()).map_err(|e| err("appending")(e.into()))?;
                seq
            };
            txn.commit().map_err(|e| err("committing")(e.into()))?;
            Ok(seq)
        })
        .await
    }

    async fn read_log(
        &self,
        log: &'static str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Bytes)>, MetaError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| err("reading log")(e.into()))?;
            let table = match txn.open_table(log_table(log)) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(err("reading log")(e.into())),
            };
            let mut out = Vec::new();
            for entry in table.range(after.saturating_add(1)..).map_err(|e| err("reading log")(e.into()))? {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = entry.map_err(|e| err("reading log")(e.into()))?;
                out.push((k.value(), Bytes::copy_from_slice(v.value())));
            }
            Ok(out)
        })
        .await
    }
}
