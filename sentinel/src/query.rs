//! Asking Sentinels and Redis nodes: one Sentinel poll as a [`SentinelView`], and a node's
//! `ROLE`. Every call is bounded by [`IO_TIMEOUT`], so a frozen peer costs one timeout.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use redis::aio::MultiplexedConnection;

use crate::topology::{MasterInfo, NodeAddr, ReplicaInfo, SentinelView};

/// Timeout of every connect, subscribe and command to a Sentinel or node.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// Credentials for a Redis node (`AUTH [username] password`). `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeAuth {
    /// ACL user; `None` for the default user.
    pub username: Option<String>,
    /// The password.
    pub password: String,
}

impl fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Awaits `f` for at most [`IO_TIMEOUT`]; errors as text.
pub async fn timed<T, F>(f: F) -> Result<T, String>
where
    F: Future<Output = redis::RedisResult<T>>,
{
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {IO_TIMEOUT:?}")),
    }
}

/// A client for `addr` (a Sentinel when `auth` is `None`, or a node).
pub fn client(addr: &NodeAddr, auth: Option<&NodeAuth>) -> Result<redis::Client, String> {
    use redis::IntoConnectionInfo;
    let mut info = format!("redis://{addr}/")
        .into_connection_info()
        .map_err(|e| e.to_string())?;
    if let Some(a) = auth {
        let mut settings = info.redis_settings().clone().set_password(&a.password);
        if let Some(u) = &a.username {
            settings = settings.set_username(u);
        }
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info).map_err(|e| e.to_string())
}

/// A command connection with [`IO_TIMEOUT`] on connect and on every reply.
pub async fn connect(
    addr: &NodeAddr,
    auth: Option<&NodeAuth>,
) -> Result<MultiplexedConnection, String> {
    let client = client(addr, auth)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(IO_TIMEOUT))
        .set_response_timeout(Some(IO_TIMEOUT));
    timed(client.get_multiplexed_async_connection_with_config(&config)).await
}

/// The node's role as `ROLE` names it: `master`, `slave` or `sentinel`.
pub async fn role(conn: &mut MultiplexedConnection) -> Result<String, String> {
    let reply: Vec<redis::Value> = timed(redis::cmd("ROLE").query_async(conn)).await?;
    match reply.first() {
        Some(redis::Value::BulkString(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
        Some(redis::Value::SimpleString(s)) => Ok(s.clone()),
        other => Err(format!("unexpected ROLE reply {other:?}")),
    }
}

type Fields = HashMap<String, String>;

/// One round trip (three pipelined commands) to the Sentinel: what it says about
/// `service` (`SENTINEL MASTER` / `REPLICAS` / `SENTINELS`).
pub async fn poll(
    conn: &mut MultiplexedConnection,
    service: &str,
    sentinel: &NodeAddr,
    configured: bool,
) -> Result<SentinelView, String> {
    let master_cmd = redis::cmd("SENTINEL").arg("MASTER").arg(service).to_owned();
    let replicas_cmd = redis::cmd("SENTINEL")
        .arg("REPLICAS")
        .arg(service)
        .to_owned();
    let sentinels_cmd = redis::cmd("SENTINEL")
        .arg("SENTINELS")
        .arg(service)
        .to_owned();
    let (mut c1, mut c2, mut c3) = (conn.clone(), conn.clone(), conn.clone());
    let (m, r, s) = tokio::join!(
        timed(master_cmd.query_async::<Fields>(&mut c1)),
        timed(replicas_cmd.query_async::<Vec<Fields>>(&mut c2)),
        timed(sentinels_cmd.query_async::<Vec<Fields>>(&mut c3)),
    );
    let observed_at = SystemTime::now();
    let master = match m {
        Ok(fields) => Some(parse_master(&fields)?),
        // The Sentinel answers but doesn't monitor this service: no opinion.
        Err(e) if e.contains("No such master") => {
            return Ok(SentinelView {
                reachable: true,
                observed_at,
                ..SentinelView::unreachable(sentinel.clone(), configured)
            });
        }
        Err(e) => return Err(e),
    };
    let replicas = r?.iter().filter_map(parse_replica).collect();
    let sentinels = s?.iter().filter_map(parse_addr).collect();
    Ok(SentinelView {
        sentinel: sentinel.clone(),
        configured,
        reachable: true,
        master,
        replicas,
        master_offset: None,
        sentinels,
        observed_at,
    })
}

fn parse_addr(f: &Fields) -> Option<NodeAddr> {
    let ip = f.get("ip")?;
    let port = f.get("port")?.parse().ok()?;
    Some(NodeAddr::new(ip.clone(), port))
}

fn flags(f: &Fields) -> Vec<String> {
    f.get("flags")
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default()
}

fn parse_master(f: &Fields) -> Result<MasterInfo, String> {
    let addr = parse_addr(f).ok_or("SENTINEL MASTER without ip/port")?;
    Ok(MasterInfo {
        addr,
        config_epoch: f
            .get("config-epoch")
            .and_then(|e| e.parse().ok())
            .unwrap_or(0),
        flags: flags(f),
        failover_timeout_ms: f.get("failover-timeout").and_then(|v| v.parse().ok()),
    })
}

fn parse_replica(f: &Fields) -> Option<ReplicaInfo> {
    Some(ReplicaInfo {
        addr: parse_addr(f)?,
        flags: flags(f),
        master_link_status: f.get("master-link-status").cloned().unwrap_or_default(),
        master_link_down_ms: f
            .get("master-link-down-time")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        repl_offset: f.get("slave-repl-offset").and_then(|v| v.parse().ok()),
        role_reported: f.get("role-reported").cloned().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_sentinel_replies() {
        let m = parse_master(&fields(&[
            ("ip", "127.0.0.1"),
            ("port", "7000"),
            ("flags", "master,s_down"),
            ("config-epoch", "3"),
            ("failover-timeout", "3000"),
        ]))
        .unwrap();
        assert_eq!(m.addr, NodeAddr::new("127.0.0.1", 7000));
        assert_eq!(m.config_epoch, 3);
        assert_eq!(m.flags, vec!["master", "s_down"]);
        assert_eq!(m.failover_timeout_ms, Some(3000));
        let r = parse_replica(&fields(&[
            ("ip", "127.0.0.1"),
            ("port", "7001"),
            ("flags", "slave"),
            ("master-link-status", "ok"),
            ("master-link-down-time", "0"),
            ("slave-repl-offset", "12345"),
        ]))
        .unwrap();
        assert_eq!(r.repl_offset, Some(12345));
        assert_eq!(r.master_link_status, "ok");
        assert!(parse_replica(&fields(&[("ip", "x")])).is_none());
        assert!(parse_master(&fields(&[])).is_err());
    }

    #[test]
    fn auth_is_redacted() {
        let a = NodeAuth {
            username: Some("pivot".into()),
            password: "s3cret".into(),
        };
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn closed_port_fails_fast() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let started = std::time::Instant::now();
        assert!(
            connect(&NodeAddr::new("127.0.0.1", port), None)
                .await
                .is_err()
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
