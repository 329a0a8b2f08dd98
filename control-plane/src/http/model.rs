//! The API's JSON shapes (docs/api.md), with their OpenAPI schemas, and the conversions
//! from and to the domain types: the one place the wire format is decided.
//!
//! Request bodies deny unknown fields, and each field's type checks its own value while
//! it is parsed, so that a bad value is reported with its JSON path (see
//! `extract::ApiJson`). Response types carry no secret: backend credentials show only
//! whether a password is set, users only their names, tokens only their metadata.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::extract::JsonShape;
use crate::auth::{Role, TokenInfo};
use crate::config::HoldDuration;
use crate::grpc::ProxyInfo;
use crate::state::{
    BackendAuth, CommandRule, Consistency, FleetState, Policy, ReadPolicy, ServiceState, Target,
    WriteAck,
};
use crate::topology::{NodeAddr, Topology};

// Patterns in the schemas: `write_ack` is what `WriteAck::from_str` accepts; durations are
// the forms the examples and the UI use (the server takes any humantime duration from 1ms
// to 10m, such as `1m 30s`).

/// RFC 3339 with milliseconds, UTC.
pub fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

// ---------------------------------------------------------------------------------------
// Enums of the wire format (twins of the domain enums, which carry no schema).

/// How reads are spread over the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
#[schema(as = ReadPolicy)]
pub enum ReadPolicyWire {
    /// Every command to the master.
    MasterOnly,
    /// Reads over healthy replicas, master as fallback.
    Replicas,
    /// Reads over master and healthy replicas.
    All,
}

impl From<ReadPolicy> for ReadPolicyWire {
    fn from(p: ReadPolicy) -> Self {
        match p {
            ReadPolicy::MasterOnly => ReadPolicyWire::MasterOnly,
            ReadPolicy::Replicas => ReadPolicyWire::Replicas,
            ReadPolicy::All => ReadPolicyWire::All,
        }
    }
}

impl From<ReadPolicyWire> for ReadPolicy {
    fn from(p: ReadPolicyWire) -> Self {
        match p {
            ReadPolicyWire::MasterOnly => ReadPolicy::MasterOnly,
            ReadPolicyWire::Replicas => ReadPolicy::Replicas,
            ReadPolicyWire::All => ReadPolicy::All,
        }
    }
}

/// Read consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
#[schema(as = Consistency)]
pub enum ConsistencyWire {
    /// Any healthy replica.
    Eventual,
    /// A connection's reads see its own writes.
    ReadYourWrites,
    /// Master only.
    Strong,
}

impl From<Consistency> for ConsistencyWire {
    fn from(c: Consistency) -> Self {
        match c {
            Consistency::Eventual => ConsistencyWire::Eventual,
            Consistency::ReadYourWrites => ConsistencyWire::ReadYourWrites,
            Consistency::Strong => ConsistencyWire::Strong,
        }
    }
}

impl From<ConsistencyWire> for Consistency {
    fn from(c: ConsistencyWire) -> Self {
        match c {
            ConsistencyWire::Eventual => Consistency::Eventual,
            ConsistencyWire::ReadYourWrites => Consistency::ReadYourWrites,
            ConsistencyWire::Strong => Consistency::Strong,
        }
    }
}

/// Where a command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
#[schema(as = Target)]
pub enum TargetWire {
    /// The master.
    Master,
    /// A healthy replica.
    Replica,
    /// Any node.
    Any,
    /// Refused by the proxy.
    Deny,
}

impl From<Target> for TargetWire {
    fn from(t: Target) -> Self {
        match t {
            Target::Master => TargetWire::Master,
            Target::Replica => TargetWire::Replica,
            Target::Any => TargetWire::Any,
            Target::Deny => TargetWire::Deny,
        }
    }
}

impl From<TargetWire> for Target {
    fn from(t: TargetWire) -> Self {
        match t {
            TargetWire::Master => Target::Master,
            TargetWire::Replica => Target::Replica,
            TargetWire::Any => Target::Any,
            TargetWire::Deny => Target::Deny,
        }
    }
}

/// A token's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Role)]
pub enum RoleWire {
    /// Read and change.
    Admin,
    /// Read only.
    Viewer,
}

impl From<Role> for RoleWire {
    fn from(r: Role) -> Self {
        match r {
            Role::Admin => RoleWire::Admin,
            Role::Viewer => RoleWire::Viewer,
        }
    }
}

impl From<RoleWire> for Role {
    fn from(r: RoleWire) -> Self {
        match r {
            RoleWire::Admin => Role::Admin,
            RoleWire::Viewer => Role::Viewer,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Values parsed while deserializing, so that errors carry the field's path.

/// A `host:port` address in a request: a host name or IPv4 address (letters, digits, `.`,
/// `-`, `_`) or a bracketed IPv6 address, and a port from 1 to 65535. Stricter than the
/// flags' parser on purpose: an API client gets a clear 400 for a host with spaces or
/// control characters rather than a watcher failing to resolve it.
#[derive(Debug, Clone, PartialEq, Eq, ToSchema)]
#[schema(as = HostPort, value_type = String, example = "127.0.0.1:26379",
    pattern = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$")]
pub struct Addr(pub NodeAddr);

impl FromStr for Addr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("`{s}` is not HOST:PORT (a host name, an IPv4 address or [IPv6], and a port)")
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => {
                !v6.is_empty()
                    && v6
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            }
            None => {
                !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            }
        };
        let port_ok = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && !port.starts_with('0');
        if !host_ok || !port_ok {
            return Err(bad());
        }
        NodeAddr::from_str(s).map(Addr)
    }
}

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A `max_replica_lag` in a request: bytes, 0 to 2^63-1. An integral JSON number written
/// with a fraction (`1024.0`) is accepted, as JSON Schema counts it an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag(pub u64);

impl<'de> Deserialize<'de> for Lag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        let max = i64::MAX as u64;
        let value = match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Some(v),
            // Exact for every float that passes the range check below.
            (None, Some(f)) if f.fract() == 0.0 && (0.0..9.2e18).contains(&f) => Some(f as u64),
            _ => None,
        };
        value
            .filter(|v| *v <= max)
            .map(Lag)
            .ok_or_else(|| serde::de::Error::custom(format!("must be an integer from 0 to {max}")))
    }
}

/// A `failover_hold` duration in a request (`"10s"`, `"1500ms"`; 1ms to 10m).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold(pub Duration);

impl<'de> Deserialize<'de> for Hold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HoldDuration::from_str(&s)
            .map(|h| Hold(h.0))
            .map_err(serde::de::Error::custom)
    }
}

/// A rule's command name in a request (`flushall`, `script|load`), validated and
/// lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCommand(pub String);

impl<'de> Deserialize<'de> for RuleCommand {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CommandRule::new(&s, Target::Master)
            .map(|r| RuleCommand(r.command))
            .map_err(serde::de::Error::custom)
    }
}

/// A non-empty string (passwords).
#[derive(Clone, PartialEq, Eq)]
pub struct NonEmpty(pub String);

impl std::fmt::Debug for NonEmpty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only passwords use it.
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("must not be empty"));
        }
        if s.len() > 4096 {
            return Err(serde::de::Error::custom("longer than 4096 bytes"));
        }
        Ok(NonEmpty(s))
    }
}

/// A field that may be absent (with `#[serde(default)]`) but not `null`.
pub fn non_null<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    T::deserialize(d).map(Some)
}

/// An ACL user name in a request: 1-128 printable ASCII characters, no spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclUser(pub String);

impl<'de> Deserialize<'de> for AclUser {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::state::validate_user_name(&s).map_err(serde::de::Error::custom)?;
        Ok(AclUser(s))
    }
}

/// `Some(None)` for an explicit `null`, `None` for an absent field (with
/// `#[serde(default)]`): the PATCH convention.
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

// ---------------------------------------------------------------------------------------
// Policy.

/// A command rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = Rule)]
pub struct RuleView {
    /// Command name, lowercase; `container|sub` for a subcommand.
    #[schema(example = "flushall")]
    pub command: String,
    /// Where it goes.
    pub target: TargetWire,
}

impl From<&CommandRule> for RuleView {
    fn from(r: &CommandRule) -> Self {
        RuleView {
            command: r.command.clone(),
            target: r.target.into(),
        }
    }
}

/// A command rule in a request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RuleInput)]
pub struct RuleBody {
    /// Command name (any case); `container|sub` for a subcommand.
    #[schema(value_type = String, example = "flushall", min_length = 1, max_length = 128,
        pattern = r"^[!-{}~]+(\|[!-{}~]+)?$")]
    pub command: RuleCommand,
    /// Where it goes.
    pub target: TargetWire,
}

/// A service's routing policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = Policy)]
pub struct PolicyView {
    /// Read spreading.
    pub read_policy: ReadPolicyWire,
    /// Read consistency.
    pub consistency: ConsistencyWire,
    /// Command rules.
    pub rules: Vec<RuleView>,
    /// Replicas further behind than this many bytes get no reads; `null`: no limit.
    pub max_replica_lag: Option<u64>,
    /// When writes are acknowledged: `master` or `replicas(N)`.
    #[schema(example = "master", pattern = r"^(master|replicas\([0-9]+\))$")]
    pub write_ack: String,
    /// How long proxies hold requests while there is no master; `null`: the proxies' own
    /// setting.
    #[schema(example = "10s")]
    pub failover_hold: Option<String>,
}

impl From<&Policy> for PolicyView {
    fn from(p: &Policy) -> Self {
        PolicyView {
            read_policy: p.read_policy.into(),
            consistency: p.consistency.into(),
            rules: p.rules.iter().map(RuleView::from).collect(),
            max_replica_lag: p.max_replica_lag,
            write_ack: p.write_ack.to_string(),
            failover_hold: p
                .failover_hold
                .map(|d| humantime::format_duration(d).to_string()),
        }
    }
}

fn rules_from(rules: Vec<RuleBody>, field: &str) -> Result<Vec<CommandRule>, (String, String)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(rules.len());
    for (i, r) in rules.into_iter().enumerate() {
        if !seen.insert(r.command.0.clone()) {
            return Err((
                format!("{field}[{i}].command"),
                format!("more than one rule for `{}`", r.command.0),
            ));
        }
        out.push(CommandRule {
            command: r.command.0,
            target: r.target.into(),
        });
    }
    Ok(out)
}

/// A whole policy (`PUT .../policy`, and `policy` of a new service). `max_replica_lag`
/// and `failover_hold` may be left out (= `null`); `rules` may be left out (= none).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PolicyInput)]
pub struct PolicyBody {
    /// Read spreading.
    pub read_policy: ReadPolicyWire,
    /// Read consistency.
    pub consistency: ConsistencyWire,
    /// Command rules, one per command.
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub rules: Vec<RuleBody>,
    /// Replicas further behind than this many bytes get no reads; `null`: no limit.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub max_replica_lag: Option<Lag>,
    /// `master` or `replicas(N)`, 1 <= N <= 64.
    #[schema(value_type = String, example = "master", pattern = r"^(master|replicas\((6[0-4]|[1-5][0-9]|[1-9])\))$")]
    pub write_ack: WriteAck,
    /// 1ms to 10m (`"10s"`, `"1500ms"`); `null`: the proxies' own setting.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "10s", pattern = r"^([0-9]{1,6} ?(ms|s|m) ?){1,3}$")]
    pub failover_hold: Option<Hold>,
}

impl PolicyBody {
    /// The domain policy; an error names the field (under `prefix`).
    pub fn into_policy(self, prefix: &str) -> Result<Policy, (String, String)> {
        Ok(Policy {
            read_policy: self.read_policy.into(),
            consistency: self.consistency.into(),
            rules: rules_from(self.rules, &format!("{prefix}rules"))?,
            max_replica_lag: self.max_replica_lag.map(|l| l.0),
            write_ack: self.write_ack,
            failover_hold: self.failover_hold.map(|h| h.0),
        })
    }
}

/// Some fields of a policy (`PATCH .../policy`); `null` clears `max_replica_lag` and
/// `failover_hold`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PolicyPatch)]
pub struct PolicyPatch {
    /// Read spreading.
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = ReadPolicyWire)]
    pub read_policy: Option<ReadPolicyWire>,
    /// Read consistency.
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = ConsistencyWire)]
    pub consistency: Option<ConsistencyWire>,
    /// Replaces all command rules.
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = Vec<RuleBody>, max_items = 1000)]
    pub rules: Option<Vec<RuleBody>>,
    /// Bytes; `null`: no limit.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub max_replica_lag: Option<Option<Lag>>,
    /// `master` or `replicas(N)`.
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = String, example = "replicas(1)", pattern = r"^(master|replicas\((6[0-4]|[1-5][0-9]|[1-9])\))$")]
    pub write_ack: Option<WriteAck>,
    /// 1ms to 10m; `null`: the proxies' own setting.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, example = "10s", pattern = r"^([0-9]{1,6} ?(ms|s|m) ?){1,3}$")]
    pub failover_hold: Option<Option<Hold>>,
}

impl PolicyPatch {
    /// `current` with the given fields changed.
    pub fn apply(self, current: &Policy) -> Result<Policy, (String, String)> {
        let mut p = current.clone();
        if let Some(v) = self.read_policy {
            p.read_policy = v.into();
        }
        if let Some(v) = self.consistency {
            p.consistency = v.into();
        }
        if let Some(rules) = self.rules {
            p.rules = rules_from(rules, "rules")?;
        }
        if let Some(v) = self.max_replica_lag {
            p.max_replica_lag = v.map(|l| l.0);
        }
        if let Some(v) = self.write_ack {
            p.write_ack = v;
        }
        if let Some(v) = self.failover_hold {
            p.failover_hold = v.map(|h| h.0);
        }
        Ok(p)
    }
}

/// A policy change: the policy now, and the config version that carries it (when
/// nothing changed, the version that last changed the service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PolicyChange {
    /// The policy.
    pub policy: PolicyView,
    /// Config version; proxies that ACKed it apply the policy.
    pub version: u64,
}

/// A service's rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RuleList {
    /// One per command.
    pub rules: Vec<RuleView>,
}

/// Body of `PUT .../rules/{command}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleTarget {
    /// Where the command goes.
    pub target: TargetWire,
}

/// A rule change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RuleChange {
    /// The rule.
    pub rule: RuleView,
    /// Config version that carries it.
    pub version: u64,
}

// ---------------------------------------------------------------------------------------
// Topology.

/// A replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = Replica)]
pub struct ReplicaView {
    /// `host:port`.
    pub addr: String,
    /// Proxies may read from it.
    pub healthy: bool,
    /// Bytes behind the master, when known.
    pub lag_bytes: Option<u64>,
    /// Longest reported replication link down time, ms.
    pub link_down_ms: u64,
    /// Why it is unhealthy; empty when healthy.
    pub reason: String,
}

/// A Sentinel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = Sentinel)]
pub struct SentinelView {
    /// `host:port`.
    pub addr: String,
    /// Given by the operator (votes on the master) rather than discovered.
    pub configured: bool,
    /// The control plane has a working link to it.
    pub reachable: bool,
}

/// A service's topology as the control plane decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = Topology)]
pub struct TopologyView {
    /// The watcher has made its first decision.
    pub decided: bool,
    /// `host:port` of the accepted master; `null` while none is known.
    pub master: Option<String>,
    /// Why the master is what it is.
    pub master_reason: String,
    /// Sentinel config epoch of the master.
    pub config_epoch: u64,
    /// Config version at which the topology last changed.
    pub changed_version: u64,
    /// When it last changed (RFC 3339).
    #[schema(format = DateTime)]
    pub changed_at: Option<String>,
    /// Replicas, by address.
    pub replicas: Vec<ReplicaView>,
    /// Configured and discovered Sentinels, by address.
    pub sentinels: Vec<SentinelView>,
}

impl TopologyView {
    /// The view of `t`.
    pub fn new(t: &Topology, decided: bool) -> Self {
        TopologyView {
            decided,
            master: t.master.as_ref().map(ToString::to_string),
            master_reason: t.master_reason.clone(),
            config_epoch: t.config_epoch,
            changed_version: t.changed_version,
            changed_at: t.changed_at.map(time),
            replicas: t
                .replicas
                .iter()
                .map(|r| ReplicaView {
                    addr: r.addr.to_string(),
                    healthy: r.healthy,
                    lag_bytes: r.lag_bytes,
                    link_down_ms: r.link_down_ms,
                    reason: r.reason.clone(),
                })
                .collect(),
            sentinels: t
                .sentinels
                .iter()
                .map(|s| SentinelView {
                    addr: s.addr.to_string(),
                    configured: s.configured,
                    reachable: s.reachable,
                })
                .collect(),
        }
    }

    /// The view of `s`'s topology.
    pub fn of(s: &ServiceState) -> Self {
        TopologyView::new(&s.topology, s.decided)
    }
}

/// A service's topology, with its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct NamedTopology {
    /// Service name.
    pub name: String,
    /// Its topology.
    #[serde(flatten)]
    pub topology: TopologyView,
}

/// Every service's topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FleetTopology {
    /// Global config version.
    pub version: u64,
    /// By name.
    pub services: Vec<NamedTopology>,
}

impl From<&FleetState> for FleetTopology {
    fn from(f: &FleetState) -> Self {
        FleetTopology {
            version: f.version,
            services: f
                .services
                .values()
                .map(|s| NamedTopology {
                    name: s.name.clone(),
                    topology: TopologyView::of(s),
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Services.

/// Backend credentials as shown: never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BackendAuthView {
    /// ACL user; `null` for the default user.
    pub username: Option<String>,
    /// Always true: a password is set (it is never shown).
    pub password_set: bool,
}

/// Backend credentials in a request.
#[derive(Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BackendAuthInput)]
pub struct BackendAuthBody {
    /// ACL user; absent or `null` for the default user.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = r"^[!-~]{1,128}$")]
    pub username: Option<AclUser>,
    /// The password (write-only).
    #[schema(value_type = String, min_length = 1, max_length = 4096, write_only)]
    pub password: NonEmpty,
}

impl std::fmt::Debug for BackendAuthBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendAuthBody").finish_non_exhaustive()
    }
}

impl From<BackendAuthBody> for BackendAuth {
    fn from(b: BackendAuthBody) -> Self {
        BackendAuth {
            username: b.username.map(|u| u.0),
            password: b.password.0,
        }
    }
}

/// A service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = Service)]
pub struct ServiceView {
    /// Sentinel master name.
    pub name: String,
    /// Configured Sentinels, `host:port`.
    pub sentinels: Vec<String>,
    /// Credentials for its Redis nodes, without the password.
    pub backend_auth: Option<BackendAuthView>,
    /// Routing policy.
    pub policy: PolicyView,
    /// Names of the users clients authenticate to the proxies as.
    pub users: Vec<String>,
    /// Version of the last configuration change (0: none since the control plane
    /// started).
    pub config_version: u64,
    /// Current topology.
    pub topology: TopologyView,
}

impl From<&ServiceState> for ServiceView {
    fn from(s: &ServiceState) -> Self {
        ServiceView {
            name: s.name.clone(),
            sentinels: s.sentinels.iter().map(ToString::to_string).collect(),
            backend_auth: s.backend_auth.as_ref().map(|a| BackendAuthView {
                username: a.username.clone(),
                password_set: true,
            }),
            policy: PolicyView::from(&s.policy),
            users: s.users.iter().map(|u| u.name.clone()).collect(),
            config_version: s.config_version,
            topology: TopologyView::of(s),
        }
    }
}

/// Every service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ServiceList {
    /// By name.
    pub services: Vec<ServiceView>,
}

// ---------------------------------------------------------------------------------------
// Proxies.

/// A proxy.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(as = Proxy)]
pub struct ProxyView {
    /// Stable proxy id.
    pub proxy_id: String,
    /// Client-facing address it announced.
    pub listen_addr: String,
    /// Its build version.
    pub build_version: String,
    /// Services it serves.
    pub services: Vec<String>,
    /// It has an open config stream.
    pub connected: bool,
    /// Last config version it acknowledged.
    pub acked_version: Option<u64>,
    /// It has not acknowledged the version that last changed one of its services.
    pub behind: bool,
    /// Reason of its last NACK.
    pub last_nack: Option<String>,
    /// Version of its last NACK.
    pub last_nack_version: Option<u64>,
    /// Last message from it (RFC 3339).
    #[schema(format = DateTime)]
    pub last_seen: String,
    /// Config version it runs, from its last status report (or its hello).
    pub running_version: Option<u64>,
    /// Open client connections, from its last status report; `null` until it reports.
    pub client_connections: Option<u64>,
    /// Commands per second between its last two status reports; `null` until there are
    /// two.
    pub ops_per_sec: Option<f64>,
    /// Reads per second, as `ops_per_sec`.
    pub reads_per_sec: Option<f64>,
    /// Writes per second, as `ops_per_sec`.
    pub writes_per_sec: Option<f64>,
    /// Requests waiting for a usable master, from its last status report.
    pub held_requests: Option<u64>,
    /// When its last status report arrived (RFC 3339).
    #[schema(format = DateTime)]
    pub status_at: Option<String>,
    /// Its stream is open but nothing arrived on it for several report periods.
    pub silent: bool,
    /// Its last status report said it is shutting down: not ready, still serving for its
    /// `--shutdown-delay`, then finishing its clients.
    pub draining: bool,
}

impl ProxyView {
    /// The view of `p` against the fleet state `f`.
    pub fn new(p: &ProxyInfo, f: &FleetState) -> Self {
        // The newest version that changed one of its services: a proxy that has not
        // ACKed it runs an older configuration.
        let needed = p
            .services
            .iter()
            .filter_map(|name| f.services.get(name))
            .map(|s| s.topology.changed_version.max(s.config_version))
            .max()
            .unwrap_or(0);
        ProxyView {
            proxy_id: p.proxy_id.clone(),
            listen_addr: p.listen_addr.clone(),
            build_version: p.build_version.clone(),
            services: p.services.clone(),
            connected: p.streams > 0,
            acked_version: p.acked_version,
            behind: p.acked_version.unwrap_or(0) < needed,
            last_nack: p.last_nack.clone(),
            last_nack_version: p.last_nack_version,
            last_seen: time(p.last_seen),
            running_version: p.running_version,
            client_connections: p.client_connections,
            ops_per_sec: p.ops_per_sec.filter(|v| v.is_finite()),
            reads_per_sec: p.reads_per_sec.filter(|v| v.is_finite()),
            writes_per_sec: p.writes_per_sec.filter(|v| v.is_finite()),
            held_requests: p.held_requests,
            status_at: p.status_at.map(time),
            silent: p.silent,
            draining: p.draining,
        }
    }
}

/// The proxy fleet.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ProxyList {
    /// Current global config version.
    pub version: u64,
    /// Connected first, then by id.
    pub proxies: Vec<ProxyView>,
}

// ---------------------------------------------------------------------------------------
// Events.

/// A topology or configuration event.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(as = Event)]
pub struct EventView {
    /// Increasing id (use it as `before` to page).
    pub id: i64,
    /// Service name.
    pub service: String,
    /// Config version it produced.
    pub version: i64,
    /// What happened (`master-changed`, `failover-finished`, `config-changed`, ...).
    pub kind: String,
    /// Master before.
    pub old_master: Option<String>,
    /// Master after.
    pub new_master: Option<String>,
    /// Why, for people.
    pub reason: String,
    /// Details by kind.
    pub details: Value,
    /// When (RFC 3339).
    #[schema(format = DateTime)]
    pub at: String,
}

impl From<crate::store::EventRow> for EventView {
    fn from(e: crate::store::EventRow) -> Self {
        EventView {
            id: e.id,
            service: e.service,
            version: e.version,
            kind: e.kind,
            old_master: e.old_master,
            new_master: e.new_master,
            reason: e.reason,
            details: serde_json::from_str(&e.details)
                .unwrap_or_else(|_| Value::Object(serde_json::Map::new())),
            at: time(crate::store::from_unix_ms(e.at)),
        }
    }
}

/// A page of events, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct EventPage {
    /// The events.
    pub events: Vec<EventView>,
    /// Pass as `before` for the next (older) page; `null`: this is the last page.
    pub next_before: Option<i64>,
}

// ---------------------------------------------------------------------------------------
// Audit log.

/// An audit-log entry: who changed what, when, from what to what (secrets redacted).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(as = AuditEntry)]
pub struct AuditView {
    /// Increasing id (use it as `before` to page).
    pub id: i64,
    /// When (RFC 3339).
    #[schema(format = DateTime)]
    pub at: String,
    /// `token:<name>` for API calls, `config` for start-up flags.
    pub actor: String,
    /// `service.create`, `policy.set`, `rule.put`, `user.delete`, `token.create`,
    /// `failover`, ...
    pub action: String,
    /// The service acted on, if any.
    pub service: Option<String>,
    /// The object within it (rule command, user name, token name); may be empty.
    pub target: String,
    /// State before (`null` when created).
    pub before: Value,
    /// State after (`null` when deleted).
    pub after: Value,
}

impl From<crate::store::AuditEntry> for AuditView {
    fn from(a: crate::store::AuditEntry) -> Self {
        AuditView {
            id: a.id,
            at: time(crate::store::from_unix_ms(a.at)),
            actor: a.actor,
            action: a.action,
            service: a.service,
            target: a.target,
            before: a.before,
            after: a.after,
        }
    }
}

/// A page of audit entries, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<AuditView>,
    /// Pass as `before` for the next (older) page; `null`: this is the last page.
    pub next_before: Option<i64>,
}

// ---------------------------------------------------------------------------------------
// Users and failover.

/// A proxy user (never its password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = User)]
pub struct UserView {
    /// User name.
    pub name: String,
}

/// A service's proxy users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct UserList {
    /// By name.
    pub users: Vec<UserView>,
}

/// Body of `PUT .../users/{user}`.
#[derive(Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UserInput)]
pub struct UserBody {
    /// The password (write-only; stored as a salted hash).
    #[schema(value_type = String, min_length = 1, max_length = 4096, write_only)]
    pub password: NonEmpty,
}

impl std::fmt::Debug for UserBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserBody").finish_non_exhaustive()
    }
}

/// A user change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct UserChange {
    /// User name.
    pub name: String,
    /// Config version that carries it.
    pub version: u64,
}

/// What a planned failover did, with its timings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = FailoverReport)]
pub struct FailoverView {
    /// The master before.
    pub old_master: String,
    /// The promoted replica.
    pub new_master: String,
    /// From the pause to every replica having the master's offset, ms.
    pub catch_up_ms: u64,
    /// From `SENTINEL FAILOVER` to the promoted replica answering as master, ms.
    pub promotion_ms: u64,
    /// How long the master's writes were paused, ms.
    pub paused_ms: u64,
    /// From the pause to the control plane naming the new master, ms.
    pub total_ms: u64,
}

impl From<crate::failover::FailoverReport> for FailoverView {
    fn from(r: crate::failover::FailoverReport) -> Self {
        FailoverView {
            old_master: r.old_master,
            new_master: r.new_master,
            catch_up_ms: r.catch_up_ms,
            promotion_ms: r.promotion_ms,
            paused_ms: r.paused_ms,
            total_ms: r.total_ms,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Services in requests.

/// Body of `POST /api/v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ServiceInput)]
pub struct NewServiceBody {
    /// Sentinel master name: 1-128 printable ASCII characters, no spaces.
    #[schema(example = "mymaster", pattern = r"^[!-~]{1,128}$")]
    pub name: String,
    /// Its Sentinels, `host:port` (1 to 16).
    #[schema(value_type = Vec<Addr>, example = json!(["127.0.0.1:26379"]), min_items = 1, max_items = 16)]
    pub sentinels: Vec<Addr>,
    /// Credentials for its Redis nodes.
    #[serde(default)]
    pub backend_auth: Option<BackendAuthBody>,
    /// Routing policy; absent: the default.
    #[serde(default)]
    pub policy: Option<PolicyBody>,
}

/// Body of `PATCH /api/v1/services/{name}`: the fields to change.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ServicePatch)]
pub struct ServicePatch {
    /// New Sentinels, `host:port` (1 to 16).
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = Vec<Addr>, min_items = 1, max_items = 16)]
    pub sentinels: Option<Vec<Addr>>,
    /// New credentials; `null` removes them.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<BackendAuthBody>)]
    pub backend_auth: Option<Option<BackendAuthBody>>,
}

// ---------------------------------------------------------------------------------------
// Tokens.

/// The calling token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct WhoAmI {
    /// Token name.
    pub name: String,
    /// Its role.
    pub role: RoleWire,
}

/// A token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = Token)]
pub struct TokenView {
    /// Id (for `DELETE /api/v1/tokens/{id}`).
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Role.
    pub role: RoleWire,
    /// When it was created (RFC 3339).
    #[schema(format = DateTime)]
    pub created_at: String,
    /// `token:<name>` of its creator, `bootstrap` or `PIVOT_ADMIN_TOKEN`.
    pub created_by: String,
    /// Last use, to the minute (RFC 3339); `null`: never used.
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
}

impl From<&TokenInfo> for TokenView {
    fn from(t: &TokenInfo) -> Self {
        TokenView {
            id: t.id,
            name: t.name.clone(),
            role: t.role.into(),
            created_at: time(t.created_at),
            created_by: t.created_by.clone(),
            last_used_at: t.last_used_at.map(time),
        }
    }
}

/// Every token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct TokenList {
    /// Oldest first.
    pub tokens: Vec<TokenView>,
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TokenInput)]
pub struct NewToken {
    /// Unique name: 1 to 64 of `A-Z a-z 0-9 . _ - @ :`.
    #[schema(example = "ci", pattern = r"^[A-Za-z0-9._@:-]{1,64}$")]
    pub name: String,
    /// Role.
    pub role: RoleWire,
}

/// A new token: the only response that shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CreatedToken {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Role.
    pub role: RoleWire,
    /// The token, for `Authorization: Bearer <token>`. Shown this once.
    pub token: String,
}

/// `/healthz`, `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Status {
    /// `ok` or `ready`.
    pub status: String,
}

// Where each request body has objects (see `JsonShape`).
impl JsonShape for NewServiceBody {
    const OBJECTS: &'static [&'static str] = &["", "backend_auth", "policy", "policy.rules[]"];
}
impl JsonShape for ServicePatch {
    const OBJECTS: &'static [&'static str] = &["", "backend_auth"];
}
impl JsonShape for PolicyBody {
    const OBJECTS: &'static [&'static str] = &["", "rules[]"];
}
impl JsonShape for PolicyPatch {
    const OBJECTS: &'static [&'static str] = &["", "rules[]"];
}
impl JsonShape for RuleTarget {
    const OBJECTS: &'static [&'static str] = &[""];
}
impl JsonShape for UserBody {
    const OBJECTS: &'static [&'static str] = &[""];
}
impl JsonShape for NewToken {
    const OBJECTS: &'static [&'static str] = &[""];
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_in_requests() {
        for ok in [
            "127.0.0.1:26379",
            "sentinel-1.local:1",
            "[::1]:65535",
            "a_b:80",
        ] {
            assert!(ok.parse::<Addr>().is_ok(), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "h:0",
            "h:65536",
            "h:080",
            "h:",
            ":1",
            "a b:1",
            "h\u{1f}x:1",
            "::1:5",
            "[]:1",
            "[zz]:1",
            "h:+1",
            "ü:1",
        ] {
            assert!(bad.parse::<Addr>().is_err(), "{bad}");
        }
        assert_eq!(
            "[::1]:7".parse::<Addr>().unwrap().0,
            NodeAddr::new("::1", 7)
        );
    }
}
