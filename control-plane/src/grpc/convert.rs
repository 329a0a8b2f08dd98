//! Domain -> `pivot.v1` conversions. The only place that knows proto types besides the
//! service itself.

use pivot_proto::v1 as pb;

use crate::state::{Consistency, Policy, ReadPolicy, ServiceState, Target, WriteAck};
use crate::topology::{NodeAddr, Topology};

/// A node address on the wire.
pub fn node(a: &NodeAddr) -> pb::Node {
    pivot_sentinel::wire::node(a)
}

/// A topology on the wire.
pub fn topology(t: &Topology) -> pb::Topology {
    pivot_sentinel::wire::topology(t)
}

/// A routing policy on the wire.
pub fn policy(p: &Policy) -> pb::RoutingPolicy {
    let read_policy = match p.read_policy {
        ReadPolicy::MasterOnly => pb::ReadPolicy::MasterOnly,
        ReadPolicy::Replicas => pb::ReadPolicy::Replicas,
        ReadPolicy::All => pb::ReadPolicy::All,
    };
    let consistency = match p.consistency {
        Consistency::Eventual => pb::Consistency::Eventual,
        Consistency::ReadYourWrites => pb::Consistency::ReadYourWrites,
        Consistency::Strong => pb::Consistency::Strong,
    };
    pb::RoutingPolicy {
        read_policy: read_policy.into(),
        consistency: consistency.into(),
        rules: p
            .rules
            .iter()
            .map(|r| pb::CommandRule {
                command: r.command.clone(),
                target: match r.target {
                    Target::Master => pb::Target::Master,
                    Target::Replica => pb::Target::Replica,
                    Target::Any => pb::Target::Any,
                    Target::Deny => pb::Target::Deny,
                }
                .into(),
            })
            .collect(),
        write_ack_replicas: match p.write_ack {
            WriteAck::Master => 0,
            WriteAck::Replicas(n) => n,
        },
        failover_hold_ms: p
            .failover_hold
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// One service's configuration on the wire.
pub fn service(s: &ServiceState) -> pb::ServiceConfig {
    pb::ServiceConfig {
        name: s.name.clone(),
        topology: Some(topology(&s.topology)),
        policy: Some(policy(&s.policy)),
        backend_auth: s.backend_auth.as_ref().map(|a| pb::BackendAuth {
            username: a.username.clone().unwrap_or_default(),
            password: a.password.clone(),
        }),
        users: s
            .users
            .iter()
            .map(|u| pb::ProxyUser {
                name: u.name.clone(),
                salt: u.salt.clone(),
                password_sha256: u.hash.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn default_policy_on_the_wire() {
        let p = policy(&Policy::default());
        assert_eq!(p.read_policy(), pb::ReadPolicy::Replicas);
        assert_eq!(p.consistency(), pb::Consistency::ReadYourWrites);
        assert!(p.rules.is_empty());
    }

    #[test]
    fn topology_on_the_wire() {
        let t = Topology {
            master: Some(NodeAddr::new("127.0.0.1", 7000)),
            config_epoch: 2,
            changed_version: 9,
            changed_at: Some(std::time::SystemTime::UNIX_EPOCH),
            ..Topology::default()
        };
        let p = topology(&t);
        assert_eq!(p.master.unwrap().port, 7000);
        assert_eq!(p.config_epoch, 2);
        assert_eq!(p.changed_version, 9);
        assert_eq!(p.changed_at.unwrap().seconds, 0);
    }
}
