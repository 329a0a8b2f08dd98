//! `pivotctl`: Pivot's admin API (`pivot.v1.Admin`, gRPC) from the command line.
//!
//! Tables for people, `--json` for scripts (the same field names as the REST API), and an
//! exit code that says what went wrong (see `EXIT CODES` in `--help`), so that a script can
//! tell "no such service" from "the control plane is down" without parsing messages.

// Printing to stdout is this program's job; it goes through `output::Out`.
#![allow(clippy::print_stdout)]

mod output;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use futures_util::StreamExt;
use pivot_proto::v1 as pb;
use pivot_proto::v1::admin_client::AdminClient;
use pivotctl::cli::{Cli, Cmd, EventsArgs, PolicyCmd, RulesCmd, ServicesCmd, UsersCmd};
use pivotctl::probe;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use crate::output::{Out, PipeClosed, Table, fields, or_dash};

/// Why a command failed, with the exit code it maps to.
#[derive(Debug)]
enum Failure {
    /// The control plane said no.
    Status(Status),
    /// Local problem (usage, connection, input).
    Local { code: u8, message: String },
    /// Stdout closed.
    Pipe,
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Failure::Status(s)
    }
}

impl From<PipeClosed> for Failure {
    fn from(_: PipeClosed) -> Self {
        Failure::Pipe
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::Local {
        code: 2,
        message: message.into(),
    }
}

fn exit_code(code: Code) -> u8 {
    match code {
        Code::NotFound => 3,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => 4,
        Code::Unauthenticated | Code::PermissionDenied => 5,
        // Cancelled: the connection went away under the request (the control plane
        // never answers with it), e.g. a TLS handshake it refused.
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => 6,
        Code::InvalidArgument | Code::OutOfRange => 7,
        _ => 1,
    }
}

/// A status made by the client's transport (not sent by the control plane).
fn is_transport(s: &Status) -> bool {
    matches!(s.code(), Code::Unknown | Code::Cancelled) && std::error::Error::source(s).is_some()
}

type Client = AdminClient<InterceptedService<Channel, Auth>>;

/// Adds the bearer token to every call.
#[derive(Debug, Clone)]
struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

async fn connect(cli: &Cli) -> Result<Client, Failure> {
    let auth = match &cli.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| usage("the token has characters a header cannot carry"))?,
        ),
        None => None,
    };
    let mut endpoint = Endpoint::from_shared(cli.server.clone())
        .map_err(|e| usage(format!("invalid --server `{}`: {e}", cli.server)))?
        .connect_timeout(Duration::from_secs(5));
    let tls_given = cli.tls_ca.is_some() || cli.tls_cert.is_some() || cli.tls_server_name.is_some();
    if cli.server.starts_with("https://") {
        endpoint = endpoint
            .tls_config(client_tls(cli)?)
            .map_err(|e| usage(format!("TLS settings: {e}")))?;
    } else if tls_given {
        return Err(usage(
            "--tls-* flags need an https:// --server (the control plane's TLS listener)",
        ));
    }
    let channel = endpoint.connect().await.map_err(|e| Failure::Local {
        code: 6,
        message: format!("cannot reach the control plane at {}: {e}", cli.server),
    })?;
    Ok(AdminClient::with_interceptor(channel, Auth(auth)))
}

/// TLS settings from the `--tls-*` flags.
fn client_tls(cli: &Cli) -> Result<ClientTlsConfig, Failure> {
    let read = |path: &Path, flag: &str| {
        std::fs::read(path).map_err(|e| usage(format!("{flag} {}: {e}", path.display())))
    };
    let mut tls = match &cli.tls_ca {
        Some(ca) => {
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "--tls-ca")?))
        }
        None => ClientTlsConfig::new().with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        tls = tls.identity(Identity::from_pem(
            read(cert, "--tls-cert")?,
            read(key, "--tls-key")?,
        ));
    }
    if let Some(name) = &cli.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(tls)
}

/// A unary request with the `--timeout` deadline.
fn req<T>(cli: &Cli, body: T) -> Request<T> {
    let mut r = Request::new(body);
    r.set_timeout(cli.timeout);
    r
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out::new(cli.json);
    match run(&cli, &out).await {
        Ok(()) | Err(Failure::Pipe) => ExitCode::SUCCESS,
        Err(Failure::Local { code, message }) => {
            eprintln!("pivotctl: {message}");
            ExitCode::from(code)
        }
        Err(Failure::Status(s)) if is_transport(&s) => {
            // The connection failed under the request (TLS refused, reset): the status
            // only says "transport error"; the cause is in its source chain.
            let mut message = s.message().to_string();
            let mut source = std::error::Error::source(&s);
            while let Some(e) = source {
                message.push_str(&format!(": {e}"));
                source = e.source();
            }
            eprintln!(
                "pivotctl: cannot talk to the control plane at {}: {message}",
                cli.server
            );
            ExitCode::from(6)
        }
        Err(Failure::Status(s)) => {
            let hint = if s.code() == Code::Unauthenticated && cli.token.is_none() {
                " (set --token or PIVOT_TOKEN)"
            } else {
                ""
            };
            eprintln!("pivotctl: {}{hint}", s.message());
            ExitCode::from(exit_code(s.code()))
        }
    }
}

async fn run(cli: &Cli, out: &Out) -> Result<(), Failure> {
    if let Cmd::Completions { shell } = &cli.cmd {
        let mut buf = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "pivotctl", &mut buf);
        return Ok(out.text(&String::from_utf8_lossy(&buf))?);
    }
    if let Cmd::Probe { url } = &cli.cmd {
        return run_probe(out, url, cli.timeout).await;
    }
    let mut c = connect(cli).await?;
    match &cli.cmd {
        Cmd::Completions { .. } | Cmd::Probe { .. } => Ok(()),
        Cmd::Whoami => {
            let me = c
                .who_am_i(req(cli, pb::WhoAmIRequest {}))
                .await?
                .into_inner();
            if out.json() {
                return Ok(out.value(&me, false)?);
            }
            Ok(out.text(&format!("{} ({})\n", me.name, me.role))?)
        }
        Cmd::Services { cmd } => services(cli, out, &mut c, cmd.as_ref()).await,
        Cmd::Topology { service } => {
            let t = c
                .get_topology(req(
                    cli,
                    pb::GetTopologyRequest {
                        service: service.clone(),
                    },
                ))
                .await?
                .into_inner();
            if out.json() {
                return Ok(out.value(&t, false)?);
            }
            Ok(out.text(&topology_text(&t))?)
        }
        Cmd::Rules { cmd } => rules(cli, out, &mut c, cmd).await,
        Cmd::Policy { cmd } => policy(cli, out, &mut c, cmd).await,
        Cmd::Users { cmd } => users(cli, out, &mut c, cmd).await,
        Cmd::Proxies => {
            let r = c
                .list_proxies(req(cli, pb::ListProxiesRequest {}))
                .await?
                .into_inner();
            if out.json() {
                return Ok(out.value(&r, false)?);
            }
            let mut t = Table::new(&[
                "ID",
                "ADDRESS",
                "BUILD",
                "SERVICES",
                "STATE",
                "VERSION",
                "CONNS",
                "OPS/S",
                "LAST SEEN",
                "LAST NACK",
            ]);
            for p in &r.proxies {
                t.row(proxy_row(p, r.version));
            }
            Ok(out.text(&t.render())?)
        }
        Cmd::Events(a) => events(cli, out, &mut c, a).await,
        Cmd::Audit(a) => {
            let r = c
                .list_audit(req(
                    cli,
                    pb::ListAuditRequest {
                        service: a.service.clone().unwrap_or_default(),
                        actor: a.actor.clone().unwrap_or_default(),
                        before: a.before.unwrap_or(0),
                        limit: a.limit,
                    },
                ))
                .await?
                .into_inner();
            if out.json() {
                return Ok(out.value(&r, false)?);
            }
            let mut t = Table::new(&["ID", "AT", "ACTOR", "ACTION", "SERVICE", "TARGET"]);
            for e in &r.entries {
                t.row(vec![
                    e.id.to_string(),
                    e.at.clone(),
                    e.actor.clone(),
                    e.action.clone(),
                    or_dash(&e.service),
                    or_dash(&e.target),
                ]);
            }
            Ok(out.text(&t.render())?)
        }
        Cmd::Failover { service, yes } => {
            if !yes {
                confirm(&format!(
                    "Fail over `{service}`? Writes pause for a moment while a replica takes over."
                ))?;
            }
            // A failover takes seconds: give it at least a minute.
            let mut r = Request::new(pb::FailoverRequest {
                service: service.clone(),
            });
            r.set_timeout(cli.timeout.max(Duration::from_secs(60)));
            let report = c.failover(r).await?.into_inner();
            if out.json() {
                return Ok(out.value(&report, false)?);
            }
            Ok(out.text(&format!(
                "{service}: {} -> {} (writes paused {} ms, replicas caught up in {} ms, promotion {} ms, total {} ms)\n",
                report.old_master,
                report.new_master,
                report.paused_ms,
                report.catch_up_ms,
                report.promotion_ms,
                report.total_ms
            ))?)
        }
    }
}

/// Asks on the terminal; refuses when stdin is not one (scripts pass --yes).
/// `pivotctl probe URL`: the status on stdout; a non-2xx one fails with exit 1.
async fn run_probe(out: &Out, url: &str, timeout: Duration) -> Result<(), Failure> {
    match probe::get(url, timeout).await {
        Ok(status) => {
            let line = format!("{url}: {status}");
            if out.json() {
                out.value(
                    &serde_json::json!({ "url": url, "status": status.as_u16() }),
                    false,
                )?;
            } else {
                out.text(&format!("{line}\n"))?;
            }
            if status.is_success() {
                Ok(())
            } else {
                Err(Failure::Local {
                    code: 1,
                    message: line,
                })
            }
        }
        Err(e @ probe::ProbeError::BadUrl(_)) => Err(usage(e.to_string())),
        Err(e) => Err(Failure::Local {
            code: 6,
            message: format!("{url}: {e}"),
        }),
    }
}

fn confirm(question: &str) -> Result<(), Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(usage(
            "refusing to fail over without confirmation: stdin is not a terminal (pass --yes)",
        ));
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| usage(format!("cannot read the answer: {e}")))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure::Local {
            code: 1,
            message: "not confirmed; nothing done".into(),
        })
    }
}

async fn services(
    cli: &Cli,
    out: &Out,
    c: &mut Client,
    cmd: Option<&ServicesCmd>,
) -> Result<(), Failure> {
    match cmd.unwrap_or(&ServicesCmd::List) {
        ServicesCmd::List => {
            let r = c
                .list_services(req(cli, pb::ListServicesRequest {}))
                .await?
                .into_inner();
            if out.json() {
                return Ok(out.value(&r.services, false)?);
            }
            let mut t = Table::new(&[
                "NAME",
                "MASTER",
                "REPLICAS",
                "SENTINELS",
                "READ POLICY",
                "RULES",
                "USERS",
                "VERSION",
            ]);
            for s in &r.services {
                let (topo, policy) = (
                    s.topology.clone().unwrap_or_default(),
                    s.policy.clone().unwrap_or_default(),
                );
                t.row(vec![
                    s.name.clone(),
                    or_dash(&topo.master),
                    format!(
                        "{}/{} healthy",
                        topo.replicas.iter().filter(|r| r.healthy).count(),
                        topo.replicas.len()
                    ),
                    format!(
                        "{}/{} reachable",
                        topo.sentinels.iter().filter(|s| s.reachable).count(),
                        topo.sentinels.len()
                    ),
                    policy.read_policy,
                    policy.rules.len().to_string(),
                    s.users.len().to_string(),
                    s.config_version.to_string(),
                ]);
            }
            Ok(out.text(&t.render())?)
        }
        ServicesCmd::Show { name } => {
            let s = c
                .get_service(req(cli, pb::GetServiceRequest { name: name.clone() }))
                .await?
                .into_inner();
            if out.json() {
                return Ok(out.value(&s, false)?);
            }
            let policy = s.policy.clone().unwrap_or_default();
            let mut text = fields(&[
                ("name", s.name.clone()),
                ("sentinels", s.sentinels.join(", ")),
                (
                    "backend auth",
                    match (&s.backend_username, s.backend_password_set) {
                        (_, false) => "none".into(),
                        (Some(u), true) => format!("user {u}, password set"),
                        (None, true) => "default user, password set".into(),
                    },
                ),
                ("users", or_dash(&s.users.join(", "))),
                ("config version", s.config_version.to_string()),
            ]);
            text.push('\n');
            text.push_str(&policy_text(&policy));
            if let Some(t) = &s.topology {
                text.push('\n');
                text.push_str(&topology_text(t));
            }
            Ok(out.text(&text)?)
        }
        ServicesCmd::Create {
            name,
            sentinels,
            backend_user,
        } => {
            let password = std::env::var("PIVOT_BACKEND_PASSWORD").ok();
            let backend_auth = match (backend_user, password) {
                (user, Some(password)) => Some(pb::BackendAuthInput {
                    username: user.clone().unwrap_or_default(),
                    password,
                }),
                (Some(_), None) => {
                    return Err(usage("--backend-user needs PIVOT_BACKEND_PASSWORD"));
                }
                (None, None) => None,
            };
            let s = c
                .create_service(req(
                    cli,
                    pb::CreateServiceRequest {
                        name: name.clone(),
                        sentinels: sentinels.clone(),
                        backend_auth,
                        policy: None,
                    },
                ))
                .await?
                .into_inner();
            if out.json() {
                return Ok(out.value(&s, false)?);
            }
            Ok(out.text(&format!(
                "created service {} (config version {})\n",
                s.name, s.config_version
            ))?)
        }
        ServicesCmd::Delete { name, force } => {
            c.delete_service(req(
                cli,
                pb::DeleteServiceRequest {
                    name: name.clone(),
                    force: *force,
                },
            ))
            .await?;
            if out.json() {
                return Ok(out.value(&serde_json::json!({"deleted": name}), false)?);
            }
            Ok(out.text(&format!("deleted service {name}\n"))?)
        }
    }
}

async fn rules(cli: &Cli, out: &Out, c: &mut Client, cmd: &RulesCmd) -> Result<(), Failure> {
    match cmd {
        RulesCmd::List { service } => {
            let r = c
                .list_rules(req(
                    cli,
                    pb::ListRulesRequest {
                        service: service.clone(),
                    },
                ))
                .await?
                .into_inner();
            if out.json() {
                return Ok(out.value(&r.rules, false)?);
            }
            let mut t = Table::new(&["COMMAND", "TARGET"]);
            for rule in &r.rules {
                t.row(vec![rule.command.clone(), rule.target.clone()]);
            }
            Ok(out.text(&t.render())?)
        }
        RulesCmd::Set {
            service,
            command,
            target,
        } => {
            let r = c
                .put_rule(req(
                    cli,
                    pb::PutRuleRequest {
                        service: service.clone(),
                        rule: Some(pb::RuleView {
                            command: command.clone(),
                            target: target.clone(),
                        }),
                    },
                ))
                .await?
                .into_inner();
            change(out, &r, r.version, &format!("rule {command} -> {target}"))
        }
        RulesCmd::Rm { service, command } => {
            let r = c
                .delete_rule(req(
                    cli,
                    pb::DeleteRuleRequest {
                        service: service.clone(),
                        command: command.clone(),
                    },
                ))
                .await?
                .into_inner();
            change(out, &r, r.version, &format!("rule {command} removed"))
        }
    }
}

/// Prints the outcome of a change: its config version, or that nothing changed.
fn change<T: serde::Serialize>(out: &Out, r: &T, version: u64, what: &str) -> Result<(), Failure> {
    if out.json() {
        return Ok(out.value(r, false)?);
    }
    if version == 0 {
        Ok(out.text(&format!("{what}: unchanged\n"))?)
    } else {
        Ok(out.text(&format!("{what}: config version {version}\n"))?)
    }
}

async fn policy(cli: &Cli, out: &Out, c: &mut Client, cmd: &PolicyCmd) -> Result<(), Failure> {
    match cmd {
        PolicyCmd::Show { service } => {
            let p = c
                .get_policy(req(
                    cli,
                    pb::GetPolicyRequest {
                        service: service.clone(),
                    },
                ))
                .await?
                .into_inner();
            if out.json() {
                return Ok(out.value(&p, false)?);
            }
            Ok(out.text(&policy_text(&p))?)
        }
        PolicyCmd::Set(a) => {
            let none = |v: &Option<String>| v.as_deref() == Some("none");
            let max_replica_lag = match a.max_replica_lag.as_deref() {
                None | Some("none") => None,
                Some(v) => Some(v.parse::<u64>().map_err(|_| {
                    usage(format!(
                        "--max-replica-lag: `{v}` is not a number of bytes or none"
                    ))
                })?),
            };
            let input = pb::PolicyInput {
                read_policy: a.read_policy.clone(),
                consistency: a.consistency.clone(),
                write_ack: a.write_ack.clone(),
                max_replica_lag,
                clear_max_replica_lag: none(&a.max_replica_lag),
                failover_hold: a.failover_hold.clone().filter(|v| v != "none"),
                clear_failover_hold: none(&a.failover_hold),
                ..Default::default()
            };
            let r = c
                .update_policy(req(
                    cli,
                    pb::UpdatePolicyRequest {
                        service: a.service.clone(),
                        policy: Some(input),
                    },
                ))
                .await?
                .into_inner();
            change(out, &r, r.version, &format!("policy of {}", a.service))
        }
    }
}

async fn users(cli: &Cli, out: &Out, c: &mut Client, cmd: &UsersCmd) -> Result<(), Failure> {
    match cmd {
        UsersCmd::List { service } => {
            let r = c
                .list_users(req(
                    cli,
                    pb::ListUsersRequest {
                        service: service.clone(),
                    },
                ))
                .await?
                .into_inner();
            if out.json() {
                return Ok(out.value(&r.users, false)?);
            }
            let mut t = Table::new(&["USER"]);
            for u in &r.users {
                t.row(vec![u.clone()]);
            }
            Ok(out.text(&t.render())?)
        }
        UsersCmd::Set { service, name } => {
            let password = match std::env::var("PIVOT_USER_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    if std::io::stdin().is_terminal() {
                        eprint!("password for {name}: ");
                    }
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .map_err(|e| usage(format!("cannot read the password: {e}")))?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            let r = c
                .put_user(req(
                    cli,
                    pb::PutUserRequest {
                        service: service.clone(),
                        name: name.clone(),
                        password,
                    },
                ))
                .await?
                .into_inner();
            change(
                out,
                &r,
                r.version,
                &format!(
                    "user {name} {}",
                    if r.created { "created" } else { "updated" }
                ),
            )
        }
        UsersCmd::Rm { service, name } => {
            let r = c
                .delete_user(req(
                    cli,
                    pb::DeleteUserRequest {
                        service: service.clone(),
                        name: name.clone(),
                    },
                ))
                .await?
                .into_inner();
            change(out, &r, r.version, &format!("user {name} deleted"))
        }
    }
}

async fn events(cli: &Cli, out: &Out, c: &mut Client, a: &EventsArgs) -> Result<(), Failure> {
    // With --follow, subscribe first so that nothing between the listing and the stream
    // is missed (an event in both is printed once: ids only increase).
    let stream = if a.follow {
        let r = Request::new(pb::WatchEventsRequest {
            service: a.service.clone().unwrap_or_default(),
        });
        // No deadline on the stream itself.
        Some(c.watch_events(r).await?.into_inner())
    } else {
        None
    };
    let r = c
        .list_events(req(
            cli,
            pb::ListEventsRequest {
                service: a.service.clone().unwrap_or_default(),
                kinds: a.kinds.clone(),
                before: a.before.unwrap_or(0),
                limit: a.limit,
            },
        ))
        .await?
        .into_inner();
    let mut last_id = r.events.first().map_or(0, |e| e.id);
    let Some(mut stream) = stream else {
        if out.json() {
            return Ok(out.value(&r, false)?);
        }
        let mut t = Table::new(&EVENT_HEADERS);
        for e in &r.events {
            t.row(event_row(e));
        }
        return Ok(out.text(&t.render())?);
    };
    // Following: oldest first, then as they come, one line each.
    let print = |e: &pb::EventView| -> Result<(), Failure> {
        if out.json() {
            Ok(out.value(e, true)?)
        } else {
            Ok(out.text(&format!("{}\n", event_row(e).join("  ")))?)
        }
    };
    for e in r.events.iter().rev() {
        print(e)?;
    }
    while let Some(m) = stream.next().await {
        let m = m?;
        if let Some(pb::live_message::Msg::Event(e)) = m.msg
            && e.id > last_id
            && (a.kinds.is_empty() || a.kinds.contains(&e.kind))
        {
            last_id = e.id;
            print(&e)?;
        }
    }
    Err(Failure::Local {
        code: 6,
        message: "the control plane ended the event stream".into(),
    })
}

const EVENT_HEADERS: [&str; 8] = [
    "ID",
    "AT",
    "SERVICE",
    "KIND",
    "VERSION",
    "OLD MASTER",
    "NEW MASTER",
    "REASON",
];

fn event_row(e: &pb::EventView) -> Vec<String> {
    vec![
        e.id.to_string(),
        e.at.clone(),
        e.service.clone(),
        e.kind.clone(),
        e.version.to_string(),
        or_dash(&e.old_master),
        or_dash(&e.new_master),
        e.reason.clone(),
    ]
}

fn proxy_row(p: &pb::ProxyView, version: u64) -> Vec<String> {
    let state = if !p.connected {
        "disconnected"
    } else if p.draining {
        "draining"
    } else if p.silent {
        "silent"
    } else if p.behind {
        "behind"
    } else {
        "ok"
    };
    vec![
        p.proxy_id.clone(),
        p.listen_addr.clone(),
        p.build_version.clone(),
        p.services.join(","),
        state.to_string(),
        format!(
            "{}/{version}",
            p.acked_version.map_or("-".to_string(), |v| v.to_string())
        ),
        p.client_connections.to_string(),
        format!("{:.0}", p.ops_per_sec),
        p.last_seen.clone(),
        or_dash(&p.last_nack),
    ]
}

fn policy_text(p: &pb::PolicyView) -> String {
    let mut text = fields(&[
        ("read policy", p.read_policy.clone()),
        ("consistency", p.consistency.clone()),
        ("write ack", p.write_ack.clone()),
        (
            "max replica lag",
            p.max_replica_lag
                .map_or("none".to_string(), |b| format!("{b} bytes")),
        ),
        (
            "failover hold",
            p.failover_hold
                .clone()
                .unwrap_or_else(|| "proxy default".to_string()),
        ),
        ("rules", p.rules.len().to_string()),
    ]);
    for r in &p.rules {
        text.push_str(&format!("  {} -> {}\n", r.command, r.target));
    }
    text
}

fn topology_text(t: &pb::TopologyView) -> String {
    let mut text = fields(&[
        ("service", t.service.clone()),
        ("master", or_dash(&t.master)),
        ("why", t.master_reason.clone()),
        ("config epoch", t.config_epoch.to_string()),
        (
            "changed",
            format!(
                "version {} at {}",
                t.changed_version,
                or_dash(&t.changed_at)
            ),
        ),
    ]);
    text.push('\n');
    let mut nodes = Table::new(&["ROLE", "ADDRESS", "HEALTH", "LAG", "LINK DOWN", "REASON"]);
    if !t.master.is_empty() {
        nodes.row(vec![
            "master".into(),
            t.master.clone(),
            "ok".into(),
            "-".into(),
            "-".into(),
            String::new(),
        ]);
    }
    for r in &t.replicas {
        nodes.row(vec![
            "replica".into(),
            r.addr.clone(),
            if r.healthy { "ok" } else { "unhealthy" }.into(),
            r.lag_bytes.map_or("-".into(), |l| format!("{l} B")),
            if r.link_down_ms > 0 {
                format!("{} ms", r.link_down_ms)
            } else {
                "-".into()
            },
            r.reason.clone(),
        ]);
    }
    for s in &t.sentinels {
        nodes.row(vec![
            if s.configured {
                "sentinel"
            } else {
                "sentinel (discovered)"
            }
            .into(),
            s.addr.clone(),
            if s.reachable { "ok" } else { "unreachable" }.into(),
            "-".into(),
            "-".into(),
            String::new(),
        ]);
    }
    text.push_str(&nodes.render());
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_distinguish_what_went_wrong() {
        assert_eq!(exit_code(Code::NotFound), 3);
        assert_eq!(exit_code(Code::AlreadyExists), 4);
        assert_eq!(exit_code(Code::FailedPrecondition), 4);
        assert_eq!(exit_code(Code::PermissionDenied), 5);
        assert_eq!(exit_code(Code::Unavailable), 6);
        assert_eq!(exit_code(Code::Cancelled), 6);
        assert_eq!(exit_code(Code::InvalidArgument), 7);
        assert_eq!(exit_code(Code::Internal), 1);
    }

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
