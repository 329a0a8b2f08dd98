//! Sentinel pub/sub events: the channels worth subscribing to, which messages concern a
//! service, and what a failover leader's own messages say about the failover it runs.
//!
//! Pure parsing; the [`crate::link`] feeds it every message it receives. Payload formats
//! (Redis 7.0 `sentinelEvent`): instance events read
//! `<type> <name> <ip> <port> @ <master-name> <master-ip> <master-port>` (the `@` part
//! only for replicas and Sentinels), `+switch-master` reads
//! `<master-name> <old-ip> <old-port> <new-ip> <new-port>`, and `+new-epoch` carries only
//! the epoch number.
//!
//! The epoch of a failover is in none of the leader's state events. A Sentinel starting a
//! failover publishes `+new-epoch <epoch>` and then `+try-failover master <name> ...` in
//! the same step (and the failover then runs at that epoch), so [`LeaderTracker`] binds the
//! epoch from the `+new-epoch` immediately before the service's `+try-failover`; the
//! leader's later `+failover-state-send-slaveof-noone` and `-failover-abort-*` carry it.

use crate::topology::NodeAddr;

/// Sentinel event channels a link subscribes to (plus [`EVENT_PATTERN`]).
pub const EVENT_CHANNELS: &[&str] = &[
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
    "+new-epoch",
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

/// Pattern for the abort events (`-failover-abort-not-elected`, `-failover-abort-slave-timeout`,
/// `-failover-abort-no-good-slave`, ...).
pub const EVENT_PATTERN: &str = "-failover-abort-*";

/// Whether a Sentinel event payload is about `service`. Instance events end in
/// `@ <master-name> <ip> <port>`, master events start `master <name> ...`, and
/// `+switch-master` starts with the name: a whole-word match covers all of them.
pub fn concerns(payload: &str, service: &str) -> bool {
    payload.split_whitespace().any(|w| w == service)
}

/// What the Sentinel that runs a failover of the service said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderEvent {
    /// `+failover-state-send-slaveof-noone`: this Sentinel, leading the failover, is about
    /// to send `SLAVEOF NO ONE` to `replica`.
    Promoting {
        /// The failover's epoch; `None` when the link missed its `+try-failover`.
        epoch: Option<u64>,
        /// The replica being promoted.
        replica: NodeAddr,
        /// The master being replaced, as this Sentinel names it.
        master: NodeAddr,
    },
    /// `-failover-abort-*`: this Sentinel gave its failover up.
    Aborted {
        /// The failover's epoch; `None` when the link missed its `+try-failover`.
        epoch: Option<u64>,
        /// The event name without its sign, e.g. `failover-abort-slave-timeout`.
        reason: String,
    },
}

/// Per-link (so per-Sentinel) state for [`LeaderEvent`]s: the epoch of the failover this
/// Sentinel runs. Start a new one for each connection: events missed while disconnected
/// leave the epoch unknown rather than wrong.
#[derive(Debug, Default, Clone)]
pub struct LeaderTracker {
    last_new_epoch: Option<u64>,
    failover_epoch: Option<u64>,
}

impl LeaderTracker {
    /// Feeds one message; returns the leader event it is, if any, for `service`.
    pub fn observe(&mut self, channel: &str, payload: &str, service: &str) -> Option<LeaderEvent> {
        if channel == "+new-epoch" {
            self.last_new_epoch = payload.trim().parse().ok();
            return None;
        }
        let event = Instance::parse(payload)?;
        if event.service() != service {
            return None;
        }
        match channel {
            "+try-failover" => {
                self.failover_epoch = self.last_new_epoch.take();
                None
            }
            "+failover-state-send-slaveof-noone" => Some(LeaderEvent::Promoting {
                epoch: self.failover_epoch,
                replica: event.addr.clone(),
                master: event.master?.1,
            }),
            "+failover-end" => {
                self.failover_epoch = None;
                None
            }
            c if c.starts_with("-failover-abort-") => {
                let epoch = self.failover_epoch.take();
                Some(LeaderEvent::Aborted {
                    epoch,
                    reason: c.trim_start_matches('-').to_string(),
                })
            }
            _ => None,
        }
    }
}

/// An instance event's payload: `<type> <name> <ip> <port> [@ <master-name> <ip> <port>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Instance {
    /// `master`, `slave` or `sentinel`.
    kind: String,
    /// For a master, the service name; else `ip:port` or a Sentinel's run id.
    name: String,
    addr: NodeAddr,
    /// For replicas and Sentinels: the master's service name and address.
    master: Option<(String, NodeAddr)>,
}

impl Instance {
    fn parse(payload: &str) -> Option<Instance> {
        let w: Vec<&str> = payload.split_whitespace().collect();
        let addr = |ip: &str, port: &str| -> Option<NodeAddr> {
            Some(NodeAddr::new(ip, port.parse().ok().filter(|p| *p != 0)?))
        };
        let (kind, name) = (*w.first()?, *w.get(1)?);
        let me = addr(w.get(2)?, w.get(3)?)?;
        let master = match w.get(4) {
            Some(&"@") => Some((w.get(5)?.to_string(), addr(w.get(6)?, w.get(7)?)?)),
            _ => None,
        };
        Some(Instance {
            kind: kind.to_string(),
            name: name.to_string(),
            addr: me,
            master,
        })
    }

    /// The service the event is about.
    fn service(&self) -> &str {
        match &self.master {
            Some((name, _)) => name,
            None if self.kind == "master" => &self.name,
            None => "",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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

    /// The leader's messages of a `SENTINEL FAILOVER`, as Redis 7.0.15 published them.
    const GRACEFUL: &[(&str, &str)] = &[
        ("+new-epoch", "2"),
        ("+try-failover", "master mymaster 127.0.0.1 17001"),
        ("+elected-leader", "master mymaster 127.0.0.1 17001"),
        (
            "+failover-state-select-slave",
            "master mymaster 127.0.0.1 17001",
        ),
        (
            "+selected-slave",
            "slave 127.0.0.1:17002 127.0.0.1 17002 @ mymaster 127.0.0.1 17001",
        ),
        (
            "+failover-state-send-slaveof-noone",
            "slave 127.0.0.1:17002 127.0.0.1 17002 @ mymaster 127.0.0.1 17001",
        ),
    ];

    #[test]
    fn the_leader_announces_its_promotion_with_the_epoch() {
        let mut t = LeaderTracker::default();
        let out: Vec<_> = GRACEFUL
            .iter()
            .filter_map(|(c, p)| t.observe(c, p, "mymaster"))
            .collect();
        assert_eq!(
            out,
            vec![LeaderEvent::Promoting {
                epoch: Some(2),
                replica: NodeAddr::new("127.0.0.1", 17002),
                master: NodeAddr::new("127.0.0.1", 17001),
            }]
        );
        // Its abort carries the same epoch.
        assert_eq!(
            t.observe(
                "-failover-abort-slave-timeout",
                "master mymaster 127.0.0.1 17001",
                "mymaster"
            ),
            Some(LeaderEvent::Aborted {
                epoch: Some(2),
                reason: "failover-abort-slave-timeout".into()
            })
        );
    }

    #[test]
    fn epochs_are_bound_only_by_the_services_own_try_failover() {
        // A voter learns epochs from others: no try-failover, so no failover epoch.
        let mut t = LeaderTracker::default();
        t.observe("+new-epoch", "5", "mymaster");
        let promoting = t.observe(
            "+failover-state-send-slaveof-noone",
            "slave 10.0.0.2:6379 10.0.0.2 6379 @ mymaster 10.0.0.1 6379",
            "mymaster",
        );
        assert!(matches!(
            promoting,
            Some(LeaderEvent::Promoting { epoch: None, .. })
        ));
        // Another service's failover does not bind ours.
        let mut t = LeaderTracker::default();
        t.observe("+new-epoch", "7", "mymaster");
        t.observe("+try-failover", "master other 10.0.0.9 6379", "mymaster");
        let e = t.observe(
            "+failover-state-send-slaveof-noone",
            "slave 10.0.0.2:6379 10.0.0.2 6379 @ mymaster 10.0.0.1 6379",
            "mymaster",
        );
        assert!(matches!(
            e,
            Some(LeaderEvent::Promoting { epoch: None, .. })
        ));
        // Other services' leader events are not ours.
        let mut t = LeaderTracker::default();
        for (c, p) in GRACEFUL {
            assert_eq!(t.observe(c, p, "othermaster"), None);
        }
        // A finished failover's epoch does not leak into the next announcement.
        let mut t = LeaderTracker::default();
        for (c, p) in GRACEFUL {
            t.observe(c, p, "mymaster");
        }
        t.observe(
            "+failover-end",
            "master mymaster 127.0.0.1 17001",
            "mymaster",
        );
        assert!(matches!(
            t.observe(GRACEFUL[5].0, GRACEFUL[5].1, "mymaster"),
            Some(LeaderEvent::Promoting { epoch: None, .. })
        ));
    }

    #[test]
    fn malformed_payloads_are_ignored() {
        let mut t = LeaderTracker::default();
        for p in [
            "",
            "slave",
            "slave x 127.0.0.1 notaport @ mymaster 127.0.0.1 1",
            "slave x 127.0.0.1 0 @ mymaster 127.0.0.1 1",
        ] {
            assert_eq!(
                t.observe("+failover-state-send-slaveof-noone", p, "mymaster"),
                None,
                "{p}"
            );
        }
        t.observe("+new-epoch", "not-a-number", "mymaster");
        assert_eq!(t.last_new_epoch, None);
    }
}
