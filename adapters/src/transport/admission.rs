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
//! the [`Caller`] in its extensions. Either way the response carries what the observe layer
//! records and logs: a [`Refusal`] (reason and issuer label), or a [`CallerLog`].

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use duo_workflow_contract::{client_event, ClientEvent, GenerateTokenRequest};
use duo_workflow_domain::gatekeeper::{Admission, Gatekeeper};
use duo_workflow_domain::method::{Call, Flow, FlowFields};
use duo_workflow_domain::{Access, AuthError, Identity, MethodTable, RequestMetadata, Rpc};
use http::{Request, Response};
use prost::Message;
use tonic::body::Body;
use tonic::Status;
use tower::{Layer, Service};

use super::grpc_frames::{FirstMessageError, FirstMessageReader, HeldBytes};
use super::metadata::request_metadata;
use super::{status_of, Limits};
use crate::metrics::{with_token_issuer, LabelText, RefusalReason};

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
    first_messages: FirstMessageReader,
}

impl AdmissionLayer {
    /// `limits`: the message limit and the bounds on first messages held.
    pub fn new(gatekeeper: Arc<Gatekeeper>, methods: MethodTable, limits: &Limits) -> Self {
        Self {
            gatekeeper,
            methods: Arc::new(methods),
            first_messages: FirstMessageReader {
                max_message_bytes: limits.max_message_bytes,
                service: HeldBytes::new(limits.first_messages.bytes_total),
                time_to_arrive: limits.first_messages.time_to_arrive,
            },
        }
    }

    /// The bytes of first messages held service-wide, for the metric.
    pub fn first_messages_held(&self) -> HeldBytes {
        self.first_messages.service.clone()
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
                Ok((req, caller)) => {
                    let mut response = inner.call(req).await?;
                    if let Some(caller) = caller {
                        response.extensions_mut().insert(caller);
                    }
                    Ok(response)
                }
                Err(Refused { status, refusal }) => {
                    let mut response = status.into_http();
                    response.extensions_mut().insert(refusal);
                    Ok(response)
                }
            }
        })
    }
}

/// On the response of a refused call, for the observe layer: why (a fixed reason, and the
/// precise one for the log), and the issuer label of the token presented.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub issuer: LabelText,
    /// `AuthError`'s `Display`: SPEC's details with the precise reason; never a token.
    pub detail: String,
}

/// On the response of an admitted call, for the observe layer's log line: who called.
#[derive(Debug, Clone, Default)]
pub struct CallerLog {
    pub issuer: Option<String>,
    pub realm: Option<String>,
    pub instance_id: Option<String>,
    /// Authentication is off: the debug user.
    pub debug_user: bool,
}

impl CallerLog {
    fn of(admission: &Admission) -> Self {
        match admission.identity.claims() {
            None => CallerLog {
                debug_user: true,
                ..CallerLog::default()
            },
            Some(claims) => CallerLog {
                issuer: Some(claims.issuer.as_str().to_owned()),
                realm: claims.realm.clone(),
                instance_id: admission.instance_id.clone(),
                debug_user: false,
            },
        }
    }
}

/// A refused call: its status, and what the observe layer records.
struct Refused {
    status: Status,
    refusal: Refusal,
}

impl Refused {
    fn new(status: Status, reason: RefusalReason, issuer: &LabelText, detail: String) -> Self {
        Self {
            status,
            refusal: Refusal {
                reason,
                issuer: issuer.clone(),
                detail,
            },
        }
    }

    /// SPEC's status and `details` for `error`.
    fn auth(error: &AuthError, issuer: &LabelText) -> Self {
        Self::new(status_of(error), error.into(), issuer, error.to_string())
    }

    /// The first message could not be read: too large, not readable, over the bound on bytes
    /// held, or too slow.
    fn message(error: &FirstMessageError, issuer: &LabelText) -> Self {
        let status = error.status();
        let reason = match error {
            FirstMessageError::Held => RefusalReason::FirstMessagesHeld,
            FirstMessageError::Stalled(_) => RefusalReason::FirstMessageStalled,
            _ if status.code() == tonic::Code::ResourceExhausted => RefusalReason::MessageTooLarge,
            _ => RefusalReason::MessageUnreadable,
        };
        let detail = status.message().to_owned();
        Self::new(status, reason, issuer, detail)
    }
}

impl AdmissionLayer {
    /// The request, admitted (with its [`Caller`]; what the log says of the caller, except for
    /// open methods), or why it is refused.
    async fn admit(
        &self,
        mut req: Request<Body>,
    ) -> Result<(Request<Body>, Option<CallerLog>), Refused> {
        let rpc = match self.methods.access(req.uri().path()) {
            Access::Open => return Ok((req, None)),
            Access::Refused => {
                return Err(Refused::new(
                    Status::unimplemented(METHOD_NOT_FOUND),
                    RefusalReason::MethodNotFound,
                    &LabelText::NONE,
                    METHOD_NOT_FOUND.to_owned(),
                ))
            }
            Access::Rpc(rpc) => Some(rpc),
            Access::Allowed => None,
        };
        let metadata = request_metadata(req.headers());
        let (admission, issuer) = with_token_issuer(self.gatekeeper.authenticate(&metadata)).await;
        let issuer = issuer.unwrap_or(LabelText::NONE);
        let admission = admission.map_err(|e| Refused::auth(&e, &issuer))?;
        log_admission(&admission);
        let call = match rpc {
            Some(rpc) if rpc.reads_first_message() => {
                let (head, body) = req.into_parts();
                let first = self
                    .first_messages
                    .read(body, &head.headers, head.extensions.get::<HeldBytes>())
                    .await
                    .map_err(|e| Refused::message(&e, &issuer))?;
                let call = call_of(rpc, first.payload.as_deref()).map_err(|e| match e {
                    CallError::Refused(e) => Refused::auth(&e, &issuer),
                    CallError::Undecodable => Refused::message(
                        &Status::internal("failed to decode the first message").into(),
                        &issuer,
                    ),
                })?;
                req = Request::from_parts(head, first.body);
                call
            }
            Some(rpc) => Call::without_message(rpc),
            None => Call::Authenticated,
        };
        self.gatekeeper
            .authorize(&admission.identity, &call)
            .map_err(|e| Refused::auth(&e, &issuer))?;
        let caller = CallerLog::of(&admission);
        req.extensions_mut().insert(Caller {
            identity: admission.identity,
            metadata,
        });
        Ok((req, Some(caller)))
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

fn log_admission(admission: &Admission) {
    match admission.identity.claims() {
        None => tracing::warn!("AUTHENTICATION IS DISABLED: caller admitted as the debug user"),
        Some(claims) => tracing::debug!(
            issuer = %claims.issuer,
            realm = claims.realm.as_deref().unwrap_or(""),
            instance_id = admission.instance_id.as_deref().unwrap_or(""),
            "caller authenticated"
        ),
    }
    if let Some(m) = &admission.seat_count_mismatch {
        tracing::info!(claim = %m.claim, header = m.header.as_deref().unwrap_or(""), "duo_seat_count claim differs from its header");
    }
}
