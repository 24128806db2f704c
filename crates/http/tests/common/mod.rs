//! What the in-process tests of the operations endpoints share: a log and a state store in a temporary
//! directory, and one request through the router.

// Every test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, Method, Request, StatusCode, header};
use esgf_events_engine::{EmbeddedConfig, EmbeddedStore, LogStore, SystemClock};
use esgf_events_meta::{MetaStore, RedbMetaStore};
use serde_json::Value;
use tower::ServiceExt;

/// The log (`dir/data`, stamping records with real time) and the state store (`dir/state.redb`).
pub fn open_stores(dir: &Path) -> (Arc<dyn LogStore>, Arc<dyn MetaStore>) {
    let store: Arc<dyn LogStore> = Arc::new(
        EmbeddedStore::open(EmbeddedConfig::new(dir.join("data")), Arc::new(SystemClock)).expect("open log"),
    );
    let meta: Arc<dyn MetaStore> = Arc::new(RedbMetaStore::open(&dir.join("state.redb")).expect("open meta"));
    (store, meta)
}

/// Sends one request through `app`; returns the status, the headers and the body as text.
pub async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(HeaderName, &str)],
    body: Body,
) -> (StatusCode, HeaderMap, String) {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    let response = app.clone().oneshot(request.body(body).expect("request")).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 24).await.expect("body");
    (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
}

/// [`send`] with `body` as JSON, if there is one.
pub async fn send_json(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, String) {
    match body {
        Some(v) => {
            send(app, method, uri, &[(header::CONTENT_TYPE, "application/json")], Body::from(v.to_string()))
                .await
        }
        None => send(app, method, uri, &[], Body::empty()).await,
    }
}
