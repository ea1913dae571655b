//! Property tests of the hostile-input boundary (SECURITY-CHECKLIST rows 1–14, 18–19):
//!
//! - parsing and full authentication never panic, on arbitrary strings and on mutated tokens;
//! - the authenticator accepts a validly signed token of a static source, and rejects every token
//!   that differs from it in any byte (header, payload or signature), every splice of it with
//!   another valid token, and every token signed by a key the source does not hold;
//! - the key-material parsers (`parse_jwks`, `parse_jwk`, `jwks_uri_of`,
//!   `PublicKey::from_pem_each` over PEM, SubjectPublicKeyInfo and PKCS#1 blocks,
//!   `SigningKey::from_pem`) never panic on arbitrary input.
//!
//! Keys (RS256, ES256, EdDSA; trusted and outsider) are generated once per test binary. Case
//! counts are modest so the file runs in seconds in debug mode; raise them for a soak run with
//! `PROPTEST_CASES=5000 cargo test -p duo-workflow-adapters --test properties`.

use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use duo_workflow_adapters::authenticator::JwtAuthenticator;
use duo_workflow_adapters::jose::jwk::{parse_jwk, parse_jwks};
use duo_workflow_adapters::jose::keys::PublicKey;
use duo_workflow_adapters::jose::signing::{generate_pem, SigningKey};
use duo_workflow_adapters::jose::token::{sign, UnverifiedToken, DEFAULT_MAX_TOKEN_BYTES};
use duo_workflow_adapters::sources::remote::jwks_uri_of;
use duo_workflow_adapters::sources::StaticKeySource;
use duo_workflow_domain::keys::{Algorithm, IssuerKey, KeySet};
use duo_workflow_domain::policy::ClaimChecks;
use duo_workflow_domain::ports::{Authenticator, Clock, KeySource, VerificationError};
use duo_workflow_domain::request::BearerToken;
use duo_workflow_domain::{Issuer, ServiceName, UnixTime, VerifiedClaims};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use rsa::pkcs8::der::pem;
use serde_json::{json, Map, Value};

const ISSUER: &str = "https://issuer.test";
/// A second issuer, served by the outsider keys: its keys must never verify `ISSUER`'s tokens.
const OTHER_ISSUER: &str = "https://other.test";
const SERVICE: &str = "gitlab-duo-workflow-service";
const NOW: i64 = 1_750_000_000;

struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> UnixTime {
        UnixTime::from_secs(NOW).expect("a valid time")
    }
}

struct Fixture {
    /// RS256, ES256, EdDSA: the keys of `ISSUER`'s static source.
    trusted: Vec<SigningKey>,
    /// RS256, ES256, EdDSA: keys of `OTHER_ISSUER`, unknown to `ISSUER`'s source.
    outsiders: Vec<SigningKey>,
    trusted_set: KeySet<PublicKey>,
    authenticator: JwtAuthenticator,
}

fn keys() -> Vec<SigningKey> {
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
        .into_iter()
        .map(|alg| SigningKey::from_pem(&generate_pem(alg).expect("key generation")).expect("PEM"))
        .collect()
}

fn issuer_keys(keys: &[SigningKey]) -> Vec<IssuerKey<PublicKey>> {
    keys.iter()
        .map(|k| k.public_key().clone().into_issuer_key(None))
        .collect()
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let trusted = keys();
        let outsiders = keys();
        let now = UnixTime::from_secs(NOW).unwrap();
        let source = |name: &str, issuer: &str, keys: &[SigningKey]| {
            Arc::new(
                StaticKeySource::new(name, Issuer::new(issuer), vec![], issuer_keys(keys), now)
                    .expect("static source"),
            ) as Arc<dyn KeySource<PublicKey>>
        };
        let authenticator = JwtAuthenticator::new(
            vec![
                source("trusted", ISSUER, &trusted),
                source("other", OTHER_ISSUER, &outsiders),
            ],
            ClaimChecks::new(ServiceName::new(SERVICE)),
            Arc::new(FixedClock),
        )
        .expect("authenticator");
        let (trusted_set, _) = KeySet::new(issuer_keys(&trusted));
        Fixture {
            trusted,
            outsiders,
            trusted_set,
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

/// Everything a caller can do with a string, with the default cap and with none: must not panic.
/// Returns whether any key of `ISSUER` verified its signature (whatever its claims), and what the
/// authenticator made of it.
fn exercise(token: &str) -> (bool, Result<VerifiedClaims, VerificationError>) {
    let mut verified = false;
    for max in [DEFAULT_MAX_TOKEN_BYTES, usize::MAX] {
        if let Ok(parsed) = UnverifiedToken::parse(token, max) {
            let _ = (parsed.claimed_issuer(), parsed.kid(), parsed.algorithm());
            if let Ok(proof) = parsed.verify(&fixture().trusted_set, usize::MAX) {
                verified = true;
                let _ = parsed.into_claims(proof, &duo_workflow_domain::mapping::GITLAB_SHAPE);
            }
        }
    }
    (verified, authenticate(token))
}

/// Neither a signature check nor the authenticator accepts `token`.
fn refused(token: &str) -> bool {
    matches!(exercise(token), (false, Err(_)))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Integration tests have no lib.rs beside them: keep regressions next to this file.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    }
}

/// `PROPTEST_CASES` scales every property (its default is the proptest default of 256).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(default, |n| (n as u64 * default as u64 / 256).max(1) as u32)
}

// ---------------------------------------------------------------------------------------------
// Valid tokens

/// A validly signed, currently valid token of `ISSUER`.
#[derive(Debug, Clone)]
struct TokenSpec {
    key: usize,
    with_kid: bool,
    jti: u64,
    subject: String,
    scopes: Vec<&'static str>,
    lifetime: i64,
}

fn token_spec() -> impl Strategy<Value = TokenSpec> {
    (
        0..3usize,
        any::<bool>(),
        any::<u64>(),
        "[a-z0-9:]{0,16}",
        proptest::sample::subsequence(
            vec![
                "duo_workflow_execute_workflow",
                "duo_workflow_generate_token",
                "other",
            ],
            0..=3,
        ),
        1i64..86_400,
    )
        .prop_map(
            |(key, with_kid, jti, subject, scopes, lifetime)| TokenSpec {
                key,
                with_kid,
                jti,
                subject,
                scopes,
                lifetime,
            },
        )
}

impl TokenSpec {
    fn claims(&self) -> Value {
        json!({
            "iss": ISSUER,
            "aud": [SERVICE],
            "sub": self.subject,
            "jti": self.jti.to_string(),
            "iat": NOW - 30,
            "nbf": NOW - 30,
            "exp": NOW + self.lifetime,
            "scopes": self.scopes,
            "gitlab_realm": "saas",
        })
    }

    fn sign(&self) -> String {
        sign(&fixture().trusted[self.key], &self.claims(), self.with_kid)
    }

    /// Another valid token with different claims (so never the same signing input).
    fn other(&self, key: usize, with_kid: bool) -> TokenSpec {
        TokenSpec {
            key,
            with_kid,
            jti: self.jti.wrapping_add(1),
            ..self.clone()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Random JSON

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(vec![
            "alg", "kid", "typ", "jwk", "jku", "x5u", "x5c", "crit", "zip", "b64", "iss", "sub",
            "aud", "exp", "nbf", "iat", "jti", "scopes", "gitlab_realm", "gitlab_instance_id",
            "duo_seat_count", "keys", "kty", "n", "e", "x", "y", "crv", "d", "use", "issuer",
            "jwks_uri",
        ])
        .prop_map(str::to_owned),
        1 => ".{0,8}",
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (NOW - 100_000..NOW + 100_000).prop_map(|n| json!(n)),
        proptest::sample::select(vec![
            "RS256",
            "ES256",
            "EdDSA",
            "none",
            "None",
            "HS256",
            "RSA",
            "EC",
            "OKP",
            "oct",
            "P-256",
            "P-384",
            "Ed25519",
            "sig",
            "enc",
            ISSUER,
            OTHER_ISSUER,
            SERVICE,
            "",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
        ".{0,24}".prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..80).prop_map(|b| Value::String(b64(&b))),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((json_key(), inner), 0..8)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::vec((json_key(), json_value()), 0..8)
        .prop_map(|members| members.into_iter().collect())
}

/// JSON text serde_json's `Value` cannot produce: duplicates, deep nesting, odd numbers, garbage.
fn json_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        2 => json_object().prop_map(|m| serde_json::to_vec(&m).unwrap()),
        1 => (json_key(), json_value(), json_value()).prop_map(|(k, a, b)| {
            format!("{{{k:?}:{a},{k:?}:{b}}}").into_bytes()
        }),
        1 => (1usize..3000, prop::bool::ANY).prop_map(|(depth, arrays)| {
            let (open, close) = if arrays { ("[", "]") } else { ("{\"a\":", "}") };
            format!("{{\"x\":{}1{}}}", open.repeat(depth), close.repeat(depth)).into_bytes()
        }),
        1 => proptest::sample::select(vec![
            "1e400", "-1e400", "123456789012345678901234567890", "-0", "0.0000001", "1E+2",
            "NaN", "Infinity", "{\"exp\":1e400}", "{\"exp\":-0.5}", "{\"a\":\"\\ud800\"}",
            "{\"a\":1}trailing", " {} ", "{}\u{0}", "\u{feff}{}",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

// ---------------------------------------------------------------------------------------------
// Mutations of a valid token

#[derive(Debug, Clone)]
enum KidChoice {
    Remove,
    Trusted(usize),
    Outsider(usize),
    Value(Value),
}

#[derive(Debug, Clone)]
enum HeaderEdit {
    SetAlg(Value),
    RemoveAlg,
    Kid(KidChoice),
    /// Key material in the header (row 3): the trusted key's or an outsider's JWK.
    EmbedJwk(bool),
    Set(String, Value),
    Replace(Vec<u8>),
    /// The same JSON, serialized differently (pretty, reordered): different signing input.
    Reserialize,
}

#[derive(Debug, Clone)]
enum PayloadEdit {
    Set(String, Value),
    Remove(String),
    Replace(Vec<u8>),
    Reserialize,
}

#[derive(Debug, Clone)]
enum SigEdit {
    FlipBit(Index, u8),
    Truncate(Index),
    Append(Vec<u8>),
    Zero,
    Random(Vec<u8>),
    /// ECDSA `r || s` as ASN.1 DER (row 14).
    Der,
    /// `s` or `r` (or both) set to zero.
    ZeroHalf(u8),
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, char),
    Delete(Index, usize),
    Truncate(Index),
    /// Replace segment `i` of the token with segment `j`.
    CopySegment(usize, usize),
    /// Replace segment `i` with segment `i` of another valid token (key, kid or not).
    Splice(usize, usize, bool),
    AddSegments(Vec<String>),
    Header(HeaderEdit),
    Payload(PayloadEdit),
    Signature(SigEdit),
    /// Re-sign the (mutated) signing input with an outsider key.
    Resign(usize),
    /// Base64 with padding, or with whitespace (rows 6).
    Pad(usize),
    Whitespace(Index, char),
}

fn kid_choice() -> impl Strategy<Value = KidChoice> {
    prop_oneof![
        Just(KidChoice::Remove),
        (0..3usize).prop_map(KidChoice::Trusted),
        (0..3usize).prop_map(KidChoice::Outsider),
        json_leaf().prop_map(KidChoice::Value),
        (257usize..300).prop_map(|n| KidChoice::Value(Value::String("k".repeat(n)))),
    ]
}

fn header_edit() -> impl Strategy<Value = HeaderEdit> {
    prop_oneof![
        json_leaf().prop_map(HeaderEdit::SetAlg),
        proptest::sample::select(vec![
            "RS256", "ES256", "EdDSA", "none", "NONE", "HS256", "rs256"
        ])
        .prop_map(|a| HeaderEdit::SetAlg(Value::String(a.to_owned()))),
        Just(HeaderEdit::RemoveAlg),
        kid_choice().prop_map(HeaderEdit::Kid),
        any::<bool>().prop_map(HeaderEdit::EmbedJwk),
        (json_key(), json_value()).prop_map(|(k, v)| HeaderEdit::Set(k, v)),
        json_text().prop_map(HeaderEdit::Replace),
        Just(HeaderEdit::Reserialize),
    ]
}

fn payload_edit() -> impl Strategy<Value = PayloadEdit> {
    prop_oneof![
        3 => (json_key(), json_value()).prop_map(|(k, v)| PayloadEdit::Set(k, v)),
        1 => proptest::sample::select(vec!["iss", "aud", "exp", "iat", "nbf", "sub", "scopes"])
            .prop_map(|k| PayloadEdit::Remove(k.to_owned())),
        1 => json_text().prop_map(PayloadEdit::Replace),
        1 => Just(PayloadEdit::Reserialize),
    ]
}

fn sig_edit() -> impl Strategy<Value = SigEdit> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| SigEdit::FlipBit(i, b)),
        1 => any::<Index>().prop_map(SigEdit::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 1..8).prop_map(SigEdit::Append),
        1 => Just(SigEdit::Zero),
        1 => proptest::collection::vec(any::<u8>(), 0..600).prop_map(SigEdit::Random),
        1 => Just(SigEdit::Der),
        1 => (1u8..4).prop_map(SigEdit::ZeroHalf),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let token_char = proptest::sample::select(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ é\u{0}"
            .chars()
            .collect::<Vec<_>>(),
    );
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        2 => (any::<Index>(), token_char.clone()).prop_map(|(i, c)| Mutation::Insert(i, c)),
        2 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (0..3usize, 0..3usize).prop_map(|(i, j)| Mutation::CopySegment(i, j)),
        2 => (0..3usize, 0..3usize, any::<bool>()).prop_map(|(i, k, kid)| Mutation::Splice(i, k, kid)),
        1 => proptest::collection::vec("[A-Za-z0-9_-]{0,8}", 1..4).prop_map(Mutation::AddSegments),
        4 => header_edit().prop_map(Mutation::Header),
        4 => payload_edit().prop_map(Mutation::Payload),
        4 => sig_edit().prop_map(Mutation::Signature),
        2 => (0..3usize).prop_map(Mutation::Resign),
        1 => (0..3usize).prop_map(Mutation::Pad),
        1 => (any::<Index>(), proptest::sample::select(vec![' ', '\n', '\t', '\r']))
            .prop_map(|(i, c)| Mutation::Whitespace(i, c)),
    ]
}

fn segments(token: &str) -> Vec<String> {
    token.split('.').map(str::to_owned).collect()
}

/// Decodes segment `i` as a JSON object, edits it, re-encodes it. No-op when it does not decode.
fn edit_json(
    token: &str,
    i: usize,
    edit: impl FnOnce(&mut Map<String, Value>) -> Option<Vec<u8>>,
) -> String {
    let mut segs = segments(token);
    let Some(obj) = segs
        .get(i)
        .and_then(|s| unb64(s))
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.as_object().cloned())
    else {
        return token.to_owned();
    };
    let mut obj = obj;
    let bytes = edit(&mut obj).unwrap_or_else(|| serde_json::to_vec(&obj).unwrap());
    segs[i] = b64(&bytes);
    segs.join(".")
}

/// The same members, pretty-printed and in reverse order.
fn reserialize(obj: &Map<String, Value>) -> Vec<u8> {
    let mut members: Vec<_> = obj.iter().collect();
    members.reverse();
    let body: Vec<String> = members
        .into_iter()
        .map(|(k, v)| format!("  {}: {}", Value::String(k.clone()), v))
        .collect();
    format!("{{\n{}\n}}", body.join(",\n")).into_bytes()
}

fn edit_signature(token: &str, edit: &SigEdit) -> String {
    let mut segs = segments(token);
    let Some(mut sig) = segs.last().and_then(|s| unb64(s)) else {
        return token.to_owned();
    };
    match edit {
        SigEdit::FlipBit(i, bit) if !sig.is_empty() => {
            let i = i.index(sig.len());
            sig[i] ^= 1 << bit;
        }
        SigEdit::FlipBit(..) => {}
        SigEdit::Truncate(i) => sig.truncate(i.index(sig.len() + 1)),
        SigEdit::Append(more) => sig.extend_from_slice(more),
        SigEdit::Zero => sig.iter_mut().for_each(|b| *b = 0),
        SigEdit::Random(bytes) => sig = bytes.clone(),
        SigEdit::Der => sig = ecdsa_der(&sig),
        SigEdit::ZeroHalf(which) => {
            let half = sig.len() / 2;
            if which & 1 != 0 {
                sig[..half].iter_mut().for_each(|b| *b = 0);
            }
            if which & 2 != 0 {
                sig[half..].iter_mut().for_each(|b| *b = 0);
            }
        }
    }
    *segs.last_mut().unwrap() = b64(&sig);
    segs.join(".")
}

/// `r || s` as `SEQUENCE { INTEGER r, INTEGER s }`.
fn ecdsa_der(sig: &[u8]) -> Vec<u8> {
    let half = sig.len() / 2;
    let int = |v: &[u8]| {
        let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
        let mut v = v[start..].to_vec();
        if v.first().is_none_or(|b| b & 0x80 != 0) {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    };
    let mut body = int(&sig[..half]);
    body.extend(int(&sig[half..]));
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

/// `signed` collects the valid tokens a splice took segments from: putting all of one back
/// together rebuilds a genuinely signed token, which may be accepted.
fn apply(token: &str, m: &Mutation, spec: &TokenSpec, signed: &mut Vec<String>) -> String {
    let f = fixture();
    let bytes = token.as_bytes();
    let from_bytes = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    match m {
        Mutation::FlipBit(i, bit) if !bytes.is_empty() => {
            let mut b = bytes.to_vec();
            let at = i.index(b.len());
            b[at] ^= 1 << bit;
            from_bytes(b)
        }
        Mutation::SetByte(i, byte) if !bytes.is_empty() => {
            let mut b = bytes.to_vec();
            let at = i.index(b.len());
            b[at] = *byte;
            from_bytes(b)
        }
        Mutation::FlipBit(..) | Mutation::SetByte(..) => token.to_owned(),
        Mutation::Insert(i, c) | Mutation::Whitespace(i, c) => {
            let mut s = token.to_owned();
            let mut at = i.index(s.len() + 1);
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            s.insert(at, *c);
            s
        }
        Mutation::Delete(i, n) if !bytes.is_empty() => {
            let at = i.index(bytes.len());
            let mut b = bytes.to_vec();
            b.drain(at..(at + n).min(b.len()));
            from_bytes(b)
        }
        Mutation::Delete(..) => token.to_owned(),
        Mutation::Truncate(i) => from_bytes(bytes[..i.index(bytes.len() + 1)].to_vec()),
        Mutation::CopySegment(i, j) => {
            let mut segs = segments(token);
            if let (true, Some(s)) = (*i < segs.len(), segs.get(*j).cloned()) {
                segs[*i] = s;
            }
            segs.join(".")
        }
        Mutation::Splice(i, key, with_kid) => {
            let other = spec.other(*key, *with_kid).sign();
            signed.push(other.clone());
            let mut segs = segments(token);
            if *i < segs.len() {
                segs[*i] = segments(&other)[*i].clone();
            }
            segs.join(".")
        }
        Mutation::AddSegments(more) => format!("{token}.{}", more.join(".")),
        Mutation::Header(edit) => edit_json(token, 0, |h| {
            match edit {
                HeaderEdit::SetAlg(v) => {
                    h.insert("alg".into(), v.clone());
                }
                HeaderEdit::RemoveAlg => {
                    h.remove("alg");
                }
                HeaderEdit::Kid(choice) => match choice {
                    KidChoice::Remove => {
                        h.remove("kid");
                    }
                    KidChoice::Trusted(k) => {
                        h.insert("kid".into(), f.trusted[*k].kid().into());
                    }
                    KidChoice::Outsider(k) => {
                        h.insert("kid".into(), f.outsiders[*k].kid().into());
                    }
                    KidChoice::Value(v) => {
                        h.insert("kid".into(), v.clone());
                    }
                },
                HeaderEdit::EmbedJwk(outsider) => {
                    let key = if *outsider {
                        &f.outsiders[spec.key]
                    } else {
                        &f.trusted[spec.key]
                    };
                    h.insert("jwk".into(), key.jwk());
                }
                HeaderEdit::Set(k, v) => {
                    h.insert(k.clone(), v.clone());
                }
                HeaderEdit::Replace(bytes) => return Some(bytes.clone()),
                HeaderEdit::Reserialize => return Some(reserialize(h)),
            }
            None
        }),
        Mutation::Payload(edit) => edit_json(token, 1, |p| {
            match edit {
                PayloadEdit::Set(k, v) => {
                    p.insert(k.clone(), v.clone());
                }
                PayloadEdit::Remove(k) => {
                    p.remove(k);
                }
                PayloadEdit::Replace(bytes) => return Some(bytes.clone()),
                PayloadEdit::Reserialize => return Some(reserialize(p)),
            }
            None
        }),
        Mutation::Signature(edit) => edit_signature(token, edit),
        Mutation::Resign(k) => {
            let mut segs = segments(token);
            if segs.len() < 2 {
                return token.to_owned();
            }
            let input = format!("{}.{}", segs[0], segs[1]);
            let sig = f.outsiders[*k].sign(input.as_bytes());
            segs.truncate(2);
            segs.push(b64(&sig));
            segs.join(".")
        }
        Mutation::Pad(i) => {
            let mut segs = segments(token);
            if let Some(seg) = segs.get_mut(*i) {
                if let Some(bytes) = unb64(seg) {
                    *seg = if bytes.len() % 3 == 0 {
                        format!("{seg}=")
                    } else {
                        base64::engine::general_purpose::URL_SAFE.encode(&bytes)
                    };
                }
            }
            segs.join(".")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Arbitrary strings

fn arbitrary_token() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        "[A-Za-z0-9_-]{0,40}",
        json_text().prop_map(|b| b64(&b)),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| b64(&b)),
    ];
    prop_oneof![
        // Anything at all, including non-ASCII and control characters.
        any::<String>(),
        ".{0,300}",
        "[A-Za-z0-9_.=+/ -]{0,300}",
        // Many dots.
        (0usize..10_000).prop_map(|n| ".".repeat(n)),
        ("[A-Za-z0-9_-]{0,4}", 1usize..3000).prop_map(|(s, n)| format!("{s}.").repeat(n)),
        // Around and far beyond the length cap.
        ("[A-Za-z0-9_.-]{1,8}", 0usize..3000).prop_map(|(s, n)| s.repeat(n)),
        (DEFAULT_MAX_TOKEN_BYTES - 2..DEFAULT_MAX_TOKEN_BYTES + 3).prop_map(|n| {
            let mut t = format!(
                "{}.{}.",
                b64(br#"{"alg":"RS256"}"#),
                b64(br#"{"iss":"https://issuer.test"}"#)
            );
            while t.len() < n {
                t.push('A');
            }
            t
        }),
        (".{1,4}", 100_000usize..300_000).prop_map(|(s, n)| s.repeat(n / s.len().max(1))),
        // Segment-shaped: base64url of random JSON and bytes, 0 to 6 segments.
        proptest::collection::vec(segment, 0..7).prop_map(|segs| segs.join(".")),
    ]
}

/// A structurally plausible token for `ISSUER`, with a random header and a random signature.
fn forged_token() -> impl Strategy<Value = String> {
    (
        json_object(),
        prop_oneof![
            Just(Value::String("RS256".into())),
            Just(Value::String("ES256".into())),
            Just(Value::String("EdDSA".into())),
            json_leaf()
        ],
        proptest::option::of(kid_choice()),
        json_object(),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600),
            (0usize..3).prop_flat_map(|i| proptest::collection::vec(any::<u8>(), [256, 64, 64][i])),
        ],
    )
        .prop_map(|(mut header, alg, kid, mut payload, sig)| {
            header.insert("alg".into(), alg);
            match kid {
                Some(KidChoice::Trusted(k)) => {
                    header.insert("kid".into(), fixture().trusted[k].kid().into());
                }
                Some(KidChoice::Outsider(k)) => {
                    header.insert("kid".into(), fixture().outsiders[k].kid().into());
                }
                Some(KidChoice::Value(v)) => {
                    header.insert("kid".into(), v);
                }
                Some(KidChoice::Remove) | None => {}
            }
            payload.insert("iss".into(), ISSUER.into());
            payload.insert("aud".into(), SERVICE.into());
            payload.insert("exp".into(), (NOW + 600).into());
            format!(
                "{}.{}.{}",
                b64(&serde_json::to_vec(&header).unwrap()),
                b64(&serde_json::to_vec(&payload).unwrap()),
                b64(&sig)
            )
        })
}

proptest! {
    #![proptest_config(config(cases(512)))]

    #[test]
    fn arbitrary_strings_never_panic_and_never_authenticate(token in arbitrary_token()) {
        prop_assert!(refused(&token));
    }

    #[test]
    fn random_signatures_never_authenticate(token in forged_token()) {
        prop_assert!(refused(&token));
    }
}

proptest! {
    #![proptest_config(config(cases(512)))]

    /// Row 1–14 by mutation: the original verifies, anything else does not (except a valid token
    /// that splices happened to reassemble whole).
    ///
    /// One known exception no edit here produces: for ES256, `(r, n − s)` is a second valid
    /// signature of the same input (ECDSA malleability; ring does not require a low `s`). It
    /// yields a different token string with the same, genuinely signed, claims: not a forgery.
    #[test]
    fn only_the_untouched_token_is_accepted(
        spec in token_spec(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let original = spec.sign();
        let claims = authenticate(&original);
        prop_assert!(claims.is_ok(), "the valid token was refused: {:?}", claims.err());
        let mut token = original.clone();
        let mut signed = vec![original.clone()];
        for m in &mutations {
            token = apply(&token, m, &spec, &mut signed);
        }
        if signed.contains(&token) {
            prop_assert!(authenticate(&token).is_ok());
        } else {
            prop_assert!(
                refused(&token),
                "a mutated token was accepted:\n original {original}\n mutated  {token}"
            );
        }
    }

    /// Any change of one byte of the signing input or of the signature, whatever the claims.
    #[test]
    fn every_bit_of_signing_input_and_signature_counts(
        spec in token_spec(),
        position in any::<Index>(),
        bit in 0u8..8,
        in_signature in any::<bool>(),
    ) {
        let original = spec.sign();
        prop_assert!(authenticate(&original).is_ok());
        let segs = segments(&original);
        let tampered = if in_signature {
            edit_signature(&original, &SigEdit::FlipBit(position, bit))
        } else {
            // A bit of the decoded header or payload, re-encoded: the JSON may even stay valid.
            let which = position.index(2);
            let mut bytes = unb64(&segs[which]).unwrap();
            let i = position.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let mut segs = segs.clone();
            segs[which] = b64(&bytes);
            segs.join(".")
        };
        prop_assert_ne!(&tampered, &original);
        prop_assert!(refused(&tampered), "accepted: {}", tampered);
    }

    /// Rows 2 and 4: the same claims signed by a key the source does not hold, under every
    /// `alg`/`kid` header combination, including the kid of a trusted key.
    #[test]
    fn tokens_signed_by_other_keys_are_refused(
        spec in token_spec(),
        signer in 0..3usize,
        alg in 0..4usize,
        kid in proptest::option::of(kid_choice()),
        iss_other in any::<bool>(),
    ) {
        let f = fixture();
        prop_assert!(authenticate(&spec.sign()).is_ok());
        let key = &f.outsiders[signer];
        let mut header = json!({"typ": "JWT"});
        header["alg"] = match alg {
            3 => key.algorithm().jose_name(),
            a => Algorithm::ALL[a].jose_name(),
        }.into();
        match kid {
            Some(KidChoice::Trusted(k)) => header["kid"] = f.trusted[k].kid().into(),
            Some(KidChoice::Outsider(k)) => header["kid"] = f.outsiders[k].kid().into(),
            Some(KidChoice::Value(v)) => header["kid"] = v,
            Some(KidChoice::Remove) | None => {}
        }
        let mut claims = spec.claims();
        if iss_other {
            // Signed by a trusted key but claiming the other issuer: its keys must not accept.
            claims["iss"] = OTHER_ISSUER.into();
        }
        let input = format!(
            "{}.{}",
            b64(&serde_json::to_vec(&header).unwrap()),
            b64(&serde_json::to_vec(&claims).unwrap())
        );
        let signature = if iss_other { f.trusted[signer].sign(input.as_bytes()) } else { key.sign(input.as_bytes()) };
        let token = format!("{input}.{}", b64(&signature));
        if iss_other {
            // The signature is a trusted key's; only the issuer routing may refuse it.
            prop_assert!(exercise(&token).1.is_err(), "accepted: {}", token);
        } else {
            prop_assert!(refused(&token), "accepted: {}", token);
        }
        // The outsider's own token with its own header is accepted only by its own issuer.
        let own = sign(key, &spec.claims(), true);
        prop_assert!(refused(&own));
        let mut elsewhere = spec.claims();
        elsewhere["iss"] = OTHER_ISSUER.into();
        prop_assert!(authenticate(&sign(key, &elsewhere, true)).is_ok());
    }
}

// ---------------------------------------------------------------------------------------------
// Validly signed tokens with hostile headers and claims

/// A header or payload member to set (`Some`) or remove (`None`).
type Edit = (String, Option<Value>);

/// Claims signed by a trusted key, with edited header and payload, and perhaps a duplicate member.
#[derive(Debug, Clone)]
struct SignedJson {
    spec: TokenSpec,
    header: Vec<Edit>,
    payload: Vec<Edit>,
    duplicate_in_header: Option<(String, Value)>,
    duplicate_in_payload: Option<(String, Value)>,
}

fn time_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        proptest::sample::select(vec![
            0i64,
            -60,
            -59,
            59,
            60,
            61,
            3600,
            7 * 24 * 3600,
            7 * 24 * 3600 + 1,
            8 * 24 * 3600,
        ])
        .prop_map(|d| json!(NOW + d)),
        proptest::sample::select(vec![
            json!(0),
            json!(-1),
            json!(253_402_300_799i64),
            json!(253_402_300_800i64),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1e300),
            json!(-0.0),
            json!(NOW as f64 + 0.5),
            json!((NOW - 61) as f64 + 0.999),
            json!(NOW.to_string()),
            Value::Null,
            json!(true),
            json!([NOW]),
        ]),
        (NOW - 1_000_000..NOW + 1_000_000).prop_map(|t| json!(t)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
}

fn claim_edit() -> impl Strategy<Value = Edit> {
    let audience = proptest::sample::select(vec![
        json!(SERVICE),
        json!([SERVICE]),
        json!(["x", SERVICE]),
        json!("x"),
        json!([]),
        Value::Null,
        json!(5),
        json!([5, SERVICE]),
        json!(format!("{SERVICE} ")),
        json!(SERVICE.to_uppercase()),
        json!([[SERVICE]]),
    ]);
    let issuer = proptest::sample::select(vec![
        json!(ISSUER),
        json!(format!("{ISSUER}/")),
        json!(OTHER_ISSUER),
        json!(5),
        Value::Null,
        json!([ISSUER]),
        json!(""),
        json!(ISSUER.to_uppercase()),
    ]);
    let strings = proptest::sample::select(vec![
        json!("x"),
        json!(5),
        json!(["a"]),
        Value::Null,
        json!({}),
    ]);
    prop_oneof![
        3 => (proptest::sample::select(vec!["exp", "nbf", "iat"]), proptest::option::of(time_value()))
            .prop_map(|(k, v)| (k.to_owned(), v)),
        2 => proptest::option::of(audience).prop_map(|v| ("aud".to_owned(), v)),
        2 => proptest::option::of(issuer).prop_map(|v| ("iss".to_owned(), v)),
        1 => (
            proptest::sample::select(vec!["sub", "jti", "gitlab_realm", "gitlab_instance_id", "duo_seat_count", "scopes"]),
            proptest::option::of(strings),
        )
            .prop_map(|(k, v)| (k.to_owned(), v)),
        1 => (json_key(), proptest::option::of(json_value())),
    ]
}

fn header_member_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => proptest::option::of(
            proptest::sample::select(vec![
                json!("RS256"), json!("ES256"), json!("EdDSA"), json!("none"), json!("HS256"),
                json!("eddsa"), json!(["RS256"]), Value::Null,
            ]),
        )
        .prop_map(|v| ("alg".to_owned(), v)),
        2 => proptest::option::of(prop_oneof![
            (0..3usize).prop_map(|k| json!(fixture().trusted[k].kid())),
            (0..3usize).prop_map(|k| json!(fixture().outsiders[k].kid())),
            json_leaf(),
        ])
        .prop_map(|v| ("kid".to_owned(), v)),
        1 => (
            proptest::sample::select(vec!["jwk", "jku", "x5u", "x5c", "crit", "zip", "b64", "typ", "cty"]),
            proptest::option::of(json_leaf()),
        )
            .prop_map(|(k, v)| (k.to_owned(), v)),
        1 => (json_key(), proptest::option::of(json_value())),
    ]
}

fn duplicate_member() -> impl Strategy<Value = Option<(String, Value)>> {
    proptest::option::weighted(
        0.15,
        (
            proptest::sample::select(vec!["alg", "kid", "iss", "aud", "exp", "nbf", "typ", "sub"]),
            json_leaf(),
        )
            .prop_map(|(k, v)| (k.to_owned(), v)),
    )
}

fn signed_json() -> impl Strategy<Value = SignedJson> {
    (
        token_spec(),
        proptest::collection::vec(header_member_edit(), 0..3),
        proptest::collection::vec(claim_edit(), 0..4),
        duplicate_member(),
        duplicate_member(),
    )
        .prop_map(
            |(spec, header, payload, duplicate_in_header, duplicate_in_payload)| SignedJson {
                spec,
                header,
                payload,
                duplicate_in_header,
                duplicate_in_payload,
            },
        )
}

/// `obj` as JSON text, with `duplicate` appended as one more member.
fn to_json(obj: &Map<String, Value>, duplicate: &Option<(String, Value)>) -> Vec<u8> {
    let mut text = serde_json::to_string(obj).unwrap();
    if let Some((name, value)) = duplicate {
        text.pop();
        if !obj.is_empty() {
            text.push(',');
        }
        text.push_str(&format!("{}:{}}}", Value::String(name.clone()), value));
    }
    text.into_bytes()
}

fn apply_edits(obj: &mut Map<String, Value>, edits: &[Edit]) {
    for (name, value) in edits {
        match value {
            Some(v) => obj.insert(name.clone(), v.clone()),
            None => obj.remove(name),
        };
    }
}

/// The top-level member names of a JSON object, duplicates kept.
fn member_names(json: &[u8]) -> Option<Vec<String>> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
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

fn unique(names: &[String]) -> bool {
    names.iter().collect::<std::collections::HashSet<_>>().len() == names.len()
}

/// What every accepted token must satisfy (SECURITY-CHECKLIST rows 1, 3, 4, 7–10, 13).
fn check_accepted(
    key: &SigningKey,
    header_json: &[u8],
    payload_json: &[u8],
    verified: &VerifiedClaims,
) -> Result<(), TestCaseError> {
    let names = member_names(header_json).expect("an accepted header is a JSON object");
    prop_assert!(unique(&names), "accepted a header with duplicate members");
    let header: Value = serde_json::from_slice(header_json).unwrap();
    prop_assert_eq!(header["alg"].as_str(), Some(key.algorithm().jose_name()));
    for param in ["jwk", "jku", "x5u", "x5c", "crit", "zip", "b64"] {
        prop_assert!(
            header.get(param).is_none(),
            "accepted a header with {}",
            param
        );
    }
    if let Some(kid) = header.get("kid") {
        prop_assert_eq!(
            kid.as_str(),
            Some(key.kid()),
            "accepted a kid of another key"
        );
    }
    let names = member_names(payload_json).expect("an accepted payload is a JSON object");
    prop_assert!(unique(&names), "accepted a payload with duplicate members");
    let payload: Value = serde_json::from_slice(payload_json).unwrap();
    prop_assert_eq!(payload["iss"].as_str(), Some(ISSUER));
    let audience_ok = match &payload["aud"] {
        Value::String(a) => a == SERVICE,
        Value::Array(all) => all.iter().all(Value::is_string) && all.iter().any(|a| a == SERVICE),
        _ => false,
    };
    prop_assert!(audience_ok, "accepted aud {}", payload["aud"]);
    let exp = payload["exp"]
        .as_f64()
        .expect("accepted a token without a numeric exp");
    prop_assert!(
        exp > (NOW - 60) as f64,
        "accepted an expired token: exp {}",
        exp
    );
    prop_assert_eq!(verified.expires_at().as_secs(), exp as i64);
    let mut start = NOW as f64;
    let mut starts = Vec::new();
    for name in ["nbf", "iat"] {
        if let Some(t) = payload.get(name) {
            let t = t.as_f64().expect("accepted a non-numeric time claim");
            prop_assert!(
                t >= 0.0 && t <= (NOW + 60) as f64,
                "accepted {} {}",
                name,
                t
            );
            starts.push(t.trunc());
        }
    }
    if let Some(earliest) = starts.into_iter().reduce(f64::min) {
        start = earliest;
    }
    prop_assert!(
        exp.trunc() - start <= (7 * 24 * 3600) as f64,
        "accepted a lifetime above the maximum"
    );
    for name in ["sub", "jti", "gitlab_realm", "gitlab_instance_id"] {
        prop_assert!(
            payload
                .get(name)
                .is_none_or(|v| v.is_string() || v.is_null()),
            "accepted a non-string {}",
            name
        );
    }
    prop_assert_eq!(verified.claims().issuer.as_str(), ISSUER);
    Ok(())
}

proptest! {
    #![proptest_config(config(cases(768)))]

    /// Rows 1, 3, 4, 7–10, 13 behind a valid signature: whatever a trusted key signs, the
    /// authenticator accepts only headers and claims that satisfy the policy; and it does accept
    /// the unedited token.
    #[test]
    fn signed_claims_are_accepted_only_within_policy(t in signed_json()) {
        let key = &fixture().trusted[t.spec.key];
        let mut header = Map::new();
        header.insert("alg".into(), key.algorithm().jose_name().into());
        header.insert("typ".into(), "JWT".into());
        if t.spec.with_kid {
            header.insert("kid".into(), key.kid().into());
        }
        let mut payload = t.spec.claims().as_object().unwrap().clone();
        let pristine = t.header.is_empty()
            && t.payload.is_empty()
            && t.duplicate_in_header.is_none()
            && t.duplicate_in_payload.is_none();
        apply_edits(&mut header, &t.header);
        apply_edits(&mut payload, &t.payload);
        let header_json = to_json(&header, &t.duplicate_in_header);
        let payload_json = to_json(&payload, &t.duplicate_in_payload);
        let input = format!("{}.{}", b64(&header_json), b64(&payload_json));
        let token = format!("{input}.{}", b64(&key.sign(input.as_bytes())));
        let result = exercise(&token).1;
        if pristine {
            prop_assert!(result.is_ok(), "the unedited token was refused: {:?}", result.err());
        }
        if let Ok(verified) = result {
            check_accepted(key, &header_json, &payload_json, &verified)?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Key material parsers

fn jwk_like() -> impl Strategy<Value = Value> {
    let b64_bytes = |max: usize| {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(|b| Value::String(b64(&b)))
    };
    (
        prop_oneof![
            proptest::sample::select(vec!["RSA", "EC", "OKP", "oct", "rsa", ""]).prop_map(|s| Value::String(s.into())),
            json_leaf(),
        ],
        proptest::collection::vec(
            (
                proptest::sample::select(vec!["n", "e", "x", "y", "crv", "kid", "alg", "use", "d", "k", "key_ops"]),
                prop_oneof![
                    3 => b64_bytes(40),
                    2 => b64_bytes(1100),
                    2 => proptest::sample::select(vec![
                        "P-256", "P-384", "Ed25519", "X25519", "sig", "enc", "RS256", "ES256", "EdDSA", "AQAB", "AQAA", "AA", "",
                    ]).prop_map(|s| Value::String(s.into())),
                    1 => json_value(),
                ],
            ),
            0..7,
        ),
    )
        .prop_map(|(kty, members)| {
            let mut obj: Map<String, Value> =
                members.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            obj.insert("kty".into(), kty);
            Value::Object(obj)
        })
}

/// A real public JWK of a fixture key, with one member's bytes mutated.
fn mutated_real_jwk() -> impl Strategy<Value = Value> {
    (
        0..6usize,
        0..4usize,
        any::<Index>(),
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|(key, member, at, byte, truncate)| {
            let f = fixture();
            let k = if key < 3 {
                &f.trusted[key]
            } else {
                &f.outsiders[key - 3]
            };
            let mut jwk = k.jwk();
            let names = ["n", "e", "x", "y"];
            let name = names[member];
            if let Some(bytes) = jwk.get(name).and_then(Value::as_str).and_then(unb64) {
                let mut bytes = bytes;
                if truncate {
                    bytes.truncate(at.index(bytes.len() + 1));
                } else if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                jwk[name] = Value::String(b64(&bytes));
            }
            jwk
        })
}

fn discovery_document() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            proptest::sample::select(vec![
                ISSUER,
                "https://issuer.test/",
                "https://issuer.test//",
                "https://ISSUER.test",
                "https://issuer.test/x",
                "",
                "/",
            ])
            .prop_map(|s| Value::String(s.into())),
            json_leaf(),
        ],
        prop_oneof![
            proptest::sample::select(vec![
                "https://issuer.test/jwks",
                "http://127.0.0.1:1/k",
                "not a url",
                "https://[::1",
                "file:///etc/passwd",
                "https://a@b:99999/",
                "",
            ])
            .prop_map(|s| Value::String(s.into())),
            ".{0,40}".prop_map(Value::String),
            json_leaf(),
        ],
        json_object(),
    )
        .prop_map(|(issuer, jwks_uri, mut rest)| {
            rest.insert("issuer".into(), issuer);
            rest.insert("jwks_uri".into(), jwks_uri);
            serde_json::to_vec(&rest).unwrap()
        })
}

fn pem_like() -> impl Strategy<Value = String> {
    let der = prop_oneof![proptest::collection::vec(any::<u8>(), 0..600), spki_like(),];
    let block = (
        proptest::sample::select(vec![
            "PUBLIC KEY",
            "RSA PUBLIC KEY",
            "PRIVATE KEY",
            "EC PRIVATE KEY",
            "X",
            "",
        ]),
        der,
        proptest::sample::select(vec![
            "",
            "Proc-Type: 4,ENCRYPTED\n",
            "  \t",
            "====\n",
            "é\n",
        ]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(label, der, extra, close, crlf)| {
            let mut text = armour(label, &der);
            if !extra.is_empty() {
                let at = text.find('\n').map_or(0, |i| i + 1);
                text.insert_str(at, extra);
            }
            if !close {
                text = text.replace("-----END", "-----NED");
            }
            if crlf {
                text = text.replace('\n', "\r\n");
            }
            text
        });
    prop_oneof![
        proptest::collection::vec(block, 0..4).prop_map(|b| b.concat()),
        ".{0,200}",
        (0..6usize, any::<Index>(), any::<u8>()).prop_map(|(key, at, byte)| {
            let f = fixture();
            let k = if key < 3 {
                &f.trusted[key]
            } else {
                &f.outsiders[key - 3]
            };
            let mut text = k.public_key().to_pem().into_bytes();
            let i = at.index(text.len());
            text[i] = byte;
            String::from_utf8_lossy(&text).into_owned()
        }),
    ]
}

/// SubjectPublicKeyInfo-shaped DER: real ones with a byte changed or lengths tampered with.
fn spki_like() -> impl Strategy<Value = Vec<u8>> {
    (0..6usize, any::<Index>(), any::<u8>(), 0..3u8).prop_map(|(key, at, byte, how)| {
        let f = fixture();
        let k = if key < 3 {
            &f.trusted[key]
        } else {
            &f.outsiders[key - 3]
        };
        let pem_text = k.public_key().to_pem();
        let mut der = pem::decode_vec(pem_text.as_bytes()).unwrap().1;
        let i = at.index(der.len());
        match how {
            0 => der[i] = byte,
            1 => der.truncate(i),
            _ => der.insert(i, byte),
        }
        der
    })
}

fn key_parsers(bytes: &[u8]) {
    if let Ok(parsed) = parse_jwks(bytes, Default::default()) {
        assert!(parsed.keys.len() <= duo_workflow_domain::keys::MAX_KEYS_PER_SOURCE);
        for key in parsed.keys {
            key_is_usable(&key);
        }
    }
    if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        if let Ok(key) = parse_jwk(&value) {
            key_is_usable(&key);
        }
    }
    if let Ok(url) = jwks_uri_of(bytes, ISSUER) {
        let doc: Value = serde_json::from_slice(bytes).unwrap();
        let claimed = doc["issuer"].as_str().unwrap();
        assert_eq!(
            claimed.trim_end_matches('/'),
            ISSUER,
            "jwks_uri_of accepted another issuer"
        );
        let _ = url.as_str();
    }
    let text = String::from_utf8_lossy(bytes);
    let _ = SigningKey::from_pem(&text);
    // As PEM text, and as the DER inside a public key block of either kind.
    for text in [
        text.into_owned(),
        armour("PUBLIC KEY", bytes),
        armour("RSA PUBLIC KEY", bytes),
    ] {
        if let Ok(keys) = PublicKey::from_pem_each(&text) {
            for key in keys.into_iter().flatten() {
                key_is_usable(&key.into_issuer_key(None));
            }
        }
    }
}

/// PEM armour around any bytes, with any label (even ones RFC 7468 refuses): parser input.
fn armour(label: &str, der: &[u8]) -> String {
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

/// A key that parsed can be used and printed, and round-trips through JWK and PEM.
fn key_is_usable(key: &IssuerKey<PublicKey>) {
    assert!(!key.algorithms.is_empty());
    assert_eq!(
        key.key.family().intersection(key.algorithms),
        key.algorithms
    );
    for alg in Algorithm::ALL {
        let _ = key.key.verify(alg, b"message", &[0u8; 256]);
        let _ = key.key.verify(alg, b"message", &[1u8; 64]);
    }
    let alg = key.algorithms.iter().next().unwrap();
    let jwk = key.key.to_jwk("kid", alg);
    let again = parse_jwk(&jwk).expect("a published JWK parses");
    assert_eq!(again.key, key.key);
    let from_pem = PublicKey::from_pem_all(&key.key.to_pem()).expect("a published PEM parses");
    assert_eq!(from_pem, vec![key.key.clone()]);
}

proptest! {
    #![proptest_config(config(cases(384)))]

    #[test]
    fn key_parsers_never_panic_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        key_parsers(&bytes);
    }

    #[test]
    fn key_parsers_never_panic_on_json(doc in prop_oneof![
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        json_text(),
        proptest::collection::vec(prop_oneof![jwk_like(), mutated_real_jwk(), json_value()], 0..6)
            .prop_map(|keys| serde_json::to_vec(&json!({"keys": keys})).unwrap()),
        (0..200usize).prop_map(|n| {
            let k = &fixture().trusted[1];
            serde_json::to_vec(&json!({"keys": vec![k.jwk(); n]})).unwrap()
        }),
        discovery_document(),
    ]) {
        key_parsers(&doc);
    }

    #[test]
    fn single_jwks_entries_never_panic(jwk in prop_oneof![jwk_like(), mutated_real_jwk(), json_value()]) {
        if let Ok(key) = parse_jwk(&jwk) {
            key_is_usable(&key);
            // Rows 18: no private or symmetric member survives.
            for member in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                prop_assert!(jwk.get(member).is_none(), "kept a JWK with {member}");
            }
            prop_assert_ne!(jwk.get("kty"), Some(&Value::String("oct".into())));
        }
    }

    #[test]
    fn pem_and_der_parsers_never_panic(text in pem_like(), der in spki_like()) {
        key_parsers(text.as_bytes());
        key_parsers(&der);
        let _ = SigningKey::from_pem(&text);
    }
}
