//! The observe layer: follows every call to its final status and records it once. GitLab's
//! `grpc_server_handled_total` and `grpc_server_handling_seconds`, the refusal counter (from what
//! the admission layer noted on the response), and one log line per call: request id, method,
//! status, duration, and the caller's issuer, realm and instance. Refused calls are logged at a
//! bounded rate ([`RefusalLog`]), with a line saying how many were left out; they are always
//! counted.
//!
//! The final status is the `grpc-status` of the response headers (a trailers-only answer, such
//! as every refusal) or of the body's trailers (a relayed call's come from the executor): the
//! body is watched frame by frame, never decoded. A body dropped before its trailers is a call
//! the caller cancelled.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::Status;
use tower::{Layer, Service};

use super::admission::{CallerLog, Refusal};
use super::request_id::{ReceivedAt, RequestId};
use crate::metrics::{code_name, CallMetrics, GrpcMethod};

/// Refusal lines per second, at most; the rest are counted and summed up in one line.
pub const REFUSAL_LINES_PER_SECOND: u32 = 10;

/// Methods longer than this are cut in the log (callers choose paths).
const MAX_LOGGED_PATH: usize = 256;

#[derive(Clone)]
pub struct ObserveLayer {
    calls: CallMetrics,
    refusal_log: Arc<RefusalLog>,
}

impl Default for ObserveLayer {
    /// Records into metrics no registry renders (tests that do not look at metrics).
    fn default() -> Self {
        Self::new(CallMetrics::default())
    }
}

impl ObserveLayer {
    pub fn new(calls: CallMetrics) -> Self {
        let refusal_log = Arc::new(RefusalLog::new(
            REFUSAL_LINES_PER_SECOND,
            Duration::from_secs(1),
        ));
        Self { calls, refusal_log }
    }

    /// Logs how many refusal lines the last window left out, if any and if it is over. Called
    /// periodically, so that the count appears even when no refusal follows.
    pub fn flush_suppressed(&self) {
        if let Some(n) = self.refusal_log.flush() {
            log_suppressed(n);
        }
    }

    /// Logs how many refusal lines were left out and not yet reported, window over or not (at
    /// shutdown).
    pub fn drain_suppressed(&self) {
        if let Some(n) = self.refusal_log.drain() {
            log_suppressed(n);
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ObserveService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ObserveService<S> {
    inner: S,
    layer: ObserveLayer,
}

impl<S> Service<Request<Body>> for ObserveService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let path = req.uri().path();
        let mut record = CallRecord {
            calls: self.layer.calls.clone(),
            refusal_log: self.layer.refusal_log.clone(),
            method: GrpcMethod::of_path(path),
            path: bounded(path).to_owned(),
            request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
            started: req
                .extensions()
                .get::<ReceivedAt>()
                .map_or_else(Instant::now, |r| r.0),
            refusal: None,
            caller: None,
            span: tracing::Span::current(),
        };
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            let (mut parts, body) = response.into_parts();
            record.refusal = parts.extensions.remove::<Refusal>();
            record.caller = parts.extensions.remove::<CallerLog>();
            if let Some(status) = parts.headers.get("grpc-status") {
                // Trailers-only: the call ends with these headers.
                record.finish(code_name(status.as_bytes()));
                return Ok(Response::from_parts(parts, body));
            }
            let body = ObservedBody {
                inner: body,
                record: Some(record),
            };
            Ok(Response::from_parts(parts, Body::new(body)))
        })
    }
}

fn bounded(path: &str) -> &str {
    if path.len() <= MAX_LOGGED_PATH {
        return path;
    }
    let mut end = MAX_LOGGED_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

/// One call, until its final status.
struct CallRecord {
    calls: CallMetrics,
    refusal_log: Arc<RefusalLog>,
    method: GrpcMethod,
    path: String,
    request_id: Option<String>,
    started: Instant,
    refusal: Option<Refusal>,
    caller: Option<CallerLog>,
    span: tracing::Span,
}

impl CallRecord {
    fn finish(self, grpc_code: &'static str) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.calls.handled(self.method, grpc_code, seconds);
        let request_id = self.request_id.as_deref().unwrap_or("");
        let _entered = self.span.enter();
        if let Some(refusal) = self.refusal {
            self.calls.refused(refusal.reason, refusal.issuer.clone());
            let (log, report) = self.refusal_log.admit();
            if let Some(n) = report {
                log_suppressed(n);
            }
            if !log {
                self.calls.refusal_line_suppressed();
                return;
            }
            tracing::warn!(
                request_id,
                method = %self.path,
                grpc_code,
                duration_s = seconds,
                refusal = refusal.reason.as_str(),
                issuer = refusal.issuer.as_str(),
                reason = %refusal.detail,
                "request refused"
            );
            return;
        }
        let caller = self.caller.unwrap_or_default();
        let issuer = caller.issuer.as_deref().unwrap_or("");
        let realm = caller.realm.as_deref().unwrap_or("");
        let instance_id = caller.instance_id.as_deref().unwrap_or("");
        // Health and reflection need no token: anyone can call them, so their lines wait for
        // debug level (probes every few seconds, or a flood, would drown the log).
        if self.method.grpc_service.starts_with("grpc.") {
            tracing::debug!(request_id, method = %self.path, grpc_code, duration_s = seconds, "call finished");
        } else {
            tracing::info!(
                request_id,
                method = %self.path,
                grpc_code,
                duration_s = seconds,
                issuer,
                realm,
                instance_id,
                debug_user = caller.debug_user,
                "call finished"
            );
        }
    }
}

fn log_suppressed(n: u64) {
    tracing::warn!(
        suppressed = n,
        limit_per_second = REFUSAL_LINES_PER_SECOND,
        "suppressed {n} refusal log lines over the rate limit; every refusal is counted in metrics"
    );
}

/// The response body, watched for the final status.
struct ObservedBody {
    inner: Body,
    /// `None` once recorded.
    record: Option<CallRecord>,
}

impl ObservedBody {
    fn finish(&mut self, grpc_code: &'static str) {
        if let Some(record) = self.record.take() {
            record.finish(grpc_code);
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .map_or("UNKNOWN", |s| code_name(s.as_bytes()));
                    self.finish(code);
                }
            }
            // Ended without a status, or broken: the caller sees no valid status.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish("UNKNOWN"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    /// Dropped before its status: the caller went away (or the connection did).
    fn drop(&mut self) {
        self.finish("CANCELLED");
    }
}

/// At most `per_window` refusal lines per `window`; the count of the others is reported once
/// the window is over (with the next refusal, or by [`RefusalLog::flush`]).
pub struct RefusalLog {
    per_window: u32,
    window: Duration,
    state: Mutex<Window>,
}

struct Window {
    started: std::time::Instant,
    logged: u32,
    suppressed: u64,
}

impl RefusalLog {
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            state: Mutex::new(Window {
                started: std::time::Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether this refusal may be logged, and the count of lines left out in the window just
    /// over, to report first.
    pub fn admit(&self) -> (bool, Option<u64>) {
        let mut w = self.state.lock().expect("refusal log lock");
        let report = self.roll(&mut w);
        if w.logged < self.per_window {
            w.logged += 1;
            (true, report)
        } else {
            w.suppressed += 1;
            (false, report)
        }
    }

    /// The count of lines left out in a window that is over, if any.
    pub fn flush(&self) -> Option<u64> {
        let mut w = self.state.lock().expect("refusal log lock");
        self.roll(&mut w)
    }

    /// The count of lines left out and not reported yet, whether or not the window is over.
    pub fn drain(&self) -> Option<u64> {
        let mut w = self.state.lock().expect("refusal log lock");
        Some(std::mem::take(&mut w.suppressed)).filter(|n| *n > 0)
    }

    fn roll(&self, w: &mut Window) -> Option<u64> {
        if w.started.elapsed() < self.window {
            return None;
        }
        w.started = std::time::Instant::now();
        w.logged = 0;
        Some(std::mem::take(&mut w.suppressed)).filter(|n| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_log_is_bounded_per_window_and_reports_what_it_left_out() {
        let log = RefusalLog::new(3, Duration::from_millis(200));
        let decisions: Vec<bool> = (0..1000).map(|_| log.admit().0).collect();
        assert_eq!(decisions.iter().filter(|d| **d).count(), 3);
        assert_eq!(log.flush(), None, "the window is not over yet");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(log.admit(), (true, Some(997)));
        assert_eq!(log.flush(), None);
        for _ in 0..5 {
            log.admit();
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(log.flush(), Some(3));
        assert_eq!(log.flush(), None);
        for _ in 0..5 {
            log.admit();
        }
        assert_eq!(log.drain(), Some(2), "at shutdown, whatever the window");
        assert_eq!(log.drain(), None);
    }

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        let path = format!("/{}", "é".repeat(400));
        let cut = bounded(&path);
        assert!(cut.len() <= MAX_LOGGED_PATH && path.starts_with(cut));
        assert_eq!(bounded("/DuoWorkflow/ListTools"), "/DuoWorkflow/ListTools");
    }
}
