//! Domain types of a service's topology and the pure majority rule ([`decide`]), shared
//! with the proxy through the `pivot-sentinel` crate so that both decide with the same
//! code (the proxy when it follows the Sentinels itself, invariant I6).

pub use pivot_sentinel::topology::*;
