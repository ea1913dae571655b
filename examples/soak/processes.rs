//! The processes the soak runs: replicas of the release binary (each started with `PORT=0`, its
//! ports read from its `serving` line) and executors (this example started again as
//! `soak executor`), each with a log file of its own that the driver reads for panics; and what
//! is sampled from a replica: `/proc` and the operator listener's `/metrics`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: a signal to a child process this driver started.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// One run of a process, and its log.
pub struct Proc {
    pub child: Child,
    pub pid: u32,
    pub log: PathBuf,
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (polling, off no thread) for the process to exit, at most `within`.
    pub async fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and the exit collected.
    pub async fn kill(&mut self) {
        signal(self.pid, libc::SIGKILL);
        let _ = self.wait(Duration::from_secs(10)).await;
    }
}

/// A process left running when the driver stops is killed.
impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every log a process of the run wrote, for the closing panic check.
pub fn panic_lines(logs: &[PathBuf]) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("panicked at")) {
            found.push((log.clone(), line.chars().take(400).collect()));
        }
    }
    found
}

/// The addresses a replica serves on, from its start-up line.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaAddrs {
    pub grpc: std::net::SocketAddr,
    pub operator: std::net::SocketAddr,
}

/// Starts a replica: `binary serve --config config`, the environment cleared of the service's
/// variables but `extra_env`, JSON logs into `log`.
pub async fn start_replica(
    binary: &Path,
    config: &Path,
    extra_env: &[(String, String)],
    log: PathBuf,
) -> Result<(Proc, ReplicaAddrs), String> {
    let file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(binary);
    cmd.args(["serve", "--listen", "127.0.0.1", "--config"])
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", "0")
        .env("DUO_WORKFLOW_HTTP__PORT", "0")
        .env("PROMETHEUS_METRICS__PORT", "0")
        .env("DUO_WORKFLOW_LOGGING__JSON_FORMAT", "true")
        .envs(extra_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    let child = cmd
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let pid = child.id();
    let mut proc = Proc { child, pid, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = proc.log_text();
        let serving = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == "serving");
        if let Some(line) = serving {
            let addr = |name: &str| {
                line[name]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| format!("no {name} address in {line}"))
            };
            let addrs = ReplicaAddrs {
                grpc: addr("grpc")?,
                operator: addr("operator")?,
            };
            return Ok((proc, addrs));
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            return Err(format!("the replica exited with {status}: {text}"));
        }
        if Instant::now() > deadline {
            return Err(format!("no serving line within 30 s: {text}"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Starts this example again as an executor on `listen` (`127.0.0.1:0` the first time, its
/// port after), and returns once it listens.
pub async fn start_executor(listen: &str, log: PathBuf) -> Result<(Proc, String), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new(exe)
        .args(["executor", "--listen", listen])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id();
    let mut proc = Proc { child, pid, log };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = proc.log_text();
        if let Some(addr) = text
            .lines()
            .find_map(|l| l.strip_prefix("listening "))
            .map(str::to_owned)
        {
            return Ok((proc, addr));
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            return Err(format!("the executor exited with {status}: {text}"));
        }
        if Instant::now() > deadline {
            return Err(format!("the executor did not listen within 10 s: {text}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One sample of a replica's resources.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Seconds since the run started.
    pub at: f64,
    pub rss_kib: u64,
    pub threads: u64,
    pub fds: u64,
    /// Of `fds`: sockets (listeners and connections).
    pub sockets: u64,
    /// tokio tasks alive in the service's runtime (`duo_workflow_runtime_alive_tasks`).
    pub tasks: u64,
    /// `duo_workflow_auth_relay_open_streams`.
    pub relayed: u64,
    /// `duo_workflow_panics_total`.
    pub panics: u64,
    /// `duo_workflow_auth_verified_token_cache_entries` and `_bytes`: bounded by design
    /// (10 000 entries, 16 MiB), and filling as distinct user tokens are seen.
    pub cache_entries: u64,
    pub cache_bytes: u64,
}

pub async fn sample(pid: u32, operator: std::net::SocketAddr, at: f64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (mut fds, mut sockets) = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        fds += 1;
        if std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    let metrics = scrape(operator).await.unwrap_or_default();
    let metric = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    Some(Sample {
        at,
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        fds,
        sockets,
        tasks: metric("duo_workflow_runtime_alive_tasks").max(0.0) as u64,
        relayed: metric("duo_workflow_auth_relay_open_streams").max(0.0) as u64,
        panics: metric("duo_workflow_panics_total").max(0.0) as u64,
        cache_entries: metric("duo_workflow_auth_verified_token_cache_entries").max(0.0) as u64,
        cache_bytes: metric("duo_workflow_auth_verified_token_cache_bytes").max(0.0) as u64,
    })
}

/// `GET /metrics` from the operator listener.
async fn scrape(operator: std::net::SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(operator).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        Some(text)
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()
        .flatten()
}
