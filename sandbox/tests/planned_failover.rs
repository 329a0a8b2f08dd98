//! A failover started through Pivot (`Admin::failover`) under write load: zero
//! acknowledged writes lost, zero client errors.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::{connect, wait_until};
use pivot_control_plane::Actor;
use pivot_control_plane::failover::FailoverOptions;
use pivot_sandbox::{Stack, StackOptions};
use redis::AsyncCommands;

const T: Duration = Duration::from_secs(20);
const WRITERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_failover_loses_no_write_and_fails_no_request() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let old = stack.topology.node(0).addr();
    let stop = Arc::new(AtomicBool::new(false));
    let acked_total = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = stack.proxies[0].client();
        let stop = stop.clone();
        let acked_total = acked_total.clone();
        writers.push(tokio::spawn(async move {
            let mut c = connect(&client, T).await?;
            let mut acked = Vec::new();
            let mut errors = Vec::new();
            let mut slowest = Duration::ZERO;
            let mut done_at = Vec::new();
            // Bounded: at most 100,000 writes per task.
            for seq in 0..100_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("pf:{w}:{seq}");
                let started = Instant::now();
                let r: redis::RedisResult<()> = c.set(&key, seq).await;
                slowest = slowest.max(started.elapsed());
                match r {
                    Ok(()) => {
                        acked.push((key, seq));
                        done_at.push(Instant::now());
                        acked_total.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            anyhow::Ok((acked, errors, slowest, done_at))
        }));
    }
    // Some writes before, then the failover, then some after.
    let acked_after = |n: u64| {
        let acked_total = acked_total.clone();
        async move {
            wait_until("writes to be acknowledged", T, || async {
                (acked_total.load(Ordering::Relaxed) >= n).then_some(())
            })
            .await
        }
    };
    acked_after(500).await?;
    let service = stack.topology.master_name().to_string();
    let report = stack
        .admin()?
        .failover(&Actor::config(), &service, FailoverOptions::default())
        .await?;
    eprintln!("{report:?}");
    let new = stack.topology.wait_for_new_master(old, T).await?;
    assert_eq!(report.new_master, format!("{}:{}", new.ip(), new.port()));
    acked_after(acked_total.load(Ordering::Relaxed) + 500).await?;
    stop.store(true, Ordering::Relaxed);

    let mut on_new = stack
        .topology
        .node_by_addr(new)
        .context("new master")?
        .connection()
        .await?;
    let (mut total, mut lost, mut errors, mut slowest) = (0, 0, Vec::new(), Duration::ZERO);
    let mut completions = Vec::new();
    for w in writers {
        let (acked, errs, slow, done_at) = w.await??;
        completions.extend(done_at);
        slowest = slowest.max(slow);
        errors.extend(errs);
        for (key, seq) in acked {
            total += 1;
            if on_new.get::<_, Option<u64>>(&key).await? != Some(seq) {
                lost += 1;
            }
        }
    }
    // Write unavailability: the longest time no write completed, minus the time the
    // master's writes were paused (catch-up and promotion) = Pivot's own part.
    completions.sort();
    let gap = completions
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let paused = Duration::from_millis(report.paused_ms);
    eprintln!(
        "{total} acknowledged writes, {lost} lost, {} errors, slowest write {slowest:?}; no write completed for {gap:?}, of which {paused:?} paused (catch-up + promotion), Pivot's part {:?}",
        errors.len(),
        gap.saturating_sub(paused)
    );
    assert!(total > 100, "{total}");
    assert_eq!(lost, 0, "acknowledged writes lost");
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        gap.saturating_sub(paused) < Duration::from_millis(100),
        "writes resumed {:?} after the promotion",
        gap.saturating_sub(paused)
    );
    stack.shutdown().await
}
