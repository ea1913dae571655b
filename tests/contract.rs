//! Contract tests: the real tonic transport (layers, service, status mapping) over real gRPC on
//! 127.0.0.1, with the domain's ports mocked by mockall. Each row of SPEC Part A's
//! authentication and authorization tables is asserted by status code and exact `details`, and
//! refused calls are shown never to reach the token issuer or the workflow executor.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use duo_workflow_adapters::transport::{self, Limits, UpstreamExecutor, WorkflowService};
use duo_workflow_domain::gatekeeper::{AuthMode, Gatekeeper, UnitPrimitiveAuthorizer};
use duo_workflow_domain::policy::ClaimChecks;
use duo_workflow_domain::ports::{
    Authenticator, Authorizer, Clock, IssueError, TokenIssuer, VerificationError,
};
use duo_workflow_domain::request::BearerToken;
use duo_workflow_domain::user_token::{UserToken, UserTokenGrant};
use duo_workflow_domain::{
    AuthError, Claims, Identity, Issuer, Rejection, Rpc, ServiceName, UnitPrimitive, UnixTime,
    VerifiedClaims,
};
use mockall::mock;
use support::{assert_status, execute_workflow, generate_token, Headers};
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
        fn authorize(&self, identity: &Identity, rpc: Rpc) -> Result<(), AuthError>;
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

/// Both RPCs refused with the same status.
async fn both_refused(addr: SocketAddr, headers: &Headers, code: Code, details: &str) {
    assert_status(generate_token(addr, headers).await, code, details);
    assert_status(execute_workflow(addr, headers).await, code, details);
}

fn now() -> UnixTime {
    UnixTime::from_secs(NOW).unwrap()
}

fn service() -> ServiceName {
    ServiceName::new(support::SERVICE)
}

/// Claims as the mocked authenticator reports them for an instance token.
fn instance_claims(scopes: &[&str]) -> VerifiedClaims {
    claims_from("https://customers.gitlab.com", Some("instance-1"), scopes)
}

fn claims_from(issuer: &str, sub: Option<&str>, scopes: &[&str]) -> VerifiedClaims {
    let claims = Claims {
        issuer: Issuer::new(issuer),
        subject: sub.map(str::to_owned),
        audience: vec![support::SERVICE.into()],
        scopes: scopes.iter().map(|s| UnitPrimitive::new(*s)).collect(),
        realm: Some("self-managed".into()),
        instance_id: Some("instance-1".into()),
        duo_seat_count: Some("5".into()),
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

/// Serves the real transport with the given ports. The authorizer defaults to SPEC's table.
async fn serve(
    mode: AuthMode,
    authorizer: Option<Arc<dyn Authorizer>>,
    minter: MockMinter,
    executor: Option<SocketAddr>,
) -> Harness {
    let authorizer =
        authorizer.unwrap_or_else(|| Arc::new(UnitPrimitiveAuthorizer::new(service())));
    let gatekeeper = Arc::new(Gatekeeper::new(mode, authorizer, service()));
    let executor = executor.map(|addr| {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        UpstreamExecutor::new(channel)
    });
    let workflow = WorkflowService::new(service(), Arc::new(minter), fixed_clock(), executor);
    let (_, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(transport::serve(
        listener,
        gatekeeper,
        workflow,
        health,
        Limits::default(),
        async {
            stopped.await.ok();
        },
    ));
    Harness { addr, _stop: stop }
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

#[tokio::test]
async fn step_1_missing_authorization() {
    let h = serve(never_authenticated(), None, never_mints(), None).await;
    let mut headers = Headers::bearer("t");
    headers.authorization = None;
    let details = "No authorization header presented";
    both_refused(h.addr, &headers, Code::Unauthenticated, details).await;
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
        let mut headers = Headers::bearer("t");
        headers.authorization = Some(value.into());
        both_refused(
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
        let mut headers = Headers::bearer("t");
        headers.authentication_type = value.map(str::to_owned);
        both_refused(h.addr, &headers, Code::Unauthenticated, details).await;
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_the_token_reaches_the_authenticator() {
    let mut authn = MockAuthn::new();
    authn
        .expect_authenticate()
        .withf(|t| t.as_str() == "the-token")
        .times(2)
        .returning(|_| Ok(instance_claims(&[support::EXECUTE])));
    let mut minter = MockMinter::new();
    minter.expect_issue().times(2).returning(|g| {
        Ok(UserToken {
            token: "u".into(),
            expires_at: g.expires_at,
        })
    });
    let h = serve(AuthMode::Enabled(Arc::new(authn)), None, minter, None).await;
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
        let headers = Headers::bearer("t");
        both_refused(
            h.addr,
            &headers,
            Code::Unauthenticated,
            "Forbidden by auth provider",
        )
        .await;
    }
}

#[tokio::test]
async fn no_keys_for_the_issuer_is_unavailable_not_a_bad_token() {
    let unavailable = Err(VerificationError::KeysUnavailable(Issuer::new(
        "https://customers.gitlab.com",
    )));
    let h = serve(authenticated_as(unavailable), None, never_mints(), None).await;
    let result = generate_token(h.addr, &Headers::bearer("t")).await;
    assert_status(
        result,
        Code::Unavailable,
        "Keys of the token's issuer are not available",
    );
}

#[tokio::test]
async fn step_5_headers_bind_to_claims() {
    let h = serve(
        authenticated_as(Ok(instance_claims(&[support::EXECUTE]))),
        None,
        never_mints(),
        None,
    )
    .await;
    let mut headers = Headers::bearer("t");
    headers.realm = Some("saas".into());
    assert_status(
        generate_token(h.addr, &headers).await,
        Code::Unauthenticated,
        "Header mismatch 'X-Gitlab-Realm'",
    );
    let mut headers = Headers::bearer("t");
    headers.realm = None;
    assert_status(
        execute_workflow(h.addr, &headers).await,
        Code::Unauthenticated,
        "Header mismatch 'X-Gitlab-Realm'",
    );
    let mut headers = Headers::bearer("t");
    headers.instance_id = Some("instance-2".into());
    assert_status(
        generate_token(h.addr, &headers).await,
        Code::Unauthenticated,
        "Header mismatch 'X-Gitlab-Instance-Id'",
    );
}

#[tokio::test]
async fn step_5_a_user_tokens_subject_binds_to_the_global_user_id() {
    let user = claims_from(support::SERVICE, Some("user-77"), &[support::EXECUTE]);
    let h = serve(authenticated_as(Ok(user)), None, never_mints(), None).await;
    let mut headers = Headers::bearer("t");
    headers.global_user_id = Some("user-78".into());
    assert_status(
        execute_workflow(h.addr, &headers).await,
        Code::Unauthenticated,
        "Header mismatch 'X-Gitlab-Global-User-Id'",
    );
    // The right user passes authentication and reaches the (absent) executor.
    assert_status(
        execute_workflow(h.addr, &Headers::bearer("t")).await,
        Code::Unimplemented,
        "No workflow executor configured",
    );
}

#[tokio::test]
async fn an_instance_tokens_subject_binds_to_the_instance_id() {
    let claims = claims_from(
        "https://gitlab.com",
        Some("instance-9"),
        &[support::EXECUTE],
    );
    let h = serve(authenticated_as(Ok(claims)), None, never_mints(), None).await;
    assert_status(
        generate_token(h.addr, &Headers::bearer("t")).await,
        Code::Unauthenticated,
        "Header mismatch 'X-Gitlab-Instance-Id'",
    );
}

#[tokio::test]
async fn authorization_table() {
    let cases: [(&[&str], &str, bool, bool); 5] = [
        // (scopes, issuer, may execute, may generate)
        (&[support::EXECUTE], "https://gitlab.com", true, true),
        (&[support::GENERATE], "https://gitlab.com", false, true),
        (&["duo_chat"], "https://gitlab.com", false, false),
        (&[], "https://customers.gitlab.com", false, false),
        (
            &[support::EXECUTE, support::GENERATE],
            support::SERVICE,
            true,
            false,
        ),
    ];
    for (scopes, issuer, may_execute, may_generate) in cases {
        let sub = if issuer == support::SERVICE {
            "user-77"
        } else {
            "instance-1"
        };
        let claims = claims_from(issuer, Some(sub), scopes);
        let mut minter = MockMinter::new();
        minter
            .expect_issue()
            .times(usize::from(may_generate))
            .returning(|g| {
                Ok(UserToken {
                    token: "u".into(),
                    expires_at: g.expires_at,
                })
            });
        let executor = support::executor::start().await;
        let h = serve(
            authenticated_as(Ok(claims)),
            None,
            minter,
            Some(executor.addr),
        )
        .await;
        let headers = Headers::bearer("t");
        let generated = generate_token(h.addr, &headers).await;
        if may_generate {
            assert!(generated.is_ok(), "{scopes:?} from {issuer}: {generated:?}");
        } else {
            assert_status(
                generated,
                Code::PermissionDenied,
                "Unauthorized to generate token",
            );
        }
        let executed = execute_workflow(h.addr, &headers).await;
        if may_execute {
            assert_eq!(
                executed.unwrap(),
                ["action-1", "action-2"],
                "{scopes:?} from {issuer}"
            );
            assert_eq!(executor.executor.seen.lock().unwrap().len(), 1);
        } else {
            assert_status(
                executed,
                Code::PermissionDenied,
                "Unauthorized to execute workflow",
            );
            assert!(
                executor.executor.seen.lock().unwrap().is_empty(),
                "a refused call reached the executor"
            );
        }
    }
}

#[tokio::test]
async fn the_authorizer_port_decides_per_rpc() {
    let mut authz = MockAuthz::new();
    authz
        .expect_authorize()
        .withf(|_, rpc| *rpc == Rpc::GenerateToken)
        .returning(|_, rpc| Err(AuthError::Unauthorized(rpc)));
    authz
        .expect_authorize()
        .withf(|_, rpc| *rpc == Rpc::ExecuteWorkflow)
        .returning(|_, _| Ok(()));
    let h = serve(
        authenticated_as(Ok(instance_claims(&[support::EXECUTE]))),
        Some(Arc::new(authz)),
        never_mints(),
        None,
    )
    .await;
    let headers = Headers::bearer("t");
    assert_status(
        generate_token(h.addr, &headers).await,
        Code::PermissionDenied,
        "Unauthorized to generate token",
    );
    assert_status(
        execute_workflow(h.addr, &headers).await,
        Code::Unimplemented,
        "No workflow executor configured",
    );
}

#[tokio::test]
async fn generate_token_passes_spec_grant_to_the_issuer_and_returns_its_token() {
    let mut minter = MockMinter::new();
    minter
        .expect_issue()
        .withf(|g: &UserTokenGrant| {
            g.service.as_str() == support::SERVICE
                && g.subject == "user-77"
                && g.realm.as_deref() == Some("self-managed")
                && g.instance_id.as_deref() == Some("instance-1")
                && g.scopes == vec![UnitPrimitive::execute_workflow()]
                && g.duo_seat_count.as_deref() == Some("5")
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
    let h = serve(
        authenticated_as(Ok(instance_claims(&[support::GENERATE]))),
        None,
        minter,
        None,
    )
    .await;
    let mut headers = Headers::bearer("t");
    headers.duo_seat_count = Some("5".into());
    let response = generate_token(h.addr, &headers).await.unwrap();
    assert_eq!(response.token, "minted");
    assert_eq!(response.expires_at, NOW + 3600);
}

#[tokio::test]
async fn generate_token_without_a_global_user_id_is_an_invalid_argument() {
    let h = serve(
        authenticated_as(Ok(instance_claims(&[support::EXECUTE]))),
        None,
        never_mints(),
        None,
    )
    .await;
    let mut headers = Headers::bearer("t");
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
        authenticated_as(Ok(instance_claims(&[support::EXECUTE]))),
        None,
        minter,
        None,
    )
    .await;
    assert_status(
        generate_token(h.addr, &Headers::bearer("t")).await,
        Code::Internal,
        "Failed to generate token",
    );
}

#[tokio::test]
async fn execute_workflow_relays_the_stream_and_the_metadata_to_the_executor() {
    let executor = support::executor::start().await;
    let h = serve(
        authenticated_as(Ok(instance_claims(&[support::EXECUTE]))),
        None,
        never_mints(),
        Some(executor.addr),
    )
    .await;
    let mut headers = Headers::bearer("the-token");
    headers.request_id = Some("req-123".into());
    headers.duo_seat_count = Some("5".into());
    let actions = execute_workflow(h.addr, &headers).await.unwrap();
    assert_eq!(actions, ["action-1", "action-2"]);
    let seen = executor.executor.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.goals, ["write a poem"]);
    assert_eq!(seen.header("authorization"), Some("Bearer the-token"));
    assert_eq!(seen.header("x-gitlab-realm"), Some("self-managed"));
    assert_eq!(seen.header("x-gitlab-instance-id"), Some("instance-1"));
    assert_eq!(seen.header("x-gitlab-global-user-id"), Some("user-77"));
    assert_eq!(seen.header("x-gitlab-authentication-type"), Some("oidc"));
    assert_eq!(seen.header("x-gitlab-duo-seat-count"), Some("5"));
    assert_eq!(seen.header("x-request-id"), Some("req-123"));
}

#[tokio::test]
async fn the_executors_status_reaches_the_caller() {
    let executor = support::executor::start().await;
    *executor.executor.fail_with.lock().unwrap() =
        Some(tonic::Status::resource_exhausted("too many workflows"));
    let h = serve(
        authenticated_as(Ok(instance_claims(&[support::EXECUTE]))),
        None,
        never_mints(),
        Some(executor.addr),
    )
    .await;
    assert_status(
        execute_workflow(h.addr, &Headers::bearer("t")).await,
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
        authenticated_as(Ok(instance_claims(&[support::EXECUTE]))),
        None,
        never_mints(),
        Some(dead),
    )
    .await;
    let result = execute_workflow(h.addr, &Headers::bearer("t")).await;
    assert_eq!(result.unwrap_err().code(), Code::Unavailable);
}

#[tokio::test]
async fn without_an_executor_authorized_streams_are_unimplemented_and_others_still_refused() {
    let h = serve(
        authenticated_as(Ok(instance_claims(&[support::EXECUTE]))),
        None,
        never_mints(),
        None,
    )
    .await;
    assert_status(
        execute_workflow(h.addr, &Headers::bearer("t")).await,
        Code::Unimplemented,
        "No workflow executor configured",
    );
    let mut headers = Headers::bearer("t");
    headers.authorization = None;
    assert_status(
        execute_workflow(h.addr, &headers).await,
        Code::Unauthenticated,
        "No authorization header presented",
    );
}

#[tokio::test]
async fn debug_mode_admits_every_caller_without_asking_the_authenticator() {
    let mut minter = MockMinter::new();
    minter.expect_issue().times(1).returning(|g| {
        Ok(UserToken {
            token: "u".into(),
            expires_at: g.expires_at,
        })
    });
    let executor = support::executor::start().await;
    let h = serve(AuthMode::Disabled, None, minter, Some(executor.addr)).await;
    let mut headers = Headers::none();
    headers.global_user_id = Some("user-1".into());
    assert!(generate_token(h.addr, &headers).await.is_ok());
    assert_eq!(
        execute_workflow(h.addr, &Headers::none())
            .await
            .unwrap()
            .len(),
        2
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
async fn unknown_methods_still_need_authentication() {
    let h = serve(never_authenticated(), None, never_mints(), None).await;
    let mut grpc = tonic::client::Grpc::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<
        duo_workflow_contract::GenerateTokenRequest,
        duo_workflow_contract::GenerateTokenResponse,
    >::default();
    let result = grpc
        .unary(
            tonic::Request::new(duo_workflow_contract::GenerateTokenRequest {
                workflow_definition: None,
            }),
            "/DuoWorkflow/Nope".parse().unwrap(),
            codec,
        )
        .await;
    assert_status(
        result,
        Code::Unauthenticated,
        "No authorization header presented",
    );
}

#[tokio::test]
async fn the_callers_deadline_bounds_authentication() {
    let slow = AuthMode::Enabled(Arc::new(SlowAuthn));
    let h = serve(slow, None, never_mints(), None).await;
    let mut req = tonic::Request::new(duo_workflow_contract::GenerateTokenRequest {
        workflow_definition: None,
    });
    Headers::bearer("t").apply(req.metadata_mut());
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
        Ok(instance_claims(&[support::EXECUTE]))
    }
}
