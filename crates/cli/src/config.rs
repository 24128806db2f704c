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
//! data_dir = "./data"
//! durability = "fsync"             # "fsync": fsync before every ack | "relaxed": see below
//! relaxed_fsync_interval = "200ms"
//! segment_max_bytes = 134217728
//! segment_max_age = "7d"
//! default_retention = "90d"        # for topics created without one; "forever" allowed
//! retention_check_interval = "5m"
//! [log]
//! format = "text"                  # or "json"
//! level = "info"                   # a tracing filter, e.g. "info,esgf_events_http=debug"
//! ```
//!
//! `durability = "relaxed"` acknowledges appends once they reach the OS page cache and fsyncs every
//! `relaxed_fsync_interval`: a machine crash (not a process crash) can lose that much acknowledged data.
//!
//! Environment variables are `ESGF_EVENTS_<SECTION>_<KEY>` in upper case (`ESGF_EVENTS_STORAGE_DURABILITY`),
//! plus the alias `ESGF_EVENTS_DATA_DIR` for `storage.data_dir`. `RUST_LOG`, when set, takes the place of
//! `log.level` (it beats `ESGF_EVENTS_LOG_LEVEL` and the file; `--log-level` still beats it). The client-side
//! variables `ESGF_EVENTS_SERVER`, `ESGF_EVENTS_TOKEN` and `ESGF_EVENTS_CONFIG` are ignored here. Durations use
//! humantime syntax (`200ms`, `5m`, `7d`).

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
const CLIENT_ENV_VARS: [&str; 3] = ["ESGF_EVENTS_SERVER", "ESGF_EVENTS_TOKEN", "ESGF_EVENTS_CONFIG"];

/// Short spelling of `ESGF_EVENTS_STORAGE_DATA_DIR`.
const DATA_DIR_ALIAS: &str = "ESGF_EVENTS_DATA_DIR";

/// Every server setting an environment variable can carry, by variable name.
pub const ENV_VARS: [&str; 16] = [
    "ESGF_EVENTS_HTTP_ADDR",
    "ESGF_EVENTS_HTTP_MAX_EVENT_BYTES",
    "ESGF_EVENTS_HTTP_MAX_BATCH_EVENTS",
    "ESGF_EVENTS_HTTP_MAX_BODY_BYTES",
    "ESGF_EVENTS_HTTP_MAX_WAIT",
    "ESGF_EVENTS_HTTP_MAX_CONNECTIONS",
    "ESGF_EVENTS_STORAGE_DATA_DIR",
    DATA_DIR_ALIAS,
    "ESGF_EVENTS_STORAGE_DURABILITY",
    "ESGF_EVENTS_STORAGE_RELAXED_FSYNC_INTERVAL",
    "ESGF_EVENTS_STORAGE_SEGMENT_MAX_BYTES",
    "ESGF_EVENTS_STORAGE_SEGMENT_MAX_AGE",
    "ESGF_EVENTS_STORAGE_DEFAULT_RETENTION",
    "ESGF_EVENTS_STORAGE_RETENTION_CHECK_INTERVAL",
    "ESGF_EVENTS_LOG_FORMAT",
    "ESGF_EVENTS_LOG_LEVEL",
];

/// The resolved configuration of `esgf-events serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    pub http: HttpSettings,
    pub storage: StorageSettings,
    pub log: LogSettings,
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
    pub data_dir: PathBuf,
    pub durability: DurabilityMode,
    /// Used only when `durability` is relaxed.
    pub relaxed_fsync_interval: Duration,
    pub segment_max_bytes: u64,
    pub segment_max_age: Duration,
    /// Retention of topics created without one.
    pub default_retention: RetentionPeriod,
    pub retention_check_interval: Duration,
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
                data_dir: PathBuf::from("./data"),
                durability: DurabilityMode::Fsync,
                relaxed_fsync_interval: Duration::from_millis(200),
                segment_max_bytes: 128 << 20,
                segment_max_age: Duration::from_secs(7 * 24 * 3600),
                default_retention: RetentionPeriod::For(Duration::from_secs(90 * 24 * 3600)),
                retention_check_interval: Duration::from_secs(5 * 60),
            },
            log: LogSettings { format: LogFormat::Text, level: "info".to_owned() },
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
}

/// The flags of `esgf-events serve`: the highest-precedence configuration layer.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeFlags {
    /// TOML configuration file: `version = 1` and sections [http], [storage], [log].
    #[arg(long, value_name = "FILE", env = "ESGF_EVENTS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080]; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Directory of the event log [default: ./data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
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
}

impl ServeFlags {
    fn layer(&self) -> Layer {
        Layer {
            http: HttpLayer { addr: self.http_addr, ..HttpLayer::default() },
            storage: StorageLayer {
                data_dir: self.data_dir.clone(),
                durability: self.durability,
                ..StorageLayer::default()
            },
            log: LogLayer { format: self.log_format, level: self.log_level.clone() },
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
        if let Some((path, text)) = file {
            config.apply(parse_file(path, text)?);
        }
        config.apply(env_layer(env)?);
        config.apply(flags.layer());
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
        set(&mut s.durability, layer.storage.durability);
        set(&mut s.relaxed_fsync_interval, layer.storage.relaxed_fsync_interval);
        set(&mut s.segment_max_bytes, layer.storage.segment_max_bytes);
        set(&mut s.segment_max_age, layer.storage.segment_max_age);
        set(&mut s.default_retention, layer.storage.default_retention);
        set(&mut s.retention_check_interval, layer.storage.retention_check_interval);
        set(&mut l.format, layer.log.format);
        set(&mut l.level, layer.log.level);
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
        positive("storage.retention_check_interval", s.retention_check_interval.as_millis())?;
        if s.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid { key: "storage.data_dir", reason: "must not be empty".into() });
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::Invalid { key: "log.level", reason: e.to_string() })?;
        Ok(())
    }
}

/// One source's settings: `None` leaves the lower layer's value.
#[derive(Debug, Default)]
struct Layer {
    http: HttpLayer,
    storage: StorageLayer,
    log: LogLayer,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLayer {
    #[serde(default, deserialize_with = "parsed")]
    format: Option<LogFormat>,
    level: Option<String>,
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
    Ok(Layer { http: file.http, storage: file.storage, log: file.log })
}

fn env_layer(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Result<Layer, ConfigError> {
    let mut layer = Layer::default();
    let mut data_dir_from: Option<&'static str> = None;
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
        "ESGF_EVENTS_STORAGE_DURABILITY" => s.durability = Some(parse_env(name, v)?),
        "ESGF_EVENTS_STORAGE_RELAXED_FSYNC_INTERVAL" => s.relaxed_fsync_interval = Some(parse_env(name, v)?),
        "ESGF_EVENTS_STORAGE_SEGMENT_MAX_BYTES" => s.segment_max_bytes = Some(parse_env(name, v)?),
        "ESGF_EVENTS_STORAGE_SEGMENT_MAX_AGE" => s.segment_max_age = Some(parse_env(name, v)?),
        "ESGF_EVENTS_STORAGE_DEFAULT_RETENTION" => s.default_retention = Some(parse_env(name, v)?),
        "ESGF_EVENTS_STORAGE_RETENTION_CHECK_INTERVAL" => {
            s.retention_check_interval = Some(parse_env(name, v)?);
        }
        "ESGF_EVENTS_LOG_FORMAT" => l.format = Some(parse_env(name, v)?),
        "ESGF_EVENTS_LOG_LEVEL" => l.level = Some(parse_env(name, v)?),
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
        let err = from_file("version = 1\n[kafka]\nport = 9092\n").unwrap_err();
        assert!(err.to_string().contains("kafka"), "{err}");
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
            ("ESGF_EVENTS_STORAGE_DURABILITY", "relaxed"),
            ("ESGF_EVENTS_STORAGE_RELAXED_FSYNC_INTERVAL", "1s"),
            ("ESGF_EVENTS_STORAGE_SEGMENT_MAX_BYTES", "1"),
            ("ESGF_EVENTS_STORAGE_SEGMENT_MAX_AGE", "1h"),
            ("ESGF_EVENTS_STORAGE_DEFAULT_RETENTION", "forever"),
            ("ESGF_EVENTS_STORAGE_RETENTION_CHECK_INTERVAL", "1s"),
            ("ESGF_EVENTS_LOG_FORMAT", "json"),
            ("ESGF_EVENTS_LOG_LEVEL", "warn"),
        ];
        assert_eq!(samples.len(), ENV_VARS.len());
        for (name, value) in samples {
            assert!(ENV_VARS.contains(&name), "{name}");
            let c = ServeConfig::resolve(None, env(&[(name, value)]), &ServeFlags::default()).unwrap();
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

    #[test]
    fn durations_are_logged_in_their_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_secs(90 * 86_400)), "90d");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
    }
}
