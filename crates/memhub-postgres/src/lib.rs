//! memhub's PostgreSQL backend: [`PostgresStore`] keeps what the embedded store keeps
//! in `memhub.db` (memories, versions, the knowledge graph, schemas, retention
//! policies, the cold catalog and the change log) in one PostgreSQL database, so
//! several memhub replicas can share it.
//!
//! The engine is synchronous and calls its store from blocking threads; this store
//! runs sqlx on a small runtime of its own and blocks on it, as the object-storage
//! client does.
//!
//! **Commit order is sequence order.** Every write transaction first takes one
//! transaction-scoped advisory lock ([`WRITE_LOCK`]) and only then numbers its
//! changes from `changes_seq`, so no transaction can commit a lower sequence number
//! after a higher one is visible: a replica that tails the log by `seq > last` never
//! skips a change that committed late. Writers on every replica are serialised by
//! that lock; group commit makes each turn carry many writes.
//!
//! **Replicas wake on commit.** A write's transaction ends with a `NOTIFY` on
//! [`CHANNEL`] carrying its last sequence number (PostgreSQL delivers it at commit,
//! not before); every store listens, and an engine that follows the log waits on
//! it ([`MemoryStore::wait_for_changes`]) instead of polling. A notification lost
//! while the listener reconnects costs at most the follower's poll interval.

mod audit;
mod keys;
mod ledger;
mod webhooks;

pub use audit::{PostgresAudit, AUDIT_LOCK};
pub use keys::PostgresKeys;
pub use ledger::PostgresLedger;
/// The SQL client this backend speaks, for tools that query its database directly
/// (the pgvector benchmark).
pub use sqlx;
pub use webhooks::PostgresWebhooks;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use memhub_engine::store::{
    graph_change, memory_change, ChangedRow, ColdEntry, ColdGroup, MetaRow, RowText, TenantTotals,
};
use memhub_engine::{MemoryStore, StoreTx};
use memhub_types::memory::IngestionMethod;
use memhub_types::time::now_micros;
use memhub_types::{
    Change, ChangeOp, Error, ErrorCode, KindSchema, Memory, NewEntity, NewRelation, Result, RetentionPolicy, Tier,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row, SqlSafeStr};
use uuid::Uuid;

/// The advisory lock every write transaction holds until it commits (see the crate
/// doc). The number is arbitrary but fixed: `'memh'` in ASCII.
pub const WRITE_LOCK: i64 = 0x6d65_6d68;

/// The session advisory lock the replica that runs the once-per-store jobs holds
/// (`'memj'`): released by PostgreSQL when its connection ends, so a dead leader's
/// lock frees itself and another replica takes it on its next try.
pub const LEADER_LOCK: i64 = 0x6d65_6d6a;

/// The channel every write notifies at commit, with its last sequence number.
pub const CHANNEL: &str = "memhub_changes";

/// `[storage.postgres]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// Most connections this replica opens.
    pub pool_size: u32,
    /// How long a request waits for a free connection (or for the database to
    /// answer a connect) before it fails with `storage_unavailable`.
    pub acquire_timeout_seconds: u64,
    /// Keep memories' vectors in pgvector's `vector` type when the database has the
    /// extension (or this role may create it), so SQL users, BI tools and CDC
    /// pipelines read them as vectors; otherwise (or `false`) a plain `real[]`.
    /// Decided once, when the database is first migrated; memhub reads either.
    pub pgvector: bool,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig { url: String::new(), pool_size: 8, acquire_timeout_seconds: 5, pgvector: true }
    }
}

/// The schema, as versioned migrations run at open. A database migrated by a newer
/// memhub (a version this list lacks) is refused.
fn migrator() -> Migrator {
    let migration = |version, name: &str, sql: &'static str| {
        Migration::new(version, name.to_string().into(), MigrationType::Simple, sql.into_sql_str(), false)
    };
    Migrator::with_migrations(vec![
        migration(1, "store", include_str!("../migrations/0001_store.sql")),
        migration(2, "keys", include_str!("../migrations/0002_keys.sql")),
        migration(3, "ingest", include_str!("../migrations/0003_ingest.sql")),
        migration(4, "audit", include_str!("../migrations/0004_audit.sql")),
        migration(5, "webhooks", include_str!("../migrations/0005_webhooks.sql")),
        migration(6, "pgvector", include_str!("../migrations/0006_pgvector.sql")),
    ])
}

/// Run the migrations on one connection that tells migration 6 whether to use
/// pgvector (through the session setting `memhub.pgvector`).
async fn migrate(pool: &PgPool, pgvector: bool) -> std::result::Result<(), sqlx::migrate::MigrateError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT set_config('memhub.pgvector', $1, false)")
        .bind(if pgvector { "auto" } else { "off" })
        .execute(&mut *conn)
        .await?;
    let result = migrator().run(&mut *conn).await;
    // The connection goes back to the pool: leave no setting behind on it.
    let _ = sqlx::query("RESET memhub.pgvector").execute(&mut *conn).await;
    result
}

/// The columns of `memories` (and `memory_history`), with `$embedding` for the vector's.
macro_rules! memory_columns {
    ($embedding:literal) => {
        concat!(
            "id, tenant, system_id, memory_id, kind, schema_version, content, attributes, metadata, tags, \
             user_id, agent_id, session_id, project, created_at, ingested_at, updated_at, expires_at, ",
            $embedding,
            ", embedding_model, content_hash, version, ingestion_method, tier"
        )
    };
}

/// The columns of `memories` (and `memory_history`) that a write names.
const MEMORY_COLUMNS: &str = memory_columns!("embedding");

/// The columns [`memory_from_row`] reads: the vector as `real[]`, whether the column
/// is pgvector's `vector` (migration 6) or a plain `real[]`.
const MEMORY_SELECT: &str = memory_columns!("embedding::real[] AS embedding");

/// The columns of `changes` that [`change_from_row`] reads.
const CHANGE_COLUMNS: &str = r#"seq, op, "row", tenant, id, memory_id, system_id, kind, user_id, version, at"#;

/// SQL made from this file's constants (never from input: every value is bound).
fn sql(s: String) -> AssertSqlSafe<String> {
    AssertSqlSafe(s)
}

/// A database error as the engine's: the database out of reach is `storage_unavailable`
/// (503, retry), anything else a storage error.
fn db(e: sqlx::Error) -> Error {
    match e {
        // Connection exceptions (class 08) and a server shutting down (57P0x) are the
        // database going away, not a bad request.
        sqlx::Error::Database(ref d) if d.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) => {
            Error::new(ErrorCode::StorageUnavailable, format!("the PostgreSQL database went away: {e}"))
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
            Error::new(ErrorCode::StorageUnavailable, format!("the PostgreSQL database cannot be reached: {e}"))
        }
        e => Error::storage(e),
    }
}

/// `url` without its password, for logs and reports.
pub fn redact(url: &str) -> String {
    // postgres://user:secret@host/db -> postgres://user@host/db
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn memory_from_row(r: &PgRow) -> std::result::Result<Memory, sqlx::Error> {
    let json_map = |v: Value| match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    let method: String = r.try_get("ingestion_method")?;
    let tier: String = r.try_get("tier")?;
    Ok(Memory {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant")?,
        system_id: r.try_get("system_id")?,
        memory_id: r.try_get("memory_id")?,
        kind: r.try_get("kind")?,
        schema_version: r.try_get::<i32, _>("schema_version")? as u32,
        content: r.try_get("content")?,
        attributes: r.try_get("attributes")?,
        metadata: json_map(r.try_get("metadata")?),
        tags: serde_json::from_value(r.try_get("tags")?).unwrap_or_default(),
        user_id: r.try_get("user_id")?,
        agent_id: r.try_get("agent_id")?,
        session_id: r.try_get("session_id")?,
        project: r.try_get("project")?,
        created_at: r.try_get("created_at")?,
        ingested_at: r.try_get("ingested_at")?,
        updated_at: r.try_get("updated_at")?,
        expires_at: r.try_get("expires_at")?,
        embedding: r.try_get("embedding")?,
        embedding_model: r.try_get("embedding_model")?,
        content_hash: r.try_get("content_hash")?,
        version: r.try_get::<i64, _>("version")? as u32,
        ingestion_method: IngestionMethod::parse(&method).unwrap_or(IngestionMethod::Rest),
        tier: Tier::parse(&tier).unwrap_or_default(),
    })
}

/// `SELECT seq, <memory columns> FROM memories WHERE {clause}`.
fn select_memories(clause: &str) -> AssertSqlSafe<String> {
    sql(format!("SELECT seq, {MEMORY_SELECT} FROM memories WHERE {clause}"))
}

/// A row of [`select_memories`]: its `seq` and the memory.
fn row_and_memory(r: &PgRow) -> std::result::Result<(i64, Memory), sqlx::Error> {
    Ok((r.try_get("seq")?, memory_from_row(r)?))
}

fn change_from_row(r: &PgRow) -> std::result::Result<Option<Change>, sqlx::Error> {
    let Some(op) = ChangeOp::parse(&r.try_get::<String, _>("op")?) else { return Ok(None) };
    Ok(Some(Change {
        seq: r.try_get("seq")?,
        op,
        row: r.try_get("row")?,
        tenant: r.try_get("tenant")?,
        id: r.try_get("id")?,
        memory_id: r.try_get("memory_id")?,
        system_id: r.try_get("system_id")?,
        kind: r.try_get("kind")?,
        user_id: r.try_get("user_id")?,
        version: r.try_get::<Option<i64>, _>("version")?.map(|v| v as u32),
        at: r.try_get("at")?,
        memory: None,
    }))
}

/// Bind a memory's columns in [`MEMORY_COLUMNS`] order.
/// Where a memory's values are bound: a statement's parameters, or one row of a
/// multi-row `INSERT` ([`sqlx::QueryBuilder::push_values`]). One list of the
/// columns' values, whichever.
trait Bind: Sized {
    fn value<'t, T: sqlx::Encode<'t, Postgres> + sqlx::Type<Postgres>>(self, v: T) -> Self;
}

impl Bind for Query<'_> {
    fn value<'t, T: sqlx::Encode<'t, Postgres> + sqlx::Type<Postgres>>(self, v: T) -> Self {
        self.bind(v)
    }
}

impl Bind for sqlx::query_builder::Separated<'_, Postgres, &'static str> {
    fn value<'t, T: sqlx::Encode<'t, Postgres> + sqlx::Type<Postgres>>(mut self, v: T) -> Self {
        self.push_bind(v);
        self
    }
}

/// `m`'s values in the order of [`MEMORY_COLUMNS`].
fn bind_memory<B: Bind>(q: B, m: &Memory) -> B {
    q.value(m.id)
        .value(m.tenant.as_str())
        .value(m.system_id.as_str())
        .value(m.memory_id.as_str())
        .value(m.kind.as_str())
        .value(m.schema_version as i32)
        .value(m.content.as_str())
        .value(&m.attributes)
        .value(Value::Object(m.metadata.clone()))
        .value(serde_json::to_value(&m.tags).unwrap_or_default())
        .value(m.user_id.as_deref())
        .value(m.agent_id.as_deref())
        .value(m.session_id.as_deref())
        .value(m.project.as_deref())
        .value(m.created_at)
        .value(m.ingested_at)
        .value(m.updated_at)
        .value(m.expires_at)
        .value(m.embedding.as_deref())
        .value(m.embedding_model.as_deref())
        .value(m.content_hash.as_str())
        .value(i64::from(m.version))
        .value(m.ingestion_method.as_str())
        .value(m.tier.as_str())
}

/// `c`'s values in the order of [`CHANGE_COLUMNS`] after `seq`.
fn bind_change<B: Bind>(q: B, c: &Change) -> B {
    q.value(c.op.as_str())
        .value(c.row)
        .value(c.tenant.as_str())
        .value(c.id)
        .value(c.memory_id.as_deref())
        .value(c.system_id.as_deref())
        .value(c.kind.as_deref())
        .value(c.user_id.as_deref())
        .value(c.version.map(i64::from))
        .value(c.at)
}

/// Keys `(tenant, system_id, memory_id)` as three arrays, for `UNNEST`.
fn key_arrays(keys: &[(&str, &str, &str)]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut arrays = (Vec::with_capacity(keys.len()), Vec::with_capacity(keys.len()), Vec::with_capacity(keys.len()));
    for (t, s, m) in keys {
        arrays.0.push(t.to_string());
        arrays.1.push(s.to_string());
        arrays.2.push(m.to_string());
    }
    arrays
}

/// Rows per multi-row `INSERT`: 24 parameters each, under PostgreSQL's 65,535.
const INSERT_ROWS: usize = 1_000;

/// Create database `name` through `admin_url` (a connection to any database of
/// the cluster, as a user allowed to create databases); returns `admin_url` naming
/// the new database instead. For test suites and first set-up: `name` must be a
/// plain identifier (`[a-z0-9_]`), as it cannot be a bound parameter.
pub fn create_database(admin_url: &str, name: &str) -> Result<String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err(Error::field(ErrorCode::InvalidField, "name", "must match [a-z0-9_]+"));
    }
    // On a thread of its own, so a caller inside an async runtime may call it too.
    std::thread::scope(|s| {
        s.spawn(|| {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Error::internal)?;
            runtime.block_on(async {
                use sqlx::Connection;
                let mut admin = sqlx::PgConnection::connect(admin_url).await.map_err(db)?;
                sqlx::query(sql(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.map_err(db)?;
                admin.close().await.map_err(db)
            })
        })
        .join()
        .map_err(|_| Error::internal("creating a database panicked"))?
    })?;
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin_url, String::new()),
    };
    // postgres://user@host:port/database: the database is after the third '/'.
    let server = match base.match_indices('/').nth(2) {
        Some((i, _)) => &base[..i],
        None => return Err(Error::field(ErrorCode::InvalidField, "admin_url", "must name a database")),
    };
    Ok(format!("{server}/{name}{query}"))
}

/// Run `f` to completion on the store's `runtime`. Callers are plain or blocking
/// threads; from inside an async runtime (a server opening its store in its async
/// main, a handler on a worker) the thread first hands its other tasks off, which
/// needs a multi-thread runtime.
fn block_on<F: Future>(runtime: &tokio::runtime::Runtime, f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(|| runtime.block_on(f)),
        Err(_) => runtime.block_on(f),
    }
}

/// A runtime that may be dropped anywhere: tokio panics when a runtime is dropped
/// on a thread of another runtime (a server's async main, on error or at
/// shutdown), so this one shuts down in the background instead.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A migrated connection pool on a small runtime of its own: what the store and
/// the key table each open.
struct Db {
    // Dropped last (fields drop in order): the pool's connections close on it.
    pool: PgPool,
    /// For logs and errors: without the password.
    url: String,
    /// For connections outside the pool (never logged).
    connect_url: String,
    runtime: OwnRuntime,
}

impl Db {
    fn connect(config: &PostgresConfig, threads: usize, pool_size: u32) -> Result<Db> {
        if config.url.is_empty() {
            return Err(Error::field(
                ErrorCode::InvalidField,
                "storage.postgres.url",
                "storage.backend = \"postgres\" needs storage.postgres.url (MEMHUB_POSTGRES_URL)",
            ));
        }
        let runtime = OwnRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("memhub-postgres")
                .enable_all()
                .build()
                .map_err(Error::internal)?,
        ));
        let url = redact(&config.url);
        let pool = block_on(
            runtime.get(),
            PgPoolOptions::new()
                .max_connections(pool_size.max(1))
                .acquire_timeout(Duration::from_secs(config.acquire_timeout_seconds.max(1)))
                .connect(&config.url),
        )
        .map_err(|e| {
            // Any failure to connect means the database is out of reach (say which).
            let e = db(e);
            let code = if e.code == ErrorCode::StorageError { ErrorCode::StorageUnavailable } else { e.code };
            Error::new(code, format!("cannot open {url}: {}", e.message()))
        })?;
        block_on(runtime.get(), migrate(&pool, config.pgvector)).map_err(|e| {
            Error::storage(format!(
                "cannot migrate {url}: {e} (a database migrated by a newer memhub is refused; upgrade this binary)"
            ))
        })?;
        Ok(Db { pool, url, connect_url: config.url.clone(), runtime })
    }

    fn run<F: Future>(&self, f: F) -> F::Output {
        block_on(self.runtime.get(), f)
    }

    fn block<T>(&self, f: impl Future<Output = std::result::Result<T, sqlx::Error>>) -> Result<T> {
        self.run(f).map_err(db)
    }
}

/// The PostgreSQL store.
pub struct PostgresStore {
    db: Db,
    commits: Arc<Commits>,
    /// Set once the listener task runs (started by the first wait).
    listening: OnceLock<()>,
    /// The connection holding [`LEADER_LOCK`], while this replica leads.
    leader: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
}

/// What the commit notifications said, and who waits for the next one.
#[derive(Default)]
struct Commits {
    heard: Mutex<Heard>,
    wake: Condvar,
}

#[derive(Default, Clone, Copy)]
struct Heard {
    /// The newest sequence number announced.
    newest: i64,
    /// Bumped when the listener's connection dropped: notifications may be lost.
    lapses: u64,
}

impl Commits {
    /// `None`: the listener lost its connection, so every waiter goes and reads the log.
    fn announce(&self, seq: Option<i64>) {
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        match seq {
            Some(seq) => heard.newest = heard.newest.max(seq),
            None => heard.lapses += 1,
        }
        self.wake.notify_all();
    }

    fn wait(&self, seen: i64, timeout: Duration) {
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let lapses = heard.lapses;
        let _ = self.wake.wait_timeout_while(heard, timeout, |h| h.newest <= seen && h.lapses == lapses);
    }
}

/// Listen on [`CHANNEL`] for as long as the store lives, reconnecting after a failure.
async fn listen(url: String, commits: Arc<Commits>) {
    loop {
        match PgListener::connect(&url).await {
            Ok(mut listener) => match listener.listen(CHANNEL).await {
                Ok(()) => loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) => commits.announce(n.payload().parse().ok()),
                        // The connection dropped (the next call reconnects): what was
                        // sent meanwhile is lost, so waiters go and look.
                        Ok(None) => commits.announce(None),
                        Err(e) => {
                            tracing::warn!(error = %e, "the commit listener failed; reconnecting");
                            break;
                        }
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot LISTEN for commits; retrying"),
            },
            Err(e) => tracing::debug!(error = %e, "the commit listener cannot connect; retrying"),
        }
        commits.announce(None);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl PostgresStore {
    /// Connect, run the migrations, and make the store's identity once.
    pub fn connect(config: &PostgresConfig) -> Result<PostgresStore> {
        let db = Db::connect(config, 2, config.pool_size)?;
        db.block(
            sqlx::query("INSERT INTO store_meta (key, value) VALUES ('store_id', $1) ON CONFLICT (key) DO NOTHING")
                .bind(Uuid::now_v7().to_string())
                .execute(&db.pool),
        )?;
        Ok(PostgresStore {
            db,
            commits: Arc::default(),
            listening: OnceLock::new(),
            leader: tokio::sync::Mutex::new(None),
        })
    }

    fn run<F: Future>(&self, f: F) -> F::Output {
        self.db.run(f)
    }

    fn block<T>(&self, f: impl Future<Output = std::result::Result<T, sqlx::Error>>) -> Result<T> {
        self.db.block(f)
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        self.block(
            sqlx::query_scalar("SELECT value FROM store_meta WHERE key = $1")
                .bind(key.to_string())
                .fetch_optional(&self.db.pool),
        )
    }

    fn memories_where(&self, clause: &str, bind: impl FnOnce(Query<'_>) -> Query<'_>) -> Result<Vec<(i64, Memory)>> {
        let rows = self.block(bind(sqlx::query(select_memories(clause))).fetch_all(&self.db.pool))?;
        rows.iter().map(row_and_memory).collect::<std::result::Result<_, _>>().map_err(db)
    }
}

type Query<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

impl MemoryStore for PostgresStore {
    fn describe(&self) -> String {
        self.db.url.clone()
    }

    fn read_only(&self) -> bool {
        false
    }

    fn store_id(&self) -> Result<String> {
        Ok(self.meta("store_id")?.unwrap_or_default())
    }

    fn disk_bytes(&self) -> u64 {
        self.block(sqlx::query_scalar::<_, i64>("SELECT pg_database_size(current_database())").fetch_one(&self.db.pool))
            .map_or(0, |b| b.max(0) as u64)
    }

    fn shared(&self) -> bool {
        true
    }

    fn leads(&self) -> bool {
        use sqlx::Connection;
        self.run(async {
            let mut held = self.leader.lock().await;
            if let Some(conn) = held.as_mut() {
                // Patient: letting go frees the lock for another replica while this
                // one's job may still run, so a slow answer is not a lost connection.
                if tokio::time::timeout(Duration::from_secs(10), conn.ping()).await.is_ok_and(|r| r.is_ok()) {
                    return true;
                }
                // The connection (and with it the lock) is gone, or may be: let go.
                tracing::warn!("lost the connection holding the leader lock; no longer leading");
                if let Some(conn) = held.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
                }
            }
            let attempt = async {
                let mut conn = sqlx::PgConnection::connect(&self.db.connect_url).await?;
                // A leader cut off by the network must lose its session (and the lock)
                // in seconds, not after the kernel's two-hour keepalive default.
                sqlx::raw_sql(
                    "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3",
                )
                .execute(&mut conn)
                .await?;
                let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(LEADER_LOCK)
                    .fetch_one(&mut conn)
                    .await?;
                if won {
                    *held = Some(conn);
                } else {
                    conn.close().await?;
                }
                Ok::<bool, sqlx::Error>(won)
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(won)) => {
                    if won {
                        tracing::info!("took the leader lock: this replica runs the once-per-store jobs");
                    }
                    won
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot try the leader lock");
                    false
                }
                Err(_) => false,
            }
        })
    }

    fn wait_for_changes(&self, seen: i64, timeout: Duration) {
        self.listening.get_or_init(|| {
            self.db.runtime.get().spawn(listen(self.db.connect_url.clone(), self.commits.clone()));
        });
        self.commits.wait(seen, timeout);
    }

    fn write(&self, work: &mut dyn FnMut(&mut dyn StoreTx) -> Result<()>) -> Result<Vec<Change>> {
        let tx = self.block(self.db.pool.begin())?;
        let mut open = PgTx { store: self, tx, changes: Vec::new() };
        let outcome = open
            .execute(sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(WRITE_LOCK))
            .and_then(|_| work(&mut open))
            .and_then(|()| match open.changes.last().map(|c| c.seq) {
                // Delivered to the listeners when (and only if) the transaction commits.
                Some(last) => {
                    open.execute(sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(last.to_string())).map(drop)
                }
                None => Ok(()),
            });
        let PgTx { tx, changes, .. } = open;
        match outcome {
            Ok(()) => {
                self.block(tx.commit())?;
                Ok(changes)
            }
            Err(e) => {
                // On the store's runtime: a transaction dropped elsewhere cannot return
                // its connection to the pool.
                self.run(async move {
                    if let Err(rollback) = tx.rollback().await {
                        tracing::warn!(error = %rollback, "rolling back a failed write failed; the pool drops the connection");
                    }
                });
                Err(e)
            }
        }
    }

    fn compact(&self) -> Result<()> {
        // VACUUM cannot run in a transaction; a pooled connection runs it on its own.
        for table in ["memories", "memory_history", "changes", "cold_memories"] {
            self.block(sqlx::query(sql(format!("VACUUM {table}"))).execute(&self.db.pool))?;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<()> {
        Ok(())
    }

    fn memory_by_id(&self, tenant: &str, id: &Uuid) -> Result<Option<(i64, Memory)>> {
        let (tenant, id) = (tenant.to_string(), *id);
        Ok(self.memories_where("id = $1 AND tenant = $2", |q| q.bind(id).bind(tenant))?.pop())
    }

    fn memories_by_memory_id(
        &self,
        tenant: &str,
        system_id: Option<&str>,
        memory_id: &str,
        limit: usize,
    ) -> Result<Vec<Memory>> {
        let (tenant, memory_id, system_id) = (tenant.to_string(), memory_id.to_string(), system_id.map(str::to_owned));
        let found = self.memories_where(
            "tenant = $1 AND memory_id = $2 AND ($3::text IS NULL OR system_id = $3) ORDER BY seq LIMIT $4",
            |q| q.bind(tenant).bind(memory_id).bind(system_id).bind(limit as i64),
        )?;
        Ok(found.into_iter().map(|(_, m)| m).collect())
    }

    fn memories_by_row(&self, rows: &[i64]) -> Result<Vec<(i64, Memory)>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let found = self.memories_where("seq = ANY($1)", |q| q.bind(rows.to_vec()))?;
        // In the order asked for.
        let mut by_row: BTreeMap<i64, Memory> = found.into_iter().collect();
        Ok(rows.iter().filter_map(|r| Some((*r, by_row.remove(r)?))).collect())
    }

    fn history(&self, tenant: &str, id: &Uuid) -> Result<Vec<Memory>> {
        let text =
            format!("SELECT {MEMORY_SELECT} FROM memory_history WHERE id = $1 AND tenant = $2 ORDER BY version DESC");
        let rows = self.block(sqlx::query(sql(text)).bind(*id).bind(tenant.to_string()).fetch_all(&self.db.pool))?;
        rows.iter().map(memory_from_row).collect::<std::result::Result<_, _>>().map_err(db)
    }

    fn each_memory(&self, tenant: Option<&str>, f: &mut dyn FnMut(Memory) -> Result<()>) -> Result<usize> {
        let text = format!("SELECT {MEMORY_SELECT} FROM memories WHERE ($1::text IS NULL OR tenant = $1) ORDER BY seq");
        let tenant = tenant.map(str::to_owned);
        self.run(async {
            use futures::TryStreamExt;
            let mut rows = sqlx::query(sql(text)).bind(tenant).fetch(&self.db.pool);
            let mut n = 0;
            while let Some(r) = rows.try_next().await.map_err(db)? {
                f(memory_from_row(&r).map_err(db)?)?;
                n += 1;
            }
            Ok(n)
        })
    }

    fn tenant_totals(&self, tenant: &str) -> Result<TenantTotals> {
        let (history_versions, entities, relations): (i64, i64, i64) = self.block(
            sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM memory_history WHERE tenant = $1), \
                 (SELECT COUNT(*) FROM kg_entities WHERE tenant = $1), \
                 (SELECT COUNT(*) FROM kg_relations WHERE tenant = $1)",
            )
            .bind(tenant.to_string())
            .fetch_one(&self.db.pool),
        )?;
        Ok(TenantTotals { history_versions, entities, relations })
    }

    fn each_meta(&self, model: &str, f: &mut dyn FnMut(MetaRow) -> Result<()>) -> Result<()> {
        let model = model.to_string();
        self.run(async {
            use futures::TryStreamExt;
            let mut rows = sqlx::query(
                "SELECT seq, tenant, system_id, kind, user_id, agent_id, session_id, project, tags, created_at, \
                 expires_at, metadata, content_hash, (embedding IS NOT NULL AND embedding_model = $1) AS has_vector, \
                 tier FROM memories",
            )
            .bind(model)
            .fetch(&self.db.pool);
            while let Some(r) = rows.try_next().await.map_err(db)? {
                let meta = (|| {
                    Ok::<_, sqlx::Error>(MetaRow {
                        row: r.try_get("seq")?,
                        tenant: r.try_get("tenant")?,
                        system_id: r.try_get("system_id")?,
                        kind: r.try_get("kind")?,
                        user_id: r.try_get("user_id")?,
                        agent_id: r.try_get("agent_id")?,
                        session_id: r.try_get("session_id")?,
                        project: r.try_get("project")?,
                        tags: serde_json::from_value(r.try_get("tags")?).unwrap_or_default(),
                        created_at: r.try_get("created_at")?,
                        expires_at: r.try_get("expires_at")?,
                        metadata: match r.try_get("metadata")? {
                            Value::Object(m) => m,
                            _ => serde_json::Map::new(),
                        },
                        content_hash: r.try_get("content_hash")?,
                        has_vector: r.try_get::<Option<bool>, _>("has_vector")?.unwrap_or(false),
                        tier: Tier::parse(&r.try_get::<String, _>("tier")?).unwrap_or_default(),
                    })
                })()
                .map_err(db)?;
                f(meta)?;
            }
            Ok(())
        })
    }

    fn changed_since(&self, since: Option<i64>, f: &mut dyn FnMut(ChangedRow) -> Result<()>) -> Result<()> {
        let text = match since {
            None => "SELECT seq AS r, content, embedding::real[] AS embedding, embedding_model FROM memories",
            Some(_) => {
                "SELECT c.r, m.content, m.embedding::real[] AS embedding, m.embedding_model \
                 FROM (SELECT DISTINCT \"row\" AS r FROM changes WHERE seq > $1 AND \"row\" IS NOT NULL) c \
                 LEFT JOIN memories m ON m.seq = c.r"
            }
        };
        self.run(async {
            use futures::TryStreamExt;
            let mut q = sqlx::query(text);
            if let Some(s) = since {
                q = q.bind(s);
            }
            let mut rows = q.fetch(&self.db.pool);
            while let Some(r) = rows.try_next().await.map_err(db)? {
                let row: i64 = r.try_get("r").map_err(db)?;
                let content: Option<String> = r.try_get("content").map_err(db)?;
                let vector: Option<Vec<f32>> = r.try_get("embedding").map_err(db)?;
                let model: Option<String> = r.try_get("embedding_model").map_err(db)?;
                let embedding = vector.zip(model);
                f(ChangedRow { row, now: content.map(|content| RowText { content, embedding }) })?;
            }
            Ok(())
        })
    }

    fn last_change(&self) -> Result<i64> {
        self.block(
            sqlx::query_scalar(
                "SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM changes), 0), \
                 COALESCE((SELECT value::bigint FROM store_meta WHERE key = 'pruned_through'), 0))",
            )
            .fetch_one(&self.db.pool),
        )
    }

    fn changes_after(&self, after: i64, limit: usize) -> Result<Vec<Change>> {
        let text = format!("SELECT {CHANGE_COLUMNS} FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2");
        let rows = self.block(sqlx::query(sql(text)).bind(after).bind(limit as i64).fetch_all(&self.db.pool))?;
        let found: Vec<Option<Change>> =
            rows.iter().map(change_from_row).collect::<std::result::Result<_, _>>().map_err(db)?;
        Ok(found.into_iter().flatten().collect())
    }

    fn pruned_through(&self) -> Result<i64> {
        Ok(self.meta("pruned_through")?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    fn prune_changes(&self, before: i64) -> Result<usize> {
        self.run(async {
            let mut tx = self.db.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(WRITE_LOCK).execute(&mut *tx).await?;
            let last: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM changes WHERE at < $1")
                .bind(before)
                .fetch_one(&mut *tx)
                .await?;
            let Some(last) = last else { return Ok(0) };
            let n =
                sqlx::query("DELETE FROM changes WHERE seq <= $1").bind(last).execute(&mut *tx).await?.rows_affected();
            sqlx::query(
                "INSERT INTO store_meta (key, value) VALUES ('pruned_through', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(last.to_string())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(n as usize)
        })
        .map_err(db)
    }

    fn each_entity(&self, f: &mut dyn FnMut(&str, NewEntity) -> Result<()>) -> Result<()> {
        let rows: Vec<(String, String, String, Value, Value, Value)> = self.block(
            sqlx::query_as(
                "SELECT tenant, name, entity_type, observations, properties, metadata FROM kg_entities \
                 ORDER BY created_at, id",
            )
            .fetch_all(&self.db.pool),
        )?;
        for (tenant, name, entity_type, observations, properties, metadata) in rows {
            let e = NewEntity {
                name,
                entity_type,
                observations: serde_json::from_value(observations).unwrap_or_default(),
                properties: serde_json::from_value(properties).unwrap_or_default(),
                metadata: serde_json::from_value(metadata).unwrap_or_default(),
            };
            f(&tenant, e)?;
        }
        Ok(())
    }

    fn each_relation(&self, f: &mut dyn FnMut(&str, NewRelation) -> Result<()>) -> Result<()> {
        let rows: Vec<(String, String, String, String, Value, Value)> = self.block(
            sqlx::query_as(
                "SELECT tenant, from_entity, to_entity, relation_type, properties, metadata FROM kg_relations \
                 ORDER BY created_at, id",
            )
            .fetch_all(&self.db.pool),
        )?;
        for (tenant, from_entity, to_entity, relation_type, properties, metadata) in rows {
            let r = NewRelation {
                from_entity,
                to_entity,
                relation_type,
                properties: serde_json::from_value(properties).unwrap_or_default(),
                metadata: serde_json::from_value(metadata).unwrap_or_default(),
            };
            f(&tenant, r)?;
        }
        Ok(())
    }

    fn schemas(&self) -> Result<Vec<KindSchema>> {
        let rows: Vec<(String, i32, String, Value)> = self.block(
            sqlx::query_as("SELECT kind, version, description, schema FROM kind_schemas ORDER BY kind, version")
                .fetch_all(&self.db.pool),
        )?;
        Ok(rows
            .into_iter()
            .map(|(kind, version, description, schema)| KindSchema {
                kind,
                version: version as u32,
                description,
                schema,
                builtin: false,
            })
            .collect())
    }

    fn retention_policies(&self) -> Result<Vec<RetentionPolicy>> {
        let rows: Vec<(String, String, String, i64)> = self.block(
            sqlx::query_as(
                "SELECT tenant, kind, system_id, ttl_seconds FROM retention_policies ORDER BY tenant, kind, system_id",
            )
            .fetch_all(&self.db.pool),
        )?;
        Ok(rows
            .into_iter()
            .map(|(tenant, kind, system, ttl)| RetentionPolicy {
                tenant: Some(tenant),
                kind,
                system_id: (!system.is_empty()).then_some(system),
                ttl_seconds: ttl.max(1) as u64,
            })
            .collect())
    }

    fn cold_ids_by_key(&self, keys: &[(&str, &str, &str)]) -> Result<Vec<Uuid>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let tenants: Vec<String> = keys.iter().map(|k| k.0.to_string()).collect();
        let systems: Vec<String> = keys.iter().map(|k| k.1.to_string()).collect();
        let ids: Vec<String> = keys.iter().map(|k| k.2.to_string()).collect();
        self.block(
            sqlx::query_scalar(
                "SELECT c.id FROM cold_memories c JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(t, s, m) \
                 ON c.tenant = k.t AND c.system_id = k.s AND c.memory_id = k.m",
            )
            .bind(tenants)
            .bind(systems)
            .bind(ids)
            .fetch_all(&self.db.pool),
        )
    }

    fn cold_ids_by_memory_id(
        &self,
        tenant: &str,
        system_id: Option<&str>,
        memory_id: &str,
        limit: usize,
    ) -> Result<Vec<Uuid>> {
        self.block(
            sqlx::query_scalar(
                "SELECT id FROM cold_memories WHERE tenant = $1 AND memory_id = $2 \
                 AND ($3::text IS NULL OR system_id = $3) LIMIT $4",
            )
            .bind(tenant.to_string())
            .bind(memory_id.to_string())
            .bind(system_id.map(str::to_owned))
            .bind(limit as i64)
            .fetch_all(&self.db.pool),
        )
    }

    fn cold_file_of(&self, tenant: &str, id: &Uuid) -> Result<Option<String>> {
        self.block(
            sqlx::query_scalar("SELECT file FROM cold_memories WHERE id = $1 AND tenant = $2")
                .bind(*id)
                .bind(tenant.to_string())
                .fetch_optional(&self.db.pool),
        )
    }

    fn cold_files_of(&self, ids: &[Uuid]) -> Result<BTreeMap<String, HashSet<Uuid>>> {
        let rows: Vec<(Uuid, String)> = self.block(
            sqlx::query_as("SELECT id, file FROM cold_memories WHERE id = ANY($1)")
                .bind(ids.to_vec())
                .fetch_all(&self.db.pool),
        )?;
        let mut out: BTreeMap<String, HashSet<Uuid>> = BTreeMap::new();
        for (id, file) in rows {
            out.entry(file).or_default().insert(id);
        }
        Ok(out)
    }

    fn cold_entries(&self) -> Result<Vec<ColdEntry>> {
        let rows: Vec<(Uuid, String, String, String, i64, Option<i64>)> = self.block(
            sqlx::query_as("SELECT id, tenant, system_id, kind, created_at, expires_at FROM cold_memories")
                .fetch_all(&self.db.pool),
        )?;
        Ok(rows
            .into_iter()
            .map(|(id, tenant, system_id, kind, created_at, expires_at)| ColdEntry {
                id,
                tenant,
                system_id,
                kind,
                created_at,
                expires_at,
            })
            .collect())
    }

    fn cold_files(
        &self,
        tenant: Option<&str>,
        system_id: Option<&str>,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<Vec<(String, String)>> {
        self.block(
            sqlx::query_as(
                "SELECT path, system_id FROM cold_files WHERE ($1::text IS NULL OR tenant = $1) \
                 AND ($2::text IS NULL OR system_id = $2) AND ($3::bigint IS NULL OR max_created >= $3) \
                 AND ($4::bigint IS NULL OR min_created < $4) ORDER BY min_created, path",
            )
            .bind(tenant.map(str::to_owned))
            .bind(system_id.map(str::to_owned))
            .bind(since)
            .bind(until)
            .fetch_all(&self.db.pool),
        )
    }

    fn cold_small_files(&self, rows: usize) -> Result<Vec<(String, usize)>> {
        let found: Vec<(String, i64)> = self.block(
            sqlx::query_as(r#"SELECT path, "rows" FROM cold_files WHERE "rows" < $1 ORDER BY path"#)
                .bind(rows as i64)
                .fetch_all(&self.db.pool),
        )?;
        Ok(found.into_iter().map(|(p, n)| (p, n as usize)).collect())
    }

    fn cold_paths(&self) -> Result<HashSet<String>> {
        let paths: Vec<String> =
            self.block(sqlx::query_scalar("SELECT path FROM cold_files").fetch_all(&self.db.pool))?;
        Ok(paths.into_iter().collect())
    }

    fn cold_totals(&self) -> Result<(u64, u64)> {
        let (rows, bytes): (i64, i64) = self.block(
            sqlx::query_as(
                r#"SELECT COALESCE(SUM("rows"), 0)::bigint, COALESCE(SUM(bytes), 0)::bigint FROM cold_files"#,
            )
            .fetch_one(&self.db.pool),
        )?;
        Ok((rows as u64, bytes as u64))
    }

    fn cold_groups(&self, tenant: &str) -> Result<(Vec<ColdGroup>, u64)> {
        let rows: Vec<(String, String, Option<String>, i64)> = self.block(
            sqlx::query_as(
                "SELECT system_id, kind, user_id, COUNT(*) FROM cold_memories WHERE tenant = $1 GROUP BY 1, 2, 3",
            )
            .bind(tenant.to_string())
            .fetch_all(&self.db.pool),
        )?;
        let bytes: i64 = self.block(
            sqlx::query_scalar("SELECT COALESCE(SUM(bytes), 0)::bigint FROM cold_files WHERE tenant = $1")
                .bind(tenant.to_string())
                .fetch_one(&self.db.pool),
        )?;
        let groups = rows
            .into_iter()
            .map(|(system_id, kind, user_id, n)| ColdGroup { system_id, kind, user_id, memories: n as usize })
            .collect();
        Ok((groups, bytes as u64))
    }
}

/// A write transaction (holding [`WRITE_LOCK`]) and the changes it has logged.
struct PgTx<'a> {
    store: &'a PostgresStore,
    tx: sqlx::Transaction<'static, Postgres>,
    changes: Vec<Change>,
}

impl PgTx<'_> {
    fn one_memory(&mut self, clause: &str, bind: impl FnOnce(Query<'_>) -> Query<'_>) -> Result<Option<(i64, Memory)>> {
        let store = self.store;
        let row = store.block(bind(sqlx::query(select_memories(clause))).fetch_optional(&mut *self.tx))?;
        row.as_ref().map(row_and_memory).transpose().map_err(db)
    }

    fn log(&mut self, op: ChangeOp, row: Option<i64>, m: &Memory, keep: bool) -> Result<()> {
        self.append(memory_change(op, row, m, keep))
    }

    fn append(&mut self, change: Change) -> Result<()> {
        self.append_many(vec![change])
    }

    /// Log `changes` in order: their sequence numbers taken at once (ascending, so
    /// in the order given; the write lock keeps other writers' numbers out of the
    /// way), then one multi-row `INSERT`.
    fn append_many(&mut self, mut changes: Vec<Change>) -> Result<()> {
        let store = self.store;
        if let [change] = &mut changes[..] {
            // One change (most writes): numbered and logged in one statement.
            let text = format!(
                "INSERT INTO changes ({CHANGE_COLUMNS}) VALUES (nextval('changes_seq'), $1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 RETURNING seq"
            );
            let row = store.block(bind_change(sqlx::query(sql(text)), change).fetch_one(&mut *self.tx))?;
            change.seq = row.try_get(0).map_err(db)?;
        } else if !changes.is_empty() {
            let mut seqs: Vec<i64> = store.block(
                sqlx::query_scalar("SELECT nextval('changes_seq') FROM generate_series(1, $1)")
                    .bind(changes.len() as i64)
                    .fetch_all(&mut *self.tx),
            )?;
            seqs.sort_unstable();
            for (c, seq) in changes.iter_mut().zip(seqs) {
                c.seq = seq;
            }
            for chunk in changes.chunks(INSERT_ROWS) {
                let mut q = sqlx::QueryBuilder::<Postgres>::new(format!("INSERT INTO changes ({CHANGE_COLUMNS}) "));
                q.push_values(chunk, |b, c| {
                    bind_change(b.value(c.seq), c);
                });
                store.block(q.build().execute(&mut *self.tx))?;
            }
        }
        self.changes.extend(changes);
        Ok(())
    }

    fn graph_change(&mut self, op: ChangeOp, tenant: &str, id: Uuid, kind: &str) -> Result<()> {
        self.append(graph_change(op, tenant, id, kind))
    }

    fn execute(&mut self, q: Query<'_>) -> Result<u64> {
        let store = self.store;
        Ok(store.block(q.execute(&mut *self.tx))?.rows_affected())
    }

    fn remove_history(&mut self, id: &Uuid) -> Result<usize> {
        Ok(self.execute(sqlx::query("DELETE FROM memory_history WHERE id = $1").bind(*id))? as usize)
    }

    /// An erased memory's earlier events lose its client key too.
    fn forget_key(&mut self, id: &Uuid) -> Result<()> {
        self.execute(sqlx::query("UPDATE changes SET memory_id = NULL WHERE id = $1").bind(*id))?;
        Ok(())
    }
}

impl StoreTx for PgTx<'_> {
    fn find_by_key(&mut self, tenant: &str, system_id: &str, memory_id: &str) -> Result<Option<(i64, Memory)>> {
        let (t, s, m) = (tenant.to_string(), system_id.to_string(), memory_id.to_string());
        self.one_memory("tenant = $1 AND system_id = $2 AND memory_id = $3", |q| q.bind(t).bind(s).bind(m))
    }

    fn find_by_id(&mut self, tenant: &str, id: &Uuid) -> Result<Option<(i64, Memory)>> {
        let (t, id) = (tenant.to_string(), *id);
        self.one_memory("id = $1 AND tenant = $2", |q| q.bind(id).bind(t))
    }

    fn find_by_row(&mut self, row: i64) -> Result<Option<Memory>> {
        Ok(self.one_memory("seq = $1", |q| q.bind(row))?.map(|(_, m)| m))
    }

    fn find_by_keys(&mut self, keys: &[(&str, &str, &str)]) -> Result<Vec<Option<(i64, Memory)>>> {
        let (tenants, systems, ids) = key_arrays(keys);
        let store = self.store;
        let found = store.block(
            sqlx::query(select_memories(
                "(tenant, system_id, memory_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]))",
            ))
            .bind(tenants)
            .bind(systems)
            .bind(ids)
            .fetch_all(&mut *self.tx),
        )?;
        let mut by_key = std::collections::HashMap::new();
        for r in &found {
            let (row, m) = row_and_memory(r).map_err(db)?;
            by_key.insert((m.tenant.clone(), m.system_id.clone(), m.memory_id.clone()), (row, m));
        }
        Ok(keys.iter().map(|(t, s, m)| by_key.remove(&(t.to_string(), s.to_string(), m.to_string()))).collect())
    }

    fn cold_has_any_key(&mut self, keys: &[(&str, &str, &str)]) -> Result<bool> {
        let (tenants, systems, ids) = key_arrays(keys);
        let store = self.store;
        let found: Option<i32> = store.block(
            sqlx::query_scalar(
                "SELECT 1 FROM cold_memories WHERE (tenant, system_id, memory_id) IN \
                 (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])) LIMIT 1",
            )
            .bind(tenants)
            .bind(systems)
            .bind(ids)
            .fetch_optional(&mut *self.tx),
        )?;
        Ok(found.is_some())
    }

    fn cold_has_key(&mut self, tenant: &str, system_id: &str, memory_id: &str) -> Result<bool> {
        let store = self.store;
        let found: Option<i32> = store.block(
            sqlx::query_scalar("SELECT 1 FROM cold_memories WHERE tenant = $1 AND system_id = $2 AND memory_id = $3")
                .bind(tenant.to_string())
                .bind(system_id.to_string())
                .bind(memory_id.to_string())
                .fetch_optional(&mut *self.tx),
        )?;
        Ok(found.is_some())
    }

    fn insert(&mut self, m: &Memory, op: ChangeOp) -> Result<i64> {
        Ok(self.insert_many(&[m], op)?[0])
    }

    fn insert_many(&mut self, ms: &[&Memory], op: ChangeOp) -> Result<Vec<i64>> {
        let store = self.store;
        let mut rows = Vec::with_capacity(ms.len());
        for chunk in ms.chunks(INSERT_ROWS) {
            let mut q = sqlx::QueryBuilder::<Postgres>::new(format!("INSERT INTO memories ({MEMORY_COLUMNS}) "));
            q.push_values(chunk, |b, m| {
                bind_memory(b, m);
            });
            // Rows come back by id: the order of RETURNING is not promised.
            q.push(" RETURNING id, seq");
            let inserted: Vec<(Uuid, i64)> = store.block(q.build_query_as().fetch_all(&mut *self.tx))?;
            let by_id: std::collections::HashMap<Uuid, i64> = inserted.into_iter().collect();
            for m in chunk {
                rows.push(*by_id.get(&m.id).ok_or_else(|| Error::internal("an inserted memory returned no row"))?);
            }
        }
        let changes = ms.iter().zip(&rows).map(|(m, row)| memory_change(op, Some(*row), m, true)).collect();
        self.append_many(changes)?;
        Ok(rows)
    }

    fn replace(&mut self, row: i64, m: &Memory, superseded_at: i64) -> Result<()> {
        // The version being replaced goes to history (over any row with its number).
        self.execute(
            sqlx::query(
                "DELETE FROM memory_history h USING memories m \
                 WHERE m.seq = $1 AND h.id = m.id AND h.version = m.version",
            )
            .bind(row),
        )?;
        let text = format!(
            "INSERT INTO memory_history ({MEMORY_COLUMNS}, superseded_at) \
             SELECT {MEMORY_COLUMNS}, $2 FROM memories WHERE seq = $1"
        );
        self.execute(sqlx::query(sql(text)).bind(row).bind(superseded_at))?;
        let assignments: Vec<String> =
            MEMORY_COLUMNS.split(", ").enumerate().map(|(i, c)| format!("{c} = ${}", i + 1)).collect();
        let text = format!("UPDATE memories SET {} WHERE seq = $25", assignments.join(", "));
        self.execute(bind_memory(sqlx::query(sql(text)), m).bind(row))?;
        self.log(ChangeOp::Updated, Some(row), m, true)
    }

    fn set_tier(&mut self, row: i64, from: Tier, to: Tier) -> Result<Option<Memory>> {
        let n = self.execute(
            sqlx::query("UPDATE memories SET tier = $3 WHERE seq = $1 AND tier = $2")
                .bind(row)
                .bind(from.as_str())
                .bind(to.as_str()),
        )?;
        if n == 0 {
            return Ok(None);
        }
        let moved = self.find_by_row(row)?.ok_or_else(|| Error::internal("a moved memory vanished"))?;
        self.log(ChangeOp::Moved, Some(row), &moved, true)?;
        Ok(Some(moved))
    }

    fn set_embedding(&mut self, row: i64, m: &Memory) -> Result<bool> {
        let n = self.execute(
            sqlx::query(
                "UPDATE memories SET embedding = $2, embedding_model = $3 WHERE seq = $1 AND content_hash = $4",
            )
            .bind(row)
            .bind(m.embedding.clone())
            .bind(m.embedding_model.clone())
            .bind(m.content_hash.clone()),
        )?;
        if n > 0 {
            self.log(ChangeOp::Embedded, Some(row), m, true)?;
        }
        Ok(n > 0)
    }

    fn remove(&mut self, row: i64, m: &Memory, op: ChangeOp) -> Result<usize> {
        self.execute(sqlx::query("DELETE FROM memories WHERE seq = $1").bind(row))?;
        let history = self.remove_history(&m.id)?;
        if op == ChangeOp::Erased {
            self.forget_key(&m.id)?;
        }
        self.log(op, Some(row), m, false)?;
        Ok(history)
    }

    fn archive(&mut self, row: i64, m: &Memory) -> Result<()> {
        self.execute(sqlx::query("DELETE FROM memories WHERE seq = $1").bind(row))?;
        self.log(ChangeOp::Frozen, Some(row), m, false)
    }

    fn discard_cold(&mut self, m: &Memory, op: ChangeOp) -> Result<usize> {
        let history = self.remove_history(&m.id)?;
        if op == ChangeOp::Erased {
            self.forget_key(&m.id)?;
        }
        self.log(op, None, m, false)?;
        Ok(history)
    }

    fn catalog_file(&mut self, path: &str, memories: &[Memory], bytes: u64) -> Result<()> {
        let Some(first) = memories.first() else { return Ok(()) };
        let min = memories.iter().map(|m| m.created_at).min().unwrap_or(0);
        let max = memories.iter().map(|m| m.created_at).max().unwrap_or(0);
        self.execute(
            sqlx::query(
                r#"INSERT INTO cold_files (path, tenant, system_id, min_created, max_created, "rows", bytes, created_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"#,
            )
            .bind(path.to_string())
            .bind(first.tenant.clone())
            .bind(first.system_id.clone())
            .bind(min)
            .bind(max)
            .bind(memories.len() as i64)
            .bind(bytes as i64)
            .bind(now_micros()),
        )?;
        let ids: Vec<Uuid> = memories.iter().map(|m| m.id).collect();
        let tenants: Vec<String> = memories.iter().map(|m| m.tenant.clone()).collect();
        let systems: Vec<String> = memories.iter().map(|m| m.system_id.clone()).collect();
        let keys: Vec<String> = memories.iter().map(|m| m.memory_id.clone()).collect();
        // A catalog entry replaces any with the same id or key (as the embedded store's INSERT OR REPLACE).
        self.execute(
            sqlx::query(
                "DELETE FROM cold_memories c USING unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS k(id, t, s, m) \
                 WHERE c.id = k.id OR (c.tenant = k.t AND c.system_id = k.s AND c.memory_id = k.m)",
            )
            .bind(ids.clone())
            .bind(tenants.clone())
            .bind(systems.clone())
            .bind(keys.clone()),
        )?;
        self.execute(
            sqlx::query(
                "INSERT INTO cold_memories (id, tenant, system_id, memory_id, kind, user_id, created_at, expires_at, file) \
                 SELECT *, $9 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::bigint[], $8::bigint[])",
            )
            .bind(ids)
            .bind(tenants)
            .bind(systems)
            .bind(keys)
            .bind(memories.iter().map(|m| m.kind.clone()).collect::<Vec<_>>())
            .bind(memories.iter().map(|m| m.user_id.clone()).collect::<Vec<_>>())
            .bind(memories.iter().map(|m| m.created_at).collect::<Vec<_>>())
            .bind(memories.iter().map(|m| m.expires_at).collect::<Vec<_>>())
            .bind(path.to_string()),
        )?;
        Ok(())
    }

    fn uncatalog_file(&mut self, path: &str) -> Result<bool> {
        self.execute(sqlx::query("DELETE FROM cold_memories WHERE file = $1").bind(path.to_string()))?;
        Ok(self.execute(sqlx::query("DELETE FROM cold_files WHERE path = $1").bind(path.to_string()))? == 1)
    }

    fn add_schema(&mut self, schema: &KindSchema) -> Result<()> {
        self.execute(
            sqlx::query(
                "INSERT INTO kind_schemas (kind, version, description, schema, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(schema.kind.clone())
            .bind(schema.version as i32)
            .bind(schema.description.clone())
            .bind(schema.schema.clone())
            .bind(now_micros()),
        )?;
        Ok(())
    }

    fn set_retention(&mut self, tenant: &str, policies: &[RetentionPolicy]) -> Result<()> {
        self.execute(sqlx::query("DELETE FROM retention_policies WHERE tenant = $1").bind(tenant.to_string()))?;
        for p in policies {
            self.execute(
                sqlx::query(
                    "INSERT INTO retention_policies (tenant, kind, system_id, ttl_seconds) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (tenant, kind, system_id) DO UPDATE SET ttl_seconds = excluded.ttl_seconds",
                )
                .bind(tenant.to_string())
                .bind(p.kind.clone())
                .bind(p.system_id.clone().unwrap_or_default())
                .bind(i64::try_from(p.ttl_seconds).unwrap_or(i64::MAX)),
            )?;
        }
        Ok(())
    }

    fn upsert_entity(&mut self, tenant: &str, e: &NewEntity, now: i64) -> Result<Uuid> {
        let store = self.store;
        let id: Uuid = store.block(
            sqlx::query_scalar(
                "INSERT INTO kg_entities (id, tenant, name, entity_type, observations, properties, metadata, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (tenant, name, entity_type) DO UPDATE SET \
                 observations = excluded.observations, properties = excluded.properties, metadata = excluded.metadata, \
                 updated_at = excluded.updated_at RETURNING id",
            )
            .bind(Uuid::now_v7())
            .bind(tenant.to_string())
            .bind(e.name.clone())
            .bind(e.entity_type.clone())
            .bind(serde_json::to_value(&e.observations).unwrap_or_default())
            .bind(Value::Object(e.properties.clone()))
            .bind(Value::Object(e.metadata.clone()))
            .bind(now)
            .fetch_one(&mut *self.tx),
        )?;
        self.graph_change(ChangeOp::EntityUpserted, tenant, id, &e.entity_type)?;
        Ok(id)
    }

    fn upsert_relation(&mut self, tenant: &str, r: &NewRelation, now: i64) -> Result<Uuid> {
        let store = self.store;
        let id: Uuid = store.block(
            sqlx::query_scalar(
                "INSERT INTO kg_relations (id, tenant, from_entity, to_entity, relation_type, properties, metadata, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant, from_entity, to_entity, relation_type) DO UPDATE SET \
                 properties = excluded.properties, metadata = excluded.metadata RETURNING id",
            )
            .bind(Uuid::now_v7())
            .bind(tenant.to_string())
            .bind(r.from_entity.clone())
            .bind(r.to_entity.clone())
            .bind(r.relation_type.clone())
            .bind(Value::Object(r.properties.clone()))
            .bind(Value::Object(r.metadata.clone()))
            .bind(now)
            .fetch_one(&mut *self.tx),
        )?;
        self.graph_change(ChangeOp::RelationUpserted, tenant, id, &r.relation_type)?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn urls_lose_their_password_in_logs() {
        assert_eq!(redact("postgres://memhub:s3cret@db:5432/memhub"), "postgres://memhub@db:5432/memhub");
        assert_eq!(redact("postgres://db/memhub"), "postgres://db/memhub");
    }
}
