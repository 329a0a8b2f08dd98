//! OpenAPI-driven fuzzing of the admin REST API with schemathesis (PyPI), against the
//! whole local stack: real Redis and Sentinels, the control plane, a proxy.
//!
//! schemathesis reads `/api/v1/openapi.json` and sends schema-valid and schema-violating
//! requests to every operation, with the admin token. Checks: no 5xx
//! (`not_a_server_error`), responses match their documented schemas and status codes and
//! content types, invalid input is rejected, auth is not ignored. Left out:
//! `positive_data_acceptance`, because some valid-looking input is refused by design (two
//! rules for one command, a name already taken), which a schema cannot say.
//!
//! Not fuzzed: `POST .../failover` (each one pauses the master's writes for a planned
//! failover: slow, and covered by `tests/api.rs`), `GET /api/v1/events/stream` (a stream
//! that does not end), and `DELETE /api/v1/tokens/{id}` (it would revoke the fuzzer's own
//! token, leaving the rest of the run at 401). `api_fuzz_hooks.py` keeps every Sentinel
//! address the fuzzer registers on 127.0.0.1.
//!
//! Bounded: `--max-examples` per operation and a wall-clock limit. The seed is fixed (set
//! `PIVOT_FUZZ_SEED` to explore others). Skipped with a message when schemathesis is not
//! installed, unless `PIVOT_REQUIRE_CLIENT_TESTS` is set (CI), then it fails.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pivot_sandbox::{Stack, StackOptions};

/// Installed by `.ci/run`.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
/// Examples per operation and phase.
const MAX_EXAMPLES: &str = "100";
/// The whole run, at most.
const WALL_CLOCK: Duration = Duration::from_secs(150);
const HOOKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api_fuzz_hooks.py");

async fn schemathesis_installed() -> bool {
    tokio::process::Command::new("python3")
        .args(["-c", "import schemathesis"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_fuzzing_finds_no_server_error() -> Result<()> {
    common::init_tracing();
    if !schemathesis_installed().await {
        let what = format!("schemathesis is not installed (pip install {SCHEMATHESIS})");
        if std::env::var_os("PIVOT_REQUIRE_CLIENT_TESTS").is_some() {
            bail!("{what}, and PIVOT_REQUIRE_CLIENT_TESTS is set");
        }
        eprintln!("SKIPPED: {what}; CI runs this test");
        return Ok(());
    }
    let stack = Stack::start(StackOptions::default()).await?;
    let url = stack.http_url()?;
    let seed = std::env::var("PIVOT_FUZZ_SEED").unwrap_or_else(|_| "20261127".into());
    let reports = tempfile::tempdir()?;
    let started = Instant::now();
    let child = tokio::process::Command::new("python3")
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("{url}/api/v1/openapi.json"))
        .args([
            "--header",
            &format!("Authorization: Bearer {}", stack.admin_token()),
        ])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,negative_data_rejection,\
             missing_required_header,unsupported_method,ignored_auth",
        ])
        .args(["--exclude-operation-id", "failover"])
        .args(["--exclude-operation-id", "events_stream"])
        .args(["--exclude-operation-id", "delete_token"])
        .args([
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            &seed,
            "--no-shrink",
        ])
        .args(["--workers", "1", "--request-timeout", "10"])
        .args(["--suppress-health-check", "filter_too_much,too_slow"])
        .args(["--output-truncate", "true"])
        .arg("--report-dir")
        .arg(reports.path())
        .env("SCHEMATHESIS_HOOKS", HOOKS)
        // Its cache (`.schemathesis/`) goes to the temporary directory, not the repository.
        .current_dir(reports.path())
        // No telemetry, no colours in the captured output.
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start python3 -m schemathesis.cli")?;
    let out = match tokio::time::timeout(WALL_CLOCK, child.wait_with_output()).await {
        Ok(out) => out?,
        Err(_) => bail!("schemathesis did not finish within {WALL_CLOCK:?} (killed)"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("generated") || l.contains("passed") || l.contains("failed"))
        .collect();
    eprintln!(
        "schemathesis (seed {seed}) in {:?}: {}",
        started.elapsed(),
        summary.join(" | ")
    );
    if !out.status.success() {
        bail!(
            "schemathesis found problems ({}):\n{stdout}\n{stderr}",
            out.status
        );
    }
    // It ran the operations, not nothing.
    let generated: u64 = stdout
        .lines()
        .find_map(|l| l.trim().split_once(" generated,")?.0.parse().ok())
        .unwrap_or(0);
    if generated < 500 {
        bail!("schemathesis generated only {generated} test cases:\n{stdout}");
    }
    stack.shutdown().await
}
