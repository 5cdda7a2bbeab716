//! Writes: validate, authorise and store memories (one, a batch, a patch, an import), and deletes.

use super::*;

/// One item's write: its row and what was stored, or the item's own refusal (the
/// transaction goes on without it).
pub(super) type Written = Result<(i64, Stored)>;

impl Engine {
    /// Validate `new` and check it against the write scope: the scope's tenant and
    /// user fill in what the client left out; anything outside the scope is refused.
    pub(super) fn prepare_in(
        &self,
        scope: &Scope,
        mut new: NewMemory,
        method: IngestionMethod,
        registry: &SchemaRegistry,
        now: i64,
    ) -> Result<Prepared> {
        new.tenant.get_or_insert_with(|| scope.tenant.clone());
        let mut prepared = prepare::prepare(new, method, &self.config, registry, now)?;
        if prepared.memory.user_id.is_none() {
            prepared.memory.user_id.clone_from(&scope.user_id);
        }
        match scope.refusal(&prepared.memory) {
            Some(why) => Err(Error::forbidden(why)),
            None => Ok(prepared),
        }
    }

    /// Write one prepared memory inside `tx`: insert, replace (new version) or no-op.
    /// The inner error refuses this item only (it would replace a memory outside `scope`).
    /// With `cold`, a key that is in the cold tier fails the whole transaction with
    /// [`COLD_KEY_MOVED`] (the caller thaws it and retries).
    pub(super) fn write_prepared(
        tx: &mut dyn StoreTx,
        scope: &Scope,
        prepared: Prepared,
        cold: bool,
    ) -> Result<Written> {
        let m = &prepared.memory;
        match tx.find_by_key(&m.tenant, &m.system_id, &m.memory_id)? {
            Some(existing) => Self::write_over(tx, scope, prepared, existing),
            None => {
                if cold && tx.cold_has_key(&m.tenant, &m.system_id, &m.memory_id)? {
                    return Err(Error::new(ErrorCode::StorageError, COLD_KEY_MOVED));
                }
                let row = tx.insert(m, ChangeOp::Created)?;
                Ok(Ok((row, Stored { outcome: StoreOutcome::Created, memory: prepared.memory })))
            }
        }
    }

    /// [`write_prepared`](Self::write_prepared) for a batch: the keys looked up at
    /// once and the new memories inserted at once (a store over the network makes a
    /// few round trips per batch instead of three per memory). Results in `items`' order.
    pub(super) fn write_prepared_many(
        tx: &mut dyn StoreTx,
        scope: &Scope,
        items: &[(usize, Prepared)],
        cold: bool,
    ) -> Result<Vec<(usize, Written)>> {
        let keys: Vec<(&str, &str, &str)> = items
            .iter()
            .map(|(_, p)| (p.memory.tenant.as_str(), p.memory.system_id.as_str(), p.memory.memory_id.as_str()))
            .collect();
        // A key twice in one batch: the later item must see the earlier one, so one by one.
        if keys.iter().collect::<std::collections::HashSet<_>>().len() < keys.len() {
            return items
                .iter()
                .map(|(i, p)| Self::write_prepared(tx, scope, p.clone(), cold).map(|w| (*i, w)))
                .collect();
        }
        let found = tx.find_by_keys(&keys)?;
        let new: Vec<usize> = (0..items.len()).filter(|&k| found[k].is_none()).collect();
        if cold && !new.is_empty() && tx.cold_has_any_key(&new.iter().map(|&k| keys[k]).collect::<Vec<_>>())? {
            return Err(Error::new(ErrorCode::StorageError, COLD_KEY_MOVED));
        }
        let rows = tx.insert_many(&new.iter().map(|&k| &items[k].1.memory).collect::<Vec<_>>(), ChangeOp::Created)?;
        let mut written: Vec<Option<Written>> = (0..items.len()).map(|_| None).collect();
        for (&k, row) in new.iter().zip(rows) {
            let memory = items[k].1.memory.clone();
            written[k] = Some(Ok((row, Stored { outcome: StoreOutcome::Created, memory })));
        }
        // Existing keys get a new version each (rare in bulk ingest: re-pushes).
        for (k, existing) in found.into_iter().enumerate() {
            if let Some(existing) = existing {
                written[k] = Some(Self::write_over(tx, scope, items[k].1.clone(), existing)?);
            }
        }
        Ok(items.iter().zip(written).map(|((i, _), w)| (*i, w.expect("every item is written"))).collect())
    }

    /// Write `prepared` over the stored memory of its key: a new version, or a no-op
    /// when nothing changed. The inner error refuses this item only.
    fn write_over(
        tx: &mut dyn StoreTx,
        scope: &Scope,
        prepared: Prepared,
        (seq, old): (i64, Memory),
    ) -> Result<Written> {
        let Prepared { mut memory, created_at_given } = prepared;
        if !scope.permits(&old) {
            return Ok(Err(Error::forbidden("this memory_id belongs to a memory you may not change")));
        }
        if !created_at_given {
            memory.created_at = old.created_at;
        }
        // A re-push without a vector keeps the stored one while the content is the same
        // (it may have been made by the server's encoder).
        if memory.embedding.is_none() && memory.content == old.content {
            memory.embedding.clone_from(&old.embedding);
            memory.embedding_model.clone_from(&old.embedding_model);
        }
        if same_revision(&memory, &old) {
            return Ok(Ok((seq, Stored { outcome: StoreOutcome::Unchanged, memory: old })));
        }
        memory.id = old.id;
        memory.ingested_at = old.ingested_at;
        memory.version = old.version + 1;
        tx.replace(seq, &memory, memory.updated_at)?;
        Ok(Ok((seq, Stored { outcome: StoreOutcome::Updated, memory })))
    }

    /// Run a write that may meet cold keys: thaw those first, and again if an aging
    /// run froze one between the thaw and the write's transaction.
    pub(super) fn write_thawing<T>(&self, prepared: &[&Prepared], write: impl Fn() -> Result<T>) -> Result<T> {
        let Some(cold) = &self.cold else { return write() };
        let keys: Vec<(&str, &str, &str)> = prepared
            .iter()
            .map(|p| (p.memory.tenant.as_str(), p.memory.system_id.as_str(), p.memory.memory_id.as_str()))
            .collect();
        for _ in 0..3 {
            cold.thaw_keys(self, &keys)?;
            match write() {
                Err(e) if e.detail == COLD_KEY_MOVED => continue,
                other => return other,
            }
        }
        Err(Error::new(ErrorCode::StorageError, COLD_KEY_MOVED))
    }

    /// Store one memory within the write scope `scope`. Durable when this returns `Ok`.
    pub fn store_memory(&self, scope: &Scope, new: NewMemory, method: IngestionMethod) -> Result<Stored> {
        let stored = self.store_one(scope, new, method);
        telemetry::writes(method, [&stored]);
        stored
    }

    pub(super) fn store_one(&self, scope: &Scope, new: NewMemory, method: IngestionMethod) -> Result<Stored> {
        let prepared = self.prepare_in(scope, new, method, &self.registry(), now_micros())?;
        let cold = self.cold.is_some();
        let (_, stored) = self.write_thawing(&[&prepared], || {
            let (scope, prepared) = (scope.clone(), prepared.clone());
            self.commit_grouped(1, move |tx| Self::write_prepared(tx, &scope, prepared.clone(), cold))
        })??;
        Ok(stored)
    }

    /// Store many memories in one durable transaction. An item that fails validation
    /// gets its error at its position in the result and is skipped; the others are all
    /// written or, if the store fails, none is.
    pub fn store_batch(
        &self,
        scope: &Scope,
        items: Vec<NewMemory>,
        method: IngestionMethod,
    ) -> Result<Vec<Result<Stored>>> {
        if items.len() > self.config.max_batch {
            return Err(Error::field(
                ErrorCode::BatchTooLarge,
                "memories",
                format!("Batch size exceeds maximum of {} memories", self.config.max_batch),
            ));
        }
        let now = now_micros();
        let registry = self.registry();
        // Item errors name fields within the item; the caller knows each item's position
        // in its own request and prefixes it.
        let prepared: Vec<Result<Prepared>> =
            items.into_iter().map(|new| self.prepare_in(scope, new, method, &registry, now)).collect();
        drop(registry);
        let mut results: Vec<Option<Result<Stored>>> = Vec::with_capacity(prepared.len());
        let mut valid = Vec::new();
        for (i, p) in prepared.into_iter().enumerate() {
            match p {
                Ok(p) => {
                    valid.push((i, p));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if !valid.is_empty() {
            let cold = self.cold.is_some();
            let valid = Arc::new(valid);
            let all: Vec<&Prepared> = valid.iter().map(|(_, p)| p).collect();
            let written = self.write_thawing(&all, || {
                let (scope, valid) = (scope.clone(), valid.clone());
                self.commit_grouped(valid.len(), move |tx| Self::write_prepared_many(tx, &scope, &valid, cold))
            })?;
            for (i, w) in written {
                results[i] = Some(w.map(|(_, stored)| stored));
            }
        }
        let results: Vec<Result<Stored>> = results.into_iter().map(|r| r.expect("every item has a result")).collect();
        telemetry::writes(method, &results);
        Ok(results)
    }

    /// The memory `id` for a change by `access`: 404 if it may not read it, 403 if it
    /// may read but not change it.
    pub(super) fn get_for_change(&self, access: &Access, id: &Uuid) -> Result<Memory> {
        let current = self.get(&access.read, id)?;
        match access.write.refusal(&current) {
            Some(why) => Err(Error::forbidden(why)),
            None => Ok(current),
        }
    }

    /// Apply a patch: a new version, the old one kept in history.
    pub fn update(&self, access: &Access, id: &Uuid, patch: MemoryPatch) -> Result<Stored> {
        let current = self.get_for_change(access, id)?;
        let mut new = NewMemory {
            tenant: Some(current.tenant.clone()),
            system_id: Some(current.system_id.clone()),
            memory_id: Some(current.memory_id.clone()),
            kind: Some(current.kind.clone()),
            schema_version: Some(current.schema_version),
            content: patch.content.unwrap_or(current.content),
            attributes: Some(patch.attributes.unwrap_or(current.attributes)),
            metadata: Some(patch.metadata.unwrap_or(current.metadata)),
            tags: patch.tags.unwrap_or(current.tags),
            user_id: current.user_id,
            agent_id: current.agent_id,
            session_id: current.session_id,
            project: current.project,
            created_at: Some(current.created_at),
            expires_at: patch.expires_at.or(current.expires_at),
            embedding: current.embedding,
            embedding_model: current.embedding_model,
        };
        if let Some(e) = patch.embedding {
            new.embedding = Some(e);
            new.embedding_model = patch.embedding_model;
        }
        self.store_memory(&access.write, new, current.ingestion_method)
    }

    /// Delete a memory and its history for real.
    /// With `soft_delete_seconds` set, the memory only expires now (a new version,
    /// history kept): invisible at once, purged after that grace period.
    pub fn delete(&self, access: &Access, id: &Uuid) -> Result<Memory> {
        if self.config.soft_delete_seconds > 0 {
            let patch = MemoryPatch { expires_at: Some(now_micros()), ..Default::default() };
            return self.update(access, id, patch).map(|s| s.memory);
        }
        if let (Tier::Cold, Some(cold)) = (self.get_for_change(access, id)?.tier, &self.cold) {
            cold.thaw_id(self, id)?;
        }
        self.commit(|tx| {
            let (row, m) = tx
                .find_by_id(&access.write.tenant, id)?
                .filter(|(_, m)| access.write.permits(m))
                .ok_or_else(|| Error::not_found(format!("no memory with id {id}")))?;
            tx.remove(row, &m, ChangeOp::Deleted)?;
            Ok(m)
        })
    }

    /// Import exported records as they are (ids, versions and timestamps kept), in
    /// one transaction. A record whose key exists is replaced unless identical.
    pub fn import(&self, memories: Vec<Memory>) -> Result<ImportReport> {
        let registry = self.registry();
        for (i, m) in memories.iter().enumerate() {
            let at = |e: Error| e.within(&format!("records[{i}]"));
            check_content(&m.content, self.config.max_content_bytes).map_err(at)?;
            check_tags(m.tags.clone()).map_err(at)?;
            check_attributes(Some(m.attributes.clone())).map_err(at)?;
            registry.validate(&m.kind, Some(m.schema_version), &m.attributes).map_err(at)?;
            if let Some(v) = &m.embedding {
                check_embedding("embedding", v, self.config.embedding_dim).map_err(at)?;
            }
            if m.content_hash != prepare::content_hash(&m.content) {
                return Err(at(Error::field(ErrorCode::InvalidField, "content_hash", "does not match content")));
            }
        }
        drop(registry);
        self.commit(|tx| {
            let mut report = ImportReport::default();
            for m in &memories {
                match tx.find_by_key(&m.tenant, &m.system_id, &m.memory_id)? {
                    None => {
                        tx.insert(m, ChangeOp::Created)?;
                        report.created += 1;
                    }
                    Some((_, old)) if old == *m => report.unchanged += 1,
                    Some((row, _)) => {
                        tx.replace(row, m, now_micros())?;
                        report.updated += 1;
                    }
                }
            }
            Ok(report)
        })
    }
}
