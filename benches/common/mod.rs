//! What the whole-service benches share: the seconds per figure from the command line, an RS256
//! issuer whose public key the service loads from a static JWKS file, instance tokens minted
//! with it, the metadata a GitLab instance sends, and settings without network key sources.
#![allow(dead_code)] // each bench uses its own part

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use duo_workflow_adapters::jose::signing::{generate_pem, SigningKey};
use duo_workflow_domain::keys::Algorithm;
use duo_workflow_service::cli::{mint, MintRequest};
use duo_workflow_service::config::Settings;
use tonic::metadata::{MetadataMap, MetadataValue};

pub const ISSUER: &str = "https://gitlab.test";
pub const REALM: &str = "saas";
pub const INSTANCE_ID: &str = "instance-1";

/// The seconds per figure: the first command-line argument that is a number (cargo adds
/// `--bench` after the bench's own arguments), else `default`.
pub fn seconds_per_figure(default: f64) -> Duration {
    let seconds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(default);
    Duration::from_secs_f64(seconds)
}

/// An RS256 instance-token issuer (like a GitLab instance) and a scratch folder holding its
/// JWKS and the service's configuration files; the folder is removed on drop.
pub struct Issuer {
    pub key: SigningKey,
    pub dir: PathBuf,
    pub jwks: PathBuf,
}

impl Issuer {
    pub fn new(bench: &str) -> Self {
        let key = SigningKey::from_pem(&generate_pem(Algorithm::RS256).unwrap()).unwrap();
        let dir = std::env::temp_dir().join(format!("dws-bench-{bench}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let jwks = dir.join("keys.jwks");
        std::fs::write(&jwks, serde_json::json!({"keys": [key.jwk()]}).to_string()).unwrap();
        Self { key, dir, jwks }
    }

    /// An instance token of this issuer for the service, with `scopes`.
    pub fn token(&self, scopes: &[&str], duo_seat_count: Option<String>, with_kid: bool) -> String {
        mint(
            &self.key,
            &MintRequest {
                issuer: ISSUER.into(),
                audience: vec![duo_workflow_domain::ServiceName::DEFAULT.into()],
                subject: None,
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                realm: Some(REALM.into()),
                instance_id: Some(INSTANCE_ID.into()),
                duo_seat_count,
                lifetime_seconds: 3600,
                with_kid,
            },
        )
    }

    /// Writes a configuration file: `toml`, then the static key source of this issuer.
    pub fn config(&self, name: &str, toml: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(
            &path,
            format!(
                "{toml}\n[[key_sources]]\ntype = \"static\"\nname = \"gitlab\"\nissuer = \"{ISSUER}\"\njwks_file = \"{}\"\n",
                self.jwks.display()
            ),
        )
        .unwrap();
        path
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Settings from `config`, with the built-in OIDC sources (network) turned off.
pub fn settings(config: &Path) -> Settings {
    let env: HashMap<String, String> = [
        ("DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL", ""),
        ("DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL", ""),
        ("PROMETHEUS_METRICS__PORT", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into()))
    .collect();
    Settings::load(Some(config), &env).unwrap()
}

/// The metadata an instance sends with its token.
pub fn authorize(md: &mut MetadataMap, token: &str) {
    md.insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    md.insert(
        "x-gitlab-authentication-type",
        MetadataValue::from_static("oidc"),
    );
    md.insert("x-gitlab-realm", MetadataValue::from_static(REALM));
    md.insert(
        "x-gitlab-instance-id",
        MetadataValue::from_static(INSTANCE_ID),
    );
}
