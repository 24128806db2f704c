//! Handler tests: requests through the full router (routing, extraction, problem mapping) against the
//! in-memory [`FakeStore`], without sockets.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::test_store::FakeStore;
use crate::{AppState, HttpConfig, build_router, partition_for_key};

struct Api {
    app: Router,
    store: Arc<FakeStore>,
    state: Arc<AppState>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    raw: Vec<u8>,
}

impl Api {
    fn new() -> Self {
        Self::with_config(HttpConfig::default())
    }

    fn with_config(config: HttpConfig) -> Self {
        let store = Arc::new(FakeStore::new());
        let state = Arc::new(AppState::new(store.clone(), None, config));
        Api { app: build_router(state.clone()), store, state }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.expect("router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let raw = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body").to_vec();
        let body =
            if raw.is_empty() { Value::Null } else { serde_json::from_slice(&raw).expect("JSON body") };
        Reply { status, headers, body, raw }
    }

    async fn call(&self, method: Method, uri: &str, body: impl Into<Body>) -> Reply {
        let request = Request::builder().method(method).uri(uri).body(body.into()).expect("request");
        self.send(request).await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, Body::empty()).await
    }

    async fn post(&self, uri: &str, body: impl Into<Body>) -> Reply {
        self.call(Method::POST, uri, body).await
    }

    async fn create_topic(&self, name: &str, partitions: u32) {
        let reply =
            self.post("/v1/topics", json!({"name": name, "partitions": partitions}).to_string()).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }

    async fn stored_values(&self, topic: &str, partition: u32) -> Vec<String> {
        use esgf_events_engine::LogStore;
        let result = self
            .store
            .read(
                topic,
                partition,
                0,
                esgf_events_engine::ReadLimits { max_records: 10_000, max_bytes: usize::MAX },
            )
            .await
            .expect("read");
        result.records.iter().map(|r| String::from_utf8(r.value.to_vec()).expect("utf8")).collect()
    }
}

fn assert_problem(reply: &Reply, status: u16, kind: &str) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.body);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(reply.body["type"], format!("urn:esgf-events:problem:{kind}"), "{}", reply.body);
    assert_eq!(reply.body["status"], status);
    assert!(reply.body["title"].is_string() && reply.body["detail"].is_string(), "{}", reply.body);
}

// --- topics ----------------------------------------------------------------------------------------------------

#[tokio::test]
async fn create_topic_returns_201_with_location_and_description() {
    let api = Api::new();
    let reply = api
        .post(
            "/v1/topics",
            r#"{"name":"esgf2.publications","partitions":3,"retention":"12h","retention_bytes":null}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.headers[header::LOCATION], "/v1/topics/esgf2.publications");
    assert_eq!(
        reply.body,
        json!({
            "name": "esgf2.publications",
            "partitions": 3,
            "retention": "12h",
            "retention_bytes": null,
            "created": "2026-11-27T10:00:00.000Z",
            // No access control: everything is readable without credentials.
            "public": true,
            "offsets": [
                {"partition": 0, "earliest": 0, "latest": 0},
                {"partition": 1, "earliest": 0, "latest": 0},
                {"partition": 2, "earliest": 0, "latest": 0},
            ],
        })
    );
}

#[tokio::test]
async fn create_topic_defaults_to_one_partition_and_90_days() {
    let api = Api::new();
    let reply = api.post("/v1/topics", r#"{"name":"t"}"#).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!((reply.body["partitions"].as_u64(), reply.body["retention"].as_str()), (Some(1), Some("90d")));
    let reply = api.post("/v1/topics", r#"{"name":"keep","retention":"forever"}"#).await;
    assert_eq!(reply.body["retention"], "forever");
}

#[tokio::test]
async fn duplicate_topic_is_409() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    let reply = api.post("/v1/topics", r#"{"name":"t"}"#).await;
    assert_problem(&reply, 409, "topic-exists");
    assert_eq!(reply.body["topic"], "t");
}

#[tokio::test]
async fn invalid_topic_name_is_400() {
    let api = Api::new();
    for name in ["a/b", "..", "", "é"] {
        let reply = api.post("/v1/topics", json!({ "name": name }).to_string()).await;
        assert_problem(&reply, 400, "invalid-topic-name");
    }
}

#[tokio::test]
async fn invalid_topic_requests_are_400() {
    let api = Api::new();
    for body in [
        r#"{"name":"t","partitions":0}"#,
        r#"{"name":"t","partitions":1025}"#,
        r#"{"name":"t","retention":"soon"}"#,
        r#"{"name":"t","partition":2}"#,
        r#"{"partitions":2}"#,
    ] {
        assert_problem(&api.post("/v1/topics", body).await, 400, "invalid-request");
    }
    assert_problem(&api.post("/v1/topics", r#"{"name":"t""#).await, 400, "malformed-json");
}

#[tokio::test]
async fn topics_are_listed_and_described_with_offsets() {
    let api = Api::new();
    api.create_topic("b", 1).await;
    api.create_topic("a", 2).await;
    api.post("/v1/topics/b/events", r#"[{"n":1},{"n":2}]"#).await;

    let reply = api.get("/v1/topics").await;
    assert_eq!(reply.status, StatusCode::OK);
    let names: Vec<&str> =
        reply.body["topics"].as_array().expect("array").iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["a", "b"]);

    let reply = api.get("/v1/topics/b").await;
    assert_eq!(reply.body["offsets"], json!([{"partition": 0, "earliest": 0, "latest": 2}]));
}

#[tokio::test]
async fn unknown_topic_is_404() {
    let api = Api::new();
    assert_problem(&api.get("/v1/topics/nope").await, 404, "topic-not-found");
    assert_problem(&api.get("/v1/topics/nope/events").await, 404, "topic-not-found");
    assert_problem(&api.post("/v1/topics/nope/events", "{}").await, 404, "topic-not-found");
}

// --- publish ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn single_event_is_stored_byte_identical() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    let event = "{ \"specversion\" : \"1.0\",\n  \"data\": {\"x\": 1.50, \"y\": \"\\u00e9\"} }";
    let reply = api.post("/v1/topics/t/events", format!("  {event}\n")).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body, json!({"results": [{"partition": 0, "offset": 0}]}));
    assert_eq!(api.stored_values("t", 0).await, [event]);
}

#[tokio::test]
async fn batch_results_are_in_input_order() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    api.post("/v1/topics/t/events", r#"{"first":true}"#).await;
    let reply = api.post("/v1/topics/t/events", r#"[{"n":1}, {"n":2}, {"n":3}]"#).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(
        reply.body["results"],
        json!([{"partition":0,"offset":1},{"partition":0,"offset":2},{"partition":0,"offset":3}])
    );
    assert_eq!(
        api.stored_values("t", 0).await,
        [r#"{"first":true}"#, r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]
    );
}

#[tokio::test]
async fn malformed_json_is_400_with_line_and_column() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    let reply = api.post("/v1/topics/t/events", "{\n  \"a\": 1,\n  \"b\": }").await;
    assert_problem(&reply, 400, "malformed-json");
    assert_eq!(reply.body["line"], 3);
    assert!(reply.body["column"].as_u64().is_some_and(|c| c > 0));
    assert!(reply.body["detail"].as_str().is_some_and(|d| d.contains("line 3 column")), "{}", reply.body);
    assert_problem(&api.post("/v1/topics/t/events", "").await, 400, "malformed-json");
    assert_problem(&api.post("/v1/topics/t/events", "{} {}").await, 400, "malformed-json");
}

#[tokio::test]
async fn oversized_event_is_413_naming_its_index_and_appends_nothing() {
    let api = Api::with_config(HttpConfig { max_event_bytes: 32, ..HttpConfig::default() });
    api.create_topic("t", 1).await;
    let big = json!({"data": "x".repeat(64)}).to_string();
    let reply = api.post("/v1/topics/t/events", format!(r#"[{{"ok":1}}, {big}]"#)).await;
    assert_problem(&reply, 413, "event-too-large");
    assert_eq!(reply.body["index"], 1);
    assert_eq!(api.store.appends.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn too_many_events_is_413() {
    let api = Api::with_config(HttpConfig { max_batch_events: 2, ..HttpConfig::default() });
    api.create_topic("t", 1).await;
    assert_problem(&api.post("/v1/topics/t/events", "[{},{},{}]").await, 413, "batch-too-large");
    assert_eq!(api.store.appends.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn oversized_body_is_413_problem_json() {
    let api = Api::with_config(HttpConfig { max_body_bytes: 16, ..HttpConfig::default() });
    api.create_topic("t", 1).await;
    let reply = api.post("/v1/topics/t/events", r#"[{"a":1},{"a":2},{"a":3}]"#).await;
    assert_problem(&reply, 413, "body-too-large");
    assert_eq!(reply.body["max_bytes"], 16);
    assert_eq!(reply.headers["connection"], "close", "the unread body makes the connection unusable");
}

#[tokio::test]
async fn publish_refused_before_reading_the_body_closes_the_connection() {
    let api = Api::new();
    let reply = api.post("/v1/topics/nope/events", "{}").await;
    assert_problem(&reply, 404, "topic-not-found");
    assert_eq!(reply.headers["connection"], "close");
    api.create_topic("t", 1).await;
    let ok = api.post("/v1/topics/t/events", "{}").await;
    assert_eq!(ok.status, 201);
    assert!(ok.headers.get("connection").is_none(), "a successful publish keeps the connection");
}

#[tokio::test]
async fn empty_array_is_400() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    assert_problem(&api.post("/v1/topics/t/events", " [ ] ").await, 400, "invalid-request");
}

#[tokio::test]
async fn batch_with_one_non_object_appends_nothing() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    let reply = api.post("/v1/topics/t/events", r#"[{"a":1},{"a":2},"three"]"#).await;
    assert_problem(&reply, 400, "invalid-event");
    assert_eq!(reply.body["index"], 2);
    assert_eq!(api.store.appends.load(Ordering::SeqCst), 0);
    assert_problem(&api.post("/v1/topics/t/events", "17").await, 400, "invalid-event");
}

#[tokio::test]
async fn key_from_envelope_picks_kafkas_partition() {
    let api = Api::new();
    api.create_topic("t", 8).await;
    let id = "CMIP6.CMIP.NCAR.CESM2.historical.r1i1p1f1.Amon.tas.gn.v20190308";
    let event = json!({"data": {"payload": {"item": {"id": id}}}}).to_string();
    let reply = api.post("/v1/topics/t/events", event).await;
    let expected = partition_for_key(id.as_bytes(), 8);
    assert_eq!(reply.body["results"][0]["partition"], expected);

    let reply = api.get(&format!("/v1/topics/t/events?partition={expected}")).await;
    assert_eq!(reply.body["events"][0]["key"], id);
}

#[tokio::test]
async fn key_query_parameter_overrides_the_envelope() {
    let api = Api::new();
    api.create_topic("t", 16).await;
    let event = r#"{"data":{"payload":{"item_id":"from-envelope"}}}"#;
    let reply = api.post("/v1/topics/t/events?key=explicit", event).await;
    let partition = partition_for_key(b"explicit", 16);
    assert_eq!(reply.body["results"][0]["partition"], partition);
    let reply = api.get(&format!("/v1/topics/t/events?partition={partition}")).await;
    assert_eq!(reply.body["events"][0]["key"], "explicit");
    assert_problem(&api.post("/v1/topics/t/events?key=", event).await, 400, "invalid-query");
}

#[tokio::test]
async fn unkeyed_batch_lands_in_one_partition_and_requests_rotate() {
    let api = Api::new();
    api.create_topic("t", 4).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let reply = api.post("/v1/topics/t/events", "[{},{},{}]").await;
        let parts: Vec<u64> = reply.body["results"]
            .as_array()
            .expect("results")
            .iter()
            .filter_map(|r| r["partition"].as_u64())
            .collect();
        assert!(parts.windows(2).all(|w| w[0] == w[1]), "one batch, one partition: {parts:?}");
        seen.push(parts[0]);
    }
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2, 3]);
}

#[tokio::test]
async fn keyed_batch_spanning_partitions_maps_back_to_input_order() {
    let api = Api::new();
    api.create_topic("t", 8).await;
    let ids: Vec<String> = (0..20).map(|i| format!("item-{i}")).collect();
    let batch: Vec<Value> = ids.iter().map(|id| json!({"data": {"payload": {"item_id": id}}})).collect();
    let reply = api.post("/v1/topics/t/events", Value::Array(batch).to_string()).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let results = reply.body["results"].as_array().expect("results");
    assert_eq!(results.len(), ids.len());
    for (id, result) in ids.iter().zip(results) {
        let partition = partition_for_key(id.as_bytes(), 8);
        assert_eq!(result["partition"], partition);
        let offset = result["offset"].as_u64().expect("offset") as usize;
        let stored = &api.stored_values("t", partition).await[offset];
        assert!(stored.contains(id.as_str()), "{id} at {partition}/{offset} is {stored}");
    }
}

#[tokio::test]
async fn non_json_content_type_is_415() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    let request = Request::post("/v1/topics/t/events")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .expect("request");
    assert_problem(&api.send(request).await, 415, "unsupported-media-type");
}

// --- read ------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn read_embeds_values_raw_with_metadata() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    api.post("/v1/topics/t/events", "[{\"n\": 1},{\"n\":2.50}]").await;
    let reply = api.get("/v1/topics/t/events").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(
        reply.body,
        json!({
            "events": [
                {"partition":0,"offset":0,"timestamp":"2026-11-27T10:00:00.000Z","key":null,"value":{"n":1},"headers":[]},
                {"partition":0,"offset":1,"timestamp":"2026-11-27T10:00:00.000Z","key":null,"value":{"n":2.50},"headers":[]},
            ],
            "next_offset": 2,
        })
    );
    // Raw embedding: the stored spelling ("2.50", the space after the colon) survives, not a re-serialization.
    let text = String::from_utf8(reply.raw).expect("utf8");
    assert!(text.contains(r#""value":{"n": 1}"#) && text.contains(r#""value":{"n":2.50}"#), "{text}");
}

#[tokio::test]
async fn read_honours_offset_and_limit() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    api.post("/v1/topics/t/events", "[{\"n\":0},{\"n\":1},{\"n\":2},{\"n\":3},{\"n\":4}]").await;
    let reply = api.get("/v1/topics/t/events?partition=0&offset=1&limit=2").await;
    let offsets: Vec<u64> = reply.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["offset"].as_u64())
        .collect();
    assert_eq!(offsets, [1, 2]);
    assert_eq!(reply.body["next_offset"], 3);

    let reply = api.get("/v1/topics/t/events?offset=5").await;
    assert_eq!(reply.body, json!({"events": [], "next_offset": 5}));
}

#[tokio::test]
async fn read_since_starts_at_the_first_event_at_or_after_it() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    api.store.set_now_ms(1_795_773_600_000); // 10:00
    api.post("/v1/topics/t/events", r#"{"n":0}"#).await;
    api.store.set_now_ms(1_795_777_200_000); // 11:00
    api.post("/v1/topics/t/events", r#"{"n":1}"#).await;

    let reply = api.get("/v1/topics/t/events?since=2026-11-27T10:30:00Z").await;
    assert_eq!(reply.body["events"][0]["offset"], 1);
    assert_eq!(reply.body["events"][0]["timestamp"], "2026-11-27T11:00:00.000Z");

    // Nothing at or after it yet: start at the log end.
    let reply = api.get("/v1/topics/t/events?since=2026-11-28T00:00:00Z").await;
    assert_eq!(reply.body, json!({"events": [], "next_offset": 2}));
}

#[tokio::test]
async fn read_outside_retained_offsets_is_416_with_earliest_and_latest() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    api.post("/v1/topics/t/events", "[{},{},{},{}]").await;
    api.store.truncate_before("t", 0, 2);
    for offset in [0, 1, 5] {
        let reply = api.get(&format!("/v1/topics/t/events?offset={offset}")).await;
        assert_problem(&reply, 416, "offset-out-of-range");
        assert_eq!(
            (reply.body["earliest_offset"].as_u64(), reply.body["latest_offset"].as_u64()),
            (Some(2), Some(4))
        );
    }
    // No offset means the earliest retained one.
    let reply = api.get("/v1/topics/t/events").await;
    assert_eq!(reply.body["events"][0]["offset"], 2);
}

#[tokio::test]
async fn unknown_partition_is_404() {
    let api = Api::new();
    api.create_topic("t", 2).await;
    let reply = api.get("/v1/topics/t/events?partition=2").await;
    assert_problem(&reply, 404, "partition-not-found");
}

#[tokio::test]
async fn unknown_query_parameter_is_400_naming_it() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    let reply = api.get("/v1/topics/t/events?offset=0&partiton=1").await;
    assert_problem(&reply, 400, "invalid-query");
    assert_eq!(reply.body["parameters"], json!(["partiton"]));
    assert_problem(&api.post("/v1/topics/t/events?partition=1", "{}").await, 400, "invalid-query");
    assert_problem(
        &api.get("/v1/topics/t/events?offset=1&since=2026-11-27T10:00:00Z").await,
        400,
        "invalid-query",
    );
    assert_problem(&api.get("/v1/topics/t/events?limit=1001").await, 400, "invalid-query");
}

#[tokio::test]
async fn wait_returns_when_an_event_arrives() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    let app = api.app.clone();
    let poll = tokio::spawn(async move {
        let request = Request::get("/v1/topics/t/events?wait=30").body(Body::empty()).expect("request");
        let response = app.oneshot(request).await.expect("infallible");
        axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body")
    });
    // Readiness, not a sleep: publish only once the read is parked in `wait_for`.
    api.store.waiters.subscribe().wait_for(|n| *n > 0).await.expect("store alive");
    api.post("/v1/topics/t/events", r#"{"late":true}"#).await;

    let body: Value = serde_json::from_slice(&poll.await.expect("poll task")).expect("json");
    assert_eq!(body["events"][0]["value"], json!({"late": true}));
    assert_eq!(body["next_offset"], 1);
}

#[tokio::test]
async fn shutdown_ends_long_polls_and_readiness() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    assert_eq!(api.get("/readyz").await.body, json!({"status": "ready"}));

    let app = api.app.clone();
    let poll = tokio::spawn(async move {
        let request = Request::get("/v1/topics/t/events?wait=30").body(Body::empty()).expect("request");
        app.oneshot(request).await.expect("infallible").status()
    });
    api.store.waiters.subscribe().wait_for(|n| *n > 0).await.expect("store alive");
    api.state.shutdown.begin();
    assert_eq!(poll.await.expect("poll task"), StatusCode::OK);

    assert_problem(&api.get("/readyz").await, 503, "shutting-down");
    assert_eq!(api.get("/healthz").await.body, json!({"status": "ok"}));
}

// --- routing ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_route_is_404_problem() {
    let api = Api::new();
    let reply = api.get("/v2/nothing").await;
    assert_problem(&reply, 404, "route-not-found");
}

#[tokio::test]
async fn wrong_method_is_405_problem_with_allow() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    let reply = api.call(Method::DELETE, "/v1/topics/t/events", Body::empty()).await;
    assert_problem(&reply, 405, "method-not-allowed");
    let allow = reply.headers.get(header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "Allow: {allow}");
}

#[tokio::test]
async fn undecodable_path_is_400_problem() {
    let api = Api::new();
    assert_problem(&api.get("/v1/topics/%FF/events").await, 400, "invalid-request");
}

// --- without access control --------------------------------------------------------------------------------------

#[tokio::test]
async fn topic_retention_can_be_patched_without_access_control() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    let reply =
        api.call(Method::PATCH, "/v1/topics/t", r#"{"retention":"forever","retention_bytes":4096}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!((&reply.body["retention"], &reply.body["retention_bytes"]), (&json!("forever"), &json!(4096)));
    let reply = api.call(Method::PATCH, "/v1/topics/t", r#"{"retention_bytes":null}"#).await;
    assert_eq!((&reply.body["retention"], &reply.body["retention_bytes"]), (&json!("forever"), &Value::Null));
    assert_problem(&api.call(Method::PATCH, "/v1/topics/nope", "{}").await, 404, "topic-not-found");
    assert_problem(
        &api.call(Method::PATCH, "/v1/topics/t", r#"{"retention":"x"}"#).await,
        400,
        "invalid-request",
    );
}

#[tokio::test]
async fn access_control_routes_say_it_is_disabled() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    assert_problem(
        &api.call(Method::PATCH, "/v1/topics/t", r#"{"public":true}"#).await,
        501,
        "access-control-disabled",
    );
    for (method, uri) in [
        (Method::GET, "/v1/producers"),
        (Method::POST, "/v1/consumers"),
        (Method::GET, "/v1/producers/p"),
        (Method::POST, "/v1/consumers/c/rotate"),
        (Method::DELETE, "/v1/producers/p"),
        (Method::GET, "/v1/audit"),
    ] {
        let reply = api.call(method.clone(), uri, r#"{"name":"p"}"#).await;
        assert_problem(&reply, 501, "access-control-disabled");
    }
}
