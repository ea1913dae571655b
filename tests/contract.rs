//! Contract tests: the real tonic transport (layers, routes, relay, status mapping) over real gRPC
//! on 127.0.0.1, with the domain's ports mocked by mockall. Each row of SPEC Part A's
//! authentication table and of Part C's authorization table (C2) is asserted by status code and
//! exact `details`, and refused calls are shown never to reach the token issuer or the workflow
//! executor.
// `workflowDefinition` is deprecated in GitLab's contract, and still what most clients send.
#![allow(deprecated)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use duo_workflow_adapters::executors::{Connector, ExecutorUrl, Executors};
use duo_workflow_adapters::transport::{
    self, AdmissionLayer, GenerateTokenEndpoint, LearnedCapabilities, Limits, Minting,
    ObserveLayer, Relay, Routes, ServerCapabilities,
};
use duo_workflow_domain::gatekeeper::{AuthMode, Gatekeeper, UnitPrimitiveAuthorizer};
use duo_workflow_domain::policy::{ClaimChecks, Delegation};
use duo_workflow_domain::ports::{
    Authenticator, Authorizer, Clock, IssueError, TokenIssuer, VerificationError,
};
use duo_workflow_domain::request::BearerToken;
use duo_workflow_domain::user_token::{UserToken, UserTokenGrant};
use duo_workflow_domain::{
    AuthError, Call, Claims, CopiedClaim, Denied, Identity, Issuer, JsonText, MethodTable,
    Rejection, Rpc, ServiceName, UnitPrimitive, UnixTime, VerifiedClaims,
};
use mockall::mock;
use support::{
    assert_status, call, execute_workflow, execute_workflow_with, generate_token,
    generate_token_for, start_with, Headers, AGENT_PLATFORM, CHAT, EXECUTE, GENERATE,
};
use tokio::sync::oneshot;
use tonic::Code;

mock! {
    pub Authn {}
    #[async_trait]
    impl Authenticator for Authn {
        async fn authenticate(&self, token: &BearerToken) -> Result<VerifiedClaims, VerificationError>;
    }
}

mock! {
    pub Authz {}
    impl Authorizer for Authz {
        fn authorize(&self, identity: &Identity, call: &Call) -> Result<(), AuthError>;
    }
}

mock! {
    pub Minter {}
    #[async_trait]
    impl TokenIssuer for Minter {
        async fn issue(&self, grant: &UserTokenGrant) -> Result<UserToken, IssueError>;
    }
}

mock! {
    pub Clk {}
    impl Clock for Clk {
        fn now(&self) -> UnixTime;
    }
}

const NOW: i64 = 1_800_000_000;
const CDOT: &str = "https://customers.gitlab.com";

/// Every RPC refused with the same status: the authentication steps come first for all seven.
async fn all_refused(addr: SocketAddr, headers: &Headers, code: Code, details: &str) {
    for rpc in Rpc::ALL {
        let result = call(addr, headers, rpc).await;
        match result {
            Ok(()) => panic!("{rpc}: expected {code:?} {details:?}, got success"),
            Err(s) => {
                assert_eq!(s.code(), code, "{rpc}: details were {:?}", s.message());
                assert_eq!(s.message(), details, "{rpc}");
            }
        }
    }
}

fn now() -> UnixTime {
    UnixTime::from_secs(NOW).unwrap()
}

fn service() -> ServiceName {
    ServiceName::new(support::SERVICE)
}

/// Claims as the mocked authenticator reports them for an instance token.
fn instance_claims(scopes: &[&str]) -> VerifiedClaims {
    claims_from(CDOT, Some("instance-1"), scopes)
}

/// Claims of a user token this service minted for `user-77`.
fn user_claims(scopes: &[&str]) -> VerifiedClaims {
    claims_from(support::SERVICE, Some("user-77"), scopes)
}

/// Claims of a caller from `issuer` with `scopes`, matching the headers of [`caller`]: a user
/// token's subject is the global user id, an instance token's the instance id.
fn caller_claims(issuer: &str, scopes: &[&str]) -> VerifiedClaims {
    let sub = if issuer == support::SERVICE {
        "user-77"
    } else {
        "instance-1"
    };
    claims_from(issuer, Some(sub), scopes)
}

/// The transport in front of a fake executor, for a caller from `issuer` with `scopes`.
async fn serve_caller(
    issuer: &str,
    scopes: &[&str],
) -> (Harness, support::executor::RunningExecutor) {
    let executor = support::executor::start().await;
    let h = serve_with(
        authenticated_as(Ok(caller_claims(issuer, scopes))),
        Options::new().executor(executor.addr),
    )
    .await;
    (h, executor)
}

fn claims_from(issuer: &str, sub: Option<&str>, scopes: &[&str]) -> VerifiedClaims {
    claims_with(issuer, sub, scopes, vec![])
}

fn claims_with(
    issuer: &str,
    sub: Option<&str>,
    scopes: &[&str],
    copied: Vec<CopiedClaim>,
) -> VerifiedClaims {
    let claims = Claims {
        issuer: Issuer::new(issuer),
        subject: sub.map(str::to_owned),
        audience: vec![support::SERVICE.into()],
        scopes: scopes.iter().map(|s| UnitPrimitive::new(*s)).collect(),
        realm: Some("self-managed".into()),
        instance_id: Some("instance-1".into()),
        caller_instance: sub.map(str::to_owned),
        scope_evidence: Default::default(),
        duo_seat_count: Some("5".into()),
        copied,
        jti: None,
        expires_at: UnixTime::from_secs(NOW + 600),
        not_before: None,
        issued_at: None,
    };
    ClaimChecks::new(service()).accept(claims, now()).unwrap()
}

fn fixed_clock() -> Arc<MockClk> {
    let mut clock = MockClk::new();
    clock.expect_now().returning(now);
    Arc::new(clock)
}

struct Harness {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// What a harness is built from, besides the authentication mode.
struct Options {
    /// Default: SPEC's table.
    authorizer: Option<Arc<dyn Authorizer>>,
    minter: MockMinter,
    executor: Option<SocketAddr>,
    methods: MethodTable,
    /// Default: none configured, learned from the executor when there is one.
    capabilities: Option<ServerCapabilities>,
    delegation: Delegation,
}

impl Options {
    fn new() -> Self {
        Self {
            authorizer: None,
            minter: never_mints(),
            executor: None,
            methods: MethodTable::new(false),
            capabilities: None,
            delegation: Delegation::default(),
        }
    }

    fn executor(mut self, addr: SocketAddr) -> Self {
        self.executor = Some(addr);
        self
    }

    fn minter(mut self, minter: MockMinter) -> Self {
        self.minter = minter;
        self
    }
}

/// Serves the real transport with the given ports.
async fn serve_with(mode: AuthMode, o: Options) -> Harness {
    let authorizer = o
        .authorizer
        .unwrap_or_else(|| Arc::new(UnitPrimitiveAuthorizer::new(service())));
    let gatekeeper = Arc::new(Gatekeeper::new(mode, authorizer, service()));
    let limits = Limits::default();
    let relay = o.executor.map(|addr| {
        let url = url::Url::parse(&format!("http://{addr}")).unwrap();
        let executors = Executors::new(
            vec![ExecutorUrl::parse(&url).unwrap()],
            Connector::new(false, None).unwrap(),
            std::time::Duration::from_secs(10),
        );
        Relay::new(executors, limits.max_message_bytes)
    });
    let capabilities = o.capabilities.unwrap_or_else(|| match &relay {
        Some(relay) => ServerCapabilities::Learned(LearnedCapabilities::new(
            relay.for_own_calls(),
            Default::default(),
            None,
            std::time::Duration::ZERO,
        )),
        None => ServerCapabilities::Unknown,
    });
    let minting = GenerateTokenEndpoint::new(Minting {
        service: service(),
        issuer: Arc::new(o.minter),
        clock: fixed_clock(),
        delegation: o.delegation,
        capabilities,
        max_message_bytes: limits.max_message_bytes,
    });
    let (_, health) = tonic_health::server::health_reporter();
    let reflection = o.methods.reflection_enabled();
    let admission = AdmissionLayer::new(gatekeeper, o.methods, &limits);
    let mut routes = Routes::new(health, minting, relay);
    if reflection {
        routes = routes.with_reflection();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(transport::serve(
        transport::Acceptor::new(listener, limits.connections, None),
        ObserveLayer::default(),
        admission,
        routes,
        limits,
        async {
            stopped.await.ok();
        },
    ));
    Harness { addr, _stop: stop }
}

async fn serve(
    mode: AuthMode,
    authorizer: Option<Arc<dyn Authorizer>>,
    minter: MockMinter,
    executor: Option<SocketAddr>,
) -> Harness {
    serve_with(
        mode,
        Options {
            authorizer,
            minter,
            executor,
            ..Options::new()
        },
    )
    .await
}

/// An authenticator that must never be asked (panics inside the server if it is, which fails
/// the call with a different status than the test expects).
fn never_authenticated() -> AuthMode {
    let mut authn = MockAuthn::new();
    authn.expect_authenticate().never();
    AuthMode::Enabled(Arc::new(authn))
}

fn authenticated_as(claims: Result<VerifiedClaims, VerificationError>) -> AuthMode {
    let mut authn = MockAuthn::new();
    authn
        .expect_authenticate()
        .returning(move |_| claims.clone());
    AuthMode::Enabled(Arc::new(authn))
}

fn never_mints() -> MockMinter {
    let mut minter = MockMinter::new();
    minter.expect_issue().never();
    minter
}

/// A minter that signs nothing and returns "minted", `times` times.
fn mints(times: usize) -> MockMinter {
    let mut minter = MockMinter::new();
    minter.expect_issue().times(times).returning(|g| {
        Ok(UserToken {
            token: "minted".into(),
            expires_at: g.expires_at,
        })
    });
    minter
}

/// The headers of a caller whose token is `t` (a user token binds `sub` to the global user id).
fn caller() -> Headers {
    Headers::bearer("t")
}

// ---- SPEC Part A: authentication, in order, for every RPC ----

#[tokio::test]
async fn step_1_missing_authorization() {
    let h = serve(never_authenticated(), None, never_mints(), None).await;
    let mut headers = caller();
    headers.authorization = None;
    let details = "No authorization header presented";
    all_refused(h.addr, &headers, Code::Unauthenticated, details).await;
}

#[tokio::test]
async fn step_2_malformed_authorization() {
    let h = serve(never_authenticated(), None, never_mints(), None).await;
    for value in [
        "Token abc",
        "Bearer",
        "Bearer  abc",
        "Bearer a b",
        "Basic YTpi",
        "abc",
    ] {
        let mut headers = caller();
        headers.authorization = Some(value.into());
        all_refused(
            h.addr,
            &headers,
            Code::Unauthenticated,
            "Invalid authorization header",
        )
        .await;
    }
}

#[tokio::test]
async fn step_2_two_authorization_entries_are_refused() {
    let h = serve(never_authenticated(), None, never_mints(), None).await;
    let mut req = tonic::Request::new(duo_workflow_contract::GenerateTokenRequest {
        workflow_definition: None,
    });
    Headers::bearer("one").apply(req.metadata_mut());
    req.metadata_mut()
        .append("authorization", "Bearer two".parse().unwrap());
    let result = support::client(h.addr).await.generate_token(req).await;
    assert_status(
        result,
        Code::Unauthenticated,
        "Invalid authorization header",
    );
}

#[tokio::test]
async fn step_3_authentication_type_must_be_oidc() {
    let h = serve(never_authenticated(), None, never_mints(), None).await;
    let details = "Invalid authentication token type - only OIDC is supported";
    for value in [None, Some("OIDC"), Some("saml"), Some("")] {
        let mut headers = caller();
        headers.authentication_type = value.map(str::to_owned);
        all_refused(h.addr, &headers, Code::Unauthenticated, details).await;
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_the_token_reaches_the_authenticator() {
    let mut authn = MockAuthn::new();
    authn
        .expect_authenticate()
        .withf(|t| t.as_str() == "the-token")
        .times(2)
        .returning(|_| Ok(instance_claims(&[EXECUTE])));
    let h = serve(AuthMode::Enabled(Arc::new(authn)), None, mints(2), None).await;
    for scheme in ["bearer", "BEARER"] {
        let mut headers = Headers::bearer("x");
        headers.authorization = Some(format!("{scheme} the-token"));
        assert!(generate_token(h.addr, &headers).await.is_ok());
    }
}

#[tokio::test]
async fn step_4_a_rejected_token_is_forbidden_whatever_the_reason() {
    for reason in [
        Rejection::BadSignature,
        Rejection::Expired,
        Rejection::UnknownIssuer,
        Rejection::MissingAudience,
    ] {
        let h = serve(
            authenticated_as(Err(VerificationError::Rejected(reason))),
            None,
            never_mints(),
            None,
        )
        .await;
        all_refused(
            h.addr,
            &caller(),
            Code::Unauthenticated,
            "Forbidden by auth provider",
        )
        .await;
    }
}

#[tokio::test]
async fn no_keys_for_the_issuer_is_unavailable_not_a_bad_token() {
    let unavailable = Err(VerificationError::KeysUnavailable(Issuer::new(CDOT)));
    let h = serve(authenticated_as(unavailable), None, never_mints(), None).await;
    all_refused(
        h.addr,
        &caller(),
        Code::Unavailable,
        "Keys of the token's issuer are not available",
    )
    .await;
}

#[tokio::test]
async fn step_5_headers_bind_to_claims() {
    let h = serve(
        authenticated_as(Ok(instance_claims(&[EXECUTE, AGENT_PLATFORM]))),
        None,
        never_mints(),
        None,
    )
    .await;
    let mut headers = caller();
    headers.realm = Some("saas".into());
    all_refused(
        h.addr,
        &headers,
        Code::Unauthenticated,
        "Header mismatch 'X-Gitlab-Realm'",
    )
    .await;
    let mut headers = caller();
    headers.realm = None;
    assert_status(
        execute_workflow(h.addr, &headers).await,
        Code::Unauthenticated,
        "Header mismatch 'X-Gitlab-Realm'",
    );
    let mut headers = caller();
    headers.instance_id = Some("instance-2".into());
    all_refused(
        h.addr,
        &headers,
        Code::Unauthenticated,
        "Header mismatch 'X-Gitlab-Instance-Id'",
    )
    .await;
}

#[tokio::test]
async fn step_5_a_user_tokens_subject_binds_to_the_global_user_id() {
    let h = serve(
        authenticated_as(Ok(user_claims(&[EXECUTE]))),
        None,
        never_mints(),
        None,
    )
    .await;
    let mut headers = caller();
    headers.global_user_id = Some("user-78".into());
    assert_status(
        execute_workflow(h.addr, &headers).await,
        Code::Unauthenticated,
        "Header mismatch 'X-Gitlab-Global-User-Id'",
    );
    // The right user passes authentication and reaches the (absent) executor.
    assert_status(
        execute_workflow(h.addr, &caller()).await,
        Code::Unimplemented,
        "No workflow executor configured",
    );
}

#[tokio::test]
async fn an_instance_tokens_subject_binds_to_the_instance_id() {
    let claims = claims_from("https://gitlab.com", Some("instance-9"), &[EXECUTE]);
    let h = serve(authenticated_as(Ok(claims)), None, never_mints(), None).await;
    assert_status(
        generate_token(h.addr, &caller()).await,
        Code::Unauthenticated,
        "Header mismatch 'X-Gitlab-Instance-Id'",
    );
}

// ---- SPEC C2: authorization per RPC ----

/// `GenerateToken` by the flow its request names, the caller's scopes and its issuer.
#[tokio::test]
async fn generate_token_authorization_table() {
    let cases: &[(&[&str], &str, Option<&str>, bool)] = &[
        // (scopes, issuer, workflowDefinition, may generate)
        (&[AGENT_PLATFORM], CDOT, None, true),
        (&[AGENT_PLATFORM], CDOT, Some("software_development"), true),
        (&[AGENT_PLATFORM], CDOT, Some("developer/v1"), true),
        (&[EXECUTE], CDOT, None, true),
        (&[GENERATE], CDOT, None, true), // 2024 clients
        (&[GENERATE], CDOT, Some("developer/v1"), true),
        (&[CHAT], CDOT, Some("chat"), true),
        (
            &[AGENT_PLATFORM, EXECUTE, GENERATE],
            CDOT,
            Some("chat"),
            false,
        ),
        (&[CHAT], CDOT, None, false),
        (&[CHAT], CDOT, Some("developer/v1"), false),
        (&["include_file_context"], CDOT, None, false),
        (&[], "https://gitlab.com", None, false),
        // A user token never mints further user tokens.
        (
            &[AGENT_PLATFORM, EXECUTE, GENERATE, CHAT],
            support::SERVICE,
            None,
            false,
        ),
        (&[CHAT], support::SERVICE, Some("chat"), false),
    ];
    for (scopes, issuer, flow, may_generate) in cases {
        let claims = caller_claims(issuer, scopes);
        let minter = mints(usize::from(*may_generate));
        let h = serve(authenticated_as(Ok(claims)), None, minter, None).await;
        let generated = generate_token_for(h.addr, &caller(), *flow).await;
        let case = format!("{scopes:?} from {issuer} for {flow:?}");
        if *may_generate {
            assert_eq!(generated.expect(&case).token, "minted", "{case}");
        } else {
            match generated {
                Ok(_) => panic!("{case}: minted"),
                Err(s) => {
                    assert_eq!(s.code(), Code::PermissionDenied, "{case}");
                    assert_eq!(s.message(), "Unauthorized to generate token", "{case}");
                }
            }
        }
    }
}

/// `ExecuteWorkflow` by the flow of its first message and the caller's scopes; refused streams
/// never reach the executor.
#[tokio::test]
async fn execute_workflow_authorization_table() {
    type Shape = fn(&mut duo_workflow_contract::StartWorkflowRequest);
    /// (scopes, issuer, start request, refusal details)
    type Case = (
        &'static [&'static str],
        &'static str,
        Shape,
        Result<(), &'static str>,
    );
    let cases: Vec<Case> = vec![
        (&[AGENT_PLATFORM], CDOT, |_| {}, Ok(())),
        (&[EXECUTE], CDOT, |_| {}, Ok(())),
        (&[AGENT_PLATFORM], support::SERVICE, |_| {}, Ok(())),
        (
            &[EXECUTE],
            support::SERVICE,
            |s| s.workflow_definition = "developer/v1".into(),
            Ok(()),
        ),
        (
            &[CHAT],
            CDOT,
            |s| s.workflow_definition = "chat".into(),
            Ok(()),
        ),
        (
            &[CHAT],
            support::SERVICE,
            |s| s.workflow_definition = "chat".into(),
            Ok(()),
        ),
        (
            &[AGENT_PLATFORM, EXECUTE],
            CDOT,
            |s| s.workflow_definition = "chat".into(),
            Err("Unauthorized to execute chat"),
        ),
        (
            &[CHAT],
            CDOT,
            |_| {},
            Err("Unauthorized to execute software_development"),
        ),
        (
            &[GENERATE],
            CDOT,
            |_| {},
            Err("Unauthorized to execute software_development"),
        ),
        (
            &[CHAT],
            CDOT,
            |s| {
                s.flow_config_id = Some("developer".into());
                s.flow_config_schema_version = Some("v1".into());
                s.flow_version = Some("1.0.0".into());
            },
            Err("Unauthorized to execute developer/v1"),
        ),
        (
            &[AGENT_PLATFORM],
            CDOT,
            |s| {
                s.flow_config_id = Some("developer".into());
                s.flow_config_schema_version = Some("v1".into());
                s.flow_version = Some("1.0.0".into());
            },
            Ok(()),
        ),
        (
            &[CHAT],
            CDOT,
            |s| s.workflow_definition = "duo_planner/experimental".into(),
            Err("Unauthorized to execute duo_planner/v1"),
        ),
        // An inline flow configuration without a workflow definition: the flow has no name.
        (
            &[CHAT],
            CDOT,
            |s| s.flow_config = Some(prost_types::Struct::default()),
            Err("Unauthorized to execute workflow"),
        ),
        (
            &[AGENT_PLATFORM],
            CDOT,
            |s| s.flow_config = Some(prost_types::Struct::default()),
            Ok(()),
        ),
    ];
    for (scopes, issuer, shape, expected) in cases {
        let (h, executor) = serve_caller(issuer, scopes).await;
        let start = start_with(shape);
        let case = format!("{scopes:?} from {issuer}: {start:?}");
        let result = execute_workflow_with(h.addr, &caller(), vec![start]).await;
        match expected {
            Ok(()) => {
                assert_eq!(result.expect(&case), ["action-1", "action-2"], "{case}");
                assert_eq!(executor.executor.rpcs(), ["ExecuteWorkflow"], "{case}");
            }
            Err(details) => {
                let status = result.expect_err(&case);
                assert_eq!(status.code(), Code::PermissionDenied, "{case}");
                assert_eq!(status.message(), details, "{case}");
                assert!(
                    executor.executor.rpcs().is_empty(),
                    "{case}: reached the executor"
                );
            }
        }
    }
}

#[tokio::test]
async fn contradictory_flow_fields_are_invalid_arguments_for_everyone() {
    type Shape = fn(&mut duo_workflow_contract::StartWorkflowRequest);
    let cases: [(Shape, &str); 4] = [
        (
            |s| {
                s.flow_config_id = Some("developer".into());
                s.flow_config_schema_version = Some("v1".into());
                s.flow_version = Some("1.0.0".into());
                s.flow_config = Some(prost_types::Struct::default());
            },
            "flowConfigId and flowConfig are mutually exclusive — set one or the other, not both.",
        ),
        (
            |s| {
                s.flow_config_id = Some("developer".into());
                s.flow_version = Some("1.0.0".into());
            },
            "flowConfigId requires flowConfigSchemaVersion to also be provided.",
        ),
        (
            |s| {
                s.flow_config_id = Some("developer".into());
                s.flow_config_schema_version = Some("v1".into());
            },
            "flowConfigId requires flowVersion to also be provided.",
        ),
        (
            |s| s.flow_version = Some("1.0.0".into()),
            "flowVersion requires flowConfigId to also be provided.",
        ),
    ];
    let executor = support::executor::start().await;
    for mode in [
        authenticated_as(Ok(instance_claims(&[AGENT_PLATFORM, CHAT, EXECUTE]))),
        AuthMode::Disabled,
    ] {
        let h = serve_with(mode, Options::new().executor(executor.addr)).await;
        for (shape, details) in cases {
            let result = execute_workflow_with(h.addr, &caller(), vec![start_with(shape)]).await;
            assert_status(result, Code::InvalidArgument, details);
        }
    }
    assert!(executor.executor.rpcs().is_empty());
}

#[tokio::test]
async fn a_first_event_other_than_a_start_request_runs_the_default_flow() {
    use duo_workflow_contract::{client_event, ClientEvent, HeartbeatRequest};
    let heartbeat = ClientEvent {
        response: Some(client_event::Response::Heartbeat(HeartbeatRequest {
            timestamp: 1,
        })),
    };
    let executor = support::executor::start().await;
    let h = serve_with(
        authenticated_as(Ok(instance_claims(&[CHAT]))),
        Options::new().executor(executor.addr),
    )
    .await;
    assert_status(
        execute_workflow_with(h.addr, &caller(), vec![heartbeat.clone()]).await,
        Code::PermissionDenied,
        "Unauthorized to execute software_development",
    );
    let h = serve_with(
        authenticated_as(Ok(instance_claims(&[AGENT_PLATFORM]))),
        Options::new().executor(executor.addr),
    )
    .await;
    assert!(execute_workflow_with(h.addr, &caller(), vec![heartbeat])
        .await
        .is_ok());
}

#[tokio::test]
async fn a_stream_closed_before_its_first_message_is_relayed_for_the_executor_to_answer() {
    let executor = support::executor::start().await;
    let h = serve_with(
        authenticated_as(Ok(instance_claims(&[]))),
        Options::new().executor(executor.addr),
    )
    .await;
    let actions = execute_workflow_with(h.addr, &caller(), vec![]).await;
    assert_eq!(actions.unwrap(), ["action-1", "action-2"]);
    let seen = executor.executor.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.rpc, "ExecuteWorkflow");
    assert!(seen.goals.is_empty());
    // Without a token it is still refused: authentication does not wait for a message.
    let mut headers = caller();
    headers.authorization = None;
    assert_status(
        execute_workflow_with(h.addr, &headers, vec![]).await,
        Code::Unauthenticated,
        "No authorization header presented",
    );
}

#[tokio::test]
async fn tracking_self_hosted_usage_needs_the_agent_platform_from_a_foreign_issuer() {
    let cases: &[(&[&str], &str, bool)] = &[
        (&[AGENT_PLATFORM], CDOT, true),
        (&[AGENT_PLATFORM], "https://gitlab.com", true),
        (&[EXECUTE, CHAT, GENERATE], CDOT, false),
        (&[AGENT_PLATFORM], support::SERVICE, false),
    ];
    for (scopes, issuer, allowed) in cases {
        let (h, executor) = serve_caller(issuer, scopes).await;
        let result = call(h.addr, &caller(), Rpc::TrackSelfHostedExecuteWorkflow).await;
        if *allowed {
            result.unwrap();
            assert_eq!(executor.executor.rpcs(), ["TrackSelfHostedExecuteWorkflow"]);
        } else {
            assert_status(
                result,
                Code::PermissionDenied,
                "Unauthorized to track self-hosted workflow execution",
            );
            assert!(executor.executor.rpcs().is_empty());
        }
    }
}

#[tokio::test]
async fn listing_and_validation_need_only_an_authenticated_caller() {
    let lists = [
        Rpc::ListCapabilities,
        Rpc::ListTools,
        Rpc::ListFlows,
        Rpc::ValidateFlowConfig,
    ];
    for claims in [instance_claims(&[]), user_claims(&[])] {
        let executor = support::executor::start().await;
        let h = serve_with(
            authenticated_as(Ok(claims)),
            Options::new().executor(executor.addr),
        )
        .await;
        for rpc in lists {
            call(h.addr, &caller(), rpc).await.unwrap();
        }
        let names: Vec<&str> = lists.iter().map(|r| r.name()).collect();
        assert_eq!(executor.executor.rpcs(), names);
    }
    let executor = support::executor::start().await;
    let h = serve_with(
        never_authenticated(),
        Options::new().executor(executor.addr),
    )
    .await;
    let mut headers = caller();
    headers.authorization = None;
    for rpc in lists {
        assert_status(
            call(h.addr, &headers, rpc).await,
            Code::Unauthenticated,
            "No authorization header presented",
        );
    }
    assert!(executor.executor.rpcs().is_empty());
}

#[tokio::test]
async fn every_relayed_rpc_carries_the_callers_metadata() {
    let executor = support::executor::start().await;
    let h = serve_with(
        authenticated_as(Ok(instance_claims(&[AGENT_PLATFORM]))),
        Options::new().executor(executor.addr),
    )
    .await;
    let mut headers = Headers::bearer("the-token");
    headers.request_id = Some("req-123".into());
    headers.duo_seat_count = Some("5".into());
    let relayed: Vec<Rpc> = Rpc::ALL
        .into_iter()
        .filter(|r| *r != Rpc::GenerateToken)
        .collect();
    for rpc in &relayed {
        call(h.addr, &headers, *rpc).await.unwrap();
    }
    let seen = executor.executor.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), relayed.len());
    for s in seen {
        assert_eq!(
            s.header("authorization"),
            Some("Bearer the-token"),
            "{}",
            s.rpc
        );
        assert_eq!(s.header("x-gitlab-realm"), Some("self-managed"));
        assert_eq!(s.header("x-gitlab-instance-id"), Some("instance-1"));
        assert_eq!(s.header("x-gitlab-global-user-id"), Some("user-77"));
        assert_eq!(s.header("x-gitlab-authentication-type"), Some("oidc"));
        assert_eq!(s.header("x-gitlab-duo-seat-count"), Some("5"));
        assert_eq!(s.header("x-request-id"), Some("req-123"));
    }
}

#[tokio::test]
async fn the_authorizer_port_decides_per_call() {
    let mut authz = MockAuthz::new();
    authz
        .expect_authorize()
        .withf(|_, call| matches!(call, Call::GenerateToken(_)))
        .returning(|_, _| Err(AuthError::Unauthorized(Denied::GenerateToken)));
    authz
        .expect_authorize()
        .withf(|_, call| matches!(call, Call::ExecuteWorkflow(f) if f.as_str() == "chat"))
        .returning(|_, _| Ok(()));
    let h = serve(
        authenticated_as(Ok(instance_claims(&[]))),
        Some(Arc::new(authz)),
        never_mints(),
        None,
    )
    .await;
    assert_status(
        generate_token(h.addr, &caller()).await,
        Code::PermissionDenied,
        "Unauthorized to generate token",
    );
    let chat = start_with(|s| s.workflow_definition = "chat".into());
    assert_status(
        execute_workflow_with(h.addr, &caller(), vec![chat]).await,
        Code::Unimplemented,
        "No workflow executor configured",
    );
}

#[tokio::test]
async fn the_health_service_needs_no_token() {
    let h = serve(never_authenticated(), None, never_mints(), None).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(response.is_ok(), "{response:?}");
}

/// The services reflection lists, or the status it answers with.
async fn reflected_services(addr: SocketAddr) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await?
        .into_inner();
    match responses.message().await?.and_then(|r| r.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn reflection_is_served_without_a_token_only_when_enabled() {
    let h = serve(never_authenticated(), None, never_mints(), None).await;
    assert_status(
        reflected_services(h.addr).await,
        Code::Unimplemented,
        "Method not found!",
    );
    let h = serve_with(
        never_authenticated(),
        Options {
            methods: MethodTable::new(true),
            ..Options::new()
        },
    )
    .await;
    let services = reflected_services(h.addr).await.unwrap();
    assert!(services.contains(&"DuoWorkflow".to_owned()), "{services:?}");
    assert!(
        services.contains(&"grpc.health.v1.Health".to_owned()),
        "{services:?}"
    );
}

#[tokio::test]
async fn unknown_methods_are_unimplemented_without_asking_for_a_token() {
    let h = serve(never_authenticated(), None, never_mints(), None).await;
    for path in [
        "/DuoWorkflow/Nope",
        "/other.Service/Method",
        "/grpc.health.v1.Healthy/Check",
    ] {
        assert_status(
            unary_to(h.addr, path, &Headers::none()).await,
            Code::Unimplemented,
            "Method not found!",
        );
    }
}

#[tokio::test]
async fn a_method_the_operator_allows_needs_an_authenticated_caller() {
    let h = serve_with(
        never_authenticated(),
        Options {
            methods: MethodTable::new(false).allow("/DuoWorkflow/Nope").unwrap(),
            ..Options::new()
        },
    )
    .await;
    let mut headers = caller();
    headers.authorization = None;
    assert_status(
        unary_to(h.addr, "/DuoWorkflow/Nope", &headers).await,
        Code::Unauthenticated,
        "No authorization header presented",
    );
    let h = serve_with(
        authenticated_as(Ok(instance_claims(&[]))),
        Options {
            methods: MethodTable::new(false).allow("/DuoWorkflow/Nope").unwrap(),
            ..Options::new()
        },
    )
    .await;
    assert_status(
        unary_to(h.addr, "/DuoWorkflow/Nope", &caller()).await,
        Code::Unimplemented,
        "No workflow executor configured",
    );
}

/// A unary call with an empty message to any path.
async fn unary_to(
    addr: SocketAddr,
    path: &str,
    headers: &Headers,
) -> Result<tonic::Response<duo_workflow_contract::ListToolsResponse>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<
        duo_workflow_contract::ListToolsRequest,
        duo_workflow_contract::ListToolsResponse,
    >::default();
    let mut req = tonic::Request::new(duo_workflow_contract::ListToolsRequest {});
    headers.apply(req.metadata_mut());
    grpc.unary(req, path.parse().unwrap(), codec).await
}

// ---- SPEC A and C3: GenerateToken ----

#[tokio::test]
async fn generate_token_grants_the_callers_delegable_scopes_and_copies_its_claims() {
    let copied = vec![
        CopiedClaim {
            name: "gitlab_instance_uid",
            value: JsonText::new("\"uid-1\"".into()),
        },
        CopiedClaim {
            name: "tool_access_policies",
            value: JsonText::new(r#"{"deny":["rm"]}"#.into()),
        },
    ];
    let expected_copied = copied.clone();
    let mut minter = MockMinter::new();
    minter
        .expect_issue()
        .withf(move |g: &UserTokenGrant| {
            let scopes: Vec<&str> = g.scopes.iter().map(|s| s.as_str()).collect();
            g.service.as_str() == support::SERVICE
                && g.subject == "user-77"
                && g.realm.as_deref() == Some("self-managed")
                && g.instance_id.as_deref() == Some("instance-1")
                && scopes == [AGENT_PLATFORM, CHAT]
                && g.duo_seat_count.as_deref() == Some("5")
                && g.copied == expected_copied
                && g.issued_at.as_secs() == NOW
                && g.expires_at.as_secs() == NOW + 3600
        })
        .times(1)
        .returning(|g| {
            Ok(UserToken {
                token: "minted".into(),
                expires_at: g.expires_at,
            })
        });
    let claims = claims_with(
        CDOT,
        Some("instance-1"),
        &[CHAT, "code_suggestions", AGENT_PLATFORM],
        copied,
    );
    let h = serve_with(
        authenticated_as(Ok(claims)),
        Options {
            capabilities: Some(ServerCapabilities::Configured(
                vec!["tool_call_approval".to_owned()].into(),
            )),
            ..Options::new().minter(minter)
        },
    )
    .await;
    let mut headers = caller();
    headers.duo_seat_count = Some("5".into());
    let response = generate_token(h.addr, &headers).await.unwrap();
    assert_eq!(response.token, "minted");
    assert_eq!(response.expires_at, NOW + 3600);
    assert_eq!(response.server_capabilities, ["tool_call_approval"]);
}

#[tokio::test]
async fn a_2024_caller_still_gets_a_token_that_executes_workflows() {
    let mut minter = MockMinter::new();
    minter
        .expect_issue()
        .withf(|g: &UserTokenGrant| g.scopes == vec![UnitPrimitive::execute_workflow()])
        .times(1)
        .returning(|g| {
            Ok(UserToken {
                token: "minted".into(),
                expires_at: g.expires_at,
            })
        });
    let h = serve(
        authenticated_as(Ok(instance_claims(&[GENERATE]))),
        None,
        minter,
        None,
    )
    .await;
    let response = generate_token(h.addr, &caller()).await.unwrap();
    assert!(response.server_capabilities.is_empty(), "never invented");
}

#[tokio::test]
async fn the_debug_caller_gets_every_delegable_scope() {
    let delegation = Delegation::new(vec![
        UnitPrimitive::new(CHAT),
        UnitPrimitive::new(AGENT_PLATFORM),
    ]);
    let mut minter = MockMinter::new();
    minter
        .expect_issue()
        .withf(|g: &UserTokenGrant| {
            g.scopes == [UnitPrimitive::new(CHAT), UnitPrimitive::new(AGENT_PLATFORM)]
        })
        .times(1)
        .returning(|g| {
            Ok(UserToken {
                token: "minted".into(),
                expires_at: g.expires_at,
            })
        });
    let h = serve_with(
        AuthMode::Disabled,
        Options {
            delegation,
            ..Options::new().minter(minter)
        },
    )
    .await;
    let mut headers = Headers::none();
    headers.global_user_id = Some("user-1".into());
    generate_token(h.addr, &headers).await.unwrap();
}

#[tokio::test]
async fn server_capabilities_are_learned_from_the_executor_with_the_callers_credentials() {
    let executor = support::executor::start().await;
    let h = serve_with(
        authenticated_as(Ok(instance_claims(&[AGENT_PLATFORM]))),
        Options::new().executor(executor.addr).minter(mints(100)),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let learned = loop {
        let r = generate_token(h.addr, &Headers::bearer("the-token"))
            .await
            .unwrap();
        if !r.server_capabilities.is_empty() {
            break r.server_capabilities;
        }
        assert!(std::time::Instant::now() < deadline, "never learned");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(learned, support::executor::CAPABILITIES);
    let seen = executor.executor.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "asked once, not per token");
    assert_eq!(seen[0].rpc, "ListCapabilities");
    assert_eq!(seen[0].header("authorization"), Some("Bearer the-token"));
    assert_eq!(seen[0].header("x-gitlab-realm"), Some("self-managed"));
}

#[tokio::test]
async fn a_silent_executor_never_delays_a_token() {
    // Accepts connections and never answers: every call to it hangs.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let h = serve_with(
        authenticated_as(Ok(instance_claims(&[AGENT_PLATFORM]))),
        Options::new().executor(addr).minter(mints(3)),
    )
    .await;
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let response = generate_token(h.addr, &caller()).await.unwrap();
        assert!(response.server_capabilities.is_empty());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "a token waited on the executor"
        );
    }
}

#[tokio::test]
async fn generate_token_without_a_global_user_id_is_an_invalid_argument() {
    let h = serve(
        authenticated_as(Ok(instance_claims(&[EXECUTE]))),
        None,
        never_mints(),
        None,
    )
    .await;
    let mut headers = caller();
    headers.global_user_id = None;
    assert_status(
        generate_token(h.addr, &headers).await,
        Code::InvalidArgument,
        "Missing 'X-Gitlab-Global-User-Id' header",
    );
}

#[tokio::test]
async fn a_failing_issuer_is_an_internal_error_without_details() {
    let mut minter = MockMinter::new();
    minter
        .expect_issue()
        .returning(|_| Err(IssueError("hsm on fire".into())));
    let h = serve(
        authenticated_as(Ok(instance_claims(&[EXECUTE]))),
        None,
        minter,
        None,
    )
    .await;
    assert_status(
        generate_token(h.addr, &caller()).await,
        Code::Internal,
        "Failed to generate token",
    );
}

// ---- SPEC C4: the relay, as callers see it ----

#[tokio::test]
async fn the_executors_status_reaches_the_caller() {
    let executor = support::executor::start().await;
    *executor.executor.fail_with.lock().unwrap() =
        Some(tonic::Status::resource_exhausted("too many workflows"));
    let h = serve(
        authenticated_as(Ok(instance_claims(&[EXECUTE]))),
        None,
        never_mints(),
        Some(executor.addr),
    )
    .await;
    assert_status(
        execute_workflow(h.addr, &caller()).await,
        Code::ResourceExhausted,
        "too many workflows",
    );
}

#[tokio::test]
async fn an_unreachable_executor_is_unavailable() {
    // A port that was free a moment ago: nothing listens there.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let h = serve(
        authenticated_as(Ok(instance_claims(&[AGENT_PLATFORM]))),
        None,
        never_mints(),
        Some(dead),
    )
    .await;
    for rpc in [
        Rpc::ExecuteWorkflow,
        Rpc::ListTools,
        Rpc::TrackSelfHostedExecuteWorkflow,
    ] {
        assert_status(
            call(h.addr, &caller(), rpc).await,
            Code::Unavailable,
            "Workflow executor unavailable",
        );
    }
}

#[tokio::test]
async fn without_an_executor_authorized_calls_are_unimplemented_and_others_still_refused() {
    let h = serve(
        authenticated_as(Ok(instance_claims(&[AGENT_PLATFORM]))),
        None,
        never_mints(),
        None,
    )
    .await;
    for rpc in Rpc::ALL.into_iter().filter(|r| *r != Rpc::GenerateToken) {
        assert_status(
            call(h.addr, &caller(), rpc).await,
            Code::Unimplemented,
            "No workflow executor configured",
        );
    }
    let mut headers = caller();
    headers.authorization = None;
    assert_status(
        execute_workflow(h.addr, &headers).await,
        Code::Unauthenticated,
        "No authorization header presented",
    );
}

#[tokio::test]
async fn debug_mode_admits_every_caller_without_asking_the_authenticator() {
    let executor = support::executor::start().await;
    let h = serve(AuthMode::Disabled, None, mints(1), Some(executor.addr)).await;
    let mut headers = Headers::none();
    headers.global_user_id = Some("user-1".into());
    assert!(generate_token(h.addr, &headers).await.is_ok());
    for rpc in Rpc::ALL.into_iter().filter(|r| *r != Rpc::GenerateToken) {
        call(h.addr, &Headers::none(), rpc).await.unwrap();
    }
    let chat = start_with(|s| s.workflow_definition = "chat".into());
    assert!(execute_workflow_with(h.addr, &Headers::none(), vec![chat])
        .await
        .is_ok());
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let h = serve(never_authenticated(), None, never_mints(), None).await;
    let call = |request_id: Option<&str>| {
        let mut req = tonic::Request::new(duo_workflow_contract::GenerateTokenRequest {
            workflow_definition: None,
        });
        if let Some(id) = request_id {
            req.metadata_mut()
                .insert("x-request-id", id.parse().unwrap());
        }
        async move {
            let status = support::client(h.addr)
                .await
                .generate_token(req)
                .await
                .unwrap_err();
            status
                .metadata()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap().to_owned())
        }
    };
    assert_eq!(call(Some("abc-1")).await.as_deref(), Some("abc-1"));
    let generated = call(None).await.unwrap();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    // An id that could forge log lines is replaced.
    let replaced = call(Some("a b\"c")).await.unwrap();
    assert_ne!(replaced, "a b\"c");
}

#[tokio::test]
async fn the_callers_deadline_bounds_authentication() {
    let slow = AuthMode::Enabled(Arc::new(SlowAuthn));
    let h = serve(slow, None, never_mints(), None).await;
    let mut req = tonic::Request::new(duo_workflow_contract::GenerateTokenRequest {
        workflow_definition: None,
    });
    caller().apply(req.metadata_mut());
    req.set_timeout(std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    let result = support::client(h.addr).await.generate_token(req).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "the deadline was not honoured"
    );
    let code = result.unwrap_err().code();
    assert!(
        matches!(code, Code::DeadlineExceeded | Code::Cancelled),
        "{code:?}"
    );
}

/// An authenticator that takes five seconds, as one stuck on a key refetch would.
struct SlowAuthn;

#[async_trait]
impl Authenticator for SlowAuthn {
    async fn authenticate(&self, _: &BearerToken) -> Result<VerifiedClaims, VerificationError> {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        Ok(instance_claims(&[EXECUTE]))
    }
}
