//! Control-plane outage: proxies follow the Sentinels themselves (invariant I6), and a
//! proxy started while the control plane is down serves from its on-disk cache (I7).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::{connect, http_json, wait_until};
use futures_util::StreamExt;
use pivot_sandbox::stack::start_proxy_with;
use pivot_sandbox::{Stack, StackOptions};
use redis::AsyncCommands;
use tokio::sync::Mutex;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_follows_a_failover_while_the_control_plane_is_down() -> Result<()> {
    common::init_tracing();
    let mut stack = Stack::start(StackOptions::default()).await?;
    let old = stack.topology.node(0).addr();
    let before = *stack.proxies[0].applied.borrow();
    let shared = stack.proxies[0].shared.clone();
    let mut conn = connect(&stack.proxies[0].client(), Duration::from_secs(30)).await?;
    let _: () = conn.set("before-outage", "kept").await?;

    // When the Sentinels publish `+switch-master` (the first of them).
    let (tx, mut switched) = tokio::sync::mpsc::channel::<Instant>(16);
    let mut subs = Vec::new();
    for s in stack.topology.sentinels() {
        let mut pubsub = s.client().get_async_pubsub().await?;
        pubsub.subscribe("+switch-master").await?;
        let tx = tx.clone();
        subs.push(tokio::spawn(async move {
            let mut messages = pubsub.on_message();
            if messages.next().await.is_some() {
                let _ = tx.send(Instant::now()).await;
            }
        }));
    }

    stack.stop_control_plane().await?;
    let outage_at = Instant::now();
    wait_until("the proxy to follow the Sentinels", T, || {
        let shared = shared.clone();
        async move { (shared.metrics.outage.following.get() == 1).then_some(()) }
    })
    .await?;
    let following_after = outage_at.elapsed();

    // One client writes continuously through the outage and the failover.
    type Entry = (Instant, Instant, u64, Result<(), String>);
    let log: Arc<Mutex<Vec<Entry>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (log, stop) = (log.clone(), stop.clone());
        let mut c = conn.clone();
        tokio::spawn(async move {
            // Bounded: at most 1M writes or until told to stop.
            for i in 0..1_000_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let sent = Instant::now();
                let r: redis::RedisResult<()> = c.set(format!("o:{i}"), i).await;
                log.lock()
                    .await
                    .push((sent, Instant::now(), i, r.map_err(|e| e.to_string())));
            }
        })
    };
    wait_until("writes flowing", T, || {
        let log = log.clone();
        async move { (log.lock().await.len() > 50).then_some(()) }
    })
    .await?;

    stack.topology.node(0).pause()?;
    let frozen_at = Instant::now();
    let new = stack
        .topology
        .wait_for_new_master(old, Duration::from_secs(20))
        .await?;
    let switch_at = tokio::time::timeout(T, switched.recv())
        .await
        .context("no +switch-master seen")?
        .context("subscriptions ended")?;
    // Writes resume on the new master through the proxy, with no control plane.
    let (acked, key) = wait_until(
        "a write sent after the freeze to be acknowledged",
        Duration::from_secs(15),
        || {
            let log = log.clone();
            async move {
                let log = log.lock().await;
                log.iter()
                    .find(|(sent, _, _, r)| *sent > frozen_at && r.is_ok())
                    .map(|(_, acked, i, _)| (*acked, *i))
            }
        },
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    let new_node = stack
        .topology
        .node_by_addr(new)
        .context("new master is a node")?;
    let mut direct = new_node.connection().await?;
    assert_eq!(
        direct.get::<_, Option<u64>>(format!("o:{key}")).await?,
        Some(key),
        "the first write after the freeze is on the new master {new}"
    );
    let table = shared.table.load_full();
    assert_eq!(
        table.master.as_ref().map(ToString::to_string),
        Some(new.to_string())
    );
    assert_eq!(
        table.config_version, before,
        "the control plane's version is kept"
    );
    assert!(table.is_local());
    assert!(shared.metrics.outage.switches.get() >= 1);
    let errors: Vec<String> = log
        .lock()
        .await
        .iter()
        // A write sent before the stall was detectable went to the frozen master and may
        // fail as "may or may not have been applied"; anything later is held.
        .filter(|(sent, _, _, r)| r.is_err() && *sent > frozen_at + Duration::from_millis(250))
        .filter_map(|(_, _, _, r)| r.as_ref().err().cloned())
        .collect();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let proxy_share = if acked >= switch_at {
        format!("+{}", ms(acked - switch_at))
    } else {
        format!("-{}", ms(switch_at - acked))
    };
    eprintln!(
        "outage failover {old} -> {new} without the control plane: following the Sentinels {} \
         after the control plane stopped; from the freeze: +switch-master {}, first write \
         acknowledged {}; from +switch-master: {proxy_share}; {} writes failed after the \
         freeze was detectable",
        ms(following_after),
        ms(switch_at - frozen_at),
        ms(acked - frozen_at),
        errors.len()
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        acked < switch_at + Duration::from_secs(1),
        "writes resumed {proxy_share} after the Sentinels switched"
    );

    // The control plane comes back: its config replaces the proxy's own.
    stack.topology.node(0).resume()?;
    stack.start_control_plane().await?;
    let version = stack.proxies[0]
        .wait_for_version_above(before, Duration::from_secs(20))
        .await?;
    wait_until("the proxy to stop following the Sentinels", T, || {
        let shared = shared.clone();
        async move { (shared.metrics.outage.following.get() == 0).then_some(()) }
    })
    .await?;
    let table = shared.table.load_full();
    assert_eq!(
        table.master.as_ref().map(ToString::to_string),
        Some(new.to_string())
    );
    assert_eq!((table.version, table.config_version), (version, version));
    let url = stack.http_url()?;
    wait_until("the control plane to record the proxy's ACK", T, || {
        let url = url.clone();
        async move {
            let p = http_json(&format!("{url}/api/v1/proxies")).await.ok()?;
            (p["proxies"][0]["acked_version"].as_u64()? >= version).then_some(())
        }
    })
    .await?;
    assert_eq!(conn.get::<_, String>("before-outage").await?, "kept");
    let _: () = conn.set("after-outage", 1).await?;
    assert_eq!(direct.get::<_, u64>("after-outage").await?, 1);
    for s in subs {
        s.abort();
    }
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_without_the_control_plane_serves_from_its_cache() -> Result<()> {
    common::init_tracing();
    let mut stack = Stack::start(StackOptions {
        proxies: Vec::new(),
        ..StackOptions::default()
    })
    .await?;
    let grpc = stack
        .control_plane
        .as_ref()
        .context("control plane")?
        .grpc_addr;
    let cache_dir = tempfile::tempdir()?;
    let mut config =
        pivot_proxy::Config::for_service(stack.topology.master_name(), &format!("http://{grpc}"));
    config.cache_dir = Some(cache_dir.path().to_path_buf());

    let first = start_proxy_with(config.clone()).await?;
    first.wait_ready(Duration::from_secs(20)).await?;
    let version = *first.applied.borrow();
    wait_until("the config to be cached", T, || {
        let shared = first.shared.clone();
        async move { (shared.metrics.outage.cache_writes.get() >= 1).then_some(()) }
    })
    .await?;
    let mut c = connect(&first.client(), T).await?;
    let _: () = c.set("cached", "before").await?;
    drop(c);

    stack.stop_control_plane().await?;
    first.stop().await?;
    let started = Instant::now();
    let second = start_proxy_with(config).await?;
    second.wait_ready(T).await?;
    let ready_after = started.elapsed();
    assert_eq!(*second.applied.borrow(), version, "the cached version");
    assert_eq!(second.shared.metrics.outage.cache_loaded.get(), 1);
    let master = stack.topology.node(0);
    assert_eq!(
        second
            .shared
            .table
            .load()
            .master
            .as_ref()
            .map(ToString::to_string),
        Some(master.addr().to_string())
    );
    let mut c = connect(&second.client(), T).await?;
    assert_eq!(c.get::<_, String>("cached").await?, "before");
    let _: () = c.set("served-from-cache", "yes").await?;
    let mut direct = master.connection().await?;
    assert_eq!(direct.get::<_, String>("served-from-cache").await?, "yes");
    // And it follows the Sentinels meanwhile.
    wait_until("the restarted proxy to follow the Sentinels", T, || {
        let shared = second.shared.clone();
        async move { (shared.metrics.outage.following.get() == 1).then_some(()) }
    })
    .await?;
    eprintln!(
        "a proxy started without the control plane served from its cache (version {version}) \
         {:.1} ms after start",
        ready_after.as_secs_f64() * 1000.0
    );

    // The control plane comes back: its config replaces the cached one.
    stack.start_control_plane().await?;
    let mut second = second;
    let now = second
        .wait_for_version_above(version, Duration::from_secs(20))
        .await?;
    assert!(now > version);
    wait_until("the cache flag to clear", T, || {
        let shared = second.shared.clone();
        async move { (shared.metrics.outage.cache_loaded.get() == 0).then_some(()) }
    })
    .await?;
    assert_eq!(c.get::<_, String>("served-from-cache").await?, "yes");
    second.stop().await?;
    stack.shutdown().await
}

/// Client tasks writing unique keys in the graceful failover case.
const WRITERS: u64 = 4;
/// Upper bound on writes per task (the load stops long before).
const MAX_WRITES_PER_TASK: u64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_following_proxy_follows_the_failover_leader_without_the_control_plane() -> Result<()> {
    common::init_tracing();
    let mut stack = Stack::start(StackOptions::default()).await?;
    let old = stack.topology.node(0).addr();
    let shared = stack.proxies[0].shared.clone();
    let client = stack.proxies[0].client();

    stack.stop_control_plane().await?;
    wait_until("the proxy to follow the Sentinels", T, || {
        let shared = shared.clone();
        async move { (shared.metrics.outage.following.get() == 1).then_some(()) }
    })
    .await?;

    let stop = Arc::new(AtomicBool::new(false));
    // The proxy's routing table over time (polled every millisecond): (when, master).
    type TableChange = (Instant, Option<String>);
    let table_watch = {
        let (shared, stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            let mut log: Vec<TableChange> = Vec::new();
            let mut last = None;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let table = shared.table.load_full();
                if last != Some(table.version) {
                    last = Some(table.version);
                    log.push((
                        Instant::now(),
                        table.master.as_ref().map(ToString::to_string),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            log
        })
    };
    // When a replica first answers ROLE master, asked directly every millisecond
    // (reconnecting: the promotion kills the replica's client connections).
    let role_watch = {
        let stop = stop.clone();
        let clients: Vec<(std::net::SocketAddr, redis::Client)> = stack.topology.nodes()[1..]
            .iter()
            .map(|n| (n.addr(), n.client()))
            .collect();
        tokio::spawn(async move {
            let mut conns: Vec<Option<redis::aio::MultiplexedConnection>> =
                clients.iter().map(|_| None).collect();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for ((addr, client), conn) in clients.iter().zip(conns.iter_mut()) {
                    if conn.is_none() {
                        *conn = connect(client, Duration::from_secs(1)).await.ok();
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    let role: redis::RedisResult<Vec<redis::Value>> =
                        redis::cmd("ROLE").query_async(c).await;
                    match role {
                        Ok(r) if matches!(r.first(), Some(redis::Value::BulkString(b)) if b == b"master") =>
                        {
                            return Some((*addr, Instant::now()));
                        }
                        Ok(_) => {}
                        Err(_) => *conn = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            None
        })
    };

    // The load: a few tasks, one connection each, unique keys `f:{task}:{i}` = i.
    type Entry = (Instant, Instant, u64, Result<(), String>);
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = Vec::new();
    for task in 0..WRITERS {
        let mut c = connect(&client, Duration::from_secs(30)).await?;
        let (stop, acked) = (stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut log: Vec<Entry> = Vec::new();
            for i in 0..MAX_WRITES_PER_TASK {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let sent = Instant::now();
                let r: redis::RedisResult<()> = c.set(format!("f:{task}:{i}"), i).await;
                if r.is_ok() {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                log.push((sent, Instant::now(), i, r.map_err(|e| e.to_string())));
            }
            log
        }));
    }
    wait_until("writes flowing", T, || {
        let acked = acked.clone();
        async move { (acked.load(Ordering::Relaxed) > 300).then_some(()) }
    })
    .await?;

    let failover_at = Instant::now();
    stack.topology.sentinel_failover().await?;
    let new = stack
        .topology
        .wait_for_new_master(old, Duration::from_secs(20))
        .await?;
    let majority_after = failover_at.elapsed();
    let (promoted, promoted_at) = role_watch
        .await?
        .context("no replica answered ROLE master")?;
    assert_eq!(
        promoted, new,
        "the replica that answered master is the one the majority named"
    );
    let at_promotion = acked.load(Ordering::Relaxed);
    wait_until("writes on the new master", T, || {
        let acked = acked.clone();
        async move { (acked.load(Ordering::Relaxed) > at_promotion + 500).then_some(()) }
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for w in writers {
        logs.push(w.await?);
    }
    let table = table_watch.await?;

    // Every acknowledged write is on the final master, with its value.
    let mut direct = stack
        .topology
        .node_by_addr(new)
        .context("new master is a node")?
        .connection()
        .await?;
    let mut acknowledged = 0usize;
    let mut lost: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for (task, log) in logs.iter().enumerate() {
        let ok: Vec<u64> = log
            .iter()
            .filter(|(_, _, _, r)| r.is_ok())
            .map(|(_, _, i, _)| *i)
            .collect();
        errors.extend(
            log.iter()
                .filter_map(|(_, _, _, r)| r.as_ref().err().cloned()),
        );
        acknowledged += ok.len();
        for chunk in ok.chunks(1000) {
            let keys: Vec<String> = chunk.iter().map(|i| format!("f:{task}:{i}")).collect();
            let values: Vec<Option<u64>> = direct.mget(&keys).await?;
            for ((k, i), v) in keys.iter().zip(chunk).zip(values) {
                if v != Some(*i) {
                    lost.push(k.clone());
                }
            }
        }
    }
    let mut acks: Vec<Instant> = logs
        .iter()
        .flatten()
        .filter(|(_, _, _, r)| r.is_ok())
        .map(|(_, a, _, _)| *a)
        .collect();
    acks.sort();
    let first_after = acks
        .iter()
        .find(|a| **a > promoted_at)
        .context("no write acknowledged after the promotion")?;
    let resumed_after_promotion = *first_after - promoted_at;
    let longest_pause = acks
        .windows(2)
        .filter(|w| w[1] > failover_at)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let held_at = table
        .iter()
        .find(|(t, m)| *t > failover_at && m.is_none())
        .map(|(t, _)| *t);
    let switched_at = table
        .iter()
        .find(|(_, m)| m.as_deref() == Some(&new.to_string()))
        .map(|(t, _)| *t);
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let rel = |t: Option<Instant>, from: Instant| {
        t.map(|t| {
            if t >= from {
                format!("+{}", ms(t - from))
            } else {
                format!("-{}", ms(from - t))
            }
        })
        .unwrap_or_else(|| "never".into())
    };
    eprintln!(
        "graceful failover {old} -> {new} with the control plane down: {acknowledged} writes \
         acknowledged by {WRITERS} clients, {} lost, {} errors {:?}\n  \
         from SENTINEL FAILOVER: proxy holds writes {}, {new} answers ROLE master {}, \
         majority names it {}\n  \
         from ROLE master: proxy routes to {new} {}, first write acknowledged +{}\n  \
         longest pause between acknowledgements during the failover: {}",
        lost.len(),
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>(),
        rel(held_at, failover_at),
        rel(Some(promoted_at), failover_at),
        ms(majority_after),
        rel(switched_at, promoted_at),
        ms(resumed_after_promotion),
        ms(longest_pause),
    );
    assert!(
        lost.is_empty(),
        "{} of {acknowledged} acknowledged writes are not on the final master {new}: {:?}",
        lost.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );
    assert!(
        errors.is_empty(),
        "writes failed during a graceful failover: {errors:?}"
    );
    assert!(held_at.is_some(), "the proxy never held writes: {table:?}");
    assert!(shared.table.load().is_local(), "the proxy's own table");
    // Pivot's share of the write unavailability: under 100 ms from the promotion.
    assert!(
        resumed_after_promotion < Duration::from_millis(100),
        "writes resumed {resumed_after_promotion:?} after the promotion"
    );
    stack.shutdown().await
}
