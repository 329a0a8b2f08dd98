//! The config stream from the control plane (xDS-style, state of the world).
//!
//! One bidirectional gRPC stream: the proxy says `Hello`, the control plane sends the full
//! config of the service at once and again on every change; the proxy answers each update
//! with an ACK (applied) or a NACK with the reason (rejected; the last good table stays).
//! When the stream fails the proxy keeps serving with its last table and reconnects with
//! capped exponential backoff and jitter.

use std::sync::Arc;
use std::time::Duration;

use pivot_proto::v1::{self, proxy_discovery_client::ProxyDiscoveryClient, proxy_message::Msg};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::routing::RoutingTable;
use crate::server::Shared;

/// Who this proxy is and where the control plane is.
#[derive(Debug, Clone)]
pub struct Settings {
    /// gRPC endpoint URL.
    pub endpoint: String,
    /// Identity of this proxy.
    pub proxy_id: String,
    /// Client address, reported to the control plane.
    pub listen_addr: String,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `shutdown`: keeps a config stream open, reconnecting after every failure.
pub async fn run(shared: Arc<Shared>, settings: Settings, shutdown: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let session = stream_once(&shared, &settings);
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session => r,
        };
        shared.metrics.control_plane_connected.set(0);
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
    // Our messages: Hello, then one ACK/NACK per update; a few slots are plenty.
    let (tx, rx) = mpsc::channel(16);
    let hello = v1::ProxyMessage {
        msg: Some(Msg::Hello(v1::Hello {
            proxy_id: settings.proxy_id.clone(),
            listen_addr: settings.listen_addr.clone(),
            build_version: env!("CARGO_PKG_VERSION").to_string(),
            services: vec![shared.service.clone()],
            running_version: shared.table.load().version,
        })),
    };
    tx.send(hello)
        .await
        .map_err(|_| "stream closed".to_string())?;
    let mut updates = client
        .stream_config(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("subscribe: {e}"))?
        .into_inner();
    shared.metrics.control_plane_connected.set(1);
    info!(endpoint = %settings.endpoint, "config stream open");
    let mut received = false;
    // Versions must grow within a stream; a new stream (perhaps from another control plane,
    // or one restored from a backup) is the authority for the whole state and may restart.
    let mut last_version = 0;
    loop {
        let update = match updates.message().await {
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
        let answer = match apply(shared, &update, last_version) {
            Ok(()) => {
                last_version = update.version;
                shared.metrics.config_acks.inc();
                Msg::Ack(v1::Ack {
                    version: update.version,
                    nonce: update.nonce.clone(),
                })
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
    let current = shared.table.load();
    if current.master != table.master {
        // How long after the control plane decided the proxy switched (the control
        // plane's clock: meaningful when clocks are synchronised, as on one host).
        if table.master.is_some()
            && let Some(at) = svc
                .topology
                .as_ref()
                .and_then(|t| t.changed_at)
                .and_then(|t| std::time::SystemTime::try_from(t).ok())
            && let Ok(lag) = std::time::SystemTime::now().duration_since(at)
        {
            shared
                .metrics
                .master_switch_seconds
                .observe(lag.as_secs_f64());
        }
        info!(
            old = ?current.master.as_ref().map(ToString::to_string),
            new = ?table.master.as_ref().map(ToString::to_string),
            version = update.version,
            "master changed"
        );
    }
    debug!(
        version = update.version,
        replicas = table.readable.len(),
        "config applied"
    );
    let version = table.version;
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
    shared.applied.send_replace(version);
    Ok(())
}
