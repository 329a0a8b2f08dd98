//! The proxy config stream against a control plane bound on port 0, with Sentinels that
//! don't answer (no Redis needed). What needs real Sentinels (decisions, versions across
//! restarts) is tested in `sandbox/tests/`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{closed_port, eventually, http_json, start};
use pivot_proto::v1::proxy_discovery_client::ProxyDiscoveryClient;
use pivot_proto::v1::proxy_message::Msg;
use pivot_proto::v1::{Ack, ConfigUpdate, Hello, Nack, ProxyMessage, Status};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(10);

fn hello(id: &str, services: &[&str]) -> ProxyMessage {
    ProxyMessage {
        msg: Some(Msg::Hello(Hello {
            proxy_id: id.into(),
            listen_addr: "127.0.0.1:6380".into(),
            build_version: "test".into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            running_version: 0,
            ..Default::default()
        })),
    }
}

async fn open(
    grpc: std::net::SocketAddr,
    first: ProxyMessage,
) -> Result<(mpsc::Sender<ProxyMessage>, Streaming<ConfigUpdate>), tonic::Status> {
    let mut client = ProxyDiscoveryClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let resp = client.stream_config(ReceiverStream::new(rx)).await?;
    Ok((tx, resp.into_inner()))
}

async fn next(updates: &mut Streaming<ConfigUpdate>) -> ConfigUpdate {
    tokio::time::timeout(WAIT, updates.message())
        .await
        .expect("an update in time")
        .unwrap()
        .expect("stream open")
}

#[tokio::test]
async fn stream_ack_nack_and_unknown_services() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path(), &[]).await;

    // Unknown services are answered at once, so that the proxy can NACK with a reason.
    let (tx, mut updates) = open(cp.grpc, hello("proxy-1", &["nosuch"])).await.unwrap();
    let first = next(&mut updates).await;
    assert_eq!(first.unknown_services, vec!["nosuch".to_string()]);
    assert!(first.services.is_empty());
    assert!(!first.nonce.is_empty());

    tx.send(ProxyMessage {
        msg: Some(Msg::Ack(Ack {
            version: first.version,
            nonce: first.nonce.clone(),
        })),
    })
    .await
    .unwrap();
    let want = first.version;
    eventually(WAIT, "the ACK in /api/v1/proxies", || async {
        let v = http_json(cp.http, "/api/v1/proxies").await;
        let p = &v["proxies"][0];
        (p["proxy_id"] == "proxy-1" && p["acked_version"] == want && p["connected"] == true)
            .then_some(())
    })
    .await;

    tx.send(ProxyMessage {
        msg: Some(Msg::Nack(Nack {
            version: first.version,
            nonce: first.nonce.clone(),
            reason: "service 'nosuch' is not known to the control plane".into(),
        })),
    })
    .await
    .unwrap();
    eventually(WAIT, "the NACK in /api/v1/proxies", || async {
        let v = http_json(cp.http, "/api/v1/proxies").await;
        (v["proxies"][0]["last_nack"] == "service 'nosuch' is not known to the control plane")
            .then_some(())
    })
    .await;

    // A second stream gets its own nonce.
    let (_tx2, mut updates2) = open(cp.grpc, hello("proxy-3", &["nosuch"])).await.unwrap();
    let other = next(&mut updates2).await;
    assert_ne!(other.nonce, first.nonce);
    drop(tx);
    cp.stop().await;
}

#[tokio::test]
async fn an_undecided_service_is_not_published() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("mymaster={}", closed_port());
    let cp = start(dir.path(), &[&spec]).await;
    let (_tx, mut updates) = open(cp.grpc, hello("proxy-4", &["mymaster"]))
        .await
        .unwrap();
    // The watcher has tried and could not decide (no Sentinel answers)...
    let reason = eventually(WAIT, "a failed first decision", || async {
        let v = http_json(cp.http, "/api/v1/topology").await;
        let s = &v["services"][0];
        let reason = s["master_reason"].as_str().unwrap_or_default().to_string();
        (s["decided"] == false && reason.starts_with("no master known")).then_some(reason)
    })
    .await;
    assert!(reason.contains("only 0 of 1"), "{reason}");
    // ...so nothing was sent: a proxy keeps its last good table rather than get no master.
    // (Publishing is immediate on a decision; the stream is checked after that point.)
    let got = tokio::time::timeout(Duration::from_millis(300), updates.message()).await;
    assert!(got.is_err(), "no update expected, got {got:?}");
    // Not ready: it has no config to give.
    let (status, _) = common::http_get(cp.http, "/readyz").await;
    assert_eq!(status, 503);
    cp.stop().await;
}

fn status(uptime_ms: u64, commands: u64, interval_ms: u64) -> ProxyMessage {
    ProxyMessage {
        msg: Some(Msg::Status(Status {
            client_connections: 5,
            commands_total: commands,
            reads_total: commands / 2,
            writes_total: commands / 2,
            errors_total: 2,
            held_requests: 1,
            running_version: 0,
            uptime_ms,
            interval_ms,
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn status_reports_rates_and_silence() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path(), &[]).await;
    let mut generation = cp.registry.subscribe();
    let (tx, mut updates) = open(cp.grpc, hello("proxy-5", &["nosuch"])).await.unwrap();
    next(&mut updates).await;

    // Two reports 1 s apart on the proxy's clock, 1,000 commands between them.
    tx.send(status(10_000, 500, 200)).await.unwrap();
    tx.send(status(11_000, 1_500, 200)).await.unwrap();
    let p = eventually(WAIT, "the rate in the registry", || async {
        cp.registry
            .get("proxy-5")
            .filter(|p| p.ops_per_sec.is_some())
    })
    .await;
    assert_eq!(p.ops_per_sec, Some(1000.0));
    assert_eq!(p.client_connections, Some(5));
    assert_eq!(p.errors_total, Some(2));
    assert_eq!(p.held_requests, Some(1));
    assert!(p.status_at.is_some());
    assert_eq!(p.status_interval, Duration::from_millis(200));
    assert!(!p.silent);
    assert!(
        generation.has_changed().unwrap(),
        "reports bump the generation"
    );

    // Nothing for three 200 ms periods: silent, and watchers hear of it.
    generation.mark_unchanged();
    let silent_at = tokio::time::Instant::now();
    tokio::time::timeout(
        WAIT,
        generation.wait_for(|_| cp.registry.get("proxy-5").is_some_and(|p| p.silent)),
    )
    .await
    .expect("flagged silent in time")
    .unwrap();
    assert!(
        silent_at.elapsed() < Duration::from_secs(2),
        "silent after about 600 ms, took {:?}",
        silent_at.elapsed()
    );
    assert_eq!(cp.registry.get("proxy-5").unwrap().streams, 1);

    // Heard from again: no longer silent.
    tx.send(status(12_000, 1_500, 200)).await.unwrap();
    let p = eventually(WAIT, "the proxy back from silence", || async {
        cp.registry.get("proxy-5").filter(|p| !p.silent)
    })
    .await;
    assert_eq!(p.ops_per_sec, Some(0.0));

    // The stream ends: disconnected, not silent, the last report kept.
    drop(tx);
    drop(updates);
    let p = eventually(WAIT, "the stream's end in the registry", || async {
        cp.registry.get("proxy-5").filter(|p| p.streams == 0)
    })
    .await;
    assert!(!p.silent);
    assert_eq!(p.commands_total, Some(1_500));
    cp.stop().await;
}

#[tokio::test]
async fn first_message_must_be_hello() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path(), &[]).await;
    let not_hello = ProxyMessage {
        msg: Some(Msg::Ack(Ack {
            version: 1,
            nonce: "x".into(),
        })),
    };
    let Err(err) = open(cp.grpc, not_hello).await else {
        panic!("a stream whose first message isn't Hello is rejected");
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    cp.stop().await;
}

#[tokio::test]
async fn stream_ends_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path(), &[]).await;
    let (_tx, mut updates) = open(cp.grpc, hello("proxy-2", &["nosuch"])).await.unwrap();
    next(&mut updates).await;
    cp.shutdown.cancel();
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match updates.message().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await
    .expect("stream ends after shutdown");
    assert!(end.is_ok(), "stream ends cleanly: {end:?}");
    tokio::time::timeout(WAIT, cp.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn busy_port_names_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = pivot_control_plane::Config::with_data_dir(dir.path());
    config.http_listen = busy.local_addr().unwrap();
    config.grpc_listen = "127.0.0.1:0".parse().unwrap();
    let err = pivot_control_plane::ControlPlane::bind(config)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("--http-listen"), "{err}");
}
