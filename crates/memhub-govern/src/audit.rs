//! The audit log: one record per access, appended to `audit.db` by a background
//! writer that commits whatever has queued up in one transaction (so a busy server
//! pays one fsync per batch, not per request). Each record carries the SHA-256 of
//! the one before it; [`verify`] recomputes the chain and names the first broken link.
//! Records hold who, what, which ids or filters, and the result: never memory content.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Mutex;

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

/// The columns a record's hash covers, as stored.
struct Stored {
    seq: i64,
    at: i64,
    actor: String,
    role: String,
    tenant: String,
    action: String,
    targets: String,
    filters: String,
    outcome: String,
    status: i64,
    client: String,
    request_id: String,
}

impl Stored {
    fn of(seq: i64, e: &AuditEvent) -> Stored {
        Stored {
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
        }
    }

    fn hash(&self, prev: &str) -> String {
        let mut h = Sha256::new();
        for part in [
            prev,
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
}

const COLUMNS: &str =
    "seq, at, actor, role, tenant, action, targets, filters, outcome, status, client, request_id, prev_hash, hash";

fn stored_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Stored, String, String)> {
    Ok((
        Stored {
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
        },
        r.get(12)?,
        r.get(13)?,
    ))
}

fn record((s, prev_hash, hash): (Stored, String, String)) -> AuditRecord {
    AuditRecord {
        seq: s.seq,
        event: AuditEvent {
            at: s.at,
            actor: s.actor,
            role: s.role,
            tenant: s.tenant,
            action: s.action,
            targets: serde_json::from_str(&s.targets).unwrap_or_default(),
            filters: serde_json::from_str(&s.filters).unwrap_or(Value::Null),
            outcome: match s.outcome.as_str() {
                "ok" => Outcome::Ok,
                "denied" => Outcome::Denied,
                _ => Outcome::Error,
            },
            status: u16::try_from(s.status).unwrap_or(0),
            client: s.client,
            request_id: s.request_id,
        },
        prev_hash,
        hash,
    }
}

fn storage(e: rusqlite::Error) -> Error {
    Error::storage(e)
}

enum Msg {
    Event(Box<AuditEvent>),
    Flush(mpsc::Sender<()>),
}

/// The append side, shared by every request.
pub struct AuditLog {
    sender: Mutex<Option<mpsc::Sender<Msg>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    reader: Mutex<Option<Connection>>,
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

/// Open an audit file read-only (for `memhub audit verify` and `tail`).
pub fn open_read_only(path: &Path) -> Result<Connection> {
    if !path.exists() {
        return Err(Error::storage(format!("no audit log at {}", path.display())));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(storage)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(storage)?;
    Ok(conn)
}

fn write_batch(conn: &mut Connection, head: &mut (i64, String), events: &[AuditEvent]) -> Result<()> {
    let tx = conn.transaction().map_err(storage)?;
    let before = head.clone();
    let result = (|| {
        let mut st = tx
            .prepare_cached(&format!(
                "INSERT INTO audit_log ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
            ))
            .map_err(storage)?;
        let (mut seq, mut prev) = head.clone();
        for e in events {
            seq += 1;
            let s = Stored::of(seq, e);
            let hash = s.hash(&prev);
            st.execute(params![
                s.seq,
                s.at,
                s.actor,
                s.role,
                s.tenant,
                s.action,
                s.targets,
                s.filters,
                s.outcome,
                s.status,
                s.client,
                s.request_id,
                prev,
                hash
            ])
            .map_err(storage)?;
            prev = hash;
        }
        *head = (seq, prev);
        Ok(())
    })();
    match result.and_then(|()| tx.commit().map_err(storage)) {
        Ok(()) => Ok(()),
        Err(e) => {
            *head = before;
            Err(e)
        }
    }
}

fn writer_loop(mut conn: Connection, mut head: (i64, String), rx: mpsc::Receiver<Msg>) {
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
            if let Err(e) = write_batch(&mut conn, &mut head, &events) {
                tracing::error!(error = %e, lost = events.len(), "audit log write failed");
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

impl AuditLog {
    /// Open (creating) the audit log at `path` and start its writer thread.
    pub fn open(path: &Path) -> Result<AuditLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::storage(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = open_rw(path)?;
        let head: (i64, String) = conn
            .query_row("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(storage)?
            .unwrap_or_else(|| (0, GENESIS.to_string()));
        let reader = open_rw(path)?;
        let (tx, rx) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("memhub-audit".into())
            .spawn(move || writer_loop(conn, head, rx))
            .map_err(Error::internal)?;
        Ok(AuditLog {
            sender: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            reader: Mutex::new(Some(reader)),
        })
    }

    /// A log that records nothing (for measuring what the audit log costs).
    pub fn disabled() -> AuditLog {
        AuditLog { sender: Mutex::new(None), writer: Mutex::new(None), reader: Mutex::new(None) }
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
        match &*self.reader.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(conn) => query(conn, q),
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

/// Records matching `q` in the log `conn`, newest first.
pub fn query(conn: &Connection, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000) as i64;
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM audit_log WHERE (?1 IS NULL OR at >= ?1) AND (?2 IS NULL OR at < ?2) \
             AND (?3 IS NULL OR actor = ?3) AND (?4 IS NULL OR action = ?4) AND (?5 IS NULL OR tenant = ?5) \
             ORDER BY seq DESC LIMIT ?6"
        ))
        .map_err(storage)?;
    let rows =
        st.query_map(params![q.since, q.until, q.actor, q.action, q.tenant, limit], stored_row).map_err(storage)?;
    rows.map(|r| r.map(record)).collect::<rusqlite::Result<Vec<_>>>().map_err(storage)
}

/// Recompute the hash chain of the log `conn`.
pub fn verify(conn: &Connection) -> Result<VerifyReport> {
    let mut st = conn.prepare(&format!("SELECT {COLUMNS} FROM audit_log ORDER BY seq")).map_err(storage)?;
    let mut rows = st.query([]).map_err(storage)?;
    let (mut prev, mut expected_seq, mut records) = (GENESIS.to_string(), 1i64, 0u64);
    let mut first_broken = None;
    while let Some(row) = rows.next().map_err(storage)? {
        let (s, prev_hash, hash) = stored_row(row).map_err(storage)?;
        records += 1;
        if first_broken.is_none() {
            let problem = if s.seq != expected_seq {
                Some(format!("record {expected_seq} is missing"))
            } else if prev_hash != prev {
                Some("prev_hash does not match the record before".to_string())
            } else if s.hash(&prev) != hash {
                Some("the record was changed after it was written".to_string())
            } else {
                None
            };
            first_broken = problem.map(|p| (s.seq, p));
        }
        expected_seq = s.seq + 1;
        prev = hash;
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
