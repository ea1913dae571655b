//! The relay's cost: `ExecuteWorkflow` streams through the service to a workflow executor,
//! against the same client talking straight to the executor.
//!
//! - The executor is a minimal tonic server in this process that answers every `ClientEvent`
//!   with one `Action` of about the same size (a `newCheckpoint`).
//! - The service runs in a process of its own: this bench's executable, started again with
//!   `DWS_RELAY_BENCH_SERVICE_CONFIG` set, runs what `duo-workflow-service serve` runs
//!   (`Settings::load`, `server::build`, `server::serve`, logging at `info` to a file), so its
//!   CPU time (`/proc/<pid>/stat`) and resident memory (`/proc/<pid>/status`) are the service's
//!   alone. Authentication is on: RS256 instance tokens with `duo_agent_platform` from a static
//!   JWKS, verified-token cache at its default.
//! - Each stream sends its start request, waits for the answer, then plays ping-pong: send one
//!   `actionResponse.plainTextResponse`, wait for the `Action`, again (one message in flight per
//!   stream; at 100 and 1000 streams the round trip is mostly queueing). A round trip is timed
//!   from before the send to after the receive. "msgs/s" counts round trips.
//! - CPU per round trip: direct, this process (client + executor); through, this process plus
//!   the service's process. The service's own share is shown on its own.
//! - Memory: the service's VmRSS before and after opening idle relayed streams (start request
//!   sent and answered, then nothing), divided by their number.
//! - Unary calls (`ListTools`, answered at once): one at a time (the latency a call adds), and
//!   16 connections with 32 calls in flight each (h2load's `-c 16 -m 32`: the throughput).
//!   Every call is counted by its final gRPC status; one that is not OK fails the run.
//!
//! Run: `cargo bench -p duo-workflow-contract --bench relay` (optionally `-- SECONDS` per
//! measurement, default 5).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_workflow_contract::duo_workflow_client::DuoWorkflowClient;
use duo_workflow_contract::duo_workflow_server::{DuoWorkflow, DuoWorkflowServer};
use duo_workflow_contract::{
    action, action_response, client_event, Action, ActionResponse, ClientEvent,
    GenerateTokenRequest, GenerateTokenResponse, ListCapabilitiesRequest, ListCapabilitiesResponse,
    ListFlowsRequest, ListFlowsResponse, ListToolsRequest, ListToolsResponse, NewCheckpoint,
    PlainTextResponse, StartWorkflowRequest, TrackSelfHostedAction, TrackSelfHostedClientEvent,
    ValidateFlowConfigRequest, ValidateFlowConfigResponse,
};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

const KIB: usize = 1024;
/// (concurrent streams, message size): the 64 KiB runs are where copying would show.
const LOADS: [(usize, usize); 5] = [
    (1, KIB),
    (100, KIB),
    (1000, KIB),
    (1, 64 * KIB),
    (100, 64 * KIB),
];
/// Client connections the streams are spread over (to the service or to the executor alike).
const CONNECTIONS: usize = 4;
/// Idle relayed streams for the memory figure.
const IDLE_STREAMS: usize = 1000;
/// HTTP/2 streams per connection the service and the executor allow (1000 streams over
/// `CONNECTIONS` client connections; the service relays all of them over one connection).
const SERVICE_MAX_STREAMS: u32 = 1024;
const EXECUTOR_MAX_STREAMS: u32 = 4096;
/// Set in the environment of the service's process: its configuration file.
const SERVICE_CONFIG_ENV: &str = "DWS_RELAY_BENCH_SERVICE_CONFIG";
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    if let Some(config) = std::env::var_os(SERVICE_CONFIG_ENV) {
        return service_process(Path::new(&config));
    }
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(bench(common::seconds_per_figure(5.0)));
}

// ---------------------------------------------------------------------------------------------
// The executor: one Action per ClientEvent.

#[derive(Clone, Default)]
struct Echo {
    /// `ExecuteWorkflow` streams open now.
    open: Arc<AtomicUsize>,
}

/// Counts a stream as open while it lives.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The answer to `event`: a checkpoint as large as the event's plain-text response.
fn answer(event: &ClientEvent) -> Action {
    let size = match &event.response {
        Some(client_event::Response::ActionResponse(ActionResponse {
            response_type: Some(action_response::ResponseType::PlainTextResponse(text)),
            ..
        })) => text.response.len(),
        _ => 64,
    };
    Action {
        request_id: "checkpoint".into(),
        action: Some(action::Action::NewCheckpoint(NewCheckpoint {
            status: "RUNNING".into(),
            checkpoint: "c".repeat(size),
            ..Default::default()
        })),
    }
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl DuoWorkflow for Echo {
    type ExecuteWorkflowStream = Boxed<Action>;

    async fn execute_workflow(
        &self,
        request: Request<Streaming<ClientEvent>>,
    ) -> Result<Response<Self::ExecuteWorkflowStream>, Status> {
        self.open.fetch_add(1, Ordering::Relaxed);
        let open = Counted(self.open.clone());
        let actions = request.into_inner().map(move |event| {
            let _open = &open;
            event.map(|e| answer(&e))
        });
        Ok(Response::new(Box::pin(actions)))
    }

    async fn generate_token(
        &self,
        _: Request<GenerateTokenRequest>,
    ) -> Result<Response<GenerateTokenResponse>, Status> {
        Err(Status::unimplemented("bench executor"))
    }

    async fn list_capabilities(
        &self,
        _: Request<ListCapabilitiesRequest>,
    ) -> Result<Response<ListCapabilitiesResponse>, Status> {
        Ok(Response::new(ListCapabilitiesResponse::default()))
    }

    /// The unary call of the unary figures: answered at once.
    async fn list_tools(
        &self,
        _: Request<ListToolsRequest>,
    ) -> Result<Response<ListToolsResponse>, Status> {
        Ok(Response::new(ListToolsResponse::default()))
    }

    async fn list_flows(
        &self,
        _: Request<ListFlowsRequest>,
    ) -> Result<Response<ListFlowsResponse>, Status> {
        Err(Status::unimplemented("bench executor"))
    }

    async fn validate_flow_config(
        &self,
        _: Request<ValidateFlowConfigRequest>,
    ) -> Result<Response<ValidateFlowConfigResponse>, Status> {
        Err(Status::unimplemented("bench executor"))
    }

    type TrackSelfHostedExecuteWorkflowStream = Boxed<TrackSelfHostedAction>;

    async fn track_self_hosted_execute_workflow(
        &self,
        _: Request<Streaming<TrackSelfHostedClientEvent>>,
    ) -> Result<Response<Self::TrackSelfHostedExecuteWorkflowStream>, Status> {
        Err(Status::unimplemented("bench executor"))
    }
}

/// Serves the executor on loopback until the returned sender is dropped.
async fn start_executor(echo: Echo) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        // `Server::tcp_nodelay` applies only to listeners tonic binds itself.
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .max_concurrent_streams(EXECUTOR_MAX_STREAMS)
            .add_service(DuoWorkflowServer::new(echo))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (addr, stop)
}

// ---------------------------------------------------------------------------------------------
// The service, in a process of its own.

/// The service's process: what `duo-workflow-service serve` does, on 127.0.0.1 with free ports;
/// prints `grpc=ADDR` once listening; stops when its standard input closes.
fn service_process(config: &Path) {
    duo_workflow_service::init_logging();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let settings = common::settings(config);
        let service = duo_workflow_service::server::build(&settings).unwrap();
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let listeners = duo_workflow_service::server::Listeners::bind(loopback, loopback, loopback)
            .await
            .unwrap();
        println!("grpc={}", listeners.grpc.local_addr().unwrap());
        let (closed, stdin_closed) = oneshot::channel::<()>();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            let _ = closed.send(());
        });
        duo_workflow_service::server::serve(service, listeners, async {
            let _ = stdin_closed.await;
        })
        .await
        .unwrap();
    });
}

struct ServiceProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServiceProcess {
    fn start(config: &Path, log: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(SERVICE_CONFIG_ENV, config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        let _ = tokio::task::block_in_place(|| BufReader::new(stdout).read_line(&mut line));
        let Some(addr) = line.trim().strip_prefix("grpc=") else {
            let _ = child.kill();
            panic!(
                "the service did not start: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        };
        let addr = addr.parse().unwrap();
        Self { child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a process has used so far, all its threads together.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    /// User + system CPU time.
    cpu: Duration,
    /// Write-like system calls (`/proc/<pid>/io` `syscw`: `write`, `writev`; socket reads are
    /// `recvfrom`, which that file does not count).
    writes: u64,
    /// Context switches, voluntary and not.
    switches: u64,
}

impl Usage {
    /// This process (the client and the executor), from `getrusage`, which counts every thread
    /// that ever ran, in microseconds.
    fn own() -> Self {
        // SAFETY: getrusage only writes the struct it is given.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
            usage
        };
        let time = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        Self {
            cpu: time(usage.ru_utime) + time(usage.ru_stime),
            writes: field(&std::fs::read_to_string("/proc/self/io").unwrap(), "syscw:"),
            switches: (usage.ru_nvcsw + usage.ru_nivcsw) as u64,
        }
    }

    /// Another process (the service), summed over its threads in `/proc/<pid>/task`, whose CPU
    /// time `schedstat` gives in nanoseconds (`/proc/<pid>/stat` counts 10 ms ticks, too coarse
    /// for the slow runs). The service's threads (runtime workers, the one that waits for stdin)
    /// live as long as it does, so none is missed.
    fn of(pid: u32) -> Self {
        let mut usage = Self {
            writes: field(
                &std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap(),
                "syscw:",
            ),
            ..Self::default()
        };
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let task = task.unwrap().path();
            let read = |name: &str| std::fs::read_to_string(task.join(name)).unwrap_or_default();
            let on_cpu: u64 = read("schedstat")
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse().ok())
                .unwrap_or(0);
            usage.cpu += Duration::from_nanos(on_cpu);
            let status = read("status");
            usage.switches += field(&status, "voluntary_ctxt_switches:")
                + field(&status, "nonvoluntary_ctxt_switches:");
        }
        usage
    }

    fn since(self, before: Self) -> Self {
        Self {
            cpu: self.cpu.saturating_sub(before.cpu),
            writes: self.writes.saturating_sub(before.writes),
            switches: self.switches.saturating_sub(before.switches),
        }
    }
}

/// The number after `name` on its line of a `/proc` file (0 when absent).
fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resident memory of a process in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> u64 {
    field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap(),
        "VmRSS:",
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// The client.

async fn connect(addr: SocketAddr, n: usize) -> Vec<Channel> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
                .unwrap(),
        );
    }
    channels
}

fn start_event() -> ClientEvent {
    #[allow(deprecated)] // `workflowDefinition`: what clients send
    let start = StartWorkflowRequest {
        workflow_id: "bench".into(),
        workflow_definition: "software_development".into(),
        goal: "relay benchmark".into(),
        ..Default::default()
    };
    ClientEvent {
        response: Some(client_event::Response::StartRequest(start)),
    }
}

fn text_event(size: usize) -> ClientEvent {
    ClientEvent {
        response: Some(client_event::Response::ActionResponse(ActionResponse {
            request_id: "checkpoint".into(),
            response_type: Some(action_response::ResponseType::PlainTextResponse(
                PlainTextResponse {
                    response: "r".repeat(size),
                    error: String::new(),
                },
            )),
        })),
    }
}

/// An open `ExecuteWorkflow` stream whose start request was answered.
struct Workflow {
    send: mpsc::Sender<ClientEvent>,
    receive: Streaming<Action>,
}

async fn open_stream(channel: Channel, token: &str) -> Result<Workflow, Status> {
    let (send, events) = mpsc::channel(1);
    send.send(start_event()).await.unwrap();
    let mut request = Request::new(ReceiverStream::new(events));
    common::authorize(request.metadata_mut(), token);
    let mut receive = DuoWorkflowClient::new(channel)
        .execute_workflow(request)
        .await?
        .into_inner();
    match receive.message().await? {
        Some(_) => Ok(Workflow { send, receive }),
        None => Err(Status::internal("the stream ended before its first action")),
    }
}

impl Workflow {
    /// Half-closes and reads the stream to its end (the executor's OK).
    async fn close(self) -> Result<(), Status> {
        let Workflow { send, mut receive } = self;
        drop(send);
        while receive.message().await?.is_some() {}
        Ok(())
    }
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

#[derive(Default)]
struct Samples {
    /// Round trips that started and ended while measuring, in nanoseconds.
    latencies: Vec<u64>,
    /// Round trips that ended while measuring.
    completed: u64,
}

/// One stream's ping-pong until the phase says stop.
async fn ping_pong(
    channel: Channel,
    token: Arc<str>,
    event: Arc<ClientEvent>,
    phase: Arc<AtomicU8>,
    ready: mpsc::Sender<Result<(), Status>>,
) -> Result<Samples, Status> {
    let mut stream = match open_stream(channel, &token).await {
        Ok(stream) => stream,
        Err(status) => {
            let _ = ready.send(Err(status.clone())).await;
            return Err(status);
        }
    };
    let _ = ready.send(Ok(())).await;
    drop(ready);
    let mut samples = Samples::default();
    loop {
        let before = phase.load(Ordering::Relaxed);
        if before == STOP {
            break;
        }
        let sent = Instant::now();
        stream
            .send
            .send((*event).clone())
            .await
            .map_err(|_| Status::internal("the request stream closed"))?;
        stream
            .receive
            .message()
            .await?
            .ok_or_else(|| Status::internal("the stream ended early"))?;
        let elapsed = sent.elapsed();
        if phase.load(Ordering::Relaxed) == MEASURE {
            samples.completed += 1;
            if before == MEASURE {
                samples.latencies.push(elapsed.as_nanos() as u64);
            }
        }
    }
    stream.close().await?;
    Ok(samples)
}

/// Waits until `n` streams report that they are open; panics on the first that could not.
async fn await_open(ready: &mut mpsc::Receiver<Result<(), Status>>, n: usize, what: &str) {
    let all = async {
        for _ in 0..n {
            match ready.recv().await {
                Some(Ok(())) => {}
                Some(Err(status)) => panic!("{what}: a stream did not open: {status:?}"),
                None => panic!("{what}: a stream task ended"),
            }
        }
    };
    tokio::time::timeout(OPEN_TIMEOUT, all)
        .await
        .unwrap_or_else(|_| panic!("{what}: {n} streams did not open in {OPEN_TIMEOUT:?}"));
}

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    /// Round trips completed while measuring.
    trips: u64,
    /// What this process (client + executor) and the service's process used meanwhile.
    bench: Usage,
    service: Option<Usage>,
}

impl Figures {
    fn per_trip(&self, d: Duration) -> Duration {
        d.div_f64(self.trips.max(1) as f64)
    }

    /// CPU per round trip, every process involved.
    fn cpu(&self) -> Duration {
        self.per_trip(self.bench.cpu + self.service.unwrap_or_default().cpu)
    }
}

/// `streams` ping-pong streams of `size`-byte messages to `addr`; the service's CPU is counted
/// when `service` is its pid.
async fn measure(
    addr: SocketAddr,
    service: Option<u32>,
    token: &Arc<str>,
    (streams, size): (usize, usize),
    warmup: Duration,
    budget: Duration,
) -> Figures {
    let what = format!("{streams} streams of {size} B to {addr}");
    let channels = connect(addr, CONNECTIONS.min(streams)).await;
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let event = Arc::new(text_event(size));
    let (ready, mut opened) = mpsc::channel(streams);
    let workers: Vec<_> = (0..streams)
        .map(|i| {
            tokio::spawn(ping_pong(
                channels[i % channels.len()].clone(),
                token.clone(),
                event.clone(),
                phase.clone(),
                ready.clone(),
            ))
        })
        .collect();
    drop(ready);
    await_open(&mut opened, streams, &what).await;
    run_phases(&what, workers, service, phase, warmup, budget).await
}

/// (client connections, calls in flight on each) of the unary figures: one call at a time, and
/// h2load's `-c 16 -m 32`.
const UNARY_LOADS: [(usize, usize); 2] = [(1, 1), (16, 32)];

/// One worker's unary calls (`ListTools`, which the executor answers at once) until the phase
/// says stop. A call counts only by its final gRPC status: any status but OK fails the run.
async fn unary_calls(
    channel: Channel,
    token: Arc<str>,
    phase: Arc<AtomicU8>,
) -> Result<Samples, Status> {
    let mut client = DuoWorkflowClient::new(channel);
    let mut samples = Samples::default();
    loop {
        let before = phase.load(Ordering::Relaxed);
        if before == STOP {
            return Ok(samples);
        }
        let mut request = Request::new(ListToolsRequest {});
        common::authorize(request.metadata_mut(), &token);
        let sent = Instant::now();
        client.list_tools(request).await?;
        let elapsed = sent.elapsed();
        if phase.load(Ordering::Relaxed) == MEASURE {
            samples.completed += 1;
            if before == MEASURE {
                samples.latencies.push(elapsed.as_nanos() as u64);
            }
        }
    }
}

/// Unary calls over `connections` connections, `in_flight` at a time on each, to `addr`.
async fn measure_unary(
    addr: SocketAddr,
    service: Option<u32>,
    token: &Arc<str>,
    (connections, in_flight): (usize, usize),
    warmup: Duration,
    budget: Duration,
) -> Figures {
    let what = format!("{connections}x{in_flight} unary calls to {addr}");
    let channels = connect(addr, connections).await;
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let workers: Vec<_> = (0..connections * in_flight)
        .map(|i| {
            tokio::spawn(unary_calls(
                channels[i % connections].clone(),
                token.clone(),
                phase.clone(),
            ))
        })
        .collect();
    run_phases(&what, workers, service, phase, warmup, budget).await
}

/// Warms up, measures for `budget`, stops the workers and gathers their samples.
async fn run_phases(
    what: &str,
    workers: Vec<tokio::task::JoinHandle<Result<Samples, Status>>>,
    service: Option<u32>,
    phase: Arc<AtomicU8>,
    warmup: Duration,
    budget: Duration,
) -> Figures {
    tokio::time::sleep(warmup).await;
    let usage = || (Usage::own(), service.map(Usage::of));
    let before = usage();
    let started = Instant::now();
    phase.store(MEASURE, Ordering::Relaxed);
    tokio::time::sleep(budget).await;
    phase.store(STOP, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let after = usage();

    let mut latencies = Vec::new();
    let mut completed = 0u64;
    let joined = tokio::time::timeout(OPEN_TIMEOUT, futures::future::join_all(workers))
        .await
        .unwrap_or_else(|_| panic!("{what}: the calls did not end"));
    for worker in joined {
        let samples = worker.unwrap().unwrap_or_else(|s| panic!("{what}: {s:?}"));
        latencies.extend(samples.latencies);
        completed += samples.completed;
    }
    assert!(!latencies.is_empty(), "{what}: nothing measured");
    latencies.sort_unstable();
    let quantile = |q: f64| {
        Duration::from_nanos(latencies[((latencies.len() - 1) as f64 * q).round() as usize])
    };
    Figures {
        per_second: completed as f64 / elapsed.as_secs_f64(),
        p50: quantile(0.50),
        p99: quantile(0.99),
        trips: completed,
        bench: after.0.since(before.0),
        service: after.1.zip(before.1).map(|(a, b)| a.since(b)),
    }
}

/// What the service's resident memory does when `n` idle relayed streams open, then close.
struct Memory {
    before_kib: u64,
    open_kib: u64,
    closed_kib: u64,
    executor_saw: usize,
}

async fn idle_streams(service: &ServiceProcess, echo: &Echo, token: &Arc<str>, n: usize) -> Memory {
    let what = format!("{n} idle streams");
    let channels = connect(service.addr, CONNECTIONS).await;
    // Warm every connection (and the service's one to the executor) first.
    for channel in &channels {
        open_stream(channel.clone(), token)
            .await
            .unwrap()
            .close()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_kib = rss_kib(service.pid());
    let (release, released) = watch::channel(false);
    let (ready, mut opened) = mpsc::channel(n);
    let holders: Vec<_> = (0..n)
        .map(|i| {
            let (channel, token) = (channels[i % channels.len()].clone(), token.clone());
            let (ready, mut released) = (ready.clone(), released.clone());
            tokio::spawn(async move {
                let stream = open_stream(channel, &token).await;
                let stream = match stream {
                    Ok(s) => s,
                    Err(e) => return ready.send(Err(e)).await.unwrap(),
                };
                ready.send(Ok(())).await.unwrap();
                let _ = released.wait_for(|r| *r).await;
                stream.close().await.unwrap();
            })
        })
        .collect();
    drop((ready, released));
    await_open(&mut opened, n, &what).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open_kib = rss_kib(service.pid());
    let executor_saw = echo.open.load(Ordering::Relaxed);
    release.send(true).unwrap();
    for holder in holders {
        holder.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    Memory {
        before_kib,
        open_kib,
        closed_kib: rss_kib(service.pid()),
        executor_saw,
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// A latency in the unit that suits it; signed, for differences.
fn latency(seconds: f64) -> String {
    let us = seconds * 1e6;
    if us.abs() < 1000.0 {
        format!("{us:.1} µs")
    } else if us.abs() < 10_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

/// A figure's p50 and p99 latencies.
fn p50_p99(f: &Figures) -> String {
    let (p50, p99) = (f.p50.as_secs_f64(), f.p99.as_secs_f64());
    format!("{} / {}", latency(p50), latency(p99))
}

/// What going through the service adds to the p50 latency, signed.
fn added_p50(direct: &Figures, through: &Figures) -> String {
    let added = through.p50.as_secs_f64() - direct.p50.as_secs_f64();
    format!("{}{}", if added >= 0.0 { "+" } else { "" }, latency(added))
}

fn size_label(size: usize) -> String {
    format!("{} KiB", size / KIB)
}

async fn bench(budget: Duration) {
    let warmup = (budget / 4).min(Duration::from_secs(1));
    let issuer = common::Issuer::new("relay");
    let token: Arc<str> = issuer.token(&["duo_agent_platform"], None, true).into();

    let echo = Echo::default();
    let (executor, _stop_executor) = start_executor(echo.clone()).await;
    let config = issuer.config(
        "relay.toml",
        &format!(
            "[limits]\nmax_concurrent_streams = {SERVICE_MAX_STREAMS}\nshutdown_grace_seconds = 1\n\
             [upstream]\nurl = \"http://{executor}\"\nserver_capabilities = []\n"
        ),
    );
    let service = ServiceProcess::start(&config, &issuer.dir.join("service.log"));

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "{cores} cores shared by client + executor (this process) and the service (pid {}); \
         load average {} at start",
        service.pid(),
        load_average()
    );
    println!(
        "auth on (RS256 instance token, duo_agent_platform); streams over {CONNECTIONS} client \
         connections; {} s per figure after {} s of warm-up",
        budget.as_secs_f64(),
        warmup.as_secs_f64()
    );

    // Memory first, on a fresh service: its heap has not grown for the runs below yet.
    let memory = idle_streams(&service, &echo, &token, IDLE_STREAMS).await;

    println!();
    println!(
        "latency and rate; a round trip is one ClientEvent (actionResponse.plainTextResponse) \
         up and one Action (newCheckpoint) down"
    );
    println!(
        "{:>7} {:>6} | {:>9} {:>9} | {:>21} {:>21} | {:>10}",
        "streams", "msg", "trips/s", "trips/s", "p50 / p99", "p50 / p99", "added p50"
    );
    println!(
        "{:>7} {:>6} | {:>9} {:>9} | {:>21} {:>21} | {:>10}",
        "", "", "direct", "through", "direct", "through", "per hop"
    );
    let mut measured = Vec::new();
    for load in LOADS {
        let direct = measure(executor, None, &token, load, warmup, budget).await;
        let through = measure(
            service.addr,
            Some(service.pid()),
            &token,
            load,
            warmup,
            budget,
        )
        .await;
        println!(
            "{:>7} {:>6} | {:>9.0} {:>9.0} | {:>21} {:>21} | {:>10}",
            load.0,
            size_label(load.1),
            direct.per_second,
            through.per_second,
            p50_p99(&direct),
            p50_p99(&through),
            added_p50(&direct, &through),
        );
        measured.push((load, direct, through));
    }

    println!();
    println!(
        "unary calls (ListTools, answered at once by the executor), each counted by its gRPC status"
    );
    println!(
        "{:>7} | {:>9} {:>9} {:>7} | {:>21} {:>21} | {:>10} | {:>8} {:>8} {:>8}",
        "conn x",
        "calls/s",
        "calls/s",
        "through",
        "p50 / p99",
        "p50 / p99",
        "added p50",
        "direct",
        "service",
        "service"
    );
    println!(
        "{:>7} | {:>9} {:>9} {:>7} | {:>21} {:>21} | {:>10} | {:>8} {:>8} {:>8}",
        "flight",
        "direct",
        "through",
        "/direct",
        "direct",
        "through",
        "per hop",
        "CPU µs",
        "CPU µs",
        "/direct"
    );
    for load in UNARY_LOADS {
        let direct = measure_unary(executor, None, &token, load, warmup, budget).await;
        let through = measure_unary(
            service.addr,
            Some(service.pid()),
            &token,
            load,
            warmup,
            budget,
        )
        .await;
        let service_cpu = through.per_trip(through.service.unwrap_or_default().cpu);
        println!(
            "{:>7} | {:>9.0} {:>9.0} {:>6.2}x | {:>21} {:>21} | {:>10} | {:>8} {:>8} {:>7.2}x",
            format!("{}x{}", load.0, load.1),
            direct.per_second,
            through.per_second,
            through.per_second / direct.per_second,
            p50_p99(&direct),
            p50_p99(&through),
            added_p50(&direct, &through),
            micros(direct.cpu()),
            micros(service_cpu),
            service_cpu.as_secs_f64() / direct.cpu().as_secs_f64(),
        );
    }

    println!();
    println!(
        "CPU per round trip: direct = client + executor (this process); through = the same plus \
         the service's process; then the service's own CPU (and as a share of direct), its \
         write system calls and context switches"
    );
    println!(
        "{:>7} {:>6} | {:>8} {:>8} {:>6} | {:>8} {:>7} {:>7} {:>8}",
        "streams", "msg", "direct", "through", "", "service", "", "writes", "switches"
    );
    println!(
        "{:>7} {:>6} | {:>8} {:>8} {:>6} | {:>8} {:>7} {:>7} {:>8}",
        "", "", "CPU µs", "CPU µs", "+%", "CPU µs", "/direct", "/trip", "/trip"
    );
    for ((streams, size), direct, through) in &measured {
        let service = through.service.unwrap_or_default();
        let per_trip = |n: u64| n as f64 / through.trips.max(1) as f64;
        println!(
            "{:>7} {:>6} | {:>8} {:>8} {:>+5.0}% | {:>8} {:>6.0}% {:>7.2} {:>8.2}",
            streams,
            size_label(*size),
            micros(direct.cpu()),
            micros(through.cpu()),
            (through.cpu().as_secs_f64() / direct.cpu().as_secs_f64() - 1.0) * 100.0,
            micros(through.per_trip(service.cpu)),
            through.per_trip(service.cpu).as_secs_f64() / direct.cpu().as_secs_f64() * 100.0,
            per_trip(service.writes),
            per_trip(service.switches),
        );
    }

    println!();
    let grown = memory.open_kib.saturating_sub(memory.before_kib);
    println!(
        "memory: {IDLE_STREAMS} idle relayed ExecuteWorkflow streams (executor saw {} open): \
         service VmRSS {} KiB -> {} KiB, {:.1} KiB per open stream (target < 40 KB); {} KiB \
         after they closed",
        memory.executor_saw,
        memory.before_kib,
        memory.open_kib,
        grown as f64 / IDLE_STREAMS as f64,
        memory.closed_kib
    );
    println!("load average {} at end", load_average());
}
