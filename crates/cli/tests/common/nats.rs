//! Service nodes on a real 3-node NATS JetStream cluster (`esgf_events_nats::testing`, the shipped
//! `deploy/nats` configs, token authentication as they require), for the tests of more than one node.
//!
//! A [`ServiceNode`] says how one `esgf-events serve` process uses the cluster (which NATS URLs, in which
//! order, whether it takes Kafka clients, its node id, its lease timing); [`ServiceNode::start`] runs it as a
//! [`Server`], which owns the process: ephemeral ports, ready when `start` returns, `kill9`, `terminate`,
//! `url` and `kafka_addr`. Without `nats-server` (>= 2.12, on PATH or in `$NATS_SERVER_BIN`) the cluster does
//! not start and the test fails, it does not skip.

use esgf_events_nats::testing::{NatsCluster, TEST_TOKEN};

use super::{Options, Server};

/// A tokio runtime for the cluster harness (and whatever else a test runs on it).
pub fn runtime(worker_threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A one-worker runtime and a 3-node cluster started on it. Drop the cluster before the runtime.
pub fn start_cluster() -> (tokio::runtime::Runtime, NatsCluster) {
    let runtime = runtime(1);
    let cluster = runtime.block_on(NatsCluster::start());
    (runtime, cluster)
}

/// How one service node is started on a NATS cluster.
#[derive(Debug, Clone)]
pub struct ServiceNode {
    options: Options,
}

impl ServiceNode {
    /// A node using every NATS node of `cluster`, in the cluster's order.
    pub fn on(cluster: &NatsCluster) -> ServiceNode {
        ServiceNode::on_urls(&cluster.urls())
    }

    /// A node using the NATS nodes `nodes` of `cluster`, in that order (its own site's first).
    pub fn on_nodes(cluster: &NatsCluster, nodes: &[usize]) -> ServiceNode {
        let urls: Vec<String> = nodes.iter().map(|&n| cluster.url(n)).collect();
        ServiceNode::on_urls(&urls)
    }

    fn on_urls(urls: &[String]) -> ServiceNode {
        let options = Options {
            env: vec![("ESGF_EVENTS_NATS_TOKEN".to_owned(), TEST_TOKEN.to_owned())],
            args: vec!["--storage".to_owned(), urls.join(",")],
            ..Options::default()
        };
        ServiceNode { options }
    }

    /// Also sets `name` to `value` in the node's environment.
    pub fn env(mut self, name: &str, value: &str) -> ServiceNode {
        self.options.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Also takes Kafka clients, on an ephemeral port ([`Server::kafka_addr`] says which).
    pub fn with_kafka(mut self) -> ServiceNode {
        self.options.args.extend(["--kafka-addr".to_owned(), "127.0.0.1:0".to_owned()]);
        self
    }

    /// Runs under node id `id` (`--node-id`).
    pub fn node_id(mut self, id: &str) -> ServiceNode {
        self.options.args.extend(["--node-id".to_owned(), id.to_owned()]);
        self
    }

    /// Holds its leases for `ttl` and renews them every `renew` (humantime, e.g. `3s`), instead of the
    /// defaults, so that a takeover is quick.
    pub fn lease_timing(self, ttl: &str, renew: &str) -> ServiceNode {
        self.env("ESGF_EVENTS_CLUSTER_LEASE_TTL", ttl).env("ESGF_EVENTS_CLUSTER_LEASE_RENEW", renew)
    }

    /// Starts the node on a fresh, empty data directory and waits until it is ready.
    pub fn start(&self) -> Server {
        Server::start_with(self.options.clone())
    }
}
