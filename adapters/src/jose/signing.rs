//! Private keys of the local authority (and of `token mint`): loaded from PEM (PKCS#1 and PKCS#8
//! RSA, PKCS#8 P-256, P-384 and Ed25519), generated, and used to sign. Key material never reaches
//! a log or an error message.

use duo_workflow_domain::keys::{Algorithm, Algorithms, IssuerKey};
use duo_workflow_domain::KeyId;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use rsa::pkcs8::der::pem;
use serde_json::Value;

use super::keys::PublicKey;

enum Pair {
    Rsa(RsaKeyPair),
    P256(EcdsaKeyPair),
    P384(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A signing key with its public half, the algorithm it signs with, and its `kid` (the RFC 7638
/// thumbprint of the public half).
pub struct SigningKey {
    pair: Pair,
    algorithm: Algorithm,
    public: PublicKey,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, kid {})", self.algorithm(), self.kid)
    }
}

impl SigningKey {
    /// Loads the first private key block of `text`; an RSA key signs RS256 (see
    /// [`SigningKey::with_algorithm`]).
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let blocks = super::pem_blocks(text);
        let block = blocks
            .iter()
            .find(|b| {
                b.lines()
                    .next()
                    .is_some_and(|l| l.trim_end().ends_with("PRIVATE KEY-----"))
            })
            .ok_or(
                "no PEM private key block (expected BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)",
            )?;
        // The decoder's errors say nothing of the key's contents.
        let (label, der) = pem::decode_vec(block.as_bytes())
            .map_err(|e| format!("the private key block is not valid PEM: {e}"))?;
        let rng = SystemRandom::new();
        let ecdsa = |alg| EcdsaKeyPair::from_pkcs8(alg, &der, &rng);
        let pair = match label {
            "RSA PRIVATE KEY" => Pair::Rsa(
                RsaKeyPair::from_der(&der).map_err(|e| format!("RSA PRIVATE KEY rejected: {e}"))?,
            ),
            "PRIVATE KEY" => {
                if let Ok(k) = RsaKeyPair::from_pkcs8(&der) {
                    Pair::Rsa(k)
                } else if let Ok(k) = ecdsa(&signature::ECDSA_P256_SHA256_FIXED_SIGNING) {
                    Pair::P256(k)
                } else if let Ok(k) = ecdsa(&signature::ECDSA_P384_SHA384_FIXED_SIGNING) {
                    Pair::P384(k)
                } else if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
                    Pair::Ed25519(k)
                } else {
                    return Err(
                        "PRIVATE KEY is not an RSA (2048 to 8192 bits), P-256, P-384 or Ed25519 key"
                            .into(),
                    );
                }
            }
            "EC PRIVATE KEY" => {
                return Err("SEC1 EC PRIVATE KEY is not supported; convert it with `openssl pkcs8 -topk8 -nocrypt`".into())
            }
            other => return Err(format!("{other} is not supported (encrypted keys are not)")),
        };
        Ok(Self::from_pair(pair))
    }

    fn from_pair(pair: Pair) -> Self {
        let (public, algorithm) = match &pair {
            Pair::Rsa(k) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                let public = PublicKey::rsa(&c.n, &c.e).expect("ring accepted this RSA key");
                (public, Algorithm::RS256)
            }
            Pair::P256(k) => (
                PublicKey::p256(k.public_key().as_ref()).expect("ring's point"),
                Algorithm::ES256,
            ),
            Pair::P384(k) => (
                PublicKey::p384(k.public_key().as_ref()).expect("ring's point"),
                Algorithm::ES384,
            ),
            Pair::Ed25519(k) => (
                PublicKey::ed25519(k.public_key().as_ref()).expect("32 bytes"),
                Algorithm::EdDSA,
            ),
        };
        let kid = public.thumbprint();
        Self {
            pair,
            algorithm,
            public,
            kid,
        }
    }

    /// The same key signing with `algorithm`, which must be of its kind (RS256 to PS512 for an
    /// RSA key; an EC or Ed25519 key has one).
    pub fn with_algorithm(mut self, algorithm: Algorithm) -> Result<Self, String> {
        if !self.public.family().contains(algorithm) {
            return Err(format!(
                "a {} key does not sign {algorithm}",
                self.public.kind()
            ));
        }
        self.algorithm = algorithm;
        Ok(self)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The public half as a key of an issuer's set, verifying only what this key signs.
    pub fn issuer_key(&self) -> IssuerKey<PublicKey> {
        IssuerKey {
            kid: Some(KeyId::new(self.kid.clone())),
            algorithms: Algorithms::one(self.algorithm),
            key: self.public.clone(),
        }
    }

    /// The public half as a JWK: this key's `kid` and the algorithm it signs with.
    pub fn jwk(&self) -> Value {
        self.public.to_jwk(&self.kid, self.algorithm)
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Rsa(k) => {
                let encoding: &dyn signature::RsaEncoding = match self.algorithm {
                    Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_SHA384,
                    Algorithm::PS512 => &signature::RSA_PSS_SHA512,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(encoding, &rng, message, &mut sig)
                    .expect("RSA signing with a valid key and buffer");
                sig
            }
            Pair::P256(k) | Pair::P384(k) => k
                .sign(&rng, message)
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
            Pair::Ed25519(k) => k.sign(message).as_ref().to_vec(),
        }
    }
}

/// Generates a new private key for `algorithm` (RSA 2048 for RS* and PS*) and returns it as
/// PKCS#8 PEM (`BEGIN PRIVATE KEY`).
pub fn generate_pem(algorithm: Algorithm) -> Result<String, String> {
    let rng = SystemRandom::new();
    let ecdsa = |alg| {
        EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| format!("{algorithm} key generation failed"))
    };
    let der = match algorithm {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| format!("RSA key generation failed: {e}"))?;
            key.to_pkcs8_der()
                .map_err(|e| format!("PKCS#8 encoding failed: {e}"))?
                .as_bytes()
                .to_vec()
        }
        Algorithm::ES256 => ecdsa(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)?,
        Algorithm::ES384 => ecdsa(&signature::ECDSA_P384_SHA384_FIXED_SIGNING)?,
        Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| "Ed25519 key generation failed")?
            .as_ref()
            .to_vec(),
    };
    pem::encode_string("PRIVATE KEY", pem::LineEnding::LF, &der)
        .map_err(|e| format!("PEM encoding failed: {e}"))
}
