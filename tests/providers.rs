//! Issue 16 through gRPC: tokens shaped like Keycloak's, Okta's, Auth0's and Azure AD's, each
//! made usable by configuration alone (claim mapping, audiences, algorithms, issuers as written,
//! refresh without `Cache-Control`), and what each refuses.

mod support;

use duo_workflow_service::config::ENV_SIGNING_KEY;
use duo_workflow_service::server::Running;
use serde_json::{json, Value};
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

/// A token with exactly these claims (plus fresh times), signed by `key` with its kid.
fn provider_token(key: &SigningKeyPem, alg: &str, claims: Value) -> String {
    let mut c = claims;
    let now = now();
    c["iat"] = json!(now);
    c["exp"] = json!(now + 600);
    let header = json!({"alg": alg, "typ": "at+jwt", "kid": key.kid()});
    sign_raw(
        &key.key,
        &serde_json::to_vec(&header).unwrap(),
        &serde_json::to_vec(&c).unwrap(),
    )
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

const KEYCLOAK_CLAIMS: &str = r#"audiences = ["dws"]
[key_sources.claims]
scopes = ["scope"]
instance_id = "azp"
[key_sources.claims.scope_map]
"dws:run" = ["duo_agent_platform", "duo_workflow_execute_workflow"]
"dws:chat" = ["duo_chat"]
"#;

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
