//! The webhook subscription API over a real dispatcher, log and state store, without access control (who may do
//! what is `auth_matrix.rs`'s business): answers, problem kinds, the secret shown once, the lifecycle.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use esgf_events_engine::{EmbeddedConfig, EmbeddedStore, LogStore, Retention, SystemClock, TopicConfig};
use esgf_events_http::{HttpConfig, Server, app};
use esgf_events_meta::{MetaStore, RedbMetaStore};
use esgf_events_webhooks::{Dispatcher, SubscriptionControl, WebhookConfig};
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

/// Nothing listens on the discard port; these tests never need a delivery to succeed.
const HOOK: &str = "http://127.0.0.1:9/hook";

struct Fixture {
    _dir: TempDir,
    app: Router,
    store: Arc<dyn LogStore>,
    webhooks: Arc<Dispatcher>,
}

impl Fixture {
    async fn new(config: WebhookConfig) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn LogStore> = Arc::new(
            EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("data")), Arc::new(SystemClock))
                .expect("open log"),
        );
        store
            .create_topic("t", TopicConfig { partitions: 2, retention: Retention::DEFAULT })
            .await
            .expect("topic");
        let meta: Arc<dyn MetaStore> =
            Arc::new(RedbMetaStore::open(&dir.path().join("state.redb")).expect("open meta"));
        let webhooks =
            Arc::new(Dispatcher::start(Arc::clone(&store), meta, config).await.expect("webhook dispatcher"));
        let server = Server {
            store: Arc::clone(&store),
            auth: None,
            config: HttpConfig::default(),
            tls: None,
            offsets: None,
            webhooks: Some(webhooks.clone() as Arc<dyn SubscriptionControl>),
            ops: Default::default(),
            catalogue: None,
            cluster: None,
        };
        Fixture { app: app(&server), _dir: dir, store, webhooks }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value, String) {
        call(&self.app, method, uri, body).await
    }

    async fn create(&self, body: Value) -> Value {
        let (status, _, body, _) = self.call(Method::POST, "/v1/subscriptions", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    async fn close(self) {
        self.webhooks.shutdown().await;
        self.store.shutdown().await.expect("close log");
    }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value, String) {
    let mut request = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(json) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    let response = app.clone().oneshot(request.body(body).expect("request")).await.expect("infallible");
    let (status, headers) = (response.status(), response.headers().clone());
    let raw = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
    let raw = String::from_utf8(raw.to_vec()).expect("utf8");
    let value = if raw.is_empty() { Value::Null } else { serde_json::from_str(&raw).expect("JSON body") };
    (status, headers, value, raw)
}

fn problem_type(body: &Value) -> &str {
    body["type"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn create_answers_201_with_the_secret_shown_once() {
    let fx = Fixture::new(WebhookConfig::default()).await;
    let (status, headers, body, _) = fx
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"topic": "t", "url": HOOK, "filter": ["data.payload.collection_id:CMIP6"],
                        "key_prefix": "CMIP6.", "from": "beginning", "format": "cloudevents"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    assert_eq!(headers[header::LOCATION], format!("/v1/subscriptions/{id}"));
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    let secret = body["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_") && secret.len() == 6 + 44, "{secret}");
    assert_eq!((body["topic"].as_str(), body["url"].as_str()), (Some("t"), Some(HOOK)));
    assert_eq!((body["format"].as_str(), body["from"].as_str()), (Some("cloudevents"), Some("beginning")));
    assert_eq!(body["state"], "active");
    assert_eq!(body["owner"], "anonymous", "no access control: one shared owner");
    assert_eq!(body["partitions"].as_array().map(Vec::len), Some(2));

    for uri in ["/v1/subscriptions".to_owned(), format!("/v1/subscriptions/{id}")] {
        let (status, _, _, raw) = fx.call(Method::GET, &uri, None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!raw.contains(&secret[6..]) && !raw.contains("\"secret\""), "{raw}");
    }
    let (_, _, list, _) = fx.call(Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(list["subscriptions"][0]["id"], id.as_str());
    fx.close().await;
}

#[tokio::test]
async fn refused_urls_are_400_naming_the_rule() {
    let fx = Fixture::new(WebhookConfig {
        allow: vec!["*.example.org".to_owned(), "127.0.0.1".to_owned()],
        deny: vec!["internal.example.org".to_owned()],
        ..WebhookConfig::default()
    })
    .await;
    for (url, rule) in [
        ("ftp://hooks.example.org/x", "scheme"),
        ("https://internal.example.org/x", "deny internal.example.org"),
        ("https://elsewhere.net/x", "allow"),
        ("not a url", "syntax"),
    ] {
        let (status, headers, body, _) =
            fx.call(Method::POST, "/v1/subscriptions", Some(json!({"topic": "t", "url": url}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(problem_type(&body), "urn:esgf-events:problem:webhook-url-refused", "{url}");
        assert_eq!(body["rule"], rule, "{url}");
    }
    fx.create(json!({"topic": "t", "url": "https://hooks.example.org/x"})).await;
    fx.close().await;
}

#[tokio::test]
async fn bad_requests_name_their_problem() {
    let fx = Fixture::new(WebhookConfig { max_subscriptions_per_owner: 1, ..WebhookConfig::default() }).await;
    let cases = [
        (json!({"topic": "nope", "url": HOOK}), 404, "topic-not-found"),
        (json!({"topic": "t", "url": HOOK, "filter": ["no colon"]}), 400, "invalid-request"),
        (json!({"topic": "t", "url": HOOK, "from": "yesterday"}), 400, "invalid-request"),
        (json!({"topic": "t", "url": HOOK, "format": "xml"}), 400, "invalid-request"),
        (json!({"topic": "t", "url": HOOK, "secret": "mine"}), 400, "invalid-request"),
        (json!({"topic": "t"}), 400, "invalid-request"),
    ];
    for (body, status, kind) in cases {
        let (got, _, problem, _) = fx.call(Method::POST, "/v1/subscriptions", Some(body.clone())).await;
        assert_eq!(got.as_u16(), status, "{body}: {problem}");
        assert_eq!(problem_type(&problem), format!("urn:esgf-events:problem:{kind}"), "{body}");
    }
    fx.create(json!({"topic": "t", "url": HOOK})).await;
    let (status, _, problem, _) =
        fx.call(Method::POST, "/v1/subscriptions", Some(json!({"topic": "t", "url": HOOK}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem_type(&problem), "urn:esgf-events:problem:subscription-limit");
    assert_eq!(problem["max_subscriptions"], 1);
    fx.close().await;
}

#[tokio::test]
async fn pause_resume_dead_letters_redrive_and_delete() {
    let fx = Fixture::new(WebhookConfig::default()).await;
    let id = fx.create(json!({"topic": "t", "url": HOOK})).await["id"].as_str().expect("id").to_owned();
    let base = format!("/v1/subscriptions/{id}");

    let (status, _, body, _) = fx.call(Method::POST, &format!("{base}/pause"), None).await;
    assert_eq!((status, body["state"].as_str()), (StatusCode::OK, Some("paused")));
    let (status, _, body, _) = fx.call(Method::POST, &format!("{base}/redrive"), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem_type(&body), "urn:esgf-events:problem:subscription-paused");
    assert_eq!(body["subscription"], id.as_str());
    let (status, _, body, _) = fx.call(Method::POST, &format!("{base}/resume"), None).await;
    assert_eq!((status, body["state"].as_str()), (StatusCode::OK, Some("active")));

    let (status, _, body, _) =
        fx.call(Method::GET, &format!("{base}/dead-letters?after=0&limit=10"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((body["dead_letters"].as_array().map(Vec::len), body["next"].as_u64()), (Some(0), Some(0)));
    for bad in ["limit=0", "limit=1001", "after=-1", "page=2"] {
        let (_, _, body, _) = fx.call(Method::GET, &format!("{base}/dead-letters?{bad}"), None).await;
        assert_eq!(problem_type(&body), "urn:esgf-events:problem:invalid-query", "{bad}");
    }
    let (status, _, body, _) = fx.call(Method::POST, &format!("{base}/redrive"), None).await;
    assert_eq!((status, body["queued"].as_u64()), (StatusCode::ACCEPTED, Some(0)));

    let (status, _, _, _) = fx.call(Method::DELETE, &base, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for (method, uri) in
        [(Method::GET, base.clone()), (Method::DELETE, base.clone()), (Method::POST, format!("{base}/pause"))]
    {
        let (status, _, body, _) = fx.call(method.clone(), &uri, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}");
        assert_eq!(problem_type(&body), "urn:esgf-events:problem:subscription-not-found");
    }
    fx.close().await;
}

#[tokio::test]
async fn without_a_dispatcher_subscriptions_are_501() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn LogStore> = Arc::new(
        EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("data")), Arc::new(SystemClock))
            .expect("open"),
    );
    let app = esgf_events_http::router(Arc::clone(&store), HttpConfig::default());
    let (status, _, body, _) = call(&app, Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(problem_type(&body), "urn:esgf-events:problem:webhooks-unavailable");
    store.shutdown().await.expect("close");
}
