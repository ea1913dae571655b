//! JWK and JWKS parsing for key sources. Only public signature keys of the supported algorithms
//! survive; everything else is dropped with a reason, and the rest of the set is kept.

use duo_workflow_domain::keys::{Algorithm, IssuerKey, MAX_KEYS_PER_SOURCE, MAX_KID_LEN};
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
            if string_member(obj, "crv")? != Some("P-256") {
                return Err("EC curve other than P-256".into());
            }
            let (x, y) = (b64_member(obj, "x")?, b64_member(obj, "y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates are not 32 bytes".into());
            }
            PublicKey::p256(&[&[0x04][..], &x, &y].concat())?
        }
        "OKP" => {
            if string_member(obj, "crv")? != Some("Ed25519") {
                return Err("OKP curve other than Ed25519".into());
            }
            PublicKey::ed25519(&b64_member(obj, "x")?)?
        }
        other => return Err(format!("unsupported kty {other:?}")),
    };
    if let Some(alg) = string_member(obj, "alg")? {
        if Algorithm::from_jose(alg) != Some(key.algorithm()) {
            return Err(format!("alg {alg:?} does not fit a {kty} key"));
        }
    }
    Ok(IssuerKey {
        kid: kid.map(KeyId::new),
        algorithm: key.algorithm(),
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
