//! Watching the Sentinels of one service.
//!
//! Per service, one aggregator task ([`spawn_watcher`]) and one link task per Sentinel
//! (the configured ones, plus every Sentinel they report via `SENTINEL SENTINELS`). A link
//! subscribes to the Sentinel's event channels and polls `SENTINEL MASTER` / `REPLICAS` /
//! `SENTINELS` every poll interval *and* as soon as an event about the service arrives;
//! each poll becomes a [`SentinelView`] sent to the aggregator, which re-runs
//! [`topology::decide`] over the latest view of every link and hands the result to the
//! [`State`]. An event therefore costs one round trip to that Sentinel plus a decision,
//! not a wait for every Sentinel.
//!
//! Every I/O step has a 1 s timeout, so a paused Sentinel marks its link unavailable
//! instead of hanging; failed links reconnect with capped exponential backoff.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::state::State;
use crate::store::StoredService;
use crate::topology::{self, MasterInfo, NodeAddr, ReplicaInfo, SentinelView};

/// Timeout of every connect, subscribe and command to a Sentinel.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// First reconnect delay.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The first decision waits for every configured link to report once, at most this long.
const FIRST_DECISION_DEADLINE: Duration = Duration::from_secs(2);

/// Sentinel event channels a link subscribes to (plus the `-failover-abort-*` pattern).
const EVENT_CHANNELS: &[&str] = &[
    "+switch-master",
    "+sdown",
    "-sdown",
    "+odown",
    "-odown",
    "+slave",
    "+convert-to-slave",
    "+failover-end",
    "+failover-end-for-timeout",
    "+reboot",
    "+try-failover",
    "+elected-leader",
    "+failover-state-select-slave",
    "+selected-slave",
    "+failover-state-send-slaveof-noone",
    "+failover-state-wait-promotion",
    "+promoted-slave",
    "+failover-state-reconf-slaves",
    "+slave-reconf-done",
    "+sentinel",
    "+fix-slave-config",
    "-role-change",
    "+role-change",
];
const EVENT_PATTERN: &str = "-failover-abort-*";

/// What triggered a poll: a Sentinel event, with when it arrived.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// The event channel, e.g. `+switch-master`.
    pub event: String,
    /// When the link received it.
    pub at: Instant,
}

/// A link's report to its aggregator.
#[derive(Debug)]
struct Report {
    view: SentinelView,
    trigger: Option<Trigger>,
}

/// Starts watching `service`: the aggregator and its links run on `tracker` until
/// `shutdown` is cancelled.
pub fn spawn_watcher(
    service: StoredService,
    state: Arc<State>,
    poll_interval: Duration,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let span = info_span!("watcher", service = %service.name);
    let t = tracker.clone();
    tracker.spawn(aggregate(service, state, poll_interval, t, shutdown).instrument(span));
}

async fn aggregate(
    service: StoredService,
    state: Arc<State>,
    poll_interval: Duration,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    // Links send views here; closed when the aggregator returns (links then stop at
    // their next send, or earlier through `shutdown`).
    let (tx, mut rx) = mpsc::channel::<Report>(256);
    // "Poll now" for every link of the service, rung when any link sees an event.
    let poke = Arc::new(Notify::new());
    let configured = service.sentinels.len();
    let mut views: BTreeMap<NodeAddr, SentinelView> = BTreeMap::new();
    let spawn_link = |addr: NodeAddr, is_configured: bool| {
        let link = Link {
            service: service.name.clone(),
            sentinel: addr.clone(),
            configured: is_configured,
            poll_interval,
            tx: tx.clone(),
            poke: poke.clone(),
            shutdown: shutdown.clone(),
        };
        let span = info_span!("sentinel_link", service = %service.name, sentinel = %addr);
        tracker.spawn(link.run().instrument(span));
    };
    for addr in &service.sentinels {
        views.insert(addr.clone(), SentinelView::unreachable(addr.clone(), true));
        spawn_link(addr.clone(), true);
    }
    let mut reported: HashSet<NodeAddr> = HashSet::new();
    let mut decided = false;
    let deadline = tokio::time::sleep(FIRST_DECISION_DEADLINE);
    tokio::pin!(deadline);

    loop {
        let trigger = tokio::select! {
            () = shutdown.cancelled() => return,
            () = &mut deadline, if !decided => None,
            report = rx.recv() => {
                let Some(Report { view, trigger }) = report else { return };
                for s in &view.sentinels {
                    if !views.contains_key(s) {
                        info!(sentinel = %s, "discovered Sentinel");
                        views.insert(s.clone(), SentinelView::unreachable(s.clone(), false));
                        spawn_link(s.clone(), false);
                    }
                }
                reported.insert(view.sentinel.clone());
                views.insert(view.sentinel.clone(), view);
                if !decided && !service.sentinels.iter().all(|s| reported.contains(s)) {
                    continue;
                }
                trigger
            }
        };
        decided = true;
        let all: Vec<SentinelView> = views.values().cloned().collect();
        let previous = state
            .current()
            .services
            .get(&service.name)
            .map(|s| s.topology.clone())
            .unwrap_or_default();
        let next = topology::decide(&previous, &all, configured);
        if let Some(version) = state.apply(&service.name, next).await
            && let Some(t) = trigger
        {
            info!(
                version,
                event = %t.event,
                elapsed_ms = t.at.elapsed().as_secs_f64() * 1000.0,
                "new version published after Sentinel event"
            );
        }
    }
}

/// One Sentinel link.
struct Link {
    service: String,
    sentinel: NodeAddr,
    configured: bool,
    poll_interval: Duration,
    tx: mpsc::Sender<Report>,
    poke: Arc<Notify>,
    shutdown: CancellationToken,
}

/// A connected link: a command connection and the event stream.
struct Session {
    conn: MultiplexedConnection,
    events: redis::aio::PubSubStream,
}

impl Link {
    async fn run(self) {
        let mut backoff = MIN_BACKOFF;
        // Log the first failure of a streak at warn, the retries at debug.
        let mut was_up = true;
        loop {
            let failure = match self.connect().await {
                Ok(session) => {
                    if !was_up {
                        info!("Sentinel link up");
                    }
                    was_up = true;
                    backoff = MIN_BACKOFF;
                    self.session(session).await
                }
                Err(e) => e,
            };
            if self.shutdown.is_cancelled() {
                return;
            }
            if was_up {
                warn!(error = %failure, "Sentinel link down; reconnecting");
            } else {
                debug!(error = %failure, "Sentinel still unreachable");
            }
            was_up = false;
            let view = SentinelView::unreachable(self.sentinel.clone(), self.configured);
            if self
                .tx
                .send(Report {
                    view,
                    trigger: None,
                })
                .await
                .is_err()
            {
                return;
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(jitter(backoff)) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn connect(&self) -> Result<Session, String> {
        let url = format!("redis://{}/", self.sentinel);
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(IO_TIMEOUT))
            .set_response_timeout(Some(IO_TIMEOUT));
        let conn = timed(client.get_multiplexed_async_connection_with_config(&config)).await?;
        let mut pubsub = timed(client.get_async_pubsub()).await?;
        for ch in EVENT_CHANNELS {
            timed(pubsub.subscribe(*ch)).await?;
        }
        timed(pubsub.psubscribe(EVENT_PATTERN)).await?;
        Ok(Session {
            conn,
            events: pubsub.into_on_message(),
        })
    }

    /// Polls until the link fails (returns why) or shutdown.
    async fn session(&self, mut s: Session) -> String {
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let trigger = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return "shutdown".into(),
                msg = s.events.next() => {
                    let Some(msg) = msg else { return "event stream closed".into() };
                    let channel = msg.get_channel_name().to_string();
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if !concerns(&payload, &self.service) {
                        continue;
                    }
                    debug!(event = %channel, %payload, "Sentinel event");
                    // Siblings may know more already (e.g. the leader after a promotion).
                    self.poke.notify_waiters();
                    Some(Trigger { event: channel, at: Instant::now() })
                }
                _ = tick.tick() => None,
                () = self.poke.notified() => None,
            };
            let view = match poll(&mut s.conn, &self.service, &self.sentinel, self.configured).await
            {
                Ok(v) => v,
                Err(e) => return e,
            };
            if self.tx.send(Report { view, trigger }).await.is_err() {
                return "aggregator gone".into();
            }
        }
    }
}

/// Whether a Sentinel event payload is about `service`. Instance events end in
/// `@ <master-name> <ip> <port>`, master events start `master <name> ...`, and
/// `+switch-master` starts with the name: a whole-word match covers all of them.
fn concerns(payload: &str, service: &str) -> bool {
    payload.split_whitespace().any(|w| w == service)
}

/// Up to +25 % so that links don't reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let extra = rand::random_range(0.0..0.25);
    d.mul_f64(1.0 + extra)
}

async fn timed<T, F>(f: F) -> Result<T, String>
where
    F: Future<Output = redis::RedisResult<T>>,
{
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {IO_TIMEOUT:?}")),
    }
}

type Fields = HashMap<String, String>;

/// One round trip (three pipelined commands) to the Sentinel.
async fn poll(
    conn: &mut MultiplexedConnection,
    service: &str,
    sentinel: &NodeAddr,
    configured: bool,
) -> Result<SentinelView, String> {
    let master_cmd = redis::cmd("SENTINEL").arg("MASTER").arg(service).to_owned();
    let replicas_cmd = redis::cmd("SENTINEL")
        .arg("REPLICAS")
        .arg(service)
        .to_owned();
    let sentinels_cmd = redis::cmd("SENTINEL")
        .arg("SENTINELS")
        .arg(service)
        .to_owned();
    let (mut c1, mut c2, mut c3) = (conn.clone(), conn.clone(), conn.clone());
    let (m, r, s) = tokio::join!(
        timed(master_cmd.query_async::<Fields>(&mut c1)),
        timed(replicas_cmd.query_async::<Vec<Fields>>(&mut c2)),
        timed(sentinels_cmd.query_async::<Vec<Fields>>(&mut c3)),
    );
    let observed_at = SystemTime::now();
    let master = match m {
        Ok(fields) => Some(parse_master(&fields)?),
        // The Sentinel answers but doesn't monitor this service: no opinion.
        Err(e) if e.contains("No such master") => {
            return Ok(SentinelView {
                reachable: true,
                observed_at,
                ..SentinelView::unreachable(sentinel.clone(), configured)
            });
        }
        Err(e) => return Err(e),
    };
    let replicas = r?.iter().filter_map(parse_replica).collect();
    let sentinels = s?.iter().filter_map(parse_addr).collect();
    Ok(SentinelView {
        sentinel: sentinel.clone(),
        configured,
        reachable: true,
        master,
        replicas,
        master_offset: None,
        sentinels,
        observed_at,
    })
}

fn parse_addr(f: &Fields) -> Option<NodeAddr> {
    let ip = f.get("ip")?;
    let port = f.get("port")?.parse().ok()?;
    Some(NodeAddr::new(ip.clone(), port))
}

fn flags(f: &Fields) -> Vec<String> {
    f.get("flags")
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default()
}

fn parse_master(f: &Fields) -> Result<MasterInfo, String> {
    let addr = parse_addr(f).ok_or("SENTINEL MASTER without ip/port")?;
    Ok(MasterInfo {
        addr,
        config_epoch: f
            .get("config-epoch")
            .and_then(|e| e.parse().ok())
            .unwrap_or(0),
        flags: flags(f),
    })
}

fn parse_replica(f: &Fields) -> Option<ReplicaInfo> {
    Some(ReplicaInfo {
        addr: parse_addr(f)?,
        flags: flags(f),
        master_link_status: f.get("master-link-status").cloned().unwrap_or_default(),
        master_link_down_ms: f
            .get("master-link-down-time")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        repl_offset: f.get("slave-repl-offset").and_then(|v| v.parse().ok()),
        role_reported: f.get("role-reported").cloned().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn event_filter() {
        assert!(concerns(
            "mymaster 127.0.0.1 7000 127.0.0.1 7002",
            "mymaster"
        ));
        assert!(concerns(
            "master mymaster 127.0.0.1 7000 #quorum 2/2",
            "mymaster"
        ));
        assert!(concerns(
            "slave 127.0.0.1:7001 127.0.0.1 7001 @ mymaster 127.0.0.1 7000",
            "mymaster"
        ));
        assert!(!concerns("master mymaster2 127.0.0.1 7000", "mymaster"));
    }

    #[test]
    fn parses_sentinel_replies() {
        let m = parse_master(&fields(&[
            ("ip", "127.0.0.1"),
            ("port", "7000"),
            ("flags", "master,s_down"),
            ("config-epoch", "3"),
        ]))
        .unwrap();
        assert_eq!(m.addr, NodeAddr::new("127.0.0.1", 7000));
        assert_eq!(m.config_epoch, 3);
        assert_eq!(m.flags, vec!["master", "s_down"]);
        let r = parse_replica(&fields(&[
            ("ip", "127.0.0.1"),
            ("port", "7001"),
            ("flags", "slave"),
            ("master-link-status", "ok"),
            ("master-link-down-time", "0"),
            ("slave-repl-offset", "12345"),
        ]))
        .unwrap();
        assert_eq!(r.repl_offset, Some(12345));
        assert_eq!(r.master_link_status, "ok");
        assert!(parse_replica(&fields(&[("ip", "x")])).is_none());
        assert!(parse_master(&fields(&[])).is_err());
    }

    #[tokio::test]
    async fn closed_port_reports_unreachable_quickly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let (tx, mut rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let link = Link {
            service: "svc".into(),
            sentinel: NodeAddr::new("127.0.0.1", port),
            configured: true,
            poll_interval: Duration::from_millis(100),
            tx,
            poke: Arc::new(Notify::new()),
            shutdown: shutdown.clone(),
        };
        let task = tokio::spawn(link.run());
        let r = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(!r.view.reachable);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .unwrap()
            .unwrap();
    }
}
