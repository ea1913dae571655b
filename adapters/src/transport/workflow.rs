//! The `DuoWorkflow` service. Authentication and authorization already happened in the layer;
//! the handlers mint user tokens and relay workflows.

use std::pin::Pin;
use std::sync::Arc;

use duo_workflow_contract::duo_workflow_client::DuoWorkflowClient;
use duo_workflow_contract::duo_workflow_server::DuoWorkflow;
use duo_workflow_contract::{
    Action, ClientEvent, GenerateTokenRequest, GenerateTokenResponse, ListCapabilitiesRequest,
    ListCapabilitiesResponse, ListFlowsRequest, ListFlowsResponse, ListToolsRequest,
    ListToolsResponse, TrackSelfHostedAction, TrackSelfHostedClientEvent,
    ValidateFlowConfigRequest, ValidateFlowConfigResponse,
};
use duo_workflow_domain::ports::{Clock, TokenIssuer};
use duo_workflow_domain::user_token::UserTokenGrant;
use duo_workflow_domain::ServiceName;
use futures::future::ready;
use futures::{Stream, StreamExt};
use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::authentication::Caller;
use super::metadata::is_forwarded;
use super::status_of;

pub type ActionStream = Pin<Box<dyn Stream<Item = Result<Action, Status>> + Send + 'static>>;

pub struct WorkflowService {
    service: ServiceName,
    issuer: Arc<dyn TokenIssuer>,
    clock: Arc<dyn Clock>,
    executor: Option<UpstreamExecutor>,
}

impl WorkflowService {
    pub fn new(
        service: ServiceName,
        issuer: Arc<dyn TokenIssuer>,
        clock: Arc<dyn Clock>,
        executor: Option<UpstreamExecutor>,
    ) -> Self {
        Self {
            service,
            issuer,
            clock,
            executor,
        }
    }
}

/// The caller the authentication layer admitted. Its absence means the layer is not installed:
/// fail closed.
fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("request reached the service without authentication"))
}

/// Not relayed yet: the byte relay replaces these.
fn not_relayed<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not relayed yet"))
}

#[tonic::async_trait]
impl DuoWorkflow for WorkflowService {
    type ExecuteWorkflowStream = ActionStream;
    type TrackSelfHostedExecuteWorkflowStream =
        Pin<Box<dyn Stream<Item = Result<TrackSelfHostedAction, Status>> + Send + 'static>>;

    async fn list_capabilities(
        &self,
        _: Request<ListCapabilitiesRequest>,
    ) -> Result<Response<ListCapabilitiesResponse>, Status> {
        not_relayed()
    }
    async fn list_tools(
        &self,
        _: Request<ListToolsRequest>,
    ) -> Result<Response<ListToolsResponse>, Status> {
        not_relayed()
    }
    async fn list_flows(
        &self,
        _: Request<ListFlowsRequest>,
    ) -> Result<Response<ListFlowsResponse>, Status> {
        not_relayed()
    }
    async fn validate_flow_config(
        &self,
        _: Request<ValidateFlowConfigRequest>,
    ) -> Result<Response<ValidateFlowConfigResponse>, Status> {
        not_relayed()
    }
    async fn track_self_hosted_execute_workflow(
        &self,
        _: Request<Streaming<TrackSelfHostedClientEvent>>,
    ) -> Result<Response<Self::TrackSelfHostedExecuteWorkflowStream>, Status> {
        not_relayed()
    }

    async fn execute_workflow(
        &self,
        request: Request<Streaming<ClientEvent>>,
    ) -> Result<Response<ActionStream>, Status> {
        caller(&request)?;
        match &self.executor {
            None => Err(Status::unimplemented("No workflow executor configured")),
            Some(executor) => executor.relay(request).await,
        }
    }

    async fn generate_token(
        &self,
        request: Request<GenerateTokenRequest>,
    ) -> Result<Response<GenerateTokenResponse>, Status> {
        let caller = caller(&request)?;
        let grant = UserTokenGrant::for_caller(
            &caller.identity,
            &caller.metadata,
            &self.service,
            self.clock.now(),
        )
        .map_err(|e| status_of(&e))?;
        let token = self.issuer.issue(&grant).await.map_err(|e| {
            tracing::error!(error = %e, "minting a user token failed");
            Status::internal("Failed to generate token")
        })?;
        tracing::info!(expires_at = %token.expires_at, "user token minted");
        Ok(Response::new(GenerateTokenResponse {
            token: token.token,
            expires_at: token.expires_at.as_secs(),
            server_capabilities: Vec::new(),
        }))
    }
}

/// The workflow executor upstream: a server speaking the same contract, to which
/// `ExecuteWorkflow` streams are relayed whole, both ways, with the caller's metadata.
#[derive(Clone)]
pub struct UpstreamExecutor {
    client: DuoWorkflowClient<Channel>,
}

impl UpstreamExecutor {
    /// `channel` is usually lazy: an unreachable executor fails the streams, not start-up.
    pub fn new(channel: Channel) -> Self {
        Self {
            client: DuoWorkflowClient::new(channel),
        }
    }

    async fn relay(
        &self,
        request: Request<Streaming<ClientEvent>>,
    ) -> Result<Response<ActionStream>, Status> {
        let (metadata, _, inbound) = request.into_parts();
        // Relay client events until the client's stream ends or breaks.
        let events = inbound
            .take_while(|event| ready(event.is_ok()))
            .filter_map(|event| ready(event.ok()));
        let mut upstream = Request::new(events);
        copy_forwarded(&metadata, upstream.metadata_mut());
        let response = self
            .client
            .clone()
            .execute_workflow(upstream)
            .await
            .inspect_err(|status| {
                tracing::warn!(code = ?status.code(), "workflow executor refused the stream");
            })?;
        let actions: ActionStream = Box::pin(response.into_inner());
        Ok(Response::new(actions))
    }
}

fn copy_forwarded(from: &MetadataMap, to: &mut MetadataMap) {
    for entry in from.iter() {
        if let KeyAndValueRef::Ascii(key, value) = entry {
            if is_forwarded(key.as_str()) {
                to.append(key.clone(), value.clone());
            }
        }
    }
}
