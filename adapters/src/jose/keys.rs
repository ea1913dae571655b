//! Public keys: parsed once when a key set loads, then used to verify signatures.

use std::sync::atomic::{AtomicU64, Ordering};

use duo_workflow_domain::keys::{Algorithm, Algorithms, IssuerKey};
use duo_workflow_domain::KeyId;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use ring::{agreement, digest};
use rsa::pkcs8::der::asn1::{AnyRef, BitStringRef, UintRef};
use rsa::pkcs8::der::{pem, Decode, Encode};
use rsa::pkcs8::spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};
use serde_json::{json, Value};

use super::b64url_encode;

/// RSA moduli outside 2048..=8192 bits are refused (ring refuses them too, at verification).
const RSA_MIN_MODULUS_BITS: usize = 2048;
const RSA_MAX_MODULUS_BITS: usize = 8192;
/// The only RSA public exponent accepted unless a source allows others (checklist row 28).
const RSA_EXPONENT_F4: [u8; 3] = [0x01, 0x00, 0x01];

static SIGNATURE_CHECKS: AtomicU64 = AtomicU64::new(0);

/// How many signature checks this process has made: what a flood of bad tokens costs, for
/// tests, benchmarks and metrics.
pub fn signature_checks() -> u64 {
    SIGNATURE_CHECKS.load(Ordering::Relaxed)
}

/// What a key source accepts beyond the safe defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyPolicy {
    /// RSA exponents other than 65537 (still odd, at least 3, at most 32 bits).
    pub any_rsa_exponent: bool,
}

/// The Ed25519 encodings of points of small order (1, 2, 4, 8), and of `y = p` and `y = p + 1`
/// (non-canonical encodings of two of them), compared with the sign bit cleared. A public key
/// among them lets anyone forge signatures that verify (e.g. the identity and signature `01‖00…`).
const ED25519_SMALL_ORDER: [[u8; 32]; 7] = [
    [0; 32],
    {
        let mut one = [0; 32];
        one[0] = 1;
        one
    },
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    ed25519_p_plus(-1),
    ed25519_p_plus(0),
    ed25519_p_plus(1),
];

/// The little-endian encoding of `p + delta` for the field prime `p = 2^255 - 19`.
const fn ed25519_p_plus(delta: i8) -> [u8; 32] {
    let mut v = [0xff; 32];
    v[31] = 0x7f;
    v[0] = (0xed_i16 + delta as i16) as u8;
    v
}

/// Public key material of one of the supported kinds. A key verifies only the algorithms of its
/// kind ([`PublicKey::family`]), and its key set may narrow that further.
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
    /// Uncompressed SEC1 point (`04 || x || y`).
    P384 {
        point: Vec<u8>,
    },
    Ed25519 {
        x: Vec<u8>,
    },
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({}, {})", self.kind(), self.thumbprint())
    }
}

/// The OIDs of the SubjectPublicKeyInfo algorithms and curves read and written here.
mod oid {
    use rsa::pkcs8::ObjectIdentifier;

    pub const RSA_ENCRYPTION: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    pub const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    pub const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    pub const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
    pub const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
}

impl PublicKey {
    /// An RSA key: a modulus of 2048 to 8192 bits and an odd exponent of at least 3 (65537 is
    /// required unless the source allows others: [`PublicKey::check`]).
    pub fn rsa(n: &[u8], e: &[u8]) -> Result<Self, String> {
        let n = strip_zeros(n);
        let e = strip_zeros(e);
        let bits =
            n.len().saturating_sub(1) * 8 + n.first().map_or(0, |b| 8 - b.leading_zeros() as usize);
        if !(RSA_MIN_MODULUS_BITS..=RSA_MAX_MODULUS_BITS).contains(&bits) {
            return Err(format!("RSA modulus of {bits} bits is outside 2048..=8192"));
        }
        if n.last().is_some_and(|b| b & 1 == 0) {
            return Err("RSA modulus is even".into());
        }
        let small = e.len() == 1 && e[0] < 3;
        if e.is_empty() || e.len() > 4 || small || e.last().is_some_and(|b| b & 1 == 0) {
            return Err("RSA public exponent is not an odd number from 3 to 2^32".into());
        }
        Ok(PublicKey::Rsa {
            n: n.to_vec(),
            e: e.to_vec(),
        })
    }

    /// A P-256 key: an uncompressed point on the curve (checked with ring's own point validation).
    pub fn p256(point: &[u8]) -> Result<Self, String> {
        if point.len() != 65 || point[0] != 0x04 {
            return Err("P-256 key is not an uncompressed point".into());
        }
        if !point_is_valid(&agreement::ECDH_P256, point) {
            return Err("P-256 point is not on the curve".into());
        }
        Ok(PublicKey::P256 {
            point: point.to_vec(),
        })
    }

    /// A P-384 key: an uncompressed point on the curve (ring's point validation, as for P-256).
    pub fn p384(point: &[u8]) -> Result<Self, String> {
        if point.len() != 97 || point[0] != 0x04 {
            return Err("P-384 key is not an uncompressed point".into());
        }
        if !point_is_valid(&agreement::ECDH_P384, point) {
            return Err("P-384 point is not on the curve".into());
        }
        Ok(PublicKey::P384 {
            point: point.to_vec(),
        })
    }

    /// An Ed25519 key: 32 bytes, a canonical encoding of a point not of small order.
    pub fn ed25519(x: &[u8]) -> Result<Self, String> {
        let Ok(bytes) = <[u8; 32]>::try_from(x) else {
            return Err("Ed25519 key is not 32 bytes".into());
        };
        let mut y = bytes;
        y[31] &= 0x7f;
        if ED25519_SMALL_ORDER.contains(&y) {
            return Err("Ed25519 key is a point of small order (anyone can forge for it)".into());
        }
        // y >= p: the last byte 0x7f, the middle all 0xff, the first at least 0xed.
        if y[31] == 0x7f && y[1..31].iter().all(|&b| b == 0xff) && y[0] >= 0xed {
            return Err("Ed25519 key is not a canonical encoding".into());
        }
        Ok(PublicKey::Ed25519 { x: x.to_vec() })
    }

    /// What a source's policy adds to the checks every key passes when it is built.
    pub fn check(&self, policy: KeyPolicy) -> Result<(), String> {
        match self {
            PublicKey::Rsa { e, .. } if !policy.any_rsa_exponent && e[..] != RSA_EXPONENT_F4 => {
                Err("RSA public exponent is not 65537 (the source does not allow others)".into())
            }
            _ => Ok(()),
        }
    }

    /// The kind of key, for messages: `RSA`, `P-256`, `P-384`, `Ed25519`.
    pub fn kind(&self) -> &'static str {
        match self {
            PublicKey::Rsa { .. } => "RSA",
            PublicKey::P256 { .. } => "P-256",
            PublicKey::P384 { .. } => "P-384",
            PublicKey::Ed25519 { .. } => "Ed25519",
        }
    }

    /// Every algorithm a key of this kind can verify: an RSA key PKCS#1 v1.5 and PSS with the
    /// three hashes, an EC key the one ECDSA of its curve, an Ed25519 key EdDSA.
    pub fn family(&self) -> Algorithms {
        match self {
            PublicKey::Rsa { .. } => Algorithms::of(&Algorithm::RSA),
            PublicKey::P256 { .. } => Algorithms::one(Algorithm::ES256),
            PublicKey::P384 { .. } => Algorithms::one(Algorithm::ES384),
            PublicKey::Ed25519 { .. } => Algorithms::one(Algorithm::EdDSA),
        }
    }

    /// Verifies `signature` over `message` with `algorithm`, which must be of this key's
    /// family (anything else fails without a signature check). Wrong lengths, DER-encoded
    /// ECDSA and zero `r`/`s` fail here: ring accepts only fixed-size signatures of the right
    /// shape.
    pub fn verify(&self, algorithm: Algorithm, message: &[u8], sig: &[u8]) -> bool {
        use signature as s;
        let rsa: Option<&s::RsaParameters> = match algorithm {
            Algorithm::RS256 => Some(&s::RSA_PKCS1_2048_8192_SHA256),
            Algorithm::RS384 => Some(&s::RSA_PKCS1_2048_8192_SHA384),
            Algorithm::RS512 => Some(&s::RSA_PKCS1_2048_8192_SHA512),
            Algorithm::PS256 => Some(&s::RSA_PSS_2048_8192_SHA256),
            Algorithm::PS384 => Some(&s::RSA_PSS_2048_8192_SHA384),
            Algorithm::PS512 => Some(&s::RSA_PSS_2048_8192_SHA512),
            Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA => None,
        };
        let other: &dyn s::VerificationAlgorithm = match (self, algorithm) {
            (PublicKey::Rsa { n, e }, _) => {
                let Some(params) = rsa else { return false };
                SIGNATURE_CHECKS.fetch_add(1, Ordering::Relaxed);
                return RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok();
            }
            (PublicKey::P256 { .. }, Algorithm::ES256) => &s::ECDSA_P256_SHA256_FIXED,
            (PublicKey::P384 { .. }, Algorithm::ES384) => &s::ECDSA_P384_SHA384_FIXED,
            (PublicKey::Ed25519 { .. }, Algorithm::EdDSA) => &s::ED25519,
            _ => return false,
        };
        let bytes = match self {
            PublicKey::P256 { point } | PublicKey::P384 { point } => point,
            PublicKey::Ed25519 { x } => x,
            PublicKey::Rsa { .. } => unreachable!("RSA returned above"),
        };
        SIGNATURE_CHECKS.fetch_add(1, Ordering::Relaxed);
        UnparsedPublicKey::new(other, bytes)
            .verify(message, sig)
            .is_ok()
    }

    /// The public members of this key's JWK, in RFC 7638's lexicographic order.
    fn required_members(&self) -> Value {
        let ec = |crv: &str, point: &[u8]| {
            let half = (point.len() - 1) / 2;
            json!({
                "crv": crv, "kty": "EC",
                "x": b64url_encode(&point[1..1 + half]), "y": b64url_encode(&point[1 + half..]),
            })
        };
        match self {
            PublicKey::Rsa { n, e } => {
                json!({"e": b64url_encode(e), "kty": "RSA", "n": b64url_encode(n)})
            }
            PublicKey::P256 { point } => ec("P-256", point),
            PublicKey::P384 { point } => ec("P-384", point),
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

    /// The key as a public JWK for `algorithm` (the one its signer uses), for publishing.
    pub fn to_jwk(&self, kid: &str, algorithm: Algorithm) -> Value {
        let mut jwk = self.required_members();
        let obj = jwk.as_object_mut().expect("object");
        obj.insert("kid".into(), Value::String(kid.into()));
        obj.insert("use".into(), Value::String("sig".into()));
        obj.insert("alg".into(), Value::String(algorithm.jose_name().into()));
        jwk
    }

    /// `BEGIN PUBLIC KEY` PEM (SubjectPublicKeyInfo).
    pub fn to_pem(&self) -> String {
        pem::encode_string("PUBLIC KEY", pem::LineEnding::LF, &self.to_spki_der())
            .expect("a PEM of a few KiB")
    }

    fn to_spki_der(&self) -> Vec<u8> {
        let rsa;
        let (algorithm, parameters, key): (_, Option<AnyRef<'_>>, &[u8]) = match self {
            PublicKey::Rsa { n, e } => {
                let pkcs1 = rsa::pkcs1::RsaPublicKey {
                    modulus: UintRef::new(n).expect("a modulus of at most 8192 bits"),
                    public_exponent: UintRef::new(e).expect("an exponent of 32 bits"),
                };
                rsa = pkcs1.to_der().expect("DER of an RSA public key");
                (oid::RSA_ENCRYPTION, Some(AnyRef::NULL), &rsa)
            }
            PublicKey::P256 { point } => (oid::EC_PUBLIC_KEY, Some((&oid::P256).into()), point),
            PublicKey::P384 { point } => (oid::EC_PUBLIC_KEY, Some((&oid::P384).into()), point),
            PublicKey::Ed25519 { x } => (oid::ED25519, None, x),
        };
        SubjectPublicKeyInfoRef {
            algorithm: AlgorithmIdentifierRef {
                oid: algorithm,
                parameters,
            },
            subject_public_key: BitStringRef::from_bytes(key).expect("a key of a few KiB"),
        }
        .to_der()
        .expect("DER of a SubjectPublicKeyInfo")
    }

    /// A SubjectPublicKeyInfo (DER) as a key: RSA, P-256, P-384 or Ed25519.
    fn from_spki_der(der: &[u8]) -> Result<Self, String> {
        let spki = SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| format!("PUBLIC KEY block is not a SubjectPublicKeyInfo: {e}"))?;
        let key = spki
            .subject_public_key
            .as_bytes()
            .ok_or("PUBLIC KEY bit string has unused bits")?;
        let params = spki.algorithm.parameters;
        match spki.algorithm.oid {
            oid::RSA_ENCRYPTION if params.is_none_or(|p| p.is_null()) => rsa_from_pkcs1(key),
            oid::EC_PUBLIC_KEY => match spki.algorithm.parameters_oid() {
                Ok(oid::P256) => PublicKey::p256(key),
                Ok(oid::P384) => PublicKey::p384(key),
                _ => Err("EC PUBLIC KEY on a curve other than P-256 or P-384".into()),
            },
            oid::ED25519 if params.is_none() => PublicKey::ed25519(key),
            other => Err(format!(
                "PUBLIC KEY of algorithm {other} is not an RSA, P-256, P-384 or Ed25519 key"
            )),
        }
    }

    /// Public keys from PEM text: `PUBLIC KEY` (SubjectPublicKeyInfo: RSA, P-256, P-384,
    /// Ed25519) and `RSA PUBLIC KEY` (PKCS#1) blocks. Fails on the first block that is not a
    /// usable key.
    pub fn from_pem_all(text: &str) -> Result<Vec<PublicKey>, String> {
        Self::from_pem_each(text)?.into_iter().collect()
    }

    /// Each PEM block as a key or the reason it is unusable (weak keys included); fails only
    /// when the text holds no public key block at all, or a private key.
    pub fn from_pem_each(text: &str) -> Result<Vec<Result<PublicKey, String>>, String> {
        let mut keys = Vec::new();
        for block in super::pem_blocks(text) {
            let (label, der) = match pem::decode_vec(block.as_bytes()) {
                Ok(decoded) => decoded,
                Err(e) => {
                    keys.push(Err(format!("PEM block is not valid PEM: {e}")));
                    continue;
                }
            };
            let key = match label {
                "PUBLIC KEY" => Self::from_spki_der(&der),
                "RSA PUBLIC KEY" => rsa_from_pkcs1(&der),
                other if other.contains("PRIVATE") => {
                    return Err(format!("a {other} block where public keys were expected"))
                }
                other => Err(format!("unsupported PEM block {other}")),
            };
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("no PEM public key found".into());
        }
        Ok(keys)
    }

    /// This key as a member of an issuer's key set, with the given `kid` or its thumbprint,
    /// verifying every algorithm of its kind.
    pub fn into_issuer_key(self, kid: Option<String>) -> IssuerKey<PublicKey> {
        let kid = kid.unwrap_or_else(|| self.thumbprint());
        IssuerKey {
            kid: Some(KeyId::new(kid)),
            algorithms: self.family(),
            key: self,
        }
    }
}

/// Whether a SEC1 uncompressed point is a valid public key on `curve`: ring validates a peer's
/// point (on the curve, not the identity) before an ECDH agreement, so one throwaway agreement
/// asks it.
fn point_is_valid(curve: &'static agreement::Algorithm, point: &[u8]) -> bool {
    let rng = ring::rand::SystemRandom::new();
    let Ok(ours) = agreement::EphemeralPrivateKey::generate(curve, &rng) else {
        return false;
    };
    let peer = agreement::UnparsedPublicKey::new(curve, point);
    agreement::agree_ephemeral(ours, &peer, |_| ()).is_ok()
}

fn rsa_from_pkcs1(der: &[u8]) -> Result<PublicKey, String> {
    let key = rsa::pkcs1::RsaPublicKey::from_der(der)
        .map_err(|e| format!("malformed RSA public key: {e}"))?;
    PublicKey::rsa(key.modulus.as_bytes(), key.public_exponent.as_bytes())
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::signing::{generate_pem, SigningKey};

    #[test]
    fn ed25519_points_of_small_order_and_non_canonical_encodings_are_refused() {
        for point in ED25519_SMALL_ORDER {
            for sign in [0, 0x80] {
                let mut p = point;
                p[31] |= sign;
                assert!(PublicKey::ed25519(&p).is_err(), "{p:02x?}");
            }
        }
        // y = p + 2 .. 2^255 - 1: not canonical, whatever their order.
        for low in [0xef, 0xf0, 0xff] {
            let mut p = [0xff; 32];
            p[31] = 0x7f;
            p[0] = low;
            assert!(PublicKey::ed25519(&p).is_err());
        }
        let real = SigningKey::from_pem(&generate_pem(Algorithm::EdDSA).unwrap()).unwrap();
        assert!(real.public_key().check(KeyPolicy::default()).is_ok());
    }

    #[test]
    fn p256_points_must_be_on_the_curve() {
        let real = SigningKey::from_pem(&generate_pem(Algorithm::ES256).unwrap()).unwrap();
        let PublicKey::P256 { point } = real.public_key() else {
            panic!("a P-256 key")
        };
        assert!(PublicKey::p256(point).is_ok());
        let mut off = point.clone();
        off[64] ^= 1;
        assert!(PublicKey::p256(&off).is_err());
        assert!(PublicKey::p256(&[&[4][..], &[0; 64]].concat()).is_err());
    }

    #[test]
    fn rsa_keys_are_sized_in_bits_and_their_exponents_checked() {
        let mut n = vec![0xc5; 256];
        n[255] |= 1;
        assert!(PublicKey::rsa(&n, &[1, 0, 1]).is_ok());
        let mut short = n.clone();
        short[0] = 0x7f; // 2047 bits
        assert!(PublicKey::rsa(&short, &[1, 0, 1]).is_err());
        let mut even = n.clone();
        even[255] &= 0xfe;
        assert!(PublicKey::rsa(&even, &[1, 0, 1]).is_err());
        for e in [&[1][..], &[2], &[0], &[1, 0, 0], &[1, 0, 0, 0, 1]] {
            assert!(PublicKey::rsa(&n, e).is_err(), "e = {e:?}");
        }
        let three = PublicKey::rsa(&n, &[3]).unwrap();
        assert!(three.check(KeyPolicy::default()).is_err());
        assert!(three
            .check(KeyPolicy {
                any_rsa_exponent: true
            })
            .is_ok());
    }

    #[test]
    fn p384_points_must_be_on_the_curve() {
        let real = SigningKey::from_pem(&generate_pem(Algorithm::ES384).unwrap()).unwrap();
        assert_eq!(real.algorithm(), Algorithm::ES384);
        let PublicKey::P384 { point } = real.public_key() else {
            panic!("a P-384 key")
        };
        assert!(PublicKey::p384(point).is_ok());
        let mut off = point.clone();
        off[96] ^= 1;
        assert!(PublicKey::p384(&off).is_err());
        assert!(PublicKey::p384(&[&[4][..], &[0; 96]].concat()).is_err());
        // A P-256 point is not a P-384 key, and the other way round.
        assert!(PublicKey::p256(point).is_err());
    }

    /// A key of each kind signs, and verifies exactly the algorithms of its kind.
    #[test]
    fn each_kind_verifies_its_own_algorithms_only() {
        for (generate, signs) in [
            (Algorithm::RS256, &Algorithm::RSA[..]),
            (Algorithm::ES256, &[Algorithm::ES256][..]),
            (Algorithm::ES384, &[Algorithm::ES384][..]),
            (Algorithm::EdDSA, &[Algorithm::EdDSA][..]),
        ] {
            let pem = generate_pem(generate).unwrap();
            for alg in signs {
                let key = SigningKey::from_pem(&pem)
                    .unwrap()
                    .with_algorithm(*alg)
                    .unwrap();
                let sig = key.sign(b"message");
                for other in Algorithm::ALL {
                    assert_eq!(
                        key.public_key().verify(other, b"message", &sig),
                        other == *alg,
                        "signed {alg}, verified as {other}"
                    );
                }
            }
            let key = SigningKey::from_pem(&pem).unwrap();
            let foreign = Algorithm::ALL
                .into_iter()
                .find(|a| !key.public_key().family().contains(*a))
                .unwrap();
            assert!(key.with_algorithm(foreign).is_err());
        }
    }

    #[test]
    fn public_keys_of_every_kind_round_trip_through_pem_and_openssls_forms_load() {
        for alg in [
            Algorithm::RS256,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ] {
            let key = SigningKey::from_pem(&generate_pem(alg).unwrap()).unwrap();
            let pem = key.public_key().to_pem();
            assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
            assert_eq!(
                PublicKey::from_pem_all(&format!("junk before\n{pem}\n{pem}")).unwrap(),
                vec![key.public_key().clone(); 2]
            );
        }
        // `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 | openssl pkey -pubout`
        let p384 = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEzw/6XcR+1tqK4IdQm87FSHLtl/rXoYco
M+v+XGT1na9aU0opN4mrDsV0LkcbOoY1bszuISbNi6JCFR5Dvp1H/bxkdhfYCUrq
rv3FhPyflrxwXmOXJ+1WXGypQ2fMcNp6
-----END PUBLIC KEY-----
";
        let key = PublicKey::from_pem_all(p384).unwrap();
        assert!(matches!(&key[..], [PublicKey::P384 { .. }]));
        assert_eq!(key[0].family(), Algorithms::one(Algorithm::ES384));
        // The same base64 wrapped at 76 columns (MIME's width, some tools' output).
        let wide = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEzw/6XcR+1tqK4IdQm87FSHLtl/rXoYcoM+v+XGT1na9a
U0opN4mrDsV0LkcbOoY1bszuISbNi6JCFR5Dvp1H/bxkdhfYCUrqrv3FhPyflrxwXmOXJ+1WXGyp
Q2fMcNp6
-----END PUBLIC KEY-----
";
        assert_eq!(PublicKey::from_pem_all(wide).as_ref().ok(), Some(&key));
        // An RSA key as PKCS#1 (`openssl rsa -RSAPublicKey_out`) is the same key as its SPKI.
        let rsa = SigningKey::from_pem(&generate_pem(Algorithm::RS256).unwrap()).unwrap();
        let PublicKey::Rsa { n, e } = rsa.public_key() else {
            panic!("an RSA key")
        };
        let pkcs1 = rsa::pkcs1::RsaPublicKey {
            modulus: UintRef::new(n).unwrap(),
            public_exponent: UintRef::new(e).unwrap(),
        }
        .to_der()
        .unwrap();
        let text = pem::encode_string("RSA PUBLIC KEY", pem::LineEnding::CRLF, &pkcs1).unwrap();
        assert_eq!(
            PublicKey::from_pem_all(&text).unwrap(),
            vec![rsa.public_key().clone()]
        );
        // What is not a usable public key says so, block by block.
        let each = PublicKey::from_pem_each(&format!(
            "{}-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            rsa.public_key().to_pem()
        ))
        .unwrap();
        assert!(each[0].is_ok() && each[1].is_err());
        assert!(PublicKey::from_pem_each(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
        assert!(PublicKey::from_pem_each("no pem here").is_err());
    }
}
