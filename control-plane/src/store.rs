//! The SQLite store: services, proxy users, topology events, proxies, the audit log and
//! the config-version reservation. Runtime `query`/`query_as` only; the schema lives in
//! `../migrations`.
//!
//! Writes that must not slow the topology path (event rows, proxy rows) go through
//! [`Writer`], a bounded queue drained by one task; only the version reservation is
//! written inline (once per [`VERSION_BLOCK`] versions). Operator changes (services,
//! policies, users, audit rows) are written inline by [`crate::Admin`]: they are rare, and
//! the caller must know they are durable.
//!
//! Every stored event and audit row is also published on a bounded broadcast channel
//! ([`Store::subscribe`]) for live views (the SSE stream); a subscriber that falls behind
//! loses messages and is told so by the channel, never slows the store.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqlitePool};
use tokio::sync::{broadcast, mpsc};
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

/// Live messages buffered per subscriber before it is told it lagged.
const LIVE_BUFFER: usize = 1024;

/// Something stored that live views want at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    /// A topology or configuration event row.
    Event(EventRow),
    /// An audit-log row.
    Audit(AuditEntry),
}

/// One audit-log row: who changed what, when, from what to what (secrets redacted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Row id (increasing).
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// `token:<name>` for API calls, `config` for start-up flags.
    pub actor: String,
    /// `service.create`, `policy.set`, `rule.put`, `user.delete`, `failover`, ...
    pub action: String,
    /// The service acted on, if any.
    pub service: Option<String>,
    /// The object within it (rule command, user name, token name); may be empty.
    pub target: String,
    /// State before (JSON; `null` when created).
    pub before: serde_json::Value,
    /// State after (JSON; `null` when deleted).
    pub after: serde_json::Value,
}

#[derive(FromRow)]
struct AuditRow {
    id: i64,
    at: i64,
    actor: String,
    action: String,
    service: Option<String>,
    target: String,
    before: String,
    after: String,
}

impl From<AuditRow> for AuditEntry {
    fn from(r: AuditRow) -> Self {
        let json = |s: &str| serde_json::from_str(s).unwrap_or(serde_json::Value::Null);
        AuditEntry {
            id: r.id,
            at: r.at,
            actor: r.actor,
            action: r.action,
            service: r.service,
            target: r.target,
            before: json(&r.before),
            after: json(&r.after),
        }
    }
}

/// An audit-log row to write.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAudit<'a> {
    /// Who.
    pub actor: &'a str,
    /// What.
    pub action: &'a str,
    /// Service acted on.
    pub service: Option<&'a str>,
    /// Object within it.
    pub target: &'a str,
    /// Before (secrets already redacted).
    pub before: serde_json::Value,
    /// After (secrets already redacted).
    pub after: serde_json::Value,
}

/// Filters of [`Store::events`]; newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only this service.
    pub service: Option<String>,
    /// Only these kinds (empty: all).
    pub kinds: Vec<String>,
    /// Only rows with a smaller id (paging).
    pub before: Option<i64>,
    /// At most this many rows.
    pub limit: u32,
}

/// Filters of [`Store::audit`]; newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this service.
    pub service: Option<String>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Only rows with a smaller id (paging).
    pub before: Option<i64>,
    /// At most this many rows.
    pub limit: u32,
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

impl From<&crate::state::ServiceState> for StoredService {
    fn from(s: &crate::state::ServiceState) -> Self {
        StoredService {
            name: s.name.clone(),
            sentinels: s.sentinels.clone(),
            policy: s.policy.clone(),
            backend_auth: s.backend_auth.clone(),
            users: s.users.clone(),
        }
    }
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
    live: broadcast::Sender<Live>,
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
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Ok(Store { pool, live })
    }

    /// Receives every event and audit row stored from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.live.subscribe()
    }

    /// Registers a new service. Returns false when one with that name exists.
    pub async fn create_service(
        &self,
        name: &str,
        sentinels: &[NodeAddr],
        backend_auth: Option<&BackendAuth>,
        policy: &Policy,
    ) -> Result<bool, Error> {
        let now = unix_ms(SystemTime::now());
        let done = sqlx::query(
            "INSERT INTO services (name, sentinels, policy, backend_username, backend_password,
                 created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(sentinels_json(sentinels))
        .bind(policy_json(policy)?)
        .bind(backend_auth.and_then(|a| a.username.as_deref()))
        .bind(backend_auth.map(|a| a.password.as_str()))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces a service's Sentinels. Returns false when the service does not exist.
    pub async fn set_sentinels(
        &self,
        service: &str,
        sentinels: &[NodeAddr],
    ) -> Result<bool, Error> {
        let done =
            sqlx::query("UPDATE services SET sentinels = ?1, updated_at = ?2 WHERE name = ?3")
                .bind(sentinels_json(sentinels))
                .bind(unix_ms(SystemTime::now()))
                .bind(service)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes the credentials of a service's Redis nodes. Returns false when the service
    /// does not exist.
    pub async fn clear_backend_auth(&self, service: &str) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE services SET backend_username = NULL, backend_password = NULL,
                 updated_at = ?1 WHERE name = ?2",
        )
        .bind(unix_ms(SystemTime::now()))
        .bind(service)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a service and its proxy users (its events and audit rows stay). Returns
    /// false when there was no such service.
    pub async fn delete_service(&self, service: &str) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM proxy_users WHERE service = ?1")
            .bind(service)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM services WHERE name = ?1")
            .bind(service)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Appends an audit row and publishes it to live subscribers.
    pub async fn insert_audit(&self, a: NewAudit<'_>) -> Result<AuditEntry, Error> {
        let at = unix_ms(SystemTime::now());
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO audit_log (at, actor, action, service, target, before, after)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
        )
        .bind(at)
        .bind(a.actor)
        .bind(a.action)
        .bind(a.service)
        .bind(a.target)
        .bind(a.before.to_string())
        .bind(a.after.to_string())
        .fetch_one(&self.pool)
        .await?;
        let entry = AuditEntry {
            id,
            at,
            actor: a.actor.to_string(),
            action: a.action.to_string(),
            service: a.service.map(str::to_string),
            target: a.target.to_string(),
            before: a.before,
            after: a.after,
        };
        // No subscriber is fine.
        let _ = self.live.send(Live::Audit(entry.clone()));
        Ok(entry)
    }

    /// Audit rows, newest first.
    pub async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, Error> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT id, at, actor, action, service, target, before, after FROM audit_log
             WHERE (?1 IS NULL OR service = ?1) AND (?2 IS NULL OR actor = ?2)
                 AND (?3 IS NULL OR id < ?3)
             ORDER BY id DESC LIMIT ?4",
        )
        .bind(q.service.as_deref())
        .bind(q.actor.as_deref())
        .bind(q.before)
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(AuditEntry::from).collect())
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
        let sentinels = sentinels_json(&spec.sentinels);
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
        let json = policy_json(policy)?;
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

    /// This store's identity: a random 63-bit number created with the store (kept in
    /// `meta` as `control_plane_id`) and never changed, as 16 hex digits. Proxies order
    /// config versions only among updates of one identity (see `ConfigUpdate` in the
    /// proto): another store, even at a higher version, is another sequence. A copy of the
    /// data directory keeps the identity, so a second control plane needs its own store.
    pub async fn control_plane_id(&self) -> Result<String, Error> {
        let candidate = i64::try_from(rand::random::<u64>() >> 1).unwrap_or(1);
        // Whoever inserts first wins; every later call reads the same row.
        sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES ('control_plane_id', ?1)")
            .bind(candidate)
            .execute(&self.pool)
            .await?;
        let id: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'control_plane_id'")
            .fetch_one(&self.pool)
            .await?;
        Ok(format!("{id:016x}"))
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

    /// Appends a topology event and publishes it to live subscribers.
    pub async fn insert_event(&self, e: &NewEvent) -> Result<(), Error> {
        self.apply(&Write::Event(e.clone())).await
    }

    /// Events matching `q`, newest first.
    pub async fn events(&self, q: &EventQuery) -> Result<Vec<EventRow>, Error> {
        // Kinds as a JSON array, matched with SQLite's json_each: one statement for any
        // number of kinds, still bound, never spliced into the SQL.
        let kinds =
            (!q.kinds.is_empty()).then(|| serde_json::Value::from(q.kinds.clone()).to_string());
        Ok(sqlx::query_as(
            "SELECT id, service, version, kind, old_master, new_master, reason, details, at
             FROM topology_events
             WHERE (?1 IS NULL OR service = ?1)
                 AND (?2 IS NULL OR kind IN (SELECT value FROM json_each(?2)))
                 AND (?3 IS NULL OR id < ?3)
             ORDER BY id DESC LIMIT ?4",
        )
        .bind(q.service.as_deref())
        .bind(kinds)
        .bind(q.before)
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await?)
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
        self.apply_batch(std::slice::from_ref(w)).await
    }

    /// Applies `batch` in one transaction (one fsync for the lot, which is what makes a
    /// fleet's ACKs to one change cheap), then publishes the stored events. If the
    /// transaction fails, the writes are retried one by one so that one bad write loses
    /// only itself.
    pub async fn apply_batch(&self, batch: &[Write]) -> Result<(), Error> {
        let in_tx = async {
            let mut tx = self.pool.begin().await?;
            let mut rows = Vec::new();
            for w in batch {
                rows.extend(apply_on(&mut tx, w).await?);
            }
            tx.commit().await?;
            Ok::<_, Error>(rows)
        };
        let rows = match in_tx.await {
            Ok(rows) => rows,
            Err(e) if batch.len() > 1 => {
                tracing::warn!(error = %e, writes = batch.len(), "batched store write failed; writing one by one");
                let mut rows = Vec::new();
                for w in batch {
                    let mut conn = self.pool.acquire().await?;
                    match apply_on(&mut conn, w).await {
                        Ok(row) => rows.extend(row),
                        Err(e) => tracing::warn!(error = %e, "store write failed"),
                    }
                }
                rows
            }
            Err(e) => return Err(e),
        };
        for row in rows {
            // No subscriber is fine.
            let _ = self.live.send(Live::Event(row));
        }
        Ok(())
    }
}

/// Applies one write on `conn`; an event returns its stored row.
async fn apply_on(conn: &mut sqlx::SqliteConnection, w: &Write) -> Result<Option<EventRow>, Error> {
    match w {
        Write::Event(e) => {
            let details = e.details.to_string();
            let at = unix_ms(e.at);
            let id: i64 = sqlx::query_scalar(
                    "INSERT INTO topology_events (service, version, kind, old_master, new_master, reason, details, at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
                )
                .bind(&e.service)
                .bind(to_i64(e.version))
                .bind(e.kind)
                .bind(&e.old_master)
                .bind(&e.new_master)
                .bind(&e.reason)
                .bind(&details)
                .bind(at)
                .fetch_one(&mut *conn)
                .await?;
            Ok(Some(EventRow {
                id,
                service: e.service.clone(),
                version: to_i64(e.version),
                kind: e.kind.to_string(),
                old_master: e.old_master.clone(),
                new_master: e.new_master.clone(),
                reason: e.reason.clone(),
                details,
                at,
            }))
        }
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
            .execute(&mut *conn)
            .await?;
            Ok(None)
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
            .execute(&mut *conn)
            .await?;
            Ok(None)
        }
        Write::ProxyNack {
            proxy_id,
            reason,
            at,
        } => {
            sqlx::query("UPDATE proxies SET last_nack = ?2, last_seen = ?3 WHERE proxy_id = ?1")
                .bind(proxy_id)
                .bind(reason)
                .bind(unix_ms(*at))
                .execute(&mut *conn)
                .await?;
            Ok(None)
        }
    }
}

fn sentinels_json(sentinels: &[NodeAddr]) -> String {
    let strings: Vec<String> = sentinels.iter().map(ToString::to_string).collect();
    serde_json::Value::from(strings).to_string()
}

fn policy_json(policy: &Policy) -> Result<String, Error> {
    serde_json::to_string(&StoredPolicy::from(policy))
        .map_err(|e| Error::Store(sqlx::Error::Encode(Box::new(e))))
}

/// Sender side of the asynchronous write queue. Cloned by the state and gRPC streams;
/// the queue closes when every clone is dropped, and the writer task then drains and ends.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Write>,
    /// Writes dropped because the queue was full, not yet reported.
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Writes taken off the queue and written in one transaction, at most.
const BATCH: usize = 512;
/// Dropped writes are reported at most this often (one line with the count, not one per
/// write: the queue overflows exactly when the log is busiest).
const DROP_REPORT: Duration = Duration::from_secs(5);

impl Writer {
    /// Queues a write without waiting; a full queue drops it, counted and reported by the
    /// writer task (the store is a record, never a reason to stall topology updates or
    /// proxy streams).
    pub fn send(&self, w: Write) {
        match self.tx.try_send(w) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("store writer stopped; dropping a write");
            }
        }
    }
}

/// Drops ACK rows that a later ACK of the same proxy in the same batch supersedes (a
/// proxy that ACKed twice while the writer was busy needs only its last version written).
fn coalesce(batch: &mut Vec<Write>) {
    let mut seen = std::collections::HashSet::new();
    let mut keep = vec![true; batch.len()];
    for (i, w) in batch.iter().enumerate().rev() {
        if let Write::ProxyAck { proxy_id, .. } = w
            && !seen.insert(proxy_id.clone())
        {
            keep[i] = false;
        }
    }
    let mut k = keep.into_iter();
    batch.retain(|_| k.next().unwrap_or(true));
}

/// Starts the writer task. It ends when all [`Writer`]s are dropped (after draining), or
/// when `shutdown` is cancelled and the queue is then drained for at most 2 s. Writes are
/// taken off the queue in batches of up to [`BATCH`], each written in one transaction.
pub fn spawn_writer(
    store: Store,
    shutdown: CancellationToken,
) -> (Writer, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Write>(4096);
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = dropped.clone();
    let handle = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        let mut reported = tokio::time::Instant::now();
        let write = |batch: &mut Vec<Write>| {
            coalesce(batch);
            let store = store.clone();
            let taken = std::mem::take(batch);
            async move {
                if let Err(e) = store.apply_batch(&taken).await {
                    tracing::warn!(error = %e, writes = taken.len(), "store writes failed");
                }
            }
        };
        loop {
            let first = tokio::select! {
                w = rx.recv() => w,
                () = shutdown.cancelled() => break,
            };
            let Some(first) = first else { return };
            batch.push(first);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            write(&mut batch).await;
            if reported.elapsed() >= DROP_REPORT {
                let n = counter.swap(0, std::sync::atomic::Ordering::Relaxed);
                if n > 0 {
                    tracing::warn!(
                        dropped = n,
                        "store write queue was full; writes dropped (events or proxy rows)"
                    );
                }
                reported = tokio::time::Instant::now();
            }
        }
        // Shutdown: write what is already queued, bounded.
        rx.close();
        let drain = async {
            while let Some(w) = rx.recv().await {
                batch.push(w);
                if batch.len() >= BATCH {
                    write(&mut batch).await;
                }
            }
            write(&mut batch).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    });
    (Writer { tx, dropped }, handle)
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
    async fn the_control_plane_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let id = store.control_plane_id().await.unwrap();
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_eq!(store.control_plane_id().await.unwrap(), id);
        store.close().await;
        let reopened = Store::open(dir.path()).await.unwrap();
        assert_eq!(
            reopened.control_plane_id().await.unwrap(),
            id,
            "kept across restarts"
        );
        // Another store is another control plane.
        let (_d, other) = fresh().await;
        assert_ne!(other.control_plane_id().await.unwrap(), id);
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
        let q = |service: Option<&str>, limit| EventQuery {
            service: service.map(str::to_string),
            limit,
            ..EventQuery::default()
        };
        let all = store.events(&q(None, 10)).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.version).collect::<Vec<_>>(),
            vec![3, 2, 1]
        );
        let a = store.events(&q(Some("a"), 1)).await.unwrap();
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

    #[tokio::test]
    async fn a_database_of_the_first_schema_is_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("pivot.db"))
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        // What the first release wrote: schema 0001 only, one service, one event.
        sqlx::migrate!("../migrations")
            .run_to(1, &pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO services (name, sentinels, policy, created_at, updated_at)
             VALUES ('old', '[\"127.0.0.1:26379\"]', '{\"read_policy\":\"all\"}', 1, 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO topology_events (service, version, kind, reason, at)
             VALUES ('old', 7, 'initial', 'first', 2)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let store = Store::open(dir.path()).await.unwrap();
        let services = store.services().await.unwrap();
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].name, "old");
        assert_eq!(services[0].policy.read_policy, ReadPolicy::All);
        assert_eq!(services[0].backend_auth, None);
        assert!(services[0].users.is_empty());
        assert_eq!(store.last_version().await.unwrap(), 7);
        let events = store
            .events(&EventQuery {
                limit: 10,
                ..EventQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        // The later tables exist and work.
        assert!(
            store
                .put_user("old", &ProxyUser::new("alice", "pw").unwrap())
                .await
                .unwrap()
        );
        store
            .insert_audit(NewAudit {
                actor: "config",
                action: "policy.set",
                service: Some("old"),
                target: "",
                before: serde_json::Value::Null,
                after: serde_json::Value::Null,
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn events_filtered_by_kind_and_paged() {
        let (_d, store) = fresh().await;
        let mut live = store.subscribe();
        for (i, kind) in [
            "initial",
            "master-changed",
            "replica-health",
            "master-changed",
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = event("a", i as u64 + 1);
            e.kind = kind;
            store.insert_event(&e).await.unwrap();
        }
        let q = |kinds: &[&str], before| EventQuery {
            service: Some("a".into()),
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
            before,
            limit: 10,
        };
        let all = store.events(&q(&[], None)).await.unwrap();
        assert_eq!(all.len(), 4);
        let changed = store.events(&q(&["master-changed"], None)).await.unwrap();
        assert_eq!(
            changed.iter().map(|e| e.version).collect::<Vec<_>>(),
            [4, 2]
        );
        let two = store
            .events(&q(&["master-changed", "initial"], Some(changed[0].id)))
            .await
            .unwrap();
        assert_eq!(two.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 1]);
        assert!(store.events(&q(&["nope"], None)).await.unwrap().is_empty());
        // Each stored row was published with its id.
        match live.recv().await.unwrap() {
            Live::Event(e) => assert_eq!(e.id, all[3].id),
            Live::Audit(a) => panic!("{a:?}"),
        }
    }

    #[test]
    fn a_later_ack_of_the_same_proxy_supersedes_an_earlier_one() {
        let at = SystemTime::now();
        let ack = |id: &str, version| Write::ProxyAck {
            proxy_id: id.into(),
            version,
            at,
        };
        let mut batch = vec![
            ack("a", 1),
            ack("b", 1),
            Write::Event(event("s", 2)),
            ack("a", 2),
        ];
        coalesce(&mut batch);
        let kept: Vec<String> = batch
            .iter()
            .map(|w| match w {
                Write::ProxyAck {
                    proxy_id, version, ..
                } => format!("{proxy_id}{version}"),
                Write::Event(e) => format!("event{}", e.version),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(kept, ["b1", "event2", "a2"]);
    }
}
