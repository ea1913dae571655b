//! The user token minted by `GenerateToken`: what it says, decided here; how it is signed, by the
//! local authority adapter.

use std::fmt;

use crate::error::AuthError;
use crate::identity::{CopiedClaim, Identity, ServiceName, UnitPrimitive};
use crate::policy::Delegation;
use crate::request::RequestMetadata;
use crate::time::{Seconds, UnixTime};

/// User tokens live for one hour.
pub const USER_TOKEN_LIFETIME: Seconds = Seconds::new(3600);

/// Everything a user token will claim, except its `jti` and signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTokenGrant {
    /// `iss` and `aud`.
    pub service: ServiceName,
    /// `sub`: the `x-gitlab-global-user-id` header.
    pub subject: String,
    pub realm: Option<String>,
    pub instance_id: Option<String>,
    pub scopes: Vec<UnitPrimitive>,
    pub duo_seat_count: Option<String>,
    /// Copied unchanged from the caller's token (SPEC C3).
    pub copied: Vec<CopiedClaim>,
    pub issued_at: UnixTime,
    pub expires_at: UnixTime,
}

impl UserTokenGrant {
    /// What a user token for this caller may say. The caller must already be authorized for
    /// `GenerateToken`.
    pub fn for_caller(
        identity: &Identity,
        metadata: &RequestMetadata,
        service: &ServiceName,
        delegation: &Delegation,
        now: UnixTime,
    ) -> Result<Self, AuthError> {
        let subject = metadata
            .global_user_id
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::MissingGlobalUserId)?;
        Ok(Self {
            service: service.clone(),
            subject: subject.to_owned(),
            realm: metadata.realm.clone(),
            instance_id: metadata.instance_id.clone(),
            scopes: delegation.scopes_for(identity),
            duo_seat_count: identity.claims().and_then(|c| c.duo_seat_count.clone()),
            copied: identity
                .claims()
                .map(|c| c.copied.clone())
                .unwrap_or_default(),
            issued_at: now,
            expires_at: now.plus(USER_TOKEN_LIFETIME),
        })
    }
}

/// How long a token the service mints for its own calls to the executor lives.
pub const OWN_TOKEN_LIFETIME: Seconds = Seconds::new(300);

impl UserTokenGrant {
    /// A token the service mints for itself, for its own calls to the workflow executor (its
    /// capabilities): an executor whose authentication is on shares this service's authority
    /// key and accepts it. It names the service as its subject (and `x-gitlab-global-user-id`
    /// must say the same), carries no unit primitive, no realm, no instance, lives five minutes,
    /// and never leaves the service's connection to the executor.
    pub fn for_the_service_itself(service: &ServiceName, now: UnixTime) -> Self {
        Self {
            service: service.clone(),
            subject: service.as_str().to_owned(),
            realm: None,
            instance_id: None,
            scopes: Vec::new(),
            duo_seat_count: None,
            copied: Vec::new(),
            issued_at: now,
            expires_at: now.plus(OWN_TOKEN_LIFETIME),
        }
    }
}

/// A signed user token. Its text is a credential: it is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct UserToken {
    pub token: String,
    pub expires_at: UnixTime,
}

impl fmt::Debug for UserToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Claims, Issuer};
    use crate::policy::ClaimChecks;

    fn metadata() -> RequestMetadata {
        RequestMetadata {
            realm: Some("saas".into()),
            instance_id: Some("ee-1".into()),
            global_user_id: Some("777".into()),
            duo_seat_count: Some("33".into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_grant_follows_the_headers_and_lasts_an_hour() {
        let service = ServiceName::new(ServiceName::DEFAULT);
        let now = UnixTime::from_secs(10_000).unwrap();
        let delegation = Delegation::default();
        let g =
            UserTokenGrant::for_caller(&Identity::Debug, &metadata(), &service, &delegation, now)
                .unwrap();
        assert_eq!(g.subject, "777");
        assert_eq!(g.realm.as_deref(), Some("saas"));
        assert_eq!(g.instance_id.as_deref(), Some("ee-1"));
        assert_eq!(g.expires_at.as_secs(), 13_600);
        assert_eq!(g.scopes, delegation.delegable());
        assert!(g.copied.is_empty());
        // The debug identity has no token, so no seat count claim to carry over.
        assert_eq!(g.duo_seat_count, None);
    }

    #[test]
    fn the_seat_count_and_copied_claims_come_from_the_callers_token() {
        let service = ServiceName::new(ServiceName::DEFAULT);
        let now = UnixTime::from_secs(10_000).unwrap();
        let claims = Claims {
            issuer: Issuer::new("https://gitlab.com"),
            subject: Some("ee-1".into()),
            audience: vec![ServiceName::DEFAULT.into()],
            scopes: vec![UnitPrimitive::new(UnitPrimitive::GENERATE_TOKEN)],
            realm: None,
            instance_id: None,
            caller_instance: Some("ee-1".into()),
            scope_evidence: Default::default(),
            duo_seat_count: Some("12".into()),
            copied: vec![CopiedClaim {
                name: "tool_access_policies",
                value: crate::identity::JsonText::new(r#"{"a":[1]}"#.into()),
            }],
            jti: None,
            expires_at: UnixTime::from_secs(11_000),
            not_before: None,
            issued_at: None,
        };
        let identity = Identity::Token(
            ClaimChecks::new(service.clone())
                .accept(claims, now)
                .unwrap(),
        );
        let g = UserTokenGrant::for_caller(
            &identity,
            &metadata(),
            &service,
            &Delegation::default(),
            now,
        )
        .unwrap();
        assert_eq!(g.duo_seat_count.as_deref(), Some("12"));
        assert_eq!(g.scopes, vec![UnitPrimitive::execute_workflow()]);
        assert_eq!(g.copied, identity.claims().unwrap().copied);
    }

    #[test]
    fn the_services_own_token_names_the_service_and_grants_nothing() {
        let service = ServiceName::new(ServiceName::DEFAULT);
        let now = UnixTime::from_secs(10_000).unwrap();
        let g = UserTokenGrant::for_the_service_itself(&service, now);
        assert_eq!(g.subject, ServiceName::DEFAULT);
        assert!(g.scopes.is_empty() && g.copied.is_empty());
        assert_eq!(
            (g.realm, g.instance_id, g.duo_seat_count),
            (None, None, None)
        );
        assert_eq!(g.expires_at.as_secs(), 10_300);
    }

    #[test]
    fn a_missing_or_empty_global_user_id_is_an_invalid_argument() {
        let service = ServiceName::new(ServiceName::DEFAULT);
        let now = UnixTime::from_secs(10_000).unwrap();
        let mut m = metadata();
        m.global_user_id = None;
        assert_eq!(
            UserTokenGrant::for_caller(&Identity::Debug, &m, &service, &Delegation::default(), now),
            Err(AuthError::MissingGlobalUserId)
        );
        m.global_user_id = Some(String::new());
        assert_eq!(
            UserTokenGrant::for_caller(&Identity::Debug, &m, &service, &Delegation::default(), now),
            Err(AuthError::MissingGlobalUserId)
        );
    }
}
