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
use duo_workflow_domain::keys::Algorithm;
use duo_workflow_domain::Issuer;
use serde::Deserialize;

use super::values::{fetchable_url, issuer_url};
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
}

/// Freshness settings of a remote key source; every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshConfig {
    pub min_seconds: Option<u64>,
    pub max_seconds: Option<u64>,
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
}

/// The file's key sources, added to the remote sources already configured (the built-in ones),
/// and the static sources. Names identify sources in logs and readiness: unique, beside the
/// built-in ones and the local authority.
pub(super) fn configured_sources(
    key_sources: Vec<KeySourceConfig>,
    remote_sources: &mut Vec<RemoteSourceConfig>,
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
            KeySourceConfig::Static(s) => static_sources.push(static_source(i, s)?),
            KeySourceConfig::Oidc(s) => remote_sources.push(remote_source(i, s, false)?),
            KeySourceConfig::Jwks(s) => remote_sources.push(remote_source(i, s, true)?),
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
        (false, Some(base), None) => {
            let base = issuer_url(&field("discovery_url"), base)?;
            let url = checked("discovery_url", &base)?;
            (
                s.issuer.trim_end_matches('/').to_owned(),
                Locator::Discovery { url: Some(url) },
            )
        }
    };
    Ok(RemoteSourceConfig {
        name: s.name,
        issuer: IssuerSetting::Fixed(Issuer::new(issuer)),
        locator,
        algorithms: remote_algorithms(&field("algorithms"), &s.algorithms)?,
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
                .ok_or_else(|| bad(field, format!("{n:?} is not one of RS256, ES256, EdDSA")))
        })
        .collect()
}

fn static_source(i: usize, s: StaticSourceConfig) -> Result<StaticSource, ConfigError> {
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
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{
        test_env as env, Settings, ENV_OIDC_CUSTOMER_PORTAL_URL, ENV_OIDC_GITLAB_URL,
    };
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
}
