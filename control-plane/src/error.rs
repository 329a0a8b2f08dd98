//! The crate's one error type. Every variant says who caused it (operator config, the
//! store, the OS); HTTP and gRPC callers never see these messages (see `http`, `grpc`).

use std::net::SocketAddr;

/// Errors of the control plane's start-up and run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operator's configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A listener could not be bound; `flag` names the option that moves it.
    #[error("cannot listen on {addr} (set another address with {flag}): {source}")]
    Bind {
        /// The command-line flag that sets this address.
        flag: &'static str,
        /// The address that was asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The data directory could not be created or used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The SQLite store failed.
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
    /// A schema migration failed.
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// An operation named a service the control plane does not know.
    #[error("unknown service `{0}`")]
    UnknownService(String),
    /// An operation's input is invalid.
    #[error("{0}")]
    Invalid(String),
    /// One field of an operation's input is invalid; `field` is its JSON path
    /// (`sentinels[1]`, `rules[0].command`).
    #[error("{field}: {message}")]
    InvalidField {
        /// JSON path of the field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// An operation named something (rule, user, token) that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An operation conflicts with the current state (exists already, failover running).
    #[error("{0}")]
    Conflict(String),
    /// An operation could not be carried out by the Redis nodes or Sentinels (a failover
    /// that did not complete); nothing the caller sent was wrong.
    #[error("{0}")]
    Unavailable(String),
    /// A server stopped with an error.
    #[error("{server} server: {message}")]
    Serve {
        /// `http` or `grpc`.
        server: &'static str,
        /// What went wrong.
        message: String,
    },
}
