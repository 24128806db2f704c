//! `esgf-events serve`: the HTTP API over the embedded log (or NATS JetStream), with its lifecycle.
//!
//! Storage: `storage.backend = "embedded"` keeps the log and the state store in `storage.data_dir`. With NATS
//! URLs instead, the server connects once and keeps both in the JetStream cluster ([`esgf_events_nats`]), so a
//! service node holds no state of its own and several can serve the same topics; the data directory then only
//! holds a generated `operator.token`. Everything above storage takes the same trait objects either way.
//!
//! Start-up: install logging (text or JSON, to stderr), load the TLS certificate if one is configured (before
//! anything slow, so a bad file fails at once), open the log (crash recovery happens here, on a blocking thread),
//! open the state store (`<data_dir>/state.redb`) and access control on it, make sure an operator credential
//! exists, bind the listener, then log exactly one `listening` event whose `http_addr` field is the bound
//! address (tests bind port 0 and read it from there). A retention pass runs right after start-up (in the
//! background, so it never delays readiness) and then every `storage.retention_check_interval`.
//!
//! With `kafka.addr` set (`--kafka-addr`), the Kafka protocol endpoint ([`esgf_events_kafka`]) serves the same
//! log, access control and TLS there, and logs its own `listening` event with a `kafka_addr` field; it stops
//! accepting when shutdown begins and finishes within its own short grace.
//!
//! Access control is always on. The operator credential is `ESGF_EVENTS_OPERATOR_TOKEN` when set; otherwise, on
//! first start, a token is generated into `<data_dir>/operator.token` (mode 0600) and the file's path, never the
//! token, is logged. Plain HTTP on a non-loopback address draws a warning: tokens and events would travel in
//! clear text.
//!
//! Shutdown, on SIGINT or SIGTERM:
//! 1. the listener stops accepting connections and `/readyz` turns 503;
//! 2. requests in flight are drained: the HTTP server returns once they have been answered. Drain is bounded
//!    by `http.max_wait` plus [`DRAIN_GRACE`]; a second signal cuts it short;
//! 3. the webhook dispatcher stops: each delivery in flight finishes (bounded by `webhooks.timeout`) and every
//!    subscription's cursors are committed;
//! 4. the retention and topic lifecycle tasks are stopped;
//! 5. the leases (below) are released, so other nodes take the work over at once, and this node leaves the
//!    node registry;
//! 6. the log is shut down: appends in flight finish and everything is fsync'd;
//! 7. "shutdown complete" is logged and the process exits 0.
//!
//! Several nodes on one NATS backend: work that must happen once runs only on the node holding its lease
//! (`webhooks`, `mail`, `retention`, `lifecycle`; the Kafka endpoint holds `kafka-coordinator`), taken over by
//! another node within `cluster.lease_ttl` when the holder dies, within a second when it stops cleanly. Each node
//! announces its id (`cluster.node_id`), HTTP URL and Kafka address in the node registry; `GET /v1/cluster`
//! shows both. Every node's dispatcher answers the subscription API; only the `webhooks` holder delivers, and it
//! rescans the stored subscriptions every [`WEBHOOK_RESCAN`] for ones created or changed through other nodes.
//! The in-memory caches (access control, the topic catalogue, maintenance windows) follow changes made through
//! other nodes within milliseconds through the state store's change notifications (`serve/follow.rs`).
//!
//! Webhooks: the dispatcher starts once the HTTP address is bound (that address is always refused as a webhook
//! URL). Their signing secrets live in the state file, which HMAC needs in the clear, so the state file is made
//! readable by this user only (0600).
//!
//! Every acknowledged event was already durable before its acknowledgement (unless `durability = "relaxed"`),
//! so a forced stop loses nothing acknowledged; the steps above make even the relaxed mode lose nothing.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use esgf_events_auth::{Auth, AuthConfig, Bootstrap, JwksSource, OidcIssuerConfig, RateSpec};
use esgf_events_engine::{Durability, EmbeddedConfig, EmbeddedStore, LogStore, Retention, SystemClock};
use esgf_events_http::HttpConfig;
use esgf_events_meta::lease::{LeaseConfig, Leases, NodeInfo, Nodes};
use esgf_events_meta::{MetaStore, RedbMetaStore};
use esgf_events_nats::{JetStreamMeta, JetStreamStore, NatsAuth, NatsClient, NatsConfig};
use esgf_events_webhooks::{Dispatcher, WebhookConfig};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::config::{
    DurabilityMode, JwksLocation, LogFormat, LogSettings, ServeConfig, StorageBackend, format_duration,
};

mod follow;
mod lease_work;

/// How often the webhook dispatcher looks for subscriptions created or changed through other nodes.
const WEBHOOK_RESCAN: Duration = Duration::from_secs(2);

/// How often the changelog is checked for topic changes to announce.
const TOPIC_ANNOUNCER_EVERY: Duration = Duration::from_secs(2);
/// How long shutdown waits for the leases to be released and this node's registry entry removed.
const LEASE_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// How much longer than the longest long-poll the drain may take before the server stops waiting.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// The state store (principals, topic access, audit log), inside the data directory.
pub const STATE_FILE: &str = "state.redb";

/// Where the generated operator token goes, inside the data directory.
pub const OPERATOR_TOKEN_FILE: &str = "operator.token";

/// Runs the server until SIGINT or SIGTERM, then shuts it down cleanly (see the module doc).
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    init_tracing(&config.log);
    crate::install_crypto_provider();
    info!(
        version = env!("CARGO_PKG_VERSION"),
        // The URLs carry no credentials (the configuration refuses them); the token is never logged.
        storage = %config.storage.backend,
        data_dir = %config.storage.data_dir.display(),
        durability = %config.storage.durability,
        default_retention = %config.storage.default_retention,
        max_connections = config.http.max_connections,
        tls = config.tls.is_some(),
        oidc_issuers = config.auth.oidc.len(),
        "starting esgf-events"
    );
    // The engine itself warns when durability is relaxed.

    let tls = match &config.tls {
        Some(tls) => {
            let loaded = esgf_events_http::load_tls(&tls.cert_file, &tls.key_file)
                .context("cannot load the TLS certificate and key")?;
            info!(cert_file = %tls.cert_file.display(), "TLS certificate loaded");
            Some(loaded)
        }
        None => None,
    };

    let nats = match &config.storage.backend {
        StorageBackend::Embedded => None,
        StorageBackend::Nats(servers) => Some(connect_nats(&config, servers).await?),
    };
    let store = open_store(&config, nats.as_ref()).await?;
    let (auth, meta) = match open_auth(&config, nats.as_ref()).await {
        Ok(opened) => opened,
        Err(e) => {
            close_store(store.as_ref()).await;
            return Err(e);
        }
    };

    // Work that must happen once (webhook delivery, mail, retention, topic lifecycle, Kafka group coordination)
    // is owned by one node at a time through a lease in the state store; a lone node gets every lease.
    let node_id = config.cluster.node_id.clone().unwrap_or_else(lease_work::default_node_id);
    let lease_config = LeaseConfig { ttl: config.cluster.lease_ttl, renew_every: config.cluster.lease_renew };
    let leases = Leases::new(Arc::clone(&meta), node_id.clone(), lease_config);
    let nodes = Nodes::new(Arc::clone(&meta), lease_config);
    // Turned true once the work under the leases has stopped: the leases are then released at once.
    let (stop_leases, leases_stopped) = watch::channel(false);
    info!(
        node_id = %node_id,
        lease_ttl = %format_duration(lease_config.ttl),
        lease_renew = %format_duration(lease_config.renew_every),
        "service node"
    );

    // Installed before "listening" so that a signal sent as soon as the server is up is not lost.
    let mut signals = Signals::install().context("installing signal handlers")?;

    let listener = match TcpListener::bind(config.http.addr).await {
        Ok(listener) => listener,
        Err(e) => {
            close_store(store.as_ref()).await;
            return Err(e).with_context(|| format!("cannot listen on {}", config.http.addr));
        }
    };
    let http_addr = listener.local_addr().context("reading the bound address")?;
    info!(%http_addr, tls = tls.is_some(), "listening");
    if tls.is_none() && !http_addr.ip().is_loopback() {
        warn!(
            %http_addr,
            "listening on a non-loopback address WITHOUT TLS: tokens and events travel in clear text; configure \
             [tls] (--tls-cert/--tls-key), put a TLS-terminating reverse proxy in front, or bind to 127.0.0.1"
        );
    }

    let webhooks = match start_webhooks(&config, &store, &meta, &auth, http_addr).await {
        Ok(webhooks) => webhooks,
        Err(e) => {
            close_store(store.as_ref()).await;
            return Err(e);
        }
    };
    // Every node answers the subscription API; only the holder of the `webhooks` lease delivers.
    let webhooks_follower = tokio::spawn(
        Arc::clone(&webhooks)
            .follow(leases.hold(lease_work::WEBHOOKS, leases_stopped.clone()), WEBHOOK_RESCAN),
    );

    let kafka_listener = match config.kafka.addr {
        None => None,
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                close_store(store.as_ref()).await;
                return Err(e).with_context(|| format!("cannot listen for Kafka clients on {addr}"));
            }
        },
    };
    let kafka_bound = kafka_listener.as_ref().and_then(|l| l.local_addr().ok());
    nodes.announce(
        NodeInfo {
            id: node_id.clone(),
            http_url: Some(lease_work::http_url(http_addr, tls.is_some())),
            kafka_host: kafka_bound
                .map(|a| config.kafka.advertised_host.clone().unwrap_or_else(|| a.ip().to_string())),
            kafka_port: kafka_bound.map(|a| a.port()),
            seen_ms: 0,
        },
        leases_stopped.clone(),
    );
    let maintenance_state = esgf_events_ops::MaintenanceState::new(Arc::new(SystemClock));
    let announcements = Arc::new(esgf_events_ops::announcements::Announcements::new(
        Arc::clone(&meta),
        Arc::new(SystemClock),
    ));
    // Changes to the available topics (from any endpoint or the lifecycle scheduler) become announcements.
    let (stop_announcer, announcer_stopped) = watch::channel(false);
    let announcer = tokio::spawn({
        let announcer = Arc::new(esgf_events_ops::topic_announcer::TopicAnnouncer::new(
            Arc::clone(&meta),
            Arc::clone(&announcements),
        ));
        let held = leases.hold(lease_work::ANNOUNCER, leases_stopped.clone());
        lease_work::while_held(lease_work::ANNOUNCER, held, announcer_stopped, move |stop| {
            Arc::clone(&announcer).run(Arc::new(SystemClock), TOPIC_ANNOUNCER_EVERY, stop)
        })
    });
    let maintenance = match esgf_events_ops::Maintenance::open(
        Arc::clone(&meta),
        Arc::clone(&maintenance_state),
        config.ops.maintenance_notice,
    )
    .await
    {
        Ok(maintenance) => Arc::new(maintenance.with_announcements(Arc::clone(&announcements))),
        Err(e) => {
            close_store(store.as_ref()).await;
            return Err(e).context("cannot load the maintenance windows");
        }
    };
    let (stop_mail, mail_stopped) = watch::channel(false);
    let mailer = match &config.ops.smtp_url {
        None => None,
        Some(url) => {
            let mut mail = esgf_events_ops::mail::MailConfig::new(
                url.0.clone(),
                config.ops.mail_from.clone(),
                config.ops.announce_to.clone(),
            );
            mail.public_url = config.ops.public_url.clone();
            let contacts_of = Arc::clone(&auth);
            let contacts: esgf_events_ops::mail::Contacts = Arc::new(move || {
                [esgf_events_auth::Role::Producer, esgf_events_auth::Role::Consumer]
                    .into_iter()
                    .flat_map(|role| contacts_of.list(role))
                    .filter_map(|principal| principal.contact)
                    .collect()
            });
            let clock: Arc<dyn esgf_events_engine::Clock> = Arc::new(SystemClock);
            match esgf_events_ops::mail::Mailer::new(
                mail,
                Arc::clone(&meta),
                Arc::clone(&announcements),
                contacts,
                clock,
            ) {
                Ok(mailer) => Some(Arc::new(mailer)),
                Err(e) => {
                    close_store(store.as_ref()).await;
                    return Err(e).context("cannot set up announcement mail");
                }
            }
        }
    };
    let mail_task = mailer.as_ref().map(|mailer| {
        info!(recipients = config.ops.announce_to.len(), "announcement mail on");
        let (mailer, wake) = (Arc::clone(mailer), announcements.published_signal());
        let held = leases.hold(lease_work::MAIL, leases_stopped.clone());
        tokio::spawn(lease_work::while_held(lease_work::MAIL, held, mail_stopped, move |stop| {
            Arc::clone(&mailer).run(Arc::clone(&wake), stop)
        }))
    });
    // Recorded availability, publish rates and consumer lag, for the status page and /metrics.
    let (stop_status, status_stopped) = watch::channel(false);
    let status = Arc::new(esgf_events_ops::status::StatusRecorder::new(
        Arc::clone(&store),
        Arc::clone(&meta),
        Some(Arc::clone(&maintenance_state)),
        Arc::new(SystemClock),
        Default::default(),
    ));
    let status_task = tokio::spawn(Arc::clone(&status).run(status_stopped));
    let ops = esgf_events_ops::Ops {
        metrics: if config.ops.metrics { esgf_events_ops::metrics::prometheus() } else { None },
        maintenance: Some(maintenance),
        announcements: Some(announcements),
        changelog: Some(Arc::clone(&meta)),
        public_url: config.ops.public_url.clone(),
        mail: mailer,
        status: Some(status),
    };
    // The topic catalogue (validation, lifecycle, idempotent publish), shared by HTTP and Kafka.
    let catalogue = match esgf_events_catalogue::Catalogue::open(
        Arc::clone(&meta),
        Arc::new(SystemClock),
        config.storage.dedupe_window,
    )
    .await
    {
        Ok(catalogue) => Arc::new(catalogue),
        Err(e) => {
            close_store(store.as_ref()).await;
            return Err(e).context("cannot load the topic catalogue");
        }
    };

    let (stop_kafka, kafka_stopped) = watch::channel(false);
    let kafka = match kafka_listener {
        None => None,
        Some(listener) => {
            let kafka_addr = listener.local_addr().context("reading the bound Kafka address")?;
            info!(%kafka_addr, tls = tls.is_some(), "listening");
            let advertised_host =
                config.kafka.advertised_host.clone().unwrap_or_else(|| kafka_addr.ip().to_string());
            // One process owns an embedded data directory, so it is the whole cluster (and need not wait for a
            // lease after a restart); on a shared backend the `kafka-coordinator` lease holder coordinates groups.
            let cluster = (config.storage.backend != StorageBackend::Embedded).then(|| {
                kafka_cluster_view(
                    &node_id,
                    &advertised_host,
                    kafka_addr.port(),
                    &leases,
                    &nodes,
                    &leases_stopped,
                ) as Arc<dyn esgf_events_kafka::cluster::Cluster>
            });
            let kafka_config = esgf_events_kafka::KafkaConfig {
                advertised_host,
                // Public topics are readable without credentials over HTTP; the same holds over Kafka.
                allow_anonymous_public_read: true,
                max_connections: config.http.max_connections,
                tls: tls.clone(),
                maintenance: Some(Arc::clone(&maintenance_state)),
                cluster,
                ..esgf_events_kafka::KafkaConfig::default()
            };
            let ctx = esgf_events_kafka::KafkaContext {
                store: Arc::clone(&store),
                auth: Some(Arc::clone(&auth)),
                offsets: esgf_events_meta::offsets::GroupOffsets::new(Arc::clone(&meta)),
                config: kafka_config,
                catalogue: Some(Arc::clone(&catalogue)),
            };
            let mut stopped = kafka_stopped;
            Some(tokio::spawn(esgf_events_kafka::run(listener, ctx, async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })))
        }
    };

    let (stop_retention, retention_stopped) = watch::channel(false);
    let lifecycle = tokio::spawn({
        let (catalogue, store) = (Arc::clone(&catalogue), Arc::clone(&store));
        let prune_every = config.storage.retention_check_interval;
        let held = leases.hold(lease_work::LIFECYCLE, leases_stopped.clone());
        lease_work::while_held(lease_work::LIFECYCLE, held, retention_stopped.clone(), move |stop| {
            lifecycle_loop(Arc::clone(&catalogue), Arc::clone(&store), prune_every, stop)
        })
    });
    // On a shared state store (NATS), other nodes' changes must reach this node's caches.
    let caches = follow::Caches {
        auth: Arc::clone(&auth),
        catalogue: Arc::clone(&catalogue),
        maintenance: ops.maintenance.clone(),
    };
    let follower = follow::start(meta.as_ref(), caches, retention_stopped.clone());
    let retention = tokio::spawn({
        let store = Arc::clone(&store);
        let every = config.storage.retention_check_interval;
        let held = leases.hold(lease_work::RETENTION, leases_stopped.clone());
        lease_work::while_held(lease_work::RETENTION, held, retention_stopped, move |stop| {
            retention_loop(Arc::clone(&store), every, stop)
        })
    });

    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    let (force_tx, force_rx) = oneshot::channel::<()>();
    let drain_limit = config.http.max_wait + DRAIN_GRACE;
    let watcher = tokio::spawn(async move {
        let signal = signals.recv().await;
        info!(signal, "shutdown requested: no longer accepting connections, draining requests in flight");
        let _ = drain_tx.send(());
        let _ = stop_kafka.send(true);
        tokio::select! {
            signal = signals.recv() => warn!(signal, "second signal: not waiting for requests in flight"),
            () = tokio::time::sleep(drain_limit) => {
                warn!(timeout = %format_duration(drain_limit), "drain timed out: not waiting for requests in flight");
            }
        }
        let _ = force_tx.send(());
    });

    let server = esgf_events_http::Server {
        store: Arc::clone(&store),
        auth: Some(auth),
        config: http_config(&config),
        tls,
        // The same committed offsets as the Kafka endpoint: a group can move between protocols.
        offsets: Some(esgf_events_meta::offsets::GroupOffsets::new(Arc::clone(&meta))),
        webhooks: Some(Arc::clone(&webhooks) as Arc<dyn esgf_events_webhooks::SubscriptionControl>),
        ops,
        catalogue: Some(catalogue),
        cluster: Some(esgf_events_http::Cluster { leases: Arc::clone(&leases), nodes: Arc::clone(&nodes) }),
    };
    let server = esgf_events_http::serve(listener, server, async move {
        // An error means the watcher is gone, which only happens on the way out: stop too.
        let _ = drain_rx.await;
    });
    let served = tokio::select! {
        result = server => result.context("HTTP server failed"),
        _ = force_rx => Ok(()),
    };
    watcher.abort();
    if let Err(e) = &served {
        error!(error = %format!("{e:#}"), "HTTP server stopped unexpectedly");
    }

    if let Some(kafka) = kafka {
        // The watcher already told it to stop; it bounds its own drain.
        match kafka.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "Kafka endpoint stopped with an error"),
            Err(e) => error!(error = %e, "Kafka endpoint task failed"),
        }
    }

    // After the HTTP drain (no request can create or change a subscription any more), before the log closes.
    webhooks.shutdown().await;
    let _ = stop_status.send(true);
    if let Err(e) = status_task.await {
        warn!(error = %e, "status recorder task ended abnormally");
    }
    let _ = stop_announcer.send(true);
    if let Err(e) = announcer.await {
        warn!(error = %e, "topic change announcer ended abnormally");
    }
    let _ = stop_mail.send(true);
    if let Some(task) = mail_task
        && let Err(e) = task.await
    {
        warn!(error = %e, "announcement mail task ended abnormally");
    }

    let _ = stop_retention.send(true);
    if let Err(e) = retention.await {
        warn!(error = %e, "retention task ended abnormally");
    }
    if let Err(e) = lifecycle.await {
        warn!(error = %e, "topic lifecycle task ended abnormally");
    }
    if let Some(follower) = follower
        && let Err(e) = follower.await
    {
        warn!(error = %e, "state change follower ended abnormally");
    }
    // Every piece of work under a lease has stopped: release the leases now, so another node takes over at
    // once instead of after the lease ttl, and leave the node registry.
    let _ = stop_leases.send(true);
    if let Err(e) = webhooks_follower.await {
        warn!(error = %e, "webhook lease follower ended abnormally");
    }
    let released = leases.stopped(LEASE_RELEASE_WAIT).await;
    let left = nodes.stopped(LEASE_RELEASE_WAIT).await;
    if !(released && left) {
        warn!(released, left, "leases or node record not cleaned up in time; other nodes wait them out");
    }
    let closed = store.shutdown().await.context("closing the event log");
    match &closed {
        Ok(()) => info!("shutdown complete: event log closed and synced"),
        Err(e) => error!(error = %format!("{e:#}"), "event log did not close cleanly"),
    }
    served.and(closed)
}

/// Text to stderr unless asked for JSON. `log.level` was validated with the configuration; `RUST_LOG` was
/// folded into it there.
fn init_tracing(log: &LogSettings) {
    let filter = EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // Colour codes would split `http_addr=...` for whoever parses the log, so only for a terminal.
    let installed = match log.format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // Fails only if a subscriber is already installed (serve called twice in one process): keep that one.
    if installed.is_err() {
        debug!("a tracing subscriber was already installed; keeping it");
    }
}

/// The engine's settings, from the service's.
pub fn engine_config(config: &ServeConfig) -> EmbeddedConfig {
    let s = &config.storage;
    let mut engine = EmbeddedConfig::new(&s.data_dir);
    engine.durability = match s.durability {
        DurabilityMode::Fsync => Durability::FsyncBeforeAck,
        DurabilityMode::Relaxed => Durability::Relaxed { interval: s.relaxed_fsync_interval },
    };
    engine.segment_max_bytes = s.segment_max_bytes;
    engine.segment_max_age = s.segment_max_age;
    // A batch the HTTP layer accepts must fit the engine: its encoding adds framing to each event's bytes.
    let framing = config.http.max_batch_events.saturating_mul(64);
    engine.max_batch_bytes = engine.max_batch_bytes.max(config.http.max_body_bytes.saturating_add(framing));
    engine
}

/// The HTTP layer's settings, from the service's.
pub fn http_config(config: &ServeConfig) -> HttpConfig {
    let h = &config.http;
    HttpConfig {
        max_event_bytes: h.max_event_bytes,
        max_batch_events: h.max_batch_events,
        max_body_bytes: h.max_body_bytes,
        max_wait: h.max_wait,
        max_connections: h.max_connections,
        default_retention: Retention { max_age: config.storage.default_retention.max_age(), max_bytes: None },
        ..HttpConfig::default()
    }
}

/// The NATS backend's settings, from the service's.
pub fn nats_config(config: &ServeConfig, servers: &[String]) -> NatsConfig {
    let n = &config.nats;
    NatsConfig {
        servers: servers.to_vec(),
        auth: match (&n.credentials_file, &n.token) {
            (Some(creds), _) => NatsAuth::CredentialsFile(creds.clone()),
            (None, Some(t)) => NatsAuth::Token(t.expose().to_owned()),
            (None, None) => NatsAuth::None,
        },
        tls_ca_file: n.tls_ca_file.clone(),
        tls_client_cert: n.tls_cert_file.clone().zip(n.tls_key_file.clone()),
        // A CA file or a client certificate means the operator wants TLS: never fall back to plain text.
        require_tls: n.tls_ca_file.is_some() || n.tls_cert_file.is_some(),
        connection_name: format!("esgf-events {}", env!("CARGO_PKG_VERSION")),
        replicas: n.replicas,
        ..NatsConfig::default()
    }
}

/// Connects once to the cluster; the log and the state store share the connection.
async fn connect_nats(config: &ServeConfig, servers: &[String]) -> anyhow::Result<(NatsClient, NatsConfig)> {
    let nats = nats_config(config, servers);
    info!(
        servers = %servers.join(","),
        replicas = nats.replicas,
        tls = nats.require_tls,
        token = config.nats.token.is_some(),
        "connecting to NATS JetStream"
    );
    let client = esgf_events_nats::connect(&nats).await.context("cannot connect to the NATS cluster")?;
    Ok((client, nats))
}

async fn open_store(
    config: &ServeConfig,
    nats: Option<&(NatsClient, NatsConfig)>,
) -> anyhow::Result<Arc<dyn LogStore>> {
    if let Some((client, nats)) = nats {
        let started = Instant::now();
        let store = JetStreamStore::open(client.clone(), nats.clone(), Arc::new(SystemClock))
            .await
            .context("cannot open the event log on NATS JetStream")?;
        info!(elapsed_ms = started.elapsed().as_millis() as u64, "event log open (NATS JetStream)");
        return Ok(Arc::new(store));
    }
    let engine = engine_config(config);
    let data_dir = engine.data_dir.clone();
    info!(data_dir = %data_dir.display(), "opening event log");
    let started = Instant::now();
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(engine, Arc::new(SystemClock)))
        .await
        .context("the thread opening the event log failed")?
        .with_context(|| format!("cannot open the event log in {}", data_dir.display()))?;
    info!(elapsed_ms = started.elapsed().as_millis() as u64, "event log open");
    Ok(Arc::new(store))
}

/// Access control's settings, from the service's.
pub fn auth_config(config: &ServeConfig) -> AuthConfig {
    let a = &config.auth;
    AuthConfig {
        oidc: a
            .oidc
            .iter()
            .map(|o| OidcIssuerConfig {
                issuer: o.issuer.clone(),
                audience: o.audience.clone(),
                jwks: match &o.jwks {
                    JwksLocation::File(path) => JwksSource::File(path.clone()),
                    JwksLocation::Url(url) => JwksSource::Url(url.clone()),
                },
                subject_claim: o.subject_claim.clone(),
            })
            .collect(),
        rotation_grace: a.rotation_grace,
        anonymous_per_ip: RateSpec {
            events_per_second: a.anonymous_rate,
            burst: a.anonymous_burst,
            bytes_per_second: None,
            burst_bytes: None,
        },
    }
}

/// Opens the state store and access control on it, and makes sure an operator credential exists.
async fn open_auth(
    config: &ServeConfig,
    nats: Option<&(NatsClient, NatsConfig)>,
) -> anyhow::Result<(Arc<Auth>, Arc<dyn MetaStore>)> {
    let data_dir = &config.storage.data_dir;
    let meta: Arc<dyn MetaStore> = match nats {
        Some((client, nats)) => {
            // Nothing else creates the directory on this backend, and the generated token may go there.
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
            let meta = JetStreamMeta::open(client.clone(), nats.clone())
                .await
                .context("cannot open the state store on NATS JetStream")?;
            Arc::new(meta)
        }
        None => {
            let state_path = data_dir.join(STATE_FILE);
            let path = state_path.clone();
            let meta = tokio::task::spawn_blocking(move || RedbMetaStore::open(&path))
                .await
                .context("the thread opening the state store failed")?
                .with_context(|| format!("cannot open the state store {}", state_path.display()))?;
            Arc::new(meta)
        }
    };
    let auth =
        Auth::open(Arc::clone(&meta), auth_config(config)).await.context("cannot start access control")?;

    let token_file = data_dir.join(OPERATOR_TOKEN_FILE);
    let env_token = config.auth.operator_token.as_ref().map(|t| t.expose());
    let bootstrap = auth
        .bootstrap_operator(&token_file, env_token)
        .await
        .context("cannot set up the operator credential")?;
    // The path, never the token: logs are copied to places a secret must not go.
    match bootstrap {
        Bootstrap::Created(path) => info!(
            token_file = %path.display(),
            "generated the operator token; it is in this file (readable by this user only): use it with \
             `esgf-events admin ... --token-file`, and keep it secret"
        ),
        Bootstrap::FromEnv => {
            info!("operator credential taken from ESGF_EVENTS_OPERATOR_TOKEN");
            if token_file.exists() {
                warn!(
                    token_file = %token_file.display(),
                    "this operator token file is stale: ESGF_EVENTS_OPERATOR_TOKEN replaced its token; delete it"
                );
            }
        }
        Bootstrap::Existing => info!("operator credential already set up"),
    }
    Ok((Arc::new(auth), meta))
}

/// The webhook dispatcher's settings, from the service's; `http_addr` (the bound API address) is never a valid
/// webhook URL.
pub fn webhook_config(config: &ServeConfig, http_addr: SocketAddr) -> WebhookConfig {
    let w = &config.webhooks;
    WebhookConfig {
        timeout: w.timeout,
        max_attempts: w.max_attempts,
        max_age: w.max_age,
        allow: w.allow.clone(),
        deny: w.deny.clone(),
        own_addresses: vec![http_addr],
        ..WebhookConfig::default()
    }
}

/// Restricts the state file to this user (it holds webhook signing secrets), then starts delivering webhooks.
async fn start_webhooks(
    config: &ServeConfig,
    store: &Arc<dyn LogStore>,
    meta: &Arc<dyn MetaStore>,
    auth: &Arc<Auth>,
    http_addr: SocketAddr,
) -> anyhow::Result<Arc<Dispatcher>> {
    let state_path = config.storage.data_dir.join(STATE_FILE);
    // Only the embedded backend has a local state file; on NATS the secrets are in the cluster's bucket.
    #[cfg(unix)]
    if config.storage.backend == StorageBackend::Embedded {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state_path, std::fs::Permissions::from_mode(0o600)).with_context(|| {
            format!("cannot restrict the state file {} to mode 0600", state_path.display())
        })?;
    }
    let dispatcher = Dispatcher::standby(
        Arc::clone(store),
        Arc::clone(meta),
        webhook_config(config, http_addr),
        esgf_events_http::webhook_access(Arc::clone(auth)),
    )
    .await
    .context("cannot start webhook delivery")?;
    Ok(Arc::new(dispatcher))
}

/// The Kafka endpoint's view of the service nodes sharing the backend: it holds the `kafka-coordinator` lease
/// while `stop` is false and refreshes the registry and lease holder in the background until then.
fn kafka_cluster_view(
    node_id: &str,
    host: &str,
    port: u16,
    leases: &Arc<Leases>,
    nodes: &Arc<Nodes>,
    stop: &watch::Receiver<bool>,
) -> Arc<esgf_events_kafka::cluster::ClusterView> {
    let holding = leases.hold(esgf_events_kafka::cluster::COORDINATOR_LEASE, stop.clone());
    let view = Arc::new(esgf_events_kafka::cluster::ClusterView::new(node_id, host, port, holding));
    // Ends on its own at `stop`.
    let _refresh = view.spawn_refresh(Arc::clone(leases), Arc::clone(nodes), stop.clone());
    view
}

/// Best effort, on a start-up failure after the log was opened.
async fn close_store(store: &dyn LogStore) {
    if let Err(e) = store.shutdown().await {
        error!(error = %e, "event log did not close cleanly");
    }
}

/// Runs a retention pass at once, then every `every`, until `stop` turns true.
async fn retention_loop(store: Arc<dyn LogStore>, every: Duration, mut stop: watch::Receiver<bool>) {
    // The first tick fires immediately: data that expired while the service was down goes at start-up.
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        match store.enforce_retention().await {
            Ok(report) if report.segments_deleted > 0 => info!(
                segments_deleted = report.segments_deleted,
                bytes_deleted = report.bytes_deleted,
                "retention pass deleted expired segments"
            ),
            Ok(_) => debug!("retention pass: nothing expired"),
            Err(e) => warn!(error = %e, "retention pass failed; will retry at the next interval"),
        }
    }
}

/// How often scheduled topic-state transitions are looked for (an in-memory scan; cheap).
const LIFECYCLE_TICK: Duration = Duration::from_secs(1);

/// Applies scheduled topic-state transitions when due, and every `prune_every` forgets event ids older than
/// their topic's dedupe window.
async fn lifecycle_loop(
    catalogue: Arc<esgf_events_catalogue::Catalogue>,
    store: Arc<dyn LogStore>,
    prune_every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(LIFECYCLE_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        match catalogue.apply_due().await {
            Ok(applied) => {
                for (topic, state) in applied {
                    info!(%topic, state = state.as_str(), "scheduled topic state change applied");
                }
            }
            Err(e) => warn!(error = %e, "applying scheduled topic state changes failed; will retry"),
        }
        if last_prune.is_some_and(|at| at.elapsed() < prune_every) {
            continue;
        }
        last_prune = Some(tokio::time::Instant::now());
        let topics = match store.list_topics().await {
            Ok(topics) => topics,
            Err(e) => {
                warn!(error = %e, "listing topics to prune event ids failed");
                continue;
            }
        };
        for topic in topics {
            match catalogue.prune_event_ids(&topic.name, topic.retention.max_age).await {
                Ok(0) => {}
                Ok(pruned) => debug!(topic = %topic.name, pruned, "forgot expired event ids"),
                Err(e) => warn!(topic = %topic.name, error = %e, "pruning event ids failed"),
            }
        }
    }
}

/// SIGINT and SIGTERM as one stream.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next signal's name.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OidcSettings, RetentionPeriod};
    use async_trait::async_trait;
    use esgf_events_engine::{
        AppendOutcome, NewRecord, PartitionOffsets, ReadLimits, ReadResult, RetentionReport, StoreError,
        TopicConfig, TopicInfo,
    };
    use tokio::sync::mpsc;

    #[test]
    fn nats_backend_gets_the_token_replicas_and_mandatory_tls_with_a_ca_file() {
        let env = [("ESGF_EVENTS_NATS_TOKEN", "t0ken"), ("ESGF_EVENTS_NATS_REPLICAS", "1")]
            .map(|(k, v)| (std::ffi::OsString::from(k), std::ffi::OsString::from(v)));
        let mut config = ServeConfig::resolve(None, env, &crate::config::ServeFlags::default()).unwrap();
        let servers = vec!["nats://a:4222".to_owned(), "nats://b:4222".to_owned()];
        let nats = nats_config(&config, &servers);
        assert_eq!(nats.servers, servers);
        assert!(matches!(&nats.auth, NatsAuth::Token(t) if t == "t0ken"));
        assert_eq!(nats.replicas, 1);
        assert!(!nats.require_tls && nats.tls_ca_file.is_none());

        config.nats.tls_ca_file = Some("/ca.pem".into());
        config.nats.token = None;
        let nats = nats_config(&config, &servers);
        assert!(nats.require_tls, "a CA file makes TLS mandatory");
        assert!(matches!(nats.auth, NatsAuth::None));

        config.nats.tls_ca_file = None;
        config.nats.credentials_file = Some("/esgf.creds".into());
        config.nats.tls_cert_file = Some("/client.pem".into());
        config.nats.tls_key_file = Some("/client.key".into());
        let nats = nats_config(&config, &servers);
        assert!(
            matches!(&nats.auth, NatsAuth::CredentialsFile(p) if p == std::path::Path::new("/esgf.creds"))
        );
        assert_eq!(nats.tls_client_cert, Some(("/client.pem".into(), "/client.key".into())));
        assert!(nats.require_tls, "a client certificate makes TLS mandatory");
    }

    #[test]
    fn engine_gets_the_storage_settings() {
        let mut config = ServeConfig::default();
        config.storage.durability = DurabilityMode::Relaxed;
        config.storage.relaxed_fsync_interval = Duration::from_millis(50);
        config.storage.segment_max_bytes = 4096;
        config.storage.segment_max_age = Duration::from_secs(3600);
        let engine = engine_config(&config);
        assert_eq!(engine.data_dir, config.storage.data_dir);
        assert_eq!(engine.durability, Durability::Relaxed { interval: Duration::from_millis(50) });
        assert_eq!(engine.segment_max_bytes, 4096);
        assert_eq!(engine.segment_max_age, Duration::from_secs(3600));
        assert_eq!(engine_config(&ServeConfig::default()).durability, Durability::FsyncBeforeAck);
    }

    #[test]
    fn engine_accepts_any_batch_the_http_layer_accepts() {
        let mut config = ServeConfig::default();
        config.http.max_body_bytes = 100 << 20;
        let engine = engine_config(&config);
        assert!(engine.max_batch_bytes >= config.http.max_body_bytes + config.http.max_batch_events * 24);
    }

    #[test]
    fn http_layer_gets_the_limits_and_default_retention() {
        let mut config = ServeConfig::default();
        config.http.max_event_bytes = 10;
        config.http.max_wait = Duration::from_secs(3);
        config.storage.default_retention = RetentionPeriod::Forever;
        let http = http_config(&config);
        assert_eq!(http.max_event_bytes, 10);
        assert_eq!(http.max_wait, Duration::from_secs(3));
        assert_eq!(http.max_connections, config.http.max_connections);
        assert_eq!(http.default_retention, Retention { max_age: None, max_bytes: None });
        let default = http_config(&ServeConfig::default());
        assert_eq!(default.default_retention, Retention::DEFAULT);
    }

    #[test]
    fn access_control_gets_the_auth_settings() {
        let mut config = ServeConfig::default();
        config.auth.rotation_grace = Duration::from_secs(60);
        config.auth.anonymous_rate = 3;
        config.auth.anonymous_burst = 9;
        config.auth.oidc.push(OidcSettings {
            issuer: "https://auth.globus.org".into(),
            audience: "esgf-events".into(),
            jwks: JwksLocation::File("/etc/jwks.json".into()),
            subject_claim: "client_id".into(),
        });
        let auth = auth_config(&config);
        assert_eq!(auth.rotation_grace, Duration::from_secs(60));
        assert_eq!((auth.anonymous_per_ip.events_per_second, auth.anonymous_per_ip.burst), (3, 9));
        assert_eq!(auth.oidc.len(), 1);
        assert_eq!(auth.oidc[0].subject_claim, "client_id");
        assert!(matches!(&auth.oidc[0].jwks, JwksSource::File(p) if p.ends_with("jwks.json")));
    }

    #[test]
    fn webhook_delivery_gets_its_settings_and_refuses_the_api_address() {
        let mut config = ServeConfig::default();
        config.webhooks.timeout = Duration::from_secs(3);
        config.webhooks.max_attempts = 2;
        config.webhooks.deny = vec!["10.0.0.0/8".into()];
        let addr: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        let webhooks = webhook_config(&config, addr);
        assert_eq!((webhooks.timeout, webhooks.max_attempts), (Duration::from_secs(3), 2));
        assert_eq!(webhooks.max_age, config.webhooks.max_age);
        assert_eq!(webhooks.deny, config.webhooks.deny);
        assert_eq!(webhooks.own_addresses, vec![addr]);
    }

    /// Reports each retention pass; refuses everything else.
    struct RetentionProbe(mpsc::UnboundedSender<()>);

    #[async_trait]
    impl LogStore for RetentionProbe {
        async fn create_topic(&self, _: &str, _: TopicConfig) -> Result<TopicInfo, StoreError> {
            Err(StoreError::Backend("unused".into()))
        }
        async fn delete_topic(&self, _: &str) -> Result<(), StoreError> {
            Err(StoreError::Backend("unused".into()))
        }
        async fn list_topics(&self) -> Result<Vec<TopicInfo>, StoreError> {
            Err(StoreError::Backend("unused".into()))
        }
        async fn describe_topic(&self, _: &str) -> Result<TopicInfo, StoreError> {
            Err(StoreError::Backend("unused".into()))
        }
        async fn set_retention(&self, _: &str, _: Retention) -> Result<TopicInfo, StoreError> {
            Err(StoreError::Backend("unused".into()))
        }
        async fn append(&self, _: &str, _: u32, _: Vec<NewRecord>) -> Result<AppendOutcome, StoreError> {
            Err(StoreError::Backend("unused".into()))
        }
        async fn read(&self, _: &str, _: u32, _: u64, _: ReadLimits) -> Result<ReadResult, StoreError> {
            Err(StoreError::Backend("unused".into()))
        }
        async fn offsets(&self, _: &str, _: u32) -> Result<PartitionOffsets, StoreError> {
            Err(StoreError::Backend("unused".into()))
        }
        async fn offset_for_timestamp(&self, _: &str, _: u32, _: i64) -> Result<Option<u64>, StoreError> {
            Err(StoreError::Backend("unused".into()))
        }
        async fn wait_for(&self, _: &str, _: u32, _: u64, _: Duration) -> Result<bool, StoreError> {
            Err(StoreError::Backend("unused".into()))
        }
        async fn enforce_retention(&self) -> Result<RetentionReport, StoreError> {
            let _ = self.0.send(());
            // A failing pass must not end the loop.
            Err(StoreError::Backend("disk on fire".into()))
        }
        async fn shutdown(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn retention_runs_repeatedly_until_stopped_even_when_a_pass_fails() {
        let (passes_tx, mut passes) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(retention_loop(
            Arc::new(RetentionProbe(passes_tx)),
            Duration::from_millis(1),
            stopped,
        ));
        for _ in 0..3 {
            passes.recv().await.expect("a retention pass");
        }
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
