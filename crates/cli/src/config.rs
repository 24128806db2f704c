//! The server's one typed, versioned configuration.
//!
//! Sources, highest precedence first: command-line flags, `ESGF_EVENTS_*` environment variables, the TOML file
//! given with `--config` (or `ESGF_EVENTS_CONFIG`), built-in defaults. Defaults live in one place,
//! [`ServeConfig::default`]. Every source is strict: an unknown TOML key, an unknown `ESGF_EVENTS_*` variable
//! or a value that does not parse is an error naming it, because a silently ignored typo
//! (`durabilty = "relaxed"`) would leave an operator believing in a setting the server never applied.
//!
//! ```toml
//! version = 1                      # required in a file; other versions are rejected
//! [http]
//! addr = "127.0.0.1:8080"
//! max_event_bytes = 1048576        # one event
//! max_batch_events = 10000         # events in one publish request
//! max_body_bytes = 33554432        # one request body
//! max_wait = "30s"                 # longest long-poll (`wait=`) a reader may ask for
//! max_connections = 10000
//! [storage]
//! backend = "embedded"             # or NATS JetStream: "nats://n1:4222,nats://n2:4222,nats://n3:4222"
//! data_dir = "./data"
//! durability = "fsync"             # "fsync": fsync before every ack | "relaxed": see below
//! relaxed_fsync_interval = "200ms"
//! segment_max_bytes = 134217728
//! segment_max_age = "7d"
//! default_retention = "90d"        # for topics created without one; "forever" allowed
//! retention_check_interval = "5m"
//! dedupe_window = "7d"             # how long a published metadata.event_id is remembered [default: the topic's retention]
//! [log]
//! format = "text"                  # or "json"
//! level = "info"                   # a tracing filter, e.g. "info,esgf_events_http=debug"
//! [auth]
//! rotation_grace = "0s"            # how long a rotated-out token keeps working
//! anonymous_rate = 20              # unauthenticated requests per second per client IP
//! anonymous_burst = 100
//! [[auth.oidc]]                    # OAuth2/OIDC issuers whose bearer JWTs are accepted (any number)
//! issuer = "https://auth.globus.org"
//! audience = "esgf-events"
//! jwks_url = "https://auth.globus.org/jwk.json"   # or jwks_file = "/etc/esgf-events/globus-jwks.json"
//! subject_claim = "sub"            # or "client_id" / "azp": the claim naming the registered principal
//! [kafka]                          # optional: the Kafka protocol endpoint (off when addr is unset)
//! addr = "127.0.0.1:9092"
//! advertised_host = "events.example.org"   # host name Kafka clients are told to connect to [default: addr's IP]
//! [webhooks]                       # delivery of webhook subscriptions (POST /v1/subscriptions)
//! timeout = "10s"                  # one delivery attempt, connecting to reading the response
//! max_attempts = 8                 # attempts per event before it goes to the dead-letter list
//! max_age = "24h"                  # ...or this long after its first attempt
//! allow = ["*.example.org", "127.0.0.1"]   # hosts webhook URLs may name [default: any]
//! deny = ["10.0.0.0/8", "169.254.0.0/16"]  # hosts they may not; checked first, on resolved addresses too
//! [ops]                            # operations endpoints
//! metrics = true                   # serve GET /metrics (Prometheus text); false: 501
//! maintenance_notice = "7d"        # least notice for a maintenance window unless forced
//! public_url = "https://events.example.org"   # base of feed links and mail unsubscribe links
//! smtp_url = "smtps://user:pass@mail.example.org"   # mail announcements (ESGF_EVENTS_SMTP_URL); unset: no mail
//! announce_to = ["esgf-announce@example.org"]       # ESGF_EVENTS_ANNOUNCE_TO (comma-separated)
//! mail_from = "ESGF Event Service <events@example.org>"
//! [nats]                           # used when storage.backend lists nats:// URLs
//! replicas = 3                     # copies of every stream and bucket created from now on
//! tls_ca_file = "/etc/esgf-events/nats-ca.pem"  # trust these CAs and require TLS [default: plain NATS]
//! tls_cert_file = "/etc/esgf-events/nats-client.pem"  # client certificate for mutual TLS (with tls_key_file)
//! tls_key_file = "/etc/esgf-events/nats-client.key"
//! credentials_file = "/etc/esgf-events/esgf-events.creds"  # NATS user JWT + NKey (operator mode); not with a token
//! [cluster]                        # several nodes sharing one NATS backend (one node: nothing to set)
//! node_id = "east-1"               # unique per node (ESGF_EVENTS_NODE_ID) [default: <hostname>-<6 random hex>]
//! lease_ttl = "10s"                # single-owner work (webhooks, mail, ...) moves this long after its node died
//! lease_renew = "3s"               # how often the owner renews; at most half of lease_ttl
//! [tls]                            # both or neither; without it the server speaks plain HTTP
//! cert_file = "/etc/esgf-events/tls/cert.pem"   # PEM chain, leaf first
//! key_file = "/etc/esgf-events/tls/key.pem"     # PEM private key
//! ```
//!
//! `durability = "relaxed"` acknowledges appends once they reach the OS page cache and fsyncs every
//! `relaxed_fsync_interval`: a machine crash (not a process crash) can lose that much acknowledged data.
//!
//! Environment variables are `ESGF_EVENTS_<SECTION>_<KEY>` in upper case (`ESGF_EVENTS_STORAGE_DURABILITY`),
//! plus the aliases `ESGF_EVENTS_DATA_DIR` for `storage.data_dir` and `ESGF_EVENTS_STORAGE` for `storage.backend`. `RUST_LOG`, when set, takes the place of
//! `log.level` (it beats `ESGF_EVENTS_LOG_LEVEL` and the file; `--log-level` still beats it). The client-side
//! variables (`ESGF_EVENTS_SERVER`, `ESGF_EVENTS_TOKEN`, `ESGF_EVENTS_TOKEN_FILE`, `ESGF_EVENTS_CA_CERT`) and
//! `ESGF_EVENTS_CONFIG` are ignored here. Durations use humantime syntax (`200ms`, `5m`, `7d`).
//!
//! The operator credential comes from `ESGF_EVENTS_OPERATOR_TOKEN` only, never from the file (a secret does not
//! belong in a file that is copied around and checked in). It must look like the tokens the server issues
//! (`esgfev_` and at least [`MIN_OPERATOR_SECRET_CHARS`] URL-safe base64 characters), so a weak or mistyped
//! value is refused at start-up instead of guarding the service. Its value never appears in an error or a log.
//! Likewise the NATS servers' token comes from `ESGF_EVENTS_NATS_TOKEN` only, and the backend URLs may not
//! carry credentials (`user:pass@`).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The only configuration-file version this build reads.
pub const CONFIG_VERSION: u32 = 1;

const ENV_PREFIX: &str = "ESGF_EVENTS_";

/// Read by the client commands (or by clap for `--config`), not by the server's configuration.
const CLIENT_ENV_VARS: [&str; 5] = [
    "ESGF_EVENTS_SERVER",
    "ESGF_EVENTS_TOKEN",
    "ESGF_EVENTS_TOKEN_FILE",
    "ESGF_EVENTS_CA_CERT",
    "ESGF_EVENTS_CONFIG",
];

/// The operator credential; secret, so it gets its own handling (see the module doc).
pub const OPERATOR_TOKEN_ENV: &str = "ESGF_EVENTS_OPERATOR_TOKEN";

/// What every token starts with (the auth crate's `TOKEN_PREFIX`): secret scanners look for it.
pub const TOKEN_PREFIX: &str = "esgfev_";

/// Characters an operator token needs after its prefix: 32 base64url characters are 192 random bits (the
/// server's own tokens carry 43, i.e. 256 bits).
pub const MIN_OPERATOR_SECRET_CHARS: usize = 32;
/// The access-control layer refuses longer ones.
pub const MAX_OPERATOR_SECRET_CHARS: usize = 512;

/// Short spelling of `ESGF_EVENTS_STORAGE_DATA_DIR`.
const DATA_DIR_ALIAS: &str = "ESGF_EVENTS_DATA_DIR";

/// Short spelling of `ESGF_EVENTS_STORAGE_BACKEND`.
const BACKEND_ALIAS: &str = "ESGF_EVENTS_STORAGE";

/// The NATS servers' token; secret, so environment only (see the module doc).
pub const NATS_TOKEN_ENV: &str = "ESGF_EVENTS_NATS_TOKEN";

/// Every server setting an environment variable can carry, by variable name.
pub const ENV_VARS: [&str; 46] = [
    "ESGF_EVENTS_HTTP_ADDR",
    "ESGF_EVENTS_HTTP_MAX_EVENT_BYTES",
    "ESGF_EVENTS_HTTP_MAX_BATCH_EVENTS",
    "ESGF_EVENTS_HTTP_MAX_BODY_BYTES",
    "ESGF_EVENTS_HTTP_MAX_WAIT",
    "ESGF_EVENTS_HTTP_MAX_CONNECTIONS",
    "ESGF_EVENTS_STORAGE_DATA_DIR",
    DATA_DIR_ALIAS,
    "ESGF_EVENTS_STORAGE_BACKEND",
    BACKEND_ALIAS,
    "ESGF_EVENTS_NATS_REPLICAS",
    "ESGF_EVENTS_NATS_TLS_CA_FILE",
    "ESGF_EVENTS_NATS_TLS_CERT_FILE",
    "ESGF_EVENTS_NATS_TLS_KEY_FILE",
    "ESGF_EVENTS_NATS_CREDENTIALS_FILE",
    NATS_TOKEN_ENV,
    "ESGF_EVENTS_STORAGE_DURABILITY",
    "ESGF_EVENTS_STORAGE_RELAXED_FSYNC_INTERVAL",
    "ESGF_EVENTS_STORAGE_SEGMENT_MAX_BYTES",
    "ESGF_EVENTS_STORAGE_SEGMENT_MAX_AGE",
    "ESGF_EVENTS_STORAGE_DEFAULT_RETENTION",
    "ESGF_EVENTS_STORAGE_RETENTION_CHECK_INTERVAL",
    "ESGF_EVENTS_LOG_FORMAT",
    "ESGF_EVENTS_LOG_LEVEL",
    "ESGF_EVENTS_AUTH_ROTATION_GRACE",
    "ESGF_EVENTS_AUTH_ANONYMOUS_RATE",
    "ESGF_EVENTS_AUTH_ANONYMOUS_BURST",
    "ESGF_EVENTS_TLS_CERT_FILE",
    "ESGF_EVENTS_TLS_KEY_FILE",
    OPERATOR_TOKEN_ENV,
    "ESGF_EVENTS_KAFKA_ADDR",
    "ESGF_EVENTS_KAFKA_ADVERTISED_HOST",
    "ESGF_EVENTS_NODE_ID",
    "ESGF_EVENTS_CLUSTER_LEASE_TTL",
    "ESGF_EVENTS_CLUSTER_LEASE_RENEW",
    "ESGF_EVENTS_WEBHOOKS_TIMEOUT",
    "ESGF_EVENTS_WEBHOOKS_MAX_ATTEMPTS",
    "ESGF_EVENTS_WEBHOOKS_MAX_AGE",
    "ESGF_EVENTS_OPS_METRICS",
    "ESGF_EVENTS_OPS_MAINTENANCE_NOTICE",
    "ESGF_EVENTS_OPS_PUBLIC_URL",
    "ESGF_EVENTS_SMTP_URL",
    "ESGF_EVENTS_OPS_MAIL_FROM",
    // Comma-separated lists.
    "ESGF_EVENTS_WEBHOOKS_ALLOW",
    "ESGF_EVENTS_WEBHOOKS_DENY",
    "ESGF_EVENTS_ANNOUNCE_TO",
];

/// The resolved configuration of `esgf-events serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    pub http: HttpSettings,
    pub storage: StorageSettings,
    pub log: LogSettings,
    pub auth: AuthSettings,
    /// `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
    pub kafka: KafkaSettings,
    pub webhooks: WebhookSettings,
    pub ops: OpsSettings,
    pub nats: NatsSettings,
    pub cluster: ClusterSettings,
}

/// This node's identity among service nodes sharing one backend, and the leases that give work which must
/// happen once to exactly one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `None`: `<hostname>-<6 random hex digits>`, chosen anew at every start.
    pub node_id: Option<String>,
    /// How long a lease outlives its holder's last renewal: the longest single-owner work pauses after the
    /// holder dies.
    pub lease_ttl: Duration,
    /// How often the holder renews (at most half of `lease_ttl`).
    pub lease_renew: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            node_id: None,
            lease_ttl: Duration::from_secs(10),
            lease_renew: Duration::from_secs(3),
        }
    }
}

/// Longest node id: it names a key in the backend's state buckets.
pub const MAX_NODE_ID_LEN: usize = 64;

/// A node id is a key in NATS key-value buckets and shows in logs: letters, digits, `.`, `_` and `-` only.
fn check_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_NODE_ID_LEN {
        return Err(format!("must be 1 to {MAX_NODE_ID_LEN} characters"));
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(format!("{id:?} may contain only ASCII letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

/// How the NATS JetStream backend is used (only when `storage.backend` is [`StorageBackend::Nats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// Copies of every stream and bucket created from now on; at most the number of JetStream nodes.
    pub replicas: usize,
    /// PEM CA certificates to trust; setting it makes TLS to the servers mandatory.
    pub tls_ca_file: Option<PathBuf>,
    /// This node's client certificate and key (PEM), for servers that verify clients (mutual TLS); both or none.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// A NATS credentials file (`.creds`: user JWT and NKey seed, as `nsc` writes it) for servers run in operator
    /// mode; exclusive with the token.
    pub credentials_file: Option<PathBuf>,
    /// From [`NATS_TOKEN_ENV`]; `None`: connect without credentials.
    pub token: Option<NatsToken>,
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            replicas: 3,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            credentials_file: None,
            token: None,
        }
    }
}

/// The NATS servers' token from the environment. `Debug` hides it, so no log or panic message can show it.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsToken(String);

impl NatsToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NatsToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NatsToken(<redacted>)")
    }
}

/// Where topics, events and service state live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StorageBackend {
    /// The embedded log and `state.redb` in `storage.data_dir`: one node.
    #[default]
    Embedded,
    /// A NATS JetStream cluster, by its servers' URLs: service nodes keep no state of their own.
    Nats(Vec<String>),
}

impl FromStr for StorageBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "embedded" {
            return Ok(StorageBackend::Embedded);
        }
        let urls: Vec<String> =
            s.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
        if urls.is_empty() {
            return Err("expected \"embedded\" or a comma-separated list of nats://host:port URLs".into());
        }
        for url in &urls {
            // The URL is quoted in the message only once it is known to hold no credentials.
            let Some(rest) = url.strip_prefix("nats://") else {
                return Err("expected \"embedded\" or nats://host:port URLs (comma-separated)".into());
            };
            if rest.contains('@') {
                return Err("NATS URLs must not carry credentials: set ESGF_EVENTS_NATS_TOKEN instead".into());
            }
            let authority = rest.split('/').next().unwrap_or("");
            if authority.is_empty() {
                return Err(format!("{url:?} names no host"));
            }
        }
        Ok(StorageBackend::Nats(urls))
    }
}

impl fmt::Display for StorageBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageBackend::Embedded => f.write_str("embedded"),
            StorageBackend::Nats(urls) => f.write_str(&urls.join(",")),
        }
    }
}

/// The operations endpoints: metrics and maintenance windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsSettings {
    /// Serve `GET /metrics`.
    pub metrics: bool,
    /// The least notice a maintenance window needs unless forced.
    pub maintenance_notice: Duration,
    /// The service's public base URL, for absolute links in feeds (`None`: each request's `Host`) and the
    /// unsubscribe links of announcement mail (`None`: mail goes out without one).
    pub public_url: Option<String>,
    /// Where announcements are mailed from; `None`: no mail.
    pub smtp_url: Option<SmtpUrl>,
    /// Addresses every announcement is mailed to (registered principals' contacts get them too).
    pub announce_to: Vec<String>,
    pub mail_from: String,
}

/// An SMTP URL, which may hold a password: `Debug` never shows more than its scheme.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpUrl(pub String);

impl fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.0.split_once("://").map_or("?", |(scheme, _)| scheme);
        write!(f, "SmtpUrl({scheme}://***)")
    }
}

impl Default for OpsSettings {
    fn default() -> Self {
        OpsSettings {
            metrics: true,
            maintenance_notice: Duration::from_secs(7 * 24 * 3600),
            public_url: None,
            smtp_url: None,
            announce_to: Vec::new(),
            mail_from: "ESGF Event Service <esgf-events@localhost>".to_owned(),
        }
    }
}

/// Delivery of webhook subscriptions. The service's own listen address is always refused as a webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    pub timeout: Duration,
    pub max_attempts: u32,
    pub max_age: Duration,
    /// Host patterns webhook URLs must match (`*.example.org`, a host, an IP, a CIDR network); empty: any.
    pub allow: Vec<String>,
    /// Host patterns webhook URLs must not match.
    pub deny: Vec<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let d = esgf_events_webhooks::WebhookConfig::default();
        WebhookSettings {
            timeout: d.timeout,
            max_attempts: d.max_attempts,
            max_age: d.max_age,
            allow: d.allow,
            deny: d.deny,
        }
    }
}

/// The Kafka protocol endpoint; it runs only when `addr` is set. It shares TLS and access control with HTTP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaSettings {
    pub addr: Option<SocketAddr>,
    /// Host name clients are told to connect to (Kafka's advertised.listeners) [default: the bound IP].
    pub advertised_host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub addr: SocketAddr,
    pub max_event_bytes: usize,
    pub max_batch_events: usize,
    pub max_body_bytes: usize,
    pub max_wait: Duration,
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSettings {
    pub backend: StorageBackend,
    /// Local files: the embedded log and state store, or (NATS backend) just the generated operator token.
    pub data_dir: PathBuf,
    pub durability: DurabilityMode,
    /// Used only when `durability` is relaxed.
    pub relaxed_fsync_interval: Duration,
    pub segment_max_bytes: u64,
    pub segment_max_age: Duration,
    /// Retention of topics created without one.
    pub default_retention: RetentionPeriod,
    pub retention_check_interval: Duration,
    /// How long a published `metadata.event_id` is remembered for idempotent publish; `None`: each topic's
    /// retention.
    pub dedupe_window: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// How long the previous secret keeps working after a rotation.
    pub rotation_grace: Duration,
    /// Unauthenticated requests per second, per client IP.
    pub anonymous_rate: u32,
    pub anonymous_burst: u32,
    pub oidc: Vec<OidcSettings>,
    /// From [`OPERATOR_TOKEN_ENV`]; `None`: the server keeps (or creates) `<data_dir>/operator.token`.
    pub operator_token: Option<OperatorToken>,
}

/// An OAuth2/OIDC issuer whose bearer JWTs are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksLocation,
    /// "sub", "client_id" or "azp": the claim holding the registered principal's OIDC subject.
    pub subject_claim: String,
}

/// Where an issuer's signing keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksLocation {
    File(PathBuf),
    Url(String),
}

/// The claims an OIDC issuer may name its principals by.
pub const SUBJECT_CLAIMS: [&str; 3] = ["sub", "client_id", "azp"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The operator credential from the environment. `Debug` hides it, so no log or panic message can show it.
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorToken(String);

impl OperatorToken {
    /// Checks the shape of `token` (see the module doc); the error never contains the token.
    pub fn parse(token: &str) -> Result<Self, String> {
        let Some(secret) = token.strip_prefix(TOKEN_PREFIX) else {
            return Err(format!(
                "must start with {TOKEN_PREFIX:?}, e.g. {TOKEN_PREFIX}$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' \
                 | tr -d '=')"
            ));
        };
        if secret.trim() != secret || secret.contains(char::is_whitespace) {
            return Err("contains whitespace (a trailing newline from a file?)".into());
        }
        if !secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(
                "may only contain the URL-safe base64 characters A-Z a-z 0-9 - _ after its prefix".into()
            );
        }
        if secret.len() > MAX_OPERATOR_SECRET_CHARS {
            return Err(format!(
                "is too long: at most {MAX_OPERATOR_SECRET_CHARS} characters after {TOKEN_PREFIX:?}"
            ));
        }
        if secret.len() < MIN_OPERATOR_SECRET_CHARS {
            return Err(format!(
                "is too short: it needs at least {MIN_OPERATOR_SECRET_CHARS} random characters after {TOKEN_PREFIX:?}, \
                 it has {}",
                secret.len()
            ));
        }
        Ok(OperatorToken(token.to_owned()))
    }

    /// The secret itself, for handing to the auth layer; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OperatorToken(***)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive.
    pub level: String,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            http: HttpSettings {
                addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
                max_event_bytes: 1 << 20,
                max_batch_events: 10_000,
                max_body_bytes: 32 << 20,
                max_wait: Duration::from_secs(30),
                max_connections: 10_000,
            },
            storage: StorageSettings {
                backend: StorageBackend::Embedded,
                data_dir: PathBuf::from("./data"),
                durability: DurabilityMode::Fsync,
                relaxed_fsync_interval: Duration::from_millis(200),
                segment_max_bytes: 128 << 20,
                segment_max_age: Duration::from_secs(7 * 24 * 3600),
                default_retention: RetentionPeriod::For(Duration::from_secs(90 * 24 * 3600)),
                retention_check_interval: Duration::from_secs(5 * 60),
                dedupe_window: None,
            },
            log: LogSettings { format: LogFormat::Text, level: "info".to_owned() },
            auth: AuthSettings {
                rotation_grace: Duration::ZERO,
                anonymous_rate: 20,
                anonymous_burst: 100,
                oidc: Vec::new(),
                operator_token: None,
            },
            tls: None,
            kafka: KafkaSettings::default(),
            webhooks: WebhookSettings::default(),
            ops: OpsSettings::default(),
            nats: NatsSettings::default(),
            cluster: ClusterSettings::default(),
        }
    }
}

/// When the server acknowledges an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurabilityMode {
    /// After the append's bytes are fsync'd.
    Fsync,
    /// After the append reaches the page cache; fsync'd every `relaxed_fsync_interval`.
    Relaxed,
}

impl FromStr for DurabilityMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fsync" => Ok(DurabilityMode::Fsync),
            "relaxed" => Ok(DurabilityMode::Relaxed),
            _ => Err(format!("expected \"fsync\" or \"relaxed\", got {s:?}")),
        }
    }
}

impl fmt::Display for DurabilityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DurabilityMode::Fsync => "fsync",
            DurabilityMode::Relaxed => "relaxed",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("expected \"text\" or \"json\", got {s:?}")),
        }
    }
}

/// How long records are kept: a humantime duration or `forever`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionPeriod {
    Forever,
    For(Duration),
}

impl RetentionPeriod {
    /// The engine's spelling: `None` is "no age limit".
    pub fn max_age(self) -> Option<Duration> {
        match self {
            RetentionPeriod::Forever => None,
            RetentionPeriod::For(age) => Some(age),
        }
    }
}

impl FromStr for RetentionPeriod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "forever" {
            return Ok(RetentionPeriod::Forever);
        }
        match humantime::parse_duration(s) {
            Ok(age) if age.is_zero() => {
                Err("a retention of zero would delete every event; use e.g. \"1h\"".into())
            }
            Ok(age) => Ok(RetentionPeriod::For(age)),
            Err(e) => Err(format!("expected a duration such as \"90d\" or \"forever\": {e}")),
        }
    }
}

impl fmt::Display for RetentionPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetentionPeriod::Forever => f.write_str("forever"),
            RetentionPeriod::For(age) => f.write_str(&format_duration(*age)),
        }
    }
}

/// A duration in its largest exact unit (`7d`, `90s`, `200ms`), for logs.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s.is_multiple_of(secs) {
            return format!("{}{unit}", s / secs);
        }
    }
    format!("{s}s")
}

/// Why a configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {}: {message}", path.display())]
    ParseFile { path: PathBuf, message: String },
    #[error("config file {} has no `version`; add `version = {CONFIG_VERSION}` at its top", path.display())]
    MissingVersion { path: PathBuf },
    #[error(
        "config file {} has version {found}; this build of esgf-events reads version {CONFIG_VERSION} only",
        path.display()
    )]
    UnsupportedVersion { path: PathBuf, found: i64 },
    #[error("unknown environment variable {name}; the server reads {}", ENV_VARS.join(", "))]
    UnknownEnvVar { name: String },
    #[error("environment variable {name} is not valid UTF-8")]
    EnvNotUnicode { name: String },
    #[error("invalid value {value:?} in environment variable {name}: {reason}")]
    InvalidEnvValue { name: String, value: String, reason: String },
    #[error("both {first} and {second} are set (they mean the same setting); unset one")]
    ConflictingEnvVars { first: &'static str, second: &'static str },
    #[error("invalid setting {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// Its own variant because [`ConfigError::InvalidEnvValue`] quotes the value, and this one is a secret.
    #[error("environment variable {OPERATOR_TOKEN_ENV} is not a usable operator token: it {reason}")]
    InvalidOperatorToken { reason: String },
}

/// The flags of `esgf-events serve`: the highest-precedence configuration layer.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeFlags {
    /// TOML configuration file: `version = 1` and sections [http], [storage], [log], [auth], [tls].
    #[arg(long, value_name = "FILE", env = "ESGF_EVENTS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080]; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Directory of the event log [default: ./data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// "embedded" (default) or NATS JetStream: comma-separated nats://host:port URLs of the cluster.
    #[arg(long, value_name = "BACKEND")]
    pub storage: Option<StorageBackend>,
    /// "fsync" (default: fsync before every acknowledgement) or "relaxed" (a machine crash can lose up to
    /// storage.relaxed_fsync_interval of acknowledged events).
    #[arg(long, value_name = "MODE")]
    pub durability: Option<DurabilityMode>,
    /// "text" (default) or "json", written to stderr.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. "info" or "info,esgf_events_http=debug" [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Also serve the Kafka protocol on this address (SASL/PLAIN; TLS when --tls-cert is set).
    #[arg(long, value_name = "ADDR")]
    pub kafka_addr: Option<SocketAddr>,
    /// This node's unique id among nodes sharing one backend [default: <hostname>-<6 random hex>].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
}

impl ServeFlags {
    fn layer(&self) -> Layer {
        Layer {
            http: HttpLayer { addr: self.http_addr, ..HttpLayer::default() },
            storage: StorageLayer {
                data_dir: self.data_dir.clone(),
                backend: self.storage.clone(),
                durability: self.durability,
                ..StorageLayer::default()
            },
            log: LogLayer { format: self.log_format, level: self.log_level.clone() },
            auth: AuthLayer::default(),
            tls: TlsLayer { cert_file: self.tls_cert.clone(), key_file: self.tls_key.clone() },
            kafka: KafkaLayer { addr: self.kafka_addr, ..KafkaLayer::default() },
            webhooks: WebhooksLayer::default(),
            ops: OpsLayer::default(),
            nats: NatsLayer::default(),
            cluster: ClusterLayer { node_id: self.node_id.clone(), ..ClusterLayer::default() },
            operator_token: None,
            nats_token: None,
        }
    }
}

impl ServeConfig {
    /// Builds the configuration from the file named by `flags.config` (read here), `env` (pass
    /// `std::env::vars_os()`) and `flags`.
    pub fn load(
        flags: &ServeFlags,
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::ReadFile { path: path.clone(), source })?;
                Some((path.as_path(), text))
            }
            None => None,
        };
        Self::resolve(file.as_ref().map(|(path, text)| (*path, text.as_str())), env, flags)
    }

    /// [`ServeConfig::load`] without the file read: `file` is the file's path (for messages) and text.
    pub fn resolve(
        file: Option<(&Path, &str)>,
        env: impl IntoIterator<Item = (OsString, OsString)>,
        flags: &ServeFlags,
    ) -> Result<Self, ConfigError> {
        let mut config = ServeConfig::default();
        // The two TLS files are merged one by one (the file may name the certificate and the environment the
        // key); whether both ended up set is checked once every layer is in.
        let mut tls = TlsLayer::default();
        let mut layers = Vec::with_capacity(3);
        if let Some((path, text)) = file {
            layers.push(parse_file(path, text)?);
        }
        layers.push(env_layer(env)?);
        layers.push(flags.layer());
        for mut layer in layers {
            tls.cert_file = layer.tls.cert_file.take().or(tls.cert_file);
            tls.key_file = layer.tls.key_file.take().or(tls.key_file);
            config.apply(layer);
        }
        config.tls = match (tls.cert_file, tls.key_file) {
            (Some(cert_file), Some(key_file)) => Some(TlsSettings { cert_file, key_file }),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "tls",
                    reason: "cert_file and key_file go together: set both (HTTPS) or neither (plain HTTP)"
                        .into(),
                });
            }
        };
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, layer: Layer) {
        fn set<T, U: Into<T>>(target: &mut T, value: Option<U>) {
            if let Some(value) = value {
                *target = value.into();
            }
        }
        let (h, s, l) = (&mut self.http, &mut self.storage, &mut self.log);
        set(&mut h.addr, layer.http.addr);
        set(&mut h.max_event_bytes, layer.http.max_event_bytes);
        set(&mut h.max_batch_events, layer.http.max_batch_events);
        set(&mut h.max_body_bytes, layer.http.max_body_bytes);
        set(&mut h.max_wait, layer.http.max_wait);
        set(&mut h.max_connections, layer.http.max_connections);
        set(&mut s.data_dir, layer.storage.data_dir);
        set(&mut s.backend, layer.storage.backend);
        set(&mut s.durability, layer.storage.durability);
        set(&mut s.relaxed_fsync_interval, layer.storage.relaxed_fsync_interval);
        set(&mut s.segment_max_bytes, layer.storage.segment_max_bytes);
        set(&mut s.segment_max_age, layer.storage.segment_max_age);
        set(&mut s.default_retention, layer.storage.default_retention);
        set(&mut s.retention_check_interval, layer.storage.retention_check_interval);
        if let Some(window) = layer.storage.dedupe_window {
            s.dedupe_window = Some(window.into());
        }
        set(&mut l.format, layer.log.format);
        set(&mut l.level, layer.log.level);
        if layer.kafka.addr.is_some() {
            self.kafka.addr = layer.kafka.addr;
        }
        if layer.kafka.advertised_host.is_some() {
            self.kafka.advertised_host = layer.kafka.advertised_host;
        }
        let w = &mut self.webhooks;
        set(&mut w.timeout, layer.webhooks.timeout);
        set(&mut w.max_attempts, layer.webhooks.max_attempts);
        set(&mut w.max_age, layer.webhooks.max_age);
        set(&mut w.allow, layer.webhooks.allow);
        set(&mut w.deny, layer.webhooks.deny);
        set(&mut self.ops.metrics, layer.ops.metrics);
        set(&mut self.ops.maintenance_notice, layer.ops.maintenance_notice);
        if layer.ops.public_url.is_some() {
            self.ops.public_url = layer.ops.public_url;
        }
        if let Some(url) = layer.ops.smtp_url {
            self.ops.smtp_url = Some(SmtpUrl(url));
        }
        set(&mut self.ops.announce_to, layer.ops.announce_to);
        set(&mut self.ops.mail_from, layer.ops.mail_from);
        let a = &mut self.auth;
        set(&mut a.rotation_grace, layer.auth.rotation_grace);
        set(&mut a.anonymous_rate, layer.auth.anonymous_rate);
        set(&mut a.anonymous_burst, layer.auth.anonymous_burst);
        if let Some(oidc) = layer.auth.oidc {
            a.oidc = oidc.into_iter().map(OidcLayer::into_settings).collect();
        }
        if layer.operator_token.is_some() {
            a.operator_token = layer.operator_token;
        }
        set(&mut self.nats.replicas, layer.nats.replicas);
        if layer.nats.tls_ca_file.is_some() {
            self.nats.tls_ca_file = layer.nats.tls_ca_file;
        }
        if layer.nats.tls_cert_file.is_some() {
            self.nats.tls_cert_file = layer.nats.tls_cert_file;
        }
        if layer.nats.tls_key_file.is_some() {
            self.nats.tls_key_file = layer.nats.tls_key_file;
        }
        if layer.nats.credentials_file.is_some() {
            self.nats.credentials_file = layer.nats.credentials_file;
        }
        if layer.nats_token.is_some() {
            self.nats.token = layer.nats_token;
        }
        if layer.cluster.node_id.is_some() {
            self.cluster.node_id = layer.cluster.node_id;
        }
        set(&mut self.cluster.lease_ttl, layer.cluster.lease_ttl);
        set(&mut self.cluster.lease_renew, layer.cluster.lease_renew);
    }

    /// Rejects values that parse but cannot work (a zero interval would spin, a zero limit rejects everything).
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key: &'static str, value: u128| {
            if value == 0 {
                Err(ConfigError::Invalid { key, reason: "must be greater than zero".into() })
            } else {
                Ok(())
            }
        };
        let (h, s) = (&self.http, &self.storage);
        positive("http.max_event_bytes", h.max_event_bytes as u128)?;
        positive("http.max_batch_events", h.max_batch_events as u128)?;
        positive("http.max_body_bytes", h.max_body_bytes as u128)?;
        positive("http.max_connections", h.max_connections as u128)?;
        positive("storage.relaxed_fsync_interval", s.relaxed_fsync_interval.as_millis())?;
        positive("storage.segment_max_bytes", u128::from(s.segment_max_bytes))?;
        positive("storage.segment_max_age", s.segment_max_age.as_millis())?;
        if let Some(window) = s.dedupe_window {
            positive("storage.dedupe_window", window.as_millis())?;
        }
        positive("storage.retention_check_interval", s.retention_check_interval.as_millis())?;
        positive("nats.replicas", self.nats.replicas as u128)?;
        let c = &self.cluster;
        if let Some(id) = &c.node_id {
            check_node_id(id).map_err(|reason| ConfigError::Invalid { key: "cluster.node_id", reason })?;
        }
        positive("cluster.lease_renew", c.lease_renew.as_millis())?;
        if c.lease_renew * 2 > c.lease_ttl {
            return Err(ConfigError::Invalid {
                key: "cluster.lease_ttl",
                reason: format!(
                    "must be at least twice cluster.lease_renew ({}), so a holder gets a second try at renewing",
                    format_duration(c.lease_renew)
                ),
            });
        }
        let n = &self.nats;
        for (key, file) in [
            ("nats.tls_ca_file", &n.tls_ca_file),
            ("nats.tls_cert_file", &n.tls_cert_file),
            ("nats.tls_key_file", &n.tls_key_file),
            ("nats.credentials_file", &n.credentials_file),
        ] {
            if file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
                return Err(ConfigError::Invalid { key, reason: "must not be empty".into() });
            }
        }
        if n.tls_cert_file.is_some() != n.tls_key_file.is_some() {
            return Err(ConfigError::Invalid {
                key: "nats.tls_cert_file",
                reason:
                    "a client certificate needs its key: set both nats.tls_cert_file and nats.tls_key_file"
                        .into(),
            });
        }
        if n.credentials_file.is_some() && n.token.is_some() {
            return Err(ConfigError::Invalid {
                key: "nats.credentials_file",
                reason: format!("set either a credentials file or {NATS_TOKEN_ENV}, not both"),
            });
        }
        if s.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid { key: "storage.data_dir", reason: "must not be empty".into() });
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::Invalid { key: "log.level", reason: e.to_string() })?;
        let a = &self.auth;
        positive("auth.anonymous_rate", u128::from(a.anonymous_rate))?;
        positive("auth.anonymous_burst", u128::from(a.anonymous_burst))?;
        if let Some(tls) = &self.tls
            && (tls.cert_file.as_os_str().is_empty() || tls.key_file.as_os_str().is_empty())
        {
            return Err(ConfigError::Invalid { key: "tls", reason: "file names must not be empty".into() });
        }
        if let Some(url) = &self.ops.public_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ConfigError::Invalid {
                key: "ops.public_url",
                reason: "must be an http(s) URL".into(),
            });
        }
        // The URL may hold a password: the reason never repeats it.
        if let Some(SmtpUrl(url)) = &self.ops.smtp_url
            && !(url.starts_with("smtp://") || url.starts_with("smtps://"))
        {
            return Err(ConfigError::Invalid {
                key: "ops.smtp_url",
                reason: "must be an smtp:// or smtps:// URL".into(),
            });
        }
        let w = &self.webhooks;
        positive("webhooks.timeout", w.timeout.as_millis())?;
        positive("webhooks.max_attempts", u128::from(w.max_attempts))?;
        positive("webhooks.max_age", w.max_age.as_millis())?;
        for (key, list) in [("webhooks.allow", &w.allow), ("webhooks.deny", &w.deny)] {
            esgf_events_webhooks::UrlPolicy::new(list, &[], &[])
                .map_err(|e| ConfigError::Invalid { key, reason: format!("pattern {e}") })?;
        }
        let mut issuers = std::collections::BTreeSet::new();
        for oidc in &a.oidc {
            validate_oidc(oidc)?;
            if !issuers.insert(oidc.issuer.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "auth.oidc",
                    reason: format!("issuer {:?} is listed twice", oidc.issuer),
                });
            }
        }
        Ok(())
    }
}

fn validate_oidc(oidc: &OidcSettings) -> Result<(), ConfigError> {
    let invalid = |reason: String| Err(ConfigError::Invalid { key: "auth.oidc", reason });
    if oidc.issuer.is_empty() || oidc.audience.is_empty() {
        return invalid("issuer and audience must not be empty".into());
    }
    if !SUBJECT_CLAIMS.contains(&oidc.subject_claim.as_str()) {
        return invalid(format!(
            "subject_claim of issuer {:?} is {:?}; expected one of {}",
            oidc.issuer,
            oidc.subject_claim,
            SUBJECT_CLAIMS.join(", ")
        ));
    }
    match &oidc.jwks {
        JwksLocation::File(path) if path.as_os_str().is_empty() => {
            invalid(format!("jwks_file of issuer {:?} is empty", oidc.issuer))
        }
        JwksLocation::File(_) => Ok(()),
        JwksLocation::Url(url) => match reqwest::Url::parse(url) {
            // Keys fetched in clear text could be swapped by anyone on the path; loopback is for tests and
            // for a local identity provider.
            Ok(parsed) if parsed.scheme() == "https" => Ok(()),
            Ok(parsed)
                if parsed.scheme() == "http"
                    && matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")) =>
            {
                Ok(())
            }
            Ok(_) => invalid(format!(
                "jwks_url of issuer {:?} must be an https:// URL (http:// only for localhost), got {url:?}",
                oidc.issuer
            )),
            Err(e) => invalid(format!("jwks_url of issuer {:?} is not a URL ({e}): {url:?}", oidc.issuer)),
        },
    }
}

/// One source's settings: `None` leaves the lower layer's value.
#[derive(Debug, Default)]
struct Layer {
    http: HttpLayer,
    storage: StorageLayer,
    log: LogLayer,
    auth: AuthLayer,
    tls: TlsLayer,
    kafka: KafkaLayer,
    webhooks: WebhooksLayer,
    ops: OpsLayer,
    nats: NatsLayer,
    cluster: ClusterLayer,
    /// Environment only.
    operator_token: Option<OperatorToken>,
    /// Environment only.
    nats_token: Option<NatsToken>,
}

/// The file's shape. `version` is optional here only so that its absence gets its own message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLayer {
    version: Option<i64>,
    #[serde(default)]
    http: HttpLayer,
    #[serde(default)]
    storage: StorageLayer,
    #[serde(default)]
    log: LogLayer,
    #[serde(default)]
    auth: AuthLayer,
    #[serde(default)]
    tls: TlsLayer,
    #[serde(default)]
    kafka: KafkaLayer,
    #[serde(default)]
    webhooks: WebhooksLayer,
    #[serde(default)]
    ops: OpsLayer,
    #[serde(default)]
    nats: NatsLayer,
    #[serde(default)]
    cluster: ClusterLayer,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterLayer {
    node_id: Option<String>,
    #[serde(default, deserialize_with = "parsed")]
    lease_ttl: Option<humantime::Duration>,
    #[serde(default, deserialize_with = "parsed")]
    lease_renew: Option<humantime::Duration>,
}

/// No `token`: a secret comes from the environment only, so the key is refused as unknown.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NatsLayer {
    replicas: Option<usize>,
    tls_ca_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    credentials_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpsLayer {
    metrics: Option<bool>,
    #[serde(default, deserialize_with = "parsed")]
    maintenance_notice: Option<humantime::Duration>,
    public_url: Option<String>,
    smtp_url: Option<String>,
    announce_to: Option<Vec<String>>,
    mail_from: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhooksLayer {
    #[serde(default, deserialize_with = "parsed")]
    timeout: Option<humantime::Duration>,
    max_attempts: Option<u32>,
    #[serde(default, deserialize_with = "parsed")]
    max_age: Option<humantime::Duration>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
}

/// A comma-separated list from an environment variable (blank entries ignored).
fn parse_list(name: &str, value: &OsStr) -> Result<Vec<String>, ConfigError> {
    let text = value.to_str().ok_or_else(|| ConfigError::EnvNotUnicode { name: name.to_owned() })?;
    Ok(text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KafkaLayer {
    #[serde(default, deserialize_with = "parsed")]
    addr: Option<SocketAddr>,
    advertised_host: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpLayer {
    #[serde(default, deserialize_with = "parsed")]
    addr: Option<SocketAddr>,
    max_event_bytes: Option<usize>,
    max_batch_events: Option<usize>,
    max_body_bytes: Option<usize>,
    #[serde(default, deserialize_with = "parsed")]
    max_wait: Option<humantime::Duration>,
    max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageLayer {
    #[serde(default, deserialize_with = "parsed")]
    backend: Option<StorageBackend>,
    data_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "parsed")]
    durability: Option<DurabilityMode>,
    #[serde(default, deserialize_with = "parsed")]
    relaxed_fsync_interval: Option<humantime::Duration>,
    segment_max_bytes: Option<u64>,
    #[serde(default, deserialize_with = "parsed")]
    segment_max_age: Option<humantime::Duration>,
    #[serde(default, deserialize_with = "parsed")]
    default_retention: Option<RetentionPeriod>,
    #[serde(default, deserialize_with = "parsed")]
    retention_check_interval: Option<humantime::Duration>,
    #[serde(default, deserialize_with = "parsed")]
    dedupe_window: Option<humantime::Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLayer {
    #[serde(default, deserialize_with = "parsed")]
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthLayer {
    #[serde(default, deserialize_with = "parsed")]
    rotation_grace: Option<humantime::Duration>,
    anonymous_rate: Option<u32>,
    anonymous_burst: Option<u32>,
    oidc: Option<Vec<OidcLayer>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcLayer {
    issuer: String,
    audience: String,
    #[serde(flatten)]
    jwks: JwksLayer,
    subject_claim: Option<String>,
}

/// Exactly one of the two keys: serde names the problem if both or neither are there.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum JwksLayer {
    JwksFile(PathBuf),
    JwksUrl(String),
}

impl OidcLayer {
    fn into_settings(self) -> OidcSettings {
        OidcSettings {
            issuer: self.issuer,
            audience: self.audience,
            jwks: match self.jwks {
                JwksLayer::JwksFile(path) => JwksLocation::File(path),
                JwksLayer::JwksUrl(url) => JwksLocation::Url(url),
            },
            subject_claim: self.subject_claim.unwrap_or_else(|| "sub".to_owned()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsLayer {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

/// A TOML string parsed with the same `FromStr` the environment variables go through, so both accept and
/// reject the same spellings.
fn parsed<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map(Some).map_err(|e| serde::de::Error::custom(format!("invalid value {text:?}: {e}")))
}

fn parse_file(path: &Path, text: &str) -> Result<Layer, ConfigError> {
    let file: FileLayer = toml::from_str(text)
        .map_err(|e| ConfigError::ParseFile { path: path.to_owned(), message: e.to_string() })?;
    match file.version {
        None => return Err(ConfigError::MissingVersion { path: path.to_owned() }),
        Some(v) if v == i64::from(CONFIG_VERSION) => {}
        Some(found) => return Err(ConfigError::UnsupportedVersion { path: path.to_owned(), found }),
    }
    Ok(Layer {
        http: file.http,
        storage: file.storage,
        log: file.log,
        auth: file.auth,
        tls: file.tls,
        kafka: file.kafka,
        webhooks: file.webhooks,
        ops: file.ops,
        nats: file.nats,
        cluster: file.cluster,
        operator_token: None,
        nats_token: None,
    })
}

fn env_layer(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Result<Layer, ConfigError> {
    let mut layer = Layer::default();
    let mut data_dir_from: Option<&'static str> = None;
    let mut backend_from: Option<&'static str> = None;
    let mut rust_log = None;
    for (name, value) in vars {
        if name == "RUST_LOG" {
            rust_log = Some(value);
            continue;
        }
        if !name.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()) {
            continue;
        }
        let Some(name) = name.to_str() else {
            return Err(ConfigError::EnvNotUnicode { name: name.to_string_lossy().into_owned() });
        };
        if CLIENT_ENV_VARS.contains(&name) {
            continue;
        }
        let Some(&known) = ENV_VARS.iter().find(|known| **known == name) else {
            return Err(ConfigError::UnknownEnvVar { name: name.to_owned() });
        };
        if known == OPERATOR_TOKEN_ENV {
            let token =
                value.to_str().ok_or_else(|| ConfigError::EnvNotUnicode { name: known.to_owned() })?;
            layer.operator_token = Some(
                OperatorToken::parse(token).map_err(|reason| ConfigError::InvalidOperatorToken { reason })?,
            );
            continue;
        }
        if known == NATS_TOKEN_ENV {
            let token =
                value.to_str().ok_or_else(|| ConfigError::EnvNotUnicode { name: known.to_owned() })?;
            // The value is never quoted: it is a secret.
            if token.trim().is_empty() {
                return Err(ConfigError::Invalid { key: NATS_TOKEN_ENV, reason: "must not be empty".into() });
            }
            layer.nats_token = Some(NatsToken(token.to_owned()));
            continue;
        }
        if known == BACKEND_ALIAS || known == "ESGF_EVENTS_STORAGE_BACKEND" {
            if let Some(first) = backend_from {
                return Err(ConfigError::ConflictingEnvVars { first, second: known });
            }
            backend_from = Some(known);
        }
        if known == DATA_DIR_ALIAS || known == "ESGF_EVENTS_STORAGE_DATA_DIR" {
            if let Some(first) = data_dir_from {
                return Err(ConfigError::ConflictingEnvVars { first, second: known });
            }
            data_dir_from = Some(known);
        }
        set_from_env(&mut layer, known, &value)?;
    }
    if let Some(filter) = rust_log.filter(|v| !v.is_empty()) {
        layer.log.level = Some(parse_env("RUST_LOG", &filter)?);
    }
    Ok(layer)
}

fn parse_env<T>(name: &str, value: &OsStr) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = value.to_str().ok_or_else(|| ConfigError::EnvNotUnicode { name: name.to_owned() })?;
    text.parse().map_err(|e: T::Err| ConfigError::InvalidEnvValue {
        name: name.to_owned(),
        value: text.to_owned(),
        reason: e.to_string(),
    })
}

fn set_from_env(layer: &mut Layer, name: &'static str, value: &OsStr) -> Result<(), ConfigError> {
    let (h, s, l) = (&mut layer.http, &mut layer.storage, &mut layer.log);
    let (a, t) = (&mut layer.auth, &mut layer.tls);
    let v = value;
    match name {
        "ESGF_EVENTS_HTTP_ADDR" => h.addr = Some(parse_env(name, v)?),
        "ESGF_EVENTS_HTTP_MAX_EVENT_BYTES" => h.max_event_bytes = Some(parse_env(name, v)?),
        "ESGF_EVENTS_HTTP_MAX_BATCH_EVENTS" => h.max_batch_events = Some(parse_env(name, v)?),
        "ESGF_EVENTS_HTTP_MAX_BODY_BYTES" => h.max_body_bytes = Some(parse_env(name, v)?),
        "ESGF_EVENTS_HTTP_MAX_WAIT" => h.max_wait = Some(parse_env(name, v)?),
        "ESGF_EVENTS_HTTP_MAX_CONNECTIONS" => h.max_connections = Some(parse_env(name, v)?),
        // A path need not be UTF-8.
        "ESGF_EVENTS_STORAGE_DATA_DIR" | DATA_DIR_ALIAS => s.data_dir = Some(PathBuf::from(value)),
        "ESGF_EVENTS_STORAGE_BACKEND" | BACKEND_ALIAS => s.backend = Some(parse_env(name, v)?),
        "ESGF_EVENTS_NATS_REPLICAS" => layer.nats.replicas = Some(parse_env(name, v)?),
        "ESGF_EVENTS_NATS_TLS_CA_FILE" => layer.nats.tls_ca_file = Some(PathBuf::from(value)),
        "ESGF_EVENTS_NATS_TLS_CERT_FILE" => layer.nats.tls_cert_file = Some(PathBuf::from(value)),
        "ESGF_EVENTS_NATS_TLS_KEY_FILE" => layer.nats.tls_key_file = Some(PathBuf::from(value)),
        "ESGF_EVENTS_NATS_CREDENTIALS_FILE" => layer.nats.credentials_file = Some(PathBuf::from(value)),
        "ESGF_EVENTS_STORAGE_DURABILITY" => s.durability = Some(parse_env(name, v)?),
        "ESGF_EVENTS_STORAGE_RELAXED_FSYNC_INTERVAL" => s.relaxed_fsync_interval = Some(parse_env(name, v)?),
        "ESGF_EVENTS_STORAGE_SEGMENT_MAX_BYTES" => s.segment_max_bytes = Some(parse_env(name, v)?),
        "ESGF_EVENTS_STORAGE_SEGMENT_MAX_AGE" => s.segment_max_age = Some(parse_env(name, v)?),
        "ESGF_EVENTS_STORAGE_DEFAULT_RETENTION" => s.default_retention = Some(parse_env(name, v)?),
        "ESGF_EVENTS_STORAGE_RETENTION_CHECK_INTERVAL" => {
            s.retention_check_interval = Some(parse_env(name, v)?);
        }
        "ESGF_EVENTS_STORAGE_DEDUPE_WINDOW" => s.dedupe_window = Some(parse_env(name, v)?),
        "ESGF_EVENTS_LOG_FORMAT" => l.format = Some(parse_env(name, v)?),
        "ESGF_EVENTS_LOG_LEVEL" => l.level = Some(parse_env(name, v)?),
        "ESGF_EVENTS_AUTH_ROTATION_GRACE" => a.rotation_grace = Some(parse_env(name, v)?),
        "ESGF_EVENTS_AUTH_ANONYMOUS_RATE" => a.anonymous_rate = Some(parse_env(name, v)?),
        "ESGF_EVENTS_AUTH_ANONYMOUS_BURST" => a.anonymous_burst = Some(parse_env(name, v)?),
        "ESGF_EVENTS_TLS_CERT_FILE" => t.cert_file = Some(PathBuf::from(value)),
        "ESGF_EVENTS_TLS_KEY_FILE" => t.key_file = Some(PathBuf::from(value)),
        "ESGF_EVENTS_KAFKA_ADDR" => layer.kafka.addr = Some(parse_env(name, v)?),
        "ESGF_EVENTS_KAFKA_ADVERTISED_HOST" => layer.kafka.advertised_host = Some(parse_env(name, v)?),
        "ESGF_EVENTS_NODE_ID" => layer.cluster.node_id = Some(parse_env(name, v)?),
        "ESGF_EVENTS_CLUSTER_LEASE_TTL" => layer.cluster.lease_ttl = Some(parse_env(name, v)?),
        "ESGF_EVENTS_CLUSTER_LEASE_RENEW" => layer.cluster.lease_renew = Some(parse_env(name, v)?),
        "ESGF_EVENTS_WEBHOOKS_TIMEOUT" => layer.webhooks.timeout = Some(parse_env(name, v)?),
        "ESGF_EVENTS_WEBHOOKS_MAX_ATTEMPTS" => layer.webhooks.max_attempts = Some(parse_env(name, v)?),
        "ESGF_EVENTS_WEBHOOKS_MAX_AGE" => layer.webhooks.max_age = Some(parse_env(name, v)?),
        "ESGF_EVENTS_WEBHOOKS_ALLOW" => layer.webhooks.allow = Some(parse_list(name, v)?),
        "ESGF_EVENTS_WEBHOOKS_DENY" => layer.webhooks.deny = Some(parse_list(name, v)?),
        "ESGF_EVENTS_OPS_METRICS" => layer.ops.metrics = Some(parse_env(name, v)?),
        "ESGF_EVENTS_OPS_MAINTENANCE_NOTICE" => layer.ops.maintenance_notice = Some(parse_env(name, v)?),
        "ESGF_EVENTS_OPS_PUBLIC_URL" => layer.ops.public_url = Some(parse_env(name, v)?),
        // The names the issue gives operators (no section part).
        "ESGF_EVENTS_SMTP_URL" => {
            let text = v.to_str().ok_or_else(|| ConfigError::EnvNotUnicode { name: name.to_owned() })?;
            layer.ops.smtp_url = Some(text.to_owned());
        }
        "ESGF_EVENTS_ANNOUNCE_TO" => layer.ops.announce_to = Some(parse_list(name, v)?),
        "ESGF_EVENTS_OPS_MAIL_FROM" => layer.ops.mail_from = Some(parse_env(name, v)?),
        // ENV_VARS and this match list the same names; the test `every_listed_env_var_is_read` keeps them so.
        _ => return Err(ConfigError::UnknownEnvVar { name: name.to_owned() }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect()
    }

    fn from_file(text: &str) -> Result<ServeConfig, ConfigError> {
        ServeConfig::resolve(Some((Path::new("test.toml"), text)), env(&[]), &ServeFlags::default())
    }

    #[test]
    fn no_sources_gives_the_documented_defaults() {
        let config = ServeConfig::resolve(None, env(&[]), &ServeFlags::default()).unwrap();
        assert_eq!(config, ServeConfig::default());
        assert_eq!(config.http.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.storage.durability, DurabilityMode::Fsync);
        assert_eq!(config.storage.default_retention.to_string(), "90d");
        assert_eq!(config.storage.segment_max_age, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn full_file_sets_every_key() {
        let text = r#"
            version = 1
            [http]
            addr = "0.0.0.0:9000"
            max_event_bytes = 2048
            max_batch_events = 10
            max_body_bytes = 65536
            max_wait = "5s"
            max_connections = 7
            [storage]
            data_dir = "/var/lib/esgf"
            durability = "relaxed"
            relaxed_fsync_interval = "50ms"
            segment_max_bytes = 1000000
            segment_max_age = "1d"
            default_retention = "forever"
            retention_check_interval = "1m"
            [log]
            format = "json"
            level = "debug"
        "#;
        let c = from_file(text).unwrap();
        assert_eq!(c.http.addr.to_string(), "0.0.0.0:9000");
        assert_eq!(
            (c.http.max_event_bytes, c.http.max_batch_events, c.http.max_body_bytes, c.http.max_connections),
            (2048, 10, 65536, 7)
        );
        assert_eq!(c.http.max_wait, Duration::from_secs(5));
        assert_eq!(c.storage.data_dir, PathBuf::from("/var/lib/esgf"));
        assert_eq!(c.storage.durability, DurabilityMode::Relaxed);
        assert_eq!(c.storage.relaxed_fsync_interval, Duration::from_millis(50));
        assert_eq!(c.storage.segment_max_bytes, 1_000_000);
        assert_eq!(c.storage.segment_max_age, Duration::from_secs(86_400));
        assert_eq!(c.storage.default_retention, RetentionPeriod::Forever);
        assert_eq!(c.storage.retention_check_interval, Duration::from_secs(60));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "debug");
    }

    #[test]
    fn flags_beat_env_which_beats_file_which_beats_defaults() {
        let file = r#"
            version = 1
            [http]
            addr = "127.0.0.1:1111"
            max_wait = "10s"
            [storage]
            data_dir = "/from/file"
            durability = "relaxed"
            segment_max_bytes = 4096
        "#;
        let vars = env(&[
            ("ESGF_EVENTS_HTTP_ADDR", "127.0.0.1:2222"),
            ("ESGF_EVENTS_DATA_DIR", "/from/env"),
            ("ESGF_EVENTS_HTTP_MAX_WAIT", "20s"),
        ]);
        let flags =
            ServeFlags { http_addr: Some("127.0.0.1:3333".parse().unwrap()), ..ServeFlags::default() };
        let c = ServeConfig::resolve(Some((Path::new("f.toml"), file)), vars, &flags).unwrap();
        assert_eq!(c.http.addr.port(), 3333, "flag beats env and file");
        assert_eq!(c.storage.data_dir, PathBuf::from("/from/env"), "env beats file");
        assert_eq!(c.http.max_wait, Duration::from_secs(20), "env beats file");
        assert_eq!(c.storage.durability, DurabilityMode::Relaxed, "file beats default");
        assert_eq!(c.storage.segment_max_bytes, 4096, "file beats default");
        assert_eq!(c.http.max_connections, 10_000, "default when nobody sets it");
    }

    #[test]
    fn unknown_key_in_a_section_is_rejected_naming_it() {
        let err = from_file("version = 1\n[storage]\ndurabilty = \"relaxed\"\n").unwrap_err();
        assert!(matches!(err, ConfigError::ParseFile { .. }), "{err:?}");
        assert!(err.to_string().contains("durabilty"), "{err}");
    }

    #[test]
    fn unknown_top_level_key_and_unknown_section_are_rejected() {
        let err = from_file("version = 1\nlisten = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let err = from_file("version = 1\n[replication]\nport = 4222\n").unwrap_err();
        assert!(err.to_string().contains("replication"), "{err}");
        let err = from_file("version = 1\n[kafka]\nport = 9092\n").unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn file_without_version_is_rejected() {
        let err = from_file("[http]\naddr = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(matches!(err, ConfigError::MissingVersion { .. }), "{err:?}");
        assert!(err.to_string().contains("version = 1"), "{err}");
    }

    #[test]
    fn other_versions_are_rejected() {
        for (text, found) in [("version = 2", 2), ("version = 0", 0), ("version = -1", -1)] {
            match from_file(text).unwrap_err() {
                ConfigError::UnsupportedVersion { found: f, .. } => assert_eq!(f, found),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(from_file("version = \"1\"").unwrap_err(), ConfigError::ParseFile { .. }));
    }

    #[test]
    fn bad_values_in_the_file_are_rejected_naming_the_key() {
        for (text, needle) in [
            ("[http]\naddr = \"localhost\"", "addr"),
            ("[http]\nmax_wait = \"30 parsecs\"", "max_wait"),
            ("[http]\nmax_event_bytes = -5", "max_event_bytes"),
            ("[http]\nmax_event_bytes = \"1MiB\"", "max_event_bytes"),
            ("[storage]\ndurability = \"sometimes\"", "durability"),
            ("[storage]\ndefault_retention = \"0s\"", "default_retention"),
            ("[log]\nformat = \"xml\"", "format"),
            ("[storage\n", "storage"),
        ] {
            let err = from_file(&format!("version = 1\n{text}\n")).unwrap_err();
            assert!(matches!(err, ConfigError::ParseFile { .. }), "{text}: {err:?}");
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn values_that_parse_but_cannot_work_are_rejected() {
        for (text, key) in [
            ("[storage]\nretention_check_interval = \"0s\"", "storage.retention_check_interval"),
            ("[http]\nmax_connections = 0", "http.max_connections"),
            ("[storage]\nsegment_max_bytes = 0", "storage.segment_max_bytes"),
            ("[log]\nlevel = \"info,[[[\"", "log.level"),
        ] {
            match from_file(&format!("version = 1\n{text}\n")).unwrap_err() {
                ConfigError::Invalid { key: k, .. } => assert_eq!(k, key),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_esgf_events_env_var_is_rejected() {
        let err = ServeConfig::resolve(None, env(&[("ESGF_EVENTS_HTTP_ADR", "x")]), &ServeFlags::default())
            .unwrap_err();
        assert!(
            matches!(&err, ConfigError::UnknownEnvVar { name } if name == "ESGF_EVENTS_HTTP_ADR"),
            "{err:?}"
        );
        assert!(err.to_string().contains("ESGF_EVENTS_HTTP_ADDR"), "lists the known ones: {err}");
    }

    #[test]
    fn client_side_and_foreign_env_vars_are_ignored() {
        let vars = env(&[
            ("ESGF_EVENTS_SERVER", "http://elsewhere"),
            ("ESGF_EVENTS_TOKEN", "secret"),
            ("ESGF_EVENTS_TOKEN_FILE", "/t"),
            ("ESGF_EVENTS_CA_CERT", "/ca.pem"),
            ("ESGF_EVENTS_CONFIG", "/nope.toml"),
            ("PATH", "/bin"),
            ("ESGF_EVENTSX", "1"),
        ]);
        assert_eq!(ServeConfig::resolve(None, vars, &ServeFlags::default()).unwrap(), ServeConfig::default());
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let err = ServeConfig::resolve(
            None,
            env(&[("ESGF_EVENTS_STORAGE_DURABILITY", "eventually")]),
            &ServeFlags::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ConfigError::InvalidEnvValue { name, .. } if name == "ESGF_EVENTS_STORAGE_DURABILITY"),
            "{err:?}"
        );
        assert!(err.to_string().contains("eventually"), "{err}");
    }

    #[test]
    fn data_dir_alias_and_long_name_together_conflict() {
        let vars = env(&[("ESGF_EVENTS_DATA_DIR", "/a"), ("ESGF_EVENTS_STORAGE_DATA_DIR", "/b")]);
        let err = ServeConfig::resolve(None, vars, &ServeFlags::default()).unwrap_err();
        assert!(matches!(err, ConfigError::ConflictingEnvVars { .. }), "{err:?}");
    }

    #[test]
    fn every_listed_env_var_is_read() {
        let samples = [
            ("ESGF_EVENTS_HTTP_ADDR", "127.0.0.1:1"),
            ("ESGF_EVENTS_HTTP_MAX_EVENT_BYTES", "1"),
            ("ESGF_EVENTS_HTTP_MAX_BATCH_EVENTS", "1"),
            ("ESGF_EVENTS_HTTP_MAX_BODY_BYTES", "1"),
            ("ESGF_EVENTS_HTTP_MAX_WAIT", "1s"),
            ("ESGF_EVENTS_HTTP_MAX_CONNECTIONS", "1"),
            ("ESGF_EVENTS_STORAGE_DATA_DIR", "/d"),
            ("ESGF_EVENTS_DATA_DIR", "/d"),
            ("ESGF_EVENTS_STORAGE_BACKEND", "nats://n1:4222"),
            ("ESGF_EVENTS_STORAGE", "nats://n1:4222,nats://n2:4222"),
            ("ESGF_EVENTS_NATS_REPLICAS", "1"),
            ("ESGF_EVENTS_NATS_TLS_CA_FILE", "/ca.pem"),
            ("ESGF_EVENTS_NATS_TLS_CERT_FILE", "/nc.pem"),
            ("ESGF_EVENTS_NATS_TLS_KEY_FILE", "/nc.key"),
            ("ESGF_EVENTS_NATS_CREDENTIALS_FILE", "/e.creds"),
            (NATS_TOKEN_ENV, "nats-secret"),
            ("ESGF_EVENTS_STORAGE_DURABILITY", "relaxed"),
            ("ESGF_EVENTS_STORAGE_RELAXED_FSYNC_INTERVAL", "1s"),
            ("ESGF_EVENTS_STORAGE_SEGMENT_MAX_BYTES", "1"),
            ("ESGF_EVENTS_STORAGE_SEGMENT_MAX_AGE", "1h"),
            ("ESGF_EVENTS_STORAGE_DEFAULT_RETENTION", "forever"),
            ("ESGF_EVENTS_STORAGE_RETENTION_CHECK_INTERVAL", "1s"),
            ("ESGF_EVENTS_LOG_FORMAT", "json"),
            ("ESGF_EVENTS_LOG_LEVEL", "warn"),
            ("ESGF_EVENTS_AUTH_ROTATION_GRACE", "1h"),
            ("ESGF_EVENTS_AUTH_ANONYMOUS_RATE", "5"),
            ("ESGF_EVENTS_AUTH_ANONYMOUS_BURST", "5"),
            // The TLS files only count together; `tls_files_are_merged_across_layers` covers them one by one.
            ("ESGF_EVENTS_TLS_CERT_FILE", "/c"),
            ("ESGF_EVENTS_TLS_KEY_FILE", "/k"),
            (OPERATOR_TOKEN_ENV, TOKEN),
            ("ESGF_EVENTS_KAFKA_ADDR", "127.0.0.1:9092"),
            ("ESGF_EVENTS_KAFKA_ADVERTISED_HOST", "events.example.org"),
            ("ESGF_EVENTS_NODE_ID", "east-1"),
            ("ESGF_EVENTS_CLUSTER_LEASE_TTL", "1m"),
            ("ESGF_EVENTS_CLUSTER_LEASE_RENEW", "1s"),
            ("ESGF_EVENTS_WEBHOOKS_TIMEOUT", "3s"),
            ("ESGF_EVENTS_WEBHOOKS_MAX_ATTEMPTS", "3"),
            ("ESGF_EVENTS_WEBHOOKS_MAX_AGE", "1h"),
            ("ESGF_EVENTS_WEBHOOKS_ALLOW", "*.example.org, 127.0.0.1"),
            ("ESGF_EVENTS_WEBHOOKS_DENY", "10.0.0.0/8"),
            ("ESGF_EVENTS_OPS_METRICS", "false"),
            ("ESGF_EVENTS_OPS_MAINTENANCE_NOTICE", "1d"),
            ("ESGF_EVENTS_OPS_PUBLIC_URL", "https://events.example.org"),
            ("ESGF_EVENTS_SMTP_URL", "smtp://127.0.0.1:2525"),
            ("ESGF_EVENTS_OPS_MAIL_FROM", "events@example.org"),
            ("ESGF_EVENTS_ANNOUNCE_TO", "a@example.org, b@example.org"),
        ];
        assert_eq!(samples.len(), ENV_VARS.len());
        for (name, value) in samples {
            assert!(ENV_VARS.contains(&name), "{name}");
            let mut vars = vec![(name, value)];
            match name {
                "ESGF_EVENTS_TLS_CERT_FILE" => vars.push(("ESGF_EVENTS_TLS_KEY_FILE", "/k")),
                "ESGF_EVENTS_TLS_KEY_FILE" => vars.push(("ESGF_EVENTS_TLS_CERT_FILE", "/c")),
                "ESGF_EVENTS_NATS_TLS_CERT_FILE" => vars.push(("ESGF_EVENTS_NATS_TLS_KEY_FILE", "/k")),
                "ESGF_EVENTS_NATS_TLS_KEY_FILE" => vars.push(("ESGF_EVENTS_NATS_TLS_CERT_FILE", "/c")),
                _ => {}
            }
            let c = ServeConfig::resolve(None, env(&vars), &ServeFlags::default()).unwrap();
            assert_ne!(c, ServeConfig::default(), "{name} changed nothing");
        }
    }

    #[test]
    fn rust_log_replaces_the_level_but_a_flag_still_wins() {
        let vars = || env(&[("ESGF_EVENTS_LOG_LEVEL", "warn"), ("RUST_LOG", "debug")]);
        let c = ServeConfig::resolve(None, vars(), &ServeFlags::default()).unwrap();
        assert_eq!(c.log.level, "debug");
        let flags = ServeFlags { log_level: Some("error".into()), ..ServeFlags::default() };
        assert_eq!(ServeConfig::resolve(None, vars(), &flags).unwrap().log.level, "error");
        let empty = ServeConfig::resolve(None, env(&[("RUST_LOG", "")]), &ServeFlags::default()).unwrap();
        assert_eq!(empty.log.level, "info", "an empty RUST_LOG counts as unset");
    }

    #[test]
    fn load_reads_the_file_named_by_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esgf.toml");
        std::fs::write(&path, "version = 1\n[storage]\ndata_dir = \"/srv/esgf\"\n").unwrap();
        let flags = ServeFlags { config: Some(path.clone()), ..ServeFlags::default() };
        assert_eq!(ServeConfig::load(&flags, env(&[])).unwrap().storage.data_dir, PathBuf::from("/srv/esgf"));

        let missing = ServeFlags { config: Some(dir.path().join("absent.toml")), ..ServeFlags::default() };
        let err = ServeConfig::load(&missing, env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::ReadFile { .. }), "{err:?}");
    }

    /// Shaped like the tokens the server issues: prefix + 43 URL-safe base64 characters.
    const TOKEN: &str = "esgfev_Q2hhbmdlIG1lOiB0aGlzIGlzIGEgdGVzdCB0b2tlbiAhISEhISE";

    #[test]
    fn auth_and_tls_sections_set_every_key() {
        let text = r#"
            version = 1
            [auth]
            rotation_grace = "10m"
            anonymous_rate = 5
            anonymous_burst = 50
            [[auth.oidc]]
            issuer = "https://auth.globus.org"
            audience = "esgf-events"
            jwks_url = "https://auth.globus.org/jwk.json"
            subject_claim = "client_id"
            [[auth.oidc]]
            issuer = "https://idp.example.org"
            audience = "esgf"
            jwks_file = "/etc/esgf/jwks.json"
            [tls]
            cert_file = "/etc/esgf/cert.pem"
            key_file = "/etc/esgf/key.pem"
        "#;
        let c = from_file(text).unwrap();
        assert_eq!(c.auth.rotation_grace, Duration::from_secs(600));
        assert_eq!((c.auth.anonymous_rate, c.auth.anonymous_burst), (5, 50));
        assert_eq!(c.auth.oidc.len(), 2);
        assert_eq!(c.auth.oidc[0].jwks, JwksLocation::Url("https://auth.globus.org/jwk.json".into()));
        assert_eq!(c.auth.oidc[0].subject_claim, "client_id");
        assert_eq!(c.auth.oidc[1].jwks, JwksLocation::File("/etc/esgf/jwks.json".into()));
        assert_eq!(c.auth.oidc[1].subject_claim, "sub", "the default claim");
        assert_eq!(
            c.tls,
            Some(TlsSettings {
                cert_file: "/etc/esgf/cert.pem".into(),
                key_file: "/etc/esgf/key.pem".into()
            })
        );
    }

    #[test]
    fn auth_defaults_are_no_grace_and_twenty_anonymous_requests_per_second() {
        let c = ServeConfig::default();
        assert_eq!(c.auth.rotation_grace, Duration::ZERO);
        assert_eq!((c.auth.anonymous_rate, c.auth.anonymous_burst), (20, 100));
        assert!(c.auth.oidc.is_empty() && c.auth.operator_token.is_none() && c.tls.is_none());
    }

    #[test]
    fn oidc_issuer_needs_exactly_one_jwks_source_and_a_known_claim() {
        let entry = |body: &str| {
            from_file(&format!(
                "version = 1\n[[auth.oidc]]\nissuer = \"https://i\"\naudience = \"a\"\n{body}\n"
            ))
        };
        assert!(entry(r#"jwks_url = "https://i/jwks""#).is_ok());
        assert!(entry(r#"jwks_url = "http://localhost:9/jwks""#).is_ok(), "a local identity provider");
        for body in [
            "",
            "jwks_url = \"https://i/jwks\"\njwks_file = \"/j\"",
            "jwks_url = \"http://idp.example.org/jwks\"",
            "jwks_url = \"not a url\"",
            "jwks_file = \"/j\"\nsubject_claim = \"email\"",
            "jwks_file = \"/j\"\nsecret = \"x\"",
        ] {
            let err = entry(body).unwrap_err();
            assert!(
                matches!(err, ConfigError::ParseFile { .. } | ConfigError::Invalid { key: "auth.oidc", .. }),
                "{body}: {err:?}"
            );
        }
        let twice = "version = 1\n[[auth.oidc]]\nissuer = \"https://i\"\naudience = \"a\"\njwks_file = \"/j\"\n\
                     [[auth.oidc]]\nissuer = \"https://i\"\naudience = \"b\"\njwks_file = \"/k\"\n";
        assert!(from_file(twice).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn tls_files_are_merged_across_layers_and_must_come_together() {
        let file = "version = 1\n[tls]\ncert_file = \"/file/cert.pem\"\n";
        let vars = env(&[("ESGF_EVENTS_TLS_KEY_FILE", "/env/key.pem")]);
        let c =
            ServeConfig::resolve(Some((Path::new("f.toml"), file)), vars, &ServeFlags::default()).unwrap();
        assert_eq!(
            c.tls,
            Some(TlsSettings { cert_file: "/file/cert.pem".into(), key_file: "/env/key.pem".into() })
        );

        let flags = ServeFlags {
            tls_cert: Some("/flag/cert.pem".into()),
            tls_key: Some("/flag/key.pem".into()),
            ..ServeFlags::default()
        };
        let vars = env(&[("ESGF_EVENTS_TLS_CERT_FILE", "/env/c"), ("ESGF_EVENTS_TLS_KEY_FILE", "/env/k")]);
        let c = ServeConfig::resolve(None, vars, &flags).unwrap();
        assert_eq!(c.tls.unwrap().cert_file, PathBuf::from("/flag/cert.pem"), "flags win");

        for lone in ["ESGF_EVENTS_TLS_CERT_FILE", "ESGF_EVENTS_TLS_KEY_FILE"] {
            let err =
                ServeConfig::resolve(None, env(&[(lone, "/x.pem")]), &ServeFlags::default()).unwrap_err();
            assert!(matches!(err, ConfigError::Invalid { key: "tls", .. }), "{lone}: {err:?}");
        }
    }

    #[test]
    fn operator_token_comes_from_the_environment_and_never_shows() {
        let c =
            ServeConfig::resolve(None, env(&[(OPERATOR_TOKEN_ENV, TOKEN)]), &ServeFlags::default()).unwrap();
        let token = c.auth.operator_token.as_ref().expect("token");
        assert_eq!(token.expose(), TOKEN);
        assert!(!format!("{c:?}").contains(&TOKEN[7..]), "Debug must hide the token");

        let err = from_file(&format!("version = 1\n[auth]\noperator_token = \"{TOKEN}\"\n")).unwrap_err();
        assert!(matches!(err, ConfigError::ParseFile { .. }), "not from the file: {err:?}");
    }

    #[test]
    fn weak_or_malformed_operator_tokens_are_refused_without_quoting_them() {
        let short = format!("{TOKEN_PREFIX}{}", "A".repeat(MIN_OPERATOR_SECRET_CHARS - 1));
        let no_prefix = TOKEN.replacen("esgfev_", "token_", 1);
        let newline = format!("{TOKEN}\n");
        let bad_chars = format!("{TOKEN}+/=");
        for bad in [short.as_str(), no_prefix.as_str(), newline.as_str(), bad_chars.as_str(), "", "esgfev_"] {
            let err = ServeConfig::resolve(None, env(&[(OPERATOR_TOKEN_ENV, bad)]), &ServeFlags::default())
                .unwrap_err();
            assert!(matches!(err, ConfigError::InvalidOperatorToken { .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains(OPERATOR_TOKEN_ENV), "{text}");
            if bad.len() > TOKEN_PREFIX.len() + 8 {
                assert!(
                    !text.contains(&bad[TOKEN_PREFIX.len()..TOKEN_PREFIX.len() + 8]),
                    "quotes it: {text}"
                );
            }
        }
        let exact = format!("{TOKEN_PREFIX}{}", "A".repeat(MIN_OPERATOR_SECRET_CHARS));
        assert!(OperatorToken::parse(&exact).is_ok());
    }

    #[test]
    fn ops_section_sets_every_key_and_the_environment_overrides_it() {
        let text = "version = 1\n[ops]\nmetrics = false\nmaintenance_notice = \"2d\"\n\
                    public_url = \"https://events.example.org\"\n";
        let c = from_file(text).unwrap();
        assert_eq!(
            c.ops,
            OpsSettings {
                metrics: false,
                maintenance_notice: Duration::from_secs(2 * 86_400),
                public_url: Some("https://events.example.org".into()),
                ..OpsSettings::default()
            }
        );
        let vars = env(&[("ESGF_EVENTS_OPS_METRICS", "false"), ("ESGF_EVENTS_OPS_MAINTENANCE_NOTICE", "1h")]);
        let c = ServeConfig::resolve(None, vars, &ServeFlags::default()).unwrap();
        assert_eq!((c.ops.metrics, c.ops.maintenance_notice), (false, Duration::from_secs(3600)));
        assert_eq!(ServeConfig::default().ops.maintenance_notice, Duration::from_secs(7 * 86_400));
        let err = from_file("version = 1\n[ops]\npublic_url = \"events.example.org\"\n").unwrap_err();
        assert!(err.to_string().contains("ops.public_url"), "{err}");
        let c = from_file(
            "version = 1\n[ops]\nsmtp_url = \"smtps://u:secret@mail.example.org\"\nannounce_to = [\"a@x.org\"]\n",
        )
        .unwrap();
        assert_eq!(c.ops.announce_to, ["a@x.org"]);
        assert!(!format!("{c:?}").contains("secret"), "the SMTP password must not show in Debug");
        let err = from_file("version = 1\n[ops]\nsmtp_url = \"http://u:secret@x\"\n").unwrap_err();
        assert!(err.to_string().contains("ops.smtp_url") && !err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn webhooks_section_sets_every_key_and_lists_come_comma_separated_from_the_environment() {
        let text = "version = 1\n[webhooks]\ntimeout = \"3s\"\nmax_attempts = 4\nmax_age = \"2h\"\n\
                    allow = [\"*.example.org\", \"127.0.0.1\"]\ndeny = [\"10.0.0.0/8\"]\n";
        let c = from_file(text).unwrap();
        assert_eq!(
            c.webhooks,
            WebhookSettings {
                timeout: Duration::from_secs(3),
                max_attempts: 4,
                max_age: Duration::from_secs(7200),
                allow: vec!["*.example.org".into(), "127.0.0.1".into()],
                deny: vec!["10.0.0.0/8".into()],
            }
        );
        let vars = env(&[("ESGF_EVENTS_WEBHOOKS_DENY", " 10.0.0.0/8 ,, fd00::/8 ")]);
        let c = ServeConfig::resolve(None, vars, &ServeFlags::default()).unwrap();
        assert_eq!(c.webhooks.deny, vec!["10.0.0.0/8".to_owned(), "fd00::/8".to_owned()]);
        let d = ServeConfig::default().webhooks;
        assert_eq!(
            (d.timeout, d.max_attempts, d.max_age),
            (Duration::from_secs(10), 8, Duration::from_secs(86_400))
        );
        assert!(d.allow.is_empty() && d.deny.is_empty(), "default: any host");
    }

    #[test]
    fn unusable_webhook_settings_are_refused_naming_the_key() {
        for (text, key) in [
            ("max_attempts = 0", "webhooks.max_attempts"),
            ("timeout = \"0s\"", "webhooks.timeout"),
            ("allow = [\"a.*.org\"]", "webhooks.allow"),
            ("deny = [\"10.0.0.0/40\"]", "webhooks.deny"),
        ] {
            match from_file(&format!("version = 1\n[webhooks]\n{text}\n")).unwrap_err() {
                ConfigError::Invalid { key: k, .. } => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn zero_anonymous_rate_is_refused() {
        let err = from_file("version = 1\n[auth]\nanonymous_rate = 0\n").unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { key: "auth.anonymous_rate", .. }), "{err:?}");
    }

    #[test]
    fn storage_backend_defaults_to_embedded_and_takes_nats_urls_from_file_env_alias_and_flag() {
        let c = ServeConfig::resolve(None, env(&[]), &ServeFlags::default()).unwrap();
        assert_eq!(c.storage.backend, StorageBackend::Embedded);
        assert_eq!(c.nats, NatsSettings::default());

        let file = r#"
            version = 1
            [storage]
            backend = "nats://a:4222, nats://b:4222"
            [nats]
            replicas = 1
            tls_ca_file = "/etc/nats-ca.pem"
        "#;
        let c = from_file(file).unwrap();
        let urls = |list: &[&str]| StorageBackend::Nats(list.iter().map(|u| (*u).to_owned()).collect());
        assert_eq!(c.storage.backend, urls(&["nats://a:4222", "nats://b:4222"]));
        assert_eq!(c.nats.replicas, 1);
        assert_eq!(c.nats.tls_ca_file, Some(PathBuf::from("/etc/nats-ca.pem")));

        let c =
            ServeConfig::resolve(None, env(&[("ESGF_EVENTS_STORAGE", "nats://c:1")]), &ServeFlags::default())
                .unwrap();
        assert_eq!(c.storage.backend, urls(&["nats://c:1"]), "the short alias");

        let flags = ServeFlags { storage: Some(StorageBackend::Embedded), ..ServeFlags::default() };
        let c = ServeConfig::resolve(Some((Path::new("f.toml"), file)), env(&[]), &flags).unwrap();
        assert_eq!(c.storage.backend, StorageBackend::Embedded, "the flag beats the file");
    }

    #[test]
    fn storage_backend_alias_and_long_name_together_conflict() {
        let vars = env(&[("ESGF_EVENTS_STORAGE", "embedded"), ("ESGF_EVENTS_STORAGE_BACKEND", "embedded")]);
        let err = ServeConfig::resolve(None, vars, &ServeFlags::default()).unwrap_err();
        assert!(matches!(err, ConfigError::ConflictingEnvVars { .. }), "{err}");
    }

    #[test]
    fn storage_backends_other_than_embedded_or_nats_urls_are_refused() {
        for bad in ["", " , ", "redis://a:1", "nats://", "kafka", "nats://a:1,http://b:2"] {
            assert!(bad.parse::<StorageBackend>().is_err(), "{bad:?} accepted");
        }
        let err = from_file("version = 1\n[storage]\nbackend = \"sqlite\"\n").unwrap_err();
        assert!(err.to_string().contains("backend"), "{err}");
    }

    #[test]
    fn nats_urls_with_credentials_are_refused_without_quoting_them() {
        let err = "nats://user:hunter2@a:4222".parse::<StorageBackend>().unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("ESGF_EVENTS_NATS_TOKEN"), "{err}");
    }

    #[test]
    fn nats_token_comes_from_the_environment_only_and_never_shows() {
        let c = ServeConfig::resolve(None, env(&[(NATS_TOKEN_ENV, "s3cret-nats")]), &ServeFlags::default())
            .unwrap();
        assert_eq!(c.nats.token.as_ref().map(NatsToken::expose), Some("s3cret-nats"));
        assert!(!format!("{c:?}").contains("s3cret-nats"), "Debug shows the token");

        let err = from_file("version = 1\n[nats]\ntoken = \"s3cret-nats\"\n").unwrap_err();
        assert!(err.to_string().contains("token"), "the file may not hold it: {err}");
        let err =
            ServeConfig::resolve(None, env(&[(NATS_TOKEN_ENV, " ")]), &ServeFlags::default()).unwrap_err();
        assert!(err.to_string().contains(NATS_TOKEN_ENV), "{err}");
    }

    #[test]
    fn nats_client_certificate_and_credentials_file_come_from_file_or_env_and_are_checked() {
        let text = "version = 1\n[nats]\ntls_cert_file = \"/c.pem\"\ntls_key_file = \"/c.key\"\n\
                    credentials_file = \"/e.creds\"\n";
        let c = from_file(text).unwrap();
        assert_eq!(c.nats.tls_cert_file.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(c.nats.tls_key_file.as_deref(), Some(Path::new("/c.key")));
        assert_eq!(c.nats.credentials_file.as_deref(), Some(Path::new("/e.creds")));
        let from_env = ServeConfig::resolve(
            None,
            env(&[
                ("ESGF_EVENTS_NATS_TLS_CERT_FILE", "/x.pem"),
                ("ESGF_EVENTS_NATS_TLS_KEY_FILE", "/x.key"),
                ("ESGF_EVENTS_NATS_CREDENTIALS_FILE", "/x.creds"),
            ]),
            &ServeFlags::default(),
        )
        .unwrap();
        assert_eq!(from_env.nats.credentials_file.as_deref(), Some(Path::new("/x.creds")));
        assert_eq!(from_env.nats.tls_key_file.as_deref(), Some(Path::new("/x.key")));

        let err = from_file("version = 1\n[nats]\ntls_cert_file = \"/c.pem\"\n").unwrap_err();
        assert!(err.to_string().contains("tls_key_file"), "a certificate without its key: {err}");
        let err = ServeConfig::resolve(
            Some((Path::new("t.toml"), "version = 1\n[nats]\ncredentials_file = \"/e.creds\"\n")),
            env(&[(NATS_TOKEN_ENV, "t0ken")]),
            &ServeFlags::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not both"), "credentials file and token together: {err}");
    }

    #[test]
    fn unknown_nats_keys_and_zero_replicas_are_refused() {
        let err = from_file("version = 1\n[nats]\nreplica = 3\n").unwrap_err();
        assert!(err.to_string().contains("replica"), "{err}");
        let err = from_file("version = 1\n[nats]\nreplicas = 0\n").unwrap_err();
        assert!(err.to_string().contains("nats.replicas"), "{err}");
    }

    #[test]
    fn cluster_section_sets_node_id_and_lease_timing_and_the_environment_and_flag_override_it() {
        let text =
            "version = 1\n[cluster]\nnode_id = \"east-1\"\nlease_ttl = \"20s\"\nlease_renew = \"5s\"\n";
        let c = from_file(text).unwrap();
        assert_eq!(c.cluster.node_id.as_deref(), Some("east-1"));
        assert_eq!(
            (c.cluster.lease_ttl, c.cluster.lease_renew),
            (Duration::from_secs(20), Duration::from_secs(5))
        );
        assert_eq!(ServeConfig::default().cluster.lease_ttl, Duration::from_secs(10));
        assert_eq!(ServeConfig::default().cluster.lease_renew, Duration::from_secs(3));
        let from_env = ServeConfig::resolve(
            Some((Path::new("t.toml"), text)),
            env(&[("ESGF_EVENTS_NODE_ID", "west-2")]),
            &ServeFlags::default(),
        )
        .unwrap();
        assert_eq!(from_env.cluster.node_id.as_deref(), Some("west-2"));
        let flags = ServeFlags { node_id: Some("west-3".into()), ..ServeFlags::default() };
        let from_flag =
            ServeConfig::resolve(None, env(&[("ESGF_EVENTS_NODE_ID", "west-2")]), &flags).unwrap();
        assert_eq!(from_flag.cluster.node_id.as_deref(), Some("west-3"));
    }

    #[test]
    fn bad_node_ids_and_leases_renewed_too_rarely_are_refused() {
        for id in ["", "has space", "a/b", "ünï"] {
            let err = ServeConfig::resolve(None, env(&[("ESGF_EVENTS_NODE_ID", id)]), &ServeFlags::default());
            assert!(matches!(err, Err(ConfigError::Invalid { key: "cluster.node_id", .. })), "{id:?}");
        }
        let slow = env(&[("ESGF_EVENTS_CLUSTER_LEASE_TTL", "5s"), ("ESGF_EVENTS_CLUSTER_LEASE_RENEW", "3s")]);
        let err = ServeConfig::resolve(None, slow, &ServeFlags::default());
        assert!(matches!(err, Err(ConfigError::Invalid { key: "cluster.lease_ttl", .. })));
        assert!(from_file("version = 1\n[cluster]\nnode = \"x\"\n").is_err(), "unknown key accepted");
    }

    #[test]
    fn durations_are_logged_in_their_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_secs(90 * 86_400)), "90d");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
    }
}
