//! Authenticated calls per second through the whole service over gRPC on loopback: the release
//! build, the real adapters, RS256 instance tokens, `ExecuteWorkflow` with no executor configured
//! (so each call is authentication + authorization + an UNIMPLEMENTED answer, no minting).
//! Then `GenerateToken`: one call's latency on a warm connection, and calls per second from 4
//! concurrent callers against the bare rate at which ring signs with the authority's key (what
//! each call must do once), measured in the same run. Client and server share this machine's
//! cores.
//!
//! Run: `cargo bench -p duo-workflow-contract --bench grpc` (optionally `-- SECONDS`).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_workflow_contract::duo_workflow_client::DuoWorkflowClient;
use duo_workflow_contract::{
    client_event, ClientEvent, GenerateTokenRequest, StartWorkflowRequest,
};
use tonic::Code;

const CONCURRENCY: usize = 32;
const CONNECTIONS: usize = 4;

async fn run(addr: SocketAddr, tokens: Arc<Vec<String>>, budget: Duration) -> f64 {
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        let (channel, tokens) = (channels[w % CONNECTIONS].clone(), tokens.clone());
        workers.push(tokio::spawn(async move {
            let mut client = DuoWorkflowClient::new(channel);
            let mut n = 0usize;
            while started.elapsed() < budget {
                let token = &tokens[(w + n * CONCURRENCY) % tokens.len()];
                let start = ClientEvent {
                    response: Some(client_event::Response::StartRequest(
                        StartWorkflowRequest::default(),
                    )),
                };
                let mut req = tonic::Request::new(futures::stream::iter(vec![start]));
                common::authorize(req.metadata_mut(), token);
                let status = client
                    .execute_workflow(req)
                    .await
                    .expect_err("no executor is configured");
                assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Callers of `GenerateToken`, each on a connection of its own.
const TOKEN_CALLERS: usize = 4;

async fn generate_token(client: &mut DuoWorkflowClient<tonic::transport::Channel>, token: &str) {
    let mut req = tonic::Request::new(GenerateTokenRequest::default());
    common::authorize(req.metadata_mut(), token);
    req.metadata_mut().insert(
        "x-gitlab-global-user-id",
        tonic::metadata::MetadataValue::from_static("42"),
    );
    client.generate_token(req).await.expect("a token is minted");
}

/// `GenerateToken`: the median and best latency of single calls on a warm connection, then
/// calls per second from [`TOKEN_CALLERS`] concurrent callers.
async fn generate_tokens(
    addr: SocketAddr,
    token: Arc<String>,
    budget: Duration,
) -> (Duration, Duration, f64) {
    let connect = || async {
        DuoWorkflowClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    };
    let mut warm = connect().await;
    for _ in 0..20 {
        generate_token(&mut warm, &token).await;
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        generate_token(&mut warm, &token).await;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let (median, best) = (latencies[latencies.len() / 2], latencies[0]);

    let mut callers = Vec::new();
    for _ in 0..TOKEN_CALLERS {
        callers.push(connect().await);
    }
    let started = Instant::now();
    let workers: Vec<_> = callers
        .into_iter()
        .map(|mut client| {
            let token = token.clone();
            tokio::spawn(async move {
                let mut n = 0usize;
                while started.elapsed() < budget {
                    generate_token(&mut client, &token).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    (median, best, total as f64 / started.elapsed().as_secs_f64())
}

/// Signatures per second ring makes with `key`, on one core, over a token-sized input.
fn bare_signing_rate(
    key: &duo_workflow_adapters::jose::signing::SigningKey,
    budget: Duration,
) -> f64 {
    let input = [b'x'; 600];
    let started = Instant::now();
    let mut n = 0usize;
    while started.elapsed() < budget {
        std::hint::black_box(key.sign(std::hint::black_box(&input)));
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let budget = common::seconds_per_figure(5.0);
    let issuer = common::Issuer::new("grpc");
    // Distinct tokens, so that with the cache off every call verifies a signature.
    let tokens: Vec<String> = (0..2000)
        .map(|i| {
            issuer.token(
                &["duo_workflow_execute_workflow"],
                Some(i.to_string()),
                i % 2 == 0,
            )
        })
        .collect();
    let tokens = Arc::new(tokens);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("{cores} cores shared by client and server; {CONCURRENCY} concurrent calls over {CONNECTIONS} connections; {} s per figure", budget.as_secs_f64());
    for (label, cache_entries) in [
        ("verified-token cache off", 0usize),
        ("verified-token cache on", 10_000),
    ] {
        let config = issuer.config(
            &format!("c{cache_entries}.toml"),
            &format!("[limits]\nverified_token_cache_entries = {cache_entries}"),
        );
        let settings = common::settings(&config);
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let service = duo_workflow_service::server::start(&settings, loopback, loopback)
            .await
            .unwrap();
        let rate = run(service.addr, tokens.clone(), budget).await;
        println!("authenticated ExecuteWorkflow calls, {label:<26} {rate:>10.0} /s");
        service.stop().await.unwrap();
    }

    let config = issuer.config("tokens.toml", "");
    let settings = common::settings(&config);
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let service = duo_workflow_service::server::start(&settings, loopback, loopback)
        .await
        .unwrap();
    let token = Arc::new(issuer.token(&["duo_workflow_execute_workflow"], None, true));
    let (median, best, rate) = generate_tokens(service.addr, token, budget).await;
    let keys = service.authority.keys();
    let key = keys.signing();
    let signing = bare_signing_rate(key, budget);
    println!(
        "GenerateToken on a warm connection: median {:.2} ms, best {:.2} ms",
        median.as_secs_f64() * 1e3,
        best.as_secs_f64() * 1e3
    );
    println!(
        "GenerateToken/s, {TOKEN_CALLERS} concurrent callers {rate:>10.0} /s ({:.2}x the bare signing rate)",
        rate / signing
    );
    println!(
        "bare ring signing ({}, one core)   {signing:>10.0} /s",
        key.algorithm()
    );
    service.stop().await.unwrap();
}
