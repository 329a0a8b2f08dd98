//! `pivot-chaos`: runs the chaos harness (a mixed workload through two Pivot proxies while
//! a schedule of faults hits the stack) and prints the report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use pivot_control_plane::WriteAck;
use pivot_sandbox::TopologyOptions;
use pivot_sandbox::chaos::{self, ChaosOptions, Schedule};
use tracing_subscriber::EnvFilter;

/// Starts Redis (a master and two replicas), three Sentinels, the Pivot control plane and
/// two proxies on 127.0.0.1 (ephemeral ports), runs N clients through the proxies while
/// injecting faults, reads every acknowledged write back from the final master and prints
/// a report: errors by kind and cause, per-failover write unavailability (Sentinel's part
/// and Pivot's), latency, lost writes, writes to a stale master, stale reads, and the
/// failover invariants with a verdict each.
///
/// Schedules: `short` = one master freeze, then a control-plane outage with a failover
/// inside it. `full` = three master freezes (one with a Sentinel down), a replica killed
/// and restarted, a Sentinel killed and restarted, the control-plane outage, the same
/// outage with the old master resumed before the control plane returns, a planned
/// SENTINEL FAILOVER, and a proxy restart. Definitions and results: docs/failover.md.
/// Needs redis-server (and redis-sentinel or `redis-server --sentinel`) on PATH or in
/// $REDIS_SERVER_BIN.
#[derive(Debug, Parser)]
#[command(name = "pivot-chaos", version, about, long_about)]
struct Args {
    /// Client tasks, each with one connection; they alternate between the two proxies.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Which faults to inject: `short` or `full`.
    #[arg(long, default_value = "full")]
    schedule: Schedule,
    /// How long each steady step runs between faults (also how long a killed replica stays
    /// down, and the longest the control plane stays down after the Sentinels' failover).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration_per_step: Duration,
    /// Deadline of every wait inside a step (failover, resync, restart).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    step_timeout: Duration,
    /// Total operations per second over all clients (default: as fast as answers come).
    #[arg(long)]
    rate: Option<u32>,
    /// The clients' response timeout (keep it above the proxies' 10 s failover hold).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    op_timeout: Duration,
    /// Interval of each proxy's prober: a SET on one pipelined connection whatever the
    /// replies, so that requests are issued during every failover.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    probe_interval: Duration,
    /// Sentinel down-after-milliseconds.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    down_after: Duration,
    /// Sentinel failover-timeout.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    failover_timeout: Duration,
    /// Write acknowledgement of the service: `master` (the default) or `replicas(N)` (a
    /// write is acknowledged once N replicas have it).
    #[arg(long)]
    write_ack: Option<WriteAck>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Exit with status 2 when an invariant does not hold.
    #[arg(long)]
    strict: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    // Quiet by default: the report is the output. RUST_LOG=info shows every step.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pivot-chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
async fn run(args: Args) -> Result<ExitCode> {
    let options = ChaosOptions {
        clients: args.clients,
        schedule: args.schedule,
        step_duration: args.duration_per_step,
        step_timeout: args.step_timeout,
        rate: args.rate,
        op_timeout: args.op_timeout,
        probe_interval: args.probe_interval,
        write_ack: args.write_ack,
        topology: TopologyOptions {
            down_after: args.down_after,
            failover_timeout: args.failover_timeout,
            ..TopologyOptions::default()
        },
    };
    options.validate()?;
    eprintln!(
        "pivot-chaos: {} clients, {} schedule ({} steps); this takes a while...",
        options.clients,
        options.schedule.name(),
        options.schedule.steps().len()
    );
    let report = chaos::run(options).await?;
    println!("{report}");
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("pivot-chaos: JSON report written to {}", path.display());
    }
    let failed = report.invariants.iter().any(|i| !i.holds);
    Ok(if args.strict && failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
