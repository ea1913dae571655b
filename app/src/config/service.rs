//! The service as a whole: its listeners (gRPC, published keys, operator), its name, gRPC
//! reflection, what user tokens may carry, and how often files are read again; GitLab's
//! variables for them (SPEC A, C5) and ours beside them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use duo_workflow_domain::policy::Delegation;
use duo_workflow_domain::{ServiceName, UnitPrimitive};
use serde::Deserialize;

use super::values::{base_url, comma_list, names, parse_bool, parse_ip, parse_port};
use super::{bad, ConfigError, FileConfig};

pub const ENV_PORT: &str = "PORT";
pub const ENV_HTTP_PORT: &str = "DUO_WORKFLOW_HTTP__PORT";
pub const ENV_SERVICE_NAME: &str = "DUO_WORKFLOW_CLOUD_CONNECTOR_SERVICE_NAME";
pub const ENV_SERVICE_NAME_ALIAS: &str = "CLOUD_CONNECTOR_SERVICE_NAME";
pub const ENV_CLIENT_TOKEN: &str = "DUO_WORKFLOW_CLIENT_TOKEN";
pub const ENV_DELEGABLE_SCOPES: &str = "DUO_WORKFLOW_USER_TOKENS__DELEGABLE_SCOPES";
pub const ENV_GRPC_REFLECTION_ENABLED: &str = "DUO_WORKFLOW_GRPC_REFLECTION_ENABLED";
/// The operator listener (`/metrics`, `/key-sources`): GitLab's names for its metrics server.
pub const ENV_METRICS_ADDR: &str = "PROMETHEUS_METRICS__ADDR";
pub const ENV_METRICS_PORT: &str = "PROMETHEUS_METRICS__PORT";
/// How often key and certificate files are checked for new contents; 0: only on SIGHUP. Ours.
pub const ENV_RELOAD_POLL_SECONDS: &str = "DUO_WORKFLOW_RELOAD__POLL_SECONDS";

pub const DEFAULT_PORT: u16 = 50052;
pub const DEFAULT_HTTP_PORT: u16 = 50053;
/// Loopback: operator pages are not public unless an operator says so (checklist 31).
pub const DEFAULT_METRICS_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const DEFAULT_METRICS_PORT: u16 = 50054;
/// A Kubernetes Secret update reaches a pod's files within about a minute; ten seconds more
/// is little next to that, and reading a few small files that often costs nothing.
pub const DEFAULT_RELOAD_POLL_SECONDS: u64 = 10;

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
pub struct HttpSection {
    /// The URL under which the published keys are reachable, e.g. `https://dws.example.com`;
    /// by default derived from each request's `Host`.
    pub public_url: Option<String>,
    /// Serve the published keys over TLS, with the `[tls]` certificate (no client certificates).
    pub tls_enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserTokensSection {
    /// The unit primitives a user token may carry (those of the caller's among them).
    pub delegable_scopes: Option<Vec<String>>,
}

/// The ports of the gRPC and published-keys listeners, and the operator listener's address.
pub(super) fn listeners(
    file: &FileConfig,
    env: &HashMap<String, String>,
) -> Result<(u16, u16, SocketAddr), ConfigError> {
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
    Ok((port, http_port, metrics_addr))
}

/// The audience every token must name, and the issuer and audience of user tokens.
pub(super) fn service_name(
    file: &FileConfig,
    env: &HashMap<String, String>,
) -> Result<ServiceName, ConfigError> {
    let get = |name: &str| env.get(name).map(String::as_str);
    let (service_field, service_name) = match (get(ENV_SERVICE_NAME), get(ENV_SERVICE_NAME_ALIAS)) {
        (Some(v), _) => (ENV_SERVICE_NAME, v.to_owned()),
        (None, Some(v)) => (ENV_SERVICE_NAME_ALIAS, v.to_owned()),
        (None, None) => (
            "service_name",
            file.service_name
                .clone()
                .unwrap_or_else(|| ServiceName::DEFAULT.into()),
        ),
    };
    if service_name.trim().is_empty() || service_name.trim() != service_name {
        return Err(bad(
            service_field,
            "must be a non-empty name without surrounding spaces",
        ));
    }
    Ok(ServiceName::new(service_name))
}

/// How often files are checked for new contents (`None`: only on SIGHUP).
pub(super) fn reload_poll(
    file: &ReloadSection,
    env: &HashMap<String, String>,
) -> Result<Option<Duration>, ConfigError> {
    let reload_poll = match env.get(ENV_RELOAD_POLL_SECONDS) {
        Some(v) => Some((
            ENV_RELOAD_POLL_SECONDS,
            v.trim().parse::<u64>().map_err(|_| {
                bad(
                    ENV_RELOAD_POLL_SECONDS,
                    format!("{v:?} is not a whole number of seconds"),
                )
            })?,
        )),
        None => file.poll_seconds.map(|s| ("reload.poll_seconds", s)),
    };
    Ok(match reload_poll {
        Some((field, s)) if s > 3600 => {
            return Err(bad(field, "must be at most 3600 (0: only on SIGHUP)"))
        }
        Some((_, 0)) => None,
        Some((_, s)) => Some(Duration::from_secs(s)),
        None => Some(Duration::from_secs(DEFAULT_RELOAD_POLL_SECONDS)),
    })
}

/// gRPC reflection, served without a token; off by default.
pub(super) fn reflection(
    file_value: Option<bool>,
    env: &HashMap<String, String>,
) -> Result<bool, ConfigError> {
    match env.get(ENV_GRPC_REFLECTION_ENABLED) {
        Some(v) => parse_bool(ENV_GRPC_REFLECTION_ENABLED, v),
        None => Ok(file_value.unwrap_or(false)),
    }
}

/// The unit primitives user tokens may carry.
pub(super) fn delegation(
    file: &UserTokensSection,
    env: &HashMap<String, String>,
) -> Result<Delegation, ConfigError> {
    let delegation = match env.get(ENV_DELEGABLE_SCOPES) {
        Some(v) => Some((ENV_DELEGABLE_SCOPES, comma_list(v))),
        None => file
            .delegable_scopes
            .clone()
            .map(|list| ("user_tokens.delegable_scopes", list)),
    };
    Ok(match delegation {
        None => Delegation::default(),
        Some((field, list)) => {
            let list = names(field, &list)?;
            if list.is_empty() {
                return Err(bad(field, "must name at least one unit primitive"));
            }
            Delegation::new(list.into_iter().map(UnitPrimitive::new).collect())
        }
    })
}

/// The base of the published `jwks_uri`; `None`: from each request's `Host`.
pub(super) fn http_public_url(http: &HttpSection) -> Result<Option<String>, ConfigError> {
    match &http.public_url {
        None => Ok(None),
        Some(u) => Ok(Some(base_url("http.public_url", u)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{test_env as env, Settings};

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
    fn files_are_polled_every_ten_seconds_unless_configured() {
        let dir = std::env::temp_dir().join(format!("dws-config-poll-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        assert_eq!(
            Settings::from_env(&env(&[])).unwrap().reload_poll,
            Some(Duration::from_secs(DEFAULT_RELOAD_POLL_SECONDS))
        );
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
}
