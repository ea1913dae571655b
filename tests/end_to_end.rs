//! End-to-end tests with every real adapter: tokens minted the way `token mint` mints them, the
//! static key source, the local authority, the tonic transport, and a fake workflow executor.

mod support;

use duo_workflow_adapters::authority::LocalAuthority;
use duo_workflow_adapters::jose::token;
use duo_workflow_adapters::reload::Reloaded;
use duo_workflow_domain::user_token::UserTokenGrant;
use duo_workflow_domain::Rpc;
use duo_workflow_domain::{ServiceName, UnitPrimitive, UnixTime};
use duo_workflow_service::cli::mint;
use duo_workflow_service::config::{
    ENV_AUTH_ENABLED, ENV_SIGNING_KEY, ENV_UPSTREAM_URL, ENV_VALIDATION_KEY,
};
use duo_workflow_service::reload::Trigger;
use support::{
    assert_status, decode_segment, execute_workflow, generate_token, generate_token_for,
    instance_request, key, start_service, static_source_config, Headers, TempDir, AGENT_PLATFORM,
    CHAT, EXECUTE, GENERATE, SERVICE,
};
use tonic::Code;

const GITLAB: &str = "https://gitlab.test";

#[tokio::test]
async fn instance_token_to_user_token_to_workflow() {
    let dir = TempDir::new();
    let instance_key = key("rs256-instance");
    let authority = key("rs256-authority");
    let config = static_source_config(&dir, GITLAB, &[&instance_key]);
    let executor = support::executor::start().await;
    let upstream = format!("http://{}", executor.addr);
    let service = start_service(
        Some(&config),
        &[
            (ENV_SIGNING_KEY, authority.pem.as_str()),
            (ENV_UPSTREAM_URL, upstream.as_str()),
        ],
    )
    .await
    .unwrap();

    // GitLab Rails minted kid-less tokens; newer issuers send a kid. Both verify.
    for with_kid in [false, true] {
        let mut request = instance_request(GITLAB, &[GENERATE]);
        request.with_kid = with_kid;
        request.duo_seat_count = Some("12".into());
        let instance_token = mint(&instance_key.key, &request);
        let mut headers = Headers::bearer(&instance_token);
        headers.realm = Some("self-managed".into());
        headers.duo_seat_count = Some("12".into());
        let response = generate_token(service.addr, &headers).await.unwrap();

        let header = decode_segment(&response.token, 0);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], authority.kid());
        let claims = decode_segment(&response.token, 1);
        assert_eq!(claims["iss"], SERVICE);
        assert_eq!(claims["aud"], SERVICE);
        assert_eq!(claims["sub"], "user-77");
        assert_eq!(claims["gitlab_realm"], "self-managed");
        assert_eq!(claims["gitlab_instance_id"], "instance-1");
        assert_eq!(claims["scopes"], serde_json::json!([EXECUTE]));
        assert_eq!(claims["duo_seat_count"], "12");
        assert_eq!(claims["iat"], claims["nbf"]);
        assert_eq!(
            claims["exp"].as_i64().unwrap(),
            claims["iat"].as_i64().unwrap() + 3600
        );
        assert_eq!(claims["exp"].as_i64().unwrap(), response.expires_at);
        assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());

        // The user token runs a workflow; the executor sees the caller's metadata.
        let user_headers = Headers::bearer(&response.token);
        assert_eq!(
            execute_workflow(service.addr, &user_headers).await.unwrap(),
            ["action-1", "action-2"]
        );
        // ...and cannot mint further tokens.
        assert_status(
            generate_token(service.addr, &user_headers).await,
            Code::PermissionDenied,
            "Unauthorized to generate token",
        );
    }
    let seen: Vec<_> = executor
        .executor
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.rpc == "ExecuteWorkflow")
        .cloned()
        .collect();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("x-gitlab-global-user-id"), Some("user-77"));
    assert!(seen[0]
        .header("authorization")
        .unwrap()
        .starts_with("Bearer "));
    assert!(seen[0].header("x-request-id").is_some());
    service.stop().await.unwrap();
}

/// Today's GitLab (SPEC C): Rails asks for a chat user token with `duo_agent_platform` and
/// `duo_chat`, and claims the user token must carry on; the user token then runs chat and agent
/// flows and lists tools, but cannot report self-hosted usage.
#[tokio::test]
async fn todays_gitlab_instance_token_to_user_token_to_every_rpc() {
    let dir = TempDir::new();
    let instance_key = key("rs256-instance");
    let config = static_source_config(&dir, GITLAB, &[&instance_key]);
    let executor = support::executor::start().await;
    let upstream = format!("http://{}", executor.addr);
    let service = start_service(Some(&config), &[(ENV_UPSTREAM_URL, upstream.as_str())])
        .await
        .unwrap();
    let mut claims = support::good_claims(GITLAB);
    claims["scopes"] = serde_json::json!([AGENT_PLATFORM, CHAT, "code_suggestions"]);
    claims["gitlab_instance_uid"] = serde_json::json!("uid-42");
    claims["gitlab_root_namespace_id"] = serde_json::json!(9970);
    claims["tool_access_policies"] = serde_json::json!({"deny": ["run_command"], "n": [1, 2.5]});
    claims["skip_usage_cutoff"] = serde_json::json!(true);
    let instance_token = support::sign_raw(
        &instance_key.key,
        br#"{"alg":"RS256","typ":"JWT"}"#,
        claims.to_string().as_bytes(),
    );
    let headers = Headers::bearer(&instance_token);

    // The executor's capabilities were learned at start-up (its auth is off): wait for them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let response = loop {
        let r = generate_token_for(service.addr, &headers, Some("chat"))
            .await
            .unwrap();
        if !r.server_capabilities.is_empty() || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        response.server_capabilities,
        support::executor::CAPABILITIES
    );
    let user = decode_segment(&response.token, 1);
    assert_eq!(user["scopes"], serde_json::json!([AGENT_PLATFORM, CHAT]));
    for name in [
        "gitlab_instance_uid",
        "gitlab_root_namespace_id",
        "tool_access_policies",
        "skip_usage_cutoff",
    ] {
        assert_eq!(user[name], claims[name], "{name} copied unchanged");
    }

    let user_headers = Headers::bearer(&response.token);
    for definition in ["chat", "software_development", "developer/v1"] {
        let start = support::start_with(|s| {
            #[allow(deprecated)]
            {
                s.workflow_definition = definition.into();
            }
        });
        assert!(
            support::execute_workflow_with(service.addr, &user_headers, vec![start])
                .await
                .is_ok(),
            "{definition}"
        );
    }
    for rpc in [
        Rpc::ListTools,
        Rpc::ListFlows,
        Rpc::ListCapabilities,
        Rpc::ValidateFlowConfig,
    ] {
        support::call(service.addr, &user_headers, rpc)
            .await
            .unwrap();
    }
    assert_status(
        support::call(
            service.addr,
            &user_headers,
            Rpc::TrackSelfHostedExecuteWorkflow,
        )
        .await,
        Code::PermissionDenied,
        "Unauthorized to track self-hosted workflow execution",
    );
    support::call(service.addr, &headers, Rpc::TrackSelfHostedExecuteWorkflow)
        .await
        .unwrap();
    service.stop().await.unwrap();
}

#[tokio::test]
async fn the_validation_key_keeps_previous_user_tokens_valid() {
    let dir = TempDir::new();
    let instance_key = key("rs256-instance");
    let (current, previous, stranger) = (
        key("rs256-authority"),
        key("es256-previous"),
        key("rs256-stranger"),
    );
    let config = static_source_config(&dir, GITLAB, &[&instance_key]);
    let service = start_service(
        Some(&config),
        &[
            (ENV_SIGNING_KEY, current.pem.as_str()),
            (ENV_VALIDATION_KEY, previous.pem.as_str()),
        ],
    )
    .await
    .unwrap();
    let claims = user_token_claims();
    for (signer, with_kid) in [(&previous, true), (&previous, false)] {
        let user_token = token::sign(&signer.key, &claims, with_kid);
        assert_status(
            execute_workflow(service.addr, &Headers::bearer(&user_token)).await,
            Code::Unimplemented,
            "No workflow executor configured",
        );
    }
    for with_kid in [true, false] {
        let forged = token::sign(&stranger.key, &claims, with_kid);
        assert_status(
            execute_workflow(service.addr, &Headers::bearer(&forged)).await,
            Code::Unauthenticated,
            "Forbidden by auth provider",
        );
    }
}

/// What a reload did to the file group `name`.
fn outcome_of(outcomes: Vec<(String, Reloaded)>, name: &str) -> Reloaded {
    outcomes
        .into_iter()
        .find(|(group, _)| group == name)
        .unwrap_or_else(|| panic!("no file group {name}"))
        .1
}

/// The claims of a user token the authority would mint for an execute-workflow grant.
fn user_token_claims() -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let grant = UserTokenGrant {
        service: ServiceName::new(SERVICE),
        subject: "user-77".into(),
        realm: Some("self-managed".into()),
        instance_id: Some("instance-1".into()),
        scopes: vec![UnitPrimitive::execute_workflow()],
        duo_seat_count: None,
        copied: vec![],
        issued_at: UnixTime::from_secs(now).unwrap(),
        expires_at: UnixTime::from_secs(now + 3600).unwrap(),
    };
    LocalAuthority::user_token_claims(&grant, "jti-1")
}

/// The authority's two key files replaced one at a time and found half-way by a poll (outside
/// a Kubernetes Secret nothing swaps two files at once): a pair that would remove a key in use
/// waits for the next poll, so no token signed with the key being replaced is refused meanwhile;
/// adding keys is never held; a SIGHUP applies a removal at once.
#[tokio::test]
async fn an_authority_pair_replaced_one_file_at_a_time_refuses_no_good_token() {
    let dir = TempDir::new();
    let instance_key = key("rs256-instance");
    let (old, new) = (key("rs256-authority"), key("eddsa-authority-next"));
    let config = static_source_config(&dir, GITLAB, &[&instance_key]);
    let signing = dir.write("signing.pem", &old.pem);
    let validation = dir.write("validation.pem", &new.pem); // step 1 of a rotation, done
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!(
        "\n[self_signed_jwt]\nsigning_key_file = \"{}\"\nvalidation_key_file = \"{}\"\n\n[reload]\npoll_seconds = 0\n",
        signing.display(),
        validation.display()
    ));
    std::fs::write(&config, toml).unwrap();
    let service = start_service(Some(&config), &[]).await.unwrap();
    let addr = service.addr;

    let claims = user_token_claims();
    let accepted = |k: &support::SigningKeyPem| {
        let user_token = token::sign(&k.key, &claims, true);
        async move {
            match execute_workflow(addr, &Headers::bearer(&user_token)).await {
                Err(s) if s.code() == Code::Unimplemented => true, // past authentication
                Err(s) if s.code() == Code::Unauthenticated => false,
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    let minted_kid = || async {
        let instance = mint(&instance_key.key, &instance_request(GITLAB, &[GENERATE]));
        let response = generate_token(service.addr, &Headers::bearer(&instance))
            .await
            .unwrap();
        decode_segment(&response.token, 0)["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let poll = || async {
        outcome_of(
            service.reloader.reload(Trigger::Poll).await,
            "local-authority",
        )
    };
    let (old_kid, new_kid) = (old.key.kid().to_owned(), new.key.kid().to_owned());
    assert_eq!(minted_kid().await, old_kid);

    // Step 2, the signing file first: the pair {new, new} would drop the old key, with which
    // this replica signed a moment ago (and the others still sign). Held.
    std::fs::write(&signing, &new.pem).unwrap();
    let outcome = poll().await;
    assert!(
        matches!(&outcome, Reloaded::Held(why) if why.contains(&old_kid)),
        "{outcome:?}"
    );
    assert!(service.reloader.healthy(), "held is not failing");
    assert_eq!(
        minted_kid().await,
        old_kid,
        "the previous pair stays in use"
    );
    assert!(accepted(&old).await && accepted(&new).await);
    // The validation file follows: a pair that removes nothing is used at once.
    std::fs::write(&validation, &old.pem).unwrap();
    let outcome = poll().await;
    assert!(matches!(outcome, Reloaded::Changed(_)), "{outcome:?}");
    assert_eq!(minted_kid().await, new_kid);
    assert!(accepted(&old).await && accepted(&new).await);

    // Step 3, the validation file removed: held for one poll, then applied.
    std::fs::remove_file(&validation).unwrap();
    let outcome = poll().await;
    assert!(matches!(outcome, Reloaded::Held(_)), "{outcome:?}");
    assert!(accepted(&old).await, "still configured until the next poll");
    let outcome = poll().await;
    assert!(matches!(outcome, Reloaded::Changed(_)), "{outcome:?}");
    assert!(!accepted(&old).await, "removed");
    assert!(accepted(&new).await);
    assert_eq!(poll().await, Reloaded::Unchanged);

    // A held pair that the files leave again is forgotten: the old key back as validation key
    // is a change that removes nothing.
    std::fs::write(&signing, &old.pem).unwrap();
    assert!(matches!(poll().await, Reloaded::Held(_)));
    std::fs::write(&signing, &new.pem).unwrap();
    std::fs::write(&validation, &old.pem).unwrap();
    assert!(matches!(poll().await, Reloaded::Changed(_)));
    assert_eq!(minted_kid().await, new_kid);
    assert!(accepted(&old).await && accepted(&new).await);

    // The operator's SIGHUP (an emergency: the old key must go now) is not held.
    std::fs::remove_file(&validation).unwrap();
    let outcome = outcome_of(
        service.reloader.reload(Trigger::Signal).await,
        "local-authority",
    );
    assert!(matches!(outcome, Reloaded::Changed(_)), "{outcome:?}");
    assert!(!accepted(&old).await);

    let (_, _, metrics) =
        support::get_with_host(service.operator_addr, "/metrics", "localhost").await;
    assert!(
        metrics.contains(
            "duo_workflow_auth_reloads_total{files=\"local-authority\",result=\"held\"} 3"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_key_serves_only_its_own_issuer() {
    let dir = TempDir::new();
    let instance_key = key("rs256-instance");
    let config = static_source_config(&dir, GITLAB, &[&instance_key]);
    let service = start_service(Some(&config), &[]).await.unwrap();
    // The instance key signs for its issuer...
    let good = mint(&instance_key.key, &instance_request(GITLAB, &[EXECUTE]));
    assert!(generate_token(service.addr, &Headers::bearer(&good))
        .await
        .is_ok());
    // ...but not for another issuer, nor for the service's own (which would bind `sub` to the
    // user header instead of the instance).
    for issuer in ["https://customers.gitlab.test", SERVICE] {
        let forged = mint(&instance_key.key, &instance_request(issuer, &[EXECUTE]));
        let mut headers = Headers::bearer(&forged);
        headers.global_user_id = Some("instance-1".into());
        assert_status(
            execute_workflow(service.addr, &headers).await,
            Code::Unauthenticated,
            "Forbidden by auth provider",
        );
    }
}

/// A static source's JWKS file replaced while serving: the new key verifies and the removed one
/// does not, after one reload; a file that does not parse keeps the keys in use, and the source's
/// state says why.
#[tokio::test]
async fn a_static_key_file_reloads_and_a_broken_one_keeps_the_previous_keys() {
    let dir = TempDir::new();
    let (old, new) = (key("rs256-instance"), key("es256-instance"));
    let config = static_source_config(&dir, GITLAB, &[&old]);
    let service = start_service(Some(&config), &[]).await.unwrap();
    let token = |k: &support::SigningKeyPem| {
        Headers::bearer(&mint(&k.key, &instance_request(GITLAB, &[GENERATE])))
    };
    let jwks_file = dir.path("instance.jwks");
    let write_jwks = |keys: &[&support::SigningKeyPem]| {
        let jwks = serde_json::json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() });
        std::fs::write(&jwks_file, jwks.to_string()).unwrap();
    };
    let outcome_of_source = |outcomes| outcome_of(outcomes, "test-gitlab");
    assert!(generate_token(service.addr, &token(&old)).await.is_ok());
    assert!(generate_token(service.addr, &token(&new)).await.is_err());
    // Nothing changed: nothing reloads (and the verified-token cache stays warm).
    assert_eq!(
        outcome_of_source(service.reloader.reload(Trigger::Poll).await),
        Reloaded::Unchanged
    );

    write_jwks(&[&new]);
    let outcome = outcome_of_source(service.reloader.reload(Trigger::Poll).await);
    assert!(matches!(outcome, Reloaded::Changed(_)), "{outcome:?}");
    assert!(generate_token(service.addr, &token(&new)).await.is_ok());
    assert_status(
        generate_token(service.addr, &token(&old)).await,
        Code::Unauthenticated,
        "Forbidden by auth provider",
    );

    std::fs::write(&jwks_file, "{\"keys\": [").unwrap();
    let outcome = outcome_of_source(service.reloader.reload(Trigger::Signal).await);
    assert!(matches!(outcome, Reloaded::Failed(_)), "{outcome:?}");
    assert!(!service.reloader.healthy());
    assert!(generate_token(service.addr, &token(&new)).await.is_ok());
    let (_, _, page) =
        support::get_with_host(service.operator_addr, "/key-sources", "localhost").await;
    assert!(page.contains("reload failed"), "{page}");
    // A file without a usable key is a failure too, not an empty key set.
    std::fs::write(&jwks_file, "{\"keys\": []}").unwrap();
    let outcome = outcome_of_source(service.reloader.reload(Trigger::Poll).await);
    assert!(matches!(outcome, Reloaded::Failed(_)), "{outcome:?}");
    assert!(generate_token(service.addr, &token(&new)).await.is_ok());

    write_jwks(&[&old, &new]);
    service.reloader.reload(Trigger::Poll).await;
    assert!(service.reloader.healthy());
    for k in [&old, &new] {
        assert!(generate_token(service.addr, &token(k)).await.is_ok());
    }
}

#[tokio::test]
async fn pem_static_sources_serve_ec_and_ed25519_keys() {
    let dir = TempDir::new();
    let (es, ed) = (key("es256-instance"), key("eddsa-instance"));
    let pem = format!(
        "{}{}",
        es.key.public_key().to_pem(),
        ed.key.public_key().to_pem()
    );
    let pem_path = dir.write("keys.pem", &pem);
    let config = dir.write(
        "config.toml",
        &format!(
            "[[key_sources]]\ntype = \"static\"\nname = \"pem\"\nissuer = \"{GITLAB}\"\npem_file = \"{}\"\n",
            pem_path.display()
        ),
    );
    let service = start_service(Some(&config), &[]).await.unwrap();
    for signer in [&es, &ed] {
        for with_kid in [true, false] {
            let mut request = instance_request(GITLAB, &[EXECUTE]);
            request.with_kid = with_kid;
            let t = mint(&signer.key, &request);
            assert!(generate_token(service.addr, &Headers::bearer(&t))
                .await
                .is_ok());
        }
    }
}

#[tokio::test]
async fn debug_mode_in_any_letter_case() {
    let executor = support::executor::start().await;
    let upstream = format!("http://{}", executor.addr);
    let service = start_service(
        None,
        &[
            (ENV_AUTH_ENABLED, "FaLsE"),
            (ENV_UPSTREAM_URL, upstream.as_str()),
        ],
    )
    .await
    .unwrap();
    let mut headers = Headers::none();
    headers.global_user_id = Some("user-5".into());
    let response = generate_token(service.addr, &headers).await.unwrap();
    assert_eq!(decode_segment(&response.token, 1)["sub"], "user-5");
    assert_eq!(
        execute_workflow(service.addr, &Headers::none())
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn expired_and_foreign_audience_tokens_are_refused_and_the_service_goes_on() {
    let dir = TempDir::new();
    let instance_key = key("rs256-instance");
    let config = static_source_config(&dir, GITLAB, &[&instance_key]);
    let service = start_service(Some(&config), &[]).await.unwrap();
    let mut wrong_audience = instance_request(GITLAB, &[EXECUTE]);
    wrong_audience.audience = vec!["gitlab-ai-gateway".into()];
    let mut too_long = instance_request(GITLAB, &[EXECUTE]);
    too_long.lifetime_seconds = 30 * 24 * 3600;
    for request in [wrong_audience, too_long] {
        let t = mint(&instance_key.key, &request);
        assert_status(
            generate_token(service.addr, &Headers::bearer(&t)).await,
            Code::Unauthenticated,
            "Forbidden by auth provider",
        );
    }
    let good = mint(&instance_key.key, &instance_request(GITLAB, &[EXECUTE]));
    assert!(generate_token(service.addr, &Headers::bearer(&good))
        .await
        .is_ok());
}

#[tokio::test]
async fn a_bad_signing_key_stops_start_up_naming_the_variable() {
    let error = start_service(
        None,
        &[(
            ENV_SIGNING_KEY,
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        )],
    )
    .await
    .err()
    .expect("start-up must fail");
    let message = error.to_string();
    assert!(message.contains(ENV_SIGNING_KEY), "{message}");
    assert!(
        !message.contains("AAAA"),
        "key material leaked into the error: {message}"
    );
    // From a file, the error names the file key, not the variable.
    let dir = TempDir::new();
    let pem = dir.write(
        "bad.pem",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let file = dir.write(
        "config.toml",
        &format!(
            "[self_signed_jwt]\nsigning_key_file = \"{}\"\n",
            pem.display()
        ),
    );
    let message = start_service(Some(&file), &[])
        .await
        .err()
        .expect("start-up must fail")
        .to_string();
    assert!(
        message.contains("self_signed_jwt.signing_key_file"),
        "{message}"
    );
    assert!(!message.contains(ENV_SIGNING_KEY), "{message}");
}

#[tokio::test]
async fn pkcs1_signing_keys_load() {
    // What `openssl genrsa` and Ruby write: BEGIN RSA PRIVATE KEY.
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    let pkcs8 = key("rs256-authority");
    let private = rsa::RsaPrivateKey::from_pkcs8_pem(&pkcs8.pem).unwrap();
    let pkcs1 = private
        .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
        .unwrap()
        .to_string();
    assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let service = start_service(
        None,
        &[
            (ENV_SIGNING_KEY, pkcs1.as_str()),
            (ENV_AUTH_ENABLED, "false"),
        ],
    )
    .await
    .unwrap();
    let mut headers = Headers::none();
    headers.global_user_id = Some("u".into());
    let response = generate_token(service.addr, &headers).await.unwrap();
    assert_eq!(decode_segment(&response.token, 0)["kid"], pkcs1_kid(&pkcs1));
}

fn pkcs1_kid(pem: &str) -> String {
    duo_workflow_adapters::jose::signing::SigningKey::from_pem(pem)
        .unwrap()
        .kid()
        .to_owned()
}

/// Readiness of the whole service (the `""` health entry): serving or not.
async fn ready(addr: std::net::SocketAddr) -> bool {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
}

/// Issue 14, item 4: an executor whose authentication is on (it shares this service's
/// authority key) once refused the start-up `ListCapabilities`, and every token minted in the
/// next ten seconds or more said `server_capabilities: []`. Now the service asks with a
/// short-lived token of its own, and stays unready until the answer (or its wait) comes: the
/// first token already carries them.
#[tokio::test]
async fn the_first_user_token_carries_the_capabilities_of_an_executor_whose_auth_is_on() {
    let authority = key("rs256-authority");
    let upstream = support::executor::start().await;
    *upstream.executor.capabilities_delay.lock().unwrap() =
        Some(std::time::Duration::from_millis(1500));
    // The executor's authentication: a token of this service's authority, for this service,
    // whose subject is the user header.
    let verifier = authority.clone();
    *upstream.executor.authentication.lock().unwrap() = Some(std::sync::Arc::new(
        move |metadata: &tonic::metadata::MetadataMap| {
            let refuse = || tonic::Status::unauthenticated("Forbidden by auth provider");
            let bearer = metadata
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(refuse)?;
            let (signed, signature) = bearer.rsplit_once('.').ok_or_else(refuse)?;
            let signature = support::b64_decode(signature);
            if !verifier.key.public_key().verify(
                duo_workflow_domain::keys::Algorithm::RS256,
                signed.as_bytes(),
                &signature,
            ) {
                return Err(refuse());
            }
            let claims = decode_segment(bearer, 1);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let lifetime = claims["exp"].as_u64().unwrap() - now;
            assert!(lifetime <= 300, "lives {lifetime} s");
            assert_eq!(claims["iss"], SERVICE);
            assert_eq!(claims["aud"], SERVICE);
            assert_eq!(claims["scopes"], serde_json::json!([]));
            let user = metadata
                .get("x-gitlab-global-user-id")
                .unwrap()
                .to_str()
                .unwrap();
            assert_eq!(claims["sub"], user);
            Ok(())
        },
    ));
    let dir = TempDir::new();
    let instance_key = key("rs256-instance");
    let config = static_source_config(&dir, GITLAB, &[&instance_key]);
    let upstream_url = format!("http://{}", upstream.addr);
    let started = std::time::Instant::now();
    let service = start_service(
        Some(&config),
        &[
            (ENV_SIGNING_KEY, authority.pem.as_str()),
            (ENV_UPSTREAM_URL, &upstream_url),
        ],
    )
    .await
    .unwrap();
    // Unready while the executor thinks, ready once it answered.
    assert!(
        !ready(service.addr).await,
        "ready before the executor's capabilities came"
    );
    while !ready(service.addr).await {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "never ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    println!("ready {:?} after start", started.elapsed());
    let headers = Headers::bearer(&support::instance_token(
        &instance_key,
        GITLAB,
        &[AGENT_PLATFORM],
    ));
    let first = generate_token(service.addr, &headers).await.unwrap();
    assert_eq!(first.server_capabilities, support::executor::CAPABILITIES);
    let seen = upstream.executor.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].rpc, "ListCapabilities");
    assert_eq!(seen[0].header("x-gitlab-authentication-type"), Some("oidc"));
    assert_eq!(seen[0].header("x-gitlab-realm"), None);
}

/// An executor that never answers holds readiness for `capabilities_wait_seconds`, no longer.
#[tokio::test]
async fn readiness_waits_for_a_silent_executor_no_longer_than_its_wait() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let dir = TempDir::new();
    let config = static_source_config(&dir, GITLAB, &[&key("rs256-instance")]);
    let upstream_url = format!("http://{addr}");
    let started = std::time::Instant::now();
    let service = start_service(
        Some(&config),
        &[
            (ENV_UPSTREAM_URL, &upstream_url),
            (
                duo_workflow_service::config::ENV_UPSTREAM_CAPABILITIES_WAIT_SECONDS,
                "1",
            ),
        ],
    )
    .await
    .unwrap();
    while !ready(service.addr).await {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "never ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let waited = started.elapsed();
    println!("ready {waited:?} after start with a silent executor");
    assert!(
        waited >= std::time::Duration::from_millis(900),
        "{waited:?}"
    );
}
