//! The four ways access control says no, each mapping to one transport outcome: [`AuthError`] (401 / SASL
//! failure), [`Denied`] (403 / authorization failure), [`RateLimited`] (429 / throttling) and [`AdminError`]
//! (the operator API). No message ever contains a secret.

use std::time::Duration;

/// Authentication failed. -> 401 on HTTP, SASL_AUTHENTICATION_FAILED on Kafka.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials were presented")]
    Missing,
    /// The detail never includes the secret.
    #[error("the credentials are not valid: {0}")]
    Invalid(String),
    #[error("the token has expired")]
    Expired,
}

/// Authorization failed. -> 403 on HTTP, *_AUTHORIZATION_FAILED on Kafka.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{principal} may not {action}: {missing}")]
pub struct Denied {
    /// The principal's name, or "anonymous".
    pub principal: String,
    pub action: String,
    /// Exactly what grant would allow it, e.g. "a publish grant on topic 'esgf2.publications'".
    pub missing: String,
}

/// Over a rate limit. -> 429 with `Retry-After` and `RateLimit` headers on HTTP, THROTTLING_QUOTA_EXCEEDED plus a
/// throttle time on Kafka.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limit exceeded: retry after {retry_after:?}")]
pub struct RateLimited {
    /// When the refused request would fit.
    pub retry_after: Duration,
    /// The bucket's capacity (its burst) in the unit of the bucket that refused (events, or bytes saturated to
    /// `u32::MAX`).
    pub limit: u32,
    /// What the refusing bucket holds now.
    pub remaining: u32,
    /// When the refusing bucket is full again.
    pub reset: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0} '{1}' already exists")]
    Exists(&'static str, String),
    #[error("{0} '{1}' does not exist")]
    NotFound(&'static str, String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Meta(#[from] esgf_events_meta::MetaError),
}

/// Using a consumer group failed. -> 403 / GROUP_AUTHORIZATION_FAILED when denied, 500 / a retriable code when
/// the state store failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupAccessError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Store(#[from] AdminError),
}
