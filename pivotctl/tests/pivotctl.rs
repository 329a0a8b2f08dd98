//! `pivotctl` against a running stack (real Redis, Sentinels, control plane, proxy): every
//! subcommand, as a table and as JSON, and the exit codes that scripts rely on.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pivot_sandbox::{Stack, StackOptions};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pivotctl");

struct Ctl {
    server: String,
    token: String,
}

impl Ctl {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("PIVOT_SERVER", &self.server)
            .env("PIVOT_TOKEN", &self.token)
            .env_remove("PIVOT_USER_PASSWORD")
            .stdin(Stdio::null());
        c
    }

    fn output(&self, args: &[&str]) -> Result<Output> {
        self.command(args)
            .output()
            .with_context(|| format!("running pivotctl {args:?}"))
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.output(args)?;
        if !out.status.success() {
            bail!(
                "pivotctl {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs with `--json` and parses stdout.
    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ok(&all)?;
        serde_json::from_str(&text).with_context(|| format!("pivotctl {args:?}: {text}"))
    }

    /// Runs and expects exit `code`; returns stderr.
    fn fails(&self, args: &[&str], code: i32) -> Result<String> {
        let out = self.output(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.code() != Some(code) {
            bail!(
                "pivotctl {args:?}: expected exit {code}, got {} (stdout {}, stderr {stderr})",
                out.status,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(stderr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_against_a_running_stack() -> Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let cp = stack.control_plane.as_ref().context("control plane")?;
    let ctl = Ctl {
        server: format!("http://{}", cp.grpc_addr),
        token: stack.admin_token().to_string(),
    };
    let svc = stack.topology.master_name().to_string();
    let master = stack.topology.node(0).addr().to_string();

    // whoami
    assert!(ctl.ok(&["whoami"])?.contains("(admin)"));
    assert_eq!(ctl.json(&["whoami"])?["role"], "admin");

    // services
    let table = ctl.ok(&["services"])?;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains(&svc) && table.contains(&master), "{table}");
    let list = ctl.json(&["services", "list"])?;
    assert_eq!(list[0]["name"], svc.as_str());
    assert_eq!(list[0]["topology"]["master"], master.as_str());
    let show = ctl.ok(&["services", "show", &svc])?;
    assert!(
        show.contains("read policy:") && show.contains("master"),
        "{show}"
    );
    assert_eq!(ctl.json(&["services", "show", &svc])?["name"], svc.as_str());

    // topology
    let t = ctl.ok(&["topology", &svc])?;
    assert!(
        t.contains("ROLE") && t.contains("replica") && t.contains("sentinel"),
        "{t}"
    );
    let tj = ctl.json(&["topology", &svc])?;
    assert_eq!(tj["master"], master.as_str());
    assert_eq!(tj["replicas"].as_array().map(Vec::len), Some(2));

    // rules: set, list, applied by the proxy, rm
    let v0 = *stack.proxies[0].applied.borrow();
    let set = ctl.ok(&["rules", "set", &svc, "FLUSHALL", "deny"])?;
    assert!(set.contains("config version"), "{set}");
    stack.proxies[0]
        .wait_for_version_above(v0, Duration::from_secs(10))
        .await?;
    let mut c = stack.proxies[0]
        .client()
        .get_multiplexed_async_connection()
        .await?;
    let denied: redis::RedisResult<String> = redis::cmd("FLUSHALL").query_async(&mut c).await;
    assert!(denied.is_err(), "FLUSHALL should be denied: {denied:?}");
    assert!(
        ctl.ok(&["rules", "list", &svc])?
            .contains("flushall   deny")
    );
    assert_eq!(
        ctl.json(&["rules", "list", &svc])?,
        serde_json::json!([{"command": "flushall", "target": "deny"}])
    );
    let unchanged = ctl.json(&["rules", "set", &svc, "flushall", "deny"])?;
    assert_eq!(unchanged["created"], false);
    ctl.ok(&["rules", "rm", &svc, "flushall"])?;
    assert_eq!(ctl.json(&["rules", "list", &svc])?, serde_json::json!([]));
    assert!(
        ctl.fails(&["rules", "rm", &svc, "flushall"], 3)?
            .contains("no rule")
    );
    let e = ctl.fails(&["rules", "set", &svc, "get", "nowhere"], 7)?;
    assert!(e.contains("rule.target"), "{e}");

    // policy
    let p = ctl.json(&[
        "policy",
        "set",
        &svc,
        "--read-policy",
        "master-only",
        "--failover-hold",
        "3s",
        "--max-replica-lag",
        "1000000",
    ])?;
    assert_eq!(p["policy"]["read_policy"], "master-only");
    assert!(p["version"].as_u64().unwrap_or(0) > 0);
    let shown = ctl.ok(&["policy", "show", &svc])?;
    assert!(
        shown.contains("master-only") && shown.contains("3s"),
        "{shown}"
    );
    let cleared = ctl.json(&["policy", "set", &svc, "--failover-hold", "none"])?;
    assert_eq!(cleared["policy"]["failover_hold"], Value::Null);
    assert_eq!(cleared["policy"]["max_replica_lag"], 1_000_000);
    let e = ctl.fails(&["policy", "set", &svc, "--write-ack", "always"], 7)?;
    assert!(e.contains("write_ack"), "{e}");

    // users (the password from the environment, never argv)
    let out = ctl
        .command(&["users", "set", &svc, "alice"])
        .env("PIVOT_USER_PASSWORD", "s3cret-pw")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8(out.stdout)?.contains("user alice created"));
    assert_eq!(
        ctl.json(&["users", "list", &svc])?,
        serde_json::json!(["alice"])
    );
    ctl.ok(&["users", "rm", &svc, "alice"])?;
    ctl.fails(&["users", "rm", &svc, "alice"], 3)?;

    // proxies
    let proxies = ctl.ok(&["proxies"])?;
    assert!(
        proxies.starts_with("ID") && proxies.contains(" ok "),
        "{proxies}"
    );
    let pj = ctl.json(&["proxies"])?;
    assert_eq!(pj["proxies"][0]["connected"], true);
    assert!(pj["version"].as_u64().unwrap_or(0) > 0);

    // events and audit
    let ev = ctl.ok(&["events", "--service", &svc, "--limit", "5"])?;
    assert!(
        ev.starts_with("ID") && ev.contains("config-changed"),
        "{ev}"
    );
    let ej = ctl.json(&["events", "--kind", "initial"])?;
    assert_eq!(ej["events"][0]["kind"], "initial");
    let audit = ctl.ok(&["audit", "--service", &svc])?;
    assert!(
        audit.contains("rule.put") && audit.contains("token:"),
        "{audit}"
    );
    let aj = ctl.json(&["audit", "--limit", "2"])?;
    assert_eq!(aj["entries"].as_array().map(Vec::len), Some(2));
    assert!(aj["next_before"].as_i64().unwrap_or(0) > 0);

    // events --follow: a change made while following shows up as a line
    let mut follow = ctl
        .command(&["--json", "events", "--follow", "--limit", "1"])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = follow.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = |what: &str| {
        rx.recv_timeout(Duration::from_secs(10))
            .with_context(|| format!("pivotctl events --follow printed no {what}"))
    };
    // It subscribes before it lists: once the listing's line is out, a change is seen.
    let first = line("listing")?;
    ctl.ok(&["rules", "set", &svc, "keys", "deny"])?;
    let second = line("new event");
    follow.kill()?;
    follow.wait()?;
    let lines = [first, second?];
    let last: Value = serde_json::from_str(&lines[1])?;
    assert_eq!(last["kind"], "config-changed", "{last}");

    // services create / delete, and their conflicts
    let created = ctl.json(&[
        "services",
        "create",
        "extra",
        "--sentinel",
        "127.0.0.1:1",
        "--sentinel",
        "127.0.0.1:2",
    ])?;
    assert_eq!(created["name"], "extra");
    ctl.fails(
        &["services", "create", "extra", "--sentinel", "127.0.0.1:1"],
        4,
    )?;
    let e = ctl.fails(&["services", "create", "bad", "--sentinel", "nohost"], 7)?;
    assert!(e.contains("sentinels[0]"), "{e}");
    ctl.ok(&["services", "delete", "extra"])?;
    ctl.fails(&["topology", "extra"], 3)?;
    // The stack's proxy serves the main service: deleting it needs --force.
    assert!(
        ctl.fails(&["services", "delete", &svc], 4)?
            .contains("force")
    );

    // failover: refused without confirmation when stdin is not a terminal, then done
    ctl.fails(&["failover", &svc], 2)?;
    let report = ctl.json(&["failover", &svc, "--yes"])?;
    assert_eq!(report["old_master"], master.as_str());
    assert_ne!(report["new_master"], master.as_str());

    // a viewer token reads but cannot change (exit 5), no token (5), no server (6)
    let http = stack.http_url()?;
    let viewer: Value = reqwest::Client::new()
        .post(format!("{http}/api/v1/tokens"))
        .bearer_auth(stack.admin_token())
        .json(&serde_json::json!({"name": "ro", "role": "viewer"}))
        .send()
        .await?
        .json()
        .await?;
    let ro = Ctl {
        server: ctl.server.clone(),
        token: viewer["token"].as_str().context("token")?.to_string(),
    };
    assert_eq!(ro.json(&["whoami"])?["role"], "viewer");
    ro.ok(&["services"])?;
    assert!(
        ro.fails(&["rules", "set", &svc, "keys", "any"], 5)?
            .contains("viewer")
    );
    let anon = Ctl {
        server: ctl.server.clone(),
        token: String::new(),
    };
    anon.fails(&["--token", "pvt_wrong", "services"], 5)?;
    let down = Ctl {
        server: "http://127.0.0.1:1".into(),
        token: ctl.token.clone(),
    };
    down.fails(&["services"], 6)?;

    // completions
    assert!(ctl.ok(&["completions", "bash"])?.contains("pivotctl"));
    stack.shutdown().await
}

/// Writes a CA and a certificate signed by it for `name` (a server's DNS name, or a
/// client) into `dir` as `ca.pem`, `NAME.pem`, `NAME.key`.
fn pki(dir: &std::path::Path, names: &[(&str, bool)]) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "pivotctl-test-ca");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    for (name, server) in names {
        let mut params = CertificateParams::new(if *server {
            vec![name.to_string()]
        } else {
            vec![]
        })?;
        params.distinguished_name.push(DnType::CommonName, *name);
        params.extended_key_usages = vec![if *server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls() -> Result<()> {
    let stack = Stack::start(StackOptions {
        proxies: vec![],
        ..StackOptions::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let p = |f: &str| dir.path().join(f).to_string_lossy().to_string();
    pki(dir.path(), &[("cp.pivot.test", true), ("ops", false)])?;
    let data = tempfile::tempdir()?;
    let mut config = stack.control_plane_config()?;
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.data_dir = data.path().to_path_buf();
    config.http_listen = any;
    config.grpc_listen = any;
    config.grpc_tls_cert = Some(p("cp.pivot.test.pem").into());
    config.grpc_tls_key = Some(p("cp.pivot.test.key").into());
    config.grpc_tls_client_ca = Some(p("ca.pem").into());
    let cp = pivot_sandbox::stack::spawn_control_plane(config).await?;
    let ctl = Ctl {
        server: format!("https://{}", cp.grpc_addr),
        token: stack.admin_token().to_string(),
    };
    let (ca, cert, key) = (p("ca.pem"), p("ops.pem"), p("ops.key"));
    let tls = [
        "--tls-ca",
        ca.as_str(),
        "--tls-server-name",
        "cp.pivot.test",
    ];
    let mut with_cert = tls.to_vec();
    with_cert.extend([
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "whoami",
    ]);
    assert!(ctl.ok(&with_cert)?.contains("(admin)"));
    // Without a client certificate the control plane refuses the connection (seen as a
    // transport error or a cancelled request, depending on when the refusal lands: both
    // exit 6). Several runs, to meet both.
    let mut without = tls.to_vec();
    without.push("whoami");
    for _ in 0..5 {
        ctl.fails(&without, 6)?;
    }
    // TLS flags with a plain-text server are a usage error.
    let plain = Ctl {
        server: format!("http://{}", cp.grpc_addr),
        token: ctl.token.clone(),
    };
    plain.fails(&with_cert, 2)?;
    cp.stop().await?;
    stack.shutdown().await
}

/// `pivotctl probe`, the container image's health check, against the real endpoints:
/// healthy, an error status, nothing listening, a listener that never answers, a bad URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_health_by_exit_code() -> Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let cp = stack.control_plane.as_ref().context("control plane")?;
    let proxy = stack.proxies.first().context("a proxy")?;
    proxy.wait_ready(Duration::from_secs(10)).await?;
    // No gRPC server or token is involved: the probe must not need them.
    let ctl = Ctl {
        server: "http://127.0.0.1:1".into(),
        token: String::new(),
    };

    let out = ctl.ok(&["probe", &format!("http://{}/healthz", cp.http_addr)])?;
    assert!(out.contains("200 OK"), "{out}");
    ctl.ok(&["probe", &format!("http://{}/readyz", cp.http_addr)])?;
    ctl.ok(&["probe", &format!("http://{}/readyz", proxy.admin_addr)])?;
    let j = ctl.json(&["probe", &format!("http://{}/healthz", proxy.admin_addr)])?;
    assert_eq!(j["status"], 200);
    // The URL can come from the environment (what the image's HEALTHCHECK uses).
    let out = ctl
        .command(&["probe"])
        .env(
            "PIVOT_PROBE_URL",
            format!("http://{}/healthz", cp.http_addr),
        )
        .output()?;
    assert!(out.status.success(), "{out:?}");

    let err = ctl.fails(
        &["probe", &format!("http://{}/no-such-page", cp.http_addr)],
        1,
    )?;
    assert!(err.contains("404"), "{err}");

    // Nothing listens on a port we bound and closed again.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let err = ctl.fails(&["probe", &format!("http://{closed}/healthz")], 6)?;
    assert!(err.contains("no answer"), "{err}");

    // A listener that accepts (the kernel's backlog) and never answers: the deadline.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let started = std::time::Instant::now();
    let err = ctl.fails(
        &[
            "probe",
            "--timeout",
            "300ms",
            &format!("http://{}/healthz", silent.local_addr()?),
        ],
        6,
    )?;
    assert!(err.contains("within 300ms"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    drop(silent);

    ctl.fails(&["probe", "https://127.0.0.1:8080/healthz"], 2)?;
    stack.shutdown().await
}
