//! Multiplexed backend connections and the per-worker pool of them.
//!
//! One [`Backend`] is one TCP connection to one Redis node, shared by every client of a
//! worker. Its task runs two halves side by side:
//!
//! - the writer takes every request queued since its last write (from all clients), registers
//!   each request's reply slot in the in-flight FIFO *before* the bytes reach the socket, and
//!   writes the batch with one syscall;
//! - the reader splits reply frames off its buffer (zero copy) and completes the oldest slot,
//!   since Redis answers in order.
//!
//! Bounds: the request queue (`queue_depth` requests; a full queue stops the client that
//! sends, which stops reading its socket) and the in-flight FIFO (`max_inflight`).
//!
//! A connection is retired when its node leaves the topology or loses the master role: it
//! takes no new requests, fails the queued ones as "not sent", waits for the replies of the
//! requests already on the wire (at most `drain_grace`), then closes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::resp::{Mode, Scanner};
use crate::routing::NodeAddr;

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
    /// The error as the client sees it.
    pub fn to_resp(&self) -> Bytes {
        crate::reply::error(&format!("ERR pivot: {self}"))
    }
}

/// What a client gets back for one request.
pub type Reply = Result<Bytes, BackendError>;

/// One request on its way to a backend.
#[derive(Debug)]
pub struct Request {
    /// The request's bytes exactly as the client sent them.
    pub frame: Bytes,
    /// Completed with the reply (or the failure).
    pub reply: oneshot::Sender<Reply>,
}

/// Tunables of backend connections.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// TCP connect timeout.
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
        }
    }
}

struct Pending {
    reply: oneshot::Sender<Reply>,
    /// When the batch holding this request was written (one clock read per batch).
    sent_at: Instant,
}

struct Shared {
    addr: NodeAddr,
    /// False once the connection failed or was retired: the pool replaces it.
    alive: AtomicBool,
    /// Set by the pool; the connection's task closes it.
    retire: CancellationToken,
    /// Reply slots of requests written to the socket, oldest first. Only the connection's
    /// own task touches it (writer pushes, reader pops); the lock is never contended.
    inflight: Mutex<VecDeque<Pending>>,
    /// Permits for `max_inflight` requests on the wire.
    window: Semaphore,
    /// Why the connection died, for requests that arrive after.
    failure: Mutex<Option<String>>,
    /// When the connection died.
    died_at: Mutex<Option<Instant>>,
}

/// Handle to one backend connection; cheap to clone.
#[derive(Clone)]
pub struct Backend {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("addr", &self.shared.addr)
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl Backend {
    /// Opens a connection to `addr` on the current runtime.
    pub fn spawn(addr: NodeAddr, opts: BackendOptions, metrics: Arc<Metrics>) -> Backend {
        let (tx, rx) = mpsc::channel(opts.queue_depth);
        let shared = Arc::new(Shared {
            addr: addr.clone(),
            alive: AtomicBool::new(true),
            retire: CancellationToken::new(),
            inflight: Mutex::new(VecDeque::new()),
            window: Semaphore::new(opts.max_inflight),
            failure: Mutex::new(None),
            died_at: Mutex::new(None),
        });
        let span = info_span!("backend", node = %addr);
        tokio::spawn(connection(shared.clone(), rx, opts, metrics).instrument(span));
        Backend { shared, tx }
    }

    /// The node this connection goes to.
    pub fn addr(&self) -> &NodeAddr {
        &self.shared.addr
    }

    /// False once the connection failed or was retired.
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }

    /// Queues a request; waits while the queue is full. A connection that is gone completes
    /// the request with [`BackendError::NotSent`].
    pub async fn send(&self, req: Request) {
        if let Err(mpsc::error::SendError(req)) = self.tx.send(req).await {
            let _ = req.reply.send(Err(self.not_sent()));
        }
    }

    fn not_sent(&self) -> BackendError {
        let reason = lock(&self.shared.failure)
            .clone()
            .unwrap_or_else(|| "connection closed".into());
        BackendError::NotSent {
            addr: self.shared.addr.clone(),
            reason,
        }
    }

    /// Stops taking requests and closes once the in-flight ones are answered.
    pub fn retire(&self) {
        self.shared.alive.store(false, Ordering::Release);
        self.shared.retire.cancel();
    }

    fn died_at(&self) -> Option<Instant> {
        *lock(&self.shared.died_at)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave their data inconsistent (a queue of
    // reply slots, an optional string): keep going with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How a connection ended.
enum End {
    /// Retired or unused, and every in-flight reply was delivered.
    Closed,
    /// Failed; the reason goes to every request still waiting.
    Failed(BackendFailure, String),
}

async fn connection(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Request>,
    opts: BackendOptions,
    metrics: Arc<Metrics>,
) {
    let addr = shared.addr.clone();
    let connect = TcpStream::connect((&*addr.host, addr.port));
    let end = match tokio::time::timeout(opts.connect_timeout, connect).await {
        Err(_) => End::Failed(BackendFailure::Connect, "connect timed out".into()),
        Ok(Err(e)) => End::Failed(BackendFailure::Connect, e.to_string()),
        Ok(Ok(stream)) => {
            if let Err(e) = stream.set_nodelay(true) {
                warn!(error = %e, "cannot set TCP_NODELAY");
            }
            debug!("connected");
            metrics.backend_connections.inc();
            let (rd, wr) = stream.into_split();
            let end = run(&shared, &mut rx, rd, wr, &opts).await;
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
            metrics.backend_failure(*kind);
            warn!(%reason, "backend connection failed");
            reason.clone()
        }
    };
    *lock(&shared.failure) = Some(reason.clone());
    rx.close();
    let lost: Vec<Pending> = lock(&shared.inflight).drain(..).collect();
    for p in lost {
        let _ = p.reply.send(Err(BackendError::Lost {
            addr: addr.clone(),
            reason: reason.clone(),
        }));
    }
    while let Ok(req) = rx.try_recv() {
        let _ = req.reply.send(Err(BackendError::NotSent {
            addr: addr.clone(),
            reason: reason.clone(),
        }));
    }
}

async fn run(
    shared: &Shared,
    rx: &mut mpsc::Receiver<Request>,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    opts: &BackendOptions,
) -> End {
    let reader = read_replies(shared, rd, opts.max_reply_bytes);
    tokio::pin!(reader);
    let mut writer = Box::pin(write_requests(shared, rx, wr));
    tokio::select! {
        end = &mut reader => end,
        end = &mut writer => match end {
            Some(end) => end,
            None => {
                // Retired or no longer used: what is queued was routed while this node had
                // its old role and is not sent; the requests on the wire may finish.
                drop(writer);
                shared.alive.store(false, Ordering::Release);
                rx.close();
                while let Ok(req) = rx.try_recv() {
                    let _ = req.reply.send(Err(BackendError::NotSent {
                        addr: shared.addr.clone(),
                        reason: "the node's role changed before the request was sent".into(),
                    }));
                }
                if lock(&shared.inflight).is_empty() {
                    return End::Closed;
                }
                drain(shared, &mut reader, opts).await
            }
        },
    }
}

/// Lets the requests on the wire of a retired connection finish: up to `drain_grace`, but no
/// longer than it takes to see that the node has stopped answering (the oldest request
/// unanswered for `stall`), so that a frozen old master does not hold its clients' errors
/// back for the whole grace period.
async fn drain(
    shared: &Shared,
    reader: &mut (impl std::future::Future<Output = End> + Unpin),
    opts: &BackendOptions,
) -> End {
    let deadline = tokio::time::Instant::now() + opts.drain_grace;
    let tick = (opts.stall / 4).max(Duration::from_millis(5));
    loop {
        let oldest = lock(&shared.inflight).front().map(|p| p.sent_at.elapsed());
        match oldest {
            None => return End::Closed,
            Some(age) if age >= opts.stall => {
                return End::Failed(
                    BackendFailure::DrainTimeout,
                    format!("no reply for {} ms", age.as_millis()),
                );
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

/// Largest batch the writer copies into one buffer before writing.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Returns `None` when the connection is retired or every handle is gone, `Some` on failure.
async fn write_requests(
    shared: &Shared,
    rx: &mut mpsc::Receiver<Request>,
    mut wr: OwnedWriteHalf,
) -> Option<End> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        let first = tokio::select! {
            biased;
            _ = shared.retire.cancelled() => None,
            req = rx.recv() => req,
        };
        let Some(first) = first else {
            // Requests still queued were routed while this node had its old role: they must
            // not be sent now (a demoted master must get no writes).
            return None;
        };
        let sent_at = Instant::now();
        let mut next = Some(first);
        while let Some(req) = next.take() {
            // Wait for room on the wire; the reader returns permits as replies arrive.
            match shared.window.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return Some(End::Failed(BackendFailure::Lost, "closed".into())),
            }
            buf.extend_from_slice(&req.frame);
            lock(&shared.inflight).push_back(Pending {
                reply: req.reply,
                sent_at,
            });
            if buf.len() < MAX_BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = wr.write_all(&buf).await {
            return Some(End::Failed(
                BackendFailure::Lost,
                format!("write failed: {e}"),
            ));
        }
        buf.clear();
        if buf.capacity() > 1024 * 1024 {
            // Don't keep a huge buffer around after one large request.
            buf = BytesMut::with_capacity(16 * 1024);
        }
    }
}

async fn read_replies(shared: &Shared, mut rd: OwnedReadHalf, max_reply: usize) -> End {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut scanner = Scanner::new(Mode::Reply, max_reply);
    loop {
        reserve(&mut buf, scanner.need());
        match rd.read_buf(&mut buf).await {
            Ok(0) => return End::Failed(BackendFailure::Lost, "closed by the server".into()),
            Ok(_) => {}
            Err(e) => return End::Failed(BackendFailure::Lost, format!("read failed: {e}")),
        }
        let mut answered = 0;
        loop {
            match scanner.scan(&buf) {
                Ok(Some(frame)) => {
                    let bytes = buf.split_to(frame.len).freeze();
                    let Some(p) = lock(&shared.inflight).pop_front() else {
                        return End::Failed(
                            BackendFailure::Protocol,
                            "reply received with no request in flight".into(),
                        );
                    };
                    answered += 1;
                    // The client may be gone: its reply is dropped here.
                    let _ = p.reply.send(Ok(bytes));
                }
                Ok(None) => break,
                Err(e) => return End::Failed(BackendFailure::Protocol, e.to_string()),
            }
        }
        shared.window.add_permits(answered);
        if !shared.alive.load(Ordering::Acquire) && lock(&shared.inflight).is_empty() {
            return End::Closed;
        }
    }
}

/// Makes room for the next read: at least 8 KiB, or what the current frame still needs.
pub(crate) fn reserve(buf: &mut BytesMut, need: usize) {
    let want = need
        .saturating_sub(buf.len())
        .clamp(8 * 1024, 4 * 1024 * 1024);
    if buf.capacity() - buf.len() < want {
        buf.reserve(want.max(16 * 1024));
    }
}

/// The backend connections of one worker, one per node.
#[derive(Debug)]
pub struct Pool {
    conns: Mutex<HashMap<NodeAddr, Backend>>,
    opts: BackendOptions,
    metrics: Arc<Metrics>,
}

impl Pool {
    /// An empty pool.
    pub fn new(opts: BackendOptions, metrics: Arc<Metrics>) -> Self {
        Pool {
            conns: Mutex::new(HashMap::new()),
            opts,
            metrics,
        }
    }

    /// The live connection to `addr`, opened if needed. Right after a failed connect the
    /// dead handle is returned (requests fail fast as not sent) until the backoff passes.
    pub fn get(&self, addr: &NodeAddr) -> Backend {
        let mut conns = lock(&self.conns);
        if let Some(b) = conns.get(addr) {
            let backing_off = b
                .died_at()
                .is_some_and(|t| t.elapsed() < self.opts.reconnect_backoff);
            if b.is_alive() || backing_off {
                return b.clone();
            }
        }
        let b = Backend::spawn(addr.clone(), self.opts.clone(), self.metrics.clone());
        conns.insert(addr.clone(), b.clone());
        b
    }

    /// Retires every connection whose node `keep` rejects.
    pub fn retain(&self, keep: impl Fn(&NodeAddr) -> bool) {
        lock(&self.conns).retain(|addr, b| {
            let k = keep(addr);
            if !k {
                b.retire();
            }
            k
        });
    }

    /// Retires the connection to `addr`, if any.
    pub fn retire(&self, addr: &NodeAddr) {
        if let Some(b) = lock(&self.conns).remove(addr) {
            b.retire();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A fake Redis that answers `+OK` to every request line after `delay`.
    async fn server(
        replies: usize,
        delay: Duration,
    ) -> (NodeAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let mut sent = 0;
            while sent < replies {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let lines = got.iter().filter(|b| **b == b'\n').count();
                tokio::time::sleep(delay).await;
                while sent < lines.min(replies) {
                    s.write_all(b"+OK\r\n").await.unwrap();
                    sent += 1;
                }
            }
            got
        });
        (NodeAddr::new("127.0.0.1", port), h)
    }

    async fn call(b: &Backend, frame: &'static [u8]) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        b.send(Request {
            frame: Bytes::from_static(frame),
            reply: tx,
        })
        .await;
        rx
    }

    #[tokio::test]
    async fn replies_in_order_and_batched() {
        let (addr, srv) = server(3, Duration::ZERO).await;
        let b = Backend::spawn(addr, BackendOptions::default(), Arc::new(Metrics::new()));
        let r1 = call(&b, b"a\n").await;
        let r2 = call(&b, b"b\n").await;
        let r3 = call(&b, b"c\n").await;
        for r in [r1, r2, r3] {
            assert_eq!(&r.await.unwrap().unwrap()[..], b"+OK\r\n");
        }
        b.retire();
        assert_eq!(srv.await.unwrap(), b"a\nb\nc\n");
    }

    #[tokio::test]
    async fn unreachable_is_not_sent() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let pool = Pool::new(BackendOptions::default(), Arc::new(Metrics::new()));
        let b = pool.get(&NodeAddr::new("127.0.0.1", port));
        let r = call(&b, b"x\n").await.await.unwrap();
        assert!(matches!(r, Err(BackendError::NotSent { .. })), "{r:?}");
        // Within the backoff the same dead handle answers at once.
        let again = pool.get(&NodeAddr::new("127.0.0.1", port));
        assert!(!again.is_alive());
        let r = call(&again, b"x\n").await.await.unwrap();
        assert!(
            r.unwrap_err()
                .to_resp()
                .starts_with(b"-ERR pivot: cannot reach")
        );
    }

    #[tokio::test]
    async fn retired_connection_drains_then_fails_the_rest() {
        // The server answers one request, then goes silent.
        let (addr, _srv) = server(1, Duration::from_millis(50)).await;
        let opts = BackendOptions {
            drain_grace: Duration::from_secs(5),
            stall: Duration::from_millis(200),
            ..Default::default()
        };
        let started = Instant::now();
        let b = Backend::spawn(addr, opts, Arc::new(Metrics::new()));
        let r1 = call(&b, b"a\n").await;
        let r2 = call(&b, b"b\n").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
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
    }
}
