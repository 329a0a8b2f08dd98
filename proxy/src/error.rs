//! The proxy's error type (start-up and configuration; per-request failures are replies).

use std::net::SocketAddr;

/// Errors that stop the proxy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({flag} moves it): {source}")]
    Bind {
        /// The flag that sets this address.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Other I/O failure at start.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
}
