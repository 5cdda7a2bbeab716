//! Reads by id and key, history, listing, export and counts.

use super::*;

impl Engine {
    /// A memory by server id, if visible in `scope` (expired ones are not).
    pub fn get(&self, scope: &Scope, id: &Uuid) -> Result<Memory> {
        let now = now_micros();
        let found = match self.store.memory_by_id(&scope.tenant, id)? {
            Some((_, m)) => Some(m),
            None => match &self.cold {
                Some(cold) => cold.get(self.store(), &scope.tenant, id)?,
                None => None,
            },
        };
        found.filter(|m| self.visible(scope, m, now)).ok_or_else(|| Error::not_found(format!("no memory with id {id}")))
    }

    /// A memory by the client's `memory_id`. Without `system_id`, the id must be
    /// unique in the tenant.
    pub fn get_by_memory_id(&self, scope: &Scope, system_id: Option<&str>, memory_id: &str) -> Result<Memory> {
        let tenant = scope.tenant.as_str();
        let now = now_micros();
        let found = self.store.memories_by_memory_id(tenant, system_id, memory_id, 2)?;
        let cold = match &self.cold {
            Some(cold) => cold.by_memory_id(self.store(), tenant, system_id, memory_id)?,
            None => Vec::new(),
        };
        let mut found: Vec<Memory> = found.into_iter().chain(cold).filter(|m| self.visible(scope, m, now)).collect();
        match found.len() {
            0 => Err(Error::not_found(format!("no memory with memory_id {memory_id:?}"))),
            1 => Ok(found.pop().expect("one")),
            _ => Err(Error::field(
                ErrorCode::AmbiguousMemoryId,
                "memory_id",
                format!("{memory_id:?} exists in several systems; pass system_id"),
            )),
        }
    }

    /// Every version of a memory, newest first (the current one included).
    pub fn history(&self, scope: &Scope, id: &Uuid) -> Result<Vec<Memory>> {
        let current = self.get(scope, id)?;
        let mut versions = vec![current];
        versions.extend(self.store.history(&scope.tenant, id)?);
        Ok(versions)
    }

    /// A page of memories matching `filter`, newest first.
    pub fn list(
        &self,
        scope: &Scope,
        filter: &MemoryFilter,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<Page> {
        let limit = check_limit(limit, 50, crate::limits::PAGE)?;
        let after = cursor.map(decode_cursor).transpose()?;
        let keys = {
            let state = self.indexes.read();
            state.filters.plan(scope, filter, now_micros()).list(after, limit + 1)
        };
        let more = keys.len() > limit;
        let keys = &keys[..keys.len().min(limit)];
        let seqs: Vec<i64> = keys.iter().map(|k| k.1).collect();
        let memories: Vec<Memory> = self.store.memories_by_row(&seqs)?.into_iter().map(|(_, m)| m).collect();
        let next_cursor = if more { keys.last().map(|k| encode_cursor(k.0, k.1)) } else { None };
        Ok(Page { memories, next_cursor })
    }

    /// Call `f` for every visible memory of `scope`, oldest write first.
    pub fn export_scope(&self, scope: &Scope, mut f: impl FnMut(Memory) -> Result<()>) -> Result<usize> {
        let now = now_micros();
        let mut n = 0;
        self.export(Some(&scope.tenant), |m| {
            if self.visible(scope, &m, now) {
                n += 1;
                f(m)?;
            }
            Ok(())
        })?;
        Ok(n)
    }

    /// Call `f` for every stored memory (of `tenant`, or all), oldest write first.
    /// Cold memories follow the store's.
    pub fn export(&self, tenant: Option<&str>, mut f: impl FnMut(Memory) -> Result<()>) -> Result<usize> {
        let stored = self.store.each_memory(tenant, &mut f)?;
        let cold = match &self.cold {
            Some(cold) => cold.each(self.store(), tenant, f)?,
            None => 0,
        };
        Ok(stored + cold)
    }

    /// Counts of what `scope` sees.
    pub fn stats(&self, scope: &Scope) -> Result<Stats> {
        let tenant = scope.tenant.as_str();
        let sizes = self.indexes.sizes();
        let (memories, with_embedding, by_kind, by_system) = {
            let state = self.indexes.read();
            state.filters.plan(scope, &MemoryFilter::default(), now_micros()).counts()
        };
        let mut stats = Stats {
            memories,
            with_embedding,
            by_kind,
            by_system,
            history_versions: None,
            embedding_backlog: self.embed_queue.len(),
            entities: None,
            relations: None,
            store_bytes: 0,
            tiers: self.tier_stats(scope, &sizes)?,
            index: sizes,
        };
        if scope.is_whole_tenant() {
            let totals = self.store.tenant_totals(tenant)?;
            stats.history_versions = Some(totals.history_versions);
            stats.entities = Some(totals.entities);
            stats.relations = Some(totals.relations);
        }
        stats.store_bytes = self.store.disk_bytes();
        Ok(stats)
    }
}
