//! The gRPC transport: cross-cutting concerns as tower layers ([`request_id`], [`observe`],
//! [`admission`]), then [`Routes`], which sends each admitted call where it is served: gRPC health and
//! reflection, `GenerateToken` ([`minting`]), and every other call to the workflow executor
//! through the byte [`relay`].

pub mod admission;
pub mod capabilities;
pub mod grpc_frames;
pub mod metadata;
pub mod minting;
pub mod observe;
pub mod operator;
pub mod published_keys;
pub mod relay;
pub mod request_id;

use std::convert::Infallible;
use std::task::{Context, Poll};

use duo_workflow_domain::{AuthError, Rpc, StatusKind};
use http::{Request, Response};
use tonic::body::Body;
use tonic::{Code, Status};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

pub use admission::{AdmissionLayer, Caller};
pub use capabilities::{LearnedCapabilities, ServerCapabilities};
pub use minting::{GenerateTokenEndpoint, Minting};
pub use observe::ObserveLayer;
pub use relay::Relay;
pub use request_id::{RequestId, RequestIdLayer};

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
    /// HTTP/2 header list size (all metadata of one request); larger requests are refused by the
    /// HTTP/2 layer before the service allocates for them.
    pub max_header_list_bytes: u32,
    /// Concurrent streams one connection may open.
    pub max_concurrent_streams: u32,
    /// One gRPC message, each way (GitLab's 4 MiB).
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_list_bytes: 16 * 1024,
            max_concurrent_streams: 1024,
            max_message_bytes: grpc_frames::MAX_MESSAGE_BYTES,
        }
    }
}

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

/// Serves `routes` on `listener` until `shutdown` resolves, behind the request-id, observe and
/// admission layers.
pub async fn serve(
    listener: tokio::net::TcpListener,
    observe: ObserveLayer,
    admission: AdmissionLayer,
    routes: Routes,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let service = tower::ServiceBuilder::new()
        .layer(RequestIdLayer)
        // Inside the request id (which it logs), outside admission (whose refusals it counts).
        .layer(observe)
        .layer(admission)
        .service(routes);
    tonic::transport::Server::builder()
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .serve_with_incoming_shutdown(
            service,
            // tonic's own `tcp_nodelay` does not apply to an incoming stream: without it, a
            // response written in two pieces waits for the peer's delayed ACK (~40 ms).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
