//! THE access-control matrix: every route of [`ROUTES`] × every kind of caller → the expected status, over a real
//! `Auth` (redb state store) and a real `EmbeddedStore`, each in a temporary directory. The table is [`MATRIX`];
//! a route without a row fails `every_route_has_exactly_one_matrix_row`.
//!
//! Also here: what 401 and 403 answers say, the audit of authentication failures, operator workflows (register,
//! rotate, revoke, public topics, audit paging) and rate limits (429 with `Retry-After` and `RateLimit`
//! headers, and a refused batch leaves no trace).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use esgf_events_auth::{
    Auth, AuthConfig, Bootstrap, JwksSource, OidcIdentity, OidcIssuerConfig, RateSpec, Registration, Role,
};
use esgf_events_engine::{EmbeddedConfig, EmbeddedStore, LogStore, SystemClock};
use esgf_events_http::{HttpConfig, ROUTES, Server, app};
use esgf_events_meta::offsets::GroupOffsets;
use esgf_events_meta::{MetaStore, RedbMetaStore};
use esgf_events_webhooks::{Dispatcher, NewSubscription, SubscriptionControl, WebhookConfig};
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------------------------
// Callers
// ---------------------------------------------------------------------------------------------------------------

/// The kinds of caller, in the column order of [`MATRIX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anonymous,
    /// Consumer granted topic `t`.
    Consumer,
    /// Consumer granted topic `other` only.
    ConsumerOther,
    /// Producer granted topic `t`.
    Producer,
    /// Producer granted topic `other` only.
    ProducerOther,
    /// The token of a producer of `t` that was revoked.
    Revoked,
    /// The first token of a producer of `t` after a rotation (grace 0).
    RotatedOld,
    /// A JWT of the configured issuer, for a registered consumer of `t`, expired an hour ago.
    ExpiredJwt,
    /// A well-formed JWT from an issuer that is not configured.
    WrongIssuerJwt,
    /// A valid JWT of the configured issuer, mapped to a consumer of `t` by its subject.
    JwtConsumer,
    Operator,
}

const WHO: [Who; 11] = [
    Who::Anonymous,
    Who::Consumer,
    Who::ConsumerOther,
    Who::Producer,
    Who::ProducerOther,
    Who::Revoked,
    Who::RotatedOld,
    Who::ExpiredJwt,
    Who::WrongIssuerJwt,
    Who::JwtConsumer,
    Who::Operator,
];

impl Who {
    /// Presents bad credentials (which must answer 401 wherever credentials are looked at).
    fn bad_credentials(self) -> bool {
        matches!(self, Who::Revoked | Who::RotatedOld | Who::ExpiredJwt | Who::WrongIssuerJwt)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------------------------------

type Row = (&'static str, &'static str, [u16; 11]);

// Columns:           anon consumer c-other producer p-other revoked rotated expired wrong-iss jwt-consumer operator
const PROBE: [u16; 11] = [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200];
const PUBLIC: [u16; 11] = [200, 200, 200, 200, 200, 401, 401, 401, 401, 200, 200];
const fn operator_only(ok: u16) -> [u16; 11] {
    [401, 403, 403, 403, 403, 401, 401, 401, 401, 403, ok]
}

/// Topic `t` is private, granted to the consumer, the producer and the JWT consumer.
const MATRIX: &[Row] = &[
    ("GET", "/healthz", PROBE),
    ("GET", "/readyz", PROBE),
    ("GET", "/v1/topics", PUBLIC),
    ("GET", "/topics", PUBLIC),
    ("POST", "/v1/topics", operator_only(201)),
    ("GET", "/v1/topics/{topic}", PUBLIC),
    ("PATCH", "/v1/topics/{topic}", operator_only(200)),
    ("POST", "/v1/topics/{topic}/events", [401, 403, 403, 201, 403, 401, 401, 401, 401, 403, 201]),
    ("GET", "/v1/topics/{topic}/events", [401, 200, 403, 403, 403, 401, 401, 401, 401, 200, 200]),
    ("GET", "/v1/topics/{topic}/stream", [401, 200, 403, 403, 403, 401, 401, 401, 401, 200, 200]),
    // Each cell uses a group of its own; committing needs a read grant on the topic committed.
    ("PUT", "/v1/groups/{group}/offsets", [401, 204, 403, 403, 403, 401, 401, 401, 401, 204, 204]),
    // Any principal may look at (and so own) a fresh group of its own.
    ("GET", "/v1/groups/{group}", [401, 200, 200, 200, 200, 401, 401, 401, 401, 200, 200]),
    ("POST", "/v1/producers", operator_only(201)),
    ("GET", "/v1/producers", operator_only(200)),
    ("GET", "/v1/producers/{name}", operator_only(200)),
    ("PATCH", "/v1/producers/{name}", operator_only(200)),
    ("POST", "/v1/producers/{name}/rotate", operator_only(200)),
    ("DELETE", "/v1/producers/{name}", operator_only(204)),
    ("POST", "/v1/consumers", operator_only(201)),
    ("GET", "/v1/consumers", operator_only(200)),
    ("GET", "/v1/consumers/{name}", operator_only(200)),
    ("PATCH", "/v1/consumers/{name}", operator_only(200)),
    ("POST", "/v1/consumers/{name}/rotate", operator_only(200)),
    ("DELETE", "/v1/consumers/{name}", operator_only(204)),
    ("GET", "/v1/audit", operator_only(200)),
    // Creating needs a consumer with a read grant on the topic (or an operator); the rest is for the owner (the
    // consumer of `t`) or an operator. Routes run in ROUTES order: pause comes before resume, so redrive finds the
    // subscription active.
    ("POST", "/v1/subscriptions", [401, 201, 403, 403, 403, 401, 401, 401, 401, 201, 201]),
    ("GET", "/v1/subscriptions", [401, 200, 200, 200, 200, 401, 401, 401, 401, 200, 200]),
    ("GET", "/v1/subscriptions/{id}", owner_only(200)),
    ("DELETE", "/v1/subscriptions/{id}", owner_only(204)),
    ("POST", "/v1/subscriptions/{id}/pause", owner_only(200)),
    ("POST", "/v1/subscriptions/{id}/resume", owner_only(200)),
    ("GET", "/v1/subscriptions/{id}/dead-letters", owner_only(200)),
    ("POST", "/v1/subscriptions/{id}/redrive", owner_only(202)),
    ("GET", "/metrics", PUBLIC),
    ("GET", "/v1/maintenance", PUBLIC),
    // Each operator cell schedules a window of its own; PATCH and DELETE act on the fixture's window (PATCH
    // runs first, in ROUTES order).
    ("POST", "/v1/maintenance", operator_only(201)),
    ("PATCH", "/v1/maintenance/{window}", operator_only(200)),
    ("DELETE", "/v1/maintenance/{window}", operator_only(204)),
    ("POST", "/v1/announcements", operator_only(201)),
    ("GET", "/v1/announcements", PUBLIC),
    ("GET", "/announcements", PUBLIC),
    ("GET", "/announcements.atom", PUBLIC),
    ("GET", "/v1/changelog", PUBLIC),
    ("GET", "/changelog", PUBLIC),
    ("GET", "/changelog.atom", PUBLIC),
    ("GET", "/v1/announcements/deliveries", operator_only(200)),
    // Each operator cell adds a member of its own; DELETE (after POST, in ROUTES order) removes it.
    ("GET", "/v1/announcements/recipients", operator_only(200)),
    ("POST", "/v1/announcements/recipients", operator_only(201)),
    ("DELETE", "/v1/announcements/recipients/{address}", operator_only(204)),
    // Anyone holding a signed link (the fixture's); unsubscribing is idempotent.
    ("GET", "/v1/announcements/unsubscribe", PUBLIC),
    ("POST", "/v1/announcements/unsubscribe", PUBLIC),
    ("GET", "/v1/status", PUBLIC),
    ("GET", "/status", PUBLIC),
    // Each operator cell records an incident of its own id.
    ("POST", "/v1/incidents", operator_only(201)),
    ("GET", "/v1/incidents", PUBLIC),
    ("GET", "/", PUBLIC),
    ("GET", "/openapi.json", PUBLIC),
    ("GET", "/v1/cluster", operator_only(200)),
];

/// A subscription owned by the consumer of `t`.
const fn owner_only(ok: u16) -> [u16; 11] {
    [401, ok, 403, 403, 403, 401, 401, 401, 401, 403, ok]
}

fn row_for(method: &Method, path: &str) -> Option<&'static Row> {
    MATRIX.iter().find(|(m, p, _)| *m == method.as_str() && *p == path)
}

#[test]
fn every_route_has_exactly_one_matrix_row() {
    for spec in ROUTES {
        let rows = MATRIX.iter().filter(|(m, p, _)| *m == spec.method.as_str() && *p == spec.path).count();
        assert_eq!(rows, 1, "route {} {} needs exactly one row in MATRIX", spec.method, spec.path);
    }
    for (method, path, _) in MATRIX {
        assert!(
            ROUTES.iter().any(|spec| spec.method.as_str() == *method && spec.path == *path),
            "MATRIX row {method} {path} names no route"
        );
    }
}

/// The concrete request of one cell. Cells never interfere: what one creates or deletes is its own.
fn concrete_request(method: &Method, path: &str, column: usize) -> (String, Option<Value>) {
    let role = if path.starts_with("/v1/consumers") { "c" } else { "p" };
    let name =
        if *method == Method::DELETE { format!("victim-{role}-{column}") } else { format!("target-{role}") };
    let uri = path
        .replace("{topic}", "t")
        .replace("{name}", &name)
        .replace("{group}", &format!("g-{column}"))
        .replace("{address}", &format!("cell-{column}@example.org"));
    let body = match (method.as_str(), path) {
        ("POST", "/v1/topics") => Some(json!({ "name": format!("new-topic-{column}") })),
        ("PATCH", "/v1/topics/{topic}") => Some(json!({ "retention": "30d" })),
        ("POST", "/v1/topics/{topic}/events") => Some(json!({ "n": column })),
        ("PUT", "/v1/groups/{group}/offsets") => Some(json!({ "topic": "t", "partition": 0, "offset": 0 })),
        ("POST", "/v1/producers") => Some(json!({ "name": format!("new-p-{column}"), "topics": ["t"] })),
        ("POST", "/v1/consumers") => Some(json!({ "name": format!("new-c-{column}"), "topics": ["t"] })),
        ("POST", "/v1/subscriptions") => Some(json!({ "topic": "t", "url": UNREACHABLE_HOOK })),
        ("POST", "/v1/maintenance") => Some(json!({
            "starts_at": "2099-01-01T00:00:00Z", "ends_at": "2099-01-01T01:00:00Z", "mode": "read-only",
            "message": format!("matrix cell {column}"), "announcement": "https://example.org/a/1",
        })),
        ("PATCH", "/v1/maintenance/{window}") => Some(json!({ "message": "changed" })),
        ("POST", "/v1/announcements/recipients") => {
            Some(json!({ "address": format!("cell-{column}@example.org") }))
        }
        ("POST", "/v1/announcements") => {
            Some(json!({ "kind": "general", "title": format!("cell {column}") }))
        }
        ("POST", "/v1/incidents") => Some(json!({
            "id": format!("cell-{column}"), "started_at": "2026-01-01T00:00:00Z",
            "ended_at": "2026-01-01T00:12:00Z", "detected_by": "matrix",
        })),
        ("PATCH", _) => Some(json!({ "contact": "ops@example.org" })),
        _ => None,
    };
    (uri, body)
}

#[tokio::test]
async fn every_route_answers_every_caller_as_the_matrix_says() {
    let fx = Fixture::new(AuthConfig { anonymous_per_ip: generous(), ..AuthConfig::default() }).await;
    // Victims for the DELETE rows, one per cell.
    for column in 0..WHO.len() {
        fx.register(Role::Producer, &format!("victim-p-{column}"), &["t"]).await;
        fx.register(Role::Consumer, &format!("victim-c-{column}"), &["t"]).await;
    }
    fx.register(Role::Producer, "target-p", &["t"]).await;
    fx.register(Role::Consumer, "target-c", &["t"]).await;
    // Subscriptions of the consumer of `t`: one for every row but DELETE, and a victim per DELETE cell.
    let target_subscription = fx.subscribe("reader").await;
    let mut victim_subscriptions = Vec::new();
    for _ in 0..WHO.len() {
        victim_subscriptions.push(fx.subscribe("reader").await);
    }

    let mut failures = Vec::new();
    for spec in ROUTES {
        let (_, _, expected) = row_for(&spec.method, spec.path)
            .unwrap_or_else(|| panic!("no MATRIX row for {} {}", spec.method, spec.path));
        for (column, who) in WHO.iter().enumerate() {
            let (uri, body) = concrete_request(&spec.method, spec.path, column);
            let id = if spec.method == Method::DELETE {
                &victim_subscriptions[column]
            } else {
                &target_subscription
            };
            let mut uri = uri.replace("{id}", id).replace("{window}", &fx.window);
            if spec.path == "/v1/announcements/unsubscribe" {
                uri.clone_from(&fx.unsubscribe);
            }
            let token = fx.token(*who);
            let reply = fx.call(spec.method.clone(), &uri, token.as_deref(), body, peer(column)).await;
            let want = expected[column];
            if reply.status.as_u16() != want {
                failures.push(format!(
                    "{} {uri} as {who:?}: {} (want {want}) {}",
                    spec.method, reply.status, reply.body
                ));
                continue;
            }
            check_refusal(&reply, *who, token.as_deref(), &format!("{} {uri} as {who:?}", spec.method));
        }
    }
    assert!(failures.is_empty(), "{} cells differ from MATRIX:\n{}", failures.len(), failures.join("\n"));

    // Every bad credential on every route that looks at credentials left an audit entry with the client address.
    let entries = fx.auth.audit_log(0, 100_000).await.expect("audit log");
    let failures: Vec<_> = entries.iter().filter(|e| e.action == "auth.failure").collect();
    let checked_routes = ROUTES.iter().filter(|s| s.access != esgf_events_http::Access::Probe).count();
    let bad_columns = WHO.iter().filter(|w| w.bad_credentials()).count();
    assert_eq!(failures.len(), checked_routes * bad_columns, "{failures:#?}");
    for (column, who) in WHO.iter().enumerate().filter(|(_, w)| w.bad_credentials()) {
        let from = peer(column).to_string();
        let count = failures.iter().filter(|e| e.remote.as_deref() == Some(from.as_str())).count();
        assert_eq!(count, checked_routes, "auth.failure entries from {from} ({who:?})");
    }
    let secrets: Vec<String> = WHO.iter().filter_map(|w| fx.token(*w)).collect();
    let audit_text = serde_json::to_string(&entries).expect("serializes");
    for secret in &secrets {
        assert!(!audit_text.contains(secret.as_str()), "the audit log must never hold a token");
    }
    fx.close().await;
}

/// What every refusal must look like, whatever the route.
fn check_refusal(reply: &Reply, who: Who, token: Option<&str>, context: &str) {
    if let Some(token) = token {
        assert!(!reply.raw.contains(token), "{context}: the response echoes the token");
    }
    match reply.status.as_u16() {
        401 => {
            assert_eq!(reply.body["type"], "urn:esgf-events:problem:unauthenticated", "{context}");
            assert_eq!(reply.headers[header::CONTENT_TYPE], "application/problem+json", "{context}");
            let challenge = reply.headers[header::WWW_AUTHENTICATE].to_str().expect("ascii");
            if who.bad_credentials() {
                assert_eq!(challenge, r#"Bearer realm="esgf-events", error="invalid_token""#, "{context}");
            } else {
                assert_eq!(challenge, r#"Bearer realm="esgf-events""#, "{context}");
            }
        }
        403 => {
            assert_eq!(reply.body["type"], "urn:esgf-events:problem:forbidden", "{context}");
            let missing = reply.body["missing"].as_str().unwrap_or_default();
            assert!(!missing.is_empty(), "{context}: a 403 names the missing grant: {}", reply.body);
            assert!(reply.body["detail"].as_str().is_some_and(|d| d.contains(missing)), "{context}");
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Details of refusals and operator workflows
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn forbidden_says_which_grant_is_missing() {
    let fx = Fixture::new(AuthConfig::default()).await;
    let reader_other = fx.token(Who::ConsumerOther);
    let reply = fx.call(Method::GET, "/v1/topics/t/events", reader_other.as_deref(), None, peer(1)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.body["principal"], "reader-other");
    let detail = reply.body["detail"].as_str().expect("detail");
    assert!(detail.contains("'t'") && detail.contains("read"), "{detail}");

    let writer = fx.token(Who::Producer);
    let reply = fx.call(Method::GET, "/v1/topics/t/events", writer.as_deref(), None, peer(1)).await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "least privilege: a producer does not read a private topic"
    );

    let reply = fx.call(Method::GET, "/v1/topics/t/events", None, None, peer(1)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.body["detail"].as_str().is_some_and(|d| d.contains("Bearer")), "{}", reply.body);
    fx.close().await;
}

#[tokio::test]
async fn malformed_authorization_is_401_and_audited_without_the_header_value() {
    let fx = Fixture::new(AuthConfig::default()).await;
    let reply = fx.call_with(Method::GET, "/v1/topics", Some("Basic c2VjcmV0"), None, peer(7)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(!reply.raw.contains("c2VjcmV0"));
    let entries = fx.auth.audit_log(0, 1000).await.expect("audit");
    let failure = entries.iter().find(|e| e.action == "auth.failure").expect("audited");
    assert_eq!(failure.remote.as_deref(), Some("10.0.0.7:40000"));
    assert!(!serde_json::to_string(failure).expect("json").contains("c2VjcmV0"));
    fx.close().await;
}

#[tokio::test]
async fn registered_token_is_shown_once_and_works_until_rotated_or_revoked() {
    let fx = Fixture::new(AuthConfig::default()).await;
    let op = fx.token(Who::Operator);
    let op = op.as_deref();

    let reply = fx
        .call(
            Method::POST,
            "/v1/producers",
            op,
            Some(json!({"name": "cmip7", "topics": ["t"], "contact": "a@b.org"})),
            peer(0),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.headers[header::LOCATION], "/v1/producers/cmip7");
    assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!((reply.body["name"].as_str(), reply.body["role"].as_str()), (Some("cmip7"), Some("producer")));
    assert_eq!(reply.body["topics"], json!(["t"]));
    let first = reply.body["token"].as_str().expect("token").to_owned();
    assert!(first.starts_with("esgfev_"));

    let reply = fx.call(Method::POST, "/v1/producers", op, Some(json!({"name": "cmip7"})), peer(0)).await;
    assert_eq!(
        (reply.status.as_u16(), reply.body["type"].as_str()),
        (409, Some("urn:esgf-events:problem:principal-exists"))
    );

    // Listing and showing never reveal a secret.
    for uri in ["/v1/producers", "/v1/producers/cmip7"] {
        let reply = fx.call(Method::GET, uri, op, None, peer(0)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(!reply.raw.contains(&first) && !reply.raw.contains("\"token\""), "{}", reply.raw);
    }
    let reply = fx.call(Method::GET, "/v1/producers", op, None, peer(0)).await;
    assert!(reply.body["producers"].as_array().is_some_and(|list| list.iter().any(|p| p["name"] == "cmip7")));

    let publish = |token: String| {
        let fx = &fx;
        async move {
            fx.call(Method::POST, "/v1/topics/t/events", Some(&token), Some(json!({"a": 1})), peer(0))
                .await
                .status
        }
    };
    assert_eq!(publish(first.clone()).await, StatusCode::CREATED);

    let reply =
        fx.call(Method::PATCH, "/v1/producers/cmip7", op, Some(json!({"topics": ["other"]})), peer(0)).await;
    assert_eq!((reply.status, &reply.body["topics"]), (StatusCode::OK, &json!(["other"])));
    assert_eq!(publish(first.clone()).await, StatusCode::FORBIDDEN, "grants change at once");
    fx.call(Method::PATCH, "/v1/producers/cmip7", op, Some(json!({"topics": ["t"]})), peer(0)).await;

    let reply = fx.call(Method::POST, "/v1/producers/cmip7/rotate", op, None, peer(0)).await;
    assert_eq!(
        (reply.status, &reply.headers[header::CACHE_CONTROL]),
        (StatusCode::OK, &"no-store".parse().expect("hv"))
    );
    let second = reply.body["token"].as_str().expect("new token").to_owned();
    assert_ne!(first, second);
    assert_eq!(
        publish(first.clone()).await,
        StatusCode::UNAUTHORIZED,
        "grace 0: the old token stops at once"
    );
    assert_eq!(publish(second.clone()).await, StatusCode::CREATED);

    let reply = fx.call(Method::DELETE, "/v1/producers/cmip7", op, None, peer(0)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(publish(second).await, StatusCode::UNAUTHORIZED, "revocation takes effect at once");
    let reply = fx.call(Method::GET, "/v1/producers/cmip7", op, None, peer(0)).await;
    assert_eq!(
        (reply.status.as_u16(), reply.body["type"].as_str()),
        (404, Some("urn:esgf-events:problem:principal-not-found"))
    );
    let reply = fx.call(Method::DELETE, "/v1/consumers/reader", op, None, peer(0)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "consumers are revoked the same way");

    let reply =
        fx.call(Method::POST, "/v1/consumers", op, Some(json!({"name": "x", "bogus": 1})), peer(0)).await;
    assert_eq!(
        (reply.status.as_u16(), reply.body["type"].as_str()),
        (400, Some("urn:esgf-events:problem:invalid-request"))
    );
    fx.close().await;
}

#[tokio::test]
async fn public_topics_are_readable_by_anyone_and_say_so() {
    let fx = Fixture::new(AuthConfig::default()).await;
    let op = fx.token(Who::Operator);
    let reply = fx.call(Method::GET, "/v1/topics/t", None, None, peer(0)).await;
    assert_eq!((reply.status, &reply.body["public"]), (StatusCode::OK, &json!(false)));
    assert_eq!(
        fx.call(Method::GET, "/v1/topics/t/events", None, None, peer(0)).await.status,
        StatusCode::UNAUTHORIZED
    );

    let reply = fx
        .call(
            Method::PATCH,
            "/v1/topics/t",
            op.as_deref(),
            Some(json!({"public": true, "retention": "7d", "retention_bytes": 1000000})),
            peer(0),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        (&reply.body["public"], &reply.body["retention"], &reply.body["retention_bytes"]),
        (&json!(true), &json!("7d"), &json!(1_000_000))
    );
    let info = fx.store.describe_topic("t").await.expect("topic");
    assert_eq!(info.retention.max_age, Some(Duration::from_secs(7 * 86_400)));

    assert_eq!(fx.call(Method::GET, "/v1/topics/t/events", None, None, peer(0)).await.status, StatusCode::OK);
    let writer_other = fx.token(Who::ProducerOther);
    let reply = fx.call(Method::GET, "/v1/topics/t/events", writer_other.as_deref(), None, peer(0)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        fx.call(Method::POST, "/v1/topics/t/events", None, Some(json!({})), peer(0)).await.status,
        StatusCode::UNAUTHORIZED,
        "public is read-only"
    );

    let reply = fx
        .call(Method::PATCH, "/v1/topics/missing", op.as_deref(), Some(json!({"public": true})), peer(0))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = fx
        .call(Method::PATCH, "/v1/topics/t", op.as_deref(), Some(json!({"retention_bytes": 0})), peer(0))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    let actions: Vec<String> =
        fx.auth.audit_log(0, 1000).await.expect("audit").into_iter().map(|e| e.action).collect();
    assert!(actions.iter().any(|a| a == "topic.retention"), "{actions:?}");
    fx.close().await;
}

#[tokio::test]
async fn audit_pages_with_after_and_next() {
    let fx = Fixture::new(AuthConfig::default()).await;
    let op = fx.token(Who::Operator);
    let reply = fx.call(Method::GET, "/v1/audit?limit=2", op.as_deref(), None, peer(0)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let entries = reply.body["entries"].as_array().expect("entries").clone();
    assert_eq!(entries.len(), 2);
    let next = reply.body["next"].as_u64().expect("next");
    assert_eq!(Some(next), entries[1]["seq"].as_u64());

    let reply = fx
        .call(Method::GET, &format!("/v1/audit?after={next}&limit=1000"), op.as_deref(), None, peer(0))
        .await;
    let rest = reply.body["entries"].as_array().expect("entries");
    assert!(rest.iter().all(|e| e["seq"].as_u64() > Some(next)));
    let last = reply.body["next"].as_u64().expect("next");
    let reply = fx.call(Method::GET, &format!("/v1/audit?after={last}"), op.as_deref(), None, peer(0)).await;
    assert_eq!(
        (reply.body["entries"].as_array().map(Vec::len), reply.body["next"].as_u64()),
        (Some(0), Some(last))
    );

    for bad in ["/v1/audit?limit=0", "/v1/audit?limit=1001", "/v1/audit?after=-1", "/v1/audit?from=3"] {
        let reply = fx.call(Method::GET, bad, op.as_deref(), None, peer(0)).await;
        assert_eq!(reply.body["type"], "urn:esgf-events:problem:invalid-query", "{bad}");
    }
    fx.close().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn publish_over_the_rate_is_429_with_retry_after_and_ratelimit_headers_and_appends_nothing() {
    let fx = Fixture::new(AuthConfig::default()).await;
    let rate = RateSpec { events_per_second: 1, burst: 3, bytes_per_second: None, burst_bytes: None };
    let token = fx.register_with(Role::Producer, "metered", &["t"], Some(rate)).await;

    let reply = fx
        .call(
            Method::POST,
            "/v1/topics/t/events",
            Some(&token),
            Some(json!([{"n": 1}, {"n": 2}, {"n": 3}])),
            peer(0),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);

    let reply = fx
        .call(Method::POST, "/v1/topics/t/events", Some(&token), Some(json!([{"n": 4}, {"n": 5}])), peer(0))
        .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.body);
    assert_eq!(reply.body["type"], "urn:esgf-events:problem:rate-limited");
    let retry_after: u64 =
        reply.headers[header::RETRY_AFTER].to_str().expect("ascii").parse().expect("whole seconds");
    assert!((1..=3).contains(&retry_after), "{retry_after}");
    assert_eq!(reply.headers["ratelimit-policy"], r#""publish";q=3;w=1"#);
    let state = reply.headers["ratelimit"].to_str().expect("ascii");
    let fields = state.strip_prefix(r#""publish";r="#).expect(state);
    let (remaining, reset) = fields.split_once(";t=").expect(state);
    assert!(remaining.parse::<u32>().is_ok_and(|r| r < 2), "{state}");
    assert!(reset.parse::<u64>().is_ok_and(|t| (1..=3).contains(&t)), "{state}");

    // Nothing of the refused batch was appended.
    let offsets = fx.store.offsets("t", 0).await.expect("offsets");
    assert_eq!(offsets.latest, 3);

    // The operator is not limited.
    let op = fx.token(Who::Operator);
    let reply = fx
        .call(Method::POST, "/v1/topics/t/events", op.as_deref(), Some(json!([{"n": 6}, {"n": 7}])), peer(0))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    fx.close().await;
}

#[tokio::test]
async fn anonymous_calls_over_the_per_ip_budget_are_429() {
    let tight = RateSpec { events_per_second: 1, burst: 2, bytes_per_second: None, burst_bytes: None };
    let fx = Fixture::new(AuthConfig { anonymous_per_ip: tight, ..AuthConfig::default() }).await;
    for _ in 0..2 {
        assert_eq!(fx.call(Method::GET, "/v1/topics", None, None, peer(1)).await.status, StatusCode::OK);
    }
    // Normally the very next call; a loaded machine may let a token refill (1/s) in between, hence a few tries.
    let mut reply = fx.call(Method::GET, "/v1/topics", None, None, peer(1)).await;
    for _ in 0..5 {
        if reply.status != StatusCode::OK {
            break;
        }
        reply = fx.call(Method::GET, "/v1/topics", None, None, peer(1)).await;
    }
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.body);
    assert_eq!(reply.headers["ratelimit-policy"], r#""anonymous";q=2;w=1"#);
    assert!(reply.headers.contains_key(header::RETRY_AFTER));

    // Another address has its own budget; authenticated callers and probes are not charged.
    assert_eq!(fx.call(Method::GET, "/v1/topics", None, None, peer(2)).await.status, StatusCode::OK);
    let reader = fx.token(Who::Consumer);
    assert_eq!(
        fx.call(Method::GET, "/v1/topics", reader.as_deref(), None, peer(1)).await.status,
        StatusCode::OK
    );
    assert_eq!(fx.call(Method::GET, "/healthz", None, None, peer(1)).await.status, StatusCode::OK);
    fx.close().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------------------------

const ISSUER: &str = "https://idp.example.org";
const AUDIENCE: &str = "esgf-events";

fn generous() -> RateSpec {
    RateSpec { events_per_second: 10_000, burst: 10_000, bytes_per_second: None, burst_bytes: None }
}

/// Each cell calls from its own address, so audit entries can be traced to the cell.
fn peer(column: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, u8::try_from(column).expect("few columns")], 40000))
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    raw: String,
}

struct Fixture {
    _dir: TempDir,
    app: Router,
    auth: Arc<Auth>,
    store: Arc<EmbeddedStore>,
    webhooks: Arc<Dispatcher>,
    tokens: Vec<(Who, String)>,
    /// A maintenance window far in the future, for the PATCH and DELETE rows.
    window: String,
    /// A signed one-click unsubscribe link (path and query), for the unsubscribe rows.
    unsubscribe: String,
}

/// Nothing listens on the discard port: the matrix's subscriptions never deliver (and never need to).
const UNREACHABLE_HOOK: &str = "http://127.0.0.1:9/hook";

impl Fixture {
    /// Topics `t` and `other`; one principal (or credential) per [`Who`].
    async fn new(config: AuthConfig) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let signing = TestKey::es256("k1");
        let jwks_path = dir.path().join("jwks.json");
        std::fs::write(&jwks_path, json!({ "keys": [signing.jwk.clone()] }).to_string()).expect("write jwks");
        let config = AuthConfig {
            oidc: vec![OidcIssuerConfig {
                issuer: ISSUER.to_owned(),
                audience: AUDIENCE.to_owned(),
                jwks: JwksSource::File(jwks_path),
                subject_claim: "sub".to_owned(),
            }],
            rotation_grace: Duration::ZERO,
            ..config
        };
        let meta: Arc<dyn MetaStore> =
            Arc::new(RedbMetaStore::open(&dir.path().join("meta.redb")).expect("open meta"));
        let auth = Arc::new(Auth::open(Arc::clone(&meta), config).await.expect("open auth"));
        let store = Arc::new(
            EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("data")), Arc::new(SystemClock))
                .expect("open store"),
        );
        for topic in ["t", "other"] {
            store
                .create_topic(
                    topic,
                    esgf_events_engine::TopicConfig {
                        partitions: 1,
                        retention: esgf_events_engine::Retention::DEFAULT,
                    },
                )
                .await
                .expect("topic");
        }
        let server = Server {
            store: store.clone(),
            auth: Some(auth.clone()),
            config: HttpConfig::default(),
            tls: None,
            offsets: Some(GroupOffsets::new(Arc::clone(&meta))),
            webhooks: None,
            ops: Default::default(),
            catalogue: None,
            cluster: Some(esgf_events_http::Cluster {
                leases: esgf_events_meta::lease::Leases::new(Arc::clone(&meta), "node-1", Default::default()),
                nodes: esgf_events_meta::lease::Nodes::new(Arc::clone(&meta), Default::default()),
            }),
        };
        let announcements = Arc::new(esgf_events_ops::announcements::Announcements::new(
            Arc::clone(&meta),
            Arc::new(SystemClock),
        ));
        let maintenance = esgf_events_ops::Maintenance::open(
            Arc::clone(&meta),
            esgf_events_ops::MaintenanceState::new(Arc::new(SystemClock)),
            Duration::from_secs(7 * 86_400),
        )
        .await
        .expect("maintenance")
        .with_announcements(Arc::clone(&announcements));
        let window = maintenance
            .schedule(esgf_events_ops::NewWindow {
                starts_at_ms: 4_070_908_800_000, // 2099-01-01
                ends_at_ms: 4_070_912_400_000,
                mode: esgf_events_ops::MaintenanceMode::Full,
                message: "fixture".to_owned(),
                announcement: Some("https://example.org/a/0".to_owned()),
                force: false,
            })
            .await
            .expect("window")
            .id;
        // Never run: the matrix only reads its (empty) delivery records and manages its list.
        let mailer = Arc::new(
            esgf_events_ops::mail::Mailer::new(
                esgf_events_ops::mail::MailConfig::new(
                    "smtp://127.0.0.1:9".to_owned(),
                    "events@example.org".to_owned(),
                    Vec::new(),
                ),
                Arc::clone(&meta),
                Arc::clone(&announcements),
                Arc::new(Vec::new),
                Arc::new(SystemClock),
            )
            .expect("mailer"),
        );
        let unsubscribe =
            mailer.list().unsubscribe_url("", "matrix@example.org").await.expect("unsubscribe link");
        let ops = esgf_events_ops::Ops {
            metrics: esgf_events_ops::metrics::prometheus(),
            maintenance: Some(Arc::new(maintenance)),
            announcements: Some(Arc::clone(&announcements)),
            changelog: Some(Arc::clone(&meta)),
            public_url: None,
            mail: Some(mailer),
            status: Some(Arc::new(esgf_events_ops::status::StatusRecorder::new(
                store.clone(),
                Arc::clone(&meta),
                None,
                Arc::new(SystemClock),
                Default::default(),
            ))),
        };
        let server = Server { ops, ..server };
        let webhooks = Arc::new(
            Dispatcher::start(store.clone(), meta, WebhookConfig::default())
                .await
                .expect("webhook dispatcher"),
        );
        let server = Server { webhooks: Some(webhooks.clone() as Arc<dyn SubscriptionControl>), ..server };
        let mut fx = Fixture {
            app: app(&server),
            auth: auth.clone(),
            store,
            webhooks,
            tokens: Vec::new(),
            window,
            unsubscribe,
            _dir: dir,
        };

        let token_file = fx._dir.path().join("operator.token");
        let created = fx.auth.bootstrap_operator(&token_file, None).await.expect("bootstrap");
        assert_eq!(created, Bootstrap::Created(token_file.clone()));
        let operator = std::fs::read_to_string(&token_file).expect("token file").trim().to_owned();
        fx.tokens.push((Who::Operator, operator));

        let reader = fx.register(Role::Consumer, "reader", &["t"]).await;
        fx.tokens.push((Who::Consumer, reader));
        let reader_other = fx.register(Role::Consumer, "reader-other", &["other"]).await;
        fx.tokens.push((Who::ConsumerOther, reader_other));
        let writer = fx.register(Role::Producer, "writer", &["t"]).await;
        fx.tokens.push((Who::Producer, writer));
        let writer_other = fx.register(Role::Producer, "writer-other", &["other"]).await;
        fx.tokens.push((Who::ProducerOther, writer_other));

        let gone = fx.register(Role::Producer, "gone", &["t"]).await;
        fx.auth.revoke(Role::Producer, "gone", &fx.operator_identity().await).await.expect("revoke");
        fx.tokens.push((Who::Revoked, gone));
        let old = fx.register(Role::Producer, "rotated", &["t"]).await;
        fx.auth.rotate(Role::Producer, "rotated", &fx.operator_identity().await).await.expect("rotate");
        fx.tokens.push((Who::RotatedOld, old));

        let registration = Registration {
            name: "jwt-reader".to_owned(),
            topics: vec!["t".to_owned()],
            rate: None,
            contact: None,
            oidc: vec![OidcIdentity { issuer: ISSUER.to_owned(), subject: "jwt-reader-sub".to_owned() }],
        };
        fx.auth
            .register(Role::Consumer, registration, &fx.operator_identity().await)
            .await
            .expect("register");
        let now = now_s();
        fx.tokens.push((Who::JwtConsumer, signing.jwt(ISSUER, "jwt-reader-sub", now + 600)));
        fx.tokens.push((Who::ExpiredJwt, signing.jwt(ISSUER, "jwt-reader-sub", now - 3600)));
        let stranger = TestKey::es256("k1");
        fx.tokens.push((
            Who::WrongIssuerJwt,
            stranger.jwt("https://elsewhere.example.org", "jwt-reader-sub", now + 600),
        ));
        fx
    }

    async fn operator_identity(&self) -> esgf_events_auth::Identity {
        let token = self.token(Who::Operator).expect("operator token");
        self.auth.authenticate_bearer(&token).await.expect("operator authenticates")
    }

    async fn register(&self, role: Role, name: &str, topics: &[&str]) -> String {
        self.register_with(role, name, topics, None).await
    }

    async fn register_with(&self, role: Role, name: &str, topics: &[&str], rate: Option<RateSpec>) -> String {
        let registration = Registration {
            name: name.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            rate,
            contact: None,
            oidc: Vec::new(),
        };
        let (_, secret) =
            self.auth.register(role, registration, &self.operator_identity().await).await.expect("register");
        secret.expose().to_owned()
    }

    fn token(&self, who: Who) -> Option<String> {
        self.tokens.iter().find(|(w, _)| *w == who).map(|(_, t)| t.clone())
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
        from: SocketAddr,
    ) -> Reply {
        let authorization = token.map(|t| format!("Bearer {t}"));
        self.call_with(method, uri, authorization.as_deref(), body, from).await
    }

    async fn call_with(
        &self,
        method: Method,
        uri: &str,
        authorization: Option<&str>,
        body: Option<Value>,
        from: SocketAddr,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        let mut request = request.body(body).expect("request");
        request.extensions_mut().insert(ConnectInfo(from));
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        if headers.get(header::CONTENT_TYPE).is_some_and(|t| t == "text/event-stream") {
            // An event stream never ends by itself: its status and headers are the answer.
            return Reply { status, headers, body: Value::Null, raw: String::new() };
        }
        let raw = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        let raw = String::from_utf8(raw.to_vec()).expect("utf8 body");
        // `/metrics` answers Prometheus text, `/topics` and other pages HTML, feeds Atom; everything else JSON.
        let text = headers.get(header::CONTENT_TYPE).is_some_and(|t| {
            [&b"text/plain"[..], b"text/html", b"application/atom+xml"]
                .iter()
                .any(|p| t.as_bytes().starts_with(p))
        });
        let body = if raw.is_empty() || text {
            Value::Null
        } else {
            serde_json::from_str(&raw).unwrap_or_else(|e| panic!("JSON body {status} {raw:?}: {e}"))
        };
        Reply { status, headers, body, raw }
    }

    /// A subscription of `owner` to `t`, made directly on the dispatcher; its id.
    async fn subscribe(&self, owner: &str) -> String {
        let request = NewSubscription {
            topic: "t".to_owned(),
            url: UNREACHABLE_HOOK.to_owned(),
            filter: Vec::new(),
            key_prefix: None,
            from: None,
            format: None,
        };
        self.webhooks.create(owner, request).await.expect("subscription").subscription.id
    }

    async fn close(self) {
        self.webhooks.shutdown().await;
        self.store.shutdown().await.expect("store shutdown");
    }
}

fn now_s() -> i64 {
    i64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs(),
    )
    .expect("fits")
}

/// An ES256 signing key and its public JWK.
struct TestKey {
    kid: String,
    encoding: jsonwebtoken::EncodingKey,
    jwk: Value,
}

impl TestKey {
    fn es256(kid: &str) -> TestKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        // The uncompressed public point: 0x04 || x || y, 32 bytes each.
        let point = pair.public_key_raw();
        assert_eq!((point.len(), point[0]), (65, 4));
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": base64url(&point[1..33]),
            "y": base64url(&point[33..]),
        });
        let encoding =
            jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("PEM key");
        TestKey { kid: kid.to_owned(), encoding, jwk }
    }

    fn jwt(&self, issuer: &str, subject: &str, exp: i64) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = json!({ "iss": issuer, "aud": AUDIENCE, "sub": subject, "exp": exp, "iat": exp - 900 });
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("sign JWT")
    }
}

/// RFC 4648 section 5, no padding (JWK coordinates).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[test]
fn base64url_matches_rfc4648_vectors() {
    for (plain, encoded) in [("", ""), ("f", "Zg"), ("fo", "Zm8"), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
        assert_eq!(base64url(plain.as_bytes()), encoded);
    }
    assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
}
