//! Leases on one node (the embedded backend): the lone node takes every lease of its single-owner work, shows
//! them in `GET /v1/cluster`, and gets them back at once after a clean stop or a crash (no waiting out the
//! lease ttl). Takeover between nodes needs a shared backend: see `crates/nats/tests/leases.rs` and the
//! multi-node tests.

mod common;

use std::time::Duration;

use common::{Server, anonymous_client, poll_until};
use serde_json::Value;

/// Far less than the default lease ttl (10 s): a restarted node must not wait for its old leases to expire.
const PROMPTLY: Duration = Duration::from_secs(5);

/// Polls `GET /v1/cluster` until `done` holds for it.
fn cluster_until(server: &Server, within: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let (view, _) = poll_until(within, Duration::from_millis(20), what, || {
        let response = server.get("/v1/cluster");
        assert_eq!(response.status(), 200);
        let view: Value = response.json().expect("cluster view");
        if done(&view) { Ok(view) } else { Err(format!("last view: {view:#}")) }
    });
    view
}

fn lease<'v>(view: &'v Value, name: &str) -> Option<&'v Value> {
    view["leases"].as_array()?.iter().find(|l| l["name"] == name)
}

fn owned_by(view: &Value, name: &str, node: &str) -> bool {
    lease(view, name).is_some_and(|l| l["owner"] == node && l["expired"] == false)
}

const SINGLE_OWNER_WORK: [&str; 3] = ["webhooks", "retention", "lifecycle"];

#[test]
fn a_single_node_takes_every_lease_and_shows_them_with_itself_in_the_cluster_view() {
    let server = Server::start_with_env(&[("ESGF_EVENTS_NODE_ID", "solo-1")]);
    let view = cluster_until(&server, PROMPTLY, "every lease taken", |v| {
        SINGLE_OWNER_WORK.iter().all(|name| owned_by(v, name, "solo-1"))
    });
    assert_eq!(view["node"], "solo-1");
    assert_eq!(view["lease_ttl_ms"], 10_000);
    assert_eq!(view["lease_renew_ms"], 3_000);
    // No SMTP server configured: nothing to send, so nobody needs the mail lease.
    assert!(lease(&view, "mail").is_none(), "{view:#}");
    let nodes = cluster_until(&server, PROMPTLY, "the node announced", |v| {
        v["nodes"].as_array().is_some_and(|n| n.len() == 1)
    });
    let me = &nodes["nodes"][0];
    assert_eq!(me["id"], "solo-1");
    assert_eq!(me["http_url"], server.url());

    // Operators only.
    let anonymous = anonymous_client().get(format!("{}/v1/cluster", server.url())).send().expect("GET");
    assert_eq!(anonymous.status(), 401);
}

#[test]
fn a_restarted_node_gets_its_leases_back_at_once_after_a_clean_stop_and_after_a_crash() {
    let mut server = Server::start_with_env(&[("ESGF_EVENTS_NODE_ID", "solo-2")]);
    let first =
        cluster_until(&server, PROMPTLY, "the webhooks lease taken", |v| owned_by(v, "webhooks", "solo-2"));
    let epoch = |v: &Value| lease(v, "webhooks").and_then(|l| l["epoch"].as_u64()).expect("epoch");
    let first_epoch = epoch(&first);

    // A clean stop releases the leases (keeping the epoch count going); the next start takes them again.
    assert!(server.terminate().success(), "clean exit; log:\n{}", server.logs());
    server.restart();
    let second = cluster_until(&server, PROMPTLY, "the webhooks lease taken after a clean stop", |v| {
        owned_by(v, "webhooks", "solo-2")
    });
    assert_eq!(epoch(&second), first_epoch + 1, "a change of hands bumps the epoch");

    // A crash leaves the leases unexpired; a node restarting under the same id takes its own back at once.
    server.kill9();
    server.restart();
    let third = cluster_until(&server, PROMPTLY, "the webhooks lease taken after a crash", |v| {
        owned_by(v, "webhooks", "solo-2") && epoch(v) > first_epoch + 1
    });
    assert_eq!(epoch(&third), first_epoch + 2);
}
