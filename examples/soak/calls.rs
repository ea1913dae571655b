//! The calls the soak makes, each made the way a client would and judged only by its final gRPC
//! status (never an HTTP 200): tonic for most, raw HTTP/2 (hyper) where the wire matters — a
//! request with and without `content-length`, a deadline that only the service enforces.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use duo_workflow_contract::duo_workflow_client::DuoWorkflowClient;
use duo_workflow_contract::{
    action_response, client_event, ActionResponse, ClientEvent, GenerateTokenRequest,
    ListCapabilitiesRequest, ListFlowsRequest, ListToolsRequest, PlainTextResponse,
    StartWorkflowRequest, ValidateFlowConfigRequest,
};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::sync::mpsc;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::executor::Cue;

/// Every kind of call in the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    GenerateToken,
    /// `ExecuteWorkflow` through the relay: N actions, each answered.
    ExecuteEcho,
    /// The same with every message gzip-compressed, the first included.
    ExecuteGzip,
    /// Raw HTTP/2, the request with `content-length`.
    RawWithLength,
    /// Raw HTTP/2, no `content-length`, the first message split over two DATA frames.
    RawWithoutLength,
    /// `ListTools`, `ListFlows`, `ListCapabilities` or `ValidateFlowConfig`, relayed.
    UnaryRelayed,
    /// A stream the caller drops after the first action.
    CancelledHalfway,
    /// A stream whose `grpc-timeout` expires while the executor holds it (raw: only the
    /// service enforces it).
    StreamDeadline,
    /// A relayed unary call whose `grpc-timeout` expires (raw).
    UnaryDeadline,
    /// The executor ends the stream with a status of its own.
    FailOnCue,
    /// `grpc.health.v1.Health/Watch`, no token, held a while then cancelled.
    HealthWatch,
    RefusedBadSignature,
    RefusedExpired,
    RefusedNoToken,
    RefusedUnknownIssuer,
    /// A user token asking for another: refused.
    RefusedUserTokenMints,
    /// An instance token without a scope that may mint.
    RefusedNoScope,
    /// A user token of an authority key that step 3 of a rotation removed.
    RemovedAuthorityKey,
    /// `Health/Check` on a fresh connection during a burst of unauthenticated connections.
    BurstHealthCheck,
}

impl Kind {
    /// Whether the call reaches the executor (so an executor outage changes its status).
    pub fn relayed(self) -> bool {
        matches!(
            self,
            Kind::ExecuteEcho
                | Kind::ExecuteGzip
                | Kind::RawWithLength
                | Kind::RawWithoutLength
                | Kind::UnaryRelayed
                | Kind::CancelledHalfway
                | Kind::StreamDeadline
                | Kind::UnaryDeadline
                | Kind::FailOnCue
        )
    }

    /// The status the call gets when nothing is wrong: code and exact details (`None`: any).
    pub fn normal(self) -> (Code, Option<&'static str>) {
        const FORBIDDEN: &str = "Forbidden by auth provider";
        match self {
            Kind::StreamDeadline | Kind::UnaryDeadline => {
                (Code::DeadlineExceeded, Some("Deadline Exceeded"))
            }
            Kind::FailOnCue => (FAIL_CODE, Some(crate::executor::FAILED_ON_CUE)),
            Kind::RefusedBadSignature
            | Kind::RefusedExpired
            | Kind::RefusedUnknownIssuer
            | Kind::RemovedAuthorityKey => (Code::Unauthenticated, Some(FORBIDDEN)),
            Kind::RefusedNoToken => (
                Code::Unauthenticated,
                Some("No authorization header presented"),
            ),
            Kind::RefusedUserTokenMints | Kind::RefusedNoScope => (
                Code::PermissionDenied,
                Some("Unauthorized to generate token"),
            ),
            _ => (Code::Ok, None),
        }
    }
}

/// The status the executor ends `FailOnCue` streams with.
pub const FAIL_CODE: Code = Code::FailedPrecondition;

/// How a call ended, as the caller saw it: its final status, and what the caller found wrong
/// besides (a missing action, a token minted with a retired key).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub code: Code,
    pub message: String,
    pub note: Option<String>,
    /// A user token a `GenerateToken` returned.
    pub token: Option<String>,
}

impl Outcome {
    pub fn ok() -> Self {
        Self::status(Code::Ok, "")
    }
    pub fn status(code: Code, message: &str) -> Self {
        Self {
            code,
            message: message.to_owned(),
            note: None,
            token: None,
        }
    }
    fn of(status: Status) -> Self {
        Self::status(status.code(), status.message())
    }
    fn noted(mut self, note: String) -> Self {
        self.note = Some(note);
        self
    }
}

/// The metadata a GitLab instance or IDE sends with `token` for user `user`.
pub fn metadata(token: Option<&str>, user: &str) -> Vec<(&'static str, String)> {
    let mut md = vec![
        ("x-gitlab-authentication-type", "oidc".to_owned()),
        ("x-gitlab-realm", "self-managed".to_owned()),
        ("x-gitlab-instance-id", crate::INSTANCE_ID.to_owned()),
        ("x-gitlab-global-user-id", user.to_owned()),
    ];
    if let Some(t) = token {
        md.push(("authorization", format!("Bearer {t}")));
    }
    md
}

fn request<T>(message: T, md: &[(&'static str, String)]) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    for (k, v) in md {
        req.metadata_mut().insert(
            *k,
            MetadataValue::try_from(v.as_str()).expect("ASCII metadata"),
        );
    }
    req
}

fn start(cue: Cue) -> ClientEvent {
    ClientEvent {
        response: Some(client_event::Response::StartRequest(StartWorkflowRequest {
            goal: cue.goal(),
            workflow_id: "soak".into(),
            ..Default::default()
        })),
    }
}

fn answer(request_id: &str) -> ClientEvent {
    ClientEvent {
        response: Some(client_event::Response::ActionResponse(ActionResponse {
            request_id: request_id.to_owned(),
            response_type: Some(action_response::ResponseType::PlainTextResponse(
                PlainTextResponse {
                    response: "done".into(),
                    error: String::new(),
                },
            )),
        })),
    }
}

pub async fn generate_token(channel: Channel, md: &[(&'static str, String)]) -> Outcome {
    let req = request(
        GenerateTokenRequest {
            workflow_definition: None,
        },
        md,
    );
    match DuoWorkflowClient::new(channel).generate_token(req).await {
        Ok(r) => {
            let mut o = Outcome::ok();
            o.token = Some(r.into_inner().token);
            o
        }
        Err(s) => Outcome::of(s),
    }
}

/// `ExecuteWorkflow` with `cue`, answering every action; checks that `expect_actions` came.
pub async fn execute(
    channel: Channel,
    md: &[(&'static str, String)],
    cue: Cue,
    gzip: bool,
) -> Outcome {
    let (tx, rx) = mpsc::channel::<ClientEvent>(4);
    tx.send(start(cue)).await.expect("room for the start");
    let req = request(tokio_stream::wrappers::ReceiverStream::new(rx), md);
    let mut client = DuoWorkflowClient::new(channel);
    if gzip {
        client = client
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
    }
    let mut stream = match client.execute_workflow(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Outcome::of(s),
    };
    let mut actions = 0;
    loop {
        match stream.message().await {
            Ok(Some(action)) => {
                actions += 1;
                let _ = tx.send(answer(&action.request_id)).await;
            }
            Ok(None) => break,
            Err(s) => return Outcome::of(s),
        }
    }
    let want = match cue {
        Cue::Echo { actions, .. } => actions,
        _ => 1,
    };
    if actions != want {
        return Outcome::ok().noted(format!("{actions} actions, not {want}"));
    }
    Outcome::ok()
}

/// A stream dropped after its first action: OK once that action came.
pub async fn cancelled_halfway(channel: Channel, md: &[(&'static str, String)]) -> Outcome {
    let (tx, rx) = mpsc::channel::<ClientEvent>(4);
    tx.send(start(Cue::Hold { ms: 3000 })).await.expect("room");
    let req = request(tokio_stream::wrappers::ReceiverStream::new(rx), md);
    let mut stream = match DuoWorkflowClient::new(channel).execute_workflow(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Outcome::of(s),
    };
    match stream.message().await {
        Ok(Some(_)) => Outcome::ok(), // dropping `stream` and `tx` cancels the call
        Ok(None) => Outcome::ok().noted("the stream ended before the caller cancelled".into()),
        Err(s) => Outcome::of(s),
    }
}

pub async fn unary_relayed(channel: Channel, md: &[(&'static str, String)], which: u32) -> Outcome {
    let mut c = DuoWorkflowClient::new(channel);
    let result = match which % 4 {
        0 => c
            .list_tools(request(ListToolsRequest {}, md))
            .await
            .map(drop),
        1 => c
            .list_flows(request(ListFlowsRequest { filters: None }, md))
            .await
            .map(drop),
        2 => c
            .list_capabilities(request(ListCapabilitiesRequest {}, md))
            .await
            .map(drop),
        _ => c
            .validate_flow_config(request(ValidateFlowConfigRequest { flow_config: None }, md))
            .await
            .map(drop),
    };
    match result {
        Ok(()) => Outcome::ok(),
        Err(s) => Outcome::of(s),
    }
}

/// `Health/Watch("")` held for `hold`, then cancelled: OK when the first answer is SERVING and
/// nothing failed meanwhile.
pub async fn health_watch(channel: Channel, hold: Duration) -> Outcome {
    let mut client = HealthClient::new(channel);
    let mut stream = match client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return Outcome::of(s),
    };
    match stream.message().await {
        Ok(Some(r)) if r.status == 1 => {}
        Ok(Some(r)) => return Outcome::ok().noted(format!("first status {}", r.status)),
        Ok(None) => return Outcome::ok().noted("the watch ended at once".into()),
        Err(s) => return Outcome::of(s),
    }
    let held = tokio::time::timeout(hold, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Some(Outcome::ok().noted("the watch ended".into())),
                Err(s) => return Some(Outcome::of(s)),
            }
        }
    })
    .await;
    match held {
        Err(_) => Outcome::ok(),
        Ok(Some(o)) => o,
        Ok(None) => Outcome::ok(),
    }
}

/// `Health/Check("")` on a connection of its own.
pub async fn health_check(addr: SocketAddr) -> Outcome {
    let channel = match tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("URL")
        .connect()
        .await
    {
        Ok(c) => c,
        Err(e) => return Outcome::status(Code::Unavailable, &format!("connect: {e}")),
    };
    match HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        Ok(r) if r.get_ref().status == 1 => Outcome::ok(),
        Ok(r) => Outcome::ok().noted(format!("status {}", r.get_ref().status)),
        Err(s) => Outcome::of(s),
    }
}

/// One gRPC message on the wire.
fn framed(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

type RawBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A raw HTTP/2 gRPC call on a connection of its own: `path`, metadata `md`, one message;
/// `with_length` sets `content-length` (one DATA frame), otherwise the message goes in two
/// frames and the body's length is unknown. `grpc-timeout` is sent when given and enforced
/// only by the service. The final status from the trailers (or a trailers-only answer).
pub async fn raw(
    addr: SocketAddr,
    path: &str,
    md: &[(&'static str, String)],
    message: &[u8],
    with_length: bool,
    timeout_ms: Option<u64>,
) -> Outcome {
    let stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Outcome::status(Code::Unavailable, &format!("connect: {e}")),
    };
    let _ = stream.set_nodelay(true);
    let (mut send, conn) =
        match hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
        {
            Ok(pair) => pair,
            Err(e) => return Outcome::status(Code::Unavailable, &format!("handshake: {e}")),
        };
    let connection = tokio::spawn(conn);
    let wire = framed(message);
    let body: RawBody = if with_length {
        Full::new(wire.clone()).boxed()
    } else {
        let half = wire.len() / 2;
        let chunks = vec![
            Ok::<_, Infallible>(Frame::data(wire.slice(..half))),
            Ok(Frame::data(wire.slice(half..))),
        ];
        StreamBody::new(futures::stream::iter(chunks)).boxed()
    };
    let mut builder = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if with_length {
        builder = builder.header("content-length", wire.len());
    }
    if let Some(ms) = timeout_ms {
        builder = builder.header("grpc-timeout", format!("{ms}m"));
    }
    for (k, v) in md {
        builder = builder.header(*k, v);
    }
    let outcome = async {
        let response = match send
            .send_request(builder.body(body).expect("request"))
            .await
        {
            Ok(r) => r,
            Err(e) => return Outcome::status(Code::Unavailable, &format!("request: {e}")),
        };
        let (head, mut body) = response.into_parts();
        let from = |h: &http::HeaderMap| {
            h.get("grpc-status").map(|s| {
                let code = Code::from_i32(s.to_str().unwrap_or("2").parse().unwrap_or(2));
                let message = h
                    .get("grpc-message")
                    .map(|m| percent_decode(m.as_bytes()))
                    .unwrap_or_default();
                Outcome::status(code, &message)
            })
        };
        if let Some(o) = from(&head.headers) {
            return o;
        }
        loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(t) = frame.trailers_ref() {
                        return from(t).unwrap_or_else(|| {
                            Outcome::status(Code::Unknown, "trailers without grpc-status")
                        });
                    }
                }
                Some(Err(e)) => return Outcome::status(Code::Unavailable, &format!("body: {e}")),
                None => return Outcome::status(Code::Unknown, "ended without trailers"),
            }
        }
    }
    .await;
    connection.abort();
    outcome
}

fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&bytes[i + 1..i + 3]), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The start request of a raw `ExecuteWorkflow`, encoded.
pub fn start_bytes(cue: Cue) -> Vec<u8> {
    start(cue).encode_to_vec()
}

/// An empty `ListToolsRequest`, encoded.
pub fn list_tools_bytes() -> Vec<u8> {
    ListToolsRequest {}.encode_to_vec()
}
