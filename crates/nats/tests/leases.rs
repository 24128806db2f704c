//! Leases ([`esgf_events_meta::lease`]) on the JetStream state store of a real 3-node cluster: two service
//! nodes, each connected through a different NATS node, contend for one lease; the holder then stops renewing
//! (as a node that died or lost its connection does) and the other one takes over within the lease time,
//! never while the first still believes it holds it. Needs `nats-server` (on PATH or in `$NATS_SERVER_BIN`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{NatsCluster, connect, store_config};
use esgf_events_meta::MetaStore;
use esgf_events_meta::lease::{LeaseConfig, Leases, NodeInfo, Nodes};
use esgf_events_meta::testing::Severable;
use esgf_events_nats::JetStreamMeta;
use tokio::sync::watch;

const CONFIG: LeaseConfig =
    LeaseConfig { ttl: Duration::from_millis(2000), renew_every: Duration::from_millis(400) };

async fn wait_for(rx: &mut watch::Receiver<bool>, want: bool, within: Duration, what: &str) -> Instant {
    tokio::time::timeout(within, rx.wait_for(|v| *v == want))
        .await
        .unwrap_or_else(|_| panic!("{what} within {within:?}"))
        .expect("lease task ended");
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_moves_to_another_node_when_the_holder_stops_renewing() {
    let cluster = NatsCluster::start().await;
    // A's view of the state store can be cut off, as if the node died or lost its network.
    let a_meta = Arc::new(Severable::new(
        JetStreamMeta::open(connect(&cluster, &[0]).await, store_config(&cluster)).await.expect("open"),
    ));
    let b_meta: Arc<dyn MetaStore> = Arc::new(
        JetStreamMeta::open(connect(&cluster, &[2]).await, store_config(&cluster)).await.expect("open"),
    );
    let a = Leases::new(a_meta.clone(), "node-a", CONFIG);
    let b = Leases::new(Arc::clone(&b_meta), "node-b", CONFIG);
    let (_stop_tx, stop) = watch::channel(false);

    let mut ra = a.hold("webhooks", stop.clone());
    wait_for(&mut ra, true, Duration::from_secs(10), "node a takes the free lease").await;
    let mut rb = b.hold("webhooks", stop.clone());
    // Several renewal rounds: b never gets a lease a keeps renewing.
    tokio::time::sleep(CONFIG.ttl + CONFIG.renew_every).await;
    assert!(*ra.borrow() && !*rb.borrow(), "the live holder kept the lease");
    let held = b.owner("webhooks").await.expect("owner").expect("held");
    assert_eq!(held.owner, "node-a", "seen from the other NATS node");
    let first_epoch = held.epoch;

    // Node a stops renewing.
    a_meta.sever(true);
    let cut = Instant::now();
    let a_gave_up = wait_for(&mut ra, false, CONFIG.ttl, "node a gives the lease up before it expires").await;
    let b_took = wait_for(&mut rb, true, CONFIG.ttl * 3, "node b takes the lease over").await;
    assert!(a_gave_up < b_took, "both nodes believed they held the lease at once");
    let takeover = b_took - cut;
    assert!(
        takeover >= CONFIG.ttl - CONFIG.renew_every * 2,
        "taken over before the lease could expire: {takeover:?}"
    );
    assert!(takeover <= CONFIG.ttl + CONFIG.renew_every * 3, "took {takeover:?} to take over");
    let now = b.owner("webhooks").await.expect("owner").expect("held");
    assert_eq!((now.owner.as_str(), now.epoch), ("node-b", first_epoch + 1));
    eprintln!("lease takeover after the holder stopped renewing: {takeover:?} (ttl {:?})", CONFIG.ttl);

    // Node a comes back: it does not get the lease back while b renews it.
    a_meta.sever(false);
    tokio::time::sleep(CONFIG.renew_every * 3).await;
    assert!(!*ra.borrow() && *rb.borrow(), "the returning node waited its turn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_cleanly_hands_its_lease_over_at_once_and_leaves_the_registry() {
    let cluster = NatsCluster::start().await;
    let open = |node: usize| {
        let cluster = &cluster;
        async move {
            let meta: Arc<dyn MetaStore> = Arc::new(
                JetStreamMeta::open(connect(cluster, &[node]).await, store_config(cluster))
                    .await
                    .expect("open"),
            );
            meta
        }
    };
    let (a_meta, b_meta) = (open(0).await, open(1).await);
    // A long ttl: a takeover within the bound below can only come from the release.
    let config = LeaseConfig { ttl: Duration::from_secs(30), renew_every: Duration::from_millis(300) };
    let (a, b) = (
        Leases::new(Arc::clone(&a_meta), "node-a", config),
        Leases::new(Arc::clone(&b_meta), "node-b", config),
    );
    let (a_nodes, b_nodes) =
        (Nodes::new(Arc::clone(&a_meta), config), Nodes::new(Arc::clone(&b_meta), config));
    let (stop_a, a_stopped) = watch::channel(false);
    let (_stop_b, b_stopped) = watch::channel(false);
    let info = |id: &str, port: u16| NodeInfo {
        id: id.into(),
        http_url: Some(format!("http://127.0.0.1:{port}")),
        kafka_host: Some("127.0.0.1".into()),
        kafka_port: Some(port + 1),
        seen_ms: 0,
    };
    a_nodes.announce(info("node-a", 8080), a_stopped.clone());
    b_nodes.announce(info("node-b", 8090), b_stopped.clone());
    let mut ra = a.hold("mail", a_stopped);
    wait_for(&mut ra, true, Duration::from_secs(10), "node a takes the lease").await;
    let mut rb = b.hold("mail", b_stopped);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live: Vec<String> = b_nodes.live().await.expect("live").into_iter().map(|n| n.id).collect();
        if live == ["node-a", "node-b"] {
            break;
        }
        assert!(Instant::now() < deadline, "both nodes announced; saw {live:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = b_nodes.get("node-a").await.expect("get").expect("announced");
    assert_eq!(seen.kafka_port, Some(8081));

    stop_a.send_replace(true);
    let stopped = Instant::now();
    assert!(a.stopped(Duration::from_secs(5)).await && a_nodes.stopped(Duration::from_secs(5)).await);
    let b_took = wait_for(&mut rb, true, Duration::from_secs(5), "node b takes the released lease").await;
    assert!(b_took - stopped < Duration::from_secs(2), "hand-over took {:?}", b_took - stopped);
    let live: Vec<String> = b_nodes.live().await.expect("live").into_iter().map(|n| n.id).collect();
    assert_eq!(live, ["node-b"], "a stopped node leaves the registry");
}
