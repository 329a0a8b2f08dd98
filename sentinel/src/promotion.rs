//! Following the elected leader of a Sentinel failover ahead of the majority (DESIGN.md,
//! data flow step 2; SENTINEL.md for the timelines).
//!
//! The Sentinel majority names the promoted replica about a second after it already is
//! master, and the old master stays writable meanwhile: every write it acknowledges then
//! is lost. The leader of the failover announces the replica it promotes
//! (`+failover-state-send-slaveof-noone`) before it promotes it, so:
//!
//! 1. on that announcement, for an epoch newer than the accepted master's, writes are held
//!    (the published topology has no master, and the replica being promoted is no longer
//!    a replica: [`Phase::Holding`]);
//! 2. once that replica answers `ROLE` as master, it is published as master at the new
//!    epoch ([`Phase::Promoted`]);
//! 3. the promotion ends when the majority names a master at its epoch or a later one
//!    (the majority rule wins again), when the leader aborts (`-failover-abort-*`), or when
//!    it does not complete within a bound ([`Signal::Expired`]); then the majority's
//!    decision is published as it is.
//!
//! Pure state transitions: [`apply`] takes a [`Signal`], [`settle`] takes a new majority
//! decision, [`overlay`] computes the topology to publish. The watcher owns the timers and
//! the `ROLE` polling.

use crate::topology::{NodeAddr, Topology};

/// A failover leader's announcement of the replica it promotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The Sentinel running the failover.
    pub leader: NodeAddr,
    /// The failover's epoch: the promoted replica's config epoch once it completes.
    pub epoch: u64,
    /// The replica being promoted.
    pub replica: NodeAddr,
    /// The master it replaces, as the leader names it.
    pub old_master: NodeAddr,
}

/// Where a promotion is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Announced: writes are held until the replica answers as master.
    Holding,
    /// The replica answers `ROLE` as master: it is the master until the majority agrees.
    Promoted,
}

/// A leader promotion in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// What the leader announced.
    pub announcement: Announcement,
    /// How far it got.
    pub phase: Phase,
}

/// What can happen to a promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The leader announced a promotion.
    Announced(Announcement),
    /// `replica` answered `ROLE` as master (polled after the announcement at `epoch`).
    Promoted {
        /// The announcement's epoch.
        epoch: u64,
        /// The replica that answered.
        replica: NodeAddr,
    },
    /// `leader` aborted its failover (`epoch` when known).
    Aborted {
        /// The Sentinel that published the abort.
        leader: NodeAddr,
        /// The aborted failover's epoch, when the link knows it.
        epoch: Option<u64>,
        /// The abort event, e.g. `failover-abort-slave-timeout`.
        reason: String,
    },
    /// The promotion at `epoch` did not complete (or was not confirmed by the majority)
    /// within its bound.
    Expired {
        /// The promotion's epoch.
        epoch: u64,
    },
}

/// What a signal or a majority decision did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing changed, and why.
    Ignored(String),
    /// A promotion started (replacing an older one, if any): writes are held.
    Started,
    /// The replica answers as master and is published as such.
    Promoted,
    /// The leader aborted: back to the majority's decision.
    Aborted(String),
    /// Not completed in time: back to the majority's decision.
    Expired,
    /// The majority names a master at the promotion's epoch or later.
    Superseded,
}

/// Applies `signal` to the promotion in progress (`current`), given the majority's
/// accepted topology. Returns the promotion that follows and what happened.
pub fn apply(
    current: Option<&Promotion>,
    majority: &Topology,
    signal: Signal,
) -> (Option<Promotion>, Outcome) {
    let keep = |why: String| (current.cloned(), Outcome::Ignored(why));
    match signal {
        Signal::Announced(a) => {
            if a.epoch <= majority.config_epoch {
                return keep(format!(
                    "stale: epoch {} is not newer than the accepted master's epoch {}",
                    a.epoch, majority.config_epoch
                ));
            }
            if let Some(c) = current
                && c.announcement.epoch >= a.epoch
            {
                return keep(format!(
                    "a promotion at epoch {} is already in progress",
                    c.announcement.epoch
                ));
            }
            (
                Some(Promotion {
                    announcement: a,
                    phase: Phase::Holding,
                }),
                Outcome::Started,
            )
        }
        Signal::Promoted { epoch, replica } => match current {
            Some(c)
                if c.phase == Phase::Holding
                    && c.announcement.epoch == epoch
                    && c.announcement.replica == replica =>
            {
                (
                    Some(Promotion {
                        announcement: c.announcement.clone(),
                        phase: Phase::Promoted,
                    }),
                    Outcome::Promoted,
                )
            }
            _ => keep(format!(
                "{replica} at epoch {epoch} is not a promotion waiting for its replica"
            )),
        },
        Signal::Aborted {
            leader,
            epoch,
            reason,
        } => match current {
            Some(c)
                if c.announcement.leader == leader
                    && epoch.is_none_or(|e| e == c.announcement.epoch) =>
            {
                (None, Outcome::Aborted(reason))
            }
            _ => keep(format!(
                "{reason} from {leader} is not about the promotion in progress"
            )),
        },
        Signal::Expired { epoch } => match current {
            Some(c) if c.announcement.epoch == epoch => (None, Outcome::Expired),
            _ => keep(format!("no promotion at epoch {epoch} in progress")),
        },
    }
}

/// Ends the promotion when the majority has caught up: it names a master at the
/// promotion's epoch or a later one (whichever master that is, the majority wins).
pub fn settle(
    current: Option<&Promotion>,
    majority: &Topology,
) -> (Option<Promotion>, Option<Outcome>) {
    match current {
        Some(c) if majority.master.is_some() && majority.config_epoch >= c.announcement.epoch => {
            (None, Some(Outcome::Superseded))
        }
        other => (other.cloned(), None),
    }
}

/// The topology to publish: the majority's, or what the promotion in progress makes of it.
pub fn overlay(majority: &Topology, current: Option<&Promotion>) -> Topology {
    let Some(p) = current else {
        return majority.clone();
    };
    let a = &p.announcement;
    let mut t = majority.clone();
    match p.phase {
        Phase::Holding => {
            t.master = None;
            // It is leaving the replica role, and Sentinel kills its client connections as
            // it promotes it (`CLIENT KILL TYPE normal` with `SLAVEOF NO ONE`): proxies
            // close theirs now and connect afresh once it is master.
            t.replicas.retain(|r| r.addr != a.replica);
            t.master_reason = format!(
                "holding writes: Sentinel {}, leader of epoch {}, promotes {} to replace {}",
                a.leader, a.epoch, a.replica, a.old_master
            );
        }
        Phase::Promoted => {
            t.master = Some(a.replica.clone());
            t.config_epoch = a.epoch;
            t.replicas.retain(|r| r.addr != a.replica);
            let majority_says = match &majority.master {
                Some(m) => format!(
                    "the majority still names {m} at epoch {}",
                    majority.config_epoch
                ),
                None => "the majority names no master yet".to_string(),
            };
            t.master_reason = format!(
                "promoted by Sentinel {}, leader of epoch {}: {} answers ROLE master ({majority_says})",
                a.leader, a.epoch, a.replica
            );
        }
    }
    t
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::topology::ReplicaState;

    fn addr(s: &str) -> NodeAddr {
        s.parse().unwrap()
    }

    const OLD: &str = "10.0.0.1:6379";
    const R1: &str = "10.0.0.2:6379";
    const R2: &str = "10.0.0.3:6379";
    const LEADER: &str = "10.0.1.1:26379";
    const OTHER: &str = "10.0.1.2:26379";

    fn majority(master: &str, epoch: u64) -> Topology {
        let replica = |a: &str| ReplicaState {
            addr: addr(a),
            healthy: true,
            lag_bytes: Some(0),
            link_down_ms: 0,
            reason: String::new(),
        };
        Topology {
            master: Some(addr(master)),
            config_epoch: epoch,
            master_reason: "named by 3 of 3".into(),
            replicas: [OLD, R1, R2]
                .iter()
                .filter(|a| **a != master)
                .map(|a| replica(a))
                .collect(),
            ..Topology::default()
        }
    }

    fn announced(leader: &str, epoch: u64, replica: &str) -> Signal {
        Signal::Announced(Announcement {
            leader: addr(leader),
            epoch,
            replica: addr(replica),
            old_master: addr(OLD),
        })
    }

    /// Runs signals from no promotion; returns the promotion and every outcome.
    fn run(m: &Topology, signals: Vec<Signal>) -> (Option<Promotion>, Vec<Outcome>) {
        let mut p = None;
        let mut outcomes = Vec::new();
        for s in signals {
            let (next, o) = apply(p.as_ref(), m, s);
            p = next;
            outcomes.push(o);
        }
        (p, outcomes)
    }

    #[test]
    fn announcement_holds_writes_then_promotion_publishes_the_replica() {
        let m = majority(OLD, 1);
        let (p, o) = run(&m, vec![announced(LEADER, 2, R1)]);
        assert_eq!(o, vec![Outcome::Started]);
        let held = overlay(&m, p.as_ref());
        assert_eq!(held.master, None);
        assert_eq!(held.config_epoch, 1);
        assert!(
            held.master_reason.starts_with("holding writes"),
            "{}",
            held.master_reason
        );
        let replicas: Vec<_> = held.replicas.iter().map(|r| r.addr.to_string()).collect();
        assert_eq!(
            replicas,
            vec![R2.to_string()],
            "the replica being promoted serves no reads"
        );

        let (p, o) = apply(
            p.as_ref(),
            &m,
            Signal::Promoted {
                epoch: 2,
                replica: addr(R1),
            },
        );
        assert_eq!(o, Outcome::Promoted);
        let t = overlay(&m, p.as_ref());
        assert_eq!(t.master, Some(addr(R1)));
        assert_eq!(t.config_epoch, 2);
        let replicas: Vec<_> = t.replicas.iter().map(|r| r.addr.to_string()).collect();
        assert_eq!(
            replicas,
            vec![R2.to_string()],
            "neither the new nor the old master"
        );
        assert!(
            t.master_reason.contains("still names"),
            "{}",
            t.master_reason
        );
    }

    #[test]
    fn ordering_rules() {
        // (name, majority epoch, signals, expected phase and epoch afterwards, last outcome kind)
        type Case = (
            &'static str,
            u64,
            Vec<Signal>,
            Option<(Phase, u64)>,
            &'static str,
        );
        let promoted = |epoch, r: &str| Signal::Promoted {
            epoch,
            replica: addr(r),
        };
        let aborted = |leader: &str, epoch| Signal::Aborted {
            leader: addr(leader),
            epoch,
            reason: "failover-abort-slave-timeout".into(),
        };
        let cases: Vec<Case> = vec![
            (
                "stale epoch ignored",
                2,
                vec![announced(LEADER, 2, R1)],
                None,
                "ignored",
            ),
            (
                "older epoch ignored",
                3,
                vec![announced(LEADER, 1, R1)],
                None,
                "ignored",
            ),
            (
                "newer epoch replaces a running promotion",
                1,
                vec![announced(LEADER, 2, R1), announced(OTHER, 3, R2)],
                Some((Phase::Holding, 3)),
                "started",
            ),
            (
                "an older announcement does not replace a newer one",
                1,
                vec![announced(OTHER, 3, R2), announced(LEADER, 2, R1)],
                Some((Phase::Holding, 3)),
                "ignored",
            ),
            (
                "a duplicate announcement is ignored",
                1,
                vec![announced(LEADER, 2, R1), announced(LEADER, 2, R1)],
                Some((Phase::Holding, 2)),
                "ignored",
            ),
            (
                "ROLE master of another replica is ignored",
                1,
                vec![announced(LEADER, 2, R1), promoted(2, R2)],
                Some((Phase::Holding, 2)),
                "ignored",
            ),
            (
                "ROLE master polled for an older epoch is ignored",
                1,
                vec![
                    announced(LEADER, 2, R1),
                    announced(LEADER, 3, R1),
                    promoted(2, R1),
                ],
                Some((Phase::Holding, 3)),
                "ignored",
            ),
            (
                "ROLE master without a promotion is ignored",
                1,
                vec![promoted(2, R1)],
                None,
                "ignored",
            ),
            (
                "abort restores the majority",
                1,
                vec![announced(LEADER, 2, R1), aborted(LEADER, Some(2))],
                None,
                "aborted",
            ),
            (
                "abort with an unknown epoch from the leader restores",
                1,
                vec![announced(LEADER, 2, R1), aborted(LEADER, None)],
                None,
                "aborted",
            ),
            (
                "abort after the promotion restores too",
                1,
                vec![
                    announced(LEADER, 2, R1),
                    promoted(2, R1),
                    aborted(LEADER, Some(2)),
                ],
                None,
                "aborted",
            ),
            (
                "abort from another Sentinel is ignored",
                1,
                vec![announced(LEADER, 2, R1), aborted(OTHER, None)],
                Some((Phase::Holding, 2)),
                "ignored",
            ),
            (
                "abort of an older failover is ignored",
                1,
                vec![announced(LEADER, 3, R1), aborted(LEADER, Some(2))],
                Some((Phase::Holding, 3)),
                "ignored",
            ),
            (
                "expiry ends the promotion",
                1,
                vec![announced(LEADER, 2, R1), Signal::Expired { epoch: 2 }],
                None,
                "expired",
            ),
            (
                "expiry of a replaced promotion is ignored",
                1,
                vec![
                    announced(LEADER, 2, R1),
                    announced(OTHER, 3, R2),
                    Signal::Expired { epoch: 2 },
                ],
                Some((Phase::Holding, 3)),
                "ignored",
            ),
        ];
        for (name, epoch, signals, want, last) in cases {
            let m = majority(OLD, epoch);
            let (p, outcomes) = run(&m, signals);
            assert_eq!(
                p.as_ref().map(|p| (p.phase, p.announcement.epoch)),
                want,
                "{name}: {outcomes:?}"
            );
            let kind = match outcomes.last().unwrap() {
                Outcome::Ignored(_) => "ignored",
                Outcome::Started => "started",
                Outcome::Promoted => "promoted",
                Outcome::Aborted(_) => "aborted",
                Outcome::Expired => "expired",
                Outcome::Superseded => "superseded",
            };
            assert_eq!(kind, last, "{name}: {outcomes:?}");
            if p.is_none() {
                assert_eq!(overlay(&m, None), m, "{name}: the majority is published");
            }
        }
    }

    #[test]
    fn the_majority_overrides_at_an_equal_or_higher_epoch() {
        let (p, _) = run(
            &majority(OLD, 1),
            vec![
                announced(LEADER, 2, R1),
                Signal::Promoted {
                    epoch: 2,
                    replica: addr(R1),
                },
            ],
        );
        // The majority still at the old epoch: the promotion stands.
        let (kept, o) = settle(p.as_ref(), &majority(OLD, 1));
        assert_eq!(o, None);
        assert_eq!(kept, p);
        // The majority names the promoted replica at its epoch: done.
        let (gone, o) = settle(p.as_ref(), &majority(R1, 2));
        assert_eq!((gone, o), (None, Some(Outcome::Superseded)));
        // The majority names another master at the same epoch, or a later one: it wins.
        for m in [majority(R2, 2), majority(R2, 3)] {
            let (gone, o) = settle(p.as_ref(), &m);
            assert_eq!((gone.clone(), o), (None, Some(Outcome::Superseded)));
            assert_eq!(overlay(&m, gone.as_ref()).master, m.master);
        }
        // No master named by the majority does not end it.
        let mut none = majority(OLD, 5);
        none.master = None;
        assert_eq!(settle(p.as_ref(), &none).1, None);
    }
}
