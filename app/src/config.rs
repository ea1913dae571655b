//! Configuration: an optional TOML file, overridden by the environment variables operators of
//! GitLab's Python service already use. Everything is validated at load time into [`Settings`];
//! a bad value stops start-up with an error that names the field.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use duo_workflow_adapters::jose::keys::KeyPolicy;
use duo_workflow_adapters::reload::FileContents;
use duo_workflow_adapters::sources::fetch::{check_scheme, FetchPolicy, Shown};
use duo_workflow_adapters::sources::{
    IssuerSetting, KeyFile, KeyFormat, Locator, RefreshPolicy, RemoteSourceConfig,
};
use duo_workflow_adapters::transport::tls::TlsFile;
use duo_workflow_adapters::transport::{
    ConnectionLimits, Limits, OpenLimits, ReloadableTls, TlsFiles,
};
use duo_workflow_adapters::verified_cache::{CacheLimits, RefusedLimits};
use duo_workflow_domain::keys::{Algorithm, DEFAULT_KIDLESS_CANDIDATES, MAX_KEYS_PER_SOURCE};
use duo_workflow_domain::policy::{ClaimChecks, Delegation};
use duo_workflow_domain::{Issuer, MethodTable, ServiceName, UnitPrimitive};
use serde::Deserialize;
use std::time::Duration;
use url::Url;

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

pub const ENV_PORT: &str = "PORT";
pub const ENV_HTTP_PORT: &str = "DUO_WORKFLOW_HTTP__PORT";
pub const ENV_AUTH_ENABLED: &str = "DUO_WORKFLOW_AUTH__ENABLED";
pub const ENV_OIDC_GITLAB_URL: &str = "DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL";
/// The AI Gateway's name for the GitLab URL: used when `ENV_OIDC_GITLAB_URL` is unset.
/// Plain HTTP to the two built-in sources' URLs beyond loopback (a cluster-internal GitLab).
pub const ENV_OIDC_ALLOW_INSECURE_HTTP: &str = "DUO_WORKFLOW_AUTH__OIDC_ALLOW_INSECURE_HTTP";
pub const ENV_AIGW_GITLAB_URL: &str = "AIGW_GITLAB_URL";
pub const ENV_OIDC_CUSTOMER_PORTAL_URL: &str = "DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL";
pub const ENV_SIGNING_KEY: &str = "DUO_WORKFLOW_SELF_SIGNED_JWT__SIGNING_KEY";
pub const ENV_VALIDATION_KEY: &str = "DUO_WORKFLOW_SELF_SIGNED_JWT__VALIDATION_KEY";
pub const ENV_SERVICE_NAME: &str = "DUO_WORKFLOW_CLOUD_CONNECTOR_SERVICE_NAME";
pub const ENV_SERVICE_NAME_ALIAS: &str = "CLOUD_CONNECTOR_SERVICE_NAME";
pub const ENV_CLIENT_TOKEN: &str = "DUO_WORKFLOW_CLIENT_TOKEN";
pub const ENV_UPSTREAM_URL: &str = "DUO_WORKFLOW_UPSTREAM__URL";
pub const ENV_UPSTREAM_CA_FILE: &str = "DUO_WORKFLOW_UPSTREAM__CA_FILE";
pub const ENV_UPSTREAM_SERVER_CAPABILITIES: &str = "DUO_WORKFLOW_UPSTREAM__SERVER_CAPABILITIES";
pub const ENV_UPSTREAM_ALLOWED_METHODS: &str = "DUO_WORKFLOW_UPSTREAM__ALLOWED_METHODS";
pub const ENV_DELEGABLE_SCOPES: &str = "DUO_WORKFLOW_USER_TOKENS__DELEGABLE_SCOPES";
pub const ENV_GRPC_REFLECTION_ENABLED: &str = "DUO_WORKFLOW_GRPC_REFLECTION_ENABLED";
/// The operator listener (`/metrics`, `/key-sources`): GitLab's names for its metrics server.
pub const ENV_METRICS_ADDR: &str = "PROMETHEUS_METRICS__ADDR";
pub const ENV_METRICS_PORT: &str = "PROMETHEUS_METRICS__PORT";
pub const ENV_LOG_LEVEL: &str = "DUO_WORKFLOW_LOGGING__LEVEL";
pub const ENV_LOG_JSON: &str = "DUO_WORKFLOW_LOGGING__JSON_FORMAT";
/// `development` (the default) logs text lines unless JSON is asked for; anything else, JSON.
pub const ENV_ENVIRONMENT: &str = "DUO_WORKFLOW_SERVICE_ENVIRONMENT";
pub const ENV_SHUTDOWN_GRACE_PERIOD: &str = "DUO_WORKFLOW_SHUTDOWN_GRACE_PERIOD_S";
pub const ENV_TLS_ENABLED: &str = "DUO_WORKFLOW_TLS__ENABLED";
pub const ENV_TLS_CERT_FILE: &str = "DUO_WORKFLOW_TLS__CERT_FILE";
pub const ENV_TLS_KEY_FILE: &str = "DUO_WORKFLOW_TLS__KEY_FILE";
/// Client certificates must chain to this CA bundle (mutual TLS); ours, not GitLab's.
pub const ENV_TLS_CLIENT_CA_FILE: &str = "DUO_WORKFLOW_TLS__CLIENT_CA_FILE";
/// The published-keys listener serves TLS too, with the same certificate; ours.
pub const ENV_HTTP_TLS_ENABLED: &str = "DUO_WORKFLOW_HTTP__TLS_ENABLED";
/// How often key and certificate files are checked for new contents; 0: only on SIGHUP. Ours.
pub const ENV_RELOAD_POLL_SECONDS: &str = "DUO_WORKFLOW_RELOAD__POLL_SECONDS";

/// The names of the two built-in OIDC sources, in logs and readiness.
pub const SOURCE_GITLAB: &str = "gitlab";
pub const SOURCE_CUSTOMERS_DOT: &str = "customers-dot";

pub const DEFAULT_PORT: u16 = 50052;
pub const DEFAULT_HTTP_PORT: u16 = 50053;
/// Loopback: operator pages are not public unless an operator says so (checklist 31).
pub const DEFAULT_METRICS_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const DEFAULT_METRICS_PORT: u16 = 50054;
pub const DEFAULT_ENVIRONMENT: &str = "development";
/// A Kubernetes Secret update reaches a pod's files within about a minute; ten seconds more
/// is little next to that, and reading a few small files that often costs nothing.
pub const DEFAULT_RELOAD_POLL_SECONDS: u64 = 10;
pub const DEFAULT_GITLAB_URL: &str = "https://gitlab.com";
pub const DEFAULT_CUSTOMER_PORTAL_URL: &str = "https://customers.gitlab.com";

/// The configuration file, as written. Every section and key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub port: Option<u16>,
    pub http_port: Option<u16>,
    pub service_name: Option<String>,
    /// Serve gRPC reflection, without a token.
    pub grpc_reflection_enabled: Option<bool>,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub self_signed_jwt: SelfSignedJwtSection,
    #[serde(default)]
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub user_tokens: UserTokensSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub logging: LoggingSection,
    /// `development` (default), `production`, ...: decides the log format when it is not set.
    pub environment: Option<String>,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub reload: ReloadSection,
    #[serde(default)]
    pub key_sources: Vec<KeySourceConfig>,
}

/// Reading key and certificate files again while serving (always on SIGHUP).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadSection {
    /// How often the files are checked for new contents; 0: only on SIGHUP. Default 10.
    pub poll_seconds: Option<u64>,
}

/// The operator listener: `/metrics` and `/key-sources`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// An IP address; default 127.0.0.1.
    pub addr: Option<String>,
    pub port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    /// `trace`, `debug`, `info`, `warn` (`warning`), `error` (`critical`).
    pub level: Option<String>,
    /// One JSON object per line; default: JSON unless the environment is `development`.
    pub json_format: Option<bool>,
}

/// gRPC over TLS (and, with `http.tls_enabled`, the published keys).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub enabled: Option<bool>,
    /// PEM certificate chain, the server's certificate first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates; when set, gRPC clients must present a certificate chaining to one.
    pub client_ca_file: Option<PathBuf>,
}

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// The URL under which the published keys are reachable, e.g. `https://dws.example.com`;
    /// by default derived from each request's `Host`.
    pub public_url: Option<String>,
    /// Serve the published keys over TLS, with the `[tls]` certificate (no client certificates).
    pub tls_enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfSignedJwtSection {
    /// PEM text of the signing key.
    pub signing_key: Option<String>,
    pub signing_key_file: Option<PathBuf>,
    /// PEM text of the previous signing key, still accepted during rotation.
    pub validation_key: Option<String>,
    pub validation_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// The workflow executor every authorized call except `GenerateToken` is relayed to.
    pub url: Option<String>,
    /// PEM certificates to trust for an `https` executor, besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// What `GenerateToken` reports as `server_capabilities`; unset: learned from the executor.
    pub server_capabilities: Option<Vec<String>>,
    /// Methods beyond the contract relayed for any authenticated caller, e.g.
    /// `/DuoWorkflow/SomethingNew`; every other unknown method is `UNIMPLEMENTED`.
    #[serde(default)]
    pub allowed_methods: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserTokensSection {
    /// The unit primitives a user token may carry (those of the caller's among them).
    pub delegable_scopes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_token_bytes: Option<usize>,
    pub max_header_list_bytes: Option<u32>,
    pub max_concurrent_streams: Option<u32>,
    pub shutdown_grace_seconds: Option<u64>,
    /// Open connections per listener.
    pub max_connections: Option<usize>,
    /// Time to complete the TLS handshake and send the HTTP/2 preface (or, for the published
    /// keys, a request's headers).
    pub handshake_timeout_seconds: Option<u64>,
    pub keepalive_interval_seconds: Option<u64>,
    pub keepalive_timeout_seconds: Option<u64>,
    /// Streams reset because of the peer's malformed frames before the connection is closed.
    pub max_reset_streams_per_connection: Option<usize>,
    /// Calls without a token (health, reflection) open at once, per connection and in all.
    pub unauthenticated_streams_per_connection: Option<usize>,
    pub unauthenticated_streams: Option<usize>,
    /// Request bytes one call without a token may send.
    pub unauthenticated_max_message_bytes: Option<usize>,
    /// Verified-token cache bounds; 0 disables the cache.
    pub verified_token_cache_entries: Option<usize>,
    pub verified_token_cache_bytes: Option<usize>,
    /// How many keys a kid-less token is tried against, the most recent first.
    pub max_kidless_candidates: Option<usize>,
    /// Refused-token cache: entries (0 disables it) and how long a refusal is remembered.
    pub refused_token_cache_entries: Option<usize>,
    pub refused_token_cache_seconds: Option<u64>,
}

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

/// A private key's PEM text, which never appears in debug output.
#[derive(Clone)]
pub struct SecretPem {
    /// The field it came from (a variable or a file key), for errors about it.
    pub field: String,
    pub pem: String,
    /// The file it was read from, read again on reload; `None` for a variable or inline text,
    /// which cannot change while the process runs.
    pub file: Option<PathBuf>,
}

impl std::fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretPem({}, <redacted>)", self.field)
    }
}

/// The workflow executor behind the service.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub url: Url,
    /// Extra PEM certificates to trust (`https` only), and the field they came from.
    pub ca: Option<(String, Vec<u8>)>,
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

/// The most verbose level logged (`RUST_LOG`, when set, overrides it with a full filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The level as a `tracing` filter directive.
    pub fn directive(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    /// The names GitLab's Python service takes (`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`),
    /// in any letter case, and `trace` and `warn`.
    fn parse(field: &str, v: &str) -> Result<Self, ConfigError> {
        Ok(match v.trim().to_ascii_lowercase().as_str() {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" | "warning" => LogLevel::Warn,
            "error" | "critical" => LogLevel::Error,
            _ => {
                return Err(bad(
                    field,
                    format!("{v:?} is not a log level: write trace, debug, info, warning or error"),
                ))
            }
        })
    }
}

/// How the service logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    pub level: LogLevel,
    /// One JSON object per line; otherwise human-readable text.
    pub json: bool,
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
        let get = |name: &str| env.get(name).map(String::as_str);

        let port = match get(ENV_PORT) {
            Some(v) => parse_port(ENV_PORT, v)?,
            None => file.port.unwrap_or(DEFAULT_PORT),
        };
        let http_port = match get(ENV_HTTP_PORT) {
            Some(v) => parse_port(ENV_HTTP_PORT, v)?,
            None => file.http_port.unwrap_or(DEFAULT_HTTP_PORT),
        };

        let metrics_addr = SocketAddr::new(
            match get(ENV_METRICS_ADDR).filter(|v| !v.trim().is_empty()) {
                Some(v) => parse_ip(ENV_METRICS_ADDR, v)?,
                None => match &file.metrics.addr {
                    Some(v) => parse_ip("metrics.addr", v)?,
                    None => DEFAULT_METRICS_ADDR,
                },
            },
            match get(ENV_METRICS_PORT).filter(|v| !v.trim().is_empty()) {
                Some(v) => parse_port(ENV_METRICS_PORT, v)?,
                None => file.metrics.port.unwrap_or(DEFAULT_METRICS_PORT),
            },
        );
        if metrics_addr.port() != 0 && [port, http_port].contains(&metrics_addr.port()) {
            // Named where it was set; its default collides only with a port set elsewhere, and
            // this variable is what moves it.
            let from_env = get(ENV_METRICS_PORT).filter(|v| !v.trim().is_empty());
            let field = match (from_env, file.metrics.port) {
                (None, Some(_)) => "metrics.port",
                _ => ENV_METRICS_PORT,
            };
            return Err(bad(
                field,
                format!(
                    "{} is already the gRPC or published-keys port ({ENV_PORT}, {ENV_HTTP_PORT})",
                    metrics_addr.port()
                ),
            ));
        }
        let logging = log_settings(&file, env)?;

        let (service_field, service_name) =
            match (get(ENV_SERVICE_NAME), get(ENV_SERVICE_NAME_ALIAS)) {
                (Some(v), _) => (ENV_SERVICE_NAME, v.to_owned()),
                (None, Some(v)) => (ENV_SERVICE_NAME_ALIAS, v.to_owned()),
                (None, None) => (
                    "service_name",
                    file.service_name
                        .unwrap_or_else(|| ServiceName::DEFAULT.into()),
                ),
            };
        if service_name.trim().is_empty() || service_name.trim() != service_name {
            return Err(bad(
                service_field,
                "must be a non-empty name without surrounding spaces",
            ));
        }
        let service_name = ServiceName::new(service_name);

        let auth_enabled = match get(ENV_AUTH_ENABLED) {
            Some(v) => parse_bool(ENV_AUTH_ENABLED, v)?,
            None => file.auth.enabled.unwrap_or(true),
        };

        // The built-in GitLab and CustomersDot sources: the first variable set (even empty) wins,
        // then the file, then the default; an empty URL disables the source. They learn their
        // issuer from the discovery document under the URL (an internal URL names the external
        // issuer there).
        let mut remote_sources = Vec::new();
        let mut disabled_sources = Vec::new();
        let allow_insecure_http = match get(ENV_OIDC_ALLOW_INSECURE_HTTP) {
            Some(v) => parse_bool(ENV_OIDC_ALLOW_INSECURE_HTTP, v)?,
            None => file.auth.oidc_allow_insecure_http.unwrap_or(false),
        };
        let builtin = [
            BuiltinSource {
                name: SOURCE_GITLAB,
                env: &[ENV_OIDC_GITLAB_URL, ENV_AIGW_GITLAB_URL],
                file_field: "auth.oidc_gitlab_url",
                file_value: file.auth.oidc_gitlab_url.as_deref(),
                default: DEFAULT_GITLAB_URL,
                required: file.auth.oidc_gitlab_required,
            },
            BuiltinSource {
                name: SOURCE_CUSTOMERS_DOT,
                env: &[ENV_OIDC_CUSTOMER_PORTAL_URL],
                file_field: "auth.oidc_customer_portal_url",
                file_value: file.auth.oidc_customer_portal_url.as_deref(),
                default: DEFAULT_CUSTOMER_PORTAL_URL,
                required: file.auth.oidc_customer_portal_required,
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
            let url = fetchable_url(field, &issuer_url(field, value)?, allow_insecure_http)?;
            remote_sources.push(RemoteSourceConfig {
                name: b.name.into(),
                issuer: IssuerSetting::Discovered,
                locator: Locator::Discovery { url: Some(url) },
                algorithms: vec![Algorithm::RS256],
                required: b.required,
                key_policy: KeyPolicy::default(),
                fetch: fetch_policy("auth.refresh", &file.auth.refresh, allow_insecure_http)?,
                refresh: refresh_policy("auth.refresh", &file.auth.refresh)?,
            });
        }

        let mut claim_checks = ClaimChecks::new(service_name.clone());
        if let Some(l) = file.auth.leeway_seconds {
            if l > 600 {
                return Err(bad("auth.leeway_seconds", "must be at most 600"));
            }
            claim_checks.leeway = duo_workflow_domain::Seconds::new(l);
        }
        if let Some(l) = file.auth.max_lifetime_seconds {
            if l == 0 {
                return Err(bad("auth.max_lifetime_seconds", "must be positive"));
            }
            claim_checks.max_lifetime = duo_workflow_domain::Seconds::new(l);
        }

        let signing_key = match secret(
            (ENV_SIGNING_KEY, get(ENV_SIGNING_KEY)),
            (
                "self_signed_jwt.signing_key",
                file.self_signed_jwt.signing_key,
            ),
            (
                "self_signed_jwt.signing_key_file",
                file.self_signed_jwt.signing_key_file,
            ),
            AbsentFile::Refused,
        )? {
            Secret::Key(key) => Some(key),
            Secret::None | Secret::AbsentFile(_) => None,
        };
        let validation_key = secret(
            (ENV_VALIDATION_KEY, get(ENV_VALIDATION_KEY)),
            (
                "self_signed_jwt.validation_key",
                file.self_signed_jwt.validation_key,
            ),
            (
                "self_signed_jwt.validation_key_file",
                file.self_signed_jwt.validation_key_file,
            ),
            AbsentFile::NoKey,
        )?;
        let (validation_key, absent_validation_key_file) = match validation_key {
            Secret::Key(key) => (Some(key), None),
            Secret::None => (None, None),
            Secret::AbsentFile(path) => (None, Some(path)),
        };
        let reload_poll = match get(ENV_RELOAD_POLL_SECONDS) {
            Some(v) => Some((
                ENV_RELOAD_POLL_SECONDS,
                v.trim().parse::<u64>().map_err(|_| {
                    bad(
                        ENV_RELOAD_POLL_SECONDS,
                        format!("{v:?} is not a whole number of seconds"),
                    )
                })?,
            )),
            None => file.reload.poll_seconds.map(|s| ("reload.poll_seconds", s)),
        };
        let reload_poll = match reload_poll {
            Some((field, s)) if s > 3600 => {
                return Err(bad(field, "must be at most 3600 (0: only on SIGHUP)"))
            }
            Some((_, 0)) => None,
            Some((_, s)) => Some(Duration::from_secs(s)),
            None => Some(Duration::from_secs(DEFAULT_RELOAD_POLL_SECONDS)),
        };

        let upstream = upstream(&file.upstream, env)?;
        let server_capabilities = match get(ENV_UPSTREAM_SERVER_CAPABILITIES) {
            Some(v) => Some(names(ENV_UPSTREAM_SERVER_CAPABILITIES, &comma_list(v))?),
            None => match &file.upstream.server_capabilities {
                Some(list) => Some(names("upstream.server_capabilities", list)?),
                None => None,
            },
        };
        let reflection = match get(ENV_GRPC_REFLECTION_ENABLED) {
            Some(v) => parse_bool(ENV_GRPC_REFLECTION_ENABLED, v)?,
            None => file.grpc_reflection_enabled.unwrap_or(false),
        };
        let (methods_field, allowed_methods) = match get(ENV_UPSTREAM_ALLOWED_METHODS) {
            Some(v) => (ENV_UPSTREAM_ALLOWED_METHODS, comma_list(v)),
            None => (
                "upstream.allowed_methods",
                file.upstream.allowed_methods.clone(),
            ),
        };
        let mut methods = MethodTable::new(reflection);
        for path in &allowed_methods {
            methods = methods
                .allow(path)
                .map_err(|e| bad(methods_field, e.to_string()))?;
        }
        let delegation = match get(ENV_DELEGABLE_SCOPES) {
            Some(v) => Some((ENV_DELEGABLE_SCOPES, comma_list(v))),
            None => file
                .user_tokens
                .delegable_scopes
                .clone()
                .map(|list| ("user_tokens.delegable_scopes", list)),
        };
        let delegation = match delegation {
            None => Delegation::default(),
            Some((field, list)) => {
                let list = names(field, &list)?;
                if list.is_empty() {
                    return Err(bad(field, "must name at least one unit primitive"));
                }
                Delegation::new(list.into_iter().map(UnitPrimitive::new).collect())
            }
        };

        // Names identify sources in logs and readiness: unique, beside the built-in ones.
        let mut names: std::collections::HashSet<String> =
            remote_sources.iter().map(|s| s.name.clone()).collect();
        names.insert(duo_workflow_adapters::authority::KEY_SOURCE_NAME.to_owned());
        let mut static_sources = Vec::new();
        for (i, source) in file.key_sources.into_iter().enumerate() {
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
        let http_public_url = match file.http.public_url {
            None => None,
            Some(u) => Some(issuer_url("http.public_url", &u)?),
        };

        let limits = file.limits;
        let max_token_bytes = limits.max_token_bytes.unwrap_or(8 * 1024);
        if !(512..=64 * 1024).contains(&max_token_bytes) {
            return Err(bad(
                "limits.max_token_bytes",
                "must be between 512 and 65536",
            ));
        }
        let max_header_list_bytes = limits.max_header_list_bytes.unwrap_or(24 * 1024);
        if !(4 * 1024..=1024 * 1024).contains(&max_header_list_bytes) {
            return Err(bad(
                "limits.max_header_list_bytes",
                "must be between 4096 and 1048576",
            ));
        }
        if (max_header_list_bytes as usize) < max_token_bytes + 1024 {
            return Err(bad(
                "limits.max_header_list_bytes",
                "must leave room for a token of limits.max_token_bytes",
            ));
        }
        let transport = transport_limits(&limits, max_header_list_bytes)?;
        let shutdown_grace = match get(ENV_SHUTDOWN_GRACE_PERIOD) {
            Some(v) => grace_period(ENV_SHUTDOWN_GRACE_PERIOD, v)?,
            None => match limits.shutdown_grace_seconds {
                Some(s) if s > MAX_GRACE_SECONDS => {
                    return Err(bad(
                        "limits.shutdown_grace_seconds",
                        format!("must be at most {MAX_GRACE_SECONDS}"),
                    ))
                }
                Some(s) => Duration::from_secs(s),
                None => Duration::from_secs(30),
            },
        };
        let tls = tls(&file.tls, env)?;
        let http_tls = match get(ENV_HTTP_TLS_ENABLED) {
            Some(v) => Some((ENV_HTTP_TLS_ENABLED, parse_bool(ENV_HTTP_TLS_ENABLED, v)?)),
            None => file.http.tls_enabled.map(|b| ("http.tls_enabled", b)),
        };
        let http_tls = match http_tls {
            Some((field, true)) if tls.is_none() => {
                return Err(bad(
                    field,
                    format!("needs TLS configured ({ENV_TLS_ENABLED} and its files)"),
                ))
            }
            Some((_, enabled)) => enabled,
            None => false,
        };

        let (verified_token_cache, max_kidless_candidates, refused_token_cache) =
            token_judging_limits(&limits)?;

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
            signing_key,
            validation_key,
            absent_validation_key_file,
            reload_poll,
            upstream,
            server_capabilities,
            methods,
            delegation,
            static_sources,
            max_token_bytes,
            transport,
            shutdown_grace,
            tls,
            http_tls,
            verified_token_cache,
            max_kidless_candidates,
            refused_token_cache,
        })
    }
}

/// `[limits] key`, or its default, within `min..=max`: a value that would switch a protection off
/// (zero, or beyond any sane bound) stops start-up naming the key (checklist row 35).
fn within<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: Option<T>,
    default: T,
    (min, max): (T, T),
) -> Result<T, ConfigError> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(bad(
            format!("limits.{key}"),
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(v)
}

/// The bounds of judging tokens: the two caches (0 entries disables one; no unbounded value is
/// accepted) and how many keys a kid-less token may cost (checklist rows 23, 29, 35).
fn token_judging_limits(
    limits: &LimitsSection,
) -> Result<(CacheLimits, usize, RefusedLimits), ConfigError> {
    let cache = CacheLimits::default();
    let verified = CacheLimits {
        max_entries: within(
            "verified_token_cache_entries",
            limits.verified_token_cache_entries,
            cache.max_entries,
            (0, 1_000_000),
        )?,
        max_bytes: within(
            "verified_token_cache_bytes",
            limits.verified_token_cache_bytes,
            cache.max_bytes,
            (0, 1 << 30),
        )?,
    };
    let candidates = within(
        "max_kidless_candidates",
        limits.max_kidless_candidates,
        DEFAULT_KIDLESS_CANDIDATES,
        (1, MAX_KEYS_PER_SOURCE),
    )?;
    let refused_default = RefusedLimits::default();
    let refused = RefusedLimits {
        max_entries: within(
            "refused_token_cache_entries",
            limits.refused_token_cache_entries,
            refused_default.max_entries,
            (0, 1_000_000),
        )?,
        ttl: Duration::from_secs(within(
            "refused_token_cache_seconds",
            limits.refused_token_cache_seconds,
            refused_default.ttl.as_secs(),
            (1, 3600),
        )?),
    };
    Ok((verified, candidates, refused))
}

/// The longest shutdown grace period accepted.
const MAX_GRACE_SECONDS: u64 = 3600;

/// `DUO_WORKFLOW_SHUTDOWN_GRACE_PERIOD_S`: seconds, whole or decimal, from 0 to an hour.
fn grace_period(field: &str, v: &str) -> Result<Duration, ConfigError> {
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=MAX_GRACE_SECONDS as f64).contains(&s) => {
            Ok(Duration::from_secs_f64(s))
        }
        _ => Err(bad(
            field,
            format!("{v:?} is not a number of seconds from 0 to {MAX_GRACE_SECONDS}"),
        )),
    }
}

/// The transport's limits from `[limits]`: each has a default, and a value that would disable
/// the protection (zero, or beyond any sane bound) stops start-up naming its key.
fn transport_limits(
    limits: &LimitsSection,
    max_header_list_bytes: u32,
) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let max_concurrent_streams = within(
        "max_concurrent_streams",
        limits.max_concurrent_streams,
        d.max_concurrent_streams,
        (1, 100_000),
    )?;
    let secs = |key: &str, value: Option<u64>, default: Duration, range: (u64, u64)| {
        within(key, value, default.as_secs(), range).map(Duration::from_secs)
    };
    let per_connection = within(
        "unauthenticated_streams_per_connection",
        limits.unauthenticated_streams_per_connection,
        d.open.per_connection,
        (1, (max_concurrent_streams as usize).min(1024)),
    )?;
    let open = OpenLimits {
        per_connection,
        total: within(
            "unauthenticated_streams",
            limits.unauthenticated_streams,
            d.open.total.max(per_connection),
            (per_connection, 65_536),
        )?,
        max_request_bytes: within(
            "unauthenticated_max_message_bytes",
            limits.unauthenticated_max_message_bytes,
            d.open.max_request_bytes,
            (64, 65_536),
        )?,
    };
    Ok(Limits {
        max_header_list_bytes,
        max_concurrent_streams,
        max_message_bytes: d.max_message_bytes,
        connections: ConnectionLimits {
            max_connections: within(
                "max_connections",
                limits.max_connections,
                d.connections.max_connections,
                (1, 1_000_000),
            )?,
            handshake_timeout: secs(
                "handshake_timeout_seconds",
                limits.handshake_timeout_seconds,
                d.connections.handshake_timeout,
                (1, 300),
            )?,
        },
        keepalive_interval: secs(
            "keepalive_interval_seconds",
            limits.keepalive_interval_seconds,
            d.keepalive_interval,
            (1, 3600),
        )?,
        keepalive_timeout: secs(
            "keepalive_timeout_seconds",
            limits.keepalive_timeout_seconds,
            d.keepalive_timeout,
            (1, 600),
        )?,
        max_reset_streams: within(
            "max_reset_streams_per_connection",
            limits.max_reset_streams_per_connection,
            d.max_reset_streams,
            (1, 10_000),
        )?,
        open,
        first_messages: d.first_messages,
    })
}

/// TLS: `DUO_WORKFLOW_TLS__*` or `[tls]`; each file named by the variable or key it came from.
fn tls(
    file: &TlsSection,
    env: &HashMap<String, String>,
) -> Result<Option<Arc<ReloadableTls>>, ConfigError> {
    let get = |name: &str| env.get(name).map(String::as_str);
    let enabled = match get(ENV_TLS_ENABLED) {
        Some(v) => parse_bool(ENV_TLS_ENABLED, v)?,
        None => file.enabled.unwrap_or(false),
    };
    if !enabled {
        return Ok(None);
    }
    // A path from the environment (set and not blank) wins over the file's key.
    let path = |var: &'static str, key: &'static str, value: &Option<PathBuf>| match get(var) {
        Some(v) if !v.trim().is_empty() => Some((var, PathBuf::from(v.trim()))),
        Some(_) => None,
        None => value.clone().map(|p| (key, p)),
    };
    let required = |var: &'static str, key: &'static str, value: &Option<PathBuf>| {
        path(var, key, value).ok_or_else(|| {
            let field = if get(ENV_TLS_ENABLED).is_some() {
                var
            } else {
                key
            };
            bad(field, "is required when TLS is enabled")
        })
    };
    let cert = required(ENV_TLS_CERT_FILE, "tls.cert_file", &file.cert_file)?;
    let key = required(ENV_TLS_KEY_FILE, "tls.key_file", &file.key_file)?;
    let client_ca = path(
        ENV_TLS_CLIENT_CA_FILE,
        "tls.client_ca_file",
        &file.client_ca_file,
    );
    let files = TlsFiles {
        cert: cert.1.clone(),
        key: key.1.clone(),
        client_ca: client_ca.as_ref().map(|(_, p)| p.clone()),
    };
    ReloadableTls::load(files)
        .map(|t| Some(Arc::new(t)))
        .map_err(|e| {
            let field = match e.file {
                TlsFile::Cert => cert.0,
                TlsFile::Key => key.0,
                TlsFile::ClientCa => client_ca.map_or(ENV_TLS_CLIENT_CA_FILE, |(f, _)| f),
            };
            bad(field, e.problem)
        })
}

/// A comma-separated environment list; blanks around items are ignored, and so are empty items.
fn comma_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Names (unit primitives, capabilities): letters, digits, `_`, `-`, `.`, `/`, `:`.
fn names(field: &str, list: &[String]) -> Result<Vec<String>, ConfigError> {
    for name in list {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-./:".contains(&b));
        if !ok {
            return Err(bad(field, format!("{name:?} is not a valid name")));
        }
    }
    Ok(list.to_vec())
}

/// The executor: `DUO_WORKFLOW_UPSTREAM__URL` / `upstream.url`, and its CA bundle.
fn upstream(
    file: &UpstreamSection,
    env: &HashMap<String, String>,
) -> Result<Option<Upstream>, ConfigError> {
    let get = |name: &str| env.get(name).map(String::as_str);
    let (field, value) = match (get(ENV_UPSTREAM_URL), &file.url) {
        (Some(v), _) => (ENV_UPSTREAM_URL, v.to_owned()),
        (None, Some(v)) => ("upstream.url", v.clone()),
        (None, None) => return Ok(None),
    };
    let (ca_field, ca_path) = match (get(ENV_UPSTREAM_CA_FILE), &file.ca_file) {
        (Some(v), _) if v.trim().is_empty() => (ENV_UPSTREAM_CA_FILE, None),
        (Some(v), _) => (ENV_UPSTREAM_CA_FILE, Some(PathBuf::from(v))),
        (None, path) => ("upstream.ca_file", path.clone()),
    };
    if value.trim().is_empty() {
        return Ok(None);
    }
    let url = Url::parse(value.trim()).map_err(|e| bad(field, format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad(field, "must be an http(s) URL with a host"));
    }
    let ca = match ca_path {
        None => None,
        Some(_) if url.scheme() != "https" => {
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
    Ok(Some(Upstream { url, ca }))
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

/// The log level and format: the environment, then the file, then the defaults (`info`; JSON
/// unless the environment is `development`, its default, as GitLab's service does).
fn log_settings(
    file: &FileConfig,
    env: &HashMap<String, String>,
) -> Result<LogSettings, ConfigError> {
    let get = |name: &str| env.get(name).map(String::as_str);
    let level = match get(ENV_LOG_LEVEL) {
        Some(v) => LogLevel::parse(ENV_LOG_LEVEL, v)?,
        None => match &file.logging.level {
            Some(v) => LogLevel::parse("logging.level", v)?,
            None => LogLevel::Info,
        },
    };
    // Set but blank reads as unset: the default, development.
    let (environment_field, environment) = match get(ENV_ENVIRONMENT).map(str::trim) {
        Some(v) if !v.is_empty() => (ENV_ENVIRONMENT, v),
        _ => (
            "environment",
            file.environment
                .as_deref()
                .map(str::trim)
                .unwrap_or(DEFAULT_ENVIRONMENT),
        ),
    };
    if environment.is_empty() || environment.chars().any(|c| c.is_control()) {
        return Err(bad(
            environment_field,
            "must be a name such as development or production",
        ));
    }
    let json = match get(ENV_LOG_JSON) {
        Some(v) => parse_bool(ENV_LOG_JSON, v)?,
        None => file
            .logging
            .json_format
            .unwrap_or(!environment.eq_ignore_ascii_case(DEFAULT_ENVIRONMENT)),
    };
    Ok(LogSettings { level, json })
}

/// An IP address, v4 or v6 (brackets allowed around v6).
fn parse_ip(field: &str, v: &str) -> Result<IpAddr, ConfigError> {
    let t = v.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(t);
    t.parse::<IpAddr>().map_err(|_| {
        bad(
            field,
            format!("{v:?} is not an IP address (such as 127.0.0.1, 0.0.0.0 or ::)"),
        )
    })
}

fn parse_port(field: &str, v: &str) -> Result<u16, ConfigError> {
    v.trim()
        .parse::<u16>()
        .map_err(|_| bad(field, format!("{v:?} is not a port number (0-65535)")))
}

/// `true` or `false` in any letter case (GitLab's Python service only understood lower-case
/// `false`), surrounding whitespace ignored. Nothing else: GitLab's service keeps authentication
/// on for `0`, `no` or `off`, so reading them as `false` would open the door after a migration.
pub fn parse_bool(field: &str, v: &str) -> Result<bool, ConfigError> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if v.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(bad(
            field,
            format!("{v:?} is not a boolean: write true or false"),
        ))
    }
}

/// An http(s) URL with a host and no query or fragment, returned without a trailing slash
/// (GitLab's issuers are written without one).
fn issuer_url(field: &str, value: &str) -> Result<String, ConfigError> {
    let value = value.trim();
    // The value is not echoed whole: a URL may carry credentials (checklist row 30).
    let url = Url::parse(value).map_err(|e| bad(field, format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad(
            field,
            format!("{} must be an http(s) URL with a host", Shown(&url)),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(field, "an issuer URL has no query or fragment"));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// A URL this service may fetch from (HTTPS, or HTTP to loopback unless allowed).
fn fetchable_url(field: &str, url: &str, allow_insecure_http: bool) -> Result<Url, ConfigError> {
    let url = Url::parse(url).map_err(|e| bad(field, format!("not a URL: {e}")))?;
    check_scheme(&url, allow_insecure_http).map_err(|e| bad(field, e))?;
    Ok(url)
}

fn refresh_policy(field: &str, c: &RefreshConfig) -> Result<RefreshPolicy, ConfigError> {
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

fn fetch_policy(
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

/// Where a private key may be missing: a validation key file that does not exist is "no
/// validation key" (the last step of a rotation removes it), a signing key file never is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AbsentFile {
    Refused,
    NoKey,
}

/// What [`secret`] found: a key, or nothing, or a file named that does not exist (yet).
enum Secret {
    Key(SecretPem),
    None,
    AbsentFile(PathBuf),
}

/// A private key from the variable (`env`: its name and value), the inline file key or the file
/// the file key names. An empty variable counts as unset; a value of only whitespace is refused
/// rather than read as "no key" (which would silently mean an ephemeral one; checklist row 35).
fn secret(
    (env_field, env_value): (&str, Option<&str>),
    (inline_field, inline): (&str, Option<String>),
    (file_field, file): (&str, Option<PathBuf>),
    absent: AbsentFile,
) -> Result<Secret, ConfigError> {
    let checked = |field: &str, pem: String, file: Option<PathBuf>| {
        if !pem.is_empty() && pem.trim().is_empty() {
            return Err(bad(field, "holds only whitespace, no key"));
        }
        Ok(if pem.is_empty() {
            Secret::None
        } else {
            Secret::Key(SecretPem {
                field: field.to_owned(),
                pem,
                file,
            })
        })
    };
    if let Some(v) = env_value {
        return checked(env_field, v.to_owned(), None);
    }
    match (inline, file) {
        (Some(_), Some(_)) => Err(bad(
            inline_field,
            format!("give either {inline_field} or {file_field}, not both"),
        )),
        (Some(v), None) => checked(inline_field, v, None),
        (None, Some(path)) => {
            let pem = match FileContents::read(&path) {
                FileContents::Missing if absent == AbsentFile::NoKey => {
                    return Ok(Secret::AbsentFile(path))
                }
                contents => String::from_utf8(
                    contents
                        .bytes(&path)
                        .map_err(|e| bad(file_field, e))?
                        .to_vec(),
                )
                .map_err(|_| bad(file_field, format!("{} is not UTF-8 text", path.display())))?,
            };
            if pem.trim().is_empty() {
                return Err(bad(file_field, format!("{} holds no key", path.display())));
            }
            checked(file_field, pem, Some(path))
        }
        (None, None) => Ok(Secret::None),
    }
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
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

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

    /// The built-in sources: name and discovery URL; each learns its issuer by discovery.
    fn builtin_urls(s: &Settings) -> Vec<(&str, String)> {
        s.remote_sources
            .iter()
            .map(|r| {
                assert!(matches!(r.issuer, IssuerSetting::Discovered), "{r:?}");
                match &r.locator {
                    Locator::Discovery { url: Some(url) } => (r.name.as_str(), url.to_string()),
                    other => panic!("{other:?}"),
                }
            })
            .collect()
    }

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
    fn the_operator_listener_is_loopback_unless_configured() {
        let addr = |pairs: &[(&str, &str)]| Settings::from_env(&env(pairs)).unwrap().metrics_addr;
        assert_eq!(addr(&[]), "127.0.0.1:50054".parse().unwrap());
        // GitLab's deployments set both.
        assert_eq!(
            addr(&[(ENV_METRICS_ADDR, "0.0.0.0"), (ENV_METRICS_PORT, "8082")]),
            "0.0.0.0:8082".parse().unwrap()
        );
        // Either alone keeps the other's default; blank is unset.
        assert_eq!(
            addr(&[(ENV_METRICS_PORT, "9102")]),
            "127.0.0.1:9102".parse().unwrap()
        );
        assert_eq!(
            addr(&[(ENV_METRICS_ADDR, "[::]"), (ENV_METRICS_PORT, " ")]),
            "[::]:50054".parse().unwrap()
        );
        let file: FileConfig = toml::from_str("[metrics]\naddr = \"::1\"\nport = 9000\n").unwrap();
        let s = Settings::from_parts(file, &env(&[(ENV_METRICS_PORT, "9001")])).unwrap();
        assert_eq!(s.metrics_addr, "[::1]:9001".parse().unwrap());
        let file: FileConfig = toml::from_str("[metrics]\naddr = \"gitlab\"\n").unwrap();
        let e = Settings::from_parts(file, &env(&[])).unwrap_err();
        assert_eq!(e.field, "metrics.addr");
        // Not one of the other two ports.
        for (pairs, field) in [
            (&[(ENV_METRICS_PORT, "50052")][..], ENV_METRICS_PORT),
            (
                &[(ENV_METRICS_PORT, "7000"), (ENV_HTTP_PORT, "7000")][..],
                ENV_METRICS_PORT,
            ),
            (&[(ENV_PORT, "50054")][..], ENV_METRICS_PORT),
        ] {
            let e = Settings::from_env(&env(pairs)).unwrap_err();
            assert_eq!(e.field, field, "{pairs:?}");
        }
        assert_eq!(
            addr(&[
                (ENV_METRICS_PORT, "0"),
                (ENV_PORT, "0"),
                (ENV_HTTP_PORT, "0")
            ])
            .port(),
            0,
            "any free port, for tests"
        );
    }

    #[test]
    fn logs_are_json_unless_the_environment_is_development() {
        let logging = |pairs: &[(&str, &str)]| Settings::from_env(&env(pairs)).unwrap().logging;
        assert_eq!(
            logging(&[]),
            LogSettings {
                level: LogLevel::Info,
                json: false
            }
        );
        assert!(logging(&[(ENV_ENVIRONMENT, "production")]).json);
        assert!(logging(&[(ENV_ENVIRONMENT, "staging")]).json);
        assert!(!logging(&[(ENV_ENVIRONMENT, "Development")]).json);
        assert!(
            !logging(&[(ENV_ENVIRONMENT, "")]).json,
            "blank is the default"
        );
        assert!(logging(&[(ENV_LOG_JSON, "true")]).json);
        assert!(!logging(&[(ENV_LOG_JSON, "FALSE"), (ENV_ENVIRONMENT, "production")]).json);
        for (v, level) in [
            ("DEBUG", LogLevel::Debug),
            ("warning", LogLevel::Warn),
            ("Critical", LogLevel::Error),
            (" trace ", LogLevel::Trace),
        ] {
            assert_eq!(logging(&[(ENV_LOG_LEVEL, v)]).level, level, "{v}");
        }
        let file: FileConfig =
            toml::from_str("environment = \"production\"\n[logging]\nlevel = \"error\"\n").unwrap();
        let s = Settings::from_parts(file, &env(&[])).unwrap();
        assert_eq!(
            s.logging,
            LogSettings {
                level: LogLevel::Error,
                json: true
            }
        );
        let file: FileConfig = toml::from_str("[logging]\nlevel = \"noisy\"\n").unwrap();
        assert_eq!(
            Settings::from_parts(file, &env(&[])).unwrap_err().field,
            "logging.level"
        );
    }

    #[test]
    fn the_service_name_alias_is_honoured_and_the_prefixed_name_wins() {
        let s = Settings::from_env(&env(&[(ENV_SERVICE_NAME_ALIAS, "a")])).unwrap();
        assert_eq!(s.service_name.as_str(), "a");
        let s = Settings::from_env(&env(&[
            (ENV_SERVICE_NAME_ALIAS, "a"),
            (ENV_SERVICE_NAME, "b"),
        ]))
        .unwrap();
        assert_eq!(s.service_name.as_str(), "b");
        assert_eq!(s.claim_checks.audience.as_str(), "b");
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
        assert_eq!(upstream.url.as_str(), "https://executor:50052/");
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

    #[test]
    fn key_files_are_remembered_for_reload_and_an_absent_validation_key_file_means_no_key_yet() {
        let dir = std::env::temp_dir().join(format!("dws-config-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        let signing = dir.join("signing.pem");
        let validation = dir.join("validation.pem");
        std::fs::write(
            &signing,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let files = format!(
            "[self_signed_jwt]\nsigning_key_file = \"{}\"\nvalidation_key_file = \"{}\"\n",
            signing.display(),
            validation.display()
        );
        std::fs::write(&path, &files).unwrap();
        let s = Settings::load(Some(&path), &env(&[])).unwrap();
        assert_eq!(
            s.signing_key.unwrap().file.as_deref(),
            Some(signing.as_path())
        );
        assert!(s.validation_key.is_none());
        assert_eq!(
            s.absent_validation_key_file.as_deref(),
            Some(validation.as_path())
        );
        assert_eq!(
            s.reload_poll,
            Some(Duration::from_secs(DEFAULT_RELOAD_POLL_SECONDS))
        );
        // A validation key file that exists must hold a key.
        std::fs::write(&validation, "\n \n").unwrap();
        let e = Settings::load(Some(&path), &env(&[])).unwrap_err();
        assert_eq!(e.field, "self_signed_jwt.validation_key_file");
        // A signing key file must exist.
        std::fs::remove_file(&signing).unwrap();
        std::fs::remove_file(&validation).unwrap();
        let e = Settings::load(Some(&path), &env(&[])).unwrap_err();
        assert_eq!(e.field, "self_signed_jwt.signing_key_file");
        // A key from a variable has no file: it cannot change while the process runs.
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let s = Settings::from_env(&env(&[(ENV_SIGNING_KEY, key)])).unwrap();
        assert!(s.signing_key.unwrap().file.is_none());

        for (text, env_value, want) in [
            ("[reload]\npoll_seconds = 0\n", None, Ok(None)),
            ("[reload]\npoll_seconds = 60\n", None, Ok(Some(60))),
            ("[reload]\npoll_seconds = 60\n", Some("5"), Ok(Some(5))),
            (
                "[reload]\npoll_seconds = 3601\n",
                None,
                Err("reload.poll_seconds"),
            ),
            ("", Some("ten"), Err(ENV_RELOAD_POLL_SECONDS)),
        ] {
            std::fs::write(&path, text).unwrap();
            let vars: Vec<(&str, &str)> = env_value
                .map(|v| vec![(ENV_RELOAD_POLL_SECONDS, v)])
                .unwrap_or_default();
            let got = Settings::load(Some(&path), &env(&vars));
            match want {
                Ok(secs) => assert_eq!(
                    got.unwrap().reload_poll,
                    secs.map(Duration::from_secs),
                    "{text} {env_value:?}"
                ),
                Err(field) => assert_eq!(got.unwrap_err().field, field, "{text} {env_value:?}"),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn transport_limits_default_to_gitlabs_and_refuse_values_that_disable_a_protection() {
        let s = Settings::from_env(&env(&[])).unwrap();
        let l = s.transport;
        assert_eq!(l.max_header_list_bytes, 24 * 1024);
        assert_eq!(l.max_message_bytes, 4 * 1024 * 1024);
        assert_eq!(l.keepalive_interval, Duration::from_secs(20));
        assert_eq!(l.connections.handshake_timeout, Duration::from_secs(10));
        assert_eq!(l.open, OpenLimits::default());
        assert_eq!(s.shutdown_grace, Duration::from_secs(30));
        assert!(s.tls.is_none() && !s.http_tls);

        let dir = std::env::temp_dir().join(format!("dws-config-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        for (key, value) in [
            ("max_connections", "0"),
            ("max_connections", "1000001"),
            ("handshake_timeout_seconds", "0"),
            ("keepalive_interval_seconds", "0"),
            ("keepalive_timeout_seconds", "0"),
            ("max_reset_streams_per_connection", "0"),
            ("max_concurrent_streams", "0"),
            ("max_concurrent_streams", "4294967295"),
            ("unauthenticated_streams_per_connection", "0"),
            ("unauthenticated_streams_per_connection", "2000"),
            ("unauthenticated_streams", "0"),
            ("unauthenticated_max_message_bytes", "0"),
            ("unauthenticated_max_message_bytes", "4194304"),
            ("shutdown_grace_seconds", "86400"),
        ] {
            std::fs::write(&path, format!("[limits]\n{key} = {value}\n")).unwrap();
            let e = Settings::load(Some(&path), &env(&[])).unwrap_err();
            assert_eq!(e.field, format!("limits.{key}"), "{key} = {value}: {e}");
        }
        // The total of calls without a token cannot be below one connection's share.
        std::fs::write(
            &path,
            "[limits]\nunauthenticated_streams_per_connection = 8\nunauthenticated_streams = 4\n",
        )
        .unwrap();
        let e = Settings::load(Some(&path), &env(&[])).unwrap_err();
        assert_eq!(e.field, "limits.unauthenticated_streams");
        std::fs::write(
            &path,
            "[limits]\nmax_connections = 5\nhandshake_timeout_seconds = 2\nunauthenticated_streams_per_connection = 3\nshutdown_grace_seconds = 7\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path), &env(&[])).unwrap();
        assert_eq!(s.transport.connections.max_connections, 5);
        assert_eq!(
            s.transport.connections.handshake_timeout,
            Duration::from_secs(2)
        );
        assert_eq!(s.transport.open.per_connection, 3);
        assert_eq!(s.shutdown_grace, Duration::from_secs(7));
        // DUO_WORKFLOW_SHUTDOWN_GRACE_PERIOD_S wins over the file.
        let s = Settings::load(Some(&path), &env(&[(ENV_SHUTDOWN_GRACE_PERIOD, "2.5")])).unwrap();
        assert_eq!(s.shutdown_grace, Duration::from_millis(2500));
        for bad_value in ["", "-1", "ten", "NaN", "inf", "3601"] {
            let e =
                Settings::from_env(&env(&[(ENV_SHUTDOWN_GRACE_PERIOD, bad_value)])).unwrap_err();
            assert_eq!(e.field, ENV_SHUTDOWN_GRACE_PERIOD, "{bad_value:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_is_configured_by_its_variables_or_keys_and_each_problem_names_the_field() {
        let dir = std::env::temp_dir().join(format!("dws-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.to_str().unwrap().to_owned()
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_file, key_file) = (
            write("c.pem", &cert.pem()),
            write("k.pem", &key.serialize_pem()),
        );
        let junk = write("junk.pem", "junk");
        let other_key = write(
            "other.pem",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        let tls_env = |extra: &[(&str, &str)]| {
            let mut pairs = vec![
                (ENV_TLS_ENABLED, "true"),
                (ENV_TLS_CERT_FILE, cert_file.as_str()),
                (ENV_TLS_KEY_FILE, key_file.as_str()),
            ];
            pairs.extend_from_slice(extra);
            env(&pairs)
        };
        let s = Settings::from_env(&tls_env(&[])).unwrap();
        assert!(s.tls.as_ref().is_some_and(|t| !t.mutual()));
        let s = Settings::from_env(&tls_env(&[
            (ENV_TLS_CLIENT_CA_FILE, cert_file.as_str()),
            (ENV_HTTP_TLS_ENABLED, "true"),
        ]))
        .unwrap();
        assert!(s.tls.as_ref().is_some_and(|t| t.mutual()) && s.http_tls);
        // Off (or unset): the files are not read.
        let s = Settings::from_env(&env(&[
            (ENV_TLS_ENABLED, "FALSE"),
            (ENV_TLS_CERT_FILE, "/nowhere"),
        ]))
        .unwrap();
        assert!(s.tls.is_none());
        for (vars, field) in [
            (vec![(ENV_TLS_ENABLED, "yes")], ENV_TLS_ENABLED),
            (vec![(ENV_TLS_ENABLED, "true")], ENV_TLS_CERT_FILE),
            (
                vec![
                    (ENV_TLS_ENABLED, "true"),
                    (ENV_TLS_CERT_FILE, cert_file.as_str()),
                ],
                ENV_TLS_KEY_FILE,
            ),
            (vec![(ENV_HTTP_TLS_ENABLED, "true")], ENV_HTTP_TLS_ENABLED),
            (vec![(ENV_HTTP_TLS_ENABLED, "1")], ENV_HTTP_TLS_ENABLED),
        ] {
            let e = Settings::from_env(&env(&vars)).unwrap_err();
            assert_eq!(e.field, field, "{vars:?}: {e}");
        }
        for (extra, field) in [
            ((ENV_TLS_CERT_FILE, junk.as_str()), ENV_TLS_CERT_FILE),
            ((ENV_TLS_CERT_FILE, "/nowhere/c.pem"), ENV_TLS_CERT_FILE),
            ((ENV_TLS_KEY_FILE, junk.as_str()), ENV_TLS_KEY_FILE),
            ((ENV_TLS_KEY_FILE, other_key.as_str()), ENV_TLS_KEY_FILE),
            (
                (ENV_TLS_CLIENT_CA_FILE, junk.as_str()),
                ENV_TLS_CLIENT_CA_FILE,
            ),
        ] {
            let e = Settings::from_env(&tls_env(&[extra])).unwrap_err();
            assert_eq!(e.field, field, "{extra:?}: {e}");
        }
        // From the file, named by its keys.
        let config = dir.join("c.toml");
        std::fs::write(
            &config,
            format!("[tls]\nenabled = true\ncert_file = \"{cert_file}\"\nkey_file = \"{junk}\"\n"),
        )
        .unwrap();
        let e = Settings::load(Some(&config), &env(&[])).unwrap_err();
        assert_eq!(e.field, "tls.key_file", "{e}");
        std::fs::write(&config, "[tls]\nenabled = true\n").unwrap();
        let e = Settings::load(Some(&config), &env(&[])).unwrap_err();
        assert_eq!(e.field, "tls.cert_file", "{e}");
        std::fs::write(
            &config,
            format!("[tls]\nenabled = true\ncert_file = \"{cert_file}\"\nkey_file = \"{key_file}\"\n[http]\ntls_enabled = true\n"),
        )
        .unwrap();
        let s = Settings::load(Some(&config), &env(&[])).unwrap();
        assert!(s.tls.is_some() && s.http_tls);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
