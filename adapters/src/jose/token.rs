//! Compact JWS tokens. Parsing checks the cheap things first (length, alphabet, segment count)
//! before any decoding; claims come out of a token only with proof that its signature verified.

use duo_workflow_domain::keys::{Algorithm, IssuerKey, KeySet, Selection, MAX_KID_LEN};
use duo_workflow_domain::mapping::{ClaimMapping, ScopeClaim};
use duo_workflow_domain::{
    ClaimName, Claims, CopiedClaim, Issuer, JsonText, KeyId, Rejection, UnixTime,
};
use serde_json::{Map, Value};

use super::json::unique_object;
use super::keys::PublicKey;
use super::signing::SigningKey;
use super::{b64url_decode, b64url_encode};

/// Default cap on a token's length, checked before anything else.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Header parameters that would make us trust key material or semantics from the token itself.
const REFUSED_HEADER_PARAMS: [&str; 7] = ["jwk", "jku", "x5u", "x5c", "crit", "zip", "b64"];

/// A token that parsed but whose signature has not been checked. Nothing in it is trusted.
pub struct UnverifiedToken<'a> {
    algorithm: Algorithm,
    kid: Option<String>,
    payload: Map<String, Value>,
    signing_input: &'a [u8],
    signature: Vec<u8>,
}

/// Proof that a token's signature verified with one of its issuer's keys. Only
/// [`UnverifiedToken::verify`] makes one.
pub struct SignatureVerified {
    kid: Option<KeyId>,
}

impl SignatureVerified {
    /// The `kid` of the key that verified the signature (for `token explain`).
    pub fn kid(&self) -> Option<&KeyId> {
        self.kid.as_ref()
    }
}

/// Why no key verified the token.
#[derive(Debug, PartialEq, Eq)]
pub enum SignatureFailure {
    /// No key of the set could have signed it (unknown `kid`, or a kid-less token that no key
    /// verifies): the issuer may have rotated its keys.
    NoMatchingKey,
    /// The named key exists but the signature is wrong, or the key is for another algorithm.
    Invalid,
    /// Several keys carry the token's `kid`: none is used.
    Ambiguous,
}

impl<'a> UnverifiedToken<'a> {
    pub fn parse(token: &'a str, max_len: usize) -> Result<Self, Rejection> {
        if token.len() > max_len {
            return Err(Rejection::TooLong {
                len: token.len(),
                max: max_len,
            });
        }
        let bytes = token.as_bytes();
        if !bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(Rejection::Malformed("character outside base64url"));
        }
        let mut dots = bytes
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'.')
            .map(|(i, _)| i);
        let (first, second) = match (dots.next(), dots.next(), dots.next()) {
            (Some(a), Some(b), None) => (a, b),
            (_, _, Some(_)) => return Err(Rejection::Malformed("more than three segments")),
            _ => return Err(Rejection::Malformed("fewer than three segments")),
        };
        let (header_b64, payload_b64, sig_b64) = (
            &token[..first],
            &token[first + 1..second],
            &token[second + 1..],
        );
        if header_b64.is_empty() || payload_b64.is_empty() || sig_b64.is_empty() {
            return Err(Rejection::Malformed("empty segment"));
        }
        let header = decode_object(header_b64).ok_or(Rejection::Malformed(
            "header is not a base64url JSON object",
        ))?;
        let (algorithm, kid) = check_header(&header)?;
        let payload = decode_object(payload_b64).ok_or(Rejection::Malformed(
            "payload is not a base64url JSON object",
        ))?;
        let signature =
            b64url_decode(sig_b64).ok_or(Rejection::Malformed("signature is not base64url"))?;
        Ok(Self {
            algorithm,
            kid,
            payload,
            signing_input: &bytes[..second],
            signature,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The claimed issuer, used only to choose which source's keys to try.
    pub fn claimed_issuer(&self) -> Result<&str, Rejection> {
        match self.payload.get("iss") {
            Some(Value::String(s)) => Ok(s),
            None => Err(Rejection::UnknownIssuer),
            Some(_) => Err(Rejection::InvalidClaim(ClaimName::fixed("iss"))),
        }
    }

    /// Tries the keys the `kid` selects: the named one, or for a kid-less token at most
    /// `max_candidates` keys, the most recent first. A key verifies only tokens of its own
    /// algorithm.
    pub fn verify(
        &self,
        keys: &KeySet<PublicKey>,
        max_candidates: usize,
    ) -> Result<SignatureVerified, SignatureFailure> {
        let fits = |k: &IssuerKey<PublicKey>| {
            k.algorithms.contains(self.algorithm)
                && k.key
                    .verify(self.algorithm, self.signing_input, &self.signature)
        };
        let proof = |key: &IssuerKey<PublicKey>| SignatureVerified {
            kid: key.kid.clone(),
        };
        match keys.select(self.kid.as_deref(), self.algorithm, max_candidates) {
            Selection::Named(key) if fits(key) => Ok(proof(key)),
            Selection::Named(_) => Err(SignatureFailure::Invalid),
            Selection::UnknownKid => Err(SignatureFailure::NoMatchingKey),
            Selection::AmbiguousKid => Err(SignatureFailure::Ambiguous),
            Selection::Each(all) => match all.into_iter().find(|k| fits(k)) {
                Some(key) => Ok(proof(key)),
                None => Err(SignatureFailure::NoMatchingKey),
            },
        }
    }

    /// The claims, now that the signature verified, read the way the verifying key's source
    /// says its tokens are written.
    pub fn into_claims(
        self,
        _proof: SignatureVerified,
        mapping: &ClaimMapping,
    ) -> Result<Claims, Rejection> {
        read_claims(&self.payload, mapping)
    }
}

fn check_header(header: &Map<String, Value>) -> Result<(Algorithm, Option<String>), Rejection> {
    if let Some(param) = REFUSED_HEADER_PARAMS
        .iter()
        .find(|p| header.contains_key(**p))
    {
        return Err(Rejection::UnsupportedHeader(param));
    }
    let algorithm = match header.get("alg") {
        Some(Value::String(name)) => {
            Algorithm::from_jose(name).ok_or(Rejection::UnsupportedAlgorithm)?
        }
        _ => return Err(Rejection::UnsupportedAlgorithm),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= MAX_KID_LEN => Some(k.clone()),
        Some(_) => return Err(Rejection::InvalidKeyId),
    };
    Ok((algorithm, kid))
}

/// base64url, then a strict JSON object ([`super::json`]).
fn decode_object(b64: &str) -> Option<Map<String, Value>> {
    unique_object(&b64url_decode(b64)?)
}

fn read_claims(p: &Map<String, Value>, mapping: &ClaimMapping) -> Result<Claims, Rejection> {
    let invalid = |name: &'static str| Rejection::InvalidClaim(ClaimName::fixed(name));
    let issuer = match p.get("iss") {
        Some(Value::String(s)) => Issuer::new(s.clone()),
        _ => return Err(invalid("iss")),
    };
    let audience = match p.get("aud") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(invalid("aud"))?,
        Some(_) => return Err(invalid("aud")),
    };
    let scopes = mapping.scopes(|claim| scope_claim(p.get(claim.as_str())))?;
    let duo_seat_count = match p.get("duo_seat_count") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) if n.is_u64() => Some(n.to_string()),
        Some(_) => return Err(invalid("duo_seat_count")),
    };
    let instance_claim = mapping.instance_claim();
    Ok(Claims {
        issuer,
        subject: optional_string(p, &ClaimName::SUB)?,
        audience,
        scopes: scopes.unit_primitives,
        scope_evidence: scopes.evidence,
        realm: optional_string(p, &ClaimName::fixed("gitlab_realm"))?,
        instance_id: optional_string(p, &ClaimName::fixed("gitlab_instance_id"))?,
        caller_instance: optional_string(p, instance_claim)?,
        duo_seat_count,
        copied: copied_claims(p),
        jti: optional_string(p, &ClaimName::fixed("jti"))?,
        expires_at: numeric_date(p, "exp")?,
        not_before: numeric_date(p, "nbf")?,
        issued_at: numeric_date(p, "iat")?,
    })
}

/// A claim of unit primitives as the domain's rules take it.
fn scope_claim(value: Option<&Value>) -> ScopeClaim {
    match value {
        None | Some(Value::Null) => ScopeClaim::Absent,
        Some(Value::String(s)) => ScopeClaim::Text(s.clone()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map_or(ScopeClaim::Other, ScopeClaim::List),
        Some(_) => ScopeClaim::Other,
    }
}

/// The claims a user token copies from its caller's token, unchanged (any JSON value).
fn copied_claims(p: &Map<String, Value>) -> Vec<CopiedClaim> {
    CopiedClaim::NAMES
        .into_iter()
        .filter_map(|name| {
            let value = p.get(name)?;
            Some(CopiedClaim {
                name,
                value: JsonText::new(value.to_string()),
            })
        })
        .collect()
}

fn optional_string(p: &Map<String, Value>, name: &ClaimName) -> Result<Option<String>, Rejection> {
    match p.get(name.as_str()) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Rejection::InvalidClaim(name.clone())),
    }
}

/// RFC 7519 NumericDate: a JSON number of seconds. Fractions are truncated; strings, negatives,
/// non-finite values and times past year 9999 are refused.
fn numeric_date(p: &Map<String, Value>, name: &'static str) -> Result<Option<UnixTime>, Rejection> {
    let secs = match p.get(name) {
        None => return Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i,
            (None, Some(f))
                if f.is_finite() && f >= 0.0 && f <= duo_workflow_domain::time::LATEST as f64 =>
            {
                f as i64
            }
            _ => return Err(Rejection::InvalidClaim(ClaimName::fixed(name))),
        },
        Some(_) => return Err(Rejection::InvalidClaim(ClaimName::fixed(name))),
    };
    UnixTime::from_secs(secs)
        .map(Some)
        .ok_or(Rejection::InvalidClaim(ClaimName::fixed(name)))
}

/// Signs `claims` as a compact JWS with `key`: `{"alg", "typ": "JWT"[, "kid"]}`.
pub fn sign(key: &SigningKey, claims: &Value, with_kid: bool) -> String {
    let mut header = serde_json::json!({"alg": key.algorithm().jose_name(), "typ": "JWT"});
    if with_kid {
        header["kid"] = Value::String(key.kid().to_owned());
    }
    let mut token = b64url_encode(&serde_json::to_vec(&header).expect("JSON"));
    token.push('.');
    token.push_str(&b64url_encode(&serde_json::to_vec(claims).expect("JSON")));
    let signature = key.sign(token.as_bytes());
    token.push('.');
    token.push_str(&b64url_encode(&signature));
    token
}

#[cfg(test)]
mod tests {
    use super::*;
    use duo_workflow_domain::mapping::GITLAB_SHAPE;

    fn seg(v: &Value) -> String {
        b64url_encode(&serde_json::to_vec(v).unwrap())
    }

    fn token(header: &Value, payload: &Value) -> String {
        format!("{}.{}.c2ln", seg(header), seg(payload))
    }

    fn parse(t: &str) -> Result<UnverifiedToken<'_>, Rejection> {
        UnverifiedToken::parse(t, DEFAULT_MAX_TOKEN_BYTES)
    }

    #[test]
    fn a_well_formed_token_parses() {
        let t = token(
            &serde_json::json!({"alg": "RS256", "kid": "k1"}),
            &serde_json::json!({"iss": "a"}),
        );
        let p = parse(&t).unwrap();
        assert_eq!(p.kid(), Some("k1"));
        assert_eq!(p.claimed_issuer(), Ok("a"));
    }

    #[test]
    fn structure_is_checked_before_decoding() {
        let long = "a".repeat(DEFAULT_MAX_TOKEN_BYTES + 1);
        assert!(matches!(parse(&long), Err(Rejection::TooLong { .. })));
        for bad in [
            "a.b",
            "a.b.c.d.e",
            "a..c",
            ".b.c",
            "a.b.",
            "a.b.c=",
            "a.b.c d",
            "a+b.c.d",
            &".".repeat(5000),
        ] {
            assert!(
                matches!(parse(bad), Err(Rejection::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn headers_that_import_trust_are_refused() {
        for param in REFUSED_HEADER_PARAMS {
            let mut h = serde_json::json!({"alg": "RS256"});
            h[param] = serde_json::json!("x");
            let t = token(&h, &serde_json::json!({}));
            assert_eq!(parse(&t).err(), Some(Rejection::UnsupportedHeader(param)));
        }
    }

    #[test]
    fn alg_must_be_a_known_string() {
        for alg in [
            serde_json::json!("none"),
            serde_json::json!("NONE"),
            serde_json::json!("HS256"),
            serde_json::json!(1),
            Value::Null,
        ] {
            let t = token(&serde_json::json!({"alg": alg}), &serde_json::json!({}));
            assert_eq!(parse(&t).err(), Some(Rejection::UnsupportedAlgorithm));
        }
        let t = token(&serde_json::json!({"typ": "JWT"}), &serde_json::json!({}));
        assert_eq!(parse(&t).err(), Some(Rejection::UnsupportedAlgorithm));
    }

    #[test]
    fn kid_must_be_a_short_string() {
        for kid in [
            serde_json::json!(7),
            serde_json::json!(""),
            serde_json::json!("k".repeat(257)),
        ] {
            let t = token(
                &serde_json::json!({"alg": "RS256", "kid": kid}),
                &serde_json::json!({}),
            );
            assert_eq!(parse(&t).err(), Some(Rejection::InvalidKeyId));
        }
    }

    #[test]
    fn duplicate_members_and_non_objects_are_refused() {
        let dup = format!(
            "{}.{}.c2ln",
            b64url_encode(br#"{"alg":"RS256","alg":"none"}"#),
            seg(&serde_json::json!({}))
        );
        assert!(matches!(parse(&dup), Err(Rejection::Malformed(_))));
        let dup = format!(
            "{}.{}.c2ln",
            seg(&serde_json::json!({"alg":"RS256"})),
            b64url_encode(br#"{"iss":"a","iss":"b"}"#)
        );
        assert!(matches!(parse(&dup), Err(Rejection::Malformed(_))));
        let arr = format!(
            "{}.{}.c2ln",
            seg(&serde_json::json!({"alg":"RS256"})),
            b64url_encode(b"[1]")
        );
        assert!(matches!(parse(&arr), Err(Rejection::Malformed(_))));
        let deep = format!(
            "{}.{}.c2ln",
            seg(&serde_json::json!({"alg":"RS256"})),
            b64url_encode(
                format!("{{\"a\":{}1{}}}", "[".repeat(1000), "]".repeat(1000)).as_bytes()
            )
        );
        assert!(matches!(parse(&deep), Err(Rejection::Malformed(_))));
        let huge = format!(
            "{}.{}.c2ln",
            seg(&serde_json::json!({"alg":"RS256"})),
            b64url_encode(br#"{"exp":1e400}"#)
        );
        assert!(matches!(parse(&huge), Err(Rejection::Malformed(_))));
    }

    #[test]
    fn claim_types_are_checked() {
        let read = |payload: Value| read_claims(payload.as_object().unwrap(), &GITLAB_SHAPE);
        let base = serde_json::json!({"iss": "i", "aud": "a", "exp": 100});
        assert!(read(base.clone()).is_ok());
        let cases = [
            ("exp", serde_json::json!("100")),
            ("exp", serde_json::json!(-1)),
            ("exp", serde_json::json!(1e300)),
            ("exp", serde_json::json!(u64::MAX)),
            ("nbf", serde_json::json!(true)),
            ("iat", serde_json::json!([1])),
            ("aud", serde_json::json!(5)),
            ("aud", serde_json::json!(["a", 5])),
            ("iss", serde_json::json!(5)),
            ("sub", serde_json::json!({"x": 1})),
            ("scopes", serde_json::json!("duo_workflow_execute_workflow")),
            ("scopes", serde_json::json!([1])),
            ("duo_seat_count", serde_json::json!(-3)),
        ];
        for (name, value) in cases {
            let mut p = base.clone();
            p[name] = value.clone();
            assert_eq!(
                read(p).err(),
                Some(Rejection::InvalidClaim(ClaimName::fixed(name))),
                "{name} = {value}"
            );
        }
        let mut p = base.clone();
        p["exp"] = serde_json::json!(100.9);
        p["duo_seat_count"] = serde_json::json!(12);
        p["aud"] = serde_json::json!(["x", "a"]);
        let c = read(p).unwrap();
        assert_eq!(c.expires_at.unwrap().as_secs(), 100);
        assert_eq!(c.duo_seat_count.as_deref(), Some("12"));
        assert_eq!(c.audience, vec!["x".to_owned(), "a".to_owned()]);
    }

    #[test]
    fn a_providers_claims_are_read_by_its_mapping() {
        use duo_workflow_domain::mapping::{Audiences, ClaimMapping};
        let mapping = ClaimMapping::new(
            Audiences::Listed(vec!["dws".into()]),
            vec![ClaimName::new("scp"), ClaimName::new("scope")],
            ClaimName::new("azp"),
            None,
        )
        .unwrap();
        let read = |payload: Value| read_claims(payload.as_object().unwrap(), &mapping);
        let base = serde_json::json!({
            "iss": "i", "aud": "dws", "exp": 100, "sub": "sa-1", "azp": "inst-1",
            "scope": "duo_chat openid",
        });
        let c = read(base.clone()).unwrap();
        assert_eq!(c.caller_instance.as_deref(), Some("inst-1"));
        assert_eq!(c.subject.as_deref(), Some("sa-1"));
        assert_eq!(
            c.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            ["duo_chat", "openid"]
        );
        assert_eq!(c.scope_evidence.found_in, Some(ClaimName::new("scope")));
        for (name, value) in [
            ("azp", serde_json::json!(7)),
            ("scope", serde_json::json!(["a", 1])),
        ] {
            let mut p = base.clone();
            p[name] = value;
            assert_eq!(
                read(p).err(),
                Some(Rejection::InvalidClaim(ClaimName::new(name)))
            );
        }
    }
}
