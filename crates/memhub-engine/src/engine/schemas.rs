//! The registry of memory kinds: listing, validation and registration of schemas.

use super::*;

impl Engine {
    /// Every registered schema version.
    pub fn schemas(&self) -> Vec<KindSchema> {
        self.registry().list()
    }

    /// Validate attributes against a kind (at `version`, else its latest); returns the version used.
    pub fn validate_attributes(&self, kind: &str, version: Option<u32>, attributes: &Value) -> Result<u32> {
        self.registry().validate(kind, version, attributes)
    }

    /// The latest version of a kind, if the kind is registered.
    pub fn latest_schema(&self, kind: &str) -> Option<KindSchema> {
        self.registry().latest(kind).cloned()
    }

    /// Register a new kind or a new version of one. Returns it and whether it is new.
    pub fn register_schema(
        &self,
        kind: &str,
        version: Option<u32>,
        description: String,
        schema: Value,
    ) -> Result<(KindSchema, bool)> {
        let mut registry = self.registry.write().unwrap_or_else(|p| p.into_inner());
        let (schema, is_new) = registry.prepare(kind, version, description, schema)?;
        if is_new {
            self.commit(|tx| tx.add_schema(&schema))?;
            registry.add(schema.clone())?;
        }
        Ok((schema, is_new))
    }

    /// Load again what the store keeps beside the log and another replica may have
    /// changed: the registered schemas and the retention policies.
    pub(crate) fn reload_settings(&self) -> Result<()> {
        // Read outside the lock (a slow database must not hold up validation); a
        // schema registered here meanwhile is kept: schemas are only ever added.
        let mut fresh = registry_of(self.store())?;
        let mut registry = self.registry.write().unwrap_or_else(|p| p.into_inner());
        for schema in registry.list() {
            if fresh.latest(&schema.kind).is_none_or(|latest| latest.version < schema.version) {
                fresh.add(schema)?;
            }
        }
        *registry = fresh;
        drop(registry);
        self.load_retention()
    }
}

/// The built-in schemas and those registered in `store`.
pub(super) fn registry_of(store: &dyn MemoryStore) -> Result<SchemaRegistry> {
    let mut registry = SchemaRegistry::with_builtins();
    for schema in store.schemas()? {
        registry.add(schema)?;
    }
    Ok(registry)
}
