//! pivot-sentinel: what Pivot knows about Redis Sentinel, shared by the control plane and
//! the proxy so that both decide a service's topology with the same code.
//!
//! - [`topology`]: domain types and the pure majority rule [`topology::decide`].
//! - [`promotion`]: the pure rules for following a failover's elected leader ahead of the
//!   majority (hold writes, promote, abort, expire, superseded by the majority).
//! - [`leader`]: drives a promotion from the links: the leader's events as signals, the
//!   clock and the `ROLE` poller (the control plane's aggregator and the proxy's follower).
//! - [`event`]: Sentinel pub/sub channels and payload parsing, including the leader's own
//!   events and the epoch they belong to.
//! - [`query`]: one Sentinel poll as a [`topology::SentinelView`], a node's `ROLE`.
//! - [`link`]: a task per (service, Sentinel) that subscribes, polls and reports.
//! - [`wire`]: topology to and from `pivot.v1`.
//!
//! The control plane runs links for every service it watches and publishes the decision;
//! a proxy runs links only while its control plane is unreachable (invariant I6).

pub mod event;
pub mod leader;
pub mod link;
pub mod promotion;
pub mod query;
pub mod topology;
pub mod wire;
