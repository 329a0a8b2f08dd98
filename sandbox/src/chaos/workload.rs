//! The client side of a chaos run: N tasks, each with one connection through one proxy,
//! writing unique keys, incrementing its own counter and reading back what it last wrote.
//!
//! Clients never retry and never reconnect on their own (redis-rs's multiplexed
//! connection does neither): the proxy has to carry them through a failover. When a
//! connection dies the task records the failed operation as `connection lost`, opens a new
//! connection and goes on. Every operation is recorded with its start and end time.
//!
//! A client issues its next operation only once the previous one is answered, so while
//! its request to a frozen master hangs it issues nothing. A prober per proxy therefore
//! issues a `SET` at a fixed interval on one pipelined connection whatever the replies,
//! so that there are always requests issued during a failover (they must be held, I2).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Prefix of every key the workload writes.
pub const KEY_PREFIX: &str = "chaos:";

/// Upper bound on one client's write/incr/read cycles, so no loop is unbounded even if the
/// stop token were never cancelled.
const MAX_CYCLES: u64 = 50_000_000;
/// Interval between connection attempts while a proxy is not accepting.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(20);
/// Connect timeout of one attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The unique key of `client`'s write number `seq`.
pub fn data_key(client: u32, seq: u64) -> String {
    format!("{KEY_PREFIX}{client}:{seq}")
}

/// The value written to [`data_key`]: it names its writer, so a mix-up is visible.
pub fn data_value(client: u32, seq: u64) -> String {
    format!("c{client}:s{seq}")
}

/// `client`'s counter.
pub fn counter_key(client: u32) -> String {
    format!("{KEY_PREFIX}ctr:{client}")
}

/// Microseconds since the start of the run: every timestamp of a run is on this clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    t0: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn start() -> Self {
        Clock { t0: Instant::now() }
    }

    /// Microseconds since the start.
    pub fn now(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// State the clients share with the fault schedule while the run goes on.
#[derive(Debug)]
pub struct Live {
    /// The run's clock.
    pub clock: Clock,
    /// Cancelled by the runner once the schedule is over; every client loop checks it.
    pub stop: CancellationToken,
    /// Per proxy: the latest issue time (µs) of a write acknowledged through it; 0 for
    /// none. A write issued after a fault and acknowledged shows the proxy routes again.
    pub last_write_ok: Vec<AtomicU64>,
    /// Per client (then per prober): sequence number of its latest SET (issued, not
    /// necessarily answered).
    pub seq: Vec<AtomicU64>,
    /// Per client (then per prober): operations answered successfully so far.
    pub ok_ops: Vec<AtomicU64>,
}

impl Live {
    /// State for `clients` writers (clients and probers) spread over `proxies` proxies.
    pub fn new(clock: Clock, clients: usize, proxies: usize) -> Self {
        Live {
            clock,
            stop: CancellationToken::new(),
            last_write_ok: (0..proxies).map(|_| AtomicU64::new(0)).collect(),
            seq: (0..clients).map(|_| AtomicU64::new(0)).collect(),
            ok_ops: (0..clients).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Each client's current sequence number.
    pub fn seqs(&self) -> Vec<u64> {
        self.seq.iter().map(|s| s.load(Ordering::Acquire)).collect()
    }

    /// Whether proxy `proxy` acknowledged a write issued at or after `t` (µs).
    pub fn wrote_after(&self, proxy: usize, t: u64) -> bool {
        self.last_write_ok
            .get(proxy)
            .is_some_and(|w| w.load(Ordering::Acquire) >= t)
    }
}

/// What an operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// `SET chaos:{client}:{seq} c{client}:s{seq}`.
    Set,
    /// `INCR chaos:ctr:{client}`.
    Incr,
    /// `GET` of the client's last acknowledged key, on the connection that wrote it.
    Get,
}

impl OpKind {
    /// Whether the operation changes data.
    pub fn is_write(self) -> bool {
        matches!(self, OpKind::Set | OpKind::Incr)
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Set => "set",
            OpKind::Incr => "incr",
            OpKind::Get => "get",
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `SET` acknowledged.
    Written,
    /// `INCR` acknowledged with this value.
    Counted(i64),
    /// `GET` returned the value this client wrote.
    Fresh,
    /// `GET` returned something else (nil or another value): a stale read.
    Stale(Option<String>),
    /// An error reached the client.
    Failed(OpError),
}

/// An error a client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// The error with addresses and numbers masked, to group errors by kind.
    pub kind: String,
    /// The error as the client saw it.
    pub message: String,
    /// The server said it never ran the command (`TRYAGAIN`): it cannot have run.
    pub not_applied: bool,
    /// The connection is unusable afterwards (dropped, reset, timed out).
    pub connection_lost: bool,
}

/// One operation of one client.
#[derive(Debug, Clone)]
pub struct Op {
    /// Client index.
    pub client: u32,
    /// Index of the proxy the client talks to.
    pub proxy: u8,
    /// What it was.
    pub kind: OpKind,
    /// The data key's sequence number (`SET`, `GET`); the cycle's for `INCR`.
    pub seq: u64,
    /// When it was issued (µs on the run's clock).
    pub start: u64,
    /// When its answer (or error) arrived.
    pub end: u64,
    /// How it ended.
    pub outcome: Outcome,
}

impl Op {
    /// The answer was an error.
    pub fn failed(&self) -> Option<&OpError> {
        match &self.outcome {
            Outcome::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// A write the client got a success reply for.
    pub fn acknowledged_write(&self) -> bool {
        matches!(self.outcome, Outcome::Written | Outcome::Counted(_))
    }

    /// Latency in microseconds.
    pub fn latency(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

/// What one client task did.
#[derive(Debug, Default)]
pub struct ClientLog {
    /// Its operations, in order.
    pub ops: Vec<Op>,
    /// Connections it opened after the first one (each after losing the previous one).
    pub reconnects: u64,
    /// Why it stopped early, if it did (could not reconnect in time).
    pub gave_up: Option<String>,
}

/// One client's parameters.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Client index (keys are named after it).
    pub id: u32,
    /// Index of its proxy.
    pub proxy: u8,
    /// Its proxy's client address.
    pub addr: SocketAddr,
    /// Response timeout of its connection; longer than the proxy's failover hold so held
    /// requests are not cut short by the client.
    pub op_timeout: Duration,
    /// Time between the starts of two operations (`None`: as fast as answers come).
    pub op_interval: Option<Duration>,
    /// How long it keeps trying to reconnect before giving up.
    pub reconnect_timeout: Duration,
}

/// Runs one client until `live.stop` is cancelled (or [`MAX_CYCLES`] cycles).
pub async fn run_client(spec: ClientSpec, live: Arc<Live>) -> ClientLog {
    let mut log = ClientLog::default();
    let client = match redis::Client::open(format!("redis://{}/", spec.addr)) {
        Ok(c) => c,
        Err(e) => {
            log.gave_up = Some(format!("invalid proxy address {}: {e}", spec.addr));
            return log;
        }
    };
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(spec.op_timeout));
    let mut pace = spec.op_interval.map(|every| {
        let mut i = tokio::time::interval(every);
        // After a long hold, go on at the normal pace rather than in a burst.
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    });
    let id = spec.id as usize;
    let clock = live.clock;
    let mut conn: Option<MultiplexedConnection> = None;
    let mut first_connection = true;
    // Sequence number of the last SET acknowledged on the current connection: the key a
    // read-your-writes read may check. Reset with the connection (the guarantee is per
    // connection).
    let mut last_acked: Option<u64> = None;
    let mut seq = 0u64;

    for _ in 0..MAX_CYCLES {
        if live.stop.is_cancelled() {
            break;
        }
        let mut c = match conn.take() {
            Some(c) => c,
            None => match connect(&client, &config, &live.stop, spec.reconnect_timeout).await {
                Ok(Some(c)) => {
                    if !first_connection {
                        log.reconnects += 1;
                    }
                    first_connection = false;
                    c
                }
                Ok(None) => break,
                Err(e) => {
                    log.gave_up = Some(e);
                    break;
                }
            },
        };

        seq += 1;
        if let Some(slot) = live.seq.get(id) {
            slot.store(seq, Ordering::Release);
        }
        let ops = [OpKind::Set, OpKind::Incr, OpKind::Get];
        let mut lost = false;
        for kind in ops {
            let key_seq = match kind {
                OpKind::Get => match last_acked {
                    Some(s) => s,
                    None => continue,
                },
                _ => seq,
            };
            if let Some(p) = pace.as_mut() {
                tokio::select! {
                    _ = p.tick() => {}
                    () = live.stop.cancelled() => break,
                }
            }
            let start = clock.now();
            let outcome = match kind {
                OpKind::Set => {
                    let r: redis::RedisResult<redis::Value> = redis::cmd("SET")
                        .arg(data_key(spec.id, seq))
                        .arg(data_value(spec.id, seq))
                        .query_async(&mut c)
                        .await;
                    r.map(|_| Outcome::Written)
                }
                OpKind::Incr => {
                    let r: redis::RedisResult<i64> = redis::cmd("INCR")
                        .arg(counter_key(spec.id))
                        .query_async(&mut c)
                        .await;
                    r.map(Outcome::Counted)
                }
                OpKind::Get => {
                    let r: redis::RedisResult<Option<String>> = redis::cmd("GET")
                        .arg(data_key(spec.id, key_seq))
                        .query_async(&mut c)
                        .await;
                    let want = data_value(spec.id, key_seq);
                    r.map(|got| match got {
                        Some(v) if v == want => Outcome::Fresh,
                        other => Outcome::Stale(other),
                    })
                }
            };
            let end = clock.now();
            let outcome = match outcome {
                Ok(o) => {
                    if let Some(n) = live.ok_ops.get(id) {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    if kind.is_write()
                        && let Some(w) = live.last_write_ok.get(usize::from(spec.proxy))
                    {
                        w.fetch_max(start, Ordering::AcqRel);
                    }
                    if kind == OpKind::Set {
                        last_acked = Some(seq);
                    }
                    o
                }
                Err(e) => {
                    let e = classify(&e);
                    lost = e.connection_lost;
                    Outcome::Failed(e)
                }
            };
            log.ops.push(Op {
                client: spec.id,
                proxy: spec.proxy,
                kind,
                seq: key_seq,
                start,
                end,
                outcome,
            });
            if lost {
                break;
            }
        }
        if lost {
            last_acked = None;
        } else {
            conn = Some(c);
        }
    }
    log
}

/// A prober's parameters.
#[derive(Debug, Clone)]
pub struct ProberSpec {
    /// Client index its keys are named after (after the clients').
    pub id: u32,
    /// Index of its proxy.
    pub proxy: u8,
    /// Its proxy's client address.
    pub addr: SocketAddr,
    /// Response timeout of its connection.
    pub op_timeout: Duration,
    /// Time between two `SET`s.
    pub interval: Duration,
    /// Most requests it leaves unanswered; a tick past it issues nothing.
    pub max_outstanding: usize,
}

/// Runs one prober until `live.stop` is cancelled: a `SET` every `interval` on one
/// connection, without waiting for earlier replies.
pub async fn run_prober(spec: ProberSpec, live: Arc<Live>) -> ClientLog {
    let mut log = ClientLog::default();
    let client = match redis::Client::open(format!("redis://{}/", spec.addr)) {
        Ok(c) => c,
        Err(e) => {
            log.gave_up = Some(format!("invalid proxy address {}: {e}", spec.addr));
            return log;
        }
    };
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(spec.op_timeout));
    let clock = live.clock;
    let id = spec.id as usize;
    let mut tick = tokio::time::interval(spec.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // The connection and its generation: an error on an older one must not drop it.
    let mut conn: Option<(u64, MultiplexedConnection)> = None;
    let mut generation = 0u64;
    let mut outstanding: JoinSet<(u64, Op)> = JoinSet::new();
    let mut seq = 0u64;
    let record = |log: &mut ClientLog,
                  conn: &mut Option<(u64, MultiplexedConnection)>,
                  gen_op: u64,
                  op: Op| {
        if let Outcome::Failed(e) = &op.outcome {
            if e.connection_lost && conn.as_ref().is_some_and(|(g, _)| *g == gen_op) {
                *conn = None;
            }
        } else {
            if let Some(n) = live.ok_ops.get(id) {
                n.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(w) = live.last_write_ok.get(usize::from(spec.proxy)) {
                w.fetch_max(op.start, Ordering::AcqRel);
            }
        }
        log.ops.push(op);
    };

    for _ in 0..MAX_CYCLES {
        tokio::select! {
            _ = tick.tick() => {}
            Some(done) = outstanding.join_next() => {
                if let Ok((gen_op, op)) = done {
                    record(&mut log, &mut conn, gen_op, op);
                }
                continue;
            }
            () = live.stop.cancelled() => break,
        }
        if outstanding.len() >= spec.max_outstanding {
            continue;
        }
        if conn.is_none() {
            match client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(c) => {
                    if generation > 0 {
                        log.reconnects += 1;
                    }
                    generation += 1;
                    conn = Some((generation, c));
                }
                // The proxy is not accepting (restarting): try again next tick.
                Err(_) => continue,
            }
        }
        let Some((gen_op, c)) = conn.as_ref() else {
            continue;
        };
        let (gen_op, mut c) = (*gen_op, c.clone());
        seq += 1;
        if let Some(slot) = live.seq.get(id) {
            slot.store(seq, Ordering::Release);
        }
        let (client_id, proxy) = (spec.id, spec.proxy);
        outstanding.spawn(async move {
            let start = clock.now();
            let r: redis::RedisResult<redis::Value> = redis::cmd("SET")
                .arg(data_key(client_id, seq))
                .arg(data_value(client_id, seq))
                .query_async(&mut c)
                .await;
            let end = clock.now();
            let outcome = match r {
                Ok(_) => Outcome::Written,
                Err(e) => Outcome::Failed(classify(&e)),
            };
            (
                gen_op,
                Op {
                    client: client_id,
                    proxy,
                    kind: OpKind::Set,
                    seq,
                    start,
                    end,
                    outcome,
                },
            )
        });
    }
    // Bounded by the response timeout of each request.
    while let Some(done) = outstanding.join_next().await {
        if let Ok((gen_op, op)) = done {
            record(&mut log, &mut conn, gen_op, op);
        }
    }
    log.ops.sort_by_key(|o| o.start);
    log
}

/// Connects, retrying every [`RECONNECT_INTERVAL`] until `timeout`; `Ok(None)` when told
/// to stop first.
async fn connect(
    client: &redis::Client,
    config: &redis::AsyncConnectionConfig,
    stop: &CancellationToken,
    timeout: Duration,
) -> Result<Option<MultiplexedConnection>, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if stop.is_cancelled() {
            return Ok(None);
        }
        let last = match client
            .get_multiplexed_async_connection_with_config(config)
            .await
        {
            Ok(c) => return Ok(Some(c)),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("could not reconnect within {timeout:?}: {last}"));
        }
        tokio::select! {
            () = tokio::time::sleep(RECONNECT_INTERVAL) => {}
            () = stop.cancelled() => return Ok(None),
        }
    }
}

/// Sorts an error into a kind (its text with addresses and numbers masked) and says
/// whether the connection survives it.
pub fn classify(e: &redis::RedisError) -> OpError {
    let message = e.to_string();
    if e.is_timeout() {
        return OpError {
            kind: "client timeout (no reply within the client's response timeout)".into(),
            message,
            not_applied: false,
            connection_lost: true,
        };
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
        return OpError {
            kind: "connection lost".into(),
            message,
            not_applied: false,
            connection_lost: true,
        };
    }
    let text = match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => message.clone(),
    };
    OpError {
        kind: mask(&text),
        not_applied: e.code() == Some("TRYAGAIN"),
        message: text,
        connection_lost: false,
    }
}

/// Masks what varies between two errors of the same kind: `host:port` and numbers
/// become `#`, and the text is cut at 120 characters.
pub fn mask(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_number = false;
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            if !in_number {
                out.push('#');
            }
            in_number = true;
            continue;
        }
        // `#.#.#.#:#` (an address) and `#.#` (a duration) collapse into one `#`.
        if in_number && (ch == '.' || ch == ':') {
            continue;
        }
        in_number = false;
        out.push(ch);
    }
    let cut: String = out.chars().take(120).collect();
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_name_their_writer() {
        assert_eq!(data_key(3, 17), "chaos:3:17");
        assert_eq!(data_value(3, 17), "c3:s17");
        assert_eq!(counter_key(3), "chaos:ctr:3");
    }

    #[test]
    fn masking_groups_errors_of_one_kind() {
        let a = mask(
            "ERR connection to 127.0.0.1:40123 lost (stalled); the command may or may not have been applied",
        );
        let b = mask(
            "ERR connection to 127.0.0.1:39999 lost (stalled); the command may or may not have been applied",
        );
        assert_eq!(a, b);
        assert_eq!(
            a,
            "ERR connection to # lost (stalled); the command may or may not have been applied"
        );
        assert_eq!(
            mask("TRYAGAIN pivot: no usable master within 10.5s"),
            "TRYAGAIN pivot: no usable master within #s"
        );
        assert_eq!(mask(&"x".repeat(500)).len(), 120);
    }

    #[test]
    fn server_errors_are_classified_by_code() {
        let e = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain),
            "busy",
        ));
        let c = classify(&e);
        assert!(!c.connection_lost);
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        let c = classify(&io);
        assert!(c.connection_lost);
        assert_eq!(c.kind, "connection lost");
    }
}
