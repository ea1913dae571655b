//! The soak's OIDC provider, playing GitLab on loopback: its discovery document and JWKS
//! (`Cache-Control: max-age=86400`, which the replicas clamp to their refresh interval), keys
//! the driver rotates, and three moods: up, slow (every answer after [`SLOW`]), and down (the
//! port closed and every open connection cut, then bound again on the same port).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::task::JoinSet;

/// How long a slow provider takes to answer (below the replicas' 5 s fetch timeout).
pub const SLOW: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mood {
    Up,
    Slow,
}

struct State {
    keys: Vec<Value>,
    mood: Mood,
}

pub struct Provider {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// The accept loop and every connection, while up.
    serving: Mutex<Option<JoinSet<()>>>,
}

impl Provider {
    pub async fn start(keys: Vec<Value>) -> Arc<Provider> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let provider = Arc::new(Provider {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(State {
                keys,
                mood: Mood::Up,
            })),
            serving: Mutex::new(None),
        });
        provider.serve(listener);
        provider
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_keys(&self, keys: Vec<Value>) {
        self.state.lock().unwrap().keys = keys;
    }

    pub fn set_mood(&self, mood: Mood) {
        self.state.lock().unwrap().mood = mood;
    }

    /// Closes the port and cuts every connection.
    pub fn go_down(&self) {
        if let Some(mut tasks) = self.serving.lock().unwrap().take() {
            tasks.abort_all();
        }
    }

    /// Listens again on the same port.
    pub async fn come_back(&self) {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the provider cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let mut tasks = JoinSet::new();
        let state = self.state.clone();
        let addr = self.addr;
        let (conns_tx, mut conns_rx) = tokio::sync::mpsc::unbounded_channel();
        tasks.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = conns_tx.send(stream);
            }
        });
        // Connections live in the same set, so that going down cuts them too.
        let set = Arc::new(Mutex::new(JoinSet::new()));
        let conns = set.clone();
        tasks.spawn(async move {
            let _keep = ConnectionsGuard(conns.clone());
            while let Some(stream) = conns_rx.recv().await {
                let state = state.clone();
                conns.lock().unwrap().spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(respond(addr, &state, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                // Finished connections leave the set.
                while conns.lock().unwrap().try_join_next().is_some() {}
            }
        });
        *self.serving.lock().unwrap() = Some(tasks);
    }
}

/// Aborts every connection when the task holding it is aborted (going down).
struct ConnectionsGuard(Arc<Mutex<JoinSet<()>>>);

impl Drop for ConnectionsGuard {
    fn drop(&mut self) {
        self.0.lock().unwrap().abort_all();
    }
}

async fn respond(
    addr: SocketAddr,
    state: &Mutex<State>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (mood, keys) = {
        let s = state.lock().unwrap();
        (s.mood, s.keys.clone())
    };
    if mood == Mood::Slow {
        tokio::time::sleep(SLOW).await;
    }
    let body = match req.uri().path() {
        "/.well-known/openid-configuration" => json!({
            "issuer": format!("http://{addr}"),
            "jwks_uri": format!("http://{addr}/oauth/discovery/keys"),
        }),
        "/oauth/discovery/keys" => json!({ "keys": keys }),
        _ => {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
    };
    Response::builder()
        .header("cache-control", "max-age=86400")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}
