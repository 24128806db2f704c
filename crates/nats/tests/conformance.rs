//! The shared backend conformance suites, unchanged, against the JetStream backends on a real 3-node
//! cluster (one cluster per case, so cases are independent).

mod common;

mod log {
    use std::sync::Arc;

    use async_trait::async_trait;
    use esgf_events_engine::LogStore;
    use esgf_events_engine::conformance::Harness;
    use esgf_events_nats::JetStreamStore;
    use tokio::sync::OnceCell;

    use crate::common::{NatsCluster, open_store};

    /// Starts its cluster on first use (the suite builds harnesses outside async code).
    struct JetStream {
        cluster: OnceCell<Arc<NatsCluster>>,
    }

    impl JetStream {
        fn new() -> Self {
            JetStream { cluster: OnceCell::new() }
        }
    }

    #[async_trait]
    impl Harness for JetStream {
        type Store = JetStreamStore;
        async fn open(&self) -> JetStreamStore {
            let cluster = self.cluster.get_or_init(|| async { Arc::new(NatsCluster::start().await) }).await;
            open_store(cluster, &[]).await
        }
        async fn reopen(&self, store: JetStreamStore) -> JetStreamStore {
            store.shutdown().await.expect("shutdown");
            drop(store);
            self.open().await
        }
    }

    esgf_events_engine::conformance_suite!(JetStream::new());
}

mod meta {
    use esgf_events_nats::JetStreamMeta;

    use crate::common::{NatsCluster, connect, store_config};

    /// The meta suite wants a store from a plain expression; the multi-threaded test runtime lets this
    /// block on starting a cluster.
    fn fresh() -> (NatsCluster, JetStreamMeta) {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let cluster = NatsCluster::start().await;
                let client = connect(&cluster, &[]).await;
                let store =
                    JetStreamMeta::open(client, store_config(&cluster)).await.expect("open JetStreamMeta");
                (cluster, store)
            })
        })
    }

    esgf_events_meta::meta_conformance_suite!(fresh());
}
