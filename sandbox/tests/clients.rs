//! Real client libraries against the proxy (replica reads on): what applications do with
//! them must work unchanged. Each library's checks are a script in `tests/clients/`.
//!
//! A library that is not installed skips its test with a message, unless
//! `PIVOT_REQUIRE_CLIENT_TESTS` is set (CI sets it, after installing them).

mod common;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pivot_sandbox::{Stack, StackOptions};

fn required() -> bool {
    std::env::var_os("PIVOT_REQUIRE_CLIENT_TESTS").is_some()
}

/// True when `python3` can import `module`.
async fn python_has(module: &str) -> bool {
    tokio::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py() -> Result<()> {
    common::init_tracing();
    if !python_has("redis").await {
        if required() {
            bail!(
                "redis-py is not installed (pip install redis) and PIVOT_REQUIRE_CLIENT_TESTS is set"
            );
        }
        eprintln!("SKIPPED: redis-py is not installed (pip install redis); CI runs this test");
        return Ok(());
    }
    let stack = Stack::start(StackOptions::default()).await?;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/redis_py_check.py"
    );
    let run = tokio::process::Command::new("python3")
        .arg(script)
        .arg("--port")
        .arg(stack.proxies[0].addr.port().to_string())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .context("redis-py checks did not finish within 120 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    if !out.status.success() {
        bail!(
            "redis-py checks failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
    }
    assert!(stdout.contains("all redis-py checks passed"), "{stdout}");
    stack.shutdown().await
}
