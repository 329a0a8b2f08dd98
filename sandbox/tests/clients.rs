//! Real client libraries against the proxy (replica reads on): what applications do with
//! them must work unchanged. Each library's checks are a script in `tests/clients/`.
//!
//! - redis-py: `redis_py_check.py` (`pip install redis`);
//! - ioredis (Node.js): `node_check.mjs`, with the exact version pinned in
//!   `package.json` / `package-lock.json` (`npm ci` in `tests/clients`).
//!
//! A library that is not installed skips its test with a message, unless
//! `PIVOT_REQUIRE_CLIENT_TESTS` is set (CI sets it, after installing them).
//!
//! Every script takes `--port` and, optionally, `--user NAME --password PASS`: with a
//! proxy user it also checks that a connection without credentials gets `NOAUTH` and
//! wrong credentials `WRONGPASS`, and runs all its other checks authenticated.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pivot_control_plane::Actor;
use pivot_sandbox::{Stack, StackOptions};

/// The scripts' directory (also the Node.js package with the pinned ioredis).
const CLIENTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");

fn required() -> bool {
    std::env::var_os("PIVOT_REQUIRE_CLIENT_TESTS").is_some()
}

/// A library is missing: the test is skipped (`Ok`, with a message), or fails when
/// `PIVOT_REQUIRE_CLIENT_TESTS` is set.
fn skip_or_fail(what: &str) -> Result<()> {
    if required() {
        bail!("{what}, and PIVOT_REQUIRE_CLIENT_TESTS is set");
    }
    eprintln!("SKIPPED: {what}; CI runs this test");
    Ok(())
}

/// True when `python3` can import `module`.
async fn python_has(module: &str) -> bool {
    succeeds("python3", &["-c", &format!("import {module}")]).await
}

/// True when `program args` runs and exits 0.
async fn succeeds(program: &str, args: &[&str]) -> bool {
    tokio::process::Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// A user the proxy knows, for the scripts' `--user`/`--password`.
struct ProxyUser<'a> {
    name: &'a str,
    password: &'a str,
}

/// One library's check script: `program script --port PORT [--user U --password P]`.
struct Checks<'a> {
    library: &'a str,
    program: &'a str,
    script: &'a str,
    /// The line the script prints last when every check passed.
    success: &'a str,
}

impl Checks<'_> {
    /// Runs the checks against the proxy on `port` (bounded: 120 s); with `user`, the
    /// script also checks NOAUTH / WRONGPASS and runs everything else authenticated.
    async fn run(&self, port: u16, user: Option<&ProxyUser<'_>>) -> Result<()> {
        let mut cmd = tokio::process::Command::new(self.program);
        cmd.arg(Path::new(CLIENTS_DIR).join(self.script))
            .arg("--port")
            .arg(port.to_string())
            .current_dir(CLIENTS_DIR)
            .kill_on_drop(true);
        if let Some(u) = user {
            cmd.args(["--user", u.name, "--password", u.password]);
        }
        let started = Instant::now();
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .with_context(|| format!("{} checks did not finish within 120 s", self.library))?
            .with_context(|| format!("running {} {}", self.program, self.script))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{stdout}");
        eprintln!(
            "{} checks ({}): {:.1} s",
            self.library,
            if user.is_some() {
                "with a user"
            } else {
                "no user"
            },
            started.elapsed().as_secs_f64()
        );
        if !out.status.success() {
            bail!(
                "{} checks failed ({}):\n{stdout}\n{stderr}",
                self.library,
                out.status
            );
        }
        if !stdout.contains(self.success) {
            bail!(
                "{} checks did not report success ({:?} missing):\n{stdout}\n{stderr}",
                self.library,
                self.success
            );
        }
        Ok(())
    }
}

/// Adds `user` to the running stack's service through the control plane and waits until
/// every proxy runs the version that carries it: authentication is required from then on.
async fn add_proxy_user(stack: &mut Stack, user: &ProxyUser<'_>) -> Result<()> {
    let service = stack.topology.master_name().to_string();
    let version = stack
        .admin()?
        .put_user(&Actor::config(), &service, user.name, user.password)
        .await?
        .1
        .context("adding a user made no new config version")?;
    for p in &mut stack.proxies {
        p.wait_for_version_above(version - 1, Duration::from_secs(10))
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py() -> Result<()> {
    common::init_tracing();
    if !python_has("redis").await {
        return skip_or_fail("redis-py is not installed (pip install redis)");
    }
    let checks = Checks {
        library: "redis-py",
        program: "python3",
        script: "redis_py_check.py",
        success: "all redis-py checks passed",
    };
    let mut stack = Stack::start(StackOptions::default()).await?;
    let port = stack.proxies[0].addr.port();
    checks.run(port, None).await?;
    let user = ProxyUser {
        name: "app",
        password: "correct horse battery staple",
    };
    add_proxy_user(&mut stack, &user).await?;
    checks.run(port, Some(&user)).await?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ioredis() -> Result<()> {
    common::init_tracing();
    if !succeeds("node", &["--version"]).await {
        return skip_or_fail("Node.js is not installed (apt-get install nodejs npm)");
    }
    if !Path::new(CLIENTS_DIR)
        .join("node_modules/ioredis/package.json")
        .exists()
    {
        return skip_or_fail(&format!(
            "ioredis is not installed (run `npm ci` in {CLIENTS_DIR})"
        ));
    }
    let checks = Checks {
        library: "ioredis",
        program: "node",
        script: "node_check.mjs",
        success: "all ioredis checks passed",
    };
    let mut stack = Stack::start(StackOptions::default()).await?;
    let port = stack.proxies[0].addr.port();
    checks.run(port, None).await?;
    let user = ProxyUser {
        name: "app",
        password: "correct horse battery staple",
    };
    add_proxy_user(&mut stack, &user).await?;
    checks.run(port, Some(&user)).await?;
    stack.shutdown().await
}
