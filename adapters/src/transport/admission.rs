//! The admission layer: the one place a call is authenticated and authorized. A tower layer
//! rather than a tonic interceptor because it needs the method path (the domain's
//! [`MethodTable`] decides per path) and, for the two RPCs whose rule depends on it, the first
//! request message (SPEC C2: the flow of `ExecuteWorkflow` and of `GenerateToken`).
//!
//! In order: methods the table refuses get `UNIMPLEMENTED` and open ones (health, reflection) go
//! straight through, without a token (bounded in front of this layer, by
//! [`OpenStreamsLayer`](super::open_streams::OpenStreamsLayer)); everything else is authenticated (SPEC Part A steps 1–5),
//! then, if its rule needs it, its first message is read (the bytes are put back, unchanged),
//! then authorized. A refused call gets SPEC's status and `details`; an admitted one goes on with
//! the [`Caller`] in its extensions.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use duo_workflow_contract::{client_event, ClientEvent, GenerateTokenRequest};
use duo_workflow_domain::gatekeeper::{Admission, Gatekeeper};
use duo_workflow_domain::method::{Call, Flow, FlowFields};
use duo_workflow_domain::{Access, Identity, MethodTable, RequestMetadata, Rpc};
use http::{Request, Response};
use prost::Message;
use tonic::body::Body;
use tonic::Status;
use tower::{Layer, Service};

use super::grpc_frames::read_first_message;
use super::metadata::request_metadata;
use super::status_of;

/// The authenticated caller of a request, for the handlers.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub metadata: RequestMetadata,
}

/// What `UNIMPLEMENTED` says for a method the table refuses (GitLab's Python server's words).
pub const METHOD_NOT_FOUND: &str = "Method not found!";

#[derive(Clone)]
pub struct AdmissionLayer {
    gatekeeper: Arc<Gatekeeper>,
    methods: Arc<MethodTable>,
    max_message_bytes: usize,
}

impl AdmissionLayer {
    pub fn new(
        gatekeeper: Arc<Gatekeeper>,
        methods: MethodTable,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            gatekeeper,
            methods: Arc::new(methods),
            max_message_bytes,
        }
    }

    /// The method table: what is open, ours, allowed or refused.
    pub fn methods(&self) -> Arc<MethodTable> {
        self.methods.clone()
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AdmissionService<S> {
    inner: S,
    layer: AdmissionLayer,
}

impl<S> Service<Request<Body>> for AdmissionService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this request (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            match layer.admit(req).await {
                Ok(req) => inner.call(req).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

impl AdmissionLayer {
    /// The request, admitted (with its [`Caller`]), or the status that refuses it.
    async fn admit(&self, mut req: Request<Body>) -> Result<Request<Body>, Status> {
        let rpc = match self.methods.access(req.uri().path()) {
            Access::Open => return Ok(req),
            Access::Refused => return Err(Status::unimplemented(METHOD_NOT_FOUND)),
            Access::Rpc(rpc) => Some(rpc),
            Access::Allowed => None,
        };
        let metadata = request_metadata(req.headers());
        let admission = self
            .gatekeeper
            .authenticate(&metadata)
            .await
            .map_err(|e| refused(&e))?;
        log_admission(&admission);
        let call = match rpc {
            Some(rpc) if rpc.reads_first_message() => {
                let (head, body) = req.into_parts();
                let first = read_first_message(body, &head.headers, self.max_message_bytes).await?;
                let call = call_of(rpc, first.payload.as_deref()).map_err(|e| match e {
                    CallError::Refused(e) => refused(&e),
                    CallError::Undecodable => {
                        Status::internal("failed to decode the first message")
                    }
                })?;
                req = Request::from_parts(head, first.body);
                call
            }
            Some(rpc) => Call::without_message(rpc),
            None => Call::Authenticated,
        };
        self.gatekeeper
            .authorize(&admission.identity, &call)
            .map_err(|e| refused(&e))?;
        req.extensions_mut().insert(Caller {
            identity: admission.identity,
            metadata,
        });
        Ok(req)
    }
}

enum CallError {
    Refused(duo_workflow_domain::AuthError),
    Undecodable,
}

/// The call an RPC makes, from its first message (`None`: the stream closed before one).
fn call_of(rpc: Rpc, first: Option<&[u8]>) -> Result<Call, CallError> {
    match (rpc, first) {
        (Rpc::GenerateToken, Some(bytes)) => {
            let request =
                GenerateTokenRequest::decode(bytes).map_err(|_| CallError::Undecodable)?;
            Ok(Call::GenerateToken(Flow::of_token_request(
                request.workflow_definition.as_deref(),
            )))
        }
        (Rpc::ExecuteWorkflow, Some(bytes)) => {
            let event = ClientEvent::decode(bytes).map_err(|_| CallError::Undecodable)?;
            // A first event other than a start request names no flow: the default one.
            #[allow(deprecated)] // `workflowDefinition` is deprecated, and still what clients send
            let fields = match event.response {
                Some(client_event::Response::StartRequest(start)) => FlowFields {
                    workflow_definition: start.workflow_definition,
                    has_flow_config: start.flow_config.is_some(),
                    flow_config_schema_version: start.flow_config_schema_version,
                    flow_config_id: start.flow_config_id,
                    flow_version: start.flow_version,
                },
                _ => FlowFields::default(),
            };
            Flow::of_start_request(&fields)
                .map(Call::ExecuteWorkflow)
                .map_err(|e| CallError::Refused(duo_workflow_domain::AuthError::InvalidFlow(e)))
        }
        // Closed before any message: there is no flow to judge; the executor answers.
        (Rpc::ExecuteWorkflow, None) => Ok(Call::Authenticated),
        (rpc, _) => Ok(Call::without_message(rpc)),
    }
}

fn refused(error: &duo_workflow_domain::AuthError) -> Status {
    let status = status_of(error);
    tracing::warn!(code = ?status.code(), reason = %error, "request refused");
    status
}

fn log_admission(admission: &Admission) {
    match admission.identity.claims() {
        None => tracing::warn!("AUTHENTICATION IS DISABLED: caller admitted as the debug user"),
        Some(claims) => tracing::info!(
            issuer = %claims.issuer,
            realm = claims.realm.as_deref().unwrap_or(""),
            instance_id = claims.instance_id.as_deref().unwrap_or(""),
            "caller authenticated"
        ),
    }
    if let Some(m) = &admission.seat_count_mismatch {
        tracing::info!(claim = %m.claim, header = m.header.as_deref().unwrap_or(""), "duo_seat_count claim differs from its header");
    }
}
