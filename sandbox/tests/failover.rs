//! Failover end to end: a frozen master, the control plane going away and coming back, and
//! how fast a Sentinel event reaches a proxy.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::{connect, http_json, http_status, wait_until};
use futures_util::StreamExt;
use pivot_sandbox::{Stack, StackOptions};
use redis::AsyncCommands;
use tokio::sync::Mutex;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_sigstopped_master_and_none_reach_it_after() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let down_after = stack.topology.options().down_after;
    let old = stack.topology.node(0).addr();
    assert_eq!(stack.topology.sentinel_master().await?, old);

    // One client connection writes continuously, before, during and after the failover.
    let mut conn = connect(&stack.proxies[0].client(), Duration::from_secs(30)).await?;
    // (sent at, answered at, key index, result)
    type Entry = (Instant, Instant, u64, Result<(), String>);
    let log: Arc<Mutex<Vec<Entry>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (log, stop) = (log.clone(), stop.clone());
        let mut c = conn.clone();
        tokio::spawn(async move {
            // Bounded: at most 100k writes or until told to stop.
            for i in 0..100_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let sent = Instant::now();
                let r: redis::RedisResult<()> = c.set(format!("w:{i}"), i).await;
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
    // SIGSTOP is delivered by the time kill(2) returns: nothing sent after this instant can
    // be answered by the old master.
    let frozen_at = Instant::now();
    // A client that connects and writes during the failover, once the proxy can tell the
    // master has stopped answering (its oldest request older than --backend-stall,
    // 250 ms; the writer above has one in flight): the write is held, not sent to the
    // frozen master, and succeeds on the promoted one.
    tokio::time::sleep_until((frozen_at + Duration::from_millis(500)).into()).await;
    let late_writer = {
        let client = stack.proxies[0].client();
        tokio::spawn(async move {
            let mut c = connect(&client, Duration::from_secs(30)).await?;
            let sent = Instant::now();
            let r: () = c.set("issued-during-failover", "held").await?;
            anyhow::Ok((r, sent.elapsed()))
        })
    };
    let new = stack
        .topology
        .wait_for_new_master(old, Duration::from_secs(20))
        .await?;
    let new_node = stack
        .topology
        .node_by_addr(new)
        .context("new master is a node")?;
    let promoted_after = frozen_at.elapsed();

    // The first write sent after the freeze that was acknowledged: it is on the promoted node.
    let mut direct = new_node.connection().await?;
    let first_ok = wait_until(
        "a write to succeed on the promoted master",
        down_after + Duration::from_secs(5),
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
    let resumed_after = first_ok.0 - frozen_at;
    let key = format!("w:{}", first_ok.1);
    let on_new: Option<u64> = direct.get(&key).await?;
    assert_eq!(
        on_new,
        Some(first_ok.1),
        "{key} is on the promoted master {new}"
    );
    assert!(
        resumed_after <= down_after + Duration::from_secs(5),
        "writes resumed {resumed_after:?} after the freeze"
    );
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    let errors: Vec<String> = log
        .lock()
        .await
        .iter()
        .filter_map(|(_, _, _, r)| r.as_ref().err().cloned())
        .collect();
    eprintln!(
        "failover: promoted after {promoted_after:?}, writes resumed on {new} after {resumed_after:?}, \
         {} client errors: {errors:?}",
        errors.len()
    );
    // Only a write that was in flight to the frozen master may fail, and it says so.
    for e in &errors {
        assert!(e.contains("may or may not have been applied"), "{e}");
    }
    let failed_after_freeze = log
        .lock()
        .await
        .iter()
        // Sent before the stall was detectable (--backend-stall after the freeze), a write
        // went to the frozen master and may fail; anything later is held and must not.
        .filter(|(sent, _, _, r)| r.is_err() && *sent > frozen_at + Duration::from_millis(250))
        .count();
    assert_eq!(
        failed_after_freeze, 0,
        "writes issued during the failover must not fail"
    );
    let ((), held_for) = late_writer.await??;
    assert_eq!(
        direct.get::<_, String>("issued-during-failover").await?,
        "held"
    );
    eprintln!("a write issued during the failover was held {held_for:?} and succeeded");
    let metrics = reqwest::get(format!("http://{}/metrics", stack.proxies[0].admin_addr))
        .await?
        .text()
        .await?;
    assert!(
        !metrics.contains("pivot_proxy_held_requests_total 0"),
        "{metrics}"
    );

    // The old master comes back believing it is master (for ~10 s). 500 writes sent at
    // once right now must all land on the new master.
    stack.topology.node(0).resume()?;
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.set(format!("after:{i}"), i).ignore();
    }
    let _: () = pipe.query_async(&mut conn).await?;
    stack
        .topology
        .wait_for_replica_of(old, new, Duration::from_secs(30))
        .await?;
    let keys: Vec<String> = (0..500).map(|i| format!("after:{i}")).collect();
    let values: Vec<Option<u64>> = direct.mget(&keys).await?;
    let missing: Vec<&String> = keys
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of 500 writes are not on the new master: {missing:?}",
        missing.len()
    );
    for (i, v) in values.iter().enumerate() {
        assert_eq!(*v, Some(i as u64));
    }
    // The same connection still works.
    assert_eq!(conn.get::<_, u64>("after:499").await?, 499);

    // The control plane recorded the failover.
    let events = http_json(&format!(
        "{}/api/v1/events?service=mymaster",
        stack.http_url()?
    ))
    .await?;
    let changed = events["events"]
        .as_array()
        .context("events")?
        .iter()
        .any(|e| e["kind"] == "master-changed" && e["new_master"] == new.to_string());
    assert!(changed, "{events}");
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_keeps_serving_without_the_control_plane_and_resubscribes() -> Result<()> {
    common::init_tracing();
    let mut stack = Stack::start(StackOptions::default()).await?;
    let before = *stack.proxies[0].applied.borrow();
    let mut c = connect(&stack.proxies[0].client(), T).await?;
    let _: () = c.set("cp", "one").await?;

    stack.stop_control_plane().await?;
    // Serving goes on with the last snapshot.
    for i in 0..100 {
        let _: () = c.set(format!("outage:{i}"), i).await?;
    }
    assert_eq!(c.get::<_, u64>("outage:99").await?, 99);
    let mut fresh = connect(&stack.proxies[0].client(), T).await?;
    assert_eq!(fresh.get::<_, String>("cp").await?, "one");
    assert_eq!(
        http_status(&format!("http://{}/readyz", stack.proxies[0].admin_addr)).await?,
        200
    );

    // The control plane comes back while no Sentinel answers (all frozen), so it cannot
    // decide on a master. The proxy reconnects to it meanwhile and must keep its master:
    // writes go on throughout, none fails.
    for s in stack.topology.sentinels() {
        s.pause()?;
    }
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let mut c = c.clone();
        let writing = writing.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            // Bounded: stops when told, or after 500k writes.
            while writing.load(Ordering::Relaxed) && n < 500_000 {
                let r: redis::RedisResult<()> = c.set("restart:last", n).await;
                r.map_err(|e| anyhow::anyhow!("write {n} during the restart failed: {e}"))?;
                n += 1;
            }
            anyhow::Ok(n)
        })
    };
    stack.start_control_plane().await?;
    let url = stack.http_url()?;
    // Reconnected (the proxy's backoff is at most 5 s), and the control plane has tried
    // and failed to decide (its first decision waits at most 2 s for the Sentinels).
    wait_until(
        "the proxy to reconnect to the undecided control plane",
        Duration::from_secs(15),
        || {
            let url = url.clone();
            async move {
                let p = http_json(&format!("{url}/api/v1/proxies")).await.ok()?;
                let t = http_json(&format!("{url}/api/v1/topology")).await.ok()?;
                let connected = p["proxies"]
                    .as_array()?
                    .iter()
                    .any(|p| p["connected"] == true);
                let reason = t["services"][0]["master_reason"].as_str()?.to_string();
                (connected
                    && t["services"][0]["decided"] == false
                    && reason.starts_with("no master known"))
                .then_some(())
            }
        },
    )
    .await?;
    assert_eq!(
        *stack.proxies[0].applied.borrow(),
        before,
        "nothing was published"
    );
    assert!(stack.proxies[0].shared.table.load().master.is_some());
    for s in stack.topology.sentinels() {
        s.resume()?;
    }
    // Now it decides, with versions above those before its restart, and the proxy applies it.
    let topo = wait_until("the control plane's first decision", T, || {
        let url = url.clone();
        async move {
            let t = http_json(&format!("{url}/api/v1/topology")).await.ok()?;
            (t["services"][0]["decided"] == true).then_some(t)
        }
    })
    .await?;
    let current = topo["version"].as_u64().context("version")?;
    assert!(
        current > before,
        "cp version {current} after restart, {before} before"
    );
    let applied = stack.proxies[0]
        .wait_for_version_above(current - 1, T)
        .await?;
    assert!(applied >= current, "applied {applied}, cp {current}");
    writing.store(false, Ordering::Relaxed);
    let writes = writer.await??;
    eprintln!("{writes} writes during the control plane restart, none failed");
    let proxies = http_json(&format!("{url}/api/v1/proxies")).await?;
    let acked = proxies["proxies"][0]["acked_version"]
        .as_u64()
        .context("acked")?;
    assert!(acked >= current, "{proxies}");
    assert_eq!(c.get::<_, String>("cp").await?, "one");
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_event_reaches_the_proxy_within_100ms() -> Result<()> {
    common::init_tracing();
    let mut stack = Stack::start(StackOptions::default()).await?;
    let replica = stack.topology.node(2).addr();
    let needle = format!("slave {replica}");

    // Our own subscription to every Sentinel: the moment the first one publishes `+sdown`
    // for the replica is the event's time.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(16);
    let mut subs = Vec::new();
    for s in stack.topology.sentinels() {
        let mut pubsub = s.client().get_async_pubsub().await?;
        pubsub.subscribe("+sdown").await?;
        let (tx, needle) = (tx.clone(), needle.clone());
        subs.push(tokio::spawn(async move {
            let mut messages = pubsub.on_message();
            while let Some(m) = messages.next().await {
                let payload: String = m.get_payload().unwrap_or_default();
                if payload.starts_with(&needle) {
                    let _ = tx.send(Instant::now()).await;
                }
            }
        }));
    }
    let proxy = &mut stack.proxies[0];
    let before = *proxy.applied.borrow();
    let shared = proxy.shared.clone();
    let healthy = |addr: std::net::SocketAddr, shared: &pivot_proxy::server::Shared| {
        shared
            .table
            .load()
            .replicas
            .iter()
            .find(|r| r.addr.port == addr.port())
            .map(|r| r.healthy)
    };
    assert_eq!(healthy(replica, &shared), Some(true));

    stack.topology.node(2).pause()?;
    // The proxy side: the first applied version that marks the replica unhealthy.
    let seen = {
        let applied = &mut stack.proxies[0].applied;
        let wait = applied.wait_for(|v| *v > before && healthy(replica, &shared) == Some(false));
        tokio::time::timeout(Duration::from_secs(15), wait)
            .await
            .context("the proxy never saw the replica go down")?
            .context("proxy stopped")?;
        Instant::now()
    };
    let event = tokio::time::timeout(T, rx.recv())
        .await
        .context("no +sdown seen")?
        .context("subscriptions ended")?;
    let latency = seen.saturating_duration_since(event);
    eprintln!("+sdown published -> proxy applied the new version: {latency:?}");
    if latency >= Duration::from_millis(100) {
        bail!("the proxy applied the change {latency:?} after the Sentinel event");
    }
    stack.topology.node(2).resume()?;
    for s in subs {
        s.abort();
    }
    stack.shutdown().await
}
