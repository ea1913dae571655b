//! A static key source: an issuer's public keys from a JWKS document or PEM public keys, given
//! at start-up and, when they came from a file, read again on reload. No network at all.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use duo_workflow_domain::issuers::SourceIssuer;
use duo_workflow_domain::keys::{Algorithm, IssuerKey, KeySet};
use duo_workflow_domain::mapping::ClaimMapping;
use duo_workflow_domain::ports::{Clock, KeySource, SourceState};
use duo_workflow_domain::{Issuer, UnixTime};

use crate::jose::jwk::parse_jwks;
use crate::jose::keys::{KeyPolicy, PublicKey};
use crate::reload::{FileContents, Reloadable, Reloaded, Trigger, WatchedFiles};

/// How a key file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// A JWKS document (`{"keys": [...]}`).
    Jwks,
    /// PEM public keys; each key's `kid` is its RFC 7638 thumbprint.
    Pem,
}

/// The file a static source's keys come from, read again on reload.
#[derive(Debug, Clone)]
pub struct KeyFile {
    pub path: PathBuf,
    pub format: KeyFormat,
    pub policy: KeyPolicy,
}

/// The keys in use, swapped whole on reload.
struct Loaded {
    keys: Arc<KeySet<PublicKey>>,
    loaded_at: UnixTime,
    /// Why the last reload kept these keys, until one succeeds.
    failure: Option<String>,
}

struct Watch {
    file: KeyFile,
    files: WatchedFiles,
    clock: Arc<dyn Clock>,
}

pub struct StaticKeySource {
    name: String,
    issuer: Issuer,
    algorithms: Vec<Algorithm>,
    claims: ClaimMapping,
    loaded: RwLock<Arc<Loaded>>,
    watch: Option<Watch>,
}

impl StaticKeySource {
    /// A source serving `keys`. `algorithms` empty means every supported algorithm: each key
    /// still verifies only those of its kind (and its JWK's `alg`), and a reload may bring keys
    /// of another kind.
    pub fn new(
        name: impl Into<String>,
        issuer: Issuer,
        algorithms: Vec<Algorithm>,
        keys: Vec<IssuerKey<PublicKey>>,
        loaded_at: UnixTime,
    ) -> Result<Self, String> {
        let name = name.into();
        let algorithms = if algorithms.is_empty() {
            Algorithm::ALL.to_vec()
        } else {
            algorithms
        };
        let keys = key_set(&name, &issuer, &algorithms, keys)?;
        Ok(Self {
            name,
            issuer,
            algorithms,
            claims: ClaimMapping::default(),
            loaded: RwLock::new(Arc::new(Loaded {
                keys,
                loaded_at,
                failure: None,
            })),
            watch: None,
        })
    }

    /// Keys from a JWKS document; unusable, weak or refused entries are dropped with a warning.
    pub fn from_jwks(
        name: impl Into<String>,
        issuer: Issuer,
        algorithms: Vec<Algorithm>,
        jwks: &[u8],
        policy: KeyPolicy,
        loaded_at: UnixTime,
    ) -> Result<Self, String> {
        let name = name.into();
        let keys = parse_keys(&name, &issuer, KeyFormat::Jwks, policy, jwks)?;
        Self::new(name, issuer, algorithms, keys, loaded_at)
    }

    /// Keys from PEM public keys; each key's `kid` is its RFC 7638 thumbprint.
    pub fn from_pem(
        name: impl Into<String>,
        issuer: Issuer,
        algorithms: Vec<Algorithm>,
        pem: &str,
        policy: KeyPolicy,
        loaded_at: UnixTime,
    ) -> Result<Self, String> {
        let name = name.into();
        let keys = parse_keys(&name, &issuer, KeyFormat::Pem, policy, pem.as_bytes())?;
        Self::new(name, issuer, algorithms, keys, loaded_at)
    }

    /// Keys from `file`, whose contents at start-up are `contents`; [`Reloadable::reload`]
    /// reads the file again.
    pub fn from_file(
        name: impl Into<String>,
        issuer: Issuer,
        algorithms: Vec<Algorithm>,
        file: KeyFile,
        contents: &[u8],
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        let name = name.into();
        let keys = parse_keys(&name, &issuer, file.format, file.policy, contents)?;
        let mut source = Self::new(name, issuer, algorithms, keys, clock.now())?;
        let files = WatchedFiles::new(vec![file.path.clone()]);
        files.seen(&[FileContents::Read(contents.to_vec())]);
        source.watch = Some(Watch { file, files, clock });
        Ok(source)
    }

    /// This source's tokens are read with `claims` (default: GitLab's shape).
    pub fn with_claim_mapping(mut self, claims: ClaimMapping) -> Self {
        self.claims = claims;
        self
    }

    /// Swaps in new keys (the local authority's, on its reload). An empty list keeps the
    /// current keys.
    pub(crate) fn replace(
        &self,
        keys: Vec<IssuerKey<PublicKey>>,
        at: UnixTime,
    ) -> Result<(), String> {
        let keys = key_set(&self.name, &self.issuer, &self.algorithms, keys)?;
        *self.loaded.write().expect("not poisoned") = Arc::new(Loaded {
            keys,
            loaded_at: at,
            failure: None,
        });
        Ok(())
    }

    /// Keeps the current keys, and shows in the source's state why a reload did not replace
    /// them.
    pub(crate) fn keep_after_failure(&self, why: String) {
        let mut loaded = self.loaded.write().expect("not poisoned");
        *loaded = Arc::new(Loaded {
            keys: loaded.keys.clone(),
            loaded_at: loaded.loaded_at,
            failure: Some(why),
        });
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.loaded.read().expect("not poisoned").clone()
    }

    pub fn current_kids(&self) -> Vec<String> {
        self.loaded()
            .keys
            .kids()
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// Whether the keys come from a file that reloads.
    pub fn reloads(&self) -> bool {
        self.watch.is_some()
    }
}

/// The key set of `keys`, each narrowed to the algorithms the source allows.
fn key_set(
    name: &str,
    issuer: &Issuer,
    algorithms: &[Algorithm],
    keys: Vec<IssuerKey<PublicKey>>,
) -> Result<Arc<KeySet<PublicKey>>, String> {
    let (keys, refused) = super::allowed_keys(keys, algorithms);
    super::report_dropped(name, issuer, &refused);
    if keys.is_empty() {
        return Err("no usable key".into());
    }
    let (set, report) = KeySet::new(keys);
    super::report_load(name, issuer, &report);
    Ok(Arc::new(set))
}

/// The usable keys of a document; what was dropped (unusable, weak, refused) is logged.
fn parse_keys(
    name: &str,
    issuer: &Issuer,
    format: KeyFormat,
    policy: KeyPolicy,
    contents: &[u8],
) -> Result<Vec<IssuerKey<PublicKey>>, String> {
    let (keys, dropped) = match format {
        KeyFormat::Jwks => {
            let parsed = parse_jwks(contents, policy)?;
            (parsed.keys, parsed.dropped)
        }
        KeyFormat::Pem => {
            let text = std::str::from_utf8(contents).map_err(|_| "is not UTF-8 text")?;
            let mut keys = Vec::new();
            let mut dropped = Vec::new();
            for (i, key) in PublicKey::from_pem_each(text)?.into_iter().enumerate() {
                match key.and_then(|k| k.check(policy).map(|()| k)) {
                    Ok(key) => keys.push(key.into_issuer_key(None)),
                    Err(why) => dropped.push(format!("PEM block #{i}: {why}")),
                }
            }
            (keys, dropped)
        }
    };
    super::report_dropped(name, issuer, &dropped);
    Ok(keys)
}

impl Reloadable for StaticKeySource {
    fn name(&self) -> &str {
        &self.name
    }

    fn reload(&self, _: Trigger) -> Reloaded {
        let Some(watch) = &self.watch else {
            return Reloaded::Unchanged;
        };
        let Some(contents) = watch.files.read_if_changed() else {
            return Reloaded::Unchanged;
        };
        let path = &watch.file.path;
        let loaded = contents[0].bytes(path).and_then(|bytes| {
            let keys = parse_keys(
                &self.name,
                &self.issuer,
                watch.file.format,
                watch.file.policy,
                bytes,
            )?;
            self.replace(keys, watch.clock.now())
        });
        match loaded {
            Ok(()) => Reloaded::Changed(format!("kids {:?}", self.current_kids())),
            Err(why) => {
                let why = format!("{}: {why}", path.display());
                self.keep_after_failure(why.clone());
                Reloaded::Failed(why)
            }
        }
    }
}

impl KeySource<PublicKey> for StaticKeySource {
    fn name(&self) -> &str {
        &self.name
    }

    fn issuer(&self) -> SourceIssuer<'_> {
        SourceIssuer::Fixed(&self.issuer)
    }

    fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    fn claim_mapping(&self) -> &ClaimMapping {
        &self.claims
    }

    fn current(&self) -> Option<Arc<KeySet<PublicKey>>> {
        Some(self.loaded().keys.clone())
    }

    fn state(&self) -> SourceState {
        let loaded = self.loaded();
        match &loaded.failure {
            None => SourceState::Ready {
                keys: loaded.keys.len(),
                loaded_at: loaded.loaded_at,
            },
            Some(reason) => SourceState::Stale {
                keys: loaded.keys.len(),
                loaded_at: loaded.loaded_at,
                reason: format!("reload failed, previous keys kept: {reason}"),
            },
        }
    }
}
