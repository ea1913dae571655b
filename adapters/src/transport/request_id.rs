//! The request-id layer: every request gets a correlation id (the caller's `x-request-id` when it
//! is sane, else its `x-gitlab-correlation-id` when that is, else a new UUID), written back into the request and response metadata, and every log
//! line of the request carries it through a tracing span. It also notes when the request arrived.

use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

use super::metadata::{CORRELATION_ID, REQUEST_ID};

/// The request's correlation id, in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// When the request arrived, in the request extensions: the caller's deadline counts from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedAt(pub tokio::time::Instant);

const MAX_REQUEST_ID_LEN: usize = 128;

#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

/// The caller's id if it is short, printable and unambiguous (it goes into logs): its
/// `x-request-id`, else its `x-gitlab-correlation-id` (what GitLab's clients send); else a new one.
fn request_id_of<B>(req: &Request<B>) -> String {
    sane_single(req, REQUEST_ID)
        .or_else(|| sane_single(req, CORRELATION_ID))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn sane_single<B>(req: &Request<B>, name: &str) -> Option<String> {
    let mut values = req.headers().get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None)
            if !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(b)) =>
        {
            Some(v.to_str().expect("checked ASCII").to_owned())
        }
        _ => None,
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestIdService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let id = request_id_of(&req);
        let value = HeaderValue::from_str(&id).expect("request ids are visible ASCII");
        req.headers_mut().insert(REQUEST_ID, value.clone());
        req.extensions_mut().insert(RequestId(id.clone()));
        req.extensions_mut()
            .insert(ReceivedAt(tokio::time::Instant::now()));
        let span = tracing::info_span!("request", request_id = %id, method = %req.uri().path());
        let future = span.in_scope(|| self.inner.call(req));
        Box::pin(
            async move {
                let mut response = future.await?;
                response.headers_mut().insert(REQUEST_ID, value);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(headers: &[(&str, &str)]) -> String {
        let mut req = Request::new(());
        for (name, value) in headers {
            req.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        request_id_of(&req)
    }

    #[test]
    fn the_correlation_id_is_the_request_id_when_x_request_id_is_absent() {
        assert_eq!(id(&[(CORRELATION_ID, "corr-1")]), "corr-1");
        assert_eq!(
            id(&[(REQUEST_ID, "req-1"), (CORRELATION_ID, "corr-1")]),
            "req-1"
        );
        // An unusable x-request-id is as good as absent.
        assert_eq!(
            id(&[(REQUEST_ID, "a b"), (CORRELATION_ID, "corr-1")]),
            "corr-1"
        );
        for unusable in [
            vec![(CORRELATION_ID, "a\tb")],
            vec![(CORRELATION_ID, "x"), (CORRELATION_ID, "y")],
        ] {
            let generated = id(&unusable);
            assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
        }
        let long = "c".repeat(MAX_REQUEST_ID_LEN + 1);
        assert_ne!(id(&[(CORRELATION_ID, &long)]), long);
    }
}
