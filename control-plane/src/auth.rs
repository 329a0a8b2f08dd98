//! Bearer tokens of the admin REST API: creation, lookup, revocation and the bootstrap
//! token of a fresh store.
//!
//! A token is 32 random bytes shown as `pvt_` + 64 hex digits. Only its SHA-256 (hex) is
//! stored, so a copy of the database does not let anyone in, and a request is
//! authenticated by hashing what it presents and looking the hash up: there is no secret
//! comparison to make constant-time.
//!
//! Every API request carries a token, so verified tokens are cached in memory
//! ([`CACHE_TTL`], at most [`CACHE_MAX`] entries); deleting a token drops it from the
//! cache at once, and a change made to the table behind our back is seen within the TTL.
//! `last_used_at` is written at most once a minute per token, by a task off the request
//! path.
//!
//! Bootstrap (see [`Tokens::bootstrap`]): a store without an admin token gets one at
//! start, the operator's `--admin-token` / `PIVOT_ADMIN_TOKEN` or a generated one that the
//! caller prints once. A configured token is also (re-)added when the store already has
//! admin tokens: whoever sets the control plane's environment controls it anyway, and it
//! keeps a deployment that always passes `PIVOT_ADMIN_TOKEN` (compose, the sandbox)
//! working across restarts and new databases. Revoking it therefore means unsetting it
//! too.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use sqlx::FromRow;

use crate::error::Error;
use crate::store::{Store, from_unix_ms, unix_ms};

/// Prefix of the tokens this control plane generates (recognisable in logs of leaked
/// secrets scanners; not required of operator-given tokens).
pub const TOKEN_PREFIX: &str = "pvt_";
/// How long a verified token is trusted without asking the store again.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Verified tokens kept in memory at most.
pub const CACHE_MAX: usize = 1024;
/// `last_used_at` is written at most this often per token.
const LAST_USED_EVERY: Duration = Duration::from_secs(60);
/// Longest token accepted in a request; longer ones are refused without hashing.
const MAX_TOKEN_LEN: usize = 256;
/// Shortest operator-given token (`--admin-token`): 128 bits of hex.
const MIN_CONFIGURED_LEN: usize = 32;
/// Name of the bootstrap token.
const BOOTSTRAP_NAME: &str = "bootstrap";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read and change everything, including tokens.
    Admin,
    /// Read everything except tokens.
    Viewer,
}

impl Role {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!("unknown role `{other}` (expected admin or viewer)")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The token an API request was authenticated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Token id.
    pub id: i64,
    /// Token name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

impl Caller {
    /// The audit log's actor for changes made with this token: `token:<name>`.
    pub fn actor(&self) -> String {
        format!("token:{}", self.name)
    }
}

/// A token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Row id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// When it was created.
    pub created_at: SystemTime,
    /// Who created it (`token:<name>`, `bootstrap`, `PIVOT_ADMIN_TOKEN`).
    pub created_by: String,
    /// Last authenticated request, to the minute; `None`: never used.
    pub last_used_at: Option<SystemTime>,
}

/// A token in clear: returned once by [`Tokens::create`] and the bootstrap. `Debug` hides
/// it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A new random token: `pvt_` + 32 random bytes in hex.
    fn generate() -> Secret {
        let bytes: [u8; 32] = rand::random();
        Secret(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
    }

    /// The token, to show to whoever created it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// An operator-given admin token (`--admin-token`, `PIVOT_ADMIN_TOKEN`): at least 32
/// printable ASCII characters without spaces. `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Secret);

impl AdminToken {
    /// The token.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl FromStr for AdminToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The error never repeats the value: it is a secret.
        if s.len() < MIN_CONFIGURED_LEN || s.len() > MAX_TOKEN_LEN {
            return Err(format!(
                "the admin token must be {MIN_CONFIGURED_LEN} to {MAX_TOKEN_LEN} characters long \
                 (e.g. `{TOKEN_PREFIX}` + 64 hex digits from `openssl rand -hex 32`)"
            ));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the admin token must be printable ASCII without spaces".into());
        }
        Ok(AdminToken(Secret(s.to_string())))
    }
}

/// What [`Tokens::bootstrap`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Nothing: the store has admin tokens and none was configured, or the configured one
    /// is already stored.
    Unchanged,
    /// The configured token was stored under `name`.
    Configured {
        /// Its token name.
        name: String,
    },
    /// No admin token existed and none was configured: this one was generated and must
    /// be shown to the operator, once.
    Generated {
        /// Its token name.
        name: String,
        /// The token.
        secret: Secret,
    },
}

#[derive(FromRow)]
struct TokenRow {
    id: i64,
    name: String,
    role: String,
    created_at: i64,
    created_by: String,
    last_used_at: Option<i64>,
}

impl TokenRow {
    fn into_info(self) -> Result<TokenInfo, Error> {
        let role = self.role.parse::<Role>().map_err(|e| {
            sqlx::Error::Decode(format!("admin_tokens.role of `{}`: {e}", self.name).into())
        })?;
        Ok(TokenInfo {
            id: self.id,
            name: self.name,
            role,
            created_at: from_unix_ms(self.created_at),
            created_by: self.created_by,
            last_used_at: self.last_used_at.map(from_unix_ms),
        })
    }
}

/// SHA-256 of a token, as stored (hex).
fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Token names: 1-64 of `A-Z a-z 0-9 . _ - @ :`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("1 to 64 characters of A-Z, a-z, 0-9, `.`, `_`, `-`, `@`, `:`".into())
    }
}

struct Cached {
    caller: Caller,
    /// When the store last confirmed the token.
    verified: Instant,
}

#[derive(Default)]
struct Cache {
    /// By token hash.
    verified: HashMap<[u8; 32], Cached>,
    /// By token id: when `last_used_at` was last written. Kept apart from `verified` so
    /// that a re-verification after the TTL does not write it again; pruned with it.
    last_used: HashMap<i64, Instant>,
}

impl Cache {
    /// Makes room for one more entry: drops expired ones, then (all fresh, under attack
    /// by many valid tokens, unlikely) the oldest.
    fn make_room(&mut self, now: Instant) {
        if self.verified.len() < CACHE_MAX {
            return;
        }
        self.verified
            .retain(|_, c| now.duration_since(c.verified) < CACHE_TTL);
        if self.verified.len() >= CACHE_MAX
            && let Some(oldest) = self
                .verified
                .iter()
                .min_by_key(|(_, c)| c.verified)
                .map(|(k, _)| *k)
        {
            self.verified.remove(&oldest);
        }
        let live: std::collections::HashSet<i64> =
            self.verified.values().map(|c| c.caller.id).collect();
        self.last_used.retain(|id, _| live.contains(id));
    }
}

/// The token table and its cache. Cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    store: Store,
    cache: Arc<Mutex<Cache>>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Tokens {
    /// Tokens kept in `store`.
    pub fn new(store: Store) -> Tokens {
        Tokens {
            store,
            cache: Arc::new(Mutex::new(Cache::default())),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The cache holds plain data; a panic elsewhere while holding it leaves it usable.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The caller `presented` authenticates, or `None` for an unknown token.
    pub async fn verify(&self, presented: &str) -> Result<Option<Caller>, Error> {
        if presented.is_empty() || presented.len() > MAX_TOKEN_LEN {
            return Ok(None);
        }
        let hash = digest(presented);
        let now = Instant::now();
        let cached = {
            let cache = self.cache();
            cache
                .verified
                .get(&hash)
                .filter(|c| now.duration_since(c.verified) < CACHE_TTL)
                .map(|c| c.caller.clone())
        };
        let caller = match cached {
            Some(c) => c,
            None => {
                let row: Option<(i64, String, String)> = sqlx::query_as(
                    "SELECT id, name, role FROM admin_tokens WHERE token_sha256 = ?1",
                )
                .bind(hex::encode(hash))
                .fetch_optional(self.store.pool())
                .await?;
                let Some((id, name, role)) = row else {
                    // Not cached either way: a revoked token must not linger.
                    self.cache().verified.remove(&hash);
                    return Ok(None);
                };
                let role = role.parse::<Role>().map_err(|e| {
                    sqlx::Error::Decode(format!("admin_tokens.role of `{name}`: {e}").into())
                })?;
                let caller = Caller { id, name, role };
                let mut cache = self.cache();
                cache.make_room(now);
                cache.verified.insert(
                    hash,
                    Cached {
                        caller: caller.clone(),
                        verified: now,
                    },
                );
                caller
            }
        };
        self.touch(caller.id, now);
        Ok(Some(caller))
    }

    /// Writes `last_used_at` of token `id` unless written within [`LAST_USED_EVERY`].
    fn touch(&self, id: i64, now: Instant) {
        {
            let mut cache = self.cache();
            match cache.last_used.get(&id) {
                Some(at) if now.duration_since(*at) < LAST_USED_EVERY => return,
                _ => {
                    cache.last_used.insert(id, now);
                }
            }
        }
        // At most one write per token per minute, so these tasks are few; a write that
        // fails (the store closing at shutdown) only loses a timestamp.
        let pool = self.store.pool().clone();
        tokio::spawn(async move {
            let r = sqlx::query("UPDATE admin_tokens SET last_used_at = ?2 WHERE id = ?1")
                .bind(id)
                .bind(unix_ms(SystemTime::now()))
                .execute(&pool)
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, token_id = id, "cannot record token use");
            }
        });
    }

    /// Every token, oldest first.
    pub async fn list(&self) -> Result<Vec<TokenInfo>, Error> {
        let rows: Vec<TokenRow> = sqlx::query_as(
            "SELECT id, name, role, created_at, created_by, last_used_at
             FROM admin_tokens ORDER BY id",
        )
        .fetch_all(self.store.pool())
        .await?;
        rows.into_iter().map(TokenRow::into_info).collect()
    }

    /// Creates a token; the returned [`Secret`] is the only copy of it.
    pub async fn create(
        &self,
        name: &str,
        role: Role,
        created_by: &str,
    ) -> Result<(TokenInfo, Secret), Error> {
        validate_name(name).map_err(|message| Error::InvalidField {
            field: "name".into(),
            message,
        })?;
        let secret = Secret::generate();
        let info = self
            .insert(name, role, &secret, created_by)
            .await
            .map_err(|e| match e {
                Error::Store(ref s) if is_unique_violation(s) => {
                    Error::Conflict(format!("a token named `{name}` already exists"))
                }
                other => other,
            })?;
        Ok((info, secret))
    }

    async fn insert(
        &self,
        name: &str,
        role: Role,
        secret: &Secret,
        created_by: &str,
    ) -> Result<TokenInfo, Error> {
        let now = SystemTime::now();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO admin_tokens (name, role, token_sha256, created_at, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(hex::encode(digest(secret.expose())))
        .bind(unix_ms(now))
        .bind(created_by)
        .fetch_one(self.store.pool())
        .await?;
        Ok(TokenInfo {
            id,
            name: name.to_string(),
            role,
            created_at: from_unix_ms(unix_ms(now)),
            created_by: created_by.to_string(),
            last_used_at: None,
        })
    }

    /// Deletes token `id` (effective at once, also for cached requests). The last admin
    /// token cannot be deleted: nobody could change anything afterwards.
    pub async fn delete(&self, id: i64) -> Result<TokenInfo, Error> {
        // One statement, so that two concurrent deletes cannot both pass the check.
        let deleted: Option<TokenRow> = sqlx::query_as(
            "DELETE FROM admin_tokens WHERE id = ?1
                 AND (role <> 'admin' OR (SELECT COUNT(*) FROM admin_tokens WHERE role = 'admin') > 1)
             RETURNING id, name, role, created_at, created_by, last_used_at",
        )
        .bind(id)
        .fetch_optional(self.store.pool())
        .await?;
        match deleted {
            Some(row) => {
                {
                    let mut cache = self.cache();
                    cache.verified.retain(|_, c| c.caller.id != id);
                    cache.last_used.remove(&id);
                }
                row.into_info()
            }
            None => {
                let exists: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM admin_tokens WHERE id = ?1")
                        .bind(id)
                        .fetch_optional(self.store.pool())
                        .await?;
                Err(match exists {
                    Some(_) => Error::Conflict("cannot delete the last admin token".into()),
                    None => Error::NotFound(format!("no token with id {id}")),
                })
            }
        }
    }

    async fn admin_count(&self) -> Result<i64, Error> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM admin_tokens WHERE role = 'admin'")
                .fetch_one(self.store.pool())
                .await?,
        )
    }

    /// A name not taken yet: `base`, else `base-2`, `base-3`, ...
    async fn free_name(&self, base: &str) -> Result<String, Error> {
        let taken: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM admin_tokens WHERE name = ?1 OR name LIKE ?1 || '-%'",
        )
        .bind(base)
        .fetch_all(self.store.pool())
        .await?;
        if !taken.iter().any(|n| n == base) {
            return Ok(base.to_string());
        }
        Ok((2..)
            .map(|n| format!("{base}-{n}"))
            .find(|candidate| !taken.contains(candidate))
            .unwrap_or_else(|| base.to_string()))
    }

    /// Makes sure the API can be used at start (see the module docs): stores
    /// `configured` as an admin token unless it is stored already; without one, generates
    /// an admin token when the store has none.
    pub async fn bootstrap(&self, configured: Option<&AdminToken>) -> Result<Bootstrap, Error> {
        if let Some(token) = configured {
            let stored: Option<String> =
                sqlx::query_scalar("SELECT role FROM admin_tokens WHERE token_sha256 = ?1")
                    .bind(hex::encode(digest(token.expose())))
                    .fetch_optional(self.store.pool())
                    .await?;
            return match stored.as_deref() {
                Some("admin") => Ok(Bootstrap::Unchanged),
                Some(_) => Err(Error::Config(
                    "the admin token (--admin-token / PIVOT_ADMIN_TOKEN) is stored as a viewer \
                     token; delete that token or configure another one"
                        .into(),
                )),
                None => {
                    let name = self.free_name(BOOTSTRAP_NAME).await?;
                    self.insert(&name, Role::Admin, &token.0, "PIVOT_ADMIN_TOKEN")
                        .await?;
                    Ok(Bootstrap::Configured { name })
                }
            };
        }
        if self.admin_count().await? > 0 {
            return Ok(Bootstrap::Unchanged);
        }
        let name = self.free_name(BOOTSTRAP_NAME).await?;
        let secret = Secret::generate();
        self.insert(&name, Role::Admin, &secret, BOOTSTRAP_NAME)
            .await?;
        Ok(Bootstrap::Generated { name, secret })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn fresh() -> (tempfile::TempDir, Tokens) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        (dir, Tokens::new(store))
    }

    fn configured(s: &str) -> AdminToken {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn generated_bootstrap_once() {
        let (_d, tokens) = fresh().await;
        let Bootstrap::Generated { name, secret } = tokens.bootstrap(None).await.unwrap() else {
            panic!("expected a generated token");
        };
        assert_eq!(name, "bootstrap");
        assert!(secret.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(secret.expose().len(), TOKEN_PREFIX.len() + 64);
        assert!(!format!("{secret:?}").contains(&secret.expose()[4..]));
        let caller = tokens.verify(secret.expose()).await.unwrap().unwrap();
        assert_eq!(caller.role, Role::Admin);
        assert_eq!(caller.actor(), "token:bootstrap");
        // Second start: nothing printed again.
        assert_eq!(tokens.bootstrap(None).await.unwrap(), Bootstrap::Unchanged);
        // Only the hash is stored.
        let stored: Vec<String> = sqlx::query_scalar("SELECT token_sha256 FROM admin_tokens")
            .fetch_all(tokens.store.pool())
            .await
            .unwrap();
        assert_eq!(stored, vec![hex::encode(digest(secret.expose()))]);
    }

    #[tokio::test]
    async fn configured_bootstrap_is_added_once_even_with_other_admins() {
        let (_d, tokens) = fresh().await;
        let a = configured("pvt_0123456789abcdef0123456789abcdef");
        assert_eq!(
            tokens.bootstrap(Some(&a)).await.unwrap(),
            Bootstrap::Configured {
                name: "bootstrap".into()
            }
        );
        assert_eq!(
            tokens.bootstrap(Some(&a)).await.unwrap(),
            Bootstrap::Unchanged
        );
        // A new configured token joins the existing admin tokens under a free name.
        let b = configured("another-token-of-32-characters-x");
        assert_eq!(
            tokens.bootstrap(Some(&b)).await.unwrap(),
            Bootstrap::Configured {
                name: "bootstrap-2".into()
            }
        );
        assert!(tokens.verify(a.expose()).await.unwrap().is_some());
        assert!(tokens.verify(b.expose()).await.unwrap().is_some());
        let list = tokens.list().await.unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].created_by, "PIVOT_ADMIN_TOKEN");
        assert!(!format!("{a:?}").contains("0123"));
    }

    #[test]
    fn configured_token_format() {
        assert!("short".parse::<AdminToken>().is_err());
        let spaced = "a".repeat(20) + " " + &"b".repeat(20);
        assert!(spaced.parse::<AdminToken>().is_err());
        assert!("x".repeat(257).parse::<AdminToken>().is_err());
        let err = "tooshort-secret".parse::<AdminToken>().unwrap_err();
        assert!(!err.contains("tooshort-secret"), "{err}");
    }

    #[tokio::test]
    async fn create_verify_delete() {
        let (_d, tokens) = fresh().await;
        let Bootstrap::Generated { secret: root, .. } = tokens.bootstrap(None).await.unwrap()
        else {
            panic!("expected a generated token");
        };
        let (info, secret) = tokens
            .create("ci", Role::Viewer, "token:bootstrap")
            .await
            .unwrap();
        assert_eq!(info.role, Role::Viewer);
        assert_eq!(info.created_by, "token:bootstrap");
        assert_eq!(
            tokens.verify(secret.expose()).await.unwrap().unwrap().role,
            Role::Viewer
        );
        assert!(matches!(
            tokens.create("ci", Role::Admin, "x").await,
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            tokens.create("bad name", Role::Admin, "x").await,
            Err(Error::InvalidField { field, .. }) if field == "name"
        ));
        // Deleting takes effect at once, although the token is cached.
        tokens.delete(info.id).await.unwrap();
        assert_eq!(tokens.verify(secret.expose()).await.unwrap(), None);
        assert!(matches!(
            tokens.delete(info.id).await,
            Err(Error::NotFound(_))
        ));
        // The last admin token stays.
        let root_id = tokens.verify(root.expose()).await.unwrap().unwrap().id;
        assert!(matches!(
            tokens.delete(root_id).await,
            Err(Error::Conflict(_))
        ));
        assert!(tokens.verify("").await.unwrap().is_none());
        assert!(tokens.verify("pvt_nope").await.unwrap().is_none());
        assert!(tokens.verify(&"x".repeat(300)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn last_used_is_recorded() {
        let (_d, tokens) = fresh().await;
        let (info, secret) = tokens.create("a", Role::Admin, "t").await.unwrap();
        assert_eq!(info.last_used_at, None);
        tokens.verify(secret.expose()).await.unwrap().unwrap();
        // Written by a background task.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let list = tokens.list().await.unwrap();
            if list[0].last_used_at.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "last_used_at never written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn cache_is_bounded() {
        let (_d, tokens) = fresh().await;
        let mut secrets = Vec::new();
        for i in 0..(CACHE_MAX + 10) {
            let s = Secret::generate();
            tokens
                .insert(&format!("t{i}"), Role::Viewer, &s, "test")
                .await
                .unwrap();
            secrets.push(s);
        }
        for s in &secrets {
            assert!(tokens.verify(s.expose()).await.unwrap().is_some());
        }
        let cache = tokens.cache();
        assert!(cache.verified.len() <= CACHE_MAX);
        assert!(cache.last_used.len() <= CACHE_MAX + 10);
    }
}
