//! The proxy process: listeners, worker threads, and the state they share.
//!
//! Data path: `workers` OS threads, each a single-threaded tokio runtime that accepts on its
//! own clone of the client listener and owns its own backend connections (one per node), so
//! the hot path shares nothing across cores but the routing snapshot (an `ArcSwap`, read once
//! per batch) and atomic counters. Control path (config stream, command table, admin HTTP):
//! the runtime that calls [`Proxy::run`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::backend::{BackendOptions, Pool};
use crate::command::CommandTable;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::routing::{Credentials, NodeAddr, RoutingTable};
use crate::{Error, admin, config_client, connection, follower};

/// Limits applied to every client connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request frame.
    pub max_request_bytes: usize,
    /// Requests in flight per client.
    pub max_pipeline: usize,
    /// Close idle clients after this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// How long a request for the master waits for a usable one before `-TRYAGAIN`.
    pub failover_hold: Duration,
    /// A master whose oldest request is unanswered this long gets no new requests.
    pub backend_stall: Duration,
    /// With `write_ack = replicas(N)`: how long a write waits for its replicas.
    pub write_ack_timeout: Duration,
    /// TCP keepalive idle time of client connections (zero: off).
    pub client_tcp_keepalive: Duration,
}

/// State shared by every worker and the control path.
#[derive(Debug)]
pub struct Shared {
    /// The service this proxy serves.
    pub service: String,
    /// This proxy's id (`--proxy-id`), as the control plane knows it.
    pub proxy_id: String,
    /// When the proxy started.
    pub started: std::time::Instant,
    /// The routing snapshot requests are routed by: `base` minus the replicas this proxy
    /// ejected. Swapped whole (no lock on the hot path).
    pub table: ArcSwap<RoutingTable>,
    /// The last table from the control plane.
    pub base: ArcSwap<RoutingTable>,
    /// Replicas taken out of the read pool after failed reads, until a probe finds them
    /// answering again.
    pub ejected: std::sync::Mutex<HashMap<NodeAddr, Ejection>>,
    /// Command classification from the master's `COMMAND`.
    pub commands: ArcSwap<CommandTable>,
    /// Version of the applied table; workers watch it to retire connections.
    pub applied: watch::Sender<u64>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Client limits.
    pub limits: Limits,
    /// Shutting down: `/readyz` answers 503 while the proxy still serves for
    /// `--shutdown-delay`, and the control plane is told at once.
    pub draining: watch::Sender<bool>,
    /// Source of `CLIENT ID`s.
    pub next_client_id: AtomicU64,
    /// Round-robin cursor for reads.
    pub rr: AtomicUsize,
    /// The master's `databases` setting (SELECT's bound), 16 until read.
    pub databases: AtomicU32,
    /// The master's `redis_version`, reported in `HELLO`.
    pub redis_version: ArcSwap<String>,
    /// Every client connection (`CLIENT LIST`/`KILL`, `--max-clients`).
    pub clients: crate::clients::Registry,
}

/// A replica out of the read pool.
#[derive(Debug, Clone, Copy)]
pub struct Ejection {
    /// How long until the next probe (doubles while it fails, up to 30 s).
    pub backoff: Duration,
}

/// First and longest time a replica stays ejected between probes.
const EJECT_FIRST: Duration = Duration::from_secs(1);
const EJECT_MAX: Duration = Duration::from_secs(30);

fn lock_ejected(shared: &Shared) -> std::sync::MutexGuard<'_, HashMap<NodeAddr, Ejection>> {
    shared
        .ejected
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Installs a table from the control plane: routing uses it minus the ejected replicas.
pub fn install(shared: &Shared, table: Arc<RoutingTable>) {
    let ejected = lock_ejected(shared);
    shared.base.store(table);
    publish(shared, &ejected);
}

/// Recomputes the table requests are routed by from `base` and the ejections. Called with
/// the ejections' lock held, which serialises every store of `table` but the first.
fn publish(shared: &Shared, ejected: &HashMap<NodeAddr, Ejection>) {
    let base = shared.base.load_full();
    let generation = shared.table.load().generation + 1;
    let mut t = (*base).clone();
    t.readable.retain(|a| !ejected.contains_key(a));
    t.generation = generation;
    shared.table.store(Arc::new(t));
}

/// Takes `addr` out of the read pool (if it is a replica there) after a failed read, and
/// starts probing it; a probe that gets an answer puts it back.
pub fn eject(shared: &Arc<Shared>, addr: &NodeAddr) {
    if !shared.table.load().readable.contains(addr) {
        return;
    }
    {
        let mut ejected = lock_ejected(shared);
        if ejected.contains_key(addr) {
            return;
        }
        ejected.insert(
            addr.clone(),
            Ejection {
                backoff: EJECT_FIRST,
            },
        );
        publish(shared, &ejected);
    }
    shared.metrics.ejections.inc();
    tracing::warn!(replica = %addr, "replica ejected from the read pool after a failed read");
    let shared = shared.clone();
    let addr = addr.clone();
    tokio::spawn(async move {
        loop {
            let Some(wait) = lock_ejected(&shared).get(&addr).map(|e| e.backoff) else {
                return;
            };
            tokio::time::sleep(wait).await;
            // A node the control plane no longer lists needs no probe.
            let listed = shared.base.load().replicas.iter().any(|r| r.addr == addr);
            if !listed || crate::backend::answers_probe(&addr, Duration::from_millis(500)).await {
                {
                    let mut ejected = lock_ejected(&shared);
                    ejected.remove(&addr);
                    publish(&shared, &ejected);
                }
                if listed {
                    shared.metrics.readmissions.inc();
                    tracing::info!(replica = %addr, "replica back in the read pool");
                }
                return;
            }
            if let Some(e) = lock_ejected(&shared).get_mut(&addr) {
                e.backoff = (e.backoff * 2).min(EJECT_MAX);
            }
        }
    });
}

/// One worker thread's state.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) shared: Arc<Shared>,
    pub(crate) pool: Pool,
    /// `write_ack = replicas(N)` rounds.
    pub(crate) acker: crate::ack::Acker,
}

/// A proxy with its listeners bound, ready to [`run`](Proxy::run).
#[derive(Debug)]
pub struct Proxy {
    config: Config,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    admin: TcpListener,
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    cache: Option<Arc<crate::cache::Cache>>,
    upstreams: config_client::Upstreams,
}

impl Proxy {
    /// Validates the config and binds both listeners. A busy address fails with an error
    /// naming the flag that moves it.
    pub async fn bind(config: Config) -> Result<Proxy, Error> {
        config.validate().map_err(Error::Config)?;
        // Certificates and keys are read before anything binds.
        let upstreams = config_client::Upstreams::from_config(&config).map_err(Error::Config)?;
        let listener =
            bind_listener(config.listen, config.tcp_backlog).map_err(|e| Error::Bind {
                flag: "--listen",
                addr: config.listen,
                source: e,
            })?;
        let local_addr = listener.local_addr().map_err(Error::Io)?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|e| Error::Bind {
                flag: "--admin-listen",
                addr: config.admin_listen,
                source: e,
            })?;
        let admin_addr = admin.local_addr().map_err(Error::Io)?;
        let cache = match &config.cache_dir {
            Some(dir) => Some(Arc::new(
                crate::cache::Cache::open(dir, &config.service).map_err(Error::Config)?,
            )),
            None => None,
        };
        let shared = Arc::new(Shared {
            service: config.service.clone(),
            proxy_id: config.proxy_id.clone().unwrap_or_else(default_proxy_id),
            started: std::time::Instant::now(),
            table: ArcSwap::from_pointee(RoutingTable::empty(&config.service)),
            base: ArcSwap::from_pointee(RoutingTable::empty(&config.service)),
            ejected: std::sync::Mutex::new(HashMap::new()),
            commands: ArcSwap::from_pointee(CommandTable::empty()),
            applied: watch::Sender::new(0),
            metrics: Arc::new(Metrics::new()),
            limits: Limits {
                max_request_bytes: config.max_request_bytes,
                max_pipeline: config.max_pipeline,
                idle_timeout: (!config.client_idle_timeout.is_zero())
                    .then_some(config.client_idle_timeout),
                failover_hold: config.failover_hold,
                backend_stall: config.backend_stall,
                write_ack_timeout: config.write_ack_timeout,
                client_tcp_keepalive: config.client_tcp_keepalive,
            },
            draining: watch::Sender::new(false),
            next_client_id: AtomicU64::new(1),
            rr: AtomicUsize::new(0),
            databases: AtomicU32::new(16),
            redis_version: ArcSwap::from_pointee("7.0.0".to_string()),
            clients: crate::clients::Registry::new(config.max_clients, config.client_output_limit),
        });
        Ok(Proxy {
            config,
            shared,
            listener,
            admin,
            local_addr,
            admin_addr,
            cache,
            upstreams,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the admin HTTP listener is.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The config version applied, updated on every change.
    pub fn applied_version(&self) -> watch::Receiver<u64> {
        self.shared.applied.subscribe()
    }

    /// Shared state (routing table, metrics), for tests and embedding.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `shutdown` is cancelled; then reports not ready and serves on for
    /// `--shutdown-delay`, stops accepting, lets client connections finish what they sent
    /// (bounded by `--shutdown-grace`) and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        // What the tasks below stop on: `shutdown` once the delay is over, or at once when
        // a worker cannot start.
        let stop = CancellationToken::new();
        let Proxy {
            config,
            shared,
            listener,
            admin,
            local_addr,
            admin_addr,
            cache,
            upstreams,
        } = self;
        info!(%local_addr, %admin_addr, service = %config.service, workers = config.workers,
            control_planes = %upstreams.urls().collect::<Vec<_>>().join(","), "pivot-proxy listening");
        let proxy_id = shared.proxy_id.clone();
        let tasks = TaskTracker::new();
        let feed = Arc::new(config_client::Feed::new());
        tasks.spawn(
            config_client::run(
                shared.clone(),
                config_client::Settings {
                    upstreams,
                    proxy_id,
                    listen_addr: local_addr.to_string(),
                    feed: feed.clone(),
                    cache: cache.clone(),
                    status_interval: config.status_interval,
                },
                stop.clone(),
            )
            .instrument(info_span!("config_client")),
        );
        tasks.spawn(
            follower::run(
                shared.clone(),
                feed,
                cache,
                follower::Settings {
                    after: config.sentinel_follow_after,
                    poll_interval: config.sentinel_poll_interval,
                },
                stop.clone(),
            )
            .instrument(info_span!("sentinel_follower")),
        );
        tasks.spawn(
            refresh_commands(shared.clone(), stop.clone()).instrument(info_span!("commands")),
        );
        tasks.spawn(admin::serve(admin, shared.clone(), stop.clone()));

        let backend_opts = BackendOptions {
            connect_timeout: config.backend_connect_timeout,
            drain_grace: config.backend_drain_grace,
            stall: config.backend_stall,
            max_reply_bytes: config.max_reply_bytes,
            max_dedicated: config.max_dedicated_connections,
            ..BackendOptions::default()
        };
        let mut threads = Vec::new();
        for i in 0..config.workers {
            let l = listener.try_clone().map_err(Error::Io)?;
            let shared = shared.clone();
            let stop = stop.clone();
            let opts = backend_opts.clone();
            let grace = config.shutdown_grace;
            let t = std::thread::Builder::new()
                .name(format!("pivot-worker-{i}"))
                .spawn(move || worker_thread(i, l, shared, opts, stop, grace))
                .map_err(Error::Io)?;
            threads.push(t);
        }
        drop(listener);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = stop.cancelled() => {}
        }
        shared.draining.send_replace(true);
        let delay = config.shutdown_delay;
        if !stop.is_cancelled() && !delay.is_zero() {
            info!(
                ?delay,
                "shutting down: not ready, still serving for --shutdown-delay"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => {}
            }
        }
        stop.cancel();
        info!("shutting down");
        tasks.close();
        // Joining blocks: do it off the async threads.
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                if t.join().is_err() {
                    error!("a worker thread panicked");
                }
            }
        });
        let _ = joined.await;
        let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
        Ok(())
    }
}

/// Binds and runs a proxy: what `main` calls.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    Proxy::bind(config).await?.run(shutdown).await
}

/// The client listener, with `backlog` (as Redis's `tcp-backlog`; the kernel caps it at
/// `net.core.somaxconn`): a burst of connections larger than the accept queue would leave
/// clients whose handshake the kernel dropped, some half-open.
fn bind_listener(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// TCP keepalive on a client connection (as Redis's `tcp-keepalive`), so that a peer that
/// vanished without a FIN (a crashed host, a dropped handshake) is found and closed.
pub(crate) fn set_keepalive(stream: &tokio::net::TcpStream, idle: Duration) {
    if idle.is_zero() {
        return;
    }
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(idle / 3)
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

fn default_proxy_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "proxy".into());
    // The random part tells apart proxies in one process (tests, the sandbox) and a
    // restarted proxy that got the same PID.
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

fn worker_thread(
    index: usize,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    opts: BackendOptions,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start worker runtime");
            shutdown.cancel();
            return;
        }
    };
    rt.block_on(
        async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    error!(error = %e, "cannot register listener");
                    shutdown.cancel();
                    return;
                }
            };
            let worker = Arc::new(Worker {
                pool: Pool::new(opts, shared.metrics.clone()),
                shared,
                acker: crate::ack::Acker::default(),
            });
            let tasks = TaskTracker::new();
            tasks.spawn(retire_on_change(worker.clone(), shutdown.clone()));
            let mut next_conn: u64 = 0;
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    a = listener.accept() => a,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        next_conn += 1;
                        // The connection logs at debug level only: without debug logging
                        // its span would be entered and left on every poll for nothing.
                        let span = if tracing::enabled!(
                            target: "pivot_proxy::connection",
                            tracing::Level::DEBUG
                        ) {
                            info_span!("client", %peer, conn = next_conn)
                        } else {
                            tracing::Span::none()
                        };
                        tasks.spawn(
                            connection::serve(stream, worker.clone(), shutdown.clone())
                                .instrument(span),
                        );
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            drop(listener);
            // Connections stop reading and finish what they have read (see `serve`).
            worker.shared.clients.stop_all();
            tasks.close();
            if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
                warn!("client connections still open after the shutdown grace period");
            }
        }
        .instrument(info_span!("worker", index)),
    );
}

/// Retires this worker's connections to nodes that lost the master role or left the table,
/// so that no request reaches a demoted master on an old connection (invariant I1).
async fn retire_on_change(worker: Arc<Worker>, shutdown: CancellationToken) {
    let mut applied = worker.shared.applied.subscribe();
    let mut prev = worker.shared.table.load_full();
    worker.pool.set_credentials(prev.backend_auth.clone());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = applied.changed() => if r.is_err() { return },
        }
        let next = worker.shared.table.load_full();
        worker.pool.set_credentials(next.backend_auth.clone());
        if let Some(old) = &prev.master
            && next.master.as_ref() != Some(old)
        {
            worker.pool.retire(old);
        }
        worker.pool.retain(|addr| {
            next.master.as_ref() == Some(addr) || next.replicas.iter().any(|r| &r.addr == addr)
        });
        prev = next;
    }
}

/// Keeps the command table in step with the master: loads `COMMAND` when a master is first
/// known and again whenever it changes (the new master may run another version).
async fn refresh_commands(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut applied = shared.applied.subscribe();
    let mut loaded_from = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let table = shared.table.load_full();
        let master = table.master.clone();
        if let Some(m) = master.as_ref().filter(|_| master != loaded_from) {
            match load_commands(&m.host, m.port, table.backend_auth.as_deref()).await {
                Ok((table, facts)) => {
                    info!(master = %m, commands = table.len(), databases = facts.databases, version = %facts.version, "command table loaded");
                    shared.databases.store(facts.databases, Ordering::Relaxed);
                    shared.redis_version.store(Arc::new(facts.version));
                    shared.commands.store(Arc::new(table));
                    loaded_from = master.clone();
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Err(e) => {
                    warn!(master = %m, error = %e, "cannot load the command table from the new master; retrying (the previous table, or none, stays in use)");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = applied.changed() => if r.is_err() { return },
        }
    }
}

/// What the proxy needs to know about the master besides its commands.
struct MasterFacts {
    databases: u32,
    version: String,
}

async fn load_commands(
    host: &str,
    port: u16,
    credentials: Option<&Credentials>,
) -> Result<(CommandTable, MasterFacts), String> {
    use redis::IntoConnectionInfo;
    let mut info = format!("redis://{host}:{port}/")
        .into_connection_info()
        .map_err(|e| e.to_string())?;
    if let Some(c) = credentials {
        let mut settings = info.redis_settings().clone().set_password(&c.password);
        if let Some(u) = &c.username {
            settings = settings.set_username(u);
        }
        info = info.set_redis_settings(settings);
    }
    let client = redis::Client::open(info).map_err(|e| e.to_string())?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map_err(|e| e.to_string())?;
    let reply: redis::Value = redis::cmd("COMMAND")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let table = CommandTable::from_command_reply(&reply)?;
    // CONFIG may be renamed or denied by ACLs: keep Redis's default then.
    let databases = redis::cmd("CONFIG")
        .arg("GET")
        .arg("databases")
        .query_async::<Vec<String>>(&mut conn)
        .await
        .ok()
        .and_then(|v| v.get(1).and_then(|n| n.parse().ok()))
        .unwrap_or(16);
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    Ok((table, MasterFacts { databases, version }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn client_sockets_get_keepalive_and_the_listener_a_backlog() {
        let std_listener = bind_listener("127.0.0.1:0".parse().unwrap(), 1024).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let listener = TcpListener::from_std(std_listener).unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        set_keepalive(&server_side, Duration::from_secs(300));
        let sock = socket2::SockRef::from(&server_side);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(300));
        // Zero turns it off (left as the OS default: off).
        let _c2 = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (s2, _) = listener.accept().await.unwrap();
        set_keepalive(&s2, Duration::ZERO);
        assert!(!socket2::SockRef::from(&s2).keepalive().unwrap());
    }
}
