//! A CI-sized run of `pivot-fleet-bench`'s code path (50 streams, one rule change, a
//! restart) against the real control plane binary, so that the benchmark cannot rot.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use pivot_sandbox::fleet::{self, FleetBenchOptions};

/// The whole run, topology start included.
const BOUND: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "current_thread")]
async fn fleet_bench_smoke() -> Result<()> {
    common::init_tracing();
    let options = FleetBenchOptions {
        proxies: 50,
        connect_concurrency: 16,
        rounds: 1,
        pause: Duration::from_millis(100),
        settle: Duration::from_millis(200),
        status_interval: Duration::from_millis(500),
        timeout: Duration::from_secs(10),
        ..FleetBenchOptions::new(control_plane_bin()?)
    };
    // Dropping the run on timeout kills every process it started.
    let report = tokio::time::timeout(BOUND, fleet::run(options))
        .await
        .context("the smoke run took longer than its bound")??;
    let text = report.to_string();
    assert_eq!(report.rounds.len(), 1, "{text}");
    assert_eq!(report.nacks, 0, "{text}");
    let round = &report.rounds[0];
    assert!(round.all_received <= round.all_acked, "{text}");
    assert!(round.all_acked < Duration::from_secs(5), "{text}");
    assert!(report.rss_streams_kib >= report.rss_idle_kib, "{text}");
    assert!(report.rss_idle_kib > 0, "{text}");
    let restart = report.restart.as_ref().context("no restart timed")?;
    assert!(restart.exit.contains("exit status: 0"), "{text}");
    assert!(restart.connects >= 50, "{text}");
    assert!(text.contains("| every stream ACKed it |"), "{text}");
    Ok(())
}

/// The `pivot-control-plane` binary of this build (`$PIVOT_CONTROL_PLANE_BIN`, else built
/// with this test's profile if missing or stale).
fn control_plane_bin() -> Result<PathBuf> {
    fleet::test_binary(
        "pivot-control-plane",
        "pivot-control-plane",
        "libpivot_control_plane-",
        fleet::CONTROL_PLANE_BIN_ENV,
    )
}
