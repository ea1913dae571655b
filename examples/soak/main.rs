//! The soak: hours (or, in CI, a minute) of mixed load against replicas of the release binary
//! while faults happen on a schedule; every call judged by its final gRPC status against what
//! that call should get under the fault in force. `scripts/soak.sh SECONDS` builds and runs it:
//!
//!     soak run SECONDS --binary target/release/duo-workflow-service [--rate CALLS_PER_SECOND]
//!     soak executor --listen 127.0.0.1:PORT     (started by `run`: the executor processes)
//!
//! The world: [`REPLICAS`] replicas sharing the authority's key files (a user token one mints
//! verifies on the others), [`EXECUTORS`] executor processes, and an OIDC provider on loopback
//! (in this process) playing GitLab. After [`WARMUP`] seconds of load, a [`CYCLE`]-second cycle
//! of faults repeats until the end ([`windows`]): the provider slow, down, back with a rotated
//! key; an executor killed and restarted; GitLab's three-step rotation of the authority key
//! (replica 0 by its 1 s poll, the others by SIGHUP); a replica drained by SIGTERM and restarted;
//! a burst of unauthenticated connections; a quiet stretch where resources are sampled.
//!
//! It prints, at the end: calls and failures per fault window, p50/p99 latency per call kind and
//! window, each replica's resources (from /proc and `/metrics`) with the flatness verdict, the
//! faults as they happened, the panic check of every log, and `N passed, M failed`.

mod calls;
mod executor;
mod processes;
mod provider;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use calls::{Kind, Outcome};
use duo_workflow_adapters::jose::signing::{generate_pem, SigningKey};
use duo_workflow_domain::keys::Algorithm;
use duo_workflow_service::cli::{mint, MintRequest};
use executor::Cue;
use processes::{Proc, ReplicaAddrs, Sample};
use provider::{Mood, Provider};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

const SERVICE: &str = "gitlab-duo-workflow-service";
pub const INSTANCE_ID: &str = "inst-1";
const REPLICAS: usize = 3;
const EXECUTORS: usize = 3;
/// Seconds of load before the first cycle of faults.
const WARMUP: f64 = 10.0;
/// Seconds of one cycle of faults ([`windows`]).
const CYCLE: f64 = 60.0;
/// In-flight calls may go on this long after SIGTERM.
const GRACE_SECONDS: u64 = 8;
/// A connection must send the HTTP/2 preface within this.
const HANDSHAKE_SECONDS: u64 = 2;
/// Replicas refresh the provider's keys this often (its `max-age` clamped).
const REFRESH_SECONDS: u64 = 4;
const CHANNELS_PER_REPLICA: usize = 4;

/// How each replica reaches the executors. `One`: replica i relays to executor i only (one
/// `DUO_WORKFLOW_UPSTREAM__URL`), so killing that executor makes its replica's relayed calls
/// `UNAVAILABLE` until it is back. `List`: every replica gets every executor (a comma-separated
/// list), and once the dead one is skipped no good call may fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    #[allow(dead_code)] // the one-executor deployment, for comparison
    One,
    List,
}
const UPSTREAM: Upstream = Upstream::List;

/// `List`: a call started this long after an executor died may still have been sent to it.
const EXECUTOR_SKIP_SECONDS: f64 = 2.0;
/// `One`: calls started this long after the executor is back may still find it unreachable
/// (the relay's connection to it reconnects on demand).
const EXECUTOR_RECOVERY_SECONDS: f64 = 3.0;
/// A call started within this of the kill, or in flight then, may get either status.
const EXECUTOR_STRADDLE_SECONDS: f64 = 0.25;

/// The fault windows of a cycle: (offset in seconds, name). The fault of a window starts at
/// its offset (see [`World::cycle`]).
fn windows() -> &'static [(f64, &'static str)] {
    &[
        (0.0, "steady"),
        (6.0, "provider-slow"),
        (12.0, "provider-down"),
        (19.0, "provider-rotation"),
        (27.0, "executor-down"),
        (35.0, "authority-rotation"),
        (45.0, "replica-drain"),
        (53.0, "connection-burst"),
        (57.0, "quiet"),
    ]
}

fn phase_at(t: f64) -> &'static str {
    if t < WARMUP {
        return "warm-up";
    }
    let offset = (t - WARMUP) % CYCLE;
    windows()
        .iter()
        .rev()
        .find(|(at, _)| offset >= *at)
        .map(|(_, name)| *name)
        .unwrap_or("steady")
}

/// A small PRNG (splitmix64): the mix needs no cryptography.
fn random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    if STATE.load(Ordering::Relaxed) == 0 {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let _ = STATE.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    }
    let mut z = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn below(n: u64) -> u64 {
    random() % n.max(1)
}

/// A call, as it ended.
struct Record {
    kind: Kind,
    replica: usize,
    start: f64,
    end: f64,
    outcome: Outcome,
}

/// A check that is not one call: a replica's exit code, resources, the panic scan.
struct Check {
    name: String,
    passed: bool,
    detail: String,
}

/// An executor outage: killed at, back at.
#[derive(Clone, Copy)]
struct Outage {
    executor: usize,
    killed: f64,
    back: Option<f64>,
}

/// The instance key GitLab signs with now, and tokens made with it.
struct Instance {
    key: Arc<SigningKey>,
    tokens: Vec<String>,
    no_scope: String,
    bad_signature: String,
    expired: String,
    unknown_issuer: String,
}

impl Instance {
    fn new(key: Arc<SigningKey>, issuer: &str) -> Self {
        let req = |scopes: &[&str], iss: &str| MintRequest {
            issuer: iss.into(),
            audience: vec![SERVICE.into()],
            subject: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            realm: Some("self-managed".into()),
            instance_id: Some(INSTANCE_ID.into()),
            duo_seat_count: None,
            lifetime_seconds: 3600,
            with_kid: true,
        };
        let scopes = [
            "duo_workflow_execute_workflow",
            "duo_agent_platform",
            "duo_chat",
        ];
        let tokens: Vec<String> = (0..16).map(|_| mint(&key, &req(&scopes, issuer))).collect();
        let good = &tokens[0];
        // One character of the signature changed: the key is known, the signature wrong.
        let mut bad_signature = good.clone().into_bytes();
        let i = bad_signature.len() - 10;
        bad_signature[i] = if bad_signature[i] == b'A' { b'B' } else { b'A' };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let expired_claims = serde_json::json!({
            "iss": issuer, "aud": SERVICE, "sub": INSTANCE_ID, "jti": "soak-expired",
            "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600,
            "scopes": scopes, "gitlab_realm": "self-managed", "gitlab_instance_id": INSTANCE_ID,
        });
        Self {
            no_scope: mint(&key, &req(&[], issuer)),
            bad_signature: String::from_utf8(bad_signature).unwrap(),
            expired: duo_workflow_adapters::jose::token::sign(&key, &expired_claims, true),
            unknown_issuer: mint(&key, &req(&scopes, "https://unknown.soak.invalid")),
            tokens,
            key,
        }
    }

    fn token(&self) -> String {
        self.tokens[below(self.tokens.len() as u64) as usize].clone()
    }
}

/// The authority's key files (shared by every replica) and what the driver knows of them.
struct Authority {
    dir: PathBuf,
    signing_kid: String,
    /// Tokens of this key minted by calls started after this time are a failure: every replica
    /// should sign with the new key by then.
    retired: Option<(String, f64)>,
}

#[derive(Clone)]
struct Live {
    addrs: ReplicaAddrs,
    pid: u32,
    channels: Vec<Channel>,
}

struct Replica {
    index: usize,
    config: PathBuf,
    env: Vec<(String, String)>,
    live: RwLock<Option<Live>>,
    draining: AtomicBool,
    proc: tokio::sync::Mutex<Option<Proc>>,
    incarnations: AtomicUsize,
}

struct ExecutorProc {
    addr: String,
    proc: tokio::sync::Mutex<Option<Proc>>,
}

struct World {
    started: Instant,
    dir: PathBuf,
    binary: PathBuf,
    duration: f64,
    provider: Arc<Provider>,
    instance: RwLock<Arc<Instance>>,
    /// The instance key before the last rotation, still published until removed.
    previous_instance: Mutex<Option<Arc<SigningKey>>>,
    authority: Mutex<Authority>,
    replicas: Vec<Replica>,
    executors: Vec<ExecutorProc>,
    /// User tokens minted so far (token, user, kid), a bounded pool.
    user_tokens: Mutex<Vec<(String, String, String)>>,
    /// User tokens of a key step 3 removed, to be refused.
    removed: Mutex<Vec<(String, String)>>,
    records: Mutex<Vec<Record>>,
    checks: Mutex<Vec<Check>>,
    outages: Mutex<Vec<Outage>>,
    faults: Mutex<Vec<(f64, String)>>,
    samples: Mutex<Vec<(usize, u32, &'static str, Sample)>>,
    logs: Mutex<Vec<PathBuf>>,
    in_flight: AtomicUsize,
    skipped: AtomicUsize,
}

impl World {
    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn fault(&self, what: String) {
        let t = self.now();
        println!("[{t:7.1}s] {what}");
        self.faults.lock().unwrap().push((t, what));
    }

    fn check(&self, name: impl Into<String>, passed: bool, detail: impl Into<String>) {
        let (name, detail) = (name.into(), detail.into());
        if !passed {
            println!("[{:7.1}s] CHECK FAILED {name}: {detail}", self.now());
        }
        self.checks.lock().unwrap().push(Check {
            name,
            passed,
            detail,
        });
    }

    /// A replica that takes new calls (ready, not draining), at random.
    fn pick(&self) -> Option<(usize, Live)> {
        let ready: Vec<(usize, Live)> = self
            .replicas
            .iter()
            .filter(|r| !r.draining.load(Ordering::SeqCst))
            .filter_map(|r| r.live.read().unwrap().clone().map(|l| (r.index, l)))
            .collect();
        if ready.is_empty() {
            return None;
        }
        Some(ready[below(ready.len() as u64) as usize].clone())
    }

    fn upstream_of(&self, replica: usize) -> String {
        let url = |e: &ExecutorProc| format!("http://{}", e.addr);
        match UPSTREAM {
            Upstream::One => url(&self.executors[replica % self.executors.len()]),
            Upstream::List => self.executors.iter().map(url).collect::<Vec<_>>().join(","),
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.log"));
        self.logs.lock().unwrap().push(path.clone());
        path
    }

    /// Starts replica `r` (again) and waits until it is ready: health `""` SERVING, which
    /// waits for the provider's keys (the GitLab source is required).
    async fn start_replica(&self, r: usize) -> Result<(), String> {
        let replica = &self.replicas[r];
        let n = replica.incarnations.fetch_add(1, Ordering::SeqCst);
        let log = self.log_path(&format!("replica{r}-{n}"));
        let (proc, addrs) =
            processes::start_replica(&self.binary, &replica.config, &replica.env, log).await?;
        let pid = proc.pid;
        *replica.proc.lock().await = Some(proc);
        let channels: Vec<Channel> = (0..CHANNELS_PER_REPLICA)
            .map(|_| {
                Endpoint::from_shared(format!("http://{}", addrs.grpc))
                    .expect("URL")
                    .tcp_nodelay(true)
                    .connect_lazy()
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut health =
                tonic_health::pb::health_client::HealthClient::new(channels[0].clone());
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.get_ref().status);
            if matches!(status, Ok(1)) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("replica {r} not SERVING within 30 s: {status:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        *replica.live.write().unwrap() = Some(Live {
            addrs,
            pid,
            channels,
        });
        Ok(())
    }

    async fn start_executor(&self, e: usize) -> Result<(), String> {
        let ex = &self.executors[e];
        let log = self.log_path(&format!("executor{e}-{}", self.now() as u64));
        let (proc, _) = processes::start_executor(&ex.addr, log).await?;
        *ex.proc.lock().await = Some(proc);
        Ok(())
    }

    fn hup_all_but_the_polling_replica(&self) {
        for r in &self.replicas[1..] {
            if let Some(live) = r.live.read().unwrap().as_ref() {
                processes::signal(live.pid, libc::SIGHUP);
            }
        }
    }

    // ---- faults ---------------------------------------------------------------------------

    async fn at(&self, t: f64) -> bool {
        let now = self.now();
        if t >= self.duration {
            return false;
        }
        if t > now {
            tokio::time::sleep(Duration::from_secs_f64(t - now)).await;
        }
        true
    }

    async fn cycle(self: &Arc<Self>, c: usize) {
        let base = WARMUP + c as f64 * CYCLE;
        if !self.at(base + 6.0).await {
            return;
        }
        self.provider.set_mood(Mood::Slow);
        self.fault(format!(
            "cycle {c}: provider slow ({} s answers)",
            provider::SLOW.as_secs()
        ));

        if !self.at(base + 12.0).await {
            return self.provider.set_mood(Mood::Up);
        }
        self.provider.go_down();
        self.provider.set_mood(Mood::Up);
        self.fault(format!("cycle {c}: provider down (port closed)"));

        let new_key =
            Arc::new(SigningKey::from_pem(&generate_pem(Algorithm::RS256).unwrap()).unwrap());
        if !self.at(base + 19.0).await {
            return self.provider.come_back().await;
        }
        let old_key = self.instance.read().unwrap().key.clone();
        self.provider.set_keys(vec![jwk(&old_key), jwk(&new_key)]);
        self.provider.come_back().await;
        self.fault(format!(
            "cycle {c}: provider back, publishing a new key {}",
            new_key.kid()
        ));

        if !self.at(base + 21.0).await {
            return;
        }
        let instance = Arc::new(Instance::new(new_key.clone(), &self.provider.url()));
        *self.instance.write().unwrap() = instance;
        *self.previous_instance.lock().unwrap() = Some(old_key);
        self.fault(format!("cycle {c}: instances sign with the new key"));

        if !self.at(base + 26.0).await {
            return;
        }
        self.provider.set_keys(vec![jwk(&new_key)]);
        self.fault(format!(
            "cycle {c}: provider no longer publishes the old key"
        ));

        if !self.at(base + 27.0).await {
            return;
        }
        let e = c % self.executors.len();
        let killed = self.now();
        if let Some(mut p) = self.executors[e].proc.lock().await.take() {
            p.kill().await;
        }
        self.outages.lock().unwrap().push(Outage {
            executor: e,
            killed,
            back: None,
        });
        self.fault(format!("cycle {c}: executor {e} killed (SIGKILL)"));

        if !self.at(base + 32.0).await {
            return;
        }
        // From the moment it starts, the executor may answer.
        let back = self.now();
        if let Some(o) = self.outages.lock().unwrap().last_mut() {
            o.back = Some(back);
        }
        match self.start_executor(e).await {
            Ok(()) => self.fault(format!("cycle {c}: executor {e} restarted")),
            Err(why) => self.check(format!("cycle{c}.executor{e}.restart"), false, why),
        }

        // GitLab's three steps; replica 0 sees each by its 1 s poll, the others by SIGHUP.
        if !self.at(base + 35.0).await {
            return;
        }
        let (old_pem, old_kid) = {
            let a = self.authority.lock().unwrap();
            let pem = std::fs::read_to_string(a.dir.join("signing.pem")).unwrap();
            (pem, a.signing_kid.clone())
        };
        let next_pem = generate_pem(Algorithm::EdDSA).unwrap();
        let next_kid = SigningKey::from_pem(&next_pem).unwrap().kid().to_owned();
        let dir = self.authority.lock().unwrap().dir.clone();
        replace(&dir.join("validation.pem"), &next_pem);
        self.hup_all_but_the_polling_replica();
        self.fault(format!("cycle {c}: authority step 1: {next_kid} validates"));

        if !self.at(base + 38.0).await {
            return;
        }
        stage(&dir.join("signing.pem"), &next_pem);
        stage(&dir.join("validation.pem"), &old_pem);
        commit(&dir.join("signing.pem"));
        commit(&dir.join("validation.pem"));
        self.hup_all_but_the_polling_replica();
        self.authority.lock().unwrap().signing_kid = next_kid.clone();
        self.fault(format!(
            "cycle {c}: authority step 2: {next_kid} signs, {old_kid} validates"
        ));

        if !self.at(base + 41.0).await {
            return;
        }
        // The old key's user tokens are no longer used (in reality: an hour after step 2).
        {
            let mut pool = self.user_tokens.lock().unwrap();
            let mut removed = self.removed.lock().unwrap();
            removed.clear();
            for (token, user, kid) in pool.iter() {
                if *kid == old_kid && removed.len() < 3 {
                    removed.push((token.clone(), user.clone()));
                }
            }
            pool.retain(|(_, _, kid)| *kid != old_kid);
        }
        self.authority.lock().unwrap().retired = Some((old_kid.clone(), self.now()));

        if !self.at(base + 42.0).await {
            return;
        }
        let _ = std::fs::remove_file(dir.join("validation.pem"));
        self.hup_all_but_the_polling_replica();
        self.fault(format!("cycle {c}: authority step 3: {old_kid} removed"));

        // Drain a replica (never 0, the long-lived one whose resources span the run).
        if !self.at(base + 45.0).await {
            return;
        }
        let d = 1 + c % (self.replicas.len() - 1);
        self.replicas[d].draining.store(true, Ordering::SeqCst);
        self.fault(format!("cycle {c}: replica {d} out of rotation (draining)"));

        if !self.at(base + 45.5).await {
            return;
        }
        // Step 3 has had 3.5 s: a poll to hold it, a poll to apply it.
        let removed = self.removed.lock().unwrap().clone();
        for (token, user) in removed {
            let me = self.clone();
            tokio::spawn(async move { me.call_removed_key(token, user).await });
        }

        if !self.at(base + 46.0).await {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move { me.drain_and_restart(c, d).await });

        if !self.at(base + 53.0).await {
            return;
        }
        self.fault(format!("cycle {c}: burst of unauthenticated connections"));
        for r in 0..self.replicas.len() {
            let me = self.clone();
            tokio::spawn(async move { me.burst(c, r).await });
        }
        if self.at(base + 57.0).await {
            let latest = self
                .samples
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|(r, ..)| *r == 0)
                .map(|(.., s)| *s);
            let shown = latest.map_or(String::new(), |s| {
                format!(
                    " (replica 0: RSS {:.1} MiB, token cache {} entries {:.1} MiB, {} tasks, {} fds)",
                    s.rss_kib as f64 / 1024.0,
                    s.cache_entries,
                    s.cache_bytes as f64 / 1048576.0,
                    s.tasks,
                    s.fds
                )
            });
            self.fault(format!("cycle {c}: quiet{shown}"));
        }
    }

    async fn drain_and_restart(self: Arc<Self>, c: usize, d: usize) {
        let replica = &self.replicas[d];
        let Some(mut proc) = replica.proc.lock().await.take() else {
            return;
        };
        processes::signal(proc.pid, libc::SIGTERM);
        self.fault(format!("cycle {c}: replica {d} SIGTERM"));
        let waited = proc.wait(Duration::from_secs(GRACE_SECONDS + 5)).await;
        let exited = self.now();
        *replica.live.write().unwrap() = None;
        match waited {
            Some(status) => self.check(
                format!("cycle{c}.replica{d}.drained_exit_zero"),
                status.success(),
                format!("{status}"),
            ),
            None => {
                self.check(
                    format!("cycle{c}.replica{d}.drained_exit_zero"),
                    false,
                    "did not exit within the grace period + 5 s",
                );
                proc.kill().await;
            }
        }
        self.fault(format!("cycle {c}: replica {d} exited, restarting"));
        match self.start_replica(d).await {
            Ok(()) => {
                replica.draining.store(false, Ordering::SeqCst);
                self.fault(format!(
                    "cycle {c}: replica {d} back in rotation ({:.1} s after exit)",
                    self.now() - exited
                ));
            }
            Err(why) => self.check(format!("cycle{c}.replica{d}.restart"), false, why),
        }
    }

    /// Connections that never send the preface, and health checks beside them.
    async fn burst(self: Arc<Self>, c: usize, r: usize) {
        let Some(live) = self.replicas[r].live.read().unwrap().clone() else {
            return;
        };
        let opened = Instant::now();
        let mut idle = Vec::new();
        for _ in 0..150 {
            if let Ok(s) = tokio::net::TcpStream::connect(live.addrs.grpc).await {
                idle.push(s);
            }
        }
        let mut checks = Vec::new();
        for _ in 0..30 {
            let me = self.clone();
            let addr = live.addrs.grpc;
            checks.push(tokio::spawn(async move {
                let start = me.now();
                let outcome = calls::health_check(addr).await;
                me.record(Kind::BurstHealthCheck, r, start, outcome);
            }));
        }
        for c in checks {
            let _ = c.await;
        }
        let limit = Duration::from_secs(HANDSHAKE_SECONDS) + Duration::from_millis(2500);
        let mut latest = Duration::ZERO;
        let mut open = 0;
        for mut s in idle {
            use tokio::io::AsyncReadExt;
            // The server's own SETTINGS come first; closed is the end of the stream (or an error).
            let closed = async {
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let left = limit.saturating_sub(opened.elapsed());
            match tokio::time::timeout(left, closed).await {
                Ok(()) => latest = latest.max(opened.elapsed()),
                Err(_) => open += 1,
            }
        }
        self.check(
            format!("cycle{c}.replica{r}.idle_connections_closed"),
            open == 0,
            format!(
                "150 connections without a preface: {} closed, the last {:.1} s after opening (limit {:.1} s), {open} still open",
                150 - open,
                latest.as_secs_f64(),
                limit.as_secs_f64()
            ),
        );
    }

    // ---- calls ----------------------------------------------------------------------------

    fn record(&self, kind: Kind, replica: usize, start: f64, outcome: Outcome) {
        let end = self.now();
        self.records.lock().unwrap().push(Record {
            kind,
            replica,
            start,
            end,
            outcome,
        });
    }

    fn user_token(&self) -> Option<(String, String)> {
        let pool = self.user_tokens.lock().unwrap();
        if pool.is_empty() {
            return None;
        }
        let (t, u, _) = &pool[below(pool.len() as u64) as usize];
        Some((t.clone(), u.clone()))
    }

    /// A token for a relayed call: a user token mostly, an instance token sometimes.
    fn caller(&self) -> Vec<(&'static str, String)> {
        match self.user_token() {
            Some((token, user)) if below(10) < 7 => calls::metadata(Some(&token), &user),
            _ => {
                let token = self.instance.read().unwrap().token();
                calls::metadata(Some(&token), &format!("user-{}", below(50)))
            }
        }
    }

    async fn call_removed_key(self: Arc<Self>, token: String, user: String) {
        for r in 0..self.replicas.len() {
            let live = {
                let replica = &self.replicas[r];
                if replica.draining.load(Ordering::SeqCst) {
                    continue;
                }
                replica.live.read().unwrap().clone()
            };
            let Some(live) = live else { continue };
            let start = self.now();
            let outcome = calls::execute(
                live.channels[0].clone(),
                &calls::metadata(Some(&token), &user),
                Cue::Echo {
                    actions: 1,
                    think_ms: 0,
                },
                false,
            )
            .await;
            self.record(Kind::RemovedAuthorityKey, r, start, outcome);
        }
    }

    async fn call(self: Arc<Self>, kind: Kind) {
        let Some((r, live)) = self.pick() else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let channel = live.channels[below(live.channels.len() as u64) as usize].clone();
        let addr = live.addrs.grpc;
        let start = self.now();
        let user = format!("user-{}", below(50));
        let instance = self.instance.read().unwrap().clone();
        let work = async {
            match kind {
                Kind::GenerateToken => {
                    let mut o = calls::generate_token(
                        channel,
                        &calls::metadata(Some(&instance.token()), &user),
                    )
                    .await;
                    if let Some(token) = o.token.take() {
                        let kid = kid_of(&token);
                        let retired = self.authority.lock().unwrap().retired.clone();
                        if let Some((old, since)) = retired {
                            if kid == old && start > since {
                                o.note = Some(format!(
                                    "minted with {kid}, retired {:.1} s before this call (the replica did not switch at step 2)",
                                    start - since
                                ));
                                return o;
                            }
                        }
                        let mut pool = self.user_tokens.lock().unwrap();
                        if pool.len() < 64 {
                            pool.push((token, user.clone(), kid));
                        } else {
                            let i = below(64) as usize;
                            pool[i] = (token, user.clone(), kid);
                        }
                    }
                    o
                }
                Kind::ExecuteEcho | Kind::ExecuteGzip => {
                    let cue = Cue::Echo {
                        actions: 1 + below(6) as u32,
                        think_ms: below(120),
                    };
                    calls::execute(channel, &self.caller(), cue, kind == Kind::ExecuteGzip).await
                }
                Kind::RawWithLength | Kind::RawWithoutLength => {
                    let start = calls::start_bytes(Cue::Echo {
                        actions: 1,
                        think_ms: 0,
                    });
                    calls::raw(
                        addr,
                        "/DuoWorkflow/ExecuteWorkflow",
                        &self.caller(),
                        &start,
                        kind == Kind::RawWithLength,
                        None,
                    )
                    .await
                }
                Kind::UnaryRelayed => {
                    calls::unary_relayed(channel, &self.caller(), random() as u32).await
                }
                Kind::CancelledHalfway => calls::cancelled_halfway(channel, &self.caller()).await,
                Kind::StreamDeadline => {
                    let start = calls::start_bytes(Cue::Hold { ms: 3000 });
                    calls::raw(
                        addr,
                        "/DuoWorkflow/ExecuteWorkflow",
                        &self.caller(),
                        &start,
                        below(2) == 0,
                        Some(300 + below(300)),
                    )
                    .await
                }
                Kind::UnaryDeadline => {
                    let mut md = self.caller();
                    md.push(("x-soak-delay-ms", "3000".into()));
                    calls::raw(
                        addr,
                        "/DuoWorkflow/ListTools",
                        &md,
                        &calls::list_tools_bytes(),
                        below(2) == 0,
                        Some(300 + below(300)),
                    )
                    .await
                }
                Kind::FailOnCue => {
                    let cue = Cue::Fail {
                        code: calls::FAIL_CODE,
                    };
                    calls::execute(channel, &self.caller(), cue, false).await
                }
                Kind::HealthWatch => {
                    calls::health_watch(channel, Duration::from_millis(1000 + below(2000))).await
                }
                Kind::RefusedBadSignature => {
                    calls::generate_token(
                        channel,
                        &calls::metadata(Some(&instance.bad_signature), &user),
                    )
                    .await
                }
                Kind::RefusedExpired => {
                    calls::generate_token(channel, &calls::metadata(Some(&instance.expired), &user))
                        .await
                }
                Kind::RefusedNoToken => {
                    calls::generate_token(channel, &calls::metadata(None, &user)).await
                }
                Kind::RefusedUnknownIssuer => {
                    calls::generate_token(
                        channel,
                        &calls::metadata(Some(&instance.unknown_issuer), &user),
                    )
                    .await
                }
                Kind::RefusedUserTokenMints => match self.user_token() {
                    Some((token, user)) => {
                        calls::generate_token(channel, &calls::metadata(Some(&token), &user)).await
                    }
                    None => {
                        Outcome::status(Code::PermissionDenied, "Unauthorized to generate token")
                    }
                },
                Kind::RefusedNoScope => {
                    calls::generate_token(
                        channel,
                        &calls::metadata(Some(&instance.no_scope), &user),
                    )
                    .await
                }
                Kind::RemovedAuthorityKey | Kind::BurstHealthCheck => Outcome::ok(),
            }
        };
        let outcome = tokio::time::timeout(Duration::from_secs(30), work)
            .await
            .unwrap_or_else(|_| {
                Outcome::status(Code::Unknown, "no final status within 30 s (a stall)")
            });
        self.record(kind, r, start, outcome);
    }

    // ---- judging --------------------------------------------------------------------------

    /// What `record` may end with, or why it failed whatever its status.
    fn judge(&self, record: &Record, outages: &[Outage]) -> Result<(), String> {
        if let Some(note) = &record.outcome.note {
            return Err(note.clone());
        }
        let (code, details) = record.kind.normal();
        let mut allowed: Vec<(Code, Option<&str>)> = vec![(code, details)];
        let unavailable = (Code::Unavailable, Some(EXECUTOR_UNAVAILABLE));
        if record.kind.relayed() {
            for o in outages {
                let affected = match UPSTREAM {
                    Upstream::One => o.executor == record.replica % self.executors.len(),
                    Upstream::List => true,
                };
                if !affected {
                    continue;
                }
                let back = o.back.unwrap_or(f64::INFINITY);
                let straddles = record.start < o.killed + EXECUTOR_STRADDLE_SECONDS
                    && record.end > o.killed - 0.05;
                match UPSTREAM {
                    Upstream::One => {
                        if record.start >= o.killed + EXECUTOR_STRADDLE_SECONDS
                            && record.start < back
                        {
                            allowed = vec![unavailable];
                        } else if straddles
                            || (record.start >= back
                                && record.start < back + EXECUTOR_RECOVERY_SECONDS)
                        {
                            allowed.push(unavailable);
                        }
                    }
                    Upstream::List => {
                        if straddles
                            || (record.start >= o.killed
                                && record.start < o.killed + EXECUTOR_SKIP_SECONDS)
                        {
                            allowed.push(unavailable);
                        }
                    }
                }
            }
        }
        let got = &record.outcome;
        if allowed
            .iter()
            .any(|(c, d)| *c == got.code && d.is_none_or(|d| d == got.message))
        {
            return Ok(());
        }
        let want: Vec<String> = allowed
            .iter()
            .map(|(c, d)| format!("{c:?} {:?}", d.unwrap_or("*")))
            .collect();
        Err(format!(
            "expected {}, got {:?} {:?}",
            want.join(" or "),
            got.code,
            got.message
        ))
    }
}

/// What the relay says when the executor cannot be reached.
const EXECUTOR_UNAVAILABLE: &str = "Workflow executor unavailable";

fn jwk(key: &SigningKey) -> serde_json::Value {
    key.jwk()
}

fn kid_of(token: &str) -> String {
    use base64::Engine;
    token
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .and_then(|h| h["kid"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Writes `path` atomically (a new file renamed over it), as the kubelet swaps a Secret.
fn replace(path: &Path, contents: &str) {
    stage(path, contents);
    commit(path);
}

fn staged(path: &Path) -> PathBuf {
    path.with_extension("staged")
}

fn stage(path: &Path, contents: &str) {
    std::fs::write(staged(path), contents).unwrap();
}

fn commit(path: &Path) {
    std::fs::rename(staged(path), path).unwrap();
}

/// The call mix: kinds by weight.
fn mix() -> Vec<(Kind, u64)> {
    vec![
        (Kind::GenerateToken, 14),
        (Kind::ExecuteEcho, 18),
        (Kind::ExecuteGzip, 5),
        (Kind::RawWithLength, 5),
        (Kind::RawWithoutLength, 5),
        (Kind::UnaryRelayed, 14),
        (Kind::CancelledHalfway, 5),
        (Kind::StreamDeadline, 3),
        (Kind::UnaryDeadline, 3),
        (Kind::FailOnCue, 4),
        (Kind::HealthWatch, 5),
        (Kind::RefusedBadSignature, 3),
        (Kind::RefusedExpired, 3),
        (Kind::RefusedNoToken, 3),
        (Kind::RefusedUnknownIssuer, 3),
        (Kind::RefusedUserTokenMints, 3),
        (Kind::RefusedNoScope, 3),
    ]
}

fn pick_kind(mix: &[(Kind, u64)]) -> Kind {
    let total: u64 = mix.iter().map(|(_, w)| w).sum();
    let mut n = below(total);
    for (kind, w) in mix {
        if n < *w {
            return *kind;
        }
        n -= w;
    }
    mix[0].0
}

// ---- the run --------------------------------------------------------------------------------

struct Args {
    seconds: f64,
    binary: PathBuf,
    rate: f64,
}

fn usage() -> ! {
    eprintln!("usage: soak run SECONDS --binary PATH [--rate CALLS_PER_SECOND]\n       soak executor --listen ADDR");
    std::process::exit(2)
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("executor") => {
            let listen = args
                .iter()
                .position(|a| a == "--listen")
                .and_then(|i| args.get(i + 1))
                .cloned()
                .unwrap_or_else(|| usage());
            runtime.block_on(executor::serve(&listen));
            std::process::ExitCode::SUCCESS
        }
        Some("run") => {
            let seconds = args
                .get(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| usage());
            let flag = |name: &str| {
                args.iter()
                    .position(|a| a == name)
                    .and_then(|i| args.get(i + 1))
                    .cloned()
            };
            let binary = PathBuf::from(flag("--binary").unwrap_or_else(|| usage()));
            let rate = flag("--rate").and_then(|r| r.parse().ok()).unwrap_or(40.0);
            let failed = runtime.block_on(run(Args {
                seconds,
                binary,
                rate,
            }));
            if failed == 0 {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        _ => usage(),
    }
}

/// Runs the soak; returns how many calls and checks failed.
async fn run(args: Args) -> usize {
    let dir = std::env::temp_dir().join(format!("dws-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = std::fs::canonicalize(&args.binary).unwrap_or_else(|e| {
        eprintln!("{}: {e}", args.binary.display());
        std::process::exit(2)
    });

    // GitLab: its key, its provider.
    let instance_key =
        Arc::new(SigningKey::from_pem(&generate_pem(Algorithm::RS256).unwrap()).unwrap());
    let provider = Provider::start(vec![jwk(&instance_key)]).await;
    // The authority: one signing key file shared by every replica; no validation key yet.
    let authority_pem = generate_pem(Algorithm::EdDSA).unwrap();
    let authority_kid = SigningKey::from_pem(&authority_pem)
        .unwrap()
        .kid()
        .to_owned();
    replace(&dir.join("signing.pem"), &authority_pem);

    // Executors: first on port 0, then always on the port each got.
    let mut executors = Vec::new();
    for e in 0..EXECUTORS {
        let log = dir.join(format!("executor{e}-0.log"));
        let (proc, addr) = processes::start_executor("127.0.0.1:0", log.clone())
            .await
            .unwrap_or_else(|e| panic!("executor: {e}"));
        executors.push((
            ExecutorProc {
                addr,
                proc: tokio::sync::Mutex::new(Some(proc)),
            },
            log,
        ));
    }
    let executor_logs: Vec<PathBuf> = executors.iter().map(|(_, l)| l.clone()).collect();
    let executors: Vec<ExecutorProc> = executors.into_iter().map(|(e, _)| e).collect();

    let mut replicas = Vec::new();
    for r in 0..REPLICAS {
        let config = dir.join(format!("replica{r}.toml"));
        // Replica 0 reloads the key files by its poll, the others only on SIGHUP.
        let poll = if r == 0 { 1 } else { 0 };
        std::fs::write(
            &config,
            format!(
                "[auth]\noidc_gitlab_url = \"{}\"\noidc_customer_portal_url = \"\"\noidc_gitlab_required = true\n\
                 [auth.refresh]\nmin_seconds = {REFRESH_SECONDS}\nmax_seconds = {REFRESH_SECONDS}\ntimeout_ms = 5000\n\
                 [self_signed_jwt]\nsigning_key_file = \"{}\"\nvalidation_key_file = \"{}\"\n\
                 [reload]\npoll_seconds = {poll}\n\
                 [limits]\nshutdown_grace_seconds = {GRACE_SECONDS}\nhandshake_timeout_seconds = {HANDSHAKE_SECONDS}\n{}\n",
                provider.url(),
                dir.join("signing.pem").display(),
                dir.join("validation.pem").display(),
                // More `[limits]` keys for every replica, e.g. to take a cache out of a run.
                std::env::var("SOAK_REPLICA_LIMITS").unwrap_or_default(),
            ),
        )
        .unwrap();
        // `SOAK_REPLICA_ENV_<NAME>=value` gives every replica `<NAME>=value` (e.g. allocator
        // settings for an experiment); nothing else of this environment reaches them.
        let env = std::env::vars()
            .filter_map(|(k, v)| Some((k.strip_prefix("SOAK_REPLICA_ENV_")?.to_owned(), v)))
            .collect();
        replicas.push(Replica {
            index: r,
            config,
            env,
            live: RwLock::new(None),
            draining: AtomicBool::new(false),
            proc: tokio::sync::Mutex::new(None),
            incarnations: AtomicUsize::new(0),
        });
    }
    let mut world = World {
        started: Instant::now(),
        dir: dir.clone(),
        binary,
        duration: args.seconds,
        instance: RwLock::new(Arc::new(Instance::new(instance_key, &provider.url()))),
        previous_instance: Mutex::new(None),
        provider,
        authority: Mutex::new(Authority {
            dir: dir.clone(),
            signing_kid: authority_kid,
            retired: None,
        }),
        replicas,
        executors,
        user_tokens: Mutex::new(Vec::new()),
        removed: Mutex::new(Vec::new()),
        records: Mutex::new(Vec::new()),
        checks: Mutex::new(Vec::new()),
        outages: Mutex::new(Vec::new()),
        faults: Mutex::new(Vec::new()),
        samples: Mutex::new(Vec::new()),
        logs: Mutex::new(executor_logs),
        in_flight: AtomicUsize::new(0),
        skipped: AtomicUsize::new(0),
    };
    // The upstream of each replica, now that the executors listen.
    for r in 0..REPLICAS {
        let upstream = world.upstream_of(r);
        world.replicas[r]
            .env
            .push(("DUO_WORKFLOW_UPSTREAM__URL".into(), upstream));
    }
    world.started = Instant::now();
    let world = Arc::new(world);
    for r in 0..REPLICAS {
        if let Err(why) = world.start_replica(r).await {
            eprintln!("replica {r}: {why}");
            return 1;
        }
    }
    println!(
        "soak: {:.0} s, {REPLICAS} replicas of {}, {EXECUTORS} executors ({}), {:.0} calls/s, a {CYCLE:.0} s cycle of faults after {WARMUP:.0} s; logs in {}",
        args.seconds,
        world.binary.display(),
        match UPSTREAM {
            Upstream::One => "one executor URL per replica",
            Upstream::List => "every replica given every executor",
        },
        args.rate,
        dir.display()
    );

    // Samples every 2 s.
    let sampler = {
        let w = world.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let t = w.now();
                for r in &w.replicas {
                    let live = r.live.read().unwrap().clone();
                    if let Some(live) = live {
                        if let Some(s) = processes::sample(live.pid, live.addrs.operator, t).await {
                            w.samples
                                .lock()
                                .unwrap()
                                .push((r.index, live.pid, phase_at(t), s));
                        }
                    }
                }
            }
        })
    };
    // Faults.
    let faults = {
        let w = world.clone();
        tokio::spawn(async move {
            let mut c = 0;
            while WARMUP + c as f64 * CYCLE < w.duration {
                w.cycle(c).await;
                c += 1;
            }
        })
    };
    // Load at a steady rate.
    let mix = mix();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    const MAX_IN_FLIGHT: usize = 600;
    let mut over_bound = 0;
    while world.now() < args.seconds {
        tick.tick().await;
        if world.in_flight.load(Ordering::SeqCst) >= MAX_IN_FLIGHT {
            over_bound += 1;
            continue;
        }
        let w = world.clone();
        let kind = pick_kind(&mix);
        w.in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let w2 = w.clone();
            w.call(kind).await;
            w2.in_flight.fetch_sub(1, Ordering::SeqCst);
        });
    }
    world.check(
        "load.in_flight_bounded",
        over_bound == 0,
        format!("{over_bound} calls not started: {MAX_IN_FLIGHT} were in flight (calls stalling)"),
    );
    let _ = faults.await;
    let deadline = Instant::now() + Duration::from_secs(40);
    while world.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    sampler.abort();
    // A last sample of the relay's open streams: every call is over, so none may be open.
    for r in &world.replicas {
        let live = r.live.read().unwrap().clone();
        if let Some(live) = live {
            if let Some(s) = processes::sample(live.pid, live.addrs.operator, world.now()).await {
                world.check(
                    format!("end.replica{}.no_relayed_stream_left_open", r.index),
                    s.relayed == 0,
                    format!("{} relayed streams open after every call ended", s.relayed),
                );
            }
        }
    }
    // Stop everything.
    for r in &world.replicas {
        if let Some(mut p) = r.proc.lock().await.take() {
            processes::signal(p.pid, libc::SIGTERM);
            if p.wait(Duration::from_secs(GRACE_SECONDS + 5))
                .await
                .is_none()
            {
                p.kill().await;
            }
        }
    }
    for e in &world.executors {
        if let Some(mut p) = e.proc.lock().await.take() {
            p.kill().await;
        }
    }
    let failed = report(&world);
    if failed == 0 && std::env::var_os("SOAK_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    failed
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// Prints the tables; returns how many calls and checks failed.
fn report(world: &World) -> usize {
    let records = world.records.lock().unwrap();
    let outages = world.outages.lock().unwrap().clone();
    let mut failures = Vec::new();
    // Per window: calls, passed, failed; per (kind, window): latencies.
    let mut per_window: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut latency: BTreeMap<(Kind, &str), Vec<f64>> = BTreeMap::new();
    let mut statuses: BTreeMap<(Kind, String), usize> = BTreeMap::new();
    for rec in records.iter() {
        let phase = phase_at(rec.start);
        let verdict = world.judge(rec, &outages);
        let w = per_window.entry(phase).or_default();
        w.0 += 1;
        if let Err(why) = &verdict {
            w.1 += 1;
            failures.push(format!(
                "{:?} on replica {} at {:.1}s ({phase}, {:.0} ms): {why}",
                rec.kind,
                rec.replica,
                rec.start,
                (rec.end - rec.start) * 1000.0
            ));
        }
        latency
            .entry((rec.kind, phase))
            .or_default()
            .push((rec.end - rec.start) * 1000.0);
        *statuses
            .entry((rec.kind, format!("{:?}", rec.outcome.code)))
            .or_default() += 1;
    }
    let calls_failed = failures.len();
    let calls_passed = records.len() - calls_failed;

    println!("\n== calls per fault window (a call belongs to the window it started in)");
    println!(
        "{:<20} {:>8} {:>8} {:>8}",
        "window", "calls", "passed", "failed"
    );
    let order: Vec<&str> = std::iter::once("warm-up")
        .chain(windows().iter().map(|(_, n)| *n))
        .collect();
    for name in &order {
        if let Some((n, f)) = per_window.get(name) {
            println!("{name:<20} {n:>8} {:>8} {f:>8}", n - f);
        }
    }

    println!("\n== final statuses by call kind");
    for ((kind, code), n) in &statuses {
        println!("{:<24} {code:<18} {n:>8}", format!("{kind:?}"));
    }

    println!("\n== latency per call kind and window, ms (p50 / p99, n)");
    print!("{:<24}", "kind");
    for name in &order {
        print!(" {:>19}", name);
    }
    println!();
    let kinds: std::collections::BTreeSet<Kind> = latency.keys().map(|(k, _)| *k).collect();
    for kind in kinds {
        print!("{:<24}", format!("{kind:?}"));
        for name in &order {
            match latency.get_mut(&(kind, *name)) {
                Some(v) => {
                    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                    let cell = format!(
                        "{:.0}/{:.0} ({})",
                        percentile(v, 0.5),
                        percentile(v, 0.99),
                        v.len()
                    );
                    print!(" {cell:>19}");
                }
                None => print!(" {:>19}", "-"),
            }
        }
        println!();
    }

    // Resources: per replica process, the medians of each quiet window after the first cycle.
    println!(
        "\n== resources per replica process (samples every 2 s; medians of each quiet window)"
    );
    let samples = world.samples.lock().unwrap().clone();
    let mut by_proc: BTreeMap<(usize, u32), Vec<(&str, Sample)>> = BTreeMap::new();
    for (r, pid, phase, s) in samples {
        by_proc.entry((r, pid)).or_default().push((phase, s));
        if s.panics > 0 {
            world.check(
                format!("metrics.replica{r}.pid{pid}.no_panics"),
                false,
                format!("duo_workflow_panics_total {} at {:.1}s", s.panics, s.at),
            );
        }
    }
    for ((r, pid), samples) in &by_proc {
        let first = samples.first().map(|(_, s)| s.at).unwrap_or(0.0);
        let last = samples.last().map(|(_, s)| s.at).unwrap_or(0.0);
        let max_rss = samples.iter().map(|(_, s)| s.rss_kib).max().unwrap_or(0);
        let max_fds = samples.iter().map(|(_, s)| s.fds).max().unwrap_or(0);
        let max_tasks = samples.iter().map(|(_, s)| s.tasks).max().unwrap_or(0);
        let max_threads = samples.iter().map(|(_, s)| s.threads).max().unwrap_or(0);
        println!(
            "replica {r} pid {pid}: {} samples {first:.0}–{last:.0} s; max RSS {:.1} MiB, fds {max_fds}, tasks {max_tasks}, threads {max_threads}",
            samples.len(),
            max_rss as f64 / 1024.0
        );
        // Quiet windows: consecutive quiet samples; the tail of the run counts as one too.
        let mut quiet: Vec<Vec<Sample>> = Vec::new();
        let mut in_quiet = false;
        for (phase, s) in samples {
            let is_quiet = *phase == "quiet" || s.at >= world.duration - 4.0;
            if is_quiet && s.at >= WARMUP + CYCLE - 4.0 {
                if !in_quiet {
                    quiet.push(Vec::new());
                }
                quiet.last_mut().unwrap().push(*s);
            }
            in_quiet = is_quiet;
        }
        if quiet.is_empty() {
            println!("  (no quiet window after warm-up in this process's life)");
            continue;
        }
        println!(
            "  {:>8} {:>10} {:>6} {:>8} {:>6} {:>8} {:>8} {:>14} {:>10} {:>16}",
            "at s",
            "RSS MiB",
            "fds",
            "sockets",
            "tasks",
            "threads",
            "relayed",
            "cache entries",
            "cache MiB",
            "RSS-cache MiB"
        );
        let mut medians: Vec<[u64; 9]> = Vec::new();
        for window in &quiet {
            let col = |f: fn(&Sample) -> u64| median(&mut window.iter().map(f).collect::<Vec<_>>());
            let m = [
                col(|s| s.rss_kib),
                col(|s| s.fds),
                col(|s| s.sockets),
                col(|s| s.tasks),
                col(|s| s.threads),
                col(|s| s.relayed),
                col(|s| s.cache_entries),
                col(|s| s.cache_bytes / 1024),
                // What the process holds besides the verified-token cache (bounded by design).
                col(|s| s.rss_kib.saturating_sub(s.cache_bytes / 1024)),
            ];
            println!(
                "  {:>8.0} {:>10.1} {:>6} {:>8} {:>6} {:>8} {:>8} {:>14} {:>10.1} {:>16.1}",
                window[0].at,
                m[0] as f64 / 1024.0,
                m[1],
                m[2],
                m[3],
                m[4],
                m[5],
                m[6],
                m[7] as f64 / 1024.0,
                m[8] as f64 / 1024.0
            );
            medians.push(m);
        }
        // Flat: every later window within 10% (plus a little slack) of the first, and no
        // series rising window after window over four or more windows.
        let bounds: [(&str, usize, u64); 3] =
            [("fds", 1, 16), ("sockets", 2, 16), ("tasks", 3, 32)];
        for (name, i, slack) in bounds {
            let base = medians[0][i];
            let limit = base + base / 10 + slack;
            let worst = medians.iter().map(|m| m[i]).max().unwrap_or(0);
            let rising = medians.len() >= 4 && medians.windows(2).all(|w| w[1][i] > w[0][i]);
            world.check(
                format!("resources.replica{r}.pid{pid}.{name}_flat"),
                worst <= limit && !rising,
                format!(
                    "first quiet window {base}, highest {worst}, bound {limit} (+10% +{slack}){}",
                    if rising {
                        ", rising in every window"
                    } else {
                        ""
                    }
                ),
            );
        }
        // RSS less the verified-token cache's bytes (the cache fills, by design, up to its own
        // bound, checked below; its table doubling shows as a step of RSS): glibc keeps what
        // its arenas once held (the live heap peaks during the bursts of connections and goes
        // back down; RSS does not), so after warm-up it climbs to a plateau. Over six or more
        // windows the plateau must hold: the last third's highest within 5% (+1 MiB) of the
        // middle third's; over fewer, within 10% (+4 MiB) of the first window.
        let rss: Vec<u64> = medians.iter().map(|m| m[8]).collect();
        let (reference, limit, how) = if rss.len() >= 6 {
            let third = rss.len() / 3;
            let middle = *rss[third..rss.len() - third].iter().max().unwrap();
            (
                middle,
                middle + middle / 20 + 1024,
                "the middle third's highest +5% +1 MiB",
            )
        } else {
            (
                rss[0],
                rss[0] + rss[0] / 10 + 4096,
                "the first window +10% +4 MiB",
            )
        };
        let tail = if rss.len() >= 6 {
            &rss[rss.len() - rss.len() / 3..]
        } else {
            &rss[1..]
        };
        let worst = tail.iter().copied().max().unwrap_or(reference);
        world.check(
            format!("resources.replica{r}.pid{pid}.RSS_besides_token_cache_plateau"),
            worst <= limit,
            format!(
                "{:.1} MiB at most in the last windows, bound {:.1} MiB ({how}: {:.1} MiB)",
                worst as f64 / 1024.0,
                limit as f64 / 1024.0,
                reference as f64 / 1024.0
            ),
        );
    }

    for ((r, pid), samples) in &by_proc {
        let entries = samples
            .iter()
            .map(|(_, s)| s.cache_entries)
            .max()
            .unwrap_or(0);
        let bytes = samples
            .iter()
            .map(|(_, s)| s.cache_bytes)
            .max()
            .unwrap_or(0);
        if entries > 10_000 || bytes > 16 * 1024 * 1024 {
            world.check(
                format!("resources.replica{r}.pid{pid}.token_cache_bounded"),
                false,
                format!("{entries} entries, {bytes} bytes (bounds 10000, 16 MiB)"),
            );
        }
    }

    println!("\n== faults as they happened");
    for (t, what) in world.faults.lock().unwrap().iter() {
        println!("{t:7.1}s  {what}");
    }

    // Panics: every log of every process the run started.
    let logs = world.logs.lock().unwrap().clone();
    let panics = processes::panic_lines(&logs);
    world.check(
        "logs.no_panic",
        panics.is_empty(),
        format!(
            "{} logs read; {}",
            logs.len(),
            panics
                .iter()
                .map(|(l, line)| format!("{}: {line}", l.display()))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    );
    let skipped = world.skipped.load(Ordering::Relaxed);
    if skipped > 0 {
        println!("\n({skipped} calls not made: no replica was in rotation at that moment)");
    }

    let checks = world.checks.lock().unwrap();
    println!("\n== checks");
    for c in checks.iter() {
        println!(
            "{} {}: {}",
            if c.passed { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    if !failures.is_empty() {
        println!("\n== failed calls ({}; the first 50)", failures.len());
        for f in failures.iter().take(50) {
            println!("FAIL {f}");
        }
    }
    let checks_failed = checks.iter().filter(|c| !c.passed).count();
    let passed = calls_passed + checks.len() - checks_failed;
    let failed = calls_failed + checks_failed;
    println!(
        "\nsoak: {} calls ({calls_failed} failed), {} checks ({checks_failed} failed)",
        records.len(),
        checks.len()
    );
    println!("{passed} passed, {failed} failed");
    failed
}
