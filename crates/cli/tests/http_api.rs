//! End-to-end tests of the HTTP API over the real `esgf-events serve` binary: topics, publishing every ESGF
//! fixture byte for byte, reading (offsets, `since`, long-polls), RFC 9457 errors, graceful shutdown.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{Server, assert_problem, expected_key, fixture_events};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Checks the documented timestamp shape: RFC 3339, milliseconds, `Z`.
fn parse_timestamp(text: &str) -> DateTime<Utc> {
    let parsed = DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("timestamp {text:?}: {e}"));
    let fraction = text.rsplit_once('.').map(|(_, f)| f);
    assert!(fraction.is_some_and(|f| f.len() == 4 && f.ends_with('Z')), "timestamp {text:?} is not ms + Z");
    parsed.with_timezone(&Utc)
}

#[test]
fn health_and_readiness_answer_ok() {
    let server = Server::start();
    let health: Value = server.get("/healthz").json().expect("healthz JSON");
    assert_eq!(health, json!({"status": "ok"}));
    let ready = server.get("/readyz");
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready.json::<Value>().expect("readyz JSON"), json!({"status": "ready"}));
}

#[test]
fn topics_are_created_listed_and_described() {
    let server = Server::start();

    let created = server.post_json(
        "/v1/topics",
        json!({"name": "esgf2.publications", "partitions": 3, "retention": "12h"}).to_string(),
    );
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(location.as_deref(), Some("/v1/topics/esgf2.publications"));
    let description: Value = created.json().expect("description");
    assert_eq!(description["name"], "esgf2.publications");
    assert_eq!(description["partitions"], 3);
    assert_eq!(description["retention"], "12h");
    assert_eq!(description["retention_bytes"], Value::Null);
    parse_timestamp(description["created"].as_str().expect("created is a string"));
    let offsets: Vec<Value> = (0..3).map(|p| json!({"partition": p, "earliest": 0, "latest": 0})).collect();
    assert_eq!(description["offsets"], Value::Array(offsets));

    // Defaults: one partition, the configured default retention (90 days).
    let created = server.post_json("/v1/topics", json!({"name": "plain"}).to_string());
    assert_eq!(created.status(), StatusCode::CREATED);
    let description: Value = created.json().expect("description");
    assert_eq!(
        (description["partitions"].as_u64(), description["retention"].as_str()),
        (Some(1), Some("90d"))
    );

    let duplicate = server.post_json("/v1/topics", json!({"name": "plain", "partitions": 2}).to_string());
    let problem = assert_problem(duplicate, 409, "topic-exists");
    assert_eq!(problem["topic"], "plain");

    for bad in ["has space", "slash/in/it", "..", "", &"x".repeat(250), "ümlaut"] {
        let response = server.post_json("/v1/topics", json!({"name": bad}).to_string());
        assert_problem(response, 400, "invalid-topic-name");
    }
    for bad_partitions in [0, 1025] {
        let response =
            server.post_json("/v1/topics", json!({"name": "p", "partitions": bad_partitions}).to_string());
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "partitions {bad_partitions}");
    }

    let list: Value = server.get("/v1/topics").json().expect("topic list");
    let mut names: Vec<&str> = list["topics"]
        .as_array()
        .expect("topics array")
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["esgf2.publications", "plain"]);

    let described = server.describe("esgf2.publications");
    assert_eq!(described["retention"], "12h");
    assert_eq!(described["partitions"], 3);

    assert_problem(server.get("/v1/topics/nope"), 404, "topic-not-found");
}

#[test]
fn every_fixture_event_is_stored_byte_identical_with_its_envelope_key() {
    let server = Server::start();
    let fixtures = fixture_events();
    assert!(fixtures.len() >= 13, "expected every fixture event, found {}", fixtures.len());

    let check = |topic: &str, fixture: &common::FixtureEvent, placement: common::Placement| {
        let page = server.read_page(
            topic,
            &format!("partition={}&offset={}&limit=1", placement.partition, placement.offset),
        );
        assert_eq!(page.events.len(), 1, "{}", fixture.name);
        let event = &page.events[0];
        assert_eq!(
            (event.partition, event.offset),
            (placement.partition, placement.offset),
            "{}",
            fixture.name
        );
        assert!(
            event.value.get() == fixture.json,
            "{}: stored value differs from what was sent",
            fixture.name
        );
        assert_eq!(event.key, expected_key(&fixture.json), "{}: key", fixture.name);
        assert_eq!(page.next_offset, placement.offset + 1);
        parse_timestamp(&event.timestamp);
    };

    // One request per event, the files' exact bytes (indentation and trailing newline included) as the body.
    // Each goes to a topic of its own: several fixtures share a `metadata.event_id`, and a topic stores an
    // event id once (idempotent publish).
    let dir = common::fixtures_dir();
    let mut first_round = Vec::new();
    for (i, fixture) in fixtures.iter().enumerate() {
        let topic = format!("fixture-{i}");
        server.create_topic(&topic, 3);
        let body = if fixture.name.ends_with(']') {
            fixture.json.clone().into_bytes() // an element of the Kafka dump
        } else {
            std::fs::read(dir.join(&fixture.name)).expect("fixture file")
        };
        let placements = server.publish(&topic, body);
        assert_eq!(placements.len(), 1, "{}", fixture.name);
        check(&topic, fixture, placements[0]);
        first_round.push(placements[0]);
    }

    // The events again, as one batch (one per event id): results come back in input order, and a key always
    // maps to the same partition.
    let mut seen_ids = std::collections::HashSet::new();
    let unique: Vec<(usize, &common::FixtureEvent)> = fixtures
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            let value: Value = serde_json::from_str(&f.json).expect("fixture JSON");
            match value["metadata"]["event_id"].as_str() {
                Some(id) => seen_ids.insert(id.to_owned()),
                None => true,
            }
        })
        .collect();
    assert!(unique.len() < fixtures.len(), "the fixtures are expected to repeat an event id");
    server.create_topic("fixtures", 3);
    let batch = format!("[{}]", unique.iter().map(|(_, f)| f.json.as_str()).collect::<Vec<_>>().join(",\n"));
    let placements = server.publish("fixtures", batch);
    assert_eq!(placements.len(), unique.len());
    for ((i, fixture), placement) in unique.iter().zip(&placements) {
        check("fixtures", fixture, *placement);
        if expected_key(&fixture.json).is_some() {
            assert_eq!(
                placement.partition, first_round[*i].partition,
                "{}: same key, same partition",
                fixture.name
            );
        }
    }

    // The Kafka dump's own key agrees with the key derived from the envelope.
    let dump: Value = serde_json::from_slice(
        &std::fs::read(dir.join("stac-transaction-api_esgfng_publish_event.json")).expect("dump"),
    )
    .expect("dump JSON");
    let dump_value = dump[0]["value"].to_string();
    assert_eq!(expected_key(&dump_value).as_deref(), dump[0]["key"].as_str());

    // Nothing else landed in the topic.
    let total: u64 = server.describe("fixtures")["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|o| o["latest"].as_u64().expect("latest"))
        .sum();
    assert_eq!(total, unique.len() as u64);
}

#[test]
fn query_key_overrides_the_envelope_and_unkeyed_batches_stay_together() {
    let server = Server::start();
    server.create_topic("keys", 4);
    let placements = server
        .publish_at("/v1/topics/keys/events?key=chosen", r#"{"data":{"payload":{"item_id":"ignored"}}}"#);
    let page = server
        .read_page("keys", &format!("partition={}&offset={}", placements[0].partition, placements[0].offset));
    assert_eq!(page.events[0].key.as_deref(), Some("chosen"));

    // An unkeyed batch is one atomic append: one partition, consecutive offsets.
    let placements = server.publish("keys", r#"[{"n":1},{"n":2},{"n":3}]"#);
    assert!(placements.iter().all(|p| p.partition == placements[0].partition), "{placements:?}");
    let offsets: Vec<u64> = placements.iter().map(|p| p.offset).collect();
    let first = offsets[0];
    assert_eq!(offsets, [first, first + 1, first + 2]);
    let page = server.read_page("keys", &format!("partition={}&offset={first}", placements[0].partition));
    assert!(page.events.iter().all(|e| e.key.is_none()));
}

#[test]
fn errors_are_problem_json_with_stable_types() {
    let server = Server::start();
    server.create_topic("t", 1);

    assert_problem(server.get("/no/such/route"), 404, "route-not-found");
    let response = server.client().delete(format!("{}/v1/topics", server.url())).send().expect("DELETE");
    assert_problem(response, 405, "method-not-allowed");
    assert_problem(server.post_json("/v1/topics/unknown/events", r#"{"a":1}"#), 404, "topic-not-found");
    assert_problem(server.get("/v1/topics/unknown/events"), 404, "topic-not-found");

    let problem = assert_problem(server.get("/v1/topics/t/events?ofset=3"), 400, "invalid-query");
    assert_eq!(problem["parameters"], json!(["ofset"]));
    assert_problem(
        server.get("/v1/topics/t/events?offset=0&since=2026-01-01T00:00:00Z"),
        400,
        "invalid-query",
    );
    assert_problem(server.get("/v1/topics/t/events?limit=1001"), 400, "invalid-query");
    assert_problem(server.get("/v1/topics/t/events?wait=31"), 400, "invalid-query");
    assert_problem(server.get("/v1/topics/t/events?partition=1"), 404, "partition-not-found");

    let response = server
        .client()
        .post(format!("{}/v1/topics/t/events", server.url()))
        .header("content-type", "text/plain")
        .body(r#"{"a":1}"#)
        .send()
        .expect("POST");
    assert_problem(response, 415, "unsupported-media-type");

    assert_problem(server.post_json("/v1/topics/t/events", "42"), 400, "invalid-event");
    let problem =
        assert_problem(server.post_json("/v1/topics/t/events", r#"[{"a":1}, "no"]"#), 400, "invalid-event");
    assert_eq!(problem["index"], 1);
    assert_eq!(server.post_json("/v1/topics/t/events", "[]").status(), StatusCode::BAD_REQUEST);

    // None of the refused requests appended anything.
    assert_eq!(server.describe("t")["offsets"][0]["latest"], 0);
}

#[test]
fn malformed_json_is_400_naming_line_and_column() {
    let server = Server::start();
    server.create_topic("t", 1);
    let body = "{\n  \"data\": {\n    \"payload\": {\"a\" 1}\n  }\n}\n";
    let problem = assert_problem(server.post_json("/v1/topics/t/events", body), 400, "malformed-json");
    assert_eq!(problem["line"], 3, "{problem}");
    assert_eq!(problem["column"], 21, "{problem}");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(detail.contains("line 3") && detail.contains("column"), "{detail}");

    let problem =
        assert_problem(server.post_json("/v1/topics/t/events", r#"[{"a":1},{"b":]"#), 400, "malformed-json");
    assert_eq!(problem["line"], 1, "{problem}");
    assert_eq!(server.describe("t")["offsets"][0]["latest"], 0);
}

#[test]
fn over_size_event_is_413_naming_its_index_and_nothing_is_appended() {
    let server = Server::start();
    server.create_topic("t", 1);
    // Default limit: 1 MiB per event; the body (under 32 MiB) is read whole before the event is refused.
    let big = json!({"data": {"pad": "x".repeat((1 << 20) + 1)}}).to_string();

    let problem =
        assert_problem(server.post_json("/v1/topics/t/events", big.clone()), 413, "event-too-large");
    assert_eq!(problem["index"], 0, "{problem}");
    assert_eq!(problem["max_bytes"], 1 << 20, "{problem}");

    let batch = format!(r#"[{{"small":1}},{big}]"#);
    let problem = assert_problem(server.post_json("/v1/topics/t/events", batch), 413, "event-too-large");
    assert_eq!(problem["index"], 1, "{problem}");
    assert_eq!(server.describe("t")["offsets"][0]["latest"], 0, "a refused batch must leave nothing behind");

    // Just under the limit is fine.
    let fits = json!({"p": "y".repeat((1 << 20) - 16)}).to_string();
    assert!(fits.len() <= 1 << 20);
    let placements = server.publish("t", fits.clone());
    let page = server.read_page("t", &format!("offset={}", placements[0].offset));
    assert!(page.events[0].value.get() == fits);
}

#[test]
fn over_size_body_is_413_problem_json() {
    let server = Server::start_with_env(&[("ESGF_EVENTS_HTTP_MAX_BODY_BYTES", "65536")]);
    server.create_topic("t", 1);
    let body = format!("[{}]", vec![r#"{"pad":"0123456789012345678901234567890123456789"}"#; 1400].join(","));
    assert!(body.len() > 65536);
    // A client of its own: the server refuses the body without reading it and then drops the connection,
    // which a pooled client would otherwise try to reuse for the next request.
    let response = common::http_client()
        .post(format!("{}/v1/topics/t/events", server.url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .expect("POST an over-size body");
    let problem = assert_problem(response, 413, "body-too-large");
    assert_eq!(problem["max_bytes"], 65536, "{problem}");
    assert_eq!(server.describe("t")["offsets"][0]["latest"], 0);
}

#[test]
fn offset_outside_the_log_is_416_naming_earliest_and_latest() {
    let server = Server::start();
    server.create_topic("t", 2);
    // Unkeyed single events go round-robin; publish until partition 0 holds three.
    let mut in_p0 = 0;
    while in_p0 < 3 {
        let placement = server.publish("t", r#"{"n":0}"#)[0];
        if placement.partition == 0 {
            in_p0 += 1;
        }
    }
    let problem =
        assert_problem(server.get("/v1/topics/t/events?partition=0&offset=10"), 416, "offset-out-of-range");
    assert_eq!((problem["earliest_offset"].as_u64(), problem["latest_offset"].as_u64()), (Some(0), Some(3)));

    // The log end itself is a valid position: nothing yet, come back at the same offset.
    let page = server.read_page("t", "partition=0&offset=3");
    assert!(page.events.is_empty());
    assert_eq!(page.next_offset, 3);

    let page = server.read_page("t", "partition=0&offset=1&limit=1");
    assert_eq!((page.events.len(), page.events[0].offset, page.next_offset), (1, 1, 2));
    let page = server.read_page("t", "partition=0");
    assert_eq!(page.events.iter().map(|e| e.offset).collect::<Vec<_>>(), [0, 1, 2]);
}

#[test]
fn long_poll_returns_as_soon_as_an_event_is_published() {
    let server = Server::start();
    server.create_topic("t", 1);

    // Nothing arrives: the poll lasts its full wait and returns an empty page at the same position.
    let started = Instant::now();
    let page = server.read_page("t", "offset=0&wait=0.3");
    assert!(started.elapsed() >= Duration::from_millis(300), "returned after {:?}", started.elapsed());
    assert!(page.events.is_empty());
    assert_eq!(page.next_offset, 0);

    // An event published while a reader waits ends the wait at once.
    let (tx, rx) = mpsc::channel();
    let client = common::http_client();
    let url = format!("{}/v1/topics/t/events?offset=0&wait=20", server.url());
    let reader = thread::spawn(move || {
        tx.send(()).expect("signal");
        let started = Instant::now();
        let text =
            client.get(&url).send().and_then(|r| r.error_for_status()).and_then(|r| r.text()).expect("poll");
        (started.elapsed(), text)
    });
    rx.recv().expect("reader started");
    // The one deliberate pause: it lets the reader's request reach the server and park, which is the
    // situation under test; an early publish would only make the test weaker, never flaky.
    thread::sleep(Duration::from_millis(200));
    let event = r#"{"data":{"payload":{"item_id":"CMIP6.long.poll"}}}"#;
    server.publish("t", event);
    let (elapsed, text) = reader.join().expect("reader thread");
    let page = common::ReadPage::parse(&text);
    assert_eq!(page.events.len(), 1, "{text}");
    assert!(page.events[0].value.get() == event);
    assert_eq!(page.next_offset, 1);
    assert!(elapsed < Duration::from_secs(10), "the long-poll waited {elapsed:?} despite the new event");
}

#[test]
fn since_starts_at_the_first_event_at_or_after_the_time() {
    let server = Server::start();
    server.create_topic("t", 1);
    let before = Utc::now() - chrono::Duration::seconds(5);
    for round in 0..4 {
        let batch = format!(r#"[{{"round":{round},"i":0}},{{"round":{round},"i":1}}]"#);
        server.publish("t", batch);
        // Let the clock move on between rounds, so the rounds have distinct timestamps.
        let stamp = Utc::now();
        while Utc::now() <= stamp + chrono::Duration::milliseconds(2) {
            std::hint::spin_loop();
        }
    }
    let all = server.read_partition("t", 0);
    assert_eq!(all.len(), 8);
    let stamps: Vec<DateTime<Utc>> = all.iter().map(|e| parse_timestamp(&e.timestamp)).collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "timestamps go backwards: {stamps:?}");

    for pick in [0, 2, 5, 7] {
        let since = &all[pick].timestamp;
        let expected_first = stamps.iter().position(|s| *s >= stamps[pick]).expect("at least pick");
        let page = server.read_page("t", &format!("since={}", urlencode(since)));
        assert_eq!(page.events.first().map(|e| e.offset), Some(expected_first as u64), "since={since}");
        assert_eq!(page.next_offset, 8);
    }

    // Before everything: from the start. After everything: at the log end, nothing yet.
    let page = server.read_page("t", &format!("since={}", urlencode(&before.to_rfc3339())));
    assert_eq!(page.events.len(), 8);
    let future = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let page = server.read_page("t", &format!("since={}", urlencode(&future)));
    assert!(page.events.is_empty());
    assert_eq!(page.next_offset, 8);
    assert_problem(server.get("/v1/topics/t/events?since=yesterday"), 400, "invalid-query");
}

/// Percent-encodes what RFC 3339 times contain that a query string cannot carry as is (`+`, `:`).
fn urlencode(text: &str) -> String {
    text.replace('%', "%25").replace('+', "%2B").replace(':', "%3A")
}

#[test]
fn sigterm_drains_exits_zero_and_acknowledged_events_survive_a_restart() {
    let mut server = Server::start();
    server.create_topic("durable", 2);
    let mut acknowledged = Vec::new();
    for round in 0..10 {
        let events: Vec<String> = (0..5)
            .map(|i| {
                json!({"data": {"payload": {"item_id": format!("CMIP6.sigterm.{round}.{i}")}}}).to_string()
            })
            .collect();
        let placements = server.publish("durable", format!("[{}]", events.join(",")));
        acknowledged.extend(events.into_iter().zip(placements));
    }

    // A reader long-polling at the log end must not hold up shutdown.
    let client = common::http_client();
    let latest = server.describe("durable")["offsets"][0]["latest"].as_u64().expect("latest");
    let url = format!("{}/v1/topics/durable/events?partition=0&offset={latest}&wait=30", server.url());
    let poller = thread::spawn(move || client.get(&url).send().map(|r| r.status()));

    let started = Instant::now();
    let status = server.terminate();
    assert!(status.success(), "SIGTERM must exit 0, got {status}; log:\n{}", server.logs());
    assert!(started.elapsed() < Duration::from_secs(15), "shutdown took {:?}", started.elapsed());
    // The poller gets an empty page or a closed connection, never a 30 s wait.
    let _ = poller.join().expect("poller thread");

    server.restart();
    let description = server.describe("durable");
    assert_eq!(description["partitions"], 2);
    let stored: Vec<Vec<common::EventOut>> = (0..2).map(|p| server.read_partition("durable", p)).collect();
    assert_eq!(stored.iter().map(Vec::len).sum::<usize>(), acknowledged.len());
    for (event, placement) in &acknowledged {
        let found = &stored[placement.partition as usize][placement.offset as usize];
        assert!(
            found.value.get() == event,
            "offset {placement:?} holds {} instead of {event}",
            found.value.get()
        );
    }

    // The restarted server keeps appending after the recovered log end.
    let placement =
        server.publish_at("/v1/topics/durable/events?key=CMIP6.sigterm.0.0", r#"{"after":"restart"}"#)[0];
    assert_eq!(placement.offset, stored[placement.partition as usize].len() as u64);
}
