//! The fleet view: a proxy reports its status on the config stream, and the control plane's
//! registry shows its client connections, ops/s and errors while a real load runs through
//! it against real Redis, sees them drop when the clients leave, and shows requests held
//! while the master is frozen.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use common::{connect, wait_until};
use pivot_control_plane::grpc::{ProxyInfo, ProxyRegistry};
use pivot_sandbox::{Stack, StackOptions, TopologyOptions};
use redis::AsyncCommands;

const T: Duration = Duration::from_secs(20);
/// Client connections the test opens.
const CLIENTS: usize = 8;
/// Upper bound of the load: commands per client.
const MAX_COMMANDS_PER_CLIENT: u64 = 200_000;

async fn proxy_where(
    registry: &ProxyRegistry,
    id: &str,
    what: &str,
    check: impl Fn(&ProxyInfo) -> bool,
) -> Result<ProxyInfo> {
    let mut last = None;
    let found = wait_until(what, T, || {
        let p = registry.get(id);
        last.clone_from(&p);
        let ok = p.filter(|p| check(p));
        async move { ok }
    })
    .await;
    found.with_context(|| format!("the registry's last view of {id}: {last:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_shows_connections_ops_errors_and_held_requests() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions {
        proxies: vec![],
        // The master is frozen for a moment below: no failover meanwhile.
        topology: TopologyOptions {
            down_after: Duration::from_secs(10),
            ..TopologyOptions::default()
        },
        ..StackOptions::default()
    })
    .await?;
    let registry = stack.registry()?;
    let cp = stack.control_plane.as_ref().context("running")?;
    let mut config = pivot_proxy::Config::for_service(
        stack.topology.master_name(),
        &format!("http://{}", cp.grpc_addr),
    );
    config.proxy_id = Some("fleet-1".into());
    config.status_interval = Duration::from_millis(200);
    let proxy = pivot_sandbox::stack::start_proxy_with(config).await?;
    proxy.wait_ready(T).await?;
    let id = "fleet-1";

    // The report right after Hello: connected, nobody on it yet.
    let p = proxy_where(&registry, id, "the first status report", |p| {
        p.status_at.is_some()
    })
    .await?;
    assert_eq!(p.client_connections, Some(0), "{p:#?}");
    assert_eq!(p.status_interval, Duration::from_millis(200));
    assert!(p.streams == 1 && !p.silent, "{p:#?}");

    // N clients, each running a bounded mix of writes and reads until told to stop.
    let mut conns = Vec::new();
    for _ in 0..CLIENTS {
        conns.push(connect(&proxy.client(), T).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for (i, conn) in conns.iter().enumerate() {
        let (mut c, stop, done) = (conn.clone(), stop.clone(), done.clone());
        load.push(tokio::spawn(async move {
            let key = format!("fleet:{i}");
            for n in 0..MAX_COMMANDS_PER_CLIENT {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let _: () = c.set(&key, n).await?;
                let _: Option<u64> = c.get(&key).await?;
                done.fetch_add(2, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    // And one error the proxy produces itself.
    let mut c = conns[0].clone();
    let refused: redis::RedisResult<()> =
        redis::cmd("SELECT").arg(100_000).query_async(&mut c).await;
    assert!(refused.is_err(), "SELECT out of range is refused");

    let p = proxy_where(&registry, id, "connections and ops/s under load", |p| {
        p.client_connections == Some(CLIENTS as u64)
            && p.ops_per_sec.is_some_and(|r| r > 0.0)
            && p.reads_per_sec.is_some_and(|r| r > 0.0)
            && p.writes_per_sec.is_some_and(|r| r > 0.0)
            && p.errors_total.is_some_and(|e| e >= 1)
    })
    .await?;
    tracing::info!(
        ops_per_sec = ?p.ops_per_sec,
        reads_per_sec = ?p.reads_per_sec,
        writes_per_sec = ?p.writes_per_sec,
        "under load, as the control plane sees it"
    );
    assert_eq!(p.held_requests, Some(0), "{p:#?}");
    assert_eq!(
        p.running_version,
        Some(*proxy.applied.borrow()),
        "the version it runs: {p:#?}"
    );
    assert!(!p.silent);

    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await??;
    }
    let ran = done.load(Ordering::Relaxed);
    assert!(ran > 0);
    drop(c);
    drop(conns);

    // The clients left and the load stopped: both drop to zero.
    let p = proxy_where(&registry, id, "no connections and no load", |p| {
        p.client_connections == Some(0) && p.ops_per_sec == Some(0.0)
    })
    .await?;
    assert!(
        p.commands_total.is_some_and(|n| n >= ran),
        "{ran} commands ran: {p:#?}"
    );
    tracing::info!(commands = ran, "load done");

    // A frozen master: once the write in flight is older than --backend-stall, the next
    // request is held, and the registry shows it until the master answers again.
    let mut c = connect(&proxy.client(), T).await?;
    let _: () = c.set("fleet:held", 0).await?;
    stack.topology.node(0).pause()?;
    let in_flight = tokio::spawn({
        let mut c = c.clone();
        async move { c.set::<_, _, ()>("fleet:held", 1).await }
    });
    let held = tokio::spawn({
        let mut c = connect(&proxy.client(), T).await?;
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.set::<_, _, ()>("fleet:held", 2).await
        }
    });
    let seen = proxy_where(&registry, id, "a held request", |p| {
        p.held_requests.is_some_and(|n| n >= 1)
    })
    .await;
    stack.topology.node(0).resume()?;
    seen?;
    in_flight.await??;
    held.await??;
    proxy_where(&registry, id, "no held request", |p| {
        p.held_requests == Some(0)
    })
    .await?;
    drop(c);

    proxy.stop().await?;
    proxy_where(&registry, id, "the stream's end", |p| p.streams == 0).await?;
    stack.shutdown().await
}
