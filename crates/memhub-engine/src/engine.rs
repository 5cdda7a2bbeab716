//! The engine: the write path (validate -> one transaction -> indexes catch up) and
//! the read paths (get, list, history, search), all scoped by tenant.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, RwLock};

use memhub_types::memory::IngestionMethod;
use memhub_types::schema::KindSchema;
use memhub_types::time::now_micros;
use memhub_types::{
    Embedder, Entity, Error, ErrorCode, Memory, MemoryFilter, MemoryPatch, NewEntity, NewMemory, NewRelation, Relation,
    Result, RetentionPolicy, SchemaRegistry, Scope, SearchHit, SearchRequest, SearchResponse, StoreOutcome, Tier,
};
use rusqlite::{params, OptionalExtension, Transaction};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::embedding::EmbeddingQueue;
use crate::index::filters::content_key;
use crate::index::{normalized, query_terms, DocId, IndexSizes, Indexes};
use crate::prepare::{self, check_attributes, check_content, check_embedding, check_tags, same_revision, Prepared};
use crate::store::{self, storage, OpenMode, Store, MEMORY_COLUMNS};
use crate::telemetry;
use crate::tiers::{score_cold, ColdTier, TierStats};
use crate::EngineConfig;

/// The result of a store: what happened and the memory as it now is.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub outcome: StoreOutcome,
    pub memory: Memory,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page {
    pub memories: Vec<Memory>,
    /// Pass back as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Counts for `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub memories: usize,
    pub with_embedding: usize,
    pub by_kind: BTreeMap<String, usize>,
    pub by_system: BTreeMap<String, usize>,
    /// Old versions kept (only for a caller who sees the whole tenant).
    pub history_versions: Option<i64>,
    /// Memories waiting for a server-side vector (all tenants).
    pub embedding_backlog: usize,
    /// Knowledge-graph sizes (only for a caller who sees the whole tenant).
    pub entities: Option<i64>,
    pub relations: Option<i64>,
    pub store_bytes: u64,
    /// The derived indexes (all tenants): sizes and changes not yet persisted.
    pub index: IndexSizes,
    /// Memories and bytes per tier (cold bytes only for a whole-tenant caller).
    pub tiers: BTreeMap<Tier, TierStats>,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportReport {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
}

/// What an erasure or a purge removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Removed {
    pub memories: usize,
    pub history_versions: usize,
}

/// The scopes a caller reads and writes in: they differ for a manager, who reads the
/// whole tenant but writes only some kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub read: Scope,
    pub write: Scope,
}

impl Access {
    /// Read and write everything in `tenant`.
    pub fn tenant(tenant: &str) -> Self {
        Access { read: Scope::tenant(tenant), write: Scope::tenant(tenant) }
    }
}

/// The memhub engine. Thread-safe; share it behind an `Arc`.
pub struct Engine {
    store: Store,
    indexes: Arc<Indexes>,
    maintainer: Option<std::thread::JoinHandle<()>>,
    registry: RwLock<SchemaRegistry>,
    config: EngineConfig,
    embedder: Option<Arc<dyn Embedder>>,
    embed_queue: EmbeddingQueue,
    /// The cold tier, when `tiers.cold` names a bucket.
    pub(crate) cold: Option<ColdTier>,
    /// Threads that run a hybrid search's vector retriever beside its keyword one.
    /// Kept alive: spawning a thread per search cost ~0.3 ms of the vector side's start.
    search_helpers: rayon::ThreadPool,
}

/// A write met a key that a concurrent aging run just moved to the cold tier: the
/// transaction is rolled back and the write retried after a thaw.
const COLD_KEY_MOVED: &str = "a memory with this key was moving to the cold tier; retry the write";

/// A list cursor: `(created_at, seq)` of the last memory returned.
fn encode_cursor(created_at: i64, seq: i64) -> String {
    format!("{created_at}_{seq}")
}

fn decode_cursor(s: &str) -> Result<(i64, i64)> {
    s.split_once('_')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| Error::field(ErrorCode::InvalidCursor, "cursor", "not a cursor returned by this server"))
}

fn check_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize> {
    match limit.unwrap_or(default) {
        0 => Err(Error::field(ErrorCode::InvalidField, "limit", "must be at least 1")),
        n if n > max => Err(Error::field(ErrorCode::InvalidField, "limit", format!("must be at most {max}"))),
        n => Ok(n),
    }
}

/// A search candidate: a memory in the indexes (hot or warm) or the `i`th scanned
/// cold memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Doc(DocId),
    Cold(usize),
}

/// A search candidate while retrievers' results are fused.
struct Candidate {
    key: Key,
    /// Weighted reciprocal-rank sum.
    score: f32,
    similarity: f32,
    retrievers: Vec<&'static str>,
    /// Identifies the content, to collapse duplicates.
    content_key: u64,
}

/// The vector retriever's weight in fusion when a search names none (the keyword
/// retriever gets the rest). Below 0.5 because stemmed BM25 is the stronger retriever
/// on conversational recall with all-MiniLM-L6-v2: on LoCoMo, evidence recall@10 was
/// 0.548 at 0.5, 0.574 at 0.35 and 0.614 at 0.2 (BENCHMARKS.md).
pub const DEFAULT_SEMANTIC_RATIO: f32 = 0.3;

/// The reciprocal-rank-fusion constant (Cormack et al.: 60).
const RRF_K: f32 = 60.0;

/// One retriever's hits from the indexes and the cold scan merged by score `(key,
/// score, similarity)`, best `n` first: `(key, similarity, rank)`.
fn ranked(hits: impl Iterator<Item = (Key, f32, f32)>, n: usize) -> Vec<(Key, f32, usize)> {
    let mut hits: Vec<(Key, f32, f32)> = hits.collect();
    hits.sort_by(|a, b| b.1.total_cmp(&a.1));
    hits.truncate(n);
    let ranks = competition_ranks(hits.iter().map(|h| h.1));
    hits.into_iter().zip(ranks).map(|((key, _, similarity), rank)| (key, similarity, rank)).collect()
}

/// 1-based ranks of scores sorted best first, equal scores sharing a rank
/// ("1224" ranking), so ties in one retriever do not decide the fused order.
fn competition_ranks(sorted_scores: impl Iterator<Item = f32>) -> Vec<usize> {
    let mut ranks: Vec<usize> = Vec::new();
    let mut last: Option<f32> = None;
    for (i, s) in sorted_scores.enumerate() {
        let rank = match (last, ranks.last()) {
            (Some(l), Some(&r)) if l == s => r,
            _ => i + 1,
        };
        ranks.push(rank);
        last = Some(s);
    }
    ranks
}

impl Engine {
    /// Open the store in `data_dir`, load registered schemas and build the indexes.
    pub fn open(data_dir: &Path, config: EngineConfig, mode: OpenMode) -> Result<Engine> {
        Self::open_with(data_dir, config, mode, None)
    }

    /// Open with a server-side embedder: text-only searches are embedded, and
    /// memories without a vector of its model are queued for background embedding
    /// (run an [`EmbeddingWorker`](crate::EmbeddingWorker) to drain the queue).
    pub fn open_with(
        data_dir: &Path,
        mut config: EngineConfig,
        mode: OpenMode,
        embedder: Option<Arc<dyn Embedder>>,
    ) -> Result<Engine> {
        if let Some(e) = &embedder {
            if e.dim() != config.embedding_dim {
                return Err(Error::new(
                    ErrorCode::InvalidField,
                    format!(
                        "the embedder {} makes {}-d vectors but embedding_dim is {}; set engine.embedding_dim = {}",
                        e.model_name(),
                        e.dim(),
                        config.embedding_dim,
                        e.dim()
                    ),
                ));
            }
            config.embedding_model = e.model_name().to_string();
        }
        config.tiers.validate()?;
        let cold = config.tiers.cold.as_ref().map(ColdTier::open).transpose()?;
        let store = Store::open(data_dir, mode)?;
        let mut registry = SchemaRegistry::with_builtins();
        store.read(|conn| {
            let mut st = conn
                .prepare("SELECT kind, version, description, schema FROM kind_schemas ORDER BY kind, version")
                .map_err(storage)?;
            let rows = st
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
                })
                .map_err(storage)?;
            for row in rows {
                let (kind, version, description, schema) = row.map_err(storage)?;
                let schema: Value = serde_json::from_str(&schema).map_err(Error::internal)?;
                registry.add(KindSchema { kind, version, description, schema, builtin: false })?;
            }
            Ok(())
        })?;
        let writable = mode == OpenMode::ReadWrite;
        let indexes = Arc::new(store.read(|conn| {
            Indexes::open(
                &data_dir.join("index"),
                writable,
                conn,
                config.embedding_dim,
                &config.embedding_model,
                config.hnsw,
            )
        })?);
        tracing::info!(memories = indexes.read().filters.len(), path = %store.path().display(), "store opened");
        let maintainer = writable
            .then(|| {
                let indexes = indexes.clone();
                std::thread::Builder::new().name("memhub-index".into()).spawn(move || indexes.maintain())
            })
            .transpose()
            .map_err(Error::internal)?;
        let search_helpers = rayon::ThreadPoolBuilder::new()
            .num_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .thread_name(|i| format!("memhub-search-{i}"))
            .build()
            .map_err(Error::internal)?;
        let engine = Engine {
            store,
            indexes,
            maintainer,
            registry: RwLock::new(registry),
            config,
            embedder,
            embed_queue: EmbeddingQueue::default(),
            cold,
            search_helpers,
        };
        engine.load_retention()?;
        if engine.embedder.is_some() && writable {
            for (id, doc) in engine.indexes.read().filters.docs() {
                if !doc.has_vector {
                    engine.embed_queue.push(i64::from(id));
                }
            }
        }
        Ok(engine)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    fn registry(&self) -> std::sync::RwLockReadGuard<'_, SchemaRegistry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply committed changes (made up to store change `change`) to the indexes:
    /// `Some` upserts, `None` removes. The store has them already, so a failure here
    /// is logged, not returned: a restart catches the indexes up.
    pub(crate) fn apply(&self, changes: &[(i64, Option<&Memory>)], change: i64) {
        if let Err(e) = self.indexes.apply(changes, change) {
            tracing::error!(error = %e, "index update failed; restart to catch up");
        }
        if self.embedder.is_some() {
            for (seq, m) in changes {
                if m.is_some_and(|m| m.embedding_model.as_deref() != Some(self.config.embedding_model.as_str())) {
                    self.embed_queue.push(*seq);
                }
            }
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The derived indexes (for benchmarks and diagnostics).
    pub fn indexes(&self) -> &Indexes {
        &self.indexes
    }

    /// The server-side embedder, if one is configured.
    pub fn embedder(&self) -> Option<&Arc<dyn Embedder>> {
        self.embedder.as_ref()
    }

    pub(crate) fn embed_queue(&self) -> &EmbeddingQueue {
        &self.embed_queue
    }

    /// Memories waiting for a server-side vector.
    pub fn embedding_backlog(&self) -> usize {
        self.embed_queue.len()
    }

    /// Embed queued memories and store their vectors (no new version: the vector is
    /// derived from the content). A memory whose content changed meanwhile is skipped;
    /// its new version is queued by its own write.
    pub(crate) fn embed_pending(&self, seqs: &[i64]) -> Result<()> {
        let Some(embedder) = &self.embedder else { return Ok(()) };
        let model = self.config.embedding_model.as_str();
        let todo: Vec<(i64, Memory)> = self
            .store
            .read(|c| store::load_by_seq(c, seqs))?
            .into_iter()
            .filter(|(_, m)| m.embedding_model.as_deref() != Some(model))
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let texts: Vec<&str> = todo.iter().map(|(_, m)| m.content.as_str()).collect();
        let vectors = embedder.embed(&texts).map_err(|e| Error::new(ErrorCode::InternalError, e.to_string()))?;
        let updated: Vec<(i64, Memory)> = todo
            .into_iter()
            .zip(vectors)
            .map(|((seq, mut m), v)| {
                m.embedding = Some(v);
                m.embedding_model = Some(model.to_string());
                (seq, m)
            })
            .collect();
        self.store.write_then(
            |tx| {
                let mut written = Vec::new();
                for (seq, m) in &updated {
                    if store::set_embedding(tx, *seq, m)? {
                        written.push(*seq);
                    }
                }
                Ok(written)
            },
            |written, change| {
                for (seq, m) in updated.iter().filter(|(s, _)| written.contains(s)) {
                    if let Err(e) = self.indexes.apply_vector(*seq, m, change) {
                        tracing::error!(error = %e, "index update failed; restart to catch up");
                    }
                }
            },
        )?;
        Ok(())
    }

    /// Validate `new` and check it against the write scope: the scope's tenant and
    /// user fill in what the client left out; anything outside the scope is refused.
    fn prepare_in(
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
    fn write_prepared(
        tx: &Transaction<'_>,
        scope: &Scope,
        prepared: Prepared,
        cold: bool,
    ) -> Result<Result<(i64, Stored)>> {
        let Prepared { mut memory, created_at_given } = prepared;
        let existing = store::find_by_key(tx, &memory.tenant, &memory.system_id, &memory.memory_id)?;
        let Some((seq, old)) = existing else {
            if cold && store::cold_has_key(tx, &memory.tenant, &memory.system_id, &memory.memory_id)? {
                return Err(Error::new(ErrorCode::StorageError, COLD_KEY_MOVED));
            }
            let seq = store::insert_memory(tx, &memory)?;
            return Ok(Ok((seq, Stored { outcome: StoreOutcome::Created, memory })));
        };
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
        store::replace_memory(tx, seq, &memory, memory.updated_at)?;
        Ok(Ok((seq, Stored { outcome: StoreOutcome::Updated, memory })))
    }

    fn changed<'a>(written: impl IntoIterator<Item = &'a (i64, Stored)>) -> Vec<(i64, Option<&'a Memory>)> {
        written
            .into_iter()
            .filter(|(_, s)| s.outcome != StoreOutcome::Unchanged)
            .map(|(seq, s)| (*seq, Some(&s.memory)))
            .collect()
    }

    /// Run a write that may meet cold keys: thaw those first, and again if an aging
    /// run froze one between the thaw and the write's transaction.
    fn write_thawing<T>(&self, prepared: &[&Prepared], write: impl Fn() -> Result<T>) -> Result<T> {
        if self.cold.is_none() {
            return write();
        }
        let keys: Vec<(&str, &str, &str)> = prepared
            .iter()
            .map(|p| (p.memory.tenant.as_str(), p.memory.system_id.as_str(), p.memory.memory_id.as_str()))
            .collect();
        for _ in 0..3 {
            self.thaw_keys(&keys)?;
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

    fn store_one(&self, scope: &Scope, new: NewMemory, method: IngestionMethod) -> Result<Stored> {
        let prepared = self.prepare_in(scope, new, method, &self.registry(), now_micros())?;
        let cold = self.cold.is_some();
        let (_, stored) = self
            .write_thawing(&[&prepared], || {
                self.store.write_then(
                    |tx| Self::write_prepared(tx, scope, prepared.clone(), cold).map(|w| w.map(|w| vec![w])),
                    |written, change| {
                        if let Ok(written) = written {
                            self.apply(&Self::changed(written), change)
                        }
                    },
                )
            })??
            .pop()
            .expect("one write");
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
            let all: Vec<&Prepared> = valid.iter().map(|(_, p)| p).collect();
            let written = self.write_thawing(&all, || {
                self.store.write_then(
                    |tx| {
                        valid
                            .iter()
                            .map(|(i, p)| Self::write_prepared(tx, scope, p.clone(), cold).map(|w| (*i, w)))
                            .collect::<Result<Vec<_>>>()
                    },
                    |written, change| {
                        self.apply(&Self::changed(written.iter().filter_map(|(_, w)| w.as_ref().ok())), change)
                    },
                )
            })?;
            for (i, w) in written {
                results[i] = Some(w.map(|(_, stored)| stored));
            }
        }
        let results: Vec<Result<Stored>> = results.into_iter().map(|r| r.expect("every item has a result")).collect();
        telemetry::writes(method, &results);
        Ok(results)
    }

    /// Whether a memory of this tenant, system and kind created at `created_at` is
    /// older than its kind's retention at `now`.
    pub(crate) fn past_retention(&self, tenant: &str, system_id: &str, kind: &str, created_at: i64, now: i64) -> bool {
        let state = self.indexes.read();
        memhub_types::access::past_retention(state.filters.retention(), tenant, system_id, kind, created_at, now)
    }

    /// Whether `m` is past its `expires_at` or its kind's retention at `now`.
    fn expired(&self, m: &Memory, now: i64) -> bool {
        memhub_types::access::expired(m, self.indexes.read().filters.retention(), now)
    }

    pub(crate) fn visible(&self, scope: &Scope, m: &Memory, now: i64) -> bool {
        scope.permits(m) && !self.expired(m, now)
    }

    /// The retention policies in force, copied: rows outside the indexes (the cold
    /// tier) are checked against them through [`memhub_types::Selection`] without
    /// holding the index lock row by row.
    pub(crate) fn retention_policies(&self) -> Vec<memhub_types::RetentionPolicy> {
        self.indexes.read().filters.retention().to_vec()
    }

    /// A memory by server id, if visible in `scope` (expired ones are not).
    pub fn get(&self, scope: &Scope, id: &Uuid) -> Result<Memory> {
        let now = now_micros();
        let found = match self.store.read(|c| store::find_by_id(c, &scope.tenant, id))? {
            Some((_, m)) => Some(m),
            None => self.get_cold(&scope.tenant, id)?,
        };
        found.filter(|m| self.visible(scope, m, now)).ok_or_else(|| Error::not_found(format!("no memory with id {id}")))
    }

    /// A memory by the client's `memory_id`. Without `system_id`, the id must be
    /// unique in the tenant.
    pub fn get_by_memory_id(&self, scope: &Scope, system_id: Option<&str>, memory_id: &str) -> Result<Memory> {
        let tenant = scope.tenant.as_str();
        let now = now_micros();
        let found: Vec<Memory> = self.store.read(|c| {
            let sql = format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE tenant = ?1 AND memory_id = ?2 AND (?3 IS NULL OR system_id = ?3) LIMIT 2");
            let mut st = c.prepare_cached(&sql).map_err(storage)?;
            let rows = st.query_map(params![tenant, memory_id, system_id], |r| store::memory_from_row(r, 0)).map_err(storage)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(storage)
        })?;
        let cold = self.cold_by_memory_id(tenant, system_id, memory_id)?;
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

    /// The memory `id` for a change by `access`: 404 if it may not read it, 403 if it
    /// may read but not change it.
    fn get_for_change(&self, access: &Access, id: &Uuid) -> Result<Memory> {
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
        if self.get_for_change(access, id)?.tier == Tier::Cold {
            self.thaw_id(id)?;
        }
        self.store
            .write_then(
                |tx| {
                    let (seq, m) = store::find_by_id(tx, &access.write.tenant, id)?
                        .filter(|(_, m)| access.write.permits(m))
                        .ok_or_else(|| Error::not_found(format!("no memory with id {id}")))?;
                    store::delete_memory(tx, seq, id)?;
                    Ok((seq, m))
                },
                |(seq, _), change| self.apply(&[(*seq, None)], change),
            )
            .map(|(_, m)| {
                telemetry::removed("delete", 1);
                m
            })
    }

    /// Every version of a memory, newest first (the current one included).
    pub fn history(&self, scope: &Scope, id: &Uuid) -> Result<Vec<Memory>> {
        let current = self.get(scope, id)?;
        let tenant = scope.tenant.as_str();
        let mut versions = vec![current];
        let old: Vec<Memory> = self.store.read(|c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {MEMORY_COLUMNS} FROM memory_history WHERE id = ?1 AND tenant = ?2 ORDER BY version DESC"
                ))
                .map_err(storage)?;
            let rows =
                st.query_map(params![id.to_string(), tenant], |r| store::memory_from_row(r, 0)).map_err(storage)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(storage)
        })?;
        versions.extend(old);
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
        let limit = check_limit(limit, 50, 1000)?;
        let after = cursor.map(decode_cursor).transpose()?;
        let keys = {
            let state = self.indexes.read();
            state.filters.plan(scope, filter, now_micros()).list(after, limit + 1)
        };
        let more = keys.len() > limit;
        let keys = &keys[..keys.len().min(limit)];
        let seqs: Vec<i64> = keys.iter().map(|k| k.1).collect();
        let memories: Vec<Memory> =
            self.store.read(|c| store::load_by_seq(c, &seqs))?.into_iter().map(|(_, m)| m).collect();
        let next_cursor = if more { keys.last().map(|k| encode_cursor(k.0, k.1)) } else { None };
        Ok(Page { memories, next_cursor })
    }

    /// Hybrid search: BM25 and exact vector scan, fused by reciprocal rank.
    pub fn search(&self, scope: &Scope, req: &SearchRequest) -> Result<SearchResponse> {
        let started = std::time::Instant::now();
        let limit = check_limit(req.limit, 10, 1000)?;
        let ratio = req.semantic_ratio.unwrap_or(DEFAULT_SEMANTIC_RATIO);
        if !(0.0..=1.0).contains(&ratio) {
            return Err(Error::field(ErrorCode::InvalidField, "semantic_ratio", "must be between 0 and 1"));
        }
        let query_vector = match &req.query_embedding {
            Some(v) => {
                check_embedding("query_embedding", v, self.config.embedding_dim)?;
                Some(normalized(v).ok_or_else(|| {
                    Error::field(ErrorCode::InvalidField, "query_embedding", "must not be the zero vector")
                })?)
            }
            None => match (&self.embedder, req.query.trim().is_empty(), req.semantic_ratio == Some(0.0)) {
                (Some(embedder), false, false) => {
                    let v = embedder
                        .embed(&[req.query.as_str()])
                        .map_err(|e| Error::new(ErrorCode::InternalError, format!("cannot embed the query: {e}")))?;
                    v.into_iter().next().and_then(|v| normalized(&v))
                }
                _ => None,
            },
        };
        if req.query.trim().is_empty() && query_vector.is_none() {
            return Err(Error::field(ErrorCode::InvalidField, "query", "give a query text or a query_embedding"));
        }
        let use_text = !req.query.trim().is_empty() && (ratio < 1.0 || query_vector.is_none());
        let use_vector = query_vector.is_some() && (ratio > 0.0 || !use_text);
        let mode = match (use_text, use_vector) {
            (true, true) => "hybrid",
            (false, true) => "vector",
            _ => "keyword",
        };
        let candidates = (limit * 4).max(100);
        let now = now_micros();
        let tiers = req.searched_tiers();
        let vector_query = query_vector.as_deref().filter(|_| use_vector);
        // Cold memories are scanned from their Parquet files (partitions pruned by the
        // filter) and scored on their own; their ranks merge with the indexes' by score.
        let cold_hits = if tiers.contains(&Tier::Cold) && self.cold.is_some() {
            let terms = if use_text { query_terms(&req.query) } else { Vec::new() };
            let scanned = self.scan_cold(scope, &req.filter, now)?;
            score_cold(scanned, &terms, query_vector.as_deref(), &self.config.embedding_model)
        } else {
            Vec::new()
        };

        let mut fused: HashMap<Key, Candidate> = HashMap::new();
        {
            let state = self.indexes.read();
            let mut plan = state.filters.plan(scope, &req.filter, now);
            plan.restrict_tiers(&tiers);
            let mut add = |key: Key, rank: usize, weight: f32, similarity: f32, retriever: &'static str| {
                let c = fused.entry(key).or_insert_with(|| Candidate {
                    key,
                    score: 0.0,
                    similarity,
                    retrievers: Vec::new(),
                    content_key: match key {
                        Key::Doc(id) => state.filters.get(id).map_or(0, |d| d.content_key),
                        Key::Cold(i) => content_key(&cold_hits[i].memory().content_hash),
                    },
                });
                c.score += weight / (RRF_K + rank as f32);
                c.retrievers.push(retriever);
                if retriever == "vector" {
                    c.similarity = similarity;
                }
            };
            // The two retrievers are independent: with both, the vector one runs on a
            // helper thread (an agent waits on the slower of the two, not their sum).
            let vector_search = |q: &[f32]| self.indexes.vector_search(&state, q, &plan, &tiers, candidates);
            let text_search = || self.indexes.text_search(&state, &req.query, &plan, candidates);
            let (text_hits, vector_hits) = match (use_text, vector_query) {
                (true, Some(q)) => {
                    let mut vector = None;
                    let text = self.search_helpers.in_place_scope(|s| {
                        s.spawn(|_| {
                            vector = Some(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vector_search(q))));
                        });
                        text_search()
                    });
                    let vector = vector
                        .ok_or_else(|| Error::internal("vector search did not run"))?
                        .map_err(|_| Error::internal("vector search panicked"))?;
                    (Some(text?), Some(vector))
                }
                (true, None) => (Some(text_search()?), None),
                (false, q) => (None, q.map(vector_search)),
            };
            if let Some(hits) = text_hits {
                let w = if use_vector { 1.0 - ratio } else { 1.0 };
                let hot = hits.into_iter().map(|h| (Key::Doc(h.id), h.bm25, h.coverage));
                let cold = cold_hits.iter().enumerate().filter(|(_, h)| h.bm25 > 0.0);
                for (key, coverage, rank) in
                    ranked(hot.chain(cold.map(|(i, h)| (Key::Cold(i), h.bm25, h.coverage))), candidates)
                {
                    add(key, rank, w, coverage, "text");
                }
            }
            if let Some(hits) = vector_hits {
                let w = if use_text { ratio } else { 1.0 };
                let hot = hits.into_iter().map(|(id, cos)| (Key::Doc(id), cos, cos));
                let cold = cold_hits.iter().enumerate().filter_map(|(i, h)| h.cosine.map(|c| (Key::Cold(i), c, c)));
                for (key, cos, rank) in ranked(hot.chain(cold), candidates) {
                    add(key, rank, w, cos, "vector");
                }
            }
            // With a query vector, every hit's similarity is its cosine when it has a
            // vector of the model, so thresholds mean the same for all hits.
            if let Some(q) = query_vector.as_deref() {
                let keyword_only = |c: &Candidate| !c.retrievers.contains(&"vector");
                let ids: Vec<DocId> = fused
                    .values()
                    .filter(|c| keyword_only(c))
                    .filter_map(|c| if let Key::Doc(id) = c.key { Some(id) } else { None })
                    .collect();
                let cosines: HashMap<DocId, f32> = self.indexes.similarities(&state, q, &ids).into_iter().collect();
                for (key, c) in fused.iter_mut().filter(|(_, c)| keyword_only(c)) {
                    let cosine = match key {
                        Key::Doc(id) => cosines.get(id).copied(),
                        Key::Cold(i) => cold_hits[*i].cosine,
                    };
                    if let Some(cosine) = cosine {
                        c.similarity = cosine;
                    }
                }
            }
            if let Some(half_life) = req.recency_half_life {
                for (key, c) in fused.iter_mut() {
                    let created_at = match key {
                        Key::Doc(id) => state.filters.get(*id).map(|d| d.created_at),
                        Key::Cold(i) => Some(cold_hits[*i].memory().created_at),
                    };
                    if let Some(created_at) = created_at {
                        let age_seconds = ((now - created_at).max(0) as f64) / 1e6;
                        c.score *= 0.5f64.powf(age_seconds / half_life) as f32;
                    }
                }
            }
        }
        let min = req.min_score.unwrap_or(f32::MIN);
        let mut ranked: Vec<Candidate> = fused.into_values().filter(|c| c.similarity >= min).collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.key.cmp(&a.key)));
        // Near-duplicates (same content) collapse to the best-ranked one.
        let mut seen = HashSet::new();
        ranked.retain(|c| seen.insert(c.content_key));
        ranked.truncate(limit);

        let seqs: Vec<i64> =
            ranked.iter().filter_map(|c| if let Key::Doc(id) = c.key { Some(i64::from(id)) } else { None }).collect();
        let mut loaded: HashMap<i64, Memory> = self.store.read(|c| store::load_by_seq(c, &seqs))?.into_iter().collect();
        let results: Vec<SearchHit> = ranked
            .into_iter()
            .filter_map(|c| {
                let mut memory = match c.key {
                    Key::Doc(id) => loaded.remove(&i64::from(id))?,
                    // Each key is ranked once, so each cold hit is copied at most once.
                    Key::Cold(i) => cold_hits[i].memory().clone(),
                };
                if !req.include_embedding {
                    memory.embedding = None;
                }
                Some(SearchHit {
                    memory,
                    score: c.score,
                    similarity: c.similarity,
                    retrievers: c.retrievers.into_iter().map(String::from).collect(),
                })
            })
            .collect();
        telemetry::search(mode, tiers.contains(&Tier::Cold), started.elapsed().as_secs_f64());
        Ok(SearchResponse { query: req.query.clone(), total_results: results.len(), results, mode: mode.into() })
    }

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
            self.store.write(|tx| {
                tx.execute(
                    "INSERT INTO kind_schemas (kind, version, description, schema, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![schema.kind, schema.version, schema.description, schema.schema.to_string(), now_micros()],
                )
                .map_err(storage)?;
                Ok(())
            })?;
            registry.add(schema.clone())?;
        }
        Ok((schema, is_new))
    }

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
        let stored = self.store.read(|c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {MEMORY_COLUMNS} FROM memories WHERE (?1 IS NULL OR tenant = ?1) ORDER BY seq"
                ))
                .map_err(storage)?;
            let mut rows = st.query(params![tenant]).map_err(storage)?;
            let mut n = 0;
            while let Some(row) = rows.next().map_err(storage)? {
                f(store::memory_from_row(row, 0).map_err(storage)?)?;
                n += 1;
            }
            Ok(n)
        })?;
        Ok(stored + self.each_cold(tenant, f)?)
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
        self.store
            .write_then(
                |tx| {
                    let mut report = ImportReport::default();
                    let mut applied = Vec::new();
                    for m in memories {
                        match store::find_by_key(tx, &m.tenant, &m.system_id, &m.memory_id)? {
                            None => {
                                let seq = store::insert_memory(tx, &m)?;
                                report.created += 1;
                                applied.push((seq, m));
                            }
                            Some((_, old)) if old == m => report.unchanged += 1,
                            Some((seq, _)) => {
                                store::replace_memory(tx, seq, &m, now_micros())?;
                                report.updated += 1;
                                applied.push((seq, m));
                            }
                        }
                    }
                    Ok((report, applied))
                },
                |(_, applied), change| {
                    self.apply(&applied.iter().map(|(s, m)| (*s, Some(m))).collect::<Vec<_>>(), change)
                },
            )
            .map(|(report, _)| report)
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
        let count =
            |sql: &str| self.store.read(|c| c.query_row(sql, params![tenant], |r| r.get::<_, i64>(0)).map_err(storage));
        if scope.is_whole_tenant() {
            stats.history_versions = Some(count("SELECT COUNT(*) FROM memory_history WHERE tenant = ?1")?);
            stats.entities = Some(count("SELECT COUNT(*) FROM kg_entities WHERE tenant = ?1")?);
            stats.relations = Some(count("SELECT COUNT(*) FROM kg_relations WHERE tenant = ?1")?);
        }
        let path = self.store.path();
        stats.store_bytes = [path.to_path_buf(), path.with_extension("db-wal")]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        Ok(stats)
    }

    /// Load the stored retention policies after the configured ones.
    fn load_retention(&self) -> Result<()> {
        let stored: Vec<RetentionPolicy> = self.store.read(|c| {
            let mut st = c
                .prepare("SELECT tenant, kind, system_id, ttl_seconds FROM retention_policies ORDER BY tenant, kind, system_id")
                .map_err(storage)?;
            let rows = st
                .query_map([], |r| {
                    let system: String = r.get(2)?;
                    Ok(RetentionPolicy {
                        tenant: Some(r.get(0)?),
                        kind: r.get(1)?,
                        system_id: (!system.is_empty()).then_some(system),
                        ttl_seconds: r.get::<_, i64>(3)?.max(1) as u64,
                    })
                })
                .map_err(storage)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(storage)
        })?;
        self.indexes.set_retention(self.config.retention.iter().cloned().chain(stored).collect());
        Ok(())
    }

    /// The retention policies that apply in `tenant`: the configured ones, then the
    /// tenant's own.
    pub fn retention(&self, tenant: &str) -> Vec<RetentionPolicy> {
        let state = self.indexes.read();
        state.filters.retention().iter().filter(|p| p.tenant.as_deref().is_none_or(|t| t == tenant)).cloned().collect()
    }

    /// Replace `tenant`'s own retention policies (the configured ones stay). Memories
    /// past a new TTL are invisible at once and purged by [`purge_expired`](Self::purge_expired).
    pub fn set_retention(&self, tenant: &str, policies: Vec<RetentionPolicy>) -> Result<Vec<RetentionPolicy>> {
        for (i, p) in policies.iter().enumerate() {
            if p.kind.trim().is_empty() {
                return Err(Error::field(ErrorCode::InvalidField, format!("policies[{i}].kind"), "must not be empty"));
            }
            if p.tenant.as_deref().is_some_and(|t| t != tenant) {
                return Err(Error::field(
                    ErrorCode::InvalidField,
                    format!("policies[{i}].tenant"),
                    "must be your tenant",
                ));
            }
        }
        self.store.write(|tx| {
            tx.execute("DELETE FROM retention_policies WHERE tenant = ?1", params![tenant]).map_err(storage)?;
            for p in &policies {
                tx.execute(
                    "INSERT OR REPLACE INTO retention_policies (tenant, kind, system_id, ttl_seconds) VALUES (?1, ?2, ?3, ?4)",
                    params![tenant, p.kind, p.system_id.as_deref().unwrap_or(""), i64::try_from(p.ttl_seconds).unwrap_or(i64::MAX)],
                )
                .map_err(storage)?;
            }
            Ok(())
        })?;
        self.load_retention()?;
        Ok(self.retention(tenant))
    }

    /// Delete the memories at `seqs` (and their history) for which `still` holds when
    /// the deleting transaction looks at them. The one removal path for purge and
    /// erasure: a tier that keeps copies (cold storage) must delete there too.
    fn remove_where(&self, seqs: &[i64], still: impl Fn(&Memory) -> bool) -> Result<Removed> {
        let mut removed = Removed::default();
        for chunk in seqs.chunks(1000) {
            let (done, history) = self.store.write_then(
                |tx| {
                    let mut done = Vec::new();
                    let mut history = 0;
                    for &seq in chunk {
                        if let Some(h) = store::delete_if(tx, seq, &still)? {
                            done.push(seq);
                            history += h;
                        }
                    }
                    Ok((done, history))
                },
                |(done, _), change| self.apply(&done.iter().map(|s| (*s, None)).collect::<Vec<_>>(), change),
            )?;
            removed.memories += done.len();
            removed.history_versions += history;
        }
        Ok(removed)
    }

    /// Remove every memory past its `expires_at` or its kind's retention, with its
    /// history, from the store and the indexes. The background purge job calls this.
    pub fn purge_expired(&self) -> Result<Removed> {
        let now = now_micros();
        // Memories past their expires_at wait out the soft-delete grace period (0 when off).
        let grace = i64::try_from(self.config.soft_delete_seconds).unwrap_or(i64::MAX).saturating_mul(1_000_000);
        let expired_before = now.saturating_sub(grace);
        let seqs: Vec<i64> =
            self.indexes.read().filters.expired(now, expired_before).into_iter().map(i64::from).collect();
        // The same rule as `FilterTable::expired`, checked again in the deleting transaction.
        let mut removed = self.remove_where(&seqs, |m| {
            m.expires_at.is_some_and(|t| t <= expired_before)
                || self.past_retention(&m.tenant, &m.system_id, &m.kind, m.created_at, now)
        })?;
        removed.memories += self.purge_cold(now, expired_before)?;
        if removed == Removed::default() {
            return Ok(removed);
        }
        tracing::info!(
            memories = removed.memories,
            history_versions = removed.history_versions,
            "purged expired memories"
        );
        telemetry::removed("retention", removed.memories);
        Ok(removed)
    }

    /// Erase every memory of `scope` matching `filter` (expired ones included) with
    /// its history, then compact the store and the text index so the erased text is
    /// gone from disk.
    pub fn erase(&self, scope: &Scope, filter: &MemoryFilter) -> Result<Removed> {
        let seqs: Vec<i64> = {
            let state = self.indexes.read();
            let plan = state.filters.plan(scope, filter, i64::MIN);
            plan.ids().map(i64::from).collect()
        };
        let mut removed = self.remove_where(&seqs, |m| scope.permits(m))?;
        // Cold files holding matches are rewritten without them (and the old objects deleted).
        removed.memories += self.erase_cold(scope, filter)?;
        telemetry::removed("erasure", removed.memories);
        self.compact()?;
        Ok(removed)
    }

    /// Rewrite the store and the text index without deleted data (`VACUUM`, segment
    /// merge). Slow on a large store; erasure runs it.
    pub fn compact(&self) -> Result<()> {
        self.indexes.compact()?;
        self.store.vacuum()
    }

    /// Bring the persisted indexes up to date and flush the write-ahead log into the
    /// database file (graceful shutdown).
    pub fn checkpoint(&self) -> Result<()> {
        self.indexes.flush()?;
        self.store.checkpoint()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.indexes.stop_maintainer();
        if let Some(handle) = self.maintainer.take() {
            let _ = handle.join();
            if let Err(e) = self.indexes.flush() {
                tracing::warn!(error = %e, "index flush at close failed; the next open catches up");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::competition_ranks;

    #[test]
    fn tied_scores_share_a_rank() {
        assert_eq!(competition_ranks([3.0, 2.0, 2.0, 1.0].into_iter()), vec![1, 2, 2, 4]);
        assert_eq!(competition_ranks([5.0, 5.0, 5.0].into_iter()), vec![1, 1, 1]);
        assert_eq!(competition_ranks(std::iter::empty()), Vec::<usize>::new());
    }
}
