//! The `pivot.v1.ProxyDiscovery` gRPC service: streams versioned configuration to proxies
//! and records what each proxy runs and does ([`ProxyRegistry`]).
//!
//! One task per stream: it sends the current configuration of the proxy's services at
//! once, then a new update whenever a subscribed service's topology changes version, and
//! reads ACK/NACKs and status reports. The task (and so the stream) ends when the proxy
//! goes away or shutdown starts.
//!
//! Status reports carry counters since the proxy process started and the proxy's uptime,
//! so rates come from two consecutive reports over the proxy's own clock (network delays
//! don't skew them), and a restarted proxy shows as its counters or uptime going back. A
//! stream that stays open while nothing arrives on it for three report periods (a hung
//! proxy, a half-open connection keepalive has not caught yet) marks its proxy silent.

pub mod admin;
pub mod convert;
pub mod credentials;

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use pivot_proto::v1::proxy_discovery_server::ProxyDiscovery;
use pivot_proto::v1::proxy_message::Msg;
use pivot_proto::v1::{self as pb, ConfigUpdate, Hello, ProxyMessage};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::metrics::Metrics;
use crate::state::{FleetState, State};
use crate::store::{Write, Writer};

/// How long a new stream may take to send its `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Sent updates remembered per stream to match ACK/NACK nonces.
const NONCES_KEPT: usize = 64;
/// Report period assumed for a proxy until its first status says otherwise (the proxy's
/// `--status-interval` default).
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// A connected proxy is silent after this many report periods without any message.
pub const SILENT_AFTER_INTERVALS: u32 = 3;
/// Report periods accepted from a proxy; a status outside is ignored.
const STATUS_INTERVAL_RANGE: std::ops::RangeInclusive<u64> = 10..=3_600_000;
/// Larger client or held request counts than any proxy can have: such a status is ignored.
const MAX_GAUGE: u64 = 1 << 32;
/// A rate above this (commands per second) comes from inconsistent reports, not from load.
const MAX_OPS_PER_SEC: f64 = 1e9;
/// Longest NACK reason kept (the proxy's own text; keeps one proxy from holding much memory).
const MAX_REASON_BYTES: usize = 1024;
/// Proxies remembered; past it, the disconnected one heard from longest ago is forgotten
/// (proxies with an open stream are always kept: the streams bound them).
const MAX_PROXIES: usize = 16_384;

/// What the control plane knows about one proxy (in memory; mirrored to the store).
///
/// The status fields are `None` until the proxy's first status report and keep the last
/// report's values after its stream ends (see `streams` and `status_at`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyInfo {
    /// Stable proxy id.
    pub proxy_id: String,
    /// Client-facing address it announced.
    pub listen_addr: String,
    /// Its build version.
    pub build_version: String,
    /// Services it subscribed to.
    pub services: Vec<String>,
    /// Open config streams from this proxy (normally 0 or 1).
    pub streams: usize,
    /// Last version it acknowledged.
    pub acked_version: Option<u64>,
    /// Reason of its last NACK.
    pub last_nack: Option<String>,
    /// Version of its last NACK.
    pub last_nack_version: Option<u64>,
    /// Last message from it.
    pub last_seen: SystemTime,
    /// Config version it runs, from its last status (or its `Hello`).
    pub running_version: Option<u64>,
    /// Open client connections, from its last status.
    pub client_connections: Option<u64>,
    /// Commands per second between its last two status reports; `None` until there are
    /// two comparable ones (not across a restart of the proxy process).
    pub ops_per_sec: Option<f64>,
    /// Reads (class read) per second, as `ops_per_sec`.
    pub reads_per_sec: Option<f64>,
    /// Writes (class write) per second, as `ops_per_sec`.
    pub writes_per_sec: Option<f64>,
    /// Commands since the proxy process started, from its last status.
    pub commands_total: Option<u64>,
    /// Error replies the proxy produced itself since it started, from its last status.
    pub errors_total: Option<u64>,
    /// Requests waiting for a usable master, from its last status.
    pub held_requests: Option<u64>,
    /// When its last status report arrived.
    pub status_at: Option<SystemTime>,
    /// Its report period as it announced it ([`DEFAULT_STATUS_INTERVAL`] before its first
    /// status).
    pub status_interval: Duration,
    /// Its stream is open, but nothing arrived on it for [`SILENT_AFTER_INTERVALS`] report
    /// periods. (A proxy without an open stream is disconnected: `streams == 0`.)
    pub silent: bool,
    /// Its last status said it is shutting down (not ready, finishing its clients).
    pub draining: bool,
}

impl ProxyInfo {
    /// A proxy known by its id only, as first seen at `now` (no `Hello` fields, no status
    /// yet); with struct update syntax, a base for tests.
    pub fn new(proxy_id: &str, now: SystemTime) -> ProxyInfo {
        ProxyInfo {
            proxy_id: proxy_id.to_string(),
            listen_addr: String::new(),
            build_version: String::new(),
            services: Vec::new(),
            streams: 0,
            acked_version: None,
            last_nack: None,
            last_nack_version: None,
            last_seen: now,
            running_version: None,
            client_connections: None,
            ops_per_sec: None,
            reads_per_sec: None,
            writes_per_sec: None,
            commands_total: None,
            errors_total: None,
            held_requests: None,
            status_at: None,
            status_interval: DEFAULT_STATUS_INTERVAL,
            silent: false,
            draining: false,
        }
    }

    /// How long after its last message a connected proxy counts as silent.
    pub fn silent_after(&self) -> Duration {
        self.status_interval * SILENT_AFTER_INTERVALS
    }
}

/// The counters of one status report that the next report's rates are computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    uptime_ms: u64,
    commands: u64,
    reads: u64,
    writes: u64,
}

impl From<&pb::Status> for Sample {
    fn from(s: &pb::Status) -> Sample {
        Sample {
            uptime_ms: s.uptime_ms,
            commands: s.commands_total,
            reads: s.reads_total,
            writes: s.writes_total,
        }
    }
}

/// Per-second rates between two status reports.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rates {
    ops: f64,
    reads: f64,
    writes: f64,
}

/// The rates from `prev` to `cur`, two reports of the same proxy id; `None` when they are
/// not comparable: the uptime or a counter went back (the process restarted, or its
/// counters were reset), no time passed, or the result is beyond any real load.
fn rates(prev: Sample, cur: Sample) -> Option<Rates> {
    let elapsed_ms = cur
        .uptime_ms
        .checked_sub(prev.uptime_ms)
        .filter(|&d| d > 0)?;
    let per_sec = |before: u64, after: u64| {
        // u64 -> f64 rounds above 2^53 commands per report: irrelevant for a rate.
        after
            .checked_sub(before)
            .map(|d| d as f64 * 1000.0 / elapsed_ms as f64)
            .filter(|r| *r <= MAX_OPS_PER_SEC)
    };
    Some(Rates {
        ops: per_sec(prev.commands, cur.commands)?,
        reads: per_sec(prev.reads, cur.reads)?,
        writes: per_sec(prev.writes, cur.writes)?,
    })
}

/// Why a status report was ignored.
fn implausible(s: &pb::Status) -> Option<&'static str> {
    if !STATUS_INTERVAL_RANGE.contains(&s.interval_ms) {
        return Some("interval_ms out of range");
    }
    if s.client_connections > MAX_GAUGE || s.held_requests > MAX_GAUGE {
        return Some("client_connections or held_requests out of range");
    }
    if s.reads_total > s.commands_total || s.writes_total > s.commands_total {
        return Some("reads_total or writes_total above commands_total");
    }
    None
}

#[derive(Debug)]
struct Entry {
    info: ProxyInfo,
    /// The last accepted status report's counters.
    baseline: Option<Sample>,
}

/// Every proxy seen since start (up to [`MAX_PROXIES`]), by id, and a generation counter
/// that changes with any of them.
#[derive(Debug)]
pub struct ProxyRegistry {
    proxies: Mutex<HashMap<String, Entry>>,
    /// Bumped after every change; receivers (the HTTP event stream) re-read [`list`](Self::list).
    generation: watch::Sender<u64>,
}

impl Default for ProxyRegistry {
    fn default() -> Self {
        ProxyRegistry {
            proxies: Mutex::new(HashMap::new()),
            generation: watch::Sender::new(0),
        }
    }
}

impl ProxyRegistry {
    /// All proxies, connected first, then by id.
    pub fn list(&self) -> Vec<ProxyInfo> {
        let mut v: Vec<ProxyInfo> = self.lock().values().map(|e| e.info.clone()).collect();
        v.sort_by(|a, b| (b.streams > 0, &a.proxy_id).cmp(&(a.streams > 0, &b.proxy_id)));
        v
    }

    /// One proxy by id.
    pub fn get(&self, proxy_id: &str) -> Option<ProxyInfo> {
        self.lock().get(proxy_id).map(|e| e.info.clone())
    }

    /// Number of proxies with an open stream.
    pub fn connected(&self) -> usize {
        self.lock().values().filter(|e| e.info.streams > 0).count()
    }

    /// A receiver of the registry's generation, which changes after every change to any
    /// proxy (connected, disconnected, ACK, NACK, status report, fell silent). Changes
    /// coalesce: a slow receiver sees the latest generation, then reads [`list`](Self::list).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.proxies.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn hello(&self, h: &Hello, now: SystemTime) {
        {
            let mut map = self.lock();
            if map.len() >= MAX_PROXIES && !map.contains_key(&h.proxy_id) {
                forget_oldest_disconnected(&mut map);
            }
            let entry = map.entry(h.proxy_id.clone()).or_insert_with(|| Entry {
                info: ProxyInfo::new(&h.proxy_id, now),
                baseline: None,
            });
            let p = &mut entry.info;
            p.listen_addr = h.listen_addr.clone();
            p.build_version = h.build_version.clone();
            p.services = h.services.clone();
            p.streams += 1;
            p.last_seen = now;
            p.silent = false;
            if h.running_version > 0 {
                p.running_version = Some(h.running_version);
                if p.acked_version.is_none() {
                    p.acked_version = Some(h.running_version);
                }
            }
        }
        self.changed();
    }

    /// Records a status report; `Err` names why it was ignored (the message still counts
    /// as a sign of life).
    fn status(&self, id: &str, s: &pb::Status, now: SystemTime) -> Result<(), &'static str> {
        let outcome = {
            let mut map = self.lock();
            let Some(entry) = map.get_mut(id) else {
                return Ok(());
            };
            entry.info.last_seen = now;
            entry.info.silent = false;
            match implausible(s) {
                Some(why) => Err(why),
                None => {
                    let sample = Sample::from(s);
                    let r = entry.baseline.and_then(|prev| rates(prev, sample));
                    entry.baseline = Some(sample);
                    let p = &mut entry.info;
                    p.ops_per_sec = r.map(|r| r.ops);
                    p.reads_per_sec = r.map(|r| r.reads);
                    p.writes_per_sec = r.map(|r| r.writes);
                    p.client_connections = Some(s.client_connections);
                    p.commands_total = Some(s.commands_total);
                    p.errors_total = Some(s.errors_total);
                    p.held_requests = Some(s.held_requests);
                    p.draining = s.draining;
                    if s.running_version > 0 {
                        p.running_version = Some(s.running_version);
                    }
                    p.status_at = Some(now);
                    p.status_interval = Duration::from_millis(s.interval_ms);
                    Ok(())
                }
            }
        };
        self.changed();
        outcome
    }

    /// Applies `f` to proxy `id`, if known, and bumps the generation.
    fn update(&self, id: &str, f: impl FnOnce(&mut ProxyInfo)) {
        let found = match self.lock().get_mut(id) {
            Some(e) => {
                f(&mut e.info);
                true
            }
            None => false,
        };
        if found {
            self.changed();
        }
    }
}

/// Makes room for one more proxy: forgets the disconnected proxy heard from longest ago.
/// With every proxy connected nothing is forgotten (open streams bound the map).
fn forget_oldest_disconnected(map: &mut HashMap<String, Entry>) {
    let oldest = map
        .iter()
        .filter(|(_, e)| e.info.streams == 0)
        .min_by_key(|(_, e)| e.info.last_seen)
        .map(|(id, _)| id.clone());
    if let Some(id) = oldest {
        map.remove(&id);
    }
}

/// `reason` cut to [`MAX_REASON_BYTES`] on a character boundary, marked with `…` when cut.
fn bounded_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// The gRPC service implementation.
#[derive(Debug, Clone)]
pub struct Discovery {
    state: Arc<State>,
    registry: Arc<ProxyRegistry>,
    writer: Writer,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    nonces: Arc<Nonces>,
    /// This control plane's identity (its store's), sent in every update: the scope of
    /// its versions.
    control_plane_id: Arc<str>,
}

#[derive(Debug)]
struct Nonces {
    prefix: u32,
    next: AtomicU64,
}

impl Nonces {
    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{n}", self.prefix)
    }
}

impl Discovery {
    /// A service streaming `state`; streams end when `shutdown` is cancelled.
    pub fn new(
        state: Arc<State>,
        registry: Arc<ProxyRegistry>,
        writer: Writer,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            state,
            registry,
            writer,
            metrics,
            shutdown,
            nonces: Arc::new(Nonces {
                // Unique across restarts without persisting a counter.
                prefix: rand::random(),
                next: AtomicU64::new(1),
            }),
            control_plane_id: Arc::from(""),
        }
    }

    /// Announces `id` (the store's `control_plane_id`) in every update, and takes a
    /// proxy's running version into account only when it comes from this id.
    pub fn with_control_plane_id(mut self, id: &str) -> Self {
        self.control_plane_id = Arc::from(id);
        self
    }

    /// Whether a version a proxy reports (from control plane `from`) was issued by another
    /// control plane, whose versions are unrelated to ours. Empty ids are unknown: taken
    /// as ours, as before control planes announced one.
    fn foreign(&self, from: &str) -> bool {
        !from.is_empty() && !self.control_plane_id.is_empty() && *from != *self.control_plane_id
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<ConfigUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl ProxyDiscovery for Discovery {
    type StreamConfigStream = UpdateStream;

    async fn stream_config(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<UpdateStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let first = tokio::select! {
            m = tokio::time::timeout(HELLO_TIMEOUT, inbound.message()) => m,
            () = self.shutdown.cancelled() => {
                return Err(Status::unavailable("control plane is shutting down"));
            }
        };
        let hello = match first {
            Err(_) => return Err(Status::deadline_exceeded("no Hello received in time")),
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => return Err(Status::invalid_argument("stream closed before Hello")),
            Ok(Ok(Some(ProxyMessage {
                msg: Some(Msg::Hello(h)),
            }))) => h,
            Ok(Ok(Some(_))) => {
                return Err(Status::invalid_argument("the first message must be Hello"));
            }
        };
        if hello.proxy_id.is_empty() {
            return Err(Status::invalid_argument("Hello.proxy_id must not be empty"));
        }

        let now = SystemTime::now();
        if self.foreign(&hello.running_control_plane_id) {
            // It runs another control plane's config: its version says nothing about ours.
            debug!(proxy_id = %hello.proxy_id, from = %hello.running_control_plane_id,
                version = hello.running_version, "proxy runs another control plane's config");
            let mut ours = hello.clone();
            ours.running_version = 0;
            self.registry.hello(&ours, now);
        } else {
            self.registry.hello(&hello, now);
        }
        self.metrics
            .proxies_connected
            .set(i64::try_from(self.registry.connected()).unwrap_or(i64::MAX));
        self.writer.send(Write::ProxyHello {
            proxy_id: hello.proxy_id.clone(),
            listen_addr: hello.listen_addr.clone(),
            build_version: hello.build_version.clone(),
            services: hello.services.clone(),
            at: now,
        });

        // Closed by the session task when it ends (which ends the response stream).
        let (tx, rx) = mpsc::channel(4);
        let span = info_span!("proxy_stream", proxy_id = %hello.proxy_id, peer = ?peer);
        let session = Session {
            svc: self.clone(),
            hello,
            inbound,
            tx,
            sent: VecDeque::new(),
            heard: tokio::time::Instant::now(),
            silent_after: DEFAULT_STATUS_INTERVAL * SILENT_AFTER_INTERVALS,
            silent: false,
            bad_status_logged: false,
        };
        tokio::spawn(session.run().instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Session {
    svc: Discovery,
    hello: Hello,
    inbound: Streaming<ProxyMessage>,
    tx: mpsc::Sender<Result<ConfigUpdate, Status>>,
    /// (nonce, version) of recent updates, to match ACK/NACKs.
    sent: VecDeque<(String, u64)>,
    /// When the last message arrived.
    heard: tokio::time::Instant,
    /// Quiet time after which the proxy counts as silent (three of its report periods).
    silent_after: Duration,
    /// The registry has it as silent.
    silent: bool,
    /// An ignored status report was logged at `warn` already (later ones at `debug`).
    bad_status_logged: bool,
}

impl Session {
    async fn run(mut self) {
        info!(services = ?self.hello.services, listen_addr = %self.hello.listen_addr, "proxy connected");
        let mut state_rx = self.svc.state.subscribe();
        // Per subscribed service, the topology and configuration versions last sent (None:
        // unknown service).
        let mut last_key: Option<Vec<Option<(u64, u64)>>> = None;
        loop {
            let snapshot = state_rx.borrow_and_update().clone();
            let key = self.key(&snapshot);
            // A service the watcher has not decided on yet (right after a start) has no
            // master: sending it would make proxies that run a good table drop their master.
            let undecided = self
                .hello
                .services
                .iter()
                .any(|n| snapshot.services.get(n).is_some_and(|s| !s.decided));
            if !undecided && last_key.as_ref() != Some(&key) {
                let update = self.update(&snapshot);
                debug!(version = update.version, nonce = %update.nonce, "sending update");
                let sent = tokio::select! {
                    r = self.tx.send(Ok(update)) => r.is_ok(),
                    () = self.svc.shutdown.cancelled() => false,
                };
                if !sent {
                    break;
                }
                last_key = Some(key);
            }
            let quiet_until = self.heard + self.silent_after;
            tokio::select! {
                () = self.svc.shutdown.cancelled() => break,
                r = state_rx.changed() => if r.is_err() { break },
                () = tokio::time::sleep_until(quiet_until), if !self.silent => {
                    warn!(quiet = ?self.silent_after, "proxy silent: nothing received for three status intervals");
                    self.silent = true;
                    self.svc.registry.update(&self.hello.proxy_id, |p| p.silent = true);
                }
                m = self.inbound.message() => match m {
                    Ok(Some(m)) => {
                        self.heard = tokio::time::Instant::now();
                        if std::mem::take(&mut self.silent) {
                            info!("proxy heard from again");
                        }
                        self.handle(m);
                    }
                    Ok(None) => break,
                    Err(status) => {
                        debug!(%status, "proxy stream error");
                        break;
                    }
                },
            }
        }
        let id = self.hello.proxy_id.clone();
        self.svc.registry.update(&id, |p| {
            p.streams = p.streams.saturating_sub(1);
            // Silence is a state of an open stream; the last stream's ended.
            if p.streams == 0 {
                p.silent = false;
            }
        });
        self.svc
            .metrics
            .proxies_connected
            .set(i64::try_from(self.svc.registry.connected()).unwrap_or(i64::MAX));
        info!("proxy disconnected");
    }

    fn key(&self, s: &FleetState) -> Vec<Option<(u64, u64)>> {
        self.hello
            .services
            .iter()
            .map(|n| {
                s.services
                    .get(n)
                    .map(|s| (s.topology.changed_version, s.config_version))
            })
            .collect()
    }

    fn update(&mut self, s: &FleetState) -> ConfigUpdate {
        let nonce = self.svc.nonces.next();
        let mut services = Vec::new();
        let mut unknown = Vec::new();
        for name in &self.hello.services {
            match s.services.get(name) {
                Some(svc) => services.push(convert::service(svc)),
                None => unknown.push(name.clone()),
            }
        }
        self.sent.push_back((nonce.clone(), s.version));
        if self.sent.len() > NONCES_KEPT {
            self.sent.pop_front();
        }
        ConfigUpdate {
            version: s.version,
            nonce,
            services,
            unknown_services: unknown,
            control_plane_id: self.svc.control_plane_id.to_string(),
        }
    }

    fn sent_version(&self, nonce: &str) -> Option<u64> {
        self.sent.iter().find(|(n, _)| n == nonce).map(|(_, v)| *v)
    }

    fn handle(&mut self, m: ProxyMessage) {
        let now = SystemTime::now();
        let id = self.hello.proxy_id.clone();
        match m.msg {
            Some(Msg::Ack(ack)) => {
                let Some(version) = self.sent_version(&ack.nonce) else {
                    warn!(nonce = %ack.nonce, "ACK for an unknown nonce; ignored");
                    return;
                };
                if ack.version != version {
                    warn!(
                        acked = ack.version,
                        sent = version,
                        "ACK version differs from the update's"
                    );
                }
                debug!(version, "ACK");
                self.svc.metrics.proxy_acks.inc();
                self.svc.registry.update(&id, |p| {
                    p.acked_version = Some(p.acked_version.map_or(version, |v| v.max(version)));
                    p.last_seen = now;
                    p.silent = false;
                });
                self.svc.writer.send(Write::ProxyAck {
                    proxy_id: id,
                    version,
                    at: now,
                });
            }
            Some(Msg::Nack(nack)) => {
                let version = self.sent_version(&nack.nonce).unwrap_or(nack.version);
                warn!(version, reason = %nack.reason, "proxy rejected an update (NACK)");
                self.svc.metrics.proxy_nacks.inc();
                let reason = bounded_reason(nack.reason);
                let kept = reason.clone();
                self.svc.registry.update(&id, |p| {
                    p.last_nack = Some(kept);
                    p.last_nack_version = Some(version);
                    p.last_seen = now;
                    p.silent = false;
                });
                self.svc.writer.send(Write::ProxyNack {
                    proxy_id: id,
                    reason,
                    at: now,
                });
            }
            Some(Msg::Status(mut status)) => {
                if self.svc.foreign(&status.running_control_plane_id) {
                    status.running_version = 0;
                }
                match self.svc.registry.status(&id, &status, now) {
                    Ok(()) => {
                        self.silent_after = Duration::from_millis(status.interval_ms)
                            .saturating_mul(SILENT_AFTER_INTERVALS);
                    }
                    Err(why) if !std::mem::replace(&mut self.bad_status_logged, true) => {
                        warn!(
                            why,
                            ?status,
                            "status report ignored (later ones only at debug level)"
                        );
                    }
                    Err(why) => debug!(why, ?status, "status report ignored"),
                }
            }
            Some(Msg::Hello(_)) => warn!("repeated Hello on an open stream; ignored"),
            None => debug!("empty ProxyMessage; ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample(uptime_ms: u64, commands: u64, reads: u64, writes: u64) -> Sample {
        Sample {
            uptime_ms,
            commands,
            reads,
            writes,
        }
    }

    fn status(uptime_ms: u64, commands: u64) -> pb::Status {
        pb::Status {
            client_connections: 3,
            commands_total: commands,
            reads_total: commands / 2,
            writes_total: commands / 4,
            errors_total: 1,
            held_requests: 0,
            running_version: 7,
            uptime_ms,
            interval_ms: 2000,
            running_control_plane_id: String::new(),
            draining: false,
        }
    }

    fn hello(id: &str) -> Hello {
        Hello {
            proxy_id: id.into(),
            listen_addr: "127.0.0.1:6379".into(),
            build_version: "test".into(),
            services: vec!["mymaster".into()],
            running_version: 0,
            running_control_plane_id: String::new(),
        }
    }

    #[test]
    fn rates_over_the_proxys_own_clock() {
        let r = rates(sample(1_000, 100, 60, 20), sample(3_000, 2_100, 1_260, 420)).unwrap();
        assert_eq!(
            r,
            Rates {
                ops: 1000.0,
                reads: 600.0,
                writes: 200.0
            }
        );
        // Idle: zero, not unknown.
        let r = rates(sample(1_000, 100, 60, 20), sample(1_500, 100, 60, 20)).unwrap();
        assert_eq!(r.ops, 0.0);
        // Sub-second windows scale up.
        let r = rates(sample(0, 0, 0, 0), sample(250, 50, 0, 0)).unwrap();
        assert_eq!(r.ops, 200.0);
    }

    #[test]
    fn no_rate_across_a_restart_a_reset_or_no_time() {
        // The process restarted: uptime went back (even if the counters grew meanwhile).
        assert_eq!(
            rates(sample(60_000, 100, 0, 0), sample(500, 5_000, 0, 0)),
            None
        );
        // Counters went back within the same uptime (reset): no negative rate.
        assert_eq!(
            rates(sample(1_000, 100, 0, 0), sample(2_000, 99, 0, 0)),
            None
        );
        assert_eq!(
            rates(sample(1_000, 100, 50, 0), sample(2_000, 200, 49, 0)),
            None
        );
        assert_eq!(
            rates(sample(1_000, 100, 0, 7), sample(2_000, 200, 0, 6)),
            None
        );
        // No time passed: nothing to divide by.
        assert_eq!(
            rates(sample(1_000, 100, 0, 0), sample(1_000, 200, 0, 0)),
            None
        );
        // Beyond any real load.
        assert_eq!(rates(sample(0, 0, 0, 0), sample(1, u64::MAX, 0, 0)), None);
    }

    #[test]
    fn registry_keeps_the_last_status_and_derives_ops_per_sec() {
        let reg = ProxyRegistry::default();
        let mut gen_rx = reg.subscribe();
        let now = SystemTime::now();
        reg.hello(&hello("p1"), now);
        assert!(gen_rx.has_changed().unwrap());
        gen_rx.mark_unchanged();

        reg.status("p1", &status(1_000, 100), now).unwrap();
        let p = reg.get("p1").unwrap();
        assert_eq!(p.client_connections, Some(3));
        assert_eq!(p.ops_per_sec, None, "one report gives no rate");
        assert_eq!(p.running_version, Some(7));
        assert_eq!(p.status_at, Some(now));
        assert!(gen_rx.has_changed().unwrap());

        reg.status("p1", &status(3_000, 4_100), now).unwrap();
        let p = reg.get("p1").unwrap();
        assert_eq!(p.ops_per_sec, Some(2000.0));
        assert_eq!(p.reads_per_sec, Some(1000.0));
        assert_eq!(p.writes_per_sec, Some(500.0));
        assert_eq!(p.commands_total, Some(4_100));
        assert_eq!(p.errors_total, Some(1));

        // The same id, a new process: no rate from the old one's counters...
        reg.hello(&hello("p1"), now);
        reg.status("p1", &status(100, 10), now).unwrap();
        assert_eq!(reg.get("p1").unwrap().ops_per_sec, None);
        // ...then rates from the new one.
        reg.status("p1", &status(2_100, 210), now).unwrap();
        assert_eq!(reg.get("p1").unwrap().ops_per_sec, Some(100.0));
    }

    #[test]
    fn implausible_reports_are_ignored() {
        let reg = ProxyRegistry::default();
        let now = SystemTime::now();
        reg.hello(&hello("p1"), now);
        reg.status("p1", &status(1_000, 100), now).unwrap();
        for bad in [
            pb::Status {
                interval_ms: 0,
                ..status(2_000, 200)
            },
            pb::Status {
                client_connections: u64::MAX,
                ..status(2_000, 200)
            },
            pb::Status {
                reads_total: 201,
                ..status(2_000, 200)
            },
        ] {
            assert!(reg.status("p1", &bad, now).is_err(), "{bad:?}");
        }
        let p = reg.get("p1").unwrap();
        assert_eq!(p.commands_total, Some(100), "the last good report stays");
        assert_eq!(p.client_connections, Some(3));
        // The baseline did not move either.
        reg.status("p1", &status(2_000, 1_100), now).unwrap();
        assert_eq!(reg.get("p1").unwrap().ops_per_sec, Some(1000.0));
        // A report for a proxy never seen changes nothing.
        reg.status("nobody", &status(1, 1), now).unwrap();
        assert!(reg.get("nobody").is_none());
    }

    #[test]
    fn registry_is_bounded_by_forgetting_old_disconnected_proxies() {
        let reg = ProxyRegistry::default();
        let t0 = SystemTime::UNIX_EPOCH;
        for i in 0..MAX_PROXIES {
            let id = format!("p{i}");
            reg.hello(&hello(&id), t0 + Duration::from_secs(i as u64));
            if i > 0 {
                reg.update(&id, |p| p.streams = 0);
            }
        }
        reg.hello(&hello("new"), SystemTime::now());
        let list = reg.list();
        assert_eq!(list.len(), MAX_PROXIES);
        assert!(reg.get("new").is_some());
        assert!(reg.get("p0").is_some(), "connected proxies are kept");
        assert!(reg.get("p1").is_none(), "the oldest disconnected one went");
        assert!(reg.get("p2").is_some());
    }

    #[test]
    fn nack_reasons_are_bounded() {
        assert_eq!(bounded_reason("short".into()), "short");
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = bounded_reason(long);
        assert!(cut.len() <= MAX_REASON_BYTES + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
