//! Issue 16 through gRPC: tokens shaped like Keycloak's, Okta's, Auth0's and Azure AD's, each
//! made usable by configuration alone (claim mapping, audiences, algorithms, issuers as written,
//! refresh without `Cache-Control`), and what each refuses.

mod support;

use duo_workflow_service::config::ENV_SIGNING_KEY;
use serde_json::{json, Value};
use support::Running;
use support::{
    assert_status, decode_segment, execute_workflow, generate_token, generate_token_for, key,
    sign_raw, start_service, Headers, SigningKeyPem, TempDir, AGENT_PLATFORM, CHAT, EXECUTE,
    SERVICE,
};
use tonic::Code;

const IDP: &str = "https://idp.test/realms/acme";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A compact JWS of `claims` signed by `key`, its header naming `alg` and `kid`.
fn jws(key: &SigningKeyPem, alg: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    sign_raw(
        &key.key,
        &serde_json::to_vec(&header).unwrap(),
        &serde_json::to_vec(claims).unwrap(),
    )
}

/// A token with exactly these claims (plus fresh times), signed by `key` with its kid.
fn provider_token(key: &SigningKeyPem, alg: &str, claims: Value) -> String {
    let mut c = claims;
    let now = now();
    c["iat"] = json!(now);
    c["exp"] = json!(now + 600);
    jws(key, alg, Some(key.kid()), &c)
}

/// A service trusting `key` for `issuer` through a static source with `extra` TOML lines
/// (its audiences, algorithms and `[key_sources.claims]`).
async fn service_with(dir: &TempDir, issuer: &str, key: &SigningKeyPem, extra: &str) -> Running {
    let jwks = json!({"keys": [key.jwk()]});
    let jwks_path = dir.write("idp.jwks", &jwks.to_string());
    let config = dir.write(
        "config.toml",
        &format!(
            "[[key_sources]]\ntype = \"static\"\nname = \"idp\"\nissuer = \"{issuer}\"\njwks_file = \"{}\"\n{extra}",
            jwks_path.display()
        ),
    );
    let authority = support::key("rs256-authority");
    start_service(Some(&config), &[(ENV_SIGNING_KEY, authority.pem.as_str())])
        .await
        .unwrap()
}

/// The headers a client of `instance` sends with `token`: no realm (providers' tokens carry no
/// `gitlab_realm`).
fn headers(token: &str, instance: &str) -> Headers {
    let mut h = Headers::bearer(token);
    h.instance_id = Some(instance.into());
    h
}

const KEYCLOAK_CLAIMS: &str = include_str!("fixtures/keycloak_claims.toml");

fn keycloak_claims(scope: &str) -> Value {
    json!({
        "iss": IDP, "aud": ["dws", "account"], "azp": "gitlab-instance-7",
        "sub": "4f1e7d0c-service-account", "scope": scope, "typ": "Bearer",
    })
}

#[tokio::test]
async fn a_keycloak_token_is_read_by_its_mapping_and_its_user_token_keeps_our_issuer() {
    let dir = TempDir::new();
    let idp = key("rs256-idp");
    let service = service_with(&dir, IDP, &idp, KEYCLOAK_CLAIMS).await;

    let token = provider_token(&idp, "RS256", keycloak_claims("openid profile dws:run"));
    let minted = generate_token(service.addr, &headers(&token, "gitlab-instance-7"))
        .await
        .unwrap();
    let claims = decode_segment(&minted.token, 1);
    // The user token is this service's, whatever the caller's provider said.
    assert_eq!(claims["iss"], SERVICE);
    assert_eq!(claims["aud"], SERVICE);
    // Mapped unit primitives only, within the delegable set; `openid`, `profile` never copied.
    assert_eq!(claims["scopes"], json!([AGENT_PLATFORM, EXECUTE]));
    assert_eq!(claims["gitlab_instance_id"], "gitlab-instance-7");
    // Authenticated and authorized: with no executor configured, the call ends there.
    assert_status(
        execute_workflow(service.addr, &headers(&minted.token, "gitlab-instance-7")).await,
        Code::Unimplemented,
        "No workflow executor configured",
    );

    // `dws:chat` maps to duo_chat: chat, not the agent platform.
    let chat = provider_token(&idp, "RS256", keycloak_claims("dws:chat"));
    assert!(generate_token_for(
        service.addr,
        &headers(&chat, "gitlab-instance-7"),
        Some("chat")
    )
    .await
    .is_ok());
    assert_status(
        generate_token(service.addr, &headers(&chat, "gitlab-instance-7")).await,
        Code::PermissionDenied,
        "Unauthorized to generate token",
    );
    // A provider scope spelled like a unit primitive but not in the map grants nothing.
    let unmapped = provider_token(
        &idp,
        "RS256",
        keycloak_claims("duo_agent_platform duo_chat"),
    );
    assert_status(
        execute_workflow(service.addr, &headers(&unmapped, "gitlab-instance-7")).await,
        Code::PermissionDenied,
        "Unauthorized to execute software_development",
    );
}

#[tokio::test]
async fn the_instance_is_bound_from_the_mapped_claim_not_sub() {
    let dir = TempDir::new();
    let idp = key("rs256-idp");
    let service = service_with(&dir, IDP, &idp, KEYCLOAK_CLAIMS).await;
    let token = provider_token(&idp, "RS256", keycloak_claims("dws:run"));
    assert_status(
        generate_token(service.addr, &headers(&token, "4f1e7d0c-service-account")).await,
        Code::Unauthenticated,
        "Header mismatch 'X-Gitlab-Instance-Id'",
    );
    assert!(
        generate_token(service.addr, &headers(&token, "gitlab-instance-7"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn audiences_replace_the_service_name_for_that_source_only() {
    let dir = TempDir::new();
    let idp = key("rs256-idp");
    let service = service_with(&dir, IDP, &idp, KEYCLOAK_CLAIMS).await;
    for (aud, accepted) in [
        (json!("dws"), true),
        (json!(["account", "dws"]), true),
        (json!(SERVICE), false),
        (json!("api://other"), false),
    ] {
        let mut claims = keycloak_claims("dws:run");
        claims["aud"] = aud.clone();
        let token = provider_token(&idp, "RS256", claims);
        let result = generate_token(service.addr, &headers(&token, "gitlab-instance-7")).await;
        if accepted {
            assert!(result.is_ok(), "{aud}: {result:?}");
        } else {
            assert_status(result, Code::Unauthenticated, "Forbidden by auth provider");
        }
    }
}

/// The four shapes of issue 16, each only TOML: the claim of unit primitives and its form, the
/// audience, the claim naming the instance.
#[tokio::test]
async fn okta_auth0_and_azure_shapes_are_usable_by_configuration() {
    let idp = key("rs256-idp");
    let cases = [
        (
            "okta: scp array, cid",
            "https://acme.okta.test/oauth2/default",
            "audiences = [\"api://default\"]\n[key_sources.claims]\nscopes = [\"scp\"]\ninstance_id = \"cid\"\n",
            json!({"aud": "api://default", "cid": "0oa-inst", "sub": "0oa-inst",
                   "scp": [AGENT_PLATFORM, "openid"]}),
            "0oa-inst",
        ),
        (
            "auth0: scope string, azp, issuer with a slash",
            "https://acme.auth0.test/",
            "audiences = [\"https://dws.example.com\"]\n[key_sources.claims]\nscopes = [\"scope\", \"permissions\"]\ninstance_id = \"azp\"\n",
            json!({"aud": "https://dws.example.com", "azp": "Xy1Client", "sub": "Xy1Client@clients",
                   "scope": format!("{AGENT_PLATFORM} {CHAT}")}),
            "Xy1Client",
        ),
        (
            "azure ad v1: roles, appid",
            "https://sts.windows.test/8e3a-tenant/",
            "audiences = [\"api://dws\"]\n[key_sources.claims]\nscopes = [\"roles\", \"scp\"]\ninstance_id = \"appid\"\n[key_sources.claims.scope_map]\n\"DWS.Run\" = [\"duo_agent_platform\"]\n",
            json!({"aud": "api://dws", "appid": "7d1c-app", "sub": "91aa-object",
                   "roles": ["DWS.Run"], "ver": "1.0"}),
            "7d1c-app",
        ),
    ];
    for (what, issuer, extra, claims, instance) in cases {
        let dir = TempDir::new();
        let service = service_with(&dir, issuer, &idp, extra).await;
        let mut claims = claims;
        claims["iss"] = json!(issuer);
        let token = provider_token(&idp, "RS256", claims);
        let minted = generate_token(service.addr, &headers(&token, instance)).await;
        let minted = minted.unwrap_or_else(|s| panic!("{what}: {s:?}"));
        let scopes = decode_segment(&minted.token, 1)["scopes"].clone();
        assert!(
            scopes.as_array().unwrap().contains(&json!(AGENT_PLATFORM)),
            "{what}: {scopes}"
        );
        service.stop().await.unwrap();
    }
}

#[tokio::test]
async fn without_a_mapping_a_providers_token_is_authenticated_then_refused() {
    let dir = TempDir::new();
    let idp = key("rs256-idp");
    // Only the audience configured: scopes are read from GitLab's `scopes` claim, which a
    // provider's token does not have, and `sub` names the instance.
    let service = service_with(&dir, IDP, &idp, "audiences = [\"dws\"]\n").await;
    let token = provider_token(&idp, "RS256", keycloak_claims("dws:run"));
    assert_status(
        generate_token(service.addr, &headers(&token, "4f1e7d0c-service-account")).await,
        Code::PermissionDenied,
        "Unauthorized to generate token",
    );
}

/// The JWK of `key` published for exactly `alg` (the `alg` member pins it).
fn jwk_for(key: &SigningKeyPem, alg: &str) -> Value {
    let mut jwk = key.jwk();
    jwk["alg"] = json!(alg);
    jwk
}

/// A service with one static source `edge` of `jwks` allowing `algorithms`.
async fn service_with_jwks(dir: &TempDir, jwks: Value, algorithms: &str) -> Running {
    let jwks_path = dir.write("edge.jwks", &jwks.to_string());
    let config = dir.write(
        "config.toml",
        &format!(
            "[[key_sources]]\ntype = \"static\"\nname = \"edge\"\nissuer = \"{IDP}\"\njwks_file = \"{}\"\nalgorithms = {algorithms}\n",
            jwks_path.display()
        ),
    );
    start_service(Some(&config), &[]).await.unwrap()
}

/// GitLab-shaped claims of `IDP`, signed by `key` as `alg` naming `kid`.
fn signed_as(key: &SigningKeyPem, alg: &str, kid: Option<&str>) -> String {
    jws(key, alg, kid, &support::good_claims(IDP))
}

#[tokio::test]
async fn every_algorithm_verifies_through_a_jwks_with_its_own_key() {
    let cases = [
        ("rs384-idp", "RS384"),
        ("rs512-idp", "RS512"),
        ("ps256-idp", "PS256"),
        ("ps384-idp", "PS384"),
        ("ps512-idp", "PS512"),
        ("es384-idp", "ES384"),
    ];
    let keys: Vec<_> = cases.iter().map(|(label, _)| key(label)).collect();
    let ed = key("eddsa-idp");
    let mut published: Vec<Value> = keys
        .iter()
        .zip(cases)
        .map(|(k, (_, alg))| jwk_for(k, alg))
        .collect();
    // RFC 9864's name of EdDSA over Ed25519, in the JWKS, the configuration and the token.
    published.push(jwk_for(&ed, "Ed25519"));
    let dir = TempDir::new();
    let service = service_with_jwks(
        &dir,
        json!({ "keys": published }),
        r#"["RS384", "RS512", "PS256", "PS384", "PS512", "ES384", "Ed25519"]"#,
    )
    .await;
    for (k, (_, alg)) in keys.iter().zip(cases) {
        for kid in [Some(k.kid()), None] {
            let token = signed_as(k, alg, kid);
            assert!(
                generate_token(service.addr, &Headers::bearer(&token))
                    .await
                    .is_ok(),
                "{alg} kid {kid:?}"
            );
        }
    }
    for name in ["Ed25519", "EdDSA"] {
        let token = signed_as(&ed, name, Some(ed.kid()));
        assert!(
            generate_token(service.addr, &Headers::bearer(&token))
                .await
                .is_ok(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn pem_keys_of_the_new_kinds_load_and_verify_what_the_source_allows() {
    let dir = TempDir::new();
    let (rsa, p384) = (key("rs256-pem"), key("es384-pem"));
    let pem = format!(
        "{}{}",
        rsa.key.public_key().to_pem(),
        p384.key.public_key().to_pem()
    );
    let pem_path = dir.write("idp.pem", &pem);
    let config = dir.write(
        "config.toml",
        &format!(
            "[[key_sources]]\ntype = \"static\"\nname = \"pem\"\nissuer = \"{IDP}\"\npem_file = \"{}\"\nalgorithms = [\"PS256\", \"ES384\"]\n",
            pem_path.display()
        ),
    );
    let service = start_service(Some(&config), &[]).await.unwrap();
    // A PEM key carries no `alg`: the RSA key verifies the RSA algorithms its source allows.
    let ps = SigningKeyPem {
        pem: rsa.pem.clone(),
        key: duo_workflow_adapters::jose::signing::SigningKey::from_pem(&rsa.pem)
            .unwrap()
            .with_algorithm(duo_workflow_domain::keys::Algorithm::PS256)
            .unwrap(),
    };
    for (token, ok) in [
        (signed_as(&ps, "PS256", None), true),
        (signed_as(&p384, "ES384", None), true),
        (signed_as(&rsa, "RS256", None), false),
    ] {
        let result = generate_token(service.addr, &Headers::bearer(&token)).await;
        if ok {
            assert!(result.is_ok(), "{result:?}");
        } else {
            assert_status(result, Code::Unauthenticated, "Forbidden by auth provider");
        }
    }
}

/// Checklist row 2 for the new kinds: a key verifies only its own algorithm, whatever the token
/// claims; the service answers the next good call after each.
#[tokio::test]
async fn an_alg_that_does_not_fit_the_key_is_refused() {
    let dir = TempDir::new();
    let (rs, ps, p256, p384) = (
        key("rs256-edge"),
        key("ps256-edge"),
        key("es256-edge"),
        key("es384-edge"),
    );
    let service = service_with_jwks(
        &dir,
        json!({"keys": [jwk_for(&rs, "RS256"), jwk_for(&ps, "PS256"), p256.jwk(), p384.jwk()]}),
        r#"["RS256", "PS256", "ES256", "ES384"]"#,
    )
    .await;
    let as_alg = |k: &SigningKeyPem, alg| {
        let key = duo_workflow_adapters::jose::signing::SigningKey::from_pem(&k.pem)
            .unwrap()
            .with_algorithm(alg)
            .unwrap();
        SigningKeyPem {
            pem: k.pem.clone(),
            key,
        }
    };
    use duo_workflow_domain::keys::Algorithm::{PS256, RS256};
    let cases = [
        // RS vs PS: a valid PSS signature by the key published for RS256, and the reverse.
        (
            "PS256 by the RS256 key",
            signed_as(&as_alg(&rs, PS256), "PS256", Some(rs.kid())),
        ),
        (
            "PS256 by the RS256 key, no kid",
            signed_as(&as_alg(&rs, PS256), "PS256", None),
        ),
        (
            "RS256 by the PS256 key",
            signed_as(&as_alg(&ps, RS256), "RS256", Some(ps.kid())),
        ),
        (
            "RS256 header, PSS signature",
            signed_as(&as_alg(&rs, PS256), "RS256", Some(rs.kid())),
        ),
        // ES256 against the P-384 key, ES384 against the P-256 key.
        (
            "ES256 naming the P-384 key",
            signed_as(&p256, "ES256", Some(p384.kid())),
        ),
        (
            "ES384 naming the P-256 key",
            signed_as(&p384, "ES384", Some(p256.kid())),
        ),
        (
            "ES384 header, P-256 signature",
            signed_as(&p256, "ES384", None),
        ),
        (
            "RS256 naming the P-384 key",
            signed_as(&rs, "RS256", Some(p384.kid())),
        ),
    ];
    for (what, token) in cases {
        assert_status(
            generate_token(service.addr, &Headers::bearer(&token)).await,
            Code::Unauthenticated,
            "Forbidden by auth provider",
        );
        let good = signed_as(&p384, "ES384", Some(p384.kid()));
        assert!(
            generate_token(service.addr, &Headers::bearer(&good))
                .await
                .is_ok(),
            "after {what}"
        );
    }
}

/// Checklist row 28 for P-384: a point off the curve is dropped when the key set loads, with the
/// rest of the set kept.
#[tokio::test]
async fn a_p384_point_off_the_curve_is_dropped_and_the_rest_kept() {
    let dir = TempDir::new();
    let p384 = key("es384-edge");
    let mut off = p384.jwk();
    off["kid"] = json!("off-curve");
    let mut y = off["y"].as_str().unwrap().to_owned();
    y.replace_range(0..1, if y.starts_with('A') { "B" } else { "A" });
    off["y"] = json!(y);
    let service = service_with_jwks(&dir, json!({"keys": [off, p384.jwk()]}), r#"["ES384"]"#).await;
    let forged = signed_as(&p384, "ES384", Some("off-curve"));
    assert_status(
        generate_token(service.addr, &Headers::bearer(&forged)).await,
        Code::Unauthenticated,
        "Forbidden by auth provider",
    );
    assert!(generate_token(
        service.addr,
        &Headers::bearer(&signed_as(&p384, "ES384", Some(p384.kid())))
    )
    .await
    .is_ok());
}

/// Calls until the call stops being UNAVAILABLE (the first keys load in the background).
async fn once_keys_load(service: &Running, token: &str) -> Result<(), tonic::Status> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match generate_token(service.addr, &Headers::bearer(token)).await {
            Err(s) if s.code() == Code::Unavailable && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            other => return other.map(drop),
        }
    }
}

/// An `oidc` source of `provider`, with `issuer` as configured.
async fn oidc_service(dir: &TempDir, issuer: &str, extra: &str) -> Running {
    let config = dir.write(
        "config.toml",
        &format!(
            "[[key_sources]]\ntype = \"oidc\"\nname = \"idp\"\nissuer = \"{issuer}\"\n{extra}"
        ),
    );
    start_service(Some(&config), &[]).await.unwrap()
}

/// Issue 16, row 1: Auth0's and Azure AD v1's issuers end with a slash, and their tokens carry it.
#[tokio::test]
async fn an_issuer_with_a_trailing_slash_is_compared_as_written() {
    let idp_key = key("rs256-idp");
    let idp = support::provider::start(vec![idp_key.jwk()]).await;
    let with_slash = format!("{}/", idp.issuer());
    idp.set_discovery_issuer(&with_slash);
    let token = |iss: &str| {
        jws(
            &idp_key,
            "RS256",
            Some(idp_key.kid()),
            &support::good_claims(iss),
        )
    };

    // Configured as the provider writes it: its tokens pass, the slash-less form is unknown.
    let dir = TempDir::new();
    let service = oidc_service(&dir, &with_slash, "").await;
    once_keys_load(&service, &token(&with_slash)).await.unwrap();
    assert_status(
        generate_token(service.addr, &Headers::bearer(&token(&idp.issuer()))).await,
        Code::Unauthenticated,
        "Forbidden by auth provider",
    );
    service.stop().await.unwrap();

    // Configured without the slash: the document still loads (the one difference tolerated),
    // and the issuer stays as configured.
    let dir = TempDir::new();
    let service = oidc_service(&dir, &idp.issuer(), "").await;
    once_keys_load(&service, &token(&idp.issuer()))
        .await
        .unwrap();
    assert_status(
        generate_token(service.addr, &Headers::bearer(&token(&with_slash))).await,
        Code::Unauthenticated,
        "Forbidden by auth provider",
    );
    service.stop().await.unwrap();

    // The built-in GitLab source learns the issuer as its document states it.
    let gitlab = start_service(
        None,
        &[(
            duo_workflow_service::config::ENV_OIDC_GITLAB_URL,
            idp.issuer().as_str(),
        )],
    )
    .await
    .unwrap();
    once_keys_load(&gitlab, &token(&with_slash)).await.unwrap();
}

/// `GET /key-sources` of `service`: the entry of source `name`.
async fn key_source(service: &Running, name: &str) -> Value {
    let (status, _, body) =
        support::get_with_host(service.operator_addr, "/key-sources", "localhost").await;
    assert_eq!(status, 200, "{body}");
    let all: Value = serde_json::from_str(&body).unwrap();
    all["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no source {name}: {all}"))
}

/// Issue 16, the last row: a key set served without `Cache-Control` was trusted for an hour;
/// it is now fetched again every `refresh.default_seconds`, and `/key-sources` says so.
#[tokio::test]
async fn a_jwks_without_cache_control_is_refreshed_every_default_seconds() {
    let (old, new) = (key("rs256-idp"), key("rs256-idp-next"));
    let idp = support::provider::start(vec![old.jwk(), new.jwk()]).await;
    idp.state.lock().unwrap().cache_control = String::new();
    let dir = TempDir::new();
    let service = oidc_service(
        &dir,
        &idp.issuer(),
        "refresh = { min_seconds = 1, default_seconds = 1 }\n",
    )
    .await;
    let token = |k: &SigningKeyPem| {
        jws(
            k,
            "RS256",
            Some(k.kid()),
            &support::good_claims(&idp.issuer()),
        )
    };
    once_keys_load(&service, &token(&old)).await.unwrap();
    let report = key_source(&service, "idp").await;
    assert_eq!(report["refresh_seconds"], 1, "{report}");
    assert_eq!(report["refresh_from"], "default", "{report}");

    // The provider removes the old key: no token names an unknown kid, so only a refresh can
    // tell. It comes within seconds, not an hour.
    idp.set_keys(vec![new.jwk()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while generate_token(service.addr, &Headers::bearer(&token(&old)))
        .await
        .is_ok()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed key is still trusted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(generate_token(service.addr, &Headers::bearer(&token(&new)))
        .await
        .is_ok());

    // With a max-age, the provider decides, within the bounds (max_seconds, 3600 by default).
    idp.state.lock().unwrap().cache_control = "public, max-age=86400".into();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let report = key_source(&service, "idp").await;
        if report["refresh_from"] == "cache_control" {
            assert_eq!(report["refresh_seconds"], 3600, "{report}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{report}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
