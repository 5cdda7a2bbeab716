//! The embedded store: one SQLite database in WAL mode with `synchronous=FULL`. A
//! transaction that returns has been fsynced, so an acknowledged write survives a
//! crash or power loss. Every change also appends to `changes` (the change log) in
//! the same transaction; its `AUTOINCREMENT` key is the change's sequence number.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use memhub_types::memory::IngestionMethod;
use memhub_types::time::now_micros;
use memhub_types::{
    Change, ChangeOp, Error, ErrorCode, KindSchema, Memory, NewEntity, NewRelation, Result, RetentionPolicy, Tier,
};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, Transaction};
use serde_json::Value;
use uuid::Uuid;

use super::{
    graph_change, memory_change, ChangedRow, ColdEntry, ColdGroup, MemoryStore, MetaRow, OpenMode, RowText, StoreTx,
    TenantTotals,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS memories (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    system_id TEXT NOT NULL,
    memory_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    content TEXT NOT NULL,
    attributes TEXT NOT NULL,
    metadata TEXT NOT NULL,
    tags TEXT NOT NULL,
    user_id TEXT,
    agent_id TEXT,
    session_id TEXT,
    project TEXT,
    created_at INTEGER NOT NULL,
    ingested_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER,
    embedding BLOB,
    embedding_model TEXT,
    content_hash TEXT NOT NULL,
    version INTEGER NOT NULL,
    ingestion_method TEXT NOT NULL,
    tier TEXT NOT NULL DEFAULT 'hot',
    UNIQUE (tenant, system_id, memory_id)
);
CREATE INDEX IF NOT EXISTS memories_tenant_memory_id ON memories (tenant, memory_id);
CREATE TABLE IF NOT EXISTS memory_history (
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    system_id TEXT NOT NULL,
    memory_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    content TEXT NOT NULL,
    attributes TEXT NOT NULL,
    metadata TEXT NOT NULL,
    tags TEXT NOT NULL,
    user_id TEXT,
    agent_id TEXT,
    session_id TEXT,
    project TEXT,
    created_at INTEGER NOT NULL,
    ingested_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER,
    embedding BLOB,
    embedding_model TEXT,
    content_hash TEXT NOT NULL,
    ingestion_method TEXT NOT NULL,
    tier TEXT NOT NULL DEFAULT 'hot',
    superseded_at INTEGER NOT NULL,
    PRIMARY KEY (id, version)
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL,
    row INTEGER,
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    memory_id TEXT,
    system_id TEXT,
    kind TEXT,
    user_id TEXT,
    version INTEGER,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_id ON changes (id);
CREATE TABLE IF NOT EXISTS store_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kind_schemas (
    kind TEXT NOT NULL,
    version INTEGER NOT NULL,
    description TEXT NOT NULL,
    schema TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (kind, version)
);
CREATE TABLE IF NOT EXISTS retention_policies (
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    system_id TEXT NOT NULL DEFAULT '',
    ttl_seconds INTEGER NOT NULL,
    PRIMARY KEY (tenant, kind, system_id)
);
CREATE TABLE IF NOT EXISTS cold_files (
    path TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    system_id TEXT NOT NULL,
    min_created INTEGER NOT NULL,
    max_created INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cold_files_partition ON cold_files (tenant, system_id, min_created);
CREATE TABLE IF NOT EXISTS cold_memories (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    system_id TEXT NOT NULL,
    memory_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    user_id TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    file TEXT NOT NULL,
    UNIQUE (tenant, system_id, memory_id)
);
CREATE INDEX IF NOT EXISTS cold_memories_file ON cold_memories (file);
CREATE TABLE IF NOT EXISTS kg_entities (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    observations TEXT NOT NULL,
    properties TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (tenant, name, entity_type)
);
CREATE TABLE IF NOT EXISTS kg_relations (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    from_entity TEXT NOT NULL,
    to_entity TEXT NOT NULL,
    relation_type TEXT NOT NULL,
    properties TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (tenant, from_entity, to_entity, relation_type)
);
"#;

/// The columns of `memories` (and `memory_history`) in the order [`memory_from_row`] reads.
const MEMORY_COLUMNS: &str = "id, tenant, system_id, memory_id, kind, schema_version, content, \
    attributes, metadata, tags, user_id, agent_id, session_id, project, created_at, ingested_at, \
    updated_at, expires_at, embedding, embedding_model, content_hash, version, ingestion_method, tier";

/// The columns of `changes` in the order [`change_from_row`] reads.
const CHANGE_COLUMNS: &str = "seq, op, row, tenant, id, memory_id, system_id, kind, user_id, version, at";

/// The embedded store.
pub struct SqliteStore {
    path: PathBuf,
    mode: OpenMode,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Held for the store's lifetime: one writing process per data dir.
    _lock: Option<File>,
}

fn storage(e: rusqlite::Error) -> Error {
    Error::storage(e)
}

fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("JSON values serialize")
}

fn conversion(idx: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
}

fn parse_json<T: serde::de::DeserializeOwned>(idx: usize, s: String) -> rusqlite::Result<T> {
    serde_json::from_str(&s).map_err(|e| conversion(idx, e))
}

fn parse_uuid(idx: usize, s: &str) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| conversion(idx, e))
}

fn embedding_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A memory's JSON and blob columns, encoded: `(attributes, metadata, tags, embedding)`.
fn encoded(m: &Memory) -> (String, String, String, Option<Vec<u8>>) {
    (
        json_text(&m.attributes),
        json_text(&m.metadata),
        json_text(&m.tags),
        m.embedding.as_deref().map(embedding_to_blob),
    )
}

fn embedding_from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Read a memory from a row selected with [`MEMORY_COLUMNS`] (starting at column `o`).
fn memory_from_row(row: &Row<'_>, o: usize) -> rusqlite::Result<Memory> {
    let id: String = row.get(o)?;
    let method: String = row.get(o + 22)?;
    Ok(Memory {
        id: parse_uuid(o, &id)?,
        tenant: row.get(o + 1)?,
        system_id: row.get(o + 2)?,
        memory_id: row.get(o + 3)?,
        kind: row.get(o + 4)?,
        schema_version: row.get(o + 5)?,
        content: row.get(o + 6)?,
        attributes: parse_json(o + 7, row.get(o + 7)?)?,
        metadata: parse_json(o + 8, row.get(o + 8)?)?,
        tags: parse_json(o + 9, row.get(o + 9)?)?,
        user_id: row.get(o + 10)?,
        agent_id: row.get(o + 11)?,
        session_id: row.get(o + 12)?,
        project: row.get(o + 13)?,
        created_at: row.get(o + 14)?,
        ingested_at: row.get(o + 15)?,
        updated_at: row.get(o + 16)?,
        expires_at: row.get(o + 17)?,
        embedding: row.get::<_, Option<Vec<u8>>>(o + 18)?.map(|b| embedding_from_blob(&b)),
        embedding_model: row.get(o + 19)?,
        content_hash: row.get(o + 20)?,
        version: row.get(o + 21)?,
        ingestion_method: IngestionMethod::parse(&method).unwrap_or(IngestionMethod::Rest),
        tier: Tier::parse(&row.get::<_, String>(o + 23)?).unwrap_or_default(),
    })
}

/// Read a change from a row selected with [`CHANGE_COLUMNS`]. `None` for an entry
/// of the log an older memhub wrote (`upsert`, `delete`, ...: no tenant, not served).
fn change_from_row(row: &Row<'_>) -> rusqlite::Result<Option<Change>> {
    let Some(op) = ChangeOp::parse(&row.get::<_, String>(1)?) else { return Ok(None) };
    let id: String = row.get(4)?;
    Ok(Some(Change {
        seq: row.get(0)?,
        op,
        row: row.get(2)?,
        tenant: row.get(3)?,
        id: parse_uuid(4, &id)?,
        memory_id: row.get(5)?,
        system_id: row.get(6)?,
        kind: row.get(7)?,
        user_id: row.get(8)?,
        version: row.get(9)?,
        at: row.get(10)?,
        memory: None,
    }))
}

/// Bring a store made by an older memhub up to [`SCHEMA`].
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    const ADDED: [(&str, &str, &str); 3] = [
        ("memories", "tier", "TEXT NOT NULL DEFAULT 'hot'"),
        ("memory_history", "tier", "TEXT NOT NULL DEFAULT 'hot'"),
        ("cold_memories", "expires_at", "INTEGER"),
    ];
    for (table, column, declaration) in ADDED {
        let present: bool = conn.query_row(
            &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = '{column}'"),
            [],
            |r| r.get(0),
        )?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {declaration}"))?;
        }
    }
    // The change log used to be `change_log (seq, memory_seq, op)`. Its entries move
    // into `changes` with their sequence numbers (the indexes' checkpoints name
    // them); they keep only the row, which is all index catch-up reads.
    let old_log: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'change_log'",
        [],
        |r| r.get(0),
    )?;
    if old_log {
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             INSERT INTO changes (seq, op, row, tenant, id, at)
                 SELECT seq, op, memory_seq, '', '', 0 FROM change_log;
             DROP TABLE change_log;
             COMMIT;",
        )?;
    }
    Ok(())
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // FULL: the WAL is fsynced at every commit, so an acknowledged write is on disk.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -64_000)?;
    // Deleted rows are overwritten, not left in free pages: erasure is real.
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(())
}

impl SqliteStore {
    /// Open (creating if needed) the store in `data_dir`. `ReadWrite` takes an
    /// exclusive lock on `data_dir/memhub.lock` so two servers never share a store.
    pub fn open(data_dir: &Path, mode: OpenMode) -> Result<SqliteStore> {
        let path = data_dir.join("memhub.db");
        let lock = match mode {
            OpenMode::ReadWrite => {
                std::fs::create_dir_all(data_dir)
                    .map_err(|e| Error::storage(format!("cannot create data dir {}: {e}", data_dir.display())))?;
                let lock_path = data_dir.join("memhub.lock");
                let file = File::options()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .map_err(|e| Error::storage(format!("cannot open {}: {e}", lock_path.display())))?;
                file.try_lock().map_err(|_| {
                    Error::new(
                        ErrorCode::DataDirLocked,
                        format!(
                            "data dir {} is in use by another memhub process (a running server?); stop it or talk to it over HTTP",
                            data_dir.display()
                        ),
                    )
                })?;
                Some(file)
            }
            OpenMode::ReadOnly => {
                if !path.exists() {
                    return Err(Error::storage(format!("no memhub store at {}", path.display())));
                }
                None
            }
        };
        let writer = match mode {
            OpenMode::ReadWrite => {
                let conn = Connection::open(&path).map_err(storage)?;
                conn.pragma_update(None, "journal_mode", "WAL").map_err(storage)?;
                configure(&conn).map_err(storage)?;
                conn.execute_batch(SCHEMA).map_err(storage)?;
                migrate(&conn).map_err(storage)?;
                conn.execute(
                    "INSERT OR IGNORE INTO store_meta (key, value) VALUES ('store_id', ?1)",
                    params![Uuid::now_v7().to_string()],
                )
                .map_err(storage)?;
                conn
            }
            OpenMode::ReadOnly => Self::open_reader(&path)?,
        };
        Ok(SqliteStore { path, mode, writer: Mutex::new(writer), readers: Mutex::new(Vec::new()), _lock: lock })
    }

    fn open_reader(path: &Path) -> Result<Connection> {
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(storage)?;
        configure(&conn).map_err(storage)?;
        Ok(conn)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn writable(&self) -> Result<()> {
        match self.mode {
            OpenMode::ReadWrite => Ok(()),
            OpenMode::ReadOnly => Err(Error::storage("the store is open read-only")),
        }
    }

    /// Run `f` on a pooled read connection (WAL readers never block the writer).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => Self::open_reader(&self.path)?,
        };
        let out = f(&conn).map_err(storage);
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 8 {
            pool.push(conn);
        }
        out
    }

    /// Rows of `sql` with `params`, each read by `f`.
    fn rows<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        self.read(|c| c.prepare_cached(sql)?.query_map(params, f)?.collect())
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        self.read(|c| c.query_row("SELECT value FROM store_meta WHERE key = ?1", [key], |r| r.get(0)).optional())
    }
}

fn find_by_key(
    conn: &Connection,
    tenant: &str,
    system_id: &str,
    memory_id: &str,
) -> rusqlite::Result<Option<(i64, Memory)>> {
    conn.prepare_cached(&format!(
        "SELECT seq, {MEMORY_COLUMNS} FROM memories WHERE tenant = ?1 AND system_id = ?2 AND memory_id = ?3"
    ))?
    .query_row(params![tenant, system_id, memory_id], |r| Ok((r.get(0)?, memory_from_row(r, 1)?)))
    .optional()
}

fn find_by_id(conn: &Connection, tenant: &str, id: &Uuid) -> rusqlite::Result<Option<(i64, Memory)>> {
    conn.prepare_cached(&format!("SELECT seq, {MEMORY_COLUMNS} FROM memories WHERE id = ?1 AND tenant = ?2"))?
        .query_row(params![id.to_string(), tenant], |r| Ok((r.get(0)?, memory_from_row(r, 1)?)))
        .optional()
}

fn load_by_row(conn: &Connection, rows: &[i64]) -> rusqlite::Result<Vec<(i64, Memory)>> {
    let mut st = conn.prepare_cached(&format!("SELECT seq, {MEMORY_COLUMNS} FROM memories WHERE seq = ?1"))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(m) = st.query_row(params![row], |r| memory_from_row(r, 1)).optional()? {
            out.push((*row, m));
        }
    }
    Ok(out)
}

impl MemoryStore for SqliteStore {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn read_only(&self) -> bool {
        self.mode == OpenMode::ReadOnly
    }

    fn store_id(&self) -> Result<String> {
        // A store made before store_meta existed has no id until opened read-write.
        Ok(self.meta("store_id")?.unwrap_or_default())
    }

    fn disk_bytes(&self) -> u64 {
        [self.path.to_path_buf(), self.path.with_extension("db-wal")]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    fn write(&self, work: &mut dyn FnMut(&mut dyn StoreTx) -> Result<()>) -> Result<Vec<Change>> {
        self.writable()?;
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(storage)?;
        let mut open = SqliteTx { tx: &tx, changes: Vec::new() };
        work(&mut open)?;
        let changes = open.changes;
        tx.commit().map_err(storage)?;
        Ok(changes)
    }

    fn compact(&self) -> Result<()> {
        if self.read_only() {
            return Ok(());
        }
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute_batch("VACUUM").map_err(storage)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(storage)
    }

    fn checkpoint(&self) -> Result<()> {
        if self.read_only() {
            return Ok(());
        }
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(storage)
    }

    fn memory_by_id(&self, tenant: &str, id: &Uuid) -> Result<Option<(i64, Memory)>> {
        self.read(|c| find_by_id(c, tenant, id))
    }

    fn memories_by_memory_id(
        &self,
        tenant: &str,
        system_id: Option<&str>,
        memory_id: &str,
        limit: usize,
    ) -> Result<Vec<Memory>> {
        self.rows(
            &format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE tenant = ?1 AND memory_id = ?2 AND (?3 IS NULL OR system_id = ?3) LIMIT ?4"),
            params![tenant, memory_id, system_id, limit as i64],
            |r| memory_from_row(r, 0),
        )
    }

    fn memories_by_row(&self, rows: &[i64]) -> Result<Vec<(i64, Memory)>> {
        self.read(|c| load_by_row(c, rows))
    }

    fn history(&self, tenant: &str, id: &Uuid) -> Result<Vec<Memory>> {
        self.rows(
            &format!("SELECT {MEMORY_COLUMNS} FROM memory_history WHERE id = ?1 AND tenant = ?2 ORDER BY version DESC"),
            params![id.to_string(), tenant],
            |r| memory_from_row(r, 0),
        )
    }

    fn each_memory(&self, tenant: Option<&str>, f: &mut dyn FnMut(Memory) -> Result<()>) -> Result<usize> {
        let conn = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => Self::open_reader(&self.path)?,
        };
        let mut st = conn
            .prepare(&format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE (?1 IS NULL OR tenant = ?1) ORDER BY seq"))
            .map_err(storage)?;
        let mut rows = st.query(params![tenant]).map_err(storage)?;
        let mut n = 0;
        while let Some(row) = rows.next().map_err(storage)? {
            f(memory_from_row(row, 0).map_err(storage)?)?;
            n += 1;
        }
        Ok(n)
    }

    fn tenant_totals(&self, tenant: &str) -> Result<TenantTotals> {
        self.read(|c| {
            let count = |sql: &str| c.query_row(sql, params![tenant], |r| r.get::<_, i64>(0));
            Ok(TenantTotals {
                history_versions: count("SELECT COUNT(*) FROM memory_history WHERE tenant = ?1")?,
                entities: count("SELECT COUNT(*) FROM kg_entities WHERE tenant = ?1")?,
                relations: count("SELECT COUNT(*) FROM kg_relations WHERE tenant = ?1")?,
            })
        })
    }

    fn each_meta(&self, model: &str, f: &mut dyn FnMut(MetaRow) -> Result<()>) -> Result<()> {
        let conn = Self::open_reader(&self.path)?;
        let mut st = conn
            .prepare(
                "SELECT seq, tenant, system_id, kind, user_id, agent_id, session_id, project, tags, created_at, \
                 expires_at, metadata, content_hash, (embedding IS NOT NULL AND embedding_model = ?1), tier FROM memories",
            )
            .map_err(storage)?;
        let mut rows = st.query(params![model]).map_err(storage)?;
        while let Some(r) = rows.next().map_err(storage)? {
            let meta = (|| {
                Ok::<_, rusqlite::Error>(MetaRow {
                    row: r.get(0)?,
                    tenant: r.get(1)?,
                    system_id: r.get(2)?,
                    kind: r.get(3)?,
                    user_id: r.get(4)?,
                    agent_id: r.get(5)?,
                    session_id: r.get(6)?,
                    project: r.get(7)?,
                    tags: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or_default(),
                    created_at: r.get(9)?,
                    expires_at: r.get(10)?,
                    metadata: serde_json::from_str(&r.get::<_, String>(11)?).unwrap_or_default(),
                    content_hash: r.get(12)?,
                    has_vector: r.get(13)?,
                    tier: Tier::parse(&r.get::<_, String>(14)?).unwrap_or_default(),
                })
            })()
            .map_err(storage)?;
            f(meta)?;
        }
        Ok(())
    }

    fn changed_since(&self, since: Option<i64>, f: &mut dyn FnMut(ChangedRow) -> Result<()>) -> Result<()> {
        let sql = match since {
            None => "SELECT seq, content, embedding, embedding_model FROM memories",
            Some(_) => {
                "SELECT c.row, m.content, m.embedding, m.embedding_model \
                 FROM (SELECT DISTINCT row FROM changes WHERE seq > ?1 AND row IS NOT NULL) c \
                 LEFT JOIN memories m ON m.seq = c.row"
            }
        };
        let conn = Self::open_reader(&self.path)?;
        let mut st = conn.prepare(sql).map_err(storage)?;
        let mut rows = match since {
            None => st.query([]),
            Some(s) => st.query(params![s]),
        }
        .map_err(storage)?;
        while let Some(r) = rows.next().map_err(storage)? {
            let row: i64 = r.get(0).map_err(storage)?;
            let content: Option<String> = r.get(1).map_err(storage)?;
            let blob: Option<Vec<u8>> = r.get(2).map_err(storage)?;
            let model: Option<String> = r.get(3).map_err(storage)?;
            let embedding = blob.zip(model).map(|(b, m)| (embedding_from_blob(&b), m));
            f(ChangedRow { row, now: content.map(|content| RowText { content, embedding }) })?;
        }
        Ok(())
    }

    fn last_change(&self) -> Result<i64> {
        self.read(|c| {
            c.prepare_cached("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)")?
                .query_row([], |r| r.get(0))
        })
    }

    fn changes_after(&self, after: i64, limit: usize) -> Result<Vec<Change>> {
        let found = self.rows(
            &format!("SELECT {CHANGE_COLUMNS} FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2"),
            params![after, limit as i64],
            change_from_row,
        )?;
        Ok(found.into_iter().flatten().collect())
    }

    fn pruned_through(&self) -> Result<i64> {
        Ok(self.meta("pruned_through")?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    fn prune_changes(&self, before: i64) -> Result<usize> {
        self.writable()?;
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.unchecked_transaction().map_err(storage)?;
        // Entries an older memhub wrote have no time (0): they go with the first prune.
        let last: Option<i64> = tx
            .query_row("SELECT MAX(seq) FROM changes WHERE at < ?1", params![before], |r| r.get(0))
            .map_err(storage)?;
        let Some(last) = last else { return Ok(0) };
        // The store's last change number survives in sqlite_sequence.
        let n = tx.execute("DELETE FROM changes WHERE seq <= ?1", params![last]).map_err(storage)?;
        tx.execute(
            "INSERT INTO store_meta (key, value) VALUES ('pruned_through', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![last.to_string()],
        )
        .map_err(storage)?;
        tx.commit().map_err(storage)?;
        Ok(n)
    }

    fn schemas(&self) -> Result<Vec<KindSchema>> {
        let rows =
            self.rows("SELECT kind, version, description, schema FROM kind_schemas ORDER BY kind, version", [], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
            })?;
        rows.into_iter()
            .map(|(kind, version, description, schema)| {
                let schema: Value = serde_json::from_str(&schema).map_err(Error::internal)?;
                Ok(KindSchema { kind, version, description, schema, builtin: false })
            })
            .collect()
    }

    fn retention_policies(&self) -> Result<Vec<RetentionPolicy>> {
        self.rows(
            "SELECT tenant, kind, system_id, ttl_seconds FROM retention_policies ORDER BY tenant, kind, system_id",
            [],
            |r| {
                let system: String = r.get(2)?;
                Ok(RetentionPolicy {
                    tenant: Some(r.get(0)?),
                    kind: r.get(1)?,
                    system_id: (!system.is_empty()).then_some(system),
                    ttl_seconds: r.get::<_, i64>(3)?.max(1) as u64,
                })
            },
        )
    }

    fn each_entity(&self, f: &mut dyn FnMut(&str, NewEntity) -> Result<()>) -> Result<()> {
        let rows = self.rows(
            "SELECT tenant, name, entity_type, observations, properties, metadata FROM kg_entities ORDER BY created_at, id",
            [],
            |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?, r.get::<_, String>(5)?)),
        )?;
        for (tenant, name, entity_type, observations, properties, metadata) in rows {
            let e = NewEntity {
                name,
                entity_type,
                observations: serde_json::from_str(&observations).unwrap_or_default(),
                properties: serde_json::from_str(&properties).unwrap_or_default(),
                metadata: serde_json::from_str(&metadata).unwrap_or_default(),
            };
            f(&tenant, e)?;
        }
        Ok(())
    }

    fn each_relation(&self, f: &mut dyn FnMut(&str, NewRelation) -> Result<()>) -> Result<()> {
        let rows = self.rows(
            "SELECT tenant, from_entity, to_entity, relation_type, properties, metadata FROM kg_relations ORDER BY created_at, id",
            [],
            |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get::<_, String>(4)?, r.get::<_, String>(5)?)),
        )?;
        for (tenant, from_entity, to_entity, relation_type, properties, metadata) in rows {
            let r = NewRelation {
                from_entity,
                to_entity,
                relation_type,
                properties: serde_json::from_str(&properties).unwrap_or_default(),
                metadata: serde_json::from_str(&metadata).unwrap_or_default(),
            };
            f(&tenant, r)?;
        }
        Ok(())
    }

    fn cold_ids_by_key(&self, keys: &[(&str, &str, &str)]) -> Result<Vec<Uuid>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT id FROM cold_memories WHERE tenant = ?1 AND system_id = ?2 AND memory_id = ?3",
            )?;
            let mut ids = Vec::new();
            for (t, s, m) in keys {
                if let Some(id) = st.query_row(params![t, s, m], |r| r.get::<_, String>(0)).optional()? {
                    ids.push(parse_uuid(0, &id)?);
                }
            }
            Ok(ids)
        })
    }

    fn cold_ids_by_memory_id(
        &self,
        tenant: &str,
        system_id: Option<&str>,
        memory_id: &str,
        limit: usize,
    ) -> Result<Vec<Uuid>> {
        self.rows(
            "SELECT id FROM cold_memories WHERE tenant = ?1 AND memory_id = ?2 AND (?3 IS NULL OR system_id = ?3) LIMIT ?4",
            params![tenant, memory_id, system_id, limit as i64],
            |r| parse_uuid(0, &r.get::<_, String>(0)?),
        )
    }

    fn cold_file_of(&self, tenant: &str, id: &Uuid) -> Result<Option<String>> {
        self.read(|c| {
            c.prepare_cached("SELECT file FROM cold_memories WHERE id = ?1 AND tenant = ?2")?
                .query_row(params![id.to_string(), tenant], |r| r.get(0))
                .optional()
        })
    }

    fn cold_files_of(&self, ids: &[Uuid]) -> Result<BTreeMap<String, HashSet<Uuid>>> {
        self.read(|c| {
            let mut st = c.prepare_cached("SELECT file FROM cold_memories WHERE id = ?1")?;
            let mut out: BTreeMap<String, HashSet<Uuid>> = BTreeMap::new();
            for id in ids {
                if let Some(file) = st.query_row(params![id.to_string()], |r| r.get::<_, String>(0)).optional()? {
                    out.entry(file).or_default().insert(*id);
                }
            }
            Ok(out)
        })
    }

    fn cold_entries(&self) -> Result<Vec<ColdEntry>> {
        self.rows("SELECT id, tenant, system_id, kind, created_at, expires_at FROM cold_memories", [], |r| {
            Ok(ColdEntry {
                id: parse_uuid(0, &r.get::<_, String>(0)?)?,
                tenant: r.get(1)?,
                system_id: r.get(2)?,
                kind: r.get(3)?,
                created_at: r.get(4)?,
                expires_at: r.get(5)?,
            })
        })
    }

    fn cold_files(
        &self,
        tenant: Option<&str>,
        system_id: Option<&str>,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<Vec<(String, String)>> {
        self.rows(
            "SELECT path, system_id FROM cold_files WHERE (?1 IS NULL OR tenant = ?1) \
             AND (?2 IS NULL OR system_id = ?2) AND (?3 IS NULL OR max_created >= ?3) \
             AND (?4 IS NULL OR min_created < ?4) ORDER BY min_created",
            params![tenant, system_id, since, until],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn cold_small_files(&self, rows: usize) -> Result<Vec<(String, usize)>> {
        self.rows("SELECT path, rows FROM cold_files WHERE rows < ?1 ORDER BY path", params![rows as i64], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? as usize))
        })
    }

    fn cold_paths(&self) -> Result<HashSet<String>> {
        Ok(self.rows("SELECT path FROM cold_files", [], |r| r.get(0))?.into_iter().collect())
    }

    fn cold_totals(&self) -> Result<(u64, u64)> {
        self.read(|c| {
            c.query_row("SELECT COALESCE(SUM(rows), 0), COALESCE(SUM(bytes), 0) FROM cold_files", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
        })
    }

    fn cold_groups(&self, tenant: &str) -> Result<(Vec<ColdGroup>, u64)> {
        let groups = self.rows(
            "SELECT system_id, kind, user_id, COUNT(*) FROM cold_memories WHERE tenant = ?1 GROUP BY 1, 2, 3",
            params![tenant],
            |r| {
                Ok(ColdGroup {
                    system_id: r.get(0)?,
                    kind: r.get(1)?,
                    user_id: r.get(2)?,
                    memories: r.get::<_, i64>(3)? as usize,
                })
            },
        )?;
        let bytes: i64 = self.read(|c| {
            c.query_row("SELECT COALESCE(SUM(bytes), 0) FROM cold_files WHERE tenant = ?1", params![tenant], |r| {
                r.get(0)
            })
        })?;
        Ok((groups, bytes as u64))
    }
}

/// A write transaction of the embedded store and the changes it has logged.
struct SqliteTx<'a> {
    tx: &'a Transaction<'a>,
    changes: Vec<Change>,
}

impl SqliteTx<'_> {
    /// Append a change about memory `m` (at `row`, if it has one) to the log.
    fn log(&mut self, op: ChangeOp, row: Option<i64>, m: &Memory, keep: bool) -> Result<()> {
        self.append(memory_change(op, row, m, keep))
    }

    fn append(&mut self, mut change: Change) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO changes (op, row, tenant, id, memory_id, system_id, kind, user_id, version, at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    change.op.as_str(),
                    change.row,
                    change.tenant,
                    change.id.to_string(),
                    change.memory_id,
                    change.system_id,
                    change.kind,
                    change.user_id,
                    change.version,
                    change.at
                ])
            })
            .map_err(storage)?;
        change.seq = self.tx.last_insert_rowid();
        self.changes.push(change);
        Ok(())
    }

    fn graph_change(&mut self, op: ChangeOp, tenant: &str, id: Uuid, kind: &str) -> Result<()> {
        self.append(graph_change(op, tenant, id, kind))
    }

    /// Write `m` as a new row (`None`: the store numbers it) or over row `row`
    /// (same key, same number); returns the row.
    fn write_row(&mut self, row: Option<i64>, m: &Memory) -> Result<i64> {
        // Plain INSERT for a new memory: a key that exists already is an error, never
        // a silent overwrite of another row.
        let verb = if row.is_some() { "INSERT OR REPLACE" } else { "INSERT" };
        let (attributes, metadata, tags, embedding) = encoded(m);
        self.tx
            .prepare_cached(&format!(
                "{verb} INTO memories (seq, {MEMORY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
                 ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)"
            ))
            .and_then(|mut st| {
                st.execute(params![
                    row,
                    m.id.to_string(),
                    m.tenant,
                    m.system_id,
                    m.memory_id,
                    m.kind,
                    m.schema_version,
                    m.content,
                    attributes,
                    metadata,
                    tags,
                    m.user_id,
                    m.agent_id,
                    m.session_id,
                    m.project,
                    m.created_at,
                    m.ingested_at,
                    m.updated_at,
                    m.expires_at,
                    embedding,
                    m.embedding_model,
                    m.content_hash,
                    m.version,
                    m.ingestion_method.as_str(),
                    m.tier.as_str(),
                ])
            })
            .map_err(storage)?;
        Ok(row.unwrap_or_else(|| self.tx.last_insert_rowid()))
    }

    fn remove_history(&mut self, id: &Uuid) -> Result<usize> {
        self.tx.execute("DELETE FROM memory_history WHERE id = ?1", params![id.to_string()]).map_err(storage)
    }

    /// An erased memory's earlier events lose its client key too.
    fn forget_key(&mut self, id: &Uuid) -> Result<()> {
        self.tx
            .execute("UPDATE changes SET memory_id = NULL WHERE id = ?1", params![id.to_string()])
            .map_err(storage)?;
        Ok(())
    }
}

impl StoreTx for SqliteTx<'_> {
    fn find_by_key(&mut self, tenant: &str, system_id: &str, memory_id: &str) -> Result<Option<(i64, Memory)>> {
        find_by_key(self.tx, tenant, system_id, memory_id).map_err(storage)
    }

    fn find_by_id(&mut self, tenant: &str, id: &Uuid) -> Result<Option<(i64, Memory)>> {
        find_by_id(self.tx, tenant, id).map_err(storage)
    }

    fn find_by_row(&mut self, row: i64) -> Result<Option<Memory>> {
        Ok(load_by_row(self.tx, &[row]).map_err(storage)?.pop().map(|(_, m)| m))
    }

    fn cold_has_key(&mut self, tenant: &str, system_id: &str, memory_id: &str) -> Result<bool> {
        self.tx
            .prepare_cached("SELECT 1 FROM cold_memories WHERE tenant = ?1 AND system_id = ?2 AND memory_id = ?3")
            .and_then(|mut st| st.exists(params![tenant, system_id, memory_id]))
            .map_err(storage)
    }

    fn insert(&mut self, m: &Memory, op: ChangeOp) -> Result<i64> {
        let row = self.write_row(None, m)?;
        self.log(op, Some(row), m, true)?;
        Ok(row)
    }

    fn replace(&mut self, row: i64, m: &Memory, superseded_at: i64) -> Result<()> {
        self.tx
            .prepare_cached(&format!(
                "INSERT OR REPLACE INTO memory_history ({MEMORY_COLUMNS}, superseded_at) \
                 SELECT {MEMORY_COLUMNS}, ?2 FROM memories WHERE seq = ?1"
            ))
            .and_then(|mut st| st.execute(params![row, superseded_at]))
            .map_err(storage)?;
        self.write_row(Some(row), m)?;
        self.log(ChangeOp::Updated, Some(row), m, true)
    }

    fn set_tier(&mut self, row: i64, from: Tier, to: Tier) -> Result<Option<Memory>> {
        let n = self
            .tx
            .prepare_cached("UPDATE memories SET tier = ?3 WHERE seq = ?1 AND tier = ?2")
            .and_then(|mut st| st.execute(params![row, from.as_str(), to.as_str()]))
            .map_err(storage)?;
        if n == 0 {
            return Ok(None);
        }
        let moved = self.find_by_row(row)?.ok_or_else(|| Error::internal("a moved memory vanished"))?;
        self.log(ChangeOp::Moved, Some(row), &moved, true)?;
        Ok(Some(moved))
    }

    fn set_embedding(&mut self, row: i64, m: &Memory) -> Result<bool> {
        let n = self
            .tx
            .prepare_cached(
                "UPDATE memories SET embedding = ?2, embedding_model = ?3 WHERE seq = ?1 AND content_hash = ?4",
            )
            .and_then(|mut st| {
                st.execute(params![
                    row,
                    m.embedding.as_deref().map(embedding_to_blob),
                    m.embedding_model,
                    m.content_hash
                ])
            })
            .map_err(storage)?;
        if n > 0 {
            self.log(ChangeOp::Embedded, Some(row), m, true)?;
        }
        Ok(n > 0)
    }

    fn remove(&mut self, row: i64, m: &Memory, op: ChangeOp) -> Result<usize> {
        self.tx.execute("DELETE FROM memories WHERE seq = ?1", params![row]).map_err(storage)?;
        let history = self.remove_history(&m.id)?;
        if op == ChangeOp::Erased {
            self.forget_key(&m.id)?;
        }
        self.log(op, Some(row), m, false)?;
        Ok(history)
    }

    fn archive(&mut self, row: i64, m: &Memory) -> Result<()> {
        self.tx.execute("DELETE FROM memories WHERE seq = ?1", params![row]).map_err(storage)?;
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
        self.tx
            .execute(
                "INSERT INTO cold_files (path, tenant, system_id, min_created, max_created, rows, bytes, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    path,
                    first.tenant,
                    first.system_id,
                    min,
                    max,
                    memories.len() as i64,
                    bytes as i64,
                    now_micros()
                ],
            )
            .map_err(storage)?;
        let mut st = self
            .tx
            .prepare_cached(
                "INSERT OR REPLACE INTO cold_memories (id, tenant, system_id, memory_id, kind, user_id, created_at, \
                 expires_at, file) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(storage)?;
        for m in memories {
            st.execute(params![
                m.id.to_string(),
                m.tenant,
                m.system_id,
                m.memory_id,
                m.kind,
                m.user_id,
                m.created_at,
                m.expires_at,
                path
            ])
            .map_err(storage)?;
        }
        Ok(())
    }

    fn uncatalog_file(&mut self, path: &str) -> Result<bool> {
        self.tx.execute("DELETE FROM cold_memories WHERE file = ?1", params![path]).map_err(storage)?;
        Ok(self.tx.execute("DELETE FROM cold_files WHERE path = ?1", params![path]).map_err(storage)? == 1)
    }

    fn add_schema(&mut self, schema: &KindSchema) -> Result<()> {
        self.tx
            .execute(
                "INSERT INTO kind_schemas (kind, version, description, schema, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![schema.kind, schema.version, schema.description, schema.schema.to_string(), now_micros()],
            )
            .map_err(storage)?;
        Ok(())
    }

    fn set_retention(&mut self, tenant: &str, policies: &[RetentionPolicy]) -> Result<()> {
        self.tx.execute("DELETE FROM retention_policies WHERE tenant = ?1", params![tenant]).map_err(storage)?;
        for p in policies {
            self.tx
                .execute(
                    "INSERT OR REPLACE INTO retention_policies (tenant, kind, system_id, ttl_seconds) VALUES (?1, ?2, ?3, ?4)",
                    params![
                        tenant,
                        p.kind,
                        p.system_id.as_deref().unwrap_or(""),
                        i64::try_from(p.ttl_seconds).unwrap_or(i64::MAX)
                    ],
                )
                .map_err(storage)?;
        }
        Ok(())
    }

    fn upsert_entity(&mut self, tenant: &str, e: &NewEntity, now: i64) -> Result<Uuid> {
        let existing: Option<String> = self
            .tx
            .query_row(
                "SELECT id FROM kg_entities WHERE tenant = ?1 AND name = ?2 AND entity_type = ?3",
                params![tenant, e.name, e.entity_type],
                |r| r.get(0),
            )
            .optional()
            .map_err(storage)?;
        let id = match existing {
            Some(id) => Uuid::parse_str(&id).map_err(Error::internal)?,
            None => Uuid::now_v7(),
        };
        self.tx
            .execute(
                "INSERT INTO kg_entities (id, tenant, name, entity_type, observations, properties, metadata, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) ON CONFLICT (tenant, name, entity_type) DO UPDATE SET \
                 observations = excluded.observations, properties = excluded.properties, metadata = excluded.metadata, \
                 updated_at = excluded.updated_at",
                params![
                    id.to_string(),
                    tenant,
                    e.name,
                    e.entity_type,
                    json_text(&e.observations),
                    Value::Object(e.properties.clone()).to_string(),
                    Value::Object(e.metadata.clone()).to_string(),
                    now
                ],
            )
            .map_err(storage)?;
        self.graph_change(ChangeOp::EntityUpserted, tenant, id, &e.entity_type)?;
        Ok(id)
    }

    fn upsert_relation(&mut self, tenant: &str, r: &NewRelation, now: i64) -> Result<Uuid> {
        let existing: Option<String> = self
            .tx
            .query_row(
                "SELECT id FROM kg_relations WHERE tenant = ?1 AND from_entity = ?2 AND to_entity = ?3 AND relation_type = ?4",
                params![tenant, r.from_entity, r.to_entity, r.relation_type],
                |row| row.get(0),
            )
            .optional()
            .map_err(storage)?;
        let id = match existing {
            Some(id) => Uuid::parse_str(&id).map_err(Error::internal)?,
            None => Uuid::now_v7(),
        };
        self.tx
            .execute(
                "INSERT INTO kg_relations (id, tenant, from_entity, to_entity, relation_type, properties, metadata, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (tenant, from_entity, to_entity, relation_type) DO UPDATE SET \
                 properties = excluded.properties, metadata = excluded.metadata",
                params![
                    id.to_string(),
                    tenant,
                    r.from_entity,
                    r.to_entity,
                    r.relation_type,
                    Value::Object(r.properties.clone()).to_string(),
                    Value::Object(r.metadata.clone()).to_string(),
                    now
                ],
            )
            .map_err(storage)?;
        self.graph_change(ChangeOp::RelationUpserted, tenant, id, &r.relation_type)?;
        Ok(id)
    }
}
