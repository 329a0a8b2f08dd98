//! Turning a run's raw records (every operation, every step's milestones, the final
//! read-back) into the report: pure functions, no I/O.
//!
//! Definitions (all instants on the run's clock):
//!
//! - A failover's **window** runs from its fault `F` (the freeze, or the `SENTINEL
//!   FAILOVER` request) to `S`, the moment the proxies route to the new master. For a
//!   freeze, `S` is the latest, over the proxies, of the first acknowledgement of a write
//!   issued through that proxy at or after `F` (a proxy routes again once it has a master
//!   it can write to). For a planned failover the old master keeps answering, so `S` is
//!   the latest of the proxies' routing-table switches to the new master.
//! - An operation is **in flight at the fault** if it was answered after `F` and issued
//!   before `D`, the moment its proxy could see the frozen master stall (per proxy, see
//!   [`detectable_by_proxy`]): requests sent before then are in flight to a dead node,
//!   like those sent before the freeze (I4); not one answered `TRYAGAIN` (held, never
//!   sent). It is **issued during the failover** if it was issued within `[D, S]` or held
//!   and answered `TRYAGAIN` after `F`: those must be held and served (I2).
//!   Errors outside both, on the connections a proxy restart closes, are **proxy
//!   restart**; everything else is **other**.
//! - **Write unavailability** of a freeze: `F` to the first acknowledgement of a write
//!   issued at or after `F` (through any proxy). **Sentinel's part**: `F` to `P`, the
//!   promoted replica's first `ROLE` answer as master. **Pivot's part**: `P` to that
//!   first acknowledgement.
//! - A **stale read** is a `GET`, on the connection that wrote it, of the client's last
//!   acknowledged key that returned nil or another value.
//! - A **write to a stale master** is a workload write the old master executed after the
//!   promotion: seen by `MONITOR` (except over its replication link from the new master),
//!   or a key the resumed old master held whose write was answered after `SIGCONT`, or
//!   issued after `D` and failed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;

#[cfg(test)]
use super::faults::TableChange;
use super::faults::{FailoverKind, FailoverRecord, Step, StepRecord};
use super::verify::Verification;
use super::workload::{ClientLog, Op, OpKind, Outcome, data_key};

/// How close to a freeze a write's acknowledgement must be for its loss to count as
/// asynchronous replication's (µs, either side: a reply can arrive just after the freeze).
pub const REPLICATION_LAG_WINDOW_US: u64 = 100_000;
/// Pivot's share of a failover's write unavailability the issue allows.
pub const PIVOT_BUDGET_MS: f64 = 100.0;
/// Examples quoted per finding.
const EXAMPLES: usize = 5;

/// Settings the run used, echoed in the report.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Client tasks.
    pub clients: usize,
    /// Interval of the per-proxy probers (pipelined `SET`s).
    pub probe_interval_ms: u64,
    /// Proxies (clients alternate between them).
    pub proxies: usize,
    /// `short` or `full`.
    pub schedule: String,
    /// Steady-state duration per step.
    pub step_duration_ms: u64,
    /// Total operations per second asked for (`None`: unthrottled).
    pub rate: Option<u32>,
    /// Client response timeout.
    pub op_timeout_ms: u64,
    /// Sentinel `down-after-milliseconds`.
    pub down_after_ms: u64,
    /// Sentinel `failover-timeout`.
    pub failover_timeout_ms: u64,
    /// The proxies' consistency mode as they applied it.
    pub consistency: String,
    /// The proxies' read policy as they applied it.
    pub read_policy: String,
    /// The service's write acknowledgement.
    pub write_ack: String,
    /// The proxies' `--backend-stall`.
    pub backend_stall_ms: u64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was run.
    pub settings: Settings,
    /// Wall time of the workload (first to last operation).
    pub duration_s: f64,
    /// Every step ran (a step failure stops the schedule).
    pub schedule_completed: bool,
    /// What went wrong in the harness or the stack (missed deadlines).
    pub problems: Vec<String>,
    /// The steps, in order.
    pub steps: Vec<StepSummary>,
    /// Operation counts.
    pub operations: Operations,
    /// Errors the clients saw, grouped by kind.
    pub errors: Vec<ErrorGroup>,
    /// One entry per failover.
    pub failovers: Vec<FailoverSummary>,
    /// Latency.
    pub latency: Latency,
    /// `SET`s against the final master.
    pub writes: Writes,
    /// `INCR` counters against the final master.
    pub counters: Counters,
    /// Read-your-writes reads.
    pub stale_reads: StaleReads,
    /// Writes executed by a master after it was replaced.
    pub stale_master: StaleMaster,
    /// The acceptance criteria, each checked.
    pub invariants: Vec<Invariant>,
}

/// One step.
#[derive(Debug, Clone, Serialize)]
pub struct StepSummary {
    /// Step name.
    pub step: String,
    /// Start, seconds into the run.
    pub start_s: f64,
    /// End.
    pub end_s: f64,
    /// What it did.
    pub detail: String,
    /// Missed deadlines and the like.
    pub problems: Vec<String>,
}

/// Counts of one kind of operation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindCount {
    /// Issued.
    pub issued: u64,
    /// Answered without error.
    pub ok: u64,
    /// Answered with an error (or lost).
    pub failed: u64,
}

/// Operation counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Operations {
    /// All operations.
    pub total: u64,
    /// Per kind (`set`, `incr`, `get`).
    pub by_kind: BTreeMap<String, KindCount>,
    /// Operations per second over the run.
    pub per_second: f64,
    /// Connections reopened after a loss.
    pub reconnects: u64,
    /// Clients that stopped because they could not reconnect.
    pub clients_gave_up: Vec<String>,
}

/// How an error relates to the faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    /// Issued before a failover's fault (or within `backend_stall` after it), answered
    /// after it.
    InFlightAtFault,
    /// Issued inside a failover's window.
    DuringFailover,
    /// A connection closed by a proxy restart.
    ProxyRestart,
    /// Anything else.
    Other,
}

impl ErrorClass {
    fn label(self) -> &'static str {
        match self {
            ErrorClass::InFlightAtFault => "in flight at the fault",
            ErrorClass::DuringFailover => "issued during a failover",
            ErrorClass::ProxyRestart => "proxy restart",
            ErrorClass::Other => "other",
        }
    }
}

/// Errors of one kind.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorGroup {
    /// The error text with addresses and numbers masked.
    pub kind: String,
    /// How many.
    pub count: u64,
    /// Per class.
    pub by_class: BTreeMap<ErrorClass, u64>,
    /// Per operation kind.
    pub by_op: BTreeMap<String, u64>,
    /// Per step (by the step during which the operation was issued).
    pub by_step: BTreeMap<String, u64>,
    /// One full message.
    pub example: String,
}

/// One failover.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverSummary {
    /// Position of its step in the schedule.
    pub step_index: usize,
    /// How it was provoked.
    pub kind: FailoverKind,
    /// Master before.
    pub old_master: String,
    /// Master after.
    pub new_master: Option<String>,
    /// Fault, seconds into the run.
    pub at_s: f64,
    /// Fault to the promoted replica answering `ROLE` master (Sentinel's part).
    pub sentinel_ms: Option<f64>,
    /// Fault to a majority of Sentinels naming the new master (`+switch-master`).
    pub sentinels_named_ms: Option<f64>,
    /// Promotion to the first acknowledged write issued after the fault (Pivot's part).
    pub pivot_ms: Option<f64>,
    /// Fault to the first acknowledged write issued after it (write unavailability).
    pub unavailable_ms: Option<f64>,
    /// Fault to the end of the window (the last proxy routing again).
    pub window_ms: Option<f64>,
    /// Per proxy: fault to its first acknowledged write issued after the fault.
    pub proxy_first_write_ms: Vec<Option<f64>>,
    /// Per proxy: fault to its routing table naming the new master.
    pub proxy_table_ms: Vec<Option<f64>>,
    /// Every routing-table change after the fault: `proxy N: vVERSION MASTER at MS`.
    pub table_changes: Vec<String>,
    /// Fault to `SIGCONT` of the old master.
    pub resumed_ms: Option<f64>,
    /// Fault to the control plane's restart (outage steps).
    pub control_plane_started_ms: Option<f64>,
    /// Longest gap between two consecutive acknowledged writes (any client) within the
    /// window and 1 s around it: the planned failover's unavailability.
    pub longest_write_gap_ms: Option<f64>,
    /// Control plane down time (outage steps).
    pub control_plane_down_ms: Option<f64>,
    /// Every proxy wrote again before the control plane came back (I6).
    pub writes_resumed_before_control_plane: Option<bool>,
    /// Fault to the old master answering as a connected replica of the new one.
    pub demoted_ms: Option<f64>,
    /// Operations in flight at the fault, and how many of them failed.
    pub in_flight_at_fault: (u64, u64),
    /// When the failed in-flight operations got their error: earliest and latest (ms from
    /// the fault; I4 wants them soon after `backend_stall`).
    pub in_flight_errors_at_ms: Option<(f64, f64)>,
    /// Operations issued in the window, and how many of them failed.
    pub issued_during: (u64, u64),
    /// Longest latency of an operation issued in the window (how long holds lasted).
    pub max_held_ms: f64,
    /// Writes the old master executed after the promotion: acknowledged ones.
    pub stale_master_acked: u64,
    /// ... and unacknowledged ones.
    pub stale_master_unacked: u64,
    /// Errors of requests issued during the window, described (a few).
    pub errors_during: Vec<String>,
    /// When the old master executed the first and the last of them (ms from the fault).
    pub stale_master_span_ms: Option<(f64, f64)>,
    /// `SET`s in flight at the fault that the old master held when it resumed (they ran:
    /// their clients got an error, or their acknowledgement predates the freeze).
    pub in_flight_applied_on_old_master: u64,
}

/// Latency (ms).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median of all operations.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum of all operations.
    pub max_ms: f64,
    /// The slowest operation, described.
    pub max_op: String,
    /// Maximum of the operations neither in flight at a fault nor issued in a failover
    /// window.
    pub max_outside_failovers_ms: f64,
    /// Maximum per operation kind.
    pub max_by_kind_ms: BTreeMap<String, f64>,
}

/// Acknowledged writes against the final master.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Writes {
    /// The final master.
    pub final_master: Option<String>,
    /// `SET`s acknowledged.
    pub acknowledged: u64,
    /// ... missing on the final master.
    pub lost: u64,
    /// ... holding another value.
    pub wrong_value: u64,
    /// `SET`s that got an error.
    pub failed: u64,
    /// ... that ran anyway.
    pub failed_but_applied: u64,
    /// A few lost keys, with when they were acknowledged.
    pub lost_examples: Vec<String>,
    /// Lost writes per step (of their acknowledgement).
    pub lost_by_step: BTreeMap<String, u64>,
    /// Lost writes that no stale-master observation accounts for (e.g. acknowledged by
    /// the old master just before the promotion and never replicated).
    pub lost_not_on_stale_master: u64,
    /// Lost writes acknowledged within [`REPLICATION_LAG_WINDOW_US`] of a freeze: the
    /// frozen master had not replicated them (allowed with `write_ack = master`).
    pub lost_to_replication_lag: u64,
}

/// Counters against the final master.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// Counters checked.
    pub clients: u64,
    /// `INCR`s acknowledged.
    pub acknowledged: u64,
    /// Acknowledged increments missing from the final values (summed).
    pub missing_increments: u64,
    /// Increments beyond acknowledged + ambiguous errors (summed).
    pub excess_increments: u64,
    /// Acknowledged `INCR`s whose value did not exceed the client's previous one.
    pub went_backwards: u64,
    /// Missing increments beyond the client's `INCR`s acknowledged within
    /// [`REPLICATION_LAG_WINDOW_US`] of a freeze (summed).
    pub missing_beyond_replication_lag: u64,
}

/// Read-your-writes reads.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StaleReads {
    /// Reads answered.
    pub reads: u64,
    /// Stale ones.
    pub stale: u64,
    /// ... of a write later lost to asynchronous replication at a freeze.
    pub of_writes_lost_to_replication_lag: u64,
    /// Per class.
    pub by_class: BTreeMap<ErrorClass, u64>,
    /// A few.
    pub examples: Vec<String>,
}

/// Writes that reached a replaced master.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StaleMaster {
    /// Acknowledged writes executed by an old master after the promotion.
    pub acknowledged: u64,
    /// Unacknowledged ones (their clients got an error).
    pub unacknowledged: u64,
    /// A few.
    pub examples: Vec<String>,
}

/// One acceptance criterion, checked.
#[derive(Debug, Clone, Serialize)]
pub struct Invariant {
    /// Short id (`lost-writes`, `stale-reads`, ...).
    pub id: String,
    /// The criterion.
    pub statement: String,
    /// Whether the run satisfied it.
    pub holds: bool,
    /// The numbers behind the verdict.
    pub detail: String,
}

impl Report {
    /// The invariant with this id.
    pub fn invariant(&self, id: &str) -> Option<&Invariant> {
        self.invariants.iter().find(|i| i.id == id)
    }
}

/// The raw material of a report.
#[derive(Debug)]
pub struct RunRecord<'a> {
    /// Settings echoed.
    pub settings: Settings,
    /// Every client's log.
    pub logs: &'a [ClientLog],
    /// Every step run.
    pub steps: &'a [StepRecord],
    /// Every step ran.
    pub schedule_completed: bool,
    /// Harness-level problems.
    pub problems: Vec<String>,
    /// The final read-back (`None` if it could not run).
    pub verification: Option<Verification>,
    /// Unix time (µs) of the run clock's zero, to place `MONITOR` timestamps.
    pub unix_at_start_us: u64,
    /// Proxies.
    pub proxies: usize,
}

/// A failover's window, resolved.
#[derive(Debug, Clone)]
struct Window {
    fault: u64,
    /// Per proxy: requests issued before it may be in flight to the frozen master (see
    /// [`detectable_by_proxy`]).
    detectable: Vec<u64>,
    end: u64,
}

impl Window {
    fn detectable(&self, proxy: u8) -> u64 {
        self.detectable
            .get(usize::from(proxy))
            .copied()
            .unwrap_or(self.fault)
    }
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 10.0).round() / 10.0
}

fn signed_ms(from: u64, to: u64) -> f64 {
    let d = to as f64 - from as f64;
    (d / 1000.0 * 10.0).round() / 10.0
}

fn secs(us: u64) -> f64 {
    (us as f64 / 1e6 * 1000.0).round() / 1000.0
}

/// Builds the report.
pub fn build(run: RunRecord<'_>) -> Report {
    let ops: Vec<&Op> = run.logs.iter().flat_map(|l| &l.ops).collect();
    let step_of = |t: u64| -> String {
        run.steps
            .iter()
            .find(|s| s.start <= t && t <= s.end)
            .map_or_else(
                || "before/after the schedule".to_string(),
                |s| s.step.name().to_string(),
            )
    };

    // Failover windows.
    let stall = run.settings.backend_stall_ms * 1000;
    let mut windows: Vec<Window> = Vec::new();
    // Acknowledged SETs a replaced master executed: they explain lost writes.
    let mut stale_acked_keys: std::collections::HashSet<(u32, u64)> =
        std::collections::HashSet::new();
    let mut failovers: Vec<FailoverSummary> = Vec::new();
    for (index, step) in run.steps.iter().enumerate() {
        let Some(f) = &step.failover else { continue };
        let (summary, keys) = summarize_failover(
            index,
            step,
            f,
            &ops,
            run.proxies,
            stall,
            run.unix_at_start_us,
        );
        stale_acked_keys.extend(keys);
        windows.push(Window {
            fault: f.started_at,
            detectable: detectable_by_proxy(f, &ops, run.proxies, stall),
            end: summary
                .window_ms
                .map_or(step.end, |w| f.started_at + (w * 1000.0) as u64),
        });
        failovers.push(summary);
    }
    let restart_windows: Vec<(u64, u64)> = run
        .steps
        .iter()
        .filter(|s| s.step == Step::ProxyRestart)
        .map(|s| (s.start, s.end))
        .collect();
    let classify = |op: &Op| -> ErrorClass {
        for w in &windows {
            let detectable = w.detectable(op.proxy);
            if in_flight_at(op, w.fault, detectable) {
                return ErrorClass::InFlightAtFault;
            }
            if issued_during(op, w.fault, detectable, w.end) {
                return ErrorClass::DuringFailover;
            }
        }
        let lost = op.failed().is_some_and(|e| e.connection_lost);
        if lost
            && restart_windows
                .iter()
                .any(|(a, b)| op.end >= *a && op.end <= *b)
        {
            return ErrorClass::ProxyRestart;
        }
        ErrorClass::Other
    };

    // Operations.
    let mut operations = Operations {
        total: ops.len() as u64,
        reconnects: run.logs.iter().map(|l| l.reconnects).sum(),
        clients_gave_up: run.logs.iter().filter_map(|l| l.gave_up.clone()).collect(),
        ..Operations::default()
    };
    for op in &ops {
        let c = operations
            .by_kind
            .entry(op.kind.as_str().to_string())
            .or_default();
        c.issued += 1;
        if op.failed().is_some() {
            c.failed += 1;
        } else {
            c.ok += 1;
        }
    }
    let first = ops.iter().map(|o| o.start).min().unwrap_or(0);
    let last = ops.iter().map(|o| o.end).max().unwrap_or(0);
    let duration_s = secs(last.saturating_sub(first));
    if duration_s > 0.0 {
        operations.per_second = (operations.total as f64 / duration_s).round();
    }

    // Errors.
    let mut groups: BTreeMap<String, ErrorGroup> = BTreeMap::new();
    for op in &ops {
        let Some(e) = op.failed() else { continue };
        let g = groups.entry(e.kind.clone()).or_insert_with(|| ErrorGroup {
            kind: e.kind.clone(),
            count: 0,
            by_class: BTreeMap::new(),
            by_op: BTreeMap::new(),
            by_step: BTreeMap::new(),
            example: e.message.clone(),
        });
        g.count += 1;
        *g.by_class.entry(classify(op)).or_default() += 1;
        *g.by_op.entry(op.kind.as_str().to_string()).or_default() += 1;
        *g.by_step.entry(step_of(op.start)).or_default() += 1;
    }
    let mut errors: Vec<ErrorGroup> = groups.into_values().collect();
    errors.sort_by_key(|g| std::cmp::Reverse(g.count));

    // Latency.
    let mut lat: Vec<u64> = ops.iter().map(|o| o.latency()).collect();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        ms(lat[i.min(lat.len() - 1)])
    };
    let slowest = ops.iter().max_by_key(|o| o.latency());
    let mut latency = Latency {
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        max_ms: slowest.map_or(0.0, |o| ms(o.latency())),
        max_op: slowest.map_or_else(String::new, |o| {
            format!(
                "{} by client {} issued at {:.3}s (step {})",
                o.kind.as_str(),
                o.client,
                secs(o.start),
                step_of(o.start)
            )
        }),
        max_outside_failovers_ms: 0.0,
        max_by_kind_ms: BTreeMap::new(),
    };
    for op in &ops {
        let m = latency
            .max_by_kind_ms
            .entry(op.kind.as_str().to_string())
            .or_insert(0.0);
        *m = m.max(ms(op.latency()));
        let in_failover = windows
            .iter()
            .any(|w| op.end > w.fault && op.start <= w.end);
        if !in_failover {
            latency.max_outside_failovers_ms =
                latency.max_outside_failovers_ms.max(ms(op.latency()));
        }
    }

    // Writes and counters. With write_ack = master, a master frozen right after
    // acknowledging a write may not have sent it to any replica yet: asynchronous
    // replication loses it. Such losses are counted apart (write_ack = replicas(N) is the
    // issue's answer to them).
    let freezes: Vec<u64> = run
        .steps
        .iter()
        .filter_map(|s| s.failover.as_ref())
        .filter(|f| f.kind != FailoverKind::Graceful)
        .map(|f| f.started_at)
        .collect();
    let near_freeze = |t: u64| {
        freezes
            .iter()
            .any(|f| t + REPLICATION_LAG_WINDOW_US >= *f && t <= f + REPLICATION_LAG_WINDOW_US)
    };
    let mut lost_to_lag: std::collections::HashSet<(u32, u64)> = std::collections::HashSet::new();
    let set_ops: HashMap<(u32, u64), &Op> = ops
        .iter()
        .filter(|o| o.kind == OpKind::Set)
        .map(|o| ((o.client, o.seq), *o))
        .collect();
    let mut writes = Writes::default();
    let mut counters = Counters::default();
    if let Some(v) = &run.verification {
        writes.final_master = v.master.map(|m| m.to_string());
        writes.acknowledged = v.acked_sets;
        writes.lost = v.lost.len() as u64;
        writes.wrong_value = v.wrong_value.len() as u64;
        writes.failed = v.failed_sets;
        writes.failed_but_applied = v.failed_sets_applied;
        writes.lost_not_on_stale_master = v
            .lost
            .iter()
            .filter(|k| !stale_acked_keys.contains(k))
            .count() as u64;
        for key in &v.lost {
            let at = set_ops.get(key).map_or(0, |o| o.end);
            if near_freeze(at) {
                lost_to_lag.insert(*key);
            }
            *writes.lost_by_step.entry(step_of(at)).or_default() += 1;
            if writes.lost_examples.len() < EXAMPLES {
                writes.lost_examples.push(format!(
                    "{} acknowledged at {:.3}s ({})",
                    data_key(key.0, key.1),
                    secs(at),
                    step_of(at)
                ));
            }
        }
        writes.lost_to_replication_lag = lost_to_lag.len() as u64;
        counters.clients = v.counters.len() as u64;
        for c in &v.counters {
            let near = ops
                .iter()
                .filter(|o| {
                    o.client == c.client
                        && matches!(o.outcome, Outcome::Counted(_))
                        && near_freeze(o.end)
                })
                .count() as u64;
            counters.missing_beyond_replication_lag += c.missing().saturating_sub(near);
            counters.acknowledged += c.acked;
            counters.missing_increments += c.missing();
            counters.excess_increments += c.excess();
            counters.went_backwards += c.went_backwards;
        }
    }

    // Stale reads.
    let mut stale_reads = StaleReads::default();
    for op in ops.iter().filter(|o| o.kind == OpKind::Get) {
        match &op.outcome {
            Outcome::Fresh => stale_reads.reads += 1,
            Outcome::Stale(got) => {
                stale_reads.reads += 1;
                stale_reads.stale += 1;
                if lost_to_lag.contains(&(op.client, op.seq)) {
                    stale_reads.of_writes_lost_to_replication_lag += 1;
                }
                *stale_reads.by_class.entry(classify(op)).or_default() += 1;
                if stale_reads.examples.len() < EXAMPLES {
                    stale_reads.examples.push(format!(
                        "client {} read {} at {:.3}s and got {got:?}",
                        op.client,
                        data_key(op.client, op.seq),
                        secs(op.start)
                    ));
                }
            }
            _ => {}
        }
    }

    // Stale master.
    let mut stale_master = StaleMaster::default();
    for (f, step) in failovers
        .iter()
        .zip(run.steps.iter().filter(|s| s.failover.is_some()))
    {
        stale_master.acknowledged += f.stale_master_acked;
        stale_master.unacknowledged += f.stale_master_unacked;
        if let Some(rec) = &step.failover {
            for w in stale_writes(rec, run.unix_at_start_us) {
                if stale_master.examples.len() < EXAMPLES {
                    stale_master.examples.push(format!(
                        "{} {} executed by {} from {} at {:.3}s",
                        w.command,
                        w.key,
                        rec.old_master,
                        w.peer,
                        secs(w.at)
                    ));
                }
            }
        }
    }

    let mut report = Report {
        settings: run.settings,
        duration_s,
        schedule_completed: run.schedule_completed,
        problems: run.problems,
        steps: run
            .steps
            .iter()
            .map(|s| StepSummary {
                step: s.step.name().to_string(),
                start_s: secs(s.start),
                end_s: secs(s.end),
                detail: s.detail.clone(),
                problems: s.problems.clone(),
            })
            .collect(),
        operations,
        errors,
        failovers,
        latency,
        writes,
        counters,
        stale_reads,
        stale_master,
        invariants: Vec::new(),
    };
    if run.verification.is_none() {
        report
            .problems
            .push("the final read-back did not run: lost writes are unknown".into());
    }
    let in_flight_errors: Vec<&Op> = ops
        .iter()
        .copied()
        .filter(|o| o.failed().is_some() && classify(o) == ErrorClass::InFlightAtFault)
        .collect();
    report.invariants = invariants(&report, &in_flight_errors, run.verification.is_some());
    report
}

/// Writes the old master executed after the promotion, from a peer other than its new
/// master (µs on the run clock).
struct StaleWrite {
    at: u64,
    peer: String,
    command: String,
    key: String,
}

fn stale_writes(rec: &FailoverRecord, unix_at_start_us: u64) -> Vec<StaleWrite> {
    let Some(promoted) = rec.promoted_at else {
        return Vec::new();
    };
    let replication_peer = rec.new_master.map(|m| m.to_string());
    rec.monitored_writes
        .iter()
        .filter(|w| Some(&w.peer) != replication_peer.as_ref())
        .map(|w| StaleWrite {
            at: w.at_unix_us.saturating_sub(unix_at_start_us),
            peer: w.peer.clone(),
            command: w.command.clone(),
            key: w.key.clone(),
        })
        .filter(|w| w.at >= promoted)
        .collect()
}

fn summarize_failover(
    index: usize,
    step: &StepRecord,
    f: &FailoverRecord,
    ops: &[&Op],
    proxies: usize,
    stall: u64,
    unix_at_start_us: u64,
) -> (FailoverSummary, Vec<(u32, u64)>) {
    let fault = f.started_at;
    let detectable_at = detectable_by_proxy(f, ops, proxies, stall);
    let detectable = |o: &Op| {
        detectable_at
            .get(usize::from(o.proxy))
            .copied()
            .unwrap_or(fault)
    };
    let new_name = f.new_master.map(|m| m.to_string());
    let mut proxy_table: Vec<Option<u64>> = vec![None; proxies];
    let mut table_changes = Vec::new();
    for c in f.table_trace.iter().filter(|c| c.at > fault) {
        if let Some(slot) = proxy_table.get_mut(c.proxy)
            && slot.is_none()
            && c.master.is_some()
            && c.master == new_name
        {
            *slot = Some(c.at);
        }
        table_changes.push(format!(
            "proxy {}: v{} {} at {:.1} ms",
            c.proxy,
            c.version,
            c.master.as_deref().unwrap_or("(no master)"),
            signed_ms(fault, c.at)
        ));
    }
    let since = |t: Option<u64>| t.map(|t| signed_ms(fault, t));
    // First acknowledged write issued at or after the fault, per proxy.
    let mut first_write: Vec<Option<u64>> = vec![None; proxies];
    for op in ops {
        if op.start >= fault
            && op.acknowledged_write()
            && op.end <= step.end
            && let Some(slot) = first_write.get_mut(usize::from(op.proxy))
        {
            *slot = Some(slot.map_or(op.end, |t: u64| t.min(op.end)));
        }
    }
    let any_first = first_write.iter().flatten().min().copied();
    let window_end = match f.kind {
        FailoverKind::Graceful => {
            if proxy_table.iter().all(Option::is_some) {
                proxy_table.iter().flatten().max().copied()
            } else {
                None
            }
        }
        _ => {
            if first_write.iter().all(Option::is_some) {
                first_write.iter().flatten().max().copied()
            } else {
                None
            }
        }
    };
    let end = window_end.unwrap_or(step.end);
    let in_flight: Vec<&&Op> = ops
        .iter()
        .filter(|o| in_flight_at(o, fault, detectable(o)))
        .collect();
    let during: Vec<&&Op> = ops
        .iter()
        .filter(|o| issued_during(o, fault, detectable(o), end))
        .collect();
    // Longest gap between acknowledged writes around the window.
    let around = (fault.saturating_sub(1_000_000), end + 1_000_000);
    let mut acks: Vec<u64> = ops
        .iter()
        .filter(|o| o.acknowledged_write() && o.end >= around.0 && o.end <= around.1)
        .map(|o| o.end)
        .collect();
    acks.sort_unstable();
    let gap = acks.windows(2).map(|w| w[1] - w[0]).max();

    // Stale master: monitored writes after the promotion, and keys issued after the fault
    // that the resumed old master held.
    let set_by_key: HashMap<(u32, u64), &Op> = ops
        .iter()
        .filter(|o| o.kind == OpKind::Set)
        .map(|o| ((o.client, o.seq), *o))
        .collect();
    let mut acked = 0;
    let mut unacked = 0;
    let mut acked_keys = Vec::new();
    let mut counted: std::collections::HashSet<String> = std::collections::HashSet::new();
    let stale = stale_writes(f, unix_at_start_us);
    let span = match (
        stale.iter().map(|w| w.at).min(),
        stale.iter().map(|w| w.at).max(),
    ) {
        (Some(a), Some(b)) => Some((signed_ms(fault, a), signed_ms(fault, b))),
        _ => None,
    };
    for w in stale {
        if !counted.insert(format!("{} {}", w.command, w.key)) {
            continue;
        }
        // A SET names its op; an INCR cannot be matched to one: counted unacknowledged.
        let key = parse_data_key(&w.key);
        let is_acked = key
            .and_then(|k| set_by_key.get(&k))
            .is_some_and(|o| o.acknowledged_write());
        if let (true, Some(k)) = (is_acked, key) {
            acked_keys.push(k);
        }
        if is_acked {
            acked += 1;
        } else {
            unacked += 1;
        }
    }
    let mut in_flight_applied = 0;
    // The old master was frozen from the fault until SIGCONT. A write it holds that was
    // issued once the stall was detectable reached it after the promotion (through a
    // proxy that should have held it). One in flight at the freeze may have run before
    // it (its reply merely late) or on resume: counted apart; if it was acknowledged and
    // the new master lacks it, the read-back counts it lost.
    for key in &f.keys_on_old_master {
        let Some(op) = set_by_key.get(key) else {
            continue;
        };
        if op.end <= fault || !counted.insert(format!("SET {}", data_key(key.0, key.1))) {
            continue;
        }
        if in_flight_at(op, fault, detectable(op)) {
            in_flight_applied += 1;
        } else if op.acknowledged_write() {
            // Its client was told OK by a master that had been replaced.
            acked += 1;
            acked_keys.push(*key);
        } else {
            unacked += 1;
        }
    }
    let stall_window_errors: Vec<String> = during
        .iter()
        .filter_map(|o| o.failed().map(|e| (o, e)))
        .take(EXAMPLES)
        .map(|(o, e)| {
            format!(
                "{} by client {} issued at +{:.1} ms, answered at +{:.1} ms: {}",
                o.kind.as_str(),
                o.client,
                signed_ms(fault, o.start),
                signed_ms(fault, o.end),
                e.message
            )
        })
        .collect();

    let failed_in_flight: Vec<u64> = in_flight
        .iter()
        .filter(|o| o.failed().is_some())
        .map(|o| o.end)
        .collect();
    let in_flight_errors_at_ms =
        match (failed_in_flight.iter().min(), failed_in_flight.iter().max()) {
            (Some(a), Some(b)) => Some((signed_ms(fault, *a), signed_ms(fault, *b))),
            _ => None,
        };
    let summary = FailoverSummary {
        step_index: index,
        in_flight_errors_at_ms,
        kind: f.kind,
        old_master: f.old_master.to_string(),
        new_master: f.new_master.map(|m| m.to_string()),
        at_s: secs(fault),
        sentinel_ms: since(f.promoted_at),
        sentinels_named_ms: since(f.sentinels_named_at),
        pivot_ms: match (f.kind, f.promoted_at, any_first) {
            (FailoverKind::Graceful, _, _) => None,
            (_, Some(p), Some(w)) => Some(signed_ms(p, w)),
            _ => None,
        },
        unavailable_ms: match f.kind {
            FailoverKind::Graceful => gap.map(ms),
            _ => since(any_first),
        },
        window_ms: since(window_end),
        proxy_first_write_ms: first_write.iter().map(|t| since(*t)).collect(),
        proxy_table_ms: proxy_table.iter().map(|t| since(*t)).collect(),
        table_changes,
        resumed_ms: since(f.resumed_at),
        control_plane_started_ms: since(f.control_plane_started_at),
        longest_write_gap_ms: gap.map(ms),
        control_plane_down_ms: match (f.control_plane_stopped_at, f.control_plane_started_at) {
            (Some(a), Some(b)) => Some(signed_ms(a, b)),
            _ => None,
        },
        // Before the control plane returned, and before the old master did (a write
        // acknowledged after SIGCONT may come from the old master).
        writes_resumed_before_control_plane: match (
            f.control_plane_stopped_at,
            f.control_plane_started_at,
        ) {
            (Some(_), Some(up)) => {
                let by = f.resumed_at.map_or(up, |r| r.min(up));
                Some(first_write.iter().all(|w| w.is_some_and(|w| w < by)))
            }
            _ => None,
        },
        demoted_ms: since(f.demoted_at),
        in_flight_at_fault: (
            in_flight.len() as u64,
            in_flight.iter().filter(|o| o.failed().is_some()).count() as u64,
        ),
        issued_during: (
            during.len() as u64,
            during.iter().filter(|o| o.failed().is_some()).count() as u64,
        ),
        max_held_ms: during.iter().map(|o| ms(o.latency())).fold(0.0, f64::max),
        stale_master_acked: acked,
        stale_master_unacked: unacked,
        stale_master_span_ms: span,
        errors_during: stall_window_errors,
        in_flight_applied_on_old_master: in_flight_applied,
    };
    (summary, acked_keys)
}

fn kind_label(kind: FailoverKind) -> &'static str {
    match kind {
        FailoverKind::Freeze => "freeze",
        FailoverKind::FreezeWithControlPlaneDown => "freeze, control plane down",
        FailoverKind::ResumeWithControlPlaneDown => {
            "freeze, control plane down, old master back first"
        }
        FailoverKind::Graceful => "SENTINEL FAILOVER",
    }
}

/// Issued before the stall was detectable and answered after the fault; a request the
/// proxy says it never sent (`TRYAGAIN`) was held, not in flight.
fn in_flight_at(op: &Op, fault: u64, detectable: u64) -> bool {
    op.start < detectable && op.end > fault && !op.failed().is_some_and(|e| e.not_applied)
}

/// Issued within `[detectable, end]`, or held (`TRYAGAIN`) after the fault.
fn issued_during(op: &Op, fault: u64, detectable: u64, end: u64) -> bool {
    let held = op.failed().is_some_and(|e| e.not_applied) && op.end > fault;
    !in_flight_at(op, fault, detectable) && op.start <= end && (op.start >= detectable || held)
}

/// Client-to-proxy-to-Redis latency allowed for when placing the stall boundary (µs): a
/// client's issue time precedes the proxy's send by that path, on a loaded machine.
pub const STALL_SLACK_US: u64 = 20_000;

/// Per proxy, the issue time before which a request may still have been sent to the
/// frozen master.
///
/// A proxy holds a request for the master once the oldest request on its master
/// connection has gone unanswered for `backend_stall`. That oldest request is the first
/// one the frozen master never answered: the earliest-issued request through the proxy
/// that was answered after the fault with an error that does not rule out it ran (`E`).
/// So requests issued before `max(F, E) + backend_stall` (plus [`STALL_SLACK_US`] for the
/// path from the client to Redis) may be in flight to the dead node (I4); later ones must
/// be held. Without such an error the boundary is `F + backend_stall + slack`. A planned
/// failover has no frozen node: the boundary is the fault itself.
fn detectable_by_proxy(f: &FailoverRecord, ops: &[&Op], proxies: usize, stall: u64) -> Vec<u64> {
    let fault = f.started_at;
    if f.kind == FailoverKind::Graceful {
        return vec![fault; proxies];
    }
    (0..proxies)
        .map(|p| {
            let first_stuck = ops
                .iter()
                .filter(|o| usize::from(o.proxy) == p && o.end > fault)
                .filter(|o| {
                    o.failed()
                        .is_some_and(|e| !e.not_applied && !e.connection_lost)
                })
                .map(|o| o.start)
                .min()
                .unwrap_or(fault);
            first_stuck.max(fault) + stall + STALL_SLACK_US
        })
        .collect()
}

/// `chaos:{client}:{seq}` back to `(client, seq)`.
fn parse_data_key(key: &str) -> Option<(u32, u64)> {
    let rest = key.strip_prefix(super::workload::KEY_PREFIX)?;
    let (c, s) = rest.split_once(':')?;
    Some((c.parse().ok()?, s.parse().ok()?))
}

fn invariants(report: &Report, in_flight_errors: &[&Op], verified: bool) -> Vec<Invariant> {
    let mut out = Vec::new();
    let mut add = |id: &str, statement: &str, holds: bool, detail: String| {
        out.push(Invariant {
            id: id.into(),
            statement: statement.into(),
            holds,
            detail,
        });
    };
    let w = &report.writes;
    add(
        "lost-writes",
        "zero acknowledged writes lost (every acknowledged SET is on the final master with its value)",
        verified && w.lost == 0 && w.wrong_value == 0,
        format!(
            "{} acknowledged, {} lost, {} with another value",
            w.acknowledged, w.lost, w.wrong_value
        ),
    );
    add(
        "lost-writes-beyond-replication-lag",
        "zero acknowledged writes lost other than those a freeze cut off from replication (write_ack = master allows those)",
        verified && w.lost == w.lost_to_replication_lag && w.wrong_value == 0,
        format!(
            "{} lost, {} of them acknowledged within {} ms of a freeze",
            w.lost,
            w.lost_to_replication_lag,
            REPLICATION_LAG_WINDOW_US / 1000
        ),
    );
    let c = &report.counters;
    add(
        "counters-beyond-replication-lag",
        "INCR counters miss no increment other than those a freeze cut off from replication, and have none in excess",
        verified && c.missing_beyond_replication_lag == 0 && c.excess_increments == 0,
        format!(
            "{} missing ({} beyond the INCRs acknowledged near a freeze), {} in excess",
            c.missing_increments, c.missing_beyond_replication_lag, c.excess_increments
        ),
    );
    add(
        "counters",
        "INCR counters end between acknowledged and acknowledged + ambiguous errors, and never go backwards",
        verified && c.missing_increments == 0 && c.excess_increments == 0 && c.went_backwards == 0,
        format!(
            "{} acknowledged INCRs over {} counters; {} missing, {} in excess, {} went backwards",
            c.acknowledged, c.clients, c.missing_increments, c.excess_increments, c.went_backwards
        ),
    );
    let sm = &report.stale_master;
    add(
        "stale-master",
        "zero writes to a stale master (executed by an old master after the promotion)",
        sm.acknowledged == 0 && sm.unacknowledged == 0,
        format!(
            "{} acknowledged and {} unacknowledged writes executed by an old master after the promotion",
            sm.acknowledged, sm.unacknowledged
        ),
    );
    let sr = &report.stale_reads;
    add(
        "stale-reads",
        "zero stale reads in read-your-writes mode",
        sr.stale == 0,
        format!("{} of {} reads stale", sr.stale, sr.reads),
    );
    add(
        "stale-reads-beyond-lost-writes",
        "zero stale reads other than reads of a write a freeze cut off from replication",
        sr.stale == sr.of_writes_lost_to_replication_lag,
        format!(
            "{} stale reads, {} of them of writes lost at a freeze",
            sr.stale, sr.of_writes_lost_to_replication_lag
        ),
    );
    let count_class = |class: ErrorClass| -> u64 {
        report
            .errors
            .iter()
            .map(|g| g.by_class.get(&class).copied().unwrap_or(0))
            .sum()
    };
    let during = count_class(ErrorClass::DuringFailover);
    let in_flight = count_class(ErrorClass::InFlightAtFault);
    let other = count_class(ErrorClass::Other);
    let restart = count_class(ErrorClass::ProxyRestart);
    add(
        "no-errors-during-failover",
        "zero errors for requests issued while a failover was in progress (held, then served)",
        during == 0,
        format!("{during} errors for requests issued during a failover"),
    );
    add(
        "errors-only-in-flight",
        "errors only for requests in flight at the fault (and connections a proxy restart closes)",
        during == 0 && other == 0,
        format!(
            "{in_flight} in flight at a fault, {during} issued during a failover, {restart} from a proxy restart, {other} other"
        ),
    );
    let unclear = in_flight_errors
        .iter()
        .filter(|o| {
            o.failed().is_some_and(|e| {
                !e.message.contains("may or may not have been applied")
                    && !e.message.starts_with("NOREPLICAS")
            })
        })
        .count();
    add(
        "in-flight-errors-are-clear",
        "every error for a request in flight at a fault says it may or may not have been applied (or, with write_ack replicas(N), that its replication is unconfirmed)",
        unclear == 0,
        format!(
            "{unclear} of {} in-flight errors say something else",
            in_flight_errors.len()
        ),
    );
    let budget = |id: &str, statement: &str, freezes: Vec<&FailoverSummary>| {
        let over_budget: Vec<String> = freezes
            .iter()
            .filter(|f| f.pivot_ms.is_none_or(|p| p > PIVOT_BUDGET_MS))
            .map(|f| {
                format!(
                    "{} at {:.1}s: {}",
                    kind_label(f.kind),
                    f.at_s,
                    f.pivot_ms
                        .map_or("writes never resumed".into(), |p| format!("{p:.1} ms"))
                )
            })
            .collect();
        Invariant {
            id: id.into(),
            statement: statement.into(),
            holds: !freezes.is_empty() && over_budget.is_empty(),
            detail: if over_budget.is_empty() {
                format!(
                    "Pivot's part: {}",
                    freezes
                        .iter()
                        .map(|f| f.pivot_ms.map_or("-".into(), |p| format!("{p:.1} ms")))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                format!("over budget: {}", over_budget.join("; "))
            },
        }
    };
    let i = budget(
        "pivot-resume-100ms",
        "after a freeze, writes resume within 100 ms of the promoted replica answering as master",
        report
            .failovers
            .iter()
            .filter(|f| f.kind == FailoverKind::Freeze)
            .collect(),
    );
    add(&i.id, &i.statement, i.holds, i.detail);
    let outage_freezes: Vec<&FailoverSummary> = report
        .failovers
        .iter()
        .filter(|f| f.kind != FailoverKind::Graceful && f.control_plane_down_ms.is_some())
        .collect();
    if !outage_freezes.is_empty() {
        let i = budget(
            "pivot-resume-100ms-control-plane-down",
            "the same during a control-plane outage (the proxies follow the Sentinels themselves)",
            outage_freezes,
        );
        add(&i.id, &i.statement, i.holds, i.detail);
    }
    let outages: Vec<&FailoverSummary> = report
        .failovers
        .iter()
        .filter(|f| f.control_plane_down_ms.is_some())
        .collect();
    if !outages.is_empty() {
        let followed = outages
            .iter()
            .filter(|f| f.writes_resumed_before_control_plane == Some(true))
            .count();
        add(
            "follows-sentinels-without-control-plane",
            "a failover during a control-plane outage is followed before the control plane returns (I6)",
            followed == outages.len(),
            format!(
                "{followed} of {} outages: writes resumed before the control plane came back",
                outages.len()
            ),
        );
    }
    let graceful: Vec<&FailoverSummary> = report
        .failovers
        .iter()
        .filter(|f| f.kind == FailoverKind::Graceful)
        .collect();
    if !graceful.is_empty() {
        let clean = graceful
            .iter()
            .filter(|f| f.stale_master_acked == 0 && f.stale_master_unacked == 0)
            .count();
        add(
            "graceful-failover-no-stale-writes",
            "a planned failover sends no write to the old master after the promotion",
            clean == graceful.len(),
            format!("{clean} of {} planned failovers clean", graceful.len()),
        );
    }
    out
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        writeln!(f, "== Pivot chaos report ==")?;
        writeln!(
            f,
            "{} clients + a prober every {} ms per proxy, over {} proxies, schedule {}, {} ms per step, rate {}, Sentinel down-after {} ms, failover-timeout {} ms",
            s.clients,
            s.probe_interval_ms,
            s.proxies,
            s.schedule,
            s.step_duration_ms,
            s.rate
                .map_or("unthrottled".into(), |r| format!("{r} ops/s")),
            s.down_after_ms,
            s.failover_timeout_ms
        )?;
        writeln!(
            f,
            "consistency {}, read policy {}, write ack {}; run {:.1} s; schedule {}",
            s.consistency,
            s.read_policy,
            s.write_ack,
            self.duration_s,
            if self.schedule_completed {
                "completed"
            } else {
                "STOPPED EARLY"
            }
        )?;
        for p in &self.problems {
            writeln!(f, "  problem: {p}")?;
        }

        writeln!(f, "\n-- steps")?;
        for st in &self.steps {
            writeln!(
                f,
                "  {:>7.3}s-{:>7.3}s {:<22} {}",
                st.start_s, st.end_s, st.step, st.detail
            )?;
            for p in &st.problems {
                writeln!(f, "      problem: {p}")?;
            }
        }

        let o = &self.operations;
        writeln!(f, "\n-- operations")?;
        writeln!(
            f,
            "  {} operations ({:.0}/s), {} reconnects{}",
            o.total,
            o.per_second,
            o.reconnects,
            if o.clients_gave_up.is_empty() {
                String::new()
            } else {
                format!(", {} clients gave up", o.clients_gave_up.len())
            }
        )?;
        for (kind, c) in &o.by_kind {
            writeln!(
                f,
                "  {kind:<5} issued {:>8}  ok {:>8}  failed {:>5}",
                c.issued, c.ok, c.failed
            )?;
        }

        writeln!(f, "\n-- errors by kind")?;
        if self.errors.is_empty() {
            writeln!(f, "  none")?;
        }
        for g in &self.errors {
            writeln!(f, "  {:>6}  {}", g.count, g.kind)?;
            let classes: Vec<String> = g
                .by_class
                .iter()
                .map(|(c, n)| format!("{}: {n}", c.label()))
                .collect();
            let steps: Vec<String> = g.by_step.iter().map(|(s, n)| format!("{s}: {n}")).collect();
            let by_op: Vec<String> = g.by_op.iter().map(|(s, n)| format!("{s}: {n}")).collect();
            writeln!(
                f,
                "          [{}] [{}] [{}]",
                classes.join(", "),
                by_op.join(", "),
                steps.join(", ")
            )?;
        }

        writeln!(f, "\n-- failovers (ms from the fault)")?;
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        for fo in &self.failovers {
            writeln!(
                f,
                "  #{} {} at {:.3}s: {} -> {}",
                fo.step_index,
                kind_label(fo.kind),
                fo.at_s,
                fo.old_master,
                fo.new_master.as_deref().unwrap_or("?")
            )?;
            match fo.kind {
                FailoverKind::Graceful => writeln!(
                    f,
                    "      promoted (ROLE master) {} | Sentinels named it {} | longest write gap {}",
                    opt(fo.sentinel_ms),
                    opt(fo.sentinels_named_ms),
                    opt(fo.longest_write_gap_ms)
                )?,
                _ => writeln!(
                    f,
                    "      write unavailability {} = Sentinel {} (promoted answers ROLE master) + Pivot {} (to the first acknowledged write); Sentinels named it at {}",
                    opt(fo.unavailable_ms),
                    opt(fo.sentinel_ms),
                    opt(fo.pivot_ms),
                    opt(fo.sentinels_named_ms)
                )?,
            }
            writeln!(
                f,
                "      per proxy: routing table switched {} | first write {} | window (all proxies) {}",
                fo.proxy_table_ms
                    .iter()
                    .map(|v| opt(*v))
                    .collect::<Vec<_>>()
                    .join("/"),
                fo.proxy_first_write_ms
                    .iter()
                    .map(|v| opt(*v))
                    .collect::<Vec<_>>()
                    .join("/"),
                opt(fo.window_ms)
            )?;
            if let Some(down) = fo.control_plane_down_ms {
                writeln!(
                    f,
                    "      control plane down {down:.1} ms (back at {}); writes resumed before it returned: {}",
                    opt(fo.control_plane_started_ms),
                    fo.writes_resumed_before_control_plane
                        .map_or("-", |b| if b { "yes" } else { "no" })
                )?;
            }
            if !fo.table_changes.is_empty() {
                writeln!(f, "      routing tables: {}", fo.table_changes.join("; "))?;
            }
            writeln!(
                f,
                "      in flight at the fault {} ({} failed{}); issued during the window {} ({} failed, longest {:.1} ms); old master demoted at {}",
                fo.in_flight_at_fault.0,
                fo.in_flight_at_fault.1,
                fo.in_flight_errors_at_ms
                    .map_or(String::new(), |(a, b)| format!(
                        ", errors answered {a:.1}-{b:.1}"
                    )),
                fo.issued_during.0,
                fo.issued_during.1,
                fo.max_held_ms,
                opt(fo.demoted_ms)
            )?;
            for e in &fo.errors_during {
                writeln!(f, "      error issued during the window: {e}")?;
            }
            writeln!(
                f,
                "      old master resumed (SIGCONT) at {}; writes it executed after the promotion: {} acknowledged, {} unacknowledged{}; in-flight SETs it applied on resume: {}",
                opt(fo.resumed_ms),
                fo.stale_master_acked,
                fo.stale_master_unacked,
                fo.stale_master_span_ms
                    .map_or(String::new(), |(a, b)| format!(" (from {a:.1} to {b:.1})")),
                fo.in_flight_applied_on_old_master
            )?;
        }

        let l = &self.latency;
        writeln!(f, "\n-- latency (ms)")?;
        writeln!(
            f,
            "  p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1} ({})",
            l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.max_op
        )?;
        writeln!(
            f,
            "  max outside failovers {:.1}",
            l.max_outside_failovers_ms
        )?;

        let w = &self.writes;
        writeln!(
            f,
            "\n-- data on the final master {}",
            w.final_master.as_deref().unwrap_or("?")
        )?;
        writeln!(
            f,
            "  SET: {} acknowledged, {} LOST, {} wrong value; {} failed, of which {} ran anyway",
            w.acknowledged, w.lost, w.wrong_value, w.failed, w.failed_but_applied
        )?;
        if w.lost > 0 {
            writeln!(
                f,
                "      of which acknowledged within {} ms of a freeze (cut off from replication): {}",
                REPLICATION_LAG_WINDOW_US / 1000,
                w.lost_to_replication_lag
            )?;
            let by_step: Vec<String> = w
                .lost_by_step
                .iter()
                .map(|(s, n)| format!("{s}: {n}"))
                .collect();
            writeln!(
                f,
                "      lost by step: {}; not accounted for by a stale master: {}",
                by_step.join(", "),
                w.lost_not_on_stale_master
            )?;
        }
        for e in &w.lost_examples {
            writeln!(f, "      lost: {e}")?;
        }
        let c = &self.counters;
        writeln!(
            f,
            "  INCR: {} acknowledged over {} counters; {} missing ({} beyond those acknowledged near a freeze), {} in excess, {} went backwards",
            c.acknowledged,
            c.clients,
            c.missing_increments,
            c.missing_beyond_replication_lag,
            c.excess_increments,
            c.went_backwards
        )?;
        let sr = &self.stale_reads;
        writeln!(
            f,
            "  stale reads (read-your-writes): {} of {} ({} of writes lost at a freeze)",
            sr.stale, sr.reads, sr.of_writes_lost_to_replication_lag
        )?;
        for e in &sr.examples {
            writeln!(f, "      {e}")?;
        }
        let sm = &self.stale_master;
        writeln!(
            f,
            "  writes to a stale master: {} acknowledged, {} unacknowledged",
            sm.acknowledged, sm.unacknowledged
        )?;
        for e in &sm.examples {
            writeln!(f, "      {e}")?;
        }

        writeln!(f, "\n-- invariants")?;
        for i in &self.invariants {
            writeln!(
                f,
                "  [{}] {}: {}\n         {}",
                if i.holds { " ok " } else { "FAIL" },
                i.id,
                i.statement,
                i.detail
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::chaos::workload::OpError;

    fn op(client: u32, kind: OpKind, seq: u64, start: u64, end: u64, outcome: Outcome) -> Op {
        Op {
            client,
            proxy: (client % 2) as u8,
            kind,
            seq,
            start,
            end,
            outcome,
        }
    }

    fn err(message: &str) -> Outcome {
        Outcome::Failed(OpError {
            kind: message.into(),
            message: message.into(),
            not_applied: false,
            connection_lost: false,
        })
    }

    fn tryagain() -> Outcome {
        Outcome::Failed(OpError {
            kind: "TRYAGAIN no master".into(),
            message: "TRYAGAIN no master".into(),
            not_applied: true,
            connection_lost: false,
        })
    }

    fn settings() -> Settings {
        Settings {
            clients: 2,
            probe_interval_ms: 20,
            proxies: 2,
            schedule: "short".into(),
            step_duration_ms: 1000,
            rate: None,
            op_timeout_ms: 15000,
            down_after_ms: 1000,
            failover_timeout_ms: 3000,
            consistency: "read-your-writes".into(),
            read_policy: "replicas".into(),
            write_ack: "Master".into(),
            backend_stall_ms: 250,
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A freeze at 1 s, promotion at 3 s, a write through each proxy resumes at 3.05 s
    /// and 3.08 s.
    fn freeze_run() -> (Vec<ClientLog>, Vec<StepRecord>) {
        let ms = |m: u64| m * 1000;
        let logs = vec![
            ClientLog {
                ops: vec![
                    op(0, OpKind::Set, 1, ms(900), ms(950), Outcome::Written),
                    // In flight at the freeze, failed with the I4 error.
                    op(
                        0,
                        OpKind::Set,
                        2,
                        ms(990),
                        ms(1250),
                        err("ERR ... may or may not have been applied"),
                    ),
                    // Issued during the failover, held, served.
                    op(0, OpKind::Set, 3, ms(1280), ms(3050), Outcome::Written),
                    op(0, OpKind::Get, 3, ms(3060), ms(3070), Outcome::Fresh),
                ],
                ..ClientLog::default()
            },
            ClientLog {
                ops: vec![
                    op(
                        1,
                        OpKind::Incr,
                        1,
                        ms(990),
                        ms(1250),
                        err("ERR ... may or may not have been applied"),
                    ),
                    // Held and failed: issued inside the stall band, but TRYAGAIN says it
                    // was never sent, so it was issued during the failover (a violation).
                    op(1, OpKind::Set, 2, ms(1260), ms(1400), tryagain()),
                    op(1, OpKind::Set, 3, ms(1500), ms(3080), Outcome::Written),
                    op(1, OpKind::Get, 3, ms(3100), ms(3110), Outcome::Stale(None)),
                ],
                ..ClientLog::default()
            },
        ];
        let steps = vec![StepRecord {
            step: Step::MasterFreeze,
            start: ms(999),
            end: ms(5000),
            detail: String::new(),
            failover: Some(FailoverRecord {
                kind: FailoverKind::Freeze,
                old_master: addr(7000),
                new_master: Some(addr(7001)),
                started_at: ms(1000),
                promoted_at: Some(ms(3000)),
                sentinels_named_at: Some(ms(3900)),
                table_trace: vec![
                    TableChange {
                        at: ms(500),
                        proxy: 0,
                        version: 1,
                        master: Some("127.0.0.1:7000".into()),
                    },
                    TableChange {
                        at: ms(3040),
                        proxy: 0,
                        version: 2,
                        master: Some("127.0.0.1:7001".into()),
                    },
                    TableChange {
                        at: ms(3070),
                        proxy: 1,
                        version: 2,
                        master: Some("127.0.0.1:7001".into()),
                    },
                ],
                control_plane_stopped_at: None,
                control_plane_started_at: None,
                resumed_at: Some(ms(3200)),
                demoted_at: Some(ms(4900)),
                seq_at_start: vec![2, 1],
                keys_on_old_master: vec![(0, 2)],
                monitored_writes: Vec::new(),
            }),
            problems: Vec::new(),
        }];
        (logs, steps)
    }

    #[test]
    fn failover_windows_split_and_classify() {
        let (logs, steps) = freeze_run();
        let report = build(RunRecord {
            settings: settings(),
            logs: &logs,
            steps: &steps,
            schedule_completed: true,
            problems: Vec::new(),
            verification: None,
            unix_at_start_us: 0,
            proxies: 2,
        });
        let f = &report.failovers[0];
        assert_eq!(f.sentinel_ms, Some(2000.0));
        assert_eq!(f.unavailable_ms, Some(2050.0));
        assert_eq!(f.pivot_ms, Some(50.0));
        assert_eq!(f.window_ms, Some(2080.0));
        assert_eq!(f.proxy_first_write_ms, vec![Some(2050.0), Some(2080.0)]);
        assert_eq!(f.in_flight_at_fault, (2, 2));
        assert_eq!(f.issued_during, (4, 1));
        // Key 0:2 was in flight at the freeze: applied on resume, not a stale-master write.
        assert_eq!(f.in_flight_applied_on_old_master, 1);
        assert_eq!((f.stale_master_acked, f.stale_master_unacked), (0, 0));

        let tryagain = report
            .errors
            .iter()
            .find(|g| g.kind.starts_with("TRYAGAIN"))
            .expect("group");
        assert_eq!(tryagain.by_class.get(&ErrorClass::DuringFailover), Some(&1));
        let inflight = report
            .errors
            .iter()
            .find(|g| g.kind.starts_with("ERR"))
            .expect("group");
        assert_eq!(
            inflight.by_class.get(&ErrorClass::InFlightAtFault),
            Some(&2)
        );

        assert_eq!(report.stale_reads.stale, 1);
        let holds = |id: &str| report.invariant(id).expect(id).holds;
        assert!(!holds("no-errors-during-failover"));
        assert!(!holds("stale-reads"));
        assert!(holds("in-flight-errors-are-clear"));
        assert!(holds("pivot-resume-100ms"));
        assert!(holds("stale-master"));
        // Without the read-back, lost writes are unknown: not claimed.
        assert!(!holds("lost-writes"));
        assert!(report.to_string().contains("write unavailability 2050.0"));
    }

    #[test]
    fn writes_seen_on_the_old_master_after_the_promotion_count() {
        let (logs, mut steps) = freeze_run();
        if let Some(f) = steps[0].failover.as_mut() {
            // Key 1:3 was acknowledged at 3.08 s and the old master executed it at 3.3 s
            // (from a proxy); another from the replication link is ignored.
            f.monitored_writes = vec![
                MonitoredWrite {
                    at_unix_us: 3_300_000,
                    peer: "127.0.0.1:50000".into(),
                    command: "SET".into(),
                    key: "chaos:1:3".into(),
                },
                MonitoredWrite {
                    at_unix_us: 3_400_000,
                    peer: "127.0.0.1:7001".into(),
                    command: "SET".into(),
                    key: "chaos:0:3".into(),
                },
            ];
            // Key 1:2 was issued after the freeze (and failed), yet the old master has it.
            f.keys_on_old_master.push((1, 2));
        }
        let report = build(RunRecord {
            settings: settings(),
            logs: &logs,
            steps: &steps,
            schedule_completed: true,
            problems: Vec::new(),
            verification: None,
            unix_at_start_us: 0,
            proxies: 2,
        });
        assert_eq!(report.stale_master.acknowledged, 1);
        assert_eq!(report.stale_master.unacknowledged, 1);
        assert!(!report.invariant("stale-master").expect("checked").holds);
    }

    use super::super::stale::MonitoredWrite;

    #[test]
    fn the_stall_boundary_follows_the_first_request_the_frozen_master_never_answered() {
        let (_, steps) = freeze_run();
        let ms = |m: u64| m * 1000;
        // Light load: nothing in flight at the freeze (1 s); the first request stuck on
        // the frozen master was issued at 1.010 s, so the proxy saw the stall at 1.260 s.
        let stuck = || err("ERR ... may or may not have been applied");
        let logs = vec![ClientLog {
            ops: vec![
                op(0, OpKind::Set, 1, ms(900), ms(901), Outcome::Written),
                op(0, OpKind::Set, 2, ms(1010), ms(3000), stuck()),
                // Issued after F + stall but before the proxy could see the stall.
                op(0, OpKind::Set, 3, ms(1255), ms(3000), stuck()),
                // Issued once the stall was visible: should have been held.
                op(0, OpKind::Set, 4, ms(1400), ms(3000), stuck()),
                op(0, OpKind::Set, 5, ms(1500), ms(3050), Outcome::Written),
            ],
            ..ClientLog::default()
        }];
        let report = build(RunRecord {
            settings: settings(),
            logs: &logs,
            steps: &steps,
            schedule_completed: true,
            problems: Vec::new(),
            verification: None,
            unix_at_start_us: 0,
            proxies: 2,
        });
        let g = &report.errors[0];
        assert_eq!(g.by_class.get(&ErrorClass::InFlightAtFault), Some(&2));
        assert_eq!(g.by_class.get(&ErrorClass::DuringFailover), Some(&1));
    }

    #[test]
    fn in_flight_writes_are_not_stale_but_later_ones_are() {
        let (mut logs, mut steps) = freeze_run();
        logs.push(ClientLog {
            ops: vec![
                // In flight at the freeze: ran before it, reply delivered just after.
                op(5, OpKind::Set, 1, 990_000, 1_100_000, Outcome::Written),
                // Issued once the stall was visible (1.27 s), answered after SIGCONT
                // (3.2 s): the resumed old master ran it.
                op(5, OpKind::Set, 2, 1_300_000, 3_300_000, Outcome::Written),
            ],
            ..ClientLog::default()
        });
        if let Some(f) = steps[0].failover.as_mut() {
            f.keys_on_old_master = vec![(5, 1), (5, 2)];
        }
        let report = build(RunRecord {
            settings: settings(),
            logs: &logs,
            steps: &steps,
            schedule_completed: true,
            problems: Vec::new(),
            verification: None,
            unix_at_start_us: 0,
            proxies: 2,
        });
        assert_eq!(report.stale_master.acknowledged, 1);
        assert_eq!(report.stale_master.unacknowledged, 0);
        assert_eq!(report.failovers[0].in_flight_applied_on_old_master, 1);
    }

    #[test]
    fn losses_at_the_freeze_are_told_apart_from_later_ones() {
        let (mut logs, steps) = freeze_run();
        logs.push(ClientLog {
            ops: vec![
                // Acknowledged 5 ms before the freeze at 1 s: a replica may not have it.
                op(7, OpKind::Set, 1, 990_000, 995_000, Outcome::Written),
                op(
                    7,
                    OpKind::Get,
                    1,
                    3_100_000,
                    3_101_000,
                    Outcome::Stale(None),
                ),
                // Acknowledged well after the failover: its loss is Pivot's.
                op(7, OpKind::Set, 2, 4_000_000, 4_001_000, Outcome::Written),
            ],
            ..ClientLog::default()
        });
        let verification = Verification {
            master: Some(addr(7001)),
            acked_sets: 3,
            lost: vec![(7, 1), (7, 2)],
            ..Verification::default()
        };
        let report = build(RunRecord {
            settings: settings(),
            logs: &logs,
            steps: &steps,
            schedule_completed: true,
            problems: Vec::new(),
            verification: Some(verification),
            unix_at_start_us: 0,
            proxies: 2,
        });
        assert_eq!(report.writes.lost, 2);
        assert_eq!(report.writes.lost_to_replication_lag, 1);
        assert_eq!(report.stale_reads.of_writes_lost_to_replication_lag, 1);
        let holds = |id: &str| report.invariant(id).expect(id).holds;
        assert!(!holds("lost-writes"));
        assert!(!holds("lost-writes-beyond-replication-lag"));
    }

    #[test]
    fn data_keys_parse_back() {
        assert_eq!(parse_data_key("chaos:3:17"), Some((3, 17)));
        assert_eq!(parse_data_key("chaos:ctr:3"), None);
        assert_eq!(parse_data_key("other:1:2"), None);
    }
}
