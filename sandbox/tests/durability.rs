//! Per-service failover settings from the control plane: `write_ack = replicas(N)` (a write
//! is acknowledged only once N replicas have it) and `failover_hold`.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::connect;
use pivot_control_plane::{Actor, Policy, WriteAck};
use pivot_sandbox::{Stack, StackOptions};
use redis::AsyncCommands;

const T: Duration = Duration::from_secs(15);

async fn set_policy(stack: &mut Stack, policy: Policy) -> Result<()> {
    let service = stack.topology.master_name().to_string();
    let v = stack
        .admin()?
        .set_policy(&Actor::config(), &service, policy)
        .await?
        .context("no new version")?;
    for p in &mut stack.proxies {
        p.wait_for_version_above(v - 1, T).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_ack_replicas_holds_replies_until_replicas_have_the_write() -> Result<()> {
    common::init_tracing();
    let mut stack = Stack::start(StackOptions::default()).await?;
    let service = stack.topology.master_name().to_string();
    let base = stack.admin()?.policy(&service)?;
    set_policy(
        &mut stack,
        Policy {
            write_ack: WriteAck::Replicas(2),
            ..base.clone()
        },
    )
    .await?;
    let mut c = connect(&stack.proxies[0].client(), T).await?;
    let mut r1 = stack.topology.node(1).connection().await?;
    let mut r2 = stack.topology.node(2).connection().await?;
    // Every acknowledged write is already on both replicas when the client hears of it.
    let started = Instant::now();
    const N: usize = 200;
    for i in 0..N {
        let key = format!("acked:{i}");
        let _: () = c.set(&key, i).await?;
        assert_eq!(
            r1.get::<_, Option<usize>>(&key).await?,
            Some(i),
            "{key} on replica 1"
        );
        assert_eq!(
            r2.get::<_, Option<usize>>(&key).await?,
            Some(i),
            "{key} on replica 2"
        );
    }
    eprintln!(
        "{N} writes with write_ack replicas(2): {:.0} µs each (with two replica reads)",
        started.elapsed().as_secs_f64() * 1e6 / N as f64
    );
    // Pipelined writes share rounds (one WAIT covers many).
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.set(format!("piped:{i}"), i).ignore();
    }
    pipe.get("piped:499");
    let (last,): (i64,) = pipe.query_async(&mut c).await?;
    assert_eq!(last, 499);
    assert_eq!(r2.get::<_, Option<i64>>("piped:499").await?, Some(499));
    // A transaction is acknowledged as a whole.
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .incr("tx:a", 1)
        .incr("tx:b", 1)
        .query_async(&mut c)
        .await?;
    assert_eq!((a, b), (1, 1));
    assert_eq!(r1.get::<_, Option<i64>>("tx:b").await?, Some(1));

    // One replica frozen: two acknowledgements cannot happen; the write ran on the master,
    // and the client is told it is not durable.
    stack.topology.node(2).pause()?;
    let started = Instant::now();
    let err = c
        .set::<_, _, ()>("unacked", 1)
        .await
        .err()
        .context("a write acknowledged by one replica of two was answered OK")?;
    let waited = started.elapsed();
    eprintln!("with a replica frozen: {err} after {waited:?}");
    assert!(err.to_string().contains("NOREPLICAS"), "{err}");
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert_eq!(r1.get::<_, Option<i64>>("unacked").await?, Some(1));
    assert!(stack.proxies[0].shared.metrics.write_ack_failures.get() >= 1);
    stack.topology.node(2).resume()?;
    // replicas(1) is satisfied by the other replica even while one is frozen.
    set_policy(
        &mut stack,
        Policy {
            write_ack: WriteAck::Replicas(1),
            ..base
        },
    )
    .await?;
    stack.topology.node(2).pause()?;
    let _: () = c.set("one-is-enough", 1).await?;
    assert_eq!(r1.get::<_, Option<i64>>("one-is-enough").await?, Some(1));
    stack.topology.node(2).resume()?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_failover_hold_bounds_how_long_writes_wait() -> Result<()> {
    common::init_tracing();
    let mut stack = Stack::start(StackOptions::default()).await?;
    let service = stack.topology.master_name().to_string();
    let base = stack.admin()?.policy(&service)?;
    set_policy(
        &mut stack,
        Policy {
            failover_hold: Some(Duration::from_millis(400)),
            ..base
        },
    )
    .await?;
    let mut c = connect(&stack.proxies[0].client(), T).await?;
    let _: () = c.set("k", 1).await?;
    // A frozen master: a write in flight at the freeze makes the stall detectable 250 ms
    // (--backend-stall) later; from then on requests for the master are held, for the
    // service's 400 ms instead of the proxy's 10 s, well before Sentinel fails over.
    stack.topology.node(0).pause()?;
    let frozen_at = Instant::now();
    let in_flight = tokio::spawn({
        let mut c = c.clone();
        async move { c.set::<_, _, ()>("in-flight", 1).await }
    });
    // The stall rule is a time bound: past it, the next request is held.
    tokio::time::sleep_until((frozen_at + Duration::from_millis(300)).into()).await;
    let mut fresh = connect(&stack.proxies[0].client(), T).await?;
    let started = Instant::now();
    let held: redis::RedisResult<()> = fresh.set("held", 1).await;
    let waited = started.elapsed();
    stack.topology.node(0).resume()?;
    let err = held
        .err()
        .context("a held write succeeded on a frozen master")?;
    eprintln!("held write: {err} after {waited:?}");
    assert_eq!(
        err.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain),
        "{err}"
    );
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    assert!(stack.proxies[0].shared.metrics.stall_detections.get() >= 1);
    let _ = tokio::time::timeout(T, in_flight).await;
    stack.shutdown().await
}
