//! The store: one SQLite database in WAL mode with `synchronous=FULL`, the single
//! source of truth. A transaction that returns has been fsynced, so an
//! acknowledged write survives a crash or power loss. Every change also appends to
//! `change_log`, whose sequence numbers let derived indexes catch up.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use memhub_types::memory::IngestionMethod;
use memhub_types::{Error, ErrorCode, Memory, Result, Tier};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, Transaction};
use uuid::Uuid;

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
CREATE TABLE IF NOT EXISTS change_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    memory_seq INTEGER NOT NULL,
    op TEXT NOT NULL
);
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
pub(crate) const MEMORY_COLUMNS: &str = "id, tenant, system_id, memory_id, kind, schema_version, content, \
    attributes, metadata, tags, user_id, agent_id, session_id, project, created_at, ingested_at, \
    updated_at, expires_at, embedding, embedding_model, content_hash, version, ingestion_method, tier";

/// Whether to open the store for writing (takes the data dir's lock) or reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    ReadWrite,
    ReadOnly,
}

/// The durable store.
pub struct Store {
    path: PathBuf,
    mode: OpenMode,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Held for the store's lifetime: one writing process per data dir.
    _lock: Option<File>,
}

pub(crate) fn storage(e: rusqlite::Error) -> Error {
    Error::storage(e)
}

fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("JSON values serialize")
}

fn parse_json<T: serde::de::DeserializeOwned>(idx: usize, s: String) -> rusqlite::Result<T> {
    serde_json::from_str(&s)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e)))
}

pub(crate) fn embedding_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn embedding_from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Read a memory from a row selected with [`MEMORY_COLUMNS`] (starting at column `o`).
pub(crate) fn memory_from_row(row: &Row<'_>, o: usize) -> rusqlite::Result<Memory> {
    let id: String = row.get(o)?;
    let method: String = row.get(o + 22)?;
    Ok(Memory {
        id: Uuid::parse_str(&id)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(o, rusqlite::types::Type::Text, Box::new(e)))?,
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

/// Bring a store made by an older memhub up to [`SCHEMA`] (columns added since).
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

impl Store {
    /// Open (creating if needed) the store in `data_dir`. `ReadWrite` takes an
    /// exclusive lock on `data_dir/memhub.lock` so two servers never share a store.
    pub fn open(data_dir: &Path, mode: OpenMode) -> Result<Store> {
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
        Ok(Store { path, mode, writer: Mutex::new(writer), readers: Mutex::new(Vec::new()), _lock: lock })
    }

    fn open_reader(path: &Path) -> Result<Connection> {
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(storage)?;
        configure(&conn).map_err(storage)?;
        Ok(conn)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn mode(&self) -> OpenMode {
        self.mode
    }

    /// Run `f` in one write transaction; it is committed (and fsynced) before this
    /// returns `Ok`. On error nothing of it is written.
    pub fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        if self.mode == OpenMode::ReadOnly {
            return Err(Error::storage("the store is open read-only"));
        }
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(storage)?;
        let out = f(&tx)?;
        tx.commit().map_err(storage)?;
        Ok(out)
    }

    /// Like [`write`](Self::write) but also runs `after` while the writer is still
    /// held, so derived indexes are applied in commit order. `after` gets the last
    /// `change_log` sequence number the transaction left.
    pub fn write_then<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T>,
        after: impl FnOnce(&T, i64),
    ) -> Result<T> {
        if self.mode == OpenMode::ReadOnly {
            return Err(Error::storage("the store is open read-only"));
        }
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(storage)?;
        let out = f(&tx)?;
        let change = last_change(&tx)?;
        tx.commit().map_err(storage)?;
        after(&out, change);
        Ok(out)
    }

    /// Run `f` on a pooled read connection (WAL readers never block the writer).
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => Self::open_reader(&self.path)?,
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 8 {
            pool.push(conn);
        }
        out
    }

    /// Copy the database into a fresh file without free pages (`VACUUM`) and empty
    /// the WAL: nothing deleted before this survives in the store's files.
    pub fn vacuum(&self) -> Result<()> {
        if self.mode == OpenMode::ReadOnly {
            return Ok(());
        }
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute_batch("VACUUM").map_err(storage)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(storage)
    }

    /// Flush the WAL into the main database file (on graceful shutdown).
    pub fn checkpoint(&self) -> Result<()> {
        if self.mode == OpenMode::ReadOnly {
            return Ok(());
        }
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(storage)
    }
}

pub(crate) fn insert_memory(tx: &Transaction<'_>, m: &Memory) -> Result<i64> {
    tx.prepare_cached(
        "INSERT INTO memories (id, tenant, system_id, memory_id, kind, schema_version, content, attributes, \
         metadata, tags, user_id, agent_id, session_id, project, created_at, ingested_at, updated_at, expires_at, \
         embedding, embedding_model, content_hash, version, ingestion_method, tier) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)",
    )
    .and_then(|mut st| {
        st.execute(params![
            m.id.to_string(),
            m.tenant,
            m.system_id,
            m.memory_id,
            m.kind,
            m.schema_version,
            m.content,
            json_text(&m.attributes),
            json_text(&m.metadata),
            json_text(&m.tags),
            m.user_id,
            m.agent_id,
            m.session_id,
            m.project,
            m.created_at,
            m.ingested_at,
            m.updated_at,
            m.expires_at,
            m.embedding.as_deref().map(embedding_to_blob),
            m.embedding_model,
            m.content_hash,
            m.version,
            m.ingestion_method.as_str(),
            m.tier.as_str(),
        ])
    })
    .map_err(storage)?;
    let seq = tx.last_insert_rowid();
    log_change(tx, seq, "upsert")?;
    Ok(seq)
}

/// Move the current row of `seq` into history, then overwrite it with `row`.
pub(crate) fn replace_memory(tx: &Transaction<'_>, seq: i64, m: &Memory, now: i64) -> Result<()> {
    tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO memory_history ({MEMORY_COLUMNS}, superseded_at) \
         SELECT {MEMORY_COLUMNS}, ?2 FROM memories WHERE seq = ?1"
    ))
    .and_then(|mut st| st.execute(params![seq, now]))
    .map_err(storage)?;
    tx.prepare_cached(
        "UPDATE memories SET id = ?2, kind = ?3, schema_version = ?4, content = ?5, attributes = ?6, metadata = ?7, \
         tags = ?8, user_id = ?9, agent_id = ?10, session_id = ?11, project = ?12, created_at = ?13, \
         ingested_at = ?14, updated_at = ?15, expires_at = ?16, embedding = ?17, embedding_model = ?18, \
         content_hash = ?19, version = ?20, ingestion_method = ?21, tier = ?22 WHERE seq = ?1",
    )
    .and_then(|mut st| {
        st.execute(params![
            seq,
            m.id.to_string(),
            m.kind,
            m.schema_version,
            m.content,
            json_text(&m.attributes),
            json_text(&m.metadata),
            json_text(&m.tags),
            m.user_id,
            m.agent_id,
            m.session_id,
            m.project,
            m.created_at,
            m.ingested_at,
            m.updated_at,
            m.expires_at,
            m.embedding.as_deref().map(embedding_to_blob),
            m.embedding_model,
            m.content_hash,
            m.version,
            m.ingestion_method.as_str(),
            m.tier.as_str(),
        ])
    })
    .map_err(storage)?;
    log_change(tx, seq, "upsert")
}

/// Move the memory at `seq` from tier `from` to `to` (not a new version: placement
/// is the server's). Returns whether it was still in `from`.
pub(crate) fn set_tier(tx: &Transaction<'_>, seq: i64, from: Tier, to: Tier) -> Result<bool> {
    let n = tx
        .prepare_cached("UPDATE memories SET tier = ?3 WHERE seq = ?1 AND tier = ?2")
        .and_then(|mut st| st.execute(params![seq, from.as_str(), to.as_str()]))
        .map_err(storage)?;
    if n > 0 {
        log_change(tx, seq, "tier")?;
    }
    Ok(n > 0)
}

/// Set a server-made vector on the current version, if its content is still the one
/// that was embedded. Returns whether the row was updated.
pub(crate) fn set_embedding(tx: &Transaction<'_>, seq: i64, m: &Memory) -> Result<bool> {
    let n = tx
        .prepare_cached("UPDATE memories SET embedding = ?2, embedding_model = ?3 WHERE seq = ?1 AND content_hash = ?4")
        .and_then(|mut st| {
            st.execute(params![seq, m.embedding.as_deref().map(embedding_to_blob), m.embedding_model, m.content_hash])
        })
        .map_err(storage)?;
    if n > 0 {
        log_change(tx, seq, "embed")?;
    }
    Ok(n > 0)
}

/// Remove a memory and its whole history; returns the history rows removed.
pub(crate) fn delete_memory(tx: &Transaction<'_>, seq: i64, id: &Uuid) -> Result<usize> {
    tx.execute("DELETE FROM memories WHERE seq = ?1", params![seq]).map_err(storage)?;
    let history = tx.execute("DELETE FROM memory_history WHERE id = ?1", params![id.to_string()]).map_err(storage)?;
    log_change(tx, seq, "delete")?;
    Ok(history)
}

/// Remove the memory at `seq` from the store but keep its history: it now lives
/// in the cold tier (the caller catalogs it in the same transaction).
pub(crate) fn archive_memory(tx: &Transaction<'_>, seq: i64) -> Result<()> {
    tx.execute("DELETE FROM memories WHERE seq = ?1", params![seq]).map_err(storage)?;
    log_change(tx, seq, "delete")
}

/// Whether a cold memory has this key (the write path must thaw it first).
pub(crate) fn cold_has_key(tx: &Transaction<'_>, tenant: &str, system_id: &str, memory_id: &str) -> Result<bool> {
    tx.prepare_cached("SELECT 1 FROM cold_memories WHERE tenant = ?1 AND system_id = ?2 AND memory_id = ?3")
        .and_then(|mut st| st.exists(params![tenant, system_id, memory_id]))
        .map_err(storage)
}

/// Delete the memory at `seq` and its history, if it is still there and `still`
/// holds for it (checked inside the transaction). Returns the history rows removed.
pub(crate) fn delete_if(tx: &Transaction<'_>, seq: i64, still: impl Fn(&Memory) -> bool) -> Result<Option<usize>> {
    let found = tx
        .prepare_cached(&format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE seq = ?1"))
        .and_then(|mut st| st.query_row(params![seq], |r| memory_from_row(r, 0)).optional())
        .map_err(storage)?;
    match found.filter(|m| still(m)) {
        Some(m) => delete_memory(tx, seq, &m.id).map(Some),
        None => Ok(None),
    }
}

/// The last `change_log` sequence number (0 when none).
pub(crate) fn last_change(conn: &Connection) -> Result<i64> {
    conn.prepare_cached("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'change_log'), 0)")
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .map_err(storage)
}

/// The store's identity: made once, so a derived index can tell it belongs to this
/// store and not to an older one in the same place.
pub(crate) fn store_id(conn: &Connection) -> Option<String> {
    // A store made before store_meta existed has no id until opened read-write.
    conn.query_row("SELECT value FROM store_meta WHERE key = 'store_id'", [], |r| r.get(0)).ok()
}

fn log_change(tx: &Transaction<'_>, seq: i64, op: &str) -> Result<()> {
    tx.prepare_cached("INSERT INTO change_log (memory_seq, op) VALUES (?1, ?2)")
        .and_then(|mut st| st.execute(params![seq, op]))
        .map_err(storage)?;
    Ok(())
}

/// `(seq, memory)` of the memory with this key, if any.
pub(crate) fn find_by_key(
    conn: &Connection,
    tenant: &str,
    system_id: &str,
    memory_id: &str,
) -> Result<Option<(i64, Memory)>> {
    conn.prepare_cached(&format!(
        "SELECT seq, {MEMORY_COLUMNS} FROM memories WHERE tenant = ?1 AND system_id = ?2 AND memory_id = ?3"
    ))
    .and_then(|mut st| {
        st.query_row(params![tenant, system_id, memory_id], |r| Ok((r.get(0)?, memory_from_row(r, 1)?))).optional()
    })
    .map_err(storage)
}

/// `(seq, memory)` by server id within a tenant.
pub(crate) fn find_by_id(conn: &Connection, tenant: &str, id: &Uuid) -> Result<Option<(i64, Memory)>> {
    conn.prepare_cached(&format!("SELECT seq, {MEMORY_COLUMNS} FROM memories WHERE id = ?1 AND tenant = ?2"))
        .and_then(|mut st| {
            st.query_row(params![id.to_string(), tenant], |r| Ok((r.get(0)?, memory_from_row(r, 1)?))).optional()
        })
        .map_err(storage)
}

/// Memories by store sequence number, in the order asked for (missing ones skipped).
pub(crate) fn load_by_seq(conn: &Connection, seqs: &[i64]) -> Result<Vec<(i64, Memory)>> {
    let mut st =
        conn.prepare_cached(&format!("SELECT seq, {MEMORY_COLUMNS} FROM memories WHERE seq = ?1")).map_err(storage)?;
    let mut out = Vec::with_capacity(seqs.len());
    for seq in seqs {
        if let Some(m) = st.query_row(params![seq], |r| memory_from_row(r, 1)).optional().map_err(storage)? {
            out.push((*seq, m));
        }
    }
    Ok(out)
}
