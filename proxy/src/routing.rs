//! The routing table and the routing decision.
//!
//! [`RoutingTable`] is an immutable snapshot built from one config update of the control
//! plane; the proxy swaps it atomically (`ArcSwap`) and client connections read it once per
//! batch of requests. [`route`] is a pure function of (table, command class, client state):
//! no I/O, table-driven tests.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pivot_proto::v1;

use crate::command::Class;

/// A Redis node's address as the Sentinels report it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    /// Host name or IP.
    pub host: Arc<str>,
    /// TCP port.
    pub port: u16,
}

impl NodeAddr {
    /// A node address.
    pub fn new(host: &str, port: u16) -> Self {
        NodeAddr {
            host: host.into(),
            port,
        }
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

/// Where reads go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPolicy {
    /// Every command to the master.
    MasterOnly,
    /// Reads round-robin over healthy replicas, the master as fallback.
    Replicas,
    /// Reads round-robin over the master and healthy replicas.
    All,
}

/// Read consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Any healthy replica serves any read.
    Eventual,
    /// A connection that has written reads from the master from then on.
    ReadYourWrites,
    /// Master only.
    Strong,
}

/// Per-command override from the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleTarget {
    /// Always the master.
    Master,
    /// The read pool (replicas per the read policy).
    Replica,
    /// Any node: master and replicas alike.
    Any,
    /// Refused by the proxy.
    Deny,
}

/// A proxy user: what `AUTH` checks a password against (see `pivot_proto::password`).
#[derive(Clone, PartialEq, Eq)]
pub struct UserEntry {
    salt: Box<[u8]>,
    hash: Box<[u8]>,
}

impl fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserEntry(<redacted>)")
    }
}

impl UserEntry {
    /// True when `password` is this user's.
    pub fn check(&self, password: &[u8]) -> bool {
        pivot_proto::password::verify(&self.salt, &self.hash, password)
    }
}

/// Credentials for Redis (`AUTH [username] password`). A secret: `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// ACL user; `None` for the default user.
    pub username: Option<String>,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// The `AUTH` command for these credentials, as RESP.
    pub fn auth_command(&self) -> Vec<u8> {
        let mut args: Vec<&str> = vec!["AUTH"];
        if let Some(u) = &self.username {
            args.push(u);
        }
        args.push(&self.password);
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

/// A replica as routing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRoute {
    /// Address.
    pub addr: NodeAddr,
    /// Whether it may serve reads.
    pub healthy: bool,
}

/// Top bit of the [`RoutingTable::version`] of a table the proxy built on its own from the
/// Sentinels while the control plane was unreachable; control plane versions never have it.
pub const LOCAL_VERSION_BIT: u64 = 1 << 63;

/// One immutable routing snapshot for the service this proxy serves.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    /// Identity of this table, compared by connections to notice a new one: the control
    /// plane's config version (0: none yet), or [`LOCAL_VERSION_BIT`] plus a counter for a
    /// table the proxy built itself while following the Sentinels.
    pub version: u64,
    /// Bumped when the proxy itself changes the table it serves from (a replica ejected or
    /// readmitted) without a new version: what connections cache per table checks it too.
    pub generation: u64,
    /// The control plane config version this table comes from (equal to `version` unless
    /// the proxy changed the topology itself): what the proxy reports as running.
    pub config_version: u64,
    /// Service (Sentinel master name).
    pub service: String,
    /// The master the Sentinels decided on; `None` while there is none.
    pub master: Option<NodeAddr>,
    /// Sentinel config epoch of `master`: comparable across control planes, unlike
    /// versions.
    pub config_epoch: u64,
    /// The control plane whose config this table comes from (`ConfigUpdate.control_plane_id`;
    /// empty if unknown): the scope of `config_version`.
    pub control_plane_id: Arc<str>,
    /// Every replica the control plane reported, healthy or not.
    pub replicas: Vec<ReplicaRoute>,
    /// Healthy replicas only: the read pool, precomputed.
    pub readable: Vec<NodeAddr>,
    /// Read policy.
    pub read_policy: ReadPolicy,
    /// Consistency mode.
    pub consistency: Consistency,
    /// Lowercased command (or `container|sub`) -> override.
    pub rules: HashMap<Box<[u8]>, RuleTarget>,
    /// Sentinels known for the service.
    pub sentinels: Vec<NodeAddr>,
    /// Credentials for the service's Redis nodes.
    pub backend_auth: Option<Arc<Credentials>>,
    /// Proxy users by name; empty: clients need not authenticate.
    pub users: HashMap<Box<[u8]>, UserEntry>,
    /// Writes are acknowledged once this many replicas have them; 0: with the master's
    /// reply.
    pub write_ack: u32,
    /// The service's hold for requests while it has no usable master; `None`: the proxy's
    /// `--failover-hold`.
    pub failover_hold: Option<std::time::Duration>,
}

impl RoutingTable {
    /// Built by the proxy from the Sentinels, not received from the control plane.
    pub fn is_local(&self) -> bool {
        self.version & LOCAL_VERSION_BIT != 0
    }

    /// Clients must authenticate before anything else.
    pub fn auth_required(&self) -> bool {
        !self.users.is_empty()
    }
}

impl RoutingTable {
    /// The table a proxy starts with: no master, nothing routable.
    pub fn empty(service: &str) -> Self {
        RoutingTable {
            version: 0,
            generation: 0,
            config_version: 0,
            service: service.to_string(),
            master: None,
            config_epoch: 0,
            control_plane_id: Arc::from(""),
            replicas: Vec::new(),
            readable: Vec::new(),
            read_policy: ReadPolicy::Replicas,
            consistency: Consistency::ReadYourWrites,
            rules: HashMap::new(),
            sentinels: Vec::new(),
            backend_auth: None,
            users: HashMap::new(),
            write_ack: 0,
            failover_hold: None,
        }
    }

    /// Builds and validates a table from the control plane's config of one service.
    pub fn from_proto(version: u64, svc: &v1::ServiceConfig) -> Result<Self, String> {
        if version & LOCAL_VERSION_BIT != 0 {
            return Err(format!("version {version} is out of range"));
        }
        let topo = svc
            .topology
            .as_ref()
            .ok_or_else(|| format!("service '{}' has no topology", svc.name))?;
        let node = |n: &v1::Node, what: &str| -> Result<NodeAddr, String> {
            if n.host.is_empty() {
                return Err(format!("{what} has an empty host"));
            }
            let port = u16::try_from(n.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{what} has invalid port {}", n.port))?;
            Ok(NodeAddr::new(&n.host, port))
        };
        let master = topo
            .master
            .as_ref()
            .map(|m| node(m, "master"))
            .transpose()?;
        let mut replicas = Vec::with_capacity(topo.replicas.len());
        for r in &topo.replicas {
            let n = r
                .node
                .as_ref()
                .ok_or_else(|| "replica without an address".to_string())?;
            let addr = node(n, "replica")?;
            if Some(&addr) == master.as_ref() {
                return Err(format!("{addr} is listed as both master and replica"));
            }
            if replicas.iter().any(|x: &ReplicaRoute| x.addr == addr) {
                return Err(format!("replica {addr} is listed twice"));
            }
            replicas.push(ReplicaRoute {
                addr,
                healthy: r.healthy,
            });
        }
        let readable = replicas
            .iter()
            .filter(|r| r.healthy)
            .map(|r| r.addr.clone())
            .collect();
        let sentinels = topo
            .sentinels
            .iter()
            .filter_map(|s| s.node.as_ref())
            .map(|n| node(n, "sentinel"))
            .collect::<Result<_, _>>()?;
        let policy = svc.policy.clone().unwrap_or_default();
        let read_policy = match v1::ReadPolicy::try_from(policy.read_policy) {
            Ok(v1::ReadPolicy::MasterOnly) => ReadPolicy::MasterOnly,
            Ok(v1::ReadPolicy::All) => ReadPolicy::All,
            Ok(v1::ReadPolicy::Replicas | v1::ReadPolicy::Unspecified) => ReadPolicy::Replicas,
            Err(_) => return Err(format!("unknown read policy {}", policy.read_policy)),
        };
        let consistency = match v1::Consistency::try_from(policy.consistency) {
            Ok(v1::Consistency::Eventual) => Consistency::Eventual,
            Ok(v1::Consistency::Strong) => Consistency::Strong,
            Ok(v1::Consistency::ReadYourWrites | v1::Consistency::Unspecified) => {
                Consistency::ReadYourWrites
            }
            Err(_) => return Err(format!("unknown consistency {}", policy.consistency)),
        };
        let mut rules = HashMap::new();
        for r in &policy.rules {
            let target = match v1::Target::try_from(r.target) {
                Ok(v1::Target::Master) => RuleTarget::Master,
                Ok(v1::Target::Replica) => RuleTarget::Replica,
                Ok(v1::Target::Any) => RuleTarget::Any,
                Ok(v1::Target::Deny) => RuleTarget::Deny,
                _ => return Err(format!("rule for '{}' has no valid target", r.command)),
            };
            if r.command.is_empty() || r.command.len() > 128 {
                return Err(format!("invalid rule command '{}'", r.command));
            }
            rules.insert(
                r.command
                    .to_ascii_lowercase()
                    .into_bytes()
                    .into_boxed_slice(),
                target,
            );
        }
        let backend_auth = match &svc.backend_auth {
            None => None,
            Some(a) if a.password.is_empty() => {
                return Err("backend credentials without a password".into());
            }
            Some(a) => Some(Arc::new(Credentials {
                username: (!a.username.is_empty()).then(|| a.username.clone()),
                password: a.password.clone(),
            })),
        };
        let mut users = HashMap::with_capacity(svc.users.len());
        for u in &svc.users {
            if u.name.is_empty() || u.salt.is_empty() || u.password_sha256.len() != 32 {
                return Err(format!("user '{}' is malformed", u.name));
            }
            let entry = UserEntry {
                salt: u.salt.clone().into_boxed_slice(),
                hash: u.password_sha256.clone().into_boxed_slice(),
            };
            if users
                .insert(u.name.as_bytes().to_vec().into_boxed_slice(), entry)
                .is_some()
            {
                return Err(format!("user '{}' is listed twice", u.name));
            }
        }
        if policy.failover_hold_ms > 600_000 {
            return Err(format!(
                "failover hold of {} ms is over 10 minutes",
                policy.failover_hold_ms
            ));
        }
        Ok(RoutingTable {
            version,
            generation: 0,
            config_version: version,
            users,
            write_ack: policy.write_ack_replicas,
            failover_hold: (policy.failover_hold_ms > 0)
                .then(|| std::time::Duration::from_millis(policy.failover_hold_ms)),
            service: svc.name.clone(),
            master,
            config_epoch: topo.config_epoch,
            control_plane_id: Arc::from(""),
            replicas,
            readable,
            read_policy,
            consistency,
            rules,
            sentinels,
            backend_auth,
        })
    }
}

/// Per-connection state that routing depends on.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientState {
    /// The connection has sent a write (read-your-writes pins its reads to the master).
    pub has_written: bool,
}

/// Where one command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The master.
    Master,
    /// The replica at this index of [`RoutingTable::readable`].
    Replica(usize),
    /// No node can take it now (no master known).
    NoMaster,
}

/// The routing decision for one command of `class`, given the overriding `rule` (if the
/// table has one for the command). `rr` spreads reads round-robin.
pub fn route(
    table: &RoutingTable,
    class: Class,
    rule: Option<RuleTarget>,
    client: &ClientState,
    rr: &AtomicUsize,
) -> Route {
    let to_master = || {
        if table.master.is_some() {
            Route::Master
        } else {
            Route::NoMaster
        }
    };
    let read_pool = match rule {
        // (A denied command never gets here: the connection refuses it first.)
        Some(RuleTarget::Master | RuleTarget::Deny) => false,
        Some(RuleTarget::Replica | RuleTarget::Any) => true,
        None => matches!(class, Class::Read | Class::Neutral),
    };
    if !read_pool
        || table.consistency == Consistency::Strong
        || (table.consistency == Consistency::ReadYourWrites && client.has_written)
    {
        return to_master();
    }
    let include_master = match rule {
        Some(RuleTarget::Any) => true,
        Some(RuleTarget::Replica) => false,
        _ => match table.read_policy {
            ReadPolicy::MasterOnly => return to_master(),
            ReadPolicy::Replicas => false,
            ReadPolicy::All => true,
        },
    };
    let replicas = table.readable.len();
    let master = usize::from(include_master && table.master.is_some());
    let choices = replicas + master;
    if choices == 0 {
        return to_master();
    }
    let n = rr.fetch_add(1, Ordering::Relaxed) % choices;
    if n < replicas {
        Route::Replica(n)
    } else {
        Route::Master
    }
}

/// Finds the rule for a request, if the table has rules at all (most have none: one branch).
pub fn rule_for(
    table: &RoutingTable,
    lower_name: &[u8],
    arg1: Option<&[u8]>,
) -> Option<RuleTarget> {
    if table.rules.is_empty() {
        return None;
    }
    // `name|subcommand` keys: built on the stack. The control plane accepts rule names of
    // up to 128 bytes; a longer `name|arg1` cannot match one.
    const MAX_KEY: usize = 128;
    if let Some(sub) = arg1
        && lower_name.len() + 1 + sub.len() <= MAX_KEY
    {
        let mut key = [0u8; MAX_KEY];
        let n = lower_name.len();
        key[..n].copy_from_slice(lower_name);
        key[n] = b'|';
        for (d, c) in key[n + 1..].iter_mut().zip(sub) {
            *d = c.to_ascii_lowercase();
        }
        if let Some(t) = table.rules.get(&key[..n + 1 + sub.len()]) {
            return Some(*t);
        }
    }
    table.rules.get(lower_name).copied()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn table(master: bool, healthy: &[bool]) -> RoutingTable {
        let mut t = RoutingTable::empty("svc");
        t.version = 1;
        if master {
            t.master = Some(NodeAddr::new("127.0.0.1", 7000));
        }
        for (i, h) in healthy.iter().enumerate() {
            let addr = NodeAddr::new("127.0.0.1", 7001 + i as u16);
            t.replicas.push(ReplicaRoute {
                addr: addr.clone(),
                healthy: *h,
            });
            if *h {
                t.readable.push(addr);
            }
        }
        t
    }

    fn routes(
        t: &RoutingTable,
        class: Class,
        rule: Option<RuleTarget>,
        written: bool,
    ) -> Vec<Route> {
        let rr = AtomicUsize::new(0);
        let c = ClientState {
            has_written: written,
        };
        (0..6).map(|_| route(t, class, rule, &c, &rr)).collect()
    }

    #[test]
    fn table_driven() {
        use Route::*;
        let two = table(true, &[true, true]);
        let one_down = table(true, &[false, true]);
        let none_healthy = table(true, &[false, false]);
        let no_master = table(false, &[true]);
        let mut all = table(true, &[true, true]);
        all.read_policy = ReadPolicy::All;
        let mut master_only = table(true, &[true, true]);
        master_only.read_policy = ReadPolicy::MasterOnly;
        let mut strong = table(true, &[true]);
        strong.consistency = Consistency::Strong;
        let mut eventual = table(true, &[true]);
        eventual.consistency = Consistency::Eventual;

        let r = |i| Replica(i);
        type Case<'a> = (
            &'a str,
            &'a RoutingTable,
            Class,
            Option<RuleTarget>,
            bool,
            Vec<Route>,
        );
        let cases: Vec<Case> = vec![
            (
                "write to master",
                &two,
                Class::Write,
                None,
                false,
                vec![Master; 6],
            ),
            (
                "unknown to master",
                &two,
                Class::Unknown,
                None,
                false,
                vec![Master; 6],
            ),
            (
                "admin to master",
                &two,
                Class::Admin,
                None,
                false,
                vec![Master; 6],
            ),
            (
                "pubsub introspection to master",
                &two,
                Class::PubSub,
                None,
                false,
                vec![Master; 6],
            ),
            (
                "reads round-robin",
                &two,
                Class::Read,
                None,
                false,
                vec![r(0), r(1), r(0), r(1), r(0), r(1)],
            ),
            (
                "neutral like reads",
                &two,
                Class::Neutral,
                None,
                false,
                vec![r(0), r(1), r(0), r(1), r(0), r(1)],
            ),
            (
                "only healthy replicas",
                &one_down,
                Class::Read,
                None,
                false,
                vec![r(0); 6],
            ),
            (
                "master fallback",
                &none_healthy,
                Class::Read,
                None,
                false,
                vec![Master; 6],
            ),
            (
                "policy all",
                &all,
                Class::Read,
                None,
                false,
                vec![r(0), r(1), Master, r(0), r(1), Master],
            ),
            (
                "master-only",
                &master_only,
                Class::Read,
                None,
                false,
                vec![Master; 6],
            ),
            ("strong", &strong, Class::Read, None, false, vec![Master; 6]),
            (
                "ryw after write",
                &two,
                Class::Read,
                None,
                true,
                vec![Master; 6],
            ),
            (
                "eventual after write",
                &eventual,
                Class::Read,
                None,
                true,
                vec![r(0); 6],
            ),
            (
                "no master: writes",
                &no_master,
                Class::Write,
                None,
                false,
                vec![NoMaster; 6],
            ),
            (
                "no master: reads still served",
                &no_master,
                Class::Read,
                None,
                false,
                vec![r(0); 6],
            ),
            (
                "rule master",
                &two,
                Class::Read,
                Some(RuleTarget::Master),
                false,
                vec![Master; 6],
            ),
            (
                "rule replica on a write-class cmd",
                &two,
                Class::Write,
                Some(RuleTarget::Replica),
                false,
                vec![r(0), r(1), r(0), r(1), r(0), r(1)],
            ),
            (
                "rule any",
                &one_down,
                Class::Write,
                Some(RuleTarget::Any),
                false,
                vec![r(0), Master, r(0), Master, r(0), Master],
            ),
            (
                "rule replica with master-only policy",
                &master_only,
                Class::Read,
                Some(RuleTarget::Replica),
                false,
                vec![r(0), r(1), r(0), r(1), r(0), r(1)],
            ),
        ];
        for (name, t, class, rule, written, want) in cases {
            assert_eq!(routes(t, class, rule, written), want, "{name}");
        }
    }

    fn proto(master: Option<(&str, u32)>, replicas: &[(&str, u32, bool)]) -> v1::ServiceConfig {
        v1::ServiceConfig {
            name: "svc".into(),
            topology: Some(v1::Topology {
                master: master.map(|(h, p)| v1::Node {
                    host: h.into(),
                    port: p,
                }),
                replicas: replicas
                    .iter()
                    .map(|(h, p, ok)| v1::Replica {
                        node: Some(v1::Node {
                            host: (*h).into(),
                            port: *p,
                        }),
                        healthy: *ok,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            policy: Some(v1::RoutingPolicy {
                read_policy: v1::ReadPolicy::All as i32,
                consistency: v1::Consistency::Eventual as i32,
                rules: vec![v1::CommandRule {
                    command: "EVALSHA".into(),
                    target: v1::Target::Replica as i32,
                }],
                write_ack_replicas: 1,
                failover_hold_ms: 2500,
            }),
            backend_auth: Some(v1::BackendAuth {
                username: "pivot".into(),
                password: "s3cret".into(),
            }),
            users: vec![v1::ProxyUser {
                name: "alice".into(),
                salt: b"salt".to_vec(),
                password_sha256: pivot_proto::password::hash(b"salt", b"pw").to_vec(),
            }],
        }
    }

    #[test]
    fn from_proto_validates() {
        let ok = RoutingTable::from_proto(
            3,
            &proto(
                Some(("127.0.0.1", 7000)),
                &[("127.0.0.1", 7001, true), ("127.0.0.1", 7002, false)],
            ),
        )
        .unwrap();
        assert_eq!(ok.version, 3);
        assert_eq!(ok.readable, vec![NodeAddr::new("127.0.0.1", 7001)]);
        assert_eq!(ok.read_policy, ReadPolicy::All);
        assert_eq!(ok.consistency, Consistency::Eventual);
        assert_eq!(ok.write_ack, 1);
        assert_eq!(
            ok.failover_hold,
            Some(std::time::Duration::from_millis(2500))
        );
        assert_eq!(
            rule_for(&ok, b"evalsha", Some(b"abc")),
            Some(RuleTarget::Replica)
        );
        assert_eq!(rule_for(&ok, b"get", None), None);
        let auth = ok.backend_auth.as_deref().unwrap();
        assert_eq!(
            auth.auth_command(),
            b"*3\r\n$4\r\nAUTH\r\n$5\r\npivot\r\n$6\r\ns3cret\r\n"
        );
        assert!(
            !format!("{ok:?}").contains("s3cret"),
            "the password never shows in Debug"
        );

        let errs = [
            (proto(Some(("", 7000)), &[]), "empty host"),
            (proto(Some(("h", 70000)), &[]), "invalid port"),
            (proto(Some(("h", 0)), &[]), "invalid port"),
            (
                proto(Some(("h", 1)), &[("h", 1, true)]),
                "both master and replica",
            ),
            (
                proto(Some(("h", 1)), &[("h", 2, true), ("h", 2, true)]),
                "twice",
            ),
        ];
        for (p, want) in errs {
            let e = RoutingTable::from_proto(1, &p).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        let mut no_topo = proto(None, &[]);
        no_topo.topology = None;
        assert!(RoutingTable::from_proto(1, &no_topo).is_err());
        let mut bad_rule = proto(None, &[]);
        if let Some(p) = bad_rule.policy.as_mut() {
            p.rules[0].target = 0;
        }
        assert!(RoutingTable::from_proto(1, &bad_rule).is_err());
        let mut deny = proto(None, &[]);
        if let Some(p) = deny.policy.as_mut() {
            p.rules[0].target = v1::Target::Deny as i32;
        }
        let deny = RoutingTable::from_proto(1, &deny).unwrap();
        assert_eq!(rule_for(&deny, b"evalsha", None), Some(RuleTarget::Deny));
        let mut dup_user = proto(None, &[]);
        dup_user.users.push(dup_user.users[0].clone());
        assert!(RoutingTable::from_proto(1, &dup_user).is_err());
        let mut bad_hash = proto(None, &[]);
        bad_hash.users[0].password_sha256.pop();
        assert!(RoutingTable::from_proto(1, &bad_hash).is_err());
    }

    #[test]
    fn users_check_passwords() {
        let t = RoutingTable::from_proto(1, &proto(Some(("h", 1)), &[])).unwrap();
        assert!(t.auth_required());
        let alice = t.users.get(&b"alice"[..]).unwrap();
        assert!(alice.check(b"pw"));
        assert!(!alice.check(b"pw2"));
        // Debug shows no hash or salt bytes.
        let shown = format!("{t:?}");
        assert!(shown.contains("UserEntry(<redacted>)"), "{shown}");
        let first = pivot_proto::password::hash(b"salt", b"pw")[0];
        assert!(!shown.contains(&format!("hash: [{first}")), "{shown}");
        assert!(!RoutingTable::empty("svc").auth_required());
    }
}
