//! Sockets: accepting (bounded), optional TLS, length-prefixed framing, and shutdown.
//!
//! Each connection is served one request at a time, in order, as Kafka brokers do (clients rely on responses
//! arriving in request order). A malformed or oversized frame closes the connection: after one, the byte
//! stream can no longer be trusted to be aligned on frames.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::KafkaContext;
use crate::broker::{Broker, Session, api_versions};
use crate::codec::{self, DecodeError, Response};
use crate::errors::code;

/// A connection sending no complete request for this long is closed (Kafka's connections.max.idle.ms).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Requests other than Produce are small; a larger one is refused before it is decoded, which bounds the
/// memory a request's decoded structures take.
const MAX_CONTROL_FRAME: usize = 1 << 20;
/// Time allowed for a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connections may finish their current request after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often session timeouts and rebalance deadlines are checked.
const TICK: Duration = Duration::from_millis(200);

/// Serves the Kafka protocol on `listener` until `shutdown` completes; then stops accepting, lets each
/// connection finish the request it is serving (long polls and group waits are cut short), and returns.
pub async fn run(
    listener: TcpListener,
    ctx: KafkaContext,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let tls = ctx.config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(ctx.config.max_connections.max(1)));
    let broker = Arc::new(Broker::new(ctx));
    broker.set_bound_port(local.port());
    debug!(kafka_addr = %local, tls = tls.is_some(), "Kafka endpoint serving");

    let ticker = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(TICK);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                broker.tick();
            }
        })
    };

    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Typically out of file descriptors: back off rather than spin.
                    warn!(error = %e, "accepting a Kafka connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let broker = Arc::clone(&broker);
        let tls = tls.clone();
        connections.spawn(async move {
            serve_connection(broker, stream, peer, tls).await;
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }

    info!(kafka_addr = %local, open = connections.len(), "Kafka endpoint stopping");
    drop(listener);
    broker.begin_shutdown();
    let drained =
        tokio::time::timeout(SHUTDOWN_GRACE, async { while connections.join_next().await.is_some() {} })
            .await;
    if drained.is_err() {
        warn!(open = connections.len(), "Kafka connections still busy after the grace period: closing them");
        connections.shutdown().await;
    }
    ticker.abort();
    Ok(())
}

async fn serve_connection(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    match tls {
        None => serve(broker, stream, peer).await,
        Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => serve(broker, stream, peer).await,
            Ok(Err(e)) => debug!(%peer, error = %e, "Kafka TLS handshake failed"),
            Err(_) => debug!(%peer, "Kafka TLS handshake timed out"),
        },
    }
}

/// Why a connection stopped reading frames.
#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {1}")]
    TooLarge(i64, usize),
    #[error("idle for too long")]
    Idle,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads one length-prefixed frame; `None` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, limit: usize) -> Result<Option<Bytes>, FrameError> {
    let read = async {
        let mut len = [0u8; 4];
        match reader.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let len = i32::from_be_bytes(len);
        let size = usize::try_from(len).map_err(|_| FrameError::TooLarge(i64::from(len), limit))?;
        if size > limit {
            return Err(FrameError::TooLarge(i64::from(len), limit));
        }
        // Grows as bytes arrive rather than trusting the declared size up front.
        let mut buf = BytesMut::with_capacity(size.min(64 << 10));
        let mut limited = reader.take(size as u64);
        while buf.len() < size {
            buf.reserve((size - buf.len()).min(1 << 20));
            if limited.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
        Ok(Some(buf.freeze()))
    };
    tokio::time::timeout(IDLE_TIMEOUT, read).await.map_err(|_| FrameError::Idle)?
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(broker: Arc<Broker>, stream: S, peer: SocketAddr) {
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = tokio::io::BufReader::new(reader);
    let mut session = Session::new(Some(peer));
    let mut stopping = broker.stopping();
    debug!(%peer, "Kafka connection opened");
    loop {
        let limit = broker.frame_limit(&session);
        let frame = tokio::select! {
            biased;
            _ = stopping.wait_for(|s| *s) => break,
            frame = read_frame(&mut reader, limit) => frame,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                debug!(%peer, error = %e, "closing Kafka connection");
                break;
            }
        };
        if session.expects_raw_sasl_token() {
            // After a v0 SaslHandshake the token travels bare; success is an empty frame, failure a close.
            if !broker.authenticate_raw(&mut session, frame).await {
                debug!(%peer, "raw SASL token refused: closing");
                break;
            }
            if writer.write_all(&0i32.to_be_bytes()).await.is_err() {
                break;
            }
            continue;
        }
        let is_produce =
            frame.len() >= 2 && i16::from_be_bytes([frame[0], frame[1]]) == ApiKey::Produce as i16;
        if !is_produce && frame.len() > MAX_CONTROL_FRAME {
            debug!(%peer, size = frame.len(), "non-produce request larger than 1 MiB: closing");
            break;
        }
        let raw = frame.clone();
        let answer = match codec::decode_request(frame) {
            Ok((header, request)) => {
                let key = request.api_key();
                let version = header.request_api_version;
                broker
                    .handle(&mut session, &header, request)
                    .await
                    .map(|response| (key, version, header.correlation_id, response))
            }
            Err(DecodeError::UnsupportedVersion { key: ApiKey::ApiVersions, header }) => {
                // Kafka's rule: answer at v0 with the supported versions, so the client can pick one.
                let response = api_versions(code(ResponseError::UnsupportedVersion));
                Some((ApiKey::ApiVersions, 0, header.correlation_id, Response::ApiVersions(response)))
            }
            Err(e) => {
                let head: String = raw.iter().take(96).map(|b| format!("{b:02x}")).collect();
                debug!(%peer, error = %e, head, "undecodable Kafka request: closing");
                break;
            }
        };
        let Some((key, version, correlation_id, response)) = answer else { continue };
        let bytes = match codec::encode_response(key, version, correlation_id, &response) {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(%peer, error = %e, "encoding a Kafka response failed: closing");
                break;
            }
        };
        if let Err(e) = writer.write_all(&bytes).await {
            debug!(%peer, error = %e, "writing a Kafka response failed");
            break;
        }
        if broker.should_close(&session) {
            break;
        }
    }
    let _ = writer.shutdown().await;
    debug!(%peer, "Kafka connection closed");
}
