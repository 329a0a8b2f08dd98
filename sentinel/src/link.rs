//! One link to one Sentinel for one service: subscribes to the Sentinel's event channels
//! and polls it ([`query::poll`]) every poll interval *and* as soon as an event about the
//! service arrives, sending each result to its aggregator as a [`Report`]. The control
//! plane's watcher and the proxy's Sentinel follower both run their links with this.
//!
//! A failover leader's own events ([`LeaderEvent`]) are sent at once, before the poll they
//! trigger. Failed links report the Sentinel unreachable and reconnect with capped
//! exponential backoff and jitter; every I/O step is bounded by [`query::IO_TIMEOUT`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::event::{EVENT_CHANNELS, EVENT_PATTERN, LeaderEvent, LeaderTracker, concerns};
use crate::query::{self, timed};
use crate::topology::{NodeAddr, SentinelView};

/// First reconnect delay.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What triggered a poll: a Sentinel event, with when it arrived.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// The event channel, e.g. `+switch-master`.
    pub event: String,
    /// When the link received it.
    pub at: Instant,
}

/// A link's report to its aggregator.
#[derive(Debug)]
pub enum Report {
    /// A poll's result, or that the Sentinel could not be asked (`view.reachable` false).
    View {
        /// What the Sentinel said.
        view: SentinelView,
        /// The event that triggered the poll; `None` for a periodic one.
        trigger: Option<Trigger>,
    },
    /// An event from the Sentinel leading a failover of the service.
    Leader {
        /// The Sentinel that published it.
        sentinel: NodeAddr,
        /// What it said.
        event: LeaderEvent,
        /// When the link received it.
        at: Instant,
    },
}

/// One Sentinel link; [`run`](Link::run) it as a task.
#[derive(Debug)]
pub struct Link {
    /// The service (Sentinel master name).
    pub service: String,
    /// The Sentinel.
    pub sentinel: NodeAddr,
    /// Given by the operator (its view votes) rather than discovered.
    pub configured: bool,
    /// Poll period when nothing happens.
    pub poll_interval: Duration,
    /// Where reports go; the link ends when the receiver is dropped.
    pub tx: mpsc::Sender<Report>,
    /// "Poll now", shared by the service's links: rung when any of them sees an event,
    /// since the others may know more already (e.g. the leader after a promotion).
    pub poke: Arc<Notify>,
    /// Ends the link.
    pub shutdown: CancellationToken,
}

/// A connected link: a command connection and the event stream.
struct Session {
    conn: MultiplexedConnection,
    events: redis::aio::PubSubStream,
}

impl Link {
    /// Runs until `shutdown` or until the aggregator is gone.
    pub async fn run(self) {
        let mut backoff = MIN_BACKOFF;
        // Log the first failure of a streak at warn, the retries at debug.
        let mut was_up = true;
        loop {
            let failure = match self.connect().await {
                Ok(session) => {
                    if !was_up {
                        info!("Sentinel link up");
                    }
                    was_up = true;
                    backoff = MIN_BACKOFF;
                    self.session(session).await
                }
                Err(e) => e,
            };
            if self.shutdown.is_cancelled() {
                return;
            }
            if was_up {
                warn!(error = %failure, "Sentinel link down; reconnecting");
            } else {
                debug!(error = %failure, "Sentinel still unreachable");
            }
            was_up = false;
            let view = SentinelView::unreachable(self.sentinel.clone(), self.configured);
            if self
                .tx
                .send(Report::View {
                    view,
                    trigger: None,
                })
                .await
                .is_err()
            {
                return;
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(jitter(backoff)) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn connect(&self) -> Result<Session, String> {
        let conn = query::connect(&self.sentinel, None).await?;
        let client = query::client(&self.sentinel, None)?;
        let mut pubsub = timed(client.get_async_pubsub()).await?;
        for ch in EVENT_CHANNELS {
            timed(pubsub.subscribe(*ch)).await?;
        }
        timed(pubsub.psubscribe(EVENT_PATTERN)).await?;
        Ok(Session {
            conn,
            events: pubsub.into_on_message(),
        })
    }

    /// Polls until the link fails (returns why) or shutdown.
    async fn session(&self, mut s: Session) -> String {
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Epochs learned on this connection only: a reconnect may have missed events.
        let mut leader = LeaderTracker::default();
        loop {
            let trigger = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return "shutdown".into(),
                msg = s.events.next() => {
                    let Some(msg) = msg else { return "event stream closed".into() };
                    let at = Instant::now();
                    let channel = msg.get_channel_name().to_string();
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if let Some(event) = leader.observe(&channel, &payload, &self.service) {
                        debug!(event = %channel, %payload, "failover leader event");
                        let report = Report::Leader { sentinel: self.sentinel.clone(), event, at };
                        if self.tx.send(report).await.is_err() {
                            return "aggregator gone".into();
                        }
                    }
                    if !concerns(&payload, &self.service) {
                        continue;
                    }
                    debug!(event = %channel, %payload, "Sentinel event");
                    self.poke.notify_waiters();
                    Some(Trigger { event: channel, at })
                }
                _ = tick.tick() => None,
                () = self.poke.notified() => None,
            };
            let view = match query::poll(
                &mut s.conn,
                &self.service,
                &self.sentinel,
                self.configured,
            )
            .await
            {
                Ok(v) => v,
                Err(e) => return e,
            };
            if self.tx.send(Report::View { view, trigger }).await.is_err() {
                return "aggregator gone".into();
            }
        }
    }
}

/// Up to +25 % so that links don't reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let extra = rand::random_range(0.0..0.25);
    d.mul_f64(1.0 + extra)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn closed_port_reports_unreachable_quickly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let (tx, mut rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let link = Link {
            service: "svc".into(),
            sentinel: NodeAddr::new("127.0.0.1", port),
            configured: true,
            poll_interval: Duration::from_millis(100),
            tx,
            poke: Arc::new(Notify::new()),
            shutdown: shutdown.clone(),
        };
        let task = tokio::spawn(link.run());
        let r = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(r, Report::View { view, .. } if !view.reachable));
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .unwrap()
            .unwrap();
    }
}
