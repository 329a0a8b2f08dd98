//! A bounded queue that moves whole batches under one lock.
//!
//! The proxy's two per-request hand-offs (a client's requests to a backend connection, and a
//! client's reply slots to its writer) used tokio's bounded `mpsc`, which costs a few atomic
//! operations per item on each side plus a mutex on every receive (it returns the item's
//! permit). Requests arrive in batches anyway (everything one read brought), and consumers
//! drain everything there is, so this queue moves a batch per lock: the producer appends its
//! batch, the consumer swaps the whole queue out.
//!
//! Bound: the queue counts the items it *holds*: queued, or taken by the consumer and not
//! yet [released](Queue::release) (a request not yet written, a reply slot not yet
//! answered). A producer may append while it holds fewer than `capacity`, whatever the size
//! of its batch (what one read of one client brought, itself bounded by the read size), and
//! then waits for room ([`Queue::room`]) before producing more: at most `capacity` items
//! plus one batch per producer.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

/// An emptied queue with room for more items than this is dropped rather than kept: a
/// deep pipeline once must not pin its memory for the rest of the connection's life.
pub(crate) const KEEP_CAPACITY: usize = 64;

/// Empties `q` for reuse, keeping its allocation only when it is small.
pub(crate) fn recycle<T>(q: &mut VecDeque<T>) {
    if q.capacity() > KEEP_CAPACITY {
        *q = VecDeque::new();
    } else {
        q.clear();
    }
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Queue<T> {
    state: Mutex<State<T>>,
    /// The consumer, waiting for items.
    consumer: AtomicWaker,
    /// Producers waiting for room.
    room: Notify,
    capacity: usize,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    /// The consumer is gone: nothing more is taken, pushes fail.
    closed: bool,
    /// The producers are done: the consumer ends once it has taken what is left.
    finished: bool,
    /// Items queued, or taken and not yet released.
    held: usize,
}

impl<T> Queue<T> {
    /// An empty queue that takes batches while it holds fewer than `capacity` items (see the
    /// module documentation).
    pub(crate) fn new(capacity: usize) -> Self {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
                finished: false,
                held: 0,
            }),
            consumer: AtomicWaker::new(),
            room: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // Nothing panics while holding the lock; a poisoned queue is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends every item of `batch`, leaving it empty, and wakes the consumer; returns
    /// whether the queue is now full (the producer then waits for [`Queue::room`]). When the
    /// consumer is gone, nothing is appended: the items stay in `batch` (`Err`).
    pub(crate) fn push(&self, batch: &mut Vec<T>) -> Result<bool, Closed> {
        if batch.is_empty() {
            return Ok(false);
        }
        let full = {
            let mut st = self.lock();
            if st.closed {
                return Err(Closed);
            }
            st.held += batch.len();
            st.items.extend(batch.drain(..));
            st.held >= self.capacity
        };
        self.consumer.wake();
        Ok(full)
    }

    /// Appends one item (see [`Queue::push`]); gives it back when the consumer is gone.
    pub(crate) fn push_one(&self, item: T) -> Result<bool, T> {
        let full = {
            let mut st = self.lock();
            if st.closed {
                return Err(item);
            }
            st.items.push_back(item);
            st.held += 1;
            st.held >= self.capacity
        };
        self.consumer.wake();
        Ok(full)
    }

    /// Waits until the queue holds fewer than `capacity` items, or the consumer is gone.
    pub(crate) async fn room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            // Registered before the check, so that a take in between is not missed.
            notified.as_mut().enable();
            {
                let st = self.lock();
                if st.closed || st.held < self.capacity {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Moves every queued item to the back of `out`. True when it took any. They still count
    /// against the bound until [`Queue::release`]d.
    pub(crate) fn try_take(&self, out: &mut VecDeque<T>) -> bool {
        let mut st = self.lock();
        if st.items.is_empty() {
            return false;
        }
        if out.is_empty() {
            // Swapped, not moved: both allocations keep circulating (unless large).
            std::mem::swap(&mut st.items, out);
            recycle(&mut st.items);
        } else {
            out.append(&mut st.items);
        }
        true
    }

    /// The consumer is done with `n` items it took (written, answered): room for as many.
    pub(crate) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let freed = {
            let mut st = self.lock();
            let was_full = st.held >= self.capacity;
            st.held = st.held.saturating_sub(n);
            was_full && st.held < self.capacity
        };
        if freed {
            self.room.notify_waiters();
        }
    }

    fn poll_take(&self, cx: &mut Context<'_>, out: &mut VecDeque<T>) -> Poll<bool> {
        if self.try_take(out) {
            return Poll::Ready(true);
        }
        self.consumer.register(cx.waker());
        // Checked again after registering: a push in between woke the old waker.
        if self.try_take(out) {
            return Poll::Ready(true);
        }
        let st = self.lock();
        if st.closed || st.finished {
            Poll::Ready(false)
        } else {
            Poll::Pending
        }
    }

    /// Waits for items and moves them all to the back of `out`. False when the producers
    /// are done (or the queue was closed) and nothing is left.
    pub(crate) async fn take(&self, out: &mut VecDeque<T>) -> bool {
        poll_fn(|cx| self.poll_take(cx, out)).await
    }

    /// The producers are done: once the consumer has taken what is left, `take` returns
    /// false.
    pub(crate) fn finish(&self) {
        self.lock().finished = true;
        self.consumer.wake();
    }

    /// The consumer is gone: later pushes fail, producers waiting for room stop waiting.
    /// Returns what was queued, for the caller to fail.
    pub(crate) fn close(&self) -> VecDeque<T> {
        let left = {
            let mut st = self.lock();
            st.closed = true;
            std::mem::take(&mut st.items)
        };
        self.room.notify_waiters();
        left
    }
}

/// The consumer of a queue is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn batches_arrive_in_order_and_wake_the_consumer() {
        let q = Arc::new(Queue::new(8));
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut out = VecDeque::new();
                while q.take(&mut out).await {
                    got.extend(out.drain(..));
                }
                got
            })
        };
        let mut batch = vec![1, 2, 3];
        assert!(!q.push(&mut batch).unwrap());
        assert!(batch.is_empty());
        assert!(!q.push_one(4).unwrap());
        tokio::task::yield_now().await;
        let mut batch = vec![5, 6];
        q.push(&mut batch).unwrap();
        q.finish();
        assert_eq!(consumer.await.unwrap(), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_full_queue_makes_producers_wait_until_the_consumer_releases() {
        let q = Queue::new(2);
        assert!(q.push(&mut vec![1, 2, 3]).unwrap(), "full after the push");
        // Polled by hand: each poll either finds room or registers for the next release.
        let mut room = Box::pin(q.room());
        assert!(room.as_mut().now_or_never().is_none(), "room while full");
        let mut out = VecDeque::new();
        assert!(q.try_take(&mut out));
        assert_eq!(out, [1, 2, 3]);
        // Taken is not done with: still no room.
        assert!(
            room.as_mut().now_or_never().is_none(),
            "room before a release"
        );
        q.release(2);
        assert!(
            room.as_mut().now_or_never().is_some(),
            "no room after a release"
        );
        assert!(
            q.push_one(4).unwrap(),
            "one held, plus the new one: full again"
        );
        q.release(2);
        assert!(!q.push_one(5).unwrap(), "room again");
    }

    #[tokio::test]
    async fn closing_returns_the_rest_and_refuses_pushes() {
        let q = Queue::new(4);
        q.push(&mut vec![1, 2]).unwrap();
        assert_eq!(q.close(), [1, 2]);
        let mut batch = vec![3];
        assert_eq!(q.push(&mut batch), Err(Closed));
        assert_eq!(batch, [3], "a refused batch stays with the producer");
        assert_eq!(q.push_one(4), Err(4));
        // Producers waiting for room stop waiting; the consumer ends.
        tokio::time::timeout(Duration::from_secs(5), q.room())
            .await
            .unwrap();
        let mut out = VecDeque::new();
        assert!(!q.take(&mut out).await);
    }

    #[test]
    fn a_deep_batch_does_not_pin_its_memory() {
        let q = Queue::new(4096);
        q.push(&mut (0..1000).collect()).unwrap();
        let mut out = VecDeque::new();
        assert!(q.try_take(&mut out));
        assert_eq!(out.len(), 1000);
        // The consumer's emptied deque went back to the queue: dropped, being large.
        assert!(q.lock().items.capacity() <= KEEP_CAPACITY);
        recycle(&mut out);
        assert_eq!(out.capacity(), 0);
        let mut small = VecDeque::with_capacity(8);
        small.push_back(1);
        recycle(&mut small);
        assert!(
            small.is_empty() && small.capacity() >= 8,
            "a small one is kept"
        );
    }

    #[tokio::test]
    async fn finished_queue_is_drained_before_take_ends() {
        let q = Queue::new(4);
        q.push_one(1).unwrap();
        q.finish();
        let mut out = VecDeque::new();
        assert!(q.take(&mut out).await);
        assert_eq!(out, [1]);
        out.clear();
        assert!(!q.take(&mut out).await);
    }
}
