//! The gRPC listener through the real service (every real adapter, from configuration): TLS
//! (mutual, reloaded), IPv6, metadata limits, keepalive, the handshake timeout, the bounds on
//! calls without a token, and the limit on server-provoked resets. Raw HTTP/2 frames where a
//! client library would hide what is on the wire. Attacks whose cost is measured as memory or
//! CPU of the service's own process are in `app/tests/binary.rs`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use duo_workflow_adapters::reload::Reloaded;
use duo_workflow_adapters::transport::metadata::metadata_size;
use duo_workflow_contract::duo_workflow_client::DuoWorkflowClient;
use duo_workflow_contract::GenerateTokenRequest;
use duo_workflow_service::config::{
    ENV_AUTH_ENABLED, ENV_HTTP_TLS_ENABLED, ENV_TLS_CERT_FILE, ENV_TLS_CLIENT_CA_FILE,
    ENV_TLS_ENABLED, ENV_TLS_KEY_FILE, ENV_UPSTREAM_URL,
};
use duo_workflow_service::reload::Trigger;
use hyper::body::Frame;
use prost::Message;
use support::raw::{self, framed, frames_body};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

const GITLAB: &str = "https://gitlab.listener.test";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";

/// A service trusting one instance key, with `limits` (TOML under `[limits]`) and `env`.
async fn service_with(
    dir: &TempDir,
    limits: &str,
    env: &[(&str, &str)],
) -> (support::Running, Headers) {
    let instance = key("rs256-instance");
    let config = static_source_config(dir, GITLAB, &[&instance]);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("[limits]\n{limits}\n{text}")).unwrap();
    let running = start_service(Some(&config), env).await.unwrap();
    let headers = Headers::bearer(&instance_token(&instance, GITLAB, &[EXECUTE]));
    (running, headers)
}

/// An empty `HealthCheckRequest` (the whole service), as a gRPC request body.
fn health_request() -> raw::ChannelBody {
    frames_body(vec![Frame::data(framed(&[]))])
}

// ---------------------------------------------------------------------------------------------
// Metadata

#[tokio::test]
async fn metadata_of_24_kib_passes_and_more_is_resource_exhausted_as_a_grpc_status() {
    let dir = TempDir::new();
    let (service, headers) = service_with(&dir, "", &[]).await;
    let addr = service.addr;
    // A request whose metadata (counted as HPACK does, pseudo-headers included) is `total` bytes.
    let request_of = |total: usize| {
        let bare = raw::request(HEALTH_CHECK, &[("x-padding", "")], health_request());
        let pad = total - metadata_size(&bare);
        let padding = "p".repeat(pad);
        let req = raw::request(HEALTH_CHECK, &[("x-padding", &padding)], health_request());
        assert_eq!(metadata_size(&req), total);
        req
    };
    let status_of = |total: usize| {
        let req = request_of(total);
        async move { raw::call(addr, req).await }
    };
    let at_limit = status_of(24 * 1024).await;
    assert_eq!(at_limit.grpc_status(), Some("0"), "{at_limit:?}");
    for total in [24 * 1024 + 1, 30 * 1024] {
        let over = status_of(total).await;
        assert_eq!(over.grpc_status(), Some("8"), "{total}: {over:?}");
        assert!(
            over.grpc_message().unwrap().contains("metadata"),
            "{over:?}"
        );
    }

    // The same through tonic, on an authenticated call: 22 KiB of padding beside the token and
    // the Cloud Connector headers (about 24 KiB in all) passes; 30 KiB is RESOURCE_EXHAUSTED.
    let call = |pad: usize| {
        let headers = headers.clone();
        async move {
            let mut req = tonic::Request::new(GenerateTokenRequest::default());
            headers.apply(req.metadata_mut());
            req.metadata_mut()
                .insert("x-padding", "p".repeat(pad).parse().unwrap());
            client(addr).await.generate_token(req).await
        }
    };
    call(22 * 1024).await.expect("22 KiB of padding passes");
    let refused = call(30 * 1024).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // Above the HTTP/2 layer's own cap (64 KiB) h2 refuses the stream without decoding it; the
    // connection and the service go on.
    assert!(call(100 * 1024).await.is_err());
    call(0).await.expect("the service still answers");
    service.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// IPv6

#[tokio::test]
async fn the_ipv6_loopback_is_served() {
    let loopback: SocketAddr = "[::1]:0".parse().unwrap();
    if std::net::TcpListener::bind(loopback).is_err() {
        eprintln!("no IPv6 loopback on this machine: skipped");
        return;
    }
    let dir = TempDir::new();
    let instance = key("rs256-instance");
    let config = static_source_config(&dir, GITLAB, &[&instance]);
    let service = start_service_at(loopback, Some(&config), &[], &[])
        .await
        .unwrap();
    assert!(service.addr.is_ipv6());
    let headers = Headers::bearer(&instance_token(&instance, GITLAB, &[EXECUTE]));
    generate_token(service.addr, &headers).await.unwrap();
    service.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/2 frames, for the connection-level behaviour.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const PRIORITY: u8 = 2;
const ACK: u8 = 1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

struct Received {
    kind: u8,
    flags: u8,
    payload: Vec<u8>,
}

/// The frames the server sends, read by a task of their own (`None`: the connection closed).
fn frames_of(
    mut read: tokio::net::tcp::OwnedReadHalf,
) -> tokio::sync::mpsc::Receiver<Option<Received>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            let mut head = [0u8; 9];
            if read.read_exact(&mut head).await.is_err() {
                let _ = tx.send(None).await;
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            if read.read_exact(&mut payload).await.is_err() {
                let _ = tx.send(None).await;
                return;
            }
            let frame = Received {
                kind: head[3],
                flags: head[4],
                payload,
            };
            if tx.send(Some(frame)).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// A connection that has sent its preface and an empty SETTINGS frame.
async fn h2_connection(
    addr: SocketAddr,
) -> (
    tokio::net::tcp::OwnedWriteHalf,
    tokio::sync::mpsc::Receiver<Option<Received>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    write.write_all(PREFACE).await.unwrap();
    write.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    (write, frames_of(read))
}

#[tokio::test]
async fn a_keepalive_ping_arrives_within_25_s_on_an_idle_connection_and_client_pings_are_answered()
{
    let dir = TempDir::new();
    let (service, _) = service_with(&dir, "", &[]).await;
    let (mut write, mut frames) = h2_connection(service.addr).await;
    let opened = Instant::now();
    let mut client_pings_answered = 0;
    let mut next_ping = Instant::now();
    let server_ping = loop {
        // The client pings every second without a call (far more often than GitLab's
        // clients' 10 s): each is answered, and never with a GOAWAY.
        if Instant::now() >= next_ping {
            write
                .write_all(&frame(PING, 0, 0, b"client!!"))
                .await
                .unwrap();
            next_ping += Duration::from_secs(1);
        }
        let wait = next_ping.saturating_duration_since(Instant::now());
        let Ok(received) = tokio::time::timeout(wait, frames.recv()).await else {
            continue;
        };
        let f = received.flatten().expect("the connection closed");
        match (f.kind, f.flags & ACK) {
            (SETTINGS, 0) => write
                .write_all(&frame(SETTINGS, ACK, 0, &[]))
                .await
                .unwrap(),
            (PING, ACK) => {
                assert_eq!(f.payload, b"client!!");
                client_pings_answered += 1;
            }
            (PING, 0) => break opened.elapsed(),
            (GOAWAY, _) => panic!("GOAWAY after {:?}", opened.elapsed()),
            _ => {}
        }
        assert!(
            opened.elapsed() < Duration::from_secs(25),
            "no keepalive ping within 25 s"
        );
    };
    println!("keepalive ping after {server_ping:?}; {client_pings_answered} client pings answered");
    assert!(server_ping >= Duration::from_secs(15), "{server_ping:?}");
    assert!(client_pings_answered >= 15);
    service.stop().await.unwrap();
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed() {
    let dir = TempDir::new();
    let limits = "keepalive_interval_seconds = 1\nkeepalive_timeout_seconds = 1";
    let (service, _) = service_with(&dir, limits, &[]).await;
    let (mut write, mut frames) = h2_connection(service.addr).await;
    let opened = Instant::now();
    // Acknowledges the SETTINGS, then never answers a PING.
    loop {
        let f = tokio::time::timeout(Duration::from_secs(10), frames.recv())
            .await
            .expect("the dead peer is never closed")
            .flatten();
        match f {
            None => break,
            Some(f) if f.kind == SETTINGS && f.flags & ACK == 0 => write
                .write_all(&frame(SETTINGS, ACK, 0, &[]))
                .await
                .unwrap(),
            Some(_) => {}
        }
    }
    let closed = opened.elapsed();
    println!("dead peer closed after {closed:?}");
    assert!(closed < Duration::from_secs(5), "{closed:?}");
    service.stop().await.unwrap();
}

#[tokio::test]
async fn connections_without_the_http2_preface_are_closed_after_the_handshake_timeout() {
    let dir = TempDir::new();
    let (service, _) = service_with(&dir, "handshake_timeout_seconds = 1", &[]).await;
    // A connection that completed its handshake stays, idle, past the timeout.
    let mut established = raw::connect(service.addr).await;
    let started = Instant::now();
    let attempts: Vec<&[u8]> = vec![b"", b"PRI * HTTP/2.0\r\n", PREFACE];
    let mut closing = Vec::new();
    let addr = service.addr;
    for sent in attempts {
        closing.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(sent).await.unwrap();
            let mut buf = vec![0; 1024];
            // Read until the server closes (it may send its SETTINGS first).
            loop {
                match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                    Ok(Ok(_)) => continue,
                    Err(_) => panic!("a connection that sent {sent:?} was never closed"),
                }
            }
        }));
    }
    for c in closing {
        let took = c.await.unwrap();
        assert!(took < Duration::from_secs(3), "closed after {took:?}");
        assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    }
    let answer = raw::read_response(
        established
            .send_request(raw::request(HEALTH_CHECK, &[], health_request()))
            .await
            .expect("the established connection is still open"),
    )
    .await;
    assert_eq!(answer.grpc_status(), Some("0"));
    service.stop().await.unwrap();
}

#[tokio::test]
async fn a_flood_of_server_provoked_resets_closes_the_connection_with_goaway() {
    let dir = TempDir::new();
    let (service, _) = service_with(&dir, "max_reset_streams_per_connection = 10", &[]).await;
    let (mut write, mut frames) = h2_connection(service.addr).await;
    // PRIORITY frames making new streams depend on themselves: each a stream error the server
    // answers with RST_STREAM.
    for i in 0..50u32 {
        let stream = 2 * i + 1;
        let mut payload = stream.to_be_bytes().to_vec();
        payload.push(16);
        if write
            .write_all(&frame(PRIORITY, 0, stream, &payload))
            .await
            .is_err()
        {
            break;
        }
    }
    let (mut resets, mut goaway) = (0, None);
    while let Ok(Some(Some(f))) = tokio::time::timeout(Duration::from_secs(5), frames.recv()).await
    {
        match f.kind {
            3 => resets += 1,
            GOAWAY => goaway = Some(u32::from_be_bytes(f.payload[4..8].try_into().unwrap())),
            _ => {}
        }
    }
    println!("{resets} RST_STREAM, then GOAWAY {goaway:?}");
    assert_eq!(goaway, Some(0xb), "ENHANCE_YOUR_CALM");
    assert!(resets <= 10, "{resets}");
    // Other connections are served.
    let ok = raw::call(
        service.addr,
        raw::request(HEALTH_CHECK, &[], health_request()),
    )
    .await;
    assert_eq!(ok.grpc_status(), Some("0"));
    service.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Calls without a token

#[tokio::test]
async fn calls_without_a_token_are_bounded_per_connection_and_in_total() {
    let dir = TempDir::new();
    let limits = "unauthenticated_streams_per_connection = 2\nunauthenticated_streams = 3";
    let (service, headers) = service_with(&dir, limits, &[]).await;
    let watch = |send: &mut hyper::client::conn::http2::SendRequest<raw::ChannelBody>| {
        send.send_request(raw::request(HEALTH_WATCH, &[], health_request()))
    };
    let held = |r: &hyper::Response<hyper::body::Incoming>| {
        r.status() == 200 && r.headers().get("grpc-status").is_none()
    };
    let mut a = raw::connect(service.addr).await;
    let a1 = watch(&mut a).await.unwrap();
    let a2 = watch(&mut a).await.unwrap();
    assert!(held(&a1) && held(&a2));
    let refused = raw::read_response(watch(&mut a).await.unwrap()).await;
    assert_eq!(refused.grpc_status(), Some("8"), "the connection's third");
    let mut b = raw::connect(service.addr).await;
    let b1 = watch(&mut b).await.unwrap();
    assert!(held(&b1));
    let refused = raw::read_response(watch(&mut b).await.unwrap()).await;
    assert_eq!(refused.grpc_status(), Some("8"), "the service's fourth");
    // The health check (what probes use) is bounded per connection only: still answered.
    let check = raw::call(
        service.addr,
        raw::request(HEALTH_CHECK, &[], health_request()),
    )
    .await;
    assert_eq!(check.grpc_status(), Some("0"));
    // And a caller with a token is not concerned.
    generate_token(service.addr, &headers).await.unwrap();
    // Streams that end give their places back.
    drop((a1, a2));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = watch(&mut b).await.unwrap();
        if held(&r) {
            break;
        }
        assert!(Instant::now() < deadline, "the places never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(b1);
    service.stop().await.unwrap();
}

#[tokio::test]
async fn a_large_or_half_sent_health_request_is_refused_without_being_buffered() {
    let dir = TempDir::new();
    let (service, _) = service_with(&dir, "", &[]).await;
    // One message of 5000 bytes (beyond the 4 KiB a call without a token may send).
    let big = raw::call(
        service.addr,
        raw::request(
            HEALTH_CHECK,
            &[],
            frames_body(vec![Frame::data(framed(&[0; 5000]))]),
        ),
    )
    .await;
    assert_eq!(big.grpc_status(), Some("8"), "{big:?}");
    // A message announced as 4 MB, of which 64 KiB are sent; the rest never comes. The
    // answer arrives while the client is still "sending".
    let (tx, body) = raw::channel_body(8);
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&4_000_000u32.to_be_bytes());
    tx.send(Ok(Frame::data(Bytes::from(prefix)))).await.unwrap();
    tx.send(Ok(Frame::data(Bytes::from(vec![0u8; 64 * 1024]))))
        .await
        .unwrap();
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        raw::call(service.addr, raw::request(HEALTH_CHECK, &[], body)),
    )
    .await
    .expect("refused before the rest arrives");
    assert_eq!(answer.grpc_status(), Some("8"), "{answer:?}");
    drop(tx);
    service.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// TLS

async fn tls_channel(
    addr: SocketAddr,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
}

async fn generate_over(
    channel: tonic::transport::Channel,
    headers: &Headers,
) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(GenerateTokenRequest::default());
    headers.apply(req.metadata_mut());
    DuoWorkflowClient::new(channel)
        .generate_token(req)
        .await
        .map(drop)
}

#[tokio::test]
async fn grpc_is_served_over_tls_configured_by_the_tls_variables_only() {
    let dir = TempDir::new();
    let (ca, cert, key) = pki::localhost();
    let cert_file = dir.write("cert.pem", &cert);
    let key_file = dir.write("key.pem", &key);
    let (service, headers) = service_with(
        &dir,
        "handshake_timeout_seconds = 1",
        &[
            (ENV_TLS_ENABLED, "true"),
            (ENV_TLS_CERT_FILE, cert_file.to_str().unwrap()),
            (ENV_TLS_KEY_FILE, key_file.to_str().unwrap()),
        ],
    )
    .await;
    let channel = tls_channel(service.addr, &ca, None).await.unwrap();
    generate_over(channel, &headers).await.unwrap();
    // Plain HTTP/2 gets nowhere.
    let plain = DuoWorkflowClient::connect(format!("http://{}", service.addr)).await;
    match plain {
        Err(_) => {}
        Ok(mut c) => assert!(c
            .generate_token(GenerateTokenRequest::default())
            .await
            .is_err()),
    }
    // A connection that never starts its TLS handshake is closed after the timeout.
    let mut idle = TcpStream::connect(service.addr).await.unwrap();
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut [0; 64]))
        .await
        .expect("an idle TLS connection was never closed");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert!(started.elapsed() < Duration::from_secs(3));
    service.stop().await.unwrap();
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_of_the_configured_ca() {
    let dir = TempDir::new();
    let (ca, cert, key) = pki::localhost();
    let (client_ca, client_ca_key) = pki::ca();
    let (client_cert, client_key) = pki::signed(&client_ca, &client_ca_key, &["workhorse"]);
    let (other_ca, other_ca_key) = pki::ca();
    let (stranger_cert, stranger_key) = pki::signed(&other_ca, &other_ca_key, &["workhorse"]);
    let (service, headers) = service_with(
        &dir,
        "",
        &[
            (ENV_TLS_ENABLED, "true"),
            (
                ENV_TLS_CERT_FILE,
                dir.write("c.pem", &cert).to_str().unwrap(),
            ),
            (ENV_TLS_KEY_FILE, dir.write("k.pem", &key).to_str().unwrap()),
            (
                ENV_TLS_CLIENT_CA_FILE,
                dir.write("clients.pem", &client_ca.pem()).to_str().unwrap(),
            ),
        ],
    )
    .await;
    let ok = tls_channel(service.addr, &ca, Some((&client_cert, &client_key)))
        .await
        .unwrap();
    generate_over(ok, &headers).await.unwrap();
    for identity in [None, Some((stranger_cert.as_str(), stranger_key.as_str()))] {
        let refused = match tls_channel(service.addr, &ca, identity).await {
            Err(_) => true,
            Ok(channel) => generate_over(channel, &headers).await.is_err(),
        };
        assert!(refused, "a client without the CA's certificate was served");
    }
    service.stop().await.unwrap();
}

#[tokio::test]
async fn certificates_reload_for_new_connections_while_open_ones_go_on() {
    let dir = TempDir::new();
    let (ca1, cert1, key1) = pki::localhost();
    let (ca2, cert2, key2) = pki::localhost();
    let cert_file = dir.write("cert.pem", &cert1);
    let key_file = dir.write("key.pem", &key1);
    let (service, headers) = service_with(
        &dir,
        "",
        &[
            (ENV_TLS_ENABLED, "true"),
            (ENV_TLS_CERT_FILE, cert_file.to_str().unwrap()),
            (ENV_TLS_KEY_FILE, key_file.to_str().unwrap()),
            (ENV_HTTP_TLS_ENABLED, "true"),
        ],
    )
    .await;
    let open = tls_channel(service.addr, &ca1, None).await.unwrap();
    generate_over(open.clone(), &headers).await.unwrap();
    assert!(https_get(service.http_addr, &ca1, JWKS).await.is_ok());

    // Files that do not load leave the running certificate alone.
    std::fs::write(&key_file, "not a key").unwrap();
    let tls_outcome = |outcome: Vec<(String, Reloaded)>| {
        outcome
            .into_iter()
            .find(|(name, _)| name == "tls")
            .expect("the TLS files are reloadable")
            .1
    };
    let outcome = tls_outcome(service.reloader.reload(Trigger::Signal).await);
    assert!(matches!(outcome, Reloaded::Failed(_)), "{outcome:?}");
    assert!(!service.reloader.healthy());
    assert!(tls_channel(service.addr, &ca1, None).await.is_ok());

    std::fs::write(&cert_file, &cert2).unwrap();
    std::fs::write(&key_file, &key2).unwrap();
    let outcome = tls_outcome(service.reloader.reload(Trigger::Signal).await);
    assert!(matches!(outcome, Reloaded::Changed(_)), "{outcome:?}");
    assert!(service.reloader.healthy());
    let new = tls_channel(service.addr, &ca2, None).await.unwrap();
    generate_over(new, &headers).await.unwrap();
    assert!(
        tls_channel(service.addr, &ca1, None).await.is_err(),
        "new connections still get the old certificate"
    );
    // The connection opened before the reload is still served (tonic would have to reconnect
    // otherwise, and a reconnection trusting only the old CA fails).
    generate_over(open, &headers).await.unwrap();
    // The published keys listener follows, and its discovery document points at https.
    let jwks = https_get(service.http_addr, &ca2, JWKS).await.unwrap();
    assert!(jwks.starts_with("HTTP/1.1 200"), "{jwks}");
    assert!(https_get(service.http_addr, &ca1, JWKS).await.is_err());
    let discovery = https_get(service.http_addr, &ca2, "/.well-known/openid-configuration")
        .await
        .unwrap();
    assert!(
        discovery.contains("\"jwks_uri\":\"https://localhost/oauth/discovery/keys\""),
        "{discovery}"
    );
    service.stop().await.unwrap();
}

const JWKS: &str = "/oauth/discovery/keys";

/// `GET path` from the published-keys listener over TLS, trusting only `ca`; the whole response.
async fn https_get(addr: SocketAddr, ca: &str, path: &str) -> Result<String, std::io::Error> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await.or_else(|e| {
        // A peer closing without close_notify is fine once the response is complete.
        if response.is_empty() {
            Err(e)
        } else {
            Ok(0)
        }
    })?;
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// The request id

#[tokio::test]
async fn the_gitlab_correlation_id_is_the_request_id_when_x_request_id_is_absent() {
    let executor = support::executor::start().await;
    let url = format!("http://{}", executor.addr);
    let dir = TempDir::new();
    let (service, _) = service_with(
        &dir,
        "",
        &[
            (ENV_AUTH_ENABLED, "false"),
            (ENV_UPSTREAM_URL, url.as_str()),
        ],
    )
    .await;
    let mut req = tonic::Request::new(duo_workflow_contract::ListToolsRequest {});
    req.metadata_mut()
        .insert("x-gitlab-correlation-id", "corr-42".parse().unwrap());
    let response = client(service.addr).await.list_tools(req).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "corr-42",
        "the response carries it"
    );
    let seen = executor.executor.seen.lock().unwrap().clone();
    let list_tools = seen.iter().find(|s| s.rpc == "ListTools").unwrap();
    assert_eq!(
        list_tools.header("x-request-id"),
        Some("corr-42"),
        "the executor sees it"
    );
    service.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Connection age

/// Issue 14, item 2: past `max_connection_age_seconds` a client's connection is sent GOAWAY (no
/// new stream on it), its open streams go on within `max_connection_age_grace_seconds`, then it
/// is closed; a gRPC client simply opens a new connection, so its calls never fail.
#[tokio::test]
async fn past_its_age_a_connection_gets_goaway_then_closes_after_the_grace_and_clients_carry_on() {
    // An executor that answers each stream with its headers and holds it.
    let executor = raw::RawExecutor::start(|_req| async move {
        let (tx, body) = raw::channel_body(1);
        tokio::spawn(async move {
            tx.closed().await;
        });
        raw::response(&[], body)
    })
    .await;
    let dir = TempDir::new();
    let upstream = format!("http://{}", executor.addr);
    let (service, headers) = service_with(
        &dir,
        "max_connection_age_seconds = 1\nmax_connection_age_grace_seconds = 2",
        &[(ENV_UPSTREAM_URL, &upstream)],
    )
    .await;
    let mut metadata = tonic::metadata::MetadataMap::new();
    headers.apply(&mut metadata);
    let pairs: Vec<(String, String)> = metadata
        .iter()
        .filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                Some((k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            }
            _ => None,
        })
        .collect();
    let h: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();

    // A tonic client checking health every 50 ms the whole time: never a failed call.
    let checks = {
        let addr = service.addr;
        tokio::spawn(async move {
            let channel = Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_lazy();
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let mut ok = 0;
            let until = Instant::now() + Duration::from_millis(4500);
            while Instant::now() < until {
                health
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .expect("a health check failed across a connection's age");
                ok += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ok
        })
    };

    // A long stream on a raw connection.
    let opened = Instant::now();
    let mut send = raw::connect(service.addr).await;
    let (events, body) = raw::channel_body(2);
    events
        .send(Ok(Frame::data(framed(&start_event("go").encode_to_vec()))))
        .await
        .unwrap();
    let response = send
        .send_request(raw::request("/DuoWorkflow/ExecuteWorkflow", &h, body))
        .await
        .unwrap();
    assert!(response.headers().get("grpc-status").is_none());
    let mut stream = response.into_body();

    // Past the age (0.9 to 1 s): no new stream is taken on this connection...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = send
        .send_request(raw::request(HEALTH_CHECK, &[], health_request()))
        .await;
    assert!(refused.is_err(), "a new stream was taken after GOAWAY");
    // ...and the open one goes on until the grace is over, then the connection closes.
    use http_body_util::BodyExt;
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.frame())
        .await
        .expect("the connection outlived its grace");
    let lived = opened.elapsed();
    println!("the connection closed {lived:?} after it opened (age 1 s, grace 2 s): {ended:?}");
    assert!(
        lived >= Duration::from_millis(2800),
        "closed before the grace was over: {lived:?}"
    );
    assert!(!matches!(ended, Some(Ok(ref f)) if f.is_data()));
    let ok = checks.await.unwrap();
    println!("{ok} health checks, none failed");
    drop(events);
}
