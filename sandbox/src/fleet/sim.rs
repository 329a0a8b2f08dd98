//! Simulated proxies: each one opens its own gRPC connection to the control plane, holds
//! one `ProxyDiscovery.StreamConfig` stream, says `Hello`, reports its status right after
//! and then every status interval (2 s, the proxy's default), answers every update with an
//! ACK (or a NACK, on the same grounds as the real proxy's checks that need no routing
//! table), presents the proxy token, and reconnects with the real proxy's backoff for one
//! control plane (`proxy/src/config_client.rs`: a jittered wait (0.8-1.2) of 100 ms after
//! a stream that delivered and after the first failure, doubling after each further
//! failure up to 5 s). What each one saw is kept in lock-free counters the bench reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use pivot_proto::v1::{self, proxy_discovery_client::ProxyDiscoveryClient, proxy_message::Msg};
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// The real proxy's reconnect policy (`config_client::run`).
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often waits look at the counters. The times they report come from timestamps the
/// simulated proxies record themselves, not from this interval.
const POLL: Duration = Duration::from_millis(1);
/// Bound on stopping the simulated proxies.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What one simulated proxy saw. Times are nanoseconds since [`Fleet`]'s epoch.
#[derive(Debug, Default)]
struct Record {
    /// Latest version received.
    received_version: AtomicU64,
    /// When it was received.
    received_at: AtomicU64,
    /// Latest version ACKed (0: none).
    acked_version: AtomicU64,
    /// When that ACK was handed to the stream.
    acked_at: AtomicU64,
    /// Streams that delivered at least one update.
    streams_served: AtomicU64,
    /// When the latest of them delivered its first update.
    served_at: AtomicU64,
    /// Connection attempts (successful or not).
    connects: AtomicU64,
    /// NACKs sent.
    nacks: AtomicU64,
}

/// When every simulated proxy had received and ACKed a version.
#[derive(Debug, Clone, Copy)]
pub struct AckTimes {
    /// The first proxy to receive it, from the start given.
    pub first_received: Duration,
    /// The last proxy to receive it, from the start given.
    pub all_received: Duration,
    /// The last proxy to ACK it, from the start given.
    pub all_acked: Duration,
}

/// Who the simulated proxies are and where they connect.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// gRPC endpoint URL of the control plane.
    pub endpoint: String,
    /// The service every proxy subscribes to.
    pub service: String,
    /// Proxy ids are `{id_prefix}-{index:05}`.
    pub id_prefix: String,
    /// How often each proxy reports its status (the proxy's `--status-interval`).
    pub status_interval: Duration,
    /// The token presented as `authorization: Bearer ...` (the proxy's
    /// `--control-plane-token`).
    pub token: Option<String>,
}

/// N simulated proxies, each its own task and connection. The tasks run until
/// [`Fleet::stop`] (or until the fleet is dropped, which cancels them).
#[derive(Debug)]
pub struct Fleet {
    records: Arc<[Record]>,
    epoch: Instant,
    /// Cancelled by `stop` and on drop; every proxy task selects on it.
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// The last update proxy 0 accepted, to check what the fleet was sent.
    probe: Arc<Mutex<Option<v1::ConfigUpdate>>>,
}

impl Fleet {
    /// Starts `n` proxies, at most `concurrency` of them connecting at a time (a proxy
    /// holds its slot until its first stream delivered a config, or failed), and waits
    /// until every one has received its first config; all of it within `timeout`.
    pub async fn open(
        n: usize,
        concurrency: usize,
        settings: FleetSettings,
        timeout: Duration,
    ) -> Result<Fleet> {
        let records: Arc<[Record]> = (0..n).map(|_| Record::default()).collect();
        let fleet = Fleet {
            records,
            epoch: Instant::now(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            probe: Arc::new(Mutex::new(None)),
        };
        let start = Instant::now();
        let deadline = tokio::time::Instant::from_std(start + timeout);
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        let settings = Arc::new(settings);
        for index in 0..n {
            // A control plane that accepts streams but never sends a config would hold
            // every slot forever.
            let permit = match tokio::time::timeout_at(deadline, slots.clone().acquire_owned())
                .await
            {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => bail!("connection slots closed"),
                Err(_) => bail!(
                    "timed out after {timeout:?} opening streams: {index} of {n} started, {} have their first config",
                    fleet.served()
                ),
            };
            let sim = Sim {
                index,
                records: fleet.records.clone(),
                epoch: fleet.epoch,
                settings: settings.clone(),
                probe: (index == 0).then(|| fleet.probe.clone()),
                slot: Some(permit),
                control_plane_id: String::new(),
            };
            let cancel = fleet.cancel.clone();
            fleet.tasks.spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = sim.run() => {}
                }
            });
        }
        fleet.tasks.close();
        fleet
            .wait_for("every proxy's first config", start, timeout, |_, r| {
                r.streams_served.load(Ordering::Acquire) >= 1
            })
            .await?;
        Ok(fleet)
    }

    /// Number of simulated proxies.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True for a fleet of none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Waits until every proxy has ACKed `version` (or a later one); the times are
    /// measured from `start`.
    pub async fn wait_acked(
        &self,
        version: u64,
        start: Instant,
        timeout: Duration,
    ) -> Result<AckTimes> {
        let what = format!("every proxy's ACK of version {version}");
        self.wait_for(&what, start, timeout, |_, r| {
            r.acked_version.load(Ordering::Acquire) >= version
        })
        .await?;
        let first = (self.records.iter())
            .map(|r| r.received_at.load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        Ok(AckTimes {
            first_received: self.since(start, first),
            all_received: self.since(start, self.latest(|r| &r.received_at)),
            all_acked: self.since(start, self.latest(|r| &r.acked_at)),
        })
    }

    /// Per proxy, the number of streams that delivered a config so far (to pass to
    /// [`Self::wait_resubscribed`]).
    pub fn streams_served(&self) -> Vec<u64> {
        self.records
            .iter()
            .map(|r| r.streams_served.load(Ordering::Acquire))
            .collect()
    }

    /// Waits until every proxy has a stream newer than those counted in `before` that
    /// delivered a config; returns when each one did, from `start`, in ascending order.
    pub async fn wait_resubscribed(
        &self,
        before: &[u64],
        start: Instant,
        timeout: Duration,
    ) -> Result<Vec<Duration>> {
        self.wait_for(
            "every proxy's config on a new stream",
            start,
            timeout,
            |i, r| r.streams_served.load(Ordering::Acquire) > before.get(i).copied().unwrap_or(0),
        )
        .await?;
        let mut times: Vec<Duration> = (self.records.iter())
            .map(|r| self.since(start, r.served_at.load(Ordering::Acquire)))
            .collect();
        times.sort();
        Ok(times)
    }

    /// Proxies that have received a config on some stream.
    fn served(&self) -> usize {
        (self.records.iter())
            .filter(|r| r.streams_served.load(Ordering::Acquire) >= 1)
            .count()
    }

    /// Connection attempts of all proxies so far.
    pub fn connects(&self) -> u64 {
        self.sum(|r| &r.connects)
    }

    /// NACKs sent by all proxies so far.
    pub fn nacks(&self) -> u64 {
        self.sum(|r| &r.nacks)
    }

    /// The last update proxy 0 accepted.
    pub fn probe(&self) -> Option<v1::ConfigUpdate> {
        self.probe.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops every proxy (their connections close), waiting a bounded time.
    pub async fn stop(&self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(STOP_TIMEOUT, self.tasks.wait()).await;
    }

    async fn wait_for(
        &self,
        what: &str,
        start: Instant,
        timeout: Duration,
        done: impl Fn(usize, &Record) -> bool,
    ) -> Result<()> {
        let deadline = start + timeout;
        loop {
            let missing = (self.records.iter().enumerate())
                .filter(|(i, r)| !done(*i, r))
                .count();
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}: {missing} of {} proxies still missing",
                    self.records.len()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn latest(&self, field: impl Fn(&Record) -> &AtomicU64) -> u64 {
        self.records
            .iter()
            .map(|r| field(r).load(Ordering::Acquire))
            .max()
            .unwrap_or(0)
    }

    fn sum(&self, field: impl Fn(&Record) -> &AtomicU64) -> u64 {
        self.records
            .iter()
            .map(|r| field(r).load(Ordering::Relaxed))
            .sum()
    }

    /// `at` (nanoseconds since the epoch) as a duration from `start`.
    fn since(&self, start: Instant, at: u64) -> Duration {
        (self.epoch + Duration::from_nanos(at)).saturating_duration_since(start)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// One simulated proxy.
struct Sim {
    index: usize,
    records: Arc<[Record]>,
    epoch: Instant,
    settings: Arc<FleetSettings>,
    /// Where proxy 0 keeps the last update it accepted.
    probe: Option<Arc<Mutex<Option<v1::ConfigUpdate>>>>,
    /// The connection slot held until the first stream delivered or failed.
    slot: Option<OwnedSemaphorePermit>,
    /// `control_plane_id` of the last update ACKed (the scope of its version).
    control_plane_id: String,
}

impl Sim {
    fn record(&self) -> &Record {
        // `index` < records.len() by construction.
        &self.records[self.index]
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The real proxy's loop (`config_client::run` with one endpoint): a stream, then a
    /// jittered wait that doubles after every failure and starts over after a stream that
    /// delivered.
    async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        let mut failures_in_a_row = 0u32;
        loop {
            let outcome = self.stream_once().await;
            self.slot = None;
            match outcome {
                Ok(true) => {
                    backoff = MIN_BACKOFF;
                    failures_in_a_row = 0;
                }
                Ok(false) => failures_in_a_row += 1,
                Err(e) => {
                    failures_in_a_row += 1;
                    debug!(proxy = self.index, error = %e, "config stream failed");
                }
            }
            let jitter = rand::rng().random_range(0.8..1.2);
            tokio::time::sleep(backoff.mul_f64(jitter)).await;
            if failures_in_a_row > 0 {
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// One stream's life, as `config_client::stream_once`. `Ok(true)` if at least one
    /// update arrived.
    async fn stream_once(&mut self) -> Result<bool, String> {
        self.record().connects.fetch_add(1, Ordering::Relaxed);
        let channel = tonic::transport::Endpoint::from_shared(self.settings.endpoint.clone())
            .map_err(|e| format!("invalid endpoint: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut client = ProxyDiscoveryClient::new(channel);
        // Closed when this function returns, which ends our half of the stream.
        let (tx, rx) = mpsc::channel(16);
        let hello = v1::ProxyMessage {
            msg: Some(Msg::Hello(v1::Hello {
                proxy_id: format!("{}-{:05}", self.settings.id_prefix, self.index),
                listen_addr: format!("sim-{}", self.index),
                build_version: concat!("fleet-bench-", env!("CARGO_PKG_VERSION")).to_string(),
                services: vec![self.settings.service.clone()],
                running_version: self.record().acked_version.load(Ordering::Acquire),
                running_control_plane_id: self.control_plane_id.clone(),
            })),
        };
        tx.send(hello)
            .await
            .map_err(|_| "stream closed".to_string())?;
        tx.send(self.status())
            .await
            .map_err(|_| "stream closed".to_string())?;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(token) = &self.settings.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| "the proxy token is not a valid header value".to_string())?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut updates = client
            .stream_config(request)
            .await
            .map_err(|e| format!("subscribe: {e}"))?
            .into_inner();
        let mut received = false;
        let mut last_version = 0;
        let interval = self.settings.status_interval;
        let mut report = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                m = updates.message() => m,
                _ = report.tick() => {
                    // As the proxy: a report never waits; a backed-up stream drops it.
                    match tx.try_send(self.status()) {
                        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return Ok(received),
                    }
                    continue;
                }
            };
            let update = match message {
                Ok(Some(u)) => u,
                Ok(None) if received => return Ok(true),
                Ok(None) => return Err("closed by the control plane".into()),
                Err(_) if received => return Ok(true),
                Err(status) => return Err(format!("{}: {}", status.code(), status.message())),
            };
            let at = self.now();
            let record = self.record();
            record
                .received_version
                .store(update.version, Ordering::Release);
            record.received_at.store(at, Ordering::Release);
            if !received {
                received = true;
                record.served_at.store(at, Ordering::Release);
                record.streams_served.fetch_add(1, Ordering::AcqRel);
                self.slot = None;
            }
            let answer = match self.check(&update, last_version) {
                Ok(()) => {
                    last_version = update.version;
                    Msg::Ack(v1::Ack {
                        version: update.version,
                        nonce: update.nonce.clone(),
                    })
                }
                Err(reason) => {
                    self.record().nacks.fetch_add(1, Ordering::Relaxed);
                    Msg::Nack(v1::Nack {
                        version: update.version,
                        nonce: update.nonce.clone(),
                        reason,
                    })
                }
            };
            let acked = matches!(answer, Msg::Ack(_));
            if tx
                .send(v1::ProxyMessage { msg: Some(answer) })
                .await
                .is_err()
            {
                return Ok(true);
            }
            if acked {
                if self.control_plane_id != update.control_plane_id {
                    self.control_plane_id.clone_from(&update.control_plane_id);
                }
                let record = self.record();
                record.acked_at.store(self.now(), Ordering::Release);
                record
                    .acked_version
                    .store(update.version, Ordering::Release);
                if let Some(probe) = &self.probe {
                    *probe.lock().unwrap_or_else(|e| e.into_inner()) = Some(update);
                }
            }
        }
    }

    /// A status report of an idle proxy that runs the last version it ACKed.
    fn status(&self) -> v1::ProxyMessage {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        v1::ProxyMessage {
            msg: Some(Msg::Status(v1::Status {
                running_version: self.record().acked_version.load(Ordering::Acquire),
                running_control_plane_id: self.control_plane_id.clone(),
                uptime_ms: millis(self.epoch.elapsed()),
                interval_ms: millis(self.settings.status_interval),
                ..v1::Status::default()
            })),
        }
    }

    /// The real proxy's checks that need no routing table (`config_client::apply`).
    fn check(&self, update: &v1::ConfigUpdate, last_version: u64) -> Result<(), String> {
        let service = &self.settings.service;
        if update.unknown_services.iter().any(|s| s == service) {
            return Err(format!(
                "service '{service}' is not known to the control plane"
            ));
        }
        if !update.services.iter().any(|s| &s.name == service) {
            return Err(format!("update has no config for service '{service}'"));
        }
        if update.version <= last_version {
            return Err(format!(
                "version {} is not newer than version {last_version} applied on this stream",
                update.version
            ));
        }
        Ok(())
    }
}
