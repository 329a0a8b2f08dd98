//! One owned `redis-server` or Sentinel process: started on a free loopback port, frozen,
//! resumed, killed and restarted by PID, and killed (SIGKILL + reap) when dropped.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::{Signal, kill as send_signal};
use nix::unistd::Pid;
use redis::Value;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::SandboxError;
use super::reply::{self, Role};

/// How long a freshly spawned process gets to answer `PING` before we give up on it.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How many free ports a start tries before failing (another process may grab the port
/// between our probe and the server's `bind`).
const MAX_PORT_ATTEMPTS: u32 = 5;
/// Poll interval of every wait in this crate.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Connect and response timeout of helper connections, so a frozen node fails a poll
/// instead of hanging it.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Written to the log before every spawn, so a log of retries and restarts reads in order.
const START_MARKER: &str = "--- pivot-sandbox: starting";
/// Log lines quoted in a start error.
const LOG_TAIL_LINES: usize = 20;

/// What a [`Process`] runs and where, fixed for its lifetime so a restart reuses it.
#[derive(Clone, Debug)]
pub(crate) struct ProcessSpec {
    /// Human name for logs and errors, e.g. `redis node 1` or `sentinel 0`.
    pub(crate) name: String,
    pub(crate) program: PathBuf,
    /// Arguments after the config path (e.g. `--sentinel`).
    pub(crate) extra_args: Vec<OsString>,
    pub(crate) dir: PathBuf,
    pub(crate) config_file: &'static str,
    pub(crate) log_file: &'static str,
}

/// A spawned process plus what is needed to start it again on the same port.
#[derive(Debug)]
pub(crate) struct Process {
    spec: ProcessSpec,
    port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    /// `None` once killed (or found exited); replaced by `restart`.
    child: Mutex<Option<Child>>,
}

/// Why one start attempt failed.
enum AttemptError {
    /// Worth another port (exited early, never answered).
    Retry(String),
    /// Retrying won't help (missing binary, unwritable dir).
    Fatal(SandboxError),
}

impl Process {
    /// Writes the config rendered for a free port and starts the process, retrying with a
    /// new port when the process exits early or never answers `PING`.
    pub(crate) async fn start(
        spec: ProcessSpec,
        render_config: impl Fn(u16) -> String,
    ) -> Result<Process, SandboxError> {
        std::fs::create_dir_all(&spec.dir).map_err(|source| {
            SandboxError::io(format!("creating {}", spec.dir.display()), source)
        })?;
        let config_path = spec.dir.join(spec.config_file);
        let log_path = spec.dir.join(spec.log_file);
        let mut last_reason = String::new();
        for attempt in 1..=MAX_PORT_ATTEMPTS {
            let port = free_port()?;
            std::fs::write(&config_path, render_config(port)).map_err(|source| {
                SandboxError::io(format!("writing {}", config_path.display()), source)
            })?;
            let process = Process {
                spec: spec.clone(),
                port,
                config_path: config_path.clone(),
                log_path: log_path.clone(),
                child: Mutex::new(None),
            };
            match process.spawn_and_wait().await {
                Ok(()) => {
                    info!(name = %spec.name, port, pid = ?process.pid(), "started");
                    return Ok(process);
                }
                Err(AttemptError::Fatal(err)) => return Err(err),
                Err(AttemptError::Retry(reason)) => {
                    warn!(name = %spec.name, port, attempt, %reason, "start attempt failed");
                    process.kill_quietly();
                    last_reason = reason;
                }
            }
        }
        Err(SandboxError::StartFailed {
            name: spec.name.clone(),
            attempts: MAX_PORT_ATTEMPTS,
            reason: last_reason,
            log_tail: log_tail(&log_path),
            log: log_path,
        })
    }

    /// Kills the process if it still runs, then starts it again with the same config file
    /// and port and waits until it answers `PING`.
    pub(crate) async fn restart(&self) -> Result<(), SandboxError> {
        self.kill()?;
        match self.spawn_and_wait().await {
            Ok(()) => {
                info!(name = %self.spec.name, port = self.port, pid = ?self.pid(), "restarted");
                Ok(())
            }
            Err(AttemptError::Fatal(err)) => Err(err),
            Err(AttemptError::Retry(reason)) => {
                self.kill_quietly();
                Err(SandboxError::StartFailed {
                    name: self.spec.name.clone(),
                    attempts: 1,
                    reason,
                    log_tail: log_tail(&self.log_path),
                    log: self.log_path.clone(),
                })
            }
        }
    }

    async fn spawn_and_wait(&self) -> Result<(), AttemptError> {
        let pid = self.spawn().map_err(AttemptError::Fatal)?;
        self.wait_ready(pid).await.map_err(AttemptError::Retry)
    }

    fn spawn(&self) -> Result<u32, SandboxError> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|source| {
                SandboxError::io(format!("opening {}", self.log_path.display()), source)
            })?;
        // A marker so the log of a restarted or retried process reads in order.
        let _ = writeln!(
            log,
            "{START_MARKER} {} on port {} ---",
            self.spec.name, self.port
        );
        let stderr = log
            .try_clone()
            .map_err(|source| SandboxError::io("duplicating the log file handle", source))?;
        let child = Command::new(&self.spec.program)
            .arg(&self.config_path)
            .args(&self.spec.extra_args)
            .current_dir(&self.spec.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    SandboxError::BinaryNotFound {
                        detail: format!("cannot run {}: {source}", self.spec.program.display()),
                    }
                }
                _ => SandboxError::io(
                    format!(
                        "spawning {} for {}",
                        self.spec.program.display(),
                        self.spec.name
                    ),
                    source,
                ),
            })?;
        let pid = child.id();
        *self.lock() = Some(child);
        Ok(pid)
    }

    /// Waits until the server on our port answers `INFO server` with our PID: a server
    /// answering with another PID means someone else owns the port.
    async fn wait_ready(&self, pid: u32) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(format!("exited with {status} before answering PING"));
            }
            let last = match info_fields(self.addr(), "server").await {
                Ok(fields) => match fields.get("process_id").map(|p| p.parse::<u32>()) {
                    Some(Ok(found)) if found == pid => return Ok(()),
                    other => format!("port {} answered by process_id {other:?}", self.port),
                },
                Err(err) => err.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "did not answer PING within {START_TIMEOUT:?}; last: {last}"
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `Some(status)` if the child exited (it is then reaped and forgotten).
    fn exit_status(&self) -> Option<String> {
        let mut guard = self.lock();
        let child = guard.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                *guard = None;
                Some(status.to_string())
            }
            Ok(None) | Err(_) => None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn name(&self) -> &str {
        &self.spec.name
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.spec.dir
    }

    pub(crate) fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        let mut guard = self.lock();
        let child = guard.as_mut()?;
        match child.try_wait() {
            Ok(Some(_)) => {
                *guard = None;
                None
            }
            Ok(None) | Err(_) => Some(child.id()),
        }
    }

    pub(crate) fn signal(&self, signal: Signal) -> Result<(), SandboxError> {
        let pid = self.pid().ok_or_else(|| SandboxError::NotRunning {
            name: self.spec.name.clone(),
        })?;
        let raw = i32::try_from(pid).map_err(|_| SandboxError::NotRunning {
            name: format!("{} (pid {pid} out of range)", self.spec.name),
        })?;
        send_signal(Pid::from_raw(raw), signal).map_err(|source| SandboxError::Signal {
            name: self.spec.name.clone(),
            pid,
            signal: signal.as_str().to_string(),
            source,
        })?;
        debug!(name = %self.spec.name, pid, signal = signal.as_str(), "signalled");
        Ok(())
    }

    /// SIGKILL and reap our own child; a no-op when it is not running.
    pub(crate) fn kill(&self) -> Result<(), SandboxError> {
        let Some(mut child) = self.lock().take() else {
            return Ok(());
        };
        let pid = child.id();
        child.kill().map_err(|source| {
            SandboxError::io(format!("killing {} (pid {pid})", self.spec.name), source)
        })?;
        child.wait().map_err(|source| {
            SandboxError::io(format!("reaping {} (pid {pid})", self.spec.name), source)
        })?;
        debug!(name = %self.spec.name, pid, "killed");
        Ok(())
    }

    fn kill_quietly(&self) {
        if let Err(err) = self.kill() {
            warn!(name = %self.spec.name, %err, "kill failed");
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_quietly();
    }
}

/// A port the kernel just reported free on 127.0.0.1. Racy by nature: callers retry.
fn free_port() -> Result<u16, SandboxError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|source| SandboxError::io("binding 127.0.0.1:0 to find a free port", source))
}

/// The last lines of a log file (or why it could not be read).
fn log_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        // Enough for LOG_TAIL_LINES lines of Redis' log without reading a huge file.
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            // Only the last run: earlier attempts are separated by our start markers.
            let last_run = text
                .rfind(START_MARKER)
                .map_or(text.as_str(), |at| &text[at..]);
            let lines: Vec<&str> = last_run.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(err) => format!("(could not read log: {err})"),
    }
}

/// A client for `redis://addr`.
pub(crate) fn client_for(addr: SocketAddr) -> redis::Client {
    redis::Client::open(format!("redis://{addr}"))
        .expect("a redis:// URL for an IP address and port is always valid")
}

/// A connection whose connect and every response time out after [`COMMAND_TIMEOUT`].
pub(crate) async fn connect(
    addr: SocketAddr,
) -> Result<redis::aio::MultiplexedConnection, SandboxError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT));
    client_for(addr)
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|source| SandboxError::redis(addr, "connecting", source))
}

/// Sends one command on a fresh connection.
pub(crate) async fn query(addr: SocketAddr, cmd: &redis::Cmd) -> Result<Value, SandboxError> {
    let mut conn = connect(addr).await?;
    cmd.query_async(&mut conn)
        .await
        .map_err(|source| SandboxError::redis(addr, describe(cmd), source))
}

/// `INFO <section>` as fields.
pub(crate) async fn info_fields(
    addr: SocketAddr,
    section: &str,
) -> Result<HashMap<String, String>, SandboxError> {
    let value = query(addr, redis::cmd("INFO").arg(section)).await?;
    let text = reply::as_string(&value).ok_or_else(|| SandboxError::UnexpectedReply {
        addr,
        command: format!("INFO {section}"),
        reply: format!("{value:?}"),
    })?;
    Ok(reply::parse_info(&text))
}

/// `ROLE`, parsed.
pub(crate) async fn role_of(addr: SocketAddr) -> Result<Role, SandboxError> {
    let value = query(addr, &redis::cmd("ROLE")).await?;
    reply::parse_role(&value).ok_or_else(|| SandboxError::UnexpectedReply {
        addr,
        command: "ROLE".into(),
        reply: format!("{value:?}"),
    })
}

/// A command's words, for error messages.
fn describe(cmd: &redis::Cmd) -> String {
    cmd.args_iter()
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            _ => "<arg>".into(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The process controls shared by [`RedisNode`] and [`SentinelNode`].
macro_rules! process_controls {
    () => {
        /// Always `127.0.0.1:port`.
        pub fn addr(&self) -> SocketAddr {
            self.process.addr()
        }

        /// The port, kept across restarts.
        pub fn port(&self) -> u16 {
            self.process.port()
        }

        /// The PID of the running process; `None` once killed or exited.
        pub fn pid(&self) -> Option<u32> {
            self.process.pid()
        }

        /// The process's own directory (config, log, data).
        pub fn dir(&self) -> &Path {
            self.process.dir()
        }

        /// The config file it starts from (Redis or Sentinel may rewrite it).
        pub fn config_path(&self) -> &Path {
            self.process.config_path()
        }

        /// Where its stdout and stderr go.
        pub fn log_path(&self) -> &Path {
            self.process.log_path()
        }

        /// A name for logs and errors, e.g. `redis node 1`.
        pub fn name(&self) -> &str {
            self.process.name()
        }

        /// Freezes the process (`SIGSTOP`): it keeps its sockets but answers nothing.
        pub fn pause(&self) -> Result<(), SandboxError> {
            self.process.signal(Signal::SIGSTOP)
        }

        /// Thaws a paused process (`SIGCONT`).
        pub fn resume(&self) -> Result<(), SandboxError> {
            self.process.signal(Signal::SIGCONT)
        }

        /// `SIGKILL` and reap; a no-op when it is not running.
        pub fn kill(&self) -> Result<(), SandboxError> {
            self.process.kill()
        }

        /// Kills it if running, starts it again with the same port, config file and
        /// directory, and waits until it answers `PING`.
        pub async fn restart(&self) -> Result<(), SandboxError> {
            self.process.restart().await
        }

        /// A client for `redis://127.0.0.1:port`.
        pub fn client(&self) -> redis::Client {
            client_for(self.addr())
        }

        /// A connection with 1 s connect and response timeouts, so a paused process fails
        /// fast instead of hanging the caller.
        pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, SandboxError> {
            connect(self.addr()).await
        }

        /// `INFO <section>` as `field -> value`.
        pub async fn info(&self, section: &str) -> Result<HashMap<String, String>, SandboxError> {
            info_fields(self.addr(), section).await
        }
    };
}

/// A `redis-server` process owned by the sandbox; killed when dropped.
#[derive(Debug)]
pub struct RedisNode {
    process: Process,
}

impl RedisNode {
    pub(crate) fn new(process: Process) -> Self {
        Self { process }
    }

    process_controls!();

    /// The first element of `ROLE`: `master` or `slave`.
    pub async fn role(&self) -> Result<String, SandboxError> {
        Ok(role_of(self.addr()).await?.name().to_string())
    }
}

/// A Sentinel process owned by the sandbox; killed when dropped.
#[derive(Debug)]
pub struct SentinelNode {
    process: Process,
}

impl SentinelNode {
    pub(crate) fn new(process: Process) -> Self {
        Self { process }
    }

    process_controls!();

    /// `SENTINEL MASTER <name>` as `field -> value` (`num-slaves`, `flags`, ...).
    pub async fn master_info(&self, name: &str) -> Result<HashMap<String, String>, SandboxError> {
        let addr = self.addr();
        let value = query(addr, redis::cmd("SENTINEL").arg("MASTER").arg(name)).await?;
        reply::as_map(&value).ok_or_else(|| SandboxError::UnexpectedReply {
            addr,
            command: format!("SENTINEL MASTER {name}"),
            reply: format!("{value:?}"),
        })
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME <name>`; `None` when it knows no such master.
    pub async fn master_addr(&self, name: &str) -> Result<Option<SocketAddr>, SandboxError> {
        master_addr_of(self.addr(), name).await
    }
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME` against the Sentinel at `addr`.
pub(crate) async fn master_addr_of(
    addr: SocketAddr,
    name: &str,
) -> Result<Option<SocketAddr>, SandboxError> {
    let value = query(
        addr,
        redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(name),
    )
    .await?;
    let unexpected = || SandboxError::UnexpectedReply {
        addr,
        command: format!("SENTINEL GET-MASTER-ADDR-BY-NAME {name}"),
        reply: format!("{value:?}"),
    };
    match &value {
        Value::Nil => Ok(None),
        Value::Array(items) if items.len() == 2 => {
            let ip = reply::as_string(&items[0]).and_then(|ip| ip.parse().ok());
            let port = reply::as_string(&items[1]).and_then(|port| port.parse().ok());
            match (ip, port) {
                (Some(ip), Some(port)) => Ok(Some(SocketAddr::new(ip, port))),
                _ => Err(unexpected()),
            }
        }
        _ => Err(unexpected()),
    }
}
