//! Driving a leader promotion ([`crate::promotion`]) from Sentinel links: turning the
//! leader's events into signals, the clock, and the `ROLE` poller of the announced replica.
//!
//! Shared by the control plane's aggregator and the proxy's follower (invariant I6), so both
//! follow a failover's elected leader with the same code. The owner feeds it the leader's
//! events ([`leader_signal`]) and, through [`LeaderFollower::next_signal`], its own timer and
//! `ROLE` answers; after each new majority decision it calls [`LeaderFollower::step`] and
//! publishes [`LeaderFollower::overlay`].

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::event::LeaderEvent;
use crate::promotion::{self, Announcement, Outcome, Promotion, Signal};
use crate::query::{self, NodeAuth};
use crate::topology::{NodeAddr, SentinelView, Topology};

/// How often the replica a leader promotes is asked its `ROLE`.
pub const ROLE_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Longest a promotion may wait for the replica to answer as master, and then for the
/// majority to confirm it, whatever the Sentinels' `failover-timeout` (180 s by default).
pub const MAX_PROMOTION_WAIT: Duration = Duration::from_secs(30);
/// Shortest such wait, and the one used when no Sentinel reports its `failover-timeout`.
pub const MIN_PROMOTION_WAIT: Duration = Duration::from_secs(1);

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

/// What one [`LeaderFollower::step`] did.
#[derive(Debug, Default)]
pub struct Step {
    /// What the signal or the majority decision did to the promotion, if anything.
    pub outcome: Option<Outcome>,
    /// The promotion ended in this step: `confirmed`, `superseded`, `aborted` or `expired`.
    pub ended: Option<&'static str>,
    /// The replica answered as master in this step: time since the leader's announcement.
    pub promoted_after: Option<Duration>,
}

/// A leader promotion in progress (or none), its clock and its `ROLE` poller.
pub struct LeaderFollower {
    promotion: Option<Promotion>,
    running: Option<Running>,
    /// `ROLE` pollers answer here; each sends at most once.
    role_tx: mpsc::Sender<RoleAnswer>,
    role_rx: mpsc::Receiver<RoleAnswer>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl LeaderFollower {
    /// No promotion yet; pollers run on `tracker` and stop with `shutdown` (or when the
    /// promotion ends, or this is dropped).
    pub fn new(tracker: TaskTracker, shutdown: CancellationToken) -> Self {
        let (role_tx, role_rx) = mpsc::channel(4);
        Self {
            promotion: None,
            running: None,
            role_tx,
            role_rx,
            tracker,
            shutdown,
        }
    }

    /// The promotion in progress.
    pub fn promotion(&self) -> Option<&Promotion> {
        self.promotion.as_ref()
    }

    /// The next signal of its own: the announced replica answered `ROLE` master, or the
    /// promotion's deadline passed. Pending while no promotion runs. Cancel-safe.
    pub async fn next_signal(&mut self) -> (Signal, Instant) {
        let deadline = self.running.as_ref().map(|r| r.deadline);
        tokio::select! {
            Some(answer) = self.role_rx.recv() => (
                Signal::Promoted { epoch: answer.epoch, replica: answer.replica },
                Instant::now(),
            ),
            () = sleep_until_opt(deadline) => {
                let epoch = self.promotion.as_ref().map_or(0, |p| p.announcement.epoch);
                (Signal::Expired { epoch }, Instant::now())
            }
        }
    }

    /// Applies `signal` (if any) and then `majority` (the majority rule's latest decision)
    /// to the promotion: starts the `ROLE` poller on an announcement (with `auth`, the
    /// service's backend credentials), stops it when the promotion ends. `views` are the
    /// Sentinels' latest views (the leader's `failover-timeout` bounds each wait).
    pub fn step(
        &mut self,
        majority: &Topology,
        signal: Option<(Signal, Instant)>,
        views: &BTreeMap<NodeAddr, SentinelView>,
        auth: impl FnOnce() -> Option<NodeAuth>,
    ) -> Step {
        let mut step = Step::default();
        if let Some((signal, at)) = signal {
            let (next, o) = promotion::apply(self.promotion.as_ref(), majority, signal.clone());
            self.promotion = next;
            match &o {
                Outcome::Started => {
                    if let (Some(p), Signal::Announced(a)) = (&self.promotion, &signal) {
                        if let Some(old) = self.running.take() {
                            old.poller.cancel();
                        }
                        let bound = promotion_bound(views, &a.leader);
                        let poller = self.shutdown.child_token();
                        self.tracker.spawn(
                            poll_role(
                                p.announcement.replica.clone(),
                                p.announcement.epoch,
                                auth(),
                                bound,
                                self.role_tx.clone(),
                                poller.clone(),
                            )
                            .instrument(
                                info_span!("role_poll", replica = %a.replica, epoch = a.epoch),
                            ),
                        );
                        self.running = Some(Running {
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
                    if let Some(r) = self.running.as_mut() {
                        r.deadline = Instant::now() + r.bound;
                        step.promoted_after = Some(r.announced_at.elapsed());
                    }
                }
                Outcome::Ignored(why) => debug!(%why, "promotion signal ignored"),
                Outcome::Aborted(_) | Outcome::Expired | Outcome::Superseded => {}
            }
            step.outcome = Some(o);
        }
        let promoting = self
            .promotion
            .as_ref()
            .map(|p| p.announcement.replica.clone());
        let (next, settled) = promotion::settle(self.promotion.as_ref(), majority);
        self.promotion = next;
        if settled.is_some() {
            step.outcome = settled;
        }
        if self.promotion.is_none()
            && let Some(r) = self.running.take()
        {
            r.poller.cancel();
            step.ended = Some(match &step.outcome {
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
            });
        }
        step
    }

    /// The topology to publish: `majority`, or what the promotion in progress makes of it.
    pub fn overlay(&self, majority: &Topology) -> Topology {
        promotion::overlay(majority, self.promotion.as_ref())
    }
}

impl Drop for LeaderFollower {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.poller.cancel();
        }
    }
}

/// A leader event as a promotion signal; `Err` says why it cannot be followed.
pub fn leader_signal(
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
pub fn promotion_bound(views: &BTreeMap<NodeAddr, SentinelView>, leader: &NodeAddr) -> Duration {
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

    #[tokio::test]
    async fn an_announcement_holds_and_expires_without_a_master_answer() {
        // The announced replica does not exist: the promotion holds, then expires.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut majority = Topology {
            master: Some(NodeAddr::new("127.0.0.1", 1)),
            config_epoch: 1,
            ..Topology::default()
        };
        majority.master_reason = "named by 3 of 3".into();
        let tracker = TaskTracker::new();
        let mut f = LeaderFollower::new(tracker.clone(), CancellationToken::new());
        let leader: NodeAddr = "127.0.0.1:26379".parse().unwrap();
        let signal = leader_signal(
            &leader,
            LeaderEvent::Promoting {
                epoch: Some(2),
                replica: NodeAddr::new("127.0.0.1", port),
                master: NodeAddr::new("127.0.0.1", 1),
            },
            &majority,
        )
        .unwrap();
        let step = f.step(
            &majority,
            Some((signal, Instant::now())),
            &BTreeMap::new(),
            || None,
        );
        assert_eq!(step.outcome, Some(Outcome::Started));
        assert_eq!(f.overlay(&majority).master, None);
        let next = tokio::time::timeout(MIN_PROMOTION_WAIT * 3, f.next_signal())
            .await
            .unwrap();
        assert!(matches!(next.0, Signal::Expired { epoch: 2 }), "{next:?}");
        let step = f.step(&majority, Some(next), &BTreeMap::new(), || None);
        assert_eq!(step.ended, Some("expired"));
        assert_eq!(f.overlay(&majority), majority);
        tracker.close();
        tokio::time::timeout(Duration::from_secs(2), tracker.wait())
            .await
            .unwrap();
    }
}
