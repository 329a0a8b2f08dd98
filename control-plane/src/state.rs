//! The fleet state: every service's accepted topology and the global config version,
//! published as immutable snapshots through a `watch` channel.
//!
//! Only [`State::apply`] changes it. A change proxies act on (see
//! [`Topology::same_shape`]) bumps the version, publishes a new snapshot and queues a
//! `topology_events` row; a poll that changes only lag numbers refreshes the snapshot
//! in place (same version); an equal result is a no-op.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::json;
use tokio::sync::{Mutex, watch};

use crate::metrics::{Metrics, ServiceLabel, gauge_value};
use crate::store::{NewEvent, Store, StoredService, VERSION_BLOCK, Write, Writer};
use crate::topology::{NodeAddr, SentinelState, Topology};

/// How reads are spread (domain twin of the proto enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadPolicy {
    /// Every command to the master.
    MasterOnly,
    /// Reads over healthy replicas, master as fallback.
    Replicas,
    /// Reads over master and healthy replicas.
    All,
}

impl std::str::FromStr for ReadPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "master-only" => Ok(ReadPolicy::MasterOnly),
            "replicas" => Ok(ReadPolicy::Replicas),
            "all" => Ok(ReadPolicy::All),
            other => Err(format!(
                "unknown read policy `{other}` (expected master-only, replicas or all)"
            )),
        }
    }
}

/// Read consistency (domain twin of the proto enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// Any healthy replica.
    Eventual,
    /// A connection's reads see its own writes.
    ReadYourWrites,
    /// Master only.
    Strong,
}

/// Where a command goes, overriding its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The master.
    Master,
    /// A healthy replica.
    Replica,
    /// Any node.
    Any,
    /// Refused by the proxy.
    Deny,
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "master" => Ok(Target::Master),
            "replica" => Ok(Target::Replica),
            "any" => Ok(Target::Any),
            "deny" => Ok(Target::Deny),
            other => Err(format!(
                "unknown rule target `{other}` (expected master, replica, any or deny)"
            )),
        }
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "eventual" => Ok(Consistency::Eventual),
            "read-your-writes" => Ok(Consistency::ReadYourWrites),
            "strong" => Ok(Consistency::Strong),
            other => Err(format!(
                "unknown consistency `{other}` (expected eventual, read-your-writes or strong)"
            )),
        }
    }
}

/// A user clients authenticate to the proxies as. Only a salted hash of the password is
/// kept (see `pivot_proto::password`); `Debug` hides even that.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUser {
    /// User name; `default` is the one `AUTH password` names.
    pub name: String,
    /// Random, per user and password.
    pub salt: Vec<u8>,
    /// `SHA-256(salt || password)`.
    pub hash: Vec<u8>,
}

impl std::fmt::Debug for ProxyUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyUser")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ProxyUser {
    /// A user with `password` hashed under a fresh random salt.
    pub fn new(name: &str, password: &str) -> Result<ProxyUser, String> {
        validate_user_name(name)?;
        if password.is_empty() {
            return Err(format!("user `{name}` needs a non-empty password"));
        }
        let salt: [u8; pivot_proto::password::SALT_LEN] = rand::random();
        Ok(ProxyUser {
            name: name.to_string(),
            salt: salt.to_vec(),
            hash: pivot_proto::password::hash(&salt, password.as_bytes()).to_vec(),
        })
    }
}

/// User names as Redis's ACL accepts them: no spaces or control characters, at most 128
/// bytes.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 || name.bytes().any(|b| b <= b' ' || b > b'~') {
        return Err(format!(
            "invalid user name `{name}`: 1-128 printable ASCII characters, no spaces"
        ));
    }
    Ok(())
}

/// Credentials proxies use to authenticate to a service's Redis nodes. A secret: its
/// `Debug` hides the password, and no API returns it.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendAuth {
    /// ACL user; `None` for the default user.
    pub username: Option<String>,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for BackendAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl std::str::FromStr for BackendAuth {
    type Err = String;

    /// `PASSWORD` or `USER:PASSWORD` (the first `:` separates them; a password with a `:`
    /// for the default user is written `default:pass:word`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (username, password) = match s.split_once(':') {
            Some((u, p)) => (Some(u.to_string()), p.to_string()),
            None => (None, s.to_string()),
        };
        if password.is_empty() || username.as_deref() == Some("") {
            return Err("credentials must be PASSWORD or USER:PASSWORD, both non-empty".into());
        }
        Ok(BackendAuth { username, password })
    }
}

/// A per-service command override.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommandRule {
    /// Command name (`container|sub` for subcommands).
    pub command: String,
    /// Where it goes.
    pub target: Target,
}

/// When a write is acknowledged to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteAck {
    /// With the master's reply.
    #[default]
    Master,
    /// Once this many replicas have it.
    Replicas(u32),
}

impl std::str::FromStr for WriteAck {
    type Err = String;

    /// `master` or `replicas(N)` (N >= 1).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("unknown write ack `{s}` (expected master or replicas(N), N >= 1)");
        if s == "master" {
            return Ok(WriteAck::Master);
        }
        let n = s
            .strip_prefix("replicas(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|n| n.trim().parse::<u32>().ok())
            .filter(|n| (1..=64).contains(n))
            .ok_or_else(bad)?;
        Ok(WriteAck::Replicas(n))
    }
}

impl std::fmt::Display for WriteAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteAck::Master => f.write_str("master"),
            WriteAck::Replicas(n) => write!(f, "replicas({n})"),
        }
    }
}

impl serde::Serialize for WriteAck {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for WriteAck {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The longest `failover_hold` a policy may set: requests held longer than this are
/// better failed, so that clients' own timeouts and retries take over.
pub const MAX_FAILOVER_HOLD: std::time::Duration = std::time::Duration::from_secs(600);

/// A service's routing policy, kept in the `services.policy` column (JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Policy {
    /// Read spreading.
    pub read_policy: ReadPolicy,
    /// Read consistency.
    pub consistency: Consistency,
    /// Command overrides.
    pub rules: Vec<CommandRule>,
    /// Replicas further behind the master than this (bytes of replication offset) get no
    /// reads; `None`: no limit.
    pub max_replica_lag: Option<u64>,
    /// When writes are acknowledged.
    pub write_ack: WriteAck,
    /// How long proxies hold requests for the master while there is none; `None`: the
    /// proxy's `--failover-hold`.
    #[serde(with = "humantime_serde_opt")]
    pub failover_hold: Option<std::time::Duration>,
}

/// `Option<Duration>` as a humantime string (`"10s"`) in JSON.
mod humantime_serde_opt {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}

impl Policy {
    /// Checks what the store and the proxies rely on: valid rule commands, one rule per
    /// command, a failover hold of at most [`MAX_FAILOVER_HOLD`]. The error names the
    /// field (`rules[2].command`) and what is wrong with it.
    pub fn check(&self) -> Result<(), (String, String)> {
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let rule = CommandRule::new(&r.command, r.target)
                .map_err(|e| (format!("rules[{i}].command"), e))?;
            if !seen.insert(rule.command) {
                return Err((
                    format!("rules[{i}].command"),
                    format!("more than one rule for `{}`", r.command),
                ));
            }
        }
        if self.failover_hold.is_some_and(|h| h > MAX_FAILOVER_HOLD) {
            return Err((
                "failover_hold".into(),
                format!("at most {}", humantime::format_duration(MAX_FAILOVER_HOLD)),
            ));
        }
        Ok(())
    }

    /// [`check`](Self::check) as one message.
    pub fn validate(&self) -> Result<(), String> {
        self.check()
            .map_err(|(field, message)| format!("{field}: {message}"))
    }

    /// Takes replicas whose lag is over `max_replica_lag` out of the read pool.
    pub fn enforce(&self, topology: &mut Topology) {
        let Some(max) = self.max_replica_lag else {
            return;
        };
        for r in &mut topology.replicas {
            if let Some(lag) = r.lag_bytes
                && r.healthy
                && lag > max
            {
                r.healthy = false;
                r.reason = format!("lag of {lag} bytes is over the limit of {max}");
            }
        }
    }
}

impl CommandRule {
    /// A validated rule: `command` is a command name or `container|sub`, stored lowercase.
    pub fn new(command: &str, target: Target) -> Result<CommandRule, String> {
        let command = command.trim().to_ascii_lowercase();
        let valid = !command.is_empty()
            && command.len() <= 128
            && command.split('|').count() <= 2
            && command
                .split('|')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_graphic()));
        if !valid {
            return Err(format!(
                "invalid rule command `{command}`: a command name or CONTAINER|SUB"
            ));
        }
        Ok(CommandRule { command, target })
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            read_policy: ReadPolicy::Replicas,
            consistency: Consistency::ReadYourWrites,
            rules: Vec::new(),
            max_replica_lag: None,
            write_ack: WriteAck::Master,
            failover_hold: None,
        }
    }
}

/// One service in a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceState {
    /// Sentinel master name.
    pub name: String,
    /// The Sentinels operators configured (the topology also lists discovered ones).
    pub sentinels: Vec<NodeAddr>,
    /// Accepted topology.
    pub topology: Topology,
    /// Routing policy.
    pub policy: Policy,
    /// Credentials for the service's Redis nodes.
    pub backend_auth: Option<BackendAuth>,
    /// Users clients authenticate as; empty: no authentication.
    pub users: Vec<ProxyUser>,
    /// Version of the last change to what operators configure (policy, users); 0: none
    /// since the start. Proxies get a new update when it or the topology changes.
    pub config_version: u64,
    /// The watcher has made its first decision.
    pub decided: bool,
}

/// An immutable snapshot of every service at one version.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FleetState {
    /// Global config version; strictly increasing, also across restarts.
    pub version: u64,
    /// Services by name.
    pub services: BTreeMap<String, ServiceState>,
}

impl ServiceState {
    /// A service as registered, before its watcher's first decision.
    pub fn undecided(s: &StoredService) -> ServiceState {
        let sentinels = s
            .sentinels
            .iter()
            .map(|a| SentinelState {
                addr: a.clone(),
                configured: true,
                reachable: false,
            })
            .collect();
        ServiceState {
            name: s.name.clone(),
            sentinels: s.sentinels.clone(),
            topology: Topology {
                sentinels,
                master_reason: "waiting for the first answers".into(),
                ..Topology::default()
            },
            policy: s.policy.clone(),
            backend_auth: s.backend_auth.clone(),
            users: s.users.clone(),
            config_version: 0,
            decided: false,
        }
    }
}

impl FleetState {
    /// True when every service's watcher has decided once.
    pub fn all_decided(&self) -> bool {
        self.services.values().all(|s| s.decided)
    }
}

struct Versions {
    /// Last version handed out.
    last: u64,
    /// Highest version reserved in the store.
    reserved: u64,
}

/// Owner of the fleet state. Shared (`Arc`) by the watchers, gRPC and HTTP.
pub struct State {
    tx: watch::Sender<Arc<FleetState>>,
    /// Serialises changes: version bump + publish happen under it.
    versions: Mutex<Versions>,
    store: Store,
    writer: Writer,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("version", &self.tx.borrow().version)
            .finish_non_exhaustive()
    }
}

/// A step of a failover leader's promotion (see `pivot_sentinel::promotion`), named in the
/// event it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromotionStep {
    /// Writes held: event `leader-promoting`.
    Holding,
    /// The promoted replica is master: event `master-changed`, details `via:
    /// leader-promotion`; counted as a failover.
    Promoted,
    /// The leader aborted: event `promotion-aborted`.
    Aborted,
    /// Not completed in time: event `promotion-expired`.
    Expired,
}

/// `details.via` of the `master-changed` event a leader promotion writes.
const VIA_PROMOTION: &str = "leader-promotion";

impl PromotionStep {
    fn kind(self) -> &'static str {
        match self {
            PromotionStep::Holding => "leader-promoting",
            PromotionStep::Promoted => "master-changed",
            PromotionStep::Aborted => "promotion-aborted",
            PromotionStep::Expired => "promotion-expired",
        }
    }
}

/// What a topology change was, for the event row.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Event kind.
    pub kind: &'static str,
    /// Human-readable reason.
    pub reason: String,
    /// JSON details.
    pub details: serde_json::Value,
}

impl State {
    /// Starts from the store's last version, with `services` undecided.
    pub async fn new(
        store: Store,
        writer: Writer,
        metrics: Arc<Metrics>,
        services: &[StoredService],
    ) -> Result<Arc<State>, crate::Error> {
        let last = store.last_version().await?;
        let mut fleet = FleetState {
            version: last,
            services: BTreeMap::new(),
        };
        for s in services {
            fleet
                .services
                .insert(s.name.clone(), ServiceState::undecided(s));
        }
        metrics.config_version.set(gauge_value(last));
        let (tx, _) = watch::channel(Arc::new(fleet));
        Ok(Arc::new(State {
            tx,
            versions: Mutex::new(Versions {
                last,
                reserved: last,
            }),
            store,
            writer,
            metrics,
        }))
    }

    /// A receiver of snapshots (sees the current one at once).
    pub fn subscribe(&self) -> watch::Receiver<Arc<FleetState>> {
        self.tx.subscribe()
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<FleetState> {
        self.tx.borrow().clone()
    }

    /// Applies a decision for `service`. Returns the new version if it bumped one.
    pub async fn apply(&self, service: &str, decided: Topology) -> Option<u64> {
        self.apply_as(service, decided, None).await
    }

    /// The metrics this state updates (the watchers add theirs).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// [`apply`](Self::apply) for a step of a leader promotion, which names the event
    /// when the master changes.
    pub async fn apply_as(
        &self,
        service: &str,
        mut decided: Topology,
        step: Option<PromotionStep>,
    ) -> Option<u64> {
        let mut versions = self.versions.lock().await;
        let current = self.current();
        let prev = current.services.get(service)?;
        prev.policy.enforce(&mut decided);
        if !prev.decided && decided.master.is_none() {
            // Not decided until the Sentinels name a master (right after a start, with the
            // Sentinels unreachable or still disagreeing). Show why, publish nothing: proxies
            // keep the last good table rather than get one without a master.
            if decided != prev.topology {
                let mut next = (*current).clone();
                if let Some(s) = next.services.get_mut(service) {
                    s.topology = decided;
                }
                self.tx.send_replace(Arc::new(next));
            }
            return None;
        }
        if prev.decided && prev.topology.same_shape(&decided) {
            // Refresh lag / link-down numbers without a new version.
            let mut refreshed = decided;
            refreshed.changed_version = prev.topology.changed_version;
            refreshed.changed_at = prev.topology.changed_at;
            if refreshed != prev.topology {
                let mut next = (*current).clone();
                if let Some(s) = next.services.get_mut(service) {
                    s.topology = refreshed;
                }
                self.tx.send_replace(Arc::new(next));
            }
            return None;
        }

        let version = self.next_version(&mut versions).await;
        let now = SystemTime::now();
        let mut change = classify(prev.decided.then_some(&prev.topology), &decided);
        if let Some(step) = step.filter(|_| change.kind == "master-changed") {
            change.kind = step.kind();
            if step == PromotionStep::Promoted {
                change.details["via"] = json!(VIA_PROMOTION);
            }
        }
        let old_master = prev.topology.master.clone();
        let mut topology = decided;
        topology.changed_version = version;
        topology.changed_at = Some(now);

        let mut next = (*current).clone();
        next.version = version;
        if let Some(s) = next.services.get_mut(service) {
            s.topology = topology.clone();
            s.decided = true;
        }
        self.tx.send_replace(Arc::new(next));
        drop(versions);

        self.record(service, version, old_master, &topology, change, now);
        Some(version)
    }

    /// Hands out the next version, reserving a new block in the store when needed.
    async fn next_version(&self, versions: &mut Versions) -> u64 {
        let version = versions.last + 1;
        if version > versions.reserved {
            let upto = version + VERSION_BLOCK - 1;
            match self.store.reserve_versions(upto).await {
                Ok(()) => versions.reserved = upto,
                // Keep serving: a lost reservation only matters if we also crash before
                // the event row of this version is written.
                Err(e) => tracing::error!(error = %e, "cannot reserve config versions"),
            }
        }
        versions.last = version;
        version
    }

    /// Changes what operators configure for `service` (policy, users, credentials) and
    /// publishes it to the proxies at once. `what` names the change for the event row and
    /// the log (never a secret). Returns the new version; `None` when the service is
    /// unknown or nothing changed.
    pub async fn configure(
        &self,
        service: &str,
        what: &str,
        change: impl FnOnce(&mut ServiceState),
    ) -> Option<u64> {
        let mut versions = self.versions.lock().await;
        let current = self.current();
        let prev = current.services.get(service)?;
        let mut updated = prev.clone();
        change(&mut updated);
        if updated == *prev {
            return None;
        }
        let version = self.next_version(&mut versions).await;
        updated.config_version = version;
        let mut next = (*current).clone();
        next.version = version;
        let master = updated.topology.master.as_ref().map(ToString::to_string);
        next.services.insert(service.to_string(), updated);
        self.tx.send_replace(Arc::new(next));
        drop(versions);
        self.metrics.config_version.set(gauge_value(version));
        tracing::info!(service, version, change = what, "configuration changed");
        self.writer.send(Write::Event(NewEvent {
            service: service.to_string(),
            version,
            kind: "config-changed",
            old_master: master.clone(),
            new_master: master,
            reason: what.to_string(),
            details: json!({}),
            at: SystemTime::now(),
        }));
        Some(version)
    }

    /// Adds a newly registered service (undecided until its watcher decides) and publishes
    /// a new version. Returns `None` when a service of that name exists.
    pub async fn add_service(&self, stored: &StoredService) -> Option<u64> {
        let mut versions = self.versions.lock().await;
        let current = self.current();
        if current.services.contains_key(&stored.name) {
            return None;
        }
        let version = self.next_version(&mut versions).await;
        let mut next = (*current).clone();
        next.version = version;
        let mut svc = ServiceState::undecided(stored);
        svc.config_version = version;
        next.services.insert(stored.name.clone(), svc);
        self.tx.send_replace(Arc::new(next));
        drop(versions);
        self.service_event(
            &stored.name,
            version,
            "service-created",
            None,
            "service registered".into(),
        );
        Some(version)
    }

    /// Removes a service and publishes a new version (proxies subscribed to it are told it
    /// is unknown; they keep serving their last good table). Returns `None` when there was
    /// no such service.
    pub async fn remove_service(&self, service: &str) -> Option<u64> {
        let mut versions = self.versions.lock().await;
        let current = self.current();
        let prev = current.services.get(service)?;
        let master = prev.topology.master.as_ref().map(ToString::to_string);
        let version = self.next_version(&mut versions).await;
        let mut next = (*current).clone();
        next.version = version;
        next.services.remove(service);
        self.tx.send_replace(Arc::new(next));
        drop(versions);
        let label = ServiceLabel::new(service);
        let m = &self.metrics;
        m.master_known.remove(&label);
        m.healthy_replicas.remove(&label);
        m.sentinels_reachable.remove(&label);
        m.failovers.remove(&label);
        m.promotion_seconds.remove(&label);
        self.service_event(
            service,
            version,
            "service-deleted",
            master,
            "service removed".into(),
        );
        Some(version)
    }

    fn service_event(
        &self,
        service: &str,
        version: u64,
        kind: &'static str,
        master: Option<String>,
        reason: String,
    ) {
        self.metrics.config_version.set(gauge_value(version));
        tracing::info!(service, version, kind, "service registry changed");
        self.writer.send(Write::Event(NewEvent {
            service: service.to_string(),
            version,
            kind,
            old_master: master.clone(),
            new_master: master,
            reason,
            details: json!({}),
            at: SystemTime::now(),
        }));
    }

    /// Writes an event about `service` that changes no version (a planned failover's
    /// start, end or failure), at the current version.
    pub fn note(
        &self,
        service: &str,
        kind: &'static str,
        reason: String,
        details: serde_json::Value,
    ) {
        let current = self.current();
        let master = current
            .services
            .get(service)
            .and_then(|s| s.topology.master.as_ref().map(ToString::to_string));
        self.writer.send(Write::Event(NewEvent {
            service: service.to_string(),
            version: current.version,
            kind,
            old_master: master.clone(),
            new_master: master,
            reason,
            details,
            at: SystemTime::now(),
        }));
    }

    fn record(
        &self,
        service: &str,
        version: u64,
        old_master: Option<NodeAddr>,
        topology: &Topology,
        change: Change,
        at: SystemTime,
    ) {
        let label = ServiceLabel::new(service);
        let m = &self.metrics;
        m.config_version.set(gauge_value(version));
        m.master_known
            .get_or_create(&label)
            .set(i64::from(topology.master.is_some()));
        m.healthy_replicas
            .get_or_create(&label)
            .set(gauge_value(topology.healthy_replicas() as u64));
        m.sentinels_reachable
            .get_or_create(&label)
            .set(gauge_value(topology.reachable_sentinels() as u64));
        m.events.get_or_create(&label).inc();
        // Exported from the service's first decision, at 0: Prometheus's `increase()`
        // and `rate()` cannot see a series' first sample as an increase, so a counter
        // that appeared only with the first failover would hide that failover from the
        // PivotFailover alert and the dashboard.
        drop(m.failovers.get_or_create(&label));
        drop(m.promotion_seconds.get_or_create(&label));

        let new_master = topology.master.clone();
        if change.kind == "master-changed" || change.kind.contains("promot") {
            // A leader's promotion goes through "no master" (writes held) on its way.
            if old_master.is_some() && new_master.is_some()
                || change.details["via"] == VIA_PROMOTION
            {
                m.failovers.get_or_create(&label).inc();
            }
            tracing::info!(
                service,
                version,
                old_master = ?old_master.as_ref().map(ToString::to_string),
                new_master = ?new_master.as_ref().map(ToString::to_string),
                epoch = topology.config_epoch,
                reason = %change.reason,
                "master changed"
            );
        } else {
            tracing::info!(service, version, kind = change.kind, reason = %change.reason, "topology changed");
        }
        self.writer.send(Write::Event(NewEvent {
            service: service.to_string(),
            version,
            kind: change.kind,
            old_master: old_master.map(|m| m.to_string()),
            new_master: new_master.map(|m| m.to_string()),
            reason: change.reason,
            details: change.details,
            at,
        }));
    }
}

/// Names the most important difference between `prev` (None: first decision) and `next`.
pub fn classify(prev: Option<&Topology>, next: &Topology) -> Change {
    let master = |t: &Topology| t.master.as_ref().map(ToString::to_string);
    let Some(prev) = prev else {
        return Change {
            kind: "initial",
            reason: next.master_reason.clone(),
            details: json!({
                "master": master(next),
                "config_epoch": next.config_epoch,
                "replicas": next.replicas,
                "sentinels": next.sentinels,
            }),
        };
    };
    if prev.master != next.master || prev.config_epoch != next.config_epoch {
        return Change {
            kind: "master-changed",
            reason: next.master_reason.clone(),
            details: json!({
                "old_master": master(prev),
                "new_master": master(next),
                "old_epoch": prev.config_epoch,
                "new_epoch": next.config_epoch,
            }),
        };
    }
    let addrs = |t: &Topology| {
        t.replicas
            .iter()
            .map(|r| r.addr.to_string())
            .collect::<Vec<_>>()
    };
    if addrs(prev) != addrs(next) {
        let (a, b) = (addrs(prev), addrs(next));
        let added: Vec<_> = b.iter().filter(|x| !a.contains(x)).collect();
        let removed: Vec<_> = a.iter().filter(|x| !b.contains(x)).collect();
        return Change {
            kind: "replicas-changed",
            reason: format!("replicas added {added:?}, removed {removed:?}"),
            details: json!({"added": added, "removed": removed, "replicas": next.replicas}),
        };
    }
    let health_changes: Vec<String> = next
        .replicas
        .iter()
        .zip(&prev.replicas)
        .filter(|(n, p)| n.healthy != p.healthy || n.reason != p.reason)
        .map(|(n, _)| {
            if n.healthy {
                format!("{} healthy", n.addr)
            } else {
                format!("{} unhealthy: {}", n.addr, n.reason)
            }
        })
        .collect();
    if !health_changes.is_empty() {
        return Change {
            kind: "replica-health",
            reason: health_changes.join("; "),
            details: json!({"replicas": next.replicas}),
        };
    }
    let reach: Vec<String> = next
        .sentinels
        .iter()
        .filter(|s| !prev.sentinels.contains(s))
        .map(|s| {
            format!(
                "{} {}{}",
                s.addr,
                if s.reachable {
                    "reachable"
                } else {
                    "unreachable"
                },
                if s.configured { "" } else { " (discovered)" }
            )
        })
        .collect();
    Change {
        kind: "sentinels-changed",
        reason: if reach.is_empty() {
            "Sentinels removed".into()
        } else {
            reach.join("; ")
        },
        details: json!({"sentinels": next.sentinels}),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::topology::ReplicaState;
    use tokio_util::sync::CancellationToken;

    fn topo(master: &str, epoch: u64, replicas: &[(&str, bool)]) -> Topology {
        Topology {
            master: Some(master.parse().unwrap()),
            config_epoch: epoch,
            replicas: replicas
                .iter()
                .map(|(a, h)| ReplicaState {
                    addr: a.parse().unwrap(),
                    healthy: *h,
                    lag_bytes: Some(0),
                    link_down_ms: 0,
                    reason: if *h { String::new() } else { "s_down".into() },
                })
                .collect(),
            ..Topology::default()
        }
    }

    #[test]
    fn lag_over_the_limit_takes_a_replica_out_of_the_read_pool() {
        let mut t = topo("m:1", 0, &[("r:1", true), ("r:2", true), ("r:3", false)]);
        t.replicas[0].lag_bytes = Some(10);
        t.replicas[1].lag_bytes = Some(5000);
        t.replicas[2].lag_bytes = Some(5000);
        let unlimited = t.clone();
        Policy::default().enforce(&mut t);
        assert_eq!(t, unlimited);
        let policy = Policy {
            max_replica_lag: Some(1000),
            ..Policy::default()
        };
        policy.enforce(&mut t);
        assert!(t.replicas[0].healthy);
        assert!(!t.replicas[1].healthy);
        assert!(
            t.replicas[1].reason.contains("lag of 5000 bytes"),
            "{}",
            t.replicas[1].reason
        );
        // Already unhealthy: its own reason stays.
        assert_eq!(t.replicas[2].reason, "s_down");
    }

    #[test]
    fn classify_kinds() {
        let a = topo("m:1", 0, &[("r:1", true)]);
        assert_eq!(classify(None, &a).kind, "initial");
        assert_eq!(
            classify(Some(&a), &topo("m:2", 1, &[("r:1", true)])).kind,
            "master-changed"
        );
        assert_eq!(
            classify(Some(&a), &topo("m:1", 0, &[("r:2", true)])).kind,
            "replicas-changed"
        );
        assert_eq!(
            classify(Some(&a), &topo("m:1", 0, &[("r:1", false)])).kind,
            "replica-health"
        );
        let mut s = a.clone();
        s.sentinels.push(SentinelState {
            addr: "s:1".parse().unwrap(),
            configured: true,
            reachable: true,
        });
        assert_eq!(classify(Some(&a), &s).kind, "sentinels-changed");
    }

    #[tokio::test]
    async fn versions_bump_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let (writer, _task) = crate::store::spawn_writer(store.clone(), CancellationToken::new());
        let services = vec![StoredService {
            name: "svc".into(),
            sentinels: vec!["s:1".parse().unwrap()],
            policy: crate::state::Policy::default(),
            backend_auth: None,
            users: Vec::new(),
        }];
        let state = State::new(store.clone(), writer, Arc::new(Metrics::new()), &services)
            .await
            .unwrap();
        assert!(!state.current().all_decided());
        // No master named yet: nothing is published, the reason is shown.
        let mut none = topo("m:1", 0, &[("r:1", true)]);
        none.master = None;
        none.master_reason = "no master known: only 0 of 1 answer".into();
        assert_eq!(state.apply("svc", none).await, None);
        assert!(!state.current().all_decided());
        assert_eq!(
            state.current().services["svc"].topology.master_reason,
            "no master known: only 0 of 1 answer"
        );
        let v1 = state
            .apply("svc", topo("m:1", 0, &[("r:1", true)]))
            .await
            .unwrap();
        assert!(state.current().all_decided());
        // Same shape, only lag moved: no new version, numbers refreshed.
        let mut lagged = topo("m:1", 0, &[("r:1", true)]);
        lagged.replicas[0].lag_bytes = Some(42);
        assert_eq!(state.apply("svc", lagged).await, None);
        let cur = state.current();
        assert_eq!(cur.version, v1);
        assert_eq!(cur.services["svc"].topology.replicas[0].lag_bytes, Some(42));
        assert_eq!(cur.services["svc"].topology.changed_version, v1);
        let v2 = state
            .apply("svc", topo("m:2", 1, &[("r:1", true)]))
            .await
            .unwrap();
        assert_eq!(v2, v1 + 1);
        assert_eq!(state.apply("unknown", topo("m:2", 1, &[])).await, None);
        // A reservation covers the versions handed out.
        assert!(store.last_version().await.unwrap() >= v2);
    }
}
