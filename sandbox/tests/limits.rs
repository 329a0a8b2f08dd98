//! Clients cannot grow the proxy: one that sends requests and never reads the replies is cut
//! off at its output limit while a well-behaved client on the same proxy sees no error, and
//! idle connections cost little memory. In a test binary of its own, tests serialized, so
//! that the process's RSS measures one test at a time.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{connect, wait_until};
use pivot_sandbox::{Stack, StackOptions};
use redis::AsyncCommands;
use tokio::io::AsyncWriteExt;

const T: Duration = Duration::from_secs(15);

/// The tests here measure the process's RSS: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_and_memory_stays_flat() -> Result<()> {
    let _serial = SERIAL.lock().await;
    common::init_tracing();
    let stack = Stack::start(StackOptions {
        proxies: vec![],
        ..StackOptions::default()
    })
    .await?;
    let cp = stack.control_plane.as_ref().context("running")?;
    let mut config =
        pivot_proxy::Config::for_service("mymaster", &format!("http://{}", cp.grpc_addr));
    config.client_output_limit = 4 << 20;
    let proxy = pivot_sandbox::stack::start_proxy_with(config).await?;
    proxy.wait_ready(T).await?;

    let big = vec![b'x'; 1 << 20];
    let mut m = stack.topology.node(0).connection().await?;
    let _: () = m.set("big", &big).await?;
    let mut good = connect(&proxy.client(), T).await?;
    // Reads of "big" may go to a replica: wait until it has it there too.
    wait_until("big replicated", T, || {
        let mut g = good.clone();
        async move { (g.strlen::<_, usize>("big").await.ok()? == 1 << 20).then_some(()) }
    })
    .await?;

    let before = rss_bytes()?;
    // 100 pipelined GETs of 1 MiB, never read: 100 MiB of replies owed.
    let mut greedy = tokio::net::TcpStream::connect(proxy.addr).await?;
    let request = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(100);
    greedy.write_all(&request).await?;
    let greedy_addr = greedy.local_addr()?.to_string();

    // The well-behaved client is served throughout.
    for i in 0..50 {
        let _: () = good.set(format!("ok:{i}"), i).await?;
        assert_eq!(good.get::<_, i64>(format!("ok:{i}")).await?, i);
    }
    // The greedy client is cut off...
    wait_until("the greedy client to be disconnected", T, || {
        let mut g = good.clone();
        let addr = greedy_addr.clone();
        async move {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut g)
                .await
                .ok()?;
            (!list.contains(&format!("addr={addr} "))).then_some(())
        }
    })
    .await?;
    // ...and the proxy never held the 100 MiB. The growth seen is 3-47 MiB: the limit is
    // 4 MiB, the rest is the allocator keeping freed reply buffers (the shared backend
    // connection still reads, and drops, the replies owed to the closed client).
    let grown = rss_bytes()?.saturating_sub(before);
    eprintln!(
        "RSS grew by {} KiB while a client owed 100 MiB of replies",
        grown / 1024
    );
    assert!(grown < 80 << 20, "RSS grew by {grown} bytes");
    drop(greedy);
    proxy.stop().await?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_cheap_and_many_open_and_close_cleanly() -> Result<()> {
    let _serial = SERIAL.lock().await;
    common::init_tracing();
    let stack = Stack::start(StackOptions::default()).await?;
    let proxy = &stack.proxies[0];
    let mut good = connect(&proxy.client(), T).await?;
    let _: () = good.set("k", "v").await?;
    const N: usize = 2_000;
    let before = rss_bytes()?;
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await?;
        s.write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").await?;
        conns.push(s);
    }
    // Every connection was served once (its reply read), then sits idle.
    for s in &mut conns {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(T, tokio::io::AsyncReadExt::read(s, &mut buf)).await??;
        assert_eq!(&buf[..n], b"$1\r\nv\r\n");
    }
    let per_conn = rss_bytes()?.saturating_sub(before) / N as u64;
    eprintln!("RSS per idle client connection (both ends in this process): {per_conn} bytes");
    // Then they all go away at once, and the proxy is fine.
    drop(conns);
    wait_until("the clients to be gone", T, || async {
        let info: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut good.clone())
            .await
            .ok()?;
        (info.lines().count() == 1).then_some(())
    })
    .await?;
    assert_eq!(good.get::<_, String>("k").await?, "v");
    // Measured 10.8 KB with lazily allocated buffers (18.4 KB with 16 KiB buffers each way).
    assert!(per_conn < 16 * 1024, "{per_conn} bytes per idle connection");
    stack.shutdown().await
}
