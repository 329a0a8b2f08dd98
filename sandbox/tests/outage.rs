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
