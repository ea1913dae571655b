//! The rules: what makes claims acceptable, how claims bind to headers, which RPC needs which unit
//! primitive, and which unit primitives a user token may carry.

use crate::error::{AuthError, Rejection};
use crate::identity::{Claims, Identity, ServiceName, UnitPrimitive, VerifiedClaims};
use crate::request::{BoundHeader, RequestMetadata, Rpc};
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

    /// Accepts the claims of a token whose signature has verified.
    pub fn accept(&self, claims: Claims, now: UnixTime) -> Result<VerifiedClaims, Rejection> {
        if claims.audience.is_empty() {
            return Err(Rejection::MissingAudience);
        }
        if !claims.audience.iter().any(|a| a == self.audience.as_str()) {
            return Err(Rejection::WrongAudience);
        }
        let expires_at = claims.expires_at.ok_or(Rejection::MissingExpiry)?;
        if now.minus(self.leeway) >= expires_at {
            return Err(Rejection::Expired);
        }
        if let Some(nbf) = claims.not_before {
            if nbf > now.plus(self.leeway) {
                return Err(Rejection::NotYetValid);
            }
        }
        if let Some(iat) = claims.issued_at {
            if iat > now.plus(self.leeway) {
                return Err(Rejection::IssuedInFuture);
            }
        }
        let start = match (claims.issued_at, claims.not_before) {
            (Some(iat), Some(nbf)) => iat.min(nbf),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => now,
        };
        if expires_at.as_secs() - start.as_secs() > self.max_lifetime.as_u64() as i64 {
            return Err(Rejection::LifetimeTooLong);
        }
        Ok(VerifiedClaims::new(claims, expires_at))
    }
}

/// A `duo_seat_count` claim that differs from its header: logged, never refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatCountMismatch {
    pub claim: String,
    pub header: Option<String>,
}

/// Header binding (SPEC Part A): each claim, where present and non-empty, must equal its header.
/// `sub` binds to the global user id for this service's own user tokens, else to the instance id.
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
            claims.subject.as_deref(),
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

/// The per-RPC authorization table of SPEC Part A.
pub fn authorize(identity: &Identity, rpc: Rpc, service: &ServiceName) -> Result<(), AuthError> {
    let Some(claims) = identity.claims() else {
        return Ok(()); // the debug identity passes every check
    };
    let allowed = match rpc {
        Rpc::ExecuteWorkflow => claims.has_scope(UnitPrimitive::EXECUTE_WORKFLOW),
        // A user token must not mint further user tokens, whatever it carries.
        Rpc::GenerateToken => {
            !service.is_issuer_of(claims)
                && (claims.has_scope(UnitPrimitive::GENERATE_TOKEN)
                    || claims.has_scope(UnitPrimitive::EXECUTE_WORKFLOW))
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(AuthError::Unauthorized(rpc))
    }
}

/// The unit primitives a user token minted for this caller may carry: never one the caller's own
/// token could not grant. Either scope that allows `GenerateToken` delegates workflow execution.
pub fn delegable_scopes(identity: &Identity) -> Vec<UnitPrimitive> {
    let delegates_execution = match identity.claims() {
        None => true,
        Some(c) => {
            c.has_scope(UnitPrimitive::EXECUTE_WORKFLOW)
                || c.has_scope(UnitPrimitive::GENERATE_TOKEN)
        }
    };
    if delegates_execution {
        vec![UnitPrimitive::execute_workflow()]
    } else {
        Vec::new()
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
            duo_seat_count: None,
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
    fn binding_checks_sub_against_instance_for_instance_tokens() {
        let mut c = claims("x");
        c.instance_id = None;
        c.subject = Some("instance-9".into());
        assert_eq!(
            bind_headers(&c, &metadata(), &service()),
            Err(AuthError::HeaderMismatch(BoundHeader::InstanceId))
        );
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

    #[test]
    fn execute_workflow_requires_its_unit_primitive() {
        let mut c = claims("x");
        c.scopes = vec![UnitPrimitive::new(UnitPrimitive::GENERATE_TOKEN)];
        assert_eq!(
            authorize(&verified(c.clone()), Rpc::ExecuteWorkflow, &service()),
            Err(AuthError::Unauthorized(Rpc::ExecuteWorkflow))
        );
        c.scopes = vec![UnitPrimitive::execute_workflow()];
        assert_eq!(
            authorize(&verified(c), Rpc::ExecuteWorkflow, &service()),
            Ok(())
        );
    }

    #[test]
    fn generate_token_accepts_either_scope_from_a_foreign_issuer() {
        for scope in [
            UnitPrimitive::GENERATE_TOKEN,
            UnitPrimitive::EXECUTE_WORKFLOW,
        ] {
            let mut c = claims("https://customers.gitlab.com");
            c.scopes = vec![UnitPrimitive::new(scope)];
            assert_eq!(
                authorize(&verified(c), Rpc::GenerateToken, &service()),
                Ok(())
            );
        }
        let mut c = claims("https://customers.gitlab.com");
        c.scopes = vec![UnitPrimitive::new("duo_chat")];
        assert_eq!(
            authorize(&verified(c), Rpc::GenerateToken, &service()),
            Err(AuthError::Unauthorized(Rpc::GenerateToken))
        );
    }

    #[test]
    fn a_user_token_cannot_generate_tokens() {
        let mut c = claims(ServiceName::DEFAULT);
        c.scopes = vec![
            UnitPrimitive::execute_workflow(),
            UnitPrimitive::new(UnitPrimitive::GENERATE_TOKEN),
        ];
        assert_eq!(
            authorize(&verified(c), Rpc::GenerateToken, &service()),
            Err(AuthError::Unauthorized(Rpc::GenerateToken))
        );
    }

    #[test]
    fn the_debug_identity_passes_every_check() {
        assert_eq!(
            authorize(&Identity::Debug, Rpc::GenerateToken, &service()),
            Ok(())
        );
        assert_eq!(
            authorize(&Identity::Debug, Rpc::ExecuteWorkflow, &service()),
            Ok(())
        );
        assert_eq!(
            delegable_scopes(&Identity::Debug),
            vec![UnitPrimitive::execute_workflow()]
        );
    }

    #[test]
    fn user_tokens_carry_only_workflow_execution() {
        let mut c = claims("x");
        c.scopes = vec![
            UnitPrimitive::new(UnitPrimitive::GENERATE_TOKEN),
            UnitPrimitive::new("duo_chat"),
        ];
        assert_eq!(
            delegable_scopes(&verified(c.clone())),
            vec![UnitPrimitive::execute_workflow()]
        );
        c.scopes = vec![UnitPrimitive::new("duo_chat")];
        assert!(delegable_scopes(&verified(c)).is_empty());
    }
}
