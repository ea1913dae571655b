//! The rules: what makes claims acceptable, how claims bind to headers, which call needs which
//! unit primitive, and which unit primitives a user token may carry.

use crate::error::{AuthError, Denied, Rejection};
use crate::identity::{Claims, Identity, ServiceName, UnitPrimitive, VerifiedClaims};
use crate::mapping::Audiences;
use crate::method::{Call, Flow};
use crate::request::{BoundHeader, RequestMetadata};
use crate::time::{Seconds, UnixTime};

/// Audience and time checks applied to a token's claims after its signature verified.
#[derive(Debug, Clone)]
pub struct ClaimChecks {
    pub audience: ServiceName,
    /// One bounded leeway for `exp`, `nbf` and `iat` (default 60 s).
    pub leeway: Seconds,
    /// The longest lifetime a token may claim, from `iat` (or `nbf`) to `exp`.
    pub max_lifetime: Seconds,
}

impl ClaimChecks {
    pub const DEFAULT_LEEWAY: Seconds = Seconds::new(60);
    /// Instance tokens from CustomersDot live for days; a week bounds what a stolen one is worth.
    pub const DEFAULT_MAX_LIFETIME: Seconds = Seconds::new(7 * 24 * 3600);

    pub fn new(audience: ServiceName) -> Self {
        Self {
            audience,
            leeway: Self::DEFAULT_LEEWAY,
            max_lifetime: Self::DEFAULT_MAX_LIFETIME,
        }
    }

    /// Accepts the claims of a token whose signature has verified, for this service's name as
    /// audience (GitLab's tokens).
    pub fn accept(&self, claims: Claims, now: UnixTime) -> Result<VerifiedClaims, Rejection> {
        self.accept_for(&Audiences::ServiceName, claims, now)
    }

    /// Accepts the claims of a token whose signature has verified with a key of a source whose
    /// tokens carry `audiences`: every check of [`ClaimCheck::ALL`], in order, the first
    /// failure refusing.
    pub fn accept_for(
        &self,
        audiences: &Audiences,
        claims: Claims,
        now: UnixTime,
    ) -> Result<VerifiedClaims, Rejection> {
        for check in ClaimCheck::ALL {
            self.check(check, audiences, &claims, now)?;
        }
        let expires_at = claims.expires_at.ok_or(Rejection::MissingExpiry)?;
        Ok(VerifiedClaims::new(claims, expires_at))
    }

    /// One check's outcome (what `accept_for` runs, and `token explain` shows one by one).
    pub fn check(
        &self,
        check: ClaimCheck,
        audiences: &Audiences,
        claims: &Claims,
        now: UnixTime,
    ) -> Result<(), Rejection> {
        match check {
            ClaimCheck::Audience => {
                if claims.audience.is_empty() {
                    return Err(Rejection::MissingAudience);
                }
                let accepted = |a: &String| match audiences {
                    Audiences::ServiceName => a == self.audience.as_str(),
                    Audiences::Listed(list) => list.contains(a),
                };
                if !claims.audience.iter().any(accepted) {
                    return Err(Rejection::WrongAudience);
                }
            }
            ClaimCheck::Expiry => {
                let expires_at = claims.expires_at.ok_or(Rejection::MissingExpiry)?;
                if now.minus(self.leeway) >= expires_at {
                    return Err(Rejection::Expired);
                }
            }
            ClaimCheck::NotBefore => {
                if claims
                    .not_before
                    .is_some_and(|nbf| nbf > now.plus(self.leeway))
                {
                    return Err(Rejection::NotYetValid);
                }
            }
            ClaimCheck::IssuedAt => {
                if claims
                    .issued_at
                    .is_some_and(|iat| iat > now.plus(self.leeway))
                {
                    return Err(Rejection::IssuedInFuture);
                }
            }
            ClaimCheck::Lifetime => {
                // Without `exp` there is no lifetime to bound: `Expiry` refuses that token.
                if let Some(expires_at) = claims.expires_at {
                    let start = match (claims.issued_at, claims.not_before) {
                        (Some(iat), Some(nbf)) => iat.min(nbf),
                        (Some(t), None) | (None, Some(t)) => t,
                        (None, None) => now,
                    };
                    if expires_at.as_secs() - start.as_secs() > self.max_lifetime.as_u64() as i64 {
                        return Err(Rejection::LifetimeTooLong);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The checks of a token's claims, in the order they are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimCheck {
    Audience,
    Expiry,
    NotBefore,
    IssuedAt,
    Lifetime,
}

impl ClaimCheck {
    pub const ALL: [ClaimCheck; 5] = [
        ClaimCheck::Audience,
        ClaimCheck::Expiry,
        ClaimCheck::NotBefore,
        ClaimCheck::IssuedAt,
        ClaimCheck::Lifetime,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClaimCheck::Audience => "audience (aud)",
            ClaimCheck::Expiry => "expiry (exp)",
            ClaimCheck::NotBefore => "not before (nbf)",
            ClaimCheck::IssuedAt => "issued at (iat)",
            ClaimCheck::Lifetime => "lifetime (exp - iat)",
        }
    }
}

/// A `duo_seat_count` claim that differs from its header: logged, never refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatCountMismatch {
    pub claim: String,
    pub header: Option<String>,
}

/// The instance a caller speaks for, as [`bind_headers`] binds it to `x-gitlab-instance-id`:
/// `gitlab_instance_id`, else, in a token this service did not issue, the claim its key source
/// maps to the instance (`sub` in GitLab's tokens, the client's id in an OpenID provider's).
/// For the log; absent and empty claims say nothing.
pub fn caller_instance<'c>(claims: &'c Claims, service: &ServiceName) -> Option<&'c str> {
    let present = |c: &'c Option<String>| c.as_deref().filter(|v| !v.is_empty());
    present(&claims.instance_id).or_else(|| {
        if service.is_issuer_of(claims) {
            None
        } else {
            present(&claims.caller_instance)
        }
    })
}

/// Header binding (SPEC Part A): each claim, where present and non-empty, must equal its header.
/// `sub` binds to the global user id for this service's own user tokens; in other tokens the
/// claim their source's mapping names (`sub` in GitLab's) binds to the instance id.
pub fn bind_headers(
    claims: &Claims,
    metadata: &RequestMetadata,
    service: &ServiceName,
) -> Result<Option<SeatCountMismatch>, AuthError> {
    fn bound(
        claim: Option<&str>,
        header: &Option<String>,
        which: BoundHeader,
    ) -> Result<(), AuthError> {
        match claim {
            Some(c) if !c.is_empty() && header.as_deref() != Some(c) => {
                Err(AuthError::HeaderMismatch(which))
            }
            _ => Ok(()),
        }
    }
    bound(claims.realm.as_deref(), &metadata.realm, BoundHeader::Realm)?;
    bound(
        claims.instance_id.as_deref(),
        &metadata.instance_id,
        BoundHeader::InstanceId,
    )?;
    if service.is_issuer_of(claims) {
        bound(
            claims.subject.as_deref(),
            &metadata.global_user_id,
            BoundHeader::GlobalUserId,
        )?;
    } else {
        bound(
            claims.caller_instance.as_deref(),
            &metadata.instance_id,
            BoundHeader::InstanceId,
        )?;
    }
    Ok(match &claims.duo_seat_count {
        Some(c) if metadata.duo_seat_count.as_deref() != Some(c.as_str()) => {
            Some(SeatCountMismatch {
                claim: c.clone(),
                header: metadata.duo_seat_count.clone(),
            })
        }
        _ => None,
    })
}

/// The per-call authorization of SPEC C2 (which keeps Part A's unit primitives for the clients
/// that still send them). The debug identity passes every check.
pub fn authorize(identity: &Identity, call: &Call, service: &ServiceName) -> Result<(), AuthError> {
    let Some(claims) = identity.claims() else {
        return Ok(());
    };
    let has = |scope: &str| claims.has_scope(scope);
    // The unit primitives of a flow: chat has its own, every other flow is the agent platform
    // (or its 2025 name).
    let may_run = |flow: &Flow| {
        if flow.is_chat() {
            has(UnitPrimitive::DUO_CHAT)
        } else {
            has(UnitPrimitive::DUO_AGENT_PLATFORM) || has(UnitPrimitive::EXECUTE_WORKFLOW)
        }
    };
    // A user token must not mint further user tokens, nor report self-hosted usage.
    let self_issued = service.is_issuer_of(claims);
    let denied = match call {
        Call::GenerateToken(flow) => {
            let allowed = !self_issued
                && (may_run(flow) || (!flow.is_chat() && has(UnitPrimitive::GENERATE_TOKEN)));
            (!allowed).then_some(Denied::GenerateToken)
        }
        Call::ExecuteWorkflow(flow) => {
            (!may_run(flow)).then(|| Denied::ExecuteWorkflow(flow.clone()))
        }
        Call::TrackSelfHostedExecuteWorkflow => {
            let allowed = !self_issued && has(UnitPrimitive::DUO_AGENT_PLATFORM);
            (!allowed).then_some(Denied::TrackSelfHostedExecuteWorkflow)
        }
        Call::Authenticated => None,
    };
    match denied {
        None => Ok(()),
        Some(d) if claims.scopes.is_empty() => {
            Err(AuthError::NoUnitPrimitive(d, claims.scope_evidence.clone()))
        }
        Some(d) => Err(AuthError::Unauthorized(d)),
    }
}

/// The unit primitives this service's user tokens may carry (SPEC C3; configurable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    delegable: Vec<UnitPrimitive>,
}

impl Default for Delegation {
    fn default() -> Self {
        Self::new(
            [
                UnitPrimitive::DUO_AGENT_PLATFORM,
                UnitPrimitive::DUO_CHAT,
                UnitPrimitive::EXECUTE_WORKFLOW,
                UnitPrimitive::INCLUDE_FILE_CONTEXT,
            ]
            .map(UnitPrimitive::new)
            .to_vec(),
        )
    }
}

impl Delegation {
    /// Duplicates are dropped; the order given is the order in user tokens.
    pub fn new(delegable: Vec<UnitPrimitive>) -> Self {
        let mut unique: Vec<UnitPrimitive> = Vec::with_capacity(delegable.len());
        for p in delegable {
            if !unique.contains(&p) {
                unique.push(p);
            }
        }
        Self { delegable: unique }
    }

    pub fn delegable(&self) -> &[UnitPrimitive] {
        &self.delegable
    }

    /// The scopes of a user token minted for this caller: the delegable unit primitives its own
    /// token holds (never a scope it could not grant, never one this service does not delegate);
    /// for the debug identity, all of them. A 2024 caller's `duo_workflow_generate_token`
    /// delegates workflow execution, as it did in Part A.
    pub fn scopes_for(&self, identity: &Identity) -> Vec<UnitPrimitive> {
        let Some(claims) = identity.claims() else {
            return self.delegable.clone();
        };
        self.delegable
            .iter()
            .filter(|p| {
                claims.has_scope(p.as_str())
                    || (p.as_str() == UnitPrimitive::EXECUTE_WORKFLOW
                        && claims.has_scope(UnitPrimitive::GENERATE_TOKEN))
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Issuer;

    fn service() -> ServiceName {
        ServiceName::new(ServiceName::DEFAULT)
    }

    fn claims(iss: &str) -> Claims {
        Claims {
            issuer: Issuer::new(iss),
            subject: Some("instance-1".into()),
            audience: vec![ServiceName::DEFAULT.into()],
            scopes: vec![],
            realm: Some("self-managed".into()),
            instance_id: Some("instance-1".into()),
            caller_instance: Some("instance-1".into()),
            scope_evidence: Default::default(),
            duo_seat_count: None,
            copied: vec![],
            jti: None,
            expires_at: UnixTime::from_secs(2_000),
            not_before: None,
            issued_at: UnixTime::from_secs(1_000),
        }
    }

    fn now() -> UnixTime {
        UnixTime::from_secs(1_500).unwrap()
    }

    fn metadata() -> RequestMetadata {
        RequestMetadata {
            realm: Some("self-managed".into()),
            instance_id: Some("instance-1".into()),
            global_user_id: Some("user-7".into()),
            ..Default::default()
        }
    }

    fn verified(c: Claims) -> Identity {
        Identity::Token(ClaimChecks::new(service()).accept(c, now()).unwrap())
    }

    #[test]
    fn accepts_a_token_for_this_audience_within_its_lifetime() {
        let v = ClaimChecks::new(service())
            .accept(claims("https://gitlab.com"), now())
            .unwrap();
        assert_eq!(v.expires_at().as_secs(), 2_000);
    }

    #[test]
    fn audience_may_be_one_of_several() {
        let mut c = claims("x");
        c.audience = vec!["other".into(), ServiceName::DEFAULT.into()];
        assert!(ClaimChecks::new(service()).accept(c, now()).is_ok());
    }

    #[test]
    fn a_source_may_name_its_own_audiences_instead_of_the_service_name() {
        let checks = ClaimChecks::new(service());
        let listed = Audiences::Listed(vec!["api://dws".into(), "dws".into()]);
        let mut c = claims("x");
        assert_eq!(
            checks.accept_for(&listed, c.clone(), now()),
            Err(Rejection::WrongAudience),
            "the service name counts only where no audience is configured"
        );
        c.audience = vec!["account".into(), "dws".into()];
        assert!(checks.accept_for(&listed, c.clone(), now()).is_ok());
        assert_eq!(checks.accept(c, now()), Err(Rejection::WrongAudience));
    }

    #[test]
    fn each_check_can_be_asked_alone_and_accept_stops_at_the_first_failure() {
        let checks = ClaimChecks::new(service());
        let mut c = claims("x");
        c.audience = vec!["other".into()];
        c.expires_at = UnixTime::from_secs(1_000);
        let outcomes: Vec<_> = ClaimCheck::ALL
            .iter()
            .map(|k| checks.check(*k, &Audiences::ServiceName, &c, now()))
            .collect();
        assert_eq!(
            outcomes,
            [
                Err(Rejection::WrongAudience),
                Err(Rejection::Expired),
                Ok(()),
                Ok(()),
                Ok(())
            ]
        );
        assert_eq!(checks.accept(c, now()), Err(Rejection::WrongAudience));
    }

    #[test]
    fn missing_or_foreign_audience_is_rejected() {
        let checks = ClaimChecks::new(service());
        let mut c = claims("x");
        c.audience.clear();
        assert_eq!(
            checks.accept(c.clone(), now()),
            Err(Rejection::MissingAudience)
        );
        c.audience = vec!["gitlab-ai-gateway".into()];
        assert_eq!(checks.accept(c, now()), Err(Rejection::WrongAudience));
    }

    #[test]
    fn expiry_is_required_and_honoured_with_leeway() {
        let checks = ClaimChecks::new(service());
        let mut c = claims("x");
        c.expires_at = None;
        assert_eq!(
            checks.accept(c.clone(), now()),
            Err(Rejection::MissingExpiry)
        );
        c.expires_at = UnixTime::from_secs(1_450); // 50 s ago: inside the 60 s leeway
        assert!(checks.accept(c.clone(), now()).is_ok());
        c.expires_at = UnixTime::from_secs(1_440); // exactly at the leeway's edge
        assert_eq!(checks.accept(c.clone(), now()), Err(Rejection::Expired));
        c.expires_at = UnixTime::from_secs(1_000);
        assert_eq!(checks.accept(c, now()), Err(Rejection::Expired));
    }

    #[test]
    fn not_before_and_issued_at_in_the_future_beyond_leeway_are_rejected() {
        let checks = ClaimChecks::new(service());
        let mut c = claims("x");
        c.not_before = UnixTime::from_secs(1_559);
        assert!(checks.accept(c.clone(), now()).is_ok());
        c.not_before = UnixTime::from_secs(1_561);
        assert_eq!(checks.accept(c.clone(), now()), Err(Rejection::NotYetValid));
        c.not_before = None;
        c.issued_at = UnixTime::from_secs(1_561);
        assert_eq!(checks.accept(c, now()), Err(Rejection::IssuedInFuture));
    }

    #[test]
    fn lifetime_beyond_the_maximum_is_rejected() {
        let mut checks = ClaimChecks::new(service());
        checks.max_lifetime = Seconds::new(900);
        let c = claims("x"); // iat 1000, exp 2000: 1000 s
        assert_eq!(
            checks.accept(c.clone(), now()),
            Err(Rejection::LifetimeTooLong)
        );
        checks.max_lifetime = Seconds::new(1_000);
        assert!(checks.accept(c, now()).is_ok());
    }

    #[test]
    fn times_near_the_end_of_the_range_do_not_overflow() {
        let checks = ClaimChecks::new(service());
        let mut c = claims("x");
        c.expires_at = UnixTime::from_secs(crate::time::LATEST);
        c.issued_at = UnixTime::from_secs(0);
        assert_eq!(checks.accept(c, now()), Err(Rejection::LifetimeTooLong));
        assert!(UnixTime::from_secs(-1).is_none());
        assert!(UnixTime::from_secs(crate::time::LATEST + 1).is_none());
    }

    #[test]
    fn binding_accepts_matching_headers() {
        assert_eq!(
            bind_headers(&claims("x"), &metadata(), &service()),
            Ok(None)
        );
    }

    #[test]
    fn binding_refuses_a_realm_mismatch() {
        let mut m = metadata();
        m.realm = Some("saas".into());
        assert_eq!(
            bind_headers(&claims("x"), &m, &service()),
            Err(AuthError::HeaderMismatch(BoundHeader::Realm))
        );
        m.realm = None;
        assert_eq!(
            bind_headers(&claims("x"), &m, &service()),
            Err(AuthError::HeaderMismatch(BoundHeader::Realm))
        );
    }

    #[test]
    fn binding_refuses_an_instance_mismatch() {
        let mut m = metadata();
        m.instance_id = Some("instance-2".into());
        assert_eq!(
            bind_headers(&claims("x"), &m, &service()),
            Err(AuthError::HeaderMismatch(BoundHeader::InstanceId))
        );
    }

    #[test]
    fn binding_checks_the_mapped_instance_claim_against_the_instance_for_instance_tokens() {
        let mut c = claims("x");
        c.instance_id = None;
        // GitLab's shape maps `sub`; a provider's its client id (`azp`, ...). The claim the
        // mapping named is what binds, whatever `sub` says.
        c.caller_instance = Some("instance-9".into());
        assert_eq!(
            bind_headers(&c, &metadata(), &service()),
            Err(AuthError::HeaderMismatch(BoundHeader::InstanceId))
        );
        c.subject = Some("service-account-4f1e".into());
        c.caller_instance = Some("instance-1".into());
        assert_eq!(bind_headers(&c, &metadata(), &service()), Ok(None));
    }

    #[test]
    fn the_caller_instance_is_the_bound_instance_claim() {
        let mut c = claims("x");
        assert_eq!(caller_instance(&c, &service()), Some("instance-1"));
        // An OpenID provider's token: no `gitlab_instance_id`, the mapped client id binds.
        c.instance_id = Some(String::new());
        c.caller_instance = Some("client-7".into());
        assert_eq!(caller_instance(&c, &service()), Some("client-7"));
        c.caller_instance = None;
        assert_eq!(caller_instance(&c, &service()), None);
        // This service's own user token: its `sub` is a user, never an instance.
        let mut u = claims(ServiceName::DEFAULT);
        u.instance_id = None;
        u.caller_instance = Some("user-7".into());
        assert_eq!(caller_instance(&u, &service()), None);
        u.instance_id = Some("instance-1".into());
        assert_eq!(caller_instance(&u, &service()), Some("instance-1"));
    }

    #[test]
    fn binding_checks_sub_against_global_user_for_user_tokens() {
        let mut c = claims(ServiceName::DEFAULT);
        c.subject = Some("user-7".into());
        assert_eq!(bind_headers(&c, &metadata(), &service()), Ok(None));
        c.subject = Some("user-8".into());
        assert_eq!(
            bind_headers(&c, &metadata(), &service()),
            Err(AuthError::HeaderMismatch(BoundHeader::GlobalUserId))
        );
    }

    #[test]
    fn binding_skips_absent_and_empty_claims() {
        let mut c = claims("x");
        c.realm = Some(String::new());
        c.instance_id = None;
        c.subject = None;
        c.caller_instance = None;
        assert_eq!(
            bind_headers(&c, &RequestMetadata::default(), &service()),
            Ok(None)
        );
    }

    #[test]
    fn seat_count_mismatch_is_reported_not_refused() {
        let mut c = claims("x");
        c.duo_seat_count = Some("10".into());
        let mut m = metadata();
        m.duo_seat_count = Some("11".into());
        let mismatch = bind_headers(&c, &m, &service()).unwrap().unwrap();
        assert_eq!(mismatch.claim, "10");
        m.duo_seat_count = Some("10".into());
        assert_eq!(bind_headers(&c, &m, &service()), Ok(None));
    }

    fn scoped(iss: &str, scopes: &[&str]) -> Identity {
        let mut c = claims(iss);
        c.scopes = scopes.iter().map(|s| UnitPrimitive::new(*s)).collect();
        verified(c)
    }

    fn flow(name: &str) -> Flow {
        Flow::named(name)
    }

    const CDOT: &str = "https://customers.gitlab.com";

    #[test]
    fn execute_workflow_needs_the_agent_platform_or_its_legacy_name_and_chat_needs_duo_chat() {
        let run = |scopes: &[&str], f: &str| {
            authorize(
                &scoped(CDOT, scopes),
                &Call::ExecuteWorkflow(flow(f)),
                &service(),
            )
        };
        for scope in [
            UnitPrimitive::DUO_AGENT_PLATFORM,
            UnitPrimitive::EXECUTE_WORKFLOW,
        ] {
            assert_eq!(run(&[scope], "software_development"), Ok(()));
            assert_eq!(run(&[scope], "developer/v1"), Ok(()));
            assert_eq!(
                run(&[scope], "chat"),
                Err(AuthError::Unauthorized(Denied::ExecuteWorkflow(flow(
                    "chat"
                ))))
            );
        }
        assert_eq!(run(&[UnitPrimitive::DUO_CHAT], "chat"), Ok(()));
        let denied = run(&[UnitPrimitive::DUO_CHAT], "developer/v1").unwrap_err();
        assert_eq!(denied.details(), "Unauthorized to execute developer/v1");
        let denied = run(&[UnitPrimitive::GENERATE_TOKEN], "").unwrap_err();
        assert_eq!(denied.details(), "Unauthorized to execute workflow");
    }

    #[test]
    fn user_tokens_may_execute_workflows() {
        let user = scoped(ServiceName::DEFAULT, &[UnitPrimitive::DUO_AGENT_PLATFORM]);
        assert_eq!(
            authorize(&user, &Call::ExecuteWorkflow(flow("x")), &service()),
            Ok(())
        );
        assert_eq!(authorize(&user, &Call::Authenticated, &service()), Ok(()));
    }

    #[test]
    fn generate_token_by_flow_with_2024_and_2025_scopes_from_a_foreign_issuer() {
        let mint = |scopes: &[&str], f: Option<&str>| {
            authorize(
                &scoped(CDOT, scopes),
                &Call::GenerateToken(Flow::of_token_request(f)),
                &service(),
            )
        };
        for scope in [
            UnitPrimitive::DUO_AGENT_PLATFORM,
            UnitPrimitive::EXECUTE_WORKFLOW,
            UnitPrimitive::GENERATE_TOKEN,
        ] {
            assert_eq!(mint(&[scope], None), Ok(()));
            assert_eq!(mint(&[scope], Some("software_development")), Ok(()));
            assert_eq!(
                mint(&[scope], Some("chat")),
                Err(AuthError::Unauthorized(Denied::GenerateToken))
            );
        }
        assert_eq!(mint(&[UnitPrimitive::DUO_CHAT], Some("chat")), Ok(()));
        assert_eq!(
            mint(&[UnitPrimitive::DUO_CHAT], None),
            Err(AuthError::Unauthorized(Denied::GenerateToken))
        );
        assert_eq!(
            mint(&[], None).unwrap_err().details(),
            "Unauthorized to generate token"
        );
    }

    #[test]
    fn a_user_token_can_neither_generate_tokens_nor_track_self_hosted_usage() {
        let user = scoped(
            ServiceName::DEFAULT,
            &[
                UnitPrimitive::DUO_AGENT_PLATFORM,
                UnitPrimitive::DUO_CHAT,
                UnitPrimitive::EXECUTE_WORKFLOW,
                UnitPrimitive::GENERATE_TOKEN,
            ],
        );
        for f in [None, Some("chat")] {
            assert_eq!(
                authorize(
                    &user,
                    &Call::GenerateToken(Flow::of_token_request(f)),
                    &service()
                ),
                Err(AuthError::Unauthorized(Denied::GenerateToken))
            );
        }
        let denied = authorize(&user, &Call::TrackSelfHostedExecuteWorkflow, &service());
        assert_eq!(
            denied.unwrap_err().details(),
            "Unauthorized to track self-hosted workflow execution"
        );
    }

    #[test]
    fn a_caller_without_any_unit_primitive_is_refused_saying_where_the_service_looked() {
        let mut c = claims(CDOT);
        c.scope_evidence = crate::mapping::ScopeEvidence {
            looked_at: vec![crate::ClaimName::new("scope")],
            found_in: Some(crate::ClaimName::new("scope")),
            provider_scopes: vec!["openid".into(), "dws:run".into()],
        };
        let refused = authorize(
            &verified(c),
            &Call::ExecuteWorkflow(flow("chat")),
            &service(),
        )
        .unwrap_err();
        assert_eq!(refused.details(), "Unauthorized to execute chat");
        assert_eq!(refused.kind(), crate::error::StatusKind::PermissionDenied);
        assert_eq!(
            refused.to_string(),
            "Unauthorized to execute chat: the token carries no unit primitive \
             (claims looked at: scope; provider scopes in scope: [openid, dws:run])"
        );
        // With some unit primitive, the refusal is the ordinary one.
        assert_eq!(
            authorize(
                &scoped(CDOT, &[UnitPrimitive::DUO_AGENT_PLATFORM]),
                &Call::ExecuteWorkflow(flow("chat")),
                &service()
            ),
            Err(AuthError::Unauthorized(Denied::ExecuteWorkflow(flow(
                "chat"
            ))))
        );
    }

    #[test]
    fn tracking_self_hosted_usage_needs_the_agent_platform() {
        let track = |scopes: &[&str]| {
            authorize(
                &scoped(CDOT, scopes),
                &Call::TrackSelfHostedExecuteWorkflow,
                &service(),
            )
        };
        assert_eq!(track(&[UnitPrimitive::DUO_AGENT_PLATFORM]), Ok(()));
        for scope in [UnitPrimitive::EXECUTE_WORKFLOW, UnitPrimitive::DUO_CHAT] {
            assert_eq!(
                track(&[scope]),
                Err(AuthError::Unauthorized(
                    Denied::TrackSelfHostedExecuteWorkflow
                ))
            );
        }
    }

    #[test]
    fn the_debug_identity_passes_every_check() {
        for call in [
            Call::GenerateToken(flow("chat")),
            Call::ExecuteWorkflow(flow("chat")),
            Call::TrackSelfHostedExecuteWorkflow,
            Call::Authenticated,
        ] {
            assert_eq!(authorize(&Identity::Debug, &call, &service()), Ok(()));
        }
    }

    #[test]
    fn user_tokens_carry_the_callers_delegable_scopes_only() {
        let d = Delegation::default();
        let scopes = |s: &[&str]| -> Vec<String> {
            d.scopes_for(&scoped(CDOT, s))
                .into_iter()
                .map(|p| p.as_str().to_owned())
                .collect()
        };
        assert_eq!(
            scopes(&[
                "duo_chat",
                "unknown_scope",
                "duo_agent_platform",
                "code_suggestions"
            ]),
            ["duo_agent_platform", "duo_chat"]
        );
        assert_eq!(
            scopes(&[UnitPrimitive::GENERATE_TOKEN]),
            [UnitPrimitive::EXECUTE_WORKFLOW],
            "a 2024 caller's token still delegates workflow execution"
        );
        assert!(scopes(&["code_suggestions"]).is_empty());
        assert_eq!(d.scopes_for(&Identity::Debug), d.delegable());
        assert_eq!(d.delegable().len(), 4);
    }

    #[test]
    fn the_delegable_set_is_configurable_and_bounds_everything() {
        let d = Delegation::new(vec![
            UnitPrimitive::new(UnitPrimitive::DUO_CHAT),
            UnitPrimitive::new(UnitPrimitive::DUO_CHAT),
        ]);
        assert_eq!(d.delegable().len(), 1);
        let caller = scoped(
            CDOT,
            &[
                UnitPrimitive::DUO_AGENT_PLATFORM,
                UnitPrimitive::GENERATE_TOKEN,
            ],
        );
        assert!(d.scopes_for(&caller).is_empty());
        assert_eq!(d.scopes_for(&Identity::Debug).len(), 1);
    }
}
