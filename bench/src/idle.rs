//! Memory per idle client connection: open many connections to a target, complete a
//! `PING` on each (so that the target has set the connection up and answered on it), and
//! compare the target's resident memory before and after.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use pivot_sandbox::procfs;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::options::TargetKind;
use crate::targets::ping;

/// Connections being opened at a time.
const CONCURRENCY: usize = 128;

/// One target's idle connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleResult {
    /// The target.
    pub target: TargetKind,
    /// Connections held open.
    pub connections: usize,
    /// Why fewer than asked for, if so.
    pub note: Option<String>,
    /// The target's `VmRSS` before, KiB.
    pub rss_before_kib: u64,
    /// With every connection open and answered, KiB.
    pub rss_after_kib: u64,
    /// Time to open them all.
    pub open: Duration,
}

impl IdleResult {
    /// The growth per connection, KiB.
    pub fn kib_per_connection(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64
            / self.connections.max(1) as f64
    }
}

/// Opens `n` connections to `addr`, `PING`s on each, samples the `VmRSS` of `pid` before
/// and after, and closes them (with a reset, so that no `TIME_WAIT` is left for the next
/// target's ports).
pub async fn measure(
    target: TargetKind,
    addr: SocketAddr,
    pid: u32,
    n: usize,
    note: Option<String>,
    timeout: Duration,
) -> Result<IdleResult> {
    let rss_before_kib = procfs::rss_kib(pid)?;
    let started = tokio::time::Instant::now();
    let mut open: Vec<TcpStream> = Vec::with_capacity(n);
    let mut tasks = JoinSet::new();
    let mut spawned = 0;
    // Bounded: at most CONCURRENCY connections being set up, each within `timeout`.
    while open.len() < n {
        while spawned < n && tasks.len() < CONCURRENCY {
            tasks.spawn(tokio::time::timeout(timeout, ping(addr)));
            spawned += 1;
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let stream = joined
            .context("a connection task panicked")?
            .with_context(|| {
                format!(
                    "{}: a connection was not answered within {timeout:?} ({} open)",
                    target.id(),
                    open.len()
                )
            })?
            .with_context(|| format!("{}: connection {} of {n}", target.id(), open.len() + 1))?;
        open.push(stream);
    }
    let elapsed = started.elapsed();
    let rss_after_kib = procfs::rss_kib(pid)?;
    for stream in &open {
        // Best effort: a reset instead of FIN + TIME_WAIT.
        let _ = stream.set_zero_linger();
    }
    drop(open);
    Ok(IdleResult {
        target,
        connections: n,
        note,
        rss_before_kib,
        rss_after_kib,
        open: elapsed,
    })
}
