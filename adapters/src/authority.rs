//! The local-key authority: signs user tokens with its signing key (SPEC "The user token minted by
//! `GenerateToken`"), and provides the key source for its own issuer, the service name: a static
//! source of the public halves of the signing key and of the optional validation key (the
//! previous signing key, kept during rotation).

use std::sync::Arc;

use async_trait::async_trait;
use duo_workflow_domain::ports::{IssueError, TokenIssuer};
use duo_workflow_domain::user_token::{UserToken, UserTokenGrant};
use duo_workflow_domain::{Issuer, ServiceName, UnixTime};
use serde_json::{json, Map, Value};

use crate::jose::signing::SigningKey;
use crate::jose::token;
use crate::sources::StaticKeySource;

/// The name of the authority's key source in logs and readiness.
pub const KEY_SOURCE_NAME: &str = "local-authority";

pub struct LocalAuthority {
    issuer: Issuer,
    signing: SigningKey,
    validation: Option<SigningKey>,
    key_source: Arc<StaticKeySource>,
}

impl LocalAuthority {
    pub fn new(
        service: &ServiceName,
        signing: SigningKey,
        validation: Option<SigningKey>,
        loaded_at: UnixTime,
    ) -> Self {
        let mut keys = vec![signing
            .public_key()
            .clone()
            .into_issuer_key(Some(signing.kid().to_owned()))];
        if let Some(v) = validation.as_ref().filter(|v| v.kid() != signing.kid()) {
            keys.push(
                v.public_key()
                    .clone()
                    .into_issuer_key(Some(v.kid().to_owned())),
            );
        }
        // Allowed algorithms: those of the two keys.
        let key_source = StaticKeySource::new(
            KEY_SOURCE_NAME,
            service.as_issuer(),
            vec![],
            keys,
            loaded_at,
        )
        .expect("the signing key is a usable key");
        Self {
            issuer: service.as_issuer(),
            signing,
            validation,
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
            token: token::sign(&self.signing, &claims, true),
            expires_at: grant.expires_at,
        })
    }
}
