//! The proxy's own client connections: the registry behind `CLIENT LIST`, `CLIENT INFO`
//! and `CLIENT KILL` (which describe and act on the clients of this proxy, not the proxy's
//! connections to Redis), and the `--max-clients` bound.
//!
//! A connection registers once and deregisters when it ends; what `CLIENT LIST` shows of
//! it (name, database, protocol, mode) is copied here only when it changes, so the
//! per-request path touches nothing but one atomic (the idle clock).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::task::AtomicWaker;

/// What `CLIENT LIST` shows of a client's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Visible {
    /// `CLIENT SETNAME`.
    pub name: Option<Bytes>,
    /// Selected database.
    pub db: u32,
    /// Speaks RESP3.
    pub resp3: bool,
    /// Channels, patterns and shard channels subscribed.
    pub sub: usize,
    /// Patterns subscribed.
    pub psub: usize,
    /// Shard channels subscribed.
    pub ssub: usize,
    /// Inside `MULTI` or after `WATCH`.
    pub multi: bool,
    /// Waiting for a blocking command.
    pub blocked: bool,
    /// The user the client authenticated as; `None`: the default user.
    pub user: Option<Bytes>,
    /// `CLIENT TRACKING ON`.
    pub tracking: bool,
    /// `MONITOR`.
    pub monitor: bool,
    /// `CLIENT NO-EVICT ON`.
    pub no_evict: bool,
}

/// A one-way flag that a connection's task waits on. Polling it is two atomic operations
/// and no lock: it sits in the `select!` of every wait of the connection's reader and
/// writer, which a `CancellationToken` (a mutex per poll, and another in its `Notify`)
/// would make a measurable share of the cost of a request. Only one task may wait on it
/// (it keeps one waker); a connection's reader and writer run in one task.
#[derive(Debug, Default)]
pub struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    /// Raises the flag and wakes the task waiting on it.
    pub fn raise(&self) {
        if !self.raised.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// True once raised.
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Completes once raised.
    pub fn raised(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.is_raised() {
                return std::task::Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // Raised between the check and the registration: its wake may have missed us.
            if self.is_raised() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }
}

/// One client connection, as the registry sees it.
#[derive(Debug)]
pub struct Client {
    /// `CLIENT ID`.
    pub id: u64,
    /// The client's address.
    pub addr: SocketAddr,
    /// The proxy's address it connected to.
    pub laddr: SocketAddr,
    created: Instant,
    /// Nanoseconds since `created` at the last read of requests.
    last_active_ns: AtomicU64,
    /// Raised by `CLIENT KILL` or the output limit; the connection closes at once.
    pub kill: Signal,
    /// Raised when the proxy shuts down: the connection stops reading requests, answers
    /// those it has read, then closes.
    pub stop: Signal,
    visible: Mutex<Visible>,
    /// Reply bytes received for this client and not yet written to it.
    output: AtomicUsize,
    /// `--client-output-limit` (0: none).
    output_limit: usize,
    /// The output limit closed the connection.
    overflowed: AtomicBool,
    /// Where the replies to its requests land.
    pub inbox: crate::inbox::Inbox,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: a panic elsewhere cannot leave it half-updated in a harmful way.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// Counts reply bytes held for this client. Past the output limit the client is
    /// disconnected, as Redis does past a hard `client-output-buffer-limit`: a client that
    /// sends requests and does not read the replies must not make the proxy buffer them
    /// without bound.
    pub fn add_output(&self, n: usize) {
        let total = self.output.fetch_add(n, Ordering::AcqRel) + n;
        if self.output_limit > 0
            && total > self.output_limit
            && !self.overflowed.swap(true, Ordering::AcqRel)
        {
            tracing::warn!(client = self.id, addr = %self.addr, bytes = total, limit = self.output_limit, "closing a client over its output limit");
            self.kill.raise();
        }
    }

    /// Reply bytes written to the client.
    pub fn sub_output(&self, n: usize) {
        // Saturating: a reply counted by one path is never written twice, but be safe.
        let _ = self
            .output
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// True when the output limit closed this client.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Marks activity (for `idle=`): requests were just read.
    pub fn touch(&self) {
        let ns = u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_active_ns.store(ns, Ordering::Relaxed);
    }

    /// When requests were last read from this client (see [`Client::touch`]): the start of
    /// each forwarded request's latency, so that a batch of requests costs one clock read.
    pub fn last_read(&self) -> Instant {
        self.created + std::time::Duration::from_nanos(self.last_active_ns.load(Ordering::Relaxed))
    }

    /// Replaces what `CLIENT LIST` shows.
    pub fn set_visible(&self, v: Visible) {
        *lock(&self.visible) = v;
    }

    /// What `CLIENT LIST` shows.
    pub fn visible(&self) -> Visible {
        lock(&self.visible).clone()
    }

    /// One `CLIENT LIST` line (the fields Redis prints that mean something for a proxy
    /// client, in Redis's order and format).
    pub fn line(&self) -> String {
        let v = self.visible();
        let age = self.created.elapsed().as_secs();
        let idle_ms = u64::try_from(self.last_read().elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut flags = String::new();
        if v.sub + v.psub + v.ssub > 0 {
            flags.push('P');
        }
        if v.multi {
            flags.push('x');
        }
        if v.blocked {
            flags.push('b');
        }
        if v.tracking {
            flags.push('t');
        }
        if v.monitor {
            flags.push('O');
        }
        if v.no_evict {
            flags.push('e');
        }
        if flags.is_empty() {
            flags.push('N');
        }
        let name = v
            .name
            .as_ref()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        let mut out = String::with_capacity(160);
        let _ = write!(
            out,
            "id={} addr={} laddr={} name={name} age={age} idle={} flags={flags} db={} sub={} psub={} ssub={} multi={} omem={} user={} resp={}",
            self.id,
            self.addr,
            self.laddr,
            idle_ms / 1000,
            v.db,
            v.sub,
            v.psub,
            v.ssub,
            if v.multi { 0 } else { -1 },
            self.output.load(Ordering::Relaxed),
            v.user
                .as_ref()
                .map_or(std::borrow::Cow::Borrowed("default"), |u| {
                    String::from_utf8_lossy(u)
                }),
            if v.resp3 { 3 } else { 2 },
        );
        out
    }

    /// `CLIENT KILL TYPE` category.
    pub fn is_pubsub(&self) -> bool {
        let v = lock(&self.visible);
        v.sub + v.psub + v.ssub > 0
    }
}

/// Every client connection of this proxy (all workers).
#[derive(Debug)]
pub struct Registry {
    clients: Mutex<HashMap<u64, Arc<Client>>>,
    max: usize,
    output_limit: usize,
}

impl Registry {
    /// A registry admitting at most `max` clients, each holding at most `output_limit`
    /// reply bytes not yet written (0: no limit).
    pub fn new(max: usize, output_limit: usize) -> Self {
        Registry {
            clients: Mutex::new(HashMap::new()),
            max,
            output_limit,
        }
    }

    /// Registers a new connection; `None` when `--max-clients` are connected already.
    pub fn register(&self, id: u64, addr: SocketAddr, laddr: SocketAddr) -> Option<Arc<Client>> {
        let mut clients = lock(&self.clients);
        if clients.len() >= self.max {
            return None;
        }
        let c = Arc::new(Client {
            id,
            addr,
            laddr,
            created: Instant::now(),
            last_active_ns: AtomicU64::new(0),
            kill: Signal::default(),
            stop: Signal::default(),
            visible: Mutex::new(Visible::default()),
            output: AtomicUsize::new(0),
            output_limit: self.output_limit,
            overflowed: AtomicBool::new(false),
            inbox: crate::inbox::Inbox::default(),
        });
        clients.insert(id, c.clone());
        Some(c)
    }

    /// Removes a connection that ended.
    pub fn remove(&self, id: u64) {
        lock(&self.clients).remove(&id);
    }

    /// Every client, by id.
    pub fn list(&self) -> Vec<Arc<Client>> {
        let mut v: Vec<Arc<Client>> = lock(&self.clients).values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Closes every client authenticated as a user that is not in `users`; returns how
    /// many.
    pub fn kill_users_not_in<V>(&self, users: &HashMap<Box<[u8]>, V>) -> usize {
        let mut killed = 0;
        for c in self.list() {
            let gone = lock(&c.visible)
                .user
                .as_ref()
                .is_some_and(|u| !users.contains_key(u.as_ref()));
            if gone {
                c.kill.raise();
                killed += 1;
            }
        }
        killed
    }

    /// Tells every client connected now to stop reading (the proxy is shutting down).
    pub fn stop_all(&self) {
        for c in lock(&self.clients).values() {
            c.stop.raise();
        }
    }

    /// Clients connected now.
    pub fn len(&self) -> usize {
        lock(&self.clients).len()
    }

    /// True when no client is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_listed_in_redis_format() {
        let r = Registry::new(2, 100);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let l: SocketAddr = "127.0.0.1:6379".parse().unwrap();
        let c1 = r.register(1, a, l).unwrap();
        let _c2 = r.register(2, a, l).unwrap();
        assert!(r.register(3, a, l).is_none(), "max clients");
        c1.set_visible(Visible {
            name: Some(Bytes::from_static(b"app")),
            db: 3,
            sub: 2,
            ..Visible::default()
        });
        let line = c1.line();
        assert!(
            line.starts_with("id=1 addr=127.0.0.1:5000 laddr=127.0.0.1:6379 name=app age=0 idle=0 flags=P db=3 sub=2"),
            "{line}"
        );
        assert!(c1.is_pubsub());
        c1.add_output(60);
        assert!(!c1.kill.is_raised());
        c1.sub_output(60);
        c1.add_output(90);
        assert!(!c1.kill.is_raised());
        c1.add_output(11);
        assert!(c1.kill.is_raised() && c1.overflowed());
        r.remove(2);
        assert_eq!(r.list().iter().map(|c| c.id).collect::<Vec<_>>(), vec![1]);
        assert!(r.register(4, a, l).is_some());
    }
}
