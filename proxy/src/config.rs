//! Command-line and environment configuration, validated in one pass before anything binds.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
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

    /// gRPC endpoints of the control plane(s), `http://` or `https://` URLs. The proxy
    /// streams its config from one; when that stream fails or the endpoint is unreachable
    /// it moves to the next (round-robin), keeping its clients and its last config.
    /// Comma-separated and/or repeatable.
    #[arg(
        long,
        env = "PIVOT_CONTROL_PLANE",
        value_name = "URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051"
    )]
    pub control_plane: Vec<String>,

    /// Token presented to the control plane (`authorization: Bearer TOKEN`), one of its
    /// `--proxy-token`s. Prefer the environment to keep it out of the process list.
    #[arg(
        long,
        env = "PIVOT_CONTROL_PLANE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        value_parser = TokenParser
    )]
    pub control_plane_token: Option<Token>,

    /// CA certificate(s) (PEM) that sign the control plane's certificate, for `https://`
    /// endpoints (default: the system's roots).
    #[arg(long, env = "PIVOT_CONTROL_PLANE_TLS_CA", value_name = "FILE")]
    pub control_plane_tls_ca: Option<PathBuf>,

    /// Client certificate chain (PEM) presented to the control plane (mutual TLS); needs
    /// `--control-plane-tls-key`.
    #[arg(long, env = "PIVOT_CONTROL_PLANE_TLS_CERT", value_name = "FILE")]
    pub control_plane_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of `--control-plane-tls-cert`.
    #[arg(long, env = "PIVOT_CONTROL_PLANE_TLS_KEY", value_name = "FILE")]
    pub control_plane_tls_key: Option<PathBuf>,

    /// Name the control plane's certificate must carry (a DNS name or IP address in its
    /// subjectAltName), when it is not the host of the endpoint URL.
    #[arg(long, env = "PIVOT_CONTROL_PLANE_TLS_SERVER_NAME", value_name = "NAME")]
    pub control_plane_tls_server_name: Option<String>,

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

    /// At shutdown, how long to keep accepting and serving with /readyz answering 503
    /// before the listener closes: time for a load balancer that polls /readyz to stop
    /// sending new clients here. 0 closes it at once (on Kubernetes a preStop hook does
    /// this job).
    #[arg(long, env = "PIVOT_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,

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
        self.validate_control_plane()
    }

    fn validate_control_plane(&self) -> Result<(), String> {
        if self.control_plane.is_empty() {
            return Err("--control-plane needs at least one URL".into());
        }
        if self.control_plane.len() > MAX_CONTROL_PLANES {
            return Err(format!(
                "--control-plane takes at most {MAX_CONTROL_PLANES} URLs"
            ));
        }
        for (i, url) in self.control_plane.iter().enumerate() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "--control-plane must be http:// or https:// URLs, got '{url}'"
                ));
            }
            if self.control_plane[..i].contains(url) {
                return Err(format!("--control-plane lists {url} twice"));
            }
        }
        let tls_flags = self.control_plane_tls_ca.is_some()
            || self.control_plane_tls_cert.is_some()
            || self.control_plane_tls_key.is_some()
            || self.control_plane_tls_server_name.is_some();
        if tls_flags
            && let Some(plain) = self.control_plane.iter().find(|u| u.starts_with("http://"))
        {
            return Err(format!(
                "--control-plane-tls-* need https:// control plane URLs, got '{plain}' (it would not use TLS)"
            ));
        }
        match (&self.control_plane_tls_cert, &self.control_plane_tls_key) {
            (Some(_), None) => {
                return Err("--control-plane-tls-cert needs --control-plane-tls-key".into());
            }
            (None, Some(_)) => {
                return Err("--control-plane-tls-key needs --control-plane-tls-cert".into());
            }
            _ => {}
        }
        if self
            .control_plane_tls_server_name
            .as_ref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err("--control-plane-tls-server-name must not be empty".into());
        }
        Ok(())
    }

    /// A configuration for tests and the sandbox: ephemeral ports on loopback.
    pub fn for_service(service: &str, control_plane: &str) -> Self {
        Config {
            service: service.to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            control_plane: vec![control_plane.to_string()],
            control_plane_token: None,
            control_plane_tls_ca: None,
            control_plane_tls_cert: None,
            control_plane_tls_key: None,
            control_plane_tls_server_name: None,
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
            shutdown_delay: Duration::ZERO,
            log_format: LogFormat::Text,
        }
    }
}

/// Most control plane endpoints one proxy takes.
const MAX_CONTROL_PLANES: usize = 16;
/// Shortest token, as the control plane's `--proxy-token` requires.
const MIN_TOKEN_LEN: usize = 16;
/// Longest token (an HTTP/2 header value; this only bounds a mistake).
const MAX_TOKEN_LEN: usize = 4096;

/// The control plane token (`--control-plane-token`). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The token itself, for the `authorization` metadata.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl std::str::FromStr for Token {
    type Err = String;

    /// The control plane's rules for `--proxy-token`: at least 16 printable ASCII
    /// characters without spaces. The error never quotes the token.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "a token needs at least {MIN_TOKEN_LEN} characters (got {})",
                s.len()
            ));
        }
        if s.len() > MAX_TOKEN_LEN {
            return Err(format!("a token has at most {MAX_TOKEN_LEN} characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a token is printable ASCII without spaces".into());
        }
        Ok(Token(s.to_string()))
    }
}

/// Parses `--control-plane-token` without echoing it (clap's error for a `FromStr` value
/// quotes the value).
#[derive(Debug, Clone, Copy)]
struct TokenParser;

impl clap::builder::TypedValueParser for TokenParser {
    type Value = Token;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<Token, clap::Error> {
        let invalid = |m: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid --control-plane-token / PIVOT_CONTROL_PLANE_TOKEN: {m}\n"),
            )
        };
        value
            .to_str()
            .ok_or_else(|| invalid("not valid UTF-8".into()))?
            .parse()
            .map_err(invalid)
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
    fn many_control_planes() {
        let parse = |args: &[&str]| {
            let mut all = vec!["pivot-proxy", "--service", "m"];
            all.extend_from_slice(args);
            Config::try_parse_from(all).unwrap()
        };
        // Comma-separated, repeatable, or both; order kept.
        let c = parse(&[
            "--control-plane",
            "http://a:50051,http://b:50051",
            "--control-plane",
            "http://c:50051",
        ]);
        assert_eq!(
            c.control_plane,
            ["http://a:50051", "http://b:50051", "http://c:50051"]
        );
        c.validate().unwrap();
        // The single-endpoint form.
        let c = parse(&["--control-plane", "https://cp.example:50051"]);
        assert_eq!(c.control_plane, ["https://cp.example:50051"]);
        c.validate().unwrap();
        let twice = parse(&["--control-plane", "http://a:1,http://a:1"]);
        assert!(twice.validate().unwrap_err().contains("twice"));
    }

    #[test]
    fn token_and_tls_flags() {
        let c = Config::try_parse_from([
            "pivot-proxy",
            "--service",
            "m",
            "--control-plane",
            "https://a:50051,https://b:50051",
            "--control-plane-token",
            "s3cret-token-0123456789",
            "--control-plane-tls-ca",
            "/etc/pivot/ca.pem",
            "--control-plane-tls-cert",
            "/etc/pivot/proxy.pem",
            "--control-plane-tls-key",
            "/etc/pivot/proxy.key",
        ])
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.control_plane_token.as_ref().map(Token::expose),
            Some("s3cret-token-0123456789")
        );
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        let err = Config::try_parse_from([
            "pivot-proxy",
            "--service",
            "m",
            "--control-plane-token",
            "s3cret",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("16") && !err.contains("s3cret"), "{err}");
        // TLS flags with a plain endpoint: refused rather than silently unused.
        let mut plain = c.clone();
        plain.control_plane = vec!["https://a:50051".into(), "http://b:50051".into()];
        assert!(plain.validate().unwrap_err().contains("https://"));
        let mut half = c.clone();
        half.control_plane_tls_key = None;
        assert!(
            half.validate()
                .unwrap_err()
                .contains("--control-plane-tls-key")
        );
    }

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
        assert_eq!(c.control_plane, ["http://127.0.0.1:50051"]);
        assert!(c.control_plane_token.is_none());
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
        let bad = Config::try_parse_from([
            "pivot-proxy",
            "--service",
            "m",
            "--control-plane",
            "http://a:1,127.0.0.1:1",
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
