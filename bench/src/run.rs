//! The run: start everything, interleave the measurements, measure idle connections, stop
//! everything.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use pivot_sandbox::fleet::{self, Api, ControlPlaneProcess, ControlPlaneSpec};
use pivot_sandbox::{RedisNode, Topology};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::info;

use crate::idle::{self, IdleResult};
use crate::load::{self, LoadSpec, Sample};
use crate::options::{BenchOptions, TargetKind};
use crate::report::{Machine, Report, TargetInfo};
use crate::targets::{Peer, PivotProxy, ProxySpec, find_peer, version_in};

/// Files each process needs besides one per idle connection (Redis links, logs,
/// `redis-benchmark`'s clients, listeners).
const FD_HEADROOM: u64 = 512;
/// Client connections each server accepts beyond the idle ones.
const CLIENT_HEADROOM: usize = 1024;
/// The key `redis-benchmark` uses without `-r`.
const KEY: &str = "key:__rand_int__";
/// How often the replicas are polled for the prefilled key.
const POLL: Duration = Duration::from_millis(10);

/// A target that will not be measured, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    /// Which.
    pub target: TargetKind,
    /// Why.
    pub reason: String,
}

/// The peers to run and the ones skipped, decided before anything starts.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Peers found installed and selected, with their binaries.
    pub peers: Vec<(TargetKind, PathBuf)>,
    /// Targets not measured.
    pub skipped: Vec<Skipped>,
}

impl Plan {
    /// Looks for the selected peers.
    pub fn new(options: &BenchOptions) -> Plan {
        let mut plan = Plan {
            peers: Vec::new(),
            skipped: Vec::new(),
        };
        for kind in [TargetKind::Haproxy, TargetKind::Nutcracker] {
            if !options.targets.contains(&kind) {
                plan.skipped.push(Skipped {
                    target: kind,
                    reason: "not selected by --targets".into(),
                });
                continue;
            }
            match find_peer(kind) {
                Some(path) => plan.peers.push((kind, path)),
                None => plan.skipped.push(Skipped {
                    target: kind,
                    reason: format!(
                        "`{}` not found on PATH, in /usr/local/sbin or /usr/sbin (Debian: apt-get install {})",
                        kind.id(),
                        kind.id()
                    ),
                }),
            }
        }
        plan
    }
}

/// Runs the benchmark and returns its numbers. Every process it starts is stopped before
/// it returns, also on error.
pub async fn run(options: BenchOptions, plan: Plan) -> Result<Report> {
    options.validate()?;
    let idle_n = options.idle_connections;
    // Raised before anything starts: Redis and the proxies inherit the limit.
    fleet::ensure_open_files(
        idle_n as u64 + FD_HEADROOM,
        &format!("{idle_n} idle connections"),
        "--idle-connections",
    )?;
    // Then all the way to the hard limit: HAProxy needs two sockets per client connection.
    let (soft, open_files) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    if soft < open_files {
        setrlimit(Resource::RLIMIT_NOFILE, open_files, open_files)
            .context("raising RLIMIT_NOFILE")?;
    }
    let load_before = load_average();
    let mut topology_options = options.topology.clone();
    topology_options
        .extra_redis_config
        .push(format!("maxclients {}", idle_n + CLIENT_HEADROOM));
    let topology = Topology::start(topology_options)
        .await
        .context("starting Redis and the Sentinels")?;
    let dir = tempfile::tempdir().context("temporary directory")?;
    let service = topology.master_name().to_string();
    let token = format!("pivot-bench-{:032x}", rand::random::<u128>());
    let proxy_token = format!("pivot-bench-proxies-{:032x}", rand::random::<u128>());
    let spec = ControlPlaneSpec {
        binary: options.control_plane_bin.clone(),
        data_dir: dir.path().join("data"),
        log_path: dir.path().join("control-plane.log"),
        service: (service.clone(), topology.sentinel_addrs()),
        admin_token: token.clone(),
        proxy_token: proxy_token.clone(),
        log_filter: "warn".into(),
    };
    let mut cp = ControlPlaneProcess::start(spec, options.timeout).await?;
    let outcome = async {
        cp.wait_ready(options.timeout).await?;
        let api = Api::new(format!("http://{}", cp.http_addr()), token)?;
        let proxy = PivotProxy::start(
            &ProxySpec {
                binary: options.proxy_bin.clone(),
                service: service.clone(),
                control_plane: cp.grpc_addr(),
                token: proxy_token,
                workers: options.workers,
                max_clients: idle_n + CLIENT_HEADROOM,
                log_path: dir.path().join("proxy.log"),
            },
            options.timeout,
        )
        .await?;
        let mut bench = Bench {
            options: &options,
            topology: &topology,
            api,
            service: service.clone(),
            proxy,
            policy: None,
            peers: Vec::new(),
            nodes: Vec::new(),
            open_files,
        };
        bench.start_peers(&plan, dir.path()).await?;
        bench.measure_all(plan, load_before).await
    }
    .await
    .map_err(|e| cp.explain(e));
    // Proxies and peers first (inside), then the control plane, then Redis: drop order.
    drop(cp);
    drop(topology);
    outcome
}

/// What the measurements need while they run.
struct Bench<'a> {
    options: &'a BenchOptions,
    topology: &'a Topology,
    api: Api,
    service: String,
    proxy: PivotProxy,
    /// The read policy the proxy runs, once set by the bench.
    policy: Option<&'static str>,
    peers: Vec<(TargetKind, Peer)>,
    /// One connection per Redis node, the master first: `INFO` around each run.
    nodes: Vec<redis::aio::MultiplexedConnection>,
    open_files: u64,
}

impl Bench<'_> {
    async fn start_peers(&mut self, plan: &Plan, dir: &Path) -> Result<()> {
        let master = self.master()?.addr();
        for (kind, binary) in &plan.peers {
            let mut max_clients = self.options.idle_connections + CLIENT_HEADROOM;
            if *kind == TargetKind::Haproxy {
                // HAProxy refuses to start when its maxconn does not fit its open-files limit.
                max_clients = max_clients.min(self.haproxy_capacity());
            }
            let peer = Peer::start(
                *kind,
                binary,
                master,
                max_clients,
                dir,
                self.options.timeout,
            )
            .await
            .with_context(|| format!("starting {}", binary.display()))?;
            info!(peer = kind.id(), addr = %peer.addr(), version = peer.version(), "peer started");
            self.peers.push((*kind, peer));
        }
        Ok(())
    }

    /// Client connections HAProxy can hold: two sockets each (the client's and its own to
    /// Redis) in the open-files limit it inherits.
    fn haproxy_capacity(&self) -> usize {
        usize::try_from(self.open_files.saturating_sub(FD_HEADROOM) / 2).unwrap_or(usize::MAX)
    }

    /// The master: node 0 unless the Sentinels failed over (they do not during a run; this
    /// checks).
    fn master(&self) -> Result<&RedisNode> {
        self.topology
            .nodes()
            .first()
            .context("the topology has no Redis node")
    }

    async fn measure_all(mut self, plan: Plan, load_before: String) -> Result<Report> {
        let options = self.options;
        let master = self.master()?.addr();
        let sentinel_master = self.topology.sentinel_master().await?;
        if sentinel_master != master {
            bail!("the Sentinels name {sentinel_master} as master, expected {master}");
        }
        for node in self.topology.nodes() {
            self.nodes.push(node.connection().await?);
        }
        let redis_version = self.redis_version().await?;
        self.prefill().await?;

        let targets: Vec<TargetKind> = crate::options::TARGETS
            .iter()
            .copied()
            .filter(|t| {
                *t == TargetKind::Direct
                    || (options.targets.contains(t)
                        && (!t.is_peer() || self.peers.iter().any(|(k, _)| k == t)))
            })
            .collect();
        let tests = options.ordered_tests();
        let binary = options.redis_benchmark_bin.as_path();
        if options.warmup {
            let spec = LoadSpec {
                binary,
                clients: options.clients,
                requests: (options.requests / 10).max(1000).min(options.requests),
                data_size: options.data_size,
                timeout: options.timeout,
            };
            for &test in &tests {
                for &target in targets.iter().filter(|t| t.runs(test)) {
                    self.measure_one(&spec, target, test, 0, 0).await?;
                }
            }
            info!("warm-up done");
        }
        let spec = LoadSpec {
            binary,
            clients: options.clients,
            requests: options.requests,
            data_size: options.data_size,
            timeout: options.timeout,
        };
        let mut samples = Vec::new();
        for round in 0..options.rounds {
            for (t, &test) in tests.iter().enumerate() {
                let runs: Vec<TargetKind> =
                    targets.iter().copied().filter(|k| k.runs(test)).collect();
                let start = rotation(round, t, runs.len());
                let order = runs[start..].iter().chain(&runs[..start]);
                for (position, &target) in order.enumerate() {
                    let sample = self
                        .measure_one(&spec, target, test, round, position)
                        .await?;
                    info!(
                        round,
                        %test,
                        target = target.id(),
                        rps = sample.line.rps,
                        cpu_us = ?sample.proxy_cpu_us,
                        "measured"
                    );
                    samples.push(sample);
                }
            }
        }
        let idle = if options.idle_connections > 0 {
            self.measure_idle(&targets).await?
        } else {
            Vec::new()
        };
        let sentinel_master = self.topology.sentinel_master().await?;
        if sentinel_master != master {
            bail!("the master changed during the run (now {sentinel_master}): results void");
        }
        let mut target_infos = Vec::new();
        for &kind in &targets {
            let version = match kind {
                TargetKind::Direct => format!("redis-server {redis_version}"),
                TargetKind::Pivot | TargetKind::PivotReplicas => {
                    format!("pivot-proxy {}", binary_version(&options.proxy_bin))
                }
                _ => self
                    .peers
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map(|(_, p)| format!("{} {}", kind.id(), p.version()))
                    .unwrap_or_default(),
            };
            target_infos.push(TargetInfo { kind, version });
        }
        Ok(Report {
            command_line: options.command_line.clone(),
            machine: Machine {
                cpus: std::thread::available_parallelism().map_or(0, usize::from),
                load_before,
                load_after: load_average(),
                redis_version,
            },
            rounds: options.rounds,
            requests: options.requests,
            clients: options.clients,
            data_size: options.data_size,
            workers: options.workers,
            tests,
            targets: target_infos,
            skipped: plan.skipped,
            samples,
            idle,
        })
    }

    async fn measure_one(
        &mut self,
        spec: &LoadSpec<'_>,
        target: TargetKind,
        test: crate::options::Test,
        round: usize,
        position: usize,
    ) -> Result<Sample> {
        let (addr, pid) = self.endpoint(target).await?;
        load::measure(
            spec,
            &mut self.nodes,
            target,
            addr,
            pid,
            test,
            round,
            position,
        )
        .await
    }

    /// Where `target` listens and the PID whose costs are measured (`None` for direct
    /// Redis, whose costs come from `INFO`). For Pivot, sets the read policy the target
    /// needs first and waits for the proxy to run it.
    async fn endpoint(&mut self, target: TargetKind) -> Result<(SocketAddr, Option<u32>)> {
        match target {
            TargetKind::Direct => Ok((self.master()?.addr(), None)),
            TargetKind::Pivot | TargetKind::PivotReplicas => {
                let policy = if target == TargetKind::Pivot {
                    "master-only"
                } else {
                    "replicas"
                };
                if self.policy != Some(policy) {
                    let version = self.api.set_read_policy(&self.service, policy).await?;
                    self.proxy
                        .wait_version(version, self.options.timeout)
                        .await?;
                    self.policy = Some(policy);
                }
                Ok((self.proxy.addr(), Some(self.proxy.pid()?)))
            }
            peer => {
                let (_, p) = self
                    .peers
                    .iter_mut()
                    .find(|(k, _)| *k == peer)
                    .with_context(|| format!("{} was not started", peer.id()))?;
                Ok((p.addr(), Some(p.pid()?)))
            }
        }
    }

    /// Sets the key every `GET` reads (`-d` bytes, like `redis-benchmark`'s `SET`) and
    /// waits until every replica has it.
    async fn prefill(&mut self) -> Result<()> {
        let value = vec![b'x'; self.options.data_size as usize];
        let (master, replicas) = self
            .nodes
            .split_first_mut()
            .context("no Redis connection")?;
        let () = redis::cmd("SET")
            .arg(KEY)
            .arg(&value)
            .query_async(master)
            .await
            .context("SET of the benchmark key")?;
        let deadline = Instant::now() + self.options.timeout;
        for (i, replica) in replicas.iter_mut().enumerate() {
            loop {
                let got: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(KEY)
                    .query_async(replica)
                    .await
                    .context("GET of the benchmark key on a replica")?;
                if got.as_deref() == Some(&value[..]) {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "replica {} did not receive the benchmark key within {:?}",
                        i + 1,
                        self.options.timeout
                    );
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }

    async fn redis_version(&mut self) -> Result<String> {
        let conn = self.nodes.first_mut().context("no Redis connection")?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(conn)
            .await
            .context("INFO server")?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_string())
    }

    /// Idle connections to every target but `pivot-replicas` (the same process as `pivot`).
    async fn measure_idle(&mut self, targets: &[TargetKind]) -> Result<Vec<IdleResult>> {
        let asked = self.options.idle_connections;
        let mut out = Vec::new();
        for &target in targets.iter().filter(|t| **t != TargetKind::PivotReplicas) {
            let (addr, pid) = self.endpoint(target).await?;
            let pid = match pid {
                Some(pid) => pid,
                None => self
                    .master()?
                    .pid()
                    .context("the Redis master is not running")?,
            };
            // HAProxy holds a server connection per client connection: two sockets each.
            let (n, note) = if target == TargetKind::Haproxy {
                let fit = self.haproxy_capacity().saturating_sub(CLIENT_HEADROOM / 8);
                if fit < asked {
                    (
                        fit,
                        Some(format!(
                            "{fit}: two sockets per connection in an open-files limit of {}",
                            self.open_files
                        )),
                    )
                } else {
                    (asked, None)
                }
            } else {
                (asked, None)
            };
            let result = idle::measure(target, addr, pid, n, note, self.options.timeout).await?;
            info!(
                target = target.id(),
                kib = result.kib_per_connection(),
                "idle connections measured"
            );
            out.push(result);
        }
        Ok(out)
    }
}

/// `/proc/loadavg`'s three load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// What `binary --version` says, as a version number.
fn binary_version(binary: &Path) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| version_in(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_else(|| "unknown version".into())
}

/// Where round `round` of test `test` starts in its list of `targets`: the order rotates
/// every round, so that over `targets` rounds each target runs once in every position (no
/// target always follows the same one: caches, Redis's memory, the machine's other load),
/// and successive tests of a round start at different targets.
fn rotation(round: usize, test: usize, targets: usize) -> usize {
    (round + test) % targets.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_takes_every_position() {
        // 4 tests, as many as the SET tests' targets (direct, Pivot, two peers): the
        // rotation once left each test's order unchanged from round to round.
        for (tests, targets) in [(4, 4), (4, 5), (2, 2), (2, 3), (1, 1), (3, 6)] {
            for test in 0..tests {
                let mut seen = vec![vec![false; targets]; targets];
                for round in 0..targets {
                    let start = rotation(round, test, targets);
                    for position in 0..targets {
                        seen[(start + position) % targets][position] = true;
                    }
                }
                assert!(
                    seen.iter().flatten().all(|s| *s),
                    "{tests} tests, {targets} targets, test {test}: {seen:?}"
                );
            }
        }
    }
}
