//! The proxy's data path against real Redis and Sentinels: commands reach the right node,
//! reads spread over replicas per the read policy, pipelines answer in order, and bad input
//! gets a clear error.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{calls, connect, http_json, http_status, raw_exchange, reset_stats, wait_until};
use pivot_control_plane::ReadPolicy;
use pivot_sandbox::{Stack, StackOptions};
use redis::AsyncCommands;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_the_master_and_every_command_works() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let proxy = &stack.proxies[0];
    let mut c = connect(&proxy.client(), T).await?;

    let _: () = c.set("k", "v").await?;
    assert_eq!(c.get::<_, String>("k").await?, "v");
    assert_eq!(c.incr::<_, _, i64>("n", 1).await?, 1);
    assert_eq!(c.incr::<_, _, i64>("n", 5).await?, 6);
    assert_eq!(c.lpush::<_, _, i64>("l", &["a", "b"]).await?, 2);
    assert_eq!(c.hset::<_, _, _, i64>("h", "f", "x").await?, 1);
    assert!(c.expire::<_, bool>("l", 100).await?);
    assert_eq!(c.sadd::<_, _, i64>("s", "m").await?, 1);
    assert_eq!(c.zadd::<_, _, _, i64>("z", "m", 1.5).await?, 1);
    assert_eq!(c.del::<_, i64>("k").await?, 1);

    // Every write landed on the master the Sentinels name.
    let master_addr = stack.topology.sentinel_master().await?;
    let master = stack
        .topology
        .node_by_addr(master_addr)
        .expect("master is a node");
    let mut m = master.connection().await?;
    assert_eq!(m.get::<_, Option<String>>("k").await?, None);
    assert_eq!(m.get::<_, i64>("n").await?, 6);
    assert_eq!(
        m.lrange::<_, Vec<String>>("l", 0, -1).await?,
        vec!["b", "a"]
    );
    assert_eq!(m.hget::<_, _, String>("h", "f").await?, "x");
    let ttl: i64 = m.ttl("l").await?;
    assert!((1..=100).contains(&ttl), "ttl {ttl}");
    assert!(m.sismember::<_, _, bool>("s", "m").await?);
    assert_eq!(m.zscore::<_, _, f64>("z", "m").await?, 1.5);

    // Commands the proxy answers itself.
    assert_eq!(
        redis::cmd("PING").query_async::<String>(&mut c).await?,
        "PONG"
    );
    assert_eq!(
        redis::cmd("ECHO")
            .arg("hi")
            .query_async::<String>(&mut c)
            .await?,
        "hi"
    );
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("app1")
        .query_async(&mut c)
        .await?;
    assert_eq!(
        redis::cmd("CLIENT")
            .arg("GETNAME")
            .query_async::<String>(&mut c)
            .await?,
        "app1"
    );
    let _: () = redis::cmd("SELECT").arg(0).query_async(&mut c).await?;

    // WAIT counts the replicas that have this client's writes (see ack.rs).
    let replicas: i64 = redis::cmd("WAIT").arg(1).arg(0).query_async(&mut c).await?;
    assert!(replicas >= 1, "{replicas}");
    // Refused with a clear error, and the connection stays usable.
    let err = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10)
        .query_async::<()>(&mut c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not supported"), "{err}");
    let err = redis::cmd("SELECT")
        .arg(99)
        .query_async::<()>(&mut c)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("DB index is out of range"),
        "{err}"
    );
    // Pub/Sub introspection goes to the master.
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query_async(&mut c)
        .await?;
    // The Sentinels' own hello channel on the master.
    assert!(
        channels.iter().any(|c| c == "__sentinel__:hello"),
        "{channels:?}"
    );
    // Subscribing works (fidelity.rs tests Pub/Sub in depth).
    let out = raw_exchange(proxy.addr, b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n", 31).await?;
    assert_eq!(out, b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
    // Unknown commands go to the master, which answers as Redis does.
    let err = redis::cmd("NOSUCHCOMMAND")
        .query_async::<()>(&mut c)
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("unknown command"),
        "{err}"
    );
    // Errors from Redis pass through untouched.
    let err = c.incr::<_, _, i64>("h", 1).await.unwrap_err();
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    assert_eq!(c.get::<_, i64>("n").await?, 6);

    // The proxy reports what it served.
    let metrics = reqwest::get(format!("http://{}/metrics", proxy.admin_addr))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains(r#"pivot_proxy_commands_total{class="write",target="master"}"#),
        "{metrics}"
    );
    assert_eq!(
        http_status(&format!("http://{}/readyz", proxy.admin_addr)).await?,
        200
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commands_and_protocol_errors() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let addr = stack.proxies[0].addr;

    // telnet / nc style.
    let out = raw_exchange(
        addr,
        b"PING\r\nSET greeting \"hello world\"\r\nGET greeting\r\n",
        31,
    )
    .await?;
    assert_eq!(out, b"+PONG\r\n+OK\r\n$11\r\nhello world\r\n");

    // A malformed request after a good one: the good one is answered, then the error, then
    // the connection closes (the stream cannot be resynchronised).
    let out = raw_exchange(addr, b"*1\r\n$4\r\nPING\r\n*1\r\n:5\r\n", 1000).await?;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("+PONG\r\n-ERR Protocol error: expected '$', got ':'"),
        "{text}"
    );

    // Oversized bulk length.
    let out = raw_exchange(addr, b"*2\r\n$3\r\nGET\r\n$99999999999\r\n", 1000).await?;
    assert!(
        String::from_utf8_lossy(&out).contains("invalid bulk length"),
        "{out:?}"
    );

    // A value larger than a read arrives in pieces and round-trips intact.
    let big = "x".repeat(3 * 1024 * 1024 + 17);
    let mut c = connect(&stack.proxies[0].client(), T).await?;
    let _: () = c.set("big", &big).await?;
    assert_eq!(c.get::<_, String>("big").await?, big);

    // Empty multibulk is ignored, as Redis does.
    let out = raw_exchange(addr, b"*0\r\n*1\r\n$4\r\nPING\r\n", 7).await?;
    assert_eq!(out, b"+PONG\r\n");

    // QUIT answers OK and closes.
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"QUIT\r\nPING\r\n").await?;
    let mut buf = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut buf)).await??;
    assert_eq!(buf, b"+OK\r\n");
    stack.shutdown().await
}

/// Runs `n` GETs, each on a fresh connection, and returns how many each node served.
async fn fresh_connection_gets(stack: &Stack, n: usize) -> Result<(u64, u64)> {
    for node in stack.topology.nodes() {
        reset_stats(node).await?;
    }
    for _ in 0..n {
        let out = raw_exchange(
            stack.proxies[0].addr,
            b"*2\r\n$3\r\nGET\r\n$4\r\nseed\r\n",
            9,
        )
        .await?;
        assert_eq!(out, b"$3\r\nabc\r\n");
    }
    let master = calls(stack.topology.node(0), "get").await?;
    let mut replicas = 0;
    for node in &stack.topology.nodes()[1..] {
        replicas += calls(node, "get").await?;
    }
    Ok((master, replicas))
}

async fn seed(stack: &Stack) -> Result<()> {
    let mut m = stack.topology.node(0).connection().await?;
    let _: () = m.set("seed", "abc").await?;
    for node in &stack.topology.nodes()[1..] {
        let mut r = node.connection().await?;
        wait_until("seed replicated", T, || {
            let mut r = r.clone();
            async move {
                (r.get::<_, Option<String>>("seed").await.ok()?.as_deref() == Some("abc"))
                    .then_some(())
            }
        })
        .await?;
        let _ = &mut r;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_spread_over_replicas() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    seed(&stack).await?;
    let (master, replicas) = fresh_connection_gets(&stack, 300).await?;
    eprintln!("policy replicas: master served {master}, replicas {replicas} of 300 GETs");
    assert!(
        replicas >= 270,
        "replicas served {replicas} of 300, master {master}"
    );
    // Both replicas take a share (round-robin).
    for node in &stack.topology.nodes()[1..] {
        assert!(
            calls(node, "get").await? >= 100,
            "{} got too few",
            node.addr()
        );
    }
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_only_policy_sends_no_reads_to_replicas() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions {
        read_policy: Some(ReadPolicy::MasterOnly),
        ..StackOptions::default()
    })
    .await?;
    seed(&stack).await?;
    let (master, replicas) = fresh_connection_gets(&stack, 300).await?;
    eprintln!("policy master-only: master served {master}, replicas {replicas} of 300 GETs");
    assert_eq!(replicas, 0);
    assert_eq!(master, 300);
    let policy = http_json(&format!(
        "{}/api/v1/services/mymaster/policy",
        stack.http_url()?
    ))
    .await?;
    assert_eq!(policy["read_policy"], "master-only", "{policy}");
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_answer_in_order_across_backends() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    // Distinct values, replicated before a read-only connection reads them.
    let mut m = stack.topology.node(0).connection().await?;
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.set(format!("p:{i}"), format!("value-{i}")).ignore();
    }
    let _: () = pipe.query_async(&mut m).await?;
    for node in &stack.topology.nodes()[1..] {
        let r = node.connection().await?;
        wait_until("keys replicated", T, || {
            let mut r = r.clone();
            async move { (!r.get::<_, Option<String>>("p:999").await.ok()??.is_empty()).then_some(()) }
        })
        .await?;
    }
    for node in stack.topology.nodes() {
        reset_stats(node).await?;
    }

    // 1,000 reads on one connection, spread over both replicas: replies in request order.
    let mut c = connect(&stack.proxies[0].client(), T).await?;
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.get(format!("p:{i}"));
    }
    let values: Vec<String> = pipe.query_async(&mut c).await?;
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v, &format!("value-{i}"));
    }
    let r1 = calls(stack.topology.node(1), "get").await?;
    let r2 = calls(stack.topology.node(2), "get").await?;
    assert!(r1 >= 400 && r2 >= 400, "reads spread {r1}/{r2}");

    // 1,000 mixed reads and writes on one connection: every reply correct and in order.
    let mut c = connect(&stack.proxies[0].client(), T).await?;
    let mut pipe = redis::pipe();
    for i in 0..250 {
        pipe.set(format!("mix:{i}"), i)
            .get(format!("mix:{i}"))
            .incr("mix:counter", 1)
            .lpush("mix:list", i);
    }
    let replies: Vec<redis::Value> = pipe.query_async(&mut c).await?;
    assert_eq!(replies.len(), 1000);
    for i in 0..250usize {
        let at = |k: usize| &replies[4 * i + k];
        assert_eq!(at(0), &redis::Value::Okay, "SET {i}");
        assert_eq!(
            redis::from_redis_value_ref::<i64>(at(1))?,
            i as i64,
            "GET {i}"
        );
        assert_eq!(
            redis::from_redis_value_ref::<i64>(at(2))?,
            i as i64 + 1,
            "INCR {i}"
        );
        assert_eq!(
            redis::from_redis_value_ref::<i64>(at(3))?,
            i as i64 + 1,
            "LPUSH {i}"
        );
    }
    stack.shutdown().await
}

/// The configuration of a proxy besides the stack's, for `service`, on ephemeral ports.
fn another_proxy(stack: &Stack, service: &str) -> pivot_proxy::Config {
    let cp = stack.control_plane.as_ref().expect("running");
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = pivot_proxy::Config::for_service(service, &format!("http://{}", cp.grpc_addr));
    config.listen = any;
    config.admin_listen = any;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_is_nacked_and_not_ready() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let mut config = another_proxy(&stack, "nosuchservice");
    config.failover_hold = Duration::from_millis(300);
    let stray = pivot_sandbox::stack::start_proxy_with(config).await?;
    let url = format!("{}/api/v1/proxies", stack.http_url()?);
    let nack = wait_until("the NACK to show in the API", T, || {
        let url = url.clone();
        async move {
            let doc = http_json(&url).await.ok()?;
            doc["proxies"].as_array()?.iter().find_map(|p| {
                let services = p["services"].as_array()?;
                (services.first()?.as_str()? == "nosuchservice")
                    .then(|| p["last_nack"].as_str().map(str::to_string))
                    .flatten()
            })
        }
    })
    .await?;
    assert!(nack.contains("not known"), "{nack}");
    assert_eq!(
        http_status(&format!("http://{}/readyz", stray.admin_addr)).await?,
        503
    );
    // Its clients' requests wait for a master (--failover-hold), then get a clear error.
    let out = raw_exchange(stray.addr, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", 10).await?;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("-TRYAGAIN pivot: no usable master"),
        "{text}"
    );
    stray.stop().await?;
    stack.shutdown().await
}

/// With `--shutdown-delay`, a stopping proxy says it is not ready but goes on serving
/// (new clients included) for the delay, and only then closes its listener: a load
/// balancer polling `/readyz` stops sending clients before any is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delay_serves_while_not_ready() -> Result<()> {
    const DELAY: Duration = Duration::from_secs(5);
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let mut config = another_proxy(&stack, "mymaster");
    config.shutdown_delay = DELAY;
    config.proxy_id = Some("draining-proxy".into());
    // Longer than the test: only the report sent when the shutdown begins can tell the
    // control plane.
    config.status_interval = Duration::from_secs(60);
    let proxy = pivot_sandbox::stack::start_proxy_with(config).await?;
    proxy.wait_ready(T).await?;
    let readyz = format!("http://{}/readyz", proxy.admin_addr);
    assert_eq!(http_status(&readyz).await?, 200);
    let mut before = connect(&proxy.client(), T).await?;

    let asked = std::time::Instant::now();
    proxy.begin_stop();
    let body = wait_until("/readyz to answer 503", T, || {
        let url = readyz.clone();
        async move {
            let resp = reqwest::get(&url).await.ok()?;
            (resp.status().as_u16() == 503).then_some(())?;
            resp.text().await.ok()
        }
    })
    .await?;
    assert!(body.contains("shutting down"), "{body}");
    let status = http_json(&format!("http://{}/status", proxy.admin_addr)).await?;
    assert_eq!(status["draining"], true, "{status}");
    // The control plane hears it at once (not at the next status period), and says so.
    let proxies = format!("{}/api/v1/proxies", stack.http_url()?);
    wait_until(
        "the control plane to show the proxy draining",
        DELAY,
        || {
            let url = proxies.clone();
            async move {
                let doc = http_json(&url).await.ok()?;
                doc["proxies"].as_array()?.iter().find(|p| {
                    p["proxy_id"] == "draining-proxy"
                        && p["draining"] == true
                        && p["connected"] == true
                })?;
                Some(())
            }
        },
    )
    .await?;
    // Still serving, existing clients and new ones.
    let _: () = before.set("during-delay", "1").await?;
    let mut after = connect(&proxy.client(), T).await?;
    assert_eq!(after.get::<_, String>("during-delay").await?, "1");
    assert!(
        asked.elapsed() < DELAY,
        "the checks above took longer than the delay: {:?}",
        asked.elapsed()
    );

    let addr = proxy.addr;
    tokio::time::timeout(DELAY + T, proxy.stop()).await??;
    assert!(
        asked.elapsed() >= DELAY,
        "stopped before the delay was over: {:?}",
        asked.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is still open after the shutdown"
    );
    stack.shutdown().await
}

/// The real binary: a first SIGTERM starts the drain (`--shutdown-delay`), a second one ends
/// the process at once instead of waiting the delay out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_drain() -> Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    common::init_tracing();
    let bin = pivot_sandbox::fleet::test_binary(
        "pivot-proxy",
        "pivot-proxy",
        "libpivot_proxy-",
        "PIVOT_PROXY_BIN",
    )?;
    // No control plane needed: the proxy starts, serves its admin listener and retries the
    // config stream. Ports are the kernel's: free ones, found by binding and releasing.
    let free = || -> Result<std::net::SocketAddr> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
    };
    let (listen, admin, grpc) = (free()?, free()?, free()?);
    let mut child = tokio::process::Command::new(bin)
        .args(["--service", "mymaster", "--shutdown-delay", "60s"])
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--admin-listen")
        .arg(admin.to_string())
        .arg("--control-plane")
        .arg(format!("http://{grpc}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = Pid::from_raw(i32::try_from(child.id().context("no pid")?)?);
    let healthz = format!("http://{admin}/healthz");
    wait_until("the proxy's admin listener", T, || {
        let url = healthz.clone();
        async move { (http_status(&url).await.ok()? == 200).then_some(()) }
    })
    .await?;

    kill(pid, Signal::SIGTERM)?;
    let readyz = format!("http://{admin}/readyz");
    wait_until("/readyz to say shutting down", T, || {
        let url = readyz.clone();
        async move {
            let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
            body.contains("shutting down").then_some(())
        }
    })
    .await?;
    // Draining: it would serve on for a minute.
    assert!(child.try_wait()?.is_none(), "exited on the first signal");

    kill(pid, Signal::SIGTERM)?;
    let status = tokio::time::timeout(T, child.wait())
        .await
        .context("still running 10 s after the second signal")??;
    assert_eq!(status.code(), Some(1), "{status}");
    Ok(())
}
