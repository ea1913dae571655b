//! Private keys of the local authority: loaded from PEM (PKCS#1 and PKCS#8 RSA, PKCS#8 P-256 and
//! Ed25519), generated, and used to sign. Key material never reaches a log or an error message.

use duo_workflow_domain::keys::Algorithm;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};

use super::keys::PublicKey;
use super::pem;

enum Pair {
    Rsa(RsaKeyPair),
    P256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A signing key with its public half and its `kid` (the RFC 7638 thumbprint of the public half).
pub struct SigningKey {
    pair: Pair,
    public: PublicKey,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, kid {})", self.algorithm(), self.kid)
    }
}

impl SigningKey {
    /// Loads the first private key block of `text`.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let blocks = pem::parse_all(text)?;
        let block = blocks
            .iter()
            .find(|b| b.label.ends_with("PRIVATE KEY"))
            .ok_or(
                "no PEM private key block (expected BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)",
            )?;
        let rng = SystemRandom::new();
        let pair = match block.label.as_str() {
            "RSA PRIVATE KEY" => Pair::Rsa(
                RsaKeyPair::from_der(&block.der).map_err(|e| format!("RSA PRIVATE KEY rejected: {e}"))?,
            ),
            "PRIVATE KEY" => {
                if let Ok(k) = RsaKeyPair::from_pkcs8(&block.der) {
                    Pair::Rsa(k)
                } else if let Ok(k) =
                    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &block.der, &rng)
                {
                    Pair::P256(k)
                } else if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&block.der) {
                    Pair::Ed25519(k)
                } else {
                    return Err("PRIVATE KEY is not an RSA (2048 to 8192 bits), P-256 or Ed25519 key".into());
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
        let public = match &pair {
            Pair::Rsa(k) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                PublicKey::rsa(&c.n, &c.e).expect("ring accepted this RSA key")
            }
            Pair::P256(k) => PublicKey::p256(k.public_key().as_ref()).expect("ring's point"),
            Pair::Ed25519(k) => PublicKey::ed25519(k.public_key().as_ref()).expect("32 bytes"),
        };
        let kid = public.thumbprint();
        Self { pair, public, kid }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.public.algorithm()
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .expect("RSA signing with a valid key and buffer");
                sig
            }
            Pair::P256(k) => k
                .sign(&rng, message)
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
            Pair::Ed25519(k) => k.sign(message).as_ref().to_vec(),
        }
    }
}

/// Generates a new private key and returns it as PKCS#8 PEM (`BEGIN PRIVATE KEY`).
pub fn generate_pem(algorithm: Algorithm) -> Result<String, String> {
    let rng = SystemRandom::new();
    let der = match algorithm {
        Algorithm::RS256 => {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| format!("RSA key generation failed: {e}"))?;
            key.to_pkcs8_der()
                .map_err(|e| format!("PKCS#8 encoding failed: {e}"))?
                .as_bytes()
                .to_vec()
        }
        Algorithm::ES256 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| "P-256 key generation failed")?
                .as_ref()
                .to_vec()
        }
        Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| "Ed25519 key generation failed")?
            .as_ref()
            .to_vec(),
    };
    Ok(pem::encode("PRIVATE KEY", &der))
}
