//! `[upstream]` and `DUO_WORKFLOW_UPSTREAM__*`: the workflow executor every authorized call but
//! `GenerateToken` is relayed to, its CA bundle, the `server_capabilities` reported for it, and
//! the methods beyond the contract relayed to it.

use std::collections::HashMap;
use std::path::PathBuf;

use std::time::Duration;

use duo_workflow_adapters::executors::ExecutorUrl;
use duo_workflow_adapters::sources::fetch::Shown;
use duo_workflow_domain::MethodTable;
use serde::Deserialize;
use url::Url;

use super::values::{comma_list, names, seconds};
use super::{bad, ConfigError};

pub const ENV_UPSTREAM_URL: &str = "DUO_WORKFLOW_UPSTREAM__URL";
pub const ENV_UPSTREAM_CA_FILE: &str = "DUO_WORKFLOW_UPSTREAM__CA_FILE";
pub const ENV_UPSTREAM_SERVER_CAPABILITIES: &str = "DUO_WORKFLOW_UPSTREAM__SERVER_CAPABILITIES";
pub const ENV_UPSTREAM_ALLOWED_METHODS: &str = "DUO_WORKFLOW_UPSTREAM__ALLOWED_METHODS";
pub const ENV_UPSTREAM_RESOLVE_SECONDS: &str = "DUO_WORKFLOW_UPSTREAM__RESOLVE_SECONDS";
pub const ENV_UPSTREAM_CAPABILITIES_WAIT_SECONDS: &str =
    "DUO_WORKFLOW_UPSTREAM__CAPABILITIES_WAIT_SECONDS";

/// How often executor names are resolved again, by default (a pod added behind a headless
/// Service takes new calls within this).
pub const DEFAULT_RESOLVE_SECONDS: u64 = 10;
/// How long readiness waits for the executor's first list of capabilities, by default.
pub const DEFAULT_CAPABILITIES_WAIT_SECONDS: u64 = 5;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// The workflow executors every authorized call except `GenerateToken` is relayed to: a
    /// list of URLs (or one string, comma-separated).
    pub url: Option<UrlList>,
    /// PEM certificates to trust for an `https` executor, besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// What `GenerateToken` reports as `server_capabilities`; unset: learned from the executor.
    pub server_capabilities: Option<Vec<String>>,
    /// Methods beyond the contract relayed for any authenticated caller, e.g.
    /// `/DuoWorkflow/SomethingNew`; every other unknown method is `UNIMPLEMENTED`.
    #[serde(default)]
    pub allowed_methods: Vec<String>,
    /// How often the executors' names are resolved again (1–3600 s; default 10).
    pub resolve_seconds: Option<u64>,
    /// How long readiness waits for the executor's capabilities at start (0–300 s; default 5).
    pub capabilities_wait_seconds: Option<u64>,
}

/// `[upstream] url`: one string (comma-separated) or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum UrlList {
    One(String),
    Many(Vec<String>),
}

/// The workflow executors behind the service.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Each an origin (`http(s)://host:port`), in the order configured, none twice.
    pub urls: Vec<Url>,
    /// Extra PEM certificates to trust (`https` only), and the field they came from.
    pub ca: Option<(String, Vec<u8>)>,
    /// How often names are resolved again.
    pub resolve_every: Duration,
    /// How long readiness waits for the executor's first capabilities.
    pub capabilities_wait: Duration,
}

impl Upstream {
    pub fn any_https(&self) -> bool {
        self.urls.iter().any(|u| u.scheme() == "https")
    }
}

/// The executors: `DUO_WORKFLOW_UPSTREAM__URL` / `upstream.url`, their CA bundle, and how often
/// their names are resolved.
pub(super) fn upstream(
    file: &UpstreamSection,
    env: &HashMap<String, String>,
) -> Result<Option<Upstream>, ConfigError> {
    let get = |name: &str| env.get(name).map(String::as_str);
    let (field, entries) = match (get(ENV_UPSTREAM_URL), &file.url) {
        (Some(v), _) => (ENV_UPSTREAM_URL, entries(v)),
        (None, Some(UrlList::One(v))) => ("upstream.url", entries(v)),
        (None, Some(UrlList::Many(list))) => ("upstream.url", list.clone()),
        (None, None) => return Ok(None),
    };
    let (ca_field, ca_path) = match (get(ENV_UPSTREAM_CA_FILE), &file.ca_file) {
        (Some(v), _) if v.trim().is_empty() => (ENV_UPSTREAM_CA_FILE, None),
        (Some(v), _) => (ENV_UPSTREAM_CA_FILE, Some(PathBuf::from(v))),
        (None, path) => ("upstream.ca_file", path.clone()),
    };
    // Unset, or set to nothing at all: no executor.
    if entries.iter().all(|e| e.trim().is_empty()) {
        return Ok(None);
    }
    let mut urls: Vec<Url> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let n = i + 1;
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(bad(field, format!("entry {n} is empty")));
        }
        let url =
            Url::parse(entry).map_err(|e| bad(field, format!("entry {n}: not a URL: {e}")))?;
        ExecutorUrl::parse(&url)
            .map_err(|e| bad(field, format!("entry {n} ({}): {e}", Shown(&url))))?;
        if urls.iter().any(|u| u.origin() == url.origin()) {
            return Err(bad(
                field,
                format!(
                    "entry {n}: {} is listed twice",
                    url.origin().ascii_serialization()
                ),
            ));
        }
        urls.push(url);
    }
    let ca = match ca_path {
        None => None,
        Some(_) if !urls.iter().any(|u| u.scheme() == "https") => {
            return Err(bad(
                ca_field,
                format!("needs an https executor URL ({field})"),
            ))
        }
        Some(path) => {
            let pem = std::fs::read(&path)
                .map_err(|e| bad(ca_field, format!("cannot read {}: {e}", path.display())))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(bad(
                    ca_field,
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            Some((ca_field.to_owned(), pem))
        }
    };
    let resolve_every = seconds(
        env,
        (ENV_UPSTREAM_RESOLVE_SECONDS, "upstream.resolve_seconds"),
        file.resolve_seconds,
        DEFAULT_RESOLVE_SECONDS,
        (1, 3600),
    )?;
    let capabilities_wait = seconds(
        env,
        (
            ENV_UPSTREAM_CAPABILITIES_WAIT_SECONDS,
            "upstream.capabilities_wait_seconds",
        ),
        file.capabilities_wait_seconds,
        DEFAULT_CAPABILITIES_WAIT_SECONDS,
        (0, 300),
    )?;
    Ok(Some(Upstream {
        urls,
        ca,
        resolve_every,
        capabilities_wait,
    }))
}

/// A comma-separated list of URLs, every entry kept (an empty one is an error, not skipped).
fn entries(v: &str) -> Vec<String> {
    v.split(',').map(str::to_owned).collect()
}

/// `DUO_WORKFLOW_UPSTREAM__SERVER_CAPABILITIES` or `upstream.server_capabilities`; `None`: learned
/// from the executor.
pub(super) fn server_capabilities(
    file: &UpstreamSection,
    env: &HashMap<String, String>,
) -> Result<Option<Vec<String>>, ConfigError> {
    Ok(match env.get(ENV_UPSTREAM_SERVER_CAPABILITIES) {
        Some(v) => Some(names(ENV_UPSTREAM_SERVER_CAPABILITIES, &comma_list(v))?),
        None => match &file.server_capabilities {
            Some(list) => Some(names("upstream.server_capabilities", list)?),
            None => None,
        },
    })
}

/// `methods` with the operator's methods beyond the contract allowed (relayed for any
/// authenticated caller).
pub(super) fn allowed_methods(
    file: &UpstreamSection,
    mut methods: MethodTable,
    env: &HashMap<String, String>,
) -> Result<MethodTable, ConfigError> {
    let (methods_field, allowed_methods) = match env.get(ENV_UPSTREAM_ALLOWED_METHODS) {
        Some(v) => (ENV_UPSTREAM_ALLOWED_METHODS, comma_list(v)),
        None => ("upstream.allowed_methods", file.allowed_methods.clone()),
    };
    for path in &allowed_methods {
        methods = methods
            .allow(path)
            .map_err(|e| bad(methods_field, e.to_string()))?;
    }
    Ok(methods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        test_env as env, Settings, ENV_DELEGABLE_SCOPES, ENV_GRPC_REFLECTION_ENABLED,
    };
    use std::path::Path;

    #[test]
    fn relay_and_user_token_settings_from_the_environment_are_checked_naming_the_variable() {
        let s = Settings::from_env(&env(&[
            (
                ENV_DELEGABLE_SCOPES,
                "duo_chat, duo_agent_platform,duo_chat",
            ),
            (
                ENV_UPSTREAM_SERVER_CAPABILITIES,
                "tool_call_approval,flow_semantic_versioning",
            ),
            (ENV_UPSTREAM_ALLOWED_METHODS, "/DuoWorkflow/NewRpc"),
            (ENV_GRPC_REFLECTION_ENABLED, "TRUE"),
        ]))
        .unwrap();
        let scopes: Vec<&str> = s
            .delegation
            .delegable()
            .iter()
            .map(|p| p.as_str())
            .collect();
        assert_eq!(scopes, ["duo_chat", "duo_agent_platform"]);
        assert_eq!(
            s.server_capabilities.as_deref(),
            Some(
                &[
                    "tool_call_approval".to_owned(),
                    "flow_semantic_versioning".to_owned()
                ][..]
            )
        );
        assert_eq!(
            s.methods.access("/DuoWorkflow/NewRpc"),
            duo_workflow_domain::Access::Allowed
        );
        assert!(s.methods.reflection_enabled());
        // Set but empty: configured as none, not learned from the executor.
        let s = Settings::from_env(&env(&[(ENV_UPSTREAM_SERVER_CAPABILITIES, "")])).unwrap();
        assert_eq!(s.server_capabilities, Some(vec![]));

        for (var, value) in [
            (ENV_DELEGABLE_SCOPES, ""),
            (ENV_DELEGABLE_SCOPES, "duo chat"),
            (ENV_UPSTREAM_SERVER_CAPABILITIES, "a;b"),
            (ENV_UPSTREAM_ALLOWED_METHODS, "/DuoWorkflow/GenerateToken"),
            (ENV_UPSTREAM_ALLOWED_METHODS, "NewRpc"),
            (ENV_GRPC_REFLECTION_ENABLED, "maybe"),
            (ENV_UPSTREAM_URL, "ftp://executor"),
        ] {
            let e = Settings::from_env(&env(&[(var, value)])).unwrap_err();
            assert_eq!(e.field, var, "{value:?}: {e}");
        }
    }

    #[test]
    fn executor_url_lists_are_origins_none_twice_and_their_resolving_is_bounded() {
        let s = Settings::from_env(&env(&[(
            ENV_UPSTREAM_URL,
            "http://executors.ns.svc:50052, https://10.0.0.7:443",
        )]))
        .unwrap();
        let u = s.upstream.unwrap();
        assert_eq!(u.urls.len(), 2);
        assert!(u.any_https());
        assert_eq!(
            u.resolve_every,
            Duration::from_secs(DEFAULT_RESOLVE_SECONDS)
        );
        assert_eq!(
            u.capabilities_wait,
            Duration::from_secs(DEFAULT_CAPABILITIES_WAIT_SECONDS)
        );
        // Set to nothing: no executor.
        assert!(Settings::from_env(&env(&[(ENV_UPSTREAM_URL, " ")]))
            .unwrap()
            .upstream
            .is_none());
        for (value, problem) in [
            ("http://a:1,,http://b:1", "entry 2 is empty"),
            ("http://a:1,", "entry 2 is empty"),
            ("http://a:1/v1", "no path"),
            ("http://a:1,http://a:1/", "listed twice"),
            ("http://a:1,ftp://b", "http(s)"),
            ("http://user:secret@a:1", "no user"),
        ] {
            let e = Settings::from_env(&env(&[(ENV_UPSTREAM_URL, value)])).unwrap_err();
            assert_eq!(e.field, ENV_UPSTREAM_URL, "{value}");
            assert!(e.problem.contains(problem), "{value}: {e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
        for (var, value) in [
            (ENV_UPSTREAM_RESOLVE_SECONDS, "0"),
            (ENV_UPSTREAM_RESOLVE_SECONDS, "3601"),
            (ENV_UPSTREAM_RESOLVE_SECONDS, "1.5"),
            (ENV_UPSTREAM_CAPABILITIES_WAIT_SECONDS, "301"),
        ] {
            let e = Settings::from_env(&env(&[(ENV_UPSTREAM_URL, "http://a:1"), (var, value)]))
                .unwrap_err();
            assert_eq!(e.field, var, "{value}");
        }
        // In the file: a list, and its keys named.
        let dir = std::env::temp_dir().join(format!("dws-config-urls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("c.toml");
        std::fs::write(
            &config,
            "[upstream]\nurl = [\"http://a:1\", \"http://b:2\"]\nresolve_seconds = 30\ncapabilities_wait_seconds = 0\n",
        )
        .unwrap();
        let u = Settings::load(Some(&config), &env(&[]))
            .unwrap()
            .upstream
            .unwrap();
        assert_eq!(u.urls.len(), 2);
        assert_eq!(u.resolve_every, Duration::from_secs(30));
        assert_eq!(u.capabilities_wait, Duration::ZERO);
        for (text, field) in [
            ("url = [\"http://a:1\", \"\"]", "upstream.url"),
            (
                "url = \"http://a:1\"\nresolve_seconds = 0",
                "upstream.resolve_seconds",
            ),
        ] {
            std::fs::write(&config, format!("[upstream]\n{text}\n")).unwrap();
            let e = Settings::load(Some(&config), &env(&[])).unwrap_err();
            assert_eq!(e.field, field, "{text}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_executor_ca_bundle_needs_https_and_a_certificate() {
        let dir = std::env::temp_dir().join(format!("dws-config-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let ca = |url: &str, file: &Path| {
            Settings::from_env(&env(&[
                (ENV_UPSTREAM_URL, url),
                (ENV_UPSTREAM_CA_FILE, file.to_str().unwrap()),
            ]))
        };
        let s = ca("https://executor:50052", &pem).unwrap();
        let upstream = s.upstream.unwrap();
        assert_eq!(upstream.urls[0].as_str(), "https://executor:50052/");
        assert_eq!(upstream.ca.unwrap().0, ENV_UPSTREAM_CA_FILE);
        for (url, file, problem) in [
            ("http://executor:50052", &pem, "https"),
            ("https://executor:50052", &junk, "no PEM certificate"),
            (
                "https://executor:50052",
                &dir.join("missing.pem"),
                "cannot read",
            ),
        ] {
            let e = ca(url, file).unwrap_err();
            assert_eq!(e.field, ENV_UPSTREAM_CA_FILE);
            assert!(e.problem.contains(problem), "{e}");
        }
        // The same from the file, named by its keys.
        let config = dir.join("c.toml");
        std::fs::write(
            &config,
            format!(
                "grpc_reflection_enabled = true\n[upstream]\nurl = \"http://e:1\"\nca_file = \"{}\"\n",
                pem.display()
            ),
        )
        .unwrap();
        let e = Settings::load(Some(&config), &env(&[])).unwrap_err();
        assert_eq!(e.field, "upstream.ca_file");
        std::fs::write(
            &config,
            "[upstream]\nallowed_methods = [\"/x\"]\n[user_tokens]\ndelegable_scopes = [\"duo_chat\"]\n",
        )
        .unwrap();
        let e = Settings::load(Some(&config), &env(&[])).unwrap_err();
        assert_eq!(e.field, "upstream.allowed_methods");
        std::fs::write(
            &config,
            "grpc_reflection_enabled = true\n[upstream]\nserver_capabilities = []\n[user_tokens]\ndelegable_scopes = [\"duo_chat\"]\n",
        )
        .unwrap();
        let s = Settings::load(Some(&config), &env(&[])).unwrap();
        assert!(s.methods.reflection_enabled());
        assert_eq!(s.server_capabilities, Some(vec![]));
        assert_eq!(s.delegation.delegable().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
