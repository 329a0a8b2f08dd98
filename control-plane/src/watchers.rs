//! The set of running Sentinel watchers, one per service, so that services can be added,
//! changed and removed while the control plane runs.
//!
//! Before [`Watchers::start`] (while the control plane is bound but not yet running) a
//! change only updates the state; `start` then spawns a watcher for every service the state
//! holds. After it, registering a service spawns its watcher at once, changing its
//! Sentinels replaces the watcher (the accepted topology stays published until the new one
//! decides), and removing it cancels the watcher before the service leaves the state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::sentinel::spawn_watcher;
use crate::state::State;
use crate::store::StoredService;

/// Handle on the running watchers. Shared by [`crate::Admin`] and the control plane.
#[derive(Debug)]
pub struct Watchers {
    state: Arc<State>,
    poll_interval: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Set by `start`: where watchers run and what stops them all.
    runtime: Option<(TaskTracker, CancellationToken)>,
    /// Per service, the token that stops its watcher.
    running: HashMap<String, CancellationToken>,
}

impl Watchers {
    /// Watchers polling every `poll_interval`, none running yet.
    pub fn new(state: Arc<State>, poll_interval: Duration) -> Arc<Watchers> {
        Arc::new(Watchers {
            state,
            poll_interval,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns a watcher for each of `services` on `tracker`; all stop when `stop` is
    /// cancelled. Later [`watch`](Self::watch) calls spawn at once.
    pub fn start(&self, services: &[StoredService], tracker: TaskTracker, stop: CancellationToken) {
        self.lock().runtime = Some((tracker, stop));
        for s in services {
            self.watch(s.clone());
        }
    }

    /// Starts watching `service`, replacing a watcher of the same name. Before `start`,
    /// does nothing (`start` picks the service up).
    pub fn watch(&self, service: StoredService) {
        let mut inner = self.lock();
        let Some((tracker, stop)) = inner.runtime.clone() else {
            return;
        };
        let token = stop.child_token();
        if let Some(old) = inner.running.insert(service.name.clone(), token.clone()) {
            old.cancel();
        }
        drop(inner);
        spawn_watcher(
            service,
            self.state.clone(),
            self.poll_interval,
            tracker,
            token,
        );
    }

    /// Stops watching `service` (no-op when not watched).
    pub fn unwatch(&self, service: &str) {
        if let Some(token) = self.lock().running.remove(service) {
            token.cancel();
        }
    }
}
