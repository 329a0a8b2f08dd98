//! Following the Sentinels while the control plane is unreachable (invariant I6).
//!
//! Every config update names the service's Sentinels (configured and discovered). When the
//! config stream has been down for `--sentinel-follow-after` (or open that long without
//! delivering a config; at once when the proxy started from its cache), this task links to
//! those Sentinels with the control plane's own [`Link`]s and decides with the same
//! majority rule ([`topology::decide`], from `pivot-sentinel`). When the decision differs
//! from the running table (a failover during the outage, a replica going down), it builds a
//! new table from the last config with the decided topology, through the same
//! `RoutingTable::from_proto` validation: policy, rules, users and credentials stay, and so
//! does the control plane's version (`config_version`, what the proxy reports), so that
//! ACK/NACK bookkeeping is untouched; the table gets a local identity
//! (`LOCAL_VERSION_BIT` plus a counter) so that connections notice it. As soon as
//! the stream delivers a config again, that config replaces the local one and the links
//! are closed.
//!
//! It also follows a failover's elected leader ahead of the majority, with the control
//! plane's code ([`LeaderFollower`] over `pivot_sentinel::promotion`): on the leader's
//! `+failover-state-send-slaveof-noone` for a newer epoch it installs a table without a
//! master (writes are held), polls the announced replica's `ROLE` with the service's
//! backend credentials, installs it as master once it answers so, and returns to the
//! majority's decision on an abort or when the promotion expires.
//!
//! A master the control plane published at
//! a newer epoch than the majority names (a leader promotion not yet confirmed when the
//! control plane went away) is kept for up to [`KEEP_NEWER_EPOCH_FOR`] rather than
//! replaced by the older one.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pivot_proto::v1;
use pivot_sentinel::leader::{self, LeaderFollower};
use pivot_sentinel::link::{Link, Report};
use pivot_sentinel::query::NodeAuth;
use pivot_sentinel::topology::{self, NodeAddr, SentinelView, Topology};
use pivot_sentinel::wire;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::cache::Cache;
use crate::config_client::{self, Feed, StreamStatus};
use crate::routing::{LOCAL_VERSION_BIT, RoutingTable};
use crate::server::Shared;

/// A decision waits for every configured Sentinel to answer once, at most this long.
const FIRST_DECISION_DEADLINE: Duration = Duration::from_secs(2);
/// How long a master published at a newer epoch than the Sentinel majority names is kept
/// (the control plane's bound for the majority to confirm a leader promotion).
pub const KEEP_NEWER_EPOCH_FOR: Duration = Duration::from_secs(30);
/// Tables built from the Sentinels in this process: their local versions.
static LOCAL_TABLES: AtomicU64 = AtomicU64::new(0);
/// How long links get to close when following ends.
const LINK_DRAIN: Duration = Duration::from_secs(2);

/// How the follower behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long the stream may be down (or open without a config) before following.
    pub after: Duration,
    /// Poll period per Sentinel while following (events trigger polls too).
    pub poll_interval: Duration,
}

/// Runs until `shutdown`: idle while the control plane is in charge, following the
/// Sentinels while it is not.
pub async fn run(
    shared: Arc<Shared>,
    feed: Arc<Feed>,
    cache: Option<Arc<Cache>>,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let mut status = feed.status.subscribe();
    loop {
        let (due, base) = {
            let s = status.borrow_and_update();
            (due_in(&s, settings.after, Instant::now()), s.last.clone())
        };
        let wait = match (due, base) {
            (Some(d), Some(base)) if d.is_zero() => {
                let f = Follower {
                    shared: &shared,
                    feed: &feed,
                    cache: cache.as_ref(),
                    settings: &settings,
                    base,
                };
                f.follow(&mut status, &shutdown).await;
                if shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            (d, _) => d,
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = status.changed() => if r.is_err() { return },
            () = sleep_or_never(wait) => {}
        }
    }
}

/// How long until following is due: `None` while the control plane is in charge (or
/// nothing is known to follow from), zero when due now.
pub fn due_in(s: &StreamStatus, after: Duration, now: Instant) -> Option<Duration> {
    if s.last.is_none() || s.live() {
        return None;
    }
    if s.from_cache && !s.connected {
        // Started from the cache: the cached master may be long gone.
        return Some(Duration::ZERO);
    }
    Some(after.saturating_sub(now.saturating_duration_since(s.since)))
}

/// One period of following, from the config the control plane (or the cache) gave last.
struct Follower<'a> {
    shared: &'a Arc<Shared>,
    feed: &'a Feed,
    cache: Option<&'a Arc<Cache>>,
    settings: &'a Settings,
    base: Arc<v1::ConfigUpdate>,
}

impl Follower<'_> {
    /// Follows until the stream delivers a config again or shutdown.
    async fn follow(
        &self,
        status: &mut watch::Receiver<StreamStatus>,
        shutdown: &CancellationToken,
    ) {
        let known = self
            .base
            .services
            .iter()
            .find(|s| s.name == self.shared.service)
            .and_then(|s| s.topology.as_ref())
            .map(wire::from_topology)
            .unwrap_or_default();
        let configured: Vec<NodeAddr> = known
            .sentinels
            .iter()
            .filter(|s| s.configured)
            .map(|s| s.addr.clone())
            .collect();
        if configured.is_empty() {
            warn!(
                "control plane unreachable and no Sentinels known for the service: keeping the last table"
            );
            wait_until_live(status, shutdown).await;
            return;
        }
        let metrics = &self.shared.metrics.outage;
        metrics.following.set(1);
        info!(
            sentinels = %known.sentinels.iter().map(|s| s.addr.to_string()).collect::<Vec<_>>().join(","),
            master = ?known.master.as_ref().map(ToString::to_string),
            "control plane unreachable: following the Sentinels directly"
        );
        let stop = shutdown.child_token();
        let links = TaskTracker::new();
        // Links report here; they end on `stop` (or when this receiver is dropped).
        let (tx, mut rx) = mpsc::channel::<Report>(256);
        let poke = Arc::new(Notify::new());
        let spawn_link = |addr: NodeAddr, configured: bool| {
            let link = Link {
                service: self.shared.service.clone(),
                sentinel: addr.clone(),
                configured,
                poll_interval: self.settings.poll_interval,
                tx: tx.clone(),
                poke: poke.clone(),
                shutdown: stop.clone(),
            };
            links.spawn(
                link.run()
                    .instrument(info_span!("sentinel_link", sentinel = %addr)),
            );
        };
        let mut views: BTreeMap<NodeAddr, SentinelView> = BTreeMap::new();
        for s in &known.sentinels {
            views.insert(
                s.addr.clone(),
                SentinelView::unreachable(s.addr.clone(), s.configured),
            );
            spawn_link(s.addr.clone(), s.configured);
        }
        let started = Instant::now();
        let mut majority = known.clone();
        let mut reported: HashSet<NodeAddr> = HashSet::new();
        let mut decided = false;
        let first = tokio::time::sleep(FIRST_DECISION_DEADLINE);
        tokio::pin!(first);
        // The failover leader's promotion, followed as the control plane does.
        let mut leader = LeaderFollower::new(links.clone(), stop.clone());
        loop {
            let signal = tokio::select! {
                () = shutdown.cancelled() => break,
                r = status.changed() => {
                    if r.is_err() || status.borrow_and_update().live() {
                        break;
                    }
                    continue;
                }
                () = &mut first, if !decided => None,
                report = rx.recv() => match report {
                    None => break,
                    // No decision yet to follow a leader from.
                    Some(Report::Leader { .. }) if !decided => continue,
                    Some(Report::Leader { sentinel, event, at }) => {
                        match leader::leader_signal(&sentinel, event, &majority) {
                            Ok(signal) => Some((signal, tokio::time::Instant::from_std(at))),
                            Err(why) => {
                                info!(leader = %sentinel, %why, "leader event not followed");
                                continue;
                            }
                        }
                    }
                    Some(Report::View { view, .. }) => {
                        for s in &view.sentinels {
                            if !views.contains_key(s) {
                                debug!(sentinel = %s, "discovered Sentinel");
                                views.insert(s.clone(), SentinelView::unreachable(s.clone(), false));
                                spawn_link(s.clone(), false);
                            }
                        }
                        reported.insert(view.sentinel.clone());
                        views.insert(view.sentinel.clone(), view);
                        if !decided && !configured.iter().all(|s| reported.contains(s)) {
                            continue;
                        }
                        None
                    }
                },
                signal = leader.next_signal() => Some(signal),
            };
            decided = true;
            let all: Vec<SentinelView> = views.values().cloned().collect();
            let reachable = all.iter().filter(|v| v.configured && v.reachable).count();
            metrics.sentinels_reachable.set(reachable as i64);
            let decision = topology::decide(&majority, &all, configured.len());
            if accept(&known, &decision, started.elapsed()) {
                majority = decision;
            } else {
                debug!(
                    named = ?decision.master.as_ref().map(ToString::to_string),
                    epoch = decision.config_epoch,
                    published_epoch = known.config_epoch,
                    "the majority names an older epoch than the control plane published; keeping its master for now"
                );
                if signal.is_none() {
                    continue;
                }
            }
            let step = leader.step(&majority, signal, &views, || self.backend_auth());
            if let Some(result) = step.ended {
                info!(
                    result,
                    "leader promotion ended while following the Sentinels"
                );
            }
            let published = leader.overlay(&majority);
            self.apply(&published, leader.promotion().is_some()).await;
            if let Some(elapsed) = step.promoted_after {
                info!(
                    elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                    "promoted replica installed as master without the control plane (time from the leader's announcement)"
                );
            }
        }
        drop(leader);
        stop.cancel();
        links.close();
        drop(rx);
        if tokio::time::timeout(LINK_DRAIN, links.wait())
            .await
            .is_err()
        {
            warn!("Sentinel links did not close in time");
        }
        metrics.following.set(0);
        metrics.sentinels_reachable.set(0);
        if status.borrow().live() {
            info!(
                "config stream back: the control plane's config replaces the proxy's own Sentinel decisions"
            );
        }
    }

    /// The service's backend credentials from the last table (for the `ROLE` poller).
    fn backend_auth(&self) -> Option<NodeAuth> {
        let table = self.shared.table.load();
        let a = table.backend_auth.as_ref()?;
        Some(NodeAuth {
            username: a.username.clone(),
            password: a.password.clone(),
        })
    }

    /// Installs a table for `decided` when it routes differently from the running one.
    /// `promoting`: a leader promotion is in progress (a topology without a master holds
    /// writes until the promoted replica answers as master).
    async fn apply(&self, decided: &Topology, promoting: bool) {
        if decided.master.is_none() && !promoting {
            // Never give up a master for none: the majority has not named one.
            return;
        }
        let Some((update, table)) = local_config(&self.base, &self.shared.service, decided) else {
            return;
        };
        // The installed table (`base`), not the routed one: that one also changes when a
        // replica is ejected or readmitted, which is no reason to skip this install.
        let current = self.shared.base.load_full();
        if current.master == table.master && current.replicas == table.replicas {
            return;
        }
        let installed = {
            let _installing = self.feed.lock();
            let still_ours = !self.feed.status.borrow().live()
                && Arc::ptr_eq(&current, &self.shared.base.load_full());
            if still_ours {
                config_client::install(self.shared, table.clone(), "sentinels");
            }
            still_ours
        };
        if !installed {
            return;
        }
        self.shared.metrics.outage.switches.inc();
        if table.master.is_none() {
            info!(
                old = ?current.master.as_ref().map(ToString::to_string),
                reason = %decided.master_reason,
                "following the Sentinels without the control plane: holding writes for a leader promotion"
            );
        } else if current.master != table.master {
            info!(
                old = ?current.master.as_ref().map(ToString::to_string),
                new = ?table.master.as_ref().map(ToString::to_string),
                epoch = decided.config_epoch,
                reason = %decided.master_reason,
                "following the Sentinels without the control plane: master changed"
            );
        } else {
            info!(
                replicas = table.readable.len(),
                "following the Sentinels without the control plane: replicas changed"
            );
        }
        // A table holding writes is not worth restarting from.
        if let Some(cache) = self.cache.filter(|_| table.master.is_some()) {
            config_client::write_cache(self.shared, cache, update).await;
        }
    }
}

/// Whether the follower takes the majority's `decision` over what the control plane
/// published (`known`), `waited` after following started.
fn accept(known: &Topology, decision: &Topology, waited: Duration) -> bool {
    decision.master.is_none()
        || decision.master == known.master
        || decision.config_epoch >= known.config_epoch
        || waited >= KEEP_NEWER_EPOCH_FOR
}

/// The last config with `decided` as the service's topology, and its routing table (same
/// validation as a control plane update). `None` if the config lacks the service or the
/// result is invalid (logged).
fn local_config(
    base: &v1::ConfigUpdate,
    service: &str,
    decided: &Topology,
) -> Option<(v1::ConfigUpdate, RoutingTable)> {
    let mut update = base.clone();
    let svc = update.services.iter_mut().find(|s| s.name == service)?;
    svc.topology = Some(wire::topology(decided));
    match RoutingTable::from_proto(update.version, svc) {
        Ok(mut table) => {
            table.control_plane_id = Arc::from(base.control_plane_id.as_str());
            // A version of its own, so that connections see a new table; the control
            // plane's stays in `config_version`.
            table.version = LOCAL_VERSION_BIT | (LOCAL_TABLES.fetch_add(1, Ordering::Relaxed) + 1);
            Some((update, table))
        }
        Err(e) => {
            warn!(error = %e, "the Sentinels' topology makes no valid routing table; keeping the last one");
            None
        }
    }
}

async fn wait_until_live(status: &mut watch::Receiver<StreamStatus>, shutdown: &CancellationToken) {
    // Bounded by the stream coming back or shutdown; each change is re-checked.
    loop {
        if status.borrow_and_update().live() {
            return;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = status.changed() => if r.is_err() { return },
        }
    }
}

async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pivot_sentinel::topology::{ReplicaState, SentinelState};

    fn status(
        connected: bool,
        received: bool,
        ago: Duration,
        cached: bool,
    ) -> (StreamStatus, Instant) {
        let now = Instant::now() + Duration::from_secs(60);
        (
            StreamStatus {
                connected,
                received,
                since: now - ago,
                last: Some(Arc::new(v1::ConfigUpdate::default())),
                from_cache: cached,
            },
            now,
        )
    }

    #[test]
    fn when_following_is_due() {
        let after = Duration::from_secs(1);
        let ms = Duration::from_millis;
        // (name, connected, received, since, from cache, due in)
        let cases = [
            ("live stream", true, true, ms(5000), false, None),
            (
                "just went down",
                false,
                false,
                ms(200),
                false,
                Some(ms(800)),
            ),
            (
                "down long enough",
                false,
                false,
                ms(1500),
                false,
                Some(ms(0)),
            ),
            (
                "open without a config",
                true,
                false,
                ms(300),
                false,
                Some(ms(700)),
            ),
            ("open, stale", true, false, ms(3000), false, Some(ms(0))),
            (
                "started from the cache",
                false,
                false,
                ms(0),
                true,
                Some(ms(0)),
            ),
        ];
        for (name, connected, received, ago, cached, want) in cases {
            let (s, now) = status(connected, received, ago, cached);
            assert_eq!(due_in(&s, after, now), want, "{name}");
        }
        let (mut s, now) = status(false, false, ms(5000), false);
        s.last = None;
        assert_eq!(due_in(&s, after, now), None, "nothing to follow from");
    }

    fn topo(master: &str, epoch: u64) -> Topology {
        Topology {
            master: Some(master.parse().unwrap()),
            config_epoch: epoch,
            replicas: vec![ReplicaState {
                addr: "10.0.0.9:6379".parse().unwrap(),
                healthy: true,
                lag_bytes: None,
                link_down_ms: 0,
                reason: String::new(),
            }],
            sentinels: vec![SentinelState {
                addr: "10.0.1.1:26379".parse().unwrap(),
                configured: true,
                reachable: true,
            }],
            ..Topology::default()
        }
    }

    #[test]
    fn older_epochs_wait_newer_ones_win() {
        let published = topo("10.0.0.2:6379", 3);
        let s = Duration::from_secs;
        assert!(accept(&published, &topo("10.0.0.3:6379", 4), s(0)));
        assert!(accept(&published, &topo("10.0.0.2:6379", 3), s(0)));
        assert!(!accept(&published, &topo("10.0.0.1:6379", 2), s(1)));
        assert!(accept(
            &published,
            &topo("10.0.0.1:6379", 2),
            KEEP_NEWER_EPOCH_FOR
        ));
    }

    #[test]
    fn local_config_keeps_everything_but_the_topology() {
        let base = v1::ConfigUpdate {
            version: 42,
            nonce: "n".into(),
            services: vec![v1::ServiceConfig {
                name: "svc".into(),
                topology: Some(wire::topology(&topo("10.0.0.1:6379", 1))),
                policy: Some(v1::RoutingPolicy {
                    read_policy: v1::ReadPolicy::MasterOnly.into(),
                    ..Default::default()
                }),
                backend_auth: None,
                users: vec![v1::ProxyUser {
                    name: "app".into(),
                    salt: vec![1; 16],
                    password_sha256: vec![2; 32],
                }],
            }],
            unknown_services: Vec::new(),
            control_plane_id: "cp-a".into(),
        };
        let (update, table) = local_config(&base, "svc", &topo("10.0.0.2:6379", 2)).unwrap();
        assert!(table.is_local());
        assert_eq!(table.config_version, 42);
        assert_eq!(
            &*table.control_plane_id, "cp-a",
            "the base's, for its version"
        );
        assert_eq!(table.config_epoch, 2);
        assert_eq!(table.master.as_ref().unwrap().to_string(), "10.0.0.2:6379");
        assert_eq!(table.read_policy, crate::routing::ReadPolicy::MasterOnly);
        assert!(table.users.contains_key(b"app".as_slice()));
        assert_eq!(
            update.services[0].topology.as_ref().unwrap().config_epoch,
            2
        );
        assert!(local_config(&base, "other", &topo("10.0.0.2:6379", 2)).is_none());
        // A decision the table validation refuses changes nothing.
        let mut bad = topo("10.0.0.9:6379", 2);
        bad.master = Some("10.0.0.9:6379".parse().unwrap());
        assert!(local_config(&base, "svc", &bad).is_none());
    }
}
