//! One delivery attempt over HTTP, and the client it uses.
//!
//! The client never follows redirects (a receiver cannot bounce deliveries to a host the URL rules refused),
//! ignores proxy environment variables (so the rules apply to the real destination), keeps a few idle
//! connections per host, bounds every attempt by the configured timeout (connect, send, and reading the
//! response), and reads at most [`MAX_RESPONSE_BYTES`] of a response before dropping it. Host names are
//! resolved through [`GuardedResolver`], which drops addresses the deny list covers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{StatusCode, Url, header};

use crate::backoff::parse_retry_after;
use crate::model::{Format, WebhookConfig, WebhookError};
use crate::signing::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, WebhookSecret};
use crate::url_rules::UrlPolicy;

/// The most of a response body that is read (and then dropped): enough to keep a connection reusable after a
/// normal answer, without letting a receiver make us buffer a large one.
pub const MAX_RESPONSE_BYTES: usize = 64 << 10;

/// The most of a failed response's body kept in the error message.
const ERROR_SNIPPET_CHARS: usize = 200;

pub(crate) const CONTENT_TYPE_JSON: &str = "application/json";
pub(crate) const CONTENT_TYPE_CLOUDEVENTS: &str = "application/cloudevents+json";
pub(crate) const CONTENT_TYPE_BINARY: &str = "application/octet-stream";

/// The client every subscription shares.
pub(crate) fn client(config: &WebhookConfig, policy: &UrlPolicy) -> Result<reqwest::Client, WebhookError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(config.pool_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(concat!("esgf-events-webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver { policy: policy.clone() }))
        .build()
        .map_err(|e| WebhookError::Client(e.to_string()))
}

/// Resolves host names with the system resolver and removes the addresses an IP or network deny pattern
/// covers; a name left with none fails to resolve, naming the rule.
struct GuardedResolver {
    policy: UrlPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut denied_by = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match policy.address_denied(addr.ip()) {
                    Some(rule) => {
                        denied_by = Some(rule.to_owned());
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty()
                && let Some(rule) = denied_by
            {
                return Err(format!(
                    "every address of {host} is refused by the webhook deny list entry {rule:?}"
                )
                .into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The body and content type a record is delivered with.
pub(crate) fn render(
    format: Format,
    topic: &str,
    partition: u32,
    offset: u64,
    timestamp_ms: i64,
    value: &Bytes,
) -> (Bytes, &'static str) {
    match format {
        Format::Raw => {
            let is_json = serde_json::from_slice::<&serde_json::value::RawValue>(value).is_ok();
            (value.clone(), if is_json { CONTENT_TYPE_JSON } else { CONTENT_TYPE_BINARY })
        }
        Format::CloudEvents => {
            let record = esgf_events_envelope::RecordRef { topic, partition, offset, timestamp_ms };
            (Bytes::from(esgf_events_envelope::to_cloudevent(&record, value)), CONTENT_TYPE_CLOUDEVENTS)
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) message: String,
    /// What the receiver asked for with `Retry-After` on a 429 or 503.
    pub(crate) retry_after: Option<Duration>,
}

/// What one delivery sends.
pub(crate) struct Message<'a> {
    pub(crate) url: &'a Url,
    pub(crate) secret: &'a WebhookSecret,
    pub(crate) webhook_id: &'a str,
    pub(crate) body: &'a Bytes,
    pub(crate) content_type: &'static str,
}

/// Sends one signed attempt; `Ok` with the status on a 2xx.
pub(crate) async fn attempt(
    client: &reqwest::Client,
    timeout: Duration,
    message: &Message<'_>,
) -> Result<StatusCode, Failure> {
    let timestamp = chrono::Utc::now().timestamp();
    let signature = message.secret.sign(message.webhook_id, timestamp, message.body);
    let sent = client
        .post(message.url.clone())
        .header(header::CONTENT_TYPE, message.content_type)
        .header(HEADER_ID, message.webhook_id)
        .header(HEADER_TIMESTAMP, timestamp.to_string())
        .header(HEADER_SIGNATURE, signature)
        .body(message.body.clone())
        .send()
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(err) => return Err(Failure { message: describe(&err, timeout), retry_after: None }),
    };
    let status = response.status();
    let retry_after = if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
    {
        response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
    } else {
        None
    };
    // Read (a bounded part of) the body so a normal answer leaves the connection reusable.
    let mut snippet = Vec::new();
    let mut read = 0usize;
    let mut body_error = None;
    while read < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                read += chunk.len();
                if !status.is_success() && snippet.len() < ERROR_SNIPPET_CHARS * 4 {
                    snippet.extend_from_slice(&chunk[..chunk.len().min(ERROR_SNIPPET_CHARS * 4)]);
                }
            }
            Ok(None) => break,
            Err(err) => {
                body_error = Some(describe(&err, timeout));
                break;
            }
        }
    }
    if status.is_success() {
        // The receiver answered 2xx: a body cut short afterwards does not undo that.
        return Ok(status);
    }
    let mut message = format!("HTTP {}", status.as_u16());
    let text = printable(&String::from_utf8_lossy(&snippet));
    if !text.is_empty() {
        message.push_str(": ");
        message.push_str(&text);
    }
    if let Some(err) = body_error {
        message.push_str(&format!(" (reading the response failed: {err})"));
    }
    Err(Failure { message, retry_after })
}

/// A transport error in one line, without the URL (it is in the subscription already).
fn describe(err: &reqwest::Error, timeout: Duration) -> String {
    if err.is_timeout() {
        return format!("timed out after {}", humanize(timeout));
    }
    let mut text =
        if err.is_connect() { "connection failed".to_owned() } else { "request failed".to_owned() };
    let mut source = std::error::Error::source(err);
    let mut last = String::new();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Nested errors often repeat their inner message; keep each distinct one once.
        if !cause_text.is_empty() && !last.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        last = cause_text;
        source = cause.source();
    }
    printable(&text)
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

/// One line of at most [`ERROR_SNIPPET_CHARS`] printable characters: a receiver's answer ends up in the API
/// and in logs, so control characters (terminal escapes, newlines) are replaced.
fn printable(text: &str) -> String {
    let mut out: String =
        text.trim().chars().take(ERROR_SNIPPET_CHARS).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.trim().chars().count() > ERROR_SNIPPET_CHARS {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_format_sends_the_event_bytes_as_json() {
        let value = Bytes::from_static(br#"{"a": 1}"#);
        let (body, content_type) = render(Format::Raw, "t", 0, 5, 0, &value);
        assert_eq!((body, content_type), (value, CONTENT_TYPE_JSON));
        let binary = Bytes::from_static(b"\x00\x01not json");
        assert_eq!(render(Format::Raw, "t", 0, 5, 0, &binary).1, CONTENT_TYPE_BINARY);
    }

    #[test]
    fn cloudevents_format_wraps_the_event() {
        let value = Bytes::from_static(br#"{"a": 1}"#);
        let (body, content_type) = render(Format::CloudEvents, "t", 2, 7, 1_000, &value);
        assert_eq!(content_type, CONTENT_TYPE_CLOUDEVENTS);
        let event: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["data"], serde_json::json!({"a": 1}));
        assert_eq!(event["esgfpartition"], 2);
    }

    #[test]
    fn error_text_is_one_bounded_printable_line() {
        assert_eq!(printable(" a\nb\x1b[31m "), "a b [31m");
        let long = "x".repeat(1000);
        let cut = printable(&long);
        assert_eq!(cut.len(), ERROR_SNIPPET_CHARS + 3);
        assert!(cut.ends_with("..."));
    }
}
