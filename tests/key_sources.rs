//! Remote key sources end to end: fake GitLab and CustomersDot providers on loopback (discovery +
//! JWKS, `Cache-Control: max-age=86400` as GitLab sends), the real service in front of them.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use duo_workflow_service::cli::mint;
use duo_workflow_service::config::{
    ENV_AIGW_GITLAB_URL, ENV_OIDC_CUSTOMER_PORTAL_URL, ENV_OIDC_GITLAB_URL, ENV_SIGNING_KEY,
};
use duo_workflow_service::server::health_name;
use support::provider::{self, Mode, Provider};
use support::Running;
use support::{
    assert_status, execute_workflow, generate_token, get_with_host, instance_request, key,
    start_service, start_service_unsetting, Headers, TempDir, EXECUTE, SERVICE,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Refresh every second, so failure modes are exercised within a test's time.
const FAST_REFRESH: &str =
    "[auth.refresh]\nmin_seconds = 1\nmax_seconds = 1\nmax_stale_seconds = 3600\ntimeout_ms = 1500\n";

async fn start_with(
    gitlab: &Provider,
    customers: Option<&Provider>,
    config: &str,
) -> (Running, TempDir) {
    let dir = TempDir::new();
    let file = dir.write("config.toml", config);
    let (g, c) = (
        gitlab.issuer(),
        customers.map(Provider::issuer).unwrap_or_default(),
    );
    let service = start_service(
        Some(&file),
        &[
            (ENV_OIDC_GITLAB_URL, g.as_str()),
            (ENV_OIDC_CUSTOMER_PORTAL_URL, c.as_str()),
        ],
    )
    .await
    .unwrap();
    (service, dir)
}

/// Calls until the token is accepted (the first keys load in the background), up to 10 s.
async fn accepted_eventually(service: &Running, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match generate_token(service.addr, &Headers::bearer(token)).await {
            Ok(_) => return,
            Err(s) if Instant::now() > deadline => panic!("never accepted: {s:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn token(signer: &str, issuer: &str, with_kid: bool) -> String {
    let mut request = instance_request(issuer, &[EXECUTE]);
    request.with_kid = with_kid;
    mint(&key(signer).key, &request)
}

async fn health(service: &Running, name: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", service.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let response = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: name.into(),
        })
        .await
        .unwrap();
    response.into_inner().status()
}

async fn health_eventually(service: &Running, name: &str, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(service, name).await != want {
        assert!(Instant::now() < deadline, "{name} never became {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Readiness says what a call finds: once a token of the source's issuer has been accepted,
/// `Check("key-source/gitlab")` answers SERVING at once. Readiness used to be set by a loop
/// every 250 ms, so for up to that long after the keys arrived it still said NOT_SERVING (the
/// interop flake `health.main.key_source_gitlab_serving`; a targeted loop saw it on 95 of 100
/// fresh processes checked right after their first accepted token).
#[tokio::test]
async fn a_source_whose_keys_just_verified_a_token_is_serving_at_once() {
    let gitlab = provider::start(vec![key("rs256-gitlab").jwk()]).await;
    let good = token("rs256-gitlab", &gitlab.issuer(), true);
    for _ in 0..5 {
        let (service, _dir) = start_with(&gitlab, None, "").await;
        accepted_eventually(&service, &good).await;
        assert_eq!(
            health(&service, "key-source/gitlab").await,
            ServingStatus::Serving
        );
        service.stop().await.unwrap();
    }
}

#[tokio::test]
async fn both_issuers_are_accepted_and_pinned_to_their_own_keys() {
    let gitlab = provider::start(vec![key("rs256-gitlab").jwk()]).await;
    let customers = provider::start(vec![key("rs256-customers").jwk()]).await;
    let (service, _dir) = start_with(&gitlab, Some(&customers), "").await;
    for with_kid in [true, false] {
        accepted_eventually(&service, &token("rs256-gitlab", &gitlab.issuer(), with_kid)).await;
        accepted_eventually(
            &service,
            &token("rs256-customers", &customers.issuer(), with_kid),
        )
        .await;
    }
    // A CustomersDot key cannot sign for GitLab, nor a GitLab key for the service's own issuer.
    for (signer, issuer) in [
        ("rs256-customers", gitlab.issuer()),
        ("rs256-gitlab", SERVICE.to_owned()),
    ] {
        for with_kid in [true, false] {
            let mut headers = Headers::bearer(&token(signer, &issuer, with_kid));
            headers.global_user_id = Some("instance-1".into());
            assert_status(
                generate_token(service.addr, &headers).await,
                Code::Unauthenticated,
                "Forbidden by auth provider",
            );
        }
    }
    health_eventually(&service, "key-source/gitlab", ServingStatus::Serving).await;
    health_eventually(&service, "key-source/customers-dot", ServingStatus::Serving).await;
}

#[tokio::test]
async fn a_rotation_is_picked_up_on_the_first_token_with_or_without_kid() {
    for with_kid in [true, false] {
        let gitlab = provider::start(vec![key("rs256-gitlab").jwk()]).await;
        let (service, _dir) = start_with(&gitlab, None, "").await;
        accepted_eventually(&service, &token("rs256-gitlab", &gitlab.issuer(), with_kid)).await;
        let before = gitlab.jwks_fetches();

        // GitLab rotates (max-age=86400 promised a day of the old set): the very first token
        // signed with the new key is accepted, after one refetch.
        gitlab.set_keys(vec![
            key("rs256-gitlab-next").jwk(),
            key("rs256-gitlab").jwk(),
        ]);
        let rotated = Instant::now();
        let t = token("rs256-gitlab-next", &gitlab.issuer(), with_kid);
        let result = generate_token(service.addr, &Headers::bearer(&t)).await;
        let elapsed = rotated.elapsed();
        assert!(result.is_ok(), "rotation not picked up: {result:?}");
        assert_eq!(gitlab.jwks_fetches(), before + 1);
        eprintln!(
            "rotation (kid: {with_kid}) to acceptance: {:.1} ms, 1 refetch",
            elapsed.as_secs_f64() * 1e3
        );
        // The old key keeps working while it is published.
        assert!(generate_token(
            service.addr,
            &Headers::bearer(&token("rs256-gitlab", &gitlab.issuer(), with_kid))
        )
        .await
        .is_ok());
    }
}

#[tokio::test]
async fn a_flood_of_random_kids_costs_at_most_one_fetch_per_window() {
    let gitlab = provider::start(vec![key("rs256-gitlab").jwk()]).await;
    let (service, _dir) = start_with(&gitlab, None, "").await;
    accepted_eventually(&service, &token("rs256-gitlab", &gitlab.issuer(), true)).await;
    let signer = key("rs256-attacker");
    let forged: Vec<String> = (0..500)
        .map(|i| {
            let mut request = instance_request(&gitlab.issuer(), &[EXECUTE]);
            request.with_kid = true;
            // A token whose kid names no key of the issuer: sign with a key whose thumbprint is
            // unknown, then splice a random kid into the header.
            let real = mint(&signer.key, &request);
            with_header_kid(&real, &format!("random-{i}-{}", uuid::Uuid::new_v4()))
        })
        .collect();
    let before = gitlab.jwks_fetches();
    let started = Instant::now();
    for result in all_at_once(&service, forged).await {
        forbidden(result);
    }
    let elapsed = started.elapsed();
    let fetches = gitlab.jwks_fetches() - before;
    eprintln!(
        "500 random-kid tokens in {:.0} ms caused {fetches} JWKS fetch(es)",
        elapsed.as_secs_f64() * 1e3
    );
    // One window of 10 s: the flood may trigger one refetch, and the background schedule
    // (max-age=86400, capped to 1 h) none.
    assert!(fetches <= 1, "{fetches} fetches");
    // Good tokens are still accepted without waiting.
    assert!(generate_token(
        service.addr,
        &Headers::bearer(&token("rs256-gitlab", &gitlab.issuer(), true))
    )
    .await
    .is_ok());
}

/// Replaces the `kid` of a compact JWS header (the signature no longer matters: no key has it).
fn with_header_kid(token: &str, kid: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let mut header: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts.next().unwrap()).unwrap()).unwrap();
    header["kid"] = serde_json::json!(kid);
    let rest: Vec<&str> = parts.collect();
    format!(
        "{}.{}",
        b64.encode(serde_json::to_vec(&header).unwrap()),
        rest.join(".")
    )
}

#[tokio::test]
async fn provider_failures_keep_the_cached_keys_and_spare_other_issuers() {
    let gitlab = provider::start(vec![key("rs256-gitlab").jwk()]).await;
    let customers = provider::start(vec![key("rs256-customers").jwk()]).await;
    let (service, _dir) = start_with(&gitlab, Some(&customers), FAST_REFRESH).await;
    let gitlab_token = token("rs256-gitlab", &gitlab.issuer(), false);
    let customers_token = token("rs256-customers", &customers.issuer(), true);
    accepted_eventually(&service, &gitlab_token).await;
    accepted_eventually(&service, &customers_token).await;

    for mode in [
        Mode::ServerError,
        Mode::Garbage,
        Mode::Huge,
        Mode::Redirect,
        Mode::Hang,
    ] {
        gitlab.set_mode(mode);
        let fetches = gitlab.jwks_fetches() + gitlab.discovery_fetches.load(Ordering::SeqCst);
        // Let at least two background refreshes fail.
        let deadline = Instant::now() + Duration::from_secs(10);
        while gitlab.jwks_fetches() + gitlab.discovery_fetches.load(Ordering::SeqCst) < fetches + 2
        {
            assert!(Instant::now() < deadline, "{mode:?}: no refresh attempted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Cached keys still verify (kid-less: every cached key is tried).
        assert!(
            generate_token(service.addr, &Headers::bearer(&gitlab_token))
                .await
                .is_ok(),
            "{mode:?}"
        );
        // A miss on the failing issuer waits at most the refetch deadline...
        let unknown = token("rs256-attacker", &gitlab.issuer(), true);
        let started = Instant::now();
        assert_status(
            generate_token(service.addr, &Headers::bearer(&unknown)).await,
            Code::Unauthenticated,
            "Forbidden by auth provider",
        );
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{mode:?}: a miss waited {:?}",
            started.elapsed()
        );
        // ...and the other issuer is not slowed down at all.
        let started = Instant::now();
        assert!(
            generate_token(service.addr, &Headers::bearer(&customers_token))
                .await
                .is_ok()
        );
        let other = started.elapsed();
        assert!(
            other < Duration::from_secs(1),
            "{mode:?}: other issuer took {other:?}"
        );
        eprintln!(
            "{mode:?}: cached keys kept; other issuer answered in {:.1} ms",
            other.as_secs_f64() * 1e3
        );
    }
    health_eventually(&service, "key-source/gitlab", ServingStatus::Serving).await;
    gitlab.set_mode(Mode::Healthy);
}

#[tokio::test]
async fn start_up_with_a_provider_down_then_recovery() {
    // Reserve a port, then free it: nothing listens there at start-up.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let issuer = format!("http://{addr}");
    let dir = TempDir::new();
    let file = dir.write(
        "config.toml",
        "[auth]\noidc_gitlab_required = true\n[auth.refresh]\nmin_seconds = 1\nmax_seconds = 1\nmax_stale_seconds = 3600\n",
    );
    let service = start_service(Some(&file), &[(ENV_OIDC_GITLAB_URL, issuer.as_str())])
        .await
        .unwrap();
    let t = token("rs256-gitlab", &issuer, false);
    // The service is up, answers, and says why it cannot judge this issuer's tokens.
    assert_status(
        generate_token(service.addr, &Headers::bearer(&t)).await,
        Code::Unavailable,
        "Keys of the token's issuer are not available",
    );
    health_eventually(&service, "", ServingStatus::NotServing).await;
    health_eventually(&service, "key-source/gitlab", ServingStatus::NotServing).await;
    let report = key_source_report(&service, "gitlab").await;
    assert_eq!(report["state"], "pending");
    assert_eq!(report["required"], true);
    assert!(report["issuer"].is_null(), "not discovered yet: {report}");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("connection failed"),
        "{report}"
    );

    let _gitlab = provider::start_on(addr, vec![key("rs256-gitlab").jwk()]).await;
    accepted_eventually(&service, &t).await;
    health_eventually(&service, "", ServingStatus::Serving).await;
    health_eventually(&service, "key-source/gitlab", ServingStatus::Serving).await;
    let report = key_source_report(&service, "gitlab").await;
    assert_eq!(report["state"], "ready");
    assert_eq!(report["issuer"], issuer);
    assert_eq!(report["keys"], 1);
    assert!(report["age_seconds"].as_i64().unwrap() < 60);
    assert_eq!(
        key_source_report(&service, "local-authority").await["state"],
        "ready"
    );
}

/// One source's entry in `GET /key-sources` on the operator listener.
async fn key_source_report(service: &Running, name: &str) -> serde_json::Value {
    let (status, body, _) =
        reqwest_get(&format!("http://{}/key-sources", service.operator_addr)).await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    doc["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap()
}

/// `GenerateToken` with `token` and the usual instance headers.
async fn call(
    service: &Running,
    token: &str,
) -> Result<duo_workflow_contract::GenerateTokenResponse, tonic::Status> {
    generate_token(service.addr, &Headers::bearer(token)).await
}

/// `GenerateToken` with every token at once, over one connection: many streams, as an attacker
/// multiplexing over HTTP/2 would.
async fn all_at_once(
    service: &Running,
    tokens: Vec<String>,
) -> Vec<Result<duo_workflow_contract::GenerateTokenResponse, tonic::Status>> {
    let client = support::client(service.addr).await;
    let calls: Vec<_> = tokens
        .into_iter()
        .map(|t| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut req = tonic::Request::new(duo_workflow_contract::GenerateTokenRequest {
                    workflow_definition: None,
                });
                Headers::bearer(&t).apply(req.metadata_mut());
                client.generate_token(req).await.map(|r| r.into_inner())
            })
        })
        .collect();
    let mut results = Vec::with_capacity(calls.len());
    for call in calls {
        results.push(call.await.unwrap());
    }
    results
}

#[track_caller]
fn forbidden<T: std::fmt::Debug>(result: Result<T, tonic::Status>) {
    assert_status(result, Code::Unauthenticated, "Forbidden by auth provider");
}

#[track_caller]
fn unavailable<T: std::fmt::Debug>(result: Result<T, tonic::Status>) {
    assert_status(
        result,
        Code::Unavailable,
        "Keys of the token's issuer are not available",
    );
}

/// Until `provider` has served `n` discovery documents, up to 10 s.
async fn discovery_fetched(provider: &Provider, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while provider.discovery_fetches() < n {
        assert!(
            Instant::now() < deadline,
            "only {} discovery fetches",
            provider.discovery_fetches()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Until `/key-sources` reports `name` with a reason containing `text`, up to 10 s.
async fn reason_eventually(service: &Running, name: &str, text: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = key_source_report(service, name).await;
        if report["reason"].as_str().is_some_and(|r| r.contains(text)) {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no reason with {text:?}: {report}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const EXTERNAL: &str = "https://gitlab.example.com";

#[tokio::test]
async fn an_internal_url_serves_the_external_issuer_its_document_names() {
    // GitLab reached as http://<internal>; its document names the issuer its tokens carry
    // (exactly: a trailing slash would be part of it, tests/providers.rs).
    let gitlab = provider::start(vec![key("rs256-gitlab").jwk()]).await;
    gitlab.set_discovery_issuer(EXTERNAL);
    let (service, _dir) = start_with(&gitlab, None, "").await;
    for with_kid in [true, false] {
        accepted_eventually(&service, &token("rs256-gitlab", EXTERNAL, with_kid)).await;
    }
    // The internal URL is not an issuer: a token claiming it is of an unknown issuer.
    for with_kid in [true, false] {
        forbidden(call(&service, &token("rs256-gitlab", &gitlab.issuer(), with_kid)).await);
    }
    // The keys stay pinned to the learned issuer: another issuer's key does not verify for it.
    forbidden(call(&service, &token("rs256-attacker", EXTERNAL, false)).await);
    health_eventually(&service, "key-source/gitlab", ServingStatus::Serving).await;
    let report = key_source_report(&service, "gitlab").await;
    assert_eq!(report["issuer"], EXTERNAL, "{report}");
    assert_eq!(report["issuer_from"], "discovery", "{report}");
    assert_eq!(report["state"], "ready", "{report}");
}

#[tokio::test]
async fn a_discovered_issuer_that_belongs_to_another_source_is_refused() {
    // The service's own name (the local authority's issuer), and a configured source's issuer.
    let configured = "https://configured.example";
    for (named, reason) in [
        (SERVICE, "this service's own name"),
        (configured, "\"file-source\" is configured with that issuer"),
    ] {
        let gitlab = provider::start(vec![key("rs256-gitlab").jwk()]).await;
        gitlab.set_discovery_issuer(named);
        let dir = TempDir::new();
        let jwks = dir.write(
            "other.jwks",
            &serde_json::json!({"keys": [key("rs256-customers").jwk()]}).to_string(),
        );
        let config = format!(
            "{FAST_REFRESH}[[key_sources]]\ntype = \"static\"\nname = \"file-source\"\nissuer = \"{configured}\"\njwks_file = \"{}\"\n",
            jwks.display()
        );
        let (service, _dir) = start_with(&gitlab, None, &config).await;
        discovery_fetched(&gitlab, 2).await;
        let report = reason_eventually(&service, "gitlab", reason).await;
        assert_eq!(report["state"], "pending", "{report}");
        assert!(report["issuer"].is_null(), "{report}");
        assert_eq!(report["issuer_from"], "discovery", "{report}");
        assert_eq!(
            gitlab.jwks_fetches(),
            0,
            "{named}: keys fetched for a refused issuer"
        );
        assert_eq!(
            health(&service, "key-source/gitlab").await,
            ServingStatus::NotServing
        );
        // Its keys verify nothing: not for the claimed issuer...
        let mut headers = Headers::bearer(&token("rs256-gitlab", named, true));
        headers.global_user_id = Some("instance-1".into());
        forbidden(generate_token(service.addr, &headers).await);
        // ...and a token of its URL cannot be judged while it knows no issuer.
        unavailable(call(&service, &token("rs256-gitlab", &gitlab.issuer(), true)).await);
        // The rightful owner is untouched.
        if named == configured {
            assert!(call(&service, &token("rs256-customers", configured, true))
                .await
                .is_ok());
        }
    }
}

#[tokio::test]
async fn two_built_in_sources_discovering_one_issuer_only_one_serves_it() {
    let gitlab = provider::start(vec![key("rs256-gitlab").jwk()]).await;
    let customers = provider::start(vec![key("rs256-customers").jwk()]).await;
    gitlab.set_discovery_issuer(EXTERNAL);
    customers.set_discovery_issuer(EXTERNAL);
    let (service, _dir) = start_with(&gitlab, Some(&customers), "").await;
    discovery_fetched(&gitlab, 1).await;
    discovery_fetched(&customers, 1).await;
    // Whichever claimed first serves it; the other is refused and says by whom.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (winner, loser) = loop {
        let g = key_source_report(&service, "gitlab").await;
        let c = key_source_report(&service, "customers-dot").await;
        match (g["state"].as_str(), c["state"].as_str()) {
            (Some("ready"), Some("pending")) if c["reason"].is_string() => break (g, c),
            (Some("pending"), Some("ready")) if g["reason"].is_string() => break (c, g),
            _ => {
                assert!(Instant::now() < deadline, "{g}\n{c}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(winner["issuer"], EXTERNAL);
    assert!(loser["issuer"].is_null(), "{loser}");
    let reason = loser["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "{:?} already serves it",
            winner["name"].as_str().unwrap()
        )),
        "{reason}"
    );
    let signer = |report: &serde_json::Value| match report["name"].as_str().unwrap() {
        "gitlab" => "rs256-gitlab",
        _ => "rs256-customers",
    };
    assert!(call(&service, &token(signer(&winner), EXTERNAL, true))
        .await
        .is_ok());
    forbidden(call(&service, &token(signer(&loser), EXTERNAL, true)).await);
    let loser_health = health_name(loser["name"].as_str().unwrap());
    assert_eq!(
        health(&service, &loser_health).await,
        ServingStatus::NotServing
    );
    // The loser fetched no keys.
    let loser_provider = if loser["name"] == "gitlab" {
        &gitlab
    } else {
        &customers
    };
    assert_eq!(loser_provider.jwks_fetches(), 0);
}

#[tokio::test]
async fn a_learned_issuer_is_kept_when_a_later_document_names_another() {
    let gitlab = provider::start(vec![key("rs256-gitlab").jwk()]).await;
    gitlab.set_discovery_issuer(EXTERNAL);
    let (service, _dir) = start_with(&gitlab, None, FAST_REFRESH).await;
    let good = token("rs256-gitlab", EXTERNAL, false);
    accepted_eventually(&service, &good).await;

    // The document now names another issuer, and publishes another key.
    let other = "https://elsewhere.example";
    gitlab.set_discovery_issuer(other);
    gitlab.set_keys(vec![key("rs256-gitlab-next").jwk()]);
    let jwks_before = gitlab.jwks_fetches();
    discovery_fetched(&gitlab, gitlab.discovery_fetches() + 2).await;
    let report = reason_eventually(&service, "gitlab", "first document").await;
    assert_eq!(report["state"], "stale", "{report}");
    assert_eq!(report["issuer"], EXTERNAL, "{report}");
    assert_eq!(
        gitlab.jwks_fetches(),
        jwks_before,
        "keys taken from the refused document"
    );
    // The last good keys still verify; nothing from the refused document does.
    assert!(call(&service, &good).await.is_ok());
    for (signer, issuer) in [
        ("rs256-gitlab-next", EXTERNAL),
        ("rs256-gitlab-next", other),
        ("rs256-gitlab", other),
    ] {
        forbidden(call(&service, &token(signer, issuer, true)).await);
    }
    health_eventually(&service, "key-source/gitlab", ServingStatus::Serving).await;
    // Back to the learned issuer: the refresh succeeds again, with the new key.
    gitlab.set_discovery_issuer(EXTERNAL);
    accepted_eventually(&service, &token("rs256-gitlab-next", EXTERNAL, true)).await;
    assert_eq!(
        key_source_report(&service, "gitlab").await["state"],
        "ready"
    );
}

#[tokio::test]
async fn an_unknown_issuer_cannot_be_judged_while_a_built_in_source_has_not_discovered_its_own() {
    // The provider fails at first: GitLab's source knows no issuer yet.
    let gitlab = provider::start(vec![key("rs256-gitlab").jwk()]).await;
    gitlab.set_mode(Mode::ServerError);
    gitlab.set_discovery_issuer(EXTERNAL);
    let (service, _dir) = start_with(&gitlab, None, "").await;
    discovery_fetched(&gitlab, 1).await;
    let report = key_source_report(&service, "gitlab").await;
    assert!(report["issuer"].is_null(), "{report}");
    // A flood of tokens with random issuers: each may be GitLab's, so each is UNAVAILABLE, and
    // together they cost at most one miss-triggered fetch (plus the background retries).
    let tokens: Vec<String> = (0..300)
        .map(|i| {
            token(
                "rs256-attacker",
                &format!("https://random-{i}.example"),
                true,
            )
        })
        .collect();
    let before = gitlab.discovery_fetches();
    let started = Instant::now();
    for result in all_at_once(&service, tokens).await {
        unavailable(result);
    }
    let fetches = gitlab.discovery_fetches() - before;
    let elapsed = started.elapsed();
    eprintln!(
        "300 random-issuer tokens in {:.0} ms caused {fetches} discovery fetch(es)",
        elapsed.as_secs_f64() * 1e3
    );
    // One miss-triggered fetch per 10 s window; the background retries, backing off from 1 s,
    // may add one or two while the flood runs.
    assert!(fetches <= 3, "{fetches} fetches");

    // Once the issuer is learned, an unknown issuer is simply forbidden.
    gitlab.set_mode(Mode::Healthy);
    accepted_eventually(&service, &token("rs256-gitlab", EXTERNAL, true)).await;
    forbidden(
        call(
            &service,
            &token("rs256-gitlab", "https://random.example", true),
        )
        .await,
    );
}

#[tokio::test]
async fn aigw_gitlab_url_is_read_only_when_the_gitlab_variable_is_unset() {
    let aigw = provider::start(vec![key("rs256-gitlab").jwk()]).await;
    let other = provider::start(vec![key("rs256-customers").jwk()]).await;
    let aigw_token = token("rs256-gitlab", &aigw.issuer(), true);
    let other_token = token("rs256-customers", &other.issuer(), true);

    // Unset: AIGW_GITLAB_URL configures the GitLab source.
    let service = start_service_unsetting(
        None,
        &[(ENV_AIGW_GITLAB_URL, aigw.issuer().as_str())],
        &[ENV_OIDC_GITLAB_URL],
    )
    .await
    .unwrap();
    accepted_eventually(&service, &aigw_token).await;
    assert_eq!(
        key_source_report(&service, "gitlab").await["issuer"],
        aigw.issuer()
    );

    // Set: DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL wins...
    let o = other.issuer();
    let service = start_service(
        None,
        &[
            (ENV_AIGW_GITLAB_URL, aigw.issuer().as_str()),
            (ENV_OIDC_GITLAB_URL, o.as_str()),
        ],
    )
    .await
    .unwrap();
    accepted_eventually(&service, &other_token).await;
    forbidden(call(&service, &aigw_token).await);

    // ...even empty: the GitLab source is disabled.
    let fetches = aigw.discovery_fetches();
    let service = start_service(
        None,
        &[
            (ENV_AIGW_GITLAB_URL, aigw.issuer().as_str()),
            (ENV_OIDC_GITLAB_URL, ""),
        ],
    )
    .await
    .unwrap();
    forbidden(call(&service, &aigw_token).await);
    assert_eq!(
        aigw.discovery_fetches(),
        fetches,
        "AIGW_GITLAB_URL was read"
    );
    let (status, body, _) =
        reqwest_get(&format!("http://{}/key-sources", service.operator_addr)).await;
    assert_eq!(status, 200);
    assert!(!String::from_utf8(body).unwrap().contains("\"gitlab\""));
}

#[tokio::test]
async fn a_file_oidc_source_refuses_a_document_naming_another_issuer() {
    // Checklist row 17: a configured issuer is not learned, it is checked.
    let idp = provider::start(vec![key("rs256-gitlab").jwk()]).await;
    idp.set_discovery_issuer("https://evil.example");
    let dir = TempDir::new();
    let file = dir.write(
        "config.toml",
        &format!(
            "[[key_sources]]\ntype = \"oidc\"\nname = \"idp\"\nissuer = \"{}\"\nrefresh = {{ min_seconds = 1, max_seconds = 1 }}\n",
            idp.issuer()
        ),
    );
    let service = start_service(Some(&file), &[]).await.unwrap();
    discovery_fetched(&idp, 2).await;
    assert_eq!(
        idp.jwks_fetches(),
        0,
        "keys were fetched from an unverified discovery document"
    );
    unavailable(call(&service, &token("rs256-gitlab", &idp.issuer(), true)).await);
    forbidden(
        call(
            &service,
            &token("rs256-gitlab", "https://evil.example", true),
        )
        .await,
    );
    assert_eq!(
        health(&service, "key-source/idp").await,
        ServingStatus::NotServing
    );
    let report = reason_eventually(&service, "idp", "names issuer \"https://evil.example\"").await;
    assert_eq!(report["issuer"], idp.issuer());
    assert_eq!(report["issuer_from"], "configuration");
    // A trailing slash is the only tolerated difference.
    idp.set_discovery_issuer(&format!("{}/", idp.issuer()));
    accepted_eventually(&service, &token("rs256-gitlab", &idp.issuer(), true)).await;
}

#[tokio::test]
async fn unusable_jwks_entries_are_dropped_and_the_rest_kept() {
    let good = key("rs256-gitlab").jwk();
    let mut private = key("rs256-other").jwk();
    private["d"] = serde_json::json!("AQAB");
    let keys = vec![
        serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}),
        private,
        serde_json::json!({"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"}),
        serde_json::json!({"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"}),
        serde_json::json!("not an object"),
        good,
    ];
    let gitlab = provider::start(keys).await;
    let (service, _dir) = start_with(&gitlab, None, "").await;
    accepted_eventually(&service, &token("rs256-gitlab", &gitlab.issuer(), true)).await;
    accepted_eventually(&service, &token("rs256-gitlab", &gitlab.issuer(), false)).await;
}

#[tokio::test]
async fn another_instance_trusts_published_user_tokens_through_discovery() {
    let authority = key("rs256-authority");
    let a = start_service(
        None,
        &[
            (ENV_SIGNING_KEY, authority.pem.as_str()),
            ("DUO_WORKFLOW_AUTH__ENABLED", "false"),
        ],
    )
    .await
    .unwrap();
    let mut headers = Headers::none();
    headers.global_user_id = Some("user-77".into());
    headers.realm = Some("self-managed".into());
    headers.instance_id = Some("instance-1".into());
    let user_token = generate_token(a.addr, &headers).await.unwrap().token;

    // Instance B has its own authority key, and trusts A's published keys by configuration.
    let dir = TempDir::new();
    let file = dir.write(
        "config.toml",
        &format!(
            "[[key_sources]]\ntype = \"oidc\"\nname = \"peer\"\nissuer = \"{SERVICE}\"\ndiscovery_url = \"http://{}\"\n",
            a.http_addr
        ),
    );
    let b = start_service(Some(&file), &[]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match execute_workflow(b.addr, &Headers::bearer(&user_token)).await {
            Err(s) if s.code() == Code::Unimplemented => break, // authenticated and authorized
            other if Instant::now() > deadline => {
                panic!("B never trusted A's user token: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // B's trust in A is for user tokens only: they still cannot mint.
    assert_status(
        generate_token(b.addr, &Headers::bearer(&user_token)).await,
        Code::PermissionDenied,
        "Unauthorized to generate token",
    );
}

#[tokio::test]
async fn the_published_discovery_document_and_jwks() {
    let authority = key("rs256-authority");
    let previous = key("es256-previous");
    let service = start_service(
        None,
        &[
            (ENV_SIGNING_KEY, authority.pem.as_str()),
            (
                "DUO_WORKFLOW_SELF_SIGNED_JWT__VALIDATION_KEY",
                previous.pem.as_str(),
            ),
        ],
    )
    .await
    .unwrap();
    let get = |path: &str| {
        let url = format!("http://{}{path}", service.http_addr);
        async move {
            let response = reqwest_get(&url).await;
            (
                response.0,
                serde_json::from_slice::<serde_json::Value>(&response.1).unwrap(),
                response.2,
            )
        }
    };
    let (status, doc, _) = get("/.well-known/openid-configuration").await;
    assert_eq!(status, 200);
    assert_eq!(doc["issuer"], SERVICE);
    assert_eq!(
        doc["jwks_uri"],
        format!("http://{}/oauth/discovery/keys", service.http_addr)
    );
    let (status, jwks, cache_control) = get("/oauth/discovery/keys").await;
    assert_eq!(status, 200);
    assert!(cache_control.unwrap().contains("max-age="));
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [authority.kid(), previous.kid()]);
    for k in jwks["keys"].as_array().unwrap() {
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(
                k.get(private).is_none(),
                "published a private member {private}"
            );
        }
    }
    assert_eq!(jwks["keys"][0]["alg"], "RS256");
    assert_eq!(jwks["keys"][1]["alg"], "ES256");

    // Operator pages are not on the public port (checklist 31), but on the operator listener.
    for path in ["/key-sources", "/metrics"] {
        let public = reqwest_get(&format!("http://{}{path}", service.http_addr)).await;
        assert_eq!(public.0, 404, "{path} is served on the published-keys port");
        let operator = reqwest_get(&format!("http://{}{path}", service.operator_addr)).await;
        assert_eq!(operator.0, 200, "{path}");
        assert_eq!(operator.2.as_deref(), Some("no-store"), "{path}");
    }
    assert!(service.operator_addr.ip().is_loopback());
}

/// A minimal HTTP/1.1 GET over a TCP stream: status, body, Cache-Control.
async fn reqwest_get(url: &str) -> (u16, Vec<u8>, Option<String>) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let (status, head, body) = get_with_host(host.parse().unwrap(), path, host).await;
    let cache_control = head.lines().find_map(|l| {
        l.strip_prefix("cache-control:")
            .map(|v| v.trim().to_owned())
    });
    (status, body.into_bytes(), cache_control)
}

/// Checklist row 32: a `Host` header chooses the published `jwks_uri` only in a document no shared
/// cache may keep, and a malformed one is refused; with `http.public_url` the `Host` is ignored.
#[tokio::test]
async fn the_host_header_never_chooses_a_jwks_uri_that_caches_keep() {
    let service = start_service(None, &[]).await.unwrap();
    let discovery = "/.well-known/openid-configuration";
    let (status, head, body) =
        get_with_host(service.http_addr, discovery, "attacker.example").await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        doc["jwks_uri"],
        "http://attacker.example/oauth/discovery/keys"
    );
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(head.contains("vary: host"), "{head}");
    assert!(!head.contains("public"), "{head}");
    for malformed in [
        "attacker.example/x",
        "a b",
        "user@host",
        "host:99999",
        "[::1",
        "-x",
    ] {
        let (status, _, _) = get_with_host(service.http_addr, discovery, malformed).await;
        assert_eq!(status, 400, "{malformed:?}");
    }
    // The JWKS does not depend on the Host: it stays publicly cacheable.
    let (_, head, _) = get_with_host(service.http_addr, "/oauth/discovery/keys", "anything").await;
    assert!(head.contains("cache-control: public"), "{head}");

    let dir = TempDir::new();
    let file = dir.write(
        "config.toml",
        "[http]\npublic_url = \"https://dws.example.com/\"\n",
    );
    let configured = start_service(Some(&file), &[]).await.unwrap();
    let (status, head, body) =
        get_with_host(configured.http_addr, discovery, "attacker.example").await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        doc["jwks_uri"],
        "https://dws.example.com/oauth/discovery/keys"
    );
    assert!(head.contains("cache-control: public"), "{head}");
}
