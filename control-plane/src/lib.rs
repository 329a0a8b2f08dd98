//! Pivot's control plane: watches the Redis Sentinels of every service, decides each
//! service's topology, versions it, and streams it to the proxy fleet.
//!
//! Data flows top to bottom through these modules:
//!
//! - [`config`]: flags / environment, validated before anything binds.
//! - [`store`]: SQLite (services, topology events, proxies, version reservation).
//! - [`sentinel`]: one watcher per service, one link per Sentinel (pub/sub + polling),
//!   producing [`topology::SentinelView`]s.
//! - [`topology`]: domain types and the pure [`topology::decide`] rule.
//! - [`state`]: the versioned fleet snapshot (`watch::Sender<Arc<FleetState>>`) and the
//!   events each change writes.
//! - [`grpc`]: the `ProxyDiscovery` config stream (proto conversion in `grpc::convert`)
//!   and the registry of proxies and the versions they run.
//! - [`http`]: health, readiness, metrics, REST API and the embedded web page.
//! - [`metrics`]: the Prometheus registry.
//! - [`web`]: the web admin UI's files, embedded.
//!
//! [`ControlPlane`] wires them: `bind` opens the store and the listeners, `run` serves
//! until its `CancellationToken` is cancelled and then drains within a bounded time.

pub mod admin;
pub mod auth;
pub mod config;
pub mod error;
pub mod failover;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod sentinel;
pub mod state;
pub mod store;
pub mod topology;
pub mod watchers;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pivot_proto::v1::admin_server::AdminServer;
use pivot_proto::v1::proxy_discovery_server::ProxyDiscoveryServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use admin::{Actor, Admin, NewService, ServiceUpdate};
pub use config::{
    BackendAuthSpec, Config, ProxyUserSpec, ReadPolicySpec, ServiceSetting, ServiceSpec,
};
pub use error::Error;
pub use state::{BackendAuth, CommandRule, Consistency, Policy, ReadPolicy, Target, WriteAck};

use crate::auth::{Bootstrap, Tokens};
use crate::grpc::credentials::{ProxyTokens, TokenCheck};
use crate::grpc::{Discovery, ProxyRegistry};
use crate::metrics::Metrics;
use crate::state::State;
use crate::store::{NewAudit, Store, StoredService, Writer};
use crate::watchers::Watchers;

/// How long servers and watchers get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A control plane with its store open and its listeners bound, ready to [`run`](Self::run).
#[derive(Debug)]
pub struct ControlPlane {
    store: Store,
    state: Arc<State>,
    watchers: Arc<Watchers>,
    admin: Admin,
    tokens: Tokens,
    registry: Arc<ProxyRegistry>,
    metrics: Arc<Metrics>,
    writer: Writer,
    /// Cancelled by `run` after the servers drained; ends the store writer task.
    writer_stop: CancellationToken,
    writer_task: tokio::task::JoinHandle<()>,
    http: TcpListener,
    grpc: TcpListener,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    /// Who may subscribe (`--proxy-token`, `--grpc-tls-*`) and this control plane's id.
    grpc_access: GrpcAccess,
}

/// The config stream's credentials and identity, fixed at `bind`.
#[derive(Debug)]
struct GrpcAccess {
    tokens: ProxyTokens,
    tls: Option<tonic::transport::ServerTlsConfig>,
    control_plane_id: String,
}

/// A listener on `addr` with an accept queue of `backlog` (tokio's `bind` uses 1024).
async fn bind_listener(
    addr: SocketAddr,
    backlog: u32,
    flag: &'static str,
) -> Result<TcpListener, Error> {
    let bind = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(backlog)
    };
    bind().map_err(|source| Error::Bind { flag, addr, source })
}

impl ControlPlane {
    /// Validates `config`, binds both listeners, opens the store (creating `data_dir` if
    /// missing; SQLite WAL; embedded migrations) and registers or updates
    /// `config.services`. A busy port gives an error naming the flag that moves it.
    pub async fn bind(config: Config) -> Result<ControlPlane, Error> {
        config.validate()?;
        let http =
            bind_listener(config.http_listen, config.listen_backlog, "--http-listen").await?;
        let grpc =
            bind_listener(config.grpc_listen, config.listen_backlog, "--grpc-listen").await?;
        let local = |l: &TcpListener, flag: &'static str, addr: SocketAddr| {
            l.local_addr()
                .map_err(|source| Error::Bind { flag, addr, source })
        };
        let http_addr = local(&http, "--http-listen", config.http_listen)?;
        let grpc_addr = local(&grpc, "--grpc-listen", config.grpc_listen)?;

        // Certificates are read before the store opens: a bad file changes nothing.
        let tls = config.grpc_tls().server_config()?;
        let store = Store::open(&config.data_dir).await?;
        let grpc_access = GrpcAccess {
            tokens: ProxyTokens::new(&config.proxy_tokens),
            tls,
            control_plane_id: store.control_plane_id().await?,
        };
        apply_service_flags(&config, &store).await?;
        // The store is the source of truth: services registered by earlier runs are
        // watched too. Flags change what they name and leave the rest as stored.
        let services = store.services().await?;
        apply_policy_flags(&config, &store, &services).await?;
        let services = store.services().await?;
        let writer_stop = CancellationToken::new();
        let (writer, writer_task) = store::spawn_writer(store.clone(), writer_stop.clone());
        let metrics = Arc::new(Metrics::new());
        let state = State::new(store.clone(), writer.clone(), metrics.clone(), &services).await?;
        let watchers = Watchers::new(state.clone(), config.sentinel_poll_interval);
        let registry = Arc::new(ProxyRegistry::default());
        let admin = Admin::new(
            store.clone(),
            state.clone(),
            watchers.clone(),
            registry.clone(),
        );
        for u in &config.proxy_users {
            admin
                .put_user(&Actor::config(), &u.service, &u.user, &u.password)
                .await
                .map_err(|e| Error::Config(format!("--proxy-user: {e}")))?;
        }
        let tokens = Tokens::new(store.clone());
        bootstrap_token(&tokens, &admin, config.admin_token.as_ref()).await?;
        Ok(ControlPlane {
            store,
            state,
            watchers,
            admin,
            tokens,
            registry,
            metrics,
            writer,
            writer_stop,
            writer_task,
            http,
            grpc,
            http_addr,
            grpc_addr,
            grpc_access,
        })
    }

    /// This control plane's identity (its store's), announced in every config update.
    pub fn control_plane_id(&self) -> &str {
        &self.grpc_access.control_plane_id
    }

    /// The handle for configuration changes (policy, rules, users), published live.
    pub fn admin(&self) -> Admin {
        self.admin.clone()
    }

    /// The proxies seen and what they last reported (shared with the servers `run` starts).
    pub fn registry(&self) -> Arc<ProxyRegistry> {
        self.registry.clone()
    }

    /// The bound HTTP address (the real port when configured with port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound gRPC address (the real port when configured with port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Runs the watchers and both servers until `shutdown` is cancelled (or a server
    /// fails), then drains within a bounded time.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        // Before anything starts, so that an error leaves nothing running.
        let mut grpc_builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)));
        if let Some(tls) = self.grpc_access.tls.clone() {
            // Checked in `bind` already.
            grpc_builder = grpc_builder
                .tls_config(tls)
                .map_err(|e| Error::Config(format!("--grpc-tls-*: {e}")))?;
        }
        // Everything below stops on `stop`: the caller's shutdown, or a failed server.
        let stop = shutdown.child_token();
        let tracker = TaskTracker::new();
        let services: Vec<StoredService> = self
            .state
            .current()
            .services
            .values()
            .map(StoredService::from)
            .collect();
        self.watchers
            .start(&services, tracker.clone(), stop.clone());
        tracker.close();

        let app = http::AppState::new(
            self.admin.clone(),
            self.tokens.clone(),
            self.registry.clone(),
            self.metrics.clone(),
            stop.clone(),
        );
        let admin_api = grpc::admin::AdminService::new(app.clone());
        let http_server = axum::serve(self.http, http::router(app))
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        let mut http_task = tokio::spawn(async move { http_server.await });

        let discovery = Discovery::new(
            self.state.clone(),
            self.registry.clone(),
            self.writer.clone(),
            self.metrics.clone(),
            stop.clone(),
        )
        .with_control_plane_id(&self.grpc_access.control_plane_id);
        let check = TokenCheck::new(self.grpc_access.tokens.clone(), self.metrics.clone());
        let grpc_server = grpc_builder
            .add_service(ProxyDiscoveryServer::with_interceptor(discovery, check))
            .add_service(AdminServer::new(admin_api))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(self.grpc),
                stop.clone().cancelled_owned(),
            );
        let mut grpc_task = tokio::spawn(grpc_server);
        info!(
            http = %self.http_addr,
            grpc = %self.grpc_addr,
            services = services.len(),
            control_plane_id = %self.grpc_access.control_plane_id,
            grpc_tls = self.grpc_access.tls.is_some(),
            proxy_tokens = self.grpc_access.tokens.required(),
            "control plane running"
        );

        let mut failure: Option<Error> = None;
        let (mut http_done, mut grpc_done) = (false, false);
        // `biased` with `stop` first: at shutdown the servers finish on their own (graceful
        // shutdown on the same token), and a server that ended because we asked it to is not
        // a failure.
        tokio::select! {
            biased;
            () = stop.cancelled() => {}
            r = &mut http_task => {
                http_done = true;
                if !stop.is_cancelled() {
                    failure = Some(Error::Serve { server: "http", message: outcome(r.map(|r| r.map_err(|e| e.to_string()))) });
                }
            }
            r = &mut grpc_task => {
                grpc_done = true;
                if !stop.is_cancelled() {
                    failure = Some(Error::Serve { server: "grpc", message: outcome(r.map(|r| r.map_err(|e| e.to_string()))) });
                }
            }
        }
        stop.cancel();
        info!("shutting down");

        let drain = async {
            if !http_done {
                let _ = http_task.await;
            }
            if !grpc_done {
                let _ = grpc_task.await;
            }
            tracker.wait().await;
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            warn!(timeout = ?DRAIN_TIMEOUT, "drain timed out; stopping anyway");
        }
        // Servers and watchers are done: flush queued store writes, then close.
        self.writer_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.writer_task).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.store.close()).await;
        info!("stopped");
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Makes sure the API has an admin token (see [`auth`]'s module docs), auditing what it
/// adds. A generated token is printed on stderr: the one place a secret is shown, once,
/// to whoever started the control plane.
async fn bootstrap_token(
    tokens: &Tokens,
    admin: &Admin,
    configured: Option<&auth::AdminToken>,
) -> Result<(), Error> {
    let (name, actor) = match tokens.bootstrap(configured).await? {
        Bootstrap::Unchanged => return Ok(()),
        Bootstrap::Configured { name } => {
            info!(token = %name, "admin token from --admin-token / PIVOT_ADMIN_TOKEN stored");
            (name, "PIVOT_ADMIN_TOKEN")
        }
        Bootstrap::Generated { name, secret } => {
            eprintln!(
                "pivot-control-plane: no admin token was configured; generated one (shown once, \
                 only its hash is stored):\n\n    {}\n\nUse it as `Authorization: Bearer <token>` \
                 for the API at /api/v1 and to log in to the web UI; create more tokens with \
                 POST /api/v1/tokens. Set PIVOT_ADMIN_TOKEN to choose the token yourself.\n",
                secret.expose()
            );
            info!(token = %name, "generated the bootstrap admin token (printed on stderr)");
            (name, "bootstrap")
        }
    };
    admin
        .record(
            &Actor::new(actor),
            "token.create",
            None,
            &name,
            serde_json::Value::Null,
            serde_json::json!({"name": name, "role": auth::Role::Admin}),
        )
        .await?;
    Ok(())
}

/// Registers the services `--service` names (or updates their Sentinels) and sets the
/// credentials `--backend-auth` gives; each actual change gets an audit row by `config`.
async fn apply_service_flags(config: &Config, store: &Store) -> Result<(), Error> {
    let audit = |action: &'static str, service: String, before: serde_json::Value, after| {
        let store = store.clone();
        async move {
            store
                .insert_audit(NewAudit {
                    actor: &Actor::config().name,
                    action,
                    service: Some(&service),
                    target: "",
                    before,
                    after,
                })
                .await
        }
    };
    let sentinels = |s: &[topology::NodeAddr]| {
        serde_json::json!(s.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    let stored = store.services().await?;
    for spec in &config.services {
        let prev = stored.iter().find(|s| s.name == spec.name);
        if prev.is_some_and(|p| p.sentinels == spec.sentinels) {
            continue;
        }
        store.upsert_service(spec).await?;
        let after = serde_json::json!({ "sentinels": sentinels(&spec.sentinels) });
        match prev {
            None => audit(
                "service.create",
                spec.name.clone(),
                serde_json::Value::Null,
                after,
            ),
            Some(p) => audit(
                "service.update",
                spec.name.clone(),
                serde_json::json!({ "sentinels": sentinels(&p.sentinels) }),
                after,
            ),
        }
        .await?;
    }
    let stored = store.services().await?;
    for a in &config.backend_auth {
        let Some(prev) = stored.iter().find(|s| s.name == a.service) else {
            return Err(Error::Config(format!(
                "--backend-auth names service `{}`, which is not registered",
                a.service
            )));
        };
        if prev.backend_auth.as_ref() == Some(&a.auth) {
            continue;
        }
        store.set_backend_auth(&a.service, &a.auth).await?;
        let redacted =
            |u: &Option<String>| serde_json::json!({"username": u, "password": "<redacted>"});
        audit(
            "service.update",
            a.service.clone(),
            serde_json::json!({
                "backend_auth": prev.backend_auth.as_ref().map(|b| redacted(&b.username))
            }),
            serde_json::json!({ "backend_auth": redacted(&a.auth.username) }),
        )
        .await?;
    }
    Ok(())
}

/// Applies `--read-policy`, `--consistency` and `--rule` to the stored policies.
async fn apply_policy_flags(
    config: &Config,
    store: &Store,
    services: &[StoredService],
) -> Result<(), Error> {
    let named = config
        .read_policies
        .iter()
        .map(|s| ("--read-policy", &s.service))
        .chain(
            config
                .consistency
                .iter()
                .map(|s| ("--consistency", &s.service)),
        )
        .chain(config.rules.iter().map(|s| ("--rule", &s.service)))
        .chain(
            config
                .max_replica_lag
                .iter()
                .map(|s| ("--max-replica-lag", &s.service)),
        )
        .chain(config.write_ack.iter().map(|s| ("--write-ack", &s.service)))
        .chain(
            config
                .failover_hold
                .iter()
                .map(|s| ("--failover-hold", &s.service)),
        );
    for (flag, service) in named {
        if !services.iter().any(|s| &s.name == service) {
            return Err(Error::Config(format!(
                "{flag} names service `{service}`, which is not registered"
            )));
        }
    }
    for s in services {
        let mut policy = s.policy.clone();
        if let Some(p) = config.read_policies.iter().rfind(|p| p.service == s.name) {
            policy.read_policy = p.value;
        }
        if let Some(c) = config.consistency.iter().rfind(|c| c.service == s.name) {
            policy.consistency = c.value;
        }
        if let Some(l) = config.max_replica_lag.iter().rfind(|l| l.service == s.name) {
            policy.max_replica_lag = Some(l.value.0);
        }
        if let Some(w) = config.write_ack.iter().rfind(|w| w.service == s.name) {
            policy.write_ack = w.value;
        }
        if let Some(h) = config.failover_hold.iter().rfind(|h| h.service == s.name) {
            policy.failover_hold = Some(h.value.0);
        }
        let rules: Vec<_> = config
            .rules
            .iter()
            .filter(|r| r.service == s.name)
            .map(|r| r.value.clone())
            .collect();
        if !rules.is_empty() {
            policy.rules = rules;
        }
        policy
            .validate()
            .map_err(|e| Error::Config(format!("--rule for service `{}`: {e}", s.name)))?;
        if policy != s.policy {
            store.set_policy(&s.name, &policy).await?;
            store
                .insert_audit(NewAudit {
                    actor: &Actor::config().name,
                    action: "policy.set",
                    service: Some(&s.name),
                    target: "",
                    before: serde_json::json!(s.policy),
                    after: serde_json::json!(policy),
                })
                .await?;
        }
    }
    Ok(())
}

fn outcome(r: Result<Result<(), String>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "stopped unexpectedly".into(),
        Ok(Err(e)) => e,
        Err(e) => format!("task failed: {e}"),
    }
}

/// Binds and runs a control plane until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    ControlPlane::bind(config).await?.run(shutdown).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[tokio::test]
    async fn start_up_flags_are_audited_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap().to_string();
        let flags = |extra: &[&str]| {
            let mut args = vec![
                "pivot-control-plane",
                "--data-dir",
                &data,
                "--http-listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "127.0.0.1:0",
                "--service",
                "cache=127.0.0.1:26379",
                "--backend-auth",
                "cache=pivot:backend-secret",
            ];
            args.extend_from_slice(extra);
            Config::try_parse_from(args).unwrap()
        };
        // What the flags did (the first start also audits its generated admin token).
        let actions = |cp: &ControlPlane| {
            let admin = cp.admin();
            async move {
                admin
                    .audit(store::AuditQuery {
                        actor: Some("config".into()),
                        limit: 100,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
            }
        };
        let cp = ControlPlane::bind(flags(&["--read-policy", "cache=all"]))
            .await
            .unwrap();
        let first = actions(&cp).await;
        let names: Vec<&str> = first.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(names, ["policy.set", "service.update", "service.create"]);
        assert!(first.iter().all(|a| a.actor == "config"));
        assert!(
            !serde_json::to_string(&first)
                .unwrap()
                .contains("backend-secret")
        );
        cp.store.close().await;
        drop(cp);

        // The same flags again: nothing changed, nothing audited.
        let cp = ControlPlane::bind(flags(&["--read-policy", "cache=all"]))
            .await
            .unwrap();
        assert_eq!(actions(&cp).await.len(), 3);
        cp.store.close().await;
        drop(cp);

        // A different Sentinel list: one update row.
        let mut other = flags(&[]);
        other.services[0].sentinels = vec!["127.0.0.1:26380".parse().unwrap()];
        let cp = ControlPlane::bind(other).await.unwrap();
        let last = actions(&cp).await;
        assert_eq!(last.len(), 4);
        assert_eq!(last[0].action, "service.update");
        assert_eq!(last[0].after["sentinels"][0], "127.0.0.1:26380");
    }
}
