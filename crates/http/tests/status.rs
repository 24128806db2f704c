//! The status endpoints with a status recorder: incidents pushed by the monitor are idempotent by their id,
//! invalid ones are refused as problems, and they show on `/v1/status` (an open one makes the state
//! `degraded`) with the recovery-time summary; consumer lag and uptime come from the recorder's refresh.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, StatusCode};
use common::{open_stores, send_json};
use esgf_events_engine::{LogStore, NewRecord, SystemClock, TopicConfig};
use esgf_events_http::{HttpConfig, Server, app};
use esgf_events_meta::offsets::GroupOffsets;
use esgf_events_ops::Ops;
use esgf_events_ops::status::StatusRecorder;
use serde_json::{Value, json};
use tempfile::TempDir;

struct Fixture {
    _dir: TempDir,
    app: Router,
    recorder: Arc<StatusRecorder>,
    store: Arc<dyn LogStore>,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, meta) = open_stores(dir.path());
        store.create_topic("t", TopicConfig::default()).await.expect("topic");
        let recorder = Arc::new(StatusRecorder::new(
            Arc::clone(&store),
            Arc::clone(&meta),
            None,
            Arc::new(SystemClock),
            Default::default(),
        ));
        let ops = Ops { status: Some(Arc::clone(&recorder)), ..Ops::default() };
        let server = Server {
            offsets: Some(GroupOffsets::new(meta)),
            ops,
            ..Server::new(Arc::clone(&store), HttpConfig::default())
        };
        Fixture { app: app(&server), _dir: dir, recorder, store }
    }

    async fn json(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (status, _, text) = send_json(&self.app, method, uri, body).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn incident(id: &str, ended_at: Option<&str>) -> Value {
    json!({
        "id": id,
        "started_at": "2026-01-10T12:00:00Z",
        "ended_at": ended_at,
        "detected_by": "esgf-events monitor on probe-1",
        "detail": "/readyz unreachable: connection refused",
    })
}

#[tokio::test]
async fn incidents_are_idempotent_by_id_and_show_on_the_status_with_their_recovery_time() {
    let fx = Fixture::new().await;
    let ended = Some("2026-01-10T12:12:30Z");
    let (status, body) = fx.json(Method::POST, "/v1/incidents", Some(incident("outage-1", ended))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["duration_seconds"], 750);
    let (status, _) = fx.json(Method::POST, "/v1/incidents", Some(incident("outage-1", ended))).await;
    assert_eq!(status, StatusCode::OK, "the same incident again is no new incident");

    let (status, list) = fx.json(Method::GET, "/v1/incidents", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["incidents"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        (list["rto"]["mean_seconds"].as_u64(), list["rto"]["max_human"].as_str()),
        (Some(750), Some("12 min 30 s"))
    );

    let (_, view) = fx.json(Method::GET, "/v1/status", None).await;
    assert_eq!(view["state"], "operational");
    assert_eq!(view["incidents"][0]["duration"], "12 min 30 s");
    assert_eq!(view["incidents"][0]["ended_at"], "2026-01-10T12:12:30.000Z");

    // Pushed while still going on: the service is degraded until the monitor pushes its end.
    let (status, _) = fx.json(Method::POST, "/v1/incidents", Some(incident("outage-2", None))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, view) = fx.json(Method::GET, "/v1/status", None).await;
    assert_eq!(view["state"], "degraded", "{view}");
    assert!(view["degraded"].as_str().is_some_and(|d| d.contains("connection refused")), "{view}");
    let (status, _) = fx
        .json(Method::POST, "/v1/incidents", Some(incident("outage-2", Some("2026-01-10T13:00:00Z"))))
        .await;
    assert_eq!(status, StatusCode::OK, "an update");
    let (_, view) = fx.json(Method::GET, "/v1/status", None).await;
    assert_eq!(view["state"], "operational");
}

#[tokio::test]
async fn invalid_incidents_are_refused_as_problems() {
    let fx = Fixture::new().await;
    for bad in [
        incident("no/slashes", None),
        incident("ok", Some("2026-01-10T11:00:00Z")),
        json!({ "id": "x", "started_at": "yesterday", "detected_by": "m" }),
        json!({ "id": "x", "started_at": "2026-01-10T12:00:00Z", "detected_by": "m", "extra": 1 }),
    ] {
        let (status, problem) = fx.json(Method::POST, "/v1/incidents", Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {problem}");
        assert_eq!(problem["type"], "urn:esgf-events:problem:invalid-request", "{problem}");
    }
}

#[tokio::test]
async fn status_shows_uptime_and_consumer_lag_from_the_recorder() {
    let fx = Fixture::new().await;
    let records = (0..4).map(|i| NewRecord::from_value(format!("{i}"))).collect();
    fx.store.append("t", 0, records).await.expect("append");
    let (status, _) = fx
        .json(
            Method::PUT,
            "/v1/groups/indexer/offsets",
            Some(json!({ "topic": "t", "partition": 0, "offset": 1 })),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let now = chrono::Utc::now().timestamp_millis();
    fx.recorder.per_minute(now).await.expect("minute");
    fx.recorder.refresh_lag().await.expect("lag");
    let (_, view) = fx.json(Method::GET, "/v1/status", None).await;
    assert_eq!(view["lag"], json!([{ "group": "indexer", "topic": "t", "partitions": 1, "lag": 3 }]));
    assert_eq!(view["uptime"][0]["up_minutes"], 1);
    assert_eq!(view["uptime"][0]["uptime_percent"], 100.0);
    assert_eq!(view["topics"][0]["last_hour"], 0);
}
