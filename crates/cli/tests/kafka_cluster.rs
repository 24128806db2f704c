//! Kafka consumer groups across two service nodes: two real `esgf-events serve` processes on one real 3-node
//! NATS JetStream cluster (`esgf_events_nats::testing`), and librdkafka consumers of one group, each bootstrapped
//! at a different node.
//!
//! One node at a time coordinates every group (the `kafka-coordinator` lease): the two consumers form one group
//! and split the partitions, wherever they connected. When the coordinator node is SIGKILLed, the other node
//! takes the lease once it expires, the surviving consumer rejoins there, gets every partition, and carries on
//! from the committed offsets (which are in the shared store): nothing committed is consumed again, nothing is
//! skipped. The one redelivery Kafka's at-least-once contract allows is of a record whose commit was refused
//! (it was consumed while the group was re-forming); the members report each commit's outcome, and any other
//! duplicate fails the test.
//!
//! The lease ttl is shortened to 3 s (renewal every 1 s) so the takeover is quick. Waiting is by polling (logs,
//! assignments, received records), never a fixed sleep. Without `nats-server` (>= 2.12) the test fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::nats::{ServiceNode, start_cluster};
use common::{Server, operator_token, poll_until};
use esgf_events_nats::testing::NatsCluster;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const TOPIC: &str = "kafka.cluster";
const PARTITIONS: i32 = 4;
const GROUP: &str = "split-group";
/// Records per partition before and after the coordinator dies.
const BEFORE: i64 = 10;
const AFTER: i64 = 5;

/// Generous for a loaded 2-core machine: group formation, a lease expiry plus a rejoin.
const WAIT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(50);

/// A service node taking Kafka clients, with short leases (3 s, renewed every 1 s).
fn start_node(cluster: &NatsCluster, node_id: &str) -> Server {
    ServiceNode::on(cluster).with_kafka().node_id(node_id).lease_timing("3s", "1s").start()
}

/// Waits until `server` logs that it acquired the Kafka coordinator lease.
fn wait_for_coordinator_lease(server: &Server, what: &str) {
    poll_until(WAIT, POLL, what, || {
        let log = server.logs();
        if log.lines().any(|l| l.contains("lease acquired") && l.contains("kafka-coordinator")) {
            Ok(())
        } else {
            Err(format!("did not take the kafka-coordinator lease:\n{log}"))
        }
    });
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "PLAIN")
        .set("sasl.username", "operator")
        .set("sasl.password", operator_token())
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "500");
    config
}

/// Produces `range` offsets' worth of records to every partition through `bootstrap`, acks=all.
fn produce(bootstrap: &str, phase: &str, count: i64) {
    let producer: ThreadedProducer<DefaultProducerContext> = client_config(bootstrap)
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("Kafka producer");
    for partition in 0..PARTITIONS {
        for i in 0..count {
            let value = format!(r#"{{"phase":"{phase}","partition":{partition},"i":{i}}}"#);
            producer
                .send(BaseRecord::<(), str>::to(TOPIC).partition(partition).payload(&value))
                .map_err(|(e, _)| e)
                .expect("queued");
        }
    }
    producer.flush(Duration::from_secs(60)).expect("every record acknowledged");
}

/// What a member reports for each record: (member, partition, offset, whether its commit was accepted).
type Report = (&'static str, i32, i64, bool);

/// A group member polling on its own thread: every record it receives is committed at once (synchronously)
/// and reported.
struct Member {
    name: &'static str,
    consumer: Arc<BaseConsumer>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Member {
    fn start(name: &'static str, bootstrap: &str, got: mpsc::Sender<Report>) -> Member {
        let consumer: BaseConsumer = client_config(bootstrap)
            .set("group.id", GROUP)
            .set("client.id", name)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("topic.metadata.refresh.interval.ms", "1000")
            .create()
            .expect("Kafka consumer");
        consumer.subscribe(&[TOPIC]).expect("subscribe");
        let consumer = Arc::new(consumer);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let consumer = Arc::clone(&consumer);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(message)) => {
                            let (partition, offset) = (message.partition(), message.offset());
                            let committed = match consumer.commit_message(&message, CommitMode::Sync) {
                                Ok(()) => true,
                                Err(e) => {
                                    eprintln!("{name}: commit of {partition}/{offset} refused: {e}");
                                    false
                                }
                            };
                            if got.send((name, partition, offset, committed)).is_err() {
                                return;
                            }
                        }
                        // Transient errors (a broker going away, a coordinator moving) are the point of the test.
                        Some(Err(e)) => eprintln!("{name}: {e}"),
                        None => {}
                    }
                }
            })
        };
        Member { name, consumer, stop, thread: Some(thread) }
    }

    fn assignment(&self) -> BTreeSet<i32> {
        self.consumer
            .assignment()
            .map(|list| list.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default()
    }

    /// Stops polling and closes the consumer on its own thread (its coordinator may be gone; closing must not
    /// hold the test up).
    fn abandon(mut self) -> JoinHandle<()> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take();
        let consumer = Arc::clone(&self.consumer);
        drop(self);
        thread::spawn(move || {
            if let Some(thread) = thread {
                let _ = thread.join();
            }
            drop(consumer);
        })
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Collects reports until `done` holds for everything received so far.
fn receive_until(
    got: &mpsc::Receiver<Report>,
    received: &mut Vec<Report>,
    what: &str,
    done: impl Fn(&[Report]) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(received) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{what}: timed out; received so far: {received:?}");
        if let Ok(report) = got.recv_timeout(left.min(Duration::from_millis(200))) {
            received.push(report);
        }
    }
}

/// The offsets each partition was received at, by any member, in order of arrival.
fn by_partition(received: &[Report]) -> BTreeMap<i32, Vec<i64>> {
    let mut map: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (_, partition, offset, _) in received {
        map.entry(*partition).or_default().push(*offset);
    }
    map
}

/// Every distinct offset of each partition once; panics on a record received again after its commit was
/// accepted (a redelivery must follow a delivery whose commit was refused).
fn without_refused_redeliveries(received: &[Report]) -> BTreeMap<i32, Vec<i64>> {
    let mut seen: BTreeMap<(i32, i64), bool> = BTreeMap::new();
    for (member, partition, offset, committed) in received {
        match seen.get(&(*partition, *offset)) {
            None => {}
            Some(true) => {
                panic!("{member} received {partition}/{offset} again after it was committed: {received:?}")
            }
            Some(false) => {
                eprintln!("{member}: {partition}/{offset} redelivered after its commit was refused")
            }
        }
        seen.insert((*partition, *offset), *committed);
    }
    let mut map: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (partition, offset) in seen.keys() {
        map.entry(*partition).or_default().push(*offset);
    }
    map
}

#[test]
fn one_group_spans_two_nodes_and_survives_the_coordinator_node_dying() {
    let (_runtime, cluster) = start_cluster();

    // The first node takes the coordinator lease before the second starts, so which node dies is known.
    let mut first = start_node(&cluster, "kafka-node-a");
    wait_for_coordinator_lease(&first, "the first node");
    let second = start_node(&cluster, "kafka-node-b");
    let (first_kafka, second_kafka) = (first.kafka_addr(), second.kafka_addr());
    first.create_topic(TOPIC, PARTITIONS as u32);

    let (reports, got) = mpsc::channel();
    let on_first = Member::start("on-first", &first_kafka, reports.clone());
    let on_second = Member::start("on-second", &second_kafka, reports);

    // One group, not two: the members split the partitions between them, whichever node they connected to.
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();
    poll_until(WAIT, POLL, "the consumers forming one group splitting the partitions", || {
        let (a, b) = (on_first.assignment(), on_second.assignment());
        if !a.is_empty()
            && !b.is_empty()
            && a.is_disjoint(&b)
            && a.union(&b).copied().collect::<BTreeSet<_>>() == all
        {
            Ok(())
        } else {
            Err(format!("{} has {a:?}, {} has {b:?}", on_first.name, on_second.name))
        }
    });
    let (first_share, second_share) = (on_first.assignment(), on_second.assignment());

    produce(&first_kafka, "before", BEFORE);
    let mut received = Vec::new();
    receive_until(&got, &mut received, "before the failover", |r| {
        r.len() as i64 >= BEFORE * i64::from(PARTITIONS)
    });
    // Give a duplicate (a partition consumed by both members) the chance to show up before judging.
    while let Ok(report) = got.recv_timeout(Duration::from_millis(500)) {
        received.push(report);
    }
    for (partition, offsets) in by_partition(&received) {
        assert_eq!(
            offsets,
            (0..BEFORE).collect::<Vec<_>>(),
            "partition {partition}: each record once, in order"
        );
    }
    assert!(received.iter().all(|r| r.3), "no commit is refused while the group is stable: {received:?}");
    for (member, partition, ..) in &received {
        let share = if *member == on_first.name { &first_share } else { &second_share };
        assert!(share.contains(partition), "{member} read partition {partition} outside its share {share:?}");
    }

    // The coordinator node dies, and the consumer that used it goes with it.
    first.kill9();
    let killed = Instant::now();
    let closing = on_first.abandon();
    wait_for_coordinator_lease(&second, "the surviving node");
    eprintln!("kafka-coordinator lease taken over {:?} after the SIGKILL", killed.elapsed());

    produce(&second_kafka, "after", AFTER);
    let mut after = Vec::new();
    receive_until(&got, &mut after, "after the failover", |r| {
        let distinct: BTreeSet<(i32, i64)> = r.iter().map(|(_, p, o, _)| (*p, *o)).collect();
        distinct.len() as i64 >= AFTER * i64::from(PARTITIONS)
    });
    while let Ok(report) = got.recv_timeout(Duration::from_millis(500)) {
        after.push(report);
    }
    assert!(
        after.iter().all(|(member, ..)| *member == on_second.name),
        "only the surviving consumer reads after the failover: {after:?}"
    );
    // It took over every partition, from the committed offsets: nothing again, nothing skipped.
    let expected: BTreeMap<i32, Vec<i64>> =
        (0..PARTITIONS).map(|p| (p, (BEFORE..BEFORE + AFTER).collect())).collect();
    eprintln!("the surviving consumer read every partition again {:?} after the SIGKILL", killed.elapsed());
    let after_failover = without_refused_redeliveries(&after);
    assert_eq!(after_failover, expected, "every partition continues from its committed offset");
    assert_eq!(on_second.assignment(), all, "the surviving consumer holds every partition");
    let log = second.logs();
    assert!(
        log.contains("now the Kafka group coordinator"),
        "the surviving node says it coordinates groups now:\n{log}"
    );

    drop(on_second);
    let _ = closing.join();
    drop(second);
    drop(cluster);
}
