//! The authentication steps of SPEC Part A, in their order, then per-call authorization (SPEC
//! C2). Transports turn a request into [`RequestMetadata`], ask [`Gatekeeper::authenticate`], and,
//! once they know the [`Call`] (which may need the first request message), [`Gatekeeper::authorize`].

use std::sync::Arc;

use crate::error::AuthError;
use crate::identity::{Identity, ServiceName};
use crate::method::Call;
use crate::policy::{bind_headers, caller_instance, SeatCountMismatch};
use crate::ports::{Authenticator, Authorizer};
use crate::request::{AuthorizationHeader, BearerToken, RequestMetadata};

/// Whether callers must authenticate.
#[derive(Clone)]
pub enum AuthMode {
    Enabled(Arc<dyn Authenticator>),
    /// `DUO_WORKFLOW_AUTH__ENABLED=false`: every caller is the debug identity.
    Disabled,
}

/// A caller let in, with what the log should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub identity: Identity,
    /// The instance the caller speaks for ([`caller_instance`]), for the log.
    pub instance_id: Option<String>,
    pub seat_count_mismatch: Option<SeatCountMismatch>,
}

pub struct Gatekeeper {
    mode: AuthMode,
    authorizer: Arc<dyn Authorizer>,
    service: ServiceName,
}

/// The only accepted authentication type.
pub const AUTHENTICATION_TYPE_OIDC: &str = "oidc";

impl Gatekeeper {
    pub fn new(mode: AuthMode, authorizer: Arc<dyn Authorizer>, service: ServiceName) -> Self {
        Self {
            mode,
            authorizer,
            service,
        }
    }

    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    pub fn auth_enabled(&self) -> bool {
        matches!(self.mode, AuthMode::Enabled(_))
    }

    /// Steps 1–5: authenticates the caller and binds its claims to the headers.
    pub async fn authenticate(&self, metadata: &RequestMetadata) -> Result<Admission, AuthError> {
        Ok(match &self.mode {
            AuthMode::Disabled => Admission {
                identity: Identity::Debug,
                instance_id: None,
                seat_count_mismatch: None,
            },
            AuthMode::Enabled(authenticator) => {
                let token = bearer_token(&metadata.authorization)?;
                if metadata.authentication_type.as_deref() != Some(AUTHENTICATION_TYPE_OIDC) {
                    return Err(AuthError::UnsupportedAuthenticationType);
                }
                let claims = authenticator.authenticate(&token).await?;
                let seat_count_mismatch = bind_headers(claims.claims(), metadata, &self.service)?;
                Admission {
                    instance_id: caller_instance(claims.claims(), &self.service).map(str::to_owned),
                    identity: Identity::Token(claims),
                    seat_count_mismatch,
                }
            }
        })
    }

    /// Whether an authenticated caller may make this call.
    pub fn authorize(&self, identity: &Identity, call: &Call) -> Result<(), AuthError> {
        self.authorizer.authorize(identity, call)
    }
}

/// Steps 1 and 2: `authorization` must be present once, as `<bearer> <token>` with the scheme
/// word in any letter case and exactly one space (what GitLab's Python service accepted).
pub fn bearer_token(header: &AuthorizationHeader) -> Result<BearerToken, AuthError> {
    let value = match header {
        AuthorizationHeader::Missing => return Err(AuthError::MissingAuthorization),
        AuthorizationHeader::Repeated => return Err(AuthError::InvalidAuthorizationHeader),
        AuthorizationHeader::One(v) => v,
    };
    let mut parts = value.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(scheme), Some(token), None) if scheme.eq_ignore_ascii_case("bearer") => {
            Ok(BearerToken::new(token))
        }
        _ => Err(AuthError::InvalidAuthorizationHeader),
    }
}

/// The default [`Authorizer`]: the unit-primitive table of SPEC C2.
pub struct UnitPrimitiveAuthorizer {
    service: ServiceName,
}

impl UnitPrimitiveAuthorizer {
    pub fn new(service: ServiceName) -> Self {
        Self { service }
    }
}

impl Authorizer for UnitPrimitiveAuthorizer {
    fn authorize(&self, identity: &Identity, call: &Call) -> Result<(), AuthError> {
        crate::policy::authorize(identity, call, &self.service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Rejection;
    use crate::identity::{Claims, Issuer, UnitPrimitive, VerifiedClaims};
    use crate::policy::ClaimChecks;
    use crate::ports::VerificationError;
    use crate::request::BoundHeader;
    use crate::time::UnixTime;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Fixed(Result<VerifiedClaims, VerificationError>, AtomicUsize);

    #[async_trait]
    impl Authenticator for Fixed {
        async fn authenticate(&self, _: &BearerToken) -> Result<VerifiedClaims, VerificationError> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.clone()
        }
    }

    fn service() -> ServiceName {
        ServiceName::new(ServiceName::DEFAULT)
    }

    fn good_claims() -> VerifiedClaims {
        let now = UnixTime::from_secs(100).unwrap();
        let c = Claims {
            issuer: Issuer::new("https://gitlab.com"),
            subject: Some("i-1".into()),
            audience: vec![ServiceName::DEFAULT.into()],
            scopes: vec![UnitPrimitive::execute_workflow()],
            realm: Some("saas".into()),
            instance_id: Some("i-1".into()),
            caller_instance: Some("i-1".into()),
            scope_evidence: Default::default(),
            duo_seat_count: None,
            copied: vec![],
            jti: None,
            expires_at: UnixTime::from_secs(200),
            not_before: None,
            issued_at: None,
        };
        ClaimChecks::new(service()).accept(c, now).unwrap()
    }

    fn keeper(result: Result<VerifiedClaims, VerificationError>) -> (Gatekeeper, Arc<Fixed>) {
        let auth = Arc::new(Fixed(result, AtomicUsize::new(0)));
        let g = Gatekeeper::new(
            AuthMode::Enabled(auth.clone()),
            Arc::new(UnitPrimitiveAuthorizer::new(service())),
            service(),
        );
        (g, auth)
    }

    fn metadata(auth: &str) -> RequestMetadata {
        RequestMetadata {
            authorization: AuthorizationHeader::One(auth.into()),
            authentication_type: Some("oidc".into()),
            realm: Some("saas".into()),
            instance_id: Some("i-1".into()),
            global_user_id: Some("u-1".into()),
            duo_seat_count: None,
        }
    }

    /// Authentication, then authorization of an `ExecuteWorkflow` of the default flow.
    fn admit(g: &Gatekeeper, m: &RequestMetadata) -> Result<Admission, AuthError> {
        let admission = futures::executor::block_on(g.authenticate(m))?;
        let call = Call::ExecuteWorkflow(crate::method::Flow::named("software_development"));
        g.authorize(&admission.identity, &call)?;
        Ok(admission)
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_with_exactly_one_space() {
        for ok in ["Bearer t", "bearer t", "BEARER t", "bEaReR t"] {
            let h = AuthorizationHeader::One(ok.into());
            assert_eq!(bearer_token(&h).unwrap().as_str(), "t");
        }
        for bad in [
            "Bearer",
            "Bearer  t",
            "Basic t",
            "Bearer t u",
            "Bearert",
            " Bearer t",
            "t",
        ] {
            let h = AuthorizationHeader::One(bad.into());
            assert_eq!(
                bearer_token(&h),
                Err(AuthError::InvalidAuthorizationHeader),
                "{bad:?}"
            );
        }
        assert_eq!(
            bearer_token(&AuthorizationHeader::Missing),
            Err(AuthError::MissingAuthorization)
        );
        assert_eq!(
            bearer_token(&AuthorizationHeader::Repeated),
            Err(AuthError::InvalidAuthorizationHeader)
        );
    }

    #[test]
    fn steps_run_in_order_and_the_authenticator_is_asked_last() {
        let (g, auth) = keeper(Ok(good_claims()));
        let mut m = metadata("Bearer t");
        m.authorization = AuthorizationHeader::Missing;
        m.authentication_type = None;
        assert_eq!(admit(&g, &m), Err(AuthError::MissingAuthorization));
        m.authorization = AuthorizationHeader::One("Token t".into());
        assert_eq!(admit(&g, &m), Err(AuthError::InvalidAuthorizationHeader));
        m.authorization = AuthorizationHeader::One("Bearer t".into());
        assert_eq!(admit(&g, &m), Err(AuthError::UnsupportedAuthenticationType));
        m.authentication_type = Some("OIDC".into());
        assert_eq!(admit(&g, &m), Err(AuthError::UnsupportedAuthenticationType));
        assert_eq!(auth.1.load(Ordering::SeqCst), 0);
        m.authentication_type = Some("oidc".into());
        assert!(admit(&g, &m).is_ok());
        assert_eq!(auth.1.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn verification_failures_map_to_forbidden_or_unavailable() {
        let (g, _) = keeper(Err(VerificationError::Rejected(Rejection::BadSignature)));
        let e = admit(&g, &metadata("Bearer t")).unwrap_err();
        assert_eq!(e.details(), "Forbidden by auth provider");
        let (g, _) = keeper(Err(VerificationError::KeysUnavailable(Issuer::new("x"))));
        let e = admit(&g, &metadata("Bearer t")).unwrap_err();
        assert_eq!(e.kind(), crate::error::StatusKind::Unavailable);
    }

    #[test]
    fn binding_runs_before_authorization() {
        let (g, _) = keeper(Ok(good_claims()));
        let mut m = metadata("Bearer t");
        m.realm = Some("self-managed".into());
        assert_eq!(
            admit(&g, &m),
            Err(AuthError::HeaderMismatch(BoundHeader::Realm))
        );
    }

    #[test]
    fn disabled_auth_admits_anyone_as_debug() {
        let g = Gatekeeper::new(
            AuthMode::Disabled,
            Arc::new(UnitPrimitiveAuthorizer::new(service())),
            service(),
        );
        let a = admit(&g, &RequestMetadata::default()).unwrap();
        assert_eq!(a.identity, Identity::Debug);
    }
}
