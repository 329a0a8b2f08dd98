//! Many control planes: two control planes with their own stores watch the same Sentinels,
//! one proxy is given both endpoints. When the first is stopped, the proxy moves to the
//! second without a client error (its clients and routing table are untouched), takes the
//! second's config although its versions are lower (another store, another sequence), and
//! follows changes made there.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{connect, wait_until};
use pivot_control_plane::{Actor, CommandRule};
use pivot_sandbox::stack::{spawn_control_plane, start_proxy_with};
use pivot_sandbox::{Stack, StackOptions};
use redis::AsyncCommands;

const T: Duration = Duration::from_secs(20);
const CLIENTS: usize = 4;
/// Upper bound of the load: iterations (a SET and a GET) per client.
const MAX_ROUNDS: u64 = 200_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_moves_to_the_second_control_plane_without_a_client_error() -> Result<()> {
    common::init_tracing();
    let mut stack = Stack::start(StackOptions {
        proxies: vec![],
        ..StackOptions::default()
    })
    .await?;
    let service = stack.topology.master_name().to_string();
    let actor = Actor::new("token:test");
    let first = stack.control_plane.as_ref().context("running")?;
    let (first_grpc, first_id) = (first.grpc_addr, first.control_plane_id.clone());
    let first_admin = stack.admin()?;

    // The second control plane: same Sentinels and flags, its own store and ports.
    let second_dir = tempfile::tempdir()?;
    let mut config = stack.control_plane_config()?;
    config.data_dir = second_dir.path().to_path_buf();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    config.http_listen = any;
    config.grpc_listen = any;
    let second = spawn_control_plane(config).await?;
    ensure!(
        second.control_plane_id != first_id,
        "two stores, two identities"
    );
    let second_registry = second.registry.clone();

    let id = "ha-proxy";
    let mut proxy_config = pivot_proxy::Config::for_service(&service, "http://unused");
    proxy_config.control_plane = vec![
        format!("http://{first_grpc}"),
        format!("http://{}", second.grpc_addr),
    ];
    proxy_config.proxy_id = Some(id.into());
    proxy_config.status_interval = Duration::from_millis(200);
    let mut proxy = start_proxy_with(proxy_config).await?;
    proxy.wait_ready(T).await?;
    ensure!(
        *proxy.shared.base.load().control_plane_id == *first_id,
        "the proxy streams from the first endpoint"
    );

    // Move the first control plane's version well past the second's: another store is
    // another sequence, and the proxy must not take the second's as "not newer".
    let rule = |target: &str| -> Result<CommandRule> {
        CommandRule::new("lastsave", target.parse().map_err(anyhow::Error::msg)?)
            .map_err(anyhow::Error::msg)
    };
    for i in 0..30 {
        let target = if i % 2 == 0 { "master" } else { "any" };
        first_admin
            .put_rule(&actor, &service, rule(target)?)
            .await?;
    }
    let first_version = first_admin.state().current().version;
    proxy
        .wait_for_version_above(first_version - 1, T)
        .await
        .context("the proxy runs the first control plane's last version")?;
    let second_version = second.admin.state().current().version;
    ensure!(
        second_version < first_version,
        "second at {second_version}, first at {first_version}"
    );

    // Clients through the proxy, each a bounded loop of SET + GET, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for i in 0..CLIENTS {
        let mut c = connect(&proxy.client(), T).await?;
        let (stop, rounds, errors) = (stop.clone(), rounds.clone(), errors.clone());
        load.push(tokio::spawn(async move {
            let key = format!("ha:{i}");
            for n in 0..MAX_ROUNDS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r: redis::RedisResult<Option<u64>> = async {
                    let () = c.set(&key, n).await?;
                    c.get(&key).await
                }
                .await;
                match r {
                    Ok(Some(v)) if v == n => {
                        rounds.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        let mut e = errors.lock().unwrap_or_else(|e| e.into_inner());
                        e.push(format!("client {i} round {n}: {other:?}"));
                    }
                }
            }
        }));
    }
    wait_until("the load to run", T, || {
        let done = rounds.load(Ordering::Relaxed);
        async move { (done >= 200).then_some(()) }
    })
    .await?;

    // Stop the first control plane; the proxy moves to the second.
    let before = rounds.load(Ordering::Relaxed);
    let stopped_at = Instant::now();
    stack.stop_control_plane().await?;
    let stop_took = stopped_at.elapsed();
    let mut foreign_version_shown = false;
    let p = wait_until("the proxy on the second control plane", T, || {
        let p = second_registry.get(id);
        // The second never takes the first's version for one of its own.
        foreign_version_shown |= p
            .as_ref()
            .is_some_and(|p| p.running_version == Some(first_version));
        let applied = *proxy.shared.base.load().control_plane_id == *second.control_plane_id;
        let ok = p.filter(|p| p.streams == 1 && applied);
        async move { ok }
    })
    .await?;
    let moved_after = stopped_at.elapsed();
    let version = *proxy.applied.borrow();
    eprintln!(
        "first control plane stopped in {stop_took:?}; proxy subscribed to the second and \
         applied its version {version} (first was at {first_version}) {moved_after:?} after the stop began"
    );
    ensure!(
        version <= second.admin.state().current().version,
        "the proxy runs the second's version {version}"
    );
    assert_eq!(p.last_nack, None, "{p:#?}");
    let p = wait_until("the ACK and status on the second", T, || {
        let ok = second_registry
            .get(id)
            .filter(|p| p.acked_version == Some(version) && p.running_version == Some(version));
        async move { ok }
    })
    .await?;
    assert!(!p.silent, "{p:#?}");
    assert!(
        !foreign_version_shown,
        "the second control plane showed the first's version {first_version} as running"
    );

    // A change made on the second reaches the proxy.
    second
        .admin
        .put_rule(&actor, &service, rule("deny")?)
        .await?;
    let changed = second.admin.state().current().version;
    proxy.wait_for_version_above(changed - 1, T).await?;
    let mut c = connect(&proxy.client(), T).await?;
    let denied: redis::RedisResult<u64> = redis::cmd("LASTSAVE").query_async(&mut c).await;
    ensure!(denied.is_err(), "LASTSAVE is denied by the second's rule");

    // The load ran through the move, without an error.
    wait_until("the load to go on after the move", T, || {
        let done = rounds.load(Ordering::Relaxed);
        async move { (done > before + 200).then_some(()) }
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await?;
    }
    let errors = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let total = rounds.load(Ordering::Relaxed);
    eprintln!(
        "{total} SET+GET rounds by {CLIENTS} clients, {} during the test after the stop began, {} errors",
        total - before,
        errors.len()
    );
    if !errors.is_empty() {
        bail!("client errors: {errors:#?}");
    }
    ensure!(
        proxy.shared.metrics.outage.following.get() == 0,
        "the proxy did not need to follow the Sentinels"
    );

    proxy.stop().await?;
    second.stop().await?;
    stack.shutdown().await
}
