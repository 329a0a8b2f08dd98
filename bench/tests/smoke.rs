//! A CI-sized run of `pivot-bench`'s code path against the real binaries of this build
//! (direct Redis, Pivot both ways, and whichever peers are installed; one round of 2,000
//! requests per test, 200 idle connections), so that the benchmark cannot rot and a proxy
//! that stops forwarding fails CI.

use std::time::Duration;

use anyhow::{Context, Result};
use pivot_bench::options::{TESTS, TargetKind};
use pivot_bench::run::Plan;
use pivot_bench::targets::PROXY_BIN_ENV;
use pivot_bench::{BenchOptions, chart};
use pivot_sandbox::TopologyOptions;
use pivot_sandbox::fleet;

/// The whole run, topology start included.
const BOUND: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "current_thread")]
async fn bench_smoke() -> Result<()> {
    let proxy_bin = fleet::test_binary(
        "pivot-proxy",
        "pivot-proxy",
        "libpivot_proxy-",
        PROXY_BIN_ENV,
    )?;
    let control_plane_bin = fleet::test_binary(
        "pivot-control-plane",
        "pivot-control-plane",
        "libpivot_control_plane-",
        fleet::CONTROL_PLANE_BIN_ENV,
    )?;
    let options = BenchOptions {
        rounds: 1,
        requests: 2000,
        clients: 50,
        data_size: 64,
        targets: pivot_bench::options::TARGETS.to_vec(),
        tests: TESTS.to_vec(),
        proxy_bin,
        control_plane_bin,
        redis_benchmark_bin: "redis-benchmark".into(),
        workers: 1,
        idle_connections: 200,
        warmup: false,
        timeout: Duration::from_secs(10),
        topology: TopologyOptions::default(),
        command_line: "bench_smoke".into(),
    };
    let plan = Plan::new(&options);
    // Dropping the run on timeout kills every process it started.
    let report = tokio::time::timeout(BOUND, pivot_bench::run(options, plan))
        .await
        .context("the smoke run took longer than its bound")??;
    let text = report.to_string();

    let kinds: Vec<TargetKind> = report.targets.iter().map(|t| t.kind).collect();
    for kind in [
        TargetKind::Direct,
        TargetKind::Pivot,
        TargetKind::PivotReplicas,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} not measured:\n{text}");
    }
    // `run` already fails when Redis processed fewer commands than were sent (a proxy that
    // answers by itself); here every target has a sane figure for every test it runs.
    for &kind in &kinds {
        for test in TESTS.into_iter().filter(|t| kind.runs(*t)) {
            let s = report
                .summary(kind, test)
                .with_context(|| format!("no {test} for {kind:?}:\n{text}"))?;
            assert!(s.rps > 0.0 && s.ratio > 0.0, "{kind:?} {test}:\n{text}");
            assert!(
                s.p50_ms > 0.0 && s.p99_ms >= s.p50_ms,
                "{kind:?} {test}:\n{text}"
            );
            assert!(s.redis_cpu_us > 0.0, "{kind:?} {test}:\n{text}");
            if kind == TargetKind::Direct {
                assert!(s.proxy_cpu_us.is_none(), "{text}");
            } else {
                let cpu = s.proxy_cpu_us.context("no proxy CPU")?;
                assert!(
                    cpu > 0.0 && cpu < 10_000.0,
                    "{kind:?} {test}: {cpu} µs:\n{text}"
                );
                assert!(s.rss_kib.is_some_and(|k| k > 0), "{text}");
            }
        }
    }
    // Reads to the replicas reached the replicas: the master processed (almost) none.
    let get = TESTS[3];
    let replica_reads = report
        .samples
        .iter()
        .find(|s| s.target == TargetKind::PivotReplicas && s.test == get)
        .context("no pivot-replicas GET sample")?;
    let master = replica_reads.redis[0].commands;
    assert!(
        master < 1000,
        "the master processed {master} commands of replica reads:\n{text}"
    );
    let idle = report
        .idle
        .iter()
        .find(|i| i.target == TargetKind::Pivot)
        .context("no idle measurement for pivot")?;
    assert_eq!(idle.connections, 200, "{text}");
    assert!(idle.rss_after_kib > idle.rss_before_kib, "{text}");
    assert!(text.contains("| Pivot (reads to the master) |"), "{text}");
    assert!(text.contains("| target (issue 7)"), "{text}");

    // What --json writes, --from-json reads back into the same report.
    let json = serde_json::to_string(&report)?;
    let again: pivot_bench::Report = serde_json::from_str(&json)?;
    assert_eq!(again.to_string(), text);

    // The chart, when the font is installed (the binary fails clearly without it).
    if std::path::Path::new(chart::DEFAULT_FONT).is_file() {
        chart::load_font(std::path::Path::new(chart::DEFAULT_FONT))?;
        let dir = tempfile::tempdir()?;
        let png = dir.path().join("chart.png");
        chart::write(&report, &png)?;
        let bytes = std::fs::read(&png)?;
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    }
    Ok(())
}
