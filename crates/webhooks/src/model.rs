//! The public vocabulary: configuration, what a subscriber asks for, what the API shows, errors.

use std::net::SocketAddr;
use std::time::Duration;

use esgf_events_engine::StoreError;
use esgf_events_meta::MetaError;
use serde::{Deserialize, Serialize};

use crate::signing::{SecretError, WebhookSecret};
use crate::url_rules::UrlRefused;

/// Delivery settings. [`WebhookConfig::default`] holds the defaults, in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// One delivery attempt, connecting and reading the response included.
    pub timeout: Duration,
    /// Attempts per event before it becomes a dead letter.
    pub max_attempts: u32,
    /// How long after its first attempt an event may still be retried before it becomes a dead letter.
    pub max_age: Duration,
    /// Host patterns a webhook URL must match (empty: any host); see [`crate::UrlPolicy`].
    pub allow: Vec<String>,
    /// Host patterns a webhook URL must not match.
    pub deny: Vec<String>,
    /// The service's own listen addresses, which webhooks may never call.
    pub own_addresses: Vec<SocketAddr>,
    /// Subscriptions one principal may hold (operators included: each one is a task and a connection).
    pub max_subscriptions_per_owner: usize,
    /// Dead letters one subscription may hold; when full, its delivery waits (failing) until some are redriven
    /// or it is deleted, rather than dropping events.
    pub max_dead_letters: usize,
    /// Bound of the first retry's wait; it doubles per failure up to `backoff_cap` (full jitter below it).
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Idle connections kept per receiving host.
    pub pool_idle_per_host: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            timeout: Duration::from_secs(10),
            max_attempts: 8,
            max_age: Duration::from_secs(24 * 3600),
            allow: Vec::new(),
            deny: Vec::new(),
            own_addresses: Vec::new(),
            max_subscriptions_per_owner: 100,
            max_dead_letters: 10_000,
            backoff_base: crate::backoff::BASE,
            backoff_cap: crate::backoff::CAP,
            pool_idle_per_host: 4,
        }
    }
}

/// What a delivery's body is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The event's JSON exactly as published (`application/json`).
    #[default]
    Raw,
    /// The event as a structured-mode CloudEvent (`application/cloudevents+json`).
    CloudEvents,
}

/// `POST /v1/subscriptions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    pub topic: String,
    pub url: String,
    /// `"path:value"` conditions, all of which an event must meet.
    #[serde(default)]
    pub filter: Vec<String>,
    /// Only records whose key starts with this.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// `"beginning"`, `"latest"` (default) or an RFC 3339 time.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub format: Option<Format>,
}

/// Where a new subscription starts, per partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Beginning,
    Latest,
    /// The first record at or after this time (milliseconds since the Unix epoch).
    Time(i64),
}

impl StartFrom {
    pub fn parse(text: &str) -> Result<StartFrom, String> {
        match text {
            "beginning" => Ok(StartFrom::Beginning),
            "latest" => Ok(StartFrom::Latest),
            other => chrono::DateTime::parse_from_rfc3339(other)
                .map(|t| StartFrom::Time(t.timestamp_millis()))
                .map_err(|e| {
                    format!(
                        "'from' must be \"beginning\", \"latest\" or an RFC 3339 time, not {other:?} ({e})"
                    )
                }),
        }
    }
}

/// What a subscription is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Delivering, or waiting for events.
    Active,
    /// Stopped by its owner or an operator.
    Paused,
    /// Retrying a failed delivery now (or waiting on a condition named in `last_error`).
    Failing,
}

/// The last failure of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorInfo {
    /// RFC 3339.
    pub time: String,
    /// The event it concerned, if any.
    pub webhook_id: Option<String>,
    /// Which attempt failed (0 when no delivery was involved).
    pub attempt: u32,
    pub message: String,
}

/// The last successful delivery of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryInfo {
    pub time: String,
    pub webhook_id: String,
    pub status: u16,
    pub attempts: u32,
}

/// Delivery progress in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionProgress {
    pub partition: u32,
    /// The next offset to deliver.
    pub cursor: u64,
    /// The partition's next offset to be written.
    pub latest: u64,
    pub lag: u64,
}

/// A subscription as the API shows it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionView {
    pub id: String,
    pub owner: String,
    pub topic: String,
    pub url: String,
    pub filter: Vec<String>,
    pub key_prefix: Option<String>,
    pub format: Format,
    pub from: String,
    /// RFC 3339.
    pub created: String,
    pub state: State,
    pub last_error: Option<ErrorInfo>,
    pub last_delivery: Option<DeliveryInfo>,
    pub partitions: Vec<PartitionProgress>,
    /// Records not yet delivered, over all partitions (filtered-out ones included until passed).
    pub lag: u64,
    pub dead_letters: usize,
    /// A redrive is queued or running.
    pub redriving: bool,
}

/// A new subscription and its secret, shown this once.
#[derive(Debug)]
pub struct Created {
    pub subscription: SubscriptionView,
    pub secret: WebhookSecret,
}

/// An event given up on, kept for a redrive. The event itself stays in the log; this refers to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Order of arrival in this subscription's list (1, 2, 3, ...).
    pub seq: u64,
    pub partition: u32,
    pub offset: u64,
    pub webhook_id: String,
    /// RFC 3339.
    pub failed_at: String,
    pub attempts: u32,
    pub last_error: String,
}

/// Everything a subscription operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("subscription '{0}' does not exist")]
    NotFound(String),
    #[error(transparent)]
    UrlRefused(#[from] UrlRefused),
    #[error("invalid subscription: {0}")]
    Invalid(String),
    #[error("subscription '{0}' is paused: resume it first")]
    Paused(String),
    #[error("'{owner}' already has {max} subscriptions, the most one principal may hold")]
    Limit { owner: String, max: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("stored webhook state '{key}' is unreadable: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("the webhook dispatcher is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_accepts_beginning_latest_and_rfc3339() {
        assert_eq!(StartFrom::parse("beginning"), Ok(StartFrom::Beginning));
        assert_eq!(StartFrom::parse("latest"), Ok(StartFrom::Latest));
        assert_eq!(StartFrom::parse("1970-01-01T00:00:01.5Z"), Ok(StartFrom::Time(1500)));
        assert!(StartFrom::parse("yesterday").is_err());
        assert!(StartFrom::parse("Beginning").is_err());
    }

    #[test]
    fn format_spellings_are_raw_and_cloudevents() {
        assert_eq!(serde_json::to_string(&Format::CloudEvents).expect("json"), "\"cloudevents\"");
        assert_eq!(serde_json::from_str::<Format>("\"raw\"").expect("json"), Format::Raw);
    }

    #[test]
    fn new_subscription_rejects_unknown_fields() {
        let err = serde_json::from_str::<NewSubscription>(r#"{"topic":"t","url":"http://x","secret":"s"}"#)
            .expect_err("unknown field");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
