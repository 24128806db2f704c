//! The replica's view of the event service's HTTP API: describe a topic, read a partition page (long-poll),
//! publish an error report. Every request carries the bearer token; every response is bounded in size.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;

use crate::index::PageEvent;

/// A read page holds at most 1000 events of at most a few MiB each in practice; beyond this the server is
/// misbehaving and the response is refused rather than buffered.
const MAX_RESPONSE_BYTES: usize = 256 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds a request beyond its long-poll wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_CA_FILE_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot use {} as a CA certificate: {reason}", path.display())]
    CaCert { path: PathBuf, reason: String },
    #[error("the token cannot be sent in an HTTP header")]
    InvalidToken,
    #[error("request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server refused with a problem document (or a body that is not one).
    #[error("{url}: HTTP {status}: {message}")]
    Refused {
        url: String,
        status: StatusCode,
        /// The `<kind>` of `urn:esgf-events:problem:<kind>`, when the body was a problem document.
        kind: Option<String>,
        /// The problem's "title: detail", or the start of a body that is not a problem document.
        message: String,
        retry_after: Option<Duration>,
        /// The query parameters an `invalid-query` refusal names (a server allowing a lower `wait`/`limit`).
        parameters: Vec<String>,
    },
    #[error("{url}: the response is not as documented: {reason}")]
    BadResponse { url: String, reason: String },
}

impl SourceError {
    /// Worth retrying: the server is away, busy or restarting, rather than refusing the request.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Http { source, .. } => {
                source.is_connect() || source.is_timeout() || source.is_request() || source.is_body()
            }
            SourceError::Refused { status, .. } => matches!(
                *status,
                StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::INTERNAL_SERVER_ERROR
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ),
            _ => false,
        }
    }

    /// The wait the server asked for (429, 503).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SourceError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The query parameters the server refused as out of its range.
    pub fn refused_parameters(&self) -> &[String] {
        match self {
            SourceError::Refused { kind: Some(kind), parameters, .. } if kind == "invalid-query" => {
                parameters
            }
            _ => &[],
        }
    }

    pub fn status(&self) -> Option<StatusCode> {
        match self {
            SourceError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A topic, as far as the replica cares.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: u32,
    #[serde(default)]
    pub offsets: Vec<PartitionRange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct PartitionRange {
    pub partition: u32,
    pub earliest: u64,
    /// The next offset to be written.
    pub latest: u64,
}

impl TopicInfo {
    pub fn range(&self, partition: u32) -> PartitionRange {
        self.offsets.iter().find(|r| r.partition == partition).copied().unwrap_or(PartitionRange {
            partition,
            earliest: 0,
            latest: 0,
        })
    }
}

/// One read page, decoded.
#[derive(Debug, Clone)]
pub struct Page {
    pub events: Vec<PageEvent>,
    pub next_offset: u64,
}

#[derive(Deserialize)]
struct WirePage {
    events: Vec<WireEvent>,
    next_offset: u64,
}

#[derive(Deserialize)]
struct WireEvent {
    offset: u64,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    value_base64: Option<String>,
}

#[derive(Deserialize)]
struct WireProblem {
    #[serde(rename = "type", default)]
    problem_type: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    parameters: Vec<String>,
}

/// Credentials and trust for [`Source::new`].
#[derive(Clone, Default)]
pub struct SourceOptions {
    pub token: Option<String>,
    /// PEM certificates: the only roots trusted for https:// (`None`: the system's).
    pub ca_cert: Option<Vec<u8>>,
}

impl std::fmt::Debug for SourceOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceOptions")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("ca_cert", &self.ca_cert.as_ref().map(Vec::len))
            .finish()
    }
}

/// Reads a PEM file for [`SourceOptions::ca_cert`].
pub fn read_ca_file(path: &Path) -> Result<Vec<u8>, SourceError> {
    use std::io::Read;
    let error = |reason: String| SourceError::CaCert { path: path.to_owned(), reason };
    let file = std::fs::File::open(path).map_err(|e| error(e.to_string()))?;
    let mut pem = Vec::new();
    file.take(MAX_CA_FILE_BYTES + 1).read_to_end(&mut pem).map_err(|e| error(e.to_string()))?;
    if pem.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(error(format!("is larger than {MAX_CA_FILE_BYTES} bytes")));
    }
    Ok(pem)
}

/// An HTTP client of one event service.
#[derive(Debug, Clone)]
pub struct Source {
    http: reqwest::Client,
    base: Url,
    authorization: Option<HeaderValue>,
}

impl Source {
    pub fn new(server: &str, options: SourceOptions) -> Result<Source, SourceError> {
        let invalid = |reason: String| SourceError::InvalidUrl { url: server.to_owned(), reason };
        let base = Url::parse(server).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid("expected an http:// or https:// URL".into()));
        }
        // rustls needs a process-wide provider when more than one could be compiled in; the binary installs
        // ring first, and this keeps the library usable on its own. A second install is refused harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("esgf-events-replica/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &options.ca_cert {
            let ca_error = |reason: String| SourceError::CaCert { path: PathBuf::from("--ca-cert"), reason };
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("holds no PEM certificate".into()));
            }
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().map_err(|e| invalid(e.to_string()))?;
        let authorization = match options.token {
            Some(token) => {
                let mut value = HeaderValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| SourceError::InvalidToken)?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Source { http, base, authorization })
    }

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

    async fn send(&self, request: reqwest::RequestBuilder, url: &Url) -> Result<Vec<u8>, SourceError> {
        let request = match &self.authorization {
            Some(authorization) => request.header(AUTHORIZATION, authorization.clone()),
            None => request,
        };
        let wrap = |source: reqwest::Error| SourceError::Http { url: url.to_string(), source };
        let mut response = request.send().await.map_err(wrap)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let too_large = || SourceError::BadResponse {
            url: url.to_string(),
            reason: format!("larger than {MAX_RESPONSE_BYTES} bytes"),
        };
        if response.content_length().is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(wrap)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(body);
        }
        let problem = serde_json::from_slice::<WireProblem>(&body).ok();
        let snippet = || String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned();
        Err(SourceError::Refused {
            url: url.to_string(),
            status,
            kind: problem
                .as_ref()
                .and_then(|p| p.problem_type.as_deref())
                .and_then(|t| t.strip_prefix("urn:esgf-events:problem:"))
                .map(str::to_owned),
            parameters: problem.as_ref().map(|p| p.parameters.clone()).unwrap_or_default(),
            message: match problem {
                Some(problem) => {
                    let title = problem
                        .title
                        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
                    match problem.detail {
                        Some(detail) => format!("{title}: {detail}"),
                        None => title,
                    }
                }
                None => snippet(),
            },
            retry_after,
        })
    }

    /// `GET /v1/topics/{topic}`.
    pub async fn describe(&self, topic: &str) -> Result<TopicInfo, SourceError> {
        let url = self.url(&["v1", "topics", topic], &[]);
        let body = self.send(self.http.get(url.clone()).timeout(REQUEST_TIMEOUT), &url).await?;
        serde_json::from_slice(&body)
            .map_err(|e| SourceError::BadResponse { url: url.to_string(), reason: e.to_string() })
    }

    /// `GET /v1/topics/{topic}/events?partition=P&offset=O&limit=N[&wait=S]`.
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limit: u32,
        wait: Option<Duration>,
    ) -> Result<Page, SourceError> {
        let mut query = vec![
            ("partition", partition.to_string()),
            ("offset", offset.to_string()),
            ("limit", limit.to_string()),
        ];
        let mut timeout = REQUEST_TIMEOUT;
        if let Some(wait) = wait {
            query.push(("wait", wait.as_secs_f64().to_string()));
            timeout += wait;
        }
        let url = self.url(&["v1", "topics", topic, "events"], &query);
        let body = self.send(self.http.get(url.clone()).timeout(timeout), &url).await?;
        let page: WirePage = serde_json::from_slice(&body)
            .map_err(|e| SourceError::BadResponse { url: url.to_string(), reason: e.to_string() })?;
        let events = page
            .events
            .into_iter()
            .map(|event| PageEvent {
                offset: event.offset,
                event: match (event.value, event.value_base64) {
                    (Some(value), _) => Ok(value),
                    (None, Some(_)) => {
                        Err("the record's value is not JSON (the server sent it as value_base64)".into())
                    }
                    // A stored `null`: valid JSON, rejected by apply like any event without a payload.
                    (None, None) => Ok(Value::Null),
                },
            })
            .collect();
        Ok(Page { events, next_offset: page.next_offset })
    }

    /// `POST /v1/topics/{topic}/events` with one event.
    pub async fn publish(&self, topic: &str, event: &str) -> Result<(), SourceError> {
        let url = self.url(&["v1", "topics", topic, "events"], &[]);
        let request = self
            .http
            .post(url.clone())
            .timeout(REQUEST_TIMEOUT)
            .header(CONTENT_TYPE, "application/json")
            .body(event.to_owned());
        self.send(request, &url).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_the_base_path_and_encode_parts() {
        let source = Source::new("http://127.0.0.1:8080/esgf/", SourceOptions::default()).unwrap();
        let url = source.url(&["v1", "topics", "a b", "events"], &[("partition", "3".into())]);
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/esgf/v1/topics/a%20b/events?partition=3");
    }

    #[test]
    fn non_http_urls_and_unsendable_tokens_are_refused() {
        assert!(matches!(
            Source::new("ftp://x", SourceOptions::default()),
            Err(SourceError::InvalidUrl { .. })
        ));
        let options = SourceOptions { token: Some("bad\ntoken".into()), ca_cert: None };
        assert!(matches!(Source::new("http://x", options), Err(SourceError::InvalidToken)));
    }

    #[test]
    fn debug_output_hides_the_token() {
        let options = SourceOptions { token: Some("esgfev_secret".into()), ca_cert: None };
        assert!(!format!("{options:?}").contains("secret"));
        let source = Source::new("http://x", options).unwrap();
        assert!(!format!("{source:?}").contains("secret"));
    }

    #[test]
    fn busy_and_unavailable_servers_are_retried_but_refusals_are_not() {
        let refused = |status: StatusCode| SourceError::Refused {
            url: "u".into(),
            status,
            kind: None,
            message: "m".into(),
            retry_after: None,
            parameters: Vec::new(),
        };
        assert!(refused(StatusCode::SERVICE_UNAVAILABLE).is_transient());
        assert!(refused(StatusCode::TOO_MANY_REQUESTS).is_transient());
        assert!(!refused(StatusCode::NOT_FOUND).is_transient());
        assert!(!refused(StatusCode::RANGE_NOT_SATISFIABLE).is_transient());
    }
}
