//! How close token verification runs to the CPU's signature verification: prints operations per
//! second for ring's bare signature check, for the authenticator without its cache (parse,
//! route by issuer, select by kid, verify, claim checks), and for a cache hit.
//!
//! Run: `cargo bench -p duo-workflow-adapters --bench verify` (optionally `-- SECONDS` per figure).

use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_workflow_adapters::authenticator::{DynKeySource, JwtAuthenticator};
use duo_workflow_adapters::clock::SystemClock;
use duo_workflow_adapters::jose::signing::{generate_pem, SigningKey};
use duo_workflow_adapters::jose::token;
use duo_workflow_adapters::sources::StaticKeySource;
use duo_workflow_adapters::verified_cache::CacheLimits;
use duo_workflow_domain::keys::Algorithm;
use duo_workflow_domain::policy::ClaimChecks;
use duo_workflow_domain::ports::Authenticator;
use duo_workflow_domain::request::BearerToken;
use duo_workflow_domain::{Issuer, ServiceName, UnixTime};

fn rate(label: &str, budget: Duration, mut op: impl FnMut()) -> f64 {
    for _ in 0..50 {
        op(); // warm up
    }
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < budget {
        for _ in 0..100 {
            op();
        }
        n += 100;
    }
    let per_second = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "{label:<58} {per_second:>12.0} /s  {:>9.2} µs",
        1e6 / per_second
    );
    per_second
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
    let claims = serde_json::json!({
        "iss": "https://gitlab.test", "aud": ServiceName::DEFAULT, "sub": "instance-1",
        "iat": now, "nbf": now - 5, "exp": now + 3600, "jti": "b5f5c8b4-53c4-4c46-9a3f-2f2bd2ef4b2c",
        "scopes": ["duo_workflow_execute_workflow"], "gitlab_realm": "self-managed",
        "gitlab_instance_id": "8b5b1d7c-6c34-4a79-9f62-2c2d3f4f5e6a", "duo_seat_count": "12",
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    println!("one core; {} s per figure", budget.as_secs_f64());
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
        let key = SigningKey::from_pem(&generate_pem(alg).unwrap()).unwrap();
        let public = key.public_key().clone();
        let tok = token::sign(&key, &claims, true);
        let (input, sig) = tok.rsplit_once('.').unwrap();
        let sig =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
        let bare = rate(
            &format!("{alg}: ring signature verification alone"),
            budget,
            || {
                assert!(public.verify(alg, input.as_bytes(), &sig));
            },
        );

        let make = |limits: CacheLimits| {
            let source = StaticKeySource::new(
                "bench",
                Issuer::new("https://gitlab.test"),
                vec![],
                vec![public.clone().into_issuer_key(Some(key.kid().to_owned()))],
                UnixTime::from_secs(now as i64).unwrap(),
            )
            .unwrap();
            let sources: Vec<DynKeySource> = vec![Arc::new(source)];
            JwtAuthenticator::new(
                sources,
                ClaimChecks::new(ServiceName::new(ServiceName::DEFAULT)),
                Arc::new(SystemClock),
            )
            .unwrap()
            .with_cache_limits(limits)
        };
        let bearer = BearerToken::new(tok.clone());
        let uncached = make(CacheLimits {
            max_entries: 0,
            max_bytes: 0,
        });
        let full = rate(&format!("{alg}: authenticate, no cache"), budget, || {
            runtime.block_on(uncached.authenticate(&bearer)).unwrap();
        });
        let kidless = BearerToken::new(token::sign(&key, &claims, false));
        rate(
            &format!("{alg}: authenticate, no cache, kid-less"),
            budget,
            || {
                runtime.block_on(uncached.authenticate(&kidless)).unwrap();
            },
        );
        let cached = make(CacheLimits::default());
        let hit = rate(&format!("{alg}: authenticate, cache hit"), budget, || {
            runtime.block_on(cached.authenticate(&bearer)).unwrap();
        });
        println!(
            "{alg}: uncached authentication runs at {:.0}% of bare verification; a cache hit is {:.0}x faster\n",
            100.0 * full / bare,
            hit / full
        );
    }
}
