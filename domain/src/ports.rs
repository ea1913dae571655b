//! The ports: what the domain needs from the outside world. Adapters implement them; contract
//! tests mock them.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{AuthError, Rejection};
use crate::identity::{Identity, Issuer, VerifiedClaims};
use crate::issuers::SourceIssuer;
use crate::keys::{Algorithm, KeySet};
use crate::mapping::{ClaimMapping, GITLAB_SHAPE};
use crate::method::Call;
use crate::request::BearerToken;
use crate::time::UnixTime;
use crate::user_token::{UserToken, UserTokenGrant};

/// Why a token could not be verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerificationError {
    /// The token is not acceptable (the caller sees `Forbidden by auth provider`).
    Rejected(Rejection),
    /// The token's issuer is known, but its key source has never produced usable keys: the
    /// service cannot judge the token, which is an outage, not a bad token.
    KeysUnavailable(Issuer),
}

impl From<VerificationError> for AuthError {
    fn from(e: VerificationError) -> Self {
        match e {
            VerificationError::Rejected(r) => AuthError::Forbidden(r),
            VerificationError::KeysUnavailable(i) => AuthError::KeysUnavailable(i),
        }
    }
}

impl From<Rejection> for VerificationError {
    fn from(r: Rejection) -> Self {
        VerificationError::Rejected(r)
    }
}

/// Verifies a bearer token: signature with a key of its issuer's source, then claims.
#[async_trait]
pub trait Authenticator: Send + Sync {
    async fn authenticate(&self, token: &BearerToken) -> Result<VerifiedClaims, VerificationError>;
}

/// Decides whether an identity may make a call.
pub trait Authorizer: Send + Sync {
    fn authorize(&self, identity: &Identity, call: &Call) -> Result<(), AuthError>;
}

/// Why a user token could not be minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueError(pub String);

impl std::fmt::Display for IssueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "could not mint a user token: {}", self.0)
    }
}

impl std::error::Error for IssueError {}

/// Mints user tokens (the local authority).
#[async_trait]
pub trait TokenIssuer: Send + Sync {
    async fn issue(&self, grant: &UserTokenGrant) -> Result<UserToken, IssueError>;
}

/// The time now; a port so that every time rule is testable.
pub trait Clock: Send + Sync {
    fn now(&self) -> UnixTime;
}

/// The state of a key source, as readiness and operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    /// Never produced keys yet; `reason` says what is in the way, if anything is known.
    Pending { reason: Option<String> },
    /// Serving keys.
    Ready { keys: usize, loaded_at: UnixTime },
    /// Serving the last good keys while refreshes fail.
    Stale {
        keys: usize,
        loaded_at: UnixTime,
        reason: String,
    },
}

impl SourceState {
    pub fn has_keys(&self) -> bool {
        !matches!(self, SourceState::Pending { .. })
    }
}

/// How often a remote source refreshes its keys, as its last good fetch decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshSchedule {
    pub every_seconds: u64,
    pub basis: RefreshBasis,
}

/// What decided a source's refresh interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshBasis {
    /// The key set's `Cache-Control: max-age`, within the source's bounds.
    CacheControl,
    /// The key set came without a `max-age`: the source's default interval.
    Default,
}

impl RefreshBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshBasis::CacheControl => "cache_control",
            RefreshBasis::Default => "default",
        }
    }
}

/// Where one issuer's public keys come from (static file, local authority, OIDC discovery, ...).
/// `K` is the adapters' parsed key material, parsed once when a set loads.
#[async_trait]
pub trait KeySource<K: Send + Sync>: Send + Sync {
    /// A short name for logs and readiness, e.g. `gitlab`, `customers-dot`, `local-authority`.
    fn name(&self) -> &str;

    /// The only issuer whose tokens these keys may verify: fixed by configuration, or learned
    /// from a discovery document (and then unknown until the first document is accepted).
    fn issuer(&self) -> SourceIssuer<'_>;

    /// The algorithms this source accepts, from configuration.
    fn algorithms(&self) -> &[Algorithm];

    /// How this source's tokens are read: audiences, scope claims, the instance claim.
    fn claim_mapping(&self) -> &ClaimMapping {
        &GITLAB_SHAPE
    }

    /// The current keys; `None` while the source has never produced keys.
    fn current(&self) -> Option<Arc<KeySet<K>>>;

    /// Called when no key of `seen` (the set the caller tried; `None` when the source had none)
    /// verified a token: an unknown `kid`, or a kid-less token. A source that can refetch does so
    /// here, rate-limited and single-flight, and returns a newer set; sources whose keys cannot
    /// change return `None`. A source still discovering its issuer may learn it here.
    async fn refetch_after_miss(&self, seen: Option<&Arc<KeySet<K>>>) -> Option<Arc<KeySet<K>>> {
        let _ = seen;
        None
    }

    fn state(&self) -> SourceState;

    /// How often the keys are fetched again; `None` for sources that are not fetched (files
    /// reload on their own schedule) or not yet fetched successfully.
    fn refresh(&self) -> Option<RefreshSchedule> {
        None
    }

    /// Whether readiness waits for this source's first keys.
    fn required(&self) -> bool {
        false
    }
}

/// Name resolution for the workflow executor's host names: every address a name has (a
/// Kubernetes headless Service resolves to each ready pod). A port so that tests can give the
/// relay a changing set of executors.
#[async_trait]
pub trait NameResolver: Send + Sync {
    /// Every address of `host` (a name, not an IP literal), or why there are none.
    async fn resolve(&self, host: &str) -> Result<Vec<std::net::IpAddr>, String>;
}
