//! The relay: every authorized call other than `GenerateToken` goes to the workflow executor as
//! it came (SPEC C4). HTTP/2 request in, HTTP/2 request out: the caller's headers (metadata),
//! then the body's data frames as they arrive, never decoded, so a field GitLab adds tomorrow
//! passes through; the executor's headers, data frames and trailers (status, details,
//! `grpc-status-details-bin`) come back the same way. Back-pressure is HTTP/2's own: a frame is
//! read from one side only when the other side can take it.
//!
//! What the relay adds: the 4 MiB message limit each way (message boundaries are followed, not
//! parsed), the caller's deadline (forwarded as what remains of it, and enforced here too),
//! `UNAVAILABLE` when the executor cannot be reached, and gRPC statuses instead of broken
//! streams when something fails half-way. What it leaves out: empty DATA frames. They carry
//! nothing, and h2 (0.4.16 and later) closes a whole connection that receives a hundred of them
//! before their streams' ends — a caller's, or an executor connection every relayed call to it
//! shares; a stream's end is sent by hyper itself when the body ends.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::task::AtomicWaker;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame};
use tokio::time::{Instant, Sleep};
use tonic::body::Body;
use tonic::Status;

use super::grpc_frames::MessageBoundaries;
use super::request_id::ReceivedAt;
use crate::executors::{Executors, NotRelayed, OpenCall, Relayed};
use crate::metrics::{code_label, code_name, ErrorOrigin, OpenStream, RelayMetrics};

/// What the caller sees when the executor cannot be reached. Deliberately says nothing about
/// where the executor is.
pub const EXECUTOR_UNAVAILABLE: &str = "Workflow executor unavailable";

/// The way to the workflow executors. Cloning is cheap (the executors' connections are shared).
#[derive(Clone)]
pub struct Relay {
    executors: Arc<Executors>,
    max_message_bytes: usize,
    metrics: RelayMetrics,
}

impl Relay {
    /// An unreachable executor fails calls, not start-up.
    pub fn new(executors: Arc<Executors>, max_message_bytes: usize) -> Self {
        Self {
            executors,
            max_message_bytes,
            metrics: RelayMetrics::default(),
        }
    }

    /// Records open streams and the executor's errors there.
    pub fn with_metrics(mut self, metrics: RelayMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// A relayed call failed here, on the executor's behalf.
    fn failed(&self, status: Status) -> Response<Body> {
        self.metrics
            .executor_error(code_label(status.code()), ErrorOrigin::Relay);
        status.into_http()
    }

    /// The relay for the service's own calls to the executors (their capabilities): the same
    /// executors, without counting in the metrics of callers' relayed calls.
    pub fn for_own_calls(&self) -> Relay {
        Relay::new(self.executors.clone(), self.max_message_bytes)
    }

    /// The executors behind the relay.
    pub fn executors(&self) -> &Arc<Executors> {
        &self.executors
    }

    /// Forwards one call and returns the executor's response, streaming.
    pub async fn forward(&self, request: Request<Body>) -> Response<Body> {
        let open = self.metrics.stream_opened();
        let (mut head, body) = request.into_parts();
        let deadline = deadline_of(&head.headers, head.extensions.get::<ReceivedAt>());
        strip_connection_headers(&mut head.headers);
        if let Some(deadline) = deadline {
            let remaining = deadline.saturating_duration_since(Instant::now());
            head.headers.insert("grpc-timeout", grpc_timeout(remaining));
        }
        let end = Arc::new(CallEnd::new(tracing::Span::current()));
        let upstream_request = Request::from_parts(
            head,
            Body::new(RequestBody {
                inner: body,
                boundaries: MessageBoundaries::default(),
                limit: self.max_message_bytes,
                end: end.clone(),
            }),
        );
        let exchange = self.executors.send(upstream_request);
        let response = tokio::select! {
            biased;
            status = poll_fn(|cx| end.poll_failed(cx)) => return self.failed(status),
            () = sleep_until(deadline) => return self.failed(deadline_exceeded()),
            response = exchange => response,
        };
        match response {
            Ok(Relayed { response, call }) => {
                let (head, body) = response.into_parts();
                // A trailers-only answer: the executor's status is in the headers.
                let status = head
                    .headers
                    .get("grpc-status")
                    .map(|s| code_name(s.as_bytes()));
                // The executor's error came once the caller's deadline had passed (its own
                // deadline, a moment after ours, beat our timer): the caller's deadline it is.
                if status.is_some_and(|c| c != "OK") && past(deadline) {
                    return self.failed(deadline_exceeded());
                }
                if let Some(code) = status.filter(|c| *c != "OK") {
                    self.metrics.executor_error(code, ErrorOrigin::Executor);
                }
                let body = ResponseBody {
                    inner: Some(Body::new(body)),
                    boundaries: MessageBoundaries::default(),
                    limit: self.max_message_bytes,
                    end,
                    deadline: deadline.map(|d| (d, Box::pin(tokio::time::sleep_until(d)))),
                    metrics: self.metrics.clone(),
                    status_seen: status.is_some(),
                    _open: (open, call),
                };
                Response::from_parts(head, Body::new(body))
            }
            Err(error) => match end.status() {
                Some(status) => self.failed(status),
                None if past(deadline) => self.failed(deadline_exceeded()),
                None => {
                    match error {
                        NotRelayed::NoEndpoint => {
                            tracing::warn!("no workflow executor endpoint can take calls now")
                        }
                        NotRelayed::Failed(error) => {
                            tracing::warn!(%error, "workflow executor unreachable")
                        }
                    }
                    self.failed(Status::unavailable(EXECUTOR_UNAVAILABLE))
                }
            },
        }
    }
}

/// The relay as a tower service, for the service's own calls to the executors (their
/// capabilities) through tonic's generated client.
impl tower::Service<Request<Body>> for Relay {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let relay = self.clone();
        Box::pin(async move { Ok(relay.forward(request).await) })
    }
}

fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("Deadline Exceeded")
}

/// Whether the caller's deadline has passed: a failure from then on is the deadline's.
fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The caller's deadline: `grpc-timeout` from when the request arrived.
fn deadline_of(headers: &HeaderMap, received_at: Option<&ReceivedAt>) -> Option<Instant> {
    let timeout = parse_grpc_timeout(headers.get("grpc-timeout")?)?;
    let start = received_at.map(|r| r.0).unwrap_or_else(Instant::now);
    start.checked_add(timeout)
}

/// gRPC's `TimeoutValue TimeoutUnit`: at most 8 digits, then one of `HMSmun`.
fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// What remains of a deadline, in gRPC's notation (milliseconds, at least one), rounded up: the
/// executor's deadline never falls before this service's, so the caller learns of an expired
/// deadline from the relay (`DEADLINE_EXCEEDED`), not from the executor resetting its stream.
fn grpc_timeout(remaining: Duration) -> HeaderValue {
    let ms = remaining
        .as_nanos()
        .div_ceil(1_000_000)
        .clamp(1, 99_999_999);
    HeaderValue::from_str(&format!("{ms}m")).expect("digits and a unit")
}

/// Headers that describe one hop, not the call (RFC 9113 8.2.2); HTTP/2 peers refuse them.
fn strip_connection_headers(headers: &mut HeaderMap) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "host",
    ] {
        headers.remove(name);
    }
}

/// How a relayed call is ending, shared by its two bodies. Either side may fail the call (the
/// request side on an oversized message; the response side on a deadline, an oversized message,
/// a broken executor stream); the response side ends it when the executor's answer is complete
/// or the caller goes away, after which nothing more is relayed to the executor.
struct CallEnd {
    status: OnceLock<Status>,
    over: AtomicBool,
    request: AtomicWaker,
    response: AtomicWaker,
    /// The call's span (its request id): hyper polls the two bodies in tasks of its own, and
    /// what they log, or a panic there, still names the call.
    span: tracing::Span,
}

impl CallEnd {
    fn new(span: tracing::Span) -> Self {
        Self {
            status: OnceLock::new(),
            over: AtomicBool::new(false),
            request: AtomicWaker::new(),
            response: AtomicWaker::new(),
            span,
        }
    }

    fn fail(&self, status: Status) {
        let _ = self.status.set(status);
        self.end();
        self.response.wake();
    }

    /// The call is over: the request side stops relaying.
    fn end(&self) {
        self.over.store(true, Ordering::Release);
        self.request.wake();
    }

    fn status(&self) -> Option<Status> {
        self.status.get().cloned()
    }

    /// For the response side: the status the call failed with, once it has.
    fn poll_failed(&self, cx: &mut Context<'_>) -> Poll<Status> {
        self.response.register(cx.waker());
        match self.status() {
            Some(s) => Poll::Ready(s),
            None => Poll::Pending,
        }
    }

    /// For the request side: whether the call is over.
    fn poll_over(&self, cx: &mut Context<'_>) -> bool {
        self.request.register(cx.waker());
        self.over.load(Ordering::Acquire)
    }
}

/// The caller's request body on its way to the executor. An oversized message fails the
/// relayed call: the executor's stream is reset (this body errors) and the caller gets
/// `RESOURCE_EXHAUSTED` through the response.
struct RequestBody {
    inner: Body,
    boundaries: MessageBoundaries,
    limit: usize,
    end: Arc<CallEnd>,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let end = this.end.clone();
        let _call = end.span.enter();
        if this.end.poll_over(cx) {
            // A failed call resets the executor's stream; a finished one just ends it.
            return Poll::Ready(this.end.status().map(Err));
        }
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                other => return other,
            };
            if let Some(data) = frame.data_ref() {
                if data.is_empty() {
                    continue; // never passed on: see the module's docs
                }
                if let Err(unrelayable) = this.boundaries.advance(data, this.limit) {
                    let status = unrelayable.status();
                    this.end.fail(status.clone());
                    return Poll::Ready(Some(Err(status)));
                }
            }
            return Poll::Ready(Some(Ok(frame)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The executor's response body on its way to the caller. It ends with the executor's trailers,
/// or, when the call fails half-way, with trailers of its own: the status the request side set,
/// `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED` for an oversized message, `UNAVAILABLE` when the
/// executor's stream breaks. Dropping it (the caller cancelled) resets the executor's stream.
struct ResponseBody {
    /// `None` once the body has ended.
    inner: Option<Body>,
    boundaries: MessageBoundaries,
    limit: usize,
    end: Arc<CallEnd>,
    deadline: Option<(Instant, Pin<Box<Sleep>>)>,
    metrics: RelayMetrics,
    /// Whether the call's status has been seen (and, if an error, counted).
    status_seen: bool,
    /// The call counts as open (in the metrics, and at its endpoint) until its response ends.
    _open: (OpenStream, OpenCall),
}

impl ResponseBody {
    /// Counts the call's status once, if it is an error.
    fn status(&mut self, code: &'static str, origin: ErrorOrigin) {
        if !std::mem::replace(&mut self.status_seen, true) && code != "OK" {
            self.metrics.executor_error(code, origin);
        }
    }

    /// Ends the body with `status` as its trailers; the executor's stream is reset.
    fn end_with(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.status(code_label(status.code()), ErrorOrigin::Relay);
        self.inner = None;
        self.end.fail(status.clone());
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", HeaderValue::from_static("13"));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let end = this.end.clone();
        let _call = end.span.enter();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(status) = this.end.poll_failed(cx) {
            return this.end_with(status);
        }
        if let Some((_, timer)) = this.deadline.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                return this.end_with(deadline_exceeded());
            }
        }
        let mut polled = Pin::new(inner).poll_frame(cx);
        // Empty data frames are never passed on: see the module's docs.
        while matches!(&polled, Poll::Ready(Some(Ok(f))) if f.data_ref().is_some_and(Bytes::is_empty))
        {
            polled = Pin::new(this.inner.as_mut().expect("still open")).poll_frame(cx);
        }
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                // Ended without trailers: the caller gets no status.
                this.status("UNKNOWN", ErrorOrigin::Executor);
                this.inner = None;
                this.end.end();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(unrelayable) = this.boundaries.advance(data, this.limit) {
                        tracing::warn!(
                            ?unrelayable,
                            "the workflow executor sent a message the relay refuses"
                        );
                        return this.end_with(unrelayable.status());
                    }
                } else {
                    let code = frame
                        .trailers_ref()
                        .and_then(|t| t.get("grpc-status"))
                        .map_or("UNKNOWN", |s| code_name(s.as_bytes()));
                    if code != "OK" && past(this.deadline.as_ref().map(|(at, _)| *at)) {
                        return this.end_with(deadline_exceeded());
                    }
                    this.status(code, ErrorOrigin::Executor);
                    this.inner = None; // trailers end the body
                    this.end.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                let status = this.end.status().unwrap_or_else(|| {
                    // The executor gave up on the call at its deadline, a moment before ours.
                    if past(this.deadline.as_ref().map(|(at, _)| *at)) {
                        return deadline_exceeded();
                    }
                    tracing::warn!(error = %error, "the workflow executor's stream broke");
                    Status::unavailable(EXECUTOR_UNAVAILABLE)
                });
                this.end_with(status)
            }
        }
    }

    /// Follows the executor's body, so that a trailers-only answer (a status in the headers,
    /// the stream ended with them) reaches the caller as one: without this, the headers would go
    /// out without END_STREAM, then an empty data frame, which gRPC clients read as a broken
    /// stream and lose the status.
    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }
}

/// The caller went away (or the body ended): nothing more is relayed to the executor.
impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.end.end();
    }
}

#[cfg(test)]
mod tests {
    use super::super::scripted::{any_hint, Scripted};
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_as_grpc_writes_them() {
        let t = |s: &str| parse_grpc_timeout(&HeaderValue::from_str(s).unwrap());
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("4m"), Some(Duration::from_millis(4)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "1s", "-1S", "1.5S", "1 S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_remaining_deadline_is_written_in_milliseconds() {
        assert_eq!(grpc_timeout(Duration::from_millis(1500)), "1500m");
        assert_eq!(grpc_timeout(Duration::from_micros(1_499_001)), "1500m");
        assert_eq!(grpc_timeout(Duration::ZERO), "1m");
        assert_eq!(grpc_timeout(Duration::from_secs(u64::MAX)), "99999999m");
    }

    #[test]
    fn connection_headers_stay_behind() {
        let mut h = HeaderMap::new();
        for name in ["connection", "host", "te", "x-gitlab-realm", "grpc-timeout"] {
            h.insert(name, HeaderValue::from_static("v"));
        }
        strip_connection_headers(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["grpc-timeout", "te", "x-gitlab-realm"]);
    }

    /// How a scripted body ends.
    #[derive(Debug, Clone, Copy)]
    enum Ending {
        Trailers,
        Nothing,
        Error,
    }

    /// Messages of `sizes` (bytes of payload), framed, cut into frames at `cuts` with empty
    /// frames at `empties`, then `ending`.
    fn script(
        sizes: &[usize],
        cuts: &[usize],
        empties: &[usize],
        ending: Ending,
        hint: http_body::SizeHint,
    ) -> (Vec<u8>, Scripted) {
        let mut wire = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            wire.push(0);
            wire.extend_from_slice(&(*size as u32).to_be_bytes());
            wire.extend(std::iter::repeat_n(i as u8, *size));
        }
        let mut frames = std::collections::VecDeque::new();
        let mut rest = &wire[..];
        for (n, cut) in cuts.iter().chain(std::iter::repeat(&13)).enumerate() {
            if empties.contains(&n) {
                frames.push_back(Ok(Frame::data(Bytes::new())));
            }
            if rest.is_empty() {
                break;
            }
            let k = (*cut).clamp(1, rest.len());
            frames.push_back(Ok(Frame::data(Bytes::copy_from_slice(&rest[..k]))));
            rest = &rest[k..];
        }
        match ending {
            Ending::Trailers => {
                let mut t = HeaderMap::new();
                t.insert("grpc-status", HeaderValue::from_static("0"));
                frames.push_back(Ok(Frame::trailers(t)));
            }
            Ending::Nothing => {}
            Ending::Error => frames.push_back(Err(Status::cancelled("the peer went away"))),
        }
        (wire, Scripted { frames, hint })
    }

    fn any_ending() -> impl proptest::strategy::Strategy<Value = Ending> {
        proptest::prop_oneof![
            proptest::strategy::Just(Ending::Trailers),
            proptest::strategy::Just(Ending::Nothing),
            proptest::strategy::Just(Ending::Error)
        ]
    }

    /// Everything a body yields: data (never an empty frame), trailers, the error.
    fn drain(
        mut body: impl HttpBody<Data = Bytes, Error = Status> + Unpin,
    ) -> (Vec<u8>, Option<HeaderMap>, Option<Status>) {
        use http_body_util::BodyExt;
        let (mut data, mut trailers, mut error) = (Vec::new(), None, None);
        futures::executor::block_on(async {
            loop {
                let hint = body.size_hint();
                assert!(hint.upper().is_none_or(|u| hint.lower() <= u));
                match body.frame().await {
                    None => break,
                    Some(Err(e)) => {
                        error = Some(e);
                        break;
                    }
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(d) => {
                            assert!(!d.is_empty(), "an empty DATA frame was passed on");
                            data.extend_from_slice(&d);
                        }
                        Err(f) => trailers = f.into_trailers().ok(),
                    },
                }
            }
        });
        (data, trailers, error)
    }

    const LIMIT: usize = 64;

    fn open_call() -> OpenCall {
        let url =
            crate::executors::ExecutorUrl::parse(&url::Url::parse("http://e:1").unwrap()).unwrap();
        let endpoint =
            crate::executors::Endpoint::new(Arc::new(url), "127.0.0.1:1".parse().unwrap());
        OpenCall::new(Arc::new(endpoint))
    }

    proptest::proptest! {
        /// The caller's body on its way to the executor: any split, empty frames, any hint and
        /// any ending; every byte passes in order, no empty frame, and a message over the limit
        /// fails the call with `RESOURCE_EXHAUSTED`.
        #[test]
        fn request_bodies_pass_every_byte_and_refuse_oversized_messages(
            sizes in proptest::collection::vec(0..80usize, 0..5),
            cuts in proptest::collection::vec(1..40usize, 0..20),
            empties in proptest::collection::vec(0..25usize, 0..4),
            ending in any_ending(),
            hint in any_hint(),
        ) {
            let (wire, scripted) = script(&sizes, &cuts, &empties, ending, hint);
            let end = Arc::new(CallEnd::new(tracing::Span::none()));
            let body = RequestBody {
                inner: Body::new(scripted),
                boundaries: MessageBoundaries::default(),
                limit: LIMIT,
                end: end.clone(),
            };
            let (data, trailers, error) = drain(body);
            match sizes.iter().position(|s| *s > LIMIT) {
                None => {
                    proptest::prop_assert_eq!(&data, &wire);
                    proptest::prop_assert_eq!(trailers.is_some(), matches!(ending, Ending::Trailers));
                    proptest::prop_assert_eq!(error.is_some(), matches!(ending, Ending::Error));
                    proptest::prop_assert!(end.status().is_none());
                }
                Some(_) => {
                    proptest::prop_assert!(wire.starts_with(&data));
                    proptest::prop_assert_eq!(error.unwrap().code(), tonic::Code::ResourceExhausted);
                    proptest::prop_assert_eq!(end.status().unwrap().code(), tonic::Code::ResourceExhausted);
                }
            }
        }

        /// The executor's body on its way to the caller: every byte in order and its trailers;
        /// an oversized message, a broken stream or a missing end each end as gRPC says.
        #[test]
        fn response_bodies_pass_every_byte_and_end_with_a_status(
            sizes in proptest::collection::vec(0..80usize, 0..5),
            cuts in proptest::collection::vec(1..40usize, 0..20),
            empties in proptest::collection::vec(0..25usize, 0..4),
            ending in any_ending(),
            hint in any_hint(),
        ) {
            let (wire, scripted) = script(&sizes, &cuts, &empties, ending, hint);
            let metrics = RelayMetrics::default();
            let body = ResponseBody {
                inner: Some(Body::new(scripted)),
                boundaries: MessageBoundaries::default(),
                limit: LIMIT,
                end: Arc::new(CallEnd::new(tracing::Span::none())),
                deadline: None,
                status_seen: false,
                _open: (metrics.stream_opened(), open_call()),
                metrics,
            };
            let (data, trailers, error) = drain(body);
            proptest::prop_assert!(error.is_none(), "the caller gets a status, not a broken stream");
            let code = trailers.as_ref().and_then(|t| t.get("grpc-status")).map(|v| v.to_str().unwrap().to_owned());
            if sizes.iter().any(|s| *s > LIMIT) {
                proptest::prop_assert!(wire.starts_with(&data));
                proptest::prop_assert_eq!(code.as_deref(), Some("8"));
            } else {
                proptest::prop_assert_eq!(&data, &wire);
                let expected = match ending {
                    Ending::Trailers => Some("0"),
                    Ending::Nothing => None,
                    Ending::Error => Some("14"),
                };
                proptest::prop_assert_eq!(code.as_deref(), expected);
            }
        }
    }
}
