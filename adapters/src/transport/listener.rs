//! Accepting connections, for the gRPC and the published-keys listeners alike: dual-stack
//! sockets, `TCP_NODELAY`, a bound on open connections, and TLS (when configured) completed
//! within the handshake timeout.
//!
//! The bound is a semaphore: a connection holds a permit until it closes, and at the bound the
//! accept loop waits for a permit instead of accepting (new connections wait in the kernel's
//! backlog; existing ones are served as usual). When the process runs out of file descriptors
//! (`EMFILE`, `ENFILE`, ...), accepting pauses briefly instead of spinning.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::tls::ReloadableTls;

/// How long accepting pauses after an error such as running out of file descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The backlog of a listening socket.
const BACKLOG: i32 = 1024;

/// A listening socket on `addr`. An unspecified IPv6 address (`[::]`) accepts IPv4 too
/// (`IPV6_V6ONLY` off, whatever the system's default).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket_for(addr)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// The socket [`bind`] binds: non-blocking, `SO_REUSEADDR` (as `TcpListener::bind` sets it),
/// dual-stack for `[::]`.
pub fn socket_for(addr: SocketAddr) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// What bounds a listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at once; at the bound, new ones wait to be accepted.
    pub max_connections: usize,
    /// From accept to a completed TLS handshake and (gRPC) the client's HTTP/2 preface and
    /// SETTINGS; a connection that takes longer is closed.
    pub handshake_timeout: Duration,
}

/// A listener with its connection bound and, optionally, TLS.
pub struct Acceptor {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    handshake: Handshake,
}

/// What an accepted connection goes through before it speaks HTTP: TLS, if configured, within
/// the handshake timeout. Cheap to clone into each connection's task (which must not keep the
/// listener open after shutdown).
#[derive(Clone)]
pub struct Handshake {
    limits: ConnectionLimits,
    tls: Option<(Arc<ReloadableTls>, Protocol)>,
}

/// Which TLS configuration (ALPN, client certificates) a listener uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC: ALPN `h2`, client certificates when configured.
    Grpc,
    /// The published keys: HTTP/1.1, no client certificates.
    Http,
}

/// An accepted connection, holding its permit until dropped.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub permit: OwnedSemaphorePermit,
}

impl Acceptor {
    pub fn new(
        listener: TcpListener,
        limits: ConnectionLimits,
        tls: Option<(Arc<ReloadableTls>, Protocol)>,
    ) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            handshake: Handshake { limits, tls },
        }
    }

    pub fn handshake(&self) -> Handshake {
        self.handshake.clone()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection, with `TCP_NODELAY` set (without it, a response written in two
    /// pieces waits for the peer's delayed ACK, ~40 ms). Waits for a permit first.
    pub async fn accept(&self) -> Accepted {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
                    }
                    return Accepted {
                        stream,
                        peer,
                        permit,
                    };
                }
                // The peer gave up before we accepted: nothing to pause for.
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors or memory: let connections close before trying
                    // again, rather than spinning on an accept that fails at once.
                    tracing::warn!(
                        pause_ms = ACCEPT_ERROR_PAUSE.as_millis() as u64,
                        "accept failed: {e}; pausing"
                    );
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
}

impl Handshake {
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// The connection's byte stream: plain, or TLS once its handshake completes within the
    /// handshake timeout (`None`: it did not, or failed; the connection is dropped).
    pub async fn secure(&self, stream: TcpStream, peer: SocketAddr) -> Option<Io> {
        let Some((tls, protocol)) = &self.tls else {
            return Some(Io::Plain(stream));
        };
        let acceptor = tls.acceptor(*protocol);
        match tokio::time::timeout(self.limits.handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Some(Io::Tls(Box::new(stream))),
            Ok(Err(e)) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }
}

/// Accepts connections until `shutdown` resolves, each served by `serve` in a task of the
/// returned set. The listener is closed on return (new connections are refused); dropping the
/// set closes every connection still open.
pub async fn accept_until<F, Fut>(
    acceptor: Acceptor,
    shutdown: impl std::future::Future<Output = ()>,
    mut serve: F,
) -> tokio::task::JoinSet<()>
where
    F: FnMut(Accepted, Handshake) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = acceptor.accept() => accepted,
            Some(_) = connections.join_next() => continue,
            () = &mut shutdown => return connections,
        };
        connections.spawn(serve(accepted, acceptor.handshake()));
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A connection's bytes, plain or TLS.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Drives `connection` to its end, unless fewer than `min_bytes` were read from it (see
/// [`Counted`]) by `deadline`: then it is dropped, closing the connection.
pub async fn expect_bytes_by<F: std::future::Future>(
    connection: F,
    read: &AtomicUsize,
    min_bytes: usize,
    deadline: tokio::time::Instant,
) -> Option<F::Output> {
    tokio::pin!(connection);
    tokio::select! {
        output = &mut connection => return Some(output),
        () = tokio::time::sleep_until(deadline) => {}
    }
    if read.load(Ordering::Relaxed) < min_bytes {
        return None;
    }
    Some(connection.await)
}

/// A byte stream that counts what was read from it, so that a watchdog can tell whether the
/// peer has sent its HTTP/2 preface and SETTINGS in time.
pub struct Counted<T> {
    inner: T,
    read: Arc<AtomicUsize>,
}

impl<T> Counted<T> {
    pub fn new(inner: T) -> (Self, Arc<AtomicUsize>) {
        let read = Arc::new(AtomicUsize::new(0));
        (
            Self {
                inner,
                read: read.clone(),
            },
            read,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n, Ordering::Relaxed);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_ipv6_socket_is_dual_stack() {
        match socket_for("[::]:0".parse().unwrap()) {
            Ok(socket) => assert!(!socket.only_v6().unwrap(), "[::] must accept IPv4 too"),
            // A machine without IPv6 at all: nothing to check.
            Err(e) => eprintln!("no IPv6 socket on this machine ({e}); skipped"),
        }
    }
}
