//! The tonic transport: cross-cutting concerns as tower layers ([`request_id`],
//! [`authentication`]), and the `DuoWorkflow` service ([`workflow`]), which only does its business.

pub mod authentication;
pub mod metadata;
pub mod published_keys;
pub mod request_id;
pub mod workflow;

use duo_workflow_domain::{AuthError, StatusKind};
use tonic::{Code, Status};

pub use authentication::{AuthenticationLayer, Caller};
pub use request_id::{RequestId, RequestIdLayer};
pub use workflow::{UpstreamExecutor, WorkflowService};

/// Paths served without authentication: the standard gRPC health service (probes carry no token).
pub fn is_exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
}

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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_list_bytes: 16 * 1024,
            max_concurrent_streams: 1024,
        }
    }
}

/// Serves the `DuoWorkflow` service and the gRPC health service on `listener` until `shutdown`
/// resolves, with the request-id and authentication layers in front of both (health is exempt
/// from authentication).
pub async fn serve(
    listener: tokio::net::TcpListener,
    gatekeeper: std::sync::Arc<duo_workflow_domain::gatekeeper::Gatekeeper>,
    workflow: WorkflowService,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let layers = tower::ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(AuthenticationLayer::new(gatekeeper));
    tonic::transport::Server::builder()
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .layer(layers)
        .add_service(health)
        .add_service(duo_workflow_contract::duo_workflow_server::DuoWorkflowServer::new(workflow))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}
