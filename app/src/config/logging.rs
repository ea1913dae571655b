//! How the service logs: `[logging]`, the top-level `environment`, and GitLab's variables for them.

use std::collections::HashMap;

use serde::Deserialize;

use super::values::parse_bool;
use super::{bad, ConfigError, FileConfig};

pub const ENV_LOG_LEVEL: &str = "DUO_WORKFLOW_LOGGING__LEVEL";
pub const ENV_LOG_JSON: &str = "DUO_WORKFLOW_LOGGING__JSON_FORMAT";
/// `development` (the default) logs text lines unless JSON is asked for; anything else, JSON.
pub const ENV_ENVIRONMENT: &str = "DUO_WORKFLOW_SERVICE_ENVIRONMENT";
pub const DEFAULT_ENVIRONMENT: &str = "development";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    /// `trace`, `debug`, `info`, `warn` (`warning`), `error` (`critical`).
    pub level: Option<String>,
    /// One JSON object per line; default: JSON unless the environment is `development`.
    pub json_format: Option<bool>,
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

/// The log level and format: the environment, then the file, then the defaults (`info`; JSON
/// unless the environment is `development`, its default, as GitLab's service does).
pub(super) fn log_settings(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{test_env as env, Settings};

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
}
