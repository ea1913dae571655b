//! `[auth]`: authentication on or off, the built-in GitLab and CustomersDot sources (GitLab's
//! variables for them), and the claim checks every token meets.

use std::collections::HashMap;

use duo_workflow_adapters::jose::keys::KeyPolicy;
use duo_workflow_adapters::sources::{IssuerSetting, Locator, RemoteSourceConfig};
use duo_workflow_domain::keys::Algorithm;
use duo_workflow_domain::mapping::ClaimMapping;
use duo_workflow_domain::policy::ClaimChecks;
use duo_workflow_domain::ServiceName;
use serde::Deserialize;

use super::key_sources::{fetch_policy, refresh_policy, RefreshConfig};
use super::values::{base_url, fetchable_url, parse_bool};
use super::{bad, ConfigError};

pub const ENV_AUTH_ENABLED: &str = "DUO_WORKFLOW_AUTH__ENABLED";
pub const ENV_OIDC_GITLAB_URL: &str = "DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL";
/// The AI Gateway's name for the GitLab URL: used when `ENV_OIDC_GITLAB_URL` is unset.
pub const ENV_AIGW_GITLAB_URL: &str = "AIGW_GITLAB_URL";
/// Plain HTTP to the two built-in sources' URLs beyond loopback (a cluster-internal GitLab).
pub const ENV_OIDC_ALLOW_INSECURE_HTTP: &str = "DUO_WORKFLOW_AUTH__OIDC_ALLOW_INSECURE_HTTP";
pub const ENV_OIDC_CUSTOMER_PORTAL_URL: &str = "DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL";

/// The names of the two built-in OIDC sources, in logs and readiness.
pub const SOURCE_GITLAB: &str = "gitlab";
pub const SOURCE_CUSTOMERS_DOT: &str = "customers-dot";
pub const DEFAULT_GITLAB_URL: &str = "https://gitlab.com";
pub const DEFAULT_CUSTOMER_PORTAL_URL: &str = "https://customers.gitlab.com";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub enabled: Option<bool>,
    pub oidc_gitlab_url: Option<String>,
    pub oidc_customer_portal_url: Option<String>,
    pub leeway_seconds: Option<u32>,
    pub max_lifetime_seconds: Option<u32>,
    /// Plain HTTP to a non-loopback GitLab / CustomersDot URL (a cluster-internal address).
    pub oidc_allow_insecure_http: Option<bool>,
    /// Hold readiness until the GitLab / CustomersDot source has keys.
    #[serde(default)]
    pub oidc_gitlab_required: bool,
    #[serde(default)]
    pub oidc_customer_portal_required: bool,
    /// Refresh tuning for the GitLab and CustomersDot sources.
    #[serde(default)]
    pub refresh: RefreshConfig,
}

/// A built-in OIDC source (GitLab, CustomersDot) and where its URL may come from.
struct BuiltinSource<'a> {
    name: &'static str,
    /// The variables that configure it, by precedence: the first one set (even empty) wins.
    env: &'static [&'static str],
    file_field: &'static str,
    file_value: Option<&'a str>,
    default: &'static str,
    required: bool,
}

/// `DUO_WORKFLOW_AUTH__ENABLED` or `auth.enabled`; on by default.
pub(super) fn auth_enabled(
    auth: &AuthSection,
    env: &HashMap<String, String>,
) -> Result<bool, ConfigError> {
    match env.get(ENV_AUTH_ENABLED) {
        Some(v) => parse_bool(ENV_AUTH_ENABLED, v),
        None => Ok(auth.enabled.unwrap_or(true)),
    }
}

/// The built-in sources that are on, and those an empty URL disabled (source name, the variable
/// or key that did).
pub(super) type BuiltinSources = (Vec<RemoteSourceConfig>, Vec<(&'static str, &'static str)>);

/// The built-in GitLab and CustomersDot sources: the first variable set (even empty) wins, then
/// the file, then the default; an empty URL disables the source. They learn their issuer from
/// the discovery document under the URL (an internal URL names the external issuer there).
pub(super) fn builtin_sources(
    auth: &AuthSection,
    env: &HashMap<String, String>,
) -> Result<BuiltinSources, ConfigError> {
    let get = |name: &str| env.get(name).map(String::as_str);
    let mut remote_sources = Vec::new();
    let mut disabled_sources = Vec::new();
    let allow_insecure_http = match get(ENV_OIDC_ALLOW_INSECURE_HTTP) {
        Some(v) => parse_bool(ENV_OIDC_ALLOW_INSECURE_HTTP, v)?,
        None => auth.oidc_allow_insecure_http.unwrap_or(false),
    };
    // Checked even when both sources are off: a bad value written is a bad value.
    let fetch = fetch_policy("auth.refresh", &auth.refresh, allow_insecure_http)?;
    let refresh = refresh_policy("auth.refresh", &auth.refresh)?;
    let builtin = [
        BuiltinSource {
            name: SOURCE_GITLAB,
            env: &[ENV_OIDC_GITLAB_URL, ENV_AIGW_GITLAB_URL],
            file_field: "auth.oidc_gitlab_url",
            file_value: auth.oidc_gitlab_url.as_deref(),
            default: DEFAULT_GITLAB_URL,
            required: auth.oidc_gitlab_required,
        },
        BuiltinSource {
            name: SOURCE_CUSTOMERS_DOT,
            env: &[ENV_OIDC_CUSTOMER_PORTAL_URL],
            file_field: "auth.oidc_customer_portal_url",
            file_value: auth.oidc_customer_portal_url.as_deref(),
            default: DEFAULT_CUSTOMER_PORTAL_URL,
            required: auth.oidc_customer_portal_required,
        },
    ];
    for b in builtin {
        let from_env = b.env.iter().find_map(|f| get(f).map(|v| (*f, v)));
        let (field, value) = match (from_env, b.file_value) {
            (Some(set), _) => set,
            (None, Some(v)) => (b.file_field, v),
            (None, None) => (b.file_field, b.default),
        };
        if value.trim().is_empty() {
            disabled_sources.push((b.name, field));
            continue;
        }
        let url = fetchable_url(field, &base_url(field, value)?, allow_insecure_http)?;
        remote_sources.push(RemoteSourceConfig {
            name: b.name.into(),
            issuer: IssuerSetting::Discovered,
            locator: Locator::Discovery { url: Some(url) },
            algorithms: vec![Algorithm::RS256],
            claims: ClaimMapping::default(),
            required: b.required,
            key_policy: KeyPolicy::default(),
            fetch: fetch.clone(),
            refresh: refresh.clone(),
        });
    }
    Ok((remote_sources, disabled_sources))
}

/// The audience (the service name), the leeway and the longest lifetime a token may have.
pub(super) fn claim_checks(
    auth: &AuthSection,
    service_name: &ServiceName,
) -> Result<ClaimChecks, ConfigError> {
    let mut claim_checks = ClaimChecks::new(service_name.clone());
    if let Some(l) = auth.leeway_seconds {
        if l > 600 {
            return Err(bad("auth.leeway_seconds", "must be at most 600"));
        }
        claim_checks.leeway = duo_workflow_domain::Seconds::new(l);
    }
    if let Some(l) = auth.max_lifetime_seconds {
        if l == 0 {
            return Err(bad("auth.max_lifetime_seconds", "must be positive"));
        }
        claim_checks.max_lifetime = duo_workflow_domain::Seconds::new(l);
    }
    Ok(claim_checks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{builtin_urls, test_env as env, FileConfig, Settings};

    #[test]
    fn auth_enabled_is_true_or_false_in_any_letter_case() {
        for v in ["false", "False", "FALSE", "fAlSe", " false\n"] {
            assert!(
                !Settings::from_env(&env(&[(ENV_AUTH_ENABLED, v)]))
                    .unwrap()
                    .auth_enabled,
                "{v:?}"
            );
        }
        for v in ["true", "TRUE", "True", "\ttrue "] {
            assert!(
                Settings::from_env(&env(&[(ENV_AUTH_ENABLED, v)]))
                    .unwrap()
                    .auth_enabled,
                "{v:?}"
            );
        }
    }

    #[test]
    fn auth_enabled_refuses_anything_but_true_or_false() {
        // GitLab's service keeps authentication on for `0`, `no`, `off`: reading them as false
        // would silently open the door after a migration, so they stop start-up instead.
        for v in [
            "0",
            "1",
            "no",
            "yes",
            "off",
            "on",
            "nope",
            "",
            " ",
            "f",
            "t",
            "falsey",
            "false false",
        ] {
            let e = Settings::from_env(&env(&[(ENV_AUTH_ENABLED, v)])).unwrap_err();
            assert_eq!(e.field, ENV_AUTH_ENABLED, "{v:?}");
            assert!(e.to_string().contains(ENV_AUTH_ENABLED), "{e}");
        }
    }

    #[test]
    fn aigw_gitlab_url_is_used_only_when_the_gitlab_variable_is_unset() {
        let internal = "http://127.0.0.1:8080/";
        let s = Settings::from_env(&env(&[(ENV_AIGW_GITLAB_URL, internal)])).unwrap();
        assert_eq!(builtin_urls(&s)[0], ("gitlab", internal.to_owned()));
        // The file's key is overridden by the environment, AIGW_GITLAB_URL included.
        let file = FileConfig {
            auth: AuthSection {
                oidc_gitlab_url: Some("https://gitlab.file.example".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let s = Settings::from_parts(file, &env(&[(ENV_AIGW_GITLAB_URL, internal)])).unwrap();
        assert_eq!(builtin_urls(&s)[0], ("gitlab", internal.to_owned()));
        // DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL wins when set, even empty (which disables).
        let s = Settings::from_env(&env(&[
            (ENV_AIGW_GITLAB_URL, internal),
            (ENV_OIDC_GITLAB_URL, "https://gitlab.example.com"),
        ]))
        .unwrap();
        assert_eq!(
            builtin_urls(&s)[0],
            ("gitlab", "https://gitlab.example.com/".to_owned())
        );
        let s = Settings::from_env(&env(&[
            (ENV_AIGW_GITLAB_URL, internal),
            (ENV_OIDC_GITLAB_URL, ""),
        ]))
        .unwrap();
        assert_eq!(builtin_urls(&s).len(), 1);
        assert_eq!(builtin_urls(&s)[0].0, "customers-dot");
        assert_eq!(s.disabled_sources, [("gitlab", ENV_OIDC_GITLAB_URL)]);
        // Set but empty, AIGW_GITLAB_URL disables the source as the other variables do.
        let s = Settings::from_env(&env(&[(ENV_AIGW_GITLAB_URL, "")])).unwrap();
        assert_eq!(s.disabled_sources, [("gitlab", ENV_AIGW_GITLAB_URL)]);
        // It never configures CustomersDot.
        let s = Settings::from_env(&env(&[
            (ENV_AIGW_GITLAB_URL, internal),
            (ENV_OIDC_CUSTOMER_PORTAL_URL, ""),
        ]))
        .unwrap();
        assert_eq!(builtin_urls(&s), [("gitlab", internal.to_owned())]);
    }

    #[test]
    fn provider_url_errors_name_the_variable_or_key_used() {
        for (vars, field) in [
            (
                vec![(ENV_AIGW_GITLAB_URL, "gitlab.com")],
                ENV_AIGW_GITLAB_URL,
            ),
            (
                vec![(ENV_AIGW_GITLAB_URL, "http://gitlab.example")],
                ENV_AIGW_GITLAB_URL,
            ),
            (
                vec![
                    (ENV_AIGW_GITLAB_URL, "https://fine.example"),
                    (ENV_OIDC_GITLAB_URL, "http://gitlab.example"),
                ],
                ENV_OIDC_GITLAB_URL,
            ),
            (
                vec![(ENV_OIDC_CUSTOMER_PORTAL_URL, "http://customers.example")],
                ENV_OIDC_CUSTOMER_PORTAL_URL,
            ),
        ] {
            let e = Settings::from_env(&env(&vars)).unwrap_err();
            assert_eq!(e.field, field, "{vars:?}");
        }
        let file = FileConfig {
            auth: AuthSection {
                oidc_customer_portal_url: Some("http://customers.example".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let e = Settings::from_parts(file, &env(&[])).unwrap_err();
        assert_eq!(e.field, "auth.oidc_customer_portal_url");
        assert!(e.problem.contains("plain HTTP"), "{e}");
    }

    #[test]
    fn empty_provider_urls_disable_their_sources() {
        let s = Settings::from_env(&env(&[
            (ENV_OIDC_GITLAB_URL, ""),
            (ENV_OIDC_CUSTOMER_PORTAL_URL, " "),
        ]))
        .unwrap();
        assert!(s.remote_sources.is_empty());
        assert_eq!(
            s.disabled_sources,
            [
                ("gitlab", ENV_OIDC_GITLAB_URL),
                ("customers-dot", ENV_OIDC_CUSTOMER_PORTAL_URL)
            ]
        );
    }

    #[test]
    fn a_cluster_internal_plain_http_gitlab_needs_an_explicit_switch() {
        let internal = (ENV_OIDC_GITLAB_URL, "http://gitlab-webservice:8181");
        let e = Settings::from_env(&env(&[internal])).unwrap_err();
        assert_eq!(e.field, ENV_OIDC_GITLAB_URL);
        let s =
            Settings::from_env(&env(&[internal, (ENV_OIDC_ALLOW_INSECURE_HTTP, "true")])).unwrap();
        let gitlab = &s.remote_sources[0];
        assert_eq!(gitlab.name, SOURCE_GITLAB);
        assert!(gitlab.fetch.allow_insecure_http);
        let e =
            Settings::from_env(&env(&[internal, (ENV_OIDC_ALLOW_INSECURE_HTTP, "1")])).unwrap_err();
        assert_eq!(e.field, ENV_OIDC_ALLOW_INSECURE_HTTP);
    }
}
