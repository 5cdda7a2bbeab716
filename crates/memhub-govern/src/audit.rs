//! The audit log: one record per access, appended by a background writer that
//! commits whatever has queued up in one transaction (so a busy server pays one
//! commit per batch, not per request). Each record carries the SHA-256 of the one
//! before it; [`verify`] recomputes the chain and names the first broken link.
//! Records hold who, what, which ids or filters, and the result: never memory content.
//!
//! The chain is kept by an [`AuditTable`]: `audit.db` in the data dir
//! ([`SqliteAudit`]), or the database that replicas share, where every replica
//! appends to the one chain.
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use memhub_types::time::serde_micros;
use memhub_types::{Error, Result};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    tenant TEXT NOT NULL,
    action TEXT NOT NULL,
    targets TEXT NOT NULL,
    filters TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER NOT NULL,
    client TEXT NOT NULL,
    request_id TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at);";

/// The hash before the first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How long the writer gathers records before a commit.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

/// Most records one writer transaction takes.
const BATCH_MAX: usize = 4096;

/// How an access ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// Refused: authentication, authorization or rate limit.
    Denied,
    /// Failed: invalid input, not found, or a server error.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }

    /// The outcome an HTTP status stands for.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            200..=399 => Outcome::Ok,
            401 | 403 | 429 => Outcome::Denied,
            _ => Outcome::Error,
        }
    }
}

/// One access.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    #[serde(with = "serde_micros")]
    pub at: i64,
    /// `key:mh_...`, `jwt:<sub>`, `open`, `local`, or `anonymous` for failed logins.
    pub actor: String,
    pub role: String,
    pub tenant: String,
    /// e.g. `memory.store`, `memory.search`, `key.create`, `auth.failed`.
    pub action: String,
    /// Memory ids (or key ids) the access touched.
    pub targets: Vec<String>,
    /// The query's filters, for searches and listings (never the query text).
    pub filters: Value,
    pub outcome: Outcome,
    /// HTTP status (MCP calls: the status the same REST call would have).
    pub status: u16,
    pub client: String,
    pub request_id: String,
}

/// A stored record: the event, its place in the chain and its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub event: AuditEvent,
    pub prev_hash: String,
    pub hash: String,
}

/// What to read back.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct AuditQuery {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub tenant: Option<String>,
    /// Newest records first, at most this many (default 100, at most 10 000).
    pub limit: Option<usize>,
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    pub records: u64,
    /// The last record's hash: write it down elsewhere to detect a rewritten tail.
    pub head: String,
    /// `(seq, what is wrong)` of the first broken link.
    pub first_broken: Option<(i64, String)>,
}

/// A record as stored: the text its hash covers (`targets` and `filters` as the
/// JSON text written, so a re-encoding can never change a hash), its place in the
/// chain and its hash. What an [`AuditTable`] writes and reads back.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub role: String,
    pub tenant: String,
    pub action: String,
    pub targets: String,
    pub filters: String,
    pub outcome: String,
    pub status: i64,
    pub client: String,
    pub request_id: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRow {
    /// The row of `e` at `seq`, after the record whose hash is `prev`.
    fn of(seq: i64, e: &AuditEvent, prev: &str) -> AuditRow {
        let mut row = AuditRow {
            seq,
            at: e.at,
            actor: e.actor.clone(),
            role: e.role.clone(),
            tenant: e.tenant.clone(),
            action: e.action.clone(),
            targets: serde_json::to_string(&e.targets).expect("strings serialize"),
            filters: e.filters.to_string(),
            outcome: e.outcome.as_str().into(),
            status: i64::from(e.status),
            client: e.client.clone(),
            request_id: e.request_id.clone(),
            prev_hash: prev.to_string(),
            hash: String::new(),
        };
        row.hash = row.computed_hash();
        row
    }

    /// The hash the row's fields and `prev_hash` make.
    fn computed_hash(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            &self.prev_hash,
            &self.seq.to_string(),
            &self.at.to_string(),
            &self.actor,
            &self.role,
            &self.tenant,
            &self.action,
            &self.targets,
            &self.filters,
            &self.outcome,
            &self.status.to_string(),
            &self.client,
            &self.request_id,
        ] {
            h.update(part.as_bytes());
            h.update([0x1f]);
        }
        hex::encode(h.finalize())
    }

    /// The record this row stores.
    pub fn into_record(self) -> AuditRecord {
        AuditRecord {
            seq: self.seq,
            event: AuditEvent {
                at: self.at,
                actor: self.actor,
                role: self.role,
                tenant: self.tenant,
                action: self.action,
                targets: serde_json::from_str(&self.targets).unwrap_or_default(),
                filters: serde_json::from_str(&self.filters).unwrap_or(Value::Null),
                outcome: match self.outcome.as_str() {
                    "ok" => Outcome::Ok,
                    "denied" => Outcome::Denied,
                    _ => Outcome::Error,
                },
                status: u16::try_from(self.status).unwrap_or(0),
                client: self.client,
                request_id: self.request_id,
            },
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}

/// The rows of `events` appended after the chain's head `(seq, hash)` (`None`: an
/// empty log): numbered on from it, each hashing the one before. Every table
/// appends through this, so the chain is made one way whatever keeps it.
pub fn chain(head: Option<(i64, String)>, events: &[AuditEvent]) -> Vec<AuditRow> {
    let (mut seq, mut prev) = head.unwrap_or_else(|| (0, GENESIS.to_string()));
    events
        .iter()
        .map(|e| {
            seq += 1;
            let row = AuditRow::of(seq, e, &prev);
            prev.clone_from(&row.hash);
            row
        })
        .collect()
}

/// Where the audit chain is kept: `audit.db` in the data dir ([`SqliteAudit`]) or
/// the database that replicas share. One chain per table, however many processes
/// append to it: [`append`](AuditTable::append) reads the head and writes after it
/// in one transaction that excludes every other appender.
pub trait AuditTable: Send + Sync {
    /// Append `events` after the chain's head (rows made by [`chain`]), all or none.
    fn append(&self, events: &[AuditEvent]) -> Result<()>;
    /// Rows matching `q`, newest first, at most `q.limit` (default 100, at most 10 000).
    fn query(&self, q: &AuditQuery) -> Result<Vec<AuditRow>>;
    /// Rows after sequence number `after`, oldest first, at most `limit`.
    fn page(&self, after: i64, limit: usize) -> Result<Vec<AuditRow>>;
    /// Append rows of another log as they are (copying a chain, hashes and all):
    /// all or none, and only if they continue this chain ([`continues`]).
    fn import(&self, rows: &[AuditRow]) -> Result<()>;
}

/// Refuse `rows` unless they follow the head `(seq, hash)` record by record: an
/// import must extend the chain, never fork or renumber it.
pub fn continues(head: Option<(i64, String)>, rows: &[AuditRow]) -> Result<()> {
    let (mut seq, mut prev) = head.unwrap_or_else(|| (0, GENESIS.to_string()));
    for r in rows {
        if r.seq != seq + 1 || r.prev_hash != prev {
            return Err(Error::new(
                memhub_types::ErrorCode::InvalidField,
                format!("audit record {} does not continue the chain at record {seq}", r.seq),
            ));
        }
        seq = r.seq;
        prev.clone_from(&r.hash);
    }
    Ok(())
}

/// The `limit` a query reads.
pub fn query_limit(q: &AuditQuery) -> i64 {
    q.limit.unwrap_or(100).clamp(1, 10_000) as i64
}

/// The columns of `audit_log`, in [`AuditRow`]'s order.
pub const COLUMNS: &str =
    "seq, at, actor, role, tenant, action, targets, filters, outcome, status, client, request_id, prev_hash, hash";

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        seq: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        role: r.get(3)?,
        tenant: r.get(4)?,
        action: r.get(5)?,
        targets: r.get(6)?,
        filters: r.get(7)?,
        outcome: r.get(8)?,
        status: r.get(9)?,
        client: r.get(10)?,
        request_id: r.get(11)?,
        prev_hash: r.get(12)?,
        hash: r.get(13)?,
    })
}

fn storage(e: rusqlite::Error) -> Error {
    Error::storage(e)
}

/// `audit.db`: the audit chain of the embedded mode.
pub struct SqliteAudit {
    /// Appends (`None` for a log opened read-only).
    writer: Option<Mutex<Connection>>,
    reader: Mutex<Connection>,
}

fn open_rw(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(storage)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(storage)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(storage)?;
    // NORMAL in WAL mode: a process crash loses nothing committed; a power cut may
    // lose the last batch, which the chain then simply does not contain.
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(storage)?;
    conn.execute_batch(SCHEMA).map_err(storage)?;
    Ok(conn)
}

impl SqliteAudit {
    /// Open (creating) the audit file at `path` for appending.
    pub fn open(path: &Path) -> Result<SqliteAudit> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::storage(format!("cannot create {}: {e}", dir.display())))?;
        }
        Ok(SqliteAudit { writer: Some(Mutex::new(open_rw(path)?)), reader: Mutex::new(open_rw(path)?) })
    }

    fn lock(c: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
        c.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Open an audit file read-only (for `memhub audit verify` and `tail`).
pub fn open_read_only(path: &Path) -> Result<SqliteAudit> {
    if !path.exists() {
        return Err(Error::storage(format!("no audit log at {}", path.display())));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(storage)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(storage)?;
    Ok(SqliteAudit { writer: None, reader: Mutex::new(conn) })
}

/// The chain's head `(seq, hash)` as a transaction sees it.
fn sqlite_head(tx: &rusqlite::Transaction<'_>) -> Result<Option<(i64, String)>> {
    tx.query_row("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(storage)
}

fn insert_rows(tx: &rusqlite::Transaction<'_>, rows: &[AuditRow]) -> Result<()> {
    let mut st = tx
        .prepare_cached(&format!(
            "INSERT INTO audit_log ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ))
        .map_err(storage)?;
    for r in rows {
        st.execute(params![
            r.seq,
            r.at,
            r.actor,
            r.role,
            r.tenant,
            r.action,
            r.targets,
            r.filters,
            r.outcome,
            r.status,
            r.client,
            r.request_id,
            r.prev_hash,
            r.hash
        ])
        .map_err(storage)?;
    }
    Ok(())
}

impl SqliteAudit {
    /// Run `f` in an IMMEDIATE transaction (the head read and the inserts hold the
    /// file's write lock together), committing if it succeeds.
    fn appending(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<()>) -> Result<()> {
        let Some(writer) = &self.writer else {
            return Err(Error::storage("this audit log was opened read-only"));
        };
        let mut conn = Self::lock(writer);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(storage)?;
        f(&tx)?;
        tx.commit().map_err(storage)
    }
}

impl AuditTable for SqliteAudit {
    fn append(&self, events: &[AuditEvent]) -> Result<()> {
        self.appending(|tx| insert_rows(tx, &chain(sqlite_head(tx)?, events)))
    }

    fn import(&self, rows: &[AuditRow]) -> Result<()> {
        self.appending(|tx| {
            continues(sqlite_head(tx)?, rows)?;
            insert_rows(tx, rows)
        })
    }

    fn query(&self, q: &AuditQuery) -> Result<Vec<AuditRow>> {
        let conn = Self::lock(&self.reader);
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM audit_log WHERE (?1 IS NULL OR at >= ?1) AND (?2 IS NULL OR at < ?2) \
                 AND (?3 IS NULL OR actor = ?3) AND (?4 IS NULL OR action = ?4) AND (?5 IS NULL OR tenant = ?5) \
                 ORDER BY seq DESC LIMIT ?6"
            ))
            .map_err(storage)?;
        let rows = st
            .query_map(params![q.since, q.until, q.actor, q.action, q.tenant, query_limit(q)], row_of)
            .map_err(storage)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(storage)
    }

    fn page(&self, after: i64, limit: usize) -> Result<Vec<AuditRow>> {
        let conn = Self::lock(&self.reader);
        let mut st = conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2"))
            .map_err(storage)?;
        let rows = st.query_map(params![after, limit as i64], row_of).map_err(storage)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(storage)
    }
}

enum Msg {
    Event(Box<AuditEvent>),
    Flush(mpsc::Sender<()>),
}

/// The append side, shared by every request.
pub struct AuditLog {
    sender: Mutex<Option<mpsc::Sender<Msg>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    table: Option<Arc<dyn AuditTable>>,
}

fn writer_loop(table: Arc<dyn AuditTable>, rx: mpsc::Receiver<Msg>) {
    while let Ok(first) = rx.recv() {
        let mut events = Vec::new();
        let mut acks = Vec::new();
        // Gather for a few milliseconds: under load one commit then covers many
        // requests. A flush request ends the gathering at once.
        let deadline = std::time::Instant::now() + GATHER;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Msg::Event(e) => events.push(*e),
                Msg::Flush(ack) => acks.push(ack),
            }
            if events.len() < BATCH_MAX && acks.is_empty() {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                next = rx.recv_timeout(left).ok();
            }
        }
        if !events.is_empty() {
            if let Err(e) = table.append(&events) {
                tracing::error!(error = %e, lost = events.len(), "audit log write failed");
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

impl AuditLog {
    /// Open (creating) `audit.db` at `path` and start its writer thread.
    pub fn open(path: &Path) -> Result<AuditLog> {
        AuditLog::on(Arc::new(SqliteAudit::open(path)?))
    }

    /// Append to `table` from a writer thread of its own.
    pub fn on(table: Arc<dyn AuditTable>) -> Result<AuditLog> {
        let (tx, rx) = mpsc::channel();
        let appender = table.clone();
        let writer = std::thread::Builder::new()
            .name("memhub-audit".into())
            .spawn(move || writer_loop(appender, rx))
            .map_err(Error::internal)?;
        Ok(AuditLog { sender: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)), table: Some(table) })
    }

    /// A log that records nothing (for measuring what the audit log costs).
    pub fn disabled() -> AuditLog {
        AuditLog { sender: Mutex::new(None), writer: Mutex::new(None), table: None }
    }

    /// Queue one record; it is written within milliseconds, batched with others.
    pub fn record(&self, event: AuditEvent) {
        if let Some(tx) = &*self.sender.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.send(Msg::Event(Box::new(event)));
        }
    }

    /// Wait until every record queued before this call is written.
    pub fn flush(&self) {
        let (ack, done) = mpsc::channel();
        let sent = match &*self.sender.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(tx) => tx.send(Msg::Flush(ack)).is_ok(),
            None => false,
        };
        if sent {
            let _ = done.recv();
        }
    }

    /// Records matching `q`, newest first (written ones: call [`flush`](Self::flush) first to include queued ones).
    pub fn query(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        match &self.table {
            Some(table) => query(table.as_ref(), q),
            None => Err(Error::new(memhub_types::ErrorCode::NotFound, "the audit log is off (audit = false)")),
        }
    }

    /// Stop the writer after it has written everything queued.
    pub fn close(&self) {
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// Records matching `q` in `table`, newest first.
pub fn query(table: &dyn AuditTable, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
    Ok(table.query(q)?.into_iter().map(AuditRow::into_record).collect())
}

/// Rows [`verify`] reads at a time.
const VERIFY_PAGE: usize = 10_000;

/// Recompute the hash chain of `table`.
pub fn verify(table: &dyn AuditTable) -> Result<VerifyReport> {
    let (mut prev, mut expected_seq, mut records) = (GENESIS.to_string(), 1i64, 0u64);
    let mut first_broken = None;
    let mut after = 0;
    loop {
        let page = table.page(after, VERIFY_PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for row in page {
            records += 1;
            if first_broken.is_none() {
                let problem = if row.seq != expected_seq {
                    Some(format!("record {expected_seq} is missing"))
                } else if row.prev_hash != prev {
                    Some("prev_hash does not match the record before".to_string())
                } else if row.computed_hash() != row.hash {
                    Some("the record was changed after it was written".to_string())
                } else {
                    None
                };
                first_broken = problem.map(|p| (row.seq, p));
            }
            expected_seq = row.seq + 1;
            prev = row.hash;
        }
    }
    Ok(VerifyReport { records, head: prev, first_broken })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: usize) -> AuditEvent {
        AuditEvent {
            at: 1_700_000_000_000_000 + i as i64,
            actor: format!("key:mh_{i:012}"),
            role: "user".into(),
            tenant: "acme".into(),
            action: if i.is_multiple_of(2) { "memory.search".into() } else { "memory.store".into() },
            targets: vec![format!("id-{i}")],
            filters: serde_json::json!({"kind": "chat"}),
            outcome: Outcome::Ok,
            status: 200,
            client: "127.0.0.1".into(),
            request_id: format!("r{i}"),
        }
    }

    #[test]
    fn records_chain_and_tampering_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let log = AuditLog::open(&path).unwrap();
        for i in 0..50 {
            log.record(event(i));
        }
        log.flush();
        let all = log.query(&AuditQuery { limit: Some(1000), ..Default::default() }).unwrap();
        assert_eq!(all.len(), 50);
        assert_eq!(all[0].event, event(49), "newest first, read back as written");
        let stores = log
            .query(&AuditQuery { action: Some("memory.store".into()), limit: Some(1000), ..Default::default() })
            .unwrap();
        assert_eq!(stores.len(), 25);
        let window = AuditQuery { since: Some(event(10).at), until: Some(event(20).at), ..Default::default() };
        assert_eq!(log.query(&window).unwrap().len(), 10);
        drop(log);

        // Reopening continues the chain.
        let log = AuditLog::open(&path).unwrap();
        log.record(event(50));
        log.close();
        let conn = open_read_only(&path).unwrap();
        let report = verify(&conn).unwrap();
        assert_eq!((report.records, report.first_broken.clone()), (51, None));
        drop(conn);

        let edit = |sql: &str| Connection::open(&path).unwrap().execute_batch(sql).unwrap();
        edit("UPDATE audit_log SET outcome = 'denied' WHERE seq = 17");
        let report = verify(&open_read_only(&path).unwrap()).unwrap();
        assert_eq!(report.first_broken.as_ref().map(|b| b.0), Some(17), "{report:?}");
        edit("UPDATE audit_log SET outcome = 'ok' WHERE seq = 17");
        assert_eq!(verify(&open_read_only(&path).unwrap()).unwrap().first_broken, None, "restored");
        edit("DELETE FROM audit_log WHERE seq = 30");
        let report = verify(&open_read_only(&path).unwrap()).unwrap();
        assert_eq!(report.first_broken, Some((31, "record 30 is missing".to_string())));
    }
}
