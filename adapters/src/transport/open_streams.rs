//! Bounds on the calls that need no token (health, reflection: `Access::Open`): anyone who can
//! reach the port can make them, so they get limits of their own, tighter than an
//! authenticated caller's. A stream holds a permit of its connection and one of the whole
//! service from admission until its response ends (or is dropped); beyond either bound it is
//! refused at once with `RESOURCE_EXHAUSTED`. The one exception is the unary health `Check`
//! (what load balancers and Kubernetes probe with): it takes only its connection's permit, so
//! that streams held open elsewhere (`Watch`, reflection) cannot make the service look dead. Its request messages may add up to a few KiB:
//! the request body is counted as it arrives and fails with `RESOURCE_EXHAUSTED` past the
//! limit, so a large (or half-sent) request is never buffered.
//!
//! [`OpenStreamsLayer`] applies them in front of the request-id layer, so that a refused call
//! costs no more than its refusal (no id, no span): a flood of them stays cheap.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use duo_workflow_domain::{Access, MethodTable};
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::Status;
use tower::{Layer, Service};

/// The bounds, from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenLimits {
    /// Streams open at once on one connection.
    pub per_connection: usize,
    /// Streams open at once on the whole service.
    pub total: usize,
    /// Bytes of request body (messages with their 5-byte prefixes) one stream may send.
    pub max_request_bytes: usize,
}

impl Default for OpenLimits {
    fn default() -> Self {
        Self {
            per_connection: 16,
            total: 256,
            max_request_bytes: 4 * 1024,
        }
    }
}

/// One connection's share, in each request's extensions (the listener puts it there).
#[derive(Clone)]
pub struct ConnectionStreams(Arc<Semaphore>);

impl ConnectionStreams {
    pub fn new(limits: &OpenLimits) -> Self {
        Self(Arc::new(Semaphore::new(limits.per_connection)))
    }
}

/// The service-wide bound and the limits.
#[derive(Clone)]
pub struct OpenStreams {
    total: Arc<Semaphore>,
    limits: OpenLimits,
}

/// What an admitted open stream holds until its response ends.
pub struct Permits {
    _total: Option<OwnedSemaphorePermit>,
    _connection: Option<OwnedSemaphorePermit>,
}

/// The unary health check: answered at once, bounded per connection only.
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

impl OpenStreams {
    pub fn new(limits: OpenLimits) -> Self {
        Self {
            total: Arc::new(Semaphore::new(limits.total)),
            limits,
        }
    }

    /// Admits an open stream within the bounds (its body limited), or refuses it.
    pub fn admit(&self, req: Request<Body>) -> Result<(Request<Body>, Permits), Status> {
        let refused = || Status::resource_exhausted("Too many concurrent calls without a token");
        // A request served without the listener's extension has only the service-wide bound.
        let connection = match req.extensions().get::<ConnectionStreams>() {
            Some(ConnectionStreams(s)) => {
                Some(s.clone().try_acquire_owned().map_err(|_| refused())?)
            }
            None => None,
        };
        let total = match req.uri().path() {
            HEALTH_CHECK => None,
            _ => Some(
                self.total
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| refused())?,
            ),
        };
        let limit = self.limits.max_request_bytes;
        let req = req.map(|body| {
            Body::new(Limited {
                body,
                left: limit,
                limit,
            })
        });
        Ok((
            req,
            Permits {
                _total: total,
                _connection: connection,
            },
        ))
    }
}

/// The response, holding `permits` until its body ends or is dropped.
pub fn hold(response: Response<Body>, permits: Permits) -> Response<Body> {
    response.map(|body| {
        Body::new(Holding {
            body,
            permits: Some(permits),
        })
    })
}

/// Bounds the calls `methods` leaves open (see the module documentation); every other call goes
/// on untouched.
#[derive(Clone)]
pub struct OpenStreamsLayer {
    methods: Arc<MethodTable>,
    open: OpenStreams,
}

impl OpenStreamsLayer {
    pub fn new(methods: Arc<MethodTable>, limits: OpenLimits) -> Self {
        Self {
            methods,
            open: OpenStreams::new(limits),
        }
    }
}

impl<S> Layer<S> for OpenStreamsLayer {
    type Service = OpenStreamsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OpenStreamsService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct OpenStreamsService<S> {
    inner: S,
    layer: OpenStreamsLayer,
}

impl<S> Service<Request<Body>> for OpenStreamsService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if !matches!(self.layer.methods.access(req.uri().path()), Access::Open) {
            return Box::pin(self.inner.call(req));
        }
        match self.layer.open.admit(req) {
            Ok((req, permits)) => {
                let response = self.inner.call(req);
                Box::pin(async move { response.await.map(|r| hold(r, permits)) })
            }
            Err(status) => {
                tracing::debug!(reason = status.message(), "call without a token refused");
                Box::pin(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// A request body that fails once more than `limit` bytes of data arrived.
struct Limited {
    body: Body,
    left: usize,
    limit: usize,
}

impl http_body::Body for Limited {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            match self.left.checked_sub(data.len()) {
                Some(left) => self.left = left,
                None => {
                    let limit = self.limit;
                    return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                        "a call without a token may send at most {limit} bytes"
                    )))));
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that releases its stream's permits when it ends.
struct Holding {
    body: Body,
    permits: Option<Permits>,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let poll = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(poll, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.permits = None;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn request(body: &'static [u8], connection: Option<&ConnectionStreams>) -> Request<Body> {
        call("/grpc.health.v1.Health/Watch", body, connection)
    }

    fn call(
        path: &str,
        body: &'static [u8],
        connection: Option<&ConnectionStreams>,
    ) -> Request<Body> {
        let mut req = Request::new(Body::new(http_body_util::Full::new(Bytes::from_static(
            body,
        ))));
        *req.uri_mut() = path.parse().unwrap();
        if let Some(c) = connection {
            req.extensions_mut().insert(c.clone());
        }
        req
    }

    #[tokio::test]
    async fn streams_are_bounded_per_connection_and_in_total_until_their_responses_end() {
        let limits = OpenLimits {
            per_connection: 2,
            total: 3,
            max_request_bytes: 64,
        };
        let open = OpenStreams::new(limits);
        let (a, b) = (
            ConnectionStreams::new(&limits),
            ConnectionStreams::new(&limits),
        );
        let a1 = open.admit(request(b"", Some(&a))).unwrap().1;
        let _a2 = open.admit(request(b"", Some(&a))).unwrap().1;
        let refused = open.admit(request(b"", Some(&a))).err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        let _b1 = open.admit(request(b"", Some(&b))).unwrap().1;
        // The service-wide bound (3) is reached though b has room...
        assert!(open.admit(request(b"", Some(&b))).is_err());
        // ...except for the unary health check, bounded by its connection only.
        let check = open.admit(call(HEALTH_CHECK, b"", Some(&b))).unwrap();
        assert!(
            open.admit(call(HEALTH_CHECK, b"", Some(&b))).is_err(),
            "b's two permits are taken"
        );
        drop(check);
        // A response that ends gives its permits back.
        let response = hold(Response::new(Body::empty()), a1);
        response.into_body().collect().await.unwrap();
        assert!(open.admit(request(b"", Some(&b))).is_ok());
    }

    #[tokio::test]
    async fn a_request_body_past_the_limit_fails_with_resource_exhausted() {
        let open = OpenStreams::new(OpenLimits {
            max_request_bytes: 8,
            ..OpenLimits::default()
        });
        let (req, _p) = open.admit(request(b"12345678", None)).unwrap();
        assert_eq!(req.into_body().collect().await.unwrap().to_bytes().len(), 8);
        let (req, _p) = open.admit(request(b"123456789", None)).unwrap();
        let e = req.into_body().collect().await.err().unwrap();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    }
}
