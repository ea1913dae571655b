//! A fake OIDC provider playing GitLab or CustomersDot: discovery + JWKS over HTTP on loopback,
//! with switchable failure modes and fetch counters.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Healthy,
    ServerError,
    Garbage,
    /// A 10 MiB body.
    Huge,
    Redirect,
    /// Accepts and never answers.
    Hang,
}

pub struct ProviderState {
    pub jwks: Value,
    /// The `issuer` the discovery document states (default: the provider's own URL).
    pub issuer_override: Option<String>,
    /// The `jwks_uri` the discovery document states (default: the provider's own JWKS).
    pub jwks_uri_override: Option<String>,
    pub mode: Mode,
    pub cache_control: String,
}

pub struct Provider {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<ProviderState>>,
    pub discovery_fetches: Arc<AtomicUsize>,
    pub jwks_fetches: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl Provider {
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_keys(&self, keys: Vec<Value>) {
        self.state.lock().unwrap().jwks = json!({ "keys": keys });
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> usize {
        self.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Makes the discovery document name `issuer` instead of the provider's own URL (a GitLab
    /// reached by an internal URL names its external one).
    pub fn set_discovery_issuer(&self, issuer: &str) {
        self.state.lock().unwrap().issuer_override = Some(issuer.into());
    }
}

/// Starts a provider serving `keys`, with GitLab's `Cache-Control: max-age=86400`.
pub async fn start(keys: Vec<Value>) -> Provider {
    start_on("127.0.0.1:0".parse().unwrap(), keys).await
}

pub async fn start_on(addr: SocketAddr, keys: Vec<Value>) -> Provider {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Mutex::new(ProviderState {
        jwks: json!({ "keys": keys }),
        issuer_override: None,
        jwks_uri_override: None,
        mode: Mode::Healthy,
        cache_control: "max-age=86400".into(),
    }));
    let discovery_fetches = Arc::new(AtomicUsize::new(0));
    let jwks_fetches = Arc::new(AtomicUsize::new(0));
    let (stop, mut stopped) = oneshot::channel::<()>();
    let (st, df, jf) = (
        state.clone(),
        discovery_fetches.clone(),
        jwks_fetches.clone(),
    );
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                c = listener.accept() => c.unwrap(),
                _ = &mut stopped => return,
            };
            let (st, df, jf) = (st.clone(), df.clone(), jf.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (st, df, jf) = (st.clone(), df.clone(), jf.clone());
                    async move { Ok::<_, Infallible>(respond(addr, &st, &df, &jf, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Provider {
        addr,
        state,
        discovery_fetches,
        jwks_fetches,
        _stop: stop,
    }
}

async fn respond(
    addr: SocketAddr,
    state: &Mutex<ProviderState>,
    discovery_fetches: &AtomicUsize,
    jwks_fetches: &AtomicUsize,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (mode, body, cache_control) = {
        let s = state.lock().unwrap();
        let body = match req.uri().path() {
            "/.well-known/openid-configuration" => {
                discovery_fetches.fetch_add(1, Ordering::SeqCst);
                let issuer = s
                    .issuer_override
                    .clone()
                    .unwrap_or_else(|| format!("http://{addr}"));
                let jwks_uri = s
                    .jwks_uri_override
                    .clone()
                    .unwrap_or_else(|| format!("http://{addr}/oauth/discovery/keys"));
                Some(json!({"issuer": issuer, "jwks_uri": jwks_uri}))
            }
            "/oauth/discovery/keys" => {
                jwks_fetches.fetch_add(1, Ordering::SeqCst);
                Some(s.jwks.clone())
            }
            _ => None,
        };
        (s.mode, body, s.cache_control.clone())
    };
    let Some(body) = body else {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new()))
            .unwrap();
    };
    let builder = Response::builder()
        .header("cache-control", cache_control)
        .header("content-type", "application/json");
    match mode {
        Mode::Healthy => builder
            .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
            .unwrap(),
        Mode::ServerError => builder
            .status(500)
            .body(Full::new(Bytes::from_static(b"oops")))
            .unwrap(),
        Mode::Garbage => builder
            .body(Full::new(Bytes::from_static(b"<html>not json")))
            .unwrap(),
        Mode::Huge => builder
            .body(Full::new(Bytes::from(vec![b' '; 10 * 1024 * 1024])))
            .unwrap(),
        Mode::Redirect => builder
            .status(302)
            .header("location", "http://127.0.0.1:9/evil")
            .body(Full::new(Bytes::new()))
            .unwrap(),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            unreachable!()
        }
    }
}
