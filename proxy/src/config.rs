//! Command-line and environment configuration, validated in one pass before anything binds.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// pivot-proxy: speaks RESP to clients and sends every command to the right node of a Redis
/// group managed by Sentinel, following the control plane's topology.
#[derive(Debug, Clone, Parser)]
#[command(name = "pivot-proxy", version, about, long_about = None)]
pub struct Config {
    /// Service to serve: the Sentinel master name registered in the control plane.
    #[arg(long, env = "PIVOT_SERVICE")]
    pub service: String,

    /// Address clients connect to.
    #[arg(long, env = "PIVOT_LISTEN", default_value = "127.0.0.1:6379")]
    pub listen: SocketAddr,

    /// gRPC endpoint of the control plane.
    #[arg(
        long,
        env = "PIVOT_CONTROL_PLANE",
        default_value = "http://127.0.0.1:50051"
    )]
    pub control_plane: String,

    /// Address of the admin HTTP listener (/healthz, /readyz, /metrics, /status).
    #[arg(long, env = "PIVOT_ADMIN_LISTEN", default_value = "127.0.0.1:9121")]
    pub admin_listen: SocketAddr,

    /// Worker threads, each a single-threaded runtime with its own backend connections.
    /// One suits a small machine where Redis needs the other cores; raise it with the cores.
    #[arg(long, env = "PIVOT_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// Identity reported to the control plane (default: hostname-pid-random).
    #[arg(long, env = "PIVOT_PROXY_ID")]
    pub proxy_id: Option<String>,

    /// Largest request a client may send, in bytes (suffixes k, m, g); like Redis's
    /// proto-max-bulk-len.
    #[arg(long, env = "PIVOT_MAX_REQUEST_BYTES", default_value = "512m", value_parser = parse_bytes)]
    pub max_request_bytes: usize,

    /// Largest reply accepted from Redis, in bytes (suffixes k, m, g).
    #[arg(long, env = "PIVOT_MAX_REPLY_BYTES", default_value = "1g", value_parser = parse_bytes)]
    pub max_reply_bytes: usize,

    /// Client connections the proxy accepts; one more is answered
    /// `-ERR max number of clients reached` and closed, as Redis does.
    #[arg(long, env = "PIVOT_MAX_CLIENTS", default_value_t = 10_000)]
    pub max_clients: usize,

    /// Accept queue length of the client listener, like Redis's `tcp-backlog` (the kernel
    /// caps it at net.core.somaxconn).
    #[arg(long, env = "PIVOT_TCP_BACKLOG", default_value_t = 4096)]
    pub tcp_backlog: u32,

    /// TCP keepalive of client connections (0: off), like Redis's `tcp-keepalive`: a
    /// client that vanished without closing is found and its connection closed.
    #[arg(long, env = "PIVOT_CLIENT_TCP_KEEPALIVE", default_value = "300s", value_parser = humantime::parse_duration)]
    pub client_tcp_keepalive: Duration,

    /// Close a client connection idle this long (0: never), like Redis's `timeout`.
    /// Clients in a transaction, blocked, or subscribed are not closed.
    #[arg(long, env = "PIVOT_CLIENT_IDLE_TIMEOUT", default_value = "0s", value_parser = humantime::parse_duration)]
    pub client_idle_timeout: Duration,

    /// Reply bytes the proxy holds for one client that it has not written yet (suffixes
    /// k, m, g; 0: no limit). A client past it is disconnected, like Redis's hard
    /// `client-output-buffer-limit`: one that sends and never reads cannot grow the proxy.
    #[arg(long, env = "PIVOT_CLIENT_OUTPUT_LIMIT", default_value = "256m", value_parser = parse_bytes)]
    pub client_output_limit: usize,

    /// Requests one client may have in flight before the proxy stops reading from it.
    #[arg(long, env = "PIVOT_MAX_PIPELINE", default_value_t = 1024)]
    pub max_pipeline: usize,

    /// Timeout for connecting to a Redis node.
    #[arg(long, env = "PIVOT_BACKEND_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub backend_connect_timeout: Duration,

    /// How long a connection to a node that lost its role waits for replies in flight.
    #[arg(long, env = "PIVOT_BACKEND_DRAIN_GRACE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub backend_drain_grace: Duration,

    /// A backend request unanswered this long means the node stopped answering; a
    /// connection to a node that lost its role stops waiting for it then.
    #[arg(long, env = "PIVOT_BACKEND_STALL", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub backend_stall: Duration,

    /// How long a request for the master waits while there is no usable master (none known,
    /// its connection lost, or stalled) before the client gets `-TRYAGAIN`. Held requests
    /// go to the new master as soon as the control plane names it.
    #[arg(long, env = "PIVOT_FAILOVER_HOLD", default_value = "10s", value_parser = humantime::parse_duration)]
    pub failover_hold: Duration,

    /// For a service with `write_ack = replicas(N)`: how long a write's reply waits for N
    /// replicas to have the write; past it the client gets `-NOREPLICAS` (the write ran on
    /// the master, but a failover could lose it).
    #[arg(long, env = "PIVOT_WRITE_ACK_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub write_ack_timeout: Duration,
    /// Directory where the proxy keeps the last config it runs (one file per service,
    /// written atomically on every change), so that a proxy started while the control
    /// plane is unreachable serves from it at once. Unset: no cache.
    #[arg(long, env = "PIVOT_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<std::path::PathBuf>,

    /// How long the config stream may be down (or open without delivering a config) before
    /// the proxy follows the service's Sentinels itself, with the control plane's majority
    /// rule, until the control plane is back.
    #[arg(long, env = "PIVOT_SENTINEL_FOLLOW_AFTER", default_value = "1s", value_parser = humantime::parse_duration)]
    pub sentinel_follow_after: Duration,

    /// Poll period per Sentinel while following them (their events trigger polls too).
    #[arg(long, env = "PIVOT_SENTINEL_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub sentinel_poll_interval: Duration,

    /// How often the proxy reports its status (client connections, command and error
    /// counts, held requests, config version) to the control plane on the config stream;
    /// it also reports right after connecting. The control plane flags a proxy it has not
    /// heard from for three of these as silent.
    #[arg(long, env = "PIVOT_STATUS_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub status_interval: Duration,

    /// Dedicated backend connections (transactions, blocking commands) one worker may have
    /// open; past it such commands get an error.
    #[arg(long, env = "PIVOT_MAX_DEDICATED_CONNECTIONS", default_value_t = 4096)]
    pub max_dedicated_connections: usize,

    /// How long client connections may take to finish at shutdown.
    #[arg(long, env = "PIVOT_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "PIVOT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.service.trim().is_empty() {
            return Err("--service must not be empty".into());
        }
        if !(1..=256).contains(&self.workers) {
            return Err("--workers must be between 1 and 256".into());
        }
        if self.max_dedicated_connections == 0 {
            return Err("--max-dedicated-connections must be at least 1".into());
        }
        if self.max_clients == 0 {
            return Err("--max-clients must be at least 1".into());
        }
        if self.max_pipeline == 0 {
            return Err("--max-pipeline must be at least 1".into());
        }
        if self.max_request_bytes < 1024 {
            return Err("--max-request-bytes must be at least 1k".into());
        }
        if self.max_reply_bytes < 1024 {
            return Err("--max-reply-bytes must be at least 1k".into());
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&self.status_interval)
        {
            return Err("--status-interval must be between 100ms and 10m".into());
        }
        if self.sentinel_poll_interval < Duration::from_millis(10) {
            return Err("--sentinel-poll-interval must be at least 10ms".into());
        }
        if !(self.control_plane.starts_with("http://")
            || self.control_plane.starts_with("https://"))
        {
            return Err(format!(
                "--control-plane must be an http:// or https:// URL, got '{}'",
                self.control_plane
            ));
        }
        Ok(())
    }

    /// A configuration for tests and the sandbox: ephemeral ports on loopback.
    pub fn for_service(service: &str, control_plane: &str) -> Self {
        Config {
            service: service.to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            control_plane: control_plane.to_string(),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 1,
            proxy_id: None,
            max_request_bytes: 512 << 20,
            max_reply_bytes: 1 << 30,
            max_pipeline: 1024,
            max_clients: 10_000,
            client_output_limit: 256 << 20,
            client_idle_timeout: Duration::ZERO,
            backend_connect_timeout: Duration::from_secs(1),
            backend_drain_grace: Duration::from_secs(1),
            backend_stall: Duration::from_millis(250),
            max_dedicated_connections: 4096,
            failover_hold: Duration::from_secs(10),
            write_ack_timeout: Duration::from_secs(1),
            tcp_backlog: 4096,
            client_tcp_keepalive: Duration::from_secs(300),
            cache_dir: None,
            sentinel_follow_after: Duration::from_secs(1),
            sentinel_poll_interval: Duration::from_secs(1),
            status_interval: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
            log_format: LogFormat::Text,
        }
    }
}

/// Parses `512m`, `64k`, `1g` or a plain number of bytes.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (digits, mul) = match s.char_indices().last() {
        Some((i, 'k')) => (&s[..i], 1usize << 10),
        Some((i, 'm')) => (&s[..i], 1 << 20),
        Some((i, 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    digits
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("'{s}' is not a size (examples: 1048576, 512k, 64m, 1g)"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("512k").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("64MB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn flags_and_defaults() {
        let c = Config::try_parse_from(["pivot-proxy", "--service", "mymaster"]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:6379");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9121");
        assert_eq!(c.control_plane, "http://127.0.0.1:50051");
        assert_eq!(c.cache_dir, None);
        assert_eq!(c.sentinel_follow_after, Duration::from_secs(1));
        assert_eq!(c.status_interval, Duration::from_secs(2));
        c.validate().unwrap();
        let c = Config::try_parse_from([
            "pivot-proxy",
            "--service",
            "m",
            "--cache-dir",
            "/var/cache/pivot",
            "--sentinel-follow-after",
            "250ms",
        ])
        .unwrap();
        assert_eq!(c.cache_dir.unwrap().to_str(), Some("/var/cache/pivot"));
        assert_eq!(c.sentinel_follow_after, Duration::from_millis(250));
        assert!(Config::try_parse_from(["pivot-proxy"]).is_err());
        let bad = Config::try_parse_from([
            "pivot-proxy",
            "--service",
            "m",
            "--control-plane",
            "127.0.0.1:1",
        ])
        .unwrap();
        assert!(bad.validate().unwrap_err().contains("--control-plane"));
        let bad =
            Config::try_parse_from(["pivot-proxy", "--service", "m", "--workers", "0"]).unwrap();
        assert!(bad.validate().is_err());
        for interval in ["10ms", "1h"] {
            let bad = Config::try_parse_from([
                "pivot-proxy",
                "--service",
                "m",
                "--status-interval",
                interval,
            ])
            .unwrap();
            assert!(
                bad.validate().unwrap_err().contains("--status-interval"),
                "{interval}"
            );
        }
    }
}
