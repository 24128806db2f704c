//! The Kafka wire-protocol endpoint of the ESGF Event Service: existing Kafka producers and consumers
//! (librdkafka/confluent-kafka, kafka-python, the Java client) talk to the same log as the HTTP API, unchanged.
//!
//! Every service node is the leader of every partition (they share the log), so Metadata names this node as
//! leader; the live brokers and the group coordinator come from a [`cluster::Cluster`]: by default this node
//! alone ([`cluster::SingleNode`]), or, with several nodes on one store, the holder of the `kafka-coordinator`
//! lease ([`cluster::ClusterView`]). Topics are never created by Metadata requests.
//!
//! Layers, each testable on its own:
//! - [`codec`]: bytes of one frame to typed requests and back (schemas from `kafka-protocol`), behind a
//!   structural pre-check that bounds what a malicious frame can make the decoder allocate;
//! - [`Broker::handle`]: the protocol itself, a pure `async fn(session, header, request) -> response`;
//! - [`run`]: sockets, optional TLS, framing, connection limits and shutdown.
//!
//! Supported APIs and versions: [`codec::SUPPORTED`]. Error codes: [`errors`].

pub mod cluster;
pub mod codec;
pub mod errors;

mod broker;
mod fetch;
mod groups;
mod precheck;
mod produce;
mod records;
mod sasl;
mod server;

#[cfg(test)]
mod routing_tests;

use std::sync::Arc;
use std::time::Duration;

use esgf_events_auth::Auth;
use esgf_events_engine::LogStore;
use esgf_events_meta::offsets::GroupOffsets;

pub use broker::{Broker, Session};
pub use server::run;

/// Settings of the Kafka endpoint.
#[derive(Clone)]
pub struct KafkaConfig {
    /// Host name clients are told to connect to (Metadata, FindCoordinator).
    pub advertised_host: String,
    /// Port clients are told to connect to; 0 means the port the listener is bound to.
    pub advertised_port: u16,
    /// This node's broker id when it is alone (no [`KafkaConfig::cluster`]; a cluster names its own).
    pub node_id: i32,
    /// Lets clients that did not authenticate read topics marked public (only with authentication on).
    pub allow_anonymous_public_read: bool,
    /// Largest request frame accepted; a larger one closes the connection (Kafka's socket.request.max.bytes).
    pub max_frame_bytes: usize,
    /// Connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Serve Kafka over TLS (SASL_SSL) instead of plain TCP (SASL_PLAINTEXT).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Decompressed record bytes one produce request may carry, over all its batches.
    pub max_produce_bytes: usize,
    /// Longest wait a fetch request may ask for (its `max_wait_ms` is capped to this).
    pub max_fetch_wait: Duration,
    /// The cluster id reported in Metadata.
    pub cluster_id: String,
    /// Maintenance windows shared with HTTP: produce (and, in full mode, fetch) answer a retriable error while
    /// one is active. `None`: never.
    pub maintenance: Option<Arc<esgf_events_ops::MaintenanceState>>,
    /// The other service nodes and the group coordinator. `None`: this node alone ([`cluster::SingleNode`]
    /// from `node_id`, `advertised_host` and `advertised_port`).
    pub cluster: Option<Arc<dyn cluster::Cluster>>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            advertised_host: "127.0.0.1".to_owned(),
            advertised_port: 0,
            node_id: 1,
            allow_anonymous_public_read: false,
            max_frame_bytes: 100 << 20,
            max_connections: 1_000,
            tls: None,
            max_produce_bytes: 64 << 20,
            max_fetch_wait: Duration::from_secs(30),
            cluster_id: "esgf-events".to_owned(),
            maintenance: None,
            cluster: None,
        }
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("advertised_host", &self.advertised_host)
            .field("advertised_port", &self.advertised_port)
            .field("node_id", &self.node_id)
            .field("allow_anonymous_public_read", &self.allow_anonymous_public_read)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_connections", &self.max_connections)
            .field("tls", &self.tls.is_some())
            .field("max_produce_bytes", &self.max_produce_bytes)
            .field("max_fetch_wait", &self.max_fetch_wait)
            .field("cluster_id", &self.cluster_id)
            .field("maintenance", &self.maintenance.is_some())
            .field("cluster", &self.cluster.is_some())
            .finish()
    }
}

/// Everything the endpoint serves from.
#[derive(Clone)]
pub struct KafkaContext {
    pub store: Arc<dyn LogStore>,
    /// `None`: no authentication at all (for tests of the protocol alone). With `Some`, clients must
    /// authenticate with SASL/PLAIN before anything but ApiVersions (anonymous reads of public topics aside,
    /// when [`KafkaConfig::allow_anonymous_public_read`] is set), and every operation is authorized.
    pub auth: Option<Arc<Auth>>,
    pub offsets: GroupOffsets,
    pub config: KafkaConfig,
    /// The topic catalogue: produce requests are checked against a topic's lifecycle state and validation
    /// policy, and deduplicated by `metadata.event_id`, exactly as over HTTP. `None`: neither.
    pub catalogue: Option<Arc<esgf_events_catalogue::Catalogue>>,
}
