//! What refusing costs, counted in signature checks (checklist row 29): a kid-less bad token
//! costs at most the candidate bound, a replayed refusal costs none, and nothing an attacker
//! sends makes the service check more. One test in its own binary, because the counter is
//! process-wide.

use std::sync::Arc;

use duo_workflow_adapters::authenticator::{DynKeySource, JwtAuthenticator};
use duo_workflow_adapters::clock::SystemClock;
use duo_workflow_adapters::jose::keys::signature_checks;
use duo_workflow_adapters::jose::signing::{generate_pem, SigningKey};
use duo_workflow_adapters::jose::token;
use duo_workflow_adapters::sources::StaticKeySource;
use duo_workflow_domain::keys::{Algorithm, DEFAULT_KIDLESS_CANDIDATES};
use duo_workflow_domain::policy::ClaimChecks;
use duo_workflow_domain::ports::{Authenticator, VerificationError};
use duo_workflow_domain::request::BearerToken;
use duo_workflow_domain::{Issuer, Rejection, ServiceName, UnixTime};

const ISSUER: &str = "https://gitlab.test";

#[test]
fn refusing_costs_at_most_the_candidate_bound_and_a_replay_costs_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = SigningKey::from_pem(&generate_pem(Algorithm::EdDSA).unwrap()).unwrap();
    let stranger = SigningKey::from_pem(&generate_pem(Algorithm::EdDSA).unwrap()).unwrap();
    let keys = (0..100)
        .map(|i| {
            key.public_key()
                .clone()
                .into_issuer_key(Some(format!("key-{i}")))
        })
        .collect();
    let source: DynKeySource = Arc::new(
        StaticKeySource::new(
            "s",
            Issuer::new(ISSUER),
            vec![],
            keys,
            UnixTime::from_secs(now as i64).unwrap(),
        )
        .unwrap(),
    );
    let auth = JwtAuthenticator::new(
        vec![source],
        ClaimChecks::new(ServiceName::new(ServiceName::DEFAULT)),
        Arc::new(SystemClock),
    )
    .unwrap();
    let claims = |exp: u64, jti: &str| {
        serde_json::json!({"iss": ISSUER, "aud": ServiceName::DEFAULT, "iat": now - 10,
            "exp": exp, "jti": jti})
    };
    let judge = |t: &str| runtime.block_on(auth.authenticate(&BearerToken::new(t.to_owned())));
    // The checks one call costs, and its answer.
    let cost = |t: &str| {
        let before = signature_checks();
        let result = judge(t);
        (signature_checks() - before, result)
    };
    let forbidden = |r: Result<_, VerificationError>, why: Rejection| {
        assert_eq!(r.err(), Some(VerificationError::Rejected(why)));
    };

    // A kid-less token signed by a key the issuer does not have: at most the bound, then none.
    let kidless = token::sign(&stranger, &claims(now + 600, "a"), false);
    let (checks, result) = cost(&kidless);
    assert_eq!(checks, DEFAULT_KIDLESS_CANDIDATES as u64);
    forbidden(result, Rejection::BadSignature);
    for _ in 0..3 {
        let (checks, result) = cost(&kidless);
        assert_eq!(checks, 0, "a replayed refusal cost signature work");
        forbidden(result, Rejection::BadSignature);
    }

    // A token naming a key, with a signature by another: one check, then none.
    let mut named = token::sign(&stranger, &claims(now + 600, "b"), true);
    named = named.replacen(
        named.split('.').next().unwrap(),
        &base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"alg":"EdDSA","typ":"JWT","kid":"key-42"}"#,
        ),
        1,
    );
    let (checks, result) = cost(&named);
    assert_eq!(checks, 1, "{result:?}");
    assert_eq!(cost(&named).0, 0);

    // A validly signed token refused for its claims (expired): one check, then none.
    let expired = token::sign(&key, &claims(now - 3600, "c"), false);
    let (checks, result) = cost(&expired);
    assert_eq!(checks, 1);
    forbidden(result, Rejection::Expired);
    assert_eq!(cost(&expired).0, 0);

    // Random kids cost nothing; a good token is still judged, and then cached.
    for i in 0..20 {
        let random = token::sign(&stranger, &claims(now + 600, &format!("r{i}")), true);
        let random = random.replacen(
            random.split('.').next().unwrap(),
            &base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                format!(r#"{{"alg":"EdDSA","kid":"random-{i}"}}"#),
            ),
            1,
        );
        let (checks, result) = cost(&random);
        assert_eq!(checks, 0);
        forbidden(result, Rejection::UnknownKeyId);
    }
    let good = token::sign(&key, &claims(now + 600, "d"), false);
    assert_eq!(
        cost(&good).0,
        1,
        "the most recent key is the first candidate"
    );
    assert!(judge(&good).is_ok());
}
