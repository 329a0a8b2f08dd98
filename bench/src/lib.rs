//! `pivot-bench`: Pivot's proxy against direct Redis and the proxies a user would pick
//! instead (issue 7), measured with `redis-benchmark` on one machine.
//!
//! - [`options`]: what to run: the tests (`SET`/`GET`, `-P 1`/`-P 16`), the targets, the
//!   numbers.
//! - `child`: processes the bench starts and owns (killed on drop).
//! - [`targets`]: the Redis group (`pivot_sandbox::Topology`), the real
//!   `pivot-control-plane` and `pivot-proxy` binaries, and the peers found installed
//!   (`haproxy`, `nutcracker`), each a child on 127.0.0.1 ephemeral ports.
//! - [`load`]: one `redis-benchmark` run against one target, with the target's CPU,
//!   context switches and memory (`/proc`) and Redis's CPU and reads (`INFO`) around it.
//! - [`idle`]: memory per idle client connection.
//! - [`report`]: medians over the interleaved rounds, ratios to direct Redis in the same
//!   round, the targets, the markdown; [`chart`]: the PNG.
//!
//! [`run`] starts everything, measures every target for every test in a rotating order
//! round after round, then the idle connections, and stops everything (also on error: every
//! process is owned and killed on drop).

pub mod chart;
mod child;
pub mod idle;
pub mod load;
pub mod options;
pub mod report;
pub mod run;
pub mod targets;

pub use options::{BenchOptions, Command, TargetKind, Test};
pub use report::{DOCS_BEGIN, DOCS_END, Report};
pub use run::run;
