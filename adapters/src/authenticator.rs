//! The JWT authenticator: a token is verified only with keys of the sources whose issuer equals
//! its `iss` (SPEC Part B 1), with the algorithms those sources allow, then its claims are checked
//! by the domain's rules. An issuer usually has one source; the service's own issuer may have two
//! (its local authority, and a peer instance trusted through discovery).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use duo_workflow_domain::keys::KeySet;
use duo_workflow_domain::policy::ClaimChecks;
use duo_workflow_domain::ports::{Authenticator, Clock, KeySource, VerificationError};
use duo_workflow_domain::request::BearerToken;
use duo_workflow_domain::{Rejection, VerifiedClaims};

use crate::jose::keys::PublicKey;
use crate::jose::token::{
    SignatureFailure, SignatureVerified, UnverifiedToken, DEFAULT_MAX_TOKEN_BYTES,
};
use crate::verified_cache::{digest_of, CacheLimits, Entry, VerifiedCache};

pub type DynKeySource = Arc<dyn KeySource<PublicKey>>;

pub struct JwtAuthenticator {
    by_issuer: HashMap<String, Vec<DynKeySource>>,
    checks: ClaimChecks,
    clock: Arc<dyn Clock>,
    max_token_bytes: usize,
    cache: VerifiedCache,
}

/// A signature that verified, and with what.
struct Verified<'a> {
    proof: SignatureVerified,
    source: &'a DynKeySource,
    keys: Arc<KeySet<PublicKey>>,
}

impl JwtAuthenticator {
    /// Fails when two sources share a name: names identify sources in logs and readiness.
    pub fn new(
        sources: Vec<DynKeySource>,
        checks: ClaimChecks,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        let mut by_issuer: HashMap<String, Vec<DynKeySource>> = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for source in sources {
            if !names.insert(source.name().to_owned()) {
                return Err(format!("two key sources are named {:?}", source.name()));
            }
            by_issuer
                .entry(source.issuer().as_str().to_owned())
                .or_default()
                .push(source);
        }
        Ok(Self {
            by_issuer,
            checks,
            clock,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            cache: VerifiedCache::new(CacheLimits::default()),
        })
    }

    pub fn with_cache_limits(mut self, limits: CacheLimits) -> Self {
        self.cache = VerifiedCache::new(limits);
        self
    }

    pub fn cache_usage(&self) -> (usize, usize) {
        self.cache.usage()
    }

    pub fn with_max_token_bytes(mut self, max: usize) -> Self {
        self.max_token_bytes = max;
        self
    }

    /// The signature check against the issuer's sources, refetching once on a miss.
    async fn verify_signature<'s>(
        &self,
        token: &UnverifiedToken<'_>,
        sources: &'s [DynKeySource],
    ) -> Result<Verified<'s>, VerificationError> {
        let allowed: Vec<&DynKeySource> = sources
            .iter()
            .filter(|s| s.algorithms().contains(&token.algorithm()))
            .collect();
        if allowed.is_empty() {
            return Err(Rejection::AlgorithmNotAllowed.into());
        }
        // Sources whose keys did not verify the token, with the set each tried (`None`: it had none).
        let mut misses: Vec<(&DynKeySource, Option<Arc<KeySet<PublicKey>>>)> = Vec::new();
        for source in &allowed {
            let Some(keys) = source.current().filter(|k| !k.is_empty()) else {
                misses.push((source, None));
                continue;
            };
            match token.verify(&keys) {
                Ok(proof) => {
                    return Ok(Verified {
                        proof,
                        source,
                        keys,
                    })
                }
                Err(SignatureFailure::Invalid) => return Err(Rejection::BadSignature.into()),
                Err(SignatureFailure::NoMatchingKey) => misses.push((source, Some(keys))),
            }
        }
        // Perhaps the issuer rotated its keys, or its provider just came back: each source may
        // refetch, once, rate-limited and shared with concurrent misses.
        let mut any_keys = false;
        for (source, seen) in misses {
            let had_keys = seen.is_some();
            let newer = source.refetch_after_miss(seen.as_ref()).await;
            any_keys |= had_keys || newer.as_ref().is_some_and(|k| !k.is_empty());
            if let Some(newer) = newer {
                match token.verify(&newer) {
                    Ok(proof) => {
                        return Ok(Verified {
                            proof,
                            source,
                            keys: newer,
                        })
                    }
                    Err(SignatureFailure::Invalid) => return Err(Rejection::BadSignature.into()),
                    Err(SignatureFailure::NoMatchingKey) => {}
                }
            }
        }
        if !any_keys {
            // No source of this issuer has usable keys: an outage, not a bad token.
            return Err(VerificationError::KeysUnavailable(
                allowed[0].issuer().clone(),
            ));
        }
        Err(if token.kid().is_some() {
            Rejection::UnknownKeyId
        } else {
            Rejection::BadSignature
        }
        .into())
    }
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(
        &self,
        bearer: &BearerToken,
    ) -> Result<VerifiedClaims, VerificationError> {
        let text = bearer.as_str();
        if text.len() > self.max_token_bytes {
            // Before hashing or parsing anything.
            return Err(Rejection::TooLong {
                len: text.len(),
                max: self.max_token_bytes,
            }
            .into());
        }
        let digest = self.cache.enabled().then(|| digest_of(text));
        if let Some(digest) = &digest {
            if let Some(entry) = self.cache.get(digest) {
                if entry.still_trusted() {
                    let checked = self.checks.accept(entry.claims, self.clock.now());
                    if checked.is_err() {
                        self.cache.remove(digest);
                    }
                    return Ok(checked?);
                }
                self.cache.remove(digest);
            }
        }
        let token = UnverifiedToken::parse(text, self.max_token_bytes)?;
        let sources = self
            .by_issuer
            .get(token.claimed_issuer()?)
            .ok_or(Rejection::UnknownIssuer)?;
        let verified = self.verify_signature(&token, sources).await?;
        let (source, keys) = (verified.source.clone(), verified.keys);
        let claims = token.into_claims(verified.proof)?;
        let accepted = self.checks.accept(claims.clone(), self.clock.now())?;
        if let Some(digest) = digest {
            self.cache
                .insert(digest, Entry::new(claims, source, &keys, text.len()));
        }
        Ok(accepted)
    }
}
