//! The fault schedule: each step injects one fault into the running stack and waits, on
//! conditions with deadlines, until the stack has absorbed it.
//!
//! A failover step records the moments the report is built from (all on the run's clock):
//!
//! - `started_at`: the fault. For a freeze, the instant `kill(SIGSTOP)` returned: the
//!   kernel has stopped the master, nothing sent later can be answered by it. For a
//!   graceful failover, the instant `SENTINEL FAILOVER` was sent.
//! - `promoted_at`: the send time of the first `ROLE` (polled every [`PROBE_INTERVAL`] on
//!   every other node, in a task of its own) answered `master`: the promoted replica
//!   accepts writes from about here on (the true moment is at most one interval and a
//!   round trip earlier).
//! - `sentinels_named_at`: the first poll (every [`SENTINEL_POLL`]) at which a majority of
//!   the Sentinels' `GET-MASTER-ADDR-BY-NAME` named the new master (`+switch-master` time,
//!   to within the poll).
//! - `table_trace`: every change of each proxy's routing table (version, master), polled
//!   every [`PROBE_INTERVAL`] from before the fault to the end of the step.
//! - `resumed_at`: `SIGCONT` of the frozen master; `demoted_at`: when it first answered
//!   `ROLE` as a connected replica of the new master.
//!
//! A freeze step resumes the old master only once every proxy has acknowledged a write
//! issued after the freeze and every routing table has left the old master (or the step
//! deadline passed), so "writes held then resumed" and "writes to the resumed old master"
//! are measured separately; [`Step::ControlPlaneOutageEarlyResume`] resumes it earlier
//! on purpose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::stale::{MonitorWatch, MonitoredWrite};
use super::workload::{Clock, Live, data_key, data_value};
use crate::Stack;

/// Poll interval of the promotion probe and the proxies' routing tables.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// Poll interval of the Sentinels' opinion (each poll opens a connection per Sentinel).
pub const SENTINEL_POLL: Duration = Duration::from_millis(50);
/// Poll interval of the other waits.
const POLL: Duration = Duration::from_millis(20);
/// Keys per `MGET` when reading a node's copy of the workload's keys.
const MGET_CHUNK: usize = 1000;
/// Most routing-table changes one trace keeps.
const MAX_TABLE_CHANGES: usize = 10_000;

/// One step of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Workload only, for the step duration.
    Steady,
    /// `SIGSTOP` the master until the Sentinels have failed over and every proxy writes
    /// again, then `SIGCONT` it and wait until it is a replica of the new master.
    MasterFreeze,
    /// Stop the control plane, freeze the master, let the Sentinels fail over, start the
    /// control plane again (once every proxy writes again, or a step duration after the
    /// Sentinels named the new master), then resume the old master.
    ControlPlaneOutage,
    /// Like [`Step::ControlPlaneOutage`], but the old master is resumed while the control
    /// plane is still down (a step duration after the Sentinels named the new master, or
    /// once every proxy writes again); the control plane returns once every proxy's
    /// routing table left the old master, or a step duration later.
    ControlPlaneOutageEarlyResume,
    /// `SENTINEL FAILOVER` (planned): the old master stays up and writable.
    GracefulFailover,
    /// Kill a replica, run a step duration, restart it and wait until it is in sync.
    ReplicaRestart,
    /// Kill one Sentinel (it stays down until [`Step::SentinelRestart`]).
    SentinelKill,
    /// Restart the Sentinel [`Step::SentinelKill`] killed.
    SentinelRestart,
    /// Stop one proxy and start a new one on the same addresses.
    ProxyRestart,
}

impl Step {
    /// Kebab-case name, as in the report.
    pub fn name(self) -> &'static str {
        match self {
            Step::Steady => "steady",
            Step::MasterFreeze => "master-freeze",
            Step::ControlPlaneOutage => "control-plane-outage",
            Step::ControlPlaneOutageEarlyResume => "control-plane-outage-early-resume",
            Step::GracefulFailover => "graceful-failover",
            Step::ReplicaRestart => "replica-restart",
            Step::SentinelKill => "sentinel-kill",
            Step::SentinelRestart => "sentinel-restart",
            Step::ProxyRestart => "proxy-restart",
        }
    }
}

/// How a failover was provoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverKind {
    /// Master frozen with `SIGSTOP`.
    Freeze,
    /// Master frozen while the control plane was stopped; the control plane comes back
    /// before the old master is resumed.
    FreezeWithControlPlaneDown,
    /// Master frozen while the control plane was stopped, and resumed while it is still
    /// down (a partitioned master coming back before the control plane does).
    ResumeWithControlPlaneDown,
    /// `SENTINEL FAILOVER`.
    Graceful,
}

impl FailoverKind {
    fn freezes(self) -> bool {
        !matches!(self, FailoverKind::Graceful)
    }

    fn control_plane_down(self) -> bool {
        matches!(
            self,
            FailoverKind::FreezeWithControlPlaneDown | FailoverKind::ResumeWithControlPlaneDown
        )
    }
}

/// What one failover step observed (µs on the run's clock).
#[derive(Debug, Clone)]
pub struct FailoverRecord {
    /// How it was provoked.
    pub kind: FailoverKind,
    /// The master before.
    pub old_master: SocketAddr,
    /// The master the Sentinels named after, if they did.
    pub new_master: Option<SocketAddr>,
    /// The fault (see the module docs).
    pub started_at: u64,
    /// The promoted replica first answered `ROLE` as master.
    pub promoted_at: Option<u64>,
    /// A majority of the Sentinels first named the new master.
    pub sentinels_named_at: Option<u64>,
    /// Every change of a proxy's routing table during the step (the first entry per
    /// proxy is its table before the fault).
    pub table_trace: Vec<TableChange>,
    /// The control plane was stopped (outage steps).
    pub control_plane_stopped_at: Option<u64>,
    /// The control plane was started again (outage steps).
    pub control_plane_started_at: Option<u64>,
    /// `SIGCONT` of the frozen master.
    pub resumed_at: Option<u64>,
    /// The old master first answered `ROLE` as a connected replica of the new one.
    pub demoted_at: Option<u64>,
    /// Each client's sequence number just before the fault.
    pub seq_at_start: Vec<u64>,
    /// Data keys issued at or after the fault (`(client, seq)`) that the old master held,
    /// with the value written, right after it resumed.
    pub keys_on_old_master: Vec<(u32, u64)>,
    /// Workload writes the old master executed while watched (see [`super::stale`]).
    pub monitored_writes: Vec<MonitoredWrite>,
}

/// A proxy's routing table as polled: a new version or master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableChange {
    /// When it was seen (µs on the run's clock).
    pub at: u64,
    /// Which proxy.
    pub proxy: usize,
    /// The table's config version.
    pub version: u64,
    /// The master it routes writes to.
    pub master: Option<String>,
}

/// Polls the proxies' routing tables in the background, recording every change.
#[derive(Debug)]
struct TableTrace {
    /// Cancelled by [`TableTrace::finish`].
    stop: CancellationToken,
    task: JoinHandle<Vec<TableChange>>,
}

impl TableTrace {
    fn start(proxies: Vec<Arc<pivot_proxy::server::Shared>>, clock: Clock) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut changes = Vec::new();
            let mut last: Vec<Option<(u64, Option<String>)>> = vec![None; proxies.len()];
            // Bounded: ends on stop or when the cap is reached.
            while changes.len() < MAX_TABLE_CHANGES {
                for (i, p) in proxies.iter().enumerate() {
                    let table = p.table.load();
                    let now = (
                        table.version,
                        table.master.as_ref().map(ToString::to_string),
                    );
                    if last[i].as_ref() != Some(&now) {
                        changes.push(TableChange {
                            at: clock.now(),
                            proxy: i,
                            version: now.0,
                            master: now.1.clone(),
                        });
                        last[i] = Some(now);
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(PROBE_INTERVAL) => {}
                    () = token.cancelled() => break,
                }
            }
            changes
        });
        TableTrace { stop, task }
    }

    async fn finish(self) -> Vec<TableChange> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// What one step did.
#[derive(Debug, Clone)]
pub struct StepRecord {
    /// Which step.
    pub step: Step,
    /// When it began and ended (µs on the run's clock).
    pub start: u64,
    /// When it ended.
    pub end: u64,
    /// What it did, in words.
    pub detail: String,
    /// Failover steps only.
    pub failover: Option<FailoverRecord>,
    /// Deadlines missed and other surprises; a failed step stops the schedule.
    pub problems: Vec<String>,
}

/// Timing of the steps.
#[derive(Debug, Clone)]
pub struct FaultTiming {
    /// How long steady steps run (and how long a replica stays dead, and how long the
    /// control plane stays down after the Sentinels named the new master at most).
    pub step_duration: Duration,
    /// Deadline of every wait inside a step.
    pub step_timeout: Duration,
}

/// Runs steps against a stack while the workload runs.
#[derive(Debug)]
pub struct FaultRunner<'a> {
    stack: &'a mut Stack,
    live: &'a Live,
    timing: FaultTiming,
    /// Index of the Sentinel [`Step::SentinelKill`] killed, until it is restarted.
    killed_sentinel: Option<usize>,
}

impl<'a> FaultRunner<'a> {
    /// A runner for `stack`, with the clients' shared state.
    pub fn new(stack: &'a mut Stack, live: &'a Live, timing: FaultTiming) -> Self {
        FaultRunner {
            stack,
            live,
            timing,
            killed_sentinel: None,
        }
    }

    /// Runs one step; an `Err` means the stack is in a state the schedule cannot go on
    /// from (what was observed up to then is in the record).
    pub async fn run(&mut self, step: Step) -> (StepRecord, Result<()>) {
        let start = self.live.clock.now();
        let mut record = StepRecord {
            step,
            start,
            end: start,
            detail: String::new(),
            failover: None,
            problems: Vec::new(),
        };
        info!(step = step.name(), "chaos step");
        let result = match step {
            Step::Steady => {
                tokio::time::sleep(self.timing.step_duration).await;
                record.detail = format!("workload only for {:?}", self.timing.step_duration);
                Ok(())
            }
            Step::MasterFreeze => self.failover(FailoverKind::Freeze, &mut record).await,
            Step::ControlPlaneOutage => {
                self.failover(FailoverKind::FreezeWithControlPlaneDown, &mut record)
                    .await
            }
            Step::ControlPlaneOutageEarlyResume => {
                self.failover(FailoverKind::ResumeWithControlPlaneDown, &mut record)
                    .await
            }
            Step::GracefulFailover => self.failover(FailoverKind::Graceful, &mut record).await,
            Step::ReplicaRestart => self.replica_restart(&mut record).await,
            Step::SentinelKill => self.sentinel_kill(&mut record),
            Step::SentinelRestart => self.sentinel_restart(&mut record).await,
            Step::ProxyRestart => self.proxy_restart(&mut record).await,
        };
        if let Err(e) = &result {
            warn!(step = step.name(), error = %format!("{e:#}"), "chaos step failed");
            record.problems.push(format!("{e:#}"));
        }
        record.end = self.live.clock.now();
        (record, result)
    }

    async fn failover(&mut self, kind: FailoverKind, record: &mut StepRecord) -> Result<()> {
        let clock = self.live.clock;
        let timeout = self.timing.step_timeout;
        let old = self.stack.topology.sentinel_master().await?;
        let mut rec = FailoverRecord {
            kind,
            old_master: old,
            new_master: None,
            started_at: 0,
            promoted_at: None,
            sentinels_named_at: None,
            table_trace: Vec::new(),
            control_plane_stopped_at: None,
            control_plane_started_at: None,
            resumed_at: None,
            demoted_at: None,
            seq_at_start: Vec::new(),
            keys_on_old_master: Vec::new(),
            monitored_writes: Vec::new(),
        };
        let trace = TableTrace::start(
            self.stack
                .proxies
                .iter()
                .map(|p| p.shared.clone())
                .collect(),
            clock,
        );
        let outcome = self.failover_inner(kind, old, &mut rec, record).await;
        // Whatever happened, leave no master frozen and no control plane stopped.
        if kind.freezes()
            && rec.resumed_at.is_none()
            && let Some(node) = self.stack.topology.node_by_addr(old)
            && node.resume().is_ok()
        {
            rec.resumed_at = Some(clock.now());
        }
        if self.stack.control_plane.is_none() {
            self.stack.start_control_plane().await?;
            rec.control_plane_started_at = Some(clock.now());
        }
        rec.table_trace = trace.finish().await;
        record.detail = match (kind, rec.new_master) {
            (FailoverKind::Freeze, Some(new)) => format!("froze master {old}; new master {new}"),
            (FailoverKind::FreezeWithControlPlaneDown, Some(new)) => format!(
                "control plane stopped; froze master {old}; new master {new}; control plane restarted; old master resumed"
            ),
            (FailoverKind::ResumeWithControlPlaneDown, Some(new)) => format!(
                "control plane stopped; froze master {old}; new master {new}; old master resumed; control plane restarted"
            ),
            (FailoverKind::Graceful, Some(new)) => {
                format!("SENTINEL FAILOVER from {old}; new master {new}")
            }
            (_, None) => format!("failover from {old} did not complete"),
        };
        record.failover = Some(rec);
        outcome?;
        self.settle(timeout).await
    }

    async fn failover_inner(
        &mut self,
        kind: FailoverKind,
        old: SocketAddr,
        rec: &mut FailoverRecord,
        record: &mut StepRecord,
    ) -> Result<()> {
        let clock = self.live.clock;
        let timeout = self.timing.step_timeout;
        let step_duration = self.timing.step_duration;
        node_at(self.stack, old)?;
        // A planned failover keeps the old master up: watch it from before the switch.
        let mut monitor = match kind {
            FailoverKind::Graceful => Some(MonitorWatch::start(old, Duration::from_secs(1)).await?),
            _ => None,
        };
        if kind.control_plane_down() {
            self.stack.stop_control_plane().await?;
            rec.control_plane_stopped_at = Some(clock.now());
        }
        let candidates: Vec<SocketAddr> = self
            .stack
            .topology
            .nodes()
            .iter()
            .filter(|n| n.addr() != old && n.pid().is_some())
            .map(|n| n.addr())
            .collect();
        // Its own task, so that the Sentinel polls below do not delay it.
        let promotion = PromotionProbe::start(candidates, clock);
        rec.seq_at_start = self.live.seqs();
        match kind {
            FailoverKind::Graceful => {
                rec.started_at = clock.now();
                self.stack.topology.sentinel_failover().await?;
            }
            _ => {
                node_at(self.stack, old)?.pause()?;
                rec.started_at = clock.now();
            }
        }

        // Wait for the milestones, polling every PROBE_INTERVAL; act on them as they come.
        let deadline = Instant::now() + timeout;
        let mut next_sentinel_poll = Instant::now();
        let mut named_instant: Option<Instant> = None;
        let mut resumed_instant: Option<Instant> = None;
        let old_name = old.to_string();
        loop {
            if rec.promoted_at.is_none() {
                rec.promoted_at = promotion.seen_at();
            }
            if rec.sentinels_named_at.is_none() && Instant::now() >= next_sentinel_poll {
                next_sentinel_poll = Instant::now() + SENTINEL_POLL;
                if let Ok(named) = self.stack.topology.sentinel_master().await
                    && named != old
                {
                    rec.sentinels_named_at = Some(clock.now());
                    rec.new_master = Some(named);
                    named_instant = Some(Instant::now());
                }
            }
            // Every proxy's routing table names a master other than the old one.
            let tables_switched = self.stack.proxies.iter().all(|p| {
                p.shared
                    .table
                    .load()
                    .master
                    .as_ref()
                    .is_some_and(|m| m.to_string() != old_name)
            });
            let proxies = self.stack.proxies.len();
            let writing_again = match kind {
                // The old master keeps answering: wait for every proxy's switch instead.
                FailoverKind::Graceful => tables_switched,
                // Every proxy acknowledged a write issued after the freeze.
                _ => (0..proxies).all(|p| self.live.wrote_after(p, rec.started_at)),
            };
            // The Sentinels' failover is over and the proxies had their chance to follow
            // it (or a step duration passed).
            let followed_or_waited =
                named_instant.is_some_and(|t| writing_again || t.elapsed() >= step_duration);
            match kind {
                FailoverKind::FreezeWithControlPlaneDown
                    if self.stack.control_plane.is_none() && followed_or_waited =>
                {
                    self.stack.start_control_plane().await?;
                    rec.control_plane_started_at = Some(clock.now());
                    info!(
                        writing_again,
                        "control plane restarted after the Sentinels' failover"
                    );
                }
                FailoverKind::ResumeWithControlPlaneDown
                    if rec.resumed_at.is_none() && followed_or_waited =>
                {
                    monitor = Some(self.resume_and_watch(old, rec).await?);
                    resumed_instant = Some(Instant::now());
                    info!(
                        writing_again,
                        "old master resumed while the control plane is down"
                    );
                }
                FailoverKind::ResumeWithControlPlaneDown
                    if self.stack.control_plane.is_none()
                        && resumed_instant
                            .is_some_and(|t| tables_switched || t.elapsed() >= step_duration) =>
                {
                    self.stack.start_control_plane().await?;
                    rec.control_plane_started_at = Some(clock.now());
                    info!(
                        tables_switched,
                        "control plane restarted after the old master resumed"
                    );
                }
                _ => {}
            }
            let done = rec.promoted_at.is_some()
                && rec.sentinels_named_at.is_some()
                && writing_again
                && tables_switched
                && self.stack.control_plane.is_some();
            if done {
                break;
            }
            if Instant::now() >= deadline {
                let missing = [
                    (rec.promoted_at.is_none(), "no replica answered ROLE master"),
                    (
                        rec.sentinels_named_at.is_none(),
                        "the Sentinels named no new master",
                    ),
                    (!writing_again, "not every proxy writes again"),
                    (
                        !tables_switched,
                        "not every proxy's routing table left the old master",
                    ),
                ]
                .iter()
                .filter(|(m, _)| *m)
                .map(|(_, what)| *what)
                .collect::<Vec<_>>()
                .join("; ");
                record
                    .problems
                    .push(format!("after {timeout:?} of the failover: {missing}"));
                if rec.new_master.is_none() {
                    bail!("the Sentinels did not fail over from {old} within {timeout:?}");
                }
                break;
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        let new = rec
            .new_master
            .ok_or_else(|| anyhow!("no new master after the failover from {old}"))?;

        if kind.freezes() && rec.resumed_at.is_none() {
            monitor = Some(self.resume_and_watch(old, rec).await?);
        }
        let demoted = self
            .stack
            .topology
            .wait_for_replica_of(old, new, timeout)
            .await;
        match demoted {
            Ok(()) => rec.demoted_at = Some(clock.now()),
            Err(e) => record.problems.push(format!("{e}")),
        }
        if let Some(m) = monitor {
            match m.finish().await {
                Ok(writes) => rec.monitored_writes = writes,
                Err(e) => record.problems.push(format!("MONITOR of {old}: {e:#}")),
            }
        }
        Ok(())
    }

    /// `SIGCONT` of the frozen old master, then `MONITOR` on it and a read of every key
    /// issued since the fault. Registered before the read: together they miss nothing but
    /// the `INCR`s a proxy might send in the few milliseconds between the two.
    async fn resume_and_watch(
        &self,
        old: SocketAddr,
        rec: &mut FailoverRecord,
    ) -> Result<MonitorWatch> {
        node_at(self.stack, old)?.resume()?;
        rec.resumed_at = Some(self.live.clock.now());
        let monitor = MonitorWatch::start(old, Duration::from_secs(1)).await?;
        rec.keys_on_old_master = self
            .keys_issued_since(old, &rec.seq_at_start)
            .await
            .with_context(|| format!("reading the resumed old master {old}"))?;
        Ok(monitor)
    }

    /// Data keys issued since `seq_at_start` that `node` holds with the value written.
    async fn keys_issued_since(
        &self,
        node: SocketAddr,
        seq_at_start: &[u64],
    ) -> Result<Vec<(u32, u64)>> {
        let now = self.live.seqs();
        let mut wanted: Vec<(u32, u64)> = Vec::new();
        for (client, (from, to)) in seq_at_start.iter().zip(&now).enumerate() {
            let client = u32::try_from(client).context("client index")?;
            wanted.extend((*from.max(&1)..=*to).map(|seq| (client, seq)));
        }
        let node = self
            .stack
            .topology
            .node_by_addr(node)
            .with_context(|| format!("{node} is not one of our nodes"))?;
        let mut conn = node.connection().await?;
        let mut found = Vec::new();
        for chunk in wanted.chunks(MGET_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|(c, s)| data_key(*c, *s)).collect();
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .with_context(|| format!("MGET on {}", node.addr()))?;
            for ((c, s), v) in chunk.iter().zip(values) {
                if v.as_deref() == Some(data_value(*c, *s).as_str()) {
                    found.push((*c, *s));
                }
            }
        }
        Ok(found)
    }

    async fn replica_restart(&mut self, record: &mut StepRecord) -> Result<()> {
        let master = self.stack.topology.sentinel_master().await?;
        let node = self
            .stack
            .topology
            .nodes()
            .iter()
            .rev()
            .find(|n| n.addr() != master && n.pid().is_some())
            .context("no running replica to kill")?;
        let addr = node.addr();
        node.kill()?;
        let killed_at = self.live.clock.now();
        tokio::time::sleep(self.timing.step_duration).await;
        node.restart().await?;
        let restarted_at = self.live.clock.now();
        self.stack
            .topology
            .wait_for_replica_of(addr, master, self.timing.step_timeout)
            .await?;
        let synced_at = self.live.clock.now();
        record.detail = format!(
            "killed replica {addr} at {}, restarted it at {}, in sync with {master} at {}",
            secs(killed_at),
            secs(restarted_at),
            secs(synced_at)
        );
        self.settle(self.timing.step_timeout).await
    }

    fn sentinel_kill(&mut self, record: &mut StepRecord) -> Result<()> {
        if self.killed_sentinel.is_some() {
            bail!("a Sentinel is already down");
        }
        let index = 0;
        let sentinel = self
            .stack
            .topology
            .sentinels()
            .get(index)
            .context("no Sentinel to kill")?;
        sentinel.kill()?;
        self.killed_sentinel = Some(index);
        record.detail = format!(
            "killed {} ({}); {} of {} Sentinels left",
            sentinel.name(),
            sentinel.addr(),
            self.stack.topology.sentinels().len() - 1,
            self.stack.topology.sentinels().len()
        );
        Ok(())
    }

    async fn sentinel_restart(&mut self, record: &mut StepRecord) -> Result<()> {
        let index = self
            .killed_sentinel
            .take()
            .context("no Sentinel was killed")?;
        let sentinel = self
            .stack
            .topology
            .sentinels()
            .get(index)
            .context("no such Sentinel")?;
        sentinel.restart().await?;
        let master = self.stack.topology.sentinel_master().await?;
        let name = self.stack.topology.master_name().to_string();
        let deadline = Instant::now() + self.timing.step_timeout;
        // Bounded by the deadline.
        loop {
            let names = sentinel.master_addr(&name).await.ok().flatten();
            if names == Some(master) {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the restarted {} names {names:?}, not {master}, after {:?}",
                    sentinel.name(),
                    self.timing.step_timeout
                );
            }
            tokio::time::sleep(POLL).await;
        }
        record.detail = format!(
            "restarted {} ({}); it names master {master}",
            sentinel.name(),
            sentinel.addr()
        );
        Ok(())
    }

    async fn proxy_restart(&mut self, record: &mut StepRecord) -> Result<()> {
        let index = self.stack.proxies.len().saturating_sub(1);
        let addr = self
            .stack
            .proxies
            .get(index)
            .map(|p| p.addr)
            .context("no proxy")?;
        self.stack
            .restart_proxy(index, self.timing.step_timeout)
            .await?;
        record.detail = format!("restarted proxy {index} on {addr}");
        Ok(())
    }

    /// Waits until the Sentinels agree on a master that answers `ROLE` as master and every
    /// other running node is its connected replica.
    pub async fn settle(&self, timeout: Duration) -> Result<()> {
        let topology = &self.stack.topology;
        let master = topology.sentinel_master().await?;
        for node in topology.nodes() {
            if node.addr() != master && node.pid().is_some() {
                topology
                    .wait_for_replica_of(node.addr(), master, timeout)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Our node at `addr`.
fn node_at(stack: &Stack, addr: SocketAddr) -> Result<&crate::RedisNode> {
    stack
        .topology
        .node_by_addr(addr)
        .with_context(|| format!("{addr} is not one of our nodes"))
}

/// Polls `ROLE` on the candidates every [`PROBE_INTERVAL`] until one answers `master`.
#[derive(Debug)]
struct PromotionProbe {
    /// Send time (µs) of the first `ROLE` answered `master`; 0 until then.
    seen: Arc<std::sync::atomic::AtomicU64>,
    /// Cancelled on drop: the probe ends with its step.
    stop: CancellationToken,
}

impl PromotionProbe {
    fn start(candidates: Vec<SocketAddr>, clock: Clock) -> Self {
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (found, token) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            let mut conns: Vec<Option<MultiplexedConnection>> = vec![None; candidates.len()];
            // Bounded by the token (cancelled when the step's probe is dropped).
            while !token.is_cancelled() {
                for (addr, conn) in candidates.iter().zip(conns.iter_mut()) {
                    // The node answered for a command it ran after this instant: the
                    // promotion happened at most one probe interval and round trip
                    // before it.
                    let sent = clock.now();
                    if role_is_master(*addr, conn).await {
                        found.store(sent.max(1), std::sync::atomic::Ordering::Release);
                        info!(promoted = %addr, "promoted replica answers ROLE master");
                        return;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(PROBE_INTERVAL) => {}
                    () = token.cancelled() => {}
                }
            }
        });
        PromotionProbe { seen, stop }
    }

    fn seen_at(&self) -> Option<u64> {
        match self.seen.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }
}

impl Drop for PromotionProbe {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Whether the node at `addr` answers `ROLE` with `master`; (re)connects as needed.
async fn role_is_master(addr: SocketAddr, conn: &mut Option<MultiplexedConnection>) -> bool {
    if conn.is_none() {
        *conn = probe_connection(addr).await;
    }
    let Some(c) = conn.as_mut() else {
        return false;
    };
    let role: redis::RedisResult<redis::Value> = redis::cmd("ROLE").query_async(c).await;
    match role {
        Ok(redis::Value::Array(items)) => matches!(
            items.first(),
            Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"
        ),
        Ok(_) => false,
        Err(_) => {
            *conn = None;
            false
        }
    }
}

/// A connection whose connect and replies time out after 1 s (a probe must not hang).
async fn probe_connection(addr: SocketAddr) -> Option<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}/")).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .ok()
}

/// µs as seconds, for step details.
fn secs(us: u64) -> String {
    format!("{:.3}s", us as f64 / 1e6)
}
