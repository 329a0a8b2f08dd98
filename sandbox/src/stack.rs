//! The whole local stack in one process: a [`Topology`] of real Redis and Sentinel
//! processes, the control plane and any number of proxies running in-process (the same
//! `bind` + `run` code their binaries call), each with its own shutdown token so that tests
//! can stop and restart one piece.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pivot_control_plane::grpc::ProxyRegistry;
use pivot_control_plane::{
    Admin, BackendAuth, BackendAuthSpec, CommandRule, ControlPlane, ProxyUserSpec, ReadPolicy,
    ReadPolicySpec, ServiceSetting, ServiceSpec, WriteAck,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Topology, TopologyOptions};

/// The admin API token of a stack whose options name none: the sandbox is a local test
/// and development stack, so a fixed, well-known token is a convenience, not a secret.
pub const DEFAULT_ADMIN_TOKEN: &str = "pvt_sandbox-admin-token-not-a-secret";

/// What to start.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The Redis group and its Sentinels.
    pub topology: TopologyOptions,
    /// Control plane data directory (SQLite); `None`: a temporary one.
    pub data_dir: Option<PathBuf>,
    /// Control plane HTTP listener.
    pub http_listen: SocketAddr,
    /// Control plane gRPC listener.
    pub grpc_listen: SocketAddr,
    /// One proxy per entry: (client listener, admin listener).
    pub proxies: Vec<(SocketAddr, SocketAddr)>,
    /// Read policy of the service (`None`: the control plane's default).
    pub read_policy: Option<ReadPolicy>,
    /// Write acknowledgement of the service (`None`: the control plane's default).
    pub write_ack: Option<WriteAck>,
    /// Credentials the proxies use for the Redis nodes (configure the matching ACL user
    /// with `topology.extra_redis_config`).
    pub backend_auth: Option<BackendAuth>,
    /// Proxy users of the service: (name, password).
    pub proxy_users: Vec<(String, String)>,
    /// Command rules of the service.
    pub rules: Vec<CommandRule>,
    /// Admin token of the REST API (`--admin-token`); `None`: [`DEFAULT_ADMIN_TOKEN`].
    pub admin_token: Option<String>,
}

impl Default for StackOptions {
    /// Ephemeral loopback ports everywhere, one proxy, temporary data dir.
    fn default() -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        StackOptions {
            topology: TopologyOptions::default(),
            data_dir: None,
            http_listen: any,
            grpc_listen: any,
            proxies: vec![(any, any)],
            read_policy: None,
            write_ack: None,
            backend_auth: None,
            proxy_users: Vec::new(),
            rules: Vec::new(),
            admin_token: None,
        }
    }
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlaneHandle {
    /// HTTP address (API, metrics, page).
    pub http_addr: SocketAddr,
    /// gRPC address.
    pub grpc_addr: SocketAddr,
    /// Its identity (its store's), announced in every config update.
    pub control_plane_id: String,
    /// Configuration changes (policy, rules, users), published to the proxies live.
    pub admin: Admin,
    /// The proxies it has seen and their last status reports.
    pub registry: std::sync::Arc<ProxyRegistry>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), pivot_control_plane::Error>>,
}

impl ControlPlaneHandle {
    /// Stops it and waits until it has drained.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await.context("control plane task")??;
        Ok(())
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct ProxyHandle {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Admin HTTP address.
    pub admin_addr: SocketAddr,
    /// Config version applied by the proxy.
    pub applied: watch::Receiver<u64>,
    /// The proxy's shared state (routing table, metrics).
    pub shared: std::sync::Arc<pivot_proxy::server::Shared>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), pivot_proxy::Error>>,
}

impl ProxyHandle {
    /// A redis-rs client for this proxy.
    pub fn client(&self) -> redis::Client {
        // A loopback socket address always makes a valid URL.
        redis::Client::open(format!("redis://{}/", self.addr)).expect("valid redis URL")
    }

    /// Waits until the proxy has applied a version greater than `after`; returns it.
    pub async fn wait_for_version_above(&mut self, after: u64, timeout: Duration) -> Result<u64> {
        let outcome = {
            let wait = self.applied.wait_for(|v| *v > after);
            tokio::time::timeout(timeout, wait)
                .await
                .map(|r| r.map(|v| *v))
        };
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => bail!("proxy stopped"),
            Err(_) => bail!(
                "proxy did not apply a version above {after} within {timeout:?} (has {})",
                *self.applied.borrow()
            ),
        }
    }

    /// Waits until the proxy reports ready (a config with a master applied and the command
    /// table loaded), polling its state every 10 ms.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let table = self.shared.table.load();
            if table.master.is_some() && !self.shared.commands.load().is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "proxy {} not ready within {timeout:?} (version {}, master {:?}, {} commands known)",
                    self.addr,
                    table.version,
                    table.master.as_ref().map(ToString::to_string),
                    self.shared.commands.load().len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts its shutdown (what SIGTERM does) without waiting for it; [`ProxyHandle::stop`]
    /// waits.
    pub fn begin_stop(&self) {
        self.shutdown.cancel();
    }

    /// Stops it and waits until it has drained.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await.context("proxy task")??;
        Ok(())
    }
}

/// Everything, running.
#[derive(Debug)]
pub struct Stack {
    /// Redis and Sentinel processes (killed on drop).
    pub topology: Topology,
    /// The control plane, unless stopped.
    pub control_plane: Option<ControlPlaneHandle>,
    /// The proxies.
    pub proxies: Vec<ProxyHandle>,
    options: StackOptions,
    data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Stack {
    /// Starts the topology, then the control plane, then the proxies, and waits until every
    /// proxy has a config with a master.
    pub async fn start(options: StackOptions) -> Result<Stack> {
        let topology = Topology::start(options.topology.clone()).await?;
        let (data_dir, temp) = match &options.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::tempdir().context("temporary data dir")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let mut stack = Stack {
            topology,
            control_plane: None,
            proxies: Vec::new(),
            options,
            data_dir,
            _temp: temp,
        };
        stack.start_control_plane().await?;
        let grpc = stack
            .control_plane
            .as_ref()
            .map(|c| c.grpc_addr)
            .context("control plane not running")?;
        for (listen, admin) in stack.options.proxies.clone() {
            let p = start_proxy(stack.topology.master_name(), grpc, listen, admin).await?;
            stack.proxies.push(p);
        }
        for p in &stack.proxies {
            p.wait_ready(Duration::from_secs(20)).await?;
        }
        Ok(stack)
    }

    /// Starts (or restarts) the control plane on the configured or previously bound
    /// addresses, with the same data directory.
    pub async fn start_control_plane(&mut self) -> Result<()> {
        if self.control_plane.is_some() {
            bail!("the control plane is already running");
        }
        let handle = spawn_control_plane(self.control_plane_config()?).await?;
        // A restart reuses the same ports, so that proxies find it again.
        self.options.http_listen = handle.http_addr;
        self.options.grpc_listen = handle.grpc_addr;
        self.control_plane = Some(handle);
        Ok(())
    }

    /// The configuration the stack's control plane runs with: the service on the stack's
    /// Sentinels with the options' policy and credentials, its data directory and
    /// addresses. Changed (another data directory, port 0, tokens, TLS) and given to
    /// [`spawn_control_plane`], it starts another control plane on the same Sentinels.
    pub fn control_plane_config(&self) -> Result<pivot_control_plane::Config> {
        let mut config = pivot_control_plane::Config::with_data_dir(&self.data_dir);
        config.http_listen = self.options.http_listen;
        config.grpc_listen = self.options.grpc_listen;
        config.services = vec![ServiceSpec {
            name: self.topology.master_name().to_string(),
            sentinels: self
                .topology
                .sentinel_addrs()
                .iter()
                .map(|a| pivot_control_plane::topology::NodeAddr::new(a.ip().to_string(), a.port()))
                .collect(),
        }];
        config.read_policies = self
            .options
            .read_policy
            .map(|policy| ReadPolicySpec {
                service: self.topology.master_name().to_string(),
                value: policy,
            })
            .into_iter()
            .collect();
        config.write_ack = self
            .options
            .write_ack
            .map(|value| ServiceSetting {
                service: self.topology.master_name().to_string(),
                value,
            })
            .into_iter()
            .collect();
        config.backend_auth = self
            .options
            .backend_auth
            .clone()
            .map(|auth| BackendAuthSpec {
                service: self.topology.master_name().to_string(),
                auth,
            })
            .into_iter()
            .collect();
        config.rules = self
            .options
            .rules
            .iter()
            .map(|r| ServiceSetting {
                service: self.topology.master_name().to_string(),
                value: r.clone(),
            })
            .collect();
        config.proxy_users = self
            .options
            .proxy_users
            .iter()
            .map(|(user, password)| ProxyUserSpec {
                service: self.topology.master_name().to_string(),
                user: user.clone(),
                password: password.clone(),
            })
            .collect();
        config.admin_token = Some(
            self.admin_token()
                .parse()
                .map_err(|e: String| anyhow::anyhow!("admin token: {e}"))?,
        );
        Ok(config)
    }

    /// Stops the control plane (the proxies keep running).
    pub async fn stop_control_plane(&mut self) -> Result<()> {
        match self.control_plane.take() {
            Some(cp) => cp.stop().await,
            None => bail!("the control plane is not running"),
        }
    }

    /// Stops proxy `index` and starts a new one on the same client and admin addresses
    /// (clients reconnect to the address they know), then waits until it is ready.
    pub async fn restart_proxy(&mut self, index: usize, ready_timeout: Duration) -> Result<()> {
        if index >= self.proxies.len() {
            bail!("no proxy {index} (there are {})", self.proxies.len());
        }
        let old = self.proxies.remove(index);
        let (listen, admin) = (old.addr, old.admin_addr);
        old.stop().await?;
        // The control plane's last bound address, even while it is stopped.
        let grpc = self.options.grpc_listen;
        let proxy = start_proxy(self.topology.master_name(), grpc, listen, admin).await?;
        self.proxies.insert(index, proxy);
        self.proxies[index].wait_ready(ready_timeout).await
    }

    /// The control plane's data directory (SQLite store).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// The running control plane's configuration handle.
    pub fn admin(&self) -> Result<Admin> {
        Ok(self
            .control_plane
            .as_ref()
            .context("control plane not running")?
            .admin
            .clone())
    }

    /// The REST API's admin token (`Authorization: Bearer <token>`).
    pub fn admin_token(&self) -> &str {
        self.options
            .admin_token
            .as_deref()
            .unwrap_or(DEFAULT_ADMIN_TOKEN)
    }

    /// Control plane HTTP base URL.
    pub fn http_url(&self) -> Result<String> {
        let cp = self
            .control_plane
            .as_ref()
            .context("control plane not running")?;
        Ok(format!("http://{}", cp.http_addr))
    }

    /// The running control plane's registry of proxies.
    pub fn registry(&self) -> Result<std::sync::Arc<ProxyRegistry>> {
        Ok(self
            .control_plane
            .as_ref()
            .context("control plane not running")?
            .registry
            .clone())
    }

    /// Stops proxies, then the control plane; the processes die when `self` drops.
    pub async fn shutdown(mut self) -> Result<()> {
        for p in self.proxies.drain(..) {
            p.stop().await?;
        }
        if let Some(cp) = self.control_plane.take() {
            cp.stop().await?;
        }
        Ok(())
    }
}

/// Binds and runs a control plane with `config` in this process. The stack does not track
/// it: the caller stops it (or it stops when dropped with the runtime).
pub async fn spawn_control_plane(
    config: pivot_control_plane::Config,
) -> Result<ControlPlaneHandle> {
    let cp = ControlPlane::bind(config).await?;
    let shutdown = CancellationToken::new();
    Ok(ControlPlaneHandle {
        http_addr: cp.http_addr(),
        grpc_addr: cp.grpc_addr(),
        control_plane_id: cp.control_plane_id().to_string(),
        admin: cp.admin(),
        registry: cp.registry(),
        shutdown: shutdown.clone(),
        task: tokio::spawn(cp.run(shutdown)),
    })
}

/// Starts one proxy for `service` against the control plane at `grpc`.
pub async fn start_proxy(
    service: &str,
    grpc: SocketAddr,
    listen: SocketAddr,
    admin: SocketAddr,
) -> Result<ProxyHandle> {
    let mut config = pivot_proxy::Config::for_service(service, &format!("http://{grpc}"));
    config.listen = listen;
    config.admin_listen = admin;
    start_proxy_with(config).await
}

/// Starts one proxy with a full configuration (limits, timeouts, ...).
pub async fn start_proxy_with(config: pivot_proxy::Config) -> Result<ProxyHandle> {
    let proxy = pivot_proxy::Proxy::bind(config).await?;
    let shutdown = CancellationToken::new();
    Ok(ProxyHandle {
        addr: proxy.local_addr(),
        admin_addr: proxy.admin_addr(),
        applied: proxy.applied_version(),
        shared: proxy.shared(),
        shutdown: shutdown.clone(),
        task: tokio::spawn(proxy.run(shutdown)),
    })
}
