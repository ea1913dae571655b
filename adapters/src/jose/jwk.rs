//! JWK and JWKS parsing for key sources. Only public signature keys of the supported algorithms
//! survive; everything else is dropped with a reason, and the rest of the set is kept.

use duo_workflow_domain::keys::{
    Algorithm, Algorithms, IssuerKey, MAX_KEYS_PER_SOURCE, MAX_KID_LEN,
};
use duo_workflow_domain::KeyId;
use serde_json::{Map, Value};

use super::b64url_decode;
use super::json::strict_from_slice;
use super::keys::{KeyPolicy, PublicKey};

/// Members that only a private or symmetric key has. A JWKS that publishes them leaked a secret.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

/// The usable keys of a JWKS document, and why each other entry was dropped.
#[derive(Debug, Default)]
pub struct ParsedJwks {
    pub keys: Vec<IssuerKey<PublicKey>>,
    pub dropped: Vec<String>,
}

/// Parses `{"keys": [...]}`, as strictly as a token (no member name twice, at any depth), keeping
/// the keys `policy` accepts. Fails only when the document itself is not a JWKS.
pub fn parse_jwks(bytes: &[u8], policy: KeyPolicy) -> Result<ParsedJwks, String> {
    let doc: Value =
        strict_from_slice(bytes).map_err(|e| format!("JWKS is not strict JSON: {e}"))?;
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS has no \"keys\" array")?;
    let mut parsed = ParsedJwks::default();
    for (i, entry) in entries.iter().enumerate() {
        if parsed.keys.len() == MAX_KEYS_PER_SOURCE {
            parsed.dropped.push(format!(
                "entries from #{i} on: more than {MAX_KEYS_PER_SOURCE} keys"
            ));
            break;
        }
        match parse_jwk(entry).and_then(|k| k.key.check(policy).map(|()| k)) {
            Ok(key) => parsed.keys.push(key),
            Err(why) => {
                let kid = entry.get("kid").and_then(Value::as_str).map(capped_kid);
                parsed.dropped.push(match kid {
                    Some(kid) => format!("entry #{i} (kid {kid:?}): {why}"),
                    None => format!("entry #{i} (no kid): {why}"),
                });
            }
        }
    }
    Ok(parsed)
}

/// One JWK entry into a key, or the reason it is unusable.
pub fn parse_jwk(entry: &Value) -> Result<IssuerKey<PublicKey>, String> {
    let obj = entry.as_object().ok_or("not an object")?;
    let kty = string_member(obj, "kty")?.ok_or("no kty")?;
    if kty == "oct" {
        return Err("symmetric key (kty oct)".into());
    }
    if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| obj.contains_key(**m)) {
        return Err(format!("carries private member {member:?}"));
    }
    if let Some(usage) = string_member(obj, "use")? {
        if usage != "sig" {
            return Err(format!("use {usage:?} is not sig"));
        }
    }
    let kid = match string_member(obj, "kid")? {
        Some(k) if k.is_empty() || k.len() > MAX_KID_LEN => {
            return Err("kid empty or too long".into())
        }
        k => k.map(str::to_owned),
    };
    let key = match kty {
        "RSA" => PublicKey::rsa(&b64_member(obj, "n")?, &b64_member(obj, "e")?)?,
        "EC" => {
            let curve = string_member(obj, "crv")?;
            let size = match curve {
                Some("P-256") => 32,
                Some("P-384") => 48,
                _ => return Err("EC curve other than P-256 or P-384".into()),
            };
            let (x, y) = (b64_member(obj, "x")?, b64_member(obj, "y")?);
            if x.len() != size || y.len() != size {
                return Err(format!("EC coordinates are not {size} bytes"));
            }
            let point = [&[0x04][..], &x, &y].concat();
            if size == 32 {
                PublicKey::p256(&point)?
            } else {
                PublicKey::p384(&point)?
            }
        }
        "OKP" => {
            if string_member(obj, "crv")? != Some("Ed25519") {
                return Err("OKP curve other than Ed25519".into());
            }
            PublicKey::ed25519(&b64_member(obj, "x")?)?
        }
        other => return Err(format!("unsupported kty {other:?}")),
    };
    // `alg` pins the key to one algorithm of its kind (no PS256 with a key published for
    // RS256); without it the key verifies its whole kind, as far as its source allows.
    let algorithms = match string_member(obj, "alg")? {
        None => key.family(),
        Some(alg) => match Algorithm::from_jose(alg) {
            Some(a) if key.family().contains(a) => Algorithms::one(a),
            _ => return Err(format!("alg {alg:?} does not fit a {} key", key.kind())),
        },
    };
    Ok(IssuerKey {
        kid: kid.map(KeyId::new),
        algorithms,
        key,
    })
}

/// A provider's `kid` as logs show it: at most [`MAX_KID_LEN`] bytes.
fn capped_kid(kid: &str) -> String {
    let mut end = kid.len().min(MAX_KID_LEN);
    while !kid.is_char_boundary(end) {
        end -= 1;
    }
    kid[..end].to_owned()
}

fn string_member<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{name} is not a string")),
    }
}

fn b64_member(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let s = string_member(obj, name)?.ok_or_else(|| format!("no {name}"))?;
    b64url_decode(s).ok_or_else(|| format!("{name} is not base64url"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::signing::{generate_pem, SigningKey};

    fn jwk_of(alg: Algorithm) -> Value {
        SigningKey::from_pem(&generate_pem(alg).unwrap())
            .unwrap()
            .public_key()
            .to_jwk("k", alg)
    }

    #[test]
    fn a_jwks_alg_pins_its_key_and_must_fit_its_kind() {
        let mut rsa = jwk_of(Algorithm::RS256);
        assert_eq!(
            parse_jwk(&rsa).unwrap().algorithms,
            Algorithms::one(Algorithm::RS256)
        );
        rsa["alg"] = "PS384".into();
        assert_eq!(
            parse_jwk(&rsa).unwrap().algorithms,
            Algorithms::one(Algorithm::PS384)
        );
        // Azure AD publishes no alg: the key verifies its kind, as far as its source allows.
        rsa.as_object_mut().unwrap().remove("alg");
        assert_eq!(parse_jwk(&rsa).unwrap().algorithms.iter().count(), 6);
        let mut p384 = jwk_of(Algorithm::ES384);
        assert_eq!(p384["crv"], "P-384");
        assert_eq!(
            parse_jwk(&p384).unwrap().algorithms,
            Algorithms::one(Algorithm::ES384)
        );
        for wrong in ["ES256", "RS256", "EdDSA"] {
            p384["alg"] = wrong.into();
            assert!(parse_jwk(&p384)
                .unwrap_err()
                .contains("does not fit a P-384 key"));
        }
        let mut ed = jwk_of(Algorithm::EdDSA);
        ed["alg"] = "Ed25519".into();
        assert_eq!(
            parse_jwk(&ed).unwrap().algorithms,
            Algorithms::one(Algorithm::EdDSA)
        );
        let mut p256 = jwk_of(Algorithm::ES256);
        p256["crv"] = "P-384".into();
        assert!(parse_jwk(&p256).unwrap_err().contains("not 48 bytes"));
        p256["crv"] = "P-521".into();
        assert!(parse_jwk(&p256).is_err());
    }
}
