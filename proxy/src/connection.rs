//! One client connection.
//!
//! The reader half reads whatever has arrived, splits it into complete frames (zero copy:
//! each frame is a `Bytes` slice of the read buffer), classifies and routes each, and hands
//! it to the chosen backend connection together with a reply slot; the slots go into this
//! client's FIFO in request order. The writer half drains the FIFO in order, so a pipeline
//! spread over the master and replicas still answers in order, and coalesces every reply
//! that is ready into one write.
//!
//! Most commands go over the worker's shared, multiplexed connections, chosen by the
//! session's database and protocol. State that a shared connection cannot carry pins the
//! client to a *dedicated* connection for as long as it lasts:
//!
//! - a transaction, from `MULTI` or `WATCH` until `EXEC`, `DISCARD` or `UNWATCH` (on the
//!   master); every command in between goes to that connection;
//! - a blocking command (`BLPOP`, `XREAD ... BLOCK`, ...) until it has answered, on the node
//!   routing picks (the master when it writes); commands pipelined behind it follow it there,
//!   so they run after it as they would on Redis.
//!
//! Afterwards the connection goes back to the pool for the next client; a client that leaves
//! in the middle gets its connection closed (which is how Redis learns to unblock it or to
//! discard its transaction).
//!
//! Bounds: the FIFO holds at most `max_pipeline` slots, counting those the writer has taken
//! and not yet answered (plus what the last read brought; see `queue`): a client further
//! ahead stops being read. A request frame may not exceed `max_request_bytes`.

use std::collections::{HashSet, VecDeque};
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::backend::{Backend, BackendError, PoolKey, Reply, ReplyTo, Request, reserve_with};
use crate::clients::{Client, Visible};
use crate::command::{Class, LastLookup, Lookup, Lower, Special};
use crate::inbox::{Replies, Ticket};
use crate::metrics::{CommandRun, LatencyRun, Metrics, RetryReason, Target};
use crate::queue::{Closed, Queue};
use crate::reply;
use crate::resp::{self, FrameError, Mode, Scanner};
use crate::routing::{ClientState, NodeAddr, Route, RoutingTable, RuleTarget, route, rule_for};
use crate::server::Worker;

/// One entry of a client's reply FIFO.
enum Slot {
    /// A reply the proxy produced itself.
    Ready(Bytes),
    /// A reply a backend will produce.
    Pending {
        /// The reply's ticket in the client's inbox (see `inbox`).
        seq: u64,
        started: Instant,
        target: Target,
        /// The reply comes from this client's subscriber connection, whose messages the
        /// writer must keep taking while it waits (they are ahead of the reply there).
        pubsub: bool,
        /// What to do with the reply before the client gets it.
        then: Option<Box<Then>>,
        /// `CLIENT REPLY OFF|SKIP`: wait for the reply (order, accounting) but don't write it.
        silent: bool,
        /// How to send it again if the reply says it did not run (or, for a read, failed).
        retry: Option<Retry>,
    },
    /// Write everything before this, then close the connection (QUIT, protocol error).
    Close,
    /// From now on, also write the Pub/Sub messages (or RESP3 pushes) that come on this
    /// channel: sent once, before the reply of the command that first needs it.
    Messages(mpsc::Receiver<Bytes>),
}

/// Attempts per request, the first included, when replies say it did not run.
const MAX_ATTEMPTS: usize = 4;

/// A request over a shared connection that may have to be sent again (I2, I3, I5). Kept
/// with its reply slot (two reference counts, no copy) until the reply shows whether:
///
/// - `-READONLY`, `-LOADING`, `-MASTERDOWN`: the node did not run it (it is a replica now,
///   loading, or cut off from its master): a topology signal. It goes to the node the
///   routing table names once that is another node (or the table changed), within
///   `--failover-hold`.
/// - the request never reached its node ([`BackendError::NotSent`]): the same.
/// - a read whose node failed after receiving it: reads are safe to run twice, so it goes to
///   another healthy node. A write in that case may have run, and is never sent again (I4).
///
/// The retried request runs after anything the client pipelined behind it to *other*
/// nodes; requests behind it to the same failing node fail the same way and are retried in
/// order after it.
struct Retry {
    frame: Bytes,
    /// A read (class Read or Neutral).
    read: bool,
    /// Where it went first.
    backend: Backend,
}

impl Retry {
    /// Why `reply` calls for sending the request again, if it does.
    fn reason(&self, reply: &Option<Reply>) -> Option<RetryReason> {
        match reply {
            Some(Ok(b)) if b.first() == Some(&b'-') => {
                if b.starts_with(b"-READONLY") {
                    Some(RetryReason::Readonly)
                } else if b.starts_with(b"-LOADING") {
                    Some(RetryReason::Loading)
                } else if b.starts_with(b"-MASTERDOWN") {
                    Some(RetryReason::Masterdown)
                } else {
                    None
                }
            }
            Some(Err(e @ BackendError::NotSent { .. })) if !e.is_refusal() => {
                Some(RetryReason::NotSent)
            }
            Some(Err(BackendError::Lost { .. })) if self.read => Some(RetryReason::ReadFailed),
            _ => None,
        }
    }

    /// The reply to give the client: `first`, or what sending the request again brought.
    async fn resolve(this: Option<Retry>, first: Option<Reply>, worker: &Worker) -> Option<Reply> {
        let Some(this) = this else { return first };
        if this.reason(&first).is_none() {
            return first;
        }
        this.run(first, worker).await
    }

    async fn run(self, first: Option<Reply>, worker: &Worker) -> Option<Reply> {
        let shared = &worker.shared;
        let hold = shared
            .table
            .load()
            .failover_hold
            .unwrap_or(shared.limits.failover_hold);
        let deadline = tokio::time::Instant::now() + hold;
        let mut applied = shared.applied.subscribe();
        let mut reply = first;
        let mut failed = self.backend.addr().clone();
        let mut failed_version = shared.table.load().version;
        let key = self.backend.key();
        for _ in 1..MAX_ATTEMPTS {
            let Some(reason) = self.reason(&reply) else {
                return reply;
            };
            shared.metrics.retry(reason);
            if matches!(reason, RetryReason::ReadFailed | RetryReason::NotSent) {
                // A replica that failed a read leaves the read pool for a while.
                crate::server::eject(shared, &failed);
            }
            // Wait for a node to send it to.
            let backend = loop {
                let table = shared.table.load_full();
                let moved_on = table.version != failed_version;
                let candidate = if self.read {
                    table
                        .readable
                        .iter()
                        .chain(table.master.iter())
                        .find(|a| **a != failed || moved_on)
                } else {
                    table
                        .master
                        .as_ref()
                        .filter(|m| **m != failed || moved_on || reason == RetryReason::NotSent)
                };
                if let Some(addr) = candidate {
                    let b = worker.pool.get(&PoolKey {
                        addr: addr.clone(),
                        db: key.db,
                        resp3: key.resp3,
                    });
                    if b.is_alive() && !b.stalled(shared.limits.backend_stall) {
                        failed_version = table.version;
                        break b;
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    return self.exhausted(reply, worker);
                }
                let tick =
                    (shared.limits.backend_stall / 10).max(std::time::Duration::from_millis(2));
                tokio::select! {
                    _ = applied.changed() => {}
                    _ = tokio::time::sleep(tick) => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            };
            failed = backend.addr().clone();
            let (tx, rx) = oneshot::channel();
            backend.send(Request::new(self.frame.clone(), tx)).await;
            reply = rx.await.ok();
        }
        match self.reason(&reply) {
            None => reply,
            Some(_) => self.exhausted(reply, worker),
        }
    }

    /// Out of attempts or time: a write that did not run gets `-TRYAGAIN` (it may be sent
    /// again safely); anything else keeps its last reply.
    fn exhausted(&self, last: Option<Reply>, worker: &Worker) -> Option<Reply> {
        worker.shared.metrics.retries_exhausted.inc();
        let ran_nowhere = matches!(
            self.reason(&last),
            Some(
                RetryReason::Readonly
                    | RetryReason::Loading
                    | RetryReason::Masterdown
                    | RetryReason::NotSent
            )
        );
        if ran_nowhere {
            let table = worker.shared.table.load();
            let last_error = match &last {
                Some(Ok(b)) => String::from_utf8_lossy(b.strip_prefix(b"-").unwrap_or(b))
                    .trim_end()
                    .to_string(),
                Some(Err(e)) => e.to_string(),
                None => "no reply".into(),
            };
            return Some(Ok(reply::error(&format!(
                "TRYAGAIN pivot: no node of service '{}' could run the command within {:?} (a failover is in progress or the nodes are unreachable); it did not run. Last error: {last_error}",
                table.service,
                table
                    .failover_hold
                    .unwrap_or(worker.shared.limits.failover_hold)
            ))));
        }
        last
    }
}

/// What happens to a reply before the client gets it.
enum Then {
    /// A second chance for a request whose first node could not run it: `EVALSHA` on a
    /// replica that doesn't have the script answers `NOSCRIPT` (nothing ran), and the
    /// master, where scripts are loaded, runs it.
    NoScriptOnMaster { backend: Backend, frame: Bytes },
    /// `INFO`: the master's reply with this `# Proxy` section appended.
    ProxySection(Bytes),
    /// `write_ack = replicas(N)`: a successful write's reply waits until N replicas of the
    /// master it ran on have the write (see `ack.rs`).
    AwaitReplicas(u32, NodeAddr),
}

impl Then {
    /// The reply to give the client.
    async fn resolve(
        this: Option<Box<Then>>,
        first: Option<Reply>,
        worker: &Worker,
    ) -> Option<Reply> {
        let Some(this) = this else { return first };
        match (*this, first) {
            (Then::AwaitReplicas(n, master), Some(Ok(bytes))) if !bytes.starts_with(b"-") => {
                let timeout = worker.shared.limits.write_ack_timeout;
                match worker.acker.wait(worker, n, timeout, &master).await {
                    Ok(()) => Some(Ok(bytes)),
                    Err(e) => {
                        worker.shared.metrics.write_ack_failures.inc();
                        Some(Ok(reply::error(&e)))
                    }
                }
            }
            (Then::NoScriptOnMaster { backend, frame }, Some(Ok(bytes)))
                if bytes.starts_with(b"-NOSCRIPT") =>
            {
                let (tx, rx) = oneshot::channel();
                backend.send(Request::new(frame, tx)).await;
                rx.await.ok()
            }
            (Then::ProxySection(section), Some(Ok(bytes))) => Some(Ok(reply::append_info_section(
                &bytes, &section,
            )
            .unwrap_or(bytes))),
            (_, first) => first,
        }
    }
}

/// Why a client holds a dedicated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PinKind {
    /// `WATCH` and/or `MULTI` seen, no `EXEC`/`DISCARD`/`UNWATCH` yet.
    Transaction {
        /// Inside `MULTI`.
        in_multi: bool,
        /// A command was refused inside `MULTI`: `EXEC` must answer `EXECABORT`.
        aborted: bool,
    },
    /// A blocking command may still be waiting.
    Blocking,
    /// Subscribed (channels, patterns or shard channels): a subscriber connection whose
    /// messages go straight to the client's writer.
    PubSub,
    /// `CLIENT TRACKING ON`: every command goes to one master connection, whose
    /// invalidation messages go straight to the client's writer.
    Tracking,
    /// `MONITOR`: the master's command stream goes straight to the client's writer.
    Monitor,
}

/// The client's subscriptions, as it asked for them: how many confirmations an
/// (un)subscribe brings, and when subscriber mode ends, follow from it.
#[derive(Debug, Default)]
struct Subscriptions {
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    shard: HashSet<Bytes>,
}

impl Subscriptions {
    fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.patterns.is_empty() && self.shard.is_empty()
    }

    fn family(&mut self, lower: &[u8]) -> Option<(&mut HashSet<Bytes>, bool)> {
        Some(match lower {
            b"subscribe" => (&mut self.channels, true),
            b"unsubscribe" => (&mut self.channels, false),
            b"psubscribe" => (&mut self.patterns, true),
            b"punsubscribe" => (&mut self.patterns, false),
            b"ssubscribe" => (&mut self.shard, true),
            b"sunsubscribe" => (&mut self.shard, false),
            _ => return None,
        })
    }

    /// Applies a (un)subscribe command; returns the number of confirmations Redis sends:
    /// one per argument, or for an unsubscribe-all one per subscription it drops (one if
    /// there is none).
    fn apply(&mut self, lower: &[u8], args: &[&[u8]]) -> usize {
        let Some((set, subscribe)) = self.family(lower) else {
            return 1;
        };
        if subscribe {
            set.extend(args.iter().map(|a| Bytes::copy_from_slice(a)));
            args.len().max(1)
        } else if args.is_empty() {
            let n = set.len().max(1);
            set.clear();
            n
        } else {
            for a in args {
                set.remove(*a);
            }
            args.len()
        }
    }
}

struct Pinned {
    backend: Backend,
    kind: PinKind,
}

/// Per-connection state.
struct Session {
    id: u64,
    name: Option<Bytes>,
    route: ClientState,
    /// Selected database.
    db: u32,
    /// The client said `HELLO 3`.
    resp3: bool,
    pinned: Option<Pinned>,
    /// Subscriptions while in subscriber mode.
    subs: Subscriptions,
    /// Pub/Sub messages for this client's writer (given to its subscriber connection).
    /// Made when first needed (see [`Session::message_sink`]): a channel is a kilobyte, and
    /// most connections never subscribe.
    messages: Option<mpsc::Sender<Bytes>>,
    /// The receiving end of `messages`, just made, for the read loop to hand to the writer
    /// (as [`Slot::Messages`]) before the reply of the command that made it.
    new_messages: Option<mpsc::Receiver<Bytes>>,
    /// This connection in the proxy's client registry.
    client: Arc<Client>,
    /// Passed `AUTH` (or no authentication is configured: then every client is the
    /// default user).
    authenticated: bool,
    /// The user it authenticated as; `None`: the default user without authentication.
    user: Option<Bytes>,
    /// Routing table version at which `user` was last checked to still exist.
    user_checked: u64,
    /// `CLIENT REPLY OFF`.
    reply_off: bool,
    /// `CLIENT REPLY SKIP`: the next command's reply is not sent.
    skip_next: bool,
    /// `CLIENT NO-EVICT ON` (shown in `CLIENT LIST`; the proxy evicts no client by memory).
    no_evict: bool,
}

impl Session {
    /// Cheap to compare: changes whenever what `CLIENT LIST` shows may have changed.
    fn signature(&self) -> (u32, bool, u8, [usize; 3], usize, usize, bool) {
        let kind = match self.pinned.as_ref().map(|p| p.kind) {
            None => 0,
            Some(PinKind::Transaction { .. }) => 1,
            Some(PinKind::Blocking) => 2,
            Some(PinKind::PubSub) => 3,
            Some(PinKind::Tracking) => 4,
            Some(PinKind::Monitor) => 5,
        };
        (
            self.db,
            self.resp3,
            kind,
            [
                self.subs.channels.len(),
                self.subs.patterns.len(),
                self.subs.shard.len(),
            ],
            self.name.as_ref().map_or(0, |n| n.as_ptr() as usize),
            self.user.as_ref().map_or(0, |n| n.as_ptr() as usize),
            self.no_evict,
        )
    }

    /// What `CLIENT LIST` shows of this session.
    fn visible(&self) -> Visible {
        let kind = self.pinned.as_ref().map(|p| p.kind);
        Visible {
            name: self.name.clone(),
            db: self.db,
            resp3: self.resp3,
            sub: self.subs.channels.len(),
            psub: self.subs.patterns.len(),
            ssub: self.subs.shard.len(),
            multi: matches!(kind, Some(PinKind::Transaction { .. })),
            blocked: kind == Some(PinKind::Blocking),
            user: self.user.clone(),
            tracking: kind == Some(PinKind::Tracking),
            monitor: kind == Some(PinKind::Monitor),
            no_evict: self.no_evict,
        }
    }

    /// Where this client's Pub/Sub messages go, made on first use.
    fn message_sink(&mut self) -> mpsc::Sender<Bytes> {
        if let Some(tx) = &self.messages {
            return tx.clone();
        }
        // Bounded: a subscriber that doesn't read stops its subscriber connection's reader,
        // and Redis's own output buffer limit for Pub/Sub clients cuts it off.
        let (tx, rx) = mpsc::channel(256);
        self.messages = Some(tx.clone());
        self.new_messages = Some(rx);
        tx
    }

    fn key(&self, addr: &NodeAddr) -> PoolKey {
        PoolKey {
            addr: addr.clone(),
            db: self.db,
            resp3: self.resp3,
        }
    }
}

/// Shared backend handles resolved for one routing table version, database and protocol,
/// so that the pool's map is consulted once per change rather than once per request.
struct Resolved {
    version: u64,
    generation: u64,
    db: u32,
    resp3: bool,
    master: Option<Backend>,
    replicas: Vec<Backend>,
}

impl Resolved {
    fn refresh(&mut self, table: &RoutingTable, session: &Session, worker: &Worker) {
        if self.version == table.version
            && self.generation == table.generation
            && self.version != 0
            && self.db == session.db
            && self.resp3 == session.resp3
        {
            return;
        }
        self.version = table.version;
        self.generation = table.generation;
        self.db = session.db;
        self.resp3 = session.resp3;
        self.master = table
            .master
            .as_ref()
            .map(|m| worker.pool.get(&session.key(m)));
        self.replicas = table
            .readable
            .iter()
            .map(|r| worker.pool.get(&session.key(r)))
            .collect();
    }

    fn backend(&mut self, route: Route, worker: &Worker) -> Option<&Backend> {
        let slot = match route {
            Route::Master => self.master.as_mut()?,
            Route::Replica(i) => self.replicas.get_mut(i)?,
            Route::NoMaster => return None,
        };
        if !slot.is_alive() {
            *slot = worker.pool.get(slot.key());
        }
        Some(slot)
    }
}

/// Serves one client until it disconnects, sends `QUIT`, breaks the protocol, or the proxy
/// shuts down (then requests already read are answered before the connection closes).
pub(crate) async fn serve(mut stream: TcpStream, worker: Arc<Worker>, shutdown: CancellationToken) {
    let _ = stream.set_nodelay(true);
    crate::server::set_keepalive(&stream, worker.shared.limits.client_tcp_keepalive);
    let id = worker.shared.next_client_id.fetch_add(1, Ordering::Relaxed);
    let (Ok(addr), Ok(laddr)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let Some(client) = worker.shared.clients.register(id, addr, laddr) else {
        // As Redis answers past `maxclients`.
        worker.shared.metrics.rejected.inc();
        let _ = stream
            .write_all(b"-ERR max number of clients reached\r\n")
            .await;
        lingering_close(stream).await;
        return;
    };
    // The worker raises `stop` on every registered client when the proxy shuts down; one
    // registered after that sees the token here.
    if shutdown.is_cancelled() {
        client.stop.raise();
    }
    let metrics = worker.shared.metrics.clone();
    metrics.client_connections.inc();
    metrics.client_connections_total.inc();
    let (rd, wr) = stream.into_split();
    let fifo = Queue::new(worker.shared.limits.max_pipeline);
    let session = Session {
        id,
        name: None,
        route: ClientState::default(),
        db: 0,
        resp3: false,
        pinned: None,
        subs: Subscriptions::default(),
        messages: None,
        new_messages: None,
        client: client.clone(),
        // As Redis: a client connected while no password is required stays authenticated.
        authenticated: !worker.shared.table.load().auth_required(),
        user: None,
        user_checked: 0,
        reply_off: false,
        skip_next: false,
        no_evict: false,
    };
    // When the reader stops, it finishes the FIFO: the writer answers what is queued and
    // exits. When the writer stops, it closes the FIFO: the reader's next hand-over fails.
    tokio::join!(
        read_requests(rd, &fifo, &worker, session),
        write_replies(wr, &fifo, &worker, client.clone())
    );
    worker.shared.clients.remove(id);
    metrics.client_connections.dec();
    debug!("client disconnected");
}

/// Half-closes, then reads and drops what the client still sends (at most 64 KiB, for at
/// most 1 s) before closing: closing a socket with unread input makes the kernel send a
/// reset, which can destroy the reply the client has not read yet.
async fn lingering_close(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    let drain = async {
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

/// What one request led to.
enum Step {
    /// Queue this slot.
    Slot(Slot),
    /// Answer this, then close the connection.
    Close(Bytes),
    /// Nothing to answer (`CLIENT REPLY OFF|SKIP`).
    Silent,
}

/// Largest request accepted before `AUTH` when authentication is required: a client that
/// has not proven who it is cannot make the proxy buffer much (Redis limits such clients
/// to 10 arguments and 16 KiB bulks).
const UNAUTHENTICATED_MAX_REQUEST: usize = 64 * 1024;

async fn read_requests(
    mut rd: OwnedReadHalf,
    fifo: &Queue<Slot>,
    worker: &Worker,
    mut session: Session,
) {
    let mut outbox = Outbox::new(&worker.shared.metrics);
    read_loop(&mut rd, fifo, &mut outbox, worker, &mut session).await;
    // What the last read produced (replies up to a protocol error, say) still goes out.
    let _ = outbox.hand_over(fifo);
    fifo.finish();
    // Whatever ends the connection ends its dedicated connection's state too.
    if let Some(p) = session.pinned.take() {
        match p.kind {
            PinKind::Blocking if p.backend.outstanding() > 0 => p.backend.abort(),
            PinKind::Blocking => worker.pool.release(p.backend),
            PinKind::Transaction { .. } => p.backend.retire(),
            PinKind::PubSub | PinKind::Tracking | PinKind::Monitor => p.backend.abort(),
        }
    }
}

/// What one read produced, handed over at once when the read is done (or before anything
/// waits): the requests for each backend connection as one batch each, the reply slots to
/// the writer as one batch. One lock and one wake-up per read and queue, not per request.
struct Outbox<'a> {
    slots: Vec<Slot>,
    /// Requests for each backend connection (usually one), in order.
    requests: Vec<(Backend, Vec<Request>)>,
    /// Emptied request batches, kept for their capacity.
    spare: Vec<Vec<Request>>,
    /// Connections whose queue was full after the last hand-over.
    full: Vec<Backend>,
    /// The commands staged, counted at each hand-over.
    commands: CommandRun<'a>,
}

impl<'a> Outbox<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        Outbox {
            slots: Vec::new(),
            requests: Vec::new(),
            spare: Vec::new(),
            full: Vec::new(),
            commands: CommandRun::commands(metrics),
        }
    }

    /// Stages a reply slot, silenced under `CLIENT REPLY OFF` or a `SKIP` (`skip`).
    fn slot(&mut self, mut slot: Slot, session: &Session, skip: bool) {
        if skip || session.reply_off {
            match &mut slot {
                Slot::Ready(_) => return,
                Slot::Pending { silent, .. } => *silent = true,
                Slot::Close | Slot::Messages(_) => {}
            }
        }
        self.slots.push(slot);
    }

    /// Stages a request for `backend`.
    fn request(&mut self, backend: &Backend, req: Request) {
        if let Some((_, reqs)) = self.requests.iter_mut().find(|(b, _)| b.same(backend)) {
            reqs.push(req);
            return;
        }
        let mut reqs = self.spare.pop().unwrap_or_default();
        reqs.push(req);
        self.requests.push((backend.clone(), reqs));
    }

    /// Hands everything staged over: requests first, then their slots. `Err` when the
    /// writer is gone (the client can no longer be answered); `Ok(true)` when a queue is now
    /// full, and the reader must [`Outbox::wait`] before it reads more.
    fn hand_over(&mut self, fifo: &Queue<Slot>) -> Result<bool, Closed> {
        self.commands.flush();
        for (backend, mut reqs) in self.requests.drain(..) {
            if backend.send_batch(&mut reqs) {
                self.full.push(backend);
            }
            if self.spare.len() < 4 && reqs.capacity() <= crate::queue::KEEP_CAPACITY {
                self.spare.push(reqs);
            }
        }
        let fifo_full = fifo.push(&mut self.slots)?;
        if self.slots.capacity() > crate::queue::KEEP_CAPACITY {
            self.slots = Vec::new();
        }
        Ok(fifo_full || !self.full.is_empty())
    }

    /// Waits for room in the queues that were full: a client further ahead than their
    /// bounds is not read until the writer (or the backend connection) catches up.
    async fn wait(&mut self, fifo: &Queue<Slot>) {
        for backend in self.full.drain(..) {
            backend.room().await;
        }
        fifo.room().await;
    }

    /// Hands everything over and waits for room. False when the writer is gone.
    async fn flush(&mut self, fifo: &Queue<Slot>) -> bool {
        match self.hand_over(fifo) {
            Err(Closed) => false,
            Ok(false) => true,
            Ok(true) => {
                Box::pin(self.wait(fifo)).await;
                true
            }
        }
    }
}

async fn read_loop(
    rd: &mut OwnedReadHalf,
    fifo: &Queue<Slot>,
    outbox: &mut Outbox<'_>,
    worker: &Worker,
    session: &mut Session,
) {
    let shared = &worker.shared;
    // No buffer while idle: a read with nothing pending lands in the worker's arena (room
    // for twice the last read, 1 KiB to 64 KiB, see `arena`); the buffer is dropped when
    // empty, and a partial frame is moved out of the arena. An idle connection holds next to
    // no memory.
    let mut buf = BytesMut::new();
    let mut read_hint: usize = 1024;
    let mut scanner = Scanner::new(Mode::Request, shared.limits.max_request_bytes);
    let mut last_lookup = LastLookup::default();
    let mut resolved = Resolved {
        version: u64::MAX,
        generation: 0,
        db: 0,
        resp3: false,
        master: None,
        replicas: Vec::new(),
    };
    // `Signal`s, not cancellation tokens: see `clients::Signal`.
    let client = session.client.clone();
    let stopped = client.stop.raised();
    let killed = client.kill.raised();
    tokio::pin!(stopped, killed);
    let idle_timeout = shared.limits.idle_timeout;
    // Armed for `--timeout` past the last read, moved only when it fires (see `idle`).
    let idle = sleep_or_never(idle_timeout);
    tokio::pin!(idle);
    loop {
        if buf.is_empty() {
            // Frames split off earlier keep their own reference to the old allocation.
            buf = BytesMut::new();
        }
        let ready = tokio::select! {
            biased;
            _ = &mut stopped => return,
            _ = &mut killed => return,
            r = rd.readable() => r,
            _ = &mut idle => {
                let limit = idle_timeout.unwrap_or_default();
                let since = session.client.last_read().elapsed();
                // Redis never times out a client in a transaction, blocked, or subscribed.
                if session.pinned.is_none() && since >= limit {
                    debug!("closing an idle client");
                    return;
                }
                let wait = if since >= limit { limit } else { limit - since };
                idle.set(sleep_or_never(Some(wait)));
                continue;
            }
        };
        if ready.is_err() {
            return;
        }
        // `read_buf` rather than `try_read_buf`: on a short read it clears the socket's
        // readiness, so the next `readable()` waits for the kernel instead of returning at
        // once into a read that fails with EAGAIN (one wasted syscall per request at P1).
        // Polled once: readiness can be stale, and then the read must not wait here,
        // outside the `select!` above.
        let from_arena = buf.is_empty();
        let read = if from_arena {
            crate::arena::read(read_hint, |a| rd.read_buf(a).now_or_never()).map(|r| {
                r.map(|(n, b)| {
                    buf = b;
                    n
                })
            })
        } else {
            // The rest of a frame: into the connection's own buffer, sized for the frame.
            reserve_with(&mut buf, scanner.need(), read_hint);
            rd.read_buf(&mut buf).now_or_never()
        };
        match read {
            None => continue,
            Some(Ok(0)) => return,
            // Room for twice what came last time: a client that pipelines gets larger
            // reads, one that sends a command at a time a small share of the arena.
            Some(Ok(n)) => read_hint = (n * 2).clamp(1024, 64 * 1024),
            Some(Err(_)) => return,
        }
        session.client.touch();
        let mut master_ok: Option<bool> = None;
        // One routing snapshot for the whole batch (renewed if a request had to wait for a
        // new one, see `hold_for_master`).
        let mut table = shared.table.load_full();
        let commands = shared.commands.load_full();
        if session.user_checked != table.version
            && let Some(user) = &session.user
        {
            session.user_checked = table.version;
            if !table.users.contains_key(user.as_ref()) {
                // As Redis does for the clients of a deleted user.
                debug!("the client's user was deleted; closing");
                return;
            }
        }
        loop {
            scanner.set_max_frame(if table.auth_required() && !session.authenticated {
                UNAUTHENTICATED_MAX_REQUEST.min(shared.limits.max_request_bytes)
            } else {
                shared.limits.max_request_bytes
            });
            let frame = if !scanner.in_frame() && buf.first().is_some_and(|b| *b != b'*') {
                match resp::scan_inline(&buf) {
                    Ok(Some(inline)) => {
                        buf.advance(inline.consumed);
                        if inline.request.is_empty() {
                            continue;
                        }
                        let bytes = Bytes::from(inline.request);
                        match Scanner::new(Mode::Request, usize::MAX).scan(&bytes) {
                            Ok(Some(info)) => (info, bytes),
                            // We built it: only a bug gets here, and it must not be silent.
                            Ok(None) => {
                                let e = FrameError::Protocol("incomplete inline request".into());
                                return protocol_error(outbox, worker, &e);
                            }
                            Err(e) => return protocol_error(outbox, worker, &e),
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return protocol_error(outbox, worker, &e),
                }
            } else {
                match scanner.scan(&buf) {
                    Ok(Some(info)) => (info, buf.split_to(info.len).freeze()),
                    Ok(None) => break,
                    Err(e) => return protocol_error(outbox, worker, &e),
                }
            };
            let (info, bytes) = frame;
            if info.argc == 0 {
                // Redis ignores an empty multibulk.
                continue;
            }
            let lookup = commands.lookup_cached(
                &mut last_lookup,
                info.name(&bytes).unwrap_or_default(),
                info.arg1(&bytes),
            );
            resolved.refresh(&table, session, worker);
            let mut req = Req {
                frame: bytes,
                info,
                lookup,
                rule: None,
            };
            req.rule = rule(&table, &req);
            // `CLIENT REPLY SKIP` before this request silences its reply.
            let skip = std::mem::take(&mut session.skip_next);
            if let Some(refusal) = gate(&req, &table, session, worker) {
                outbox.slot(Slot::Ready(refusal), session, skip);
                continue;
            }
            if release_finished_blocking(session, worker) {
                session.client.set_visible(session.visible());
            }
            // Checked once per read while it holds (a lock and a clock read): the requests
            // of one read arrived together.
            if needs_master(&req, &table, session)
                && !*master_ok.get_or_insert_with(|| master_usable(&table, &mut resolved, worker))
            {
                // What came before is sent first, not held with it.
                if !outbox.flush(fifo).await {
                    return;
                }
                // Boxed, like `dispatch` below: futures awaited inline make every
                // connection's task as large as the largest of them, idle or not.
                match Box::pin(hold_for_master(&mut resolved, session, worker)).await {
                    Some(t) => {
                        // The rules may have changed with the table.
                        req.rule = rule(&t, &req);
                        table = t;
                        master_ok = Some(true);
                    }
                    None => {
                        // The next request waits again, as it would have.
                        master_ok = None;
                        worker.shared.metrics.rejected.inc();
                        let msg = format!(
                            "TRYAGAIN pivot: no usable master for service '{}' within {:?} (a failover is in progress or the master is unreachable)",
                            table.service,
                            table.failover_hold.unwrap_or(shared.limits.failover_hold)
                        );
                        outbox.slot(Slot::Ready(reply::error(&msg)), session, skip);
                        continue;
                    }
                }
            }
            // Only special commands and pinned connections change what `CLIENT LIST` shows:
            // a plain command skips the comparison.
            let before =
                (req.lookup.special.is_some() || req.lookup.blocking || session.pinned.is_some())
                    .then(|| session.signature());
            let step = if session.pinned.is_none() && plain(&req) {
                // The common case: routed, and staged with the rest of this read (no future,
                // no wait), rather than through `dispatch`, whose chain of futures is built
                // and moved for every request it handles.
                let class = req.lookup.class;
                match route_forward(req, class, &table, &mut resolved, session, worker) {
                    Ok(Routed {
                        request,
                        retry,
                        slot,
                        target,
                    }) => {
                        outbox.commands.add((class, target));
                        outbox.request(&retry.backend, request);
                        with_retry(slot, retry)
                    }
                    Err(step) => step,
                }
            } else {
                // Everything staged goes first: what `dispatch` sends must not overtake it
                // (a `WAIT` after a write, say), and it may wait for replies itself.
                if !outbox.flush(fifo).await {
                    return;
                }
                Box::pin(dispatch(req, &table, &mut resolved, session, worker)).await
            };
            if before.is_some_and(|b| b != session.signature()) {
                session.client.set_visible(session.visible());
            }
            // A channel for Pub/Sub messages made by this command goes to the writer first.
            if let Some(rx) = session.new_messages.take() {
                outbox.slots.push(Slot::Messages(rx));
            }
            match step {
                Step::Slot(slot) => outbox.slot(slot, session, skip),
                Step::Silent => {}
                Step::Close(r) => {
                    // Handed over by `read_requests` when this returns.
                    outbox.slot(Slot::Ready(r), session, skip);
                    outbox.slots.push(Slot::Close);
                    return;
                }
            }
        }
        if !outbox.flush(fifo).await {
            // The writer is gone: the client cannot be answered any more.
            return;
        }
        if from_arena && !buf.is_empty() {
            // A partial frame may wait long for its rest: not in the arena.
            buf = crate::arena::own(&buf);
        }
    }
}

/// Refusals that come before routing: a client that must authenticate first, and commands
/// a rule of the service denies. Returns the error reply.
fn gate(req: &Req, table: &RoutingTable, session: &mut Session, worker: &Worker) -> Option<Bytes> {
    if !session.authenticated
        && table.auth_required()
        && !matches!(
            req.lookup.special,
            Some(Special::Auth | Special::Hello | Special::Quit | Special::Reset)
        )
    {
        worker.shared.metrics.rejected.inc();
        return Some(reply::error("NOAUTH Authentication required."));
    }
    if req.rule == Some(RuleTarget::Deny) {
        worker.shared.metrics.rejected.inc();
        if let Some(Pinned {
            kind:
                PinKind::Transaction {
                    in_multi: true,
                    aborted,
                },
            ..
        }) = session.pinned.as_mut()
        {
            // As a refused command inside MULTI does on Redis: EXEC answers EXECABORT.
            *aborted = true;
        }
        return Some(reply::error(&format!(
            "ERR pivot: '{}' is denied on service '{}' by a rule",
            req.lower_name(),
            table.service
        )));
    }
    None
}

/// True when the request will be sent to the master over a shared connection: a command
/// routed there by class or rule, outside any pinned state (those keep their connection).
fn needs_master(req: &Req, table: &RoutingTable, session: &Session) -> bool {
    if session.pinned.is_some() || req.info.argc == 0 {
        return false;
    }
    match req.lookup.special {
        None => {}
        // Transactions and blocking commands start on the master too.
        Some(Special::Transaction) => return true,
        _ => return false,
    }
    let dummy = std::sync::atomic::AtomicUsize::new(0);
    matches!(
        route(table, req.lookup.class, req.rule, &session.route, &dummy),
        Route::Master | Route::NoMaster
    )
}

/// The master can take requests now: known, connected (or connecting), and not stalled.
fn master_usable(table: &RoutingTable, resolved: &mut Resolved, worker: &Worker) -> bool {
    if table.master.is_none() {
        return false;
    }
    match resolved.backend(Route::Master, worker) {
        Some(b) if b.stalled(worker.shared.limits.backend_stall) => {
            if b.first_stall_report() {
                worker.shared.metrics.stall_detections.inc();
                debug!(master = %b.addr(), "master stalled: holding requests for it");
            }
            false
        }
        Some(b) => b.is_alive(),
        None => false,
    }
}

/// Waits (at most `--failover-hold`) until a usable master is known; returns the routing
/// table to continue with, or `None` on timeout. The client's later requests wait behind
/// this one, so their order is kept; other clients are not affected.
async fn hold_for_master(
    resolved: &mut Resolved,
    session: &Session,
    worker: &Worker,
) -> Option<Arc<RoutingTable>> {
    let shared = &worker.shared;
    let _holding = shared.metrics.hold();
    let started = Instant::now();
    let hold = shared
        .table
        .load()
        .failover_hold
        .unwrap_or(shared.limits.failover_hold);
    let deadline = tokio::time::Instant::now() + hold;
    let mut applied = shared.applied.subscribe();
    loop {
        let table = shared.table.load_full();
        resolved.refresh(&table, session, worker);
        if master_usable(&table, resolved, worker) {
            shared
                .metrics
                .hold_seconds
                .observe(started.elapsed().as_secs_f64());
            return Some(table);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        // A new table, or a stalled master answering again (checked every few ms).
        let tick = (shared.limits.backend_stall / 10).max(std::time::Duration::from_millis(2));
        tokio::select! {
            _ = applied.changed() => {}
            _ = tokio::time::sleep(tick) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Completes after `d`, or never.
async fn sleep_or_never(d: Option<std::time::Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn is_scan(req: &Req) -> bool {
    req.is(b"SCAN") || req.is(b"SSCAN") || req.is(b"HSCAN") || req.is(b"ZSCAN")
}

/// Whether a command sent to the master may have written: anything but a read. Flags are
/// not enough: on Redis 7.0 `EVAL`, `EVALSHA` and `FCALL` carry no `write` or
/// `may_replicate` flag (they are `noscript`, class Admin), yet scripts write.
fn writes(class: Class) -> bool {
    !matches!(class, Class::Read | Class::Neutral)
}

/// One request, classified.
struct Req {
    frame: Bytes,
    info: resp::Frame,
    lookup: Lookup,
    /// The table's rule for this command, looked up once (most tables have none).
    rule: Option<RuleTarget>,
}

impl Req {
    fn name(&self) -> &[u8] {
        self.info.name(&self.frame).unwrap_or_default()
    }

    fn lower_name(&self) -> String {
        String::from_utf8_lossy(self.name()).to_ascii_lowercase()
    }

    fn is(&self, cmd: &[u8]) -> bool {
        self.name().eq_ignore_ascii_case(cmd)
    }
}

/// Stages the error and the close; `read_requests` hands them over when the read loop
/// returns.
fn protocol_error(outbox: &mut Outbox<'_>, worker: &Worker, e: &FrameError) {
    worker.shared.metrics.protocol_errors.inc();
    debug!(error = %e, "client protocol error");
    // Replies to the requests before the bad one are still delivered, then the error, then
    // the connection closes: the stream cannot be resynchronised (Redis does the same).
    outbox
        .slots
        .push(Slot::Ready(reply::error(&format!("ERR {e}"))));
    outbox.slots.push(Slot::Close);
}

fn reject(worker: &Worker, msg: &str) -> Step {
    worker.shared.metrics.rejected.inc();
    Step::Slot(Slot::Ready(reply::error(msg)))
}

fn local(worker: &Worker, class: Class, r: Bytes) -> Step {
    worker.shared.metrics.command(class, Target::Local);
    Step::Slot(Slot::Ready(r))
}

/// Decides what one request does: answered here, sent over a shared connection, or sent
/// over (and maybe starting or ending) a dedicated one.
async fn dispatch(
    req: Req,
    table: &RoutingTable,
    resolved: &mut Resolved,
    session: &mut Session,
    worker: &Worker,
) -> Step {
    // (A blocking command that has answered was released by the read loop already.)
    match session.pinned.as_ref().map(|p| p.kind) {
        Some(PinKind::Transaction { in_multi, aborted }) => {
            in_transaction(req, in_multi, aborted, session, worker).await
        }
        Some(PinKind::Blocking) => behind_blocking(req, session, worker).await,
        Some(PinKind::PubSub) => subscribed(req, table, resolved, session, worker).await,
        Some(PinKind::Tracking) => tracking(req, table, session, worker).await,
        Some(PinKind::Monitor) => monitoring(req, session, worker),
        None => unpinned(req, table, resolved, session, worker).await,
    }
}

/// A blocking command's connection goes back to the pool once it has answered. True when
/// it did.
fn release_finished_blocking(session: &mut Session, worker: &Worker) -> bool {
    if let Some(p) = &session.pinned
        && p.kind == PinKind::Blocking
        && (p.backend.outstanding() == 0 || !p.backend.is_alive())
        && let Some(p) = session.pinned.take()
    {
        worker.pool.release(p.backend);
        return true;
    }
    false
}

/// Not pinned: the common case.
async fn unpinned(
    req: Req,
    table: &RoutingTable,
    resolved: &mut Resolved,
    session: &mut Session,
    worker: &Worker,
) -> Step {
    let class = req.lookup.class;
    match req.lookup.special {
        Some(Special::Transaction) if req.is(b"MULTI") || req.is(b"WATCH") => {
            let in_multi = req.is(b"MULTI");
            let Some(master) = &table.master else {
                return no_master(worker, table);
            };
            let backend = match worker.pool.dedicated(&session.key(master)) {
                Ok(b) => b,
                Err(e) => return reject(worker, &format!("ERR pivot: {e}")),
            };
            // Whatever the transaction writes is on the master.
            session.route.has_written = true;
            session.pinned = Some(Pinned {
                backend: backend.clone(),
                kind: PinKind::Transaction {
                    in_multi,
                    aborted: false,
                },
            });
            send(
                &backend,
                req.frame,
                class,
                Target::Master,
                worker,
                &session.client,
            )
            .await
        }
        // EXEC, DISCARD, UNWATCH outside a transaction: Redis answers them as it does on any
        // connection ("EXEC without MULTI", OK for UNWATCH).
        Some(Special::Transaction) => {
            forward(req, Class::Admin, table, resolved, session, worker).await
        }
        Some(Special::StreamRead) if has_block_arg(&req.frame) => {
            blocking(req, table, session, worker).await
        }
        Some(Special::StreamRead) => forward(req, class, table, resolved, session, worker).await,
        Some(Special::Subscribe) if is_subscribe(&req) => {
            subscribe(req, table, session, worker).await
        }
        // An unsubscribe outside subscriber mode: Redis answers one confirmation per
        // argument (count 0), on any connection.
        Some(Special::Subscribe) => {
            let frames = req.info.argc.saturating_sub(1).max(1);
            let Some(backend) = resolved.backend(Route::Master, worker).cloned() else {
                return no_master(worker, table);
            };
            send_n(
                &backend,
                req.frame,
                class,
                Target::Master,
                worker,
                frames,
                false,
                &session.client,
            )
            .await
        }
        Some(Special::Client) if subcommand_is(&req, b"TRACKING") => {
            start_tracking(req, table, session, worker).await
        }
        Some(Special::Takeover) if req.is(b"MONITOR") => {
            start_monitor(req, table, session, worker).await
        }
        Some(Special::Wait) => wait(req, table, session, worker).await,
        Some(special) => answer_local(special, &req, session, worker),
        None if req.is(b"INFO") => info(req, table, resolved, session, worker).await,
        None if req.lookup.blocking => blocking(req, table, session, worker).await,
        None if is_script_fan_out(&req) => {
            fan_out(req, class, table, resolved, session, worker).await
        }
        None => forward(req, class, table, resolved, session, worker).await,
    }
}

/// `SCRIPT LOAD` and `SCRIPT FLUSH`, which go to every node (see [`fan_out`]).
fn is_script_fan_out(req: &Req) -> bool {
    req.is(b"SCRIPT")
        && req
            .info
            .arg1(&req.frame)
            .is_some_and(|a| a.eq_ignore_ascii_case(b"LOAD") || a.eq_ignore_ascii_case(b"FLUSH"))
}

/// True when [`unpinned`] would simply [`forward`] the request: no command the proxy
/// answers or treats specially, not blocking, not `INFO`, not a script fan-out.
fn plain(req: &Req) -> bool {
    req.lookup.special.is_none()
        && !req.lookup.blocking
        && !req.is(b"INFO")
        && !is_script_fan_out(req)
}

fn subcommand_is(req: &Req, sub: &[u8]) -> bool {
    req.info
        .arg1(&req.frame)
        .is_some_and(|a| a.eq_ignore_ascii_case(sub))
}

/// `WAIT numreplicas timeout` (and `WAITAOF`): waits for the replicas to acknowledge this
/// client's writes. Redis counts the writes of the connection `WAIT` runs on, and this
/// client's writes went over shared connections; so the proxy runs, on a dedicated master
/// connection, a `PUBLISH` to a channel nobody listens to (in a non-cluster Redis it is
/// replicated, which moves that connection's replication offset to the master's current
/// one, past every write this client has been answered for), then the `WAIT`. It may wait
/// for a few other clients' writes too, never for fewer than the client's own.
async fn wait(req: Req, table: &RoutingTable, session: &mut Session, worker: &Worker) -> Step {
    if session.pinned.is_some() {
        return reject(
            worker,
            &format!(
                "ERR pivot: '{}' while subscribed is not supported; unsubscribe first",
                req.lower_name()
            ),
        );
    }
    let Some(master) = &table.master else {
        return no_master(worker, table);
    };
    let backend = match worker.pool.dedicated(&session.key(master)) {
        Ok(b) => b,
        Err(e) => return reject(worker, &format!("ERR pivot: {e}")),
    };
    crate::ack::send_fence(&backend).await;
    // Like a blocking command: the connection is this client's until `WAIT` answers.
    session.pinned = Some(Pinned {
        backend: backend.clone(),
        kind: PinKind::Blocking,
    });
    send(
        &backend,
        req.frame,
        req.lookup.class,
        Target::Master,
        worker,
        &session.client,
    )
    .await
}

/// `INFO`: the master's (whatever the read policy), with a `# Proxy` section describing
/// this proxy when the sections asked for include it.
async fn info(
    req: Req,
    table: &RoutingTable,
    resolved: &mut Resolved,
    session: &mut Session,
    worker: &Worker,
) -> Step {
    // As Redis's own sections: `INFO` alone, `default`, `all` and `everything` include it.
    let wants_proxy = req.info.argc == 1
        || resp::args(&req.frame).skip(1).any(|a| {
            a.eq_ignore_ascii_case(b"proxy")
                || a.eq_ignore_ascii_case(b"all")
                || a.eq_ignore_ascii_case(b"everything")
                || a.eq_ignore_ascii_case(b"default")
        });
    let Some(backend) = resolved.backend(Route::Master, worker).cloned() else {
        return no_master(worker, table);
    };
    let mut step = send(
        &backend,
        req.frame,
        req.lookup.class,
        Target::Master,
        worker,
        &session.client,
    )
    .await;
    if wants_proxy && let Step::Slot(Slot::Pending { then, .. }) = &mut step {
        *then = Some(Box::new(Then::ProxySection(proxy_section(table, worker))));
    }
    step
}

/// The `# Proxy` section of `INFO`.
fn proxy_section(table: &RoutingTable, worker: &Worker) -> Bytes {
    use std::fmt::Write as _;
    let shared = &worker.shared;
    let mut s = String::with_capacity(512);
    let _ = write!(
        s,
        "# Proxy\r\n\
         pivot_version:{}\r\n\
         proxy_id:{}\r\n\
         service:{}\r\n\
         uptime_in_seconds:{}\r\n\
         config_version:{}\r\n\
         master:{}\r\n\
         replicas:{}\r\n\
         readable_replicas:{}\r\n\
         read_policy:{}\r\n\
         consistency:{}\r\n\
         auth_required:{}\r\n\
         rules:{}\r\n\
         connected_clients:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        shared.proxy_id,
        table.service,
        shared.started.elapsed().as_secs(),
        table.config_version,
        table
            .master
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        table.replicas.len(),
        table.readable.len(),
        match table.read_policy {
            crate::routing::ReadPolicy::MasterOnly => "master-only",
            crate::routing::ReadPolicy::Replicas => "replicas",
            crate::routing::ReadPolicy::All => "all",
        },
        match table.consistency {
            crate::routing::Consistency::Eventual => "eventual",
            crate::routing::Consistency::ReadYourWrites => "read-your-writes",
            crate::routing::Consistency::Strong => "strong",
        },
        u8::from(table.auth_required()),
        table.rules.len(),
        shared.clients.len(),
    );
    Bytes::from(s)
}

/// `CLIENT TRACKING ON|OFF ...` outside tracking mode. `ON` takes a dedicated master
/// connection for the rest of tracking: Redis remembers the keys a connection read and
/// sends that connection the invalidations, so every later command of this client goes
/// over it (reads included), and its invalidation pushes go to the client's writer.
async fn start_tracking(
    req: Req,
    table: &RoutingTable,
    session: &mut Session,
    worker: &Worker,
) -> Step {
    let args: Vec<&[u8]> = resp::args(&req.frame).collect();
    if args.len() < 3 {
        return reject(worker, &wrong_args(b"client|tracking"));
    }
    if args[2].eq_ignore_ascii_case(b"OFF") {
        // Not tracking: nothing to turn off (Redis accepts it too).
        return local(worker, Class::Unknown, reply::ok());
    }
    if !args[2].eq_ignore_ascii_case(b"ON") {
        return reject(worker, "ERR syntax error");
    }
    if session.pinned.is_some() {
        return reject(
            worker,
            "ERR pivot: CLIENT TRACKING while subscribed is not supported; unsubscribe first",
        );
    }
    if args.iter().any(|a| a.eq_ignore_ascii_case(b"REDIRECT")) {
        return reject(
            worker,
            "ERR pivot: CLIENT TRACKING with REDIRECT is not supported (client ids differ between the proxy and Redis); use RESP3 (HELLO 3), whose invalidation messages come on the same connection",
        );
    }
    // Whatever this client writes from now on is on the master.
    session.route.has_written = true;
    pin_master_stream(
        req,
        Class::Unknown,
        PinKind::Tracking,
        table,
        session,
        worker,
    )
    .await
}

/// Pins the client to a new master connection whose out-of-band frames (invalidations,
/// the `MONITOR` stream) go to its writer, and sends `req` there.
async fn pin_master_stream(
    req: Req,
    class: Class,
    kind: PinKind,
    table: &RoutingTable,
    session: &mut Session,
    worker: &Worker,
) -> Step {
    let Some(master) = &table.master else {
        return no_master(worker, table);
    };
    let backend = match worker
        .pool
        .subscriber(&session.key(master), session.message_sink())
    {
        Ok(b) => b,
        Err(e) => return reject(worker, &format!("ERR pivot: {e}")),
    };
    session.pinned = Some(Pinned {
        backend: backend.clone(),
        kind,
    });
    send_n(
        &backend,
        req.frame,
        class,
        Target::Master,
        worker,
        1,
        true,
        &session.client,
    )
    .await
}

/// In tracking mode: everything goes over the tracking connection, but what the proxy
/// answers itself and what would change the connection's protocol.
async fn tracking(req: Req, table: &RoutingTable, session: &mut Session, worker: &Worker) -> Step {
    let Some(backend) = session.pinned.as_ref().map(|p| p.backend.clone()) else {
        return reject(worker, "ERR pivot: internal error: no pinned connection");
    };
    if !backend.is_alive() {
        // Invalidations may have been lost with the connection: the client's cache can no
        // longer be trusted, as after losing a connection to Redis.
        session.pinned = None;
        return Step::Close(reply::error(
            "ERR pivot: the tracking connection was lost; reconnect and enable tracking again",
        ));
    }
    let target = if table.master.as_ref() == Some(backend.addr()) {
        Target::Master
    } else {
        Target::Replica
    };
    let forward = |req: Req| {
        send_n(
            &backend,
            req.frame,
            req.lookup.class,
            target,
            worker,
            1,
            true,
            &session.client,
        )
    };
    match req.lookup.special {
        Some(Special::Client) if subcommand_is(&req, b"TRACKING") => {
            let off = resp::args(&req.frame)
                .nth(2)
                .is_some_and(|a| a.eq_ignore_ascii_case(b"OFF"));
            let step = forward(req).await;
            if off && let Some(p) = session.pinned.take() {
                // Its reply still arrives; then the connection closes.
                p.backend.finish();
            }
            step
        }
        Some(Special::Client)
            if subcommand_is(&req, b"CACHING")
                || subcommand_is(&req, b"GETREDIR")
                || subcommand_is(&req, b"TRACKINGINFO") =>
        {
            forward(req).await
        }
        Some(Special::Select) => {
            let step = answer_local(Special::Select, &req, session, worker);
            if matches!(&step, Step::Slot(Slot::Ready(r)) if r.starts_with(b"+")) {
                // The connection is this client's alone: switch it too.
                let (tx, _ignored) = oneshot::channel();
                backend.send(Request::new(req.frame, tx)).await;
            }
            step
        }
        Some(Special::Wait) => {
            crate::ack::send_fence(&backend).await;
            forward(req).await
        }
        Some(Special::Hello | Special::Subscribe | Special::Takeover) => reject(
            worker,
            &format!(
                "ERR pivot: '{}' while tracking is not supported; CLIENT TRACKING OFF first",
                req.lower_name()
            ),
        ),
        Some(special @ Special::Reset) => answer_local(special, &req, session, worker),
        Some(Special::Transaction | Special::StreamRead) | None => forward(req).await,
        Some(special) => answer_local(special, &req, session, worker),
    }
}

/// `MONITOR`: a dedicated master connection streams every command the master runs to the
/// client. They are the commands of the proxy's own connections (every proxy client's
/// requests, with the proxy's address), and of any other client of that Redis.
async fn start_monitor(
    req: Req,
    table: &RoutingTable,
    session: &mut Session,
    worker: &Worker,
) -> Step {
    if req.info.argc != 1 {
        return reject(worker, &wrong_args(req.name()));
    }
    if session.pinned.is_some() {
        return reject(
            worker,
            "ERR pivot: MONITOR while subscribed is not supported; unsubscribe first",
        );
    }
    pin_master_stream(req, Class::Admin, PinKind::Monitor, table, session, worker).await
}

/// In `MONITOR` mode: `PING`, `QUIT` and `RESET` (which ends it), as on Redis; other
/// commands are refused (Redis would run some and interleave their replies with the
/// stream).
fn monitoring(req: Req, session: &mut Session, worker: &Worker) -> Step {
    match req.lookup.special {
        Some(special @ (Special::Ping | Special::Quit | Special::Reset)) => {
            answer_local(special, &req, session, worker)
        }
        _ => reject(
            worker,
            &format!(
                "ERR pivot: '{}' in MONITOR mode is not supported; only PING, QUIT and RESET are",
                req.lower_name()
            ),
        ),
    }
}

fn is_subscribe(req: &Req) -> bool {
    req.is(b"SUBSCRIBE") || req.is(b"PSUBSCRIBE") || req.is(b"SSUBSCRIBE")
}

/// Enters subscriber mode: a subscriber connection on a node of the read pool (messages
/// published on the master reach the replicas too), whose messages go to this client's
/// writer.
async fn subscribe(req: Req, table: &RoutingTable, session: &mut Session, worker: &Worker) -> Step {
    // Subscriptions read no data: the read policy decides, not read-your-writes.
    let decision = route(
        table,
        Class::Neutral,
        None,
        &ClientState::default(),
        &worker.shared.rr,
    );
    let (addr, target) = match decision {
        Route::Replica(i) => match table.readable.get(i) {
            Some(r) => (r, Target::Replica),
            None => return no_master(worker, table),
        },
        _ => match &table.master {
            Some(m) => (m, Target::Master),
            None => return no_master(worker, table),
        },
    };
    let backend = match worker
        .pool
        .subscriber(&session.key(addr), session.message_sink())
    {
        Ok(b) => b,
        Err(e) => return reject(worker, &format!("ERR pivot: {e}")),
    };
    session.subs = Subscriptions::default();
    session.pinned = Some(Pinned {
        backend,
        kind: PinKind::PubSub,
    });
    subscribed_send(req, target, session, worker).await
}

/// In subscriber mode.
async fn subscribed(
    req: Req,
    table: &RoutingTable,
    resolved: &mut Resolved,
    session: &mut Session,
    worker: &Worker,
) -> Step {
    let Some(backend) = session.pinned.as_ref().map(|p| p.backend.clone()) else {
        return reject(worker, "ERR pivot: internal error: no pinned connection");
    };
    if !backend.is_alive() {
        // The subscriber connection is gone (its node failed or left the topology): the
        // client must subscribe again, as after losing a connection to Redis.
        session.pinned = None;
        session.subs = Subscriptions::default();
        return Step::Close(reply::error(
            "ERR pivot: the subscriber connection was lost; reconnect and subscribe again",
        ));
    }
    let target = if table.master.as_ref() == Some(backend.addr()) {
        Target::Master
    } else {
        Target::Replica
    };
    match req.lookup.special {
        Some(Special::Subscribe) | Some(Special::Ping) => {
            subscribed_send(req, target, session, worker).await
        }
        Some(Special::Quit) => Step::Close(reply::ok()),
        Some(Special::Reset) => {
            session.subs = Subscriptions::default();
            answer_local(Special::Reset, &req, session, worker)
        }
        // RESP3 clients may run other commands while subscribed; they go where they would
        // otherwise go, except what needs a connection of its own (this client has one
        // already). RESP2 subscribers get Redis's own refusal from their connection.
        Some(Special::Transaction | Special::Wait)
            if session.resp3 && !(req.is(b"EXEC") || req.is(b"DISCARD") || req.is(b"UNWATCH")) =>
        {
            reject(
                worker,
                &format!(
                    "ERR pivot: '{}' while subscribed is not supported; unsubscribe first",
                    req.lower_name()
                ),
            )
        }
        _ if session.resp3
            && if req.lookup.special == Some(Special::StreamRead) {
                // XREAD carries the `blocking` flag, but only blocks with BLOCK.
                has_block_arg(&req.frame)
            } else {
                req.lookup.blocking
            } =>
        {
            reject(
                worker,
                &format!(
                    "ERR pivot: blocking '{}' while subscribed is not supported; unsubscribe first",
                    req.lower_name()
                ),
            )
        }
        // The subscriber connection speaks the client's protocol: switch it too (a RESP2
        // subscriber is back to RESP2's subscriber-mode rules).
        Some(Special::Hello) if session.resp3 => {
            let step = answer_local(Special::Hello, &req, session, worker);
            if !session.resp3 {
                let (tx, _ignored) = oneshot::channel();
                backend
                    .send(Request::new(
                        Bytes::from_static(b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n"),
                        tx,
                    ))
                    .await;
            }
            step
        }
        // Publishing on the master from the subscriber connection keeps Redis's order (the
        // message to this very client comes before the reply); a PUBLISH over a shared
        // connection would race with the message on this one.
        _ if session.resp3 && target == Target::Master && req.is(b"PUBLISH") => {
            send_n(
                &backend,
                req.frame,
                req.lookup.class,
                target,
                worker,
                1,
                true,
                &session.client,
            )
            .await
        }
        _ if session.resp3 => unpinned(req, table, resolved, session, worker).await,
        _ => subscribed_send(req, target, session, worker).await,
    }
}

/// Sends a command over the subscriber connection, expecting as many reply frames as it
/// brings confirmations; leaves subscriber mode when no subscription is left.
async fn subscribed_send(req: Req, target: Target, session: &mut Session, worker: &Worker) -> Step {
    let Some(backend) = session.pinned.as_ref().map(|p| p.backend.clone()) else {
        return reject(worker, "ERR pivot: internal error: no pinned connection");
    };
    let lower = req.lower_name();
    let args: Vec<&[u8]> = resp::args(&req.frame).skip(1).collect();
    let frames = session.subs.apply(lower.as_bytes(), &args);
    let step = send_n(
        &backend,
        req.frame,
        Class::PubSub,
        target,
        worker,
        frames,
        true,
        &session.client,
    )
    .await;
    if session.subs.is_empty()
        && let Some(p) = session.pinned.take()
    {
        // No subscription left: Redis has left subscriber mode on that connection. Its last
        // confirmations still arrive (the connection closes once they have).
        p.backend.finish();
    }
    step
}

/// A blocking command: on a dedicated connection to the node routing picks.
async fn blocking(req: Req, table: &RoutingTable, session: &mut Session, worker: &Worker) -> Step {
    let class = req.lookup.class;
    let decision = route(table, class, req.rule, &session.route, &worker.shared.rr);
    let (addr, target) = match decision {
        Route::Master => match &table.master {
            Some(m) => (m, Target::Master),
            None => return no_master(worker, table),
        },
        Route::Replica(i) => match table.readable.get(i) {
            Some(r) => (r, Target::Replica),
            None => return no_master(worker, table),
        },
        Route::NoMaster => return no_master(worker, table),
    };
    let backend = match worker.pool.dedicated(&session.key(addr)) {
        Ok(b) => b,
        Err(e) => return reject(worker, &format!("ERR pivot: {e}")),
    };
    if target == Target::Master && writes(class) {
        session.route.has_written = true;
    }
    session.pinned = Some(Pinned {
        backend: backend.clone(),
        kind: PinKind::Blocking,
    });
    send(&backend, req.frame, class, target, worker, &session.client).await
}

/// A blocking command of this client has not answered yet: what follows it runs after it,
/// on the same connection, as it would on Redis.
async fn behind_blocking(req: Req, session: &mut Session, worker: &Worker) -> Step {
    let Some(backend) = session.pinned.as_ref().map(|p| p.backend.clone()) else {
        return reject(worker, "ERR pivot: internal error: no pinned connection");
    };
    let on_master = table_is_master(&backend, worker);
    let refuse = |req: &Req| {
        reject(
            worker,
            &format!(
                "ERR pivot: '{}' cannot follow a blocking command that has not returned yet",
                req.lower_name()
            ),
        )
    };
    match req.lookup.special {
        Some(
            Special::Select
            | Special::Hello
            | Special::Reset
            | Special::Auth
            | Special::Subscribe
            | Special::Wait,
        ) => refuse(&req),
        // A transaction needs the master: only behind a blocking command on the master.
        Some(Special::Transaction) if !on_master => refuse(&req),
        Some(Special::Transaction) => {
            if req.is(b"MULTI") || req.is(b"WATCH") {
                session.route.has_written = true;
                if let Some(p) = session.pinned.as_mut() {
                    p.kind = PinKind::Transaction {
                        in_multi: req.is(b"MULTI"),
                        aborted: false,
                    };
                }
            }
            send(
                &backend,
                req.frame,
                Class::Admin,
                Target::Master,
                worker,
                &session.client,
            )
            .await
        }
        Some(Special::StreamRead) | None => {
            // Behind a read on a replica, a write would fail there (READONLY).
            if !on_master && !matches!(req.lookup.class, Class::Read | Class::Neutral) {
                return refuse(&req);
            }
            let target = if on_master {
                Target::Master
            } else {
                Target::Replica
            };
            send(
                &backend,
                req.frame,
                req.lookup.class,
                target,
                worker,
                &session.client,
            )
            .await
        }
        Some(special) => answer_local(special, &req, session, worker),
    }
}

fn table_is_master(backend: &Backend, worker: &Worker) -> bool {
    worker.shared.table.load().master.as_ref() == Some(backend.addr())
}

/// Inside `WATCH`/`MULTI`: everything goes to the transaction's connection, except what
/// would change state that connection shares with the proxy's view of the client.
async fn in_transaction(
    req: Req,
    in_multi: bool,
    aborted: bool,
    session: &mut Session,
    worker: &Worker,
) -> Step {
    let Some(backend) = session.pinned.as_ref().map(|p| p.backend.clone()) else {
        return reject(worker, "ERR pivot: internal error: no pinned connection");
    };
    let class = req.lookup.class;
    if !backend.is_alive() {
        // The connection is gone (the master failed, or was demoted): so is the
        // transaction. Answer until the client ends it.
        let ended = req.is(b"EXEC") || req.is(b"DISCARD") || (req.is(b"UNWATCH") && !in_multi);
        if ended {
            session.pinned = None;
        }
        return match req.lookup.special {
            Some(Special::Quit) => Step::Close(reply::ok()),
            _ if req.is(b"EXEC") => reject(
                worker,
                "EXECABORT Transaction discarded because the connection to the master was lost",
            ),
            _ if req.is(b"UNWATCH") && !in_multi => local(worker, class, reply::ok()),
            _ => reject(
                worker,
                "ERR pivot: the transaction was aborted because the connection to the master was lost",
            ),
        };
    }
    match req.lookup.special {
        Some(Special::Transaction) => {
            let exec = req.is(b"EXEC");
            let ends =
                exec || (req.is(b"DISCARD") && in_multi) || (req.is(b"UNWATCH") && !in_multi);
            if req.is(b"MULTI")
                && let Some(p) = session.pinned.as_mut()
            {
                p.kind = PinKind::Transaction {
                    in_multi: true,
                    aborted,
                };
            }
            let step = if req.is(b"EXEC") && aborted {
                // Redis would answer EXECABORT for a command refused while queueing; the
                // refusal was ours, so Redis doesn't know: discard there, answer here.
                let (reply_tx, _ignored) = oneshot::channel();
                backend
                    .send(Request::new(
                        Bytes::from_static(b"*1\r\n$7\r\nDISCARD\r\n"),
                        reply_tx,
                    ))
                    .await;
                reject(
                    worker,
                    "EXECABORT Transaction discarded because of previous errors.",
                )
            } else {
                let write_ack = worker.shared.table.load().write_ack;
                let mut step = send(
                    &backend,
                    req.frame,
                    Class::Admin,
                    Target::Master,
                    worker,
                    &session.client,
                )
                .await;
                if exec
                    && write_ack > 0
                    && let Step::Slot(Slot::Pending { then, .. }) = &mut step
                {
                    // The transaction's writes are acknowledged as one.
                    *then = Some(Box::new(Then::AwaitReplicas(
                        write_ack,
                        backend.addr().clone(),
                    )));
                }
                step
            };
            if ends && let Some(p) = session.pinned.take() {
                // Clean again: the next client may use it (behind this reply).
                worker.pool.release(p.backend);
            }
            step
        }
        Some(Special::Quit) => Step::Close(reply::ok()),
        // As on Redis, RESET ends the transaction at once (and everything else).
        Some(Special::Reset) => answer_local(Special::Reset, &req, session, worker),
        Some(
            special @ (Special::Select
            | Special::Hello
            | Special::Auth
            | Special::Client
            | Special::Subscribe
            | Special::Takeover
            | Special::Wait),
        ) => {
            let name = req.lower_name();
            if in_multi {
                if let Some(p) = session.pinned.as_mut() {
                    p.kind = PinKind::Transaction {
                        in_multi,
                        aborted: true,
                    };
                }
                reject(
                    worker,
                    &format!(
                        "ERR pivot: '{name}' is not supported inside MULTI; the transaction will be discarded"
                    ),
                )
            } else if matches!(special, Special::Client) {
                answer_local(special, &req, session, worker)
            } else {
                reject(
                    worker,
                    &format!("ERR pivot: '{name}' between WATCH and EXEC is not supported"),
                )
            }
        }
        // PING and ECHO are queued inside MULTI, as Redis does; outside, answered here.
        Some(special @ (Special::Ping | Special::Echo)) if !in_multi => {
            answer_local(special, &req, session, worker)
        }
        _ => {
            send(
                &backend,
                req.frame,
                class,
                Target::Master,
                worker,
                &session.client,
            )
            .await
        }
    }
}

fn rule(table: &RoutingTable, req: &Req) -> Option<crate::routing::RuleTarget> {
    if table.rules.is_empty() {
        None
    } else {
        Lower::new(req.name())
            .and_then(|l| rule_for(table, l.as_bytes(), req.info.arg1(&req.frame)))
    }
}

fn no_master(worker: &Worker, table: &RoutingTable) -> Step {
    reject(
        worker,
        &format!(
            "CLUSTERDOWN pivot: service '{}' has no master known to the proxy yet",
            table.service
        ),
    )
}

/// Over a shared connection, to the node routing picks.
async fn forward(
    req: Req,
    class: Class,
    table: &RoutingTable,
    resolved: &mut Resolved,
    session: &mut Session,
    worker: &Worker,
) -> Step {
    match route_forward(req, class, table, resolved, session, worker) {
        Ok(Routed {
            request,
            retry,
            slot,
            target,
        }) => {
            worker.shared.metrics.command(class, target);
            retry.backend.send(request).await;
            with_retry(slot, retry)
        }
        Err(step) => step,
    }
}

/// A request routed over a shared connection, not sent yet: it goes to `retry.backend`,
/// and `retry` then goes into its reply slot ([`with_retry`]).
struct Routed {
    request: Request,
    retry: Retry,
    slot: Slot,
    /// Where it goes, for the caller to count it.
    target: Target,
}

/// The step that queues `slot` with its retry record.
fn with_retry(mut slot: Slot, retry: Retry) -> Step {
    if let Slot::Pending { retry: r, .. } = &mut slot {
        *r = Some(retry);
    }
    Step::Slot(slot)
}

/// Routes a request over a shared connection (see [`forward`]); `Err` is the answer when
/// it cannot go anywhere.
fn route_forward(
    req: Req,
    class: Class,
    table: &RoutingTable,
    resolved: &mut Resolved,
    session: &mut Session,
    worker: &Worker,
) -> Result<Routed, Step> {
    let mut decision = route(table, class, req.rule, &session.route, &worker.shared.rr);
    // A SCAN cursor is only valid on the node that returned it: one client's SCAN-family
    // commands all go to the same replica (while the set of healthy replicas stays).
    if let Route::Replica(_) = decision
        && is_scan(&req)
        && !table.readable.is_empty()
    {
        decision = Route::Replica(session.id as usize % table.readable.len());
    }
    let target = match decision {
        Route::Master => Target::Master,
        _ => Target::Replica,
    };
    let Some(backend) = resolved.backend(decision, worker) else {
        return Err(no_master(worker, table));
    };
    if target == Target::Master && writes(class) {
        session.route.has_written = true;
    }
    let backend = backend.clone();
    let fallback = if target == Target::Replica && (req.is(b"EVALSHA") || req.is(b"EVALSHA_RO")) {
        resolved.backend(Route::Master, worker).map(|m| {
            Box::new(Then::NoScriptOnMaster {
                backend: m.clone(),
                frame: req.frame.clone(),
            })
        })
    } else {
        None
    };
    let frame = req.frame.clone();
    let (request, mut slot) = request_n(req.frame, target, 1, false, &session.client);
    let then_after = if target == Target::Master && table.write_ack > 0 && writes(class) {
        Some(Box::new(Then::AwaitReplicas(
            table.write_ack,
            backend.addr().clone(),
        )))
    } else {
        fallback
    };
    if let Slot::Pending { then, .. } = &mut slot {
        *then = then_after;
    }
    // The handle this request goes on is its retry's: no second clone.
    let retry = Retry {
        frame,
        read: matches!(class, Class::Read | Class::Neutral),
        backend,
    };
    Ok(Routed {
        request,
        retry,
        slot,
        target,
    })
}

/// `SCRIPT LOAD` and `SCRIPT FLUSH` on every node (Redis does not replicate them), so that
/// `EVALSHA_RO` finds its script on the replicas. The client gets the master's reply; each
/// replica's connection runs it before anything this client sends there later.
async fn fan_out(
    req: Req,
    class: Class,
    table: &RoutingTable,
    resolved: &mut Resolved,
    session: &mut Session,
    worker: &Worker,
) -> Step {
    for r in &table.replicas {
        let backend = worker.pool.get(&session.key(&r.addr));
        let (tx, _ignored) = oneshot::channel();
        backend.send(Request::new(req.frame.clone(), tx)).await;
    }
    forward(req, class, table, resolved, session, worker).await
}

async fn send(
    backend: &Backend,
    frame: Bytes,
    class: Class,
    target: Target,
    worker: &Worker,
    client: &Arc<Client>,
) -> Step {
    send_n(backend, frame, class, target, worker, 1, false, client).await
}

/// Sends a request answered by `frames` reply frames; `pubsub` when the connection is this
/// client's subscriber connection.
#[allow(clippy::too_many_arguments)]
async fn send_n(
    backend: &Backend,
    frame: Bytes,
    class: Class,
    target: Target,
    worker: &Worker,
    frames: usize,
    pubsub: bool,
    client: &Arc<Client>,
) -> Step {
    worker.shared.metrics.command(class, target);
    let (request, slot) = request_n(frame, target, frames, pubsub, client);
    backend.send(request).await;
    Step::Slot(slot)
}

/// A request answered by `frames` reply frames, and its reply slot (see [`send_n`]). The
/// caller counts it.
fn request_n(
    frame: Bytes,
    target: Target,
    frames: usize,
    pubsub: bool,
    client: &Arc<Client>,
) -> (Request, Slot) {
    let ticket = Ticket::take(client);
    let seq = ticket.seq();
    let request = Request {
        frame,
        reply: ReplyTo::Client(ticket),
        frames,
    };
    let slot = Slot::Pending {
        seq,
        // When the request was read (one clock read per read, see `Client::touch`).
        started: client.last_read(),
        target,
        pubsub,
        then: None,
        silent: false,
        retry: None,
    };
    (request, slot)
}

async fn write_replies(
    mut wr: OwnedWriteHalf,
    fifo: &Queue<Slot>,
    worker: &Worker,
    client: Arc<Client>,
) {
    write_replies_from(&mut wr, fifo, worker, client.clone()).await;
    // Stop the reader too: its next hand-over fails. What it had queued is dropped, and so
    // are the replies still to come.
    fifo.close();
    client.inbox.close();
}

async fn write_replies_from(
    wr: &mut OwnedWriteHalf,
    fifo: &Queue<Slot>,
    worker: &Worker,
    client: Arc<Client>,
) {
    // Slots taken from the FIFO, oldest first (all there were at each take).
    let mut slots: VecDeque<Slot> = VecDeque::new();
    // Replies taken from the client's inbox, oldest first.
    let mut replies = Replies::default();
    let mut latency = LatencyRun::latencies(&worker.shared.metrics);
    // Pub/Sub messages, once a command has needed them (`Slot::Messages`).
    let mut messages: Option<mpsc::Receiver<Bytes>> = None;
    // Grows to the replies of one batch; a large one is dropped after its write.
    let mut out = BytesMut::new();
    // Killed (CLIENT KILL, output limit): close now, whatever is still owed.
    let killed = client.kill.raised();
    tokio::pin!(killed);
    loop {
        // Reply bytes in `out` that were counted against the client's output limit.
        let mut counted = 0;
        // Slots taken from `slots` and done with in this turn: released to the FIFO's bound
        // after the write.
        let mut consumed = 1;
        // Pub/Sub messages are written whenever nothing else is due: while idle, and while
        // waiting for a reply from the subscriber connection (they are ahead of it there).
        let slot = match slots.pop_front() {
            Some(s) => s,
            None => tokio::select! {
                biased;
                more = fifo.take(&mut slots) => match slots.pop_front() {
                    Some(s) => s,
                    None if more => continue,
                    None => return,
                },
                Some((m, ms)) = next_message(&mut messages) => {
                    if !write_messages(wr, &mut out, m, ms).await {
                        return;
                    }
                    continue;
                }
            },
        };
        // Wait for the oldest reply, then take every later one that is already there.
        let mut closing = false;
        let mut done_at: Option<Instant> = None;
        match slot {
            Slot::Ready(b) => out.extend_from_slice(&b),
            Slot::Pending {
                seq,
                started,
                target,
                pubsub,
                then,
                silent,
                retry,
            } => {
                let r = loop {
                    let reply = poll_fn(|cx| replies.poll(cx, seq, &client.inbox));
                    if !pubsub {
                        tokio::select! {
                            biased;
                            _ = &mut killed => return,
                            r = reply => break r,
                        }
                    }
                    // Messages first: the backend queues a message before it completes a
                    // reply that came after it on the connection, so this keeps Redis's
                    // order (a subscriber publishing to itself gets the message, then the
                    // reply).
                    tokio::select! {
                        biased;
                        _ = &mut killed => return,
                        Some((m, ms)) = next_message(&mut messages) => {
                            if !write_messages(wr, &mut out, m, ms).await {
                                return;
                            }
                        }
                        r = reply => break r,
                    }
                };
                let r = match settled(retry, then, r) {
                    Ok(r) => r,
                    Err(u) => follow_up(u, worker).await,
                };
                let now = Instant::now();
                latency.add((target, now.saturating_duration_since(started)));
                done_at = Some(now);
                counted += append(&mut out, r, silent);
            }
            Slot::Close => closing = true,
            Slot::Messages(m) => messages = Some(m),
        }
        while !closing && out.len() < 256 * 1024 {
            if slots.is_empty() {
                fifo.try_take(&mut slots);
            }
            let Some(next) = slots.pop_front() else { break };
            consumed += 1;
            match next {
                Slot::Ready(b) => out.extend_from_slice(&b),
                Slot::Pending {
                    seq,
                    started,
                    target,
                    pubsub,
                    then,
                    silent,
                    retry,
                } => match replies.try_take(seq, &client.inbox) {
                    Some(r) => {
                        let r = match settled(retry, then, r) {
                            Ok(r) => r,
                            Err(u) => follow_up(u, worker).await,
                        };
                        // Already there: answered no later than the reply waited for above
                        // (one clock read per batch of replies).
                        let now = *done_at.get_or_insert_with(Instant::now);
                        latency.add((target, now.saturating_duration_since(started)));
                        counted += append(&mut out, r, silent);
                    }
                    None => {
                        // Not there yet: the next turn waits for it.
                        consumed -= 1;
                        slots.push_front(Slot::Pending {
                            seq,
                            started,
                            target,
                            pubsub,
                            then,
                            silent,
                            retry,
                        });
                        break;
                    }
                },
                Slot::Close => {
                    consumed -= 1;
                    slots.push_front(Slot::Close);
                    break;
                }
                Slot::Messages(m) => messages = Some(m),
            }
        }
        latency.flush();
        if !out.is_empty() {
            let written = tokio::select! {
                biased;
                _ = &mut killed => return,
                r = wr.write_all(&out) => r.is_ok(),
            };
            if !written {
                return;
            }
            client.sub_output(counted);
            if slots.is_empty() {
                crate::queue::recycle(&mut slots);
            }
            out.clear();
            if out.capacity() > 4 * 1024 {
                out = BytesMut::new();
            }
        }
        fifo.release(consumed);
        if closing {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

/// What a retry or a follow-up (`Then`) makes of a reply that [`settled`] did not settle.
/// Boxed, so that the writer's future stays small.
async fn follow_up((retry, then, r): Unsettled, worker: &Worker) -> Option<Reply> {
    Box::pin(async move {
        let r = Retry::resolve(retry, r, worker).await;
        Then::resolve(then, r, worker).await
    })
    .await
}

/// Follow-ups to run before the reply can be given.
type Unsettled = (Option<Retry>, Option<Box<Then>>, Option<Reply>);

/// The reply the client gets: `Ok(r)` when it is `r` as it is (no retry called for, no
/// follow-up), as for most replies, without a future; otherwise everything back, for
/// [`follow_up`].
fn settled(
    retry: Option<Retry>,
    then: Option<Box<Then>>,
    r: Option<Reply>,
) -> Result<Option<Reply>, Unsettled> {
    let retrying = retry.as_ref().is_some_and(|x| x.reason(&r).is_some());
    if !retrying && then.is_none() {
        Ok(r)
    } else {
        Err((retry, then, r))
    }
}

/// The next Pub/Sub message and its channel; never, while there is no channel.
async fn next_message(
    messages: &mut Option<mpsc::Receiver<Bytes>>,
) -> Option<(Bytes, &mut mpsc::Receiver<Bytes>)> {
    match messages {
        Some(ms) => {
            let m = ms.recv().await?;
            Some((m, ms))
        }
        None => std::future::pending().await,
    }
}

/// Writes `first` and every message already waiting, in one write. `out` is empty on entry
/// and on return. False when the client is gone.
async fn write_messages(
    wr: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    first: Bytes,
    messages: &mut mpsc::Receiver<Bytes>,
) -> bool {
    out.extend_from_slice(&first);
    while out.len() < 256 * 1024 {
        match messages.try_recv() {
            Ok(m) => out.extend_from_slice(&m),
            Err(_) => break,
        }
    }
    let ok = wr.write_all(out).await.is_ok();
    out.clear();
    ok
}

/// Appends a reply (unless `silent`); returns its size when it was a reply from Redis
/// (those count against the client's output limit, written or not).
fn append(out: &mut BytesMut, r: Option<Reply>, silent: bool) -> usize {
    match r {
        Some(Ok(bytes)) if silent => bytes.len(),
        Some(Ok(bytes)) => {
            out.extend_from_slice(&bytes);
            bytes.len()
        }
        _ if silent => 0,
        Some(Err(e)) => {
            out.extend_from_slice(&BackendError::to_resp(&e));
            0
        }
        // The backend task ended without answering (it cannot: it fails every slot it holds).
        None => {
            out.extend_from_slice(b"-ERR pivot: request dropped by the proxy\r\n");
            0
        }
    }
}

/// `XREAD`/`XREADGROUP` options come before `STREAMS`; after it are keys and IDs, which may
/// be called anything, "block" included.
fn has_block_arg(frame: &[u8]) -> bool {
    resp::args(frame)
        .skip(1)
        .take_while(|a| !a.eq_ignore_ascii_case(b"streams"))
        .any(|a| a.eq_ignore_ascii_case(b"block"))
}

/// Commands the proxy answers or refuses itself (outside transactions).
fn answer_local(special: Special, req: &Req, session: &mut Session, worker: &Worker) -> Step {
    let args: Vec<&[u8]> = resp::args(&req.frame).collect();
    let arg = |i: usize| args.get(i).copied().unwrap_or_default();
    let name = req.name();
    let argc = req.info.argc;
    let class = req.lookup.class;
    match special {
        Special::Ping => match argc {
            1 => local(worker, class, reply::simple("PONG")),
            2 => local(worker, class, reply::bulk(arg(1))),
            _ => reject(worker, &wrong_args(name)),
        },
        Special::Echo if argc == 2 => local(worker, class, reply::bulk(arg(1))),
        Special::Echo => reject(worker, &wrong_args(name)),
        Special::Quit => Step::Close(reply::ok()),
        Special::Select => {
            if argc != 2 {
                return reject(worker, &wrong_args(name));
            }
            let databases = worker.shared.databases.load(Ordering::Relaxed);
            match std::str::from_utf8(arg(1))
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            {
                None => reject(worker, "ERR value is not an integer or out of range"),
                Some(db) if db < 0 || db >= i64::from(databases) => {
                    reject(worker, "ERR DB index is out of range")
                }
                Some(db) => {
                    session.db = u32::try_from(db).unwrap_or(0);
                    local(worker, class, reply::ok())
                }
            }
        }
        Special::Auth => {
            if !(2..=3).contains(&argc) {
                return reject(worker, &wrong_args(name));
            }
            let (user, password) = if argc == 2 {
                (&b"default"[..], arg(1))
            } else {
                (arg(1), arg(2))
            };
            match authenticate(user, password, argc == 2, session, worker) {
                Ok(()) => local(worker, class, reply::ok()),
                Err(e) => reject(worker, e),
            }
        }
        Special::Hello => hello(&args, session, worker),
        Special::Client => client(&args, name, session, worker),
        Special::Reset => {
            // Back to a fresh connection: RESP2, database 0, no name, no transaction, no
            // subscription, tracking or monitor, replies on, and the default user (so
            // unauthenticated when users are configured).
            if let Some(p) = session.pinned.take() {
                p.backend.retire();
            }
            session.db = 0;
            session.resp3 = false;
            session.name = None;
            session.subs = Subscriptions::default();
            session.reply_off = false;
            session.skip_next = false;
            session.no_evict = false;
            session.user = None;
            session.authenticated = !worker.shared.table.load().auth_required();
            local(worker, class, reply::simple("RESET"))
        }
        Special::Transaction => reject(worker, "ERR pivot: internal error: transaction command"),
        Special::Subscribe => reject(
            worker,
            &format!(
                "ERR pivot: '{}' is not supported by this proxy yet (Pub/Sub needs a dedicated connection in subscriber mode)",
                req.lower_name()
            ),
        ),
        Special::Wait => reject(
            worker,
            &format!(
                "ERR pivot: '{}' is not supported by this proxy yet (it would wait for other clients' writes on a shared connection)",
                req.lower_name()
            ),
        ),
        Special::Takeover => reject(
            worker,
            &format!(
                "ERR pivot: '{}' is not supported by this proxy",
                req.lower_name()
            ),
        ),
        // Routed by the caller, never answered here.
        Special::StreamRead => reject(worker, "ERR pivot: internal error: stream read"),
    }
}

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Checks `user`/`password` against the service's proxy users; on success the session is
/// that user's. Without users every client is the default user, which takes any password
/// (as Redis's `nopass` default user), but `AUTH password` alone is refused as Redis
/// refuses it when no password is configured (`legacy`).
fn authenticate(
    user: &[u8],
    password: &[u8],
    legacy: bool,
    session: &mut Session,
    worker: &Worker,
) -> Result<(), &'static str> {
    let table = worker.shared.table.load();
    if !table.auth_required() {
        return match user {
            _ if legacy => Err(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            ),
            b"default" => Ok(()),
            _ => {
                worker.shared.metrics.auth_failures.inc();
                Err(WRONGPASS)
            }
        };
    }
    match table.users.get(user) {
        Some(u) if u.check(password) => {
            session.authenticated = true;
            session.user = Some(Bytes::copy_from_slice(user));
            session.user_checked = table.version;
            Ok(())
        }
        _ => {
            worker.shared.metrics.auth_failures.inc();
            Err(WRONGPASS)
        }
    }
}

fn wrong_args(name: &[u8]) -> String {
    format!(
        "ERR wrong number of arguments for '{}' command",
        String::from_utf8_lossy(name).to_ascii_lowercase()
    )
}

fn hello(args: &[&[u8]], session: &mut Session, worker: &Worker) -> Step {
    let mut i = 1;
    let mut proto = if session.resp3 { 3 } else { 2 };
    if let Some(v) = args.get(1) {
        match std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
        {
            Some(2) => proto = 2,
            Some(3) => proto = 3,
            Some(_) => return reject(worker, "NOPROTO unsupported protocol version"),
            None => {
                return reject(
                    worker,
                    "ERR Protocol version is not an integer or out of range",
                );
            }
        }
        i = 2;
    }
    let mut setname = None;
    let mut auth = None;
    while i < args.len() {
        let opt = args[i];
        if opt.eq_ignore_ascii_case(b"AUTH") && i + 2 < args.len() {
            auth = Some((args[i + 1], args[i + 2]));
            i += 3;
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && i + 1 < args.len() {
            setname = Some(args[i + 1]);
            i += 2;
        } else {
            return reject(
                worker,
                &format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(opt)
                ),
            );
        }
    }
    if let Some(n) = setname
        && let Err(e) = valid_name(n)
    {
        return reject(worker, &e);
    }
    match auth {
        Some((user, password)) => {
            if let Err(e) = authenticate(user, password, false, session, worker) {
                return reject(worker, e);
            }
        }
        None if !session.authenticated && worker.shared.table.load().auth_required() => {
            worker.shared.metrics.rejected.inc();
            return reject(
                worker,
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
        None => {}
    }
    if let Some(n) = setname {
        session.name = Some(Bytes::copy_from_slice(n));
    }
    session.resp3 = proto == 3;
    let version = worker.shared.redis_version.load();
    let s = |v: &str| reply::bulk(v.as_bytes());
    let r = reply::map(
        &[
            ("server", s("redis")),
            ("version", s(&version)),
            ("proto", reply::int(proto)),
            ("id", reply::int(session.id as i64)),
            ("mode", s("standalone")),
            ("role", s("master")),
            ("modules", reply::array(vec![])),
        ],
        session.resp3,
    );
    local(worker, Class::Unknown, r)
}

fn valid_name(n: &[u8]) -> Result<(), String> {
    if n.iter().any(|b| *b <= b' ' || *b > b'~') {
        return Err(
            "ERR Client names cannot contain spaces, newlines or special characters.".into(),
        );
    }
    Ok(())
}

/// `CLIENT LIST [TYPE normal|pubsub] [ID id ...]`: the proxy's own clients.
fn client_list(filters: &[&[u8]], worker: &Worker) -> Step {
    let mut ty: Option<bool> = None;
    let mut ids: Option<Vec<u64>> = None;
    let mut i = 0;
    while i < filters.len() {
        let key = filters[i].to_ascii_lowercase();
        match key.as_slice() {
            b"type" if i + 1 < filters.len() => {
                ty = match filters[i + 1].to_ascii_lowercase().as_slice() {
                    b"normal" => Some(false),
                    b"pubsub" => Some(true),
                    _ => return reject(worker, "ERR Unknown client type"),
                };
                i += 2;
            }
            b"id" if i + 1 < filters.len() => {
                let mut v = Vec::new();
                for a in &filters[i + 1..] {
                    match std::str::from_utf8(a).ok().and_then(|s| s.parse().ok()) {
                        Some(id) => v.push(id),
                        None => return reject(worker, "ERR Invalid client ID"),
                    }
                }
                ids = Some(v);
                i = filters.len();
            }
            _ => return reject(worker, "ERR syntax error"),
        }
    }
    let mut out = String::new();
    for c in worker.shared.clients.list() {
        if ty.is_some_and(|p| p != c.is_pubsub())
            || ids.as_ref().is_some_and(|v| !v.contains(&c.id))
        {
            continue;
        }
        out.push_str(&c.line());
        out.push('\n');
    }
    local(worker, Class::Admin, reply::bulk(out.as_bytes()))
}

/// `CLIENT KILL addr:port`, or `CLIENT KILL [ID id] [ADDR a] [LADDR a] [TYPE t] [USER u]
/// [SKIPME yes|no]`: closes proxy clients.
fn client_kill(filters: &[&[u8]], session: &Session, worker: &Worker) -> Step {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if let [addr] = filters {
        // The old form: one address, an error when nobody matches, no SKIPME.
        let addr = text(addr);
        return match worker
            .shared
            .clients
            .list()
            .into_iter()
            .find(|c| c.addr.to_string() == addr)
        {
            Some(c) => {
                c.kill.raise();
                local(worker, Class::Admin, reply::ok())
            }
            None => reject(worker, "ERR No such client"),
        };
    }
    if filters.is_empty() || !filters.len().is_multiple_of(2) {
        return reject(worker, "ERR syntax error");
    }
    let (mut id, mut addr, mut laddr, mut ty, mut skipme) = (None, None, None, None, true);
    for pair in filters.chunks(2) {
        let value = pair[1];
        match pair[0].to_ascii_lowercase().as_slice() {
            b"id" => match std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                Some(v) => id = Some(v),
                None => return reject(worker, "ERR client-id should be greater than 0"),
            },
            b"addr" => addr = Some(text(value)),
            b"laddr" => laddr = Some(text(value)),
            b"type" => {
                ty = match value.to_ascii_lowercase().as_slice() {
                    b"normal" => Some(false),
                    b"pubsub" => Some(true),
                    b"master" | b"replica" | b"slave" => {
                        return local(worker, Class::Admin, reply::int(0));
                    }
                    _ => {
                        return reject(
                            worker,
                            &format!("ERR Unknown client type '{}'", text(value)),
                        );
                    }
                }
            }
            // Every proxy client is the default user until proxy users exist.
            b"user" if value != b"default" => return local(worker, Class::Admin, reply::int(0)),
            b"user" => {}
            b"skipme" => match value.to_ascii_lowercase().as_slice() {
                b"yes" => skipme = true,
                b"no" => skipme = false,
                _ => return reject(worker, "ERR syntax error"),
            },
            _ => return reject(worker, "ERR syntax error"),
        }
    }
    let mut killed = 0;
    for c in worker.shared.clients.list() {
        let matches = id.is_none_or(|v| v == c.id)
            && addr.as_ref().is_none_or(|a| *a == c.addr.to_string())
            && laddr.as_ref().is_none_or(|a| *a == c.laddr.to_string())
            && ty.is_none_or(|p| p == c.is_pubsub())
            && !(skipme && c.id == session.id);
        if matches {
            c.kill.raise();
            killed += 1;
        }
    }
    local(worker, Class::Admin, reply::int(killed))
}

fn client(args: &[&[u8]], name: &[u8], session: &mut Session, worker: &Worker) -> Step {
    let Some(sub) = args.get(1) else {
        return reject(worker, &wrong_args(name));
    };
    let class = Class::Unknown;
    let lower = sub.to_ascii_lowercase();
    match (lower.as_slice(), args.len()) {
        (b"setname", 3) => match valid_name(args[2]) {
            Ok(()) => {
                session.name = (!args[2].is_empty()).then(|| Bytes::copy_from_slice(args[2]));
                local(worker, class, reply::ok())
            }
            Err(e) => reject(worker, &e),
        },
        (b"getname", 2) => local(
            worker,
            class,
            match &session.name {
                Some(n) => reply::bulk(n),
                None => reply::null(session.resp3),
            },
        ),
        (b"id", 2) => local(worker, class, reply::int(session.id as i64)),
        (b"info", 2) => {
            let line = format!("{}\n", session.client.line());
            local(worker, class, reply::bulk(line.as_bytes()))
        }
        (b"list", _) => client_list(&args[2..], worker),
        (b"reply", 3) => match args[2].to_ascii_lowercase().as_slice() {
            b"on" => {
                session.reply_off = false;
                local(worker, class, reply::ok())
            }
            b"off" => {
                session.reply_off = true;
                Step::Silent
            }
            b"skip" => {
                session.skip_next = true;
                Step::Silent
            }
            _ => reject(worker, "ERR syntax error"),
        },
        (b"no-evict", 3) => match args[2].to_ascii_lowercase().as_slice() {
            b"on" => {
                session.no_evict = true;
                local(worker, class, reply::ok())
            }
            b"off" => {
                session.no_evict = false;
                local(worker, class, reply::ok())
            }
            _ => reject(worker, "ERR syntax error"),
        },
        // Not tracking (tracking clients' CLIENT commands go to their connection).
        (b"caching", 3) => reject(
            worker,
            "ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled",
        ),
        (b"getredir", 2) => local(worker, class, reply::int(-1)),
        (b"trackinginfo", 2) => {
            use redis_protocol::resp2::types::BytesFrame as F;
            let s = |v: &'static str| F::BulkString(Bytes::from_static(v.as_bytes()));
            let pairs = [
                ("flags", reply::array(vec![s("off")])),
                ("redirect", reply::int(-1)),
                ("prefixes", reply::array(vec![])),
            ];
            local(worker, class, reply::map(&pairs, session.resp3))
        }
        (b"kill", _) => client_kill(&args[2..], session, worker),
        // Client libraries announce themselves (redis-py, redis-rs, ...); the proxy's own
        // backend connections are shared, so the announcement stays with the proxy.
        (b"setinfo", 4)
            if args[2].eq_ignore_ascii_case(b"lib-name")
                || args[2].eq_ignore_ascii_case(b"lib-ver") =>
        {
            local(worker, class, reply::ok())
        }
        (
            b"setname" | b"getname" | b"id" | b"reply" | b"no-evict" | b"caching" | b"getredir"
            | b"trackinginfo",
            _,
        ) => reject(
            worker,
            &format!(
                "ERR wrong number of arguments for 'client|{}' command",
                String::from_utf8_lossy(&lower)
            ),
        ),
        (b"help", 2) => {
            use redis_protocol::resp2::types::BytesFrame as F;
            let lines = [
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are (answered by the Pivot proxy for its own clients):",
                "CACHING (YES|NO)",
                "GETNAME",
                "GETREDIR",
                "ID",
                "INFO",
                "KILL <ip:port> | <option> <value> [<option> <value> [...]]",
                "LIST [TYPE (NORMAL|PUBSUB)] [ID <client-id> [<client-id> ...]]",
                "NO-EVICT (ON|OFF)",
                "REPLY (ON|OFF|SKIP)",
                "SETINFO (LIB-NAME|LIB-VER) <value>",
                "SETNAME <name>",
                "TRACKING (ON|OFF) [BCAST] [PREFIX <prefix> [...]] [OPTIN] [OPTOUT] [NOLOOP]",
                "TRACKINGINFO",
                "HELP",
            ];
            let items = lines
                .iter()
                .map(|l| F::SimpleString(Bytes::from_static(l.as_bytes())))
                .collect();
            local(worker, class, reply::array(items))
        }
        (b"pause" | b"unpause" | b"unblock", _) => reject(
            worker,
            &format!(
                "ERR pivot: 'client {}' is not supported by this proxy (it would act on the proxy's shared connections to Redis)",
                String::from_utf8_lossy(&lower)
            ),
        ),
        _ => reject(
            worker,
            &format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(sub)
            ),
        ),
    }
}
