//! Delivery end to end: a real log (`EmbeddedStore`), a real state store (`RedbMetaStore`) and an in-process
//! axum receiver that can be told to fail (500s, hangs past the timeout, 429 with `Retry-After`, redirects).
//! Every request the receiver gets is checked against its Standard Webhooks signature.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use esgf_events_engine::{
    EmbeddedConfig, EmbeddedStore, LogStore, NewRecord, Retention, SystemClock, TopicConfig,
};
use esgf_events_meta::{MetaStore, RedbMetaStore};
use esgf_events_webhooks::{
    Dispatcher, Format, NewSubscription, State, SubscriptionControl, SubscriptionView, WebhookConfig,
    WebhookError, WebhookSecret,
};
use tempfile::TempDir;
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------------------------------
// Receiver
// ---------------------------------------------------------------------------------------------------------------

/// What the receiver answers to one attempt.
#[derive(Debug, Clone)]
enum Reply {
    Ok,
    Status(u16),
    /// 429 with `Retry-After: <seconds>`.
    TooMany(u64),
    /// Answers only after this long (past the client's timeout).
    Hang(Duration),
    Redirect,
}

/// One request as received.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    content_type: String,
    body: Bytes,
    at: Instant,
    accepted: bool,
}

type Script = Box<dyn Fn(usize) -> Reply + Send + Sync>;

struct Receiver {
    /// Decides the reply to the n-th request (0-based).
    script: Mutex<Script>,
    secret: Mutex<Option<WebhookSecret>>,
    log: Mutex<Vec<Received>>,
    accepted: watch::Sender<usize>,
    bad_signatures: Mutex<Vec<String>>,
}

impl Receiver {
    async fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> (Arc<Receiver>, String) {
        let receiver = Arc::new(Receiver {
            script: Mutex::new(Box::new(script)),
            secret: Mutex::new(None),
            log: Mutex::new(Vec::new()),
            accepted: watch::Sender::new(0),
            bad_signatures: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/hook", axum::routing::post(hook))
            .route("/elsewhere", axum::routing::post(hook))
            .with_state(Arc::clone(&receiver));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (receiver, format!("http://{addr}/hook"))
    }

    fn set_script(&self, script: impl Fn(usize) -> Reply + Send + Sync + 'static) {
        *self.script.lock().expect("lock") = Box::new(script);
    }

    fn set_secret(&self, secret: &WebhookSecret) {
        *self.secret.lock().expect("lock") = Some(secret.clone());
    }

    fn log(&self) -> Vec<Received> {
        self.log.lock().expect("lock").clone()
    }

    fn accepted_ids(&self) -> Vec<String> {
        self.log().into_iter().filter(|r| r.accepted).map(|r| r.id).collect()
    }

    async fn wait_accepted(&self, n: usize) {
        let mut rx = self.accepted.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|count| *count >= n)).await;
        assert!(
            waited.is_ok(),
            "timed out waiting for {n} accepted deliveries; got {:?}",
            self.accepted_ids()
        );
    }
}

async fn hook(AxumState(receiver): AxumState<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (id, timestamp, signature) =
        (text("webhook-id"), text("webhook-timestamp"), text("webhook-signature"));
    if let Some(secret) = receiver.secret.lock().expect("lock").as_ref() {
        let expected = timestamp.parse::<i64>().map(|ts| secret.sign(&id, ts, &body));
        if expected.as_deref() != Ok(signature.as_str()) {
            receiver.bad_signatures.lock().expect("lock").push(id.clone());
        }
    }
    let n = receiver.log.lock().expect("lock").len();
    let reply = (receiver.script.lock().expect("lock"))(n);
    let accepted = matches!(reply, Reply::Ok);
    receiver.log.lock().expect("lock").push(Received {
        id,
        content_type: text(header::CONTENT_TYPE.as_str()),
        body,
        at: Instant::now(),
        accepted,
    });
    if accepted {
        receiver.accepted.send_modify(|count| *count += 1);
    }
    match reply {
        Reply::Ok => StatusCode::NO_CONTENT.into_response(),
        Reply::Status(code) => {
            (StatusCode::from_u16(code).expect("status"), "receiver says no").into_response()
        }
        Reply::TooMany(seconds) => {
            (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, seconds.to_string())]).into_response()
        }
        Reply::Hang(how_long) => {
            tokio::time::sleep(how_long).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Reply::Redirect => (StatusCode::FOUND, [(header::LOCATION, "/elsewhere")]).into_response(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------------------------

struct Fixture {
    dir: TempDir,
    store: Arc<dyn LogStore>,
    meta: Arc<dyn MetaStore>,
}

impl Fixture {
    async fn new(partitions: u32) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn LogStore> = Arc::new(
            EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("data")), Arc::new(SystemClock))
                .expect("open log"),
        );
        store
            .create_topic("t", TopicConfig { partitions, retention: Retention::DEFAULT })
            .await
            .expect("topic");
        let meta: Arc<dyn MetaStore> =
            Arc::new(RedbMetaStore::open(&dir.path().join("state.redb")).expect("open meta"));
        Fixture { dir, store, meta }
    }

    async fn dispatcher(&self, config: WebhookConfig) -> Dispatcher {
        Dispatcher::start(Arc::clone(&self.store), Arc::clone(&self.meta), config).await.expect("dispatcher")
    }

    /// Appends `{"n": i}` for each `i`, keyed `k<i>` into `partition`.
    async fn publish(&self, partition: u32, range: std::ops::Range<u32>) {
        let records = range
            .map(|i| NewRecord {
                timestamp_ms: None,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Bytes::from(format!(r#"{{"n": {i}}}"#)),
                headers: Vec::new(),
            })
            .collect();
        self.store.append("t", partition, records).await.expect("append");
    }

    async fn close(self) {
        self.store.shutdown().await.expect("close log");
        drop(self.dir);
    }
}

/// Fast retries, short timeout: the tests exercise the logic, not the clock.
fn quick() -> WebhookConfig {
    WebhookConfig {
        timeout: Duration::from_millis(300),
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(50),
        ..WebhookConfig::default()
    }
}

fn subscription(url: &str, from: &str) -> NewSubscription {
    NewSubscription {
        topic: "t".to_owned(),
        url: url.to_owned(),
        filter: Vec::new(),
        key_prefix: None,
        from: Some(from.to_owned()),
        format: None,
    }
}

async fn create(dispatcher: &Dispatcher, receiver: &Receiver, request: NewSubscription) -> SubscriptionView {
    let created = dispatcher.create("alice", request).await.expect("create");
    assert!(created.secret.expose().starts_with("whsec_"));
    receiver.set_secret(&created.secret);
    created.subscription
}

/// Polls the dispatcher's view until `done` holds (state changes have no channel to wait on).
async fn wait_view(
    dispatcher: &Dispatcher,
    id: &str,
    what: &str,
    done: impl Fn(&SubscriptionView) -> bool,
) -> SubscriptionView {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = dispatcher.get(id).await.expect("get");
        if done(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {view:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn offsets_of(ids: &[String], partition: u32) -> Vec<u64> {
    let prefix = format!("t-{partition}-");
    ids.iter().filter_map(|id| id.strip_prefix(&prefix)).map(|o| o.parse().expect("offset")).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn events_arrive_in_order_despite_500s_timeouts_and_429s() {
    let fx = Fixture::new(2).await;
    // Attempts 0-1: 500, 2: hang past the timeout, 3: 429 asking for 1 s, then everything else every fifth.
    let (receiver, url) = Receiver::start(|n| match n {
        0 | 1 => Reply::Status(500),
        2 => Reply::Hang(Duration::from_secs(2)),
        3 => Reply::TooMany(1),
        n if n % 5 == 0 => Reply::Status(503),
        _ => Reply::Ok,
    })
    .await;
    let config = WebhookConfig { backoff_cap: Duration::from_secs(300), ..quick() };
    let dispatcher = fx.dispatcher(config).await;
    let view = create(&dispatcher, &receiver, subscription(&url, "beginning")).await;
    assert_eq!(view.state, State::Active);
    fx.publish(0, 0..10).await;
    fx.publish(1, 0..10).await;

    receiver.wait_accepted(20).await;
    let accepted = receiver.accepted_ids();
    assert_eq!(accepted.len(), 20, "each event accepted exactly once: {accepted:?}");
    for partition in 0..2 {
        assert_eq!(offsets_of(&accepted, partition), (0..10).collect::<Vec<u64>>(), "partition {partition}");
    }
    assert!(receiver.bad_signatures.lock().expect("lock").is_empty(), "every delivery is signed");

    // The retry after the 429 waited at least the second the receiver asked for.
    let log = receiver.log();
    let waited = log[4].at.duration_since(log[3].at);
    assert!(waited >= Duration::from_millis(990), "Retry-After honoured: waited {waited:?}");
    assert_eq!(log[3].id, log[4].id, "the same event is retried");
    let all_content_types: Vec<&str> = log.iter().map(|r| r.content_type.as_str()).collect();
    assert!(all_content_types.iter().all(|c| *c == "application/json"), "{all_content_types:?}");
    assert_eq!(&log.last().expect("requests").body[..], br#"{"n": 9}"#, "raw body is the event");

    let view = wait_view(&dispatcher, &view.id, "no lag", |v| v.lag == 0).await;
    assert_eq!(view.state, State::Active);
    assert_eq!(view.partitions.iter().map(|p| p.cursor).collect::<Vec<_>>(), vec![10, 10]);
    let error = view.last_error.expect("the failures were recorded");
    assert!(error.message.contains("503") || error.message.contains("500"), "{error:?}");
    assert_eq!(view.last_delivery.expect("delivered").status, 204);
    dispatcher.shutdown().await;
    fx.close().await;
}

#[tokio::test]
async fn a_timeout_is_reported_and_retried() {
    let fx = Fixture::new(1).await;
    let (receiver, url) =
        Receiver::start(|n| if n == 0 { Reply::Hang(Duration::from_secs(2)) } else { Reply::Ok }).await;
    let dispatcher = fx.dispatcher(quick()).await;
    let view = create(&dispatcher, &receiver, subscription(&url, "beginning")).await;
    fx.publish(0, 0..1).await;
    receiver.wait_accepted(1).await;
    let view = wait_view(&dispatcher, &view.id, "delivery recorded", |v| v.last_delivery.is_some()).await;
    let error = view.last_error.expect("the timeout is the last error");
    assert!(error.message.contains("timed out"), "{error:?}");
    assert_eq!((error.attempt, error.webhook_id.as_deref()), (1, Some("t-0-0")));
    assert_eq!(view.last_delivery.expect("delivered").attempts, 2);
    dispatcher.shutdown().await;
    fx.close().await;
}

#[tokio::test]
async fn permanently_failing_receiver_fills_the_dead_letter_list_and_redrive_delivers_them_in_order() {
    let fx = Fixture::new(1).await;
    let (receiver, url) = Receiver::start(|_| Reply::Status(500)).await;
    let dispatcher = fx.dispatcher(WebhookConfig { max_attempts: 3, ..quick() }).await;
    let view = create(&dispatcher, &receiver, subscription(&url, "latest")).await;
    fx.publish(0, 0..4).await;

    let view = wait_view(&dispatcher, &view.id, "4 dead letters", |v| v.dead_letters == 4).await;
    assert_eq!(view.lag, 0, "delivery moved on past each dead letter");
    assert_eq!(receiver.log().len(), 12, "3 attempts per event");
    let letters = dispatcher.dead_letters(&view.id, 0, 100).await.expect("dead letters");
    assert_eq!(letters.iter().map(|l| l.offset).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert_eq!(letters.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert!(letters.iter().all(|l| l.attempts == 3 && l.last_error.starts_with("HTTP 500")), "{letters:?}");
    let page = dispatcher.dead_letters(&view.id, 2, 1).await.expect("page");
    assert_eq!(page.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![3]);

    receiver.set_script(|_| Reply::Ok);
    assert_eq!(dispatcher.redrive(&view.id).await.expect("redrive"), 4);
    receiver.wait_accepted(4).await;
    assert_eq!(receiver.accepted_ids(), vec!["t-0-0", "t-0-1", "t-0-2", "t-0-3"]);
    let view = wait_view(&dispatcher, &view.id, "empty list", |v| v.dead_letters == 0 && !v.redriving).await;
    assert!(dispatcher.dead_letters(&view.id, 0, 100).await.expect("dead letters").is_empty());

    // New events flow again.
    fx.publish(0, 4..6).await;
    receiver.wait_accepted(6).await;
    assert_eq!(&receiver.accepted_ids()[4..], ["t-0-4", "t-0-5"]);
    assert!(receiver.bad_signatures.lock().expect("lock").is_empty());
    dispatcher.shutdown().await;
    fx.close().await;
}

#[tokio::test]
async fn dead_letters_survive_a_restart_and_redrive_stops_at_an_event_that_fails_again() {
    let fx = Fixture::new(1).await;
    let (receiver, url) = Receiver::start(|_| Reply::Status(400)).await;
    let config = WebhookConfig { max_attempts: 1, ..quick() };
    let dispatcher = fx.dispatcher(config.clone()).await;
    let view = create(&dispatcher, &receiver, subscription(&url, "beginning")).await;
    fx.publish(0, 0..3).await;
    wait_view(&dispatcher, &view.id, "3 dead letters", |v| v.dead_letters == 3).await;
    dispatcher.shutdown().await;

    let dispatcher = fx.dispatcher(config).await;
    let view = dispatcher.get(&view.id).await.expect("still there");
    assert_eq!((view.dead_letters, view.lag), (3, 0));
    // The second dead letter fails again: the first is delivered, the rest stay.
    receiver.set_script(|n| if n == 4 { Reply::Status(500) } else { Reply::Ok });
    dispatcher.redrive(&view.id).await.expect("redrive");
    let view =
        wait_view(&dispatcher, &view.id, "redrive ended", |v| !v.redriving && v.dead_letters == 2).await;
    let letters = dispatcher.dead_letters(&view.id, 0, 10).await.expect("dead letters");
    assert_eq!(letters.iter().map(|l| l.offset).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(letters[0].attempts, 2, "attempts add up");
    assert_eq!(receiver.accepted_ids(), vec!["t-0-0"]);
    dispatcher.shutdown().await;
    fx.close().await;
}

#[tokio::test]
async fn restart_resumes_from_the_persisted_cursor_without_loss() {
    let fx = Fixture::new(2).await;
    let (receiver, url) = Receiver::start(|_| Reply::Ok).await;
    let dispatcher = fx.dispatcher(quick()).await;
    let view = create(&dispatcher, &receiver, subscription(&url, "beginning")).await;
    fx.publish(0, 0..30).await;
    fx.publish(1, 0..30).await;
    receiver.wait_accepted(10).await;
    dispatcher.shutdown().await;
    let before = receiver.accepted_ids().len();

    // Published while no dispatcher runs.
    fx.publish(0, 30..40).await;
    fx.publish(1, 30..40).await;
    let dispatcher = fx.dispatcher(quick()).await;
    receiver.wait_accepted(80).await;
    let accepted = receiver.accepted_ids();
    assert_eq!(accepted.len(), 80, "shutdown commits its cursors: no duplicates (before restart: {before})");
    for partition in 0..2 {
        assert_eq!(offsets_of(&accepted, partition), (0..40).collect::<Vec<u64>>(), "partition {partition}");
    }
    wait_view(&dispatcher, &view.id, "no lag", |v| v.lag == 0).await;
    dispatcher.shutdown().await;
    fx.close().await;
}

#[tokio::test]
async fn a_crash_redelivers_uncommitted_events_but_loses_none() {
    let fx = Fixture::new(1).await;
    let (receiver, url) = Receiver::start(|_| Reply::Ok).await;
    let dispatcher = fx.dispatcher(quick()).await;
    let view = create(&dispatcher, &receiver, subscription(&url, "beginning")).await;
    fx.publish(0, 0..20).await;
    receiver.wait_accepted(20).await;
    // No shutdown: the tasks die with the dispatcher, as in a crash, before committing their cursors.
    drop(dispatcher);

    let dispatcher = fx.dispatcher(quick()).await;
    fx.publish(0, 20..25).await;
    let mut ids = receiver.accepted_ids();
    receiver.wait_accepted(ids.len() + 5).await;
    wait_view(&dispatcher, &view.id, "no lag", |v| v.lag == 0).await;
    ids = receiver.accepted_ids();
    let mut offsets = offsets_of(&ids, 0);
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets, (0..25).collect::<Vec<u64>>(), "at least once: {ids:?}");
    dispatcher.shutdown().await;
    fx.close().await;
}

#[tokio::test]
async fn pause_stops_delivery_and_resume_continues_where_it_stopped() {
    let fx = Fixture::new(1).await;
    let (receiver, url) = Receiver::start(|_| Reply::Ok).await;
    let dispatcher = fx.dispatcher(quick()).await;
    let view = create(&dispatcher, &receiver, subscription(&url, "beginning")).await;
    fx.publish(0, 0..2).await;
    receiver.wait_accepted(2).await;

    let paused = dispatcher.pause(&view.id).await.expect("pause");
    assert_eq!(paused.state, State::Paused);
    assert_eq!(dispatcher.pause(&view.id).await.expect("idempotent").state, State::Paused);
    assert!(matches!(dispatcher.redrive(&view.id).await, Err(WebhookError::Paused(_))));
    fx.publish(0, 2..4).await;
    let view = wait_view(&dispatcher, &view.id, "lag seen", |v| v.lag == 2).await;
    assert_eq!(receiver.log().len(), 2, "nothing is delivered while paused");

    // A paused subscription stays paused across a restart.
    dispatcher.shutdown().await;
    let dispatcher = fx.dispatcher(quick()).await;
    assert_eq!(dispatcher.get(&view.id).await.expect("get").state, State::Paused);

    assert_eq!(dispatcher.resume(&view.id).await.expect("resume").state, State::Active);
    receiver.wait_accepted(4).await;
    assert_eq!(receiver.accepted_ids(), vec!["t-0-0", "t-0-1", "t-0-2", "t-0-3"]);
    dispatcher.shutdown().await;
    fx.close().await;
}

#[tokio::test]
async fn filters_key_prefix_and_cloudevents_format_shape_what_is_sent() {
    let fx = Fixture::new(1).await;
    let (receiver, url) = Receiver::start(|_| Reply::Ok).await;
    let dispatcher = fx.dispatcher(quick()).await;
    let mut request = subscription(&url, "beginning");
    request.filter = vec!["kind:keep".to_owned()];
    request.key_prefix = Some("CMIP6.".to_owned());
    request.format = Some(Format::CloudEvents);
    let view = create(&dispatcher, &receiver, request).await;
    let event = |key: &str, kind: &str| NewRecord {
        timestamp_ms: None,
        key: Some(Bytes::from(key.to_owned())),
        value: Bytes::from(format!(r#"{{"kind":"{kind}"}}"#)),
        headers: Vec::new(),
    };
    fx.store
        .append(
            "t",
            0,
            vec![
                event("CMIP6.a", "keep"),
                event("CMIP6.b", "drop"),
                event("CMIP7.c", "keep"),
                event("CMIP6.d", "keep"),
            ],
        )
        .await
        .expect("append");
    receiver.wait_accepted(2).await;
    wait_view(&dispatcher, &view.id, "no lag", |v| v.lag == 0).await;
    let log = receiver.log();
    assert_eq!(log.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec!["t-0-0", "t-0-3"]);
    for r in &log {
        assert_eq!(r.content_type, "application/cloudevents+json");
        let cloudevent: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
        assert_eq!(
            (cloudevent["specversion"].as_str(), cloudevent["data"]["kind"].as_str()),
            (Some("1.0"), Some("keep"))
        );
    }
    dispatcher.shutdown().await;
    fx.close().await;
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let fx = Fixture::new(1).await;
    let (receiver, url) = Receiver::start(|n| if n == 0 { Reply::Redirect } else { Reply::Ok }).await;
    let dispatcher = fx.dispatcher(quick()).await;
    let view = create(&dispatcher, &receiver, subscription(&url, "beginning")).await;
    fx.publish(0, 0..1).await;
    receiver.wait_accepted(1).await;
    let view = wait_view(&dispatcher, &view.id, "delivered", |v| v.last_delivery.is_some()).await;
    assert!(view.last_error.expect("the 302 failed").message.starts_with("HTTP 302"));
    let log = receiver.log();
    assert_eq!(log.len(), 2, "the retry went to the subscription's URL, not the Location: {log:?}");
    dispatcher.shutdown().await;
    fx.close().await;
}

#[tokio::test]
async fn creation_validates_url_topic_filter_and_from() {
    let fx = Fixture::new(1).await;
    let own: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
    let config = WebhookConfig {
        deny: vec!["10.0.0.0/8".to_owned()],
        own_addresses: vec![own],
        max_subscriptions_per_owner: 2,
        ..quick()
    };
    let dispatcher = fx.dispatcher(config).await;
    let refused = |url: &'static str| {
        let request = subscription(url, "latest");
        let dispatcher = &dispatcher;
        async move {
            match dispatcher.create("alice", request).await {
                Err(WebhookError::UrlRefused(refused)) => refused.rule,
                other => panic!("{url}: {other:?}"),
            }
        }
    };
    assert_eq!(refused("ftp://example.org/").await, "scheme");
    assert_eq!(refused("http://10.1.2.3/hook").await, "deny 10.0.0.0/8");
    assert_eq!(refused("http://localhost:8080/v1/producers").await, "own-address");

    let mut unknown_topic = subscription("http://127.0.0.1:9/", "latest");
    unknown_topic.topic = "nope".to_owned();
    assert!(matches!(
        dispatcher.create("alice", unknown_topic).await,
        Err(WebhookError::Store(esgf_events_engine::StoreError::TopicNotFound(_)))
    ));
    let mut bad_filter = subscription("http://127.0.0.1:9/", "latest");
    bad_filter.filter = vec!["no-colon".to_owned()];
    assert!(matches!(dispatcher.create("alice", bad_filter).await, Err(WebhookError::Invalid(_))));
    let bad_from = subscription("http://127.0.0.1:9/", "yesterday");
    assert!(matches!(dispatcher.create("alice", bad_from).await, Err(WebhookError::Invalid(_))));

    for _ in 0..2 {
        dispatcher.create("alice", subscription("http://127.0.0.1:9/", "latest")).await.expect("create");
    }
    assert!(matches!(
        dispatcher.create("alice", subscription("http://127.0.0.1:9/", "latest")).await,
        Err(WebhookError::Limit { max: 2, .. })
    ));
    dispatcher
        .create("bob", subscription("http://127.0.0.1:9/", "latest"))
        .await
        .expect("bob has his own quota");
    assert_eq!(dispatcher.list(Some("alice")).await.expect("list").len(), 2);
    assert_eq!(dispatcher.list(None).await.expect("list").len(), 3);
    dispatcher.shutdown().await;
    fx.close().await;
}

#[tokio::test]
async fn delete_forgets_the_subscription_and_its_state() {
    let fx = Fixture::new(1).await;
    let (receiver, url) = Receiver::start(|_| Reply::Status(500)).await;
    let dispatcher = fx.dispatcher(WebhookConfig { max_attempts: 1, ..quick() }).await;
    let view = create(&dispatcher, &receiver, subscription(&url, "beginning")).await;
    fx.publish(0, 0..2).await;
    wait_view(&dispatcher, &view.id, "dead letters", |v| v.dead_letters == 2).await;
    dispatcher.delete(&view.id).await.expect("delete");
    assert!(matches!(dispatcher.get(&view.id).await, Err(WebhookError::NotFound(_))));
    assert!(matches!(dispatcher.delete(&view.id).await, Err(WebhookError::NotFound(_))));
    for collection in ["webhook_subscriptions", "webhook_cursors", "webhook_dead_letters"] {
        assert!(fx.meta.scan(collection, "").await.expect("scan").is_empty(), "{collection} is empty");
    }
    dispatcher.shutdown().await;
    assert!(matches!(
        dispatcher.create("alice", subscription(&url, "latest")).await,
        Err(WebhookError::ShuttingDown)
    ));
    fx.close().await;
}

#[tokio::test]
async fn the_secret_is_stored_but_never_shown_again() {
    let fx = Fixture::new(1).await;
    let (receiver, url) = Receiver::start(|_| Reply::Ok).await;
    let dispatcher = fx.dispatcher(quick()).await;
    let created = dispatcher.create("alice", subscription(&url, "latest")).await.expect("create");
    let secret = created.secret.expose().to_owned();
    receiver.set_secret(&created.secret);
    let shown = serde_json::to_string(&dispatcher.list(None).await.expect("list")).expect("json");
    assert!(!shown.contains(&secret[6..]), "{shown}");
    let stored = fx.meta.scan("webhook_subscriptions", "").await.expect("scan");
    assert!(String::from_utf8_lossy(&stored[0].1).contains(&secret), "HMAC needs the secret itself");
    dispatcher.shutdown().await;
    fx.close().await;
}

#[tokio::test]
async fn starting_points_are_beginning_latest_or_a_time() {
    let fx = Fixture::new(1).await;
    fx.publish(0, 0..3).await;
    let dispatcher = fx.dispatcher(quick()).await;
    let cursors = |view: SubscriptionView| view.partitions.iter().map(|p| p.cursor).collect::<Vec<_>>();
    let url = "http://127.0.0.1:9/hook";
    let beginning = dispatcher.create("a", subscription(url, "beginning")).await.expect("create");
    assert_eq!(cursors(beginning.subscription), vec![0]);
    let latest = dispatcher.create("a", subscription(url, "latest")).await.expect("create");
    assert_eq!(cursors(latest.subscription), vec![3]);
    let past = dispatcher.create("a", subscription(url, "2000-01-01T00:00:00Z")).await.expect("create");
    assert_eq!(cursors(past.subscription), vec![0]);
    let future = dispatcher.create("a", subscription(url, "2999-01-01T00:00:00Z")).await.expect("create");
    assert_eq!(cursors(future.subscription), vec![3], "no record yet: start at latest");
    dispatcher.shutdown().await;
    fx.close().await;
}

/// Answers as its flag says.
struct Toggle(std::sync::atomic::AtomicBool);

impl esgf_events_webhooks::AccessCheck for Toggle {
    fn may_read(&self, principal: &str, topic: &str) -> bool {
        assert_eq!((principal, topic), ("alice", "t"));
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn deliveries_stop_while_the_owner_may_not_read_the_topic() {
    let fx = Fixture::new(1).await;
    let (receiver, url) = Receiver::start(|_| Reply::Ok).await;
    let access = Arc::new(Toggle(std::sync::atomic::AtomicBool::new(false)));
    let dispatcher =
        Dispatcher::start_with_access(Arc::clone(&fx.store), Arc::clone(&fx.meta), quick(), access)
            .await
            .expect("dispatcher");
    let view = create(&dispatcher, &receiver, subscription(&url, "beginning")).await;
    fx.publish(0, 0..3).await;
    let view = wait_view(&dispatcher, &view.id, "the grant problem", |v| v.last_error.is_some()).await;
    assert_eq!(view.state, State::Failing);
    assert!(view.last_error.expect("error").message.contains("may no longer read"));
    assert_eq!((view.lag, receiver.log().len()), (3, 0), "nothing is delivered without the grant");
    dispatcher.shutdown().await;
    fx.close().await;
}

#[tokio::test]
async fn a_host_name_resolving_to_a_denied_network_is_not_called() {
    let fx = Fixture::new(1).await;
    let (receiver, url) = Receiver::start(|_| Reply::Ok).await;
    let config =
        WebhookConfig { deny: vec!["127.0.0.0/8".to_owned(), "::1".to_owned()], max_attempts: 1, ..quick() };
    let dispatcher = fx.dispatcher(config).await;
    // The IP literal is refused at once; the name passes the URL check but not the resolver.
    let err = dispatcher.create("alice", subscription(&url, "beginning")).await.expect_err("denied");
    assert!(matches!(err, WebhookError::UrlRefused(ref r) if r.rule == "deny 127.0.0.0/8"), "{err:?}");
    let by_name = url.replace("127.0.0.1", "localhost");
    let view = create(&dispatcher, &receiver, subscription(&by_name, "beginning")).await;
    fx.publish(0, 0..1).await;
    let view = wait_view(&dispatcher, &view.id, "a dead letter", |v| v.dead_letters == 1).await;
    let letters = dispatcher.dead_letters(&view.id, 0, 10).await.expect("dead letters");
    assert!(letters[0].last_error.contains("deny list"), "{letters:?}");
    assert!(receiver.log().is_empty(), "the receiver was never called");
    dispatcher.shutdown().await;
    fx.close().await;
}

#[tokio::test]
async fn only_the_active_dispatcher_delivers_and_a_standby_one_takes_over_from_the_persisted_cursors() {
    let fx = Fixture::new(2).await;
    let (receiver, url) = Receiver::start(|_| Reply::Ok).await;
    let standby = |fx: &Fixture| {
        Dispatcher::standby(
            Arc::clone(&fx.store),
            Arc::clone(&fx.meta),
            quick(),
            Arc::new(esgf_events_webhooks::AllowAll),
        )
    };
    // Two nodes over one backend: `a` delivers, `b` only answers the API.
    let a = standby(&fx).await.expect("a");
    let b = standby(&fx).await.expect("b");
    a.set_active(true).await;
    assert!(a.is_active() && !b.is_active());

    // Created through the standby node: persisted there, delivered by the active one once it rescans.
    let view = create(&b, &receiver, subscription(&url, "beginning")).await;
    fx.publish(0, 0..20).await;
    fx.publish(1, 0..20).await;
    a.rescan().await.expect("rescan");
    receiver.wait_accepted(20).await;

    // Hand-over mid-stream: `a` stops (committing its cursors), `b` reloads them and goes on.
    a.set_active(false).await;
    let handed_over = receiver.accepted_ids().len();
    b.set_active(true).await;
    fx.publish(0, 20..30).await;
    fx.publish(1, 20..30).await;
    receiver.wait_accepted(60).await;
    wait_view(&b, &view.id, "no lag", |v| v.lag == 0).await;
    let accepted = receiver.accepted_ids();
    assert_eq!(accepted.len(), 60, "a clean hand-over re-delivers nothing (handed over after {handed_over})");
    for partition in 0..2 {
        assert_eq!(offsets_of(&accepted, partition), (0..30).collect::<Vec<u64>>(), "partition {partition}");
    }

    // A pause through the standby node reaches the delivering one at its next rescan.
    let paused = a.pause(&view.id).await.expect("pause via standby");
    assert_eq!(paused.state, State::Paused);
    b.rescan().await.expect("rescan");
    assert_eq!(b.get(&view.id).await.expect("get").state, State::Paused);
    fx.publish(0, 30..31).await;
    wait_view(&b, &view.id, "lag seen", |v| v.lag == 1).await;
    assert_eq!(receiver.log().len(), 60, "nothing is delivered while paused");

    // A delete through the standby node makes the delivering node forget it.
    a.delete(&view.id).await.expect("delete via standby");
    b.rescan().await.expect("rescan");
    assert!(matches!(b.get(&view.id).await, Err(WebhookError::NotFound(_))));
    a.shutdown().await;
    b.shutdown().await;
    fx.close().await;
}

#[tokio::test]
async fn a_redrive_asked_of_a_standby_dispatcher_is_carried_out_by_the_active_one() {
    let fx = Fixture::new(1).await;
    let (receiver, url) = Receiver::start(|_| Reply::Status(500)).await;
    let config = WebhookConfig { max_attempts: 2, ..quick() };
    let open = || {
        Dispatcher::standby(
            Arc::clone(&fx.store),
            Arc::clone(&fx.meta),
            config.clone(),
            Arc::new(esgf_events_webhooks::AllowAll),
        )
    };
    let (active, standby) = (open().await.expect("active"), open().await.expect("standby"));
    active.set_active(true).await;
    let view = create(&active, &receiver, subscription(&url, "latest")).await;
    fx.publish(0, 0..2).await;
    wait_view(&active, &view.id, "2 dead letters", |v| v.dead_letters == 2).await;

    receiver.set_script(|_| Reply::Ok);
    standby.rescan().await.expect("rescan");
    standby.redrive(&view.id).await.expect("redrive via the standby node");
    assert!(receiver.accepted_ids().is_empty(), "the standby node delivers nothing itself");
    active.rescan().await.expect("rescan");
    receiver.wait_accepted(2).await;
    assert_eq!(receiver.accepted_ids(), vec!["t-0-0", "t-0-1"]);
    wait_view(&active, &view.id, "empty list", |v| v.dead_letters == 0 && !v.redriving).await;
    active.shutdown().await;
    standby.shutdown().await;
    fx.close().await;
}
