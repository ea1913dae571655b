//! Configuration: an optional TOML file, overridden by the environment variables operators of
//! GitLab's Python service already use. Everything is validated at load time into [`Settings`];
//! a bad value stops start-up with an error that names the field.
//!
//! One file per concern, each holding the concern's variables, its part of the file's schema and
//! how both are read: [`service`] (listeners, service name, reflection, user tokens, reload
//! poll), [`logging`], [`auth`] (on/off, the built-in GitLab and CustomersDot sources, claim
//! checks), [`key_sources`] (`[[key_sources]]`), [`authority`] (`[self_signed_jwt]`),
//! [`upstream`] (the executor), [`tls`], [`limits`]. [`file`] is the file's top level and
//! [`values`] reads a value (boolean, port, list, URL) naming its field.

mod auth;
mod authority;
mod file;
mod key_sources;
mod limits;
mod logging;
mod service;
mod tls;
mod upstream;
mod values;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use duo_workflow_adapters::sources::RemoteSourceConfig;
use duo_workflow_adapters::transport::{Limits, ReloadableTls};
use duo_workflow_adapters::verified_cache::{CacheLimits, RefusedLimits};
use duo_workflow_domain::policy::{ClaimChecks, Delegation};
use duo_workflow_domain::{MethodTable, ServiceName};

pub use auth::{
    AuthSection, DEFAULT_CUSTOMER_PORTAL_URL, DEFAULT_GITLAB_URL, ENV_AIGW_GITLAB_URL,
    ENV_AUTH_ENABLED, ENV_OIDC_ALLOW_INSECURE_HTTP, ENV_OIDC_CUSTOMER_PORTAL_URL,
    ENV_OIDC_GITLAB_URL, SOURCE_CUSTOMERS_DOT, SOURCE_GITLAB,
};
pub use authority::{SecretPem, SelfSignedJwtSection, ENV_SIGNING_KEY, ENV_VALIDATION_KEY};
pub use file::FileConfig;
pub use key_sources::{
    parse_algorithms, ClaimsConfig, KeySourceConfig, RefreshConfig, RemoteSourceFields,
    StaticSource, StaticSourceConfig,
};
pub use limits::{LimitsSection, ENV_SHUTDOWN_GRACE_PERIOD};
pub use logging::{
    LogLevel, LogSettings, LoggingSection, DEFAULT_ENVIRONMENT, ENV_ENVIRONMENT, ENV_LOG_JSON,
    ENV_LOG_LEVEL,
};
pub use service::{
    HttpSection, MetricsSection, ReloadSection, UserTokensSection, DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_ADDR, DEFAULT_METRICS_PORT, DEFAULT_PORT, DEFAULT_RELOAD_POLL_SECONDS,
    ENV_CLIENT_TOKEN, ENV_DELEGABLE_SCOPES, ENV_GRPC_REFLECTION_ENABLED, ENV_HTTP_PORT,
    ENV_METRICS_ADDR, ENV_METRICS_PORT, ENV_PORT, ENV_RELOAD_POLL_SECONDS, ENV_SERVICE_NAME,
    ENV_SERVICE_NAME_ALIAS,
};
pub use tls::{
    TlsSection, ENV_HTTP_TLS_ENABLED, ENV_TLS_CERT_FILE, ENV_TLS_CLIENT_CA_FILE, ENV_TLS_ENABLED,
    ENV_TLS_KEY_FILE,
};
pub use upstream::{
    Upstream, UpstreamSection, UrlList, ENV_UPSTREAM_ALLOWED_METHODS,
    ENV_UPSTREAM_CAPABILITIES_WAIT_SECONDS, ENV_UPSTREAM_CA_FILE, ENV_UPSTREAM_RESOLVE_SECONDS,
    ENV_UPSTREAM_SERVER_CAPABILITIES, ENV_UPSTREAM_URL,
};
pub use values::parse_bool;

/// A configuration problem, naming the field (file key or environment variable) at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub port: u16,
    pub http_port: u16,
    /// The operator listener: `/metrics` and `/key-sources`.
    pub metrics_addr: SocketAddr,
    pub logging: LogSettings,
    pub service_name: ServiceName,
    pub auth_enabled: bool,
    /// The GitLab.com, CustomersDot and configured remote key sources (an empty URL disables
    /// the first two).
    pub remote_sources: Vec<RemoteSourceConfig>,
    /// The built-in sources an empty URL disabled: (source name, the variable or key that did).
    pub disabled_sources: Vec<(&'static str, &'static str)>,
    pub http_public_url: Option<String>,
    pub claim_checks: ClaimChecks,
    pub signing_key: Option<SecretPem>,
    pub validation_key: Option<SecretPem>,
    /// A validation key file that is named but does not exist: no validation key until one
    /// appears there (the last step of a rotation removes it).
    pub absent_validation_key_file: Option<PathBuf>,
    /// How often files are checked for new contents (`None`: only on SIGHUP).
    pub reload_poll: Option<Duration>,
    pub upstream: Option<Upstream>,
    /// `None`: learned from the executor.
    pub server_capabilities: Option<Vec<String>>,
    /// Which methods are served, and to whom (SPEC C2), with the operator's switches.
    pub methods: MethodTable,
    pub delegation: Delegation,
    pub static_sources: Vec<StaticSource>,
    pub max_token_bytes: usize,
    /// The transport's limits: metadata, streams, messages, connections, timeouts.
    pub transport: Limits,
    /// How long in-flight calls may go on at shutdown.
    pub shutdown_grace: Duration,
    pub verified_token_cache: CacheLimits,
    pub max_kidless_candidates: usize,
    pub refused_token_cache: RefusedLimits,
    /// gRPC over TLS, when enabled (its files read and checked).
    pub tls: Option<Arc<ReloadableTls>>,
    /// The published-keys listener serves TLS too.
    pub http_tls: bool,
}

impl Settings {
    /// Loads the file (if any), applies the environment, validates.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let config = match file {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad(path.display().to_string(), format!("cannot read: {e}")))?;
                toml::from_str(&text).map_err(|e| bad(path.display().to_string(), e.to_string()))?
            }
        };
        Self::from_parts(config, env)
    }

    pub fn from_env(env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_parts(FileConfig::default(), env)
    }

    fn from_parts(file: FileConfig, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let (port, http_port, metrics_addr) = service::listeners(&file, env)?;
        let logging = logging::log_settings(&file, env)?;
        let service_name = service::service_name(&file, env)?;
        let auth_enabled = auth::auth_enabled(&file.auth, env)?;
        let (mut remote_sources, disabled_sources) = auth::builtin_sources(&file.auth, env)?;
        let claim_checks = auth::claim_checks(&file.auth, &service_name)?;
        let authority = authority::authority_keys(file.self_signed_jwt, env)?;
        let reload_poll = service::reload_poll(&file.reload, env)?;
        let upstream = upstream::upstream(&file.upstream, env)?;
        let server_capabilities = upstream::server_capabilities(&file.upstream, env)?;
        let methods = MethodTable::new(service::reflection(file.grpc_reflection_enabled, env)?);
        let methods = upstream::allowed_methods(&file.upstream, methods, env)?;
        let delegation = service::delegation(&file.user_tokens, env)?;
        let static_sources =
            key_sources::configured_sources(file.key_sources, &mut remote_sources, &delegation)?;
        let http_public_url = service::http_public_url(&file.http)?;
        let limits = limits::limits(&file.limits, env)?;
        let tls = tls::tls(&file.tls, env)?;
        let http_tls = tls::http_tls(file.http.tls_enabled, &tls, env)?;

        Ok(Settings {
            port,
            http_port,
            metrics_addr,
            logging,
            service_name,
            auth_enabled,
            remote_sources,
            disabled_sources,
            http_public_url,
            claim_checks,
            signing_key: authority.signing_key,
            validation_key: authority.validation_key,
            absent_validation_key_file: authority.absent_validation_key_file,
            reload_poll,
            upstream,
            server_capabilities,
            methods,
            delegation,
            static_sources,
            max_token_bytes: limits.max_token_bytes,
            transport: limits.transport,
            shutdown_grace: limits.shutdown_grace,
            tls,
            http_tls,
            verified_token_cache: limits.verified_token_cache,
            max_kidless_candidates: limits.max_kidless_candidates,
            refused_token_cache: limits.refused_token_cache,
        })
    }
}

/// Variables for a test, as the process's environment would hold them.
#[cfg(test)]
fn test_env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The built-in sources: name and discovery URL; each learns its issuer by discovery.
#[cfg(test)]
fn builtin_urls(s: &Settings) -> Vec<(&str, String)> {
    s.remote_sources
        .iter()
        .map(|r| {
            assert!(
                matches!(
                    r.issuer,
                    duo_workflow_adapters::sources::IssuerSetting::Discovered
                ),
                "{r:?}"
            );
            match &r.locator {
                duo_workflow_adapters::sources::Locator::Discovery { url: Some(url) } => {
                    (r.name.as_str(), url.to_string())
                }
                other => panic!("{other:?}"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::test_env as env;
    use super::*;

    #[test]
    fn zero_configuration_has_spec_defaults() {
        let s = Settings::from_env(&env(&[])).unwrap();
        assert_eq!(s.port, 50052);
        assert_eq!(s.http_port, 50053);
        assert!(s.auth_enabled);
        assert_eq!(s.service_name.as_str(), "gitlab-duo-workflow-service");
        assert_eq!(
            builtin_urls(&s),
            [
                ("gitlab", "https://gitlab.com/".to_owned()),
                ("customers-dot", "https://customers.gitlab.com/".to_owned())
            ]
        );
        assert!(s.signing_key.is_none() && s.upstream.is_none());
        assert_eq!(s.delegation, Delegation::default());
        assert!(s.server_capabilities.is_none());
        assert!(!s.methods.reflection_enabled());
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (ENV_PORT, "http"),
            (ENV_HTTP_PORT, "70000"),
            (ENV_OIDC_GITLAB_URL, "gitlab.com"),
            (ENV_OIDC_CUSTOMER_PORTAL_URL, "ftp://customers.gitlab.com"),
            (ENV_UPSTREAM_URL, "not a url"),
            (ENV_SERVICE_NAME, " "),
            (ENV_METRICS_ADDR, "localhost"),
            (ENV_METRICS_ADDR, "127.0.0.1:9090"),
            (ENV_METRICS_PORT, "metrics"),
            (ENV_METRICS_PORT, "65536"),
            (ENV_LOG_LEVEL, "loud"),
            (ENV_LOG_LEVEL, ""),
            (ENV_LOG_JSON, "yes"),
            (ENV_LOG_JSON, "1"),
        ];
        for (field, value) in cases {
            let e = Settings::from_env(&env(&[(field, value)])).unwrap_err();
            assert_eq!(e.field, field, "{value}");
            assert!(e.to_string().contains(field));
        }
    }

    #[test]
    fn the_file_is_typed_and_unknown_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("dws-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "port = 1\n[auth]\nenabeld = false\n").unwrap();
        let e = Settings::load(Some(&path), &env(&[])).unwrap_err();
        assert!(e.problem.contains("enabeld"), "{e}");
        std::fs::write(
            &path,
            "[[key_sources]]\ntype = \"carrier_pigeon\"\nname = \"x\"\n",
        )
        .unwrap();
        let e = Settings::load(Some(&path), &env(&[])).unwrap_err();
        assert!(e.problem.contains("carrier_pigeon"), "{e}");
        std::fs::write(
            &path,
            "[[key_sources]]\ntype = \"static\"\nname = \"x\"\nissuer = \"i\"\n",
        )
        .unwrap();
        let e = Settings::load(Some(&path), &env(&[])).unwrap_err();
        assert_eq!(e.field, "key_sources[0].jwks_file");
        std::fs::write(
            &path,
            "port = 7\n[auth]\nenabled = false\nleeway_seconds = 5\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path), &env(&[(ENV_PORT, "9")])).unwrap();
        assert_eq!(s.port, 9, "the environment overrides the file");
        assert!(!s.auth_enabled);
        assert_eq!(s.claim_checks.leeway.0, 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn settings_that_would_disable_a_protection_stop_start_up_naming_the_field() {
        let dir = std::env::temp_dir().join(format!("dws-config-row35-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        let blank_key = dir.join("blank.pem");
        std::fs::write(&blank_key, " \n\t\n").unwrap();
        let cases = [
            ("[auth.refresh]\nmiss_refetch_interval_seconds = 0\n", "auth.refresh.miss_refetch_interval_seconds"),
            ("[[key_sources]]\ntype = \"oidc\"\nname = \"o\"\nissuer = \"https://a\"\nrefresh = { miss_refetch_interval_seconds = 0 }\n", "key_sources[0].refresh.miss_refetch_interval_seconds"),
            ("[limits]\nmax_kidless_candidates = 0\n", "limits.max_kidless_candidates"),
            ("[limits]\nmax_kidless_candidates = 101\n", "limits.max_kidless_candidates"),
            ("[limits]\nrefused_token_cache_seconds = 0\n", "limits.refused_token_cache_seconds"),
            ("[limits]\nrefused_token_cache_entries = 100000000\n", "limits.refused_token_cache_entries"),
            ("[limits]\nverified_token_cache_entries = 100000000\n", "limits.verified_token_cache_entries"),
            ("[self_signed_jwt]\nsigning_key = \"  \\n \"\n", "self_signed_jwt.signing_key"),
        ];
        for (text, field) in cases {
            std::fs::write(&path, text).unwrap();
            let e = Settings::load(Some(&path), &env(&[])).unwrap_err();
            assert_eq!(e.field, field, "{text}");
        }
        std::fs::write(
            &path,
            format!(
                "[self_signed_jwt]\nsigning_key_file = \"{}\"\n",
                blank_key.display()
            ),
        )
        .unwrap();
        let e = Settings::load(Some(&path), &env(&[])).unwrap_err();
        assert_eq!(e.field, "self_signed_jwt.signing_key_file");
        // A blank variable is refused; an empty one means "unset".
        let e = Settings::from_env(&env(&[(ENV_SIGNING_KEY, " \n")])).unwrap_err();
        assert_eq!(e.field, ENV_SIGNING_KEY);
        assert!(Settings::from_env(&env(&[(ENV_SIGNING_KEY, "")]))
            .unwrap()
            .signing_key
            .is_none());
        // A key read from a file is reported under the file key.
        std::fs::write(
            &blank_key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path), &env(&[])).unwrap();
        assert_eq!(
            s.signing_key.unwrap().field,
            "self_signed_jwt.signing_key_file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
