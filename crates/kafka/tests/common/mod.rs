//! Starts the Kafka endpoint in-process over an embedded log in a temporary directory.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use esgf_events_auth::{Auth, AuthConfig, Identity, Registration, Role};
use esgf_events_engine::{EmbeddedConfig, EmbeddedStore, LogStore, SystemClock, TopicConfig};
use esgf_events_kafka::{KafkaConfig, KafkaContext};
use esgf_events_meta::RedbMetaStore;
use esgf_events_meta::offsets::GroupOffsets;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The operator credential of servers started with authentication.
pub const OPERATOR_TOKEN: &str = "esgfev_T3stOperatorTokenT3stOperatorTokenT3stOpera";

pub struct Server {
    pub addr: SocketAddr,
    pub store: Arc<dyn LogStore>,
    pub offsets: GroupOffsets,
    pub auth: Option<Arc<Auth>>,
    pub operator: Option<Identity>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(KafkaConfig::default()).await
    }

    pub async fn start_with(config: KafkaConfig) -> Server {
        Self::start_full(config, false).await
    }

    /// With SASL/PLAIN authentication; the operator's token is [`OPERATOR_TOKEN`].
    pub async fn start_with_auth(config: KafkaConfig) -> Server {
        Self::start_full(config, true).await
    }

    pub async fn start_full(config: KafkaConfig, with_auth: bool) -> Server {
        // RUST_LOG=esgf_events_kafka=debug shows the endpoint's view when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn LogStore> = Arc::new(
            EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("log")), Arc::new(SystemClock)).unwrap(),
        );
        let meta = Arc::new(RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap());
        let offsets = GroupOffsets::new(meta.clone());
        let (auth, operator) = if with_auth {
            let auth = Auth::open(meta, AuthConfig::default()).await.unwrap();
            auth.bootstrap_operator(&dir.path().join("operator.token"), Some(OPERATOR_TOKEN)).await.unwrap();
            let operator = auth.authenticate_bearer(OPERATOR_TOKEN).await.unwrap();
            (Some(Arc::new(auth)), Some(operator))
        } else {
            (None, None)
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ctx = KafkaContext {
            store: Arc::clone(&store),
            auth: auth.clone(),
            offsets: offsets.clone(),
            config,
            catalogue: None,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(esgf_events_kafka::run(listener, ctx, async move {
            let _ = stopped.await;
        }));
        Server { addr, store, offsets, auth, operator, stop: Some(stop), task: Some(task), dir }
    }

    /// Registers a principal; returns its secret (its SASL password).
    pub async fn register(&self, role: Role, name: &str, topics: &[&str]) -> String {
        let auth = self.auth.as_ref().expect("authentication on");
        let registration = Registration {
            name: name.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            rate: None,
            contact: None,
            oidc: Vec::new(),
        };
        let (_, secret) = auth.register(role, registration, self.operator.as_ref().unwrap()).await.unwrap();
        secret.expose().to_owned()
    }

    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    pub async fn create_topic(&self, name: &str, partitions: u32) {
        self.store.create_topic(name, TopicConfig { partitions, ..TopicConfig::default() }).await.unwrap();
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self.store.shutdown().await.unwrap();
    }
}
