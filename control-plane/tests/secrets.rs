//! Secrets are never logged: a control plane started with secrets in its flags, then
//! given more through the REST API, logs (at TRACE, every crate) none of them.
//!
//! Its own test binary with one test: the capturing subscriber is process-wide, set
//! before anything logs (a per-thread one misses events whose callsites other tests'
//! threads registered first).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pivot_control_plane::{Config, ControlPlane};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Everything logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// One HTTP/1.0 request with the token; returns (status, body).
async fn call(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_not_logged() {
    let log = Captured::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish(),
    )
    .unwrap();

    let admin_token = "pvt_ADMIN-secret-0123456789abcdef0123";
    let backend_flag = "FLAG-backend-secret-1";
    let user_flag = "FLAG-user-secret-2";
    let backend_api = "API-backend-secret-3";
    let user_api = "API-user-secret-4";
    let proxy_token = "PROXY-token-secret-5";
    let wrong_proxy_token = "WRONG-proxy-token-secret-6";

    let dir = tempfile::tempdir().unwrap();
    let sentinel = common::closed_port();
    let config = <Config as clap::Parser>::try_parse_from([
        "pivot-control-plane",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--http-listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
        "--service",
        &format!("svc={sentinel}"),
        "--backend-auth",
        &format!("svc=pivot:{backend_flag}"),
        "--proxy-user",
        &format!("svc=app:{user_flag}"),
        "--admin-token",
        admin_token,
        "--proxy-token",
        proxy_token,
    ])
    .unwrap();
    let cp = ControlPlane::bind(config).await.unwrap();
    let http = cp.http_addr();
    let grpc = cp.grpc_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(cp.run(shutdown.clone()));

    let (status, body) = call(
        http,
        admin_token,
        "PATCH",
        "/api/v1/services/svc",
        Some(json!({"backend_auth": {"username": "u", "password": backend_api}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        http,
        admin_token,
        "PUT",
        "/api/v1/services/svc/users/bob",
        Some(json!({"password": user_api})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        http,
        admin_token,
        "POST",
        "/api/v1/tokens",
        Some(json!({"name": "ci", "role": "viewer"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let new_token = created["token"].as_str().unwrap().to_string();
    // Refused requests with secrets in them.
    let (status, _) = call(
        http,
        &new_token,
        "PUT",
        "/api/v1/services/svc/users/eve",
        Some(json!({"password": user_api})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(http, "pvt_not-a-token", "GET", "/api/v1/services", None).await;
    assert_eq!(status, 401);
    let (status, _) = call(
        http,
        admin_token,
        "PATCH",
        "/api/v1/services/svc",
        Some(json!({"backend_auth": {"password": backend_api, "extra": 1}})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = call(http, &new_token, "GET", "/api/v1/services/svc", None).await;
    assert_eq!(status, 200);
    // Proxy streams: a refused token, then the right one (its Hello and status traced).
    for (token, accepted) in [(wrong_proxy_token, false), (proxy_token, true)] {
        use pivot_proto::v1::proxy_discovery_client::ProxyDiscoveryClient;
        use pivot_proto::v1::proxy_message::Msg;
        use pivot_proto::v1::{Hello, ProxyMessage};
        let mut client = ProxyDiscoveryClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(ProxyMessage {
            msg: Some(Msg::Hello(Hello {
                proxy_id: "p".into(),
                services: vec!["svc".into()],
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let result = client.stream_config(request).await;
        assert_eq!(result.is_ok(), accepted, "{result:?}");
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let logged = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("configuration changed"),
        "the capture works: {logged}"
    );
    assert!(
        logged.contains("TRACE") || logged.contains("DEBUG"),
        "{logged}"
    );
    for secret in [
        admin_token,
        backend_flag,
        user_flag,
        backend_api,
        user_api,
        new_token.as_str(),
        proxy_token,
        wrong_proxy_token,
    ] {
        assert!(!logged.contains(secret), "`{secret}` was logged");
    }
}
