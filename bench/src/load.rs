//! One measurement: a `redis-benchmark` run against one target, and what it cost the
//! target and Redis.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pivot_sandbox::procfs;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::options::{Command, TargetKind, Test};

/// The latency columns of `redis-benchmark --csv` (Redis 7): requests per second, then
/// average, minimum, 50th, 95th and 99th percentile and maximum latency in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkLine {
    /// Requests per second.
    pub rps: f64,
    /// Average latency, ms.
    pub avg_ms: f64,
    /// Minimum latency, ms.
    pub min_ms: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum latency, ms.
    pub max_ms: f64,
}

/// The counters of one Redis node that a run is judged by (`INFO cpu stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisCounters {
    /// `used_cpu_sys + used_cpu_user`, seconds (all of the server's threads).
    pub cpu_s: f64,
    /// `total_reads_processed`: `read()` calls on client connections.
    pub reads: u64,
    /// `total_commands_processed`.
    pub commands: u64,
    /// `keyspace_hits`.
    pub hits: u64,
}

impl RedisCounters {
    /// Parses the reply of `INFO cpu stats`.
    pub fn parse(info: &str) -> Result<RedisCounters> {
        let fields: HashMap<&str, &str> = info
            .lines()
            .filter_map(|l| l.trim_end().split_once(':'))
            .collect();
        let get = |name: &str| {
            fields
                .get(name)
                .with_context(|| format!("INFO has no {name}"))
        };
        let float = |name: &str| -> Result<f64> {
            get(name)?
                .parse()
                .with_context(|| format!("INFO {name} is not a number"))
        };
        let int = |name: &str| -> Result<u64> {
            get(name)?
                .parse()
                .with_context(|| format!("INFO {name} is not an integer"))
        };
        Ok(RedisCounters {
            cpu_s: float("used_cpu_sys")? + float("used_cpu_user")?,
            reads: int("total_reads_processed")?,
            commands: int("total_commands_processed")?,
            hits: int("keyspace_hits")?,
        })
    }

    fn delta(after: RedisCounters, before: RedisCounters) -> RedisCounters {
        RedisCounters {
            cpu_s: (after.cpu_s - before.cpu_s).max(0.0),
            reads: after.reads.saturating_sub(before.reads),
            commands: after.commands.saturating_sub(before.commands),
            hits: after.hits.saturating_sub(before.hits),
        }
    }
}

/// A proxy's (or peer's) counters from `/proc`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcessCounters {
    /// CPU time of all its threads.
    pub cpu: Duration,
    /// Context switches of all its threads.
    pub context_switches: u64,
}

impl ProcessCounters {
    /// Reads them for `pid`.
    pub fn read(pid: u32) -> Result<ProcessCounters> {
        Ok(ProcessCounters {
            cpu: procfs::cpu_time(pid)?,
            context_switches: procfs::context_switches(pid)?,
        })
    }
}

/// One recorded run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Round (0-based).
    pub round: usize,
    /// The test.
    pub test: Test,
    /// The target.
    pub target: TargetKind,
    /// Its place in this round's order for this test (0: first).
    pub position: usize,
    /// What `redis-benchmark` reported.
    pub line: BenchmarkLine,
    /// Requests sent.
    pub requests: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The proxy's CPU per request, µs (`None` for direct Redis).
    pub proxy_cpu_us: Option<f64>,
    /// The proxy's context switches per request.
    pub proxy_switches: Option<f64>,
    /// The proxy's `VmRSS` after the run, KiB.
    pub proxy_rss_kib: Option<u64>,
    /// Each Redis node's counters over the run (master first).
    pub redis: Vec<RedisCounters>,
}

impl Sample {
    /// Redis CPU per request over every node (master and replicas), µs.
    pub fn redis_cpu_us(&self) -> f64 {
        self.redis.iter().map(|r| r.cpu_s).sum::<f64>() * 1e6 / self.requests.max(1) as f64
    }

    /// Redis `read()` calls per request over every node.
    pub fn redis_reads(&self) -> f64 {
        self.redis.iter().map(|r| r.reads).sum::<u64>() as f64 / self.requests.max(1) as f64
    }
}

/// Parses `redis-benchmark --csv` output: a header line, then one line for the test.
pub fn parse_csv(out: &str) -> Result<BenchmarkLine> {
    let mut lines = out.lines().map(str::trim).filter(|l| l.starts_with('"'));
    let header = lines
        .next()
        .context("no CSV header in redis-benchmark's output")?;
    let expected = [
        "test",
        "rps",
        "avg_latency_ms",
        "min_latency_ms",
        "p50_latency_ms",
        "p95_latency_ms",
        "p99_latency_ms",
        "max_latency_ms",
    ];
    let columns: Vec<&str> = header.split(',').map(|c| c.trim_matches('"')).collect();
    if columns != expected {
        bail!("unexpected redis-benchmark CSV columns {columns:?} (expected {expected:?})");
    }
    let row = lines
        .next()
        .context("no result line in redis-benchmark's output")?;
    let values: Vec<f64> = row
        .split(',')
        .skip(1)
        .map(|v| v.trim_matches('"').parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("unparsable redis-benchmark line {row:?}"))?;
    let [rps, avg_ms, min_ms, p50_ms, p95_ms, p99_ms, max_ms] = values[..] else {
        bail!(
            "redis-benchmark line {row:?} has {} values, expected 7",
            values.len()
        );
    };
    Ok(BenchmarkLine {
        rps,
        avg_ms,
        min_ms,
        p50_ms,
        p95_ms,
        p99_ms,
        max_ms,
    })
}

/// How to run `redis-benchmark`.
#[derive(Debug, Clone)]
pub struct LoadSpec<'a> {
    /// The binary.
    pub binary: &'a Path,
    /// `-c`.
    pub clients: u32,
    /// `-n`.
    pub requests: u64,
    /// `-d`.
    pub data_size: u32,
    /// Bound on the run.
    pub timeout: Duration,
}

/// Runs `redis-benchmark -h 127.0.0.1 -p PORT -c C -n N -d D -t set|get -P p --csv`.
/// Without `-r` every request uses the key `key:__rand_int__` literally, as the issue's
/// measurements did; the caller has set it, so that `GET`s hit.
pub async fn redis_benchmark(
    spec: &LoadSpec<'_>,
    addr: SocketAddr,
    test: Test,
) -> Result<(BenchmarkLine, Duration)> {
    let started = Instant::now();
    let mut command = tokio::process::Command::new(spec.binary);
    command
        .arg("-h")
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .arg("-c")
        .arg(spec.clients.to_string())
        .arg("-n")
        .arg(spec.requests.to_string())
        .arg("-d")
        .arg(spec.data_size.to_string())
        .arg("-t")
        .arg(test.redis_benchmark_name())
        .arg("-P")
        .arg(test.pipeline.to_string())
        .arg("--csv")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A run cut short by the timeout or an interrupt does not outlive the bench.
        .kill_on_drop(true);
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", spec.binary.display()))?;
    let out = tokio::time::timeout(spec.timeout, child.wait_with_output())
        .await
        .with_context(|| {
            format!(
                "redis-benchmark {test} against {addr} took over {:?}",
                spec.timeout
            )
        })?
        .context("waiting for redis-benchmark")?;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "redis-benchmark {test} against {addr} failed ({}): {}{}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let line = parse_csv(&stdout).with_context(|| {
        format!(
            "redis-benchmark {test} against {addr}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    Ok((line, elapsed))
}

/// Reads every node's counters.
pub async fn redis_counters(
    nodes: &mut [redis::aio::MultiplexedConnection],
) -> Result<Vec<RedisCounters>> {
    let mut out = Vec::with_capacity(nodes.len());
    for conn in nodes.iter_mut() {
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .arg("stats")
            .query_async(conn)
            .await
            .context("INFO cpu stats")?;
        out.push(RedisCounters::parse(&info)?);
    }
    Ok(out)
}

/// The measured process of a target: `None` for direct Redis.
pub type ProcessPid = Option<u32>;

/// Runs one test against one target and samples the costs around it. Checks that the
/// requests reached Redis (a proxy that answers errors itself would otherwise look fast).
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    spec: &LoadSpec<'_>,
    nodes: &mut [redis::aio::MultiplexedConnection],
    target: TargetKind,
    addr: SocketAddr,
    pid: ProcessPid,
    test: Test,
    round: usize,
    position: usize,
) -> Result<Sample> {
    let redis_before = redis_counters(nodes).await?;
    let proc_before = pid.map(ProcessCounters::read).transpose()?;
    let (line, elapsed) = redis_benchmark(spec, addr, test).await?;
    let proc_after = pid.map(ProcessCounters::read).transpose()?;
    let rss = pid.map(procfs::rss_kib).transpose()?;
    let redis_after = redis_counters(nodes).await?;
    let redis: Vec<RedisCounters> = redis_after
        .iter()
        .zip(&redis_before)
        .map(|(a, b)| RedisCounters::delta(*a, *b))
        .collect();
    let n = spec.requests;
    check_forwarded(target, test, n, &redis)?;
    let per_request = |v: f64| v / n as f64;
    let (proxy_cpu_us, proxy_switches) = match (proc_before, proc_after) {
        (Some(b), Some(a)) => (
            Some(per_request(a.cpu.saturating_sub(b.cpu).as_secs_f64() * 1e6)),
            Some(per_request(
                a.context_switches.saturating_sub(b.context_switches) as f64,
            )),
        ),
        _ => (None, None),
    };
    Ok(Sample {
        round,
        test,
        target,
        position,
        line,
        requests: n,
        elapsed,
        proxy_cpu_us,
        proxy_switches,
        proxy_rss_kib: rss,
        redis,
    })
}

/// Fails unless Redis processed at least `n` commands over the run (and, for `GET`s,
/// counted `n` key hits): a target that answers by itself, or errors, cannot look fast.
pub fn check_forwarded(
    target: TargetKind,
    test: Test,
    n: u64,
    redis: &[RedisCounters],
) -> Result<()> {
    let commands: u64 = redis.iter().map(|r| r.commands).sum();
    if commands < n {
        bail!(
            "{} {test}: Redis processed {commands} commands for {n} requests: the target did not forward them",
            target.id()
        );
    }
    let hits: u64 = redis.iter().map(|r| r.hits).sum();
    if test.command == Command::Get && hits < n {
        bail!(
            "{} {test}: Redis counted {hits} key hits for {n} GETs: the GETs did not find the key",
            target.id()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_redis_benchmark_csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"SET\",\"84033.61\",\"0.363\",\"0.152\",\"0.343\",\"0.559\",\"0.623\",\"2.127\"\n";
        let line = parse_csv(out).unwrap();
        assert_eq!(line.rps, 84033.61);
        assert_eq!(line.p50_ms, 0.343);
        assert_eq!(line.p99_ms, 0.623);
        assert_eq!(line.max_ms, 2.127);
        assert!(parse_csv("\"test\",\"rps\"\n\"SET\",\"1\"\n").is_err());
        assert!(parse_csv("").is_err());
    }

    #[test]
    fn requests_must_reach_redis() {
        let node = |commands, hits| RedisCounters {
            cpu_s: 0.1,
            reads: 10,
            commands,
            hits,
        };
        let (set, get) = (Test::new(Command::Set, 1), Test::new(Command::Get, 16));
        let pivot = TargetKind::Pivot;
        // Commands and hits are summed over the nodes (replica reads, replication).
        check_forwarded(pivot, set, 1000, &[node(1001, 0), node(1000, 0)]).unwrap();
        check_forwarded(
            pivot,
            get,
            1000,
            &[node(2, 0), node(600, 600), node(500, 500)],
        )
        .unwrap();
        // A proxy that answered some requests itself.
        let e = check_forwarded(pivot, set, 1000, &[node(900, 0)]).unwrap_err();
        assert!(e.to_string().contains("did not forward"), "{e}");
        // GETs that missed the key.
        let e = check_forwarded(pivot, get, 1000, &[node(1000, 10)]).unwrap_err();
        assert!(e.to_string().contains("did not find the key"), "{e}");
    }

    #[test]
    fn parses_info() {
        let info = "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:0.250000\r\n\r\n# Stats\r\n\
                    total_commands_processed:10\r\ntotal_reads_processed:7\r\nkeyspace_hits:3\r\n";
        let c = RedisCounters::parse(info).unwrap();
        assert_eq!(c.cpu_s, 1.75);
        assert_eq!((c.reads, c.commands, c.hits), (7, 10, 3));
        assert!(RedisCounters::parse("# CPU\r\n").is_err());
    }
}
