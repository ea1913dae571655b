//! A static key source: an issuer's public keys from a JWKS document or PEM public keys, loaded
//! once at start-up. No network at all.

use std::sync::Arc;

use duo_workflow_domain::issuers::SourceIssuer;
use duo_workflow_domain::keys::{Algorithm, IssuerKey, KeySet};
use duo_workflow_domain::ports::{KeySource, SourceState};
use duo_workflow_domain::{Issuer, UnixTime};

use crate::jose::jwk::parse_jwks;
use crate::jose::keys::PublicKey;

pub struct StaticKeySource {
    name: String,
    issuer: Issuer,
    algorithms: Vec<Algorithm>,
    keys: Arc<KeySet<PublicKey>>,
    loaded_at: UnixTime,
}

impl StaticKeySource {
    /// A source serving `keys`. `algorithms` empty means: the algorithms of the keys themselves.
    pub fn new(
        name: impl Into<String>,
        issuer: Issuer,
        algorithms: Vec<Algorithm>,
        keys: Vec<IssuerKey<PublicKey>>,
        loaded_at: UnixTime,
    ) -> Result<Self, String> {
        if keys.is_empty() {
            return Err("no usable key".into());
        }
        let algorithms = if algorithms.is_empty() {
            let mut algs = Vec::new();
            for key in &keys {
                if !algs.contains(&key.algorithm) {
                    algs.push(key.algorithm);
                }
            }
            algs
        } else {
            algorithms
        };
        let (set, dropped) = KeySet::new(keys);
        if dropped > 0 {
            tracing::warn!(issuer = %issuer, dropped, "static key source holds too many keys; the rest are ignored");
        }
        Ok(Self {
            name: name.into(),
            issuer,
            algorithms,
            keys: Arc::new(set),
            loaded_at,
        })
    }

    /// Keys from a JWKS document; unusable entries are dropped with a warning.
    pub fn from_jwks(
        name: impl Into<String>,
        issuer: Issuer,
        algorithms: Vec<Algorithm>,
        jwks: &[u8],
        loaded_at: UnixTime,
    ) -> Result<Self, String> {
        let name = name.into();
        let parsed = parse_jwks(jwks)?;
        for why in &parsed.dropped {
            tracing::warn!(source = %name, issuer = %issuer, "dropped a JWKS entry: {why}");
        }
        Self::new(name, issuer, algorithms, parsed.keys, loaded_at)
    }

    /// Keys from PEM public keys; each key's `kid` is its RFC 7638 thumbprint.
    pub fn from_pem(
        name: impl Into<String>,
        issuer: Issuer,
        algorithms: Vec<Algorithm>,
        pem: &str,
        loaded_at: UnixTime,
    ) -> Result<Self, String> {
        let keys = PublicKey::from_pem_all(pem)?
            .into_iter()
            .map(|k| k.into_issuer_key(None))
            .collect();
        Self::new(name, issuer, algorithms, keys, loaded_at)
    }
}

impl StaticKeySource {
    pub fn current_kids(&self) -> Vec<String> {
        self.keys.kids().into_iter().map(str::to_owned).collect()
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

    fn current(&self) -> Option<Arc<KeySet<PublicKey>>> {
        Some(self.keys.clone())
    }

    fn state(&self) -> SourceState {
        SourceState::Ready {
            keys: self.keys.len(),
            loaded_at: self.loaded_at,
        }
    }
}
