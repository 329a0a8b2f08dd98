//! pivot-proxy: clients speak RESP to it as to one Redis; it sends every write to the master
//! the Sentinels decided on and spreads reads over healthy replicas, following the topology
//! the control plane streams to it.
//!
//! How the modules fit:
//! - [`config`]: flags and environment, validated before anything binds.
//! - [`server`]: listeners, worker threads (one single-threaded runtime each), shared state.
//! - [`connection`]: one client: read, frame ([`resp`]), classify ([`command`]), route
//!   ([`routing`]), hand to a backend with a reply slot, answer in order.
//! - [`backend`]: multiplexed, pipelined connections to Redis nodes and their pool.
//! - [`clients`]: the proxy's own clients (`CLIENT LIST`/`KILL`, `--max-clients`).
//! - [`config_client`]: the gRPC config stream; swaps the routing table atomically.
//! - [`follower`]: while the control plane is unreachable, follows the Sentinels with the
//!   control plane's own decision code (`pivot-sentinel`), invariant I6.
//! - [`cache`]: the last config on disk (`--cache-dir`), to start without the control
//!   plane, invariant I7.
//! - [`admin`], [`metrics`]: health, readiness, Prometheus.
//! - [`reply`]: replies the proxy writes itself.

mod ack;
pub mod admin;
mod arena;
pub mod backend;
pub mod cache;
pub mod clients;
pub mod command;
pub mod config;
pub mod config_client;
mod connection;
pub mod error;
pub mod follower;
pub mod inbox;
pub mod metrics;
mod queue;
pub mod reply;
pub mod resp;
pub mod routing;
pub mod server;

pub use config::Config;
pub use error::Error;
pub use server::{Proxy, run};
