//! How one key source's tokens say what this service reads: which `aud` values they carry, which
//! claims hold their unit primitives (and in which words), and which claim names the calling
//! instance. GitLab's shape is the default ([`GITLAB_SHAPE`]); an OpenID provider's (Keycloak,
//! Okta, Auth0, Azure AD) is configuration. The adapters read the JSON; the rules are here.

use std::borrow::Cow;
use std::fmt;

use crate::identity::UnitPrimitive;
use crate::Rejection;

/// The name of a claim (a member of a token's payload).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimName(Cow<'static, str>);

impl ClaimName {
    /// Cloud Connector's claim of unit primitives: always a JSON array of strings (SPEC A,
    /// checklist row 8), never the space-separated string of RFC 9068's `scope`.
    pub const SCOPES: ClaimName = ClaimName::fixed("scopes");
    /// The subject, bound to `x-gitlab-instance-id` in GitLab's instance tokens.
    pub const SUB: ClaimName = ClaimName::fixed("sub");

    pub const fn fixed(name: &'static str) -> Self {
        Self(Cow::Borrowed(name))
    }

    pub fn new(name: impl Into<String>) -> Self {
        Self(Cow::Owned(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClaimName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `aud` values a source's tokens may carry; one of them must be in the token's `aud`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audiences {
    /// This service's name (GitLab's tokens; the default).
    ServiceName,
    /// Named by configuration (an OpenID provider's API identifier, `api://dws`, ...): the user
    /// tokens minted for these callers still carry the service name.
    Listed(Vec<String>),
}

/// Provider scope → the unit primitives it grants. When a source has one, only the names it
/// maps count: every other provider scope is dropped, never copied into a user token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeMap {
    entries: Vec<(String, Vec<UnitPrimitive>)>,
}

impl ScopeMap {
    /// Later entries for the same provider scope replace earlier ones (a TOML table has none).
    pub fn new(entries: Vec<(String, Vec<UnitPrimitive>)>) -> Self {
        let mut unique: Vec<(String, Vec<UnitPrimitive>)> = Vec::with_capacity(entries.len());
        for (scope, primitives) in entries {
            match unique.iter_mut().find(|(s, _)| *s == scope) {
                Some(entry) => entry.1 = primitives,
                None => unique.push((scope, primitives)),
            }
        }
        Self { entries: unique }
    }

    pub fn entries(&self) -> &[(String, Vec<UnitPrimitive>)] {
        &self.entries
    }

    fn get(&self, scope: &str) -> Option<&[UnitPrimitive]> {
        self.entries
            .iter()
            .find(|(s, _)| s == scope)
            .map(|(_, p)| p.as_slice())
    }
}

/// A claim of unit primitives as an adapter found it in a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeClaim {
    /// Not in the token (or `null`): the next claim is looked at.
    Absent,
    /// A JSON array of strings.
    List(Vec<String>),
    /// One JSON string: space-separated names (RFC 9068 `scope`, Azure AD's `scp`).
    Text(String),
    /// Any other JSON value.
    Other,
}

/// Where a token's unit primitives came from, for logs and `token explain` (names only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeEvidence {
    /// The claims looked at, in order.
    pub looked_at: Vec<ClaimName>,
    /// The first of them the token carries; `None`: none.
    pub found_in: Option<ClaimName>,
    /// The names that claim holds, as the provider wrote them (before any scope map).
    pub provider_scopes: Vec<String>,
}

impl fmt::Display for ScopeEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let looked: Vec<&str> = self.looked_at.iter().map(ClaimName::as_str).collect();
        write!(f, "claims looked at: {}; ", looked.join(", "))?;
        match &self.found_in {
            None => f.write_str("the token carries none of them"),
            Some(claim) => {
                // A token holds at most a few KiB of names; the log shows the first few.
                const SHOWN: usize = 32;
                let shown: Vec<&str> = self
                    .provider_scopes
                    .iter()
                    .take(SHOWN)
                    .map(|s| s.get(..s.len().min(64)).unwrap_or("?"))
                    .collect();
                let more = self.provider_scopes.len().saturating_sub(SHOWN);
                write!(f, "provider scopes in {claim}: [{}]", shown.join(", "))?;
                if more > 0 {
                    write!(f, " and {more} more")?;
                }
                Ok(())
            }
        }
    }
}

/// What a token's scope claims give: its unit primitives, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes {
    pub unit_primitives: Vec<UnitPrimitive>,
    pub evidence: ScopeEvidence,
}

/// How a key source's tokens are read (issue 16's table: GitLab's shape, or a provider's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    audiences: Audiences,
    scope_claims: Cow<'static, [ClaimName]>,
    instance_claim: ClaimName,
    scope_map: Option<ScopeMap>,
}

/// GitLab's shape: `aud` the service name, unit primitives in `scopes`, the instance in `sub`.
/// The built-in GitLab and CustomersDot sources, the local authority, and every source whose
/// configuration says nothing else.
pub static GITLAB_SHAPE: ClaimMapping = ClaimMapping {
    audiences: Audiences::ServiceName,
    scope_claims: Cow::Borrowed(&[ClaimName::SCOPES]),
    instance_claim: ClaimName::SUB,
    scope_map: None,
};

/// Why a mapping cannot be built; configuration names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingError {
    NoAudience,
    NoScopeClaim,
    EmptyClaimName,
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MappingError::NoAudience => "must name at least one audience",
            MappingError::NoScopeClaim => "must name at least one claim",
            MappingError::EmptyClaimName => "a claim name must not be empty",
        })
    }
}

impl Default for ClaimMapping {
    fn default() -> Self {
        GITLAB_SHAPE.clone()
    }
}

impl ClaimMapping {
    pub fn new(
        audiences: Audiences,
        scope_claims: Vec<ClaimName>,
        instance_claim: ClaimName,
        scope_map: Option<ScopeMap>,
    ) -> Result<Self, MappingError> {
        if matches!(&audiences, Audiences::Listed(list) if list.is_empty()) {
            return Err(MappingError::NoAudience);
        }
        if scope_claims.is_empty() {
            return Err(MappingError::NoScopeClaim);
        }
        if scope_claims
            .iter()
            .chain([&instance_claim])
            .any(|c| c.as_str().is_empty())
        {
            return Err(MappingError::EmptyClaimName);
        }
        Ok(Self {
            audiences,
            scope_claims: Cow::Owned(scope_claims),
            instance_claim,
            scope_map,
        })
    }

    pub fn audiences(&self) -> &Audiences {
        &self.audiences
    }

    /// The claims holding unit primitives, in the order they are looked at.
    pub fn scope_claims(&self) -> &[ClaimName] {
        &self.scope_claims
    }

    /// The claim bound to `x-gitlab-instance-id` (SPEC A binds `sub`).
    pub fn instance_claim(&self) -> &ClaimName {
        &self.instance_claim
    }

    pub fn scope_map(&self) -> Option<&ScopeMap> {
        self.scope_map.as_ref()
    }

    /// The unit primitives a token carries: the first of the scope claims it has wins; its names
    /// are the unit primitives themselves, or, with a scope map, what the map makes of the names
    /// it knows (the others are dropped). `value_of` reads one claim of the token.
    pub fn scopes(
        &self,
        mut value_of: impl FnMut(&ClaimName) -> ScopeClaim,
    ) -> Result<Scopes, Rejection> {
        let mut evidence = ScopeEvidence {
            looked_at: self.scope_claims.to_vec(),
            ..ScopeEvidence::default()
        };
        for claim in self.scope_claims.iter() {
            let names = match value_of(claim) {
                ScopeClaim::Absent => continue,
                ScopeClaim::List(names) => names,
                // Cloud Connector's own claim is an array; a string there is a malformed token.
                ScopeClaim::Text(_) if *claim == ClaimName::SCOPES => {
                    return Err(Rejection::InvalidClaim(claim.clone()))
                }
                ScopeClaim::Text(text) => {
                    text.split_ascii_whitespace().map(str::to_owned).collect()
                }
                ScopeClaim::Other => return Err(Rejection::InvalidClaim(claim.clone())),
            };
            evidence.found_in = Some(claim.clone());
            evidence.provider_scopes = names;
            break;
        }
        let names = &evidence.provider_scopes;
        let unit_primitives = match &self.scope_map {
            None => names.iter().cloned().map(UnitPrimitive::new).collect(),
            Some(map) => {
                let mut granted: Vec<UnitPrimitive> = Vec::new();
                for p in names.iter().filter_map(|n| map.get(n)).flatten() {
                    if !granted.contains(p) {
                        granted.push(p.clone());
                    }
                }
                granted
            }
        };
        Ok(Scopes {
            unit_primitives,
            evidence,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims<'a>(pairs: &'a [(&'a str, ScopeClaim)]) -> impl FnMut(&ClaimName) -> ScopeClaim + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name.as_str())
                .map_or(ScopeClaim::Absent, |(_, v)| v.clone())
        }
    }

    fn names(scopes: &Scopes) -> Vec<&str> {
        scopes.unit_primitives.iter().map(|p| p.as_str()).collect()
    }

    fn list(names: &[&str]) -> ScopeClaim {
        ScopeClaim::List(names.iter().map(|s| s.to_string()).collect())
    }

    fn mapping(scope_claims: &[&str], map: Option<ScopeMap>) -> ClaimMapping {
        ClaimMapping::new(
            Audiences::ServiceName,
            scope_claims.iter().map(|c| ClaimName::new(*c)).collect(),
            ClaimName::new("azp"),
            map,
        )
        .unwrap()
    }

    #[test]
    fn gitlabs_shape_reads_scopes_as_an_array_only() {
        let s = GITLAB_SHAPE
            .scopes(claims(&[("scopes", list(&["duo_chat"]))]))
            .unwrap();
        assert_eq!(names(&s), ["duo_chat"]);
        assert_eq!(s.evidence.found_in, Some(ClaimName::SCOPES));
        for bad in [ScopeClaim::Text("duo_chat".into()), ScopeClaim::Other] {
            assert_eq!(
                GITLAB_SHAPE.scopes(claims(&[("scopes", bad)])),
                Err(Rejection::InvalidClaim(ClaimName::SCOPES))
            );
        }
        let none = GITLAB_SHAPE.scopes(claims(&[])).unwrap();
        assert!(none.unit_primitives.is_empty());
        assert_eq!(none.evidence.found_in, None);
        assert_eq!(GITLAB_SHAPE.instance_claim(), &ClaimName::SUB);
        assert_eq!(GITLAB_SHAPE.audiences(), &Audiences::ServiceName);
    }

    #[test]
    fn the_first_scope_claim_present_wins_as_an_array_or_a_space_separated_string() {
        let m = mapping(&["scp", "scope", "roles"], None);
        let s = m
            .scopes(claims(&[
                (
                    "scope",
                    ScopeClaim::Text(" duo_chat  openid\tprofile ".into()),
                ),
                ("roles", list(&["duo_agent_platform"])),
            ]))
            .unwrap();
        assert_eq!(names(&s), ["duo_chat", "openid", "profile"]);
        assert_eq!(s.evidence.found_in, Some(ClaimName::new("scope")));
        // Present but empty still wins: an empty scope is the provider's answer.
        let s = m
            .scopes(claims(&[
                ("scp", ScopeClaim::List(vec![])),
                ("roles", list(&["duo_chat"])),
            ]))
            .unwrap();
        assert!(s.unit_primitives.is_empty());
        assert_eq!(
            m.scopes(claims(&[("scp", ScopeClaim::Other)])),
            Err(Rejection::InvalidClaim(ClaimName::new("scp")))
        );
    }

    #[test]
    fn with_a_scope_map_only_mapped_names_count() {
        let map = ScopeMap::new(vec![
            (
                "dws:run".into(),
                vec![
                    UnitPrimitive::new(UnitPrimitive::DUO_AGENT_PLATFORM),
                    UnitPrimitive::new(UnitPrimitive::EXECUTE_WORKFLOW),
                ],
            ),
            (
                "dws:chat".into(),
                vec![UnitPrimitive::new(UnitPrimitive::DUO_CHAT)],
            ),
            (
                "dws:all".into(),
                vec![
                    UnitPrimitive::new(UnitPrimitive::DUO_CHAT),
                    UnitPrimitive::new(UnitPrimitive::DUO_AGENT_PLATFORM),
                ],
            ),
        ]);
        let m = mapping(&["scope"], Some(map));
        let s = m
            .scopes(claims(&[(
                "scope",
                ScopeClaim::Text("openid dws:run duo_chat dws:all".into()),
            )]))
            .unwrap();
        // `duo_chat` is a provider scope the map does not know: dropped, even though it is
        // spelled like a unit primitive.
        assert_eq!(
            names(&s),
            [
                UnitPrimitive::DUO_AGENT_PLATFORM,
                UnitPrimitive::EXECUTE_WORKFLOW,
                UnitPrimitive::DUO_CHAT
            ]
        );
        assert_eq!(
            s.evidence.provider_scopes,
            ["openid", "dws:run", "duo_chat", "dws:all"]
        );
    }

    #[test]
    fn a_mapping_names_an_audience_and_claims() {
        let claim = |c: &str| ClaimName::new(c);
        assert_eq!(
            ClaimMapping::new(
                Audiences::Listed(vec![]),
                vec![claim("s")],
                claim("sub"),
                None
            ),
            Err(MappingError::NoAudience)
        );
        assert_eq!(
            ClaimMapping::new(Audiences::ServiceName, vec![], claim("sub"), None),
            Err(MappingError::NoScopeClaim)
        );
        assert_eq!(
            ClaimMapping::new(Audiences::ServiceName, vec![claim("s")], claim(""), None),
            Err(MappingError::EmptyClaimName)
        );
    }

    #[test]
    fn evidence_shows_names_only_and_few_of_them() {
        let e = ScopeEvidence {
            looked_at: vec![ClaimName::new("scope"), ClaimName::new("scp")],
            found_in: Some(ClaimName::new("scope")),
            provider_scopes: (0..40).map(|i| format!("s{i}")).collect(),
        };
        let shown = e.to_string();
        assert!(
            shown.starts_with("claims looked at: scope, scp; provider scopes in scope: [s0, s1")
        );
        assert!(shown.ends_with("s31] and 8 more"), "{shown}");
        let none = ScopeEvidence {
            looked_at: vec![ClaimName::SCOPES],
            ..Default::default()
        };
        assert_eq!(
            none.to_string(),
            "claims looked at: scopes; the token carries none of them"
        );
    }
}
