//! The audit chain in the shared database: every replica appends to one chain, so
//! `memhub audit verify` checks every access to the store, whichever replica served it.

use memhub_govern::audit::{chain, continues, query_limit, COLUMNS};
use memhub_govern::{AuditEvent, AuditQuery, AuditRow, AuditTable};
use memhub_types::Result;
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::{db, sql, Db, PostgresConfig};

/// The advisory lock an appender holds from reading the chain's head to its
/// commit (`'mema'`), so two replicas never append after the same head.
pub const AUDIT_LOCK: i64 = 0x6d65_6d61;

/// The `audit_log` table (migration 4).
pub struct PostgresAudit {
    db: Db,
}

impl PostgresAudit {
    /// Connect (a small pool of its own: one writer, a few readers) and run the migrations.
    pub fn connect(config: &PostgresConfig) -> Result<PostgresAudit> {
        Ok(PostgresAudit { db: Db::connect(config, 1, 2)? })
    }
}

fn row_of(r: &PgRow) -> std::result::Result<AuditRow, sqlx::Error> {
    Ok(AuditRow {
        seq: r.try_get(0)?,
        at: r.try_get(1)?,
        actor: r.try_get(2)?,
        role: r.try_get(3)?,
        tenant: r.try_get(4)?,
        action: r.try_get(5)?,
        targets: r.try_get(6)?,
        filters: r.try_get(7)?,
        outcome: r.try_get(8)?,
        status: i64::from(r.try_get::<i32, _>(9)?),
        client: r.try_get(10)?,
        request_id: r.try_get(11)?,
        prev_hash: r.try_get(12)?,
        hash: r.try_get(13)?,
    })
}

/// Insert `rows` in one statement, a column array each.
async fn insert_rows(tx: &mut sqlx::PgConnection, rows: &[AuditRow]) -> std::result::Result<(), sqlx::Error> {
    let col = |f: fn(&AuditRow) -> String| rows.iter().map(f).collect::<Vec<String>>();
    sqlx::query(sql(format!(
        "INSERT INTO audit_log ({COLUMNS}) SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], \
         $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int[], $11::text[], \
         $12::text[], $13::text[], $14::text[])"
    )))
    .bind(rows.iter().map(|r| r.seq).collect::<Vec<i64>>())
    .bind(rows.iter().map(|r| r.at).collect::<Vec<i64>>())
    .bind(col(|r| r.actor.clone()))
    .bind(col(|r| r.role.clone()))
    .bind(col(|r| r.tenant.clone()))
    .bind(col(|r| r.action.clone()))
    .bind(col(|r| r.targets.clone()))
    .bind(col(|r| r.filters.clone()))
    .bind(col(|r| r.outcome.clone()))
    .bind(rows.iter().map(|r| i32::try_from(r.status).unwrap_or(0)).collect::<Vec<i32>>())
    .bind(col(|r| r.client.clone()))
    .bind(col(|r| r.request_id.clone()))
    .bind(col(|r| r.prev_hash.clone()))
    .bind(col(|r| r.hash.clone()))
    .execute(&mut *tx)
    .await
    .map(drop)
}

/// The chain's head, read under [`AUDIT_LOCK`] (taken here, held until commit).
async fn locked_head(tx: &mut sqlx::PgConnection) -> std::result::Result<Option<(i64, String)>, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(AUDIT_LOCK).execute(&mut *tx).await?;
    sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetch_optional(&mut *tx).await
}

impl AuditTable for PostgresAudit {
    fn append(&self, events: &[AuditEvent]) -> Result<()> {
        let pool = &self.db.pool;
        self.db.block(async {
            let mut tx = pool.begin().await?;
            let head = locked_head(&mut tx).await?;
            insert_rows(&mut tx, &chain(head, events)).await?;
            tx.commit().await
        })
    }

    fn import(&self, rows: &[AuditRow]) -> Result<()> {
        let pool = &self.db.pool;
        let mut refused = None;
        self.db.block(async {
            let mut tx = pool.begin().await?;
            let head = locked_head(&mut tx).await?;
            if let Err(e) = continues(head, rows) {
                refused = Some(e);
                return tx.rollback().await;
            }
            insert_rows(&mut tx, rows).await?;
            tx.commit().await
        })?;
        refused.map_or(Ok(()), Err)
    }

    fn query(&self, q: &AuditQuery) -> Result<Vec<AuditRow>> {
        let text = format!(
            "SELECT {COLUMNS} FROM audit_log WHERE ($1::bigint IS NULL OR at >= $1) AND ($2::bigint IS NULL OR at < $2) \
             AND ($3::text IS NULL OR actor = $3) AND ($4::text IS NULL OR action = $4) \
             AND ($5::text IS NULL OR tenant = $5) ORDER BY seq DESC LIMIT $6"
        );
        let rows = self.db.block(
            sqlx::query(sql(text))
                .bind(q.since)
                .bind(q.until)
                .bind(q.actor.clone())
                .bind(q.action.clone())
                .bind(q.tenant.clone())
                .bind(query_limit(q))
                .fetch_all(&self.db.pool),
        )?;
        rows.iter().map(row_of).collect::<std::result::Result<_, _>>().map_err(db)
    }

    fn page(&self, after: i64, limit: usize) -> Result<Vec<AuditRow>> {
        let text = format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2");
        let rows = self.db.block(sqlx::query(sql(text)).bind(after).bind(limit as i64).fetch_all(&self.db.pool))?;
        rows.iter().map(row_of).collect::<std::result::Result<_, _>>().map_err(db)
    }
}
