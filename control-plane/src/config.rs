//! Configuration from flags, `PIVOT_*` environment variables and an optional TOML file
//! (`--config`, see [`file`]), validated in one pass before anything binds.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::auth::AdminToken;
use crate::error::Error;
use crate::grpc::credentials::{ProxyToken, ProxyTokenParser, TlsFiles};
use crate::state::{BackendAuth, CommandRule, Consistency, ReadPolicy, WriteAck};
use crate::topology::NodeAddr;

pub mod file;

/// Configuration of the control plane (flags, or `PIVOT_*` environment variables).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "pivot-control-plane",
    version,
    about = "Pivot control plane: watches Redis Sentinels and streams topology to Pivot proxies"
)]
pub struct Config {
    /// A TOML file setting any of the other flags: its keys are the long flag names
    /// (`http-listen = "127.0.0.1:8080"`), repeatable flags take arrays (`service =
    /// ["mymaster=10.0.0.1:26379,10.0.0.2:26379"]`). A flag on the command line wins over
    /// its environment variable, which wins over the file. Secrets (`backend-auth`,
    /// `proxy-user`) are best kept here or in the environment, out of the process list.
    #[arg(long = "config", env = "PIVOT_CONFIG", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// Directory holding the SQLite store (created if missing).
    #[arg(
        long,
        env = "PIVOT_DATA_DIR",
        value_name = "DIR",
        default_value = "./pivot-data"
    )]
    pub data_dir: PathBuf,

    /// Address of the HTTP server (REST API, web UI, /metrics, /healthz, /readyz).
    #[arg(
        long,
        env = "PIVOT_HTTP_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub http_listen: SocketAddr,

    /// Address of the gRPC server proxies stream their configuration from.
    #[arg(
        long,
        env = "PIVOT_GRPC_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_listen: SocketAddr,

    /// Certificate chain (PEM) of the gRPC listener: with `--grpc-tls-key`, proxies
    /// connect over TLS (`https://` endpoints). Read at start.
    #[arg(long, env = "PIVOT_GRPC_TLS_CERT", value_name = "FILE")]
    pub grpc_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of `--grpc-tls-cert`.
    #[arg(long, env = "PIVOT_GRPC_TLS_KEY", value_name = "FILE")]
    pub grpc_tls_key: Option<PathBuf>,

    /// CA certificate(s) (PEM) that sign the proxies' client certificates: with it, a
    /// proxy must present a certificate signed by one of them (mutual TLS). Needs
    /// `--grpc-tls-cert`.
    #[arg(long, env = "PIVOT_GRPC_TLS_CLIENT_CA", value_name = "FILE")]
    pub grpc_tls_client_ca: Option<PathBuf>,

    /// A token proxies must present to subscribe to the config stream (`authorization:
    /// Bearer TOKEN`; the proxy's `--control-plane-token`). With none, any proxy that
    /// reaches the gRPC listener may subscribe. Several are accepted at once (rotation).
    /// At least 16 printable characters without spaces; only their SHA-256 is kept, never
    /// logged. Repeatable; in PIVOT_PROXY_TOKENS separate tokens with `;` (prefer the
    /// environment or the config file to keep them out of the process list).
    #[arg(
        long = "proxy-token",
        env = "PIVOT_PROXY_TOKENS",
        value_name = "TOKEN",
        value_delimiter = ';',
        hide_env_values = true,
        value_parser = ProxyTokenParser
    )]
    pub proxy_tokens: Vec<ProxyToken>,

    /// Registers or updates a service: NAME is the Sentinel master name, followed by the
    /// addresses of its Sentinels. Repeatable; in PIVOT_SERVICES separate services with `;`.
    #[arg(
        long = "service",
        env = "PIVOT_SERVICES",
        value_name = "NAME=HOST:PORT,HOST:PORT,...",
        value_delimiter = ';'
    )]
    pub services: Vec<ServiceSpec>,

    /// Read policy of a service: `master-only`, `replicas` (the default: round-robin over
    /// healthy replicas, master as fallback) or `all` (master and replicas). Stored, so it
    /// stays until changed. Repeatable; in PIVOT_READ_POLICIES separate entries with `;`.
    #[arg(
        long = "read-policy",
        env = "PIVOT_READ_POLICIES",
        value_name = "NAME=POLICY",
        value_delimiter = ';'
    )]
    pub read_policies: Vec<ReadPolicySpec>,

    /// Read consistency of a service: `read-your-writes` (the default: once a client
    /// connection has written, its reads go to the master), `eventual` (any healthy
    /// replica) or `strong` (master only). Stored. Repeatable; in PIVOT_CONSISTENCY
    /// separate entries with `;`.
    #[arg(
        long = "consistency",
        env = "PIVOT_CONSISTENCY",
        value_name = "NAME=MODE",
        value_delimiter = ';'
    )]
    pub consistency: Vec<ServiceSetting<Consistency>>,

    /// A command rule of a service, overriding the command's own class: TARGET is
    /// `master`, `replica`, `any` or `deny`; COMMAND a name or `container|sub` (e.g.
    /// `config|set:deny`, `evalsha:replica`). The rules given for a service replace its
    /// stored rules. Repeatable; in PIVOT_RULES separate entries with `;`.
    #[arg(
        long = "rule",
        env = "PIVOT_RULES",
        value_name = "NAME=COMMAND:TARGET",
        value_delimiter = ';'
    )]
    pub rules: Vec<ServiceSetting<CommandRule>>,

    /// Replicas further behind the master than BYTES of replication offset (as the
    /// Sentinels report it) get no reads until they catch up. Stored. Repeatable; in
    /// PIVOT_MAX_REPLICA_LAG separate entries with `;`.
    #[arg(
        long = "max-replica-lag",
        env = "PIVOT_MAX_REPLICA_LAG",
        value_name = "NAME=BYTES",
        value_delimiter = ';'
    )]
    pub max_replica_lag: Vec<ServiceSetting<ByteSize>>,

    /// When a write is acknowledged to the client: `master` (the default: with the
    /// master's reply) or `replicas(N)` (once N replicas have it, with `WAIT`; a failover
    /// then cannot lose an acknowledged write). Stored. Repeatable; in PIVOT_WRITE_ACK
    /// separate entries with `;`.
    #[arg(
        long = "write-ack",
        env = "PIVOT_WRITE_ACK",
        value_name = "NAME=MODE",
        value_delimiter = ';'
    )]
    pub write_ack: Vec<ServiceSetting<WriteAck>>,

    /// How long proxies hold requests for a service's master while it has none (a failover)
    /// before answering `-TRYAGAIN`; overrides the proxies' `--failover-hold`. Stored.
    /// Repeatable; in PIVOT_FAILOVER_HOLD separate entries with `;`.
    #[arg(
        long = "failover-hold",
        env = "PIVOT_FAILOVER_HOLD",
        value_name = "NAME=DURATION",
        value_delimiter = ';'
    )]
    pub failover_hold: Vec<ServiceSetting<HoldDuration>>,

    /// A user clients authenticate to a service's proxies as (`AUTH [USER] PASSWORD`);
    /// once a service has users, unauthenticated clients get `NOAUTH`. The user `default`
    /// is the one `AUTH PASSWORD` names. Stored as a salted hash, created or replaced.
    /// Repeatable; in PIVOT_PROXY_USERS separate entries with `;` (prefer the environment
    /// to keep secrets out of the process list).
    #[arg(
        long = "proxy-user",
        env = "PIVOT_PROXY_USERS",
        value_name = "NAME=USER:PASSWORD",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub proxy_users: Vec<ProxyUserSpec>,

    /// Credentials proxies use for a service's Redis nodes: `NAME=PASSWORD` or
    /// `NAME=USER:PASSWORD` (an ACL user). Stored, never shown by an API or logged.
    /// Repeatable; in PIVOT_BACKEND_AUTH separate entries with `;` (prefer the environment
    /// to keep secrets out of the process list).
    #[arg(
        long = "backend-auth",
        env = "PIVOT_BACKEND_AUTH",
        value_name = "NAME=[USER:]PASSWORD",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub backend_auth: Vec<BackendAuthSpec>,

    /// The admin token of the REST API: stored (hashed) as an admin token at start unless
    /// it already is. Without it, a store with no admin token gets a generated one, printed
    /// once on stderr. At least 32 printable characters; prefer the environment to keep it
    /// out of the process list. Never logged.
    #[arg(
        long,
        env = "PIVOT_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        value_parser = AdminTokenParser
    )]
    pub admin_token: Option<AdminToken>,

    /// Accept queue of the HTTP and gRPC listeners. After a control-plane restart the
    /// whole proxy fleet reconnects at once; a queue shorter than the fleet drops SYNs,
    /// and each dropped one costs its proxy a 1 s retransmit (the kernel caps it at
    /// net.core.somaxconn).
    #[arg(long, env = "PIVOT_LISTEN_BACKLOG", value_name = "N", default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub listen_backlog: u32,

    /// How often every Sentinel is polled (events trigger an immediate poll as well).
    #[arg(long, env = "PIVOT_SENTINEL_POLL_INTERVAL", value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub sentinel_poll_interval: Duration,

    /// Log output format.
    #[arg(long, env = "PIVOT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A service to watch: its Sentinel master name and its Sentinels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Sentinel master name.
    pub name: String,
    /// Configured Sentinels.
    pub sentinels: Vec<NodeAddr>,
}

/// A `--backend-auth NAME=[USER:]PASSWORD` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendAuthSpec {
    /// Service name.
    pub service: String,
    /// Its credentials (`Debug` hides the password).
    pub auth: BackendAuth,
}

impl FromStr for BackendAuthSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, creds) = s
            .split_once('=')
            .ok_or_else(|| "expected NAME=[USER:]PASSWORD".to_string())?;
        Ok(Self {
            service: name.trim().to_string(),
            auth: creds.parse()?,
        })
    }
}

/// Parses `--admin-token` without echoing it: clap's usual error repeats the invalid
/// value, which here is a secret.
#[derive(Debug, Clone, Copy)]
struct AdminTokenParser;

impl clap::builder::TypedValueParser for AdminTokenParser {
    type Value = AdminToken;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<AdminToken, clap::Error> {
        let invalid = |m: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid --admin-token / PIVOT_ADMIN_TOKEN: {m}\n"),
            )
        };
        value
            .to_str()
            .ok_or_else(|| invalid("not valid UTF-8".into()))?
            .parse()
            .map_err(invalid)
    }
}

/// A per-service `NAME=VALUE` setting (`--read-policy`, `--consistency`, `--rule`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSetting<T> {
    /// Service name.
    pub service: String,
    /// The setting.
    pub value: T,
}

/// A `--read-policy NAME=POLICY` setting.
pub type ReadPolicySpec = ServiceSetting<ReadPolicy>;

/// A byte count: a number with an optional `k`, `m` or `g` suffix (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let (digits, shift) = match t.strip_suffix(['k', 'm', 'g']) {
            Some(d) if t.ends_with('k') => (d, 10),
            Some(d) if t.ends_with('m') => (d, 20),
            Some(d) => (d, 30),
            None => (t.as_str(), 0),
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is not a byte count (e.g. 1048576, 512k, 1m)"))
    }
}

/// A `--failover-hold` duration (`10s`, `1500ms`), 1 ms to 10 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldDuration(pub Duration);

impl FromStr for HoldDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}"))?;
        if d < Duration::from_millis(1) || d > Duration::from_secs(600) {
            return Err(format!("`{s}`: must be between 1ms and 10m"));
        }
        Ok(HoldDuration(d))
    }
}

impl<T: FromStr<Err = String>> FromStr for ServiceSetting<T> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
        Ok(Self {
            service: name.trim().to_string(),
            value: value.trim().parse()?,
        })
    }
}

impl FromStr for CommandRule {
    type Err = String;

    /// `COMMAND:TARGET`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (command, target) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not COMMAND:TARGET"))?;
        CommandRule::new(command, target.trim().parse()?)
    }
}

/// A `--proxy-user NAME=USER:PASSWORD` setting.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUserSpec {
    /// Service name.
    pub service: String,
    /// User name.
    pub user: String,
    /// Password (hashed before it is stored).
    pub password: String,
}

impl std::fmt::Debug for ProxyUserSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyUserSpec")
            .field("service", &self.service)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl FromStr for ProxyUserSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (service, creds) = s
            .split_once('=')
            .ok_or_else(|| "expected NAME=USER:PASSWORD".to_string())?;
        let (user, password) = creds
            .split_once(':')
            .ok_or_else(|| "expected NAME=USER:PASSWORD".to_string())?;
        crate::state::validate_user_name(user)?;
        if password.is_empty() {
            return Err(format!("user `{user}` needs a non-empty password"));
        }
        Ok(Self {
            service: service.trim().to_string(),
            user: user.to_string(),
            password: password.to_string(),
        })
    }
}

impl FromStr for ServiceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, addrs) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}` is not NAME=HOST:PORT,..."))?;
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(format!(
                "`{s}`: the service name must be non-empty, without spaces"
            ));
        }
        let sentinels = addrs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(NodeAddr::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("service `{name}`: {e}"))?;
        if sentinels.is_empty() {
            return Err(format!(
                "service `{name}` needs at least one Sentinel address"
            ));
        }
        Ok(Self {
            name: name.to_string(),
            sentinels,
        })
    }
}

impl Config {
    /// The configuration of this process: its arguments and environment, and the
    /// `--config` file if one is named. What `main` calls; on error, `clap::Error::exit`
    /// prints the message (and usage) and exits with status 2 (0 for `--help`).
    pub fn load() -> Result<Config, clap::Error> {
        Self::load_from(std::env::args_os())
    }

    /// As [`load`](Self::load), with `args` in place of the process's arguments (the
    /// first is the binary name); the environment is still this process's.
    pub fn load_from<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString>,
    {
        file::parse(args.into_iter().map(Into::into).collect(), "config_file")
    }

    /// A configuration with the defaults and no services (for tests and embedding).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut c = Config::parse_from(["pivot-control-plane"]);
        c.data_dir = data_dir.into();
        c
    }

    /// Checks everything that can be checked before binding: unique service names, at
    /// least one Sentinel per service, no duplicate Sentinels, a sane poll interval.
    pub fn validate(&self) -> Result<(), Error> {
        let mut names = HashSet::new();
        for s in &self.services {
            if s.name.is_empty() || s.name.contains(char::is_whitespace) {
                return Err(Error::Config(format!("invalid service name `{}`", s.name)));
            }
            if !names.insert(s.name.as_str()) {
                return Err(Error::Config(format!(
                    "service `{}` is given more than once",
                    s.name
                )));
            }
            if s.sentinels.is_empty() {
                return Err(Error::Config(format!(
                    "service `{}` needs at least one Sentinel",
                    s.name
                )));
            }
            let mut seen = HashSet::new();
            for a in &s.sentinels {
                if a.port == 0 || a.host.is_empty() {
                    return Err(Error::Config(format!(
                        "service `{}`: invalid Sentinel address `{a}`",
                        s.name
                    )));
                }
                if !seen.insert(a) {
                    return Err(Error::Config(format!(
                        "service `{}`: Sentinel {a} is listed twice",
                        s.name
                    )));
                }
            }
        }
        if self.sentinel_poll_interval < Duration::from_millis(10) {
            return Err(Error::Config(
                "--sentinel-poll-interval must be at least 10ms".into(),
            ));
        }
        self.grpc_tls().validate()
    }

    /// The gRPC listener's TLS files (`--grpc-tls-*`).
    pub fn grpc_tls(&self) -> TlsFiles {
        TlsFiles {
            cert: self.grpc_tls_cert.clone(),
            key: self.grpc_tls_key.clone(),
            client_ca: self.grpc_tls_client_ca.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backend_auth_flag_hides_the_password() {
        let c = Config::try_parse_from([
            "pivot-control-plane",
            "--backend-auth",
            "m=pivot:s3cr:et",
            "--backend-auth",
            "n=justpass",
        ])
        .unwrap();
        assert_eq!(c.backend_auth[0].auth.username.as_deref(), Some("pivot"));
        assert_eq!(c.backend_auth[0].auth.password, "s3cr:et");
        assert_eq!(c.backend_auth[1].auth.username, None);
        assert!(!format!("{c:?}").contains("s3cr"), "{c:?}");
        assert!("m=".parse::<BackendAuthSpec>().is_err());
        assert!("m=:pw".parse::<BackendAuthSpec>().is_err());
        assert!("nopass".parse::<BackendAuthSpec>().is_err());
    }

    #[test]
    fn proxy_tokens_and_grpc_tls_flags() {
        let c = Config::try_parse_from([
            "pivot-control-plane",
            "--proxy-token",
            "s3cret-one-0123456789",
            "--proxy-token",
            "s3cret-two-0123456789",
            "--grpc-tls-cert",
            "/etc/pivot/cp.pem",
            "--grpc-tls-key",
            "/etc/pivot/cp.key",
            "--grpc-tls-client-ca",
            "/etc/pivot/proxies-ca.pem",
        ])
        .unwrap();
        assert_eq!(c.proxy_tokens.len(), 2);
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        assert_eq!(
            c.grpc_tls().client_ca,
            Some("/etc/pivot/proxies-ca.pem".into())
        );
        c.validate().unwrap();
        // A bad token is refused without being echoed.
        let err = Config::try_parse_from(["x", "--proxy-token", "s3cret"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("16"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let half = Config::try_parse_from(["x", "--grpc-tls-cert", "/c.pem"]).unwrap();
        assert!(matches!(half.validate(), Err(Error::Config(m)) if m.contains("--grpc-tls-key")));
    }

    #[test]
    fn admin_token_flag_is_redacted() {
        let c = Config::try_parse_from([
            "pivot-control-plane",
            "--admin-token",
            "pvt_s3cret0123456789abcdef0123456789",
        ])
        .unwrap();
        assert_eq!(
            c.admin_token.as_ref().map(AdminToken::expose),
            Some("pvt_s3cret0123456789abcdef0123456789")
        );
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        let err = Config::try_parse_from(["x", "--admin-token", "s3cret"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("32"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn read_policy_flag() {
        let c = Config::try_parse_from([
            "pivot-control-plane",
            "--service",
            "m=127.0.0.1:26379",
            "--read-policy",
            "m=master-only",
        ])
        .unwrap();
        assert_eq!(c.read_policies[0].value, ReadPolicy::MasterOnly);
        assert_eq!(c.read_policies[0].service, "m");
        assert!("m=sometimes".parse::<ReadPolicySpec>().is_err());
        assert!("master-only".parse::<ReadPolicySpec>().is_err());
    }

    #[test]
    fn policy_flags() {
        let c = Config::try_parse_from([
            "pivot-control-plane",
            "--service",
            "m=127.0.0.1:26379",
            "--consistency",
            "m=strong",
            "--rule",
            "m=CONFIG|SET:deny",
            "--rule",
            "m=evalsha:replica",
            "--max-replica-lag",
            "m=1m",
            "--write-ack",
            "m=replicas(2)",
            "--failover-hold",
            "m=1500ms",
            "--proxy-user",
            "m=app:s3cr:et",
        ])
        .unwrap();
        assert_eq!(c.consistency[0].value, Consistency::Strong);
        assert_eq!(c.rules[0].value.command, "config|set");
        assert_eq!(c.rules[0].value.target, crate::state::Target::Deny);
        assert_eq!(c.max_replica_lag[0].value, ByteSize(1 << 20));
        assert_eq!(c.write_ack[0].value, WriteAck::Replicas(2));
        assert_eq!(
            c.failover_hold[0].value,
            HoldDuration(Duration::from_millis(1500))
        );
        assert_eq!(c.proxy_users[0].user, "app");
        assert_eq!(c.proxy_users[0].password, "s3cr:et");
        assert!(!format!("{:?}", c.proxy_users).contains("s3cr"));
        for bad in ["m=get", "m=get:nowhere", "m=a b:deny", "m=a|b|c:deny"] {
            assert!(bad.parse::<ServiceSetting<CommandRule>>().is_err(), "{bad}");
        }
        for bad in [
            "replicas(0)",
            "replicas()",
            "replicas(x)",
            "all",
            "replicas(65)",
        ] {
            assert!(bad.parse::<WriteAck>().is_err(), "{bad}");
        }
        assert_eq!("master".parse::<WriteAck>().unwrap(), WriteAck::Master);
        assert!("0s".parse::<HoldDuration>().is_err());
        assert!("1h".parse::<HoldDuration>().is_err());
        assert!("12q".parse::<ByteSize>().is_err());
        assert_eq!("4k".parse::<ByteSize>().unwrap(), ByteSize(4096));
        assert!("m=bob".parse::<ProxyUserSpec>().is_err());
        assert!("m=bad name:pw".parse::<ProxyUserSpec>().is_err());
        assert!("m=bob:".parse::<ProxyUserSpec>().is_err());
    }

    #[test]
    fn defaults() {
        let c = Config::try_parse_from(["x"]).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./pivot-data"));
        assert_eq!(c.http_listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.grpc_listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(c.sentinel_poll_interval, Duration::from_secs(1));
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.services.is_empty());
        c.validate().unwrap();
    }

    #[test]
    fn services_repeatable() {
        let c = Config::try_parse_from([
            "x",
            "--service",
            "mymaster=127.0.0.1:26379,127.0.0.1:26380",
            "--service",
            "other=sentinel.local:26379",
            "--sentinel-poll-interval",
            "250ms",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.services[0].name, "mymaster");
        assert_eq!(
            c.services[0].sentinels,
            vec![
                NodeAddr::new("127.0.0.1", 26379),
                NodeAddr::new("127.0.0.1", 26380)
            ]
        );
        assert_eq!(
            c.services[1].sentinels,
            vec![NodeAddr::new("sentinel.local", 26379)]
        );
        assert_eq!(c.sentinel_poll_interval, Duration::from_millis(250));
        assert_eq!(c.log_format, LogFormat::Json);
        c.validate().unwrap();
    }

    #[test]
    fn bad_service_specs() {
        for bad in [
            "noequals",
            "=h:1",
            "a=",
            "a=h",
            "a=h:0",
            "a=h:1,h:x",
            "a b=h:1",
        ] {
            assert!(
                Config::try_parse_from(["x", "--service", bad]).is_err(),
                "{bad}"
            );
        }
    }

    /// Loads `args` with a `--config` file holding `toml`.
    fn with_file(toml: &str, args: &[&str]) -> (Result<Config, clap::Error>, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pivot.toml");
        std::fs::write(&path, toml).unwrap();
        let path = path.to_str().unwrap().to_string();
        let mut argv = vec!["pivot-control-plane", "--config", &path];
        argv.extend_from_slice(args);
        (Config::load_from(argv), path)
    }

    fn file_error(toml: &str) -> (clap::Error, String) {
        let (r, path) = with_file(toml, &[]);
        (r.unwrap_err(), path)
    }

    #[test]
    fn a_file_sets_any_flag() {
        let (c, path) = with_file(
            r#"
            data-dir = "/var/lib/pivot"
            http-listen = "127.0.0.1:18080"
            service = ["a=127.0.0.1:26379,127.0.0.1:26380", "b=sentinel.local:26379"]
            read-policy = ["a=all"]
            rule = ["a=flushall:deny", "a=evalsha:replica"]
            write-ack = "a=replicas(1)"
            backend-auth = ["a=pivot:s3cret"]
            proxy-user = ["a=app:t0ken"]
            sentinel-poll-interval = "250ms"
            log-format = "json"
            "#,
            &[],
        );
        let c = c.unwrap();
        assert_eq!(c.config_file.as_deref(), Some(std::path::Path::new(&path)));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/pivot"));
        assert_eq!(c.http_listen, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(c.grpc_listen, "127.0.0.1:50051".parse().unwrap(), "default");
        assert_eq!(c.services.len(), 2);
        assert_eq!(
            c.services[1].sentinels,
            vec![NodeAddr::new("sentinel.local", 26379)]
        );
        assert_eq!(c.read_policies[0].value, ReadPolicy::All);
        assert_eq!(c.rules.len(), 2);
        assert_eq!(c.rules[1].value.command, "evalsha");
        assert_eq!(
            c.write_ack[0].value,
            WriteAck::Replicas(1),
            "one value of a repeatable flag"
        );
        assert_eq!(c.backend_auth[0].auth.password, "s3cret");
        assert_eq!(c.proxy_users[0].password, "t0ken");
        assert_eq!(c.sentinel_poll_interval, Duration::from_millis(250));
        assert_eq!(c.log_format, LogFormat::Json);
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!format!("{c:?}").contains("t0ken"));
    }

    #[test]
    fn the_command_line_wins_over_the_file_and_the_file_over_defaults() {
        let (c, _) = with_file(
            r#"
            http-listen = "127.0.0.1:18080"
            grpc-listen = "127.0.0.1:18081"
            service = ["a=127.0.0.1:26379", "b=127.0.0.1:26380"]
            "#,
            &[
                "--http-listen",
                "127.0.0.1:28080",
                "--service",
                "c=127.0.0.1:1",
            ],
        );
        let c = c.unwrap();
        assert_eq!(c.http_listen, "127.0.0.1:28080".parse().unwrap());
        assert_eq!(c.grpc_listen, "127.0.0.1:18081".parse().unwrap());
        // A repeatable flag given on the command line replaces the file's list.
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].name, "c");
        // No file at all: exactly clap's parse.
        let c = Config::load_from(["x", "--http-listen", "127.0.0.1:1"]).unwrap();
        assert_eq!(c.http_listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(c.config_file, None);
        let help = Config::load_from(["x", "--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(help.to_string().contains("--config <FILE>"), "{help}");
    }

    #[test]
    fn an_unknown_key_names_the_closest_one_or_all() {
        let (e, path) = file_error("\n\nhttp-listn = \"127.0.0.1:1\"\n");
        let msg = e.to_string();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(
            msg.contains(&format!("{path}:3: unknown key `http-listn`")),
            "{msg}"
        );
        assert!(msg.contains("did you mean `http-listen`?"), "{msg}");
        let (e, _) = file_error("colour = true\n");
        let msg = e.to_string();
        assert!(msg.contains("unknown key `colour`"), "{msg}");
        assert!(
            msg.contains("data-dir, failover-hold, grpc-listen"),
            "{msg}"
        );
        assert!(!msg.contains("help,") && !msg.contains(" config,"), "{msg}");
        // Sections are not keys either.
        let (e, _) = file_error("[proxy]\nlisten = \"x\"\n");
        assert!(e.to_string().contains("unknown key `proxy`"), "{e}");
        // Nor is the file's own flag.
        let (e, _) = file_error("config = \"other.toml\"\n");
        assert!(
            e.to_string()
                .contains("`config` cannot be set in the config file"),
            "{e}"
        );
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        for (toml, want) in [
            (
                "http-listen = [\"127.0.0.1:1\"]",
                "`http-listen`: takes one value, not an array",
            ),
            (
                "service = { a = 1 }",
                "`service`: expected a string or an array of strings, found a table",
            ),
            (
                "rule = [[\"a=get:master\"]]",
                "`rule`: expected an array of strings or numbers, found an array in it",
            ),
            (
                "data-dir = 1979-05-27",
                "`data-dir`: expected a string or a number, found a datetime",
            ),
        ] {
            let (e, path) = file_error(toml);
            assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue, "{toml}");
            assert!(
                e.to_string().contains(&format!("{path}:1: {want}")),
                "{toml}: {e}"
            );
        }
        let (e, path) =
            file_error("\nhttp-listen = \"127.0.0.1:1\"\nservice = [\n  \"a=h:1\",\n  \"broken\n");
        assert!(e.to_string().contains(&format!("{path}:")), "{e}");
        assert!(e.to_string().contains("not valid TOML"), "{e}");
    }

    #[test]
    fn a_bad_value_from_the_file_names_file_line_and_key() {
        // The flag's own parser judges file values.
        let (e, path) = file_error("sentinel-poll-interval = \"1s\"\nhttp-listen = \"nope\"\n");
        let msg = e.to_string();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(
            msg.contains(&format!("{path}:2: `http-listen`: invalid value \"nope\"")),
            "{msg}"
        );
        assert!(!msg.contains("--http-listen <ADDR>"), "{msg}");
        // The bad element of an array, on its own line.
        let (e, path) = file_error("rule = [\n  \"a=get:master\",\n  \"a=get:nowhere\",\n]\n");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "{path}:3: `rule`: invalid value \"a=get:nowhere\""
            )),
            "{msg}"
        );
        assert!(msg.contains("nowhere"), "{msg}");
        // Enumerations list what they accept.
        let (e, _) = file_error("log-format = \"yaml\"");
        assert!(e.to_string().contains("expected one of: text, json"), "{e}");
        // A number where a duration is needed: the duration parser's message.
        let (e, _) = file_error("sentinel-poll-interval = 5");
        assert!(
            e.to_string()
                .contains("`sentinel-poll-interval`: invalid value \"5\""),
            "{e}"
        );
        // Secrets are never shown, even when the value parser would quote them.
        for toml in [
            "backend-auth = [\"a=pivot:\"]",
            "proxy-user = [\"a=hunter2-no-colon\"]",
        ] {
            let (e, path) = file_error(toml);
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("{path}:1:")) && msg.contains("(value hidden)"),
                "{msg}"
            );
            assert!(
                !msg.contains("hunter2") && !msg.contains("a=pivot"),
                "{msg}"
            );
        }
        // A semantic check after parsing still applies to file values.
        let (c, _) = with_file("service = [\"a=h:1\", \"a=h:2\"]", &[]);
        assert!(
            matches!(c.unwrap().validate(), Err(Error::Config(m)) if m.contains("more than once"))
        );
        // An unreadable file names the flag and the path.
        let e = Config::load_from(["x", "--config", "/nonexistent/pivot.toml"]).unwrap_err();
        assert!(
            e.to_string().contains("--config /nonexistent/pivot.toml"),
            "{e}"
        );
    }

    /// The sample file loads and validates; every flag appears in it, and its commented-out
    /// examples are valid values too, so that it cannot fall behind the flags.
    #[test]
    fn the_sample_file_is_valid_and_complete() {
        use clap::CommandFactory;
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/control-plane.toml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let c = Config::load_from(["x", "--config", path]).unwrap();
        c.validate().unwrap();
        assert!(!c.services.is_empty() && !c.rules.is_empty());

        let cmd = Config::command();
        let longs: Vec<&str> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| *l != "config")
            .collect();
        let key_of = |line: &str| {
            let l = line.trim_start().trim_start_matches('#').trim_start();
            l.split_once('=').map(|(k, _)| k.trim().to_string())
        };
        let documented: Vec<String> = text.lines().filter_map(key_of).collect();
        for long in &longs {
            assert!(
                documented.iter().any(|k| k == long),
                "--{long} is not in examples/control-plane.toml"
            );
        }
        // The commented examples, uncommented (those of flags this binary knows).
        let uncommented: String = text
            .lines()
            .filter_map(|line| {
                let body = line.trim_start().strip_prefix('#')?.trim_start();
                let key = key_of(body)?;
                longs.contains(&key.as_str()).then(|| format!("{body}\n"))
            })
            .collect();
        let (c, _) = with_file(&uncommented, &[]);
        c.unwrap_or_else(|e| panic!("{uncommented}\n{e}"));
    }

    #[test]
    fn validate_rejects_duplicates() {
        let c = Config::try_parse_from(["x", "--service", "a=h:1", "--service", "a=h:2"]).unwrap();
        assert!(matches!(c.validate(), Err(Error::Config(m)) if m.contains("more than once")));
        let c = Config::try_parse_from(["x", "--service", "a=h:1,h:1"]).unwrap();
        assert!(matches!(c.validate(), Err(Error::Config(m)) if m.contains("twice")));
        let mut c = Config::with_data_dir("/tmp/x");
        c.services.push(ServiceSpec {
            name: "a".into(),
            sentinels: vec![],
        });
        assert!(c.validate().is_err());
    }
}
