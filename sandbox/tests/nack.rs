//! A NACKed snapshot (issue 6): the service a proxy serves is force-deleted, so the next
//! update says it is unknown; the proxy rejects it, keeps running its last good version
//! (clients see nothing), and the control plane shows the reason and the rejected version,
//! in its registry and in `GET /api/v1/proxies`.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::{connect, wait_until};
use pivot_control_plane::{Actor, NewService};
use pivot_sandbox::{Stack, StackOptions};
use redis::AsyncCommands;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_update_leaves_the_proxy_on_its_last_good_version() -> Result<()> {
    common::init_tracing();
    let mut stack = Stack::start(StackOptions::default()).await?;
    let admin = stack.admin()?;
    let registry = stack.registry()?;
    let http = stack.http_url()?;
    let actor = Actor::new("token:test");
    let service = stack.topology.master_name().to_string();
    let proxy_id = stack.proxies[0].shared.proxy_id.clone();
    let good = *stack.proxies[0].applied.borrow();
    ensure!(good > 0, "the proxy runs a config");
    wait_until("the proxy's ACK of its version", T, || {
        let ok = registry
            .get(&proxy_id)
            .filter(|p| p.acked_version == Some(good));
        async move { ok }
    })
    .await?;
    let mut c = connect(&stack.proxies[0].client(), T).await?;
    let () = c.set("nack:k", "before").await?;

    // Force-deleted while the proxy serves it: the next update names it unknown.
    let sentinels = admin.service(&service)?.sentinels;
    admin.delete_service(&actor, &service, true).await?;
    let rejected = admin.state().current().version;
    ensure!(rejected > good);
    let p = wait_until("the NACK in the registry", T, || {
        let ok = registry
            .get(&proxy_id)
            .filter(|p| p.last_nack_version == Some(rejected));
        async move { ok }
    })
    .await?;
    let reason = p.last_nack.clone().context("a NACK reason")?;
    assert_eq!(
        reason,
        format!("service '{service}' is not known to the control plane")
    );
    assert_eq!(
        p.acked_version,
        Some(good),
        "the ACKed version stays: {p:#?}"
    );

    // The proxy stays on its last good version and serves with it.
    let proxy = &stack.proxies[0];
    assert_eq!(*proxy.applied.borrow(), good);
    assert_eq!(proxy.shared.base.load().config_version, good);
    ensure!(proxy.shared.metrics.config_nacks.get() >= 1);
    for i in 0..50 {
        let () = c.set("nack:k", i).await?;
        let v: i64 = c.get("nack:k").await?;
        assert_eq!(v, i);
    }
    // Its status reports say so too.
    wait_until("the running version in a status report", T, || {
        let ok = registry
            .get(&proxy_id)
            .filter(|p| p.running_version == Some(good) && p.status_at.is_some());
        async move { ok }
    })
    .await?;

    // The API shows the reason and the rejected version.
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!("{http}/api/v1/proxies"))
        .bearer_auth(stack.admin_token())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let shown = body["proxies"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["proxy_id"] == proxy_id.as_str()))
        .with_context(|| format!("{proxy_id} in {body}"))?;
    assert_eq!(shown["last_nack"], reason.as_str(), "{shown}");
    assert_eq!(shown["last_nack_version"], rejected, "{shown}");
    assert_eq!(shown["acked_version"], good, "{shown}");
    assert_eq!(shown["running_version"], good, "{shown}");

    // Registered again: the next update is good, and the proxy takes it.
    admin
        .create_service(
            &actor,
            NewService {
                name: service.clone(),
                sentinels,
                backend_auth: None,
                policy: None,
            },
        )
        .await?;
    let applied = stack.proxies[0].wait_for_version_above(rejected, T).await?;
    wait_until("the ACK of the new version", T, || {
        let ok = registry
            .get(&proxy_id)
            .filter(|p| p.acked_version == Some(applied));
        async move { ok }
    })
    .await?;
    let v: i64 = c.get("nack:k").await?;
    assert_eq!(v, 49);
    stack.shutdown().await
}
