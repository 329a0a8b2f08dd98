//! `pivot-bench`: Pivot's proxy against direct Redis and its peers (issue 7). Prints a
//! markdown table; `--update-docs` writes it into docs/performance.md, `--chart` draws it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use pivot_bench::options::{TARGETS, TESTS};
use pivot_bench::report::Report;
use pivot_bench::run::Plan;
use pivot_bench::targets::PROXY_BIN_ENV;
use pivot_bench::{BenchOptions, DOCS_BEGIN, DOCS_END, TargetKind, Test, chart};
use pivot_sandbox::TopologyOptions;
use pivot_sandbox::fleet;
use tracing_subscriber::EnvFilter;

/// Starts Redis (a master and two replicas) and three Sentinels on 127.0.0.1, the real
/// `pivot-control-plane` and `pivot-proxy` binaries as child processes, and the peers found
/// installed (`haproxy` in TCP mode, twemproxy's `nutcracker`), each on one thread in front
/// of the master. Then runs `redis-benchmark` (SET and GET, `-P 1` and `-P 16`) against
/// direct Redis, Pivot with reads to the master, Pivot with reads to the replicas (GET
/// only) and each peer, interleaved over several rounds, sampling the proxy's CPU, context
/// switches and memory (/proc) and Redis's CPU and reads (INFO) around every run. Last, it
/// opens many idle connections to each target and measures the memory each costs.
/// Results: docs/performance.md.
///
/// It runs the `pivot-proxy` and `pivot-control-plane` next to its own executable: build
/// them with the same profile first (`cargo build --profile dist -p pivot-proxy -p
/// pivot-control-plane -p pivot-bench`; `dist` is release with LTO, as shipped).
#[derive(Debug, Parser)]
#[command(name = "pivot-bench", version, about, long_about)]
struct Args {
    /// Interleaved rounds (each runs every target once per test, in a rotating order).
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Requests per redis-benchmark run (-n).
    #[arg(long, default_value_t = 200_000)]
    requests: u64,
    /// redis-benchmark client connections (-c).
    #[arg(long, default_value_t = 50)]
    clients: u32,
    /// SET value size in bytes (-d).
    #[arg(long, default_value_t = 64)]
    data_size: u32,
    /// Targets to measure, comma-separated: pivot, pivot-replicas, haproxy, nutcracker
    /// (direct Redis is always measured: every ratio is to it). Peers that are not
    /// installed are skipped with a note.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,pivot,pivot-replicas,haproxy,nutcracker"
    )]
    targets: Vec<TargetKind>,
    /// Tests to run, comma-separated: set-p1, get-p1, set-p16, get-p16.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "set-p1,get-p1,set-p16,get-p16"
    )]
    tests: Vec<Test>,
    /// The pivot-proxy binary (default: $PIVOT_PROXY_BIN, else next to this executable).
    #[arg(long, value_name = "PATH")]
    proxy_bin: Option<PathBuf>,
    /// The pivot-control-plane binary (default: $PIVOT_CONTROL_PLANE_BIN, else next to
    /// this executable).
    #[arg(long, value_name = "PATH")]
    control_plane_bin: Option<PathBuf>,
    /// redis-benchmark.
    #[arg(long, value_name = "PATH", default_value = "redis-benchmark")]
    redis_benchmark_bin: PathBuf,
    /// The proxy's --workers (1: one thread, like the peers).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Idle client connections opened to each target to measure memory per connection
    /// (0: skip).
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Skip the unrecorded warm-up pass (every target and test once with a tenth of the
    /// requests).
    #[arg(long)]
    no_warmup: bool,
    /// Bound on every wait and on each redis-benchmark run.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Replace the generated block of this file (docs/performance.md) with the results.
    #[arg(long, value_name = "PATH")]
    update_docs: Option<PathBuf>,
    /// Draw the results as a PNG here (docs/img/proxy-bench.png).
    #[arg(long, value_name = "PATH")]
    chart: Option<PathBuf>,
    /// The TrueType font of the chart's text.
    #[arg(long, value_name = "PATH", default_value = chart::DEFAULT_FONT)]
    font: PathBuf,
    /// Also write every raw sample as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Exit with status 2 when a target of the issue is not met.
    #[arg(long)]
    strict: bool,
    /// Run nothing: read the samples a run wrote with --json and report them again
    /// (tables, --update-docs, --chart, --strict), as that run's command line.
    #[arg(long, value_name = "PATH", conflicts_with = "json")]
    from_json: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Quiet by default: the table is the output. RUST_LOG=info shows each run.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // The program's name without its directory: the report shows how it was run, not where
    // this machine keeps its build.
    let command_line = std::iter::once("pivot-bench".to_string())
        .chain(std::env::args().skip(1))
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    let args = Args::parse();
    // One thread: redis-benchmark, Redis and the proxy get the rest of the machine.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pivot-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = run(args, command_line) => r,
            // Dropping `run` kills every process it started (each is owned and killed on drop).
            () = pivot_sandbox::process::interrupted() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pivot-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, command_line: String) -> Result<ExitCode> {
    if let Some(path) = &args.from_json {
        let json = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let report: Report = serde_json::from_slice(&json)
            .with_context(|| format!("{} is not the JSON of a pivot-bench run", path.display()))?;
        if args.chart.is_some() {
            chart::load_font(&args.font)?;
        }
        return report_results(&args, &report);
    }
    measure(args, command_line).await
}

async fn measure(args: Args, command_line: String) -> Result<ExitCode> {
    let proxy_bin = fleet::find_sibling_binary(
        "pivot-proxy",
        args.proxy_bin.as_deref(),
        "--proxy-bin",
        PROXY_BIN_ENV,
        "pivot-proxy",
    )?;
    let control_plane_bin = fleet::find_binary(args.control_plane_bin.as_deref())?;
    if args.chart.is_some() {
        // Before the run, so that a missing font costs nothing.
        chart::load_font(&args.font)?;
    }
    let mut targets = args.targets.clone();
    if !targets.contains(&TargetKind::Direct) {
        targets.push(TargetKind::Direct);
    }
    let options = BenchOptions {
        rounds: args.rounds,
        requests: args.requests,
        clients: args.clients,
        data_size: args.data_size,
        targets,
        tests: args.tests.clone(),
        proxy_bin,
        control_plane_bin,
        redis_benchmark_bin: args.redis_benchmark_bin.clone(),
        workers: args.workers,
        idle_connections: args.idle_connections,
        warmup: !args.no_warmup,
        timeout: args.timeout,
        topology: TopologyOptions::default(),
        command_line,
    };
    options.validate()?;
    let plan = Plan::new(&options);
    for s in &plan.skipped {
        eprintln!("pivot-bench: skipping {}: {}", s.target.id(), s.reason);
    }
    let measured: Vec<&str> = TARGETS
        .iter()
        .filter(|t| {
            options.targets.contains(t) && (!t.is_peer() || plan.peers.iter().any(|(k, _)| k == *t))
        })
        .map(|t| t.id())
        .collect();
    let tests: Vec<String> = TESTS
        .iter()
        .filter(|t| options.tests.contains(t))
        .map(ToString::to_string)
        .collect();
    eprintln!(
        "pivot-bench: {} rounds of {} against {} ({} requests each), then {} idle connections per target...",
        options.rounds,
        tests.join(", "),
        measured.join(", "),
        options.requests,
        options.idle_connections
    );
    let report = pivot_bench::run(options, plan).await?;
    if let Some(path) = &args.json {
        // First, so that the samples survive a failure below.
        let json = serde_json::to_string_pretty(&report).context("encoding the results")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("pivot-bench: JSON written to {}", path.display());
    }
    report_results(&args, &report)
}

/// Prints the tables, updates the docs and the chart, judges the targets.
#[allow(clippy::print_stdout)]
fn report_results(args: &Args, report: &Report) -> Result<ExitCode> {
    let table = report.to_string();
    println!("{table}");
    if let Some(path) = &args.update_docs {
        fleet::update_docs_block(path, DOCS_BEGIN, DOCS_END, &table)?;
        eprintln!("pivot-bench: results written to {}", path.display());
    }
    if let Some(path) = &args.chart {
        chart::write(report, path)?;
        eprintln!("pivot-bench: chart written to {}", path.display());
    }
    Ok(if args.strict && !report.meets_targets() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
