//! The relay spreads calls over every executor endpoint (issue 14): three executors on
//! 127.0.0.2, 127.0.0.3 and 127.0.0.4, named by a list of URLs or by one name that resolves to
//! the three, each holding the `ExecuteWorkflow` streams it gets open. New streams go where the
//! fewest are open; an endpoint resolution adds takes new streams until the counts even out; one
//! it removes finishes its open streams and gets no new one; a killed one is skipped and no new
//! call is refused for it.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use duo_workflow_domain::ports::NameResolver;
use duo_workflow_service::config::{
    ENV_UPSTREAM_RESOLVE_SECONDS, ENV_UPSTREAM_SERVER_CAPABILITIES, ENV_UPSTREAM_URL,
};
use hyper::body::Frame;
use prost::Message;
use support::raw::{self, RawExecutor};
use support::Running;
use support::{instance_token, key, static_source_config, TempDir, AGENT_PLATFORM};

const GITLAB: &str = "https://gitlab.test";

/// An executor that answers each stream at once and echoes its messages until the caller
/// half-closes, then ends it `OK`; it counts the streams it was given and those open now.
struct Executor {
    server: RawExecutor,
    started: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

impl Executor {
    fn on(listener: tokio::net::TcpListener) -> Self {
        let started = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (s, o) = (started.clone(), open.clone());
        let server = RawExecutor::serve(listener, move |req| {
            s.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let open = o.clone();
            async move {
                let (tx, body) = raw::channel_body(16);
                let mut incoming = req.into_body();
                tokio::spawn(async move {
                    use http_body_util::BodyExt;
                    while let Some(Ok(frame)) = incoming.frame().await {
                        // Never an empty DATA frame before the end: h2 (0.4.20) closes a connection
                        // that receives a hundred of them, as gRPC servers never send one.
                        if let Some(data) = frame.into_data().ok().filter(|d| !d.is_empty()) {
                            let _ = tx.send(Ok(Frame::data(data))).await;
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                    let _ = tx
                        .send(Ok(Frame::trailers(raw::trailers(&[("grpc-status", b"0")]))))
                        .await;
                });
                raw::response(&[], body)
            }
        });
        Self {
            server,
            started,
            open,
        }
    }

    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

/// Listeners on `ips`, all on one port (a name's addresses share the URL's port).
async fn listeners_on_one_port(ips: &[&str]) -> Vec<tokio::net::TcpListener> {
    'again: loop {
        let first = tokio::net::TcpListener::bind((ips[0], 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match tokio::net::TcpListener::bind((*ip, port)).await {
                Ok(l) => all.push(l),
                Err(_) => continue 'again,
            }
        }
        return all;
    }
}

/// A resolver whose answer the test changes.
#[derive(Default)]
struct Names(Mutex<Vec<IpAddr>>);

impl Names {
    fn set(&self, ips: &[&str]) {
        *self.0.lock().unwrap() = ips.iter().map(|ip| ip.parse().unwrap()).collect();
    }
}

#[async_trait]
impl NameResolver for Names {
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        assert_eq!(host, "executors.test");
        Ok(self.0.lock().unwrap().clone())
    }
}

/// Metadata of a caller allowed to run workflows.
fn caller(dir: &TempDir) -> (std::path::PathBuf, Vec<(String, String)>) {
    let instance = key("rs256-instance");
    let config = static_source_config(dir, GITLAB, &[&instance]);
    let token = instance_token(&instance, GITLAB, &[AGENT_PLATFORM]);
    let headers = vec![
        ("authorization".into(), format!("Bearer {token}")),
        ("x-gitlab-authentication-type".into(), "oidc".into()),
        ("x-gitlab-realm".into(), "self-managed".into()),
        ("x-gitlab-instance-id".into(), "instance-1".into()),
        ("x-gitlab-global-user-id".into(), "user-77".into()),
    ];
    (config, headers)
}

/// The service in front of `executors.test:port`, a name `names` resolves, again every second;
/// and a caller's metadata.
async fn service_resolving(
    dir: &TempDir,
    port: u16,
    names: &Arc<Names>,
) -> (Running, Vec<(String, String)>) {
    let (config, headers) = caller(dir);
    let url = format!("http://executors.test:{port}");
    let service = support::start_service_resolving(
        Some(&config),
        &[
            (ENV_UPSTREAM_URL, &url),
            (ENV_UPSTREAM_SERVER_CAPABILITIES, ""),
            (ENV_UPSTREAM_RESOLVE_SECONDS, "1"),
        ],
        names.clone(),
    )
    .await
    .unwrap();
    (service, headers)
}

type Events = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

/// An open `ExecuteWorkflow` stream through the service.
struct Stream {
    events: Events,
    body: hyper::body::Incoming,
}

impl Stream {
    /// Sends `message` and reads its echo.
    async fn echo(&mut self, message: &[u8]) {
        let framed = raw::framed(message);
        self.events
            .send(Ok(Frame::data(framed.clone())))
            .await
            .unwrap();
        self.read_echo(&framed).await;
    }

    async fn read_echo(&mut self, framed: &[u8]) {
        use http_body_util::BodyExt;
        let mut got = Vec::new();
        while got.len() < framed.len() {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("no echo")
                .expect("the stream ended")
                .expect("the stream broke");
            got.extend_from_slice(&frame.into_data().expect("a message"));
        }
        assert_eq!(got, framed);
    }

    /// Half-closes, and reads the final status.
    async fn finish(self) -> Option<String> {
        use http_body_util::BodyExt;
        drop(self.events);
        let mut body = self.body;
        while let Some(frame) = body.frame().await {
            if let Ok(trailers) = frame.ok()?.into_trailers() {
                return trailers
                    .get("grpc-status")
                    .map(|v| v.to_str().unwrap().to_owned());
            }
        }
        None
    }
}

/// Opens `n` streams over a few connections; each has reached an executor when this returns
/// (its first message came back).
async fn open_streams(service: &Running, headers: &[(String, String)], n: usize) -> Vec<Stream> {
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let start = support::start_event("go").encode_to_vec();
    let mut sends = Vec::new();
    for _ in 0..4 {
        sends.push(raw::connect(service.addr).await);
    }
    let mut pending = Vec::new();
    for i in 0..n {
        let (events, body) = raw::channel_body(4);
        // The first message goes with the request: the service reads it before relaying.
        events
            .send(Ok(Frame::data(raw::framed(&start))))
            .await
            .unwrap();
        let request = raw::request("/DuoWorkflow/ExecuteWorkflow", &h, body);
        let connections = sends.len();
        let response = sends[i % connections].send_request(request);
        pending.push(tokio::spawn(async move {
            let response = response.await.unwrap();
            assert!(
                response.headers().get("grpc-status").is_none(),
                "refused: {:?}",
                response.headers()
            );
            (events, response.into_body())
        }));
    }
    let mut streams = Vec::new();
    for p in pending {
        let (events, body) = tokio::time::timeout(Duration::from_secs(20), p)
            .await
            .expect("a stream was not answered")
            .unwrap();
        let mut stream = Stream { events, body };
        stream.read_echo(&raw::framed(&start)).await;
        streams.push(stream);
    }
    streams
}

fn counts(executors: &[&Executor]) -> Vec<usize> {
    executors
        .iter()
        .map(|e| e.open.load(Ordering::SeqCst))
        .collect()
}

fn within_15_percent(counts: &[usize], each: usize) {
    let (low, high) = (each * 85 / 100, each * 115 / 100);
    assert!(
        counts.iter().all(|c| (low..=high).contains(c)),
        "{counts:?}: not within ±15% of {each}"
    );
}

/// The operator page's endpoints: (address, state, open calls).
async fn endpoints(service: &Running) -> Vec<(String, String, u64)> {
    let (status, _, body) =
        support::get_with_host(service.operator_addr, "/executors", "localhost").await;
    assert_eq!(status, 200);
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    page["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["endpoint"].as_str().unwrap().to_owned(),
                e["state"].as_str().unwrap().to_owned(),
                e["open_calls"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_executors_in_a_url_list_share_the_streams_and_a_killed_one_is_skipped() {
    let executors: Vec<Executor> = {
        let mut v = Vec::new();
        for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
            v.push(Executor::on(
                tokio::net::TcpListener::bind((ip, 0)).await.unwrap(),
            ));
        }
        v
    };
    let urls: Vec<String> = executors
        .iter()
        .map(|e| format!("http://{}", e.server.addr))
        .collect();
    let urls = urls.join(",");
    let dir = TempDir::new();
    let (config, headers) = caller(&dir);
    let service = support::start_service(
        Some(&config),
        &[
            (ENV_UPSTREAM_URL, &urls),
            (ENV_UPSTREAM_SERVER_CAPABILITIES, ""),
        ],
    )
    .await
    .unwrap();

    let streams = open_streams(&service, &headers, 300).await;
    let all: Vec<&Executor> = executors.iter().collect();
    println!("300 streams over a list of three: {:?}", counts(&all));
    within_15_percent(&counts(&all), 100);
    let page = endpoints(&service).await;
    assert_eq!(page.len(), 3);
    assert!(
        page.iter()
            .all(|(_, state, open)| state == "ready" && (85..=115).contains(open)),
        "{page:?}"
    );

    // One dies: its streams break; every new call goes to the other two, none refused.
    let mut executors = executors;
    let killed = executors.remove(1);
    let killed_addr = killed.server.addr;
    killed.server.kill();
    let before: Vec<usize> = executors.iter().map(Executor::started).collect();
    let more = open_streams(&service, &headers, 60).await;
    let after: Vec<usize> = executors.iter().map(Executor::started).collect();
    assert_eq!(after[0] + after[1] - before[0] - before[1], 60);
    // It is skipped (in backoff, or idle once its backoff is over) after failing, never ready.
    let (status, _, body) =
        support::get_with_host(service.operator_addr, "/executors", "localhost").await;
    assert_eq!(status, 200);
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let dead = page["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == killed_addr.to_string())
        .unwrap();
    assert_ne!(dead["state"], "ready", "{page}");
    assert!(dead["failures"].as_u64().unwrap() >= 1, "{page}");
    assert!(dead["last_error"].is_string(), "{page}");
    let s = support::get_with_host(service.operator_addr, "/metrics", "localhost")
        .await
        .2;
    assert!(
        s.contains("duo_workflow_auth_executor_endpoints{state=\"ready\"} 2"),
        "{s}"
    );
    for stream in more {
        assert_eq!(stream.finish().await.as_deref(), Some("0"));
    }
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_three_executors_spreads_streams_and_follows_the_addresses_it_resolves_to(
) {
    let listeners =
        listeners_on_one_port(&["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]).await;
    let port = listeners[0].local_addr().unwrap().port();
    let executors: Vec<Executor> = listeners.into_iter().map(Executor::on).collect();
    let names = Arc::new(Names::default());
    names.set(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let dir = TempDir::new();
    let (service, headers) = service_resolving(&dir, port, &names).await;
    let [e2, e3, e4, e5] = [&executors[0], &executors[1], &executors[2], &executors[3]];

    let mut streams = open_streams(&service, &headers, 300).await;
    println!(
        "300 streams over one name of three addresses: {:?}",
        counts(&[e2, e3, e4])
    );
    within_15_percent(&counts(&[e2, e3, e4]), 100);
    assert_eq!(e5.started(), 0);

    // A fourth address appears: it takes the new streams until the four are even.
    names.set(&["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]);
    let fifth = SocketAddr::from(([127, 0, 0, 5], port)).to_string();
    wait_for("the fourth endpoint", async || {
        endpoints(&service)
            .await
            .iter()
            .any(|(a, s, _)| *a == fifth && s == "ready")
    })
    .await;
    streams.extend(open_streams(&service, &headers, 100).await);
    println!(
        "100 more after a fourth joined: {:?}",
        counts(&[e2, e3, e4, e5])
    );
    assert!(
        e5.started() >= 85,
        "the new endpoint took {} of 100",
        e5.started()
    );
    within_15_percent(&counts(&[e2, e3, e4, e5]), 100);

    // 127.0.0.2 is no longer resolved: its streams finish there, and no new one goes there.
    names.set(&["127.0.0.3", "127.0.0.4", "127.0.0.5"]);
    let second = SocketAddr::from(([127, 0, 0, 2], port)).to_string();
    wait_for("127.0.0.2 to drain", async || {
        endpoints(&service)
            .await
            .iter()
            .any(|(a, s, _)| *a == second && s == "draining")
    })
    .await;
    let started_there = e2.started();
    let open_there = e2.open.load(Ordering::SeqCst);
    streams.extend(open_streams(&service, &headers, 60).await);
    assert_eq!(
        e2.started(),
        started_there,
        "a drained endpoint got a new stream"
    );
    assert_eq!(
        e2.open.load(Ordering::SeqCst),
        open_there,
        "its streams go on"
    );
    // Every stream still works, the drained endpoint's too, and ends OK.
    for stream in &mut streams {
        stream.echo(b"still there").await;
    }
    for (i, stream) in streams.into_iter().enumerate() {
        assert_eq!(stream.finish().await.as_deref(), Some("0"), "stream {i}");
    }
    // Its last stream done, the drained endpoint is gone.
    wait_for("127.0.0.2 to go", async || {
        !endpoints(&service)
            .await
            .iter()
            .any(|(a, _, _)| *a == second)
    })
    .await;
    // Its series went with it; the others' remain.
    let metrics = support::get_with_host(service.operator_addr, "/metrics", "localhost")
        .await
        .2;
    let series = |endpoint: &str| format!("endpoint=\"{endpoint}\"");
    assert!(!metrics.contains(&series(&second)), "{metrics}");
    assert!(metrics.contains(&series(&fifth)), "{metrics}");
    assert_eq!(counts(&[e2, e3, e4, e5]), [0, 0, 0, 0]);
}

/// A name that resolves to nothing at start is no error: the service starts, calls are
/// `UNAVAILABLE`, and once the name resolves they reach the executor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_nothing_at_start_is_unavailable_until_it_resolves() {
    let listeners = listeners_on_one_port(&["127.0.0.2"]).await;
    let port = listeners[0].local_addr().unwrap().port();
    let executor = Executor::on(listeners.into_iter().next().unwrap());
    let names = Arc::new(Names::default());
    let dir = TempDir::new();
    let (service, headers) = service_resolving(&dir, port, &names).await;
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let start = raw::framed(&support::start_event("go").encode_to_vec());
    let call = || {
        raw::call(
            service.addr,
            raw::request(
                "/DuoWorkflow/ExecuteWorkflow",
                &h,
                raw::frames_body(vec![Frame::data(start.clone())]),
            ),
        )
    };
    let r = call().await;
    assert_eq!(r.grpc_status(), Some("14"), "{r:?}");
    assert_eq!(
        r.grpc_message().as_deref(),
        Some("Workflow executor unavailable")
    );
    names.set(&["127.0.0.2"]);
    wait_for("the name to resolve", async || {
        endpoints(&service)
            .await
            .iter()
            .any(|(_, s, _)| s == "ready")
    })
    .await;
    let r = call().await;
    assert_eq!(r.grpc_status(), Some("0"), "{r:?}");
    assert_eq!(executor.started(), 1);
}
