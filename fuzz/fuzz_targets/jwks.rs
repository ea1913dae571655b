//! Fuzzes the key-material parsers a key source feeds with provider responses and files:
//! `parse_jwks` / `parse_jwk`, `jwks_uri_of` (OIDC discovery), `PublicKey::from_pem_each` over
//! PEM text and over the bytes as SubjectPublicKeyInfo and PKCS#1 blocks, `SigningKey::from_pem`.
//!
//! Beyond "no panic": every key that parses is usable (verification and thumbprint do not panic)
//! and round-trips through its published JWK and PEM forms; `jwks_uri_of` never accepts a document
//! naming another issuer; no private or symmetric JWK survives; a JWKS yields at most 100 keys.

#![no_main]

use duo_workflow_adapters::jose::jwk::{parse_jwk, parse_jwks};
use duo_workflow_adapters::jose::keys::PublicKey;
use duo_workflow_adapters::jose::signing::SigningKey;
use duo_workflow_adapters::sources::remote::jwks_uri_of;
use duo_workflow_domain::keys::{Algorithm, IssuerKey, MAX_KEYS_PER_SOURCE};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const ISSUERS: [&str; 2] = ["https://issuer.test", "https://issuer.test/"];
const PRIVATE_OR_SYMMETRIC: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

fn usable(key: &IssuerKey<PublicKey>) {
    assert!(!key.algorithms.is_empty());
    assert_eq!(key.key.family().intersection(key.algorithms), key.algorithms);
    for alg in Algorithm::ALL {
        let _ = key.key.verify(alg, b"message", &[0x5a; 256]);
        let _ = key.key.verify(alg, b"message", &[0x5a; 64]);
    }
    let _ = key.key.thumbprint();
    let alg = key.algorithms.iter().next().expect("not empty");
    let again = parse_jwk(&key.key.to_jwk("kid", alg)).expect("a published JWK parses");
    assert_eq!(again.key, key.key, "JWK round trip changed the key");
    let from_pem = PublicKey::from_pem_all(&key.key.to_pem()).expect("a published PEM parses");
    assert_eq!(
        from_pem,
        vec![key.key.clone()],
        "PEM round trip changed the key"
    );
}

fn jwk_entry(entry: &Value) {
    if let Ok(key) = parse_jwk(entry) {
        usable(&key);
        for member in PRIVATE_OR_SYMMETRIC {
            assert!(
                entry.get(member).is_none(),
                "kept a JWK carrying {member:?}"
            );
        }
        assert_ne!(entry["kty"], "oct", "kept a symmetric JWK");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = parse_jwks(data, Default::default()) {
        assert!(parsed.keys.len() <= MAX_KEYS_PER_SOURCE);
        for key in &parsed.keys {
            usable(key);
        }
    }
    if let Ok(doc) = serde_json::from_slice::<Value>(data) {
        jwk_entry(&doc);
        if let Some(entries) = doc.get("keys").and_then(Value::as_array) {
            entries.iter().take(8).for_each(jwk_entry);
        }
    }
    for issuer in ISSUERS {
        if jwks_uri_of(data, issuer).is_ok() {
            let doc: Value = serde_json::from_slice(data).unwrap();
            let claimed = doc["issuer"]
                .as_str()
                .expect("accepted a document without issuer");
            assert_eq!(
                claimed.trim_end_matches('/'),
                issuer.trim_end_matches('/'),
                "accepted a discovery document of another issuer"
            );
        }
    }

    let text = String::from_utf8_lossy(data);
    let _ = SigningKey::from_pem(&text);
    for text in [
        text.into_owned(),
        armour("PUBLIC KEY", data),
        armour("RSA PUBLIC KEY", data),
    ] {
        if let Ok(keys) = PublicKey::from_pem_each(&text) {
            for key in keys.into_iter().flatten() {
                usable(&key.into_issuer_key(None));
            }
        }
    }
});

/// PEM armour around any bytes, so the DER parsers behind it see them.
fn armour(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}
