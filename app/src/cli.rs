//! The command-line tools beside `serve`: `keys`, `token mint` and `client`.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use duo_workflow_adapters::jose::signing::{generate_pem, SigningKey};
use duo_workflow_adapters::jose::token;
use duo_workflow_contract::duo_workflow_client::DuoWorkflowClient;
use duo_workflow_contract::{
    action, action_response, client_event, Action, ActionResponse, ClientEvent,
    GenerateTokenRequest, PlainTextResponse, ScheduleNotificationResponse, StartWorkflowRequest,
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
        let doc = json!({"keys": [key.jwk()]});
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

/// `--flow-config-schema-version` when only `--flow-config-id` and `--flow-version` are given.
pub const DEFAULT_FLOW_CONFIG_SCHEMA_VERSION: &str = "v1";

/// The client's flow options, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct FlowOptions {
    pub workflow_definition: Option<String>,
    pub flow_config_id: Option<String>,
    pub flow_config_schema_version: Option<String>,
    pub flow_version: Option<String>,
}

/// The flow the client asks for (SPEC C2). Built by [`ClientFlow::from_options`], which refuses
/// what the service would refuse with `INVALID_ARGUMENT`, so the user learns before any call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFlow {
    workflow_definition: Option<String>,
    config: Option<FlowConfigRef>,
}

/// A flow of the AI catalog: `flowConfigId`, `flowConfigSchemaVersion`, `flowVersion`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FlowConfigRef {
    id: String,
    schema_version: String,
    version: String,
}

impl ClientFlow {
    pub fn from_options(options: FlowOptions) -> Result<Self, String> {
        for (option, value) in [
            ("--workflow-definition", &options.workflow_definition),
            ("--flow-config-id", &options.flow_config_id),
            (
                "--flow-config-schema-version",
                &options.flow_config_schema_version,
            ),
            ("--flow-version", &options.flow_version),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(format!("{option} must not be empty"));
            }
        }
        // GitLab's rules (SPEC C2), in the options' names.
        let config = match (options.flow_config_id, options.flow_version) {
            (Some(id), Some(version)) => Some(FlowConfigRef {
                id,
                schema_version: options
                    .flow_config_schema_version
                    .unwrap_or_else(|| DEFAULT_FLOW_CONFIG_SCHEMA_VERSION.to_owned()),
                version,
            }),
            (Some(_), None) => {
                return Err("--flow-config-id requires --flow-version to also be provided".into())
            }
            (None, Some(_)) => {
                return Err("--flow-version requires --flow-config-id to also be provided".into())
            }
            (None, None) if options.flow_config_schema_version.is_some() => {
                return Err(
                    "--flow-config-schema-version requires --flow-config-id to also be provided"
                        .into(),
                )
            }
            (None, None) => None,
        };
        Ok(Self {
            workflow_definition: options.workflow_definition,
            config,
        })
    }

    /// `GenerateToken`'s `workflowDefinition`: the flow the service authorizes for this workflow,
    /// `ID/SCHEMA_VERSION` for a catalog flow. `None`: the service's default flow.
    pub fn token_workflow_definition(&self) -> Option<String> {
        match &self.config {
            Some(config) => Some(format!("{}/{}", config.id, config.schema_version)),
            None => self.workflow_definition.clone(),
        }
    }

    /// The first message of `ExecuteWorkflow`. The client announces no capabilities: it executes
    /// no tools.
    pub fn start_request(&self, goal: &str, workflow_id: Option<&str>) -> StartWorkflowRequest {
        #[allow(deprecated)] // workflowDefinition: GitLab's clients still send it
        let mut start = StartWorkflowRequest {
            client_version: env!("CARGO_PKG_VERSION").into(),
            workflow_id: workflow_id.unwrap_or_default().into(),
            workflow_definition: self.workflow_definition.clone().unwrap_or_default(),
            goal: goal.into(),
            ..Default::default()
        };
        if let Some(config) = &self.config {
            start.flow_config_id = Some(config.id.clone());
            start.flow_config_schema_version = Some(config.schema_version.clone());
            start.flow_version = Some(config.version.clone());
        }
        start
    }
}

/// What `client` does: where, as whom, and what for. Its `Debug` leaves the token out.
#[derive(Clone)]
pub struct ClientRun {
    pub url: String,
    /// The instance token. A credential: never printed.
    pub token: String,
    pub headers: ClientHeaders,
    pub flow: ClientFlow,
    pub goal: String,
    pub workflow_id: Option<String>,
}

impl std::fmt::Debug for ClientRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRun")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("headers", &self.headers)
            .field("flow", &self.flow)
            .field("goal", &self.goal)
            .field("workflow_id", &self.workflow_id)
            .finish()
    }
}

/// Why `client` failed.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientError {
    /// No call could be made (connection, a header value); the text says why.
    Setup(String),
    /// An RPC ended with a failure status, already printed as the final status line.
    Failed,
}

/// The error text of an action the client does not execute.
pub const NOT_EXECUTED: &str = "this client does not execute actions";

/// How much of one field an action line shows.
const DETAIL_CHARS: usize = 120;
/// How many paths of `runReadFiles` an action line shows.
const DETAIL_PATHS: usize = 5;

/// One line about an action: its kind (its name in the contract), its `requestID` and its most
/// telling field, quoted and cut short. Never file contents, never more than one line.
pub fn describe_action(action: &Action) -> String {
    use action::Action as A;
    let (kind, field, value) = match &action.action {
        Some(A::RunCommand(a)) => ("runCommand", "program", quoted(&a.program)),
        Some(A::RunHttpRequest(a)) => (
            "runHTTPRequest",
            "request",
            quoted(&format!("{} {}", a.method, a.path)),
        ),
        Some(A::RunReadFile(a)) => ("runReadFile", "filepath", quoted(&a.filepath)),
        Some(A::RunWriteFile(a)) => ("runWriteFile", "filepath", quoted(&a.filepath)),
        Some(A::RunGitCommand(a)) => ("runGitCommand", "command", quoted(&a.command)),
        Some(A::RunEditFile(a)) => ("runEditFile", "filepath", quoted(&a.filepath)),
        Some(A::NewCheckpoint(a)) => ("newCheckpoint", "status", quoted(&a.status)),
        Some(A::ListDirectory(a)) => ("listDirectory", "directory", quoted(&a.directory)),
        Some(A::Grep(a)) => ("grep", "pattern", quoted(&a.pattern)),
        Some(A::FindFiles(a)) => ("findFiles", "name_pattern", quoted(&a.name_pattern)),
        Some(A::RunMcpTool(a)) => ("runMCPTool", "name", quoted(&a.name)),
        Some(A::Mkdir(a)) => ("mkdir", "directory_path", quoted(&a.directory_path)),
        Some(A::RunReadFiles(a)) => ("runReadFiles", "filepaths", quoted_list(&a.filepaths)),
        Some(A::RunShellCommand(a)) => ("runShellCommand", "command", quoted(&a.command)),
        Some(A::TrackLlmCallForSelfHosted(a)) => (
            "trackLlmCallForSelfHosted",
            "featureQualifiedName",
            quoted(&a.feature_qualified_name),
        ),
        Some(A::ScheduleNotification(a)) => ("scheduleNotification", "task_id", quoted(&a.task_id)),
        // A variant newer than this client: prost leaves the oneof empty.
        None => return format!("unknown requestID={}", quoted(&action.request_id)),
    };
    format!(
        "{kind} requestID={} {field}={value}",
        quoted(&action.request_id)
    )
}

fn quoted(text: &str) -> String {
    match text.char_indices().nth(DETAIL_CHARS) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

fn quoted_list(items: &[String]) -> String {
    let mut shown: Vec<String> = items.iter().take(DETAIL_PATHS).map(|s| quoted(s)).collect();
    if items.len() > DETAIL_PATHS {
        shown.push(format!("... {} more", items.len() - DETAIL_PATHS));
    }
    format!("[{}]", shown.join(", "))
}

/// The client's answer to an action. It executes nothing: a checkpoint needs no answer, a
/// notification is not scheduled, and every other action gets an error saying so, so that the
/// executor can move on.
pub fn reply_to(action: &Action) -> Option<ActionResponse> {
    use action_response::ResponseType;
    let response = match &action.action {
        Some(action::Action::NewCheckpoint(_)) => return None,
        Some(action::Action::ScheduleNotification(_)) => {
            ResponseType::ScheduleNotificationResponse(ScheduleNotificationResponse {
                accepted: false,
                reason: NOT_EXECUTED.into(),
                fires_at: String::new(),
            })
        }
        _ => ResponseType::PlainTextResponse(PlainTextResponse {
            response: String::new(),
            error: NOT_EXECUTED.into(),
        }),
    };
    Some(ActionResponse {
        request_id: action.request_id.clone(),
        response_type: Some(response),
    })
}

/// `what` names the token in an error; the token itself is never in one.
fn request_with<T>(
    message: T,
    (what, token): (&str, &str),
    headers: &ClientHeaders,
) -> Result<tonic::Request<T>, ClientError> {
    let mut req = tonic::Request::new(message);
    let md = req.metadata_mut();
    let mut bearer = MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| ClientError::Setup(format!("the {what} is not a valid header value")))?;
    bearer.set_sensitive(true);
    md.insert("authorization", bearer);
    md.insert(
        "x-gitlab-authentication-type",
        MetadataValue::from_static("oidc"),
    );
    for (name, v) in [
        ("x-gitlab-realm", &headers.realm),
        ("x-gitlab-instance-id", &headers.instance_id),
        ("x-gitlab-global-user-id", &headers.global_user_id),
        ("x-gitlab-duo-seat-count", &headers.duo_seat_count),
    ] {
        if let Some(v) = v {
            let value = MetadataValue::try_from(v.as_str())
                .map_err(|_| ClientError::Setup(format!("{v:?} is not a valid {name} value")))?;
            md.insert(name, value);
        }
    }
    Ok(req)
}

/// Prints an RPC's failure as its final status line.
fn failed(rpc: &str, status: &tonic::Status) -> ClientError {
    println!("{rpc}: {:?} {}", status.code(), status.message());
    ClientError::Failed
}

/// What GitLab's clients do: `GenerateToken` with the instance token for the flow, then
/// `ExecuteWorkflow` with the returned user token, answering each action. Prints each step, one
/// line per action, and each RPC's final status: `<Rpc>: OK` or `<Rpc>: <Code> <message>`.
pub async fn run_client(run: &ClientRun) -> Result<(), ClientError> {
    let mut client = DuoWorkflowClient::connect(run.url.clone())
        .await
        .map_err(|e| ClientError::Setup(format!("cannot connect to {}: {e}", run.url)))?;
    let workflow_definition = run.flow.token_workflow_definition();
    match &workflow_definition {
        Some(flow) => println!("GenerateToken (workflowDefinition {flow:?}) ..."),
        None => println!("GenerateToken ..."),
    }
    let response = client
        .generate_token(request_with(
            GenerateTokenRequest {
                workflow_definition,
            },
            ("instance token", &run.token),
            &run.headers,
        )?)
        .await
        .map_err(|s| failed("GenerateToken", &s))?
        .into_inner();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    println!(
        "GenerateToken: OK, user token expires at {} (unix seconds, in {} s)",
        response.expires_at,
        response.expires_at - now
    );
    println!(
        "GenerateToken: server capabilities: [{}]",
        response.server_capabilities.join(", ")
    );

    println!("ExecuteWorkflow ...");
    let (tx, rx) = tokio::sync::mpsc::channel::<ClientEvent>(16);
    let start = run
        .flow
        .start_request(&run.goal, run.workflow_id.as_deref());
    tx.send(ClientEvent {
        response: Some(client_event::Response::StartRequest(start)),
    })
    .await
    .expect("channel open");
    let mut actions = client
        .execute_workflow(request_with(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            ("user token", &response.token),
            &run.headers,
        )?)
        .await
        .map_err(|s| failed("ExecuteWorkflow", &s))?
        .into_inner();
    loop {
        match actions.message().await {
            Ok(Some(action)) => {
                println!("ExecuteWorkflow: action {}", describe_action(&action));
                if let Some(reply) = reply_to(&action) {
                    let event = ClientEvent {
                        response: Some(client_event::Response::ActionResponse(reply)),
                    };
                    // A closed request stream shows in the response stream's status.
                    let _ = tx.send(event).await;
                }
            }
            Ok(None) => {
                println!("ExecuteWorkflow: OK");
                return Ok(());
            }
            Err(s) => return Err(failed("ExecuteWorkflow", &s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use action::Action as A;
    use action_response::ResponseType;
    use duo_workflow_contract::{
        EditFile, FindFiles, Grep, ListDirectory, Mkdir, NewCheckpoint, ReadFile, ReadFiles,
        RunCommandAction, RunGitCommand, RunHttpRequest, RunMcpTool, RunShellCommand,
        ScheduleNotification, TrackLlmCallForSelfHosted, WriteFile,
    };

    /// One action of every variant of the contract, and the line the client prints for it.
    fn every_variant() -> Vec<(Action, &'static str)> {
        let cases = [
            (
                A::RunCommand(RunCommandAction {
                    program: "ls".into(),
                    arguments: vec!["-la".into()],
                    ..Default::default()
                }),
                r#"runCommand requestID="r1" program="ls""#,
            ),
            (
                A::RunHttpRequest(RunHttpRequest {
                    method: "GET".into(),
                    path: "/api/v4/projects/1".into(),
                    body: None,
                }),
                r#"runHTTPRequest requestID="r2" request="GET /api/v4/projects/1""#,
            ),
            (
                A::RunReadFile(ReadFile {
                    filepath: "src/main.rs".into(),
                    limit: Some(10),
                    offset: None,
                }),
                r#"runReadFile requestID="r3" filepath="src/main.rs""#,
            ),
            (
                A::RunWriteFile(WriteFile {
                    filepath: "notes.txt".into(),
                    contents: "secret contents".into(),
                }),
                r#"runWriteFile requestID="r4" filepath="notes.txt""#,
            ),
            (
                A::RunGitCommand(RunGitCommand {
                    command: "pull".into(),
                    arguments: Some("--rebase".into()),
                    repository_url: "https://gitlab.com/a/b".into(),
                }),
                r#"runGitCommand requestID="r5" command="pull""#,
            ),
            (
                A::RunEditFile(EditFile {
                    filepath: "lib.rs".into(),
                    old_string: "a".into(),
                    new_string: "b".into(),
                }),
                r#"runEditFile requestID="r6" filepath="lib.rs""#,
            ),
            (
                A::NewCheckpoint(NewCheckpoint {
                    status: "RUNNING".into(),
                    checkpoint: "{\"huge\": \"json\"}".into(),
                    ..Default::default()
                }),
                r#"newCheckpoint requestID="r7" status="RUNNING""#,
            ),
            (
                A::ListDirectory(ListDirectory {
                    directory: "src".into(),
                }),
                r#"listDirectory requestID="r8" directory="src""#,
            ),
            (
                A::Grep(Grep {
                    search_directory: ".".into(),
                    pattern: "fn main".into(),
                    case_insensitive: true,
                }),
                r#"grep requestID="r9" pattern="fn main""#,
            ),
            (
                A::FindFiles(FindFiles {
                    name_pattern: "*.rs".into(),
                }),
                r#"findFiles requestID="r10" name_pattern="*.rs""#,
            ),
            (
                A::RunMcpTool(RunMcpTool {
                    name: "search_issues".into(),
                    args: "{}".into(),
                }),
                r#"runMCPTool requestID="r11" name="search_issues""#,
            ),
            (
                A::Mkdir(Mkdir {
                    directory_path: "build/out".into(),
                }),
                r#"mkdir requestID="r12" directory_path="build/out""#,
            ),
            (
                A::RunReadFiles(ReadFiles {
                    filepaths: vec!["a.rs".into(), "b.rs".into()],
                }),
                r#"runReadFiles requestID="r13" filepaths=["a.rs", "b.rs"]"#,
            ),
            (
                A::RunShellCommand(RunShellCommand {
                    command: "cargo test".into(),
                    timeout: Some(60),
                }),
                r#"runShellCommand requestID="r14" command="cargo test""#,
            ),
            (
                A::TrackLlmCallForSelfHosted(TrackLlmCallForSelfHosted {
                    workflow_id: "wf-1".into(),
                    feature_qualified_name: "duo_agent_platform/chat".into(),
                    feature_ai_catalog_item: false,
                }),
                r#"trackLlmCallForSelfHosted requestID="r15" featureQualifiedName="duo_agent_platform/chat""#,
            ),
            (
                A::ScheduleNotification(ScheduleNotification {
                    task_id: "task-1".into(),
                    condition: "pipeline done".into(),
                    message: "look".into(),
                }),
                r#"scheduleNotification requestID="r16" task_id="task-1""#,
            ),
        ];
        cases
            .into_iter()
            .enumerate()
            .map(|(i, (variant, line))| {
                let action = Action {
                    request_id: format!("r{}", i + 1),
                    action: Some(variant),
                };
                (action, line)
            })
            .collect()
    }

    #[test]
    fn every_action_variant_is_named_with_its_request_id_and_most_telling_field() {
        let cases = every_variant();
        assert_eq!(cases.len(), 16, "C1 has sixteen action variants");
        for (action, line) in cases {
            assert_eq!(describe_action(&action), line);
        }
        let unknown = Action {
            request_id: "r17".into(),
            action: None,
        };
        assert_eq!(describe_action(&unknown), r#"unknown requestID="r17""#);
    }

    #[test]
    fn an_action_line_is_one_line_cut_short_and_never_shows_contents() {
        let shell = Action {
            request_id: "id\nwith newline".into(),
            action: Some(A::RunShellCommand(RunShellCommand {
                command: format!("echo é{}\nrm -rf /", "x".repeat(300)),
                timeout: None,
            })),
        };
        let line = describe_action(&shell);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.starts_with(r#"runShellCommand requestID="id\nwith newline" command="echo é"#));
        assert!(line.ends_with("...") && line.len() < 200, "{line}");

        let many = Action {
            request_id: "r".into(),
            action: Some(A::RunReadFiles(ReadFiles {
                filepaths: (0..8).map(|i| format!("f{i}")).collect(),
            })),
        };
        assert_eq!(
            describe_action(&many),
            r#"runReadFiles requestID="r" filepaths=["f0", "f1", "f2", "f3", "f4", ... 3 more]"#
        );
        for (action, _) in every_variant() {
            assert!(!describe_action(&action).contains("secret contents"));
        }
    }

    #[test]
    fn every_action_but_a_checkpoint_is_answered_with_what_the_client_did_not_do() {
        for (action, _) in every_variant() {
            let reply = reply_to(&action);
            match &action.action {
                Some(A::NewCheckpoint(_)) => assert_eq!(reply, None),
                Some(A::ScheduleNotification(_)) => assert_eq!(
                    reply.unwrap().response_type,
                    Some(ResponseType::ScheduleNotificationResponse(
                        ScheduleNotificationResponse {
                            accepted: false,
                            reason: NOT_EXECUTED.into(),
                            fires_at: String::new(),
                        }
                    ))
                ),
                _ => {
                    let reply = reply.unwrap();
                    assert_eq!(reply.request_id, action.request_id);
                    assert_eq!(
                        reply.response_type,
                        Some(ResponseType::PlainTextResponse(PlainTextResponse {
                            response: String::new(),
                            error: NOT_EXECUTED.into(),
                        }))
                    );
                }
            }
        }
        let unknown = Action {
            request_id: "r17".into(),
            action: None,
        };
        assert!(matches!(
            reply_to(&unknown).unwrap().response_type,
            Some(ResponseType::PlainTextResponse(_))
        ));
    }

    #[test]
    fn a_run_debugs_without_its_token() {
        let run = ClientRun {
            url: "http://127.0.0.1:50052".into(),
            token: "eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl".into(),
            headers: ClientHeaders::default(),
            flow: ClientFlow::default(),
            goal: "g".into(),
            workflow_id: None,
        };
        let debug = format!("{run:?}");
        assert!(
            !debug.contains("c2lnbmF0dXJl") && debug.contains("<redacted>"),
            "{debug}"
        );
    }

    fn flow(options: &[(&str, &str)]) -> Result<ClientFlow, String> {
        let get = |name: &str| {
            options
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        };
        ClientFlow::from_options(FlowOptions {
            workflow_definition: get("workflow-definition"),
            flow_config_id: get("flow-config-id"),
            flow_config_schema_version: get("flow-config-schema-version"),
            flow_version: get("flow-version"),
        })
    }

    #[test]
    #[allow(deprecated)]
    fn a_catalog_flow_is_authorized_as_id_and_schema_version_and_started_with_all_three() {
        let catalog = flow(&[
            ("flow-config-id", "fix_pipeline"),
            ("flow-version", "1.2.0"),
        ])
        .unwrap();
        assert_eq!(
            catalog.token_workflow_definition().as_deref(),
            Some("fix_pipeline/v1")
        );
        let start = catalog.start_request("fix it", Some("wf-9"));
        assert_eq!(start.flow_config_id.as_deref(), Some("fix_pipeline"));
        assert_eq!(start.flow_config_schema_version.as_deref(), Some("v1"));
        assert_eq!(start.flow_version.as_deref(), Some("1.2.0"));
        assert_eq!(start.workflow_definition, "");
        assert_eq!(start.flow_config, None);
        assert_eq!(
            (start.goal.as_str(), start.workflow_id.as_str()),
            ("fix it", "wf-9")
        );
        assert_eq!(start.client_version, env!("CARGO_PKG_VERSION"));

        let both = flow(&[
            ("workflow-definition", "chat"),
            ("flow-config-id", "fix_pipeline"),
            ("flow-config-schema-version", "v2"),
            ("flow-version", "1.2.0"),
        ])
        .unwrap();
        assert_eq!(
            both.token_workflow_definition().as_deref(),
            Some("fix_pipeline/v2")
        );
        let start = both.start_request("g", None);
        assert_eq!(start.workflow_definition, "chat");
        assert_eq!(start.flow_config_schema_version.as_deref(), Some("v2"));
        assert_eq!(start.workflow_id, "");
    }

    #[test]
    #[allow(deprecated)]
    fn a_named_flow_or_none_at_all() {
        let chat = flow(&[("workflow-definition", "chat")]).unwrap();
        assert_eq!(chat.token_workflow_definition().as_deref(), Some("chat"));
        let start = chat.start_request("g", None);
        assert_eq!(start.workflow_definition, "chat");
        assert_eq!(
            (
                start.flow_config_id,
                start.flow_config_schema_version,
                start.flow_version
            ),
            (None, None, None)
        );

        let default = flow(&[]).unwrap();
        assert_eq!(default.token_workflow_definition(), None);
        assert_eq!(default.start_request("g", None).workflow_definition, "");
    }

    #[test]
    fn contradictory_flow_options_are_refused_as_the_service_would() {
        for (options, message) in [
            (
                &[("flow-version", "1.0.0")][..],
                "--flow-version requires --flow-config-id to also be provided",
            ),
            (
                &[("flow-config-id", "x")][..],
                "--flow-config-id requires --flow-version to also be provided",
            ),
            (
                &[("flow-config-schema-version", "v1")][..],
                "--flow-config-schema-version requires --flow-config-id to also be provided",
            ),
            (
                &[("flow-config-id", " "), ("flow-version", "1")][..],
                "--flow-config-id must not be empty",
            ),
            (
                &[("flow-config-id", "x"), ("flow-version", "")][..],
                "--flow-version must not be empty",
            ),
            (
                &[("workflow-definition", "")][..],
                "--workflow-definition must not be empty",
            ),
        ] {
            assert_eq!(flow(options), Err(message.to_owned()), "{options:?}");
        }
    }
}
