//! What a request says about itself: the Cloud Connector metadata.

use std::fmt;

/// The headers a token's claims are bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundHeader {
    Realm,
    InstanceId,
    GlobalUserId,
}

/// The `authorization` metadata as received: it may be absent, or (a smuggling attempt) repeated.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum AuthorizationHeader {
    #[default]
    Missing,
    One(String),
    Repeated,
}

/// The value is a credential: debug output shows only its length.
impl fmt::Debug for AuthorizationHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthorizationHeader::Missing => f.write_str("Missing"),
            AuthorizationHeader::One(v) => write!(f, "One(<{} bytes>)", v.len()),
            AuthorizationHeader::Repeated => f.write_str("Repeated"),
        }
    }
}

/// The request metadata the auth rules read (lower-case gRPC metadata keys). Values that are not
/// valid visible ASCII are treated as absent by the transport.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestMetadata {
    pub authorization: AuthorizationHeader,
    /// `x-gitlab-authentication-type`
    pub authentication_type: Option<String>,
    /// `x-gitlab-realm`
    pub realm: Option<String>,
    /// `x-gitlab-instance-id`
    pub instance_id: Option<String>,
    /// `x-gitlab-global-user-id`
    pub global_user_id: Option<String>,
    /// `x-gitlab-duo-seat-count`
    pub duo_seat_count: Option<String>,
}

/// The token from `authorization: Bearer <token>`, before any verification.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Never print a token, not even in debug output.
impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BearerToken(<{} bytes>)", self.0.len())
    }
}
