//! The one place where failures become RFC 9457 `application/problem+json` responses.
//!
//! Every handler returns [`ApiError`]; its [`kind`](ApiError::kind) is the stable part of the problem `type` URN
//! (`urn:esgf-events:problem:<kind>`) that clients branch on, so a kind is never renamed or reused.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use esgf_events_auth::{AdminError, AuthError, Denied, GroupAccessError, RateLimited};
use esgf_events_engine::StoreError;
use esgf_events_meta::offsets::OffsetsError;
use esgf_events_webhooks::WebhookError;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// The media type of every error body.
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

/// Prefix of every problem `type`.
pub(crate) const PROBLEM_TYPE_PREFIX: &str = "urn:esgf-events:problem:";

/// Everything a request can fail with, storage failures included.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the body is not valid JSON: {message}")]
    MalformedJson { message: String, line: usize, column: usize },
    #[error("{detail}")]
    InvalidEvent { index: Option<usize>, detail: String },
    #[error("event {index} is {size} bytes, over the maximum of {max} bytes per event")]
    EventTooLarge { index: usize, size: usize, max: usize },
    #[error("the batch holds {events} events, over the maximum of {max} events per request")]
    BatchTooLarge { events: usize, max: usize },
    #[error("the request body is over the maximum of {max} bytes")]
    BodyTooLarge { max: usize },
    #[error("content type '{content_type}' is not accepted: send application/json")]
    UnsupportedMediaType { content_type: String },
    #[error("{detail}")]
    InvalidQuery { detail: String, parameters: Vec<String> },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("there is no resource at {path}")]
    RouteNotFound { path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the service is shutting down")]
    ShuttingDown,
    /// No usable credentials: none where the action needs a principal, or ones that did not authenticate.
    #[error("{detail}")]
    Unauthenticated { detail: String, invalid_token: bool },
    #[error(transparent)]
    Forbidden(#[from] Denied),
    /// `policy` names the limit in the `RateLimit` headers: `"publish"` or `"anonymous"`.
    #[error("{limited}")]
    RateLimited { policy: &'static str, limited: RateLimited },
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("access control is not enabled on this server")]
    AccessControlDisabled,
    /// Every event-stream slot (`HttpConfig::max_streams`) is taken.
    #[error("the server is serving its maximum of {max} event streams; retry later")]
    TooManyStreams { max: usize },
    /// The server was built without a state store for consumer-group offsets.
    #[error("consumer groups are not available on this server")]
    GroupsUnavailable,
    #[error(transparent)]
    Offsets(#[from] OffsetsError),
    /// The server was built without a webhook dispatcher.
    #[error("webhook subscriptions are not available on this server")]
    WebhooksUnavailable,
    /// Built by `From<WebhookError>` (`subscriptions.rs`), which turns the log's own errors into [`ApiError::Store`].
    #[error(transparent)]
    Webhook(WebhookError),
    /// A maintenance window refuses this request (`ops.rs`).
    /// `now_ms` on the maintenance clock, for `Retry-After`.
    #[error("{}", window.message)]
    Maintenance { window: Box<esgf_events_ops::Window>, now_ms: i64 },
    #[error(transparent)]
    MaintenanceWindow(#[from] esgf_events_ops::MaintenanceError),
    /// The server was built without the operations endpoints (metrics, maintenance).
    #[error("{0} is not available on this server")]
    OpsUnavailable(&'static str),
    #[error(transparent)]
    Announcement(#[from] esgf_events_ops::announcements::AnnouncementError),
    /// The announcement list: members and one-click unsubscribe (`recipients.rs`).
    #[error(transparent)]
    Recipients(#[from] esgf_events_ops::recipients::RecipientsError),
    /// The state store failed while reading the changelog.
    #[error(transparent)]
    OpsStorage(esgf_events_meta::MetaError),
    /// A page template failed to render (a bug: templates are fixed at build time).
    #[error(transparent)]
    Page(#[from] esgf_events_ops::pages::RenderError),
    /// The topic's lifecycle state or validation policy refuses a publish; nothing was appended.
    #[error(transparent)]
    PublishRefused(#[from] esgf_events_catalogue::PublishRefusal),
    #[error(transparent)]
    Catalogue(#[from] esgf_events_catalogue::CatalogueError),
}

impl From<GroupAccessError> for ApiError {
    fn from(err: GroupAccessError) -> Self {
        match err {
            GroupAccessError::Denied(denied) => ApiError::Forbidden(denied),
            GroupAccessError::Store(admin) => ApiError::Admin(admin),
        }
    }
}

impl ApiError {
    /// A JSON syntax error, keeping serde_json's position so the client can find the mistake.
    pub(crate) fn malformed_json(err: &serde_json::Error) -> Self {
        ApiError::MalformedJson { message: err.to_string(), line: err.line(), column: err.column() }
    }

    /// A JSON body that parsed but does not fit the expected shape is the client's request at fault, named
    /// as such; a syntax error keeps its position.
    pub(crate) fn bad_body(what: &str, err: &serde_json::Error) -> Self {
        match err.classify() {
            serde_json::error::Category::Data => ApiError::InvalidRequest(format!("invalid {what}: {err}")),
            _ => ApiError::malformed_json(err),
        }
    }

    /// Credentials were presented and refused. The detail never repeats them.
    pub(crate) fn invalid_credentials(err: &AuthError) -> Self {
        ApiError::Unauthenticated { detail: err.to_string(), invalid_token: true }
    }

    /// The stable problem kind: the last segment of the `type` URN.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ApiError::Store(e) => match e {
                StoreError::TopicNotFound(_) => "topic-not-found",
                StoreError::TopicExists(_) => "topic-exists",
                StoreError::InvalidTopicName { .. } => "invalid-topic-name",
                StoreError::PartitionNotFound { .. } => "partition-not-found",
                StoreError::OffsetOutOfRange { .. } => "offset-out-of-range",
                StoreError::InvalidArgument(_) => "invalid-request",
                StoreError::BatchTooLarge { .. } => "batch-too-large",
                StoreError::Corrupt { .. } => "corrupt-data",
                StoreError::Io { .. } | StoreError::Backend(_) => "storage-error",
                StoreError::ShuttingDown => "shutting-down",
            },
            ApiError::MalformedJson { .. } => "malformed-json",
            ApiError::InvalidEvent { .. } => "invalid-event",
            ApiError::EventTooLarge { .. } => "event-too-large",
            ApiError::BatchTooLarge { .. } => "batch-too-large",
            ApiError::BodyTooLarge { .. } => "body-too-large",
            ApiError::UnsupportedMediaType { .. } => "unsupported-media-type",
            ApiError::InvalidQuery { .. } => "invalid-query",
            ApiError::InvalidRequest(_) => "invalid-request",
            ApiError::RouteNotFound { .. } => "route-not-found",
            ApiError::MethodNotAllowed { .. } => "method-not-allowed",
            ApiError::ShuttingDown => "shutting-down",
            ApiError::Unauthenticated { .. } => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::RateLimited { .. } => "rate-limited",
            ApiError::Admin(e) => match e {
                AdminError::Exists(what, _) if *what == "topic" => "topic-exists",
                AdminError::NotFound(what, _) if *what == "topic" => "topic-not-found",
                AdminError::Exists(..) => "principal-exists",
                AdminError::NotFound(..) => "principal-not-found",
                AdminError::Invalid(_) => "invalid-request",
                AdminError::Meta(_) => "storage-error",
            },
            ApiError::AccessControlDisabled => "access-control-disabled",
            ApiError::TooManyStreams { .. } => "too-many-streams",
            ApiError::GroupsUnavailable => "consumer-groups-unavailable",
            ApiError::Offsets(e) => match e {
                OffsetsError::Meta(_) => "storage-error",
                OffsetsError::Corrupt { .. } => "corrupt-data",
                OffsetsError::InvalidName(_) => "invalid-request",
            },
            ApiError::WebhooksUnavailable => "webhooks-unavailable",
            ApiError::Webhook(e) => match e {
                WebhookError::NotFound(_) => "subscription-not-found",
                WebhookError::UrlRefused(_) => "webhook-url-refused",
                WebhookError::Invalid(_) => "invalid-request",
                WebhookError::Paused(_) => "subscription-paused",
                WebhookError::Limit { .. } => "subscription-limit",
                WebhookError::Store(_) | WebhookError::Meta(_) => "storage-error",
                WebhookError::Corrupt { .. } => "corrupt-data",
                WebhookError::ShuttingDown => "shutting-down",
                WebhookError::Secret(_) | WebhookError::Client(_) => "internal-error",
            },
            ApiError::Maintenance { .. } => "maintenance",
            ApiError::MaintenanceWindow(e) => match e {
                esgf_events_ops::MaintenanceError::Invalid(_) => "invalid-request",
                esgf_events_ops::MaintenanceError::NotAnnounced => "maintenance-not-announced",
                esgf_events_ops::MaintenanceError::TooShortNotice { .. } => "maintenance-notice-too-short",
                esgf_events_ops::MaintenanceError::NotFound(_) => "maintenance-window-not-found",
                esgf_events_ops::MaintenanceError::Meta(_) => "storage-error",
            },
            ApiError::OpsUnavailable(_) => "operations-unavailable",
            ApiError::Recipients(e) => match e {
                esgf_events_ops::recipients::RecipientsError::InvalidAddress(_)
                | esgf_events_ops::recipients::RecipientsError::Invalid(_) => "invalid-request",
                esgf_events_ops::recipients::RecipientsError::NotMember(_) => "recipient-not-found",
                esgf_events_ops::recipients::RecipientsError::BadSignature => "unsubscribe-signature-invalid",
                esgf_events_ops::recipients::RecipientsError::Meta(_) => "storage-error",
                esgf_events_ops::recipients::RecipientsError::CorruptKey => "corrupt-data",
                esgf_events_ops::recipients::RecipientsError::Random(_) => "internal-error",
            },
            ApiError::Announcement(e) => match e {
                esgf_events_ops::announcements::AnnouncementError::Invalid(_) => "invalid-request",
                esgf_events_ops::announcements::AnnouncementError::Meta(_) => "storage-error",
                esgf_events_ops::announcements::AnnouncementError::Corrupt(_) => "corrupt-data",
            },
            ApiError::OpsStorage(_) => "storage-error",
            ApiError::Page(_) => "internal-error",
            ApiError::PublishRefused(refusal) => match refusal {
                esgf_events_catalogue::PublishRefusal::Invalid { .. } => "invalid-event",
                esgf_events_catalogue::PublishRefusal::ReadOnly { .. } => "topic-read-only",
                esgf_events_catalogue::PublishRefusal::Retired { .. } => "topic-retired",
            },
            ApiError::Catalogue(e) => match e {
                esgf_events_catalogue::CatalogueError::Invalid(_) => "invalid-request",
                esgf_events_catalogue::CatalogueError::Meta(_) => "storage-error",
                esgf_events_catalogue::CatalogueError::Corrupt { .. } => "corrupt-data",
            },
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        // Well-formed JSON that the topic's validation policy refuses: the request was understood, its content
        // is not acceptable (the older `invalid-event` refusal of a non-object stays 400).
        if let ApiError::PublishRefused(esgf_events_catalogue::PublishRefusal::Invalid { .. }) = self {
            return StatusCode::UNPROCESSABLE_ENTITY;
        }
        match self.kind() {
            "topic-read-only" | "topic-retired" => StatusCode::CONFLICT,
            "topic-not-found" | "partition-not-found" | "principal-not-found" | "route-not-found" => {
                StatusCode::NOT_FOUND
            }
            "topic-exists" | "principal-exists" => StatusCode::CONFLICT,
            "subscription-not-found" => StatusCode::NOT_FOUND,
            "subscription-paused" | "subscription-limit" => StatusCode::CONFLICT,
            "webhooks-unavailable" | "operations-unavailable" => StatusCode::NOT_IMPLEMENTED,
            "maintenance" => StatusCode::SERVICE_UNAVAILABLE,
            "maintenance-window-not-found" => StatusCode::NOT_FOUND,
            "recipient-not-found" => StatusCode::NOT_FOUND,
            "unsubscribe-signature-invalid" => StatusCode::FORBIDDEN,
            "maintenance-not-announced" | "maintenance-notice-too-short" => StatusCode::CONFLICT,
            "internal-error" => StatusCode::INTERNAL_SERVER_ERROR,
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            "forbidden" => StatusCode::FORBIDDEN,
            "rate-limited" => StatusCode::TOO_MANY_REQUESTS,
            "access-control-disabled" | "consumer-groups-unavailable" => StatusCode::NOT_IMPLEMENTED,
            "offset-out-of-range" => StatusCode::RANGE_NOT_SATISFIABLE,
            "event-too-large" | "batch-too-large" | "body-too-large" => StatusCode::PAYLOAD_TOO_LARGE,
            "unsupported-media-type" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "method-not-allowed" => StatusCode::METHOD_NOT_ALLOWED,
            "corrupt-data" | "storage-error" => StatusCode::INTERNAL_SERVER_ERROR,
            "shutting-down" | "too-many-streams" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// A short, fixed summary per kind (RFC 9457: the title does not change between occurrences).
    fn title(&self) -> &'static str {
        match self.kind() {
            "topic-not-found" => "Topic not found",
            "topic-exists" => "Topic already exists",
            "invalid-topic-name" => "Invalid topic name",
            "partition-not-found" => "Partition not found",
            "offset-out-of-range" => "Offset out of range",
            "malformed-json" => "Malformed JSON",
            "invalid-event" => "Invalid event",
            "event-too-large" => "Event too large",
            "batch-too-large" => "Batch too large",
            "body-too-large" => "Request body too large",
            "unsupported-media-type" => "Unsupported media type",
            "invalid-query" => "Invalid query parameters",
            "route-not-found" => "Not found",
            "method-not-allowed" => "Method not allowed",
            "corrupt-data" => "Corrupt data",
            "storage-error" => "Storage error",
            "shutting-down" => "Shutting down",
            "unauthenticated" => "Authentication required",
            "forbidden" => "Forbidden",
            "rate-limited" => "Rate limit exceeded",
            "principal-exists" => "Principal already exists",
            "principal-not-found" => "Principal not found",
            "access-control-disabled" => "Access control disabled",
            "too-many-streams" => "Too many streams",
            "consumer-groups-unavailable" => "Consumer groups unavailable",
            "subscription-not-found" => "Subscription not found",
            "webhook-url-refused" => "Webhook URL refused",
            "subscription-paused" => "Subscription paused",
            "subscription-limit" => "Too many subscriptions",
            "webhooks-unavailable" => "Webhooks unavailable",
            "internal-error" => "Internal error",
            "maintenance" => "Down for maintenance",
            "maintenance-not-announced" => "Maintenance not announced",
            "maintenance-notice-too-short" => "Too little notice for maintenance",
            "maintenance-window-not-found" => "Maintenance window not found",
            "operations-unavailable" => "Operations endpoints unavailable",
            "recipient-not-found" => "Not a member of the announcement list",
            "unsubscribe-signature-invalid" => "Invalid unsubscribe link",
            "topic-read-only" => "Topic is read-only",
            "topic-retired" => "Topic is retired",
            _ => "Invalid request",
        }
    }

    /// The human explanation. Storage internals (file paths, OS errors) stay in the server log.
    fn detail(&self) -> String {
        match self {
            ApiError::Store(StoreError::Corrupt { .. }) => {
                "stored data failed its integrity check; the details are in the server log".to_owned()
            }
            ApiError::Store(StoreError::Io { .. } | StoreError::Backend(_)) => {
                "the storage backend failed; the details are in the server log".to_owned()
            }
            ApiError::Admin(AdminError::Meta(_))
            | ApiError::Offsets(OffsetsError::Meta(_))
            | ApiError::MaintenanceWindow(esgf_events_ops::MaintenanceError::Meta(_))
            | ApiError::Announcement(esgf_events_ops::announcements::AnnouncementError::Meta(_))
            | ApiError::Recipients(
                esgf_events_ops::recipients::RecipientsError::Meta(_)
                | esgf_events_ops::recipients::RecipientsError::CorruptKey
                | esgf_events_ops::recipients::RecipientsError::Random(_),
            )
            | ApiError::OpsStorage(_)
            | ApiError::Catalogue(
                esgf_events_catalogue::CatalogueError::Meta(_)
                | esgf_events_catalogue::CatalogueError::Corrupt { .. },
            ) => "the state store failed; the details are in the server log".to_owned(),
            ApiError::Offsets(OffsetsError::Corrupt { .. }) => {
                "a stored consumer-group offset failed its check; the details are in the server log"
                    .to_owned()
            }
            ApiError::Webhook(
                WebhookError::Store(_)
                | WebhookError::Meta(_)
                | WebhookError::Corrupt { .. }
                | WebhookError::Secret(_)
                | WebhookError::Client(_),
            ) => "the webhook service failed; the details are in the server log".to_owned(),
            other => other.to_string(),
        }
    }

    /// Extension members: the machine-readable facts a client needs to react without parsing `detail`.
    fn extensions(&self) -> Map<String, Value> {
        let value = match self {
            ApiError::Store(StoreError::TopicNotFound(topic) | StoreError::TopicExists(topic)) => {
                json!({ "topic": topic })
            }
            ApiError::Store(StoreError::InvalidTopicName { name, .. }) => json!({ "topic": name }),
            ApiError::Store(StoreError::PartitionNotFound { topic, partition, partitions }) => {
                json!({ "topic": topic, "partition": partition, "partitions": partitions })
            }
            ApiError::Store(StoreError::OffsetOutOfRange {
                topic,
                partition,
                requested,
                earliest,
                latest,
            }) => {
                json!({
                    "topic": topic,
                    "partition": partition,
                    "requested_offset": requested,
                    "earliest_offset": earliest,
                    "latest_offset": latest,
                })
            }
            ApiError::Store(StoreError::BatchTooLarge { size, max }) => {
                json!({ "size_bytes": size, "max_bytes": max })
            }
            ApiError::MalformedJson { line, column, .. } => json!({ "line": line, "column": column }),
            ApiError::InvalidEvent { index: Some(index), .. } => json!({ "index": index }),
            ApiError::EventTooLarge { index, size, max } => {
                json!({ "index": index, "size_bytes": size, "max_bytes": max })
            }
            ApiError::BatchTooLarge { events, max } => json!({ "events": events, "max_events": max }),
            ApiError::BodyTooLarge { max } => json!({ "max_bytes": max }),
            ApiError::TooManyStreams { max } => json!({ "max_streams": max }),
            ApiError::Webhook(WebhookError::UrlRefused(refused)) => json!({ "rule": refused.rule }),
            ApiError::Webhook(WebhookError::Limit { max, .. }) => json!({ "max_subscriptions": max }),
            ApiError::Webhook(WebhookError::NotFound(id) | WebhookError::Paused(id)) => {
                json!({ "subscription": id })
            }
            ApiError::InvalidQuery { parameters, .. } if !parameters.is_empty() => {
                json!({ "parameters": parameters })
            }
            ApiError::Forbidden(denied) => {
                json!({ "principal": denied.principal, "action": denied.action, "missing": denied.missing })
            }
            ApiError::RateLimited { policy, limited } => json!({
                "policy": policy,
                "retry_after_seconds": whole_seconds(limited.retry_after),
                "limit": limited.limit,
                "remaining": limited.remaining,
            }),
            ApiError::Maintenance { window, .. } => json!({
                "window": window.id,
                "mode": window.mode,
                "starts_at": esgf_events_ops::maintenance::rfc3339(window.starts_at_ms),
                "ends_at": esgf_events_ops::maintenance::rfc3339(window.ends_at_ms),
                "announcement": window.announcement,
            }),
            ApiError::Recipients(esgf_events_ops::recipients::RecipientsError::NotMember(address)) => {
                json!({ "recipient": address })
            }
            ApiError::MaintenanceWindow(esgf_events_ops::MaintenanceError::NotFound(id)) => {
                json!({ "window": id })
            }
            ApiError::Admin(AdminError::Exists(what, name) | AdminError::NotFound(what, name)) => {
                if *what == "topic" { json!({ "topic": name }) } else { json!({ "principal": name }) }
            }
            ApiError::PublishRefused(esgf_events_catalogue::PublishRefusal::Invalid {
                policy,
                violations,
            }) => {
                let errors: Vec<Value> = violations
                    .iter()
                    .map(|v| json!({ "index": v.index, "pointer": v.pointer, "message": v.message }))
                    .collect();
                json!({ "policy": policy.as_str(), "errors": errors })
            }
            ApiError::PublishRefused(
                esgf_events_catalogue::PublishRefusal::ReadOnly { topic, successor }
                | esgf_events_catalogue::PublishRefusal::Retired { topic, successor },
            ) => json!({ "topic": topic, "successor": successor }),
            _ => return Map::new(),
        };
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    /// The problem document, as it goes on the wire: standard members first, then the extension members.
    fn problem(&self) -> Problem {
        let mut extensions = self.extensions();
        // Extension members must never shadow a standard member (RFC 9457 section 3.2).
        extensions.retain(|name, _| !STANDARD_MEMBERS.contains(&name.as_str()));
        Problem {
            type_uri: format!("{PROBLEM_TYPE_PREFIX}{}", self.kind()),
            title: self.title(),
            status: self.status().as_u16(),
            detail: self.detail(),
            extensions,
        }
    }

    /// The problem document as JSON text, for errors that must travel inside another body (a stream's last
    /// event).
    pub(crate) fn problem_json(&self) -> String {
        serde_json::to_string(&self.problem()).unwrap_or_default()
    }

    /// The problem document as a JSON value, for inspection in tests.
    #[cfg(test)]
    pub(crate) fn to_problem(&self) -> Value {
        serde_json::to_value(self.problem()).unwrap_or_default()
    }
}

const STANDARD_MEMBERS: [&str; 5] = ["type", "title", "status", "detail", "instance"];

#[derive(Debug, Serialize)]
struct Problem {
    #[serde(rename = "type")]
    type_uri: String,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(flatten)]
    extensions: Map<String, Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(kind = self.kind(), status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(kind = self.kind(), status = status.as_u16(), error = %self, "request refused");
        }
        // Serializing strings, numbers and a map cannot fail; an empty body would still carry the status.
        let bytes = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (status, bytes).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if matches!(self, ApiError::BodyTooLarge { .. }) {
            close_connection(&mut response);
        }
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthenticated { invalid_token, .. } => {
                // RFC 6750 section 3.1: no error code when no credentials were sent at all.
                let challenge = if *invalid_token {
                    r#"Bearer realm="esgf-events", error="invalid_token""#
                } else {
                    r#"Bearer realm="esgf-events""#
                };
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            }
            ApiError::TooManyStreams { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ApiError::Maintenance { window, now_ms } => {
                let left = u64::try_from(window.ends_at_ms.saturating_sub(*now_ms)).unwrap_or(0);
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(whole_seconds(Duration::from_millis(left))),
                );
                if let Some(link) = window.announcement.as_deref().and_then(announcement_link)
                    && let Ok(value) = HeaderValue::from_str(&link)
                {
                    headers.insert(header::LINK, value);
                }
            }
            ApiError::RateLimited { policy, limited } => {
                esgf_events_ops::metrics::rate_limited(policy);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(whole_seconds(limited.retry_after)));
                // draft-ietf-httpapi-ratelimit-headers: the policy (quota per 1 s window) and what is left of it.
                let policy_header = format!(r#""{policy}";q={};w=1"#, limited.limit);
                let state_header =
                    format!(r#""{policy}";r={};t={}"#, limited.remaining, whole_seconds(limited.reset));
                for (name, value) in [("ratelimit-policy", policy_header), ("ratelimit", state_header)] {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        headers.insert(name, value);
                    }
                }
            }
            _ => {}
        }
        response
    }
}

/// The `Link` header value pointing at a window's announcement: a URL as given, an announcement id as its page.
fn announcement_link(announcement: &str) -> Option<String> {
    let target = if announcement.starts_with("https://") || announcement.starts_with("http://") {
        announcement.to_owned()
    } else if announcement.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        format!("/announcements#announcement-{announcement}")
    } else {
        return None;
    };
    // Angle brackets or quotes would end the link early; such a value is not a link worth sending.
    (!target.contains(['<', '>', '"', ' ']))
        .then(|| format!("<{target}>; rel=\"related\"; title=\"announcement\""))
}

/// Seconds for `Retry-After` and friends: rounded up (retrying early would only be refused again), at least 1.
fn whole_seconds(duration: Duration) -> u64 {
    let whole = duration.as_secs();
    let rounded = if duration.subsec_nanos() > 0 { whole.saturating_add(1) } else { whole };
    rounded.max(1)
}

/// Marks a response sent before the request body was read: the server will not read the rest of it, so the
/// connection cannot be reused, and saying so keeps pooling clients from sending their next request into it.
pub(crate) fn close_connection(response: &mut Response) {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(err: ApiError) -> Value {
        err.to_problem()
    }

    #[test]
    fn problem_type_is_a_urn_of_the_kind() {
        let p = problem(ApiError::Store(StoreError::TopicNotFound("t".into())));
        assert_eq!(p["type"], "urn:esgf-events:problem:topic-not-found");
        assert_eq!(p["status"], 404);
        assert_eq!(p["title"], "Topic not found");
        assert_eq!(p["topic"], "t");
        assert!(p["detail"].as_str().is_some_and(|d| d.contains("'t'")));
    }

    #[test]
    fn store_errors_map_to_their_statuses() {
        let cases = [
            (StoreError::TopicNotFound("t".into()), 404, "topic-not-found"),
            (StoreError::TopicExists("t".into()), 409, "topic-exists"),
            (
                StoreError::InvalidTopicName { name: "a b".into(), reason: "r".into() },
                400,
                "invalid-topic-name",
            ),
            (
                StoreError::PartitionNotFound { topic: "t".into(), partition: 3, partitions: 1 },
                404,
                "partition-not-found",
            ),
            (StoreError::InvalidArgument("x".into()), 400, "invalid-request"),
            (StoreError::BatchTooLarge { size: 10, max: 5 }, 413, "batch-too-large"),
            (
                StoreError::Corrupt { path: "/data/x".into(), position: 7, detail: "crc".into() },
                500,
                "corrupt-data",
            ),
            (
                StoreError::Io { context: "c".into(), source: std::io::Error::other("disk") },
                500,
                "storage-error",
            ),
            (StoreError::Backend("nats down".into()), 500, "storage-error"),
            (StoreError::ShuttingDown, 503, "shutting-down"),
        ];
        for (err, status, kind) in cases {
            let err = ApiError::from(err);
            assert_eq!(err.status().as_u16(), status, "{err}");
            assert_eq!(err.kind(), kind, "{err}");
        }
    }

    #[test]
    fn offset_out_of_range_names_earliest_and_latest() {
        let p = problem(ApiError::Store(StoreError::OffsetOutOfRange {
            topic: "t".into(),
            partition: 0,
            requested: 99,
            earliest: 3,
            latest: 7,
        }));
        assert_eq!(p["status"], 416);
        assert_eq!(p["earliest_offset"], 3);
        assert_eq!(p["latest_offset"], 7);
        assert_eq!(p["requested_offset"], 99);
    }

    #[test]
    fn storage_internals_stay_out_of_the_detail() {
        let p = problem(ApiError::Store(StoreError::Corrupt {
            path: "/secret/data/00000.log".into(),
            position: 7,
            detail: "crc".into(),
        }));
        assert!(!p["detail"].as_str().unwrap_or_default().contains("/secret"));
        let p = problem(ApiError::Store(StoreError::Io {
            context: "writing /secret/x".into(),
            source: std::io::Error::other("EIO"),
        }));
        assert!(!p["detail"].as_str().unwrap_or_default().contains("/secret"));
    }

    #[test]
    fn malformed_json_carries_line_and_column() {
        let err = serde_json::from_slice::<Value>(b"{\n  \"a\": x\n}").unwrap_err();
        let p = problem(ApiError::malformed_json(&err));
        assert_eq!(p["type"], "urn:esgf-events:problem:malformed-json");
        assert_eq!(p["line"], 2);
        assert!(p["column"].as_u64().is_some_and(|c| c > 0));
        assert!(p["detail"].as_str().is_some_and(|d| d.contains("line 2 column")));
    }

    #[test]
    fn size_limits_are_413_with_their_maximum() {
        let p = problem(ApiError::EventTooLarge { index: 4, size: 2_000_000, max: 1_048_576 });
        assert_eq!((p["status"].as_u64(), p["index"].as_u64()), (Some(413), Some(4)));
        assert_eq!(p["max_bytes"], 1_048_576);
        let p = problem(ApiError::BatchTooLarge { events: 10_001, max: 10_000 });
        assert_eq!((p["status"].as_u64(), p["max_events"].as_u64()), (Some(413), Some(10_000)));
        let p = problem(ApiError::BodyTooLarge { max: 32 });
        assert_eq!(p["type"], "urn:esgf-events:problem:body-too-large");
    }

    #[test]
    fn extension_members_never_override_standard_members() {
        // "status" must stay the HTTP status even if an extension ever used the same name.
        let p = problem(ApiError::InvalidQuery { detail: "d".into(), parameters: vec!["x".into()] });
        assert_eq!(p["status"], 400);
        assert_eq!(p["parameters"], json!(["x"]));
    }

    #[test]
    fn standard_members_come_first_on_the_wire() {
        let err = ApiError::BodyTooLarge { max: 5 };
        let text = String::from_utf8(serde_json::to_vec(&err.problem()).expect("serializes")).expect("utf8");
        assert!(text.starts_with(r#"{"type":"urn:esgf-events:problem:body-too-large","title":"#), "{text}");
        assert!(text.ends_with(r#","max_bytes":5}"#), "{text}");
    }

    fn limited(retry_ms: u64) -> RateLimited {
        RateLimited {
            retry_after: Duration::from_millis(retry_ms),
            limit: 100,
            remaining: 3,
            reset: Duration::from_millis(2500),
        }
    }

    #[test]
    fn retry_after_is_rounded_up_to_whole_seconds_and_never_zero() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn rate_limited_is_429_with_retry_after_and_ratelimit_headers() {
        let response = ApiError::RateLimited { policy: "publish", limited: limited(1200) }.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let headers = response.headers();
        assert_eq!(headers[header::RETRY_AFTER], "2");
        assert_eq!(headers["ratelimit-policy"], r#""publish";q=100;w=1"#);
        assert_eq!(headers["ratelimit"], r#""publish";r=3;t=3"#);
        let p = problem(ApiError::RateLimited { policy: "publish", limited: limited(1200) });
        assert_eq!(p["type"], "urn:esgf-events:problem:rate-limited");
        assert_eq!((p["retry_after_seconds"].as_u64(), p["limit"].as_u64()), (Some(2), Some(100)));
    }

    #[test]
    fn unauthenticated_challenges_with_invalid_token_only_when_credentials_were_sent() {
        let response = ApiError::Unauthenticated { detail: "d".into(), invalid_token: true }.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="esgf-events", error="invalid_token""#
        );
        let response = ApiError::Unauthenticated { detail: "d".into(), invalid_token: false }.into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], r#"Bearer realm="esgf-events""#);
    }

    #[test]
    fn auth_errors_never_carry_more_than_their_message() {
        let p = problem(ApiError::invalid_credentials(&AuthError::Expired));
        assert_eq!((p["status"].as_u64(), p["detail"].as_str()), (Some(401), Some("the token has expired")));
    }

    #[test]
    fn forbidden_names_the_missing_grant() {
        let p = problem(ApiError::Forbidden(Denied {
            principal: "cmip7".into(),
            action: "read topic 't'".into(),
            missing: "a read grant on topic 't'".into(),
        }));
        assert_eq!(p["status"], 403);
        assert_eq!(p["type"], "urn:esgf-events:problem:forbidden");
        assert_eq!(p["missing"], "a read grant on topic 't'");
        assert!(p["detail"].as_str().is_some_and(|d| d.contains("a read grant on topic 't'")));
    }

    #[test]
    fn admin_errors_map_to_their_statuses() {
        let cases = [
            (AdminError::Exists("producer", "p".into()), 409, "principal-exists"),
            (AdminError::NotFound("consumer", "c".into()), 404, "principal-not-found"),
            (AdminError::Invalid("bad name".into()), 400, "invalid-request"),
            (
                AdminError::Meta(esgf_events_meta::MetaError::Storage {
                    context: "writing",
                    detail: "/secret/meta.redb: EIO".into(),
                }),
                500,
                "storage-error",
            ),
        ];
        for (err, status, kind) in cases {
            let err = ApiError::from(err);
            assert_eq!((err.status().as_u16(), err.kind()), (status, kind), "{err}");
            assert!(!err.to_problem()["detail"].as_str().unwrap_or_default().contains("/secret"));
        }
        let p = problem(ApiError::Admin(AdminError::NotFound("producer", "p".into())));
        assert_eq!(p["principal"], "p");
    }

    #[test]
    fn response_has_problem_json_content_type() {
        let response = ApiError::RouteNotFound { path: "/nope".into() }.into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
