//! Who is calling: issuers, unit primitives, verified claims and the caller's identity.

use std::fmt;

use crate::mapping::ScopeEvidence;
use crate::time::UnixTime;

macro_rules! string_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(
    /// The `iss` of a token; every key source serves exactly one issuer.
    Issuer
);
string_newtype!(
    /// A key's `kid`.
    KeyId
);
string_newtype!(
    /// A Cloud Connector unit primitive, as carried in the `scopes` claim.
    UnitPrimitive
);
string_newtype!(
    /// This service's name (default `gitlab-duo-workflow-service`): the audience every token must
    /// name, and the issuer of the user tokens it mints.
    ServiceName
);

impl UnitPrimitive {
    /// What GitLab Rails requests today for the Duo Agent Platform (SPEC C2).
    pub const DUO_AGENT_PLATFORM: &'static str = "duo_agent_platform";
    /// Chat flows.
    pub const DUO_CHAT: &'static str = "duo_chat";
    /// The 2025 unit primitive of workflow execution, still accepted.
    pub const EXECUTE_WORKFLOW: &'static str = "duo_workflow_execute_workflow";
    /// What 2024 GitLab versions sent to `GenerateToken`.
    pub const GENERATE_TOKEN: &'static str = "duo_workflow_generate_token";
    pub const INCLUDE_FILE_CONTEXT: &'static str = "include_file_context";
    /// Every unit primitive this service acts on (SPEC C2, C3's default delegable set).
    pub const KNOWN: [&'static str; 5] = [
        Self::DUO_AGENT_PLATFORM,
        Self::DUO_CHAT,
        Self::EXECUTE_WORKFLOW,
        Self::GENERATE_TOKEN,
        Self::INCLUDE_FILE_CONTEXT,
    ];

    pub fn execute_workflow() -> Self {
        Self::new(Self::EXECUTE_WORKFLOW)
    }
}

/// A JSON value as text, exactly as the adapter that read it wrote it back. The domain copies
/// such values from one token into another without looking inside (it has no JSON parser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(String);

impl JsonText {
    /// `text` must be one well-formed JSON value; adapters build it from a parsed value.
    pub fn new(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A claim a user token copies, unchanged, from the token of the caller of `GenerateToken`
/// (SPEC C3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedClaim {
    pub name: &'static str,
    pub value: JsonText,
}

impl CopiedClaim {
    /// The claims copied when present (any JSON value), besides `duo_seat_count`.
    pub const NAMES: [&'static str; 4] = [
        "gitlab_instance_uid",
        "gitlab_root_namespace_id",
        "tool_access_policies",
        "skip_usage_cutoff",
    ];
}

impl ServiceName {
    pub const DEFAULT: &'static str = "gitlab-duo-workflow-service";

    /// The service is the issuer of its own user tokens.
    pub fn as_issuer(&self) -> Issuer {
        Issuer::new(self.0.clone())
    }

    pub fn is_issuer_of(&self, claims: &Claims) -> bool {
        claims.issuer.as_str() == self.0
    }
}

/// The claims of a token, read into domain types. Holding a `Claims` proves nothing; only a
/// [`VerifiedClaims`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub issuer: Issuer,
    pub subject: Option<String>,
    /// Empty when the token has no `aud`, which the claim checks reject.
    pub audience: Vec<String>,
    /// The unit primitives, after the source's scope map (if any).
    pub scopes: Vec<UnitPrimitive>,
    /// Where `scopes` came from (claim and provider scope names), for logs.
    pub scope_evidence: ScopeEvidence,
    pub realm: Option<String>,
    /// The `gitlab_instance_id` claim.
    pub instance_id: Option<String>,
    /// The claim the source's mapping binds to `x-gitlab-instance-id` in a token not issued by
    /// this service: `sub` in GitLab's tokens, the client's id (`azp`, `appid`, ...) in an
    /// OpenID provider's.
    pub caller_instance: Option<String>,
    pub duo_seat_count: Option<String>,
    /// The claims of [`CopiedClaim::NAMES`] the token carries, in that order.
    pub copied: Vec<CopiedClaim>,
    pub jti: Option<String>,
    /// `None` when the token has no `exp`, which the claim checks reject.
    pub expires_at: Option<UnixTime>,
    pub not_before: Option<UnixTime>,
    pub issued_at: Option<UnixTime>,
}

impl Claims {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s.as_str() == scope)
    }
}

/// Claims whose signature verified with a key of the issuer's own key source, and that passed
/// [`crate::policy::ClaimChecks`] (audience, expiry, not-before, issued-at, lifetime).
///
/// The only way to build one is [`crate::policy::ClaimChecks::accept`], and verifiers call that
/// only with the payload of a token whose signature they have just checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedClaims {
    claims: Claims,
    expires_at: UnixTime,
}

impl VerifiedClaims {
    pub(crate) fn new(claims: Claims, expires_at: UnixTime) -> Self {
        Self { claims, expires_at }
    }

    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    pub fn issuer(&self) -> &Issuer {
        &self.claims.issuer
    }

    pub fn expires_at(&self) -> UnixTime {
        self.expires_at
    }
}

/// The caller of an RPC, once authentication has succeeded.
// Boxing the claims would cost every authenticated request an allocation to shrink the rare
// debug identity.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A caller whose token verified and whose headers match its claims.
    Token(VerifiedClaims),
    /// Authentication is disabled (`DUO_WORKFLOW_AUTH__ENABLED=false`): the caller passes every check.
    Debug,
}

impl Identity {
    pub fn claims(&self) -> Option<&Claims> {
        match self {
            Identity::Token(v) => Some(v.claims()),
            Identity::Debug => None,
        }
    }

    pub fn is_debug(&self) -> bool {
        matches!(self, Identity::Debug)
    }
}
