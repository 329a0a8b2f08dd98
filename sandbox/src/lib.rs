//! Real `redis-server` and Sentinel processes for Pivot's integration tests and local stack.
//!
//! [`process`] owns process lifecycles: it writes each node's config into its own
//! directory, starts it on a free loopback port, and kills it on drop. A [`Topology`] is
//! one master, its replicas and the Sentinels that watch them, ready (replicas synced,
//! Sentinels agreed) when [`Topology::start`] returns. Nodes can be frozen (`SIGSTOP`),
//! killed and restarted to provoke failovers.

pub mod process;
// pub mod stack;

pub use process::{RedisNode, SandboxError, SentinelNode, Topology, TopologyOptions};
