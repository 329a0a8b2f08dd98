//! Topology to and from `pivot.v1`: the one place where this crate's domain types meet
//! proto types. The control plane publishes with [`topology`]; a proxy following the
//! Sentinels on its own reads the last published topology back with [`from_topology`] and
//! publishes its decisions locally with [`topology`] again.

use pivot_proto::v1 as pb;

use crate::topology::{NodeAddr, ReplicaState, SentinelState, Topology};

/// A node address on the wire.
pub fn node(a: &NodeAddr) -> pb::Node {
    pb::Node {
        host: a.host.clone(),
        port: u32::from(a.port),
    }
}

/// A node address from the wire; `None` when empty or out of range.
pub fn addr(n: &pb::Node) -> Option<NodeAddr> {
    let port = u16::try_from(n.port).ok().filter(|p| *p != 0)?;
    (!n.host.is_empty()).then(|| NodeAddr::new(n.host.clone(), port))
}

/// A topology on the wire.
pub fn topology(t: &Topology) -> pb::Topology {
    pb::Topology {
        master: t.master.as_ref().map(node),
        replicas: t
            .replicas
            .iter()
            .map(|r| pb::Replica {
                node: Some(node(&r.addr)),
                healthy: r.healthy,
                lag_bytes: r.lag_bytes,
                link_down_ms: r.link_down_ms,
                reason: r.reason.clone(),
            })
            .collect(),
        sentinels: t
            .sentinels
            .iter()
            .map(|s| pb::SentinelInfo {
                node: Some(node(&s.addr)),
                configured: s.configured,
                reachable: s.reachable,
            })
            .collect(),
        config_epoch: t.config_epoch,
        changed_version: t.changed_version,
        changed_at: t.changed_at.map(prost_types::Timestamp::from),
    }
}

/// A topology from the wire. Entries without a valid address are skipped (the proxy's
/// routing table validation rejects them before a topology gets this far).
pub fn from_topology(t: &pb::Topology) -> Topology {
    Topology {
        master: t.master.as_ref().and_then(addr),
        config_epoch: t.config_epoch,
        master_reason: String::new(),
        replicas: t
            .replicas
            .iter()
            .filter_map(|r| {
                Some(ReplicaState {
                    addr: addr(r.node.as_ref()?)?,
                    healthy: r.healthy,
                    lag_bytes: r.lag_bytes,
                    link_down_ms: r.link_down_ms,
                    reason: r.reason.clone(),
                })
            })
            .collect(),
        sentinels: t
            .sentinels
            .iter()
            .filter_map(|s| {
                Some(SentinelState {
                    addr: addr(s.node.as_ref()?)?,
                    configured: s.configured,
                    reachable: s.reachable,
                })
            })
            .collect(),
        changed_version: t.changed_version,
        changed_at: t
            .changed_at
            .and_then(|ts| std::time::SystemTime::try_from(ts).ok()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip() {
        let t = Topology {
            master: Some(NodeAddr::new("127.0.0.1", 7000)),
            config_epoch: 2,
            master_reason: String::new(),
            replicas: vec![ReplicaState {
                addr: NodeAddr::new("127.0.0.1", 7001),
                healthy: false,
                lag_bytes: Some(3),
                link_down_ms: 5,
                reason: "s_down".into(),
            }],
            sentinels: vec![SentinelState {
                addr: NodeAddr::new("::1", 26379),
                configured: true,
                reachable: false,
            }],
            changed_version: 9,
            changed_at: Some(std::time::SystemTime::UNIX_EPOCH),
        };
        let p = topology(&t);
        assert_eq!(p.master.as_ref().unwrap().port, 7000);
        assert_eq!(p.changed_at.unwrap().seconds, 0);
        assert_eq!(from_topology(&p), t);
        assert_eq!(
            addr(&pb::Node {
                host: "h".into(),
                port: 0
            }),
            None
        );
        assert_eq!(
            addr(&pb::Node {
                host: String::new(),
                port: 1
            }),
            None
        );
        assert_eq!(
            addr(&pb::Node {
                host: "h".into(),
                port: 70_000
            }),
            None
        );
    }
}
