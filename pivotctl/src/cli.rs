//! The command line: global flags, subcommands and their arguments (clap derive).
//!
//! In the library so that `docs/configuration.md` can be generated from these definitions
//! (`sandbox/tests/config_reference.rs`); `main.rs` runs them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub const EXIT_CODES: &str = "\
EXIT CODES:
    0  success
    1  internal error of the control plane, or an unexpected answer
    2  usage error (bad flags or arguments)
    3  not found (service, rule, user, token)
    4  conflict: exists already, in use, or a failover is running
    5  not authenticated (no or unknown token) or not allowed (viewer token)
    6  control plane unreachable, or the Redis nodes could not complete the operation
    7  invalid input, rejected by the control plane (the message names the field)";

/// Manage Pivot: services, routing policy and rules, proxy users, the proxy fleet, events,
/// the audit log and failovers, through the control plane's gRPC admin API.
#[derive(Debug, Parser)]
#[command(name = "pivotctl", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Address of the control plane's gRPC listener.
    #[arg(
        long,
        env = "PIVOT_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,

    /// Admin API token (role admin, or viewer for read-only commands).
    #[arg(long, env = "PIVOT_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    /// Print JSON (one document; one line per message with --follow) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// CA certificate (PEM) that signed the control plane's certificate, for an
    /// `https://` server (without it, the system's roots).
    #[arg(long, env = "PIVOT_TLS_CA", value_name = "FILE", global = true)]
    pub tls_ca: Option<PathBuf>,

    /// Client certificate (PEM), when the control plane requires one (mutual TLS).
    #[arg(
        long,
        env = "PIVOT_TLS_CERT",
        value_name = "FILE",
        global = true,
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "PIVOT_TLS_KEY",
        value_name = "FILE",
        global = true,
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Name to check the control plane's certificate against, when it is not the
    /// server URL's host.
    #[arg(
        long,
        env = "PIVOT_TLS_SERVER_NAME",
        value_name = "NAME",
        global = true
    )]
    pub tls_server_name: Option<String>,

    /// How long to wait for the control plane to answer a request (`probe`: for the
    /// endpoint to answer).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,

    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Show the calling token's name and role.
    Whoami,
    /// List services, or show, create or delete one.
    Services {
        #[command(subcommand)]
        cmd: Option<ServicesCmd>,
    },
    /// Show a service's topology: master, replicas with health and lag, Sentinels.
    Topology {
        /// Service (Sentinel master name).
        service: String,
    },
    /// Command routing rules of a service.
    Rules {
        #[command(subcommand)]
        cmd: RulesCmd,
    },
    /// Routing policy of a service.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Users clients authenticate to the proxies as.
    Users {
        #[command(subcommand)]
        cmd: UsersCmd,
    },
    /// The proxy fleet: versions, status, connections.
    Proxies,
    /// Topology and configuration events, newest first (or as they happen with --follow).
    Events(EventsArgs),
    /// The audit log: who changed what, newest first.
    Audit(AuditArgs),
    /// Fail a service over to a replica without losing acknowledged writes.
    Failover {
        /// Service (Sentinel master name).
        service: String,
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Check an HTTP endpoint, for health checks without a shell or curl (the container
    /// image's HEALTHCHECK): GET URL and exit 0 on a 2xx answer, 1 on another status, 6
    /// when nothing answers within --timeout, 2 for a bad URL. Sends no token.
    Probe {
        /// `http://HOST[:PORT]/PATH`, e.g. `http://127.0.0.1:9121/readyz` (plain HTTP only).
        #[arg(env = "PIVOT_PROBE_URL")]
        url: String,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServicesCmd {
    /// List services (the default).
    List,
    /// Show one service.
    Show {
        /// Service name.
        name: String,
    },
    /// Register a service.
    Create {
        /// Sentinel master name.
        name: String,
        /// A Sentinel's HOST:PORT; repeat for each.
        #[arg(long = "sentinel", required = true, value_name = "HOST:PORT")]
        sentinels: Vec<String>,
        /// ACL user the proxies authenticate to Redis as (with the password from
        /// PIVOT_BACKEND_PASSWORD).
        #[arg(long)]
        backend_user: Option<String>,
    },
    /// Delete a service.
    Delete {
        /// Service name.
        name: String,
        /// Delete even while connected proxies serve it.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCmd {
    /// List the rules.
    List {
        /// Service name.
        service: String,
    },
    /// Add or replace the rule of a command.
    Set {
        /// Service name.
        service: String,
        /// Command name, or CONTAINER|SUB (`script|load`).
        command: String,
        /// master, replica, any or deny.
        target: String,
    },
    /// Remove the rule of a command.
    Rm {
        /// Service name.
        service: String,
        /// Command name, or CONTAINER|SUB.
        command: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Show the policy.
    Show {
        /// Service name.
        service: String,
    },
    /// Change some of the policy's settings; the others stay.
    Set(PolicySetArgs),
}

#[derive(Debug, Args)]
pub struct PolicySetArgs {
    /// Service name.
    pub service: String,
    /// master-only, replicas or all.
    #[arg(long)]
    pub read_policy: Option<String>,
    /// eventual, read-your-writes or strong.
    #[arg(long)]
    pub consistency: Option<String>,
    /// master or replicas(N).
    #[arg(long)]
    pub write_ack: Option<String>,
    /// Bytes a replica may lag behind and still serve reads; `none` for no limit.
    #[arg(long)]
    pub max_replica_lag: Option<String>,
    /// How long proxies hold requests while there is no master (`10s`); `none` for the
    /// proxies' own default.
    #[arg(long)]
    pub failover_hold: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// List the user names.
    List {
        /// Service name.
        service: String,
    },
    /// Create a user or set its password, read from PIVOT_USER_PASSWORD or, when that is
    /// not set, from the first line of stdin (never from the command line).
    Set {
        /// Service name.
        service: String,
        /// User name (`default` is the one `AUTH password` authenticates as).
        name: String,
    },
    /// Delete a user (its clients are disconnected).
    Rm {
        /// Service name.
        service: String,
        /// User name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Only this kind (`master-changed`, `failover-finished`, ...); repeatable.
    #[arg(long = "kind")]
    pub kinds: Vec<String>,
    /// How many (1-1000).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Only events older than this id (paging).
    #[arg(long)]
    pub before: Option<i64>,
    /// Keep printing new events as they happen (until interrupted).
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Only this actor (`token:NAME`, `config`).
    #[arg(long)]
    pub actor: Option<String>,
    /// How many (1-1000).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Only entries older than this id (paging).
    #[arg(long)]
    pub before: Option<i64>,
}
