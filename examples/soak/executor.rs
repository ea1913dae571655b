//! The soak's workflow executor: a process of its own (`soak executor --listen ADDR`), so that
//! the driver can kill it (SIGKILL: its connections die with it) and start it again on the same
//! port. It speaks the whole contract with tonic, accepts and sends gzip, and does what each
//! call asks:
//!
//! - `ExecuteWorkflow`, by the goal of its start request: `echo N D` sends N actions, each
//!   after the caller's answer to the one before and D ms of thought, then ends OK;
//!   `hold MS` sends one action and ends OK MS later; `fail CODE` sends one action and ends
//!   with that status (details [`FAILED_ON_CUE`]).
//! - the unary RPCs answer at once, or after `x-soak-delay-ms` milliseconds.

use std::pin::Pin;
use std::time::Duration;

use duo_workflow_contract::duo_workflow_server::{DuoWorkflow, DuoWorkflowServer};
use duo_workflow_contract::{
    action, client_event, Action, Capability, ClientEvent, GenerateTokenRequest,
    GenerateTokenResponse, ListCapabilitiesRequest, ListCapabilitiesResponse, ListFlowsRequest,
    ListFlowsResponse, ListToolsRequest, ListToolsResponse, ReadFile, TrackSelfHostedAction,
    TrackSelfHostedClientEvent, ValidateFlowConfigRequest, ValidateFlowConfigResponse,
};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status, Streaming};

/// The details of a status the executor ends a stream with on cue.
pub const FAILED_ON_CUE: &str = "soak: failed on cue";

/// What a goal asks of the executor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cue {
    Echo { actions: u32, think_ms: u64 },
    Hold { ms: u64 },
    Fail { code: Code },
}

impl Cue {
    pub fn goal(self) -> String {
        match self {
            Cue::Echo { actions, think_ms } => format!("echo {actions} {think_ms}"),
            Cue::Hold { ms } => format!("hold {ms}"),
            Cue::Fail { code } => format!("fail {}", code as i32),
        }
    }

    fn parse(goal: &str) -> Option<Cue> {
        let mut words = goal.split_whitespace();
        let (verb, a, b) = (words.next()?, words.next(), words.next());
        let n = |w: Option<&str>| w.and_then(|w| w.parse::<u64>().ok());
        Some(match verb {
            "echo" => Cue::Echo {
                actions: n(a)? as u32,
                think_ms: n(b).unwrap_or(0),
            },
            "hold" => Cue::Hold { ms: n(a)? },
            "fail" => Cue::Fail {
                code: Code::from_i32(n(a)? as i32),
            },
            _ => return None,
        })
    }
}

fn action(i: u32) -> Action {
    Action {
        request_id: format!("a{i}"),
        action: Some(action::Action::RunReadFile(ReadFile {
            filepath: format!("src/file{i}.rs"),
            ..Default::default()
        })),
    }
}

#[derive(Clone, Default)]
struct Executor;

async fn delay_of<T>(request: &Request<T>) {
    let ms = request
        .metadata()
        .get("x-soak-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

type Actions = Pin<Box<dyn Stream<Item = Result<Action, Status>> + Send>>;

#[tonic::async_trait]
impl DuoWorkflow for Executor {
    type ExecuteWorkflowStream = Actions;

    async fn execute_workflow(
        &self,
        request: Request<Streaming<ClientEvent>>,
    ) -> Result<Response<Actions>, Status> {
        let mut inbound = request.into_inner();
        let cue = match inbound.message().await? {
            Some(ClientEvent {
                response: Some(client_event::Response::StartRequest(start)),
            }) => Cue::parse(&start.goal),
            _ => None,
        }
        .unwrap_or(Cue::Echo {
            actions: 1,
            think_ms: 0,
        });
        let (tx, rx) = mpsc::channel::<Result<Action, Status>>(4);
        tokio::spawn(async move {
            match cue {
                Cue::Echo { actions, think_ms } => {
                    for i in 0..actions {
                        if tx.send(Ok(action(i))).await.is_err() {
                            return;
                        }
                        // The caller's answer to this action, then some thought.
                        match inbound.message().await {
                            Ok(Some(_)) => {}
                            // Half-closed: the caller has nothing more to say.
                            Ok(None) => return,
                            Err(_) => return,
                        }
                        tokio::time::sleep(Duration::from_millis(think_ms)).await;
                    }
                }
                Cue::Hold { ms } => {
                    if tx.send(Ok(action(0))).await.is_err() {
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                        () = tx.closed() => {}
                    }
                }
                Cue::Fail { code } => {
                    if tx.send(Ok(action(0))).await.is_ok() {
                        let _ = tx.send(Err(Status::new(code, FAILED_ON_CUE))).await;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn generate_token(
        &self,
        _: Request<GenerateTokenRequest>,
    ) -> Result<Response<GenerateTokenResponse>, Status> {
        Err(Status::internal(
            "the executor never mints: the service answers GenerateToken",
        ))
    }

    async fn list_capabilities(
        &self,
        request: Request<ListCapabilitiesRequest>,
    ) -> Result<Response<ListCapabilitiesResponse>, Status> {
        delay_of(&request).await;
        Ok(Response::new(ListCapabilitiesResponse {
            capabilities: vec![Capability {
                name: "tool_call_approval".into(),
                metadata: String::new(),
            }],
        }))
    }

    async fn list_tools(
        &self,
        request: Request<ListToolsRequest>,
    ) -> Result<Response<ListToolsResponse>, Status> {
        delay_of(&request).await;
        Ok(Response::new(ListToolsResponse::default()))
    }

    async fn list_flows(
        &self,
        request: Request<ListFlowsRequest>,
    ) -> Result<Response<ListFlowsResponse>, Status> {
        delay_of(&request).await;
        Ok(Response::new(ListFlowsResponse::default()))
    }

    async fn validate_flow_config(
        &self,
        request: Request<ValidateFlowConfigRequest>,
    ) -> Result<Response<ValidateFlowConfigResponse>, Status> {
        delay_of(&request).await;
        Ok(Response::new(ValidateFlowConfigResponse {
            valid: true,
            errors: vec![],
        }))
    }

    type TrackSelfHostedExecuteWorkflowStream =
        Pin<Box<dyn Stream<Item = Result<TrackSelfHostedAction, Status>> + Send>>;

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

/// `soak executor --listen ADDR`: serves until killed; prints `listening ADDR` once bound.
pub async fn serve(listen: &str) {
    // The same port again after a restart: the previous process's sockets may linger.
    let listener = {
        let mut tries = 0;
        loop {
            match tokio::net::TcpListener::bind(listen).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("bind {listen}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot listen on {listen}: {e}"),
            }
        }
    };
    println!("listening {}", listener.local_addr().unwrap());
    let service = DuoWorkflowServer::new(Executor)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await
        .expect("serving");
}
