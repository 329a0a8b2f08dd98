//! The crate's one error type.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while starting, controlling or querying sandbox processes.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No usable `redis-server` (or `redis-sentinel`) binary.
    #[error(
        "redis-server binary not found: {detail}; install Debian's `redis-server` and \
         `redis-sentinel` packages (`apt-get install redis-server redis-sentinel`) or set \
         REDIS_SERVER_BIN to the path of a redis-server binary"
    )]
    BinaryNotFound {
        /// What was looked for and where.
        detail: String,
    },

    /// The [`TopologyOptions`](crate::TopologyOptions) cannot describe a working topology.
    #[error("invalid topology options: {0}")]
    InvalidOptions(String),

    /// A filesystem or process-spawning operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A process exited early or never answered `PING`.
    #[error(
        "{name} failed to start after {attempts} attempt(s): {reason}\n\
         last lines of {}:\n{log_tail}",
        log.display()
    )]
    StartFailed {
        /// Which node (e.g. `redis node 1`, `sentinel 0`).
        name: String,
        /// How many ports were tried.
        attempts: u32,
        /// Why the last attempt failed.
        reason: String,
        /// The process's log file.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },

    /// A wait did not see its condition before the deadline.
    #[error("timed out after {waited:?} waiting for {what}; last observed: {last}")]
    Timeout {
        /// The awaited condition.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// The last state observed while waiting.
        last: String,
    },

    /// A Redis command (or the connection for it) failed.
    #[error("{context} ({addr}): {source}")]
    Redis {
        /// The server the command was sent to.
        addr: SocketAddr,
        /// The command or step.
        context: String,
        /// The client error.
        #[source]
        source: redis::RedisError,
    },

    /// A reply did not have the expected shape.
    #[error("unexpected reply from {addr} to {command}: {reply}")]
    UnexpectedReply {
        /// The server that replied.
        addr: SocketAddr,
        /// The command sent.
        command: String,
        /// The reply, debug-formatted.
        reply: String,
    },

    /// The operation needs a running process and there is none (killed or exited).
    #[error("{name} is not running")]
    NotRunning {
        /// Which node.
        name: String,
    },

    /// Sending a signal failed.
    #[error("sending {signal} to {name} (pid {pid}) failed: {source}")]
    Signal {
        /// Which node.
        name: String,
        /// The target PID.
        pid: u32,
        /// The signal name.
        signal: String,
        /// The OS error.
        #[source]
        source: nix::errno::Errno,
    },

    /// No majority of the Sentinels agree on a master.
    #[error("no majority of the {total} Sentinels names a master for {master_name}: {observed}")]
    NoMajority {
        /// The monitored master's name.
        master_name: String,
        /// How many Sentinels the topology has.
        total: usize,
        /// What each Sentinel answered.
        observed: String,
    },
}

impl SandboxError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps a Redis client error with the server and the step.
    pub(crate) fn redis(
        addr: SocketAddr,
        context: impl Into<String>,
        source: redis::RedisError,
    ) -> Self {
        Self::Redis {
            addr,
            context: context.into(),
            source,
        }
    }
}
