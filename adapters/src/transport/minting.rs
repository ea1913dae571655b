//! `GenerateToken`, the one RPC the service answers itself: a user token for the caller the
//! admission layer let in (SPEC A and C3), and the executor's capabilities.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use duo_workflow_contract::{GenerateTokenRequest, GenerateTokenResponse};
use duo_workflow_domain::policy::Delegation;
use duo_workflow_domain::ports::{Clock, TokenIssuer};
use duo_workflow_domain::user_token::UserTokenGrant;
use duo_workflow_domain::ServiceName;
use http::{Request, Response};
use tonic::body::Body;
use tonic::codec::CompressionEncoding;
use tonic::server::Grpc;
use tonic::Status;
use tonic_prost::ProstCodec;
use tower::Service;

use super::admission::Caller;
use super::capabilities::ServerCapabilities;
use super::status_of;

/// What minting needs.
pub struct Minting {
    pub service: ServiceName,
    pub issuer: Arc<dyn TokenIssuer>,
    pub clock: Arc<dyn Clock>,
    pub delegation: Delegation,
    pub capabilities: ServerCapabilities,
    pub max_message_bytes: usize,
}

impl Minting {
    async fn generate_token(
        &self,
        request: tonic::Request<GenerateTokenRequest>,
    ) -> Result<tonic::Response<GenerateTokenResponse>, Status> {
        // Its absence means the admission layer is not installed: fail closed.
        let caller = request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::internal("request reached the service without admission"))?;
        let grant = UserTokenGrant::for_caller(
            &caller.identity,
            &caller.metadata,
            &self.service,
            &self.delegation,
            self.clock.now(),
        )
        .map_err(|e| status_of(&e))?;
        let token = self.issuer.issue(&grant).await.map_err(|e| {
            tracing::error!(error = %e, "minting a user token failed");
            Status::internal("Failed to generate token")
        })?;
        let scopes: Vec<&str> = grant.scopes.iter().map(|s| s.as_str()).collect();
        tracing::info!(expires_at = %token.expires_at, ?scopes, "user token minted");
        Ok(tonic::Response::new(GenerateTokenResponse {
            token: token.token,
            expires_at: token.expires_at.as_secs(),
            server_capabilities: self.capabilities.current(request.metadata()),
        }))
    }
}

/// The `GenerateToken` endpoint: gRPC framing and codec around [`Minting`].
#[derive(Clone)]
pub struct GenerateTokenEndpoint(Arc<Minting>);

impl GenerateTokenEndpoint {
    pub fn new(minting: Minting) -> Self {
        Self(Arc::new(minting))
    }
}

impl Service<Request<Body>> for GenerateTokenEndpoint {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let minting = self.0.clone();
        Box::pin(async move {
            let mut grpc =
                Grpc::new(ProstCodec::<GenerateTokenResponse, GenerateTokenRequest>::default())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Deflate)
                    .max_decoding_message_size(minting.max_message_bytes);
            let handler = tower::service_fn(move |r| {
                let minting = minting.clone();
                async move { minting.generate_token(r).await }
            });
            Ok(grpc.unary(handler, request).await)
        })
    }
}
