//! The local-key authority: signs user tokens with its signing key (SPEC "The user token minted by
//! `GenerateToken`"), and is the key source for its own issuer, the service name, serving the
//! public halves of the signing key and of the optional validation key (the previous signing key,
//! kept during rotation).

use std::sync::Arc;

use async_trait::async_trait;
use duo_workflow_domain::keys::{Algorithm, KeySet};
use duo_workflow_domain::ports::{IssueError, KeySource, SourceState, TokenIssuer};
use duo_workflow_domain::user_token::{UserToken, UserTokenGrant};
use duo_workflow_domain::{Issuer, ServiceName, UnixTime};
use serde_json::{json, Map, Value};

use crate::jose::keys::PublicKey;
use crate::jose::signing::SigningKey;
use crate::jose::token;

pub struct LocalAuthority {
    issuer: Issuer,
    signing: SigningKey,
    validation: Option<SigningKey>,
    algorithms: Vec<Algorithm>,
    keys: Arc<KeySet<PublicKey>>,
    loaded_at: UnixTime,
}

impl LocalAuthority {
    pub fn new(
        service: &ServiceName,
        signing: SigningKey,
        validation: Option<SigningKey>,
        loaded_at: UnixTime,
    ) -> Self {
        let mut algorithms = vec![signing.algorithm()];
        let mut keys = vec![signing
            .public_key()
            .clone()
            .into_issuer_key(Some(signing.kid().to_owned()))];
        if let Some(v) = &validation {
            if !algorithms.contains(&v.algorithm()) {
                algorithms.push(v.algorithm());
            }
            if v.kid() != signing.kid() {
                keys.push(
                    v.public_key()
                        .clone()
                        .into_issuer_key(Some(v.kid().to_owned())),
                );
            }
        }
        let (set, _) = KeySet::new(keys);
        Self {
            issuer: service.as_issuer(),
            signing,
            validation,
            algorithms,
            keys: Arc::new(set),
            loaded_at,
        }
    }

    /// The issuer of user tokens: the service name.
    pub fn issuer_name(&self) -> &str {
        self.issuer.as_str()
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    pub fn validation_key(&self) -> Option<&SigningKey> {
        self.validation.as_ref()
    }

    /// The public keys as a JWKS document, for publishing.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = std::iter::once(&self.signing)
            .chain(self.validation.iter())
            .map(|k| k.public_key().to_jwk(k.kid()))
            .collect();
        json!({ "keys": keys })
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
            token: token::sign(&self.signing, &claims, true),
            expires_at: grant.expires_at,
        })
    }
}

impl KeySource<PublicKey> for LocalAuthority {
    fn name(&self) -> &str {
        "local-authority"
    }

    fn issuer(&self) -> &Issuer {
        &self.issuer
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
