//! Knowledge-graph writes: entities and relations.

use super::*;

impl Engine {
    /// Store (or update) a knowledge-graph entity keyed by `(tenant, name, entity_type)`.
    pub fn store_entity(&self, tenant: &str, e: NewEntity) -> Result<Entity> {
        let field = |name: &str, v: &str| {
            if v.trim().is_empty() {
                Err(Error::field(ErrorCode::InvalidField, name, "must not be empty"))
            } else {
                Ok(())
            }
        };
        field("name", &e.name)?;
        field("entity_type", &e.entity_type)?;
        let now = now_micros();
        let id = self.store.write(|tx| {
            let existing: Option<String> = tx
                .query_row(
                    "SELECT id FROM kg_entities WHERE tenant = ?1 AND name = ?2 AND entity_type = ?3",
                    params![tenant, e.name, e.entity_type],
                    |r| r.get(0),
                )
                .optional()
                .map_err(storage)?;
            let id = existing.unwrap_or_else(|| Uuid::now_v7().to_string());
            tx.execute(
                "INSERT INTO kg_entities (id, tenant, name, entity_type, observations, properties, metadata, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) ON CONFLICT (tenant, name, entity_type) DO UPDATE SET \
                 observations = excluded.observations, properties = excluded.properties, metadata = excluded.metadata, \
                 updated_at = excluded.updated_at",
                params![
                    id,
                    tenant,
                    e.name,
                    e.entity_type,
                    serde_json::to_string(&e.observations).map_err(Error::internal)?,
                    Value::Object(e.properties.clone()).to_string(),
                    Value::Object(e.metadata.clone()).to_string(),
                    now
                ],
            )
            .map_err(storage)?;
            Ok(id)
        })?;
        let id = Uuid::parse_str(&id).map_err(Error::internal)?;
        Ok(Entity { id, tenant: tenant.into(), entity: e, created_at: now, updated_at: now })
    }

    /// Store a knowledge-graph relation keyed by `(tenant, from, to, type)`.
    pub fn store_relation(&self, tenant: &str, r: NewRelation) -> Result<Relation> {
        for (name, v) in
            [("from_entity", &r.from_entity), ("to_entity", &r.to_entity), ("relation_type", &r.relation_type)]
        {
            if v.trim().is_empty() {
                return Err(Error::field(ErrorCode::InvalidField, name, "must not be empty"));
            }
        }
        let now = now_micros();
        let id = self.store.write(|tx| {
            let existing: Option<String> = tx
                .query_row(
                    "SELECT id FROM kg_relations WHERE tenant = ?1 AND from_entity = ?2 AND to_entity = ?3 AND relation_type = ?4",
                    params![tenant, r.from_entity, r.to_entity, r.relation_type],
                    |row| row.get(0),
                )
                .optional()
                .map_err(storage)?;
            let id = existing.unwrap_or_else(|| Uuid::now_v7().to_string());
            tx.execute(
                "INSERT INTO kg_relations (id, tenant, from_entity, to_entity, relation_type, properties, metadata, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (tenant, from_entity, to_entity, relation_type) DO UPDATE SET \
                 properties = excluded.properties, metadata = excluded.metadata",
                params![
                    id,
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
            Ok(id)
        })?;
        let id = Uuid::parse_str(&id).map_err(Error::internal)?;
        Ok(Relation { id, tenant: tenant.into(), relation: r, created_at: now })
    }
}
