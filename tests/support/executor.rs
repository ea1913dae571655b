//! A fake workflow executor upstream: records what it received and answers with actions.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use duo_workflow_contract::duo_workflow_server::{DuoWorkflow, DuoWorkflowServer};
use duo_workflow_contract::{
    action, client_event, Action, Capability, ClientEvent, GenerateTokenRequest,
    GenerateTokenResponse, ListCapabilitiesRequest, ListCapabilitiesResponse, ListFlowsRequest,
    ListFlowsResponse, ListToolsRequest, ListToolsResponse, ReadFile, TrackSelfHostedAction,
    TrackSelfHostedClientEvent, ValidateFlowConfigRequest, ValidateFlowConfigResponse,
};

/// What the fake executor answers to `ListCapabilities`.
pub const CAPABILITIES: [&str; 3] = [
    "tool_call_approval",
    "tool_call_pattern_approval",
    "flow_semantic_versioning",
];
use futures::Stream;
use std::pin::Pin;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

/// What the executor saw of one stream.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub metadata: Vec<(String, String)>,
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
}

#[tonic::async_trait]
impl DuoWorkflow for FakeExecutor {
    type ExecuteWorkflowStream = Pin<Box<dyn Stream<Item = Result<Action, Status>> + Send>>;

    async fn execute_workflow(
        &self,
        request: Request<Streaming<ClientEvent>>,
    ) -> Result<Response<Self::ExecuteWorkflowStream>, Status> {
        let metadata = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                }
                _ => None,
            })
            .collect();
        let mut inbound = request.into_inner();
        let mut seen = Seen {
            metadata,
            goals: Vec::new(),
        };
        if let Some(Ok(ClientEvent {
            response: Some(client_event::Response::StartRequest(start)),
        })) = inbound.message().await.transpose()
        {
            seen.goals.push(start.goal);
        }
        self.seen.lock().unwrap().push(seen);
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
        _: Request<GenerateTokenRequest>,
    ) -> Result<Response<GenerateTokenResponse>, Status> {
        Err(Status::unimplemented("executor does not mint"))
    }

    async fn list_capabilities(
        &self,
        _: Request<ListCapabilitiesRequest>,
    ) -> Result<Response<ListCapabilitiesResponse>, Status> {
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
        _: Request<ListToolsRequest>,
    ) -> Result<Response<ListToolsResponse>, Status> {
        Ok(Response::new(ListToolsResponse::default()))
    }

    async fn list_flows(
        &self,
        _: Request<ListFlowsRequest>,
    ) -> Result<Response<ListFlowsResponse>, Status> {
        Ok(Response::new(ListFlowsResponse::default()))
    }

    async fn validate_flow_config(
        &self,
        _: Request<ValidateFlowConfigRequest>,
    ) -> Result<Response<ValidateFlowConfigResponse>, Status> {
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
        use futures::StreamExt;
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
    let executor = FakeExecutor::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let service = DuoWorkflowServer::new(executor.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
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
