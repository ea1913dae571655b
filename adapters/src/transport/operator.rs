//! The operator listener: what operators read, kept off the public ports (checklist 31) —
//! `GET /metrics` (Prometheus), `GET /key-sources` (each key source's state, never key
//! material) and `GET /executors` (the workflow executors' endpoints). It listens on loopback unless configured otherwise.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use duo_workflow_domain::ports::{Clock, SourceState};

use super::listener::Acceptor;
use super::published_keys::{plain, serve_http1};
use crate::authenticator::DynKeySource;
use crate::executors::Executors;
use crate::metrics::{Metrics, CONTENT_TYPE};

pub const METRICS_PATH: &str = "/metrics";
pub const KEY_SOURCES_PATH: &str = "/key-sources";
pub const EXECUTORS_PATH: &str = "/executors";

pub struct OperatorPages {
    metrics: Arc<Metrics>,
    sources: Vec<DynKeySource>,
    clock: Arc<dyn Clock>,
    executors: Option<Arc<Executors>>,
}

impl OperatorPages {
    pub fn new(metrics: Arc<Metrics>, sources: Vec<DynKeySource>, clock: Arc<dyn Clock>) -> Self {
        Self {
            metrics,
            sources,
            clock,
            executors: None,
        }
    }

    /// Shows the workflow executors' endpoints on `/executors`.
    pub fn with_executors(mut self, executors: Arc<Executors>) -> Self {
        self.executors = Some(executors);
        self
    }

    /// Every executor endpoint: its URL's origin, address, state, open calls and failures; and
    /// how often names are resolved. Empty without an executor.
    fn executors(&self) -> serde_json::Value {
        let Some(executors) = &self.executors else {
            return json!({ "endpoints": [] });
        };
        let endpoints: Vec<serde_json::Value> = executors
            .view()
            .into_iter()
            .map(|e| {
                json!({
                    "executor": e.executor,
                    "endpoint": e.endpoint.to_string(),
                    "state": e.state.as_str(),
                    "open_calls": e.open_calls,
                    "failures": e.failures,
                    "last_error": e.last_error,
                })
            })
            .collect();
        json!({
            "endpoints": endpoints,
            "resolve_seconds": executors.resolve_every().as_secs(),
            "calls_sent_again": executors.retried(),
        })
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
                // Remote sources: how often the keys are fetched again, and whether the
                // provider's `Cache-Control` or the source's default decided it.
                if let Some(refresh) = s.refresh() {
                    v["refresh_seconds"] = json!(refresh.every_seconds);
                    v["refresh_from"] = json!(refresh.basis.as_str());
                }
                v
            })
            .collect();
        json!({ "sources": sources })
    }

    pub fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET");
        }
        let (content_type, body) = match req.uri().path() {
            METRICS_PATH => (CONTENT_TYPE, Bytes::from(self.metrics.render())),
            KEY_SOURCES_PATH => (
                "application/json",
                Bytes::from(serde_json::to_vec(&self.key_sources()).expect("JSON")),
            ),
            EXECUTORS_PATH => (
                "application/json",
                Bytes::from(serde_json::to_vec(&self.executors()).expect("JSON")),
            ),
            _ => return plain(StatusCode::NOT_FOUND, "not found"),
        };
        let mut response = Response::new(Full::new(body));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    /// Serves until `shutdown` resolves: HTTP/1.1, within the acceptor's bounds.
    pub async fn serve(
        self: Arc<Self>,
        acceptor: Acceptor,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        serve_http1(acceptor, shutdown, move |req| self.respond(req)).await
    }
}
