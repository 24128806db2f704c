//! Following topics (server-sent events), consumer groups, filters and CloudEvents, through the full router
//! against the in-memory [`FakeStore`] and a real state store for group offsets.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::http::{Method, Request, StatusCode, header};
use esgf_events_engine::{LogStore, NewRecord};
use esgf_events_meta::RedbMetaStore;
use esgf_events_meta::offsets::GroupOffsets;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::cursor::Cursor;
use crate::test_store::FakeStore;
use crate::{AppState, HttpConfig, build_router};

struct Api {
    app: Router,
    store: Arc<FakeStore>,
    state: Arc<AppState>,
    offsets: GroupOffsets,
    _dir: tempfile::TempDir,
}

/// One server-sent event as a client sees it.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    id: String,
    event: String,
    data: Value,
}

/// Reads server-sent events off a response body, like an SSE client: blocks of lines separated by a blank line,
/// comments (`:`) skipped, `data:` lines joined with `\n`.
struct Sse {
    body: Body,
    buffer: String,
    comments: Vec<String>,
}

/// No test event takes anywhere near this long; reaching it means the stream is stuck.
const STUCK: Duration = Duration::from_secs(10);

impl Sse {
    async fn frame(&mut self) -> Option<String> {
        let frame =
            tokio::time::timeout(STUCK, std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)))
                .await
                .expect("the stream is stuck")?;
        let data = frame.expect("body frame").into_data().expect("a data frame");
        Some(String::from_utf8(data.to_vec()).expect("UTF-8 stream"))
    }

    /// The next event; `None` when the stream ends.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (String::new(), String::new(), Vec::new());
                for line in block.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        self.comments.push(comment.trim().to_owned());
                    } else if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        match field {
                            "id" => id = value.to_owned(),
                            "event" => event = value.to_owned(),
                            "data" => data.push(value.to_owned()),
                            other => panic!("unexpected field {other}"),
                        }
                    }
                }
                if !data.is_empty() {
                    let data = serde_json::from_str(&data.join("\n")).expect("data is JSON");
                    return Some(Event { id, event, data });
                }
                continue;
            }
            let text = self.frame().await?;
            self.buffer.push_str(&text);
        }
    }

    async fn take(&mut self, n: usize) -> Vec<Event> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next().await.expect("the stream goes on"));
        }
        events
    }
}

impl Api {
    fn new() -> Self {
        Self::with_config(HttpConfig::default())
    }

    fn with_config(config: HttpConfig) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = RedbMetaStore::open(&dir.path().join("meta.redb")).expect("meta");
        let offsets = GroupOffsets::new(Arc::new(meta));
        let store = Arc::new(FakeStore::new());
        let mut state = AppState::new(store.clone(), None, config);
        state.offsets = Some(offsets.clone());
        let state = Arc::new(state);
        Api { app: build_router(state.clone()), store, state, offsets, _dir: dir }
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let request = Request::builder().method(method).uri(uri);
        let request = match body {
            Some(json) => {
                request.header(header::CONTENT_TYPE, "application/json").body(Body::from(json.to_string()))
            }
            None => request.body(Body::empty()),
        };
        let response = self.app.clone().oneshot(request.expect("request")).await.expect("infallible");
        let status = response.status();
        let raw = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        let body =
            if raw.is_empty() { Value::Null } else { serde_json::from_slice(&raw).expect("JSON body") };
        (status, body)
    }

    async fn create_topic(&self, name: &str, partitions: u32) {
        let (status, body) = self
            .call(Method::POST, "/v1/topics", Some(json!({"name": name, "partitions": partitions})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Publishes `events` (a batch) and returns their `(partition, offset)`.
    async fn publish(&self, topic: &str, events: Value) -> Vec<(u32, u64)> {
        let (status, body) =
            self.call(Method::POST, &format!("/v1/topics/{topic}/events"), Some(events)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| (r["partition"].as_u64().expect("p") as u32, r["offset"].as_u64().expect("o")))
            .collect()
    }

    async fn open(&self, uri: &str, last_event_id: Option<&str>) -> Result<Sse, (StatusCode, Value)> {
        let mut request = Request::builder().uri(uri);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        if status != StatusCode::OK {
            let raw = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
            return Err((status, serde_json::from_slice(&raw).expect("problem JSON")));
        }
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
        Ok(Sse { body: response.into_body(), buffer: String::new(), comments: Vec::new() })
    }

    async fn stream(&self, uri: &str) -> Sse {
        self.open(uri, None).await.unwrap_or_else(|(status, body)| panic!("{uri}: {status} {body}"))
    }

    /// Waits until no stream is being served (their readers have ended, final group commits included).
    async fn no_streams(&self) {
        let deadline = tokio::time::Instant::now() + STUCK;
        while self.state.streams.available_permits() < self.state.config.max_streams {
            assert!(tokio::time::Instant::now() < deadline, "a stream reader did not end");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A publication event about `item` of `collection` (`n` tells events apart).
fn publication(n: usize, collection: &str, method: &str) -> Value {
    json!({
        "data": {"payload": {
            "collection_id": collection,
            "method": method,
            "item": {"id": format!("{collection}.item.{n}"), "properties": {"cmip6:institution_id": "IPSL", "n": n}},
        }},
        "metadata": {"event_id": format!("ev-{n}")},
    })
}

fn numbers(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.data["data"]["payload"]["item"]["properties"]["n"].as_u64().expect("n")).collect()
}

// --- streams -----------------------------------------------------------------------------------------------------

#[tokio::test]
async fn stream_from_beginning_delivers_every_event_with_cursor_ids_and_method_names() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    api.publish("t", json!([publication(0, "CMIP6", "POST"), publication(1, "CMIP6", "PATCH")])).await;
    let mut sse = api.stream("/v1/topics/t/stream?from=beginning").await;
    let events = sse.take(2).await;
    assert_eq!(events[0].id, "0-1");
    assert_eq!(events[0].event, "post");
    assert_eq!(events[0].data, publication(0, "CMIP6", "POST"));
    assert_eq!((events[1].id.as_str(), events[1].event.as_str()), ("0-2", "patch"));
    assert!(sse.comments.iter().any(|c| c == "stream open"), "{:?}", sse.comments);

    // Live events follow.
    api.publish("t", json!([publication(2, "CMIP6", "PUT")])).await;
    let live = sse.next().await.expect("live event");
    assert_eq!((live.id.as_str(), live.event.as_str()), ("0-3", "put"));
}

#[tokio::test]
async fn stream_starts_at_the_end_by_default() {
    let api = Api::new();
    api.create_topic("t", 2).await;
    api.publish("t", json!([publication(0, "CMIP6", "POST")])).await;
    // The start positions are fixed before the response is returned.
    let mut sse = api.stream("/v1/topics/t/stream").await;
    api.publish("t", json!([publication(1, "CMIP6", "POST")])).await;
    let event = sse.next().await.expect("event");
    assert_eq!(numbers(&[event]), [1]);
}

#[tokio::test]
async fn last_event_id_resumes_exactly_after_that_event() {
    let api = Api::new();
    api.create_topic("t", 3).await;
    let first: Vec<Value> = (0..30).map(|n| publication(n, "CMIP6", "POST")).collect();
    api.publish("t", Value::Array(first)).await;

    let mut sse = api.stream("/v1/topics/t/stream?from=beginning").await;
    let seen = sse.take(10).await;
    let resume = seen.last().expect("ten events").id.clone();
    drop(sse);

    let more: Vec<Value> = (30..50).map(|n| publication(n, "CMIP6", "POST")).collect();
    api.publish("t", Value::Array(more)).await;
    // The URL still says from=beginning (as a browser's reconnection would): the header wins.
    let mut sse = api.open("/v1/topics/t/stream?from=beginning", Some(&resume)).await.expect("resumed");
    let rest = sse.take(40).await;

    let mut all = numbers(&seen);
    all.extend(numbers(&rest));
    let mut sorted = all.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..50).collect::<Vec<u64>>(), "every event exactly once");
    // Within a partition, order is publication order (each item is its own key).
    let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for n in all {
        let key = format!("CMIP6.item.{n}");
        by_partition.entry(crate::partition_for_key(key.as_bytes(), 3)).or_default().push(n);
    }
    for (partition, ns) in by_partition {
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "partition {partition} out of order: {ns:?}");
    }

    // The same through the query parameter.
    let mut sse = api.stream(&format!("/v1/topics/t/stream?last_event_id={resume}")).await;
    assert_eq!(numbers(&sse.take(40).await).len(), 40);
}

#[tokio::test]
async fn a_cursor_that_cannot_be_from_this_topic_is_refused() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    api.publish("t", json!([publication(0, "CMIP6", "POST")])).await;
    for (id, kind) in [("0-5", "invalid-request"), ("3-0", "invalid-request"), ("zero", "invalid-request")] {
        let (status, problem) = api.open("/v1/topics/t/stream", Some(id)).await.err().expect("refused");
        assert_eq!(
            (status.as_u16(), problem["type"].as_str()),
            (400, Some(&*format!("urn:esgf-events:problem:{kind}"))),
            "{id}"
        );
    }
    let (status, problem) =
        api.open("/v1/topics/t/stream?last_event_id=x", None).await.err().expect("refused");
    assert_eq!((status.as_u16(), &problem["parameters"]), (400, &json!(["last_event_id"])));
}

#[tokio::test]
async fn start_parameters_are_checked() {
    let api = Api::new();
    api.create_topic("one", 1).await;
    api.create_topic("two", 2).await;
    api.publish("one", json!([publication(0, "CMIP6", "POST"), publication(1, "CMIP6", "POST")])).await;

    let mut sse = api.stream("/v1/topics/one/stream?from=1").await;
    assert_eq!(numbers(&sse.take(1).await), [1]);
    let (status, problem) =
        api.open("/v1/topics/one/stream?from=9", None).await.err().expect("beyond the end");
    assert_eq!((status.as_u16(), &problem["latest_offset"]), (416, &json!(2)));
    let (status, problem) =
        api.open("/v1/topics/two/stream?from=0", None).await.err().expect("which partition?");
    assert_eq!((status.as_u16(), &problem["parameters"]), (400, &json!(["from"])));
    assert!(api.open("/v1/topics/two/stream?from=0&partition=1", None).await.is_ok());
    let (status, _) =
        api.open("/v1/topics/two/stream?partition=2", None).await.err().expect("no partition 2");
    assert_eq!(status, StatusCode::NOT_FOUND);
    for bad in ["from=soon", "from=latest&since=2026-11-27T10:00:00Z", "format=xml", "filter=bad", "nope=1"] {
        let (status, problem) =
            api.open(&format!("/v1/topics/one/stream?{bad}"), None).await.err().expect(bad);
        assert_eq!(
            (status.as_u16(), problem["type"].as_str()),
            (400, Some("urn:esgf-events:problem:invalid-query")),
            "{bad}"
        );
    }
    let (status, _) = api.open("/v1/topics/missing/stream", None).await.err().expect("no topic");
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn since_starts_at_the_first_event_at_or_after_it() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    api.store.set_now_ms(1_795_773_600_000);
    api.publish("t", json!([publication(0, "CMIP6", "POST")])).await;
    api.store.set_now_ms(1_795_773_660_000);
    api.publish("t", json!([publication(1, "CMIP6", "POST")])).await;
    let mut sse = api.stream("/v1/topics/t/stream?since=2026-11-27T10:00:30Z").await;
    assert_eq!(numbers(&sse.take(1).await), [1]);
}

#[tokio::test]
async fn filters_select_events_and_filtered_ones_still_advance_the_cursor() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    let events: Vec<Value> =
        (0..6).map(|n| publication(n, if n % 2 == 0 { "CMIP6" } else { "CMIP7" }, "POST")).collect();
    api.publish("t", Value::Array(events)).await;

    let mut sse =
        api.stream("/v1/topics/t/stream?from=beginning&filter=data.payload.collection_id:CMIP6").await;
    let events = sse.take(3).await;
    assert_eq!(numbers(&events), [0, 2, 4]);
    assert_eq!(events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["0-1", "0-3", "0-5"]);

    // Namespaced members match their plain name; several filters AND; key_prefix selects by item id.
    let uri = "/v1/topics/t/stream?from=beginning&filter=data.payload.item.properties.institution_id:IPSL\
               &filter=data.payload.item.properties.n:3&key_prefix=CMIP7.";
    assert_eq!(numbers(&api.stream(uri).await.take(1).await), [3]);
}

#[tokio::test]
async fn cloudevents_format_maps_every_attribute() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    api.store.set_now_ms(1_795_773_600_123);
    api.publish("t", json!([publication(0, "CMIP6", "PATCH")])).await;
    let mut sse = api.stream("/v1/topics/t/stream?from=beginning&format=cloudevents").await;
    let event = sse.next().await.expect("event");
    assert_eq!(event.event, "patch");
    assert_eq!(
        event.data,
        json!({
            "specversion": "1.0",
            "id": "ev-0",
            "source": "/topics/t",
            "type": "org.esgf.publication.patch",
            "subject": "CMIP6.item.0",
            "time": "2026-11-27T10:00:00.123Z",
            "datacontenttype": "application/json",
            "esgfpartition": 0,
            "esgfoffset": "0",
            "data": publication(0, "CMIP6", "PATCH"),
        })
    );
}

#[tokio::test]
async fn pretty_printed_events_arrive_on_one_data_line() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    let pretty = serde_json::to_string_pretty(&publication(0, "CMIP6", "POST")).expect("json");
    let request = Request::post("/v1/topics/t/events").body(Body::from(pretty)).expect("request");
    assert_eq!(api.app.clone().oneshot(request).await.expect("infallible").status(), StatusCode::CREATED);
    let mut sse = api.stream("/v1/topics/t/stream?from=beginning").await;
    let mut frame = String::new();
    while !frame.ends_with("\n\n") {
        frame.push_str(&sse.frame().await.expect("the event"));
    }
    let data: Vec<&str> = frame.lines().filter(|l| l.starts_with("data:")).collect();
    assert_eq!(data.len(), 1, "{frame}");
    let value: Value = serde_json::from_str(&data[0]["data: ".len()..]).expect("JSON");
    assert_eq!(value, publication(0, "CMIP6", "POST"));
}

#[tokio::test]
async fn idle_streams_send_keep_alive_comments() {
    let api =
        Api::with_config(HttpConfig { stream_heartbeat: Duration::from_millis(20), ..HttpConfig::default() });
    api.create_topic("t", 1).await;
    let mut sse = api.stream("/v1/topics/t/stream").await;
    let mut frames = String::new();
    while !frames.contains(": keep-alive") {
        frames.push_str(&sse.frame().await.expect("stream open"));
    }
}

#[tokio::test]
async fn streams_beyond_the_limit_are_503_until_one_ends() {
    let api = Api::with_config(HttpConfig { max_streams: 2, ..HttpConfig::default() });
    api.create_topic("t", 1).await;
    let first = api.stream("/v1/topics/t/stream").await;
    let _second = api.stream("/v1/topics/t/stream").await;
    let (status, problem) = api.open("/v1/topics/t/stream", None).await.err().expect("over the limit");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem["type"], "urn:esgf-events:problem:too-many-streams");
    assert_eq!(problem["max_streams"], 2);
    drop(first);
    let deadline = tokio::time::Instant::now() + STUCK;
    while api.state.streams.available_permits() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the closed stream's slot never came back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(api.open("/v1/topics/t/stream", None).await.is_ok());
}

#[tokio::test]
async fn a_stalled_client_does_not_hold_up_others() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    let _stalled = api.stream("/v1/topics/t/stream?from=beginning").await;
    let mut reading = api.stream("/v1/topics/t/stream?from=beginning").await;
    for batch in 0..10 {
        let events: Vec<Value> = (0..1000).map(|n| json!({"n": batch * 1000 + n})).collect();
        api.publish("t", Value::Array(events)).await;
    }
    for n in 0..10_000u64 {
        let event = reading.next().await.expect("event");
        assert_eq!(event.data["n"], n);
    }
}

#[tokio::test]
async fn shutdown_ends_streams_cleanly() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    let mut sse = api.stream("/v1/topics/t/stream").await;
    api.store.waiters.subscribe().wait_for(|n| *n > 0).await.expect("the reader waits");
    api.state.shutdown.begin();
    assert!(sse.next().await.is_none(), "the body ends");
    api.no_streams().await;
}

// --- consumer groups ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn committed_offsets_show_with_their_lag() {
    let api = Api::new();
    api.create_topic("t", 2).await;
    for (partition, count) in [(0u32, 5usize), (1, 3)] {
        let records = (0..count).map(|n| NewRecord::from_value(json!({"n": n}).to_string())).collect();
        api.store.append("t", partition, records).await.expect("append");
    }
    let latest: Vec<u64> = {
        let (_, topic) = api.call(Method::GET, "/v1/topics/t", None).await;
        topic["offsets"]
            .as_array()
            .expect("offsets")
            .iter()
            .map(|o| o["latest"].as_u64().expect("latest"))
            .collect()
    };

    let (status, body) = api
        .call(
            Method::PUT,
            "/v1/groups/indexer/offsets",
            Some(json!({"topic": "t", "partition": 0, "offset": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = api
        .call(
            Method::PUT,
            "/v1/groups/indexer/offsets",
            Some(json!({"offsets": [{"topic": "t", "partition": 1, "offset": latest[1], "metadata": "m"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    let (status, group) = api.call(Method::GET, "/v1/groups/indexer", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(group["group"], "indexer");
    let offsets = group["offsets"].as_array().expect("offsets");
    assert_eq!(offsets.len(), 2);
    assert_eq!((&offsets[0]["partition"], &offsets[0]["offset"]), (&json!(0), &json!(2)));
    assert_eq!(offsets[0]["lag"], latest[0] - 2);
    assert_eq!((&offsets[1]["lag"], &offsets[1]["metadata"]), (&json!(0), &json!("m")));
    assert_eq!(group["lag"], latest[0] - 2);
    assert!(offsets[0]["committed"].as_str().is_some_and(|t| t.ends_with('Z')));

    // The same store the Kafka endpoint uses.
    let kafka_view = api.offsets.fetch("indexer", "t", 0).await.expect("fetch").expect("committed");
    assert_eq!(kafka_view.offset, 2);

    let (_, empty) = api.call(Method::GET, "/v1/groups/nobody", None).await;
    assert_eq!((&empty["offsets"], &empty["lag"]), (&json!([]), &json!(0)));
}

#[tokio::test]
async fn commits_are_checked_before_anything_is_stored() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    api.publish("t", json!([{"n": 0}])).await;
    let cases = [
        (json!({"topic": "t", "partition": 0, "offset": 2}), 416, "offset-out-of-range"),
        (json!({"topic": "missing", "partition": 0, "offset": 0}), 404, "topic-not-found"),
        (json!({"topic": "t", "partition": 3, "offset": 0}), 404, "partition-not-found"),
        (json!({"topic": "t", "partition": 0}), 400, "invalid-request"),
        (
            json!({"offsets": [{"topic": "t", "partition": 0, "offset": 1}, {"topic": "t", "partition": 0, "offset": 0}]}),
            400,
            "invalid-request",
        ),
        (json!({"topic": "t", "partition": 0, "offset": 0, "group": "g"}), 400, "invalid-request"),
    ];
    for (body, status, kind) in cases {
        let (got, problem) = api.call(Method::PUT, "/v1/groups/g/offsets", Some(body.clone())).await;
        assert_eq!(
            (got.as_u16(), problem["type"].as_str()),
            (status, Some(&*format!("urn:esgf-events:problem:{kind}"))),
            "{body}"
        );
    }
    assert!(api.offsets.list("g").await.expect("list").is_empty(), "nothing was committed");
    // The end of the log itself is a valid commit: everything read.
    let (status, _) = api
        .call(Method::PUT, "/v1/groups/g/offsets", Some(json!({"topic": "t", "partition": 0, "offset": 1})))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn pull_with_a_group_starts_at_its_commit() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    api.publish("t", Value::Array((0..5).map(|n| json!({"n": n})).collect())).await;
    let (_, page) = api.call(Method::GET, "/v1/topics/t/events?group=g", None).await;
    assert_eq!(page["events"][0]["offset"], 0, "no commit: from the earliest");
    api.call(
        Method::PUT,
        "/v1/groups/g/offsets",
        Some(
            json!({"topic": "t", "partition": 0, "offset": page["next_offset"].as_u64().expect("next") - 2}),
        ),
    )
    .await;
    let (_, page) = api.call(Method::GET, "/v1/topics/t/events?group=g&limit=1", None).await;
    assert_eq!((&page["events"][0]["offset"], &page["next_offset"]), (&json!(3), &json!(4)));
    let (status, _) = api.call(Method::GET, "/v1/topics/t/events?group=g&offset=1", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_group_stream_commits_what_it_delivered_and_a_new_one_continues_there() {
    let api = Api::new();
    api.create_topic("t", 2).await;
    let events: Vec<Value> = (0..20).map(|n| publication(n, "CMIP6", "POST")).collect();
    api.publish("t", Value::Array(events)).await;

    let mut sse = api.stream("/v1/topics/t/stream?group=g").await;
    let first = sse.take(7).await;
    drop(sse);
    api.no_streams().await;
    let committed = api.offsets.list("g").await.expect("list");
    let cursor = Cursor::parse(&first.last().expect("seven").id).expect("cursor");
    for entry in &committed {
        assert_eq!(
            Some(entry.offset),
            cursor.get(entry.partition),
            "commit = the last delivered event's cursor"
        );
    }

    let mut sse = api.stream("/v1/topics/t/stream?group=g").await;
    let rest = sse.take(13).await;
    let mut all = numbers(&first);
    all.extend(numbers(&rest));
    all.sort_unstable();
    assert_eq!(all, (0..20).collect::<Vec<u64>>());
    drop(sse);
    api.no_streams().await;
    let (_, group) = api.call(Method::GET, "/v1/groups/g", None).await;
    assert_eq!(group["lag"], 0, "{group}");
}

#[tokio::test]
async fn groups_need_a_state_store() {
    let store = Arc::new(FakeStore::new());
    let app = build_router(Arc::new(AppState::new(store, None, HttpConfig::default())));
    let request = Request::get("/v1/groups/g").body(Body::empty()).expect("request");
    let response = app.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
}

// --- pull reads: filters and CloudEvents ---------------------------------------------------------------------

#[tokio::test]
async fn pull_filters_scan_past_unselected_events() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    let events: Vec<Value> =
        (0..10).map(|n| publication(n, if n == 7 { "CMIP7" } else { "CMIP6" }, "POST")).collect();
    api.publish("t", Value::Array(events)).await;
    let (status, page) = api
        .call(Method::GET, "/v1/topics/t/events?limit=2&filter=data.payload.collection_id:CMIP7", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let offsets: Vec<&Value> =
        page["events"].as_array().expect("events").iter().map(|e| &e["offset"]).collect();
    assert_eq!(offsets, [&json!(7)]);
    assert_eq!(page["next_offset"], 8);

    // Nothing selected: an empty page that still moves on.
    let (_, page) = api.call(Method::GET, "/v1/topics/t/events?offset=8&key_prefix=CMIP7.", None).await;
    assert_eq!((&page["events"], &page["next_offset"]), (&json!([]), &json!(10)));
}

#[tokio::test]
async fn pull_filters_keep_long_polling_until_a_selected_event_arrives() {
    let api = Arc::new(Api::new());
    api.create_topic("t", 1).await;
    let poll = {
        let api = Arc::clone(&api);
        tokio::spawn(async move {
            api.call(Method::GET, "/v1/topics/t/events?wait=10&filter=data.payload.method:PATCH", None).await
        })
    };
    api.store.waiters.subscribe().wait_for(|n| *n > 0).await.expect("parked");
    api.publish("t", json!([publication(0, "CMIP6", "POST")])).await;
    api.publish("t", json!([publication(1, "CMIP6", "PATCH")])).await;
    let (status, page) = poll.await.expect("poll");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["events"].as_array().map(Vec::len), Some(1));
    assert_eq!((&page["events"][0]["offset"], &page["next_offset"]), (&json!(1), &json!(2)));
}

#[tokio::test]
async fn pull_in_cloudevents_format() {
    let api = Api::new();
    api.create_topic("t", 1).await;
    api.publish("t", json!([publication(0, "CMIP6", "POST"), {"no": "envelope"}])).await;
    let (_, page) = api.call(Method::GET, "/v1/topics/t/events?format=cloudevents", None).await;
    let events = page["events"].as_array().expect("events");
    assert_eq!(events[0]["type"], "org.esgf.publication.post");
    assert_eq!(events[0]["id"], "ev-0");
    assert_eq!(events[0]["data"], publication(0, "CMIP6", "POST"));
    assert_eq!((&events[1]["type"], &events[1]["id"]), (&json!("org.esgf.event"), &json!("t/0/1")));
    assert_eq!(page["next_offset"], 2);
}
