//! The service on the NATS JetStream backend: the real binary against a real 3-node cluster (started from the
//! shipped `deploy/nats` configs by `esgf_events_nats::testing`, token authentication as they require).
//!
//! Service nodes keep no state of their own: after the first node is SIGKILLed, a second node on a different,
//! empty data directory sees every topic and every acknowledged event, at the same offsets, byte for byte.
//! Without `nats-server` (>= 2.12, on PATH or in `$NATS_SERVER_BIN`) the test fails, it does not skip.

mod common;

use common::nats::{ServiceNode, start_cluster};
use common::{EventOut, Server};
use esgf_events_nats::testing::TEST_TOKEN;

const TOPIC: &str = "nats.backend";
const PARTITIONS: u32 = 2;

/// (partition, offset, key, exact value bytes) of every event, partition by partition.
fn everything(server: &Server) -> Vec<(u32, u64, Option<String>, String)> {
    (0..PARTITIONS)
        .flat_map(|p| server.read_partition(TOPIC, p))
        .map(|e: EventOut| (e.partition, e.offset, e.key, e.value.get().to_owned()))
        .collect()
}

#[test]
fn a_second_service_node_on_an_empty_data_dir_reads_everything_the_first_acknowledged() {
    let (_runtime, cluster) = start_cluster();
    let urls = cluster.urls().join(",");
    let node = ServiceNode::on(&cluster);

    let mut first = node.start();
    let log = first.logs();
    assert!(log.contains(&urls), "the backend is logged at start-up:\n{log}");
    assert!(!log.contains(TEST_TOKEN), "the NATS token reached the log:\n{log}");
    assert!(!first.data_dir().join("state.redb").exists(), "no local state store on NATS");

    first.create_topic(TOPIC, PARTITIONS);
    let batch: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"n": {i}, "data": {{"payload": {{"item_id": "item-{}"}}}}}}"#, i % 5))
        .collect();
    let placed = first.publish(TOPIC, format!("[{}]", batch.join(",")));
    assert_eq!(placed.len(), batch.len());
    let single = first.publish(TOPIC, r#"{"single": true}"#);
    assert_eq!(single.len(), 1);

    let before = everything(&first);
    assert_eq!(before.len(), batch.len() + 1, "every acknowledged event reads back");
    for (event, place) in batch.iter().zip(&placed) {
        let found = before
            .iter()
            .find(|(p, o, _, _)| (*p, *o) == (place.partition, place.offset))
            .unwrap_or_else(|| panic!("no event at {}/{}", place.partition, place.offset));
        assert_eq!(&found.3, event, "stored byte for byte");
    }
    let first_dir = first.data_dir().to_owned();
    first.kill9();

    let second = node.start();
    assert_ne!(second.data_dir(), first_dir, "the second node has its own, empty data directory");
    let description = second.describe(TOPIC);
    assert_eq!(description["partitions"], PARTITIONS, "{description}");
    assert_eq!(everything(&second), before, "the second node reads exactly what the first acknowledged");

    // And it carries on where the first stopped: offsets stay dense across service nodes.
    let more = second.publish(TOPIC, r#"{"after": "failover"}"#);
    let partition_before = before.iter().filter(|(p, ..)| *p == more[0].partition).count() as u64;
    assert_eq!(more[0].offset, partition_before, "dense offsets across nodes");
    drop(second);
    drop(cluster);
}
