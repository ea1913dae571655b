//! Public keys: parsed once when a key set loads, then used to verify signatures.

use duo_workflow_domain::keys::{Algorithm, IssuerKey};
use duo_workflow_domain::KeyId;
use ring::digest;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{json, Value};

use super::der::{self, SpkiKey};
use super::{b64url_encode, pem};

/// RSA moduli below 2048 bits are refused (ring refuses them too, at verification).
const RSA_MIN_MODULUS_BYTES: usize = 256;
const RSA_MAX_MODULUS_BYTES: usize = 1024;

/// Public key material of one of the supported algorithms. Each key verifies exactly one algorithm.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point (`04 || x || y`).
    P256 {
        point: Vec<u8>,
    },
    Ed25519 {
        x: Vec<u8>,
    },
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({}, {})", self.algorithm(), self.thumbprint())
    }
}

impl PublicKey {
    pub fn rsa(n: &[u8], e: &[u8]) -> Result<Self, String> {
        let n = strip_zeros(n);
        let e = strip_zeros(e);
        if n.len() < RSA_MIN_MODULUS_BYTES || n.len() > RSA_MAX_MODULUS_BYTES {
            return Err(format!(
                "RSA modulus of {} bits is outside 2048..=8192",
                n.len() * 8
            ));
        }
        if e.is_empty() || e.len() > 4 || e.last().is_some_and(|b| b & 1 == 0) {
            return Err("RSA public exponent is not a small odd number".into());
        }
        Ok(PublicKey::Rsa {
            n: n.to_vec(),
            e: e.to_vec(),
        })
    }

    pub fn p256(point: &[u8]) -> Result<Self, String> {
        if point.len() != 65 || point[0] != 0x04 {
            return Err("P-256 key is not an uncompressed point".into());
        }
        Ok(PublicKey::P256 {
            point: point.to_vec(),
        })
    }

    pub fn ed25519(x: &[u8]) -> Result<Self, String> {
        if x.len() != 32 {
            return Err("Ed25519 key is not 32 bytes".into());
        }
        Ok(PublicKey::Ed25519 { x: x.to_vec() })
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            PublicKey::Rsa { .. } => Algorithm::RS256,
            PublicKey::P256 { .. } => Algorithm::ES256,
            PublicKey::Ed25519 { .. } => Algorithm::EdDSA,
        }
    }

    /// Verifies `signature` over `message`. Wrong lengths, DER-encoded ECDSA and zero `r`/`s`
    /// fail here: ring accepts only fixed-size signatures of the right shape.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match self {
            PublicKey::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
            PublicKey::P256 { point } => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            PublicKey::Ed25519 { x } => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, sig)
                .is_ok(),
        }
    }

    /// The public members of this key's JWK, in RFC 7638's lexicographic order.
    fn required_members(&self) -> Value {
        match self {
            PublicKey::Rsa { n, e } => {
                json!({"e": b64url_encode(e), "kty": "RSA", "n": b64url_encode(n)})
            }
            PublicKey::P256 { point } => json!({
                "crv": "P-256", "kty": "EC",
                "x": b64url_encode(&point[1..33]), "y": b64url_encode(&point[33..65]),
            }),
            PublicKey::Ed25519 { x } => {
                json!({"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(x)})
            }
        }
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url): the `kid` of the local authority's keys.
    pub fn thumbprint(&self) -> String {
        // serde_json's map is ordered by key, and the members hold no characters to escape,
        // so this is exactly RFC 7638's canonical form.
        let canonical = serde_json::to_vec(&self.required_members()).expect("JSON of strings");
        b64url_encode(digest::digest(&digest::SHA256, &canonical).as_ref())
    }

    /// The key as a public JWK, for publishing.
    pub fn to_jwk(&self, kid: &str) -> Value {
        let mut jwk = self.required_members();
        let obj = jwk.as_object_mut().expect("object");
        obj.insert("kid".into(), Value::String(kid.into()));
        obj.insert("use".into(), Value::String("sig".into()));
        obj.insert(
            "alg".into(),
            Value::String(self.algorithm().jose_name().into()),
        );
        jwk
    }

    /// `BEGIN PUBLIC KEY` PEM (SubjectPublicKeyInfo).
    pub fn to_pem(&self) -> String {
        let spki = match self {
            PublicKey::Rsa { n, e } => der::spki(&SpkiKey::Rsa(&der::rsa_public_key(n, e))),
            PublicKey::P256 { point } => der::spki(&SpkiKey::P256(point)),
            PublicKey::Ed25519 { x } => der::spki(&SpkiKey::Ed25519(x)),
        };
        pem::encode("PUBLIC KEY", &spki)
    }

    /// Public keys from PEM text: `PUBLIC KEY` (SubjectPublicKeyInfo: RSA, P-256, Ed25519) and
    /// `RSA PUBLIC KEY` (PKCS#1) blocks.
    pub fn from_pem_all(text: &str) -> Result<Vec<PublicKey>, String> {
        let mut keys = Vec::new();
        for block in pem::parse_all(text)? {
            let key = match block.label.as_str() {
                "PUBLIC KEY" => match der::parse_spki(&block.der) {
                    Some(SpkiKey::Rsa(pkcs1)) => rsa_from_pkcs1(pkcs1)?,
                    Some(SpkiKey::P256(point)) => PublicKey::p256(point)?,
                    Some(SpkiKey::Ed25519(x)) => PublicKey::ed25519(x)?,
                    None => {
                        return Err("PUBLIC KEY block is not an RSA, P-256 or Ed25519 key".into())
                    }
                },
                "RSA PUBLIC KEY" => rsa_from_pkcs1(&block.der)?,
                other if other.contains("PRIVATE") => {
                    return Err(format!("a {other} block where public keys were expected"))
                }
                other => return Err(format!("unsupported PEM block {other}")),
            };
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("no PEM public key found".into());
        }
        Ok(keys)
    }

    /// This key as a member of an issuer's key set, with the given `kid` or its thumbprint.
    pub fn into_issuer_key(self, kid: Option<String>) -> IssuerKey<PublicKey> {
        let kid = kid.unwrap_or_else(|| self.thumbprint());
        IssuerKey {
            kid: Some(KeyId::new(kid)),
            algorithm: self.algorithm(),
            key: self,
        }
    }
}

fn rsa_from_pkcs1(der: &[u8]) -> Result<PublicKey, String> {
    let (n, e) = der::parse_rsa_public_key(der).ok_or("malformed RSA public key")?;
    PublicKey::rsa(n, e)
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}
