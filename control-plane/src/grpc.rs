//! The `pivot.v1.ProxyDiscovery` gRPC service: streams versioned configuration to proxies
//! and records which version each proxy runs ([`ProxyRegistry`]).
//!
//! One task per stream: it sends the current configuration of the proxy's services at
//! once, then a new update whenever a subscribed service's topology changes version, and
//! reads ACK/NACKs. The task (and so the stream) ends when the proxy goes away or
//! shutdown starts.

pub mod convert;

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use pivot_proto::v1::proxy_discovery_server::ProxyDiscovery;
use pivot_proto::v1::proxy_message::Msg;
use pivot_proto::v1::{ConfigUpdate, Hello, ProxyMessage};
use tokio::sync::mpsc;
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

/// What the control plane knows about one proxy (in memory; mirrored to the store).
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// Every proxy seen since start, by id.
#[derive(Debug, Default)]
pub struct ProxyRegistry {
    proxies: Mutex<HashMap<String, ProxyInfo>>,
}

impl ProxyRegistry {
    /// All proxies, connected first, then by id.
    pub fn list(&self) -> Vec<ProxyInfo> {
        let mut v: Vec<ProxyInfo> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| (b.streams > 0, &a.proxy_id).cmp(&(a.streams > 0, &b.proxy_id)));
        v
    }

    /// Number of proxies with an open stream.
    pub fn connected(&self) -> usize {
        self.lock().values().filter(|p| p.streams > 0).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ProxyInfo>> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.proxies.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hello(&self, h: &Hello, now: SystemTime) {
        let mut map = self.lock();
        let p = map.entry(h.proxy_id.clone()).or_insert_with(|| ProxyInfo {
            proxy_id: h.proxy_id.clone(),
            listen_addr: String::new(),
            build_version: String::new(),
            services: Vec::new(),
            streams: 0,
            acked_version: None,
            last_nack: None,
            last_nack_version: None,
            last_seen: now,
        });
        p.listen_addr = h.listen_addr.clone();
        p.build_version = h.build_version.clone();
        p.services = h.services.clone();
        p.streams += 1;
        p.last_seen = now;
        if p.acked_version.is_none() && h.running_version > 0 {
            p.acked_version = Some(h.running_version);
        }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut ProxyInfo)) {
        if let Some(p) = self.lock().get_mut(id) {
            f(p);
        }
    }
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
        }
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
        self.registry.hello(&hello, now);
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
            tokio::select! {
                () = self.svc.shutdown.cancelled() => break,
                r = state_rx.changed() => if r.is_err() { break },
                m = self.inbound.message() => match m {
                    Ok(Some(m)) => self.handle(m),
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
                let reason = nack.reason.clone();
                self.svc.registry.update(&id, |p| {
                    p.last_nack = Some(reason);
                    p.last_nack_version = Some(version);
                    p.last_seen = now;
                });
                self.svc.writer.send(Write::ProxyNack {
                    proxy_id: id,
                    reason: nack.reason,
                    at: now,
                });
            }
            Some(Msg::Hello(_)) => warn!("repeated Hello on an open stream; ignored"),
            None => warn!("empty ProxyMessage; ignored"),
        }
    }
}
