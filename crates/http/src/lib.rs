//! The HTTP API of the ESGF Event Service: topics, publishing and reading events, health probes.
//!
//! Everything here sits on the engine's [`LogStore`] trait, so any storage backend can serve it. Routes:
//!
//! | Method | Path                        | Purpose                                              |
//! |--------|-----------------------------|------------------------------------------------------|
//! | POST   | `/v1/topics`                | create a topic                                       |
//! | GET    | `/v1/topics`                | list topics with their offsets                       |
//! | GET    | `/v1/topics/{topic}`        | describe one topic                                   |
//! | POST   | `/v1/topics/{topic}/events` | publish one event (object) or a batch (array)        |
//! | GET    | `/v1/topics/{topic}/events` | read from a partition, optionally long-polling       |
//! | GET    | `/healthz`, `/readyz`       | liveness, readiness (503 once shutdown has begun)    |
//!
//! Every error is an RFC 9457 `application/problem+json` document whose `type` is a stable URN
//! (`urn:esgf-events:problem:<kind>`); see `error.rs`, the only place errors become responses.
//!
//! Every resource a client can make the server hold is bounded by [`HttpConfig`]: body and event sizes, events
//! per batch, records per read, long-poll duration and accepted connections.

mod body;
mod error;
mod events;
mod health;
mod listener;
mod partitioner;
mod topics;

#[cfg(test)]
mod api_tests;
#[cfg(test)]
mod test_store;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{Method, Uri};
use axum::routing::get;
use axum::serve::ListenerExt;
use esgf_events_engine::{LogStore, Retention};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::trace::TraceLayer;

pub use partitioner::{murmur2, partition_for_key};

use crate::error::ApiError;
use crate::listener::LimitedListener;

/// Limits and defaults of the HTTP API. [`HttpConfig::default`] holds the defaults, in one place.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest single event (its JSON bytes), in a batch or alone.
    pub max_event_bytes: usize,
    /// Most events one publish request may carry.
    pub max_batch_events: usize,
    /// Largest request body; also the byte budget of one read response (at least one record is always returned).
    pub max_body_bytes: usize,
    /// Longest long-poll (`wait=`) a reader may ask for.
    pub max_wait: Duration,
    /// Most events one read may ask for (`limit=`).
    pub max_read_limit: usize,
    /// Accepted TCP connections served at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Retention of a topic created without one.
    pub default_retention: Retention,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_event_bytes: 1 << 20,
            max_batch_events: 10_000,
            max_body_bytes: 32 << 20,
            max_wait: Duration::from_secs(30),
            max_read_limit: 1000,
            max_connections: 10_000,
            default_retention: Retention::DEFAULT,
        }
    }
}

/// Records per read when the client names no `limit`.
pub(crate) const DEFAULT_READ_LIMIT: usize = 100;

/// Whether shutdown has begun; a watch channel rather than a bare flag so long-polls can wake up on it.
#[derive(Debug)]
pub(crate) struct Shutdown(watch::Sender<bool>);

impl Shutdown {
    fn new() -> Self {
        Shutdown(watch::Sender::new(false))
    }

    pub(crate) fn begin(&self) {
        self.0.send_replace(true);
    }

    pub(crate) fn has_begun(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown has begun (immediately if it already has).
    pub(crate) async fn begun(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in the state this borrows, so the channel cannot close while we wait.
        let _ = rx.wait_for(|begun| *begun).await;
    }
}

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) store: Arc<dyn LogStore>,
    pub(crate) config: HttpConfig,
    pub(crate) shutdown: Shutdown,
    /// Picks the partition of unkeyed publish requests, round-robin.
    round_robin: AtomicU32,
}

impl AppState {
    fn new(store: Arc<dyn LogStore>, config: HttpConfig) -> Self {
        AppState { store, config, shutdown: Shutdown::new(), round_robin: AtomicU32::new(0) }
    }

    pub(crate) fn next_round_robin(&self, partitions: u32) -> u32 {
        self.round_robin.fetch_add(1, Ordering::Relaxed) % partitions.max(1)
    }
}

pub(crate) type SharedState = Arc<AppState>;

/// The API's routes over `store`. Readiness stays "ready" for the router's whole life; use [`run`] to get a
/// server whose `/readyz` turns 503 on shutdown.
pub fn router(store: Arc<dyn LogStore>, config: HttpConfig) -> Router {
    build_router(Arc::new(AppState::new(store, config)))
}

fn build_router(state: SharedState) -> Router {
    Router::new()
        .route("/v1/topics", get(topics::list).post(topics::create))
        .route("/v1/topics/{topic}", get(topics::describe))
        .route("/v1/topics/{topic}/events", get(events::read).post(events::publish))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(route_not_found)
        // Must come after the routes: it applies to the routes registered so far.
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(TraceLayer::new_for_http())
}

async fn route_not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound { path: uri.path().to_owned() }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_owned() }
}

/// Serves until `shutdown` resolves: then stops accepting, lets in-flight requests finish, returns.
///
/// Once `shutdown` resolves, `/readyz` answers 503 and pending long-polls return what they have at once, so
/// draining is not held up by `wait=`. Closing the store is the caller's job, after this returns.
pub async fn run(
    listener: TcpListener,
    store: Arc<dyn LogStore>,
    config: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    let max_connections = config.max_connections;
    let state = Arc::new(AppState::new(store, config));
    let app = build_router(Arc::clone(&state));

    let listener = LimitedListener::new(
        listener.tap_io(|stream| {
            // Small request/response exchanges: Nagle would add up to 40 ms of delay per response.
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(error = %err, "could not set TCP_NODELAY on an accepted connection");
            }
        }),
        max_connections,
    );

    tracing::debug!(%address, max_connections, "HTTP API serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("HTTP API shutting down: no new connections, finishing in-flight requests");
            state.shutdown.begin();
        })
        .await?;
    tracing::info!("HTTP API stopped");
    Ok(())
}
