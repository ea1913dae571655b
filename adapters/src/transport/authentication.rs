//! The authentication layer. A tower layer rather than a tonic interceptor because it needs the
//! method path: to exempt the health service and to authorize per RPC. It turns the request's
//! metadata into the domain's [`RequestMetadata`], asks the [`Gatekeeper`], and either refuses with
//! SPEC's status and details or lets the request through with the [`Caller`] in its extensions.

use std::sync::Arc;
use std::task::{Context, Poll};

use duo_workflow_domain::gatekeeper::{Admission, Gatekeeper};
use duo_workflow_domain::{Identity, RequestMetadata, Rpc};
use http::{Request, Response};
use tower::{Layer, Service};

use super::metadata::request_metadata;
use super::{is_exempt, status_of};

/// The authenticated caller of a request, for the RPC handlers.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub metadata: RequestMetadata,
}

#[derive(Clone)]
pub struct AuthenticationLayer {
    gatekeeper: Arc<Gatekeeper>,
}

impl AuthenticationLayer {
    pub fn new(gatekeeper: Arc<Gatekeeper>) -> Self {
        Self { gatekeeper }
    }
}

impl<S> Layer<S> for AuthenticationLayer {
    type Service = Authentication<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authentication {
            inner,
            gatekeeper: self.gatekeeper.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authentication<S> {
    inner: S,
    gatekeeper: Arc<Gatekeeper>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Authentication<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this request (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gatekeeper = self.gatekeeper.clone();
        Box::pin(async move {
            let path = req.uri().path();
            if is_exempt(path) {
                return inner.call(req).await;
            }
            let rpc = Rpc::from_path(path);
            let metadata = request_metadata(req.headers());
            match gatekeeper.admit(&metadata, rpc).await {
                Ok(admission) => {
                    log_admission(&admission);
                    req.extensions_mut().insert(Caller {
                        identity: admission.identity,
                        metadata,
                    });
                    inner.call(req).await
                }
                Err(error) => {
                    let status = status_of(&error);
                    tracing::warn!(code = ?status.code(), reason = %error, "request refused");
                    Ok(status.into_http())
                }
            }
        })
    }
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
