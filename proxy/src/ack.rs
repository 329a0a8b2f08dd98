//! `write_ack = replicas(N)`: a write's reply reaches the client only once N replicas
//! have the write, so that no failover can lose a write the client was told succeeded.
//!
//! Group commit, per worker. Redis's `WAIT n timeout` waits for the replicas to
//! acknowledge the replication offset of the connection it runs on, and a client's writes
//! went over shared connections. So a *round* runs, on one dedicated master connection, a
//! `PUBLISH` to a channel nobody listens to (replicated in a non-cluster Redis: it moves
//! that connection's offset to the master's current one) and then `WAIT`. A round that
//! started after a write's reply arrived covers that write. Writes whose replies arrive
//! while a round is running wait for the next one, which starts as soon as it ends: one
//! round in flight per worker, however many writes it covers.
//!
//! There is no task: the first waiter that finds no round running runs one itself (the
//! worker's runtime is single-threaded), and the waiters whose round is done take their
//! result from a `watch` channel.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use crate::backend::{Backend, PoolKey, Request};
use crate::routing::NodeAddr;
use crate::server::Worker;

/// `PUBLISH __pivot__:wait-fence ""`.
pub(crate) const WAIT_FENCE: &[u8] =
    b"*3\r\n$7\r\nPUBLISH\r\n$20\r\n__pivot__:wait-fence\r\n$0\r\n\r\n";

#[derive(Debug, Clone)]
struct Done {
    /// The last round that finished.
    round: u64,
    /// The master it ran on.
    master: Option<NodeAddr>,
    /// Replicas it counted, or why it failed.
    outcome: Result<u32, String>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Rounds started so far.
    started: u64,
    running: bool,
    /// The dedicated master connection rounds run on.
    conn: Option<Backend>,
}

/// One worker's write acknowledgements.
#[derive(Debug)]
pub(crate) struct Acker {
    inner: Mutex<Inner>,
    done: watch::Sender<Done>,
}

impl Default for Acker {
    fn default() -> Self {
        Acker {
            inner: Mutex::new(Inner::default()),
            done: watch::Sender::new(Done {
                round: 0,
                master: None,
                outcome: Ok(0),
            }),
        }
    }
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Acker {
    /// Waits until `n` replicas of `master` (where the caller's write ran) have every write
    /// whose reply arrived before this call. `Err` says why not: too few replicas within
    /// `timeout`, or the master changed first (a round on another master proves nothing
    /// about a write that may not have reached it).
    pub(crate) async fn wait(
        &self,
        worker: &Worker,
        n: u32,
        timeout: Duration,
        master: &NodeAddr,
    ) -> Result<(), String> {
        if worker.shared.table.load().master.as_ref() != Some(master) {
            return Err(master_changed(master));
        }
        let mut done = self.done.subscribe();
        // A round that starts from now on covers the caller's write.
        let need = lock(&self.inner).started + 1;
        loop {
            let finished = done.borrow_and_update().clone();
            if finished.round >= need {
                if finished.master.as_ref() != Some(master) {
                    return Err(master_changed(master));
                }
                return match finished.outcome {
                    Ok(k) if k >= n => Ok(()),
                    Ok(k) => Err(format!(
                        "NOREPLICAS pivot: the write ran on the master but {k} of the {n} replicas required acknowledged it within {timeout:?}; it may be lost in a failover"
                    )),
                    Err(e) => Err(format!(
                        "NOREPLICAS pivot: the write ran on the master but its replication could not be confirmed ({e}); it may be lost in a failover"
                    )),
                };
            }
            let lead = {
                let mut inner = lock(&self.inner);
                if inner.running {
                    None
                } else {
                    inner.running = true;
                    inner.started += 1;
                    Some((inner.started, inner.conn.take()))
                }
            };
            match lead {
                Some((round, conn)) => {
                    let (outcome, conn) = run_round(worker, conn, n, timeout).await;
                    let master = conn.as_ref().map(|c| c.addr().clone());
                    {
                        let mut inner = lock(&self.inner);
                        inner.running = false;
                        inner.conn = conn;
                    }
                    self.done.send_replace(Done {
                        round,
                        master,
                        outcome,
                    });
                }
                None => {
                    if done.changed().await.is_err() {
                        return Err("NOREPLICAS pivot: the proxy is shutting down".into());
                    }
                }
            }
        }
    }
}

fn master_changed(master: &NodeAddr) -> String {
    format!(
        "NOREPLICAS pivot: the write ran on {master}, which stopped being the master before its replication could be confirmed; it may be lost in the failover"
    )
}

/// One round: the fence and `WAIT n timeout` on the dedicated connection (opened, or
/// reopened to a new master, as needed). Returns the replicas counted and the connection
/// to keep for the next round.
async fn run_round(
    worker: &Worker,
    conn: Option<Backend>,
    n: u32,
    timeout: Duration,
) -> (Result<u32, String>, Option<Backend>) {
    let table = worker.shared.table.load();
    let Some(master) = table.master.clone() else {
        return (Err("no master known".into()), conn);
    };
    let conn = match conn {
        Some(c) if c.is_alive() && *c.addr() == master => c,
        other => {
            if let Some(old) = other {
                old.retire();
            }
            match worker.pool.dedicated(&PoolKey {
                addr: master,
                db: 0,
                resp3: false,
            }) {
                Ok(c) => c,
                Err(e) => return (Err(e), None),
            }
        }
    };
    send_fence(&conn).await;
    let ms = timeout.as_millis().max(1);
    let wait = format!(
        "*3\r\n$4\r\nWAIT\r\n${}\r\n{n}\r\n${}\r\n{ms}\r\n",
        n.to_string().len(),
        ms.to_string().len()
    );
    let (tx, rx) = oneshot::channel();
    conn.send(Request::new(Bytes::from(wait), tx)).await;
    let outcome = match rx.await {
        Ok(Ok(reply)) => parse_int(&reply)
            .and_then(|k| u32::try_from(k).ok())
            .ok_or_else(|| String::from_utf8_lossy(&reply).trim_end().to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the connection to the master ended".into()),
    };
    (outcome, Some(conn))
}

/// Queues the fence on `conn`: its replication offset then covers every write the master
/// had answered (its reply is not needed).
pub(crate) async fn send_fence(conn: &Backend) {
    let (tx, _ignored) = oneshot::channel();
    conn.send(Request::new(Bytes::from_static(WAIT_FENCE), tx))
        .await;
}

/// `:N\r\n` -> N.
fn parse_int(reply: &[u8]) -> Option<i64> {
    std::str::from_utf8(reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?)
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::{Mode, Scanner};

    #[test]
    fn fence_is_one_publish_and_replies_parse() {
        let frame = Scanner::new(Mode::Request, 1024)
            .scan(WAIT_FENCE)
            .ok()
            .flatten();
        assert_eq!(frame.map(|f| (f.len, f.argc)), Some((WAIT_FENCE.len(), 3)));
        assert_eq!(parse_int(b":2\r\n"), Some(2));
        assert_eq!(parse_int(b"-ERR x\r\n"), None);
    }
}
