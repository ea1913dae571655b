//! The gRPC transport: cross-cutting concerns as tower layers ([`request_id`], [`observe`],
//! [`admission`]), then [`Routes`], which sends each admitted call where it is served: gRPC health and
//! reflection, `GenerateToken` ([`minting`]), and every other call to the workflow executor
//! through the byte [`relay`]. [`serve`] is the one place gRPC is served: connections are
//! accepted by [`listener`] (bounded, TLS by [`tls`]) and speak HTTP/2 through hyper.

pub mod admission;
pub mod capabilities;
pub mod grpc_frames;
pub mod listener;
pub mod metadata;
pub mod minting;
pub mod observe;
pub mod open_streams;
pub mod operator;
pub mod published_keys;
pub mod relay;
pub mod request_id;
#[cfg(test)]
mod scripted;
pub mod tls;

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use duo_workflow_domain::{AuthError, Rpc, StatusKind};
use http::{Request, Response};
use tonic::body::Body;
use tonic::{Code, Status};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

pub use admission::{AdmissionLayer, Caller};
pub use capabilities::{LearnedCapabilities, ServerCapabilities};
pub use grpc_frames::HeldBytes;
pub use listener::{Acceptor, ConnectionLimits, Protocol};
pub use minting::{GenerateTokenEndpoint, Minting};
pub use observe::ObserveLayer;
pub use open_streams::OpenLimits;
pub use relay::Relay;
pub use request_id::{RequestId, RequestIdLayer};
pub use tls::{ReloadableTls, TlsFiles};

/// The gRPC status for a refusal: SPEC's code, and its exact `details` as the message.
pub fn status_of(error: &AuthError) -> Status {
    let code = match error.kind() {
        StatusKind::Unauthenticated => Code::Unauthenticated,
        StatusKind::PermissionDenied => Code::PermissionDenied,
        StatusKind::Unavailable => Code::Unavailable,
        StatusKind::InvalidArgument => Code::InvalidArgument,
    };
    Status::new(code, error.details())
}

/// Transport limits, each bounded by configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// All metadata of one request, counted as HPACK does ([`metadata::metadata_size`]); a
    /// larger request is refused with `RESOURCE_EXHAUSTED`. The HTTP/2 layer's own cap sits
    /// above it ([`Limits::http2_max_header_list_bytes`]).
    pub max_header_list_bytes: u32,
    /// Concurrent streams one connection may open.
    pub max_concurrent_streams: u32,
    /// One gRPC message, each way (GitLab's 4 MiB).
    pub max_message_bytes: usize,
    /// Open connections, and the time each gets to complete its TLS handshake and HTTP/2
    /// preface.
    pub connections: ConnectionLimits,
    /// A PING is sent after this long without a frame from the peer...
    pub keepalive_interval: Duration,
    /// ...and the connection closed if its ACK does not come within this.
    pub keepalive_timeout: Duration,
    /// Streams the server resets because the peer's frames were malformed, per connection and
    /// over its whole life; past it the connection is closed (GOAWAY `ENHANCE_YOUR_CALM`). h2
    /// counts here too the `STREAM_CLOSED` resets it sends for late frames of streams already
    /// answered and forgotten (a refused call whose body was still arriving), so a low value
    /// closes busy, well-behaved connections that see many refusals.
    pub max_reset_streams: usize,
    /// Calls without a token (health, reflection).
    pub open: OpenLimits,
    /// First messages held before authorization.
    pub first_messages: FirstMessageLimits,
    /// `None`: connections live as long as their clients keep them.
    pub connection_age: Option<ConnectionAge>,
}

/// How long a client's connection is served (gRPC's `MAX_CONNECTION_AGE` and its grace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionAge {
    /// Past this (less up to a tenth, at random) a connection is sent GOAWAY...
    pub max_age: Duration,
    /// ...and closed this long after, if its streams have not finished.
    pub grace: Duration,
}

/// Bounds on the first messages read before a call is authorized (`ExecuteWorkflow`'s and
/// `GenerateToken`'s): the bytes held for them per connection and service-wide, and the time
/// a first message, once begun, has to arrive whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstMessageLimits {
    pub bytes_per_connection: usize,
    pub bytes_total: usize,
    pub time_to_arrive: Duration,
}

impl Default for FirstMessageLimits {
    fn default() -> Self {
        Self {
            // Two of the largest messages (with their prefixes) per connection; sixteen in all.
            bytes_per_connection: 2 * (grpc_frames::MAX_MESSAGE_BYTES + 5),
            bytes_total: 16 * (grpc_frames::MAX_MESSAGE_BYTES + 5),
            time_to_arrive: Duration::from_secs(30),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_list_bytes: 24 * 1024,
            max_concurrent_streams: 1024,
            max_message_bytes: grpc_frames::MAX_MESSAGE_BYTES,
            connections: ConnectionLimits {
                max_connections: 10_000,
                handshake_timeout: Duration::from_secs(10),
            },
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(20),
            // hyper's default.
            max_reset_streams: 1024,
            open: OpenLimits::default(),
            first_messages: FirstMessageLimits::default(),
            connection_age: None,
        }
    }
}

impl Limits {
    /// The HTTP/2 layer's hard cap on a header list: twice the gRPC-level limit, at least
    /// 64 KiB. A request above it is refused by h2 itself (HTTP 431 and `REFUSED_STREAM`)
    /// without decoding the rest; between the two it gets a gRPC status.
    pub fn http2_max_header_list_bytes(&self) -> u32 {
        self.max_header_list_bytes.saturating_mul(2).max(64 * 1024)
    }
}

/// Client-initiated resets of streams not yet accepted, per connection (HTTP/2 "rapid reset").
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// The client's connection preface (24 bytes) and the 9-byte header of its SETTINGS frame: what
/// must arrive within the handshake timeout.
const PREFACE_AND_SETTINGS: usize = 24 + 9;

type Endpoint = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// Where admitted calls are served. It decides nothing: the admission layer in front of it has
/// already refused what the method table refuses.
#[derive(Clone)]
pub struct Routes(std::sync::Arc<Endpoints>);

struct Endpoints {
    health: Endpoint,
    reflection: Option<(Endpoint, Endpoint)>,
    generate_token: Endpoint,
    relay: Option<Relay>,
}

impl Routes {
    pub fn new(
        health: tonic_health::pb::health_server::HealthServer<
            impl tonic_health::pb::health_server::Health,
        >,
        generate_token: GenerateTokenEndpoint,
        relay: Option<Relay>,
    ) -> Self {
        Self(std::sync::Arc::new(Endpoints {
            health: BoxCloneSyncService::new(health),
            reflection: None,
            generate_token: BoxCloneSyncService::new(generate_token),
            relay,
        }))
    }

    /// Serves gRPC reflection (v1 and v1alpha) of the contract. Call before serving.
    pub fn with_reflection(mut self) -> Self {
        let build = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(duo_workflow_contract::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let v1 = build()
            .build_v1()
            .expect("the contract's descriptors are valid");
        let v1alpha = build()
            .build_v1alpha()
            .expect("the contract's descriptors are valid");
        std::sync::Arc::get_mut(&mut self.0)
            .expect("reflection is added before the routes are shared")
            .reflection = Some((
            BoxCloneSyncService::new(v1),
            BoxCloneSyncService::new(v1alpha),
        ));
        self
    }

    async fn route(self, request: Request<Body>) -> Response<Body> {
        let e = &self.0;
        let path = request.uri().path();
        let endpoint = if path.starts_with("/grpc.health.v1.Health/") {
            Some(e.health.clone())
        } else if path.starts_with("/grpc.reflection.v1.ServerReflection/") {
            e.reflection.as_ref().map(|(v1, _)| v1.clone())
        } else if path.starts_with("/grpc.reflection.v1alpha.ServerReflection/") {
            e.reflection.as_ref().map(|(_, v1alpha)| v1alpha.clone())
        } else if Rpc::from_path(path) == Some(Rpc::GenerateToken) {
            Some(e.generate_token.clone())
        } else {
            return self.relay(request).await;
        };
        match endpoint {
            Some(endpoint) => endpoint
                .oneshot(request)
                .await
                .unwrap_or_else(|e| match e {}),
            None => Status::unimplemented(admission::METHOD_NOT_FOUND).into_http(),
        }
    }

    async fn relay(&self, request: Request<Body>) -> Response<Body> {
        // Only admitted calls are relayed: without the admission layer, fail closed.
        if request.extensions().get::<Caller>().is_none() {
            return Status::internal("request reached the relay without admission").into_http();
        }
        match &self.0.relay {
            Some(relay) => relay.forward(request).await,
            None => Status::unimplemented("No workflow executor configured").into_http(),
        }
    }
}

impl Service<Request<Body>> for Routes {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let routes = self.clone();
        Box::pin(async move { Ok(routes.route(request).await) })
    }
}

/// `RESOURCE_EXHAUSTED` for a request whose metadata exceeds `max` bytes (counted by
/// [`metadata::metadata_size`]), as a gRPC status rather than HTTP/2's 431.
fn metadata_too_large<B>(req: &Request<B>, max: usize) -> Option<Status> {
    let size = metadata::metadata_size(req);
    (size > max).then(|| {
        tracing::warn!(
            size,
            limit = max,
            path = req.uri().path(),
            "request refused: metadata too large"
        );
        Status::resource_exhausted(format!(
            "request metadata of {size} bytes exceeds the limit of {max} bytes"
        ))
    })
}

/// Serves `routes` on the listener of `acceptor` until `shutdown` resolves, behind the
/// open-stream bounds and the request-id, observe and admission layers; then stops accepting,
/// asks every connection to finish (GOAWAY) and returns once they have. Dropping the returned
/// future closes every connection.
pub async fn serve(
    acceptor: Acceptor,
    observe: ObserveLayer,
    admission: AdmissionLayer,
    routes: Routes,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

    let service = tower::ServiceBuilder::new()
        .layer(open_streams::OpenStreamsLayer::new(
            admission.methods(),
            limits.open,
        ))
        .layer(RequestIdLayer)
        // Inside the request id (which it logs), outside admission (whose refusals it counts).
        .layer(observe)
        .layer(admission)
        .service(routes);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(limits.http2_max_header_list_bytes())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        .max_local_error_reset_streams(limits.max_reset_streams)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS);
    // Shutdown: every connection is asked to finish (GOAWAY); `served` closes once the last
    // connection past its handshake has ended (those still in it just stop).
    let (stopping, stop_signal) = tokio::sync::watch::channel(false);
    let (served, mut all_served) = tokio::sync::mpsc::channel::<()>(1);
    let connections = listener::accept_until(acceptor, shutdown, |accepted, handshake| {
        let (http2, service) = (http2.clone(), service.clone());
        let (mut stop_signal, served) = (stop_signal.clone(), served.clone());
        let streams = open_streams::ConnectionStreams::new(&limits.open);
        let first_messages = grpc_frames::HeldBytes::new(limits.first_messages.bytes_per_connection);
        async move {
            let _served = served;
            let listener::Accepted {
                stream,
                peer,
                permit: _permit,
            } = accepted;
            let started = tokio::time::Instant::now();
            let io = tokio::select! {
                io = handshake.secure(stream, peer) => io,
                _ = stop_signal.wait_for(|s| *s) => None,
            };
            let Some(io) = io else {
                return;
            };
            let (io, read) = listener::Counted::new(io);
            let max_metadata = limits.max_header_list_bytes as usize;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(streams.clone());
                req.extensions_mut().insert(first_messages.clone());
                let service = service.clone();
                async move {
                    // Before anything is added to the request (its id): what the client sent.
                    match metadata_too_large(&req, max_metadata) {
                        Some(status) => Ok(status.into_http()),
                        None => service.oneshot(req).await,
                    }
                }
            });
            // Dropping `finish` asks the connection to finish: GOAWAY, its open streams go on.
            let finish = hyper_util::server::graceful::GracefulShutdown::new();
            let connection = finish.watch(http2.serve_connection(TokioIo::new(io), service));
            // The peer's preface and SETTINGS must arrive within what is left of the timeout.
            let deadline = started + handshake.limits().handshake_timeout;
            let connection = listener::expect_bytes_by(connection, &read, PREFACE_AND_SETTINGS, deadline);
            let ended = serve_until_old(connection, finish, limits.connection_age, &mut stop_signal).await;
            match ended {
                None => tracing::debug!(%peer, "closed: no HTTP/2 preface in time, or past its age and grace"),
                Some(Err(e)) => tracing::debug!(%peer, "connection ended: {e}"),
                Some(Ok(())) => {}
            }
        }
    })
    .await;
    drop(served);
    let _ = stopping.send(true);
    let _ = all_served.recv().await;
    drop(connections);
}

/// Drives `connection` until it ends. At shutdown it is asked to finish (the server's grace
/// period bounds the rest). Past its age (with a tenth of jitter, so that a replica's
/// connections do not all go at once) it is asked to finish too, and closed if it has not
/// within the grace: clients then open new connections, which spreads long-lived clients over
/// the replicas there are now (gRPC's `MAX_CONNECTION_AGE`).
async fn serve_until_old<T>(
    connection: impl std::future::Future<Output = Option<T>>,
    finish: hyper_util::server::graceful::GracefulShutdown,
    age: Option<ConnectionAge>,
    stop_signal: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<T> {
    use rand::Rng as _;
    use tokio::time::{sleep_until, Instant};
    tokio::pin!(connection);
    let mut finish = Some(finish);
    let old_at =
        age.map(|a| Instant::now() + a.max_age.mul_f64(rand::thread_rng().gen_range(0.9..=1.0)));
    let mut close_at: Option<Instant> = None;
    loop {
        tokio::select! {
            ended = &mut connection => return ended,
            _ = stop_signal.wait_for(|s| *s), if finish.is_some() => drop(finish.take()),
            () = sleep_until(old_at.unwrap_or_else(Instant::now)), if old_at.is_some() && finish.is_some() => {
                drop(finish.take());
                close_at = age.map(|a| Instant::now() + a.grace);
                tracing::debug!("connection past its age: asked to finish");
            }
            () = sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => {
                tracing::debug!("connection past its age and grace: closed");
                return None;
            }
        }
    }
}
