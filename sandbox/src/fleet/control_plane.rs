//! The real `pivot-control-plane` binary as a child process, so that its memory and CPU
//! are its own: found, started on fixed loopback ports with a data directory, stopped with
//! `SIGTERM`, started again on the same ports, and killed on drop.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;
use tracing::{info, warn};

/// Environment variable naming the `pivot-control-plane` binary to run.
pub const CONTROL_PLANE_BIN_ENV: &str = "PIVOT_CONTROL_PLANE_BIN";
/// The binary's file name.
const BINARY: &str = "pivot-control-plane";
/// Start attempts with fresh ports (another process may take a port between our probe and
/// the child's bind).
const START_ATTEMPTS: usize = 5;
/// How often readiness and exit are polled.
const POLL: Duration = Duration::from_millis(10);

/// Finds the control plane binary: `explicit`, else `$PIVOT_CONTROL_PLANE_BIN`, else next
/// to the running executable ([`find_sibling_binary`]).
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    find_sibling_binary(
        BINARY,
        explicit,
        "--control-plane-bin",
        CONTROL_PLANE_BIN_ENV,
        "pivot-control-plane",
    )
}

/// Finds one of the workspace's binaries for a benchmark to run as a child: `explicit`
/// (given with `flag`), else the path in the environment variable `env`, else `name` next to
/// the running executable, else one directory up (where Cargo puts binaries when the running
/// executable is a test in `deps/`). The error says how to build it (`cargo build -p
/// package` with the same profile).
pub fn find_sibling_binary(
    name: &str,
    explicit: Option<&Path>,
    flag: &str,
    env: &str,
    package: &str,
) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return existing(path.to_path_buf(), flag);
    }
    if let Some(path) = std::env::var_os(env) {
        return existing(PathBuf::from(path), env);
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "{name} not found (looked in {}); build it with the same profile, e.g. \
                 `cargo build --release -p {package}`, or name it with {flag} or ${env}",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// For integration tests: the binary `name` of package `package` built with the running
/// test's profile. The path in `$env` if set; else the one Cargo put in the test's profile
/// directory, built here (`cargo build -p package --bin name`, same profile and target
/// directory) when it is missing or older than the package's library (`lib_prefix`, e.g.
/// `libpivot_proxy-`) that the test links, so that a test never runs a stale binary.
pub fn test_binary(name: &str, package: &str, lib_prefix: &str, env: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return existing(PathBuf::from(path), env);
    }
    // <target>/<profile>/deps/<the test>
    let exe = std::env::current_exe()?;
    let deps = exe.parent().context("test executable has no directory")?;
    let profile_dir = deps.parent().context("no profile directory")?;
    let target_dir = profile_dir.parent().context("no target directory")?;
    let binary = profile_dir.join(name);
    if fresh(&binary, deps, lib_prefix)? {
        return Ok(binary);
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => bail!("unexpected profile directory {}", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let status = Command::new(cargo)
        .args(["build", "-p", package, "--bin", name])
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .with_context(|| format!("running cargo build for {package}"))?;
    if !status.success() {
        bail!("cargo build -p {package} failed: {status}");
    }
    Ok(binary)
}

/// `binary` exists and is no older than every library in `deps` whose name starts with
/// `lib_prefix`.
fn fresh(binary: &Path, deps: &Path, lib_prefix: &str) -> Result<bool> {
    let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
        return Ok(false);
    };
    let newest_lib = std::fs::read_dir(deps)?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(lib_prefix) && n.ends_with(".rlib"))
        })
        .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(built >= newest_lib)
}

fn existing(path: PathBuf, source: &str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        bail!("{source} names {}, which is not a file", path.display())
    }
}

/// How to start the control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneSpec {
    /// The binary.
    pub binary: PathBuf,
    /// Its data directory (SQLite store), kept across restarts.
    pub data_dir: PathBuf,
    /// Where its output goes (appended to across restarts).
    pub log_path: PathBuf,
    /// The service it watches: (Sentinel master name, Sentinel addresses).
    pub service: (String, Vec<SocketAddr>),
    /// The first admin token (`PIVOT_ADMIN_TOKEN`).
    pub admin_token: String,
    /// The token proxies present (`PIVOT_PROXY_TOKENS`).
    pub proxy_token: String,
    /// Its `RUST_LOG`.
    pub log_filter: String,
}

/// A running (or stopped) control plane child process. Dropping it kills the child
/// (`SIGKILL`, then reaps it).
#[derive(Debug)]
pub struct ControlPlaneProcess {
    spec: ControlPlaneSpec,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    child: Option<Child>,
}

impl ControlPlaneProcess {
    /// Starts the control plane on two free loopback ports and waits until its HTTP
    /// server answers (not until the topology is decided: see [`Self::wait_ready`]).
    pub async fn start(spec: ControlPlaneSpec, timeout: Duration) -> Result<ControlPlaneProcess> {
        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            let mut cp = ControlPlaneProcess {
                spec: spec.clone(),
                http_addr: free_port()?,
                grpc_addr: free_port()?,
                child: None,
            };
            cp.spawn()?;
            match cp.wait_serving(timeout).await {
                Ok(()) => return Ok(cp),
                Err(e) if cp.exited()? => {
                    // Most likely a port taken since we probed it: try others.
                    warn!(attempt, error = %e, "control plane start failed; retrying on other ports");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("control plane did not start")))
    }

    /// Starts it again on the same ports and data directory (after [`Self::terminate`]) and
    /// returns as soon as the process is spawned; the caller times what follows.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() && !self.exited()? {
            bail!("the control plane is still running");
        }
        self.spawn()
    }

    fn spawn(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.spec.log_path)
            .with_context(|| format!("opening {}", self.spec.log_path.display()))?;
        let err = log.try_clone().context("duplicating the log file handle")?;
        let (name, sentinels) = &self.spec.service;
        let sentinels: Vec<String> = sentinels.iter().map(ToString::to_string).collect();
        let child = Command::new(&self.spec.binary)
            .arg("--data-dir")
            .arg(&self.spec.data_dir)
            .arg("--http-listen")
            .arg(self.http_addr.to_string())
            .arg("--grpc-listen")
            .arg(self.grpc_addr.to_string())
            .arg("--service")
            .arg(format!("{name}={}", sentinels.join(",")))
            // Parsed by `log_summary`.
            .args(["--log-format", "json"])
            .env("PIVOT_ADMIN_TOKEN", &self.spec.admin_token)
            .env("PIVOT_PROXY_TOKENS", &self.spec.proxy_token)
            .env("RUST_LOG", &self.spec.log_filter)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", self.spec.binary.display()))?;
        info!(pid = child.id(), http = %self.http_addr, grpc = %self.grpc_addr, "control plane started");
        self.child = Some(child);
        Ok(())
    }

    /// The HTTP address (REST API).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The gRPC address (proxy config streams).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The child's PID while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True when the child has exited (or was never started); reaps it.
    fn exited(&mut self) -> Result<bool> {
        match &mut self.child {
            None => Ok(true),
            Some(c) => Ok(c.try_wait().context("polling the control plane")?.is_some()),
        }
    }

    /// Polls `GET /healthz` until it answers 200, failing early if the child exits.
    pub async fn wait_serving(&mut self, timeout: Duration) -> Result<()> {
        self.wait_http("/healthz", timeout).await
    }

    /// Polls `GET /readyz` until the control plane has decided every service's topology.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        self.wait_http("/readyz", timeout).await
    }

    async fn wait_http(&mut self, path: &str, timeout: Duration) -> Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .context("HTTP client")?;
        let url = format!("http://{}{path}", self.http_addr);
        let deadline = Instant::now() + timeout;
        loop {
            if self.exited()? {
                bail!(
                    "the control plane exited while waiting for {path}; its log ends with:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the control plane did not answer {path} with 200 within {timeout:?}; its log ends with:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends `SIGTERM` and waits for the child to exit (it drains its streams); after
    /// `timeout` it is killed. Returns how it exited.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(child) = &mut self.child else {
            bail!("the control plane is not running");
        };
        if let Some(status) = child.try_wait().context("polling the control plane")? {
            bail!("the control plane had already exited ({status})");
        }
        // Not reaped yet, so the PID is still our child's.
        let pid = Pid::from_raw(i32::try_from(child.id()).context("PID out of range")?);
        kill(pid, Signal::SIGTERM).context("sending SIGTERM to the control plane")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().context("polling the control plane")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                warn!(
                    ?timeout,
                    "the control plane did not stop after SIGTERM; killing it"
                );
                child.kill().context("killing the control plane")?;
                return child.wait().context("reaping the control plane");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Resident memory (`VmRSS`) of the running child, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        crate::procfs::rss_kib(self.pid().context("the control plane is not running")?)
    }

    /// CPU time the running child's threads have used so far ([`crate::procfs::cpu_time`]).
    pub fn cpu_time(&self) -> Result<Duration> {
        crate::procfs::cpu_time(self.pid().context("the control plane is not running")?)
    }

    /// The last lines of its output.
    pub fn log_tail(&self) -> String {
        match std::fs::read_to_string(&self.spec.log_path) {
            Ok(s) => {
                let lines: Vec<&str> = s.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.spec.log_path.display()),
        }
    }

    /// `e`, with the end of the control plane's log (a failed run's likely explanation).
    pub fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "{e:#}\nthe control plane's log ({}) ends with:\n{}",
            self.log_path().display(),
            self.log_tail()
        )
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.spec.log_path
    }

    /// Its warnings and errors so far (every process it ran), grouped by level, target and
    /// message, most frequent first.
    pub fn log_summary(&self) -> Result<Vec<LogCount>> {
        let text = std::fs::read_to_string(&self.spec.log_path)
            .with_context(|| format!("reading {}", self.spec.log_path.display()))?;
        let mut counts: Vec<LogCount> = Vec::new();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let level = v["level"].as_str().unwrap_or_default();
            if level != "WARN" && level != "ERROR" {
                continue;
            }
            let target = v["target"].as_str().unwrap_or_default();
            let message = v["fields"]["message"].as_str().unwrap_or_default();
            match counts
                .iter_mut()
                .find(|c| c.level == level && c.target == target && c.message == message)
            {
                Some(c) => c.count += 1,
                None => counts.push(LogCount {
                    level: level.to_string(),
                    target: target.to_string(),
                    message: message.to_string(),
                    count: 1,
                }),
            }
        }
        counts.sort_by_key(|c| std::cmp::Reverse(c.count));
        Ok(counts)
    }
}

/// How often the control plane logged one warning or error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogCount {
    /// `WARN` or `ERROR`.
    pub level: String,
    /// The module that logged it.
    pub target: String,
    /// The message, without its fields.
    pub message: String,
    /// How many times.
    pub count: u64,
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child
            && matches!(child.try_wait(), Ok(None))
        {
            // Our own unreaped child: the PID cannot have been reused.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port the kernel just reported free on 127.0.0.1 (racy: [`ControlPlaneProcess::start`]
/// retries).
fn free_port() -> Result<SocketAddr> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    l.local_addr().context("local address of a probe listener")
}
