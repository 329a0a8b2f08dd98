//! Prometheus metrics of the proxy.
//!
//! Every label combination is resolved once at start into plain counter handles, so the hot
//! path increments an atomic and never hashes labels or takes the registry's lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::command::Class;

/// Where a command was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The master.
    Master,
    /// A replica.
    Replica,
    /// The proxy itself.
    Local,
}

impl Target {
    fn as_str(self) -> &'static str {
        match self {
            Target::Master => "master",
            Target::Replica => "replica",
            Target::Local => "local",
        }
    }
    const ALL: [Target; 3] = [Target::Master, Target::Replica, Target::Local];
}

/// Kinds of backend failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendFailure {
    /// A connection attempt failed.
    Connect,
    /// An established connection was lost with requests in flight.
    Lost,
    /// The backend sent bytes that are not RESP, or a reply nobody asked for.
    Protocol,
    /// A retired connection did not answer within its drain grace period.
    DrainTimeout,
}

impl BackendFailure {
    fn as_str(self) -> &'static str {
        match self {
            BackendFailure::Connect => "connect",
            BackendFailure::Lost => "lost",
            BackendFailure::Protocol => "protocol",
            BackendFailure::DrainTimeout => "drain_timeout",
        }
    }
    const ALL: [BackendFailure; 4] = [
        BackendFailure::Connect,
        BackendFailure::Lost,
        BackendFailure::Protocol,
        BackendFailure::DrainTimeout,
    ];
}

/// Why a request was sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// `-READONLY`: the node is a replica now.
    Readonly,
    /// `-LOADING`: the node is loading its dataset.
    Loading,
    /// `-MASTERDOWN`: a replica that lost its master and serves no stale data.
    Masterdown,
    /// The request never reached its node.
    NotSent,
    /// A read whose node failed (reads are safe to run twice).
    ReadFailed,
}

impl RetryReason {
    fn as_str(self) -> &'static str {
        match self {
            RetryReason::Readonly => "readonly",
            RetryReason::Loading => "loading",
            RetryReason::Masterdown => "masterdown",
            RetryReason::NotSent => "not_sent",
            RetryReason::ReadFailed => "read_failed",
        }
    }
    const ALL: [RetryReason; 5] = [
        RetryReason::Readonly,
        RetryReason::Loading,
        RetryReason::Masterdown,
        RetryReason::NotSent,
        RetryReason::ReadFailed,
    ];
}

/// Why a config stream attempt failed (label `kind` of
/// `pivot_proxy_control_plane_failures_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlPlaneFailure {
    /// No connection: refused, unreachable, timed out, or the TLS handshake failed.
    Connect,
    /// The control plane refused this proxy's token (`UNAUTHENTICATED` or
    /// `PERMISSION_DENIED`).
    Unauthenticated,
    /// The stream could not be opened for another reason (including a client
    /// certificate the control plane refused, which TLS 1.3 reports after the handshake).
    Subscribe,
    /// An open stream ended with an error, or closed before delivering a config.
    Stream,
}

impl ControlPlaneFailure {
    fn as_str(self) -> &'static str {
        match self {
            ControlPlaneFailure::Connect => "connect",
            ControlPlaneFailure::Unauthenticated => "unauthenticated",
            ControlPlaneFailure::Subscribe => "subscribe",
            ControlPlaneFailure::Stream => "stream",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    class: &'static str,
    target: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// All metrics of one proxy process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    commands: Vec<Counter>,
    latency: Vec<LatencyHistogram>,
    backend_failures: Vec<Counter>,
    retries: Vec<Counter>,
    /// Requests whose retries ran out (the client got the last error).
    pub retries_exhausted: Counter,
    /// Writes whose replicas did not acknowledge them in time (`write_ack`).
    pub write_ack_failures: Counter,
    /// Commands refused by the proxy (unsupported, no master, bad arguments).
    pub rejected: Counter,
    /// Client protocol errors (connection closed).
    pub protocol_errors: Counter,
    /// `AUTH`/`HELLO ... AUTH` with a wrong user or password.
    pub auth_failures: Counter,
    /// Open client connections.
    pub client_connections: Gauge,
    /// Client connections accepted.
    pub client_connections_total: Counter,
    /// Open backend connections.
    pub backend_connections: Gauge,
    /// Config version applied.
    pub config_version: Gauge,
    /// Config updates applied.
    pub config_acks: Counter,
    /// Config updates rejected.
    pub config_nacks: Counter,
    /// Whether the config stream to the control plane is up (1) or not (0).
    pub control_plane_connected: Gauge,
    /// Failed config stream attempts, by kind (see [`ControlPlaneFailure`]).
    control_plane_failures: Family<KindLabel, Counter>,
    /// Requests that waited for a usable master.
    pub held: Counter,
    /// Requests waiting for a usable master now (see [`HoldGuard`]).
    pub holding: Gauge,
    /// How long held requests waited before a usable master was there.
    pub hold_seconds: Histogram,
    /// From the control plane's decision of a new master to this proxy using it.
    pub master_switch_seconds: Histogram,
    /// Masters found stalled (oldest request unanswered for `--backend-stall`), once per
    /// backend connection.
    pub stall_detections: Counter,
    /// Replicas taken out of the read pool after a failed read.
    pub ejections: Counter,
    /// Ejected replicas put back after answering a probe.
    pub readmissions: Counter,
    /// Following the Sentinels without the control plane, and the snapshot cache.
    pub outage: OutageMetrics,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pivot_proxy");
        let commands_family = Family::<CommandLabels, Counter>::default();
        registry.register(
            "commands",
            "Commands by class (from Redis's command flags) and the node role that served them",
            commands_family.clone(),
        );
        let mut commands = Vec::new();
        for class in Class::ALL {
            for target in Target::ALL {
                commands.push(
                    commands_family
                        .get_or_create(&CommandLabels {
                            class: class.as_str(),
                            target: target.as_str(),
                        })
                        .clone(),
                );
            }
        }
        let latency_family =
            Family::<TargetLabel, LatencyHistogram>::new_with_constructor(LatencyHistogram::new);
        registry.register(
            "command_duration_seconds",
            "Time from reading a forwarded command to having its reply, by node role",
            latency_family.clone(),
        );
        let latency = [Target::Master, Target::Replica]
            .iter()
            .map(|t| {
                latency_family
                    .get_or_create(&TargetLabel { target: t.as_str() })
                    .clone()
            })
            .collect();
        let failures_family = Family::<KindLabel, Counter>::default();
        registry.register(
            "backend_errors",
            "Backend connection failures by kind",
            failures_family.clone(),
        );
        let backend_failures = BackendFailure::ALL
            .iter()
            .map(|k| {
                failures_family
                    .get_or_create(&KindLabel { kind: k.as_str() })
                    .clone()
            })
            .collect();
        let retries_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "retries",
            "Requests sent again because their first node did not run them (or, for reads, failed)",
            retries_family.clone(),
        );
        let retries = RetryReason::ALL
            .iter()
            .map(|r| {
                retries_family
                    .get_or_create(&ReasonLabel { reason: r.as_str() })
                    .clone()
            })
            .collect();
        let updates = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_updates",
            "Config updates from the control plane, by result",
            updates.clone(),
        );
        // Separate statements: a `get_or_create` guard holds the family's lock until the end
        // of the statement that created it.
        let config_acks = updates
            .get_or_create(&ResultLabel { result: "ack" })
            .clone();
        let config_nacks = updates
            .get_or_create(&ResultLabel { result: "nack" })
            .clone();
        let mut m = Metrics {
            commands,
            latency,
            backend_failures,
            retries,
            retries_exhausted: Counter::default(),
            write_ack_failures: Counter::default(),
            rejected: Counter::default(),
            protocol_errors: Counter::default(),
            auth_failures: Counter::default(),
            client_connections: Gauge::default(),
            client_connections_total: Counter::default(),
            backend_connections: Gauge::default(),
            config_version: Gauge::default(),
            config_acks,
            config_nacks,
            control_plane_connected: Gauge::default(),
            control_plane_failures: Family::default(),
            held: Counter::default(),
            holding: Gauge::default(),
            hold_seconds: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            master_switch_seconds: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            stall_detections: Counter::default(),
            ejections: Counter::default(),
            readmissions: Counter::default(),
            outage: OutageMetrics::default(),
            registry,
        };
        m.outage.register(&mut m.registry);
        m.registry.register(
            "rejected_commands",
            "Commands the proxy refused (unsupported, no master, bad arguments)",
            m.rejected.clone(),
        );
        m.registry.register(
            "auth_failures",
            "AUTH or HELLO AUTH attempts with a wrong user name or password",
            m.auth_failures.clone(),
        );
        m.registry.register(
            "client_protocol_errors",
            "Client connections closed for a protocol error",
            m.protocol_errors.clone(),
        );
        m.registry.register(
            "client_connections",
            "Open client connections",
            m.client_connections.clone(),
        );
        m.registry.register(
            "client_connections_accepted",
            "Client connections accepted",
            m.client_connections_total.clone(),
        );
        m.registry.register(
            "backend_connections",
            "Open backend connections",
            m.backend_connections.clone(),
        );
        m.registry.register(
            "config_version",
            "Version of the control plane config applied",
            m.config_version.clone(),
        );
        m.registry.register(
            "write_ack_failures",
            "Writes answered -NOREPLICAS: too few replicas acknowledged them in time (write_ack)",
            m.write_ack_failures.clone(),
        );
        m.registry.register(
            "retries_exhausted",
            "Requests still failing after their retries (the client got the error)",
            m.retries_exhausted.clone(),
        );
        m.registry.register(
            "held_requests",
            "Requests that waited for a usable master (none known, lost, or stalled)",
            m.held.clone(),
        );
        m.registry.register(
            "held_requests_waiting",
            "Requests waiting now for a usable master",
            m.holding.clone(),
        );
        m.registry.register(
            "master_switch_seconds",
            "From the control plane deciding on a new master to this proxy routing to it",
            m.master_switch_seconds.clone(),
        );
        m.registry.register(
            "replica_ejections",
            "Replicas taken out of the read pool after a failed read",
            m.ejections.clone(),
        );
        m.registry.register(
            "replica_readmissions",
            "Ejected replicas put back in the read pool after answering a probe",
            m.readmissions.clone(),
        );
        m.registry.register(
            "stall_detections",
            "Master connections found stalled (oldest request unanswered for --backend-stall)",
            m.stall_detections.clone(),
        );
        m.registry.register(
            "hold_duration_seconds",
            "How long held requests waited for a usable master",
            m.hold_seconds.clone(),
        );
        m.registry.register(
            "control_plane_connected",
            "1 while the config stream to the control plane is up",
            m.control_plane_connected.clone(),
        );
        m.registry.register(
            "control_plane_failures",
            "Config stream attempts that failed or ended with an error, by kind",
            m.control_plane_failures.clone(),
        );
        m
    }

    /// Counts a failed config stream attempt.
    pub fn control_plane_failure(&self, kind: ControlPlaneFailure) {
        self.control_plane_failures
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Failed config stream attempts of `kind` so far.
    pub fn control_plane_failures(&self, kind: ControlPlaneFailure) -> u64 {
        self.control_plane_failures
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .get()
    }

    /// Counts one command.
    #[inline]
    pub fn command(&self, class: Class, target: Target) {
        self.commands(class, target, 1);
    }

    /// Counts `n` commands of one class and target.
    #[inline]
    pub fn commands(&self, class: Class, target: Target, n: u64) {
        let i = class as usize * Target::ALL.len() + target as usize;
        if let Some(c) = self.commands.get(i) {
            c.inc_by(n);
        }
    }

    /// Records `n` forwarded commands of one latency.
    #[inline]
    pub fn latency(&self, target: Target, d: Duration, n: u64) {
        if let Some(h) = self.latency.get(target as usize) {
            h.observe_n(d, n);
        }
    }

    /// Counts a backend failure.
    pub fn backend_failure(&self, kind: BackendFailure) {
        if let Some(c) = self.backend_failures.get(kind as usize) {
            c.inc();
        }
    }

    /// Counts a retry.
    pub fn retry(&self, reason: RetryReason) {
        if let Some(c) = self.retries.get(reason as usize) {
            c.inc();
        }
    }

    /// Retries so far for `reason`.
    pub fn retries(&self, reason: RetryReason) -> u64 {
        self.retries.get(reason as usize).map_or(0, Counter::get)
    }

    /// Counts one request as held until the guard drops (however the wait ends, including
    /// the client going away mid-wait).
    pub fn hold(&self) -> HoldGuard {
        self.held.inc();
        self.holding.inc();
        HoldGuard(self.holding.clone())
    }

    /// The totals the proxy reports to the control plane (`Status`), read from the same
    /// counters Prometheus exports: a few relaxed loads, no lock.
    pub fn totals(&self) -> Totals {
        let per_class = Target::ALL.len();
        let mut t = Totals::default();
        for (i, c) in self.commands.iter().enumerate() {
            let n = c.get();
            t.commands += n;
            match Class::ALL.get(i / per_class) {
                Some(Class::Read) => t.reads += n,
                Some(Class::Write) => t.writes += n,
                _ => {}
            }
        }
        t.errors = self.rejected.get()
            + self.retries_exhausted.get()
            + self.write_ack_failures.get()
            + self.auth_failures.get()
            + self.protocol_errors.get();
        t.client_connections = u64::try_from(self.client_connections.get()).unwrap_or(0);
        t.held_requests = u64::try_from(self.holding.get()).unwrap_or(0);
        t
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters and gauges summed for the control plane's view of the proxy (the proto's
/// `Status` documents what each one counts).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Commands handled since start.
    pub commands: u64,
    /// Commands of class read since start.
    pub reads: u64,
    /// Commands of class write since start.
    pub writes: u64,
    /// Error replies the proxy produced itself since start.
    pub errors: u64,
    /// Open client connections.
    pub client_connections: u64,
    /// Requests waiting for a usable master now.
    pub held_requests: u64,
}

/// One request waiting for a usable master; leaves [`Metrics::holding`] when dropped.
#[derive(Debug)]
#[must_use = "the request counts as held only while the guard lives"]
pub struct HoldGuard(Gauge);

impl Drop for HoldGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Metrics of the control-plane outage paths: following the Sentinels directly (I6) and
/// the on-disk snapshot cache (I7).
#[derive(Debug, Default)]
pub struct OutageMetrics {
    /// 1 while the proxy follows the Sentinels itself (config stream down or stale).
    pub following: Gauge,
    /// Configured Sentinels answering the proxy while it follows them.
    pub sentinels_reachable: Gauge,
    /// Routing tables the proxy built from its own Sentinel decision.
    pub switches: Counter,
    /// Config snapshots written to the cache.
    pub cache_writes: Counter,
    /// Cache writes that failed.
    pub cache_write_errors: Counter,
    /// 1 when the running config was loaded from the cache at start (until the control
    /// plane sends one).
    pub cache_loaded: Gauge,
}

impl OutageMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "sentinel_following",
            "1 while the proxy follows the Sentinels itself because the control plane is unreachable",
            self.following.clone(),
        );
        registry.register(
            "sentinel_reachable",
            "Configured Sentinels answering the proxy while it follows them",
            self.sentinels_reachable.clone(),
        );
        registry.register(
            "sentinel_switches",
            "Routing tables the proxy changed on its own from the Sentinels' decision",
            self.switches.clone(),
        );
        registry.register(
            "cache_writes",
            "Config snapshots written to --cache-dir",
            self.cache_writes.clone(),
        );
        registry.register(
            "cache_write_errors",
            "Config snapshot writes to --cache-dir that failed",
            self.cache_write_errors.clone(),
        );
        registry.register(
            "cache_loaded",
            "1 while the running config is the one loaded from --cache-dir at start",
            self.cache_loaded.clone(),
        );
    }
}

/// Upper bounds of [`LatencyHistogram`]'s buckets, in nanoseconds (100 µs to 1 s).
const LATENCY_BOUNDS_NS: [u64; 12] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
];

/// A latency histogram for the per-request path: one relaxed atomic add per bucket hit and
/// two for count and sum, no lock (prometheus-client's `Histogram` takes a write lock per
/// observation, shared by every worker thread). Exported as a Prometheus histogram in
/// seconds; `_count` is the sum of the buckets read at scrape time, so it always equals the
/// `+Inf` bucket even while observations race with the scrape.
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram(Arc<LatencyCells>);

#[derive(Debug, Default)]
struct LatencyCells {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `n` observations of `d`.
    #[inline]
    pub fn observe_n(&self, d: Duration, n: u64) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_NS
            .iter()
            .position(|b| ns <= *b)
            .unwrap_or(LATENCY_BOUNDS_NS.len());
        if let Some(b) = self.0.buckets.get(i) {
            b.fetch_add(n, Ordering::Relaxed);
        }
        self.0
            .sum_ns
            .fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
    }
}

/// Observations of the per-request path recorded a run at a time: a run of equal ones (the
/// requests of one pipeline, usually) is added to the shared metrics in one step when it
/// ends, instead of one atomic add each on cache lines that every worker contends for.
/// Flushed when dropped. See [`CommandRun`] and [`LatencyRun`].
pub struct Run<'a, K: Copy + PartialEq> {
    metrics: &'a Metrics,
    run: Option<K>,
    n: u64,
    record: fn(&Metrics, K, u64),
}

/// Commands counted by class and target: the commands of one read, counted when the read's
/// requests are handed over.
pub type CommandRun<'a> = Run<'a, (Class, Target)>;

/// Latencies by target: the replies a client's writer takes in one turn share its clock
/// reading, and the requests of one read share their start, so a pipeline's replies are one
/// observation of `n`.
pub type LatencyRun<'a> = Run<'a, (Target, Duration)>;

impl<'a> Run<'a, (Class, Target)> {
    /// An empty run of commands.
    pub fn commands(metrics: &'a Metrics) -> Self {
        Run::new(metrics, |m, (class, target), n| {
            m.commands(class, target, n)
        })
    }
}

impl<'a> Run<'a, (Target, Duration)> {
    /// An empty run of latencies.
    pub fn latencies(metrics: &'a Metrics) -> Self {
        Run::new(metrics, |m, (target, d), n| m.latency(target, d, n))
    }
}

impl<'a, K: Copy + PartialEq> Run<'a, K> {
    fn new(metrics: &'a Metrics, record: fn(&Metrics, K, u64)) -> Self {
        Run {
            metrics,
            run: None,
            n: 0,
            record,
        }
    }

    /// Records one observation.
    #[inline]
    pub fn add(&mut self, key: K) {
        if self.run == Some(key) {
            self.n += 1;
        } else {
            self.flush();
            self.run = Some(key);
            self.n = 1;
        }
    }

    /// Adds what is recorded to the shared metrics.
    pub fn flush(&mut self) {
        if let Some(key) = self.run.take() {
            (self.record)(self.metrics, key, self.n);
        }
    }
}

impl<K: Copy + PartialEq> Drop for Run<'_, K> {
    fn drop(&mut self) {
        self.flush();
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = Vec::with_capacity(LATENCY_BOUNDS_NS.len() + 1);
        let mut count = 0;
        for (i, cell) in self.0.buckets.iter().enumerate() {
            let n = cell.load(Ordering::Relaxed);
            count += n;
            let bound = LATENCY_BOUNDS_NS
                .get(i)
                .map_or(f64::MAX, |b| *b as f64 / 1e9);
            buckets.push((bound, n));
        }
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_exported() {
        let m = Metrics::new();
        m.command(Class::Write, Target::Master);
        m.command(Class::Read, Target::Replica);
        m.command(Class::Read, Target::Replica);
        m.latency(Target::Replica, Duration::from_micros(300), 1);
        m.latency(Target::Replica, Duration::from_secs(3), 1);
        m.backend_failure(BackendFailure::Lost);
        let text = m.encode();
        assert!(
            text.contains(r#"pivot_proxy_commands_total{class="write",target="master"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"pivot_proxy_commands_total{class="read",target="replica"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"pivot_proxy_backend_errors_total{kind="lost"} 1"#),
            "{text}"
        );
        for line in [
            r#"pivot_proxy_command_duration_seconds_bucket{le="0.00025",target="replica"} 0"#,
            r#"pivot_proxy_command_duration_seconds_bucket{le="0.0005",target="replica"} 1"#,
            r#"pivot_proxy_command_duration_seconds_bucket{le="1.0",target="replica"} 1"#,
            r#"pivot_proxy_command_duration_seconds_bucket{le="+Inf",target="replica"} 2"#,
            r#"pivot_proxy_command_duration_seconds_count{target="replica"} 2"#,
            r#"pivot_proxy_command_duration_seconds_sum{target="replica"} 3.0003"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn runs_add_up_to_what_each_observation_would() {
        let m = Metrics::new();
        {
            let mut commands = CommandRun::commands(&m);
            let mut latency = LatencyRun::latencies(&m);
            for (class, target, us) in [
                (Class::Read, Target::Master, 300),
                (Class::Read, Target::Master, 300),
                (Class::Write, Target::Master, 300),
                (Class::Read, Target::Master, 2_000),
                (Class::Read, Target::Replica, 2_000),
            ] {
                commands.add((class, target));
                latency.add((target, Duration::from_micros(us)));
            }
            commands.flush();
            assert_eq!(m.totals().commands, 5, "flushed");
            commands.add((Class::Write, Target::Master));
            // The rest is added when the runs are dropped.
        }
        let text = m.encode();
        for line in [
            r#"pivot_proxy_commands_total{class="read",target="master"} 3"#,
            r#"pivot_proxy_commands_total{class="write",target="master"} 2"#,
            r#"pivot_proxy_commands_total{class="read",target="replica"} 1"#,
            r#"pivot_proxy_command_duration_seconds_bucket{le="0.0005",target="master"} 3"#,
            r#"pivot_proxy_command_duration_seconds_bucket{le="0.001",target="master"} 3"#,
            r#"pivot_proxy_command_duration_seconds_bucket{le="0.0025",target="master"} 4"#,
            r#"pivot_proxy_command_duration_seconds_count{target="master"} 4"#,
            r#"pivot_proxy_command_duration_seconds_sum{target="master"} 0.0029"#,
            r#"pivot_proxy_command_duration_seconds_count{target="replica"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn totals_sum_the_exported_counters() {
        let m = Metrics::new();
        assert_eq!(m.totals(), Totals::default());
        m.command(Class::Write, Target::Master);
        m.command(Class::Read, Target::Replica);
        m.command(Class::Read, Target::Master);
        m.command(Class::Neutral, Target::Local);
        m.command(Class::Unknown, Target::Master);
        m.rejected.inc();
        m.auth_failures.inc();
        m.protocol_errors.inc();
        m.client_connections.inc();
        m.client_connections.inc();
        let hold = m.hold();
        let t = m.totals();
        assert_eq!(
            t,
            Totals {
                commands: 5,
                reads: 2,
                writes: 1,
                errors: 3,
                client_connections: 2,
                held_requests: 1,
            }
        );
        drop(hold);
        assert_eq!(m.totals().held_requests, 0);
        assert_eq!(m.held.get(), 1, "the total of held requests stays");
    }
}
