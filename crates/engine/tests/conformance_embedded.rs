//! The shared backend conformance suite, run against the embedded engine (with small segments, so rolls and
//! sealed-segment indexes are exercised too).

use std::sync::Arc;

use async_trait::async_trait;
use esgf_events_engine::conformance::Harness;
use esgf_events_engine::{EmbeddedConfig, EmbeddedStore, LogStore, SystemClock};

struct Embedded {
    dir: tempfile::TempDir,
}

impl Embedded {
    fn new() -> Self {
        Embedded { dir: tempfile::tempdir().expect("tempdir") }
    }
    fn config(&self) -> EmbeddedConfig {
        let mut c = EmbeddedConfig::new(self.dir.path());
        c.segment_max_bytes = 64 << 10;
        c.index_interval_bytes = 1024;
        c
    }
}

#[async_trait]
impl Harness for Embedded {
    type Store = EmbeddedStore;
    async fn open(&self) -> EmbeddedStore {
        EmbeddedStore::open(self.config(), Arc::new(SystemClock)).expect("open")
    }
    async fn reopen(&self, store: EmbeddedStore) -> EmbeddedStore {
        store.shutdown().await.expect("shutdown");
        drop(store);
        self.open().await
    }
}

esgf_events_engine::conformance_suite!(Embedded::new());
