//! Services registered, changed and removed while the control plane runs (`Admin`, the
//! layer behind the REST and gRPC admin APIs), against real Sentinels and a proxy that
//! keeps serving throughout.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::{connect, wait_until};
use pivot_control_plane::topology::NodeAddr;
use pivot_control_plane::{Actor, Error, NewService, ServiceUpdate};
use pivot_sandbox::{Stack, StackOptions};
use redis::AsyncCommands;

const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_come_and_go_while_proxies_keep_serving() -> Result<()> {
    common::init_tracing();
    let mut stack = Stack::start(StackOptions::default()).await?;
    let admin = stack.admin()?;
    let actor = Actor::new("token:test");
    let name = stack.topology.master_name().to_string();
    let master = stack.topology.node(0).addr().to_string();
    let sentinels: Vec<NodeAddr> = stack
        .topology
        .sentinels()
        .iter()
        .map(|s| NodeAddr::new(s.addr().ip().to_string(), s.addr().port()))
        .collect();
    let mut c = connect(&stack.proxies[0].client(), T).await?;
    let _: () = c.set("k", "before").await?;

    // New Sentinels (one of the three): the watcher is replaced, the master stays.
    let before = admin.service(&name)?;
    let updated = admin
        .update_service(
            &actor,
            &name,
            ServiceUpdate {
                sentinels: Some(vec![sentinels[0].clone()]),
                ..ServiceUpdate::default()
            },
        )
        .await?;
    assert!(updated.config_version > before.config_version);
    stack.proxies[0]
        .wait_for_version_above(before.config_version, T)
        .await?;
    // The new watcher decides from the one configured Sentinel (it discovers the others).
    wait_until("the new watcher to poll", T, || {
        let admin = admin.clone();
        let name = name.clone();
        let master = master.clone();
        async move {
            let s = admin.service(&name).ok()?;
            let t = &s.topology;
            (t.master.as_ref().map(ToString::to_string).as_deref() == Some(master.as_str())
                && t.sentinels.iter().filter(|x| x.configured).count() == 1
                && t.sentinels.iter().any(|x| x.reachable))
            .then_some(())
        }
    })
    .await?;
    let _: () = c.set("k", "after-update").await?;

    // A proxy serves it: deleting needs force.
    match admin.delete_service(&actor, &name, false).await {
        Err(Error::Conflict(m)) => assert!(m.contains("served by 1 connected proxy"), "{m}"),
        other => bail!("expected a conflict, got {other:?}"),
    }
    let v = admin.state().current().version;
    let nacks = stack.proxies[0].shared.metrics.config_nacks.get();
    admin.delete_service(&actor, &name, true).await?;
    assert!(admin.service(&name).is_err());
    let deleted_at = admin.state().current().version;
    // The proxy is told the service is unknown, rejects that update and keeps its last
    // good table: clients see nothing.
    wait_until("the proxy to NACK the deletion", T, || {
        let shared = stack.proxies[0].shared.clone();
        async move { (shared.metrics.config_nacks.get() > nacks).then_some(()) }
    })
    .await?;
    assert!(stack.proxies[0].shared.table.load().version < deleted_at);
    for i in 0..20 {
        let _: () = c.set(format!("k{i}"), i).await?;
    }
    let got: String = c.get("k").await?;
    assert_eq!(got, "after-update");

    // Registered again: watched from scratch, and the proxy takes it at once.
    let created = admin
        .create_service(
            &actor,
            NewService {
                name: name.clone(),
                sentinels: sentinels.clone(),
                backend_auth: None,
                policy: None,
            },
        )
        .await?;
    assert!(created.config_version > v);
    let applied = stack.proxies[0]
        .wait_for_version_above(created.config_version, T)
        .await
        .context("proxy takes the re-registered service")?;
    let s = admin.service(&name)?;
    assert!(s.decided);
    assert_eq!(
        s.topology.master.as_ref().map(ToString::to_string),
        Some(master)
    );
    assert!(applied >= s.topology.changed_version);
    let _: () = c.set("k", "after-recreate").await?;

    // Every step is in the audit log and the event history.
    let audit = admin
        .audit(pivot_control_plane::store::AuditQuery {
            service: Some(name.clone()),
            limit: 10,
            ..Default::default()
        })
        .await?;
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| (a.action.as_str(), a.actor.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("service.create", "token:test"),
            ("service.delete", "token:test"),
            ("service.update", "token:test"),
            // The stack's `--service` flag.
            ("service.create", "config"),
        ]
    );
    let kinds: Vec<String> = admin
        .events(pivot_control_plane::store::EventQuery {
            service: Some(name.clone()),
            kinds: vec!["service-created".into(), "service-deleted".into()],
            limit: 10,
            ..Default::default()
        })
        .await?
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["service-created", "service-deleted"]);
    stack.shutdown().await
}

/// A policy change reaches every proxy of the fleet within a second (issue 5): measured
/// from the change's return to the last proxy's ACK-ed apply, over several changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_every_proxy_within_a_second() -> Result<()> {
    common::init_tracing();
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut stack = Stack::start(StackOptions {
        proxies: vec![(any, any); 4],
        ..StackOptions::default()
    })
    .await?;
    let admin = stack.admin()?;
    let actor = Actor::new("token:test");
    let name = stack.topology.master_name().to_string();
    let mut worst = Duration::ZERO;
    for (i, target) in ["deny", "master", "any", "replica", "deny"]
        .iter()
        .enumerate()
    {
        let rule = pivot_control_plane::CommandRule::new(
            "flushall",
            target.parse().map_err(anyhow::Error::msg)?,
        )
        .map_err(anyhow::Error::msg)?;
        let started = std::time::Instant::now();
        let (_, version) = admin.put_rule(&actor, &name, rule).await?;
        let version = version.with_context(|| format!("change {i} made no version"))?;
        for p in &mut stack.proxies {
            p.wait_for_version_above(version - 1, T).await?;
        }
        let took = started.elapsed();
        eprintln!(
            "change {i}: all {} proxies applied version {version} in {took:?}",
            stack.proxies.len()
        );
        worst = worst.max(took);
    }
    assert!(
        worst < Duration::from_secs(1),
        "slowest change took {worst:?}"
    );
    stack.shutdown().await
}
