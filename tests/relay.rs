//! The relay end to end (SPEC C4), with every real adapter between a byte-level client and a
//! byte-level executor (`support::raw`): what goes in on one side comes out on the other,
//! byte for byte, including every message variant of the 2026 contract and fields no version of
//! it has; the executor's headers, trailers, status and details come back; cancellation and
//! deadlines reach the executor; messages over 4 MiB are refused each way; the caller's sending
//! is held back when the executor does not read.
// `workflowDefinition` is deprecated in GitLab's contract, and still what most clients send.
#![allow(deprecated)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use duo_workflow_contract::*;
use duo_workflow_service::config::{
    ENV_UPSTREAM_CA_FILE, ENV_UPSTREAM_SERVER_CAPABILITIES, ENV_UPSTREAM_URL,
};
use hyper::body::Frame;
use prost::Message;
use support::raw::{self, RawExecutor};
use support::Running;
use support::{instance_token, key, start_service, static_source_config, TempDir, AGENT_PLATFORM};
use tonic::Code;

const GITLAB: &str = "https://gitlab.test";
const MIB4: usize = 4 * 1024 * 1024;

/// The service in front of `executor`, trusting the test instance key; and the metadata of a
/// caller with `scopes`.
async fn service_before(
    executor: &RawExecutor,
    scopes: &[&str],
    extra_env: &[(&str, &str)],
) -> (Running, Vec<(String, String)>, TempDir) {
    let dir = TempDir::new();
    let instance = key("rs256-instance");
    let config = static_source_config(&dir, GITLAB, &[&instance]);
    let upstream = format!("http://{}", executor.addr);
    // Capabilities configured (as none), so that the executor sees only the calls relayed.
    let mut env = vec![
        (ENV_UPSTREAM_URL, upstream.as_str()),
        (ENV_UPSTREAM_SERVER_CAPABILITIES, ""),
    ];
    env.extend_from_slice(extra_env);
    let service = start_service(Some(&config), &env).await.unwrap();
    let token = instance_token(&instance, GITLAB, scopes);
    let headers = vec![
        ("authorization".into(), format!("Bearer {token}")),
        ("x-gitlab-authentication-type".into(), "oidc".into()),
        ("x-gitlab-realm".into(), "self-managed".into()),
        ("x-gitlab-instance-id".into(), "instance-1".into()),
        ("x-gitlab-global-user-id".into(), "user-77".into()),
    ];
    (service, headers, dir)
}

fn pairs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Protobuf's encoding of a length-delimited field.
fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// `message`'s encoding with an extra field no version of the contract has.
fn with_unknown(message: &impl Message, number: u32) -> Vec<u8> {
    let mut bytes = message.encode_to_vec();
    bytes.extend(field(number, b"a field from the future"));
    bytes
}

fn start_request() -> StartWorkflowRequest {
    StartWorkflowRequest {
        client_version: "8.0.0".into(),
        workflow_id: "wf-1".into(),
        workflow_definition: "software_development".into(),
        goal: "fix the pipeline".into(),
        workflow_metadata: r#"{"git":{"branch":"main"}}"#.into(),
        client_capabilities: vec!["shell_command".into()],
        mcp_tools: vec![McpTool {
            name: "search".into(),
            description: "search the web".into(),
            input_schema: "{}".into(),
            icons: Some(Icons {
                items: vec![Icon {
                    url: "https://x/i.png".into(),
                    mime_type: Some("image/png".into()),
                    sizes: vec!["32x32".into()],
                    theme: Some("dark".into()),
                }],
            }),
            annotations: Some(ToolAnnotations {
                title: Some("Search".into()),
                read_only_hint: Some(true),
                destructive_hint: Some(false),
                idempotent_hint: Some(true),
                open_world_hint: Some(true),
            }),
            trusted: Some(false),
        }],
        additional_context: vec![AdditionalContext {
            category: "file".into(),
            id: Some("f-1".into()),
            content: Some("fn main() {}".into()),
            metadata: Some("{}".into()),
        }],
        approval: Some(Approval {
            user_decision: Some(approval::UserDecision::Approval(approval::Approved {
                remember_approval: Some(true),
                tool_name: Some("run_command".into()),
                tool_args_json: Some("{}".into()),
                approval_source: Some(approval::ApprovalSource::PretooluseHook as i32),
                policy_ref: Some(approval::PolicyRef {
                    origin: Some("gitlab_default".into()),
                    file: None,
                    hash: Some("sha256:00".into()),
                    version: Some("1".into()),
                }),
            })),
        }),
        flow_config: None,
        flow_config_schema_version: None,
        preapproved_tools: vec!["read_file".into()],
        flow_config_id: None,
        flow_version: None,
        streaming: Some(true),
        resume_checkpoint_ts: Some("2026-01-01T00:00:00Z".into()),
    }
}

/// Every `ClientEvent` of the 2026 contract, and fields and variants from after it.
fn client_events() -> Vec<Vec<u8>> {
    use client_event::Response as R;
    let event = |r: R| ClientEvent { response: Some(r) }.encode_to_vec();
    let response = |t: action_response::ResponseType| ActionResponse {
        request_id: "a-1".into(),
        response_type: Some(t),
    };
    let mut headers = std::collections::HashMap::new();
    headers.insert("content-type".to_owned(), "text/plain".to_owned());
    vec![
        // The first message, which the service reads for its flow: a start request carrying
        // GitLab's catalog_items (field 18, unknown to this contract).
        field(1, &with_unknown(&start_request(), 18)),
        event(R::ActionResponse(response(
            action_response::ResponseType::PlainTextResponse(PlainTextResponse {
                response: "ok".into(),
                error: String::new(),
            }),
        ))),
        event(R::ActionResponse(response(
            action_response::ResponseType::HttpResponse(HttpResponse {
                headers,
                status_code: 200,
                body: "{}".into(),
                error: String::new(),
            }),
        ))),
        event(R::ActionResponse(response(
            action_response::ResponseType::ScheduleNotificationResponse(
                ScheduleNotificationResponse {
                    accepted: true,
                    reason: String::new(),
                    fires_at: "2026-01-01T10:00:00Z".into(),
                },
            ),
        ))),
        // An ActionResponse carrying GitLab's imageResponse (field 6, unknown here).
        field(
            2,
            &with_unknown(
                &ActionResponse {
                    request_id: "a-2".into(),
                    response_type: None,
                },
                6,
            ),
        ),
        event(R::Heartbeat(HeartbeatRequest {
            timestamp: 1_800_000_000_000,
        })),
        event(R::StopWorkflow(StopWorkflowRequest {
            reason: "user asked".into(),
        })),
        // A ClientEvent variant from the future.
        field(9, b"\x08\x01"),
    ]
}

/// Every `Action` of the 2026 contract, and fields and variants from after it.
fn actions() -> Vec<Vec<u8>> {
    use action::Action as A;
    let mut usage = std::collections::HashMap::new();
    usage.insert(
        "planner".to_owned(),
        TokenBreakdown {
            total_tokens: 10,
            max_tokens: 100,
        },
    );
    let variants = vec![
        A::RunCommand(RunCommandAction {
            program: "ls".into(),
            arguments: vec!["-la".into()],
            flags: vec!["--color=never".into()],
            timeout: Some(5000),
        }),
        A::RunHttpRequest(RunHttpRequest {
            method: "GET".into(),
            path: "/api/v4/projects".into(),
            body: Some(String::new()),
        }),
        A::RunReadFile(ReadFile {
            filepath: "README.md".into(),
            limit: Some(10),
            offset: Some(2),
        }),
        A::RunWriteFile(WriteFile {
            filepath: "a.txt".into(),
            contents: "hello".into(),
        }),
        A::RunGitCommand(RunGitCommand {
            command: "status".into(),
            arguments: Some("-s".into()),
            repository_url: "https://gitlab.test/a/b.git".into(),
        }),
        A::RunEditFile(EditFile {
            filepath: "a.txt".into(),
            old_string: "hello".into(),
            new_string: "bye".into(),
        }),
        A::NewCheckpoint(NewCheckpoint {
            status: "running".into(),
            checkpoint: r#"{"v":1}"#.into(),
            goal: "fix the pipeline".into(),
            errors: vec!["none".into()],
            agent_context_usage: usage,
        }),
        A::ListDirectory(ListDirectory {
            directory: "src".into(),
        }),
        A::Grep(Grep {
            search_directory: "src".into(),
            pattern: "fn main".into(),
            case_insensitive: true,
        }),
        A::FindFiles(FindFiles {
            name_pattern: "*.rs".into(),
        }),
        A::RunMcpTool(RunMcpTool {
            name: "search".into(),
            args: "{}".into(),
        }),
        A::Mkdir(Mkdir {
            directory_path: "out".into(),
        }),
        A::RunReadFiles(ReadFiles {
            filepaths: vec!["a".into(), "b".into()],
        }),
        A::RunShellCommand(RunShellCommand {
            command: "cargo test".into(),
            timeout: Some(60_000),
        }),
        A::TrackLlmCallForSelfHosted(TrackLlmCallForSelfHosted {
            workflow_id: "wf-1".into(),
            feature_qualified_name: "duo_agent_platform".into(),
            feature_ai_catalog_item: true,
        }),
        A::ScheduleNotification(ScheduleNotification {
            task_id: "t-1".into(),
            condition: r#"{"type":"timer"}"#.into(),
            message: "wake up".into(),
        }),
    ];
    let mut out: Vec<Vec<u8>> = variants
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            Action {
                request_id: format!("r-{i}"),
                action: Some(a),
            }
            .encode_to_vec()
        })
        .collect();
    out.push(with_unknown(
        &Action {
            request_id: "r-unknown-field".into(),
            action: None,
        },
        18,
    ));
    out.push(field(19, b"an action from the future"));
    out
}

fn wire(messages: &[Vec<u8>]) -> Bytes {
    let mut b = BytesMut::new();
    for m in messages {
        b.extend_from_slice(&raw::framed(m));
    }
    b.freeze()
}

type Record<T> = Arc<Mutex<Option<T>>>;

#[tokio::test]
async fn every_message_and_every_unknown_field_crosses_byte_for_byte_both_ways() {
    let received: Record<(http::HeaderMap, Bytes)> = Arc::default();
    let answer = wire(&actions());
    let executor = {
        let (received, answer) = (received.clone(), answer.clone());
        RawExecutor::start(move |req| {
            let (received, answer) = (received.clone(), answer.clone());
            async move {
                let (head, body) = req.into_parts();
                let bytes = raw::read_all(body).await.unwrap();
                *received.lock().unwrap() = Some((head.headers, bytes));
                let status_details = b"\x08\x00\x12\x02ok";
                raw::response(
                    &[("x-executor-header", "from-the-executor")],
                    raw::frames_body(vec![
                        Frame::data(answer.slice(..7)), // frames need not follow messages
                        Frame::data(answer.slice(7..)),
                        Frame::trailers(raw::trailers(&[
                            ("grpc-status", b"0"),
                            ("x-executor-trailer", b"t"),
                            ("grpc-status-details-bin", &base64_std(status_details)),
                        ])),
                    ]),
                )
            }
        })
        .await
    };
    let (service, headers, _dir) = service_before(&executor, &[AGENT_PLATFORM], &[]).await;
    let sent = wire(&client_events());
    let mut h = pairs(&headers);
    h.push(("x-custom", "custom value"));
    h.push(("x-custom-bin", "AAECAw=="));
    h.push(("x-request-id", "req-9"));
    let response = raw::call(
        service.addr,
        raw::request(
            "/DuoWorkflow/ExecuteWorkflow",
            &h,
            raw::frames_body(vec![
                Frame::data(sent.slice(..3)),
                Frame::data(sent.slice(3..)),
            ]),
        ),
    )
    .await;
    assert_eq!(response.grpc_status(), Some("0"), "{response:?}");
    assert_eq!(
        response.body, answer,
        "the actions came back as the executor sent them"
    );
    assert_eq!(response.headers["x-executor-header"], "from-the-executor");
    let trailers = response.trailers.as_ref().unwrap();
    assert_eq!(trailers["x-executor-trailer"], "t");
    assert_eq!(
        trailers["grpc-status-details-bin"].as_bytes(),
        base64_std(b"\x08\x00\x12\x02ok").as_slice()
    );

    let (seen_headers, seen) = received.lock().unwrap().clone().unwrap();
    assert_eq!(
        seen, sent,
        "the client events reached the executor as they were sent"
    );
    for (name, value) in &h {
        assert_eq!(seen_headers[*name], *value, "{name}");
    }
    assert_eq!(seen_headers["content-type"], "application/grpc");
}

fn base64_std(bytes: &[u8]) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(bytes)
        .into_bytes()
}

#[tokio::test]
async fn statuses_details_and_trailing_metadata_come_back_from_every_kind_of_rpc() {
    let details = Bytes::from_static(b"\x08\x09\x12\x08no tools");
    let executor = {
        let details = details.clone();
        RawExecutor::start(move |req| {
            let details = details.clone();
            async move {
                let path = req.uri().path().to_owned();
                let _ = raw::read_all(req.into_body()).await;
                let status: &[(&str, &[u8])] = &[
                    ("grpc-status", b"9"),
                    ("grpc-message", b"no%20tools%20today"),
                    ("grpc-status-details-bin", &base64_std(&details)),
                    ("x-why", path.as_bytes()),
                ];
                if path.ends_with("ListTools") {
                    // Trailers-only: the status in the response headers, no body.
                    let mut r = raw::response(&[], raw::frames_body(vec![]));
                    r.headers_mut().extend(raw::trailers(status));
                    r
                } else {
                    let action = Action {
                        request_id: "1".into(),
                        action: None,
                    };
                    raw::response(
                        &[],
                        raw::frames_body(vec![
                            Frame::data(raw::framed(&action.encode_to_vec())),
                            Frame::trailers(raw::trailers(status)),
                        ]),
                    )
                }
            }
        })
        .await
    };
    let (service, headers, _dir) = service_before(&executor, &[AGENT_PLATFORM], &[]).await;
    // A trailers-only answer stays one: the stream ends with the headers, no data frame follows
    // (gRPC clients other than tonic's lose the status otherwise).
    let r = send_messages(
        &service,
        &headers,
        "/DuoWorkflow/ListTools",
        vec![raw::framed(b"")],
    )
    .await;
    assert_eq!(r.grpc_status(), Some("9"));
    assert!(r.ended_with_headers, "{r:?}");
    assert_eq!(r.data_frames, 0);
    assert!(r.trailers.is_none());

    let mut client = support::client(service.addr).await;
    let mut req = tonic::Request::new(ListToolsRequest {});
    apply(&headers, req.metadata_mut());
    let status = client.list_tools(req).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "no tools today");
    assert_eq!(status.details(), &details[..]);
    assert_eq!(
        status.metadata().get("x-why").unwrap(),
        "/DuoWorkflow/ListTools"
    );

    let mut req = tonic::Request::new(futures::stream::iter(vec![support::start_event("go")]));
    apply(&headers, req.metadata_mut());
    let mut stream = client.execute_workflow(req).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().request_id, "1");
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "no tools today");
    assert_eq!(status.details(), &details[..]);
    assert_eq!(
        status.metadata().get("x-why").unwrap(),
        "/DuoWorkflow/ExecuteWorkflow"
    );
}

fn apply(headers: &[(String, String)], md: &mut tonic::metadata::MetadataMap) {
    for (k, v) in headers {
        md.insert(
            tonic::metadata::MetadataKey::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
}

/// An executor that answers each stream with its headers and then holds it open, telling the
/// test (through `closed`) when the service lets go of the stream (cancels it).
async fn holding_executor(
    seen_timeout: Record<Option<String>>,
    closed: tokio::sync::mpsc::UnboundedSender<Instant>,
) -> RawExecutor {
    RawExecutor::start(move |req| {
        let (seen_timeout, closed) = (seen_timeout.clone(), closed.clone());
        async move {
            *seen_timeout.lock().unwrap() = Some(
                req.headers()
                    .get("grpc-timeout")
                    .map(|v| v.to_str().unwrap().to_owned()),
            );
            let (tx, body) = raw::channel_body(1);
            let action = Action {
                request_id: "first".into(),
                action: None,
            };
            tx.send(Ok(Frame::data(raw::framed(&action.encode_to_vec()))))
                .await
                .unwrap();
            tokio::spawn(async move {
                tx.closed().await;
                let _ = closed.send(Instant::now());
            });
            raw::response(&[], body)
        }
    })
    .await
}

#[tokio::test]
async fn a_caller_that_cancels_cancels_the_executors_stream() {
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let executor = holding_executor(Arc::default(), closed_tx).await;
    let (service, headers, _dir) = service_before(&executor, &[AGENT_PLATFORM], &[]).await;
    let (events, rx) = tokio::sync::mpsc::channel(4);
    events.send(support::start_event("go")).await.unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    apply(&headers, req.metadata_mut());
    let mut stream = support::client(service.addr)
        .await
        .execute_workflow(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().request_id, "first");
    let cancelled_at = Instant::now();
    drop(stream);
    drop(events);
    let seen = tokio::time::timeout(Duration::from_secs(5), closed.recv())
        .await
        .expect("the executor's stream was never cancelled")
        .unwrap();
    println!(
        "cancellation reached the executor in {:?}",
        seen.duration_since(cancelled_at)
    );
}

#[tokio::test]
async fn the_callers_deadline_reaches_the_executor_and_is_enforced() {
    let seen_timeout: Record<Option<String>> = Arc::default();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let executor = holding_executor(seen_timeout.clone(), closed_tx).await;
    let (service, headers, _dir) = service_before(&executor, &[AGENT_PLATFORM], &[]).await;
    // A raw client that sends `grpc-timeout` and enforces nothing itself: the service must.
    let mut h = pairs(&headers);
    h.push(("grpc-timeout", "400m"));
    let (events, body) = raw::channel_body(4);
    events
        .send(Ok(Frame::data(raw::framed(
            &support::start_event("go").encode_to_vec(),
        ))))
        .await
        .unwrap();
    let started = Instant::now();
    let response = raw::call(
        service.addr,
        raw::request("/DuoWorkflow/ExecuteWorkflow", &h, body),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(response.grpc_status(), Some("4"), "{response:?}");
    assert_eq!(
        response.grpc_message().as_deref(),
        Some("Deadline Exceeded")
    );
    assert!(took >= Duration::from_millis(390), "ended after {took:?}");
    let forwarded = seen_timeout.lock().unwrap().clone().unwrap().unwrap();
    let ms: u64 = forwarded.trim_end_matches('m').parse().unwrap();
    assert!(
        forwarded.ends_with('m') && ms <= 400,
        "forwarded {forwarded}"
    );
    tokio::time::timeout(Duration::from_secs(5), closed.recv())
        .await
        .expect("the executor's stream outlived the deadline")
        .unwrap();
    drop(events);
}

/// An executor that gives up at the deadline it was given, the way grpcio does (its stream reset
/// exactly then): the caller learns its deadline passed, never that the executor is unavailable,
/// however the relay's own timer and the executor's reset race.
#[tokio::test]
async fn an_executor_giving_up_at_the_forwarded_deadline_is_a_deadline_exceeded() {
    let executor = RawExecutor::start(|req| async move {
        let received = tokio::time::Instant::now();
        let ms: u64 = req.headers()["grpc-timeout"]
            .to_str()
            .unwrap()
            .trim_end_matches('m')
            .parse()
            .unwrap();
        let (tx, body) = raw::channel_body(1);
        tokio::spawn(async move {
            tokio::time::sleep_until(received + Duration::from_millis(ms)).await;
            let _ = tx
                .send(Err(std::io::Error::other("deadline: stream reset")))
                .await;
        });
        raw::response(&[], body)
    })
    .await;
    let (service, headers, _dir) = service_before(&executor, &[AGENT_PLATFORM], &[]).await;
    let mut h = pairs(&headers);
    h.push(("grpc-timeout", "30m"));
    for attempt in 0..20 {
        let (events, body) = raw::channel_body(4);
        events
            .send(Ok(Frame::data(raw::framed(
                &support::start_event("go").encode_to_vec(),
            ))))
            .await
            .unwrap();
        let response = raw::call(
            service.addr,
            raw::request("/DuoWorkflow/ExecuteWorkflow", &h, body),
        )
        .await;
        assert_eq!(
            (response.grpc_status(), response.grpc_message().as_deref()),
            (Some("4"), Some("Deadline Exceeded")),
            "attempt {attempt}: {response:?}"
        );
        drop(events);
    }
}

/// An executor whose own status comes once the caller's deadline has passed, before the relay's
/// timer fires (a tonic executor answers `CANCELLED "Timeout expired"` at the deadline it was
/// given, a moment after ours; the soak saw it reach callers 2 times in 76): the caller gets
/// `DEADLINE_EXCEEDED`, whichever the relay sees first. A deadline of one microsecond has always
/// passed when the executor's instant answer arrives, and the relay's timer fires at the next
/// millisecond tick at the earliest, so without the rule most of these calls got `CANCELLED`.
#[tokio::test]
async fn an_executor_status_after_the_callers_deadline_is_a_deadline_exceeded() {
    let executor = RawExecutor::start(|_req| async move {
        let (tx, body) = raw::channel_body(1);
        drop(tx);
        raw::response(
            &[("grpc-status", "1"), ("grpc-message", "Timeout expired")],
            body,
        )
    })
    .await;
    let (service, headers, _dir) = service_before(&executor, &[AGENT_PLATFORM], &[]).await;
    let mut h = pairs(&headers);
    h.push(("grpc-timeout", "1u"));
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..50 {
        let body = raw::frames_body(vec![Frame::data(raw::framed(
            &ListToolsRequest {}.encode_to_vec(),
        ))]);
        let response = raw::call(
            service.addr,
            raw::request("/DuoWorkflow/ListTools", &h, body),
        )
        .await;
        *statuses
            .entry(format!(
                "{:?} {:?}",
                response.grpc_status(),
                response.grpc_message()
            ))
            .or_default() += 1;
    }
    assert_eq!(
        statuses.keys().collect::<Vec<_>>(),
        [r#"Some("4") Some("Deadline Exceeded")"#],
        "{statuses:?}"
    );
}

/// An executor that reads the request whole and answers with one message of `answer_len` bytes.
async fn echoing_executor(
    received: Record<Result<usize, String>>,
    answer_len: usize,
) -> RawExecutor {
    RawExecutor::start(move |req| {
        let received = received.clone();
        async move {
            let result = raw::read_all(req.into_body()).await;
            *received.lock().unwrap() = Some(result.map(|b| b.len()).map_err(|e| e.to_string()));
            raw::response(
                &[],
                raw::frames_body(vec![
                    Frame::data(raw::framed(&vec![0x0a; answer_len])),
                    Frame::trailers(raw::trailers(&[("grpc-status", b"0")])),
                ]),
            )
        }
    })
    .await
}

async fn send_messages(
    service: &Running,
    headers: &[(String, String)],
    path: &str,
    messages: Vec<Bytes>,
) -> raw::RawResponse {
    let frames = messages.into_iter().map(Frame::data).collect();
    raw::call(
        service.addr,
        raw::request(path, &pairs(headers), raw::frames_body(frames)),
    )
    .await
}

#[tokio::test]
async fn four_mebibytes_pass_each_way_and_one_byte_more_is_resource_exhausted() {
    let start = raw::framed(&support::start_event("go").encode_to_vec());
    let big = |len: usize| raw::framed(&vec![b'x'; len]);

    // Exactly 4 MiB both ways.
    let received: Record<Result<usize, String>> = Arc::default();
    let executor = echoing_executor(received.clone(), MIB4).await;
    let (service, headers, _dir) = service_before(&executor, &[AGENT_PLATFORM], &[]).await;
    let r = send_messages(
        &service,
        &headers,
        "/DuoWorkflow/ExecuteWorkflow",
        vec![start.clone(), big(MIB4)],
    )
    .await;
    assert_eq!(r.grpc_status(), Some("0"), "{:?}", r.grpc_message());
    assert_eq!(r.body.len(), 5 + MIB4);
    assert_eq!(
        received.lock().unwrap().clone().unwrap(),
        Ok(start.len() + 5 + MIB4)
    );

    // One byte more from the caller: refused, and the executor's stream is reset.
    let r = send_messages(
        &service,
        &headers,
        "/DuoWorkflow/ExecuteWorkflow",
        vec![start.clone(), big(MIB4 + 1)],
    )
    .await;
    assert_eq!(r.grpc_status(), Some("8"), "{r:?}");
    assert_eq!(
        r.grpc_message().as_deref(),
        Some("Received message larger than max (4194305 vs. 4194304)")
    );
    // As the first message too (read by the service for the flow), on a unary RPC too.
    for path in [
        "/DuoWorkflow/ExecuteWorkflow",
        "/DuoWorkflow/ValidateFlowConfig",
    ] {
        let r = send_messages(&service, &headers, path, vec![big(MIB4 + 1)]).await;
        assert_eq!(r.grpc_status(), Some("8"), "{path}: {r:?}");
    }
    drop(service);

    // One byte more from the executor: refused to the caller.
    let received: Record<Result<usize, String>> = Arc::default();
    let executor = echoing_executor(received.clone(), MIB4 + 1).await;
    let (service, headers, _dir) = service_before(&executor, &[AGENT_PLATFORM], &[]).await;
    let r = send_messages(
        &service,
        &headers,
        "/DuoWorkflow/ExecuteWorkflow",
        vec![start.clone()],
    )
    .await;
    assert_eq!(r.grpc_status(), Some("8"), "{r:?}");
    assert!(
        r.body.len() < MIB4,
        "the oversized message was not passed on"
    );
}

#[tokio::test]
async fn a_caller_is_held_back_while_the_executor_does_not_read() {
    // The executor answers with its headers and never reads the request.
    let held: Arc<Mutex<Vec<hyper::body::Incoming>>> = Arc::default();
    let executor = {
        let held = held.clone();
        RawExecutor::start(move |req| {
            let held = held.clone();
            async move {
                held.lock().unwrap().push(req.into_body());
                let (tx, body) = raw::channel_body(1);
                std::mem::forget(tx); // the response stays open
                raw::response(&[], body)
            }
        })
        .await
    };
    let (service, headers, _dir) = service_before(&executor, &[AGENT_PLATFORM], &[]).await;
    let (events, body) = raw::channel_body(1);
    let mut send = raw::connect(service.addr).await;
    let request = raw::request("/DuoWorkflow/ExecuteWorkflow", &pairs(&headers), body);
    let call = tokio::spawn(async move { send.send_request(request).await });
    events
        .send(Ok(Frame::data(raw::framed(
            &support::start_event("go").encode_to_vec(),
        ))))
        .await
        .unwrap();
    // Offer 64 MiB in 1 MiB messages for two seconds; count what the transport took.
    let chunk = raw::framed(&vec![b'y'; 1024 * 1024]);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut taken = 0usize;
    while taken < 64 * chunk.len() {
        match tokio::time::timeout_at(deadline.into(), events.send(Ok(Frame::data(chunk.clone()))))
            .await
        {
            Ok(Ok(())) => taken += chunk.len(),
            _ => break,
        }
    }
    println!(
        "the caller could hand over {} MiB while the executor read nothing",
        taken / (1024 * 1024)
    );
    assert!(
        taken <= 16 * chunk.len(),
        "{taken} bytes taken: the relay buffers instead of pushing back"
    );
    assert!(!held.lock().unwrap().is_empty());
    call.abort();
}

#[tokio::test]
async fn a_method_the_operator_allows_is_relayed_and_others_are_not() {
    let paths: Arc<Mutex<Vec<String>>> = Arc::default();
    let executor = {
        let paths = paths.clone();
        RawExecutor::start(move |req| {
            let paths = paths.clone();
            async move {
                paths.lock().unwrap().push(req.uri().path().to_owned());
                let _ = raw::read_all(req.into_body()).await;
                let mut r = raw::response(&[], raw::frames_body(vec![]));
                r.headers_mut()
                    .extend(raw::trailers(&[("grpc-status", b"0")]));
                r
            }
        })
        .await
    };
    let (service, headers, _dir) = service_before(
        &executor,
        &[],
        &[(
            "DUO_WORKFLOW_UPSTREAM__ALLOWED_METHODS",
            "/DuoWorkflow/NewRpc, /gitlab.Other/Do",
        )],
    )
    .await;
    for path in ["/DuoWorkflow/NewRpc", "/gitlab.Other/Do"] {
        let r = send_messages(&service, &headers, path, vec![raw::framed(b"")]).await;
        assert_eq!(r.grpc_status(), Some("0"), "{path}");
    }
    let r = send_messages(&service, &headers, "/DuoWorkflow/OtherRpc", vec![]).await;
    assert_eq!(r.grpc_status(), Some("12"));
    assert_eq!(r.grpc_message().as_deref(), Some("Method not found!"));
    assert_eq!(
        *paths.lock().unwrap(),
        ["/DuoWorkflow/NewRpc", "/gitlab.Other/Do"]
    );
}

#[tokio::test]
async fn a_compressed_first_message_is_read_for_its_flow_and_passed_on_unchanged() {
    use std::io::Write;
    let received: Record<Result<usize, String>> = Arc::default();
    let executor = echoing_executor(received.clone(), 1).await;
    let chat = support::start_with(|s| s.workflow_definition = "chat".into());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&chat.encode_to_vec()).unwrap();
    let mut compressed = raw::framed(&gz.finish().unwrap()).to_vec();
    compressed[0] = 1;
    let compressed = Bytes::from(compressed);
    // A chat flow, sent gzip-compressed by a caller with `scopes`.
    let send = |scopes: &'static [&'static str]| {
        let (executor, compressed) = (&executor, compressed.clone());
        async move {
            let (service, headers, _dir) = service_before(executor, scopes, &[]).await;
            let mut h = pairs(&headers);
            h.push(("grpc-encoding", "gzip"));
            let body = raw::frames_body(vec![Frame::data(compressed)]);
            raw::call(
                service.addr,
                raw::request("/DuoWorkflow/ExecuteWorkflow", &h, body),
            )
            .await
        }
    };
    let r = send(&[AGENT_PLATFORM]).await;
    assert_eq!(r.grpc_status(), Some("7"));
    assert_eq!(
        r.grpc_message().as_deref(),
        Some("Unauthorized to execute chat")
    );
    assert!(
        received.lock().unwrap().is_none(),
        "a refused call reached the executor"
    );
    let r = send(&[support::CHAT]).await;
    assert_eq!(r.grpc_status(), Some("0"), "{r:?}");
    assert_eq!(
        received.lock().unwrap().clone().unwrap(),
        Ok(compressed.len())
    );
}

#[tokio::test]
async fn an_https_executor_is_reached_when_its_ca_is_configured() {
    let (ca, cert, key_pem) = support::pki::localhost();
    let executor = support::executor::start_tls(&cert, &key_pem).await;
    let dir = TempDir::new();
    let instance = key("rs256-instance");
    let config = static_source_config(&dir, GITLAB, &[&instance]);
    let ca_file = dir.write("executor-ca.pem", &ca);
    let url = format!("https://localhost:{}", executor.addr.port());
    let headers = support::Headers::bearer(&instance_token(&instance, GITLAB, &[AGENT_PLATFORM]));

    let trusted = start_service(
        Some(&config),
        &[
            (ENV_UPSTREAM_URL, url.as_str()),
            (ENV_UPSTREAM_CA_FILE, ca_file.to_str().unwrap()),
        ],
    )
    .await
    .unwrap();
    let actions = support::execute_workflow(trusted.addr, &headers).await;
    assert_eq!(actions.unwrap(), ["action-1", "action-2"]);

    // Without the CA the executor's certificate is not trusted: nothing is relayed.
    let untrusted = start_service(Some(&config), &[(ENV_UPSTREAM_URL, url.as_str())])
        .await
        .unwrap();
    support::assert_status(
        support::execute_workflow(untrusted.addr, &headers).await,
        Code::Unavailable,
        "Workflow executor unavailable",
    );
    let relayed = executor
        .executor
        .rpcs()
        .into_iter()
        .filter(|r| *r == "ExecuteWorkflow")
        .count();
    assert_eq!(relayed, 1);
}

/// An executor that sends back every data frame of a request as it arrives, then `OK`.
async fn streaming_echo_executor() -> RawExecutor {
    RawExecutor::start(|req| async move {
        let (tx, body) = raw::channel_body(16);
        let mut incoming = req.into_body();
        tokio::spawn(async move {
            use http_body_util::BodyExt;
            while let Some(Ok(frame)) = incoming.frame().await {
                // Never an empty DATA frame before the end: h2 (0.4.20) closes a connection
                // that receives a hundred of them, as gRPC servers never send one.
                if let Some(data) = frame.into_data().ok().filter(|d| !d.is_empty()) {
                    if tx.send(Ok(Frame::data(data))).await.is_err() {
                        return;
                    }
                }
            }
            let _ = tx
                .send(Ok(Frame::trailers(raw::trailers(&[("grpc-status", b"0")]))))
                .await;
        });
        raw::response(&[], body)
    })
    .await
}

/// Issue 14, item 2: a request carrying `content-length` (h2load sends one; any HTTP/2 client or
/// proxy may) once panicked the task owning the executor connection, failing every stream
/// relayed over it. Now it is relayed like any other, and the streams beside it carry on.
#[tokio::test]
async fn a_request_with_content_length_is_relayed_and_the_streams_beside_it_carry_on() {
    let executor = streaming_echo_executor().await;
    let (service, headers, _dir) = service_before(&executor, &[AGENT_PLATFORM], &[]).await;
    let start = raw::framed(&support::start_event("go").encode_to_vec());

    // A long stream, open on the executor connection.
    let (events, body) = raw::channel_body(4);
    let mut send = raw::connect(service.addr).await;
    let open = send.send_request(raw::request(
        "/DuoWorkflow/ExecuteWorkflow",
        &pairs(&headers),
        body,
    ));
    events.send(Ok(Frame::data(start.clone()))).await.unwrap();
    let mut open = open.await.unwrap().into_body();
    let echoed = |frame: Option<Result<Frame<Bytes>, hyper::Error>>| {
        frame
            .expect("the open stream ended")
            .expect("the open stream broke")
            .into_data()
            .expect("a data frame")
    };
    use http_body_util::BodyExt;
    assert_eq!(echoed(open.frame().await), start);

    // Calls whose requests say how long they are: the whole body in one frame, in two frames,
    // a stream and a unary call.
    let split = start.len() / 2;
    for (path, frames) in [
        ("/DuoWorkflow/ExecuteWorkflow", vec![start.clone()]),
        (
            "/DuoWorkflow/ExecuteWorkflow",
            vec![start.slice(..split), start.slice(split..)],
        ),
        ("/DuoWorkflow/ListTools", vec![raw::framed(b"")]),
    ] {
        let length: usize = frames.iter().map(Bytes::len).sum();
        let mut h = pairs(&headers);
        let length = length.to_string();
        h.push(("content-length", &length));
        let body = raw::frames_body(frames.into_iter().map(Frame::data).collect());
        let r = raw::call(service.addr, raw::request(path, &h, body)).await;
        assert_eq!(r.grpc_status(), Some("0"), "{path}: {r:?}");
        assert_eq!(r.body.len().to_string(), length, "{path}: echoed whole");
    }

    // The open stream still works, and ends with the executor's status.
    let next = raw::framed(b"\x12\x00");
    events.send(Ok(Frame::data(next.clone()))).await.unwrap();
    assert_eq!(echoed(open.frame().await), next);
    drop(events);
    let end = echoed_trailers(open.frame().await);
    assert_eq!(end.get("grpc-status").unwrap(), "0");
}

fn echoed_trailers(frame: Option<Result<Frame<Bytes>, hyper::Error>>) -> http::HeaderMap {
    frame
        .expect("the stream ended without trailers")
        .expect("the stream broke")
        .into_trailers()
        .expect("trailers")
}

/// Issue 17, item 1: gRPC knows two flag bytes, 0 (plain) and 1 (compressed). A first message
/// flagged otherwise was once read as compressed (the flow of a `chat` start request, which a
/// `duo_chat` token may run) and relayed as it was, for the executor to read differently (an
/// empty event: the default flow). Every flag byte other than 0 and 1 is `INTERNAL` now, on
/// the first message and every later one, each way, and the executor never sees it.
#[tokio::test]
async fn a_flag_byte_other_than_plain_or_compressed_is_refused_each_way() {
    use std::io::Write;
    let received: Record<Result<usize, String>> = Arc::default();
    let executor = echoing_executor(received.clone(), 1).await;
    let (service, headers, _dir) = service_before(&executor, &[support::CHAT], &[]).await;
    let chat = support::start_with(|s| s.workflow_definition = "chat".into());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&chat.encode_to_vec()).unwrap();
    let compressed = gz.finish().unwrap();
    for flag in [2u8, 3, 0x80, 0xff] {
        let mut message = raw::framed(&compressed).to_vec();
        message[0] = flag;
        let mut h = pairs(&headers);
        h.push(("grpc-encoding", "gzip"));
        let body = raw::frames_body(vec![Frame::data(Bytes::from(message))]);
        let r = raw::call(
            service.addr,
            raw::request("/DuoWorkflow/ExecuteWorkflow", &h, body),
        )
        .await;
        assert_eq!(r.grpc_status(), Some("13"), "flag {flag}: {r:?}");
        assert_eq!(
            r.grpc_message().unwrap(),
            format!("protocol error: received message with invalid compression flag: {flag} (valid flags are 0 and 1)")
        );
    }
    assert!(
        received.lock().unwrap().is_none(),
        "a message with a bad flag reached the executor"
    );
    // A later message of a stream, and a unary request the service does not read.
    let start = raw::framed(&chat.encode_to_vec());
    let mut bad = raw::framed(b"\x12\x00").to_vec();
    bad[0] = 2;
    for (path, messages) in [
        (
            "/DuoWorkflow/ExecuteWorkflow",
            vec![start.clone(), Bytes::from(bad.clone())],
        ),
        ("/DuoWorkflow/ListTools", vec![Bytes::from(bad.clone())]),
    ] {
        let r = send_messages(&service, &headers, path, messages).await;
        assert_eq!(r.grpc_status(), Some("13"), "{path}: {r:?}");
    }
    drop(service);

    // The executor's answer.
    let executor = RawExecutor::start(move |req| {
        let bad = bad.clone();
        async move {
            let _ = raw::read_all(req.into_body()).await;
            raw::response(
                &[],
                raw::frames_body(vec![
                    Frame::data(Bytes::from(bad)),
                    Frame::trailers(raw::trailers(&[("grpc-status", b"0")])),
                ]),
            )
        }
    })
    .await;
    let (service, headers, _dir) = service_before(&executor, &[support::CHAT], &[]).await;
    let r = send_messages(
        &service,
        &headers,
        "/DuoWorkflow/ListTools",
        vec![raw::framed(b"")],
    )
    .await;
    assert_eq!(r.grpc_status(), Some("13"), "{r:?}");
    assert!(r.body.is_empty(), "the bad message was not passed on");
}

/// A stream on `send` whose first message announces 4 MiB and sends all of it but one byte.
async fn half_sent_first_message(
    send: &mut hyper::client::conn::http2::SendRequest<raw::ChannelBody>,
    headers: &[(String, String)],
) -> (
    tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    tokio::task::JoinHandle<raw::RawResponse>,
) {
    let (events, body) = raw::channel_body(8);
    let response = send.send_request(raw::request(
        "/DuoWorkflow/ExecuteWorkflow",
        &pairs(headers),
        body,
    ));
    let call = tokio::spawn(async move { raw::read_response(response.await.unwrap()).await });
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&(MIB4 as u32).to_be_bytes());
    events
        .send(Ok(Frame::data(Bytes::from(prefix))))
        .await
        .unwrap();
    for quarter in [MIB4 / 4, MIB4 / 4, MIB4 / 4, MIB4 / 4 - 1] {
        events
            .send(Ok(Frame::data(Bytes::from(vec![b'z'; quarter]))))
            .await
            .unwrap();
    }
    (events, call)
}

/// `duo_workflow_first_message_bytes_held`, once it reads `bytes` (the service holds what
/// the caller sent only after reading it).
async fn wait_for_bytes_held(service: &Running, bytes: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, body) =
            support::get_with_host(service.operator_addr, "/metrics", "localhost").await;
        let held = body
            .lines()
            .find_map(|l| l.strip_prefix("duo_workflow_first_message_bytes_held "))
            .map(|v| v.trim().parse::<usize>().unwrap());
        if held == Some(bytes) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "bytes held: {held:?}, expected {bytes}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 17, item 2: first messages are read before authorization, and were held twice and
/// without bound (24 half-sent 4 MiB first messages took the process from 10 to 205 MiB). Now
/// they are held once, within a bound per connection (two of the largest messages) and one for
/// the service (sixteen); past either, `RESOURCE_EXHAUSTED`, and what a call held is given back
/// when it goes.
#[tokio::test]
async fn first_messages_held_before_authorization_are_bounded_per_connection_and_in_all() {
    let received: Record<Result<usize, String>> = Arc::default();
    let executor = echoing_executor(received.clone(), 1).await;
    let (service, headers, _dir) = service_before(&executor, &[AGENT_PLATFORM], &[]).await;
    let refused = |r: &raw::RawResponse| {
        assert_eq!(r.grpc_status(), Some("8"), "{r:?}");
        assert_eq!(
            r.grpc_message().as_deref(),
            Some("Too many bytes of first messages waiting to be read")
        );
    };
    // What one half-sent message holds: its prefix and all of its payload but a byte.
    let one = 5 + MIB4 - 1;
    // Connection by connection, two fit and a third is refused, until the service holds
    // sixteen: then a ninth connection's first message is refused.
    let mut held = Vec::new();
    for connection in 0..9 {
        let mut send = raw::connect(service.addr).await;
        for stream in 0..3 {
            let (events, call) = half_sent_first_message(&mut send, &headers).await;
            if stream == 2 || connection == 8 {
                let r = tokio::time::timeout(Duration::from_secs(10), call)
                    .await
                    .expect("a call over a bound is answered at once")
                    .unwrap();
                refused(&r);
                break;
            }
            // Sent one after the other, so that the one over the bound is the third.
            wait_for_bytes_held(&service, one * (held.len() + 1)).await;
            held.push((events, call, send.clone()));
        }
    }
    assert!(received.lock().unwrap().is_none());
    // One held call goes away: what it held comes back, and a new first message fits.
    let (events, call, _) = held.pop().unwrap();
    call.abort();
    drop(events);
    wait_for_bytes_held(&service, one * held.len()).await;
    let start = raw::framed(&support::start_event("go").encode_to_vec());
    let r = send_messages(
        &service,
        &headers,
        "/DuoWorkflow/ExecuteWorkflow",
        vec![start],
    )
    .await;
    assert_eq!(r.grpc_status(), Some("0"), "{r:?}");
    // Another finishes its message: it is judged (4 MiB of `z` is no ClientEvent) and gives back
    // what it held.
    let (events, call, _) = held.pop().unwrap();
    events
        .send(Ok(Frame::data(Bytes::from_static(b"z"))))
        .await
        .unwrap();
    drop(events);
    let r = call.await.unwrap();
    assert_eq!(r.grpc_status(), Some("13"), "{r:?}");
    wait_for_bytes_held(&service, one * held.len()).await;
}

/// Issue 17, item 3: every relayed call to an executor shares one connection. Callers who stop
/// reading while the executor sends them 4 MiB each once used up that connection's window
/// (hyper's default 5 MiB against 2 MiB streams), and every other caller's stream stalled. Now
/// each stream is bounded by its own window and the connection's is never the bound.
#[tokio::test]
async fn callers_who_stop_reading_never_stall_the_streams_of_others() {
    let executor = RawExecutor::start(|req| async move {
        let flood = req.headers().contains_key("x-test-flood");
        let (tx, body) = raw::channel_body(4);
        let mut incoming = req.into_body();
        tokio::spawn(async move {
            use http_body_util::BodyExt;
            if flood {
                // One 4 MiB message, then the stream is held open.
                let message = raw::framed(&vec![b'f'; MIB4 - 16]);
                for chunk in message.chunks(64 * 1024) {
                    if tx
                        .send(Ok(Frame::data(Bytes::copy_from_slice(chunk))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                std::future::pending::<()>().await;
            }
            while let Some(Ok(frame)) = incoming.frame().await {
                if let Some(data) = frame.into_data().ok().filter(|d| !d.is_empty()) {
                    let _ = tx.send(Ok(Frame::data(data))).await;
                }
            }
        });
        raw::response(&[], body)
    })
    .await;
    let (service, headers, _dir) = service_before(&executor, &[AGENT_PLATFORM], &[]).await;
    let start = raw::framed(&support::start_event("go").encode_to_vec());
    // Four callers take their executor's 4 MiB and never read it.
    let mut flooded = Vec::new();
    for _ in 0..4 {
        let mut h = pairs(&headers);
        h.push(("x-test-flood", "1"));
        let mut send = raw::connect(service.addr).await;
        let (events, body) = raw::channel_body(2);
        events.send(Ok(Frame::data(start.clone()))).await.unwrap();
        let response = send
            .send_request(raw::request("/DuoWorkflow/ExecuteWorkflow", &h, body))
            .await
            .unwrap();
        flooded.push((send, events, response));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Another caller's stream is answered as ever.
    let (events, body) = raw::channel_body(2);
    events.send(Ok(Frame::data(start.clone()))).await.unwrap();
    let mut send = raw::connect(service.addr).await;
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        send.send_request(raw::request(
            "/DuoWorkflow/ExecuteWorkflow",
            &pairs(&headers),
            body,
        )),
    )
    .await
    .expect("another caller's stream stalled")
    .unwrap();
    let mut body = response.into_body();
    use http_body_util::BodyExt;
    let echo = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("another caller's stream stalled")
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_data().unwrap(), start);
    drop(flooded);
}
