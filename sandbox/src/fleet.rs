//! The fleet scale benchmark (issue 6, "Scale"): one real control plane serving thousands of
//! proxy config streams.
//!
//! - `control_plane`: the `pivot-control-plane` binary as a child process ([`ControlPlaneProcess`]),
//!   so that the memory and CPU measured are its own.
//! - `sim`: simulated proxies ([`Fleet`]), each with its own connection and stream, ACKing
//!   and reconnecting like the real proxy's config client.
//! - `api`: the REST calls (a rule change, the proxies' view).
//! - `report`: the numbers and their markdown form.
//!
//! [`run`] starts a [`Topology`] (a master, two replicas, three Sentinels), the control
//! plane, opens the streams, changes a command rule through the REST API several times,
//! restarts the control plane, and tears everything down (also on error: every process is
//! owned and killed on drop).

mod api;
mod control_plane;
mod report;
mod sim;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};
use tokio::time::Instant;
use tracing::info;

pub use api::Api;
pub use control_plane::{
    CONTROL_PLANE_BIN_ENV, ControlPlaneProcess, ControlPlaneSpec, find_binary, find_sibling_binary,
    test_binary,
};
pub use report::{DOCS_BEGIN, DOCS_END, Report, Restart, Round, update_docs, update_docs_block};
pub use sim::{AckTimes, Fleet, FleetSettings};

use crate::{Topology, TopologyOptions};

/// File descriptors each process needs besides one per stream (Redis and Sentinel links,
/// the store, listeners, the HTTP client).
const FD_HEADROOM: u64 = 256;
/// The rule the rounds change; its target alternates so that every round is a change.
const RULE_COMMAND: &str = "flushall";
const RULE_TARGETS: [&str; 2] = ["deny", "master"];
/// How often the control plane's proxy list is read while waiting for it to show the ACKs.
const API_POLL: Duration = Duration::from_millis(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct FleetBenchOptions {
    /// Simulated proxy streams.
    pub proxies: usize,
    /// How many streams are being opened at a time at the start.
    pub connect_concurrency: usize,
    /// Rule changes to time (0: only memory and the restart).
    pub rounds: usize,
    /// Pause after each change (lets the control plane's store writer catch up, so that
    /// rounds do not overlap).
    pub pause: Duration,
    /// Also time a control-plane restart.
    pub restart: bool,
    /// How often each simulated proxy reports its status.
    pub status_interval: Duration,
    /// Bound on every wait.
    pub timeout: Duration,
    /// Quiet time before each memory sample.
    pub settle: Duration,
    /// The control plane binary.
    pub control_plane_bin: PathBuf,
    /// The control plane's `RUST_LOG`.
    pub control_plane_log: String,
    /// Where the control plane's log goes (appended to); `None`: a temporary file.
    pub control_plane_log_file: Option<PathBuf>,
    /// The Redis group and its Sentinels.
    pub topology: TopologyOptions,
}

impl FleetBenchOptions {
    /// Defaults of the benchmark (2,000 streams, 5 changes, a restart) for `binary`.
    pub fn new(control_plane_bin: PathBuf) -> FleetBenchOptions {
        FleetBenchOptions {
            proxies: 2000,
            connect_concurrency: 64,
            rounds: 5,
            pause: Duration::from_secs(1),
            restart: true,
            status_interval: Duration::from_secs(2),
            timeout: Duration::from_secs(60),
            settle: Duration::from_secs(1),
            control_plane_bin,
            control_plane_log: "info".into(),
            control_plane_log_file: None,
            topology: TopologyOptions::default(),
        }
    }

    /// Checks the numbers before anything starts.
    pub fn validate(&self) -> Result<()> {
        if self.proxies == 0 {
            bail!("--proxies must be at least 1");
        }
        if self.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        if self.status_interval < Duration::from_millis(100) {
            bail!("--status-interval must be at least 100ms");
        }
        if self.timeout.is_zero() {
            bail!("--timeout must be positive");
        }
        Ok(())
    }
}

/// Makes sure this process (and so the control plane it starts, which inherits the limit)
/// may open a socket per stream: raises the soft `RLIMIT_NOFILE` up to the hard one if
/// needed, and fails with what to do when even that is too low.
pub fn ensure_fd_limit(streams: usize) -> Result<()> {
    let needed = u64::try_from(streams).unwrap_or(u64::MAX) + FD_HEADROOM;
    ensure_open_files(needed, &format!("{streams} streams"), "--proxies")
}

/// Makes sure this process (and the children it starts from now on, which inherit the
/// limit) may open `needed` files: raises the soft `RLIMIT_NOFILE` up to the hard one if
/// needed, and fails saying what to do when even that is too low (`what` names the need,
/// `flag` the option that lowers it).
pub fn ensure_open_files(needed: u64, what: &str, flag: &str) -> Result<()> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        bail!(
            "{what} need about {needed} open files per process, but the limit is \
             {soft} (hard {hard}); raise it (e.g. `ulimit -n {needed}` as root, or \
             `LimitNOFILE=` / limits.conf) or pass a smaller {flag}"
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard).context("raising RLIMIT_NOFILE")?;
    info!(from = soft, to = needed, "raised the open-files limit");
    Ok(())
}

/// Runs the benchmark and returns its numbers. Every process it starts is stopped before
/// it returns, also on error.
pub async fn run(options: FleetBenchOptions) -> Result<Report> {
    options.validate()?;
    ensure_fd_limit(options.proxies)?;
    let topology = Topology::start(options.topology.clone())
        .await
        .context("starting Redis and the Sentinels")?;
    let dir = tempfile::tempdir().context("temporary directory")?;
    let service = topology.master_name().to_string();
    let token = format!("fleet-bench-{:032x}", rand::random::<u128>());
    let proxy_token = format!("fleet-proxies-{:032x}", rand::random::<u128>());
    let spec = ControlPlaneSpec {
        binary: options.control_plane_bin.clone(),
        data_dir: dir.path().join("data"),
        log_path: options
            .control_plane_log_file
            .clone()
            .unwrap_or_else(|| dir.path().join("control-plane.log")),
        service: (service.clone(), topology.sentinel_addrs()),
        admin_token: token.clone(),
        proxy_token: proxy_token.clone(),
        log_filter: options.control_plane_log.clone(),
    };
    let mut cp = ControlPlaneProcess::start(spec, options.timeout).await?;
    let outcome = measure(&options, &mut cp, &service, &token, &proxy_token)
        .await
        .map_err(|e| cp.explain(e));
    // Fleet first (inside `measure`), then the control plane, then Redis: drop order.
    drop(cp);
    drop(topology);
    outcome
}

async fn measure(
    options: &FleetBenchOptions,
    cp: &mut ControlPlaneProcess,
    service: &str,
    token: &str,
    proxy_token: &str,
) -> Result<Report> {
    cp.wait_ready(options.timeout).await?;
    let api = Api::new(format!("http://{}", cp.http_addr()), token.to_string())?;
    tokio::time::sleep(options.settle).await;
    let rss_idle_kib = cp.rss_kib()?;

    let id_prefix = format!("bench-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let settings = FleetSettings {
        endpoint: format!("http://{}", cp.grpc_addr()),
        service: service.to_string(),
        id_prefix: id_prefix.clone(),
        status_interval: options.status_interval,
        token: Some(proxy_token.to_string()),
    };
    let n = options.proxies;
    let opened = Instant::now();
    let fleet = Fleet::open(n, options.connect_concurrency, settings, options.timeout).await?;
    let open = opened.elapsed();
    info!(streams = n, ?open, "every stream has its first config");
    let version = api.proxies().await?.version;
    wait_api_acked(&api, &id_prefix, n, version, opened, options.timeout).await?;
    tokio::time::sleep(options.settle).await;
    let rss_streams_kib = cp.rss_kib()?;
    // At rest: keepalives and status reports only.
    let idle_window = options.status_interval * 2;
    let cpu_before = cp.cpu_time()?;
    tokio::time::sleep(idle_window).await;
    let idle_cpu = cp.cpu_time()?.saturating_sub(cpu_before);

    let mut rounds = Vec::with_capacity(options.rounds);
    for round in 0..options.rounds {
        let target = RULE_TARGETS[round % RULE_TARGETS.len()];
        let r = change_rule(cp, &api, &fleet, service, &id_prefix, target, options).await?;
        info!(round, ?r, "rule change timed");
        rounds.push(r);
    }
    tokio::time::sleep(options.settle).await;
    let rss_after_changes_kib = cp.rss_kib()?;

    let restart = if options.restart {
        Some(restart(cp, &api, &fleet, &id_prefix, options).await?)
    } else {
        None
    };
    let nacks = fleet.nacks();
    fleet.stop().await;
    let control_plane_log = cp.log_summary()?;
    Ok(Report {
        proxies: n,
        connect_concurrency: options.connect_concurrency,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        open,
        rss_idle_kib,
        rss_streams_kib,
        idle_cpu,
        idle_window,
        rss_after_changes_kib,
        rounds,
        restart,
        nacks,
        control_plane_log,
    })
}

/// One timed change: `PUT` the rule, wait for every stream's ACK, then for the control
/// plane's proxy list to show them.
async fn change_rule(
    cp: &ControlPlaneProcess,
    api: &Api,
    fleet: &Fleet,
    service: &str,
    id_prefix: &str,
    target: &str,
    options: &FleetBenchOptions,
) -> Result<Round> {
    let cpu_before = cp.cpu_time()?;
    let own_before = own_cpu_time()?;
    let start = Instant::now();
    let version = api.put_rule(service, RULE_COMMAND, target).await?;
    let put = start.elapsed();
    let acks = fleet
        .wait_acked(version, start.into_std(), options.timeout)
        .await?;
    let cpu_to_acked = cp.cpu_time()?.saturating_sub(cpu_before);
    let fleet_cpu_to_acked = own_cpu_time()?.saturating_sub(own_before);
    let api_acked =
        wait_api_acked(api, id_prefix, fleet.len(), version, start, options.timeout).await?;
    check_probe(fleet, version, target)?;
    tokio::time::sleep(options.pause).await;
    Ok(Round {
        version,
        put,
        first_received: acks.first_received,
        all_received: acks.all_received,
        all_acked: acks.all_acked,
        api_acked,
        cpu_to_acked,
        fleet_cpu_to_acked,
        cpu_round: cp.cpu_time()?.saturating_sub(cpu_before),
        rss_kib: cp.rss_kib()?,
    })
}

/// CPU time (user + system) this process has used: the simulated fleet's, mostly.
fn own_cpu_time() -> Result<Duration> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let micros = |t: nix::sys::time::TimeVal| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec()).unwrap_or(0)
    };
    Ok(Duration::from_micros(
        micros(usage.user_time()) + micros(usage.system_time()),
    ))
}

/// The fleet must have been sent the rule, not just some new version.
fn check_probe(fleet: &Fleet, version: u64, target: &str) -> Result<()> {
    let probe = fleet.probe().context("proxy 0 has accepted no update")?;
    let found = probe
        .services
        .iter()
        .filter_map(|s| s.policy.as_ref())
        .flat_map(|p| p.rules.iter())
        .find(|r| r.command == RULE_COMMAND)
        .map(|r| r.target().as_str_name().to_ascii_lowercase());
    let expected = format!("target_{target}");
    if probe.version < version || found.as_deref() != Some(expected.as_str()) {
        bail!(
            "proxy 0's update (version {}) has rule {RULE_COMMAND} -> {found:?}, expected {expected} in version {version} or later",
            probe.version
        );
    }
    Ok(())
}

/// Waits until the control plane's `GET /api/v1/proxies` shows `n` proxies of this run
/// connected with `version` ACKed; returns the time from `start` to the response that did.
async fn wait_api_acked(
    api: &Api,
    id_prefix: &str,
    n: usize,
    version: u64,
    start: Instant,
    timeout: Duration,
) -> Result<Duration> {
    let deadline = start + timeout;
    loop {
        let acked = api.acked(id_prefix, version).await?;
        if acked >= n {
            return Ok(start.elapsed());
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {timeout:?}: the control plane shows {acked} of {n} proxies with version {version} ACKed"
            );
        }
        tokio::time::sleep(API_POLL).await;
    }
}

/// `SIGTERM`, wait for the exit, start again on the same ports and data directory, and
/// time the fleet's return.
async fn restart(
    cp: &mut ControlPlaneProcess,
    api: &Api,
    fleet: &Fleet,
    id_prefix: &str,
    options: &FleetBenchOptions,
) -> Result<Restart> {
    let before = fleet.streams_served();
    let connects_before = fleet.connects();
    let version = api.proxies().await?.version;
    let own_before = own_cpu_time()?;
    let term = Instant::now();
    let status = cp.terminate(options.timeout).await?;
    let drain = term.elapsed();
    let started = Instant::now();
    cp.restart()?;
    let (serving, resubscribed) = tokio::join!(
        async {
            cp.wait_serving(options.timeout).await?;
            let serving = started.elapsed();
            cp.wait_ready(options.timeout).await?;
            anyhow::Ok((serving, started.elapsed()))
        },
        fleet.wait_resubscribed(&before, started.into_std(), options.timeout),
    );
    let (serving, ready) = serving?;
    let times = resubscribed?;
    let quantile = |q: f64| {
        let i = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len().max(1)) - 1;
        times.get(i).copied().unwrap_or_default()
    };
    let connects = fleet.connects() - connects_before;
    let fleet_cpu = own_cpu_time()?.saturating_sub(own_before);
    let api_acked = wait_api_acked(
        api,
        id_prefix,
        fleet.len(),
        version,
        started,
        options.timeout,
    )
    .await?;
    tokio::time::sleep(options.settle).await;
    Ok(Restart {
        exit: status.to_string(),
        drain,
        serving,
        ready,
        resubscribed_p50: quantile(0.5),
        resubscribed_p90: quantile(0.9),
        resubscribed: quantile(1.0),
        api_acked,
        connects,
        fleet_cpu,
        rss_kib: cp.rss_kib()?,
    })
}
