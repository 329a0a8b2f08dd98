//! The SQLite store: services, topology events, proxies, and the config-version
//! reservation. Runtime `query`/`query_as` only; the schema lives in `../migrations`.
//!
//! Writes that must not slow the topology path (event rows, proxy rows) go through
//! [`Writer`], a bounded queue drained by one task; only the version reservation is
//! written inline (once per [`VERSION_BLOCK`] versions).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqlitePool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::ServiceSpec;
use crate::error::Error;
use crate::state::{
    BackendAuth, CommandRule, Consistency, Policy, ProxyUser, ReadPolicy, WriteAck,
};
use crate::topology::NodeAddr;

/// Versions are reserved in blocks of this size.
///
/// Why: the config version must keep increasing across restarts, and a proxy may have
/// seen any version we handed out. Instead of making every topology change wait for a
/// durable write (events are written asynchronously and may be lost in a crash), the
/// state reserves `[v, v + VERSION_BLOCK)` in the `meta` table before handing out `v`,
/// and a restart continues after the highest reservation (or the highest event version,
/// whichever is larger). A restart therefore skips up to a block of versions, which is
/// harmless: versions only need to increase.
pub const VERSION_BLOCK: u64 = 1024;

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Converts Unix milliseconds back to a `SystemTime`.
pub fn from_unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A registered service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredService {
    /// Sentinel master name.
    pub name: String,
    /// Configured Sentinels.
    pub sentinels: Vec<NodeAddr>,
    /// Routing policy (the default where nothing was set).
    pub policy: Policy,
    /// Credentials for its Redis nodes, set with `--backend-auth`.
    pub backend_auth: Option<BackendAuth>,
    /// Users clients authenticate to the proxies as, by name.
    pub users: Vec<ProxyUser>,
}

#[derive(FromRow)]
struct ServiceRow {
    name: String,
    sentinels: String,
    policy: Option<String>,
    backend_username: Option<String>,
    backend_password: Option<String>,
}

/// What the `services.policy` column holds (JSON); fields absent mean the default.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct StoredPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    read_policy: Option<ReadPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    consistency: Option<Consistency>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rules: Vec<CommandRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_replica_lag: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    write_ack: Option<WriteAck>,
    /// Milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failover_hold_ms: Option<u64>,
}

impl StoredPolicy {
    fn resolve(self) -> Policy {
        let d = Policy::default();
        Policy {
            read_policy: self.read_policy.unwrap_or(d.read_policy),
            consistency: self.consistency.unwrap_or(d.consistency),
            rules: self.rules,
            max_replica_lag: self.max_replica_lag,
            write_ack: self.write_ack.unwrap_or(d.write_ack),
            failover_hold: self.failover_hold_ms.map(Duration::from_millis),
        }
    }
}

impl From<&Policy> for StoredPolicy {
    fn from(p: &Policy) -> Self {
        StoredPolicy {
            read_policy: Some(p.read_policy),
            consistency: Some(p.consistency),
            rules: p.rules.clone(),
            max_replica_lag: p.max_replica_lag,
            write_ack: Some(p.write_ack),
            failover_hold_ms: p
                .failover_hold
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

#[derive(FromRow)]
struct UserRow {
    service: String,
    name: String,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

/// One topology event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow)]
pub struct EventRow {
    /// Row id (increasing).
    pub id: i64,
    /// Service name.
    pub service: String,
    /// Config version the change produced.
    pub version: i64,
    /// `initial`, `master-changed`, `replicas-changed`, `replica-health`, `sentinels-changed`.
    pub kind: String,
    /// Master before the change.
    pub old_master: Option<String>,
    /// Master after the change.
    pub new_master: Option<String>,
    /// Human-readable reason.
    pub reason: String,
    /// JSON details.
    pub details: String,
    /// Unix milliseconds.
    pub at: i64,
}

/// A topology event to write.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Service name.
    pub service: String,
    /// Config version the change produced.
    pub version: u64,
    /// Event kind (see [`EventRow::kind`]).
    pub kind: &'static str,
    /// Master before.
    pub old_master: Option<String>,
    /// Master after.
    pub new_master: Option<String>,
    /// Why.
    pub reason: String,
    /// JSON details.
    pub details: serde_json::Value,
    /// When.
    pub at: SystemTime,
}

/// A proxy as stored.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct ProxyRow {
    /// The proxy's stable id.
    pub proxy_id: String,
    /// Its client-facing address.
    pub listen_addr: String,
    /// Its build version.
    pub build_version: String,
    /// JSON array of service names.
    pub services: String,
    /// Last acknowledged config version.
    pub acked_version: Option<i64>,
    /// Reason of the last NACK.
    pub last_nack: Option<String>,
    /// Unix milliseconds.
    pub last_seen: i64,
}

/// A write queued for the writer task.
#[derive(Debug, Clone)]
pub enum Write {
    /// Append a topology event.
    Event(NewEvent),
    /// A proxy said hello.
    ProxyHello {
        /// Proxy id.
        proxy_id: String,
        /// Client-facing address.
        listen_addr: String,
        /// Build version.
        build_version: String,
        /// Subscribed services.
        services: Vec<String>,
        /// When.
        at: SystemTime,
    },
    /// A proxy acknowledged a version.
    ProxyAck {
        /// Proxy id.
        proxy_id: String,
        /// Acknowledged version.
        version: u64,
        /// When.
        at: SystemTime,
    },
    /// A proxy rejected a version.
    ProxyNack {
        /// Proxy id.
        proxy_id: String,
        /// Its reason.
        reason: String,
        /// When.
        at: SystemTime,
    },
}

/// Handle on the SQLite database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) `data_dir/pivot.db` in WAL mode and runs the migrations.
    pub async fn open(data_dir: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join("pivot.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    /// The connection pool, for the modules that own their own tables (`auth`).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Registers a service or updates its Sentinels.
    pub async fn upsert_service(&self, spec: &ServiceSpec) -> Result<(), Error> {
        let sentinels: Vec<String> = spec.sentinels.iter().map(ToString::to_string).collect();
        let sentinels = serde_json::Value::from(sentinels).to_string();
        let now = unix_ms(SystemTime::now());
        sqlx::query(
            "INSERT INTO services (name, sentinels, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (name) DO UPDATE SET sentinels = excluded.sentinels,
                 updated_at = excluded.updated_at
             WHERE services.sentinels <> excluded.sentinels",
        )
        .bind(&spec.name)
        .bind(sentinels)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sets a service's routing policy. Returns false when the service does not exist.
    pub async fn set_policy(&self, service: &str, policy: &Policy) -> Result<bool, Error> {
        let json = serde_json::to_string(&StoredPolicy::from(policy))
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let done = sqlx::query("UPDATE services SET policy = ?1, updated_at = ?2 WHERE name = ?3")
            .bind(json)
            .bind(unix_ms(SystemTime::now()))
            .bind(service)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets the credentials proxies use for a service's Redis nodes. Returns false when
    /// the service does not exist.
    pub async fn set_backend_auth(&self, service: &str, auth: &BackendAuth) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE services SET backend_username = ?1, backend_password = ?2, updated_at = ?3
             WHERE name = ?4",
        )
        .bind(&auth.username)
        .bind(&auth.password)
        .bind(unix_ms(SystemTime::now()))
        .bind(service)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Creates or replaces a proxy user of `service`. Returns false when the service does
    /// not exist.
    pub async fn put_user(&self, service: &str, user: &ProxyUser) -> Result<bool, Error> {
        let now = unix_ms(SystemTime::now());
        let done = sqlx::query(
            "INSERT INTO proxy_users (service, name, salt, hash, created_at, updated_at)
                 SELECT name, ?2, ?3, ?4, ?5, ?5 FROM services WHERE name = ?1
             ON CONFLICT (service, name) DO UPDATE SET salt = excluded.salt,
                 hash = excluded.hash, updated_at = excluded.updated_at",
        )
        .bind(service)
        .bind(&user.name)
        .bind(&user.salt)
        .bind(&user.hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a proxy user. Returns false when there was no such user.
    pub async fn delete_user(&self, service: &str, name: &str) -> Result<bool, Error> {
        let done = sqlx::query("DELETE FROM proxy_users WHERE service = ?1 AND name = ?2")
            .bind(service)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every registered service, by name.
    pub async fn services(&self) -> Result<Vec<StoredService>, Error> {
        let users: Vec<UserRow> = sqlx::query_as(
            "SELECT service, name, salt, hash FROM proxy_users ORDER BY service, name",
        )
        .fetch_all(&self.pool)
        .await?;
        let rows: Vec<ServiceRow> = sqlx::query_as(
            "SELECT name, sentinels, policy, backend_username, backend_password
                 FROM services ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let strings: Vec<String> = serde_json::from_str(&r.sentinels).map_err(|e| {
                sqlx::Error::Decode(format!("services.sentinels of {}: {e}", r.name).into())
            })?;
            let sentinels = strings
                .iter()
                .map(|s| s.parse::<NodeAddr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| sqlx::Error::Decode(format!("services.sentinels: {e}").into()))?;
            let policy: StoredPolicy = match r.policy.as_deref() {
                None | Some("") => StoredPolicy::default(),
                Some(json) => serde_json::from_str(json).map_err(|e| {
                    sqlx::Error::Decode(format!("services.policy of {}: {e}", r.name).into())
                })?,
            };
            let users = users
                .iter()
                .filter(|u| u.service == r.name)
                .map(|u| ProxyUser {
                    name: u.name.clone(),
                    salt: u.salt.clone(),
                    hash: u.hash.clone(),
                })
                .collect();
            out.push(StoredService {
                name: r.name,
                sentinels,
                policy: policy.resolve(),
                users,
                backend_auth: r.backend_password.map(|password| BackendAuth {
                    username: r.backend_username,
                    password,
                }),
            });
        }
        Ok(out)
    }

    /// The highest version this control plane may have handed out before (0 if none).
    pub async fn last_version(&self) -> Result<u64, Error> {
        let reserved: Option<i64> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'version_reserved'")
                .fetch_optional(&self.pool)
                .await?;
        let events: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM topology_events")
            .fetch_one(&self.pool)
            .await?;
        let max = reserved.unwrap_or(0).max(events.unwrap_or(0));
        Ok(u64::try_from(max).unwrap_or(0))
    }

    /// Records that versions up to `upto` (inclusive) may be handed out.
    pub async fn reserve_versions(&self, upto: u64) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('version_reserved', ?1)
             ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
        )
        .bind(to_i64(upto))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Appends a topology event.
    pub async fn insert_event(&self, e: &NewEvent) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO topology_events (service, version, kind, old_master, new_master, reason, details, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(&e.service)
        .bind(to_i64(e.version))
        .bind(e.kind)
        .bind(&e.old_master)
        .bind(&e.new_master)
        .bind(&e.reason)
        .bind(e.details.to_string())
        .bind(unix_ms(e.at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Most recent events, newest first, optionally of one service.
    pub async fn recent_events(
        &self,
        service: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventRow>, Error> {
        let rows =
            match service {
                Some(s) => sqlx::query_as(
                    "SELECT id, service, version, kind, old_master, new_master, reason, details, at
                     FROM topology_events WHERE service = ?1 ORDER BY id DESC LIMIT ?2",
                )
                .bind(s)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?,
                None => sqlx::query_as(
                    "SELECT id, service, version, kind, old_master, new_master, reason, details, at
                     FROM topology_events ORDER BY id DESC LIMIT ?1",
                )
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?,
            };
        Ok(rows)
    }

    /// A proxy's stored row.
    pub async fn proxy(&self, proxy_id: &str) -> Result<Option<ProxyRow>, Error> {
        Ok(sqlx::query_as(
            "SELECT proxy_id, listen_addr, build_version, services, acked_version, last_nack, last_seen
             FROM proxies WHERE proxy_id = ?1",
        )
        .bind(proxy_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Applies one queued write.
    pub async fn apply(&self, w: &Write) -> Result<(), Error> {
        match w {
            Write::Event(e) => self.insert_event(e).await,
            Write::ProxyHello {
                proxy_id,
                listen_addr,
                build_version,
                services,
                at,
            } => {
                sqlx::query(
                    "INSERT INTO proxies (proxy_id, listen_addr, build_version, services, last_seen)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (proxy_id) DO UPDATE SET listen_addr = excluded.listen_addr,
                         build_version = excluded.build_version, services = excluded.services,
                         last_seen = excluded.last_seen",
                )
                .bind(proxy_id)
                .bind(listen_addr)
                .bind(build_version)
                .bind(serde_json::Value::from(services.clone()).to_string())
                .bind(unix_ms(*at))
                .execute(&self.pool)
                .await?;
                Ok(())
            }
            Write::ProxyAck {
                proxy_id,
                version,
                at,
            } => {
                sqlx::query(
                    "UPDATE proxies SET acked_version = ?2, last_seen = ?3 WHERE proxy_id = ?1",
                )
                .bind(proxy_id)
                .bind(to_i64(*version))
                .bind(unix_ms(*at))
                .execute(&self.pool)
                .await?;
                Ok(())
            }
            Write::ProxyNack {
                proxy_id,
                reason,
                at,
            } => {
                sqlx::query(
                    "UPDATE proxies SET last_nack = ?2, last_seen = ?3 WHERE proxy_id = ?1",
                )
                .bind(proxy_id)
                .bind(reason)
                .bind(unix_ms(*at))
                .execute(&self.pool)
                .await?;
                Ok(())
            }
        }
    }
}

/// Sender side of the asynchronous write queue. Cloned by the state and gRPC streams;
/// the queue closes when every clone is dropped, and the writer task then drains and ends.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Write>,
}

impl Writer {
    /// Queues a write without waiting; a full queue drops it with a warning (the store is
    /// a record, never a reason to stall topology updates or proxy streams).
    pub fn send(&self, w: Write) {
        if let Err(e) = self.tx.try_send(w) {
            tracing::warn!(error = %e, "store write queue full or closed; dropping a write");
        }
    }
}

/// Starts the writer task. It ends when all [`Writer`]s are dropped (after draining), or
/// when `shutdown` is cancelled and the queue is then drained for at most 2 s.
pub fn spawn_writer(
    store: Store,
    shutdown: CancellationToken,
) -> (Writer, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Write>(4096);
    let handle = tokio::spawn(async move {
        loop {
            let w = tokio::select! {
                w = rx.recv() => w,
                () = shutdown.cancelled() => break,
            };
            let Some(w) = w else { return };
            if let Err(e) = store.apply(&w).await {
                tracing::warn!(error = %e, "store write failed");
            }
        }
        // Shutdown: write what is already queued, bounded.
        rx.close();
        let drain = async {
            while let Some(w) = rx.recv().await {
                if let Err(e) = store.apply(&w).await {
                    tracing::warn!(error = %e, "store write failed");
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    });
    (Writer { tx }, handle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn fresh() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("nested")).await.unwrap();
        (dir, store)
    }

    fn spec(name: &str, addrs: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            sentinels: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn event(service: &str, version: u64) -> NewEvent {
        NewEvent {
            service: service.into(),
            version,
            kind: "initial",
            old_master: None,
            new_master: Some("10.0.0.1:6379".into()),
            reason: "test".into(),
            details: serde_json::json!({"k": 1}),
            at: SystemTime::now(),
        }
    }

    #[tokio::test]
    async fn services_upsert() {
        let (_d, store) = fresh().await;
        store.upsert_service(&spec("b", &["h:1"])).await.unwrap();
        store
            .upsert_service(&spec("a", &["h:1", "h:2"]))
            .await
            .unwrap();
        store.upsert_service(&spec("b", &["h:3"])).await.unwrap();
        let s = store.services().await.unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "a");
        assert_eq!(s[0].sentinels.len(), 2);
        assert_eq!(s[1].sentinels, vec![NodeAddr::new("h", 3)]);
    }

    #[tokio::test]
    async fn policy_round_trips() {
        let (_d, store) = fresh().await;
        store.upsert_service(&spec("a", &["h:1"])).await.unwrap();
        assert_eq!(store.services().await.unwrap()[0].policy, Policy::default());
        let policy = Policy {
            read_policy: ReadPolicy::MasterOnly,
            consistency: Consistency::Eventual,
            rules: vec![CommandRule {
                command: "flushall".into(),
                target: crate::state::Target::Deny,
            }],
            max_replica_lag: Some(1 << 20),
            write_ack: WriteAck::Replicas(1),
            failover_hold: Some(Duration::from_secs(3)),
        };
        assert!(store.set_policy("a", &policy).await.unwrap());
        assert!(!store.set_policy("nope", &policy).await.unwrap());
        // A later upsert of the Sentinels keeps the policy.
        store.upsert_service(&spec("a", &["h:2"])).await.unwrap();
        assert_eq!(store.services().await.unwrap()[0].policy, policy);
    }

    #[tokio::test]
    async fn users_are_stored_hashed_per_service() {
        let (_d, store) = fresh().await;
        store.upsert_service(&spec("a", &["h:1"])).await.unwrap();
        store.upsert_service(&spec("b", &["h:1"])).await.unwrap();
        let alice = ProxyUser::new("alice", "pw1").unwrap();
        assert!(store.put_user("a", &alice).await.unwrap());
        assert!(!store.put_user("nope", &alice).await.unwrap());
        // Replacing changes the password.
        let alice2 = ProxyUser::new("alice", "pw2").unwrap();
        assert!(store.put_user("a", &alice2).await.unwrap());
        let s = store.services().await.unwrap();
        assert_eq!(s[0].users, vec![alice2.clone()]);
        assert!(s[1].users.is_empty());
        assert!(pivot_proto::password::verify(
            &s[0].users[0].salt,
            &s[0].users[0].hash,
            b"pw2"
        ));
        assert!(store.delete_user("a", "alice").await.unwrap());
        assert!(!store.delete_user("a", "alice").await.unwrap());
        assert!(store.services().await.unwrap()[0].users.is_empty());
    }

    #[tokio::test]
    async fn versions_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(store.last_version().await.unwrap(), 0);
        store.reserve_versions(1024).await.unwrap();
        store.reserve_versions(10).await.unwrap(); // never goes down
        assert_eq!(store.last_version().await.unwrap(), 1024);
        store.insert_event(&event("a", 2000)).await.unwrap();
        store.close().await;
        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(store.last_version().await.unwrap(), 2000);
    }

    #[tokio::test]
    async fn events_newest_first_and_filtered() {
        let (_d, store) = fresh().await;
        for (s, v) in [("a", 1), ("b", 2), ("a", 3)] {
            store.insert_event(&event(s, v)).await.unwrap();
        }
        let all = store.recent_events(None, 10).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.version).collect::<Vec<_>>(),
            vec![3, 2, 1]
        );
        let a = store.recent_events(Some("a"), 1).await.unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].version, 3);
        assert_eq!(a[0].details, r#"{"k":1}"#);
        assert_eq!(a[0].new_master.as_deref(), Some("10.0.0.1:6379"));
    }

    #[tokio::test]
    async fn proxies_through_writer() {
        let (_d, store) = fresh().await;
        let shutdown = CancellationToken::new();
        let (writer, task) = spawn_writer(store.clone(), shutdown.clone());
        let at = SystemTime::now();
        writer.send(Write::ProxyHello {
            proxy_id: "p1".into(),
            listen_addr: "127.0.0.1:6379".into(),
            build_version: "0.1.0".into(),
            services: vec!["a".into()],
            at,
        });
        writer.send(Write::ProxyAck {
            proxy_id: "p1".into(),
            version: 7,
            at,
        });
        writer.send(Write::ProxyNack {
            proxy_id: "p1".into(),
            reason: "bad".into(),
            at,
        });
        drop(writer);
        task.await.unwrap();
        let p = store.proxy("p1").await.unwrap().unwrap();
        assert_eq!(p.acked_version, Some(7));
        assert_eq!(p.last_nack.as_deref(), Some("bad"));
        assert_eq!(p.services, r#"["a"]"#);
    }
}
