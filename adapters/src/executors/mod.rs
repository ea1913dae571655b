//! The workflow executors behind the relay: every address of every configured URL is an
//! endpoint with one HTTP/2 connection of its own, and each new relayed call goes to the
//! endpoint with the fewest calls open now ([`duo_workflow_domain::balance`]). Names are
//! resolved again every few seconds ([`NameResolver`], a port): new addresses are connected to,
//! vanished ones drained (their open calls finish, no new call goes there). An endpoint that
//! cannot be connected to, or whose connection fails, is skipped with a backoff; a call that
//! never reached an executor is sent once more, elsewhere; one that reached an executor is never
//! sent twice.
//!
//! Written here rather than taken from tower's balancer: `tower::balance::p2c` samples two
//! endpoints (not the least loaded of all), its load is in-flight *futures* (a workflow stream
//! is open long after its response headers came), and it cannot tell a call that never left
//! from one that reached an executor, which decides whether a call may be sent again.

pub mod connect;
pub mod endpoint;
pub mod resolve;

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use duo_workflow_domain::balance::fewest_open;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::Status;

pub use connect::Connector;
pub use endpoint::{Endpoint, EndpointState, OpenCall};

/// One configured executor URL: where its addresses come from, and how calls name it.
#[derive(Debug)]
pub struct ExecutorUrl {
    scheme: Scheme,
    authority: Authority,
    /// The host as written (a name, or an IP address without brackets): resolved, and the name
    /// TLS checks.
    pub host: String,
    ip: Option<IpAddr>,
    pub port: u16,
    /// `scheme://host:port`, for logs, metrics and the operator page.
    origin: String,
}

impl ExecutorUrl {
    /// An `http` or `https` URL with a host and nothing after it but `/`.
    pub fn parse(url: &url::Url) -> Result<Self, String> {
        let scheme = match url.scheme() {
            "http" => Scheme::HTTP,
            "https" => Scheme::HTTPS,
            _ => return Err("must be an http(s) URL".into()),
        };
        let (host, ip) = match url.host() {
            Some(url::Host::Domain(name)) => (name.to_owned(), None),
            Some(url::Host::Ipv4(ip)) => (ip.to_string(), Some(IpAddr::V4(ip))),
            Some(url::Host::Ipv6(ip)) => (ip.to_string(), Some(IpAddr::V6(ip))),
            None => return Err("must have a host".into()),
        };
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err("must have no path, query or fragment (calls keep their own path)".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must have no user or password".into());
        }
        let port = url.port_or_known_default().ok_or("must have a port")?;
        let origin = url.origin().ascii_serialization();
        let authority = origin
            .split_once("://")
            .and_then(|(_, a)| a.parse().ok())
            .ok_or("has no valid authority")?;
        Ok(Self {
            scheme,
            authority,
            host,
            ip,
            port,
            origin,
        })
    }

    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The origin, `scheme://host:port`.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

impl std::fmt::Display for ExecutorUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.origin)
    }
}

/// The executors, their endpoints and connections.
pub struct Executors {
    urls: Vec<Arc<ExecutorUrl>>,
    connector: Connector,
    /// The endpoints new calls may go to, in resolution order.
    active: RwLock<Arc<[Arc<Endpoint>]>>,
    /// Endpoints no longer resolved whose calls are still open.
    draining: Mutex<Vec<Weak<Endpoint>>>,
    /// Set once every URL was resolved once: until then a call waits rather than fail.
    resolved: tokio::sync::watch::Sender<bool>,
    /// Calls that never reached an executor and were sent again.
    retried: AtomicU64,
    resolve_every: Duration,
}

/// One endpoint, as operators see it.
#[derive(Debug, Clone)]
pub struct EndpointView {
    /// The configured URL's origin.
    pub executor: String,
    pub endpoint: SocketAddr,
    pub state: EndpointState,
    pub open_calls: usize,
    /// Failures in a row, and the last one's reason (capped).
    pub failures: u32,
    pub last_error: Option<String>,
}

/// How long a call waits at start-up for the first resolution.
const FIRST_RESOLUTION_WAIT: Duration = Duration::from_secs(5);

/// A call relayed to an executor: its response, and the call counted open at its endpoint
/// (keep it until the response ends).
pub struct Relayed {
    pub response: Response<Incoming>,
    pub call: OpenCall,
}

/// Why a call was not relayed.
#[derive(Debug)]
pub enum NotRelayed {
    /// No endpoint may take calls now (none resolved, or all failing).
    NoEndpoint,
    /// Every attempt failed; the reason for the log.
    Failed(String),
}

impl Executors {
    /// The executors at `urls`; `connector` connects to them. Endpoints of IP addresses exist at
    /// once; names wait for [`Executors::resolve_forever`].
    pub fn new(urls: Vec<ExecutorUrl>, connector: Connector, resolve_every: Duration) -> Arc<Self> {
        let urls: Vec<Arc<ExecutorUrl>> = urls.into_iter().map(Arc::new).collect();
        let all_literal = urls.iter().all(|u| u.ip.is_some());
        let endpoints: Vec<Arc<Endpoint>> = urls
            .iter()
            .filter_map(|u| {
                Some(Arc::new(Endpoint::new(
                    u.clone(),
                    SocketAddr::new(u.ip?, u.port),
                )))
            })
            .collect();
        Arc::new(Self {
            urls,
            connector,
            active: RwLock::new(endpoints.into()),
            draining: Mutex::default(),
            resolved: tokio::sync::watch::Sender::new(all_literal),
            retried: AtomicU64::new(0),
            resolve_every,
        })
    }

    pub fn urls(&self) -> &[Arc<ExecutorUrl>] {
        &self.urls
    }

    fn active(&self) -> Arc<[Arc<Endpoint>]> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every endpoint, active then draining.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        let mut all: Vec<Arc<Endpoint>> = self.active().to_vec();
        let mut draining = self.draining.lock().unwrap_or_else(|e| e.into_inner());
        draining.retain(|e| e.strong_count() > 0);
        all.extend(draining.iter().filter_map(Weak::upgrade));
        all
    }

    /// What operators see of every endpoint now.
    pub fn view(&self) -> Vec<EndpointView> {
        let now = Instant::now();
        self.endpoints()
            .iter()
            .map(|e| {
                let (failures, last_error) = e.failures();
                EndpointView {
                    executor: e.url.origin().to_owned(),
                    endpoint: e.addr,
                    state: e.state(now),
                    open_calls: e.open_calls(),
                    failures,
                    last_error,
                }
            })
            .collect()
    }

    pub fn resolve_every(&self) -> Duration {
        self.resolve_every
    }

    /// Calls sent again after they never reached an executor.
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// The endpoint with the fewest open calls among those that may take one (`except` aside).
    fn pick(&self, except: Option<&Arc<Endpoint>>) -> Option<Arc<Endpoint>> {
        use rand::Rng as _;
        let now = Instant::now();
        let active = self.active();
        let eligible: Vec<&Arc<Endpoint>> = active
            .iter()
            .filter(|e| e.eligible(now) && except.is_none_or(|x| !Arc::ptr_eq(x, e)))
            .collect();
        let mut rng = rand::thread_rng();
        let chosen = fewest_open(eligible.iter().map(|e| e.open_calls()), |n| {
            rng.gen_range(0..n)
        })?;
        Some(eligible[chosen].clone())
    }

    /// Sends `request` to the endpoint with the fewest open calls. A call that never reached
    /// it (no connection could be made, or the request was handed back unsent, or the stream
    /// was refused before a byte of the body was taken) is sent once more: to another endpoint,
    /// or to the same one over a new connection when it is the only one.
    pub async fn send(&self, request: Request<Body>) -> Result<Relayed, NotRelayed> {
        if self.active().is_empty() {
            let mut resolved = self.resolved.subscribe();
            let _ = tokio::time::timeout(FIRST_RESOLUTION_WAIT, resolved.wait_for(|r| *r)).await;
        }
        let first = self.pick(None).ok_or(NotRelayed::NoEndpoint)?;
        let (head, body) = request.into_parts();
        let again = head_again(&head);
        let slot = Slot::new(body);
        let request = Request::from_parts(head, Body::new(slot.attempt(0)));
        let why = match self.attempt(&first, request, &slot).await {
            Ok(relayed) => return Ok(relayed),
            Err(Attempt::Failed(why)) => return Err(NotRelayed::Failed(why)),
            Err(Attempt::Unreached(why)) => why,
        };
        let second = self.pick(Some(&first)).unwrap_or(first.clone());
        let Some(body) = slot.attempt_again(1) else {
            return Err(NotRelayed::Failed(why));
        };
        self.retried.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            from = %first.addr,
            to = %second.addr,
            reason = %why,
            "a call that never reached a workflow executor is sent again"
        );
        match self
            .attempt(&second, Request::from_parts(again, body), &slot)
            .await
        {
            Ok(relayed) => Ok(relayed),
            Err(Attempt::Failed(why) | Attempt::Unreached(why)) => Err(NotRelayed::Failed(why)),
        }
    }

    async fn attempt(
        &self,
        endpoint: &Arc<Endpoint>,
        mut request: Request<Body>,
        slot: &Slot,
    ) -> Result<Relayed, Attempt> {
        let call = OpenCall::new(endpoint.clone());
        let (mut send, generation) = endpoint
            .sender(&self.connector)
            .await
            .map_err(Attempt::Unreached)?;
        *request.uri_mut() = absolute(&endpoint.url, request.uri());
        match send.try_send_request(request).await {
            Ok(response) => Ok(Relayed { response, call }),
            Err(mut e) => {
                let why = error_chain(e.error());
                let unsent = e.take_message().is_some() || slot.untouched();
                if unsent {
                    endpoint.retire(generation);
                    Err(Attempt::Unreached(why))
                } else {
                    Err(Attempt::Failed(why))
                }
            }
        }
    }

    /// Swaps in the endpoints of a resolution (`(url, address)` in order): new ones are
    /// connected to at once, vanished ones drained.
    fn update(self: &Arc<Self>, resolved: Vec<(Arc<ExecutorUrl>, SocketAddr)>) {
        let current = self.active();
        let mut next: Vec<Arc<Endpoint>> = Vec::with_capacity(resolved.len());
        for (url, addr) in resolved {
            if next
                .iter()
                .any(|e| e.addr == addr && Arc::ptr_eq(&e.url, &url))
            {
                continue;
            }
            match current
                .iter()
                .find(|e| e.addr == addr && Arc::ptr_eq(&e.url, &url))
            {
                Some(kept) => next.push(kept.clone()),
                None => {
                    let added = Arc::new(Endpoint::new(url, addr));
                    tracing::info!(executor = %added.url, endpoint = %addr, "workflow executor endpoint added");
                    let (me, warm) = (self.clone(), added.clone());
                    tokio::spawn(async move {
                        let _ = warm.sender(&me.connector).await;
                    });
                    next.push(added);
                }
            }
        }
        let mut draining = self.draining.lock().unwrap_or_else(|e| e.into_inner());
        for gone in current
            .iter()
            .filter(|e| !next.iter().any(|n| Arc::ptr_eq(n, e)))
        {
            gone.remove();
            tracing::info!(
                executor = %gone.url,
                endpoint = %gone.addr,
                open_calls = gone.open_calls(),
                "workflow executor endpoint removed: its open calls finish there"
            );
            draining.push(Arc::downgrade(gone));
        }
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = next.into();
    }
}

enum Attempt {
    /// Never reached the executor: may be sent again.
    Unreached(String),
    /// May have reached it: never sent again.
    Failed(String),
}

/// `uri`'s path on the executor at `url`.
fn absolute(url: &ExecutorUrl, uri: &Uri) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(url.scheme.clone());
    parts.authority = Some(url.authority.clone());
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A copy of a request's head (its extensions aside), to send the request again with.
fn head_again(head: &http::request::Parts) -> http::request::Parts {
    let mut request = Request::new(());
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers.clone();
    request.into_parts().0
}

/// The caller's body, shared by a call's attempts until one of them takes its first frame:
/// while it is here, no byte of it has gone anywhere, and the call may be sent again.
#[derive(Clone)]
struct Slot(Arc<Mutex<SlotState>>);

struct SlotState {
    /// The attempt the body belongs to: an earlier attempt's body (still held by hyper for a
    /// failed stream) must not take it.
    attempt: u8,
    body: Option<Body>,
}

impl Slot {
    fn new(body: Body) -> Self {
        Self(Arc::new(Mutex::new(SlotState {
            attempt: 0,
            body: Some(body),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn untouched(&self) -> bool {
        self.lock().body.is_some()
    }

    /// The body for attempt `attempt`.
    fn attempt(&self, attempt: u8) -> AttemptBody {
        AttemptBody {
            slot: self.clone(),
            attempt,
            body: None,
        }
    }

    /// The body for another attempt, when no byte of it has gone yet.
    fn attempt_again(&self, attempt: u8) -> Option<Body> {
        let mut state = self.lock();
        state.body.as_ref()?;
        state.attempt = attempt;
        drop(state);
        Some(Body::new(self.attempt(attempt)))
    }
}

/// One attempt's view of the caller's body: takes it from the [`Slot`] on its first poll.
struct AttemptBody {
    slot: Slot,
    attempt: u8,
    body: Option<Body>,
}

impl AttemptBody {
    fn with_body<T>(&self, f: impl FnOnce(Option<&Body>) -> T) -> T {
        match &self.body {
            Some(body) => f(Some(body)),
            None => {
                let state = self.slot.lock();
                f(state
                    .body
                    .as_ref()
                    .filter(|_| state.attempt == self.attempt))
            }
        }
    }
}

impl HttpBody for AttemptBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.body.is_none() {
            let mut state = self.slot.lock();
            if state.attempt != self.attempt {
                // Another attempt owns the body now; this one's stream is gone.
                return Poll::Ready(None);
            }
            let taken = state.body.take();
            drop(state);
            self.body = taken;
        }
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.with_body(|b| b.is_none_or(HttpBody::is_end_stream))
    }

    fn size_hint(&self) -> SizeHint {
        self.with_body(|b| b.map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_urls_name_an_origin_and_nothing_more() {
        let parse = |s: &str| ExecutorUrl::parse(&url::Url::parse(s).unwrap());
        let u = parse("http://executor.ns.svc:50052").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.ip),
            ("executor.ns.svc", 50052, None)
        );
        assert_eq!(u.origin(), "http://executor.ns.svc:50052");
        let u = parse("https://10.0.0.7/").unwrap();
        assert_eq!((u.port, u.ip), (443, Some("10.0.0.7".parse().unwrap())));
        assert!(u.is_https());
        let u = parse("http://[::1]:9").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(
            absolute(&u, &"/DuoWorkflow/ListTools".parse().unwrap()).to_string(),
            "http://[::1]:9/DuoWorkflow/ListTools"
        );
        for bad in [
            "http://e:1/v1",
            "http://e:1/?x=1",
            "ftp://e:1",
            "http://u:p@e:1",
            "http://e:1/#f",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_body_taken_by_no_attempt_goes_to_the_next_and_never_to_an_older_one() {
        use http_body_util::BodyExt;
        let body = Body::new(http_body_util::Full::new(Bytes::from_static(b"payload")));
        let slot = Slot::new(body);
        let mut first = slot.attempt(0);
        assert!(slot.untouched());
        let mut second = slot.attempt_again(1).unwrap();
        // The first attempt's stream, polled late, finds nothing; the second takes it all.
        assert!(first.frame().await.is_none());
        assert_eq!(
            second.frame().await.unwrap().unwrap().into_data().unwrap(),
            "payload"
        );
        assert!(!slot.untouched());
        assert!(
            slot.attempt_again(2).is_none(),
            "a touched body is never sent again"
        );
    }
}
