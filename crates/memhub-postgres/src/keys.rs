//! API keys in the shared database, so every replica authenticates the same keys
//! and sees a revocation on the next request.

use memhub_govern::keys::{list_json, list_of_json, COLUMNS};
use memhub_govern::{KeyInfo, KeyRow, KeyTable, Role};
use memhub_types::Result;
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::{db, sql, Db, PostgresConfig};

/// The `api_keys` table (migration 2).
pub struct PostgresKeys {
    db: Db,
}

impl PostgresKeys {
    /// Connect (a small pool of its own: key checks are short) and run the migrations.
    pub fn connect(config: &PostgresConfig) -> Result<PostgresKeys> {
        Ok(PostgresKeys { db: Db::connect(config, 1, 2)? })
    }
}

fn key_from_row(r: &PgRow) -> std::result::Result<KeyRow, sqlx::Error> {
    let role: String = r.try_get(3)?;
    Ok(KeyRow {
        key: KeyInfo {
            id: r.try_get(0)?,
            name: r.try_get(2)?,
            role: role.parse().unwrap_or(Role::User),
            tenant: r.try_get(4)?,
            user_id: r.try_get(5)?,
            systems: list_of_json(r.try_get(6)?),
            kinds: list_of_json(r.try_get(7)?),
            can_read: r.try_get(8)?,
            superadmin: r.try_get(9)?,
            created_at: r.try_get(10)?,
            expires_at: r.try_get(11)?,
            revoked_at: r.try_get(12)?,
        },
        hash: r.try_get(1)?,
    })
}

impl KeyTable for PostgresKeys {
    fn insert(&self, row: &KeyRow) -> Result<()> {
        let k = &row.key;
        let text =
            format!("INSERT INTO api_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)");
        self.db
            .block(
                sqlx::query(sql(text))
                    .bind(k.id.clone())
                    .bind(row.hash.clone())
                    .bind(k.name.clone())
                    .bind(k.role.as_str())
                    .bind(k.tenant.clone())
                    .bind(k.user_id.clone())
                    .bind(list_json(&k.systems))
                    .bind(list_json(&k.kinds))
                    .bind(k.can_read)
                    .bind(k.superadmin)
                    .bind(k.created_at)
                    .bind(k.expires_at)
                    .bind(k.revoked_at)
                    .execute(&self.db.pool),
            )
            .map(drop)
    }

    fn get(&self, id: &str) -> Result<Option<KeyRow>> {
        let text = format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1");
        let row = self.db.block(sqlx::query(sql(text)).bind(id.to_string()).fetch_optional(&self.db.pool))?;
        row.as_ref().map(key_from_row).transpose().map_err(db)
    }

    fn list(&self, tenant: Option<&str>) -> Result<Vec<KeyRow>> {
        let text = format!(
            "SELECT {COLUMNS} FROM api_keys WHERE ($1::text IS NULL OR tenant = $1) ORDER BY created_at DESC, id"
        );
        let rows = self.db.block(sqlx::query(sql(text)).bind(tenant.map(str::to_string)).fetch_all(&self.db.pool))?;
        rows.iter().map(key_from_row).collect::<std::result::Result<_, _>>().map_err(db)
    }

    fn revoke(&self, id: &str, at: i64) -> Result<()> {
        self.db
            .block(
                sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1")
                    .bind(id.to_string())
                    .bind(at)
                    .execute(&self.db.pool),
            )
            .map(drop)
    }

    fn any(&self) -> Result<bool> {
        self.db.block(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys)").fetch_one(&self.db.pool))
    }
}
