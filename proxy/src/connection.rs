//! One client connection.
//!
//! The reader half reads whatever has arrived, splits it into complete frames (zero copy:
//! each frame is a `Bytes` slice of the read buffer), classifies and routes each, and hands
//! it to the chosen backend connection together with a reply slot; the slots go into this
//! client's FIFO in request order. The writer half drains the FIFO in order, so a pipeline
//! spread over the master and replicas still answers in order, and coalesces every reply
//! that is ready into one write.
//!
//! Bounds: the FIFO holds at most `max_pipeline` slots (a client further ahead stops being
//! read), and a request frame may not exceed `max_request_bytes`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::backend::{Backend, BackendError, Reply, Request, reserve};
use crate::command::{Class, Lower, Special};
use crate::metrics::Target;
use crate::reply;
use crate::resp::{self, FrameError, Mode, Scanner};
use crate::routing::{ClientState, Route, RoutingTable, route, rule_for};
use crate::server::Worker;

/// One entry of a client's reply FIFO.
enum Slot {
    /// A reply the proxy produced itself.
    Ready(Bytes),
    /// A reply a backend will produce.
    Pending {
        rx: oneshot::Receiver<Reply>,
        started: Instant,
        target: Target,
    },
    /// Write everything before this, then close the connection (QUIT, protocol error).
    Close,
}

/// Per-connection state visible to commands the proxy answers itself.
struct Session {
    id: u64,
    name: Option<Bytes>,
    route: ClientState,
}

/// Backend handles resolved for one routing table version, so that the pool's map is
/// consulted once per topology change rather than once per request.
struct Resolved {
    version: u64,
    master: Option<Backend>,
    replicas: Vec<Backend>,
}

impl Resolved {
    fn refresh(&mut self, table: &RoutingTable, worker: &Worker) {
        if self.version == table.version && self.version != 0 {
            return;
        }
        self.version = table.version;
        self.master = table.master.as_ref().map(|m| worker.pool.get(m));
        self.replicas = table.readable.iter().map(|r| worker.pool.get(r)).collect();
    }

    fn backend(&mut self, route: Route, worker: &Worker) -> Option<&Backend> {
        let slot = match route {
            Route::Master => self.master.as_mut()?,
            Route::Replica(i) => self.replicas.get_mut(i)?,
            Route::NoMaster => return None,
        };
        if !slot.is_alive() {
            *slot = worker.pool.get(slot.addr());
        }
        Some(slot)
    }
}

/// Serves one client until it disconnects, sends `QUIT`, breaks the protocol, or the proxy
/// shuts down (then requests already read are answered before the connection closes).
pub(crate) async fn serve(stream: TcpStream, worker: Arc<Worker>, shutdown: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let id = worker.shared.next_client_id.fetch_add(1, Ordering::Relaxed);
    let metrics = worker.shared.metrics.clone();
    metrics.client_connections.inc();
    metrics.client_connections_total.inc();
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(worker.shared.limits.max_pipeline);
    let session = Session {
        id,
        name: None,
        route: ClientState::default(),
    };
    // The reader owns `tx`: when it stops, the writer drains what is queued and exits.
    tokio::join!(
        read_requests(rd, tx, &worker, session, shutdown),
        write_replies(wr, rx, &worker)
    );
    metrics.client_connections.dec();
    debug!("client disconnected");
}

async fn read_requests(
    mut rd: OwnedReadHalf,
    tx: mpsc::Sender<Slot>,
    worker: &Worker,
    mut session: Session,
    shutdown: CancellationToken,
) {
    let shared = &worker.shared;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut scanner = Scanner::new(Mode::Request, shared.limits.max_request_bytes);
    let mut resolved = Resolved {
        version: u64::MAX,
        master: None,
        replicas: Vec::new(),
    };
    loop {
        reserve(&mut buf, scanner.need());
        let n = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            n = rd.read_buf(&mut buf) => n,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // One routing snapshot for the whole batch.
        let table = shared.table.load_full();
        let commands = shared.commands.load_full();
        resolved.refresh(&table, worker);
        loop {
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
                                return protocol_error(&tx, worker, &e).await;
                            }
                            Err(e) => return protocol_error(&tx, worker, &e).await,
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return protocol_error(&tx, worker, &e).await,
                }
            } else {
                match scanner.scan(&buf) {
                    Ok(Some(info)) => (info, buf.split_to(info.len).freeze()),
                    Ok(None) => break,
                    Err(e) => return protocol_error(&tx, worker, &e).await,
                }
            };
            let (info, bytes) = frame;
            if info.argc == 0 {
                // Redis ignores an empty multibulk.
                continue;
            }
            let name = info.name(&bytes).unwrap_or_default();
            let arg1 = info.arg1(&bytes);
            let lookup = commands.lookup(name, arg1);
            let slot = if let Some(special) = lookup.special {
                match answer_special(special, lookup.class, name, &bytes, info.argc, &mut session) {
                    Answer::Reply(r) => {
                        shared.metrics.command(lookup.class, Target::Local);
                        Slot::Ready(r)
                    }
                    Answer::Close(r) => {
                        let _ = tx.send(Slot::Ready(r)).await;
                        let _ = tx.send(Slot::Close).await;
                        return;
                    }
                    Answer::Reject(r) => {
                        shared.metrics.rejected.inc();
                        Slot::Ready(r)
                    }
                    Answer::Forward => {
                        forward(
                            bytes,
                            info,
                            lookup.class,
                            &table,
                            &mut resolved,
                            &mut session,
                            worker,
                        )
                        .await
                    }
                }
            } else {
                match lookup.class {
                    Class::Blocking => {
                        shared.metrics.rejected.inc();
                        Slot::Ready(unsupported(name, lookup.class))
                    }
                    class => {
                        forward(
                            bytes,
                            info,
                            class,
                            &table,
                            &mut resolved,
                            &mut session,
                            worker,
                        )
                        .await
                    }
                }
            };
            if tx.send(slot).await.is_err() {
                // The writer is gone: the client cannot be answered any more.
                return;
            }
        }
    }
}

async fn protocol_error(tx: &mpsc::Sender<Slot>, worker: &Worker, e: &FrameError) {
    worker.shared.metrics.protocol_errors.inc();
    debug!(error = %e, "client protocol error");
    // Replies to the requests before the bad one are still delivered, then the error, then
    // the connection closes: the stream cannot be resynchronised (Redis does the same).
    let _ = tx
        .send(Slot::Ready(reply::error(&format!("ERR {e}"))))
        .await;
    let _ = tx.send(Slot::Close).await;
}

async fn forward(
    frame: Bytes,
    info: resp::Frame,
    class: Class,
    table: &RoutingTable,
    resolved: &mut Resolved,
    session: &mut Session,
    worker: &Worker,
) -> Slot {
    let shared = &worker.shared;
    let rule = if table.rules.is_empty() {
        None
    } else {
        let name = info.name(&frame).unwrap_or_default();
        Lower::new(name).and_then(|l| rule_for(table, l.as_bytes(), info.arg1(&frame)))
    };
    let decision = route(table, class, rule, &session.route, &shared.rr);
    let target = match decision {
        Route::Master => Target::Master,
        _ => Target::Replica,
    };
    let Some(backend) = resolved.backend(decision, worker) else {
        shared.metrics.rejected.inc();
        return Slot::Ready(reply::error(&format!(
            "CLUSTERDOWN pivot: service '{}' has no master known to the proxy yet",
            table.service
        )));
    };
    if target == Target::Master && matches!(class, Class::Write | Class::Unknown) {
        session.route.has_written = true;
    }
    shared.metrics.command(class, target);
    let (reply_tx, rx) = oneshot::channel();
    backend
        .send(Request {
            frame,
            reply: reply_tx,
        })
        .await;
    Slot::Pending {
        rx,
        started: Instant::now(),
        target,
    }
}

async fn write_replies(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Slot>, worker: &Worker) {
    let metrics = &worker.shared.metrics;
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut head: Option<Slot> = None;
    loop {
        let slot = match head.take() {
            Some(s) => s,
            None => match rx.recv().await {
                Some(s) => s,
                None => break,
            },
        };
        // Wait for the oldest reply, then take every later one that is already there.
        let mut closing = false;
        match slot {
            Slot::Ready(b) => out.extend_from_slice(&b),
            Slot::Pending {
                rx: reply_rx,
                started,
                target,
            } => {
                let r = reply_rx.await;
                metrics.latency(target, started.elapsed().as_secs_f64());
                append(&mut out, r.ok());
            }
            Slot::Close => closing = true,
        }
        while !closing && out.len() < 256 * 1024 {
            let Ok(next) = rx.try_recv() else { break };
            match next {
                Slot::Ready(b) => out.extend_from_slice(&b),
                Slot::Pending {
                    rx: mut reply_rx,
                    started,
                    target,
                } => match reply_rx.try_recv() {
                    Ok(r) => {
                        metrics.latency(target, started.elapsed().as_secs_f64());
                        append(&mut out, Some(r));
                    }
                    Err(oneshot::error::TryRecvError::Empty) => {
                        head = Some(Slot::Pending {
                            rx: reply_rx,
                            started,
                            target,
                        });
                        break;
                    }
                    Err(oneshot::error::TryRecvError::Closed) => append(&mut out, None),
                },
                Slot::Close => {
                    head = Some(Slot::Close);
                    break;
                }
            }
        }
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
            if out.capacity() > 1024 * 1024 {
                out = BytesMut::with_capacity(16 * 1024);
            }
        }
        if closing {
            let _ = wr.shutdown().await;
            break;
        }
    }
    // Stop the reader too: its next send fails.
    rx.close();
}

fn append(out: &mut BytesMut, r: Option<Reply>) {
    match r {
        Some(Ok(bytes)) => out.extend_from_slice(&bytes),
        Some(Err(e)) => out.extend_from_slice(&BackendError::to_resp(&e)),
        // The backend task ended without answering (it cannot: it fails every slot it holds).
        None => out.extend_from_slice(b"-ERR pivot: request dropped by the proxy\r\n"),
    }
}

enum Answer {
    Reply(Bytes),
    Close(Bytes),
    Reject(Bytes),
    Forward,
}

fn unsupported(name: &[u8], class: Class) -> Bytes {
    let what = match class {
        Class::Blocking => "blocking commands",
        Class::PubSub => "Pub/Sub",
        _ => "this command",
    };
    reply::error(&format!(
        "ERR pivot: '{}' is not supported by this proxy yet ({what} need a dedicated connection)",
        String::from_utf8_lossy(name).to_ascii_lowercase()
    ))
}

/// Commands the proxy answers or refuses itself.
fn answer_special(
    special: Special,
    class: Class,
    name: &[u8],
    frame: &[u8],
    argc: usize,
    session: &mut Session,
) -> Answer {
    let args: Vec<&[u8]> = resp::args(frame).collect();
    let arg = |i: usize| args.get(i).copied().unwrap_or_default();
    match special {
        Special::Ping => match argc {
            1 => Answer::Reply(reply::simple("PONG")),
            2 => Answer::Reply(reply::bulk(arg(1))),
            _ => Answer::Reject(reply::wrong_args(name)),
        },
        Special::Echo if argc == 2 => Answer::Reply(reply::bulk(arg(1))),
        Special::Echo => Answer::Reject(reply::wrong_args(name)),
        Special::Quit => Answer::Close(reply::ok()),
        Special::Select => {
            if argc != 2 {
                return Answer::Reject(reply::wrong_args(name));
            }
            match std::str::from_utf8(arg(1))
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            {
                None => Answer::Reject(reply::error("ERR value is not an integer or out of range")),
                Some(0) => Answer::Reply(reply::ok()),
                Some(_) => Answer::Reject(reply::error(
                    "ERR pivot: only database 0 is supported by this proxy yet",
                )),
            }
        }
        Special::Auth => {
            if !(2..=3).contains(&argc) {
                return Answer::Reject(reply::wrong_args(name));
            }
            Answer::Reject(reply::error(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            ))
        }
        Special::Hello => hello(&args, session),
        Special::Client => client(&args, name, session),
        Special::Transaction => Answer::Reject(reply::error(&format!(
            "ERR pivot: '{}' is not supported by this proxy yet (transactions need a dedicated connection)",
            String::from_utf8_lossy(name).to_ascii_lowercase()
        ))),
        Special::Takeover => Answer::Reject(reply::error(&format!(
            "ERR pivot: '{}' is not supported by this proxy",
            String::from_utf8_lossy(name).to_ascii_lowercase()
        ))),
        Special::Subscribe => Answer::Reject(unsupported(name, Class::PubSub)),
        Special::StreamRead => {
            let blocks = args
                .iter()
                .skip(1)
                .any(|a| a.eq_ignore_ascii_case(b"block"));
            if blocks {
                Answer::Reject(unsupported(name, Class::Blocking))
            } else {
                let _ = class;
                Answer::Forward
            }
        }
    }
}

fn hello(args: &[&[u8]], session: &mut Session) -> Answer {
    let mut i = 1;
    if let Some(v) = args.get(1) {
        match std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
        {
            Some(2) => {}
            Some(3) => {
                return Answer::Reject(reply::error(
                    "NOPROTO this proxy does not speak RESP3 yet, use RESP2",
                ));
            }
            Some(_) => return Answer::Reject(reply::error("NOPROTO unsupported protocol version")),
            None => {
                return Answer::Reject(reply::error(
                    "ERR Protocol version is not an integer or out of range",
                ));
            }
        }
        i = 2;
    }
    let mut setname = None;
    while i < args.len() {
        let opt = args[i];
        if opt.eq_ignore_ascii_case(b"AUTH") && i + 2 < args.len() {
            return Answer::Reject(reply::error(
                "WRONGPASS invalid username-password pair or user is disabled.",
            ));
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && i + 1 < args.len() {
            setname = Some(args[i + 1]);
            i += 2;
        } else {
            return Answer::Reject(reply::error(&format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(opt)
            )));
        }
    }
    if let Some(n) = setname {
        if let Err(e) = valid_name(n) {
            return Answer::Reject(e);
        }
        session.name = Some(Bytes::copy_from_slice(n));
    }
    let s = |v: &'static str| BytesFrame::BulkString(Bytes::from_static(v.as_bytes()));
    Answer::Reply(reply::array(vec![
        s("server"),
        s("redis"),
        s("version"),
        s(env!("CARGO_PKG_VERSION")),
        s("proto"),
        BytesFrame::Integer(2),
        s("id"),
        BytesFrame::Integer(session.id as i64),
        s("mode"),
        s("standalone"),
        s("role"),
        s("master"),
        s("modules"),
        BytesFrame::Array(vec![]),
    ]))
}

fn valid_name(n: &[u8]) -> Result<(), Bytes> {
    if n.iter().any(|b| *b <= b' ' || *b > b'~') {
        return Err(reply::error(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(())
}

fn client(args: &[&[u8]], name: &[u8], session: &mut Session) -> Answer {
    let Some(sub) = args.get(1) else {
        return Answer::Reject(reply::wrong_args(name));
    };
    let lower = sub.to_ascii_lowercase();
    match (lower.as_slice(), args.len()) {
        (b"setname", 3) => match valid_name(args[2]) {
            Ok(()) => {
                session.name = (!args[2].is_empty()).then(|| Bytes::copy_from_slice(args[2]));
                Answer::Reply(reply::ok())
            }
            Err(e) => Answer::Reject(e),
        },
        (b"getname", 2) => Answer::Reply(match &session.name {
            Some(n) => reply::bulk(n),
            None => reply::null(),
        }),
        (b"id", 2) => Answer::Reply(reply::int(session.id as i64)),
        // Client libraries announce themselves (redis-py, redis-rs, ...); the proxy's own
        // backend connections are shared, so the announcement stays with the proxy.
        (b"setinfo", 4)
            if args[2].eq_ignore_ascii_case(b"lib-name")
                || args[2].eq_ignore_ascii_case(b"lib-ver") =>
        {
            Answer::Reply(reply::ok())
        }
        (b"setname" | b"getname" | b"id", _) => Answer::Reject(reply::error(&format!(
            "ERR wrong number of arguments for 'client|{}' command",
            String::from_utf8_lossy(&lower)
        ))),
        _ => Answer::Reject(reply::error(&format!(
            "ERR pivot: 'client {}' is not supported by this proxy yet",
            String::from_utf8_lossy(&lower)
        ))),
    }
}
