//! Where the replies to a client's requests land: one per client, in place of a `oneshot`
//! channel per request.
//!
//! Every request the client's reader sends takes a [`Ticket`], numbered in request order;
//! the backend connection that gets the reply delivers it to the ticket's cell, and the
//! client's writer, which needs the replies in request order anyway, takes them from the
//! front. A `oneshot` cost an allocation and its free, and a handful of atomic operations,
//! per request; a cell costs a slot in a ring the client keeps, and the writer takes every
//! reply that is there under one lock.
//!
//! A ticket dropped without a delivery (its connection task ended without answering,
//! which every path is meant to prevent) delivers "dropped" on its own, so that the writer
//! never waits for a reply that cannot come.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::backend::Reply;
use crate::clients::Client;

/// A client's reply cells. See the module documentation.
#[derive(Debug, Default)]
pub struct Inbox {
    /// Number of the next ticket.
    next: AtomicU64,
    cells: Mutex<Cells>,
    /// The client's writer, waiting for the front cell.
    writer: AtomicWaker,
}

#[derive(Debug, Default)]
struct Cells {
    /// Ticket number of `cells[0]`: the oldest reply the writer has not taken.
    base: u64,
    /// `None` while waiting; `Some(None)` for a ticket dropped without a reply.
    cells: VecDeque<Option<Option<Reply>>>,
    /// The writer is gone: replies are dropped as they arrive.
    closed: bool,
}

fn lock(m: &Mutex<Cells>) -> std::sync::MutexGuard<'_, Cells> {
    // Nothing panics while holding it; the cells stay consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inbox {
    fn deliver(&self, seq: u64, reply: Option<Reply>) {
        let front = {
            let mut c = lock(&self.cells);
            if c.closed {
                // Nobody will write it (the client is gone or was cut off): dropped now,
                // not held until the client's last request is answered.
                return;
            }
            // Below `base`: taken already, which cannot be (each ticket delivers once).
            let Some(i) = seq.checked_sub(c.base) else {
                return;
            };
            let Ok(i) = usize::try_from(i) else {
                return;
            };
            if i >= c.cells.len() {
                c.cells.resize_with(i + 1, || None);
            }
            c.cells[i] = Some(reply);
            i == 0
        };
        if front {
            self.writer.wake();
        }
    }
}

impl Inbox {
    /// The writer is gone: replies still to come are dropped on arrival, and those held
    /// are dropped now.
    pub fn close(&self) {
        let mut c = lock(&self.cells);
        c.closed = true;
        c.cells = VecDeque::new();
    }
}

/// A request's claim on its reply cell; delivers exactly once (on drop, "dropped").
#[derive(Debug)]
pub struct Ticket {
    client: Arc<Client>,
    seq: u64,
    delivered: bool,
}

impl Ticket {
    /// The next ticket of `client`. Tickets must be taken in the order the writer will
    /// take their replies (the order of the client's reply slots).
    pub fn take(client: &Arc<Client>) -> Ticket {
        Ticket {
            seq: client.inbox.next.fetch_add(1, Ordering::Relaxed),
            client: client.clone(),
            delivered: false,
        }
    }

    /// The ticket's number, for the writer to wait on ([`Replies::poll`]).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The client the reply is for.
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// Delivers the reply. To a killed client (`CLIENT KILL`, or past its output limit,
    /// which a delivery is what triggers) it is dropped at once: its writer writes nothing
    /// more, and holding what arrives until the writer has noticed could hold as much as
    /// the client had asked for.
    pub fn deliver(mut self, reply: Reply) {
        self.delivered = true;
        let reply = (!self.client.kill.is_raised()).then_some(reply);
        self.client.inbox.deliver(self.seq, reply);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.delivered {
            self.client.inbox.deliver(self.seq, None);
        }
    }
}

/// The writer's side of an [`Inbox`]: the replies it took, in ticket order.
#[derive(Debug, Default)]
pub struct Replies {
    /// Ticket number of `taken[0]`.
    base: u64,
    /// Cells taken from the inbox, every one delivered (`Some`).
    taken: VecDeque<Option<Option<Reply>>>,
}

impl Replies {
    /// Takes every delivered reply at the front of the inbox (one lock for all of them).
    /// When all the inbox holds is delivered, as for a pipeline whose replies are all
    /// there, the two rings are swapped rather than the replies moved one by one.
    fn take_ready(&mut self, inbox: &Inbox) {
        if self.taken.is_empty() {
            crate::queue::recycle(&mut self.taken);
        }
        let mut c = lock(&inbox.cells);
        let ready = c.cells.iter().take_while(|cell| cell.is_some()).count();
        if ready == 0 {
            return;
        }
        if ready == c.cells.len() && self.taken.is_empty() {
            std::mem::swap(&mut self.taken, &mut c.cells);
        } else {
            self.taken.extend(c.cells.drain(..ready));
            if c.cells.is_empty() {
                crate::queue::recycle(&mut c.cells);
            }
        }
        c.base += ready as u64;
    }

    /// The reply to ticket `seq`, if delivered: `Some(None)` when the ticket was dropped
    /// without one. Taken in ticket order; replies to older tickets still there are for
    /// requests whose reply slot was discarded, and are dropped.
    pub fn try_take(&mut self, seq: u64, inbox: &Inbox) -> Option<Option<Reply>> {
        if seq < self.base {
            // Taken already: cannot happen; answer rather than wait for ever.
            return Some(None);
        }
        loop {
            if self.taken.is_empty() {
                self.take_ready(inbox);
            }
            // Every cell taken was delivered: `None` only for a ticket dropped without a
            // reply.
            let r = self.taken.pop_front()?.flatten();
            self.base += 1;
            if self.base > seq {
                return Some(r);
            }
        }
    }

    /// Waits for the reply to ticket `seq` (see [`Replies::try_take`]).
    pub fn poll(&mut self, cx: &mut Context<'_>, seq: u64, inbox: &Inbox) -> Poll<Option<Reply>> {
        if let Some(r) = self.try_take(seq, inbox) {
            return Poll::Ready(r);
        }
        inbox.writer.register(cx.waker());
        // Delivered between the check and the registration: its wake may have missed us.
        match self.try_take(seq, inbox) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn client() -> Arc<Client> {
        let reg = crate::clients::Registry::new(10, 0);
        let a = "127.0.0.1:1".parse().unwrap();
        reg.register(1, a, a).unwrap()
    }

    fn ok(s: &'static str) -> Reply {
        Ok(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn replies_come_out_in_ticket_order_whatever_the_delivery_order() {
        let c = client();
        let (t0, t1, t2) = (Ticket::take(&c), Ticket::take(&c), Ticket::take(&c));
        let mut r = Replies::default();
        let seqs = (t0.seq(), t1.seq(), t2.seq());
        t2.deliver(ok("c"));
        t1.deliver(ok("b"));
        assert!(
            r.try_take(seqs.0, &c.inbox).is_none(),
            "the first is not there"
        );
        t0.deliver(ok("a"));
        for (seq, want) in [(seqs.0, "a"), (seqs.1, "b"), (seqs.2, "c")] {
            let got = r.try_take(seq, &c.inbox).unwrap().unwrap().unwrap();
            assert_eq!(&got[..], want.as_bytes());
        }
    }

    #[test]
    fn replies_are_taken_in_order_across_gaps_and_partial_takes() {
        let c = client();
        let t: Vec<Ticket> = (0..5).map(|_| Ticket::take(&c)).collect();
        let seq: Vec<u64> = t.iter().map(Ticket::seq).collect();
        let mut t = t.into_iter();
        let (t0, t1, t2, t3, t4) = (
            t.next().unwrap(),
            t.next().unwrap(),
            t.next().unwrap(),
            t.next().unwrap(),
            t.next().unwrap(),
        );
        let mut r = Replies::default();
        let take = |r: &mut Replies, s: u64| r.try_take(s, &c.inbox).map(|x| x.unwrap().unwrap());
        // The front delivered, a gap behind it: only the front is taken.
        t0.deliver(ok("a"));
        t2.deliver(ok("c"));
        assert_eq!(&take(&mut r, seq[0]).unwrap()[..], b"a");
        assert!(take(&mut r, seq[1]).is_none(), "t1 is not there yet");
        t1.deliver(ok("b"));
        t3.deliver(ok("d"));
        // Everything there: taken at once; the writer then takes them one by one, and one
        // delivered meanwhile is taken after them.
        assert_eq!(&take(&mut r, seq[1]).unwrap()[..], b"b");
        t4.deliver(ok("e"));
        for (s, want) in [(seq[2], "c"), (seq[3], "d"), (seq[4], "e")] {
            assert_eq!(&take(&mut r, s).unwrap()[..], want.as_bytes());
        }
        assert!(lock(&c.inbox.cells).cells.is_empty());
    }

    #[test]
    fn a_dropped_ticket_delivers_dropped() {
        let c = client();
        let t = Ticket::take(&c);
        let seq = t.seq();
        drop(t);
        let mut r = Replies::default();
        assert!(r.try_take(seq, &c.inbox).unwrap().is_none());
    }

    #[test]
    fn replies_to_skipped_tickets_are_dropped() {
        let c = client();
        let (t0, t1) = (Ticket::take(&c), Ticket::take(&c));
        let seq = t1.seq();
        t1.deliver(ok("b"));
        let mut r = Replies::default();
        assert!(r.try_take(seq, &c.inbox).is_none(), "t0 is still in front");
        t0.deliver(ok("a"));
        let got = r.try_take(seq, &c.inbox).unwrap().unwrap().unwrap();
        assert_eq!(&got[..], b"b");
    }

    #[test]
    fn a_closed_inbox_drops_replies() {
        let c = client();
        let (t0, t1) = (Ticket::take(&c), Ticket::take(&c));
        t1.deliver(ok("held"));
        assert_eq!(lock(&c.inbox.cells).cells.len(), 2);
        c.inbox.close();
        assert!(lock(&c.inbox.cells).cells.is_empty());
        t0.deliver(ok("late"));
        assert!(lock(&c.inbox.cells).cells.is_empty());
    }

    #[test]
    fn a_killed_clients_replies_are_dropped_on_arrival() {
        let c = client();
        let t = Ticket::take(&c);
        let seq = t.seq();
        c.kill.raise();
        t.deliver(ok("big"));
        let mut r = Replies::default();
        assert!(
            r.try_take(seq, &c.inbox).unwrap().is_none(),
            "held for a killed client"
        );
    }

    #[tokio::test]
    async fn the_writer_is_woken_when_the_front_reply_arrives() {
        let c = client();
        let t0 = Ticket::take(&c);
        let seq = t0.seq();
        let c2 = c.clone();
        let writer = tokio::spawn(async move {
            let mut r = Replies::default();
            std::future::poll_fn(|cx| r.poll(cx, seq, &c2.inbox)).await
        });
        tokio::task::yield_now().await;
        t0.deliver(ok("x"));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got.unwrap().unwrap()[..], b"x");
    }
}
