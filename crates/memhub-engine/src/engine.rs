//! The engine: the write path (validate -> one transaction -> indexes catch up) and
//! the read paths (get, list, history, search), all scoped by tenant.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use memhub_types::memory::IngestionMethod;
use memhub_types::schema::KindSchema;
use memhub_types::time::now_micros;
use memhub_types::{
    Change, ChangeFilter, ChangeOp, ChangePage, Embedder, Entity, Error, ErrorCode, Memory, MemoryFilter, MemoryPatch,
    NewEntity, NewMemory, NewRelation, Relation, RenderedChange, Result, RetentionPolicy, SchemaRegistry, Scope,
    SearchHit, SearchRequest, SearchResponse, StoreOutcome, Tier,
};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::cold::{score_cold, ColdTier, Committer};
use crate::embedding::EmbeddingQueue;
use crate::index::filters::content_key;
use crate::index::{normalized, query_terms, DocId, IndexSizes, Indexes};
use crate::prepare::{self, check_attributes, check_content, check_embedding, check_tags, same_revision, Prepared};
use crate::store::{MemoryStore, OpenMode, SqliteStore, StoreTx};
use crate::telemetry;
use crate::tiers::TierStats;
use crate::EngineConfig;

mod fusion;
mod graph;
mod group;
mod hits;
mod read;
mod recent;
mod retention;
mod schemas;
mod search;
mod write;

pub use search::DEFAULT_SEMANTIC_RATIO;
// Defined with the data model, so the crates that decide access need no engine.
pub use memhub_types::{Access, Stored};

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

/// The memhub engine. Thread-safe; share it behind an `Arc`.
pub struct Engine {
    store: Box<dyn MemoryStore>,
    /// Held from a write's transaction until its changes are published, so every
    /// consumer sees changes in commit order.
    commit_order: std::sync::Mutex<()>,
    /// Store writes waiting to share the next transaction (group commit).
    write_queue: group::WriteQueue,
    /// The last change published (the change feed waits on it).
    published: tokio::sync::watch::Sender<i64>,
    /// The newest published changes, for readers that follow the log closely.
    recent: recent::RecentChanges,
    indexes: Arc<Indexes>,
    maintainer: Option<std::thread::JoinHandle<()>>,
    registry: RwLock<SchemaRegistry>,
    config: EngineConfig,
    embedder: Option<Arc<dyn Embedder>>,
    /// Text queries' vectors kept for reuse (see [`QueryVectors`](crate::query_vectors::QueryVectors)).
    pub(crate) query_vectors: crate::query_vectors::QueryVectors,
    /// Search hits' memories, for a store in another process (see `hits`).
    pub(crate) hits: hits::HitCache,
    embed_queue: EmbeddingQueue,
    /// The cold tier, when `tiers.cold` names a bucket.
    pub(crate) cold: Option<ColdTier>,
    /// What the last leader check found (see [`Engine::leads`]).
    leading: std::sync::atomic::AtomicBool,
    /// Threads that run a hybrid search's vector retriever beside its keyword one.
    /// Kept alive: spawning a thread per search cost ~0.3 ms of the vector side's start.
    search_helpers: rayon::ThreadPool,
}

/// A write met a key that a concurrent aging run just moved to the cold tier: the
/// transaction is rolled back and the write retried after a thaw.
const COLD_KEY_MOVED: &str = "a memory with this key was moving to the cold tier; retry the write";

/// Reads of a shared store's log a committed write tries (about 12 s in all) to
/// publish itself after other replicas' changes before it gives up on being
/// visible here when acknowledged.
const PUBLISH_TRIES: u32 = 6;

/// Changes one read of the log looks at, at most: a narrow reader of a busy log
/// gets a short (or empty) page and a cursor that moved, not a scan of all of it.
const CHANGES_SCANNED: usize = 10_000;

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
        config: EngineConfig,
        mode: OpenMode,
        embedder: Option<Arc<dyn Embedder>>,
    ) -> Result<Engine> {
        // Checked before the store is opened (and its data dir made).
        config.tiers.validate()?;
        let store = SqliteStore::open(data_dir, mode)?;
        Self::open_on(Box::new(store), &data_dir.join("index"), config, embedder)
    }

    /// Open an engine over any [`MemoryStore`], its derived indexes in `index_dir`.
    pub fn open_on(
        store: Box<dyn MemoryStore>,
        index_dir: &Path,
        mut config: EngineConfig,
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
        let registry = schemas::registry_of(store.as_ref())?;
        let writable = !store.read_only();
        let indexes = Arc::new(Indexes::open(
            index_dir,
            writable,
            store.as_ref(),
            config.embedding_dim,
            &config.embedding_model,
            config.hnsw,
        )?);
        tracing::info!(memories = indexes.read().filters.len(), store = %store.describe(), "store opened");
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
        // The indexes hold every change through this one; later ones (another
        // replica's, on a shared store) come through the log follower.
        let applied = indexes.read().applied_change;
        let (published, _) = tokio::sync::watch::channel(applied);
        let recent = recent::RecentChanges::new(writable.then_some(applied));
        let shared = store.shared();
        let engine = Engine {
            store,
            commit_order: std::sync::Mutex::new(()),
            write_queue: group::WriteQueue::default(),
            published,
            recent,
            indexes,
            maintainer,
            registry: RwLock::new(registry),
            query_vectors: crate::query_vectors::QueryVectors::new(config.query_cache_entries),
            hits: hits::HitCache::new(if shared { config.hit_cache_entries } else { 0 }),
            config,
            embedder,
            embed_queue: EmbeddingQueue::default(),
            cold,
            // The embedded store has one process, which leads; a shared one elects.
            leading: std::sync::atomic::AtomicBool::new(!shared),
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

    /// Run `work` in one store transaction, then hand the changes it made to every
    /// consumer (the indexes, the embedding queue, the metrics, the change feed)
    /// before returning: a search right after an acknowledged write finds it. The
    /// commit-order lock is held across both, so consumers see changes in commit
    /// order. No write reaches an index any other way.
    pub(crate) fn commit<T>(&self, mut work: impl FnMut(&mut dyn StoreTx) -> Result<T>) -> Result<T> {
        let _in_order = self.commit_order.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = None;
        self.write_in_order(&mut |tx| {
            out = Some(work(tx)?);
            Ok(())
        })?;
        out.ok_or_else(|| Error::internal("the store committed without running the write"))
    }

    /// The one write path ([`commit`](Self::commit) and group commit; the caller
    /// holds the commit-order lock): run `work` in one store transaction, then hand
    /// its changes to every consumer.
    fn write_in_order(&self, work: &mut dyn FnMut(&mut dyn StoreTx) -> Result<()>) -> Result<Vec<Change>> {
        let changes = self.store.write(work)?;
        match changes.first() {
            // Another replica committed since this one last looked: its changes come
            // first, read from the log, so every consumer still sees commit order.
            Some(first) if self.store.shared() && first.seq != self.applied() + 1 => {
                // The write is durable; it must also be visible here before it is
                // acknowledged (its response names the change applied). Retry a while.
                let mut tries = 0;
                while let Err(e) = self.publish_log(&changes) {
                    tries += 1;
                    if tries == PUBLISH_TRIES {
                        tracing::error!(error = %e, "cannot read the change log after a write; the follower catches up");
                        break;
                    }
                    tracing::warn!(error = %e, "reading the change log after a write failed; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(200 << tries.min(5)));
                }
            }
            _ => self.publish(&changes),
        }
        self.queue_for_embedding(&changes);
        telemetry::changes(&changes);
        Ok(changes)
    }

    /// The consumers of the change stream, in this process: the indexes, the window
    /// of recent changes, and whoever waits on [`watch_changes`](Self::watch_changes).
    /// The store has the changes already, so a failure here is logged, not
    /// returned: a restart catches the indexes up.
    fn publish(&self, changes: &[Change]) {
        let Some(last) = changes.last() else { return };
        self.hits.invalidate(changes);
        if let Err(e) = self.indexes.apply(changes) {
            tracing::error!(error = %e, "index update failed; restart to catch up");
        }
        self.recent.push(changes);
        self.published.send_replace(last.seq);
    }

    /// Queue this process's new memories that lack a vector of the server's model.
    /// Only the replica that wrote a memory embeds it (a restart queues what is left).
    fn queue_for_embedding(&self, changes: &[Change]) {
        if self.embedder.is_none() {
            return;
        }
        let model = Some(self.config.embedding_model.as_str());
        for c in changes {
            let needs_vector = matches!(c.op, ChangeOp::Created | ChangeOp::Updated | ChangeOp::Thawed)
                && c.memory.as_ref().is_some_and(|m| m.embedding_model.as_deref() != model);
            if let (true, Some(row)) = (needs_vector, c.row) {
                self.embed_queue.push(row);
            }
        }
    }

    /// Publish every change in the store's log after the last one published, in
    /// order, through the end of the log (at least through `own`, changes this
    /// process just committed, which carry their memories already). The others
    /// were made by other processes sharing the store: their memories are read
    /// back by row. Called with the commit-order lock held. Returns how many.
    fn publish_log(&self, own: &[Change]) -> Result<usize> {
        const BATCH: usize = 1_000;
        let through = own.last().map_or(0, |c| c.seq);
        let mut published = 0;
        loop {
            let mut batch = self.store.changes_after(self.applied(), BATCH)?;
            let Some(last) = batch.last().map(|c| c.seq) else { break };
            self.attach_memories(&mut batch, own)?;
            self.publish(&batch);
            published += batch.len();
            if batch.len() < BATCH && last >= through {
                break;
            }
        }
        Ok(published)
    }

    /// Give each change that leaves its memory in the store the memory, as consumers
    /// in this process expect: from `own` when this process made it, else read by
    /// row. A row gone since was removed by a later change; its change stays
    /// without a memory and the indexes drop the row (the later change would).
    fn attach_memories(&self, batch: &mut [Change], own: &[Change]) -> Result<()> {
        let mut rows = Vec::new();
        for c in batch.iter_mut() {
            match own.binary_search_by_key(&c.seq, |o| o.seq) {
                Ok(i) => *c = own[i].clone(),
                Err(_) if c.op.leaves_memory_in_store() => rows.extend(c.row),
                Err(_) => {}
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let found: HashMap<i64, Arc<Memory>> =
            self.store.memories_by_row(&rows)?.into_iter().map(|(row, m)| (row, Arc::new(m))).collect();
        for c in batch.iter_mut().filter(|c| c.memory.is_none() && c.op.leaves_memory_in_store()) {
            c.memory = c.row.and_then(|row| found.get(&row).cloned());
        }
        Ok(())
    }

    /// Publish the changes other processes committed to a shared store since this
    /// one last looked (replicas over one database; the [`LogFollower`](crate::LogFollower) calls it
    /// whenever the store signals a commit). Returns how many were published.
    pub fn follow_log(&self) -> Result<usize> {
        let _in_order = self.commit_order.lock().unwrap_or_else(|p| p.into_inner());
        // Taken before the read: every change through it has committed (numbers
        // commit in order), so the read below sees all of them.
        let last = self.store.last_change()?;
        let published = self.publish_log(&[])?;
        if published == 0 {
            // Nothing readable through `last`, yet the log reaches it: entries this
            // binary cannot read (an operation a newer replica logs, in a rolling
            // upgrade), which the store skips. Without this the cursor would stop
            // before them for good; moving to `last` skips nothing readable.
            if last > self.applied() {
                tracing::warn!(from = self.applied(), to = last, "skipped change-log entries this version cannot read");
                self.published.send_replace(last);
            }
        }
        Ok(published)
    }

    /// Block until the store may have a change this engine has not published, or
    /// `timeout` passes.
    pub fn wait_for_log(&self, timeout: std::time::Duration) {
        self.store.wait_for_changes(self.applied(), timeout);
    }

    /// The sequence number of the last change this engine has published: every
    /// change through it is in its indexes and visible to its searches.
    pub fn applied(&self) -> i64 {
        *self.published.borrow()
    }

    /// Whether this process runs the jobs that must run once per store (pull worker,
    /// tier aging, retention purge): always on the embedded store; on a shared one,
    /// while it holds the store's leader lock (this call tries to take it).
    pub fn leads(&self) -> bool {
        let leads = self.store.leads();
        self.leading.store(leads, std::sync::atomic::Ordering::Relaxed);
        leads
    }

    /// What the last [`leads`](Self::leads) found, without asking the store.
    pub fn leading(&self) -> bool {
        self.leading.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether other processes write this engine's store too (see [`LogFollower`](crate::LogFollower)).
    pub fn shared_store(&self) -> bool {
        self.store.shared()
    }

    /// Wakes when changes are published; holds the last one's sequence number.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<i64> {
        self.published.subscribe()
    }

    /// Changes after `after` that `scope` may read and `filter` admits, oldest first,
    /// at most `limit`. A reader whose `after` is older than the retained log gets
    /// `reset` (it missed changes and must list again) and the page from the oldest
    /// retained change on.
    pub fn changes(
        &self,
        scope: &Scope,
        after: i64,
        filter: &ChangeFilter,
        limit: Option<usize>,
    ) -> Result<ChangePage> {
        let limit = check_limit(limit, 100, crate::limits::PAGE)?;
        if after < 0 {
            return Err(Error::field(ErrorCode::InvalidField, "after", "must be a sequence number ≥ 0"));
        }
        if let Some(page) = self.recent.page(scope, after, filter, limit) {
            return Ok(page);
        }
        let pruned = self.store.pruned_through()?;
        let from = after.max(pruned);
        let (changes, next_after) =
            page_of(log_after(self.store(), from), from, scope, filter, limit, CHANGES_SCANNED)?;
        Ok(ChangePage { changes, next_after, reset: after < pruned })
    }

    /// [`changes`](Self::changes) without a store read, in wire form: each change's
    /// JSON is rendered once, for every reader (the change feed's streams share it).
    /// Returns the changes and the cursor for the next call; `None` when the page is
    /// not all in memory (a reader far behind; the caller then reads off the async runtime).
    pub fn recent_rendered(
        &self,
        scope: &Scope,
        after: i64,
        filter: &ChangeFilter,
        limit: usize,
    ) -> Option<(Vec<RenderedChange>, i64)> {
        self.recent.rendered(scope, after, filter, limit.clamp(1, crate::limits::PAGE))
    }

    /// The last committed change's sequence number.
    pub fn last_change(&self) -> Result<i64> {
        self.store.last_change()
    }

    pub(crate) fn store(&self) -> &dyn MemoryStore {
        self.store.as_ref()
    }

    /// The derived indexes (for benchmarks and diagnostics).
    pub fn indexes(&self) -> &Indexes {
        &self.indexes
    }

    /// The server-side embedder, if one is configured.
    pub fn embedder(&self) -> Option<&Arc<dyn Embedder>> {
        self.embedder.as_ref()
    }

    /// Share query vectors with other replicas through `shared` (behind this
    /// process's own cache): a text query embedded by one is not embedded again by another.
    pub fn share_query_vectors(&self, shared: Arc<dyn crate::query_vectors::SharedVectors>) {
        self.query_vectors.share(shared);
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
            .memories_by_row(seqs)?
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
        self.commit(|tx| {
            for (row, m) in &updated {
                tx.set_embedding(*row, m)?;
            }
            Ok(())
        })
    }

    /// Rewrite the store and the text index without deleted data (`VACUUM`, segment
    /// merge). Slow on a large store; erasure runs it.
    pub fn compact(&self) -> Result<()> {
        self.indexes.compact()?;
        self.store.compact()
    }

    /// Bring the persisted indexes up to date and flush the write-ahead log into the
    /// database file (graceful shutdown).
    pub fn checkpoint(&self) -> Result<()> {
        self.indexes.flush()?;
        self.store.checkpoint()
    }
}

/// The cold tier commits through the engine, so its moves feed the change stream.
impl Committer for Engine {
    fn store(&self) -> &dyn MemoryStore {
        Engine::store(self)
    }

    fn commit<T>(&self, work: impl FnMut(&mut dyn StoreTx) -> Result<T>) -> Result<T> {
        Engine::commit(self, work)
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

/// The one rule for a page of the change log, wherever the changes are read from:
/// walk the changes after `after` in order, keep those `scope` may read and `filter`
/// admits, and stop at `limit` kept or `scan` walked. Returns the page and its
/// cursor, the last change walked: a reader moves past what it may not see once,
/// and a narrow reader of a busy log reads a bounded stretch per call.
pub(crate) fn page_of<T: std::borrow::Borrow<Change>>(
    log: impl Iterator<Item = Result<T>>,
    after: i64,
    scope: &Scope,
    filter: &ChangeFilter,
    limit: usize,
    scan: usize,
) -> Result<(Vec<T>, i64)> {
    let mut cursor = after;
    let mut kept = Vec::new();
    if limit == 0 {
        return Ok((kept, cursor));
    }
    for c in log.take(scan) {
        let c = c?;
        let change = c.borrow();
        cursor = change.seq;
        if change.visible_to(scope) && filter.matches(change) {
            kept.push(c);
            // Stop before pulling another change: it may cost a store read.
            if kept.len() == limit {
                break;
            }
        }
    }
    Ok((kept, cursor))
}

/// The store's change log after `after`, read lazily a thousand at a time.
fn log_after(store: &dyn MemoryStore, after: i64) -> impl Iterator<Item = Result<Change>> + '_ {
    const BATCH: usize = 1_000;
    let (mut next, mut buffered, mut done) = (after, std::collections::VecDeque::new(), false);
    std::iter::from_fn(move || {
        if buffered.is_empty() && !done {
            match store.changes_after(next, BATCH) {
                Ok(batch) => {
                    done = batch.len() < BATCH;
                    next = batch.last().map_or(next, |c| c.seq);
                    buffered.extend(batch);
                }
                Err(e) => {
                    done = true;
                    return Some(Err(e));
                }
            }
        }
        buffered.pop_front().map(Ok)
    })
}
