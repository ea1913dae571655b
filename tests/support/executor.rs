//! A fake workflow executor upstream, speaking the whole contract with tonic's generated server:
//! records every call it receives (RPC, metadata, goals) and answers each RPC.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use duo_workflow_contract::duo_workflow_server::{DuoWorkflow, DuoWorkflowServer};
use duo_workflow_contract::{
    action, client_event, Action, Capability, ClientEvent, GenerateTokenRequest,
    GenerateTokenResponse, ListCapabilitiesRequest, ListCapabilitiesResponse, ListFlowsRequest,
    ListFlowsResponse, ListToolsRequest, ListToolsResponse, ReadFile, TrackSelfHostedAction,
    TrackSelfHostedClientEvent, ValidateFlowConfigRequest, ValidateFlowConfigResponse,
};
use futures::{Stream, StreamExt};
use tokio::sync::oneshot;
use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::{Request, Response, Status, Streaming};

/// What the fake executor answers to `ListCapabilities`.
pub const CAPABILITIES: [&str; 3] = [
    "tool_call_approval",
    "tool_call_pattern_approval",
    "flow_semantic_versioning",
];

/// What the executor saw of one call.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The RPC's name, e.g. `ExecuteWorkflow`.
    pub rpc: &'static str,
    pub metadata: Vec<(String, String)>,
    /// `ExecuteWorkflow`: the goal of its start request, if its first message was one.
    pub goals: Vec<String>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
pub struct FakeExecutor {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// When set, streams end with this status after the first action.
    pub fail_with: Arc<Mutex<Option<Status>>>,
    /// When set, the executor thinks this long before answering (a call in flight).
    pub delay: Arc<Mutex<Option<std::time::Duration>>>,
    /// When set, `ListCapabilities` takes this long to answer.
    pub capabilities_delay: Arc<Mutex<Option<std::time::Duration>>>,
    /// When set, the executor's authentication is on: `ListCapabilities` answers only calls
    /// this check lets through.
    pub authentication: Arc<Mutex<Option<Authentication>>>,
}

/// An executor's check of a call's metadata.
pub type Authentication = Arc<dyn Fn(&MetadataMap) -> Result<(), Status> + Send + Sync>;

impl FakeExecutor {
    fn record(&self, rpc: &'static str, metadata: &MetadataMap, goals: Vec<String>) {
        let metadata = metadata
            .iter()
            .filter_map(|kv| match kv {
                KeyAndValueRef::Ascii(k, v) => {
                    Some((k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                }
                _ => None,
            })
            .collect();
        self.seen.lock().unwrap().push(Seen {
            rpc,
            metadata,
            goals,
        });
    }

    /// The RPCs received, in order.
    pub fn rpcs(&self) -> Vec<&'static str> {
        self.seen.lock().unwrap().iter().map(|s| s.rpc).collect()
    }
}

#[tonic::async_trait]
impl DuoWorkflow for FakeExecutor {
    type ExecuteWorkflowStream = Pin<Box<dyn Stream<Item = Result<Action, Status>> + Send>>;

    async fn execute_workflow(
        &self,
        request: Request<Streaming<ClientEvent>>,
    ) -> Result<Response<Self::ExecuteWorkflowStream>, Status> {
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        let mut goals = Vec::new();
        if let Some(Ok(ClientEvent {
            response: Some(client_event::Response::StartRequest(start)),
        })) = inbound.message().await.transpose()
        {
            goals.push(start.goal);
        }
        self.record("ExecuteWorkflow", &metadata, goals);
        let delay = *self.delay.lock().unwrap();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let read = Action {
            request_id: "action-1".into(),
            action: Some(action::Action::RunReadFile(ReadFile {
                filepath: "README.md".into(),
                ..Default::default()
            })),
        };
        let mut items: Vec<Result<Action, Status>> = vec![Ok(read)];
        match self.fail_with.lock().unwrap().clone() {
            Some(status) => items.push(Err(status)),
            None => items.push(Ok(Action {
                request_id: "action-2".into(),
                action: None,
            })),
        }
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn generate_token(
        &self,
        request: Request<GenerateTokenRequest>,
    ) -> Result<Response<GenerateTokenResponse>, Status> {
        self.record("GenerateToken", request.metadata(), vec![]);
        Err(Status::unimplemented("executor does not mint"))
    }

    async fn list_capabilities(
        &self,
        request: Request<ListCapabilitiesRequest>,
    ) -> Result<Response<ListCapabilitiesResponse>, Status> {
        self.record("ListCapabilities", request.metadata(), vec![]);
        let authentication = self.authentication.lock().unwrap().clone();
        if let Some(check) = authentication {
            check(request.metadata())?;
        }
        let delay = *self.capabilities_delay.lock().unwrap();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        Ok(Response::new(ListCapabilitiesResponse {
            capabilities: CAPABILITIES
                .iter()
                .map(|name| Capability {
                    name: (*name).into(),
                    metadata: String::new(),
                })
                .collect(),
        }))
    }

    async fn list_tools(
        &self,
        request: Request<ListToolsRequest>,
    ) -> Result<Response<ListToolsResponse>, Status> {
        self.record("ListTools", request.metadata(), vec![]);
        Ok(Response::new(ListToolsResponse::default()))
    }

    async fn list_flows(
        &self,
        request: Request<ListFlowsRequest>,
    ) -> Result<Response<ListFlowsResponse>, Status> {
        self.record("ListFlows", request.metadata(), vec![]);
        Ok(Response::new(ListFlowsResponse::default()))
    }

    async fn validate_flow_config(
        &self,
        request: Request<ValidateFlowConfigRequest>,
    ) -> Result<Response<ValidateFlowConfigResponse>, Status> {
        self.record("ValidateFlowConfig", request.metadata(), vec![]);
        Ok(Response::new(ValidateFlowConfigResponse {
            valid: true,
            errors: vec![],
        }))
    }

    type TrackSelfHostedExecuteWorkflowStream =
        Pin<Box<dyn Stream<Item = Result<TrackSelfHostedAction, Status>> + Send>>;

    /// Acknowledges every event with its request id.
    async fn track_self_hosted_execute_workflow(
        &self,
        request: Request<Streaming<TrackSelfHostedClientEvent>>,
    ) -> Result<Response<Self::TrackSelfHostedExecuteWorkflowStream>, Status> {
        self.record("TrackSelfHostedExecuteWorkflow", request.metadata(), vec![]);
        let acks = request.into_inner().map(|event| {
            event.map(|e| TrackSelfHostedAction {
                request_id: e.request_id,
            })
        });
        Ok(Response::new(Box::pin(acks)))
    }
}

/// A running fake executor; stops when dropped.
pub struct RunningExecutor {
    pub addr: SocketAddr,
    pub executor: FakeExecutor,
    _stop: oneshot::Sender<()>,
}

pub async fn start() -> RunningExecutor {
    start_with(tonic::transport::Server::builder()).await
}

/// An executor serving TLS with this certificate chain and key (PEM).
pub async fn start_tls(cert_pem: &str, key_pem: &str) -> RunningExecutor {
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
    start_with(tonic::transport::Server::builder().tls_config(tls).unwrap()).await
}

async fn start_with(mut server: tonic::transport::Server) -> RunningExecutor {
    let executor = FakeExecutor::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let service = DuoWorkflowServer::new(executor.clone());
    tokio::spawn(async move {
        server
            .add_service(service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    stopped.await.ok();
                },
            )
            .await
            .unwrap();
    });
    RunningExecutor {
        addr,
        executor,
        _stop: stop,
    }
}
