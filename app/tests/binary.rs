//! The `duo-workflow-service` binary itself: the CLI tools, graceful shutdown on SIGTERM and
//! SIGINT, and that a full flow at the most verbose log level never prints a secret.

#[allow(dead_code)]
#[path = "../../tests/support/executor.rs"]
mod executor;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use duo_workflow_contract::duo_workflow_client::DuoWorkflowClient;
use duo_workflow_contract::{
    client_event, ClientEvent, GenerateTokenRequest, StartWorkflowRequest,
};
use tonic::metadata::MetadataValue;

const BIN: &str = env!("CARGO_BIN_EXE_duo-workflow-service");

struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("dws-bin-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A running `serve`, its stderr going to a file; killed if the test forgets it.
struct Server {
    child: Child,
    log: PathBuf,
    addr: String,
}

impl Server {
    fn start(dir: &Scratch, config: Option<&Path>, env: &[(&str, &str)]) -> Self {
        let log = dir.path(&format!("serve-{}.log", rand_suffix()));
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").args(["--listen", "127.0.0.1"]);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        cmd.env("PORT", "0")
            .env("DUO_WORKFLOW_HTTP__PORT", "0")
            .env("DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL", "")
            .env("DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL", "")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // Built first, so that Drop kills the child if start-up fails below.
        let mut server = Self {
            child: cmd.spawn().unwrap(),
            log,
            addr: String::new(),
        };
        // The address is in the start-up log line: `serving grpc=127.0.0.1:PORT ...`.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&server.log).unwrap_or_default();
            if let Some(addr) = text
                .split("grpc=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
            {
                server.addr = format!("http://{addr}");
                return server;
            }
            assert!(Instant::now() < deadline, "serve did not start: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0);
    }

    fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn with_metadata<T>(message: T, token: Option<&str>, user: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    let md = req.metadata_mut();
    if let Some(token) = token {
        md.insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
        );
        md.insert(
            "x-gitlab-authentication-type",
            MetadataValue::from_static("oidc"),
        );
    }
    md.insert("x-gitlab-realm", MetadataValue::from_static("self-managed"));
    md.insert("x-gitlab-instance-id", MetadataValue::from_static("inst-1"));
    if let Some(user) = user {
        md.insert(
            "x-gitlab-global-user-id",
            MetadataValue::try_from(user).unwrap(),
        );
    }
    req
}

fn start_request() -> ClientEvent {
    ClientEvent {
        response: Some(client_event::Response::StartRequest(StartWorkflowRequest {
            goal: "refactor".into(),
            ..Default::default()
        })),
    }
}

async fn execute(
    addr: &str,
    token: Option<&str>,
    user: Option<&str>,
) -> Result<usize, tonic::Status> {
    let mut client = DuoWorkflowClient::connect(addr.to_owned()).await.unwrap();
    let req = with_metadata(futures::stream::iter(vec![start_request()]), token, user);
    let mut stream = client.execute_workflow(req).await?.into_inner();
    let mut n = 0;
    while stream.message().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// A debug-mode server relaying to an executor that holds each stream for `hold`, with one
/// `ExecuteWorkflow` stream already held there when this returns.
async fn serve_with_stream_in_flight(
    dir: &Scratch,
    config: Option<&Path>,
    hold: Duration,
) -> (
    Server,
    tokio::task::JoinHandle<Result<usize, tonic::Status>>,
    executor::RunningExecutor,
) {
    let upstream = executor::start().await;
    *upstream.executor.delay.lock().unwrap() = Some(hold);
    let upstream_url = format!("http://{}", upstream.addr);
    let server = Server::start(
        dir,
        config,
        &[
            ("DUO_WORKFLOW_AUTH__ENABLED", "false"),
            ("DUO_WORKFLOW_UPSTREAM__URL", upstream_url.as_str()),
        ],
    );
    let addr = server.addr.clone();
    let in_flight = tokio::spawn(async move { execute(&addr, None, None).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.executor.seen.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the stream never reached the executor"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (server, in_flight, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_let_in_flight_streams_finish_then_exit_zero() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let dir = Scratch::new();
        let (mut server, in_flight, _upstream) =
            serve_with_stream_in_flight(&dir, None, Duration::from_millis(1500)).await;
        server.signal(signal);
        let finished = in_flight.await.unwrap();
        assert_eq!(
            finished.unwrap(),
            2,
            "the in-flight stream was cut (signal {signal})"
        );
        let status = server.wait(Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "signal {signal}: {}", server.log());
        assert!(server.log().contains("shutting down"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_shutdown() {
    let dir = Scratch::new();
    let config = dir.path("config.toml");
    std::fs::write(&config, "[limits]\nshutdown_grace_seconds = 1\n").unwrap();
    let (mut server, in_flight, _upstream) =
        serve_with_stream_in_flight(&dir, Some(&config), Duration::from_secs(30)).await;
    let stopping = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?} with a 1 s grace period"
    );
    assert!(
        in_flight.await.unwrap().is_err(),
        "a stream outliving the grace period must be cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_flow_at_trace_level_never_logs_a_secret() {
    let dir = Scratch::new();
    let (instance_key, authority_key) = (dir.path("instance.pem"), dir.path("authority.pem"));
    run(&["keys", "generate", "--out", instance_key.to_str().unwrap()]);
    run(&[
        "keys",
        "generate",
        "--out",
        authority_key.to_str().unwrap(),
        "--alg",
        "es256",
    ]);
    let jwks = run(&[
        "keys",
        "public",
        "--key",
        instance_key.to_str().unwrap(),
        "--jwks",
    ]);
    std::fs::write(dir.path("instance.jwks"), &jwks).unwrap();
    let config = dir.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[key_sources]]\ntype = \"static\"\nname = \"local\"\nissuer = \"http://gitlab.local\"\njwks_file = \"{}\"\n",
            dir.path("instance.jwks").display()
        ),
    )
    .unwrap();
    let authority_pem = std::fs::read_to_string(&authority_key).unwrap();
    let upstream = executor::start().await;
    let upstream_url = format!("http://{}", upstream.addr);
    let mut server = Server::start(
        &dir,
        Some(&config),
        &[
            ("RUST_LOG", "trace"),
            (
                "DUO_WORKFLOW_SELF_SIGNED_JWT__SIGNING_KEY",
                authority_pem.as_str(),
            ),
            ("DUO_WORKFLOW_UPSTREAM__URL", upstream_url.as_str()),
        ],
    );

    let mint = |extra: &[&str]| {
        let mut args = vec![
            "token",
            "mint",
            "--key",
            instance_key.to_str().unwrap(),
            "--issuer",
            "http://gitlab.local",
            "--realm",
            "self-managed",
            "--instance-id",
            "inst-1",
            "--scopes",
            "duo_workflow_generate_token",
        ];
        args.extend_from_slice(extra);
        run(&args).trim().to_owned()
    };
    let instance_token = mint(&["--no-kid"]);
    let wrong_audience = mint(&["--audience", "someone-else"]);
    let mut client = DuoWorkflowClient::connect(server.addr.clone())
        .await
        .unwrap();
    let response = client
        .generate_token(with_metadata(
            GenerateTokenRequest {
                workflow_definition: None,
            },
            Some(&instance_token),
            Some("42"),
        ))
        .await
        .unwrap()
        .into_inner();
    let user_token = response.token;
    assert_eq!(
        execute(&server.addr, Some(&user_token), Some("42"))
            .await
            .unwrap(),
        2
    );
    // Failures log their reasons; those lines must not carry the tokens either.
    for bad in [&wrong_audience, &format!("{instance_token}x"), &user_token] {
        let result = client
            .generate_token(with_metadata(
                GenerateTokenRequest {
                    workflow_definition: None,
                },
                Some(bad),
                Some("42"),
            ))
            .await;
        assert!(result.is_err());
    }
    assert!(execute(&server.addr, Some(&user_token), Some("43"))
        .await
        .is_err());

    // The `client` command too, with its token from the environment.
    let out = Command::new(BIN)
        .args([
            "client",
            "--url",
            &server.addr,
            "--realm",
            "self-managed",
            "--instance-id",
            "inst-1",
            "--global-user-id",
            "42",
        ])
        .env("DUO_WORKFLOW_CLIENT_TOKEN", &instance_token)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let client_output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{client_output}");
    assert!(
        client_output.contains("GenerateToken: OK")
            && client_output.contains("ExecuteWorkflow: OK"),
        "{client_output}"
    );

    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(10)).code(), Some(0));
    let log = server.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log is not verbose: {log}"
    );

    let mut secrets: Vec<(String, String)> = Vec::new();
    for (name, token) in [
        ("instance token", &instance_token),
        ("user token", &user_token),
        ("bad token", &wrong_audience),
    ] {
        secrets.push((name.to_owned(), token.clone()));
        let signature = token.rsplit('.').next().unwrap().to_owned();
        secrets.push((format!("{name} signature"), signature));
    }
    for (name, pem) in [
        (
            "instance key",
            std::fs::read_to_string(&instance_key).unwrap(),
        ),
        ("authority key", authority_pem),
    ] {
        for line in pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 16)
        {
            secrets.push((format!("{name} PEM line"), line.to_owned()));
        }
    }
    for (name, secret) in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "the service log contains the {name}"
        );
        assert!(
            !client_output.contains(secret.as_str()),
            "the client output contains the {name}"
        );
    }
}

#[test]
fn keys_generate_refuses_to_overwrite_and_writes_owner_only_files() {
    let dir = Scratch::new();
    let path = dir.path("k.pem");
    run(&[
        "keys",
        "generate",
        "--out",
        path.to_str().unwrap(),
        "--alg",
        "eddsa",
    ]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let again = Command::new(BIN)
        .args(["keys", "generate", "--out", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let public = run(&["keys", "public", "--key", path.to_str().unwrap()]);
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
}

#[test]
fn a_bad_configuration_stops_start_up_naming_the_field() {
    // `0` and `off` too: GitLab's service keeps authentication on for them, so they must not
    // silently turn it off here.
    for value in ["perhaps", "0", "off"] {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1"])
            .env("PORT", "0")
            .env("DUO_WORKFLOW_HTTP__PORT", "0")
            .env("DUO_WORKFLOW_AUTH__ENABLED", value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("DUO_WORKFLOW_AUTH__ENABLED"),
            "{value}: {stderr}"
        );
    }
}
