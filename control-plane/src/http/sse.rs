//! `GET /api/v1/events/stream`: live updates as Server-Sent Events, and the [`Feed`] behind
//! them, which the gRPC admin API's `WatchEvents` streams too.
//!
//! One [`Feed`] per client merges four sources into [`LiveItem`]s:
//!
//! - `topology`: the fleet snapshot (`watch`), diffed per service against what this client
//!   was last sent, and coalesced to at most one message per service per
//!   [`COALESCE`] (lag numbers move on every Sentinel poll).
//! - `event` and `audit`: the store's live broadcast of stored rows.
//! - `proxy`: the proxy registry's generation (`watch`), diffed per proxy against what this
//!   client was last sent, at most once per [`COALESCE`] (status reports arrive from every
//!   proxy every few seconds; a fleet change also moves `behind`).
//! - `resync`: the broadcast overtook this client (it lagged): refetch everything.
//!
//! The stream starts with the current topology of every service and every known proxy, so
//! that a client needs no separate fetch to be current.
//!
//! Memory per client is bounded however slow it reads: the feed is a stream pulled by the
//! response body (no task, no queue of its own beyond one snapshot's worth of messages),
//! the `watch` keeps only the newest snapshot, and the broadcast's buffer is shared and
//! bounded (a client that falls behind gets `resync`). Streams are capped at
//! [`MAX_STREAMS`] at once (503 beyond) and end when the control plane shuts down.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::ReadAccess;
use super::model::{AuditView, EventView, ProxyView, TopologyView};
use crate::state::FleetState;
use crate::store::Live;

/// At most one `topology` message per service per this long.
pub const COALESCE: Duration = Duration::from_millis(250);
/// Keep-alive comment interval (intermediaries close idle connections).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Concurrent event streams at most.
pub const MAX_STREAMS: usize = 64;

/// `data` of a `topology` message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopologyMessage {
    /// Service name.
    pub service: String,
    /// Global config version of the snapshot.
    pub version: u64,
    /// The service's topology.
    pub topology: TopologyView,
}

/// Live updates (`text/event-stream`). Messages: `topology` ([`TopologyMessage`]),
/// `event` (Event), `audit` (AuditEntry), `proxy` (Proxy), `resync` (`{}`: the client
/// fell behind and should refetch). A comment line is sent every 15 s when idle.
#[utoipa::path(get, path = "/api/v1/events/stream", tag = "events",
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
            description = "Server-Sent Events: `topology`, `event`, `audit`, `proxy`, `resync`"),
        (status = 503, body = ErrorBody, description = "Too many open streams"),
    ))]
pub async fn events_stream(
    _: ReadAccess,
    State(app): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let feed = Feed::open(&app).map_err(ApiError::unavailable)?;
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        loop {
            let item = feed.next().await?;
            if let Some(e) = sse_message(&item) {
                return Some((Ok(e), feed));
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// One live update, whatever the transport.
#[derive(Debug, Clone)]
pub enum LiveItem {
    /// A service's topology changed (or this is the feed's first message about it).
    Topology(TopologyMessage),
    /// An event row was stored.
    Event(EventView),
    /// An audit row was stored.
    Audit(AuditView),
    /// A proxy's view changed (or this is the feed's first message about it).
    Proxy(ProxyView),
    /// The feed fell behind the store's broadcast: the client should refetch.
    Resync,
}

fn sse_message(item: &LiveItem) -> Option<Event> {
    match item {
        LiveItem::Topology(t) => message("topology", t),
        LiveItem::Event(e) => message("event", e),
        LiveItem::Audit(a) => message("audit", a),
        LiveItem::Proxy(p) => message("proxy", p),
        LiveItem::Resync => message("resync", &serde_json::json!({})),
    }
}

/// What was last sent for one service.
struct Sent {
    at: Instant,
    view: TopologyView,
}

/// One client's merged sources (see the module docs).
pub struct Feed {
    app: AppState,
    fleet: watch::Receiver<Arc<FleetState>>,
    live: broadcast::Receiver<Live>,
    registry: watch::Receiver<u64>,
    shutdown: CancellationToken,
    topology_sent: HashMap<String, Sent>,
    /// Services changed within their coalescing window, flushed at `flush_at`.
    dirty: HashSet<String>,
    flush_at: Option<Instant>,
    proxies_sent: HashMap<String, ProxyView>,
    /// When the proxies are compared next (`None`: nothing changed since the last time).
    proxies_due: Option<Instant>,
    proxies_scanned: Option<Instant>,
    /// Messages ready to go: at most one per service and proxy plus one live row.
    ready: VecDeque<LiveItem>,
    /// Released when the stream is dropped.
    _permit: OwnedSemaphorePermit,
}

fn message<T: Serialize>(name: &str, data: &T) -> Option<Event> {
    match Event::default().event(name).json_data(data) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::error!(error = %e, message = name, "cannot encode an SSE message");
            None
        }
    }
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl Feed {
    /// A feed of `app`'s live updates, starting with the current topology of every
    /// service and every known proxy. Fails when [`MAX_STREAMS`] feeds are open (SSE and
    /// gRPC together).
    pub fn open(app: &AppState) -> Result<Feed, String> {
        let permit = app.streams.clone().try_acquire_owned().map_err(|_| {
            format!("too many open event streams (at most {MAX_STREAMS}); retry later")
        })?;
        Ok(Feed::new(app, permit))
    }

    fn new(app: &AppState, permit: OwnedSemaphorePermit) -> Feed {
        let mut fleet = app.state.subscribe();
        // The first snapshot and proxy list are sent at once (below), not as changes.
        fleet.borrow_and_update();
        let mut registry = app.registry.subscribe();
        registry.borrow_and_update();
        let mut feed = Feed {
            app: app.clone(),
            fleet,
            live: app.admin.subscribe(),
            registry,
            shutdown: app.shutdown.clone(),
            topology_sent: HashMap::new(),
            dirty: HashSet::new(),
            flush_at: None,
            proxies_sent: HashMap::new(),
            proxies_due: None,
            proxies_scanned: None,
            ready: VecDeque::new(),
            _permit: permit,
        };
        let now = Instant::now();
        feed.topology(now);
        feed.proxies(now);
        feed
    }

    /// The next update; `None` when the control plane shuts down.
    pub async fn next(&mut self) -> Option<LiveItem> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            let flush_at = self.flush_at;
            let proxies_due = self.proxies_due;
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                changed = self.fleet.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let now = Instant::now();
                    self.topology(now);
                    // `behind` compares with the fleet's versions.
                    self.proxies_changed(now);
                }
                () = sleep_until(flush_at), if flush_at.is_some() => {
                    self.flush_at = None;
                    self.topology(Instant::now());
                }
                live = self.live.recv() => match live {
                    Ok(Live::Event(row)) => self.ready.push_back(LiveItem::Event(EventView::from(row))),
                    Ok(Live::Audit(entry)) => self.ready.push_back(LiveItem::Audit(AuditView::from(entry))),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "event stream client fell behind; resync");
                        self.ready.push_back(LiveItem::Resync);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                changed = self.registry.changed(), if proxies_due.is_none() => {
                    if changed.is_err() {
                        return None;
                    }
                    self.proxies_changed(Instant::now());
                }
                () = sleep_until(proxies_due), if proxies_due.is_some() => {
                    self.proxies_due = None;
                    self.registry.borrow_and_update();
                    self.proxies(Instant::now());
                }
            }
        }
    }

    /// Queues a `topology` message for every service whose view differs from what was
    /// sent, unless one went out within [`COALESCE`]: those are sent at `flush_at`.
    fn topology(&mut self, now: Instant) {
        let fleet = self.fleet.borrow_and_update().clone();
        self.topology_sent
            .retain(|name, _| fleet.services.contains_key(name));
        self.dirty.retain(|name| fleet.services.contains_key(name));
        for (name, s) in &fleet.services {
            let view = TopologyView::of(s);
            let next_allowed = match self.topology_sent.get(name) {
                Some(sent) if sent.view == view => {
                    self.dirty.remove(name);
                    continue;
                }
                Some(sent) => sent.at + COALESCE,
                None => now,
            };
            if next_allowed > now {
                self.dirty.insert(name.clone());
                self.flush_at = Some(self.flush_at.map_or(next_allowed, |f| f.min(next_allowed)));
                continue;
            }
            self.dirty.remove(name);
            self.ready.push_back(LiveItem::Topology(TopologyMessage {
                service: name.clone(),
                version: fleet.version,
                topology: view.clone(),
            }));
            self.topology_sent
                .insert(name.clone(), Sent { at: now, view });
        }
    }

    /// Schedules a comparison of the proxies: at once, or [`COALESCE`] after the last.
    fn proxies_changed(&mut self, now: Instant) {
        if self.proxies_due.is_none() {
            let next = self
                .proxies_scanned
                .map_or(now, |at| (at + COALESCE).max(now));
            self.proxies_due = Some(next);
        }
    }

    /// Queues a `proxy` message for every proxy whose view changed.
    fn proxies(&mut self, now: Instant) {
        self.proxies_scanned = Some(now);
        let fleet = self.app.state.current();
        let list = self.app.registry.list();
        // The registry forgets long-gone proxies (it is bounded); so does this client.
        let known: HashSet<&str> = list.iter().map(|p| p.proxy_id.as_str()).collect();
        self.proxies_sent
            .retain(|id, _| known.contains(id.as_str()));
        for p in &list {
            let view = ProxyView::new(p, &fleet);
            if self.proxies_sent.get(&p.proxy_id) == Some(&view) {
                continue;
            }
            self.proxies_sent.insert(p.proxy_id.clone(), view.clone());
            self.ready.push_back(LiveItem::Proxy(view));
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
