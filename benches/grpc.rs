//! Authenticated calls per second through the whole service over gRPC on loopback: the release
//! build, the real adapters, RS256 instance tokens, `ExecuteWorkflow` with no executor configured
//! (so each call is authentication + authorization + an UNIMPLEMENTED answer, no minting).
//! Client and server share this machine's cores.
//!
//! Run: `cargo bench -p duo-workflow-contract --bench grpc` (optionally `-- SECONDS`).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_workflow_contract::duo_workflow_client::DuoWorkflowClient;
use duo_workflow_contract::{client_event, ClientEvent, StartWorkflowRequest};
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
}
