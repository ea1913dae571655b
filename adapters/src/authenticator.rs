//! The JWT authenticator: a token is verified only with keys of the sources whose issuer equals
//! its `iss` (SPEC Part B 1), with the algorithms those sources allow, then its claims are checked
//! by the domain's rules. An issuer usually has one source; the service's own issuer may have two
//! (its local authority, and a peer instance trusted through discovery).
//!
//! Sources with a configured issuer are routed through a map built once. Sources that learn their
//! issuer by discovery (the built-in GitLab and CustomersDot ones) are matched by the issuer they
//! learned; [`IssuerClaims`](duo_workflow_domain::issuers::IssuerClaims) keeps the two sets
//! apart, so an `iss` never has sources of both kinds.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use duo_workflow_domain::issuers::SourceIssuer;
use duo_workflow_domain::keys::{KeySet, DEFAULT_KIDLESS_CANDIDATES};
use duo_workflow_domain::policy::ClaimChecks;
use duo_workflow_domain::ports::{Authenticator, Clock, KeySource, VerificationError};
use duo_workflow_domain::request::BearerToken;
use duo_workflow_domain::{Issuer, Rejection, VerifiedClaims};

use crate::explain::{self, Explanation, Notes, Step, Trail};
use crate::jose::keys::PublicKey;
use crate::jose::token::{
    SignatureFailure, SignatureVerified, UnverifiedToken, DEFAULT_MAX_TOKEN_BYTES,
};
use crate::metrics::{note_token_issuer, LabelText};
use crate::verified_cache::{
    digest_of, CacheLimits, CacheStats, Entry, JudgedWith, RefusedCache, RefusedLimits,
    VerifiedCache,
};

pub type DynKeySource = Arc<dyn KeySource<PublicKey>>;

pub struct JwtAuthenticator {
    /// Sources whose issuer configuration fixes, by issuer.
    by_issuer: HashMap<String, Vec<DynKeySource>>,
    /// Sources whose issuer is learned by discovery (at most one per issuer).
    discovering: Vec<DynKeySource>,
    checks: ClaimChecks,
    clock: Arc<dyn Clock>,
    max_token_bytes: usize,
    /// How many keys a kid-less token is tried against, the most recent first.
    max_kidless_candidates: usize,
    cache: VerifiedCache,
    refused: RefusedCache,
}

/// A refusal after signature work, and the key sets it was judged with.
struct Refusal {
    error: VerificationError,
    judged_with: Vec<JudgedWith>,
}

impl From<VerificationError> for Refusal {
    fn from(error: VerificationError) -> Self {
        Self {
            error,
            judged_with: Vec::new(),
        }
    }
}

impl From<Rejection> for Refusal {
    fn from(r: Rejection) -> Self {
        VerificationError::from(r).into()
    }
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
        let mut discovering = Vec::new();
        let mut names = std::collections::HashSet::new();
        for source in sources {
            if !names.insert(source.name().to_owned()) {
                return Err(format!("two key sources are named {:?}", source.name()));
            }
            match source.issuer() {
                SourceIssuer::Fixed(issuer) => by_issuer
                    .entry(issuer.as_str().to_owned())
                    .or_default()
                    .push(source),
                SourceIssuer::Discovered(_) => discovering.push(source),
            }
        }
        Ok(Self {
            by_issuer,
            discovering,
            checks,
            clock,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            max_kidless_candidates: DEFAULT_KIDLESS_CANDIDATES,
            cache: VerifiedCache::new(CacheLimits::default()),
            refused: RefusedCache::new(RefusedLimits::default()),
        })
    }

    pub fn with_refused_limits(mut self, limits: RefusedLimits) -> Self {
        self.refused = RefusedCache::new(limits);
        self
    }

    /// At least one: a kid-less token must be tried against something.
    pub fn with_max_kidless_candidates(mut self, n: usize) -> Self {
        self.max_kidless_candidates = n.max(1);
        self
    }

    pub fn with_cache_limits(mut self, limits: CacheLimits) -> Self {
        self.cache = VerifiedCache::new(limits);
        self
    }

    pub fn cache_usage(&self) -> (usize, usize) {
        self.cache.usage()
    }

    /// The verified-token cache's hits, misses and size, for metrics.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The metrics label of a token's `iss`: the issuer itself when a source serves it, else
    /// `unknown`, so that tokens cannot add label values.
    fn issuer_label(&self, iss: &str) -> LabelText {
        if self.by_issuer.contains_key(iss) || self.discovered(iss).is_some() {
            LabelText::Shared(iss.into())
        } else {
            LabelText::UNKNOWN
        }
    }

    pub fn with_max_token_bytes(mut self, max: usize) -> Self {
        self.max_token_bytes = max;
        self
    }

    /// The sources of `iss`: configured ones first, then a discovering source that learned it.
    /// When none matches while some discovering source has not learned its issuer yet, those
    /// refetch (rate-limited and single-flight: random `iss` values cannot become a flood) and
    /// are asked again; if one still does not know its issuer, the token cannot be judged.
    async fn sources_of(&self, iss: &str) -> Result<&[DynKeySource], VerificationError> {
        if let Some(sources) = self.by_issuer.get(iss) {
            return Ok(sources);
        }
        if let Some(source) = self.discovered(iss) {
            return Ok(source);
        }
        let undiscovered = || {
            self.discovering
                .iter()
                .filter(|s| s.issuer().known().is_none())
        };
        if undiscovered().next().is_none() {
            return Err(Rejection::UnknownIssuer.into());
        }
        futures::future::join_all(undiscovered().map(|s| s.refetch_after_miss(None))).await;
        if let Some(source) = self.discovered(iss) {
            return Ok(source);
        }
        if undiscovered().next().is_some() {
            return Err(VerificationError::KeysUnavailable(Issuer::new(iss)));
        }
        Err(Rejection::UnknownIssuer.into())
    }

    /// The discovering source that learned `iss`, as a one-source slice.
    fn discovered(&self, iss: &str) -> Option<&[DynKeySource]> {
        self.discovering
            .iter()
            .find(|s| s.issuer().known().is_some_and(|i| i.as_str() == iss))
            .map(std::slice::from_ref)
    }

    /// The signature check against the issuer's sources, refetching once on a miss. A refusal
    /// says which key sets judged it.
    async fn verify_signature<'s>(
        &self,
        token: &UnverifiedToken<'_>,
        sources: &'s [DynKeySource],
        notes: &mut impl Notes,
    ) -> Result<Verified<'s>, Refusal> {
        let allowed: Vec<&DynKeySource> = sources
            .iter()
            .filter(|s| s.algorithms().contains(&token.algorithm()))
            .collect();
        let allowing = |all: &[&DynKeySource]| {
            let each: Vec<String> = all
                .iter()
                .map(|s| format!("{} ({:?})", s.name(), s.algorithms()))
                .collect();
            each.join(", ")
        };
        if allowed.is_empty() {
            let refusal: Refusal = Rejection::AlgorithmNotAllowed.into();
            notes.note(|| {
                let all: Vec<&DynKeySource> = sources.iter().collect();
                let step = Step::refused_for("algorithm", &refusal.error);
                Step::refused(
                    "algorithm",
                    format!(
                        "{}; {} allowed by {}",
                        step.detail,
                        token.algorithm(),
                        allowing(&all)
                    ),
                )
            });
            return Err(refusal);
        }
        notes.note(|| {
            Step::passed(
                "algorithm",
                format!("{} allowed by {}", token.algorithm(), allowing(&allowed)),
            )
        });
        let n = self.max_kidless_candidates;
        let refused =
            |r: Rejection, source: &DynKeySource, keys: &Arc<KeySet<PublicKey>>| Refusal {
                error: r.into(),
                judged_with: vec![JudgedWith::new(source, Some(keys))],
            };
        // Sources whose keys did not verify the token, with the set each tried (`None`: it had none).
        let mut misses: Vec<(&DynKeySource, Option<Arc<KeySet<PublicKey>>>)> = Vec::new();
        for source in &allowed {
            let Some(keys) = source.current().filter(|k| !k.is_empty()) else {
                misses.push((source, None));
                continue;
            };
            match token.verify(&keys, n) {
                Ok(proof) => {
                    return Ok(Verified {
                        proof,
                        source,
                        keys,
                    })
                }
                Err(SignatureFailure::Invalid) => {
                    return Err(refused(Rejection::BadSignature, source, &keys))
                }
                Err(SignatureFailure::Ambiguous) => {
                    return Err(refused(Rejection::AmbiguousKeyId, source, &keys))
                }
                Err(SignatureFailure::NoMatchingKey) => misses.push((source, Some(keys))),
            }
        }
        // Perhaps the issuer rotated its keys, or its provider just came back: each source may
        // refetch, once, rate-limited and shared with concurrent misses.
        let mut any_keys = false;
        let mut judged_with = Vec::new();
        for (source, seen) in misses {
            let newer = source.refetch_after_miss(seen.as_ref()).await;
            let judged = newer.clone().or(seen).filter(|k| !k.is_empty());
            any_keys |= judged.is_some();
            judged_with.push(JudgedWith::new(source, judged.as_ref()));
            if let Some(newer) = newer {
                match token.verify(&newer, n) {
                    Ok(proof) => {
                        return Ok(Verified {
                            proof,
                            source,
                            keys: newer,
                        })
                    }
                    Err(SignatureFailure::Invalid) => {
                        return Err(refused(Rejection::BadSignature, source, &newer))
                    }
                    Err(SignatureFailure::Ambiguous) => {
                        return Err(refused(Rejection::AmbiguousKeyId, source, &newer))
                    }
                    Err(SignatureFailure::NoMatchingKey) => {}
                }
            }
        }
        if !any_keys {
            // No source of this issuer has usable keys: an outage, not a bad token.
            return Err(
                VerificationError::KeysUnavailable(Issuer::new(token.claimed_issuer()?)).into(),
            );
        }
        let rejection = if token.kid().is_some() {
            Rejection::UnknownKeyId
        } else {
            Rejection::BadSignature
        };
        Err(Refusal {
            error: rejection.into(),
            judged_with,
        })
    }

    /// Parse, route, verify, check claims; a refusal after signature work says what judged it.
    /// Each step is noted in `notes` (nothing, for calls; everything, for `token explain`).
    async fn judge(
        &self,
        text: &str,
        notes: &mut impl Notes,
    ) -> Result<(VerifiedClaims, Entry), Refusal> {
        let token = match UnverifiedToken::parse(text, self.max_token_bytes) {
            Ok(token) => token,
            Err(r) => {
                let error = r.into();
                notes.note(Step::refusal("token", &error));
                return Err(error.into());
            }
        };
        notes.note(|| {
            let kid = token
                .kid()
                .map_or("no kid (its issuer's keys are tried)".to_owned(), |k| {
                    format!("kid {k:?}")
                });
            Step::passed("token", format!("a JWS, alg {}, {kid}", token.algorithm()))
        });
        let iss = match token.claimed_issuer() {
            Ok(iss) => iss,
            Err(r) => {
                let error = r.into();
                notes.note(Step::refusal("issuer", &error));
                return Err(error.into());
            }
        };
        let sources = self.sources_of(iss).await;
        note_token_issuer(self.issuer_label(iss));
        let sources = match sources {
            Ok(sources) => sources,
            Err(error) => {
                notes.note(|| self.issuer_refused(iss, &error));
                return Err(error.into());
            }
        };
        notes.note(|| {
            let names: Vec<&str> = sources.iter().map(|s| s.name()).collect();
            Step::passed(
                "issuer",
                format!("iss {iss:?}, served by key source {}", names.join(", ")),
            )
        });
        let verified = match self.verify_signature(&token, sources, notes).await {
            Ok(verified) => verified,
            Err(refusal) => {
                notes.note(Step::refusal("signature", &refusal.error));
                return Err(refusal);
            }
        };
        notes.judged_by(verified.source);
        notes.note(|| {
            let kid = verified
                .proof
                .kid()
                .map_or("a key without kid".to_owned(), |k| {
                    format!("key {:?}", k.as_str())
                });
            Step::passed(
                "signature",
                format!(
                    "verified with {kid} of key source {}",
                    verified.source.name()
                ),
            )
        });
        let (source, keys) = (verified.source.clone(), verified.keys);
        let mapping = source.claim_mapping();
        let judged = |error: VerificationError| Refusal {
            error,
            judged_with: vec![JudgedWith::new(&source, Some(&keys))],
        };
        let claims = match token.into_claims(verified.proof, mapping) {
            Ok(claims) => claims,
            Err(r) => {
                let error = r.into();
                notes.note(Step::refusal("claims", &error));
                return Err(judged(error));
            }
        };
        notes.note(|| {
            let instance = match &claims.caller_instance {
                Some(v) => format!("{} = {v:?}", mapping.instance_claim()),
                None => format!("{} absent", mapping.instance_claim()),
            };
            let primitives: Vec<&str> = claims.scopes.iter().map(|p| p.as_str()).collect();
            let unmapped = match mapping.scope_map() {
                Some(map) if primitives.is_empty() => {
                    let known: Vec<&str> = map.entries().iter().map(|(s, _)| s.as_str()).collect();
                    format!(", none of them in the scope map {known:?}")
                }
                _ => String::new(),
            };
            Step::passed(
                "claims",
                format!(
                    "unit primitives {primitives:?} ({}{unmapped}); instance claim {instance}",
                    claims.scope_evidence
                ),
            )
        });
        let now = self.clock.now();
        notes.note_all(|| explain::claim_checks(&self.checks, mapping.audiences(), &claims, now));
        match self
            .checks
            .accept_for(mapping.audiences(), claims.clone(), now)
        {
            Ok(accepted) => {
                if claims.scopes.is_empty() {
                    // Once per token verified (the cache spares the rest): what an operator
                    // mapping a new provider's claims needs to see, names only.
                    tracing::info!(
                        source = source.name(),
                        issuer = %claims.issuer,
                        "token verified without any unit primitive ({})",
                        claims.scope_evidence
                    );
                }
                Ok((accepted, Entry::new(claims, source, &keys, text.len())))
            }
            Err(r) => Err(judged(r.into())),
        }
    }

    /// An issuer no source serves, explained: a configured issuer that differs only by a
    /// trailing slash is named, since the slash is part of an issuer.
    fn issuer_refused(&self, iss: &str, error: &VerificationError) -> Step {
        let step = Step::refused_for("issuer", error);
        let near = self
            .by_issuer
            .values()
            .flatten()
            .chain(&self.discovering)
            .find_map(|s| {
                let known = s.issuer().known()?;
                (known.as_str() != iss
                    && known.as_str().trim_end_matches('/') == iss.trim_end_matches('/'))
                .then(|| (s.name().to_owned(), known.as_str().to_owned()))
            });
        match near {
            Some((name, known)) => Step::refused(
                "issuer",
                format!(
                    "{}; iss {iss:?}, but key source {name} serves {known:?}: a trailing slash \
                     is part of an issuer",
                    step.detail
                ),
            ),
            None => Step::refused("issuer", format!("{}; iss {iss:?}", step.detail)),
        }
    }

    /// Explains `text`: each step the server takes for it, the source that judged it, and the
    /// verdict, without the caches (what a fresh token meets). Keys are not fetched beyond
    /// what a call would fetch (a miss may refetch, rate-limited).
    pub async fn explain(&self, text: &str) -> Explanation {
        let mut trail = Trail::default();
        let result = self
            .judge(text, &mut trail)
            .await
            .map(|(accepted, _)| accepted)
            .map_err(|refusal| refusal.error);
        Explanation {
            steps: trail.steps,
            source: trail.source,
            result,
        }
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
        let digest = (self.cache.enabled() || self.refused.enabled()).then(|| digest_of(text));
        if let Some(digest) = &digest {
            if let Some(entry) = self.cache.lookup(digest) {
                note_token_issuer(LabelText::Shared(entry.claims.issuer.as_str().into()));
                let audiences = entry.source.claim_mapping().audiences();
                let checked = self
                    .checks
                    .accept_for(audiences, entry.claims, self.clock.now());
                if checked.is_err() {
                    self.cache.remove(digest);
                }
                return Ok(checked?);
            }
            if let Some((rejection, issuer)) = self.refused.get(digest) {
                note_token_issuer(
                    issuer.map_or(LabelText::UNKNOWN, |i| LabelText::Shared(i.as_str().into())),
                );
                return Err(rejection.into());
            }
        }
        let (accepted, entry) = match self.judge(text, &mut ()).await {
            Ok(judged) => judged,
            Err(refusal) => {
                if let (Some(digest), VerificationError::Rejected(r)) = (digest, &refusal.error) {
                    if !refusal.judged_with.is_empty() {
                        self.refused.insert(digest, r.clone(), refusal.judged_with);
                    }
                }
                return Err(refusal.error);
            }
        };
        if let Some(digest) = digest {
            self.cache.insert(digest, entry);
        }
        Ok(accepted)
    }
}
