//! `token explain`: what the service would do with one token, from the configuration `serve`
//! reads (file and environment), its key sources fetched once, and the code that judges every
//! call: the authenticator's own steps ([`JwtAuthenticator::explain`]), then the gatekeeper's
//! header binding and authorization and the user-token grant of `GenerateToken`. The report names
//! claims, kids, algorithms and sources; it never holds the token or a key.

use std::fmt::Write;

use duo_workflow_adapters::authenticator::{DynKeySource, JwtAuthenticator};
use duo_workflow_adapters::metrics::{code_label, RefusalReason};
use duo_workflow_adapters::transport::status_of;
use duo_workflow_domain::gatekeeper::Gatekeeper;
use duo_workflow_domain::keys::Algorithm;
use duo_workflow_domain::mapping::{Audiences, ClaimMapping};
use duo_workflow_domain::method::{Call, Flow, FlowFields};
use duo_workflow_domain::ports::{Clock, SourceState};
use duo_workflow_domain::user_token::UserTokenGrant;
use duo_workflow_domain::{AuthError, AuthorizationHeader, Claims, Identity, RequestMetadata};

use crate::config::Settings;
use crate::server::{self, StartError};

/// The flow `GenerateToken` and `ExecuteWorkflow` are asked about when none is given: the
/// service's default flow.
pub const DEFAULT_FLOW: &str = "software_development";

/// The report on `token` for `flow`, as text.
pub async fn explain(settings: &Settings, token: &str, flow: &str) -> Result<String, StartError> {
    let service = server::build(settings)?;
    futures::future::join_all(service.remote.iter().map(|s| s.fetch_once())).await;
    let mut out = String::new();
    let clock = duo_workflow_adapters::clock::SystemClock;
    sources(&mut out, &service.sources, &clock);
    match &service.authenticator {
        None => {
            let _ = writeln!(
                out,
                "\nauthentication is disabled ({}=false): every caller is the debug user, who \
                 passes every check",
                crate::config::ENV_AUTH_ENABLED
            );
            answers(
                &mut out,
                &service.gatekeeper,
                settings,
                &Identity::Debug,
                &metadata(token, None),
                flow,
            );
        }
        Some(authenticator) => {
            judged(
                &mut out,
                authenticator,
                &service.gatekeeper,
                settings,
                token,
                flow,
            )
            .await
        }
    }
    Ok(out)
}

/// The key sources as `serve` would hold them now.
fn sources(out: &mut String, sources: &[DynKeySource], clock: &dyn Clock) {
    let _ = writeln!(out, "key sources (fetched once):");
    let now = clock.now().as_secs();
    for s in sources {
        let state = match s.state() {
            SourceState::Ready { keys, loaded_at } => {
                format!(
                    "ready, keys: {keys}, loaded {} s ago",
                    now - loaded_at.as_secs()
                )
            }
            SourceState::Stale { keys, reason, .. } => format!("stale, keys: {keys}: {reason}"),
            SourceState::Pending { reason } => {
                format!("no keys: {}", reason.as_deref().unwrap_or("not fetched"))
            }
        };
        let algorithms: Vec<&str> = s.algorithms().iter().map(|a| a.jose_name()).collect();
        let algorithms = if algorithms.len() == Algorithm::ALL.len() {
            vec!["any (each key its own)"]
        } else {
            algorithms
        };
        let _ = writeln!(
            out,
            "  {}: issuer {}, algorithms {}, {}; {state}",
            s.name(),
            s.issuer(),
            algorithms.join(" "),
            mapping(s.claim_mapping()),
        );
    }
}

/// A source's claim mapping, in one line.
fn mapping(m: &ClaimMapping) -> String {
    let audiences = match m.audiences() {
        Audiences::ServiceName => "aud: the service name".to_owned(),
        Audiences::Listed(list) => format!("aud: {list:?}"),
    };
    let claims: Vec<&str> = m.scope_claims().iter().map(|c| c.as_str()).collect();
    let map = match m.scope_map() {
        None => String::new(),
        Some(map) => format!(", scope map of {} provider scopes", map.entries().len()),
    };
    format!(
        "{audiences}, unit primitives from {}{map}, instance from {}",
        claims.join(" or "),
        m.instance_claim()
    )
}

async fn judged(
    out: &mut String,
    authenticator: &JwtAuthenticator,
    gatekeeper: &Gatekeeper,
    settings: &Settings,
    token: &str,
    flow: &str,
) {
    let explanation = authenticator.explain(token).await;
    let _ = writeln!(out, "\nthe token, step by step:");
    for (i, step) in explanation.steps.iter().enumerate() {
        let outcome = if step.passed { "ok     " } else { "REFUSED" };
        let _ = writeln!(
            out,
            "  {:>2}. {:<20} {outcome} {}",
            i + 1,
            step.check,
            step.detail
        );
    }
    let verified = match explanation.result {
        Err(error) => {
            let error = AuthError::from(error);
            let _ = writeln!(out, "\nverdict: refused");
            refusal(out, "every call", &error);
            return;
        }
        Ok(verified) => verified,
    };
    let source = explanation.source.as_ref().map_or("?", |s| s.name());
    let _ = writeln!(out, "\nverdict: authenticated by key source {source}");
    let claims = verified.claims();
    let mapping = explanation
        .source
        .as_ref()
        .map(|s| s.claim_mapping().clone())
        .unwrap_or_default();
    let self_issued = gatekeeper.service().is_issuer_of(claims);
    let expected = binding(out, claims, &mapping, self_issued);
    // The calls go through the gatekeeper as a request with the headers the binding expects:
    // steps 1 to 5 of authentication, then authorization, as the admission layer runs them.
    let metadata = metadata(token, Some(&expected));
    match gatekeeper.authenticate(&metadata).await {
        Err(error) => {
            let _ = writeln!(out, "\nanswers:");
            refusal(out, "every call", &error);
        }
        Ok(admission) => answers(
            out,
            gatekeeper,
            settings,
            &admission.identity,
            &metadata,
            flow,
        ),
    }
}

/// The headers a caller with this token must send (`None`: any value).
struct Expected {
    realm: Option<String>,
    instance_id: Option<String>,
    global_user_id: Option<String>,
}

/// Header binding (SPEC A, as `bind_headers` applies it): which header each claim binds, and
/// from which claim.
fn binding(
    out: &mut String,
    claims: &Claims,
    mapping: &ClaimMapping,
    self_issued: bool,
) -> Expected {
    let present = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    let _ = writeln!(
        out,
        "\nheader binding (what a caller with this token sends):"
    );
    let realm = present(&claims.realm);
    let _ = match &realm {
        Some(r) => writeln!(out, "  x-gitlab-realm: {r:?} (from claim gitlab_realm)"),
        None => writeln!(out, "  x-gitlab-realm: any (no gitlab_realm claim)"),
    };
    let mut instance = present(&claims.instance_id).map(|v| (v, "gitlab_instance_id".to_owned()));
    let global_user_id = if self_issued {
        present(&claims.subject)
    } else {
        if let Some(v) = present(&claims.caller_instance) {
            let claim = mapping.instance_claim().to_string();
            match &instance {
                Some((other, from)) if *other != v => {
                    let _ = writeln!(
                        out,
                        "  x-gitlab-instance-id: no value fits: claim {from} says {other:?}, \
                         claim {claim} says {v:?} (every call is refused)"
                    );
                }
                Some(_) => instance = Some((v, format!("gitlab_instance_id and {claim}"))),
                None => instance = Some((v, claim)),
            }
        }
        None
    };
    let _ = match &instance {
        Some((v, from)) => writeln!(out, "  x-gitlab-instance-id: {v:?} (from claim {from})"),
        None => writeln!(out, "  x-gitlab-instance-id: any (no claim binds it)"),
    };
    let _ = match &global_user_id {
        Some(v) => writeln!(
            out,
            "  x-gitlab-global-user-id: {v:?} (from claim sub: a user token of this service)"
        ),
        None => writeln!(
            out,
            "  x-gitlab-global-user-id: any (GenerateToken needs one: the user token's sub)"
        ),
    };
    Expected {
        realm,
        instance_id: instance.map(|(v, _)| v),
        global_user_id,
    }
}

/// The request metadata of a call with `token` and the headers the binding expects.
fn metadata(token: &str, expected: Option<&Expected>) -> RequestMetadata {
    RequestMetadata {
        authorization: AuthorizationHeader::One(format!("Bearer {token}")),
        authentication_type: Some("oidc".into()),
        realm: expected.and_then(|e| e.realm.clone()),
        instance_id: expected.and_then(|e| e.instance_id.clone()),
        // Any user: GenerateToken only needs one to be there.
        global_user_id: Some(
            expected
                .and_then(|e| e.global_user_id.clone())
                .unwrap_or_else(|| "1".into()),
        ),
        duo_seat_count: None,
    }
}

/// What `GenerateToken` and `ExecuteWorkflow` for `flow` answer this caller.
fn answers(
    out: &mut String,
    gatekeeper: &Gatekeeper,
    settings: &Settings,
    identity: &Identity,
    metadata: &RequestMetadata,
    flow: &str,
) {
    let _ = writeln!(out, "\nanswers for flow {flow:?}:");
    let generate = Call::GenerateToken(Flow::of_token_request(Some(flow)));
    match gatekeeper.authorize(identity, &generate) {
        Err(e) => refusal(out, "GenerateToken", &e),
        Ok(()) => {
            let now = duo_workflow_adapters::clock::SystemClock.now();
            match UserTokenGrant::for_caller(
                identity,
                metadata,
                &settings.service_name,
                &settings.delegation,
                now,
            ) {
                Ok(grant) => {
                    let scopes: Vec<&str> = grant.scopes.iter().map(|p| p.as_str()).collect();
                    let _ = writeln!(
                        out,
                        "  GenerateToken: OK, a user token (iss and aud {}) with scopes {scopes:?}",
                        settings.service_name
                    );
                }
                Err(e) => refusal(out, "GenerateToken", &e),
            }
        }
    }
    let fields = FlowFields {
        workflow_definition: flow.to_owned(),
        ..FlowFields::default()
    };
    let execute = Flow::of_start_request(&fields).map(Call::ExecuteWorkflow);
    match execute
        .map_err(AuthError::InvalidFlow)
        .and_then(|call| gatekeeper.authorize(identity, &call))
    {
        Ok(()) if settings.upstream.is_some() => {
            let _ = writeln!(
                out,
                "  ExecuteWorkflow: authorized, relayed to the executor"
            );
        }
        Ok(()) => {
            let _ = writeln!(
                out,
                "  ExecuteWorkflow: authorized; with no executor configured: UNIMPLEMENTED \
                 \"No workflow executor configured\""
            );
        }
        Err(e) => refusal(out, "ExecuteWorkflow", &e),
    }
}

/// A refusal as the caller sees it (status, details) and as the server logs it (`refusal`,
/// `reason`).
fn refusal(out: &mut String, call: &str, error: &AuthError) {
    let status = status_of(error);
    let _ = writeln!(
        out,
        "  {call}: {} {:?}\n    logged as refusal={} reason={:?}",
        code_label(status.code()),
        status.message(),
        RefusalReason::from(error).as_str(),
        error.to_string()
    );
}
