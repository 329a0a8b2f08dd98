//! A master, its replicas and the Sentinels that watch them, started together and torn
//! down together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info};

use super::binary::{self, SentinelCommand};
use super::config::{RedisConfig, SentinelConfig};
use super::node::{POLL_INTERVAL, Process, ProcessSpec, connect, master_addr_of, role_of};
use super::reply::Role;
use super::{RedisNode, SandboxError, SentinelNode};

/// What [`Topology::start`] builds.
#[derive(Clone, Debug)]
pub struct TopologyOptions {
    /// The name the Sentinels monitor the master under.
    pub master_name: String,
    /// Replicas of the initial master.
    pub replicas: usize,
    /// Sentinels monitoring the master (0 for none).
    pub sentinels: usize,
    /// Sentinels that must agree the master is down before a failover.
    pub quorum: u32,
    /// `sentinel down-after-milliseconds`.
    pub down_after: Duration,
    /// `sentinel failover-timeout`; keep it short in tests that fail over repeatedly.
    pub failover_timeout: Duration,
    /// Extra lines appended to every `redis-server` config (not the Sentinels').
    pub extra_redis_config: Vec<String>,
    /// Where the node directories go; `None` for a fresh temporary directory removed when
    /// the topology is dropped. A given directory is kept.
    pub base_dir: Option<PathBuf>,
    /// The `redis-server` binary; overrides `$REDIS_SERVER_BIN` and `PATH`.
    pub redis_server_bin: Option<PathBuf>,
    /// A `redis-sentinel` binary; overrides `$REDIS_SENTINEL_BIN`. Without either,
    /// Sentinels run as `redis-server <conf> --sentinel`.
    pub redis_sentinel_bin: Option<PathBuf>,
    /// How long `start` waits for replicas to sync and for Sentinels to discover the whole
    /// topology (each phase).
    pub ready_timeout: Duration,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        Self {
            master_name: "mymaster".to_string(),
            replicas: 2,
            sentinels: 3,
            quorum: 2,
            down_after: Duration::from_millis(1000),
            failover_timeout: Duration::from_millis(3000),
            extra_redis_config: Vec::new(),
            base_dir: None,
            redis_server_bin: None,
            redis_sentinel_bin: None,
            ready_timeout: Duration::from_secs(20),
        }
    }
}

impl TopologyOptions {
    fn validate(&self) -> Result<(), SandboxError> {
        let name_ok = !self.master_name.is_empty()
            && self
                .master_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(SandboxError::InvalidOptions(format!(
                "master_name {:?} must be non-empty ASCII letters, digits, '-', '_' or '.'",
                self.master_name
            )));
        }
        if self.quorum == 0 {
            return Err(SandboxError::InvalidOptions(
                "quorum must be at least 1".into(),
            ));
        }
        if self.down_after.is_zero() || self.failover_timeout.is_zero() {
            return Err(SandboxError::InvalidOptions(
                "down_after and failover_timeout must be positive".into(),
            ));
        }
        if let Some(line) = self.extra_redis_config.iter().find(|l| l.contains('\n')) {
            return Err(SandboxError::InvalidOptions(format!(
                "extra_redis_config entries are single lines, got {line:?}"
            )));
        }
        Ok(())
    }
}

/// One master (node 0), its replicas and its Sentinels, all real processes on 127.0.0.1.
///
/// Dropping it kills every process (Sentinels first, `SIGKILL` + reap) and then removes
/// the temporary directory, if it made one.
#[derive(Debug)]
pub struct Topology {
    options: TopologyOptions,
    base_dir: PathBuf,
    nodes: Vec<RedisNode>,
    sentinels: Vec<SentinelNode>,
    /// Declared last so it is removed after every process (fields drop in order).
    _tempdir: Option<tempfile::TempDir>,
}

impl Topology {
    /// Starts the master and replicas, waits until every replica's link is up, starts the
    /// Sentinels and waits until each of them sees every replica and every other Sentinel.
    pub async fn start(options: TopologyOptions) -> Result<Topology, SandboxError> {
        options.validate()?;
        let started = Instant::now();
        let server_bin = binary::redis_server(options.redis_server_bin.as_deref())?;
        let sentinel_cmd = match options.sentinels {
            0 => None,
            _ => Some(binary::redis_sentinel(
                options.redis_sentinel_bin.as_deref(),
                &server_bin,
            )?),
        };
        let (tempdir, base_dir) = match &options.base_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| {
                    SandboxError::io(format!("creating {}", dir.display()), source)
                })?;
                (None, dir.clone())
            }
            None => {
                let tempdir = tempfile::Builder::new()
                    .prefix("pivot-sandbox-")
                    .tempdir()
                    .map_err(|source| SandboxError::io("creating a temporary directory", source))?;
                let path = tempdir.path().to_path_buf();
                (Some(tempdir), path)
            }
        };

        // Built up front so a failure part-way kills what already runs.
        let mut topology = Topology {
            options,
            base_dir,
            nodes: Vec::new(),
            sentinels: Vec::new(),
            _tempdir: tempdir,
        };
        let master = topology.start_node(&server_bin, 0, None).await?;
        topology.nodes.push(master);
        let master_addr = topology.nodes[0].addr();
        for index in 1..=topology.options.replicas {
            let node = topology
                .start_node(&server_bin, index, Some(master_addr))
                .await?;
            topology.nodes.push(node);
        }
        topology.wait_for_replication().await?;
        let replicated = started.elapsed();

        if let Some(command) = &sentinel_cmd {
            for index in 0..topology.options.sentinels {
                let sentinel = topology.start_sentinel(command, index, master_addr).await?;
                topology.sentinels.push(sentinel);
            }
            topology.wait_for_sentinel_discovery().await?;
        }
        info!(
            base_dir = %topology.base_dir.display(),
            master = %master_addr,
            replicas = topology.options.replicas,
            sentinels = topology.options.sentinels,
            ?replicated,
            elapsed = ?started.elapsed(),
            "topology ready"
        );
        Ok(topology)
    }

    async fn start_node(
        &self,
        program: &Path,
        index: usize,
        replica_of: Option<SocketAddr>,
    ) -> Result<RedisNode, SandboxError> {
        let dir = self.base_dir.join(format!("node-{index}"));
        let spec = ProcessSpec {
            name: format!("redis node {index}"),
            program: program.to_path_buf(),
            extra_args: Vec::new(),
            dir: dir.clone(),
            config_file: "redis.conf",
            log_file: "redis.log",
        };
        let extra = &self.options.extra_redis_config;
        let process = Process::start(spec, |port| {
            RedisConfig {
                port,
                dir: &dir,
                replica_of,
                extra,
            }
            .render()
        })
        .await?;
        Ok(RedisNode::new(process))
    }

    async fn start_sentinel(
        &self,
        command: &SentinelCommand,
        index: usize,
        master: SocketAddr,
    ) -> Result<SentinelNode, SandboxError> {
        let dir = self.base_dir.join(format!("sentinel-{index}"));
        let spec = ProcessSpec {
            name: format!("sentinel {index}"),
            program: command.program.clone(),
            extra_args: if command.sentinel_flag {
                vec!["--sentinel".into()]
            } else {
                Vec::new()
            },
            dir: dir.clone(),
            config_file: "sentinel.conf",
            log_file: "sentinel.log",
        };
        let options = &self.options;
        let process = Process::start(spec, |port| {
            SentinelConfig {
                port,
                dir: &dir,
                master_name: &options.master_name,
                master,
                quorum: options.quorum,
                down_after: options.down_after,
                failover_timeout: options.failover_timeout,
            }
            .render()
        })
        .await?;
        Ok(SentinelNode::new(process))
    }

    /// Every replica reports `master_link_status:up`.
    async fn wait_for_replication(&self) -> Result<(), SandboxError> {
        let replicas = &self.nodes[1..];
        poll_until(
            "every replica's master_link_status:up",
            self.options.ready_timeout,
            async || {
                let mut observed = Vec::new();
                for node in replicas {
                    match node.info("replication").await {
                        Ok(info) => {
                            let status = info.get("master_link_status").map(String::as_str);
                            if status != Some("up") {
                                observed.push(format!(
                                    "{}: master_link_status={status:?}",
                                    node.name()
                                ));
                            }
                        }
                        Err(err) => observed.push(format!("{}: {err}", node.name())),
                    }
                }
                if observed.is_empty() {
                    Ok(())
                } else {
                    Err(observed.join("; "))
                }
            },
        )
        .await
    }

    /// Every Sentinel sees the master up, every replica and every other Sentinel.
    async fn wait_for_sentinel_discovery(&self) -> Result<(), SandboxError> {
        let name = &self.options.master_name;
        let want_replicas = self.options.replicas.to_string();
        let want_others = (self.options.sentinels - 1).to_string();
        poll_until(
            &format!(
                "every Sentinel's SENTINEL MASTER {name} to show num-slaves={want_replicas} \
                 and num-other-sentinels={want_others}"
            ),
            self.options.ready_timeout,
            async || {
                let mut observed = Vec::new();
                for sentinel in &self.sentinels {
                    match sentinel.master_info(name).await {
                        Ok(info) => {
                            let field = |key: &str| info.get(key).map(String::as_str).unwrap_or("?");
                            let (slaves, others, flags) =
                                (field("num-slaves"), field("num-other-sentinels"), field("flags"));
                            if slaves != want_replicas || others != want_others || flags != "master" {
                                observed.push(format!(
                                    "{}: num-slaves={slaves} num-other-sentinels={others} flags={flags}",
                                    sentinel.name()
                                ));
                            }
                        }
                        Err(err) => observed.push(format!("{}: {err}", sentinel.name())),
                    }
                }
                if observed.is_empty() {
                    Ok(())
                } else {
                    Err(observed.join("; "))
                }
            },
        )
        .await
    }

    /// The name the Sentinels monitor the master under.
    pub fn master_name(&self) -> &str {
        &self.options.master_name
    }

    /// The options this topology was started with.
    pub fn options(&self) -> &TopologyOptions {
        &self.options
    }

    /// The directory holding every node's and Sentinel's directory.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// All Redis nodes; index 0 is the initial master.
    pub fn nodes(&self) -> &[RedisNode] {
        &self.nodes
    }

    /// Node `i`. Panics when out of range, like slice indexing.
    pub fn node(&self, i: usize) -> &RedisNode {
        &self.nodes[i]
    }

    /// All Sentinels.
    pub fn sentinels(&self) -> &[SentinelNode] {
        &self.sentinels
    }

    /// The Sentinels' addresses, in start order.
    pub fn sentinel_addrs(&self) -> Vec<SocketAddr> {
        self.sentinels.iter().map(SentinelNode::addr).collect()
    }

    /// The Redis node listening on `addr`, if it is one of ours.
    pub fn node_by_addr(&self, addr: SocketAddr) -> Option<&RedisNode> {
        self.nodes.iter().find(|node| node.addr() == addr)
    }

    /// The master a majority of the Sentinels name (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    pub async fn sentinel_master(&self) -> Result<SocketAddr, SandboxError> {
        let votes = self.master_votes().await;
        majority(&votes, self.sentinels.len()).map_err(|observed| SandboxError::NoMajority {
            master_name: self.options.master_name.clone(),
            total: self.sentinels.len(),
            observed,
        })
    }

    /// Waits until a majority of the Sentinels name a master other than `old`; returns it.
    pub async fn wait_for_new_master(
        &self,
        old: SocketAddr,
        timeout: Duration,
    ) -> Result<SocketAddr, SandboxError> {
        let total = self.sentinels.len();
        let found = poll_until(
            &format!("a majority of the Sentinels to name a master other than {old}"),
            timeout,
            async || {
                let votes = self.master_votes().await;
                match majority(&votes, total) {
                    Ok(addr) if addr != old => Ok(addr),
                    Ok(_) => Err(format!(
                        "majority still names {old}: {}",
                        describe_votes(&votes)
                    )),
                    Err(observed) => Err(observed),
                }
            },
        )
        .await?;
        debug!(%old, new = %found, "Sentinels named a new master");
        Ok(found)
    }

    /// Waits until the node at `addr` answers `ROLE` as a replica of `master` with its
    /// replication link up (`connected`).
    pub async fn wait_for_replica_of(
        &self,
        addr: SocketAddr,
        master: SocketAddr,
        timeout: Duration,
    ) -> Result<(), SandboxError> {
        poll_until(
            &format!("{addr} to be a connected replica of {master}"),
            timeout,
            async || match role_of(addr).await {
                Ok(Role::Replica {
                    master_host,
                    master_port,
                    state,
                }) => {
                    let same_master = master_port == master.port()
                        && master_host.parse().ok() == Some(master.ip());
                    if same_master && state == "connected" {
                        Ok(())
                    } else {
                        Err(format!(
                            "ROLE slave of {master_host}:{master_port}, state {state}"
                        ))
                    }
                }
                Ok(role) => Err(format!("ROLE {}", role.name())),
                Err(err) => Err(err.to_string()),
            },
        )
        .await
    }

    /// Sends `SENTINEL FAILOVER <name>` to the first Sentinel that can be reached. A
    /// Sentinel that answers with an error (e.g. no good replica, failover in progress)
    /// fails the call.
    pub async fn sentinel_failover(&self) -> Result<(), SandboxError> {
        let name = &self.options.master_name;
        let mut unreachable = Vec::new();
        for sentinel in &self.sentinels {
            let addr = sentinel.addr();
            let mut conn = match connect(addr).await {
                Ok(conn) => conn,
                Err(err) => {
                    unreachable.push(format!("{}: {err}", sentinel.name()));
                    continue;
                }
            };
            let result: Result<redis::Value, _> = redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg(name)
                .query_async(&mut conn)
                .await;
            match result {
                Ok(_) => {
                    info!(sentinel = %addr, master_name = %name, "requested a failover");
                    return Ok(());
                }
                Err(source)
                    if source.is_io_error()
                        || source.is_timeout()
                        || source.is_connection_dropped()
                        || source.is_connection_refusal() =>
                {
                    unreachable.push(format!("{}: {source}", sentinel.name()));
                }
                Err(source) => {
                    return Err(SandboxError::redis(
                        addr,
                        format!("SENTINEL FAILOVER {name}"),
                        source,
                    ));
                }
            }
        }
        Err(SandboxError::NoMajority {
            master_name: name.clone(),
            total: self.sentinels.len(),
            observed: format!(
                "no Sentinel reachable for SENTINEL FAILOVER: [{}]",
                unreachable.join("; ")
            ),
        })
    }

    /// Every Sentinel's answer to `GET-MASTER-ADDR-BY-NAME`, queried concurrently so a
    /// frozen Sentinel costs one timeout, not one per Sentinel.
    async fn master_votes(&self) -> Vec<(String, Result<Option<SocketAddr>, SandboxError>)> {
        let mut tasks = JoinSet::new();
        for (index, sentinel) in self.sentinels.iter().enumerate() {
            let addr = sentinel.addr();
            let name = self.options.master_name.clone();
            tasks.spawn(async move { (index, master_addr_of(addr, &name).await) });
        }
        let mut answers = Vec::with_capacity(self.sentinels.len());
        while let Some(joined) = tasks.join_next().await {
            if let Ok(answer) = joined {
                answers.push(answer);
            }
        }
        answers.sort_by_key(|(index, _)| *index);
        answers
            .into_iter()
            .map(|(index, answer)| (self.sentinels[index].name().to_string(), answer))
            .collect()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Sentinels first, so none of them reacts to the nodes going away.
        for sentinel in &self.sentinels {
            let _ = sentinel.kill();
        }
        for node in &self.nodes {
            let _ = node.kill();
        }
    }
}

/// The address named by more than half of `total` Sentinels, or the observed answers.
fn majority(
    votes: &[(String, Result<Option<SocketAddr>, SandboxError>)],
    total: usize,
) -> Result<SocketAddr, String> {
    let named: Vec<SocketAddr> = votes
        .iter()
        .filter_map(|(_, answer)| answer.as_ref().ok().copied().flatten())
        .collect();
    named
        .iter()
        .copied()
        .find(|candidate| named.iter().filter(|addr| *addr == candidate).count() > total / 2)
        .ok_or_else(|| describe_votes(votes))
}

fn describe_votes(votes: &[(String, Result<Option<SocketAddr>, SandboxError>)]) -> String {
    let parts: Vec<String> = votes
        .iter()
        .map(|(name, answer)| match answer {
            Ok(Some(addr)) => format!("{name}: {addr}"),
            Ok(None) => format!("{name}: unknown master"),
            Err(err) => format!("{name}: {err}"),
        })
        .collect();
    format!("[{}]", parts.join("; "))
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Ok` or `timeout` passes; `Err`
/// carries the observed state, quoted in the timeout error.
async fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> Result<T, SandboxError> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let last = match check().await {
            Ok(value) => {
                debug!(what, waited = ?started.elapsed(), "condition met");
                return Ok(value);
            }
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(SandboxError::Timeout {
                what: what.to_string(),
                waited: started.elapsed(),
                last,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn vote(name: &str, answer: Option<u16>) -> (String, Result<Option<SocketAddr>, SandboxError>) {
        (name.to_string(), Ok(answer.map(addr)))
    }

    #[test]
    fn majority_needs_more_than_half_of_all_sentinels() {
        let votes = vec![
            vote("s0", Some(7000)),
            vote("s1", Some(7000)),
            vote("s2", Some(7001)),
        ];
        assert_eq!(majority(&votes, 3), Ok(addr(7000)));
        let split = vec![
            vote("s0", Some(7000)),
            vote("s1", Some(7001)),
            vote("s2", None),
        ];
        assert!(majority(&split, 3).is_err());
        // Two answers out of four Sentinels is not a majority.
        let half = vec![vote("s0", Some(7000)), vote("s1", Some(7000))];
        assert!(majority(&half, 4).is_err());
        assert!(majority(&[], 0).is_err());
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let options = TopologyOptions::default();
        assert_eq!(options.master_name, "mymaster");
        assert_eq!(
            (options.replicas, options.sentinels, options.quorum),
            (2, 3, 2)
        );
        assert_eq!(options.down_after, Duration::from_millis(1000));
        assert_eq!(options.failover_timeout, Duration::from_millis(3000));
        assert!(options.validate().is_ok());
    }

    #[test]
    fn invalid_options_are_rejected() {
        let options = TopologyOptions {
            quorum: 0,
            ..TopologyOptions::default()
        };
        assert!(matches!(
            options.validate(),
            Err(SandboxError::InvalidOptions(_))
        ));
        let options = TopologyOptions {
            master_name: "my master".into(),
            ..TopologyOptions::default()
        };
        assert!(matches!(
            options.validate(),
            Err(SandboxError::InvalidOptions(_))
        ));
    }
}
