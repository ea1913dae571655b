//! `[self_signed_jwt]`: the local authority's signing and validation keys, from GitLab's
//! variables, inline text or files (files are read again on reload).

use std::collections::HashMap;
use std::path::PathBuf;

use duo_workflow_adapters::reload::FileContents;
use serde::Deserialize;

use super::{bad, ConfigError};

pub const ENV_SIGNING_KEY: &str = "DUO_WORKFLOW_SELF_SIGNED_JWT__SIGNING_KEY";
pub const ENV_VALIDATION_KEY: &str = "DUO_WORKFLOW_SELF_SIGNED_JWT__VALIDATION_KEY";

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

/// The authority's keys as configured.
pub(super) struct AuthorityKeys {
    pub signing_key: Option<SecretPem>,
    pub validation_key: Option<SecretPem>,
    /// A validation key file that is named but does not exist: no validation key until one
    /// appears there (the last step of a rotation removes it).
    pub absent_validation_key_file: Option<PathBuf>,
}

/// The signing key (none: an ephemeral one is generated) and the validation key.
pub(super) fn authority_keys(
    section: SelfSignedJwtSection,
    env: &HashMap<String, String>,
) -> Result<AuthorityKeys, ConfigError> {
    let get = |name: &str| env.get(name).map(String::as_str);
    let signing_key = match secret(
        (ENV_SIGNING_KEY, get(ENV_SIGNING_KEY)),
        ("self_signed_jwt.signing_key", section.signing_key),
        ("self_signed_jwt.signing_key_file", section.signing_key_file),
        AbsentFile::Refused,
    )? {
        Secret::Key(key) => Some(key),
        Secret::None | Secret::AbsentFile(_) => None,
    };
    let validation_key = secret(
        (ENV_VALIDATION_KEY, get(ENV_VALIDATION_KEY)),
        ("self_signed_jwt.validation_key", section.validation_key),
        (
            "self_signed_jwt.validation_key_file",
            section.validation_key_file,
        ),
        AbsentFile::NoKey,
    )?;
    let (validation_key, absent_validation_key_file) = match validation_key {
        Secret::Key(key) => (Some(key), None),
        Secret::None => (None, None),
        Secret::AbsentFile(path) => (None, Some(path)),
    };
    Ok(AuthorityKeys {
        signing_key,
        validation_key,
        absent_validation_key_file,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{test_env as env, Settings};

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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
