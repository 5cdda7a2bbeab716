//! The derived indexes. The store is the only source of truth; everything here is
//! rebuilt or caught up from it:
//!
//! - [`FilterTable`]: metadata of every memory with a bitmap per field value; rebuilt
//!   from the store's metadata columns on open (no content, no vectors).
//! - [`TextIndex`] (tantivy BM25) and [`VectorIndex`] (usearch HNSW): persisted in
//!   `data_dir/index/`, each with a [`Checkpoint`] of the last store change it holds;
//!   on open they take only the changes after it.
//! - [`PendingText`] / [`PendingVectors`]: changes the persisted indexes have not
//!   taken yet. Writes land here; the maintainer thread drains them in the
//!   background; searches read both.
//!
//! Lock order: `state` (read or write) before anything inside the persisted indexes.

pub mod filters;
pub mod pending;
pub mod text;
pub mod tokens;
pub mod vectors;

use std::path::Path;
use std::sync::{Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use memhub_types::{Change, ChangeOp, Memory, Result, Tier};
use serde::{Deserialize, Serialize};

pub use filters::{doc_id, DocId, DocMeta, FilterTable, MetaSource, Plan};
pub use pending::{Analysed, PendingText, PendingVectors, TextHit};
pub use text::TextIndex;
pub use tokens::{mark_common_terms, normalized, query_terms, tokenize, COMMON_MIN_DOCS};
pub use vectors::{HnswParams, VectorIndex};

use crate::store::MemoryStore;

/// A normalised vector.
type Vector = Box<[f32]>;

/// What a persisted index has applied: every store change up to `change`, of the
/// store `store_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub store_id: String,
    pub change: i64,
}

/// A filtered vector search scans the matching memories exactly instead of walking
/// the graph when they are at most this many: a graph walk with a selective
/// predicate visits many nodes it must reject (measured with `bench search`: 10k
/// matching of 1M, graph 33 ms vs scan 4.7 ms; 10k of 100k, graph 6.5 ms at
/// `expansion_search` 256 vs scan 3.5 ms).
pub const EXACT_SCAN_MAX: u64 = 16_384;

/// Changes drained per maintainer round (bounds a round's commit and lock time).
const DRAIN_BATCH: usize = 20_000;

/// The in-memory part, behind one lock.
#[derive(Debug, Default)]
pub struct IndexState {
    pub filters: FilterTable,
    pub pending_text: PendingText,
    pub pending_vectors: PendingVectors,
    /// The last store change applied here.
    pub applied_change: i64,
}

#[derive(Debug)]
struct SaveState {
    last_save: Instant,
    unsaved: usize,
}

/// All derived indexes of one store.
pub struct Indexes {
    state: RwLock<IndexState>,
    pub text: TextIndex,
    pub vectors: VectorIndex,
    store_id: String,
    model: String,
    writable: bool,
    saves: Mutex<SaveState>,
    /// One drain at a time (the maintainer and `flush` may both call it).
    draining: Mutex<()>,
    /// Changes each persisted index took from the store at open (catch-up size).
    caught_up: (usize, usize),
    /// Wakes the maintainer: `true` = stop.
    wake: (Mutex<bool>, Condvar),
}

/// What the vector index holds for a memory: its vector, normalised, when it was
/// made by `model`; vectors of other models are never compared.
fn model_vector(embedding: Option<&[f32]>, embedding_model: Option<&str>, model: &str) -> Option<Vector> {
    embedding.filter(|_| embedding_model == Some(model)).and_then(normalized)
}

/// Where an index's catch-up starts: `None` = from scratch (another store's index,
/// one newer than the store, or one older than the retained change log).
fn resume_from(checkpoint: Option<&Checkpoint>, store_id: &str, last_change: i64, pruned: i64) -> Option<i64> {
    checkpoint.filter(|c| c.store_id == store_id && c.change <= last_change && c.change >= pruned).map(|c| c.change)
}

impl Indexes {
    /// Open (or create) the indexes of `store`, rebuild the filter table and load
    /// every change the persisted indexes lack into the pending sets.
    /// Read-only (`writable = false`) uses what is on disk and catches up in memory.
    pub fn open(
        index_dir: &Path,
        writable: bool,
        store: &dyn MemoryStore,
        dim: usize,
        model: &str,
        params: HnswParams,
    ) -> Result<Indexes> {
        let store_id = store.store_id()?;
        let last_change = store.last_change()?;
        let pruned = store.pruned_through()?;
        let (text, text_cp) = TextIndex::open(&index_dir.join("text"), writable)?;
        let vector_path = index_dir.join("vectors.usearch");
        let (vectors, vector_cp) = VectorIndex::open(&vector_path, writable, dim, model, params)?;
        let text_from = resume_from(text_cp.as_ref(), &store_id, last_change, pruned);
        let vector_from = resume_from(vector_cp.as_ref(), &store_id, last_change, pruned);

        let mut state = IndexState { applied_change: last_change, ..Default::default() };
        store.each_meta(model, &mut |row| {
            state.filters.upsert(doc_id(row.row)?, &MetaSource::of_row(&row));
            Ok(())
        })?;
        let text_stale = text_from.is_none() && text.searcher().num_docs() > 0;
        // What each persisted index lacks: everything, or the changes after its checkpoint.
        store.changed_since(text_from, &mut |changed| {
            let text = changed.now.map(|now| Analysed::of(&now.content));
            state.pending_text.set(doc_id(changed.row)?, text);
            Ok(())
        })?;
        store.changed_since(vector_from, &mut |changed| {
            let v =
                changed.now.and_then(|now| now.embedding).and_then(|(v, m)| model_vector(Some(&v), Some(&m), model));
            state.pending_vectors.set(doc_id(changed.row)?, v);
            Ok(())
        })?;
        // An index on disk that cannot be resumed (another store's, or newer than the
        // store) is emptied before the refill.
        if text_stale {
            text.clear()?;
        }
        if vector_from.is_none() && !vectors.is_empty() {
            vectors.clear()?;
        }
        if !vectors.is_empty() {
            vectors.fill_arena(state.filters.docs().filter(|(_, d)| d.has_vector).map(|(id, _)| id));
        }
        tracing::info!(
            memories = state.filters.len(),
            text_catch_up = state.pending_text.changes().len(),
            vector_catch_up = state.pending_vectors.len(),
            "indexes opened"
        );
        let caught_up = (state.pending_text.changes().len(), state.pending_vectors.len());
        Ok(Indexes {
            caught_up,
            draining: Mutex::new(()),
            state: RwLock::new(state),
            text,
            vectors,
            store_id,
            model: model.into(),
            writable,
            saves: Mutex::new(SaveState { last_save: Instant::now(), unsaved: 0 }),
            wake: (Mutex::new(false), Condvar::new()),
        })
    }

    pub fn read(&self) -> RwLockReadGuard<'_, IndexState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, IndexState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply committed changes, in commit order. Cheap: the filter table and the
    /// pending sets change now, the persisted indexes take them later.
    pub fn apply(&self, changes: &[Change]) -> Result<()> {
        /// What a change does to one memory's entries.
        enum Effect<'a> {
            /// A new version: metadata, text and vector.
            Upsert(&'a Memory, Analysed, Option<Vector>),
            /// Moved between hot and warm: metadata and the vector (to the other graph).
            Placement(&'a Memory, Option<Vector>),
            /// A vector for an unchanged text.
            Vector(Option<Vector>),
            /// Left the store (deleted, purged, erased, frozen).
            Gone,
        }
        // Analyse outside the lock: tokenising is the costly part.
        let mut effects = Vec::with_capacity(changes.len());
        for c in changes {
            let Some(row) = c.row else { continue };
            let memory = c.memory.as_deref();
            let effect = match (c.op, memory) {
                (ChangeOp::Created | ChangeOp::Updated | ChangeOp::Thawed, Some(m)) => {
                    Effect::Upsert(m, Analysed::of(&m.content), self.vector_of(m))
                }
                (ChangeOp::Moved, Some(m)) => Effect::Placement(m, self.vector_of(m)),
                (ChangeOp::Embedded, Some(m)) => Effect::Vector(self.vector_of(m)),
                // Every other change took the memory out of the store. So did one that
                // comes without its memory: read back from a shared store's log after a
                // later change removed the row (rows are never reused).
                _ => Effect::Gone,
            };
            effects.push((doc_id(row)?, effect));
        }
        let mut state = self.write();
        for (id, effect) in effects {
            match effect {
                Effect::Upsert(m, text, vector) => {
                    state.filters.upsert(id, &MetaSource::of(m, &self.model));
                    state.pending_text.set(id, Some(text));
                    state.pending_vectors.set(id, vector);
                }
                Effect::Placement(m, vector) => {
                    state.filters.upsert(id, &MetaSource::of(m, &self.model));
                    state.pending_vectors.set(id, vector);
                }
                Effect::Vector(vector) => {
                    state.filters.set_has_vector(id, vector.is_some());
                    state.pending_vectors.set(id, vector);
                }
                Effect::Gone => {
                    state.filters.remove(id);
                    state.pending_text.set(id, None);
                    state.pending_vectors.set(id, None);
                }
            }
        }
        if let Some(last) = changes.last() {
            state.applied_change = state.applied_change.max(last.seq);
        }
        drop(state);
        self.wake_maintainer(false);
        Ok(())
    }

    fn vector_of(&self, m: &Memory) -> Option<Vector> {
        model_vector(m.embedding.as_deref(), m.embedding_model.as_deref(), &self.model)
    }

    /// BM25 top `n` over memories in `plan`: committed ones from tantivy, the rest
    /// from the pending set, scored with the whole corpus's statistics.
    pub fn text_search(&self, state: &IndexState, query: &str, plan: &Plan<'_>, n: usize) -> Result<Vec<TextHit>> {
        let mut terms = query_terms(query);
        if terms.is_empty() || n == 0 {
            return Ok(Vec::new());
        }
        let searcher = self.text.searcher();
        let pending = &state.pending_text;
        let (base, extra) = (self.text.stats(&searcher), pending.stats());
        let docs = base.docs + extra.docs;
        let doc_freq = |t: &str| self.text.doc_freq(&searcher, t) + pending.doc_freq(t);
        let match_all = mark_common_terms(&mut terms, &doc_freq, docs);
        let accept = |id: DocId| plan.matches(id) && !pending.changes().contains(id);
        // Drive by the filter when it keeps under a tenth of the corpus.
        let total = state.filters.len() as u64;
        let narrow = plan.narrowest().filter(|(_, count)| count * 10 < total).map(|(t, _)| t);
        let search = |match_all: bool| -> Result<Vec<TextHit>> {
            let mut hits = self.text.search(&searcher, &terms, match_all, narrow, &accept, n)?;
            if !pending.changes().is_empty() {
                let avg_len = ((base.tokens + extra.tokens) as f32 / docs.max(1) as f32).max(1.0);
                let idf = |t: &str| pending::idf(docs, doc_freq(t));
                hits.extend(pending.search(&terms, match_all, &idf, avg_len, plan, n));
                pending::top_n(&mut hits, n, |h| (h.bm25, h.id));
            }
            Ok(hits)
        };
        let hits = search(match_all)?;
        // Too few memories hold every common term: fall back to any of them.
        if match_all && hits.len() < n {
            return search(false);
        }
        Ok(hits)
    }

    /// Top `n` by cosine over memories in `plan` with a vector of the model. A
    /// selective filter is scanned exactly; otherwise the HNSW graph is searched with
    /// the filter as its predicate (so the result is not cut short by the filter).
    pub fn vector_search(
        &self,
        state: &IndexState,
        query: &[f32],
        plan: &Plan<'_>,
        tiers: &[Tier],
        n: usize,
    ) -> Vec<(DocId, f32)> {
        let pending = &state.pending_vectors;
        let skip_pending = !pending.is_empty();
        let exact = |plan: &Plan<'_>| {
            self.vectors.exact(query, plan.ids().filter(|id| !(skip_pending && pending.contains(*id))))
        };
        let mut hits = if plan.estimate() <= EXACT_SCAN_MAX {
            exact(plan)
        } else {
            let accept = |id: DocId| plan.matches(id) && !pending.contains(id);
            self.vectors.search(query, n, tiers, &accept).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "graph search failed; scanning exactly");
                exact(plan)
            })
        };
        hits.extend(pending.search(query, plan));
        pending::top_n(&mut hits, n, |h| (h.1, h.0));
        hits
    }

    /// Cosine of `query` with each of `ids` that has a vector of the model: pending
    /// vectors exactly, the rest by one scan of their 8-bit copies (as a selective
    /// filter's are scored).
    pub fn similarities(&self, state: &IndexState, query: &[f32], ids: &[DocId]) -> Vec<(DocId, f32)> {
        let pending = &state.pending_vectors;
        let mut cosines: Vec<(DocId, f32)> =
            ids.iter().filter_map(|&id| pending.get(id).map(|v| (id, pending::dot(v, query)))).collect();
        cosines.extend(self.vectors.exact(query, ids.iter().copied().filter(|&id| !pending.contains(id))));
        cosines
    }

    /// Move pending changes into the persisted indexes, at most `max` of each kind,
    /// and save the graph when enough changed. Returns whether changes are left.
    pub fn drain(&self, max: usize) -> Result<bool> {
        let _one_at_a_time = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        let (more, vector_cp) = self.drain_locked(max)?;
        if let Some(cp) = vector_cp {
            self.save_vectors(&cp, false)?;
        }
        Ok(more)
    }

    /// One drain round (the caller holds `draining`). Also returns the checkpoint the
    /// graph now holds when this round took every pending vector change.
    fn drain_locked(&self, max: usize) -> Result<(bool, Option<Checkpoint>)> {
        let (text_batch, text_cp, vector_batch, vector_cp) = {
            let state = self.read();
            let cp = Checkpoint { store_id: self.store_id.clone(), change: state.applied_change };
            let t = state.pending_text.changes().snapshot(max);
            let t_cp = (t.len() == state.pending_text.changes().len()).then(|| cp.clone());
            let t: Vec<_> = t
                .into_iter()
                .map(|(id, g, text)| (id, g, text.map(|text| (text, state.filters.filter_terms(id)))))
                .collect();
            let v = state.pending_vectors.snapshot(max);
            let v_cp = (v.len() == state.pending_vectors.len()).then_some(cp);
            // Each vector goes into the graph of the tier its memory is in now.
            let v: Vec<_> = v
                .into_iter()
                .map(|(id, g, v)| (id, g, v.map(|v| (v, state.filters.get(id).map_or(Tier::Hot, |d| d.tier)))))
                .collect();
            (t, t_cp, v, v_cp)
        };
        if !text_batch.is_empty() {
            self.text.apply(text_batch.iter().map(|(id, _, t)| (*id, t.as_ref())), text_cp.as_ref())?;
        }
        if !vector_batch.is_empty() {
            let changes: Vec<vectors::VectorChange> = vector_batch.iter().map(|(id, _, v)| (*id, v.clone())).collect();
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            self.vectors.apply(&changes, threads)?;
            self.saves.lock().unwrap_or_else(|p| p.into_inner()).unsaved += vector_batch.len();
        }
        let mut state = self.write();
        state.pending_text.settle(&stamps(&text_batch));
        state.pending_vectors.settle(&stamps(&vector_batch));
        let more = !state.pending_text.changes().is_empty() || !state.pending_vectors.is_empty();
        Ok((more, vector_cp))
    }

    /// Save the graph at `cp` if it changed since the last save and either `now` or
    /// enough changed (50 000 changes or 60 s).
    fn save_vectors(&self, cp: &Checkpoint, now: bool) -> Result<()> {
        let mut saves = self.saves.lock().unwrap_or_else(|p| p.into_inner());
        let due = saves.unsaved >= 50_000 || saves.last_save.elapsed() >= Duration::from_secs(60);
        let never_saved = self.vectors.disk_bytes() == 0;
        if (saves.unsaved > 0 && (now || due)) || (now && never_saved) {
            self.vectors.save(cp)?;
            *saves = SaveState { last_save: Instant::now(), unsaved: 0 };
        }
        Ok(())
    }

    /// Drain everything and save the graph: the persisted indexes then hold every
    /// change made before the call (graceful shutdown, `checkpoint`).
    pub fn flush(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        let _one_at_a_time = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let (_, Some(cp)) = self.drain_locked(DRAIN_BATCH)? {
                return self.save_vectors(&cp, true);
            }
        }
    }

    /// Replace the retention policies every plan applies.
    pub fn set_retention(&self, policies: Vec<memhub_types::RetentionPolicy>) {
        self.write().filters.set_retention(policies);
    }

    /// Flush, then rewrite the text index without deleted documents (erasure).
    pub fn compact(&self) -> Result<()> {
        self.flush()?;
        let _one_at_a_time = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        self.text.compact()
    }

    fn wake_maintainer(&self, stop: bool) {
        let (lock, cv) = &self.wake;
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        *s |= stop;
        cv.notify_one();
    }

    /// The maintainer loop: drain shortly after writes (batching bursts), until
    /// [`stop_maintainer`](Self::stop_maintainer). Run it on its own thread.
    pub fn maintain(&self) {
        lower_thread_priority();
        let (lock, cv) = &self.wake;
        loop {
            {
                let s = lock.lock().unwrap_or_else(|p| p.into_inner());
                if *s {
                    break;
                }
                let _unused = cv.wait_timeout(s, Duration::from_secs(1)).unwrap_or_else(|p| p.into_inner());
            }
            // Let a burst of writes gather into one commit.
            std::thread::sleep(Duration::from_millis(100));
            loop {
                match self.drain(DRAIN_BATCH) {
                    Ok(true) if !*lock.lock().unwrap_or_else(|p| p.into_inner()) => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "index maintenance failed; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                        break;
                    }
                }
            }
        }
    }

    pub fn stop_maintainer(&self) {
        self.wake_maintainer(true);
    }

    /// Memories and pending changes, for stats and benchmarks.
    pub fn sizes(&self) -> IndexSizes {
        let state = self.read();
        IndexSizes {
            memories: state.filters.len(),
            vectors: self.vectors.len(),
            pending_text: state.pending_text.changes().len(),
            pending_vectors: state.pending_vectors.len(),
            text_disk_bytes: self.text.disk_bytes(),
            vector_disk_bytes: self.vectors.disk_bytes(),
            vector_memory_bytes: self.vectors.memory_bytes(),
            hot_vectors: self.vectors.tier_len(Tier::Hot),
            warm_vectors: self.vectors.tier_len(Tier::Warm),
            hot_graph_bytes: self.vectors.tier_memory_bytes(Tier::Hot),
            warm_graph_bytes: self.vectors.tier_memory_bytes(Tier::Warm),
            caught_up_text: self.caught_up.0,
            caught_up_vectors: self.caught_up.1,
        }
    }
}

/// Sizes of the indexes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IndexSizes {
    pub memories: usize,
    pub vectors: usize,
    pub pending_text: usize,
    pub pending_vectors: usize,
    pub text_disk_bytes: u64,
    pub vector_disk_bytes: u64,
    pub vector_memory_bytes: usize,
    /// Vectors in the hot (f16) and warm (i8) graphs, and the graphs' memory.
    pub hot_vectors: usize,
    pub warm_vectors: usize,
    pub hot_graph_bytes: usize,
    pub warm_graph_bytes: usize,
    /// Changes the text index took from the store when opened (all memories = rebuilt).
    pub caught_up_text: usize,
    /// The same for the vector index.
    pub caught_up_vectors: usize,
}

/// Index maintenance is deferred work: on Linux its thread (and the insert threads
/// it spawns, which inherit the setting) runs at nice 10, so acknowledged writes and
/// searches get the cores first and the indexes catch up when they are free.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority with who = 0 changes only the calling thread's nice value.
    unsafe {
        if libc::setpriority(libc::PRIO_PROCESS, 0, 10) != 0 {
            tracing::debug!("could not lower the index thread's priority");
        }
    }
}

/// `(id, generation)` of drained changes.
fn stamps<T>(batch: &[(DocId, u64, T)]) -> Vec<(DocId, u64)> {
    batch.iter().map(|(id, g, _)| (*id, *g)).collect()
}

/// Total size of the files under `dir`.
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(|e| e.ok())
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}
