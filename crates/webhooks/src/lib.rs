//! Webhook subscriptions of the ESGF Event Service: a consumer registers a URL for a topic (optionally
//! filtered) and the service POSTs every selected event to it, signed per the Standard Webhooks specification.
//!
//! - [`Dispatcher`]: one delivery task per active subscription; ordered per partition, at least once, retried
//!   with exponential backoff and full jitter (or the receiver's `Retry-After`), dead-lettered after
//!   `max_attempts` / `max_age`, redriven on request. The HTTP API drives it through [`SubscriptionControl`].
//! - [`WebhookSecret`]: `whsec_` secrets and `webhook-signature` values ([`signing`]).
//! - [`UrlPolicy`]: which URLs are acceptable (the operator's allow and deny lists, never the service itself).
//! - [`backoff`]: retry delays and `Retry-After` parsing.
//!
//! State (subscriptions with their secrets, cursors, dead letters) lives in the service's
//! [`MetaStore`](esgf_events_meta::MetaStore); see `persist.rs` for the layout. Events are read from the
//! [`LogStore`](esgf_events_engine::LogStore), so any storage backend serves webhooks too.

pub mod backoff;
mod delivery;
mod dispatcher;
mod model;
mod persist;
pub mod signing;
mod url_rules;

pub use delivery::MAX_RESPONSE_BYTES;
pub use dispatcher::{AccessCheck, AllowAll, COMMIT_EVERY, COMMIT_INTERVAL, Dispatcher, SubscriptionControl};
pub use model::{
    Created, DeadLetter, DeliveryInfo, ErrorInfo, Format, NewSubscription, PartitionProgress, StartFrom,
    State, SubscriptionView, WebhookConfig, WebhookError,
};
pub use signing::{SECRET_PREFIX, SecretError, WebhookSecret};
pub use url_rules::{UrlPolicy, UrlRefused};
