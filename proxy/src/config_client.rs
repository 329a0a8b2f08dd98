//! The config stream from the control plane (xDS-style, state of the world).
//!
//! One bidirectional gRPC stream: the proxy says `Hello`, the control plane sends the full
//! config of the service at once and again on every change; the proxy answers each update
//! with an ACK (applied) or a NACK with the reason (rejected; the last good table stays).
//! On the same stream the proxy reports its status (client connections, counters, held
//! requests, running version) right after `Hello` and then every `--status-interval`.
//! When the stream fails the proxy keeps serving with its last table and reconnects with
//! capped exponential backoff and jitter.
//!
//! The stream's state and the last config applied are published in the [`Feed`]: the
//! Sentinel follower (`follower`) takes over routing changes while the stream is down
//! (I6). With a cache (`cache`), every applied update is written to disk, and a proxy
//! whose first stream attempt fails starts from the cached one (I7).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pivot_proto::v1::{self, proxy_discovery_client::ProxyDiscoveryClient, proxy_message::Msg};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cache::Cache;
use crate::routing::RoutingTable;
use crate::server::Shared;

/// The config stream as the rest of the proxy sees it.
#[derive(Debug, Clone)]
pub struct StreamStatus {
    /// The stream to the control plane is open.
    pub connected: bool,
    /// A config arrived on the stream now open.
    pub received: bool,
    /// When `connected` last changed (or when the proxy started).
    pub since: Instant,
    /// The last config applied from the control plane (or loaded from the cache).
    pub last: Option<Arc<v1::ConfigUpdate>>,
    /// `last` came from the on-disk cache, not from this process's stream.
    pub from_cache: bool,
}

impl StreamStatus {
    /// The control plane is in charge: the stream is open and has delivered a config.
    pub fn live(&self) -> bool {
        self.connected && self.received
    }
}

/// What the config client shares with the Sentinel follower.
#[derive(Debug)]
pub struct Feed {
    /// Written by the config client only.
    pub status: watch::Sender<StreamStatus>,
    /// Held while a routing table is installed, so that the follower, which checks under
    /// it that the stream is still down and the table unchanged, never replaces a fresher
    /// table from the control plane.
    pub swap: Mutex<()>,
}

impl Feed {
    /// A feed for a proxy that has not heard from its control plane yet.
    pub fn new() -> Feed {
        Feed {
            status: watch::Sender::new(StreamStatus {
                connected: false,
                received: false,
                since: Instant::now(),
                last: None,
                from_cache: false,
            }),
            swap: Mutex::new(()),
        }
    }

    /// Takes the install lock (a panic while holding it leaves nothing half-done: the
    /// table swap is one store).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.swap.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_connected(&self, connected: bool) {
        self.status.send_modify(|s| {
            if s.connected != connected {
                s.connected = connected;
                s.since = Instant::now();
            }
            s.received = false;
        });
    }
}

impl Default for Feed {
    fn default() -> Self {
        Self::new()
    }
}

/// Who this proxy is and where the control plane is.
#[derive(Debug, Clone)]
pub struct Settings {
    /// gRPC endpoint URL.
    pub endpoint: String,
    /// Identity of this proxy.
    pub proxy_id: String,
    /// Client address, reported to the control plane.
    pub listen_addr: String,
    /// Stream state for the Sentinel follower.
    pub feed: Arc<Feed>,
    /// Where applied updates are kept on disk, if anywhere.
    pub cache: Option<Arc<Cache>>,
    /// How often to report status (`--status-interval`).
    pub status_interval: Duration,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `shutdown`: keeps a config stream open, reconnecting after every failure.
pub async fn run(shared: Arc<Shared>, settings: Settings, shutdown: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    let mut first = true;
    loop {
        let session = stream_once(&shared, &settings);
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session => r,
        };
        shared.metrics.control_plane_connected.set(0);
        settings.feed.set_connected(false);
        if std::mem::take(&mut first) && shared.table.load().version == 0 {
            start_from_cache(&shared, &settings).await;
        }
        match outcome {
            // The stream worked for a while: start the backoff over.
            Ok(true) => backoff = MIN_BACKOFF,
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, endpoint = %settings.endpoint, "config stream failed; serving with the last config")
            }
        }
        let jitter = rand::rng().random_range(0.8..1.2);
        let wait = backoff.mul_f64(jitter);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One stream's life. `Ok(true)` if at least one update was received before it ended.
async fn stream_once(shared: &Shared, settings: &Settings) -> Result<bool, String> {
    let channel = tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
        .map_err(|e| format!("invalid endpoint: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client = ProxyDiscoveryClient::new(channel);
    // Our messages: Hello, then one ACK/NACK per update and a status now and then; a few
    // slots are plenty. Closed when this function returns, which ends our half of the stream.
    let (tx, rx) = mpsc::channel(16);
    let hello = v1::ProxyMessage {
        msg: Some(Msg::Hello(v1::Hello {
            proxy_id: settings.proxy_id.clone(),
            listen_addr: settings.listen_addr.clone(),
            build_version: env!("CARGO_PKG_VERSION").to_string(),
            services: vec![shared.service.clone()],
            running_version: shared.table.load().config_version,
        })),
    };
    tx.send(hello)
        .await
        .map_err(|_| "stream closed".to_string())?;
    tx.send(status(shared, settings.status_interval))
        .await
        .map_err(|_| "stream closed".to_string())?;
    let mut updates = client
        .stream_config(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("subscribe: {e}"))?
        .into_inner();
    shared.metrics.control_plane_connected.set(1);
    settings.feed.set_connected(true);
    info!(endpoint = %settings.endpoint, "config stream open");
    let mut received = false;
    // Versions must grow within a stream; a new stream (perhaps from another control plane,
    // or one restored from a backup) is the authority for the whole state and may restart.
    let mut last_version = 0;
    let mut report = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.status_interval,
        settings.status_interval,
    );
    // After a stall (a slow ACK send), one report, then the regular period again.
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // `Streaming::message` keeps its state in `updates`: cancelling it loses nothing.
        let message = tokio::select! {
            m = updates.message() => m,
            _ = report.tick() => {
                // Never waits: when the control plane is not reading, a report is dropped
                // (the next one carries the same totals) rather than queued or blocking.
                match tx.try_send(status(shared, settings.status_interval)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        debug!("status report dropped: the stream is backed up");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return Ok(received),
                }
                continue;
            }
        };
        let update = match message {
            Ok(Some(u)) => u,
            Ok(None) if received => {
                warn!("config stream closed by the control plane");
                return Ok(true);
            }
            Ok(None) => return Err("closed by the control plane".into()),
            Err(status) => {
                let e = format!("{}: {}", status.code(), status.message());
                if received {
                    warn!(error = %e, "config stream ended");
                    return Ok(true);
                }
                return Err(e);
            }
        };
        received = true;
        let applied = {
            let _installing = settings.feed.lock();
            apply(shared, &update, last_version)
        };
        let mut keep = None;
        let answer = match applied {
            Ok(()) => {
                last_version = update.version;
                shared.metrics.config_acks.inc();
                let answer = Msg::Ack(v1::Ack {
                    version: update.version,
                    nonce: update.nonce.clone(),
                });
                shared.metrics.outage.cache_loaded.set(0);
                let update = Arc::new(update);
                settings.feed.status.send_modify(|s| {
                    s.received = true;
                    s.last = Some(update.clone());
                    s.from_cache = false;
                });
                keep = Some(update);
                answer
            }
            Err(reason) => {
                shared.metrics.config_nacks.inc();
                warn!(version = update.version, %reason, "config update rejected; keeping the last good config");
                Msg::Nack(v1::Nack {
                    version: update.version,
                    nonce: update.nonce.clone(),
                    reason,
                })
            }
        };
        if tx
            .send(v1::ProxyMessage { msg: Some(answer) })
            .await
            .is_err()
        {
            return Ok(true);
        }
        // After the ACK: the disk must not delay the control plane's view of this proxy.
        if let (Some(cache), Some(update)) = (&settings.cache, keep) {
            write_cache(shared, cache, (*update).clone()).await;
        }
    }
}

/// The proxy's status now, as reported on the config stream.
fn status(shared: &Shared, interval: Duration) -> v1::ProxyMessage {
    let totals = shared.metrics.totals();
    v1::ProxyMessage {
        msg: Some(Msg::Status(v1::Status {
            client_connections: totals.client_connections,
            commands_total: totals.commands,
            reads_total: totals.reads,
            writes_total: totals.writes,
            errors_total: totals.errors,
            held_requests: totals.held_requests,
            running_version: shared.table.load().config_version,
            uptime_ms: millis(shared.started.elapsed()),
            interval_ms: millis(interval),
        })),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Writes `update` to the cache; a failure is logged and counted, and changes nothing else
/// (the config is applied either way).
pub(crate) async fn write_cache(shared: &Shared, cache: &Arc<Cache>, update: v1::ConfigUpdate) {
    let version = update.version;
    match cache.store_async(update).await {
        Ok(()) => {
            shared.metrics.outage.cache_writes.inc();
            debug!(version, path = %cache.path().display(), "config cached");
        }
        Err(e) => {
            shared.metrics.outage.cache_write_errors.inc();
            warn!(version, error = %e, "cannot write the config cache; the next restart without a control plane cannot use it");
        }
    }
}

/// The first stream attempt failed before the proxy had any config: serve the cached one,
/// if there is a valid one.
async fn start_from_cache(shared: &Shared, settings: &Settings) {
    let Some(cache) = &settings.cache else { return };
    let update = match cache.load_async().await {
        Ok(Some(u)) => u,
        Ok(None) => {
            info!(path = %cache.path().display(), "control plane unreachable and no cached config yet");
            return;
        }
        Err(e) => {
            warn!(error = %e, "control plane unreachable and the cached config is unusable");
            return;
        }
    };
    let applied = {
        let _installing = settings.feed.lock();
        if shared.table.load().version != 0 {
            // The stream delivered meanwhile (not possible today: one task does both).
            return;
        }
        apply(shared, &update, 0)
    };
    match applied {
        Ok(()) => {
            shared.metrics.outage.cache_loaded.set(1);
            warn!(version = update.version, path = %cache.path().display(),
                "control plane unreachable: serving the cached config, and following the Sentinels");
            let update = Arc::new(update);
            settings.feed.status.send_modify(|s| {
                s.last = Some(update);
                s.from_cache = true;
            });
        }
        Err(e) => {
            warn!(error = %e, path = %cache.path().display(), "the cached config is invalid; ignoring it");
        }
    }
}

/// Validates an update and swaps the routing table. Nothing changes on error. `last_version`
/// is the last version applied on the same stream.
pub fn apply(shared: &Shared, update: &v1::ConfigUpdate, last_version: u64) -> Result<(), String> {
    if update.unknown_services.iter().any(|s| s == &shared.service) {
        return Err(format!(
            "service '{}' is not known to the control plane",
            shared.service
        ));
    }
    let svc = update
        .services
        .iter()
        .find(|s| s.name == shared.service)
        .ok_or_else(|| format!("update has no config for service '{}'", shared.service))?;
    let table = RoutingTable::from_proto(update.version, svc)?;
    if update.version <= last_version {
        return Err(format!(
            "version {} is not newer than version {} applied on this stream",
            update.version, last_version
        ));
    }
    if shared.table.load().master != table.master
        && table.master.is_some()
        && let Some(at) = svc
            .topology
            .as_ref()
            .and_then(|t| t.changed_at)
            .and_then(|t| std::time::SystemTime::try_from(t).ok())
        && let Ok(lag) = std::time::SystemTime::now().duration_since(at)
    {
        // How long after the control plane decided the proxy switched (the control
        // plane's clock: meaningful when clocks are synchronised, as on one host).
        shared
            .metrics
            .master_switch_seconds
            .observe(lag.as_secs_f64());
    }
    install(shared, table, "control plane");
    Ok(())
}

/// Swaps the routing table (the caller holds [`Feed::lock`]): logs a master change,
/// disconnects clients of deleted users, and wakes the workers (which retire connections to
/// nodes that left the table) and held requests. `source` names where the table came from.
pub(crate) fn install(shared: &Shared, table: RoutingTable, source: &'static str) {
    let current = shared.table.load();
    if current.master != table.master {
        info!(
            old = ?current.master.as_ref().map(ToString::to_string),
            new = ?table.master.as_ref().map(ToString::to_string),
            version = table.version,
            source,
            "master changed"
        );
    }
    debug!(
        version = table.version,
        replicas = table.readable.len(),
        source,
        "config applied"
    );
    let version = table.config_version;
    let users_changed = current.users != table.users;
    let table = Arc::new(table);
    crate::server::install(shared, table.clone());
    if users_changed {
        // As Redis does for a deleted user's clients: they are disconnected.
        let dropped = shared.clients.kill_users_not_in(&table.users);
        if dropped > 0 {
            info!(
                clients = dropped,
                "disconnected the clients of deleted users"
            );
        }
    }
    shared.metrics.config_version.set(version as i64);
    // The control plane's version, also for a table the proxy changed on its own (then it
    // is the same as before): receivers see a change either way.
    shared.applied.send_replace(version);
}
