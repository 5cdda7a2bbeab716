//! The pull worker's ledger in the shared database: whichever replica leads reads
//! and writes the same one, so a failover does not ingest an upload twice.

use std::collections::HashMap;

use memhub_ingest::ledger::{LedgerTable, UploadRecord, UploadState, UploadStatus};
use sqlx::Row;

use crate::{Db, PostgresConfig};

/// `ingest_uploads` and `ingest_row_hashes` (migration 3).
pub struct PostgresLedger {
    db: Db,
}

impl PostgresLedger {
    /// Connect (a small pool of its own) and run the migrations.
    pub fn connect(config: &PostgresConfig) -> memhub_types::Result<PostgresLedger> {
        Ok(PostgresLedger { db: Db::connect(config, 1, 2)? })
    }

    fn block<T>(&self, f: impl std::future::Future<Output = Result<T, sqlx::Error>>) -> Result<T, String> {
        self.db.block(f).map_err(|e| format!("ingest ledger: {e}"))
    }
}

impl LedgerTable for PostgresLedger {
    fn upload(&self, key: &str) -> Result<Option<UploadState>, String> {
        let row = self.block(
            sqlx::query("SELECT etag, size, state, attempts, next_attempt_at FROM ingest_uploads WHERE key = $1")
                .bind(key.to_string())
                .fetch_optional(&self.db.pool),
        )?;
        row.map(|r| -> Result<UploadState, sqlx::Error> {
            Ok(UploadState {
                etag: r.try_get(0)?,
                size: r.try_get::<i64, _>(1)? as u64,
                state: r.try_get(2)?,
                attempts: r.try_get::<i32, _>(3)? as u32,
                next_attempt_at: r.try_get(4)?,
            })
        })
        .transpose()
        .map_err(|e| format!("ingest ledger: {e}"))
    }

    fn record(&self, r: &UploadRecord<'_>) -> Result<(), String> {
        self.block(
            sqlx::query(
                "INSERT INTO ingest_uploads (key, system_id, layout, etag, size, state, attempts, last_error, \
                 next_attempt_at, rows_read, rows_written, rows_refused, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (key) DO UPDATE SET system_id = excluded.system_id, layout = excluded.layout, \
                 etag = excluded.etag, size = excluded.size, state = excluded.state, attempts = excluded.attempts, \
                 last_error = excluded.last_error, next_attempt_at = excluded.next_attempt_at, \
                 rows_read = excluded.rows_read, rows_written = excluded.rows_written, \
                 rows_refused = excluded.rows_refused, updated_at = excluded.updated_at",
            )
            .bind(r.key.to_string())
            .bind(r.system_id.to_string())
            .bind(r.layout.to_string())
            .bind(r.etag.map(str::to_string))
            .bind(r.size as i64)
            .bind(r.state)
            .bind(r.attempts as i32)
            .bind(r.last_error.map(str::to_string))
            .bind(r.next_attempt_at)
            .bind(r.rows_read as i64)
            .bind(r.rows_written as i64)
            .bind(r.rows_refused as i64)
            .bind(r.updated_at)
            .execute(&self.db.pool),
        )
        .map(drop)
    }

    fn failing(&self) -> Result<usize, String> {
        let n: i64 = self.block(
            sqlx::query_scalar("SELECT COUNT(*) FROM ingest_uploads WHERE state = 'failed'").fetch_one(&self.db.pool),
        )?;
        Ok(n as usize)
    }

    fn hashes(&self, system_id: &str, source: &str, ids: &[&str]) -> Result<HashMap<String, String>, String> {
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        let rows: Vec<(String, String)> = self.block(
            sqlx::query_as(
                "SELECT row_id, hash FROM ingest_row_hashes WHERE system_id = $1 AND source = $2 AND row_id = ANY($3)",
            )
            .bind(system_id.to_string())
            .bind(source.to_string())
            .bind(ids)
            .fetch_all(&self.db.pool),
        )?;
        Ok(rows.into_iter().collect())
    }

    fn remember(&self, system_id: &str, source: &str, rows: &[(&str, &str)]) -> Result<(), String> {
        let (ids, hashes): (Vec<String>, Vec<String>) =
            rows.iter().map(|(id, hash)| (id.to_string(), hash.to_string())).unzip();
        // One statement for the whole chunk: it commits (or not) as one.
        self.block(
            sqlx::query(
                "INSERT INTO ingest_row_hashes (system_id, source, row_id, hash) \
                 SELECT $1, $2, id, hash FROM UNNEST($3::text[], $4::text[]) AS t (id, hash) \
                 ON CONFLICT (system_id, source, row_id) DO UPDATE SET hash = excluded.hash",
            )
            .bind(system_id.to_string())
            .bind(source.to_string())
            .bind(ids)
            .bind(hashes)
            .execute(&self.db.pool),
        )
        .map(drop)
    }

    fn uploads(&self, limit: usize) -> Result<Vec<UploadStatus>, String> {
        let rows = self.block(
            sqlx::query(
                "SELECT key, system_id, layout, state, attempts, last_error, next_attempt_at, rows_read, rows_written, \
                 rows_refused, updated_at FROM ingest_uploads ORDER BY updated_at DESC, key LIMIT $1",
            )
            .bind(limit as i64)
            .fetch_all(&self.db.pool),
        )?;
        let time = memhub_types::time::format_micros;
        rows.iter()
            .map(|r| -> Result<UploadStatus, sqlx::Error> {
                Ok(UploadStatus {
                    key: r.try_get(0)?,
                    system_id: r.try_get(1)?,
                    layout: r.try_get(2)?,
                    state: r.try_get(3)?,
                    attempts: r.try_get::<i32, _>(4)? as u32,
                    last_error: r.try_get(5)?,
                    next_attempt_at: r.try_get::<Option<i64>, _>(6)?.map(time),
                    rows_read: r.try_get::<i64, _>(7)? as u64,
                    rows_written: r.try_get::<i64, _>(8)? as u64,
                    rows_refused: r.try_get::<i64, _>(9)? as u64,
                    updated_at: time(r.try_get(10)?),
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| format!("ingest ledger: {e}"))
    }
}
