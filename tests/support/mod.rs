//! Test fixtures shared by the contract and end-to-end tests: keys, tokens, gRPC calls with
//! metadata, a fake OIDC provider and a fake workflow executor. Everything binds 127.0.0.1:0.
#![allow(dead_code)]

pub mod executor;
pub mod pki;
pub mod provider;
pub mod raw;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use duo_workflow_adapters::jose::signing::{generate_pem, SigningKey};
use duo_workflow_contract::duo_workflow_client::DuoWorkflowClient;
use duo_workflow_contract::{
    client_event, ClientEvent, GenerateTokenRequest, GenerateTokenResponse, StartWorkflowRequest,
};
use duo_workflow_domain::keys::Algorithm;
use duo_workflow_domain::Rpc;
use duo_workflow_service::cli::{mint, MintRequest};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Status};

pub const SERVICE: &str = "gitlab-duo-workflow-service";
pub const EXECUTE: &str = "duo_workflow_execute_workflow";
pub const GENERATE: &str = "duo_workflow_generate_token";
pub const AGENT_PLATFORM: &str = "duo_agent_platform";
pub const CHAT: &str = "duo_chat";

/// A private key generated once per test binary (RSA generation is the slow part), by label;
/// the label's prefix is the algorithm it signs with (`es384-…`, `ps256-…`; RS256 otherwise).
pub fn key(label: &str) -> Arc<SigningKeyPem> {
    static KEYS: OnceLock<std::sync::Mutex<HashMap<String, Arc<SigningKeyPem>>>> = OnceLock::new();
    let mut keys = KEYS.get_or_init(Default::default).lock().unwrap();
    keys.entry(label.to_owned())
        .or_insert_with(|| {
            let prefix = label.split('-').next().unwrap_or_default();
            let alg = Algorithm::ALL
                .into_iter()
                .find(|a| a.jose_name().eq_ignore_ascii_case(prefix))
                .unwrap_or(Algorithm::RS256);
            let pem = generate_pem(alg).unwrap();
            let key = SigningKey::from_pem(&pem)
                .unwrap()
                .with_algorithm(alg)
                .unwrap();
            Arc::new(SigningKeyPem { pem, key })
        })
        .clone()
}

/// A private key with its PEM text.
pub struct SigningKeyPem {
    pub pem: String,
    pub key: SigningKey,
}

impl SigningKeyPem {
    pub fn new(pem: String) -> Self {
        let key = SigningKey::from_pem(&pem).unwrap();
        Self { pem, key }
    }

    /// The public JWK of this key, with its thumbprint kid.
    pub fn jwk(&self) -> serde_json::Value {
        self.key.jwk()
    }

    pub fn kid(&self) -> &str {
        self.key.kid()
    }
}

/// An instance token like GitLab's, for `issuer`, with the given scopes.
pub fn instance_token(key: &SigningKeyPem, issuer: &str, scopes: &[&str]) -> String {
    mint(&key.key, &instance_request(issuer, scopes))
}

pub fn instance_request(issuer: &str, scopes: &[&str]) -> MintRequest {
    MintRequest {
        issuer: issuer.into(),
        audience: vec![SERVICE.into()],
        subject: None,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        realm: Some("self-managed".into()),
        instance_id: Some("instance-1".into()),
        duo_seat_count: None,
        lifetime_seconds: 3600,
        with_kid: true,
    }
}

/// The Cloud Connector metadata of a request; `None` leaves a header out.
#[derive(Debug, Clone)]
pub struct Headers {
    pub authorization: Option<String>,
    pub authentication_type: Option<String>,
    pub realm: Option<String>,
    pub instance_id: Option<String>,
    pub global_user_id: Option<String>,
    pub duo_seat_count: Option<String>,
    pub request_id: Option<String>,
}

impl Headers {
    /// The headers an instance `instance-1` on a self-managed realm sends with `token`.
    pub fn bearer(token: &str) -> Self {
        Self {
            authorization: Some(format!("Bearer {token}")),
            authentication_type: Some("oidc".into()),
            realm: Some("self-managed".into()),
            instance_id: Some("instance-1".into()),
            global_user_id: Some("user-77".into()),
            duo_seat_count: None,
            request_id: None,
        }
    }

    pub fn none() -> Self {
        Self {
            authorization: None,
            authentication_type: None,
            realm: None,
            instance_id: None,
            global_user_id: None,
            duo_seat_count: None,
            request_id: None,
        }
    }

    pub fn apply(&self, md: &mut MetadataMap) {
        let pairs = [
            ("authorization", &self.authorization),
            ("x-gitlab-authentication-type", &self.authentication_type),
            ("x-gitlab-realm", &self.realm),
            ("x-gitlab-instance-id", &self.instance_id),
            ("x-gitlab-global-user-id", &self.global_user_id),
            ("x-gitlab-duo-seat-count", &self.duo_seat_count),
            ("x-request-id", &self.request_id),
        ];
        for (name, value) in pairs {
            if let Some(v) = value {
                md.insert(name, MetadataValue::try_from(v.as_str()).unwrap());
            }
        }
    }
}

pub async fn client(addr: SocketAddr) -> DuoWorkflowClient<Channel> {
    DuoWorkflowClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

pub async fn generate_token(
    addr: SocketAddr,
    headers: &Headers,
) -> Result<GenerateTokenResponse, Status> {
    generate_token_for(addr, headers, None).await
}

/// `GenerateToken` for a flow (its request's `workflowDefinition`).
pub async fn generate_token_for(
    addr: SocketAddr,
    headers: &Headers,
    workflow_definition: Option<&str>,
) -> Result<GenerateTokenResponse, Status> {
    let mut req = tonic::Request::new(GenerateTokenRequest {
        workflow_definition: workflow_definition.map(str::to_owned),
    });
    headers.apply(req.metadata_mut());
    client(addr)
        .await
        .generate_token(req)
        .await
        .map(|r| r.into_inner())
}

pub fn start_event(goal: &str) -> ClientEvent {
    ClientEvent {
        response: Some(client_event::Response::StartRequest(StartWorkflowRequest {
            goal: goal.into(),
            workflow_id: "wf-1".into(),
            ..Default::default()
        })),
    }
}

/// A start request shaped by `shape`, e.g. to choose its flow.
pub fn start_with(shape: impl FnOnce(&mut StartWorkflowRequest)) -> ClientEvent {
    let mut start = StartWorkflowRequest {
        goal: "write a poem".into(),
        workflow_id: "wf-1".into(),
        ..Default::default()
    };
    shape(&mut start);
    ClientEvent {
        response: Some(client_event::Response::StartRequest(start)),
    }
}

/// Opens `ExecuteWorkflow`, sends a start request, and collects every action until the stream
/// ends; returns the actions' request ids, or the status the stream ended with.
pub async fn execute_workflow(addr: SocketAddr, headers: &Headers) -> Result<Vec<String>, Status> {
    execute_workflow_with(addr, headers, vec![start_event("write a poem")]).await
}

/// `ExecuteWorkflow` sending `events`, then half-closing; the actions' request ids, or the
/// status the stream ended with.
pub async fn execute_workflow_with(
    addr: SocketAddr,
    headers: &Headers,
    events: Vec<ClientEvent>,
) -> Result<Vec<String>, Status> {
    let events = futures::stream::iter(events);
    let mut req = tonic::Request::new(events);
    headers.apply(req.metadata_mut());
    let mut stream = client(addr).await.execute_workflow(req).await?.into_inner();
    let mut actions = Vec::new();
    while let Some(action) = stream.message().await? {
        actions.push(action.request_id);
    }
    Ok(actions)
}

/// Calls `rpc` with a minimal request (the default flow) and waits for its whole answer.
pub async fn call(addr: SocketAddr, headers: &Headers, rpc: Rpc) -> Result<(), Status> {
    use duo_workflow_contract::*;
    fn with<T>(message: T, headers: &Headers) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        headers.apply(req.metadata_mut());
        req
    }
    let mut c = client(addr).await;
    match rpc {
        Rpc::ExecuteWorkflow => execute_workflow(addr, headers).await.map(drop),
        Rpc::GenerateToken => generate_token(addr, headers).await.map(drop),
        Rpc::ListCapabilities => c
            .list_capabilities(with(ListCapabilitiesRequest {}, headers))
            .await
            .map(drop),
        Rpc::ListTools => c
            .list_tools(with(ListToolsRequest {}, headers))
            .await
            .map(drop),
        Rpc::ListFlows => c
            .list_flows(with(ListFlowsRequest { filters: None }, headers))
            .await
            .map(drop),
        Rpc::ValidateFlowConfig => c
            .validate_flow_config(with(
                ValidateFlowConfigRequest { flow_config: None },
                headers,
            ))
            .await
            .map(drop),
        Rpc::TrackSelfHostedExecuteWorkflow => {
            let events = futures::stream::iter(vec![TrackSelfHostedClientEvent {
                request_id: "t-1".into(),
                workflow_id: "wf-1".into(),
                ..Default::default()
            }]);
            let mut acks = c
                .track_self_hosted_execute_workflow(with(events, headers))
                .await?
                .into_inner();
            while acks.message().await?.is_some() {}
            Ok(())
        }
    }
}

#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, details: &str) {
    match result {
        Ok(v) => panic!("expected {code:?} {details:?}, got success {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "details were {:?}", s.message());
            assert_eq!(s.message(), details);
        }
    }
}

/// Decodes a JWT segment without verifying (for asserting what a minted token says).
pub fn decode_segment(token: &str, index: usize) -> serde_json::Value {
    use base64::Engine;
    let seg = token.split('.').nth(index).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seg)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// A scratch directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("dws-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, contents: &str) -> std::path::PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the real service (every real adapter) on 127.0.0.1:0 (its operator listener too) from
/// a configuration file and environment variables, exactly as `serve` reads them. The GitLab.com and CustomersDot sources
/// are disabled unless `env` names them: no test touches the internet.
pub async fn start_service(
    file: Option<&std::path::Path>,
    env: &[(&str, &str)],
) -> Result<Running, duo_workflow_service::server::StartError> {
    start_service_unsetting(file, env, &[]).await
}

/// [`start_service`], with the variables named in `unset` left out of the environment (e.g.
/// `DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL`, so that `AIGW_GITLAB_URL` is read).
pub async fn start_service_unsetting(
    file: Option<&std::path::Path>,
    env: &[(&str, &str)],
    unset: &[&str],
) -> Result<Running, duo_workflow_service::server::StartError> {
    start_service_at("127.0.0.1:0".parse().unwrap(), file, env, unset).await
}

/// [`start_service`], with the executors' names resolved by `resolver`.
pub async fn start_service_resolving(
    file: Option<&std::path::Path>,
    env: &[(&str, &str)],
    resolver: Arc<dyn duo_workflow_domain::ports::NameResolver>,
) -> Result<Running, duo_workflow_service::server::StartError> {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let settings = test_settings(file, env, &[])?;
    let panics = duo_workflow_service::panics::count_in_tasks();
    let inner =
        duo_workflow_service::server::start_with_resolver(&settings, addr, addr, resolver).await?;
    Ok(Running {
        inner: Some(inner),
        panics,
    })
}

/// [`start_service_unsetting`] with both listeners on `addr` (e.g. `[::1]:0`).
pub async fn start_service_at(
    addr: SocketAddr,
    file: Option<&std::path::Path>,
    env: &[(&str, &str)],
    unset: &[&str],
) -> Result<Running, duo_workflow_service::server::StartError> {
    let settings = test_settings(file, env, unset)?;
    let panics = duo_workflow_service::panics::count_in_tasks();
    let inner = duo_workflow_service::server::start(&settings, addr, addr).await?;
    Ok(Running {
        inner: Some(inner),
        panics,
    })
}

/// The settings `serve` would read from `file` and `env` (without `unset`), with the built-in
/// providers off and the operator listener on a free port.
fn test_settings(
    file: Option<&std::path::Path>,
    env: &[(&str, &str)],
    unset: &[&str],
) -> Result<duo_workflow_service::config::Settings, duo_workflow_service::server::StartError> {
    let mut vars: HashMap<String, String> = [
        (duo_workflow_service::config::ENV_OIDC_GITLAB_URL, ""),
        (
            duo_workflow_service::config::ENV_OIDC_CUSTOMER_PORTAL_URL,
            "",
        ),
        // The operator listener on a free loopback port: tests run side by side.
        (duo_workflow_service::config::ENV_METRICS_PORT, "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    for name in unset {
        vars.remove(*name);
    }
    Ok(duo_workflow_service::config::Settings::load(file, &vars)?)
}

/// A service started in-process ([`start_service`]): the server's handle, which also fails the
/// test when a task panicked while it ran. tokio survives a task's panic, so without this check
/// a panic in the service (or in a fake beside it) would only break some call's stream.
pub struct Running {
    /// `None` once stopped.
    inner: Option<duo_workflow_service::server::Running>,
    /// Task panics in this process before the service started.
    panics: u64,
}

impl Running {
    /// Stops the server gracefully, then fails if a task panicked meanwhile.
    pub async fn stop(mut self) -> Result<(), duo_workflow_service::server::StartError> {
        let inner = self.inner.take().expect("stopped once");
        let result = inner.stop().await;
        self.check_panics();
        result
    }

    fn check_panics(&mut self) {
        let now = duo_workflow_service::panics::count_in_tasks();
        let panicked = now - std::mem::replace(&mut self.panics, now);
        assert_eq!(
            panicked, 0,
            "{panicked} task(s) panicked while the service ran (see `panicked at` above)"
        );
    }
}

impl std::ops::Deref for Running {
    type Target = duo_workflow_service::server::Running;
    fn deref(&self) -> &Self::Target {
        self.inner.as_ref().expect("not stopped")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.check_panics();
        }
    }
}

/// A configuration file with one static key source serving `keys` for `issuer`.
pub fn static_source_config(
    dir: &TempDir,
    issuer: &str,
    keys: &[&SigningKeyPem],
) -> std::path::PathBuf {
    let jwks = serde_json::json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() });
    let jwks_path = dir.write("instance.jwks", &jwks.to_string());
    dir.write(
        "config.toml",
        &format!(
            "[[key_sources]]\ntype = \"static\"\nname = \"test-gitlab\"\nissuer = \"{issuer}\"\njwks_file = \"{}\"\n",
            jwks_path.display()
        ),
    )
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// base64url without padding, decoded.
#[allow(dead_code)] // each test binary uses its own part of support
pub fn b64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

/// A compact JWS over exactly these header and payload bytes, signed by `key`: hostile tokens
/// carry a valid signature, so that their one hostile property is the only reason to refuse them.
pub fn sign_raw(key: &SigningKey, header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&signature))
}

/// Good instance-token claims for `issuer`, valid now for an hour.
pub fn good_claims(issuer: &str) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({
        "iss": issuer, "aud": SERVICE, "sub": "instance-1",
        "iat": now, "nbf": now - 5, "exp": now + 3600, "jti": "j-1",
        "scopes": [EXECUTE], "gitlab_realm": "self-managed", "gitlab_instance_id": "instance-1",
    })
}

/// GET `path` from `addr` with exactly this `Host` (raw HTTP/1.1): status, lower-cased head, body.
pub async fn get_with_host(
    addr: std::net::SocketAddr,
    path: &str,
    host: &str,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}
