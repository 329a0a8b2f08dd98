//! `pivot-sandbox`: the whole Pivot stack on this machine, for trying it out. Starts one Redis
//! master and its replicas, three Sentinels, the control plane and two proxies on loopback,
//! prints every endpoint, and stops everything on Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use pivot_sandbox::{Stack, StackOptions, TopologyOptions};
use tracing_subscriber::EnvFilter;

/// Runs Redis (1 master + replicas), Sentinels, the Pivot control plane and two proxies on
/// 127.0.0.1. Redis and Sentinel ports are ephemeral and printed at start.
#[derive(Debug, Parser)]
#[command(name = "pivot-sandbox", version, about)]
struct Args {
    /// Control plane data directory (SQLite store).
    #[arg(long, env = "PIVOT_DATA_DIR", default_value = "./pivot-data")]
    data_dir: PathBuf,
    /// Control plane HTTP listener (web page, API, metrics).
    #[arg(long, env = "PIVOT_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    /// Control plane gRPC listener.
    #[arg(long, env = "PIVOT_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    grpc_listen: SocketAddr,
    /// Client listeners of the proxies, one proxy each.
    #[arg(
        long = "proxy-listen",
        value_delimiter = ',',
        default_value = "127.0.0.1:6379,127.0.0.1:6380"
    )]
    proxy_listen: Vec<SocketAddr>,
    /// Admin listeners of the proxies, in the same order.
    #[arg(
        long = "proxy-admin-listen",
        value_delimiter = ',',
        default_value = "127.0.0.1:9121,127.0.0.1:9122"
    )]
    proxy_admin_listen: Vec<SocketAddr>,
    /// Sentinel master name, which is also the service name.
    #[arg(long, default_value = "mymaster")]
    service: String,
    /// Replicas of the master.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Sentinels (quorum is a majority).
    #[arg(long, default_value_t = 3)]
    sentinels: usize,
    /// Sentinel down-after-milliseconds.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    down_after: Duration,
    /// Admin token of the control plane's REST API and web UI (default: the sandbox's
    /// well-known token, printed at start).
    #[arg(long, env = "PIVOT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Sentinel failover-timeout.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    failover_timeout: Duration,
}

/// Fails with the flag's name when an address is taken, before anything starts.
fn check_free(addr: SocketAddr, flag: &str) -> Result<()> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .with_context(|| format!("{addr} is not free; choose another address with {flag}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs on stderr: stdout carries the endpoints and the lines to try.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pivot-sandbox: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
async fn run(args: Args) -> Result<()> {
    if args.proxy_listen.len() != args.proxy_admin_listen.len() {
        bail!("--proxy-listen and --proxy-admin-listen need the same number of addresses");
    }
    check_free(args.http_listen, "--http-listen")?;
    check_free(args.grpc_listen, "--grpc-listen")?;
    for a in &args.proxy_listen {
        check_free(*a, "--proxy-listen")?;
    }
    for a in &args.proxy_admin_listen {
        check_free(*a, "--proxy-admin-listen")?;
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create --data-dir {}", args.data_dir.display()))?;
    let options = StackOptions {
        topology: TopologyOptions {
            master_name: args.service.clone(),
            replicas: args.replicas,
            sentinels: args.sentinels,
            quorum: (args.sentinels / 2 + 1) as u32,
            down_after: args.down_after,
            failover_timeout: args.failover_timeout,
            ..TopologyOptions::default()
        },
        data_dir: Some(args.data_dir.clone()),
        http_listen: args.http_listen,
        grpc_listen: args.grpc_listen,
        proxies: args
            .proxy_listen
            .iter()
            .copied()
            .zip(args.proxy_admin_listen.iter().copied())
            .collect(),
        admin_token: args.admin_token.clone(),
        ..StackOptions::default()
    };
    println!(
        "starting Redis, Sentinels, the control plane and {} proxies...",
        options.proxies.len()
    );
    let stack = Stack::start(options).await?;
    let cp = stack
        .control_plane
        .as_ref()
        .context("control plane not running")?;
    println!();
    println!("Pivot sandbox is up (service '{}').", args.service);
    println!();
    for (i, n) in stack.topology.nodes().iter().enumerate() {
        let role = if i == 0 { "master " } else { "replica" };
        println!(
            "  redis {role}   {}   pid {}",
            n.addr(),
            n.pid().unwrap_or(0)
        );
    }
    for s in stack.topology.sentinels() {
        println!(
            "  sentinel        {}   pid {}",
            s.addr(),
            s.pid().unwrap_or(0)
        );
    }
    println!(
        "  control plane   http://{}  (web UI, REST API /api/v1, /metrics)",
        cp.http_addr
    );
    if args.admin_token.is_some() {
        println!(
            "                  admin token: the one given (--admin-token / PIVOT_ADMIN_TOKEN)"
        );
    } else {
        println!(
            "                  admin token {}  (Authorization: Bearer <token>)",
            stack.admin_token()
        );
    }
    println!("                  grpc {}", cp.grpc_addr);
    for p in &stack.proxies {
        println!(
            "  pivot-proxy     {}   admin http://{}/status",
            p.addr, p.admin_addr
        );
    }
    if let Some(p) = stack.proxies.first() {
        let (host, port) = (p.addr.ip(), p.addr.port());
        let master = stack.topology.node(0);
        println!();
        println!("Try:");
        println!("  redis-cli -h {host} -p {port} set greeting hello");
        println!("  redis-cli -h {host} -p {port} get greeting");
        println!(
            "  redis-cli -h {host} -p {port} info replication | grep role   # run it a few times"
        );
        println!(
            "  kill -STOP {}   # freeze the master; writes resume on the promoted replica",
            master.pid().unwrap_or(0)
        );
        println!("  redis-cli -h {host} -p {port} set greeting again");
        println!(
            "  kill -CONT {}   # the old master rejoins as a replica",
            master.pid().unwrap_or(0)
        );
    }
    println!();
    println!("Ctrl-C (or SIGTERM) stops everything.");
    // SIGTERM too: `kill PID` must not leave the Redis and Sentinel processes behind.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    println!("stopping...");
    stack.shutdown().await?;
    Ok(())
}
