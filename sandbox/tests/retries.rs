//! Requests that did not run, or reads whose node failed, are sent again (invariants I3 and
//! I5): the client gets the answer, not `-READONLY` or a lost connection.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::{connect, wait_until};
use pivot_proxy::metrics::RetryReason;
use pivot_sandbox::{Stack, StackOptions};
use redis::AsyncCommands;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_readonly_waits_for_the_new_master_and_succeeds() -> Result<()> {
    common::init_tracing();
    let mut stack = Stack::start(StackOptions {
        proxies: vec![],
        ..StackOptions::default()
    })
    .await?;
    // A proxy that does not follow the Sentinels itself while the control plane is down
    // (I6), so that its table goes stale.
    let cp = stack.control_plane.as_ref().context("running")?;
    let mut config = pivot_proxy::Config::for_service(
        stack.topology.master_name(),
        &format!("http://{}", cp.grpc_addr),
    );
    config.sentinel_follow_after = Duration::from_secs(3600);
    let proxy = pivot_sandbox::stack::start_proxy_with(config).await?;
    proxy.wait_ready(T).await?;
    stack.proxies.push(proxy);
    let old = stack.topology.node(0).addr();
    let mut client = connect(&stack.proxies[0].client(), T).await?;
    let _: () = client.set("before", 1).await?;

    // With the control plane down the proxy keeps its table, which names the old master.
    stack.stop_control_plane().await?;
    stack.topology.sentinel_failover().await?;
    let new = stack.topology.wait_for_new_master(old, T).await?;
    // Make the old master a replica now (Sentinel does it about 10 s later): it answers
    // writes with -READONLY, and the proxy still sends them there.
    let old_node = stack.topology.node_by_addr(old).context("old master")?;
    let mut direct = old_node.connection().await?;
    let _: () = redis::cmd("REPLICAOF")
        .arg(new.ip().to_string())
        .arg(new.port())
        .query_async(&mut direct)
        .await?;
    let mut probe = old_node.connection().await?;
    wait_until("the old master to refuse writes", T, || {
        let mut p = probe.clone();
        async move {
            let r: redis::RedisResult<()> = p.set("probe", 1).await;
            let e = r.err()?.to_string().to_ascii_lowercase();
            (e.contains("readonly") || e.contains("read only")).then_some(())
        }
    })
    .await?;
    let _ = &mut probe;

    // A write now: READONLY from the old master, held until the control plane is back and
    // names the new one, then run there. The client only sees OK.
    let write = tokio::spawn({
        let mut c = client.clone();
        async move {
            let started = Instant::now();
            let r: redis::RedisResult<()> = c.set("after", 2).await;
            (r, started.elapsed())
        }
    });
    let readonly = RetryReason::Readonly;
    wait_until("the write to be retried", T, || async {
        (stack.proxies[0].shared.metrics.retries(readonly) > 0).then_some(())
    })
    .await?;
    stack.start_control_plane().await?;
    let (result, took) = tokio::time::timeout(T, write).await??;
    result?;
    eprintln!("write answered READONLY succeeded on the new master after {took:?}");
    let mut on_new = stack
        .topology
        .node_by_addr(new)
        .context("new master")?
        .connection()
        .await?;
    assert_eq!(on_new.get::<_, i64>("after").await?, 2);
    assert!(stack.proxies[0].shared.metrics.retries(readonly) >= 1);
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_on_a_replica_that_dies_are_retried_elsewhere() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let mut writer = connect(&stack.proxies[0].client(), T).await?;
    for i in 0..32 {
        let _: () = writer.set(format!("r:{i}"), i).await?;
    }
    // A connection that never writes reads from the replicas (round-robin over both).
    let mut reader = connect(&stack.proxies[0].client(), T).await?;
    wait_until("the replicas to have the keys", T, || {
        let mut r = reader.clone();
        async move {
            for _ in 0..4 {
                if r.get::<_, Option<i64>>("r:31").await.ok()?? != 31 {
                    return None;
                }
            }
            Some(())
        }
    })
    .await?;
    let stop_at = Instant::now() + Duration::from_secs(4);
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = progress.clone();
    let reads = tokio::spawn(async move {
        let (mut ok, mut errors) = (0u64, Vec::new());
        // Bounded by time and count.
        for i in 0..1_000_000u64 {
            if Instant::now() >= stop_at {
                break;
            }
            // Pipelines of 16, so that some are in flight when the replica dies.
            let mut pipe = redis::pipe();
            for k in 0..16 {
                pipe.get(format!("r:{}", (i * 16 + k) % 32));
            }
            match pipe.query_async::<Vec<i64>>(&mut reader).await {
                Ok(v) if v.len() == 16 => {
                    ok += 1;
                    seen.store(ok, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(v) => errors.push(format!("{} replies", v.len())),
                Err(e) => errors.push(e.to_string()),
            }
        }
        (ok, errors)
    });
    // Kill the replica once reads are flowing.
    wait_until("reads to be flowing", T, || async {
        (progress.load(std::sync::atomic::Ordering::Relaxed) >= 100).then_some(())
    })
    .await?;
    stack.topology.node(1).kill()?;
    let (ok, errors) = reads.await?;
    let failed = stack.proxies[0]
        .shared
        .metrics
        .retries(RetryReason::ReadFailed)
        + stack.proxies[0]
            .shared
            .metrics
            .retries(RetryReason::NotSent);
    eprintln!(
        "{ok} pipelines of 16 reads, {} errors, {failed} reads retried",
        errors.len()
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        failed > 0,
        "no read was retried: the replica's death went unnoticed"
    );
    // The proxy took the dead replica out of its read pool at the first failure, and puts
    // it back once it answers a probe again.
    let metrics = &stack.proxies[0].shared.metrics;
    assert!(metrics.ejections.get() >= 1);
    stack.topology.node(1).restart().await?;
    wait_until("the replica to be readmitted", T, || async {
        (metrics.readmissions.get() >= 1).then_some(())
    })
    .await?;
    stack.shutdown().await
}
