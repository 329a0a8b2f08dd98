//! `pivot.v1.Admin`: the admin API over gRPC, for automation and `pivotctl`.
//!
//! A transport only, like the REST handlers (`http::api`): every operation is
//! [`crate::Admin`]'s (validation, serialisation, audit, publication), every view is built
//! by `http::model` (what a service, proxy or event looks like, what `behind` means), and
//! the live stream is the SSE stream's [`Feed`]. This module converts between those and the
//! protobuf messages, and maps errors to gRPC codes (see `admin.proto`).
//!
//! Authentication is the REST API's: `authorization: Bearer <token>` metadata, the same
//! tokens; viewers may call the read-only methods.

use std::pin::Pin;
use std::str::FromStr;

use futures_util::Stream;
use pivot_proto::v1 as pb;
use pivot_proto::v1::admin_server::Admin as AdminApi;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::admin::{Actor, NewService, ServiceUpdate};
use crate::auth::{Caller, Role};
use crate::error::Error;
use crate::failover::FailoverOptions;
use crate::http::AppState;
use crate::http::api::{DEFAULT_LIMIT, MAX_LIMIT, check_kinds, next_before, version_of};
use crate::http::model::{
    AuditView, EventView, FailoverView, PolicyView, ProxyView, ServiceView, TopologyView,
};
use crate::http::sse::{Feed, LiveItem};
use crate::state::{BackendAuth, CommandRule, Consistency, Policy, ReadPolicy, Target, WriteAck};
use crate::store::{AuditQuery, EventQuery};
use crate::topology::NodeAddr;

/// The gRPC admin service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminService {
    app: AppState,
}

impl AdminService {
    /// Serves the operations and views of `app` (the REST API's state).
    pub fn new(app: AppState) -> AdminService {
        AdminService { app }
    }

    /// The config version a change is carried by (as the REST API answers).
    fn version_of(&self, service: &str, changed: Option<u64>) -> Result<u64, Status> {
        let s = self.app.admin.service(service).map_err(status)?;
        Ok(version_of(&s, changed))
    }

    /// The caller behind the request's bearer token; `write` requires the admin role.
    async fn caller<T>(&self, req: &Request<T>, write: bool) -> Result<Caller, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated("missing bearer token (authorization: Bearer <token>)")
            })?;
        let caller = self
            .app
            .tokens
            .verify(token)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::unauthenticated("invalid or revoked token"))?;
        if write && caller.role != Role::Admin {
            return Err(Status::permission_denied(format!(
                "token `{}` is a viewer: changes need an admin token",
                caller.name
            )));
        }
        Ok(caller)
    }
}

fn actor(caller: &Caller) -> Actor {
    Actor::new(caller.actor())
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "admin gRPC request failed");
    Status::internal("internal error")
}

/// `INVALID_ARGUMENT` naming `field` in the message and in the `pivot-field` trailer.
fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    let mut s = Status::invalid_argument(format!("{field}: {message}"));
    if let Ok(v) = MetadataValue::try_from(field) {
        s.metadata_mut().insert("pivot-field", v);
    }
    s
}

/// The gRPC status of an operation's error (admin.proto's table).
fn status(e: Error) -> Status {
    match e {
        Error::UnknownService(name) => Status::not_found(format!("unknown service `{name}`")),
        Error::NotFound(m) => Status::not_found(m),
        Error::InvalidField { field, message } => invalid(&field, message),
        Error::Invalid(m) => Status::invalid_argument(m),
        Error::Conflict(m) => Status::failed_precondition(m),
        Error::Unavailable(m) => Status::unavailable(m),
        other => internal(other),
    }
}

fn parse<T: FromStr<Err = String>>(field: &str, value: &str) -> Result<T, Status> {
    value.parse().map_err(|m: String| invalid(field, m))
}

fn sentinels(field: &str, list: &[String]) -> Result<Vec<NodeAddr>, Status> {
    list.iter()
        .enumerate()
        .map(|(i, s)| parse(&format!("{field}[{i}]"), s))
        .collect()
}

fn backend_auth(b: pb::BackendAuthInput) -> BackendAuth {
    BackendAuth {
        username: (!b.username.is_empty()).then_some(b.username),
        password: b.password,
    }
}

fn rule(field: &str, r: &pb::RuleView) -> Result<CommandRule, Status> {
    let target: Target = parse(&format!("{field}.target"), &r.target)?;
    CommandRule::new(&r.command, target).map_err(|m| invalid(&format!("{field}.command"), m))
}

/// The fields a `PolicyInput` sets, parsed and checked; applied to the current policy
/// inside `Admin::update_policy` (so the read-modify-write is serialised there).
#[derive(Debug, Default)]
struct PolicyEdit {
    read_policy: Option<ReadPolicy>,
    consistency: Option<Consistency>,
    rules: Option<Vec<CommandRule>>,
    max_replica_lag: Option<Option<u64>>,
    write_ack: Option<WriteAck>,
    failover_hold: Option<Option<std::time::Duration>>,
}

/// `set` and `clear` of one optional field: at most one of them.
fn set_or_clear<T>(field: &str, set: Option<T>, clear: bool) -> Result<Option<Option<T>>, Status> {
    match (set, clear) {
        (Some(_), true) => Err(invalid(field, "set it or clear it, not both")),
        (Some(v), false) => Ok(Some(Some(v))),
        (None, true) => Ok(Some(None)),
        (None, false) => Ok(None),
    }
}

impl PolicyEdit {
    /// Parses `input`; errors name the field, prefixed with `prefix` (`policy.`).
    fn parse(input: pb::PolicyInput, prefix: &str) -> Result<PolicyEdit, Status> {
        let field = |f: &str| format!("{prefix}{f}");
        let rules = if input.replace_rules {
            let rules = input
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| rule(&field(&format!("rules[{i}]")), r))
                .collect::<Result<_, _>>()?;
            Some(rules)
        } else if !input.rules.is_empty() {
            return Err(invalid(
                &field("rules"),
                "set replace_rules to replace the rules (or use PutRule / DeleteRule)",
            ));
        } else {
            None
        };
        let hold = match &input.failover_hold {
            Some(v) => {
                let d = humantime::parse_duration(v)
                    .map_err(|e| invalid(&field("failover_hold"), format!("`{v}`: {e}")))?;
                if d.is_zero() {
                    return Err(invalid(&field("failover_hold"), "must be at least 1ms"));
                }
                Some(d)
            }
            None => None,
        };
        Ok(PolicyEdit {
            read_policy: input
                .read_policy
                .as_deref()
                .map(|v| parse(&field("read_policy"), v))
                .transpose()?,
            consistency: input
                .consistency
                .as_deref()
                .map(|v| parse(&field("consistency"), v))
                .transpose()?,
            rules,
            max_replica_lag: set_or_clear(
                &field("max_replica_lag"),
                input.max_replica_lag,
                input.clear_max_replica_lag,
            )?,
            write_ack: input
                .write_ack
                .as_deref()
                .map(|v| parse(&field("write_ack"), v))
                .transpose()?,
            failover_hold: set_or_clear(&field("failover_hold"), hold, input.clear_failover_hold)?,
        })
    }

    /// `base` with the parsed fields set.
    fn apply(self, base: &Policy) -> Policy {
        let mut p = base.clone();
        if let Some(v) = self.read_policy {
            p.read_policy = v;
        }
        if let Some(v) = self.consistency {
            p.consistency = v;
        }
        if let Some(v) = self.rules {
            p.rules = v;
        }
        if let Some(v) = self.max_replica_lag {
            p.max_replica_lag = v;
        }
        if let Some(v) = self.write_ack {
            p.write_ack = v;
        }
        if let Some(v) = self.failover_hold {
            p.failover_hold = v;
        }
        p
    }
}

/// A wire enum's JSON string (`"master-only"`), the form the REST API shows.
fn wire<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => other.map(|v| v.to_string()).unwrap_or_default(),
    }
}

fn policy_pb(v: PolicyView) -> pb::PolicyView {
    pb::PolicyView {
        read_policy: wire(&v.read_policy),
        consistency: wire(&v.consistency),
        rules: v
            .rules
            .iter()
            .map(|r| pb::RuleView {
                command: r.command.clone(),
                target: wire(&r.target),
            })
            .collect(),
        max_replica_lag: v.max_replica_lag,
        write_ack: v.write_ack,
        failover_hold: v.failover_hold,
    }
}

fn topology_pb(service: &str, v: TopologyView) -> pb::TopologyView {
    pb::TopologyView {
        service: service.to_string(),
        decided: v.decided,
        master: v.master.unwrap_or_default(),
        master_reason: v.master_reason,
        config_epoch: v.config_epoch,
        changed_version: v.changed_version,
        changed_at: v.changed_at.unwrap_or_default(),
        replicas: v
            .replicas
            .into_iter()
            .map(|r| pb::ReplicaView {
                addr: r.addr,
                healthy: r.healthy,
                lag_bytes: r.lag_bytes,
                link_down_ms: r.link_down_ms,
                reason: r.reason,
            })
            .collect(),
        sentinels: v
            .sentinels
            .into_iter()
            .map(|s| pb::SentinelView {
                addr: s.addr,
                configured: s.configured,
                reachable: s.reachable,
            })
            .collect(),
    }
}

fn service_pb(v: ServiceView) -> pb::ServiceView {
    pb::ServiceView {
        topology: Some(topology_pb(&v.name, v.topology)),
        name: v.name,
        sentinels: v.sentinels,
        backend_username: v.backend_auth.as_ref().and_then(|a| a.username.clone()),
        backend_password_set: v.backend_auth.is_some_and(|a| a.password_set),
        policy: Some(policy_pb(v.policy)),
        users: v.users,
        config_version: v.config_version,
    }
}

fn proxy_pb(v: ProxyView) -> pb::ProxyView {
    pb::ProxyView {
        proxy_id: v.proxy_id,
        listen_addr: v.listen_addr,
        build_version: v.build_version,
        services: v.services,
        connected: v.connected,
        acked_version: v.acked_version,
        behind: v.behind,
        silent: v.silent,
        last_nack: v.last_nack.unwrap_or_default(),
        last_nack_version: v.last_nack_version,
        last_seen: v.last_seen,
        client_connections: v.client_connections.unwrap_or(0),
        ops_per_sec: v.ops_per_sec.unwrap_or(0.0),
        draining: v.draining,
    }
}

fn event_pb(v: EventView) -> pb::EventView {
    pb::EventView {
        id: v.id,
        service: v.service,
        version: u64::try_from(v.version).unwrap_or(0),
        kind: v.kind,
        old_master: v.old_master.unwrap_or_default(),
        new_master: v.new_master.unwrap_or_default(),
        reason: v.reason,
        details: v.details.to_string(),
        at: v.at,
    }
}

fn audit_pb(v: AuditView) -> pb::AuditView {
    pb::AuditView {
        id: v.id,
        at: v.at,
        actor: v.actor,
        action: v.action,
        service: v.service.unwrap_or_default(),
        target: v.target,
        before: v.before.to_string(),
        after: v.after.to_string(),
    }
}

fn failover_pb(v: FailoverView) -> pb::FailoverReport {
    pb::FailoverReport {
        old_master: v.old_master,
        new_master: v.new_master,
        catch_up_ms: v.catch_up_ms,
        promotion_ms: v.promotion_ms,
        paused_ms: v.paused_ms,
        total_ms: v.total_ms,
    }
}

fn limit(n: u32) -> Result<u32, Status> {
    match n {
        0 => Ok(DEFAULT_LIMIT),
        n if n <= MAX_LIMIT => Ok(n),
        _ => Err(invalid("limit", format!("must be from 1 to {MAX_LIMIT}"))),
    }
}

fn before(n: i64) -> Result<Option<i64>, Status> {
    match n {
        0 => Ok(None),
        n if n > 0 => Ok(Some(n)),
        _ => Err(invalid(
            "before",
            "must be a positive id (or 0 for the newest)",
        )),
    }
}

type LiveStream = Pin<Box<dyn Stream<Item = Result<pb::LiveMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AdminApi for AdminService {
    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let c = self.caller(&req, false).await?;
        Ok(Response::new(pb::WhoAmIResponse {
            name: c.name,
            role: c.role.as_str().to_string(),
        }))
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        self.caller(&req, false).await?;
        let services = self
            .app
            .admin
            .services()
            .iter()
            .map(|s| service_pb(ServiceView::from(s)))
            .collect();
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::ServiceView>, Status> {
        self.caller(&req, false).await?;
        let s = self
            .app
            .admin
            .service(&req.get_ref().name)
            .map_err(status)?;
        Ok(Response::new(service_pb(ServiceView::from(&s))))
    }

    async fn create_service(
        &self,
        req: Request<pb::CreateServiceRequest>,
    ) -> Result<Response<pb::ServiceView>, Status> {
        let c = self.caller(&req, true).await?;
        let r = req.into_inner();
        let policy = match r.policy {
            Some(p) => Some(PolicyEdit::parse(p, "policy.")?.apply(&Policy::default())),
            None => None,
        };
        let spec = NewService {
            name: r.name,
            sentinels: sentinels("sentinels", &r.sentinels)?,
            backend_auth: r.backend_auth.map(backend_auth),
            policy,
        };
        let s = self
            .app
            .admin
            .create_service(&actor(&c), spec)
            .await
            .map_err(|e| match e {
                Error::Conflict(m) => Status::already_exists(m),
                e => status(e),
            })?;
        Ok(Response::new(service_pb(ServiceView::from(&s))))
    }

    async fn update_service(
        &self,
        req: Request<pb::UpdateServiceRequest>,
    ) -> Result<Response<pb::ServiceView>, Status> {
        let c = self.caller(&req, true).await?;
        let r = req.into_inner();
        let backend_auth = match (r.backend_auth, r.clear_backend_auth) {
            (Some(_), true) => {
                return Err(invalid("backend_auth", "set it or clear it, not both"));
            }
            (Some(a), false) => Some(Some(backend_auth(a))),
            (None, true) => Some(None),
            (None, false) => None,
        };
        let update = ServiceUpdate {
            sentinels: if r.sentinels.is_empty() {
                None
            } else {
                Some(sentinels("sentinels", &r.sentinels)?)
            },
            backend_auth,
        };
        let s = self
            .app
            .admin
            .update_service(&actor(&c), &r.name, update)
            .await
            .map_err(status)?;
        Ok(Response::new(service_pb(ServiceView::from(&s))))
    }

    async fn delete_service(
        &self,
        req: Request<pb::DeleteServiceRequest>,
    ) -> Result<Response<pb::DeleteServiceResponse>, Status> {
        let c = self.caller(&req, true).await?;
        let r = req.into_inner();
        self.app
            .admin
            .delete_service(&actor(&c), &r.name, r.force)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteServiceResponse {}))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::PolicyView>, Status> {
        self.caller(&req, false).await?;
        let p = self
            .app
            .admin
            .policy(&req.get_ref().service)
            .map_err(status)?;
        Ok(Response::new(policy_pb(PolicyView::from(&p))))
    }

    async fn update_policy(
        &self,
        req: Request<pb::UpdatePolicyRequest>,
    ) -> Result<Response<pb::PolicyChange>, Status> {
        let c = self.caller(&req, true).await?;
        let r = req.into_inner();
        let edit = PolicyEdit::parse(r.policy.unwrap_or_default(), "")?;
        let outcome = self
            .app
            .admin
            .update_policy(&actor(&c), &r.service, |current| Ok(edit.apply(current)))
            .await;
        let (policy, changed) = outcome.map_err(status)?;
        Ok(Response::new(pb::PolicyChange {
            policy: Some(policy_pb(PolicyView::from(&policy))),
            version: changed.unwrap_or(0),
        }))
    }

    async fn list_rules(
        &self,
        req: Request<pb::ListRulesRequest>,
    ) -> Result<Response<pb::ListRulesResponse>, Status> {
        self.caller(&req, false).await?;
        let p = self
            .app
            .admin
            .policy(&req.get_ref().service)
            .map_err(status)?;
        Ok(Response::new(pb::ListRulesResponse {
            rules: policy_pb(PolicyView::from(&p)).rules,
        }))
    }

    async fn put_rule(
        &self,
        req: Request<pb::PutRuleRequest>,
    ) -> Result<Response<pb::RuleChange>, Status> {
        let c = self.caller(&req, true).await?;
        let r = req.into_inner();
        let Some(input) = r.rule else {
            return Err(invalid("rule", "missing"));
        };
        let rule = rule("rule", &input)?;
        let (created, changed) = self
            .app
            .admin
            .put_rule(&actor(&c), &r.service, rule)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RuleChange {
            created,
            version: self.version_of(&r.service, changed)?,
        }))
    }

    async fn delete_rule(
        &self,
        req: Request<pb::DeleteRuleRequest>,
    ) -> Result<Response<pb::RuleChange>, Status> {
        let c = self.caller(&req, true).await?;
        let r = req.into_inner();
        let changed = self
            .app
            .admin
            .delete_rule(&actor(&c), &r.service, &r.command)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RuleChange {
            created: false,
            version: self.version_of(&r.service, changed)?,
        }))
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.caller(&req, false).await?;
        let users = self
            .app
            .admin
            .users(&req.get_ref().service)
            .map_err(status)?;
        Ok(Response::new(pb::ListUsersResponse { users }))
    }

    async fn put_user(
        &self,
        req: Request<pb::PutUserRequest>,
    ) -> Result<Response<pb::UserChange>, Status> {
        let c = self.caller(&req, true).await?;
        let r = req.into_inner();
        let (created, changed) = self
            .app
            .admin
            .put_user(&actor(&c), &r.service, &r.name, &r.password)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UserChange {
            created,
            version: self.version_of(&r.service, changed)?,
        }))
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::UserChange>, Status> {
        let c = self.caller(&req, true).await?;
        let r = req.into_inner();
        self.app
            .admin
            .delete_user(&actor(&c), &r.service, &r.name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UserChange {
            created: false,
            version: self.version_of(&r.service, None)?,
        }))
    }

    async fn get_topology(
        &self,
        req: Request<pb::GetTopologyRequest>,
    ) -> Result<Response<pb::TopologyView>, Status> {
        self.caller(&req, false).await?;
        let name = &req.get_ref().service;
        let s = self.app.admin.service(name).map_err(status)?;
        Ok(Response::new(topology_pb(name, TopologyView::of(&s))))
    }

    async fn list_proxies(
        &self,
        req: Request<pb::ListProxiesRequest>,
    ) -> Result<Response<pb::ListProxiesResponse>, Status> {
        self.caller(&req, false).await?;
        let fleet = self.app.state.current();
        let proxies = self
            .app
            .registry
            .list()
            .iter()
            .map(|p| proxy_pb(ProxyView::new(p, &fleet)))
            .collect();
        Ok(Response::new(pb::ListProxiesResponse {
            version: fleet.version,
            proxies,
        }))
    }

    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        self.caller(&req, false).await?;
        let r = req.into_inner();
        let limit = limit(r.limit)?;
        check_kinds(&r.kinds).map_err(|m| invalid("kinds", m))?;
        let rows = self
            .app
            .admin
            .events(EventQuery {
                service: (!r.service.is_empty()).then_some(r.service),
                kinds: r.kinds,
                before: before(r.before)?,
                limit,
            })
            .await
            .map_err(status)?;
        let next = next_before(rows.iter().map(|e| e.id), rows.len(), limit).unwrap_or(0);
        Ok(Response::new(pb::ListEventsResponse {
            next_before: next,
            events: rows
                .into_iter()
                .map(|e| event_pb(EventView::from(e)))
                .collect(),
        }))
    }

    type WatchEventsStream = LiveStream;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.caller(&req, false).await?;
        let service = req.into_inner().service;
        let feed = Feed::open(&self.app).map_err(Status::unavailable)?;
        // `None` once the stream ended (after a resync, which ends it with an error).
        let stream = futures_util::stream::unfold(Some(feed), move |feed| {
            let service = service.clone();
            async move {
                let mut feed = feed?;
                loop {
                    let msg = match feed.next().await? {
                        LiveItem::Resync => {
                            let end = Status::resource_exhausted(
                                "the watcher fell behind the live feed; list again and watch anew",
                            );
                            return Some((Err(end), None));
                        }
                        LiveItem::Topology(t) => {
                            if !service.is_empty() && t.service != service {
                                continue;
                            }
                            pb::live_message::Msg::Topology(topology_pb(&t.service, t.topology))
                        }
                        LiveItem::Event(e) => {
                            if !service.is_empty() && e.service != service {
                                continue;
                            }
                            pb::live_message::Msg::Event(event_pb(e))
                        }
                        LiveItem::Audit(a) => {
                            if !service.is_empty() && a.service.as_deref() != Some(&service) {
                                continue;
                            }
                            pb::live_message::Msg::Audit(audit_pb(a))
                        }
                        LiveItem::Proxy(p) => {
                            if !service.is_empty() && !p.services.contains(&service) {
                                continue;
                            }
                            pb::live_message::Msg::Proxy(proxy_pb(p))
                        }
                    };
                    return Some((Ok(pb::LiveMessage { msg: Some(msg) }), Some(feed)));
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.caller(&req, false).await?;
        let r = req.into_inner();
        let limit = limit(r.limit)?;
        let rows = self
            .app
            .admin
            .audit(AuditQuery {
                service: (!r.service.is_empty()).then_some(r.service),
                actor: (!r.actor.is_empty()).then_some(r.actor),
                before: before(r.before)?,
                limit,
            })
            .await
            .map_err(status)?;
        let next = next_before(rows.iter().map(|e| e.id), rows.len(), limit).unwrap_or(0);
        Ok(Response::new(pb::ListAuditResponse {
            next_before: next,
            entries: rows
                .into_iter()
                .map(|a| audit_pb(AuditView::from(a)))
                .collect(),
        }))
    }

    async fn failover(
        &self,
        req: Request<pb::FailoverRequest>,
    ) -> Result<Response<pb::FailoverReport>, Status> {
        let c = self.caller(&req, true).await?;
        let service = req.into_inner().service;
        let report = self
            .app
            .admin
            .failover(&actor(&c), &service, FailoverOptions::default())
            .await
            .map_err(status)?;
        Ok(Response::new(failover_pb(report.into())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn field_of(s: &Status) -> &str {
        s.metadata()
            .get("pivot-field")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[test]
    fn policy_input_errors_name_the_field() {
        let bad = |input: pb::PolicyInput, prefix: &str| {
            let s = PolicyEdit::parse(input, prefix).unwrap_err();
            assert_eq!(s.code(), tonic::Code::InvalidArgument);
            field_of(&s).to_string()
        };
        let input = |f: fn(&mut pb::PolicyInput)| {
            let mut i = pb::PolicyInput::default();
            f(&mut i);
            i
        };
        assert_eq!(
            bad(input(|i| i.read_policy = Some("sometimes".into())), ""),
            "read_policy"
        );
        assert_eq!(
            bad(
                input(|i| i.write_ack = Some("replicas(0)".into())),
                "policy."
            ),
            "policy.write_ack"
        );
        assert_eq!(
            bad(
                input(|i| {
                    i.max_replica_lag = Some(1);
                    i.clear_max_replica_lag = true;
                }),
                ""
            ),
            "max_replica_lag"
        );
        assert_eq!(
            bad(input(|i| i.failover_hold = Some("soon".into())), ""),
            "failover_hold"
        );
        assert_eq!(
            bad(
                input(|i| i.rules = vec![pb::RuleView {
                    command: "get".into(),
                    target: "replica".into()
                }]),
                ""
            ),
            "rules"
        );
        assert_eq!(
            bad(
                input(|i| {
                    i.replace_rules = true;
                    i.rules = vec![pb::RuleView {
                        command: "get".into(),
                        target: "elsewhere".into(),
                    }];
                }),
                ""
            ),
            "rules[0].target"
        );
    }

    #[test]
    fn a_policy_edit_changes_only_what_it_sets() {
        let base = Policy {
            max_replica_lag: Some(10),
            failover_hold: Some(std::time::Duration::from_secs(3)),
            ..Policy::default()
        };
        let edit = PolicyEdit::parse(
            pb::PolicyInput {
                read_policy: Some("master-only".into()),
                clear_failover_hold: true,
                ..Default::default()
            },
            "",
        )
        .unwrap();
        let p = edit.apply(&base);
        assert_eq!(p.read_policy, ReadPolicy::MasterOnly);
        assert_eq!(p.failover_hold, None);
        assert_eq!(p.max_replica_lag, Some(10));
        assert_eq!(p.consistency, base.consistency);
    }
}
