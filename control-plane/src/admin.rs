//! Operations on what operators configure: services, routing policy, command rules, proxy
//! users, manual failovers. Each change is validated, written to the store, recorded in the
//! audit log (who, what, before, after; secrets redacted) and published to the proxies as
//! a new config version. The start-up flags, the REST API and the gRPC admin API all go
//! through [`Admin`], so that every entry point validates, audits and publishes alike.
//!
//! Changes are serialised per control plane (one `tokio::sync::Mutex`): a read-modify-write
//! such as "add this rule" must not lose a concurrent "add that rule". They are rare, so one
//! lock costs nothing that matters.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::error::Error;
use crate::failover::{FailoverOptions, FailoverReport};
use crate::grpc::ProxyRegistry;
use crate::state::{
    BackendAuth, CommandRule, Policy, ProxyUser, ServiceState, State, validate_user_name,
};
use crate::store::{
    AuditEntry, AuditQuery, EventQuery, EventRow, Live, NewAudit, Store, StoredService,
};
use crate::topology::NodeAddr;
use crate::watchers::Watchers;

/// The most Sentinels a service may list.
pub const MAX_SENTINELS: usize = 16;

/// Who makes a change, as the audit log names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `token:<name>` for API calls, `config` for start-up flags.
    pub name: String,
}

impl Actor {
    /// An actor named `name`.
    pub fn new(name: impl Into<String>) -> Actor {
        Actor { name: name.into() }
    }

    /// The start-up configuration (flags, environment, config file).
    pub fn config() -> Actor {
        Actor::new("config")
    }
}

/// A service to register.
#[derive(Debug, Clone, PartialEq)]
pub struct NewService {
    /// Sentinel master name.
    pub name: String,
    /// Its Sentinels (at least one).
    pub sentinels: Vec<NodeAddr>,
    /// Credentials for its Redis nodes.
    pub backend_auth: Option<BackendAuth>,
    /// Routing policy; `None`: the default.
    pub policy: Option<Policy>,
}

/// Changes to a registered service; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceUpdate {
    /// New Sentinels.
    pub sentinels: Option<Vec<NodeAddr>>,
    /// New credentials; `Some(None)` removes them.
    pub backend_auth: Option<Option<BackendAuth>>,
}

/// Handle for configuration changes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    store: Store,
    state: Arc<State>,
    watchers: Arc<Watchers>,
    registry: Arc<ProxyRegistry>,
    /// Serialises read-modify-write changes.
    changes: Arc<tokio::sync::Mutex<()>>,
    /// Services with a manual failover running.
    failovers: Arc<Mutex<HashSet<String>>>,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::InvalidField {
        field: field.into(),
        message: message.into(),
    }
}

fn unknown(service: &str) -> Error {
    Error::UnknownService(service.to_string())
}

/// Sentinel master names as Redis accepts them in `sentinel monitor`: printable ASCII, no
/// spaces, at most 128 bytes.
pub fn validate_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 || name.bytes().any(|b| b <= b' ' || b > b'~') {
        return Err(format!(
            "invalid service name `{name}`: 1-128 printable ASCII characters, no spaces"
        ));
    }
    Ok(())
}

fn check_sentinels(field: &str, sentinels: &[NodeAddr]) -> Result<(), Error> {
    if sentinels.is_empty() {
        return Err(invalid(field, "at least one Sentinel address is needed"));
    }
    if sentinels.len() > MAX_SENTINELS {
        return Err(invalid(field, format!("at most {MAX_SENTINELS} Sentinels")));
    }
    for (i, a) in sentinels.iter().enumerate() {
        if a.port == 0 {
            return Err(invalid(
                format!("{field}[{i}]"),
                "port 0 is not a Sentinel port",
            ));
        }
        if sentinels[..i].contains(a) {
            return Err(invalid(
                format!("{field}[{i}]"),
                format!("{a} is listed twice"),
            ));
        }
    }
    Ok(())
}

fn check_backend_auth(field: &str, auth: &BackendAuth) -> Result<(), Error> {
    if auth.password.is_empty() {
        return Err(invalid(format!("{field}.password"), "must not be empty"));
    }
    if auth.username.as_deref() == Some("") {
        return Err(invalid(
            format!("{field}.username"),
            "must not be empty (leave it out for the default user)",
        ));
    }
    Ok(())
}

fn check_policy(prefix: &str, policy: &Policy) -> Result<(), Error> {
    policy
        .check()
        .map_err(|(field, message)| invalid(format!("{prefix}{field}"), message))
}

/// A service as the audit log shows it: everything but secrets.
fn audit_service(s: &ServiceState) -> Value {
    json!({
        "name": s.name,
        "sentinels": s.sentinels.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "backend_auth": audit_auth(s.backend_auth.as_ref()),
        "policy": s.policy,
        "users": s.users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
    })
}

fn audit_auth(a: Option<&BackendAuth>) -> Value {
    match a {
        Some(a) => json!({"username": a.username, "password": "<redacted>"}),
        None => Value::Null,
    }
}

fn audit_rule(r: Option<&CommandRule>) -> Value {
    r.map_or(
        Value::Null,
        |r| json!({"command": r.command, "target": r.target}),
    )
}

impl Admin {
    pub(crate) fn new(
        store: Store,
        state: Arc<State>,
        watchers: Arc<Watchers>,
        registry: Arc<ProxyRegistry>,
    ) -> Admin {
        Admin {
            store,
            state,
            watchers,
            registry,
            changes: Arc::new(tokio::sync::Mutex::new(())),
            failovers: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Every service, by name.
    pub fn services(&self) -> Vec<ServiceState> {
        self.state.current().services.values().cloned().collect()
    }

    /// One service.
    pub fn service(&self, name: &str) -> Result<ServiceState, Error> {
        self.state
            .current()
            .services
            .get(name)
            .cloned()
            .ok_or_else(|| unknown(name))
    }

    /// Writes an audit row. For changes made outside `Admin` (admin tokens).
    pub async fn record(
        &self,
        actor: &Actor,
        action: &str,
        service: Option<&str>,
        target: &str,
        before: Value,
        after: Value,
    ) -> Result<AuditEntry, Error> {
        self.store
            .insert_audit(NewAudit {
                actor: &actor.name,
                action,
                service,
                target,
                before,
                after,
            })
            .await
    }

    /// Registers a service and starts watching its Sentinels.
    pub async fn create_service(
        &self,
        actor: &Actor,
        spec: NewService,
    ) -> Result<ServiceState, Error> {
        validate_service_name(&spec.name).map_err(|m| invalid("name", m))?;
        check_sentinels("sentinels", &spec.sentinels)?;
        if let Some(a) = &spec.backend_auth {
            check_backend_auth("backend_auth", a)?;
        }
        let policy = spec.policy.unwrap_or_default();
        check_policy("policy.", &policy)?;
        let _guard = self.changes.lock().await;
        if self.state.current().services.contains_key(&spec.name)
            || !self
                .store
                .create_service(
                    &spec.name,
                    &spec.sentinels,
                    spec.backend_auth.as_ref(),
                    &policy,
                )
                .await?
        {
            return Err(Error::Conflict(format!(
                "service `{}` already exists",
                spec.name
            )));
        }
        let stored = StoredService {
            name: spec.name.clone(),
            sentinels: spec.sentinels,
            policy,
            backend_auth: spec.backend_auth,
            users: Vec::new(),
        };
        self.state.add_service(&stored).await;
        self.watchers.watch(stored);
        let created = self.service(&spec.name)?;
        self.record(
            actor,
            "service.create",
            Some(&spec.name),
            "",
            Value::Null,
            audit_service(&created),
        )
        .await?;
        Ok(created)
    }

    /// Changes a service's Sentinels or backend credentials.
    pub async fn update_service(
        &self,
        actor: &Actor,
        name: &str,
        update: ServiceUpdate,
    ) -> Result<ServiceState, Error> {
        if let Some(s) = &update.sentinels {
            check_sentinels("sentinels", s)?;
        }
        if let Some(Some(a)) = &update.backend_auth {
            check_backend_auth("backend_auth", a)?;
        }
        let _guard = self.changes.lock().await;
        let before = self.service(name)?;
        let sentinels_changed = update
            .sentinels
            .as_ref()
            .is_some_and(|s| *s != before.sentinels);
        if sentinels_changed
            && let Some(s) = &update.sentinels
            && !self.store.set_sentinels(name, s).await?
        {
            return Err(unknown(name));
        }
        let auth_changed = update
            .backend_auth
            .as_ref()
            .is_some_and(|a| *a != before.backend_auth);
        if auth_changed && let Some(a) = &update.backend_auth {
            let found = match a {
                Some(a) => self.store.set_backend_auth(name, a).await?,
                None => self.store.clear_backend_auth(name).await?,
            };
            if !found {
                return Err(unknown(name));
            }
        }
        if !sentinels_changed && !auth_changed {
            return Ok(before);
        }
        let what = match (sentinels_changed, auth_changed) {
            (true, true) => "Sentinels and backend credentials changed",
            (true, false) => "Sentinels changed",
            _ => "backend credentials changed",
        };
        self.state
            .configure(name, what, |s| {
                if let Some(sentinels) = update.sentinels {
                    s.sentinels = sentinels;
                }
                if let Some(auth) = update.backend_auth {
                    s.backend_auth = auth;
                }
            })
            .await;
        let after = self.service(name)?;
        if sentinels_changed {
            // A new watcher for the new Sentinels; the accepted topology stays published
            // until it decides.
            self.watchers.watch(StoredService::from(&after));
        }
        self.record(
            actor,
            "service.update",
            Some(name),
            "",
            audit_service(&before),
            audit_service(&after),
        )
        .await?;
        Ok(after)
    }

    /// Removes a service: its watcher stops and proxies subscribed to it are told it is
    /// unknown (they keep serving their last good table). Refused while a connected proxy
    /// serves it, unless `force`.
    pub async fn delete_service(
        &self,
        actor: &Actor,
        name: &str,
        force: bool,
    ) -> Result<(), Error> {
        let _guard = self.changes.lock().await;
        let before = self.service(name)?;
        if !force {
            let serving: Vec<String> = self
                .registry
                .list()
                .into_iter()
                .filter(|p| p.streams > 0 && p.services.iter().any(|s| s == name))
                .map(|p| p.proxy_id)
                .collect();
            if !serving.is_empty() {
                return Err(Error::Conflict(format!(
                    "service `{name}` is served by {} connected prox{} ({}); stop them first or force the deletion",
                    serving.len(),
                    if serving.len() == 1 { "y" } else { "ies" },
                    serving.join(", ")
                )));
            }
        }
        if !self.store.delete_service(name).await? {
            return Err(unknown(name));
        }
        self.watchers.unwatch(name);
        self.state.remove_service(name).await;
        self.record(
            actor,
            "service.delete",
            Some(name),
            "",
            audit_service(&before),
            Value::Null,
        )
        .await?;
        Ok(())
    }

    /// The current policy of `service`.
    pub fn policy(&self, service: &str) -> Result<Policy, Error> {
        Ok(self.service(service)?.policy)
    }

    /// Replaces the policy of `service`; returns the config version that carries it
    /// (`None`: nothing changed).
    pub async fn set_policy(
        &self,
        actor: &Actor,
        service: &str,
        policy: Policy,
    ) -> Result<Option<u64>, Error> {
        check_policy("", &policy)?;
        let _guard = self.changes.lock().await;
        self.set_policy_locked(actor, "policy.set", service, "", policy)
            .await
    }

    /// Changes the policy of `service` with `edit`, which gets the current policy: a
    /// read-modify-write serialised with every other change, so that concurrent edits of
    /// different fields never undo each other. Returns the policy now, and the config
    /// version that carries it (`None`: nothing changed).
    pub async fn update_policy(
        &self,
        actor: &Actor,
        service: &str,
        edit: impl FnOnce(&Policy) -> Result<Policy, Error>,
    ) -> Result<(Policy, Option<u64>), Error> {
        let _guard = self.changes.lock().await;
        let policy = edit(&self.policy(service)?)?;
        check_policy("", &policy)?;
        let version = self
            .set_policy_locked(actor, "policy.set", service, "", policy)
            .await?;
        Ok((self.policy(service)?, version))
    }

    async fn set_policy_locked(
        &self,
        actor: &Actor,
        action: &str,
        service: &str,
        target: &str,
        policy: Policy,
    ) -> Result<Option<u64>, Error> {
        let before = self.policy(service)?;
        if before == policy {
            return Ok(None);
        }
        if !self.store.set_policy(service, &policy).await? {
            return Err(unknown(service));
        }
        let (b, a) = if action == "policy.set" {
            (json!(before), json!(policy))
        } else {
            let find = |p: &Policy| p.rules.iter().find(|r| r.command == target).cloned();
            (
                audit_rule(find(&before).as_ref()),
                audit_rule(find(&policy).as_ref()),
            )
        };
        let version = self
            .state
            .configure(service, action, |s| s.policy = policy)
            .await;
        self.record(actor, action, Some(service), target, b, a)
            .await?;
        Ok(version)
    }

    /// Replaces all command rules of `service`.
    pub async fn set_rules(
        &self,
        actor: &Actor,
        service: &str,
        rules: Vec<CommandRule>,
    ) -> Result<Option<u64>, Error> {
        let policy = Policy {
            rules,
            ..self.policy(service)?
        };
        self.set_policy(actor, service, policy).await
    }

    /// Adds or replaces the rule for `rule.command`. Returns whether it is new, and the
    /// config version that carries it (`None`: it was already so).
    pub async fn put_rule(
        &self,
        actor: &Actor,
        service: &str,
        rule: CommandRule,
    ) -> Result<(bool, Option<u64>), Error> {
        let rule =
            CommandRule::new(&rule.command, rule.target).map_err(|m| invalid("command", m))?;
        let _guard = self.changes.lock().await;
        let mut policy = self.policy(service)?;
        let created = match policy.rules.iter_mut().find(|r| r.command == rule.command) {
            Some(r) => {
                r.target = rule.target;
                false
            }
            None => {
                policy.rules.push(rule.clone());
                true
            }
        };
        check_policy("", &policy)?;
        let version = self
            .set_policy_locked(actor, "rule.put", service, &rule.command, policy)
            .await?;
        Ok((created, version))
    }

    /// Removes the rule for `command` (case-insensitive).
    pub async fn delete_rule(
        &self,
        actor: &Actor,
        service: &str,
        command: &str,
    ) -> Result<Option<u64>, Error> {
        let command = command.trim().to_ascii_lowercase();
        let _guard = self.changes.lock().await;
        let mut policy = self.policy(service)?;
        let before = policy.rules.len();
        policy.rules.retain(|r| r.command != command);
        if policy.rules.len() == before {
            return Err(Error::NotFound(format!(
                "service `{service}` has no rule for `{command}`"
            )));
        }
        self.set_policy_locked(actor, "rule.delete", service, &command, policy)
            .await
    }

    /// Names of the proxy users of `service`.
    pub fn users(&self, service: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .service(service)?
            .users
            .into_iter()
            .map(|u| u.name)
            .collect())
    }

    /// Creates a proxy user or changes its password. Returns whether it is new, and the
    /// config version that carries it (`None`: same password as before).
    pub async fn put_user(
        &self,
        actor: &Actor,
        service: &str,
        name: &str,
        password: &str,
    ) -> Result<(bool, Option<u64>), Error> {
        validate_user_name(name).map_err(|m| invalid("name", m))?;
        if password.is_empty() {
            return Err(invalid("password", "must not be empty"));
        }
        let _guard = self.changes.lock().await;
        let svc = self.service(service)?;
        let existing = svc.users.iter().find(|u| u.name == name);
        let created = existing.is_none();
        if existing
            .is_some_and(|u| pivot_proto::password::verify(&u.salt, &u.hash, password.as_bytes()))
        {
            // Same password: keep the stored salt and hash (no new version).
            return Ok((false, None));
        }
        let user = ProxyUser::new(name, password).map_err(|m| invalid("password", m))?;
        if !self.store.put_user(service, &user).await? {
            return Err(unknown(service));
        }
        let what = format!("user `{name}` set");
        let version = self
            .state
            .configure(service, &what, |s| {
                s.users.retain(|u| u.name != user.name);
                s.users.push(user);
                s.users.sort_by(|a, b| a.name.cmp(&b.name));
            })
            .await;
        let (action, before) = if created {
            ("user.create", Value::Null)
        } else {
            (
                "user.password",
                json!({"name": name, "password": "<redacted>"}),
            )
        };
        self.record(
            actor,
            action,
            Some(service),
            name,
            before,
            json!({"name": name, "password": "<redacted>"}),
        )
        .await?;
        Ok((created, version))
    }

    /// Deletes a proxy user; its connected clients are disconnected by the proxies.
    pub async fn delete_user(&self, actor: &Actor, service: &str, name: &str) -> Result<(), Error> {
        let _guard = self.changes.lock().await;
        self.service(service)?;
        if !self.store.delete_user(service, name).await? {
            return Err(Error::NotFound(format!(
                "service `{service}` has no user `{name}`"
            )));
        }
        let what = format!("user `{name}` deleted");
        self.state
            .configure(service, &what, |s| s.users.retain(|u| u.name != name))
            .await;
        self.record(
            actor,
            "user.delete",
            Some(service),
            name,
            json!({"name": name}),
            Value::Null,
        )
        .await?;
        Ok(())
    }

    /// Fails `service` over to a replica without losing an acknowledged write (see
    /// [`crate::failover`]). One at a time per service: a second request while one runs
    /// gets [`Error::Conflict`]. Its start and outcome are events (for the failover
    /// timeline) and an audit row.
    pub async fn failover(
        &self,
        actor: &Actor,
        service: &str,
        opts: FailoverOptions,
    ) -> Result<FailoverReport, Error> {
        self.service(service)?;
        let running = FailoverGuard::claim(&self.failovers, service)?;
        // Its own task: a caller that goes away (an HTTP client closing the connection)
        // must not cancel a failover half-way, with the master's writes paused.
        let admin = self.clone();
        let actor = actor.clone();
        let service = service.to_string();
        let task = tokio::spawn(async move {
            let _running = running;
            admin.run_failover(&actor, &service, opts).await
        });
        task.await
            .map_err(|e| Error::Unavailable(format!("the failover task failed: {e}")))?
    }

    async fn run_failover(
        &self,
        actor: &Actor,
        service: &str,
        opts: FailoverOptions,
    ) -> Result<FailoverReport, Error> {
        let from = self
            .service(service)?
            .topology
            .master
            .as_ref()
            .map(ToString::to_string);
        self.state.note(
            service,
            "failover-started",
            format!("manual failover requested by {}", actor.name),
            json!({"actor": actor.name, "master": from}),
        );
        let result = crate::failover::run(&self.state, service, opts).await;
        let (reason, after) = match &result {
            Ok(report) => {
                self.state.note(
                    service,
                    "failover-finished",
                    format!("{} -> {}", report.old_master, report.new_master),
                    json!(report),
                );
                (None, json!(report))
            }
            Err(e) => {
                self.state.note(
                    service,
                    "failover-failed",
                    e.to_string(),
                    json!({"actor": actor.name}),
                );
                (Some(e.to_string()), json!({"error": e.to_string()}))
            }
        };
        if let Err(e) = self
            .record(
                actor,
                "failover",
                Some(service),
                "",
                json!({"master": from}),
                after,
            )
            .await
        {
            // The failover happened (or not) either way: report that, log this.
            tracing::error!(service, error = %e, failed = ?reason, "cannot write the failover's audit row");
        }
        result
    }

    /// Topology and configuration events, newest first.
    pub async fn events(&self, q: EventQuery) -> Result<Vec<EventRow>, Error> {
        self.store.events(&q).await
    }

    /// Audit rows, newest first.
    pub async fn audit(&self, q: AuditQuery) -> Result<Vec<AuditEntry>, Error> {
        self.store.audit(&q).await
    }

    /// Every event and audit row stored from now on (bounded; a slow receiver gets
    /// `RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.store.subscribe()
    }

    /// The fleet state, for read-only views.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }
}

/// Marks a service's failover as running until dropped (also when the request is
/// cancelled half-way).
struct FailoverGuard {
    set: Arc<Mutex<HashSet<String>>>,
    service: String,
}

impl FailoverGuard {
    fn claim(set: &Arc<Mutex<HashSet<String>>>, service: &str) -> Result<FailoverGuard, Error> {
        let mut running = set.lock().unwrap_or_else(|e| e.into_inner());
        if !running.insert(service.to_string()) {
            return Err(Error::Conflict(format!(
                "a failover of `{service}` is already running"
            )));
        }
        Ok(FailoverGuard {
            set: set.clone(),
            service: service.to_string(),
        })
    }
}

impl Drop for FailoverGuard {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.service);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::metrics::Metrics;
    use crate::state::Target;
    use tokio_util::sync::CancellationToken;

    async fn admin() -> (tempfile::TempDir, Admin) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let (writer, _task) = crate::store::spawn_writer(store.clone(), CancellationToken::new());
        let state = State::new(store.clone(), writer, Arc::new(Metrics::new()), &[])
            .await
            .unwrap();
        let watchers = Watchers::new(state.clone(), std::time::Duration::from_secs(1));
        let admin = Admin::new(store, state, watchers, Arc::new(ProxyRegistry::default()));
        (dir, admin)
    }

    fn addr(s: &str) -> NodeAddr {
        s.parse().unwrap()
    }

    fn spec(name: &str) -> NewService {
        NewService {
            name: name.into(),
            sentinels: vec![addr("127.0.0.1:26379"), addr("127.0.0.1:26380")],
            backend_auth: Some(BackendAuth {
                username: Some("pivot".into()),
                password: "backend-secret".into(),
            }),
            policy: None,
        }
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::InvalidField { field, .. } => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn services_are_created_validated_and_audited_without_secrets() {
        let (_d, admin) = admin().await;
        let actor = Actor::new("token:ops");
        let mut live = admin.subscribe();
        let v0 = admin.state().current().version;
        let svc = admin.create_service(&actor, spec("cache")).await.unwrap();
        assert_eq!(svc.sentinels.len(), 2);
        assert!(!svc.decided);
        assert!(admin.state().current().version > v0);
        assert!(matches!(
            admin.create_service(&actor, spec("cache")).await,
            Err(Error::Conflict(_))
        ));

        let bad = |f: fn(&mut NewService)| {
            let mut s = spec("other");
            f(&mut s);
            s
        };
        for (s, field) in [
            (bad(|s| s.name = "has space".into()), "name"),
            (bad(|s| s.sentinels.clear()), "sentinels"),
            (
                bad(|s| s.sentinels.push(addr("127.0.0.1:26379"))),
                "sentinels[2]",
            ),
            (
                bad(|s| s.backend_auth.as_mut().unwrap().password.clear()),
                "backend_auth.password",
            ),
            (
                bad(|s| {
                    s.policy = Some(Policy {
                        rules: vec![CommandRule {
                            command: "a b".into(),
                            target: Target::Deny,
                        }],
                        ..Policy::default()
                    });
                }),
                "policy.rules[0].command",
            ),
        ] {
            assert_eq!(
                field_of(admin.create_service(&actor, s).await.unwrap_err()),
                field
            );
        }
        assert!(admin.service("other").is_err());

        let audit = admin
            .audit(AuditQuery {
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(audit.len(), 1, "{audit:?}");
        assert_eq!(audit[0].action, "service.create");
        assert_eq!(audit[0].actor, "token:ops");
        assert_eq!(audit[0].after["backend_auth"]["username"], "pivot");
        let text = serde_json::to_string(&audit).unwrap();
        assert!(!text.contains("backend-secret"), "{text}");
        match live.recv().await.unwrap() {
            Live::Audit(a) => assert_eq!(a.id, audit[0].id),
            Live::Event(e) => assert_eq!(e.kind, "service-created"),
        }
    }

    #[tokio::test]
    async fn service_updates_and_deletion() {
        let (_d, admin) = admin().await;
        let actor = Actor::new("token:ops");
        admin.create_service(&actor, spec("cache")).await.unwrap();
        let before = admin.service("cache").unwrap();
        // No change: no new version, no audit row.
        let same = admin
            .update_service(
                &actor,
                "cache",
                ServiceUpdate {
                    sentinels: Some(before.sentinels.clone()),
                    ..ServiceUpdate::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(same.config_version, before.config_version);
        let after = admin
            .update_service(
                &actor,
                "cache",
                ServiceUpdate {
                    sentinels: Some(vec![addr("127.0.0.1:26381")]),
                    backend_auth: Some(None),
                },
            )
            .await
            .unwrap();
        assert!(after.config_version > before.config_version);
        assert_eq!(after.sentinels, vec![addr("127.0.0.1:26381")]);
        assert_eq!(after.backend_auth, None);
        assert_eq!(
            field_of(
                admin
                    .update_service(
                        &actor,
                        "cache",
                        ServiceUpdate {
                            sentinels: Some(Vec::new()),
                            ..ServiceUpdate::default()
                        },
                    )
                    .await
                    .unwrap_err()
            ),
            "sentinels"
        );
        assert!(matches!(
            admin
                .update_service(&actor, "nope", ServiceUpdate::default())
                .await,
            Err(Error::UnknownService(_))
        ));
        // The store has what the state has.
        let stored = admin.store.services().await.unwrap();
        assert_eq!(stored[0].sentinels, after.sentinels);
        assert_eq!(stored[0].backend_auth, None);

        admin.delete_service(&actor, "cache", false).await.unwrap();
        assert!(admin.service("cache").is_err());
        assert!(admin.store.services().await.unwrap().is_empty());
        assert!(matches!(
            admin.delete_service(&actor, "cache", false).await,
            Err(Error::UnknownService(_))
        ));
        let actions: Vec<String> = admin
            .audit(AuditQuery {
                service: Some("cache".into()),
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.action)
            .collect();
        assert_eq!(
            actions,
            ["service.delete", "service.update", "service.create"]
        );
    }

    #[tokio::test]
    async fn rules_and_users() {
        let (_d, admin) = admin().await;
        let actor = Actor::new("token:ops");
        admin.create_service(&actor, spec("cache")).await.unwrap();
        let rule = |c: &str, t| CommandRule {
            command: c.into(),
            target: t,
        };
        let (created, v1) = admin
            .put_rule(&actor, "cache", rule("FLUSHALL", Target::Deny))
            .await
            .unwrap();
        assert!(created);
        assert!(v1.is_some());
        let (created, v2) = admin
            .put_rule(&actor, "cache", rule("flushall", Target::Master))
            .await
            .unwrap();
        assert!(!created);
        assert!(v2 > v1);
        assert_eq!(
            admin
                .put_rule(&actor, "cache", rule("flushall", Target::Master))
                .await
                .unwrap(),
            (false, None)
        );
        assert_eq!(
            admin.policy("cache").unwrap().rules,
            [rule("flushall", Target::Master)]
        );
        assert_eq!(
            field_of(
                admin
                    .put_rule(&actor, "cache", rule("", Target::Deny))
                    .await
                    .unwrap_err()
            ),
            "command"
        );
        assert!(matches!(
            admin.delete_rule(&actor, "cache", "get").await,
            Err(Error::NotFound(_))
        ));
        admin
            .delete_rule(&actor, "cache", "FLUSHALL")
            .await
            .unwrap();
        assert!(admin.policy("cache").unwrap().rules.is_empty());

        assert!(
            admin
                .put_user(&actor, "cache", "alice", "pw-1")
                .await
                .unwrap()
                .0
        );
        assert_eq!(
            admin
                .put_user(&actor, "cache", "alice", "pw-1")
                .await
                .unwrap(),
            (false, None)
        );
        let (created, v) = admin
            .put_user(&actor, "cache", "alice", "pw-2")
            .await
            .unwrap();
        assert!(!created && v.is_some());
        assert_eq!(admin.users("cache").unwrap(), ["alice"]);
        assert_eq!(
            field_of(
                admin
                    .put_user(&actor, "cache", "al ice", "x")
                    .await
                    .unwrap_err()
            ),
            "name"
        );
        assert_eq!(
            field_of(
                admin
                    .put_user(&actor, "cache", "bob", "")
                    .await
                    .unwrap_err()
            ),
            "password"
        );
        admin.delete_user(&actor, "cache", "alice").await.unwrap();
        assert!(matches!(
            admin.delete_user(&actor, "cache", "alice").await,
            Err(Error::NotFound(_))
        ));
        let audit = admin
            .audit(AuditQuery {
                actor: Some("token:ops".into()),
                limit: 100,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        let text = serde_json::to_string(&audit).unwrap();
        assert!(!text.contains("pw-1") && !text.contains("pw-2"), "{text}");
        let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "user.delete",
                "user.password",
                "user.create",
                "rule.delete",
                "rule.put",
                "rule.put",
                "service.create"
            ]
        );
        // Paging.
        let older = admin
            .audit(AuditQuery {
                before: Some(audit[2].id),
                limit: 2,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(
            older.iter().map(|a| a.id).collect::<Vec<_>>(),
            [audit[3].id, audit[4].id]
        );
    }

    #[tokio::test]
    async fn failover_needs_a_master_and_runs_once_per_service() {
        let (_d, admin) = admin().await;
        let actor = Actor::new("token:ops");
        admin.create_service(&actor, spec("cache")).await.unwrap();
        // Undecided: no master yet.
        let e = admin
            .failover(&actor, "cache", FailoverOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::Conflict(ref m) if m.contains("no master")),
            "{e:?}"
        );
        assert!(matches!(
            admin
                .failover(&actor, "nope", FailoverOptions::default())
                .await,
            Err(Error::UnknownService(_))
        ));
        let held = FailoverGuard::claim(&admin.failovers, "cache").unwrap();
        assert!(matches!(
            admin.failover(&actor, "cache", FailoverOptions::default()).await,
            Err(Error::Conflict(ref m)) if m.contains("already running")
        ));
        drop(held);
        assert!(FailoverGuard::claim(&admin.failovers, "cache").is_ok());
    }
}
