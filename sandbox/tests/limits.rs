//! Bad clients cannot grow the proxy: one that sends requests and never reads the replies is
//! cut off at its output limit, the proxy's memory stays flat, and a well-behaved client on
//! the same proxy sees no error. In a test binary of its own, so that the process's RSS
//! measures this test alone.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{connect, wait_until};
use pivot_sandbox::{Stack, StackOptions};
use redis::AsyncCommands;
use tokio::io::AsyncWriteExt;

const T: Duration = Duration::from_secs(15);

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
    // ...and the proxy never held the 100 MiB (the limit is 4 MiB; allow for allocator
    // slack and the in-flight replies of one batch).
    let grown = rss_bytes()?.saturating_sub(before);
    eprintln!(
        "RSS grew by {} KiB while a client owed 100 MiB of replies",
        grown / 1024
    );
    assert!(grown < 48 << 20, "RSS grew by {grown} bytes");
    drop(greedy);
    proxy.stop().await?;
    stack.shutdown().await
}
