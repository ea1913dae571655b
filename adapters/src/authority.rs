//! The local-key authority: signs user tokens with its signing key (SPEC "The user token minted by
//! `GenerateToken`"), and provides the key source for its own issuer, the service name: a static
//! source of the public halves of the signing key and of the optional validation key (the
//! previous signing key, kept during rotation). When the keys come from files, [`AuthorityFiles`]
//! reads them again on reload and swaps the pair at once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use duo_workflow_domain::keys::{Algorithm, IssuerKey};
use duo_workflow_domain::ports::{Clock, IssueError, TokenIssuer};
use duo_workflow_domain::user_token::{UserToken, UserTokenGrant};
use duo_workflow_domain::{Issuer, ServiceName, UnixTime};
use serde_json::{json, Map, Value};

use crate::jose::keys::PublicKey;
use crate::jose::signing::SigningKey;
use crate::jose::token;
use crate::reload::{FileContents, Reading, Reloadable, Reloaded, Trigger, WatchedFiles};
use crate::sources::StaticKeySource;

/// The name of the authority's key source in logs and readiness.
pub const KEY_SOURCE_NAME: &str = "local-authority";

/// The authority's keys, replaced together: a token is signed with the signing key of one pair,
/// and the published JWKS is always the one of the pair in use.
pub struct AuthorityKeys {
    signing: Arc<SigningKey>,
    validation: Option<Arc<SigningKey>>,
    /// The public halves as a JWKS document, rendered once per pair.
    jwks: Bytes,
}

impl AuthorityKeys {
    /// A validation key equal to the signing key is dropped (one key, listed once).
    pub fn new(signing: Arc<SigningKey>, validation: Option<Arc<SigningKey>>) -> Self {
        let validation = validation.filter(|v| v.kid() != signing.kid());
        let keys: Vec<Value> = std::iter::once(&signing)
            .chain(validation.iter())
            .map(|k| k.jwk())
            .collect();
        let jwks = Bytes::from(serde_json::to_vec(&json!({ "keys": keys })).expect("JSON"));
        Self {
            signing,
            validation,
            jwks,
        }
    }

    pub fn signing(&self) -> &SigningKey {
        &self.signing
    }

    pub fn validation(&self) -> Option<&SigningKey> {
        self.validation.as_deref()
    }

    /// The public keys as a JWKS document, for publishing.
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    /// The algorithms of the keys, the signing key's first.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        let mut algs = vec![self.signing.algorithm()];
        if let Some(v) = &self.validation {
            if !algs.contains(&v.algorithm()) {
                algs.push(v.algorithm());
            }
        }
        algs
    }

    /// The key ids of the pair, the signing key's first.
    fn kids(&self) -> Vec<&str> {
        std::iter::once(self.signing.kid())
            .chain(self.validation.as_ref().map(|v| v.kid()))
            .collect()
    }

    fn describe(&self) -> String {
        format!(
            "signing kid {} ({}), validation kid {}",
            self.signing.kid(),
            self.signing.algorithm(),
            self.validation.as_ref().map_or("none", |v| v.kid())
        )
    }
}

pub struct LocalAuthority {
    issuer: Issuer,
    keys: RwLock<Arc<AuthorityKeys>>,
    key_source: Arc<StaticKeySource>,
}

impl LocalAuthority {
    pub fn new(
        service: &ServiceName,
        signing: SigningKey,
        validation: Option<SigningKey>,
        loaded_at: UnixTime,
    ) -> Self {
        let keys = AuthorityKeys::new(Arc::new(signing), validation.map(Arc::new));
        // Every algorithm: a reload may bring a key of another one, and each key verifies
        // only its own.
        let key_source = StaticKeySource::new(
            KEY_SOURCE_NAME,
            service.as_issuer(),
            vec![],
            public_keys(&keys),
            loaded_at,
        )
        .expect("the signing key is a usable key");
        Self {
            issuer: service.as_issuer(),
            keys: RwLock::new(Arc::new(keys)),
            key_source: Arc::new(key_source),
        }
    }

    /// The key source of the service's own issuer: the signing and validation public keys.
    pub fn key_source(&self) -> Arc<StaticKeySource> {
        self.key_source.clone()
    }

    /// The issuer of user tokens: the service name.
    pub fn issuer_name(&self) -> &str {
        self.issuer.as_str()
    }

    /// The keys in use now.
    pub fn keys(&self) -> Arc<AuthorityKeys> {
        self.keys.read().expect("not poisoned").clone()
    }

    /// Swaps in a new pair: tokens are signed with the new signing key from now on, and tokens
    /// of either new key verify. Calls under way finish with the pair they started with.
    pub fn replace(&self, keys: AuthorityKeys, at: UnixTime) {
        let mut current = self.keys.write().expect("not poisoned");
        self.key_source
            .replace(public_keys(&keys), at)
            .expect("a signing key is a usable key");
        *current = Arc::new(keys);
    }

    /// The claims of a user token (SPEC): `iss` = `aud` = service name, `iat` = `nbf` = now.
    pub fn user_token_claims(grant: &UserTokenGrant, jti: &str) -> Value {
        let mut c = Map::new();
        c.insert("iss".into(), json!(grant.service.as_str()));
        c.insert("aud".into(), json!(grant.service.as_str()));
        c.insert("sub".into(), json!(grant.subject));
        c.insert("iat".into(), json!(grant.issued_at.as_secs()));
        c.insert("nbf".into(), json!(grant.issued_at.as_secs()));
        c.insert("exp".into(), json!(grant.expires_at.as_secs()));
        c.insert("jti".into(), json!(jti));
        if let Some(realm) = &grant.realm {
            c.insert("gitlab_realm".into(), json!(realm));
        }
        if let Some(instance) = &grant.instance_id {
            c.insert("gitlab_instance_id".into(), json!(instance));
        }
        let scopes: Vec<&str> = grant.scopes.iter().map(|s| s.as_str()).collect();
        c.insert("scopes".into(), json!(scopes));
        if let Some(seats) = &grant.duo_seat_count {
            c.insert("duo_seat_count".into(), json!(seats));
        }
        for copied in &grant.copied {
            // The text was written by serde_json from a parsed value, so it parses back.
            if let Ok(value) = serde_json::from_str::<Value>(copied.value.as_str()) {
                c.insert(copied.name.into(), value);
            }
        }
        Value::Object(c)
    }
}

#[async_trait]
impl TokenIssuer for LocalAuthority {
    async fn issue(&self, grant: &UserTokenGrant) -> Result<UserToken, IssueError> {
        if grant.service.as_str() != self.issuer.as_str() {
            return Err(IssueError(format!(
                "grant for {} but this authority is {}",
                grant.service, self.issuer
            )));
        }
        let jti = uuid::Uuid::new_v4().to_string();
        let claims = Self::user_token_claims(grant, &jti);
        Ok(UserToken {
            token: token::sign(self.keys().signing(), &claims, true),
            expires_at: grant.expires_at,
        })
    }
}

/// The public halves of the pair, for the authority's key source.
fn public_keys(keys: &AuthorityKeys) -> Vec<IssuerKey<PublicKey>> {
    std::iter::once(keys.signing())
        .chain(keys.validation())
        .map(|k| k.issuer_key())
        .collect()
}

/// The authority's key files, read again on reload. A key given any other way (a variable,
/// inline in the configuration, generated) stays as it is.
///
/// The signing key file must always hold a key. A validation key file that does not exist means
/// "no validation key" (the last step of a rotation removes it, e.g. from a Kubernetes Secret);
/// one that exists must hold a key.
///
/// Two files cannot be replaced at once outside a Kubernetes Secret: a poll can find the new
/// signing key beside the old validation file (or the reverse), a pair that drops a key the
/// other replicas still sign with, so good tokens would be refused until the second file
/// arrives. A change a poll notices that removes a key in use therefore waits: it is applied
/// when the next poll finds the files the same, or at once on SIGHUP. Adding keys (steps 1 and 2
/// of a rotation) is never held; removing the old one (step 3) takes one poll interval more.
pub struct AuthorityFiles {
    authority: Arc<LocalAuthority>,
    signing: Option<PathBuf>,
    validation: Option<PathBuf>,
    files: WatchedFiles,
    /// A pair read by a poll that removes keys in use, waiting for the next poll.
    held: Mutex<Option<AuthorityKeys>>,
    clock: Arc<dyn Clock>,
}

impl AuthorityFiles {
    /// `signing` and `validation`: each key's file, with what it held when the authority was
    /// built (`None` for a validation key file that did not exist). `None` when neither key
    /// comes from a file.
    pub fn new(
        authority: Arc<LocalAuthority>,
        signing: Option<(PathBuf, &str)>,
        validation: Option<(PathBuf, Option<&str>)>,
        clock: Arc<dyn Clock>,
    ) -> Option<Self> {
        if signing.is_none() && validation.is_none() {
            return None;
        }
        let mut seen = Vec::new();
        if let Some((_, pem)) = &signing {
            seen.push(FileContents::Read(pem.as_bytes().to_vec()));
        }
        if let Some((_, pem)) = &validation {
            seen.push(pem.map_or(FileContents::Missing, |p| {
                FileContents::Read(p.as_bytes().to_vec())
            }));
        }
        let signing = signing.map(|(path, _)| path);
        let validation = validation.map(|(path, _)| path);
        let files = WatchedFiles::new(signing.iter().chain(validation.iter()).cloned().collect());
        files.seen(&seen);
        Some(Self {
            authority,
            signing,
            validation,
            files,
            held: Mutex::new(None),
            clock,
        })
    }

    fn apply(&self, keys: AuthorityKeys) -> Reloaded {
        let described = keys.describe();
        self.authority.replace(keys, self.clock.now());
        Reloaded::Changed(described)
    }

    /// The pair the files hold now, the keys not from files as they are.
    fn load(&self, contents: &[FileContents]) -> Result<AuthorityKeys, String> {
        let current = self.authority.keys();
        let mut contents = contents.iter();
        let signing = match &self.signing {
            Some(path) => {
                let pem = contents.next().expect("one read per file").bytes(path)?;
                Arc::new(private_key(path, pem)?)
            }
            None => current.signing.clone(),
        };
        let validation = match &self.validation {
            Some(path) => match contents.next().expect("one read per file") {
                FileContents::Missing => None,
                read => Some(Arc::new(private_key(path, read.bytes(path)?)?)),
            },
            None => current.validation.clone(),
        };
        Ok(AuthorityKeys::new(signing, validation))
    }
}

/// A private key from a file's bytes; a file of only whitespace is refused, not read as "none".
fn private_key(path: &std::path::Path, pem: &[u8]) -> Result<SigningKey, String> {
    let text = std::str::from_utf8(pem)
        .map_err(|_| format!("{} is not UTF-8 PEM text", path.display()))?;
    if text.trim().is_empty() {
        return Err(format!("{} holds no key", path.display()));
    }
    SigningKey::from_pem(text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Reloadable for AuthorityFiles {
    fn name(&self) -> &str {
        KEY_SOURCE_NAME
    }

    fn reload(&self, trigger: Trigger) -> Reloaded {
        let mut held = self.held.lock().expect("not poisoned");
        let contents = match self.files.read() {
            // The files still hold the pair a poll held back: now it is what they mean.
            Reading::Same => {
                return match held.take() {
                    Some(keys) => self.apply(keys),
                    None => Reloaded::Unchanged,
                }
            }
            Reading::Settling => return Reloaded::Unchanged,
            Reading::Changed(contents) => contents,
        };
        *held = None; // the files moved on since
        match self.load(&contents) {
            Ok(keys) => {
                let in_use = self.authority.keys();
                let next = keys.kids();
                let removed: Vec<&str> = in_use
                    .kids()
                    .into_iter()
                    .filter(|kid| !next.contains(kid))
                    .collect();
                if trigger == Trigger::Poll && !removed.is_empty() {
                    let why = format!(
                        "the files now hold {} and would remove kid {}: held until the next poll \
                         finds them the same, or a SIGHUP (a pair replaced one file at a time \
                         must not refuse tokens signed with the key it replaces)",
                        keys.describe(),
                        removed.join(", ")
                    );
                    *held = Some(keys);
                    return Reloaded::Held(why);
                }
                self.apply(keys)
            }
            Err(why) => {
                self.authority.key_source.keep_after_failure(why.clone());
                Reloaded::Failed(why)
            }
        }
    }
}
