//! Operations on what operators configure (routing policy, proxy users): each one is
//! written to the store, then published to the proxies as a new config version. The
//! command-line flags, and the REST and gRPC admin APIs, all go through [`Admin`].

use std::sync::Arc;

use crate::error::Error;
use crate::state::{CommandRule, Policy, ProxyUser, State};
use crate::store::Store;

/// Handle for configuration changes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    store: Store,
    state: Arc<State>,
}

impl Admin {
    pub(crate) fn new(store: Store, state: Arc<State>) -> Admin {
        Admin { store, state }
    }

    /// The current policy of `service`.
    pub fn policy(&self, service: &str) -> Result<Policy, Error> {
        self.state
            .current()
            .services
            .get(service)
            .map(|s| s.policy.clone())
            .ok_or_else(|| Error::UnknownService(service.to_string()))
    }

    /// Replaces the policy of `service`; returns the config version that carries it
    /// (`None`: nothing changed).
    pub async fn set_policy(&self, service: &str, policy: Policy) -> Result<Option<u64>, Error> {
        policy.validate().map_err(Error::Invalid)?;
        if !self.store.set_policy(service, &policy).await? {
            return Err(Error::UnknownService(service.to_string()));
        }
        Ok(self
            .state
            .configure(service, "policy", |s| s.policy = policy)
            .await)
    }

    /// Replaces the command rules of `service`.
    pub async fn set_rules(
        &self,
        service: &str,
        rules: Vec<CommandRule>,
    ) -> Result<Option<u64>, Error> {
        let policy = Policy {
            rules,
            ..self.policy(service)?
        };
        self.set_policy(service, policy).await
    }

    /// Creates a proxy user or changes its password.
    pub async fn put_user(
        &self,
        service: &str,
        name: &str,
        password: &str,
    ) -> Result<Option<u64>, Error> {
        let current = self.state.current();
        let svc = current
            .services
            .get(service)
            .ok_or_else(|| Error::UnknownService(service.to_string()))?;
        if svc.users.iter().any(|u| {
            u.name == name && pivot_proto::password::verify(&u.salt, &u.hash, password.as_bytes())
        }) {
            // Same password: keep the stored salt and hash (no new version).
            return Ok(None);
        }
        let user = ProxyUser::new(name, password).map_err(Error::Invalid)?;
        if !self.store.put_user(service, &user).await? {
            return Err(Error::UnknownService(service.to_string()));
        }
        let what = format!("user `{name}` set");
        Ok(self
            .state
            .configure(service, &what, |s| {
                s.users.retain(|u| u.name != user.name);
                s.users.push(user);
                s.users.sort_by(|a, b| a.name.cmp(&b.name));
            })
            .await)
    }

    /// Fails `service` over to a replica without losing an acknowledged write (see
    /// [`crate::failover`]).
    pub async fn failover(
        &self,
        service: &str,
        opts: crate::failover::FailoverOptions,
    ) -> Result<crate::failover::FailoverReport, Error> {
        crate::failover::run(&self.state, service, opts).await
    }

    /// Deletes a proxy user; its connected clients are disconnected by the proxies.
    /// Returns false when there was no such user.
    pub async fn delete_user(&self, service: &str, name: &str) -> Result<bool, Error> {
        if !self.state.current().services.contains_key(service) {
            return Err(Error::UnknownService(service.to_string()));
        }
        if !self.store.delete_user(service, name).await? {
            return Ok(false);
        }
        let what = format!("user `{name}` deleted");
        self.state
            .configure(service, &what, |s| s.users.retain(|u| u.name != name))
            .await;
        Ok(true)
    }
}
