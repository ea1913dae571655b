//! One HTTP/2 connection to one executor endpoint: TCP (no Nagle, keepalive), TLS for `https`
//! (the system's roots and the configured CA bundle, the URL's host name checked), then
//! hyper's HTTP/2 client with the relay's flow-control windows and keepalive pings.
//!
//! hyper's connection-level client rather than tonic's `Channel`: the pool needs to know which
//! endpoint a call went to, whether a call reached it at all (a request hyper hands back was
//! never sent), and to keep or drop each endpoint's connection itself — `Channel` hides all
//! three behind its own reconnecting buffer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tonic::body::Body;

use super::ExecutorUrl;

/// Each relayed stream may have this much of the executor's data in flight towards it. A caller
/// who stops reading holds at most this on its stream.
pub const STREAM_WINDOW: u32 = 1024 * 1024;

/// The connection's window: HTTP/2's largest. Every relayed stream of a replica shares the
/// executor connection, so its window must never be the bound: with a connection window
/// as small as a few streams' (hyper's default is 5 MiB against 2 MiB streams), three callers
/// who stop reading stall every other caller's stream. Each stream is bounded by its own window.
pub const CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// How connections to executors are made.
pub struct Connector {
    tls: Option<tokio_rustls::TlsConnector>,
    http2: http2::Builder<TokioExecutor>,
    timeout: Duration,
}

impl Connector {
    /// `ca_pem`: certificates to trust besides the system's roots (for `https` executors);
    /// `tls`: whether any executor URL is `https`.
    pub fn new(tls: bool, ca_pem: Option<&[u8]>) -> Result<Self, String> {
        let tls = tls.then(|| tls_connector(ca_pem)).transpose()?;
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .adaptive_window(false)
            // Long idle workflow streams survive load balancers and dead peers are noticed.
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        Ok(Self {
            tls,
            http2,
            timeout: Duration::from_secs(5),
        })
    }

    /// Connects to `addr` for `url`; the returned future drives the connection until it closes
    /// (spawn it).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        url: &ExecutorUrl,
    ) -> Result<(SendRequest<Body>, ConnectionTask), String> {
        tokio::time::timeout(self.timeout, self.connect_now(addr, url))
            .await
            .map_err(|_| format!("no connection within {} s", self.timeout.as_secs()))?
    }

    async fn connect_now(
        &self,
        addr: SocketAddr,
        url: &ExecutorUrl,
    ) -> Result<(SendRequest<Body>, ConnectionTask), String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        match (&self.tls, url.is_https()) {
            (Some(tls), true) => {
                let name = ServerName::try_from(url.host.clone())
                    .map_err(|e| format!("not a TLS server name: {e}"))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                let (send, conn) = self
                    .http2
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((
                    send,
                    Box::pin(async move { conn.await.map_err(|e| e.to_string()) }),
                ))
            }
            _ => {
                let (send, conn) = self
                    .http2
                    .handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((
                    send,
                    Box::pin(async move { conn.await.map_err(|e| e.to_string()) }),
                ))
            }
        }
    }
}

/// A connection's driver: runs until the connection closes, with why if it failed.
pub type ConnectionTask =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// TLS to executors: the system's roots and `ca_pem`, HTTP/2 by ALPN.
fn tls_connector(ca_pem: Option<&[u8]>) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(system.certs);
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("not a CA certificate: {e}"))?;
        }
    }
    if roots.is_empty() {
        return Err(format!(
            "no certificate to trust ({added} system roots loaded and no CA file)"
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
