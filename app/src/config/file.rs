//! The configuration file's schema: its top-level keys and sections. Each section is defined,
//! and read, in the file of its concern.

use serde::Deserialize;

use super::auth::AuthSection;
use super::authority::SelfSignedJwtSection;
use super::key_sources::KeySourceConfig;
use super::limits::LimitsSection;
use super::logging::LoggingSection;
use super::service::{HttpSection, MetricsSection, ReloadSection, UserTokensSection};
use super::tls::TlsSection;
use super::upstream::UpstreamSection;

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
