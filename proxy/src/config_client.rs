//! The config stream from the control plane (xDS-style, state of the world).
//!
//! One bidirectional gRPC stream: the proxy says `Hello`, the control plane sends the full
//! config of the service at once and again on every change; the proxy answers each update
//! with an ACK (applied) or a NACK with the reason (rejected; the last good table stays).
//! On the same stream the proxy reports its status (client connections, counters, held
//! requests, running version) right after `Hello` and then every `--status-interval`.
//! When the stream fails the proxy keeps serving with its last table and reconnects with
//! capped exponential backoff and jitter, to the next control plane of `--control-plane`
//! (round-robin), presenting `--control-plane-token` and, over `https://`, its client
//! certificate.
//!
//! Several control planes have independent stores, so their versions are unrelated: a
//! proxy orders versions only within a stream, and topologies across control planes by
//! the Sentinel config epoch (see [`apply`]).
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
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, error, info, warn};

use crate::cache::Cache;
use crate::config::Config;
use crate::follower::KEEP_NEWER_EPOCH_FOR;
use crate::metrics::ControlPlaneFailure;
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

/// One control plane endpoint, ready to connect to.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The URL as configured (for logs).
    pub url: String,
    endpoint: Endpoint,
}

/// How to reach the control planes (`--control-plane`, `--control-plane-token`,
/// `--control-plane-tls-*`): every endpoint with its TLS settings, and the token.
#[derive(Debug, Clone)]
pub struct Upstreams {
    list: Vec<Upstream>,
    /// `Bearer <token>`, marked sensitive (never indexed by HPACK, `Debug` hides it).
    authorization: Option<MetadataValue<Ascii>>,
}

impl Upstreams {
    /// Builds the endpoints from a validated config, reading the TLS files: a missing
    /// file or PEM that rustls refuses is an error naming the flag.
    pub fn from_config(config: &Config) -> Result<Upstreams, String> {
        let tls = client_tls(config)?;
        let mut list = Vec::with_capacity(config.control_plane.len());
        for url in &config.control_plane {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| format!("--control-plane {url}: {e}"))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5));
            if url.starts_with("https://") {
                let tls = tls
                    .clone()
                    .unwrap_or_else(|| ClientTlsConfig::new().with_native_roots());
                endpoint = endpoint.tls_config(tls).map_err(|e| {
                    format!("--control-plane {url}: TLS settings: {}", error_chain(&e))
                })?;
            }
            list.push(Upstream {
                url: url.clone(),
                endpoint,
            });
        }
        if list.is_empty() {
            return Err("--control-plane needs at least one URL".into());
        }
        let authorization = config
            .control_plane_token
            .as_ref()
            .map(|t| {
                let mut v = MetadataValue::try_from(format!("Bearer {}", t.expose()))
                    .map_err(|_| "--control-plane-token is not a valid header value".to_string())?;
                v.set_sensitive(true);
                Ok::<_, String>(v)
            })
            .transpose()?;
        Ok(Upstreams {
            list,
            authorization,
        })
    }

    /// The endpoints, in the order they are tried.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|u| u.url.as_str())
    }
}

/// The TLS settings from `--control-plane-tls-*`; `None` when none is given (an
/// `https://` endpoint then trusts the system's roots).
fn client_tls(config: &Config) -> Result<Option<ClientTlsConfig>, String> {
    let given = config.control_plane_tls_ca.is_some()
        || config.control_plane_tls_cert.is_some()
        || config.control_plane_tls_server_name.is_some();
    if !given {
        return Ok(None);
    }
    let mut tls = ClientTlsConfig::new();
    tls = match &config.control_plane_tls_ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read_pem(
            ca,
            "--control-plane-tls-ca",
        )?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (
        &config.control_plane_tls_cert,
        &config.control_plane_tls_key,
    ) {
        tls = tls.identity(Identity::from_pem(
            read_pem(cert, "--control-plane-tls-cert")?,
            read_pem(key, "--control-plane-tls-key")?,
        ));
    }
    if let Some(name) = &config.control_plane_tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(Some(tls))
}

/// A PEM file's bytes; an error names the flag and the path.
fn read_pem(path: &std::path::Path, flag: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!("{flag} {}: not a PEM file", path.display()));
    }
    Ok(bytes)
}

/// An error and its sources, `: `-separated (tonic's own message is often just
/// "transport error", the cause is in the sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    with_causes(e.to_string(), e.source())
}

/// `first`, then each cause's text, `: `-separated, leaving out a cause that only
/// repeats the text before it (layers often wrap with the same words).
fn with_causes(first: String, mut source: Option<&dyn std::error::Error>) -> String {
    let mut out = first;
    let mut last = out.clone();
    while let Some(s) = source {
        let text = s.to_string();
        if text != last && !last.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        source = s.source();
    }
    out
}

/// Who this proxy is and where the control planes are.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The control plane endpoints, token and TLS settings.
    pub upstreams: Upstreams,
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

/// Why a stream attempt failed.
#[derive(Debug)]
struct Failure {
    kind: ControlPlaneFailure,
    message: String,
}

impl Failure {
    fn new(kind: ControlPlaneFailure, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

/// Runs until `shutdown`: keeps a config stream open to one of the control planes.
///
/// Endpoints are tried in order, round-robin: a failed attempt, or a stream that ends,
/// moves to the next one. Between attempts the proxy waits a jittered backoff that starts
/// at 100 ms and doubles (up to 5 s) after every full round of failures, so with several
/// endpoints each one is tried quickly before the waits grow; a stream that delivered a
/// config resets it. Nothing of this touches client connections or the routing table:
/// the proxy serves its last table meanwhile (and the follower takes over, I6).
pub async fn run(shared: Arc<Shared>, settings: Settings, shutdown: CancellationToken) {
    let count = settings.upstreams.list.len();
    let mut index = 0;
    let mut backoff = MIN_BACKOFF;
    let mut failures_in_a_row = 0usize;
    let mut first = true;
    loop {
        let upstream = &settings.upstreams.list[index];
        let session = stream_once(&shared, &settings, upstream);
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session => r,
        };
        shared.metrics.control_plane_connected.set(0);
        settings.feed.set_connected(false);
        if std::mem::take(&mut first) && shared.table.load().version == 0 {
            start_from_cache(&shared, &settings).await;
        }
        index = (index + 1) % count;
        let next = &settings.upstreams.list[index].url;
        match outcome {
            // The stream worked for a while: start the backoff over.
            Ok(true) => {
                backoff = MIN_BACKOFF;
                failures_in_a_row = 0;
            }
            Ok(false) => failures_in_a_row += 1,
            Err(f) => {
                failures_in_a_row += 1;
                shared.metrics.control_plane_failure(f.kind);
                if f.kind == ControlPlaneFailure::Unauthenticated {
                    error!(endpoint = %upstream.url, error = %f.message, next = %next,
                        "the control plane refused this proxy's credentials: check --control-plane-token against the control plane's --proxy-token; serving with the last config and retrying");
                } else {
                    warn!(endpoint = %upstream.url, error = %f.message, next = %next,
                        "config stream failed; serving with the last config");
                }
            }
        }
        let jitter = rand::rng().random_range(0.8..1.2);
        let wait = backoff.mul_f64(jitter);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if failures_in_a_row > 0 && failures_in_a_row.is_multiple_of(count) {
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// One stream's life. `Ok(true)` if at least one update was received before it ended.
async fn stream_once(
    shared: &Shared,
    settings: &Settings,
    upstream: &Upstream,
) -> Result<bool, Failure> {
    let channel = upstream.endpoint.connect().await.map_err(|e| {
        Failure::new(
            ControlPlaneFailure::Connect,
            format!("connect: {}", error_chain(&e)),
        )
    })?;
    let mut client = ProxyDiscoveryClient::new(channel);
    // Our messages: Hello, then one ACK/NACK per update and a status now and then; a few
    // slots are plenty. Closed when this function returns, which ends our half of the stream.
    let (tx, rx) = mpsc::channel(16);
    let running = shared.base.load_full();
    let hello = v1::ProxyMessage {
        msg: Some(Msg::Hello(v1::Hello {
            proxy_id: settings.proxy_id.clone(),
            listen_addr: settings.listen_addr.clone(),
            build_version: env!("CARGO_PKG_VERSION").to_string(),
            services: vec![shared.service.clone()],
            running_version: running.config_version,
            running_control_plane_id: running.control_plane_id.to_string(),
        })),
    };
    let closed = || Failure::new(ControlPlaneFailure::Subscribe, "stream closed");
    tx.send(hello).await.map_err(|_| closed())?;
    tx.send(status(shared, settings.status_interval))
        .await
        .map_err(|_| closed())?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(auth) = &settings.upstreams.authorization {
        request.metadata_mut().insert("authorization", auth.clone());
    }
    let mut updates = client
        .stream_config(request)
        .await
        .map_err(|status| {
            let kind = match status.code() {
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                    ControlPlaneFailure::Unauthenticated
                }
                _ => ControlPlaneFailure::Subscribe,
            };
            Failure::new(kind, format!("subscribe: {}", status_text(&status)))
        })?
        .into_inner();
    shared.metrics.control_plane_connected.set(1);
    settings.feed.set_connected(true);
    info!(endpoint = %upstream.url, "config stream open");
    let mut received = false;
    // Versions must grow within a stream; a new stream (perhaps from another control plane,
    // or one restored from a backup) is the authority for the whole state and may restart.
    let mut last_version = 0;
    // An update refused for naming an older topology than the running one (see `apply`),
    // and when it is applied anyway if nothing newer comes first.
    let mut deferred: Option<(v1::ConfigUpdate, tokio::time::Instant)> = None;
    let mut report = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.status_interval,
        settings.status_interval,
    );
    // After a stall (a slow ACK send), one report, then the regular period again.
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A shutdown is reported at once, not at the next tick.
    let mut draining = shared.draining.subscribe();
    loop {
        let deferred_until = deferred.as_ref().map(|(_, at)| *at);
        // `Streaming::message` keeps its state in `updates`: cancelling it loses nothing.
        let (update, older_ok) = tokio::select! {
            m = updates.message() => match m {
                Ok(Some(u)) => (u, false),
                Ok(None) if received => {
                    warn!(endpoint = %upstream.url, "config stream closed by the control plane");
                    return Ok(true);
                }
                Ok(None) => {
                    return Err(Failure::new(ControlPlaneFailure::Stream, "closed by the control plane"));
                }
                Err(status) => {
                    let e = status_text(&status);
                    if received {
                        warn!(endpoint = %upstream.url, error = %e, "config stream ended");
                        return Ok(true);
                    }
                    return Err(Failure::new(ControlPlaneFailure::Stream, e));
                }
            },
            () = sleep_until(deferred_until) => {
                let Some((update, _)) = deferred.take() else { continue };
                warn!(version = update.version, endpoint = %upstream.url,
                    "the control plane still names an older topology than the running one after {}s: applying it",
                    KEEP_NEWER_EPOCH_FOR.as_secs());
                (update, true)
            }
            () = async {
                // (`changed` fails only once `shared` is gone, which it cannot be here; the
                // pattern then disables that branch rather than spinning.)
                tokio::select! {
                    _ = report.tick() => {}
                    Ok(()) = draining.changed() => {}
                }
            } => {
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
        received = true;
        let applied = {
            let _installing = settings.feed.lock();
            apply(shared, &update, last_version, older_ok)
        };
        let mut keep = None;
        let answer = match applied {
            Ok(()) => {
                last_version = update.version;
                // State of the world: whatever was deferred is superseded.
                deferred = None;
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
            Err(rejected) => {
                shared.metrics.config_nacks.inc();
                let reason = rejected.to_string();
                warn!(version = update.version, %reason, "config update rejected; keeping the last good config");
                let nack = Msg::Nack(v1::Nack {
                    version: update.version,
                    nonce: update.nonce.clone(),
                    reason,
                });
                deferred = match rejected {
                    // The newest update replaces the deferred one; the deadline stays that
                    // of the first, so that a stream of older topologies cannot push it.
                    Rejected::OlderTopology(_) => Some((
                        update,
                        deferred_until
                            .unwrap_or_else(|| tokio::time::Instant::now() + KEEP_NEWER_EPOCH_FOR),
                    )),
                    Rejected::Invalid(_) => None,
                };
                nack
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

/// `CODE: message` of a gRPC status, with the transport error's causes when it has one.
fn status_text(status: &tonic::Status) -> String {
    let text = with_causes(
        status.message().to_string(),
        std::error::Error::source(status),
    );
    format!("{}: {text}", status.code())
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The proxy's status now, as reported on the config stream.
fn status(shared: &Shared, interval: Duration) -> v1::ProxyMessage {
    let totals = shared.metrics.totals();
    let running = shared.base.load();
    v1::ProxyMessage {
        msg: Some(Msg::Status(v1::Status {
            client_connections: totals.client_connections,
            commands_total: totals.commands,
            reads_total: totals.reads,
            writes_total: totals.writes,
            errors_total: totals.errors,
            held_requests: totals.held_requests,
            running_version: running.config_version,
            uptime_ms: millis(shared.started.elapsed()),
            interval_ms: millis(interval),
            running_control_plane_id: running.control_plane_id.to_string(),
            draining: *shared.draining.borrow(),
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
        // Nothing runs yet: no topology to compare with.
        apply(shared, &update, 0, true)
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

/// Why an update was not applied (the NACK's reason is its text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// Invalid, or not for this proxy: refused for good.
    Invalid(String),
    /// From another control plane than the running table's, naming another master at an
    /// older Sentinel epoch: refused while that control plane catches up, and applied if it
    /// still says so after [`KEEP_NEWER_EPOCH_FOR`] (see [`older_topology`]).
    OlderTopology(String),
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::Invalid(r) | Rejected::OlderTopology(r) => f.write_str(r),
        }
    }
}

/// Validates an update and swaps the routing table. Nothing changes on error.
///
/// How updates are ordered:
/// - `last_version` is the last version applied on the same stream: versions must grow
///   within a stream. A new stream may restart them: it may come from another control
///   plane, whose versions are unrelated (each store has its own sequence).
/// - Across control planes only the Sentinel config epoch is comparable: unless
///   `older_ok`, an update is refused ([`Rejected::OlderTopology`]) when it names another
///   master at an older epoch than the running table and comes from another control plane
///   than that table (or the table is the proxy's own, built from the Sentinels): a
///   control plane that lags behind a failover must not send writes back to the old
///   master. The control plane that made the running table is trusted to go back (its
///   aborted leader promotion returns to the majority's master at the older epoch).
pub fn apply(
    shared: &Shared,
    update: &v1::ConfigUpdate,
    last_version: u64,
    older_ok: bool,
) -> Result<(), Rejected> {
    if update.unknown_services.iter().any(|s| s == &shared.service) {
        return Err(Rejected::Invalid(format!(
            "service '{}' is not known to the control plane",
            shared.service
        )));
    }
    let svc = update
        .services
        .iter()
        .find(|s| s.name == shared.service)
        .ok_or_else(|| {
            Rejected::Invalid(format!(
                "update has no config for service '{}'",
                shared.service
            ))
        })?;
    let mut table = RoutingTable::from_proto(update.version, svc).map_err(Rejected::Invalid)?;
    table.control_plane_id = Arc::from(update.control_plane_id.as_str());
    if update.version <= last_version {
        return Err(Rejected::Invalid(format!(
            "version {} is not newer than version {} applied on this stream",
            update.version, last_version
        )));
    }
    let running = shared.base.load();
    if !older_ok && let Some(why) = older_topology(&running, &table) {
        return Err(Rejected::OlderTopology(why));
    }
    if running.master != table.master
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

/// Why `next` must not replace `running` yet, if it must not: it names another master at
/// an older Sentinel epoch, and does not come from the control plane that made `running`
/// (a table the proxy built from the Sentinels itself counts as another source).
pub fn older_topology(running: &RoutingTable, next: &RoutingTable) -> Option<String> {
    if running.version == 0
        || next.master == running.master
        || next.config_epoch >= running.config_epoch
    {
        return None;
    }
    if !running.is_local() && running.control_plane_id == next.control_plane_id {
        return None;
    }
    let source = if running.is_local() {
        "followed from the Sentinels by this proxy".to_string()
    } else if running.control_plane_id.is_empty() {
        "from a control plane without an id".to_string()
    } else {
        format!("from control plane {}", running.control_plane_id)
    };
    let master = |m: &Option<crate::routing::NodeAddr>| {
        m.as_ref()
            .map_or_else(|| "no master".to_string(), ToString::to_string)
    };
    Some(format!(
        "topology names {} at Sentinel epoch {}, older than the running master {} at epoch {} ({source}); \
         keeping the running one while this control plane catches up (at most {}s)",
        master(&next.master),
        next.config_epoch,
        master(&running.master),
        running.config_epoch,
        KEEP_NEWER_EPOCH_FOR.as_secs()
    ))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::routing::{LOCAL_VERSION_BIT, NodeAddr};

    fn table(version: u64, master: &str, epoch: u64, cp: &str) -> RoutingTable {
        let mut t = RoutingTable::empty("svc");
        t.version = version;
        t.config_version = version & !LOCAL_VERSION_BIT;
        let (host, port) = master.rsplit_once(':').unwrap();
        t.master = Some(NodeAddr::new(host, port.parse().unwrap()));
        t.config_epoch = epoch;
        t.control_plane_id = Arc::from(cp);
        t
    }

    #[test]
    fn older_topologies_from_other_sources_wait() {
        let m1 = "10.0.0.1:6379";
        let m2 = "10.0.0.2:6379";
        // Control plane A runs master m2 at epoch 5, version 5000.
        let running = table(5000, m2, 5, "aaaa");
        let local = table(LOCAL_VERSION_BIT | 1, m2, 5, "aaaa");
        // (name, running, next, refused)
        let cases = [
            (
                "nothing runs yet",
                RoutingTable::empty("svc"),
                table(40, m1, 4, "bbbb"),
                false,
            ),
            (
                "B, same master, lower version",
                running.clone(),
                table(40, m2, 5, "bbbb"),
                false,
            ),
            (
                "B, newer epoch",
                running.clone(),
                table(40, m1, 6, "bbbb"),
                false,
            ),
            (
                "B, lagging behind the failover",
                running.clone(),
                table(40, m1, 4, "bbbb"),
                true,
            ),
            (
                "A itself goes back (aborted promotion)",
                running.clone(),
                table(5001, m1, 4, "aaaa"),
                false,
            ),
            (
                "A after the proxy followed the Sentinels",
                local,
                table(5001, m1, 4, "aaaa"),
                true,
            ),
            (
                "ids unknown on both sides: one control plane",
                table(7, m2, 5, ""),
                table(8, m1, 4, ""),
                false,
            ),
        ];
        for (name, running, next, refused) in cases {
            let why = older_topology(&running, &next);
            assert_eq!(why.is_some(), refused, "{name}: {why:?}");
        }
        let why = older_topology(&running, &table(40, m1, 4, "bbbb")).unwrap();
        assert!(
            why.contains("10.0.0.1:6379 at Sentinel epoch 4")
                && why.contains("10.0.0.2:6379 at epoch 5")
                && why.contains("control plane aaaa"),
            "{why}"
        );
        // A table without a master at an older epoch is not taken from another source either.
        let mut none = table(41, m1, 4, "bbbb");
        none.master = None;
        assert!(older_topology(&running, &none).is_some());
    }

    #[test]
    fn upstreams_from_flags() {
        let mut config = Config::for_service("svc", "http://127.0.0.1:1");
        config.control_plane = vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()];
        config.control_plane_token = Some("s3cret-token-0123456789".parse().unwrap());
        let up = Upstreams::from_config(&config).unwrap();
        assert_eq!(
            up.urls().collect::<Vec<_>>(),
            ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        let auth = up.authorization.as_ref().unwrap();
        assert!(auth.is_sensitive());
        assert_eq!(auth.to_str().unwrap(), "Bearer s3cret-token-0123456789");
        assert!(!format!("{up:?}").contains("s3cret"), "{up:?}");

        // TLS files are read up front; errors name the flag.
        let dir = tempfile::tempdir().unwrap();
        config.control_plane = vec!["https://127.0.0.1:1".into()];
        config.control_plane_tls_ca = Some(dir.path().join("missing.pem"));
        let e = Upstreams::from_config(&config).unwrap_err();
        assert!(
            e.starts_with("--control-plane-tls-ca ") && e.contains("missing.pem"),
            "{e}"
        );
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        config.control_plane_tls_ca = Some(not_pem);
        let e = Upstreams::from_config(&config).unwrap_err();
        assert!(e.contains("not a PEM file"), "{e}");
    }

    #[test]
    fn causes_are_joined_without_repeats() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = E(
            "transport error",
            Some(Box::new(E(
                "transport error",
                Some(Box::new(E("connection refused", None))),
            ))),
        );
        assert_eq!(error_chain(&e), "transport error: connection refused");
    }

    #[test]
    fn rejections_read_as_their_reason() {
        assert_eq!(Rejected::Invalid("bad".into()).to_string(), "bad");
        assert_eq!(Rejected::OlderTopology("old".into()).to_string(), "old");
    }
}
