//! The topic catalogue through the router: validation before append, idempotent publish, lifecycle states and
//! their headers, the errors stream, the HTML page. A real state store in a temporary directory, a manual clock.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use esgf_events_catalogue::Catalogue;
use esgf_events_engine::{LogStore, ManualClock, ReadLimits};
use esgf_events_meta::changelog::list_changes;
use esgf_events_meta::{MetaStore, RedbMetaStore};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::test_store::FakeStore;
use crate::{AppState, HttpConfig, build_router};

const T0: i64 = 1_900_000_000_000;

struct Api {
    app: Router,
    store: Arc<FakeStore>,
    meta: Arc<dyn MetaStore>,
    clock: Arc<ManualClock>,
    catalogue: Arc<Catalogue>,
    _dir: tempfile::TempDir,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Api {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let meta: Arc<dyn MetaStore> =
            Arc::new(RedbMetaStore::open(&dir.path().join("state.redb")).expect("state store"));
        let clock = Arc::new(ManualClock::new(T0));
        let catalogue =
            Arc::new(Catalogue::open(Arc::clone(&meta), clock.clone(), None).await.expect("catalogue"));
        let store = Arc::new(FakeStore::new());
        let mut state = AppState::new(store.clone(), None, HttpConfig::default());
        state.catalogue = Some(Arc::clone(&catalogue));
        Api { app: build_router(Arc::new(state)), store, meta, clock, catalogue, _dir: dir }
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let request = Request::builder().method(method).uri(uri).body(body).expect("request");
        let response = self.app.clone().oneshot(request).await.expect("router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let raw = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body").to_vec();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Reply { status, headers, body, text }
    }

    async fn post(&self, uri: &str, body: Value) -> Reply {
        self.call(Method::POST, uri, Some(body)).await
    }

    async fn patch(&self, uri: &str, body: Value) -> Reply {
        self.call(Method::PATCH, uri, Some(body)).await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, None).await
    }

    async fn stored(&self, topic: &str) -> usize {
        let limits = ReadLimits { max_records: 10_000, max_bytes: usize::MAX };
        self.store.read(topic, 0, 0, limits).await.expect("read").records.len()
    }
}

fn post_event(id: &str, event_id: Option<&str>) -> Value {
    let mut metadata = json!({"time": "2026-07-19T08:14:12.057860"});
    if let Some(event_id) = event_id {
        metadata["event_id"] = json!(event_id);
    }
    json!({"metadata": metadata, "data": {"type": "STAC", "payload": {
        "method": "POST", "collection_id": "CMIP6", "item": {"type": "Feature", "id": id}}}})
}

#[tokio::test]
async fn created_topic_shows_its_catalogue_settings() {
    let api = Api::new().await;
    let reply = api
        .post(
            "/v1/topics",
            json!({"name": "t", "validation": "esgf-envelope", "description": "CMIP6 publications",
                   "owner": "ops@esgf.example.org"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let topic = api.get("/v1/topics/t").await.body;
    assert_eq!(topic["validation"], "esgf-envelope");
    assert_eq!(topic["description"], "CMIP6 publications");
    assert_eq!(topic["owner"], "ops@esgf.example.org");
    assert_eq!(topic["state"], "active");
    assert_eq!(topic["schemas"], json!([]));
}

#[tokio::test]
async fn bad_settings_refuse_the_creation_whole() {
    let api = Api::new().await;
    let reply = api.post("/v1/topics", json!({"name": "t", "validation": "strict"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert_eq!(api.get("/v1/topics/t").await.status, StatusCode::NOT_FOUND);
    let reply = api.post("/v1/topics", json!({"name": "t", "nonsense": 1})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
}

#[tokio::test]
async fn invalid_batch_is_refused_with_every_violation_and_nothing_appended() {
    let api = Api::new().await;
    api.post("/v1/topics", json!({"name": "t", "validation": "esgf-envelope"})).await;
    let mut no_id = post_event("x", None);
    no_id["data"]["payload"]["item"].as_object_mut().unwrap().remove("id");
    let mut bad_method = post_event("y", None);
    bad_method["data"]["payload"]["method"] = json!("DELETE");
    let reply = api.post("/v1/topics/t/events", json!([post_event("ok", None), no_id, bad_method])).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.body);
    assert_eq!(reply.body["type"], "urn:esgf-events:problem:invalid-event");
    assert_eq!(
        reply.body["errors"],
        json!([
            {"index": 1, "pointer": "/data/payload/item/id", "message": "is required"},
            {"index": 2, "pointer": "/data/payload/method",
             "message": "must be \"POST\", \"PUT\" or \"PATCH\", found \"DELETE\""}
        ])
    );
    assert_eq!(api.stored("t").await, 0);
    // A valid one goes in.
    assert_eq!(api.post("/v1/topics/t/events", post_event("ok", None)).await.status, StatusCode::CREATED);
    assert_eq!(api.stored("t").await, 1);
}

#[tokio::test]
async fn same_event_id_twice_is_appended_once() {
    let api = Api::new().await;
    api.post("/v1/topics", json!({"name": "t"})).await;
    let first = api.post("/v1/topics/t/events", post_event("a", Some("e-1"))).await;
    assert_eq!(first.body["results"], json!([{"partition": 0, "offset": 0}]));
    let again =
        api.post("/v1/topics/t/events", json!([post_event("b", None), post_event("a", Some("e-1"))])).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert_eq!(
        again.body["results"],
        json!([{"partition": 0, "offset": 1}, {"partition": 0, "offset": 0, "duplicate": true}])
    );
    // Within one batch too.
    let batch = api
        .post("/v1/topics/t/events", json!([post_event("c", Some("e-2")), post_event("c", Some("e-2"))]))
        .await;
    assert_eq!(
        batch.body["results"],
        json!([{"partition": 0, "offset": 2}, {"partition": 0, "offset": 2, "duplicate": true}])
    );
    assert_eq!(api.stored("t").await, 3);
}

#[tokio::test]
async fn deprecated_topic_responses_carry_deprecation_sunset_and_links() {
    let api = Api::new().await;
    api.post("/v1/topics", json!({"name": "t"})).await;
    assert!(api.get("/v1/topics/t").await.headers.get("deprecation").is_none());
    let reply = api
        .patch(
            "/v1/topics/t",
            json!({"state": "deprecated", "sunset": "2031-01-01T00:00:00Z", "successor": "t2",
                   "announcement": "https://esgf.example.org/news/t"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["state"], "deprecated");
    for uri in ["/v1/topics/t", "/v1/topics/t/events"] {
        let reply = api.get(uri).await;
        assert_eq!(reply.headers["deprecation"], format!("@{}", T0 / 1000), "{uri}");
        assert_eq!(reply.headers["sunset"], "Wed, 01 Jan 2031 00:00:00 GMT");
        let links: Vec<&str> = reply.headers.get_all("link").iter().map(|v| v.to_str().unwrap()).collect();
        assert!(links.contains(&"</v1/topics/t2>; rel=\"successor-version\""), "{links:?}");
    }
    // Deprecated still accepts events.
    assert_eq!(api.post("/v1/topics/t/events", post_event("a", None)).await.status, StatusCode::CREATED);
    let kinds: Vec<String> =
        list_changes(api.meta.as_ref(), 0, 100).await.unwrap().into_iter().map(|(_, e)| e.kind).collect();
    assert_eq!(kinds, ["topic-created", "topic-state"]);
}

#[tokio::test]
async fn read_only_refuses_publishes_and_retired_is_hidden_from_the_default_listing() {
    let api = Api::new().await;
    api.post("/v1/topics", json!({"name": "t"})).await;
    api.patch("/v1/topics/t", json!({"state": "read-only"})).await;
    let reply = api.post("/v1/topics/t/events", post_event("a", None)).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    assert_eq!(reply.body["type"], "urn:esgf-events:problem:topic-read-only");
    assert_eq!(api.get("/v1/topics/t/events").await.status, StatusCode::OK);

    api.patch("/v1/topics/t", json!({"state": "retired"})).await;
    let reply = api.post("/v1/topics/t/events", post_event("a", None)).await;
    assert_eq!(reply.body["type"], "urn:esgf-events:problem:topic-retired");
    assert_eq!(api.get("/v1/topics").await.body["topics"], json!([]));
    assert_eq!(api.get("/v1/topics?include=retired").await.body["topics"][0]["name"], "t");
    assert_eq!(api.patch("/v1/topics/t", json!({"state": "active"})).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn scheduled_transition_applies_when_due_and_retention_changes_are_logged() {
    let api = Api::new().await;
    api.post("/v1/topics", json!({"name": "t"})).await;
    let reply =
        api.patch("/v1/topics/t", json!({"state": "read-only", "state_at": "2030-06-01T00:00:00Z"})).await;
    assert_eq!(reply.body["scheduled"], json!({"state": "read-only", "at": "2030-06-01T00:00:00Z"}));
    assert_eq!(api.post("/v1/topics/t/events", post_event("a", None)).await.status, StatusCode::CREATED);
    api.clock
        .set_ms(chrono::DateTime::parse_from_rfc3339("2030-06-01T00:00:00Z").unwrap().timestamp_millis());
    api.catalogue.apply_due().await.unwrap();
    assert_eq!(api.post("/v1/topics/t/events", post_event("a", None)).await.status, StatusCode::CONFLICT);

    api.patch("/v1/topics/t", json!({"retention": "7d"})).await;
    let kinds: Vec<String> =
        list_changes(api.meta.as_ref(), 0, 100).await.unwrap().into_iter().map(|(_, e)| e.kind).collect();
    assert_eq!(kinds, ["topic-created", "topic-state-scheduled", "topic-state", "retention"]);
}

#[tokio::test]
async fn errors_topic_is_created_beside_the_topic_without_validation() {
    let api = Api::new().await;
    let reply =
        api.post("/v1/topics", json!({"name": "t", "validation": "esgf-strict", "errors_topic": true})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["errors_topic"], "t.errors");
    let errors = api.get("/v1/topics/t.errors").await;
    assert_eq!(errors.status, StatusCode::OK);
    assert_eq!(errors.body["validation"], "none");
    let report =
        json!({"metadata": {}, "data": {}, "error": {"type": "urn:x", "title": "PATCH of a missing item"}});
    assert_eq!(api.post("/v1/topics/t.errors/events", report).await.status, StatusCode::CREATED);
    assert_eq!(
        api.patch("/v1/topics/t", json!({"errors_topic": true})).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn topics_page_is_plain_html_listing_the_catalogue() {
    let api = Api::new().await;
    api.post("/v1/topics", json!({"name": "esgf2.pub", "description": "<b>x</b>", "owner": "a@b.org"})).await;
    let reply = api.get("/topics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(reply.text.contains("<th scope=\"row\">esgf2.pub</th>"), "{}", reply.text);
    assert!(reply.text.contains("&lt;b&gt;x&lt;") && !reply.text.contains("<b>x"), "{}", reply.text);
}
