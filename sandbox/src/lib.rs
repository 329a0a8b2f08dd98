//! Real `redis-server` and Sentinel processes for Pivot's integration tests and local stack.
//!
//! [`process`] owns process lifecycles: it writes each node's config into its own
//! directory, starts it on a free loopback port, and kills it on drop. A [`Topology`] is
//! one master, its replicas and the Sentinels that watch them, ready (replicas synced,
//! Sentinels agreed) when [`Topology::start`] returns. Nodes can be frozen (`SIGSTOP`),
//! killed and restarted to provoke failovers.
//!
//! [`stack`] adds Pivot itself: the control plane and proxies, run in-process on top of a
//! topology. The `pivot-sandbox` binary is that stack for a person to try.
//!
//! [`chaos`] runs a workload through the stack's proxies while injecting faults (master
//! freezes, a control-plane outage, Sentinel, replica and proxy restarts) and reports
//! against the failover invariants; the `pivot-chaos` binary is its command.
//!
//! [`fleet`] is the control plane at fleet scale: the real `pivot-control-plane` binary as
//! a child process, thousands of simulated proxy config streams, a rule change timed until
//! every one has ACKed it, memory per stream and a restart; the `pivot-fleet-bench` binary
//! is its command.
//!
//! [`procfs`] reads a child process's CPU time, memory and context switches; the
//! benchmarks (here and in `pivot-bench`) sample their children with it.

pub mod chaos;
pub mod fleet;
pub mod process;
pub mod procfs;
pub mod stack;

pub use process::{RedisNode, SandboxError, SentinelNode, Topology, TopologyOptions};
pub use stack::{ControlPlaneHandle, DEFAULT_ADMIN_TOKEN, ProxyHandle, Stack, StackOptions};
