//! The HTTP API of the ESGF Event Service: topics, publishing and reading events, producer and consumer
//! administration, the audit log, health probes; with access control and optional TLS.
//!
//! Everything here sits on the engine's [`LogStore`] trait, so any storage backend can serve it, and on the
//! shared [`Auth`] service, so HTTP and the other endpoints apply the same rules. Routes (the table itself is
//! [`ROUTES`], from which the router is built):
//!
//! | Method | Path                                      | Purpose                                         | Access   |
//! |--------|-------------------------------------------|-------------------------------------------------|----------|
//! | GET    | `/healthz`, `/readyz`                     | liveness, readiness (503 once shutdown began)   | probe    |
//! | GET    | `/v1/topics`, `/v1/topics/{topic}`        | list / describe topics (with `public`)          | public   |
//! | POST   | `/v1/topics`                              | create a topic                                  | operator |
//! | PATCH  | `/v1/topics/{topic}`                      | change `public`, retention, catalogue settings  | operator |
//! | GET    | `/topics`                                 | the topic catalogue as plain HTML               | public   |
//! | POST   | `/v1/topics/{topic}/events`               | publish one event (object) or a batch (array)   | publish  |
//! | GET    | `/v1/topics/{topic}/events`               | read a partition, optionally long-polling       | read     |
//! | GET    | `/v1/topics/{topic}/stream`               | follow a topic: server-sent events, resumable   | read     |
//! | PUT    | `/v1/groups/{group}/offsets`              | commit a consumer group's offsets               | group    |
//! | GET    | `/v1/groups/{group}`                      | a group's committed offsets and lag             | group    |
//! | POST   | `/v1/producers`, `/v1/consumers`          | register; the answer shows the token once       | operator |
//! | GET    | `/v1/producers`, `/v1/consumers`          | list (never secrets)                            | operator |
//! | GET    | `/v1/{producers,consumers}/{name}`        | show one                                        | operator |
//! | PATCH  | `/v1/{producers,consumers}/{name}`        | change topics, rate, contact, OIDC identities   | operator |
//! | POST   | `/v1/{producers,consumers}/{name}/rotate` | new token (shown once)                          | operator |
//! | DELETE | `/v1/{producers,consumers}/{name}`        | revoke (deletes the principal)                  | operator |
//! | GET    | `/v1/audit?after=N&limit=M`               | audit log page, `{"entries", "next"}`           | operator |
//! | *      | `/v1/subscriptions[/{id}[/...]]`          | webhook subscriptions (`subscriptions.rs`)      | owner    |
//! | GET    | `/metrics`                                | Prometheus text (`ops.rs`)                      | public   |
//! | GET    | `/v1/maintenance`                         | maintenance windows not yet over                | public   |
//! | POST   | `/v1/maintenance`                         | schedule a window (notice, announcement)        | operator |
//! | PATCH  | `/v1/maintenance/{window}`                | change a window                                 | operator |
//! | DELETE | `/v1/maintenance/{window}`                | cancel a window                                 | operator |
//! | POST   | `/v1/announcements`                       | publish an announcement                         | operator |
//! | GET    | `/v1/announcements/deliveries`            | announcement mail, per recipient                | operator |
//! | GET    | `/v1/announcements/recipients`            | the mailing list, each address's sources        | operator |
//! | POST   | `/v1/announcements/recipients`            | add a member (201; 200 if already one)          | operator |
//! | DELETE | `/v1/announcements/recipients/{address}`  | remove a member                                 | operator |
//! | GET    | `/v1/announcements/unsubscribe?address&sig` | page with an unsubscribe button (no change)   | public   |
//! | POST   | `/v1/announcements/unsubscribe?address&sig` | RFC 8058 one-click unsubscribe (signed link)  | public   |
//! | GET    | `/v1/announcements`, `/announcements[.atom]` | announcements as JSON, HTML, Atom            | public   |
//! | GET    | `/v1/changelog`, `/changelog[.atom]`      | the changelog as JSON, HTML, Atom               | public   |
//! | GET    | `/v1/status`, `/status`                   | state, uptime, incidents, rates, lag (`status.rs`) | public |
//! | POST   | `/v1/incidents`                           | record an outage (the downtime monitor)         | operator |
//! | GET    | `/v1/incidents`                           | outages with durations, mean and max RTO        | public   |
//! | GET    | `/v1/cluster`                             | live service nodes and each lease's owner (`cluster.rs`) | operator |
//! | GET    | `/`                                       | home page: what this is, links, current state   | public   |
//! | GET    | `/openapi.json`                           | OpenAPI 3.1, generated from the table (`openapi.rs`) | public |
//!
//! **Maintenance** (`ops.rs`): while a window is active, its guard answers 503 `maintenance` (writes only in a
//! `read-only` window; everything but probes and the operations routes in a `full` one).
//!
//! **Access control** (`access.rs`): `Authorization: Bearer <token>` carries an API token or an OIDC JWT; no
//! header means anonymous. Refused credentials answer 401 `unauthenticated` (with `WWW-Authenticate`) and are
//! audited as `auth.failure` with the remote address; an anonymous call to a route that needs a principal is 401
//! too, an authenticated caller without the grant 403 `forbidden` naming the missing grant. Anonymous calls are
//! rate-limited per IP, publishes per producer (429 `rate-limited` with `Retry-After` and the IETF `RateLimit`
//! headers; a refused batch appends nothing). A server built with `auth: None` has no access control at all: for
//! in-process tests and benchmarks only. Consumer groups ("group" above) need a principal with a read grant on
//! every topic involved, and the group must be the caller's: it belongs to whoever used it first (operators
//! may use any group); their offsets are the ones the Kafka endpoint commits too.
//!
//! **Following a topic** (`stream.rs`): server-sent events whose ids are self-contained cursors (`cursor.rs`),
//! so `Last-Event-ID` resumes exactly after the last event seen, across restarts; each stream reads the log
//! itself into a small bounded queue, so a slow client stalls only its own reader, while followers of a
//! partition share the records they read near its end (`tail.rs`). Reads and streams accept
//! server-side filters and CloudEvents output (the `esgf_events_envelope` crate).
//!
//! Every error is an RFC 9457 `application/problem+json` document whose `type` is a stable URN
//! (`urn:esgf-events:problem:<kind>`); see `error.rs`, the only place errors become responses.
//!
//! Every resource a client can make the server hold is bounded by [`HttpConfig`] and a few constants: body and
//! event sizes, events per batch, records per read, long-poll duration, accepted connections (TLS handshakes
//! included) and the TLS handshake time.

mod access;
mod admin;
mod body;
mod cluster;
mod cursor;
mod error;
mod events;
mod groups;
mod health;
mod lifecycle;
mod listener;
mod openapi;
mod ops;
mod partitioner;
mod recipients;
mod routes;
mod status;
mod stream;
mod subscriptions;
mod tail;
mod tls;
mod topics;

#[cfg(test)]
mod api_tests;
#[cfg(test)]
mod catalogue_tests;
#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod test_store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{Method, Uri};
use axum::serve::ListenerExt;
use esgf_events_auth::Auth;
use esgf_events_engine::{LogStore, Retention};
use esgf_events_meta::offsets::GroupOffsets;
use esgf_events_webhooks::SubscriptionControl;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower_http::trace::TraceLayer;

pub use cluster::Cluster;
pub use partitioner::{murmur2, partition_for_key};
pub use routes::{Access, ROUTES, RouteSpec};
pub use subscriptions::webhook_access;
pub use tls::{TlsError, load_tls};

use crate::error::ApiError;
use crate::listener::{LimitedListener, connection_permits};

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
    /// How often an idle event stream sends a `: keep-alive` comment, so proxies and clients keep it open.
    pub stream_heartbeat: Duration,
    /// Event streams served at once; one more is refused with 503 `too-many-streams`.
    pub max_streams: usize,
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
            stream_heartbeat: Duration::from_secs(15),
            max_streams: 10_000,
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

/// Everything a server is made of.
#[derive(Clone)]
pub struct Server {
    pub store: Arc<dyn LogStore>,
    /// `None`: no access control at all (in-process tests and benchmarks only; the binary always passes `Some`).
    pub auth: Option<Arc<Auth>>,
    pub config: HttpConfig,
    /// `Some`: every connection is TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Committed consumer-group offsets (shared with the Kafka endpoint). `None`: requests naming a group are
    /// refused with 501 `consumer-groups-unavailable`.
    pub offsets: Option<GroupOffsets>,
    /// The webhook dispatcher. `None`: subscription requests are refused with 501 `webhooks-unavailable`.
    pub webhooks: Option<Arc<dyn SubscriptionControl>>,
    /// Metrics and maintenance windows (`ops.rs`); the default has neither.
    pub ops: esgf_events_ops::Ops,
    /// The topic catalogue (validation, discovery metadata, lifecycle, idempotent publish). `None`: every topic
    /// is active and unvalidated, and catalogue settings in requests are refused.
    pub catalogue: Option<Arc<esgf_events_catalogue::Catalogue>>,
    /// Service nodes and leases, for `GET /v1/cluster`; `None`: it answers 501.
    pub cluster: Option<Cluster>,
}

impl Server {
    /// A server on `store` with none of the optional parts: no access control (in-process tests and
    /// benchmarks only), TLS, consumer groups, webhooks, operations, catalogue or cluster view. Add parts with
    /// `Server { ops, ..Server::new(store, config) }`.
    pub fn new(store: Arc<dyn LogStore>, config: HttpConfig) -> Server {
        Server {
            store,
            auth: None,
            config,
            tls: None,
            offsets: None,
            webhooks: None,
            ops: Default::default(),
            catalogue: None,
            cluster: None,
        }
    }
}

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) store: Arc<dyn LogStore>,
    pub(crate) auth: Option<Arc<Auth>>,
    pub(crate) config: HttpConfig,
    pub(crate) shutdown: Shutdown,
    /// Picks the partition of unkeyed publish requests, round-robin.
    round_robin: AtomicU32,
    pub(crate) offsets: Option<GroupOffsets>,
    pub(crate) webhooks: Option<Arc<dyn SubscriptionControl>>,
    /// One permit per event stream being served.
    pub(crate) streams: Arc<Semaphore>,
    /// The recent records of followed partitions, shared by their streams.
    pub(crate) tails: tail::Tails,
    pub(crate) ops: esgf_events_ops::Ops,
    /// Served over TLS: absolute links built from the `Host` header say `https`.
    pub(crate) tls: bool,
    pub(crate) catalogue: Option<Arc<esgf_events_catalogue::Catalogue>>,
    pub(crate) cluster: Option<Cluster>,
}

impl AppState {
    fn new(store: Arc<dyn LogStore>, auth: Option<Arc<Auth>>, config: HttpConfig) -> Self {
        let streams = Arc::new(Semaphore::new(config.max_streams.min(Semaphore::MAX_PERMITS)));
        AppState {
            store,
            auth,
            config,
            shutdown: Shutdown::new(),
            round_robin: AtomicU32::new(0),
            offsets: None,
            webhooks: None,
            streams,
            tails: tail::Tails::default(),
            ops: esgf_events_ops::Ops::default(),
            tls: false,
            catalogue: None,
            cluster: None,
        }
    }

    fn of(server: &Server) -> Self {
        let mut state = AppState::new(Arc::clone(&server.store), server.auth.clone(), server.config.clone());
        state.offsets = server.offsets.clone();
        state.webhooks = server.webhooks.clone();
        state.ops = server.ops.clone();
        state.tls = server.tls.is_some();
        state.catalogue = server.catalogue.clone();
        state.cluster = server.cluster.clone();
        state
    }

    pub(crate) fn next_round_robin(&self, partitions: u32) -> u32 {
        self.round_robin.fetch_add(1, Ordering::Relaxed) % partitions.max(1)
    }
}

pub(crate) type SharedState = Arc<AppState>;

/// The API's routes over `server` (its `tls` is not used: that is the listener's business). Readiness stays
/// "ready" for the router's whole life; use [`serve`] to get a server whose `/readyz` turns 503 on shutdown.
///
/// Handlers read the client address from [`axum::extract::ConnectInfo`]`<SocketAddr>` when present (audit
/// entries, per-IP limits); [`serve`] always provides it, in-process callers may set it as a request extension.
pub fn app(server: &Server) -> Router {
    build_router(Arc::new(AppState::of(server)))
}

/// [`app`] without access control.
pub fn router(store: Arc<dyn LogStore>, config: HttpConfig) -> Router {
    app(&Server::new(store, config))
}

fn build_router(state: SharedState) -> Router {
    let lifecycle = axum::middleware::from_fn_with_state(Arc::clone(&state), lifecycle::headers);
    routes::build_routes(&state)
        .fallback(route_not_found)
        // Must come after the routes: it applies to the routes registered so far.
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(lifecycle)
        .layer(axum::middleware::from_fn(ops::track))
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
/// With `server.tls`, every connection is TLS: handshakes run concurrently, each within a deadline, never
/// blocking the accept loop. Once `shutdown` resolves, `/readyz` answers 503 and pending long-polls return what
/// they have at once, so draining is not held up by `wait=`. Closing the store is the caller's job, after this
/// returns.
pub async fn serve(
    listener: TcpListener,
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    let max_connections = server.config.max_connections;
    let state = Arc::new(AppState::of(&server));
    let app = build_router(Arc::clone(&state)).into_make_service_with_connect_info::<SocketAddr>();
    let signal = async move {
        shutdown.await;
        tracing::info!("HTTP API shutting down: no new connections, finishing in-flight requests");
        state.shutdown.begin();
    };

    // Each listener ends in `tap_io` because axum provides the client address (`ConnectInfo`) for `TapIo`
    // listeners (and bare `TcpListener`s) only.
    match server.tls {
        Some(tls) => {
            let listener = tls::tls_listener(listener, tls, connection_permits(max_connections))?;
            tracing::debug!(%address, max_connections, "HTTP API serving over TLS");
            axum::serve(listener.tap_io(|_| {}), app).with_graceful_shutdown(signal).await?;
        }
        None => {
            let listener = LimitedListener::new(listener, max_connections).tap_io(|connection| {
                // Small request/response exchanges: Nagle would add up to 40 ms of delay per response.
                if let Err(err) = connection.get_ref().set_nodelay(true) {
                    tracing::debug!(error = %err, "could not set TCP_NODELAY on an accepted connection");
                }
            });
            tracing::debug!(%address, max_connections, "HTTP API serving");
            axum::serve(listener, app).with_graceful_shutdown(signal).await?;
        }
    }
    tracing::info!("HTTP API stopped");
    Ok(())
}

/// [`serve`] without access control or TLS.
pub async fn run(
    listener: TcpListener,
    store: Arc<dyn LogStore>,
    config: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let server = Server {
        store,
        auth: None,
        config,
        tls: None,
        offsets: None,
        webhooks: None,
        ops: Default::default(),
        catalogue: None,
        cluster: None,
    };
    serve(listener, server, shutdown).await
}
