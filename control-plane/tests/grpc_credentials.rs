//! The config stream's credentials and identity, against a control plane bound on port 0
//! without Redis: proxy tokens (`--proxy-token`), the `control_plane_id` every update
//! carries, and running versions from another control plane left out of the registry.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Running, eventually};
use pivot_control_plane::{Config, ControlPlane};
use pivot_proto::v1::proxy_discovery_client::ProxyDiscoveryClient;
use pivot_proto::v1::proxy_message::Msg;
use pivot_proto::v1::{ConfigUpdate, Hello, ProxyMessage, Status};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "a-proxy-token-0123456789";

async fn start(dir: &Path, tokens: &[&str]) -> (Running, String) {
    let mut config = Config::with_data_dir(dir);
    config.http_listen = "127.0.0.1:0".parse().unwrap();
    config.grpc_listen = "127.0.0.1:0".parse().unwrap();
    config.proxy_tokens = tokens.iter().map(|t| t.parse().unwrap()).collect();
    config.admin_token = Some(common::ADMIN_TOKEN.parse().unwrap());
    let cp = ControlPlane::bind(config).await.unwrap();
    let id = cp.control_plane_id().to_string();
    let (http, grpc, registry) = (cp.http_addr(), cp.grpc_addr(), cp.registry());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(cp.run(shutdown.clone()));
    let running = Running {
        http,
        grpc,
        registry,
        shutdown,
        task,
    };
    (running, id)
}

fn hello(id: &str, running_version: u64, from: &str) -> ProxyMessage {
    ProxyMessage {
        msg: Some(Msg::Hello(Hello {
            proxy_id: id.into(),
            listen_addr: "127.0.0.1:6380".into(),
            build_version: "test".into(),
            // Unknown to the control plane: answered at once (with its id).
            services: vec!["nosuch".into()],
            running_version,
            running_control_plane_id: from.into(),
        })),
    }
}

/// Opens a stream with `authorization` metadata (if any) and `first` as its first message.
async fn open(
    cp: &Running,
    authorization: Option<&str>,
    first: ProxyMessage,
) -> Result<(mpsc::Sender<ProxyMessage>, Streaming<ConfigUpdate>), tonic::Status> {
    let mut client = ProxyDiscoveryClient::connect(format!("http://{}", cp.grpc))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(a) = authorization {
        request
            .metadata_mut()
            .insert("authorization", a.parse().unwrap());
    }
    let resp = client.stream_config(request).await?;
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
async fn streams_need_one_of_the_proxy_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, id) = start(dir.path(), &["an-older-token-0123456789", TOKEN]).await;
    for (auth, why) in [
        (None, "no proxy token presented"),
        (Some("Bearer wrong-token-0123456789"), "wrong proxy token"),
        (Some("Basic YTpi"), "no proxy token presented"),
        (Some(TOKEN), "no proxy token presented"),
    ] {
        let err = open(&cp, auth, hello("p", 0, "")).await.err();
        let status = err.unwrap_or_else(|| panic!("{auth:?} was accepted"));
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{auth:?}");
        assert!(status.message().contains(why), "{auth:?}: {status:?}");
        assert!(!status.message().contains(TOKEN));
    }
    // Nothing was registered for the refused ones.
    assert!(cp.registry.get("p").is_none());
    let (_, body) = common::http_get(cp.http, "/metrics").await;
    assert!(
        body.contains("pivot_proxy_token_refusals_total 4"),
        "{body}"
    );

    // Either configured token works, the scheme in any case.
    for auth in [
        format!("Bearer {TOKEN}"),
        "bearer an-older-token-0123456789".into(),
    ] {
        let (_tx, mut updates) = open(&cp, Some(&auth), hello("p", 0, "")).await.unwrap();
        let update = next(&mut updates).await;
        assert_eq!(update.control_plane_id, id);
    }
    cp.stop().await;
}

#[tokio::test]
async fn the_id_scopes_versions() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, id) = start(dir.path(), &[]).await;
    assert_eq!(id.len(), 16);
    let other_dir = tempfile::tempdir().unwrap();
    let (other, other_id) = start(other_dir.path(), &[]).await;
    assert_ne!(id, other_id, "each store its own identity");
    other.stop().await;

    // A proxy that runs version 5000 of another control plane: not one of ours.
    let (tx, mut updates) = open(&cp, None, hello("moved", 5000, &other_id))
        .await
        .unwrap();
    let update = next(&mut updates).await;
    assert_eq!(update.control_plane_id, id);
    let p = eventually(WAIT, "the proxy in the registry", || async {
        cp.registry.get("moved").filter(|p| p.streams == 1)
    })
    .await;
    assert_eq!(p.running_version, None, "{p:#?}");
    assert_eq!(p.acked_version, None, "{p:#?}");
    // Its status reports the same foreign version: still not recorded as running.
    let status = |running_version, from: &str| ProxyMessage {
        msg: Some(Msg::Status(Status {
            running_version,
            running_control_plane_id: from.into(),
            uptime_ms: 1_000,
            interval_ms: 1_000,
            ..Default::default()
        })),
    };
    tx.send(status(5000, &other_id)).await.unwrap();
    let p = eventually(WAIT, "the status", || async {
        cp.registry.get("moved").filter(|p| p.status_at.is_some())
    })
    .await;
    assert_eq!(p.running_version, None, "{p:#?}");
    // Once it runs one of ours, it is.
    tx.send(status(update.version.max(1), &id)).await.unwrap();
    eventually(WAIT, "our version as running", || async {
        cp.registry
            .get("moved")
            .filter(|p| p.running_version == Some(update.version.max(1)))
    })
    .await;

    // Same id after a restart: a proxy's version of ours is recognised.
    drop(tx);
    cp.stop().await;
    let (cp, again) = start(dir.path(), &[]).await;
    assert_eq!(again, id, "the identity is stored");
    let (_tx, _updates) = open(&cp, None, hello("back", 42, &id)).await.unwrap();
    let p = eventually(WAIT, "the proxy back", || async {
        cp.registry.get("back").filter(|p| p.streams == 1)
    })
    .await;
    assert_eq!(p.running_version, Some(42));
    cp.stop().await;
}
