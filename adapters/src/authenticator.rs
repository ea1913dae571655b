//! The JWT authenticator: a token is verified only with the keys of the one source whose issuer
//! equals its `iss` (SPEC Part B 1), with the algorithms that source allows, then its claims are
//! checked by the domain's rules.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use duo_workflow_domain::policy::ClaimChecks;
use duo_workflow_domain::ports::{Authenticator, Clock, KeySource, VerificationError};
use duo_workflow_domain::request::BearerToken;
use duo_workflow_domain::{Rejection, VerifiedClaims};

use crate::jose::keys::PublicKey;
use crate::jose::token::{SignatureFailure, UnverifiedToken, DEFAULT_MAX_TOKEN_BYTES};

pub type DynKeySource = Arc<dyn KeySource<PublicKey>>;

pub struct JwtAuthenticator {
    by_issuer: HashMap<String, DynKeySource>,
    checks: ClaimChecks,
    clock: Arc<dyn Clock>,
    max_token_bytes: usize,
}

impl JwtAuthenticator {
    /// Fails when two sources claim the same issuer: every issuer has exactly one source.
    pub fn new(
        sources: Vec<DynKeySource>,
        checks: ClaimChecks,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        let mut by_issuer = HashMap::new();
        for source in sources {
            let issuer = source.issuer().as_str().to_owned();
            if let Some(previous) = by_issuer.insert(issuer.clone(), source.clone()) {
                return Err(format!(
                    "key sources {:?} and {:?} both serve issuer {issuer:?}",
                    previous.name(),
                    source.name()
                ));
            }
        }
        Ok(Self {
            by_issuer,
            checks,
            clock,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
        })
    }

    pub fn with_max_token_bytes(mut self, max: usize) -> Self {
        self.max_token_bytes = max;
        self
    }
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(&self, token: &BearerToken) -> Result<VerifiedClaims, VerificationError> {
        let token = UnverifiedToken::parse(token.as_str(), self.max_token_bytes)?;
        let source = self
            .by_issuer
            .get(token.claimed_issuer()?)
            .ok_or(Rejection::UnknownIssuer)?;
        if !source.algorithms().contains(&token.algorithm()) {
            return Err(Rejection::AlgorithmNotAllowed.into());
        }
        let keys = source
            .current()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| VerificationError::KeysUnavailable(source.issuer().clone()))?;
        let proof = match token.verify(&keys) {
            Ok(proof) => proof,
            Err(SignatureFailure::Invalid) => return Err(Rejection::BadSignature.into()),
            // Perhaps the issuer rotated its keys: the source may refetch, once, rate-limited.
            Err(SignatureFailure::NoMatchingKey) => match source.refetch_after_miss().await {
                Some(newer) => token.verify(&newer).map_err(|e| match e {
                    SignatureFailure::Invalid => Rejection::BadSignature,
                    SignatureFailure::NoMatchingKey if token.kid().is_some() => {
                        Rejection::UnknownKeyId
                    }
                    SignatureFailure::NoMatchingKey => Rejection::BadSignature,
                })?,
                None if token.kid().is_some() => return Err(Rejection::UnknownKeyId.into()),
                None => return Err(Rejection::BadSignature.into()),
            },
        };
        let claims = token.into_claims(proof)?;
        Ok(self.checks.accept(claims, self.clock.now())?)
    }
}
