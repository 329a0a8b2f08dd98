//! The processes load is sent to, besides Redis itself: `pivot-proxy` and the peers
//! (`haproxy`, `nutcracker`), each a child the bench owns, on 127.0.0.1 ephemeral ports.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::child::OwnedChild;
use crate::options::TargetKind;

/// Start attempts with fresh ports (another process may take a port between our probe and
/// the child's bind).
const START_ATTEMPTS: usize = 5;
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(10);
/// Environment variable naming the `pivot-proxy` binary to run.
pub const PROXY_BIN_ENV: &str = "PIVOT_PROXY_BIN";

/// A `pivot-proxy` child process, subscribed to the control plane.
#[derive(Debug)]
pub struct PivotProxy {
    child: OwnedChild,
    listen: SocketAddr,
    admin: SocketAddr,
    http: reqwest::Client,
}

/// How to start the proxy.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    /// The binary.
    pub binary: PathBuf,
    /// The service (Sentinel master name).
    pub service: String,
    /// The control plane's gRPC address.
    pub control_plane: SocketAddr,
    /// The proxy token the control plane accepts.
    pub token: String,
    /// `--workers`.
    pub workers: usize,
    /// `--max-clients`.
    pub max_clients: usize,
    /// Where its output goes.
    pub log_path: PathBuf,
}

/// The fields of the proxy's `/status` the bench reads.
#[derive(Debug, Deserialize)]
struct Status {
    version: u64,
}

impl PivotProxy {
    /// Starts the proxy and waits until it is ready (a config applied, the command table
    /// loaded).
    pub async fn start(spec: &ProxySpec, timeout: Duration) -> Result<PivotProxy> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .context("HTTP client")?;
        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            let (listen, admin) = (free_port()?, free_port()?);
            let mut command = Command::new(&spec.binary);
            command
                .arg("--service")
                .arg(&spec.service)
                .arg("--listen")
                .arg(listen.to_string())
                .arg("--admin-listen")
                .arg(admin.to_string())
                .arg("--control-plane")
                .arg(format!("http://{}", spec.control_plane))
                .arg("--workers")
                .arg(spec.workers.to_string())
                .arg("--max-clients")
                .arg(spec.max_clients.to_string())
                .env("PIVOT_CONTROL_PLANE_TOKEN", &spec.token)
                // Its log is for diagnosing a failed run, not a cost to measure.
                .env("RUST_LOG", "warn");
            let child = OwnedChild::spawn("pivot-proxy", command, &spec.log_path)?;
            let mut proxy = PivotProxy {
                child,
                listen,
                admin,
                http: http.clone(),
            };
            match proxy.wait_ready(timeout).await {
                Ok(()) => return Ok(proxy),
                Err(e) if proxy.child.exited()? => {
                    tracing::warn!(attempt, error = %e, "pivot-proxy start failed; retrying on other ports");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("pivot-proxy did not start")))
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let url = format!("http://{}/readyz", self.admin);
        let deadline = Instant::now() + timeout;
        loop {
            self.pid()?;
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "pivot-proxy was not ready within {timeout:?}; its output ends with:\n{}",
                    self.child.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the proxy runs config `version` or a later one (its admin `/status`).
    pub async fn wait_version(&mut self, version: u64, timeout: Duration) -> Result<()> {
        let url = format!("http://{}/status", self.admin);
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            self.pid()?;
            if let Ok(r) = self.http.get(&url).send().await
                && let Ok(status) = r.json::<Status>().await
            {
                if status.version >= version {
                    return Ok(());
                }
                last = Some(status.version);
            }
            if Instant::now() >= deadline {
                bail!(
                    "pivot-proxy did not apply config version {version} within {timeout:?} (it runs {last:?})"
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// Its PID; an error once it has exited.
    pub fn pid(&mut self) -> Result<u32> {
        self.child.pid()
    }
}

/// A peer proxy child process.
#[derive(Debug)]
pub struct Peer {
    kind: TargetKind,
    child: OwnedChild,
    listen: SocketAddr,
    version: String,
}

impl Peer {
    /// Starts `kind` (found at `binary`) in front of the Redis master at `master`, with
    /// room for `max_clients` client connections, its config and log in `dir`; waits until
    /// a `PING` through it is answered.
    pub async fn start(
        kind: TargetKind,
        binary: &Path,
        master: SocketAddr,
        max_clients: usize,
        dir: &Path,
        timeout: Duration,
    ) -> Result<Peer> {
        let version = peer_version(kind, binary)?;
        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            let listen = free_port()?;
            let command = match kind {
                TargetKind::Haproxy => haproxy_command(binary, listen, master, max_clients, dir)?,
                TargetKind::Nutcracker => {
                    nutcracker_command(binary, listen, free_port()?, master, dir)?
                }
                other => bail!("{} is not a peer", other.id()),
            };
            let child =
                OwnedChild::spawn(kind.id(), command, &dir.join(format!("{}.log", kind.id())))?;
            let mut peer = Peer {
                kind,
                child,
                listen,
                version: version.clone(),
            };
            match peer.wait_pong(timeout).await {
                Ok(()) => return Ok(peer),
                Err(e) if peer.child.exited()? => {
                    tracing::warn!(attempt, peer = kind.id(), error = %e, "start failed; retrying on another port");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("{} did not start", kind.id())))
    }

    /// Waits until a `PING` sent through the peer is answered `+PONG` (it forwards it to
    /// Redis), failing early if the peer exits.
    async fn wait_pong(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pid()?;
            if tokio::time::timeout(Duration::from_secs(1), ping(self.listen))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not answer PING within {timeout:?}; its output ends with:\n{}",
                    self.kind.id(),
                    self.child.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// Its PID; an error once it has exited.
    pub fn pid(&mut self) -> Result<u32> {
        self.child.pid()
    }

    /// What `-v` / `--version` says, e.g. `2.6.12`.
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// HAProxy in TCP mode, one thread, to the master, with timeouts long enough for idle
/// clients; in the foreground (`-db`) so that the PID is the one serving.
fn haproxy_command(
    binary: &Path,
    listen: SocketAddr,
    master: SocketAddr,
    max_clients: usize,
    dir: &Path,
) -> Result<Command> {
    let config = format!(
        "global\n    nbthread 1\n    maxconn {max_clients}\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\n\
         listen redis\n    bind {listen}\n    server master {master}\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    let mut command = Command::new(binary);
    command.arg("-db").arg("-f").arg(&path);
    Ok(command)
}

/// twemproxy: one pool in Redis mode whose only server is the master, one server
/// connection, its stats port on 127.0.0.1 too.
fn nutcracker_command(
    binary: &Path,
    listen: SocketAddr,
    stats: SocketAddr,
    master: SocketAddr,
    dir: &Path,
) -> Result<Command> {
    let config = format!(
        "bench:\n  listen: {listen}\n  redis: true\n  hash: fnv1a_64\n  distribution: ketama\n  \
         preconnect: true\n  server_connections: 1\n  auto_eject_hosts: false\n  timeout: 10000\n  \
         servers:\n    - {master}:1\n"
    );
    let path = dir.join("nutcracker.yml");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    let mut command = Command::new(binary);
    command
        .arg("-c")
        .arg(&path)
        .arg("-a")
        .arg(stats.ip().to_string())
        .arg("-s")
        .arg(stats.port().to_string())
        .arg("-p")
        .arg(dir.join("nutcracker.pid"))
        // Its log (default /var/log/nutcracker/) goes with its output.
        .arg("-o")
        .arg(dir.join("nutcracker.log"));
    Ok(command)
}

/// The version a peer binary reports.
fn peer_version(kind: TargetKind, binary: &Path) -> Result<String> {
    let flag = match kind {
        TargetKind::Nutcracker => "--version",
        _ => "-v",
    };
    let out = Command::new(binary)
        .arg(flag)
        .output()
        .with_context(|| format!("running {} {flag}", binary.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(version_in(&text).unwrap_or_else(|| "unknown version".into()))
}

/// The first word starting with a digit and containing a dot (`HAProxy version 2.6.12-1 ...`,
/// `This is nutcracker-0.5.0`, `Redis server v=7.0.15 ...`), without Debian's revision.
pub fn version_in(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || c == '-' || c == '=')
        .map(|w| w.trim_start_matches('v'))
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()) && w.contains('.'))
        .map(str::to_string)
}

/// Where a peer's binary is: on `PATH`, else in the `sbin` directories Debian installs
/// daemons into (not on a normal user's `PATH`).
pub fn find_peer(kind: TargetKind) -> Option<PathBuf> {
    let name = kind.id();
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Sends `PING` (RESP) on a new connection and expects `+PONG`.
pub async fn ping(addr: SocketAddr) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    stream
        .write_all(b"*1\r\n$4\r\nPING\r\n")
        .await
        .context("sending PING")?;
    let mut reply = [0u8; 7];
    stream
        .read_exact(&mut reply)
        .await
        .context("reading the reply to PING")?;
    if &reply != b"+PONG\r\n" {
        bail!(
            "{addr} answered PING with {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    Ok(stream)
}

/// A port the kernel just reported free on 127.0.0.1 (racy: starts retry).
pub fn free_port() -> Result<SocketAddr> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    l.local_addr().context("local address of a probe listener")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            version_in("HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/")
                .as_deref(),
            Some("2.6.12")
        );
        assert_eq!(
            version_in("This is nutcracker-0.5.0\n").as_deref(),
            Some("0.5.0")
        );
        assert_eq!(
            version_in("Redis server v=7.0.15 sha=00000000:0").as_deref(),
            Some("7.0.15")
        );
        assert_eq!(version_in("no digits"), None);
    }
}
