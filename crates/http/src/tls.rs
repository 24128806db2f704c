//! TLS: loading a certificate chain and key from PEM files, and the accept loop that runs handshakes.
//!
//! Handshakes run in their own tasks with a deadline, so a client that connects and then says nothing (or a
//! slow one) never holds up the accept loop; finished connections reach axum through a [`ChannelListener`].
//! A connection holds its permit (see `listener.rs`) from before its handshake, so half-open handshakes count
//! against `max_connections` too. Crypto is rustls on the `ring` provider, named explicitly rather than taken
//! from a process-wide default, so it does not matter which other providers are compiled in.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::listener::{ChannelListener, LimitedIo};

/// Longest a TLS handshake may take before the connection is dropped.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished connections waiting for axum to pick them up; axum accepts in a loop, so this rarely fills.
const READY_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("could not read the certificate chain from {path}: {source}")]
    Certificates { path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificates { path: PathBuf },
    #[error("could not read the private key from {path}: {source}")]
    Key { path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("the certificate chain and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A server configuration from a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or
/// SEC1). HTTP/1.1 only, matching what the server speaks.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificates { path: cert.to_owned(), source })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificates { path: cert.to_owned() });
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key { path: key.to_owned(), source })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        // Also checks that the key belongs to the leaf certificate.
        .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub(crate) type TlsConnection = LimitedIo<TlsStream<TcpStream>>;

/// Starts the accept loop on `listener` and returns the listener axum serves from.
pub(crate) fn tls_listener(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    permits: Arc<Semaphore>,
) -> io::Result<ChannelListener<TlsConnection>> {
    let local = listener.local_addr()?;
    let (ready, connections) = mpsc::channel(READY_QUEUE);
    let producer = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), permits, ready));
    Ok(ChannelListener::new(connections, local, producer))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    permits: Arc<Semaphore>,
    ready: mpsc::Sender<(TlsConnection, SocketAddr)>,
) {
    // Owned here, so aborting this task (when the listener is dropped) aborts the handshakes in flight too.
    let mut handshakes = JoinSet::new();
    loop {
        while handshakes.try_join_next().is_some() {}
        // The semaphore is never closed; if it were, serving without a limit beats not serving.
        let permit = Arc::clone(&permits).acquire_owned().await;
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                accept_failed(err).await;
                continue;
            }
        };
        // Small request/response exchanges: Nagle would add up to 40 ms of delay per response.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY on an accepted connection");
        }
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        handshakes.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let connection = match permit {
                        Ok(permit) => LimitedIo::new(tls, permit),
                        Err(_) => LimitedIo::unlimited(tls),
                    };
                    // Fails only once the server has stopped accepting: the connection is just closed.
                    let _ = ready.send((connection, remote)).await;
                }
                Ok(Err(err)) => tracing::debug!(%remote, error = %err, "TLS handshake failed"),
                Err(_) => tracing::debug!(%remote, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out"),
            }
        });
    }
}

/// Per-connection failures (the peer reset before we accepted) are routine; anything else (out of file
/// descriptors) would recur at once, so back off a moment as hyper and axum do.
async fn accept_failed(err: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(err.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        tracing::debug!(error = %err, "accepting a connection failed");
        return;
    }
    tracing::error!(error = %err, "accepting connections failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
