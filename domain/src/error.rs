//! Every refusal the service can give, with SPEC's exact `details` strings, so that every adapter
//! reports them the same way. One concept, one place: transports map [`StatusKind`] to their codes.

use std::borrow::Cow;
use std::fmt;

use crate::identity::Issuer;
use crate::mapping::{ClaimName, ScopeEvidence};
use crate::method::{Flow, FlowError};
use crate::request::BoundHeader;

/// The class of a refusal; the transport maps it to a gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    Unauthenticated,
    PermissionDenied,
    Unavailable,
    InvalidArgument,
}

/// Why a caller was refused. `details()` is what the caller sees; `Display` adds the reason for
/// the log (never a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    MissingAuthorization,
    InvalidAuthorizationHeader,
    UnsupportedAuthenticationType,
    /// The token failed verification; the reason goes to the log only.
    Forbidden(Rejection),
    /// The token's issuer is known but its key source has never produced usable keys.
    KeysUnavailable(Issuer),
    HeaderMismatch(BoundHeader),
    /// The flow fields of a start request contradict each other (SPEC C2).
    InvalidFlow(FlowError),
    Unauthorized(Denied),
    /// Like `Unauthorized`, for a caller whose token carries no unit primitive at all: the log
    /// says where the service looked (claim names and provider scope names, never values of
    /// other claims), which is what an operator mapping a new provider needs.
    NoUnitPrimitive(Denied, ScopeEvidence),
    MissingGlobalUserId,
}

/// What a caller was not authorized to do; each has its own `details` (SPEC C2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    GenerateToken,
    ExecuteWorkflow(Flow),
    TrackSelfHostedExecuteWorkflow,
}

impl AuthError {
    pub fn kind(&self) -> StatusKind {
        match self {
            AuthError::MissingAuthorization
            | AuthError::InvalidAuthorizationHeader
            | AuthError::UnsupportedAuthenticationType
            | AuthError::Forbidden(_)
            | AuthError::HeaderMismatch(_) => StatusKind::Unauthenticated,
            AuthError::KeysUnavailable(_) => StatusKind::Unavailable,
            AuthError::Unauthorized(_) | AuthError::NoUnitPrimitive(..) => {
                StatusKind::PermissionDenied
            }
            AuthError::MissingGlobalUserId | AuthError::InvalidFlow(_) => {
                StatusKind::InvalidArgument
            }
        }
    }

    /// The status `details` a client sees (SPEC Parts A and C, byte for byte).
    pub fn details(&self) -> Cow<'static, str> {
        let fixed = match self {
            AuthError::MissingAuthorization => "No authorization header presented",
            AuthError::InvalidAuthorizationHeader => "Invalid authorization header",
            AuthError::UnsupportedAuthenticationType => {
                "Invalid authentication token type - only OIDC is supported"
            }
            AuthError::Forbidden(_) => "Forbidden by auth provider",
            AuthError::KeysUnavailable(_) => "Keys of the token's issuer are not available",
            AuthError::HeaderMismatch(BoundHeader::Realm) => "Header mismatch 'X-Gitlab-Realm'",
            AuthError::HeaderMismatch(BoundHeader::InstanceId) => {
                "Header mismatch 'X-Gitlab-Instance-Id'"
            }
            AuthError::HeaderMismatch(BoundHeader::GlobalUserId) => {
                "Header mismatch 'X-Gitlab-Global-User-Id'"
            }
            AuthError::InvalidFlow(e) => e.message(),
            AuthError::Unauthorized(denied) | AuthError::NoUnitPrimitive(denied, _) => {
                return denied.details()
            }
            AuthError::MissingGlobalUserId => "Missing 'X-Gitlab-Global-User-Id' header",
        };
        Cow::Borrowed(fixed)
    }
}

impl Denied {
    /// SPEC C2's `details`.
    pub fn details(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Denied::GenerateToken => "Unauthorized to generate token",
            Denied::ExecuteWorkflow(flow) if !flow.as_str().is_empty() => {
                return Cow::Owned(format!("Unauthorized to execute {flow}"));
            }
            Denied::ExecuteWorkflow(_) => "Unauthorized to execute workflow",
            Denied::TrackSelfHostedExecuteWorkflow => {
                "Unauthorized to track self-hosted workflow execution"
            }
        })
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Forbidden(reason) => write!(f, "{}: {reason}", self.details()),
            AuthError::KeysUnavailable(issuer) => write!(f, "{} (issuer {issuer})", self.details()),
            AuthError::NoUnitPrimitive(_, evidence) => write!(
                f,
                "{}: the token carries no unit primitive ({evidence})",
                self.details()
            ),
            other => f.write_str(&other.details()),
        }
    }
}

impl std::error::Error for AuthError {}

/// Why a token failed verification. For logs and metrics only: callers see
/// `Forbidden by auth provider` whatever the reason, so the verifier is no oracle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    TooLong {
        len: usize,
        max: usize,
    },
    Malformed(&'static str),
    UnsupportedAlgorithm,
    AlgorithmNotAllowed,
    UnsupportedHeader(&'static str),
    InvalidKeyId,
    UnknownIssuer,
    UnknownKeyId,
    /// Several keys of the issuer carry the token's `kid`.
    AmbiguousKeyId,
    BadSignature,
    InvalidClaim(ClaimName),
    MissingExpiry,
    Expired,
    NotYetValid,
    IssuedInFuture,
    LifetimeTooLong,
    MissingAudience,
    WrongAudience,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::TooLong { len, max } => write!(f, "token of {len} bytes exceeds {max}"),
            Rejection::Malformed(what) => write!(f, "malformed token: {what}"),
            Rejection::UnsupportedAlgorithm => f.write_str("unsupported or missing alg"),
            Rejection::AlgorithmNotAllowed => {
                f.write_str("alg not allowed by the issuer's key source")
            }
            Rejection::UnsupportedHeader(name) => write!(f, "unsupported header parameter {name}"),
            Rejection::InvalidKeyId => f.write_str("kid is not a string of at most 256 bytes"),
            Rejection::UnknownIssuer => f.write_str("unknown issuer"),
            Rejection::UnknownKeyId => f.write_str("no key of the issuer has this kid"),
            Rejection::AmbiguousKeyId => f.write_str("several keys of the issuer carry this kid"),
            Rejection::BadSignature => f.write_str("signature does not verify"),
            Rejection::InvalidClaim(name) => write!(f, "invalid claim {name}"),
            Rejection::MissingExpiry => f.write_str("missing exp"),
            Rejection::Expired => f.write_str("expired"),
            Rejection::NotYetValid => f.write_str("not yet valid (nbf)"),
            Rejection::IssuedInFuture => f.write_str("issued in the future (iat)"),
            Rejection::LifetimeTooLong => f.write_str("lifetime exceeds the configured maximum"),
            Rejection::MissingAudience => f.write_str("missing aud"),
            Rejection::WrongAudience => f.write_str("aud does not name this service"),
        }
    }
}
