//! The announcement list over HTTP, in process: members (idempotent add, remove, invalid addresses), the
//! effective list with each address's sources, and the signed one-click unsubscribe of RFC 8058 (a GET only
//! shows a button, a POST unsubscribes, a forged signature is 403 problem+json, even during maintenance).

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, header};
use common::{open_stores, send, send_json};
use esgf_events_engine::SystemClock;
use esgf_events_http::{HttpConfig, Server, app};
use esgf_events_ops::announcements::Announcements;
use esgf_events_ops::mail::{MailConfig, Mailer};
use esgf_events_ops::{Maintenance, MaintenanceMode, MaintenanceState, NewWindow, Ops};
use serde_json::{Value, json};
use tempfile::TempDir;

struct Fixture {
    _dir: TempDir,
    app: Router,
    mailer: Arc<Mailer>,
    maintenance: Arc<Maintenance>,
}

impl Fixture {
    async fn new(with_mail: bool) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, meta) = open_stores(dir.path());
        let announcements = Arc::new(Announcements::new(Arc::clone(&meta), Arc::new(SystemClock)));
        let maintenance = Arc::new(
            Maintenance::open(
                Arc::clone(&meta),
                MaintenanceState::new(Arc::new(SystemClock)),
                Duration::from_secs(7 * 86_400),
            )
            .await
            .expect("maintenance"),
        );
        // Never run: these tests look at the list, not at mail.
        let mailer = Arc::new(
            Mailer::new(
                MailConfig::new(
                    "smtp://127.0.0.1:9".to_owned(),
                    "events@example.org".to_owned(),
                    vec!["list@example.org".to_owned()],
                ),
                Arc::clone(&meta),
                Arc::clone(&announcements),
                Arc::new(|| vec!["Indexer <indexer@example.org>".to_owned(), "call the desk".to_owned()]),
                Arc::new(SystemClock),
            )
            .expect("mailer"),
        );
        let ops = Ops {
            maintenance: Some(Arc::clone(&maintenance)),
            announcements: Some(announcements),
            mail: with_mail.then(|| Arc::clone(&mailer)),
            ..Ops::default()
        };
        let server = Server { ops, ..Server::new(store, HttpConfig::default()) };
        Fixture { app: app(&server), _dir: dir, mailer, maintenance }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(header::HeaderName, &str)],
        body: Body,
    ) -> (StatusCode, HeaderMap, String) {
        send(&self.app, method, uri, headers, body).await
    }

    async fn json(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (status, _, text) = send_json(&self.app, method, uri, body).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `(address, sources, unsubscribed)` of each entry of the list.
    async fn list(&self) -> Vec<(String, Vec<String>, bool)> {
        let (status, body) = self.json(Method::GET, "/v1/announcements/recipients", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["recipients"]
            .as_array()
            .expect("recipients")
            .iter()
            .map(|e| {
                let sources = e["sources"].as_array().expect("sources");
                (
                    e["address"].as_str().expect("address").to_owned(),
                    sources.iter().map(|s| s.as_str().expect("source").to_owned()).collect(),
                    e["unsubscribed"].as_bool().expect("flag"),
                )
            })
            .collect()
    }

    /// The signed link (path and query) of `address`, as a mail would carry it.
    async fn link(&self, address: &str) -> String {
        self.mailer.list().unsubscribe_url("", address).await.expect("link")
    }
}

fn entry(address: &str, sources: &[&str], unsubscribed: bool) -> (String, Vec<String>, bool) {
    (address.to_owned(), sources.iter().map(|s| (*s).to_owned()).collect(), unsubscribed)
}

#[tokio::test]
async fn members_are_added_once_listed_with_their_sources_and_removed() {
    let fx = Fixture::new(true).await;
    let add = |address: &str| json!({ "address": address, "name": "Centre A" });
    let (status, body) =
        fx.json(Method::POST, "/v1/announcements/recipients", Some(add("centre@example.org"))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (body["address"].as_str(), body["name"].as_str()),
        (Some("centre@example.org"), Some("Centre A"))
    );
    let (status, body) =
        fx.json(Method::POST, "/v1/announcements/recipients", Some(add("Centre@Example.org"))).await;
    assert_eq!(status, StatusCode::OK, "a second add is idempotent: {body}");
    let (status, _) =
        fx.json(Method::POST, "/v1/announcements/recipients", Some(add("list@example.org"))).await;
    assert_eq!(status, StatusCode::CREATED);

    assert_eq!(
        fx.list().await,
        [
            entry("list@example.org", &["configured", "member"], false),
            entry("centre@example.org", &["member"], false),
            entry("indexer@example.org", &["contact"], false),
        ],
        "each address once, free-text contacts left out"
    );

    let (status, _, _) =
        fx.call(Method::DELETE, "/v1/announcements/recipients/centre@example.org", &[], Body::empty()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, problem) =
        fx.json(Method::DELETE, "/v1/announcements/recipients/centre@example.org", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["type"], "urn:esgf-events:problem:recipient-not-found");
    assert_eq!(problem["recipient"], "centre@example.org");
    let (status, _) = fx.json(Method::DELETE, "/v1/announcements/recipients/indexer@example.org", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a contact is not a member");
}

#[tokio::test]
async fn invalid_members_are_refused_with_problem_details() {
    let fx = Fixture::new(true).await;
    for body in [
        json!({ "address": "not an address" }),
        json!({ "address": "a@example.org\r\nBcc: b@example.org" }),
        json!({ "address": "a@example.org", "colour": "blue" }),
        json!({ "name": "no address" }),
        json!({ "address": "a@example.org", "name": "two\nlines" }),
    ] {
        let (status, problem) =
            fx.json(Method::POST, "/v1/announcements/recipients", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        assert_eq!(problem["type"], "urn:esgf-events:problem:invalid-request", "{body}");
    }
}

#[tokio::test]
async fn get_only_shows_a_button_and_post_unsubscribes_whatever_the_source() {
    let fx = Fixture::new(true).await;
    let link = fx.link("list@example.org").await;

    let (status, headers, page) = fx.call(Method::GET, &link, &[], Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(headers[header::CONTENT_TYPE].to_str().expect("type").starts_with("text/html"));
    assert!(page.contains(r#"<form method="post""#) && page.contains("One-Click"), "{page}");
    assert!(!fx.list().await[0].2, "a GET unsubscribes nobody");

    let form = [(header::CONTENT_TYPE, "application/x-www-form-urlencoded")];
    let (status, _, body) =
        fx.call(Method::POST, &link, &form, Body::from("List-Unsubscribe=One-Click")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).expect("json")["unsubscribed"], "list@example.org");
    assert_eq!(fx.list().await[0], entry("list@example.org", &["configured"], true));

    // Again, from a browser: idempotent, and a page to read.
    let browser = [form[0].clone(), (header::ACCEPT, "text/html")];
    let (status, _, page) =
        fx.call(Method::POST, &link, &browser, Body::from("List-Unsubscribe=One-Click")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("has left the announcement list"), "{page}");

    // An operator adding it back lifts the unsubscription.
    let (status, _) = fx
        .json(Method::POST, "/v1/announcements/recipients", Some(json!({ "address": "list@example.org" })))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(fx.list().await[0], entry("list@example.org", &["configured", "member"], false));
}

#[tokio::test]
async fn a_forged_or_incomplete_link_is_refused_and_changes_nothing() {
    let fx = Fixture::new(true).await;
    let link = fx.link("list@example.org").await;
    let other = link.replace("list%40example.org", "indexer%40example.org");
    let tampered = format!("{}x", link);
    for (method, uri) in [
        (Method::POST, other.as_str()),
        (Method::GET, other.as_str()),
        (Method::POST, tampered.as_str()),
        (Method::POST, "/v1/announcements/unsubscribe?address=list%40example.org&sig=AAAA"),
    ] {
        let (status, headers, body) = fx.call(method.clone(), uri, &[], Body::empty()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}: {body}");
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        let problem: Value = serde_json::from_str(&body).expect("problem");
        assert_eq!(problem["type"], "urn:esgf-events:problem:unsubscribe-signature-invalid");
    }
    let (status, problem) =
        fx.json(Method::POST, "/v1/announcements/unsubscribe?address=list%40example.org", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["parameters"], json!(["sig"]));
    assert!(fx.list().await.iter().all(|(_, _, unsubscribed)| !unsubscribed));
}

#[tokio::test]
async fn a_plus_sign_left_unencoded_still_names_the_address() {
    let fx = Fixture::new(true).await;
    let link = fx.link("a+b@example.org").await;
    assert!(link.contains("a%2Bb%40example.org"), "{link}");
    // Some clients decode the link before replaying it; form decoding turns '+' into a space.
    let careless = link.replace("%2B", "+").replace("%40", "@");
    let (status, _, body) = fx.call(Method::POST, &careless, &[], Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn unsubscribing_works_during_a_full_maintenance_window() {
    let fx = Fixture::new(true).await;
    let now = chrono::Utc::now().timestamp_millis();
    fx.maintenance
        .schedule(NewWindow {
            starts_at_ms: now - 1_000,
            ends_at_ms: now + 3_600_000,
            mode: MaintenanceMode::Full,
            message: "full stop".to_owned(),
            announcement: None,
            force: true,
        })
        .await
        .expect("window");
    let (status, _) = fx.json(Method::GET, "/v1/topics", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "the window is active");
    let link = fx.link("list@example.org").await;
    let (status, _, body) = fx.call(Method::POST, &link, &[], Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn without_mail_the_list_endpoints_answer_501() {
    let fx = Fixture::new(false).await;
    let (status, problem) = fx.json(Method::GET, "/v1/announcements/recipients", None).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(problem["type"], "urn:esgf-events:problem:operations-unavailable");
}
