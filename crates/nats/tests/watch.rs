//! `MetaStore::watch` on the JetStream state store: two stores connected through different nodes of a real
//! 3-node cluster, as two service nodes would be; what one writes, the other is told about, after it is
//! readable. Needs `nats-server` >= 2.12 (on PATH or in `$NATS_SERVER_BIN`); without it the test fails.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{NatsCluster, connect, store_config};
use esgf_events_meta::{Change, MetaStore, Write};
use esgf_events_nats::JetStreamMeta;
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout_at};

/// How long a change may take to reach the other store (the service promises about a second).
const DEADLINE: Duration = Duration::from_secs(5);

/// The next notification about `collection`/`key`, skipping others (and the initial `All`).
async fn next_about(rx: &mut broadcast::Receiver<Change>, collection: &str, key: &str) -> Change {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match timeout_at(deadline, rx.recv()).await {
            Err(_) => panic!("no notification about {collection}/{key} within {DEADLINE:?}"),
            Ok(Err(e)) => panic!("watch closed or lagged: {e}"),
            Ok(Ok(change @ Change::Key { .. }))
                if change == Change::Key { collection: collection.into(), key: key.into() } =>
            {
                return change;
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// Waits for the `All` a new follower sends once it is subscribed: from then on no change is missed.
async fn established(rx: &mut broadcast::Receiver<Change>) {
    match timeout_at(Instant::now() + DEADLINE, rx.recv()).await {
        Err(_) => panic!("the watch was not established within {DEADLINE:?}"),
        Ok(Ok(Change::All)) => {}
        Ok(other) => panic!("before the watch was established: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_node_is_reported_to_a_store_on_another_node_once_readable() {
    let cluster = NatsCluster::start().await;
    let writer =
        JetStreamMeta::open(connect(&cluster, &[0]).await, store_config(&cluster)).await.expect("open");
    let follower =
        JetStreamMeta::open(connect(&cluster, &[2]).await, store_config(&cluster)).await.expect("open");
    let mut rx = follower.watch(&[]).expect("JetStream stores can be watched");
    established(&mut rx).await;

    writer.put("principals", "alice.b", Bytes::from_static(b"v1")).await.expect("put");
    next_about(&mut rx, "principals", "alice.b").await;
    assert_eq!(
        follower.get("principals", "alice.b").await.expect("get"),
        Some(Bytes::from_static(b"v1")),
        "readable on the other node once reported"
    );

    // A multi-key transaction reports every key; a delete is reported too.
    writer
        .write(vec![
            Write { collection: "topic_acl", key: "t1".into(), value: Some(Bytes::from_static(b"x")) },
            Write { collection: "principals", key: "alice.b".into(), value: None },
        ])
        .await
        .expect("write");
    next_about(&mut rx, "topic_acl", "t1").await;
    next_about(&mut rx, "principals", "alice.b").await;
    assert_eq!(follower.get("principals", "alice.b").await.expect("get"), None);

    // A watch of some collections hears of nothing else (log appends are never reported).
    let mut some = follower.watch(&["maintenance"]).expect("a filtered watch");
    established(&mut some).await;
    follower.append("audit", Bytes::from_static(b"entry")).await.expect("append");
    writer.put("event_ids", "t\0e1", Bytes::from_static(b"0 0 0")).await.expect("put");
    writer.put("maintenance", "w1", Bytes::from_static(b"{}")).await.expect("put");
    let first = timeout_at(Instant::now() + DEADLINE, some.recv()).await.expect("in time").expect("open");
    assert_eq!(first, Change::Key { collection: "maintenance".into(), key: "w1".into() });
    // The unfiltered watch saw the other key first (changes arrive in store order).
    next_about(&mut rx, "event_ids", "t\0e1").await;
    next_about(&mut rx, "maintenance", "w1").await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_carries_on_after_the_node_it_is_connected_to_is_killed() {
    let mut cluster = NatsCluster::start().await;
    let writer =
        JetStreamMeta::open(connect(&cluster, &[2]).await, store_config(&cluster)).await.expect("open");
    let client = connect(&cluster, &[0, 1]).await;
    let port = client.server_info().port;
    let victim = (0..2)
        .find(|&i| cluster.url(i).ends_with(&format!(":{port}")))
        .unwrap_or_else(|| panic!("the follower is connected to port {port}, not to node 0 or 1"));
    let follower = JetStreamMeta::open(client, store_config(&cluster)).await.expect("open");
    let mut rx = follower.watch(&["principals"]).expect("watch");
    established(&mut rx).await;
    writer.put("principals", "before", Bytes::from_static(b"1")).await.expect("put");
    next_about(&mut rx, "principals", "before").await;

    cluster.kill(victim);
    writer.put("principals", "during", Bytes::from_static(b"2")).await.expect("put with one node down");
    // The change made while the follower reconnected is replayed, or the follower says it may have missed
    // changes: either way a cache following it ends up right.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match timeout_at(deadline, rx.recv()).await {
            Err(_) => panic!("neither the change nor a gap was reported after the node was killed"),
            Ok(Err(e)) => panic!("watch closed: {e}"),
            Ok(Ok(Change::All)) => break,
            Ok(Ok(Change::Key { key, .. })) if key == "during" => break,
            Ok(Ok(_)) => {}
        }
    }
    // And it keeps following.
    writer.put("principals", "after", Bytes::from_static(b"3")).await.expect("put");
    next_about(&mut rx, "principals", "after").await;
    drop(cluster);
}
