//! Watching the Sentinels of one service.
//!
//! Per service, one aggregator task ([`spawn_watcher`]) and one [`Link`] per Sentinel (the
//! configured ones, plus every Sentinel they report via `SENTINEL SENTINELS`). A link
//! subscribes to the Sentinel's events and polls it every poll interval *and* as soon as an
//! event about the service arrives; each poll becomes a view sent to the aggregator, which
//! re-runs [`topology::decide`] over the latest view of every link and hands the result to
//! the [`State`]. An event therefore costs one round trip to that Sentinel plus a decision,
//! not a wait for every Sentinel.
//!
//! The aggregator also follows the elected leader of a failover ([`promotion`]): on the
//! leader's `+failover-state-send-slaveof-noone` for an epoch newer than the accepted
//! master's, it publishes a topology without a master (proxies hold writes), polls the
//! announced replica's `ROLE` every [`ROLE_POLL_INTERVAL`] and publishes it as master as
//! soon as it answers so, about a second before the majority's `+switch-master`. An abort,
//! or no promotion (or no confirmation by the majority) within the Sentinel's
//! `failover-timeout` (capped at [`MAX_PROMOTION_WAIT`]), returns to the majority's
//! decision; the majority wins whenever it names a master at the promotion's epoch or later.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pivot_sentinel::event::LeaderEvent;
use pivot_sentinel::link::{Link, Report, Trigger};
use pivot_sentinel::promotion::{self, Announcement, Outcome, Promotion, Signal};
use pivot_sentinel::query::{self, NodeAuth};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::metrics::ServiceLabel;
use crate::state::{PromotionStep, State};
use crate::store::StoredService;
use crate::topology::{self, NodeAddr, SentinelView, Topology};

/// The first decision waits for every configured link to report once, at most this long.
const FIRST_DECISION_DEADLINE: Duration = Duration::from_secs(2);
/// How often the replica a leader promotes is asked its `ROLE`.
pub const ROLE_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Longest a promotion may wait for the replica to answer as master, and then for the
/// majority to confirm it, whatever the Sentinels' `failover-timeout` (180 s by default).
pub const MAX_PROMOTION_WAIT: Duration = Duration::from_secs(30);
/// Shortest such wait, and the one used when no Sentinel reports its `failover-timeout`.
const MIN_PROMOTION_WAIT: Duration = Duration::from_secs(1);

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

/// The replica a promotion waits for answered `ROLE` as master.
#[derive(Debug)]
struct RoleAnswer {
    epoch: u64,
    replica: NodeAddr,
}

/// The clock and the `ROLE` poller of the promotion in progress.
struct Running {
    /// When the link received the leader's announcement.
    announced_at: Instant,
    /// Past it the promotion expires (waiting for `ROLE` master, then for the majority).
    deadline: Instant,
    /// The bound each of those two waits gets.
    bound: Duration,
    /// Stops the `ROLE` poller; cancelled when the promotion ends or is replaced.
    poller: CancellationToken,
}

async fn aggregate(
    service: StoredService,
    state: Arc<State>,
    poll_interval: Duration,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    // Links send reports here; closed when the aggregator returns (links then stop at
    // their next send, or earlier through `shutdown`).
    let (tx, mut rx) = mpsc::channel::<Report>(256);
    // `ROLE` pollers answer here; each sends at most once.
    let (role_tx, mut role_rx) = mpsc::channel::<RoleAnswer>(4);
    // "Poll now" for every link of the service, rung when any link sees an event.
    let poke = Arc::new(Notify::new());
    let configured = service.sentinels.len();
    let label = ServiceLabel::new(&service.name);
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
    // What the majority rule alone accepts (its own previous decision feeds the next),
    // and the leader promotion published on top of it.
    let mut majority: Topology = state
        .current()
        .services
        .get(&service.name)
        .map(|s| s.topology.clone())
        .unwrap_or_default();
    let mut promotion: Option<Promotion> = None;
    let mut running: Option<Running> = None;

    loop {
        let promotion_deadline = running.as_ref().map(|r| r.deadline);
        let (trigger, signal) = tokio::select! {
            () = shutdown.cancelled() => break,
            () = &mut deadline, if !decided => (None, None),
            report = rx.recv() => {
                let Some(report) = report else { break };
                match report {
                    Report::View { view, trigger } => {
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
                        (trigger, None)
                    }
                    // No accepted topology yet to follow a leader from.
                    Report::Leader { .. } if !decided => continue,
                    Report::Leader { sentinel, event, at } => {
                        match leader_signal(&sentinel, event, &majority) {
                            Ok(signal) => (None, Some((signal, Instant::from_std(at)))),
                            Err(why) => {
                                info!(leader = %sentinel, %why, "leader event not followed");
                                continue;
                            }
                        }
                    }
                }
            }
            Some(answer) = role_rx.recv() => {
                (None, Some((Signal::Promoted { epoch: answer.epoch, replica: answer.replica }, Instant::now())))
            }
            () = sleep_until_opt(promotion_deadline) => {
                let epoch = promotion.as_ref().map_or(0, |p| p.announcement.epoch);
                (None, Some((Signal::Expired { epoch }, Instant::now())))
            }
        };
        decided = true;
        let all: Vec<SentinelView> = views.values().cloned().collect();
        majority = topology::decide(&majority, &all, configured);

        let mut outcome = None;
        if let Some((signal, at)) = signal {
            let (next, o) = promotion::apply(promotion.as_ref(), &majority, signal.clone());
            promotion = next;
            match &o {
                Outcome::Started => {
                    if let (Some(p), Signal::Announced(a)) = (&promotion, &signal) {
                        if let Some(old) = running.take() {
                            old.poller.cancel();
                        }
                        let bound = promotion_bound(&views, &a.leader);
                        let poller = shutdown.child_token();
                        let auth = backend_auth(&state, &service.name);
                        tracker.spawn(
                            poll_role(
                                p.announcement.replica.clone(),
                                p.announcement.epoch,
                                auth,
                                bound,
                                role_tx.clone(),
                                poller.clone(),
                            )
                            .instrument(
                                info_span!("role_poll", replica = %a.replica, epoch = a.epoch),
                            ),
                        );
                        running = Some(Running {
                            announced_at: at,
                            deadline: Instant::now() + bound,
                            bound,
                            poller,
                        });
                        info!(leader = %a.leader, epoch = a.epoch, replica = %a.replica, old_master = %a.old_master, ?bound,
                            "failover leader promotes a replica: holding writes until it answers as master");
                    }
                }
                Outcome::Promoted => {
                    if let Some(r) = running.as_mut() {
                        r.deadline = Instant::now() + r.bound;
                    }
                }
                Outcome::Ignored(why) => debug!(%why, "promotion signal ignored"),
                Outcome::Aborted(_) | Outcome::Expired | Outcome::Superseded => {}
            }
            outcome = Some(o);
        }
        let promoting = promotion.as_ref().map(|p| p.announcement.replica.clone());
        let (next, settled) = promotion::settle(promotion.as_ref(), &majority);
        promotion = next;
        if settled.is_some() {
            outcome = settled;
        }
        if promotion.is_none()
            && let Some(r) = running.take()
        {
            r.poller.cancel();
            let result = match &outcome {
                Some(Outcome::Aborted(why)) => {
                    warn!(reason = %why, "the failover leader aborted: back to the majority's master");
                    "aborted"
                }
                Some(Outcome::Expired) => {
                    warn!(bound = ?r.bound, "leader promotion not completed or not confirmed in time: back to the majority's master");
                    "expired"
                }
                _ if majority.master == promoting => {
                    info!(master = ?majority.master.as_ref().map(ToString::to_string), epoch = majority.config_epoch,
                        "the Sentinel majority caught up with the leader's promotion");
                    "confirmed"
                }
                _ => {
                    warn!(master = ?majority.master.as_ref().map(ToString::to_string), epoch = majority.config_epoch,
                        "the Sentinel majority names another master at the promotion's epoch or later: it wins");
                    "superseded"
                }
            };
            state.metrics().promotion_outcome(&service.name, result);
        }

        let step = match &outcome {
            Some(Outcome::Started) => Some(PromotionStep::Holding),
            Some(Outcome::Promoted) => Some(PromotionStep::Promoted),
            Some(Outcome::Aborted(_)) => Some(PromotionStep::Aborted),
            Some(Outcome::Expired) => Some(PromotionStep::Expired),
            _ => None,
        };
        let published = promotion::overlay(&majority, promotion.as_ref());
        let version = state.apply_as(&service.name, published, step).await;
        if let (Some(version), Some(Outcome::Promoted), Some(r)) = (version, &outcome, &running) {
            let elapsed = r.announced_at.elapsed();
            state
                .metrics()
                .promotion_seconds
                .get_or_create(&label)
                .observe(elapsed.as_secs_f64());
            info!(
                version,
                elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                "promoted replica published as master (time from the leader's announcement)"
            );
        }
        if let (Some(version), Some(t)) = (version, trigger) {
            log_trigger(version, &t);
        }
    }
    if let Some(r) = running {
        r.poller.cancel();
    }
}

fn log_trigger(version: u64, t: &Trigger) {
    info!(
        version,
        event = %t.event,
        elapsed_ms = t.at.elapsed().as_secs_f64() * 1000.0,
        "new version published after Sentinel event"
    );
}

/// A leader event as a promotion signal; `Err` says why it cannot be followed.
fn leader_signal(
    sentinel: &NodeAddr,
    event: LeaderEvent,
    majority: &Topology,
) -> Result<Signal, String> {
    match event {
        LeaderEvent::Promoting {
            epoch: Some(epoch),
            replica,
            master,
        } => Ok(Signal::Announced(Announcement {
            leader: sentinel.clone(),
            epoch,
            replica,
            old_master: master,
        })),
        LeaderEvent::Promoting {
            epoch: None,
            replica,
            ..
        } => Err(format!(
            "promotion of {replica} announced, but its epoch is unknown (the link missed \
             +try-failover); waiting for the majority (accepted epoch {})",
            majority.config_epoch
        )),
        LeaderEvent::Aborted { epoch, reason } => Ok(Signal::Aborted {
            leader: sentinel.clone(),
            epoch,
            reason,
        }),
    }
}

/// How long a promotion may wait for each step: the leader's `failover-timeout` (what
/// Sentinel itself waits before `-failover-abort-slave-timeout`), within bounds.
fn promotion_bound(views: &BTreeMap<NodeAddr, SentinelView>, leader: &NodeAddr) -> Duration {
    let reported = views
        .get(leader)
        .and_then(|v| v.master.as_ref())
        .and_then(|m| m.failover_timeout_ms)
        .or_else(|| {
            views
                .values()
                .filter_map(|v| v.master.as_ref()?.failover_timeout_ms)
                .max()
        });
    reported
        .map(Duration::from_millis)
        .unwrap_or(MIN_PROMOTION_WAIT)
        .clamp(MIN_PROMOTION_WAIT, MAX_PROMOTION_WAIT)
}

fn backend_auth(state: &State, service: &str) -> Option<NodeAuth> {
    let current = state.current();
    let a = current.services.get(service)?.backend_auth.as_ref()?;
    Some(NodeAuth {
        username: a.username.clone(),
        password: a.password.clone(),
    })
}

/// Asks `replica` its `ROLE` every [`ROLE_POLL_INTERVAL`] until it answers `master` (sent
/// on `tx`), `stop` is cancelled, or `bound` passes.
async fn poll_role(
    replica: NodeAddr,
    epoch: u64,
    auth: Option<NodeAuth>,
    bound: Duration,
    tx: mpsc::Sender<RoleAnswer>,
    stop: CancellationToken,
) {
    let give_up = Instant::now() + bound;
    let mut conn = None;
    let mut last_error = String::new();
    while Instant::now() < give_up {
        if conn.is_none() {
            let connected = tokio::select! {
                () = stop.cancelled() => return,
                c = query::connect(&replica, auth.as_ref()) => c,
            };
            match connected {
                Ok(c) => conn = Some(c),
                Err(e) => last_error = e,
            }
        }
        if let Some(c) = conn.as_mut() {
            let answered = tokio::select! {
                () = stop.cancelled() => return,
                r = query::role(c) => r,
            };
            match answered {
                Ok(role) if role == "master" => {
                    debug!("the promoted replica answers ROLE master");
                    let _ = tx.send(RoleAnswer { epoch, replica }).await;
                    return;
                }
                Ok(role) => last_error = format!("ROLE {role}"),
                Err(e) => {
                    last_error = e;
                    conn = None;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(ROLE_POLL_INTERVAL) => {}
        }
    }
    debug!(%last_error, "the promoted replica did not answer as master in time");
}

/// Completes at `at`, or never.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::topology::MasterInfo;

    fn view(sentinel: &str, timeout_ms: Option<u64>) -> (NodeAddr, SentinelView) {
        let addr: NodeAddr = sentinel.parse().unwrap();
        let mut v = SentinelView::unreachable(addr.clone(), true);
        v.reachable = true;
        v.master = Some(MasterInfo {
            addr: NodeAddr::new("10.0.0.1", 6379),
            config_epoch: 0,
            flags: vec!["master".into()],
            failover_timeout_ms: timeout_ms,
        });
        (addr, v)
    }

    #[test]
    fn promotion_bound_follows_the_leaders_failover_timeout() {
        let views: BTreeMap<_, _> = [view("s:1", Some(3000)), view("s:2", Some(5000))]
            .into_iter()
            .collect();
        let leader: NodeAddr = "s:1".parse().unwrap();
        assert_eq!(promotion_bound(&views, &leader), Duration::from_secs(3));
        // Unknown leader: the longest reported.
        let other: NodeAddr = "s:9".parse().unwrap();
        assert_eq!(promotion_bound(&views, &other), Duration::from_secs(5));
        // Sentinel's default of 180 s is capped; nothing reported is the minimum.
        let views: BTreeMap<_, _> = [view("s:1", Some(180_000))].into_iter().collect();
        assert_eq!(promotion_bound(&views, &leader), MAX_PROMOTION_WAIT);
        let views: BTreeMap<_, _> = [view("s:1", None)].into_iter().collect();
        assert_eq!(promotion_bound(&views, &leader), MIN_PROMOTION_WAIT);
    }

    #[test]
    fn leader_events_without_an_epoch_are_not_followed() {
        let s: NodeAddr = "s:1".parse().unwrap();
        let m = Topology::default();
        let e = LeaderEvent::Promoting {
            epoch: None,
            replica: NodeAddr::new("r", 1),
            master: NodeAddr::new("m", 1),
        };
        assert!(
            leader_signal(&s, e, &m)
                .unwrap_err()
                .contains("epoch is unknown")
        );
        let e = LeaderEvent::Promoting {
            epoch: Some(3),
            replica: NodeAddr::new("r", 1),
            master: NodeAddr::new("m", 1),
        };
        assert!(matches!(
            leader_signal(&s, e, &m),
            Ok(Signal::Announced(Announcement { epoch: 3, .. }))
        ));
    }

    #[tokio::test]
    async fn role_poll_gives_up_within_its_bound() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let (tx, mut rx) = mpsc::channel(1);
        let started = std::time::Instant::now();
        poll_role(
            NodeAddr::new("127.0.0.1", port),
            1,
            None,
            Duration::from_millis(200),
            tx,
            CancellationToken::new(),
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(rx.try_recv().is_err());
    }
}
