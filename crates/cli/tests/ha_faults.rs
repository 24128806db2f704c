//! High availability under faults: two real `esgf-events serve` processes on one real 3-node NATS JetStream
//! cluster (`esgf_events_nats::testing`, the shipped `deploy/nats` configs), with publishers running while nodes
//! are SIGKILLed.
//!
//! Publishers: two HTTP publishers (single events and batches of three, keyed by `data.payload.item_id`) and one
//! Kafka producer (librdkafka, `acks=all`), each sending one request at a time, round-robin over both service
//! nodes and moving to the other node whenever a request fails. Every payload carries a unique id per attempt,
//! and every acknowledgement is recorded as (partition, offset, id). An attempt that was not acknowledged (a
//! timeout, a 503 during a leader election, a killed node) may or may not be in the log: that is at-least-once,
//! and the Kafka producer has retries off so that librdkafka never sends an acknowledged record twice.
//!
//! Afterwards the log must hold every acknowledged event exactly once, at its acknowledged offset, each
//! publisher's events in the order they were acknowledged, with dense offsets; no attempt appears twice; an SSE
//! consumer that reconnects to the surviving node with `Last-Event-ID` and a webhook receiver end with exactly
//! the log's sequence per partition.
//!
//! Tests: NATS node and service node kills under load; the webhook lease owner's death (the `webhooks` lease
//! moves to the other node within the lease ttl, measured and printed); East/West, where a site is one NATS node
//! plus one service node and the third NATS node is a witness: one whole site dies and the other carries on.
//!
//! Waiting is by polling for progress (acknowledgements arriving, a node rejoining), never a fixed sleep; the
//! deadlines are generous for a loaded 2-core machine. Without `nats-server` (>= 2.12) the tests fail.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::nats::{ServiceNode, runtime};
use common::{PublishResponse, Server, client_builder, operator_token, poll_until};
use esgf_events_nats::testing::NatsCluster;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const TOPIC: &str = "ha.faults";
const PARTITIONS: u32 = 3;
/// Keys the publishers spread their events over (so every partition gets some).
const KEYS: u64 = 12;

/// How long the publishers may take to show progress after a fault (elections, reconnections, a Kafka
/// producer noticing its node is gone) before the test fails.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(40);
/// Acknowledgements of each kind (HTTP, Kafka) that count as "publishing continues".
const PROGRESS_ACKS: usize = 5;
/// How long consumers may take to catch up with the log once publishing stopped.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(40);
/// One publish request; a failover to the other node follows when it runs out.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Between one publisher's requests: keeps a 2-core machine responsive for the servers under test.
const PACE: Duration = Duration::from_millis(15);
/// After a failed request, before the next one (so a publisher with no live node does not spin).
const ERROR_PAUSE: Duration = Duration::from_millis(50);

fn poll_interval() -> Duration {
    Duration::from_millis(50)
}

// --- the deployment ------------------------------------------------------------------------------------

/// Where a service node takes requests.
#[derive(Debug, Clone)]
struct Endpoint {
    http: String,
    kafka: String,
}

fn endpoint(server: &Server) -> Endpoint {
    Endpoint { http: server.url(), kafka: server.kafka_addr() }
}

/// A service node on `cluster` taking Kafka clients, its NATS URLs in the order given (local site first).
fn service_node(cluster: &NatsCluster, nats_nodes: &[usize]) -> ServiceNode {
    ServiceNode::on_nodes(cluster, nats_nodes).with_kafka()
}

/// One event: `id` is unique per publish attempt, the key comes from `data.payload.item_id`.
fn event_json(id: &str, key: &str) -> String {
    format!(r#"{{"id":"{id}","data":{{"payload":{{"item_id":"{key}"}}}}}}"#)
}

/// The `id` field of a stored event.
fn id_of(value: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(value).unwrap_or_else(|e| panic!("{e}: {value}"));
    json["id"].as_str().unwrap_or_else(|| panic!("no id in {value}")).to_owned()
}

// --- publishers ----------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Ack {
    /// `http0`, `http1`, `kafka`: each publisher sends one request at a time.
    publisher: String,
    partition: u32,
    offset: u64,
    id: String,
    /// The service node that acknowledged it.
    node: usize,
    at: Instant,
}

impl Ack {
    fn is_kafka(&self) -> bool {
        self.publisher == "kafka"
    }
}

/// Every acknowledgement, in the order the publishers received them.
#[derive(Default)]
struct Ledger {
    acks: Mutex<Vec<Ack>>,
    failures: AtomicUsize,
    /// Failed attempts by what the publisher saw (`HTTP 503`, `connect`, `kafka`, ...), for the report.
    failure_kinds: Mutex<BTreeMap<String, usize>>,
}

impl Ledger {
    fn push(&self, ack: Ack) {
        self.acks.lock().unwrap_or_else(PoisonError::into_inner).push(ack);
    }

    fn fail(&self, kind: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.failure_kinds.lock().unwrap_or_else(PoisonError::into_inner).entry(kind).or_default() += 1;
    }

    fn snapshot(&self) -> Vec<Ack> {
        self.acks.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn len(&self) -> usize {
        self.acks.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Per publisher, the longest time between `since` or one acknowledgement and the next: how long a fault
    /// at `since` held it up.
    fn longest_waits(&self, since: Instant) -> BTreeMap<String, Duration> {
        let acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
        let mut last: BTreeMap<String, Instant> = BTreeMap::new();
        let mut longest: BTreeMap<String, Duration> = BTreeMap::new();
        for ack in acks.iter().filter(|a| a.at > since) {
            let previous = last.insert(ack.publisher.clone(), ack.at).unwrap_or(since);
            let gap = longest.entry(ack.publisher.clone()).or_default();
            *gap = (*gap).max(ack.at - previous);
        }
        longest
    }

    /// (HTTP, Kafka) acknowledgements after position `from`, by `node` if given.
    fn since(&self, from: usize, node: Option<usize>) -> (usize, usize) {
        let acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = acks.iter().skip(from).filter(|a| node.is_none_or(|n| a.node == n));
        fresh.fold((0, 0), |(h, k), a| if a.is_kafka() { (h, k + 1) } else { (h + 1, k) })
    }
}

struct Publishers {
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    kafka: bool,
}

impl Publishers {
    /// Two HTTP publishers, and a Kafka producer if `kafka` is true.
    fn start(endpoints: &[Endpoint], runtime: &tokio::runtime::Runtime, kafka: bool) -> Publishers {
        let ledger = Arc::new(Ledger::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for n in 0..2 {
            let (endpoints, ledger, stop) = (endpoints.to_vec(), Arc::clone(&ledger), Arc::clone(&stop));
            threads.push(thread::spawn(move || http_publisher(n, &endpoints, &ledger, &stop)));
        }
        if kafka {
            let (endpoints, ledger, stop) = (endpoints.to_vec(), Arc::clone(&ledger), Arc::clone(&stop));
            let handle = runtime.handle().clone();
            threads.push(thread::spawn(move || kafka_publisher(&endpoints, &ledger, &stop, &handle)));
        }
        Publishers { ledger, stop, threads, kafka }
    }

    /// Waits until HTTP and Kafka publishers both got [`PROGRESS_ACKS`] new acknowledgements (from `node`, if
    /// given) after ledger position `from`; returns how long that took.
    fn wait_progress(&self, what: &str, from: usize, node: Option<usize>) -> Duration {
        let started = Instant::now();
        let ((http, kafka), took) = poll_until(PROGRESS_TIMEOUT, poll_interval(), what, || {
            let (http, kafka) = self.ledger.since(from, node);
            if http >= PROGRESS_ACKS && (kafka >= PROGRESS_ACKS || !self.kafka) {
                return Ok((http, kafka));
            }
            Err(format!(
                "publishing did not continue ({http} HTTP and {kafka} Kafka acknowledgements{}, {} failed \
                 attempts so far)",
                node.map(|n| format!(" by service node {n}")).unwrap_or_default(),
                self.ledger.failures.load(Ordering::Relaxed)
            ))
        });
        eprintln!(
            "{what}: publishing continues after {took:?} ({http} HTTP, {kafka} Kafka acks); longest wait for an \
             acknowledgement per publisher since: {:?}",
            self.ledger.longest_waits(started)
        );
        took
    }

    /// Stops publishing (each publisher finishes its request in flight) and returns every acknowledgement.
    fn stop(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("publisher thread");
        }
        let kinds = self.ledger.failure_kinds.lock().unwrap_or_else(PoisonError::into_inner).clone();
        eprintln!("failed publish attempts (not acknowledged): {kinds:?}");
        self.ledger.snapshot()
    }
}

fn http_publisher(n: usize, endpoints: &[Endpoint], ledger: &Ledger, stop: &AtomicBool) {
    let client =
        client_builder(Some(operator_token()), None).timeout(PUBLISH_TIMEOUT).build().expect("client");
    let publisher = format!("http{n}");
    let mut node = n % endpoints.len();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Two single events, then a batch of three.
        let size = if seq % 3 == 2 { 3 } else { 1 };
        let ids: Vec<String> = (0..size).map(|i| format!("{publisher}-{seq}-{i}")).collect();
        let events: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| event_json(id, &format!("item-{}", (seq + i as u64) % KEYS)))
            .collect();
        let body = if size == 1 { events[0].clone() } else { format!("[{}]", events.join(",")) };
        seq += 1;
        let url = format!("{}/v1/topics/{TOPIC}/events", endpoints[node].http);
        let sent =
            client.post(&url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body).send();
        let acked = match sent {
            Ok(response) if response.status() == reqwest::StatusCode::CREATED => {
                let text = response.text().unwrap_or_default();
                // A 201 whose body did not arrive complete is not an acknowledgement the client could act on.
                serde_json::from_str::<PublishResponse>(&text).map_err(|_| "HTTP 201, body cut".to_owned())
            }
            Ok(response) => Err(format!("HTTP {}", response.status().as_u16())),
            Err(e) if e.is_connect() => Err("HTTP connect".to_owned()),
            Err(e) if e.is_timeout() => Err("HTTP timeout".to_owned()),
            Err(_) => Err("HTTP connection lost".to_owned()),
        };
        match acked {
            Ok(answer) => {
                assert_eq!(answer.results.len(), ids.len(), "one placement per event");
                for (id, place) in ids.into_iter().zip(answer.results) {
                    ledger.push(Ack {
                        publisher: publisher.clone(),
                        partition: place.partition,
                        offset: place.offset,
                        id,
                        node,
                        at: Instant::now(),
                    });
                }
                thread::sleep(PACE);
            }
            Err(kind) => {
                ledger.fail(kind);
                thread::sleep(ERROR_PAUSE);
            }
        }
        // Round-robin, which is also the failover: the next request goes to the other node.
        node = (node + 1) % endpoints.len();
    }
}

fn kafka_producer(endpoint: &Endpoint) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &endpoint.kafka)
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "PLAIN")
        .set("sasl.username", "operator")
        .set("sasl.password", operator_token())
        .set("acks", "all")
        // No retries: a retried request whose first copy was written (its answer lost) would store an
        // acknowledged record twice. Idempotence would dedupe that within one node, but not across a failover.
        .set("enable.idempotence", "false")
        .set("retries", "0")
        .set("linger.ms", "2")
        .set("request.timeout.ms", "5000")
        .set("message.timeout.ms", "6000")
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .expect("Kafka producer")
}

/// Sends windows of four keyed records, waits for their delivery reports, and moves to the other service node
/// after any failure.
fn kafka_publisher(
    endpoints: &[Endpoint],
    ledger: &Ledger,
    stop: &AtomicBool,
    runtime: &tokio::runtime::Handle,
) {
    let mut node = 0;
    let mut producer = kafka_producer(&endpoints[node]);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut window = Vec::new();
        for _ in 0..4 {
            let id = format!("kafka-{seq}");
            let key = format!("item-{}", seq % KEYS);
            let value = event_json(&id, &key);
            seq += 1;
            match producer.send_result(FutureRecord::to(TOPIC).key(&key).payload(&value)) {
                Ok(delivery) => window.push((id, delivery)),
                Err((e, _)) => ledger.fail(format!("Kafka enqueue: {e}")),
            }
        }
        let mut failed = false;
        for (id, delivery) in window {
            match runtime.block_on(delivery) {
                Ok(Ok(report)) => ledger.push(Ack {
                    publisher: "kafka".to_owned(),
                    partition: u32::try_from(report.partition).expect("partition"),
                    offset: u64::try_from(report.offset).expect("offset"),
                    id,
                    node,
                    at: Instant::now(),
                }),
                Ok(Err((e, _))) => {
                    ledger.fail(format!("Kafka: {e}"));
                    failed = true;
                }
                Err(_) => {
                    ledger.fail("Kafka: cancelled".to_owned());
                    failed = true;
                }
            }
        }
        if failed {
            node = (node + 1) % endpoints.len();
            producer = kafka_producer(&endpoints[node]);
            thread::sleep(ERROR_PAUSE);
        } else {
            thread::sleep(PACE);
        }
    }
}

// --- consumers -----------------------------------------------------------------------------------------

/// What an SSE consumer received: (partition, offset, id) in arrival order, and how often it reconnected.
#[derive(Default)]
struct SseLog {
    events: Mutex<Vec<(u32, u64, String)>>,
    /// Events whose cursor did not advance exactly one partition by exactly one.
    anomalies: Mutex<Vec<String>>,
    reconnects: AtomicUsize,
    /// Connections by node, in order (e.g. [0, 0, 1]).
    nodes: Mutex<Vec<usize>>,
}

impl SseLog {
    fn len(&self) -> usize {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// Parses a stream cursor `0-42.1-17` into next offsets by partition.
fn parse_cursor(text: &str) -> BTreeMap<u32, u64> {
    text.split('.')
        .map(|entry| {
            let (p, o) = entry.split_once('-').unwrap_or_else(|| panic!("cursor {text:?}"));
            (p.parse().expect("cursor partition"), o.parse().expect("cursor offset"))
        })
        .collect()
}

/// Follows the topic from the beginning over SSE, starting at service node `first`; whenever the stream ends
/// or fails it reconnects to the next node with `Last-Event-ID`, until `stop`.
fn sse_consumer(endpoints: Vec<Endpoint>, first: usize, log: Arc<SseLog>, stop: Arc<AtomicBool>) {
    // No overall timeout: the stream is meant to stay open. A killed server closes its sockets.
    let client = client_builder(Some(operator_token()), None).timeout(None).build().expect("client");
    let mut node = first;
    let mut cursor: Option<String> = None;
    let mut position: BTreeMap<u32, u64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    while !stop.load(Ordering::Relaxed) {
        let url = format!("{}/v1/topics/{TOPIC}/stream", endpoints[node].http);
        let request = match &cursor {
            Some(id) => client.get(&url).header("Last-Event-ID", id.as_str()),
            None => client.get(format!("{url}?from=beginning")),
        };
        log.nodes.lock().unwrap_or_else(PoisonError::into_inner).push(node);
        if let Ok(response) = request.send()
            && response.status() == reqwest::StatusCode::OK
        {
            let (mut id, mut data) = (None::<String>, None::<String>);
            for line in BufReader::new(response).lines() {
                let Ok(line) = line else { break };
                if let Some(value) = line.strip_prefix("id:") {
                    id = Some(value.trim().to_owned());
                } else if let Some(value) = line.strip_prefix("data:") {
                    data = Some(value.trim().to_owned());
                } else if line.is_empty()
                    && let (Some(event_id), Some(body)) = (id.take(), data.take())
                {
                    let next = parse_cursor(&event_id);
                    let moved: Vec<(u32, u64)> = next
                        .iter()
                        .filter(|(p, o)| position.get(p) != Some(o))
                        .map(|(&p, &o)| (p, o))
                        .collect();
                    let at = match moved.as_slice() {
                        [(p, o)] if position.get(p).map(|old| old + 1) == Some(*o) => Some((*p, *o - 1)),
                        _ => None,
                    };
                    match at {
                        Some((p, offset)) => log
                            .events
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((p, offset, id_of(&body))),
                        None => log
                            .anomalies
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(format!("cursor {event_id} after {position:?}")),
                    }
                    position = next;
                    cursor = Some(event_id);
                }
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        log.reconnects.fetch_add(1, Ordering::Relaxed);
        node = (node + 1) % endpoints.len();
        thread::sleep(ERROR_PAUSE);
    }
}

/// One webhook request as the receiver got it.
#[derive(Debug, Clone)]
struct Delivery {
    partition: u32,
    offset: u64,
    id: String,
    at: Instant,
}

/// A webhook receiver on 127.0.0.1: records every delivery, redeliveries included, and answers 204.
#[derive(Default)]
struct Receiver {
    deliveries: Mutex<Vec<Delivery>>,
}

async fn receive(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    // `webhook-id` is `{topic}-{partition}-{offset}`, stable per event.
    let Some(webhook_id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut parts = webhook_id.rsplitn(3, '-');
    let (Some(offset), Some(partition)) = (parts.next(), parts.next()) else {
        return StatusCode::BAD_REQUEST;
    };
    let (Ok(offset), Ok(partition)) = (offset.parse(), partition.parse()) else {
        return StatusCode::BAD_REQUEST;
    };
    let id = id_of(&String::from_utf8_lossy(&body));
    let delivery = Delivery { partition, offset, id, at: Instant::now() };
    receiver.deliveries.lock().unwrap_or_else(PoisonError::into_inner).push(delivery);
    StatusCode::NO_CONTENT
}

impl Receiver {
    /// Starts the receiver on `runtime`; returns it and its URL.
    fn start(runtime: &tokio::runtime::Runtime) -> (Arc<Receiver>, String) {
        let receiver = Arc::new(Receiver::default());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the webhook receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("receiver address"));
        let app = Router::new().route("/hook", post(receive)).with_state(Arc::clone(&receiver));
        runtime.spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn distinct(&self) -> usize {
        let deliveries = self.deliveries.lock().unwrap_or_else(PoisonError::into_inner);
        deliveries.iter().map(|d| (d.partition, d.offset)).collect::<HashSet<_>>().len()
    }

    /// When the first delivery after `after` arrived, if one did.
    fn first_after(&self, after: Instant) -> Option<Instant> {
        let deliveries = self.deliveries.lock().unwrap_or_else(PoisonError::into_inner);
        deliveries.iter().map(|d| d.at).find(|at| *at > after)
    }
}

/// Subscribes `url` to the topic from the beginning, as the operator.
fn subscribe(server: &Server, url: &str) {
    let body = serde_json::json!({ "topic": TOPIC, "url": url, "from": "beginning" }).to_string();
    let response = server.post_json("/v1/subscriptions", body);
    let status = response.status();
    assert_eq!(status, reqwest::StatusCode::CREATED, "subscribe: {}", response.text().unwrap_or_default());
}

// --- verification --------------------------------------------------------------------------------------

/// The ids of every event of every partition, read from `server` (dense offsets checked while reading).
fn read_log(server: &Server) -> Vec<Vec<String>> {
    (0..PARTITIONS)
        .map(|p| server.read_partition(TOPIC, p).iter().map(|e| id_of(e.value.get())).collect())
        .collect()
}

/// Every acknowledged event is in `log` exactly once, at its acknowledged offset; no attempt is there twice;
/// each publisher's acknowledged events of one partition are in the order it got the acknowledgements.
fn check_acknowledged(acks: &[Ack], log: &[Vec<String>]) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in log.iter().flatten() {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "events stored more than once: {twice:?}");
    for ack in acks {
        let stored = log[ack.partition as usize].get(ack.offset as usize);
        assert_eq!(
            stored.map(String::as_str),
            Some(ack.id.as_str()),
            "acknowledged {} at {}/{} (by node {}), the log has {stored:?} there",
            ack.id,
            ack.partition,
            ack.offset,
            ack.node
        );
    }
    let mut last: HashMap<(&str, u32), u64> = HashMap::new();
    for ack in acks {
        if let Some(previous) = last.insert((ack.publisher.as_str(), ack.partition), ack.offset) {
            assert!(
                ack.offset > previous,
                "{}: {} acknowledged at {}/{} after an earlier event at offset {previous}",
                ack.publisher,
                ack.id,
                ack.partition,
                ack.offset
            );
        }
    }
    let unacknowledged = log.iter().map(Vec::len).sum::<usize>() - acks.len();
    eprintln!(
        "log: {} events in partitions {:?}; {} acknowledged ({} over Kafka), {unacknowledged} stored without an \
         acknowledgement reaching the publisher",
        log.iter().map(Vec::len).sum::<usize>(),
        log.iter().map(Vec::len).collect::<Vec<_>>(),
        acks.len(),
        acks.iter().filter(|a| a.is_kafka()).count()
    );
}

/// Waits until `count()` reaches `want`, failing after [`CATCH_UP_TIMEOUT`].
fn wait_for_count(what: &str, want: usize, count: impl Fn() -> usize) {
    poll_until(CATCH_UP_TIMEOUT, poll_interval(), what, || {
        let have = count();
        if have >= want { Ok(()) } else { Err(format!("{have} of {want} events")) }
    });
}

/// The SSE consumer received exactly the log, partition by partition.
fn check_sse(sse: &SseLog, log: &[Vec<String>]) {
    let total = log.iter().map(Vec::len).sum();
    wait_for_count("SSE consumer", total, || sse.len());
    let anomalies = sse.anomalies.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert!(anomalies.is_empty(), "stream cursors skipped or repeated events: {anomalies:?}");
    let events = sse.events.lock().unwrap_or_else(PoisonError::into_inner).clone();
    for (p, expected) in log.iter().enumerate() {
        let got: Vec<(u64, &str)> =
            events.iter().filter(|(q, ..)| *q as usize == p).map(|(_, o, id)| (*o, id.as_str())).collect();
        let want: Vec<(u64, &str)> =
            expected.iter().enumerate().map(|(o, id)| (o as u64, id.as_str())).collect();
        assert!(got == want, "SSE partition {p}: {} events received, {} in the log", got.len(), want.len());
    }
}

/// How webhook delivery went, beyond completeness and order.
#[derive(Debug)]
struct WebhookStats {
    /// Deliveries of an event that had been delivered before.
    redelivered: usize,
    /// Per partition, how often delivery went back to an earlier offset: once per takeover by another node
    /// (which resumes from the last committed cursor). Two nodes delivering at the same time would make this
    /// grow with every event.
    replays: Vec<usize>,
}

/// The webhook receiver got every event of the log, in offset order per partition (first deliveries; later
/// copies of an event are redeliveries, which receivers drop by `webhook-id`).
fn check_webhooks(receiver: &Receiver, log: &[Vec<String>]) -> WebhookStats {
    let total = log.iter().map(Vec::len).sum();
    wait_for_count("webhook receiver", total, || receiver.distinct());
    let deliveries = receiver.deliveries();
    let mut first: HashSet<(u32, u64)> = HashSet::new();
    let mut order: Vec<Vec<(u64, String)>> = vec![Vec::new(); PARTITIONS as usize];
    let mut replays = vec![0; PARTITIONS as usize];
    let mut previous: HashMap<u32, u64> = HashMap::new();
    for d in &deliveries {
        if first.insert((d.partition, d.offset)) {
            order[d.partition as usize].push((d.offset, d.id.clone()));
        }
        if let Some(before) = previous.insert(d.partition, d.offset)
            && d.offset <= before
        {
            replays[d.partition as usize] += 1;
        }
    }
    for (p, expected) in log.iter().enumerate() {
        let want: Vec<(u64, String)> =
            expected.iter().cloned().enumerate().map(|(o, id)| (o as u64, id)).collect();
        assert!(
            order[p] == want,
            "webhook partition {p}: first deliveries out of order or different from the log ({} vs {})",
            order[p].len(),
            want.len()
        );
    }
    WebhookStats { redelivered: deliveries.len() - first.len(), replays }
}

/// Webhook delivery moved between nodes at most `moves` times, each time replaying at most the uncommitted
/// window.
fn check_single_deliverer(stats: &WebhookStats, moves: usize) {
    assert!(
        stats.replays.iter().all(|&r| r <= moves),
        "webhook delivery went back more often than the lease can have moved ({moves}): {stats:?}; two nodes \
         delivering at once?"
    );
    let window = moves * esgf_events_webhooks::COMMIT_EVERY * PARTITIONS as usize;
    assert!(stats.redelivered <= window, "more redeliveries than uncommitted events: {stats:?}");
}

/// The owner of lease `name` as `GET /v1/cluster` on `server` shows it, if the lease is held.
fn lease_owner(server: &Server, name: &str) -> Option<String> {
    let response = server.get("/v1/cluster");
    assert_eq!(response.status(), reqwest::StatusCode::OK, "GET /v1/cluster");
    let cluster: serde_json::Value = response.json().expect("cluster view");
    let leases = cluster["leases"].as_array().unwrap_or_else(|| panic!("no leases in {cluster}"));
    let lease = leases.iter().find(|l| l["name"] == name)?;
    lease["owner"].as_str().map(str::to_owned)
}

/// Polls until lease `name` has an owner other than `not`; returns it.
fn wait_lease_owner(server: &Server, name: &str, not: Option<&str>, timeout: Duration) -> String {
    let what = format!("lease {name} owned by another node than {not:?}");
    let (owner, _) = poll_until(timeout, poll_interval(), &what, || {
        let owner = lease_owner(server, name);
        match owner.as_deref() {
            Some(owner) if Some(owner) != not => Ok(owner.to_owned()),
            _ => Err(format!("owner {owner:?}")),
        }
    });
    owner
}

// --- tests ---------------------------------------------------------------------------------------------

#[test]
fn every_acknowledged_event_survives_nats_and_service_node_kills() {
    let runtime = runtime(2);
    let mut cluster = runtime.block_on(NatsCluster::start());
    let (receiver, hook_url) = Receiver::start(&runtime);
    let node = service_node(&cluster, &[0, 1, 2]);
    let mut a = node.start();
    a.create_topic(TOPIC, PARTITIONS);
    // Before the second node starts, so that it loads the subscription as well.
    subscribe(&a, &hook_url);
    let b = node.start();
    let endpoints = vec![endpoint(&a), endpoint(&b)];

    let sse = Arc::new(SseLog::default());
    let sse_stop = Arc::new(AtomicBool::new(false));
    {
        let (endpoints, sse, stop) = (endpoints.clone(), Arc::clone(&sse), Arc::clone(&sse_stop));
        thread::spawn(move || sse_consumer(endpoints, 0, sse, stop));
    }
    let publishers = Publishers::start(&endpoints, &runtime, true);
    publishers.wait_progress("start", 0, None);

    let victim = runtime.block_on(cluster.busiest_leader());
    cluster.kill(victim);
    publishers.wait_progress(&format!("NATS node {victim} killed"), publishers.ledger.len(), None);
    runtime.block_on(cluster.restart(victim));
    runtime.block_on(cluster.wait_rejoined(victim));
    publishers.wait_progress(&format!("NATS node {victim} rejoined"), publishers.ledger.len(), None);

    a.kill9();
    publishers.wait_progress("service node A killed", publishers.ledger.len(), Some(1));
    let acks = publishers.stop();

    let log = read_log(&b);
    check_acknowledged(&acks, &log);
    check_sse(&sse, &log);
    sse_stop.store(true, Ordering::Relaxed);
    let nodes = sse.nodes.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert!(nodes.contains(&1), "the SSE consumer never reconnected to the surviving node: {nodes:?}");
    let webhooks = check_webhooks(&receiver, &log);
    eprintln!("SSE connections by node {nodes:?}; webhooks: {webhooks:?}");
    // One node delivers at a time (the `webhooks` lease); it may move at each fault (the service node kill,
    // or a lease renewal that failed while NATS elected new leaders), replaying from the committed cursor.
    check_single_deliverer(&webhooks, 3);
    drop(b);
    drop(cluster);
}

#[test]
fn a_consumer_on_the_surviving_site_reads_everything_when_the_other_site_is_down() {
    // West = NATS node 0 + service node A, East = NATS node 1 + service node B; NATS node 2 is the witness at
    // a third location. Each service node lists its own site's NATS node first.
    let (west_nats, east_nats, witness) = (0, 1, 2);
    let runtime = runtime(2);
    let mut cluster = runtime.block_on(NatsCluster::start());
    let mut west = service_node(&cluster, &[west_nats, witness, east_nats]).start();
    west.create_topic(TOPIC, PARTITIONS);
    let east = service_node(&cluster, &[east_nats, witness, west_nats]).start();
    let endpoints = vec![endpoint(&west), endpoint(&east)];

    // One consumer at each site; West's moves to East when its site goes down.
    let sse_stop = Arc::new(AtomicBool::new(false));
    let consumers: Vec<Arc<SseLog>> = (0..2)
        .map(|site| {
            let sse = Arc::new(SseLog::default());
            let (endpoints, log, stop) = (endpoints.clone(), Arc::clone(&sse), Arc::clone(&sse_stop));
            thread::spawn(move || sse_consumer(endpoints, site, log, stop));
            sse
        })
        .collect();
    let publishers = Publishers::start(&endpoints, &runtime, true);
    publishers.wait_progress("both sites up", 0, None);

    // The whole West site goes down at once.
    cluster.kill(west_nats);
    west.kill9();
    publishers.wait_progress("West site down", publishers.ledger.len(), Some(1));
    let acks = publishers.stop();

    // With West still down: East reads every event, including those acknowledged by West before it died.
    let log = read_log(&east);
    check_acknowledged(&acks, &log);
    assert!(acks.iter().any(|a| a.node == 0), "West acknowledged events before the outage");
    for sse in &consumers {
        check_sse(sse, &log);
    }
    sse_stop.store(true, Ordering::Relaxed);
    let west_consumer = consumers[0].nodes.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(west_consumer.first(), Some(&0), "the West consumer started at West");
    assert!(west_consumer.contains(&1), "the West consumer moved to East: {west_consumer:?}");
    drop(east);
    drop(cluster);
}

#[test]
fn webhook_delivery_moves_to_the_surviving_node_within_the_lease_time() {
    // Short leases, so the test measures a takeover in seconds (the default is 10 s / 3 s).
    const TTL: Duration = Duration::from_secs(3);
    const RENEW: Duration = Duration::from_secs(1);
    // Beyond the ttl: the survivor's next acquisition attempt, starting its delivery tasks, a loaded machine.
    const MARGIN: Duration = Duration::from_secs(5);
    // A delivery the killed owner had already sent may still be read by the receiver just after the kill.
    const IN_FLIGHT: Duration = Duration::from_millis(200);
    let ids = ["node-a", "node-b"];

    let runtime = runtime(2);
    let cluster = runtime.block_on(NatsCluster::start());
    let (receiver, hook_url) = Receiver::start(&runtime);
    let mut servers: Vec<Server> = ids
        .iter()
        .map(|id| {
            let node = service_node(&cluster, &[0, 1, 2]).env("ESGF_EVENTS_NODE_ID", id);
            node.lease_timing("3s", "1s").start()
        })
        .collect();
    servers[0].create_topic(TOPIC, PARTITIONS);
    // Through the second node, after both started: the owner finds it by rescanning the shared state.
    subscribe(&servers[1], &hook_url);
    let endpoints: Vec<Endpoint> = servers.iter().map(endpoint).collect();
    let publishers = Publishers::start(&endpoints, &runtime, false);
    wait_for_count("webhook deliveries before the kill", 30, || receiver.distinct());

    let owner = wait_lease_owner(&servers[0], "webhooks", None, PROGRESS_TIMEOUT);
    let victim = ids.iter().position(|id| *id == owner).unwrap_or_else(|| panic!("unknown owner {owner}"));
    let survivor = 1 - victim;
    servers[victim].kill9();
    let killed = Instant::now();
    let (resumed, _) = poll_until(
        TTL + MARGIN + PROGRESS_TIMEOUT,
        Duration::from_millis(10),
        "webhook deliveries resuming",
        || receiver.first_after(killed + IN_FLIGHT).ok_or(format!("the owner {owner} was killed")),
    );
    let takeover = resumed - killed;
    eprintln!(
        "webhook lease takeover: deliveries resumed {takeover:?} after the owner ({owner}) was SIGKILLed \
         (lease ttl {TTL:?}, renewed every {RENEW:?})"
    );
    let new_owner = wait_lease_owner(&servers[survivor], "webhooks", Some(&owner), PROGRESS_TIMEOUT);
    assert_eq!(new_owner, ids[survivor], "the surviving node holds the lease");
    assert!(takeover < TTL + MARGIN, "takeover took {takeover:?}, lease ttl {TTL:?}");

    publishers.wait_progress("webhook owner killed", publishers.ledger.len(), Some(survivor));
    let acks = publishers.stop();
    let log = read_log(&servers[survivor]);
    check_acknowledged(&acks, &log);
    let webhooks = check_webhooks(&receiver, &log);
    eprintln!("webhooks: {webhooks:?}");
    check_single_deliverer(&webhooks, 1);
    drop(servers);
    drop(cluster);
}
