//! The chaos harness: a mixed workload through two proxies while a schedule of faults hits
//! the Redis group, the Sentinels, the control plane and the proxies; then a read-back of
//! every acknowledged write and a report against the failover invariants (DESIGN.md
//! I1-I7, issue 4's acceptance criteria).
//!
//! - `workload`: the client tasks and what they record per operation.
//! - `faults`: the schedule's steps and the moments each failover is measured by.
//! - `stale`: `MONITOR` of a replaced master, to catch writes sent to it.
//! - `verify`: the final read-back on the master the Sentinels name.
//! - `report`: the analysis (windows, classes, invariants) and its text form.
//!
//! [`run`] starts its own [`Stack`] (real Redis and Sentinel processes on ephemeral
//! loopback ports, the control plane and two proxies in-process) and tears it down.

mod faults;
mod report;
mod stale;
mod verify;
mod workload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use tokio::task::JoinSet;
use tracing::{info, warn};

pub use faults::{FailoverKind, Step};
pub use report::{
    ErrorClass, ErrorGroup, FailoverSummary, Invariant, PIVOT_BUDGET_MS, Report, Settings,
};
pub use workload::KEY_PREFIX;

use crate::{Stack, StackOptions, TopologyOptions};
use faults::{FaultRunner, FaultTiming};
use workload::{ClientSpec, Clock, Live, ProberSpec};

/// Proxies the workload is spread over.
pub const PROXIES: usize = 2;
/// Requests one prober leaves unanswered at most (a 20 ms prober reaches it after 20 s
/// without replies).
const MAX_PROBES_OUTSTANDING: usize = 1000;
/// Interval of the harness's own condition polls.
const POLL: Duration = Duration::from_millis(20);

/// Which faults a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// One master freeze and one control-plane outage with a failover inside it (CI).
    Short,
    /// Three master freezes, a replica killed and restarted, a Sentinel killed (a freeze
    /// runs with it down) and restarted, a control-plane outage with a failover inside
    /// it, the same with the old master back before the control plane, a planned
    /// `SENTINEL FAILOVER`, and a proxy restart.
    Full,
}

impl Schedule {
    /// The steps, in order.
    pub fn steps(self) -> Vec<Step> {
        use Step::*;
        match self {
            Schedule::Short => vec![Steady, MasterFreeze, Steady, ControlPlaneOutage, Steady],
            Schedule::Full => vec![
                Steady,
                MasterFreeze,
                Steady,
                ReplicaRestart,
                Steady,
                MasterFreeze,
                Steady,
                SentinelKill,
                Steady,
                MasterFreeze,
                SentinelRestart,
                Steady,
                ControlPlaneOutage,
                Steady,
                ControlPlaneOutageEarlyResume,
                Steady,
                GracefulFailover,
                Steady,
                ProxyRestart,
                Steady,
            ],
        }
    }

    /// `short` or `full`.
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Short => "short",
            Schedule::Full => "full",
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "short" => Ok(Schedule::Short),
            "full" => Ok(Schedule::Full),
            other => Err(format!(
                "unknown schedule `{other}` (expected short or full)"
            )),
        }
    }
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Client tasks (each with one connection; they alternate between the proxies).
    pub clients: usize,
    /// Which faults.
    pub schedule: Schedule,
    /// How long each steady step runs (also: how long a killed replica stays down, and
    /// the longest the control plane stays down after the Sentinels' failover).
    pub step_duration: Duration,
    /// Deadline of every wait inside a step (failover, resync, restart).
    pub step_timeout: Duration,
    /// Total operations per second over all clients (`None`: as fast as answers come).
    pub rate: Option<u32>,
    /// The clients' response timeout; above the proxies' failover hold (10 s) so that a
    /// held request is answered by the proxy, not cut short by the client.
    pub op_timeout: Duration,
    /// Interval of each proxy's prober (a `SET` on a pipelined connection whatever the
    /// replies, so that requests are issued during every failover).
    pub probe_interval: Duration,
    /// The service's write acknowledgement (`None`: the control plane's default,
    /// `master`); `replicas(N)` acknowledges a write once N replicas have it.
    pub write_ack: Option<pivot_control_plane::WriteAck>,
    /// The Redis group and its Sentinels (short timings by default).
    pub topology: TopologyOptions,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        ChaosOptions {
            clients: 32,
            schedule: Schedule::Short,
            step_duration: Duration::from_secs(2),
            step_timeout: Duration::from_secs(30),
            rate: None,
            op_timeout: Duration::from_secs(15),
            probe_interval: Duration::from_millis(20),
            write_ack: None,
            topology: TopologyOptions::default(),
        }
    }
}

impl ChaosOptions {
    /// Checks the options before anything starts.
    pub fn validate(&self) -> Result<()> {
        if !(1..=10_000).contains(&self.clients) {
            bail!("clients must be between 1 and 10000, got {}", self.clients);
        }
        if self.rate == Some(0) {
            bail!("rate must be positive (leave it out for unthrottled)");
        }
        if self.step_timeout < Duration::from_secs(1) {
            bail!("the step timeout must be at least 1s");
        }
        if self.probe_interval < Duration::from_millis(1) {
            bail!("the probe interval must be at least 1ms");
        }
        if self.op_timeout.is_zero() {
            bail!("the operation timeout must be positive");
        }
        if self.topology.replicas < 2 || self.topology.sentinels < 3 {
            bail!(
                "the schedules need at least 2 replicas and 3 Sentinels (got {} and {})",
                self.topology.replicas,
                self.topology.sentinels
            );
        }
        Ok(())
    }
}

/// Starts a stack, runs the workload and the schedule, verifies, tears the stack down and
/// returns the report.
pub async fn run(options: ChaosOptions) -> Result<Report> {
    options.validate()?;
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut stack = Stack::start(StackOptions {
        topology: options.topology.clone(),
        proxies: vec![(any, any); PROXIES],
        write_ack: options.write_ack,
        ..StackOptions::default()
    })
    .await
    .context("starting the stack")?;
    let report = drive(&mut stack, &options).await;
    let stopped = stack.shutdown().await;
    let report = report?;
    stopped.context("stopping the stack")?;
    Ok(report)
}

/// The run proper, on a started stack.
async fn drive(stack: &mut Stack, options: &ChaosOptions) -> Result<Report> {
    let clock = Clock::start();
    let unix_at_start_us = unix_now_us().saturating_sub(clock.now());
    let proxies = stack.proxies.len();
    let live = Arc::new(Live::new(clock, options.clients + proxies, proxies));
    let op_interval = options
        .rate
        .map(|r| Duration::from_secs_f64(options.clients as f64 / f64::from(r)));
    let mut clients = JoinSet::new();
    for id in 0..options.clients {
        let proxy = id % stack.proxies.len();
        let spec = ClientSpec {
            id: u32::try_from(id).context("client index")?,
            proxy: u8::try_from(proxy).context("proxy index")?,
            addr: stack.proxies[proxy].addr,
            op_timeout: options.op_timeout,
            op_interval,
            reconnect_timeout: options.step_timeout,
        };
        clients.spawn(workload::run_client(spec, live.clone()));
    }
    for (p, proxy) in stack.proxies.iter().enumerate() {
        let spec = ProberSpec {
            id: u32::try_from(options.clients + p).context("prober index")?,
            proxy: u8::try_from(p).context("proxy index")?,
            addr: proxy.addr,
            op_timeout: options.op_timeout,
            interval: options.probe_interval,
            max_outstanding: MAX_PROBES_OUTSTANDING,
        };
        clients.spawn(workload::run_prober(spec, live.clone()));
    }

    let mut problems = Vec::new();
    let mut steps = Vec::new();
    let mut completed = false;
    let timing = FaultTiming {
        step_duration: options.step_duration,
        step_timeout: options.step_timeout,
    };
    match wait_for_traffic(&live, options.step_timeout).await {
        Ok(()) => {
            let mut runner = FaultRunner::new(stack, &live, timing.clone());
            completed = true;
            for step in options.schedule.steps() {
                let (record, result) = runner.run(step).await;
                steps.push(record);
                if result.is_err() {
                    completed = false;
                    break;
                }
            }
        }
        Err(e) => problems.push(format!("{e:#}")),
    }

    live.stop.cancel();
    let mut logs = Vec::new();
    while let Some(joined) = clients.join_next().await {
        logs.push(joined.context("a client task panicked")?);
    }
    info!(
        operations = logs.iter().map(|l| l.ops.len()).sum::<usize>(),
        "workload stopped"
    );

    // Quiescence: the Sentinels agree and every node replicates from their master.
    let runner = FaultRunner::new(stack, &live, timing);
    if let Err(e) = runner.settle(options.step_timeout).await {
        problems.push(format!("the topology did not settle: {e:#}"));
    }
    let verification = match stack.topology.sentinel_master().await {
        Ok(master) => match verify::verify(&stack.topology, master, &logs).await {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push(format!("read-back failed: {e:#}"));
                None
            }
        },
        Err(e) => {
            problems.push(format!("no master to read back from: {e}"));
            None
        }
    };
    if !problems.is_empty() {
        warn!(?problems, "chaos run problems");
    }

    let table = stack
        .proxies
        .first()
        .map(|p| p.shared.table.load_full())
        .context("no proxy")?;
    let topology = stack.topology.options();
    let settings = Settings {
        clients: options.clients,
        probe_interval_ms: millis(options.probe_interval),
        proxies: stack.proxies.len(),
        schedule: options.schedule.name().to_string(),
        step_duration_ms: millis(options.step_duration),
        rate: options.rate,
        op_timeout_ms: millis(options.op_timeout),
        down_after_ms: millis(topology.down_after),
        failover_timeout_ms: millis(topology.failover_timeout),
        consistency: format!("{:?}", table.consistency),
        read_policy: format!("{:?}", table.read_policy),
        write_ack: format!(
            "{:?}",
            options
                .write_ack
                .unwrap_or(pivot_control_plane::WriteAck::Master)
        ),
        // The stack's proxies run with the defaults of `start_proxy`.
        backend_stall_ms: millis(
            pivot_proxy::Config::for_service(stack.topology.master_name(), "http://unused")
                .backend_stall,
        ),
    };
    Ok(report::build(report::RunRecord {
        settings,
        logs: &logs,
        steps: &steps,
        schedule_completed: completed,
        problems,
        verification,
        unix_at_start_us,
        proxies: stack.proxies.len(),
    }))
}

/// Waits until every client has had an operation answered.
async fn wait_for_traffic(live: &Live, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let idle = live
            .ok_ops
            .iter()
            .filter(|n| n.load(std::sync::atomic::Ordering::Relaxed) == 0)
            .count();
        if idle == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{idle} clients had no operation answered within {timeout:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
