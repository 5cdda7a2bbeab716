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
        let id = self.commit(|tx| tx.upsert_entity(tenant, &e, now))?;
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
        let id = self.commit(|tx| tx.upsert_relation(tenant, &r, now))?;
        Ok(Relation { id, tenant: tenant.into(), relation: r, created_at: now })
    }
}
