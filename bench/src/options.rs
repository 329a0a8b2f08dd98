//! What a run measures: the tests, the targets and the numbers.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Result, bail};
use pivot_sandbox::TopologyOptions;
use serde::{Deserialize, Serialize};

/// The Redis command a test sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// `SET key:__rand_int__ <data>`.
    Set,
    /// `GET key:__rand_int__`.
    Get,
}

/// One `redis-benchmark` test: a command and a pipeline depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Test {
    /// The command.
    pub command: Command,
    /// Requests each client has in flight (`-P`).
    pub pipeline: u32,
}

/// The four tests, in the order they run within a round.
pub const TESTS: [Test; 4] = [
    Test::new(Command::Set, 1),
    Test::new(Command::Get, 1),
    Test::new(Command::Set, 16),
    Test::new(Command::Get, 16),
];

impl Test {
    /// A test.
    pub const fn new(command: Command, pipeline: u32) -> Test {
        Test { command, pipeline }
    }

    /// `redis-benchmark -t` value.
    pub fn redis_benchmark_name(self) -> &'static str {
        match self.command {
            Command::Set => "set",
            Command::Get => "get",
        }
    }

    /// The name `--tests` takes: `set-p1`, `get-p16`, ...
    pub fn id(self) -> String {
        format!("{}-p{}", self.redis_benchmark_name(), self.pipeline)
    }
}

impl fmt::Display for Test {
    /// `SET -P1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.command {
            Command::Set => "SET",
            Command::Get => "GET",
        };
        write!(f, "{name} -P{}", self.pipeline)
    }
}

impl FromStr for Test {
    type Err = String;

    fn from_str(s: &str) -> Result<Test, String> {
        TESTS
            .iter()
            .copied()
            .find(|t| t.id() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                let known: Vec<String> = TESTS.iter().map(|t| t.id()).collect();
                format!("unknown test {s:?}; one of {}", known.join(", "))
            })
    }
}

/// What the load is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// The Redis master itself: the reference of every ratio.
    Direct,
    /// `pivot-proxy` with read policy `master-only`: every command to the master, as the
    /// peers do.
    Pivot,
    /// `pivot-proxy` with read policy `replicas`: reads go to the two replicas. Runs the
    /// `GET` tests only (writes go to the master under every policy).
    PivotReplicas,
    /// HAProxy in TCP mode, one thread, to the master.
    Haproxy,
    /// twemproxy (`nutcracker`): one pool, the master its only server.
    Nutcracker,
}

/// Every target, in the order of the tables.
pub const TARGETS: [TargetKind; 5] = [
    TargetKind::Direct,
    TargetKind::Pivot,
    TargetKind::PivotReplicas,
    TargetKind::Haproxy,
    TargetKind::Nutcracker,
];

impl TargetKind {
    /// The name `--targets` takes.
    pub fn id(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Pivot => "pivot",
            TargetKind::PivotReplicas => "pivot-replicas",
            TargetKind::Haproxy => "haproxy",
            TargetKind::Nutcracker => "nutcracker",
        }
    }

    /// A peer: another proxy, run only when installed.
    pub fn is_peer(self) -> bool {
        matches!(self, TargetKind::Haproxy | TargetKind::Nutcracker)
    }

    /// Whether it runs `test`.
    pub fn runs(self, test: Test) -> bool {
        self != TargetKind::PivotReplicas || test.command == Command::Get
    }
}

impl FromStr for TargetKind {
    type Err = String;

    fn from_str(s: &str) -> Result<TargetKind, String> {
        TARGETS
            .iter()
            .copied()
            .find(|t| t.id() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                let known: Vec<&str> = TARGETS.iter().map(|t| t.id()).collect();
                format!("unknown target {s:?}; one of {}", known.join(", "))
            })
    }
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Interleaved rounds.
    pub rounds: usize,
    /// Requests per `redis-benchmark` run (`-n`).
    pub requests: u64,
    /// Client connections of `redis-benchmark` (`-c`).
    pub clients: u32,
    /// Value size of `SET` in bytes (`-d`).
    pub data_size: u32,
    /// The targets to measure (direct Redis is always measured: it is the reference).
    pub targets: Vec<TargetKind>,
    /// The tests.
    pub tests: Vec<Test>,
    /// The `pivot-proxy` binary.
    pub proxy_bin: PathBuf,
    /// The `pivot-control-plane` binary.
    pub control_plane_bin: PathBuf,
    /// `redis-benchmark`.
    pub redis_benchmark_bin: PathBuf,
    /// The proxy's `--workers`.
    pub workers: usize,
    /// Idle client connections opened to each target (0: skip).
    pub idle_connections: usize,
    /// An unrecorded pass over every target and test before the rounds.
    pub warmup: bool,
    /// Bound on every wait and on each `redis-benchmark` run.
    pub timeout: Duration,
    /// The Redis group and its Sentinels.
    pub topology: TopologyOptions,
    /// The command line, as printed in the report.
    pub command_line: String,
}

impl BenchOptions {
    /// Checks the numbers before anything starts.
    pub fn validate(&self) -> Result<()> {
        if self.rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        if self.requests == 0 {
            bail!("--requests must be at least 1");
        }
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if self.workers == 0 {
            bail!("--workers must be at least 1");
        }
        if self.tests.is_empty() {
            bail!("--tests selects no test");
        }
        if self.timeout.is_zero() {
            bail!("--timeout must be positive");
        }
        Ok(())
    }

    /// The tests in the order they run within a round.
    pub fn ordered_tests(&self) -> Vec<Test> {
        TESTS
            .iter()
            .copied()
            .filter(|t| self.tests.contains(t))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in TESTS {
            assert_eq!(t.id().parse::<Test>().unwrap(), t);
        }
        for t in TARGETS {
            assert_eq!(t.id().parse::<TargetKind>().unwrap(), t);
        }
        assert_eq!(TESTS[3].to_string(), "GET -P16");
        assert!("set-p2".parse::<Test>().is_err());
    }
}
