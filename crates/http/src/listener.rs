//! Listeners that serve at most N connections at once.
//!
//! Each accepted connection holds a semaphore permit for its whole life; at the limit the listener stops calling
//! `accept`, so further clients wait in the kernel's backlog instead of costing the server a task and buffers.
//! [`LimitedListener`] wraps a plain listener; [`ChannelListener`] hands axum connections that an accept loop of
//! our own prepared first (the TLS handshake, see `tls.rs`), under the same kind of permit.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

pub(crate) struct LimitedListener<L> {
    inner: L,
    permits: Arc<Semaphore>,
}

/// The permits of `max_connections`; `0` is treated as 1: a server that can accept nothing would only hang its
/// clients.
pub(crate) fn connection_permits(max_connections: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(max_connections.clamp(1, Semaphore::MAX_PERMITS)))
}

impl<L> LimitedListener<L> {
    pub(crate) fn new(inner: L, max_connections: usize) -> Self {
        LimitedListener { inner, permits: connection_permits(max_connections) }
    }
}

impl<L: Listener> Listener for LimitedListener<L> {
    type Io = LimitedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed, so acquiring only waits; the fallback keeps this total regardless.
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok();
        let (io, addr) = self.inner.accept().await;
        (LimitedIo { io, _permit: permit }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that gives its permit back when dropped.
pub(crate) struct LimitedIo<T> {
    io: T,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<T> LimitedIo<T> {
    pub(crate) fn new(io: T, permit: OwnedSemaphorePermit) -> Self {
        LimitedIo { io, _permit: Some(permit) }
    }

    /// A connection outside the limit (only if the semaphore was closed, which this crate never does).
    pub(crate) fn unlimited(io: T) -> Self {
        LimitedIo { io, _permit: None }
    }

    pub(crate) fn get_ref(&self) -> &T {
        &self.io
    }
}

/// Connections prepared by a task of our own (which holds the listening socket), delivered through a bounded
/// channel. Dropping the listener stops that task, so the socket closes when axum stops accepting.
pub(crate) struct ChannelListener<Io> {
    connections: mpsc::Receiver<(Io, SocketAddr)>,
    local: SocketAddr,
    producer: JoinHandle<()>,
}

impl<Io> ChannelListener<Io> {
    pub(crate) fn new(
        connections: mpsc::Receiver<(Io, SocketAddr)>,
        local: SocketAddr,
        producer: JoinHandle<()>,
    ) -> Self {
        ChannelListener { connections, local, producer }
    }
}

impl<Io> Drop for ChannelListener<Io> {
    fn drop(&mut self) {
        self.producer.abort();
    }
}

impl<Io> Listener for ChannelListener<Io>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = Io;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The producer only ends when aborted, i.e. when this listener is dropped; never accept again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LimitedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for LimitedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::sync::mpsc;

    /// Hands out in-memory connections queued by the test.
    struct QueueListener(mpsc::UnboundedReceiver<DuplexStream>);

    impl Listener for QueueListener {
        type Io = DuplexStream;
        type Addr = ();

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            match self.0.recv().await {
                Some(io) => (io, ()),
                None => std::future::pending().await,
            }
        }

        fn local_addr(&self) -> io::Result<Self::Addr> {
            Ok(())
        }
    }

    /// Whether `accept` completes without waiting (polled once, no timers).
    async fn accepts_now<L: Listener>(listener: &mut L) -> Option<L::Io> {
        tokio::select! {
            biased;
            (io, _) = listener.accept() => Some(io),
            () = std::future::ready(()) => None,
        }
    }

    fn queue() -> (mpsc::UnboundedSender<DuplexStream>, QueueListener) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, QueueListener(rx))
    }

    #[tokio::test]
    async fn accept_waits_at_the_limit_and_resumes_when_a_connection_closes() {
        let (tx, inner) = queue();
        let mut listener = LimitedListener::new(inner, 1);
        let mut peers = Vec::new();
        for _ in 0..2 {
            let (server, client) = tokio::io::duplex(64);
            tx.send(server).expect("listener alive");
            peers.push(client);
        }

        let first = accepts_now(&mut listener).await.expect("first connection is under the limit");
        assert!(accepts_now(&mut listener).await.is_none(), "second connection must wait for a permit");
        drop(first);
        assert!(accepts_now(&mut listener).await.is_some(), "closing a connection frees its permit");
    }

    #[tokio::test]
    async fn limited_io_passes_bytes_through() {
        let (tx, inner) = queue();
        let mut listener = LimitedListener::new(inner, 4);
        let (server, mut client) = tokio::io::duplex(64);
        tx.send(server).expect("listener alive");
        let (mut io, ()) = listener.accept().await;

        client.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        io.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        io.write_all(b"pong").await.expect("write");
        client.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test]
    async fn channel_listener_delivers_what_the_producer_sends_and_stops_it_when_dropped() {
        let (tx, rx) = mpsc::channel(1);
        let (server, _client) = tokio::io::duplex(64);
        let address: SocketAddr = ([127, 0, 0, 1], 9).into();
        tx.send((server, address)).await.expect("listener alive");
        // The producer holds `alive` until it is dropped, i.e. aborted.
        let (alive, stopped) = tokio::sync::oneshot::channel::<()>();
        let producer = tokio::spawn(async move {
            let _alive = alive;
            std::future::pending::<()>().await;
        });
        let mut listener = ChannelListener::new(rx, address, producer);
        let (_io, from) = listener.accept().await;
        assert_eq!(from, address);
        drop(listener);
        assert!(stopped.await.is_err(), "dropping the listener stops its producer");
    }

    #[test]
    fn zero_connections_means_one() {
        let (_tx, inner) = queue();
        assert_eq!(LimitedListener::new(inner, 0).permits.available_permits(), 1);
    }
}
