//! A small async client of the service's HTTP API, shared by the `topic`, `publish` and `consume` commands.
//!
//! Failures are typed: a server's RFC 9457 problem becomes [`ClientError::Problem`], shown as
//! "<title>: <detail>"; anything else keeps enough context (URL, status) to act on.

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Responses larger than this are refused rather than buffered: a bounded client cannot be made to exhaust
/// memory by a misbehaving server (a read page is a few MiB at most).
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// Bounds every request but long-polls, whose bound is their `wait` plus this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server is: flattened into every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Base URL of the esgf-events server.
    #[arg(long, global = true, value_name = "URL", env = "ESGF_EVENTS_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Bearer token sent with every request (reserved: the server does not check tokens yet).
    #[arg(long, global = true, value_name = "TOKEN", env = "ESGF_EVENTS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ServerArgs {
    pub fn client(&self) -> Result<Client, ClientError> {
        Client::new(&self.server, self.token.clone())
    }
}

/// An RFC 9457 problem document as the server sends it.
#[derive(Debug, Clone, Deserialize)]
pub struct Problem {
    #[serde(rename = "type", default)]
    pub problem_type: Option<String>,
    pub title: String,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub detail: Option<String>,
    /// Extension members (e.g. `earliest_offset`, `index`).
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// The `<kind>` of `urn:esgf-events:problem:<kind>`.
    pub fn kind(&self) -> Option<&str> {
        self.problem_type.as_deref()?.strip_prefix("urn:esgf-events:problem:")
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.detail.as_deref().filter(|d| !d.is_empty()) {
            Some(detail) => write!(f, "{}: {detail}", self.title),
            None => f.write_str(&self.title),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The server answered with a problem document.
    #[error("{problem}")]
    Problem { status: StatusCode, problem: Box<Problem> },
    #[error("cannot reach the server at {server}")]
    Unreachable {
        server: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the server answered {status} with a body esgf-events does not understand: {snippet}")]
    UnexpectedResponse { status: StatusCode, snippet: String },
    #[error("the server's response is larger than {MAX_RESPONSE_BYTES} bytes")]
    ResponseTooLarge,
}

impl ClientError {
    /// Worth retrying while following a topic: the server is away or restarting, not refusing the request.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Http { source, .. } => {
                source.is_timeout() || source.is_request() || source.is_body()
            }
            ClientError::Problem { status, .. } | ClientError::UnexpectedResponse { status, .. } => {
                matches!(
                    *status,
                    StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
                )
            }
            _ => false,
        }
    }
}

/// `POST /v1/topics` body.
#[derive(Debug, Clone, Serialize)]
pub struct CreateTopic {
    pub name: String,
    pub partitions: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<u64>,
}

/// A topic as `GET /v1/topics/{topic}` describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct TopicDescription {
    pub name: String,
    pub partitions: u32,
    pub retention: String,
    #[serde(default)]
    pub retention_bytes: Option<u64>,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub offsets: Vec<PartitionOffsets>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct PartitionOffsets {
    pub partition: u32,
    pub earliest: u64,
    /// The next offset to be written.
    pub latest: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TopicList {
    pub topics: Vec<TopicDescription>,
}

/// Where one appended event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Placement {
    pub partition: u32,
    pub offset: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PublishResponse {
    pub results: Vec<Placement>,
}

/// Where a read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    /// The oldest retained event.
    Earliest,
    Offset(u64),
    /// The first event at or after this RFC 3339 time.
    Since(String),
}

/// A decoded response with the bytes it came from, for `--json` output that shows what the server said.
#[derive(Debug, Clone)]
pub struct WithRaw<T> {
    pub value: T,
    pub raw: Bytes,
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Result<Self, ClientError> {
        let invalid = |reason: String| ClientError::InvalidUrl { url: server.to_owned(), reason };
        let base = Url::parse(server).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid("expected an http:// or https:// URL".into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("esgf-events/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Client { http, base, token })
    }

    pub fn server(&self) -> &str {
        self.base.as_str()
    }

    /// `base` + path segments (each percent-encoded) + query pairs.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let mut request = self.http.request(method, url.clone()).timeout(timeout);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        }
        let wrap = |source: reqwest::Error| {
            if source.is_connect() {
                ClientError::Unreachable { server: self.base.to_string(), source }
            } else {
                ClientError::Http { url: url.to_string(), source }
            }
        };
        let mut response = request.send().await.map_err(wrap)?;
        let status = response.status();
        if response.content_length().is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
            return Err(ClientError::ResponseTooLarge);
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(wrap)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(ClientError::ResponseTooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let body = body.freeze();
        if status.is_success() { Ok(body) } else { Err(error_from_response(status, &body)) }
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<WithRaw<T>, ClientError> {
        let raw = self.send(method, url, body, timeout).await?;
        let value = decode(StatusCode::OK, &raw)?;
        Ok(WithRaw { value, raw })
    }

    pub async fn create_topic(
        &self,
        request: &CreateTopic,
    ) -> Result<WithRaw<TopicDescription>, ClientError> {
        let body = Bytes::from(serde_json::to_vec(request).expect("strings and numbers always serialize"));
        self.send_json(Method::POST, self.url(&["v1", "topics"], &[]), Some(body), REQUEST_TIMEOUT).await
    }

    pub async fn list_topics(&self) -> Result<WithRaw<TopicList>, ClientError> {
        self.send_json(Method::GET, self.url(&["v1", "topics"], &[]), None, REQUEST_TIMEOUT).await
    }

    pub async fn describe_topic(&self, name: &str) -> Result<WithRaw<TopicDescription>, ClientError> {
        self.send_json(Method::GET, self.url(&["v1", "topics", name], &[]), None, REQUEST_TIMEOUT).await
    }

    /// Publishes `body`, a JSON array of events, as one batch.
    pub async fn publish(
        &self,
        topic: &str,
        key: Option<&str>,
        body: Bytes,
    ) -> Result<PublishResponse, ClientError> {
        let query: Vec<(&str, String)> = key.map(|k| ("key", k.to_owned())).into_iter().collect();
        let url = self.url(&["v1", "topics", topic, "events"], &query);
        Ok(self.send_json(Method::POST, url, Some(body), REQUEST_TIMEOUT).await?.value)
    }

    /// One read of a partition; the raw body is returned for the caller to decode without copying values.
    pub async fn read_events(
        &self,
        topic: &str,
        partition: u32,
        from: &ReadFrom,
        limit: usize,
        wait: Option<Duration>,
    ) -> Result<Bytes, ClientError> {
        let mut query = vec![("partition", partition.to_string()), ("limit", limit.to_string())];
        match from {
            ReadFrom::Earliest => {}
            ReadFrom::Offset(offset) => query.push(("offset", offset.to_string())),
            ReadFrom::Since(time) => query.push(("since", time.clone())),
        }
        let mut timeout = REQUEST_TIMEOUT;
        if let Some(wait) = wait {
            query.push(("wait", wait.as_secs_f64().to_string()));
            timeout = wait + REQUEST_TIMEOUT;
        }
        let url = self.url(&["v1", "topics", topic, "events"], &query);
        self.send(Method::GET, url, None, timeout).await
    }
}

fn decode<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body)
        .map_err(|_| ClientError::UnexpectedResponse { status, snippet: snippet(body) })
}

fn error_from_response(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<Problem>(body) {
        Ok(problem) => ClientError::Problem { status, problem: Box::new(problem) },
        Err(_) => ClientError::UnexpectedResponse { status, snippet: snippet(body) },
    }
}

/// The start of a body, for messages: enough to recognise a proxy's HTML error page.
fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if body.len() > MAX {
        text.push('…');
    }
    if text.is_empty() { "(empty body)".to_owned() } else { text }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The error a response with this status and body becomes.
    pub(crate) fn problem_error(status: StatusCode, body: &[u8]) -> ClientError {
        error_from_response(status, body)
    }

    #[test]
    fn problem_is_shown_as_title_and_detail() {
        let body =
            br#"{"type":"urn:esgf-events:problem:topic-not-found","title":"Topic not found","status":404,
                        "detail":"topic 'x' does not exist","topic":"x"}"#;
        let err = error_from_response(StatusCode::NOT_FOUND, body);
        assert_eq!(err.to_string(), "Topic not found: topic 'x' does not exist");
        let ClientError::Problem { problem, .. } = err else { panic!() };
        assert_eq!(problem.kind(), Some("topic-not-found"));
        assert_eq!(problem.extensions["topic"], "x");
    }

    #[test]
    fn problem_without_detail_is_shown_as_title() {
        let err = error_from_response(StatusCode::NOT_FOUND, br#"{"title":"Not found"}"#);
        assert_eq!(err.to_string(), "Not found");
    }

    #[test]
    fn non_problem_error_body_is_quoted_briefly() {
        let html = format!("<html>\n<body>Bad   gateway</body>{}</html>", "x".repeat(500));
        let err = error_from_response(StatusCode::BAD_GATEWAY, html.as_bytes());
        let text = err.to_string();
        assert!(text.contains("502 Bad Gateway"), "{text}");
        assert!(text.contains("<html> <body>Bad gateway"), "{text}");
        assert!(text.len() < 320, "{text}");
        assert!(err.is_transient());
    }

    #[test]
    fn urls_are_built_under_the_base_path_with_encoded_parts() {
        let client = Client::new("http://127.0.0.1:8080/esgf/", None).unwrap();
        let url = client.url(&["v1", "topics", "a b", "events"], &[("key", "k&v".to_owned())]);
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/esgf/v1/topics/a%20b/events?key=k%26v");
        let client = Client::new("http://localhost:1", None).unwrap();
        assert_eq!(client.url(&["v1", "topics"], &[]).as_str(), "http://localhost:1/v1/topics");
    }

    #[test]
    fn non_http_server_urls_are_rejected() {
        for bad in ["localhost:8080", "ftp://x", "not a url", "mailto:a@b"] {
            assert!(matches!(Client::new(bad, None), Err(ClientError::InvalidUrl { .. })), "{bad}");
        }
    }

    #[test]
    fn a_refused_request_is_not_transient() {
        let err = error_from_response(StatusCode::BAD_REQUEST, br#"{"title":"Invalid query","status":400}"#);
        assert!(!err.is_transient());
        let err = error_from_response(StatusCode::SERVICE_UNAVAILABLE, br#"{"title":"Shutting down"}"#);
        assert!(err.is_transient());
    }
}
