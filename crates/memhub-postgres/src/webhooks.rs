//! Outgoing webhooks in the shared database: registered through any replica,
//! delivered by the leading one, with one position per webhook whichever replica
//! sent its last batch.

use memhub_types::Result;
use memhub_webhooks::store::{ops_of, ops_text, COLUMNS};
use memhub_webhooks::{Delivery, InFlight, Settle, Webhook, WebhookTable};
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::{db, sql, Db, PostgresConfig};

/// `webhooks` and `webhook_deliveries` (migration 5).
pub struct PostgresWebhooks {
    db: Db,
}

impl PostgresWebhooks {
    /// Connect (a small pool of its own) and run the migrations.
    pub fn connect(config: &PostgresConfig) -> Result<PostgresWebhooks> {
        Ok(PostgresWebhooks { db: Db::connect(config, 1, 2)? })
    }

    fn execute(&self, q: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>) -> Result<u64> {
        self.db.block(q.execute(&self.db.pool)).map(|r| r.rows_affected())
    }
}

const DELIVERY_COLUMNS: &str =
    "id, webhook_id, msg_id, after_seq, through_seq, events, attempt, status, error, at, duration_ms";

fn webhook_of(r: &PgRow) -> std::result::Result<Webhook, sqlx::Error> {
    let inflight = match (r.try_get(14)?, r.try_get(15)?, r.try_get(16)?) {
        (Some(after), Some(through), Some(msg_id)) => Some(InFlight { after, through, msg_id }),
        _ => None,
    };
    Ok(Webhook {
        id: r.try_get(0)?,
        tenant: r.try_get(1)?,
        url: r.try_get(2)?,
        ops: ops_of(r.try_get(3)?),
        system_id: r.try_get(4)?,
        kind: r.try_get(5)?,
        user_id: r.try_get(6)?,
        created_at: r.try_get(7)?,
        enabled: r.try_get(8)?,
        disabled_reason: r.try_get(9)?,
        failures: r.try_get::<i32, _>(10)?.max(0) as u32,
        first_failure_at: r.try_get(11)?,
        next_attempt_at: r.try_get(12)?,
        delivered_through: r.try_get(13)?,
        inflight,
    })
}

fn delivery_of(r: &PgRow) -> std::result::Result<Delivery, sqlx::Error> {
    Ok(Delivery {
        id: r.try_get(0)?,
        webhook_id: r.try_get(1)?,
        msg_id: r.try_get(2)?,
        after: r.try_get(3)?,
        through: r.try_get(4)?,
        events: r.try_get::<i32, _>(5)?.max(0) as usize,
        attempt: r.try_get::<i32, _>(6)?.max(0) as u32,
        status: r.try_get::<Option<i32>, _>(7)?.and_then(|s| u16::try_from(s).ok()),
        error: r.try_get(8)?,
        at: r.try_get(9)?,
        duration_ms: r.try_get::<i64, _>(10)?.max(0) as u64,
    })
}

impl WebhookTable for PostgresWebhooks {
    fn insert(&self, w: &Webhook, secret: &str) -> Result<()> {
        self.execute(
            sqlx::query(
                "INSERT INTO webhooks (id, tenant, url, ops, system_id, kind, user_id, secret, created_at, delivered_through) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(w.id.clone())
            .bind(w.tenant.clone())
            .bind(w.url.clone())
            .bind(ops_text(&w.ops))
            .bind(w.system_id.clone())
            .bind(w.kind.clone())
            .bind(w.user_id.clone())
            .bind(secret.to_string())
            .bind(w.created_at)
            .bind(w.delivered_through),
        )
        .map(drop)
    }

    fn get(&self, tenant: Option<&str>, id: &str) -> Result<Option<Webhook>> {
        let text = format!("SELECT {COLUMNS} FROM webhooks WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)");
        let row = self.db.block(
            sqlx::query(sql(text)).bind(id.to_string()).bind(tenant.map(str::to_string)).fetch_optional(&self.db.pool),
        )?;
        row.as_ref().map(webhook_of).transpose().map_err(db)
    }

    fn secret(&self, id: &str) -> Result<Option<String>> {
        self.db.block(
            sqlx::query_scalar("SELECT secret FROM webhooks WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.db.pool),
        )
    }

    fn list(&self, tenant: Option<&str>) -> Result<Vec<Webhook>> {
        let text =
            format!("SELECT {COLUMNS} FROM webhooks WHERE ($1::text IS NULL OR tenant = $1) ORDER BY created_at, id");
        let rows = self.db.block(sqlx::query(sql(text)).bind(tenant.map(str::to_string)).fetch_all(&self.db.pool))?;
        rows.iter().map(webhook_of).collect::<std::result::Result<_, _>>().map_err(db)
    }

    fn delete(&self, tenant: &str, id: &str) -> Result<bool> {
        let pool = &self.db.pool;
        self.db.block(async {
            let mut tx = pool.begin().await?;
            let n = sqlx::query("DELETE FROM webhooks WHERE id = $1 AND tenant = $2")
                .bind(id)
                .bind(tenant)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1").bind(id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(n > 0)
        })
    }

    fn set_enabled(&self, tenant: &str, id: &str, enabled: bool, reason: Option<&str>) -> Result<bool> {
        self.execute(
            sqlx::query(
                "UPDATE webhooks SET enabled = $3, disabled_reason = $4, \
                 failures = CASE WHEN $3 THEN 0 ELSE failures END, \
                 first_failure_at = CASE WHEN $3 THEN NULL ELSE first_failure_at END, next_attempt_at = 0 \
                 WHERE id = $1 AND tenant = $2",
            )
            .bind(id.to_string())
            .bind(tenant.to_string())
            .bind(enabled)
            .bind(reason.map(str::to_string)),
        )
        .map(|n| n > 0)
    }

    fn set_inflight(&self, id: &str, b: &InFlight) -> Result<()> {
        self.execute(
            sqlx::query(
                "UPDATE webhooks SET inflight_after = $2, inflight_through = $3, inflight_msg = $4 WHERE id = $1",
            )
            .bind(id.to_string())
            .bind(b.after)
            .bind(b.through)
            .bind(b.msg_id.clone()),
        )
        .map(drop)
    }

    fn skip_to(&self, id: &str, through: i64) -> Result<()> {
        self.execute(
            sqlx::query(
                "UPDATE webhooks SET delivered_through = GREATEST(delivered_through, $2) \
                 WHERE id = $1 AND inflight_msg IS NULL",
            )
            .bind(id.to_string())
            .bind(through),
        )
        .map(drop)
    }

    fn record(&self, d: &Delivery, settle: Settle) -> Result<i64> {
        let pool = &self.db.pool;
        self.db.block(async {
            let mut tx = pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO webhook_deliveries (webhook_id, msg_id, after_seq, through_seq, events, attempt, status, \
                 error, at, duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            )
            .bind(&d.webhook_id)
            .bind(&d.msg_id)
            .bind(d.after)
            .bind(d.through)
            .bind(i32::try_from(d.events).unwrap_or(i32::MAX))
            .bind(i32::try_from(d.attempt).unwrap_or(i32::MAX))
            .bind(d.status.map(i32::from))
            .bind(&d.error)
            .bind(d.at)
            .bind(i64::try_from(d.duration_ms).unwrap_or(i64::MAX))
            .fetch_one(&mut *tx)
            .await?;
            match settle {
                Settle::Nothing => {}
                Settle::Delivered => {
                    sqlx::query(
                        "UPDATE webhooks SET delivered_through = GREATEST(delivered_through, $2), inflight_after = NULL, \
                         inflight_through = NULL, inflight_msg = NULL, failures = 0, first_failure_at = NULL, \
                         next_attempt_at = 0 WHERE id = $1",
                    )
                    .bind(&d.webhook_id)
                    .bind(d.through)
                    .execute(&mut *tx)
                    .await?;
                }
                Settle::Failed { next_attempt_at } => {
                    sqlx::query(
                        "UPDATE webhooks SET failures = failures + 1, first_failure_at = COALESCE(first_failure_at, $2), \
                         next_attempt_at = $3 WHERE id = $1",
                    )
                    .bind(&d.webhook_id)
                    .bind(d.at)
                    .bind(next_attempt_at)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
            Ok(id)
        })
    }

    fn deliveries(&self, id: &str, limit: usize) -> Result<Vec<Delivery>> {
        let text = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY id DESC LIMIT $2"
        );
        let rows =
            self.db.block(sqlx::query(sql(text)).bind(id.to_string()).bind(limit as i64).fetch_all(&self.db.pool))?;
        rows.iter().map(delivery_of).collect::<std::result::Result<_, _>>().map_err(db)
    }

    fn delivery(&self, webhook_id: &str, id: i64) -> Result<Option<Delivery>> {
        let text = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 AND id = $2");
        let row = self
            .db
            .block(sqlx::query(sql(text)).bind(webhook_id.to_string()).bind(id).fetch_optional(&self.db.pool))?;
        row.as_ref().map(delivery_of).transpose().map_err(db)
    }

    fn attempts(&self, webhook_id: &str, msg_id: &str) -> Result<u32> {
        let n: i64 = self.db.block(
            sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = $1 AND msg_id = $2")
                .bind(webhook_id.to_string())
                .bind(msg_id.to_string())
                .fetch_one(&self.db.pool),
        )?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn prune_deliveries(&self, keep: usize) -> Result<()> {
        self.execute(
            sqlx::query(
                "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER \
                 (PARTITION BY webhook_id ORDER BY id DESC) AS n FROM webhook_deliveries) ranked WHERE n > $1)",
            )
            .bind(keep as i64),
        )
        .map(drop)
    }
}
