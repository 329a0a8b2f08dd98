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
//! The aggregator also follows the elected leader of a failover
//! ([`pivot_sentinel::promotion`], driven by [`LeaderFollower`], the code the proxy's
//! follower uses too): on the
//! leader's `+failover-state-send-slaveof-noone` for an epoch newer than the accepted
//! master's, it publishes a topology without a master (proxies hold writes), polls the
//! announced replica's `ROLE` every [`leader::ROLE_POLL_INTERVAL`] and publishes it as master as
//! soon as it answers so, about a second before the majority's `+switch-master`. An abort,
//! or no promotion (or no confirmation by the majority) within the Sentinel's
//! `failover-timeout` (capped at [`leader::MAX_PROMOTION_WAIT`]), returns to the majority's
//! decision; the majority wins whenever it names a master at the promotion's epoch or later.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pivot_sentinel::leader::{self, LeaderFollower};
use pivot_sentinel::link::{Link, Report, Trigger};
use pivot_sentinel::promotion::Outcome;
use pivot_sentinel::query::NodeAuth;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span};

use crate::metrics::ServiceLabel;
use crate::state::{PromotionStep, State};
use crate::store::StoredService;
use crate::topology::{self, NodeAddr, SentinelView, Topology};

/// The first decision waits for every configured link to report once, at most this long.
const FIRST_DECISION_DEADLINE: Duration = Duration::from_secs(2);
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
    // Links send reports here; closed when the aggregator returns (links then stop at
    // their next send, or earlier through `shutdown`).
    let (tx, mut rx) = mpsc::channel::<Report>(256);
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
    let mut leader = LeaderFollower::new(tracker.clone(), shutdown.clone());

    loop {
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
                        match leader::leader_signal(&sentinel, event, &majority) {
                            Ok(signal) => (None, Some((signal, Instant::from_std(at)))),
                            Err(why) => {
                                info!(leader = %sentinel, %why, "leader event not followed");
                                continue;
                            }
                        }
                    }
                }
            }
            signal = leader.next_signal() => (None, Some(signal)),
        };
        decided = true;
        let all: Vec<SentinelView> = views.values().cloned().collect();
        majority = topology::decide(&majority, &all, configured);

        let step = leader.step(&majority, signal, &views, || {
            backend_auth(&state, &service.name)
        });
        if let Some(result) = step.ended {
            state.metrics().promotion_outcome(&service.name, result);
        }
        let promotion_step = match &step.outcome {
            Some(Outcome::Started) => Some(PromotionStep::Holding),
            Some(Outcome::Promoted) => Some(PromotionStep::Promoted),
            Some(Outcome::Aborted(_)) => Some(PromotionStep::Aborted),
            Some(Outcome::Expired) => Some(PromotionStep::Expired),
            _ => None,
        };
        let published = leader.overlay(&majority);
        let version = state
            .apply_as(&service.name, published, promotion_step)
            .await;
        if let (Some(version), Some(elapsed)) = (version, step.promoted_after) {
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
}

fn log_trigger(version: u64, t: &Trigger) {
    info!(
        version,
        event = %t.event,
        elapsed_ms = t.at.elapsed().as_secs_f64() * 1000.0,
        "new version published after Sentinel event"
    );
}

fn backend_auth(state: &State, service: &str) -> Option<NodeAuth> {
    let current = state.current();
    let a = current.services.get(service)?.backend_auth.as_ref()?;
    Some(NodeAuth {
        username: a.username.clone(),
        password: a.password.clone(),
    })
}
