//! Prometheus metrics (prometheus-client), registered once at start and served by `http`
//! at `/metrics`. The state and gRPC modules update them as things happen.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label set naming a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceLabel {
    /// Sentinel master name.
    pub service: String,
}

impl ServiceLabel {
    /// Label for `service`.
    pub fn new(service: &str) -> Self {
        Self {
            service: service.to_string(),
        }
    }
}

/// Label set naming a service and how a leader promotion ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PromotionLabel {
    /// Sentinel master name.
    pub service: String,
    /// `confirmed` (the majority caught up), `superseded` (the majority named another
    /// master at that epoch or later), `aborted` or `expired`.
    pub outcome: &'static str,
}

/// Every metric of the control plane.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Current config version.
    pub config_version: Gauge,
    /// 1 when the service has an accepted master.
    pub master_known: Family<ServiceLabel, Gauge>,
    /// Replicas proxies may read from.
    pub healthy_replicas: Family<ServiceLabel, Gauge>,
    /// Sentinels with a working link.
    pub sentinels_reachable: Family<ServiceLabel, Gauge>,
    /// Accepted master changes from one known master to another.
    pub failovers: Family<ServiceLabel, Counter>,
    /// Topology events (version bumps) per service.
    pub events: Family<ServiceLabel, Counter>,
    /// Proxy config streams currently open.
    pub proxies_connected: Gauge,
    /// Time from a failover leader's promotion announcement to publishing the promoted
    /// replica as master.
    pub promotion_seconds: Family<ServiceLabel, Histogram>,
    /// Leader promotions by how they ended.
    pub promotions: Family<PromotionLabel, Counter>,
    /// ACKs received from proxies.
    pub proxy_acks: Counter,
    /// NACKs received from proxies.
    pub proxy_nacks: Counter,
    /// Config streams refused for a missing or wrong proxy token.
    pub proxy_token_refusals: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `pivot` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pivot");
        let config_version = Gauge::default();
        let master_known = Family::<ServiceLabel, Gauge>::default();
        let healthy_replicas = Family::<ServiceLabel, Gauge>::default();
        let sentinels_reachable = Family::<ServiceLabel, Gauge>::default();
        let failovers = Family::<ServiceLabel, Counter>::default();
        let events = Family::<ServiceLabel, Counter>::default();
        let proxies_connected = Gauge::default();
        let proxy_acks = Counter::default();
        let promotion_seconds = Family::<ServiceLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        let promotions = Family::<PromotionLabel, Counter>::default();
        registry.register(
            "service_promotion_seconds",
            "Time from a failover leader's promotion announcement to publishing the promoted replica as master",
            promotion_seconds.clone(),
        );
        registry.register(
            "service_promotions",
            "Leader promotions followed ahead of the Sentinel majority, by outcome",
            promotions.clone(),
        );
        let proxy_nacks = Counter::default();
        registry.register(
            "config_version",
            "Current configuration version",
            config_version.clone(),
        );
        registry.register(
            "service_master_known",
            "1 when the service has an accepted master",
            master_known.clone(),
        );
        registry.register(
            "service_healthy_replicas",
            "Replicas proxies may read from",
            healthy_replicas.clone(),
        );
        registry.register(
            "service_sentinels_reachable",
            "Sentinels the control plane has a working link to",
            sentinels_reachable.clone(),
        );
        registry.register(
            "service_failovers",
            "Accepted changes from one master to another",
            failovers.clone(),
        );
        registry.register(
            "service_topology_events",
            "Topology changes (configuration versions) per service",
            events.clone(),
        );
        registry.register(
            "proxies_connected",
            "Proxy configuration streams currently open",
            proxies_connected.clone(),
        );
        registry.register(
            "proxy_acks",
            "ACKs received from proxies",
            proxy_acks.clone(),
        );
        registry.register(
            "proxy_nacks",
            "NACKs received from proxies",
            proxy_nacks.clone(),
        );
        let proxy_token_refusals = Counter::default();
        registry.register(
            "proxy_token_refusals",
            "Proxy config streams refused for a missing or wrong proxy token (--proxy-token)",
            proxy_token_refusals.clone(),
        );
        Self {
            registry,
            config_version,
            master_known,
            healthy_replicas,
            sentinels_reachable,
            failovers,
            events,
            proxies_connected,
            promotion_seconds,
            promotions,
            proxy_acks,
            proxy_nacks,
            proxy_token_refusals,
        }
    }

    /// Counts a leader promotion that ended with `outcome`.
    pub fn promotion_outcome(&self, service: &str, outcome: &'static str) {
        self.promotions
            .get_or_create(&PromotionLabel {
                service: service.to_string(),
                outcome,
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Saturating conversion for gauges.
pub fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
