//! A CI-sized run of `pivot-fleet-bench`'s code path (50 streams, one rule change, a
//! restart) against the real control plane binary, so that the benchmark cannot rot.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
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

/// The `pivot-control-plane` binary of this build: `$PIVOT_CONTROL_PLANE_BIN`, else the one
/// Cargo put next to this test's profile directory. `cargo test --workspace` builds it
/// (the control plane has integration tests); when it is missing or older than the control
/// plane library this test links, it is built here with the same profile.
fn control_plane_bin() -> Result<PathBuf> {
    if std::env::var_os(fleet::CONTROL_PLANE_BIN_ENV).is_some() {
        return fleet::find_binary(None);
    }
    // <target>/<profile>/deps/<this test>
    let exe = std::env::current_exe()?;
    let deps = exe.parent().context("test executable has no directory")?;
    let profile_dir = deps.parent().context("no profile directory")?;
    let target_dir = profile_dir.parent().context("no target directory")?;
    let binary = profile_dir.join("pivot-control-plane");
    if fresh(&binary, deps)? {
        return Ok(binary);
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => bail!("unexpected profile directory {}", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let status = Command::new(cargo)
        .args([
            "build",
            "-p",
            "pivot-control-plane",
            "--bin",
            "pivot-control-plane",
        ])
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .context("running cargo build for pivot-control-plane")?;
    if !status.success() {
        bail!("cargo build -p pivot-control-plane failed: {status}");
    }
    Ok(binary)
}

/// `binary` exists and is no older than every control plane library in `deps`.
fn fresh(binary: &Path, deps: &Path) -> Result<bool> {
    let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
        return Ok(false);
    };
    let newest_lib = std::fs::read_dir(deps)?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("libpivot_control_plane-") && n.ends_with(".rlib"))
        })
        .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(built >= newest_lib)
}
