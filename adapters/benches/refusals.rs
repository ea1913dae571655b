//! What a flood of bad tokens costs (checklist row 29): CPU per refused request against a source
//! of 100 RSA-2048 keys, for fresh and replayed bad tokens, kid-less and with random `kid`s, with
//! the service's bounds (at most 5 candidate keys for a kid-less token; refusals remembered) and,
//! for comparison, without them. One thread; the authenticator alone (parse, route, verify,
//! claim checks), which is where a flood's cost lies.
//!
//! Run: `cargo bench -p duo-workflow-adapters --bench refusals` (optionally `-- SECONDS`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_workflow_adapters::authenticator::{DynKeySource, JwtAuthenticator};
use duo_workflow_adapters::clock::SystemClock;
use duo_workflow_adapters::jose::keys::signature_checks;
use duo_workflow_adapters::jose::signing::{generate_pem, SigningKey};
use duo_workflow_adapters::sources::StaticKeySource;
use duo_workflow_adapters::verified_cache::RefusedLimits;
use duo_workflow_domain::keys::{Algorithm, MAX_KEYS_PER_SOURCE};
use duo_workflow_domain::policy::ClaimChecks;
use duo_workflow_domain::ports::Authenticator;
use duo_workflow_domain::request::BearerToken;
use duo_workflow_domain::{Issuer, ServiceName, UnixTime};

const ISSUER: &str = "https://gitlab.test";

/// Refuses `next()`'s tokens for `budget`; prints µs of CPU (one thread) and signature checks
/// per refused request.
fn per_refusal(
    label: &str,
    budget: Duration,
    runtime: &tokio::runtime::Runtime,
    auth: &JwtAuthenticator,
    mut next: impl FnMut(u64) -> BearerToken,
) {
    let checks_before = signature_checks();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < budget {
        let bearer = next(n);
        assert!(runtime.block_on(auth.authenticate(&bearer)).is_err());
        n += 1;
    }
    let cpu = cpu_seconds() - cpu_before;
    let checks = signature_checks() - checks_before;
    println!(
        "{label:<62} {:>9.1} µs CPU   {:>6.2} signature checks   ({n} requests)",
        1e6 * cpu / n as f64,
        checks as f64 / n as f64
    );
}

/// This thread's CPU time (the benchmark runs on one thread).
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec, which the call only writes.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let budget = Duration::from_secs_f64(
        std::env::args()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(2.0),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let key = SigningKey::from_pem(&generate_pem(Algorithm::RS256).unwrap()).unwrap();
    let keys = (0..MAX_KEYS_PER_SOURCE)
        .map(|i| {
            key.public_key()
                .clone()
                .into_issuer_key(Some(format!("key-{i}")))
        })
        .collect();
    let source: DynKeySource = Arc::new(
        StaticKeySource::new(
            "bench",
            Issuer::new(ISSUER),
            vec![],
            keys,
            UnixTime::from_secs(now as i64).unwrap(),
        )
        .unwrap(),
    );
    let authenticator = |bounded: bool| {
        let a = JwtAuthenticator::new(
            vec![source.clone()],
            ClaimChecks::new(ServiceName::new(ServiceName::DEFAULT)),
            Arc::new(SystemClock),
        )
        .unwrap();
        if bounded {
            a
        } else {
            a.with_max_kidless_candidates(MAX_KEYS_PER_SOURCE)
                .with_refused_limits(RefusedLimits {
                    max_entries: 0,
                    ..RefusedLimits::default()
                })
        }
    };
    // A token whose signature is 256 bytes of noise: the right shape, no key verifies it. Built
    // without signing anything, so that only the service's work is measured.
    let b64 =
        |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
    let noise = b64(&[0x5a; 256]);
    let bad = |kid: Option<String>, jti: u64| {
        let claims = serde_json::json!({
            "iss": ISSUER, "aud": ServiceName::DEFAULT, "sub": "instance-1",
            "iat": now, "exp": now + 3600, "jti": jti.to_string(),
        });
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = kid.into();
        }
        BearerToken::new(format!(
            "{}.{}.{noise}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes()),
        ))
    };
    println!(
        "one thread; {} s per figure; a source of {MAX_KEYS_PER_SOURCE} RSA-2048 keys",
        budget.as_secs_f64()
    );
    for (bounded, title) in [
        (true, "the service's bounds"),
        (false, "without them (before)"),
    ] {
        println!("{title}:");
        let auth = authenticator(bounded);
        per_refusal(
            "  kid-less, a fresh bad token each time",
            budget,
            &runtime,
            &auth,
            |i| bad(None, i),
        );
        let replayed = bad(None, u64::MAX);
        per_refusal(
            "  kid-less, the same bad token replayed",
            budget,
            &runtime,
            &auth,
            |_| replayed.clone(),
        );
        per_refusal("  a random kid each time", budget, &runtime, &auth, |i| {
            bad(Some(format!("random-{i}")), i)
        });
        per_refusal(
            "  a known kid, a fresh bad signature each time",
            budget,
            &runtime,
            &auth,
            |i| bad(Some("key-7".into()), i),
        );
        let replayed = bad(Some("key-7".into()), u64::MAX - 1);
        per_refusal(
            "  a known kid, the same bad token replayed",
            budget,
            &runtime,
            &auth,
            |_| replayed.clone(),
        );
    }
}
