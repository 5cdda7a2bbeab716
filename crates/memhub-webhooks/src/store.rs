//! Where webhooks are kept: the registered webhooks, each one's delivery position,
//! and the record of delivery attempts ([`WebhookTable`]; `webhooks.db` in the data
//! dir is [`SqliteWebhooks`]). The position is the outbox: the change log holds the
//! events, a webhook holds how far it has been delivered (`delivered_through`) and
//! the batch in flight, so a restart resends exactly that batch under the same
//! `webhook-id`.

use std::path::Path;
use std::sync::Mutex;

use memhub_types::{ChangeOp, Error};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::{Delivery, InFlight, Webhook};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    ops TEXT,
    system_id TEXT,
    kind TEXT,
    user_id TEXT,
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    first_failure_at INTEGER,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    delivered_through INTEGER NOT NULL,
    inflight_after INTEGER,
    inflight_through INTEGER,
    inflight_msg TEXT
);
CREATE INDEX IF NOT EXISTS webhooks_tenant ON webhooks (tenant);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    after_seq INTEGER NOT NULL,
    through_seq INTEGER NOT NULL,
    events INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    status INTEGER,
    error TEXT,
    at INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_webhook ON deliveries (webhook_id, id);
"#;

/// The columns of `webhooks` a [`Webhook`] is read from, in its order.
pub const COLUMNS: &str =
    "id, tenant, url, ops, system_id, kind, user_id, created_at, enabled, disabled_reason, failures, \
    first_failure_at, next_attempt_at, delivered_through, inflight_after, inflight_through, inflight_msg";

/// The registered webhooks, their positions and their delivery record. Every
/// method is one statement (or one transaction), so a table shared by replicas
/// needs no lock of its own: only the leading replica delivers.
pub trait WebhookTable: Send + Sync {
    /// Register `w` with its signing secret.
    fn insert(&self, w: &Webhook, secret: &str) -> Result<(), Error>;
    /// The webhook `id` (of `tenant`, when given).
    fn get(&self, tenant: Option<&str>, id: &str) -> Result<Option<Webhook>, Error>;
    /// The signing secret of webhook `id`.
    fn secret(&self, id: &str) -> Result<Option<String>, Error>;
    /// The webhooks of `tenant` (every tenant's when `None`), oldest first.
    fn list(&self, tenant: Option<&str>) -> Result<Vec<Webhook>, Error>;
    /// Remove a webhook and its delivery record; whether it existed.
    fn delete(&self, tenant: &str, id: &str) -> Result<bool, Error>;
    /// Enable (clearing the failure run, due at once) or disable a webhook; whether it exists.
    fn set_enabled(&self, tenant: &str, id: &str, enabled: bool, reason: Option<&str>) -> Result<bool, Error>;
    /// Record the batch about to be sent, before it is sent.
    fn set_inflight(&self, id: &str, b: &InFlight) -> Result<(), Error>;
    /// Nothing to send up to `through` (changes the webhook does not take); only
    /// while no batch is in flight.
    fn skip_to(&self, id: &str, through: i64) -> Result<(), Error>;
    /// Record one attempt and what it does to its webhook, in one transaction (one
    /// durable write per delivered batch, not two); the attempt's id.
    fn record(&self, d: &Delivery, settle: Settle) -> Result<i64, Error>;
    /// Attempts of one webhook, newest first.
    fn deliveries(&self, id: &str, limit: usize) -> Result<Vec<Delivery>, Error>;
    /// One attempt of one webhook.
    fn delivery(&self, webhook_id: &str, id: i64) -> Result<Option<Delivery>, Error>;
    /// How many attempts of this message were made.
    fn attempts(&self, webhook_id: &str, msg_id: &str) -> Result<u32, Error>;
    /// Keep the newest `keep` attempts of each webhook.
    fn prune_deliveries(&self, keep: usize) -> Result<(), Error>;
}

/// What a recorded attempt does to its webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Nothing (a redelivery an admin asked for): position and failure run stay.
    Nothing,
    /// The batch in flight was accepted: the position moves past it (to the
    /// attempt's `through`), the batch in flight and the failure run clear.
    Delivered,
    /// The attempt failed: count it, and try again at `next_attempt_at` (µs).
    Failed { next_attempt_at: i64 },
}

/// `webhooks.db`: the webhooks of the embedded mode.
pub struct SqliteWebhooks {
    conn: Mutex<Connection>,
}

fn storage(e: rusqlite::Error) -> Error {
    Error::storage(e)
}

/// A webhook's operations as stored: comma-separated names (`None`: all).
pub fn ops_text(ops: &Option<Vec<ChangeOp>>) -> Option<String> {
    ops.as_ref().map(|ops| ops.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(","))
}

/// The operations [`ops_text`] wrote.
pub fn ops_of(text: Option<String>) -> Option<Vec<ChangeOp>> {
    text.map(|s| s.split(',').filter_map(ChangeOp::parse).collect())
}

fn webhook_from_row(r: &Row<'_>) -> rusqlite::Result<Webhook> {
    let ops: Option<String> = r.get(3)?;
    let inflight = match (r.get::<_, Option<i64>>(14)?, r.get::<_, Option<i64>>(15)?, r.get::<_, Option<String>>(16)?) {
        (Some(after), Some(through), Some(msg_id)) => Some(InFlight { after, through, msg_id }),
        _ => None,
    };
    Ok(Webhook {
        id: r.get(0)?,
        tenant: r.get(1)?,
        url: r.get(2)?,
        ops: ops_of(ops),
        system_id: r.get(4)?,
        kind: r.get(5)?,
        user_id: r.get(6)?,
        created_at: r.get(7)?,
        enabled: r.get(8)?,
        disabled_reason: r.get(9)?,
        failures: r.get(10)?,
        first_failure_at: r.get(11)?,
        next_attempt_at: r.get(12)?,
        delivered_through: r.get(13)?,
        inflight,
    })
}

fn delivery_from_row(r: &Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        id: r.get(0)?,
        webhook_id: r.get(1)?,
        msg_id: r.get(2)?,
        after: r.get(3)?,
        through: r.get(4)?,
        events: r.get::<_, i64>(5)? as usize,
        attempt: r.get(6)?,
        status: r.get(7)?,
        error: r.get(8)?,
        at: r.get(9)?,
        duration_ms: r.get::<_, i64>(10)? as u64,
    })
}

impl SqliteWebhooks {
    /// Open (creating) the file at `path`, readable by its owner only (it holds the secrets).
    pub fn open(path: &Path) -> Result<SqliteWebhooks, Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::storage)?;
        }
        let conn = Connection::open(path).map_err(storage)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(storage)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(storage)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(storage)?;
        conn.execute_batch(SCHEMA).map_err(storage)?;
        // The secrets are in this file: only its owner may read it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(SqliteWebhooks { conn: Mutex::new(conn) })
    }

    /// `webhooks.db` in the data dir.
    pub fn in_data_dir(data_dir: &Path) -> Result<SqliteWebhooks, Error> {
        SqliteWebhooks::open(&data_dir.join("webhooks.db"))
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, Error> {
        f(&self.conn.lock().unwrap_or_else(|p| p.into_inner())).map_err(storage)
    }
}

impl WebhookTable for SqliteWebhooks {
    fn insert(&self, w: &Webhook, secret: &str) -> Result<(), Error> {
        let ops = ops_text(&w.ops);
        self.with(|c| {
            c.execute(
                "INSERT INTO webhooks (id, tenant, url, ops, system_id, kind, user_id, secret, created_at, delivered_through) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![w.id, w.tenant, w.url, ops, w.system_id, w.kind, w.user_id, secret, w.created_at, w.delivered_through],
            )
            .map(|_| ())
        })
    }

    fn get(&self, tenant: Option<&str>, id: &str) -> Result<Option<Webhook>, Error> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM webhooks WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)"),
                params![id, tenant],
                webhook_from_row,
            )
            .optional()
        })
    }

    fn secret(&self, id: &str) -> Result<Option<String>, Error> {
        self.with(|c| c.query_row("SELECT secret FROM webhooks WHERE id = ?1", [id], |r| r.get(0)).optional())
    }

    fn list(&self, tenant: Option<&str>) -> Result<Vec<Webhook>, Error> {
        self.with(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM webhooks WHERE (?1 IS NULL OR tenant = ?1) ORDER BY created_at, id"
            ))?;
            let rows = st.query_map(params![tenant], webhook_from_row)?;
            rows.collect()
        })
    }

    fn delete(&self, tenant: &str, id: &str) -> Result<bool, Error> {
        self.with(|c| {
            let n = c.execute("DELETE FROM webhooks WHERE id = ?1 AND tenant = ?2", params![id, tenant])?;
            c.execute("DELETE FROM deliveries WHERE webhook_id = ?1", params![id])?;
            Ok(n > 0)
        })
    }

    fn set_enabled(&self, tenant: &str, id: &str, enabled: bool, reason: Option<&str>) -> Result<bool, Error> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE webhooks SET enabled = ?3, disabled_reason = ?4, failures = CASE WHEN ?3 THEN 0 ELSE failures END, \
                 first_failure_at = CASE WHEN ?3 THEN NULL ELSE first_failure_at END, next_attempt_at = 0 \
                 WHERE id = ?1 AND tenant = ?2",
                params![id, tenant, enabled, reason],
            )?;
            Ok(n > 0)
        })
    }

    fn set_inflight(&self, id: &str, b: &InFlight) -> Result<(), Error> {
        self.with(|c| {
            c.execute(
                "UPDATE webhooks SET inflight_after = ?2, inflight_through = ?3, inflight_msg = ?4 WHERE id = ?1",
                params![id, b.after, b.through, b.msg_id],
            )
            .map(|_| ())
        })
    }

    fn skip_to(&self, id: &str, through: i64) -> Result<(), Error> {
        self.with(|c| {
            c.execute(
                "UPDATE webhooks SET delivered_through = MAX(delivered_through, ?2) WHERE id = ?1 AND inflight_msg IS NULL",
                params![id, through],
            )
            .map(|_| ())
        })
    }

    fn record(&self, d: &Delivery, settle: Settle) -> Result<i64, Error> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let write = |c: &mut Connection| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO deliveries (webhook_id, msg_id, after_seq, through_seq, events, attempt, status, error, at, duration_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    d.webhook_id,
                    d.msg_id,
                    d.after,
                    d.through,
                    d.events as i64,
                    d.attempt,
                    d.status,
                    d.error,
                    d.at,
                    d.duration_ms as i64
                ],
            )?;
            let id = tx.last_insert_rowid();
            match settle {
                Settle::Nothing => {}
                Settle::Delivered => {
                    tx.execute(
                        "UPDATE webhooks SET delivered_through = MAX(delivered_through, ?2), inflight_after = NULL, \
                         inflight_through = NULL, inflight_msg = NULL, failures = 0, first_failure_at = NULL, next_attempt_at = 0 \
                         WHERE id = ?1",
                        params![d.webhook_id, d.through],
                    )?;
                }
                Settle::Failed { next_attempt_at } => {
                    tx.execute(
                        "UPDATE webhooks SET failures = failures + 1, first_failure_at = COALESCE(first_failure_at, ?2), \
                         next_attempt_at = ?3 WHERE id = ?1",
                        params![d.webhook_id, d.at, next_attempt_at],
                    )?;
                }
            }
            tx.commit()?;
            Ok(id)
        };
        write(&mut conn).map_err(storage)
    }

    fn deliveries(&self, id: &str, limit: usize) -> Result<Vec<Delivery>, Error> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, webhook_id, msg_id, after_seq, through_seq, events, attempt, status, error, at, duration_ms \
                 FROM deliveries WHERE webhook_id = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![id, limit as i64], delivery_from_row)?;
            rows.collect()
        })
    }

    fn delivery(&self, webhook_id: &str, id: i64) -> Result<Option<Delivery>, Error> {
        self.with(|c| {
            c.query_row(
                "SELECT id, webhook_id, msg_id, after_seq, through_seq, events, attempt, status, error, at, duration_ms \
                 FROM deliveries WHERE webhook_id = ?1 AND id = ?2",
                params![webhook_id, id],
                delivery_from_row,
            )
            .optional()
        })
    }

    fn attempts(&self, webhook_id: &str, msg_id: &str) -> Result<u32, Error> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM deliveries WHERE webhook_id = ?1 AND msg_id = ?2",
                params![webhook_id, msg_id],
                |r| r.get(0),
            )
        })
    }

    fn prune_deliveries(&self, keep: usize) -> Result<(), Error> {
        self.with(|c| {
            c.execute(
                "DELETE FROM deliveries WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER \
                 (PARTITION BY webhook_id ORDER BY id DESC) AS n FROM deliveries) WHERE n > ?1)",
                params![keep as i64],
            )
            .map(|_| ())
        })
    }
}
