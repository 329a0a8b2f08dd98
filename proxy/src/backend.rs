//! Backend connections to Redis nodes and the per-worker pool of them.
//!
//! One [`Backend`] is one TCP connection to one Redis node. Its task runs two halves side
//! by side:
//!
//! - the writer takes every request queued since its last write (from all clients), registers
//!   each request's reply slot in the in-flight FIFO *before* the bytes reach the socket, and
//!   writes the batch with one syscall;
//! - the reader splits reply frames off its buffer (zero copy) and completes the oldest slot,
//!   since Redis answers in order.
//!
//! A connection belongs to a [`PoolKey`]: node, database and protocol version. Right after
//! connecting it sends what that key needs (`HELLO 3`, `SELECT n`) and checks the replies
//! before it takes requests, so a request never runs in the wrong database or protocol.
//!
//! The [`Pool`] holds two kinds: *shared* connections (one per key, multiplexing every client
//! of the worker) and *dedicated* ones, lent to one client for state a shared connection
//! cannot carry (a transaction, a blocking command) and taken back for reuse when that state
//! has ended cleanly.
//!
//! Bounds: the request queue (`queue_depth` requests; a full queue stops the client that
//! sends, which stops reading its socket), the in-flight FIFO (`max_inflight`), the reply
//! frame size, and the number of dedicated connections.
//!
//! A connection is retired when its node leaves the topology or loses the master role: it
//! takes no new requests, fails the queued ones as "not sent", waits for the replies of the
//! requests already on the wire (at most `drain_grace`, and no longer than `stall` past the
//! oldest unanswered one), then closes.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::metrics::{BackendFailure, Metrics};
use crate::queue::Queue;
use crate::resp::{Mode, Scanner};
use crate::routing::{Credentials, NodeAddr};

/// Why a request got no reply from Redis.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The request never reached the node: safe to send elsewhere.
    #[error("cannot reach {addr}: {reason}")]
    NotSent {
        /// The node.
        addr: NodeAddr,
        /// Why.
        reason: String,
    },
    /// The request was written and no reply came: it may or may not have run.
    #[error("connection to {addr} lost ({reason}); the command may or may not have been applied")]
    Lost {
        /// The node.
        addr: NodeAddr,
        /// Why.
        reason: String,
    },
}

impl BackendError {
    /// The node refused the proxy's handshake (wrong backend credentials, unknown
    /// database): a configuration error, not a failover; sending again will not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, BackendError::NotSent { reason, .. } if reason.starts_with("handshake refused"))
    }

    /// The error as the client sees it.
    pub fn to_resp(&self) -> Bytes {
        crate::reply::error(&format!("ERR pivot: {self}"))
    }
}

/// What a client gets back for one request.
pub type Reply = Result<Bytes, BackendError>;

/// Where a request's reply goes.
#[derive(Debug)]
pub enum ReplyTo {
    /// To whoever holds the receiver: a retry, a follow-up, the proxy's own requests.
    Oneshot(oneshot::Sender<Reply>),
    /// To a client's reply FIFO (its inbox); the reply counts against the client's output
    /// limit (see `Client::add_output`).
    Client(crate::inbox::Ticket),
}

impl ReplyTo {
    fn send(self, r: Reply) {
        match self {
            // The receiver may be gone: the reply is dropped here.
            ReplyTo::Oneshot(tx) => {
                let _ = tx.send(r);
            }
            ReplyTo::Client(ticket) => ticket.deliver(r),
        }
    }

    fn client(&self) -> Option<&Arc<crate::clients::Client>> {
        match self {
            ReplyTo::Oneshot(_) => None,
            ReplyTo::Client(ticket) => Some(ticket.client()),
        }
    }
}

/// One request on its way to a backend.
#[derive(Debug)]
pub struct Request {
    /// The request's bytes exactly as the client sent them.
    pub frame: Bytes,
    /// Completed with the reply (or the failure).
    pub reply: ReplyTo,
    /// Reply frames the request produces: 1, except for `SUBSCRIBE a b c` and friends,
    /// which Redis answers with one confirmation per channel. They come back as one reply.
    pub frames: usize,
}

impl Request {
    /// A request answered by one frame, to the holder of `reply`'s receiver.
    pub fn new(frame: Bytes, reply: oneshot::Sender<Reply>) -> Self {
        Request {
            frame,
            reply: ReplyTo::Oneshot(reply),
            frames: 1,
        }
    }
}

/// Which connections can serve a request: same node, same database, same protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The node.
    pub addr: NodeAddr,
    /// Database selected on the connection.
    pub db: u32,
    /// The connection speaks RESP3 (`HELLO 3`).
    pub resp3: bool,
}

impl PoolKey {
    /// Database 0, RESP2: what a fresh client connection uses.
    pub fn plain(addr: NodeAddr) -> Self {
        PoolKey {
            addr,
            db: 0,
            resp3: false,
        }
    }

    /// The commands that put a fresh connection in this key's state.
    fn handshake(&self) -> Vec<Vec<u8>> {
        let mut cmds = Vec::new();
        if self.resp3 {
            cmds.push(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n".to_vec());
        }
        if self.db != 0 {
            let db = self.db.to_string();
            cmds.push(format!("*2\r\n$6\r\nSELECT\r\n${}\r\n{db}\r\n", db.len()).into_bytes());
        }
        cmds
    }
}

impl fmt::Display for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/db{}", self.addr, self.db)?;
        if self.resp3 {
            f.write_str("/resp3")?;
        }
        Ok(())
    }
}

/// Tunables of backend connections.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// TCP connect (and handshake) timeout.
    pub connect_timeout: Duration,
    /// Requests queued per connection before senders wait.
    pub queue_depth: usize,
    /// Requests on the wire per connection before the writer waits.
    pub max_inflight: usize,
    /// Largest reply frame accepted.
    pub max_reply_bytes: usize,
    /// How long a retired connection waits for in-flight replies.
    pub drain_grace: Duration,
    /// A request unanswered for this long means the node has stopped answering: a retired
    /// connection stops waiting for it.
    pub stall: Duration,
    /// After a failed connect, how long the pool answers "unreachable" before trying again.
    pub reconnect_backoff: Duration,
    /// Dedicated connections (transactions, blocking commands) a worker may have open.
    pub max_dedicated: usize,
    /// Idle dedicated connections kept per pool key for reuse.
    pub max_idle_dedicated: usize,
    /// Sent first on every new connection (`AUTH`), when set.
    pub credentials: Option<Arc<Credentials>>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            connect_timeout: Duration::from_secs(1),
            queue_depth: 4096,
            max_inflight: 16384,
            max_reply_bytes: 1 << 30,
            drain_grace: Duration::from_secs(1),
            stall: Duration::from_millis(250),
            reconnect_backoff: Duration::from_millis(100),
            max_dedicated: 4096,
            max_idle_dedicated: 64,
            credentials: None,
        }
    }
}

struct Pending {
    reply: ReplyTo,
    /// When the batch holding this request was written (one clock read per batch).
    sent_at: Instant,
    /// Reply frames still expected.
    frames_left: usize,
    /// Frames received so far of a multi-frame reply.
    acc: Option<BytesMut>,
}

struct Shared {
    key: PoolKey,
    /// False once the connection failed or was retired: the pool replaces it.
    alive: AtomicBool,
    /// Set by the pool; the connection's task closes it (after draining).
    retire: CancellationToken,
    /// Set when the connection's user is done with it: what is queued is still sent, and
    /// the connection closes once everything is answered.
    finish: CancellationToken,
    /// Set to close at once, failing whatever is in flight (a client that went away while
    /// blocked: closing is how Redis learns to unblock).
    abort: CancellationToken,
    /// Requests accepted and not yet completed (queued or on the wire).
    outstanding: AtomicUsize,
    /// Its stall was counted in the metrics.
    stall_reported: AtomicBool,
    /// Reply slots of requests written to the socket, oldest first. Only the connection's
    /// own task touches it (writer pushes, reader pops); the lock is never contended.
    inflight: Mutex<VecDeque<Pending>>,
    /// Permits for `max_inflight` requests on the wire.
    window: Semaphore,
    /// Why the connection died, for requests that arrive after.
    failure: Mutex<Option<String>>,
    /// When the connection died.
    died_at: Mutex<Option<Instant>>,
    /// Where out-of-band frames go (Pub/Sub messages, RESP3 pushes): set on a subscriber
    /// connection, whose client takes them; elsewhere such a frame is a protocol error.
    sink: Option<mpsc::Sender<Bytes>>,
    /// Requests accepted and not yet taken by the writer (`queue_depth`, see `queue`).
    queue: Queue<Request>,
}

impl Shared {
    /// Completes one request: every accepted request goes through here exactly once.
    fn complete(&self, reply: ReplyTo, r: Reply) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        reply.send(r);
    }
}

/// Handle to one backend connection; cheap to clone (one reference count).
#[derive(Clone)]
pub struct Backend {
    shared: Arc<Handle>,
}

/// What the handles share. Dropped with the last of them: the connection then sends what
/// is queued and closes once it is answered (nobody can use it any more).
struct Handle(Arc<Shared>);

impl std::ops::Deref for Handle {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.queue.finish();
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("key", &self.shared.key.to_string())
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl Backend {
    /// Opens a connection for `key` on the current runtime.
    pub fn spawn(key: PoolKey, opts: BackendOptions, metrics: Arc<Metrics>) -> Backend {
        Self::spawn_with_sink(key, opts, metrics, None)
    }

    /// Opens a connection whose out-of-band frames (Pub/Sub messages) go to `sink`.
    pub fn spawn_with_sink(
        key: PoolKey,
        opts: BackendOptions,
        metrics: Arc<Metrics>,
        sink: Option<mpsc::Sender<Bytes>>,
    ) -> Backend {
        let shared = Arc::new(Shared {
            key: key.clone(),
            alive: AtomicBool::new(true),
            retire: CancellationToken::new(),
            finish: CancellationToken::new(),
            abort: CancellationToken::new(),
            outstanding: AtomicUsize::new(0),
            stall_reported: AtomicBool::new(false),
            inflight: Mutex::new(VecDeque::new()),
            window: Semaphore::new(opts.max_inflight),
            failure: Mutex::new(None),
            died_at: Mutex::new(None),
            sink,
            queue: Queue::new(opts.queue_depth),
        });
        // Entered on every poll: only worth it when debug events will use it (the warnings
        // name the connection themselves).
        let span = if tracing::enabled!(target: "pivot_proxy::backend", tracing::Level::DEBUG) {
            info_span!("backend", key = %key)
        } else {
            tracing::Span::none()
        };
        tokio::spawn(connection(shared.clone(), opts, metrics).instrument(span));
        Backend {
            shared: Arc::new(Handle(shared)),
        }
    }

    /// The node this connection goes to.
    pub fn addr(&self) -> &NodeAddr {
        &self.shared.key.addr
    }

    /// Node, database and protocol of this connection.
    pub fn key(&self) -> &PoolKey {
        &self.shared.key
    }

    /// False once the connection failed or was retired.
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }

    /// True when the oldest request on the wire has waited `stall` or longer for its reply:
    /// the node has probably stopped answering (frozen, partitioned), or is running a very
    /// slow command. Either way, new requests should not pile up behind it.
    pub fn stalled(&self, stall: Duration) -> bool {
        lock(&self.shared.inflight)
            .front()
            .is_some_and(|p| p.sent_at.elapsed() >= stall)
    }

    /// True the first time it is called on this connection (to count a stall once).
    pub fn first_stall_report(&self) -> bool {
        !self.shared.stall_reported.swap(true, Ordering::AcqRel)
    }

    /// Requests accepted and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.shared.outstanding.load(Ordering::Acquire)
    }

    /// Queues a request, then waits while the queue is full. A connection that is gone
    /// completes the request with [`BackendError::NotSent`].
    pub async fn send(&self, req: Request) {
        self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
        match self.shared.queue.push_one(req) {
            Ok(false) => {}
            Ok(true) => self.room().await,
            Err(req) => {
                let err = self.not_sent();
                self.shared.complete(req.reply, Err(err));
            }
        }
    }

    /// Queues every request of `batch` (one read's worth, in order), leaving it empty; true
    /// when the queue is now full, and the caller should wait for [`Backend::room`] before
    /// it sends more. A connection that is gone completes the requests with
    /// [`BackendError::NotSent`].
    pub fn send_batch(&self, batch: &mut Vec<Request>) -> bool {
        self.shared
            .outstanding
            .fetch_add(batch.len(), Ordering::AcqRel);
        match self.shared.queue.push(batch) {
            Ok(full) => full,
            Err(crate::queue::Closed) => {
                let err = self.not_sent();
                for req in batch.drain(..) {
                    self.shared.complete(req.reply, Err(err.clone()));
                }
                false
            }
        }
    }

    /// Waits until the connection's queue has room (or the connection is gone).
    pub async fn room(&self) {
        self.shared.queue.room().await;
    }

    fn not_sent(&self) -> BackendError {
        let reason = lock(&self.shared.failure)
            .clone()
            .unwrap_or_else(|| "connection closed".into());
        BackendError::NotSent {
            addr: self.shared.key.addr.clone(),
            reason,
        }
    }

    /// Stops taking requests and closes once the in-flight ones are answered.
    pub fn retire(&self) {
        self.shared.alive.store(false, Ordering::Release);
        self.shared.retire.cancel();
    }

    /// Closes once what was already queued has been sent and answered (for a connection its
    /// user is done with; [`Backend::retire`] is for one whose node changed role).
    pub fn finish(&self) {
        self.shared.alive.store(false, Ordering::Release);
        self.shared.finish.cancel();
    }

    /// Closes now; whatever is in flight fails as possibly applied.
    pub fn abort(&self) {
        self.shared.alive.store(false, Ordering::Release);
        self.shared.abort.cancel();
    }

    fn died_at(&self) -> Option<Instant> {
        *lock(&self.shared.died_at)
    }

    /// True when both handles are the same connection.
    pub fn same(&self, other: &Backend) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave their data inconsistent (a queue of
    // reply slots, an optional string, a map of handles): keep going with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How a connection ended.
enum End {
    /// Retired or unused, and every in-flight reply was delivered.
    Closed,
    /// Failed; the reason goes to every request still waiting.
    Failed(BackendFailure, String),
}

async fn connection(shared: Arc<Shared>, opts: BackendOptions, metrics: Arc<Metrics>) {
    let key = shared.key.clone();
    let end = match tokio::time::timeout(
        opts.connect_timeout,
        open(&key, opts.credentials.as_deref()),
    )
    .await
    {
        Err(_) => End::Failed(BackendFailure::Connect, "connect timed out".into()),
        Ok(Err(reason)) => End::Failed(BackendFailure::Connect, reason),
        Ok(Ok((rd, wr))) => {
            debug!("connected");
            metrics.backend_connections.inc();
            let end = tokio::select! {
                biased;
                _ = shared.abort.cancelled() => End::Failed(BackendFailure::Lost, "closed by the proxy".into()),
                end = run(&shared, rd, wr, &opts) => end,
            };
            metrics.backend_connections.dec();
            end
        }
    };
    // From here on nothing is sent: the handle reports dead, queued requests fail as not
    // sent, requests on the wire as possibly applied.
    shared.alive.store(false, Ordering::Release);
    *lock(&shared.died_at) = Some(Instant::now());
    let reason = match &end {
        End::Closed => "connection retired".to_string(),
        End::Failed(kind, reason) => {
            if !shared.abort.is_cancelled() {
                metrics.backend_failure(*kind);
                warn!(backend = %key, %reason, "backend connection failed");
            }
            reason.clone()
        }
    };
    *lock(&shared.failure) = Some(reason.clone());
    let queued = shared.queue.close();
    let lost: Vec<Pending> = lock(&shared.inflight).drain(..).collect();
    for p in lost {
        let err = BackendError::Lost {
            addr: key.addr.clone(),
            reason: reason.clone(),
        };
        shared.complete(p.reply, Err(err));
    }
    for req in queued {
        let err = BackendError::NotSent {
            addr: key.addr.clone(),
            reason: reason.clone(),
        };
        shared.complete(req.reply, Err(err));
    }
}

/// Connects, authenticates, and puts the connection in the key's state (protocol,
/// database).
async fn open(
    key: &PoolKey,
    credentials: Option<&Credentials>,
) -> Result<(OwnedReadHalf, OwnedWriteHalf), String> {
    let mut stream = TcpStream::connect((&*key.addr.host, key.addr.port))
        .await
        .map_err(|e| e.to_string())?;
    if let Err(e) = stream.set_nodelay(true) {
        warn!(backend = %key, error = %e, "cannot set TCP_NODELAY");
    }
    let mut handshake = key.handshake();
    if let Some(c) = credentials {
        handshake.insert(0, c.auth_command());
    }
    if !handshake.is_empty() {
        stream
            .write_all(&handshake.concat())
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let mut buf = BytesMut::with_capacity(1024);
        let mut scanner = Scanner::new(Mode::Reply, 1 << 20);
        let mut answered = 0;
        while answered < handshake.len() {
            if stream
                .read_buf(&mut buf)
                .await
                .map_err(|e| format!("handshake: {e}"))?
                == 0
            {
                return Err("closed by the server during the handshake".into());
            }
            while let Some(frame) = scanner.scan(&buf).map_err(|e| format!("handshake: {e}"))? {
                let reply = buf.split_to(frame.len);
                if matches!(reply.first(), Some(b'-' | b'!')) {
                    let text = String::from_utf8_lossy(&reply[1..]).trim().to_string();
                    return Err(format!("handshake refused: {text}"));
                }
                answered += 1;
            }
        }
        if !buf.is_empty() {
            return Err("unexpected bytes after the handshake".into());
        }
    }
    Ok(stream.into_split())
}

async fn run(shared: &Shared, rd: OwnedReadHalf, wr: OwnedWriteHalf, opts: &BackendOptions) -> End {
    let reader = read_replies(shared, rd, opts.max_reply_bytes);
    tokio::pin!(reader);
    let mut wr = wr;
    let mut writer = Box::pin(write_requests(shared, &mut wr));
    tokio::select! {
        end = &mut reader => end,
        end = &mut writer => match end {
            Some(end) => end,
            None => {
                // Retired or no longer used: what is queued was routed while this node had
                // its old role and is not sent; the requests on the wire may finish.
                drop(writer);
                shared.alive.store(false, Ordering::Release);
                for req in shared.queue.close() {
                    let err = BackendError::NotSent {
                        addr: shared.key.addr.clone(),
                        reason: "the node's role changed before the request was sent".into(),
                    };
                    shared.complete(req.reply, Err(err));
                }
                drain(shared, &mut reader, opts).await
            }
        },
    }
}

/// Lets the requests on the wire of a retired connection finish, up to `drain_grace`.
///
/// A node whose oldest request has been unanswered for `stall` is either frozen (a stopped
/// process, a partition: its requests will never be answered) or holding writes back
/// (`CLIENT PAUSE WRITE`, as a planned failover does: they will be answered, with
/// `-READONLY` once the node is a replica, and then retried elsewhere). A probe on a fresh
/// connection tells them apart: a node that answers it is alive, and the drain keeps
/// waiting; one that doesn't is frozen, and its requests fail at once rather than at the
/// end of the grace period.
async fn drain(
    shared: &Shared,
    reader: &mut (impl std::future::Future<Output = End> + Unpin),
    opts: &BackendOptions,
) -> End {
    let deadline = tokio::time::Instant::now() + opts.drain_grace;
    let tick = (opts.stall / 4).max(Duration::from_millis(5));
    let mut alive: Option<bool> = None;
    loop {
        let oldest = lock(&shared.inflight).front().map(|p| p.sent_at.elapsed());
        match oldest {
            None => return End::Closed,
            Some(age) if age >= opts.stall => {
                if alive.is_none() {
                    let probe =
                        answers_probe(&shared.key.addr, opts.stall.min(Duration::from_millis(100)));
                    let outcome = tokio::select! {
                        end = &mut *reader => return end,
                        ok = probe => ok,
                    };
                    alive = Some(outcome);
                }
                if alive == Some(false) {
                    return End::Failed(
                        BackendFailure::DrainTimeout,
                        format!("no reply for {} ms", age.as_millis()),
                    );
                }
            }
            Some(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return End::Failed(
                BackendFailure::DrainTimeout,
                format!(
                    "no reply within the drain grace period of {:?}",
                    opts.drain_grace
                ),
            );
        }
        tokio::select! {
            end = &mut *reader => return end,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

/// True when `addr` answers a `PING` on a new connection within `timeout` (any reply
/// counts, `-NOAUTH` included: the node is processing commands).
pub(crate) async fn answers_probe(addr: &NodeAddr, timeout: Duration) -> bool {
    let probe = async {
        let mut s = TcpStream::connect((&*addr.host, addr.port)).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        (n > 0).then_some(())
    };
    tokio::time::timeout(timeout, probe)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// Requests the writer took from the queue and has not yet put in the in-flight FIFO.
/// Dropped with some left (the connection ended while the writer waited), they complete as
/// not sent: they never reached the socket, so they are safe to send elsewhere.
struct Taken<'a> {
    shared: &'a Shared,
    reqs: VecDeque<Request>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        for req in self.reqs.drain(..) {
            let err = BackendError::NotSent {
                addr: self.shared.key.addr.clone(),
                reason: "the connection ended before the request was sent".into(),
            };
            self.shared.complete(req.reply, Err(err));
        }
    }
}

/// Largest batch the writer copies into one buffer before writing.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Returns `None` when the connection is retired or every handle is gone, `Some` on failure.
/// Takes the write half by reference: it must outlive a retirement's drain, because
/// dropping it sends a FIN, and Redis closes a client at EOF, dropping the commands it has
/// not run yet (those waiting out a `CLIENT PAUSE`, say) instead of answering them.
async fn write_requests(shared: &Shared, wr: &mut OwnedWriteHalf) -> Option<End> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // Made once, not per batch: each would add and remove a waiter under a lock.
    let retired = shared.retire.cancelled();
    let finished = shared.finish.cancelled();
    tokio::pin!(retired, finished);
    // Requests in the last write.
    let mut last_batch = 0usize;
    // Taken from the queue, not yet written: held across the waits below, so that if the
    // connection ends meanwhile (this future is dropped), they fail as not sent and are
    // retried instead of vanishing.
    let mut taken = Taken {
        shared,
        reqs: VecDeque::new(),
    };
    // Reply slots of the batch being built (kept for its capacity).
    let mut batch: VecDeque<Pending> = VecDeque::new();
    loop {
        if taken.reqs.is_empty() {
            let more = tokio::select! {
                biased;
                _ = &mut retired => false,
                more = shared.queue.take(&mut taken.reqs) => more,
                // Only once nothing is queued (`take` above is polled first).
                _ = &mut finished => shared.queue.try_take(&mut taken.reqs),
            };
            if !more {
                // Requests still queued were routed while this node had its old role: they
                // must not be sent now (a demoted master must get no writes).
                return None;
            }
        }
        if last_batch > 1 {
            // Under load (the last batch held several requests), let the worker's other
            // ready tasks run first, for one turn of its event loop (tokio runs a yielded
            // task after polling for I/O): the clients whose requests arrived meanwhile
            // queue theirs too, and Redis reads them all at once. Larger batches are what
            // make Redis's CPU per request fall behind a multiplexer. A client alone that
            // sends one request at a time is not delayed (its batches hold one request); a
            // pipeline waits one turn of the loop (no timer: microseconds).
            tokio::task::yield_now().await;
            if shared.retire.is_cancelled() {
                // Dropping what was taken fails it as not sent: routed while the node had
                // its old role.
                return None;
            }
            shared.queue.try_take(&mut taken.reqs);
        }
        last_batch = 0;
        let sent_at = Instant::now();
        while buf.len() < MAX_BATCH_BYTES
            && (!taken.reqs.is_empty() || shared.queue.try_take(&mut taken.reqs))
        {
            // Room on the wire first; the reader returns permits as replies arrive.
            match shared.window.try_acquire() {
                Ok(permit) => permit.forget(),
                Err(_) => {
                    // The slots taken so far go to the FIFO before any wait: a connection
                    // that fails meanwhile fails them with the rest.
                    lock(&shared.inflight).append(&mut batch);
                    match shared.window.acquire().await {
                        Ok(permit) => permit.forget(),
                        Err(_) => {
                            return Some(End::Failed(BackendFailure::Lost, "closed".into()));
                        }
                    }
                }
            }
            let Some(req) = taken.reqs.pop_front() else {
                break;
            };
            last_batch += 1;
            buf.extend_from_slice(&req.frame);
            batch.push_back(Pending {
                reply: req.reply,
                sent_at,
                frames_left: req.frames.max(1),
                acc: None,
            });
        }
        // Every slot of the batch registered under one lock, before its bytes are written.
        lock(&shared.inflight).append(&mut batch);
        if buf.is_empty() {
            continue;
        }
        if let Err(e) = wr.write_all(&buf).await {
            return Some(End::Failed(
                BackendFailure::Lost,
                format!("write failed: {e}"),
            ));
        }
        // Written: room in the queue for as many.
        shared.queue.release(last_batch);
        buf.clear();
        if buf.capacity() > 1024 * 1024 {
            // Don't keep a huge buffer around after one large request.
            buf = BytesMut::with_capacity(16 * 1024);
        }
    }
}

async fn read_replies(shared: &Shared, mut rd: OwnedReadHalf, max_reply: usize) -> End {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut read_hint = 8 * 1024;
    let mut scanner = Scanner::new(Mode::Reply, max_reply);
    loop {
        reserve_with(&mut buf, scanner.need(), read_hint);
        match rd.read_buf(&mut buf).await {
            Ok(0) => return End::Failed(BackendFailure::Lost, "closed by the server".into()),
            // Room for twice what came last time: a connection many clients share gets
            // its replies in a few large reads, not many 8 KiB ones (below the allocator's
            // mmap threshold, so a buffer is never a fresh mapping).
            Ok(n) => read_hint = (n * 2).clamp(8 * 1024, 64 * 1024),
            Err(e) => return End::Failed(BackendFailure::Lost, format!("read failed: {e}")),
        }
        let mut answered = 0;
        loop {
            // Every reply of the read matched with its request under one lock (no await
            // while it is held), up to an out-of-band frame for the sink.
            let for_sink = {
                let mut inflight = lock(&shared.inflight);
                loop {
                    let frame = match scanner.scan(&buf) {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break None,
                        Err(e) => return End::Failed(BackendFailure::Protocol, e.to_string()),
                    };
                    let bytes = buf.split_to(frame.len).freeze();
                    // On a connection with a sink, out-of-band frames go there, and so does
                    // anything that answers no request: the stream `MONITOR` starts.
                    if shared.sink.is_some()
                        && (crate::resp::is_out_of_band(&bytes) || inflight.is_empty())
                    {
                        break Some(bytes);
                    }
                    let Some(p) = inflight.front_mut() else {
                        return End::Failed(
                            BackendFailure::Protocol,
                            "reply received with no request in flight".into(),
                        );
                    };
                    if p.frames_left > 1 {
                        // More frames of a multi-frame reply to come.
                        p.frames_left -= 1;
                        p.acc
                            .get_or_insert_with(BytesMut::new)
                            .extend_from_slice(&bytes);
                        continue;
                    }
                    let Some(p) = inflight.pop_front() else {
                        continue;
                    };
                    answered += 1;
                    let reply = match p.acc {
                        Some(mut acc) => {
                            acc.extend_from_slice(&bytes);
                            acc.freeze()
                        }
                        None => bytes,
                    };
                    if let Some(client) = p.reply.client() {
                        client.add_output(reply.len());
                    }
                    shared.complete(p.reply, Ok(reply));
                }
            };
            let Some(bytes) = for_sink else { break };
            if let Some(sink) = &shared.sink
                && sink.send(bytes).await.is_err()
            {
                // The client that took the messages is gone.
                return End::Closed;
            }
        }
        shared.window.add_permits(answered);
        if !shared.alive.load(Ordering::Acquire) && lock(&shared.inflight).is_empty() {
            return End::Closed;
        }
    }
}

/// Makes room for the next read: at least `min` bytes, or what the current frame still
/// needs (up to 4 MiB at a time).
pub(crate) fn reserve_with(buf: &mut BytesMut, need: usize, min: usize) {
    let want = need
        .saturating_sub(buf.len())
        .clamp(min, (4 * 1024 * 1024).max(min));
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
    }
}

#[derive(Debug, Default)]
struct Conns {
    /// Credentials for new connections (the service's, from the routing table).
    credentials: Option<Arc<Credentials>>,
    /// One multiplexed connection per key.
    shared: HashMap<PoolKey, Backend>,
    /// Dedicated connections ready for reuse, per key.
    idle: HashMap<PoolKey, Vec<Backend>>,
    /// Every dedicated connection opened and not yet known dead (lent or idle), so that a
    /// topology change retires them too.
    dedicated: Vec<Backend>,
}

/// The backend connections of one worker.
#[derive(Debug)]
pub struct Pool {
    conns: Mutex<Conns>,
    opts: BackendOptions,
    metrics: Arc<Metrics>,
}

impl Pool {
    /// An empty pool.
    pub fn new(opts: BackendOptions, metrics: Arc<Metrics>) -> Self {
        Pool {
            conns: Mutex::new(Conns::default()),
            opts,
            metrics,
        }
    }

    /// Sets the credentials new connections authenticate with; open ones keep theirs.
    pub fn set_credentials(&self, credentials: Option<Arc<Credentials>>) {
        lock(&self.conns).credentials = credentials;
    }

    fn opts(&self, conns: &Conns) -> BackendOptions {
        BackendOptions {
            credentials: conns.credentials.clone(),
            ..self.opts.clone()
        }
    }

    /// The shared connection for `key`, opened if needed. Right after a failed connect the
    /// dead handle is returned (requests fail fast as not sent) until the backoff passes.
    pub fn get(&self, key: &PoolKey) -> Backend {
        let mut conns = lock(&self.conns);
        if let Some(b) = conns.shared.get(key) {
            let backing_off = b
                .died_at()
                .is_some_and(|t| t.elapsed() < self.opts.reconnect_backoff);
            if b.is_alive() || backing_off {
                return b.clone();
            }
        }
        let b = Backend::spawn(key.clone(), self.opts(&conns), self.metrics.clone());
        conns.shared.insert(key.clone(), b.clone());
        b
    }

    /// A connection for one client's exclusive use: an idle one for `key` if there is one,
    /// else a new one. Give it back with [`Pool::release`] when the state that needed it has
    /// ended cleanly; otherwise retire or abort it.
    pub fn dedicated(&self, key: &PoolKey) -> Result<Backend, String> {
        let mut conns = lock(&self.conns);
        if let Some(idle) = conns.idle.get_mut(key) {
            while let Some(b) = idle.pop() {
                if b.is_alive() {
                    return Ok(b);
                }
            }
        }
        conns.dedicated.retain(Backend::is_alive);
        if conns.dedicated.len() >= self.opts.max_dedicated {
            return Err(format!(
                "too many dedicated backend connections (limit {}) for transactions and blocking commands",
                self.opts.max_dedicated
            ));
        }
        let b = Backend::spawn(key.clone(), self.opts(&conns), self.metrics.clone());
        conns.dedicated.push(b.clone());
        Ok(b)
    }

    /// A connection for one subscriber, never reused (its subscriptions are its state):
    /// counted and retired like the other dedicated connections, closed when done.
    pub fn subscriber(&self, key: &PoolKey, sink: mpsc::Sender<Bytes>) -> Result<Backend, String> {
        let mut conns = lock(&self.conns);
        conns.dedicated.retain(Backend::is_alive);
        if conns.dedicated.len() >= self.opts.max_dedicated {
            return Err(format!(
                "too many dedicated backend connections (limit {}) for subscribers, transactions and blocking commands",
                self.opts.max_dedicated
            ));
        }
        let b = Backend::spawn_with_sink(
            key.clone(),
            self.opts(&conns),
            self.metrics.clone(),
            Some(sink),
        );
        conns.dedicated.push(b.clone());
        Ok(b)
    }

    /// Takes back a dedicated connection whose state ended cleanly: no transaction, no
    /// WATCH, no blocking command still waiting (the caller knows which). Replies still on
    /// their way are fine: the next borrower's requests queue behind them, in order.
    pub fn release(&self, b: Backend) {
        let mut conns = lock(&self.conns);
        let is_ours = conns.dedicated.iter().any(|d| d.same(&b));
        let idle = conns.idle.entry(b.key().clone()).or_default();
        if is_ours && b.is_alive() && idle.len() < self.opts.max_idle_dedicated {
            idle.push(b);
        } else {
            b.finish();
        }
    }

    /// Retires every connection whose node `keep` rejects.
    pub fn retain(&self, keep: impl Fn(&NodeAddr) -> bool) {
        let mut conns = lock(&self.conns);
        conns.shared.retain(|key, b| {
            let k = keep(&key.addr);
            if !k {
                b.retire();
            }
            k
        });
        conns.idle.retain(|key, _| keep(&key.addr));
        conns.dedicated.retain(|b| {
            let k = keep(b.addr());
            if !k {
                b.retire();
            }
            k && b.is_alive()
        });
    }

    /// Retires every connection to `addr` (shared, idle and lent).
    pub fn retire(&self, addr: &NodeAddr) {
        self.retain(|a| a != addr);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio::sync::watch;

    /// A fake server that answers `+OK` to each request line, after `delay`, for the first
    /// `replies` lines; `seen` counts the lines it has read.
    async fn server(
        replies: usize,
        delay: Duration,
    ) -> (
        NodeAddr,
        watch::Receiver<usize>,
        tokio::task::JoinHandle<Vec<u8>>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (seen_tx, seen) = watch::channel(0);
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let mut sent = 0;
            loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let lines = got.iter().filter(|b| **b == b'\n').count();
                seen_tx.send_replace(lines);
                tokio::time::sleep(delay).await;
                while sent < lines.min(replies) {
                    s.write_all(b"+OK\r\n").await.unwrap();
                    sent += 1;
                }
            }
            got
        });
        (NodeAddr::new("127.0.0.1", port), seen, h)
    }

    async fn call(b: &Backend, frame: &'static [u8]) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        b.send(Request::new(Bytes::from_static(frame), tx)).await;
        rx
    }

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new())
    }

    #[tokio::test]
    async fn replies_in_order_and_counted() {
        let (addr, _, srv) = server(3, Duration::ZERO).await;
        let b = Backend::spawn(PoolKey::plain(addr), BackendOptions::default(), metrics());
        let r1 = call(&b, b"a\n").await;
        let r2 = call(&b, b"b\n").await;
        let r3 = call(&b, b"c\n").await;
        assert_eq!(b.outstanding(), 3);
        for r in [r1, r2, r3] {
            assert_eq!(&r.await.unwrap().unwrap()[..], b"+OK\r\n");
        }
        assert_eq!(b.outstanding(), 0);
        b.retire();
        assert_eq!(srv.await.unwrap(), b"a\nb\nc\n");
    }

    #[tokio::test]
    async fn unreachable_is_not_sent() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let pool = Pool::new(BackendOptions::default(), metrics());
        let key = PoolKey::plain(NodeAddr::new("127.0.0.1", port));
        let b = pool.get(&key);
        let r = call(&b, b"x\n").await.await.unwrap();
        assert!(matches!(r, Err(BackendError::NotSent { .. })), "{r:?}");
        // Within the backoff the same dead handle answers at once.
        let again = pool.get(&key);
        assert!(!again.is_alive());
        let r = call(&again, b"x\n").await.await.unwrap();
        assert!(
            r.unwrap_err()
                .to_resp()
                .starts_with(b"-ERR pivot: cannot reach")
        );
        assert_eq!(again.outstanding(), 0);
    }

    /// The writer holds a request it took from the queue across its waits (a yield under
    /// load, room on the wire); when the connection ends meanwhile and the writer is
    /// dropped, the request must fail as not sent (and be retried), not vanish (the client
    /// would get "request dropped by the proxy", and a read would not be retried).
    #[tokio::test]
    async fn a_request_taken_but_not_written_fails_as_not_sent_when_dropped() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = Backend::spawn(
            PoolKey::plain(NodeAddr::new("127.0.0.1", l.local_addr().unwrap().port())),
            BackendOptions::default(),
            metrics(),
        );
        let (tx, rx) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        b.shared.outstanding.fetch_add(2, Ordering::AcqRel);
        let mut taken = Taken {
            shared: &b.shared,
            reqs: VecDeque::from([
                Request::new(Bytes::from_static(b"GET k\r\n"), tx2),
                Request::new(Bytes::from_static(b"GET k\r\n"), tx),
            ]),
        };
        // Taken out (to be written), a request is the writer's: the guard completes only
        // what it still holds.
        let written = taken.reqs.pop_front().unwrap();
        drop(taken);
        let r = rx.await.unwrap();
        assert!(matches!(r, Err(BackendError::NotSent { .. })), "{r:?}");
        assert_eq!(b.outstanding(), 1);
        assert!(rx2.try_recv().is_err());
        drop(written);
    }

    #[tokio::test]
    async fn retired_connection_drains_then_fails_the_rest() {
        // The server answers one request, then goes silent.
        let (addr, mut seen, _srv) = server(1, Duration::from_millis(50)).await;
        let opts = BackendOptions {
            drain_grace: Duration::from_secs(5),
            stall: Duration::from_millis(200),
            ..Default::default()
        };
        let started = Instant::now();
        let b = Backend::spawn(PoolKey::plain(addr), opts, metrics());
        let r1 = call(&b, b"a\n").await;
        let r2 = call(&b, b"b\n").await;
        // Both are on the wire before the retirement.
        seen.wait_for(|n| *n >= 2).await.unwrap();
        b.retire();
        let r3 = call(&b, b"c\n").await;
        assert_eq!(&r1.await.unwrap().unwrap()[..], b"+OK\r\n");
        let e2 = r2.await.unwrap().unwrap_err();
        assert!(matches!(e2, BackendError::Lost { .. }), "{e2}");
        assert!(e2.to_string().contains("may or may not have been applied"));
        // Given up after the stall bound, not the (much longer) grace period.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let e3 = r3.await.unwrap().unwrap_err();
        assert!(matches!(e3, BackendError::NotSent { .. }), "{e3}");
        assert_eq!(b.outstanding(), 0);
    }

    #[tokio::test]
    async fn finish_sends_what_is_queued_then_closes() {
        let (addr, _, srv) = server(3, Duration::ZERO).await;
        let b = Backend::spawn(PoolKey::plain(addr), BackendOptions::default(), metrics());
        let r1 = call(&b, b"a\n").await;
        let r2 = call(&b, b"b\n").await;
        b.finish();
        for r in [r1, r2] {
            assert_eq!(&r.await.unwrap().unwrap()[..], b"+OK\r\n");
        }
        // The connection closed: the server saw everything, then EOF.
        assert_eq!(srv.await.unwrap(), b"a\nb\n");
    }

    #[tokio::test]
    async fn abort_fails_in_flight_at_once() {
        let (addr, mut seen, _srv) = server(0, Duration::ZERO).await;
        let b = Backend::spawn(PoolKey::plain(addr), BackendOptions::default(), metrics());
        let r = call(&b, b"blocked\n").await;
        seen.wait_for(|n| *n >= 1).await.unwrap();
        b.abort();
        let e = r.await.unwrap().unwrap_err();
        assert!(matches!(e, BackendError::Lost { .. }), "{e}");
        assert!(!b.is_alive());
    }

    #[tokio::test]
    async fn handshake_selects_and_refusals_fail_the_connection() {
        // A server that checks the handshake: +OK to SELECT, an error to HELLO.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = NodeAddr::new("127.0.0.1", l.local_addr().unwrap().port());
        tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let mut got = Vec::new();
                    loop {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&got).to_string();
                        if text.contains("HELLO") {
                            let _ = s.write_all(b"-NOPROTO sorry\r\n").await;
                            return;
                        }
                        if text.ends_with("SELECT\r\n$1\r\n7\r\n") {
                            let _ = s.write_all(b"+OK\r\n").await;
                            got.clear();
                        } else if text.ends_with("PING\r\n") {
                            let _ = s.write_all(b"+PONG\r\n").await;
                            got.clear();
                        }
                    }
                });
            }
        });
        let db7 = PoolKey {
            addr: addr.clone(),
            db: 7,
            resp3: false,
        };
        let b = Backend::spawn(db7, BackendOptions::default(), metrics());
        let r = call(&b, b"*1\r\n$4\r\nPING\r\n").await.await.unwrap();
        assert_eq!(&r.unwrap()[..], b"+PONG\r\n");
        let resp3 = PoolKey {
            addr,
            db: 0,
            resp3: true,
        };
        let b = Backend::spawn(resp3, BackendOptions::default(), metrics());
        let e = call(&b, b"*1\r\n$4\r\nPING\r\n")
            .await
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            e.to_string().contains("handshake refused: NOPROTO sorry"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn dedicated_connections_are_reused_only_when_clean_and_bounded() {
        let (addr, _, _srv) = server(100, Duration::ZERO).await;
        let opts = BackendOptions {
            max_dedicated: 2,
            ..Default::default()
        };
        let pool = Pool::new(opts, metrics());
        let key = PoolKey::plain(addr);
        let a = pool.dedicated(&key).unwrap();
        let b = pool.dedicated(&key).unwrap();
        assert!(!a.same(&b));
        let err = pool.dedicated(&key).unwrap_err();
        assert!(err.contains("limit 2"), "{err}");
        // A clean one comes back and is lent again.
        pool.release(a.clone());
        let again = pool.dedicated(&key).unwrap();
        assert!(again.same(&a));
        // A shared connection is never taken into the idle list.
        let shared = pool.get(&key);
        pool.release(shared.clone());
        assert!(!shared.is_alive());
        // Retiring the node retires the lent ones too.
        pool.retire(&key.addr);
        assert!(!again.is_alive() && !b.is_alive());
    }
}
