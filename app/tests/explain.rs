//! `token explain` beside the server it explains: one configuration (a Keycloak-shaped source),
//! the same verdicts, and refusal reasons equal to the server's log lines; the binary reads the
//! token from standard input or its argument and prints neither the token nor a key.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use duo_workflow_adapters::jose::signing::{generate_pem, SigningKey};
use duo_workflow_adapters::jose::token;
use duo_workflow_contract::duo_workflow_client::DuoWorkflowClient;
use duo_workflow_contract::{
    client_event, ClientEvent, GenerateTokenRequest, StartWorkflowRequest,
};
use duo_workflow_domain::keys::Algorithm;
use duo_workflow_service::config::Settings;
use serde_json::{json, Value};
use tonic::metadata::MetadataValue;

const BIN: &str = env!("CARGO_BIN_EXE_duo-workflow-service");
const ISSUER: &str = "https://kc.example.com/realms/acme";
const INSTANCE: &str = "gitlab-instance-7";

/// Log lines of this test binary, as JSON objects (the server runs in-process).
fn log_lines() -> Arc<Mutex<Vec<u8>>> {
    static LINES: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LINES
        .get_or_init(|| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let writer = Capture(lines.clone());
            let _ = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_env_filter("info")
                .with_writer(move || writer.clone())
                .try_init();
            lines
        })
        .clone()
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Fixture {
    dir: std::path::PathBuf,
    config: std::path::PathBuf,
    key: SigningKey,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Keycloak-shaped source trusting a PS256 key.
fn fixture() -> Fixture {
    let dir = std::env::temp_dir().join(format!("dws-explain-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = SigningKey::from_pem(&generate_pem(Algorithm::PS256).unwrap())
        .unwrap()
        .with_algorithm(Algorithm::PS256)
        .unwrap();
    let jwks = dir.join("keycloak.jwks");
    std::fs::write(&jwks, json!({"keys": [key.jwk()]}).to_string()).unwrap();
    let config = dir.join("keycloak.toml");
    std::fs::write(
        &config,
        format!(
            r#"[[key_sources]]
type = "static"
name = "keycloak"
issuer = "{ISSUER}"
jwks_file = "{}"
algorithms = ["RS256", "PS256"]
{}"#,
            jwks.display(),
            include_str!("../../tests/fixtures/keycloak_claims.toml")
        ),
    )
    .unwrap();
    Fixture { dir, config, key }
}

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL", ""),
        ("DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL", ""),
        ("PROMETHEUS_METRICS__PORT", "0"),
    ]
}

fn settings(f: &Fixture) -> Settings {
    let env = env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Settings::load(Some(&f.config), &env).unwrap()
}

fn keycloak_token(key: &SigningKey, iss: &str, scope: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": iss, "aud": ["dws", "account"], "azp": INSTANCE, "sub": "4f1e-service-account",
        "scope": scope, "iat": now, "exp": now + 300, "typ": "Bearer",
    });
    token::sign(key, &claims, true)
}

fn request<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    let md = req.metadata_mut();
    md.insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    md.insert(
        "x-gitlab-authentication-type",
        MetadataValue::from_static("oidc"),
    );
    md.insert("x-gitlab-instance-id", MetadataValue::from_static(INSTANCE));
    md.insert("x-gitlab-global-user-id", MetadataValue::from_static("42"));
    req
}

/// The `reason` of the server's log line refusing a call of `request_id`.
fn logged_reason(request_id: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&log_lines().lock().unwrap()).into_owned();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| {
                l["message"] == "request refused"
                    && l.to_string()
                        .contains(&format!("\"request_id\":\"{request_id}\""))
            });
        if let Some(line) = found {
            return line["reason"].as_str().unwrap().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal logged for {request_id}: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The reason `token explain` says the server logs for `call`.
fn explained_reason(report: &str, call: &str) -> String {
    let mut lines = report.lines();
    lines
        .find(|l| l.trim_start().starts_with(&format!("{call}:")))
        .unwrap_or_else(|| panic!("no answer for {call}: {report}"));
    let logged = lines.next().unwrap();
    let reason = logged.split(" reason=").nth(1).unwrap();
    serde_json::from_str(reason).unwrap()
}

fn with_id<T>(mut req: tonic::Request<T>, id: &str) -> tonic::Request<T> {
    req.metadata_mut()
        .insert("x-request-id", MetadataValue::try_from(id).unwrap());
    req
}

#[tokio::test]
async fn explain_and_the_server_give_the_same_verdicts_and_reasons() {
    log_lines();
    let f = fixture();
    let settings = settings(&f);
    let running = duo_workflow_service::server::start(
        &settings,
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let mut client = DuoWorkflowClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap();

    // Good: the server mints a user token with exactly the scopes explain announces.
    let good = keycloak_token(&f.key, ISSUER, "openid dws:run");
    let minted = client
        .generate_token(request(GenerateTokenRequest::default(), &good))
        .await
        .unwrap()
        .into_inner();
    let payload = minted.token.split('.').nth(1).unwrap();
    let payload: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    let report = duo_workflow_service::explain::explain(&settings, &good, "software_development")
        .await
        .unwrap();
    assert!(
        report.contains("verdict: authenticated by key source keycloak"),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "x-gitlab-instance-id: \"{INSTANCE}\" (from claim azp)"
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "GenerateToken: OK, a user token (iss and aud gitlab-duo-workflow-service) with scopes {}",
            serde_json::to_string(&payload["scopes"]).unwrap().replace(',', ", ")
        )),
        "{report}\n{payload}"
    );

    // No unit primitive: the same refusal, and the reason names the claims and provider scopes.
    let none = keycloak_token(&f.key, ISSUER, "openid profile");
    let start = ClientEvent {
        response: Some(client_event::Response::StartRequest(
            StartWorkflowRequest::default(),
        )),
    };
    let refused = client
        .execute_workflow(with_id(
            request(futures::stream::iter(vec![start]), &none),
            "explain-no-scope",
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let report = duo_workflow_service::explain::explain(&settings, &none, "software_development")
        .await
        .unwrap();
    let reason = explained_reason(&report, "ExecuteWorkflow");
    assert_eq!(reason, logged_reason("explain-no-scope"));
    assert!(
        reason.contains("claims looked at: scope; provider scopes in scope: [openid, profile]"),
        "{reason}"
    );

    // The issuer with a slash it is not configured with: refused by the server for the reason
    // explain gives, and explain names the issuer the source serves.
    let slash = keycloak_token(&f.key, &format!("{ISSUER}/"), "dws:run");
    let refused = client
        .generate_token(with_id(
            request(GenerateTokenRequest::default(), &slash),
            "explain-slash",
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.message(), "Forbidden by auth provider");
    let report = duo_workflow_service::explain::explain(&settings, &slash, "chat")
        .await
        .unwrap();
    assert_eq!(
        explained_reason(&report, "every call"),
        logged_reason("explain-slash")
    );
    assert!(
        report.contains("a trailing slash is part of an issuer"),
        "{report}"
    );
    assert!(
        report.contains("logged as refusal=issuer_unknown"),
        "{report}"
    );
    running.stop().await.unwrap();
}

#[test]
fn the_binary_reads_the_token_from_stdin_or_its_argument_and_prints_no_secret() {
    let f = fixture();
    let good = keycloak_token(&f.key, ISSUER, "dws:chat");
    let jwk = f.key.jwk();
    for from_stdin in [true, false] {
        let mut cmd = Command::new(BIN);
        cmd.args(["token", "explain", "--config"])
            .arg(&f.config)
            .args(["--flow", "chat"])
            .envs(env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !from_stdin {
            cmd.arg(&good);
        }
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if from_stdin {
            stdin.write_all(format!("{good}\n").as_bytes()).unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(
            stdout.contains("verdict: authenticated by key source keycloak"),
            "{stdout}"
        );
        assert!(stdout.contains("GenerateToken: OK"), "{stdout}");
        // Neither the token (nor any of its segments) nor the key, anywhere.
        for secret in good.split('.').chain([jwk["n"].as_str().unwrap()]) {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "{stdout}{stderr}"
            );
        }
    }
    let out = Command::new(BIN)
        .args(["token", "explain", "--config"])
        .arg(&f.config)
        .envs(env())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token on standard input"));
}
