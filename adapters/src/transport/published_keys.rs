//! The local authority's public keys over HTTP, so that other services (or another instance of
//! this one) can verify user tokens through OIDC discovery:
//! `GET /.well-known/openid-configuration` and `GET /oauth/discovery/keys`. Beside them,
//! `GET /key-sources` reports each key source's state for operators (never key material).
//!
//! The discovery document's `issuer` is the service name, because that is the `iss` of the user
//! tokens, and OIDC discovery requires the two to be identical. `jwks_uri` is built from the
//! configured public URL, or from the request's `Host` when none is configured.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;

use duo_workflow_domain::ports::{Clock, SourceState};

use super::listener::{accept_until, expect_bytes_by, Acceptor, Counted};
use crate::authenticator::DynKeySource;
use crate::authority::LocalAuthority;

pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/oauth/discovery/keys";
pub const KEY_SOURCES_PATH: &str = "/key-sources";

/// Peers should notice a rotation within minutes; the keys change only on restart.
const CACHE_CONTROL: &str = "public, max-age=300";

pub struct PublishedKeys {
    authority: Arc<LocalAuthority>,
    /// e.g. `https://duo-workflow.example.com`; no trailing slash.
    public_url: Option<String>,
    /// Rendered once: the keys never change while the process runs.
    jwks: Bytes,
    sources: Vec<DynKeySource>,
    clock: Arc<dyn Clock>,
    /// The scheme of a `jwks_uri` derived from `Host`: `https` when this listener serves TLS.
    scheme: &'static str,
}

impl PublishedKeys {
    pub fn new(
        authority: Arc<LocalAuthority>,
        public_url: Option<String>,
        sources: Vec<DynKeySource>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let jwks = Bytes::from(serde_json::to_vec(&authority.jwks()).expect("JSON"));
        let public_url = public_url.map(|u| u.trim_end_matches('/').to_owned());
        Self {
            authority,
            public_url,
            jwks,
            sources,
            clock,
            scheme: "http",
        }
    }

    /// This listener serves TLS: a `jwks_uri` derived from `Host` is `https://`.
    pub fn over_https(mut self) -> Self {
        self.scheme = "https";
        self
    }

    /// Every key source: its issuer (and whether configuration or discovery says it), state, key
    /// count, and the age of its keys.
    fn key_sources(&self) -> serde_json::Value {
        let now = self.clock.now().as_secs();
        let sources: Vec<serde_json::Value> = self
            .sources
            .iter()
            .map(|s| {
                let issuer = s.issuer();
                let mut v = json!({
                    "name": s.name(),
                    // null while discovery has not named it yet
                    "issuer": issuer.known().map(|i| i.as_str()),
                    "issuer_from": if issuer.is_discovered() { "discovery" } else { "configuration" },
                    "required": s.required(),
                });
                let (state, loaded, reason) = match s.state() {
                    SourceState::Pending { reason } => ("pending", None, Some(json!(reason))),
                    SourceState::Ready { keys, loaded_at } => ("ready", Some((keys, loaded_at)), None),
                    SourceState::Stale { keys, loaded_at, reason } => {
                        ("stale", Some((keys, loaded_at)), Some(json!(reason)))
                    }
                };
                v["state"] = json!(state);
                if let Some((keys, loaded_at)) = loaded {
                    v["keys"] = json!(keys);
                    v["loaded_at"] = json!(loaded_at.as_secs());
                    v["age_seconds"] = json!(now - loaded_at.as_secs());
                }
                if let Some(reason) = reason {
                    v["reason"] = reason;
                }
                v
            })
            .collect();
        json!({ "sources": sources })
    }

    fn base_url<B>(&self, req: &Request<B>) -> Option<String> {
        if let Some(url) = &self.public_url {
            return Some(url.clone());
        }
        let host = req.headers().get(header::HOST)?.to_str().ok()?;
        let sane = !host.is_empty()
            && host.len() <= 255
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
        sane.then(|| format!("{}://{host}", self.scheme))
    }

    pub fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET");
        }
        match req.uri().path() {
            JWKS_PATH => json_response(self.jwks.clone()),
            KEY_SOURCES_PATH => {
                let body = serde_json::to_vec(&self.key_sources()).expect("JSON");
                let mut response = json_response(Bytes::from(body));
                response.headers_mut().insert(
                    header::CACHE_CONTROL,
                    http::HeaderValue::from_static("no-store"),
                );
                response
            }
            DISCOVERY_PATH => {
                let Some(base) = self.base_url(req) else {
                    return plain(StatusCode::BAD_REQUEST, "no usable Host header");
                };
                let algs: Vec<&str> = std::iter::once(self.authority.signing_key())
                    .chain(self.authority.validation_key())
                    .map(|k| k.algorithm().jose_name())
                    .collect();
                let doc = json!({
                    "issuer": self.authority.issuer_name(),
                    "jwks_uri": format!("{base}{JWKS_PATH}"),
                    "id_token_signing_alg_values_supported": algs,
                    "subject_types_supported": ["public"],
                    "response_types_supported": ["id_token"],
                });
                json_response(Bytes::from(serde_json::to_vec(&doc).expect("JSON")))
            }
            _ => plain(StatusCode::NOT_FOUND, "not found"),
        }
    }

    /// Serves until `shutdown` resolves. Each connection is HTTP/1.1 (over TLS when the acceptor
    /// has it), within the acceptor's connection bound; its first byte and its request headers
    /// must come within the handshake timeout.
    pub async fn serve(
        self: Arc<Self>,
        acceptor: Acceptor,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        // Dropped on return: open connections close with the listener (requests are short).
        let _connections = accept_until(acceptor, shutdown, |accepted, handshake| {
            let this = self.clone();
            async move {
                let Some(io) = handshake.secure(accepted.stream, accepted.peer).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let response = this.respond(&req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let started = tokio::time::Instant::now();
                let (io, read) = Counted::new(io);
                let mut http1 = hyper::server::conn::http1::Builder::new();
                http1
                    .timer(TokioTimer::new())
                    .header_read_timeout(handshake.limits().handshake_timeout);
                let connection = http1.serve_connection(TokioIo::new(io), service);
                // A request line must have begun by then; the header read timeout does the rest.
                let deadline = started + handshake.limits().handshake_timeout;
                let _ = expect_bytes_by(connection, &read, 1, deadline).await;
                drop(accepted.permit);
            }
        })
        .await;
    }
}

fn json_response(body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, CACHE_CONTROL)
        .body(Full::new(body))
        .expect("static response")
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(text.as_bytes())))
        .expect("static response")
}
