//! Helpers for the control plane's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pivot_control_plane::grpc::ProxyRegistry;
use pivot_control_plane::{Config, ControlPlane, ServiceSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The admin token every test control plane is started with.
pub const ADMIN_TOKEN: &str = "pvt_test-admin-token-0123456789abcdef";

/// A control plane running in this process.
pub struct Running {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub registry: std::sync::Arc<ProxyRegistry>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), pivot_control_plane::Error>>,
}

impl Running {
    /// Cancels and waits for `run` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("control plane drains in time")
            .unwrap()
            .unwrap();
    }
}

/// An address nobody listens on.
pub fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

/// Starts a control plane on port 0 with `services` (NAME=ADDR,...).
pub async fn start(data_dir: &Path, services: &[&str]) -> Running {
    let mut config = Config::with_data_dir(data_dir);
    config.http_listen = "127.0.0.1:0".parse().unwrap();
    config.grpc_listen = "127.0.0.1:0".parse().unwrap();
    config.sentinel_poll_interval = Duration::from_millis(200);
    config.admin_token = Some(ADMIN_TOKEN.parse().unwrap());
    config.services = services
        .iter()
        .map(|s| s.parse::<ServiceSpec>().unwrap())
        .collect();
    let cp = ControlPlane::bind(config).await.unwrap();
    let (http, grpc) = (cp.http_addr(), cp.grpc_addr());
    let registry = cp.registry();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(cp.run(shutdown.clone()));
    Running {
        http,
        grpc,
        registry,
        shutdown,
        task,
    }
}

/// A minimal HTTP/1.0 GET with the admin token; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: test\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// GET returning JSON.
pub async fn http_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `f` until it returns Some, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
