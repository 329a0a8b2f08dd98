//! `pivot-fleet-bench`: the control plane at fleet scale (issue 6). Prints a markdown
//! table; `--update-docs` also writes it into docs/performance.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use pivot_sandbox::fleet::{self, FleetBenchOptions};
use tracing_subscriber::EnvFilter;

/// Starts Redis (a master and two replicas) and three Sentinels on 127.0.0.1, the real
/// `pivot-control-plane` binary as a child process, and N simulated proxies, each with its
/// own gRPC connection and config stream (Hello with a proxy token, a status report every
/// 2 s, an ACK per update, reconnecting with the real proxy's backoff). Then times a
/// command-rule change through the REST API until every stream has ACKed it and until
/// `GET /api/v1/proxies` shows it (several rounds), samples the control plane's memory and
/// CPU, and times every stream's return after a control-plane restart (SIGTERM, then a
/// start on the same ports and data directory). The simulated fleet runs on one thread,
/// so that the control plane has the rest of the machine. Results: docs/performance.md.
///
/// It runs the `pivot-control-plane` next to its own executable: build it with the same
/// profile first (`cargo build --release -p pivot-control-plane`).
#[derive(Debug, Parser)]
#[command(name = "pivot-fleet-bench", version, about, long_about)]
struct Args {
    /// Simulated proxy streams.
    #[arg(long, default_value_t = 2000)]
    proxies: usize,
    /// Streams being opened at a time at the start.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Rule changes to time (0: only memory and the restart).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Pause after each change.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pause: Duration,
    /// How often each simulated proxy reports its status (the proxy's --status-interval).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    status_interval: Duration,
    /// Skip the control-plane restart.
    #[arg(long)]
    no_restart: bool,
    /// Bound on every wait.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The control plane binary (default: $PIVOT_CONTROL_PLANE_BIN, else next to this
    /// executable).
    #[arg(long, value_name = "PATH")]
    control_plane_bin: Option<PathBuf>,
    /// The control plane's RUST_LOG.
    #[arg(long, default_value = "info")]
    control_plane_log: String,
    /// Keep the control plane's log (JSON lines) in this file (appended to).
    #[arg(long, value_name = "PATH")]
    control_plane_log_file: Option<PathBuf>,
    /// Replace the generated block of this file (docs/performance.md) with the results.
    #[arg(long, value_name = "PATH")]
    update_docs: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Exit with status 2 when a change took 1 s or more to reach every ACK.
    #[arg(long)]
    strict: bool,
}

fn main() -> ExitCode {
    // Quiet by default: the table is the output. RUST_LOG=info shows each step.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // One thread for the whole simulated fleet: the control plane gets the other core.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pivot-fleet-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = run(args) => r,
            // Dropping `run` kills the control plane, Redis and the Sentinels (each is owned
            // and killed on drop).
            () = pivot_sandbox::process::interrupted() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pivot-fleet-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
async fn run(args: Args) -> Result<ExitCode> {
    let binary = fleet::find_binary(args.control_plane_bin.as_deref())?;
    let options = FleetBenchOptions {
        proxies: args.proxies,
        connect_concurrency: args.connect_concurrency,
        rounds: args.rounds,
        pause: args.pause,
        restart: !args.no_restart,
        status_interval: args.status_interval,
        timeout: args.timeout,
        control_plane_log: args.control_plane_log,
        control_plane_log_file: args.control_plane_log_file,
        ..FleetBenchOptions::new(binary)
    };
    options.validate()?;
    eprintln!(
        "pivot-fleet-bench: {} streams against {}, {} rule changes{}...",
        options.proxies,
        options.control_plane_bin.display(),
        options.rounds,
        if options.restart {
            ", then a restart"
        } else {
            ""
        }
    );
    let report = fleet::run(options).await?;
    let table = report.to_string();
    println!("{table}");
    if let Some(path) = &args.update_docs {
        fleet::update_docs(path, &table)?;
        eprintln!("pivot-fleet-bench: results written to {}", path.display());
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("encoding the results")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("pivot-fleet-bench: JSON written to {}", path.display());
    }
    Ok(if args.strict && !report.meets_target() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
