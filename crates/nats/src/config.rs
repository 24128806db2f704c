//! Connection settings and limits of the NATS backend, and connecting to the cluster.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::api::Js;

/// How to reach the NATS cluster and how the backend uses it. `Default` suits a local 3-node cluster.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:4222`). The client connects to one and fails over to the others (and to any
    /// the cluster advertises).
    pub servers: Vec<String>,
    pub auth: NatsAuth,
    /// PEM file of CA certificates to trust; setting it enables TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for servers that verify clients.
    pub tls_client_cert: Option<(PathBuf, PathBuf)>,
    /// Refuse to talk to servers without TLS.
    pub require_tls: bool,
    /// Shown in the servers' connection lists (`connz`).
    pub connection_name: String,
    /// Copies JetStream keeps of every stream and bucket. 3 survives the loss of one node; it cannot exceed
    /// the number of JetStream nodes. Applies to streams created from now on: existing ones keep theirs.
    pub replicas: usize,
    /// Bound on connecting and on waiting for JetStream to be available at start-up.
    pub connect_timeout: Duration,
    /// Bound on one JetStream request.
    pub request_timeout: Duration,
    /// Bound on one operation including its retries across leader elections and node restarts. An append
    /// that is still unacknowledged when it passes fails; it may still have been stored (see the crate docs).
    pub operation_timeout: Duration,
    /// Most records one append may carry. The servers' `jetstream.limits.batch.max_msgs` must be at least
    /// this (the shipped configuration sets 10 000; the server's own default is 1 000).
    pub max_batch_records: usize,
    /// Most bytes (as `NewRecord::approx_size` counts them) one append may carry.
    pub max_batch_bytes: usize,
    /// Most records `offset_for_timestamp` reads one by one after its binary search (only needed when
    /// retention removed records stamped later than those it kept).
    pub timestamp_scan_limit: usize,
    /// Longest pause between checks for records appended by another service node while `wait_for` waits
    /// (appends through this node wake waiters at once).
    pub wait_poll_max: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            servers: vec!["nats://127.0.0.1:4222".into()],
            auth: NatsAuth::None,
            tls_ca_file: None,
            tls_client_cert: None,
            require_tls: false,
            connection_name: "esgf-events".into(),
            replicas: 3,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
            max_batch_records: 10_000,
            max_batch_bytes: 32 << 20,
            timestamp_scan_limit: 10_000,
            wait_poll_max: Duration::from_millis(250),
        }
    }
}

/// Credentials for the NATS servers.
#[derive(Clone, Default)]
pub enum NatsAuth {
    #[default]
    None,
    Token(String),
    /// A NATS credentials file (user JWT and NKey seed) for servers in operator mode.
    CredentialsFile(PathBuf),
    UserPassword {
        user: String,
        password: String,
    },
}

impl fmt::Debug for NatsAuth {
    // Secrets must not reach logs through `{:?}` of a configuration.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::Token(_) => f.write_str("Token(<redacted>)"),
            NatsAuth::CredentialsFile(path) => write!(f, "CredentialsFile({})", path.display()),
            NatsAuth::UserPassword { user, .. } => {
                write!(f, "UserPassword {{ user: {user:?}, password: <redacted> }}")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no NATS server configured")]
    NoServers,
    #[error("cannot connect to NATS at {servers:?}: {detail}")]
    Connect { servers: Vec<String>, detail: String },
    #[error("NATS at {servers:?} is reachable but JetStream is not available after {timeout:?}: {detail}")]
    JetStreamUnavailable { servers: Vec<String>, timeout: Duration, detail: String },
}

/// Connects to the cluster and waits (up to `connect_timeout`) until JetStream answers, i.e. the cluster has
/// elected its meta leader. The connection reconnects on its own for as long as the process runs.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, ConnectError> {
    if config.servers.is_empty() {
        return Err(ConnectError::NoServers);
    }
    // TLS to the servers builds a rustls config from the process-wide crypto provider; with both ring and
    // aws-lc-rs linked into one binary rustls cannot pick one itself. Ring, as the rest of the service uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut options = async_nats::ConnectOptions::new()
        .name(&config.connection_name)
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        .max_reconnects(None)
        .require_tls(config.require_tls);
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &config.tls_client_cert {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    options = match &config.auth {
        NatsAuth::None => options,
        NatsAuth::Token(token) => options.token(token.clone()),
        NatsAuth::CredentialsFile(path) => {
            options.credentials_file(path).await.map_err(|e| ConnectError::Connect {
                servers: config.servers.clone(),
                detail: format!("cannot read the credentials file {}: {e}", path.display()),
            })?
        }
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.clone())
        }
    };
    let client = options
        .connect(config.servers.as_slice())
        .await
        .map_err(|e| ConnectError::Connect { servers: config.servers.clone(), detail: e.to_string() })?;
    let js = Js::new(client.clone(), config.request_timeout);
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    loop {
        match js.account_info().await {
            Ok(()) => return Ok(client),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "waiting for JetStream");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(ConnectError::JetStreamUnavailable {
                    servers: config.servers.clone(),
                    timeout: config.connect_timeout,
                    detail: e.to_string(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let token = format!("{:?}", NatsAuth::Token("s3cret".into()));
        let user = format!("{:?}", NatsAuth::UserPassword { user: "svc".into(), password: "s3cret".into() });
        assert!(!token.contains("s3cret") && !user.contains("s3cret"));
        assert!(user.contains("svc"));
    }
}
