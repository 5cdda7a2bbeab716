//! The ledger (`ingest.db` in the data dir, or the shared PostgreSQL database):
//! which uploads were ingested (key + ETag + size), which failed and when to retry,
//! and a hash of every row written, so a re-read upload writes only new or changed
//! rows.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS uploads (
    key TEXT PRIMARY KEY,
    system_id TEXT NOT NULL,
    layout TEXT NOT NULL,
    etag TEXT,
    size INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at INTEGER,
    rows_read INTEGER NOT NULL DEFAULT 0,
    rows_written INTEGER NOT NULL DEFAULT 0,
    rows_refused INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS row_hashes (
    system_id TEXT NOT NULL,
    source TEXT NOT NULL,
    row_id TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (system_id, source, row_id)
);
";

/// What the ledger knows of one upload (`GET /v1/ingest/status`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UploadStatus {
    pub key: String,
    pub system_id: String,
    pub layout: String,
    /// `done` or `failed` (failed ones are retried with backoff).
    pub state: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    pub rows_read: u64,
    pub rows_written: u64,
    /// Rows the engine refused (invalid), counted, not retried.
    pub rows_refused: u64,
    pub updated_at: String,
}

/// An upload's outcome to record.
pub struct Outcome<'a> {
    pub key: &'a str,
    pub system_id: &'a str,
    pub layout: &'a str,
    pub etag: Option<&'a str>,
    pub size: u64,
}

/// A row of `uploads` to write (whole: a record replaces what the ledger had).
#[derive(Debug, Clone, PartialEq)]
pub struct UploadRecord<'a> {
    pub key: &'a str,
    pub system_id: &'a str,
    pub layout: &'a str,
    pub etag: Option<&'a str>,
    pub size: u64,
    /// `done` or `failed`.
    pub state: &'static str,
    pub attempts: u32,
    pub last_error: Option<&'a str>,
    pub next_attempt_at: Option<i64>,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_refused: u64,
    pub updated_at: i64,
}

/// What the ledger has of one upload, for deciding whether it needs work.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadState {
    pub etag: Option<String>,
    pub size: u64,
    pub state: String,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
}

/// Where the ledger is kept: `ingest.db` beside the embedded store, or the
/// database replicas share (so a replica that takes over the pull worker does not
/// ingest again what another one did). Plain reads and writes; the rules live in
/// [`Ledger`].
pub trait LedgerTable: Send + Sync {
    fn upload(&self, key: &str) -> Result<Option<UploadState>, String>;
    fn record(&self, r: &UploadRecord<'_>) -> Result<(), String>;
    /// How many uploads are in state `failed`.
    fn failing(&self) -> Result<usize, String>;
    /// The hashes written for these rows of `(system_id, source)`, by row id.
    fn hashes(&self, system_id: &str, source: &str, ids: &[&str]) -> Result<HashMap<String, String>, String>;
    /// Keep `(row id, hash)` of rows written, in one transaction.
    fn remember(&self, system_id: &str, source: &str, rows: &[(&str, &str)]) -> Result<(), String>;
    /// Every upload, most recently updated first (at most `limit`).
    fn uploads(&self, limit: usize) -> Result<Vec<UploadStatus>, String>;
}

/// The pull worker's ledger over a [`LedgerTable`].
pub struct Ledger {
    table: Box<dyn LedgerTable>,
}

impl Ledger {
    /// The embedded ledger at `path` (created).
    pub fn open(path: &Path) -> Result<Ledger, String> {
        Ok(Self::on(Box::new(SqliteLedger::open(path)?)))
    }

    /// The embedded ledger of a data dir, `ingest.db` (created).
    pub fn in_data_dir(data_dir: &Path) -> Result<Ledger, String> {
        Self::open(&data_dir.join("ingest.db"))
    }

    pub fn on(table: Box<dyn LedgerTable>) -> Ledger {
        Ledger { table }
    }

    /// Whether an upload needs work at `now`: never seen, changed since it was
    /// ingested (another ETag or size), or failed and due for a retry.
    pub fn needs_work(&self, key: &str, etag: Option<&str>, size: u64, now: i64) -> Result<bool, String> {
        Ok(match self.table.upload(key)? {
            None => true,
            Some(u) if u.etag.as_deref() != etag || u.size != size => true,
            Some(u) => u.state == "failed" && u.next_attempt_at.is_none_or(|t| t <= now),
        })
    }

    /// Record a finished upload.
    pub fn done(&self, o: &Outcome<'_>, d: &crate::worker::Ingested, now: i64) -> Result<(), String> {
        self.table.record(&UploadRecord {
            key: o.key,
            system_id: o.system_id,
            layout: o.layout,
            etag: o.etag,
            size: o.size,
            state: "done",
            attempts: 0,
            last_error: d.first_refusal.as_deref(),
            next_attempt_at: None,
            rows_read: d.rows_read,
            rows_written: d.rows_written,
            rows_refused: d.rows_refused,
            updated_at: now,
        })
    }

    /// Record a failed attempt; the next one waits 30 s doubling per attempt, at
    /// most `max_backoff` seconds. Returns the attempts so far.
    pub fn failed(&self, o: &Outcome<'_>, error: &str, now: i64, max_backoff: u64) -> Result<u32, String> {
        let before = self.table.upload(o.key)?.filter(|u| u.state == "failed").map_or(0, |u| u.attempts);
        let attempts = before + 1;
        let wait = (30u64 << attempts.min(16)).min(max_backoff.max(1));
        self.table.record(&UploadRecord {
            key: o.key,
            system_id: o.system_id,
            layout: o.layout,
            etag: o.etag,
            size: o.size,
            state: "failed",
            attempts,
            last_error: Some(error),
            next_attempt_at: Some(now + wait as i64 * 1_000_000),
            rows_read: 0,
            rows_written: 0,
            rows_refused: 0,
            updated_at: now,
        })?;
        Ok(attempts)
    }

    /// How many uploads' last attempt failed (they wait for a retry).
    pub fn failing(&self) -> Result<usize, String> {
        self.table.failing()
    }

    /// The rows among `rows` (id, hash) whose hash is the one already written.
    pub fn unchanged(&self, system_id: &str, source: &str, rows: &[(&str, &str)]) -> Result<HashSet<String>, String> {
        let ids: Vec<&str> = rows.iter().map(|(id, _)| *id).collect();
        let known = self.table.hashes(system_id, source, &ids)?;
        Ok(rows
            .iter()
            .filter(|(id, hash)| known.get(*id).is_some_and(|k| k == hash))
            .map(|(id, _)| id.to_string())
            .collect())
    }

    /// Remember rows as written (after the engine made them durable).
    pub fn remember(&self, system_id: &str, source: &str, rows: &[(&str, &str)]) -> Result<(), String> {
        self.table.remember(system_id, source, rows)
    }

    /// Every upload, most recently updated first (at most `limit`).
    pub fn uploads(&self, limit: usize) -> Result<Vec<UploadStatus>, String> {
        self.table.uploads(limit)
    }
}

/// The embedded ledger, `ingest.db`.
pub struct SqliteLedger {
    conn: Mutex<Connection>,
}

fn err(e: rusqlite::Error) -> String {
    format!("ingest ledger: {e}")
}

impl SqliteLedger {
    pub fn open(path: &Path) -> Result<SqliteLedger, String> {
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(SqliteLedger { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LedgerTable for SqliteLedger {
    fn upload(&self, key: &str) -> Result<Option<UploadState>, String> {
        self.conn()
            .query_row(
                "SELECT etag, size, state, attempts, next_attempt_at FROM uploads WHERE key = ?1",
                params![key],
                |r| {
                    Ok(UploadState {
                        etag: r.get(0)?,
                        size: r.get::<_, i64>(1)? as u64,
                        state: r.get(2)?,
                        attempts: r.get(3)?,
                        next_attempt_at: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(err)
    }

    fn record(&self, r: &UploadRecord<'_>) -> Result<(), String> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO uploads (key, system_id, layout, etag, size, state, attempts, last_error, \
                 next_attempt_at, rows_read, rows_written, rows_refused, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    r.key,
                    r.system_id,
                    r.layout,
                    r.etag,
                    r.size as i64,
                    r.state,
                    r.attempts,
                    r.last_error,
                    r.next_attempt_at,
                    r.rows_read as i64,
                    r.rows_written as i64,
                    r.rows_refused as i64,
                    r.updated_at
                ],
            )
            .map(drop)
            .map_err(err)
    }

    fn failing(&self) -> Result<usize, String> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM uploads WHERE state = 'failed'", [], |r| r.get(0))
            .map_err(err)?;
        Ok(n as usize)
    }

    fn hashes(&self, system_id: &str, source: &str, ids: &[&str]) -> Result<HashMap<String, String>, String> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached("SELECT hash FROM row_hashes WHERE system_id = ?1 AND source = ?2 AND row_id = ?3")
            .map_err(err)?;
        let mut known = HashMap::new();
        for id in ids {
            if let Some(hash) = st.query_row(params![system_id, source, id], |r| r.get(0)).optional().map_err(err)? {
                known.insert(id.to_string(), hash);
            }
        }
        Ok(known)
    }

    fn remember(&self, system_id: &str, source: &str, rows: &[(&str, &str)]) -> Result<(), String> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(err)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO row_hashes (system_id, source, row_id, hash) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(err)?;
            for (id, hash) in rows {
                st.execute(params![system_id, source, id, hash]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    fn uploads(&self, limit: usize) -> Result<Vec<UploadStatus>, String> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT key, system_id, layout, state, attempts, last_error, next_attempt_at, rows_read, rows_written, \
                 rows_refused, updated_at FROM uploads ORDER BY updated_at DESC, key LIMIT ?1",
            )
            .map_err(err)?;
        let time = |t: i64| memhub_types::time::format_micros(t);
        let rows = st
            .query_map(params![limit as i64], |r| {
                Ok(UploadStatus {
                    key: r.get(0)?,
                    system_id: r.get(1)?,
                    layout: r.get(2)?,
                    state: r.get(3)?,
                    attempts: r.get(4)?,
                    last_error: r.get(5)?,
                    next_attempt_at: r.get::<_, Option<i64>>(6)?.map(time),
                    rows_read: r.get::<_, i64>(7)? as u64,
                    rows_written: r.get::<_, i64>(8)? as u64,
                    rows_refused: r.get::<_, i64>(9)? as u64,
                    updated_at: time(r.get(10)?),
                })
            })
            .map_err(err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(err)
    }
}
