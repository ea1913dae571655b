//! The operator listener's `/metrics` through the real service: every family moves as good,
//! refused, unavailable and relayed calls go through; hostile input moves counters but never adds
//! a label value; the Grafana dashboard queries only what the service exports.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use duo_workflow_domain::Rpc;
use duo_workflow_service::cli::mint;
use duo_workflow_service::config::ENV_UPSTREAM_URL;
use support::{
    call, execute_workflow, generate_token, instance_request, key, start_service, Headers, TempDir,
    AGENT_PLATFORM, EXECUTE, GENERATE,
};
use tonic::{Code, Status};

const GITLAB: &str = "https://gitlab.test";
/// The issuer of a key source whose provider never answers: its tokens are `UNAVAILABLE`.
const DOWN: &str = "https://down.test";

/// `/metrics`: series (`name{labels}` as printed) and their values.
#[derive(Debug, Clone)]
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    async fn of(operator: SocketAddr) -> Self {
        let text = http_get(operator, "/metrics").await;
        let mut series = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, value) = line.rsplit_once(' ').expect("series value");
            series.insert(name.to_owned(), value.parse().expect("a number"));
        }
        Scrape(series)
    }

    /// The sum over the series of `name` that carry every label in `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, v)| v).sum()
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = (&'a String, f64)> + 'a {
        self.0
            .iter()
            .filter(move |(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series, ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(s, v)| (s, *v))
    }

    /// The series names and labels, without values.
    fn series(&self) -> BTreeSet<String> {
        self.0.keys().cloned().collect()
    }
}

/// A minimal HTTP/1.1 GET: the body of a 200 answer.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The service with a working static source (`test-gitlab`), a source whose provider is down
/// (`down`), and a fake executor.
struct World {
    service: support::Running,
    executor: support::executor::RunningExecutor,
    _dir: TempDir,
}

async fn world() -> World {
    let dir = TempDir::new();
    let jwks = serde_json::json!({ "keys": [key("rs256-instance").jwk()] });
    let jwks_path = dir.write("instance.jwks", &jwks.to_string());
    // Port 9 on loopback: nothing listens, every fetch fails at once.
    let config = dir.write(
        "config.toml",
        &format!(
            "[[key_sources]]\ntype = \"static\"\nname = \"test-gitlab\"\nissuer = \"{GITLAB}\"\njwks_file = \"{}\"\n\n\
             [[key_sources]]\ntype = \"jwks\"\nname = \"down\"\nissuer = \"{DOWN}\"\njwks_uri = \"http://127.0.0.1:9/keys\"\n",
            jwks_path.display()
        ),
    );
    let executor = support::executor::start().await;
    let upstream = format!("http://{}", executor.addr);
    let service = start_service(Some(&config), &[(ENV_UPSTREAM_URL, upstream.as_str())])
        .await
        .unwrap();
    World {
        service,
        executor,
        _dir: dir,
    }
}

fn good_headers(scopes: &[&str]) -> Headers {
    Headers::bearer(&mint(
        &key("rs256-instance").key,
        &instance_request(GITLAB, scopes),
    ))
}

/// Good, refused, unavailable and relayed calls, and relayed calls that fail.
async fn drive(w: &World) {
    let addr = w.service.addr;
    let good = good_headers(&[GENERATE, AGENT_PLATFORM, EXECUTE]);
    // Good: minted here, and relayed (twice with one token: a cache hit).
    generate_token(addr, &good).await.unwrap();
    execute_workflow(addr, &good).await.unwrap();
    call(addr, &good, Rpc::ListTools).await.unwrap();
    // Refused: no token; a token of another key; a token of an issuer nobody serves.
    let refused = [
        Headers::none(),
        Headers::bearer(&mint(
            &key("rs256-rogue").key,
            &instance_request(GITLAB, &[EXECUTE]),
        )),
        Headers::bearer(&mint(
            &key("rs256-instance").key,
            &instance_request("https://nobody.test", &[EXECUTE]),
        )),
    ];
    for headers in &refused {
        let status = generate_token(addr, headers).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    // Unavailable: the issuer's provider is down.
    let down = Headers::bearer(&mint(
        &key("rs256-instance").key,
        &instance_request(DOWN, &[EXECUTE]),
    ));
    assert_eq!(
        generate_token(addr, &down).await.unwrap_err().code(),
        Code::Unavailable
    );
    // Relayed, failed by the executor itself.
    *w.executor.executor.fail_with.lock().unwrap() =
        Some(Status::failed_precondition("no such workflow"));
    let failed = execute_workflow(addr, &good).await.unwrap_err();
    assert_eq!(failed.code(), Code::FailedPrecondition);
    *w.executor.executor.fail_with.lock().unwrap() = None;
}

#[tokio::test]
async fn every_family_moves_as_good_refused_unavailable_and_relayed_calls_go_through() {
    let w = world().await;
    let operator = w.service.operator_addr;
    let before = Scrape::of(operator).await;
    drive(&w).await;

    // A relayed stream held open by the executor shows as open.
    *w.executor.executor.delay.lock().unwrap() = Some(Duration::from_millis(800));
    let good = good_headers(&[AGENT_PLATFORM]);
    let addr = w.service.addr;
    let held = tokio::spawn(async move { execute_workflow(addr, &good).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let open = Scrape::of(operator)
            .await
            .value("duo_workflow_auth_relay_open_streams", &[]);
        if open == 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "open streams: {open}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.await.unwrap().unwrap();
    *w.executor.executor.delay.lock().unwrap() = None;

    // Until the `down` source has failed a fetch.
    let after = loop {
        let s = Scrape::of(operator).await;
        if s.value(
            "duo_workflow_auth_key_source_fetches_total",
            &[("source", "down"), ("result", "error")],
        ) >= 1.0
        {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "no failed fetch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let moved = |name: &str, labels: &[(&str, &str)]| {
        let (b, a) = (before.value(name, labels), after.value(name, labels));
        assert!(a > b, "{name}{labels:?} did not move: {b} -> {a}");
        a - b
    };

    let handled = "grpc_server_handled_total";
    let method = |m: &'static str| [("grpc_service", "DuoWorkflow"), ("grpc_method", m)];
    let with = |m: &'static str, code: &'static str| {
        let [s, m] = method(m);
        [s, m, ("grpc_code", code)]
    };
    assert_eq!(moved(handled, &with("GenerateToken", "OK")), 1.0);
    assert_eq!(moved(handled, &with("ExecuteWorkflow", "OK")), 2.0);
    assert_eq!(moved(handled, &with("ListTools", "OK")), 1.0);
    assert_eq!(
        moved(handled, &with("GenerateToken", "UNAUTHENTICATED")),
        3.0
    );
    assert_eq!(moved(handled, &with("GenerateToken", "UNAVAILABLE")), 1.0);
    assert_eq!(
        moved(handled, &with("ExecuteWorkflow", "FAILED_PRECONDITION")),
        1.0
    );
    assert!(after.has(
        handled,
        &[
            ("grpc_type", "bidi_stream"),
            ("grpc_method", "ExecuteWorkflow")
        ]
    ));
    let seconds = "grpc_server_handling_seconds_count";
    assert_eq!(moved(seconds, &method("GenerateToken")), 5.0);
    assert!(after.has(
        "grpc_server_handling_seconds_bucket",
        &[("grpc_method", "GenerateToken"), ("le", "0.1")]
    ));

    let refusals = "duo_workflow_auth_refusals_total";
    moved(
        refusals,
        &[("reason", "authorization_missing"), ("issuer", "none")],
    );
    moved(refusals, &[("reason", "kid_unknown"), ("issuer", GITLAB)]);
    moved(
        refusals,
        &[("reason", "issuer_unknown"), ("issuer", "unknown")],
    );
    moved(
        refusals,
        &[("reason", "keys_unavailable"), ("issuer", DOWN)],
    );

    let state = "duo_workflow_auth_key_source_state";
    assert_eq!(
        after.value(state, &[("source", "test-gitlab"), ("state", "ready")]),
        1.0
    );
    assert_eq!(
        after.value(state, &[("source", "down"), ("state", "pending")]),
        1.0
    );
    assert_eq!(
        after.value(state, &[("source", "down"), ("state", "ready")]),
        0.0
    );
    assert_eq!(
        after.value(
            "duo_workflow_auth_key_source_keys",
            &[("source", "test-gitlab")]
        ),
        1.0
    );
    assert!(after.has(
        "duo_workflow_auth_key_source_age_seconds",
        &[("source", "local-authority")]
    ));
    assert!(
        !after.has(
            "duo_workflow_auth_key_source_age_seconds",
            &[("source", "down")]
        ),
        "a source without keys has no age"
    );
    moved(
        "duo_workflow_auth_key_source_fetches_total",
        &[("source", "down"), ("result", "error")],
    );

    moved("duo_workflow_auth_verified_token_cache_hits_total", &[]);
    moved("duo_workflow_auth_verified_token_cache_misses_total", &[]);
    moved("duo_workflow_auth_verified_token_cache_entries", &[]);
    moved("duo_workflow_auth_verified_token_cache_bytes", &[]);

    let errors = "duo_workflow_auth_relay_executor_errors_total";
    assert_eq!(
        moved(
            errors,
            &[("grpc_code", "FAILED_PRECONDITION"), ("origin", "executor")]
        ),
        1.0
    );
    assert_eq!(
        after.value("duo_workflow_auth_relay_open_streams", &[]),
        0.0
    );
    assert_eq!(
        after.value(
            "duo_workflow_auth_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(after.has("duo_workflow_auth_log_lines_dropped_total", &[]));
    assert_eq!(after.value("duo_workflow_panics_total", &[]), 0.0);
    assert!(after.value("duo_workflow_runtime_alive_tasks", &[]) > 0.0);
    assert!(after.has("duo_workflow_auth_refusal_log_lines_suppressed_total", &[]));

    // An unreachable executor: the relay's own UNAVAILABLE.
    let dir = TempDir::new();
    let config = support::static_source_config(&dir, GITLAB, &[&key("rs256-instance")]);
    let unreachable = start_service(Some(&config), &[(ENV_UPSTREAM_URL, "http://127.0.0.1:9")])
        .await
        .unwrap();
    let status = execute_workflow(unreachable.addr, &good_headers(&[AGENT_PLATFORM]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let s = Scrape::of(unreachable.operator_addr).await;
    assert_eq!(
        s.value(errors, &[("grpc_code", "UNAVAILABLE"), ("origin", "relay")]),
        1.0
    );
}

#[tokio::test]
async fn a_thousand_distinct_hostile_tokens_add_no_label_values() {
    let w = world().await;
    let addr = w.service.addr;
    let operator = w.service.operator_addr;
    let rogue = key("rs256-rogue");
    // The i-th hostile call: a different token (or path) every time, of one of five kinds.
    let hostile = |i: usize| -> (Headers, Option<String>) {
        let mut request = instance_request(GITLAB, &[EXECUTE]);
        request.subject = Some(format!("user-{i}"));
        match i % 5 {
            // Not a token at all.
            0 => (Headers::bearer(&format!("{i}.garbage-{i}.x")), None),
            // An issuer nobody serves, a new one each time.
            1 => {
                request.issuer = format!("https://evil-{i}.test");
                (
                    Headers::bearer(&mint(&key("rs256-instance").key, &request)),
                    None,
                )
            }
            // The real issuer, a key it does not have (a random kid).
            2 => {
                let token = mint(&rogue.key, &request);
                let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
                let header =
                    serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": format!("kid-{i}")});
                parts[0] = support::b64(header.to_string().as_bytes());
                (Headers::bearer(&parts.join(".")), None)
            }
            // A path nobody serves.
            3 => (Headers::none(), Some(format!("/Evil{i}.Service/Method{i}"))),
            // The real issuer, kid-less, signed by another key.
            _ => {
                request.with_kid = false;
                (Headers::bearer(&mint(&rogue.key, &request)), None)
            }
        }
    };
    let send = |i: usize| {
        let (headers, path) = hostile(i);
        async move {
            match path {
                None => generate_token(addr, &headers).await.map(drop),
                Some(path) => raw_call(addr, &path).await,
            }
        }
    };
    // One of each kind first: the label values they bring are the bounded set.
    for i in 0..5 {
        assert!(send(i).await.is_err());
    }
    let before = Scrape::of(operator).await;
    for chunk in (5..1005).collect::<Vec<_>>().chunks(50) {
        let calls: Vec<_> = chunk.iter().map(|&i| tokio::spawn(send(i))).collect();
        for c in calls {
            assert!(c.await.unwrap().is_err());
        }
    }
    // The service still answers a good call.
    generate_token(addr, &good_headers(&[GENERATE]))
        .await
        .unwrap();
    let after = Scrape::of(operator).await;

    let refusals = "duo_workflow_auth_refusals_total";
    assert!(
        after.value(refusals, &[]) - before.value(refusals, &[]) >= 1000.0,
        "refusals were not all counted"
    );
    let new: Vec<String> = after
        .series()
        .difference(&before.series())
        .filter(|s| !s.contains("grpc_code=\"OK\"") && !s.contains("le=\""))
        .cloned()
        .collect();
    // Only the good call's own series may be new (its method with code OK, and its histogram).
    assert!(
        new.iter().all(|s| s.contains("GenerateToken")),
        "hostile calls added series: {new:#?}"
    );
    let text = http_get(operator, "/metrics").await;
    for secret in ["evil-", "kid-1", "user-1", "garbage", "Evil", "Method1"] {
        assert!(!text.contains(secret), "{secret:?} reached a label");
    }
}

/// A gRPC call to any path, over HTTP/2 (tonic's client only calls the contract's methods).
async fn raw_call(addr: SocketAddr, path: &str) -> Result<(), Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    grpc.unary(tonic::Request::new(()), path, codec)
        .await
        .map(drop)
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_the_service_exports() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/duo-workflow-auth.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "a dashboard of {} queries", exprs.len());
    let names: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();

    let w = world().await;
    drive(&w).await;
    let scrape = Scrape::of(w.service.operator_addr).await;
    let exported: BTreeSet<&str> = scrape
        .0
        .keys()
        .map(|s| s.split_once('{').map_or(s.as_str(), |(n, _)| n))
        .collect();
    for name in &names {
        assert!(
            exported.contains(name.as_str()),
            "the dashboard queries {name}, which /metrics does not export: {exported:#?}"
        );
    }
    // The panels operators look at first are there.
    for wanted in [
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "duo_workflow_auth_refusals_total",
        "duo_workflow_auth_key_source_state",
        "duo_workflow_auth_key_source_age_seconds",
        "duo_workflow_auth_verified_token_cache_hits_total",
    ] {
        assert!(names.contains(wanted), "no panel queries {wanted}");
    }
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The metric names a PromQL expression reads: the service's own and GitLab's gRPC families.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        if i > start {
            let word = &expr[start..i];
            let preceded = start > 0 && (bytes[start - 1] == b'"' || bytes[start - 1] == b'$');
            if !preceded
                && (word.starts_with("grpc_server_") || word.starts_with("duo_workflow_auth_"))
            {
                names.push(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}
