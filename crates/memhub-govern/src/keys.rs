//! API keys: `mh_<id>_<secret>`. Only an argon2id hash of the secret is stored, in
//! a [`KeyTable`]: `keys.db` next to the embedded store (so the `memhub keys`
//! command can change keys while a server runs), or the PostgreSQL database that
//! replicas share. A verified key's SHA-256 is cached so argon2 runs once per key
//! and process, while revocation and expiry are read from the table on every
//! request: a key revoked through any replica is refused by all at once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use memhub_types::time::{now_micros, serde_micros};
use memhub_types::{Error, ErrorCode, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::principal::{Principal, Role};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    name TEXT,
    role TEXT NOT NULL,
    tenant TEXT NOT NULL,
    user_id TEXT,
    systems TEXT,
    kinds TEXT,
    can_read INTEGER NOT NULL,
    superadmin INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER
);";

/// Verified keys kept in the cache at most (it is cleared when full).
const CACHE_MAX: usize = 10_000;

/// What a new key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub role: Role,
    pub tenant: String,
    /// Required for `user` keys: the user it reads and writes as.
    pub user_id: Option<String>,
    pub systems: Option<Vec<String>>,
    pub kinds: Option<Vec<String>>,
    /// Microseconds since the epoch.
    pub expires_at: Option<i64>,
    pub name: Option<String>,
    /// Lets a `service` key read (within its systems).
    pub can_read: bool,
    /// Lets an `admin` key act in any tenant.
    pub superadmin: bool,
}

/// A key as listed: everything but its secret. Times are µs since the epoch,
/// ISO-8601 on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: Option<String>,
    pub role: Role,
    pub tenant: String,
    pub user_id: Option<String>,
    pub systems: Option<Vec<String>>,
    pub kinds: Option<Vec<String>>,
    pub can_read: bool,
    pub superadmin: bool,
    #[serde(with = "serde_micros")]
    pub created_at: i64,
    #[serde(with = "serde_micros::option")]
    pub expires_at: Option<i64>,
    #[serde(with = "serde_micros::option")]
    pub revoked_at: Option<i64>,
}

/// A key just made: the secret is shown once and never stored.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedKey {
    pub secret: String,
    #[serde(flatten)]
    pub key: KeyInfo,
}

/// A key as a [`KeyTable`] keeps it: what is listed, and the hash of its secret
/// (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub key: KeyInfo,
    /// The argon2id hash (PHC string).
    pub hash: String,
}

/// Where keys are kept. Thread-safe; every call reads or writes the table itself
/// (no caching here: revocation must be seen at once).
pub trait KeyTable: Send + Sync {
    fn insert(&self, key: &KeyRow) -> Result<()>;
    fn get(&self, id: &str) -> Result<Option<KeyRow>>;
    /// Keys of `tenant` (or all), newest first.
    fn list(&self, tenant: Option<&str>) -> Result<Vec<KeyRow>>;
    /// Set `revoked_at` to `at` unless it is set already.
    fn revoke(&self, id: &str, at: i64) -> Result<()>;
    fn any(&self) -> Result<bool>;
}

/// The embedded key table, `keys.db`.
pub struct SqliteKeys {
    conn: Mutex<Connection>,
}

fn storage(e: rusqlite::Error) -> Error {
    Error::storage(e)
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    Ok(b)
}

/// A list of names as the tables keep it (JSON text).
pub fn list_json(v: &Option<Vec<String>>) -> Option<String> {
    v.as_ref().map(|l| serde_json::to_string(l).expect("strings serialize"))
}

/// The other way: a list the tables keep as JSON text (unreadable: none).
pub fn list_of_json(s: Option<String>) -> Option<Vec<String>> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

fn invalid() -> Error {
    Error::new(ErrorCode::InvalidCredentials, "invalid API key")
}

/// The key table's columns, in the order every backend selects them.
pub const COLUMNS: &str =
    "id, hash, name, role, tenant, user_id, systems, kinds, can_read, superadmin, created_at, expires_at, revoked_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRow> {
    let role: String = r.get(3)?;
    Ok(KeyRow {
        key: KeyInfo {
            id: r.get(0)?,
            name: r.get(2)?,
            role: role.parse().unwrap_or(Role::User),
            tenant: r.get(4)?,
            user_id: r.get(5)?,
            systems: list_of_json(r.get(6)?),
            kinds: list_of_json(r.get(7)?),
            can_read: r.get(8)?,
            superadmin: r.get(9)?,
            created_at: r.get(10)?,
            expires_at: r.get(11)?,
            revoked_at: r.get(12)?,
        },
        hash: r.get(1)?,
    })
}

impl SqliteKeys {
    /// Open (creating) `data_dir/keys.db`.
    pub fn open(data_dir: &Path) -> Result<SqliteKeys> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| Error::storage(format!("cannot create {}: {e}", data_dir.display())))?;
        let conn = Connection::open(data_dir.join("keys.db")).map_err(storage)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(storage)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(storage)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(storage)?;
        conn.execute_batch(SCHEMA).map_err(storage)?;
        Ok(SqliteKeys { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KeyTable for SqliteKeys {
    fn insert(&self, row: &KeyRow) -> Result<()> {
        let k = &row.key;
        self.conn()
            .execute(
                &format!(
                    "INSERT INTO api_keys ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ),
                params![
                    k.id,
                    row.hash,
                    k.name,
                    k.role.as_str(),
                    k.tenant,
                    k.user_id,
                    list_json(&k.systems),
                    list_json(&k.kinds),
                    k.can_read,
                    k.superadmin,
                    k.created_at,
                    k.expires_at,
                    k.revoked_at
                ],
            )
            .map(drop)
            .map_err(storage)
    }

    fn get(&self, id: &str) -> Result<Option<KeyRow>> {
        self.conn()
            .prepare_cached(&format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?1"))
            .and_then(|mut st| st.query_row(params![id], row).optional())
            .map_err(storage)
    }

    fn list(&self, tenant: Option<&str>) -> Result<Vec<KeyRow>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM api_keys WHERE (?1 IS NULL OR tenant = ?1) ORDER BY created_at DESC, id"
            ))
            .map_err(storage)?;
        let rows = st.query_map(params![tenant], row).map_err(storage)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(storage)
    }

    fn revoke(&self, id: &str, at: i64) -> Result<()> {
        self.conn()
            .execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1", params![id, at])
            .map(drop)
            .map_err(storage)
    }

    fn any(&self) -> Result<bool> {
        self.conn().query_row("SELECT EXISTS (SELECT 1 FROM api_keys)", [], |r| r.get(0)).map_err(storage)
    }
}

/// The id part of a presented key (`mh_<12 hex>`), if it has the shape of one.
pub fn key_id(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix("mh_")?;
    let (id, tail) = rest.split_once('_')?;
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !tail.is_empty()).then(|| &secret[..15])
}

/// API keys: making, listing, revoking and checking them, over a [`KeyTable`].
pub struct KeyStore {
    table: Box<dyn KeyTable>,
    verified: Mutex<HashMap<[u8; 32], String>>,
}

impl KeyStore {
    /// The embedded table, `data_dir/keys.db` (created).
    pub fn open(data_dir: &Path) -> Result<KeyStore> {
        Ok(Self::on(Box::new(SqliteKeys::open(data_dir)?)))
    }

    /// Keys kept in `table`.
    pub fn on(table: Box<dyn KeyTable>) -> KeyStore {
        KeyStore { table, verified: Mutex::new(HashMap::new()) }
    }

    /// Make a key; the returned secret is the only copy.
    pub fn create(&self, k: NewKey) -> Result<CreatedKey> {
        if k.role == Role::User && k.user_id.as_deref().is_none_or(str::is_empty) {
            return Err(Error::field(ErrorCode::InvalidField, "user_id", "a user key needs the user it acts as"));
        }
        if k.role == Role::Service && k.systems.as_ref().is_none_or(Vec::is_empty) {
            return Err(Error::field(
                ErrorCode::InvalidField,
                "systems",
                "a service key needs the systems it writes for",
            ));
        }
        if k.superadmin && k.role != Role::Admin {
            return Err(Error::field(ErrorCode::InvalidField, "superadmin", "only an admin key can be a superadmin"));
        }
        if k.tenant.trim().is_empty() {
            return Err(Error::field(ErrorCode::InvalidField, "tenant", "must not be empty"));
        }
        let id = format!("mh_{}", hex::encode(random_bytes::<6>()?));
        let secret = format!("{id}_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?));
        let hash = Argon2::default()
            .hash_password_with_salt(secret.as_bytes(), &random_bytes::<16>()?)
            .map_err(|e| Error::internal(format!("cannot hash the key: {e}")))?
            .to_string();
        let row = KeyRow {
            key: KeyInfo {
                id,
                name: k.name,
                role: k.role,
                tenant: k.tenant,
                user_id: k.user_id,
                systems: k.systems,
                kinds: k.kinds,
                can_read: k.can_read,
                superadmin: k.superadmin,
                created_at: now_micros(),
                expires_at: k.expires_at,
                revoked_at: None,
            },
            hash,
        };
        self.table.insert(&row)?;
        Ok(CreatedKey { secret, key: row.key })
    }

    /// Keys of `tenant` (or all), newest first.
    pub fn list(&self, tenant: Option<&str>) -> Result<Vec<KeyInfo>> {
        Ok(self.table.list(tenant)?.into_iter().map(|r| r.key).collect())
    }

    /// Revoke a key (of `tenant`, when given). Revoking twice is not an error.
    pub fn revoke(&self, id: &str, tenant: Option<&str>) -> Result<KeyInfo> {
        let found = self.table.get(id)?.filter(|r| tenant.is_none_or(|t| r.key.tenant == t));
        if found.is_none() {
            return Err(Error::new(ErrorCode::NotFound, format!("no key {id:?}")));
        }
        self.table.revoke(id, now_micros())?;
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, v| v != id);
        Ok(self.table.get(id)?.ok_or_else(|| Error::internal("the key vanished"))?.key)
    }

    /// Whether any key exists (then authentication is required by default).
    pub fn any(&self) -> Result<bool> {
        self.table.any()
    }

    /// The principal of a presented key. Slow (argon2) the first time a key is seen.
    pub fn authenticate(&self, secret: &str) -> Result<Principal> {
        self.check(secret, true).expect("a full check always answers")
    }

    /// The principal of a key already verified in this process, without argon2:
    /// `None` when the key is not in the cache (call [`authenticate`](Self::authenticate),
    /// off the async runtime).
    pub fn authenticate_cached(&self, secret: &str) -> Option<Result<Principal>> {
        self.check(secret, false)
    }

    fn check(&self, secret: &str, may_hash: bool) -> Option<Result<Principal>> {
        let Some(id) = key_id(secret) else { return Some(Err(invalid())) };
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let cached = self.verified.lock().unwrap_or_else(|p| p.into_inner()).get(&digest).is_some_and(|v| v == id);
        if !cached && !may_hash {
            return None;
        }
        let found = match self.table.get(id) {
            Ok(Some(found)) => found,
            Ok(None) => return Some(Err(invalid())),
            Err(e) => return Some(Err(e)),
        };
        if !cached {
            if Argon2::default().verify_password(secret.as_bytes(), found.hash.as_str()).is_err() {
                return Some(Err(invalid()));
            }
            let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if verified.len() >= CACHE_MAX {
                verified.clear();
            }
            verified.insert(digest, id.to_string());
        }
        // Status is checked only once the secret is proven, so a guesser learns nothing.
        let k = found.key;
        if k.revoked_at.is_some() {
            return Some(Err(Error::new(ErrorCode::CredentialsRevoked, format!("API key {id} was revoked"))));
        }
        if k.expires_at.is_some_and(|t| t <= now_micros()) {
            return Some(Err(Error::new(ErrorCode::CredentialsExpired, format!("API key {id} has expired"))));
        }
        Some(Ok(Principal {
            id: format!("key:{}", k.id),
            role: k.role,
            tenant: k.tenant,
            user_id: k.user_id,
            systems: k.systems,
            kinds: k.kinds,
            can_read: k.can_read,
            superadmin: k.superadmin,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forged_of(secret: &str) -> String {
        let mut forged = secret.to_string();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        forged
    }

    fn spec(role: Role) -> NewKey {
        NewKey {
            role,
            tenant: "acme".into(),
            user_id: Some("ann".into()),
            systems: Some(vec!["slack".into()]),
            kinds: None,
            expires_at: None,
            name: Some("test".into()),
            can_read: false,
            superadmin: false,
        }
    }

    #[test]
    fn keys_authenticate_until_revoked_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::open(dir.path()).unwrap();
        assert!(!keys.any().unwrap());
        let made = keys.create(spec(Role::User)).unwrap();
        assert!(made.secret.starts_with(&made.key.id) && made.key.id.starts_with("mh_"));
        let p = keys.authenticate(&made.secret).unwrap();
        assert_eq!((p.role, p.tenant.as_str(), p.user_id.as_deref()), (Role::User, "acme", Some("ann")));
        assert!(keys.authenticate_cached(&forged_of(&made.secret)).is_none(), "an unseen key needs argon2");
        assert_eq!(keys.authenticate_cached(&made.secret).unwrap().unwrap(), p, "the cached path agrees");

        let stored = std::fs::read(dir.path().join("keys.db")).unwrap();
        let secret_part = made.secret.rsplit('_').next().unwrap().as_bytes();
        assert!(!stored.windows(secret_part.len()).any(|w| w == secret_part), "the secret is not stored");

        assert_eq!(keys.authenticate(&forged_of(&made.secret)).unwrap_err().code, ErrorCode::InvalidCredentials);
        assert_eq!(keys.authenticate("mh_000000000000_nope").unwrap_err().code, ErrorCode::InvalidCredentials);
        assert_eq!(keys.authenticate("Bearer whatever").unwrap_err().code, ErrorCode::InvalidCredentials);

        // Revocation through a second handle (the CLI) takes effect at once.
        let other = KeyStore::open(dir.path()).unwrap();
        other.revoke(&made.key.id, Some("acme")).unwrap();
        assert_eq!(keys.authenticate(&made.secret).unwrap_err().code, ErrorCode::CredentialsRevoked);
        assert_eq!(other.revoke(&made.key.id, Some("globex")).unwrap_err().code, ErrorCode::NotFound);

        let expired = keys.create(NewKey { expires_at: Some(now_micros() - 1), ..spec(Role::Admin) }).unwrap();
        assert_eq!(keys.authenticate(&expired.secret).unwrap_err().code, ErrorCode::CredentialsExpired);
        assert_eq!(keys.list(Some("acme")).unwrap().len(), 2);
        assert!(keys.list(Some("globex")).unwrap().is_empty());
    }

    #[test]
    fn keys_that_make_no_sense_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::open(dir.path()).unwrap();
        let field = |k: NewKey| keys.create(k).unwrap_err().field.unwrap();
        assert_eq!(field(NewKey { user_id: None, ..spec(Role::User) }), "user_id");
        assert_eq!(field(NewKey { systems: None, ..spec(Role::Service) }), "systems");
        assert_eq!(field(NewKey { superadmin: true, ..spec(Role::Manager) }), "superadmin");
    }
}
