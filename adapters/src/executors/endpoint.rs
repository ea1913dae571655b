//! One executor endpoint (an address of a configured URL) and its one HTTP/2 connection:
//! connected on first need (and at once when discovered), shared by every call sent there,
//! skipped for a while after it failed, and drained when resolution no longer returns it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use tokio::time::Instant;
use tonic::body::Body;

use super::connect::Connector;
use super::ExecutorUrl;

/// After the first failure an endpoint is skipped for this long, doubling with each failure in a
/// row up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What operators see of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// Connected.
    Ready,
    /// A connection is being made.
    Connecting,
    /// Not connected; the next call connects.
    Idle,
    /// Failed: skipped until its backoff ends.
    Backoff,
    /// No longer resolved: its open calls finish there, no new call goes there.
    Draining,
}

impl EndpointState {
    pub const ALL: [EndpointState; 5] = [
        EndpointState::Ready,
        EndpointState::Connecting,
        EndpointState::Idle,
        EndpointState::Backoff,
        EndpointState::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Ready => "ready",
            EndpointState::Connecting => "connecting",
            EndpointState::Idle => "idle",
            EndpointState::Backoff => "backoff",
            EndpointState::Draining => "draining",
        }
    }
}

pub struct Endpoint {
    pub addr: SocketAddr,
    pub url: Arc<ExecutorUrl>,
    /// Relayed calls open here now: how the next call's endpoint is chosen.
    open: AtomicUsize,
    link: Mutex<Link>,
    /// One connection attempt at a time; calls that need it wait for that attempt.
    connecting: tokio::sync::Mutex<()>,
    removed: AtomicBool,
}

struct Link {
    state: LinkState,
    /// Which connection `Ready` holds: a late report about an older one changes nothing.
    generation: u64,
    /// Failures in a row.
    failures: u32,
    last_error: Option<String>,
}

enum LinkState {
    Idle,
    Ready(SendRequest<Body>),
    Backoff(Instant),
}

impl Endpoint {
    pub fn new(url: Arc<ExecutorUrl>, addr: SocketAddr) -> Self {
        Self {
            addr,
            url,
            open: AtomicUsize::new(0),
            link: Mutex::new(Link {
                state: LinkState::Idle,
                generation: 0,
                failures: 0,
                last_error: None,
            }),
            connecting: tokio::sync::Mutex::new(()),
            removed: AtomicBool::new(false),
        }
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn open_calls(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether a new call may go here now.
    pub fn eligible(&self, now: Instant) -> bool {
        !self.removed.load(Ordering::Relaxed)
            && !matches!(self.link().state, LinkState::Backoff(until) if until > now)
    }

    pub fn state(&self, now: Instant) -> EndpointState {
        if self.removed.load(Ordering::Relaxed) {
            return EndpointState::Draining;
        }
        if self.connecting.try_lock().is_err() {
            return EndpointState::Connecting;
        }
        match self.link().state {
            LinkState::Ready(_) => EndpointState::Ready,
            LinkState::Backoff(until) if until > now => EndpointState::Backoff,
            _ => EndpointState::Idle,
        }
    }

    /// Failures in a row, and the last one's reason.
    pub fn failures(&self) -> (u32, Option<String>) {
        let link = self.link();
        (link.failures, link.last_error.clone())
    }

    /// Resolution no longer returns this endpoint.
    pub fn remove(&self) {
        self.removed.store(true, Ordering::Relaxed);
    }

    /// The connection's sender and generation, connecting first if there is none.
    pub async fn sender(
        self: &Arc<Self>,
        connector: &Connector,
    ) -> Result<(SendRequest<Body>, u64), String> {
        if let Some(ready) = self.ready() {
            return Ok(ready);
        }
        let _attempt = self.connecting.lock().await;
        if let Some(ready) = self.ready() {
            return Ok(ready);
        }
        match connector.connect(self.addr, &self.url).await {
            Ok((send, connection)) => {
                let generation = {
                    let mut link = self.link();
                    link.generation += 1;
                    link.state = LinkState::Ready(send.clone());
                    link.failures = 0;
                    link.generation
                };
                tracing::info!(executor = %self.url, endpoint = %self.addr, "connected to a workflow executor");
                let me = Arc::downgrade(self);
                tokio::spawn(async move {
                    let ended = connection.await;
                    if let Some(me) = me.upgrade() {
                        me.closed(generation, ended);
                    }
                });
                Ok((send, generation))
            }
            Err(error) => {
                self.failed(error.clone());
                Err(error)
            }
        }
    }

    fn ready(&self) -> Option<(SendRequest<Body>, u64)> {
        let link = self.link();
        match &link.state {
            LinkState::Ready(send) if !send.is_closed() => Some((send.clone(), link.generation)),
            _ => None,
        }
    }

    /// A call could not be sent on connection `generation` (closed, or going away): the next
    /// call makes a new connection; this one closes once its streams are done.
    pub fn retire(&self, generation: u64) {
        let mut link = self.link();
        if link.generation == generation && matches!(link.state, LinkState::Ready(_)) {
            link.state = LinkState::Idle;
        }
    }

    fn closed(&self, generation: u64, ended: Result<(), String>) {
        let mut link = self.link();
        if link.generation != generation || !matches!(link.state, LinkState::Ready(_)) {
            return;
        }
        match ended {
            Ok(()) => link.state = LinkState::Idle,
            Err(error) => {
                drop(link);
                tracing::warn!(executor = %self.url, endpoint = %self.addr, %error, "a workflow executor connection failed");
                self.failed(error);
            }
        }
    }

    fn failed(&self, error: String) {
        let mut link = self.link();
        link.failures = link.failures.saturating_add(1);
        let backoff = backoff(link.failures);
        link.state = LinkState::Backoff(Instant::now() + backoff);
        tracing::warn!(
            executor = %self.url,
            endpoint = %self.addr,
            failures = link.failures,
            backoff_ms = backoff.as_millis() as u64,
            %error,
            "workflow executor endpoint skipped"
        );
        link.last_error = Some(error.chars().take(200).collect());
    }
}

/// The backoff after `failures` in a row, with a little jitter so replicas do not retry in step.
fn backoff(failures: u32) -> Duration {
    use rand::Rng as _;
    let base = FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    base.mul_f64(rand::thread_rng().gen_range(0.8..1.0))
}

/// A relayed call open on an endpoint, counted there until dropped.
pub struct OpenCall(Arc<Endpoint>);

impl OpenCall {
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint.open.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert!(backoff(1) <= FIRST_BACKOFF && backoff(1) >= FIRST_BACKOFF.mul_f64(0.8));
        assert!(backoff(2) > FIRST_BACKOFF);
        assert!(backoff(40) <= MAX_BACKOFF);
        assert!(backoff(u32::MAX) >= MAX_BACKOFF.mul_f64(0.8));
    }
}
