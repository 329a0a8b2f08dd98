//! Early promotion: a graceful `SENTINEL FAILOVER` under a write load through the proxy.
//! The control plane follows the failover's elected leader (hold writes from its
//! announcement, release them to the promoted replica once it answers `ROLE` master), so no
//! acknowledged write is lost, and writes resume within milliseconds of the promotion
//! instead of after the majority's `+switch-master` about a second later.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::{connect, http_json, wait_until};
use pivot_sandbox::{Stack, StackOptions};
use redis::AsyncCommands;

/// Client tasks writing unique keys.
const WRITERS: u64 = 8;
/// Upper bound on writes per task (the load stops long before).
const MAX_WRITES_PER_TASK: u64 = 1_000_000;

/// When the proxy's routing table changed, and the master it names.
type TableChange = (Instant, Option<String>);

/// One write: when it was sent, when it was answered, its key number, and the outcome.
type Entry = (Instant, Instant, u64, Result<(), String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_failover_loses_no_acknowledged_write() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let old = stack.topology.node(0).addr();
    let proxy = &stack.proxies[0];

    // The proxy's routing table over time: (when, master).
    let table_log: Arc<std::sync::Mutex<Vec<TableChange>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let table_watch = {
        let (log, stop) = (table_log.clone(), stop.clone());
        let mut applied = proxy.applied.clone();
        let shared = proxy.shared.clone();
        tokio::spawn(async move {
            // Bounded: ends when told, or when the proxy stops.
            while !stop.load(Ordering::Relaxed) {
                if applied.changed().await.is_err() {
                    break;
                }
                let master = shared.table.load().master.as_ref().map(ToString::to_string);
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), master));
            }
        })
    };

    // When a replica first answers ROLE master, asked directly every millisecond. The
    // promotion kills the replica's client connections (Sentinel sends `CLIENT KILL TYPE
    // normal` with `SLAVEOF NO ONE`): reconnect after an error.
    let replicas: Vec<SocketAddr> = stack.topology.nodes()[1..]
        .iter()
        .map(|n| n.addr())
        .collect();
    let role_watch = {
        let stop = stop.clone();
        let clients: Vec<(SocketAddr, redis::Client)> = stack.topology.nodes()[1..]
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

    // The load: 8 tasks, one connection each, unique keys `p:{task}:{i}` = i.
    let acked = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for task in 0..WRITERS {
        let mut c = connect(&proxy.client(), Duration::from_secs(30)).await?;
        let (stop, acked) = (stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut log: Vec<Entry> = Vec::new();
            for i in 0..MAX_WRITES_PER_TASK {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let sent = Instant::now();
                let r: redis::RedisResult<()> = c.set(format!("p:{task}:{i}"), i).await;
                if r.is_ok() {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                log.push((sent, Instant::now(), i, r.map_err(|e| e.to_string())));
            }
            log
        }));
    }
    wait_until("writes flowing", Duration::from_secs(10), || {
        let acked = acked.clone();
        async move { (acked.load(Ordering::Relaxed) > 500).then_some(()) }
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
    assert!(replicas.contains(&new));
    // Keep writing a while on the new master, then stop.
    let at_promotion = acked.load(Ordering::Relaxed);
    wait_until("writes on the new master", Duration::from_secs(10), || {
        let acked = acked.clone();
        async move { (acked.load(Ordering::Relaxed) > at_promotion + 1000).then_some(()) }
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for w in writers {
        logs.push(w.await?);
    }
    table_watch.abort();

    // Every acknowledged write is on the final master, with its value.
    let new_node = stack
        .topology
        .node_by_addr(new)
        .context("new master is a node")?;
    let mut direct = new_node.connection().await?;
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
            let keys: Vec<String> = chunk.iter().map(|i| format!("p:{task}:{i}")).collect();
            let values: Vec<Option<u64>> = direct.mget(&keys).await?;
            for ((k, i), v) in keys.iter().zip(chunk).zip(values) {
                if v != Some(*i) {
                    lost.push(k.clone());
                }
            }
        }
    }

    // Timings. Acknowledgements in time order, to find the first one after the promotion
    // and the longest pause in the middle of the failover.
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
    let table = table_log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let held_at = table.iter().find(|(_, m)| m.is_none()).map(|(t, _)| *t);
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
        "graceful failover {old} -> {new}: {acknowledged} writes acknowledged by {WRITERS} clients, \
         {} lost, {} errors {:?}\n  \
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
    if !lost.is_empty() {
        bail!(
            "{} of {acknowledged} acknowledged writes are not on the final master {new}: {:?}",
            lost.len(),
            lost.iter().take(10).collect::<Vec<_>>()
        );
    }
    assert!(
        errors.is_empty(),
        "writes failed during a graceful failover: {errors:?}"
    );
    assert!(held_at.is_some(), "the proxy never held writes: {table:?}");
    // Pivot's share of the write unavailability: under 100 ms from the promotion.
    assert!(
        resumed_after_promotion < Duration::from_millis(100),
        "writes resumed {resumed_after_promotion:?} after the promotion"
    );

    // The control plane recorded the leader's promotion and measured it.
    let url = stack.http_url()?;
    let events = http_json(&format!("{url}/api/v1/events?service=mymaster")).await?;
    let events = events["events"].as_array().context("events")?;
    let held = events
        .iter()
        .find(|e| e["kind"] == "leader-promoting")
        .with_context(|| format!("no leader-promoting event: {events:?}"))?;
    assert!(held["new_master"].is_null(), "{held}");
    assert!(
        held["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("holding writes"),
        "{held}"
    );
    let promoted = events
        .iter()
        .find(|e| e["kind"] == "master-changed" && e["new_master"] == new.to_string())
        .with_context(|| format!("no master-changed event to {new}: {events:?}"))?;
    assert!(
        promoted["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("answers ROLE master"),
        "{promoted}"
    );
    assert_eq!(promoted["details"]["via"], "leader-promotion", "{promoted}");
    let metrics = reqwest::get(format!("{url}/metrics")).await?.text().await?;
    let count = metrics
        .lines()
        .find(|l| l.starts_with("pivot_service_promotion_seconds_count"))
        .context("promotion metric")?;
    assert!(count.ends_with(" 1"), "{count}");
    let line = metrics
        .lines()
        .find(|l| l.starts_with("pivot_service_promotion_seconds_sum"))
        .context("promotion metric")?;
    eprintln!("control plane: {line} (leader's announcement -> promoted replica published)");
    stack.shutdown().await
}
