//! The topic catalogue through the real binary: validation at publish, idempotent publish, a scheduled state
//! change applied by the server's own scheduler, the HTML catalogue page.

mod common;

use std::time::{Duration, Instant};

use common::{Server, assert_problem, fixture_events};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[test]
fn validated_topic_accepts_the_production_fixtures_and_refuses_broken_events() {
    let server = Server::start();
    let created =
        server.post_json("/v1/topics", json!({"name": "pub", "validation": "esgf-envelope"}).to_string());
    assert_eq!(created.status(), StatusCode::CREATED);
    for event in fixture_events().iter().filter(|e| e.name.starts_with("piddiplatsch_")) {
        server.publish("pub", event.json.clone());
    }
    let broken = json!({"metadata": {}, "data": {"type": "STAC", "payload": {"method": "POST", "collection_id": "C", "item": {}}}});
    let problem =
        assert_problem(server.post_json("/v1/topics/pub/events", broken.to_string()), 422, "invalid-event");
    assert_eq!(problem["errors"][0]["pointer"], "/data/payload/item/id");

    // Idempotent publish across requests.
    let event = json!({"metadata": {"event_id": "once"}, "data": {"type": "STAC", "payload": {
        "method": "POST", "collection_id": "C", "item": {"id": "x"}}}})
    .to_string();
    let first = server.publish("pub", event.clone());
    let again = server.post_json("/v1/topics/pub/events", event);
    let again: Value = again.json().expect("JSON");
    assert_eq!(again["results"][0]["offset"], first[0].offset);
    assert_eq!(again["results"][0]["duplicate"], true);

    let page = server.get("/topics");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().expect("html").contains("<th scope=\"row\">pub</th>"));
}

#[test]
fn the_server_applies_a_scheduled_state_change_when_it_is_due() {
    let server = Server::start();
    server.create_topic("t", 1);
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let body =
        json!({"state": "read-only", "state_at": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)});
    let response = server
        .client()
        .patch(format!("{}/v1/topics/t", server.url()))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .expect("PATCH");
    assert_eq!(response.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let topic = server.describe("t");
        if topic["state"] == "read-only" {
            assert!(topic.get("scheduled").is_none(), "{topic}");
            break;
        }
        assert!(Instant::now() < deadline, "the scheduled change was not applied: {topic}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = server.post_json("/v1/topics/t/events", r#"{"a":1}"#);
    assert_problem(refused, 409, "topic-read-only");
}
