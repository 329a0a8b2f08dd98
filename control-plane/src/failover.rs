//! A failover Pivot starts itself (planned maintenance): no acknowledged write is lost and
//! no client sees an error.
//!
//! A `SENTINEL FAILOVER` alone leaves a window: the old master keeps accepting writes
//! until the proxies stop sending them there, and whatever it accepts after the promoted
//! replica stopped replicating from it is lost when it becomes a replica. So:
//!
//! 1. `CLIENT PAUSE <bound> WRITE` on the master: from here it runs no write (reads go on).
//!    Writes that arrive wait inside Redis; the proxies see the master stall and hold new
//!    writes themselves.
//! 2. Wait until every healthy replica has the master's whole replication stream
//!    (`slave_repl_offset` >= the master's `master_repl_offset`), so that whichever replica
//!    the Sentinels pick has every acknowledged write.
//! 3. `SENTINEL FAILOVER` on a Sentinel; poll the replicas' `ROLE` until one is master.
//! 4. `REPLICAOF <new master>` on the old master (Sentinel would do it about 10 s later),
//!    then `CLIENT UNPAUSE`: the writes waiting inside it now get `-READONLY`, which the
//!    proxies treat as "did not run" and send again to the new master once their routing
//!    table names it (I3).
//!
//! Any failure before step 4 unpauses the master and reports why; the pause itself is
//! bounded, so a control plane that dies half-way cannot leave the master paused.
//!
//! Only a Sentinel that names the same master as the majority the control plane follows is
//! asked: one that disagrees (partitioned, or still on an older epoch) would refuse, or
//! worse, fail over a master the rest of the fleet no longer uses. The checks that need no
//! change on any node (a master, a healthy replica, an agreeing Sentinel) run before the
//! pause, so a failover that cannot start never pauses writes.

use std::time::{Duration, Instant};

use pivot_sentinel::query::{self, NodeAuth, connect};
use redis::aio::MultiplexedConnection;

use crate::error::Error;
use crate::state::State;
use crate::topology::NodeAddr;

/// Bounds of a planned failover.
#[derive(Debug, Clone, Copy)]
pub struct FailoverOptions {
    /// Longest time the master's writes stay paused (Redis lifts the pause by itself then).
    pub pause: Duration,
    /// How long the replicas get to catch up with the paused master.
    pub catch_up: Duration,
    /// How long the Sentinels get to promote a replica.
    pub promotion: Duration,
}

impl Default for FailoverOptions {
    fn default() -> Self {
        FailoverOptions {
            pause: Duration::from_secs(10),
            catch_up: Duration::from_secs(2),
            promotion: Duration::from_secs(5),
        }
    }
}

/// What a planned failover did, with its timings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailoverReport {
    /// The master before.
    pub old_master: String,
    /// The promoted replica.
    pub new_master: String,
    /// From the pause to every replica having the master's offset.
    pub catch_up_ms: u64,
    /// From `SENTINEL FAILOVER` to the promoted replica answering `ROLE` as master.
    pub promotion_ms: u64,
    /// How long the master's writes were paused.
    pub paused_ms: u64,
    /// From the pause to the control plane naming the new master.
    pub total_ms: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A field of an `INFO` reply.
fn info_field(info: &str, name: &str) -> Option<i64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

async fn info_replication(conn: &mut MultiplexedConnection) -> Result<String, String> {
    redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())
}

async fn is_master(addr: &NodeAddr, auth: Option<&NodeAuth>) -> bool {
    let Ok(mut c) = connect(addr, auth).await else {
        return false;
    };
    query::role(&mut c).await.is_ok_and(|r| r == "master")
}

/// Runs a planned failover of `service` (see the module docs).
pub async fn run(
    state: &State,
    service: &str,
    opts: FailoverOptions,
) -> Result<FailoverReport, Error> {
    let current = state.current();
    let svc = current
        .services
        .get(service)
        .ok_or_else(|| Error::UnknownService(service.to_string()))?;
    let master = svc
        .topology
        .master
        .clone()
        .ok_or_else(|| Error::Conflict(format!("service `{service}` has no master")))?;
    let replicas: Vec<NodeAddr> = svc
        .topology
        .replicas
        .iter()
        .filter(|r| r.healthy)
        .map(|r| r.addr.clone())
        .collect();
    if replicas.is_empty() {
        return Err(Error::Conflict(format!(
            "service `{service}` has no healthy replica to fail over to"
        )));
    }
    let mut sentinels: Vec<NodeAddr> = svc
        .topology
        .sentinels
        .iter()
        .filter(|s| s.reachable)
        .map(|s| s.addr.clone())
        .collect();
    if sentinels.is_empty() {
        sentinels = svc
            .topology
            .sentinels
            .iter()
            .map(|s| s.addr.clone())
            .collect();
    }
    let auth = svc.backend_auth.as_ref().map(|a| NodeAuth {
        username: a.username.clone(),
        password: a.password.clone(),
    });
    let invalid = |what: String| Error::Unavailable(format!("failover of `{service}`: {what}"));
    let sentinels = agreeing_sentinels(service, &master, &sentinels).await;
    if sentinels.is_empty() {
        return Err(Error::Conflict(format!(
            "no reachable Sentinel of `{service}` names {master} as its master"
        )));
    }

    let mut m = connect(&master, auth.as_ref()).await.map_err(invalid)?;
    let started = Instant::now();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms(opts.pause))
        .arg("WRITE")
        .query_async(&mut m)
        .await
        .map_err(|e| invalid(format!("CLIENT PAUSE on {master}: {e}")))?;
    tracing::info!(service, %master, "planned failover: master writes paused");

    let outcome = promote(
        service,
        &master,
        &replicas,
        &sentinels,
        auth.as_ref(),
        opts,
        &mut m,
    )
    .await;
    // Whatever happened, the master's writes resume (as a replica, after a promotion).
    let unpause: redis::RedisResult<()> = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut m)
        .await;
    let paused = started.elapsed();
    if let Err(e) = unpause {
        tracing::warn!(service, %master, error = %e, "CLIENT UNPAUSE failed; the pause ends by itself");
    }
    let (new_master, catch_up, promotion) = outcome.map_err(invalid)?;
    tracing::info!(service, old = %master, new = %new_master, paused_ms = ms(paused), "planned failover: promoted");

    // Done when the control plane itself names the new master.
    let mut rx = state.subscribe();
    let named = async {
        loop {
            let named = rx
                .borrow_and_update()
                .services
                .get(service)
                .and_then(|s| s.topology.master.clone());
            if named.as_ref() == Some(&new_master) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(opts.promotion, named)
        .await
        .map_err(|_| {
            invalid(format!(
                "{new_master} was promoted but the Sentinels' majority did not name it within {:?}",
                opts.promotion
            ))
        })?;
    Ok(FailoverReport {
        old_master: master.to_string(),
        new_master: new_master.to_string(),
        catch_up_ms: ms(catch_up),
        promotion_ms: ms(promotion),
        paused_ms: ms(paused),
        total_ms: ms(started.elapsed()),
    })
}

/// The Sentinels among `sentinels` that name `master` for `service`
/// (`SENTINEL GET-MASTER-ADDR-BY-NAME`), in order.
async fn agreeing_sentinels(
    service: &str,
    master: &NodeAddr,
    sentinels: &[NodeAddr],
) -> Vec<NodeAddr> {
    let mut agreeing = Vec::new();
    for s in sentinels {
        let named = async {
            let mut c = connect(s, None).await.ok()?;
            let (host, port): (String, u16) = query::timed(
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(service)
                    .query_async(&mut c),
            )
            .await
            .ok()?;
            Some(NodeAddr::new(&host, port))
        };
        match named.await {
            Some(named) if &named == master => agreeing.push(s.clone()),
            other => {
                tracing::debug!(service, sentinel = %s, names = ?other.map(|n| n.to_string()), "Sentinel does not name the accepted master; not asking it");
            }
        }
    }
    agreeing
}

/// Steps 2 to 4 (the master is paused): returns the promoted replica and the catch-up and
/// promotion times.
#[allow(clippy::too_many_arguments)]
async fn promote(
    service: &str,
    master: &NodeAddr,
    replicas: &[NodeAddr],
    sentinels: &[NodeAddr],
    auth: Option<&NodeAuth>,
    opts: FailoverOptions,
    m: &mut MultiplexedConnection,
) -> Result<(NodeAddr, Duration, Duration), String> {
    let paused_at = Instant::now();
    let info = info_replication(m).await?;
    let offset = info_field(&info, "master_repl_offset")
        .ok_or_else(|| format!("{master}: no master_repl_offset in INFO"))?;
    // 2. Every healthy replica has everything the master acknowledged.
    let mut conns = Vec::with_capacity(replicas.len());
    for r in replicas {
        conns.push((r, connect(r, auth).await?));
    }
    let deadline = paused_at + opts.catch_up;
    loop {
        let mut behind = Vec::new();
        for (r, c) in &mut conns {
            let info = info_replication(c).await?;
            let at = info_field(&info, "slave_repl_offset").unwrap_or(-1);
            if at < offset {
                behind.push(format!("{r} at {at}"));
            }
        }
        if behind.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "replicas did not catch up with the master's offset {offset} within {:?}: {}",
                opts.catch_up,
                behind.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let catch_up = paused_at.elapsed();

    // 3. Ask a Sentinel, then wait for a replica to be master.
    let mut asked = None;
    let mut refusals = Vec::new();
    for s in sentinels {
        let mut c = match connect(s, None).await {
            Ok(c) => c,
            Err(e) => {
                refusals.push(e);
                continue;
            }
        };
        let r: redis::RedisResult<()> = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(service)
            .query_async(&mut c)
            .await;
        match r {
            Ok(()) => {
                asked = Some(s.clone());
                break;
            }
            Err(e) => refusals.push(format!("{s}: {e}")),
        }
    }
    if asked.is_none() {
        return Err(format!(
            "no Sentinel started the failover: {}",
            refusals.join("; ")
        ));
    }
    let asked_at = Instant::now();
    let deadline = asked_at + opts.promotion;
    let promoted = loop {
        let mut found = None;
        for r in replicas {
            if is_master(r, auth).await {
                found = Some(r.clone());
                break;
            }
        }
        if let Some(p) = found {
            break p;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no replica was promoted within {:?} of SENTINEL FAILOVER",
                opts.promotion
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let promotion = asked_at.elapsed();

    // 4. The old master follows the new one before its writes resume.
    let _: () = redis::cmd("REPLICAOF")
        .arg(&promoted.host)
        .arg(promoted.port)
        .query_async(m)
        .await
        .map_err(|e| format!("REPLICAOF on {master}: {e}"))?;
    tracing::debug!(service, "old master now replicates from the new one");
    Ok((promoted, catch_up, promotion))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields() {
        let info =
            "# Replication\r\nrole:slave\r\nslave_repl_offset:1234\r\nmaster_repl_offset:99\r\n";
        assert_eq!(info_field(info, "slave_repl_offset"), Some(1234));
        assert_eq!(info_field(info, "master_repl_offset"), Some(99));
        assert_eq!(info_field(info, "repl_offset"), None);
    }
}
