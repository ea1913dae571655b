//! `[[key_sources]]`: the key sources of the file, one type each (`static`, `oidc`, `jwks`), with
//! their settings (algorithms, refresh, fetching); adding an option of a source is done here.

use std::path::PathBuf;
use std::time::Duration;

use duo_workflow_adapters::jose::keys::KeyPolicy;
use duo_workflow_adapters::reload::FileContents;
use duo_workflow_adapters::sources::fetch::FetchPolicy;
use duo_workflow_adapters::sources::{
    IssuerSetting, KeyFile, KeyFormat, Locator, RefreshPolicy, RemoteSourceConfig,
};
use std::collections::BTreeMap;

use duo_workflow_domain::keys::Algorithm;
use duo_workflow_domain::mapping::{Audiences, ClaimMapping, ClaimName, ScopeMap};
use duo_workflow_domain::policy::Delegation;
use duo_workflow_domain::{Issuer, UnitPrimitive};
use serde::Deserialize;

use super::values::{base_url, fetchable_url, issuer_url};
use super::{bad, ConfigError};

/// A key source, chosen by its `type`; each type has its own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum KeySourceConfig {
    /// An issuer's keys from a JWKS file or PEM public keys: no network.
    Static(StaticSourceConfig),
    /// OIDC discovery: `{discovery_url or issuer}/.well-known/openid-configuration`, then its `jwks_uri`.
    Oidc(RemoteSourceFields),
    /// A JWKS URL, without discovery.
    Jwks(RemoteSourceFields),
}

/// The settings of the `oidc` and `jwks` key source types.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSourceFields {
    pub name: String,
    /// The `iss` of the tokens, and (`oidc`) the `issuer` the discovery document must state.
    pub issuer: String,
    /// `oidc` only: where to look for the discovery document when it is not under the issuer
    /// itself (e.g. a peer instance of this service, whose issuer is its service name).
    pub discovery_url: Option<String>,
    /// `jwks` only, and required there.
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub required: bool,
    /// Plain HTTP to a non-loopback host: development only.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Default `["RS256"]`.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Accept RSA keys whose public exponent is not 65537 (still odd and at least 3).
    #[serde(default)]
    pub allow_any_rsa_exponent: bool,
    #[serde(default)]
    pub refresh: RefreshConfig,
    /// The `aud` values this source's tokens may carry; default: the service name.
    pub audiences: Option<Vec<String>>,
    /// Where this source's tokens hold what the service reads; default: GitLab's claims.
    #[serde(default)]
    pub claims: ClaimsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticSourceConfig {
    pub name: String,
    pub issuer: String,
    pub jwks_file: Option<PathBuf>,
    pub pem_file: Option<PathBuf>,
    /// Defaults to the algorithms of the keys themselves.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Accept RSA keys whose public exponent is not 65537 (still odd and at least 3).
    #[serde(default)]
    pub allow_any_rsa_exponent: bool,
    /// The `aud` values this source's tokens may carry; default: the service name.
    pub audiences: Option<Vec<String>>,
    /// Where this source's tokens hold what the service reads; default: GitLab's claims.
    #[serde(default)]
    pub claims: ClaimsConfig,
}

/// `[key_sources.claims]`: the claims of a provider's tokens, for tokens not shaped like
/// GitLab's (Keycloak, Okta, Auth0, Azure AD).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimsConfig {
    /// The claims holding unit primitives, the first present winning; each a JSON array of
    /// strings or one space-separated string. Default `["scopes"]`.
    pub scopes: Option<Vec<String>>,
    /// The claim bound to `x-gitlab-instance-id`. Default `sub`.
    pub instance_id: Option<String>,
    /// Provider scope -> unit primitives; when present only the scopes it names count.
    pub scope_map: Option<BTreeMap<String, Vec<String>>>,
}

/// Freshness settings of a remote key source; every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshConfig {
    pub min_seconds: Option<u64>,
    pub max_seconds: Option<u64>,
    /// The interval for a key set served without `Cache-Control: max-age`; default 300, within
    /// `min_seconds`..=`max_seconds`.
    pub default_seconds: Option<u64>,
    pub max_stale_seconds: Option<u64>,
    pub miss_refetch_interval_seconds: Option<u64>,
    pub miss_wait_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// A validated static key source.
#[derive(Debug, Clone)]
pub struct StaticSource {
    pub name: String,
    pub issuer: String,
    /// Where the keys are, read again on reload.
    pub file: KeyFile,
    /// What the file held when the configuration was read.
    pub contents: Vec<u8>,
    pub algorithms: Vec<Algorithm>,
    pub claims: ClaimMapping,
}

/// The file's key sources, added to the remote sources already configured (the built-in ones),
/// and the static sources. Names identify sources in logs and readiness: unique, beside the
/// built-in ones and the local authority.
pub(super) fn configured_sources(
    key_sources: Vec<KeySourceConfig>,
    remote_sources: &mut Vec<RemoteSourceConfig>,
    delegation: &Delegation,
) -> Result<Vec<StaticSource>, ConfigError> {
    let mut names: std::collections::HashSet<String> =
        remote_sources.iter().map(|s| s.name.clone()).collect();
    names.insert(duo_workflow_adapters::authority::KEY_SOURCE_NAME.to_owned());
    let mut static_sources = Vec::new();
    for (i, source) in key_sources.into_iter().enumerate() {
        let name = match &source {
            KeySourceConfig::Static(s) => &s.name,
            KeySourceConfig::Oidc(s) | KeySourceConfig::Jwks(s) => &s.name,
        };
        if !names.insert(name.clone()) {
            return Err(bad(
                format!("key_sources[{i}].name"),
                format!("{name:?} is used by another key source"),
            ));
        }
        match source {
            KeySourceConfig::Static(s) => static_sources.push(static_source(i, s, delegation)?),
            KeySourceConfig::Oidc(s) => {
                remote_sources.push(remote_source(i, s, false, delegation)?)
            }
            KeySourceConfig::Jwks(s) => remote_sources.push(remote_source(i, s, true, delegation)?),
        }
    }
    Ok(static_sources)
}

pub(super) fn refresh_policy(field: &str, c: &RefreshConfig) -> Result<RefreshPolicy, ConfigError> {
    let d = RefreshPolicy::default();
    let secs = |v: Option<u64>, default: Duration| v.map(Duration::from_secs).unwrap_or(default);
    let policy = RefreshPolicy {
        min_interval: secs(c.min_seconds, d.min_interval),
        max_interval: secs(c.max_seconds, d.max_interval),
        default_interval: secs(c.default_seconds, d.default_interval),
        max_stale: secs(c.max_stale_seconds, d.max_stale),
        miss_refetch_interval: secs(c.miss_refetch_interval_seconds, d.miss_refetch_interval),
        miss_wait: c
            .miss_wait_ms
            .map(Duration::from_millis)
            .unwrap_or(d.miss_wait),
        retry_initial: d.retry_initial,
        retry_max: d.retry_max,
    };
    if policy.min_interval.is_zero() {
        return Err(bad(format!("{field}.min_seconds"), "must be positive"));
    }
    // Zero would let every random kid trigger a fetch: the rate limit is a protection.
    if !(1..=3600).contains(&policy.miss_refetch_interval.as_secs()) {
        return Err(bad(
            format!("{field}.miss_refetch_interval_seconds"),
            "must be from 1 to 3600",
        ));
    }
    if policy.max_interval < policy.min_interval {
        return Err(bad(
            format!("{field}.max_seconds"),
            "must be at least min_seconds",
        ));
    }
    // Set, it must lie within the bounds; the default follows bounds moved past it.
    let bounds = policy.min_interval..=policy.max_interval;
    if c.default_seconds.is_some() && !bounds.contains(&policy.default_interval) {
        return Err(bad(
            format!("{field}.default_seconds"),
            "must be from min_seconds to max_seconds",
        ));
    }
    let policy = RefreshPolicy {
        default_interval: policy
            .default_interval
            .clamp(policy.min_interval, policy.max_interval),
        ..policy
    };
    if policy.max_stale < policy.max_interval {
        return Err(bad(
            format!("{field}.max_stale_seconds"),
            "must be at least max_seconds",
        ));
    }
    if policy.miss_wait > Duration::from_secs(30) {
        return Err(bad(
            format!("{field}.miss_wait_ms"),
            "must be at most 30000",
        ));
    }
    Ok(policy)
}

pub(super) fn fetch_policy(
    field: &str,
    c: &RefreshConfig,
    allow_insecure_http: bool,
) -> Result<FetchPolicy, ConfigError> {
    let d = FetchPolicy::default();
    let policy = FetchPolicy {
        connect_timeout: c
            .connect_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(d.connect_timeout),
        total_timeout: c
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(d.total_timeout),
        max_body_bytes: d.max_body_bytes,
        allow_insecure_http,
    };
    if policy.connect_timeout.is_zero() || policy.total_timeout.is_zero() {
        return Err(bad(
            format!("{field}.timeout_ms"),
            "timeouts must be positive",
        ));
    }
    Ok(policy)
}

fn remote_algorithms(field: &str, names: &[String]) -> Result<Vec<Algorithm>, ConfigError> {
    if names.is_empty() {
        Ok(vec![Algorithm::RS256])
    } else {
        parse_algorithms(field, names)
    }
}

/// An `oidc` source (`jwks == false`) or a `jwks` source.
fn remote_source(
    i: usize,
    s: RemoteSourceFields,
    jwks: bool,
    delegation: &Delegation,
) -> Result<RemoteSourceConfig, ConfigError> {
    let field = |k: &str| format!("key_sources[{i}].{k}");
    if s.name.trim().is_empty() {
        return Err(bad(field("name"), "must not be empty"));
    }
    if s.issuer.trim().is_empty() {
        return Err(bad(field("issuer"), "must not be empty"));
    }
    let checked = |name: &str, url: &str| fetchable_url(&field(name), url, s.allow_insecure_http);
    let (issuer, locator) = match (jwks, &s.discovery_url, &s.jwks_uri) {
        (true, Some(_), _) => return Err(bad(field("discovery_url"), "only for type = \"oidc\"")),
        (false, _, Some(_)) => return Err(bad(field("jwks_uri"), "only for type = \"jwks\"")),
        (true, None, None) => {
            return Err(bad(field("jwks_uri"), "is required for type = \"jwks\""))
        }
        // A JWKS source's issuer is only the name its tokens carry.
        (true, None, Some(uri)) => (s.issuer.clone(), Locator::Jwks(checked("jwks_uri", uri)?)),
        (false, None, None) => {
            let issuer = issuer_url(&field("issuer"), &s.issuer)?;
            checked("issuer", &issuer)?;
            (issuer, Locator::Discovery { url: None })
        }
        // The issuer of a peer instance is its service name, not a URL: any name, as written.
        (false, Some(base), None) => {
            let base = base_url(&field("discovery_url"), base)?;
            let url = checked("discovery_url", &base)?;
            (s.issuer.clone(), Locator::Discovery { url: Some(url) })
        }
    };
    Ok(RemoteSourceConfig {
        name: s.name,
        issuer: IssuerSetting::Fixed(Issuer::new(issuer)),
        locator,
        algorithms: remote_algorithms(&field("algorithms"), &s.algorithms)?,
        claims: claim_mapping(i, s.audiences.as_deref(), &s.claims, delegation)?,
        required: s.required,
        key_policy: KeyPolicy {
            any_rsa_exponent: s.allow_any_rsa_exponent,
        },
        fetch: fetch_policy(&field("refresh"), &s.refresh, s.allow_insecure_http)?,
        refresh: refresh_policy(&field("refresh"), &s.refresh)?,
    })
}

pub fn parse_algorithms(field: &str, names: &[String]) -> Result<Vec<Algorithm>, ConfigError> {
    names
        .iter()
        .map(|n| {
            Algorithm::from_jose(n)
                .ok_or_else(|| bad(field, format!("{n:?} is not one of {}", Algorithm::NAMES)))
        })
        .collect()
}

/// The longest claim name accepted (claim names are JSON member names a provider chose).
const MAX_CLAIM_NAME_LEN: usize = 128;

/// How source `i`'s tokens are read: GitLab's shape where its configuration says nothing.
fn claim_mapping(
    i: usize,
    audiences: Option<&[String]>,
    claims: &ClaimsConfig,
    delegation: &Delegation,
) -> Result<ClaimMapping, ConfigError> {
    let field = |k: &str| format!("key_sources[{i}].{k}");
    let audiences = match audiences {
        None => Audiences::ServiceName,
        Some([]) => return Err(bad(field("audiences"), "must name at least one audience")),
        Some(list) => {
            for a in list {
                if a.trim().is_empty() || a.trim() != a || a.chars().any(char::is_control) {
                    return Err(bad(
                        field("audiences"),
                        format!("{a:?} is not an audience (no blanks around it)"),
                    ));
                }
            }
            Audiences::Listed(list.to_vec())
        }
    };
    let claim_name = |key: &str, name: &str| {
        let ok = !name.is_empty()
            && name.len() <= MAX_CLAIM_NAME_LEN
            && !name.chars().any(|c| c.is_control() || c.is_whitespace());
        if ok {
            Ok(ClaimName::new(name))
        } else {
            Err(bad(field(key), format!("{name:?} is not a claim name")))
        }
    };
    let scope_claims = match &claims.scopes {
        None => GITLAB_SCOPE_CLAIMS.to_vec(),
        Some(list) if list.is_empty() => {
            return Err(bad(field("claims.scopes"), "must name at least one claim"))
        }
        Some(list) => list
            .iter()
            .map(|c| claim_name("claims.scopes", c))
            .collect::<Result<_, _>>()?,
    };
    let instance_claim = match &claims.instance_id {
        None => ClaimName::SUB,
        Some(c) => claim_name("claims.instance_id", c)?,
    };
    let scope_map = match &claims.scope_map {
        None => None,
        Some(map) => Some(scope_map(&field("claims.scope_map"), map, delegation)?),
    };
    ClaimMapping::new(audiences, scope_claims, instance_claim, scope_map)
        .map_err(|e| bad(field("claims"), e.to_string()))
}

/// GitLab's claim of unit primitives.
const GITLAB_SCOPE_CLAIMS: [ClaimName; 1] = [ClaimName::SCOPES];

/// `[key_sources.claims.scope_map]`: every unit primitive on the right must be one this service
/// acts on (SPEC C2's, and the delegable ones); a typo would silently grant nothing.
fn scope_map(
    field: &str,
    map: &BTreeMap<String, Vec<String>>,
    delegation: &Delegation,
) -> Result<ScopeMap, ConfigError> {
    let known = |p: &str| {
        UnitPrimitive::KNOWN.contains(&p) || delegation.delegable().iter().any(|d| d.as_str() == p)
    };
    let mut entries = Vec::with_capacity(map.len());
    for (scope, primitives) in map {
        let key = format!("{field}.{scope:?}");
        if scope.trim().is_empty() || scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(key, "a provider scope is one word"));
        }
        if let Some(unknown) = primitives.iter().find(|p| !known(p)) {
            let mut names: Vec<&str> = UnitPrimitive::KNOWN.to_vec();
            names.extend(
                delegation
                    .delegable()
                    .iter()
                    .map(UnitPrimitive::as_str)
                    .filter(|d| !UnitPrimitive::KNOWN.contains(d)),
            );
            return Err(bad(
                key,
                format!(
                    "{unknown:?} is not a unit primitive this service knows ({})",
                    names.join(", ")
                ),
            ));
        }
        entries.push((
            scope.clone(),
            primitives.iter().map(UnitPrimitive::new).collect(),
        ));
    }
    Ok(ScopeMap::new(entries))
}

fn static_source(
    i: usize,
    s: StaticSourceConfig,
    delegation: &Delegation,
) -> Result<StaticSource, ConfigError> {
    let field = |k: &str| format!("key_sources[{i}].{k}");
    if s.name.trim().is_empty() {
        return Err(bad(field("name"), "must not be empty"));
    }
    if s.issuer.is_empty() {
        return Err(bad(field("issuer"), "must not be empty"));
    }
    let (key, path, format) = match (s.jwks_file, s.pem_file) {
        (Some(p), None) => ("jwks_file", p, KeyFormat::Jwks),
        (None, Some(p)) => ("pem_file", p, KeyFormat::Pem),
        _ => {
            return Err(bad(
                field("jwks_file"),
                "give exactly one of jwks_file or pem_file",
            ))
        }
    };
    let contents = FileContents::read(&path)
        .bytes(&path)
        .map_err(|e| bad(field(key), e))?
        .to_vec();
    if format == KeyFormat::Pem && std::str::from_utf8(&contents).is_err() {
        return Err(bad(field(key), "is not UTF-8 text"));
    }
    let algorithms = parse_algorithms(&field("algorithms"), &s.algorithms)?;
    let claims = claim_mapping(i, s.audiences.as_deref(), &s.claims, delegation)?;
    Ok(StaticSource {
        name: s.name,
        issuer: s.issuer,
        file: KeyFile {
            path,
            format,
            policy: KeyPolicy {
                any_rsa_exponent: s.allow_any_rsa_exponent,
            },
        },
        contents,
        algorithms,
        claims,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{
        test_env as env, Settings, ENV_OIDC_CUSTOMER_PORTAL_URL, ENV_OIDC_GITLAB_URL,
    };
    use duo_workflow_domain::mapping::{Audiences, ClaimMapping, ClaimName};
    use duo_workflow_domain::Issuer;

    #[test]
    fn remote_sources_are_checked_per_type() {
        let dir = std::env::temp_dir().join(format!("dws-config-remote-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        let cases = [
            ("type = \"jwks\"\nname = \"j\"\nissuer = \"i\"\n", "key_sources[0].jwks_uri", "required"),
            ("type = \"jwks\"\nname = \"j\"\nissuer = \"i\"\njwks_uri = \"https://a/k\"\ndiscovery_url = \"https://a\"\n", "key_sources[0].discovery_url", "oidc"),
            ("type = \"oidc\"\nname = \"o\"\nissuer = \"https://a\"\njwks_uri = \"https://a/k\"\n", "key_sources[0].jwks_uri", "jwks"),
            ("type = \"oidc\"\nname = \"o\"\nissuer = \"http://idp.example\"\n", "key_sources[0].issuer", "plain HTTP"),
            ("type = \"oidc\"\nname = \"o\"\nissuer = \"svc\"\ndiscovery_url = \"http://peer.example:50053\"\n", "key_sources[0].discovery_url", "plain HTTP"),
            ("type = \"oidc\"\nname = \"gitlab\"\nissuer = \"https://a\"\n", "key_sources[0].name", "another key source"),
            ("type = \"oidc\"\nname = \"o\"\nissuer = \"https://a\"\nrefresh = { min_seconds = 10, max_seconds = 5 }\n", "key_sources[0].refresh.max_seconds", "min_seconds"),
        ];
        for (source, field, problem) in cases {
            std::fs::write(&path, format!("[[key_sources]]\n{source}")).unwrap();
            let e = Settings::load(Some(&path), &env(&[])).unwrap_err();
            assert_eq!(e.field, field, "{source}");
            assert!(e.problem.contains(problem), "{source}: {e}");
        }
        std::fs::write(
            &path,
            "[[key_sources]]\ntype = \"oidc\"\nname = \"peer\"\nissuer = \"gitlab-duo-workflow-service\"\ndiscovery_url = \"http://127.0.0.1:50053/\"\nrequired = true\n",
        )
        .unwrap();
        let s = Settings::load(
            Some(&path),
            &env(&[
                (ENV_OIDC_GITLAB_URL, ""),
                (ENV_OIDC_CUSTOMER_PORTAL_URL, ""),
            ]),
        )
        .unwrap();
        assert_eq!(s.remote_sources.len(), 1);
        assert_eq!(
            s.remote_sources[0].fixed_issuer().map(Issuer::as_str),
            Some("gitlab-duo-workflow-service"),
            "an oidc source in the file keeps its configured issuer"
        );
        assert!(s.remote_sources[0].required);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn load(text: &str) -> Result<Settings, crate::config::ConfigError> {
        let dir = std::env::temp_dir().join(format!("dws-config-claims-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(dir.join("k.jwks"), r#"{"keys": []}"#).unwrap();
        std::fs::write(
            &path,
            text.replace("JWKS", &dir.join("k.jwks").display().to_string()),
        )
        .unwrap();
        let loaded = Settings::load(
            Some(&path),
            &env(&[
                (ENV_OIDC_GITLAB_URL, ""),
                (ENV_OIDC_CUSTOMER_PORTAL_URL, ""),
            ]),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        loaded
    }

    const KEYCLOAK: &str = concat!(
        "[[key_sources]]\ntype = \"oidc\"\nname = \"keycloak\"\n",
        "issuer = \"https://kc.example.com/realms/acme\"\nalgorithms = [\"RS256\"]\n",
        include_str!("../../../tests/fixtures/keycloak_claims.toml")
    );

    #[test]
    fn a_provider_is_mapped_by_configuration_and_gitlabs_shape_stays_the_default() {
        let s = load(KEYCLOAK).unwrap();
        let claims = &s.remote_sources[0].claims;
        assert_eq!(claims.audiences(), &Audiences::Listed(vec!["dws".into()]));
        assert_eq!(claims.scope_claims(), [ClaimName::new("scope")]);
        assert_eq!(claims.instance_claim().as_str(), "azp");
        let map = claims.scope_map().unwrap().entries();
        assert_eq!(map.len(), 2);
        assert_eq!(map[0].0, "dws:chat");
        // Static sources take the same keys; sources that say nothing keep GitLab's shape.
        let s = load(
            "[[key_sources]]\ntype = \"static\"\nname = \"s\"\nissuer = \"i\"\njwks_file = \"JWKS\"\naudiences = [\"api://dws\"]\n[key_sources.claims]\nscopes = [\"scp\", \"roles\"]\ninstance_id = \"appid\"\n",
        );
        // An empty JWKS has no key: the source is refused later, when it loads; the mapping
        // is read before.
        let s = s.unwrap();
        assert_eq!(
            s.static_sources[0].claims.instance_claim().as_str(),
            "appid"
        );
        let s = load("[[key_sources]]\ntype = \"jwks\"\nname = \"j\"\nissuer = \"i\"\njwks_uri = \"http://127.0.0.1:1/k\"\n").unwrap();
        assert_eq!(s.remote_sources[0].claims, ClaimMapping::default());
        assert_eq!(
            Settings::from_env(&env(&[])).unwrap().remote_sources[0].claims,
            ClaimMapping::default(),
            "the built-in GitLab source reads GitLab's tokens"
        );
    }

    #[test]
    fn a_scope_map_grants_only_unit_primitives_this_service_knows_naming_the_key() {
        let typo = KEYCLOAK.replace("\"duo_chat\"]", "\"duo_chatt\"]");
        let e = load(&typo).unwrap_err();
        assert_eq!(e.field, "key_sources[0].claims.scope_map.\"dws:chat\"");
        assert!(
            e.problem.contains("\"duo_chatt\" is not a unit primitive"),
            "{e}"
        );
        // A unit primitive the operator made delegable is known.
        let custom = typo.replace("duo_chatt", "ai_catalog");
        let with =
            format!("[user_tokens]\ndelegable_scopes = [\"duo_chat\", \"ai_catalog\"]\n{custom}");
        assert!(load(&with).is_ok());
        for (text, field) in [
            (
                KEYCLOAK.replace("audiences = [\"dws\"]", "audiences = []"),
                "key_sources[0].audiences",
            ),
            (
                KEYCLOAK.replace("audiences = [\"dws\"]", "audiences = [\" dws\"]"),
                "key_sources[0].audiences",
            ),
            (
                KEYCLOAK.replace("scopes = [\"scope\"]", "scopes = []"),
                "key_sources[0].claims.scopes",
            ),
            (
                KEYCLOAK.replace("scopes = [\"scope\"]", "scopes = [\"a b\"]"),
                "key_sources[0].claims.scopes",
            ),
            (
                KEYCLOAK.replace("instance_id = \"azp\"", "instance_id = \"\""),
                "key_sources[0].claims.instance_id",
            ),
            (
                KEYCLOAK.replace("\"dws:run\" =", "\"dws run\" ="),
                "key_sources[0].claims.scope_map.\"dws run\"",
            ),
        ] {
            assert_eq!(load(&text).unwrap_err().field, field, "{text}");
        }
        let e = load(&KEYCLOAK.replace("instance_id", "instance")).unwrap_err();
        assert!(
            e.problem.contains("instance"),
            "unknown keys are named: {e}"
        );
    }

    #[test]
    fn a_key_set_without_max_age_is_refreshed_every_default_seconds_within_the_bounds() {
        let oidc = "[[key_sources]]\ntype = \"oidc\"\nname = \"o\"\nissuer = \"https://a\"\n";
        let default = |refresh: &str| {
            load(&format!("{oidc}refresh = {{ {refresh} }}\n"))
                .map(|s| s.remote_sources[0].refresh.default_interval.as_secs())
        };
        assert_eq!(default("").unwrap(), 300);
        assert_eq!(default("default_seconds = 120").unwrap(), 120);
        // Bounds moved past the default take it with them; a default set outside is refused.
        assert_eq!(
            default("min_seconds = 600, max_seconds = 900").unwrap(),
            600
        );
        assert_eq!(default("max_seconds = 200").unwrap(), 200);
        for bad in [
            "default_seconds = 30",
            "default_seconds = 7200",
            "min_seconds = 100, default_seconds = 99",
        ] {
            let e = default(bad).unwrap_err();
            assert_eq!(e.field, "key_sources[0].refresh.default_seconds", "{bad}");
        }
        // The built-in sources take [auth.refresh]'s.
        let file: crate::config::FileConfig =
            toml::from_str("[auth.refresh]\ndefault_seconds = 5\n").unwrap();
        let e = Settings::from_parts(file, &env(&[])).unwrap_err();
        assert_eq!(e.field, "auth.refresh.default_seconds");
        // ... and a bad one is refused even while both are off.
        let file: crate::config::FileConfig = toml::from_str(
            "[auth]\noidc_gitlab_url = \"\"\noidc_customer_portal_url = \"\"\n[auth.refresh]\ndefault_seconds = 5\n",
        )
        .unwrap();
        let e = Settings::from_parts(file, &env(&[])).unwrap_err();
        assert_eq!(e.field, "auth.refresh.default_seconds");
    }
}
