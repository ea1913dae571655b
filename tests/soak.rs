//! Soak: a thousand concurrent `ExecuteWorkflow` streams, then tens of thousands of calls mixing
//! good, bad and expired tokens across issuers, all on loopback and bounded in count. Every good
//! call must pass, every bad one be refused, and memory must stay flat. Prints its figures
//! (`cargo test --test soak -- --nocapture`).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_workflow_contract::duo_workflow_client::DuoWorkflowClient;
use duo_workflow_contract::GenerateTokenRequest;
use duo_workflow_service::config::ENV_UPSTREAM_URL;
use serde_json::json;
use support::{b64, good_claims, key, sign_raw, start_service, Headers, TempDir};
use tonic::transport::Channel;
use tonic::Code;

const GITLAB: &str = "https://gitlab.test";
const CUSTOMERS: &str = "https://customers.test";
const STREAMS: usize = 1000;
const CALLS: usize = 20_000;
const CONNECTIONS: usize = 8;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn signed(k: &support::SigningKeyPem, claims: &serde_json::Value) -> String {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": k.kid()});
    sign_raw(
        &k.key,
        header.to_string().as_bytes(),
        claims.to_string().as_bytes(),
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Good,
    BadSignature,
    Expired,
    WrongIssuerKey,
    Garbage,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_and_twenty_thousand_mixed_calls() {
    let dir = TempDir::new();
    let (gitlab_key, customers_key) = (key("rs256-gitlab"), key("rs256-customers"));
    let gitlab_jwks = dir.write("g.jwks", &json!({"keys": [gitlab_key.jwk()]}).to_string());
    let customers_jwks = dir.write(
        "c.jwks",
        &json!({"keys": [customers_key.jwk()]}).to_string(),
    );
    let config = dir.write(
        "config.toml",
        &format!(
            "[[key_sources]]\ntype = \"static\"\nname = \"gitlab\"\nissuer = \"{GITLAB}\"\njwks_file = \"{}\"\n\
             [[key_sources]]\ntype = \"static\"\nname = \"customers\"\nissuer = \"{CUSTOMERS}\"\njwks_file = \"{}\"\n",
            gitlab_jwks.display(),
            customers_jwks.display()
        ),
    );
    let executor = support::executor::start().await;
    *executor.executor.delay.lock().unwrap() = Some(Duration::from_millis(800));
    let upstream = format!("http://{}", executor.addr);
    let service = start_service(Some(&config), &[(ENV_UPSTREAM_URL, upstream.as_str())])
        .await
        .unwrap();
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{}", service.addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }

    // Phase 1: a thousand streams open at once (the executor holds each for 800 ms).
    let token = Arc::new(signed(&gitlab_key, &good_claims(GITLAB)));
    let started = Instant::now();
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let (channel, token) = (channels[i % CONNECTIONS].clone(), token.clone());
        streams.push(tokio::spawn(async move {
            let mut req =
                tonic::Request::new(futures::stream::iter(vec![support::start_event("soak")]));
            Headers::bearer(&token).apply(req.metadata_mut());
            let mut stream = DuoWorkflowClient::new(channel)
                .execute_workflow(req)
                .await?
                .into_inner();
            let mut n = 0;
            while stream.message().await?.is_some() {
                n += 1;
            }
            Ok::<usize, tonic::Status>(n)
        }));
    }
    for s in streams {
        assert_eq!(s.await.unwrap().unwrap(), 2);
    }
    let stream_time = started.elapsed();
    let relayed = executor
        .executor
        .rpcs()
        .into_iter()
        .filter(|rpc| *rpc == "ExecuteWorkflow")
        .count();
    assert_eq!(relayed, STREAMS);
    println!(
        "{STREAMS} concurrent ExecuteWorkflow streams relayed in {:.2} s",
        stream_time.as_secs_f64()
    );

    // Phase 2: mixed calls. Good tokens come from a small pool, as real instances reuse theirs.
    let mut pool: Vec<(Kind, String)> = Vec::new();
    for i in 0..50 {
        let (k, iss) = if i % 2 == 0 {
            (&gitlab_key, GITLAB)
        } else {
            (&customers_key, CUSTOMERS)
        };
        let mut c = good_claims(iss);
        c["jti"] = json!(format!("good-{i}"));
        pool.push((Kind::Good, signed(k, &c)));
        let t = signed(k, &c);
        let (input, sig) = t.rsplit_once('.').unwrap();
        let mut sig =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
        sig[i % 200] ^= 0x55;
        pool.push((Kind::BadSignature, format!("{input}.{}", b64(&sig))));
        let mut expired = good_claims(iss);
        expired["exp"] = json!(expired["iat"].as_i64().unwrap() - 3600);
        expired["iat"] = json!(expired["iat"].as_i64().unwrap() - 7200);
        expired["nbf"] = expired["iat"].clone();
        pool.push((Kind::Expired, signed(k, &expired)));
        let other = if i % 2 == 0 {
            &customers_key
        } else {
            &gitlab_key
        };
        pool.push((Kind::WrongIssuerKey, signed(other, &c)));
        pool.push((
            Kind::Garbage,
            format!("{}.{}.{}", b64(&[i as u8; 40]), b64(b"{}"), b64(&[0; 256])),
        ));
    }
    let pool = Arc::new(pool);
    let run = |from: usize, to: usize| {
        let (pool, channels) = (pool.clone(), channels.clone());
        async move {
            let (tx, mut rx) =
                tokio::sync::mpsc::channel::<(Kind, Result<(), tonic::Status>)>(1024);
            let workers = 64;
            for w in 0..workers {
                let (pool, channel, tx) =
                    (pool.clone(), channels[w % CONNECTIONS].clone(), tx.clone());
                tokio::spawn(async move {
                    let mut client = DuoWorkflowClient::new(channel);
                    for i in (from + w..to).step_by(workers) {
                        let (kind, token) = &pool[(i * 7919) % pool.len()];
                        let mut req = tonic::Request::new(GenerateTokenRequest {
                            workflow_definition: None,
                        });
                        Headers::bearer(token).apply(req.metadata_mut());
                        let result = client.generate_token(req).await.map(|_| ());
                        tx.send((*kind, result)).await.unwrap();
                    }
                });
            }
            drop(tx);
            let mut counts = std::collections::HashMap::<String, usize>::new();
            while let Some((kind, result)) = rx.recv().await {
                match (kind, &result) {
                    (Kind::Good, Ok(())) => {}
                    (Kind::Good, Err(s)) => panic!("a good call failed: {s:?}"),
                    (_, Ok(())) => panic!("a {kind:?} token was accepted"),
                    (_, Err(s)) => {
                        assert_eq!(s.code(), Code::Unauthenticated, "{kind:?}");
                        assert_eq!(s.message(), "Forbidden by auth provider", "{kind:?}");
                    }
                }
                *counts.entry(format!("{kind:?}")).or_default() += 1;
            }
            counts
        }
    };
    let warm_up = CALLS / 10;
    run(0, warm_up).await;
    let rss_before = rss_kib();
    let started = Instant::now();
    let counts = run(warm_up, CALLS).await;
    let elapsed = started.elapsed();
    let rss_after = rss_kib();
    let total: usize = counts.values().sum();
    assert_eq!(total, CALLS - warm_up);
    println!(
        "{total} mixed GenerateToken calls in {:.2} s ({:.0}/s, client and server on 2 cores, debug build): {counts:?}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "resident memory: {} KiB after warm-up, {} KiB after the run",
        rss_before, rss_after
    );
    // Flat: the cache and every buffer are bounded; 32 MiB of slack for allocator behaviour.
    assert!(
        rss_after < rss_before + 32 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    service.stop().await.unwrap();
}
