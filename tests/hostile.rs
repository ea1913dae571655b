//! Hostile input (../shared/SECURITY-CHECKLIST.md), row by row, through the real path: gRPC
//! metadata in, status and details out, against the real service. Every hostile token carries a
//! valid signature by a trusted key unless the row is about the signature, so its one hostile
//! property is the only reason to refuse it. After each row: no panic anywhere in the process,
//! and the next good request still passes.
//!
//! Row 23 (the verified-token cache) is also unit-tested in adapters/src/verified_cache.rs.
//! Rows exercised in tests/key_sources.rs against fake providers: 5 (random-kid flood),
//! 16 (10 MiB body, hang, redirect), 17 (discovery issuer), 18 (`oct` and private members),
//! 20 (failures keep the last good keys). Row 21 (secrets in logs) runs the binary in
//! app/tests/binary.rs.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use serde_json::{json, Value};
use support::Running;
use support::{
    assert_status, b64, generate_token, good_claims, key, sign_raw, start_service, Headers,
    SigningKeyPem, TempDir, EXECUTE, SERVICE,
};
use tonic::Code;

const GITLAB: &str = "https://gitlab.test";
const CUSTOMERS: &str = "https://customers.test";
const EDGE: &str = "https://edge.test";
const FORBIDDEN: &str = "Forbidden by auth provider";

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics outside the tests' own assertions, on any thread of this test binary (a panic
/// in a server task would otherwise only show as a broken connection).
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info
                .location()
                .is_some_and(|l| l.file().starts_with("tests/"))
            {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

struct Fixture {
    service: Running,
    _dir: TempDir,
}

fn rs() -> std::sync::Arc<SigningKeyPem> {
    key("rs256-instance")
}
fn es() -> std::sync::Arc<SigningKeyPem> {
    key("es256-instance")
}
fn ed() -> std::sync::Arc<SigningKeyPem> {
    key("eddsa-instance")
}
fn customers() -> std::sync::Arc<SigningKeyPem> {
    key("rs256-customers")
}

/// GitLab: an RS256 key and an ES256 key, but only RS256 allowed. CustomersDot: its own RS256 key.
/// Edge: ES256 and EdDSA keys, plus a P-384 entry (dropped: its point is not on the curve).
async fn fixture() -> Fixture {
    count_panics();
    let dir = TempDir::new();
    let p384 =
        json!({"kty": "EC", "crv": "P-384", "kid": "p384", "x": b64(&[1; 48]), "y": b64(&[2; 48])});
    let gitlab = dir.write(
        "gitlab.jwks",
        &json!({"keys": [rs().jwk(), es().jwk()]}).to_string(),
    );
    let cdot = dir.write(
        "customers.jwks",
        &json!({"keys": [customers().jwk()]}).to_string(),
    );
    let edge = dir.write(
        "edge.jwks",
        &json!({"keys": [es().jwk(), ed().jwk(), p384]}).to_string(),
    );
    let config = format!(
        r#"
[[key_sources]]
type = "static"
name = "gitlab"
issuer = "{GITLAB}"
jwks_file = "{}"
algorithms = ["RS256"]

[[key_sources]]
type = "static"
name = "customers"
issuer = "{CUSTOMERS}"
jwks_file = "{}"

[[key_sources]]
type = "static"
name = "edge"
issuer = "{EDGE}"
jwks_file = "{}"
"#,
        gitlab.display(),
        cdot.display(),
        edge.display()
    );
    let file = dir.write("config.toml", &config);
    let service = start_service(Some(&file), &[]).await.unwrap();
    Fixture { service, _dir: dir }
}

fn header(alg: &str, kid: Option<&str>) -> Value {
    let mut h = json!({"alg": alg, "typ": "JWT"});
    if let Some(kid) = kid {
        h["kid"] = json!(kid);
    }
    h
}

fn signed(key: &SigningKeyPem, header: &Value, claims: &Value) -> String {
    sign_raw(
        &key.key,
        &serde_json::to_vec(header).unwrap(),
        &serde_json::to_vec(claims).unwrap(),
    )
}

impl Fixture {
    fn addr(&self) -> SocketAddr {
        self.service.addr
    }

    /// `token` is refused with `code`/`details`; nothing panicked; a good token still passes.
    async fn refuses_with(&self, what: &str, token: &str, code: Code, details: &str) {
        let result = generate_token(self.addr(), &Headers::bearer(token)).await;
        match result {
            Ok(_) => panic!("{what}: accepted"),
            Err(s) => {
                assert_eq!(s.code(), code, "{what}: {:?}", s.message());
                assert_eq!(s.message(), details, "{what}");
            }
        }
        assert_eq!(
            PANICS.load(Ordering::SeqCst),
            0,
            "{what}: something panicked"
        );
        let good = signed(
            &rs(),
            &header("RS256", Some(rs().kid())),
            &good_claims(GITLAB),
        );
        assert!(
            generate_token(self.addr(), &Headers::bearer(&good))
                .await
                .is_ok(),
            "{what}: the next good call failed"
        );
    }

    async fn refuses(&self, what: &str, token: &str) {
        self.refuses_with(what, token, Code::Unauthenticated, FORBIDDEN)
            .await;
    }
}

#[tokio::test]
async fn the_fixture_accepts_good_tokens_of_every_algorithm() {
    let f = fixture().await;
    for (k, alg, iss) in [
        (rs(), "RS256", GITLAB),
        (es(), "ES256", EDGE),
        (ed(), "EdDSA", EDGE),
    ] {
        for kid in [Some(k.kid()), None] {
            let t = signed(&k, &header(alg, kid), &good_claims(iss));
            assert!(
                generate_token(f.addr(), &Headers::bearer(&t)).await.is_ok(),
                "{alg} kid {kid:?}"
            );
        }
    }
}

#[tokio::test]
async fn row_01_alg_missing_not_a_string_none_or_not_allowed() {
    let f = fixture().await;
    let claims = good_claims(GITLAB);
    let kid = rs().kid().to_owned();
    let headers = [
        ("alg missing", json!({"typ": "JWT", "kid": kid})),
        ("alg a number", json!({"alg": 256, "kid": kid})),
        ("alg null", json!({"alg": null, "kid": kid})),
        ("alg an array", json!({"alg": ["RS256"], "kid": kid})),
    ];
    for (what, h) in headers {
        f.refuses(what, &signed(&rs(), &h, &claims)).await;
    }
    for none in ["none", "None", "NONE", "nOnE"] {
        let unsigned = format!(
            "{}.{}.",
            b64(header(none, None).to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        f.refuses(&format!("alg {none}, empty signature"), &unsigned)
            .await;
        let with_sig = format!("{unsigned}c2ln");
        f.refuses(&format!("alg {none}"), &with_sig).await;
    }
    // A valid ES256 signature by a key of the issuer, but the issuer's source allows RS256 only.
    f.refuses(
        "ES256 not in the allow-list",
        &signed(&es(), &header("ES256", Some(es().kid())), &claims),
    )
    .await;
    f.refuses(
        "ES256 not in the allow-list, no kid",
        &signed(&es(), &header("ES256", None), &claims),
    )
    .await;
    for alg in ["RS384", "PS256", "ES384", "HS512", "rs256"] {
        f.refuses(alg, &signed(&rs(), &header(alg, Some(&kid)), &claims))
            .await;
    }
}

#[tokio::test]
async fn row_02_alg_that_does_not_fit_the_key() {
    let f = fixture().await;
    let claims = good_claims(GITLAB);
    let input = format!(
        "{}.{}",
        b64(header("HS256", None).to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    // The classic confusion: HMAC keyed with the RSA public key, as PEM and as raw modulus.
    let jwk = rs().jwk();
    let secrets: [Vec<u8>; 3] = [
        rs().key.public_key().to_pem().into_bytes(),
        jwk.to_string().into_bytes(),
        jwk["n"].as_str().unwrap().as_bytes().to_vec(),
    ];
    for secret in secrets {
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            input.as_bytes(),
        );
        f.refuses(
            "HS256 with the RSA public key as secret",
            &format!("{input}.{}", b64(tag.as_ref())),
        )
        .await;
    }
    // RS256 naming the EC key (RSA signature by the RSA key, kid of the EC key).
    f.refuses(
        "RS256 against an EC key",
        &signed(&rs(), &header("RS256", Some(es().kid())), &claims),
    )
    .await;
    // ES256 against a P-384 key: that key was dropped at load time.
    let edge = good_claims(EDGE);
    f.refuses(
        "ES256 naming a P-384 key",
        &signed(&es(), &header("ES256", Some("p384")), &edge),
    )
    .await;
    // EdDSA header over an ES256 key's kid, and the reverse.
    f.refuses(
        "EdDSA naming the ES256 key",
        &signed(&ed(), &header("EdDSA", Some(es().kid())), &edge),
    )
    .await;
    f.refuses(
        "ES256 naming the EdDSA key",
        &signed(&es(), &header("ES256", Some(ed().kid())), &edge),
    )
    .await;
}

#[tokio::test]
async fn row_03_key_material_in_the_header_is_never_used() {
    let f = fixture().await;
    let attacker = key("rs256-attacker");
    let claims = good_claims(GITLAB);
    for param in ["jwk", "jku", "x5u", "x5c"] {
        let mut h = header("RS256", None);
        h[param] = match param {
            "jwk" => attacker.jwk(),
            "x5c" => json!(["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]),
            _ => json!("https://attacker.example/keys"),
        };
        // Signed by the attacker's own key, which the header offers.
        f.refuses(
            &format!("{param} with the attacker's key"),
            &signed(&attacker, &h, &claims),
        )
        .await;
        // Even a token signed by the trusted key is refused when it carries these parameters.
        let mut h2 = h.clone();
        h2["kid"] = json!(rs().kid());
        f.refuses(
            &format!("{param} beside a trusted signature"),
            &signed(&rs(), &h2, &claims),
        )
        .await;
    }
}

#[tokio::test]
async fn row_04_kid_not_a_string_too_long_or_of_another_issuer() {
    let f = fixture().await;
    let claims = good_claims(GITLAB);
    for (what, kid) in [
        ("kid a number", json!(1)),
        ("kid an object", json!({"k": rs().kid()})),
        ("kid an array", json!([rs().kid()])),
        ("kid empty", json!("")),
        ("kid of 257 bytes", json!("k".repeat(257))),
    ] {
        let mut h = header("RS256", None);
        h["kid"] = kid;
        f.refuses(what, &signed(&rs(), &h, &claims)).await;
    }
    // CustomersDot's key, named by its kid, signing a GitLab-issued token.
    f.refuses(
        "kid of another issuer's key",
        &signed(
            &customers(),
            &header("RS256", Some(customers().kid())),
            &claims,
        ),
    )
    .await;
    f.refuses(
        "another issuer's key, no kid",
        &signed(&customers(), &header("RS256", None), &claims),
    )
    .await;
}

#[tokio::test]
async fn row_06_structure() {
    let f = fixture().await;
    let good = signed(
        &rs(),
        &header("RS256", Some(rs().kid())),
        &good_claims(GITLAB),
    );
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        ("two segments", format!("{}.{}", parts[0], parts[1])),
        ("four segments", format!("{good}.{}", parts[2])),
        (
            "five segments (JWE)",
            format!(
                "{}.{}.{}.{}.{}",
                parts[0], parts[1], parts[1], parts[1], parts[2]
            ),
        ),
        ("empty header", format!(".{}.{}", parts[1], parts[2])),
        ("empty payload", format!("{}..{}", parts[0], parts[2])),
        ("empty signature", format!("{}.{}.", parts[0], parts[1])),
        ("thousands of dots", ".".repeat(5000)),
        ("dots around", format!(".{good}.")),
        (
            "padding",
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        ),
        ("padded signature", format!("{good}==")),
        ("tab inside", format!("{}\t{}", &good[..10], &good[10..])),
        (
            "standard base64 alphabet",
            good.replace('-', "+").replace('_', "/"),
        ),
        ("one byte over the cap", "a".repeat(8 * 1024 + 1)),
        (
            "a megabyte",
            format!(
                "{}.{}.{}",
                "a".repeat(400_000),
                "b".repeat(400_000),
                "c".repeat(200_000)
            ),
        ),
        ("empty token", String::new()),
    ];
    for (what, token) in cases {
        // Values that gRPC metadata cannot carry are refused by the client library; the rest
        // must be refused by the service.
        if tonic::metadata::MetadataValue::try_from(format!("Bearer {token}")).is_err() {
            continue;
        }
        if token.len() > 16 * 1024 {
            // Beyond the metadata limit: refused by HTTP/2 (row 22), not by the verifier.
            let result = generate_token(f.addr(), &Headers::bearer(&token)).await;
            assert!(result.is_err(), "{what}");
            continue;
        }
        f.refuses(what, &token).await;
    }
    // A space splits `Bearer <token>` into three words: refused before verification (step 2).
    let spaced = format!("{} .{}.{}", parts[0], parts[1], parts[2]);
    f.refuses_with(
        "space inside",
        &spaced,
        Code::Unauthenticated,
        "Invalid authorization header",
    )
    .await;
    // Metadata that is not visible ASCII cannot hold a bearer token.
    f.refuses_with(
        "non-ASCII",
        &format!("{good}é"),
        Code::Unauthenticated,
        "Invalid authorization header",
    )
    .await;
    let mut zipped = header("RS256", Some(rs().kid()));
    zipped["zip"] = json!("DEF");
    f.refuses("zip header", &signed(&rs(), &zipped, &good_claims(GITLAB)))
        .await;
}

#[tokio::test]
async fn row_07_json() {
    let f = fixture().await;
    let rs_key = rs();
    let kid = rs_key.kid();
    let h = serde_json::to_vec(&header("RS256", Some(kid))).unwrap();
    let claims = good_claims(GITLAB);
    let body = |extra: &str| {
        let s = claims.to_string();
        format!("{}{extra}}}", &s[..s.len() - 1])
    };
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        ("payload an array", b"[1,2]".to_vec()),
        ("payload a string", b"\"claims\"".to_vec()),
        ("payload a number", b"12".to_vec()),
        ("payload null", b"null".to_vec()),
        ("payload not JSON", b"{iss: gitlab}".to_vec()),
        (
            "payload with trailing data",
            format!("{claims}{{}}").into_bytes(),
        ),
        (
            "duplicate iss",
            body(r#","iss":"https://customers.test""#).into_bytes(),
        ),
        (
            "duplicate aud",
            body(&format!(r#","aud":"{SERVICE}""#)).into_bytes(),
        ),
        ("duplicate exp", body(r#","exp":99999999999"#).into_bytes()),
        (
            "deep nesting",
            body(&format!(r#","x":{}1{}"#, "[".repeat(200), "]".repeat(200))).into_bytes(),
        ),
        ("huge number", body(r#","x":1e999"#).into_bytes()),
        ("huge exp", body_with(&claims, "exp", "1e999").into_bytes()),
        (
            "invalid UTF-8",
            [b"{\"iss\":\"\xff\xfe\"}".as_slice()].concat(),
        ),
    ];
    for (what, payload) in payloads {
        f.refuses(what, &sign_raw(&rs().key, &h, &payload)).await;
    }
    let p = serde_json::to_vec(&claims).unwrap();
    let headers: Vec<(&str, Vec<u8>)> = vec![
        ("header an array", b"[\"RS256\"]".to_vec()),
        ("header a string", b"\"RS256\"".to_vec()),
        (
            "duplicate alg",
            format!(r#"{{"alg":"RS256","alg":"none","kid":"{kid}"}}"#).into_bytes(),
        ),
        (
            "duplicate kid",
            format!(r#"{{"alg":"RS256","kid":"{kid}","kid":"other"}}"#).into_bytes(),
        ),
        (
            "deep header",
            format!(
                r#"{{"alg":"RS256","x":{}1{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            )
            .into_bytes(),
        ),
    ];
    for (what, h) in headers {
        f.refuses(what, &sign_raw(&rs().key, &h, &p)).await;
    }
}

/// The claims with one member's JSON text replaced.
fn body_with(claims: &Value, name: &str, raw: &str) -> String {
    let mut c = claims.clone();
    c.as_object_mut().unwrap().remove(name);
    let s = c.to_string();
    format!("{},\"{name}\":{raw}}}", &s[..s.len() - 1])
}

#[tokio::test]
async fn row_08_claim_types() {
    let f = fixture().await;
    let claims = good_claims(GITLAB);
    let exp = claims["exp"].as_i64().unwrap();
    let cases: Vec<(&str, &str, String)> = vec![
        ("exp as a string", "exp", format!("\"{exp}\"")),
        ("nbf as a string", "nbf", "\"0\"".into()),
        ("iat as a string", "iat", "\"0\"".into()),
        ("exp negative", "exp", "-1".into()),
        ("nbf negative", "nbf", "-100".into()),
        ("exp fractional beyond reason", "exp", "1e300".into()),
        ("exp overflowing with leeway", "exp", i64::MAX.to_string()),
        ("exp beyond u64", "exp", "18446744073709551616".into()),
        ("iat overflowing", "iat", u64::MAX.to_string()),
        ("exp a bool", "exp", "true".into()),
        ("aud a number", "aud", "7".into()),
        ("aud an object", "aud", format!("{{\"x\":\"{SERVICE}\"}}")),
        (
            "aud with a non-string",
            "aud",
            format!("[\"{SERVICE}\", 1]"),
        ),
        ("iss a number", "iss", "1".into()),
        ("iss an array", "iss", format!("[\"{GITLAB}\"]")),
        ("sub a number", "sub", "5".into()),
        ("scopes a string", "scopes", format!("\"{EXECUTE}\"")),
        (
            "scopes with a number",
            "scopes",
            format!("[\"{EXECUTE}\", 5]"),
        ),
        (
            "scopes an object",
            "scopes",
            format!("{{\"{EXECUTE}\": true}}"),
        ),
        ("duo_seat_count negative", "duo_seat_count", "-5".into()),
        ("gitlab_realm a number", "gitlab_realm", "1".into()),
    ];
    let h = serde_json::to_vec(&header("RS256", Some(rs().kid()))).unwrap();
    for (what, name, raw) in cases {
        f.refuses(
            what,
            &sign_raw(&rs().key, &h, body_with(&claims, name, &raw).as_bytes()),
        )
        .await;
    }
}

#[tokio::test]
async fn row_09_time() {
    let f = fixture().await;
    let now = good_claims(GITLAB)["iat"].as_i64().unwrap();
    let with = |changes: &[(&str, Value)]| {
        let mut c = good_claims(GITLAB);
        for (k, v) in changes {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(*k);
            } else {
                c[*k] = v.clone();
            }
        }
        signed(&rs(), &header("RS256", Some(rs().kid())), &c)
    };
    f.refuses("missing exp", &with(&[("exp", Value::Null)]))
        .await;
    f.refuses("exp past beyond leeway", &with(&[("exp", json!(now - 61))]))
        .await;
    f.refuses(
        "exp long past",
        &with(&[("exp", json!(1)), ("iat", json!(0)), ("nbf", json!(0))]),
    )
    .await;
    f.refuses("nbf in the future", &with(&[("nbf", json!(now + 120))]))
        .await;
    f.refuses("iat in the future", &with(&[("iat", json!(now + 120))]))
        .await;
    f.refuses(
        "lifetime of 30 days",
        &with(&[("exp", json!(now + 30 * 86400))]),
    )
    .await;
    f.refuses(
        "lifetime without iat or nbf",
        &with(&[
            ("iat", Value::Null),
            ("nbf", Value::Null),
            ("exp", json!(now + 30 * 86400)),
        ]),
    )
    .await;
    // Inside the leeway is fine.
    let t = with(&[("exp", json!(now - 30)), ("nbf", json!(now + 30))]);
    assert!(generate_token(f.addr(), &Headers::bearer(&t)).await.is_ok());
}

#[tokio::test]
async fn row_10_audience() {
    let f = fixture().await;
    let mut c = good_claims(GITLAB);
    c.as_object_mut().unwrap().remove("aud");
    f.refuses(
        "aud missing",
        &signed(&rs(), &header("RS256", Some(rs().kid())), &c),
    )
    .await;
    for aud in [
        json!("gitlab-ai-gateway"),
        json!([]),
        json!(["gitlab-ai-gateway"]),
        json!(null),
        json!(""),
        json!(format!("{SERVICE} ")),
    ] {
        let mut c = good_claims(GITLAB);
        c["aud"] = aud.clone();
        f.refuses(
            &format!("aud {aud}"),
            &signed(&rs(), &header("RS256", Some(rs().kid())), &c),
        )
        .await;
    }
}

#[tokio::test]
async fn row_11_unknown_issuer_is_an_error_not_no_token() {
    let f = fixture().await;
    for iss in [
        json!("https://evil.test"),
        json!(format!("{GITLAB}/")),
        json!("HTTPS://GITLAB.TEST"),
        json!(null),
    ] {
        let mut c = good_claims(GITLAB);
        c["iss"] = iss.clone();
        f.refuses(
            &format!("iss {iss}"),
            &signed(&rs(), &header("RS256", Some(rs().kid())), &c),
        )
        .await;
    }
    let mut c = good_claims(GITLAB);
    c.as_object_mut().unwrap().remove("iss");
    f.refuses(
        "iss missing",
        &signed(&rs(), &header("RS256", Some(rs().kid())), &c),
    )
    .await;
}

#[tokio::test]
async fn row_12_two_authorization_entries() {
    let f = fixture().await;
    let good = signed(
        &rs(),
        &header("RS256", Some(rs().kid())),
        &good_claims(GITLAB),
    );
    let mut req = tonic::Request::new(duo_workflow_contract::GenerateTokenRequest {
        workflow_definition: None,
    });
    Headers::bearer(&good).apply(req.metadata_mut());
    req.metadata_mut()
        .append("authorization", format!("Bearer {good}").parse().unwrap());
    let result = support::client(f.addr()).await.generate_token(req).await;
    assert_status(
        result,
        Code::Unauthenticated,
        "Invalid authorization header",
    );
    assert!(generate_token(f.addr(), &Headers::bearer(&good))
        .await
        .is_ok());
}

#[tokio::test]
async fn row_13_crit() {
    let f = fixture().await;
    for crit in [json!(["exp"]), json!(["b64"]), json!([]), json!("x")] {
        let mut h = header("RS256", Some(rs().kid()));
        h["crit"] = crit.clone();
        f.refuses(
            &format!("crit {crit}"),
            &signed(&rs(), &h, &good_claims(GITLAB)),
        )
        .await;
    }
}

#[tokio::test]
async fn row_14_signature_shapes() {
    let f = fixture().await;
    let rs_token = signed(
        &rs(),
        &header("RS256", Some(rs().kid())),
        &good_claims(GITLAB),
    );
    let (input, sig) = rs_token.rsplit_once('.').unwrap();
    let sig = base64_decode(sig);
    f.refuses(
        "RSA signature one byte short",
        &format!("{input}.{}", b64(&sig[1..])),
    )
    .await;
    f.refuses(
        "RSA signature one byte long",
        &format!("{input}.{}", b64(&[&[0u8][..], &sig].concat())),
    )
    .await;
    f.refuses(
        "RSA signature of zeros",
        &format!("{input}.{}", b64(&vec![0; sig.len()])),
    )
    .await;
    let mut flipped = sig.clone();
    flipped[10] ^= 1;
    f.refuses(
        "RSA signature with a bit flipped",
        &format!("{input}.{}", b64(&flipped)),
    )
    .await;

    let es_token = signed(
        &es(),
        &header("ES256", Some(es().kid())),
        &good_claims(EDGE),
    );
    let (input, sig) = es_token.rsplit_once('.').unwrap();
    let sig = base64_decode(sig);
    assert_eq!(sig.len(), 64);
    let (r, s) = sig.split_at(32);
    f.refuses(
        "ECDSA in DER form",
        &format!("{input}.{}", b64(&der_signature(r, s))),
    )
    .await;
    f.refuses(
        "ECDSA r = 0",
        &format!("{input}.{}", b64(&[&[0u8; 32][..], s].concat())),
    )
    .await;
    f.refuses(
        "ECDSA s = 0",
        &format!("{input}.{}", b64(&[r, &[0u8; 32][..]].concat())),
    )
    .await;
    f.refuses("ECDSA all zero", &format!("{input}.{}", b64(&[0u8; 64])))
        .await;
    f.refuses("ECDSA 63 bytes", &format!("{input}.{}", b64(&sig[..63])))
        .await;
    f.refuses(
        "ECDSA 96 bytes (P-384 size)",
        &format!("{input}.{}", b64(&[&sig[..], &[1u8; 32][..]].concat())),
    )
    .await;

    let ed_token = signed(
        &ed(),
        &header("EdDSA", Some(ed().kid())),
        &good_claims(EDGE),
    );
    let (input, sig) = ed_token.rsplit_once('.').unwrap();
    let sig = base64_decode(sig);
    f.refuses(
        "Ed25519 signature short",
        &format!("{input}.{}", b64(&sig[..63])),
    )
    .await;
    f.refuses("Ed25519 zeros", &format!("{input}.{}", b64(&[0u8; 64])))
        .await;
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

/// ECDSA-Sig-Value DER encoding of (r, s).
fn der_signature(r: &[u8], s: &[u8]) -> Vec<u8> {
    fn int(v: &[u8]) -> Vec<u8> {
        let v: Vec<u8> = v.iter().copied().skip_while(|&b| b == 0).collect();
        let mut body = if v.first().is_some_and(|b| b & 0x80 != 0) {
            vec![0]
        } else {
            vec![]
        };
        body.extend(v);
        [vec![0x02, body.len() as u8], body].concat()
    }
    let body = [int(r), int(s)].concat();
    [vec![0x30, body.len() as u8], body].concat()
}

#[tokio::test]
async fn row_15_plain_http_key_sources_are_refused_unless_loopback_or_allowed() {
    // At configuration time, naming the field.
    let configs = [
        ("issuer", "type = \"oidc\"\nname = \"x\"\nissuer = \"http://gitlab.example\"\n"),
        ("jwks_uri", "type = \"jwks\"\nname = \"x\"\nissuer = \"x\"\njwks_uri = \"http://gitlab.example/keys\"\n"),
    ];
    for (field, source) in configs {
        let dir = TempDir::new();
        let file = dir.write("config.toml", &format!("[[key_sources]]\n{source}"));
        let error = start_service(Some(&file), &[])
            .await
            .err()
            .expect("plain HTTP accepted")
            .to_string();
        assert!(
            error.contains(&format!("key_sources[0].{field}")),
            "{error}"
        );
    }
    for env in [
        "DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL",
        "DUO_WORKFLOW_AUTH__OIDC_CUSTOMER_PORTAL_URL",
        "AIGW_GITLAB_URL",
    ] {
        // AIGW_GITLAB_URL is read only while the GitLab variable is unset.
        let unset: &[&str] = if env == "AIGW_GITLAB_URL" {
            &["DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL"]
        } else {
            &[]
        };
        let error =
            support::start_service_unsetting(None, &[(env, "http://gitlab.example")], unset)
                .await
                .err()
                .expect("plain HTTP accepted")
                .to_string();
        assert!(
            error.contains(env) && error.contains("plain HTTP"),
            "{error}"
        );
    }
    // A discovery document on loopback pointing at a plain-HTTP JWKS elsewhere: never fetched,
    // the source stays without keys.
    let provider = support::provider::start(vec![rs().jwk()]).await;
    provider.state.lock().unwrap().jwks_uri_override =
        Some("http://gitlab.example/oauth/discovery/keys".into());
    let issuer = provider.issuer();
    let service = start_service(
        None,
        &[("DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL", issuer.as_str())],
    )
    .await
    .unwrap();
    let t = signed(
        &rs(),
        &header("RS256", Some(rs().kid())),
        &good_claims(&issuer),
    );
    assert_status(
        generate_token(service.addr, &Headers::bearer(&t)).await,
        Code::Unavailable,
        "Keys of the token's issuer are not available",
    );
    // With the development switch, plain HTTP to a named host is allowed by configuration
    // (checked by loading the configuration only: nothing may reach that host).
    let dir = TempDir::new();
    let file = dir.write(
        "config.toml",
        "[[key_sources]]\ntype = \"jwks\"\nname = \"dev\"\nissuer = \"dev\"\njwks_uri = \"http://gitlab.example/keys\"\nallow_insecure_http = true\n",
    );
    let settings = duo_workflow_service::config::Settings::load(Some(&file), &Default::default());
    assert!(settings.is_ok(), "{:?}", settings.err());
}

#[tokio::test]
async fn row_19_key_count_capped_and_unusable_keys_skipped() {
    count_panics();
    // 99 unusable entries, then 122 usable ones: the junk is skipped, the first 100 usable keys kept.
    let mut keys: Vec<Value> = (0..99)
        .map(|i| json!({"kty": "RSA", "kid": format!("junk-{i}"), "n": "AQAB", "e": "AQAB"}))
        .collect();
    keys.push(rs().jwk());
    for i in 0..120 {
        let mut k = customers().jwk();
        k["kid"] = json!(format!("extra-{i}"));
        keys.push(k);
    }
    let mut late = customers().jwk();
    late["kid"] = json!("late");
    keys.push(late);
    let provider = support::provider::start(keys).await;
    let issuer = provider.issuer();
    let service = start_service(
        None,
        &[("DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL", issuer.as_str())],
    )
    .await
    .unwrap();
    let good = signed(
        &rs(),
        &header("RS256", Some(rs().kid())),
        &good_claims(&issuer),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while generate_token(service.addr, &Headers::bearer(&good))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the usable key among junk was never accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for (kid, kept) in [
        ("extra-0", true),
        ("extra-98", true),
        ("extra-99", false),
        ("late", false),
    ] {
        let t = signed(
            &customers(),
            &header("RS256", Some(kid)),
            &good_claims(&issuer),
        );
        let result = generate_token(service.addr, &Headers::bearer(&t)).await;
        if kept {
            assert!(result.is_ok(), "{kid}: {result:?}");
        } else {
            assert_status(result, Code::Unauthenticated, FORBIDDEN);
        }
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn row_22_oversized_metadata_is_refused_and_the_service_goes_on() {
    let f = fixture().await;
    for size in [20 * 1024, 64 * 1024, 1024 * 1024] {
        let mut req = tonic::Request::new(duo_workflow_contract::GenerateTokenRequest {
            workflow_definition: None,
        });
        req.metadata_mut()
            .insert("x-padding", "p".repeat(size).parse().unwrap());
        let result = support::client(f.addr()).await.generate_token(req).await;
        assert!(result.is_err(), "{size} bytes of metadata accepted");
        // Many small headers adding up beyond the limit.
        let mut req = tonic::Request::new(duo_workflow_contract::GenerateTokenRequest {
            workflow_definition: None,
        });
        for i in 0..(size / 100) {
            req.metadata_mut().append(
                tonic::metadata::MetadataKey::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                "v".repeat(90).parse().unwrap(),
            );
        }
        assert!(
            support::client(f.addr())
                .await
                .generate_token(req)
                .await
                .is_err(),
            "{size} bytes in many headers"
        );
    }
    let good = signed(
        &rs(),
        &header("RS256", Some(rs().kid())),
        &good_claims(GITLAB),
    );
    assert!(generate_token(f.addr(), &Headers::bearer(&good))
        .await
        .is_ok());
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn row_23_cached_verifications_are_rechecked_and_dropped_with_their_key() {
    count_panics();
    // Time is checked again on every hit: a token accepted (and cached) is refused once expired.
    let dir = TempDir::new();
    let jwks = dir.write("gitlab.jwks", &json!({"keys": [rs().jwk()]}).to_string());
    let file = dir.write(
        "config.toml",
        &format!(
            "[auth]\nleeway_seconds = 0\n[[key_sources]]\ntype = \"static\"\nname = \"gitlab\"\nissuer = \"{GITLAB}\"\njwks_file = \"{}\"\n",
            jwks.display()
        ),
    );
    let service = start_service(Some(&file), &[]).await.unwrap();
    let mut claims = good_claims(GITLAB);
    let now = claims["iat"].as_i64().unwrap();
    claims["exp"] = json!(now + 2);
    let short_lived = signed(&rs(), &header("RS256", Some(rs().kid())), &claims);
    for _ in 0..3 {
        assert!(generate_token(service.addr, &Headers::bearer(&short_lived))
            .await
            .is_ok());
    }
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    assert_status(
        generate_token(service.addr, &Headers::bearer(&short_lived)).await,
        Code::Unauthenticated,
        FORBIDDEN,
    );

    // A key that leaves its issuer's key set takes its cached verifications with it.
    let provider = support::provider::start(vec![rs().jwk()]).await;
    let issuer = provider.issuer();
    let file = dir.write(
        "fast.toml",
        "[auth.refresh]\nmin_seconds = 1\nmax_seconds = 1\nmax_stale_seconds = 3600\n",
    );
    let service = start_service(
        Some(&file),
        &[("DUO_WORKFLOW_AUTH__OIDC_GITLAB_URL", issuer.as_str())],
    )
    .await
    .unwrap();
    let key = rs();
    let tokens: Vec<String> = [Some(key.kid()), None]
        .into_iter()
        .map(|kid| signed(&key, &header("RS256", kid), &good_claims(&issuer)))
        .collect();
    for token in &tokens {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while generate_token(service.addr, &Headers::bearer(token))
            .await
            .is_err()
        {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            generate_token(service.addr, &Headers::bearer(token))
                .await
                .is_ok(),
            "cached"
        );
    }
    provider.set_keys(vec![customers().jwk()]);
    let fetched = provider.jwks_fetches();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while provider.jwks_fetches() < fetched + 2 {
        assert!(std::time::Instant::now() < deadline, "no refresh");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for token in &tokens {
        assert_status(
            generate_token(service.addr, &Headers::bearer(token)).await,
            Code::Unauthenticated,
            FORBIDDEN,
        );
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}

/// A service trusting, for `GITLAB`, the JWKS `keys` (and the good RS256 key), with extra
/// settings for that source and the whole file.
async fn serving_jwks(keys: Vec<Value>, source_extra: &str, file_extra: &str) -> Fixture {
    count_panics();
    let dir = TempDir::new();
    let mut all = keys;
    all.push(rs().jwk());
    let jwks = dir.write("gitlab.jwks", &json!({ "keys": all }).to_string());
    let config = format!(
        "{file_extra}\n[[key_sources]]\ntype = \"static\"\nname = \"gitlab\"\nissuer = \"{GITLAB}\"\njwks_file = \"{}\"\n{source_extra}\n",
        jwks.display()
    );
    let file = dir.write("config.toml", &config);
    let service = start_service(Some(&file), &[]).await.unwrap();
    Fixture { service, _dir: dir }
}

/// The Ed25519 encodings that let anyone sign: the eight points of small order (the last byte
/// with and without its sign bit), and non-canonical encodings (y = p, p + 1).
fn small_order_ed25519() -> Vec<[u8; 32]> {
    let hex = |s: &str| -> [u8; 32] {
        (0..32)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect::<Vec<_>>()
            .try_into()
            .unwrap()
    };
    let mut out = Vec::new();
    for base in [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ] {
        let point = hex(base);
        let mut negated = point;
        negated[31] |= 0x80;
        out.push(point);
        out.push(negated);
    }
    out
}

#[tokio::test]
async fn row_28_small_order_ed25519_keys_cannot_be_used_to_forge() {
    let points = small_order_ed25519();
    let keys: Vec<Value> = points
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"kty": "OKP", "crv": "Ed25519", "kid": format!("weak-{i}"), "x": b64(p)}))
        .collect();
    let f = serving_jwks(keys, "algorithms = [\"RS256\", \"EdDSA\"]", "").await;
    // The forgery: for the identity point, R = identity and S = 0 verify for any message.
    let mut forged_signature = [0u8; 64];
    forged_signature[0] = 1;
    for i in 0..points.len() {
        let input = format!(
            "{}.{}",
            b64(header("EdDSA", Some(&format!("weak-{i}")))
                .to_string()
                .as_bytes()),
            b64(good_claims(GITLAB).to_string().as_bytes())
        );
        let token = format!("{input}.{}", b64(&forged_signature));
        f.refuses(&format!("forged with weak-{i}"), &token).await;
    }
}

#[tokio::test]
async fn row_28_weak_rsa_and_p256_keys_are_dropped_when_the_set_loads() {
    // Each weak key carries the good key's kid: were it kept, the kid would be ambiguous and the
    // good token refused; dropped, the good key alone answers to the kid.
    let good = rs().jwk();
    let kid = rs().kid().to_owned();
    let with = |member: &str, value: Value| {
        let mut k = good.clone();
        k[member] = value;
        k
    };
    let n = base64_decode(good["n"].as_str().unwrap());
    let weak = [
        ("e = 1", with("e", json!(b64(&[1])))),
        ("e = 2", with("e", json!(b64(&[2])))),
        ("e = 65536", with("e", json!(b64(&[1, 0, 0])))),
        ("a 2040-bit modulus", with("n", json!(b64(&n[1..])))),
        (
            "an even modulus",
            with("n", json!(b64(&[&n[..255], &[n[255] & 0xfe]].concat()))),
        ),
        (
            "a P-256 point off the curve",
            json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&[1; 32]), "y": b64(&[2; 32])}),
        ),
    ];
    let token = signed(&rs(), &header("RS256", Some(&kid)), &good_claims(GITLAB));
    // Allowing any exponent never allows a weak one.
    for policy in ["", "allow_any_rsa_exponent = true"] {
        for (what, key) in &weak {
            let f = serving_jwks(vec![key.clone()], policy, "").await;
            assert!(
                generate_token(f.addr(), &Headers::bearer(&token))
                    .await
                    .is_ok(),
                "{what} was kept beside the good key ({policy:?})"
            );
        }
    }
    // The control: a second good key under the same kid is kept, and makes the kid ambiguous.
    let mut twin = customers().jwk();
    twin["kid"] = json!(kid);
    let f = serving_jwks(vec![twin], "", "").await;
    assert_status(
        generate_token(f.addr(), &Headers::bearer(&token)).await,
        Code::Unauthenticated,
        FORBIDDEN,
    );
}

/// An RSA key with public exponent 3, and an RS256 signature by it (ring signs only with 65537).
fn rsa_e3_signer() -> (Value, impl Fn(&[u8]) -> Vec<u8>) {
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    use rsa::BigUint;
    let key =
        rsa::RsaPrivateKey::new_with_exp(&mut rsa::rand_core::OsRng, 2048, &BigUint::from(3u32))
            .unwrap();
    let (n, d) = (key.n().clone(), key.d().clone());
    let jwk = json!({"kty": "RSA", "kid": "e-3", "n": b64(&n.to_bytes_be()), "e": b64(&[3])});
    let sign = move |input: &[u8]| {
        // EMSA-PKCS1-v1_5 with SHA-256 (RFC 8017 9.2), then m^d mod n.
        let digest = ring::digest::digest(&ring::digest::SHA256, input);
        let prefix: [u8; 19] = [
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ];
        let mut em = vec![0x00, 0x01];
        em.extend(std::iter::repeat_n(0xff, 256 - 3 - prefix.len() - 32));
        em.push(0x00);
        em.extend_from_slice(&prefix);
        em.extend_from_slice(digest.as_ref());
        let s = BigUint::from_bytes_be(&em).modpow(&d, &n).to_bytes_be();
        [vec![0; 256 - s.len()], s].concat()
    };
    (jwk, sign)
}

#[tokio::test]
async fn row_28_rsa_exponents_other_than_65537_only_where_a_source_allows_them() {
    let (jwk, sign) = rsa_e3_signer();
    let input = format!(
        "{}.{}",
        b64(header("RS256", Some("e-3")).to_string().as_bytes()),
        b64(good_claims(GITLAB).to_string().as_bytes())
    );
    let token = format!("{input}.{}", b64(&sign(input.as_bytes())));
    let f = serving_jwks(vec![jwk.clone()], "", "").await;
    f.refuses("e = 3 by default", &token).await;
    let f = serving_jwks(vec![jwk], "allow_any_rsa_exponent = true", "").await;
    assert!(
        generate_token(f.addr(), &Headers::bearer(&token))
            .await
            .is_ok(),
        "an e = 3 key allowed by its source verifies"
    );
}

#[tokio::test]
async fn row_28_a_kid_several_keys_carry_is_refused_not_guessed() {
    let mut first = rs().jwk();
    first["kid"] = json!("dup");
    let mut second = customers().jwk();
    second["kid"] = json!("dup");
    let f = serving_jwks(vec![second, first], "", "").await;
    for signer in [rs(), customers()] {
        let token = signed(&signer, &header("RS256", Some("dup")), &good_claims(GITLAB));
        f.refuses("a token naming an ambiguous kid", &token).await;
    }
}

#[tokio::test]
async fn row_29_kidless_tokens_try_a_bounded_number_of_keys() {
    // Five other keys first (the most recent in a static file: listed first), then the signer.
    let others: Vec<Value> = (0..5)
        .map(|i| {
            let mut k = customers().jwk();
            k["kid"] = json!(format!("other-{i}"));
            k
        })
        .collect();
    let kidless = signed(&rs(), &header("RS256", None), &good_claims(GITLAB));
    let f = serving_jwks(others.clone(), "", "").await;
    f.refuses("a kid-less token whose key is sixth", &kidless)
        .await;
    let f = serving_jwks(others, "", "[limits]\nmax_kidless_candidates = 6").await;
    assert!(generate_token(f.addr(), &Headers::bearer(&kidless))
        .await
        .is_ok());
}

#[tokio::test]
async fn row_34_a_jwks_with_a_member_twice_is_refused_whole() {
    let dir = TempDir::new();
    let jwk = rs().jwk();
    // The same key, with a second `n` that a lenient parser would take instead.
    let text = format!(
        "{{\"keys\":[{{\"kty\":\"RSA\",\"kid\":\"k\",\"e\":\"AQAB\",\"n\":{},\"n\":\"AQAB\"}}]}}",
        jwk["n"]
    );
    let jwks = dir.write("gitlab.jwks", &text);
    let file = dir.write(
        "config.toml",
        &format!(
            "[[key_sources]]\ntype = \"static\"\nname = \"gitlab\"\nissuer = \"{GITLAB}\"\njwks_file = \"{}\"\n",
            jwks.display()
        ),
    );
    let e = start_service(Some(&file), &[])
        .await
        .err()
        .expect("refused");
    let text = e.to_string();
    assert!(text.contains("gitlab") && text.contains("strict"), "{text}");
}
