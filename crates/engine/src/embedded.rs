//! The embedded backend: the default, nothing to install.
//!
//! Layout under the data directory:
//! - `LOCK`: held (advisory lock) while a process has the log open, so two servers never share a directory.
//! - `topics/<name>/topic.meta`: the topic's settings (small text file, replaced atomically).
//! - `topics/<name>/<partition>/<base offset>.log|.index|.timeindex`: segments.
//! - `staging/`, `trash/`: topics being created or deleted. Creation builds the whole topic in `staging/` and
//!   renames it into `topics/` (atomic); deletion renames it into `trash/` first. Both are emptied at open, so
//!   a crash never leaves a half-created or half-deleted topic visible.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;

use crate::partition::{Partition, Settings};
use crate::{
    AppendOutcome, Clock, LogStore, NewRecord, PartitionOffsets, ReadLimits, ReadResult, Retention,
    RetentionReport, StoreError, TopicConfig, TopicInfo, validate_topic_name,
};

/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The default: acknowledged only after its bytes are fsync'd (group commit: concurrent appends share one).
    FsyncBeforeAck,
    /// RELAXED: acknowledged once written to the OS page cache; fsync'd every `interval`. A machine crash (not a
    /// process crash) can lose up to `interval` of acknowledged events.
    Relaxed { interval: Duration },
}

/// Settings of the embedded engine. Defaults live in [`EmbeddedConfig::new`].
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// A segment rolls once it would grow past this many bytes (also bounds crash-recovery time: only the
    /// active segment is scanned at start-up).
    pub segment_max_bytes: u64,
    /// A segment rolls once its first record is this old, so retention by age can delete it.
    pub segment_max_age: Duration,
    /// One sparse index entry per this many bytes of log.
    pub index_interval_bytes: u32,
    /// Largest batch one append may carry, in encoded bytes.
    pub max_batch_bytes: usize,
    /// Appends queued per partition before producers wait (backpressure).
    pub write_queue_depth: usize,
    /// Bytes of appends queued or in flight per partition before producers wait (backpressure that bounds
    /// memory whatever the batch size). A single batch larger than this still goes through, alone.
    pub write_queue_bytes: usize,
}

impl EmbeddedConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EmbeddedConfig {
            data_dir: data_dir.into(),
            durability: Durability::FsyncBeforeAck,
            segment_max_bytes: 128 << 20,
            segment_max_age: Duration::from_secs(7 * 24 * 3600),
            index_interval_bytes: 4096,
            max_batch_bytes: 32 << 20,
            write_queue_depth: 4096,
            write_queue_bytes: 64 << 20,
        }
    }
}

struct Topic {
    info: RwLock<TopicInfo>,
    dir: PathBuf,
    partitions: Vec<Arc<Partition>>,
}

struct Inner {
    root: PathBuf,
    settings: Arc<Settings>,
    clock: Arc<dyn Clock>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises topic creation, deletion and settings changes (rare, and each touches several files).
    admin: tokio::sync::Mutex<()>,
    shutting_down: AtomicBool,
    flusher: Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    /// The data directory's lock, released by `shutdown` so a successor may open it at once.
    lock: Mutex<Option<File>>,
}

/// The embedded log. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the log under `config.data_dir`, recovering every partition's active segment.
    /// Retention is not applied here: call [`LogStore::enforce_retention`] at start-up and on a timer.
    pub fn open(config: EmbeddedConfig, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        if config.segment_max_bytes + config.max_batch_bytes as u64 >= u64::from(u32::MAX) {
            return Err(StoreError::InvalidArgument(
                "segment_max_bytes + max_batch_bytes must stay below 4 GiB".into(),
            ));
        }
        let root = config.data_dir.clone();
        for d in [root.clone(), root.join("topics"), root.join("staging"), root.join("trash")] {
            std::fs::create_dir_all(&d)
                .map_err(|e| StoreError::io(format!("creating {}", d.display()), e))?;
        }
        let lock_path = root.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io(format!("opening {}", lock_path.display()), e))?;
        lock.try_lock().map_err(|_| {
            StoreError::InvalidArgument(format!(
                "data directory {} is in use by another process",
                root.display()
            ))
        })?;
        for d in ["staging", "trash"] {
            clear_dir(&root.join(d))?;
        }
        let settings = Arc::new(Settings {
            durability: config.durability,
            segment_max_bytes: config.segment_max_bytes,
            segment_max_age_ms: i64::try_from(config.segment_max_age.as_millis()).unwrap_or(i64::MAX),
            index_interval: config.index_interval_bytes.max(1),
            max_batch_bytes: config.max_batch_bytes,
            queue_depth: config.write_queue_depth,
            queue_bytes: config.write_queue_bytes,
        });
        let mut topics = BTreeMap::new();
        let topics_dir = root.join("topics");
        let entries = std::fs::read_dir(&topics_dir)
            .map_err(|e| StoreError::io(format!("listing {}", topics_dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("listing topics", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            let info = read_meta(&dir, &name)?;
            let partitions = (0..info.partitions)
                .map(|p| {
                    Partition::open(&name, p, &dir.join(p.to_string()), settings.clone(), clock.clone())
                        .map(Arc::new)
                })
                .collect::<Result<Vec<_>, _>>()?;
            tracing::info!(topic = %name, partitions = info.partitions, "opened topic");
            topics.insert(name, Arc::new(Topic { info: RwLock::new(info), dir, partitions }));
        }
        let inner = Arc::new(Inner {
            root,
            settings,
            clock,
            topics: RwLock::new(topics),
            admin: tokio::sync::Mutex::new(()),
            shutting_down: AtomicBool::new(false),
            flusher: Mutex::new(None),
            lock: Mutex::new(Some(lock)),
        });
        if let Durability::Relaxed { interval } = config.durability {
            tracing::warn!(?interval, "RELAXED durability: appends are acknowledged before they are fsync'd");
            let (stop, stopped) = std::sync::mpsc::channel::<()>();
            let weak = Arc::downgrade(&inner);
            let handle = std::thread::spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    let Some(inner) = weak.upgrade() else { return };
                    for p in inner.all_partitions() {
                        if let Err(e) = p.sync() {
                            tracing::error!(error = %e, "periodic fsync failed");
                        }
                    }
                }
            });
            *inner.flusher.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((stop, handle));
        }
        Ok(EmbeddedStore { inner })
    }

    /// The data directory this store owns.
    pub fn data_dir(&self) -> &Path {
        &self.inner.root
    }
}

impl Inner {
    fn topic(&self, name: &str) -> Result<Arc<Topic>, StoreError> {
        self.topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::TopicNotFound(name.to_owned()))
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, StoreError> {
        let t = self.topic(topic)?;
        t.partitions.get(partition as usize).cloned().ok_or_else(|| StoreError::PartitionNotFound {
            topic: topic.to_owned(),
            partition,
            partitions: t.partitions.len() as u32,
        })
    }

    fn all_topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect()
    }

    fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.all_topics().iter().flat_map(|t| t.partitions.iter().cloned()).collect()
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.shutting_down.load(Ordering::SeqCst) { Err(StoreError::ShuttingDown) } else { Ok(()) }
    }
}

impl Topic {
    fn info(&self) -> TopicInfo {
        self.info.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

#[async_trait]
impl LogStore for EmbeddedStore {
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo, StoreError> {
        validate_topic_name(name)?;
        if config.partitions == 0 || config.partitions > MAX_PARTITIONS {
            return Err(StoreError::InvalidArgument(format!("partitions must be 1..={MAX_PARTITIONS}")));
        }
        self.inner.check_open()?;
        let _guard = self.inner.admin.lock().await;
        if self.inner.topic(name).is_ok() {
            return Err(StoreError::TopicExists(name.to_owned()));
        }
        let info = TopicInfo {
            name: name.to_owned(),
            partitions: config.partitions,
            retention: config.retention,
            created_ms: self.inner.clock.now_ms(),
        };
        let inner = self.inner.clone();
        let info2 = info.clone();
        let topic = tokio::task::spawn_blocking(move || -> Result<Topic, StoreError> {
            let staged = inner.root.join("staging").join(&info2.name);
            let _ = std::fs::remove_dir_all(&staged);
            mkdir(&staged)?;
            for p in 0..info2.partitions {
                mkdir(&staged.join(p.to_string()))?;
            }
            write_meta(&staged, &info2)?;
            for p in 0..info2.partitions {
                sync_dir(&staged.join(p.to_string()))?;
            }
            sync_dir(&staged)?;
            let dir = inner.root.join("topics").join(&info2.name);
            std::fs::rename(&staged, &dir)
                .map_err(|e| StoreError::io(format!("publishing topic {}", info2.name), e))?;
            sync_dir(&inner.root.join("topics"))?;
            sync_dir(&inner.root.join("staging"))?;
            let partitions = (0..info2.partitions)
                .map(|p| {
                    Partition::open(
                        &info2.name,
                        p,
                        &dir.join(p.to_string()),
                        inner.settings.clone(),
                        inner.clock.clone(),
                    )
                    .map(Arc::new)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Topic { info: RwLock::new(info2), dir, partitions })
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        self.inner
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), Arc::new(topic));
        tracing::info!(topic = %name, partitions = info.partitions, "created topic");
        Ok(info)
    }

    async fn delete_topic(&self, name: &str) -> Result<(), StoreError> {
        let _guard = self.inner.admin.lock().await;
        let topic = self
            .inner
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name)
            .ok_or_else(|| StoreError::TopicNotFound(name.to_owned()))?;
        for p in &topic.partitions {
            p.shutdown().await?;
        }
        let root = self.inner.root.clone();
        let dir = topic.dir.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            let stamp =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let trashed = root.join("trash").join(format!("{name}.{}", stamp.as_nanos()));
            std::fs::rename(&dir, &trashed)
                .map_err(|e| StoreError::io(format!("deleting topic {name}"), e))?;
            sync_dir(&root.join("topics"))?;
            std::fs::remove_dir_all(&trashed)
                .map_err(|e| StoreError::io(format!("removing {}", trashed.display()), e))?;
            tracing::info!(topic = %name, "deleted topic");
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>, StoreError> {
        Ok(self.inner.all_topics().iter().map(|t| t.info()).collect())
    }

    async fn describe_topic(&self, name: &str) -> Result<TopicInfo, StoreError> {
        Ok(self.inner.topic(name)?.info())
    }

    async fn set_retention(&self, name: &str, retention: Retention) -> Result<TopicInfo, StoreError> {
        let _guard = self.inner.admin.lock().await;
        let topic = self.inner.topic(name)?;
        let mut info = topic.info();
        info.retention = retention;
        let dir = topic.dir.clone();
        let info2 = info.clone();
        tokio::task::spawn_blocking(move || write_meta(&dir, &info2))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))??;
        *topic.info.write().unwrap_or_else(std::sync::PoisonError::into_inner) = info.clone();
        Ok(info)
    }

    async fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<NewRecord>,
    ) -> Result<AppendOutcome, StoreError> {
        self.inner.check_open()?;
        self.inner.partition(topic, partition)?.append(records).await
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<ReadResult, StoreError> {
        self.inner.partition(topic, partition)?.read(offset, limits).await
    }

    async fn offsets(&self, topic: &str, partition: u32) -> Result<PartitionOffsets, StoreError> {
        let (earliest, latest) = self.inner.partition(topic, partition)?.offsets();
        Ok(PartitionOffsets { partition, earliest, latest })
    }

    async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        self.inner.partition(topic, partition)?.offset_for_timestamp(timestamp_ms).await
    }

    async fn wait_for(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<bool, StoreError> {
        let mut rx = self.inner.partition(topic, partition)?.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|&next| next > offset)).await {
            Ok(Ok(_)) => Ok(true),
            // The partition closed (topic deleted or shutdown): nothing more will arrive here.
            Ok(Err(_)) => Ok(false),
            Err(_) => Ok(false),
        }
    }

    async fn enforce_retention(&self) -> Result<RetentionReport, StoreError> {
        let mut total = RetentionReport::default();
        for topic in self.inner.all_topics() {
            let retention = topic.info().retention;
            for p in &topic.partitions {
                let r = p.enforce_retention(retention).await?;
                total.segments_deleted += r.segments_deleted;
                total.bytes_deleted += r.bytes_deleted;
            }
        }
        Ok(total)
    }

    async fn shutdown(&self) -> Result<(), StoreError> {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let _guard = self.inner.admin.lock().await;
        for p in self.inner.all_partitions() {
            p.shutdown().await?;
        }
        let flusher = self.inner.flusher.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some((stop, handle)) = flusher {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        drop(self.inner.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
        tracing::info!(data_dir = %self.inner.root.display(), "log closed: all appends durable");
        Ok(())
    }
}

fn mkdir(p: &Path) -> Result<(), StoreError> {
    std::fs::create_dir(p).map_err(|e| StoreError::io(format!("creating {}", p.display()), e))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("syncing {}", dir.display()), e))
}

fn clear_dir(dir: &Path) -> Result<(), StoreError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let r = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        r.map_err(|e| StoreError::io(format!("removing {}", path.display()), e))?;
    }
    Ok(())
}

const META_FILE: &str = "topic.meta";

fn fmt_opt(v: Option<u64>) -> String {
    v.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

/// Writes the topic's settings atomically (temporary file, fsync, rename, directory fsync).
fn write_meta(dir: &Path, info: &TopicInfo) -> Result<(), StoreError> {
    let text = format!(
        "# ESGF Event Service topic settings. Written by the service; do not edit while it runs.\n\
         version=1\npartitions={}\nretention_ms={}\nretention_bytes={}\ncreated_ms={}\n",
        info.partitions,
        fmt_opt(info.retention.max_age.map(|d| d.as_millis() as u64)),
        fmt_opt(info.retention.max_bytes),
        info.created_ms,
    );
    let tmp = dir.join("topic.meta.tmp");
    let mut f = File::create(&tmp).map_err(|e| StoreError::io(format!("creating {}", tmp.display()), e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| StoreError::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, dir.join(META_FILE)).map_err(|e| StoreError::io("replacing topic.meta", e))?;
    sync_dir(dir)
}

fn read_meta(dir: &Path, name: &str) -> Result<TopicInfo, StoreError> {
    let path = dir.join(META_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
    let bad = |detail: String| StoreError::Corrupt { path: path.clone(), position: 0, detail };
    let mut fields = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (k, v) = line.split_once('=').ok_or_else(|| bad(format!("line without '=': {line}")))?;
        fields.insert(k.trim(), v.trim());
    }
    let get = |k: &str| fields.get(k).copied().ok_or_else(|| bad(format!("missing {k}")));
    if get("version")? != "1" {
        return Err(bad(format!("unsupported version {}", get("version")?)));
    }
    let opt = |k: &str| -> Result<Option<u64>, StoreError> {
        match get(k)? {
            "none" => Ok(None),
            v => v.parse().map(Some).map_err(|_| bad(format!("{k} is not a number: {v}"))),
        }
    };
    Ok(TopicInfo {
        name: name.to_owned(),
        partitions: get("partitions")?.parse().map_err(|_| bad("partitions is not a number".into()))?,
        retention: Retention {
            max_age: opt("retention_ms")?.map(Duration::from_millis),
            max_bytes: opt("retention_bytes")?,
        },
        created_ms: get("created_ms")?.parse().map_err(|_| bad("created_ms is not a number".into()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_meta_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let info = TopicInfo {
            name: "t".into(),
            partitions: 3,
            retention: Retention { max_age: None, max_bytes: Some(10) },
            created_ms: 42,
        };
        write_meta(dir.path(), &info).unwrap();
        assert_eq!(read_meta(dir.path(), "t").unwrap(), info);
    }
}
