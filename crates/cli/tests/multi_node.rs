//! Two service nodes on one NATS JetStream cluster: the real binary twice, against a real 3-node cluster
//! (`esgf_events_nats::testing`). Both nodes are started before anything is changed, so what one node does
//! reaches the other only by following the shared state store, never by loading it at start-up.
//!
//! Changes made through one node must take effect on the other within [`PROPAGATION`]: access control
//! (registration, revocation), the topic catalogue (new topics, state changes) and maintenance windows.
//! Without `nats-server` (>= 2.12, on PATH or in `$NATS_SERVER_BIN`) the tests fail, they do not skip.

mod common;

use std::time::Duration;

use common::nats::{ServiceNode, start_cluster};
use common::{Server, assert_problem, client_with_token, poll_until};
use esgf_events_nats::testing::NatsCluster;
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};

/// How long a change made through one node may take to apply on the other.
const PROPAGATION: Duration = Duration::from_secs(2);

/// Between two probes of a poll.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// Two service nodes on one cluster. Fields drop in order: the nodes stop before the cluster does.
struct TwoNodes {
    a: Server,
    b: Server,
    _cluster: NatsCluster,
    _runtime: tokio::runtime::Runtime,
}

impl TwoNodes {
    fn start() -> TwoNodes {
        let (runtime, cluster) = start_cluster();
        let node = ServiceNode::on(&cluster);
        let a = node.start();
        let b = node.start();
        TwoNodes { a, b, _cluster: cluster, _runtime: runtime }
    }
}

/// Sends `request` until `done` accepts a response, for at most `limit`; returns that response and how
/// long it took. Panics with the last response if none was accepted in time.
fn poll(
    limit: Duration,
    what: &str,
    request: impl Fn() -> Response,
    done: impl Fn(&Response) -> bool,
) -> (Response, Duration) {
    poll_until(limit, PROBE_INTERVAL, what, || {
        let response = request();
        if done(&response) {
            return Ok(response);
        }
        let status = response.status();
        Err(format!("last answer HTTP {status}: {}", response.text().unwrap_or_default()))
    })
}

fn post(client: &Client, url: String, body: &Value) -> Response {
    client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .expect("POST")
}

fn patch(server: &Server, path: &str, body: &Value) -> Response {
    server
        .client()
        .patch(format!("{}{path}", server.url()))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .expect("PATCH")
}

#[test]
fn revoking_a_token_on_one_node_refuses_it_on_the_other() {
    let nodes = TwoNodes::start();
    let (a, b) = (&nodes.a, &nodes.b);
    const TOPIC: &str = "multi.revoke";
    a.create_topic(TOPIC, 1);

    // Registered through A (after B loaded its state): B learns of the producer by following A's change.
    let response =
        post(a.client(), format!("{}/v1/producers", a.url()), &json!({"name": "west", "topics": [TOPIC]}));
    assert_eq!(response.status(), StatusCode::CREATED);
    let registered: Value = response.json().expect("registration JSON");
    let token = registered["token"].as_str().expect("token in the registration").to_owned();
    let producer = client_with_token(&token);
    let publish_via_b = || post(&producer, format!("{}/v1/topics/{TOPIC}/events", b.url()), &json!({"n": 1}));
    poll(PROPAGATION, "a producer registered on A publishes through B", publish_via_b, |r| {
        r.status() == StatusCode::CREATED
    });

    let response = a.client().delete(format!("{}/v1/producers/west", a.url())).send().expect("DELETE");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (refused, took) = poll(PROPAGATION, "B refuses the token revoked on A", publish_via_b, |r| {
        r.status() == StatusCode::UNAUTHORIZED
    });
    assert_problem(refused, 401, "unauthenticated");
    eprintln!("revocation on A took effect on B after {took:?}");

    // The refusal lasts (no stale cache brought back), and A refuses it too.
    assert_eq!(publish_via_b().status(), StatusCode::UNAUTHORIZED);
    let via_a = post(&producer, format!("{}/v1/topics/{TOPIC}/events", a.url()), &json!({"n": 2}));
    assert_eq!(via_a.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn a_topic_created_on_one_node_is_readable_writable_and_governed_on_the_other() {
    let nodes = TwoNodes::start();
    let (a, b) = (&nodes.a, &nodes.b);
    const TOPIC: &str = "multi.topic";
    a.create_topic(TOPIC, 2);

    let listed = b.get("/v1/topics").text().expect("topic list");
    assert!(listed.contains(TOPIC), "B lists the topic created on A: {listed}");
    assert_eq!(b.describe(TOPIC)["partitions"], 2);
    let placed = b.publish(TOPIC, r#"{"via": "b"}"#);
    let on_a = a.read_partition(TOPIC, placed[0].partition);
    assert_eq!(on_a.len(), 1);
    assert_eq!(on_a[0].value.get(), r#"{"via": "b"}"#, "A reads what B appended");
    let more = a.publish(TOPIC, r#"{"via": "a"}"#);
    let on_b: Vec<String> =
        b.read_partition(TOPIC, more[0].partition).iter().map(|e| e.value.get().to_owned()).collect();
    assert!(on_b.contains(&r#"{"via": "a"}"#.to_owned()), "B reads what A appended: {on_b:?}");

    // A state change through A governs publishing through B.
    let response = patch(a, &format!("/v1/topics/{TOPIC}"), &json!({"state": "read-only"}));
    assert_eq!(response.status(), StatusCode::OK, "{}", response.text().unwrap_or_default());
    let (refused, took) = poll(
        PROPAGATION,
        "B refuses publishing to a topic A made read-only",
        || b.post_json(&format!("/v1/topics/{TOPIC}/events"), r#"{"late": true}"#),
        |r| r.status() == StatusCode::CONFLICT,
    );
    assert_problem(refused, 409, "topic-read-only");
    assert_eq!(b.describe(TOPIC)["state"], "read-only");
    eprintln!("topic state change on A took effect on B after {took:?}");
}

#[test]
fn a_forced_maintenance_window_scheduled_on_one_node_makes_the_other_answer_503() {
    let nodes = TwoNodes::start();
    let (a, b) = (&nodes.a, &nodes.b);
    const TOPIC: &str = "multi.maintenance";
    a.create_topic(TOPIC, 1);
    b.publish(TOPIC, r#"{"before": true}"#);

    let now = chrono::Utc::now();
    let iso = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let window = json!({
        "starts_at": iso(now - chrono::Duration::minutes(1)),
        "ends_at": iso(now + chrono::Duration::hours(1)),
        "mode": "read-only",
        "message": "emergency disk swap",
        "force": true,
    });
    let response = post(a.client(), format!("{}/v1/maintenance", a.url()), &window);
    assert_eq!(response.status(), StatusCode::CREATED, "{}", response.text().unwrap_or_default());

    let (refused, took) = poll(
        PROPAGATION,
        "B refuses writes during the window scheduled on A",
        || b.post_json(&format!("/v1/topics/{TOPIC}/events"), r#"{"during": true}"#),
        |r| r.status() == StatusCode::SERVICE_UNAVAILABLE,
    );
    assert_problem(refused, 503, "maintenance");
    eprintln!("maintenance window scheduled on A took effect on B after {took:?}");
    // Read-only mode: reads through B keep working.
    assert_eq!(b.read_partition(TOPIC, 0).len(), 1);
}
