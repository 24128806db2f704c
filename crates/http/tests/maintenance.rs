//! Operations over HTTP with a clock the test controls: scheduling maintenance windows (notice and announcement
//! rules), what clients see during a window (503 `maintenance` with `Retry-After` and a `Link` to the
//! announcement; reads kept in read-only mode), that nothing acknowledged before a window is lost, and
//! `/metrics` parsing as Prometheus text.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, Method, StatusCode, header};
use common::{open_stores, send_json};
use esgf_events_engine::{ManualClock, Retention, TopicConfig};
use esgf_events_http::{HttpConfig, Server, app};
use esgf_events_ops::announcements::Announcements;
use esgf_events_ops::{Maintenance, MaintenanceState, Ops};
use serde_json::{Value, json};
use tempfile::TempDir;

const DAY_MS: i64 = 86_400_000;
/// 2025-12-01T00:00:00Z.
const NOW_MS: i64 = 1_764_547_200_000;
const ANNOUNCEMENT: &str = "https://events.example.org/announcements/42";

struct Fixture {
    _dir: TempDir,
    app: Router,
    clock: Arc<ManualClock>,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        // The log stamps records with real time; only maintenance runs on the test's clock.
        let (store, meta) = open_stores(dir.path());
        store
            .create_topic("t", TopicConfig { partitions: 1, retention: Retention::DEFAULT })
            .await
            .expect("topic");
        let clock = Arc::new(ManualClock::new(NOW_MS));
        let state = MaintenanceState::new(clock.clone());
        let announcements = Arc::new(Announcements::new(Arc::clone(&meta), clock.clone()));
        let maintenance = Maintenance::open(Arc::clone(&meta), state, Duration::from_secs(7 * 86_400))
            .await
            .expect("open")
            .with_announcements(Arc::clone(&announcements));
        let ops = Ops {
            metrics: esgf_events_ops::metrics::prometheus(),
            maintenance: Some(Arc::new(maintenance)),
            announcements: Some(announcements),
            changelog: Some(meta),
            public_url: None,
            mail: None,
            status: None,
        };
        let server = Server { ops, ..Server::new(store, HttpConfig::default()) };
        Fixture { app: app(&server), _dir: dir, clock }
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, HeaderMap, String) {
        send_json(&self.app, method, uri, body).await
    }

    async fn json(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, HeaderMap, Value) {
        let (status, headers, text) = self.call(method, uri, body).await;
        (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn at(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).expect("time").to_rfc3339()
}

fn window(starts_ms: i64, ends_ms: i64, announcement: Option<&str>, force: bool) -> Value {
    json!({
        "starts_at": at(starts_ms),
        "ends_at": at(ends_ms),
        "mode": "read-only",
        "message": "storage migration",
        "announcement": announcement,
        "force": force,
    })
}

#[tokio::test]
async fn window_needs_an_announcement_and_notice_unless_forced() {
    let fx = Fixture::new().await;
    let (status, _, p) = fx
        .json(
            Method::POST,
            "/v1/maintenance",
            Some(window(NOW_MS + 8 * DAY_MS, NOW_MS + 9 * DAY_MS, None, false)),
        )
        .await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::CONFLICT, Some("urn:esgf-events:problem:maintenance-not-announced"))
    );
    let short = window(NOW_MS + DAY_MS, NOW_MS + 2 * DAY_MS, Some(ANNOUNCEMENT), false);
    let (status, _, p) = fx.json(Method::POST, "/v1/maintenance", Some(short.clone())).await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::CONFLICT, Some("urn:esgf-events:problem:maintenance-notice-too-short"))
    );
    let mut forced = short;
    forced["force"] = json!(true);
    let (status, headers, w) = fx.json(Method::POST, "/v1/maintenance", Some(forced)).await;
    assert_eq!(status, StatusCode::CREATED, "{w}");
    assert_eq!(w["forced"], true);
    let id = w["id"].as_str().expect("id");
    assert_eq!(headers[header::LOCATION], format!("/v1/maintenance/{id}").as_str());
    let (status, _, list) = fx.json(Method::GET, "/v1/maintenance", None).await;
    assert_eq!((status, list["windows"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
    let (status, _, _) = fx.call(Method::DELETE, &format!("/v1/maintenance/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, p) = fx.json(Method::DELETE, &format!("/v1/maintenance/{id}"), None).await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("urn:esgf-events:problem:maintenance-window-not-found"))
    );
}

#[tokio::test]
async fn during_a_window_writes_get_503_with_retry_after_and_link_and_nothing_acknowledged_is_lost() {
    let fx = Fixture::new().await;
    for n in 0..3 {
        let (status, _, body) = fx.call(Method::POST, "/v1/topics/t/events", Some(json!({ "n": n }))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let starts = NOW_MS + 8 * DAY_MS;
    let ends = starts + 2 * 3_600_000;
    let (status, _, w) =
        fx.json(Method::POST, "/v1/maintenance", Some(window(starts, ends, Some(ANNOUNCEMENT), false))).await;
    assert_eq!(status, StatusCode::CREATED, "{w}");
    assert_eq!(w["forced"], false);
    let id = w["id"].as_str().expect("id").to_owned();

    // Half an hour into the window.
    fx.clock.set_ms(starts + 1_800_000);
    let (status, headers, p) = fx.json(Method::POST, "/v1/topics/t/events", Some(json!({ "n": 99 }))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(p["type"], "urn:esgf-events:problem:maintenance");
    assert_eq!(p["detail"], "storage migration");
    assert_eq!(p["mode"], "read-only");
    assert_eq!(p["announcement"], ANNOUNCEMENT);
    assert_eq!(headers[header::RETRY_AFTER], "5400");
    let link = headers[header::LINK].to_str().expect("link");
    assert!(link.starts_with(&format!("<{ANNOUNCEMENT}>")) && link.contains("rel=\"related\""), "{link}");

    // Read-only: reads, descriptions, probes and the maintenance API itself keep working.
    let (status, _, read) = fx.json(Method::GET, "/v1/topics/t/events", None).await;
    assert_eq!((status, read["events"].as_array().map(Vec::len)), (StatusCode::OK, Some(3)));
    let (status, _, ready) = fx.json(Method::GET, "/readyz", None).await;
    assert_eq!((status, ready["maintenance"]["id"].as_str()), (StatusCode::OK, Some(id.as_str())));
    let (status, _, list) = fx.json(Method::GET, "/v1/maintenance", None).await;
    assert_eq!((status, list["active"].as_str()), (StatusCode::OK, Some(id.as_str())));

    // Full mode refuses reads too.
    let (status, _, w) =
        fx.json(Method::PATCH, &format!("/v1/maintenance/{id}"), Some(json!({ "mode": "full" }))).await;
    assert_eq!((status, w["mode"].as_str()), (StatusCode::OK, Some("full")), "{w}");
    let (status, _, p) = fx.json(Method::GET, "/v1/topics/t/events", None).await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("urn:esgf-events:problem:maintenance"))
    );
    let (status, _, _) = fx.call(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);

    // After the window: everything acknowledged before it is there, and writes work again.
    fx.clock.set_ms(ends);
    let (status, _, _) = fx.call(Method::POST, "/v1/topics/t/events", Some(json!({ "n": 3 }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, read) = fx.json(Method::GET, "/v1/topics/t/events", None).await;
    assert_eq!(status, StatusCode::OK);
    let ns: Vec<i64> =
        read["events"].as_array().expect("events").iter().filter_map(|e| e["value"]["n"].as_i64()).collect();
    assert_eq!(ns, vec![0, 1, 2, 3]);
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_requests_by_route() {
    let fx = Fixture::new().await;
    let (status, _, _) = fx.call(Method::POST, "/v1/topics/t/events", Some(json!({ "n": 1 }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = fx.call(Method::GET, "/no/such/route", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, headers, text) = fx.call(Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE].to_str().expect("type").starts_with("text/plain; version=0.0.4"));
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    let requests: Vec<_> =
        scrape.samples.iter().filter(|s| s.metric == "esgf_events_http_requests_total").collect();
    assert!(
        requests.iter().any(|s| s.labels.get("route") == Some("/v1/topics/:topic/events")
            && s.labels.get("status") == Some("201")),
        "{text}"
    );
    assert!(requests.iter().any(|s| s.labels.get("route") == Some("unmatched")), "{text}");
    assert!(scrape.samples.iter().any(|s| s.metric.starts_with("esgf_events_fsync_seconds")), "{text}");
}

#[tokio::test]
async fn announcements_and_changelog_are_served_as_json_html_and_atom() {
    let fx = Fixture::new().await;
    let (status, _, a) = fx
        .json(
            Method::POST,
            "/v1/announcements",
            Some(json!({ "kind": "api-change", "title": "New <filter> syntax", "body": "Details & more." })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    assert_eq!((a["kind"].as_str(), a["id"].as_str()), (Some("api-change"), Some("1")));
    let (status, _, p) =
        fx.json(Method::POST, "/v1/announcements", Some(json!({ "kind": "gossip", "title": "x" }))).await;
    assert_eq!(
        (status, p["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("urn:esgf-events:problem:invalid-request"))
    );

    // A window may name the announcement by id; scheduling it publishes a planned-downtime announcement and
    // records a changelog entry.
    let starts = NOW_MS + 8 * DAY_MS;
    let (status, _, w) = fx
        .json(Method::POST, "/v1/maintenance", Some(window(starts, starts + 3_600_000, Some("1"), false)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{w}");
    let (_, _, list) = fx.json(Method::GET, "/v1/announcements", None).await;
    let kinds: Vec<&str> =
        list["announcements"].as_array().expect("list").iter().filter_map(|a| a["kind"].as_str()).collect();
    assert_eq!(kinds, ["planned-downtime", "api-change"]);

    let (status, headers, page) = fx.call(Method::GET, "/announcements", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert!(page.contains("New &lt;filter&gt; syntax") && page.contains("storage migration"), "{page}");
    let (status, headers, feed) = fx.call(Method::GET, "/announcements.atom", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/atom+xml; charset=utf-8");
    assert_eq!(feed.matches("<entry>").count(), 2, "{feed}");

    let (status, _, changelog) = fx.json(Method::GET, "/v1/changelog", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(changelog["runtime"][0]["kind"], "maintenance");
    assert!(changelog["releases"].as_array().is_some_and(|r| r.len() >= 2), "{changelog}");
    let (status, _, page) = fx.call(Method::GET, "/changelog", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Foundation") && page.contains("Maintenance window"), "{page}");
    let (status, _, feed) = fx.call(Method::GET, "/changelog.atom", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(feed.contains("<category term=\"maintenance\"/>"), "{feed}");

    // A full window leaves the announcements and the changelog readable.
    let (_, _, w) = fx
        .json(
            Method::PATCH,
            &format!("/v1/maintenance/{}", w["id"].as_str().expect("id")),
            Some(json!({ "mode": "full" })),
        )
        .await;
    assert_eq!(w["mode"], "full");
    fx.clock.set_ms(starts + 1);
    for path in ["/announcements", "/announcements.atom", "/v1/announcements", "/changelog", "/v1/changelog"]
    {
        let (status, _, _) = fx.call(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, _, _) = fx.call(Method::GET, "/v1/topics", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // The status page stays up and says why.
    let (status, _, s) = fx.json(Method::GET, "/v1/status", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((s["state"].as_str(), s["active"]["mode"].as_str()), (Some("maintenance"), Some("full")));
    assert_eq!(s["topics"][0]["name"], "t");
    let (status, _, page) = fx.call(Method::GET, "/status", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("storage migration"), "{page}");
}
