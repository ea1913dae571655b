//! The command-line tools beside `serve`: `keys`, `token mint` and `client`.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use duo_workflow_adapters::jose::signing::{generate_pem, SigningKey};
use duo_workflow_adapters::jose::token;
use duo_workflow_contract::duo_workflow_client::DuoWorkflowClient;
use duo_workflow_contract::{
    action, action_response, client_event, ActionResponse, ClientEvent, GenerateTokenRequest,
    PlainTextResponse, StartWorkflowRequest,
};
use duo_workflow_domain::keys::Algorithm;
use serde_json::{json, Map, Value};
use tonic::metadata::MetadataValue;

/// What `token mint` puts in an instance-style token.
#[derive(Debug, Clone)]
pub struct MintRequest {
    pub issuer: String,
    pub audience: Vec<String>,
    /// Defaults to the instance id, as GitLab's instance tokens do.
    pub subject: Option<String>,
    pub scopes: Vec<String>,
    pub realm: Option<String>,
    pub instance_id: Option<String>,
    pub duo_seat_count: Option<String>,
    pub lifetime_seconds: u64,
    /// GitLab Rails issued kid-less tokens; `false` reproduces that.
    pub with_kid: bool,
}

/// Mints a token signed with `key` (any private key this service can load).
pub fn mint(key: &SigningKey, req: &MintRequest) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(req.issuer));
    claims.insert(
        "aud".into(),
        if req.audience.len() == 1 {
            json!(req.audience[0])
        } else {
            json!(req.audience)
        },
    );
    if let Some(sub) = req.subject.as_ref().or(req.instance_id.as_ref()) {
        claims.insert("sub".into(), json!(sub));
    }
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(now.saturating_sub(5)));
    claims.insert("exp".into(), json!(now + req.lifetime_seconds));
    claims.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
    claims.insert("scopes".into(), json!(req.scopes));
    if let Some(realm) = &req.realm {
        claims.insert("gitlab_realm".into(), json!(realm));
    }
    if let Some(instance) = &req.instance_id {
        claims.insert("gitlab_instance_id".into(), json!(instance));
    }
    if let Some(seats) = &req.duo_seat_count {
        claims.insert("duo_seat_count".into(), json!(seats));
    }
    token::sign(key, &Value::Object(claims), req.with_kid)
}

pub fn load_private_key(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    SigningKey::from_pem(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes a new private key, readable by its owner only, and returns its `kid`.
pub fn generate_key(algorithm: Algorithm, out: &Path) -> Result<String, String> {
    let pem = generate_pem(algorithm)?;
    let kid = SigningKey::from_pem(&pem)?.kid().to_owned();
    write_private(out, &pem).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(kid)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

/// The public half of a private key, as PEM or as a one-key JWKS.
pub fn public_key(key: &SigningKey, jwks: bool) -> String {
    if jwks {
        let doc = json!({"keys": [key.public_key().to_jwk(key.kid())]});
        serde_json::to_string_pretty(&doc).expect("JSON")
    } else {
        key.public_key().to_pem()
    }
}

/// The Cloud Connector headers the client sends.
#[derive(Debug, Clone, Default)]
pub struct ClientHeaders {
    pub realm: Option<String>,
    pub instance_id: Option<String>,
    pub global_user_id: Option<String>,
    pub duo_seat_count: Option<String>,
}

fn request_with<T>(
    message: T,
    token: &str,
    headers: &ClientHeaders,
) -> Result<tonic::Request<T>, String> {
    let mut req = tonic::Request::new(message);
    let md = req.metadata_mut();
    let value = |v: &str| {
        MetadataValue::try_from(v).map_err(|_| format!("{v:?} is not a valid header value"))
    };
    md.insert("authorization", value(&format!("Bearer {token}"))?);
    md.insert("x-gitlab-authentication-type", value("oidc")?);
    for (name, v) in [
        ("x-gitlab-realm", &headers.realm),
        ("x-gitlab-instance-id", &headers.instance_id),
        ("x-gitlab-global-user-id", &headers.global_user_id),
        ("x-gitlab-duo-seat-count", &headers.duo_seat_count),
    ] {
        if let Some(v) = v {
            md.insert(name, value(v)?);
        }
    }
    Ok(req)
}

/// What GitLab's Python client did: `GenerateToken` with the instance token, then
/// `ExecuteWorkflow` with the returned user token. Prints each step; `Ok` when both succeeded.
pub async fn run_client(
    url: &str,
    token: &str,
    headers: &ClientHeaders,
    goal: &str,
) -> Result<(), String> {
    let mut client = DuoWorkflowClient::connect(url.to_owned())
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    println!("GenerateToken ...");
    let response = client
        .generate_token(request_with(
            GenerateTokenRequest {
                workflow_definition: None,
            },
            token,
            headers,
        )?)
        .await
        .map_err(|s| format!("GenerateToken: {:?} {}", s.code(), s.message()))?
        .into_inner();
    println!(
        "GenerateToken: OK, user token expires at {} (unix seconds)",
        response.expires_at
    );

    println!("ExecuteWorkflow ...");
    let (tx, rx) = tokio::sync::mpsc::channel::<ClientEvent>(16);
    tx.send(ClientEvent {
        response: Some(client_event::Response::StartRequest(StartWorkflowRequest {
            client_version: env!("CARGO_PKG_VERSION").into(),
            goal: goal.into(),
            ..Default::default()
        })),
    })
    .await
    .expect("channel open");
    let mut actions = client
        .execute_workflow(request_with(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &response.token,
            headers,
        )?)
        .await
        .map_err(|s| format!("ExecuteWorkflow: {:?} {}", s.code(), s.message()))?
        .into_inner();
    loop {
        match actions.message().await {
            Ok(Some(a)) => {
                let kind = match &a.action {
                    Some(action::Action::RunCommand(_)) => "runCommand",
                    Some(action::Action::RunHttpRequest(_)) => "runHTTPRequest",
                    Some(action::Action::RunReadFile(_)) => "runReadFile",
                    Some(action::Action::RunWriteFile(_)) => "runWriteFile",
                    Some(action::Action::RunGitCommand(_)) => "runGitCommand",
                    Some(action::Action::RunEditFile(_)) => "runEditFile",
                    Some(_) => "other",
                    None => "none",
                };
                println!("ExecuteWorkflow: action {} ({kind})", a.request_id);
                // This client runs no tools: it says so, so the executor can move on.
                let reply = ClientEvent {
                    response: Some(client_event::Response::ActionResponse(ActionResponse {
                        request_id: a.request_id,
                        response_type: Some(action_response::ResponseType::PlainTextResponse(
                            PlainTextResponse {
                                response: String::new(),
                                error: "this client does not execute actions".into(),
                            },
                        )),
                    })),
                };
                let _ = tx.send(reply).await;
            }
            Ok(None) => {
                println!("ExecuteWorkflow: OK");
                return Ok(());
            }
            Err(s) => return Err(format!("ExecuteWorkflow: {:?} {}", s.code(), s.message())),
        }
    }
}
