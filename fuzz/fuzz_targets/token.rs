//! Fuzzes the token path: `UnverifiedToken::parse`, `verify` against a fixed key set,
//! `into_claims`, and the whole `JwtAuthenticator`.
//!
//! The first input byte picks the mode:
//! - even: the rest is a token, as a client would send it. The keys are generated afresh by each
//!   fuzzing process, so no input can carry a valid signature: any signature that verifies, or any
//!   token the authenticator accepts, is a forgery and aborts the run.
//! - odd: the rest is `header JSON 0xFF payload JSON` (no UTF-8 text contains 0xFF). The target
//!   signs them with a trusted key (chosen by the mode byte) so that the fuzzer explores the claim
//!   parsing and checks behind a valid signature. Whatever is accepted must satisfy the security
//!   invariants (header, issuer, audience, expiry), and the same token with one bit changed must
//!   not be accepted.

#![no_main]

use std::sync::{Arc, OnceLock};

use duo_workflow_adapters::authenticator::JwtAuthenticator;
use duo_workflow_adapters::jose::keys::PublicKey;
use duo_workflow_adapters::jose::signing::{generate_pem, SigningKey};
use duo_workflow_adapters::jose::token::{UnverifiedToken, DEFAULT_MAX_TOKEN_BYTES};
use duo_workflow_adapters::sources::StaticKeySource;
use duo_workflow_domain::keys::{Algorithm, KeySet};
use duo_workflow_domain::policy::ClaimChecks;
use duo_workflow_domain::ports::{Authenticator, Clock, KeySource, VerificationError};
use duo_workflow_domain::request::BearerToken;
use duo_workflow_domain::{Issuer, ServiceName, UnixTime, VerifiedClaims};
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

const ISSUER: &str = "https://issuer.test";
const SERVICE: &str = "gitlab-duo-workflow-service";
/// The fixed "now" of the authenticator's clock (seed inputs use it for `exp`, `iat`, `nbf`).
const NOW: i64 = 1_750_000_000;
const LEEWAY: i64 = 60;
const REFUSED_HEADER_PARAMS: [&str; 7] = ["jwk", "jku", "x5u", "x5c", "crit", "zip", "b64"];

struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> UnixTime {
        UnixTime::from_secs(NOW).expect("valid time")
    }
}

struct Fixture {
    /// RS256, ES256, EdDSA.
    keys: Vec<SigningKey>,
    set: KeySet<PublicKey>,
    authenticator: JwtAuthenticator,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let keys: Vec<SigningKey> = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
            .into_iter()
            .map(|alg| SigningKey::from_pem(&generate_pem(alg).unwrap()).unwrap())
            .collect();
        let issuer_keys = || {
            keys.iter()
                .map(|k| k.public_key().clone().into_issuer_key(None))
                .collect::<Vec<_>>()
        };
        let source = StaticKeySource::new(
            "fuzz",
            Issuer::new(ISSUER),
            vec![],
            issuer_keys(),
            UnixTime::from_secs(NOW).unwrap(),
        )
        .unwrap();
        let authenticator = JwtAuthenticator::new(
            vec![Arc::new(source) as Arc<dyn KeySource<PublicKey>>],
            ClaimChecks::new(ServiceName::new(SERVICE)),
            Arc::new(FixedClock),
        )
        .unwrap();
        let (set, _) = KeySet::new(issuer_keys());
        Fixture {
            keys,
            set,
            authenticator,
        }
    })
}

fn authenticate(token: &str) -> Result<VerifiedClaims, VerificationError> {
    futures::executor::block_on(
        fixture()
            .authenticator
            .authenticate(&BearerToken::new(token)),
    )
}

/// Parses with the default cap and with none; returns whether a key of the set verified it.
fn parse_and_verify(token: &str) -> bool {
    let mut verified = false;
    for max in [DEFAULT_MAX_TOKEN_BYTES, usize::MAX] {
        if let Ok(parsed) = UnverifiedToken::parse(token, max) {
            let _ = (parsed.claimed_issuer(), parsed.kid(), parsed.algorithm());
            if let Ok(proof) = parsed.verify(&fixture().set, usize::MAX) {
                verified = true;
                let _ = parsed.into_claims(proof, &duo_workflow_domain::mapping::GITLAB_SHAPE);
            }
        }
    }
    verified
}

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The top-level member names of a JSON object, in order, duplicates kept.
fn member_names(json: &[u8]) -> Option<Vec<String>> {
    struct Names;
    impl<'de> Visitor<'de> for Names {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let mut names = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                names.push(name);
            }
            Ok(names)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let names = (&mut de).deserialize_map(Names).ok()?;
    de.end().ok()?;
    Some(names)
}

fn raw(data: &[u8]) {
    let token = String::from_utf8_lossy(data);
    assert!(
        !parse_and_verify(&token),
        "a signature made up by the fuzzer verified"
    );
    assert!(
        authenticate(&token).is_err(),
        "the authenticator accepted a token made up by the fuzzer"
    );
}

fn signed(mode: u8, data: &[u8]) {
    let f = fixture();
    let key = match (mode >> 1) & 7 {
        0 => &f.keys[0],
        1..=3 => &f.keys[1],
        _ => &f.keys[2],
    };
    let (header, payload) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => return,
    };
    let input = format!("{}.{}", b64(header), b64(payload));
    let token = format!("{input}.{}", b64(&key.sign(input.as_bytes())));
    parse_and_verify(&token);
    let Ok(verified) = authenticate(&token) else {
        return;
    };

    // Accepted: check everything the checklist requires of an accepted token.
    let names = member_names(header).expect("accepted header is a JSON object");
    let unique: std::collections::HashSet<&String> = names.iter().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "accepted header with duplicate members"
    );
    let header: Value = serde_json::from_slice(header).unwrap();
    assert_eq!(
        header["alg"].as_str(),
        Some(key.algorithm().jose_name()),
        "accepted a header whose alg is not the key's"
    );
    for param in REFUSED_HEADER_PARAMS {
        assert!(
            header.get(param).is_none(),
            "accepted a header with {param}"
        );
    }
    if let Some(kid) = header.get("kid") {
        assert_eq!(
            kid.as_str(),
            Some(key.kid()),
            "accepted a kid of another key"
        );
    }
    let names = member_names(payload).expect("accepted payload is a JSON object");
    let unique: std::collections::HashSet<&String> = names.iter().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "accepted payload with duplicate members"
    );
    let payload: Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(payload["iss"].as_str(), Some(ISSUER));
    let audience_ok = match &payload["aud"] {
        Value::String(a) => a == SERVICE,
        Value::Array(all) => all.iter().any(|a| a.as_str() == Some(SERVICE)),
        _ => false,
    };
    assert!(
        audience_ok,
        "accepted a token whose aud does not name the service"
    );
    let exp = payload["exp"]
        .as_f64()
        .expect("accepted a token without a numeric exp");
    assert!(exp > (NOW - LEEWAY) as f64, "accepted an expired token");
    assert_eq!(verified.expires_at().as_secs(), exp as i64);
    for time in ["nbf", "iat"] {
        if let Some(t) = payload.get(time) {
            let t = t.as_f64().expect("accepted a non-numeric time claim");
            assert!(t <= (NOW + LEEWAY) as f64, "accepted a future {time}");
        }
    }
    let claims = verified.claims();
    assert_eq!(claims.issuer.as_str(), ISSUER);

    // The same token with any one bit changed is refused.
    let mut tampered = token.clone().into_bytes();
    let at = (data.len() * 31 + mode as usize) % tampered.len();
    tampered[at] ^= 1 << (mode % 7);
    let tampered = String::from_utf8_lossy(&tampered);
    if tampered != token {
        assert!(
            authenticate(&tampered).is_err(),
            "accepted a token with one bit changed"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        raw(rest);
    } else {
        signed(mode, rest);
    }
});
