//! `[tls]`: gRPC over TLS (GitLab's `DUO_WORKFLOW_TLS__*`), optionally mutual, and the published
//! keys over HTTPS with the same certificate.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use duo_workflow_adapters::transport::tls::TlsFile;
use duo_workflow_adapters::transport::{ReloadableTls, TlsFiles};
use serde::Deserialize;

use super::values::parse_bool;
use super::{bad, ConfigError};

pub const ENV_TLS_ENABLED: &str = "DUO_WORKFLOW_TLS__ENABLED";
pub const ENV_TLS_CERT_FILE: &str = "DUO_WORKFLOW_TLS__CERT_FILE";
pub const ENV_TLS_KEY_FILE: &str = "DUO_WORKFLOW_TLS__KEY_FILE";
/// Client certificates must chain to this CA bundle (mutual TLS); ours, not GitLab's.
pub const ENV_TLS_CLIENT_CA_FILE: &str = "DUO_WORKFLOW_TLS__CLIENT_CA_FILE";
/// The published-keys listener serves TLS too, with the same certificate; ours.
pub const ENV_HTTP_TLS_ENABLED: &str = "DUO_WORKFLOW_HTTP__TLS_ENABLED";

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

/// TLS: `DUO_WORKFLOW_TLS__*` or `[tls]`; each file named by the variable or key it came from.
pub(super) fn tls(
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

/// `DUO_WORKFLOW_HTTP__TLS_ENABLED` or `http.tls_enabled`: the published keys over HTTPS, which
/// needs the gRPC listener's TLS.
pub(super) fn http_tls(
    http_tls_enabled: Option<bool>,
    tls: &Option<Arc<ReloadableTls>>,
    env: &HashMap<String, String>,
) -> Result<bool, ConfigError> {
    let http_tls = match env.get(ENV_HTTP_TLS_ENABLED) {
        Some(v) => Some((ENV_HTTP_TLS_ENABLED, parse_bool(ENV_HTTP_TLS_ENABLED, v)?)),
        None => http_tls_enabled.map(|b| ("http.tls_enabled", b)),
    };
    Ok(match http_tls {
        Some((field, true)) if tls.is_none() => {
            return Err(bad(
                field,
                format!("needs TLS configured ({ENV_TLS_ENABLED} and its files)"),
            ))
        }
        Some((_, enabled)) => enabled,
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{test_env as env, Settings};

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
