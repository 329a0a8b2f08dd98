//! Domain types of a service's topology and the pure decision that turns what the
//! Sentinels say ([`SentinelView`]s) into the topology to route by.
//!
//! No I/O here: the control plane's watcher and the proxy's Sentinel follower feed views
//! in (polled by [`crate::query`] through [`crate::link`]s) and act on the result; both
//! run this same rule. Rules (see [`decide`]):
//!
//! - a master is accepted when a majority (`configured / 2 + 1`) of the *configured*
//!   Sentinels that answer name it, votes counted per (address, config epoch); among
//!   candidates with a majority the highest epoch wins;
//! - without such a majority the previous master stays;
//! - replicas are the union of the answering Sentinels' lists (those that agree with the
//!   accepted master when any do), never including the accepted master;
//! - a replica is healthy when no answering Sentinel flags it `s_down`, `o_down` or
//!   `disconnected` and every Sentinel listing it reports `master-link-status: ok`.
//!
//! The elected leader's promotion, which may run ahead of the majority, is a separate
//! pure overlay on the result: [`crate::promotion`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::Serialize;

/// A `host:port` address of a Redis node or Sentinel (serialized as `"host:port"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeAddr {
    /// Host name or IP address, as Sentinel or the operator wrote it.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl NodeAddr {
    /// Builds an address from its parts.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }
}

impl Serialize for NodeAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for NodeAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not HOST:PORT"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{s}` has an empty host"));
        }
        if host.contains(char::is_whitespace) {
            return Err(format!("`{s}` has whitespace in its host"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{s}` has an invalid port `{port}`"))?;
        if port == 0 {
            return Err(format!("`{s}` has port 0"));
        }
        Ok(Self::new(host, port))
    }
}

/// What one Sentinel said about a service at one moment (one poll), or that it could not
/// be asked.
#[derive(Debug, Clone, PartialEq)]
pub struct SentinelView {
    /// The Sentinel this view comes from.
    pub sentinel: NodeAddr,
    /// Given by the operator (votes on the master) rather than discovered.
    pub configured: bool,
    /// The link to this Sentinel works and the last poll answered.
    pub reachable: bool,
    /// The master this Sentinel names; `None` when unreachable or it doesn't monitor the
    /// service.
    pub master: Option<MasterInfo>,
    /// Replicas this Sentinel knows for the service.
    pub replicas: Vec<ReplicaInfo>,
    /// The master's replication offset when known (`SENTINEL MASTER` doesn't report it).
    pub master_offset: Option<u64>,
    /// Other Sentinels this one knows for the service.
    pub sentinels: Vec<NodeAddr>,
    /// When the poll answered (or failed).
    pub observed_at: SystemTime,
}

impl SentinelView {
    /// A view saying the Sentinel could not be asked.
    pub fn unreachable(sentinel: NodeAddr, configured: bool) -> Self {
        Self {
            sentinel,
            configured,
            reachable: false,
            master: None,
            replicas: Vec::new(),
            master_offset: None,
            sentinels: Vec::new(),
            observed_at: SystemTime::now(),
        }
    }
}

/// The master as one Sentinel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterInfo {
    /// Address Sentinel names as the master.
    pub addr: NodeAddr,
    /// Sentinel's `config-epoch` for the master.
    pub config_epoch: u64,
    /// Sentinel's flags (`master`, `s_down`, `o_down`, `failover_in_progress`, ...).
    pub flags: Vec<String>,
    /// Sentinel's `failover-timeout` for the service, milliseconds, when reported.
    pub failover_timeout_ms: Option<u64>,
}

/// One replica as one Sentinel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// The replica's address.
    pub addr: NodeAddr,
    /// Sentinel's flags (`slave`, `s_down`, `o_down`, `disconnected`, ...).
    pub flags: Vec<String>,
    /// `master-link-status` (`ok` or `err`).
    pub master_link_status: String,
    /// `master-link-down-time`, milliseconds.
    pub master_link_down_ms: u64,
    /// `slave-repl-offset`, when reported.
    pub repl_offset: Option<u64>,
    /// `role-reported`: what the node itself says it is (`slave`, or `master` for a demoted
    /// master that has not been reconfigured yet). Empty when not reported.
    pub role_reported: String,
}

/// A replica in the accepted topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaState {
    /// The replica's address.
    pub addr: NodeAddr,
    /// Whether proxies may read from it.
    pub healthy: bool,
    /// Bytes behind the master, when known. Sentinel doesn't report the master's offset,
    /// so without it this is the distance to the most advanced replica (a lower bound).
    pub lag_bytes: Option<u64>,
    /// Longest `master-link-down-time` reported, milliseconds.
    pub link_down_ms: u64,
    /// Why it is not healthy; empty when healthy.
    pub reason: String,
}

/// A Sentinel in the accepted topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SentinelState {
    /// The Sentinel's address.
    pub addr: NodeAddr,
    /// Given by the operator (as opposed to discovered).
    pub configured: bool,
    /// The control plane has a working link to it.
    pub reachable: bool,
}

/// The accepted topology of one service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Topology {
    /// Accepted master; `None` until a majority names one.
    pub master: Option<NodeAddr>,
    /// Sentinel config epoch of the accepted master.
    pub config_epoch: u64,
    /// Why the master is what it is (for operators; not part of the identity).
    pub master_reason: String,
    /// Replicas, sorted by address.
    pub replicas: Vec<ReplicaState>,
    /// Configured and discovered Sentinels, sorted by address.
    pub sentinels: Vec<SentinelState>,
    /// Config version at which this topology last changed (set by `state`).
    pub changed_version: u64,
    /// When this topology last changed (set by `state`).
    #[serde(skip)]
    pub changed_at: Option<SystemTime>,
}

impl Topology {
    /// Whether `other` differs in anything proxies act on: master, epoch, the replica set,
    /// replica health, or Sentinels and their reachability. Lag, link-down times and the
    /// wording of reasons move on every poll and don't count (they are refreshed without
    /// a new version).
    pub fn same_shape(&self, other: &Topology) -> bool {
        let replicas = |t: &Topology| {
            t.replicas
                .iter()
                .map(|r| (r.addr.clone(), r.healthy))
                .collect::<Vec<_>>()
        };
        self.master == other.master
            && self.config_epoch == other.config_epoch
            && replicas(self) == replicas(other)
            && self.sentinels == other.sentinels
    }

    /// Number of replicas proxies may read from.
    pub fn healthy_replicas(&self) -> usize {
        self.replicas.iter().filter(|r| r.healthy).count()
    }

    /// Number of Sentinels with a working link.
    pub fn reachable_sentinels(&self) -> usize {
        self.sentinels.iter().filter(|s| s.reachable).count()
    }
}

/// Flags that make Sentinel's opinion of a replica "not usable".
const BAD_REPLICA_FLAGS: [&str; 3] = ["s_down", "o_down", "disconnected"];

/// Computes the accepted topology from the latest view of every Sentinel link.
///
/// `configured` is the number of operator-given Sentinels; only their views vote on the
/// master. The result copies `changed_version`/`changed_at` from `previous`; the state
/// module sets them when the result differs.
pub fn decide(previous: &Topology, views: &[SentinelView], configured: usize) -> Topology {
    let majority = configured / 2 + 1;
    let voters: Vec<&SentinelView> = views
        .iter()
        .filter(|v| v.configured && v.reachable)
        .collect();

    // Votes per (address, epoch).
    let mut votes: BTreeMap<(u64, NodeAddr), usize> = BTreeMap::new();
    for v in &voters {
        if let Some(m) = &v.master {
            *votes.entry((m.config_epoch, m.addr.clone())).or_default() += 1;
        }
    }
    // BTreeMap iterates epochs ascending: the last candidate with a majority has the
    // highest epoch. Two different addresses can't both hold a majority of one epoch.
    let winner = votes
        .iter()
        .rfind(|(_, n)| **n >= majority)
        .map(|((epoch, addr), n)| (addr.clone(), *epoch, *n));

    let (master, config_epoch, master_reason) = match winner {
        Some((addr, epoch, n)) => (
            Some(addr),
            epoch,
            format!("named by {n} of {configured} configured Sentinels at epoch {epoch}"),
        ),
        None => {
            let why = if voters.len() < majority {
                format!(
                    "only {} of {configured} configured Sentinels answer (need {majority})",
                    voters.len()
                )
            } else {
                format!("no master named by {majority} of {configured} configured Sentinels")
            };
            let reason = match &previous.master {
                Some(m) => format!("kept {m}: {why}"),
                None => format!("no master known: {why}"),
            };
            (previous.master.clone(), previous.config_epoch, reason)
        }
    };

    // Replica lists from the Sentinels that agree with the accepted master describe the
    // current world; a Sentinel still naming another master may list the new master as
    // a replica of the old one. Fall back to every answering view when none agree.
    let answering: Vec<&SentinelView> = views.iter().filter(|v| v.reachable).collect();
    let agreeing: Vec<&SentinelView> = answering
        .iter()
        .copied()
        .filter(|v| master.is_some() && v.master.as_ref().map(|m| &m.addr) == master.as_ref())
        .collect();
    let sources = if agreeing.is_empty() {
        &answering
    } else {
        &agreeing
    };

    let replicas = merge_replicas(sources, master.as_ref());
    let sentinels = merge_sentinels(views);

    Topology {
        master,
        config_epoch,
        master_reason,
        replicas,
        sentinels,
        changed_version: previous.changed_version,
        changed_at: previous.changed_at,
    }
}

fn merge_replicas(sources: &[&SentinelView], master: Option<&NodeAddr>) -> Vec<ReplicaState> {
    struct Acc {
        /// Problem -> the Sentinels reporting it.
        problems: BTreeMap<String, BTreeSet<NodeAddr>>,
        link_down_ms: u64,
        offset: Option<u64>,
    }
    let mut acc: BTreeMap<NodeAddr, Acc> = BTreeMap::new();
    let mut master_offset: Option<u64> = None;
    for v in sources {
        if let Some(o) = v.master_offset {
            master_offset = Some(master_offset.map_or(o, |m| m.max(o)));
        }
        for r in &v.replicas {
            if Some(&r.addr) == master {
                continue;
            }
            let a = acc.entry(r.addr.clone()).or_insert(Acc {
                problems: BTreeMap::new(),
                link_down_ms: 0,
                offset: None,
            });
            for f in &r.flags {
                if BAD_REPLICA_FLAGS.contains(&f.as_str()) {
                    a.problems
                        .entry(f.clone())
                        .or_default()
                        .insert(v.sentinel.clone());
                }
            }
            if r.master_link_status != "ok" {
                let status = if r.master_link_status.is_empty() {
                    "unknown"
                } else {
                    r.master_link_status.as_str()
                };
                a.problems
                    .entry(format!("master-link-status {status}"))
                    .or_default()
                    .insert(v.sentinel.clone());
            }
            // A demoted master that still calls itself master (for about 10 s after it comes
            // back, SENTINEL.md) serves stale data: no reads until it is a replica again.
            if !r.role_reported.is_empty() && r.role_reported != "slave" {
                a.problems
                    .entry(format!("reports role {}", r.role_reported))
                    .or_default()
                    .insert(v.sentinel.clone());
            }
            a.link_down_ms = a.link_down_ms.max(r.master_link_down_ms);
            // Sentinels refresh replica INFO at different times: keep the freshest
            // (highest) offset.
            if let Some(o) = r.repl_offset {
                a.offset = Some(a.offset.map_or(o, |x| x.max(o)));
            }
        }
    }
    let reference = master_offset.or_else(|| acc.values().filter_map(|a| a.offset).max());
    acc.into_iter()
        .map(|(addr, a)| {
            let healthy = a.problems.is_empty();
            ReplicaState {
                addr,
                healthy,
                lag_bytes: match (reference, a.offset) {
                    (Some(m), Some(o)) => Some(m.saturating_sub(o)),
                    _ => None,
                },
                link_down_ms: a.link_down_ms,
                reason: a
                    .problems
                    .into_iter()
                    .map(|(problem, by)| match by.len() {
                        1 => format!(
                            "{problem} (Sentinel {})",
                            by.iter().map(ToString::to_string).collect::<String>()
                        ),
                        n => format!("{problem} ({n} Sentinels)"),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })
        .collect()
}

fn merge_sentinels(views: &[SentinelView]) -> Vec<SentinelState> {
    let mut all: BTreeMap<NodeAddr, SentinelState> = BTreeMap::new();
    for v in views {
        all.insert(
            v.sentinel.clone(),
            SentinelState {
                addr: v.sentinel.clone(),
                configured: v.configured,
                reachable: v.reachable,
            },
        );
    }
    // Sentinels named by others but not (yet) linked: known, not reachable.
    for v in views {
        for s in &v.sentinels {
            all.entry(s.clone()).or_insert_with(|| SentinelState {
                addr: s.clone(),
                configured: false,
                reachable: false,
            });
        }
    }
    all.into_values().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn addr(s: &str) -> NodeAddr {
        s.parse().unwrap()
    }

    fn replica(a: &str, flags: &[&str], link: &str, offset: Option<u64>) -> ReplicaInfo {
        ReplicaInfo {
            addr: addr(a),
            flags: flags.iter().map(|s| s.to_string()).collect(),
            master_link_status: link.to_string(),
            master_link_down_ms: 0,
            repl_offset: offset,
            role_reported: "slave".to_string(),
        }
    }

    fn view(
        sentinel: &str,
        master: Option<(&str, u64)>,
        replicas: Vec<ReplicaInfo>,
    ) -> SentinelView {
        SentinelView {
            sentinel: addr(sentinel),
            configured: true,
            reachable: true,
            master: master.map(|(a, e)| MasterInfo {
                addr: addr(a),
                config_epoch: e,
                flags: vec!["master".into()],
                failover_timeout_ms: None,
            }),
            replicas,
            master_offset: None,
            sentinels: Vec::new(),
            observed_at: SystemTime::UNIX_EPOCH,
        }
    }

    fn down(sentinel: &str) -> SentinelView {
        SentinelView::unreachable(addr(sentinel), true)
    }

    const M1: &str = "10.0.0.1:6379";
    const M2: &str = "10.0.0.2:6379";
    const M3: &str = "10.0.0.3:6379";

    fn with_master(m: &str, epoch: u64) -> Topology {
        Topology {
            master: Some(addr(m)),
            config_epoch: epoch,
            ..Topology::default()
        }
    }

    #[test]
    fn master_by_majority_and_epoch() {
        // (name, previous master, views, expected master, expected epoch)
        type Case = (
            &'static str,
            Option<(&'static str, u64)>,
            Vec<SentinelView>,
            Option<&'static str>,
            u64,
        );
        let cases: Vec<Case> = vec![
            (
                "all agree",
                None,
                vec![
                    view("s:1", Some((M1, 0)), vec![]),
                    view("s:2", Some((M1, 0)), vec![]),
                    view("s:3", Some((M1, 0)), vec![]),
                ],
                Some(M1),
                0,
            ),
            (
                "two of three agree, one down",
                None,
                vec![
                    view("s:1", Some((M1, 0)), vec![]),
                    view("s:2", Some((M1, 0)), vec![]),
                    down("s:3"),
                ],
                Some(M1),
                0,
            ),
            (
                "one answering is not a majority: no master yet",
                None,
                vec![view("s:1", Some((M1, 0)), vec![]), down("s:2"), down("s:3")],
                None,
                0,
            ),
            (
                "too few answers keep the last master",
                Some((M1, 0)),
                vec![view("s:1", Some((M2, 1)), vec![]), down("s:2"), down("s:3")],
                Some(M1),
                0,
            ),
            (
                "newer epoch with majority wins over older with minority",
                Some((M1, 0)),
                vec![
                    view("s:1", Some((M2, 1)), vec![]),
                    view("s:2", Some((M2, 1)), vec![]),
                    view("s:3", Some((M1, 0)), vec![]),
                ],
                Some(M2),
                1,
            ),
            (
                "newer epoch without majority loses to older majority",
                Some((M1, 0)),
                vec![
                    view("s:1", Some((M2, 1)), vec![]),
                    view("s:2", Some((M1, 0)), vec![]),
                    view("s:3", Some((M1, 0)), vec![]),
                ],
                Some(M1),
                0,
            ),
            (
                "three-way split keeps the last master",
                Some((M1, 0)),
                vec![
                    view("s:1", Some((M2, 1)), vec![]),
                    view("s:2", Some((M3, 2)), vec![]),
                    view("s:3", Some((M1, 0)), vec![]),
                ],
                Some(M1),
                0,
            ),
            (
                "same address at different epochs are separate votes",
                None,
                vec![
                    view("s:1", Some((M1, 1)), vec![]),
                    view("s:2", Some((M1, 2)), vec![]),
                    view("s:3", Some((M2, 3)), vec![]),
                ],
                None,
                0,
            ),
            (
                "five sentinels need three",
                None,
                vec![
                    view("s:1", Some((M2, 4)), vec![]),
                    view("s:2", Some((M2, 4)), vec![]),
                    view("s:3", Some((M2, 4)), vec![]),
                    view("s:4", Some((M1, 3)), vec![]),
                    down("s:5"),
                ],
                Some(M2),
                4,
            ),
        ];
        for (name, prev, views, want, want_epoch) in cases {
            let prev = prev.map(|(m, e)| with_master(m, e)).unwrap_or_default();
            let t = decide(&prev, &views, views.len());
            assert_eq!(t.master, want.map(addr), "{name}: {}", t.master_reason);
            assert_eq!(t.config_epoch, want_epoch, "{name}");
        }
    }

    #[test]
    fn discovered_sentinels_do_not_vote() {
        let mut d1 = view("d:1", Some((M2, 1)), vec![]);
        d1.configured = false;
        let mut d2 = view("d:2", Some((M2, 1)), vec![]);
        d2.configured = false;
        let views = vec![
            view("s:1", Some((M1, 0)), vec![]),
            down("s:2"),
            down("s:3"),
            d1,
            d2,
        ];
        let t = decide(&with_master(M1, 0), &views, 3);
        assert_eq!(t.master, Some(addr(M1)));
        assert!(
            t.master_reason.contains("only 1 of 3"),
            "{}",
            t.master_reason
        );
    }

    #[test]
    fn demoted_master_still_claiming_master_gets_no_reads() {
        let mut r = replica("10.0.1.1:6379", &["slave"], "ok", None);
        r.role_reported = "master".to_string();
        let views = vec![
            view("s:1", Some((M1, 1)), vec![r]),
            view("s:2", Some((M1, 1)), vec![]),
        ];
        let t = decide(&Topology::default(), &views, 2);
        assert!(!t.replicas[0].healthy);
        assert!(
            t.replicas[0].reason.contains("reports role master"),
            "{}",
            t.replicas[0].reason
        );
    }

    #[test]
    fn replica_health_from_each_flag() {
        // (name, flags, link status, healthy, reason contains)
        let cases = [
            ("clean", vec!["slave"], "ok", true, ""),
            ("s_down", vec!["slave", "s_down"], "ok", false, "s_down"),
            ("o_down", vec!["slave", "o_down"], "ok", false, "o_down"),
            (
                "disconnected",
                vec!["slave", "disconnected"],
                "ok",
                false,
                "disconnected",
            ),
            (
                "link err",
                vec!["slave"],
                "err",
                false,
                "master-link-status err",
            ),
            (
                "link unknown",
                vec!["slave"],
                "",
                false,
                "master-link-status unknown",
            ),
        ];
        for (name, flags, link, healthy, reason) in cases {
            let r = replica("10.0.1.1:6379", &flags, link, None);
            let views = vec![
                view("s:1", Some((M1, 0)), vec![r]),
                view(
                    "s:2",
                    Some((M1, 0)),
                    vec![replica("10.0.1.1:6379", &["slave"], "ok", None)],
                ),
            ];
            let t = decide(&Topology::default(), &views, 2);
            assert_eq!(t.replicas.len(), 1, "{name}");
            assert_eq!(t.replicas[0].healthy, healthy, "{name}");
            assert!(
                t.replicas[0].reason.contains(reason),
                "{name}: {}",
                t.replicas[0].reason
            );
            if !healthy {
                assert!(
                    t.replicas[0].reason.contains("s:1"),
                    "{name} names the Sentinel"
                );
            }
        }
    }

    #[test]
    fn reasons_are_grouped_per_problem() {
        let bad = || replica("10.0.1.1:6379", &["slave", "s_down"], "err", None);
        let views = vec![
            view("s:1", Some((M1, 0)), vec![bad()]),
            view("s:2", Some((M1, 0)), vec![bad()]),
            view(
                "s:3",
                Some((M1, 0)),
                vec![replica("10.0.1.1:6379", &["slave", "s_down"], "ok", None)],
            ),
        ];
        let t = decide(&Topology::default(), &views, 3);
        assert_eq!(
            t.replicas[0].reason,
            "master-link-status err (2 Sentinels), s_down (3 Sentinels)"
        );
    }

    #[test]
    fn unreachable_sentinel_flags_are_ignored() {
        // A Sentinel that doesn't answer has no opinion on replicas.
        let views = vec![
            view(
                "s:1",
                Some((M1, 0)),
                vec![replica("10.0.1.1:6379", &["slave"], "ok", None)],
            ),
            view("s:2", Some((M1, 0)), vec![]),
            down("s:3"),
        ];
        let t = decide(&Topology::default(), &views, 3);
        assert!(t.replicas[0].healthy);
    }

    #[test]
    fn master_is_never_a_replica_and_lists_are_unioned() {
        // After a failover the old master shows up as an s_down replica, and a lagging
        // Sentinel may list the new master among replicas.
        let views = vec![
            view(
                "s:1",
                Some((M2, 1)),
                vec![
                    replica(M1, &["slave", "s_down"], "err", None),
                    replica(M3, &["slave"], "ok", Some(100)),
                ],
            ),
            view(
                "s:2",
                Some((M2, 1)),
                vec![replica(M3, &["slave"], "ok", Some(90))],
            ),
            view(
                "s:3",
                Some((M1, 0)),
                vec![replica(M2, &["slave"], "ok", Some(100))],
            ),
        ];
        let t = decide(&Topology::default(), &views, 3);
        assert_eq!(t.master, Some(addr(M2)));
        let addrs: Vec<_> = t.replicas.iter().map(|r| r.addr.to_string()).collect();
        assert_eq!(addrs, vec![M1.to_string(), M3.to_string()]);
        assert!(!t.replicas[0].healthy);
        assert!(t.replicas[1].healthy);
        // With no master offset, lag is measured against the most advanced replica.
        assert_eq!(t.replicas[1].lag_bytes, Some(0));
    }

    #[test]
    fn lag_from_master_offset() {
        let mut v = view(
            "s:1",
            Some((M1, 0)),
            vec![
                replica("10.0.1.1:6379", &["slave"], "ok", Some(700)),
                replica("10.0.1.2:6379", &["slave"], "ok", None),
            ],
        );
        v.master_offset = Some(1000);
        let t = decide(&Topology::default(), &[v], 1);
        assert_eq!(t.replicas[0].lag_bytes, Some(300));
        assert_eq!(t.replicas[1].lag_bytes, None);
    }

    #[test]
    fn sentinels_configured_and_discovered() {
        let mut v1 = view("s:1", Some((M1, 0)), vec![]);
        v1.sentinels = vec![addr("s:2"), addr("d:9")];
        let views = vec![v1, down("s:2")];
        let t = decide(&Topology::default(), &views, 2);
        let got: Vec<_> = t
            .sentinels
            .iter()
            .map(|s| (s.addr.to_string(), s.configured, s.reachable))
            .collect();
        assert_eq!(
            got,
            vec![
                ("d:9".to_string(), false, false),
                ("s:1".to_string(), true, true),
                ("s:2".to_string(), true, false),
            ]
        );
    }

    #[test]
    fn same_shape_ignores_lag() {
        let views = vec![view(
            "s:1",
            Some((M1, 0)),
            vec![replica("10.0.1.1:6379", &["slave"], "ok", Some(5))],
        )];
        let a = decide(&Topology::default(), &views, 1);
        let mut b = a.clone();
        b.replicas[0].lag_bytes = Some(999);
        b.replicas[0].link_down_ms = 7;
        b.replicas[0].reason = "reworded".into();
        assert!(a.same_shape(&b));
        b.replicas[0].healthy = false;
        assert!(!a.same_shape(&b));
    }

    #[test]
    fn parse_addresses() {
        assert_eq!(addr("127.0.0.1:26379"), NodeAddr::new("127.0.0.1", 26379));
        assert_eq!(addr("[::1]:26379"), NodeAddr::new("::1", 26379));
        assert_eq!(NodeAddr::new("::1", 1).to_string(), "[::1]:1");
        for bad in ["nohost", ":1", "h:x", "h:0", "h:70000"] {
            assert!(bad.parse::<NodeAddr>().is_err(), "{bad}");
        }
    }
}
