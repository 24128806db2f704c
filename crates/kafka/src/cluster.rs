//! Which service node Kafka clients are sent to, when several stateless nodes share one store.
//!
//! The broker consults a [`Cluster`] for three things: this node's advertised address, the live brokers
//! (Metadata) and the group coordinator (FindCoordinator, and whether this node may serve group requests).
//! [`SingleNode`] is the default: this node is the only broker and coordinates every group. [`ClusterView`]
//! is backed by the node registry and the `kafka-coordinator` lease of `esgf_events_meta::lease`: exactly one
//! node holds the lease and coordinates every group; the others answer group requests with NOT_COORDINATOR
//! and send FindCoordinator to the holder.
//!
//! Every node serves every partition (the log and committed offsets are in the shared store), so partition
//! leadership needs no coordination; only group membership, which is in memory, does.
//!
//! The view is answered from memory: a background task refreshes it (every [`REFRESH_EVERY`]), so Produce,
//! Fetch and Metadata never wait on the state store. Whether *this* node is the coordinator comes from its
//! own lease task ([`esgf_events_meta::lease::Leases::hold`]), which turns false as soon as the lease may have
//! been lost, not from the refreshed snapshot.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use esgf_events_meta::MetaError;
use esgf_events_meta::lease::{Leases, NodeInfo, Nodes};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// The lease whose holder coordinates every consumer group.
pub const COORDINATOR_LEASE: &str = "kafka-coordinator";

/// How often [`ClusterView::spawn_refresh`] re-reads the node registry and the lease.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// A broker as Kafka clients see it: a node id and where to connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KafkaNode {
    pub node_id: i32,
    pub host: String,
    /// 0 only for this node of a [`SingleNode`] configured with advertised port 0: the broker substitutes
    /// the port its listener is bound to.
    pub port: u16,
}

/// The Kafka broker id of the service node named `node`: 32-bit FNV-1a of its UTF-8 bytes, masked to the
/// non-negative `i32` range (`& 0x7fffffff`; Kafka ids are non-negative, -1 means "none").
///
/// Stable across restarts and identical on every node without any coordination, which is all Kafka clients
/// need: the id names a connection endpoint. Two live node names hashing to the same id (odds ~n²/2³²) would
/// make clients mix their endpoints up; [`ClusterView`] logs a warning if it ever sees that, and renaming one
/// node (`node_id`) resolves it.
pub fn kafka_node_id(node: &str) -> i32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let hash = node.bytes().fold(OFFSET_BASIS, |h, b| (h ^ u32::from(b)).wrapping_mul(PRIME));
    (hash & 0x7fff_ffff) as i32
}

/// What the broker needs to know about the other nodes. Implementations answer from memory.
pub trait Cluster: Send + Sync {
    /// This node, as advertised to clients.
    fn this_node(&self) -> KafkaNode;
    /// The live brokers with a Kafka endpoint, this node always among them.
    fn brokers(&self) -> Vec<KafkaNode>;
    /// The node coordinating consumer groups; `None` while nobody holds the coordination.
    fn coordinator(&self) -> Option<KafkaNode>;
    /// Whether this node coordinates consumer groups right now.
    fn is_coordinator(&self) -> bool;
}

/// One node, which is the whole cluster: the behaviour of a service with a single `serve` process.
#[derive(Debug, Clone)]
pub struct SingleNode {
    node: KafkaNode,
}

impl SingleNode {
    pub fn new(node: KafkaNode) -> Self {
        SingleNode { node }
    }
}

impl Cluster for SingleNode {
    fn this_node(&self) -> KafkaNode {
        self.node.clone()
    }
    fn brokers(&self) -> Vec<KafkaNode> {
        vec![self.node.clone()]
    }
    fn coordinator(&self) -> Option<KafkaNode> {
        Some(self.node.clone())
    }
    fn is_coordinator(&self) -> bool {
        true
    }
}

/// The last registry and lease reading.
#[derive(Debug, Default)]
struct Snapshot {
    /// Live nodes with a Kafka endpoint, ordered by node name, this node included.
    brokers: Vec<KafkaNode>,
    /// The coordinator lease holder as last read, if it is another node with a Kafka endpoint.
    other_coordinator: Option<KafkaNode>,
}

/// The lease-backed view of a multi-node service (see the module doc).
pub struct ClusterView {
    /// This node's name in the registry and the leases.
    name: String,
    this: KafkaNode,
    /// `true` exactly while this node holds [`COORDINATOR_LEASE`].
    holding: watch::Receiver<bool>,
    snapshot: RwLock<Snapshot>,
}

impl std::fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterView")
            .field("name", &self.name)
            .field("this", &self.this)
            .field("holding", &*self.holding.borrow())
            .finish_non_exhaustive()
    }
}

impl ClusterView {
    /// The view of node `name`, advertised at `host:port`, holding the coordinator lease while `holding` is
    /// true. Until the first refresh it knows only itself.
    pub fn new(
        name: impl Into<String>,
        host: impl Into<String>,
        port: u16,
        holding: watch::Receiver<bool>,
    ) -> Self {
        let name = name.into();
        let this = KafkaNode { node_id: kafka_node_id(&name), host: host.into(), port };
        let snapshot = Snapshot { brokers: vec![this.clone()], other_coordinator: None };
        ClusterView { name, this, holding, snapshot: RwLock::new(snapshot) }
    }

    /// Replaces the snapshot from a registry reading (`live`) and the lease holder's node name (`owner`).
    /// Nodes without a Kafka endpoint are left out; this node is always in.
    pub fn update(&self, live: &[NodeInfo], owner: Option<&str>) {
        let mut brokers: Vec<(String, KafkaNode)> = live
            .iter()
            .filter(|n| n.id != self.name)
            .filter_map(|n| {
                let host = n.kafka_host.clone()?;
                let port = n.kafka_port?;
                Some((n.id.clone(), KafkaNode { node_id: kafka_node_id(&n.id), host, port }))
            })
            .collect();
        brokers.push((self.name.clone(), self.this.clone()));
        brokers.sort_by(|a, b| a.0.cmp(&b.0));
        for pair in brokers.windows(2) {
            if pair[0].1.node_id == pair[1].1.node_id {
                warn!(
                    node = %pair[0].0,
                    other = %pair[1].0,
                    kafka_node_id = pair[0].1.node_id,
                    "two service nodes have the same Kafka broker id: rename one (node_id)"
                );
            }
        }
        // The lease record naming this node while its own lease task says otherwise is stale (the renewal
        // failed): this node is then not the coordinator, and neither is anyone else yet.
        let other_coordinator = owner
            .filter(|o| *o != self.name)
            .and_then(|o| brokers.iter().find(|(name, _)| name == o).map(|(_, node)| node.clone()));
        if let Some(o) = owner
            && o != self.name
            && other_coordinator.is_none()
        {
            debug!(owner = o, "the Kafka coordinator lease holder has no live Kafka endpoint");
        }
        let brokers = brokers.into_iter().map(|(_, node)| node).collect();
        let mut snapshot = self.snapshot.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        *snapshot = Snapshot { brokers, other_coordinator };
    }

    /// Reads the registry and the lease once and updates the snapshot.
    pub async fn refresh(&self, leases: &Leases, nodes: &Nodes) -> Result<(), MetaError> {
        let live = nodes.live().await?;
        let owner = leases.owner(COORDINATOR_LEASE).await?;
        self.update(&live, owner.as_ref().map(|record| record.owner.as_str()));
        Ok(())
    }

    /// Refreshes the snapshot every [`REFRESH_EVERY`] until `stop` turns true. A failed refresh keeps the
    /// previous snapshot (clients then retry against what it says) and is retried at the next tick.
    pub fn spawn_refresh(
        self: &Arc<Self>,
        leases: Arc<Leases>,
        nodes: Arc<Nodes>,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let view = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(REFRESH_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // `None` once the lease task is gone (shutdown): the timer alone drives refreshes then.
            let mut holding = Some(view.holding.clone());
            let mut failing = false;
            loop {
                let lease_changed = async {
                    match holding.as_mut() {
                        Some(h) => h.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = ticks.tick() => {}
                    // Taking or losing the lease shows in FindCoordinator answers at once.
                    changed = lease_changed => {
                        if changed {
                            let held = holding.as_ref().is_some_and(|h| *h.borrow());
                            info!(node = %view.name, held, lease = COORDINATOR_LEASE, "Kafka group coordination lease changed");
                        } else {
                            holding = None;
                        }
                    }
                    _ = stop.wait_for(|s| *s) => return,
                }
                match view.refresh(&leases, &nodes).await {
                    Ok(()) => {
                        if failing {
                            info!("Kafka cluster view refreshed again");
                        }
                        failing = false;
                    }
                    Err(e) => {
                        if !failing {
                            warn!(error = %e, "refreshing the Kafka cluster view failed; keeping the last one");
                        }
                        failing = true;
                    }
                }
            }
        })
    }
}

impl Cluster for ClusterView {
    fn this_node(&self) -> KafkaNode {
        self.this.clone()
    }

    fn brokers(&self) -> Vec<KafkaNode> {
        self.snapshot.read().unwrap_or_else(|poisoned| poisoned.into_inner()).brokers.clone()
    }

    fn coordinator(&self) -> Option<KafkaNode> {
        if self.is_coordinator() {
            return Some(self.this.clone());
        }
        self.snapshot.read().unwrap_or_else(|poisoned| poisoned.into_inner()).other_coordinator.clone()
    }

    fn is_coordinator(&self) -> bool {
        *self.holding.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, port: Option<u16>) -> NodeInfo {
        NodeInfo {
            id: id.to_owned(),
            http_url: None,
            kafka_host: port.map(|_| "127.0.0.1".to_owned()),
            kafka_port: port,
            seen_ms: 0,
        }
    }

    #[test]
    fn node_ids_are_fnv1a_masked_to_non_negative_i32() {
        // FNV-1a 32 reference values: "" -> 0x811c9dc5, "a" -> 0xe40c292c.
        assert_eq!(kafka_node_id(""), 0x011c_9dc5);
        assert_eq!(kafka_node_id("a"), 0x640c_292c);
        assert_eq!(kafka_node_id("east-1"), kafka_node_id("east-1"), "stable");
        assert_ne!(kafka_node_id("east-1"), kafka_node_id("east-2"));
        for name in ["", "x", "node-ffffff", "a very long node name with spaces"] {
            assert!(kafka_node_id(name) >= 0);
        }
    }

    #[test]
    fn a_single_node_is_every_broker_and_the_coordinator() {
        let node = KafkaNode { node_id: 1, host: "h".into(), port: 9092 };
        let single = SingleNode::new(node.clone());
        assert_eq!(single.brokers(), vec![node.clone()]);
        assert_eq!(single.coordinator(), Some(node));
        assert!(single.is_coordinator());
    }

    #[test]
    fn before_the_first_refresh_the_view_knows_only_itself_and_no_coordinator() {
        let (_holding, rx) = watch::channel(false);
        let view = ClusterView::new("a", "127.0.0.1", 9001, rx);
        assert_eq!(view.this_node().node_id, kafka_node_id("a"));
        assert_eq!(view.brokers(), vec![view.this_node()]);
        assert_eq!(view.coordinator(), None);
        assert!(!view.is_coordinator());
    }

    #[test]
    fn the_view_lists_live_nodes_with_kafka_and_names_the_lease_holder() {
        let (_holding, rx) = watch::channel(false);
        let view = ClusterView::new("b", "127.0.0.1", 9002, rx);
        view.update(&[info("a", Some(9001)), info("b", Some(9002)), info("c", None)], Some("a"));
        let ids: Vec<i32> = view.brokers().iter().map(|b| b.node_id).collect();
        assert_eq!(ids, vec![kafka_node_id("a"), kafka_node_id("b")], "ordered by name, no Kafka-less node");
        let coordinator = view.coordinator().expect("a holds the lease");
        assert_eq!((coordinator.node_id, coordinator.port), (kafka_node_id("a"), 9001));
        assert!(!view.is_coordinator());

        // The holder is gone from the registry (or has no Kafka endpoint): nobody to send clients to.
        view.update(&[info("b", Some(9002)), info("c", None)], Some("c"));
        assert_eq!(view.coordinator(), None);
        view.update(&[info("b", Some(9002))], None);
        assert_eq!(view.coordinator(), None);
    }

    #[test]
    fn this_node_always_appears_even_before_it_announced_itself() {
        let (_holding, rx) = watch::channel(false);
        let view = ClusterView::new("b", "127.0.0.1", 9002, rx);
        view.update(&[info("a", Some(9001))], None);
        assert_eq!(view.brokers().len(), 2);
        assert!(view.brokers().contains(&view.this_node()));
    }

    #[test]
    fn coordination_follows_this_nodes_own_lease_not_the_snapshot() {
        let (holding, rx) = watch::channel(false);
        let view = ClusterView::new("a", "127.0.0.1", 9001, rx);
        // The record still names this node, but its lease task says the lease may be lost.
        view.update(&[info("a", Some(9001)), info("b", Some(9002))], Some("a"));
        assert!(!view.is_coordinator());
        assert_eq!(view.coordinator(), None, "a stale record naming this node is nobody");

        holding.send_replace(true);
        assert!(view.is_coordinator());
        assert_eq!(view.coordinator(), Some(view.this_node()));
        // Even while the snapshot still names another node (the takeover is newer than the last refresh).
        view.update(&[info("a", Some(9001)), info("b", Some(9002))], Some("b"));
        assert_eq!(view.coordinator(), Some(view.this_node()));

        holding.send_replace(false);
        assert_eq!(view.coordinator().map(|c| c.node_id), Some(kafka_node_id("b")));
    }
}
