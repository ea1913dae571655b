//! A static key source: an issuer's public keys from a JWKS document or PEM public keys, loaded
//! once at start-up. No network at all.

use std::sync::Arc;

use duo_workflow_domain::issuers::SourceIssuer;
use duo_workflow_domain::keys::{Algorithm, IssuerKey, KeySet};
use duo_workflow_domain::ports::{KeySource, SourceState};
use duo_workflow_domain::{Issuer, UnixTime};

use crate::jose::jwk::parse_jwks;
use crate::jose::keys::{KeyPolicy, PublicKey};

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
        let name = name.into();
        let (set, report) = KeySet::new(keys);
        super::report_load(&name, &issuer, &report);
        Ok(Self {
            name,
            issuer,
            algorithms,
            keys: Arc::new(set),
            loaded_at,
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
        let parsed = parse_jwks(jwks, policy)?;
        super::report_dropped(&name, &issuer, &parsed.dropped);
        Self::new(name, issuer, algorithms, parsed.keys, loaded_at)
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
        let mut keys = Vec::new();
        let mut dropped = Vec::new();
        for (i, key) in PublicKey::from_pem_each(pem)?.into_iter().enumerate() {
            match key.and_then(|k| k.check(policy).map(|()| k)) {
                Ok(key) => keys.push(key.into_issuer_key(None)),
                Err(why) => dropped.push(format!("PEM block #{i}: {why}")),
            }
        }
        super::report_dropped(&name, &issuer, &dropped);
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
