//! Spawning and controlling real Redis and Sentinel processes.
//!
//! - `binary`: finds `redis-server` / `redis-sentinel` (options, env, then `PATH`).
//! - `config`: renders the config files a node or Sentinel starts from.
//! - `node`: one owned process ([`RedisNode`], [`SentinelNode`]): start on a free port,
//!   signals, restart, kill on drop.
//! - `reply`: reading loosely typed Redis replies (`INFO`, `ROLE`, `SENTINEL MASTER`).
//! - `topology`: a master, replicas and Sentinels started together ([`Topology`]).

mod binary;
mod config;
mod error;
mod node;
mod reply;
mod topology;

pub use binary::{REDIS_SENTINEL_BIN_ENV, REDIS_SERVER_BIN_ENV};
pub use error::SandboxError;
pub use node::{RedisNode, SentinelNode};
pub use topology::{Topology, TopologyOptions};

/// Completes at the first SIGINT or SIGTERM: for a benchmark's `select!`, so that dropping
/// its run (which owns every process it started) stops them on Ctrl-C too.
pub async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
