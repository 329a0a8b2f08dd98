//! The control plane against real Sentinels: Sentinels that go away and come back, the
//! majority rule with too few answers, versions and events across a restart.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{connect, http_json, wait_until};
use pivot_sandbox::{Stack, StackOptions};
use redis::AsyncCommands;

const T: Duration = Duration::from_secs(15);

/// The service's entry in `/api/v1/topology`, once `check` accepts it.
async fn topology_where(
    url: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    wait_until(what, T, || {
        let url = format!("{url}/api/v1/topology");
        let ok = &check;
        async move {
            let t = http_json(&url).await.ok()?;
            let s = t["services"][0].clone();
            ok(&s).then_some(t)
        }
    })
    .await
}

fn reachable(s: &serde_json::Value, addr: std::net::SocketAddr) -> Option<bool> {
    s["sentinels"]
        .as_array()?
        .iter()
        .find(|x| x["addr"] == addr.to_string())?["reachable"]
        .as_bool()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_going_away_and_coming_back() -> Result<()> {
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let url = stack.http_url()?;
    let master = stack.topology.node(0).addr().to_string();
    let s0 = &stack.topology.sentinels()[0];
    let s1 = &stack.topology.sentinels()[1];
    let mut c = connect(&stack.proxies[0].client(), T).await?;

    // One of three gone: still a majority; it shows as unreachable.
    s0.kill()?;
    let t = topology_where(&url, "sentinel 0 unreachable", |s| {
        reachable(s, s0.addr()) == Some(false)
    })
    .await?;
    assert_eq!(t["services"][0]["master"], master, "{t}");
    let _: () = c.set("k", 1).await?;

    // Two of three gone: too few answer, the last master stays, and says why.
    s1.pause()?;
    let t = topology_where(&url, "sentinel 1 unreachable", |s| {
        reachable(s, s1.addr()) == Some(false)
    })
    .await?;
    let svc = &t["services"][0];
    assert_eq!(svc["master"], master, "{t}");
    let reason = svc["master_reason"].as_str().context("reason")?;
    assert!(reason.contains("only 1 of 3"), "{reason}");
    let _: () = c.set("k", 2).await?;

    // Both come back and are followed again.
    s1.resume()?;
    s0.restart().await?;
    topology_where(&url, "every sentinel reachable again", |s| {
        reachable(s, s0.addr()) == Some(true) && reachable(s, s1.addr()) == Some(true)
    })
    .await?;
    let _: () = c.set("k", 3).await?;
    assert_eq!(c.get::<_, i64>("k").await?, 3);
    let events = http_json(&format!("{url}/api/v1/events?service=mymaster")).await?;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"sentinels-changed"), "{kinds:?}");
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_grow_across_restarts_and_events_persist() -> Result<()> {
    common::init_tracing();
    let mut stack = Stack::start(StackOptions {
        proxies: vec![],
        ..StackOptions::default()
    })
    .await?;
    let url = stack.http_url()?;
    let before = topology_where(&url, "a decision", |s| s["decided"] == true).await?["version"]
        .as_u64()
        .context("version")?;
    stack.stop_control_plane().await?;
    stack.start_control_plane().await?;
    let after = topology_where(&url, "a decision after the restart", |s| {
        s["decided"] == true
    })
    .await?["version"]
        .as_u64()
        .context("version")?;
    assert!(after > before, "{after} > {before}");
    let events = http_json(&format!("{url}/api/v1/events?service=mymaster")).await?;
    let versions: Vec<u64> = events["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["version"].as_u64())
        .collect();
    assert!(
        versions.contains(&before) && versions.contains(&after),
        "{versions:?}"
    );
    stack.shutdown().await
}
