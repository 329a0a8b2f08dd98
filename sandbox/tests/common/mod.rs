//! Helpers shared by the end-to-end tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pivot_sandbox::RedisNode;
use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Logs to the test output (shown for failing tests) when RUST_LOG is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A connection with a response timeout, so that a hung proxy fails the test instead of
/// hanging it.
pub async fn connect(
    client: &redis::Client,
    response_timeout: Duration,
) -> Result<MultiplexedConnection> {
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(response_timeout));
    Ok(client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?)
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET a JSON document with the sandbox's default admin token.
pub async fn http_json(url: &str) -> Result<serde_json::Value> {
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(pivot_sandbox::DEFAULT_ADMIN_TOKEN)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    Ok(resp.json().await?)
}

/// HTTP status of a GET.
pub async fn http_status(url: &str) -> Result<u16> {
    Ok(reqwest::get(url).await?.status().as_u16())
}

/// `cmdstat_<cmd>` calls on a node, read directly from it.
pub async fn calls(node: &RedisNode, cmd: &str) -> Result<u64> {
    let info = node.info("commandstats").await?;
    let key = format!("cmdstat_{cmd}");
    Ok(info
        .get(&key)
        .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix("calls=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// Resets INFO commandstats on a node.
pub async fn reset_stats(node: &RedisNode) -> Result<()> {
    let mut c = node.connection().await?;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut c)
        .await?;
    Ok(())
}

/// Sends raw bytes on a fresh connection and reads until `expect` bytes arrived (or the
/// peer closed the connection, or 5 s passed).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], expect: usize) -> Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while out.len() < expect {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    Ok(out)
}
